"""Optimizer factory: `lars` for pretraining, `sgd` / `adam` for fine-tuning and linear evaluation.

`weight_decay` means the same thing for all three: an L2 term whose gradient `wd * w` is added to
the loss gradient before the update (SimCLR adds `wd * sum(l2_loss)` to the loss for SGD/Adam and
LARS adds it to the gradient; the two are identical). So it passes through momentum, and the
paper's fine-tuning grid (wd in {1e-5, 1e-4, 1e-3}) keeps its meaning. Keras' `weight_decay` is
decoupled (`w -= lr * wd * w`, outside momentum), roughly 1/(1 - momentum) = 10x weaker per step
at momentum 0.9, and it cannot exclude variables by rank, so it is not used. Biases and BatchNorm
parameters (rank <= 1) never decay.
"""
from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from simclr_med.train.lars import LARS, is_excluded

OPTIMIZERS = ("lars", "sgd", "adam")


class _L2InGradient:
    """Mixin: adds `weight_decay_rate * w` to the gradient of rank >= 2 variables, then defers."""

    def __init__(self, *args, weight_decay_rate: float = 0.0, **kwargs):
        if kwargs.pop("weight_decay", None) is not None:
            raise ValueError(f"{type(self).__name__}: use weight_decay_rate (L2 in the gradient), "
                             "not weight_decay")
        if weight_decay_rate < 0.0:
            raise ValueError(f"{type(self).__name__}: weight_decay_rate={weight_decay_rate} must be >= 0")
        super().__init__(*args, **kwargs)
        self.weight_decay_rate = float(weight_decay_rate)

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self._decay = [self.weight_decay_rate > 0 and not is_excluded(v) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        if self._decay[self._get_variable_index(variable)]:
            wd = ops.cast(self.weight_decay_rate, variable.dtype)
            gradient = ops.add(ops.cast(gradient, variable.dtype), ops.multiply(wd, variable))
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay")
        config["weight_decay_rate"] = self.weight_decay_rate
        return config


@keras.saving.register_keras_serializable(package="simclr_med")
class SGDWithL2(_L2InGradient, keras.optimizers.SGD):
    """Momentum SGD with L2 weight decay in the gradient (biases / BatchNorm excluded)."""


@keras.saving.register_keras_serializable(package="simclr_med")
class AdamWithL2(_L2InGradient, keras.optimizers.Adam):
    """Adam with L2 weight decay in the gradient (biases / BatchNorm excluded), as SimCLR's Adam."""


def build_optimizer(name: str, learning_rate, *, momentum: float = 0.9, weight_decay: float = 0.0,
                    nesterov: bool = False, unadapted: Sequence[str] = ()) -> keras.optimizers.Optimizer:
    """Return the optimizer `name` (lars | sgd | adam). `learning_rate`: float or LearningRateSchedule.

    `momentum` is ignored by adam (its beta_1 stays at 0.9, as in SimCLR). `nesterov` applies to sgd
    only: SimCLR's momentum optimizer (its fine-tuning) is Nesterov's; its LARS is not. `unadapted`: path
    substrings of variables that LARS updates with its plain learning rate, still decayed: SimCLR's
    supervised head, which a trust ratio of ~1e-3·‖w‖/‖g‖ would barely move from its initialisation.
    """
    if isinstance(learning_rate, int):
        learning_rate = float(learning_rate)
    if name == "lars":
        return LARS(learning_rate, momentum=momentum, weight_decay_rate=weight_decay,
                    exclude_from_layer_adaptation=list(unadapted))
    if name == "sgd":
        return SGDWithL2(learning_rate, momentum=float(momentum), nesterov=bool(nesterov),
                         weight_decay_rate=weight_decay)
    if name == "adam":
        return AdamWithL2(learning_rate, weight_decay_rate=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}: expected one of {', '.join(OPTIMIZERS)}")
