"""What every builder needs to read a manual download safely: CSVs, paths, images, splits.

Errors name the file and the row (spreadsheet numbering: the header is row 1), so a user can open
the file and fix it. Images are checked by decoding them with PIL at build time, because a
corrupt file found later, deep inside a training input pipeline, names neither.

Two kinds of image are also rewritten at build time so that every later decode (pretraining,
fine-tuning, evaluation, embeddings, clients of the SavedModel) sees the right pixels without
knowing about them: 16-bit PNGs whose samples use fewer bits (12-bit hospital exports) are
rescaled to the full 16-bit range, and images with an EXIF orientation are turned upright
(TensorFlow's decoders ignore both). `ImageLog` records what was done in the build's metadata.
"""
from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import functools
import hashlib
import io
import logging
import os
import struct
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf
from PIL import Image, ImageOps, JpegImagePlugin

from simclr_med.errors import DataError

log = logging.getLogger(__name__)

# Formats `tf.io.decode_image` reads and the input pipelines expect. MPO is how PIL names a JPEG with
# extra frames (many phone cameras write them); the JPEG decoder reads its first frame.
_JPEG_FORMATS = ("JPEG", "MPO")
IMAGE_FORMATS = (*_JPEG_FORMATS, "PNG")
# Images decoded concurrently while a split is written (PIL releases the GIL while decoding).
_IO_THREADS = 8
_CHUNK = 64
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PIXEL_BITS = (0, *range(8, 17))  # --pixel_bits: 0 (per image) or a bit depth
_EXAMPLES = 5  # image ids kept per kind of rewrite in the metadata
_ORIENTATION = 0x0112  # the EXIF tag
# EXIF orientation → the numpy steps that turn an [H, W, C] image upright (PIL.ImageOps.exif_transpose's).
_UPRIGHT = {2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
            5: lambda a: np.swapaxes(a, 0, 1), 6: lambda a: np.rot90(a, -1),
            7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1), 8: lambda a: np.rot90(a, 1)}


class UnreadableImage(DataError):
    """An image file that exists but cannot be decoded; bag builders may skip it and report it."""


def manual_dir_of(dl_manager, instructions: str) -> Path:
    """The manual dir as a plain Path; TFDS's multi-line AssertionError becomes a DataError."""
    try:
        return Path(str(dl_manager.manual_dir))
    except AssertionError as e:
        problem = str(e).split(" Create it")[0].rstrip(".")
        raise DataError(f"{problem}. Expected: {' '.join(instructions.split())}") from None


def first_existing(root: Path, candidates: Sequence[str], what: str) -> Path:
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    raise DataError(f"{' or '.join(candidates)} not found under {root} (the {what})")


def read_csv(path: Path, *, header: Sequence[str] | None = None, required: Sequence[str] = (),
             optional: Sequence[str] | None = None, header_prefix: bool = False) -> list[tuple[int, dict]]:
    """Rows of a CSV as `(row_number, {column: text})`, every value a stripped string.

    `header`: the exact columns in order (`header_prefix`: further columns may follow).
    `required`/`optional`: columns by name in any order; with `optional` given, other columns
    are refused (they are usually typos of the optional ones).
    """
    name = path.name
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            records = list(csv.reader(f))
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"{path}: cannot be read as a CSV ({e})") from None
    if not records or not any(c.strip() for c in records[0]):
        raise DataError(f"{path}: empty file, expected a header row")
    columns = [c.strip() for c in records[0]]
    while columns and not columns[-1]:  # a trailing comma, as some exports write
        columns.pop()
    if header is not None:
        got = columns[: len(header)] if header_prefix else columns
        if got != list(header):
            absent = [c for c in header if c not in columns]
            extra = [c for c in got if c not in header]
            named = (("missing", absent), ("unknown", extra))
            how = "columns are reordered" if sorted(got) == sorted(header) else "unexpected header" + "".join(
                f", {what} column(s) {', '.join(cols)}" for what, cols in named if cols)
            raise DataError(f"{name} row 1: {how}; expected {','.join(header)} but got {','.join(columns)}")
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"{name} row 1: missing column(s) {', '.join(missing)}; "
                        f"header is {','.join(columns)}")
    if optional is not None:
        unknown = [c for c in columns if c and c not in required and c not in optional]
        if unknown:
            raise DataError(f"{name} row 1: unknown column(s) {', '.join(unknown)}; allowed: "
                            f"{', '.join(list(required) + list(optional))}")
    if len(set(columns)) != len(columns):
        raise DataError(f"{name} row 1: duplicated column names in {','.join(columns)}")
    rows = []
    for i, record in enumerate(records[1:], start=2):
        if not any(c.strip() for c in record):
            continue  # blank line
        if len(record) > len(columns) and not any(c.strip() for c in record[len(columns):]):
            record = record[: len(columns)]
        if len(record) != len(columns):
            raise DataError(f"{name} row {i}: {len(record)} fields but the header has {len(columns)}")
        rows.append((i, {c: v.strip() for c, v in zip(columns, record)}))
    return rows


def inside(root: Path, rel: str, where: str) -> Path:
    """`root/rel`, refusing absolute paths and `..` that leave the manual dir.

    Checked on the text of the path, not after resolving links: symlinked image folders are fine.
    An absolute path into the manual dir (as written by tools that list a folder) is taken as the
    path relative to it, so the image id stays the same wherever the download lies.
    """
    if not rel:
        raise DataError(f"{where}: empty image path")
    norm = os.path.normpath(rel.replace("\\", "/"))
    if os.path.isabs(norm):
        norm = _relative_to(norm, root) or norm
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise DataError(f"{where}: image path {rel!r} escapes the manual dir {root}")
    return root / norm


def _relative_to(path: str, root: Path) -> str | None:
    """`path` relative to `root` when it lies inside it, as written or once links are resolved."""
    for p, r in ((path, os.path.abspath(root)), (os.path.realpath(path), os.path.realpath(root))):
        if p != r and os.path.commonpath([p, r]) == r:
            return os.path.relpath(p, r)
    return None


def nfc(name: str) -> str:
    """`name` in Unicode normal form C (composed accents)."""
    return unicodedata.normalize("NFC", name)


@functools.lru_cache(maxsize=256)
def _names_by_nfc(folder: str, mtime_ns: int) -> dict[str, str]:
    """NFC form → name as stored, over one folder (cached until the folder changes)."""
    del mtime_ns  # part of the cache key only
    with os.scandir(folder) as it:
        return {nfc(e.name): e.name for e in it}


def find_file(path: Path) -> Path | None:
    """`path` if it is a file, else the file whose name equals it after Unicode normalisation.

    A name with accents may be stored decomposed (NFD, as macOS writes) and typed composed (NFC)
    in a CSV, or the reverse: the same text, different bytes.
    """
    if path.is_file():
        return path
    found, parts = (Path(path.parts[0]), path.parts[1:]) if path.anchor else (Path("."), path.parts)
    for part in parts:
        candidate = found / part
        if not candidate.exists():
            try:
                stored = _names_by_nfc(str(found), found.stat().st_mtime_ns).get(nfc(part))
            except OSError:
                return None
            if stored is None:
                return None
            candidate = found / stored
        found = candidate
    return found if found.is_file() else None


def missing_image(path: Path, where: str, shown: str, root: Path) -> DataError:
    """The error for an image path that names no file: a directory, or nothing at all."""
    if path.is_dir():
        return DataError(f"{where}: image {shown!r} is a directory ({path}), not an image file")
    return DataError(f"{where}: image {shown!r} not found under {root}")


def check_image(data: bytes, where: str, shown: str) -> int:
    """Raises UnreadableImage unless `data` is a complete JPEG or PNG; returns its EXIF orientation
    (1: upright)."""
    if not data:
        raise UnreadableImage(f"{where}: image {shown!r} is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in IMAGE_FORMATS:
                raise UnreadableImage(f"{where}: image {shown!r} is {im.format}; "
                                      "only JPEG and PNG are supported")
            # Decoding at 1/8 scale still reads every byte (so finds corruption), at a fraction of the cost.
            if im.format in _JPEG_FORMATS:
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            try:
                orientation = im.getexif().get(_ORIENTATION, 1)
            except Exception:  # a damaged EXIF block does not spoil the pixels  # noqa: BLE001
                orientation = 1
    except UnreadableImage:
        raise
    except Image.UnidentifiedImageError:
        raise UnreadableImage(f"{where}: image {shown!r} is not an image file PIL can identify") from None
    except Exception as e:  # PIL raises many types for bad data  # noqa: BLE001
        raise UnreadableImage(f"{where}: image {shown!r} is corrupt or truncated ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]})") from None
    return orientation if orientation in _UPRIGHT else 1


@dataclasses.dataclass(frozen=True)
class StoredImage:
    """An image as the build stores it: encoded bytes, and what was rewritten so that they decode right."""
    data: bytes
    bits: int | None = None  # a 16-bit PNG: the significant bits its samples were rescaled from
    bits_from: str = ""  # where that depth came from: "sBIT", "maximum" or "--pixel_bits"
    orientation: int = 1  # the EXIF orientation that was applied (1: none)


def png_sbit(data: bytes) -> int | None:
    """The significant bits a PNG's sBIT chunk records (the largest of its colour channels), or None."""
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"sBIT":
            colours = {0: 1, 2: 3, 3: 3, 4: 1, 6: 3}.get(data[25], length)  # IHDR's colour type; alpha after
            values = data[pos + 8:pos + 8 + min(length, colours)]
            return max(values) if values and 0 < max(values) <= 16 else None
        if kind in (b"IDAT", b"IEND"):  # sBIT must come before the image data
            return None
        pos += 12 + length
    return None


def _colour_channels(channels: int) -> int:
    """How many leading channels hold colour (gray, gray+alpha, RGB, RGBA): alpha keeps its range."""
    return 1 if channels <= 2 else 3


def significant_bits(data: bytes, pixels: np.ndarray, pixel_bits: int, where: str,
                     shown: str) -> tuple[int, str]:
    """The bit depth a 16-bit PNG's samples were recorded at, and where that came from.

    `pixel_bits` when set (a sample beyond it is an error); else the sBIT chunk, unless a sample
    exceeds it (encoders that follow the PNG spec have already scaled such samples to 16 bits);
    else the image's maximum rounded up to a bit depth (4000 → 12), at least 8.
    """
    peak = int(pixels[..., :_colour_channels(pixels.shape[-1])].max(initial=0))
    if pixel_bits:
        if peak >= 2 ** pixel_bits:
            raise DataError(f"{where}: image {shown!r} has samples up to {peak}, more than "
                            f"--pixel_bits={pixel_bits} allows ({2 ** pixel_bits - 1}); raise --pixel_bits, "
                            f"or 0 to read each image's own depth")
        return pixel_bits, "--pixel_bits"
    sbit = png_sbit(data)
    if sbit and peak < 2 ** sbit:
        return sbit, "sBIT"
    return max(8, peak.bit_length()), "maximum"


def _upright_jpeg(data: bytes) -> bytes:
    """The JPEG turned as its EXIF orientation says, re-encoded with its own quantisation tables and
    chroma subsampling (its own quality), without the orientation tag."""
    with Image.open(io.BytesIO(data)) as im:
        upright = ImageOps.exif_transpose(im)
        options = {"qtables": im.quantization, "exif": upright.info.get("exif", b"")}
        if im.info.get("icc_profile"):
            options["icc_profile"] = im.info["icc_profile"]
        if JpegImagePlugin.get_sampling(im) != -1:
            options["subsampling"] = JpegImagePlugin.get_sampling(im)
        out = io.BytesIO()
        upright.save(out, "JPEG", **options)
    return out.getvalue()


def prepare_image(data: bytes, where: str, shown: str, orientation: int = 1,
                  pixel_bits: int = 0) -> StoredImage:
    """`data` as the build stores it: as found, unless it is a 16-bit PNG of fewer significant bits
    (rescaled to the full 16-bit range) or has an EXIF `orientation` (turned upright).

    Done here, once, rather than in the input pipelines: the stored bytes are then right for every
    reader (TensorFlow's decoders, the uint8 a SavedModel client sends), none of which can see sBIT
    or EXIF. Only those images are re-encoded: PNG losslessly, JPEG at its own quantisation tables.
    """
    sixteen = data.startswith(PNG_SIGNATURE) and len(data) > 25 and data[24] == 16
    if orientation == 1 and not sixteen:
        return StoredImage(data)
    if not data.startswith(PNG_SIGNATURE):
        return StoredImage(_upright_jpeg(data), orientation=orientation)
    pixels = tf.io.decode_png(data, channels=0, dtype=tf.uint16 if sixteen else tf.uint8).numpy()
    bits, source = significant_bits(data, pixels, pixel_bits, where, shown) if sixteen else (None, "")
    if bits is not None and bits < 16:
        colour = _colour_channels(pixels.shape[-1])
        scaled = np.round(pixels[..., :colour] * ((2 ** 16 - 1) / (2 ** bits - 1)))
        pixels = np.concatenate([np.minimum(scaled, 2 ** 16 - 1).astype(np.uint16), pixels[..., colour:]], -1)
    if orientation != 1:
        pixels = np.ascontiguousarray(_UPRIGHT[orientation](pixels))
    if orientation != 1 or (bits is not None and bits < 16):
        data = tf.io.encode_png(pixels).numpy()
    return StoredImage(data, bits, source, orientation)


def read_image(path: Path, where: str, shown: str, pixel_bits: int = 0) -> StoredImage:
    """A checked image as the build stores it (`prepare_image`): DataError if missing, UnreadableImage
    if corrupt."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{where}: image {shown!r} not found at {path}") from None
    except IsADirectoryError:
        raise DataError(f"{where}: image {shown!r} is a directory ({path}), not an image file") from None
    except OSError as e:
        raise DataError(f"{where}: image {shown!r} cannot be read ({e.strerror})") from None
    return prepare_image(data, where, shown, check_image(data, where, shown), pixel_bits)


def read_images(jobs: Iterable[tuple[Path, str, str]],
                pixel_bits: int = 0) -> Iterator[StoredImage | UnreadableImage]:
    """`read_image` over `(path, where, shown)` jobs in order, a few threads ahead.

    Corrupt images come back as UnreadableImage values so the caller decides (skip or fail);
    missing files raise at once.
    """
    def one(job):
        try:
            return read_image(*job, pixel_bits=pixel_bits)
        except UnreadableImage as e:
            return e

    jobs = iter(jobs)
    with concurrent.futures.ThreadPoolExecutor(_IO_THREADS) as pool:
        while True:
            chunk = [job for _, job in zip(range(_CHUNK), jobs)]
            if not chunk:
                return
            yield from pool.map(one, chunk)


class ImageLog:
    """What a build rewrote, for its metadata: the depth each 16-bit PNG was read at and the images
    turned upright, as counts with a few image ids each (a dataset may hold 100,000 of them)."""

    RULE = ("16-bit PNGs are stored rescaled to the full 16-bit range from the bits their samples use: "
            "--pixel_bits if set, else the PNG's sBIT chunk, else the image's maximum rounded up to a "
            "bit depth")

    def __init__(self, pixel_bits: int = 0):
        self.pixel_bits = pixel_bits
        self.depths: dict[str, dict] = {}
        self.upright = {"images": 0, "examples": []}
        self._reported: dict[str, int] = {}

    @staticmethod
    def _count(entry: dict, image_id: str) -> None:
        entry["images"] += 1
        if len(entry["examples"]) < _EXAMPLES:
            entry["examples"].append(image_id)

    def add(self, image_id: str, image: StoredImage) -> None:
        if image.bits is not None:
            self._count(self.depths.setdefault(f"{image.bits} bits ({image.bits_from})",
                                               {"images": 0, "examples": []}), image_id)
        if image.orientation != 1:
            self._count(self.upright, image_id)

    def metadata(self) -> dict:
        """`pixel_bits` (the flag, the rule, 16-bit images by depth) and `exif_upright`."""
        return {"pixel_bits": {"flag": self.pixel_bits, "rule": self.RULE, "16_bit_images": self.depths},
                "exif_upright": self.upright}

    def record(self, metadata, what: str) -> None:
        """Puts the record into a builder's metadata and logs the images of the split just written."""
        metadata.update(self.metadata())
        summary = self.summary()
        if summary:
            log.warning("%s: %s", what, summary)

    def summary(self) -> str | None:
        """One line for the build's log on the images rewritten since the last call (a split), or None."""
        counts = {k: v["images"] for k, v in self.depths.items() if not k.startswith("16 bits")}
        counts["upright"] = self.upright["images"]
        new = {k: n - self._reported.get(k, 0) for k, n in counts.items() if n > self._reported.get(k, 0)}
        self._reported = counts
        upright = new.pop("upright", 0)
        depths = ", ".join(f"{k}: {n}" for k, n in new.items())
        parts = [f"16-bit PNG(s) rescaled to full range, read as {depths} (metadata pixel_bits; "
                 f"--pixel_bits sets one depth for all)"] if new else []
        if upright:
            parts.append(f"{upright} image(s) turned upright by their EXIF orientation")
        return "; ".join(parts) or None


def check_pixel_bits(builder, pixel_bits: int | None) -> None:
    """Refuses a --pixel_bits outside 0, 8..16, or one that differs from the setting a prepared
    build of 16-bit images was made with (None: any)."""
    if pixel_bits is not None and pixel_bits not in PIXEL_BITS:
        raise DataError(f"--pixel_bits={pixel_bits} must be 0 (each image's own depth) or 8..16")
    if pixel_bits is None or not builder.is_prepared():
        return
    built = builder.info.metadata.get("pixel_bits", {})
    if built.get("16_bit_images") and built.get("flag", 0) != pixel_bits:
        raise DataError(f"{builder.data_path} was built with --pixel_bits={built.get('flag', 0)}, not "
                        f"{pixel_bits}; pass that, use another data_dir, or delete {builder.data_path} to "
                        f"rebuild")


def fingerprint(paths: Iterable[Path]) -> str:
    """SHA-256 over the index files of a download: tells two different downloads apart."""
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def weighted_round_robin(groups: Sequence[tuple[str, int]], fractions: dict[str, float]) -> dict[str, str]:
    """Assigns whole groups to splits in the given order so every prefix keeps the fractions.

    Each group (a case or a patient, with its number of images as weight) goes to the split that
    is furthest below its share of the weight assigned so far. Ordering the groups by label
    first therefore spreads every label over the splits in proportion (stratification), and a
    shuffled order gives a random patient-level split whose sizes hit the fractions.
    """
    names = list(fractions)
    share = np.array([fractions[n] for n in names], dtype=np.float64)
    share /= share.sum()
    got = np.zeros(len(names))
    total = 0.0
    out = {}
    for key, weight in groups:
        total += weight
        k = int(np.argmax(share * total - got))
        got[k] += weight
        out[key] = names[k]
    return out


def stratified_order(keys: Sequence[str], strata: Sequence, seed: int) -> list[str]:
    """`keys` shuffled with `seed`, then stably grouped by stratum (sorted)."""
    order = np.random.default_rng(seed).permutation(len(keys))
    shuffled = [(strata[i], keys[i]) for i in order]
    return [k for _, k in sorted(shuffled, key=lambda t: t[0])]


def split_groups(sizes: dict[str, int], fractions: dict[str, float], seed: int,
                 strata: dict[str, object] | None = None) -> dict[str, str]:
    """Group → split, by weighted round robin over a seeded (optionally stratified) order."""
    keys = sorted(sizes)
    order = stratified_order(keys, [strata[k] for k in keys] if strata else [0] * len(keys), seed)
    return weighted_round_robin([(k, sizes[k]) for k in order], fractions)


def check_splits_nonempty(assignment: dict[str, str], splits: Sequence[str], what: str, source: str) -> None:
    counts = {s: 0 for s in splits}
    for s in assignment.values():
        counts[s] += 1
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise DataError(f"{source}: split(s) {', '.join(empty)} would be empty ({len(assignment)} {what} "
                        f"in total: {counts}); the data set is too small to split")
