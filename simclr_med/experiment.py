"""A run from a Config: pretrain / fine-tune / linear-eval, predict, export."""
from __future__ import annotations

import dataclasses
import json
import logging
import os

import keras
import tensorflow as tf

from simclr_med import io
from simclr_med.config import Config
from simclr_med.data import datasets, pipelines
from simclr_med.errors import CheckpointError, ConfigError, DataError
from simclr_med.evaluation import predict
from simclr_med.models import export
from simclr_med.train import checkpoints, factory, loop
from simclr_med.train.strategy import check_steps_per_execution, make_strategy

log = logging.getLogger(__name__)
CLASSES_FILE = "classes.json"
SETTINGS_FILE = "settings.json"  # what a sweep point or transfer cell was run with


def _load(cfg: Config, name: str, split: str, label_fraction: float = 1.0):
    return datasets.load(name, split, data_dir=cfg.data_dir, manual_dir=cfg.manual_dir or None,
                         uncertainty_policy=cfg.uncertainty_policy, label_fraction=label_fraction,
                         seed=cfg.seed, pixel_bits=cfg.pixel_bits)


def _distribute(strategy, dataset_fn):
    """One input pipeline per replica group when distributed; a plain dataset otherwise."""
    if strategy.num_replicas_in_sync > 1:
        return strategy.distribute_datasets_from_function(dataset_fn)
    return dataset_fn(None)


def _write_json(path: str, obj) -> None:
    io.write_json(path, obj, sort_keys=True)


def _init_if_fresh(cfg: Config, encoder, projection_head=None) -> None:
    """--checkpoint seeds a *new* run only; a run that resumes keeps its own weights."""
    if cfg.checkpoint and tf.train.latest_checkpoint(cfg.model_dir) is None:
        path = checkpoints.load_encoder(encoder, cfg.checkpoint)
        if projection_head is not None and cfg.checkpoint_head:
            checkpoints.load_projection_head(projection_head, path)


def _pretrain(cfg: Config, strategy, on_checkpoint=None) -> dict:
    ds, meta = _load(cfg, cfg.dataset, cfg.train_split)
    if cfg.method == "micle" and not meta.has_bags:
        raise DataError(f"--method=micle needs cases with several images, but every example of "
                        f"{cfg.dataset}/{cfg.train_split} has one image; use --method=simclr")
    num_examples = meta.num_examples if cfg.method == "micle" else meta.num_images
    dataset = lambda start_step: _distribute(strategy, lambda ctx: pipelines.pretrain_dataset(  # noqa: E731
        ds, method=cfg.method, batch_size=cfg.train_batch_size, image_size=cfg.image_size,
        augmentation=cfg.augmentation, color_jitter_strength=cfg.color_jitter_strength,
        seed=cfg.seed, start_step=start_step, input_context=ctx))
    with strategy.scope():
        model = factory.contrastive_model(cfg, num_train_examples=num_examples,
                                        num_replicas=strategy.num_replicas_in_sync)
    _init_if_fresh(cfg, model.encoder, model.projection_head)
    return loop.train(model, dataset, model_dir=cfg.model_dir, total_steps=cfg.total_steps(num_examples),
                          on_checkpoint=on_checkpoint, **_loop_args(cfg)), model


def _loop_args(cfg: Config) -> dict:
    return dict(checkpoint_steps=cfg.checkpoint_steps, keep_checkpoint_max=cfg.keep_checkpoint_max,
                log_steps=cfg.log_steps, skip_nonfinite_steps=cfg.skip_nonfinite_steps,
                verbose=cfg.verbose)


# Where files are, how the run is logged and which hardware runs it: free to change on a rerun.
_BOOKKEEPING = ("model_dir", "data_dir", "manual_dir", "cache_dataset", "eval_batch_size",
                "keep_checkpoint_max", "log_steps", "steps_per_execution", "strategy", "tpu",
                "num_logical_devices", "use_xla", "winograd", "host_memory_limit_gib", "verbose",
                "sweep_learning_rates", "sweep_weight_decays")


def check_settings(cfg: Config, **extra) -> None:
    """Records a harness run's settings (`SETTINGS_FILE` in its model_dir) on its first start, and
    refuses to reuse or resume it under other ones: a sweep point or benchmark cell whose spec
    changed would otherwise be reported with results of the old one."""
    settings = {k: v for k, v in {**dataclasses.asdict(cfg), **extra}.items() if k not in _BOOKKEEPING}
    path = os.path.join(cfg.model_dir, SETTINGS_FILE)
    if not io.exists(path):
        _write_json(path, settings)
        return
    before = io.read_json(path)
    changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
    if changed:
        detail = ", ".join(f"{k}: {before.get(k)!r} -> {settings.get(k)!r}" for k in changed[:3])
        raise ConfigError(f"{cfg.model_dir} was run with other settings ({detail}); restore them, "
                          "or delete the directory to run it anew")


def _classes(cfg: Config, meta=None, run_dir: str | None = None) -> dict:
    """The label space a classifier was trained on, and how, recorded in its run dir (model_dir
    when training; `run_dir` when evaluating another run's checkpoint) for eval/export."""
    run_dir = run_dir or cfg.model_dir
    path = os.path.join(run_dir, CLASSES_FILE)
    if meta is not None:
        record = {"class_names": list(meta.class_names), "multi_label": bool(meta.multi_label),
                  "eval_tasks": list(meta.eval_tasks), "dataset": cfg.dataset,
                  "training": {"train_mode": cfg.train_mode, "label_fraction": cfg.label_fraction,
                               "seed": cfg.seed, "init_checkpoint": cfg.checkpoint}}
        _write_json(path, record)
        return record
    if not io.exists(path):
        raise CheckpointError(f"{run_dir} holds no trained classifier ({CLASSES_FILE} missing)")
    return io.read_json(path)


def _classifier(cfg: Config, strategy, classes: dict, num_examples: int):
    with strategy.scope():
        return factory.classifier(cfg, num_classes=len(classes["class_names"]),
                                multi_label=classes["multi_label"], num_train_examples=num_examples,
                                num_replicas=strategy.num_replicas_in_sync)


def _finetune(cfg: Config, strategy, on_checkpoint=None):
    ds, meta = _load(cfg, cfg.dataset, cfg.train_split, cfg.label_fraction)
    classes = _classes(cfg, meta)
    dataset = lambda start_step: _distribute(strategy, lambda ctx: pipelines.supervised_dataset(  # noqa: E731
        ds, meta, batch_size=cfg.train_batch_size, image_size=cfg.image_size, augmentation=cfg.augmentation,
        training=True, seed=cfg.seed, start_step=start_step, input_context=ctx))
    # The pipeline yields a case's images as separate examples: an epoch is a pass over the images.
    model = _classifier(cfg, strategy, classes, meta.num_images)
    _init_if_fresh(cfg, model.encoder)
    return loop.train(model, dataset, model_dir=cfg.model_dir, total_steps=cfg.total_steps(meta.num_images),
                          on_checkpoint=on_checkpoint, **_loop_args(cfg)), model


def _checkpoint_to_evaluate(cfg: Config) -> str:
    path = checkpoints.resolve_checkpoint(cfg.checkpoint) if cfg.mode == "eval" and cfg.checkpoint \
        else tf.train.latest_checkpoint(cfg.model_dir)
    if path is None:
        raise CheckpointError(f"{cfg.model_dir}: no checkpoint to evaluate (train first)")
    return path


def _restore_for_eval(cfg: Config, model) -> tuple[str, int]:
    path = _checkpoint_to_evaluate(cfg)
    return path, predict.restore_checkpoint(model, path)


def _evaluate_classifier(cfg: Config, strategy, model=None) -> dict:
    path = _checkpoint_to_evaluate(cfg)
    # The evaluated run's own record: this invocation's flags say nothing of how it was trained.
    classes = _classes(cfg, run_dir=os.path.dirname(path))
    if model is None:
        model = _classifier(cfg, strategy, classes, num_examples=1)
    name = cfg.eval_dataset or cfg.dataset
    if cfg.eval_dataset:
        out_dir = os.path.join(cfg.model_dir, f"eval_{name.replace('/', '_')}")
    else:
        out_dir = cfg.model_dir
    # What the run recorded of its training; the flags stand in for what it did not record.
    training = {"train_mode": cfg.train_mode, "label_fraction": cfg.label_fraction, "seed": cfg.seed,
                "init_checkpoint": cfg.checkpoint, **classes.get("training", {})}
    data = lambda: predict.eval_data(cfg, name, cfg.eval_split)
    extra = {"checkpoint": path, "dataset": name, "split": cfg.eval_split, **training}
    result = predict.evaluate_checkpoint(model, path, data, classes, out_dir=out_dir, extra=extra)
    log.info("evaluation of %s on %s/%s: %s", path, name, cfg.eval_split,
             {k: v for k, v in result.items() if isinstance(v, float)})
    return result


def contrastive_scores(cfg: Config, model) -> dict:
    """Contrastive loss/accuracy of `model` on the eval split (fixed seed: same batches, same views)."""
    ds, meta = _load(cfg, cfg.dataset, cfg.eval_split)
    per_batch = meta.num_examples if cfg.method == "micle" else meta.num_images
    batch = min(cfg.eval_batch_size, cfg.train_batch_size, max(2, per_batch))
    steps = max(1, min(20, per_batch // batch))
    data = pipelines.pretrain_dataset(ds, method=cfg.method, batch_size=batch, image_size=cfg.image_size,
                                      augmentation=cfg.augmentation, seed=cfg.seed + 1,
                                      color_jitter_strength=cfg.color_jitter_strength, deterministic=True)
    logs = model.evaluate(data, steps=steps, return_dict=True, verbose=0)
    return {**{k: float(v) for k, v in logs.items()}, "split": cfg.eval_split, "num_batches": steps,
            "batch_size": batch}


def _evaluate_pretrain(cfg: Config, strategy, model=None) -> dict:
    """Contrastive loss/accuracy on the eval split: a quick health check of a pretraining run."""
    if model is None:
        with strategy.scope():
            model = factory.contrastive_model(cfg, num_train_examples=1)
    path, step = _restore_for_eval(cfg, model)
    result = {**contrastive_scores(cfg, model), "global_step": step, "checkpoint": path}
    _write_json(os.path.join(cfg.model_dir, "result.json"), result)
    _write_json(os.path.join(cfg.model_dir, f"result_{step}.json"), result)
    return result


def _export(cfg: Config, strategy, model=None) -> str:
    if model is None:
        if cfg.train_mode == "pretrain":
            with strategy.scope():
                model = factory.contrastive_model(cfg, num_train_examples=1)
        else:
            model = _classifier(cfg, strategy, _classes(cfg), num_examples=1)
        step = _restore_for_eval(cfg, model)[1]
    else:
        step = checkpoints.global_step(model.optimizer)
    path = export.export_saved_model(model, os.path.join(cfg.model_dir, "saved_model"),
                                     step=step, image_size=cfg.image_size)
    log.info("exported SavedModel to %s", path)
    return path


def run(cfg: Config, on_checkpoint=None) -> dict:
    """Runs `cfg.mode`; returns a summary (training figures, result, export path).

    `on_checkpoint(model, step)`: see `loop.train` (e.g. validation for early stopping).
    """
    cfg.validate()
    if cfg.data_dir == "":
        cfg.data_dir = os.path.join(cfg.model_dir, "data")
    cfg.model_dir, cfg.data_dir = io.run_path(cfg.model_dir), io.run_path(cfg.data_dir)
    cfg.checkpoint = io.run_path(cfg.checkpoint)
    io.makedirs(cfg.model_dir)
    _write_json(os.path.join(cfg.model_dir, f"flags_{cfg.mode}.json"), json.loads(cfg.to_json()))
    keras.utils.set_random_seed(cfg.seed)
    factory.set_precision(cfg.precision)
    strategy = make_strategy(cfg.strategy, tpu=cfg.tpu, num_logical_devices=cfg.num_logical_devices)
    check_steps_per_execution(strategy, cfg.steps_per_execution)
    pretrain = cfg.train_mode == "pretrain"
    summary, model = {}, None

    if cfg.mode in ("train", "train_then_eval"):
        summary["train"], model = (_pretrain if pretrain else _finetune)(cfg, strategy, on_checkpoint)
        if summary["train"]["preempted"]:
            return summary
    if cfg.mode in ("eval", "train_then_eval"):
        summary["result"] = (_evaluate_pretrain if pretrain else _evaluate_classifier)(cfg, strategy, model)
    if cfg.mode == "export" or (cfg.mode in ("train", "train_then_eval") and not pretrain):
        summary["export"] = _export(cfg, strategy, model)
    return summary
