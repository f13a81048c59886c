/* SPDX-License-Identifier: MIT */
/*
 * map_file.c -- mappings of files on tmpfs, fsdax and other filesystems
 */
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>

#include "internal.h"

#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif

/* pa_map_file -- size, reserve and map a regular file */
int
pa_map_file(struct pa_map *m, const struct pa_map_cfg *cfg)
{
	uint64_t end = m->offset + m->length;
	int rc;

	if ((cfg->flags & PA_MAP_CREATE) && m->src.size < end) {
		uint64_t old = m->src.size;

		rc = pa_file_reserve(m->fd, cfg->path, end, false);
		if (rc)
			return rc;
		m->fresh_off = PA_MAX(old, m->offset) - m->offset;
		m->fresh_len = end - m->offset - m->fresh_off;
		m->src.size = end;
		/* a new file may now show as DAX (statx needs the inode) */
		if (m->src.kind == PA_KIND_FILE) {
			struct pa_source_info si;

			if (pa_source_classify(cfg->path, cfg->sysfs_root,
					       &si) == 0)
				m->src = si;
			m->gran = m->src.granularity;
		}
	}
	if (m->src.kind == PA_KIND_FSDAX && !(cfg->flags & PA_MAP_NO_SYNC) &&
	    !(cfg->flags & PA_MAP_READONLY)) {
		/*
		 * MAP_SYNC keeps the filesystem's metadata for the mapped
		 * blocks durable, so flushing the CPU caches is enough to
		 * persist a store.  Kernels or mounts without it refuse
		 * MAP_SHARED_VALIDATE|MAP_SYNC (EOPNOTSUPP / EINVAL); then
		 * the mapping falls back to MAP_SHARED and every persist
		 * goes through msync (PAGE granularity), and says so.
		 */
		rc = pa_map_mmap(m, MAP_SHARED_VALIDATE | MAP_SYNC);
		if (rc == 0) {
			m->sync = true;
			m->gran = PA_GRAN_CACHE_LINE;
			return 0;
		}
		if (rc != -EOPNOTSUPP && rc != -EINVAL)
			return ERR(rc, "%s: mmap MAP_SYNC failed: %s",
				   cfg->path, strerror(-rc));
		snprintf(m->fallback, sizeof(m->fallback),
			 "MAP_SYNC refused (%s): MAP_SHARED with msync",
			 strerror(-rc));
		m->gran = PA_GRAN_PAGE;
	} else if (m->src.kind == PA_KIND_FSDAX) {
		snprintf(m->fallback, sizeof(m->fallback),
			 "MAP_SYNC not asked for: MAP_SHARED with msync");
		m->gran = PA_GRAN_PAGE;
	}
	rc = pa_map_mmap(m, 0);
	if (rc)
		return ERR(rc, "%s: mmap of %llu bytes failed: %s", cfg->path,
			   (unsigned long long)m->length, strerror(-rc));
	return 0;
}
