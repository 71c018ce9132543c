import copy
import json
import os
import subprocess
import sys
import textwrap

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras
import numpy as np
import pytest
import tensorflow as tf

from simclr_med.config import Config
from simclr_med.train import factory
from simclr_med.train.lars import LARS, is_excluded
from simclr_med.train.optimizers import AdamWithL2, SGDWithL2, build_optimizer
from simclr_med.train.schedules import WarmupCosine

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def reference(w, grads, lrs, *, momentum=0.9, wd=0.0, eta=0.001, decay=True, adapt=True, nesterov=False):
    """SimCLR's LARS step written out in NumPy (float64)."""
    w = np.array(w, np.float64)
    v = np.zeros_like(w)
    for g, lr in zip(grads, lrs):
        g = np.array(g, np.float64) + (wd * w if decay else 0.0)
        ratio = 1.0
        if adapt:
            wn, gn = np.linalg.norm(w), np.linalg.norm(g)
            ratio = eta * wn / gn if wn > 0 and gn > 0 else 1.0
        v = momentum * v + lr * ratio * g
        w = w - (momentum * v + lr * ratio * g if nesterov else v)
    return w


def run(opt, variables, grads):
    """Apply a list of per-step gradient lists inside tf.function, as a training loop does."""
    @tf.function
    def step(gs):
        opt.apply(gs, variables)

    for gs in grads:
        step([tf.constant(g) for g in gs])
    return [v.numpy() for v in variables]


RNG = np.random.RandomState(0)
KERNEL = RNG.randn(4, 3).astype("float32")
BIAS = RNG.randn(3).astype("float32")
G_KERNEL = [RNG.randn(4, 3).astype("float32") for _ in range(3)]
G_BIAS = [RNG.randn(3).astype("float32") for _ in range(3)]


def dense(name="dense", kernel=KERNEL, bias=BIAS):
    layer = keras.layers.Dense(kernel.shape[1], name=name)
    layer.build((None, kernel.shape[0]))
    layer.set_weights([kernel, bias])
    return layer


@pytest.mark.parametrize("nesterov", [False, True])
def test_kernel_and_bias_match_hand_computation(nesterov):
    layer = dense()
    opt = LARS(0.7, momentum=0.9, weight_decay_rate=0.05, eta=0.01, nesterov=nesterov)
    k, b = run(opt, [layer.kernel, layer.bias], list(zip(G_KERNEL, G_BIAS)))
    # (a) kernel: decay enters the gradient before the trust ratio.
    want_k = reference(KERNEL, G_KERNEL, [0.7] * 3, wd=0.05, eta=0.01, nesterov=nesterov)
    np.testing.assert_allclose(k, want_k, rtol=1e-5, atol=1e-7)
    assert not np.allclose(k, reference(KERNEL, G_KERNEL, [0.7] * 3, wd=0.0, eta=0.01, nesterov=nesterov))
    # (b) bias (rank 1): no decay, no adaptation, plain momentum.
    want_b = reference(BIAS, G_BIAS, [0.7] * 3, decay=False, adapt=False, nesterov=nesterov)
    np.testing.assert_allclose(b, want_b, rtol=1e-5, atol=1e-6)
    assert int(opt.iterations.numpy()) == 3


def test_bias_with_constant_gradient_is_plain_momentum_by_hand():
    layer = dense()
    ones = np.ones(3, "float32")
    _, b = run(LARS(0.1, weight_decay_rate=0.5), [layer.kernel, layer.bias], [(G_KERNEL[0], ones)] * 3)
    # v = 0.1, 0.19, 0.271 -> w moves by 0.561.
    np.testing.assert_allclose(b, BIAS - 0.561, rtol=1e-6, atol=1e-6)


def test_zero_norm_weight_uses_ratio_one():
    zero = np.zeros((4, 3), "float32")
    layer = dense(kernel=zero)
    g = [np.full((4, 3), 0.5, "float32")] * 3
    (k,) = run(LARS(0.2, weight_decay_rate=0.1), [layer.kernel], [[x] for x in g])
    # Step 1 has ||w|| = 0 -> ratio 1 (w += -0.1); later steps adapt with the then non-zero w.
    np.testing.assert_allclose(k, reference(zero, g, [0.2] * 3, wd=0.1), rtol=1e-5, atol=1e-7)
    (k1,) = run(LARS(0.2, weight_decay_rate=0.1), [dense(kernel=zero).kernel], [g[:1]])
    np.testing.assert_allclose(k1, -0.1, rtol=1e-6)


def test_zero_gradient_leaves_weight_and_stays_finite():
    layer = dense()
    (k,) = run(LARS(0.5), [layer.kernel], [[np.zeros((4, 3), "float32")]] * 2)
    np.testing.assert_array_equal(k, KERNEL)


def test_learning_rate_schedule_is_followed():
    sched = keras.optimizers.schedules.ExponentialDecay(0.4, decay_steps=1, decay_rate=0.5)
    layer = dense()
    _, b = run(LARS(sched), [layer.kernel, layer.bias], list(zip(G_KERNEL, G_BIAS)))
    want = reference(BIAS, G_BIAS, [0.4, 0.2, 0.1], decay=False, adapt=False)
    np.testing.assert_allclose(b, want, rtol=1e-5, atol=1e-6)


def test_name_patterns_exclude_by_path():
    body, head = dense("body"), dense("head")
    variables = [body.kernel, head.kernel]
    grads = [list(gs) for gs in zip(G_KERNEL, G_KERNEL)]
    # Adaptation exclusions default to the weight-decay ones, as in SimCLR.
    b, h = run(LARS(0.3, weight_decay_rate=0.1, exclude_from_weight_decay=["head"]), variables, grads)
    np.testing.assert_allclose(b, reference(KERNEL, G_KERNEL, [0.3] * 3, wd=0.1), rtol=1e-5)
    np.testing.assert_allclose(h, reference(KERNEL, G_KERNEL, [0.3] * 3, decay=False, adapt=False), rtol=1e-5)

    body, head = dense("body"), dense("head")
    opt = LARS(0.3, weight_decay_rate=0.1, exclude_from_weight_decay=["head"],
               exclude_from_layer_adaptation=[])
    _, h = run(opt, [body.kernel, head.kernel], grads)
    np.testing.assert_allclose(h, reference(KERNEL, G_KERNEL, [0.3] * 3, decay=False), rtol=1e-5)


def test_rank_exclusion_can_be_switched_off():
    layer = dense()
    opt = LARS(0.3, weight_decay_rate=0.1, exclude_vectors=False)
    _, b = run(opt, [layer.kernel, layer.bias], list(zip(G_KERNEL, G_BIAS)))
    np.testing.assert_allclose(b, reference(BIAS, G_BIAS, [0.3] * 3, wd=0.1), rtol=1e-5)


def test_is_excluded():
    layer = dense("proj_head")
    bn = keras.layers.BatchNormalization()
    bn.build((None, 3))
    assert is_excluded(layer.bias) and not is_excluded(layer.kernel)
    assert all(is_excluded(v) for v in bn.weights)
    assert is_excluded(layer.kernel, ["head"]) and not is_excluded(layer.kernel, ["body"])
    assert not is_excluded(layer.bias, exclude_vectors=False)


def test_get_config_round_trip():
    opt = LARS(
        WarmupCosine(1.2, 10, 100), momentum=0.8, weight_decay_rate=1e-6, eta=0.002, nesterov=True,
        exclude_from_weight_decay=["head"], exclude_from_layer_adaptation=["bn"], exclude_vectors=False,
        global_clipnorm=5.0,
    )
    config = opt.get_config()
    assert "weight_decay" not in config
    again = LARS.from_config(copy.deepcopy(config))  # Keras' from_config edits its argument
    assert again.get_config() == config
    assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).get_config() == config
    assert isinstance(again._learning_rate, WarmupCosine)
    assert LARS.from_config(LARS(0.25).get_config()).learning_rate.numpy() == pytest.approx(0.25)


def test_bad_arguments():
    with pytest.raises(ValueError, match="weight_decay_rate"):
        LARS(0.1, weight_decay=1e-4)
    with pytest.raises(ValueError, match="momentum"):
        LARS(0.1, momentum=1.5)
    with pytest.raises(ValueError, match="eta"):
        LARS(0.1, eta=0.0)


def tiny_model():
    keras.utils.set_random_seed(1)
    return keras.Sequential(
        [keras.Input((5,)), keras.layers.Dense(8), keras.layers.BatchNormalization(), keras.layers.ReLU(),
         keras.layers.Dense(3)]
    )


def test_checkpoint_restores_state_and_training_continues_identically(tmp_path):
    x = np.random.RandomState(2).randn(16, 5).astype("float32")
    y = np.random.RandomState(3).randn(16, 3).astype("float32")

    def stepper(model, opt):
        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(x, training=True) - y) ** 2)
            opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
        return step

    model, opt = tiny_model(), LARS(WarmupCosine(2.0, 2, 10), weight_decay_rate=1e-3)
    step = stepper(model, opt)
    for _ in range(3):
        step()
    path = tf.train.Checkpoint(model=model, optimizer=opt).save(str(tmp_path / "ckpt"))
    slots = [v.numpy() for v in opt.momentums]
    assert all(np.any(s != 0) for s in slots)
    for _ in range(3):
        step()
    want = [v.numpy() for v in model.weights]

    model2, opt2 = tiny_model(), LARS(WarmupCosine(2.0, 2, 10), weight_decay_rate=1e-3)
    status = tf.train.Checkpoint(model=model2, optimizer=opt2).restore(path)
    opt2.build(model2.trainable_variables)
    status.assert_consumed()
    assert int(opt2.iterations.numpy()) == 3
    for a, b in zip(slots, opt2.momentums):
        np.testing.assert_array_equal(a, b.numpy())
    step2 = stepper(model2, opt2)
    for _ in range(3):
        step2()
    assert int(opt2.iterations.numpy()) == 6
    for a, b in zip(want, model2.weights):
        np.testing.assert_array_equal(a, b.numpy())


def test_model_fit_reduces_loss():
    rng = np.random.RandomState(4)
    x = rng.randn(256, 5).astype("float32")
    y = (x @ rng.randn(5, 3)).argmax(axis=1)
    model = tiny_model()
    model.compile(optimizer=build_optimizer("lars", 1.0, weight_decay=1e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    hist = model.fit(x, y, batch_size=32, epochs=15, verbose=0, shuffle=False).history["loss"]
    assert np.all(np.isfinite(hist))
    assert hist[-1] < 0.6 * hist[0]


MIRRORED_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.path.insert(0, sys.argv[1])
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras, numpy as np
    from simclr_med.train.lars import LARS

    rng = np.random.RandomState(0)
    x = rng.randn(16, 5).astype("float32")
    y = rng.randn(16, 2).astype("float32")
    keras.utils.set_random_seed(0)
    init = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="tanh"),
                             keras.layers.Dense(2)]).get_weights()

    def train(strategy):
        with strategy.scope():
            model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(6, activation="tanh"),
                                      keras.layers.Dense(2)])
            model.set_weights(init)
            opt = LARS(0.5, weight_decay_rate=0.01, eta=0.01)
            opt.build(model.trainable_variables)
        data = strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensor_slices((x, y)).batch(8))

        @tf.function
        def step(batch):
            def replica_step(xb, yb):
                with tf.GradientTape() as tape:
                    loss = tf.reduce_sum(tf.reduce_mean((model(xb, training=True) - yb) ** 2, axis=1)) / 8.0
                opt.apply(tape.gradient(loss, model.trainable_variables), model.trainable_variables)
            strategy.run(replica_step, args=batch)

        for _ in range(2):
            for batch in data:
                step(batch)
        return [w.tolist() for w in model.get_weights()], int(opt.iterations.numpy())

    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    print(json.dumps({"replicas": mirrored.num_replicas_in_sync, "init": [w.tolist() for w in init],
                      "single": train(tf.distribute.get_strategy()), "mirrored": train(mirrored)}))
    """
)


def test_mirrored_strategy_matches_single_device():
    out = subprocess.run(
        [sys.executable, "-c", MIRRORED_SCRIPT, REPO], capture_output=True, text=True, timeout=240
    )
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["replicas"] == 2
    (single, n1), (mirrored, n2) = res["single"], res["mirrored"]
    assert n1 == n2 == 4
    for s, m, i in zip(single, mirrored, res["init"]):
        assert not np.allclose(s, i)
        np.testing.assert_allclose(m, s, rtol=1e-5, atol=1e-6)


def test_build_optimizer():
    assert isinstance(build_optimizer("lars", 1), LARS)
    sgd = build_optimizer("sgd", 0.1, momentum=0.8, weight_decay=1e-4)
    assert isinstance(sgd, SGDWithL2) and sgd.momentum == 0.8 and sgd.weight_decay_rate == 1e-4
    assert isinstance(build_optimizer("adam", WarmupCosine(1e-3, 0, 10)), AdamWithL2)
    with pytest.raises(ValueError, match="unknown optimizer 'rmsprop'"):
        build_optimizer("rmsprop", 0.1)


def test_nesterov_sgd_is_simclrs_momentum_optimizer():
    """SimCLR's `--optimizer=momentum` (tf.train.MomentumOptimizer, use_nesterov=True) written out in NumPy,
    L2 in the gradient as for SGD here; plain momentum stays the default."""
    wd, lr = 0.1, 0.05
    layer = dense()
    opt = build_optimizer("sgd", lr, momentum=0.9, weight_decay=wd, nesterov=True)
    [kernel] = run(opt, [layer.kernel], [[g] for g in G_KERNEL])
    expected = reference(KERNEL, G_KERNEL, [lr] * len(G_KERNEL), wd=wd, adapt=False, nesterov=True)
    np.testing.assert_allclose(kernel, expected, rtol=1e-5, atol=1e-6)
    assert not build_optimizer("sgd", lr).nesterov and not Config().nesterov
    assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).nesterov


@pytest.mark.parametrize("recipe", ["derm_finetune.cfg", "chexpert_finetune.cfg", "chexpert_continual.cfg"])
def test_fine_tuning_recipes_use_nesterov_momentum(recipe, monkeypatch):
    monkeypatch.chdir(REPO)  # nested --flagfile paths are relative to the working directory
    cfg = Config.from_flagfile(os.path.join("flags", recipe), model_dir="unused").validate()
    assert cfg.train_mode == "finetune"
    opt = factory.make_optimizer(cfg, num_train_examples=1024)
    assert isinstance(opt, SGDWithL2) and opt.nesterov and opt.momentum == 0.9


def test_classifier_head_is_decayed_but_not_adapted():
    """As SimCLR's LARS: its supervised head, which a trust ratio would barely move, gets the plain
    learning rate (still decayed); the encoder's kernels keep the trust ratio."""
    cfg = Config(train_mode="finetune", optimizer="lars", resnet_depth=18, image_size=32, learning_rate=0.1,
                 learning_rate_scaling="none", warmup_epochs=0, weight_decay=1e-3, train_steps=10,
                 model_dir="x")
    model = factory.classifier(cfg, num_classes=3, multi_label=False, num_train_examples=64)
    variables = [model.head.kernel, model.encoder.get_layer("stem_conv").kernel]
    before = [v.numpy() for v in variables]
    grads = [RNG.randn(*w.shape).astype("float32") for w in before]
    after = run(model.optimizer, variables, [grads])
    for w0, g, w1, adapt in zip(before, grads, after, (False, True)):
        np.testing.assert_allclose(w1, reference(w0, [g], [0.1], wd=1e-3, adapt=adapt), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("name", ["sgd", "adam"])
def test_l2_optimizers_decay_kernels_not_biases(name):
    """Against the stock Keras optimizer fed `g + wd * w` by hand for the kernel and `g` for the bias."""
    wd = 0.1
    layer, ref_layer = dense(), dense("ref")
    opt = build_optimizer(name, 0.05, momentum=0.9, weight_decay=wd)
    stock = keras.optimizers.SGD(0.05, momentum=0.9) if name == "sgd" else keras.optimizers.Adam(0.05)
    k, b = run(opt, [layer.kernel, layer.bias], list(zip(G_KERNEL, G_BIAS)))
    for gk, gb in zip(G_KERNEL, G_BIAS):
        stock.apply([gk + wd * ref_layer.kernel.numpy(), gb], [ref_layer.kernel, ref_layer.bias])
    np.testing.assert_allclose(k, ref_layer.kernel.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(b, ref_layer.bias.numpy(), rtol=1e-5, atol=1e-7)
    config = opt.get_config()
    assert config["weight_decay_rate"] == wd and "weight_decay" not in config
    assert keras.optimizers.deserialize(keras.optimizers.serialize(opt)).get_config() == config
