/* SPDX-License-Identifier: MIT */
/*
 * fault.c -- fault injection for the crash and error-path tests
 *
 * Each injection point counts its events; when the count reaches the armed
 * number the event fails (-EIO, or -ENOSPC for an allocation) or the
 * process exits on the spot, as a kill -9 would stop it, so the tests can
 * stop a writer between any two steps of a commit deterministically.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

#define NPOINTS 3

static uint64_t armed[NPOINTS];	 /* 0: off */
static uint64_t counts[NPOINTS];
static enum pa_fault_action actions[NPOINTS];

static const char *const point_names[NPOINTS] = {"write", "flush", "alloc"};

/* pa_fault_set -- make the nth event at point fail or exit */
PA_EXPORT int
pa_fault_set(enum pa_fault_point point, uint64_t nth,
	     enum pa_fault_action action)
{
	if ((unsigned)point >= NPOINTS || nth == 0 ||
	    (action != PA_FAULT_FAIL && action != PA_FAULT_EXIT))
		return ERR(-EINVAL, "pa_fault_set: bad point %d, nth %llu or "
				    "action %d", (int)point,
			   (unsigned long long)nth, (int)action);
	__atomic_store_n(&counts[point], 0, __ATOMIC_SEQ_CST);
	actions[point] = action;
	__atomic_store_n(&armed[point], nth, __ATOMIC_SEQ_CST);
	return 0;
}

/* pa_fault_clear -- turn fault injection off */
PA_EXPORT void
pa_fault_clear(void)
{
	for (int i = 0; i < NPOINTS; i++) {
		__atomic_store_n(&armed[i], 0, __ATOMIC_SEQ_CST);
		__atomic_store_n(&counts[i], 0, __ATOMIC_SEQ_CST);
	}
}

/* pa_fault_count -- events seen at point since the last pa_fault_set */
PA_EXPORT uint64_t
pa_fault_count(enum pa_fault_point point)
{
	if ((unsigned)point >= NPOINTS)
		return 0;
	return __atomic_load_n(&counts[point], __ATOMIC_SEQ_CST);
}

/* pa_fault_hit -- count one event at point; 0, or the injected failure */
int
pa_fault_hit(enum pa_fault_point point)
{
	uint64_t n = __atomic_add_fetch(&counts[point], 1, __ATOMIC_SEQ_CST);
	uint64_t at = __atomic_load_n(&armed[point], __ATOMIC_SEQ_CST);

	if (at == 0 || n != at)
		return 0;
	if (actions[point] == PA_FAULT_EXIT)
		_exit(86);
	if (point == PA_FAULT_ALLOC)
		return ERR(-ENOSPC, "injected allocation failure (#%llu)",
			   (unsigned long long)n);
	return ERR(-EIO, "injected %s failure (#%llu)", point_names[point],
		   (unsigned long long)n);
}

/* fault_env -- arm from PYACCEL_FAULT="point:nth:action" at library load */
__attribute__((constructor)) static void
fault_env(void)
{
	const char *env = getenv("PYACCEL_FAULT");
	char point[16], action[16];
	unsigned long long nth;

	if (!env || sscanf(env, "%15[a-z]:%llu:%15[a-z]", point, &nth,
			   action) != 3)
		return;
	for (int i = 0; i < NPOINTS; i++)
		if (strcmp(point, point_names[i]) == 0)
			pa_fault_set((enum pa_fault_point)i, nth,
				     strcmp(action, "exit") == 0 ?
					     PA_FAULT_EXIT : PA_FAULT_FAIL);
}
