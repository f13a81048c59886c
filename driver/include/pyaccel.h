/* SPDX-License-Identifier: MIT */
/*
 * pyaccel.h -- userspace driver for persistent, shared weight pools
 *
 * The C core of pyaccel.  It maps a backing store -- a device-DAX character
 * device, a hugetlbfs file, a file on an fsdax filesystem, a memory-backed
 * block device, or a file on tmpfs or any other filesystem -- and keeps a
 * crash-consistent, checksummed pool of tensors in it that many processes
 * read at once with plain loads.
 *
 * Conventions (as in liburing and libpmem2):
 *  - every function that can fail returns 0 (or a count, as ssize_t) on
 *    success, or a negative errno value on failure;
 *  - on failure a message is left in thread-local storage, readable with
 *    pa_errormsg() until the next failing call on the same thread;
 *  - objects are opaque; a *_new / *_open function allocates one and the
 *    matching *_delete / *_close function frees it and sets the pointer NULL.
 */
#ifndef PYACCEL_H
#define PYACCEL_H 1

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#define PA_VERSION_MAJOR 0
#define PA_VERSION_MINOR 1
#define PA_VERSION_PATCH 0

/* pa_version -- the library's version as "major.minor.patch" */
const char *pa_version(void);

/* pa_errormsg -- the message left by the last failing call on this thread */
const char *pa_errormsg(void);

/* ------------------------------------------------------------------------ */
/* Sources: what a path is                                                   */
/* ------------------------------------------------------------------------ */

enum pa_kind {
	PA_KIND_UNKNOWN = 0,
	PA_KIND_DEVDAX = 1,	/* /dev/daxX.Y character device */
	PA_KIND_HUGETLBFS = 2,	/* file on a hugetlbfs mount */
	PA_KIND_FSDAX = 3,	/* file on a filesystem mounted with -o dax */
	PA_KIND_BLOCK = 4,	/* block device (null_blk, brd, loop, ...) */
	PA_KIND_TMPFS = 5,	/* file on tmpfs (the emulation default) */
	PA_KIND_FILE = 6,	/* file on any other filesystem */
};

/*
 * What a store must do to make a write durable (libpmem2's granularity):
 * BYTE -- nothing beyond ordering (memory, or an eADR power domain);
 * CACHE_LINE -- flush the CPU cache lines (clwb / clflushopt / clflush);
 * PAGE -- write back whole pages through the kernel (msync).
 */
enum pa_granularity {
	PA_GRAN_BYTE = 0,
	PA_GRAN_CACHE_LINE = 1,
	PA_GRAN_PAGE = 2,
};

struct pa_source_info {
	enum pa_kind kind;
	enum pa_granularity granularity; /* the best a mapping can get */
	int persistent;		/* contents survive a reboot */
	int numa_node;		/* -1 when unknown */
	int target_node;	/* -1 when absent (CXL / HMEM target node) */
	uint64_t size;		/* bytes: file size or device size */
	uint64_t align;		/* offsets and lengths must be multiples */
	uint64_t fs_magic;	/* statfs f_type, 0 for devices */
	char devname[64];	/* "dax0.0", "loop3", "" for files */
};

/*
 * pa_source_classify -- classify path from stat, statfs, statx and sysfs
 *
 * sysfs_root overrides "/sys" (NULL: the PYACCEL_SYSFS_ROOT environment
 * variable, else "/sys"), so tests can point it at a fake tree.
 * Returns -errno on error, or zero on success.
 */
int pa_source_classify(const char *path, const char *sysfs_root,
		       struct pa_source_info *info);

/* pa_kind_name -- "devdax", "hugetlbfs", "fsdax", "block", "tmpfs", "file" */
const char *pa_kind_name(enum pa_kind kind);

/* pa_granularity_name -- "byte", "cache_line", "page" */
const char *pa_granularity_name(enum pa_granularity gran);

/* ------------------------------------------------------------------------ */
/* Mappings                                                                  */
/* ------------------------------------------------------------------------ */

struct pa_map;

#define PA_MAP_READONLY (1u << 0) /* PROT_READ only */
#define PA_MAP_CREATE (1u << 1)	  /* files: create, size and reserve */
#define PA_MAP_POPULATE (1u << 2) /* pre-fault every page now */
#define PA_MAP_NO_SYNC (1u << 3)  /* fsdax: do not try MAP_SYNC */
#define PA_MAP_EXCL (1u << 4)	  /* with CREATE: the file must not exist */

struct pa_map_cfg {
	const char *path;
	uint64_t offset;	/* multiple of the source's align */
	uint64_t length;	/* 0: from offset to the end of the source */
	unsigned flags;		/* PA_MAP_* */
	unsigned mode;		/* file mode for PA_MAP_CREATE (0: 0660) */
	const char *sysfs_root;	/* as for pa_source_classify */
};

/*
 * pa_map_new -- map a DAX, hugetlbfs, block or file source
 *
 * Files are sized and their blocks reserved with fallocate when
 * PA_MAP_CREATE is given, so a shortage of memory or hugepages is -ENOMEM or
 * -ENOSPC here and never a SIGBUS later.  Lengths are rounded up to the
 * hugepage size on hugetlbfs; on device-DAX offset and length must be
 * multiples of the device's align (-EINVAL otherwise).
 * Returns -errno on error, or zero on success.
 */
int pa_map_new(struct pa_map **out, const struct pa_map_cfg *cfg);

/* pa_map_delete -- unmap, close and free *m, and set *m to NULL */
int pa_map_delete(struct pa_map **m);

void *pa_map_addr(const struct pa_map *m);
uint64_t pa_map_length(const struct pa_map *m);
uint64_t pa_map_offset(const struct pa_map *m);
uint64_t pa_map_align(const struct pa_map *m);
enum pa_kind pa_map_kind(const struct pa_map *m);
enum pa_granularity pa_map_granularity(const struct pa_map *m);
int pa_map_is_persistent(const struct pa_map *m);
int pa_map_is_readonly(const struct pa_map *m);
int pa_map_is_sync(const struct pa_map *m); /* MAP_SYNC in effect */
int pa_map_fd(const struct pa_map *m);
const struct pa_source_info *pa_map_source(const struct pa_map *m);
/* why a weaker mapping than asked for was used, or "" */
const char *pa_map_fallback(const struct pa_map *m);

/*
 * pa_map_populate -- pre-fault [off, off + len) of the mapping
 *
 * Uses MADV_POPULATE_WRITE / _READ, which report a failure as an error;
 * where the kernel lacks them each page is touched under a SIGBUS guard.
 * Returns -errno on error (-EFAULT for a page that cannot be backed),
 * or zero on success.
 */
int pa_map_populate(struct pa_map *m, uint64_t off, uint64_t len, int write);

/* pa_map_flush -- start writing back [addr, addr + len) */
int pa_map_flush(struct pa_map *m, const void *addr, size_t len);
/* pa_map_drain -- wait until every flush started so far is durable */
int pa_map_drain(struct pa_map *m);
/* pa_map_persist -- flush + drain */
int pa_map_persist(struct pa_map *m, const void *addr, size_t len);

#define PA_MEM_NOFLUSH (1u << 0)     /* do not flush or drain */
#define PA_MEM_NODRAIN (1u << 1)     /* flush, but leave the drain to the caller */
#define PA_MEM_TEMPORAL (1u << 2)    /* force cached stores */
#define PA_MEM_NONTEMPORAL (1u << 3) /* force non-temporal stores */

/*
 * pa_map_memcpy -- copy len bytes to dst inside the mapping, and persist
 *
 * Above 256 bytes, on CACHE_LINE and BYTE granularity mappings, the copy
 * uses non-temporal stores (unless PA_MEM_TEMPORAL), which need no cache
 * flush, only a fence.
 * Returns -errno on error, or zero on success.
 */
int pa_map_memcpy(struct pa_map *m, void *dst, const void *src, size_t len,
		  unsigned flags);

/* pa_flush_method -- "clwb", "clflushopt", "clflush" or "none" (by CPUID) */
const char *pa_flush_method(void);

/* ------------------------------------------------------------------------ */
/* Checksums                                                                 */
/* ------------------------------------------------------------------------ */

/* pa_crc32c -- extend crc (start with 0) over len bytes of buf */
uint32_t pa_crc32c(uint32_t crc, const void *buf, size_t len);
/* pa_crc32c_combine -- CRC of A||B from crc(A), crc(B) and len(B) */
uint32_t pa_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b);
/* pa_crc32c_impl -- "sse4.2" or "table" */
const char *pa_crc32c_impl(void);
/* pa_crc32c_sw -- the portable table version (to test the fast one) */
uint32_t pa_crc32c_sw(uint32_t crc, const void *buf, size_t len);

/* ------------------------------------------------------------------------ */
/* Fault injection (tests)                                                   */
/* ------------------------------------------------------------------------ */

enum pa_fault_point {
	PA_FAULT_WRITE = 0, /* a write into the pool (data, catalog, state) */
	PA_FAULT_FLUSH = 1, /* a persist of pool memory */
	PA_FAULT_ALLOC = 2, /* an extent allocation */
};

enum pa_fault_action {
	PA_FAULT_FAIL = 0, /* the call returns -EIO (-ENOSPC for ALLOC) */
	PA_FAULT_EXIT = 1, /* the process dies on the spot (_exit(86)) */
};

/*
 * pa_fault_set -- make the nth (1-based) event at point fail or exit
 *
 * Counting starts at this call.  The environment variable PYACCEL_FAULT
 * ("write:5:exit", "alloc:1:fail") sets the same at library load.
 * Returns -errno on error, or zero on success.
 */
int pa_fault_set(enum pa_fault_point point, uint64_t nth,
		 enum pa_fault_action action);
/* pa_fault_clear -- turn fault injection off */
void pa_fault_clear(void);
/* pa_fault_count -- events seen at point since the last pa_fault_set */
uint64_t pa_fault_count(enum pa_fault_point point);

/* ------------------------------------------------------------------------ */
/* Streaming copies                                                          */
/* ------------------------------------------------------------------------ */

struct pa_stream;

struct pa_io {
	int fd;		  /* source file, or -1 to copy from src */
	const void *src;  /* source memory when fd < 0 */
	uint64_t src_off; /* offset in the file */
	uint64_t len;	  /* bytes */
	uint64_t dst_off; /* offset in the destination mapping */
};

#define PA_STREAM_DIRECT_AUTO 0	  /* O_DIRECT when the file is not cached */
#define PA_STREAM_DIRECT_NEVER 1  /* always buffered reads */
#define PA_STREAM_DIRECT_ALWAYS 2 /* O_DIRECT wherever the file allows */

struct pa_stream_cfg {
	unsigned threads;	/* 0: max(online CPUs, 4), at most 16 */
	uint64_t chunk;		/* bytes per request, 0: 4 MiB */
	int direct;		/* PA_STREAM_DIRECT_* */
	int nopersist;		/* skip the persist (caller does it) */
	int keep_mapped;	/* leave written pages in this process's page
				 * tables (default: drop them once written, so
				 * streaming does not grow the writer's RSS) */
	int via;		/* PA_STREAM_VIA_*: how bytes reach dst */
};

#define PA_STREAM_VIA_AUTO 0  /* pwrite for disk files and block devices */
#define PA_STREAM_VIA_MAP 1   /* always through the mapping */
#define PA_STREAM_VIA_WRITE 2 /* pwrite to dst's fd (tmpfs, block, file) */

/*
 * pa_stream_new -- a batch of copies into the mapping dst
 *
 * Each io is cut into chunks that worker threads read concurrently: with
 * O_DIRECT straight into dst where offsets align, else through a bounded
 * staging buffer per thread (4 x chunk bytes in all at most 64 MiB), or
 * with buffered pread() straight into dst.  The CRC32C of every io is
 * computed while its chunks are still in cache.
 * Returns -errno on error, or zero on success.
 */
int pa_stream_new(struct pa_stream **out, struct pa_map *dst,
		  const struct pa_stream_cfg *cfg);
/* pa_stream_add -- queue one io; returns its index, or -errno */
ssize_t pa_stream_add(struct pa_stream *s, const struct pa_io *io);
/* pa_stream_run -- do every queued io; returns -errno on the first failure
 * (-ECANCELED after pa_stream_cancel), or zero on success */
int pa_stream_run(struct pa_stream *s);
/* pa_stream_cancel -- ask a running stream to stop soon (any thread) */
void pa_stream_cancel(struct pa_stream *s);
/* pa_stream_progress -- bytes copied so far and in all (any thread) */
void pa_stream_progress(const struct pa_stream *s, uint64_t *done,
			uint64_t *total);
/* pa_stream_crc -- CRC32C of io i after a successful run */
int pa_stream_crc(const struct pa_stream *s, size_t i, uint32_t *crc);
/* pa_stream_used_direct -- how many bytes were read with O_DIRECT */
uint64_t pa_stream_direct_bytes(const struct pa_stream *s);
/* pa_stream_delete -- free *s and set it NULL */
int pa_stream_delete(struct pa_stream **s);

/* ------------------------------------------------------------------------ */
/* Pools                                                                     */
/* ------------------------------------------------------------------------ */

struct pa_pool;

#define PA_POOL_CREATE (1u << 0)  /* format a new pool */
#define PA_POOL_FORCE (1u << 1)	  /* with CREATE: overwrite what is there */
#define PA_POOL_RDONLY (1u << 2)  /* map read-only; no loads, no evicts */
#define PA_POOL_RECOVER (1u << 3) /* open an unclean or damaged pool (fsck) */

#define PA_NAME_MAX 63
#define PA_PARTS_MAX 16

struct pa_part_cfg {
	const char *name;
	uint64_t size;		/* 0 for the last: what is left */
};

struct pa_pool_cfg {
	const char *path;
	uint64_t size;		/* CREATE on a file: its size */
	unsigned flags;		/* PA_POOL_* */
	unsigned mode;		/* CREATE on a file: its mode (0: 0660) */
	uint32_t nparts;	/* CREATE: 0 for one partition "default" */
	const struct pa_part_cfg *parts;
	uint64_t catalog_size;	/* CREATE: bytes per catalog copy, 0: auto */
	const char *sysfs_root;
};

/*
 * pa_pool_open -- open (or with PA_POOL_CREATE, format) the pool at path
 *
 * Errors beyond the usual: -ENODATA not a pool, -EPROTONOSUPPORT written by
 * a newer incompatible format, -EBADMSG a checksum does not match,
 * -EUCLEAN unclean shutdown on persistent media (open with PA_POOL_RECOVER
 * and run pa_pool_fsck), -EEXIST (CREATE without FORCE) a pool or other
 * data is already there.
 * Returns -errno on error, or zero on success.
 */
int pa_pool_open(struct pa_pool **out, const struct pa_pool_cfg *cfg);
/* pa_pool_close -- release leases and locks, mark clean, unmap, free */
int pa_pool_close(struct pa_pool **p);

struct pa_map *pa_pool_map(struct pa_pool *p);

struct pa_pool_stat {
	uint8_t uuid[16];
	uint32_t format_major, format_minor;
	uint64_t compat, incompat, ro_compat;
	uint64_t size;		/* the whole mapping */
	uint64_t data_size;	/* bytes for extents, all partitions */
	uint64_t used;		/* bytes allocated to extents */
	uint64_t free;
	uint64_t largest_free;
	uint64_t logical;	/* bytes the models would need without dedup */
	uint64_t dedup_saved;	/* logical - stored tensor bytes */
	uint64_t generation;	/* catalog generation */
	uint64_t created_ns;
	uint64_t catalog_offset;	/* first catalog copy; the second follows */
	uint64_t catalog_size;	/* bytes per catalog copy */
	uint64_t data_offset;	/* start of the extents */
	uint32_t n_models, n_loading, n_tensors, n_extents, n_parts;
	uint32_t frag_ppm;	/* 1e6 * (1 - largest_free / free) */
	enum pa_kind kind;
	enum pa_granularity granularity;
	int persistent;
	int clean;		/* last user closed it properly */
	int needs_fsck;		/* unclean shutdown or damage seen */
	uint32_t damage;	/* PA_DAMAGE_* seen at open */
};

#define PA_DAMAGE_SB_PRIMARY (1u << 0) /* primary superblock bad, copy used */
#define PA_DAMAGE_SB_BACKUP (1u << 1)  /* backup superblock bad */
#define PA_DAMAGE_CATALOG_OLD (1u << 2) /* the older catalog copy bad */
#define PA_DAMAGE_CATALOG_NEW (1u << 3) /* the newest committed copy bad */
#define PA_DAMAGE_STATE (1u << 4)      /* state page bad */
#define PA_DAMAGE_UNCLEAN (1u << 5)    /* rebooted while in use */

int pa_pool_stat(struct pa_pool *p, struct pa_pool_stat *st);

struct pa_part_info {
	char name[PA_NAME_MAX + 1];
	uint64_t offset, size, used, free, largest_free;
};

int pa_pool_part(struct pa_pool *p, uint32_t i, struct pa_part_info *info);
/* pa_pool_part_find -- index of the partition called name, or -ENOENT */
int pa_pool_part_find(struct pa_pool *p, const char *name);

/*
 * pa_pool_refresh -- pick up catalog commits made since the last look
 * Returns 1 when the catalog changed, 0 when not, or -errno.
 */
int pa_pool_refresh(struct pa_pool *p);

enum pa_model_state {
	PA_MODEL_LOADING = 1,
	PA_MODEL_READY = 2,
};

/*
 * Records returned below point into the pool's catalog snapshot: they stay
 * valid until the next pa_pool_refresh, load commit or evict on p.
 */
struct pa_model_info {
	uint64_t id;
	const char *name;
	enum pa_model_state state;
	uint32_t part;
	uint32_t n_tensors;
	uint32_t n_sources;
	uint64_t bytes;		/* sum of tensor sizes */
	uint64_t stored;	/* bytes of extents only this model uses */
	uint64_t created_ns;
	uint64_t last_used_ns;
	uint64_t content_hash;
	uint64_t meta_off, meta_len; /* the loader's blob, pool offsets */
	uint32_t meta_crc;
	uint32_t flags;
	int64_t owner_pid;	/* LOADING: the loader's pid */
};

struct pa_tensor_info {
	const char *name;
	uint32_t dtype;		/* the loader's code (ONNX data type) */
	uint32_t ndim;
	const uint64_t *dims;
	uint64_t offset;	/* in the pool mapping */
	uint64_t nbytes;
	uint64_t extent_id;
	uint32_t crc32c;
	uint32_t refcount;	/* tensors pointing at the extent */
};

struct pa_source_rec {
	const char *path;
	uint64_t size;
	int64_t mtime_ns;
	uint64_t ino;
	uint64_t dev;
};

/* pa_pool_model_count -- models in the snapshot (loading ones included) */
ssize_t pa_pool_model_count(struct pa_pool *p);
int pa_pool_model_at(struct pa_pool *p, size_t i, struct pa_model_info *m);
/* pa_pool_model_find -- the READY model called name, or -ENOENT */
int pa_pool_model_find(struct pa_pool *p, const char *name,
		       struct pa_model_info *m);
int pa_pool_model_get(struct pa_pool *p, uint64_t id, struct pa_model_info *m);
int pa_pool_tensor_at(struct pa_pool *p, uint64_t model_id, size_t i,
		      struct pa_tensor_info *t);
int pa_pool_source_at(struct pa_pool *p, uint64_t model_id, size_t i,
		      struct pa_source_rec *s);

#define PA_LEASE_WAIT (1u << 0) /* wait while a loader still holds it */

/*
 * pa_pool_lease -- hold model id for this process (a shared lock that dies
 * with it); while held it is never evicted and its bytes never reused.
 * Leases nest within a process.  -ENOENT when the model is gone (evicted
 * or its load aborted), -EAGAIN when it is loading and WAIT is not given.
 * Returns -errno on error, or zero on success.
 */
int pa_pool_lease(struct pa_pool *p, uint64_t id, unsigned flags);
int pa_pool_unlease(struct pa_pool *p, uint64_t id);
/* pa_pool_in_use -- 1 when some process (this one included) leases id */
int pa_pool_in_use(struct pa_pool *p, uint64_t id);

/* pa_pool_evict -- remove a READY model no one leases (-EBUSY if leased) */
int pa_pool_evict(struct pa_pool *p, uint64_t id);

/* Loading a model: begin (allocate, record as LOADING), write, commit. */
struct pa_load;

struct pa_tensor_desc {
	const char *name;
	uint32_t dtype;
	uint32_t ndim;
	const uint64_t *dims;
	uint64_t nbytes;
	int64_t same_as;	/* index of an earlier tensor with the very same
				 * bytes (its extent is shared), or -1 */
};

#define PA_LOAD_NO_EVICT (1u << 0) /* fail with -ENOSPC rather than evict */

struct pa_model_desc {
	const char *name;
	uint32_t part;
	uint32_t n_tensors;
	const struct pa_tensor_desc *tensors;
	uint32_t n_sources;
	const struct pa_source_rec *sources;
	uint64_t meta_len;	/* bytes of the loader's blob (0: none) */
	unsigned flags;		/* PA_LOAD_* */
};

/*
 * pa_load_begin -- allocate extents for every tensor and the blob (evicting
 * least-recently-used models no one leases when space is short) and commit
 * the model as LOADING, held by this process.
 * Returns -errno on error (-ENOSPC: does not fit), or zero on success.
 */
int pa_load_begin(struct pa_load **out, struct pa_pool *p,
		  const struct pa_model_desc *desc);
uint64_t pa_load_model_id(const struct pa_load *l);
/* pa_load_offset -- pool offset for tensor i (i == n_tensors: the blob) */
int pa_load_offset(const struct pa_load *l, size_t i, uint64_t *off);
/* pa_load_set_crc -- record the CRC32C of what was written for tensor i
 * (i == n_tensors: the blob) */
int pa_load_set_crc(struct pa_load *l, size_t i, uint32_t crc);
/*
 * pa_load_commit -- share extents with identical ones already stored and
 * make the model READY; the loader keeps a lease on it when keep_lease is
 * set.  The data must be persisted before: pa_stream does so for what it
 * copies (unless nopersist); bytes written another way need pa_map_persist.
 * Frees *l.
 */
int pa_load_commit(struct pa_load **l, int keep_lease, uint64_t *model_id);
/* pa_load_abort -- drop the model and its extents.  Frees *l. */
int pa_load_abort(struct pa_load **l);

struct pa_fsck_report {
	uint32_t stale_loads;	  /* LOADING records whose loader died */
	uint64_t leaked_bytes;	  /* bytes they held */
	uint32_t refcounts_fixed; /* extent refcounts that were wrong */
	uint32_t orphan_extents;  /* extents no tensor used */
	uint32_t bad_records;	  /* records out of bounds or overlapping */
	uint32_t repaired;	  /* 1 when a repaired catalog was committed */
	uint32_t damage;	  /* PA_DAMAGE_* found */
	char text[4096];	  /* what was found and done, one per line */
};

#define PA_FSCK_REPAIR (1u << 0)

/*
 * pa_pool_fsck -- check the catalog against itself and the locks; with
 * REPAIR, reclaim what dead loaders leaked, fix refcounts, rewrite damaged
 * copies and clear the unclean mark.
 * Returns -errno on error, or the number of problems found.
 */
int pa_pool_fsck(struct pa_pool *p, unsigned flags, struct pa_fsck_report *r);

/*
 * pa_pool_verify -- re-read the extents of model id (0: all) and check
 * their CRC32C; the ids of up to max_bad bad extents go into bad.
 * Returns -errno on error, or the number of bad extents.
 */
ssize_t pa_pool_verify(struct pa_pool *p, uint64_t id, uint64_t *bad,
		       size_t max_bad, uint64_t *checked_bytes);

#ifdef __cplusplus
}
#endif
#endif /* PYACCEL_H */
