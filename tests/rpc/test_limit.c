/* SPDX-License-Identifier: MIT */
/*
 * Admission control's limit on calls in flight (framework/rpc/limit.c),
 * driven on a clock of the test's: every interval some admissions (the
 * calls in flight each one saw) and some finished requests (their time in
 * the server) are fed, and the limit that results is checked.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "framework/rpc/limit.h"

#define MS 1000000ll
#define INTERVAL (100 * MS)
#define TARGET (10 * MS)
#define FLOOR 32
#define BURST 256

typedef struct sim {
	asynqi_limit l;
	int64_t now;
} sim;

static void
sim_init(sim *s, size_t burst)
{
	s->now = 1000 * MS;
	assert_true(asynqi_limit_init(&s->l, 2, FLOOR, burst, 4.0, TARGET,
	    INTERVAL, s->now));
}

/* One interval: admissions that saw load_lo..load_hi calls in flight,
 * then `reqs` requests of `calls` calls each finishing after lat_ns,
 * spread over the interval; the last one ends it. */
static void
sim_interval(sim *s, size_t load_lo, size_t load_hi, size_t reqs, size_t calls,
    int64_t lat_ns)
{
	(void)asynqi_limit_admit(&s->l, load_lo);
	(void)asynqi_limit_admit(&s->l, load_hi);
	for (size_t i = 0; i < reqs; i++) {
		int64_t t =
		    s->now + (int64_t)(i + 1) * INTERVAL / (int64_t)reqs;
		asynqi_limit_sample(&s->l, i % 2, calls, lat_ns, t);
	}
	s->now += INTERVAL;
}

/* Bursts of any size pass a server that is never slow. */
static void
test_no_limit_without_overload(void **state)
{
	(void)state;
	sim s;
	sim_init(&s, SIZE_MAX);
	for (int i = 0; i < 50; i++) {
		size_t burst = i % 5 == 0 ? 100000 : 10;
		sim_interval(&s, 0, burst, 100, 10, 1 * MS);
		assert_int_equal(asynqi_limit_get(&s.l), SIZE_MAX);
	}
	assert_true(asynqi_limit_admit(&s.l, 1000000));
	asynqi_limit_fini(&s.l);
}

/* Slow requests with calls standing in flight set a limit; loads of
 * limit-1 are admitted, limit and limit+1 refused. */
static void
test_limit_edges(void **state)
{
	(void)state;
	sim s;
	sim_init(&s, SIZE_MAX);
	sim_interval(&s, 0, 100, 100, 1, 1 * MS); /* baseline: 1 ms */
	/* 1,000 in flight all interval long, 40 ms each: 25,000 calls/s,
	 * 250 in one target. */
	sim_interval(&s, 1000, 1000, 250, 10, 40 * MS);
	size_t lim = asynqi_limit_get(&s.l);
	/* Cut by half (40 ms is 4x the target, the most one interval
	 * cuts), from the 1,000 in flight. */
	assert_int_equal(lim, 500);
	assert_true(asynqi_limit_admit(&s.l, lim - 1));
	assert_false(asynqi_limit_admit(&s.l, lim));
	assert_false(asynqi_limit_admit(&s.l, lim + 1));
	asynqi_limit_fini(&s.l);
}

/* Overload that never ends takes the limit down to the floor, no lower. */
static void
test_floor(void **state)
{
	(void)state;
	sim s;
	sim_init(&s, SIZE_MAX);
	sim_interval(&s, 0, 100, 100, 1, 1 * MS);
	for (int i = 0; i < 30; i++)
		sim_interval(&s, 5000, 5000, 10, 1, 500 * MS);
	assert_int_equal(asynqi_limit_get(&s.l), FLOOR);
	assert_true(asynqi_limit_admit(&s.l, FLOOR - 1));
	assert_false(asynqi_limit_admit(&s.l, FLOOR));
	asynqi_limit_fini(&s.l);
}

/* Once requests are fast again the limit grows by 1/16 + 1 per interval
 * and is lifted once it is over four times what is in flight. */
static void
test_grows_back_and_lifts(void **state)
{
	(void)state;
	sim s;
	sim_init(&s, SIZE_MAX);
	sim_interval(&s, 0, 100, 100, 1, 1 * MS);
	sim_interval(&s, 1000, 1000, 250, 10, 40 * MS);
	size_t lim = asynqi_limit_get(&s.l);
	assert_int_equal(lim, 500);
	/* Fast again, 400 in flight at 2 ms (200,000 calls/s): the limit
	 * binds (>= half of it) and grows. */
	sim_interval(&s, 400, 400, 2000, 10, 2 * MS);
	assert_int_equal(asynqi_limit_get(&s.l), lim + lim / 16 + 1);
	/* Quiet, 20 in flight: grown once more it is 566, over four times
	 * 20 and four times the floor (32): lifted. */
	sim_interval(&s, 0, 20, 1000, 1, 2 * MS);
	assert_int_equal(asynqi_limit_get(&s.l), SIZE_MAX);
	asynqi_limit_fini(&s.l);
}

/* A server that finished 100,000 calls/s is capped at what that rate
 * finishes in a target (1,000 calls), while nothing is slow; one that
 * never ran faster than 1,000 calls/s (10 calls, under the burst floor)
 * has no cap. */
static void
test_cap_from_best_rate(void **state)
{
	(void)state;
	sim s;
	sim_init(&s, BURST);
	sim_interval(&s, 0, 50, 1000, 10, 1 * MS); /* 100,000 calls/s */
	size_t cap = asynqi_limit_get(&s.l);
	assert_in_range(cap, 995, 1005);
	assert_true(asynqi_limit_admit(&s.l, cap - 1));
	assert_false(asynqi_limit_admit(&s.l, cap));
	assert_false(asynqi_limit_admit(&s.l, cap + 1));
	asynqi_limit_fini(&s.l);

	sim_init(&s, BURST);
	for (int i = 0; i < 10; i++)
		sim_interval(&s, 0, 5, 100, 1, 1 * MS); /* 1,000 calls/s */
	assert_int_equal(asynqi_limit_get(&s.l), SIZE_MAX);
	assert_true(asynqi_limit_admit(&s.l, 100000));
	asynqi_limit_fini(&s.l);
}

/* A model of a batching server offered far more than it can do: with L
 * calls in flight a request takes 1 ms + L / 40,000 s (its batches grow
 * with L; it finishes at most 40,000 calls/s), requests of 10 calls.
 * Started unlimited with 20,000 in flight, the limit settles within 30
 * intervals where the mean time is near the target and the rate near the
 * most the model can do. */
static void
test_converges_on_batching_model(void **state)
{
	(void)state;
	sim s;
	sim_init(&s, BURST);
	sim_interval(&s, 0, 10, 100, 10, 1 * MS); /* baseline */
	double rate = 0, lat_ms = 0;
	for (int i = 0; i < 60; i++) {
		size_t lim = asynqi_limit_get(&s.l);
		size_t inflight = lim < 20000 ? lim : 20000;
		double lat = 1e-3 + (double)inflight / 40000.0; /* s */
		rate = (double)inflight / lat;                  /* calls/s */
		size_t reqs = (size_t)(rate / 10 * 0.1);
		sim_interval(&s, inflight, inflight, reqs != 0 ? reqs : 1, 10,
		    (int64_t)(lat * 1e9));
		lat_ms = lat * 1e3;
		if (i >= 30) {
			assert_true(lat_ms <= 1.5 * TARGET / MS);
			assert_true(rate >= 0.85 * 40000);
		}
	}
	printf("model: %.1f ms, %.0f calls/s, limit %zu\n", lat_ms, rate,
	    asynqi_limit_get(&s.l));
	asynqi_limit_fini(&s.l);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_no_limit_without_overload),
		cmocka_unit_test(test_limit_edges),
		cmocka_unit_test(test_floor),
		cmocka_unit_test(test_grows_back_and_lifts),
		cmocka_unit_test(test_cap_from_best_rate),
		cmocka_unit_test(test_converges_on_batching_model),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
