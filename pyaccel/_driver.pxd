# cython: language_level=3
# Declarations of the C core's public header; nothing else lives here.
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from posix.types cimport off_t

cdef extern from "sys/types.h":
    ctypedef long ssize_t

cdef extern from "pyaccel.h" nogil:
    const char *pa_version()
    const char *pa_errormsg()

    enum pa_kind:
        PA_KIND_UNKNOWN
        PA_KIND_DEVDAX
        PA_KIND_HUGETLBFS
        PA_KIND_FSDAX
        PA_KIND_BLOCK
        PA_KIND_TMPFS
        PA_KIND_FILE

    enum pa_granularity:
        PA_GRAN_BYTE
        PA_GRAN_CACHE_LINE
        PA_GRAN_PAGE

    struct pa_source_info:
        pa_kind kind
        pa_granularity granularity
        int persistent
        int numa_node
        int target_node
        uint64_t size
        uint64_t align
        uint64_t fs_magic
        char devname[64]

    int pa_source_classify(const char *path, const char *sysfs_root, pa_source_info *info)
    const char *pa_kind_name(pa_kind kind)
    const char *pa_granularity_name(pa_granularity gran)

    struct pa_map:
        pass

    unsigned PA_MAP_READONLY, PA_MAP_CREATE, PA_MAP_POPULATE, PA_MAP_NO_SYNC, PA_MAP_EXCL

    struct pa_map_cfg:
        const char *path
        uint64_t offset
        uint64_t length
        unsigned flags
        unsigned mode
        const char *sysfs_root

    int pa_map_new(pa_map **out, const pa_map_cfg *cfg)
    int pa_map_delete(pa_map **m)
    void *pa_map_addr(const pa_map *m)
    uint64_t pa_map_length(const pa_map *m)
    uint64_t pa_map_offset(const pa_map *m)
    uint64_t pa_map_align(const pa_map *m)
    pa_kind pa_map_kind(const pa_map *m)
    pa_granularity pa_map_granularity(const pa_map *m)
    int pa_map_is_persistent(const pa_map *m)
    int pa_map_is_readonly(const pa_map *m)
    int pa_map_is_sync(const pa_map *m)
    int pa_map_fd(const pa_map *m)
    const pa_source_info *pa_map_source(const pa_map *m)
    const char *pa_map_fallback(const pa_map *m)
    int pa_map_populate(pa_map *m, uint64_t off, uint64_t len, int write)
    int pa_map_flush(pa_map *m, const void *addr, size_t len)
    int pa_map_drain(pa_map *m)
    int pa_map_persist(pa_map *m, const void *addr, size_t len)
    unsigned PA_MEM_NOFLUSH, PA_MEM_NODRAIN, PA_MEM_TEMPORAL, PA_MEM_NONTEMPORAL
    int pa_map_memcpy(pa_map *m, void *dst, const void *src, size_t len, unsigned flags)
    const char *pa_flush_method()

    uint32_t pa_crc32c(uint32_t crc, const void *buf, size_t len)
    uint32_t pa_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
    const char *pa_crc32c_impl()
    uint32_t pa_crc32c_sw(uint32_t crc, const void *buf, size_t len)

    enum pa_fault_point:
        PA_FAULT_WRITE
        PA_FAULT_FLUSH
        PA_FAULT_ALLOC

    enum pa_fault_action:
        PA_FAULT_FAIL
        PA_FAULT_EXIT

    int pa_fault_set(pa_fault_point point, uint64_t nth, pa_fault_action action)
    void pa_fault_clear()
    uint64_t pa_fault_count(pa_fault_point point)

    struct pa_stream:
        pass

    struct pa_io:
        int fd
        const void *src
        uint64_t src_off
        uint64_t len
        uint64_t dst_off

    int PA_STREAM_DIRECT_AUTO, PA_STREAM_DIRECT_NEVER, PA_STREAM_DIRECT_ALWAYS
    int PA_STREAM_VIA_AUTO, PA_STREAM_VIA_MAP, PA_STREAM_VIA_WRITE

    struct pa_stream_cfg:
        unsigned threads
        uint64_t chunk
        int direct
        int nopersist
        int keep_mapped
        int via

    int pa_stream_new(pa_stream **out, pa_map *dst, const pa_stream_cfg *cfg)
    ssize_t pa_stream_add(pa_stream *s, const pa_io *io)
    int pa_stream_run(pa_stream *s)
    void pa_stream_cancel(pa_stream *s)
    void pa_stream_progress(const pa_stream *s, uint64_t *done, uint64_t *total)
    int pa_stream_crc(const pa_stream *s, size_t i, uint32_t *crc)
    uint64_t pa_stream_direct_bytes(const pa_stream *s)
    int pa_stream_delete(pa_stream **s)

    struct pa_pool:
        pass

    unsigned PA_POOL_CREATE, PA_POOL_FORCE, PA_POOL_RDONLY, PA_POOL_RECOVER
    int PA_NAME_MAX, PA_PARTS_MAX

    struct pa_part_cfg:
        const char *name
        uint64_t size

    struct pa_pool_cfg:
        const char *path
        uint64_t size
        unsigned flags
        unsigned mode
        uint32_t nparts
        const pa_part_cfg *parts
        uint64_t catalog_size
        const char *sysfs_root

    int pa_pool_open(pa_pool **out, const pa_pool_cfg *cfg)
    int pa_pool_close(pa_pool **p)
    pa_map *pa_pool_map(pa_pool *p)

    struct pa_pool_stat:
        uint8_t uuid[16]
        uint32_t format_major, format_minor
        uint64_t compat, incompat, ro_compat
        uint64_t size, data_size, used, free, largest_free, logical, dedup_saved
        uint64_t generation, created_ns, catalog_offset, catalog_size, data_offset
        uint32_t n_models, n_loading, n_tensors, n_extents, n_parts, frag_ppm
        pa_kind kind
        pa_granularity granularity
        int persistent, clean, needs_fsck
        uint32_t damage

    uint32_t PA_DAMAGE_SB_PRIMARY, PA_DAMAGE_SB_BACKUP, PA_DAMAGE_CATALOG_OLD
    uint32_t PA_DAMAGE_CATALOG_NEW, PA_DAMAGE_STATE, PA_DAMAGE_UNCLEAN

    int pa_pool_stat_get "pa_pool_stat"(pa_pool *p, pa_pool_stat *st)

    struct pa_part_info:
        char name[64]
        uint64_t offset, size, used, free, largest_free

    int pa_pool_part(pa_pool *p, uint32_t i, pa_part_info *info)
    int pa_pool_part_find(pa_pool *p, const char *name)
    int pa_pool_refresh(pa_pool *p)

    enum pa_model_state:
        PA_MODEL_LOADING
        PA_MODEL_READY

    struct pa_model_info:
        uint64_t id
        const char *name
        pa_model_state state
        uint32_t part, n_tensors, n_sources
        uint64_t bytes, stored, created_ns, last_used_ns, content_hash
        uint64_t meta_off, meta_len
        uint32_t meta_crc, flags
        int64_t owner_pid

    struct pa_tensor_info:
        const char *name
        uint32_t dtype, ndim
        const uint64_t *dims
        uint64_t offset, nbytes, extent_id
        uint32_t crc32c, refcount

    struct pa_source_rec:
        const char *path
        uint64_t size
        int64_t mtime_ns
        uint64_t ino, dev

    ssize_t pa_pool_model_count(pa_pool *p)
    int pa_pool_model_at(pa_pool *p, size_t i, pa_model_info *m)
    int pa_pool_model_find(pa_pool *p, const char *name, pa_model_info *m)
    int pa_pool_model_get(pa_pool *p, uint64_t id, pa_model_info *m)
    int pa_pool_tensor_at(pa_pool *p, uint64_t model_id, size_t i, pa_tensor_info *t)
    int pa_pool_source_at(pa_pool *p, uint64_t model_id, size_t i, pa_source_rec *s)

    unsigned PA_LEASE_WAIT
    int pa_pool_lease(pa_pool *p, uint64_t id, unsigned flags)
    int pa_pool_unlease(pa_pool *p, uint64_t id)
    int pa_pool_in_use(pa_pool *p, uint64_t id)
    int pa_pool_evict(pa_pool *p, uint64_t id)

    struct pa_load:
        pass

    struct pa_tensor_desc:
        const char *name
        uint32_t dtype, ndim
        const uint64_t *dims
        uint64_t nbytes
        int64_t same_as

    unsigned PA_LOAD_NO_EVICT

    struct pa_model_desc:
        const char *name
        uint32_t part, n_tensors
        const pa_tensor_desc *tensors
        uint32_t n_sources
        const pa_source_rec *sources
        uint64_t meta_len
        unsigned flags

    int pa_load_begin(pa_load **out, pa_pool *p, const pa_model_desc *desc)
    uint64_t pa_load_model_id(const pa_load *l)
    int pa_load_offset(const pa_load *l, size_t i, uint64_t *off)
    int pa_load_set_crc(pa_load *l, size_t i, uint32_t crc)
    int pa_load_commit(pa_load **l, int keep_lease, uint64_t *model_id)
    int pa_load_abort(pa_load **l)

    struct pa_fsck_report:
        uint32_t stale_loads
        uint64_t leaked_bytes
        uint32_t refcounts_fixed, orphan_extents, bad_records, repaired, damage
        char text[4096]

    unsigned PA_FSCK_REPAIR
    int pa_pool_fsck(pa_pool *p, unsigned flags, pa_fsck_report *r)
    ssize_t pa_pool_verify(pa_pool *p, uint64_t id, uint64_t *bad, size_t max_bad, uint64_t *checked_bytes)
