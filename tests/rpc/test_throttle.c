/* SPDX-License-Identifier: MIT */
/*
 * The channel's adaptive throttle (framework/rpc/throttle.c) on a clock of
 * the test's: verdicts are fed, and the refusal probability that results
 * is checked against the formula at its edges, then a channel against a
 * server that refuses everything shows calls refused by the client at
 * once, and none once the window has passed with the server admitting.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "framework/rpc/throttle.h"

#define MS 1000000ll
#define T0 (1000 * MS)

static uint32_t
p_of(asynqi_throttle *t)
{
	return (uint32_t)atomic_load(&t->p);
}

/* `req` verdicts of which `acc` admitted, one call each, at now. */
static void
feed(asynqi_throttle *t, int64_t now, uint64_t req, uint64_t acc)
{
	for (uint64_t i = 0; i < req; i++)
		asynqi_throttle_note(t, now, 1, i < acc);
}

/* A server that admits all it gets is never throttled, at any rate. */
static void
test_never_without_refusals(void **state)
{
	(void)state;
	asynqi_throttle t;
	asynqi_throttle_init(&t, 2000, T0);
	for (int64_t i = 0; i < 50; i++) {
		asynqi_throttle_note(&t, T0 + i * 20 * MS, 10000, true);
		assert_int_equal(p_of(&t), 0);
	}
}

/* With ratio 2: req - 2 acc = -1 and 0 refuse nothing, +1 refuses
 * 1 / (req + 1). */
static void
test_ratio_edges(void **state)
{
	(void)state;
	static const struct {
		uint64_t req, acc, p;
	} cases[] = {
		{ 99, 50, 0 },
		{ 100, 50, 0 },
		{ 101, 50, 1 * ASYNQI_THROTTLE_ONE / 102 },
		{ 500, 100, 300 * ASYNQI_THROTTLE_ONE / 501 },
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		asynqi_throttle t;
		asynqi_throttle_init(&t, 2000, T0);
		feed(&t, T0, cases[i].req, cases[i].acc);
		assert_int_equal(p_of(&t), cases[i].p);
	}
	/* Ratio 1.5: 150 verdicts, 100 admitted, is the edge. */
	asynqi_throttle t;
	asynqi_throttle_init(&t, 1500, T0);
	feed(&t, T0, 150, 100);
	assert_int_equal(p_of(&t), 0);
	feed(&t, T0, 1, 0);
	assert_int_equal(p_of(&t), 1 * ASYNQI_THROTTLE_ONE / 152);
}

/* Fewer than MIN_CALLS verdicts throttle nothing, whatever they say;
 * MIN_CALLS and more all refused are throttled at MAX_P. */
static void
test_min_calls_and_max_p(void **state)
{
	(void)state;
	for (uint64_t n = ASYNQI_THROTTLE_MIN_CALLS - 1;
	     n <= ASYNQI_THROTTLE_MIN_CALLS + 1; n++) {
		asynqi_throttle t;
		asynqi_throttle_init(&t, 2000, T0);
		feed(&t, T0, n, 0);
		uint64_t want = n < ASYNQI_THROTTLE_MIN_CALLS ? 0
		    : n * ASYNQI_THROTTLE_ONE / (n + 1) > ASYNQI_THROTTLE_MAX_P
		    ? ASYNQI_THROTTLE_MAX_P
		    : n * ASYNQI_THROTTLE_ONE / (n + 1);
		assert_int_equal(p_of(&t), want);
	}
	asynqi_throttle t;
	asynqi_throttle_init(&t, 2000, T0);
	feed(&t, T0, 100000, 0);
	assert_int_equal(p_of(&t), ASYNQI_THROTTLE_MAX_P);
}

/* Calls refused here count as verdicts; so do the ones the window
 * forgets: after a second without verdicts nothing is throttled. */
static void
test_local_refusals_and_window(void **state)
{
	(void)state;
	asynqi_throttle t;
	asynqi_throttle_init(&t, 2000, T0);
	feed(&t, T0, 60, 30); /* req - 2 acc = 0 */
	assert_int_equal(p_of(&t), 0);
	/* Ten refused here: 70 verdicts, 30 admitted. */
	for (int i = 0; i < 10; i++)
		atomic_fetch_add(&t.local, 1);
	asynqi_throttle_update(&t, T0 + 1);
	assert_int_equal(p_of(&t), 10 * ASYNQI_THROTTLE_ONE / 71);
	/* Still inside the window 0.9 s later, gone at 1 s. */
	asynqi_throttle_update(&t, T0 + 900 * MS);
	assert_int_equal(p_of(&t), 10 * ASYNQI_THROTTLE_ONE / 71);
	assert_true(atomic_load(&t.until) == T0 + 1000 * MS);
	asynqi_throttle_update(&t, T0 + 1000 * MS);
	assert_int_equal(p_of(&t), 0);
}

/* The throttle ends soon after the overload does: a client offering 5x
 * to a server admitting a fifth, then the server admitting everything it
 * gets; each 10 ms the client draws from p as a channel would. Throttled
 * at about 1 - 2/5 while overloaded, it is at 0 within 1 s after. */
static void
test_overload_then_recovery(void **state)
{
	(void)state;
	asynqi_throttle t;
	asynqi_throttle_init(&t, 2000, T0);
	uint64_t x = 88172645463325252ull;
	int64_t now = T0;
	uint32_t during = 0;
	int64_t clear_at = 0;
	for (int step = 0; step < 1000; step++, now += 10 * MS) {
		bool overload = step < 300;
		if (now >= atomic_load(&t.until))
			asynqi_throttle_update(&t, now);
		uint64_t sent = 0;
		for (int c = 0; c < 100; c++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			if (p_of(&t) != 0 &&
			    asynqi_throttle_refuse(&t, (uint32_t)(x >> 32)))
				continue;
			sent++;
		}
		/* Overloaded, the server admits 20 calls per 10 ms. */
		uint64_t adm = overload ? (sent < 20 ? sent : 20) : sent;
		asynqi_throttle_note(&t, now, adm, true);
		if (sent > adm)
			asynqi_throttle_note(&t, now, sent - adm, false);
		if (step == 299)
			during = p_of(&t);
		if (!overload && clear_at == 0 && p_of(&t) == 0)
			clear_at = now;
	}
	/* 1 - 2/5 = 0.6 of 65536, within a few percent. */
	assert_in_range(during, 37000, 41700);
	assert_true(clear_at != 0);
	assert_true(clear_at - (T0 + 300 * 10 * MS) <= 1000 * MS);
	printf("throttled %.3f while overloaded; 0 after %lld ms\n",
	    during / 65536.0, (long long)((clear_at - (T0 + 3000 * MS)) / MS));
}

/* Each finished bucket since the last refusal in which calls were
 * admitted halves p; a bucket with a refusal stops it, an empty one says
 * nothing. */
static void
test_halved_after_refusals_stop(void **state)
{
	(void)state;
	asynqi_throttle t;
	asynqi_throttle_init(&t, 2000, T0);
	feed(&t, T0, 100, 0);
	assert_int_equal(p_of(&t), ASYNQI_THROTTLE_MAX_P);
	/* The last finished bucket refused: the formula alone. */
	feed(&t, T0 + 100 * MS, 10, 10);
	assert_int_equal(p_of(&t), 90 * ASYNQI_THROTTLE_ONE / 111);
	/* One clean bucket since: halved. */
	feed(&t, T0 + 200 * MS, 10, 10);
	assert_int_equal(p_of(&t), 80 * ASYNQI_THROTTLE_ONE / 121 / 2);
	/* Two (the refusal is in the bucket not yet finished). */
	feed(&t, T0 + 300 * MS, 1, 0);
	assert_int_equal(p_of(&t), 81 * ASYNQI_THROTTLE_ONE / 122 / 4);
	/* That bucket finished with its refusal: the formula alone. An
	 * empty bucket between changes nothing. */
	feed(&t, T0 + 500 * MS, 1, 1);
	assert_int_equal(p_of(&t), 80 * ASYNQI_THROTTLE_ONE / 123);
}

/* Off (ratio 0) never throttles. */
static void
test_off(void **state)
{
	(void)state;
	asynqi_throttle t;
	asynqi_throttle_init(&t, 0, T0);
	feed(&t, T0, 100000, 0);
	asynqi_throttle_update(&t, T0 + 1);
	assert_int_equal(p_of(&t), 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_never_without_refusals),
		cmocka_unit_test(test_ratio_edges),
		cmocka_unit_test(test_min_calls_and_max_p),
		cmocka_unit_test(test_local_refusals_and_window),
		cmocka_unit_test(test_overload_then_recovery),
		cmocka_unit_test(test_halved_after_refusals_stop),
		cmocka_unit_test(test_off),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
