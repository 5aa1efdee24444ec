/* SPDX-License-Identifier: MIT */
/*
 * The blocking pool (asynq_run_blocking): a call's status and message reach
 * its future; the scheduler runs its other tasks while a call blocks (the
 * call waits on a gate only another task of that scheduler opens, so a
 * stalled scheduler would never open it); the queue's bound refuses at
 * once, in words; a queued call that is cancelled never runs; and
 * asynq_thread_fini waits for calls in flight. The pool is configured with
 * one thread and two waiting calls for the whole program.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>
#include <unistd.h>

#include "asynq/runtime.h"
#include "tests/core/testutil.h"

/* A gate a blocking call waits on, at most 10 s. */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static bool gate_open;

static void
gate_set(bool open)
{
	pthread_mutex_lock(&gate_mu);
	gate_open = open;
	pthread_cond_broadcast(&gate_cv);
	pthread_mutex_unlock(&gate_mu);
}

static atomic_int runs, entered;

static asynq_status
gated(void *arg, const char **why)
{
	(void)arg;
	atomic_fetch_add(&entered, 1);
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 10;
	int rv = 0;
	pthread_mutex_lock(&gate_mu);
	while (!gate_open && rv == 0)
		rv = pthread_cond_timedwait(&gate_cv, &gate_mu, &dl);
	bool opened = gate_open;
	pthread_mutex_unlock(&gate_mu);
	atomic_fetch_add(&runs, 1);
	if (!opened) {
		*why = "the gate never opened: the scheduler was stalled";
		return ASYNQ_DEADLINE_EXCEEDED;
	}
	return ASYNQ_OK;
}

static asynq_status
failing(void *arg, const char **why)
{
	(void)arg;
	*why = "disk on fire";
	atomic_fetch_add(&runs, 1);
	return ASYNQ_UNAVAILABLE;
}

static asynq_status
doubling(void *arg, const char **why)
{
	(void)why;
	int64_t *v = arg;
	*v *= 2;
	usleep(1000);
	atomic_fetch_add(&runs, 1);
	return ASYNQ_OK;
}

static int
bl_setup(void **state)
{
	atomic_store(&runs, 0);
	atomic_store(&entered, 0);
	gate_set(false);
	return tu_setup(state);
}

#define BL_TEST(fn) cmocka_unit_test_setup_teardown(fn, bl_setup, tu_teardown)

static void
test_blocking_status_and_value(void **state)
{
	(void)state;
	int64_t v = 21;
	asynq_future *fs[2] = { asynq_run_blocking(doubling, &v),
		asynq_run_blocking(failing, NULL) };
	assert_int_equal(asynq_wait_all(fs, 2), ASYNQ_UNAVAILABLE);
	assert_int_equal(asynq_future_status(fs[0]), ASYNQ_OK);
	assert_int_equal(v, 42);
	assert_int_equal(asynq_future_status(fs[1]), ASYNQ_UNAVAILABLE);
	assert_string_equal(asynq_error_message(asynq_future_error(fs[1])),
	    "disk on fire");
	asynq_future_rele_n(fs, 2);
	asynq_future *bad = asynq_run_blocking(NULL, NULL);
	assert_int_equal(asynq_future_status(bad), ASYNQ_INVALID_ARGUMENT);
	asynq_future_rele(bad);
}

/* The other task: timers, then it opens the gate. */
static asynq_status
opener(asynq_task *t, void *arg)
{
	int *ticks = arg;
	for (int i = 0; i < 5; i++) {
		asynq_future *s = asynq_sleep(1000000);
		asynq_status st = asynq_await(t, s);
		asynq_future_rele(s);
		ASYNQ_TRY(st);
		++*ticks;
	}
	gate_set(true);
	return ASYNQ_OK;
}

static asynq_status
waiter(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_future *f = asynq_run_blocking(gated, NULL);
	asynq_status st = asynq_await(t, f);
	asynq_future_rele(f);
	return st;
}

static void
test_blocking_scheduler_keeps_running(void **state)
{
	(void)state;
	int ticks = 0;
	asynq_future *fs[2] = { asynq_spawn(waiter, NULL),
		asynq_spawn(opener, &ticks) };
	assert_int_equal(asynq_wait_all(fs, 2), ASYNQ_OK);
	assert_int_equal(ticks, 5);
	assert_int_equal(atomic_load(&runs), 1);
	asynq_future_rele_n(fs, 2);
}

static void
test_blocking_queue_bound_and_cancel(void **state)
{
	(void)state;
	int64_t a = 1, b = 2;
	/* One thread: the first call runs (gated), two wait, a fourth is
	 * refused at once. */
	asynq_future *running = asynq_run_blocking(gated, NULL);
	/* Until the pool's thread has taken it off the queue (bounded). */
	for (int i = 0; i < 10000 && atomic_load(&entered) == 0; i++)
		usleep(1000);
	assert_int_equal(atomic_load(&entered), 1);
	asynq_future *q1 = asynq_run_blocking(doubling, &a);
	asynq_future *q2 = asynq_run_blocking(doubling, &b);
	asynq_future *over = asynq_run_blocking(doubling, &a);
	assert_true(asynq_future_done(over));
	assert_int_equal(asynq_future_status(over), ASYNQ_RESOURCE_EXHAUSTED);
	assert_non_null(strstr(asynq_error_message(asynq_future_error(over)),
	    "2 calls already wait"));
	/* A waiting call cancelled never runs. */
	asynq_batch_cancel(asynq_item_batch(q2));
	assert_true(asynq_future_done(q2));
	assert_int_equal(asynq_future_status(q2), ASYNQ_CANCELLED);
	gate_set(true);
	asynq_future *fs[2] = { running, q1 };
	assert_int_equal(asynq_wait_all(fs, 2), ASYNQ_OK);
	assert_int_equal(a, 2);
	assert_int_equal(b, 2); /* never doubled */
	assert_int_equal(atomic_load(&runs), 2);
	asynq_future_rele_n(fs, 2);
	asynq_future_rele(q2);
	asynq_future_rele(over);
}

static void
test_blocking_thread_fini_waits_for_calls(void **state)
{
	(void)state;
	int64_t v = 5;
	asynq_future *f = asynq_run_blocking(doubling, &v);
	asynq_future_rele(f); /* never awaited */
	asynq_thread_fini();
	assert_int_equal(v, 10);
	assert_int_equal(atomic_load(&runs), 1);
}

int
main(void)
{
	asynq_blocking_cfg cfg = { .threads = 1, .max_queued = 2 };
	if (asynq_blocking_configure(&cfg) != ASYNQ_OK)
		return 1;
	const struct CMUnitTest tests[] = {
		BL_TEST(test_blocking_status_and_value),
		BL_TEST(test_blocking_scheduler_keeps_running),
		BL_TEST(test_blocking_queue_bound_and_cancel),
		BL_TEST(test_blocking_thread_fini_waits_for_calls),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	/* Configuring after use is refused. */
	if (rc == 0 &&
	    asynq_blocking_configure(&cfg) != ASYNQ_FAILED_PRECONDITION)
		rc = 1;
	return rc;
}
