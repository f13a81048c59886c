/* SPDX-License-Identifier: MIT */
/*
 * alloc.c -- the extent allocator
 *
 * Free space is not stored: it is whatever the catalog's extents (those of
 * loading models included) leave free in a partition.  So a crash can never
 * leak space through a stale free list, and adjacent free ranges are one
 * gap by construction (coalesced).  Allocation is first fit over the gaps,
 * sorted by offset, which keeps a model's tensors together and in file
 * order.
 */
#include <stdlib.h>
#include <string.h>

#include "pool.h"

struct span {
	uint64_t off, end;
};

/* span_cmp -- order spans by offset */
static int
span_cmp(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

/* gaps_build -- the free ranges of partition part under catalog c */
int
gaps_build(struct pa_pool *p, struct mem_cat *c, uint32_t part,
	   struct gaps *g)
{
	const struct pa_sb_part *pt = &p->sb.parts[part];
	uint64_t pos = pt->off, end = pt->off + pt->size;
	struct span *sp;
	uint32_t n = 0;

	memset(g, 0, sizeof(*g));
	sp = malloc((c->n_extents + 1) * sizeof(*sp));
	g->v = malloc((c->n_extents + 2) * sizeof(*g->v));
	if (!sp || !g->v) {
		free(sp);
		free(g->v);
		g->v = NULL;
		return ERR(-ENOMEM, "out of memory");
	}
	for (uint32_t i = 0; i < c->n_extents; i++)
		if (c->extents[i].part == part && c->extents[i].alloc)
			sp[n++] = (struct span){c->extents[i].offset,
						c->extents[i].offset +
							c->extents[i].alloc};
	qsort(sp, n, sizeof(*sp), span_cmp);
	for (uint32_t i = 0; i < n; i++) {
		if (sp[i].off > pos)
			g->v[g->n++] = (struct gap){pos, sp[i].off - pos};
		if (sp[i].end > pos)
			pos = sp[i].end;
	}
	if (end > pos)
		g->v[g->n++] = (struct gap){pos, end - pos};
	free(sp);
	return 0;
}

/* gaps_take -- first fit of size bytes aligned to align; -ENOSPC if none */
int
gaps_take(struct gaps *g, uint64_t size, uint64_t align, uint64_t *off)
{
	for (uint32_t i = 0; i < g->n; i++) {
		struct gap *gp = &g->v[i];
		uint64_t start = PA_ALIGN_UP(gp->off, align);
		uint64_t gend = gp->off + gp->len;

		if (start < gp->off || start > gend || gend - start < size)
			continue;
		*off = start;
		if (start > gp->off && start + size < gend) {
			/* split: a gap before and one after */
			struct gap after = {start + size, gend - start - size};
			struct gap *n = realloc(g->v, (g->n + 1) * sizeof(*n));

			if (!n)
				return -ENOMEM;
			g->v = n;
			gp = &g->v[i];
			memmove(gp + 2, gp + 1, (g->n - i - 1) * sizeof(*gp));
			gp->len = start - gp->off;
			gp[1] = after;
			g->n++;
		} else if (start > gp->off) {
			gp->len = start - gp->off;
		} else {
			gp->off += size;
			gp->len -= size;
		}
		return 0;
	}
	return -ENOSPC;
}

void
gaps_free(struct gaps *g)
{
	free(g->v);
	memset(g, 0, sizeof(*g));
}

/* extent_align -- 2 MiB for large extents on hugepage / DAX pools */
uint64_t
extent_align(const struct pa_pool *p, uint64_t len)
{
	return len >= PA_DATA_ALIGN ? p->sb.align : PA_PAGE;
}

/* part_usage -- used, free and the largest free range of a partition */
void
part_usage(struct pa_pool *p, struct mem_cat *c, uint32_t part,
	   uint64_t *used, uint64_t *free_, uint64_t *largest)
{
	struct gaps g;
	uint64_t fr = 0, big = 0;

	if (gaps_build(p, c, part, &g) == 0) {
		for (uint32_t i = 0; i < g.n; i++) {
			fr += g.v[i].len;
			big = PA_MAX(big, g.v[i].len);
		}
		gaps_free(&g);
	}
	*free_ = fr;
	*largest = big;
	*used = p->sb.parts[part].size - fr;
}
