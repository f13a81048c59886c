/* SPDX-License-Identifier: MIT */
/*
 * load.c -- loading a model into the pool, and evicting one
 *
 * A load is two short catalog commits around the data copy, so the writer
 * lock is held only while the catalog changes, never while data streams:
 *
 *   begin   allocate every extent (evicting least-recently-used models no
 *           one leases when space is short), commit the model as LOADING,
 *           holding its lease byte exclusively;
 *   ...     the caller writes the extents (pa_stream) and sets their CRCs;
 *   commit  persist, share extents with identical ones already stored,
 *           commit the model as READY, and let the lease go (or keep a
 *           shared one).
 *
 * A loader that dies leaves a LOADING record whose lease byte nobody holds:
 * fsck, or the next load that runs short of space, reclaims it.  Readers
 * wanting the same model wait on the lease byte and then attach.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pool.h"

struct pa_load {
	struct pa_pool *p;
	uint64_t id;
	uint32_t n;		/* tensors; slot n is the blob */
	uint64_t *off;
	uint32_t *crc;
	bool *crc_set;
	bool *shared;		/* same_as another tensor: nothing to write */
};

/* load_free -- free the handle */
static void
load_free(struct pa_load **lp)
{
	struct pa_load *l = *lp;

	if (!l)
		return;
	free(l->off);
	free(l->crc);
	free(l->crc_set);
	free(l->shared);
	free(l);
	*lp = NULL;
}

/* desc_check -- reject descriptions that cannot be stored */
static int
desc_check(struct pa_pool *p, const struct pa_model_desc *d)
{
	if (!d->name || !*d->name || strlen(d->name) > 4096)
		return ERR(-EINVAL, "a model needs a name of 1 to 4096 bytes");
	if (d->part >= p->sb.nparts)
		return ERR(-EINVAL, "%s: no partition %u", p->path, d->part);
	if (d->n_tensors && !d->tensors)
		return ERR(-EINVAL, "model %s: no tensor table", d->name);
	if (d->n_sources && !d->sources)
		return ERR(-EINVAL, "model %s: no source table", d->name);
	for (uint32_t i = 0; i < d->n_tensors; i++) {
		const struct pa_tensor_desc *t = &d->tensors[i];

		if (!t->name || !*t->name)
			return ERR(-EINVAL, "model %s: tensor %u has no name",
				   d->name, i);
		if (t->ndim > 64 || (t->ndim && !t->dims))
			return ERR(-EINVAL, "model %s: tensor %s has %u "
					    "dimensions (at most 64)",
				   d->name, t->name, t->ndim);
		if (t->same_as >= (int64_t)i ||
		    (t->same_as >= 0 &&
		     d->tensors[t->same_as].nbytes != t->nbytes))
			return ERR(-EINVAL, "model %s: tensor %s: same_as "
					    "must name an earlier tensor of "
					    "the same size", d->name,
				   t->name);
	}
	for (uint32_t i = 0; i < d->n_sources; i++)
		if (!d->sources[i].path)
			return ERR(-EINVAL, "model %s: source %u has no path",
				   d->name, i);
	return 0;
}

/* victim_cmp -- superseded versions first, then least recently used */
struct victim {
	uint64_t id, last_used;
	uint32_t superseded;
};

static int
victim_cmp(const void *a, const void *b)
{
	const struct victim *x = a, *y = b;

	if (x->superseded != y->superseded)
		return x->superseded ? -1 : 1;
	return x->last_used < y->last_used ? -1 : x->last_used > y->last_used;
}

struct held {
	uint64_t *v;
	uint32_t n;
};

/* held_release -- let go of the lease bytes taken to evict */
static void
held_release(struct pa_pool *p, struct held *h)
{
	for (uint32_t i = 0; i < h->n; i++)
		pool_unlock(p, LEASE_BASE + h->v[i]);
	free(h->v);
	memset(h, 0, sizeof(*h));
}

/* held_add -- remember a lease byte taken exclusively */
static int
held_add(struct held *h, uint64_t id)
{
	uint64_t *n = realloc(h->v, (h->n + 1) * sizeof(*n));

	if (!n)
		return ERR(-ENOMEM, "out of memory");
	h->v = n;
	h->v[h->n++] = id;
	return 0;
}

/*
 * evict_one -- drop (in memory) the best victim in part: a dead loader's
 * record, else the least recently used model no one leases.  The lease
 * byte stays held exclusively until the caller commits.  -ENOSPC when
 * there is nothing left to evict.
 */
static int
evict_one(struct pa_pool *p, uint32_t part, uint64_t self, struct held *h)
{
	struct mem_cat *c = &p->cat;
	struct victim *v = malloc((c->n_models + 1) * sizeof(*v));
	uint32_t n = 0;
	int rc = -ENOSPC;

	if (!v)
		return ERR(-ENOMEM, "out of memory");
	for (uint32_t i = 0; i < c->n_models; i++) {
		struct mem_model *m = &c->models[i];

		if (m->part != part || m->id == self ||
		    lease_count(p, m->id))
			continue;
		v[n].id = m->id;
		v[n].last_used = m->state == PA_MODEL_LOADING ?
					 0 :
					 PA_MAX(hint_last_used(p, m->id),
						m->created_ns);
		v[n].superseded = m->state == PA_MODEL_LOADING ||
				  (m->flags & PA_MODEL_F_SUPERSEDED);
		n++;
	}
	qsort(v, n, sizeof(*v), victim_cmp);
	for (uint32_t i = 0; i < n; i++) {
		if (pool_lock(p, LEASE_BASE + v[i].id, F_WRLCK, false))
			continue; /* leased, or still loading */
		if (held_add(h, v[i].id)) {
			pool_unlock(p, LEASE_BASE + v[i].id);
			rc = -ENOMEM;
			break;
		}
		cat_model_drop(c, v[i].id);
		rc = 0;
		break;
	}
	free(v);
	return rc;
}

/* place -- allocate every extent of model m, or -ENOSPC */
static int
place(struct pa_pool *p, struct mem_model *m, const struct pa_model_desc *d,
      struct pa_load *l, bool *injected)
{
	struct mem_cat *c = &p->cat;
	uint64_t next = c->next_extent_id;
	struct gaps g;
	int rc = gaps_build(p, c, d->part, &g);

	if (rc)
		return rc;
	for (uint32_t i = 0; i <= d->n_tensors; i++) {
		uint64_t len = i < d->n_tensors ? d->tensors[i].nbytes :
						  d->meta_len;
		struct pa_cat_extent e;

		if (i < d->n_tensors && d->tensors[i].same_as >= 0) {
			int64_t s = d->tensors[i].same_as;

			m->tensors[i].extent_id = m->tensors[s].extent_id;
			l->off[i] = l->off[s];
			l->shared[i] = true;
			if (m->tensors[i].extent_id)
				cat_extent(c, m->tensors[i].extent_id)
					->refcount++;
			continue;
		}
		if (len == 0) {
			l->off[i] = p->sb.data_off;
			continue;
		}
		memset(&e, 0, sizeof(e));
		e.alloc = PA_ALIGN_UP(len, PA_PAGE);
		e.length = len;
		e.part = d->part;
		e.refcount = 1;
		rc = pa_fault_hit(PA_FAULT_ALLOC);
		if (rc)
			*injected = true;
		else
			rc = gaps_take(&g, e.alloc, extent_align(p, len),
				       &e.offset);
		if (rc)
			break;
		e.id = next++;
		rc = cat_extent_add(c, &e);
		if (rc)
			break;
		l->off[i] = e.offset;
		if (i < d->n_tensors)
			m->tensors[i].extent_id = e.id;
		else
			m->meta_extent = e.id;
	}
	gaps_free(&g);
	if (!rc)
		c->next_extent_id = next;
	return rc;
}

/* no_space -- the -ENOSPC message: what was needed and what holds space */
static int
no_space(struct pa_pool *p, const struct pa_model_desc *d, int rc)
{
	uint64_t need = PA_ALIGN_UP(d->meta_len, PA_PAGE), used, fr, big;
	char busy[256] = "";
	size_t bl = 0;

	if (rc != -ENOSPC)
		return rc;
	for (uint32_t i = 0; i < d->n_tensors; i++)
		if (d->tensors[i].same_as < 0)
			need += PA_ALIGN_UP(d->tensors[i].nbytes, PA_PAGE);
	part_usage(p, &p->cat, d->part, &used, &fr, &big);
	for (uint32_t i = 0; i < p->cat.n_models && bl < sizeof(busy) - 40;
	     i++)
		if (p->cat.models[i].part == d->part)
			bl += (size_t)snprintf(busy + bl, sizeof(busy) - bl,
					       "%s%s", bl ? ", " : "",
					       p->cat.models[i].name);
	return ERR(-ENOSPC, "%s: model %s needs %llu bytes in partition %s, "
			    "which has %llu free (largest range %llu)%s; "
			    "in use: %s",
		   p->path, d->name, (unsigned long long)need,
		   p->sb.parts[d->part].name, (unsigned long long)fr,
		   (unsigned long long)big,
		   (d->flags & PA_LOAD_NO_EVICT) ?
			   " and eviction was not allowed" :
			   " after evicting every model not in use",
		   bl ? busy : "none");
}

/* pa_load_begin -- allocate and record the model as LOADING */
PA_EXPORT int
pa_load_begin(struct pa_load **out, struct pa_pool *p,
	      const struct pa_model_desc *d)
{
	struct held held = {NULL, 0};
	struct pa_load *l = NULL;
	struct mem_model m;
	bool writer = false, leased = false, injected = false;
	int rc;

	if (!out || !p || !d)
		return ERR(-EINVAL, "pa_load_begin: missing argument");
	*out = NULL;
	memset(&m, 0, sizeof(m));
	pthread_mutex_lock(&p->mu);
	if (p->rdonly) {
		rc = ERR(-EROFS, "%s: pool is open read-only", p->path);
		goto out;
	}
	rc = desc_check(p, d);
	if (rc)
		goto out;
	l = calloc(1, sizeof(*l));
	if (l) {
		l->off = calloc(d->n_tensors + 1, sizeof(*l->off));
		l->crc = calloc(d->n_tensors + 1, sizeof(*l->crc));
		l->crc_set = calloc(d->n_tensors + 1, sizeof(*l->crc_set));
		l->shared = calloc(d->n_tensors + 1, sizeof(*l->shared));
	}
	if (!l || !l->off || !l->crc || !l->crc_set || !l->shared) {
		rc = ERR(-ENOMEM, "out of memory for %u tensors", d->n_tensors);
		goto out;
	}
	l->p = p;
	l->n = d->n_tensors;

	rc = pool_lock(p, LOCK_WRITER, F_WRLCK, true);
	if (rc)
		goto out;
	writer = true;
	rc = pool_refresh_locked(p);
	if (rc < 0)
		goto out;
	l->id = p->cat.next_model_id++;
	rc = pool_lock(p, LEASE_BASE + l->id, F_WRLCK, false);
	if (rc) {
		rc = ERR(-EBUSY, "%s: lease byte of new model %llu is held",
			 p->path, (unsigned long long)l->id);
		goto out;
	}
	leased = true;
	rc = model_build(&m, d);
	if (rc)
		goto out;
	m.id = l->id;
	m.owner_pid = getpid();
	m.created_ns = pool_now_ns();
	for (;;) {
		rc = place(p, &m, d, l, &injected);
		if (rc != -ENOSPC || injected || (d->flags & PA_LOAD_NO_EVICT))
			break;
		/* undo this attempt's extents, evict one, try again */
		for (uint64_t id = p->cat.next_extent_id;; id++) {
			if (!cat_extent(&p->cat, id))
				break;
			cat_extent_remove(&p->cat, id);
		}
		rc = evict_one(p, d->part, l->id, &held);
		if (rc)
			break;
	}
	if (rc) {
		if (!injected)
			rc = no_space(p, d, rc);
		goto undo;
	}
	rc = cat_model_append(&p->cat, &m);
	if (rc)
		goto undo;
	rc = cat_commit(p);
	if (rc)
		goto out; /* cat_commit read the catalog back */
	*out = l;
	l = NULL;
	leased = false; /* the handle owns it now */
	goto out;
undo: {
	char msg[512];

	snprintf(msg, sizeof(msg), "%s", pa_errormsg());
	pool_reload(p);
	pa_err_set("%s", msg);
}
out:
	model_free(&m);
	held_release(p, &held);
	if (leased)
		pool_unlock(p, LEASE_BASE + l->id);
	if (writer)
		pool_unlock(p, LOCK_WRITER);
	load_free(&l);
	pthread_mutex_unlock(&p->mu);
	return rc;
}

PA_EXPORT uint64_t
pa_load_model_id(const struct pa_load *l)
{
	return l->id;
}

/* pa_load_offset -- pool offset for tensor i (i == n: the blob) */
PA_EXPORT int
pa_load_offset(const struct pa_load *l, size_t i, uint64_t *off)
{
	if (i > l->n)
		return ERR(-EINVAL, "load: no tensor %zu", i);
	*off = l->off[i];
	return 0;
}

/* pa_load_set_crc -- record the CRC32C of what was written for slot i */
PA_EXPORT int
pa_load_set_crc(struct pa_load *l, size_t i, uint32_t crc)
{
	if (i > l->n)
		return ERR(-EINVAL, "load: no tensor %zu", i);
	l->crc[i] = crc;
	l->crc_set[i] = true;
	return 0;
}

/* ---- dedup: a small hash of extents by (crc, length) ---- */

struct dedup {
	uint64_t *ids;		/* 0: empty */
	uint32_t cap;
};

static uint32_t
dedup_hash(uint32_t crc, uint64_t len, uint32_t cap)
{
	uint64_t h = (crc ^ (len * 0x9e3779b97f4a7c15ULL)) *
		     0xff51afd7ed558ccdULL;

	return (uint32_t)(h >> 32) & (cap - 1);
}

static void
dedup_put(struct dedup *d, struct mem_cat *c, uint64_t id)
{
	struct pa_cat_extent *e = cat_extent(c, id);
	uint32_t i = dedup_hash(e->crc, e->length, d->cap);

	while (d->ids[i])
		i = (i + 1) & (d->cap - 1);
	d->ids[i] = id;
}

/* dedup_find -- an extent with the very bytes of e, other than e */
static struct pa_cat_extent *
dedup_find(struct dedup *d, struct pa_pool *p, struct pa_cat_extent *e)
{
	uint32_t i = dedup_hash(e->crc, e->length, d->cap);

	for (; d->ids[i]; i = (i + 1) & (d->cap - 1)) {
		struct pa_cat_extent *o = cat_extent(&p->cat, d->ids[i]);

		/* partitions share nothing: a tenant's bytes stay in its own */
		if (o && o->id != e->id && o->crc == e->crc &&
		    o->length == e->length && o->part == e->part &&
		    memcmp(p->base + o->offset, p->base + e->offset,
			   e->length) == 0)
			return o;
	}
	return NULL;
}

/* content_hash -- FNV-1a over every tensor's name, size and CRC */
static uint64_t
content_hash(struct pa_pool *p, struct mem_model *m)
{
	uint64_t h = 0xcbf29ce484222325ULL;

#define FNV(byte) (h = (h ^ (uint8_t)(byte)) * 0x100000001b3ULL)
	for (uint32_t i = 0; i < m->n_tensors; i++) {
		struct pa_cat_extent *e = cat_extent(&p->cat,
						     m->tensors[i].extent_id);
		uint32_t crc = e ? e->crc : 0;

		for (const char *s = m->tensors[i].name; *s; s++)
			FNV(*s);
		for (int k = 0; k < 8; k++)
			FNV(m->tensors[i].nbytes >> (8 * k));
		for (int k = 0; k < 4; k++)
			FNV(crc >> (8 * k));
	}
#undef FNV
	return h;
}

/* dedup_model -- point m's tensors at identical extents already stored */
static int
dedup_model(struct pa_pool *p, struct mem_model *m, uint64_t first_new)
{
	struct mem_cat *c = &p->cat;
	struct dedup d;
	uint32_t cap = 64;

	while (cap < 2 * (c->n_extents + 1))
		cap *= 2;
	d.cap = cap;
	d.ids = calloc(cap, sizeof(*d.ids));
	if (!d.ids)
		return ERR(-ENOMEM, "out of memory for dedup");
	/* candidates: extents of READY models (not blobs) */
	for (uint32_t i = 0; i < c->n_models; i++) {
		struct mem_model *o = &c->models[i];

		if (o->state != PA_MODEL_READY)
			continue;
		for (uint32_t k = 0; k < o->n_tensors; k++)
			if (o->tensors[k].extent_id &&
			    o->tensors[k].extent_id < first_new)
				dedup_put(&d, c, o->tensors[k].extent_id);
	}
	for (uint32_t k = 0; k < m->n_tensors; k++) {
		uint64_t id = m->tensors[k].extent_id;
		struct pa_cat_extent *e, *o;

		if (!id || id < first_new)
			continue; /* empty, or already shared */
		e = cat_extent(c, id);
		if (!e)
			continue; /* dropped just before: same_as */
		o = dedup_find(&d, p, e);
		if (!o) {
			dedup_put(&d, c, id);
			continue;
		}
		/* every tensor of m using id moves to o */
		for (uint32_t j = k; j < m->n_tensors; j++)
			if (m->tensors[j].extent_id == id) {
				m->tensors[j].extent_id = o->id;
				o->refcount++;
			}
		cat_extent_remove(c, id);
	}
	free(d.ids);
	return 0;
}

/* reap_superseded -- drop superseded versions no process leases any more */
static void
reap_superseded(struct pa_pool *p, struct held *h)
{
	for (uint32_t i = 0; i < p->cat.n_models; i++) {
		struct mem_model *o = &p->cat.models[i];

		if (!(o->flags & PA_MODEL_F_SUPERSEDED) ||
		    o->state != PA_MODEL_READY || lease_count(p, o->id))
			continue;
		if (pool_lock(p, LEASE_BASE + o->id, F_WRLCK, false))
			continue;
		if (held_add(h, o->id)) {
			pool_unlock(p, LEASE_BASE + o->id);
			continue;
		}
		cat_model_drop(&p->cat, o->id);
		i--;
	}
}

/* pa_load_commit -- persist, dedup, and make the model READY */
PA_EXPORT int
pa_load_commit(struct pa_load **lp, int keep_lease, uint64_t *model_id)
{
	struct pa_load *l;
	struct pa_pool *p;
	struct mem_model *m;
	struct held held = {NULL, 0};
	uint64_t first_new = UINT64_MAX;
	int rc;

	if (!lp || !*lp)
		return ERR(-EINVAL, "pa_load_commit: no load");
	l = *lp;
	p = l->p;
	for (uint32_t i = 0; i <= l->n; i++)
		if (!l->crc_set[i] && !l->shared[i])
			return ERR(-EINVAL, "load of model %llu: %s %u was "
					    "never written (no CRC set)",
				   (unsigned long long)l->id,
				   i < l->n ? "tensor" : "blob", i);
	pthread_mutex_lock(&p->mu);
	rc = pool_lock(p, LOCK_WRITER, F_WRLCK, true);
	if (rc)
		goto out;
	rc = pool_refresh_locked(p);
	if (rc < 0)
		goto unlock;
	m = cat_model(&p->cat, l->id);
	if (!m || m->state != PA_MODEL_LOADING) {
		rc = ERR(-ESTALE, "%s: model %llu is no longer loading (its "
				  "record was reclaimed)", p->path,
			 (unsigned long long)l->id);
		goto unlock;
	}
	/* 1. the data is durable before the record that makes it reachable:
	 * the caller persisted it (pa_stream does, chunk by chunk); drain */
	for (uint32_t i = 0; i <= l->n; i++) {
		uint64_t id = i < l->n ? m->tensors[i].extent_id :
					 m->meta_extent;
		struct pa_cat_extent *e = id ? cat_extent(&p->cat, id) : NULL;

		if (!e || l->shared[i])
			continue;
		e->crc = l->crc[i];
		first_new = PA_MIN(first_new, id);
	}
	rc = pa_map_drain(p->map);
	if (rc)
		goto unlock_reload;
	/* 2. store identical bytes once */
	if (first_new != UINT64_MAX) {
		rc = dedup_model(p, m, first_new);
		if (rc)
			goto unlock_reload;
	}
	m->content_hash = content_hash(p, m);
	m->state = PA_MODEL_READY;
	m->owner_pid = 0;
	/* 3. older versions under the same name step aside, and go once no
	 * process uses them */
	for (uint32_t i = 0; i < p->cat.n_models; i++) {
		struct mem_model *o = &p->cat.models[i];

		if (o->id != l->id && o->state == PA_MODEL_READY &&
		    strcmp(o->name, m->name) == 0)
			o->flags |= PA_MODEL_F_SUPERSEDED;
	}
	reap_superseded(p, &held);
	rc = cat_commit(p);
	if (rc)
		goto unlock;
	if (model_id)
		*model_id = l->id;
	/* the exclusive lock becomes a shared one: still leased */
	if (keep_lease &&
	    pool_lock(p, LEASE_BASE + l->id, F_RDLCK, false) == 0 &&
	    lease_add(p, l->id) == 0)
		hint_touch(p, l->id);
	else
		pool_unlock(p, LEASE_BASE + l->id);
	held_release(p, &held);
	pool_unlock(p, LOCK_WRITER);
	pthread_mutex_unlock(&p->mu);
	load_free(lp);
	return 0;
unlock_reload: {
	char msg[512];

	snprintf(msg, sizeof(msg), "%s", pa_errormsg());
	pool_reload(p);
	pa_err_set("%s", msg);
}
unlock:
	held_release(p, &held);
	pool_unlock(p, LOCK_WRITER);
out:
	pthread_mutex_unlock(&p->mu);
	return rc; /* *lp stays: the caller aborts it */
}

/* pa_load_abort -- drop the model and its extents */
PA_EXPORT int
pa_load_abort(struct pa_load **lp)
{
	struct pa_load *l;
	struct pa_pool *p;
	int rc;

	if (!lp || !*lp)
		return 0;
	l = *lp;
	p = l->p;
	pthread_mutex_lock(&p->mu);
	rc = pool_lock(p, LOCK_WRITER, F_WRLCK, true);
	if (!rc) {
		rc = pool_refresh_locked(p);
		if (rc >= 0) {
			cat_model_drop(&p->cat, l->id);
			rc = cat_commit(p);
		}
		pool_unlock(p, LOCK_WRITER);
	}
	/* if the commit failed the LOADING record stays; with the lease
	 * released it is a dead loader's record that fsck reclaims */
	pool_unlock(p, LEASE_BASE + l->id);
	pthread_mutex_unlock(&p->mu);
	load_free(lp);
	return rc < 0 ? rc : 0;
}

/* pa_pool_evict -- remove a READY model no one leases */
PA_EXPORT int
pa_pool_evict(struct pa_pool *p, uint64_t id)
{
	struct mem_model *m;
	int rc;

	pthread_mutex_lock(&p->mu);
	if (p->rdonly) {
		rc = ERR(-EROFS, "%s: pool is open read-only", p->path);
		goto out;
	}
	rc = pool_lock(p, LOCK_WRITER, F_WRLCK, true);
	if (rc)
		goto out;
	rc = pool_refresh_locked(p);
	if (rc < 0)
		goto unlock;
	m = cat_model(&p->cat, id);
	if (!m) {
		rc = ERR(-ENOENT, "%s: no model with id %llu", p->path,
			 (unsigned long long)id);
		goto unlock;
	}
	if (lease_count(p, id)) {
		rc = ERR(-EBUSY, "%s: model %s is in use by this process; "
				 "close it first", p->path, m->name);
		goto unlock;
	}
	if (pool_lock(p, LEASE_BASE + id, F_WRLCK, false)) {
		rc = ERR(-EBUSY, "%s: model %s is %s", p->path, m->name,
			 m->state == PA_MODEL_LOADING ?
				 "still being loaded by another process" :
				 "in use by another process");
		goto unlock;
	}
	cat_model_drop(&p->cat, id);
	{
		struct held held = {NULL, 0};

		reap_superseded(p, &held);
		rc = cat_commit(p);
		held_release(p, &held);
	}
	pool_unlock(p, LEASE_BASE + id);
unlock:
	pool_unlock(p, LOCK_WRITER);
out:
	pthread_mutex_unlock(&p->mu);
	return rc < 0 ? rc : 0;
}
