/* SPDX-License-Identifier: MIT */
/*
 * Flush policy of a backend: when every task is blocked (the default), as
 * soon as a batch reaches flush_at items, or after flush_delay_ns so that
 * work arriving meanwhile joins the batch.
 */
#include "testutil.h"

#define MS 1000000ull

static asynq_debug_backend dbg;
static asynq_debug_backend other;

static void
add_await(asynq_task *t, asynq_debug_backend *d, int64_t v)
{
	asynq_future *f = asynq_debug_item(d, v);
	asynq_status st = asynq_await(t, f);
	TCHECK_STATUS(st, ASYNQ_OK);
	TCHECK_INT(asynq_future_i64(f), v);
	asynq_future_rele(f);
}

static asynq_status
fill_task(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_future *fs[25];
	for (int i = 0; i < 25; i++) {
		fs[i] = asynq_debug_item(&dbg, i);
		if (i == 9)
			TCHECK_INT(dbg.flushes, 0); /* full, not yet sent */
		if (i == 10) {
			/* The next item sends the full batch. */
			TCHECK_INT(dbg.flushes, 1);
			TCHECK_INT(dbg.last_size, 10);
		}
	}
	TCHECK_INT(dbg.flushes, 2);
	asynq_status st = asynq_await_all(t, fs, 25);
	TCHECK_STATUS(st, ASYNQ_OK);
	for (int i = 0; i < 25; i++)
		TCHECK_INT(asynq_future_i64(fs[i]), i);
	asynq_future_rele_n(fs, 25);
	return st;
}

static void
test_flush_policy_flush_at_sends_full_batches(void **state)
{
	(void)state;
	asynq_debug_backend_init(&dbg, "capped", false);
	dbg.base.flush_at = 10;
	asynq_future *f = asynq_spawn(fill_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(30);
	assert_int_equal(dbg.flushes, 3);
	assert_int_equal(dbg.items_flushed, 25);
	assert_int_equal(dbg.last_size, 5);
	asynq_future_rele(f);
	asynq_debug_backend_fini(&dbg);
}

static asynq_status
early_task(asynq_task *t, void *arg)
{
	(void)arg;
	add_await(t, &dbg, 1);
	return ASYNQ_OK;
}

/* Arrives 10 ms later, like the next request of a server. */
static asynq_status
late_task(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_future *f = asynq_sleep(10 * MS);
	asynq_status st = asynq_await(t, f);
	asynq_future_rele(f);
	TCHECK_STATUS(st, ASYNQ_OK);
	add_await(t, &dbg, 2);
	return ASYNQ_OK;
}

static size_t
run_early_late(uint64_t delay_ns, uint64_t *elapsed)
{
	asynq_debug_backend_init(&dbg, "delayed", false);
	dbg.base.flush_delay_ns = delay_ns;
	uint64_t t0 = asynq_now_ns();
	asynq_future *fs[2] = { asynq_spawn(early_task, NULL),
		asynq_spawn(late_task, NULL) };
	assert_status(asynq_wait_all(fs, 2), ASYNQ_OK);
	*elapsed = asynq_now_ns() - t0;
	asynq_future_rele_n(fs, 2);
	size_t flushes = dbg.flushes;
	asynq_debug_backend_fini(&dbg);
	return flushes;
}

static void
test_flush_policy_delay_lets_later_work_join(void **state)
{
	(void)state;
	uint64_t elapsed;
	/* Flushing when idle: the first item goes alone. */
	assert_int_equal(run_early_late(0, &elapsed), 2);
	/* Waiting 60 ms after the first item: both go in one flush. */
	assert_int_equal(run_early_late(60 * MS, &elapsed), 1);
	assert_true(elapsed >= 60 * MS);
	ASSERT_TASK_CHECKS(10);
}

static asynq_status
two_backends_task(asynq_task *t, void *arg)
{
	uint64_t *undelayed_done = arg;
	asynq_future *slow = asynq_debug_item(&dbg, 1);
	asynq_future *fast = asynq_debug_item(&other, 2);
	asynq_status st = asynq_await(t, fast);
	*undelayed_done = asynq_now_ns();
	TCHECK_STATUS(st, ASYNQ_OK);
	TCHECK(!asynq_future_done(slow)); /* still waiting its delay */
	st = asynq_await(t, slow);
	TCHECK_STATUS(st, ASYNQ_OK);
	asynq_future_rele(slow);
	asynq_future_rele(fast);
	return st;
}

static void
test_flush_policy_delay_does_not_hold_other_batches(void **state)
{
	(void)state;
	asynq_debug_backend_init(&dbg, "delayed", false);
	asynq_debug_backend_init(&other, "prompt", false);
	dbg.base.flush_delay_ns = 50 * MS;
	uint64_t fast_done = 0, t0 = asynq_now_ns();
	asynq_future *f = asynq_spawn(two_backends_task, &fast_done);
	assert_status(asynq_wait(f), ASYNQ_OK);
	uint64_t total = asynq_now_ns() - t0;
	ASSERT_TASK_CHECKS(3);
	/* The prompt batch was answered while the delayed one still waited
	 * (checked in the task); the delayed one waited its delay. */
	assert_true(fast_done > t0);
	assert_true(total >= 50 * MS);
	assert_int_equal(dbg.flushes, 1);
	assert_int_equal(other.flushes, 1);
	asynq_future_rele(f);
	asynq_debug_backend_fini(&dbg);
	asynq_debug_backend_fini(&other);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_flush_policy_flush_at_sends_full_batches),
		TU_TEST(test_flush_policy_delay_lets_later_work_join),
		TU_TEST(test_flush_policy_delay_does_not_hold_other_batches),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
