"""Errors a user can act on. `run.py` prints their message alone, without a traceback."""


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
