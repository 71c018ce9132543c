"""Embeddings from a run, its SavedModel and a Keras weights file agree; the cache is reused."""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np
import pytest

from simclr_med import experiment
from simclr_med.config import Config
from simclr_med.errors import CheckpointError
from simclr_med.evaluation import embeddings, linear_protocol
from simclr_med.methods.dvme import build_dvme
from simclr_med.models import resnet
from simclr_med.train import checkpoints

NUM_TEST_CASES, NUM_VALIDATION_CASES = 40, 20  # demo: 200 cases, 20% test, 10% validation


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny fine-tuned demo run, evaluated on the test split and exported."""
    root = tmp_path_factory.mktemp("emb")
    cfg = Config(mode="train_then_eval", train_mode="finetune", dataset="demo", data_dir=str(root / "tfds"),
                 model_dir=str(root / "run"), resnet_depth=18, image_size=32, augmentation="crop_only",
                 train_batch_size=8, train_steps=3, optimizer="sgd", learning_rate=0.05,
                 learning_rate_scaling="none", warmup_epochs=0, checkpoint_steps=3, verbose=0)
    summary = experiment.run(cfg)
    return {"root": root, "run": cfg.model_dir, "data_dir": cfg.data_dir, "saved_model": summary["export"]}


def _extract(trained, source, **kw):
    return embeddings.extract(source, "demo", kw.pop("split", "test"), data_dir=trained["data_dir"],
                              batch_size=16, **kw)


def test_run_dir_saved_model_and_keras_file_agree(trained):
    from_run = _extract(trained, trained["run"])
    from_export = _extract(trained, trained["saved_model"])
    encoder = resnet.build_resnet(18)
    checkpoints.load_encoder(encoder, trained["run"])
    weights = str(trained["root"] / "encoder.weights.h5")
    encoder.save_weights(weights)
    from_keras = _extract(trained, weights, image_size=32, resnet_depth=18)

    assert from_run["embeddings"].shape == (NUM_TEST_CASES, resnet.feature_dim(18, 1))
    assert from_run["embeddings"].std(axis=0).max() > 0  # not a constant output
    assert len(set(from_run["case_ids"])) == NUM_TEST_CASES  # one row per case
    for other in (from_export, from_keras):
        np.testing.assert_array_equal(other["case_ids"], from_run["case_ids"])
        np.testing.assert_array_equal(other["labels"], from_run["labels"])
        np.testing.assert_allclose(other["embeddings"], from_run["embeddings"], atol=1e-4, rtol=0)
    # The evaluator's embeddings of the same cases (predictions.npz, in its own row order).
    with np.load(os.path.join(trained["run"], "predictions.npz")) as pred:
        row = {c: i for i, c in enumerate(pred["case_ids"].astype(str))}
        evaluated = pred["embeddings"][[row[c] for c in from_run["case_ids"]]]
    np.testing.assert_allclose(from_run["embeddings"], evaluated, atol=1e-4, rtol=0)


def test_cache_is_reused_and_replaced_when_stale(trained, monkeypatch):
    out = str(trained["root"] / "cache.npz")
    first = _extract(trained, trained["run"], output=out)
    calls = []
    real = embeddings._encoder_rows
    monkeypatch.setattr(embeddings, "_encoder_rows", lambda *a: calls.append(a) or real(*a))
    again = _extract(trained, trained["run"], output=out)
    assert calls == []
    np.testing.assert_array_equal(again["embeddings"], first["embeddings"])

    other = _extract(trained, trained["run"], output=out, split="validation")
    assert len(calls) == 1 and len(other["embeddings"]) != len(first["embeddings"])
    assert len(embeddings.load_cache(out)["embeddings"]) == len(other["embeddings"])

    # The same dataset name built elsewhere (another download or data_dir) is other data.
    embeddings.extract(trained["run"], "demo", "validation", data_dir=str(trained["root"] / "tfds_copy"),
                       batch_size=16, output=out)
    assert len(calls) == 2


def test_cli_output_feeds_linear_protocol_and_dvme(trained, capsys):
    path = str(trained["root"] / "cli_validation.npz")
    assert embeddings.main(["--source", trained["run"], "--dataset", "demo", "--split", "validation",
                            "--data_dir", trained["data_dir"], "--output", path]) == 0
    assert path in capsys.readouterr().out
    x, y = linear_protocol.load_npz(path)
    assert x.shape == (NUM_VALIDATION_CASES, 512) and y.shape == (NUM_VALIDATION_CASES,)
    model = build_dvme([x.shape[1]], num_classes=4, dim=16, num_heads=2, hidden_dim=16)
    assert model([x[:3]]).shape == (3, 4)


def test_bad_sources_give_one_line_errors(trained, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="not a run directory"):
        _extract(trained, str(tmp_path / "missing"))
    with pytest.raises(CheckpointError, match="holds no checkpoint"):
        _extract(trained, str(tmp_path))
    with pytest.raises(CheckpointError, match="--image_size"):
        _extract(trained, str(trained["root"] / "encoder.weights.h5"))
    assert embeddings.main(["--source", str(tmp_path), "--dataset", "demo", "--split", "test",
                            "--data_dir", trained["data_dir"], "--output", str(tmp_path / "x.npz")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_saved_model_source_never_holds_more_than_a_batch(monkeypatch):
    """Images of many sizes (CheXpert's widths vary) are served before the split ends: a batch waits at
    most."""
    import tensorflow as tf

    sizes, batch_size = [(8, 8), (8, 12), (8, 16)], 4
    images = [np.full(sizes[i % 3] + (3,), i, np.uint8) for i in range(12)]  # pixel value = row index
    rows = tf.data.Dataset.from_tensor_slices({"image": [tf.io.encode_png(im).numpy() for im in images],
                                               "image_ids": [f"im{i}" for i in range(12)]})
    calls = []

    def serve(images):
        calls.append(images[:, 0, 0, 0].numpy().tolist())
        return {"embedding": tf.cast(images[:, :1, 0, 0], tf.float32)}

    monkeypatch.setattr(tf.saved_model, "load",
                        lambda path: type("M", (), {"signatures": {"serving_default": serve}}))
    parts = embeddings._saved_model_rows(embeddings.Source("saved_model", "x", None, None, None), rows,
                                         batch_size)

    assert [float(p["embeddings"][0, 0]) for p in parts] == list(range(12))  # every row, in order
    served = 0
    for call in calls:
        assert len(call) <= batch_size
        assert max(call) + 1 - served <= batch_size, calls  # rows read but not yet served
        served += len(call)
