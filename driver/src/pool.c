/* SPDX-License-Identifier: MIT */
/*
 * pool.c -- open, create and close pools; locks, leases, state, lookups
 *
 * See pool.h for the layout, the commit protocol and the lock bytes.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "pool.h"

/* ---- small helpers ---- */

/* pool_now_ns -- wall-clock time in nanoseconds */
uint64_t
pool_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

/* boot_id -- this boot's id (PYACCEL_BOOT_ID overrides it for tests) */
static void
boot_id(uint8_t id[16])
{
	const char *env = getenv("PYACCEL_BOOT_ID");
	char buf[64];
	int n = 0;

	memset(id, 0, 16);
	if (env && *env)
		snprintf(buf, sizeof(buf), "%s", env);
	else if (pa_read_sysfs_str("/proc/sys/kernel/random/boot_id", buf,
				   sizeof(buf)))
		return;
	for (const char *s = buf; *s && n < 32; s++) {
		int v;

		if (*s >= '0' && *s <= '9')
			v = *s - '0';
		else if (*s >= 'a' && *s <= 'f')
			v = *s - 'a' + 10;
		else if (*s >= 'A' && *s <= 'F')
			v = *s - 'A' + 10;
		else
			continue;
		id[n / 2] |= (uint8_t)(v << ((n % 2) ? 0 : 4));
		n++;
	}
}

/* pool_write -- a write into the pool mapping (counted for fault tests) */
int
pool_write(struct pa_pool *p, uint64_t off, const void *src, size_t len)
{
	int rc = pa_fault_hit(PA_FAULT_WRITE);

	if (rc)
		return rc;
	memcpy(p->base + off, src, len);
	return 0;
}

/* pool_persist -- persist a range of the pool mapping */
int
pool_persist(struct pa_pool *p, uint64_t off, size_t len)
{
	return pa_map_persist(p->map, p->base + off, len);
}

/* ---- locks ---- */

/* pool_lock -- an OFD lock of one byte (F_RDLCK / F_WRLCK) */
int
pool_lock(struct pa_pool *p, uint64_t byte, short type, bool wait)
{
	struct flock fl = {
		.l_type = type,
		.l_whence = SEEK_SET,
		.l_start = (off_t)byte,
		.l_len = 1,
	};

	while (fcntl(p->fd, wait ? F_OFD_SETLKW : F_OFD_SETLK, &fl)) {
		if (errno == EINTR && wait)
			continue;
		if (errno == EAGAIN || errno == EACCES)
			return -EAGAIN;
		return ERR_W_ERRNO("%s: lock", p->path);
	}
	return 0;
}

/* pool_unlock -- release one byte */
int
pool_unlock(struct pa_pool *p, uint64_t byte)
{
	struct flock fl = {
		.l_type = F_UNLCK,
		.l_whence = SEEK_SET,
		.l_start = (off_t)byte,
		.l_len = 1,
	};

	if (fcntl(p->fd, F_OFD_SETLK, &fl))
		return ERR_W_ERRNO("%s: unlock", p->path);
	return 0;
}

/* pool_lock_probe -- 1 when another description holds byte */
int
pool_lock_probe(struct pa_pool *p, uint64_t byte)
{
	struct flock fl = {
		.l_type = F_WRLCK,
		.l_whence = SEEK_SET,
		.l_start = (off_t)byte,
		.l_len = 1,
	};

	if (fcntl(p->fd, F_OFD_GETLK, &fl))
		return ERR_W_ERRNO("%s: lock probe", p->path);
	return fl.l_type != F_UNLCK;
}

/* ---- the state page ---- */

/* state_ok -- whether a state copy is valid */
static bool
state_ok(const struct pa_state *s)
{
	struct pa_state t = *s;

	if (memcmp(t.magic, PA_STATE_MAGIC, sizeof(PA_STATE_MAGIC)))
		return false;
	t.checksum = 0;
	return pa_crc32c(0, &t, sizeof(t)) == s->checksum;
}

/* state_read -- the newest valid state copy; damage noted when none */
int
state_read_locked(struct pa_pool *p)
{
	struct pa_state s[2];
	int best = -1;

	for (int i = 0; i < 2; i++) {
		memcpy(&s[i], p->base + PA_STATE_OFF + i * PA_STATE_COPY,
		       sizeof(s[i]));
		if (state_ok(&s[i]) && (best < 0 || s[i].seq > s[best].seq))
			best = i;
	}
	if (best < 0) {
		p->damage |= PA_DAMAGE_STATE;
		memset(&p->state, 0, sizeof(p->state));
		p->state.needs_fsck = 1;
		return -EBADMSG;
	}
	p->state = s[best];
	p->state_slot = best;
	return 0;
}

/* state_write -- write the state into the other copy (writer lock held) */
int
state_write(struct pa_pool *p)
{
	int slot = !p->state_slot;
	uint64_t off = PA_STATE_OFF + (uint64_t)slot * PA_STATE_COPY;
	int rc;

	memcpy(p->state.magic, PA_STATE_MAGIC, sizeof(PA_STATE_MAGIC));
	p->state.seq++;
	p->state.checksum = 0;
	p->state.checksum = pa_crc32c(0, &p->state, sizeof(p->state));
	rc = pool_write(p, off, &p->state, sizeof(p->state));
	if (!rc)
		rc = pool_persist(p, off, sizeof(p->state));
	if (!rc)
		p->state_slot = slot;
	return rc;
}

/* ---- hints: last-used times, lossy and lock-free ---- */

/* hint_touch -- note that model id was used now */
void
hint_touch(struct pa_pool *p, uint64_t id)
{
	uint64_t *h = (uint64_t *)(void *)(p->base + PA_HINTS_OFF) +
		      2 * (id % PA_HINTS_N);

	if (p->rdonly)
		return;
	__atomic_store_n(&h[0], id, __ATOMIC_RELAXED);
	__atomic_store_n(&h[1], pool_now_ns(), __ATOMIC_RELAXED);
}

/* hint_last_used -- when model id was last used, or 0 */
uint64_t
hint_last_used(const struct pa_pool *p, uint64_t id)
{
	const uint64_t *h = (const uint64_t *)(const void *)(p->base +
							    PA_HINTS_OFF) +
			    2 * (id % PA_HINTS_N);

	if (__atomic_load_n(&h[0], __ATOMIC_RELAXED) != id)
		return 0;
	return __atomic_load_n(&h[1], __ATOMIC_RELAXED);
}

/* ---- superblock ---- */

/* sb_ok -- whether a superblock copy is valid */
static bool
sb_ok(const struct pa_sb *sb)
{
	struct pa_sb t = *sb;

	if (memcmp(t.magic, PA_SB_MAGIC, sizeof(PA_SB_MAGIC)))
		return false;
	t.checksum = 0;
	return pa_crc32c(0, &t, sizeof(t)) == sb->checksum;
}

/* sb_sane -- the layout a valid superblock describes fits the mapping */
static int
sb_sane(struct pa_pool *p, const struct pa_sb *sb)
{
	uint64_t len = pa_map_length(p->map), end;

	if (sb->size > len)
		return ERR(-EBADMSG, "%s: the pool says it is %llu bytes but "
				     "only %llu are there (truncated?)",
			   p->path, (unsigned long long)sb->size,
			   (unsigned long long)len);
	if (sb->cat_off < PA_HINTS_OFF + PA_HINTS_SIZE ||
	    sb->cat_size < 4096 || sb->cat_size > sb->size ||
	    sb->cat_off + 2 * sb->cat_size > sb->data_off ||
	    sb->data_off > sb->size || sb->data_size > sb->size - sb->data_off ||
	    sb->nparts == 0 || sb->nparts > PA_PARTS_MAX || sb->align == 0)
		return ERR(-EBADMSG, "%s: superblock layout is inconsistent",
			   p->path);
	end = sb->data_off;
	for (uint32_t i = 0; i < sb->nparts; i++) {
		const struct pa_sb_part *pt = &sb->parts[i];

		if (pt->off != end || pt->size > sb->size - pt->off ||
		    memchr(pt->name, '\0', sizeof(pt->name)) == NULL)
			return ERR(-EBADMSG, "%s: partition table is "
					     "inconsistent", p->path);
		end += pt->size;
	}
	if (end != sb->data_off + sb->data_size)
		return ERR(-EBADMSG, "%s: partitions do not cover the data "
				     "area", p->path);
	return 0;
}

/* sb_load -- pick a valid superblock and check its features */
static int
sb_load(struct pa_pool *p)
{
	const struct pa_sb *a = (const void *)(p->base + PA_SB_OFF);
	const struct pa_sb *b = (const void *)(p->base + PA_SB_BACKUP_OFF);
	bool aok = sb_ok(a), bok = sb_ok(b);
	const struct pa_sb *sb;
	uint64_t unknown;

	if (!aok && !bok) {
		if (memcmp(a->magic, PA_SB_MAGIC, 8) &&
		    memcmp(b->magic, PA_SB_MAGIC, 8))
			return ERR(-ENODATA, "%s: not a pyaccel pool (create "
					     "one with `pyaccel pool "
					     "create`)", p->path);
		return ERR(-EBADMSG, "%s: both superblock copies are "
				     "damaged", p->path);
	}
	if (!aok)
		p->damage |= PA_DAMAGE_SB_PRIMARY;
	if (!bok)
		p->damage |= PA_DAMAGE_SB_BACKUP;
	sb = aok ? a : b;
	if (sb->major > PA_FORMAT_MAJOR)
		return ERR(-EPROTONOSUPPORT, "%s: written by a newer pyaccel "
					     "(pool format %u.%u, this one "
					     "reads %u.x); upgrade pyaccel",
			   p->path, sb->major, sb->minor, PA_FORMAT_MAJOR);
	unknown = sb->incompat & ~PA_INCOMPAT_KNOWN;
	if (unknown)
		return ERR(-EPROTONOSUPPORT, "%s: uses incompatible features "
					     "0x%llx this pyaccel does not "
					     "know; upgrade pyaccel",
			   p->path, (unsigned long long)unknown);
	unknown = sb->ro_compat & ~PA_RO_COMPAT_KNOWN;
	if (unknown && !p->rdonly)
		return ERR(-EPROTONOSUPPORT, "%s: uses features 0x%llx this "
					     "pyaccel can only read; open it "
					     "read-only or upgrade",
			   p->path, (unsigned long long)unknown);
	p->sb = *sb;
	return sb_sane(p, &p->sb);
}

/* ---- creation ---- */

/* layout -- fill a new superblock for a mapping of len bytes */
static int
layout(struct pa_pool *p, const struct pa_pool_cfg *cfg, uint64_t len,
       struct pa_sb *sb)
{
	uint64_t cat, rest, off;
	uint32_t n = cfg->nparts ? cfg->nparts : 1;

	memset(sb, 0, sizeof(*sb));
	memcpy(sb->magic, PA_SB_MAGIC, sizeof(PA_SB_MAGIC));
	sb->major = PA_FORMAT_MAJOR;
	sb->minor = PA_FORMAT_MINOR;
	if (getrandom(sb->uuid, sizeof(sb->uuid), 0) != sizeof(sb->uuid))
		return ERR_W_ERRNO("getrandom");
	sb->uuid[6] = (uint8_t)((sb->uuid[6] & 0x0f) | 0x40); /* v4 */
	sb->uuid[8] = (uint8_t)((sb->uuid[8] & 0x3f) | 0x80);
	sb->kind = pa_map_kind(p->map);
	sb->granularity = pa_map_granularity(p->map);
	sb->size = len;
	sb->created_ns = pool_now_ns();
	/* large extents 2 MiB-aligned where pages are that big: hugetlbfs,
	 * device-DAX, and tmpfs (whose pages are made huge at creation) */
	sb->align = (sb->kind == PA_KIND_HUGETLBFS ||
		     sb->kind == PA_KIND_DEVDAX || sb->kind == PA_KIND_TMPFS) ?
			    PA_MAX(pa_map_align(p->map), PA_DATA_ALIGN) :
			    PA_PAGE;
	/* room for about one tensor per 8 KiB of pool (a record, its name and
	 * extent take ~150 bytes), within [256 KiB, 16 MiB] per copy (16 MiB
	 * hold some 100,000 tensors; pools of more tensors say so) */
	cat = cfg->catalog_size ? cfg->catalog_size :
				  PA_MIN(PA_MAX(len / 64, 256 * PA_KIB),
					 16 * PA_MIB);
	cat = PA_ALIGN_UP(cat, PA_PAGE);
	sb->cat_off = PA_ALIGN_UP(PA_HINTS_OFF + PA_HINTS_SIZE, PA_PAGE);
	sb->cat_size = cat;
	sb->data_off = PA_ALIGN_UP(sb->cat_off + 2 * cat,
				   PA_MAX(PA_DATA_ALIGN, sb->align));
	if (len < PA_POOL_MIN_SIZE || sb->data_off + PA_PAGE > len)
		return ERR(-EINVAL, "%s: %llu bytes are too few for a pool "
				    "(at least %llu with this catalog size)",
			   p->path, (unsigned long long)len,
			   (unsigned long long)PA_MAX(sb->data_off + PA_DATA_ALIGN,
						      PA_POOL_MIN_SIZE));
	sb->data_size = PA_ALIGN_DOWN(len - sb->data_off, PA_PAGE);
	if (n > PA_PARTS_MAX)
		return ERR(-EINVAL, "%s: at most %d partitions", p->path,
			   PA_PARTS_MAX);
	sb->nparts = n;
	rest = sb->data_size;
	off = sb->data_off;
	for (uint32_t i = 0; i < n; i++) {
		const char *name = cfg->nparts ? cfg->parts[i].name : "default";
		uint64_t size = cfg->nparts ? cfg->parts[i].size : 0;

		if (!name || !*name || strlen(name) > PA_NAME_MAX)
			return ERR(-EINVAL, "%s: partition %u needs a name of "
					    "1 to %d characters", p->path, i,
				   PA_NAME_MAX);
		for (uint32_t k = 0; k < i; k++)
			if (strcmp(sb->parts[k].name, name) == 0)
				return ERR(-EINVAL, "%s: partition name %s "
						    "given twice", p->path,
					   name);
		if (size == 0 && i + 1 < n)
			return ERR(-EINVAL, "%s: only the last partition may "
					    "take what is left", p->path);
		if (i + 1 == n && size == 0)
			size = rest;
		else if (i + 1 < n)
			size = PA_ALIGN_UP(size, sb->align);
		if (size > rest || size == 0)
			return ERR(-ENOSPC, "%s: partition %s (%llu bytes) "
					    "does not fit: %llu bytes left",
				   p->path, name, (unsigned long long)size,
				   (unsigned long long)rest);
		if (i + 1 == n && size < rest)
			size = rest; /* the last one takes any remainder */
		snprintf(sb->parts[i].name, sizeof(sb->parts[i].name), "%s",
			 name);
		sb->parts[i].off = off;
		sb->parts[i].size = size;
		off += size;
		rest -= size;
	}
	sb->checksum = pa_crc32c(0, sb, sizeof(*sb));
	return 0;
}

/* looks_used -- a pool or some other data is already in the mapping */
static bool
looks_used(struct pa_pool *p)
{
	const uint64_t *w = (const void *)p->base;

	for (size_t i = 0; i < 8192 / sizeof(*w); i++)
		if (w[i])
			return true;
	return false;
}

/* pool_format -- write a new pool into the mapping */
static int
pool_format(struct pa_pool *p, const struct pa_pool_cfg *cfg)
{
	uint64_t len = pa_map_length(p->map);
	struct pa_sb sb;
	int rc;

	if (looks_used(p) && !(cfg->flags & PA_POOL_FORCE))
		return ERR(-EEXIST, "%s: holds a pool or other data already; "
				    "give force to overwrite it", p->path);
	rc = layout(p, cfg, len, &sb);
	if (rc)
		return rc;
	/* the superblock goes last: until it is there, this is no pool */
	rc = pool_write(p, PA_SB_OFF, (char[8]){0}, 8);
	if (!rc)
		rc = pool_write(p, PA_SB_BACKUP_OFF, (char[8]){0}, 8);
	if (!rc)
		rc = pool_persist(p, 0, 2 * PA_PAGE);
	if (rc)
		return rc;
	p->sb = sb;
	memset(p->base + PA_STATE_OFF, 0, sb.cat_off - PA_STATE_OFF);
	memset(p->base + sb.cat_off, 0, sizeof(struct pa_cat_hdr));
	memset(p->base + sb.cat_off + sb.cat_size, 0,
	       sizeof(struct pa_cat_hdr));
	rc = pool_persist(p, PA_STATE_OFF, sb.cat_off - PA_STATE_OFF);
	if (!rc)
		rc = pool_persist(p, sb.cat_off, sizeof(struct pa_cat_hdr));
	if (!rc)
		rc = pool_persist(p, sb.cat_off + sb.cat_size,
				  sizeof(struct pa_cat_hdr));
	if (rc)
		return rc;
	memset(&p->state, 0, sizeof(p->state));
	p->state_slot = 1;
	boot_id(p->state.boot_id);
	p->state.dirty = 1;
	rc = state_write(p);
	if (rc)
		return rc;
	/* both catalog copies valid from the start: generations 0 and 1 */
	cat_free(&p->cat);
	p->cat.generation = (uint64_t)-1;
	p->cat.next_model_id = 1;
	p->cat.next_extent_id = 1;
	rc = cat_commit(p);
	if (!rc)
		rc = cat_commit(p);
	if (rc)
		return rc;
	rc = pool_write(p, PA_SB_BACKUP_OFF, &sb, sizeof(sb));
	if (!rc)
		rc = pool_persist(p, PA_SB_BACKUP_OFF, sizeof(sb));
	if (!rc)
		rc = pool_write(p, PA_SB_OFF, &sb, sizeof(sb));
	if (!rc)
		rc = pool_persist(p, PA_SB_OFF, sizeof(sb));
	return rc;
}

/* ---- open and close ---- */

/* first_user -- set the dirty mark; note an unclean shutdown before it */
static int
first_user(struct pa_pool *p)
{
	uint8_t id[16];
	int rc;

	boot_id(id);
	rc = pool_lock(p, LOCK_WRITER, F_WRLCK, true);
	if (rc)
		return rc;
	if (p->state.dirty && memcmp(p->state.boot_id, id, 16) != 0 &&
	    pa_map_is_persistent(p->map)) {
		/* in use when the machine went down: writes in flight may
		 * not have reached the media */
		p->state.needs_fsck = 1;
		p->damage |= PA_DAMAGE_UNCLEAN;
	}
	p->state.dirty = 1;
	memcpy(p->state.boot_id, id, 16);
	rc = state_write(p);
	pool_unlock(p, LOCK_WRITER);
	return rc;
}

/* pa_pool_open -- open (or format) the pool at path */
PA_EXPORT int
pa_pool_open(struct pa_pool **out, const struct pa_pool_cfg *cfg)
{
	struct pa_map_cfg mc;
	struct pa_pool *p;
	int rc;

	if (!out || !cfg || !cfg->path || !*cfg->path)
		return ERR(-EINVAL, "pa_pool_open: no path given");
	*out = NULL;
	if ((cfg->flags & PA_POOL_CREATE) && (cfg->flags & PA_POOL_RDONLY))
		return ERR(-EINVAL, "%s: cannot create a pool read-only",
			   cfg->path);
	p = calloc(1, sizeof(*p));
	if (!p)
		return ERR(-ENOMEM, "out of memory");
	pthread_mutex_init(&p->mu, NULL);
	p->fd = -1;
	p->rdonly = (cfg->flags & PA_POOL_RDONLY) != 0;
	p->recover = (cfg->flags & PA_POOL_RECOVER) != 0;
	snprintf(p->path, sizeof(p->path), "%s", cfg->path);

	memset(&mc, 0, sizeof(mc));
	mc.path = cfg->path;
	mc.mode = cfg->mode;
	mc.sysfs_root = cfg->sysfs_root;
	mc.flags = p->rdonly ? PA_MAP_READONLY : 0;
	if (!(cfg->flags & PA_POOL_CREATE)) {
		struct stat st;

		/* a pool file is page-sized; map whole pages of anything else,
		 * so that a stray file is "not a pool", not a length error */
		if (stat(cfg->path, &st) == 0 && S_ISREG(st.st_mode) &&
		    st.st_size % PA_PAGE) {
			if ((uint64_t)st.st_size < PA_POOL_MIN_SIZE) {
				rc = ERR(-ENODATA, "%s: %llu bytes: not a "
						   "pyaccel pool", cfg->path,
					 (unsigned long long)st.st_size);
				goto err;
			}
			mc.length = PA_ALIGN_DOWN((uint64_t)st.st_size, PA_PAGE);
		}
	}
	if (cfg->flags & PA_POOL_CREATE) {
		struct stat st;

		mc.flags |= PA_MAP_CREATE;
		/* a file is made to the size asked; a device is used whole */
		if (stat(cfg->path, &st) == 0 && !S_ISREG(st.st_mode))
			mc.length = 0;
		else if (cfg->size)
			mc.length = PA_ALIGN_UP(cfg->size, PA_PAGE);
		else if (stat(cfg->path, &st) != 0 || st.st_size == 0) {
			rc = ERR(-EINVAL, "%s: a new pool file needs a size",
				 cfg->path);
			goto err;
		}
	}
	rc = pa_map_new(&p->map, &mc);
	if (rc)
		goto err;
	p->base = pa_map_addr(p->map);
	p->fd = pa_map_fd(p->map);
	if (pa_map_length(p->map) < PA_POOL_MIN_SIZE) {
		rc = ERR((cfg->flags & PA_POOL_CREATE) ? -EINVAL : -ENODATA,
			 "%s: %llu bytes: too small to be a pool (at least "
			 "%llu)", cfg->path,
			 (unsigned long long)pa_map_length(p->map),
			 (unsigned long long)PA_POOL_MIN_SIZE);
		goto err;
	}

	if (cfg->flags & PA_POOL_CREATE) {
		/* formatting takes the writer lock so no one opens it half
		 * made; a second creator waits, then finds a pool there */
		rc = pool_lock(p, LOCK_WRITER, F_WRLCK, true);
		if (rc)
			goto err;
		rc = pool_format(p, cfg);
		pool_unlock(p, LOCK_WRITER);
		if (rc)
			goto err;
		rc = pool_lock(p, LOCK_USERS, F_RDLCK, true);
		if (rc)
			goto err;
		*out = p;
		return 0;
	}

	rc = sb_load(p);
	if (rc)
		goto err;
	if (state_read_locked(p) && !p->recover) {
		rc = ERR(-EBADMSG, "%s: the pool's state page is damaged; "
				   "run `pyaccel pool fsck --repair`", p->path);
		goto err;
	}
	if (p->rdonly) {
		rc = pool_lock(p, LOCK_READERS, F_RDLCK, true);
	} else if (pool_lock(p, LOCK_USERS, F_WRLCK, false) == 0) {
		rc = first_user(p);
		if (!rc)
			rc = pool_lock(p, LOCK_USERS, F_RDLCK, true);
	} else {
		rc = pool_lock(p, LOCK_USERS, F_RDLCK, true);
	}
	if (rc)
		goto err;
	if (p->state.needs_fsck && !p->recover) {
		rc = ERR(-EUCLEAN, "%s: %s; run `pyaccel pool fsck --repair` "
				   "before using it", p->path,
			 (p->damage & PA_DAMAGE_UNCLEAN) ?
				 "the machine went down while the pool was "
				 "in use (unclean shutdown)" :
				 "the pool is marked as needing a check");
		goto err;
	}
	for (int attempt = 0;; attempt++) {
		uint32_t damage = 0;

		rc = cat_read_full(p, &p->cat, &damage, true);
		if (rc == 0 && (damage & PA_DAMAGE_CATALOG_OLD) &&
		    attempt < 3) {
			/* maybe a commit raced the state read: look again */
			cat_free(&p->cat);
			usleep(1000);
			state_read_locked(p);
			continue;
		}
		p->damage |= damage;
		break;
	}
	if (rc)
		goto err;
	*out = p;
	return 0;
err:
	if (p->map)
		pa_map_delete(&p->map);
	cat_free(&p->cat);
	pthread_mutex_destroy(&p->mu);
	free(p->leases);
	free(p);
	return rc;
}

/* pa_pool_close -- release leases and locks, mark clean, unmap, free */
PA_EXPORT int
pa_pool_close(struct pa_pool **pp)
{
	struct pa_pool *p;

	if (!pp || !*pp)
		return 0;
	p = *pp;
	for (uint32_t i = 0; i < p->n_leases; i++)
		pool_unlock(p, LEASE_BASE + p->leases[i].id);
	if (!p->rdonly && pool_lock(p, LOCK_USERS, F_WRLCK, false) == 0) {
		/* the last read-write user out marks the pool clean */
		if (pool_lock(p, LOCK_WRITER, F_WRLCK, true) == 0) {
			state_read_locked(p);
			if (p->state.dirty) {
				p->state.dirty = 0;
				state_write(p);
			}
			pool_unlock(p, LOCK_WRITER);
		}
	}
	pa_map_delete(&p->map); /* closing the fd drops every lock */
	cat_free(&p->cat);
	free(p->leases);
	pthread_mutex_destroy(&p->mu);
	free(p);
	*pp = NULL;
	return 0;
}

PA_EXPORT struct pa_map *
pa_pool_map(struct pa_pool *p)
{
	return p->map;
}

/* ---- status ---- */

/* pa_pool_stat -- sizes, usage, dedup savings and health */
PA_EXPORT int
pa_pool_stat(struct pa_pool *p, struct pa_pool_stat *st)
{
	uint64_t stored = 0;
	int rc;

	pthread_mutex_lock(&p->mu);
	rc = pool_refresh_locked(p);
	if (rc < 0)
		goto out;
	rc = 0;
	memset(st, 0, sizeof(*st));
	memcpy(st->uuid, p->sb.uuid, 16);
	st->format_major = p->sb.major;
	st->format_minor = p->sb.minor;
	st->compat = p->sb.compat;
	st->incompat = p->sb.incompat;
	st->ro_compat = p->sb.ro_compat;
	st->size = p->sb.size;
	st->data_size = p->sb.data_size;
	st->generation = p->cat.generation;
	st->created_ns = p->sb.created_ns;
	st->catalog_offset = p->sb.cat_off;
	st->catalog_size = p->sb.cat_size;
	st->data_offset = p->sb.data_off;
	st->n_parts = p->sb.nparts;
	st->kind = (enum pa_kind)p->sb.kind;
	st->granularity = pa_map_granularity(p->map);
	st->persistent = pa_map_is_persistent(p->map);
	state_read_locked(p);
	st->clean = !p->state.dirty;
	st->needs_fsck = (int)p->state.needs_fsck;
	st->damage = p->damage;
	for (uint32_t i = 0; i < p->sb.nparts; i++) {
		uint64_t used, fr, largest;

		part_usage(p, &p->cat, i, &used, &fr, &largest);
		st->used += used;
		st->free += fr;
		st->largest_free = PA_MAX(st->largest_free, largest);
	}
	st->frag_ppm = st->free ? (uint32_t)(1000000ULL -
					     (st->largest_free * 1000000ULL) /
						     st->free) :
				  0;
	for (uint32_t i = 0; i < p->cat.n_models; i++) {
		struct mem_model *m = &p->cat.models[i];

		if (m->state == PA_MODEL_READY)
			st->n_models++;
		else
			st->n_loading++;
		st->n_tensors += m->n_tensors;
		st->logical += m->bytes;
	}
	for (uint32_t i = 0; i < p->cat.n_extents; i++)
		if (p->cat.extents[i].id)
			stored += p->cat.extents[i].length;
	/* meta blobs are extents too, but not tensor bytes */
	for (uint32_t i = 0; i < p->cat.n_models; i++)
		if (p->cat.models[i].meta_extent) {
			struct pa_cat_extent *e = cat_extent(
				&p->cat, p->cat.models[i].meta_extent);

			if (e)
				stored -= PA_MIN(stored, e->length);
		}
	st->n_extents = p->cat.n_extents;
	st->dedup_saved = st->logical > stored ? st->logical - stored : 0;
out:
	pthread_mutex_unlock(&p->mu);
	return rc;
}

/* pa_pool_part -- one partition's place and usage */
PA_EXPORT int
pa_pool_part(struct pa_pool *p, uint32_t i, struct pa_part_info *info)
{
	if (i >= p->sb.nparts)
		return ERR(-EINVAL, "%s: no partition %u (there are %u)",
			   p->path, i, p->sb.nparts);
	pthread_mutex_lock(&p->mu);
	memset(info, 0, sizeof(*info));
	snprintf(info->name, sizeof(info->name), "%s", p->sb.parts[i].name);
	info->offset = p->sb.parts[i].off;
	info->size = p->sb.parts[i].size;
	part_usage(p, &p->cat, i, &info->used, &info->free,
		   &info->largest_free);
	pthread_mutex_unlock(&p->mu);
	return 0;
}

/* pa_pool_part_find -- index of the partition called name */
PA_EXPORT int
pa_pool_part_find(struct pa_pool *p, const char *name)
{
	for (uint32_t i = 0; i < p->sb.nparts; i++)
		if (strcmp(p->sb.parts[i].name, name) == 0)
			return (int)i;
	return ERR(-ENOENT, "%s: no partition called %s", p->path, name);
}

/* ---- lookups ---- */

/* pa_pool_refresh -- pick up commits made since the last look */
PA_EXPORT int
pa_pool_refresh(struct pa_pool *p)
{
	int rc;

	pthread_mutex_lock(&p->mu);
	rc = pool_refresh_locked(p);
	pthread_mutex_unlock(&p->mu);
	return rc;
}

/* fill_model -- the public view of a model record */
static void
fill_model(struct pa_pool *p, struct mem_model *m, struct pa_model_info *o)
{
	struct pa_cat_extent *e = m->meta_extent ?
					  cat_extent(&p->cat, m->meta_extent) :
					  NULL;

	memset(o, 0, sizeof(*o));
	o->id = m->id;
	o->name = m->name;
	o->state = (enum pa_model_state)m->state;
	o->part = m->part;
	o->n_tensors = m->n_tensors;
	o->n_sources = m->n_sources;
	o->bytes = m->bytes;
	o->created_ns = m->created_ns;
	o->last_used_ns = PA_MAX(hint_last_used(p, m->id), m->created_ns);
	o->content_hash = m->content_hash;
	o->meta_len = m->meta_len;
	o->flags = m->flags;
	o->owner_pid = m->owner_pid;
	if (e) {
		o->meta_off = e->offset;
		o->meta_crc = e->crc;
	}
	for (uint32_t k = 0; k < m->n_tensors; k++) {
		struct pa_cat_extent *te = cat_extent(&p->cat,
						      m->tensors[k].extent_id);

		if (te && te->refcount == 1)
			o->stored += te->length;
	}
}

PA_EXPORT ssize_t
pa_pool_model_count(struct pa_pool *p)
{
	return (ssize_t)p->cat.n_models;
}

PA_EXPORT int
pa_pool_model_at(struct pa_pool *p, size_t i, struct pa_model_info *m)
{
	if (i >= p->cat.n_models)
		return ERR(-EINVAL, "%s: no model at index %zu", p->path, i);
	fill_model(p, &p->cat.models[i], m);
	return 0;
}

PA_EXPORT int
pa_pool_model_find(struct pa_pool *p, const char *name,
		   struct pa_model_info *m)
{
	struct mem_model *best = NULL;

	for (uint32_t i = 0; i < p->cat.n_models; i++) {
		struct mem_model *c = &p->cat.models[i];

		if (c->state == PA_MODEL_READY &&
		    !(c->flags & PA_MODEL_F_SUPERSEDED) &&
		    strcmp(c->name, name) == 0 && (!best || c->id > best->id))
			best = c;
	}
	if (!best)
		return ERR(-ENOENT, "%s: no model called %s", p->path, name);
	fill_model(p, best, m);
	return 0;
}

PA_EXPORT int
pa_pool_model_get(struct pa_pool *p, uint64_t id, struct pa_model_info *m)
{
	struct mem_model *c = cat_model(&p->cat, id);

	if (!c)
		return ERR(-ENOENT, "%s: no model with id %llu", p->path,
			   (unsigned long long)id);
	fill_model(p, c, m);
	return 0;
}

PA_EXPORT int
pa_pool_tensor_at(struct pa_pool *p, uint64_t model_id, size_t i,
		  struct pa_tensor_info *t)
{
	struct mem_model *m = cat_model(&p->cat, model_id);
	struct pa_cat_extent *e;
	struct mem_tensor *mt;

	if (!m || i >= m->n_tensors)
		return ERR(-ENOENT, "%s: model %llu has no tensor %zu",
			   p->path, (unsigned long long)model_id, i);
	mt = &m->tensors[i];
	e = cat_extent(&p->cat, mt->extent_id);
	memset(t, 0, sizeof(*t));
	t->name = mt->name;
	t->dtype = mt->dtype;
	t->ndim = mt->ndim;
	t->dims = mt->dims;
	t->nbytes = mt->nbytes;
	t->extent_id = mt->extent_id;
	if (e) {
		t->offset = e->offset;
		t->crc32c = e->crc;
		t->refcount = e->refcount;
	} else {
		t->offset = p->sb.data_off; /* empty tensor: no extent */
	}
	return 0;
}

PA_EXPORT int
pa_pool_source_at(struct pa_pool *p, uint64_t model_id, size_t i,
		  struct pa_source_rec *s)
{
	struct mem_model *m = cat_model(&p->cat, model_id);

	if (!m || i >= m->n_sources)
		return ERR(-ENOENT, "%s: model %llu has no source %zu",
			   p->path, (unsigned long long)model_id, i);
	s->path = m->sources[i].path;
	s->size = m->sources[i].size;
	s->mtime_ns = m->sources[i].mtime_ns;
	s->ino = m->sources[i].ino;
	s->dev = m->sources[i].dev;
	return 0;
}

/* ---- leases ---- */

/* lease_slot -- this process's lease record for id, or NULL */
static struct lease *
lease_slot(struct pa_pool *p, uint64_t id)
{
	for (uint32_t i = 0; i < p->n_leases; i++)
		if (p->leases[i].id == id)
			return &p->leases[i];
	return NULL;
}

/* lease_count -- how often this process leases id */
uint32_t
lease_count(const struct pa_pool *p, uint64_t id)
{
	for (uint32_t i = 0; i < p->n_leases; i++)
		if (p->leases[i].id == id)
			return p->leases[i].count;
	return 0;
}

/* lease_add -- count one more lease on id (the lock is already held) */
int
lease_add(struct pa_pool *p, uint64_t id)
{
	struct lease *l = lease_slot(p, id);

	if (l) {
		l->count++;
		return 0;
	}
	if (p->n_leases == p->cap_leases) {
		uint32_t cap = p->cap_leases ? p->cap_leases * 2 : 8;
		struct lease *n = realloc(p->leases, cap * sizeof(*n));

		if (!n)
			return ERR(-ENOMEM, "out of memory");
		p->leases = n;
		p->cap_leases = cap;
	}
	p->leases[p->n_leases].id = id;
	p->leases[p->n_leases].count = 1;
	p->n_leases++;
	return 0;
}

/* pool_lease_locked -- pa_pool_lease with p->mu held */
int
pool_lease_locked(struct pa_pool *p, uint64_t id, unsigned flags)
{
	struct mem_model *m;
	bool wait;
	int rc;

	if (lease_slot(p, id)) {
		lease_add(p, id);
		return 0;
	}
	m = cat_model(&p->cat, id);
	if (!m) {
		rc = pool_refresh_locked(p);
		if (rc < 0)
			return rc;
		m = cat_model(&p->cat, id);
		if (!m)
			return ERR(-ENOENT, "%s: model %llu is not in the pool "
					    "(evicted?)", p->path,
				   (unsigned long long)id);
	}
	if (m->state == PA_MODEL_LOADING && !(flags & PA_LEASE_WAIT) &&
	    pool_lock_probe(p, LEASE_BASE + id) == 1)
		return ERR(-EAGAIN, "%s: model %s is still being loaded by "
				    "process %lld", p->path, m->name,
			   (long long)m->owner_pid);
	/* the lock waits for a loader (when asked) or for an evictor, which
	 * holds it only for one catalog commit; then the catalog says whether
	 * the model is (still) there */
	wait = (flags & PA_LEASE_WAIT) || m->state == PA_MODEL_READY;
	pthread_mutex_unlock(&p->mu);
	rc = pool_lock(p, LEASE_BASE + id, F_RDLCK, wait);
	pthread_mutex_lock(&p->mu);
	if (rc == -EAGAIN)
		return ERR(-EAGAIN, "%s: model %llu is being loaded or "
				    "evicted by another process", p->path,
			   (unsigned long long)id);
	if (rc)
		return rc;
	rc = pool_refresh_locked(p);
	if (rc < 0)
		goto unlock;
	m = cat_model(&p->cat, id);
	if (!m || m->state != PA_MODEL_READY) {
		rc = ERR(-ENOENT, "%s: model %llu %s", p->path,
			 (unsigned long long)id,
			 m ? "was left half loaded by a process that died" :
			     "is gone (evicted, or its load failed)");
		goto unlock;
	}
	rc = lease_add(p, id);
	if (rc)
		goto unlock;
	hint_touch(p, id);
	return 0;
unlock:
	if (!lease_slot(p, id))
		pool_unlock(p, LEASE_BASE + id);
	return rc;
}

/* pa_pool_lease -- hold model id for this process */
PA_EXPORT int
pa_pool_lease(struct pa_pool *p, uint64_t id, unsigned flags)
{
	int rc;

	pthread_mutex_lock(&p->mu);
	rc = pool_lease_locked(p, id, flags);
	pthread_mutex_unlock(&p->mu);
	return rc;
}

/* pa_pool_unlease -- drop one lease on id */
PA_EXPORT int
pa_pool_unlease(struct pa_pool *p, uint64_t id)
{
	struct lease *l;
	int rc = 0;

	pthread_mutex_lock(&p->mu);
	l = lease_slot(p, id);
	if (!l) {
		rc = ERR(-ENOENT, "%s: model %llu is not leased here", p->path,
			 (unsigned long long)id);
	} else if (--l->count == 0) {
		*l = p->leases[--p->n_leases];
		rc = pool_unlock(p, LEASE_BASE + id);
	}
	pthread_mutex_unlock(&p->mu);
	return rc;
}

/* pa_pool_in_use -- 1 when some process (this one included) leases id */
PA_EXPORT int
pa_pool_in_use(struct pa_pool *p, uint64_t id)
{
	int rc;

	pthread_mutex_lock(&p->mu);
	rc = lease_slot(p, id) ? 1 : pool_lock_probe(p, LEASE_BASE + id);
	pthread_mutex_unlock(&p->mu);
	return rc;
}
