# cython: language_level=3, boundscheck=False, wraparound=False
"""Thin binding of the C core (``driver/include/pyaccel.h``).

Each class owns one C object and mirrors its functions one to one; the
public API lives in the pure-Python modules.  Every C call goes through
:func:`check`, which turns ``-errno`` into the matching ``OSError`` subclass
carrying the C core's message.
"""

import os

from cpython.buffer cimport PyBUF_WRITABLE, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytes cimport PyBytes_FromStringAndSize
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memset

from pyaccel._driver cimport *

KIND_NAMES = {
    PA_KIND_UNKNOWN: "unknown", PA_KIND_DEVDAX: "devdax",
    PA_KIND_HUGETLBFS: "hugetlbfs", PA_KIND_FSDAX: "fsdax",
    PA_KIND_BLOCK: "block", PA_KIND_TMPFS: "tmpfs", PA_KIND_FILE: "file",
}
GRAN_NAMES = {PA_GRAN_BYTE: "byte", PA_GRAN_CACHE_LINE: "cache_line",
              PA_GRAN_PAGE: "page"}

MAP_READONLY = PA_MAP_READONLY
MAP_CREATE = PA_MAP_CREATE
MAP_POPULATE = PA_MAP_POPULATE
MAP_NO_SYNC = PA_MAP_NO_SYNC
MAP_EXCL = PA_MAP_EXCL
MEM_NOFLUSH = PA_MEM_NOFLUSH
MEM_NODRAIN = PA_MEM_NODRAIN
MEM_TEMPORAL = PA_MEM_TEMPORAL
MEM_NONTEMPORAL = PA_MEM_NONTEMPORAL
POOL_CREATE = PA_POOL_CREATE
POOL_FORCE = PA_POOL_FORCE
POOL_RDONLY = PA_POOL_RDONLY
POOL_RECOVER = PA_POOL_RECOVER
STREAM_DIRECT_AUTO = PA_STREAM_DIRECT_AUTO
STREAM_DIRECT_NEVER = PA_STREAM_DIRECT_NEVER
STREAM_DIRECT_ALWAYS = PA_STREAM_DIRECT_ALWAYS
STREAM_VIA_AUTO = PA_STREAM_VIA_AUTO
STREAM_VIA_MAP = PA_STREAM_VIA_MAP
STREAM_VIA_WRITE = PA_STREAM_VIA_WRITE
MODEL_LOADING = PA_MODEL_LOADING
MODEL_READY = PA_MODEL_READY
DAMAGE_NAMES = {
    PA_DAMAGE_SB_PRIMARY: "primary superblock",
    PA_DAMAGE_SB_BACKUP: "backup superblock",
    PA_DAMAGE_CATALOG_OLD: "older catalog copy",
    PA_DAMAGE_CATALOG_NEW: "newest catalog copy",
    PA_DAMAGE_STATE: "state page",
    PA_DAMAGE_UNCLEAN: "unclean shutdown",
}
FAULT_POINTS = {"write": PA_FAULT_WRITE, "flush": PA_FAULT_FLUSH,
                "alloc": PA_FAULT_ALLOC}


cdef inline ssize_t check(ssize_t rc) except -1:
    """Return ``rc`` when it is not an error, else raise the OSError for it."""
    if rc >= 0:
        return rc
    raise OSError(-rc, f"{os.strerror(-rc)}: {pa_errormsg().decode(errors='replace')}")


cdef bytes _fs(object path):
    return os.fsencode(path)


cdef void _export(Py_buffer *buf, void *addr, size_t length, bint readonly, object owner):
    """Fill a Py_buffer with a flat byte view of [addr, addr + length)."""
    buf.buf = addr
    buf.len = length
    buf.readonly = readonly
    buf.itemsize = 1
    buf.format = "B"
    buf.ndim = 1
    buf.shape = NULL
    buf.strides = NULL
    buf.suboffsets = NULL
    buf.internal = NULL
    buf.obj = owner


def version():
    """The C core's version string."""
    return pa_version().decode()


def flush_method():
    """The cache-flush instruction chosen by CPUID."""
    return pa_flush_method().decode()


def crc32c(data, uint32_t crc=0):
    """CRC32C of a bytes-like object (zlib conventions: start from 0)."""
    cdef const unsigned char[::1] view = memoryview(data).cast("B")
    cdef size_t n = view.shape[0]
    cdef const void *p = &view[0] if n else NULL
    with nogil:
        crc = pa_crc32c(crc, p, n)
    return crc


def crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b):
    """CRC32C of A||B from the CRCs of A and B and the length of B."""
    return pa_crc32c_combine(crc_a, crc_b, len_b)


def crc32c_impl():
    """``"sse4.2"`` or ``"table"``."""
    return pa_crc32c_impl().decode()


def fault_set(str point, uint64_t nth, str action="fail"):
    """Make the nth event at point (write / flush / alloc) fail or exit."""
    check(pa_fault_set(FAULT_POINTS[point], nth,
                       PA_FAULT_EXIT if action == "exit" else PA_FAULT_FAIL))


def fault_clear():
    """Turn fault injection off."""
    pa_fault_clear()


def fault_count(str point):
    """Events counted at point since the last fault_set."""
    return pa_fault_count(FAULT_POINTS[point])


cdef dict _source_dict(const pa_source_info *si):
    return {
        "kind": KIND_NAMES.get(si.kind, "unknown"),
        "granularity": GRAN_NAMES.get(si.granularity, "unknown"),
        "persistent": bool(si.persistent),
        "numa_node": si.numa_node,
        "target_node": si.target_node,
        "size": si.size,
        "align": si.align,
        "fs_magic": si.fs_magic,
        "devname": si.devname.decode(errors="replace"),
    }


def classify(path, sysfs_root=None):
    """What path is: kind, size, align, NUMA node, persistence (a dict)."""
    cdef pa_source_info si
    cdef bytes p = _fs(path)
    cdef bytes r = _fs(sysfs_root) if sysfs_root is not None else None
    cdef const char *pp = p
    cdef const char *rp = NULL
    if r is not None:
        rp = r
    with nogil:
        rc = pa_source_classify(pp, rp, &si)
    check(rc)
    return _source_dict(&si)


cdef class _Map:
    """A mapping of a source (``struct pa_map``); exports the buffer protocol."""
    cdef pa_map *m
    cdef int exports
    cdef bint closing

    def __cinit__(self, path, uint64_t offset=0, uint64_t length=0,
                  unsigned flags=0, unsigned mode=0, sysfs_root=None):
        cdef pa_map_cfg cfg
        cdef bytes p = _fs(path)
        cdef bytes r = _fs(sysfs_root) if sysfs_root is not None else None
        memset(&cfg, 0, sizeof(cfg))
        cfg.path = p
        cfg.offset = offset
        cfg.length = length
        cfg.flags = flags
        cfg.mode = mode
        if r is not None:
            cfg.sysfs_root = r
        with nogil:
            rc = pa_map_new(&self.m, &cfg)
        check(rc)

    def __dealloc__(self):
        if self.m is not NULL:
            pa_map_delete(&self.m)

    cdef pa_map *_get(self) except NULL:
        if self.m is NULL or self.closing:
            raise ValueError("mapping is closed")
        return self.m

    def close(self):
        """Unmap; deferred while a buffer (numpy array, memoryview) is alive."""
        self.closing = True
        if self.exports == 0 and self.m is not NULL:
            pa_map_delete(&self.m)

    @property
    def closed(self):
        return self.m is NULL or self.closing

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getbuffer__(self, Py_buffer *buf, int flags):
        cdef pa_map *m = self._get()
        cdef bint ro = pa_map_is_readonly(m)
        if (flags & PyBUF_WRITABLE) and ro:
            raise BufferError("mapping is read-only")
        _export(buf, pa_map_addr(m), pa_map_length(m), ro, self)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *buf):
        self.exports -= 1
        if self.exports == 0 and self.closing and self.m is not NULL:
            pa_map_delete(&self.m)

    @property
    def address(self):
        return <size_t>pa_map_addr(self._get())

    @property
    def length(self):
        return pa_map_length(self._get())

    @property
    def offset(self):
        return pa_map_offset(self._get())

    @property
    def align(self):
        return pa_map_align(self._get())

    @property
    def kind(self):
        return KIND_NAMES.get(pa_map_kind(self._get()), "unknown")

    @property
    def granularity(self):
        return GRAN_NAMES.get(pa_map_granularity(self._get()), "unknown")

    @property
    def persistent(self):
        return bool(pa_map_is_persistent(self._get()))

    @property
    def readonly(self):
        return bool(pa_map_is_readonly(self._get()))

    @property
    def sync(self):
        return bool(pa_map_is_sync(self._get()))

    @property
    def fallback(self):
        return pa_map_fallback(self._get()).decode()

    @property
    def source(self):
        return _source_dict(pa_map_source(self._get()))

    def populate(self, uint64_t off=0, length=None, bint write=True):
        """Pre-fault a range (the whole mapping by default)."""
        cdef pa_map *m = self._get()
        cdef uint64_t n = pa_map_length(m) - off if length is None else length
        with nogil:
            rc = pa_map_populate(m, off, n, write)
        check(rc)

    def persist(self, uint64_t off=0, length=None):
        """Make a range durable (flush + drain) as the granularity requires."""
        cdef pa_map *m = self._get()
        cdef uint64_t n = pa_map_length(m) - off if length is None else length
        if off > pa_map_length(m) or n > pa_map_length(m) - off:
            raise ValueError(f"range {off}+{n} is outside the mapping")
        with nogil:
            rc = pa_map_persist(m, <char *>pa_map_addr(m) + off, n)
        check(rc)

    def write(self, uint64_t off, data, unsigned flags=0):
        """Copy a bytes-like object to off and persist it (pa_map_memcpy)."""
        cdef pa_map *m = self._get()
        cdef const unsigned char[::1] view = memoryview(data).cast("B")
        cdef size_t n = view.shape[0]
        if off > pa_map_length(m) or n > pa_map_length(m) - off:
            raise ValueError(f"write of {n} bytes at {off} is outside the mapping")
        if n == 0:
            return
        with nogil:
            rc = pa_map_memcpy(m, <char *>pa_map_addr(m) + off, &view[0], n, flags)
        check(rc)


cdef class _Stream:
    """A batch of checksummed copies into a mapping (``struct pa_stream``)."""
    cdef pa_stream *s
    cdef object dest
    cdef list keep

    def __cinit__(self, dest, unsigned threads=0, uint64_t chunk=0,
                  int direct=PA_STREAM_DIRECT_AUTO, bint nopersist=False,
                  bint keep_mapped=False, int via=PA_STREAM_VIA_AUTO):
        cdef pa_stream_cfg cfg
        cdef pa_map *m
        if isinstance(dest, _Pool):
            m = pa_pool_map((<_Pool>dest)._get())
        else:
            m = (<_Map?>dest)._get()
        memset(&cfg, 0, sizeof(cfg))
        cfg.threads = threads
        cfg.chunk = chunk
        cfg.direct = direct
        cfg.nopersist = nopersist
        cfg.keep_mapped = keep_mapped
        cfg.via = via
        check(pa_stream_new(&self.s, m, &cfg))
        self.dest = dest
        self.keep = []

    def __dealloc__(self):
        if self.s is not NULL:
            pa_stream_delete(&self.s)

    def add_file(self, int fd, uint64_t src_off, uint64_t length, uint64_t dst_off):
        """Queue a copy of length bytes at src_off of fd to dst_off; its index."""
        cdef pa_io io
        memset(&io, 0, sizeof(io))
        io.fd = fd
        io.src_off = src_off
        io.len = length
        io.dst_off = dst_off
        return check(pa_stream_add(self.s, &io))

    def add_buffer(self, data, uint64_t dst_off):
        """Queue a copy of a bytes-like object to dst_off; its index."""
        cdef pa_io io
        cdef const unsigned char[::1] view = memoryview(data).cast("B")
        memset(&io, 0, sizeof(io))
        io.fd = -1
        io.len = view.shape[0]
        io.src = &view[0] if io.len else NULL
        io.dst_off = dst_off
        if io.len == 0:
            io.src = <const void *>1  # nothing is read
        self.keep.append(view)
        return check(pa_stream_add(self.s, &io))

    def run(self):
        """Copy everything (without the GIL); raises on the first failure."""
        with nogil:
            rc = pa_stream_run(self.s)
        self.keep = []
        check(rc)

    def cancel(self):
        """Ask a running stream (in another thread) to stop soon."""
        pa_stream_cancel(self.s)

    def progress(self):
        """(bytes done, bytes in all)."""
        cdef uint64_t done, total
        pa_stream_progress(self.s, &done, &total)
        return done, total

    def crc(self, size_t i):
        """CRC32C of io i."""
        cdef uint32_t c
        check(pa_stream_crc(self.s, i, &c))
        return c

    @property
    def direct_bytes(self):
        return pa_stream_direct_bytes(self.s)


cdef dict _model_dict(const pa_model_info *m):
    return {
        "id": m.id,
        "name": m.name.decode(errors="surrogateescape"),
        "state": "ready" if m.state == PA_MODEL_READY else "loading",
        "partition": m.part,
        "n_tensors": m.n_tensors,
        "n_sources": m.n_sources,
        "bytes": m.bytes,
        "stored": m.stored,
        "created_ns": m.created_ns,
        "last_used_ns": m.last_used_ns,
        "content_hash": m.content_hash,
        "meta_offset": m.meta_off,
        "meta_length": m.meta_len,
        "meta_crc": m.meta_crc,
        "flags": m.flags,
        "owner_pid": m.owner_pid,
    }


cdef class _Pool:
    """An open pool (``struct pa_pool``); exports its mapping read-only."""
    cdef pa_pool *p
    cdef int exports
    cdef int holds
    cdef bint closing
    cdef readonly object path

    def __cinit__(self, path, uint64_t size=0, unsigned flags=0, unsigned mode=0,
                  parts=None, uint64_t catalog_size=0, sysfs_root=None):
        cdef pa_pool_cfg cfg
        cdef bytes p = _fs(path)
        cdef bytes r = _fs(sysfs_root) if sysfs_root is not None else None
        cdef pa_part_cfg *pc = NULL
        cdef list names = []
        cdef int i
        memset(&cfg, 0, sizeof(cfg))
        cfg.path = p
        cfg.size = size
        cfg.flags = flags
        cfg.mode = mode
        cfg.catalog_size = catalog_size
        if r is not None:
            cfg.sysfs_root = r
        self.path = os.fsdecode(path)
        try:
            if parts:
                pc = <pa_part_cfg *>calloc(len(parts), sizeof(pa_part_cfg))
                if pc is NULL:
                    raise MemoryError()
                for i, (name, psize) in enumerate(parts):
                    names.append(name.encode())
                    pc[i].name = names[i]
                    pc[i].size = psize
                cfg.nparts = len(parts)
                cfg.parts = pc
            with nogil:
                rc = pa_pool_open(&self.p, &cfg)
            check(rc)
        finally:
            free(pc)

    def __dealloc__(self):
        if self.p is not NULL:
            pa_pool_close(&self.p)

    cdef pa_pool *_get(self) except NULL:
        if self.p is NULL or self.closing:
            raise ValueError(f"pool {self.path} is closed")
        return self.p

    cdef void _maybe_close(self):
        if self.closing and self.exports == 0 and self.holds == 0 and self.p is not NULL:
            pa_pool_close(&self.p)

    def close(self):
        """Close; deferred while arrays or leases from it are alive."""
        self.closing = True
        self._maybe_close()

    @property
    def closed(self):
        return self.p is NULL or self.closing

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getbuffer__(self, Py_buffer *buf, int flags):
        cdef pa_map *m = pa_pool_map(self._get())
        if flags & PyBUF_WRITABLE:
            raise BufferError("pool memory is exported read-only")
        _export(buf, pa_map_addr(m), pa_map_length(m), True, self)
        self.exports += 1

    def __releasebuffer__(self, Py_buffer *buf):
        self.exports -= 1
        self._maybe_close()

    @property
    def length(self):
        return pa_map_length(pa_pool_map(self._get()))

    @property
    def map_info(self):
        cdef pa_map *m = pa_pool_map(self._get())
        return {
            "kind": KIND_NAMES.get(pa_map_kind(m), "unknown"),
            "granularity": GRAN_NAMES.get(pa_map_granularity(m), "unknown"),
            "persistent": bool(pa_map_is_persistent(m)),
            "sync": bool(pa_map_is_sync(m)),
            "readonly": bool(pa_map_is_readonly(m)),
            "fallback": pa_map_fallback(m).decode(),
            "source": _source_dict(pa_map_source(m)),
        }

    def stat(self):
        """Sizes, usage, dedup savings and health (a dict)."""
        cdef pa_pool_stat st
        cdef pa_pool *p = self._get()
        with nogil:
            rc = pa_pool_stat_get(p, &st)
        check(rc)
        damage = [name for bit, name in DAMAGE_NAMES.items() if st.damage & bit]
        return {
            "uuid": bytes(st.uuid[:16]).hex(),
            "format": f"{st.format_major}.{st.format_minor}",
            "compat": st.compat, "incompat": st.incompat, "ro_compat": st.ro_compat,
            "size": st.size, "data_size": st.data_size, "used": st.used,
            "free": st.free, "largest_free": st.largest_free,
            "fragmentation": st.frag_ppm / 1e6,
            "logical": st.logical, "dedup_saved": st.dedup_saved,
            "generation": st.generation, "created_ns": st.created_ns,
            "catalog_offset": st.catalog_offset, "catalog_size": st.catalog_size,
            "data_offset": st.data_offset,
            "n_models": st.n_models, "n_loading": st.n_loading,
            "n_tensors": st.n_tensors, "n_extents": st.n_extents,
            "n_partitions": st.n_parts,
            "kind": KIND_NAMES.get(st.kind, "unknown"),
            "granularity": GRAN_NAMES.get(st.granularity, "unknown"),
            "persistent": bool(st.persistent), "clean": bool(st.clean),
            "needs_fsck": bool(st.needs_fsck), "damage": damage,
        }

    def partitions(self):
        """Each partition's name, place and usage."""
        cdef pa_part_info pi
        cdef pa_pool *p = self._get()
        cdef uint32_t i = 0
        out = []
        # no refresh here: callers mix this with lookups in one snapshot
        while pa_pool_part(p, i, &pi) == 0:
            i += 1
            out.append({"name": pi.name.decode(), "offset": pi.offset, "size": pi.size,
                        "used": pi.used, "free": pi.free,
                        "largest_free": pi.largest_free})
        return out

    def partition_index(self, str name):
        """Index of the partition called name."""
        return check(pa_pool_part_find(self._get(), name.encode()))

    def refresh(self):
        """Pick up other processes' commits; True when something changed."""
        cdef pa_pool *p = self._get()
        with nogil:
            rc = pa_pool_refresh(p)
        return bool(check(rc))

    def models(self):
        """Every model record of the current catalog snapshot."""
        cdef pa_model_info mi
        cdef pa_pool *p = self._get()
        cdef ssize_t i, n = pa_pool_model_count(p)
        out = []
        for i in range(n):
            check(pa_pool_model_at(p, i, &mi))
            out.append(_model_dict(&mi))
        return out

    def model_find(self, str name):
        """The READY model called name (raises FileNotFoundError)."""
        cdef pa_model_info mi
        cdef bytes b = name.encode("utf-8", "surrogateescape")
        check(pa_pool_model_find(self._get(), b, &mi))
        return _model_dict(&mi)

    def model_get(self, uint64_t model_id):
        """The model with this id."""
        cdef pa_model_info mi
        check(pa_pool_model_get(self._get(), model_id, &mi))
        return _model_dict(&mi)

    def tensors(self, uint64_t model_id):
        """(name, dtype, shape, offset, nbytes, crc32c, extent_id, refcount) per tensor."""
        cdef pa_model_info mi
        cdef pa_tensor_info ti
        cdef pa_pool *p = self._get()
        cdef size_t i
        cdef uint32_t k
        check(pa_pool_model_get(p, model_id, &mi))
        out = [None] * mi.n_tensors
        for i in range(mi.n_tensors):
            check(pa_pool_tensor_at(p, model_id, i, &ti))
            out[i] = (ti.name.decode("utf-8", "surrogateescape"), ti.dtype,
                      tuple([ti.dims[k] for k in range(ti.ndim)]),
                      ti.offset, ti.nbytes, ti.crc32c, ti.extent_id, ti.refcount)
        return out

    def sources(self, uint64_t model_id):
        """(path, size, mtime_ns, ino, dev) of each file the model came from."""
        cdef pa_model_info mi
        cdef pa_source_rec sr
        cdef pa_pool *p = self._get()
        cdef size_t i
        check(pa_pool_model_get(p, model_id, &mi))
        out = []
        for i in range(mi.n_sources):
            check(pa_pool_source_at(p, model_id, i, &sr))
            out.append((os.fsdecode(<bytes>sr.path), sr.size, sr.mtime_ns, sr.ino, sr.dev))
        return out

    def in_use(self, uint64_t model_id):
        """Whether some process (this one too) leases the model."""
        return bool(check(pa_pool_in_use(self._get(), model_id)))

    def evict(self, uint64_t model_id):
        """Remove a model no one leases (OSError EBUSY when leased)."""
        cdef pa_pool *p = self._get()
        with nogil:
            rc = pa_pool_evict(p, model_id)
        check(rc)

    def fsck(self, bint repair=False):
        """Check (and repair) the catalog; a dict with counts and the report text."""
        cdef pa_fsck_report r
        cdef pa_pool *p = self._get()
        with nogil:
            rc = pa_pool_fsck(p, PA_FSCK_REPAIR if repair else 0, &r)
        check(rc)
        return {
            "problems": rc, "stale_loads": r.stale_loads,
            "leaked_bytes": r.leaked_bytes, "refcounts_fixed": r.refcounts_fixed,
            "orphan_extents": r.orphan_extents, "bad_records": r.bad_records,
            "repaired": bool(r.repaired),
            "damage": [name for bit, name in DAMAGE_NAMES.items() if r.damage & bit],
            "report": r.text.decode(errors="replace").strip().splitlines(),
        }

    def verify(self, uint64_t model_id=0, size_t max_bad=1024):
        """Re-check CRCs; (ids of bad extents, bytes checked)."""
        cdef uint64_t *bad = <uint64_t *>malloc((max_bad + 1) * sizeof(uint64_t))
        cdef uint64_t checked = 0
        cdef pa_pool *p = self._get()
        cdef ssize_t n
        if bad is NULL:
            raise MemoryError()
        try:
            with nogil:
                n = pa_pool_verify(p, model_id, bad, max_bad, &checked)
            check(n)
            return [bad[i] for i in range(min(<size_t>n, max_bad))], checked
        finally:
            free(bad)

    def lease(self, uint64_t model_id, bint wait=False):
        """A _Lease: holds the model while any array viewing it is alive."""
        return _Lease(self, model_id, wait)


cdef class _Lease:
    """A model lease that exports the pool's memory read-only.

    numpy arrays made from it keep it alive, so the model's bytes cannot be
    evicted or reused while any of them exists; the lease goes when the last
    reference does.
    """
    cdef _Pool pool
    cdef readonly uint64_t model_id
    cdef bint held

    def __cinit__(self, _Pool pool, uint64_t model_id, bint wait=False):
        cdef pa_pool *p = pool._get()
        with nogil:
            rc = pa_pool_lease(p, model_id, PA_LEASE_WAIT if wait else 0)
        check(rc)
        self.pool = pool
        self.model_id = model_id
        self.held = True
        pool.holds += 1

    @staticmethod
    def adopt(_Pool pool, uint64_t model_id):
        """Wrap a lease this process already holds (kept by a load commit)."""
        cdef _Lease l = _Lease.__new__(_Lease, pool, model_id)
        # __cinit__ took a second (nested) lease: give the adopted one back
        check(pa_pool_unlease(pool._get(), model_id))
        return l

    def __dealloc__(self):
        if self.held and self.pool is not None and self.pool.p is not NULL:
            pa_pool_unlease(self.pool.p, self.model_id)
            self.held = False
            self.pool.holds -= 1
            self.pool._maybe_close()

    def __getbuffer__(self, Py_buffer *buf, int flags):
        cdef pa_map *m = pa_pool_map(self.pool.p)
        if flags & PyBUF_WRITABLE:
            raise BufferError("pool memory is exported read-only")
        _export(buf, pa_map_addr(m), pa_map_length(m), True, self)

    def __releasebuffer__(self, Py_buffer *buf):
        pass


cdef class _Load:
    """A model being loaded (``struct pa_load``): begin, write, commit/abort."""
    cdef pa_load *l
    cdef _Pool pool
    cdef readonly uint32_t n_tensors

    def __cinit__(self, _Pool pool, str name, uint32_t part, list tensors,
                  list sources, uint64_t meta_len, unsigned flags=0):
        cdef pa_model_desc d
        cdef pa_tensor_desc *td = NULL
        cdef pa_source_rec *sr = NULL
        cdef uint64_t *dims = NULL
        cdef size_t ndims = 0, k = 0, i
        cdef Py_ssize_t j
        cdef list keep = []
        cdef bytes b
        cdef pa_pool *p = pool._get()
        for t in tensors:
            ndims += len(t[2])
        try:
            td = <pa_tensor_desc *>calloc(len(tensors) + 1, sizeof(pa_tensor_desc))
            sr = <pa_source_rec *>calloc(len(sources) + 1, sizeof(pa_source_rec))
            dims = <uint64_t *>calloc(ndims + 1, sizeof(uint64_t))
            if td is NULL or sr is NULL or dims is NULL:
                raise MemoryError()
            for i, (tname, dtype, shape, nbytes, same_as) in enumerate(tensors):
                b = tname.encode("utf-8", "surrogateescape")
                keep.append(b)
                td[i].name = b
                td[i].dtype = dtype
                td[i].ndim = len(shape)
                td[i].dims = dims + k
                for j in range(len(shape)):
                    dims[k] = shape[j]
                    k += 1
                td[i].nbytes = nbytes
                td[i].same_as = same_as
            for i, (spath, size, mtime_ns, ino, dev) in enumerate(sources):
                b = os.fsencode(spath)
                keep.append(b)
                sr[i].path = b
                sr[i].size = size
                sr[i].mtime_ns = mtime_ns
                sr[i].ino = ino
                sr[i].dev = dev
            b = name.encode("utf-8", "surrogateescape")
            keep.append(b)
            memset(&d, 0, sizeof(d))
            d.name = b
            d.part = part
            d.n_tensors = len(tensors)
            d.tensors = td
            d.n_sources = len(sources)
            d.sources = sr
            d.meta_len = meta_len
            d.flags = flags
            with nogil:
                rc = pa_load_begin(&self.l, p, &d)
            check(rc)
            self.pool = pool
            self.n_tensors = len(tensors)
            pool.holds += 1
        finally:
            free(td)
            free(sr)
            free(dims)

    def __dealloc__(self):
        if self.l is not NULL:
            pa_load_abort(&self.l)
        if self.pool is not None:
            self.pool.holds -= 1
            self.pool._maybe_close()

    @property
    def model_id(self):
        return pa_load_model_id(self._get())

    cdef pa_load *_get(self) except NULL:
        if self.l is NULL:
            raise ValueError("load already committed or aborted")
        return self.l

    def offset(self, size_t i):
        """Pool offset where tensor i goes (i == n_tensors: the blob)."""
        cdef uint64_t off
        check(pa_load_offset(self._get(), i, &off))
        return off

    def set_crc(self, size_t i, uint32_t crc):
        """Record the CRC32C of what was written for slot i."""
        check(pa_load_set_crc(self._get(), i, crc))

    def commit(self, bint keep_lease=False):
        """Make the model READY; returns its id."""
        cdef uint64_t mid = 0
        cdef pa_load *l = self._get()
        with nogil:
            rc = pa_load_commit(&l, keep_lease, &mid)
        if rc == 0:
            self.l = NULL
        check(rc)
        return mid

    def abort(self):
        """Drop the model and its extents (idempotent)."""
        cdef pa_load *l = self.l
        if l is NULL:
            return
        self.l = NULL
        with nogil:
            rc = pa_load_abort(&l)
        check(rc)
