"""Transfer benchmark: initialisations × tasks × seeds, each cell an ordinary fine-tuning run.

The protocol of transfer studies in this literature: every initialisation (random, supervised
weights, SSL runs, continual supervised runs) is fine-tuned on every task with several seeds;
the table gives mean ± std per (task, init), an independent two-sample t-test of each init
against a baseline init, and the steps/epochs to converge under early stopping.

A cell is `experiment.run` in `root/<task>/<init>/seed<k>/`: a cell with `result.json` is done
and skipped, a half-trained one resumes from its checkpoint, so a killed benchmark continues.

Early stopping. A cell keeps a checkpoint every `eval_every` steps and scores the model on the
validation split after each one; training stops after `patience` scores without a new best
(online, under the cell's unchanged LR schedule). Every score is persisted, so a killed cell
resumes with its history; checkpoints saved but not yet scored are scored from disk first.
The test result of a cell is that of its best validation checkpoint.

Spec (a dict or a JSON file; paths relative to the working directory, like flagfiles):
    {"base": {"flagfile": "flags/demo_finetune.cfg", "verbose": 0},      # Config fields
     "inits": {"random": "", "simclr": "runs/demo_pretrain",            # name → --checkpoint
               "wide": {"checkpoint": "runs/w2", "width_multiplier": 2}},  # or Config fields
     "baseline": "random",
     "tasks": {"demo": {"dataset": "demo"},                               # name → Config fields
               "demo_50pct": {"dataset": "demo", "label_fraction": 0.5}},
     "seeds": 3,                                                          # or a list of seeds
     "metric": "top1_accuracy",               # optional; default mean_auc / top1_accuracy
     "early_stopping": {"validation_split": "validation", "eval_every": 100, "patience": 3},
     "data_dir": "/data/tfds", "description": "..."}                      # optional

    python -m simclr_med.methods.transfer --spec flags/demo_transfer.json --root runs/transfer
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import sys
from collections.abc import Sequence

import keras
import tensorflow as tf

from simclr_med import config, experiment, io
from simclr_med.config import Config
from simclr_med.data import datasets
from simclr_med.errors import CheckpointError, ConfigError, DataError, SimclrMedError, storage_errors
from simclr_med.evaluation import metrics, predict, statistics, tables
from simclr_med.methods import sweep
from simclr_med.train import checkpoints, factory

log = logging.getLogger(__name__)

SPEC_KEYS = ("description", "base", "inits", "baseline", "tasks", "seeds", "metric",
             "early_stopping", "data_dir")
TABLE_FILE = "transfer_table.json"
STATE_FILE = "early_stopping.json"
_HARNESS_FIELDS = ("mode", "model_dir", "seed")  # set per cell by the harness, never by a spec


@dataclasses.dataclass(frozen=True)
class EarlyStopping:
    validation_split: str = "validation"
    eval_every: int = 0  # steps between validations; 0: the task's checkpoint_steps
    patience: int = 3


@dataclasses.dataclass
class Spec:
    tasks: dict  # name → Config field values (base already merged in)
    inits: dict  # name → Config field values (at least `checkpoint`)
    seeds: list
    baseline: str | None = None
    metric: str | None = None
    early_stopping: EarlyStopping | None = None
    data_dir: str = ""
    description: str = ""
    source: str = "spec"


# ------------------------------------------------------------------------------------ the spec

def _fields(mapping, where: str) -> dict:
    """Config field values of a spec section; a `flagfile` entry is read first, the rest override."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{where}: expected an object of Config fields, got {type(mapping).__name__}")
    values = config.read_flagfile(mapping["flagfile"]) if "flagfile" in mapping else {}
    values.update({k: config.coerce(k, v, where) for k, v in mapping.items() if k != "flagfile"})
    harness = [k for k in values if k in _HARNESS_FIELDS]
    if harness:
        raise ConfigError(f"{where}: {harness[0]!r} is set by the harness")
    return values


def load_spec(spec, source: str = "spec") -> Spec:
    """A Spec from a dict or a JSON file; every problem is a ConfigError naming the file and key."""
    if isinstance(spec, str):
        source = spec
        try:
            spec = io.read_json(spec)
        except OSError as e:
            raise ConfigError(f"{source}: cannot read the spec ({e.strerror})") from None
        except json.JSONDecodeError as e:
            raise ConfigError(f"{source}: not valid JSON ({e})") from None
    if not isinstance(spec, dict):
        raise ConfigError(f"{source}: the spec must be a JSON object")
    unknown = sorted(set(spec) - set(SPEC_KEYS))
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown}; valid keys: {', '.join(SPEC_KEYS)}")
    for key in ("inits", "tasks"):
        if not isinstance(spec.get(key), dict) or not spec[key]:
            raise ConfigError(f"{source}: '{key}' must be a non-empty object of name → settings")
    base = _fields(spec.get("base", {}), f"{source}: base")
    tasks = {name: {**base, **_fields(t, f"{source}: task {name!r}")} for name, t in spec["tasks"].items()}
    inits = {name: _fields({"checkpoint": i} if isinstance(i, str) else i, f"{source}: init {name!r}")
             for name, i in spec["inits"].items()}
    seeds = spec.get("seeds", 1)
    seeds = list(range(seeds)) if isinstance(seeds, int) else seeds
    if not seeds or not all(isinstance(s, int) for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError(f"{source}: 'seeds' must be a positive count or a list of distinct integers")
    baseline = spec.get("baseline")
    if baseline is not None and baseline not in inits:
        raise ConfigError(f"{source}: baseline {baseline!r} is not one of the inits {sorted(inits)}")
    early = spec.get("early_stopping")
    if early is not None:
        try:
            early = EarlyStopping(**early)
        except TypeError as e:
            raise ConfigError(f"{source}: early_stopping: {e}") from None
        if early.patience < 1 or early.eval_every < 0:
            raise ConfigError(f"{source}: early_stopping needs patience >= 1 and eval_every >= 0")
    for name in [*tasks, *inits]:
        if not name or "/" in name or name.startswith("."):
            raise ConfigError(f"{source}: {name!r} cannot name a run directory")
    return Spec(tasks=tasks, inits=inits, seeds=seeds, baseline=baseline, metric=spec.get("metric"),
                early_stopping=early, data_dir=spec.get("data_dir", ""),
                description=spec.get("description", ""), source=source)


def cell_dir(root: str, task: str, init: str, seed: int) -> str:
    return os.path.join(root, task, init, f"seed{seed}")


def cell_config(spec: Spec, root: str, task: str, init: str, seed: int) -> Config:
    """The run of one cell: task settings, then the init's, then the harness's bookkeeping."""
    fields = {**spec.tasks[task], **spec.inits[init]}
    fields.update(mode="train" if spec.early_stopping else "train_then_eval", seed=seed,
                  model_dir=cell_dir(root, task, init, seed),
                  data_dir=fields.get("data_dir") or spec.data_dir or os.path.join(root, "data"))
    if spec.early_stopping:
        every = spec.early_stopping.eval_every or fields.get("checkpoint_steps", Config.checkpoint_steps)
        # Every checkpoint is scored, and training stops `patience` scores after the best one,
        # so the best is always among the last patience + 1.
        fields.update(checkpoint_steps=every, keep_checkpoint_max=spec.early_stopping.patience + 1)
    cfg = Config(**fields)
    try:
        cfg.validate()
    except ConfigError as e:
        raise ConfigError(f"{spec.source}: task {task!r} × init {init!r}: {e}") from None
    if cfg.train_mode == "pretrain":
        raise ConfigError(f"{spec.source}: task {task!r}: train_mode must be finetune or lineareval")
    return cfg


# ------------------------------------------------------------------------------- early stopping

def stopping_point(history: Sequence[tuple[int, float | None]], patience: int) -> dict:
    """Where online early stopping stops: after `patience` validations without a new best.

    `history` is (step, score) in step order, higher is better; an undefined score (None)
    counts as no improvement. Later scores are ignored, as training would not have reached them.
    """
    best_step, best_value, wait = None, None, 0
    for step, value in history:
        if value is not None and (best_value is None or value > best_value):
            best_step, best_value, wait = step, value, 0
        else:
            wait += 1
        if wait >= patience:
            return {"best_step": best_step, "best_value": best_value, "stop_step": step,
                    "stopped_early": True}
    return {"best_step": best_step, "best_value": best_value,
            "stop_step": history[-1][0] if history else None, "stopped_early": False}


def _checkpoint_steps(model_dir: str) -> list[tuple[int, str]]:
    state = tf.train.get_checkpoint_state(model_dir)
    paths = list(state.all_model_checkpoint_paths) if state else []
    return sorted((checkpoints.step_of(p), p) for p in paths)


def _read_json(path: str) -> dict:
    return io.read_json(path)


def _write_json(path: str, obj) -> None:
    io.write_json(path, tables.to_jsonable(obj), sort_keys=True)


class _Validator:
    """Scores a cell's classifier on the validation split: the model in training, or a checkpoint."""

    def __init__(self, cfg: Config, split: str, metric: str | None):
        self.cfg = cfg
        self.classes = _read_json(os.path.join(cfg.model_dir, experiment.CLASSES_FILE))
        self.metric = metric
        self._restored = None
        self.data = functools.cache(functools.partial(predict.eval_data, cfg, cfg.dataset, split))

    def score_checkpoint(self, prefix: str) -> tuple[str, float | None]:
        if self._restored is None:
            self._restored = factory.classifier(self.cfg, num_classes=len(self.classes["class_names"]),
                                              multi_label=self.classes["multi_label"], num_train_examples=1)
        predict.restore_checkpoint(self._restored, prefix)
        return self.score(self._restored)

    def score(self, model) -> tuple[str, float | None]:
        result = predict.evaluate_checkpoint(model, None, self.data, self.classes)
        if self.metric is None:
            return sweep.headline(result)
        if self.metric not in result:
            raise ConfigError(f"metric {self.metric!r} is not computed for this task; "
                              f"available: {sorted(k for k, v in result.items() if isinstance(v, float))}")
        return self.metric, metrics.finite(result[self.metric])


def _early_stopped(cfg: Config, early: EarlyStopping, metric: str | None) -> dict | None:
    """Trains the cell until the stopping rule fires, persisting every validation score.

    Returns the cell's early-stopping record, or None when SIGTERM stopped the training.
    """
    path = os.path.join(cfg.model_dir, STATE_FILE)
    state = _read_json(path) if io.exists(path) else {"history": [], "trained": False}
    validator = None

    def record(step: int, scored: tuple[str, float | None]) -> bool:
        """Persists one score; True when the stopping rule says stop."""
        state["metric"], value = scored
        state["history"].append({"step": step, "value": value})
        _write_json(path, state)
        log.info("%s step %d: validation %s = %s", cfg.model_dir, step, state["metric"], value)
        return _decision(state, early)["stopped_early"]

    # Checkpoints saved but never scored (the process died in between), in step order.
    for step, prefix in _checkpoint_steps(cfg.model_dir):
        if _decision(state, early)["stopped_early"]:
            break
        if step not in {h["step"] for h in state["history"]}:
            validator = validator or _Validator(cfg, early.validation_split, metric)
            record(step, validator.score_checkpoint(prefix))
    if not state["trained"] and not _decision(state, early)["stopped_early"]:
        def on_checkpoint(model, step):
            nonlocal validator  # built after the first run wrote the class list
            validator = validator or _Validator(cfg, early.validation_split, metric)
            return record(step, validator.score(model))

        if experiment.run(cfg, on_checkpoint=on_checkpoint)["train"]["preempted"]:
            return None
    state["trained"] = True
    decision = _decision(state, early)
    if decision["best_step"] is None:
        raise DataError(f"{cfg.model_dir}: validation {state.get('metric')} is undefined at every "
                        f"checkpoint of {cfg.dataset}/{early.validation_split}")
    _, meta = datasets.load(cfg.dataset, cfg.train_split, data_dir=cfg.data_dir,
                            manual_dir=cfg.manual_dir or None, uncertainty_policy=cfg.uncertainty_policy,
                            label_fraction=cfg.label_fraction, seed=cfg.seed, pixel_bits=cfg.pixel_bits)
    # Fine-tuning steps through images (a case's images are separate examples), so epochs count images.
    state.update(decision, validation_split=early.validation_split, patience=early.patience,
                 eval_every=cfg.checkpoint_steps, num_train_examples=meta.num_examples,
                 num_train_images=meta.num_images,
                 epochs_to_best=decision["best_step"] * cfg.train_batch_size / meta.num_images)
    _write_json(path, state)
    return state


def _decision(state: dict, early: EarlyStopping) -> dict:
    return stopping_point([(h["step"], h["value"]) for h in state["history"]], early.patience)


def _prune(model_dir: str, best_step: int) -> None:
    """Drops the checkpoints the stopping rule no longer needs: all but the best and the last."""
    entries = _checkpoint_steps(model_dir)
    kept = [p for s, p in entries if s == best_step or p == entries[-1][1]]
    # The state file first, so it never lists a deleted checkpoint.
    checkpoints.write_state(model_dir, [os.path.basename(p) for p in kept])
    for _, prefix in entries:
        if prefix not in kept:
            for file in io.glob(prefix + ".*"):
                io.remove(file)


def run_cell(cfg: Config, early: EarlyStopping | None, metric: str | None) -> str:
    """Runs one cell unless its result.json exists: "skipped", "done" or "preempted" (SIGTERM)."""
    # Results of two settings in one table would compare nothing.
    # With early stopping, checkpoint_steps is how often a cell is scored.
    experiment.check_settings(cfg, early_stopping=dataclasses.asdict(early) if early else None,
                              **({"checkpoint_steps": cfg.checkpoint_steps} if early else {}))
    if io.exists(os.path.join(cfg.model_dir, "result.json")):
        return "skipped"
    try:
        if early is None:
            return "preempted" if experiment.run(cfg)["train"]["preempted"] else "done"
        state = _early_stopped(cfg, early, metric)
        if state is None:
            return "preempted"
        _prune(cfg.model_dir, state["best_step"])
        best = dict(_checkpoint_steps(cfg.model_dir))[state["best_step"]]
        experiment.run(dataclasses.replace(cfg, mode="eval", checkpoint=best))
        return "done"
    finally:
        keras.backend.clear_session()  # many cells share one process


# ---------------------------------------------------------------------------------- the table

def _cell_record(cfg: Config, metric: str | None) -> dict:
    result = _read_json(os.path.join(cfg.model_dir, "result.json"))
    if metric and metric not in result:
        raise ConfigError(f"{cfg.model_dir}/result.json has no metric {metric!r}")
    name, value = (metric, metrics.finite(result[metric])) if metric else sweep.headline(result)
    record = {"seed": cfg.seed, "metric": name, "value": value, "final_step": result.get("global_step")}
    state_path = os.path.join(cfg.model_dir, STATE_FILE)
    if io.exists(state_path):
        state = _read_json(state_path)
        record.update({k: state[k] for k in ("best_step", "stop_step", "stopped_early", "epochs_to_best")})
    return record


def build_table(spec: Spec, records: dict) -> dict:
    """Mean ± std per (task, init), convergence, and the t-test of each init vs the baseline."""
    rows = []
    for task in spec.tasks:
        values = {init: [r["value"] for r in records[task, init] if r["value"] is not None]
                  for init in spec.inits}
        for init in spec.inits:
            recs = records[task, init]
            row = {"task": task, "init": init, "seeds": [r["seed"] for r in recs],
                   "metric": recs[0]["metric"], "values": [r["value"] for r in recs],
                   **statistics.mean_std(values[init])}
            if spec.early_stopping:
                row["best_step"] = statistics.mean_std([r["best_step"] for r in recs])
                row["epochs_to_best"] = statistics.mean_std([r["epochs_to_best"] for r in recs])
                row["stopped_early"] = sum(bool(r["stopped_early"]) for r in recs)
            if spec.baseline and init != spec.baseline:
                try:
                    row["ttest"] = statistics.ttest(values[spec.baseline], values[init])
                except ValueError as e:
                    row["ttest"] = {"p_value": None, "note": str(e)}
            rows.append(row)
    return {"description": spec.description, "baseline": spec.baseline, "spec": spec.source,
            "early_stopping": dataclasses.asdict(spec.early_stopping) if spec.early_stopping else None,
            "rows": rows}


def run(spec, root: str) -> dict:
    """Runs every missing cell of `spec` under `root`; writes and returns the table.

    When SIGTERM stops a cell (its checkpoint saved), returns {"preempted": cell dir} instead.
    """
    root = io.run_path(root)
    spec = spec if isinstance(spec, Spec) else load_spec(spec)
    cells = {(t, i, s): cell_config(spec, root, t, i, s)
             for t in spec.tasks for i in spec.inits for s in spec.seeds}
    for init, fields in spec.inits.items():  # a missing init fails now, not hours into the run
        if fields.get("checkpoint"):
            try:
                checkpoints.resolve_checkpoint(fields["checkpoint"])
            except CheckpointError as e:
                raise CheckpointError(f"{spec.source}: init {init!r}: {e}") from None
    ran = []
    for key, cfg in cells.items():
        log.info("transfer cell %s/%s/seed%d", *key)
        status = run_cell(cfg, spec.early_stopping, spec.metric)
        if status == "preempted":
            log.warning("SIGTERM: %s saved its checkpoint; rerun the same command to resume", cfg.model_dir)
            return {"preempted": cfg.model_dir}
        if status == "done":
            ran.append(cfg.model_dir)
    records = {}
    for (task, init, _), cfg in cells.items():
        records.setdefault((task, init), []).append(_cell_record(cfg, spec.metric))
    table = build_table(spec, records)
    table["ran"] = ran
    _write_json(os.path.join(root, TABLE_FILE), table)
    return table


def _fmt(s: dict | None, digits: int = 4) -> str:
    if not s or s["mean"] is None:
        return "-"
    return f"{s['mean']:.{digits}f}" + (f" ± {s['std']:.{digits}f}" if s["std"] is not None else "")


def format_table(table: dict) -> str:
    header = ["task", "init", "n", table["rows"][0]["metric"] if table["rows"] else "metric"]
    if table["early_stopping"]:
        header += ["best step", "epochs to best", "stopped early"]
    if table["baseline"]:
        header += [f"Δ vs {table['baseline']}", "p"]
    lines = []
    for r in table["rows"]:
        cells = [r["task"], r["init"], str(r["n"]), _fmt(r)]
        if table["early_stopping"]:
            cells += [_fmt(r["best_step"], 0), _fmt(r["epochs_to_best"], 2),
                      f"{r['stopped_early']}/{len(r['seeds'])}"]
        if table["baseline"]:
            t = r.get("ttest")
            p = t.get("p_value") if t else None
            if t is None:
                cells += ["", ""]
            else:
                diff = "-" if t.get("mean_diff") is None else f"{t['mean_diff']:+.4f}"
                p_text = "-" if p is None else f"{p:.3g}" + (" *" if t.get("significant") else "")
                cells += [diff, p_text]
        lines.append(cells)
    out = [table["description"]] if table["description"] else []
    out.append(tables.text_table(header, lines, rule=False))
    if table["baseline"]:
        out.append(f"p: independent two-sample t-test against {table['baseline']} over the seeds; "
                   "* p < 0.05, not adjusted for the number of comparisons")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", required=True, help="JSON spec (see the module docstring)")
    p.add_argument("--root", required=True, help="directory of the cells and transfer_table.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        with storage_errors(args.root):
            table = run(args.spec, args.root)
    except SimclrMedError as e:
        print(f"simclr-med: error: {e}", file=sys.stderr)
        return 2
    if "preempted" in table:
        return 143
    print(format_table(table))
    print(f"table: {os.path.join(args.root, TABLE_FILE)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
