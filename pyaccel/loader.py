"""``load_model``: an ONNX model's weights in a pool, zero-copy, shared between processes.

The first ``load_model(path)`` on a machine scans the model's protobuf wire format
(never materialising the weights in Python), plans the layout, and streams every
weight into the pool -- O_DIRECT where the file is not cached and offsets
allow, buffered ``pread`` straight into the pool where it is, checksummed on the
way -- then commits the model.  Every later call, in any process, finds the model
in the pool, checks that its source files are unchanged (size, mtime, inode,
device), takes a lease and returns at once: no byte of the file is read.

``Model.weights`` are read-only numpy arrays viewing the pool, and
``Model.session()`` builds an onnxruntime session that serves every weight from
the pool without copying it (see :mod:`pyaccel.ortsession`).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import struct
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from . import onnxfile
from .errors import PoolCorruptError, PyaccelError
from .pool import Pool, TensorWrite, open_pool

__all__ = ["load_model", "Model", "ModelInfo"]

_META_MAGIC = b"PAMETA2\0"


@dataclass(frozen=True)
class ModelInfo:
    """Facts about a loaded model.

    Attributes
    ----------
    name : str
        Its name in the pool (by default the source file's real path).
    source : str
        The .onnx file it came from.
    nbytes : int
        Bytes of weights.
    n_tensors : int
        Weights in the pool.
    streamed : bool
        True when this call streamed the weights from the file, False when it
        attached to a copy already in the pool.
    seconds : float
        How long that took.
    pool : str
        The pool's path.
    model_id : int
        The model's id in the pool.
    direct_bytes : int
        Bytes read with O_DIRECT (0 when attached).
    """

    name: str
    source: str
    nbytes: int
    n_tensors: int
    streamed: bool
    seconds: float
    pool: str
    model_id: int
    direct_bytes: int = 0


@functools.lru_cache(maxsize=None)
def _dtype(onnx_type: int) -> np.dtype:
    from onnx import helper

    return np.dtype(helper.tensor_dtype_to_np_dtype(onnx_type))


class _Weights(Mapping):
    """name -> read-only numpy array over the pool, made on first access.

    The tensor table itself is fetched from the catalog on first use, so that
    attaching to a model of 10,000 tensors does not pay for 10,000 records.
    """

    def __init__(self, pool: Pool, lease: Any, fetch: Callable[[], Sequence[tuple]], count: int) -> None:
        self._pool = pool
        self._lease = lease
        self._fetch = fetch
        self._count = count
        self._table: dict[str, tuple] | None = None
        self._cache: dict[str, np.ndarray] = {}

    @property
    def _index(self) -> dict[str, tuple]:
        if self._table is None:
            self._table = {t[0]: t for t in self._fetch()}
        return self._table

    def __getitem__(self, name: str) -> np.ndarray:
        a = self._cache.get(name)
        if a is None:
            _, dtype, shape, offset, _nbytes = self._index[name][:5]
            a = self._pool.array(self._lease, offset, _dtype(dtype), shape)
            self._cache[name] = a
        return a

    def __iter__(self) -> Iterator[str]:
        return iter(self._index)

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"<pyaccel weights: {len(self)} tensors>"


class Model:
    """A model whose weights live in a pool.  Made by :func:`load_model`.

    The model holds a lease in the pool: it cannot be evicted while the
    ``Model``, one of its arrays or one of its sessions is alive.
    :meth:`close` (or leaving a ``with`` block) drops the model's own
    references; the lease goes when the last array or session goes too.
    """

    def __init__(self, pool: Pool, lease: Any, model_id: int, meta: dict, graph: memoryview,
                 ranges: memoryview, info: ModelInfo) -> None:
        self._pool = pool
        self._lease = lease
        self._meta = meta
        self._graph_view: memoryview | None = graph  # views of the pool, copied on first use
        self._graph_bytes_: bytes | None = None
        self._ranges = ranges
        self._weights: _Weights | None = _Weights(pool, lease, lambda: pool._drv.tensors(model_id), info.n_tensors)
        self._graph: Any = None
        self._session: Any = None
        self.info = info

    # -- weights and graph --------------------------------------------------

    def _check_open(self) -> None:
        if self._weights is None:
            raise ValueError(f"model {self.info.name!r} is closed")

    @property
    def weights(self) -> Mapping[str, np.ndarray]:
        """name -> read-only numpy array viewing the pool (zero copy)."""
        self._check_open()
        assert self._weights is not None
        return self._weights

    @property
    def graph(self) -> Any:
        """The ``onnx.ModelProto`` without the weight bytes (parsed on first use)."""
        self._check_open()
        if self._graph is None:
            import onnx

            self._graph = onnx.load_from_string(self.graph_bytes)
        return self._graph

    @property
    def graph_bytes(self) -> bytes:
        """The serialized weight-less ModelProto."""
        if self._graph_bytes_ is None:
            self._check_open()
            assert self._graph_view is not None
            self._graph_bytes_ = bytes(self._graph_view)
        return self._graph_bytes_

    # -- inference ------------------------------------------------------------

    def session(self, sess_options: Any = None, providers: Sequence[Any] | None = None,
                prepack: bool = False) -> Any:
        """An ``onnxruntime.InferenceSession`` whose weights are served from the pool.

        Parameters
        ----------
        sess_options : onnxruntime.SessionOptions, optional
            Options for the session.  They are modified (the pool's arrays are
            added as initializers), so give a fresh object per session.
        providers : sequence, optional
            onnxruntime execution providers.
        prepack : bool
            Let onnxruntime prepack MatMul/Conv weights.  Off by default: then
            every weight is the pool's memory, shared by every process, and
            the session is ready in milliseconds.  On: onnxruntime makes a
            private, repacked copy of those weights in each process (about the
            model's size, and seconds for a 1 GiB model), which runs batches
            above 1 faster (measured on the 1 GiB benchmark model: batch 8 in
            about 0.4x the time; batch 1 the same).

        Returns
        -------
        onnxruntime.InferenceSession
            Outputs are bit-identical to onnxruntime loading the original file
            with the same options.
        """
        from .ortsession import make_session

        self._check_open()
        # where a weight's pool memory is no regular file (device-DAX), the
        # source file's own bytes serve onnxruntime's optimizers instead
        backing = self._unchanged_ranges()
        return make_session(self.graph_bytes, self.weights, sess_options, providers, prepack, backing)

    def _unchanged_ranges(self) -> dict[str, tuple[str, int]]:
        """Each weight's range in its source, for the sources still as they were when streamed.

        onnxruntime's optimizers read these bytes instead of the pool's, so a
        file changed since (a held, superseded version) must not be offered:
        its weights are then embedded in the graph (a copy) instead.
        """
        ranges = json.loads(bytes(self._ranges) or b"{}")
        if not ranges:
            return {}
        try:
            sources = self._pool._drv.sources(self.info.model_id)
        except OSError:
            return {}
        good = {src[0] for src in sources} - set(_changed_sources(sources)) - _changed_ctimes(self._meta)
        return {k: (v[0], v[1]) for k, v in ranges.items() if v[0] in good}

    def run(self, output_names: Sequence[str] | None, input_feed: Mapping[str, Any], **kw: Any) -> list[Any]:
        """``session.run`` on a session made (once) with the default options."""
        if self._session is None:
            self._session = self.session()
        return self._session.run(output_names, input_feed, **kw)

    # -- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Drop this object's references to the pool (idempotent)."""
        self._weights = None
        self._session = None
        self._graph = None
        self._graph_view = None  # views of the pool hold the lease too
        self._ranges = memoryview(b"")
        self._lease = None

    @property
    def closed(self) -> bool:
        return self._weights is None

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        i = self.info
        how = "streamed" if i.streamed else "attached"
        return (f"<pyaccel.Model {i.name!r}: {i.n_tensors} tensors, {i.nbytes} bytes, "
                f"{how} in {i.seconds * 1e3:.1f} ms>")


# -- the meta blob: what the loader keeps beside the tensors -------------------


# The blob: magic, three lengths, then a small JSON header, the weight-less
# graph, and a JSON map of each weight's byte range in the source (read only
# when a session needs it, so that attaching stays cheap for 10k tensors).


def _pack_meta(meta: dict, graph_bytes: bytes, ranges: dict) -> bytes:
    js = json.dumps(meta, separators=(",", ":")).encode()
    rs = json.dumps(ranges, separators=(",", ":")).encode()
    return _META_MAGIC + struct.pack("<QQQ", len(js), len(graph_bytes), len(rs)) + js + graph_bytes + rs


def _unpack_meta(pool: Pool, blob: memoryview, name: str) -> tuple[dict, memoryview, memoryview]:
    """The JSON header, and views (not copies) of the graph and the ranges."""
    if len(blob) < 32 or bytes(blob[:8]) != _META_MAGIC:
        raise PoolCorruptError(pool.path, f"model {name!r}: its graph record is not pyaccel's")
    nj, ng, nr = struct.unpack("<QQQ", blob[8:32])
    if 32 + nj + ng + nr != len(blob):
        raise PoolCorruptError(pool.path, f"model {name!r}: its graph record is truncated")
    meta = json.loads(bytes(blob[32:32 + nj]))
    return meta, blob[32 + nj:32 + nj + ng], blob[32 + nj + ng:]


def _changed_sources(sources: Sequence[tuple[str, int, int, int, int]]) -> list[str]:
    """The paths among ``sources`` whose size, mtime, inode or device differ now (or that are gone)."""
    out = []
    for path, size, mtime_ns, ino, dev in sources:
        try:
            st = os.stat(path)
        except OSError:
            out.append(path)
            continue
        if (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev) != (size, mtime_ns, ino, dev):
            out.append(path)
    return out


def _source_unchanged(sources: Sequence[tuple[str, int, int, int, int]]) -> bool:
    for path, size, mtime_ns, ino, dev in sources:
        try:
            st = os.stat(path)
        except OSError:
            return False
        if (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev) != (size, mtime_ns, ino, dev):
            return False
    return bool(sources)


def _ctimes(sources: Sequence[onnxfile.SourceFile]) -> list[list[Any]]:
    """``[path, st_ctime_ns]`` of each source that is still as the scan saw it.

    The pool's source records (size, mtime, inode, device) miss a file
    rewritten in place at the same size whose mtime was then set back (``cp
    -p``, ``rsync --inplace -t``, a restore, reproducible-build timestamps).
    The kernel sets ctime on every change and no call can set it back, so the
    loader keeps it in its meta record and compares it on attach.
    """
    out = []
    for s in sources:
        try:
            st = os.stat(s.path)
        except OSError:
            continue
        if (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev) == (s.size, s.mtime_ns, s.ino, s.dev):
            out.append([s.path, st.st_ctime_ns])
    return out


def _changed_ctimes(meta: dict) -> set[str]:
    """The sources whose ctime differs from the one recorded when the model was streamed."""
    out = set()
    for path, ctime_ns in meta.get("ctime_ns", ()):  # absent in records of older loaders
        try:
            if os.stat(path).st_ctime_ns != ctime_ns:
                out.add(path)
        except OSError:
            out.add(path)
    return out


def _ctimes_unchanged(meta: dict) -> bool:
    return not _changed_ctimes(meta)


# -- attach and stream ---------------------------------------------------------


def _attach(pool: Pool, name: str, source: str, t0: float) -> Model | None:
    """The model from the pool if an unchanged copy is there, else None."""
    drv = pool._drv
    pool.refresh()
    for _ in range(3):
        try:
            rec = drv.model_find(name)
        except FileNotFoundError:
            return _wait_for_loader(pool, name, source, t0)
        if not _source_unchanged(drv.sources(rec["id"])):
            return None  # changed at the source: stream a new version
        try:
            lease = drv.lease(rec["id"])
        except FileNotFoundError:
            pool.refresh()  # evicted meanwhile: look again
            continue
        try:
            model = _model_from_pool(pool, lease, rec["id"], name, source, t0)
        except PoolCorruptError:
            # a graph record this version cannot read (an older pyaccel's):
            # stream the model again; the new version supersedes that one
            return None
        return _fresh(model)
    return None


def _fresh(model: Model) -> Model | None:
    """The model, or None (lease dropped) when a source's ctime says it changed since it was streamed."""
    if _ctimes_unchanged(model._meta):
        return model
    model.close()
    return None


def _wait_for_loader(pool: Pool, name: str, source: str, t0: float) -> Model | None:
    """Another process is streaming this model: wait for it, then attach."""
    for m in pool._drv.models():
        if m["name"] == name and m["state"] == "loading":
            try:
                lease = pool._drv.lease(m["id"], True)
            except (FileNotFoundError, BlockingIOError):
                return None  # its loader failed or died: load it ourselves
            if not _source_unchanged(pool._drv.sources(m["id"])):
                return None
            return _fresh(_model_from_pool(pool, lease, m["id"], name, source, t0))
    return None


def _model_from_pool(pool: Pool, lease: Any, model_id: int, name: str, source: str, t0: float,
                     streamed: bool = False, direct_bytes: int = 0) -> Model:
    drv = pool._drv
    rec = drv.model_get(model_id)
    blob = memoryview(lease)[rec["meta_offset"]:rec["meta_offset"] + rec["meta_length"]]
    meta, graph, ranges = _unpack_meta(pool, blob, name)
    info = ModelInfo(name=name, source=source, nbytes=rec["bytes"], n_tensors=rec["n_tensors"],
                     streamed=streamed, seconds=time.perf_counter() - t0, pool=pool.path,
                     model_id=model_id, direct_bytes=direct_bytes)
    return Model(pool, lease, model_id, meta, graph, ranges, info)


def _progress_bar(enabled: bool | None, total: int, name: str) -> tuple[Callable[[int, int], None] | None, Any]:
    if enabled is False or (enabled is None and not sys.stderr.isatty()):
        return None, None
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, delay=0.0 if enabled else 0.5,
               desc=os.path.basename(name), leave=False, file=sys.stderr)

    def update(done: int, _total: int) -> None:
        bar.update(done - bar.n)

    return update, bar


def _no_progress(_done: int, _total: int) -> None:
    pass


def _bytes_of(t: onnxfile.TensorRef) -> Callable[[], memoryview]:
    """A ``produce`` callable for a converted tensor: its final bytes, as a flat uint8 view."""

    def produce() -> memoryview:
        a = np.ascontiguousarray(t.convert())
        # ml_dtypes (bfloat16, float8 ...) do not export the buffer protocol: view the bytes
        return memoryview(a.reshape(-1).view(np.uint8))

    return produce


def _stream(pool: Pool, path: str, name: str, partition: str | int, progress: bool | None,
            t0: float) -> Model:
    """Scan, plan and stream the model into the pool; commit; attach."""
    scan = onnxfile.scan(path)
    refs = [t for t in scan.tensors if t.np_dtype != np.dtype(object)]  # strings stay in the graph
    fds: dict[str, int] = {}
    writes: list[TensorWrite] = []
    first_of: dict[tuple[str, int, int], int] = {}
    try:
        for i, t in enumerate(refs):
            shape = tuple(int(d) for d in t.shape)
            if t.range is not None:
                key = (t.range.path, t.range.offset, t.range.length)
                if key in first_of:  # the very same bytes: store once
                    writes.append(TensorWrite(t.name, t.dtype, shape, t.nbytes, same_as=first_of[key]))
                    continue
                first_of[key] = i
                fd = fds.get(t.range.path)
                if fd is None:
                    fd = fds[t.range.path] = onnxfile.open_source(scan, t.range.path)
                writes.append(TensorWrite(t.name, t.dtype, shape, t.nbytes, fd=fd, offset=t.range.offset))
            else:
                writes.append(TensorWrite(t.name, t.dtype, shape, t.nbytes, produce=_bytes_of(t)))
        meta = {"format": 1, "source": scan.path, "ir_version": scan.ir_version, "ctime_ns": _ctimes(scan.sources)}
        ranges = {t.name: [t.range.path, t.range.offset] for t in refs if t.range is not None}
        blob = _pack_meta(meta, scan.graph_bytes, ranges)
        sources = [tuple(s) for s in scan.sources]
        stats: dict[str, int] = {}
        update, bar = _progress_bar(progress, sum(t.nbytes for t in refs), path)
        try:
            # Always a callback, even without a bar: Pool.write_model then copies in a worker
            # thread and this thread stays free to take Ctrl-C (without one it copies on this
            # thread without the GIL, and KeyboardInterrupt waits for the whole model).
            mid, lease = pool.write_model(name, writes, sources=sources, meta=blob, partition=partition,
                                          progress=update or _no_progress, stats=stats)
        except OSError as e:
            changed = [] if isinstance(e, PyaccelError) else _changed_sources(sources)
            if not changed:
                raise
            raise onnxfile.StaleSourceError(
                changed[0], f"changed while it was being loaded ({e.strerror or e}); nothing was "
                "committed to the pool: load it again") from e
        finally:
            if bar is not None:
                bar.close()
    finally:
        for fd in fds.values():
            os.close(fd)
    return _model_from_pool(pool, lease, mid, name, scan.path, t0, streamed=True,
                            direct_bytes=stats.get("direct_bytes", 0))


@contextlib.contextmanager
def _loader_lock(source: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the model file while deciding to stream it and streaming.

    Two processes that both find no copy in the pool would otherwise both
    stream the model (the window is the whole scan, before the pool records a
    load); with the lock the second one waits and then attaches to the first
    one's copy.  The kernel drops the lock if the holder dies.  A file that
    cannot be opened here is loaded without the lock (the scan reports why).
    """
    try:
        fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def load_model(path: str | os.PathLike[str], pool: Pool | str | os.PathLike[str] | None = None, *,
               progress: bool | None = None, verify: bool = False, name: str | None = None,
               partition: str | int = 0) -> Model:
    """Load an ONNX model's weights into a pool, or attach to them if already there.

    Parameters
    ----------
    path : path-like
        The ``.onnx`` file (its external data files beside it, as ONNX says).
    pool : Pool or path-like, optional
        The pool (an open :class:`Pool`, or a pool path to open).  None: the
        default pool, created on first use (see :func:`pyaccel.open_pool`).
    progress : bool, optional
        Show a progress bar while streaming.  None: only when standard error is
        a terminal and the load takes more than half a second.
    verify : bool
        Re-check every tensor's CRC32C in the pool before returning.
    name : str, optional
        The model's name in the pool; by default the file's real path.
    partition : str or int
        The pool partition to load into (when streaming).

    Returns
    -------
    Model

    Raises
    ------
    MalformedModelError, ExternalDataError, UnsupportedModelError
        The file is not a usable ONNX model; the pool is left as it was.
    PoolFullError
        The weights do not fit, even after evicting models no process uses.
    PoolCorruptError
        ``verify`` found a tensor whose bytes do not match their checksum.
    """
    t0 = time.perf_counter()
    source = os.path.realpath(os.fspath(path))
    if not os.path.exists(source):
        raise FileNotFoundError(2, f"No such file or directory: {os.fspath(path)}")
    if pool is None or not isinstance(pool, Pool):
        pool = open_pool(pool, create=pool is None)
    key = name or source
    model = _attach(pool, key, source, t0)
    if model is None:
        with _loader_lock(source):
            # another process may have streamed it while this one waited for the lock
            model = _attach(pool, key, source, t0)
            if model is None:
                model = _stream(pool, source, key, partition, progress, t0)
    if verify:
        bad = pool.verify(model.info.model_id)
        if bad:
            raise PoolCorruptError(pool.path, "; ".join(bad))
    return model
