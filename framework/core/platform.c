/* SPDX-License-Identifier: MIT */
/*
 * Reporting from places where stdio cannot be trusted: a failed assertion
 * and a signal handler on an alternate stack. Everything here is
 * async-signal-safe: write(2) and hand-made decimal, no stdio, no locks, no
 * allocation. And the per-thread random bits the layers above share.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

void
asynqi_sig_write(const char *s)
{
	size_t n = strlen(s);
	while (n > 0) {
		ssize_t r = write(STDERR_FILENO, s, n);
		if (r <= 0)
			return;
		s += r;
		n -= (size_t)r;
	}
}

void
asynqi_sig_write_int(long long v)
{
	char buf[24];
	char *p = buf + sizeof(buf);
	unsigned long long u =
	    v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
	*--p = '\0';
	do {
		*--p = (char)('0' + u % 10);
		u /= 10;
	} while (u != 0);
	if (v < 0)
		*--p = '-';
	asynqi_sig_write(p);
}

void
asynqi_assert_fail(const char *expr, const char *file, int line)
{
	asynqi_sig_write("asynq: assertion failed: ");
	asynqi_sig_write(expr);
	asynqi_sig_write(" at ");
	asynqi_sig_write(file);
	asynqi_sig_write(":");
	asynqi_sig_write_int(line);
	asynqi_sig_write("\n");
	abort();
}

uint64_t
asynqi_thread_rand(void)
{
	static _Thread_local uint64_t x;
	if (x == 0) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		x = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) |
		    1;
	}
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return x;
}
