/* SPDX-License-Identifier: MIT */
/*
 * persist.c -- cache flushes, fences and non-temporal copies
 *
 * The flush instruction is chosen once by CPUID, best first: clwb (writes
 * the line back and may keep it cached), clflushopt (weakly ordered,
 * evicts), clflush (strongly ordered, slowest).  Both weakly ordered ones
 * need an sfence before the data counts as durable ("drain").
 */
#include <stdint.h>
#include <string.h>

#include "internal.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <emmintrin.h>
#include <immintrin.h>
#endif

enum flush_kind { FLUSH_NONE, FLUSH_CLFLUSH, FLUSH_CLFLUSHOPT, FLUSH_CLWB };

static enum flush_kind flush_kind;

/* persist_init -- pick the flush instruction from CPUID */
__attribute__((constructor)) static void
persist_init(void)
{
#if defined(__x86_64__)
	unsigned a, b, c, d;

	if (__get_cpuid(1, &a, &b, &c, &d) && (d & (1u << 19)))
		flush_kind = FLUSH_CLFLUSH;
	if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) {
		if (b & (1u << 23))
			flush_kind = FLUSH_CLFLUSHOPT;
		if (b & (1u << 24))
			flush_kind = FLUSH_CLWB;
	}
#endif
}

/* pa_flush_method -- "clwb", "clflushopt", "clflush" or "none" */
PA_EXPORT const char *
pa_flush_method(void)
{
	static const char *const names[] = {"none", "clflush", "clflushopt",
					    "clwb"};

	return names[flush_kind];
}

#if defined(__x86_64__)
__attribute__((target("clwb"))) static void
flush_clwb(const char *p, const char *end)
{
	for (; p < end; p += PA_CACHELINE)
		_mm_clwb((void *)(uintptr_t)p);
}

__attribute__((target("clflushopt"))) static void
flush_clflushopt(const char *p, const char *end)
{
	for (; p < end; p += PA_CACHELINE)
		_mm_clflushopt((void *)(uintptr_t)p);
}

static void
flush_clflush(const char *p, const char *end)
{
	for (; p < end; p += PA_CACHELINE)
		_mm_clflush(p);
}
#endif

/* pa_flush_lines -- write back the cache lines covering [addr, addr + len) */
void
pa_flush_lines(const void *addr, size_t len)
{
#if defined(__x86_64__)
	const char *p = (const char *)((uintptr_t)addr & ~(uintptr_t)63);
	const char *end = (const char *)addr + len;

	switch (flush_kind) {
	case FLUSH_CLWB:
		flush_clwb(p, end);
		break;
	case FLUSH_CLFLUSHOPT:
		flush_clflushopt(p, end);
		break;
	case FLUSH_CLFLUSH:
		flush_clflush(p, end);
		break;
	case FLUSH_NONE:
		break;
	}
#else
	(void)addr;
	(void)len;
	__sync_synchronize();
#endif
}

/* pa_fence -- order the flushes and non-temporal stores before it */
void
pa_fence(void)
{
#if defined(__x86_64__)
	_mm_sfence();
#else
	__sync_synchronize();
#endif
}

/*
 * pa_memcpy_nt -- copy with non-temporal stores where it pays
 *
 * Streaming stores bypass the cache, so nothing needs flushing afterwards
 * and the copy does not evict the reader's working set; they need 16-byte
 * aligned destinations, so the head and tail go through plain memcpy (and
 * are flushed by the caller's persist of the whole range).
 */
void
pa_memcpy_nt(void *dst, const void *src, size_t len)
{
#if defined(__x86_64__)
	char *d = dst;
	const char *s = src;
	size_t head = (16 - ((uintptr_t)d & 15)) & 15;

	if (len < 256) {
		memcpy(dst, src, len);
		return;
	}
	memcpy(d, s, head);
	d += head;
	s += head;
	len -= head;
	while (len >= 64) {
		__m128i a = _mm_loadu_si128((const __m128i *)s);
		__m128i b = _mm_loadu_si128((const __m128i *)(s + 16));
		__m128i c = _mm_loadu_si128((const __m128i *)(s + 32));
		__m128i e = _mm_loadu_si128((const __m128i *)(s + 48));

		_mm_stream_si128((__m128i *)d, a);
		_mm_stream_si128((__m128i *)(d + 16), b);
		_mm_stream_si128((__m128i *)(d + 32), c);
		_mm_stream_si128((__m128i *)(d + 48), e);
		d += 64;
		s += 64;
		len -= 64;
	}
	memcpy(d, s, len);
#else
	memcpy(dst, src, len);
#endif
}
