/* SPDX-License-Identifier: MIT */
/*
 * errormsg.c -- the thread-local message of the last failing call
 */
#include <stdio.h>

#include "internal.h"

#define PA_ERRMSG_MAX 512

static __thread char errmsg[PA_ERRMSG_MAX];

/* pa_errormsg -- the message left by the last failing call on this thread */
PA_EXPORT const char *
pa_errormsg(void)
{
	return errmsg;
}

/* pa_err_set -- leave a formatted message */
void
pa_err_set(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
	va_end(ap);
}

/* pa_err_errno -- leave a formatted message followed by strerror(errno) */
void
pa_err_errno(const char *fmt, ...)
{
	int saved = errno;
	char buf[64];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(errmsg, sizeof(errmsg), fmt, ap);
	va_end(ap);
	if (n >= 0 && (size_t)n < sizeof(errmsg)) {
		const char *s = strerror_r(saved, buf, sizeof(buf));

		snprintf(errmsg + n, sizeof(errmsg) - (size_t)n, ": %s", s);
	}
	errno = saved;
}

/* pa_version -- the library's version as "major.minor.patch" */
PA_EXPORT const char *
pa_version(void)
{
	return "0.1.0";
}
