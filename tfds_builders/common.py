"""What every builder needs to read a manual download safely: CSVs, paths, images, splits.

Errors name the file and the row (spreadsheet numbering: the header is row 1), so a user can open
the file and fix it. Images are checked by decoding them with PIL at build time, because a
corrupt file found later, deep inside a training input pipeline, names neither.
"""
from __future__ import annotations

import concurrent.futures
import csv
import hashlib
import io
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from simclr_med.errors import DataError

# Formats `tf.io.decode_image` reads and the input pipelines expect. MPO is how PIL names a JPEG with
# extra frames (many phone cameras write them); the JPEG decoder reads its first frame.
_JPEG_FORMATS = ("JPEG", "MPO")
IMAGE_FORMATS = (*_JPEG_FORMATS, "PNG")
# Images decoded concurrently while a split is written (PIL releases the GIL while decoding).
_IO_THREADS = 8
_CHUNK = 64


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
            how = "columns are reordered" if sorted(got) == sorted(header) else "unexpected header"
            raise DataError(f"{name} row 1: {how}; expected {','.join(header)} but got {','.join(columns)}")
    missing = [c for c in required if c not in columns]
    if missing:
        raise DataError(f"{name} row 1: missing column(s) {', '.join(missing)}; header is {','.join(columns)}")
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
    """`root/rel`, refusing absolute paths and `..` that would leave the manual dir.

    Checked on the text of the path, not after resolving links: symlinked image folders are fine.
    """
    if not rel:
        raise DataError(f"{where}: empty image path")
    norm = os.path.normpath(rel.replace("\\", "/"))
    if os.path.isabs(norm) or norm == ".." or norm.startswith("../"):
        raise DataError(f"{where}: image path {rel!r} escapes the manual dir {root}")
    return root / norm


def check_image(data: bytes, where: str, shown: str) -> None:
    """Raises UnreadableImage unless `data` is a complete JPEG or PNG."""
    if not data:
        raise UnreadableImage(f"{where}: image {shown!r} is empty (0 bytes)")
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.format not in IMAGE_FORMATS:
                raise UnreadableImage(f"{where}: image {shown!r} is {im.format}; only JPEG and PNG are supported")
            if im.format in _JPEG_FORMATS:  # decoding at 1/8 scale still reads every byte: 5x faster
                im.draft(im.mode, (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
    except UnreadableImage:
        raise
    except Image.UnidentifiedImageError:
        raise UnreadableImage(f"{where}: image {shown!r} is not an image file PIL can identify") from None
    except Exception as e:  # PIL raises many types for bad data  # noqa: BLE001
        raise UnreadableImage(f"{where}: image {shown!r} is corrupt or truncated ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:120]})") from None


def read_image(path: Path, where: str, shown: str) -> bytes:
    """The encoded bytes of a checked image: DataError if missing, UnreadableImage if corrupt."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{where}: image {shown!r} not found at {path}") from None
    except OSError as e:
        raise DataError(f"{where}: image {shown!r} cannot be read ({e.strerror})") from None
    check_image(data, where, shown)
    return data


def read_images(jobs: Iterable[tuple[Path, str, str]]) -> Iterator[bytes | UnreadableImage]:
    """`read_image` over `(path, where, shown)` jobs in order, a few threads ahead.

    Corrupt images come back as UnreadableImage values so the caller decides (skip or fail);
    missing files raise at once.
    """
    def one(job):
        try:
            return read_image(*job)
        except UnreadableImage as e:
            return e

    jobs = iter(jobs)
    with concurrent.futures.ThreadPoolExecutor(_IO_THREADS) as pool:
        while True:
            chunk = [job for _, job in zip(range(_CHUNK), jobs)]
            if not chunk:
                return
            yield from pool.map(one, chunk)


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
