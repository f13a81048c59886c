"""Weight pools: open, inspect, evict, check -- and the write path loaders use.

A pool is a mapped backing store (device-DAX, hugetlbfs, fsdax, a memory-backed
block device, or a file on tmpfs) holding models' tensors.  It outlives the
processes that use it; many processes read it at once with plain loads; none of
them ever sees stale, torn or half-written weights.  The format, the commit
protocol and the locks are the C core's (``driver/src/pool.h``); this module is
the Python face of it.

Examples
--------
>>> with pyaccel.open_pool("/dev/shm/demo.pool", create=True, size=1 << 30) as pool:
...     print(pool.status().free)
"""

from __future__ import annotations

import errno
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from . import _driver
from .errors import (
    ModelInUseError,
    ModelNotFoundError,
    PoolCorruptError,
    PoolError,
    PoolFormatError,
    PoolFullError,
    PoolUncleanError,
)

__all__ = [
    "Pool",
    "PoolStatus",
    "PartitionStatus",
    "ModelRecord",
    "TensorRecord",
    "FsckReport",
    "open_pool",
    "DEFAULT_POOL_SIZE",
]

#: Size of the default pool when it is created implicitly and no config says.
DEFAULT_POOL_SIZE = 4 << 30


def translate(exc: OSError, path: str, model: str | None = None) -> Exception:
    """The pyaccel exception for an OSError the C core raised.

    Parameters
    ----------
    exc : OSError
        What the binding raised (errno and the C core's message).
    path : str
        The pool's path.
    model : str, optional
        The model concerned, for ``ModelInUseError`` / ``ModelNotFoundError``.

    Returns
    -------
    Exception
        A :class:`~pyaccel.errors.PoolError` subclass where one fits, else
        ``exc`` itself (an ``OSError`` subclass chosen by errno).
    """
    msg = exc.strerror or str(exc)
    # the C message leads with the pool path already; keep the part after it
    detail = msg.split(": ", 1)[1] if ": " in msg else msg
    detail = detail.replace(f"{path}: ", "")
    code = exc.errno
    if code in (errno.ENODATA, errno.EPROTONOSUPPORT):
        return PoolFormatError(path, detail)
    if code == errno.EBADMSG:
        return PoolCorruptError(path, detail)
    if code == errno.EUCLEAN:
        return PoolUncleanError(path, detail)
    if code == errno.ENOSPC:
        return PoolFullError(path, detail)
    if code == errno.EBUSY and model is not None:
        return ModelInUseError(path, model, detail)
    if code == errno.ENOENT and model is not None:
        return ModelNotFoundError(path, model)
    return exc


@dataclass(frozen=True)
class PartitionStatus:
    """One partition of a pool."""

    name: str
    offset: int
    size: int
    used: int
    free: int
    largest_free: int


@dataclass(frozen=True)
class PoolStatus:
    """What :meth:`Pool.status` reports.

    Attributes
    ----------
    path, uuid, kind, granularity : str
        Where the pool is, its identity, the backend and the durability
        granularity of its mapping (``byte``, ``cache_line``, ``page``).
    persistent : bool
        Whether its contents survive a reboot.
    size, used, free, largest_free : int
        Bytes of the mapping and of its data area.
    fragmentation : float
        ``1 - largest_free / free``: 0 when the free space is one range.
    logical, dedup_saved : int
        Bytes the models' tensors take without sharing, and what sharing
        identical tensors saves.
    n_models, n_loading, n_tensors : int
        Models ready and being loaded, and their tensors.
    clean, needs_fsck : bool
        Whether the last user closed it properly; whether fsck must run.
    damage : list of str
        What was found damaged when it was opened (empty when nothing).
    partitions : list of PartitionStatus
    """

    path: str
    uuid: str
    format: str
    kind: str
    granularity: str
    persistent: bool
    size: int
    data_size: int
    used: int
    free: int
    largest_free: int
    fragmentation: float
    logical: int
    dedup_saved: int
    generation: int
    catalog_offset: int
    catalog_size: int
    data_offset: int
    n_models: int
    n_loading: int
    n_tensors: int
    clean: bool
    needs_fsck: bool
    damage: list[str]
    partitions: list[PartitionStatus] = field(default_factory=list)


@dataclass(frozen=True)
class ModelRecord:
    """One model in a pool, as the catalog records it."""

    id: int
    name: str
    state: str
    partition: str
    n_tensors: int
    bytes: int
    stored: int
    created_ns: int
    last_used_ns: int
    content_hash: int
    sources: list[tuple[str, int, int, int, int]]
    in_use: bool
    superseded: bool

    @property
    def source(self) -> str | None:
        """The main file the model came from (the first source)."""
        return self.sources[0][0] if self.sources else None


@dataclass(frozen=True)
class TensorRecord:
    """One tensor of a model in a pool."""

    name: str
    dtype: int
    shape: tuple[int, ...]
    offset: int
    nbytes: int
    crc32c: int
    extent_id: int
    refcount: int


@dataclass(frozen=True)
class FsckReport:
    """What :meth:`Pool.fsck` found and did."""

    problems: int
    stale_loads: int
    leaked_bytes: int
    refcounts_fixed: int
    orphan_extents: int
    bad_records: int
    repaired: bool
    damage: list[str]
    report: list[str]


@dataclass
class TensorWrite:
    """One tensor for :meth:`Pool.write_model`.

    Exactly one source: ``fd`` + ``offset`` (bytes in a file, streamed), a
    bytes-like ``buffer`` (copied), ``produce`` (a callable returning the
    bytes-like object when its turn comes, so that converted tensors are made
    one at a time), or ``same_as`` (the index of an earlier tensor whose bytes
    are the very same: stored once).
    """

    name: str
    dtype: int
    shape: tuple[int, ...]
    nbytes: int
    fd: int = -1
    offset: int = 0
    buffer: Any = None
    produce: Callable[[], Any] | None = None
    same_as: int = -1


class Pool:
    """An open weight pool.  Use :func:`open_pool` to get one.

    A ``Pool`` is usable as a context manager; :meth:`close` is idempotent and
    waits for nothing: the mapping stays until the last array viewing it is
    gone.
    """

    def __init__(self, drv: Any, path: str) -> None:
        self._drv = drv
        self.path = path

    # -- plumbing ---------------------------------------------------------

    def _call(self, fn: Callable[..., Any], *args: Any, model: str | None = None) -> Any:
        try:
            return fn(*args)
        except OSError as e:
            err = translate(e, self.path, model)
            if err is e:
                raise
            raise err from e

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<pyaccel.Pool {self.path!r} {state}>"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return bool(self._drv.closed)

    def close(self) -> None:
        """Close the pool (deferred while arrays or leases from it live)."""
        self._drv.close()

    # -- inspection -------------------------------------------------------

    def status(self) -> PoolStatus:
        """Sizes, usage, fragmentation, dedup savings and health."""
        st = self._call(self._drv.stat)
        parts = [PartitionStatus(**p) for p in self._call(self._drv.partitions)]
        return PoolStatus(
            path=self.path,
            uuid=st["uuid"],
            format=st["format"],
            kind=st["kind"],
            granularity=st["granularity"],
            persistent=st["persistent"],
            size=st["size"],
            data_size=st["data_size"],
            used=st["used"],
            free=st["free"],
            largest_free=st["largest_free"],
            fragmentation=st["fragmentation"],
            logical=st["logical"],
            dedup_saved=st["dedup_saved"],
            generation=st["generation"],
            catalog_offset=st["catalog_offset"],
            catalog_size=st["catalog_size"],
            data_offset=st["data_offset"],
            n_models=st["n_models"],
            n_loading=st["n_loading"],
            n_tensors=st["n_tensors"],
            clean=st["clean"],
            needs_fsck=st["needs_fsck"],
            damage=st["damage"],
            partitions=parts,
        )

    def refresh(self) -> bool:
        """Pick up what other processes committed; True when anything changed."""
        return bool(self._call(self._drv.refresh))

    def _record(self, m: Mapping[str, Any], parts: Sequence[Mapping[str, Any]]) -> ModelRecord:
        return ModelRecord(
            id=m["id"],
            name=m["name"],
            state=m["state"],
            partition=parts[m["partition"]]["name"],
            n_tensors=m["n_tensors"],
            bytes=m["bytes"],
            stored=m["stored"],
            created_ns=m["created_ns"],
            last_used_ns=m["last_used_ns"],
            content_hash=m["content_hash"],
            sources=self._call(self._drv.sources, m["id"]),
            in_use=self._call(self._drv.in_use, m["id"]),
            superseded=bool(m["flags"] & 1),
        )

    def models(self, *, all_versions: bool = False) -> list[ModelRecord]:
        """The models in the pool, oldest first.

        Parameters
        ----------
        all_versions : bool
            Also list models being loaded and versions superseded by a newer
            load of the same name that a process still uses.
        """
        self.refresh()
        parts = self._call(self._drv.partitions)
        out = []
        for m in self._call(self._drv.models):
            rec = self._record(m, parts)
            if all_versions or (rec.state == "ready" and not rec.superseded):
                out.append(rec)
        return out

    def model(self, name: str) -> ModelRecord:
        """The current version of the model called ``name``.

        Raises
        ------
        ModelNotFoundError
            No ready model has that name.
        """
        self.refresh()
        parts = self._call(self._drv.partitions)
        m = self._call(self._drv.model_find, name, model=name)
        return self._record(m, parts)

    def _resolve(self, name_or_id: str | int) -> ModelRecord:
        if isinstance(name_or_id, int):
            self.refresh()
            parts = self._call(self._drv.partitions)
            return self._record(self._call(self._drv.model_get, name_or_id, model=str(name_or_id)), parts)
        try:
            return self.model(name_or_id)
        except ModelNotFoundError:
            # a source path names the model loaded from it
            real = os.path.realpath(name_or_id)
            for rec in self.models():
                if rec.source == real:
                    return rec
            raise

    def tensors(self, model: str | int) -> list[TensorRecord]:
        """The tensors of a model, in load order."""
        rec = self._resolve(model)
        return [TensorRecord(*t) for t in self._call(self._drv.tensors, rec.id)]

    # -- changes ----------------------------------------------------------

    def evict(self, model: str | int) -> None:
        """Remove a model (by name, source path or id) that no process uses.

        Raises
        ------
        ModelInUseError
            A live process (this one included) holds a lease on it.
        ModelNotFoundError
            There is no such model.
        """
        rec = self._resolve(model)
        self._call(self._drv.evict, rec.id, model=rec.name)

    def verify(self, model: str | int | None = None) -> list[str]:
        """Re-read tensors and check their CRC32C.

        Returns
        -------
        list of str
            One line per tensor whose bytes no longer match (empty: all good).
        """
        mid = 0 if model is None else self._resolve(model).id
        bad, _checked = self._call(self._drv.verify, mid)
        if not bad:
            return []
        bad_ids = set(bad)
        out = []
        for rec in self.models(all_versions=True):
            for t in self._call(self._drv.tensors, rec.id):
                if t[6] in bad_ids:
                    out.append(f"model {rec.name!r}: tensor {t[0]!r} does not match its checksum")
        return out or [f"extents {sorted(bad_ids)} do not match their checksums"]

    def fsck(self, repair: bool = False) -> FsckReport:
        """Check the pool's metadata; with ``repair``, mend what can be mended.

        Reclaims the space of loads whose process died, fixes reference counts,
        rewrites damaged superblock or catalog copies, and -- after an unclean
        shutdown of persistent media -- re-checks every tensor and drops the
        models whose bytes were lost.  Every action is in the report.
        """
        return FsckReport(**self._call(self._drv.fsck, repair))

    # -- the loaders' write path -----------------------------------------

    def write_model(
        self,
        name: str,
        tensors: Sequence[TensorWrite],
        *,
        sources: Iterable[tuple[str, int, int, int, int]] = (),
        meta: bytes = b"",
        partition: str | int = 0,
        progress: Callable[[int, int], None] | None = None,
        threads: int = 0,
        direct: str = "auto",
        evict: bool = True,
        stats: dict[str, int] | None = None,
    ) -> tuple[int, Any]:
        """Stream a model's tensors into the pool and commit it.

        Space is allocated first (least-recently-used models no process uses
        are evicted when it is short, unless ``evict`` is false); the bytes are
        then streamed by the C core's worker threads, checksummed on the way;
        the model becomes visible to every process only when all of it is
        durable.  An exception or Ctrl-C at any point leaves no trace of it.

        ``stats``, when given, receives ``direct_bytes``: how much was read
        with O_DIRECT.

        Returns
        -------
        (int, lease)
            The new model's id and a lease on it (an object exporting the pool
            memory read-only; the model stays while it or an array made from
            it is alive).
        """
        part = self._call(self._drv.partition_index, partition) if isinstance(partition, str) else partition
        desc = [(t.name, t.dtype, tuple(int(d) for d in t.shape), t.nbytes, t.same_as) for t in tensors]
        load = self._call(
            _driver._Load, self._drv, name, part, desc, list(sources), len(meta), 0 if evict else 1, model=name
        )
        try:
            mode = {"auto": _driver.STREAM_DIRECT_AUTO, "never": _driver.STREAM_DIRECT_NEVER,
                    "always": _driver.STREAM_DIRECT_ALWAYS}[direct]
            # tuning knobs, for operators and tests: worker threads, bytes per request
            threads = threads or int(os.environ.get("PYACCEL_STREAM_THREADS", "0") or 0)
            chunk = int(os.environ.get("PYACCEL_STREAM_CHUNK", "0") or 0)
            stream = _driver._Stream(self._drv, threads=threads, chunk=chunk, direct=mode)
            index: dict[int, int] = {}
            produced: list[int] = []
            for i, t in enumerate(tensors):
                if t.same_as >= 0:
                    continue
                if t.produce is not None:
                    produced.append(i)
                    continue
                off = load.offset(i)
                if t.buffer is not None:
                    index[i] = stream.add_buffer(t.buffer, off)
                else:
                    index[i] = stream.add_file(t.fd, t.offset, t.nbytes, off)
            index[len(tensors)] = stream.add_buffer(meta, load.offset(len(tensors)))
            _run_stream(stream, progress)
            if stats is not None:
                stats["direct_bytes"] = stream.direct_bytes
            for i, k in index.items():
                load.set_crc(i, stream.crc(k))
            # converted tensors: made and copied one at a time (bounded memory)
            for i in produced:
                data = tensors[i].produce()  # type: ignore[misc]
                nbytes = memoryview(data).nbytes
                if nbytes != tensors[i].nbytes:
                    raise ValueError(f"tensor {tensors[i].name!r}: produced {nbytes} bytes, "
                                     f"expected {tensors[i].nbytes}")
                one = _driver._Stream(self._drv, threads=1)
                one.add_buffer(data, load.offset(i))
                one.run()
                load.set_crc(i, one.crc(0))
                del data, one
            mid = self._call(load.commit, True, model=name)
        except BaseException:
            load.abort()
            raise
        return mid, _driver._Lease.adopt(self._drv, mid)

    def lease(self, model_id: int, wait: bool = False) -> Any:
        """A lease on a model (see :meth:`write_model`)."""
        return self._call(self._drv.lease, model_id, wait, model=str(model_id))

    def buffer(self) -> memoryview:
        """The whole pool mapping, read-only."""
        return memoryview(self._drv)

    def array(self, lease: Any, offset: int, dtype: Any, shape: tuple[int, ...]) -> np.ndarray:
        """A read-only numpy view of pool memory that keeps ``lease`` alive."""
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        a = np.frombuffer(lease, dtype=dt, count=count, offset=offset)
        return a.reshape(shape)


def _run_stream(stream: Any, progress: Callable[[int, int], None] | None) -> None:
    """Run a stream, reporting progress and honouring Ctrl-C.

    The copy runs in a worker thread (without the GIL) so that this thread
    stays free to report progress and to receive KeyboardInterrupt, on which
    it cancels the stream and waits for the workers to stop.
    """
    failure: list[BaseException] = []

    def work() -> None:
        try:
            stream.run()
        except BaseException as e:  # re-raised in the caller's thread
            failure.append(e)

    th = threading.Thread(target=work, name="pyaccel-stream", daemon=True)
    th.start()
    try:
        while th.is_alive():
            th.join(0.1)
            if progress is not None:
                progress(*stream.progress())
    except BaseException:
        stream.cancel()
        th.join()
        raise
    if progress is not None:
        progress(*stream.progress())
    if failure:
        raise failure[0]


_default_choice: tuple[str, int | None, dict[str, int] | None, bool] | None = None


def _choose_default() -> tuple[str, int | None, dict[str, int] | None, bool]:
    """The default pool: (path, size, partitions, needs_create).

    A path pinned by the configuration (``PYACCEL_POOL`` or a config file)
    is taken as it is; otherwise device discovery chooses, once per process.
    """
    global _default_choice
    from . import config

    cfg = config.load()
    if cfg.path:
        import stat

        try:
            mode = os.stat(cfg.path).st_mode
            raw = stat.S_ISBLK(mode) or stat.S_ISCHR(mode)
        except OSError:
            raw = False
        return cfg.path, cfg.size, cfg.partitions or None, raw
    if _default_choice is None:
        from . import discover

        choice = discover.default_pool(config=cfg)
        _default_choice = (choice.path, choice.size, choice.partitions or None, choice.needs_create)
    return _default_choice


def open_pool(
    path: str | os.PathLike[str] | None = None,
    *,
    create: bool = False,
    size: int | None = None,
    partitions: Mapping[str, int] | Sequence[tuple[str, int]] | None = None,
    force: bool = False,
    readonly: bool = False,
    recover: bool = False,
    catalog_size: int = 0,
    mode: int = 0o660,
) -> Pool:
    """Open a weight pool, creating it if asked.

    Parameters
    ----------
    path : path-like, optional
        A device (``/dev/daxX.Y``, a block device) or a file (hugetlbfs, fsdax,
        tmpfs, any filesystem).  None: the default pool (``PYACCEL_POOL``, the
        config files, else the best device discovery finds, else
        ``/dev/shm/pyaccel.pool``), created on first use when it is a file.
    create : bool
        Create the pool if there is none at ``path`` (an existing pool is
        opened as it is).  Files are made ``size`` bytes; devices are used
        whole.
    size : int, optional
        Bytes for a new pool file (default: 4 GiB or half the free space of
        the filesystem it goes on, whichever is less).
    partitions : mapping or sequence of (name, bytes), optional
        Split a new pool into named partitions; a size of 0 for the last one
        takes what is left.  Default: one partition, ``default``.
    force : bool
        With ``create``: overwrite whatever the device or file holds.
    readonly : bool
        Map read-only: attach to models, never load or evict.
    recover : bool
        Open even a pool that needs fsck (unclean shutdown, damage), to run
        :meth:`Pool.fsck` on it.
    catalog_size : int
        Bytes per catalog copy for a new pool (0: sized from the pool).
    mode : int
        File mode of a new pool file.

    Returns
    -------
    Pool

    Raises
    ------
    FileNotFoundError
        No pool and no ``create``.
    PoolFormatError
        Not a pyaccel pool, or one written by a newer, incompatible version.
    PoolCorruptError, PoolUncleanError
        Damaged metadata, or an unclean shutdown: run fsck (``recover=True``).
    PermissionError
        The user may not open it as asked.
    """
    implicit = path is None
    if implicit:
        path, dsize, dparts, needs_create = _choose_default()
        size = size or dsize
        partitions = partitions or dparts
        if not needs_create and not readonly:
            create = True
    spath = os.fspath(path)
    if create and not size:
        size = _default_size(spath)  # ignored for devices: they are used whole
    if isinstance(partitions, Mapping):
        partitions = list(partitions.items())
    flags = 0
    if readonly:
        flags |= _driver.POOL_RDONLY
    if recover:
        flags |= _driver.POOL_RECOVER

    def attempt(extra: int) -> Any:
        try:
            return _driver._Pool(spath, size or 0, flags | extra, mode, partitions, catalog_size)
        except OSError as e:
            err = translate(e, spath)
            if err is e:
                raise
            raise err from e

    if not create:
        return Pool(attempt(0), spath)
    if force:
        return Pool(attempt(_driver.POOL_CREATE | _driver.POOL_FORCE), spath)
    # create if missing, else open: racing creators end up on one pool
    for _ in range(3):
        try:
            return Pool(attempt(0), spath)
        except FileNotFoundError:
            pass
        except PoolFormatError as e:
            if not _blank(spath):
                if "newer" in e.detail or "features" in e.detail:
                    raise
                raise PoolFormatError(spath, "holds data that is not a pyaccel pool; "
                                      "give force=True (pyaccel pool create --force) to overwrite it") from e
        try:
            return Pool(attempt(_driver.POOL_CREATE), spath)
        except FileExistsError:
            time.sleep(0.01)
    return Pool(attempt(0), spath)


def _blank(path: str) -> bool:
    """Whether path is a file with no pool yet (new or all zero at the start)."""
    try:
        with open(path, "rb") as f:
            return not any(f.read(8192))
    except OSError:
        return False


def _default_size(path: str) -> int:
    """DEFAULT_POOL_SIZE, or half the free space where the pool file goes."""
    try:
        st = os.statvfs(os.path.dirname(path) or ".")
        free = st.f_bavail * st.f_frsize
    except OSError:
        return DEFAULT_POOL_SIZE
    half = (free // 2) & ~((2 << 20) - 1)
    return max(64 << 20, min(DEFAULT_POOL_SIZE, half))


def iter_models(pool: Pool) -> Iterator[ModelRecord]:
    """Every model of every version (a helper for the CLI)."""
    yield from pool.models(all_versions=True)
