"""Zero-copy onnxruntime sessions from a weight-stripped graph and numpy arrays.

:func:`make_session` takes :attr:`pyaccel.onnxfile.ScannedModel.graph_bytes`
and one array per stripped initializer (views of the pool) and returns an
``onnxruntime.InferenceSession`` whose weights are those arrays' memory.

What onnxruntime (1.32) needs, found by experiment:

* Every initializer must stay in the graph.  A name given only through
  ``SessionOptions.add_initializer`` is "not a graph input, initializer, or
  output of a previous node".
* onnxruntime validates every initializer while it builds the graph: an
  embedded one must hold dims x dtype values ("data field count (0) does not
  match expected count from shape"), an external one must name a file that
  exists beneath the external-data folder.  In-memory addresses
  (``*/_ORT_MEM_ADDR_/*``) are refused in a model.
* The session itself then takes each tensor from the user's ``OrtValue`` (no
  copy, checked with ``OrtValue.data_ptr()`` and RSS), **but graph optimizers
  read initializer data from the ``TensorProto``, not from the
  ``OrtValue``**: constant folding (``Transpose(W)``, ``Cast(W)``), Conv+BatchNorm
  fusion, NCHWc weight reordering ...  With a placeholder file of zeros, a
  folded ``Transpose(W)`` silently came out of zeros.  So the reference must
  point at bytes equal to the array's.
* onnxruntime opens external files lazily: only when an optimizer reads that
  tensor.  It does not copy or map the others.
* ``add_external_initializers`` and ``add_external_initializers_from_files_in_memory``
  copy every tensor (measured +300 MiB RSS for 256 MiB of weights).
* ``session.disable_prepacking=1`` is needed for zero copy: prepacking makes a
  private packed copy of every MatMul/Conv weight (faster at batch > 1).
* Small tensors that shape inference reads (``Reshape``'s shape ...) must be
  embedded: onnxruntime cannot read them from external data at that point;
  :func:`pyaccel.onnxfile.scan` keeps them inline.

Hence the recipe here: each stripped initializer becomes an external-data
reference to **the file that backs the array's memory**, found through
``/proc/self/maps`` (a pool on tmpfs or hugetlbfs, or ``numpy.memmap`` of the
model file), with ``session.model_external_initializers_file_folder_path`` set
to ``/``; the array itself goes in with ``add_initializer``.  onnxruntime then
serves every weight from the array and reads the file only for the tensors an
optimizer transforms -- which it would copy anyway.  An array with no file
behind it (anonymous memory, a char device such as ``/dev/dax``, a private
writable mapping) is embedded as ``raw_data`` instead: correct, but a copy;
:func:`session_binding` lists those.
"""

from __future__ import annotations

import bisect
import os
import stat
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort
from google.protobuf.message import DecodeError
from onnx import ModelProto, TensorProto, helper, numpy_helper

from .errors import MalformedModelError
from .onnxfile import _SUBBYTE_BITS, _all_initializers, is_stripped

__all__ = ["SessionBinding", "make_session", "session_binding"]

_FOLDER_KEY = "session.model_external_initializers_file_folder_path"
_PREPACK_KEY = "session.disable_prepacking"


@dataclass
class SessionBinding:
    """What :func:`make_session` attached to a session; keeps the weights alive.

    Attributes
    ----------
    ortvalues : dict of str to onnxruntime.OrtValue
        The ``OrtValue`` given to ``add_initializer`` for each name.  They
        view the arrays; onnxruntime keeps only raw pointers to them.
    arrays : dict of str to numpy.ndarray
        The arrays (kept so that the memory they view stays mapped).
    file_backed : dict of str to (str, int)
        For each stripped initializer, the file and offset that back its
        array, given to onnxruntime for the optimizers that read weights.
    copied : tuple of str
        Stripped initializers whose bytes were embedded into the graph given
        to onnxruntime because no file backs their array (or because they are
        4-bit/2-bit, or not C-contiguous).  Their session tensors still come
        from the arrays, but the graph held a copy while the session was built.
    """

    ortvalues: dict[str, ort.OrtValue] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    file_backed: dict[str, tuple[str, int]] = field(default_factory=dict)
    copied: tuple[str, ...] = ()


def session_binding(session: ort.InferenceSession) -> SessionBinding:
    """Return the :class:`SessionBinding` of a session made by :func:`make_session`."""
    binding = getattr(session, "_pyaccel_binding", None)
    if binding is None:
        raise ValueError("this session was not made by pyaccel.ortsession.make_session")
    return binding


# ---------------------------------------------------------------------------
# Which file backs an array
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mapping:
    start: int
    end: int
    shared: bool
    writable: bool
    offset: int
    dev: tuple[int, int]
    inode: int
    path: str


class _Maps:
    """This process's file mappings, from ``/proc/self/maps``, looked up by address."""

    def __init__(self) -> None:
        self._maps: list[_Mapping] = []
        try:
            with open("/proc/self/maps", encoding="utf-8", errors="surrogateescape") as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        for line in lines:
            parts = line.split(None, 5)
            if len(parts) < 6 or not parts[5].startswith("/"):
                continue
            addr, perms, offset, dev, inode, path = parts
            lo, hi = (int(x, 16) for x in addr.split("-"))
            major, minor = (int(x, 16) for x in dev.split(":"))
            self._maps.append(_Mapping(lo, hi, perms[3] == "s", perms[1] == "w", int(offset, 16), (major, minor), int(inode), path))
        self._maps.sort(key=lambda m: m.start)
        self._starts = [m.start for m in self._maps]

    def backing(self, arr: np.ndarray) -> tuple[str, int] | None:
        """Return ``(path, offset)`` of the file whose bytes are `arr`'s memory, or ``None``.

        The whole array must lie in one mapping of a regular file that is
        shared (the memory is the file's page cache) or private and read-only
        (never written, so still equal to the file), and the file must still be
        the one mapped (same device and inode).
        """
        addr = arr.__array_interface__["data"][0]
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return None
        m = self._maps[i]
        if not (m.start <= addr and addr + arr.nbytes <= m.end):
            return None
        if not m.shared and m.writable:
            return None  # copy-on-write pages may differ from the file
        if m.path.endswith(" (deleted)"):
            return None
        try:
            st = os.stat(m.path)
        except OSError:
            return None
        if not stat.S_ISREG(st.st_mode) or st.st_ino != m.inode or (os.major(st.st_dev), os.minor(st.st_dev)) != m.dev:
            return None
        offset = m.offset + (addr - m.start)
        if offset + arr.nbytes > st.st_size:
            return None
        return os.path.realpath(m.path), offset


# ---------------------------------------------------------------------------
# Arrays to OrtValues
# ---------------------------------------------------------------------------


def _expected_dtype(t: TensorProto) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))


def _check_array(name: str, arr: np.ndarray, t: TensorProto) -> np.ndarray:
    """Check `arr` matches initializer `t` (dtype and shape); raise ``ValueError`` if not."""
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"array for initializer {name!r} is a {type(arr).__name__}, not a numpy.ndarray")
    want = _expected_dtype(t)
    if arr.dtype != want:
        raise ValueError(f"array for initializer {name!r} has dtype {arr.dtype}, the graph says {want}")
    if arr.shape != tuple(t.dims):
        raise ValueError(f"array for initializer {name!r} has shape {arr.shape}, the graph says {tuple(t.dims)}")
    return arr


def _ortvalue(arr: np.ndarray, dtype: int) -> ort.OrtValue:
    """An OrtValue viewing `arr`'s memory (no copy; read-only arrays are fine)."""
    if arr.dtype.kind in "biufc" and arr.dtype.type.__module__ == "numpy":
        return ort.OrtValue.ortvalue_from_numpy(arr)
    # ml_dtypes (bfloat16, float8 ...): onnxruntime does not know the numpy
    # type, so give it the bytes as unsigned integers and the ONNX type.
    raw = arr.view(np.dtype(f"u{arr.dtype.itemsize}"))
    return ort.OrtValue.ortvalue_from_numpy_with_onnx_type(raw, dtype)


def _embed(t: TensorProto, arr: np.ndarray) -> None:
    """Replace the external reference of `t` by the array's bytes (a copy)."""
    del t.external_data[:]
    t.data_location = TensorProto.DEFAULT
    if t.data_type in _SUBBYTE_BITS:
        t.raw_data = numpy_helper.from_array(arr).raw_data  # packs two (or four) per byte
    else:
        t.raw_data = arr.tobytes()


def _point_at(t: TensorProto, path: str, offset: int, length: int) -> None:
    """Make `t` an external reference to ``path[offset:offset+length]``, relative to ``/``."""
    del t.external_data[:]
    t.data_location = TensorProto.EXTERNAL
    for k, v in (("location", os.path.relpath(path, "/")), ("offset", str(offset)), ("length", str(length))):
        e = t.external_data.add()
        e.key, e.value = k, v


# ---------------------------------------------------------------------------
# The session
# ---------------------------------------------------------------------------


def make_session(
    graph_bytes: bytes,
    arrays: Mapping[str, np.ndarray],
    sess_options: ort.SessionOptions | None = None,
    providers: Sequence[str | tuple[str, dict]] | None = None,
    prepack: bool = False,
    backing: Mapping[str, tuple[str, int]] | None = None,
) -> ort.InferenceSession:
    """Build an onnxruntime session whose weights are `arrays`, without copying them.

    Parameters
    ----------
    graph_bytes : bytes
        A serialized ``ModelProto`` from :func:`pyaccel.onnxfile.scan`: every
        weight a main-graph initializer, stripped ones marked by
        :func:`pyaccel.onnxfile.is_stripped`.
    arrays : mapping of str to numpy.ndarray
        One array per stripped initializer (required), with the
        initializer's dtype and shape.  Arrays for inline initializers
        (``TensorRef.inline``) may be given too: they are checked and
        ignored, onnxruntime uses the copy in the graph.  Read-only arrays are
        fine.  For zero copy they should be C-contiguous views of a file
        mapping (the pool).
    sess_options : onnxruntime.SessionOptions, optional
        Options as for ``InferenceSession``.  **It is modified**: the arrays
        are added with ``add_initializer`` and two config entries are set
        (``session.disable_prepacking`` and
        ``session.model_external_initializers_file_folder_path``), so do not
        reuse one for another session.
    providers : sequence, optional
        Passed to ``InferenceSession`` (default: onnxruntime's choice).
    prepack : bool, optional
        Let onnxruntime prepack weights (``False`` by default).  Prepacking
        makes a private copy of each MatMul/Conv weight in every process --
        about the model's size again -- and is faster for batches > 1.
    backing : mapping of str to (str, int), optional
        For arrays whose memory no regular file backs (a device-DAX pool, a
        char device), a file and offset holding the very same bytes -- the
        model's own file or external data, unchanged since the pool was
        filled.  onnxruntime reads those only for the tensors its optimizers
        transform; without it such arrays are embedded in the graph (copied).

    Returns
    -------
    onnxruntime.InferenceSession
        With a :class:`SessionBinding` attached (see :func:`session_binding`)
        that keeps the ``OrtValue`` objects and arrays alive as long as the
        session.

    Raises
    ------
    ValueError
        A stripped initializer has no array, an array's dtype or shape
        disagrees with the graph, or a name is not an initializer.
    MalformedModelError
        `graph_bytes` does not decode.
    """
    try:
        model = ModelProto.FromString(graph_bytes)
    except DecodeError as e:
        raise MalformedModelError("<graph_bytes>", f"does not decode as a ModelProto: {e}") from e
    fresh = sess_options is None
    so = ort.SessionOptions() if fresh else sess_options
    binding = _bind(model, arrays, backing or {})
    for name, ov in binding.ortvalues.items():
        so.add_initializer(name, ov)
    _set_config(so, _PREPACK_KEY, "0" if prepack else "1", fresh)
    if binding.file_backed:
        _set_config(so, _FOLDER_KEY, "/", fresh)
    session = ort.InferenceSession(model.SerializeToString(), sess_options=so, providers=providers)
    session._pyaccel_binding = binding  # type: ignore[attr-defined]
    return session


def _set_config(so: ort.SessionOptions, key: str, value: str, fresh: bool) -> None:
    """Set a config entry; on the caller's options, only where it differs.

    Asking onnxruntime for an absent key raises a C++ exception, which costs
    about a millisecond (more under load), so options made here skip the look.
    """
    if not fresh:
        try:
            if so.get_session_config_entry(key) == value:
                return
        except Exception:  # onnxruntime raises when the key is absent
            pass
    so.add_session_config_entry(key, value)


def _file_holds(path: str, offset: int, nbytes: int) -> bool:
    """Whether path is a regular file with at least offset + nbytes bytes."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and offset + nbytes <= st.st_size


def _bind(model: ModelProto, arrays: Mapping[str, np.ndarray],
          backing: Mapping[str, tuple[str, int]]) -> SessionBinding:
    """Point every stripped initializer of `model` at its array; make the OrtValues."""
    binding = SessionBinding()
    inits = {t.name: t for t in _all_initializers(model.graph)}  # subgraph weights too; names are unique
    unknown = sorted(set(arrays) - set(inits))
    if unknown:
        raise ValueError(f"not initializers of this graph: {unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    missing = sorted(name for name, t in inits.items() if is_stripped(t) and name not in arrays)
    if missing:
        raise ValueError(f"no array for stripped initializer(s) {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    maps: _Maps | None = None
    copied = []
    for name, arr in arrays.items():
        t = inits[name]
        stripped = is_stripped(t)  # (before _point_at/_embed rewrite the reference)
        if t.data_type == TensorProto.STRING:
            if stripped:  # pragma: no cover - scan() never strips strings
                raise ValueError(f"string initializer {name!r} cannot be given as an array")
            continue
        if not stripped and t.data_location == TensorProto.EXTERNAL:
            raise ValueError(f"initializer {name!r} refers to external data; graph_bytes must come from scan()")
        arr = _check_array(name, arr, t)
        subbyte = t.data_type in _SUBBYTE_BITS
        if not arr.flags.c_contiguous:
            arr = arr.copy(order="C")
            copied.append(name)
        if stripped:
            if maps is None:
                maps = _Maps()
            where = maps.backing(arr) if arr.nbytes and not subbyte else None
            if where is None and arr.nbytes and not subbyte and name in backing:
                path, off = backing[name]
                if _file_holds(path, off, arr.nbytes):
                    where = (os.path.realpath(path), off)
            if where is None:
                _embed(t, arr)
                if name not in copied:
                    copied.append(name)
            else:
                _point_at(t, where[0], where[1], arr.nbytes)
                binding.file_backed[name] = where
        if not stripped:
            # Inline (small) tensors: onnxruntime already has their bytes in the
            # graph; giving them again gains nothing, and a 0-d array's OrtValue
            # comes out with shape (1,), which onnxruntime rejects.
            continue
        if not subbyte:  # onnxruntime packs 4-bit tensors; numpy does not
            binding.ortvalues[name] = _ortvalue(arr, t.data_type)
        binding.arrays[name] = arr
    binding.copied = tuple(copied)
    return binding
