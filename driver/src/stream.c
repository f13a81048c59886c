/* SPDX-License-Identifier: MIT */
/*
 * stream.c -- concurrent, checksummed copies from files into a mapping
 *
 * Every io is cut into chunks; worker threads take chunks in order and copy
 * each one in the cheapest way its state allows:
 *
 *   page cache hot (mincore says every page is resident)
 *       -> buffered pread() straight into the destination: one copy;
 *   cold, file offset and destination 4 KiB aligned
 *       -> O_DIRECT pread() straight into the destination: no copy at all
 *          (the unaligned tail of an io goes through buffered pread, so
 *          nothing past the io's end is ever written);
 *   cold, misaligned (weights embedded in a protobuf, for one)
 *       -> O_DIRECT into the thread's staging buffer, then a copy.
 *
 * A thread pool with blocking preads was chosen over io_uring: on this
 * machine kind 4-8 threads saturate both the virtio disk (O_DIRECT 4 MiB
 * requests) and memory bandwidth, and threads work on every kernel and in
 * every container.  `make bench` shows the figures.
 *
 * Staging memory is bounded: one buffer of one chunk per thread, and
 * threads x chunk <= 64 MiB.  The CRC32C of each chunk is taken while the
 * chunk is in cache and the chunks' CRCs are joined with
 * pa_crc32c_combine, so a big tensor is checksummed in parallel too.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "internal.h"

#define STAGING_MAX (64 * PA_MIB)
#define DIO_ALIGN 4096ULL
#define CRC_PIECE (256 * PA_KIB)

struct src_file {
	int fd;		/* the caller's fd */
	int dfd;	/* O_DIRECT reopen, -1 when not possible */
	void *map;	/* PROT_READ mapping for mincore, or NULL */
	uint64_t size;
};

struct chunk {
	size_t io;
	uint64_t off;	/* within the io */
	uint64_t len;
	uint32_t crc;
};

struct pa_stream {
	struct pa_map *dst;
	struct pa_stream_cfg cfg;
	struct pa_io *ios;
	uint32_t *crcs;
	size_t nios, cap;
	struct src_file *files;
	size_t nfiles;
	struct chunk *chunks;
	size_t nchunks;
	uint64_t total;
	uint64_t done;		/* atomic */
	uint64_t direct_bytes;	/* atomic */
	size_t next;		/* atomic: next chunk to take */
	int cancel;		/* atomic */
	int err;		/* first error, under lock */
	char errmsg[512];
	pthread_mutex_t lock;
	bool ran;
	bool via_write;		/* pwrite to dst->fd instead of the mapping */
};

/* pa_stream_new -- a batch of copies into the mapping dst */
PA_EXPORT int
pa_stream_new(struct pa_stream **out, struct pa_map *dst,
	      const struct pa_stream_cfg *cfg)
{
	struct pa_stream *s;

	if (!out || !dst)
		return ERR(-EINVAL, "pa_stream_new: no destination");
	*out = NULL;
	if (pa_map_is_readonly(dst))
		return ERR(-EACCES, "%s: destination mapping is read-only",
			   dst->path);
	s = calloc(1, sizeof(*s));
	if (!s)
		return ERR(-ENOMEM, "out of memory");
	s->dst = dst;
	if (cfg)
		s->cfg = *cfg;
	if (s->cfg.threads == 0)
		s->cfg.threads = PA_MIN(PA_MAX(pa_ncpus(), 4u), 16u);
	if (s->cfg.threads > 64)
		s->cfg.threads = 64;
	if (s->cfg.chunk == 0)
		s->cfg.chunk = 4 * PA_MIB;
	s->cfg.chunk = PA_ALIGN_UP(s->cfg.chunk, DIO_ALIGN);
	while (s->cfg.threads * s->cfg.chunk > STAGING_MAX &&
	       s->cfg.chunk > DIO_ALIGN * 16)
		s->cfg.chunk /= 2;
	/*
	 * Disk files and block devices take pwrite: writing whole pages through
	 * the mapping would first read each page from the device.  tmpfs,
	 * hugetlbfs and device-DAX go through the mapping: one copy, into pages
	 * made ready when the pool was created (measured here: 5.2 GB/s through
	 * the mapping vs 4.5 GB/s by pwrite, 3.9 GB/s for read() of the source
	 * into a populated buffer); hugetlbfs and device-DAX have no write().
	 */
	if (s->cfg.via == PA_STREAM_VIA_WRITE ||
	    (s->cfg.via == PA_STREAM_VIA_AUTO &&
	     (dst->src.kind == PA_KIND_FILE || dst->src.kind == PA_KIND_BLOCK)))
		s->via_write = true;
	if (s->via_write && (dst->src.kind == PA_KIND_HUGETLBFS ||
			     dst->src.kind == PA_KIND_DEVDAX)) {
		free(s);
		return ERR(-EINVAL, "%s: %s has no write(); stream through "
				    "the mapping", dst->path,
			   pa_kind_name(dst->src.kind));
	}
	pthread_mutex_init(&s->lock, NULL);
	*out = s;
	return 0;
}

/* pa_stream_add -- queue one io; returns its index */
PA_EXPORT ssize_t
pa_stream_add(struct pa_stream *s, const struct pa_io *io)
{
	if (s->ran)
		return ERR(-EINVAL, "pa_stream_add: stream already ran");
	if (io->len > s->dst->length || io->dst_off > s->dst->length - io->len)
		return ERR(-EINVAL, "pa_stream_add: destination %llu+%llu is "
				    "outside the mapping (%llu bytes)",
			   (unsigned long long)io->dst_off,
			   (unsigned long long)io->len,
			   (unsigned long long)s->dst->length);
	if (io->fd < 0 && !io->src && io->len)
		return ERR(-EINVAL, "pa_stream_add: neither fd nor src");
	if (s->nios == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		struct pa_io *n = realloc(s->ios, cap * sizeof(*n));
		uint32_t *c;

		if (!n)
			return ERR(-ENOMEM, "out of memory");
		s->ios = n;
		c = realloc(s->crcs, cap * sizeof(*c));
		if (!c)
			return ERR(-ENOMEM, "out of memory");
		s->crcs = c;
		s->cap = cap;
	}
	s->ios[s->nios] = *io;
	s->crcs[s->nios] = 0;
	s->total += io->len;
	return (ssize_t)s->nios++;
}

/* set_error -- keep the first error and its message */
static void
set_error(struct pa_stream *s, int rc)
{
	pthread_mutex_lock(&s->lock);
	if (!s->err) {
		s->err = rc;
		snprintf(s->errmsg, sizeof(s->errmsg), "%s", pa_errormsg());
	}
	pthread_mutex_unlock(&s->lock);
	__atomic_store_n(&s->cancel, 1, __ATOMIC_RELAXED);
}

/* file_of -- the src_file record for fd */
static struct src_file *
file_of(struct pa_stream *s, int fd)
{
	for (size_t i = 0; i < s->nfiles; i++)
		if (s->files[i].fd == fd)
			return &s->files[i];
	return NULL;
}

/* open_files -- one O_DIRECT reopen and one residency map per source fd */
static int
open_files(struct pa_stream *s)
{
	s->files = calloc(s->nios ? s->nios : 1, sizeof(*s->files));
	if (!s->files)
		return ERR(-ENOMEM, "out of memory");
	for (size_t i = 0; i < s->nios; i++) {
		struct src_file *f;
		struct stat st;
		char proc[64];

		if (s->ios[i].fd < 0 || file_of(s, s->ios[i].fd))
			continue;
		f = &s->files[s->nfiles++];
		f->fd = s->ios[i].fd;
		f->dfd = -1;
		if (fstat(f->fd, &st))
			return ERR_W_ERRNO("stream: fstat of source fd %d",
					   f->fd);
		f->size = (uint64_t)st.st_size;
		if (s->cfg.direct == PA_STREAM_DIRECT_NEVER ||
		    !S_ISREG(st.st_mode))
			continue;
		/*
		 * O_DIRECT needs its own open file description: reopening
		 * through /proc leaves the caller's fd as it was.  Where the
		 * filesystem refuses O_DIRECT (tmpfs), reads stay buffered;
		 * such files live in memory anyway.
		 */
		snprintf(proc, sizeof(proc), "/proc/self/fd/%d", f->fd);
		f->dfd = open(proc, O_RDONLY | O_DIRECT | O_CLOEXEC);
		if (f->dfd >= 0 && f->size > 0) {
			f->map = mmap(NULL, f->size, PROT_READ, MAP_SHARED,
				      f->fd, 0);
			if (f->map == MAP_FAILED)
				f->map = NULL;
		}
	}
	return 0;
}

/* close_files -- undo open_files */
static void
close_files(struct pa_stream *s)
{
	for (size_t i = 0; i < s->nfiles; i++) {
		if (s->files[i].dfd >= 0)
			close(s->files[i].dfd);
		if (s->files[i].map)
			munmap(s->files[i].map, s->files[i].size);
	}
	free(s->files);
	s->files = NULL;
	s->nfiles = 0;
}

/* resident -- whether every page of [off, off + len) is in the page cache */
static bool
resident(const struct src_file *f, uint64_t off, uint64_t len)
{
	unsigned char vec[4096];
	uint64_t start = PA_ALIGN_DOWN(off, PA_PAGE);
	uint64_t end = PA_MIN(PA_ALIGN_UP(off + len, PA_PAGE),
			      PA_ALIGN_UP(f->size, PA_PAGE));

	if (!f->map)
		return true;
	while (start < end) {
		uint64_t n = PA_MIN(end - start, sizeof(vec) * PA_PAGE);
		uint64_t pages = n / PA_PAGE;

		if (mincore((char *)f->map + start, n, vec))
			return true;
		for (uint64_t i = 0; i < pages; i++)
			if (!(vec[i] & 1))
				return false;
		start += n;
	}
	return true;
}

/* pread_full -- pread until len bytes arrived; -EIO on a short file */
static int
pread_full(int fd, void *buf, uint64_t len, uint64_t off, uint64_t *got)
{
	uint64_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done,
				  (off_t)(off + done));

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return ERR_W_ERRNO("pread %llu bytes at %llu",
					   (unsigned long long)(len - done),
					   (unsigned long long)(off + done));
		}
		if (n == 0)
			break;
		done += (uint64_t)n;
	}
	if (got)
		*got = done;
	return 0;
}

/* read_exact -- buffered pread of exactly len bytes */
static int
read_exact(int fd, void *buf, uint64_t len, uint64_t off)
{
	uint64_t got = 0;
	int rc = pread_full(fd, buf, len, off, &got);

	if (rc)
		return rc;
	if (got != len)
		return ERR(-EIO, "source file ends at %llu, inside the range "
				 "%llu+%llu being read (truncated while "
				 "loading?)",
			   (unsigned long long)(off + got),
			   (unsigned long long)off, (unsigned long long)len);
	return 0;
}

/* copy_crc -- copy from memory piece by piece, checksumming while cached */
static uint32_t
copy_crc(struct pa_stream *s, char *dst, const char *src, uint64_t len)
{
	bool nt = s->dst->gran != PA_GRAN_PAGE;
	uint32_t crc = 0;

	for (uint64_t o = 0; o < len; o += CRC_PIECE) {
		uint64_t n = PA_MIN(CRC_PIECE, len - o);

		crc = pa_crc32c(crc, src + o, n);
		if (nt)
			pa_memcpy_nt(dst + o, src + o, n);
		else
			memcpy(dst + o, src + o, n);
	}
	return crc;
}

/* pwrite_full -- write all of buf at off of fd */
static int
pwrite_full(int fd, const char *buf, uint64_t len, uint64_t off)
{
	while (len) {
		ssize_t n = pwrite(fd, buf, len, (off_t)off);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return ERR_W_ERRNO("pwrite %llu bytes into the pool at "
					   "%llu", (unsigned long long)len,
					   (unsigned long long)off);
		}
		buf += n;
		off += (uint64_t)n;
		len -= (uint64_t)n;
	}
	return 0;
}

/* want_direct -- whether this chunk of f is read with O_DIRECT */
static bool
want_direct(struct pa_stream *s, struct src_file *f, uint64_t off,
	    uint64_t len)
{
	return f->dfd >= 0 && (s->cfg.direct == PA_STREAM_DIRECT_ALWAYS ||
			       !resident(f, off, len));
}

/* staging_get -- this thread's staging buffer, allocated on first use */
static int
staging_get(struct pa_stream *s, char **staging)
{
	if (!*staging) {
		*staging = aligned_alloc(DIO_ALIGN, s->cfg.chunk + 2 * DIO_ALIGN);
		if (!*staging)
			return ERR(-ENOMEM, "out of memory for staging");
	}
	return 0;
}

/*
 * read_direct_window -- O_DIRECT read of the aligned window around
 * [off, off + len) into staging; *src points at off within it
 */
static int
read_direct_window(struct pa_stream *s, struct src_file *f, uint64_t off,
		   uint64_t len, char **staging, const char **src)
{
	uint64_t a0 = PA_ALIGN_DOWN(off, DIO_ALIGN);
	uint64_t a1 = PA_ALIGN_UP(off + len, DIO_ALIGN);
	uint64_t got = 0;
	int rc = staging_get(s, staging);

	if (!rc)
		rc = pread_full(f->dfd, *staging, a1 - a0, a0, &got);
	if (rc)
		return rc;
	if (got < off + len - a0)
		return ERR(-EIO, "source file ends at %llu, inside a tensor "
				 "(truncated while loading?)",
			   (unsigned long long)(a0 + got));
	__atomic_add_fetch(&s->direct_bytes, len, __ATOMIC_RELAXED);
	*src = *staging + (off - a0);
	return 0;
}

/*
 * do_chunk_write -- copy one chunk with pwrite() to the pool's file
 *
 * For disk files and block devices (and tmpfs when asked): the bytes go
 * through a staging buffer piece by piece (read, checksum while cached,
 * pwrite), and the kernel writes them into the pool's pages without this
 * process mapping them, and without reading a page it overwrites whole.
 */
static int
do_chunk_write(struct pa_stream *s, struct chunk *c, char **staging)
{
	const struct pa_io *io = &s->ios[c->io];
	uint64_t off = io->src_off + c->off;
	uint64_t dpos = s->dst->offset + io->dst_off + c->off;
	uint32_t crc = 0;
	const char *src = NULL;
	bool buffered = false;
	struct src_file *f = NULL;
	int rc;

	rc = staging_get(s, staging);
	if (rc)
		return rc;
	if (io->fd < 0) {
		src = (const char *)io->src + c->off;
	} else {
		f = file_of(s, io->fd);
		if (want_direct(s, f, off, c->len)) {
			rc = read_direct_window(s, f, off, c->len, staging,
						&src);
			if (rc)
				return rc;
		} else {
			buffered = true;
			src = *staging;
		}
	}
	for (uint64_t o = 0; o < c->len; o += CRC_PIECE) {
		uint64_t n = PA_MIN(CRC_PIECE, c->len - o);

		if (buffered) {
			rc = read_exact(io->fd, *staging + o, n, off + o);
			if (rc)
				return rc;
		}
		crc = pa_crc32c(crc, src + o, n);
		rc = pwrite_full(s->dst->fd, src + o, n, dpos + o);
		if (rc)
			return rc;
	}
	c->crc = crc;
	return 0;
}

/* do_chunk -- copy one chunk the cheapest way its state allows */
static int
do_chunk(struct pa_stream *s, struct chunk *c, char **staging)
{
	const struct pa_io *io = &s->ios[c->io];
	char *dst = (char *)s->dst->addr + io->dst_off + c->off;
	uint64_t off = io->src_off + c->off;
	struct src_file *f;
	int rc;

	/*
	 * Fault the destination in with one call: a pread into unmapped
	 * pages takes a page fault per 4 KiB, which costs more than the copy
	 * (see the brief: ~1.1 GB/s into fresh pages vs ~12 GB/s into mapped
	 * ones).  A failure here is reported as what it is, not as a SIGBUS.
	 */
	if (s->via_write)
		return do_chunk_write(s, c, staging);
	rc = pa_map_populate(s->dst, io->dst_off + c->off, c->len, 1);
	if (rc)
		return rc;
	if (io->fd < 0) {
		c->crc = copy_crc(s, dst, (const char *)io->src + c->off,
				  c->len);
		return 0;
	}
	f = file_of(s, io->fd);
	if (want_direct(s, f, off, c->len)) {
		uint64_t body;

		if (off % DIO_ALIGN == 0 && (uintptr_t)dst % DIO_ALIGN == 0) {
			/* straight into the destination, tail buffered */
			uint64_t got = 0;

			body = PA_ALIGN_DOWN(c->len, DIO_ALIGN);
			if (body) {
				rc = pread_full(f->dfd, dst, body, off, &got);
				if (rc)
					return rc;
				if (got != body)
					return ERR(-EIO, "source file ends at "
							 "%llu, inside a "
							 "tensor (truncated "
							 "while loading?)",
						   (unsigned long long)(off +
									got));
				__atomic_add_fetch(&s->direct_bytes, body,
						   __ATOMIC_RELAXED);
			}
			if (c->len > body) {
				rc = read_exact(io->fd, dst + body,
						c->len - body, off + body);
				if (rc)
					return rc;
			}
			c->crc = pa_crc32c(0, dst, c->len);
			return 0;
		} else {
			/* through the staging buffer */
			const char *src;

			rc = read_direct_window(s, f, off, c->len, staging,
						&src);
			if (rc)
				return rc;
			c->crc = copy_crc(s, dst, src, c->len);
			return 0;
		}
	}
	rc = read_exact(io->fd, dst, c->len, off);
	if (rc)
		return rc;
	c->crc = pa_crc32c(0, dst, c->len);
	return 0;
}

/*
 * release_pages -- drop a written chunk from this process's page tables
 *
 * The destination is a shared mapping of a file or device, so its bytes
 * live in the page cache, tmpfs, the hugepages or the device -- not in the
 * page tables -- and MADV_DONTNEED only unmaps them here (a page another
 * thread is still writing is simply faulted in again).  Without this, every
 * byte streamed would count in the writer's resident set, a model-sized
 * "staging buffer" in the eyes of the OOM killer and of RSS limits.
 */
static void
release_pages(struct pa_stream *s, char *dst, uint64_t len)
{
	uint64_t page = s->dst->src.kind == PA_KIND_HUGETLBFS ||
				s->dst->src.kind == PA_KIND_DEVDAX ?
				s->dst->src.align :
				PA_PAGE;
	uintptr_t a = PA_ALIGN_UP((uintptr_t)dst, page);
	uintptr_t b = PA_ALIGN_DOWN((uintptr_t)dst + len, page);

	if (s->cfg.keep_mapped || s->via_write || b <= a)
		return;
	/* PAGE granularity: the bytes must reach the file before the final
	 * msync looks at this range; dirty state moves to the page itself */
	madvise((void *)a, b - a, MADV_DONTNEED);
}

/* worker -- take chunks until none are left or the stream is cancelled */
static void *
worker(void *arg)
{
	struct pa_stream *s = arg;
	char *staging = NULL;

	for (;;) {
		size_t i = __atomic_fetch_add(&s->next, 1, __ATOMIC_RELAXED);
		int rc;

		if (i >= s->nchunks ||
		    __atomic_load_n(&s->cancel, __ATOMIC_RELAXED))
			break;
		char *dst = (char *)s->dst->addr +
			    s->ios[s->chunks[i].io].dst_off + s->chunks[i].off;

		rc = pa_fault_hit(PA_FAULT_WRITE);
		if (!rc)
			rc = do_chunk(s, &s->chunks[i], &staging);
		/* persisted chunk by chunk, while its lines are still mapped
		 * (and cached); the drain is the caller's fence at the end */
		if (!rc && !s->cfg.nopersist && s->dst->gran != PA_GRAN_BYTE)
			rc = pa_map_flush(s->dst, dst, s->chunks[i].len);
		if (rc) {
			set_error(s, rc);
			break;
		}
		release_pages(s, dst, s->chunks[i].len);
		__atomic_add_fetch(&s->done, s->chunks[i].len,
				   __ATOMIC_RELAXED);
	}
	free(staging);
	return NULL;
}

/* make_chunks -- cut every io into chunks of at most cfg.chunk bytes */
static int
make_chunks(struct pa_stream *s)
{
	size_t n = 0, k = 0;

	for (size_t i = 0; i < s->nios; i++)
		n += s->ios[i].len ? (s->ios[i].len + s->cfg.chunk - 1) /
					     s->cfg.chunk :
				     0;
	s->chunks = calloc(n ? n : 1, sizeof(*s->chunks));
	if (!s->chunks)
		return ERR(-ENOMEM, "out of memory");
	for (size_t i = 0; i < s->nios; i++)
		for (uint64_t o = 0; o < s->ios[i].len; o += s->cfg.chunk) {
			s->chunks[k].io = i;
			s->chunks[k].off = o;
			s->chunks[k].len = PA_MIN(s->cfg.chunk,
						  s->ios[i].len - o);
			k++;
		}
	s->nchunks = n;
	return 0;
}

/* pa_stream_run -- do every queued io */
PA_EXPORT int
pa_stream_run(struct pa_stream *s)
{
	pthread_t tids[64];
	unsigned nt, started = 0;
	int rc;

	if (s->ran)
		return ERR(-EINVAL, "pa_stream_run: stream already ran");
	s->ran = true;
	rc = open_files(s);
	if (!rc)
		rc = make_chunks(s);
	if (rc)
		goto out;
	nt = (unsigned)PA_MIN((size_t)s->cfg.threads, s->nchunks);
	for (unsigned t = 1; t < nt; t++) {
		if (pthread_create(&tids[t], NULL, worker, s))
			break;
		started++;
	}
	worker(s); /* the calling thread works too */
	for (unsigned t = 1; t <= started; t++)
		pthread_join(tids[t], NULL);
	if (s->err) {
		rc = s->err;
		pa_err_set("%s", s->errmsg);
		goto out;
	}
	if (__atomic_load_n(&s->cancel, __ATOMIC_RELAXED)) {
		rc = ERR(-ECANCELED, "stream cancelled after %llu of %llu "
				     "bytes", (unsigned long long)s->done,
			 (unsigned long long)s->total);
		goto out;
	}
	for (size_t k = 0; k < s->nchunks; k++) {
		struct chunk *c = &s->chunks[k];

		s->crcs[c->io] = c->off == 0 ?
					 c->crc :
					 pa_crc32c_combine(s->crcs[c->io],
							   c->crc, c->len);
	}
	pa_fence(); /* drain: every chunk's flush is durable from here */
out:
	close_files(s);
	return rc;
}

/* pa_stream_cancel -- ask a running stream to stop soon */
PA_EXPORT void
pa_stream_cancel(struct pa_stream *s)
{
	__atomic_store_n(&s->cancel, 1, __ATOMIC_RELAXED);
}

/* pa_stream_progress -- bytes copied so far and in all */
PA_EXPORT void
pa_stream_progress(const struct pa_stream *s, uint64_t *done,
		   uint64_t *total)
{
	if (done)
		*done = __atomic_load_n(&s->done, __ATOMIC_RELAXED);
	if (total)
		*total = s->total;
}

/* pa_stream_crc -- CRC32C of io i after a successful run */
PA_EXPORT int
pa_stream_crc(const struct pa_stream *s, size_t i, uint32_t *crc)
{
	if (i >= s->nios)
		return ERR(-EINVAL, "pa_stream_crc: no io %zu", i);
	if (!s->ran || s->err)
		return ERR(-EINVAL, "pa_stream_crc: stream did not complete");
	*crc = s->crcs[i];
	return 0;
}

/* pa_stream_direct_bytes -- bytes read with O_DIRECT */
PA_EXPORT uint64_t
pa_stream_direct_bytes(const struct pa_stream *s)
{
	return __atomic_load_n(&s->direct_bytes, __ATOMIC_RELAXED);
}

/* pa_stream_delete -- free *s and set it NULL */
PA_EXPORT int
pa_stream_delete(struct pa_stream **sp)
{
	struct pa_stream *s;

	if (!sp || !*sp)
		return 0;
	s = *sp;
	free(s->ios);
	free(s->crcs);
	free(s->chunks);
	pthread_mutex_destroy(&s->lock);
	free(s);
	*sp = NULL;
	return 0;
}
