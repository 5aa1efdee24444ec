/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the tools tests, on top of tests/core/testutil.h: a
 * teardown that drops the thread's tool tables before the scheduler, a busy
 * loop that spends wall time running, and a task body that awaits one item
 * of the default debug backend.
 */
#ifndef ASYNQ_TESTS_TOOLS_TESTUTIL_H
#define ASYNQ_TESTS_TOOLS_TESTUTIL_H

#include "tests/core/testutil.h"
#include "asynq/testing.h"
#include "asynq/tools.h"

#define MS 1000000ull

static inline int
tt_teardown(void **state)
{
	return tu_teardown(state);
}

#define TT_TEST(fn) cmocka_unit_test_setup_teardown(fn, tu_setup, tt_teardown)

/* tt_busy spins for ns nanoseconds of the monotonic clock. */
static inline void
tt_busy(uint64_t ns)
{
	uint64_t t0 = asynq_now_ns();
	while (asynq_now_ns() - t0 < ns)
		;
}

/* tt_item awaits a debug item resolving to v and returns its value (or -1
 * on failure) . Task only. */
static inline int64_t
tt_item(asynq_task *t, int64_t v)
{
	asynq_future *f = asynq_debug_item(asynq_debug_default(), v);
	asynq_status st = asynq_await(t, f);
	int64_t r = st == ASYNQ_OK ? asynq_future_i64(f) : -1;
	asynq_future_rele(f);
	return r;
}

#endif /* ASYNQ_TESTS_TOOLS_TESTUTIL_H */
