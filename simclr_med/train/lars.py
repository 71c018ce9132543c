"""LARS (You et al. 2017) as used by SimCLR, for Keras 3.

Follows google-research/simclr `lars_optimizer.py` with classic momentum: weight decay is added to
the gradient *before* the trust ratio, so it both regularises and enters the layer-wise scale;
velocity accumulates `lr * ratio * g'` and is subtracted from the weight. Keras' own `weight_decay`
argument is decoupled decay (a different rule), so it is refused here in favour of
`weight_decay_rate`.

Which variables skip decay / adaptation is decided once, in `build`, from the Keras variables (the
TF backend hands `update_step` bare `tf.Variable`s without `.path`), and stored by variable index.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence

import keras
import tensorflow as tf


def is_excluded(variable, patterns: Iterable[str] = (), exclude_vectors: bool = True) -> bool:
    """True for variables of rank <= 1 (biases, BatchNorm gamma/beta) or whose path contains a pattern.

    Rank is the robust default because BN/bias names depend on how a layer was named; the patterns
    cover anything else (e.g. a supervised head) by substring of `variable.path`.
    """
    if exclude_vectors and len(variable.shape) <= 1:
        return True
    path = getattr(variable, "path", None) or variable.name
    return any(p in path for p in patterns)


def _tf_variable(variable):
    """The tf.Variable behind a Keras variable (per replica inside a distribution strategy's update)."""
    return variable.value if isinstance(variable, keras.Variable) else variable


@keras.saving.register_keras_serializable(package="simclr_med")
class LARS(keras.optimizers.Optimizer):
    """Layer-wise Adaptive Rate Scaling with SimCLR's classic momentum.

    Per variable w with gradient g (after any clipping):
        g' = g + weight_decay_rate * w                        (unless excluded from decay)
        ratio = eta * ||w|| / ||g'||, or 1 if either norm is 0  (1 if excluded from adaptation)
        v <- momentum * v + lr * ratio * g'
        w <- w - v               (nesterov: w <- w - (momentum * v + lr * ratio * g'))

    Args:
        learning_rate: float or `keras.optimizers.schedules.LearningRateSchedule`.
        momentum: momentum coefficient.
        weight_decay_rate: L2 coefficient added to the gradient.
        eta: trust coefficient.
        nesterov: use Nesterov momentum.
        exclude_from_weight_decay: substrings of `variable.path` that get no weight decay (in
            addition to rank <= 1 variables when `exclude_vectors`).
        exclude_from_layer_adaptation: substrings of `variable.path` that get ratio 1; defaults to
            `exclude_from_weight_decay`, as in SimCLR.
        exclude_vectors: exclude every variable of rank <= 1 from both decay and adaptation.
        **kwargs: base optimizer arguments (`clipnorm`, `global_clipnorm`, `name`, ...).
    """

    def __init__(
        self,
        learning_rate=0.3,
        momentum: float = 0.9,
        weight_decay_rate: float = 0.0,
        eta: float = 0.001,
        nesterov: bool = False,
        exclude_from_weight_decay: Sequence[str] | None = None,
        exclude_from_layer_adaptation: Sequence[str] | None = None,
        exclude_vectors: bool = True,
        name: str = "lars",
        **kwargs,
    ):
        if kwargs.get("weight_decay") is not None:
            raise ValueError(
                "LARS: use weight_decay_rate (L2 added to the gradient, as in SimCLR), "
                "not the base class's decoupled weight_decay"
            )
        kwargs.pop("weight_decay", None)
        if isinstance(learning_rate, int):
            learning_rate = float(learning_rate)
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"LARS: momentum={momentum} must be in [0, 1)")
        if weight_decay_rate < 0.0:
            raise ValueError(f"LARS: weight_decay_rate={weight_decay_rate} must be >= 0")
        if eta <= 0.0:
            raise ValueError(f"LARS: eta={eta} must be > 0")
        self.momentum = float(momentum)
        self.weight_decay_rate = float(weight_decay_rate)
        self.eta = float(eta)
        self.nesterov = bool(nesterov)
        self.exclude_vectors = bool(exclude_vectors)
        # Not `self.exclude_from_weight_decay`: that name is a method of the base class.
        self._wd_patterns = list(exclude_from_weight_decay or [])
        self._adapt_patterns = (
            list(exclude_from_layer_adaptation)
            if exclude_from_layer_adaptation is not None
            else list(self._wd_patterns)
        )

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        self._decay = [
            self.weight_decay_rate > 0 and not is_excluded(v, self._wd_patterns, self.exclude_vectors)
            for v in variables
        ]
        self._adapt = [not is_excluded(v, self._adapt_patterns, self.exclude_vectors) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        grad = tf.cast(gradient, dtype)
        if self._decay[index]:
            grad = grad + tf.cast(self.weight_decay_rate, dtype) * variable
        if self._adapt[index]:
            # sqrt(2 * l2_loss): one fused reduction per norm instead of square, then sum.
            w_norm = tf.sqrt(2.0 * tf.nn.l2_loss(variable))
            g_norm = tf.sqrt(2.0 * tf.nn.l2_loss(grad))
            ratio = tf.where((w_norm > 0) & (g_norm > 0),
                             tf.math.divide_no_nan(self.eta * w_norm, g_norm), 1.0)
            lr = lr * tf.cast(ratio, dtype)
        # With lr 1 and gradient lr * ratio * g', TensorFlow's fused momentum kernel is exactly
        # v <- m v + lr ratio g';  w <- w - v  (nesterov: w <- w - (m v + lr ratio g')), in one
        # pass over w and v instead of five element-wise ops.
        tf.raw_ops.ResourceApplyMomentum(
            var=variable.handle, accum=_tf_variable(self.momentums[index]).handle,
            lr=tf.constant(1.0, dtype), grad=lr * grad, momentum=tf.constant(self.momentum, dtype),
            use_nesterov=self.nesterov)

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay")
        config.update(
            {
                "momentum": self.momentum,
                "weight_decay_rate": self.weight_decay_rate,
                "eta": self.eta,
                "nesterov": self.nesterov,
                "exclude_from_weight_decay": list(self._wd_patterns),
                "exclude_from_layer_adaptation": list(self._adapt_patterns),
                "exclude_vectors": self.exclude_vectors,
            }
        )
        return config
