"""Exceptions raised by pyaccel.

Errors that come from the C core are ``OSError`` subclasses chosen by errno
(``FileNotFoundError``, ``PermissionError``, ...), carrying the C core's
message.  The classes below are raised by the Python layers; every one derives
from :class:`PyaccelError` and carries the offending path, tensor or model name
so that its message says what to fix.
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "PyaccelError",
    "ModelError",
    "MalformedModelError",
    "ExternalDataError",
    "UnsupportedModelError",
    "PoolError",
    "PoolFormatError",
    "PoolCorruptError",
    "PoolUncleanError",
    "PoolFullError",
    "ModelInUseError",
    "ModelNotFoundError",
    "SourceChangedError",
]


class PyaccelError(Exception):
    """Base class of every exception pyaccel raises itself."""


# ---------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------


class ModelError(PyaccelError):
    """A model file cannot be used.

    Parameters
    ----------
    path : str
        The model file (or external data file) at fault.
    detail : str
        What is wrong, in words a person can act on.
    tensor : str, optional
        The tensor concerned, when there is one.
    """

    def __init__(self, path: str, detail: str, tensor: str | None = None) -> None:
        super().__init__(path, detail, tensor)
        self.path = str(path)
        self.detail = detail
        self.tensor = tensor

    def __str__(self) -> str:
        where = f" (tensor {self.tensor!r})" if self.tensor else ""
        return f"{self.path}{where}: {self.detail}"


class MalformedModelError(ModelError):
    """The file is not a valid ONNX model: truncated, bad protobuf, sizes that disagree."""


class ExternalDataError(ModelError):
    """An external-data reference is unsafe or unusable (traversal, symlink, missing file, out of range)."""


class UnsupportedModelError(ModelError):
    """A valid model uses something pyaccel does not handle."""


# ---------------------------------------------------------------------------
# Pools
# ---------------------------------------------------------------------------


class PoolError(PyaccelError):
    """A weight pool cannot be used as asked.

    Parameters
    ----------
    path : str
        The pool's backing path.
    detail : str
        What is wrong.
    """

    def __init__(self, path: str, detail: str) -> None:
        super().__init__(path, detail)
        self.path = str(path)
        self.detail = detail

    def __str__(self) -> str:
        return f"pool {self.path}: {self.detail}"


class PoolFormatError(PoolError):
    """The backing store does not hold a pool pyaccel can open (not a pool, or a newer incompatible format)."""


class PoolCorruptError(PoolError):
    """A checksum in the pool does not match: superblock, catalog or tensor data."""


class PoolUncleanError(PoolError):
    """The pool was not shut down cleanly on persistent media; run fsck before trusting it."""


class PoolFullError(PoolError, OSError):
    """Not enough free space in the pool (or its partition), even after evicting unused models."""

    def __init__(self, path: str, detail: str) -> None:
        PoolError.__init__(self, path, detail)
        self.errno = _errno.ENOSPC
        self.strerror = detail


class ModelInUseError(PoolError):
    """The model is leased by a live process and cannot be evicted or deleted."""

    def __init__(self, path: str, model: str, detail: str | None = None) -> None:
        if detail is None:
            detail = f"model {model!r} is in use by another process; close it there first"
        super().__init__(path, detail)
        self.model = model


class ModelNotFoundError(PoolError, KeyError):
    """No model of that name is in the pool."""

    def __init__(self, path: str, model: str) -> None:
        PoolError.__init__(self, path, f"no model named {model!r}")
        self.model = model

    def __str__(self) -> str:  # KeyError would quote the args otherwise
        return PoolError.__str__(self)


class SourceChangedError(PoolError):
    """The model's source file changed since it was streamed into the pool."""
