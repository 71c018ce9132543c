"""One flat config for a run.

Field names equal the flag names in run.py (the google-research/simclr ones where they exist), so
`run.py` builds a Config from its parsed flags in one line; library code never reads flags.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os

from simclr_med.errors import ConfigError


@dataclasses.dataclass
class Config:
    # What to do.
    mode: str = "train"  # train | eval | train_then_eval | export | sweep
    train_mode: str = "pretrain"  # pretrain | finetune | lineareval
    method: str = "simclr"  # simclr | micle (pretrain only)

    # Data.
    dataset: str = "demo"
    data_dir: str = ""
    manual_dir: str = ""
    train_split: str = "train"
    eval_split: str = "test"
    eval_dataset: str = ""  # zero-shot evaluation on another dataset (e.g. nih_chestxray14)
    image_size: int = 64
    augmentation: str = "simclr"  # simclr | chexpert_pretrain | chexpert_finetune | crop_only | none
    color_jitter_strength: float = 1.0
    label_fraction: float = 1.0
    uncertainty_policy: str = "mixed"  # CheXpert: mixed | u_ones | u_zeros | u_ignore
    cache_dataset: bool = False

    # Model.
    resnet_depth: int = 50
    width_multiplier: int = 1
    num_proj_layers: int = 3
    proj_out_dim: int = 128
    checkpoint: str = ""  # initialise weights from another run / a Keras file / a released SimCLR TF1 checkpoint
    checkpoint_head: bool = True  # pretraining from --checkpoint starts its projection head there too, if it has one
    zero_init_residual: bool = True

    # Objective.
    temperature: float = 0.1
    hidden_norm: bool = True

    # Optimisation.
    optimizer: str = "lars"  # lars | sgd | adam
    learning_rate: float = 0.3
    learning_rate_scaling: str = "linear"  # linear | sqrt | none
    warmup_epochs: float = 10.0
    weight_decay: float = 1e-6
    momentum: float = 0.9
    train_batch_size: int = 256
    train_steps: int = 0  # overrides train_epochs when > 0
    train_epochs: int = 100
    eval_batch_size: int = 256

    # Runtime.
    model_dir: str = ""
    checkpoint_steps: int = 1000
    keep_checkpoint_max: int = 5
    log_steps: int = 50
    steps_per_execution: int = 1
    strategy: str = "default"  # default | mirrored | tpu
    tpu: str = ""
    num_logical_devices: int = 0  # >1 splits the CPU into logical devices (tests, debugging)
    precision: str = "float32"  # float32 | mixed_bfloat16 | mixed_float16
    use_xla: bool = False
    winograd: bool = True  # CPU, float32: 3x3 convolutions as Winograd (faster; more host memory)
    host_memory_limit_gib: float = 0.0  # cap on TensorFlow's CPU tensor pool; 0: none (tf_env.limit_host_memory)
    seed: int = 0
    skip_nonfinite_steps: int = 0
    verbose: int = 1

    # Fine-tuning grid (--mode=sweep); empty = the paper's grid.
    sweep_learning_rates: str = ""
    sweep_weight_decays: str = ""

    def validate(self) -> "Config":
        """Reject contradictory settings up front, with the flag named, rather than deep in TF."""
        def need(cond, msg):
            if not cond:
                raise ConfigError(msg)

        need(self.mode in ("train", "eval", "train_then_eval", "export", "sweep"), f"--mode={self.mode!r} is not one of train, eval, train_then_eval, export, sweep")
        need(self.mode != "sweep" or self.train_mode != "pretrain", "--mode=sweep tunes fine-tuning: use --train_mode=finetune or lineareval")
        need(self.train_mode in ("pretrain", "finetune", "lineareval"), f"--train_mode={self.train_mode!r} is not one of pretrain, finetune, lineareval")
        need(self.method in ("simclr", "micle"), f"--method={self.method!r} is not one of simclr, micle")
        need(self.method == "simclr" or self.train_mode == "pretrain", "--method=micle only applies to --train_mode=pretrain")
        need(self.resnet_depth in (18, 34, 50, 101, 152, 200), f"--resnet_depth={self.resnet_depth} is not one of 18, 34, 50, 101, 152, 200")
        need(1 <= self.width_multiplier <= 4, f"--width_multiplier={self.width_multiplier} must be between 1 and 4")
        need(self.num_proj_layers >= 1, "--num_proj_layers must be >= 1")
        need(self.temperature > 0, f"--temperature={self.temperature} must be > 0")
        # Contrast and saturation factors are drawn from [1 - 0.8·s, 1 + 0.8·s]: beyond 1.25 they invert images.
        need(0 <= self.color_jitter_strength <= 1.25,
             f"--color_jitter_strength={self.color_jitter_strength} must be in [0, 1.25]")
        need(self.optimizer in ("lars", "sgd", "adam"), f"--optimizer={self.optimizer!r} is not one of lars, sgd, adam")
        need(self.learning_rate_scaling in ("linear", "sqrt", "none"), f"--learning_rate_scaling={self.learning_rate_scaling!r} is not one of linear, sqrt, none")
        need(self.train_batch_size >= 1, "--train_batch_size must be >= 1")
        need(0.0 < self.label_fraction <= 1.0, f"--label_fraction={self.label_fraction} must be in (0, 1]")
        need(self.image_size >= 16, f"--image_size={self.image_size} is too small (minimum 16)")
        need(self.precision in ("float32", "mixed_bfloat16", "mixed_float16"), f"--precision={self.precision!r} is not one of float32, mixed_bfloat16, mixed_float16")
        need(self.strategy in ("default", "mirrored", "tpu"), f"--strategy={self.strategy!r} is not one of default, mirrored, tpu")
        need(self.uncertainty_policy in ("mixed", "u_ones", "u_zeros", "u_ignore"), f"--uncertainty_policy={self.uncertainty_policy!r} is not one of mixed, u_ones, u_zeros, u_ignore")
        need(self.host_memory_limit_gib >= 0, f"--host_memory_limit_gib={self.host_memory_limit_gib} must be >= 0 (0: no limit)")
        need(self.checkpoint_steps >= 1, "--checkpoint_steps must be >= 1")
        for name in ("eval_batch_size", "log_steps", "keep_checkpoint_max", "steps_per_execution", "proj_out_dim"):
            need(getattr(self, name) >= 1, f"--{name}={getattr(self, name)} must be >= 1")
        for name in ("weight_decay", "warmup_epochs", "momentum", "skip_nonfinite_steps"):
            need(getattr(self, name) >= 0, f"--{name}={getattr(self, name)} must be >= 0")
        need(self.train_steps > 0 or self.train_epochs > 0, "set --train_steps or --train_epochs")
        need(bool(self.model_dir), "--model_dir is required (every mode reads or writes the run there)")
        need(not os.path.exists(self.model_dir) or os.path.isdir(self.model_dir),
             f"--model_dir={self.model_dir} exists and is not a directory")
        return self

    def sweep_grid(self) -> dict:
        """Keyword arguments for `sweep.sweep` from the comma-separated grid flags."""
        grid = {}
        for name, text in (("learning_rates", self.sweep_learning_rates), ("weight_decays", self.sweep_weight_decays)):
            if text:
                try:
                    grid[name] = [float(x) for x in text.split(",")]
                except ValueError:
                    raise ConfigError(f"--sweep_{name}={text!r} is not a comma-separated list of numbers") from None
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


def replace(cfg: Config, **changes) -> Config:
    return dataclasses.replace(cfg, **changes)

