"""The run configuration schema: every flag's name, type, default, help and allowed values, once.

Field names equal the flag names of run.py (the google-research/simclr ones where they exist):
`run.py` defines its absl flags from these fields, and flagfiles (`flags/*.cfg`, the transfer
harness's specs) are read into the same fields by `read_flagfile`. Library code never reads flags.
This module stays free of TensorFlow so that bad flags fail before it loads.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable

from simclr_med import io
from simclr_med.errors import ConfigError

# Validation error of a field with choices, unless the field declares its own wording.
_NOT_ONE_OF = "--{flag}={value!r} is not one of {choices}"


def _field(default, help: str, choices: Iterable | None = None, error: str | None = None,
           bookkeeping: bool = False):
    """A Config field with its help text and, when it has a fixed set of values, those values.

    `bookkeeping`: the field says where files are, how the run is logged, which hardware runs it or what
    an evaluation reads, not what is trained, so a resumed run or harness rerun may change it.
    """
    metadata = {"help": help, "choices": tuple(choices) if choices is not None else None,
                "error": error or _NOT_ONE_OF, "bookkeeping": bookkeeping}
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass
class Config:
    # What to do.
    mode: str = _field("train", "what to do (sweep: LR × weight-decay grid for fine-tuning)",
                       choices=("train", "eval", "train_then_eval", "export", "sweep"), bookkeeping=True)
    train_mode: str = _field(
        "pretrain", "pretrain: SimCLR/MICLe; finetune: end to end; lineareval: frozen encoder",
        choices=("pretrain", "finetune", "lineareval"))
    method: str = _field(
        "simclr", "pretraining positives (micle: two different images of a case; pretrain only)",
        choices=("simclr", "micle"))

    # Data.
    dataset: str = _field("demo", "demo | derm_cases/generic | derm_cases/scin | derm_cases/ham10000 | "
                                  "chexpert_v1 | nih_chestxray14")
    data_dir: str = _field("", "where TFDS datasets are built and read (default: <model_dir>/data)",
                           bookkeeping=True)
    manual_dir: str = _field("", "the user's manual download for the TFDS builder", bookkeeping=True)
    train_split: str = _field("train", "split to train on")
    eval_split: str = _field("test", "split to evaluate on", bookkeeping=True)
    eval_dataset: str = _field("", "evaluate on another dataset (zero-shot, e.g. nih_chestxray14 for a "
                                   "CheXpert model)", bookkeeping=True)
    image_size: int = _field(64, "input resolution (paper: 224; Derm fine-tuning 448)")
    # augment.PRESETS' names, in augment.get_preset's wording (a test keeps them equal: importing augment
    # here would load TensorFlow before the flags are checked).
    augmentation: str = _field(
        "simclr", "augmentation preset (simclr: SimCLR's, for Derm pretraining; chexpert_pretrain, "
                  "chexpert_finetune, derm_finetune: the paper's for CheXpert pretraining and for CheXpert "
                  "and Derm with --train_mode=finetune; crop_only: MICLe's partial augmentation; none: the "
                  "evaluation crop)",
        choices=("simclr", "chexpert_pretrain", "chexpert_finetune", "derm_finetune", "crop_only", "none"),
        error="--{flag}: unknown augmentation {value!r}; expected one of {choices}")
    color_jitter_strength: float = _field(
        1.0, "colour jitter strength s as applied by the simclr, chexpert_pretrain and derm_finetune presets "
             "(SimCLR: 1.0; the CheXpert pretraining recipe: 0.5)")
    label_fraction: float = _field(
        1.0, "fraction of labelled cases used for fine-tuning, chosen by case/patient")
    uncertainty_policy: str = _field("mixed", "CheXpert uncertain labels",
                                     choices=("mixed", "u_ones", "u_zeros", "u_ignore"))
    cache_dataset: bool = _field(False, "cache decoded examples in memory", bookkeeping=True)
    pixel_bits: int = _field(0, "bits per sample of 16-bit PNGs (12 for most hospital exports): the build "
                                "rescales them to full range; 0: each image's own (its sBIT chunk, else "
                                "its maximum rounded up to a bit depth), recorded in the build's metadata")

    # Model.
    resnet_depth: int = _field(50, "ResNet depth", choices=(18, 34, 50, 101, 152, 200))
    width_multiplier: int = _field(1, "ResNet width multiplier 1..4")
    num_proj_layers: int = _field(
        3, "fully connected layers in the projection head, counted as SimCLR's flag (the paper's recipes: 2, "
           "as SimCLR v1; SimCLR v2: 3)")
    proj_out_dim: int = _field(128, "output size of the projection head")
    checkpoint: str = _field(
        "", "initialise the encoder from a run dir, checkpoint prefix, Keras weights file or a released "
            "google-research/simclr TF1 checkpoint (in --mode=eval: the checkpoint to evaluate)")
    checkpoint_head: bool = _field(
        True, "pretraining from --checkpoint: start the projection head from its head too, when it has one "
              "(as SimCLR's code does); --nocheckpoint_head starts a fresh head")
    zero_init_residual: bool = _field(True, "zero-initialise the last BN gamma of each residual block")

    # Objective.
    temperature: float = _field(0.1, "NT-Xent temperature")
    hidden_norm: bool = _field(True, "L2-normalise projections (cosine similarity)")

    # Optimisation.
    optimizer: str = _field("lars", "optimizer", choices=("lars", "sgd", "adam"))
    learning_rate: float = _field(0.3, "base learning rate (before batch scaling)")
    learning_rate_scaling: str = _field(
        "linear", "learning rate × batch size B: linear ×B/256, sqrt ×√B", choices=("linear", "sqrt", "none"))
    warmup_epochs: float = _field(10.0, "linear warmup length in epochs")
    weight_decay: float = _field(1e-6, "L2 weight decay (biases and BatchNorm excluded)")
    momentum: float = _field(0.9, "optimizer momentum")
    nesterov: bool = _field(
        False, "SGD with Nesterov momentum (--optimizer=sgd only), as SimCLR's momentum optimizer; the "
               "paper's recipes for --train_mode=finetune set it, and it is off by default so that runs "
               "recorded without it resume unchanged")
    train_batch_size: int = _field(256, "global batch size (cases for MICLe, images otherwise)")
    train_steps: int = _field(0, "training steps (overrides --train_epochs when > 0)")
    train_epochs: int = _field(100, "training epochs")
    eval_batch_size: int = _field(256, "batch size for evaluation", bookkeeping=True)

    # Runtime.
    model_dir: str = _field("", "run directory: checkpoints, TensorBoard logs, results, exports",
                            bookkeeping=True)
    checkpoint_steps: int = _field(1000, "save a checkpoint every N steps", bookkeeping=True)
    keep_checkpoint_max: int = _field(5, "checkpoints kept on disk", bookkeeping=True)
    log_steps: int = _field(50, "TensorBoard scalars every N steps", bookkeeping=True)
    steps_per_execution: int = _field(1, "training steps per tf.function call", bookkeeping=True)
    strategy: str = _field("default", "distribution strategy", choices=("default", "mirrored", "tpu"),
                           bookkeeping=True)
    tpu: str = _field("", "TPU name or address (--strategy=tpu)", bookkeeping=True)
    num_logical_devices: int = _field(0, "split the CPU into N logical devices (testing MirroredStrategy)",
                                      bookkeeping=True)
    precision: str = _field(
        "float32", "compute precision", choices=("float32", "mixed_bfloat16", "mixed_float16"))
    use_xla: bool = _field(False, "compile train steps with XLA (faster on GPU/TPU, slower on CPU)",
                           bookkeeping=True)
    winograd: bool = _field(
        True, "on CPU in float32, run wide stride-1 3x3 convolutions as Winograd convolutions (faster, "
              "a little more memory; figures in README Performance)", bookkeeping=True)
    host_memory_limit_gib: float = _field(
        0.0, "cap TensorFlow's CPU tensor memory at this many GiB, bounding peak RSS (0: no cap; see README "
             "Performance)", bookkeeping=True)
    seed: int = _field(0, "random seed")
    skip_nonfinite_steps: int = _field(0, "skip up to N steps with NaN/Inf loss before stopping")
    verbose: int = _field(1, "0 silent, 1 progress bar, 2 one line per chunk", bookkeeping=True)

    # Fine-tuning grid (--mode=sweep); empty = the paper's grid.
    sweep_learning_rates: str = _field("", "--mode=sweep learning rates, comma-separated (default: 7 "
                                           "log-spaced 10^-3.5..10^-0.5)", bookkeeping=True)
    sweep_weight_decays: str = _field("", "--mode=sweep weight decays, comma-separated (default: "
                                          "1e-5,1e-4,1e-3,0)", bookkeeping=True)

    def validate(self) -> Config:
        """Reject contradictory settings up front, with the flag named, rather than deep in TF."""
        def need(cond, msg):
            if not cond:
                raise ConfigError(msg)

        for f in dataclasses.fields(self):
            choices, value = f.metadata["choices"], getattr(self, f.name)
            if choices is not None and value not in choices:
                raise ConfigError(f.metadata["error"].format(flag=f.name, value=value,
                                                             choices=", ".join(map(str, choices))))
        need(self.mode != "sweep" or self.train_mode != "pretrain",
             "--mode=sweep tunes fine-tuning: use --train_mode=finetune or lineareval")
        need(self.method == "simclr" or self.train_mode == "pretrain",
             "--method=micle only applies to --train_mode=pretrain")
        need(1 <= self.width_multiplier <= 4,
             f"--width_multiplier={self.width_multiplier} must be between 1 and 4")
        need(self.num_proj_layers >= 1, "--num_proj_layers must be >= 1")
        need(self.temperature > 0, f"--temperature={self.temperature} must be > 0")
        # Contrast and saturation factors are drawn from [1 - 0.8·s, 1 + 0.8·s]: beyond 1.25 they invert
        # images.
        need(0 <= self.color_jitter_strength <= 1.25,
             f"--color_jitter_strength={self.color_jitter_strength} must be in [0, 1.25]")
        need(self.train_batch_size >= 1, "--train_batch_size must be >= 1")
        need(0.0 < self.label_fraction <= 1.0, f"--label_fraction={self.label_fraction} must be in (0, 1]")
        need(self.image_size >= 16, f"--image_size={self.image_size} is too small (minimum 16)")
        need(self.pixel_bits == 0 or 8 <= self.pixel_bits <= 16,
             f"--pixel_bits={self.pixel_bits} must be 0 (each image's own depth) or 8..16")
        need(self.host_memory_limit_gib >= 0,
             f"--host_memory_limit_gib={self.host_memory_limit_gib} must be >= 0 (0: no limit)")
        need(self.checkpoint_steps >= 1, "--checkpoint_steps must be >= 1")
        for name in ("eval_batch_size", "log_steps", "keep_checkpoint_max", "steps_per_execution",
                     "proj_out_dim"):
            need(getattr(self, name) >= 1, f"--{name}={getattr(self, name)} must be >= 1")
        for name in ("weight_decay", "warmup_epochs", "momentum", "skip_nonfinite_steps"):
            need(getattr(self, name) >= 0, f"--{name}={getattr(self, name)} must be >= 0")
        need(self.train_steps > 0 or self.train_epochs > 0, "set --train_steps or --train_epochs")
        need(bool(self.model_dir), "--model_dir is required (every mode reads or writes the run there)")
        # Local only: this runs before TensorFlow may load (run.py caps its allocator first), and io
        # queries a bucket through TensorFlow; a bucket path is checked when the run first writes there.
        need(io.is_url(self.model_dir) or not io.exists(self.model_dir) or io.isdir(self.model_dir),
             f"--model_dir={self.model_dir} exists and is not a directory")
        return self

    def sweep_grid(self) -> dict:
        """Keyword arguments for `sweep.sweep` from the comma-separated grid flags."""
        grid = {}
        for name, text in (("learning_rates", self.sweep_learning_rates),
                           ("weight_decays", self.sweep_weight_decays)):
            if text:
                try:
                    grid[name] = [float(x) for x in text.split(",")]
                except ValueError:
                    raise ConfigError(
                        f"--sweep_{name}={text!r} is not a comma-separated list of numbers") from None
        return grid

    def scaled_learning_rate(self) -> float:
        """Base LR scaled by batch size as in SimCLR (linear: ×B/256, sqrt: ×√B)."""
        if self.learning_rate_scaling == "linear":
            return self.learning_rate * self.train_batch_size / 256.0
        if self.learning_rate_scaling == "sqrt":
            return self.learning_rate * math.sqrt(self.train_batch_size)
        return self.learning_rate

    def total_steps(self, num_train_examples: int) -> int:
        if self.train_steps > 0:
            return self.train_steps
        return max(1, self.train_epochs * num_train_examples // self.train_batch_size)

    def warmup_steps(self, num_train_examples: int) -> int:
        return int(round(self.warmup_epochs * num_train_examples / self.train_batch_size))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def field_types(cls) -> dict[str, type]:
        """Field name → bool, int, float or str: the kind of flag run.py defines for it."""
        return {f.name: type(f.default) for f in dataclasses.fields(cls)}

    @classmethod
    def bookkeeping_fields(cls) -> frozenset[str]:
        """The fields a resumed run or a harness rerun may change: paths, logging, hardware, evaluation."""
        return frozenset(name for name, f in _FIELDS.items() if f.metadata["bookkeeping"])

    def training_settings(self) -> dict:
        """The fields that decide what a run trains (all but the bookkeeping): what its folder records."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.bookkeeping_fields()}

    @classmethod
    def choices(cls, name: str) -> tuple | None:
        """The allowed values of a field, or None when any value of its type may do."""
        return _FIELDS[name].metadata["choices"]

    @classmethod
    def help_text(cls, name: str) -> str:
        """A field's help as `--helpfull` shows it: the text, then the allowed values."""
        meta = _FIELDS[name].metadata
        choices = f" [{' | '.join(map(str, meta['choices']))}]" if meta["choices"] else ""
        return meta["help"] + choices

    @classmethod
    def from_flagfile(cls, path: str, **overrides) -> Config:
        """The Config a flagfile describes (defaults elsewhere), then `overrides`; not yet validated."""
        return cls(**{**read_flagfile(path), **overrides})


_FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_TRUE, _FALSE = ("true", "t", "1"), ("false", "f", "0")  # absl's boolean spellings


def coerce(name: str, value, where: str):
    """A field's value from flag text or JSON, typed as the field; a ConfigError names place and field."""
    if name not in _FIELDS:
        raise ConfigError(f"{where}: {name!r} is not a Config field / run.py flag")
    kind = type(_FIELDS[name].default)
    if kind is bool and isinstance(value, str):
        if value.lower() not in _TRUE + _FALSE:
            raise ConfigError(f"{where}: {name}={value!r} is not a boolean")
        return value.lower() in _TRUE
    try:
        if kind is bool and not isinstance(value, bool):
            raise TypeError
        if kind is int and isinstance(value, float) and not value.is_integer():
            raise TypeError
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: {name}={value!r} is not of type {kind.__name__}") from None


def _is_bool(name: str) -> bool:
    return name in _FIELDS and type(_FIELDS[name].default) is bool


def parse_flags(lines: Iterable[str], where: str = "flags") -> dict:
    """Typed field values from flagfile lines, as absl reads them for run.py.

    `--name=value`; `--name` / `--noname` for booleans; blank lines and `#` or `//` comments;
    `--flagfile=path` (relative to the working directory) expanded in place. Later lines win.
    """
    return _parse(lines, where, ())


def _parse(lines: Iterable[str], where: str, open_files: tuple) -> dict:
    values = {}
    for n, raw in enumerate(lines, 1):
        line, at = raw.strip(), f"{where}:{n}"
        if not line or line.startswith(("#", "//")):
            continue
        if not line.startswith("-") or line.lstrip("-") == "":
            raise ConfigError(f"{at}: expected --name=value, got {line!r}")
        name, has_value, value = line.lstrip("-").partition("=")
        if name == "flagfile":
            values.update(_read_flagfile(os.path.expanduser(value), open_files))
            continue
        negated = name not in _FIELDS and name.startswith("no") and _is_bool(name[2:])
        field = name[2:] if negated else name
        if field not in _FIELDS:
            raise ConfigError(f"{at}: unknown flag --{name} (not a Config field / run.py flag)")
        if negated and has_value:
            raise ConfigError(f"{at}: --{name} takes no value (--{field}={value} sets it)")
        if not has_value and not _is_bool(field):
            raise ConfigError(f"{at}: --{name} needs a value (--{name}=value)")
        values[field] = not negated if not has_value else coerce(field, value, at)
    return values


def read_flagfile(path: str) -> dict:
    """Typed field values of a flagfile (only those it sets); see `parse_flags`."""
    return _read_flagfile(path, ())


def _read_flagfile(path: str, open_files: tuple) -> dict:
    if path in open_files:
        raise ConfigError(f"flagfile {path}: includes itself (via {' → '.join(open_files)})")
    try:
        lines = io.read_text(path).splitlines()  # a local file is read without loading TensorFlow
    except OSError as e:
        raise ConfigError(f"flagfile {path}: cannot read it ({e.strerror})") from None
    return _parse(lines, path, (*open_files, path))


def replace(cfg: Config, **changes) -> Config:
    return dataclasses.replace(cfg, **changes)
