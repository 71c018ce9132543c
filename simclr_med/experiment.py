"""A run from a Config: pretrain / fine-tune / linear-eval, predict, export."""
from __future__ import annotations

import contextlib
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
    _check_batch_size(cfg, num_examples, "cases" if cfg.method == "micle" else "images",
                      "a batch would repeat them, which NT-Xent counts as negatives")
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


def _check_batch_size(cfg: Config, count: int, unit: str, harm: str) -> None:
    """A training batch holds distinct examples: the pipeline cycles through `count` (images, or MICLe's
    cases) of the train split, so a larger batch holds repeats. Equal is fine: each once per batch."""
    if cfg.train_batch_size <= count:
        return
    fraction = f" at --label_fraction={cfg.label_fraction}" if cfg.train_mode != "pretrain" \
        and cfg.label_fraction < 1 else ""
    raise ConfigError(f"--train_batch_size={cfg.train_batch_size} exceeds the {count} {unit} of split "
                      f"{cfg.train_split!r} of {cfg.dataset}{fraction}: {harm}; use at most {count}")


def _loop_args(cfg: Config) -> dict:
    return dict(checkpoint_steps=cfg.checkpoint_steps, keep_checkpoint_max=cfg.keep_checkpoint_max,
                log_steps=cfg.log_steps, skip_nonfinite_steps=cfg.skip_nonfinite_steps,
                verbose=cfg.verbose)


# A harness keeps its runs' scores, so what they were scored on is a setting of theirs too.
_SCORED = ("eval_split", "eval_dataset")
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Config)}


def check_settings(cfg: Config, **extra) -> None:
    """Records a harness run's settings (`SETTINGS_FILE` in its model_dir) on its first start, and
    refuses to reuse or resume it under other ones: a sweep point or benchmark cell whose spec
    changed would otherwise be reported with results of the old one. Its training settings count
    (`Config.training_settings`), what it is scored on, and `extra`: the harness's own, or bookkeeping
    fields its scores depend on."""
    settings = {**cfg.training_settings(), **{k: getattr(cfg, k) for k in _SCORED}, **extra}
    before = _recorded_settings(cfg.model_dir)
    if before is not None and (changed := _changes(before, settings)):
        raise ConfigError(f"{cfg.model_dir} was run with other settings ({_listed(changed)}); restore them, "
                          "or delete the directory to run it anew")
    _record_settings(cfg.model_dir, before, settings)


def _check_resume(cfg: Config) -> None:
    """A run that resumes from its checkpoints trains on as it started, or not at all: a changed batch
    size, schedule, model, data or method would otherwise give one run of two recipes, reported as
    the new one. One line names each changed field; bookkeeping fields (`Config.bookkeeping_fields`)
    may change. A run without a checkpoint yet starts anew and records its settings."""
    settings = cfg.training_settings()
    resumes = bool(io.glob(os.path.join(cfg.model_dir, "ckpt-*.index")))
    before = _recorded_settings(cfg.model_dir, legacy=resumes)
    if resumes and before is not None and (changed := _changes(before, settings)):
        if {"train_steps", "train_epochs"} & changed.keys():
            advice = ("its learning-rate schedule spans its steps, so a run is not extended: to train on, "
                      f"start a new --model_dir with --checkpoint={cfg.model_dir}")
        else:
            advice = "resume it with those, or use a new --model_dir"
        raise ConfigError(f"{cfg.model_dir} was run with other settings ({_listed(changed)}); {advice}")
    _record_settings(cfg.model_dir, before, settings)


def _recorded_settings(model_dir: str, legacy: bool = False) -> dict | None:
    """The settings a run folder recorded; with `legacy`, a run recorded before `SETTINGS_FILE` existed
    gives the flags of its newest training invocation instead. None when it recorded none."""
    path = os.path.join(model_dir, SETTINGS_FILE)
    if io.exists(path):
        return io.read_json(path)
    flags = [p for mode in ("train", "train_then_eval")
             for p in io.glob(os.path.join(model_dir, f"flags_{mode}.json"))] if legacy else []
    if not flags:
        return None
    return {k: v for k, v in io.read_json(max(flags, key=io.mtime)).items()
            if k in _DEFAULTS and k not in Config.bookkeeping_fields()}


def _changes(before: dict, now: dict) -> dict:
    """{field: (old, new)} for each setting of `now`, and each training field `before` holds, that differs;
    a field the record lacks (a flag added since) had its default."""
    keys = now.keys() | {k for k in before if k in _DEFAULTS and k not in Config.bookkeeping_fields()}
    old, new = ({k: d.get(k, _DEFAULTS.get(k)) for k in keys} for d in (before, now))
    return {k: (old[k], new[k]) for k in sorted(keys) if old[k] != new[k]}


def _listed(changes: dict) -> str:
    return ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())


def _record_settings(model_dir: str, before: dict | None, settings: dict) -> None:
    """Writes `settings` over the record, keeping what else it holds (a harness's own settings)."""
    merged = {**(before or {}), **settings}
    if merged != before:
        _write_json(os.path.join(model_dir, SETTINGS_FILE), merged)


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
    _check_batch_size(cfg, meta.num_images, "images", "a batch would hold some of them twice")
    classes = _classes(cfg, meta)
    dataset = lambda start_step: _distribute(strategy, lambda ctx: pipelines.supervised_dataset(  # noqa: E731
        ds, meta, batch_size=cfg.train_batch_size, image_size=cfg.image_size, augmentation=cfg.augmentation,
        training=True, color_jitter_strength=cfg.color_jitter_strength, seed=cfg.seed, start_step=start_step,
        input_context=ctx))
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


# Modes that write a run's checkpoints or export: one process at a time per run folder. Evaluation only
# reads them (its result files are written whole), so it may run beside training.
_WRITING_MODES = ("train", "train_then_eval", "export")


def run(cfg: Config, on_checkpoint=None) -> dict:
    """Runs `cfg.mode`; returns a summary (training figures, result, export path).

    `on_checkpoint(model, step)`: see `loop.train` (e.g. validation for early stopping). Training and
    export hold the run folder (`io.run_lock`): another process training or exporting there is refused.
    """
    cfg.validate()
    with io.run_lock(cfg.model_dir) if cfg.mode in _WRITING_MODES else contextlib.nullcontext():
        return _run(cfg, on_checkpoint)


def _run(cfg: Config, on_checkpoint=None) -> dict:
    if cfg.data_dir == "":
        cfg.data_dir = os.path.join(cfg.model_dir, "data")
    cfg.model_dir, cfg.data_dir = io.run_path(cfg.model_dir), io.run_path(cfg.data_dir)
    cfg.checkpoint = io.run_path(cfg.checkpoint)
    io.makedirs(cfg.model_dir)
    if cfg.mode in ("train", "train_then_eval"):
        _check_resume(cfg)  # before this invocation's flags are recorded
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
