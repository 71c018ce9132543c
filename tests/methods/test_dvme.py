import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest
import tensorflow as tf

from simclr_med.methods.dvme import build_dvme, train_dvme

SMALL = dict(dim=16, num_heads=2, mlp_ratio=2, hidden_dim=16)


@pytest.mark.parametrize("widths", [[7], [5, 11], [3, 8, 20]])
def test_output_shape_for_any_number_of_encoders(widths):
    model = build_dvme(widths, num_classes=4, **SMALL)
    xs = [np.random.rand(6, w).astype("float32") for w in widths]
    probs = model(xs, training=False).numpy()
    assert probs.shape == (6, 4)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_dict_inputs_and_multi_label_sigmoid():
    model = build_dvme({"simclr": 6, "supervised": 9}, num_classes=3, multi_label=True, **SMALL)
    out = model({"simclr": np.zeros((2, 6), "float32"), "supervised": np.ones((2, 9), "float32")}).numpy()
    assert out.shape == (2, 3)
    assert np.all((out > 0) & (out < 1))
    assert not np.allclose(out.sum(axis=1), 1.0)


@pytest.mark.parametrize("attention", [True, False])
def test_gradients_reach_every_projection(attention):
    widths = [4, 6, 10]
    model = build_dvme(widths, num_classes=3, attention=attention, **SMALL)
    xs = [tf.random.normal((8, w)) for w in widths]
    y = tf.constant([0, 1, 2, 0, 1, 2, 0, 1])
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, model(xs, training=True)))
    proj = [v for v in model.trainable_variables if v.path.startswith("proj_")]
    assert len(proj) == 2 * len(widths)  # kernel + bias of each projection
    for var, grad in zip(proj, tape.gradient(loss, proj)):
        assert grad is not None and float(tf.reduce_max(tf.abs(grad))) > 0, var.path


def test_attention_ablation_changes_parameter_count():
    with_attn = build_dvme([5, 7], num_classes=2, attention=True, **SMALL)
    without = build_dvme([5, 7], num_classes=2, attention=False, **SMALL)
    assert with_attn.count_params() > without.count_params()
    assert not any("mha" in layer.name for layer in without.layers)
    assert any("mha" in layer.name for layer in with_attn.layers)


def test_bad_arguments_are_rejected():
    with pytest.raises(ValueError, match="at least one"):
        build_dvme([], num_classes=2)
    with pytest.raises(ValueError, match="divisible"):
        build_dvme([4], num_classes=2, dim=10, num_heads=3)


def _split_signal(n, rng):
    """Label = 2·[a > 0] + [b > 0] with a only in embedding 1 and b only in embedding 2."""
    e1 = rng.normal(size=(n, 8)).astype("float32")
    e2 = rng.normal(size=(n, 12)).astype("float32")
    y = 2 * (e1[:, 0] > 0) + (e2[:, 3] > 0)
    return [e1, e2], y.astype("int64")


def test_learns_signal_split_across_two_embeddings():
    rng = np.random.default_rng(0)
    train_x, train_y = _split_signal(1200, rng)
    test_x, test_y = _split_signal(400, rng)
    probs, model = train_dvme(train_x, train_y, test_x, epochs=40, batch_size=64,
                              learning_rate=3e-3, patience=8, seed=0, **SMALL)
    acc = float(np.mean(probs.argmax(1) == test_y))
    # Chance is 0.25 and either embedding alone caps accuracy at 0.5.
    assert acc > 0.8, acc
    assert model.output_shape == (None, 4)


def test_train_dvme_validates_shapes():
    rng = np.random.default_rng(0)
    x, y = _split_signal(20, rng)
    with pytest.raises(ValueError, match="test embedding"):
        train_dvme(x, y, [x[0], x[1][:, :5]], epochs=1, **SMALL)
    with pytest.raises(ValueError, match="expects 2 embeddings"):
        train_dvme(x, y, [x[0]], epochs=1, **SMALL)


def test_masked_labels_are_not_trained_as_negatives():
    """u_ignore's uncertain labels are stored as 0 with mask 0: the mask must keep them out of the loss."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 6)).astype("float32")
    labels = np.ones((300, 2), "float32")  # every label positive...
    mask = np.ones_like(labels)
    labels[:, 1], mask[:, 1] = 0.0, 0.0  # ...but label 1 is uncertain everywhere: stored 0, masked
    probs, _ = train_dvme([x], labels, [x[:20]], multi_label=True, label_mask=mask, epochs=30,
                          learning_rate=3e-3, seed=0, **SMALL)
    # Without the mask label 1 is learned as certainly negative; with it, its loss is 0 and it stays put.
    assert probs[:, 0].min() > 0.9 and probs[:, 1].min() > 0.2, probs[:3]


def test_groups_stay_on_one_side_of_the_hold_out():
    from simclr_med.methods.dvme import _validation_split

    groups = np.repeat([f"patient{i}" for i in range(30)], 4)
    labels = np.zeros((120, 3))
    tr, va = _validation_split(labels, True, 0.2, np.random.default_rng(0), groups)
    assert len(va) == 6 * 4 and not set(groups[tr]) & set(groups[va])
    assert sorted(np.concatenate([tr, va]).tolist()) == list(range(120))


def test_bad_multi_label_inputs_are_rejected():
    x = [np.zeros((10, 4), "float32")]
    with pytest.raises(ValueError, match="label_mask"):
        train_dvme(x, np.zeros((10, 3)), x, multi_label=True, label_mask=np.ones((10, 2)), epochs=1, **SMALL)
    with pytest.raises(ValueError, match="validation_fraction"):
        train_dvme(x, np.zeros(10), x, validation_fraction=1.0, epochs=1, **SMALL)
    with pytest.raises(ValueError, match="train embedding"):
        train_dvme([np.zeros(10, "float32")], np.zeros(10), x, epochs=1, **SMALL)
