/* SPDX-License-Identifier: MIT */
/*
 * Tests of task nesting: asynq_task_depth, deep recursion of tasks that each
 * await their child, and the depth limit that turns runaway recursion into a
 * RESOURCE_EXHAUSTED error instead of a crash.
 */
#include "testutil.h"

/* ---- Task bodies ---------------------------------------------------- */

static asynq_status
depth_reader(asynq_task *t, void *arg)
{
	size_t want = (size_t)(intptr_t)arg;
	asynq_future *child;
	asynq_status st = ASYNQ_OK;

	TCHECK_INT(asynq_task_depth(t), want);
	if (want < 3) {
		child = asynq_spawn(depth_reader, (void *)(intptr_t)(want + 1));
		st = asynq_await(t, child);
		asynq_future_rele(child);
	}
	return st;
}

/* rec_sum(n) = n + rec_sum(n - 1), one task per level. */
static asynq_status
rec_sum(asynq_task *t, void *arg)
{
	int64_t n = (int64_t)(intptr_t)arg;
	asynq_future *child;
	asynq_status st;
	int64_t v;

	if (n == 0)
		return asynq_return_i64(t, 0);
	child = asynq_spawn(rec_sum, (void *)(intptr_t)(n - 1));
	st = asynq_await(t, child);
	v = asynq_future_i64(child);
	asynq_future_rele(child);
	ASYNQ_TRY(st);
	return asynq_return_i64(t, v + n);
}

/* Runaway recursion: never stops by itself. */
static size_t deepest;    /* greatest depth that ran */
static size_t refused_at; /* depth of the task whose spawn was refused */
static int refused;       /* spawns that came back failed */

static asynq_status
runaway(asynq_task *t, void *arg)
{
	asynq_future *child;
	asynq_status st;

	(void)arg;
	if (asynq_task_depth(t) > deepest)
		deepest = asynq_task_depth(t);
	child = asynq_spawn(runaway, NULL);
	if (asynq_future_done(child)) {
		refused++;
		refused_at = asynq_task_depth(t);
		TCHECK_STATUS(asynq_future_status(child),
		    ASYNQ_RESOURCE_EXHAUSTED);
	}
	st = asynq_await(t, child);
	asynq_future_rele(child);
	return st;
}

/* ThreadSanitizer gives every coroutine its own fiber, and fibers count
 * against its limit of 8128 threads: the tests that keep thousands of tasks
 * alive at once cannot run under it. */
#if ASYNQI_TSAN
#define SKIP_UNDER_TSAN() skip()
#else
#define SKIP_UNDER_TSAN() ((void)0)
#endif

static int
depth_setup(void **state)
{
	deepest = 0;
	refused_at = 0;
	refused = 0;
	return tu_setup(state);
}

#define DEPTH_TEST(fn)                                                         \
	cmocka_unit_test_setup_teardown(fn, depth_setup, tu_teardown)

/* run_runaway runs the runaway recursion and checks its error. */
static void
run_runaway(size_t limit)
{
	asynq_future *f = asynq_spawn(runaway, NULL);
	const char *msg;
	char num[32];

	assert_status(asynq_wait(f), ASYNQ_RESOURCE_EXHAUSTED);
	ASSERT_TASK_CHECKS(1);
	assert_int_equal(refused, 1);
	/* It went as deep as the limit allows, give or take the off-by-one
	 * between "depth" and "tasks nested". */
	assert_true(deepest + 1 >= limit);
	assert_true(deepest <= limit);
	assert_int_equal(refused_at, deepest);
	msg = asynq_error_message(asynq_future_error(f));
	assert_non_null(msg);
	if (strcasestr(msg, "depth") == NULL)
		fail_msg("message does not mention the depth: \"%s\"", msg);
	snprintf(num, sizeof(num), "%zu", limit);
	assert_contains(msg, num);
	asynq_future_rele(f);
}

/* ---- Tests ---------------------------------------------------------- */

static void
test_depth_counts_creators(void **state)
{
	asynq_future *f = asynq_spawn(depth_reader, (void *)(intptr_t)0);

	(void)state;
	assert_int_equal(asynq_task_depth(asynq_future_task(f)), 0);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(4);
	asynq_future_rele(f);
}

static void
test_depth_recursion_10000_deep(void **state)
{
	asynq_future *f;

	(void)state;
	SKIP_UNDER_TSAN();
	f = asynq_spawn(rec_sum, (void *)(intptr_t)10000);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), (int64_t)10000 * 10001 / 2);
	assert_int_equal(tu_stats().tasks_spawned, 10001);
	asynq_future_rele(f);
}

static void
test_depth_within_limit_succeeds(void **state)
{
	asynq_sched_cfg cfg = { .max_depth = 500 };
	asynq_future *f;

	(void)state;
	assert_status(asynq_thread_init(&cfg), ASYNQ_OK);
	/* 499 creators below the root: 500 tasks nested. */
	f = asynq_spawn(rec_sum, (void *)(intptr_t)499);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), (int64_t)499 * 500 / 2);
	asynq_future_rele(f);
}

static void
test_depth_past_limit_fails(void **state)
{
	asynq_sched_cfg cfg = { .max_depth = 500 };
	asynq_future *f;

	(void)state;
	assert_status(asynq_thread_init(&cfg), ASYNQ_OK);
	f = asynq_spawn(rec_sum, (void *)(intptr_t)501);
	assert_status(asynq_wait(f), ASYNQ_RESOURCE_EXHAUSTED);
	asynq_future_rele(f);
	/* The scheduler still works afterwards. */
	f = asynq_spawn(rec_sum, (void *)(intptr_t)10);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), 55);
	asynq_future_rele(f);
}

static void
test_depth_runaway_recursion_fails_at_limit(void **state)
{
	asynq_sched_cfg cfg = { .max_depth = 500 };

	(void)state;
	assert_status(asynq_thread_init(&cfg), ASYNQ_OK);
	run_runaway(500);
}

static void
test_depth_runaway_recursion_default_limit(void **state)
{
	(void)state;
	SKIP_UNDER_TSAN();
	run_runaway(20000);
}

static void
test_depth_thread_init_twice_fails(void **state)
{
	asynq_sched_cfg cfg = { .max_depth = 500 };

	(void)state;
	assert_status(asynq_thread_init(&cfg), ASYNQ_OK);
	assert_status(asynq_thread_init(&cfg), ASYNQ_FAILED_PRECONDITION);
	asynq_thread_fini();
	/* After fini the thread may make a scheduler again. */
	assert_status(asynq_thread_init(NULL), ASYNQ_OK);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		DEPTH_TEST(test_depth_counts_creators),
		DEPTH_TEST(test_depth_recursion_10000_deep),
		DEPTH_TEST(test_depth_within_limit_succeeds),
		DEPTH_TEST(test_depth_past_limit_fails),
		DEPTH_TEST(test_depth_runaway_recursion_fails_at_limit),
		DEPTH_TEST(test_depth_runaway_recursion_default_limit),
		DEPTH_TEST(test_depth_thread_init_twice_fails),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
