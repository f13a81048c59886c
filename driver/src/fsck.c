/* SPDX-License-Identifier: MIT */
/*
 * fsck.c -- check and repair a pool; verify tensor checksums
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "pool.h"

/* note -- append one line to the report */
PA_PRINTF(2, 3) static void
note(struct pa_fsck_report *r, const char *fmt, ...)
{
	size_t len = strlen(r->text);
	va_list ap;

	if (len + 2 >= sizeof(r->text))
		return;
	va_start(ap, fmt);
	vsnprintf(r->text + len, sizeof(r->text) - len - 1, fmt, ap);
	va_end(ap);
	len = strlen(r->text);
	r->text[len] = '\n';
	r->text[len + 1] = '\0';
}

/* extent_bytes_ok -- whether an extent's bytes match its CRC */
static bool
extent_bytes_ok(struct pa_pool *p, const struct pa_cat_extent *e)
{
	return pa_crc32c(0, p->base + e->offset, e->length) == e->crc;
}

struct ext_span {
	uint64_t off, end, id;
};

static int
ext_span_cmp(const void *a, const void *b)
{
	const struct ext_span *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

/* check_layout -- extents inside their partitions and not overlapping */
static uint32_t
check_layout(struct pa_pool *p, struct pa_fsck_report *r)
{
	struct mem_cat *c = &p->cat;
	struct ext_span *v = malloc((c->n_extents + 1) * sizeof(*v));
	uint32_t n = 0, bad = 0;

	if (!v)
		return 0;
	for (uint32_t i = 0; i < c->n_extents; i++) {
		struct pa_cat_extent *e = &c->extents[i];
		const struct pa_sb_part *pt = &p->sb.parts[e->part];

		if (e->offset < pt->off || e->alloc > pt->size ||
		    e->offset - pt->off > pt->size - e->alloc) {
			note(r, "extent %llu lies outside partition %s",
			     (unsigned long long)e->id, pt->name);
			bad++;
		}
		if (e->alloc)
			v[n++] = (struct ext_span){e->offset,
						   e->offset + e->alloc, e->id};
	}
	qsort(v, n, sizeof(*v), ext_span_cmp);
	for (uint32_t i = 1; i < n; i++)
		if (v[i].off < v[i - 1].end) {
			note(r, "extents %llu and %llu overlap",
			     (unsigned long long)v[i - 1].id,
			     (unsigned long long)v[i].id);
			bad++;
		}
	free(v);
	return bad;
}

/* pa_pool_fsck -- check the catalog against itself and the locks */
PA_EXPORT int
pa_pool_fsck(struct pa_pool *p, unsigned flags, struct pa_fsck_report *r)
{
	bool repair = (flags & PA_FSCK_REPAIR) != 0;
	bool changed = false, writer = false;
	struct mem_cat *c = &p->cat;
	uint32_t *refs = NULL, unclean;
	int problems = 0, rc;

	memset(r, 0, sizeof(*r));
	pthread_mutex_lock(&p->mu);
	if (repair && p->rdonly) {
		rc = ERR(-EROFS, "%s: open the pool read-write to repair it",
			 p->path);
		goto out;
	}
	if (!p->rdonly) {
		rc = pool_lock(p, LOCK_WRITER, F_WRLCK, true);
		if (rc)
			goto out;
		writer = true;
	}
	{
		/* both catalog copies, each checked */
		struct mem_cat fresh;
		uint32_t damage = 0;

		state_read_locked(p);
		rc = cat_read_full(p, &fresh, &damage, true);
		if (rc < 0)
			goto out;
		p->damage |= damage;
		cat_free(&p->cat);
		p->cat = fresh;
	}
	r->damage = p->damage;
	unclean = p->state.needs_fsck;

	/* superblock copies */
	if (p->damage & (PA_DAMAGE_SB_PRIMARY | PA_DAMAGE_SB_BACKUP)) {
		problems++;
		note(r, "%s superblock copy is damaged%s",
		     (p->damage & PA_DAMAGE_SB_PRIMARY) ? "primary" : "backup",
		     repair ? "; rewritten from the good one" : "");
		if (repair) {
			struct pa_sb sb = p->sb;

			rc = pool_write(p, PA_SB_OFF, &sb, sizeof(sb));
			if (!rc)
				rc = pool_write(p, PA_SB_BACKUP_OFF, &sb,
						sizeof(sb));
			if (!rc)
				rc = pool_persist(p, 0, 2 * PA_PAGE);
			if (rc)
				goto out;
			p->damage &= ~(uint32_t)(PA_DAMAGE_SB_PRIMARY |
						 PA_DAMAGE_SB_BACKUP);
			r->repaired = 1;
		}
	}
	if (p->damage & PA_DAMAGE_CATALOG_NEW) {
		problems++;
		note(r, "the newest catalog copy (generation %llu) is damaged; "
			"generation %llu is intact%s",
		     (unsigned long long)p->state.committed,
		     (unsigned long long)c->generation,
		     repair ? ": rolled back to it (the last change is lost)" :
			      "");
		changed = true;
	} else if (p->damage & PA_DAMAGE_CATALOG_OLD) {
		problems++;
		note(r, "the older catalog copy is damaged%s",
		     repair ? "; rewritten" : "");
		changed = true;
	}
	if (p->damage & PA_DAMAGE_STATE) {
		problems++;
		note(r, "the state page was damaged%s",
		     repair ? "; rewritten" : "");
	}
	if (unclean) {
		problems++;
		note(r, "%s: every tensor is checked%s",
		     (p->damage & PA_DAMAGE_UNCLEAN) ?
			     "the machine went down while the pool was in use" :
			     "the pool is marked as needing a check (unclean "
			     "shutdown or damage)",
		     repair ? " and the mark cleared" : "");
	}

	/* loads whose loader died */
	for (uint32_t i = 0; i < c->n_models; i++) {
		struct mem_model *m = &c->models[i];
		uint64_t bytes = 0;

		if (m->state != PA_MODEL_LOADING || lease_count(p, m->id) ||
		    pool_lock_probe(p, LEASE_BASE + m->id) != 0)
			continue;
		for (uint32_t k = 0; k < m->n_tensors; k++) {
			struct pa_cat_extent *e =
				cat_extent(c, m->tensors[k].extent_id);

			if (e && e->refcount == 1)
				bytes += e->alloc;
		}
		if (m->meta_extent && cat_extent(c, m->meta_extent))
			bytes += cat_extent(c, m->meta_extent)->alloc;
		r->stale_loads++;
		r->leaked_bytes += bytes;
		problems++;
		note(r, "model %s (id %llu) was left half loaded by process "
			"%lld: %llu bytes %s", m->name,
		     (unsigned long long)m->id, (long long)m->owner_pid,
		     (unsigned long long)bytes,
		     repair ? "reclaimed" : "leaked");
		if (repair) {
			cat_model_drop(c, m->id);
			changed = true;
			i--;
		}
	}

	/* refcounts and orphans */
	refs = calloc(c->n_extents + 1, sizeof(*refs));
	if (!refs) {
		rc = ERR(-ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < c->n_models; i++) {
		struct mem_model *m = &c->models[i];

		for (uint32_t k = 0; k <= m->n_tensors; k++) {
			uint64_t id = k < m->n_tensors ?
					      m->tensors[k].extent_id :
					      m->meta_extent;
			struct pa_cat_extent *e = id ? cat_extent(c, id) : NULL;

			if (e)
				refs[e - c->extents]++;
		}
	}
	for (uint32_t i = 0; i < c->n_extents; i++) {
		struct pa_cat_extent *e = &c->extents[i];

		if (refs[i] == 0) {
			r->orphan_extents++;
			r->leaked_bytes += e->alloc;
			problems++;
			note(r, "extent %llu (%llu bytes) belongs to no model%s",
			     (unsigned long long)e->id,
			     (unsigned long long)e->alloc,
			     repair ? ": reclaimed" : "");
		} else if (refs[i] != e->refcount) {
			r->refcounts_fixed++;
			problems++;
			note(r, "extent %llu has refcount %u, %u tensors use it%s",
			     (unsigned long long)e->id, e->refcount, refs[i],
			     repair ? ": fixed" : "");
			if (repair) {
				e->refcount = refs[i];
				changed = true;
			}
		}
	}
	if (repair && r->orphan_extents) {
		for (uint32_t i = c->n_extents; i-- > 0;)
			if (refs[i] == 0)
				cat_extent_remove(c, c->extents[i].id);
		changed = true;
	}
	r->bad_records = check_layout(p, r);
	problems += (int)r->bad_records;

	/* after an unclean shutdown, every extent's bytes are suspect */
	if (unclean) {
		for (uint32_t i = 0; i < c->n_models; i++) {
			struct mem_model *m = &c->models[i];
			uint32_t bad = 0;

			for (uint32_t k = 0; k < m->n_tensors; k++) {
				struct pa_cat_extent *e =
					cat_extent(c, m->tensors[k].extent_id);

				if (e && !extent_bytes_ok(p, e))
					bad++;
			}
			if (!bad)
				continue;
			problems++;
			note(r, "model %s: %u tensors do not match their "
				"checksums%s", m->name, bad,
			     repair ? ": model dropped (load it again)" : "");
			if (repair) {
				cat_model_drop(c, m->id);
				changed = true;
				i--;
			}
		}
	}

	if (repair && (changed || unclean || (p->damage & PA_DAMAGE_STATE))) {
		if (changed) {
			rc = cat_commit(p);
			if (rc)
				goto out;
			/* the other copy may still be the bad one */
			if (p->damage & (PA_DAMAGE_CATALOG_NEW |
					 PA_DAMAGE_CATALOG_OLD)) {
				rc = cat_commit(p);
				if (rc)
					goto out;
			}
			r->repaired = 1;
		}
		p->state.needs_fsck = 0;
		rc = state_write(p);
		if (rc)
			goto out;
		p->damage = 0;
		r->repaired = 1;
	}
	if (!problems)
		note(r, "no problems found");
	rc = problems;
out:
	free(refs);
	if (writer)
		pool_unlock(p, LOCK_WRITER);
	pthread_mutex_unlock(&p->mu);
	return rc;
}

/* verify_extent -- check one extent, noting it when bad */
static void
verify_extent(struct pa_pool *p, uint64_t id, uint64_t *bad, size_t max_bad,
	      size_t *n_bad, uint64_t *checked)
{
	struct pa_cat_extent *e = cat_extent(&p->cat, id);

	if (!e)
		return;
	*checked += e->length;
	if (extent_bytes_ok(p, e))
		return;
	for (size_t i = 0; i < *n_bad && i < max_bad; i++)
		if (bad[i] == id)
			return;
	if (*n_bad < max_bad && bad)
		bad[*n_bad] = id;
	(*n_bad)++;
}

/* pa_pool_verify -- re-read the extents of model id (0: all) */
PA_EXPORT ssize_t
pa_pool_verify(struct pa_pool *p, uint64_t id, uint64_t *bad, size_t max_bad,
	       uint64_t *checked_bytes)
{
	size_t n_bad = 0;
	uint64_t checked = 0, *ids;
	uint32_t n = 0;
	int rc;

	pthread_mutex_lock(&p->mu);
	rc = pool_refresh_locked(p);
	if (rc < 0)
		goto out;
	ids = malloc((p->cat.n_models + 1) * sizeof(*ids));
	if (!ids) {
		rc = ERR(-ENOMEM, "out of memory");
		goto out;
	}
	for (uint32_t i = 0; i < p->cat.n_models; i++)
		if (p->cat.models[i].state == PA_MODEL_READY &&
		    (id == 0 || p->cat.models[i].id == id))
			ids[n++] = p->cat.models[i].id;
	if (id && n == 0) {
		free(ids);
		rc = ERR(-ENOENT, "%s: no model with id %llu", p->path,
			 (unsigned long long)id);
		goto out;
	}
	for (uint32_t i = 0; i < n; i++) {
		struct mem_model *m;

		/* a lease keeps the bytes from being reused while read */
		if (pool_lease_locked(p, ids[i], 0))
			continue; /* evicted meanwhile: nothing to verify */
		m = cat_model(&p->cat, ids[i]);
		for (uint32_t k = 0; m && k <= m->n_tensors; k++)
			verify_extent(p, k < m->n_tensors ?
						 m->tensors[k].extent_id :
						 m->meta_extent,
				      bad, max_bad, &n_bad, &checked);
		pthread_mutex_unlock(&p->mu);
		pa_pool_unlease(p, ids[i]);
		pthread_mutex_lock(&p->mu);
	}
	free(ids);
	rc = 0;
out:
	pthread_mutex_unlock(&p->mu);
	if (checked_bytes)
		*checked_bytes = checked;
	return rc < 0 ? rc : (ssize_t)n_bad;
}
