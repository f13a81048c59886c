/* SPDX-License-Identifier: MIT */
/*
 * harness.h -- a few macros for the C core's tests
 *
 * A test is a program: exit 0 passes, exit 77 skips (as in automake and
 * liburing), anything else fails.  Return codes are checked exactly.
 */
#ifndef PA_TEST_HARNESS_H
#define PA_TEST_HARNESS_H 1

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "pyaccel.h"

#define T_EXIT_PASS 0
#define T_EXIT_SKIP 77
#define T_EXIT_FAIL 1

#define T_FAIL(...)                                                        \
	do {                                                               \
		fprintf(stderr, "%s:%d: ", __FILE__, __LINE__);            \
		fprintf(stderr, __VA_ARGS__);                              \
		fprintf(stderr, "\n");                                     \
		exit(T_EXIT_FAIL);                                         \
	} while (0)

#define T_SKIP(...)                                                        \
	do {                                                               \
		fprintf(stderr, "skip: ");                                 \
		fprintf(stderr, __VA_ARGS__);                              \
		fprintf(stderr, "\n");                                     \
		exit(T_EXIT_SKIP);                                         \
	} while (0)

#define T_ASSERT(cond)                                                     \
	do {                                                               \
		if (!(cond))                                               \
			T_FAIL("assertion failed: %s", #cond);             \
	} while (0)

/* the call must return exactly want (0 or -errno) */
#define T_EXPECT_RC(call, want)                                            \
	do {                                                               \
		long long got_ = (long long)(call);                        \
		long long want_ = (long long)(want);                       \
		if (got_ != want_)                                         \
			T_FAIL("%s returned %lld (%s), expected %lld (%s); " \
			       "message: %s", #call, got_,                  \
			       got_ < 0 ? strerror((int)-got_) : "ok",      \
			       want_,                                       \
			       want_ < 0 ? strerror((int)-want_) : "ok",    \
			       pa_errormsg());                              \
	} while (0)

#define T_OK(call) T_EXPECT_RC(call, 0)

/* t_tmpname -- a fresh path under dir for this test */
static inline char *
t_tmpname(const char *dir, const char *tag)
{
	static char buf[256];
	static int n;

	snprintf(buf, sizeof(buf), "%s/pa-test-%d-%s-%d", dir, (int)getpid(),
		 tag, n++);
	unlink(buf);
	return buf;
}

#endif
