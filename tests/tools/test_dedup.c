/* SPDX-License-Identifier: MIT */
/*
 * Deduplication (asynq_dedup_call), ported from asynq's test_deduplicate:
 * concurrent calls with one key run the body once, keys include the
 * function, re-entrant calls get a task of their own instead of awaiting
 * themselves, dirty entries make new tasks, and errors leave no entry.
 */
#include "tools_testutil.h"

static int executions;

/* Adds *arg to `executions` after waiting for a batch flush. */
static asynq_status
increment(asynq_task *t, void *arg)
{
	int64_t by = *(int64_t *)arg;
	TCHECK_INT(tt_item(t, by), by);
	executions += (int)by;
	return asynq_return_i64(t, executions);
}

static asynq_future *
call_increment(int64_t *by)
{
	return asynq_dedup_call(increment, by, NULL, by, sizeof(*by));
}

static asynq_status
check_same_key_shares(asynq_task *t, void *arg)
{
	(void)arg;
	static int64_t one = 1, also_one = 1, two = 2;
	asynq_future *fs[3] = { call_increment(&one), call_increment(&also_one),
		call_increment(&two) };
	TCHECK(fs[0] == fs[1]);
	TCHECK(fs[0] != fs[2]);
	TCHECK_INT(asynq_dedup_pending(), 2);
	TCHECK_STATUS(asynq_await_all(t, fs, 3), ASYNQ_OK);
	TCHECK_INT(executions, 3);
	TCHECK_INT(asynq_dedup_pending(), 0);
	asynq_future_rele_n(fs, 3);
	/* Finished: the next call runs again. */
	asynq_future *f = call_increment(&one);
	TCHECK_STATUS(asynq_await(t, f), ASYNQ_OK);
	TCHECK_INT(executions, 4);
	asynq_future_rele(f);
	return ASYNQ_OK;
}

static void
test_dedup_same_key_shares_one_task(void **state)
{
	(void)state;
	executions = 0;
	asynq_future *f = asynq_spawn(check_same_key_shares, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	ASSERT_TASK_CHECKS(9);
	assert_int_equal(executions, 4);
	assert_int_equal(asynq_dedup_pending(), 0);
}

/* Many sibling tasks ask for one key while its task waits for a batch. */
static asynq_status
sibling(asynq_task *t, void *arg)
{
	(void)arg;
	static int64_t five = 5;
	asynq_future *f = call_increment(&five);
	asynq_status st = asynq_await(t, f);
	int64_t v = asynq_future_i64(f);
	asynq_future_rele(f);
	TCHECK_STATUS(st, ASYNQ_OK);
	return asynq_return_i64(t, v);
}

static void
test_dedup_concurrent_siblings_run_body_once(void **state)
{
	(void)state;
	executions = 0;
	asynq_future *fs[10];
	for (int i = 0; i < 10; i++)
		fs[i] = asynq_spawn(sibling, NULL);
	assert_status(asynq_wait_all(fs, 10), ASYNQ_OK);
	for (int i = 0; i < 10; i++)
		assert_int_equal(asynq_future_i64(fs[i]), 5);
	asynq_future_rele_n(fs, 10);
	ASSERT_TASK_CHECKS(11);
	assert_int_equal(executions, 5); /* one run of +5 */
	assert_int_equal(asynq_debug_default()->flushes, 1);
}

static asynq_status
return_three(asynq_task *t, void *arg)
{
	(void)arg;
	return asynq_return_i64(t, 3);
}

static asynq_status
return_five(asynq_task *t, void *arg)
{
	(void)arg;
	return asynq_return_i64(t, 5);
}

static void
test_dedup_key_includes_function(void **state)
{
	(void)state;
	asynq_future *fs[2] = {
		asynq_dedup_call(return_three, NULL, NULL, "k", 1),
		asynq_dedup_call(return_five, NULL, NULL, "k", 1),
	};
	assert_ptr_not_equal(fs[0], fs[1]);
	assert_status(asynq_wait_all(fs, 2), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(fs[0]), 3);
	assert_int_equal(asynq_future_i64(fs[1]), 5);
	asynq_future_rele_n(fs, 2);
}

/* Calls itself with its own key: a re-entrant call, which must not await
 * its own task. */
static int depth_runs;

static asynq_status
reenter(asynq_task *t, void *arg)
{
	(void)arg;
	if (depth_runs++ > 0)
		return asynq_return_i64(t, 7);
	asynq_future *f = asynq_dedup_call(reenter, NULL, NULL, "same", 4);
	asynq_status st = asynq_await(t, f);
	int64_t v = asynq_future_i64(f);
	asynq_future_rele(f);
	TCHECK_STATUS(st, ASYNQ_OK);
	return asynq_return_i64(t, v + 1);
}

static void
test_dedup_reentrant_call_gets_new_task(void **state)
{
	(void)state;
	depth_runs = 0;
	asynq_future *f = asynq_dedup_call(reenter, NULL, NULL, "same", 4);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), 8);
	assert_int_equal(depth_runs, 2);
	asynq_future_rele(f);
	ASSERT_TASK_CHECKS(1);
	assert_int_equal(asynq_dedup_pending(), 0);
}

/* asynq's deduplicated_recursive: the body runs a task synchronously
 * (asynq_wait) that calls the deduplicated function again. */
static int recursive_state;

static asynq_status dedup_recursive(asynq_task *t, void *arg);

static asynq_status
dedup_caller(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_future *f = asynq_dedup_call(dedup_recursive, NULL, NULL, "", 0);
	asynq_status st = asynq_await(t, f);
	asynq_future_rele(f);
	return st;
}

static asynq_status
dedup_recursive(asynq_task *t, void *arg)
{
	(void)arg;
	int existing = recursive_state;
	recursive_state = 1;
	TCHECK_STATUS(asynq_debug_sync(t), ASYNQ_OK);
	if (existing == 0) {
		asynq_future *f = asynq_spawn(dedup_caller, NULL);
		TCHECK_STATUS(asynq_wait(f), ASYNQ_OK);
		asynq_future_rele(f);
	}
	return ASYNQ_OK;
}

static void
test_dedup_reentrant_through_nested_wait(void **state)
{
	(void)state;
	recursive_state = 0;
	asynq_future *f = asynq_spawn(dedup_caller, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	ASSERT_TASK_CHECKS(3);
}

/* A child task (not the body itself) asks for the body's key. */
static asynq_status parent_body(asynq_task *t, void *arg);

static asynq_status
child_body(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_future *f = asynq_dedup_call(parent_body, NULL, NULL, "p", 1);
	asynq_status st = asynq_await(t, f);
	int64_t v = asynq_future_i64(f);
	asynq_future_rele(f);
	return st != ASYNQ_OK ? st : asynq_return_i64(t, v);
}

static asynq_status
parent_body(asynq_task *t, void *arg)
{
	(void)arg;
	if (depth_runs++ > 0)
		return asynq_return_i64(t, 40);
	asynq_future *c = asynq_spawn(child_body, NULL);
	asynq_status st = asynq_await(t, c);
	int64_t v = asynq_future_i64(c);
	asynq_future_rele(c);
	return st != ASYNQ_OK ? st : asynq_return_i64(t, v + 2);
}

static void
test_dedup_reentrant_from_child_task(void **state)
{
	(void)state;
	depth_runs = 0;
	asynq_future *f = asynq_dedup_call(parent_body, NULL, NULL, "p", 1);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), 42);
	assert_int_equal(depth_runs, 2);
	asynq_future_rele(f);
}

/* asynq's recursive_call_with_dirty: the body dirties its own entry and
 * calls itself; the new call makes a new task. */
static asynq_status
call_with_dirty(asynq_task *t, void *arg)
{
	(void)arg;
	if (depth_runs++ > 0)
		return asynq_return_i64(t, depth_runs);
	asynq_dedup_dirty(call_with_dirty, NULL, 0);
	TCHECK_INT(asynq_dedup_pending(), 0);
	asynq_future *f =
	    asynq_dedup_call(call_with_dirty, NULL, NULL, NULL, 0);
	TCHECK_INT(asynq_dedup_pending(), 1);
	asynq_status st = asynq_await(t, f);
	int64_t v = asynq_future_i64(f);
	asynq_future_rele(f);
	return st != ASYNQ_OK ? st : asynq_return_i64(t, v);
}

static void
test_dedup_dirty_makes_new_task(void **state)
{
	(void)state;
	depth_runs = 0;
	asynq_future *f =
	    asynq_dedup_call(call_with_dirty, NULL, NULL, NULL, 0);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), 2);
	asynq_future_rele(f);
	ASSERT_TASK_CHECKS(2);

	/* Dirty from outside while in flight: both tasks run, the old one
	 * still completes for its holder. */
	static int64_t one = 1;
	executions = 0;
	asynq_future *a = call_increment(&one);
	asynq_dedup_dirty(increment, &one, sizeof(one));
	asynq_future *b = call_increment(&one);
	assert_ptr_not_equal(a, b);
	asynq_future *fs[2] = { a, b };
	assert_status(asynq_wait_all(fs, 2), ASYNQ_OK);
	assert_int_equal(executions, 2);
	asynq_future_rele_n(fs, 2);
	assert_int_equal(asynq_dedup_pending(), 0);
}

static int fail_runs;

static asynq_status
fails(asynq_task *t, void *arg)
{
	(void)arg;
	fail_runs++;
	TCHECK_INT(tt_item(t, 1), 1);
	return asynq_fail(t, ASYNQ_NOT_FOUND, "no such thing");
}

static void
test_dedup_error_is_shared_and_not_kept(void **state)
{
	(void)state;
	fail_runs = 0;
	asynq_future *fs[2] = {
		asynq_dedup_call(fails, NULL, NULL, "x", 1),
		asynq_dedup_call(fails, NULL, NULL, "x", 1),
	};
	assert_ptr_equal(fs[0], fs[1]);
	assert_status(asynq_wait_all(fs, 2), ASYNQ_NOT_FOUND);
	assert_int_equal(fail_runs, 1);
	assert_int_equal(asynq_dedup_pending(), 0);
	asynq_future_rele_n(fs, 2);
	asynq_future *f = asynq_dedup_call(fails, NULL, NULL, "x", 1);
	assert_status(asynq_wait(f), ASYNQ_NOT_FOUND);
	assert_int_equal(fail_runs, 2);
	assert_contains(asynq_error_message(asynq_future_error(f)),
	    "no such thing");
	asynq_future_rele(f);
	assert_null(asynq_task_current());
	assert_int_equal(tu_stats().tasks_live, 0);
}

/* asynq's recursive_incrementer: nested synchronous waits on deduplicated
 * tasks while a sibling holds the innermost key. */
static asynq_status
recursive_incrementer(asynq_task *t, void *arg)
{
	int64_t n = (int64_t)(intptr_t)arg;
	static int64_t zero = 0;
	if (n == 0) {
		asynq_future *f = call_increment(&zero);
		asynq_status st = asynq_await(t, f);
		asynq_future_rele(f);
		return st;
	}
	int64_t k = n - 1;
	asynq_future *f = asynq_dedup_call(recursive_incrementer,
	    (void *)(intptr_t)k, NULL, &k, sizeof(k));
	asynq_status st = asynq_wait(f);
	asynq_future_rele(f);
	return st;
}

static void
test_dedup_recursion(void **state)
{
	(void)state;
	static int64_t zero = 0, twenty = 20;
	executions = 0;
	asynq_future *fs[2] = {
		asynq_dedup_call(recursive_incrementer, (void *)(intptr_t)20,
		    NULL, &twenty, sizeof(twenty)),
		call_increment(&zero),
	};
	assert_status(asynq_wait_all(fs, 2), ASYNQ_OK);
	asynq_future_rele_n(fs, 2);
	ASSERT_TASK_CHECKS(1);
	assert_int_equal(asynq_dedup_pending(), 0);
}

/* Arguments move to the call: freed once, whether shared or not. */
static int frees;

static void
count_free(void *p)
{
	frees++;
	free(p);
}

static int read_runs;

static asynq_status
read_arg(asynq_task *t, void *arg)
{
	read_runs++;
	return asynq_return_i64(t, *(int64_t *)arg);
}

static void
test_dedup_arg_ownership(void **state)
{
	(void)state;
	frees = 0;
	asynq_future *fs[3];
	for (int i = 0; i < 3; i++) {
		int64_t *a = malloc(sizeof(*a));
		*a = 10 + i;
		fs[i] = asynq_dedup_call(read_arg, a, count_free, "a", 1);
	}
	assert_int_equal(frees, 2); /* the two that joined */
	assert_status(asynq_wait_all(fs, 3), ASYNQ_OK);
	assert_int_equal(frees, 3);
	assert_int_equal(asynq_future_i64(fs[2]), 10);
	asynq_future_rele_n(fs, 3);
}

/* A call never awaited is abandoned at teardown without running. */
static void
test_dedup_unawaited_call_is_abandoned(void **state)
{
	(void)state;
	frees = 0;
	read_runs = 0;
	int64_t *a = malloc(sizeof(*a));
	*a = 1;
	asynq_future *f = asynq_dedup_call(read_arg, a, count_free, "u", 1);
	asynq_future_rele(f);
	assert_int_equal(asynq_dedup_pending(), 1);
	asynq_thread_fini();
	/* Its body never ran; its argument was freed once. */
	assert_int_equal(read_runs, 0);
	assert_int_equal(frees, 1);
	/* A new scheduler starts with empty tables. */
	assert_int_equal(asynq_dedup_pending(), 0);
	asynq_thread_fini();
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TT_TEST(test_dedup_same_key_shares_one_task),
		TT_TEST(test_dedup_concurrent_siblings_run_body_once),
		TT_TEST(test_dedup_key_includes_function),
		TT_TEST(test_dedup_reentrant_call_gets_new_task),
		TT_TEST(test_dedup_reentrant_through_nested_wait),
		TT_TEST(test_dedup_reentrant_from_child_task),
		TT_TEST(test_dedup_dirty_makes_new_task),
		TT_TEST(test_dedup_error_is_shared_and_not_kept),
		TT_TEST(test_dedup_recursion),
		TT_TEST(test_dedup_arg_ownership),
		TT_TEST(test_dedup_unawaited_call_is_abandoned),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
