/* SPDX-License-Identifier: MIT */
/*
 * map.c -- mappings of a source: the common part and the persistence calls
 *
 * The backend-specific parts live in map_devdax.c, map_hugetlb.c,
 * map_file.c (tmpfs, fsdax and other files) and map_block.c.
 */
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#define MADV_POPULATE_WRITE 23
#endif
#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE 25
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif

#define PA_DATA_ALIGN_MAP (2 * PA_MIB) /* PMD size on x86-64 and arm64/4K */
#define PA_HUGE_MIN (128 * PA_MIB)	/* smaller new tmpfs files keep 4 KiB */

/* open_source -- open (and with CREATE make) the path for the mapping */
static int
open_source(const struct pa_map_cfg *cfg, int *fdp)
{
	int oflags = O_CLOEXEC;
	unsigned mode = cfg->mode ? cfg->mode : 0660;
	int fd;

	oflags |= (cfg->flags & PA_MAP_READONLY) ? O_RDONLY : O_RDWR;
	if ((cfg->flags & PA_MAP_CREATE) && !(cfg->flags & PA_MAP_READONLY)) {
		oflags |= O_CREAT;
		if (cfg->flags & PA_MAP_EXCL)
			oflags |= O_EXCL;
	}
	fd = open(cfg->path, oflags, mode);
	if (fd < 0) {
		if (errno == EACCES || errno == EROFS || errno == EPERM)
			return ERR_W_ERRNO("%s: cannot open for %s", cfg->path,
					   (cfg->flags & PA_MAP_READONLY) ?
						   "reading" :
						   "reading and writing");
		return ERR_W_ERRNO("%s", cfg->path);
	}
	*fdp = fd;
	return 0;
}

/* pa_file_reserve -- size a file and reserve every block of it now */
int
pa_file_reserve(int fd, const char *path, uint64_t size, bool hugetlb)
{
	struct stat st;

	if (fstat(fd, &st))
		return ERR_W_ERRNO("fstat %s", path);
	/*
	 * fallocate makes tmpfs and hugetlbfs take their pages (and a disk
	 * filesystem its blocks) now, so that a shortage is an error here
	 * instead of a SIGBUS at the first touch of a hole.  Filesystems
	 * without fallocate fall back to ftruncate; populating the mapping
	 * then finds a shortage instead, still as an error code.
	 */
	if (fallocate(fd, 0, 0, (off_t)size) == 0)
		return 0;
	if (errno == ENOSPC || errno == ENOMEM) {
		if (hugetlb)
			return ERR(-ENOMEM, "%s: not enough free hugepages to "
					    "reserve %llu bytes (see "
					    "/proc/meminfo HugePages_Free)",
				   path, (unsigned long long)size);
		return ERR_W_ERRNO("%s: cannot reserve %llu bytes", path,
				   (unsigned long long)size);
	}
	if (errno != EOPNOTSUPP && errno != ENOSYS)
		return ERR_W_ERRNO("fallocate %s", path);
	if ((uint64_t)st.st_size < size && ftruncate(fd, (off_t)size))
		return ERR_W_ERRNO("ftruncate %s", path);
	return 0;
}

/*
 * aligned_hint -- an address 2 MiB-aligned like the file offset, with room
 *
 * The kernel can map a huge page (of tmpfs, or a large folio of a file)
 * with one page-table entry only where the address and the file offset
 * agree modulo 2 MiB.  A PROT_NONE reservation finds such a place; it is
 * given back before the real mapping takes it with MAP_FIXED_NOREPLACE.
 */
static void *
aligned_hint(uint64_t len, uint64_t offset)
{
	const uint64_t big = PA_DATA_ALIGN_MAP;
	char *r, *a;

	if (len < big)
		return NULL;
	r = mmap(NULL, len + 2 * big, PROT_NONE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (r == MAP_FAILED)
		return NULL;
	a = (char *)PA_ALIGN_UP((uintptr_t)r, big) + offset % big;
	munmap(r, len + 2 * big);
	return a;
}

/* pa_map_mmap -- mmap m->fd at [offset, offset + length) */
int
pa_map_mmap(struct pa_map *m, int extra_flags)
{
	int prot = PROT_READ;
	void *hint = aligned_hint(m->length, m->offset);
	void *addr = MAP_FAILED;

	if (!(m->flags & PA_MAP_READONLY))
		prot |= PROT_WRITE;
	if (hint) {
		addr = mmap(hint, m->length, prot,
			    MAP_SHARED | MAP_FIXED_NOREPLACE | extra_flags,
			    m->fd, (off_t)m->offset);
		/* another thread took the place meanwhile: any address */
		if (addr == MAP_FAILED && errno != EEXIST)
			return -errno;
	}
	if (addr == MAP_FAILED)
		addr = mmap(NULL, m->length, prot, MAP_SHARED | extra_flags,
			    m->fd, (off_t)m->offset);
	if (addr == MAP_FAILED)
		return -errno; /* callers word the message */
	m->addr = addr;
	return 0;
}

/* check_range -- offset and length inside the source and aligned */
static int
check_range(struct pa_map *m, const struct pa_map_cfg *cfg, uint64_t size)
{
	uint64_t align = m->src.align;

	if (cfg->offset % align)
		return ERR(-EINVAL, "%s: offset %llu is not a multiple of the "
				    "%s alignment %llu", cfg->path,
			   (unsigned long long)cfg->offset,
			   pa_kind_name(m->src.kind),
			   (unsigned long long)align);
	if (cfg->offset >= size && !(cfg->flags & PA_MAP_CREATE))
		return ERR(-EINVAL, "%s: offset %llu is past the end (size "
				    "%llu)", cfg->path,
			   (unsigned long long)cfg->offset,
			   (unsigned long long)size);
	m->offset = cfg->offset;
	m->length = cfg->length ? cfg->length : size - cfg->offset;
	if (m->length == 0)
		return ERR(-EINVAL, "%s: nothing to map (size %llu)",
			   cfg->path, (unsigned long long)size);
	if (m->length % align)
		return ERR(-EINVAL, "%s: length %llu is not a multiple of the "
				    "%s alignment %llu", cfg->path,
			   (unsigned long long)m->length,
			   pa_kind_name(m->src.kind),
			   (unsigned long long)align);
	if (m->offset + m->length > size && !(cfg->flags & PA_MAP_CREATE))
		return ERR(-EINVAL, "%s: offset %llu + length %llu is past "
				    "the end (size %llu)", cfg->path,
			   (unsigned long long)m->offset,
			   (unsigned long long)m->length,
			   (unsigned long long)size);
	return 0;
}

/*
 * prefault_fresh -- clear the tmpfs pages a new file just reserved
 *
 * fallocate on tmpfs reserves pages but leaves them to be cleared on first
 * touch, which would then happen inside the first load, at a fraction of
 * the copy's speed.  The pool is populated once, here, when it is made --
 * in steps, each dropped again from this process's page tables, so making a
 * big pool does not make a big resident set.
 */
static int
prefault_fresh(struct pa_map *m)
{
	const uint64_t step = 64 * PA_MIB;
	char *p = (char *)m->addr + m->fresh_off;
	uintptr_t a = PA_ALIGN_UP((uintptr_t)p, PA_DATA_ALIGN_MAP);
	uintptr_t b = PA_ALIGN_DOWN((uintptr_t)p + m->fresh_len,
				    PA_DATA_ALIGN_MAP);
	bool huge = false;

	/*
	 * Make the pages huge (MADV_COLLAPSE, Linux 6.1; it works on tmpfs
	 * even where shmem_enabled is "never"): every process mapping the
	 * pool then maps 2 MiB with one entry, which doubled read bandwidth
	 * here (7.6 -> 15.6 GB/s) -- what inference over large weights is
	 * bound by -- and streams into the pool ran at 6.9 GB/s instead of
	 * 5.2.  Collapsing the reserved pages also clears them, in one call
	 * for the whole range (0.6 to 4 s per GiB here, as compaction
	 * allows), so only for pools of PA_HUGE_MIN bytes or more.  Best
	 * effort: old kernels and fragmented memory keep 4 KiB pages, cleared
	 * the usual way.
	 */
	if (b > a && b - a >= PA_HUGE_MIN &&
	    madvise((void *)a, b - a, MADV_COLLAPSE) == 0) {
		m->huge_bytes = b - a;
		huge = true;
	}
	for (uint64_t o = 0; o < m->fresh_len; o += step) {
		uint64_t n = PA_MIN(step, m->fresh_len - o);
		char *q = p + o;
		int rc = 0;

		if (!huge || (uintptr_t)q < a || (uintptr_t)q + n > b)
			rc = pa_map_populate(m, m->fresh_off + o, n, 1);
		if (rc)
			return rc;
		madvise(q, n, MADV_DONTNEED);
	}
	return 0;
}

/* pa_map_new -- map a DAX, hugetlbfs, block or file source */
PA_EXPORT int
pa_map_new(struct pa_map **out, const struct pa_map_cfg *cfg)
{
	struct pa_map *m;
	struct pa_map_cfg c;
	int rc;

	if (!out || !cfg || !cfg->path || !*cfg->path)
		return ERR(-EINVAL, "pa_map_new: no path given");
	*out = NULL;
	if ((cfg->flags & PA_MAP_CREATE) && (cfg->flags & PA_MAP_READONLY))
		return ERR(-EINVAL, "%s: cannot create a read-only mapping",
			   cfg->path);
	m = calloc(1, sizeof(*m));
	if (!m)
		return ERR(-ENOMEM, "out of memory");
	m->fd = -1;
	m->flags = cfg->flags;
	snprintf(m->path, sizeof(m->path), "%s", cfg->path);
	c = *cfg;

	/* classify before opening where the path exists, so a directory or a
	 * character device that is not DAX is named for what it is */
	if (access(cfg->path, F_OK) == 0) {
		rc = pa_source_classify(cfg->path, cfg->sysfs_root, &m->src);
		if (rc)
			goto err;
	}
	rc = open_source(cfg, &m->fd);
	if (rc)
		goto err;
	rc = pa_source_classify(cfg->path, cfg->sysfs_root, &m->src);
	if (rc)
		goto err;
	m->gran = m->src.granularity;
	if (m->src.kind == PA_KIND_HUGETLBFS && c.length)
		c.length = PA_ALIGN_UP(c.length, m->src.align);
	if ((c.flags & PA_MAP_CREATE) && c.length == 0 &&
	    m->src.size <= c.offset) {
		rc = ERR(-EINVAL, "%s: a new file needs a length", c.path);
		goto err;
	}
	if ((c.flags & PA_MAP_CREATE) && (m->src.kind == PA_KIND_DEVDAX ||
					  m->src.kind == PA_KIND_BLOCK))
		c.flags &= ~(unsigned)PA_MAP_CREATE; /* devices: fixed size */
	rc = check_range(m, &c, m->src.size);
	if (rc)
		goto err;

	switch (m->src.kind) {
	case PA_KIND_DEVDAX:
		rc = pa_map_devdax(m, &c);
		break;
	case PA_KIND_HUGETLBFS:
		rc = pa_map_hugetlb(m, &c);
		break;
	case PA_KIND_BLOCK:
		rc = pa_map_block(m, &c);
		break;
	default:
		rc = pa_map_file(m, &c);
		break;
	}
	if (rc)
		goto err;
	if (c.flags & PA_MAP_POPULATE) {
		rc = pa_map_populate(m, 0, m->length,
				     !(c.flags & PA_MAP_READONLY));
		if (rc)
			goto err;
	} else if (m->fresh_len && m->src.kind == PA_KIND_TMPFS) {
		rc = prefault_fresh(m);
		if (rc)
			goto err;
	}
	*out = m;
	return 0;
err:
	pa_map_delete(&m);
	return rc;
}

/* pa_map_delete -- unmap, close and free *m, and set *m to NULL */
PA_EXPORT int
pa_map_delete(struct pa_map **mp)
{
	struct pa_map *m;

	if (!mp || !*mp)
		return 0;
	m = *mp;
	if (m->addr)
		munmap(m->addr, m->length);
	if (m->fd >= 0)
		close(m->fd);
	free(m);
	*mp = NULL;
	return 0;
}

PA_EXPORT void *
pa_map_addr(const struct pa_map *m)
{
	return m->addr;
}

PA_EXPORT uint64_t
pa_map_length(const struct pa_map *m)
{
	return m->length;
}

PA_EXPORT uint64_t
pa_map_offset(const struct pa_map *m)
{
	return m->offset;
}

PA_EXPORT uint64_t
pa_map_align(const struct pa_map *m)
{
	return m->src.align;
}

PA_EXPORT enum pa_kind
pa_map_kind(const struct pa_map *m)
{
	return m->src.kind;
}

PA_EXPORT enum pa_granularity
pa_map_granularity(const struct pa_map *m)
{
	return m->gran;
}

PA_EXPORT int
pa_map_is_persistent(const struct pa_map *m)
{
	return m->src.persistent;
}

PA_EXPORT int
pa_map_is_readonly(const struct pa_map *m)
{
	return (m->flags & PA_MAP_READONLY) != 0;
}

PA_EXPORT int
pa_map_is_sync(const struct pa_map *m)
{
	return m->sync;
}

PA_EXPORT int
pa_map_fd(const struct pa_map *m)
{
	return m->fd;
}

PA_EXPORT const struct pa_source_info *
pa_map_source(const struct pa_map *m)
{
	return &m->src;
}

PA_EXPORT const char *
pa_map_fallback(const struct pa_map *m)
{
	return m->fallback;
}

/* ---- first touch under a SIGBUS guard (kernels before 5.14) ---- */

static pthread_mutex_t guard_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread sigjmp_buf *guard_jmp;
static struct sigaction guard_old;

/* guard_handler -- turn a SIGBUS in a guarded touch into a longjmp */
static void
guard_handler(int sig, siginfo_t *si, void *uc)
{
	(void)si;
	(void)uc;
	if (guard_jmp)
		siglongjmp(*guard_jmp, 1);
	/* not ours: restore the previous disposition and let it re-fault */
	sigaction(sig, &guard_old, NULL);
}

/* touch_guarded -- fault every page in, SIGBUS becoming -EFAULT */
static int
touch_guarded(struct pa_map *m, char *p, uint64_t len, int write,
	      uint64_t step)
{
	struct sigaction sa;
	sigjmp_buf jb;
	volatile uint64_t off = 0;
	volatile int rc = 0;

	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = guard_handler;
	sa.sa_flags = SA_SIGINFO;
	sigemptyset(&sa.sa_mask);
	pthread_mutex_lock(&guard_lock);
	sigaction(SIGBUS, &sa, &guard_old);
	if (sigsetjmp(jb, 1) == 0) {
		guard_jmp = &jb;
		for (; off < len; off += step) {
			volatile char *q = p + off;

			if (write)
				*q = *q;
			else
				(void)*q;
		}
	} else {
		rc = ERR(-EFAULT, "%s: page at offset %llu cannot be backed "
				  "(SIGBUS on first touch)", m->path,
			 (unsigned long long)(m->offset + off));
	}
	guard_jmp = NULL;
	sigaction(SIGBUS, &guard_old, NULL);
	pthread_mutex_unlock(&guard_lock);
	return rc;
}

/* pa_map_populate -- pre-fault [off, off + len) of the mapping */
PA_EXPORT int
pa_map_populate(struct pa_map *m, uint64_t off, uint64_t len, int write)
{
	uint64_t page = m->src.kind == PA_KIND_HUGETLBFS ||
				m->src.kind == PA_KIND_DEVDAX ?
				m->src.align :
				PA_PAGE;
	uint64_t start = PA_ALIGN_DOWN(off, page);
	uint64_t end;
	char *p;

	if (off > m->length || len > m->length - off)
		return ERR(-EINVAL, "%s: populate range %llu+%llu is outside "
				    "the mapping (%llu bytes)", m->path,
			   (unsigned long long)off, (unsigned long long)len,
			   (unsigned long long)m->length);
	if (write && (m->flags & PA_MAP_READONLY))
		return ERR(-EACCES, "%s: mapping is read-only", m->path);
	end = PA_MIN(PA_ALIGN_UP(off + len, page), m->length);
	if (end <= start)
		return 0;
	p = (char *)m->addr + start;
	if (madvise(p, end - start,
		    write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ) == 0)
		return 0;
	if (errno == EINVAL) /* kernel before 5.14: touch each page */
		return touch_guarded(m, p, end - start, write, page);
	if (errno == EFAULT || errno == ENOMEM || errno == EHWPOISON)
		return ERR_W_ERRNO("%s: cannot populate %llu bytes at offset "
				   "%llu", m->path,
				   (unsigned long long)(end - start),
				   (unsigned long long)(m->offset + start));
	return ERR_W_ERRNO("madvise populate %s", m->path);
}

/* in_map -- whether [addr, addr + len) lies inside the mapping */
static bool
in_map(const struct pa_map *m, const void *addr, size_t len)
{
	uintptr_t a = (uintptr_t)addr, b = (uintptr_t)m->addr;

	return a >= b && len <= m->length && a - b <= m->length - len;
}

/* pa_map_flush -- start writing back [addr, addr + len) */
PA_EXPORT int
pa_map_flush(struct pa_map *m, const void *addr, size_t len)
{
	int rc;

	if (!in_map(m, addr, len))
		return ERR(-EINVAL, "%s: flush range outside the mapping",
			   m->path);
	rc = pa_fault_hit(PA_FAULT_FLUSH);
	if (rc)
		return rc;
	switch (m->gran) {
	case PA_GRAN_BYTE:
		return 0;
	case PA_GRAN_CACHE_LINE:
		pa_flush_lines(addr, len);
		return 0;
	case PA_GRAN_PAGE: {
		uintptr_t start = PA_ALIGN_DOWN((uintptr_t)addr, PA_PAGE);
		uintptr_t end = (uintptr_t)addr + len;

		if (len == 0)
			return 0;
		if (msync((void *)start, end - start, MS_SYNC))
			return ERR_W_ERRNO("msync %s", m->path);
		return 0;
	}
	}
	return 0;
}

/* pa_map_drain -- wait until every flush started so far is durable */
PA_EXPORT int
pa_map_drain(struct pa_map *m)
{
	(void)m;
	pa_fence();
	return 0;
}

/* pa_map_persist -- flush + drain */
PA_EXPORT int
pa_map_persist(struct pa_map *m, const void *addr, size_t len)
{
	int rc = pa_map_flush(m, addr, len);

	if (rc)
		return rc;
	return pa_map_drain(m);
}

/* pa_map_memcpy -- copy into the mapping and persist */
PA_EXPORT int
pa_map_memcpy(struct pa_map *m, void *dst, const void *src, size_t len,
	      unsigned flags)
{
	bool nt;
	int rc;

	if (!in_map(m, dst, len))
		return ERR(-EINVAL, "%s: copy destination outside the mapping",
			   m->path);
	if (m->flags & PA_MAP_READONLY)
		return ERR(-EACCES, "%s: mapping is read-only", m->path);
	rc = pa_fault_hit(PA_FAULT_WRITE);
	if (rc)
		return rc;
	nt = len >= 256 && m->gran != PA_GRAN_PAGE;
	if (flags & PA_MEM_TEMPORAL)
		nt = false;
	if (flags & PA_MEM_NONTEMPORAL)
		nt = true;
	if (nt)
		pa_memcpy_nt(dst, src, len);
	else
		memcpy(dst, src, len);
	if (flags & PA_MEM_NOFLUSH) {
		if (nt)
			pa_fence();
		return 0;
	}
	/* a non-temporal copy leaves only its unaligned edges in cache,
	 * but flushing the whole range is cheap for lines not cached */
	rc = pa_map_flush(m, dst, len);
	if (rc)
		return rc;
	if (!(flags & PA_MEM_NODRAIN) || nt)
		pa_fence();
	return 0;
}
