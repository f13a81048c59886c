/* SPDX-License-Identifier: MIT */
/*
 * map_hugetlb.c -- mappings of files on hugetlbfs (2 MiB and 1 GiB pages)
 *
 * Lengths are rounded up to the mount's page size (map.c).  The pages are
 * reserved with fallocate before mmap, so a shortage is -ENOMEM now and
 * not a SIGBUS at the first touch.
 */
#include <sys/mman.h>
#include <sys/stat.h>

#include "internal.h"

/* pa_map_hugetlb -- reserve and map hugetlbfs pages */
int
pa_map_hugetlb(struct pa_map *m, const struct pa_map_cfg *cfg)
{
	struct stat st;
	int rc;

	if (fstat(m->fd, &st))
		return ERR_W_ERRNO("fstat %s", cfg->path);
	if ((cfg->flags & PA_MAP_CREATE) &&
	    (uint64_t)st.st_size < m->offset + m->length) {
		rc = pa_file_reserve(m->fd, cfg->path, m->offset + m->length,
				     true);
		if (rc)
			return rc;
		m->src.size = m->offset + m->length;
	}
	rc = pa_map_mmap(m, 0);
	if (rc == -ENOMEM)
		return ERR(rc, "%s: not enough free %llu KiB hugepages for "
			       "%llu bytes", cfg->path,
			   (unsigned long long)(m->src.align / 1024),
			   (unsigned long long)m->length);
	if (rc)
		return ERR(rc, "%s: mmap of hugetlbfs file failed: %s",
			   cfg->path, strerror(-rc));
	return 0;
}
