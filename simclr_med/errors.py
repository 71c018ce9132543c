"""Errors a user can act on. `run.py` prints their message alone, without a traceback."""
import contextlib
import errno
import os
import re
import sys


class SimclrMedError(Exception):
    """Base class: a problem with the user's input, named precisely enough to fix it."""


class DataError(SimclrMedError, ValueError):
    """A manual download or data file that cannot be read as documented (names file and row)."""


class CheckpointError(SimclrMedError, ValueError):
    """A checkpoint that is missing, incomplete or of another architecture."""


class NonFiniteLossError(SimclrMedError, ArithmeticError):
    """Training produced a NaN/Inf loss; the last good checkpoint was left untouched."""


class ConfigError(SimclrMedError, ValueError):
    """Contradictory or out-of-range flags."""


class RunDirInUseError(SimclrMedError, RuntimeError):
    """Another process writes the same run folder: two writers would overwrite each other's checkpoints."""


class StorageError(SimclrMedError, OSError):
    """A file or folder that cannot be read or written (read-only, full, permission denied, a file
    where a folder should be): its path and the system's reason, on one line."""

    def __str__(self):
        return f"{self.filename}: {self.strerror}" if self.filename else str(self.strerror or self.args[0])


# What `strerror` says, for each errno: TensorFlow's file errors end in it (`<path>; <strerror>`).
_ERRNO_OF = {os.strerror(code): code for code in sorted(errno.errorcode, reverse=True)}
_TF_WRAPPING = re.compile(r"^\{\{function_node [^}]*\}\}\s*|\s*\[Op:.*$")


def errno_of(text: str) -> int | None:
    """The errno whose `os.strerror` is `text`; None for other text."""
    return _ERRNO_OF.get(text.strip())


def parse_tf_file_error(message: str) -> tuple[str, str, int | None]:
    """TensorFlow's message of a failed file call as (path, reason, errno): it ends in the system's
    reason (`<path>; Read-only file system`) or says `<path> is not a directory`; errno None otherwise."""
    message = (message or "").strip()
    line = _TF_WRAPPING.sub("", message.splitlines()[0]) if message else ""
    where, _, reason = line.rpartition("; ")
    if (code := errno_of(reason)) is not None:
        return where, reason, code
    if line.endswith(" is not a directory"):
        return line[:-len(" is not a directory")], os.strerror(errno.ENOTDIR), errno.ENOTDIR
    return where, reason, None


def storage_error(error: BaseException, within=None) -> StorageError | None:
    """`error` as a StorageError when it is a failed read or write of a file or folder: an OSError, or
    TensorFlow's error from a file it writes itself (checkpoint, event file, SavedModel), whose message
    ends in the system's reason. None otherwise, so out-of-memory (also ResourceExhaustedError) keeps
    its own report. `within`: the folder to name when the error names no file (a write to an open file,
    TensorFlow's bare "Not a directory")."""
    if isinstance(error, StorageError):
        return error
    if isinstance(error, OSError):
        reason = error.strerror or str(error) or type(error).__name__
        if error.filename is None:
            return StorageError(error.errno, reason, *([os.fspath(within)] if within else []))
        where = f"{error.filename}" if error.filename2 is None else f"{error.filename} -> {error.filename2}"
        return StorageError(error.errno, reason, where)
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(error, tf.errors.OpError):
        return None
    where, _, code = parse_tf_file_error(error.message)
    if code is not None and (where := where or within):
        return StorageError(code, os.strerror(code), os.fspath(where))
    return None


@contextlib.contextmanager
def storage_errors(within=None):
    """Raises a failed read or write inside (see `storage_error`) as a StorageError, which the command
    lines print as one line like any SimclrMedError; every other error passes unchanged."""
    try:
        yield
    except Exception as e:  # noqa: BLE001 — storage_error decides, and re-raises the rest as they were
        converted = storage_error(e, within)
        if converted is None or converted is e:
            raise
        raise converted from e
