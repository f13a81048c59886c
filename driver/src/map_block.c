/* SPDX-License-Identifier: MIT */
/*
 * map_block.c -- mappings of block devices (null_blk, brd, loop, disks)
 *
 * A block device is mapped through its page cache with MAP_SHARED; a
 * persist is an msync of the pages written (PAGE granularity).  This is
 * the "nullblk" emulation: null_blk with memory_backed=1, brd's /dev/ramN
 * or a loop device behave like memory that the kernel writes back.
 */
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mman.h>

#include "internal.h"

/* pa_map_block -- map a block device range */
int
pa_map_block(struct pa_map *m, const struct pa_map_cfg *cfg)
{
	uint64_t size = 0;
	int rc;

	/* sysfs gave the size; the device's own answer wins if they differ */
	if (ioctl(m->fd, BLKGETSIZE64, &size) == 0 && size != m->src.size) {
		m->src.size = size;
		if (m->offset + m->length > size)
			return ERR(-EINVAL, "%s: range %llu+%llu is past the "
					    "end of the device (%llu bytes)",
				   cfg->path, (unsigned long long)m->offset,
				   (unsigned long long)m->length,
				   (unsigned long long)size);
	}
	rc = pa_map_mmap(m, 0);
	if (rc)
		return ERR(rc, "%s: mmap of block device %s failed: %s",
			   cfg->path, m->src.devname, strerror(-rc));
	m->gran = PA_GRAN_PAGE;
	return 0;
}
