"""pretrain_dataset / supervised_dataset on in-memory case datasets shaped as docs/CONTRACTS.md says.

(tests/test_micle_pipeline.py checks MICLe pairs by image identity; here: mixed image formats,
per-image randomness inside a batch, exact reproducibility, epochs, sharding, labels and ids.)
"""
import collections
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402

from simclr_med.data import pipelines  # noqa: E402

SIZE = 16


def _encode(kind, rng):
    h, w = rng.integers(9, 40, 2)
    if kind == "jpeg":
        return tf.io.encode_jpeg(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).numpy()
    if kind == "gray":
        return tf.io.encode_png(rng.integers(0, 255, (h, w, 1), dtype=np.uint8)).numpy()
    if kind == "rgba":
        return tf.io.encode_png(rng.integers(0, 255, (h, w, 4), dtype=np.uint8)).numpy()
    return tf.io.encode_png(rng.integers(0, 65535, (h, w, 1), dtype=np.uint16)).numpy()  # 16 bit


def cases(sizes, multi_label=False, seed=0):
    """Case dicts per the contract; image k of case c has id 'c<c>/<k>' and a rotating format."""
    rng = np.random.default_rng(seed)
    kinds = ["jpeg", "gray", "rgba", "png16"]
    rows = []
    for c, n in enumerate(sizes):
        row = {"images": [_encode(kinds[(c + k) % 4], rng) for k in range(n)],
               "image_ids": [f"c{c}/{k}".encode() for k in range(n)],
               "case_id": f"c{c}".encode(), "metadata": {"sex": b"F" if c % 2 else b"M"}}
        if multi_label:
            row.update(labels=np.array([c % 2, 1, 0], np.float32),
                       label_mask=np.array([1, 1, c % 3 > 0], np.float32))
        else:
            row["label"] = np.int64(c % 3)
        rows.append(row)
    spec = {"images": tf.TensorSpec([None], tf.string), "image_ids": tf.TensorSpec([None], tf.string),
            "case_id": tf.TensorSpec([], tf.string), "metadata": {"sex": tf.TensorSpec([], tf.string)}}
    if multi_label:
        spec.update(labels=tf.TensorSpec([3], tf.float32), label_mask=tf.TensorSpec([3], tf.float32))
    else:
        spec["label"] = tf.TensorSpec([], tf.int64)
    return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=spec)


def meta(multi_label=False):
    return type("Meta", (), {"multi_label": multi_label})()


def take(ds, batches):
    it = iter(ds)
    return [tf.nest.map_structure(lambda t: t.numpy(), next(it)) for _ in range(batches)]


def ids(batch, key):
    return list(batch[key].astype(str))


# --- pretraining ------------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["simclr", "micle"])
def test_views_have_the_contract_shapes_and_range_for_every_image_format(method):
    [batch] = take(pipelines.pretrain_dataset(cases([1, 2, 3, 4, 5]), method=method, batch_size=6,
                                              image_size=SIZE, augmentation="simclr", with_ids=True), 1)
    assert set(batch) == {"view1", "view2", "id1", "id2"}
    for key in ("view1", "view2"):
        assert batch[key].shape == (6, SIZE, SIZE, 3) and batch[key].dtype == np.float32
        assert np.isfinite(batch[key]).all() and batch[key].min() >= 0.0 and batch[key].max() <= 1.0


def test_without_ids_there_are_no_strings():
    ds = pipelines.pretrain_dataset(cases([2]), method="micle", batch_size=2, image_size=SIZE,
                                    augmentation="crop_only")
    assert set(ds.element_spec) == {"view1", "view2"}


def test_every_view_in_a_batch_has_its_own_crop():
    """One image repeated: Keras-style per-batch draws would make the views in a batch alike."""
    [batch] = take(pipelines.pretrain_dataset(cases([1]), method="simclr", batch_size=8, image_size=SIZE,
                                              augmentation="crop_only"), 1)
    views = np.concatenate([batch["view1"], batch["view2"]])
    assert len({v.tobytes() for v in views}) == 16


def test_simclr_yields_every_image_with_two_views_of_itself():
    sizes = [1, 3, 2]
    batches = take(pipelines.pretrain_dataset(cases(sizes), method="simclr", batch_size=6, image_size=SIZE,
                                              augmentation="crop_only", with_ids=True), 4)
    seen = collections.Counter(i for b in batches for i in ids(b, "id1"))
    assert all(ids(b, "id1") == ids(b, "id2") for b in batches)
    assert set(seen) == {f"c{c}/{k}" for c, n in enumerate(sizes) for k in range(n)}
    assert max(seen.values()) <= 6  # 24 examples from 6 images: epochs, not one image over and over


def test_micle_pairs_are_distinct_images_of_one_case_and_renewed_every_epoch():
    sizes = [6, 1]
    batches = take(pipelines.pretrain_dataset(cases(sizes), method="micle", batch_size=8, image_size=SIZE,
                                              augmentation="crop_only", with_ids=True), 10)
    pairs = [(a, b) for batch in batches for a, b in zip(ids(batch, "id1"), ids(batch, "id2"))]
    big = [p for p in pairs if p[0].startswith("c0/")]
    assert all(a != b and b.startswith("c0/") for a, b in big)
    assert all(a == b == "c1/0" for a, b in pairs if a.startswith("c1/"))
    assert len(set(big)) > 15  # ~40 epochs of the 6-image case: 30 possible ordered pairs, drawn anew
    assert {i for p in big for i in p} == {f"c0/{k}" for k in range(6)}
    single = [(v1, v2) for b in batches
              for v1, v2, a in zip(b["view1"], b["view2"], ids(b, "id1")) if a == "c1/0"]
    assert single and not any(np.allclose(v1, v2) for v1, v2 in single)


@pytest.mark.parametrize("method", ["simclr", "micle"])
def test_a_seed_reproduces_the_stream_and_another_seed_does_not(method):
    def run(seed):
        return take(pipelines.pretrain_dataset(
            cases([2, 3, 1]), method=method, batch_size=4, image_size=SIZE, augmentation="simclr", seed=seed,
            with_ids=True, deterministic=True), 3)

    first, again, other = run(7), run(7), run(8)
    for a, b in zip(first, again):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)
    assert not all(np.array_equal(a["view1"], c["view1"]) for a, c in zip(first, other))


@pytest.mark.parametrize("method", ["simclr", "micle"])
def test_input_pipelines_read_disjoint_cases_at_the_per_replica_batch_size(method):
    data = cases([2] * 10)
    seen = []
    for pipeline_id in range(2):
        context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                             num_replicas_in_sync=4)
        batches = take(pipelines.pretrain_dataset(data, method=method, batch_size=8, image_size=SIZE,
                                                  augmentation="crop_only", input_context=context,
                                                  with_ids=True), 5)
        assert all(b["view1"].shape[0] == 2 for b in batches)  # global 8 over 4 replicas
        seen.append({i.split("/")[0] for b in batches for i in ids(b, "id1") + ids(b, "id2")})
    assert seen[0] and seen[1] and not seen[0] & seen[1]


@pytest.mark.parametrize("method", ["simclr", "micle"])
def test_a_resumed_run_draws_another_stream(method):
    """Restarting the stream of step 0 after each restart would train on the first steps' data again."""
    def run(start_step):
        return take(pipelines.pretrain_dataset(
            cases([2, 3, 1, 2, 2, 1]), method=method, batch_size=4, image_size=SIZE, augmentation="simclr",
            seed=7, start_step=start_step, with_ids=True, deterministic=True), 2)

    fresh, resumed, again = run(0), run(5), run(5)
    for a, b in zip(resumed, again):
        tf.nest.map_structure(np.testing.assert_array_equal, a, b)
    assert not any(np.array_equal(a["view1"], b["view1"]) for a, b in zip(fresh, resumed))

    def supervised(start_step):
        return take(pipelines.supervised_dataset(cases([2, 3, 1, 2]), meta(), batch_size=4, image_size=SIZE,
                                                 augmentation="simclr", training=True, seed=7,
                                                 start_step=start_step), 1)[0]["image"]
    assert not np.array_equal(supervised(0), supervised(5))


def test_missing_fields_are_a_clear_error():
    decoded = tf.data.Dataset.from_tensors({"images": tf.zeros([1, 8, 8, 3], tf.uint8), "image_ids": [b"a"]})
    with pytest.raises(ValueError, match="'images' is uint8 of shape .*expected a 1-D string tensor"):
        pipelines.pretrain_dataset(decoded, method="micle", batch_size=2, image_size=SIZE,
                                   augmentation="simclr")
    images_only = tf.data.Dataset.from_tensors({"images": tf.constant([b"x"])})
    with pytest.raises(ValueError, match="lack image_ids"):
        pipelines.pretrain_dataset(images_only, method="simclr", batch_size=2, image_size=SIZE,
                                   augmentation="simclr")
    with pytest.raises(ValueError, match="lack case_id, label"):
        pipelines.supervised_dataset(images_only, meta(), batch_size=2, image_size=SIZE, augmentation="none",
                                     training=True)


# --- supervised -------------------------------------------------------------------------------------

def test_training_batches_carry_each_images_case_label():
    batches = take(pipelines.supervised_dataset(cases([1, 2, 3, 4]), meta(), batch_size=5, image_size=SIZE,
                                                augmentation="chexpert_finetune", training=True,
                                                with_ids=True), 6)
    for b in batches:
        assert b["image"].shape == (5, SIZE, SIZE, 3) and b["label"].dtype == np.int64
        assert [int(c[1:]) % 3 for c in ids(b, "case_id")] == list(b["label"])
        assert b["image"].min() >= 0.0 and b["image"].max() <= 1.0
    assert len({c for b in batches for c in ids(b, "case_id")}) == 4


def test_fine_tuning_augments_at_the_colour_jitter_strength_it_is_given(monkeypatch):
    """derm_finetune jitters colour: --color_jitter_strength reaches it as it reaches pretraining."""
    from simclr_med.data import augment

    strengths, augment_images = [], augment.augment_images

    def spy(*args, **kwargs):
        strengths.append(kwargs.get("color_jitter_strength"))
        return augment_images(*args, **kwargs)

    monkeypatch.setattr(augment, "augment_images", spy)
    [b] = take(pipelines.supervised_dataset(cases([2, 3]), meta(), batch_size=4, image_size=SIZE,
                                            augmentation="derm_finetune", training=True,
                                            color_jitter_strength=0.5), 1)
    assert b["image"].shape == (4, SIZE, SIZE, 3) and set(strengths) == {0.5}


def test_multi_label_training_batches():
    [b] = take(pipelines.supervised_dataset(cases([2, 3], multi_label=True), meta(True), batch_size=4,
                                            image_size=SIZE, augmentation="simclr", training=True), 1)
    assert set(b) == {"image", "labels", "label_mask"}
    assert b["labels"].shape == b["label_mask"].shape == (4, 3) and b["labels"].dtype == np.float32


def test_evaluation_is_one_ordered_pass_over_every_image_with_its_case_and_metadata():
    sizes = [3, 1, 2]
    data = cases(sizes)
    run = lambda aug: list(pipelines.supervised_dataset(  # noqa: E731
        data, meta(), batch_size=4, image_size=SIZE, augmentation=aug, training=False, with_ids=True))
    batches = run("none")
    assert [len(b["image"]) for b in batches] == [4, 2]  # the remainder is kept
    case_ids = [c for b in batches for c in b["case_id"].numpy().astype(str)]
    assert case_ids == [f"c{c}" for c, n in enumerate(sizes) for _ in range(n)]
    sexes = [s for b in batches for s in b["metadata"]["sex"].numpy().astype(str)]
    assert sexes == ["M"] * 3 + ["F"] + ["M"] * 2
    assert [int(x) for b in batches for x in b["label"].numpy()] == [0, 0, 0, 1, 2, 2]
    for a, b in zip(batches, run("simclr")):  # evaluation never augments
        np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
