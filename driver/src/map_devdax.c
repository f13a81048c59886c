/* SPDX-License-Identifier: MIT */
/*
 * map_devdax.c -- mappings of device-DAX character devices
 *
 * A device-DAX mapping is always synchronous: stores reach the device
 * without the page cache, so MAP_SYNC is neither needed nor accepted.
 * Offset and length are multiples of the device's align (checked in
 * map.c); the kernel aligns the address itself.  The fd is never read or
 * written: device-DAX supports only mmap.
 */
#include <sys/mman.h>

#include "internal.h"

/* pa_map_devdax -- map a /dev/daxX.Y range */
int
pa_map_devdax(struct pa_map *m, const struct pa_map_cfg *cfg)
{
	int rc = pa_map_mmap(m, 0);

	if (rc)
		return ERR(rc, "%s: mmap of device-DAX %s (%llu bytes at "
			       "%llu, align %llu) failed: %s", cfg->path,
			   m->src.devname, (unsigned long long)m->length,
			   (unsigned long long)m->offset,
			   (unsigned long long)m->src.align, strerror(-rc));
	m->sync = true;
	return 0;
}
