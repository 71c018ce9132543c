"""Every file in a run directory, data directory or checkpoint path is read and written here.

Through `tf.io.gfile`, so the same calls serve a local disk and a bucket (`gs://`; `ram://` in
tests). Writes never show a reader part of a file: on a local disk the file is written under a
temporary name of its own and renamed into place; on an object store (a path with a scheme) the
object is written once, directly, since an object appears only when its upload completes and a
rename there is a copy. TensorFlow's file errors surface as the OSErrors callers catch.
Local paths are queried and read with Python's own calls, which need no TensorFlow: flagfiles and
`--model_dir` are checked before TensorFlow may load (run.py caps its memory first), and the
compare and plot tools start without it; TensorFlow is imported on first use of a bucket or a write.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import io
import json
import logging
import os
import re
import shlex
import socket
import sys
import time
import uuid
import zipfile
from collections.abc import Callable

import numpy as np

from simclr_med.errors import parse_tf_file_error

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def _tf():
    import tensorflow as tf
    return tf


def is_url(path) -> bool:
    """Whether `path` names its file system by a scheme (gs://, ram://) rather than lying on a local disk."""
    return bool(_SCHEME.match(os.fspath(path)))


def run_path(path):
    """A run, data or checkpoint path as the library keeps it: local paths absolute, URLs as given.

    Relative paths are resolved once, where they enter: TensorFlow rewrites the checkpoint names it
    records relative to a relative run folder (`../../ckpt-60`), which breaks resume. "" and None stay.
    """
    if not path:
        return path
    path = os.fspath(path)
    return path if is_url(path) else os.path.abspath(path)


@contextlib.contextmanager
def _os_errors(path):
    """TensorFlow's file errors as OSErrors, as Python's own file calls raise them."""
    tf = _tf()
    try:
        yield
    except tf.errors.NotFoundError:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), os.fspath(path)) from None
    except tf.errors.OpError as e:
        _, reason, code = parse_tf_file_error(e.message)
        if code is None and isinstance(e, tf.errors.PermissionDeniedError):
            code = errno.EACCES
        if code is None:
            raise OSError(errno.EIO, reason or type(e).__name__, os.fspath(path)) from None
        raise OSError(code, os.strerror(code), os.fspath(path)) from None  # PermissionError, ...


# ------------------------------------------------------------------------------------ queries

def exists(path) -> bool:
    path = os.fspath(path)
    return _tf().io.gfile.exists(path) if is_url(path) else os.path.exists(path)


def isdir(path) -> bool:
    path = os.fspath(path)
    return _tf().io.gfile.isdir(path) if is_url(path) else os.path.isdir(path)


def isfile(path) -> bool:
    return exists(path) and not isdir(path)


def glob(pattern) -> list[str]:
    """The paths matching `pattern`, sorted; [] when its folder does not exist."""
    with _os_errors(pattern):
        return sorted(_tf().io.gfile.glob(os.fspath(pattern)))


def mtime(path) -> float:
    """Modification time in seconds. On a local disk from `os.stat`: gfile's local stat drops the
    fraction of a second, so a file rewritten within the same second would look unchanged."""
    path = os.fspath(path)
    if not is_url(path):
        return os.path.getmtime(path)
    with _os_errors(path):
        return _tf().io.gfile.stat(path).mtime_nsec / 1e9


# ------------------------------------------------------------------------------------ folders

def makedirs(path) -> None:
    """Creates `path` and its parents; an existing folder is fine."""
    with _os_errors(path):
        _tf().io.gfile.makedirs(os.fspath(path))


def remove(path) -> None:
    with _os_errors(path):
        _tf().io.gfile.remove(os.fspath(path))


def rmtree(path) -> None:
    """Deletes a folder and everything in it; a missing one is no error."""
    with _os_errors(path), contextlib.suppress(_tf().errors.NotFoundError):
        _tf().io.gfile.rmtree(os.fspath(path))


def publish_dir(final, write: Callable[[str], object], *, replace: bool = True) -> str:
    """Has `write(folder)` fill the folder `final`, which no reader then sees half-written; returns it.

    Locally `write` fills a sibling of a temporary name of its own, renamed to `final` when complete
    (a rename is atomic on a local file system). On an object store `write` fills `final` itself:
    there a folder is only a prefix of object names and renaming one copies every object, neither
    atomic nor cheap, so readers tell a complete folder by a file written once the rest is there (a
    SavedModel's saved_model.pb, as TensorFlow documents; the demo's cases.csv). `replace=False`
    keeps an existing `final` (another process published it first) and drops this copy.
    """
    final = os.fspath(final)
    if not replace and exists(final):
        return final
    if is_url(final):
        rmtree(final)
        write(final)
        return final
    tmp = _temp_name(final)
    try:
        write(tmp)
        if replace:
            rmtree(final)
        try:
            with _os_errors(final):
                _tf().io.gfile.rename(tmp, final)
        except OSError:
            if replace or not exists(final):
                raise
    finally:
        rmtree(tmp)  # gone after the rename; what a failed `write` left otherwise
    return final


# ------------------------------------------------------------------------------------ files

def read_bytes(path) -> bytes:
    path = os.fspath(path)
    if not is_url(path):
        with open(path, "rb") as f:
            return f.read()
    with _os_errors(path), _tf().io.gfile.GFile(path, "rb") as f:
        return f.read()


def read_text(path) -> str:
    return read_bytes(path).decode("utf-8")


def read_json(path):
    return json.loads(read_text(path))


def load_npz(path) -> dict:
    """The arrays of an .npz file (no pickled objects); ValueError for a file that is not one."""
    buffer = io.BytesIO(read_bytes(path))
    try:
        data = np.load(buffer, allow_pickle=False)
    except (EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"not an .npz archive ({e or type(e).__name__})") from None
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError("not an .npz archive (a single .npy array)")
    with data:
        return {key: data[key] for key in data.files}


def _temp_name(path: str) -> str:
    """A sibling name no other writer picks: this process's id and a random token."""
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex}"


def _parent(path: str) -> str | None:
    """The folder of `path`; None at the top of a bucket, where there is none to create."""
    if not is_url(path):
        return os.path.dirname(os.path.abspath(path))
    start, head = path.index("://") + 3, path.rpartition("/")[0]
    return head if len(head) > start and "/" in head[start:] else None


def write_bytes(path, data: bytes) -> None:
    """Replaces the file at `path` at once: readers see the old content or the new, never a part.

    Its folder is created first (in a bucket a folder marker, which listing and deleting a folder use).
    """
    path = os.fspath(path)
    gfile = _tf().io.gfile
    with _os_errors(path):
        if parent := _parent(path):
            gfile.makedirs(parent)
        if is_url(path):
            if path.startswith("ram://") and gfile.exists(path):
                gfile.remove(path)  # TensorFlow's in-memory file system appends to an existing file
            with gfile.GFile(path, "wb") as f:
                f.write(data)
            return
        tmp = _temp_name(path)
        try:
            with gfile.GFile(tmp, "wb") as f:
                f.write(data)
            gfile.rename(tmp, path, overwrite=True)
        finally:
            if gfile.exists(tmp):
                gfile.remove(tmp)


def write_text(path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, **dumps_args) -> None:
    """`obj` as JSON (indented by 2 unless `dumps_args` say otherwise), written atomically."""
    write_text(path, json.dumps(obj, **{"indent": 2, **dumps_args}))


def write_npz(path, arrays: dict, *, compressed: bool = False) -> None:
    """`arrays` as an .npz file, written atomically."""
    buffer = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buffer, **arrays)
    write_bytes(path, buffer.getvalue())


# ------------------------------------------------------------------------------------ the run's lock

LOCK_FILE = "run.lock"
_held: set[str] = set()  # the local run folders this process holds


@contextlib.contextmanager
def run_lock(folder):
    """Holds the run folder `folder` for this process while the block runs: a second process asking for
    it gets a one-line RunDirInUseError naming the holder (pid, host, since when, command).

    Here, with every other run-folder file access, since only this module tells a local disk from a URL.
    On a local disk it is an OS lock (`flock`) on `folder/run.lock`, which the system drops when the
    process ends however it ends (SIGKILL too), so no stale lock outlives a run; the file stays, naming
    its last holder, and is rewritten in place (the lock belongs to that file, not to a new one). On a URL
    (gs://, ram://) no lock exists: `checkpoints.check_sole_writer` tells a second writer there from the
    checkpoint state. Re-entrant within one process.
    """
    from simclr_med.errors import RunDirInUseError

    folder = run_path(folder)
    if is_url(folder) or os.path.realpath(folder) in _held:  # none on a URL; or an outer block holds it
        yield
        return
    key = os.path.realpath(folder)
    os.makedirs(folder, exist_ok=True)  # the lock is the OS's: no need to load TensorFlow for it
    path = os.path.join(folder, LOCK_FILE)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirInUseError(f"{folder} is in use by another run ({_holder(fd)}); wait for it to end "
                                   "or use another --model_dir") from None
        except OSError as e:  # a file system without locks (some network mounts): checkpoints still tell
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                raise
            logging.getLogger(__name__).warning("%s: cannot lock %s (%s); a second run there is noticed only "
                                                "at its next checkpoint", folder, LOCK_FILE, e.strerror)
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "since": time.strftime("%Y-%m-%d %H:%M:%S %z"), "command": shlex.join(sys.argv)}
        data = json.dumps(record).encode("utf-8")
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))
        _held.add(key)
        try:
            yield
        finally:
            _held.discard(key)
    finally:
        os.close(fd)  # releases the lock


def _holder(fd: int, wait_s: float = 3.0) -> str:
    """Who holds a lock, as its holder recorded it in the lock file; one line. The holder writes its
    record just after taking the lock, so a record that is unreadable, or names a process of this host
    that has ended (the previous holder), is read again for a moment before giving up."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            record = json.loads(os.pread(fd, 65536, 0).decode("utf-8"))
            if record["host"] != socket.gethostname() or _alive(int(record["pid"])):
                command = " ".join(str(record["command"]).split())
                command = command if len(command) <= 200 else command[:197] + "..."
                return f"pid {record['pid']} on {record['host']} since {record['since']}: {command}"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        if time.monotonic() > deadline:
            return "a process that has not recorded itself yet"
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, as another user's
        return True
    return True
