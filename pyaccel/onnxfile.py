"""Find every weight of an ONNX model without loading it.

:func:`scan` walks the protobuf wire format of a ``ModelProto`` in the file,
read with ``pread`` block by block (never an mmap, so a file truncated
while it is scanned is an error, not a SIGBUS).  It parses only the messages that can hold tensors
(the model, graphs, nodes, attributes, tensors, sparse tensors and functions),
skips every payload by its length prefix and reports, for each weight, either

* a direct byte range ``(path, offset, length)`` whose bytes are exactly the
  final little-endian in-memory layout (``raw_data``, external data, packed
  ``float_data``/``double_data``), for the pool to stream with ``pread`` or
  ``O_DIRECT`` -- the scan never reads these bytes; or
* a :meth:`TensorRef.convert` recipe, for the rare payloads whose wire form
  differs from the memory layout (varint-encoded fields, unpacked repeated
  fields, strings, sparse tensors, 4-bit and 2-bit types, ``value_*``
  attributes of ``Constant`` nodes).

It also builds :attr:`ScannedModel.graph_bytes`, the model without its weight
bytes, in which every located weight is an initializer named
:attr:`TensorRef.name` (unique in the whole model) of the graph that held it:
``Constant`` nodes become initializers (as onnxruntime does at load time),
subgraph weights stay in their subgraph, so that onnxruntime optimizes and
prepacks them exactly as from the file.  :func:`pyaccel.ortsession.make_session`
turns it and one array per weight into an onnxruntime session that uses the
arrays' memory.

External data is resolved as strictly as onnx >= 1.21 does it: relative
locations only, opened beneath the model's directory with ``openat2``
(``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS``) or, where
the kernel lacks it, component by component with ``O_NOFOLLOW``; no symbolic
link anywhere in the location, no ``..``, no hard-linked file, offset and
length inside the file and equal to dtype x shape, no unknown keys.

Errors are :class:`~pyaccel.errors.MalformedModelError`,
:class:`~pyaccel.errors.ExternalDataError` or
:class:`~pyaccel.errors.UnsupportedModelError`, naming the file and tensor.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import re
import stat
import sys
from dataclasses import dataclass, field
from typing import Callable, Iterator, NamedTuple, NoReturn

import numpy as np
import onnx
from google.protobuf.message import DecodeError
from onnx import AttributeProto, ModelProto, SparseTensorProto, TensorProto, helper, numpy_helper

from .errors import ExternalDataError, MalformedModelError, ModelError, UnsupportedModelError

__all__ = [
    "INLINE_LIMIT",
    "STRIPPED_LOCATION",
    "ByteRange",
    "EmbeddedTensor",
    "ScannedModel",
    "SourceFile",
    "StaleSourceError",
    "TensorRef",
    "is_stripped",
    "open_source",
    "scan",
]

#: Tensors of at most this many bytes keep their data inside ``graph_bytes``
#: as well.  onnxruntime runs ONNX shape inference while it loads a graph and
#: some inference functions read their inputs' values (``Reshape``'s shape,
#: ``Slice``'s starts, ``Pad``'s pads, ``Resize``'s scales ...); it cannot read
#: them from external data ("Cannot parse data from external tensors"), so
#: such small tensors must stay embedded.  1 KiB is onnx's own default
#: ``size_threshold`` for external data.
INLINE_LIMIT = 1024

#: ``location`` of the external-data reference that marks a stripped
#: initializer in ``graph_bytes``.  No file of this name is ever read.
STRIPPED_LOCATION = "pyaccel:stripped"

_MAX_DEPTH = 64  # subgraph nesting; protobuf's own parser stops at 100

# ---------------------------------------------------------------------------
# Public data classes
# ---------------------------------------------------------------------------


class StaleSourceError(ModelError):
    """A file that :func:`scan` read has changed (or been replaced) since; scan again."""


class ByteRange(NamedTuple):
    """Bytes of one file.

    Attributes
    ----------
    path : str
        Absolute path of the file (the model, or an external-data file).
    offset : int
        Offset of the first byte.
    length : int
        Number of bytes.
    """

    path: str
    offset: int
    length: int


class SourceFile(NamedTuple):
    """Identity of a file the model reads, as ``fstat`` gave it during the scan.

    Attributes
    ----------
    path : str
        Absolute path.
    size : int
        ``st_size``.
    mtime_ns : int
        ``st_mtime_ns``.
    ino : int
        ``st_ino``.
    dev : int
        ``st_dev``.
    """

    path: str
    size: int
    mtime_ns: int
    ino: int
    dev: int


@dataclass(frozen=True)
class _Origin:
    """What a :class:`TensorRef` needs to read its bytes again after the scan."""

    model_path: str
    model_dir: str
    sources: tuple[SourceFile, ...]


@dataclass(frozen=True)
class _TensorSrc:
    """One ``TensorProto`` message in the model file and its resolved external bytes."""

    msg: ByteRange
    ext: ByteRange | None


@dataclass(frozen=True)
class _Recipe:
    """How :meth:`TensorRef.convert` rebuilds an array whose wire form is not its memory layout.

    ``kind`` is ``"tensor"`` (one ``TensorProto``: ``parts[0]``), ``"sparse"``
    (a ``SparseTensorProto`` at ``msg``: values ``parts[0]``, indices
    ``parts[1]``) or ``"attr"`` (a ``Constant`` attribute ``attr`` at ``msg``).
    """

    kind: str
    msg: ByteRange
    parts: tuple[_TensorSrc, ...] = ()
    attr: str = ""


@dataclass(frozen=True)
class TensorRef:
    """One weight of the model and where its bytes are.

    Attributes
    ----------
    name : str
        The initializer name it has in :attr:`ScannedModel.graph_bytes`, unique
        in the whole model (main graph and subgraphs).  For an initializer it
        is the name in the file, for a ``Constant`` node its output -- except
        in a subgraph when that name is also defined elsewhere in the model
        (shadowing), where it becomes ``"<node>.<attribute>/<name>"`` (e.g.
        ``"If_1.then_branch/W"``) and the subgraph's uses are redirected.  The
        initializer lives in the graph named by :attr:`where`.
    dtype : int
        ONNX ``TensorProto.DataType``.
    np_dtype : numpy.dtype
        The element type of the final array (``ml_dtypes`` types for bfloat16,
        float8, int4 ...; ``object`` for strings).
    shape : tuple of int
        Dimensions.
    nbytes : int
        Size of the final array in memory (``numel x itemsize``; for strings
        the sum of their lengths).
    where : str
        Human-readable origin, e.g. ``graph/If_0.then_branch/initializer W``
        (nodes without a name are called ``<op_type>_<index in graph>``).
    range : ByteRange or None
        Where the final bytes lie, unchanged, in the model or an external-data
        file; ``None`` when the array must be built by :meth:`convert`.
    inline : bool
        True when ``graph_bytes`` also embeds this tensor's data (tensors of at
        most :data:`INLINE_LIMIT` bytes and strings), so that onnxruntime's
        shape inference can read it.  Such a tensor may still be given to
        ``make_session`` (strings excepted).
    checksum : str or None
        The external-data ``checksum`` entry, if the file gave one (unverified).
    """

    name: str
    dtype: int
    np_dtype: np.dtype
    shape: tuple[int, ...]
    nbytes: int
    where: str
    range: ByteRange | None
    inline: bool = False
    checksum: str | None = None
    _recipe: _Recipe | None = field(default=None, repr=False, compare=False)
    _origin: _Origin | None = field(default=None, repr=False, compare=False)

    def convert(self) -> np.ndarray:
        """Build the final array of this tensor.

        For a tensor with a direct :attr:`range` this reads those bytes (a
        copy; the pool streams them instead).  For the others it parses just
        this tensor's message from the file.  The files are reopened as safely
        as during the scan and must be unchanged.

        Returns
        -------
        numpy.ndarray
            C-contiguous, of dtype :attr:`np_dtype` and shape :attr:`shape`.

        Raises
        ------
        StaleSourceError
            A file changed since the scan.
        MalformedModelError
            The tensor's data does not decode.
        """
        with _Reader.reopen(self._origin) as reader:
            return _materialize(self, reader)


@dataclass(frozen=True)
class EmbeddedTensor:
    """Tensor data that stays inside ``graph_bytes`` (and is not a :class:`TensorRef`).

    These are: ``Constant`` nodes and initializers of at most
    :data:`INLINE_LIMIT` bytes inside subgraphs and small main-graph
    ``Constant`` nodes (left where they are, as in the file); tensors inside
    model-local functions, whose bodies cannot see the main graph's
    initializers, so their constants are copied into ``graph_bytes`` whatever
    their size; and tensor-valued attributes of other operators (e.g.
    ``ConstantOfShape.value``).  External data of these is read into
    ``graph_bytes``.

    Attributes
    ----------
    where : str
        Human-readable origin.
    dtype : int
        ONNX data type.
    shape : tuple of int
        Dimensions.
    nbytes : int
        Size of its data.
    """

    where: str
    dtype: int
    shape: tuple[int, ...]
    nbytes: int


@dataclass
class ScannedModel:
    """Result of :func:`scan`.

    Attributes
    ----------
    path : str
        Absolute path of the ``.onnx`` file.
    model_dir : str
        Directory that external-data locations are relative to.
    ir_version : int
        The model's IR version.
    tensors : list of TensorRef
        Every weight, each an initializer of ``graph_bytes`` (in its own graph),
        names unique in the model.
    embedded : list of EmbeddedTensor
        Tensor data left inside ``graph_bytes``.
    sources : list of SourceFile
        Identity of the ``.onnx`` file and of each external-data file, in the
        order first read.
    graph_bytes : bytes
        A serialized ``ModelProto`` with no weight bytes (see
        :func:`is_stripped`).  ``training_info`` is dropped (onnxruntime's
        inference ignores it).
    """

    path: str
    model_dir: str
    ir_version: int
    tensors: list[TensorRef]
    embedded: list[EmbeddedTensor]
    sources: list[SourceFile]
    graph_bytes: bytes

    @property
    def nbytes(self) -> int:
        """Total in-memory size of :attr:`tensors`."""
        return sum(t.nbytes for t in self.tensors)

    def tensor(self, name: str) -> TensorRef:
        """Return the :class:`TensorRef` called `name` (``KeyError`` if none)."""
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def graph(self) -> ModelProto:
        """Parse :attr:`graph_bytes` into a fresh ``ModelProto``."""
        return onnx.load_from_string(self.graph_bytes)


def is_stripped(tensor: TensorProto) -> bool:
    """Tell whether an initializer of ``graph_bytes`` is a stripped placeholder.

    A placeholder has ``name``, ``dims`` and ``data_type``, and an external-data
    reference with ``location`` :data:`STRIPPED_LOCATION` and ``length`` equal
    to the ONNX raw size; its bytes come from the pool.
    """
    if tensor.data_location != TensorProto.EXTERNAL:
        return False
    return any(e.key == "location" and e.value == STRIPPED_LOCATION for e in tensor.external_data)


# ---------------------------------------------------------------------------
# Data types
# ---------------------------------------------------------------------------

# Sub-byte types are packed in ONNX raw data (and in onnxruntime's tensors)
# but numpy (ml_dtypes) keeps one element per byte, so they never have a
# direct byte range.
_SUBBYTE_BITS = {
    TensorProto.INT4: 4,
    TensorProto.UINT4: 4,
    TensorProto.FLOAT4E2M1: 4,
}
for _n in ("INT2", "UINT2"):
    if hasattr(TensorProto, _n):
        _SUBBYTE_BITS[getattr(TensorProto, _n)] = 2
_UNSUPPORTED_DTYPES = {getattr(TensorProto, n) for n in ("FLOAT6E2M3", "FLOAT6E3M2") if hasattr(TensorProto, n)}

# Field numbers of TensorProto's typed data.
_F_FLOAT, _F_INT32, _F_STRING, _F_INT64, _F_DOUBLE, _F_UINT64 = 4, 5, 6, 7, 10, 11
_TYPED_FIELD_NAMES = {
    _F_FLOAT: "float_data",
    _F_INT32: "int32_data",
    _F_STRING: "string_data",
    _F_INT64: "int64_data",
    _F_DOUBLE: "double_data",
    _F_UINT64: "uint64_data",
}


def _typed_field(dtype: int) -> int:
    """Return the TensorProto field that carries `dtype` when it is not raw."""
    if dtype in (TensorProto.FLOAT, TensorProto.COMPLEX64):
        return _F_FLOAT
    if dtype in (TensorProto.DOUBLE, TensorProto.COMPLEX128):
        return _F_DOUBLE
    if dtype == TensorProto.INT64:
        return _F_INT64
    if dtype in (TensorProto.UINT32, TensorProto.UINT64):
        return _F_UINT64
    if dtype == TensorProto.STRING:
        return _F_STRING
    return _F_INT32  # int32, int16/8, uint16/8, bool, float16, bfloat16, float8*, 4/2-bit


def _np_dtype(dtype: int, fail: Callable[[type[ModelError], str], NoReturn]) -> np.dtype:
    """Return the numpy dtype of ONNX `dtype`, or fail with a pyaccel error."""
    if dtype == TensorProto.UNDEFINED:
        fail(MalformedModelError, "data_type is UNDEFINED (0)")
    if dtype in _UNSUPPORTED_DTYPES:
        fail(UnsupportedModelError, f"data type {TensorProto.DataType.Name(dtype)} is not supported")
    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(dtype))
    except (KeyError, ValueError, TypeError):
        fail(UnsupportedModelError, f"unknown data type {dtype}")


def _raw_nbytes(dtype: int, np_dtype: np.dtype, numel: int) -> int:
    """Size of `numel` elements in ONNX raw layout (packed for sub-byte types)."""
    bits = _SUBBYTE_BITS.get(dtype)
    if bits is not None:
        return (numel * bits + 7) // 8
    return numel * np_dtype.itemsize


def _dtype_name(dtype: int) -> str:
    try:
        return TensorProto.DataType.Name(dtype)
    except ValueError:
        return str(dtype)


# ---------------------------------------------------------------------------
# Protobuf wire format
# ---------------------------------------------------------------------------

_VARINT, _I64, _LEN, _I32 = 0, 1, 2, 5
_WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 3: "start-group", 4: "end-group", 5: "fixed32"}


#: Model files up to this size are read whole for the scan; bigger ones block by block.
_READ_WHOLE = 32 << 20


class _PreadBuf:
    """The model file, read with ``pread`` in blocks as the scan walks it.

    Not an mmap: another process truncating the file while it is scanned
    would turn an access of an mmap into a SIGBUS that kills the interpreter;
    here it is a :class:`MalformedModelError`.  Only the blocks the scan
    touches (field headers, names, small payloads) are read; a few are cached.
    """

    __slots__ = ("fd", "size", "path", "_blocks")
    BLOCK = 1 << 16

    def __init__(self, fd: int, size: int, path: str) -> None:
        self.fd = fd
        self.size = size
        self.path = path
        self._blocks: dict[int, bytes] = {}

    def __len__(self) -> int:
        return self.size

    def _read(self, off: int, n: int) -> bytes:
        data = os.pread(self.fd, n, off)
        if len(data) < n:
            raise MalformedModelError(self.path, f"the file ended at byte {off + len(data)} while being read; "
                                                 "was it truncated by another process during the scan?")
        return data

    def block(self, k: int) -> bytes:
        """Block ``k`` of the file (cached)."""
        b = self._blocks.get(k)
        if b is None:
            if len(self._blocks) >= 32:
                self._blocks.clear()
            start = k * self.BLOCK
            b = self._blocks[k] = self._read(start, min(self.BLOCK, self.size - start))
        return b

    def __getitem__(self, i: int | slice) -> int | bytes:
        if isinstance(i, slice):
            a, b = max(i.start or 0, 0), min(self.size if i.stop is None else i.stop, self.size)
            if b <= a:
                return b""
            k, o = divmod(a, self.BLOCK)
            if o + (b - a) <= self.BLOCK:
                return self.block(k)[o:o + b - a]
            return self._read(a, b - a)
        k, o = divmod(i, self.BLOCK)
        return self.block(k)[o]

    def release(self) -> None:
        self._blocks.clear()


class _Wire:
    """Protobuf wire-format reader over a buffer (the file through pread, or bytes).

    Every method checks bounds and raises :class:`MalformedModelError`
    instead of ``IndexError``; nothing here copies a payload.
    """

    __slots__ = ("mv", "path", "size")

    def __init__(self, buf: object, path: str) -> None:
        self.mv = buf if isinstance(buf, _PreadBuf) else memoryview(buf)  # type: ignore[arg-type]
        self.size = len(self.mv)
        self.path = path

    def fail(self, pos: int, what: str) -> NoReturn:
        raise MalformedModelError(self.path, f"malformed protobuf at byte {pos}: {what}")

    def varint(self, pos: int, end: int) -> tuple[int, int]:
        """Decode the varint at `pos`; return ``(value, position after it)``."""
        if pos < end and type(self.mv) is memoryview:
            b = self.mv[pos]
            if b < 0x80:  # most tags and lengths fit one byte
                return b, pos + 1
        # at most 10 bytes, fetched in one go (one pread block lookup)
        window = self.mv[pos:min(end, pos + 10)]
        result = 0
        shift = 0
        start = pos
        for b in window:
            pos += 1
            result |= (b & 0x7F) << shift
            if b < 0x80:
                break
            shift += 7
        else:
            if len(window) == 10:
                self.fail(start, "varint longer than 10 bytes")
            if end >= self.size:
                self.fail(start, "varint runs past the end of the file (truncated file?)")
            self.fail(start, "varint runs past the end of its message")
        if result >> 64:
            self.fail(start, "varint exceeds 64 bits")
        return result, pos

    def fields(self, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
        """Iterate over the fields of the message in ``[start, end)``.

        Yields ``(number, wire_type, a, b, tag_start)``: for a varint, ``a`` is
        the value; otherwise ``[a, b)`` is the payload.  ``b`` is always the
        end of the field, so ``[tag_start, b)`` is the whole field.
        """
        pos = start
        while pos < end:
            tag_start = pos
            key, pos = self.varint(pos, end)
            num, wt = key >> 3, key & 7
            if num == 0:
                self.fail(tag_start, "field number 0")
            if wt == _VARINT:
                value, pos = self.varint(pos, end)
                yield num, wt, value, pos, tag_start
                continue
            if wt == _LEN:
                n, pos = self.varint(pos, end)
                a = pos
            elif wt == _I32:
                n, a = 4, pos
            elif wt == _I64:
                n, a = 8, pos
            else:
                self.fail(tag_start, f"field {num} has wire type {_WIRE_NAMES.get(wt, wt)}, which ONNX never uses")
            if n > end - a:
                if end >= self.size:
                    self.fail(tag_start, f"field {num} claims {n} bytes but the file ends {self.size - a} bytes later (truncated file?)")
                self.fail(tag_start, f"field {num} claims {n} bytes, past the end of its message")
            pos = a + n
            yield num, wt, a, pos, tag_start

    def int64s(self, wt: int, a: int, b: int, out: list[int]) -> None:
        """Append a repeated int64 field's values: one varint, or a packed run in ``[a, b)``."""
        if wt == _VARINT:
            out.append(_signed64(a))
            return
        pos = a
        while pos < b:
            v, pos = self.varint(pos, b)
            out.append(_signed64(v))

    def text(self, a: int, b: int) -> str:
        """Decode a UTF-8 string field."""
        try:
            return bytes(self.mv[a:b]).decode("utf-8")
        except UnicodeDecodeError:
            self.fail(a, "string field is not valid UTF-8")

    def bytes_(self, a: int, b: int) -> bytes:
        return bytes(self.mv[a:b])

    def count_varints(self, a: int, b: int) -> int:
        """Count the varints packed in ``[a, b)`` without decoding them."""
        if a == b:
            return 0
        if self.mv[b - 1] >= 0x80:
            self.fail(b - 1, "packed varints end in the middle of a varint")
        return int(np.count_nonzero(np.frombuffer(self.mv[a:b], dtype=np.uint8) < 0x80))


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _expect(w: _Wire, wt: int, want: int | tuple[int, ...], pos: int, what: str) -> None:
    want_t = want if isinstance(want, tuple) else (want,)
    if wt not in want_t:
        w.fail(pos, f"{what} has wire type {_WIRE_NAMES.get(wt, wt)}, expected {_WIRE_NAMES[want_t[0]]}")


def _enc_varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _enc_len(num: int, payload: bytes) -> bytes:
    return _enc_varint((num << 3) | _LEN) + _enc_varint(len(payload)) + payload


# ---------------------------------------------------------------------------
# Safe external-data resolution
# ---------------------------------------------------------------------------

_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_SYS_OPENAT2 = {"x86_64": 437, "aarch64": 437, "arm64": 437}.get(platform.machine())


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


class _Openat2:
    """``openat2(2)`` through ctypes, or ``None``-like when the kernel or libc lacks it."""

    def __init__(self) -> None:
        self.available = _SYS_OPENAT2 is not None and sys.platform.startswith("linux")
        self._syscall = None
        if self.available:
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.syscall
                fn.restype = ctypes.c_long
                fn.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_size_t]
                self._syscall = fn
            except (OSError, AttributeError):
                self.available = False

    def open(self, dir_fd: int, path: str, flags: int, resolve: int) -> int | None:
        """Return an fd, ``None`` if openat2 is unavailable, or raise ``OSError``."""
        if not self.available or self._syscall is None:
            return None
        how = _OpenHow(flags, 0, resolve)
        fd = self._syscall(_SYS_OPENAT2, dir_fd, os.fsencode(path), ctypes.byref(how), ctypes.sizeof(how))
        if fd >= 0:
            return int(fd)
        err = ctypes.get_errno()
        if err in (errno.ENOSYS, errno.EPERM) and self.available:
            # No openat2 (kernel < 5.6), or a seccomp filter refusing it: fall back for good.
            self.available = False
            return None
        raise OSError(err, os.strerror(err), path)


_OPENAT2 = _Openat2()


def _check_location(loc: str, fail: Callable[[str], NoReturn]) -> str:
    """Validate an external-data location lexically; return it normalized."""
    if not loc:
        fail("external data has an empty location")
    if "\x00" in loc:
        fail(f"external data location {loc!r} contains a NUL byte")
    if loc.startswith("/"):
        fail(f"external data location {loc!r} is an absolute path; only paths relative to the model's directory are allowed")
    parts = loc.split("/")
    if ".." in parts:
        fail(f"external data location {loc!r} contains '..'; it must stay inside the model's directory")
    norm = "/".join(p for p in parts if p not in ("", "."))
    if not norm:
        fail(f"external data location {loc!r} names the model's directory itself")
    return norm


def _open_beneath(dir_fd: int, loc: str, flags: int, fail: Callable[[str], NoReturn]) -> int:
    """Open normalized `loc` beneath `dir_fd`, refusing symlinks and escapes.

    Uses ``openat2`` with ``RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
    RESOLVE_NO_MAGICLINKS`` where the kernel has it, otherwise walks the
    components with ``O_NOFOLLOW`` (both refuse a symlink in any component,
    like onnx does).
    """
    flags |= os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
    try:
        fd = _OPENAT2.open(dir_fd, loc, flags, _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS)
        if fd is not None:
            return fd
        return _open_by_components(dir_fd, loc, flags)
    except OSError as e:
        _explain_open_error(dir_fd, loc, e, fail)


def _open_by_components(dir_fd: int, loc: str, flags: int) -> int:
    """Fallback for kernels without openat2: one ``O_NOFOLLOW`` open per component."""
    parts = loc.split("/")
    cur = os.dup(dir_fd)
    try:
        for part in parts[:-1]:
            nxt = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=cur)
            os.close(cur)
            cur = nxt
        return os.open(parts[-1], flags, dir_fd=cur)
    finally:
        os.close(cur)


def _explain_open_error(dir_fd: int, loc: str, e: OSError, fail: Callable[[str], NoReturn]) -> NoReturn:
    """Turn an open error into an :class:`ExternalDataError` a person can act on."""
    link = _first_symlink(dir_fd, loc)
    if link is not None:
        what = "the file itself" if link == loc else f"its component {link!r}"
        fail(f"external data location {loc!r} goes through a symbolic link ({what}); symbolic links are refused")
    if e.errno == errno.ENOENT:
        fail(f"external data file {loc!r} does not exist")
    if e.errno == errno.EXDEV:
        fail(f"external data location {loc!r} escapes the model's directory")
    if e.errno == errno.ENOTDIR:
        fail(f"a component of external data location {loc!r} is not a directory")
    fail(f"cannot open external data file {loc!r}: {os.strerror(e.errno or 0)}")


def _first_symlink(dir_fd: int, loc: str) -> str | None:
    """Return the first component of `loc` that is a symlink, if any (for messages)."""
    parts = loc.split("/")
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        try:
            if stat.S_ISLNK(os.lstat(sub, dir_fd=dir_fd).st_mode):
                return sub
        except OSError:
            return None
    return None


def _identity(path: str, st: os.stat_result) -> SourceFile:
    return SourceFile(path, st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def open_source(model: ScannedModel | _Origin, path: str, flags: int = 0) -> int:
    """Open a file the scan read, as safely as the scan did, and check it is unchanged.

    Parameters
    ----------
    model : ScannedModel
        The scan.
    path : str
        One of the paths in ``model.sources`` (e.g. ``TensorRef.range.path``).
    flags : int, optional
        Extra ``os.open`` flags, e.g. ``os.O_DIRECT``.  ``O_RDONLY`` and
        ``O_CLOEXEC`` are always added.

    Returns
    -------
    int
        A file descriptor the caller must close.

    Raises
    ------
    StaleSourceError
        The file's size, mtime, inode or device differ from the scan's.
    ExternalDataError
        The external file can no longer be opened safely.
    """
    origin = model if isinstance(model, _Origin) else _Origin(model.path, model.model_dir, tuple(model.sources))
    known = [s for s in origin.sources if s.path == path]
    if not known:
        raise ValueError(f"{path} is not a file of this model")
    if path == origin.model_path:
        try:
            fd = os.open(path, flags | os.O_RDONLY | os.O_CLOEXEC)
        except OSError as e:
            raise StaleSourceError(path, f"cannot reopen the model: {os.strerror(e.errno or 0)}") from e
    else:
        loc = os.path.relpath(path, origin.model_dir)

        def fail(detail: str) -> NoReturn:
            raise ExternalDataError(path, detail)

        dir_fd = os.open(origin.model_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            fd = _open_beneath(dir_fd, _check_location(loc, fail), flags, fail)
        finally:
            os.close(dir_fd)
    try:
        now = _identity(path, os.fstat(fd))
        if now not in known:
            raise StaleSourceError(path, f"changed since it was scanned (was {known[0]}, now {now}); scan it again")
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Reader:
    """Reads byte ranges of the model's files by path (``pread``).

    During the scan it uses the descriptors the scan opened; afterwards
    (:meth:`reopen`) it reopens each file with :func:`open_source`.
    """

    def __init__(self, fds: dict[str, int], origin: _Origin | None, owned: bool) -> None:
        self._fds = fds
        self._origin = origin
        self._owned = owned

    @classmethod
    def reopen(cls, origin: _Origin | None) -> _Reader:
        if origin is None:
            raise ValueError("this TensorRef was not made by scan()")
        return cls({}, origin, owned=True)

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._owned:
            for fd in self._fds.values():
                os.close(fd)
            self._fds.clear()

    def read(self, r: ByteRange) -> bytes:
        fd = self._fds.get(r.path)
        if fd is None:
            assert self._origin is not None
            fd = open_source(self._origin, r.path)
            self._fds[r.path] = fd
        out = bytearray(r.length)
        view = memoryview(out)
        done = 0
        while done < r.length:
            n = os.preadv(fd, [view[done:]], r.offset + done)
            if n == 0:
                raise StaleSourceError(r.path, f"ends before byte {r.offset + r.length}; it changed since it was scanned")
            done += n
        return bytes(out)


# ---------------------------------------------------------------------------
# Converting payloads whose wire form is not the memory layout
# ---------------------------------------------------------------------------


def _gather_fixed(msg: bytes, field_no: int, width: int, path: str) -> bytes:
    """Concatenate the fixed-width values of repeated field `field_no`, packed or not.

    Used for ``float_data``/``double_data`` and ``value_float(s)`` so that every
    bit (NaN payloads included) is kept; going through Python floats would
    quiet signalling NaNs.
    """
    w = _Wire(msg, path)
    chunks = []
    want = _I32 if width == 4 else _I64
    for num, wt, a, b, ts in w.fields(0, len(msg)):
        if num != field_no:
            continue
        if wt == _LEN:
            if (b - a) % width:
                w.fail(ts, f"packed field {field_no} is not a multiple of {width} bytes")
            chunks.append(msg[a:b])
        elif wt == want:
            chunks.append(msg[a:b])
        else:
            w.fail(ts, f"field {field_no} has wire type {_WIRE_NAMES.get(wt, wt)}")
    return b"".join(chunks)


def _tensor_array(t: TensorProto, msg: bytes, ext: bytes | None, path: str) -> np.ndarray:
    """Array of one parsed ``TensorProto`` (`msg` is its serialized form)."""
    dims = tuple(t.dims)
    if ext is not None:
        t = TensorProto.FromString(msg)
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
        t.raw_data = ext
    elif t.data_type in (TensorProto.FLOAT, TensorProto.COMPLEX64) and len(t.float_data):
        arr = np.frombuffer(_gather_fixed(msg, _F_FLOAT, 4, path), dtype="<f4")
        return arr.view(np.complex64 if t.data_type == TensorProto.COMPLEX64 else np.float32).reshape(dims)
    elif t.data_type in (TensorProto.DOUBLE, TensorProto.COMPLEX128) and len(t.double_data):
        arr = np.frombuffer(_gather_fixed(msg, _F_DOUBLE, 8, path), dtype="<f8")
        return arr.view(np.complex128 if t.data_type == TensorProto.COMPLEX128 else np.float64).reshape(dims)
    arr = numpy_helper.to_array(t)
    if t.data_type == TensorProto.STRING:
        return np.asarray(arr, dtype=object).reshape(dims)
    return np.ascontiguousarray(arr).reshape(dims)


def _densify(values: np.ndarray, indices: np.ndarray, dims: tuple[int, ...], path: str, name: str) -> np.ndarray:
    """Dense array of a sparse tensor, as onnxruntime builds it (zeros elsewhere)."""
    numel = int(np.prod(dims, dtype=np.int64)) if dims else 1
    nnz = values.shape[0] if values.ndim else 1
    values = values.reshape(-1)
    if indices.ndim == 1:
        lin = indices.astype(np.int64, copy=False)
    elif indices.ndim == 2 and indices.shape[1] == len(dims):
        if np.any(indices < 0) or np.any(indices >= np.asarray(dims, dtype=np.int64)):
            raise MalformedModelError(path, "sparse tensor index out of range", tensor=name)
        lin = np.ravel_multi_index(tuple(indices.T), dims) if nnz else np.zeros(0, np.int64)
    else:
        raise MalformedModelError(path, f"sparse tensor indices have shape {indices.shape}; expected ({nnz},) or ({nnz}, {len(dims)})", tensor=name)
    if lin.shape[0] != nnz:
        raise MalformedModelError(path, f"sparse tensor has {nnz} values but {lin.shape[0]} indices", tensor=name)
    if nnz and (lin.min() < 0 or lin.max() >= numel):
        raise MalformedModelError(path, "sparse tensor index out of range", tensor=name)
    dense = np.zeros(numel, dtype=values.dtype)
    dense[lin] = values
    return dense.reshape(dims)


def _attr_array(msg: bytes, attr: str, path: str) -> np.ndarray:
    """Array of a ``Constant`` node's ``value_*`` attribute."""
    a = AttributeProto.FromString(msg)
    if attr == "value_float":
        return np.frombuffer(_gather_fixed(msg, 2, 4, path), dtype="<f4").reshape(())
    if attr == "value_floats":
        return np.frombuffer(_gather_fixed(msg, 7, 4, path), dtype="<f4").copy()
    if attr == "value_int":
        return np.array(a.i, dtype=np.int64)
    if attr == "value_ints":
        return np.array(list(a.ints), dtype=np.int64)
    if attr == "value_string":
        return np.array(a.s, dtype=object)
    if attr == "value_strings":
        arr = np.empty(len(a.strings), dtype=object)
        arr[:] = list(a.strings)
        return arr
    raise AssertionError(attr)


def _materialize(ref: TensorRef, reader: _Reader) -> np.ndarray:
    """Build the final array of `ref` through `reader`."""
    path = ref.range.path if ref.range is not None else (ref._origin.model_path if ref._origin else "?")
    try:
        arr = _materialize_unchecked(ref, reader)
    except (DecodeError, ValueError, TypeError, IndexError) as e:
        if isinstance(e, ModelError):
            raise
        raise MalformedModelError(path, f"{ref.where}: data does not decode: {e}", tensor=ref.name) from e
    if ref.dtype != TensorProto.STRING:
        if arr.dtype != ref.np_dtype:
            if arr.dtype.itemsize != ref.np_dtype.itemsize:
                raise MalformedModelError(path, f"{ref.where}: data decodes to {arr.dtype}, expected {ref.np_dtype}", tensor=ref.name)
            arr = arr.view(ref.np_dtype)
        if arr.shape != ref.shape or arr.nbytes != ref.nbytes:
            raise MalformedModelError(path, f"{ref.where}: data decodes to shape {arr.shape}, expected {ref.shape}", tensor=ref.name)
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # (np.ascontiguousarray would make a 0-d array 1-d)


def _materialize_unchecked(ref: TensorRef, reader: _Reader) -> np.ndarray:
    if ref.range is not None:
        data = reader.read(ref.range)
        return np.frombuffer(data, dtype=ref.np_dtype).reshape(ref.shape)
    rec = ref._recipe
    assert rec is not None
    path = rec.msg.path
    if rec.kind == "tensor":
        return _part_array(rec.parts[0], reader, path)
    if rec.kind == "sparse":
        values = _part_array(rec.parts[0], reader, path)
        indices = _part_array(rec.parts[1], reader, path)
        return _densify(values, indices, ref.shape, path, ref.name)
    return _attr_array(reader.read(rec.msg), rec.attr, path)


def _part_array(src: _TensorSrc, reader: _Reader, path: str) -> np.ndarray:
    msg = reader.read(src.msg)
    ext = reader.read(src.ext) if src.ext is not None else None
    return _tensor_array(TensorProto.FromString(msg), msg, ext, path)


# ---------------------------------------------------------------------------
# The scan
# ---------------------------------------------------------------------------

_CONSTANT_ATTRS = ("value", "sparse_value", "value_float", "value_floats", "value_int", "value_ints", "value_string", "value_strings")
_EXT_KEYS = {"location", "offset", "length", "checksum", "basepath"}
_DIGITS = re.compile(r"[0-9]+\Z")


@dataclass
class _Parsed:
    """A ``TensorProto`` as the wire walk saw it, validated."""

    name: str
    dtype: int
    np_dtype: np.dtype
    dims: tuple[int, ...]
    nbytes: int  # final, in memory
    range: ByteRange | None
    src: _TensorSrc
    checksum: str | None
    has_ext: bool
    attr: str = ""  # for a Constant's value_* attribute: its name
    sparse: tuple[ByteRange, _TensorSrc, _TensorSrc] | None = None  # message, values, indices


@dataclass
class _Pending:
    """A stripped subgraph weight or ``Constant`` whose final name the graph edit decides."""

    parsed_name: str  # name or output in the file
    desired: str  # name to give it once hoisted
    index: int  # in _Scan.refs


class _Scan:
    """State of one :func:`scan`: the wire walk and the rewrite into ``graph_bytes``."""

    def __init__(self, path: str, w: _Wire, model_fd: int, dir_fd: int, model_dir: str, model_st: os.stat_result) -> None:
        self.path = path
        self.model_fd = model_fd
        self.w = w
        self.dir_fd = dir_fd
        self.model_dir = model_dir
        self.refs: list[dict] = []  # TensorRef kwargs, finalized at the end
        self.embedded: list[EmbeddedTensor] = []
        self.sources: list[SourceFile] = [_identity(path, model_st)]
        self.ext_fds: dict[str, int] = {}  # absolute path -> fd
        self.pending: dict[int, _Pending] = {}  # seq -> pending hoist
        self.main_names: set[str] = set()

    # -- errors -----------------------------------------------------------

    def fail(self, cls: type[ModelError], detail: str, tensor: str | None = None, path: str | None = None) -> NoReturn:
        raise cls(path or self.path, detail, tensor=tensor or None)

    # -- model ------------------------------------------------------------

    def model(self) -> tuple[bytes, int]:
        w = self.w
        out: list[bytes] = []
        ir_version = 0
        seen_graph = False
        for num, wt, a, b, ts in w.fields(0, w.size):
            if num == 1:  # ir_version
                _expect(w, wt, _VARINT, ts, "ModelProto.ir_version")
                ir_version = a
                out.append(w.bytes_(ts, b))
            elif num == 7:  # graph
                _expect(w, wt, _LEN, ts, "ModelProto.graph")
                if seen_graph:
                    w.fail(ts, "ModelProto has two graph fields")
                seen_graph = True
                out.append(_enc_len(7, self.graph(a, b, "graph", 0, main=True, hoist=True)))
            elif num == 25:  # functions
                _expect(w, wt, _LEN, ts, "ModelProto.functions")
                out.append(_enc_len(25, self.function(a, b)))
            elif num == 20:  # training_info: not used for inference, may hold large tensors
                continue
            else:
                out.append(w.bytes_(ts, b))
        if not seen_graph:
            self.fail(MalformedModelError, "not an ONNX model: no graph (empty, truncated or not a ModelProto)")
        return b"".join(out), ir_version

    def function(self, start: int, end: int) -> bytes:
        w = self.w
        fields = list(w.fields(start, end))
        name = domain = ""
        for num, wt, a, b, ts in fields:
            if num == 1 and wt == _LEN:
                name = w.text(a, b)
            elif num == 10 and wt == _LEN:
                domain = w.text(a, b)
        label = f"function {domain + '.' if domain else ''}{name}"
        out: list[bytes] = []
        i_node = 0
        for num, wt, a, b, ts in fields:
            if num == 7:  # node
                _expect(w, wt, _LEN, ts, "FunctionProto.node")
                new = self.node(a, b, label, i_node, 1, hoist=False)
                i_node += 1
                out.append(w.bytes_(ts, b) if new is None else _enc_len(7, new))
            elif num == 11:  # attribute_proto (default attribute values)
                _expect(w, wt, _LEN, ts, "FunctionProto.attribute_proto")
                new = self.attribute(a, b, label, 1, hoist=False)
                out.append(w.bytes_(ts, b) if new is None else _enc_len(11, new))
            else:
                out.append(w.bytes_(ts, b))
        return b"".join(out)

    # -- graphs -----------------------------------------------------------

    def graph(self, start: int, end: int, label: str, depth: int, main: bool, hoist: bool) -> bytes:
        """Rewrite one ``GraphProto``.

        `hoist` means "strip large weights out": it is False inside model-local
        functions, whose bodies cannot see initializers, so their tensors stay.
        """
        w = self.w
        if depth > _MAX_DEPTH:
            w.fail(start, f"subgraphs nested deeper than {_MAX_DEPTH}")
        fields = list(w.fields(start, end))
        inputs = set()
        if not main:
            for num, wt, a, b, ts in fields:
                if num == 11 and wt == _LEN:
                    inputs.add(self._value_info_name(a, b))
        out: list[bytes] = []
        i_node = 0
        for num, wt, a, b, ts in fields:
            if num == 1:  # node
                _expect(w, wt, _LEN, ts, "GraphProto.node")
                new = self.node(a, b, label, i_node, depth, hoist)
                i_node += 1
                out.append(w.bytes_(ts, b) if new is None else _enc_len(1, new))
            elif num == 5:  # initializer
                _expect(w, wt, _LEN, ts, "GraphProto.initializer")
                out.append(_enc_len(5, self.initializer(a, b, label, main, hoist, inputs)))
            elif num == 15:  # sparse_initializer
                _expect(w, wt, _LEN, ts, "GraphProto.sparse_initializer")
                fno, data = self.sparse_initializer(a, b, label, main, hoist, inputs)
                out.append(_enc_len(fno, data))
            else:
                out.append(w.bytes_(ts, b))
        return b"".join(out)

    def _value_info_name(self, a: int, b: int) -> str:
        for num, wt, x, y, ts in self.w.fields(a, b):
            if num == 1 and wt == _LEN:
                return self.w.text(x, y)
        return ""

    def initializer(self, a: int, b: int, label: str, main: bool, hoist: bool, inputs: set[str]) -> bytes:
        p = self.tensor(a, b, label, "initializer")
        where = f"{label}/initializer {p.name}"
        if not p.name:
            self.fail(MalformedModelError, f"{where}: initializer without a name")
        if main:
            return self.add_main(p, where)
        if hoist and p.name in inputs and not self.small(p):
            self.fail(UnsupportedModelError, f"{where}: a subgraph initializer that is also an input of its subgraph (IR < 4 style) is not supported", p.name)
        if hoist and not self.small(p):
            return self.add_hoisted(p, where, p.name, self.hoist_name(label, p.name))
        return self.keep(p, where, a, b)

    def sparse_initializer(self, a: int, b: int, label: str, main: bool, hoist: bool, inputs: set[str]) -> tuple[int, bytes]:
        """Return ``(field number, message)``: a dense initializer (field 5) or the sparse one kept (15)."""
        p = self.sparse(a, b, label, "sparse_initializer")
        where = f"{label}/sparse_initializer {p.name}"
        if not p.name:
            self.fail(MalformedModelError, f"{where}: sparse initializer without a name")
        if main:
            return 5, self.add_main(p, where)
        if hoist and p.name in inputs and not self.small(p):
            self.fail(UnsupportedModelError, f"{where}: a subgraph initializer that is also an input of its subgraph is not supported", p.name)
        if hoist and not self.small(p):
            return 5, self.add_hoisted(p, where, p.name, self.hoist_name(label, p.name))
        return 15, self.keep_sparse(p, where, a, b)

    @staticmethod
    def hoist_name(label: str, name: str) -> str:
        return f"{label.split('/', 1)[1] if '/' in label else label}/{name}"

    # -- nodes and attributes --------------------------------------------

    def node(self, start: int, end: int, label: str, index: int, depth: int, hoist: bool) -> bytes | None:
        """Rewrite a ``NodeProto``, or return ``None`` when it is unchanged."""
        w = self.w
        fields = list(w.fields(start, end))
        op_type = domain = name = ""
        outputs: list[str] = []
        for num, wt, a, b, ts in fields:
            if wt != _LEN:
                continue
            if num == 4:
                op_type = w.text(a, b)
            elif num == 7:
                domain = w.text(a, b)
            elif num == 3:
                name = w.text(a, b)
            elif num == 2:
                outputs.append(w.text(a, b))
        node_label = name or f"{op_type}_{index}"
        is_constant = op_type == "Constant" and domain in ("", "ai.onnx")
        if is_constant and len(outputs) != 1:
            self.fail(MalformedModelError, f"{label}/{node_label}: Constant node with {len(outputs)} outputs")
        changed = False
        out: list[bytes] = []
        n_values = 0
        for num, wt, a, b, ts in fields:
            if num != 5:
                out.append(w.bytes_(ts, b))
                continue
            _expect(w, wt, _LEN, ts, "NodeProto.attribute")
            ctx = f"{label}/{node_label}"
            if is_constant:
                n_values += 1
                new = self.constant_attribute(a, b, ctx, outputs[0], depth, hoist, main=(depth == 0))
            else:
                new = self.attribute(a, b, ctx, depth, hoist)
            if new is None:
                out.append(w.bytes_(ts, b))
            else:
                changed = True
                out.append(_enc_len(5, new))
        if is_constant and n_values != 1:
            self.fail(MalformedModelError, f"{label}/{node_label}: Constant node must have exactly one attribute, has {n_values}")
        return b"".join(out) if changed else None

    def _attr_fields(self, a: int, b: int) -> tuple[str, list[tuple[int, int, int, int, int]]]:
        fields = list(self.w.fields(a, b))
        name = ""
        for num, wt, x, y, ts in fields:
            if num == 1 and wt == _LEN:
                name = self.w.text(x, y)
        return name, fields

    def attribute(self, a: int, b: int, ctx: str, depth: int, hoist: bool) -> bytes | None:
        """Rewrite an attribute that is not a weight: recurse into subgraphs, keep tensors in place."""
        w = self.w
        name, fields = self._attr_fields(a, b)
        changed = False
        out: list[bytes] = []
        n_graphs = 0
        for num, wt, x, y, ts in fields:
            if num in (6, 11) and wt == _LEN:  # g, graphs
                sub_label = f"{ctx}.{name}" if num == 6 else f"{ctx}.{name}[{n_graphs}]"
                n_graphs += num == 11
                out.append(_enc_len(num, self.graph(x, y, sub_label, depth + 1, main=False, hoist=hoist)))
                changed = True
            elif num in (5, 10) and wt == _LEN:  # t, tensors
                p = self.tensor(x, y, ctx, name)
                new = self.keep(p, f"{ctx}/{name}", x, y)
                out.append(_enc_len(num, new))
                changed = True
            elif num in (22, 23) and wt == _LEN:  # sparse_tensor(s)
                p = self.sparse(x, y, ctx, name)
                out.append(_enc_len(num, self.keep_sparse(p, f"{ctx}/{name}", x, y)))
                changed = True
            else:
                out.append(w.bytes_(ts, y))
        return b"".join(out) if changed else None

    def constant_attribute(self, a: int, b: int, ctx: str, output: str, depth: int, hoist: bool, main: bool) -> bytes | None:
        """Locate the value of a ``Constant`` node; return the rewritten attribute or ``None``."""
        name, fields = self._attr_fields(a, b)
        where = f"{ctx}/{name}"
        if name not in _CONSTANT_ATTRS:
            self.fail(MalformedModelError, f"{where}: Constant has no attribute {name!r}")
        if not hoist:  # inside a function: keep in place (external data is read in)
            return self.attribute(a, b, ctx, depth, hoist=False)
        if name == "value":
            t = [(x, y) for num, wt, x, y, ts in fields if num == 5 and wt == _LEN]
            if len(t) != 1:
                self.fail(MalformedModelError, f"{where}: Constant 'value' without exactly one tensor")
            p = self.tensor(t[0][0], t[0][1], ctx, name)
            p.name = output
        elif name == "sparse_value":
            t = [(x, y) for num, wt, x, y, ts in fields if num == 22 and wt == _LEN]
            if len(t) != 1:
                self.fail(MalformedModelError, f"{where}: Constant 'sparse_value' without exactly one sparse tensor")
            p = self.sparse(t[0][0], t[0][1], ctx, name)
            p.name = output
        else:
            p = self.attr_tensor(a, b, fields, where, name, output)
        if self.small(p):  # left in place, like in the file
            if name in ("value", "sparse_value"):
                return self.attribute(a, b, ctx, depth, hoist=True)
            self.embedded.append(EmbeddedTensor(where, p.dtype, p.dims, p.nbytes))
            return None
        desired = output if main else self.hoist_name(ctx.rsplit("/", 1)[0], output)
        placeholder = self.add_hoisted(p, where, output, desired)
        # A Constant whose value is a placeholder; the graph edit turns it into an initializer.
        return _enc_len(1, b"value") + _enc_varint((20 << 3) | _VARINT) + _enc_varint(AttributeProto.TENSOR) + _enc_len(5, placeholder)

    def attr_tensor(self, a: int, b: int, fields: list, where: str, name: str, output: str) -> _Parsed:
        """Describe a ``value_float(s)/int(s)/string(s)`` attribute as a tensor."""
        w = self.w
        msg = ByteRange(self.path, a, b - a)
        src = _TensorSrc(msg, None)
        if name in ("value_float", "value_floats"):
            fno, dtype = (2, TensorProto.FLOAT) if name == "value_float" else (7, TensorProto.FLOAT)
            count = 0
            chunks = []
            for num, wt, x, y, ts in fields:
                if num != fno:
                    continue
                if wt == _LEN:
                    if (y - x) % 4:
                        w.fail(ts, f"{where}: packed floats not a multiple of 4 bytes")
                    count += (y - x) // 4
                    chunks.append((x, y))
                elif wt == _I32:
                    count += 1
                    chunks.append((x, y))
                else:
                    w.fail(ts, f"{where}: wrong wire type for floats")
            dims: tuple[int, ...] = () if name == "value_float" else (count,)
            if name == "value_float" and count != 1:
                self.fail(MalformedModelError, f"{where}: value_float without exactly one value", output)
            rng = ByteRange(self.path, chunks[0][0], 4 * count) if name == "value_floats" and len(chunks) == 1 and count else None
            return _Parsed(output, dtype, np.dtype(np.float32), dims, 4 * count, rng, src, None, False, attr=name)
        if name in ("value_int", "value_ints"):
            fno = 3 if name == "value_int" else 8
            count = 0
            for num, wt, x, y, ts in fields:
                if num == fno:
                    count += w.count_varints(x, y) if wt == _LEN else 1
            if name == "value_int" and count != 1:
                self.fail(MalformedModelError, f"{where}: value_int without exactly one value", output)
            dims = () if name == "value_int" else (count,)
            return _Parsed(output, TensorProto.INT64, np.dtype(np.int64), dims, 8 * count, None, src, None, False, attr=name)
        fno = 4 if name == "value_string" else 9
        lens = [y - x for num, wt, x, y, ts in fields if num == fno and wt == _LEN]
        if name == "value_string" and len(lens) != 1:
            self.fail(MalformedModelError, f"{where}: value_string without exactly one value", output)
        dims = () if name == "value_string" else (len(lens),)
        return _Parsed(output, TensorProto.STRING, np.dtype(object), dims, sum(lens), None, src, None, False, attr=name)

    # -- tensors ----------------------------------------------------------

    def tensor(self, start: int, end: int, ctx: str, what: str) -> _Parsed:
        """Parse and validate a ``TensorProto``; locate its bytes."""
        w = self.w
        dims: list[int] = []
        dtype = 0
        name = ""
        raw: tuple[int, int] | None = None
        typed: dict[int, list[tuple[int, int, int]]] = {}  # field -> [(wire type, a, b)]
        ext_entries: list[tuple[int, int]] = []
        location_flag = 0
        for num, wt, a, b, ts in w.fields(start, end):
            if num == 1:
                _expect(w, wt, (_VARINT, _LEN), ts, "TensorProto.dims")
                w.int64s(wt, a, b, dims)
            elif num == 2:
                _expect(w, wt, _VARINT, ts, "TensorProto.data_type")
                dtype = _signed64(a)
            elif num == 3:
                self.fail(UnsupportedModelError, f"{ctx}/{what}: segmented tensors are not supported")
            elif num == 8:
                _expect(w, wt, _LEN, ts, "TensorProto.name")
                name = w.text(a, b)
            elif num == 9:
                _expect(w, wt, _LEN, ts, "TensorProto.raw_data")
                raw = (a, b)
            elif num in _TYPED_FIELD_NAMES:
                typed.setdefault(num, []).append((wt, a, b))
            elif num == 13:
                _expect(w, wt, _LEN, ts, "TensorProto.external_data")
                ext_entries.append((a, b))
            elif num == 14:
                _expect(w, wt, _VARINT, ts, "TensorProto.data_location")
                location_flag = a
        where = f"{ctx}/{what}" + (f" {name}" if name and what in ("initializer", "sparse_initializer") else "")

        def fail(cls: type[ModelError], detail: str) -> NoReturn:
            self.fail(cls, f"{where}: {detail}", name)

        np_dtype = _np_dtype(dtype, fail)
        for d in dims:
            if d < 0:
                fail(MalformedModelError, f"negative dimension {d} in shape {tuple(dims)}")
        numel = 1
        for d in dims:
            numel *= d
        if numel * max(np_dtype.itemsize, 1) > 1 << 62:
            fail(MalformedModelError, f"shape {tuple(dims)} is impossibly large")
        raw_n = _raw_nbytes(dtype, np_dtype, numel)
        final_n = numel * np_dtype.itemsize
        msg = ByteRange(self.path, start, end - start)
        if location_flag not in (0, 1):
            fail(MalformedModelError, f"data_location {location_flag} is neither DEFAULT nor EXTERNAL")

        if location_flag == 1:
            if raw is not None or typed:
                fail(MalformedModelError, "has external data and embedded data")
            if dtype == TensorProto.STRING:
                fail(MalformedModelError, "string tensors cannot use external data")
            ext, checksum = self.external(ext_entries, raw_n, where, name)
            direct = ext if dtype not in _SUBBYTE_BITS else None
            return _Parsed(name, dtype, np_dtype, tuple(dims), final_n, direct, _TensorSrc(msg, ext), checksum, True)

        if raw is not None:
            if typed:
                fail(MalformedModelError, f"has data in both raw_data and {_TYPED_FIELD_NAMES[next(iter(typed))]}")
            if dtype == TensorProto.STRING:
                fail(MalformedModelError, "string tensors cannot use raw_data")
            if raw[1] - raw[0] != raw_n:
                fail(MalformedModelError, f"raw_data holds {raw[1] - raw[0]} bytes but {_dtype_name(dtype)} x {tuple(dims)} needs {raw_n}")
            direct = ByteRange(self.path, raw[0], raw_n) if dtype not in _SUBBYTE_BITS else None
            return _Parsed(name, dtype, np_dtype, tuple(dims), final_n, direct, _TensorSrc(msg, None), None, False)

        if len(typed) > 1:
            fail(MalformedModelError, f"has data in several fields: {', '.join(_TYPED_FIELD_NAMES[f] for f in typed)}")
        if not typed:
            if numel:
                fail(MalformedModelError, f"has no data for its {numel} elements")
            return _Parsed(name, dtype, np_dtype, tuple(dims), 0, None, _TensorSrc(msg, None), None, False)
        fno, chunks = next(iter(typed.items()))
        want = _typed_field(dtype)
        if fno != want:
            fail(MalformedModelError, f"{_dtype_name(dtype)} data is in {_TYPED_FIELD_NAMES[fno]}; it belongs in {_TYPED_FIELD_NAMES[want]}")
        count, direct = self.typed_count(fno, chunks, dtype, where, name)
        per = 2 if dtype in (TensorProto.COMPLEX64, TensorProto.COMPLEX128) else 1
        need = raw_n if dtype in _SUBBYTE_BITS else numel * per
        if count != need:
            fail(MalformedModelError, f"{_TYPED_FIELD_NAMES[fno]} holds {count} values but {_dtype_name(dtype)} x {tuple(dims)} needs {need}")
        if dtype == TensorProto.STRING:
            final_n = sum(b - a for wt, a, b in chunks)
        return _Parsed(name, dtype, np_dtype, tuple(dims), final_n, direct, _TensorSrc(msg, None), None, False)

    def typed_count(self, fno: int, chunks: list[tuple[int, int, int]], dtype: int, where: str, name: str) -> tuple[int, ByteRange | None]:
        """Count the values of a typed field; return a direct range when its wire form is the memory layout.

        Packed ``float_data`` (fixed32) and ``double_data`` (fixed64) are the
        little-endian IEEE values back to back, exactly numpy's ``<f4``/``<f8``
        (and ``complex64``/``complex128``) layout, so one packed chunk is a
        direct range.  Varint fields (``int32_data``, ``int64_data``,
        ``uint64_data``) and unpacked or split fields are not.
        """
        w = self.w
        if fno in (_F_FLOAT, _F_DOUBLE):
            width, unpacked = (4, _I32) if fno == _F_FLOAT else (8, _I64)
            count = 0
            for wt, a, b in chunks:
                if wt == _LEN:
                    if (b - a) % width:
                        w.fail(a, f"{where}: packed {_TYPED_FIELD_NAMES[fno]} is not a multiple of {width} bytes")
                    count += (b - a) // width
                elif wt == unpacked:
                    count += 1
                else:
                    w.fail(a, f"{where}: {_TYPED_FIELD_NAMES[fno]} has wire type {_WIRE_NAMES.get(wt, wt)}")
            if len(chunks) == 1 and chunks[0][0] == _LEN and count:
                return count, ByteRange(self.path, chunks[0][1], count * width)
            return count, None
        if fno == _F_STRING:
            for wt, a, b in chunks:
                if wt != _LEN:
                    w.fail(a, f"{where}: string_data has wire type {_WIRE_NAMES.get(wt, wt)}")
            return len(chunks), None
        count = 0
        for wt, a, b in chunks:
            if wt == _LEN:
                count += w.count_varints(a, b)
            elif wt == _VARINT:
                count += 1
            else:
                w.fail(a, f"{where}: {_TYPED_FIELD_NAMES[fno]} has wire type {_WIRE_NAMES.get(wt, wt)}")
        return count, None

    def sparse(self, start: int, end: int, ctx: str, what: str) -> _Parsed:
        """Parse a ``SparseTensorProto``; it always converts (densified like onnxruntime does)."""
        w = self.w
        values = indices = None
        dims: list[int] = []
        for num, wt, a, b, ts in w.fields(start, end):
            if num == 1:
                _expect(w, wt, _LEN, ts, "SparseTensorProto.values")
                values = self.tensor(a, b, ctx, what + ".values")
            elif num == 2:
                _expect(w, wt, _LEN, ts, "SparseTensorProto.indices")
                indices = self.tensor(a, b, ctx, what + ".indices")
            elif num == 3:
                _expect(w, wt, (_VARINT, _LEN), ts, "SparseTensorProto.dims")
                w.int64s(wt, a, b, dims)
        name = values.name if values is not None else ""
        where = f"{ctx}/{what} {name}"
        if values is None or indices is None:
            self.fail(MalformedModelError, f"{where}: sparse tensor without values or indices", name)
        if values.dtype == TensorProto.STRING or values.dtype in _SUBBYTE_BITS:
            self.fail(UnsupportedModelError, f"{where}: sparse {_dtype_name(values.dtype)} tensors are not supported", name)
        if indices.dtype != TensorProto.INT64:
            self.fail(MalformedModelError, f"{where}: sparse indices must be INT64, not {_dtype_name(indices.dtype)}", name)
        if any(d < 0 for d in dims):
            self.fail(MalformedModelError, f"{where}: negative dimension in shape {tuple(dims)}", name)
        if len(values.dims) != 1:
            self.fail(MalformedModelError, f"{where}: sparse values must be 1-D, have shape {values.dims}", name)
        numel = 1
        for d in dims:
            numel *= d
        if numel * values.np_dtype.itemsize > 1 << 62:
            self.fail(MalformedModelError, f"{where}: shape {tuple(dims)} is impossibly large", name)
        sparse = (ByteRange(self.path, start, end - start), values.src, indices.src)
        return _Parsed(name, values.dtype, values.np_dtype, tuple(dims), numel * values.np_dtype.itemsize, None, values.src, None, values.has_ext or indices.has_ext, sparse=sparse)

    def external(self, entries: list[tuple[int, int]], raw_n: int, where: str, name: str) -> tuple[ByteRange, str | None]:
        """Validate external-data keys, open the file safely, check the range."""
        w = self.w
        kv: dict[str, str] = {}
        for a, b in entries:
            key = value = None
            for num, wt, x, y, ts in w.fields(a, b):
                if num == 1 and wt == _LEN:
                    key = w.text(x, y)
                elif num == 2 and wt == _LEN:
                    value = w.text(x, y)
            if key is None:
                w.fail(a, f"{where}: external_data entry without a key")
            if key not in _EXT_KEYS:
                raise ExternalDataError(self.path, f"{where}: unknown external data key {key[:100]!r} (allowed: {', '.join(sorted(_EXT_KEYS))})", name or None)
            if key in kv:
                raise ExternalDataError(self.path, f"{where}: external data key {key!r} given twice", name or None)
            kv[key] = value or ""

        def fail(detail: str) -> NoReturn:
            raise ExternalDataError(self.path, f"{where}: {detail}", name or None)

        loc = _check_location(kv.get("location", ""), fail)
        offset = self._ext_int(kv, "offset", fail)
        length = self._ext_int(kv, "length", fail)
        full = os.path.join(self.model_dir, loc)
        fd = self.ext_fds.get(full)
        if fd is None:
            fd = _open_beneath(self.dir_fd, loc, 0, fail)
            self.ext_fds[full] = fd
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                fail(f"external data file {loc!r} is not a regular file")
            if st.st_nlink > 1:
                fail(f"external data file {loc!r} has {st.st_nlink} hard links; refused (a hard link can alias a file outside the model's directory)")
            if full != self.path:
                self.sources.append(_identity(full, st))
        size = os.fstat(fd).st_size

        def fail_at(detail: str) -> NoReturn:
            raise ExternalDataError(full, f"{where}: {detail}", name or None)

        off = offset or 0
        if off > size:
            fail_at(f"offset {off} is past the end of the file ({size} bytes)")
        if length is None:
            length = size - off
        if off + length > size:
            fail_at(f"offset {off} + length {length} is past the end of the file ({size} bytes)")
        if length != raw_n:
            fail_at(f"length {length} does not match dtype x shape = {raw_n} bytes")
        return ByteRange(full, off, length), kv.get("checksum")

    @staticmethod
    def _ext_int(kv: dict[str, str], key: str, fail: Callable[[str], NoReturn]) -> int | None:
        if key not in kv:
            return None
        if not _DIGITS.match(kv[key]):
            fail(f"external data {key} {kv[key][:40]!r} is not a non-negative integer")
        return int(kv[key])

    # -- dispositions -----------------------------------------------------

    @staticmethod
    def small(p: _Parsed) -> bool:
        return p.nbytes <= INLINE_LIMIT or p.dtype == TensorProto.STRING

    def _ref(self, p: _Parsed, where: str, inline: bool, name: str) -> int:
        if p.sparse is not None:
            recipe, rng = _Recipe("sparse", p.sparse[0], (p.sparse[1], p.sparse[2])), None
        elif p.range is not None:
            recipe, rng = None, p.range
        elif p.attr:
            recipe, rng = _Recipe("attr", p.src.msg, (), p.attr), None
        else:
            recipe, rng = _Recipe("tensor", p.src.msg, (p.src,)), None
        self.refs.append(
            dict(name=name, dtype=p.dtype, np_dtype=p.np_dtype, shape=p.dims, nbytes=p.nbytes, where=where, range=rng, inline=inline, checksum=p.checksum, _recipe=recipe)
        )
        return len(self.refs) - 1

    def _array_now(self, index: int) -> np.ndarray:
        ref = TensorRef(**self.refs[index])
        with _Reader(self._all_fds(), None, owned=False) as reader:
            return _materialize(ref, reader)

    def _all_fds(self) -> dict[str, int]:
        fds = dict(self.ext_fds)
        fds[self.path] = self.model_fd
        return fds

    def add_main(self, p: _Parsed, where: str) -> bytes:
        """A main-graph initializer: a stripped placeholder, or inline data if small."""
        if p.name in self.main_names:
            self.fail(MalformedModelError, f"{where}: duplicate initializer name", p.name)
        self.main_names.add(p.name)
        inline = self.small(p)
        index = self._ref(p, where, inline, p.name)
        if inline:
            return _inline_proto(p.name, p.dtype, self._array_now(index))
        return _placeholder(p.name, p.dtype, p.dims, _raw_nbytes(p.dtype, p.np_dtype, _numel(p.dims)), 0)

    def add_hoisted(self, p: _Parsed, where: str, orig: str, desired: str) -> bytes:
        """A ``Constant`` or subgraph weight: the graph edit makes it an initializer with a unique name."""
        index = self._ref(p, where, False, desired)
        seq = len(self.pending) + 1
        self.pending[seq] = _Pending(orig, desired, index)
        # Named as in the file until the edit moves it, so that the names in
        # use (which hoisted names must avoid) are the file's.
        return _placeholder(orig, p.dtype, p.dims, _raw_nbytes(p.dtype, p.np_dtype, _numel(p.dims)), seq)

    def keep(self, p: _Parsed, where: str, a: int, b: int) -> bytes:
        """Leave a tensor where it is (embedded); its external data, if any, is read in."""
        self.embedded.append(EmbeddedTensor(where, p.dtype, p.dims, p.nbytes))
        if not p.has_ext:
            return self.w.bytes_(a, b)
        t = TensorProto.FromString(self.w.bytes_(a, b))
        del t.external_data[:]
        t.data_location = TensorProto.DEFAULT
        with _Reader(self._all_fds(), None, owned=False) as reader:
            t.raw_data = reader.read(p.src.ext)  # type: ignore[arg-type]
        return t.SerializeToString()

    def keep_sparse(self, p: _Parsed, where: str, a: int, b: int) -> bytes:
        self.embedded.append(EmbeddedTensor(where, p.dtype, p.dims, p.nbytes))
        if not p.has_ext:
            return self.w.bytes_(a, b)
        st = SparseTensorProto.FromString(self.w.bytes_(a, b))
        assert p.sparse is not None
        _msg, vsrc, isrc = p.sparse
        with _Reader(self._all_fds(), None, owned=False) as reader:
            for t, src in ((st.values, vsrc), (st.indices, isrc)):
                if src.ext is not None:
                    del t.external_data[:]
                    t.data_location = TensorProto.DEFAULT
                    t.raw_data = reader.read(src.ext)
        return st.SerializeToString()


def _numel(dims: tuple[int, ...]) -> int:
    n = 1
    for d in dims:
        n *= d
    return n


def _placeholder(name: str, dtype: int, dims: tuple[int, ...], raw_n: int, seq: int) -> bytes:
    """A stripped initializer: dims, type and an external reference no one opens."""
    t = TensorProto(name=name, data_type=dtype, dims=dims, data_location=TensorProto.EXTERNAL)
    for k, v in (("location", STRIPPED_LOCATION), ("offset", str(seq)), ("length", str(raw_n))):
        e = t.external_data.add()
        e.key, e.value = k, v
    return t.SerializeToString()


def _inline_proto(name: str, dtype: int, arr: np.ndarray) -> bytes:
    """A small initializer with its data embedded as ``raw_data`` (``string_data`` for strings)."""
    t = TensorProto(name=name, data_type=dtype, dims=arr.shape)
    if dtype == TensorProto.STRING:
        t.string_data.extend(s if isinstance(s, bytes) else str(s).encode() for s in arr.reshape(-1))
    elif dtype in _SUBBYTE_BITS:
        packed = numpy_helper.from_array(arr)
        t.raw_data = packed.raw_data
    else:
        t.raw_data = np.ascontiguousarray(arr).tobytes()
    return t.SerializeToString()


# ---------------------------------------------------------------------------
# Graph edit: Constant nodes become initializers, subgraph weights move up
# ---------------------------------------------------------------------------


def _subgraphs(node: onnx.NodeProto) -> Iterator[onnx.GraphProto]:
    for attr in node.attribute:
        if attr.HasField("g"):
            yield attr.g
        yield from attr.graphs


def _all_names(g: onnx.GraphProto, out: set[str]) -> set[str]:
    """Every value name used anywhere in `g` and its subgraphs."""
    for seq in (g.input, g.output, g.value_info):
        out.update(v.name for v in seq)
    out.update(t.name for t in g.initializer)
    out.update(s.values.name for s in g.sparse_initializer)
    for n in g.node:
        out.update(n.input)
        out.update(n.output)
        for sub in _subgraphs(n):
            _all_names(sub, out)
    return out


def _defines(g: onnx.GraphProto, name: str) -> bool:
    """Whether `g` defines `name` itself (and so shadows an outer value of that name)."""
    if any(v.name == name for v in g.input) or any(t.name == name for t in g.initializer):
        return True
    if any(s.values.name == name for s in g.sparse_initializer):
        return True
    return any(name in n.output for n in g.node)


def _redirect(g: onnx.GraphProto, old: str, new: str) -> None:
    """Make `g` read value `new` wherever it read its value `old`.

    Nested subgraphs that define `old` themselves are left alone (theirs
    shadows ours).  When `old` is an output of `g`, an ``Identity`` keeps that
    output.
    """
    if any(o.name == old for o in g.output):
        nodes = [helper.make_node("Identity", [new], [old])] + list(g.node)
        del g.node[:]
        g.node.extend(nodes)
        return
    for n in g.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
        for sub in _subgraphs(n):
            if not _defines(sub, old):
                _redirect(sub, old, new)
    keep = [v for v in g.value_info if v.name != old]
    if len(keep) != len(g.value_info):
        del g.value_info[:]
        g.value_info.extend(keep)


def _stripped_seq(t: TensorProto) -> int:
    for e in t.external_data:
        if e.key == "offset":
            return int(e.value)
    return 0


def _constant_placeholder(n: onnx.NodeProto) -> TensorProto | None:
    if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and len(n.attribute) == 1:
        a = n.attribute[0]
        if a.name == "value" and a.HasField("t") and is_stripped(a.t) and _stripped_seq(a.t):
            return a.t
    return None


def _count_defs(g: onnx.GraphProto, c: dict[str, int]) -> dict[str, int]:
    """Count how many times each name is defined in `g` and its subgraphs."""
    names = [v.name for v in g.input] + [t.name for t in g.initializer] + [s.values.name for s in g.sparse_initializer]
    for n in g.node:
        names.extend(o for o in n.output if o)
        for sub in _subgraphs(n):
            _count_defs(sub, c)
    for name in names:
        c[name] = c.get(name, 0) + 1
    return c


class _Editor:
    """Makes every stripped placeholder an initializer of its own graph, under a model-wide unique name.

    A stripped ``Constant`` becomes an initializer of the graph it is in
    (onnxruntime does the same at load time).  Subgraph weights stay in their
    subgraph -- so that onnxruntime optimizes and prepacks them exactly as it
    does from the file (hoisting them to the main graph changed which weights
    it prepacks inside a Loop, and so the outputs with prepacking on) -- but a
    name that is defined more than once in the model (shadowing) is renamed
    to ``"<node>.<attribute>/<name>"`` and its uses in that subgraph redirected,
    because ``SessionOptions.add_initializer`` knows initializers by name only.
    """

    def __init__(self, model: ModelProto, pending: dict[int, _Pending]) -> None:
        self.main = model.graph
        self.pending = pending
        self.taken = _all_names(self.main, set())
        self.defs = _count_defs(self.main, {})
        self.claimed = {t.name for t in self.main.initializer}  # main-graph initializers keep their names
        self.final: dict[int, str] = {}  # seq -> final name

    def name_for(self, orig: str, desired: str) -> str:
        if orig not in self.claimed and self.defs.get(orig, 0) == 1:
            self.claimed.add(orig)
            return orig
        name, k = desired, 1
        while name in self.taken or name in self.claimed:
            k += 1
            name = f"{desired}#{k}"
        self.taken.add(name)
        self.claimed.add(name)
        return name

    def run(self) -> None:
        self.localize(self.main, main=True)

    def localize(self, g: onnx.GraphProto, main: bool) -> None:
        renames: list[tuple[str, str]] = []
        for t in g.initializer:
            seq = _stripped_seq(t) if is_stripped(t) else 0
            if seq and not main:
                orig = self.pending[seq].parsed_name
                t.name = self.final[seq] = self.name_for(orig, self.pending[seq].desired)
                if t.name != orig:
                    renames.append((orig, t.name))
        keep_nodes = []
        for n in g.node:
            t = _constant_placeholder(n)
            if t is None:
                keep_nodes.append(n)
                continue
            seq, orig = _stripped_seq(t), n.output[0]
            if main:
                self.claimed.add(orig)
                new = orig
            else:
                new = self.name_for(orig, self.pending[seq].desired)
            init = g.initializer.add()
            init.CopyFrom(t)
            init.name = self.final[seq] = new
            if new != orig:
                renames.append((orig, new))
        if len(keep_nodes) != len(g.node):
            del g.node[:]
            g.node.extend(keep_nodes)
        for old, new in renames:
            _redirect(g, old, new)
        for n in g.node:
            for sub in _subgraphs(n):
                self.localize(sub, main=False)


def _all_initializers(g: onnx.GraphProto) -> Iterator[TensorProto]:
    """The initializers of `g` and of all its subgraphs."""
    yield from g.initializer
    for n in g.node:
        for sub in _subgraphs(n):
            yield from _all_initializers(sub)


def _finish_placeholders(model: ModelProto) -> None:
    """Reset the sequence numbers that the edit used back to offset 0."""
    for t in _all_initializers(model.graph):
        if is_stripped(t):
            for e in t.external_data:
                if e.key == "offset":
                    e.value = "0"


# ---------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------


def scan(path: str | os.PathLike[str]) -> ScannedModel:
    """Locate every weight of an ONNX model without materialising it.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.onnx`` file.  External-data locations are relative to its
        directory.

    Returns
    -------
    ScannedModel
        The weights (:class:`TensorRef`), the identity of every file read, and
        the weight-stripped graph.

    Raises
    ------
    MalformedModelError
        Not a readable ONNX model: truncated, bad protobuf, sizes that
        disagree with dtype x shape, negative dimensions.
    ExternalDataError
        An unsafe or unusable external-data reference.
    UnsupportedModelError
        A valid model using something this loader does not handle.
    """
    if sys.byteorder != "little":  # pragma: no cover - every Linux target we build for is little-endian
        raise UnsupportedModelError(str(path), "pyaccel needs a little-endian host")
    apath = os.path.abspath(os.fspath(path))
    model_dir = os.path.dirname(apath)
    try:
        fd = os.open(apath, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise MalformedModelError(apath, f"cannot open the model: {os.strerror(e.errno or 0)}") from e
    dir_fd = -1
    scan_: _Scan | None = None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise MalformedModelError(apath, "not a regular file")
        if st.st_size == 0:
            raise MalformedModelError(apath, "empty file")
        dir_fd = os.open(model_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        # A small file is read whole (within the loader's staging budget);
        # a big one through pread blocks, touching only field headers.
        if st.st_size <= _READ_WHOLE:
            data = os.pread(fd, st.st_size, 0)
            if len(data) != st.st_size:
                raise MalformedModelError(apath, "the file shrank while being read; was it truncated by "
                                                 "another process during the scan?")
            w = _Wire(data, apath)
        else:
            w = _Wire(_PreadBuf(fd, st.st_size, apath), apath)
        try:
            scan_ = _Scan(apath, w, fd, dir_fd, model_dir, st)
            skeleton, ir_version = scan_.model()
        finally:
            w.mv.release()
        return _finish(scan_, skeleton, ir_version, apath, model_dir)
    finally:
        if scan_ is not None:
            for efd in scan_.ext_fds.values():
                os.close(efd)
        if dir_fd >= 0:
            os.close(dir_fd)
        os.close(fd)


def _finish(s: _Scan, skeleton: bytes, ir_version: int, path: str, model_dir: str) -> ScannedModel:
    """Apply the graph edit, check the result parses, build the dataclasses."""
    try:
        model = ModelProto.FromString(skeleton)
    except DecodeError as e:
        raise MalformedModelError(path, f"the model's protobuf does not decode: {e}") from e
    if s.pending:
        ed = _Editor(model, s.pending)
        ed.run()
        for seq, pend in s.pending.items():
            if seq not in ed.final:  # pragma: no cover - a placeholder the edit did not reach
                raise MalformedModelError(path, f"internal error: {s.refs[pend.index]['where']} was not hoisted")
            s.refs[pend.index]["name"] = ed.final[seq]
        _finish_placeholders(model)
        skeleton = model.SerializeToString()
    names = [r["name"] for r in s.refs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise MalformedModelError(path, f"more than one initializer or Constant defines {dup[:5]}", tensor=dup[0])
    origin = _Origin(path, model_dir, tuple(s.sources))
    tensors = [TensorRef(**r, _origin=origin) for r in s.refs]
    return ScannedModel(path, model_dir, ir_version, tensors, s.embedded, list(s.sources), skeleton)
