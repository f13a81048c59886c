/* SPDX-License-Identifier: MIT */
/* test_pool -- create, load, dedup, lease, evict, fsck, verify, faults */
#include <sys/wait.h>

#include "harness.h"

static const char *path;

static struct pa_pool *
open_pool(unsigned flags, uint64_t size)
{
	struct pa_pool_cfg cfg = {.path = path, .size = size, .flags = flags};
	struct pa_pool *p = NULL;

	T_OK(pa_pool_open(&p, &cfg));
	return p;
}

/* load -- a model of n tensors, tensor i filled with byte fill[i] */
static int
load(struct pa_pool *p, const char *name, int n, const unsigned char *fill,
     uint64_t each, uint64_t *id)
{
	struct pa_tensor_desc td[8];
	char names[8][16];
	uint64_t dims[8][1];
	struct pa_model_desc d = {.name = name, .n_tensors = (uint32_t)n,
				  .tensors = td, .meta_len = 100};
	struct pa_load *l = NULL;
	struct pa_stream *s = NULL;
	struct pa_stream_cfg sc = {0};
	unsigned char *bufs[9];
	int rc;

	for (int i = 0; i < n; i++) {
		snprintf(names[i], sizeof(names[i]), "t%d", i);
		dims[i][0] = each / 4;
		td[i] = (struct pa_tensor_desc){.name = names[i], .dtype = 1,
						.ndim = 1, .dims = dims[i],
						.nbytes = each, .same_as = -1};
	}
	rc = pa_load_begin(&l, p, &d);
	if (rc)
		return rc;
	T_OK(pa_stream_new(&s, pa_pool_map(p), &sc));
	for (int i = 0; i <= n; i++) {
		uint64_t off, len = i < n ? each : 100;
		struct pa_io io = {.fd = -1, .len = len};

		bufs[i] = malloc(len);
		memset(bufs[i], i < n ? fill[i] : 0xee, len);
		T_OK(pa_load_offset(l, (size_t)i, &off));
		io.src = bufs[i];
		io.dst_off = off;
		T_ASSERT(pa_stream_add(s, &io) == i);
	}
	rc = pa_stream_run(s);
	if (rc == 0)
		for (int i = 0; i <= n; i++) {
			uint32_t crc;

			T_OK(pa_stream_crc(s, (size_t)i, &crc));
			T_OK(pa_load_set_crc(l, (size_t)i, crc));
		}
	for (int i = 0; i <= n; i++)
		free(bufs[i]);
	pa_stream_delete(&s);
	if (rc == 0)
		rc = pa_load_commit(&l, 0, id);
	if (rc)
		pa_load_abort(&l);
	return rc;
}

int
main(void)
{
	const unsigned char f1[] = {1, 2, 3}, f2[] = {1, 9, 3};
	struct pa_pool *p, *q;
	struct pa_pool_stat st;
	struct pa_model_info mi;
	struct pa_tensor_info ti;
	struct pa_fsck_report rep;
	uint64_t a, b, c, bad[4], checked;
	int status;
	pid_t pid;

	path = strdup(t_tmpname("/dev/shm", "pool"));
	/* create; creating again over it is refused without force */
	p = open_pool(PA_POOL_CREATE, 64 << 20);
	{
		struct pa_pool_cfg cfg = {.path = path, .size = 64 << 20,
					  .flags = PA_POOL_CREATE};
		struct pa_pool *x = NULL;

		T_EXPECT_RC(pa_pool_open(&x, &cfg), -EEXIST);
	}
	T_OK(pa_pool_stat(p, &st));
	T_ASSERT(st.n_models == 0 && st.used == 0 && st.free > 50 << 20);
	T_ASSERT(st.kind == PA_KIND_TMPFS && st.n_parts == 1);

	/* load; a second model sharing two tensors' bytes */
	T_OK(load(p, "m1", 3, f1, 1 << 20, &a));
	T_OK(load(p, "m2", 3, f2, 1 << 20, &b));
	T_OK(pa_pool_stat(p, &st));
	T_ASSERT(st.n_models == 2 && st.n_tensors == 6);
	T_ASSERT(st.dedup_saved == 2 << 20);
	T_OK(pa_pool_model_find(p, "m2", &mi));
	T_ASSERT(mi.id == b && mi.n_tensors == 3 && mi.state == PA_MODEL_READY);
	T_OK(pa_pool_tensor_at(p, b, 0, &ti));
	T_ASSERT(ti.refcount == 2 && ti.nbytes == 1 << 20);
	T_ASSERT(((unsigned char *)pa_map_addr(pa_pool_map(p)))[ti.offset] ==
		 1);
	T_ASSERT(ti.offset % 4096 == 0);
	T_ASSERT(pa_pool_verify(p, 0, bad, 4, &checked) == 0);

	/* another process attaches and leases m1; evicting it fails */
	pid = fork();
	if (pid == 0) {
		struct pa_pool_cfg cfg = {.path = path,
					  .flags = PA_POOL_RDONLY};
		struct pa_pool *r = NULL;
		struct pa_model_info m;

		if (pa_pool_open(&r, &cfg) || pa_pool_model_find(r, "m1", &m) ||
		    pa_pool_lease(r, m.id, 0))
			_exit(2);
		pause();
		_exit(0);
	}
	usleep(300000);
	T_ASSERT(pa_pool_in_use(p, a) == 1);
	T_EXPECT_RC(pa_pool_evict(p, a), -EBUSY);
	T_ASSERT(strstr(pa_errormsg(), "m1"));
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	/* the lease died with the process */
	T_ASSERT(pa_pool_in_use(p, a) == 0);
	T_OK(pa_pool_evict(p, a));
	T_EXPECT_RC(pa_pool_model_find(p, "m1", &mi), -ENOENT);
	T_OK(pa_pool_stat(p, &st));
	T_ASSERT(st.n_models == 1 && st.dedup_saved == 0);

	/* our own lease blocks eviction too */
	T_OK(pa_pool_lease(p, b, 0));
	T_EXPECT_RC(pa_pool_evict(p, b), -EBUSY);
	T_OK(pa_pool_unlease(p, b));

	/* a reopened pool shows the same */
	T_OK(pa_pool_close(&p));
	p = open_pool(0, 0);
	T_OK(pa_pool_model_find(p, "m2", &mi));
	T_ASSERT(mi.id == b);

	/* the same name again supersedes the old version */
	T_OK(load(p, "m2", 2, f1, 4096, &c));
	T_OK(pa_pool_model_find(p, "m2", &mi));
	T_ASSERT(mi.id == c);
	T_EXPECT_RC(pa_pool_model_get(p, b, &mi), -ENOENT);

	/* injected failures leave the pool as it was */
	T_OK(pa_pool_stat(p, &st));
	{
		uint64_t gen = st.generation;
		uint32_t models = st.n_models;

		for (int n = 1; n <= 12; n++) {
			uint64_t x;

			T_OK(pa_fault_set(PA_FAULT_WRITE, (uint64_t)n,
					  PA_FAULT_FAIL));
			if (load(p, "f", 2, f2, 8192, &x) == 0) {
				pa_fault_clear();
				T_OK(pa_pool_evict(p, x));
				break;
			}
			pa_fault_clear();
			T_OK(pa_pool_stat(p, &st));
			T_ASSERT(st.n_models == models && st.n_loading == 0);
		}
		(void)gen;
	}
	T_OK(pa_fault_set(PA_FAULT_ALLOC, 1, PA_FAULT_FAIL));
	T_EXPECT_RC(load(p, "f", 2, f2, 8192, &c), -ENOSPC);
	pa_fault_clear();

	/* a loader killed mid-load leaves a record fsck reclaims */
	pid = fork();
	if (pid == 0) {
		struct pa_pool *w = open_pool(0, 0);
		uint64_t x;

		pa_fault_set(PA_FAULT_WRITE, 10, PA_FAULT_EXIT);
		load(w, "dies", 3, f1, 1 << 20, &x);
		_exit(0);
	}
	waitpid(pid, &status, 0);
	T_ASSERT(WIFEXITED(status) && WEXITSTATUS(status) == 86);
	T_OK(pa_pool_refresh(p) < 0 ? -1 : 0);
	T_OK(pa_pool_stat(p, &st));
	T_ASSERT(st.n_loading == 1);
	T_ASSERT(pa_pool_fsck(p, 0, &rep) == 1);
	T_ASSERT(rep.stale_loads == 1 && rep.leaked_bytes >= 3 << 20);
	T_ASSERT(pa_pool_fsck(p, PA_FSCK_REPAIR, &rep) == 1 && rep.repaired);
	T_ASSERT(pa_pool_fsck(p, 0, &rep) == 0);
	T_OK(pa_pool_stat(p, &st));
	T_ASSERT(st.n_loading == 0);

	/* a full pool: -ENOSPC with a message, nothing changed */
	{
		uint64_t x;
		unsigned char big[3] = {5, 6, 7};

		T_EXPECT_RC(load(p, "huge", 3, big, 40 << 20, &x), -ENOSPC);
		T_ASSERT(strstr(pa_errormsg(), "huge"));
	}
	/* eviction makes room: m2 (not leased) goes */
	{
		uint64_t x;
		unsigned char big[1] = {5};

		T_OK(pa_pool_stat(p, &st));
		T_OK(load(p, "big", 1, big, st.free + st.used - 8192, &x));
		T_EXPECT_RC(pa_pool_model_find(p, "m2", &mi), -ENOENT);
	}
	/* a corrupted tensor byte is found by verify */
	{
		struct pa_pool *v;

		T_OK(pa_pool_model_find(p, "big", &mi));
		T_OK(pa_pool_tensor_at(p, mi.id, 0, &ti));
		((unsigned char *)pa_map_addr(pa_pool_map(p)))[ti.offset + 7] ^=
			1;
		v = open_pool(PA_POOL_RDONLY, 0);
		T_ASSERT(pa_pool_verify(v, 0, bad, 4, &checked) == 1);
		T_ASSERT(bad[0] == ti.extent_id);
		T_OK(pa_pool_close(&v));
	}
	q = open_pool(0, 0);
	T_OK(pa_pool_close(&q));
	T_OK(pa_pool_close(&p));
	unlink(path);
	return T_EXIT_PASS;
}
