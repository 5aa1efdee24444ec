/* SPDX-License-Identifier: MIT */
/*
 * Tests of futures: constant, error and pointer futures, ownership of
 * pointer values (free functions, asynq_future_take), NULL futures, pending
 * items, and on-done callbacks (order, failures, already computed futures).
 */
#include "testutil.h"

/* ---- Helpers -------------------------------------------------------- */

/* Counts calls of counting_free and remembers the last pointer. */
static int free_calls;
static void *last_freed;

static void
counting_free(void *p)
{
	free_calls++;
	last_freed = p;
	free(p);
}

/* What the on_error hook saw. */
static int on_error_calls;
static asynq_status on_error_code;

static void
record_on_error(const asynq_error *e, void *arg)
{
	(void)arg;
	on_error_calls++;
	on_error_code = asynq_error_code(e);
}

static int
future_setup(void **state)
{
	free_calls = 0;
	last_freed = NULL;
	on_error_calls = 0;
	on_error_code = ASYNQ_OK;
	return tu_setup(state);
}

#define FUTURE_TEST(fn)                                                        \
	cmocka_unit_test_setup_teardown(fn, future_setup, tu_teardown)

/* A callback that logs "<id>:<value>" and returns its configured status. */
typedef struct cb_arg {
	int id;
	asynq_status ret;
	asynq_future *expect; /* the future it must be called with */
} cb_arg;

static asynq_status
logging_cb(asynq_future *f, void *arg)
{
	cb_arg *a = arg;

	TCHECK(f == a->expect);
	TCHECK(asynq_future_done(f));
	tu_log("%d:%lld ", a->id, (long long)asynq_future_i64(f));
	return a->ret;
}

static asynq_status
value_task(asynq_task *t, void *arg)
{
	return asynq_return_i64(t, (int64_t)(intptr_t)arg);
}

/* ---- Constant futures ----------------------------------------------- */

static void
test_future_const_i64_value(void **state)
{
	asynq_future *f = asynq_const_i64(-42);

	(void)state;
	assert_non_null(f);
	assert_true(asynq_future_done(f));
	assert_status(asynq_future_status(f), ASYNQ_OK);
	assert_null(asynq_future_error(f));
	assert_int_equal(asynq_future_i64(f), -42);
	assert_null(asynq_future_task(f));
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

static void
test_future_const_ptr_frees_once_on_release(void **state)
{
	int *p = malloc(sizeof(*p));
	asynq_future *f;

	(void)state;
	*p = 7;
	f = asynq_const_ptr(p, counting_free);
	assert_true(asynq_future_done(f));
	assert_ptr_equal(asynq_future_ptr(f), p);
	assert_int_equal(*(int *)asynq_future_ptr(f), 7);
	assert_int_equal(free_calls, 0);
	asynq_future_rele(f);
	assert_int_equal(free_calls, 1);
	assert_ptr_equal(last_freed, p);
}

static void
test_future_const_ptr_take_skips_free(void **state)
{
	int *p = malloc(sizeof(*p));
	asynq_future *f;
	void *taken;

	(void)state;
	f = asynq_const_ptr(p, counting_free);
	taken = asynq_future_take(f);
	assert_ptr_equal(taken, p);
	asynq_future_rele(f);
	assert_int_equal(free_calls, 0);
	free(taken);
}

static void
test_future_const_ptr_without_free_fn_is_borrowed(void **state)
{
	static int value = 3;
	asynq_future *f = asynq_const_ptr(&value, NULL);

	(void)state;
	assert_ptr_equal(asynq_future_ptr(f), &value);
	asynq_future_rele(f);
	assert_int_equal(value, 3);
}

static void
test_future_take_without_pointer_value_is_null(void **state)
{
	asynq_future *f = asynq_const_i64(5);

	(void)state;
	assert_null(asynq_future_take(f));
	assert_int_equal(asynq_future_i64(f), 5);
	asynq_future_rele(f);
}

static void
test_future_const_error_status_and_message(void **state)
{
	asynq_future *f = asynq_const_error(
	    asynq_error_alloc(ASYNQ_NOT_FOUND, "no user %d", 17));

	(void)state;
	assert_true(asynq_future_done(f));
	assert_status(asynq_future_status(f), ASYNQ_NOT_FOUND);
	assert_non_null(asynq_future_error(f));
	assert_status(asynq_error_code(asynq_future_error(f)), ASYNQ_NOT_FOUND);
	assert_string_equal(asynq_error_message(asynq_future_error(f)),
	    "no user 17");
	assert_status(asynq_wait(f), ASYNQ_NOT_FOUND);
	asynq_future_rele(f);
}

static void
test_future_hold_keeps_value_alive(void **state)
{
	int *p = malloc(sizeof(*p));
	asynq_future *f, *g;

	(void)state;
	f = asynq_const_ptr(p, counting_free);
	g = asynq_future_hold(f);
	assert_ptr_equal(g, f);
	asynq_future_rele(f);
	assert_int_equal(free_calls, 0);
	assert_ptr_equal(asynq_future_ptr(g), p);
	asynq_future_rele(g);
	assert_int_equal(free_calls, 1);
}

static void
test_future_rele_n_drops_each(void **state)
{
	asynq_future *fs[3];

	(void)state;
	for (int i = 0; i < 3; i++)
		fs[i] = asynq_const_ptr(malloc(8), counting_free);
	asynq_future_rele_n(fs, 3);
	assert_int_equal(free_calls, 3);
}

static void
test_future_null_behaves_as_resource_exhausted(void **state)
{
	(void)state;
	assert_true(asynq_future_done(NULL));
	assert_status(asynq_future_status(NULL), ASYNQ_RESOURCE_EXHAUSTED);
	assert_status(asynq_wait(NULL), ASYNQ_RESOURCE_EXHAUSTED);
	assert_int_equal(asynq_future_i64(NULL), 0);
	assert_null(asynq_future_ptr(NULL));
	asynq_future_rele(NULL);
	asynq_future_rele_n((asynq_future *[]){ NULL, NULL }, 2);
}

static void
test_future_pending_item_has_no_status(void **state)
{
	asynq_future *item = asynq_debug_item(asynq_debug_default(), 9);

	(void)state;
	assert_false(asynq_future_done(item));
	assert_status(asynq_future_status(item), ASYNQ_FAILED_PRECONDITION);
	assert_null(asynq_future_error(item));
	assert_status(asynq_wait(item), ASYNQ_OK);
	assert_true(asynq_future_done(item));
	assert_int_equal(asynq_future_i64(item), 9);
	asynq_future_rele(item);
}

/* ---- On-done callbacks ---------------------------------------------- */

static void
test_future_on_done_runs_in_registration_order(void **state)
{
	asynq_future *item = asynq_debug_item(asynq_debug_default(), 11);
	cb_arg a[4];

	(void)state;
	for (int i = 0; i < 4; i++) {
		a[i] = (cb_arg){ .id = i, .ret = ASYNQ_OK, .expect = item };
		assert_status(asynq_future_on_done(item, logging_cb, &a[i]),
		    ASYNQ_OK);
	}
	assert_string_equal(tu_log_str(), "");
	assert_status(asynq_wait(item), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "0:11 1:11 2:11 3:11 ");
	assert_int_equal(tu_stats().callback_failures, 0);
	ASSERT_TASK_CHECKS(8);
	asynq_future_rele(item);
	/* Delivered exactly once: releasing does not run them again. */
	assert_string_equal(tu_log_str(), "0:11 1:11 2:11 3:11 ");
}

static void
test_future_on_done_failure_does_not_stop_others(void **state)
{
	asynq_sched_cfg cfg = { .on_error = record_on_error };
	asynq_future *item;
	cb_arg a[3];

	(void)state;
	assert_status(asynq_thread_init(&cfg), ASYNQ_OK);
	item = asynq_debug_item(asynq_debug_default(), 5);
	for (int i = 0; i < 3; i++) {
		a[i] = (cb_arg){ .id = i,
			.ret = i == 1 ? ASYNQ_NOT_FOUND : ASYNQ_OK,
			.expect = item };
		assert_status(asynq_future_on_done(item, logging_cb, &a[i]),
		    ASYNQ_OK);
	}
	assert_status(asynq_wait(item), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "0:5 1:5 2:5 ");
	assert_int_equal(tu_stats().callback_failures, 1);
	assert_int_equal(on_error_calls, 1);
	assert_status(on_error_code, ASYNQ_NOT_FOUND);
	/* The future itself is unaffected by its callback's failure. */
	assert_status(asynq_future_status(item), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(item), 5);
	ASSERT_TASK_CHECKS(6);
	asynq_future_rele(item);
}

static void
test_future_on_done_on_computed_runs_now(void **state)
{
	asynq_future *f = asynq_const_i64(8);
	cb_arg a = { .id = 0, .ret = ASYNQ_OK, .expect = f };
	cb_arg b = { .id = 1, .ret = ASYNQ_OK, .expect = f };

	(void)state;
	assert_status(asynq_future_on_done(f, logging_cb, &a), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "0:8 ");
	assert_status(asynq_future_on_done(f, logging_cb, &b), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "0:8 1:8 ");
	ASSERT_TASK_CHECKS(4);
	asynq_future_rele(f);
}

static void
test_future_on_done_on_task_future(void **state)
{
	asynq_future *f = asynq_spawn(value_task, (void *)(intptr_t)21);
	cb_arg a = { .id = 0, .ret = ASYNQ_OK, .expect = f };

	(void)state;
	assert_status(asynq_future_on_done(f, logging_cb, &a), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "");
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "0:21 ");
	ASSERT_TASK_CHECKS(2);
	asynq_future_rele(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		FUTURE_TEST(test_future_const_i64_value),
		FUTURE_TEST(test_future_const_ptr_frees_once_on_release),
		FUTURE_TEST(test_future_const_ptr_take_skips_free),
		FUTURE_TEST(test_future_const_ptr_without_free_fn_is_borrowed),
		FUTURE_TEST(test_future_take_without_pointer_value_is_null),
		FUTURE_TEST(test_future_const_error_status_and_message),
		FUTURE_TEST(test_future_hold_keeps_value_alive),
		FUTURE_TEST(test_future_rele_n_drops_each),
		FUTURE_TEST(test_future_null_behaves_as_resource_exhausted),
		FUTURE_TEST(test_future_pending_item_has_no_status),
		FUTURE_TEST(test_future_on_done_runs_in_registration_order),
		FUTURE_TEST(test_future_on_done_failure_does_not_stop_others),
		FUTURE_TEST(test_future_on_done_on_computed_runs_now),
		FUTURE_TEST(test_future_on_done_on_task_future),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
