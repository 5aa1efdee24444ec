/* SPDX-License-Identifier: MIT */
/*
 * Tests of mocks (asynq/testing.h): a mockable async function replaced for
 * callers that await it and callers that asynq_wait on it, scripted results
 * and errors in order, call counts and arguments, unexpected calls and the
 * default, restoring the original, and a batched mock whose calls awaited
 * together are one flush.
 */
#include <stdint.h>

#include "asynq/testing.h"
#include "tests/core/testutil.h"

/* ---- Code under test: calls score_of through the mockable pointer ------- */

static asynq_future *
real_score(int64_t id)
{
	return asynq_const_i64(id * 100);
}

ASYNQ_MOCKABLE(score_of, int64_t id);
ASYNQ_MOCKABLE_DEFINE(score_of, real_score);

/* Async caller: awaits score_of(1..3) together and returns their sum. */
static asynq_status
sum_scores(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_future *fs[3];
	for (int64_t i = 0; i < 3; i++)
		fs[i] = score_of(i + 1);
	asynq_status st = asynq_await_all(t, fs, 3);
	int64_t sum = 0;
	for (int i = 0; i < 3; i++)
		sum += asynq_future_i64(fs[i]);
	asynq_future_rele_n(fs, 3);
	ASYNQ_TRY(st);
	return asynq_return_i64(t, sum);
}

/* Sync caller: waits for one score; -1 on error. */
static int64_t
sync_score(int64_t id, asynq_status *st)
{
	asynq_future *f = score_of(id);
	*st = asynq_wait(f);
	int64_t v = *st == ASYNQ_OK ? asynq_future_i64(f) : -1;
	asynq_future_rele(f);
	return v;
}

static asynq_status
sync_inside_task(asynq_task *t, void *arg)
{
	(void)t;
	(void)arg;
	asynq_status st;
	TCHECK_INT(sync_score(4, &st), 44);
	TCHECK_STATUS(st, ASYNQ_OK);
	return ASYNQ_OK;
}

static int64_t
run_sum(asynq_status *st, char *msg, size_t msg_size)
{
	asynq_future *f = asynq_spawn(sum_scores, NULL);
	*st = asynq_wait(f);
	int64_t v = asynq_future_i64(f);
	if (msg != NULL)
		snprintf(msg, msg_size, "%s",
		    *st != ASYNQ_OK ? asynq_error_message(asynq_future_error(f))
		                    : "");
	asynq_future_rele(f);
	return v;
}

/* ---- Replacements -------------------------------------------------------- */

static asynq_mock *the_mock;

static asynq_future *
mock_score(int64_t id)
{
	return asynq_mock_call_i64(the_mock, id);
}

ASYNQ_MOCK_FN(mock_score_anon, the_mock, int64_t id)

/* ---- Tests --------------------------------------------------------------- */

static void
test_mock_async_caller_gets_script_in_order(void **state)
{
	(void)state;
	asynq_status st;
	assert_int_equal(run_sum(&st, NULL, 0), 600);

	assert_status(
	    asynq_mock_alloc(&the_mock, "score_of", ASYNQ_MOCK_IMMEDIATE),
	    ASYNQ_OK);
	asynq_mock_install(the_mock, &score_of, mock_score);
	assert_true(score_of == mock_score);
	assert_status(asynq_mock_returns_i64(the_mock, 7), ASYNQ_OK);
	assert_status(asynq_mock_returns_i64(the_mock, 8), ASYNQ_OK);
	assert_status(asynq_mock_returns_i64(the_mock, 9), ASYNQ_OK);
	assert_int_equal(asynq_mock_remaining(the_mock), 3);

	assert_int_equal(run_sum(&st, NULL, 0), 24);
	assert_status(st, ASYNQ_OK);
	assert_int_equal(asynq_mock_calls(the_mock), 3);
	assert_int_equal(asynq_mock_arg_i64(the_mock, 0), 1);
	assert_int_equal(asynq_mock_arg_i64(the_mock, 1), 2);
	assert_int_equal(asynq_mock_arg_i64(the_mock, 2), 3);
	assert_int_equal(asynq_mock_remaining(the_mock), 0);
	assert_int_equal(asynq_mock_unexpected(the_mock), 0);

	asynq_mock_restore(the_mock);
	assert_true(score_of == real_score);
	assert_int_equal(run_sum(&st, NULL, 0), 600);
	assert_int_equal(asynq_mock_calls(the_mock), 3);
	asynq_mock_free(the_mock);
}

static void
test_mock_fails_in_order(void **state)
{
	(void)state;
	char msg[256];
	asynq_status st;
	assert_status(
	    asynq_mock_alloc(&the_mock, "score_of", ASYNQ_MOCK_IMMEDIATE),
	    ASYNQ_OK);
	asynq_mock_install(the_mock, &score_of, mock_score);
	asynq_mock_returns_i64(the_mock, 1);
	asynq_mock_fails(the_mock, ASYNQ_NOT_FOUND, "no user %d", 2);
	asynq_mock_returns_i64(the_mock, 3);
	run_sum(&st, msg, sizeof(msg));
	assert_status(st, ASYNQ_NOT_FOUND);
	assert_string_equal(msg, "no user 2");
	assert_int_equal(asynq_mock_calls(the_mock), 3);

	/* Freeing an installed mock restores the original. */
	asynq_mock_free(the_mock);
	assert_true(score_of == real_score);
}

static void
test_mock_sync_caller(void **state)
{
	(void)state;
	asynq_status st;
	assert_status(
	    asynq_mock_alloc(&the_mock, "score_of", ASYNQ_MOCK_IMMEDIATE),
	    ASYNQ_OK);
	asynq_mock_install(the_mock, &score_of, mock_score);
	asynq_mock_returns_i64(the_mock, 33);
	asynq_mock_fails(the_mock, ASYNQ_UNAVAILABLE, "down");
	asynq_mock_returns_i64(the_mock, 44);

	assert_int_equal(sync_score(3, &st), 33);
	assert_status(st, ASYNQ_OK);
	assert_int_equal(sync_score(3, &st), -1);
	assert_status(st, ASYNQ_UNAVAILABLE);
	/* asynq_wait from inside a task: the nested loop. */
	asynq_future *f = asynq_spawn(sync_inside_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	ASSERT_TASK_CHECKS(2);
	assert_int_equal(asynq_mock_calls(the_mock), 3);
	assert_int_equal(asynq_mock_arg_i64(the_mock, 2), 4);
	asynq_mock_free(the_mock);
}

static void
test_mock_unexpected_calls_and_default(void **state)
{
	(void)state;
	asynq_status st;
	char msg[256];
	assert_status(
	    asynq_mock_alloc(&the_mock, "score_of", ASYNQ_MOCK_IMMEDIATE),
	    ASYNQ_OK);
	asynq_mock_install(the_mock, &score_of, mock_score_anon);
	asynq_mock_returns_i64(the_mock, 1);
	run_sum(&st, msg, sizeof(msg));
	assert_status(st, ASYNQ_FAILED_PRECONDITION);
	assert_contains(msg, "unexpected call #2");
	assert_int_equal(asynq_mock_unexpected(the_mock), 2);

	asynq_mock_returns_default_i64(the_mock, 5);
	assert_int_equal(run_sum(&st, NULL, 0), 15);
	assert_status(st, ASYNQ_OK);
	assert_int_equal(asynq_mock_calls(the_mock), 6);
	assert_int_equal(asynq_mock_unexpected(the_mock), 2);

	/* One pointer at a time. */
	asynq_status (*other)(void) = NULL;
	assert_status(asynq_mock_install_at(the_mock, (void *)&other,
	                  sizeof(other), &other),
	    ASYNQ_FAILED_PRECONDITION);
	asynq_mock_free(the_mock);
	assert_true(score_of == real_score);
}

static asynq_status
ptr_caller(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_future *f = score_of(9);
	TCHECK_STATUS(asynq_await(t, f), ASYNQ_OK);
	TCHECK(asynq_future_ptr(f) != NULL &&
	    strcmp(asynq_future_ptr(f), "nine") == 0);
	asynq_future_rele(f);
	return ASYNQ_OK;
}

static void
test_mock_batched_calls_flush_together(void **state)
{
	(void)state;
	asynq_status st;
	assert_status(
	    asynq_mock_alloc(&the_mock, "score_of", ASYNQ_MOCK_BATCHED),
	    ASYNQ_OK);
	asynq_mock_install(the_mock, &score_of, mock_score);
	asynq_mock_returns_i64(the_mock, 10);
	asynq_mock_returns_i64(the_mock, 20);
	asynq_mock_returns_i64(the_mock, 30);
	asynq_mock_returns_ptr(the_mock, strdup("nine"), free);
	asynq_mock_returns_ptr(the_mock, strdup("never taken"), free);

	assert_int_equal(run_sum(&st, NULL, 0), 60);
	assert_status(st, ASYNQ_OK);
	assert_int_equal(asynq_mock_flushes(the_mock), 1);

	asynq_future *f = asynq_spawn(ptr_caller, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	ASSERT_TASK_CHECKS(2);
	assert_int_equal(asynq_mock_flushes(the_mock), 2);
	assert_int_equal(asynq_mock_calls(the_mock), 4);
	assert_int_equal(asynq_mock_remaining(the_mock), 1);

	/* A call made and never flushed is cancelled by the free. */
	f = score_of(1);
	assert_false(asynq_future_done(f));
	asynq_mock_free(the_mock); /* frees "never taken" */
	assert_status(asynq_future_status(f), ASYNQ_CANCELLED);
	asynq_future_rele(f);
	assert_true(score_of == real_score);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_mock_async_caller_gets_script_in_order),
		TU_TEST(test_mock_fails_in_order),
		TU_TEST(test_mock_sync_caller),
		TU_TEST(test_mock_unexpected_calls_and_default),
		TU_TEST(test_mock_batched_calls_flush_together),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
