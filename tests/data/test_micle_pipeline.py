"""MICLe pairs (Algorithm 1) and SimCLR views, checked by image identity rather than pixels."""
import collections

import numpy as np
import pytest
import tensorflow as tf

from simclr_med.data import micle_pairs, pipelines


def _bag_dataset(sizes, px=24):
    """Cases with the given numbers of images; image ids are '<case>/<k>'."""
    rng = np.random.default_rng(0)
    cases = []
    for c, n in enumerate(sizes):
        imgs = [tf.io.encode_png(rng.integers(0, 255, (px, px + k, 3), dtype=np.uint8)).numpy()
                for k in range(n)]
        cases.append({"images": imgs, "image_ids": [f"c{c}/{k}".encode() for k in range(n)],
                      "case_id": f"c{c}".encode(), "label": c % 2})

    def gen():
        yield from cases

    sig = {"images": tf.TensorSpec([None], tf.string), "image_ids": tf.TensorSpec([None], tf.string),
           "case_id": tf.TensorSpec([], tf.string), "label": tf.TensorSpec([], tf.int64)}
    return tf.data.Dataset.from_generator(gen, output_signature=sig)


def _pairs(ds, method, batches, batch_size=4, seed=0):
    it = iter(pipelines.pretrain_dataset(ds, method=method, batch_size=batch_size, image_size=16,
                                         augmentation="crop_only", seed=seed, with_ids=True,
                                         deterministic=True))
    out = []
    for _ in range(batches):
        b = next(it)
        out += list(zip(b["id1"].numpy().astype(str), b["id2"].numpy().astype(str), b["view1"].numpy(),
                        b["view2"].numpy()))
    return out


def test_pick_pair_is_uniform_over_distinct_pairs():
    counts = collections.Counter()
    for i in range(3000):
        a, b = micle_pairs.pick_pair(3, tf.constant([7, i], tf.int64))
        counts[(int(a), int(b))] += 1
    assert set(counts) == {(a, b) for a in range(3) for b in range(3) if a != b}
    assert max(counts.values()) / min(counts.values()) < 1.3
    assert [int(x) for x in micle_pairs.pick_pair(1, tf.constant([1, 2], tf.int64))] == [0, 0]


def test_micle_pairs_are_two_images_of_one_case():
    sizes = [1, 2, 3, 6]
    pairs = _pairs(_bag_dataset(sizes), "micle", batches=30)
    used = collections.defaultdict(set)
    for id1, id2, v1, v2 in pairs:
        case1, case2 = id1.split("/")[0], id2.split("/")[0]
        assert case1 == case2
        n = sizes[int(case1[1:])]
        if n >= 2:
            assert id1 != id2
        else:  # single-image case: two different augmentations of the one image
            assert id1 == id2 and not np.allclose(v1, v2)
        used[case1] |= {id1, id2}
    for c, n in enumerate(sizes):
        assert len(used[f"c{c}"]) == n  # over many draws every image of a bag is used


def test_micle_pairs_change_across_epochs_and_repeat_with_seed():
    ds = _bag_dataset([6, 6, 6, 6])
    first = [(a, b) for a, b, _, _ in _pairs(ds, "micle", batches=8, seed=3)]
    again = [(a, b) for a, b, _, _ in _pairs(ds, "micle", batches=8, seed=3)]
    per_epoch = [sorted(first[i:i + 4]) for i in range(0, len(first), 4)]
    assert len({tuple(e) for e in per_epoch}) > 1  # each epoch (4 cases) draws new pairs
    assert sorted(first) == sorted(again)  # same seed, same draws (order may differ)


def test_simclr_views_are_one_image_and_cover_every_image():
    sizes = [1, 2, 3]
    pairs = _pairs(_bag_dataset(sizes), "simclr", batches=12)
    assert all(a == b for a, b, _, _ in pairs)
    assert {a for a, _, _, _ in pairs} == {f"c{c}/{k}" for c, n in enumerate(sizes) for k in range(n)}
    assert not all(np.allclose(v1, v2) for _, _, v1, v2 in pairs)


def test_sharding_gives_disjoint_cases_and_per_replica_batches():
    ds = _bag_dataset([2] * 8)
    seen = []
    for pid in range(2):
        ctx = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pid, num_replicas_in_sync=2)
        b = next(iter(pipelines.pretrain_dataset(ds, method="micle", batch_size=8, image_size=16,
                                                 augmentation="crop_only", input_context=ctx, with_ids=True)))
        assert b["view1"].shape[0] == 4
        seen.append({x.split(b"/")[0] for x in b["id1"].numpy()})
    assert not seen[0] & seen[1]


def test_supervised_eval_is_one_ordered_pass_with_case_ids():
    ds = _bag_dataset([1, 2, 3])
    meta = type("Meta", (), {"multi_label": False})()
    rows = list(pipelines.supervised_dataset(ds, meta, batch_size=4, image_size=16, augmentation="none",
                                             training=False, with_ids=True))
    ids = np.concatenate([b["case_id"].numpy() for b in rows]).astype(str)
    assert list(ids) == ["c0", "c1", "c1", "c2", "c2", "c2"]
    assert rows[0]["image"].shape[1:] == (16, 16, 3)


def test_unknown_method_or_augmentation_is_a_clear_error():
    ds = _bag_dataset([2])
    with pytest.raises(ValueError, match="method"):
        pipelines.pretrain_dataset(ds, method="byol", batch_size=2, image_size=16, augmentation="simclr")
    with pytest.raises(ValueError, match="augmentation"):
        pipelines.pretrain_dataset(ds, method="micle", batch_size=2, image_size=16, augmentation="fancy")
