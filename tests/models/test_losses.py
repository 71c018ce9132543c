"""NT-Xent against a direct NumPy transcription of Eq. (1) at the scale of SimCLR's code, and across
replicas."""
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from simclr_med.models.losses import nt_xent


def numpy_nt_xent(z1, z2, tau):
    """Eq. (1): l(i,j) = -log exp(s_ij/τ) / Σ_{k≠i} exp(s_ik/τ), averaged over all 2N anchors."""
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n = len(z1)
    sim = z @ z.T / tau
    losses = []
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        denom = sum(np.exp(sim[i, k]) for k in range(2 * n) if k != i)
        losses.append(-np.log(np.exp(sim[i, j]) / denom))
    return float(np.mean(losses))


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_matches_numpy_equation(tau):
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(2, 6, 16)).astype(np.float32)
    out = nt_xent(tf.constant(z1), tf.constant(z2), tau)
    # SimCLR's objective.py adds the two views' mean losses: twice the mean over 2N anchors.
    assert float(out.loss) == pytest.approx(2 * numpy_nt_xent(z1, z2, tau), rel=1e-5)
    assert float(out.mean_loss) == pytest.approx(float(out.loss), rel=1e-6)


def test_temperature_matters():
    rng = np.random.default_rng(1)
    z1, z2 = rng.normal(size=(2, 6, 16)).astype(np.float32)
    assert float(nt_xent(z1, z2, 0.1).loss) != pytest.approx(numpy_nt_xent(z1, z2, 0.5), rel=1e-3)


def test_accuracy_and_entropy():
    z = np.eye(4, 8, dtype=np.float32)
    out = nt_xent(z, z, 0.05)  # identical views: positive is always the best candidate
    assert float(out.accuracy) == 1.0
    assert float(out.entropy) < 0.01
    shuffled = nt_xent(z, z[::-1].copy(), 0.05)
    assert float(shuffled.accuracy) == 0.0


_MIRRORED = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf
    from simclr_med.train.strategy import make_strategy
    from simclr_med.models.losses import nt_xent
    strategy = make_strategy("mirrored", num_logical_devices=2)
    assert strategy.num_replicas_in_sync == 2
    rng = np.random.default_rng(0)
    x1, x2 = rng.normal(size=(2, 8, 5)).astype(np.float32)
    w0 = rng.normal(size=(5, 12)).astype(np.float32)
    tau = float(sys.argv[1]); gather = sys.argv[2] == "gather"

    def loss_and_grad(w, a, b, ctx):
        with tf.GradientTape() as tape:
            tape.watch(w)
            out = nt_xent(a @ w, b @ w, tau, replica_context=ctx)
        return out.loss, tape.gradient(out.loss, w)

    single_loss, single_grad = loss_and_grad(tf.constant(w0), x1, x2, None)
    with strategy.scope():
        w = tf.Variable(w0)
    def step(inputs):
        ctx = tf.distribute.get_replica_context()
        return loss_and_grad(w, inputs[0], inputs[1], ctx if gather else None)
    ds = tf.data.Dataset.from_tensor_slices((x1, x2)).batch(8)
    dist = strategy.experimental_distribute_dataset(ds)
    loss, grad = strategy.run(tf.function(step), args=(next(iter(dist)),))
    loss = strategy.reduce("SUM", loss, axis=None)
    grad = strategy.reduce("SUM", grad, axis=None)
    print(json.dumps({"loss_diff": abs(float(loss) - float(single_loss)),
                      "grad_diff": float(np.max(np.abs(grad.numpy() - single_grad.numpy())))}))
""")


def _run_mirrored(tau, mode):
    out = subprocess.run([sys.executable, "-c", _MIRRORED, str(tau), mode], capture_output=True,
                         text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_two_replicas_equal_single_device():
    r = _run_mirrored(0.2, "gather")
    assert r["loss_diff"] < 1e-5
    assert r["grad_diff"] < 1e-5


def test_without_cross_replica_gather_differs():
    """The check above must be able to fail: local-only negatives give another loss."""
    r = _run_mirrored(0.2, "local")
    assert r["loss_diff"] > 1e-3
