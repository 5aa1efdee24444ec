/* SPDX-License-Identifier: MIT */
/*
 * Tests of async generators: taking the first n of an infinite sequence and
 * resuming, the end of the sequence, batch items taken together going out in
 * one flush (and one by one in n flushes), the strict mode's error, producer
 * errors, producers that await between yields, and consumers outside tasks.
 */
#include <stdint.h>

#include "asynq/generator.h"
#include "tests/core/testutil.h"

static asynq_debug_backend be;
static int producer_status_seen; /* what the last yield returned */
static int producer_runs_done;   /* producers that returned */

/* 0, 1, 2, ... forever. */
static asynq_status
naturals(asynq_gen_yield_ctx *y, asynq_task *t, void *arg)
{
	(void)t;
	(void)arg;
	for (int64_t i = 0;; i++) {
		asynq_status st = asynq_gen_yield(y, asynq_const_i64(i));
		if (st != ASYNQ_OK) {
			producer_status_seen = (int)st;
			producer_runs_done++;
			return st;
		}
	}
}

/* 0 .. *arg - 1. */
static asynq_status
range(asynq_gen_yield_ctx *y, asynq_task *t, void *arg)
{
	(void)t;
	int64_t n = *(int64_t *)arg;
	for (int64_t i = 0; i < n; i++)
		ASYNQ_TRY(asynq_gen_yield(y, asynq_const_i64(i)));
	producer_runs_done++;
	return ASYNQ_OK;
}

/* Debug items resolving to i * i, i < *arg; yielded pending. */
static asynq_status
squares(asynq_gen_yield_ctx *y, asynq_task *t, void *arg)
{
	(void)t;
	int64_t n = *(int64_t *)arg;
	for (int64_t i = 0; i < n; i++)
		ASYNQ_TRY(asynq_gen_yield(y, asynq_debug_item(&be, i * i)));
	return ASYNQ_OK;
}

static void
check_values(asynq_future **fs, size_t n, int64_t first)
{
	for (size_t i = 0; i < n; i++) {
		TCHECK(asynq_future_done(fs[i]));
		TCHECK_INT(asynq_future_i64(fs[i]), first + (int64_t)i);
	}
}

static asynq_status
take_and_resume(asynq_task *t, void *arg)
{
	asynq_gen *g = arg;
	asynq_future *fs[3];
	size_t n = 0;

	TCHECK_STATUS(asynq_gen_take(t, g, 3, fs, &n), ASYNQ_OK);
	TCHECK_INT(n, 3);
	check_values(fs, n, 0);
	asynq_future_rele_n(fs, n);

	/* Resume where the take stopped. */
	asynq_future *f = NULL;
	TCHECK_STATUS(asynq_gen_next(t, g, &f), ASYNQ_OK);
	TCHECK_STATUS(asynq_await(t, f), ASYNQ_OK);
	TCHECK_INT(asynq_future_i64(f), 3);
	asynq_future_rele(f);

	TCHECK_STATUS(asynq_gen_take(t, g, 2, fs, &n), ASYNQ_OK);
	TCHECK_INT(n, 2);
	check_values(fs, n, 4);
	asynq_future_rele_n(fs, n);
	TCHECK_INT(asynq_gen_count(g), 6);
	TCHECK(!asynq_gen_done(g));
	return ASYNQ_OK;
}

static void
test_generator_take_first_of_infinite(void **state)
{
	(void)state;
	asynq_gen *g = NULL;
	producer_runs_done = 0;
	producer_status_seen = -1;
	assert_status(asynq_gen_alloc(&g, naturals, NULL, 0), ASYNQ_OK);
	asynq_future *f = asynq_spawn(take_and_resume, g);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	ASSERT_TASK_CHECKS(19);
	assert_int_equal(producer_runs_done, 0); /* parked, not finished */

	/* Freeing resumes the parked producer with CANCELLED. */
	asynq_gen_free(g);
	assert_int_equal(producer_runs_done, 1);
	assert_int_equal(producer_status_seen, ASYNQ_CANCELLED);
	asynq_sched_stats st = tu_stats();
	assert_int_equal(st.tasks_live, 0);
}

static asynq_status
drain(asynq_task *t, void *arg)
{
	asynq_gen *g = arg;
	asynq_future *f = NULL;
	for (int64_t i = 0; i < 5; i++) {
		TCHECK_STATUS(asynq_gen_next(t, g, &f), ASYNQ_OK);
		TCHECK_INT(asynq_future_i64(f), i);
		asynq_future_rele(f);
	}
	TCHECK_STATUS(asynq_gen_next(t, g, &f), ASYNQ_OUT_OF_RANGE);
	TCHECK(f == NULL);
	TCHECK(asynq_task_error(t) != NULL &&
	    strstr(asynq_error_message(asynq_task_error(t)), "exhausted") !=
	        NULL);
	TCHECK(asynq_gen_done(g));
	/* Still the end, every time. */
	TCHECK_STATUS(asynq_gen_next(t, g, &f), ASYNQ_OUT_OF_RANGE);
	asynq_future *fs[4];
	size_t n = 99;
	TCHECK_STATUS(asynq_gen_take(t, g, 4, fs, &n), ASYNQ_OK);
	TCHECK_INT(n, 0);
	return ASYNQ_OK;
}

static asynq_status
take_past_end(asynq_task *t, void *arg)
{
	asynq_gen *g = arg;
	asynq_future *fs[10];
	size_t n = 0;
	TCHECK_STATUS(asynq_gen_take(t, g, 10, fs, &n), ASYNQ_OK);
	TCHECK_INT(n, 5);
	check_values(fs, n, 0);
	asynq_future_rele_n(fs, n);
	TCHECK(asynq_gen_done(g));
	return ASYNQ_OK;
}

static void
test_generator_end_of_sequence(void **state)
{
	(void)state;
	int64_t five = 5;
	asynq_gen *g = NULL;
	producer_runs_done = 0;
	assert_status(asynq_gen_alloc(&g, range, &five, 0), ASYNQ_OK);
	asynq_future *f = asynq_spawn(drain, g);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	asynq_gen_free(g);
	assert_int_equal(producer_runs_done, 1);

	assert_status(asynq_gen_alloc(&g, range, &five, 0), ASYNQ_OK);
	f = asynq_spawn(take_past_end, g);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	asynq_gen_free(g);
	ASSERT_TASK_CHECKS(25);
	assert_int_equal(producer_runs_done, 2);
}

static asynq_status
take_ten(asynq_task *t, void *arg)
{
	asynq_gen *g = arg;
	asynq_future *fs[10];
	size_t n = 0;
	TCHECK_STATUS(asynq_gen_take(t, g, 10, fs, &n), ASYNQ_OK);
	TCHECK_INT(n, 10);
	for (size_t i = 0; i < n; i++)
		TCHECK_INT(asynq_future_i64(fs[i]), (int64_t)(i * i));
	asynq_future_rele_n(fs, n);
	return ASYNQ_OK;
}

static asynq_status
one_by_one(asynq_task *t, void *arg)
{
	asynq_gen *g = arg;
	asynq_future *f;
	int64_t i = 0;
	asynq_status st;
	while ((st = asynq_gen_next(t, g, &f)) == ASYNQ_OK) {
		TCHECK_STATUS(asynq_await(t, f), ASYNQ_OK);
		TCHECK_INT(asynq_future_i64(f), i * i);
		asynq_future_rele(f);
		i++;
	}
	TCHECK_STATUS(st, ASYNQ_OUT_OF_RANGE);
	TCHECK_INT(i, 10);
	return ASYNQ_OK;
}

static void
test_generator_batch_items_taken_together_one_flush(void **state)
{
	(void)state;
	int64_t ten = 10;
	asynq_gen *g = NULL;
	asynq_debug_backend_init(&be, "squares", false);
	assert_status(asynq_gen_alloc(&g, squares, &ten, 0), ASYNQ_OK);
	asynq_future *f = asynq_spawn(take_ten, g);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	asynq_gen_free(g);
	ASSERT_TASK_CHECKS(11);
	assert_int_equal(be.flushes, 1);
	assert_int_equal(be.last_size, 10);

	/* Awaiting each element before asking for the next: lazy, so one
	 * flush per element. */
	assert_status(asynq_gen_alloc(&g, squares, &ten, 0), ASYNQ_OK);
	f = asynq_spawn(one_by_one, g);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	asynq_gen_free(g);
	assert_int_equal(be.flushes, 11);
	assert_int_equal(be.last_size, 1);
	asynq_debug_backend_fini(&be);
}

static asynq_status
advance_early(asynq_task *t, void *arg)
{
	asynq_gen *g = arg;
	asynq_future *a = NULL, *b = NULL;
	TCHECK_STATUS(asynq_gen_next(t, g, &a), ASYNQ_OK);
	TCHECK(!asynq_future_done(a));
	TCHECK_STATUS(asynq_gen_next(t, g, &b), ASYNQ_FAILED_PRECONDITION);
	TCHECK(b == NULL);
	TCHECK(asynq_task_error(t) != NULL &&
	    strstr(asynq_error_message(asynq_task_error(t)), "previous") !=
	        NULL);
	/* Computing it first makes advancing legal again. */
	TCHECK_STATUS(asynq_await(t, a), ASYNQ_OK);
	TCHECK_INT(asynq_future_i64(a), 0);
	TCHECK_STATUS(asynq_gen_next(t, g, &b), ASYNQ_OK);
	TCHECK_STATUS(asynq_await(t, b), ASYNQ_OK);
	TCHECK_INT(asynq_future_i64(b), 1);
	asynq_future_rele(a);
	asynq_future_rele(b);
	return ASYNQ_OK;
}

static asynq_status
advance_early_lenient(asynq_task *t, void *arg)
{
	asynq_gen *g = arg;
	asynq_future *fs[2] = { NULL, NULL };
	TCHECK_STATUS(asynq_gen_next(t, g, &fs[0]), ASYNQ_OK);
	TCHECK_STATUS(asynq_gen_next(t, g, &fs[1]), ASYNQ_OK);
	TCHECK_STATUS(asynq_await_all(t, fs, 2), ASYNQ_OK);
	TCHECK_INT(asynq_future_i64(fs[1]), 1);
	asynq_future_rele_n(fs, 2);
	return ASYNQ_OK;
}

static void
test_generator_strict_advance_before_computed(void **state)
{
	(void)state;
	int64_t ten = 10;
	asynq_gen *g = NULL;
	asynq_debug_backend_init(&be, "squares", false);
	assert_status(asynq_gen_alloc(&g, squares, &ten, ASYNQ_GEN_STRICT),
	    ASYNQ_OK);
	asynq_future *f = asynq_spawn(advance_early, g);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	asynq_gen_free(g);

	assert_status(asynq_gen_alloc(&g, squares, &ten, 0), ASYNQ_OK);
	f = asynq_spawn(advance_early_lenient, g);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	asynq_gen_free(g);
	ASSERT_TASK_CHECKS(13);
	asynq_debug_backend_fini(&be);
}

/* Yields two values, then fails. */
static asynq_status
failing(asynq_gen_yield_ctx *y, asynq_task *t, void *arg)
{
	(void)arg;
	ASYNQ_TRY(asynq_gen_yield(y, asynq_const_i64(1)));
	ASYNQ_TRY(asynq_gen_yield(y, asynq_const_i64(2)));
	return asynq_fail(t, ASYNQ_NOT_FOUND, "no third user");
}

static asynq_status
consume_failing(asynq_task *t, void *arg)
{
	asynq_gen *g = arg;
	asynq_future *fs[5];
	size_t n = 0;
	TCHECK_STATUS(asynq_gen_take(t, g, 5, fs, &n), ASYNQ_NOT_FOUND);
	TCHECK_INT(n, 2);
	check_values(fs, n, 1);
	asynq_future_rele_n(fs, n);
	TCHECK(asynq_task_error(t) != NULL &&
	    strstr(asynq_error_message(asynq_task_error(t)), "third") != NULL);
	asynq_future *f = NULL;
	TCHECK_STATUS(asynq_gen_next(t, g, &f), ASYNQ_OUT_OF_RANGE);
	return ASYNQ_OK;
}

static void
test_generator_producer_error(void **state)
{
	(void)state;
	asynq_gen *g = NULL;
	assert_status(asynq_gen_alloc(&g, failing, NULL, 0), ASYNQ_OK);
	asynq_future *f = asynq_spawn(consume_failing, g);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	asynq_gen_free(g);
	ASSERT_TASK_CHECKS(6);
}

/* Awaits a debug item before each yield: the producer's own batching. */
static asynq_status
fetch_then_yield(asynq_gen_yield_ctx *y, asynq_task *t, void *arg)
{
	(void)arg;
	for (int64_t i = 0; i < 3; i++) {
		asynq_future *item = asynq_debug_item(&be, 100 + i);
		asynq_status st = asynq_await(t, item);
		int64_t v = asynq_future_i64(item);
		asynq_future_rele(item);
		ASYNQ_TRY(st);
		ASYNQ_TRY(asynq_gen_yield(y, asynq_const_i64(v)));
	}
	return ASYNQ_OK;
}

static void
test_generator_sync_consumer_and_awaiting_producer(void **state)
{
	(void)state;
	asynq_gen *g = NULL;
	asynq_debug_backend_init(&be, "fetch", false);
	assert_status(asynq_gen_alloc(&g, fetch_then_yield, NULL, 0), ASYNQ_OK);
	/* Outside any task: t NULL runs the scheduler synchronously. */
	asynq_future *f = NULL;
	assert_status(asynq_gen_next(NULL, g, &f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), 100);
	asynq_future_rele(f);
	asynq_future *fs[4];
	size_t n = 0;
	assert_status(asynq_gen_take(NULL, g, 4, fs, &n), ASYNQ_OK);
	assert_int_equal(n, 2);
	assert_int_equal(asynq_future_i64(fs[0]), 101);
	assert_int_equal(asynq_future_i64(fs[1]), 102);
	asynq_future_rele_n(fs, n);
	assert_status(asynq_gen_next(NULL, g, &f), ASYNQ_OUT_OF_RANGE);
	assert_null(f);
	assert_true(asynq_gen_done(g));
	assert_int_equal(be.flushes, 3);
	asynq_gen_free(g);
	asynq_debug_backend_fini(&be);
}

static void
test_generator_free_unstarted(void **state)
{
	(void)state;
	asynq_gen *g = NULL;
	producer_runs_done = 0;
	assert_status(asynq_gen_alloc(&g, naturals, NULL, 0), ASYNQ_OK);
	assert_false(asynq_gen_done(g));
	assert_int_equal(asynq_gen_count(g), 0);
	asynq_gen_free(g);
	asynq_gen_free(NULL);
	assert_int_equal(producer_runs_done, 0);
	assert_status(
	    asynq_gen_alloc_at(&g, NULL, NULL, 0, "x", __FILE__, __LINE__),
	    ASYNQ_INVALID_ARGUMENT);
	assert_int_equal(tu_stats().tasks_live, 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_generator_take_first_of_infinite),
		TU_TEST(test_generator_end_of_sequence),
		TU_TEST(test_generator_batch_items_taken_together_one_flush),
		TU_TEST(test_generator_strict_advance_before_computed),
		TU_TEST(test_generator_producer_error),
		TU_TEST(test_generator_sync_consumer_and_awaiting_producer),
		TU_TEST(test_generator_free_unstarted),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
