"""Bad input of every kind gives one clear line naming the input and the problem — or works.

Images of unusual modes and sizes must *work*; damaged data must fail (or, inside a bag of several
images, be skipped and reported) without leaving a dataset that looks complete; bad flags and
checkpoints must fail before training with a `SimclrMedError`, which `run.py` prints as
`simclr-med: error: <message>` (exit 2, no traceback).

The bad inputs covered, where, and what each must say (``*``: tested in another file):

==  ===============================================  ================================================
#   bad input                                        message / outcome
==  ===============================================  ================================================
1   16-bit grayscale PNG                             works: decoded to [0, 1] at full range
2   RGBA PNG, gray+alpha PNG                         works: alpha dropped, colour kept
3   grayscale PNG / JPEG                             works: tiled to RGB
4   CMYK JPEG, palette PNG                           works: converted to RGB
5   1x1 and 1x300 pixel images                       works: every preset gives S x S views
6   PNG header claiming 40000x40000 (bomb), alone    "row N: case ... has no readable image (...
                                                     DecompressionBombError ...)", nothing built
7   the same bomb, or a BMP named .jpg, in a bag     skipped; reported in `skipped_images` by row
8   text file as a CheXpert image                    "row N: image ... is not an image file PIL ..."
9   truncated NIH PNG                                "row N: image ... is corrupt or truncated"
10  empty cases.csv                                  "cases.csv: empty file, expected a header row"
11  header-only cases.csv                            "no labelled case found in cases.csv"
12  row with an extra field                          "cases.csv row 3: 7 fields but the header has 6"
13  CSV not in UTF-8                                 "cases.csv: cannot be read as a CSV"
14  misspelt optional column                         "row 1: unknown column(s) skintype"
15  duplicated column                                "row 1: duplicated column names"
16  blank label / blank case_id                      "row 2: empty label for case ..." / "empty case_id"
17  absolute image path                              "row 2: image path '/...' escapes the manual dir"
18  HAM10000 header reordered                        "row 1: columns are reordered"
19  HAM10000 image in neither folder                 "row N: image 'ISIC_....jpg' not found in ..."
20  HAM10000 duplicated row                          "row N: duplicated row"
21  SCIN column missing                              "row 1: missing column(s) image_1_path"
22  SCIN case_id twice (cases / labels table)        "row N: duplicated case_id"
23  SCIN labelled case with no image path            "row N: case ... lists no image"
24  CheXpert Path not patient/study/view             "row N: Path ... is not of the form"
25  CheXpert Path with ../                           "row N: image path ... escapes the manual dir"
26  CheXpert patient in train.csv and valid.csv      "row N: patient ... is also in train.csv"
27  CheXpert with 2 patients (a split empty)         "split(s) ... would be empty"
28  CheXpert valid.csv missing                       "valid.csv not found under ..."
29  NIH age 'abc', Patient ID of another image       "row N: Patient Age 'abc' ..." / "does not match"
30  NIH duplicated row / name twice in a list        "row N: duplicated row" / "line N: ... at line M"
31  NIH patient in both official lists               "patient ... is in both train_val_list.txt and ..."
32  NIH empty test list, list missing                "split test would be empty" / "not found under"
33  NIH list naming an image not in the CSV          "line N: ... is not in Data_Entry_2017_v2020.csv"
34  CheXpert -1 / blank labels under each policy     works: labels/mask per policy; AUC of a task
                                                     with one class is None, named in a warning
35  --method=micle on chexpert_v1 (no bags)          "--method=micle needs cases with several images"
36  --method=micle --train_mode=finetune             "--method=micle only applies to ... pretrain"
37  --label_fraction=0                               "--label_fraction=0.0 must be in (0, 1]"
    --color_jitter_strength=1.5 (inverts images)     "--color_jitter_strength=1.5 must be in [0, 1.25]"
    --log_steps=0, --weight_decay=-0.1 (and kin)     "--log_steps=0 must be >= 1" / "must be >= 0"
38  unknown --augmentation                           "--augmentation: unknown augmentation 'fancy'"
39  unknown dataset name                             "unknown dataset 'imagenet'; valid names: ..."
40  --mode=eval with no checkpoint (both kinds)      "no checkpoint to evaluate" / "classes.json missing"
41  --checkpoint of a depth-34 run into depth 18     "does not fit this encoder (--resnet_depth ..."
42  --checkpoint missing / empty dir / damaged .h5   "not a run directory ..." / "holds no
                                                     checkpoint" / "cannot be read (...)"
43  --model_dir is a file / missing                  "exists and is not a directory" / "is required"
44  --data_dir is a file                             "data_dir '...' is not a directory"
45  --eval_split that does not exist                 "has no split 'training'; splits: ..."
46  --label_fraction leaving a class empty           "label_fraction=0.05 leaves class ... no example"
47  NaN loss (--temperature=1e-45)                   "step 1: the loss or its gradients became NaN/Inf;
                                                     stopped without saving", no checkpoint written
48  run.py: non-integer / unknown flag (absl)        "Flags parsing error: ... --train_steps ...",
                                                     exit 1, no traceback
49* missing cases.csv, missing / empty / non-dir     data/test_builders.test_missing_csv_and_missing_...
    manual dir, NIH not built and no manual_dir
50* CheXpert reordered header, NIH cut header,       data/test_builders.test_reordered_and_wrong_headers
    generic misspelt required column
51* missing image file (generic)                     data/test_builders.test_missing_image_names_the_row
52* truncated image, single-image case               data/test_builders.test_corrupt_single_image_case_...
53* corrupt image in a bag                           data/test_builders.test_corrupt_image_in_a_bag_...
54* 0-byte CheXpert image                            data/test_builders.test_empty_image_in_chexpert_fails
55* unknown HAM dx, CheXpert '2.0', NIH finding      data/test_builders.test_bad_values_name_file_and_row
    'Flu', SCIN label not a dict
56* NIH image in neither official list               data/test_builders.test_nih_image_outside_the_...
57* ../ path (generic)                               data/test_builders.test_path_escaping_the_manual_dir
58* duplicated row / image shared by two cases /     data/test_builders.test_duplicated_rows_and_shared_...
    duplicated CheXpert valid row
59* two labels for one case; generic split empty     data/test_builders.test_inconsistent_case_label_...
60* manual dir changed after the build               data/test_builders.test_rebuilt_download_is_not_...
61* unknown split / policy / label_fraction=0 /      data/test_datasets.test_bad_arguments
    manual_dir with demo (datasets.load)
62* label_fraction leaving a class empty (load)      data/test_datasets.test_label_fraction_keeps_...
63* NaN loss (loop.train), skipping N steps          train/test_loop.test_nan_loss_stops_..., ...skip_...
64* resuming a run of another architecture          train/test_loop.test_checkpoint_of_other_...
65  --host_memory_limit_gib too small / negative     "OOM when allocating ...: --host_memory_limit_gib=0.05
                                                     is too small: raise it ..." / "must be >= 0"
66  16-bit PNGs of 12 bits (max 4095), of 10 bits    works: stored rescaled, decoded to max 1 (not 0.062);
    by sBIT, of the full 16 bits                     metadata pixel_bits names each depth and its source
67  --pixel_bits=12 / too small for an image /       works: every 16-bit PNG read as 12 bits / "row N:
    not the build's / --pixel_bits=7                 image ... has samples up to 4095, more than
                                                     --pixel_bits=10 allows" / "was built with
                                                     --pixel_bits=0" / "must be 0 (...) or 8..16"
68  phone JPEG with EXIF orientation 6               works: stored upright (H and W swapped, turned 90°)
69  header-only Data_Entry_2017.csv                  "Data_Entry_2017.csv: no rows, only the header"
70  image path that is a directory                   "row 2: image '...' is a directory (...), not an
                                                     image file"
71  absolute image path inside the manual dir        works: the image id is the path relative to it
72  file name NFD on disk, NFC in the CSV            works: names matched after Unicode normalisation
73  CheXpert header without a column                 "row 1: unexpected header, missing column(s) Edema"
74  NIH image twice with different findings          "row N: '...' is listed twice with different
                                                     findings: 'Edema' (row 6) vs 'Edema|Mass'"
75  --train_batch_size above the train split's       "--train_batch_size=N exceeds the M images of
    images (MICLe: cases; fine-tuning: after         split 'train' of ...: a batch would repeat them,
    --label_fraction)                                ...; use at most M"; a batch of all M works
76  run folder under a file, read-only, full, not    "simclr-med: error: <path>: Not a directory" /
    permitted: through io, TensorFlow's event file   "Read-only file system" / "No space left on
    and checkpoint writers (run.py, in-process)      device" (not the out-of-memory advice) /
                                                     "Permission denied", exit 2, no traceback
77  compare / plots / linear_protocol / embeddings   "<cli> error: <path>: <reason>", exit 2 (each
    / transfer / segmentation output unwritable      command line's own prefix), no traceback
78* relative --model_dir, killed between a save      test_io.test_a_checkpoint_state_written_in_a_...,
    and its listing                                  train/test_preemption.test_a_run_in_a_relative_...
79* second run on a folder in use (local; gs://)     test_experiment.test_two_runs_on_one_folder_...,
                                                     test_io.test_a_run_folder_lock_..., train/test_loop
80* resume with another batch size / LR / steps;     test_experiment.test_a_resumed_run_keeps_its_...,
    with other logging flags (allowed);              ...test_a_resume_with_another_depth_says_so_...
    another depth (one line, no TF warnings)
==  ===============================================  ================================================
"""
import csv
import errno
import importlib
import io
import json
import os
import struct
import subprocess
import sys
import unicodedata
import zlib
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from absl import flags
from PIL import Image, PngImagePlugin

from simclr_med import experiment
from simclr_med.config import Config
from simclr_med.data import augment, datasets, pipelines
from simclr_med.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, SimclrMedError
from simclr_med.evaluation import compare, embeddings, linear_protocol, metrics, plots
from simclr_med.methods import segmentation, transfer
from simclr_med.models import resnet
from tests.fixtures import layouts
from tfds_builders.cxr_labels import CHEXPERT_TASKS, POLICIES
from tfds_builders.seg_masks import seg_masks_dataset_builder

REPO = Path(__file__).resolve().parents[1]
TINY = dict(resnet_depth=18, image_size=32, train_batch_size=4, num_proj_layers=1, proj_out_dim=8,
            train_steps=1, warmup_epochs=0, checkpoint_steps=1, verbose=0)


# --- helpers ------------------------------------------------------------------------------------

def assert_nothing_built(data_dir):
    """A failed build leaves no dataset that TFDS (or a later `load`) would take as complete."""
    assert not list(Path(data_dir).rglob("dataset_info.json")), "a failed build left a dataset behind"


def build_error(name, manual, data_dir) -> str:
    with pytest.raises(DataError) as err:
        datasets.builder_for(name, data_dir, manual)
    message = str(err.value)
    assert "\n" not in message, message
    assert_nothing_built(data_dir)
    return message


def png_header(width, height) -> bytes:
    """A well-formed PNG whose header claims `width` x `height` but holds one row of pixels."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * (3 * width + 1))) + chunk(b"IEND", b""))


def encode(array, fmt="PNG", mode=None) -> bytes:
    out = io.BytesIO()
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(out, fmt)
    return out.getvalue()


def constant(shape, value, dtype=np.uint8):
    return np.full(shape, value, dtype)


# --- 1-7: image modes, sizes, bombs, formats ------------------------------------------------------

def _cmyk_jpeg():
    out = io.BytesIO()
    Image.new("CMYK", (20, 30), (10, 20, 30, 0)).save(out, "JPEG", quality=100)
    return out.getvalue()


def _palette_png():
    out = io.BytesIO()
    image = Image.new("P", (25, 17), 0)
    image.putpalette([10, 200, 30] + [0] * 765)
    image.save(out, "PNG")
    return out.getvalue()


# case → (file name, bytes, expected RGB in [0, 1], tolerance)
UNUSUAL = {
    "gray16": ("gray16.png", lambda: encode(constant((20, 30), 32768, np.uint16)), [32768 / 65535] * 3, 1e-4),
    "rgba": ("rgba.png", lambda: encode(np.dstack([constant((20, 30), c) for c in (200, 100, 50, 0)])),
             [200 / 255, 100 / 255, 50 / 255], 1e-4),
    "gray_alpha": ("la.png", lambda: encode(np.dstack([constant((20, 30), c) for c in (128, 7)]), mode="LA"),
                   [128 / 255] * 3, 1e-4),
    "gray_png": ("gray.png", lambda: encode(constant((20, 30), 128)), [128 / 255] * 3, 1e-4),
    "gray_jpeg": ("gray.jpg", lambda: encode(constant((24, 24), 90), "JPEG"), [90 / 255] * 3, 2 / 255),
    "cmyk_jpeg": ("cmyk.jpg", _cmyk_jpeg, [245 / 255, 235 / 255, 225 / 255], 2 / 255),
    "palette": ("palette.png", _palette_png, [10 / 255, 200 / 255, 30 / 255], 1e-4),
    "one_pixel": ("one.png", lambda: encode(constant((1, 1, 3), 77)), [77 / 255] * 3, 1e-4),
    "one_row": ("row.jpg", lambda: encode(constant((1, 300, 3), 77), "JPEG"), [77 / 255] * 3, 2 / 255),
}


def write_unusual(manual: Path) -> dict:
    """A generic manual dir of one-image cases in every unusual mode, plus two bags that each hold
    one good image and one that must be skipped (a decompression bomb, a BMP named .jpg)."""
    (manual / "images").mkdir(parents=True)
    rows, rng = [], np.random.default_rng(0)
    for i, (case, (name, make, _, _)) in enumerate(UNUSUAL.items()):
        (manual / "images" / name).write_bytes(make())
        rows.append([case, f"images/{name}", "ab"[i % 2]])
    bad = {"bomb_bag": ("bomb.png", png_header(40000, 40000)),
           "bmp_bag": ("bitmap.jpg", encode(constant((8, 8, 3), 9), "BMP"))}
    for case, (name, data) in bad.items():
        layouts.write_image(manual / "images" / f"{case}_ok.png", rng, "RGB")
        (manual / "images" / name).write_bytes(data)
        rows += [[case, f"images/{case}_ok.png", "a"], [case, f"images/{name}", "a"]]
    with open(manual / "cases.csv", "w", newline="") as f:
        csv.writer(f).writerows([["case_id", "image_path", "label"]] + rows)
    return {case: rows.index([case, f"images/{name}", "a"]) + 2 for case, (name, _) in bad.items()}


def test_unusual_images_work_and_bad_ones_in_bags_are_skipped(tmp_path):
    bad_rows = write_unusual(tmp_path / "m")
    builder = datasets.builder_for("derm_cases/generic", tmp_path / "t", tmp_path / "m")
    skipped = builder.info.metadata["skipped_images"]
    assert len(skipped) == 2
    assert any(f"cases.csv row {bad_rows['bomb_bag']}" in s and "DecompressionBombError" in s
               for s in skipped)
    assert any(f"cases.csv row {bad_rows['bmp_bag']}" in s and "is BMP; only JPEG and PNG" in s
               for s in skipped)

    seen = {}
    for split in builder.info.splits:
        ds, meta = datasets.load("derm_cases/generic", split, data_dir=tmp_path / "t")
        for batch in pipelines.supervised_dataset(ds, meta, batch_size=4, image_size=16, augmentation="none",
                                                  training=False, with_ids=True):
            for image, case in zip(batch["image"].numpy(), batch["case_id"].numpy().astype(str)):
                seen.setdefault(case, []).append(image)
    assert len(seen["bomb_bag"]) == len(seen["bmp_bag"]) == 1  # the good image of each bag
    for case, (_, _, rgb, tol) in UNUSUAL.items():
        [image] = seen[case]
        assert image.shape == (16, 16, 3) and np.isfinite(image).all()
        np.testing.assert_allclose(image.reshape(-1, 3).mean(0), rgb, atol=tol, err_msg=case)
        np.testing.assert_allclose(image.reshape(-1, 3).std(0), 0, atol=tol, err_msg=case)

    every_split = [datasets.load("derm_cases/generic", s, data_dir=tmp_path / "t")[0]
                   for s in builder.info.splits]
    ds = every_split[0].concatenate(every_split[1]).concatenate(every_split[2])
    views = pipelines.pretrain_dataset(ds, method="simclr", batch_size=16, image_size=16,
                                       augmentation="simclr", with_ids=True)
    views = next(iter(views))  # 16 views: each of the 11 images at least once, in random resized crops
    assert {i.decode().rsplit("/", 1)[1] for i in views["id1"].numpy()} >= {n for n, *_ in UNUSUAL.values()}
    assert views["view1"].shape == (16, 16, 16, 3) and np.isfinite(views["view1"].numpy()).all()


def test_decompression_bomb_alone_in_a_case_fails(tmp_path):
    manual = layouts.write_generic_cases(tmp_path / "m", num_cases=12)
    with open(manual / "cases.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    row, r = next((i, r) for i, r in enumerate(rows, 2)
                  if sum(x["case_id"] == r["case_id"] for x in rows) == 1)
    (manual / r["image_path"]).write_bytes(png_header(40000, 40000))
    msg = build_error("derm_cases/generic", manual, tmp_path / "t")
    assert f"cases.csv row {row}: case '{r['case_id']}' has no readable image" in msg
    assert "DecompressionBombError" in msg and "1600000000 pixels" in msg


# --- 66-68: 16-bit PNGs of fewer significant bits, EXIF orientation ---------------------------------

def png16(array, sbit=None) -> bytes:
    """A 16-bit PNG of `array`, with an sBIT chunk recording `sbit` significant bits if given."""
    info = PngImagePlugin.PngInfo()
    if sbit:
        info.add(b"sBIT", bytes([sbit]))
    out = io.BytesIO()
    Image.fromarray(np.asarray(array, np.uint16)).save(out, "PNG", pnginfo=info)
    return out.getvalue()


def exif_jpeg(orientation) -> bytes:
    """A 20 x 30 JPEG, top half white, whose EXIF says how to turn it for display."""
    pixels = np.zeros((20, 30, 3), np.uint8)
    pixels[:10] = 255
    exif = Image.Exif()
    exif[0x0112] = orientation
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, "JPEG", exif=exif, quality=95)
    return out.getvalue()


# image → (bytes, value every pixel decodes to when the build reads each image's own depth)
REWRITTEN = {
    "bits12.png": (lambda: png16(constant((20, 30), 4095, np.uint16)), 1.0),  # 12 bits by its maximum
    "sbit10.png": (lambda: png16(constant((20, 30), 1023, np.uint16), sbit=10), 1.0),
    # sBIT before the maximum: 300 / 1023, not 300 / 511
    "sbit10_dark.png": (lambda: png16(constant((20, 30), 300, np.uint16), sbit=10), 300 / 1023),
    "full16.png": (lambda: png16(constant((20, 30), 40000, np.uint16)), 40000 / 65535),
    "rotated.jpg": (lambda: exif_jpeg(6), None),
}


def write_rewritten(manual: Path, names=tuple(REWRITTEN)) -> None:
    """One single-image case per image of REWRITTEN, added to a generic manual dir."""
    for name in names:
        (manual / "images" / name).write_bytes(REWRITTEN[name][0]())
    rows = [[n.split(".")[0], f"images/{n}", "eczema", "", "", ""] for n in names]
    layouts.rewrite_csv(_cases(manual), lambda rs: rs + rows)


def stored_images(builder) -> dict:
    """image id → the bytes the build stored."""
    return {i.decode(): bytes(b) for s in builder.info.splits
            for ex in builder.as_dataset(split=s).as_numpy_iterator()
            for i, b in zip(ex["image_ids"], ex["images"])}


@pytest.fixture(scope="module")
def rewritten(tmp_path_factory):
    root = tmp_path_factory.mktemp("rewritten")
    manual = layouts.write_generic_cases(root / "manual", num_cases=12)
    write_rewritten(manual)
    return root, manual, datasets.builder_for("derm_cases/generic", root / "tfds", manual)


def test_16_bit_pngs_decode_by_their_significant_bits(rewritten):
    root, manual, builder = rewritten
    images = stored_images(builder)
    for name, (_, value) in REWRITTEN.items():
        if value is not None:  # not 4095 / 65535 = 0.062, as a division by the 16-bit range gives
            decoded = augment.decode_image(images[f"images/{name}"]).numpy()
            np.testing.assert_allclose(decoded, value, atol=1e-4, err_msg=name)
    # The uint8 that embeddings feed a SavedModel (and its clients send) is right too.
    assert tf.io.decode_image(images["images/bits12.png"], dtype=tf.uint8).numpy().min() == 255
    assert seg_masks_dataset_builder.read_image(str(manual / "images/bits12.png")).min() == 255  # seg_masks
    seen = {}  # and what the evaluation pipeline makes of them
    for split in builder.info.splits:
        ds, meta = datasets.load("derm_cases/generic", split, data_dir=root / "tfds")
        for batch in pipelines.supervised_dataset(ds, meta, batch_size=8, image_size=16, augmentation="none",
                                                  training=False, with_ids=True):
            seen.update(zip(batch["case_id"].numpy().astype(str), batch["image"].numpy()))
    np.testing.assert_allclose(seen["bits12"], 1.0, atol=1e-4)
    np.testing.assert_allclose(seen["sbit10_dark"], 300 / 1023, atol=1e-4)

    reused = datasets.builder_for("derm_cases/generic", root / "tfds")  # the record is on disk
    record = reused.info.metadata["pixel_bits"]
    assert record["flag"] == 0 and "sBIT" in record["rule"]
    assert {k: (v["images"], set(v["examples"])) for k, v in record["16_bit_images"].items()} == {
        "12 bits (maximum)": (1, {"images/bits12.png"}),
        "10 bits (sBIT)": (2, {"images/sbit10.png", "images/sbit10_dark.png"}),
        "16 bits (maximum)": (1, {"images/full16.png"})}


def test_pixel_bits_sets_one_depth_for_every_16_bit_png(rewritten, tmp_path):
    root, manual, _ = rewritten
    with pytest.raises(DataError) as err:  # full16.png holds 40000
        datasets.builder_for("derm_cases/generic", tmp_path / "t", manual, pixel_bits=12)
    row = next(i for i, r in enumerate(csv.reader(open(_cases(manual))), 1) if r[1] == "images/full16.png")
    assert str(err.value).startswith(f"cases.csv row {row}: image 'images/full16.png' has samples up to "
                                     f"40000, more than --pixel_bits=12 allows (4095)")
    assert_nothing_built(tmp_path / "t")

    fewer = layouts.write_generic_cases(tmp_path / "m", num_cases=12)
    write_rewritten(fewer, ["bits12.png", "sbit10.png"])
    builder = datasets.builder_for("derm_cases/generic", tmp_path / "t", fewer, pixel_bits=12)
    images = stored_images(builder)
    for name, value in (("sbit10.png", 1023 / 4095), ("bits12.png", 1.0)):
        np.testing.assert_allclose(augment.decode_image(images[f"images/{name}"]).numpy(), value, atol=1e-4)
    record = builder.info.metadata["pixel_bits"]
    assert record["flag"] == 12 and list(record["16_bit_images"]) == ["12 bits (--pixel_bits)"]

    with pytest.raises(DataError, match=r"tfds.* was built with --pixel_bits=0, not 12; pass that"):
        datasets.load("derm_cases/generic", "train", data_dir=root / "tfds", pixel_bits=12)
    assert datasets.load("derm_cases/generic", "train", data_dir=root / "tfds", pixel_bits=0)[1].num_examples


def test_exif_orientation_is_applied(rewritten):
    _, _, builder = rewritten
    image = augment.decode_image(stored_images(builder)["images/rotated.jpg"]).numpy()
    assert image.shape == (30, 20, 3)  # stored 20 x 30 with orientation 6: turned 90° clockwise
    assert image[:, 13:].min() > 0.9 and image[:, :7].max() < 0.1  # the white top is now on the right
    assert builder.info.metadata["exif_upright"] == {"images": 1, "examples": ["images/rotated.jpg"]}


# --- 8-33: manual downloads the builders refuse ----------------------------------------------------

def _generic(d):
    return "derm_cases/generic", layouts.write_generic_cases(d, num_cases=12)


def _ham(d):
    return "derm_cases/ham10000", layouts.write_ham10000(d)


def _scin(d):
    return "derm_cases/scin", layouts.write_scin(d)


def _chexpert(d):
    return "chexpert_v1", layouts.write_chexpert(d)


def _nih(d):
    return "nih_chestxray14", layouts.write_nih(d)


def _cases(m):
    return m / "cases.csv"


def _cx_train(m):
    return m / "CheXpert-v1.0-small/train.csv"


def _nih_csv(m):
    return m / "Data_Entry_2017_v2020.csv"


def _lines(path):
    return path.read_text().split()


def _latin1(m):
    text = _cases(m).read_text().replace(",eczema,", ",eczéma,", 1)
    _cases(m).write_bytes(text.encode("latin-1"))


def _rename_column(m, old, new):
    layouts.rewrite_csv(_cases(m), lambda rs: [[new if c == old else c for c in rs[0]]] + rs[1:])


def _ham_missing_image(m):
    image_id = list(csv.reader(open(m / "HAM10000_metadata.csv")))[4][1]
    next(m.glob(f"HAM10000_images_part_*/{image_id}.jpg")).unlink()
    return image_id


def _scin_case_without_images(m):
    def edit(rs):
        cols = [rs[0].index(f"image_{k}_path") for k in (1, 2, 3)]
        for c in cols:
            rs[2][c] = ""
        return rs
    layouts.rewrite_csv(m / "dataset/scin_cases.csv", edit)


def _cx_patient_in_valid(m):
    root = m / "CheXpert-v1.0-small"
    rows = list(csv.reader(open(root / "valid.csv")))
    rel = rows[1][0].split("/", 1)[1]
    moved = "valid/patient00001/" + rel.split("/", 2)[2]
    (root / moved).parent.mkdir(parents=True, exist_ok=True)
    (root / moved).write_bytes((root / rel).read_bytes())
    layouts.set_cell(root / "valid.csv", 2, "Path", f"CheXpert-v1.0-small/{moved}")


def _cx_two_patients(m):
    layouts.rewrite_csv(_cx_train(m), lambda rs: [rs[0]] + [r for r in rs[1:] if "/patient00001/" in r[0] or
                                                 "/patient00002/" in r[0]])


def _nih_patient_in_both_lists(m):
    test = _lines(m / "test_list.txt")
    patient = next(n[:8] for n in test if sum(x[:8] == n[:8] for x in test) >= 2)
    moved = next(n for n in test if n[:8] == patient)
    (m / "test_list.txt").write_text("\n".join(n for n in test if n != moved) + "\n")
    (m / "train_val_list.txt").write_text((m / "train_val_list.txt").read_text() + moved + "\n")


def _nih_empty_test_list(m):
    names = _lines(m / "train_val_list.txt") + _lines(m / "test_list.txt")
    (m / "train_val_list.txt").write_text("\n".join(names) + "\n")
    (m / "test_list.txt").write_text("")


def _nih_old(d):
    return "nih_chestxray14", layouts.write_nih(d, old_csv=True)


def _image_to_directory(m):
    (m / "images/case000_0.png").unlink()
    (m / "images/case000_0.png").mkdir()


def _nih_findings_differ(m):
    """Row 6 again at the end, with one finding more."""
    layouts.set_cell(_nih_csv(m), 6, "Finding Labels", "Edema")
    layouts.rewrite_csv(_nih_csv(m), lambda rs: rs + [[rs[5][0], "Edema|Mass", *rs[5][2:]]])


def _truncate_first_nih_image(m):
    path = m / "images" / list(csv.reader(open(_nih_csv(m))))[1][0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_DOWNLOADS = {
    # id: (writer, edit(manual dir), expected part of the message)
    "empty_csv": (_generic, lambda m: _cases(m).write_bytes(b""),
                  "cases.csv: empty file, expected a header row"),
    "header_only": (_generic, lambda m: layouts.rewrite_csv(_cases(m), lambda rs: rs[:1]),
                    "no labelled case found in cases.csv"),
    "extra_field": (_generic,
                    lambda m: layouts.rewrite_csv(_cases(m), lambda rs: rs[:2] + [rs[2] + ["x"]] + rs[3:]),
                    "cases.csv row 3: 7 fields but the header has 6"),
    "not_utf8": (_generic, _latin1, "cases.csv: cannot be read as a CSV"),
    "unknown_column": (_generic, lambda m: _rename_column(m, "skin_type", "skintype"),
                       "cases.csv row 1: unknown column(s) skintype"),
    "duplicated_column": (_generic, lambda m: _rename_column(m, "sex", "label"),
                          "cases.csv row 1: duplicated column names"),
    "blank_label": (_generic, lambda m: layouts.set_cell(_cases(m), 2, "label", ""),
                    "cases.csv row 2: empty label for case"),
    "blank_case_id": (_generic, lambda m: layouts.set_cell(_cases(m), 2, "case_id", ""),
                      "cases.csv row 2: empty case_id"),
    "absolute_path": (_generic, lambda m: layouts.set_cell(_cases(m), 2, "image_path", "/etc/hostname"),
                      "cases.csv row 2: image path '/etc/hostname' escapes the manual dir"),
    "ham_reordered_header": (_ham, lambda m: layouts.rewrite_csv(m / "HAM10000_metadata.csv",
                                                      lambda rs: [[r[0], r[2], r[1], *r[3:]] for r in rs]),
                             "HAM10000_metadata.csv row 1: columns are reordered"),
    "ham_missing_image": (_ham, _ham_missing_image, "HAM10000_metadata.csv row 5: image 'ISIC_"),
    "ham_duplicated_row": (_ham, lambda m: layouts.rewrite_csv(m / "HAM10000_metadata.csv",
                                                               lambda rs: rs + [rs[3]]),
                           "duplicated row"),
    "scin_missing_column": (_scin, lambda m: layouts.rewrite_csv(m / "dataset/scin_cases.csv", lambda rs: [
        [v for v, c in zip(r, rs[0]) if c != "image_1_path"] for r in rs]),
        "scin_cases.csv row 1: missing column(s) image_1_path"),
    "scin_duplicated_case": (_scin, lambda m: layouts.rewrite_csv(m / "dataset/scin_cases.csv",
                                                                  lambda rs: rs + [rs[2]]),
                             "scin_cases.csv row 16: duplicated case_id"),
    "scin_duplicated_label": (_scin, lambda m: layouts.rewrite_csv(m / "dataset/scin_labels.csv",
                                                                   lambda rs: rs + [rs[2]]),
                              "scin_labels.csv row 16: duplicated case_id"),
    "scin_case_without_images": (_scin, _scin_case_without_images, "scin_cases.csv row 3: case "),
    "cx_bad_path": (_chexpert,
                    lambda m: layouts.set_cell(_cx_train(m), 3, "Path", "CheXpert-v1.0-small/train/x.jpg"),
                    "train.csv row 3: Path 'CheXpert-v1.0-small/train/x.jpg' is not of the form"),
    "cx_escaping_path": (_chexpert, lambda m: layouts.set_cell(_cx_train(m), 3, "Path",
                                                       "../../patient00001/study1/view1_frontal.jpg"),
                         "train.csv row 3: image path '../../patient00001/study1/view1_frontal.jpg' escapes"),
    "cx_patient_in_train_and_valid": (_chexpert, _cx_patient_in_valid,
                                      "valid.csv row 2: patient patient00001 is also in train.csv"),
    "cx_two_patients": (_chexpert, _cx_two_patients, "would be empty"),
    "cx_valid_csv_missing": (_chexpert, lambda m: (m / "CheXpert-v1.0-small/valid.csv").unlink(),
                             "valid.csv not found under"),
    "cx_text_as_image": (_chexpert,
                         lambda m: (m / list(csv.reader(open(_cx_train(m))))[4][0]).write_text("hello"),
                         "train.csv row 5: image 'CheXpert-v1.0-small/train/patient"),
    "nih_truncated_png": (_nih, _truncate_first_nih_image, "Data_Entry_2017_v2020.csv row 2: image '"),
    "nih_bad_age": (_nih, lambda m: layouts.set_cell(_nih_csv(m), 4, "Patient Age", "abc"),
                    "Data_Entry_2017_v2020.csv row 4: Patient Age 'abc' is not an age"),
    "nih_patient_id_mismatch": (_nih, lambda m: layouts.set_cell(_nih_csv(m), 4, "Patient ID", "99999"),
                                "Data_Entry_2017_v2020.csv row 4: Patient ID '99999' does not match image"),
    "nih_bad_image_name": (_nih, lambda m: layouts.set_cell(_nih_csv(m), 4, "Image Index", "scan.png"),
                           "row 4: Image Index 'scan.png' is not of the form NNNNNNNN_NNN.png"),
    "nih_duplicated_row": (_nih, lambda m: layouts.rewrite_csv(_nih_csv(m), lambda rs: rs + [rs[5]]),
                           "duplicated row"),
    "nih_name_twice_in_list": (_nih, lambda m: (m / "test_list.txt").write_text(
        (m / "test_list.txt").read_text() + _lines(m / "test_list.txt")[0] + "\n"), "test_list.txt line "),
    "nih_patient_in_both_lists": (_nih, _nih_patient_in_both_lists,
                                  "is in both train_val_list.txt and test_list.txt"),
    "nih_empty_test_list": (_nih, _nih_empty_test_list, "test_list.txt: split test would be empty"),
    "nih_list_missing": (_nih, lambda m: (m / "test_list.txt").unlink(), "test_list.txt not found under"),
    "nih_list_names_unknown_image": (_nih, lambda m: (m / "test_list.txt").write_text(
        (m / "test_list.txt").read_text() + "99999999_000.png\n"),
        "'99999999_000.png' is not in Data_Entry_2017_v2020.csv"),
    "nih_header_only": (_nih_old, lambda m: layouts.rewrite_csv(m / "Data_Entry_2017.csv", lambda rs: rs[:1]),
                        "Data_Entry_2017.csv: no rows, only the header"),
    "directory_as_image": (_generic, _image_to_directory,
                           "cases.csv row 2: image 'images/case000_0.png' is a directory ("),
    "cx_missing_column": (_chexpert, lambda m: layouts.rewrite_csv(_cx_train(m), lambda rs: [
        [v for v, c in zip(r, rs[0]) if c != "Edema"] for r in rs]),
        "train.csv row 1: unexpected header, missing column(s) Edema; expected "),
    "nih_findings_differ": (_nih, _nih_findings_differ,
                            "is listed twice with different findings: 'Edema' (row 6) vs 'Edema|Mass'"),
}


@pytest.mark.parametrize("case", list(BAD_DOWNLOADS))
def test_bad_download_fails_with_one_line_and_builds_nothing(tmp_path, case):
    writer, edit, expected = BAD_DOWNLOADS[case]
    name, manual = writer(tmp_path / "manual")
    edit(manual)
    assert expected in build_error(name, manual, tmp_path / "tfds")


def test_messages_of_the_less_obvious_ones(tmp_path):
    """The parametrised cases above match on a prefix; these pin the problem named after it."""
    name, manual = _chexpert(tmp_path / "cx")
    (manual / list(csv.reader(open(_cx_train(manual))))[4][0]).write_text("hello")
    assert "is not an image file PIL can identify" in build_error(name, manual, tmp_path / "t1")
    name, manual = _nih(tmp_path / "nih")
    _truncate_first_nih_image(manual)
    assert "is corrupt or truncated" in build_error(name, manual, tmp_path / "t2")
    name, manual = _ham(tmp_path / "ham")
    image_id = _ham_missing_image(manual)
    assert (f"image '{image_id}.jpg' not found in HAM10000_images_part_1/ or HAM10000_images_part_2/"
            in build_error(name, manual, tmp_path / "t3"))
    name, manual = _scin(tmp_path / "scin")
    _scin_case_without_images(manual)
    assert "lists no image" in build_error(name, manual, tmp_path / "t4")


def test_paths_naming_files_inside_the_manual_dir_work(tmp_path):
    """An absolute path into the manual dir is read as the path relative to it; a name typed
    composed (NFC) in the CSV finds the file stored decomposed (NFD, as macOS writes names)."""
    manual = layouts.write_generic_cases(tmp_path / "m", num_cases=12)
    layouts.set_cell(_cases(manual), 2, "image_path", str(manual / "images/case000_0.png"))
    composed = unicodedata.normalize("NFC", "images/café_0.png")
    layouts.write_image(manual / unicodedata.normalize("NFD", composed), np.random.default_rng(0), "RGB")
    layouts.rewrite_csv(_cases(manual), lambda rs: rs + [["cafe_case", composed, "eczema", "", "", ""]])
    stored = stored_images(datasets.builder_for("derm_cases/generic", tmp_path / "t", manual))
    assert stored["images/case000_0.png"] == (manual / "images/case000_0.png").read_bytes()
    assert stored[composed] == (manual / unicodedata.normalize("NFD", composed)).read_bytes()


# --- 34: CheXpert uncertain and blank labels under every policy ------------------------------------

def test_chexpert_all_uncertain_or_blank_task_under_every_policy(tmp_path):
    """Edema is -1 on every train.csv row and Cardiomegaly blank on every row: each policy gives
    the documented labels, and the metrics report those tasks' AUC as undefined, by name,
    instead of failing or inventing one."""
    manual = layouts.write_chexpert(tmp_path / "cx")
    def fill(records):
        for column, value in (("Edema", "-1.0"), ("Cardiomegaly", "")):
            for r in records[1:]:
                r[records[0].index(column)] = value
        return records
    layouts.rewrite_csv(_cx_train(manual), fill)
    datasets.builder_for("chexpert_v1", tmp_path / "t", manual)
    edema, cardio = CHEXPERT_TASKS.index("Edema"), CHEXPERT_TASKS.index("Cardiomegaly")
    expected_edema = {"mixed": (1, 1), "u_ones": (1, 1), "u_zeros": (0, 1), "u_ignore": (0, 0)}
    for policy in POLICIES:
        ds, meta = datasets.load("chexpert_v1", "train", data_dir=tmp_path / "t", uncertainty_policy=policy)
        rows = list(ds.as_numpy_iterator())
        assert len(rows) == meta.num_examples > 0
        labels = np.stack([r["labels"] for r in rows])
        mask = np.stack([r["label_mask"] for r in rows])
        assert {(labels[i, edema], mask[i, edema]) for i in range(len(rows))} == {expected_edema[policy]}
        assert set(labels[:, cardio]) == {0} and set(mask[:, cardio]) == {1}
        probs = np.random.default_rng(0).random(labels.shape)
        with pytest.warns(RuntimeWarning, match="Cardiomegaly"):
            result = metrics.multilabel_metrics(probs, labels, mask, list(CHEXPERT_TASKS))
        assert result["auc_Cardiomegaly"] is None and result["auc_Edema"] is None
        assert result["mean_auc"] is None or 0 <= result["mean_auc"] <= 1


# --- 35-47: flags, checkpoints and training, through experiment.run --------------------------------

@pytest.fixture(scope="module")
def generic(tmp_path_factory):
    """A built generic dataset (12 cases) shared by the experiment-level cases."""
    root = tmp_path_factory.mktemp("generic")
    manual = layouts.write_generic_cases(root / "manual", num_cases=12)
    datasets.builder_for("derm_cases/generic", root / "tfds", manual)
    return root, manual


def run_error(root, manual, error=SimclrMedError, **changes) -> str:
    fields = dict(TINY, dataset="derm_cases/generic", manual_dir=str(manual), data_dir=str(root / "tfds"),
                  model_dir=str(root / "run"))
    fields.update(changes)
    with pytest.raises(error) as err:
        experiment.run(Config(**fields))
    message = str(err.value)
    assert "\n" not in message and message.strip(), message
    return message


def test_contradictory_flags(generic):
    root, manual = generic
    assert "--method=micle only applies to --train_mode=pretrain" in run_error(
        root, manual, ConfigError, method="micle", train_mode="finetune")
    assert "--label_fraction=0.0 must be in (0, 1]" in run_error(
        root, manual, ConfigError, label_fraction=0.0)
    assert "--color_jitter_strength=1.5 must be in [0, 1.25]" in run_error(
        root, manual, ConfigError, color_jitter_strength=1.5)
    assert "--pixel_bits=7 must be 0 (each image's own depth) or 8..16" in run_error(
        root, manual, ConfigError, pixel_bits=7)
    assert "--log_steps=0 must be >= 1" in run_error(root, manual, ConfigError, log_steps=0)
    assert "--weight_decay=-0.1 must be >= 0" in run_error(root, manual, ConfigError, weight_decay=-0.1)
    assert "--augmentation: unknown augmentation 'fancy'; expected one of simclr" in run_error(
        root, manual, ConfigError, augmentation="fancy")
    assert "unknown dataset 'imagenet'; valid names: demo, derm_cases/generic" in run_error(
        root, manual, DataError, dataset="imagenet")
    assert "derm_cases/generic has no split 'training'; splits: test, train, validation" in run_error(
        root, manual, DataError, train_split="training")
    assert "label_fraction=0.05 leaves class" in run_error(root, manual, DataError, train_mode="finetune",
                                                           label_fraction=0.05)


def test_bad_run_and_data_directories(generic, tmp_path):
    root, manual = generic
    (tmp_path / "file").write_text("not a directory")
    assert f"--model_dir={tmp_path / 'file'} exists and is not a directory" in run_error(
        root, manual, ConfigError, model_dir=str(tmp_path / "file"))
    assert "--model_dir is required" in run_error(root, manual, ConfigError, mode="eval", model_dir="")
    assert f"data_dir '{tmp_path / 'file'}' is not a directory" in run_error(
        root, manual, DataError, data_dir=str(tmp_path / "file"))


def test_eval_without_a_checkpoint(generic, tmp_path):
    root, manual = generic
    assert f"{tmp_path / 'a'}: no checkpoint to evaluate (train first)" in run_error(
        root, manual, CheckpointError, mode="eval", model_dir=str(tmp_path / "a"))
    assert f"{tmp_path / 'b'}: no checkpoint to evaluate (train first)" in run_error(
        root, manual, CheckpointError, mode="eval", train_mode="finetune", model_dir=str(tmp_path / "b"))
    assert (not tf.io.gfile.glob(str(tmp_path / "*" / "ckpt-*"))
            and not (tmp_path / "a" / "result.json").exists())
    # A checkpoint without the classifier's record (a pretraining run evaluated as a classifier).
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "ckpt-1.index").write_bytes(b"")
    (tmp_path / "c" / "checkpoint").write_text('model_checkpoint_path: "ckpt-1"\n')
    assert f"{tmp_path / 'c'} holds no trained classifier (classes.json missing)" in run_error(
        root, manual, CheckpointError, mode="eval", train_mode="finetune", model_dir=str(tmp_path / "c"))


def test_micle_on_a_dataset_without_bags(tmp_path):
    manual = layouts.write_chexpert(tmp_path / "cx")
    message = run_error(tmp_path, manual, DataError, dataset="chexpert_v1", method="micle",
                        model_dir=str(tmp_path / "run"))
    assert ("--method=micle needs cases with several images, "
            "but every example of chexpert_v1/train has one") in message
    assert not tf.io.gfile.glob(str(tmp_path / "run*" / "ckpt-*"))


def test_bad_init_checkpoints(generic, tmp_path):
    root, manual = generic
    finetune = dict(train_mode="finetune", model_dir=str(tmp_path / "run"))
    assert (f"--checkpoint={tmp_path / 'nope'}: not a run directory, checkpoint prefix or Keras weights file"
            in run_error(root, manual, CheckpointError, checkpoint=str(tmp_path / "nope"), **finetune))
    (tmp_path / "empty_run").mkdir()
    assert "directory holds no checkpoint" in run_error(root, manual, CheckpointError,
                                                        checkpoint=str(tmp_path / "empty_run"), **finetune)
    (tmp_path / "damaged.weights.h5").write_bytes(b"\x00" * 64)
    assert f"--checkpoint={tmp_path / 'damaged.weights.h5'}: cannot be read (" in run_error(
        root, manual, CheckpointError, checkpoint=str(tmp_path / "damaged.weights.h5"), **finetune)

    deep = resnet.build_resnet(34, input_shape=(32, 32, 3))  # a depth-34 pretraining run's encoder
    tf.train.Checkpoint(model=tf.train.Checkpoint(encoder=deep)).write(str(tmp_path / "r34" / "ckpt-5"))
    message = run_error(root, manual, CheckpointError, checkpoint=str(tmp_path / "r34" / "ckpt-5"),
                        **finetune)
    assert f"--checkpoint={tmp_path / 'r34' / 'ckpt-5'}: does not fit this encoder (--resnet_depth" in message
    assert not tf.io.gfile.glob(str(tmp_path / "run" / "ckpt-*"))  # nothing trained from a half-loaded model


def test_nan_loss_names_the_step_and_saves_nothing(generic, tmp_path):
    root, manual = generic
    message = run_error(root, manual, NonFiniteLossError, temperature=1e-45, model_dir=str(tmp_path / "run"),
                        train_steps=3)
    assert message.startswith("step 1: the loss or its gradients became NaN/Inf; stopped without saving")
    assert tf.train.latest_checkpoint(str(tmp_path / "run")) is None
    assert not tf.io.gfile.glob(str(tmp_path / "run*" / "ckpt-*"))


# --- 36, 38, 42, 48, 65 through run.py: one line on stderr, no traceback -----------------------------

def _cli(args, cwd):
    return subprocess.Popen([sys.executable, str(REPO / "run.py"), *args], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})


def test_run_py_prints_one_line_errors_without_traceback(generic, tmp_path):
    root, manual = generic
    common = [f"--data_dir={root / 'tfds'}", "--resnet_depth=18", "--image_size=32", "--train_batch_size=4",
              "--train_steps=1"]
    cases = {  # flags → expected message; started together, since each pays for importing TensorFlow
        ("--dataset=derm_cases/generic", f"--manual_dir={manual}", "--augmentation=fancy"):
            "simclr-med: error: --augmentation: unknown augmentation 'fancy'",
        ("--dataset=derm_cases/generic", f"--manual_dir={manual}", "--train_mode=finetune",
         f"--checkpoint={tmp_path / 'nope'}"):
            f"simclr-med: error: --checkpoint={tmp_path / 'nope'}: not a run",
        ("--dataset=derm_cases/generic", f"--manual_dir={manual}", "--host_memory_limit_gib=0.05"):
            "simclr-med: error: ",  # TensorFlow's out-of-memory line, then the advice checked below
    }
    fast = {  # refused before TensorFlow loads
        ("--method=micle", "--train_mode=finetune"):
            (2, "simclr-med: error: --method=micle only applies to --train_mode=pretrain"),
        ("--train_steps=abc",): (1, "Flags parsing error: flag --train_steps=abc"),
        ("--no_such_flag=1",): (1, "Unknown command line flag 'no_such_flag'"),
        ("--host_memory_limit_gib=-1",): (2, "simclr-med: error: --host_memory_limit_gib=-1.0 must be >= 0"),
    }
    procs = {args: _cli([*common, f"--model_dir={tmp_path / f'run{i}'}", *args], tmp_path)
             for i, args in enumerate(cases)}
    for args, (code, expected) in fast.items():
        done = subprocess.run([sys.executable, str(REPO / "run.py"), *common,
                               f"--model_dir={tmp_path / 'run'}", *args],
                              cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert (done.returncode == code and expected in done.stderr
                and "Traceback" not in done.stderr), done.stderr
    for args, proc in procs.items():
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 2, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
        [line] = [ln for ln in err.splitlines() if ln.startswith("simclr-med: error:")]
        assert line.startswith(cases[args]), line
        if "--host_memory_limit_gib=0.05" in args:
            assert line.endswith("--host_memory_limit_gib=0.05 is too small: raise it (0: no limit), "
                                 "or lower --train_batch_size / --eval_batch_size / --image_size"), line
    assert not tf.io.gfile.glob(str(tmp_path / "run*" / "ckpt-*"))


# --- 75: a batch larger than what the pipeline steps through -----------------------------------------

def test_train_batch_size_above_the_train_split(generic, tmp_path):
    """The pipeline cycles through the split, so a larger batch holds repeats: NT-Xent would count an
    image's own copies as negatives. The count is what the pipeline steps through."""
    root, manual = generic
    data = dict(data_dir=root / "tfds", manual_dir=manual)
    train = datasets.load("derm_cases/generic", "train", **data)[1]
    part = datasets.load("derm_cases/generic", "train", label_fraction=0.5, **data)[1]
    assert part.num_images < train.num_images and train.num_examples < train.num_images
    for changes, count, unit, harm, fraction in (
            (dict(), train.num_images, "images", "which NT-Xent counts as negatives", ""),
            (dict(method="micle"), train.num_examples, "cases", "which NT-Xent counts as negatives", ""),
            (dict(train_mode="finetune", label_fraction=0.5), part.num_images, "images",
             "a batch would hold some of them twice", " at --label_fraction=0.5")):
        message = run_error(root, manual, ConfigError, train_batch_size=count + 1,
                            model_dir=str(tmp_path / "run"), **changes)
        assert message.startswith(f"--train_batch_size={count + 1} exceeds the {count} {unit} of split "
                                  f"'train' of derm_cases/generic{fraction}: "), message
        assert harm in message and message.endswith(f"; use at most {count}"), message
    assert not tf.io.gfile.glob(str(tmp_path / "run" / "ckpt-*"))
    fields = dict(TINY, dataset="derm_cases/generic", manual_dir=str(manual), data_dir=str(root / "tfds"),
                  model_dir=str(tmp_path / "all"), train_batch_size=train.num_images)
    assert experiment.run(Config(**fields))["train"]["final_step"] == 1  # each image once per batch


# --- 76, 77: a run or output folder that cannot be written: its path and the reason, one line --------

def _run_py_here(monkeypatch, capsys, tmp_path, *argv) -> str:
    """run.py's main in this process (absl's parser on a fresh flag registry): the error line it prints,
    after checking that it exits 2 without a traceback."""
    run_py = importlib.import_module("run")  # the repo root is on sys.path (conftest)
    flag_values = flags.FlagValues()
    run_py.define_flags(flag_values)
    flag_values(["run.py", *argv])
    monkeypatch.setattr(run_py, "FLAGS", flag_values)
    for name in ("KERAS_HOME", "MPLCONFIGDIR"):  # main sets them for its process: keep this one's
        monkeypatch.setenv(name, os.environ.get(name, str(tmp_path / name)))
    with pytest.raises(SystemExit) as done:
        run_py.main(["run.py"])
    err = capsys.readouterr().err
    assert done.value.code == 2 and "Traceback" not in err, err
    [line] = [ln for ln in err.splitlines() if ln.startswith("simclr-med: error:")]
    return line


def _generic_flags(generic) -> list[str]:
    root, manual = generic
    return ["--dataset=derm_cases/generic", f"--manual_dir={manual}", f"--data_dir={root / 'tfds'}",
            *(f"--{k}={v}" for k, v in TINY.items())]


def test_unwritable_run_folder_is_one_line(generic, tmp_path, monkeypatch, capsys):
    """A run folder under a file fails for real; read-only, full and not permitted are TensorFlow's file
    errors (`<path>; <reason>`) raised by the writes of simclr_med.io (root ignores chmod)."""
    (tmp_path / "file").write_text("a file where a folder should be")
    under_file = tmp_path / "file" / "run"
    assert _run_py_here(monkeypatch, capsys, tmp_path, *_generic_flags(generic), f"--model_dir={under_file}"
                        ) == f"simclr-med: error: {under_file}: Not a directory"
    real = tf.io.gfile.GFile
    for error, reason in ((tf.errors.PermissionDeniedError, "Read-only file system"),
                          (tf.errors.ResourceExhaustedError, "No space left on device"),
                          (tf.errors.PermissionDeniedError, "Permission denied")):
        run = tmp_path / reason.split()[0]

        def refuse(name, mode="r", run=run, error=error, reason=reason):
            if "w" in mode and str(name).startswith(str(run)):
                raise error(None, None, f"{name}; {reason}")
            return real(name, mode)

        monkeypatch.setattr(tf.io.gfile, "GFile", refuse)
        line = _run_py_here(monkeypatch, capsys, tmp_path, *_generic_flags(generic), f"--model_dir={run}")
        assert line.startswith(f"simclr-med: error: {run}{os.sep}"), line
        assert line.endswith(f".json: {reason}"), line


def test_tensorflow_writers_failing_is_one_line(generic, tmp_path, monkeypatch, capsys):
    """TensorFlow's own writers raise its errors, not OSError: the event file writer (for real, its
    folder taken by a file) and the checkpoint writer on a full disk, which is ResourceExhaustedError
    like running out of memory but must not get the out-of-memory advice."""
    run = tmp_path / "events"
    run.mkdir()
    (run / "train").write_text("where the TensorBoard events go")
    assert _run_py_here(monkeypatch, capsys, tmp_path, *_generic_flags(generic), f"--model_dir={run}"
                        ) == f"simclr-med: error: {run}: Not a directory"
    run = tmp_path / "full"
    part = f"{run}/ckpt-1_temp/part-00000-of-00001.data-00000-of-00001.tempstate123"

    def disk_full(self, *args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, (
            "{{function_node __wrapped__SaveV2_dtypes_9_device_/job:localhost/replica:0/task:0/device:CPU:0}}"
            " "
            f"{part}; No space left on device [Op:SaveV2] name: "))

    monkeypatch.setattr(tf.train.CheckpointManager, "save", disk_full)
    assert _run_py_here(monkeypatch, capsys, tmp_path, *_generic_flags(generic), f"--model_dir={run}"
                        ) == f"simclr-med: error: {part}: No space left on device"


def test_other_command_lines_name_an_unwritable_output(tmp_path, monkeypatch, capsys):
    """Each command line prints one line for a failed write, as run.py does: the outputs of compare,
    plots and linear_protocol under a file for real; embeddings, transfer and segmentation given the
    error their writes would raise."""
    (tmp_path / "file").write_text("a file where a folder should be")
    out = tmp_path / "file" / "out"
    results = []
    for name, value in (("a", 0.6), ("b", 0.7)):
        for seed in range(2):
            results.append(tmp_path / f"{name}_{seed}.json")
            results[-1].write_text(json.dumps({"top1_accuracy": value + seed / 100, "label_fraction": 1.0,
                                               "init": name, "seed": seed}))
    x = np.random.default_rng(0).normal(size=(40, 4)).astype("float32")
    np.savez(tmp_path / "emb.npz", embeddings=x, labels=np.arange(40) % 2)

    def failing(error):
        def fail(*args, **kwargs):
            raise error
        return fail

    full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), f"{out}/emb.npz")
    monkeypatch.setattr(embeddings, "extract", failing(full))
    denied = tf.errors.PermissionDeniedError(None, None,
                                             f"{out}/cell/ckpt-1.index.tempstate1; Permission denied")
    monkeypatch.setattr(transfer, "run", failing(denied))
    read_only = OSError(errno.EROFS, os.strerror(errno.EROFS), f"{out}/result.json")
    monkeypatch.setattr(segmentation, "train_segmentation", failing(read_only))
    cases = [
        (lambda: compare.main(["--runs", f"a={tmp_path}/a_*.json", "--runs", f"b={tmp_path}/b_*.json",
                               "--output", f"{out}/report.json"]),
         f"compare: error: {out}/report.json: Not a directory"),
        (lambda: plots.main(["label-efficiency", *map(str, results), "--metric", "top1_accuracy",
                             "--output", f"{out}/curve.png"]),
         f"plots: error: {out}/curve.png: Not a directory"),
        (lambda: linear_protocol.main(["--embeddings", str(tmp_path / "emb.npz"), "--test",
                                       str(tmp_path / "emb.npz"), "--output", f"{out}/linear.json",
                                       "--small", "4", "--medium", "8", "--folds", "2",
                                       "--model", "sklearn"]),
         f"error: {out}/linear.json: Not a directory"),
        (lambda: embeddings.main(["--source", "run", "--dataset", "demo", "--split", "test", "--data_dir",
                                  str(tmp_path), "--output", f"{out}/emb.npz"]),
         f"simclr-med: error: {out}/emb.npz: No space left on device"),
        (lambda: transfer.main(["--spec", "spec.json", "--root", str(out)]),
         f"simclr-med: error: {out}/cell/ckpt-1.index.tempstate1: Permission denied"),
        (lambda: segmentation.main(["--manual_dir", "m", "--data_dir", "d", "--model_dir", str(out)]),
         f"simclr-med: error: {out}/result.json: Read-only file system"),
    ]
    for call, expected in cases:
        try:
            code = call()
        except SystemExit as e:  # argparse's exit (linear_protocol)
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and "Traceback" not in err, (expected, err)
        assert err.strip().splitlines()[-1] == expected, err
