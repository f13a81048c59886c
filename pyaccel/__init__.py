"""pyaccel: persistent, shared weight pools on fast memory, and a zero-copy ONNX loader.

The public API:

- :func:`load_model` and :class:`Model` -- an ONNX model's weights in a pool:
  zero-copy numpy arrays, and onnxruntime sessions over them;
- :func:`open_pool` and :class:`Pool` -- a weight pool on device-DAX, hugetlbfs,
  fsdax, a memory-backed block device or tmpfs;
- :func:`devices` -- what fast memory this machine offers;
- :mod:`pyaccel.errors` -- the exceptions.

Submodules load on first use, so ``import pyaccel`` stays cheap (the CLI and
the discovery code do not pay for numpy, onnx or the C extension).
"""

from __future__ import annotations

import importlib
from typing import Any

from .errors import (
    ExternalDataError,
    MalformedModelError,
    ModelError,
    ModelInUseError,
    ModelNotFoundError,
    PoolCorruptError,
    PoolError,
    PoolFormatError,
    PoolFullError,
    PoolUncleanError,
    PyaccelError,
    SourceChangedError,
    UnsupportedModelError,
)

__version__ = "0.1.0"

_LAZY = {
    "load_model": "loader",
    "Model": "loader",
    "ModelInfo": "loader",
    "open_pool": "pool",
    "Pool": "pool",
    "PoolStatus": "pool",
    "devices": "discover",
}

__all__ = [
    "__version__",
    *_LAZY,
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


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'pyaccel' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{mod}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
