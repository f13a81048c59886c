/* SPDX-License-Identifier: MIT */
/*
 * test_devdax_sysfs -- device-DAX classification against a fake sysfs tree
 *
 * /dev/null (char 1:3) stands in for the device node; the tree says it is
 * dax0.0 with a 2 MiB align on NUMA node 1, target node 3, below an nvdimm
 * bus with an eADR power domain.
 */
#include <limits.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>

#include "harness.h"

static void
put(const char *root, const char *rel, const char *val)
{
	char path[PATH_MAX];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", root, rel);
	f = fopen(path, "w");
	if (!f)
		T_FAIL("cannot write %s", path);
	fputs(val, f);
	fclose(f);
}

static void
sh(const char *cmd)
{
	if (system(cmd) != 0)
		T_FAIL("%s failed", cmd);
}

int
main(void)
{
	char root[] = "/tmp/pa-fake-sysfs-XXXXXX", cmd[1024];
	struct pa_source_info si;
	struct stat st;

	if (!mkdtemp(root))
		T_FAIL("mkdtemp");
	if (stat("/dev/null", &st) || major(st.st_rdev) != 1)
		T_SKIP("/dev/null is not char 1:3 here");
	snprintf(cmd, sizeof(cmd),
		 "set -e; cd %s; d=devices/platform/ACPI0012:00/ndbus0/"
		 "region0/dax0.0/dax0.0;"
		 "mkdir -p $d bus/dax/devices dev/char class/dax;"
		 "ln -s ../../../$d bus/dax/devices/dax0.0;"
		 "ln -s ../../$d dev/char/1:3;"
		 "ln -s ../../../../../../../class/dax $d/subsystem",
		 root);
	sh(cmd);
	put(root, "devices/platform/ACPI0012:00/ndbus0/region0/dax0.0/dax0.0/"
		  "uevent", "MAJOR=1\nMINOR=3\nDEVNAME=dax0.0\n");
	put(root, "bus/dax/devices/dax0.0/size", "4294967296\n");
	put(root, "bus/dax/devices/dax0.0/align", "2097152\n");
	put(root, "bus/dax/devices/dax0.0/numa_node", "1\n");
	put(root, "bus/dax/devices/dax0.0/target_node", "3\n");
	put(root, "devices/platform/ACPI0012:00/ndbus0/region0/"
		  "persistence_domain", "cpu_cache\n");

	T_OK(pa_source_classify("/dev/null", root, &si));
	T_ASSERT(si.kind == PA_KIND_DEVDAX);
	T_ASSERT(strcmp(si.devname, "dax0.0") == 0);
	T_ASSERT(si.size == 4294967296ULL);
	T_ASSERT(si.align == 2097152);
	T_ASSERT(si.numa_node == 1 && si.target_node == 3);
	T_ASSERT(si.persistent && si.granularity == PA_GRAN_BYTE);

	/* the environment variable points there too */
	setenv("PYACCEL_SYSFS_ROOT", root, 1);
	T_OK(pa_source_classify("/dev/null", NULL, &si));
	T_ASSERT(si.kind == PA_KIND_DEVDAX);
	unsetenv("PYACCEL_SYSFS_ROOT");

	/* misaligned offsets and lengths are refused before mmap */
	{
		struct pa_map_cfg c = {.path = "/dev/null", .offset = 4096,
				       .sysfs_root = root};
		struct pa_map *m = NULL;

		T_EXPECT_RC(pa_map_new(&m, &c), -EINVAL);
		T_ASSERT(strstr(pa_errormsg(), "devdax alignment 2097152"));
		c.offset = 0;
		c.length = 3 << 20;
		T_EXPECT_RC(pa_map_new(&m, &c), -EINVAL);
		T_ASSERT(strstr(pa_errormsg(), "length"));
		c.length = 8ULL << 30;
		T_EXPECT_RC(pa_map_new(&m, &c), -EINVAL);
		T_ASSERT(strstr(pa_errormsg(), "past the end"));
	}
	/* a volatile (CXL RAM) device: no nvdimm bus above it */
	snprintf(cmd, sizeof(cmd),
		 "set -e; cd %s; rm bus/dax/devices/dax0.0 dev/char/1:3;"
		 "d=devices/platform/hmem.0/dax0.0; mkdir -p $d;"
		 "cp devices/platform/ACPI0012:00/ndbus0/region0/dax0.0/dax0.0/"
		 "* $d/ 2>/dev/null || true;"
		 "ln -s ../../../$d bus/dax/devices/dax0.0;"
		 "ln -s ../../$d dev/char/1:3;"
		 "ln -s ../../../../class/dax $d/subsystem",
		 root);
	sh(cmd);
	put(root, "devices/platform/hmem.0/dax0.0/uevent", "DEVNAME=dax0.0\n");
	put(root, "bus/dax/devices/dax0.0/size", "1073741824\n");
	T_OK(pa_source_classify("/dev/null", root, &si));
	T_ASSERT(si.kind == PA_KIND_DEVDAX && !si.persistent);
	T_ASSERT(si.granularity == PA_GRAN_BYTE && si.size == 1073741824);

	snprintf(cmd, sizeof(cmd), "rm -rf %s", root);
	sh(cmd);
	return T_EXIT_PASS;
}
