/* SPDX-License-Identifier: MIT */
/*
 * The timer context (asynq_timer), ported from asynq's test_async_timer: a
 * timer counts the time its task and its children spend running (a busy
 * loop) and leaves out the time they spend suspended (asynq_sleep), within a
 * few milliseconds.
 */
#include "tools_testutil.h"

/* A timer reads wall time while its task is switched in, so a busy loop of
 * d ms reads at least d ms (less by 1 ms at most, for clock granularity);
 * on a loaded machine the OS may preempt the thread while the task is
 * switched in, which the timer rightly counts as running, and that grows
 * with the time timed: CI saw 432 ms for 400 on a busy 2-core machine. So
 * the upper bound allows 30 ms plus a tenth of the time wanted: 40 ms over
 * a 100 ms loop, 31 ms over 10 ms, still below what counting a suspension
 * would add in each case (100 ms and 50 ms sleeps). */
#define TOL (1 * MS)
#define PREEMPT_SLACK(want) (30 * MS + (want) / 10)

static void
assert_near(uint64_t got, uint64_t want, uint64_t tol)
{
	uint64_t slack = PREEMPT_SLACK(want);
	if (got + tol < want || got > want + tol + slack)
		fail_msg("%.2f ms, want %.2f ms (-%.2f, +%.2f)", got / 1e6,
		    want / 1e6, tol / 1e6, (tol + slack) / 1e6);
}

/* asynq's _slow_task: yields, then runs for 100 ms. */
static asynq_status
slow_task(asynq_task *t, void *arg)
{
	(void)arg;
	TCHECK_STATUS(asynq_sleep_for(t, 0), ASYNQ_OK);
	tt_busy(100 * MS);
	return asynq_return_i64(t, 0);
}

/* asynq's _timed_slow_task, with a real suspension: sleeps 100 ms (not
 * counted), then runs 100 ms (counted). */
static asynq_status
timed_slow_task(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_timer tm;
	asynq_timer_init(&tm);
	TCHECK_STATUS(asynq_timer_start(&tm), ASYNQ_OK);
	TCHECK_STATUS(asynq_sleep_for(t, 100 * MS), ASYNQ_OK);
	tt_busy(100 * MS);
	TCHECK_STATUS(asynq_timer_stop(&tm), ASYNQ_OK);
	return asynq_return_i64(t, (int64_t)tm.total_ns);
}

static asynq_status
check_async_timer(asynq_task *t, void *arg)
{
	uint64_t *outer = arg;
	asynq_timer tm;
	asynq_timer_init(&tm);
	TCHECK_STATUS(asynq_timer_start(&tm), ASYNQ_OK);
	asynq_future *fs[4] = {
		asynq_spawn(slow_task, NULL),
		asynq_spawn(timed_slow_task, NULL),
		asynq_spawn(slow_task, NULL),
		asynq_spawn(timed_slow_task, NULL),
	};
	TCHECK_STATUS(asynq_await_all(t, fs, 4), ASYNQ_OK);
	TCHECK_STATUS(asynq_timer_stop(&tm), ASYNQ_OK);
	asynq_future_rele(fs[0]);
	asynq_future_rele(fs[2]);
	outer[0] = tm.total_ns;
	outer[1] = (uint64_t)asynq_future_i64(fs[1]);
	outer[2] = (uint64_t)asynq_future_i64(fs[3]);
	asynq_future_rele(fs[1]);
	asynq_future_rele(fs[3]);
	return ASYNQ_OK;
}

static void
test_timing_timer_counts_running_not_suspended(void **state)
{
	(void)state;
	uint64_t r[3] = { 0 }, t0 = asynq_now_ns();
	asynq_future *f = asynq_spawn(check_async_timer, r);
	assert_status(asynq_wait(f), ASYNQ_OK);
	uint64_t wall = asynq_now_ns() - t0;
	asynq_future_rele(f);
	ASSERT_TASK_CHECKS(11);
	/* Each timed task: its 100 ms busy loop, not its 100 ms sleep. */
	assert_near(r[1], 100 * MS, TOL);
	assert_near(r[2], 100 * MS, TOL);
	/* The outer timer covers its children's running time: 4 x 100 ms. */
	assert_near(r[0], 400 * MS, 2 * TOL);
	assert_true(r[0] > r[1] + r[2]);
	assert_true(wall >= 400 * MS);
}

static asynq_status
sleepy(asynq_task *t, void *arg)
{
	asynq_timer *tm = arg;
	TCHECK_STATUS(asynq_timer_start(tm), ASYNQ_OK);
	TCHECK_STATUS(asynq_sleep_for(t, 50 * MS), ASYNQ_OK);
	tt_busy(10 * MS);
	TCHECK(asynq_timer_ns(tm) >= 10 * MS); /* counts the current stretch */
	TCHECK_STATUS(asynq_timer_stop(tm), ASYNQ_OK);
	return ASYNQ_OK;
}

static void
test_timing_sleep_is_not_counted(void **state)
{
	(void)state;
	asynq_timer tm;
	asynq_timer_init(&tm);
	uint64_t t0 = asynq_now_ns();
	asynq_future *f = asynq_spawn(sleepy, &tm);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	ASSERT_TASK_CHECKS(4);
	assert_true(asynq_now_ns() - t0 >= 60 * MS);
	assert_near(tm.total_ns, 10 * MS, TOL);
	assert_int_equal(asynq_timer_ns(&tm), tm.total_ns);
}

/* A sibling's running time is not counted by another task's timer. */
static asynq_status
busy_sibling(asynq_task *t, void *arg)
{
	(void)arg;
	tt_busy(60 * MS);
	return asynq_return_i64(t, 0);
}

static void
test_timing_siblings_not_counted(void **state)
{
	(void)state;
	asynq_timer tm;
	asynq_timer_init(&tm);
	/* sleepy sleeps 50 ms while busy_sibling runs 60 ms. */
	asynq_future *fs[2] = { asynq_spawn(sleepy, &tm),
		asynq_spawn(busy_sibling, NULL) };
	assert_status(asynq_wait_all(fs, 2), ASYNQ_OK);
	asynq_future_rele_n(fs, 2);
	assert_near(tm.total_ns, 10 * MS, TOL);
}

static void
test_timing_outside_tasks(void **state)
{
	(void)state;
	asynq_timer tm;
	asynq_timer_init(&tm);
	assert_status(asynq_timer_start(&tm), ASYNQ_OK);
	assert_status(asynq_timer_start(&tm), ASYNQ_FAILED_PRECONDITION);
	tt_busy(20 * MS);
	assert_status(asynq_timer_stop(&tm), ASYNQ_OK);
	assert_near(tm.total_ns, 20 * MS, TOL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TT_TEST(test_timing_timer_counts_running_not_suspended),
		TT_TEST(test_timing_sleep_is_not_counted),
		TT_TEST(test_timing_siblings_not_counted),
		TT_TEST(test_timing_outside_tasks),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
