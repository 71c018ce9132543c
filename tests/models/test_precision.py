"""Mixed precision gives the float32 contrastive loss (on the same weights and data) and sane updates.

One train step of a tiny SimCLR model under float32, mixed_bfloat16 and mixed_float16 (the
latter through the LossScaleOptimizer that factory.make_optimizer adds). The first-step loss is
computed in the forward pass, before any update, so with identical weights and data the only
difference is rounding; a policy that silently fell back to float32, or a loss scale that is
not undone, would show up here.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_med.config import Config  # noqa: E402
from simclr_med.train import factory  # noqa: E402

BATCH, SIZE = 4, 32
# Relative tolerance on the first-step loss. float16 keeps 11 mantissa bits (observed: 0.07%);
# bfloat16 keeps 8, ~8x coarser, and the 1/τ = 10 of the logits amplifies it (observed: 1.7%).
# A loss scale left in, or a policy that is not applied, is off by orders of magnitude more.
REL_TOL = {"mixed_bfloat16": 3e-2, "mixed_float16": 1e-2}
# float16's loss scale starts at 2**15; the first steps may overflow and be skipped (halving it).
MAX_SKIPPED_STEPS = 3


@pytest.fixture
def restore_policy():
    yield
    factory.set_precision("float32")
    keras.backend.clear_session()


def _cfg(precision):
    # No warmup: a warmup schedule starts at LR 0, and the first step would then not move the weights.
    return Config(resnet_depth=18, image_size=SIZE, train_batch_size=BATCH, optimizer="lars",
                  learning_rate=0.3, warmup_epochs=0, train_steps=10, precision=precision)


def _one_step(model) -> dict:
    """Logs of one `fit` step on a fixed batch (fit: the path training takes, dict batches)."""
    rng = np.random.default_rng(0)
    batch = {k: rng.random((BATCH, SIZE, SIZE, 3), dtype=np.float32) for k in ("view1", "view2")}
    history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, steps_per_epoch=1, verbose=0)
    return {k: v[-1] for k, v in history.history.items()}


def _model(precision, weights=None):
    factory.set_precision(precision)
    keras.utils.set_random_seed(0)
    model = factory.contrastive_model(_cfg(precision), num_train_examples=BATCH * 10)
    if weights is not None:
        model.set_weights(weights)
    return model


def _update(model, before) -> np.ndarray:
    """The step's change of the trainable variables, flattened into one vector."""
    after = model.get_weights()
    return np.concatenate([(after[i] - before[i]).ravel()
                           for i, v in enumerate(model.weights) if v.trainable])


@pytest.fixture(scope="module")
def float32_reference():
    """Initial weights, first-step loss and first update in float32 (once for both policies)."""
    try:
        model = _model("float32")
        weights = model.get_weights()
        loss = _one_step(model)["contrast_loss"]
        update = _update(model, weights)
    finally:
        factory.set_precision("float32")
    return weights, float(loss), update


@pytest.mark.parametrize("precision", ["mixed_bfloat16", "mixed_float16"])
def test_first_step_loss_matches_float32(precision, float32_reference, restore_policy):
    weights, loss32, update32 = float32_reference
    model = _model(precision, weights)
    compute = precision.split("_")[1]
    assert model.encoder.get_layer("stem_conv").compute_dtype == compute
    assert all(v.dtype == "float32" for v in model.trainable_variables), "variables must stay float32"
    if precision == "mixed_float16":
        assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)

    scale = float(model.optimizer.dynamic_scale) if precision == "mixed_float16" else None
    logs = _one_step(model)

    loss = float(logs["contrast_loss"])
    assert abs(loss - loss32) <= REL_TOL[precision] * abs(loss32), (precision, loss, loss32)
    assert logs["nonfinite_steps"] == 0
    for _ in range(MAX_SKIPPED_STEPS):
        if int(model.optimizer.iterations) > 0:
            break
        assert float(model.optimizer.dynamic_scale) < scale, "a skipped step must lower the loss scale"
        scale = float(model.optimizer.dynamic_scale)
        _one_step(model)
    assert int(model.optimizer.iterations) == 1, "no update was applied"
    assert all(np.isfinite(w).all() for w in model.get_weights())
    # The update follows float32's: same size (a loss scale left in the gradients would not) and
    # nearly the same direction (observed cosine: 0.96 bfloat16, 0.996 float16).
    update = _update(model, weights)
    size = np.linalg.norm(update) / np.linalg.norm(update32)
    cosine = update @ update32 / (np.linalg.norm(update) * np.linalg.norm(update32))
    assert 0.8 < size < 1.25, f"update is {size:.3g}x the float32 one"
    assert cosine > 0.9, f"update direction differs from float32 (cosine {cosine:.3f})"
