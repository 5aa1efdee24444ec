/* SPDX-License-Identifier: MIT */
/*
 * The stats' histograms (framework/rpc/mstats.c): each observation lands in
 * the first bucket whose bound it does not exceed, or the overflow bucket,
 * whatever came before it. asynqi_hist_add tries the previous observation's
 * bucket first; this checks it against a plain scan over the bounds for
 * values on, just under and just over every bound, zero, the largest value,
 * and 100,000 values in a fixed random order, with `times` and the sum.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "framework/rpc/mstats.h"

static size_t
bucket_of(const uint64_t *bounds, size_t n, uint64_t v)
{
	size_t i = 0;
	while (i < n && v > bounds[i])
		i++;
	return i;
}

static uint64_t rng = 0x9e3779b97f4a7c15u;

static uint64_t
next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void
check(const uint64_t *bounds, size_t n)
{
	static asynqi_hist h;
	memset(&h, 0, sizeof(h));
	uint64_t want[ASYNQ_RPC_HIST_MAX + 1] = { 0 };
	uint64_t sum = 0;
	uint64_t vals[4 * ASYNQ_RPC_HIST_MAX + 4];
	size_t nv = 0;
	vals[nv++] = 0;
	vals[nv++] = UINT64_MAX / 4;
	for (size_t i = 0; i < n; i++) {
		vals[nv++] = bounds[i];
		vals[nv++] = bounds[i] - 1;
		vals[nv++] = bounds[i] + 1;
	}
	/* Every edge after every other, both ways. */
	for (size_t a = 0; a < nv; a++)
		for (size_t b = 0; b < nv; b++) {
			uint64_t t = 1 + (a + b) % 3;
			asynqi_hist_add(&h, bounds, n, vals[a], 1);
			asynqi_hist_add(&h, bounds, n, vals[b], t);
			want[bucket_of(bounds, n, vals[a])] += 1;
			want[bucket_of(bounds, n, vals[b])] += t;
			sum += vals[a] + vals[b] * t;
		}
	/* Random values, mostly near the bounds' range. */
	for (int k = 0; k < 100000; k++) {
		uint64_t r = next();
		uint64_t v = r % 3 == 0 ? vals[(r >> 8) % nv]
		                        : (r >> 20) % (bounds[n - 1] * 2);
		asynqi_hist_add(&h, bounds, n, v, 1);
		want[bucket_of(bounds, n, v)]++;
		sum += v;
	}
	for (size_t i = 0; i <= n; i++)
		assert_int_equal(atomic_load(&h.counts[i]), want[i]);
	assert_int_equal(atomic_load(&h.sum), sum);
}

static void
test_hist_latency_buckets(void **state)
{
	(void)state;
	check(asynqi_latency_bounds, asynqi_n_latency_bounds);
}

static void
test_hist_cpr_buckets(void **state)
{
	(void)state;
	check(asynqi_cpr_bounds, asynqi_n_cpr_bounds);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_hist_latency_buckets),
		cmocka_unit_test(test_hist_cpr_buckets),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
