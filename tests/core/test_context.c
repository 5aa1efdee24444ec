/* SPDX-License-Identifier: MIT */
/*
 * Tests of contexts: resume/pause calls as tasks are switched in and out,
 * coverage of a task's children but not its siblings, failing contexts,
 * identity rather than equality, contexts entered outside tasks,
 * asynq_with_context, and non-suspending regions. Ported from Python
 * asynq's test_contexts.
 */
#include "testutil.h"

/* ---- A logging context ---------------------------------------------- */

/* Logs "+<id>" on resume and "-<id>" on pause; counts calls and catches a
 * resume of an active context or a pause of a paused one. */
typedef struct log_ctx {
	asynq_context base; /* first: the framework's part */
	char id;
	bool active;
	int resumes, pauses;
	int violations;
	int fail_resume_at, fail_pause_at; /* 1-based call to fail; 0 none */
	asynq_status fail_code;
} log_ctx;

static asynq_status
log_resume(asynq_context *c)
{
	log_ctx *l = (log_ctx *)c;

	if (l->active)
		l->violations++;
	l->active = true;
	l->resumes++;
	tu_log("+%c", l->id);
	return l->fail_resume_at == l->resumes ? l->fail_code : ASYNQ_OK;
}

static asynq_status
log_pause(asynq_context *c)
{
	log_ctx *l = (log_ctx *)c;

	if (!l->active)
		l->violations++;
	l->active = false;
	l->pauses++;
	tu_log("-%c", l->id);
	return l->fail_pause_at == l->pauses ? l->fail_code : ASYNQ_OK;
}

static const asynq_context_ops log_ops = {
	.resume = log_resume,
	.pause = log_pause,
};

static void
log_ctx_init(log_ctx *l, char id)
{
	memset(l, 0, sizeof(*l));
	asynq_context_init(&l->base, &log_ops);
	l->id = id;
}

/* The file's contexts and backend. */
static log_ctx ca, cb;
static asynq_debug_backend dbg;
static bool dbg_ready;

static int
context_setup(void **state)
{
	log_ctx_init(&ca, 'a');
	log_ctx_init(&cb, 'b');
	asynq_debug_backend_init(&dbg, "context-test", false);
	dbg_ready = true;
	return tu_setup(state);
}

static int
context_teardown(void **state)
{
	if (dbg_ready)
		asynq_debug_backend_fini(&dbg);
	dbg_ready = false;
	return tu_teardown(state);
}

#define CONTEXT_TEST(fn)                                                       \
	cmocka_unit_test_setup_teardown(fn, context_setup, context_teardown)

/* await_item awaits a fresh debug item of value v and checks its value. */
static asynq_status
await_item(asynq_task *t, int64_t v)
{
	asynq_future *item = asynq_debug_item(&dbg, v);
	asynq_status st = asynq_await(t, item);

	TCHECK(asynq_future_done(item));
	if (asynq_future_status(item) == ASYNQ_OK)
		TCHECK_INT(asynq_future_i64(item), v);
	asynq_future_rele(item);
	return st;
}

/* ---- Task bodies ---------------------------------------------------- */

static asynq_status
three_items_task(asynq_task *t, void *arg)
{
	asynq_future *child;

	(void)arg;
	for (int i = 0; i < 3; i++)
		ASYNQ_TRY(await_item(t, i));
	child = asynq_spawn(three_items_task, NULL);
	if (asynq_task_depth(t) < 2) {
		asynq_status st = asynq_await(t, child);

		asynq_future_rele(child);
		return st;
	}
	asynq_future_rele(child);
	return ASYNQ_OK;
}

static asynq_status
enter_await_exit_task(asynq_task *t, void *arg)
{
	(void)arg;
	TCHECK_STATUS(asynq_context_enter(&ca.base), ASYNQ_OK);
	TCHECK(ca.active);
	TCHECK_STATUS(await_item(t, 1), ASYNQ_OK);
	TCHECK(ca.active);
	TCHECK_STATUS(await_item(t, 2), ASYNQ_OK);
	TCHECK(ca.active);
	TCHECK_STATUS(asynq_context_exit(&ca.base), ASYNQ_OK);
	TCHECK(!ca.active);
	/* After exit the context gets no more calls. */
	TCHECK_STATUS(await_item(t, 3), ASYNQ_OK);
	return ASYNQ_OK;
}

/* Coverage: parent enters ca and awaits its child; the sibling was created
 * by the root, outside the context. */
static asynq_status
cov_child(asynq_task *t, void *arg)
{
	(void)arg;
	TCHECK(ca.active);
	TCHECK_STATUS(await_item(t, 1), ASYNQ_OK);
	TCHECK(ca.active);
	TCHECK_STATUS(await_item(t, 2), ASYNQ_OK);
	TCHECK(ca.active);
	return ASYNQ_OK;
}

static asynq_status
cov_parent(asynq_task *t, void *arg)
{
	asynq_future *child;
	asynq_status st;

	(void)arg;
	TCHECK(!ca.active);
	TCHECK_STATUS(asynq_context_enter(&ca.base), ASYNQ_OK);
	child = asynq_spawn(cov_child, NULL);
	st = asynq_await(t, child);
	TCHECK_STATUS(st, ASYNQ_OK);
	TCHECK(ca.active);
	asynq_future_rele(child);
	TCHECK_STATUS(asynq_context_exit(&ca.base), ASYNQ_OK);
	TCHECK(!ca.active);
	return st;
}

static asynq_status
cov_sibling(asynq_task *t, void *arg)
{
	(void)arg;
	TCHECK(!ca.active);
	TCHECK_STATUS(await_item(t, 3), ASYNQ_OK);
	TCHECK(!ca.active);
	TCHECK_STATUS(await_item(t, 4), ASYNQ_OK);
	TCHECK(!ca.active);
	return ASYNQ_OK;
}

static asynq_status
cov_root(asynq_task *t, void *arg)
{
	asynq_future *fs[2];
	asynq_status st;

	(void)arg;
	fs[0] = asynq_spawn(cov_parent, NULL);
	fs[1] = asynq_spawn(cov_sibling, NULL);
	st = asynq_await_all(t, fs, 2);
	TCHECK(!ca.active);
	asynq_future_rele_n(fs, 2);
	return st;
}

/* Two contexts entered in one task; ca is set up to fail. */
static asynq_status
two_contexts_task(asynq_task *t, void *arg)
{
	asynq_status want = (asynq_status)(intptr_t)arg;
	asynq_status st;

	TCHECK_STATUS(asynq_context_enter(&ca.base), ASYNQ_OK);
	TCHECK_STATUS(asynq_context_enter(&cb.base), ASYNQ_OK);
	st = await_item(t, 1);
	TCHECK_STATUS(st, want);
	TCHECK(asynq_task_error(t) != NULL);
	TCHECK_STATUS(asynq_error_code(asynq_task_error(t)), want);
	/* The other context got both of its calls. */
	TCHECK_INT(cb.pauses, 1);
	TCHECK_INT(cb.resumes, 2);
	TCHECK(cb.active);
	/* Reported once: the next await succeeds. */
	TCHECK_STATUS(await_item(t, 2), ASYNQ_OK);
	TCHECK_STATUS(asynq_context_exit(&cb.base), ASYNQ_OK);
	TCHECK_STATUS(asynq_context_exit(&ca.base), ASYNQ_OK);
	return ASYNQ_OK;
}

/* Identity: two contexts whose contents are equal. */
static log_ctx twin1, twin2;

static asynq_status
twins_task(asynq_task *t, void *arg)
{
	(void)arg;
	TCHECK_STATUS(asynq_context_enter(&twin1.base), ASYNQ_OK);
	TCHECK_STATUS(asynq_context_enter(&twin2.base), ASYNQ_OK);
	TCHECK_STATUS(await_item(t, 1), ASYNQ_OK);
	TCHECK(twin1.active);
	TCHECK(twin2.active);
	TCHECK_STATUS(asynq_context_exit(&twin2.base), ASYNQ_OK);
	TCHECK_STATUS(asynq_context_exit(&twin1.base), ASYNQ_OK);
	return ASYNQ_OK;
}

/* asynq_with_context bodies. */
static asynq_status
failing_body(void *arg)
{
	(void)arg;
	TCHECK(ca.active);
	return ASYNQ_NOT_FOUND;
}

static asynq_status
ok_body(void *arg)
{
	(void)arg;
	TCHECK(ca.active);
	return ASYNQ_OK;
}

static asynq_status
awaiting_failing_body(void *arg)
{
	asynq_task *t = asynq_task_current();

	(void)arg;
	TCHECK(t != NULL);
	TCHECK(ca.active);
	TCHECK_STATUS(await_item(t, 1), ASYNQ_OK);
	TCHECK(ca.active);
	return asynq_fail(t, ASYNQ_NOT_FOUND, "body failed");
}

static asynq_status
with_context_task(asynq_task *t, void *arg)
{
	asynq_status st;

	(void)arg;
	st = asynq_with_context(&ca.base, awaiting_failing_body, NULL);
	TCHECK_STATUS(st, ASYNQ_NOT_FOUND);
	TCHECK(!ca.active);
	TCHECK_STATUS(await_item(t, 2), ASYNQ_OK);
	TCHECK(!ca.active);
	return ASYNQ_OK;
}

/* Non-suspending regions. */
static int region_line;

static asynq_status
nonsuspending_task(asynq_task *t, void *arg)
{
	asynq_future *item = asynq_debug_item(&dbg, 8);
	char line[32];
	asynq_status st;

	(void)arg;
	asynq_nonsuspending_enter(), region_line = __LINE__;
	st = asynq_await(t, item);
	TCHECK_STATUS(st, ASYNQ_FAILED_PRECONDITION);
	TCHECK(asynq_task_error(t) != NULL);
	TCHECK_STATUS(asynq_error_code(asynq_task_error(t)),
	    ASYNQ_FAILED_PRECONDITION);
	snprintf(line, sizeof(line), "%d", region_line);
	TCHECK(strstr(asynq_error_message(asynq_task_error(t)),
	           "test_context.c") != NULL);
	TCHECK(strstr(asynq_error_message(asynq_task_error(t)), line) != NULL);
	TCHECK(!asynq_future_done(item));
	asynq_nonsuspending_exit();

	st = asynq_await(t, item);
	TCHECK_STATUS(st, ASYNQ_OK);
	TCHECK_INT(asynq_future_i64(item), 8);
	asynq_future_rele(item);
	return ASYNQ_OK;
}

static asynq_status
nested_regions_task(asynq_task *t, void *arg)
{
	asynq_future *item = asynq_debug_item(&dbg, 9);

	(void)arg;
	asynq_nonsuspending_enter();
	asynq_nonsuspending_enter();
	TCHECK_STATUS(asynq_await(t, item), ASYNQ_FAILED_PRECONDITION);
	asynq_nonsuspending_exit();
	TCHECK_STATUS(asynq_await(t, item), ASYNQ_FAILED_PRECONDITION);
	asynq_nonsuspending_exit();
	TCHECK_STATUS(asynq_await(t, item), ASYNQ_OK);
	TCHECK_INT(asynq_future_i64(item), 9);
	asynq_future_rele(item);
	return ASYNQ_OK;
}

/* ---- Tests ---------------------------------------------------------- */

static void
test_context_in_task_pauses_and_resumes_around_await(void **state)
{
	asynq_future *f;

	(void)state;
	f = asynq_spawn(enter_await_exit_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(9);
	assert_string_equal(tu_log_str(), "+a-a+a-a+a-a");
	assert_int_equal(ca.violations, 0);
	assert_int_equal(dbg.flushes, 3);
	asynq_future_rele(f);
}

static void
test_context_covers_children_not_siblings(void **state)
{
	asynq_future *f;

	(void)state;
	f = asynq_spawn(cov_root, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(20);
	assert_int_equal(ca.violations, 0);
	assert_false(ca.active);
	assert_int_equal(ca.resumes, ca.pauses);
	/* Entered, then at least one pause and resume around each of the
	 * child's two awaits, then the exit. */
	assert_true(ca.resumes >= 3);
	asynq_future_rele(f);
}

static void
test_context_failing_pause_reported_to_task(void **state)
{
	asynq_future *f;

	(void)state;
	ca.fail_pause_at = 1;
	ca.fail_code = ASYNQ_ABORTED;
	f = asynq_spawn(two_contexts_task, (void *)(intptr_t)ASYNQ_ABORTED);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(12);
	assert_int_equal(ca.violations + cb.violations, 0);
	assert_int_equal(ca.resumes, 3);
	assert_int_equal(ca.pauses, 3);
	assert_int_equal(cb.resumes, 3);
	assert_int_equal(cb.pauses, 3);
	assert_int_equal(tu_stats().context_failures, 1);
	asynq_future_rele(f);
}

static void
test_context_failing_resume_reported_to_task(void **state)
{
	asynq_future *f;

	(void)state;
	ca.fail_resume_at = 2;
	ca.fail_code = ASYNQ_PERMISSION_DENIED;
	f = asynq_spawn(two_contexts_task,
	    (void *)(intptr_t)ASYNQ_PERMISSION_DENIED);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(12);
	assert_int_equal(ca.violations + cb.violations, 0);
	assert_int_equal(ca.resumes, 3);
	assert_int_equal(cb.resumes, 3);
	assert_int_equal(tu_stats().context_failures, 1);
	asynq_future_rele(f);
}

static void
test_context_enter_returns_resume_failure_and_stays_entered(void **state)
{
	(void)state;
	ca.fail_resume_at = 1;
	ca.fail_code = ASYNQ_UNAVAILABLE;
	assert_status(asynq_context_enter(&ca.base), ASYNQ_UNAVAILABLE);
	assert_status(asynq_context_enter(&ca.base), ASYNQ_FAILED_PRECONDITION);
	assert_status(asynq_context_exit(&ca.base), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "+a-a");
}

static void
test_context_exit_returns_pause_failure(void **state)
{
	(void)state;
	ca.fail_pause_at = 1;
	ca.fail_code = ASYNQ_DATA_LOSS;
	assert_status(asynq_context_enter(&ca.base), ASYNQ_OK);
	assert_status(asynq_context_exit(&ca.base), ASYNQ_DATA_LOSS);
	/* It is detached all the same. */
	assert_status(asynq_context_enter(&ca.base), ASYNQ_OK);
	assert_status(asynq_context_exit(&ca.base), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "+a-a+a-a");
}

static void
test_context_enter_twice_fails(void **state)
{
	(void)state;
	assert_status(asynq_context_enter(&ca.base), ASYNQ_OK);
	assert_status(asynq_context_enter(&ca.base), ASYNQ_FAILED_PRECONDITION);
	assert_status(asynq_context_exit(&ca.base), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "+a-a");
}

static void
test_context_exit_out_of_order_fails(void **state)
{
	(void)state;
	assert_status(asynq_context_enter(&ca.base), ASYNQ_OK);
	assert_status(asynq_context_enter(&cb.base), ASYNQ_OK);
	assert_status(asynq_context_exit(&ca.base), ASYNQ_FAILED_PRECONDITION);
	assert_status(asynq_context_exit(&cb.base), ASYNQ_OK);
	assert_status(asynq_context_exit(&ca.base), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "+a+b-b-a");
}

static void
test_context_identity_not_equality(void **state)
{
	asynq_future *f;

	(void)state;
	log_ctx_init(&twin1, 't');
	log_ctx_init(&twin2, 't');
	assert_memory_equal(&twin1, &twin2, sizeof(twin1));
	f = asynq_spawn(twins_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(7);
	assert_int_equal(twin1.resumes, 2);
	assert_int_equal(twin1.pauses, 2);
	assert_int_equal(twin2.resumes, 2);
	assert_int_equal(twin2.pauses, 2);
	assert_int_equal(twin1.violations + twin2.violations, 0);
	asynq_future_rele(f);
}

static void
test_context_entered_outside_task_resumed_once(void **state)
{
	asynq_future *f;

	(void)state;
	assert_status(asynq_context_enter(&ca.base), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "+a");
	f = asynq_spawn(three_items_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	/* Nine flushes and many switches, no context calls. */
	assert_int_equal(dbg.flushes, 9);
	assert_string_equal(tu_log_str(), "+a");
	assert_true(ca.active);
	assert_status(asynq_context_exit(&ca.base), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "+a-a");
	asynq_future_rele(f);
}

static void
test_context_with_context_exits_when_fn_fails(void **state)
{
	(void)state;
	assert_status(asynq_with_context(&ca.base, failing_body, NULL),
	    ASYNQ_NOT_FOUND);
	ASSERT_TASK_CHECKS(1);
	assert_string_equal(tu_log_str(), "+a-a");
	assert_false(ca.active);
	/* It was exited: entering again works. */
	assert_status(asynq_context_enter(&ca.base), ASYNQ_OK);
	assert_status(asynq_context_exit(&ca.base), ASYNQ_OK);
}

static void
test_context_with_context_returns_context_failure(void **state)
{
	(void)state;
	ca.fail_pause_at = 1;
	ca.fail_code = ASYNQ_ABORTED;
	assert_status(asynq_with_context(&ca.base, ok_body, NULL),
	    ASYNQ_ABORTED);
	ASSERT_TASK_CHECKS(1);
	assert_string_equal(tu_log_str(), "+a-a");
	/* fn's own failure wins over the context's. */
	ca.fail_pause_at = 2;
	assert_status(asynq_with_context(&ca.base, failing_body, NULL),
	    ASYNQ_NOT_FOUND);
	assert_string_equal(tu_log_str(), "+a-a+a-a");
}

static void
test_context_with_context_in_task_exits_when_fn_fails(void **state)
{
	asynq_future *f;

	(void)state;
	f = asynq_spawn(with_context_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(9);
	assert_string_equal(tu_log_str(), "+a-a+a-a");
	assert_int_equal(ca.violations, 0);
	asynq_future_rele(f);
}

static void
test_context_nonsuspending_await_fails(void **state)
{
	asynq_future *f;

	(void)state;
	f = asynq_spawn(nonsuspending_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(8);
	assert_int_equal(dbg.flushes, 1);
	asynq_future_rele(f);
}

static void
test_context_nonsuspending_regions_nest(void **state)
{
	asynq_future *f;

	(void)state;
	f = asynq_spawn(nested_regions_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(4);
	asynq_future_rele(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		CONTEXT_TEST(
		    test_context_in_task_pauses_and_resumes_around_await),
		CONTEXT_TEST(test_context_covers_children_not_siblings),
		CONTEXT_TEST(test_context_failing_pause_reported_to_task),
		CONTEXT_TEST(test_context_failing_resume_reported_to_task),
		CONTEXT_TEST(
		    test_context_enter_returns_resume_failure_and_stays_entered),
		CONTEXT_TEST(test_context_exit_returns_pause_failure),
		CONTEXT_TEST(test_context_enter_twice_fails),
		CONTEXT_TEST(test_context_exit_out_of_order_fails),
		CONTEXT_TEST(test_context_identity_not_equality),
		CONTEXT_TEST(test_context_entered_outside_task_resumed_once),
		CONTEXT_TEST(test_context_with_context_exits_when_fn_fails),
		CONTEXT_TEST(test_context_with_context_returns_context_failure),
		CONTEXT_TEST(
		    test_context_with_context_in_task_exits_when_fn_fails),
		CONTEXT_TEST(test_context_nonsuspending_await_fails),
		CONTEXT_TEST(test_context_nonsuspending_regions_nest),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
