/* SPDX-License-Identifier: MIT */
/*
 * source.c -- what a path is: stat, statfs, statx and sysfs
 *
 * Classification looks only at the path itself (like libpmem2's
 * pmem2_get_type_from_stat): a character device is device-DAX when sysfs
 * says its subsystem is "dax"; a block device is a block device; a regular
 * file is classified by the filesystem it lives on.  Discovery -- which
 * devices exist -- is the Python layer's business (pyaccel.discover).
 */
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "internal.h"

#define HUGETLBFS_MAGIC 0x958458f6
#define TMPFS_MAGIC 0x01021994
#define RAMFS_MAGIC 0x858458f6

#ifndef STATX_ATTR_DAX
#define STATX_ATTR_DAX 0x00200000
#endif

/* pa_sysfs_root -- the sysfs root to use: override, env, or "/sys" */
const char *
pa_sysfs_root(const char *override)
{
	const char *env;

	if (override && *override)
		return override;
	env = getenv("PYACCEL_SYSFS_ROOT");
	return env && *env ? env : "/sys";
}

/* pa_read_sysfs_str -- read a one-line sysfs attribute, newline stripped */
int
pa_read_sysfs_str(const char *path, char *buf, size_t len)
{
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -errno;
	n = read(fd, buf, len - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
		buf[--n] = '\0';
	return 0;
}

/* pa_read_sysfs_u64 -- read a decimal or 0x-hex sysfs attribute */
int
pa_read_sysfs_u64(const char *path, uint64_t *val)
{
	char buf[64], *end;
	unsigned long long v;
	int rc = pa_read_sysfs_str(path, buf, sizeof(buf));

	if (rc)
		return rc;
	errno = 0;
	v = strtoull(buf, &end, 0);
	if (errno || end == buf)
		return -EINVAL;
	*val = v;
	return 0;
}

/* read_sysfs_int -- read a signed attribute such as numa_node (-1) */
static int
read_sysfs_int(const char *path, int *val)
{
	char buf[32], *end;
	long v;
	int rc = pa_read_sysfs_str(path, buf, sizeof(buf));

	if (rc)
		return rc;
	v = strtol(buf, &end, 10);
	if (end == buf)
		return -EINVAL;
	*val = (int)v;
	return 0;
}

/* uevent_devname -- DEVNAME= from a sysfs uevent file */
static int
uevent_devname(const char *dir, char *name, size_t len)
{
	char path[PATH_MAX + 16], buf[1024], *p;
	int rc;

	snprintf(path, sizeof(path), "%s/uevent", dir);
	rc = pa_read_sysfs_str(path, buf, sizeof(buf));
	if (rc)
		return rc;
	p = strstr(buf, "DEVNAME=");
	if (!p)
		return -ENOENT;
	p += strlen("DEVNAME=");
	p[strcspn(p, "\n")] = '\0';
	/* DEVNAME may carry a directory ("dax/dax0.0" on old kernels) */
	if (strrchr(p, '/'))
		p = strrchr(p, '/') + 1;
	snprintf(name, len, "%s", p);
	return 0;
}

/* subsystem_is -- whether dir/subsystem links to a directory called want */
static bool
subsystem_is(const char *dir, const char *want)
{
	char path[PATH_MAX + 16], target[PATH_MAX];
	ssize_t n;
	const char *base;

	snprintf(path, sizeof(path), "%s/subsystem", dir);
	n = readlink(path, target, sizeof(target) - 1);
	if (n < 0)
		return false;
	target[n] = '\0';
	base = strrchr(target, '/');
	base = base ? base + 1 : target;
	return strcmp(base, want) == 0;
}

/* devdax_persistence -- persistent or not, and the granularity needed */
static void
devdax_persistence(const char *devdir, struct pa_source_info *info)
{
	char real[PATH_MAX], path[PATH_MAX + 32], buf[64];
	char *region;

	info->persistent = 0;
	info->granularity = PA_GRAN_BYTE;
	if (!realpath(devdir, real))
		return;
	/* pmem-backed dax devices hang below an nvdimm bus; CXL RAM and
	 * soft-reserved (hmem) memory do not, and lose their contents */
	if (!strstr(real, "/ndbus"))
		return;
	info->persistent = 1;
	info->granularity = PA_GRAN_CACHE_LINE;
	region = strstr(real, "/region");
	if (region) {
		char *end = strchr(region + 1, '/');

		if (end)
			*end = '\0';
		snprintf(path, sizeof(path), "%s/persistence_domain", real);
		if (pa_read_sysfs_str(path, buf, sizeof(buf)) == 0 &&
		    strcmp(buf, "cpu_cache") == 0)
			info->granularity = PA_GRAN_BYTE; /* eADR */
	}
}

/* classify_chr -- a character device must be device-DAX */
static int
classify_chr(const char *path, const struct stat *st, const char *root,
	     struct pa_source_info *info)
{
	char dir[PATH_MAX], attr[PATH_MAX + 64];
	uint64_t v;
	int rc;

	snprintf(dir, sizeof(dir), "%s/dev/char/%u:%u", root,
		 major(st->st_rdev), minor(st->st_rdev));
	if (!subsystem_is(dir, "dax") ||
	    uevent_devname(dir, info->devname, sizeof(info->devname)))
		return ERR(-ENODEV, "%s: character device %u:%u is not "
				    "device-DAX (no dax subsystem in %s)",
			   path, major(st->st_rdev), minor(st->st_rdev), dir);
	snprintf(dir, sizeof(dir), "%s/bus/dax/devices/%s", root,
		 info->devname);
	snprintf(attr, sizeof(attr), "%s/size", dir);
	rc = pa_read_sysfs_u64(attr, &info->size);
	if (rc)
		return ERR(rc, "%s: cannot read %s: %s", path, attr,
			   strerror(-rc));
	snprintf(attr, sizeof(attr), "%s/align", dir);
	if (pa_read_sysfs_u64(attr, &v)) {
		snprintf(attr, sizeof(attr), "%s/dax_region/align", dir);
		if (pa_read_sysfs_u64(attr, &v))
			v = 2 * PA_MIB;
	}
	if (v == 0 || (v & (v - 1)))
		return ERR(-EINVAL, "%s: align %llu in sysfs is not a power "
				    "of two", path, (unsigned long long)v);
	info->align = v;
	snprintf(attr, sizeof(attr), "%s/numa_node", dir);
	read_sysfs_int(attr, &info->numa_node);
	snprintf(attr, sizeof(attr), "%s/target_node", dir);
	read_sysfs_int(attr, &info->target_node);
	info->kind = PA_KIND_DEVDAX;
	devdax_persistence(dir, info);
	return 0;
}

/* loop_persistent -- a loop device keeps data when its backing file does */
static int
loop_persistent(const char *root, const char *devname)
{
	char path[PATH_MAX + 80], backing[PATH_MAX];
	struct statfs sfs;

	snprintf(path, sizeof(path), "%s/block/%s/loop/backing_file", root,
		 devname);
	if (pa_read_sysfs_str(path, backing, sizeof(backing)))
		return 1;
	if (statfs(backing, &sfs))
		return 1;
	return !(sfs.f_type == TMPFS_MAGIC || sfs.f_type == RAMFS_MAGIC ||
		 sfs.f_type == HUGETLBFS_MAGIC);
}

/* classify_blk -- block devices: size from sysfs, persistence by driver */
static int
classify_blk(const char *path, const struct stat *st, const char *root,
	     struct pa_source_info *info)
{
	char dir[PATH_MAX], attr[PATH_MAX + 64];
	uint64_t sectors;
	int rc;

	snprintf(dir, sizeof(dir), "%s/dev/block/%u:%u", root,
		 major(st->st_rdev), minor(st->st_rdev));
	if (uevent_devname(dir, info->devname, sizeof(info->devname)))
		snprintf(info->devname, sizeof(info->devname), "%u:%u",
			 major(st->st_rdev), minor(st->st_rdev));
	snprintf(attr, sizeof(attr), "%s/size", dir);
	rc = pa_read_sysfs_u64(attr, &sectors);
	if (rc)
		return ERR(rc, "%s: cannot read the device size from %s: %s",
			   path, attr, strerror(-rc));
	info->size = sectors * 512;
	info->kind = PA_KIND_BLOCK;
	info->align = PA_PAGE;
	info->granularity = PA_GRAN_PAGE;
	if (strncmp(info->devname, "ram", 3) == 0 ||
	    strncmp(info->devname, "nullb", 5) == 0 ||
	    strncmp(info->devname, "zram", 4) == 0)
		info->persistent = 0;
	else if (strncmp(info->devname, "loop", 4) == 0)
		info->persistent = loop_persistent(root, info->devname);
	else
		info->persistent = 1;
	snprintf(attr, sizeof(attr), "%s/device/numa_node", dir);
	read_sysfs_int(attr, &info->numa_node);
	return 0;
}

/* classify_reg -- regular files: by the filesystem they live on */
static int
classify_reg(const char *path, const struct stat *st,
	     struct pa_source_info *info)
{
	struct statfs sfs;
	struct statx stx;

	if (statfs(path, &sfs))
		return ERR_W_ERRNO("statfs %s", path);
	info->fs_magic = (uint64_t)sfs.f_type;
	info->size = (uint64_t)st->st_size;
	info->align = PA_PAGE;
	switch ((uint64_t)sfs.f_type) {
	case HUGETLBFS_MAGIC:
		info->kind = PA_KIND_HUGETLBFS;
		info->align = (uint64_t)sfs.f_bsize; /* the hugepage size */
		info->granularity = PA_GRAN_BYTE;
		info->persistent = 0;
		return 0;
	case TMPFS_MAGIC:
	case RAMFS_MAGIC:
		info->kind = PA_KIND_TMPFS;
		info->granularity = PA_GRAN_BYTE;
		info->persistent = 0;
		return 0;
	}
	info->persistent = 1;
	if (statx(AT_FDCWD, path, 0, STATX_BASIC_STATS, &stx) == 0 &&
	    (stx.stx_attributes_mask & STATX_ATTR_DAX) &&
	    (stx.stx_attributes & STATX_ATTR_DAX)) {
		info->kind = PA_KIND_FSDAX;
		info->granularity = PA_GRAN_CACHE_LINE;
		return 0;
	}
	info->kind = PA_KIND_FILE;
	info->granularity = PA_GRAN_PAGE;
	return 0;
}

/* pa_source_classify -- classify path from stat, statfs, statx and sysfs */
PA_EXPORT int
pa_source_classify(const char *path, const char *sysfs_root,
		   struct pa_source_info *info)
{
	const char *root = pa_sysfs_root(sysfs_root);
	struct stat st;

	if (!path || !*path || !info)
		return ERR(-EINVAL, "pa_source_classify: no path given");
	memset(info, 0, sizeof(*info));
	info->numa_node = -1;
	info->target_node = -1;
	if (stat(path, &st))
		return ERR_W_ERRNO("%s", path);
	if (S_ISDIR(st.st_mode))
		return ERR(-EISDIR, "%s: is a directory; a pool needs a file "
				    "or a device", path);
	if (S_ISCHR(st.st_mode))
		return classify_chr(path, &st, root, info);
	if (S_ISBLK(st.st_mode))
		return classify_blk(path, &st, root, info);
	if (S_ISREG(st.st_mode))
		return classify_reg(path, &st, info);
	return ERR(-EINVAL, "%s: neither a file nor a device (a fifo or "
			    "socket?)", path);
}

/* pa_kind_name -- the kind as a word */
PA_EXPORT const char *
pa_kind_name(enum pa_kind kind)
{
	switch (kind) {
	case PA_KIND_DEVDAX:
		return "devdax";
	case PA_KIND_HUGETLBFS:
		return "hugetlbfs";
	case PA_KIND_FSDAX:
		return "fsdax";
	case PA_KIND_BLOCK:
		return "block";
	case PA_KIND_TMPFS:
		return "tmpfs";
	case PA_KIND_FILE:
		return "file";
	case PA_KIND_UNKNOWN:
		break;
	}
	return "unknown";
}

/* pa_granularity_name -- the granularity as a word */
PA_EXPORT const char *
pa_granularity_name(enum pa_granularity gran)
{
	switch (gran) {
	case PA_GRAN_BYTE:
		return "byte";
	case PA_GRAN_CACHE_LINE:
		return "cache_line";
	case PA_GRAN_PAGE:
		return "page";
	}
	return "unknown";
}

/* pa_ncpus -- online CPUs, at least 1 */
unsigned
pa_ncpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n > 0 ? (unsigned)n : 1;
}
