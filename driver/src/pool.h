/* SPDX-License-Identifier: MIT */
/*
 * pool.h -- the pool's on-media format and in-memory state (internal)
 *
 * Layout of a pool (all integers little-endian):
 *
 *   0        superblock, primary copy        (immutable after creation)
 *   4096     superblock, backup copy
 *   8192     state page: two copies of the small mutable record
 *            (clean/dirty, boot id, generations being / last committed)
 *   12288    hints: last-used times per model (lossy, lock-free)
 *   cat_off  catalog copy 0, then catalog copy 1 (cat_size bytes each)
 *   data_off extents, 2 MiB aligned, cut into partitions
 *
 * Crash consistency -- why double-buffered catalog copies and not a redo
 * log: a catalog commit writes the whole catalog into the copy that does
 * not hold the newest generation, persists it, then writes that copy's
 * header (generation + 1, checksum) and persists it.  Until the header is
 * durable the older copy is the valid newest one, so a crash at any
 * instant leaves the catalog as before or as after.  Data extents are
 * persisted before the commit that makes them reachable.  Copies are
 * bounded (the catalog holds only metadata), readers never wait -- they
 * copy the newest valid copy and check its generation again after the
 * copy, like a seqlock -- and there is no log to replay.  The state page
 * records the generation being committed and the last one committed, which
 * tells an interrupted commit (harmless) from a damaged copy (reported).
 *
 * Locks (OFD byte-range locks on the pool's own fd, which die with it):
 *   byte 0            writer lock: catalog commits and state updates
 *   byte 1            read-write users (shared); exclusive = last one out
 *   byte 2            read-only users (shared)
 *   LEASE_BASE + id   model leases: shared while used, exclusive while
 *                     loading or being evicted
 */
#ifndef PA_POOL_H
#define PA_POOL_H 1

#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>

#include "internal.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the pool format is little-endian; big-endian hosts are not supported"
#endif

#define PA_SB_MAGIC "PYACCEL-POOL-v1"
#define PA_FORMAT_MAJOR 1
#define PA_FORMAT_MINOR 0
/* feature bits this version understands */
#define PA_INCOMPAT_KNOWN 0ULL
#define PA_RO_COMPAT_KNOWN 0ULL

#define PA_SB_OFF 0ULL
#define PA_SB_BACKUP_OFF 4096ULL
#define PA_STATE_OFF 8192ULL
#define PA_HINTS_OFF 12288ULL
#define PA_HINTS_N 4096
#define PA_HINTS_SIZE (PA_HINTS_N * 16ULL)
#define PA_DATA_ALIGN (2 * PA_MIB)
#define PA_POOL_MIN_SIZE (4 * PA_MIB)

#define LOCK_WRITER 0
#define LOCK_USERS 1
#define LOCK_READERS 2
#define LEASE_BASE (1ULL << 40)

struct pa_sb_part {
	char name[PA_NAME_MAX + 1];
	uint64_t off, size;
};

struct pa_sb {
	char magic[16];
	uint32_t major, minor;
	uint64_t compat, incompat, ro_compat;
	uint8_t uuid[16];
	uint32_t kind, granularity;
	uint64_t size;
	uint64_t align;		/* alignment of large extents */
	uint64_t created_ns;
	uint64_t cat_off, cat_size;
	uint64_t data_off, data_size;
	uint32_t nparts, pad0;
	struct pa_sb_part parts[PA_PARTS_MAX];
	uint32_t checksum;	/* crc32c of the struct with this field 0 */
	uint32_t pad1;
};
_Static_assert(sizeof(struct pa_sb) <= 4096, "superblock fits a page");

#define PA_STATE_MAGIC "PASTATE"
#define PA_STATE_COPY 256 /* bytes between the two copies */

struct pa_state {
	char magic[8];
	uint64_t seq;		/* the copy with the higher valid seq wins */
	uint32_t dirty;		/* a read-write user has it open */
	uint32_t needs_fsck;	/* unclean shutdown or damage: run fsck */
	uint8_t boot_id[16];	/* boot of whoever set dirty */
	uint64_t committing;	/* generation being written */
	uint64_t committed;	/* last generation fully committed */
	uint32_t checksum;
	uint32_t pad;
};

#define PA_CAT_MAGIC "PACATLG"

struct pa_cat_hdr {
	char magic[8];
	uint64_t generation;
	uint32_t checksum;	/* crc32c of header (this field 0) + body */
	uint32_t flags;
	uint64_t used;		/* header + body bytes */
	uint64_t next_model_id, next_extent_id;
	uint32_t n_models, n_tensors, n_extents, n_sources;
	uint64_t n_dims, strings_len;
	uint64_t reserved[6];
};
_Static_assert(sizeof(struct pa_cat_hdr) == 128, "catalog header size");

struct pa_cat_model {
	uint64_t id;
	uint32_t state, part;
	uint32_t name_off, name_len;
	uint32_t first_tensor, n_tensors;
	uint32_t first_source, n_sources;
	uint64_t bytes, created_ns, content_hash;
	uint64_t meta_extent, meta_len;
	int64_t owner_pid;
	uint32_t flags, pad;
	uint64_t reserved[4];
};
_Static_assert(sizeof(struct pa_cat_model) == 128, "model record size");

struct pa_cat_tensor {
	uint32_t name_off, name_len;
	uint32_t dtype, ndim;
	uint64_t dims_index;
	uint64_t extent_id;
	uint64_t nbytes;
	uint64_t reserved;
};
_Static_assert(sizeof(struct pa_cat_tensor) == 48, "tensor record size");

struct pa_cat_extent {
	uint64_t id, offset, length, alloc;
	uint32_t crc, refcount;
	uint32_t part, flags;
};
_Static_assert(sizeof(struct pa_cat_extent) == 48, "extent record size");

struct pa_cat_source {
	uint32_t path_off, path_len;
	uint64_t size;
	int64_t mtime_ns;
	uint64_t ino, dev;
};
_Static_assert(sizeof(struct pa_cat_source) == 40, "source record size");

/* model flags */
#define PA_MODEL_F_SUPERSEDED (1u << 0) /* a newer version has the name */

/* ---- in memory ---- */

struct mem_tensor {
	char *name;
	uint32_t dtype, ndim;
	uint64_t *dims;
	uint64_t extent_id;
	uint64_t nbytes;
};

struct mem_source {
	char *path;
	uint64_t size;
	int64_t mtime_ns;
	uint64_t ino, dev;
};

struct mem_model {
	uint64_t id;
	uint32_t state, part;
	char *name;
	uint32_t n_tensors, n_sources;
	struct mem_tensor *tensors;
	struct mem_source *sources;
	uint64_t bytes, created_ns, content_hash;
	uint64_t meta_extent, meta_len;
	int64_t owner_pid;
	uint32_t flags;
	void *arena;		/* one block holding tensors, names, dims */
};

struct mem_cat {
	uint64_t generation;
	uint64_t next_model_id, next_extent_id;
	struct mem_model *models;
	uint32_t n_models, cap_models;
	struct pa_cat_extent *extents; /* sorted by id */
	uint32_t n_extents, cap_extents;
};

struct lease {
	uint64_t id;
	uint32_t count;
};

struct pa_pool {
	pthread_mutex_t mu;
	struct pa_map *map;
	char *base;
	int fd;
	bool rdonly;
	bool recover;
	struct pa_sb sb;
	struct pa_state state;	/* as last read or written */
	int state_slot;		/* copy the last write went to */
	uint32_t damage;
	struct mem_cat cat;
	struct lease *leases;
	uint32_t n_leases, cap_leases;
	char path[4096];
};

/* pool.c */
int pool_lock(struct pa_pool *p, uint64_t byte, short type, bool wait);
int pool_unlock(struct pa_pool *p, uint64_t byte);
/* 1 when another open file description holds a lock conflicting with an
 * exclusive one on byte, 0 when not */
int pool_lock_probe(struct pa_pool *p, uint64_t byte);
int pool_write(struct pa_pool *p, uint64_t off, const void *src, size_t len);
int pool_persist(struct pa_pool *p, uint64_t off, size_t len);
int state_write(struct pa_pool *p);
int state_read_locked(struct pa_pool *p);
uint32_t lease_count(const struct pa_pool *p, uint64_t id);
int lease_add(struct pa_pool *p, uint64_t id);
uint64_t pool_now_ns(void);
void hint_touch(struct pa_pool *p, uint64_t id);
uint64_t hint_last_used(const struct pa_pool *p, uint64_t id);

/* catalog.c */
void cat_free(struct mem_cat *c);
void model_free(struct mem_model *m);
int cat_read(struct pa_pool *p, struct mem_cat *out, uint32_t *damage);
int cat_read_full(struct pa_pool *p, struct mem_cat *out, uint32_t *damage,
		  bool full);
int cat_commit(struct pa_pool *p);
int pool_reload(struct pa_pool *p);
int pool_lease_locked(struct pa_pool *p, uint64_t id, unsigned flags);
int cat_newest_generation(struct pa_pool *p, uint64_t *gen);
struct pa_cat_extent *cat_extent(struct mem_cat *c, uint64_t id);
int cat_extent_add(struct mem_cat *c, const struct pa_cat_extent *e);
void cat_extent_remove(struct mem_cat *c, uint64_t id);
struct mem_model *cat_model(struct mem_cat *c, uint64_t id);
int cat_model_append(struct mem_cat *c, struct mem_model *m);
void cat_model_remove(struct mem_cat *c, uint64_t id);
/* drop model id and the extents only it referenced */
void cat_model_drop(struct mem_cat *c, uint64_t id);
int model_build(struct mem_model *m, const struct pa_model_desc *d);
/* refresh p->cat from the media if a newer generation is there */
int pool_refresh_locked(struct pa_pool *p);

/* alloc.c */
struct gap {
	uint64_t off, len;
};

struct gaps {
	struct gap *v;
	uint32_t n;
};

int gaps_build(struct pa_pool *p, struct mem_cat *c, uint32_t part,
	       struct gaps *g);
int gaps_take(struct gaps *g, uint64_t size, uint64_t align, uint64_t *off);
void gaps_free(struct gaps *g);
uint64_t extent_align(const struct pa_pool *p, uint64_t len);
void part_usage(struct pa_pool *p, struct mem_cat *c, uint32_t part,
		uint64_t *used, uint64_t *free_, uint64_t *largest);

#endif /* PA_POOL_H */
