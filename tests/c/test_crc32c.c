/* SPDX-License-Identifier: MIT */
/* test_crc32c -- known values, hardware against table, combine */
#include "harness.h"

int
main(void)
{
	static unsigned char buf[200000 + 64];
	const char *check = "123456789";

	/* the CRC-32C check value */
	T_ASSERT(pa_crc32c(0, check, 9) == 0xe3069283u);
	T_ASSERT(pa_crc32c_sw(0, check, 9) == 0xe3069283u);
	T_ASSERT(pa_crc32c(0, "", 0) == 0);
	/* feeding in pieces gives the same */
	T_ASSERT(pa_crc32c(pa_crc32c(0, check, 4), check + 4, 5) ==
		 0xe3069283u);
	srand(7);
	for (size_t i = 0; i < sizeof(buf); i++)
		buf[i] = (unsigned char)rand();
	/* every length class and misalignment: fast path == table path */
	for (size_t off = 0; off < 9; off++) {
		size_t lens[] = {0, 1, 7, 8, 63, 4096, 24575, 24576, 24577,
				 3 * 8192 * 2 + 5, 200000};

		for (size_t k = 0; k < sizeof(lens) / sizeof(lens[0]); k++)
			T_ASSERT(pa_crc32c(0, buf + off, lens[k]) ==
				 pa_crc32c_sw(0, buf + off, lens[k]));
	}
	/* combine */
	for (size_t cut = 0; cut <= 200000; cut += 9973) {
		uint32_t a = pa_crc32c(0, buf, cut);
		uint32_t b = pa_crc32c(0, buf + cut, 200000 - cut);

		T_ASSERT(pa_crc32c_combine(a, b, 200000 - cut) ==
			 pa_crc32c(0, buf, 200000));
	}
	T_ASSERT(strcmp(pa_crc32c_impl(), "sse4.2") == 0 ||
		 strcmp(pa_crc32c_impl(), "table") == 0);
	return T_EXIT_PASS;
}
