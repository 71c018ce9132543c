import math
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_med.train.schedules import WarmupCosine

BASE, WARMUP, TOTAL = 0.6, 100, 1100


def closed_form(step):
    if step < WARMUP:
        return BASE * step / WARMUP
    p = min((step - WARMUP) / (TOTAL - WARMUP), 1.0)
    return 0.5 * BASE * (1 + math.cos(math.pi * p))


@pytest.mark.parametrize(
    "step, expected",
    [(0, 0.0), (50, 0.3), (100, BASE), (600, BASE / 2), (350, BASE * (2 + math.sqrt(2)) / 4), (1100, 0.0),
     (5000, 0.0)],
)
def test_values(step, expected):
    sched = WarmupCosine(BASE, WARMUP, TOTAL)
    assert closed_form(step) == pytest.approx(expected, abs=1e-12)
    for s in (step, tf.constant(step, tf.int64), tf.constant(float(step), tf.float32)):
        assert float(sched(s)) == pytest.approx(expected, rel=1e-5, abs=1e-7)


def test_matches_closed_form_everywhere_and_inside_tf_function():
    sched = WarmupCosine(BASE, WARMUP, TOTAL)
    steps = np.arange(0, TOTAL + 20, 7)
    got = tf.function(lambda s: sched(s))(tf.constant(steps, tf.int64)).numpy()
    np.testing.assert_allclose(got, [closed_form(s) for s in steps], rtol=1e-5, atol=1e-7)
    assert got.dtype == np.float32


def test_no_warmup_starts_at_base():
    sched = WarmupCosine(1.0, 0, 10)
    assert float(sched(0)) == pytest.approx(1.0)
    assert float(sched(5)) == pytest.approx(0.5, abs=1e-6)


def test_all_warmup():
    sched = WarmupCosine(1.0, 10, 10)
    assert float(sched(5)) == pytest.approx(0.5)
    assert float(sched(10)) == pytest.approx(1.0)


def test_config_round_trip():
    sched = WarmupCosine(0.3, 7, 70, name="lr")
    again = WarmupCosine.from_config(sched.get_config())
    assert again.get_config() == sched.get_config()
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(sched))
    assert isinstance(restored, WarmupCosine) and float(restored(35)) == pytest.approx(float(sched(35)))


@pytest.mark.parametrize("args, match", [
    ((0.1, 5, 0), "total_steps"),
    ((0.1, 11, 10), "warmup_steps"),
    ((-1.0, 0, 10), "base_learning_rate"),
])
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        WarmupCosine(*args)
