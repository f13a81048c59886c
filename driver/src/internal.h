/* SPDX-License-Identifier: MIT */
/*
 * internal.h -- definitions shared by the C core's files, not exported
 */
#ifndef PA_INTERNAL_H
#define PA_INTERNAL_H 1

#include <errno.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "pyaccel.h"

#define PA_EXPORT __attribute__((visibility("default")))
#define PA_UNUSED __attribute__((unused))
#define PA_PRINTF(a, b) __attribute__((format(printf, a, b)))

#define PA_KIB (1024ULL)
#define PA_MIB (1024ULL * 1024ULL)
#define PA_GIB (1024ULL * 1024ULL * 1024ULL)
#define PA_CACHELINE 64
#define PA_PAGE 4096ULL

#define PA_ALIGN_UP(x, a) ((((x) + (a) - 1) / (a)) * (a))
#define PA_ALIGN_DOWN(x, a) (((x) / (a)) * (a))
#define PA_MIN(a, b) ((a) < (b) ? (a) : (b))
#define PA_MAX(a, b) ((a) > (b) ? (a) : (b))

/* errormsg.c */
void pa_err_set(const char *fmt, ...) PA_PRINTF(1, 2);
/* pa_err_set with ": strerror(errno)" appended; keeps errno */
void pa_err_errno(const char *fmt, ...) PA_PRINTF(1, 2);

/* Leave a message and return -errno from the current function. */
#define ERR(rc, ...) (pa_err_set(__VA_ARGS__), (rc))
#define ERR_W_ERRNO(...) (pa_err_errno(__VA_ARGS__), -errno)

/* fault.c -- returns 0, or the injected error (or does not return) */
int pa_fault_hit(enum pa_fault_point point);

/* source.c */
const char *pa_sysfs_root(const char *override);
int pa_read_sysfs_u64(const char *path, uint64_t *val);
int pa_read_sysfs_str(const char *path, char *buf, size_t len);

/* persist.c */
void pa_flush_lines(const void *addr, size_t len);
void pa_fence(void);
void pa_memcpy_nt(void *dst, const void *src, size_t len);

/* map.c: the parts each backend fills in */
struct pa_map {
	void *addr;
	uint64_t length;	/* mapped bytes */
	uint64_t offset;	/* offset in the source */
	int fd;
	unsigned flags;		/* cfg flags */
	bool sync;		/* MAP_SYNC in effect */
	enum pa_granularity gran;
	struct pa_source_info src;
	char fallback[160];
	char path[4096];
	uint64_t fresh_off, fresh_len;	/* range this map_new reserved */
	uint64_t huge_bytes;	/* of it, made huge pages at creation */
};

int pa_map_devdax(struct pa_map *m, const struct pa_map_cfg *cfg);
int pa_map_hugetlb(struct pa_map *m, const struct pa_map_cfg *cfg);
int pa_map_file(struct pa_map *m, const struct pa_map_cfg *cfg);
int pa_map_block(struct pa_map *m, const struct pa_map_cfg *cfg);
/* map.c: mmap m->fd at [offset, offset + length) with prot from flags */
int pa_map_mmap(struct pa_map *m, int extra_flags);
/* map.c: size a file and reserve its blocks */
int pa_file_reserve(int fd, const char *path, uint64_t size, bool hugetlb);

/* Number of online CPUs, at least 1. */
unsigned pa_ncpus(void);

#endif /* PA_INTERNAL_H */
