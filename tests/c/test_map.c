/* SPDX-License-Identifier: MIT */
/* test_map -- mappings on tmpfs and disk files, and the errors of bad input */
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "harness.h"

static void
expect_map_err(const char *path, uint64_t off, uint64_t len, unsigned flags,
	       int want, const char *msg_part)
{
	struct pa_map_cfg cfg = {.path = path, .offset = off, .length = len,
				 .flags = flags};
	struct pa_map *m = (struct pa_map *)0x1;

	T_EXPECT_RC(pa_map_new(&m, &cfg), want);
	T_ASSERT(m == NULL);
	if (msg_part && !strstr(pa_errormsg(), msg_part))
		T_FAIL("message '%s' lacks '%s'", pa_errormsg(), msg_part);
}

int
main(void)
{
	char *path = strdup(t_tmpname("/dev/shm", "map"));
	struct pa_map_cfg cfg = {.path = path, .length = 8 << 20,
				 .flags = PA_MAP_CREATE | PA_MAP_POPULATE};
	struct pa_source_info si;
	struct pa_map *m = NULL, *r = NULL;
	unsigned char *p, src[5000];
	pid_t pid;
	int status;

	/* create, populate, write, persist */
	T_OK(pa_map_new(&m, &cfg));
	T_ASSERT(pa_map_kind(m) == PA_KIND_TMPFS);
	T_ASSERT(pa_map_granularity(m) == PA_GRAN_BYTE);
	T_ASSERT(!pa_map_is_persistent(m));
	T_ASSERT(pa_map_length(m) == 8 << 20);
	p = pa_map_addr(m);
	for (size_t i = 0; i < sizeof(src); i++)
		src[i] = (unsigned char)(i * 7);
	T_OK(pa_map_memcpy(m, p + 100, src, sizeof(src), 0));
	T_OK(pa_map_memcpy(m, p + 10000, src, 10, PA_MEM_TEMPORAL));
	T_OK(pa_map_persist(m, p, 4096));
	T_ASSERT(memcmp(p + 100, src, sizeof(src)) == 0);
	/* out-of-mapping copies are refused */
	T_EXPECT_RC(pa_map_memcpy(m, p + (8 << 20) - 10, src, 20, 0),
		    -EINVAL);
	T_EXPECT_RC(pa_map_populate(m, 8 << 20, 4096, 1), -EINVAL);

	/* a second process sees the bytes through its own mapping */
	pid = fork();
	if (pid == 0) {
		struct pa_map_cfg rc = {.path = path,
					.flags = PA_MAP_READONLY};
		struct pa_map *c = NULL;

		if (pa_map_new(&c, &rc))
			_exit(2);
		_exit(memcmp((char *)pa_map_addr(c) + 100, src,
			     sizeof(src)) ? 3 : 0);
	}
	T_ASSERT(waitpid(pid, &status, 0) == pid);
	T_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 0);

	/* read-only mappings refuse writes */
	cfg.flags = PA_MAP_READONLY;
	cfg.length = 0;
	T_OK(pa_map_new(&r, &cfg));
	T_ASSERT(pa_map_is_readonly(r));
	T_EXPECT_RC(pa_map_memcpy(r, pa_map_addr(r), src, 10, 0), -EACCES);
	T_OK(pa_map_delete(&r));
	T_ASSERT(r == NULL);

	/* bad input: each a clear error code */
	expect_map_err("/nonexistent/pool", 0, 0, 0, -ENOENT, "/nonexistent");
	expect_map_err("/dev/shm", 0, 0, 0, -EISDIR, "directory");
	expect_map_err("/dev/null", 0, 0, PA_MAP_READONLY, -ENODEV,
		       "not device-DAX");
	expect_map_err(path, 0, 12345, 0, -EINVAL, "multiple");
	expect_map_err(path, 4096 * 3 + 1, 4096, 0, -EINVAL, "offset");
	expect_map_err(path, 16 << 20, 4096, 0, -EINVAL, "past the end");
	expect_map_err(path, 4096, 8 << 20, 0, -EINVAL, "past the end");
	expect_map_err(path, 0, 4096, PA_MAP_CREATE | PA_MAP_READONLY, -EINVAL,
		       "read-only");
	T_EXPECT_RC(pa_source_classify("/dev/null", NULL, &si), -ENODEV);
	T_EXPECT_RC(pa_source_classify(path, NULL, &si), 0);
	T_ASSERT(si.kind == PA_KIND_TMPFS && si.size == 8 << 20);

	/* a disk file: PAGE granularity, persistent */
	{
		char *disk = strdup(t_tmpname("/var/tmp", "map"));
		struct pa_map_cfg dc = {.path = disk, .length = 1 << 20,
					.flags = PA_MAP_CREATE};
		struct pa_map *d = NULL;

		T_OK(pa_map_new(&d, &dc));
		if (pa_map_kind(d) == PA_KIND_FILE) {
			T_ASSERT(pa_map_granularity(d) == PA_GRAN_PAGE);
			T_ASSERT(pa_map_is_persistent(d));
		}
		T_OK(pa_map_memcpy(d, (char *)pa_map_addr(d) + 5, src, 4000,
				   0));
		T_OK(pa_map_delete(&d));
		unlink(disk);
		free(disk);
	}
	T_OK(pa_map_delete(&m));
	unlink(path);
	free(path);
	return T_EXIT_PASS;
}
