"""Learning-rate schedule of SimCLR: linear warmup, then cosine decay to zero."""
from __future__ import annotations

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="simclr_med")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """`base * step / warmup` for step < warmup, then `base * 0.5 * (1 + cos(pi * p))` with
    `p = (step - warmup) / (total - warmup)` clipped to [0, 1], so the rate stays 0 after `total_steps`.

    `base_learning_rate` is already batch-scaled (see `Config.scaled_learning_rate`), unlike SimCLR's
    `WarmUpAndCosineDecay`, which scales inside the schedule.
    """

    def __init__(self, base_learning_rate: float, warmup_steps: int, total_steps: int,
                 name: str = "warmup_cosine"):
        if base_learning_rate < 0:
            raise ValueError(f"WarmupCosine: base_learning_rate={base_learning_rate} must be >= 0")
        if total_steps < 1:
            raise ValueError(f"WarmupCosine: total_steps={total_steps} must be >= 1")
        if not 0 <= warmup_steps <= total_steps:
            raise ValueError(f"WarmupCosine: warmup_steps={warmup_steps} "
                             f"must be in [0, total_steps={total_steps}]")
        self.base_learning_rate = float(base_learning_rate)
        self.warmup_steps = int(warmup_steps)
        self.total_steps = int(total_steps)
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        base = self.base_learning_rate
        warmup = float(self.warmup_steps)
        decay_steps = float(max(self.total_steps - self.warmup_steps, 1))
        progress = ops.clip((step - warmup) / decay_steps, 0.0, 1.0)
        cosine = 0.5 * base * (1.0 + ops.cos(math.pi * progress))
        if self.warmup_steps == 0:
            return cosine
        return ops.where(step < warmup, base * step / warmup, cosine)

    def get_config(self):
        return {
            "base_learning_rate": self.base_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
            "name": self.name,
        }
