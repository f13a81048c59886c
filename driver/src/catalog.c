/* SPDX-License-Identifier: MIT */
/*
 * catalog.c -- the catalog of models, tensors and extents: read, commit
 *
 * See pool.h for the format and why it is double-buffered.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

#define HDR sizeof(struct pa_cat_hdr)

/* ---- in-memory helpers ---- */

/* model_free -- free what a model owns */
void
model_free(struct mem_model *m)
{
	free(m->arena);
	memset(m, 0, sizeof(*m));
}

/* cat_free -- free a whole in-memory catalog */
void
cat_free(struct mem_cat *c)
{
	for (uint32_t i = 0; i < c->n_models; i++)
		model_free(&c->models[i]);
	free(c->models);
	free(c->extents);
	memset(c, 0, sizeof(*c));
}

/* cat_extent -- the extent with id, or NULL (extents are sorted by id) */
struct pa_cat_extent *
cat_extent(struct mem_cat *c, uint64_t id)
{
	uint32_t lo = 0, hi = c->n_extents;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (c->extents[mid].id == id)
			return &c->extents[mid];
		if (c->extents[mid].id < id)
			lo = mid + 1;
		else
			hi = mid;
	}
	return NULL;
}

/* cat_extent_add -- append an extent (its id is above every other) */
int
cat_extent_add(struct mem_cat *c, const struct pa_cat_extent *e)
{
	if (c->n_extents && c->extents[c->n_extents - 1].id >= e->id)
		return ERR(-EINVAL, "extent ids out of order");
	if (c->n_extents == c->cap_extents) {
		uint32_t cap = c->cap_extents ? c->cap_extents * 2 : 256;
		struct pa_cat_extent *n = realloc(c->extents,
						  cap * sizeof(*n));

		if (!n)
			return ERR(-ENOMEM, "out of memory");
		c->extents = n;
		c->cap_extents = cap;
	}
	c->extents[c->n_extents++] = *e;
	return 0;
}

/* cat_extent_remove -- drop extent id, keeping the order */
void
cat_extent_remove(struct mem_cat *c, uint64_t id)
{
	struct pa_cat_extent *e = cat_extent(c, id);
	size_t i;

	if (!e)
		return;
	i = (size_t)(e - c->extents);
	memmove(e, e + 1, (c->n_extents - i - 1) * sizeof(*e));
	c->n_extents--;
}

/* cat_model -- the model with id, or NULL */
struct mem_model *
cat_model(struct mem_cat *c, uint64_t id)
{
	for (uint32_t i = 0; i < c->n_models; i++)
		if (c->models[i].id == id)
			return &c->models[i];
	return NULL;
}

/* cat_model_append -- take ownership of *m */
int
cat_model_append(struct mem_cat *c, struct mem_model *m)
{
	if (c->n_models == c->cap_models) {
		uint32_t cap = c->cap_models ? c->cap_models * 2 : 16;
		struct mem_model *n = realloc(c->models, cap * sizeof(*n));

		if (!n)
			return ERR(-ENOMEM, "out of memory");
		c->models = n;
		c->cap_models = cap;
	}
	c->models[c->n_models++] = *m;
	memset(m, 0, sizeof(*m));
	return 0;
}

/* cat_model_remove -- drop the model record (not its extents) */
void
cat_model_remove(struct mem_cat *c, uint64_t id)
{
	struct mem_model *m = cat_model(c, id);
	size_t i;

	if (!m)
		return;
	i = (size_t)(m - c->models);
	model_free(m);
	memmove(m, m + 1, (c->n_models - i - 1) * sizeof(*m));
	c->n_models--;
}

/* extent_unref -- one reference fewer; the extent goes at zero */
static void
extent_unref(struct mem_cat *c, uint64_t id)
{
	struct pa_cat_extent *e = cat_extent(c, id);

	if (!e)
		return;
	if (e->refcount > 1)
		e->refcount--;
	else
		cat_extent_remove(c, id);
}

/* cat_model_drop -- drop model id and the extents only it referenced */
void
cat_model_drop(struct mem_cat *c, uint64_t id)
{
	struct mem_model *m = cat_model(c, id);

	if (!m)
		return;
	for (uint32_t i = 0; i < m->n_tensors; i++)
		extent_unref(c, m->tensors[i].extent_id);
	if (m->meta_extent)
		extent_unref(c, m->meta_extent);
	cat_model_remove(c, id);
}

/* arena_size -- bytes for a model's tensors, sources, names and dims */
static size_t
arena_size(uint32_t n_tensors, uint32_t n_sources, size_t strings,
	   size_t dims)
{
	return n_tensors * sizeof(struct mem_tensor) +
	       n_sources * sizeof(struct mem_source) + dims * sizeof(uint64_t) +
	       strings;
}

struct arena {
	char *p;
};

/* arena_take -- carve n bytes (8-byte aligned) */
static void *
arena_take(struct arena *a, size_t n)
{
	void *r = a->p;

	a->p += PA_ALIGN_UP(n, 8);
	return r;
}

/* arena_str -- copy a string of len bytes into the arena */
static char *
arena_str(struct arena *a, const char *s, size_t len)
{
	char *r = arena_take(a, len + 1);

	memcpy(r, s, len);
	r[len] = '\0';
	return r;
}

/* model_build -- an in-memory LOADING model from a caller's description */
int
model_build(struct mem_model *m, const struct pa_model_desc *d)
{
	size_t strings = PA_ALIGN_UP(strlen(d->name) + 1, 8), dims = 0;
	struct arena a;

	for (uint32_t i = 0; i < d->n_tensors; i++) {
		strings += PA_ALIGN_UP(strlen(d->tensors[i].name) + 1, 8);
		dims += d->tensors[i].ndim;
	}
	for (uint32_t i = 0; i < d->n_sources; i++)
		strings += PA_ALIGN_UP(strlen(d->sources[i].path) + 1, 8);
	memset(m, 0, sizeof(*m));
	m->arena = calloc(1, arena_size(d->n_tensors, d->n_sources, strings,
					dims) + 8);
	if (!m->arena)
		return ERR(-ENOMEM, "out of memory for %u tensors",
			   d->n_tensors);
	a.p = m->arena;
	m->tensors = arena_take(&a, d->n_tensors * sizeof(*m->tensors));
	m->sources = arena_take(&a, d->n_sources * sizeof(*m->sources));
	m->n_tensors = d->n_tensors;
	m->n_sources = d->n_sources;
	m->name = arena_str(&a, d->name, strlen(d->name));
	m->part = d->part;
	m->state = PA_MODEL_LOADING;
	m->meta_len = d->meta_len;
	for (uint32_t i = 0; i < d->n_tensors; i++) {
		const struct pa_tensor_desc *td = &d->tensors[i];
		struct mem_tensor *t = &m->tensors[i];

		t->name = arena_str(&a, td->name, strlen(td->name));
		t->dtype = td->dtype;
		t->ndim = td->ndim;
		t->dims = arena_take(&a, td->ndim * sizeof(uint64_t));
		memcpy(t->dims, td->dims, td->ndim * sizeof(uint64_t));
		t->nbytes = td->nbytes;
		m->bytes += td->nbytes;
	}
	for (uint32_t i = 0; i < d->n_sources; i++) {
		const struct pa_source_rec *sr = &d->sources[i];
		struct mem_source *s = &m->sources[i];

		s->path = arena_str(&a, sr->path, strlen(sr->path));
		s->size = sr->size;
		s->mtime_ns = sr->mtime_ns;
		s->ino = sr->ino;
		s->dev = sr->dev;
	}
	return 0;
}

/* ---- reading ---- */

/* slot_off -- pool offset of catalog copy slot */
static uint64_t
slot_off(const struct pa_pool *p, int slot)
{
	return p->sb.cat_off + (uint64_t)slot * p->sb.cat_size;
}

/* hdr_peek -- a copy of slot's header as it is now */
static void
hdr_peek(const struct pa_pool *p, int slot, struct pa_cat_hdr *h)
{
	memcpy(h, p->base + slot_off(p, slot), sizeof(*h));
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
}

/*
 * slot_copy -- a private, checked copy of catalog slot
 * Returns 0 (valid), -EBADMSG (not a valid copy) or -EAGAIN (a writer
 * changed it while we copied: try again).
 */
static int
slot_copy(const struct pa_pool *p, int slot, char **bufp)
{
	struct pa_cat_hdr h, h2;
	uint32_t want, got;
	char *buf;

	*bufp = NULL;
	hdr_peek(p, slot, &h);
	if (memcmp(h.magic, PA_CAT_MAGIC, sizeof(PA_CAT_MAGIC)) != 0 ||
	    h.used < HDR || h.used > p->sb.cat_size)
		return -EBADMSG;
	buf = malloc(h.used);
	if (!buf)
		return ERR(-ENOMEM, "out of memory for the catalog");
	memcpy(buf, p->base + slot_off(p, slot), h.used);
	hdr_peek(p, slot, &h2);
	if (h2.generation != h.generation || h2.checksum != h.checksum) {
		free(buf);
		return -EAGAIN;
	}
	memcpy(&h, buf, sizeof(h));
	want = h.checksum;
	((struct pa_cat_hdr *)buf)->checksum = 0;
	got = pa_crc32c(0, buf, h.used);
	((struct pa_cat_hdr *)buf)->checksum = want;
	if (got != want) {
		free(buf);
		return -EBADMSG;
	}
	*bufp = buf;
	return 0;
}

/* slot_check -- whether a copy's checksum holds, read in place (no copy) */
static int
slot_check(const struct pa_pool *p, int slot)
{
	struct pa_cat_hdr h;
	const char *base = p->base + slot_off(p, slot);
	uint32_t crc;

	hdr_peek(p, slot, &h);
	if (memcmp(h.magic, PA_CAT_MAGIC, sizeof(PA_CAT_MAGIC)) != 0 ||
	    h.used < HDR || h.used > p->sb.cat_size)
		return -EBADMSG;
	{
		uint32_t want = h.checksum;

		h.checksum = 0;
		crc = pa_crc32c(0, &h, HDR);
		crc = pa_crc32c(crc, base + HDR, h.used - HDR);
		return crc == want ? 0 : -EBADMSG;
	}
}

/* in_range -- [off, off + n * size) lies inside [0, limit) */
static bool
in_range(uint64_t off, uint64_t n, uint64_t size, uint64_t limit)
{
	return n <= limit / (size ? size : 1) && off <= limit &&
	       n * size <= limit - off;
}

/* cat_parse -- turn a checked copy into the in-memory catalog */
static int
cat_parse(struct pa_pool *p, const char *buf, struct mem_cat *c)
{
	const struct pa_cat_hdr *h = (const void *)buf;
	const struct pa_cat_model *mr;
	const struct pa_cat_tensor *tr;
	const struct pa_cat_extent *er;
	const struct pa_cat_source *sr;
	const uint64_t *dims;
	const char *strings;
	uint64_t off = HDR, used = h->used;
	int rc = 0;

	memset(c, 0, sizeof(*c));
#define SECTION(ptr, count, type)                                          \
	do {                                                               \
		if (!in_range(off, (count), sizeof(type), used))           \
			goto bad;                                          \
		ptr = (const type *)(const void *)(buf + off);             \
		off += (uint64_t)(count) * sizeof(type);                   \
	} while (0)
	SECTION(mr, h->n_models, struct pa_cat_model);
	SECTION(tr, h->n_tensors, struct pa_cat_tensor);
	SECTION(er, h->n_extents, struct pa_cat_extent);
	SECTION(sr, h->n_sources, struct pa_cat_source);
	SECTION(dims, h->n_dims, uint64_t);
	SECTION(strings, h->strings_len, char);
#undef SECTION
	c->generation = h->generation;
	c->next_model_id = h->next_model_id;
	c->next_extent_id = h->next_extent_id;

	for (uint32_t i = 0; i < h->n_extents; i++) {
		const struct pa_cat_extent *e = &er[i];

		if (e->offset < p->sb.data_off || e->alloc < e->length ||
		    !in_range(e->offset, 1, e->alloc, p->sb.size) ||
		    e->part >= p->sb.nparts || e->id >= c->next_extent_id)
			goto bad;
		rc = cat_extent_add(c, e);
		if (rc == -EINVAL)
			goto bad;
		if (rc)
			goto err;
	}
	for (uint32_t i = 0; i < h->n_models; i++) {
		const struct pa_cat_model *r = &mr[i];
		struct mem_model m;
		size_t strs = 0, ndims = 0;
		struct arena a;

#define STR_OK(o, l) ((uint64_t)(o) + (l) <= h->strings_len)
		if (!STR_OK(r->name_off, r->name_len) ||
		    (uint64_t)r->first_tensor + r->n_tensors > h->n_tensors ||
		    (uint64_t)r->first_source + r->n_sources > h->n_sources ||
		    r->part >= p->sb.nparts)
			goto bad;
		strs += PA_ALIGN_UP(r->name_len + 1, 8);
		for (uint32_t k = 0; k < r->n_tensors; k++) {
			const struct pa_cat_tensor *t =
				&tr[r->first_tensor + k];

			if (!STR_OK(t->name_off, t->name_len) ||
			    t->ndim > 64 ||
			    t->dims_index + t->ndim > h->n_dims)
				goto bad;
			strs += PA_ALIGN_UP(t->name_len + 1, 8);
			ndims += t->ndim;
		}
		for (uint32_t k = 0; k < r->n_sources; k++) {
			const struct pa_cat_source *s =
				&sr[r->first_source + k];

			if (!STR_OK(s->path_off, s->path_len))
				goto bad;
			strs += PA_ALIGN_UP(s->path_len + 1, 8);
		}
#undef STR_OK
		memset(&m, 0, sizeof(m));
		m.arena = calloc(1, arena_size(r->n_tensors, r->n_sources,
					       strs, ndims) + 8);
		if (!m.arena) {
			rc = ERR(-ENOMEM, "out of memory for the catalog");
			goto err;
		}
		a.p = m.arena;
		m.tensors = arena_take(&a, r->n_tensors * sizeof(*m.tensors));
		m.sources = arena_take(&a, r->n_sources * sizeof(*m.sources));
		m.id = r->id;
		m.state = r->state;
		m.part = r->part;
		m.name = arena_str(&a, strings + r->name_off, r->name_len);
		m.n_tensors = r->n_tensors;
		m.n_sources = r->n_sources;
		m.bytes = r->bytes;
		m.created_ns = r->created_ns;
		m.content_hash = r->content_hash;
		m.meta_extent = r->meta_extent;
		m.meta_len = r->meta_len;
		m.owner_pid = r->owner_pid;
		m.flags = r->flags;
		for (uint32_t k = 0; k < r->n_tensors; k++) {
			const struct pa_cat_tensor *t =
				&tr[r->first_tensor + k];
			struct mem_tensor *mt = &m.tensors[k];

			mt->name = arena_str(&a, strings + t->name_off,
					     t->name_len);
			mt->dtype = t->dtype;
			mt->ndim = t->ndim;
			mt->dims = arena_take(&a, t->ndim * sizeof(uint64_t));
			memcpy(mt->dims, dims + t->dims_index,
			       t->ndim * sizeof(uint64_t));
			mt->extent_id = t->extent_id;
			mt->nbytes = t->nbytes;
		}
		for (uint32_t k = 0; k < r->n_sources; k++) {
			const struct pa_cat_source *s =
				&sr[r->first_source + k];
			struct mem_source *ms = &m.sources[k];

			ms->path = arena_str(&a, strings + s->path_off,
					     s->path_len);
			ms->size = s->size;
			ms->mtime_ns = s->mtime_ns;
			ms->ino = s->ino;
			ms->dev = s->dev;
		}
		rc = cat_model_append(c, &m);
		if (rc) {
			model_free(&m);
			goto err;
		}
		/* every tensor must point at an extent big enough */
		for (uint32_t k = 0; k < r->n_tensors; k++) {
			struct mem_tensor *mt =
				&c->models[c->n_models - 1].tensors[k];
			struct pa_cat_extent *e = cat_extent(c, mt->extent_id);

			if (mt->nbytes && (!e || e->length < mt->nbytes))
				goto bad;
		}
		if (r->meta_extent && !cat_extent(c, r->meta_extent))
			goto bad;
	}
	return 0;
bad:
	rc = ERR(-EBADMSG, "%s: catalog generation %llu is inconsistent "
			   "(a record points outside the pool)",
		 p->path, (unsigned long long)h->generation);
err:
	cat_free(c);
	return rc;
}

/* cat_newest_generation -- the newest valid generation's number, cheaply */
int
cat_newest_generation(struct pa_pool *p, uint64_t *gen)
{
	struct pa_cat_hdr h[2];
	uint64_t best = 0;
	bool any = false;

	for (int s = 0; s < 2; s++) {
		hdr_peek(p, s, &h[s]);
		if (memcmp(h[s].magic, PA_CAT_MAGIC, sizeof(PA_CAT_MAGIC)))
			continue;
		if (!any || h[s].generation > best)
			best = h[s].generation;
		any = true;
	}
	*gen = best;
	return any ? 0 : -EBADMSG;
}

/*
 * cat_read -- read the newest valid catalog copy
 *
 * The copies are tried newest first and only until one checks out, so an
 * open costs one copy and one checksum; with full set (fsck) both are
 * checked.  *damage gets PA_DAMAGE_CATALOG_OLD when the other copy is bad
 * for a reason other than an interrupted commit, and PA_DAMAGE_CATALOG_NEW
 * when the state page says a newer generation was committed than the
 * newest valid copy (then -EBADMSG unless the pool is opened to recover).
 */
int
cat_read_full(struct pa_pool *p, struct mem_cat *out, uint32_t *damage,
	      bool full)
{
	for (int attempt = 0; attempt < 1000; attempt++) {
		struct pa_cat_hdr h[2];
		char *buf[2] = {NULL, NULL};
		int rc[2] = {-EBADMSG, -EBADMSG}, order[2] = {0, 1}, best = -1;
		bool magic[2], retry = false;
		uint64_t gen[2] = {0, 0};
		int ret;

		for (int s = 0; s < 2; s++) {
			hdr_peek(p, s, &h[s]);
			magic[s] = memcmp(h[s].magic, PA_CAT_MAGIC,
					  sizeof(PA_CAT_MAGIC)) == 0;
		}
		if (magic[1] && (!magic[0] || h[1].generation > h[0].generation)) {
			order[0] = 1;
			order[1] = 0;
		}
		for (int k = 0; k < 2 && best < 0; k++) {
			int s = order[k];

			if (!magic[s])
				continue;
			rc[s] = slot_copy(p, s, &buf[s]);
			if (rc[s] == -EAGAIN) {
				retry = true;
				break;
			}
			if (rc[s] == -ENOMEM) {
				free(buf[0]);
				free(buf[1]);
				return -ENOMEM;
			}
			if (rc[s] == 0) {
				gen[s] = ((struct pa_cat_hdr *)buf[s])->generation;
				if (best < 0 || gen[s] > gen[best])
					best = s;
			}
		}
		if (retry) {
			free(buf[0]);
			free(buf[1]);
			continue;
		}
		if (best < 0) {
			*damage |= PA_DAMAGE_CATALOG_NEW | PA_DAMAGE_CATALOG_OLD;
			return ERR(-EBADMSG, "%s: both catalog copies are "
					     "damaged; the models in the pool "
					     "cannot be found (recreate the "
					     "pool)", p->path);
		}
		/* the other copy: checked in place (full), else by its magic */
		if (!buf[!best] && magic[!best]) {
			gen[!best] = h[!best].generation;
			rc[!best] = full ? slot_check(p, !best) : 0;
		}
		if (rc[!best] != 0) {
			/* the other copy is bad: an interrupted commit of
			 * gen + 1, or damage to an older or newer copy */
			bool interrupted = p->state.committing ==
						   gen[best] + 1 &&
					   p->state.committed <= gen[best];

			if (p->state.committed > gen[best])
				*damage |= PA_DAMAGE_CATALOG_NEW;
			else if (!interrupted)
				*damage |= PA_DAMAGE_CATALOG_OLD;
		} else if (p->state.committed > gen[best]) {
			*damage |= PA_DAMAGE_CATALOG_NEW;
		}
		ret = cat_parse(p, buf[best], out);
		free(buf[0]);
		free(buf[1]);
		if (ret)
			return ret;
		if ((*damage & PA_DAMAGE_CATALOG_NEW) && !p->recover) {
			cat_free(out);
			return ERR(-EBADMSG, "%s: the newest catalog copy "
					     "(generation %llu) is damaged; "
					     "generation %llu is intact -- "
					     "`pyaccel pool fsck --repair` "
					     "rolls back to it, losing the "
					     "last change",
				   p->path,
				   (unsigned long long)p->state.committed,
				   (unsigned long long)gen[best]);
		}
		return 0;
	}
	return ERR(-EBUSY, "%s: the catalog kept changing while read",
		   p->path);
}

/* cat_read -- cat_read_full on the fast path (the newest good copy) */
int
cat_read(struct pa_pool *p, struct mem_cat *out, uint32_t *damage)
{
	return cat_read_full(p, out, damage, false);
}

/* pool_refresh_locked -- re-read the catalog when a newer one is there */
int
pool_refresh_locked(struct pa_pool *p)
{
	struct mem_cat c;
	uint32_t damage = 0;
	uint64_t gen;
	int rc = cat_newest_generation(p, &gen);

	if (rc == 0 && gen == p->cat.generation)
		return 0;
	rc = cat_read(p, &c, &damage);
	if (rc)
		return rc;
	p->damage |= damage;
	cat_free(&p->cat);
	p->cat = c;
	return 1;
}

/* ---- committing ---- */

/* cat_serialize -- the on-media image of c with generation gen */
static int
cat_serialize(struct pa_pool *p, struct mem_cat *c, uint64_t gen,
	      char **bufp, uint64_t *lenp)
{
	uint64_t n_tensors = 0, n_sources = 0, n_dims = 0, strs = 0, len;
	struct pa_cat_hdr *h;
	struct pa_cat_model *mr;
	struct pa_cat_tensor *tr;
	struct pa_cat_extent *er;
	struct pa_cat_source *sr;
	uint64_t *dims;
	char *strings, *buf;
	uint64_t ti = 0, si = 0, di = 0, so = 0;

	for (uint32_t i = 0; i < c->n_models; i++) {
		struct mem_model *m = &c->models[i];

		n_tensors += m->n_tensors;
		n_sources += m->n_sources;
		strs += strlen(m->name);
		for (uint32_t k = 0; k < m->n_tensors; k++) {
			n_dims += m->tensors[k].ndim;
			strs += strlen(m->tensors[k].name);
		}
		for (uint32_t k = 0; k < m->n_sources; k++)
			strs += strlen(m->sources[k].path);
	}
	len = HDR + c->n_models * sizeof(*mr) + n_tensors * sizeof(*tr) +
	      c->n_extents * sizeof(*er) + n_sources * sizeof(*sr) +
	      n_dims * sizeof(*dims) + strs;
	if (len > p->sb.cat_size || n_tensors > UINT32_MAX ||
	    strs > UINT32_MAX)
		return ERR(-ENOSPC, "%s: the catalog is full (%llu bytes "
				    "needed, %llu per copy); create the pool "
				    "with a larger catalog",
			   p->path, (unsigned long long)len,
			   (unsigned long long)p->sb.cat_size);
	buf = calloc(1, len);
	if (!buf)
		return ERR(-ENOMEM, "out of memory for the catalog");
	h = (void *)buf;
	mr = (void *)(buf + HDR);
	tr = (void *)(mr + c->n_models);
	er = (void *)(tr + n_tensors);
	sr = (void *)(er + c->n_extents);
	dims = (void *)(sr + n_sources);
	strings = (char *)(dims + n_dims);

	memcpy(h->magic, PA_CAT_MAGIC, sizeof(PA_CAT_MAGIC));
	h->generation = gen;
	h->used = len;
	h->next_model_id = c->next_model_id;
	h->next_extent_id = c->next_extent_id;
	h->n_models = c->n_models;
	h->n_tensors = (uint32_t)n_tensors;
	h->n_extents = c->n_extents;
	h->n_sources = (uint32_t)n_sources;
	h->n_dims = n_dims;
	h->strings_len = strs;
#define PUT_STR(s, off_field, len_field)                                   \
	do {                                                               \
		size_t l_ = strlen(s);                                     \
		memcpy(strings + so, (s), l_);                             \
		(off_field) = (uint32_t)so;                                \
		(len_field) = (uint32_t)l_;                                \
		so += l_;                                                  \
	} while (0)
	for (uint32_t i = 0; i < c->n_models; i++) {
		struct mem_model *m = &c->models[i];
		struct pa_cat_model *r = &mr[i];

		r->id = m->id;
		r->state = m->state;
		r->part = m->part;
		PUT_STR(m->name, r->name_off, r->name_len);
		r->first_tensor = (uint32_t)ti;
		r->n_tensors = m->n_tensors;
		r->first_source = (uint32_t)si;
		r->n_sources = m->n_sources;
		r->bytes = m->bytes;
		r->created_ns = m->created_ns;
		r->content_hash = m->content_hash;
		r->meta_extent = m->meta_extent;
		r->meta_len = m->meta_len;
		r->owner_pid = m->owner_pid;
		r->flags = m->flags;
		for (uint32_t k = 0; k < m->n_tensors; k++, ti++) {
			struct mem_tensor *t = &m->tensors[k];

			PUT_STR(t->name, tr[ti].name_off, tr[ti].name_len);
			tr[ti].dtype = t->dtype;
			tr[ti].ndim = t->ndim;
			tr[ti].dims_index = di;
			memcpy(dims + di, t->dims, t->ndim * sizeof(*dims));
			di += t->ndim;
			tr[ti].extent_id = t->extent_id;
			tr[ti].nbytes = t->nbytes;
		}
		for (uint32_t k = 0; k < m->n_sources; k++, si++) {
			struct mem_source *s = &m->sources[k];

			PUT_STR(s->path, sr[si].path_off, sr[si].path_len);
			sr[si].size = s->size;
			sr[si].mtime_ns = s->mtime_ns;
			sr[si].ino = s->ino;
			sr[si].dev = s->dev;
		}
	}
#undef PUT_STR
	if (c->n_extents)
		memcpy(er, c->extents, c->n_extents * sizeof(*er));
	h->checksum = 0;
	h->checksum = pa_crc32c(0, buf, len);
	*bufp = buf;
	*lenp = len;
	return 0;
}

/* target_slot -- the copy not holding the newest valid generation */
static int
target_slot(struct pa_pool *p)
{
	struct pa_cat_hdr h;

	if (p->cat.generation == (uint64_t)-1)
		return 0; /* formatting: nothing valid yet */
	for (int s = 0; s < 2; s++) {
		hdr_peek(p, s, &h);
		if (memcmp(h.magic, PA_CAT_MAGIC, sizeof(PA_CAT_MAGIC)) == 0 &&
		    h.generation == p->cat.generation)
			return !s;
	}
	return 0;
}

/* pool_reload -- make p->cat what the media holds again */
int
pool_reload(struct pa_pool *p)
{
	struct mem_cat c;
	uint32_t damage = 0;
	int rc = cat_read(p, &c, &damage);

	if (rc)
		return rc;
	cat_free(&p->cat);
	p->cat = c;
	return 0;
}

/*
 * cat_commit -- make p->cat, changed in memory, the pool's catalog
 *
 * The caller holds the writer lock and has persisted the data the catalog
 * points at.  On failure p->cat is read back from the media, so memory
 * and media agree again (as before the changes).
 */
int
cat_commit(struct pa_pool *p)
{
	struct mem_cat *c = &p->cat;
	uint64_t gen = c->generation + 1, len, off;
	char zero[8] = {0};
	char *buf = NULL;
	int slot, rc;

	if (p->rdonly)
		return ERR(-EROFS, "%s: pool is open read-only", p->path);
	rc = cat_serialize(p, c, gen, &buf, &len);
	if (rc)
		goto fail;
	slot = target_slot(p);
	off = slot_off(p, slot);

	p->state.committing = gen;
	rc = state_write(p);
	if (rc)
		goto fail;
	/* 1. invalidate the target copy, so no reader takes it half-written */
	rc = pool_write(p, off, zero, sizeof(zero));
	if (!rc)
		rc = pool_persist(p, off, sizeof(zero));
	/* 2. the body */
	if (!rc)
		rc = pool_write(p, off + HDR, buf + HDR, len - HDR);
	if (!rc)
		rc = pool_persist(p, off + HDR, len - HDR);
	/* 3. the header: from here on this copy is the newest */
	if (!rc)
		rc = pool_write(p, off, buf, HDR);
	if (!rc)
		rc = pool_persist(p, off, HDR);
	if (rc)
		goto fail;
	free(buf);
	c->generation = gen;
	p->state.committed = gen;
	/* the commit has happened; failing to note it is not a failure of
	 * the commit (cat_read copes with a stale committed number) */
	state_write(p);
	return 0;
fail:
	free(buf);
	{
		char msg[512];

		snprintf(msg, sizeof(msg), "%s", pa_errormsg());
		pool_reload(p);
		pa_err_set("%s", msg);
	}
	return rc;
}
