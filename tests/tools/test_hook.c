/* SPDX-License-Identifier: MIT */
/*
 * The event hook and calls with a context, ported from asynq's
 * test_async_event_hook and test_call_with_context: every handler runs even
 * when some fail and the first failure is reported; a context applied to one
 * call covers that call and not the tasks running beside it.
 */
#include "tools_testutil.h"

typedef struct event {
	int n_args;
	int64_t args[3];
} event;

static asynq_status
handler1(asynq_task *t, void *harg, void *ev)
{
	(void)harg;
	event *e = ev;
	TCHECK_INT(tt_item(t, 1), 1); /* an async handler */
	if (e->n_args == 0)
		return asynq_fail(t, ASYNQ_INVALID_ARGUMENT,
		    "handler1: no args");
	tu_log("handler1(%lld) ", (long long)e->args[0]);
	return ASYNQ_OK;
}

static asynq_status
handler2(asynq_task *t, void *harg, void *ev)
{
	(void)t;
	(void)harg;
	event *e = ev;
	tu_log("handler2(%d) ", e->n_args);
	return ASYNQ_OK;
}

static asynq_status
handler_aborts(asynq_task *t, void *harg, void *ev)
{
	(void)harg;
	(void)ev;
	tu_log("aborts ");
	return asynq_fail(t, ASYNQ_ABORTED, "aborts");
}

static void
test_hook_trigger_runs_all(void **state)
{
	(void)state;
	asynq_event_hook h;
	asynq_hook_init(&h);
	assert_status(asynq_hook_subscribe(&h, handler1, NULL), ASYNQ_OK);
	assert_status(asynq_hook_subscribe(&h, handler2, NULL), ASYNQ_OK);
	event e = { 3, { 1, 2, 3 } };
	assert_status(asynq_hook_trigger(NULL, &h, &e), ASYNQ_OK);
	assert_contains(tu_log_str(), "handler1(1) ");
	assert_contains(tu_log_str(), "handler2(3) ");
	assert_status(asynq_hook_unsubscribe(&h, handler1, NULL), ASYNQ_OK);
	assert_status(asynq_hook_unsubscribe(&h, handler1, NULL),
	    ASYNQ_NOT_FOUND);
	tu_log_clear();
	assert_status(asynq_hook_trigger(NULL, &h, &e), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "handler2(3) ");
	asynq_hook_fini(&h);
	/* An empty hook does nothing. */
	asynq_hook_init(&h);
	assert_status(asynq_hook_trigger(NULL, &h, &e), ASYNQ_OK);
	asynq_hook_fini(&h);
}

static asynq_status
async_trigger(asynq_task *t, void *arg)
{
	event e = { 2, { 2, 3 } };
	TCHECK_STATUS(asynq_hook_trigger(t, arg, &e), ASYNQ_OK);
	return ASYNQ_OK;
}

static void
test_hook_trigger_inside_task(void **state)
{
	(void)state;
	asynq_event_hook h;
	asynq_hook_init(&h);
	asynq_hook_subscribe(&h, handler1, NULL);
	asynq_hook_subscribe(&h, handler2, NULL);
	asynq_future *f = asynq_spawn(async_trigger, &h);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	ASSERT_TASK_CHECKS(2);
	assert_contains(tu_log_str(), "handler1(2) ");
	assert_contains(tu_log_str(), "handler2(2) ");
	asynq_hook_fini(&h);
}

static void
test_hook_failure_does_not_stop_others(void **state)
{
	(void)state;
	event none = { 0, { 0 } };
	/* In either order, handler2 runs and handler1's failure comes out. */
	for (int order = 0; order < 2; order++) {
		asynq_event_hook h;
		asynq_hook_init(&h);
		asynq_hook_subscribe(&h, order ? handler2 : handler1, NULL);
		asynq_hook_subscribe(&h, order ? handler1 : handler2, NULL);
		tu_log_clear();
		assert_status(asynq_hook_trigger(NULL, &h, &none),
		    ASYNQ_INVALID_ARGUMENT);
		assert_string_equal(tu_log_str(), "handler2(0) ");
		asynq_hook_fini(&h);
	}
	/* Two failures: the first in subscription order is reported. */
	asynq_event_hook h;
	asynq_hook_init(&h);
	asynq_hook_subscribe(&h, handler_aborts, NULL);
	asynq_hook_subscribe(&h, handler1, NULL);
	asynq_hook_subscribe(&h, handler2, NULL);
	tu_log_clear();
	assert_status(asynq_hook_trigger(NULL, &h, &none), ASYNQ_ABORTED);
	assert_contains(tu_log_str(), "aborts ");
	assert_contains(tu_log_str(), "handler2(0) ");
	asynq_hook_fini(&h);
	assert_int_equal(tu_stats().tasks_live, 0);
}

/* ---- call with context -------------------------------------------------- */

static bool is_on;

static asynq_status
ctx_resume(asynq_context *c)
{
	(void)c;
	is_on = true;
	return ASYNQ_OK;
}

static asynq_status
ctx_pause(asynq_context *c)
{
	(void)c;
	is_on = false;
	return ASYNQ_OK;
}

static const asynq_context_ops ctx_ops = { ctx_resume, ctx_pause };

/* asynq's assert_state: awaits a lookup, then checks the flag. */
static asynq_status
assert_state(asynq_task *t, void *arg)
{
	bool want = arg != NULL;
	TCHECK_INT(tt_item(t, 5), 5);
	TCHECK_INT(is_on, want);
	return asynq_return_i64(t, is_on);
}

static void
test_hook_call_with_context_covers_one_call(void **state)
{
	(void)state;
	asynq_context ctx;
	asynq_context_init(&ctx, &ctx_ops);
	is_on = false;
	/* Side by side: one call in the context, one outside it. */
	asynq_future *fs[2] = {
		asynq_spawn(assert_state, NULL),
		asynq_call_with_context(&ctx, assert_state, (void *)1, NULL),
	};
	assert_status(asynq_wait_all(fs, 2), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(fs[0]), 0);
	assert_int_equal(asynq_future_i64(fs[1]), 1);
	asynq_future_rele_n(fs, 2);
	ASSERT_TASK_CHECKS(4);
	assert_false(is_on);
	assert_false(ctx.entered);
	assert_int_equal(asynq_debug_default()->flushes, 1);
}

static void
test_hook_call_with_context_already_entered(void **state)
{
	(void)state;
	asynq_context ctx;
	asynq_context_init(&ctx, &ctx_ops);
	assert_status(asynq_context_enter(&ctx), ASYNQ_OK);
	asynq_future *f =
	    asynq_call_with_context(&ctx, assert_state, (void *)1, NULL);
	assert_status(asynq_wait(f), ASYNQ_FAILED_PRECONDITION);
	asynq_future_rele(f);
	assert_status(asynq_context_exit(&ctx), ASYNQ_OK);
	assert_false(is_on);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TT_TEST(test_hook_trigger_runs_all),
		TT_TEST(test_hook_trigger_inside_task),
		TT_TEST(test_hook_failure_does_not_stop_others),
		TT_TEST(test_hook_call_with_context_covers_one_call),
		TT_TEST(test_hook_call_with_context_already_entered),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
