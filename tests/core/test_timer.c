/* SPDX-License-Identifier: MIT */
/*
 * Timers (asynq_sleep): a sleeping task lets the others run, timers fire in
 * due order (also when they expired together), the scheduler sleeps instead of
 * spinning while it waits for one, and teardown fails the timers still pending.
 */
#include <time.h>

#include "testutil.h"

#define MS 1000000ull

static uint64_t
thread_cpu_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static asynq_status
sleeper_task(asynq_task *t, void *arg)
{
	uint64_t ms = (uint64_t)(uintptr_t)arg;
	asynq_future *f = asynq_sleep(ms * MS);
	asynq_status st = asynq_await(t, f);
	asynq_future_rele(f);
	TCHECK_STATUS(st, ASYNQ_OK);
	tu_log("%llu ", (unsigned long long)ms);
	return asynq_return_i64(t, (int64_t)ms);
}

static void
test_timer_sleep_waits_without_spinning(void **state)
{
	(void)state;
	uint64_t wall0 = asynq_now_ns(), cpu0 = thread_cpu_ns();
	asynq_future *f = asynq_spawn(sleeper_task, (void *)(uintptr_t)60);
	assert_status(asynq_wait(f), ASYNQ_OK);
	uint64_t wall = asynq_now_ns() - wall0, cpu = thread_cpu_ns() - cpu0;
	ASSERT_TASK_CHECKS(1);
	assert_int_equal(asynq_future_i64(f), 60);
	assert_true(wall >= 60 * MS);
	/* Asleep, not spinning: far less CPU than wall time. */
	assert_true(cpu < wall / 4);
	asynq_sched_stats st;
	asynq_sched_stats_get(&st);
	assert_true(st.sleeps >= 1);
	asynq_future_rele(f);
}

/* Sleepers below sleep until due_base + their label in ms: absolute due
 * times, so a slow spawn (a loaded machine, a sanitizer) cannot reorder
 * them. */
static uint64_t due_base;

static asynq_status
due_sleeper_task(asynq_task *t, void *arg)
{
	uint64_t ms = (uint64_t)(uintptr_t)arg;
	uint64_t until = due_base + ms * MS, now = asynq_now_ns();
	asynq_future *f = asynq_sleep(until > now ? until - now : 0);
	asynq_status st = asynq_await(t, f);
	asynq_future_rele(f);
	TCHECK_STATUS(st, ASYNQ_OK);
	tu_log("%llu ", (unsigned long long)ms);
	return asynq_return_i64(t, (int64_t)ms);
}

static void
test_timer_fire_in_due_order(void **state)
{
	(void)state;
	due_base = asynq_now_ns() + 50 * MS;
	asynq_future *fs[3] = {
		asynq_spawn(due_sleeper_task, (void *)(uintptr_t)30),
		asynq_spawn(due_sleeper_task, (void *)(uintptr_t)10),
		asynq_spawn(due_sleeper_task, (void *)(uintptr_t)20),
	};
	assert_status(asynq_wait_all(fs, 3), ASYNQ_OK);
	ASSERT_TASK_CHECKS(3);
	assert_string_equal(tu()->log, "10 20 30 ");
	asynq_future_rele_n(fs, 3);
}

static asynq_status
lookup_task(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_status st = asynq_debug_sync(t);
	TCHECK_STATUS(st, ASYNQ_OK);
	tu_log("flushed ");
	return st;
}

/* Until when the spinner spins and the sleepers below sleep: absolute
 * times, so how long spawning takes does not change their order. */
static uint64_t together_base;

/* Sleeps until together_base + arg * 10 ms, then logs arg. */
static asynq_status
sleep_until_task(asynq_task *t, void *arg)
{
	uint64_t k = (uint64_t)(uintptr_t)arg;
	uint64_t until = together_base + k * 10 * MS, now = asynq_now_ns();
	asynq_future *f = asynq_sleep(until > now ? until - now : 0);
	asynq_status st = asynq_await(t, f);
	asynq_future_rele(f);
	TCHECK_STATUS(st, ASYNQ_OK);
	tu_log("%llu ", (unsigned long long)k);
	return asynq_return_i64(t, (int64_t)k);
}

/* Spins, without suspending, until every sleeper's time has passed. */
static asynq_status
spin_until_task(asynq_task *t, void *arg)
{
	(void)arg;
	while (asynq_now_ns() < together_base + 50 * MS)
		;
	tu_log("spun ");
	return asynq_return_i64(t, 0);
}

/* Timers that expired together, because the thread was busy past all of
 * them, resume their tasks in due order too. */
static void
test_timer_expired_together_resume_in_due_order(void **state)
{
	(void)state;
	together_base = asynq_now_ns() + 100 * MS;
	asynq_future *fs[4] = {
		asynq_spawn(sleep_until_task, (void *)(uintptr_t)3),
		asynq_spawn(sleep_until_task, (void *)(uintptr_t)1),
		asynq_spawn(sleep_until_task, (void *)(uintptr_t)2),
		asynq_spawn(spin_until_task, NULL),
	};
	assert_status(asynq_wait_all(fs, 4), ASYNQ_OK);
	ASSERT_TASK_CHECKS(3);
	assert_string_equal(tu()->log, "spun 1 2 3 ");
	asynq_future_rele_n(fs, 4);
}

static void
test_timer_other_tasks_run_while_one_sleeps(void **state)
{
	(void)state;
	/* 200 ms: long enough that the flush comes first even on a loaded
	 * machine under a sanitizer. */
	asynq_future *fs[2] = {
		asynq_spawn(sleeper_task, (void *)(uintptr_t)200),
		asynq_spawn(lookup_task, NULL),
	};
	assert_status(asynq_wait_all(fs, 2), ASYNQ_OK);
	ASSERT_TASK_CHECKS(2);
	/* The batch flushed before the timer fired. */
	assert_string_equal(tu()->log, "flushed 200 ");
	assert_int_equal(asynq_debug_default()->flushes, 1);
	asynq_future_rele_n(fs, 2);
}

static void
test_timer_released_before_it_fires(void **state)
{
	(void)state;
	asynq_future *early = asynq_sleep(1 * MS);
	asynq_future *late = asynq_sleep(5 * MS);
	asynq_future_rele(early); /* the scheduler still holds it */
	assert_status(asynq_wait(late), ASYNQ_OK);
	asynq_future_rele(late);
}

static void
test_timer_pending_at_fini_is_cancelled(void **state)
{
	(void)state;
	asynq_future *f = asynq_sleep(3600ull * 1000 * MS);
	assert_false(asynq_future_done(f));
	asynq_thread_fini();
	assert_true(asynq_future_done(f));
	assert_status(asynq_future_status(f), ASYNQ_CANCELLED);
	asynq_future_rele(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_timer_sleep_waits_without_spinning),
		TU_TEST(test_timer_fire_in_due_order),
		TU_TEST(test_timer_expired_together_resume_in_due_order),
		TU_TEST(test_timer_other_tasks_run_while_one_sleeps),
		TU_TEST(test_timer_released_before_it_fires),
		TU_TEST(test_timer_pending_at_fini_is_cancelled),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
