/* SPDX-License-Identifier: MIT */
/*
 * crc32c.c -- CRC32C (Castagnoli), hardware accelerated where the CPU can
 *
 * Why CRC32C and not xxHash: with SSE4.2 three interleaved crc32q streams
 * run at about 20 GB/s per core here, faster than the page cache (8.5 GB/s)
 * or memcpy into populated memory (12.7 GB/s) feed it, so it adds no pass of
 * its own; and CRCs combine (crc(A||B) from crc(A), crc(B), len(B)), which
 * lets the streaming threads checksum the chunks of one tensor in parallel.
 * `make bench` prints the measured rate next to memcpy.
 *
 * Conventions are zlib's: start with 0, feed the previous result back in.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "internal.h"

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define PA_HAVE_SSE42 1
#endif

#define POLY 0x82f63b78u /* reflected Castagnoli polynomial */

static uint32_t table[8][256];
static uint32_t x2n_table[32];
static int use_hw;

/* multmodp -- a * b modulo the polynomial (reflected bit order) */
static uint32_t
multmodp(uint32_t a, uint32_t b)
{
	uint32_t m = 1u << 31, p = 0;

	for (;;) {
		if (a & m) {
			p ^= b;
			if ((a & (m - 1)) == 0)
				break;
		}
		m >>= 1;
		b = (b & 1) ? (b >> 1) ^ POLY : b >> 1;
	}
	return p;
}

/* x2nmodp -- x^(n * 2^k) modulo the polynomial */
static uint32_t
x2nmodp(uint64_t n, unsigned k)
{
	uint32_t p = 1u << 31; /* x^0 */

	while (n) {
		if (n & 1)
			p = multmodp(x2n_table[k & 31], p);
		n >>= 1;
		k++;
	}
	return p;
}

/* crc_init -- build the tables; runs once at library load */
__attribute__((constructor)) static void
crc_init(void)
{
	uint32_t p;

	for (unsigned n = 0; n < 256; n++) {
		uint32_t c = n;

		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ POLY : c >> 1;
		table[0][n] = c;
	}
	for (unsigned n = 0; n < 256; n++)
		for (int k = 1; k < 8; k++)
			table[k][n] = (table[k - 1][n] >> 8) ^
				      table[0][table[k - 1][n] & 0xff];
	p = 1u << 30; /* x^1 */
	x2n_table[0] = p;
	for (int n = 1; n < 32; n++)
		x2n_table[n] = p = multmodp(p, p);
#ifdef PA_HAVE_SSE42
	__builtin_cpu_init();
	use_hw = __builtin_cpu_supports("sse4.2");
#endif
}

/* load64 -- an unaligned little-endian 64-bit load */
static inline uint64_t
load64(const uint8_t *p)
{
	uint64_t v;

	memcpy(&v, p, sizeof(v));
	return v;
}

/* crc_sw -- slicing-by-8 on the raw register */
static uint32_t
crc_sw(uint32_t r, const uint8_t *p, size_t n)
{
	while (n && ((uintptr_t)p & 7)) {
		r = (r >> 8) ^ table[0][(r ^ *p++) & 0xff];
		n--;
	}
	while (n >= 8) {
		uint64_t w = load64(p) ^ r;

		r = table[7][w & 0xff] ^ table[6][(w >> 8) & 0xff] ^
		    table[5][(w >> 16) & 0xff] ^ table[4][(w >> 24) & 0xff] ^
		    table[3][(w >> 32) & 0xff] ^ table[2][(w >> 40) & 0xff] ^
		    table[1][(w >> 48) & 0xff] ^ table[0][w >> 56];
		p += 8;
		n -= 8;
	}
	while (n--)
		r = (r >> 8) ^ table[0][(r ^ *p++) & 0xff];
	return r;
}

#ifdef PA_HAVE_SSE42
#define LONG_BLOCK 8192

/*
 * crc_hw -- crc32 instructions on three independent streams
 *
 * One crc32q has a latency of 3 cycles and a throughput of 1, so a single
 * dependency chain wastes two thirds of the unit.  Each round checksums
 * three adjacent blocks at once and joins them by shifting the first two
 * registers past the bytes that follow them (a multiplication by
 * x^(8 * len) mod P).
 */
__attribute__((target("sse4.2"))) static uint32_t
crc_hw(uint32_t r, const uint8_t *p, size_t n)
{
	static uint32_t k1, k2; /* x^(8 * LONG), x^(16 * LONG) */

	if (!k1) {
		k2 = x2nmodp(2 * LONG_BLOCK, 3);
		__atomic_store_n(&k1, x2nmodp(LONG_BLOCK, 3), __ATOMIC_RELEASE);
	}
	while (n && ((uintptr_t)p & 7)) {
		r = _mm_crc32_u8(r, *p++);
		n--;
	}
	while (n >= 3 * LONG_BLOCK) {
		uint64_t a = r, b = 0, c = 0;
		const uint8_t *end = p + LONG_BLOCK;

		do {
			a = _mm_crc32_u64(a, load64(p));
			b = _mm_crc32_u64(b, load64(p + LONG_BLOCK));
			c = _mm_crc32_u64(c, load64(p + 2 * LONG_BLOCK));
			p += 8;
		} while (p < end);
		r = multmodp(k2, (uint32_t)a) ^ multmodp(k1, (uint32_t)b) ^
		    (uint32_t)c;
		p += 2 * LONG_BLOCK;
		n -= 3 * LONG_BLOCK;
	}
	while (n >= 8) {
		r = (uint32_t)_mm_crc32_u64(r, load64(p));
		p += 8;
		n -= 8;
	}
	while (n--)
		r = _mm_crc32_u8(r, *p++);
	return r;
}
#endif

/* pa_crc32c -- extend crc (start with 0) over len bytes of buf */
PA_EXPORT uint32_t
pa_crc32c(uint32_t crc, const void *buf, size_t len)
{
	uint32_t r = ~crc;

#ifdef PA_HAVE_SSE42
	if (use_hw)
		return ~crc_hw(r, buf, len);
#endif
	return ~crc_sw(r, buf, len);
}

/* pa_crc32c_combine -- CRC of A||B from crc(A), crc(B) and len(B) */
PA_EXPORT uint32_t
pa_crc32c_combine(uint32_t crc_a, uint32_t crc_b, uint64_t len_b)
{
	return multmodp(x2nmodp(len_b, 3), crc_a) ^ crc_b;
}

/* pa_crc32c_impl -- "sse4.2" or "table" */
PA_EXPORT const char *
pa_crc32c_impl(void)
{
	return use_hw ? "sse4.2" : "table";
}

/* pa_crc32c_sw -- the table implementation, for tests of the hardware one */
PA_EXPORT uint32_t
pa_crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
	return ~crc_sw(~crc, buf, len);
}
