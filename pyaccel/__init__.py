"""pyaccel: persistent, shared weight pools on fast memory, and a zero-copy ONNX loader.

The public API:

- :func:`open_pool` and :class:`Pool` -- a weight pool on device-DAX, hugetlbfs,
  fsdax, a memory-backed block device or tmpfs;
- :func:`load_model` and :class:`Model` -- an ONNX model's weights in a pool,
  zero-copy numpy arrays and onnxruntime sessions over them;
- :func:`devices` -- what fast memory this machine offers;
- :mod:`pyaccel.errors` -- the exceptions.
"""

__version__ = "0.1.0"

from .discover import devices
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
from .pool import Pool, PoolStatus, open_pool

__all__ = [
    "__version__",
    "devices",
    "open_pool",
    "Pool",
    "PoolStatus",
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
