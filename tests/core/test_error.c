/* SPDX-License-Identifier: MIT */
/*
 * Tests of errors: the status table, error values (messages, causes,
 * reference counts, NULL), failing tasks, ASYNQ_TRY propagation through
 * several tasks, the asynq stack captured at the point of failure and its
 * traceback text.
 */
#include "testutil.h"

/* ---- Task bodies ---------------------------------------------------- */

static asynq_status
fail_task(asynq_task *t, void *arg)
{
	(void)arg;
	return asynq_fail(t, ASYNQ_NOT_FOUND, "no user %d", 42);
}

/* Three levels: outer awaits middle awaits inner, which fails. Each level
 * records the line it spawned the next one on, and how far it got. */
static int middle_line, inner_line;
static int after_try; /* incremented only past a successful ASYNQ_TRY */
static asynq_task *middle_task;

static asynq_status
err_inner_task(asynq_task *t, void *arg)
{
	(void)arg;
	TCHECK_INT(asynq_task_depth(t), 2);
	return asynq_fail(t, ASYNQ_PERMISSION_DENIED, "inner failed %d", 7);
}

static asynq_status
err_middle_task(asynq_task *t, void *arg)
{
	asynq_future *child;
	asynq_status st;

	(void)arg;
	middle_task = t;
	child = asynq_spawn(err_inner_task, NULL), inner_line = __LINE__;
	st = asynq_await(t, child);
	asynq_future_rele(child);
	TCHECK_STATUS(st, ASYNQ_PERMISSION_DENIED);
	TCHECK(asynq_task_error(t) != NULL);
	TCHECK(strcmp(asynq_error_message(asynq_task_error(t)),
	           "inner failed 7") == 0);
	ASYNQ_TRY(st);
	after_try++;
	return ASYNQ_OK;
}

static asynq_status
err_outer_task(asynq_task *t, void *arg)
{
	asynq_future *child;
	asynq_status st;

	(void)arg;
	child = asynq_spawn(err_middle_task, NULL), middle_line = __LINE__;
	st = asynq_await(t, child);
	asynq_future_rele(child);
	ASYNQ_TRY(st);
	after_try++;
	return ASYNQ_OK;
}

static int outer_line;

/* spawn_outer spawns the three levels and records the line. */
static asynq_future *
spawn_outer(void)
{
	asynq_future *f;

	f = asynq_spawn(err_outer_task, NULL), outer_line = __LINE__;
	return f;
}

/* A task that handles its child's error and succeeds. */
static asynq_status
recovering_task(asynq_task *t, void *arg)
{
	asynq_future *f = asynq_const_error(
	    asynq_error_alloc(ASYNQ_ALREADY_EXISTS, "dup %s", "row"));
	asynq_status st = asynq_await(t, f);

	(void)arg;
	TCHECK_STATUS(st, ASYNQ_ALREADY_EXISTS);
	TCHECK(asynq_task_error(t) != NULL);
	TCHECK_STATUS(asynq_error_code(asynq_task_error(t)),
	    ASYNQ_ALREADY_EXISTS);
	TCHECK(
	    strcmp(asynq_error_message(asynq_task_error(t)), "dup row") == 0);
	asynq_future_rele(f);
	return asynq_return_i64(t, 1);
}

/* A task that wraps its child's error. */
static asynq_status
wrapping_task(asynq_task *t, void *arg)
{
	asynq_future *child = asynq_spawn(fail_task, NULL);
	asynq_status st = asynq_await(t, child);

	(void)arg;
	asynq_future_rele(child);
	if (st == ASYNQ_OK)
		return ASYNQ_OK;
	return asynq_fail_with(t,
	    asynq_error_wrap(asynq_task_error(t), ASYNQ_UNAVAILABLE,
	        "while loading %s", "profile"));
}

static asynq_status
fail_with_task(asynq_task *t, void *arg)
{
	(void)arg;
	return asynq_fail_with(t, asynq_error_alloc(ASYNQ_ABORTED, "gave up"));
}

static asynq_error *
valloc_helper(asynq_status code, const char *fmt, ...)
{
	asynq_error *e;
	va_list ap;

	va_start(ap, fmt);
	e = asynq_error_valloc(code, fmt, ap);
	va_end(ap);
	return e;
}

/* format_all returns the traceback of e in a malloc'd string. */
static char *
format_all(const asynq_error *e)
{
	size_t n = asynq_error_format(e, NULL, 0);
	char *buf = malloc(n + 1);

	assert_non_null(buf);
	assert_int_equal(asynq_error_format(e, buf, n + 1), n);
	assert_int_equal(strlen(buf), n);
	return buf;
}

/* ---- Tests ---------------------------------------------------------- */

static void
test_error_strerror_every_code(void **state)
{
#define EXPECT_ROW(name, num, desc) { ASYNQ_##name, num, #name, desc },
	static const struct {
		asynq_status code;
		int num;
		const char *name, *desc;
	} rows[] = { ASYNQ_STATUS_LIST(EXPECT_ROW) };
#undef EXPECT_ROW

	(void)state;
	assert_int_equal(sizeof(rows) / sizeof(rows[0]), ASYNQ_STATUS_COUNT);
	for (int i = 0; i < ASYNQ_STATUS_COUNT; i++) {
		assert_int_equal(rows[i].code, i);
		assert_int_equal(rows[i].num, i);
		assert_string_equal(asynq_strerror((asynq_status)i),
		    rows[i].desc);
		assert_string_equal(asynq_status_name((asynq_status)i),
		    rows[i].name);
	}
	/* Spot checks against gRPC's spelling. */
	assert_string_equal(asynq_status_name(ASYNQ_OK), "OK");
	assert_string_equal(asynq_status_name(ASYNQ_DEADLINE_EXCEEDED),
	    "DEADLINE_EXCEEDED");
	assert_string_equal(asynq_status_name(ASYNQ_UNAUTHENTICATED),
	    "UNAUTHENTICATED");
	assert_string_equal(asynq_strerror(ASYNQ_NOT_FOUND), "not found");
	assert_string_equal(asynq_strerror(ASYNQ_INTERNAL), "internal error");
	assert_int_equal(ASYNQ_UNAUTHENTICATED, 16);
}

static void
test_error_strerror_out_of_range(void **state)
{
	static const int bad[] = { ASYNQ_STATUS_COUNT, 99, -1, 1 << 30 };

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		assert_string_equal(asynq_strerror((asynq_status)bad[i]),
		    "unknown status");
		assert_string_equal(asynq_status_name((asynq_status)bad[i]),
		    "UNKNOWN");
	}
}

static void
test_error_alloc_outside_task_has_no_frames(void **state)
{
	asynq_error *e =
	    asynq_error_alloc(ASYNQ_OUT_OF_RANGE, "index %d of %s", 12, "list");
	const char *file = "unset";
	int line = -1;

	(void)state;
	assert_non_null(e);
	assert_status(asynq_error_code(e), ASYNQ_OUT_OF_RANGE);
	assert_string_equal(asynq_error_message(e), "index 12 of list");
	assert_null(asynq_error_cause(e));
	assert_int_equal(asynq_error_frames(e), 0);
	assert_null(asynq_error_frame(e, 0, &file, &line));
	asynq_error_rele(e);
}

static void
test_error_valloc(void **state)
{
	asynq_error *e = valloc_helper(ASYNQ_DATA_LOSS, "%s-%d", "crc", 3);

	(void)state;
	assert_status(asynq_error_code(e), ASYNQ_DATA_LOSS);
	assert_string_equal(asynq_error_message(e), "crc-3");
	asynq_error_rele(e);
}

static void
test_error_hold_and_rele(void **state)
{
	asynq_error *e = asynq_error_alloc(ASYNQ_ABORTED, "held");

	(void)state;
	assert_ptr_equal(asynq_error_hold(e), e);
	asynq_error_rele(e);
	/* Still alive through the second reference. */
	assert_string_equal(asynq_error_message(e), "held");
	asynq_error_rele(e);
	asynq_error_rele(NULL);
}

static void
test_error_null_is_resource_exhausted(void **state)
{
	char buf[256];
	size_t n;

	(void)state;
	assert_status(asynq_error_code(NULL), ASYNQ_RESOURCE_EXHAUSTED);
	assert_non_null(asynq_error_message(NULL));
	assert_null(asynq_error_cause(NULL));
	assert_int_equal(asynq_error_frames(NULL), 0);
	assert_null(asynq_error_hold(NULL));
	n = asynq_error_format(NULL, buf, sizeof(buf));
	assert_true(n > 0);
	assert_int_equal(strlen(buf), n < sizeof(buf) ? n : sizeof(buf) - 1);
	if (strstr(buf, "RESOURCE_EXHAUSTED") == NULL)
		assert_contains(buf, "resource exhausted");
}

static void
test_error_fail_inside_task(void **state)
{
	asynq_future *f = asynq_spawn(fail_task, NULL);
	asynq_error *e;
	const char *file = NULL;
	int line = 0;

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_NOT_FOUND);
	assert_true(asynq_future_done(f));
	assert_status(asynq_future_status(f), ASYNQ_NOT_FOUND);
	e = asynq_future_error(f);
	assert_non_null(e);
	assert_status(asynq_error_code(e), ASYNQ_NOT_FOUND);
	assert_string_equal(asynq_error_message(e), "no user 42");
	assert_int_equal(asynq_error_frames(e), 1);
	assert_string_equal(asynq_error_frame(e, 0, &file, &line), "fail_task");
	assert_non_null(file);
	assert_contains(file, "test_error.c");
	assert_int_equal(asynq_future_i64(f), 0);
	asynq_future_rele(f);
}

static void
test_error_task_error_kept_after_finish(void **state)
{
	asynq_future *f = asynq_spawn(fail_task, NULL);
	asynq_task *t = asynq_future_task(f);

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_NOT_FOUND);
	/* core.h: asynq_task_error returns t's last error; the task's future
	 * is still held, so t is alive and its last error was "no user 42". */
	assert_non_null(asynq_task_error(t));
	assert_status(asynq_error_code(asynq_task_error(t)), ASYNQ_NOT_FOUND);
	assert_string_equal(asynq_error_message(asynq_task_error(t)),
	    "no user 42");
	asynq_future_rele(f);
}

static void
test_error_try_propagates_through_three_levels(void **state)
{
	asynq_future *f;
	asynq_error *e;

	(void)state;
	after_try = 0;
	f = spawn_outer();
	assert_status(asynq_wait(f), ASYNQ_PERMISSION_DENIED);
	ASSERT_TASK_CHECKS(4);
	assert_int_equal(after_try, 0);
	e = asynq_future_error(f);
	assert_non_null(e);
	assert_status(asynq_error_code(e), ASYNQ_PERMISSION_DENIED);
	assert_string_equal(asynq_error_message(e), "inner failed 7");
	asynq_future_rele(f);
}

static void
test_error_frames_name_tasks_and_files(void **state)
{
	static const char *const names[] = { "err_inner_task",
		"err_middle_task", "err_outer_task" };
	const int *lines[] = { &inner_line, &middle_line, &outer_line };
	const char *file;
	asynq_future *f;
	asynq_error *e;
	int line;

	(void)state;
	f = spawn_outer();
	assert_status(asynq_wait(f), ASYNQ_PERMISSION_DENIED);
	e = asynq_future_error(f);
	assert_int_equal(asynq_error_frames(e), 3);
	for (size_t i = 0; i < 3; i++) {
		const char *name = asynq_error_frame(e, i, &file, &line);

		assert_non_null(name);
		assert_string_equal(name, names[i]);
		assert_non_null(file);
		assert_contains(file, "tests/core/test_error.c");
		assert_int_equal(line, *lines[i]);
	}
	assert_null(asynq_error_frame(e, 3, &file, &line));
	asynq_future_rele(f);
}

static void
test_error_format_is_a_traceback(void **state)
{
	asynq_future *f;
	char *text, small[16];
	const char *outer, *middle, *inner;
	size_t n;

	(void)state;
	f = spawn_outer();
	assert_status(asynq_wait(f), ASYNQ_PERMISSION_DENIED);
	text = format_all(asynq_future_error(f));
	assert_contains(text, "inner failed 7");
	assert_contains(text, "test_error.c");
	outer = strstr(text, "err_outer_task");
	middle = strstr(text, "err_middle_task");
	inner = strstr(text, "err_inner_task");
	assert_non_null(outer);
	assert_non_null(middle);
	assert_non_null(inner);
	/* Innermost task last, like a Python traceback. */
	assert_true(outer < middle);
	assert_true(middle < inner);
	if (strstr(text, "PERMISSION_DENIED") == NULL)
		assert_contains(text, "permission denied");

	/* Truncation works like snprintf. */
	n = asynq_error_format(asynq_future_error(f), small, sizeof(small));
	assert_int_equal(n, strlen(text));
	assert_int_equal(strlen(small), sizeof(small) - 1);
	assert_memory_equal(small, text, sizeof(small) - 1);
	free(text);
	asynq_future_rele(f);
}

static void
test_error_print_writes_the_traceback(void **state)
{
	asynq_future *f;
	char *buf = NULL;
	size_t len = 0;
	FILE *mf;

	(void)state;
	f = spawn_outer();
	assert_status(asynq_wait(f), ASYNQ_PERMISSION_DENIED);
	mf = open_memstream(&buf, &len);
	assert_non_null(mf);
	asynq_error_print(asynq_future_error(f), mf);
	fclose(mf);
	assert_contains(buf, "inner failed 7");
	assert_contains(buf, "err_outer_task");
	assert_contains(buf, "err_inner_task");
	free(buf);
	asynq_future_rele(f);
}

static void
test_error_wrap_cause_chain(void **state)
{
	asynq_error *e1, *e2, *e3;
	char *text;
	const char *a, *b, *c;

	(void)state;
	e1 = asynq_error_alloc(ASYNQ_NOT_FOUND, "row %d missing", 5);
	e2 = asynq_error_wrap(e1, ASYNQ_UNAVAILABLE, "lookup failed");
	asynq_error_rele(e1); /* e2 holds its own reference */
	e3 = asynq_error_wrap(e2, ASYNQ_INTERNAL, "request %s", "r1");

	assert_status(asynq_error_code(e3), ASYNQ_INTERNAL);
	assert_string_equal(asynq_error_message(e3), "request r1");
	assert_ptr_equal(asynq_error_cause(e3), e2);
	assert_status(asynq_error_code(asynq_error_cause(e3)),
	    ASYNQ_UNAVAILABLE);
	assert_non_null(asynq_error_cause(e2));
	assert_status(asynq_error_code(asynq_error_cause(e2)), ASYNQ_NOT_FOUND);
	assert_string_equal(asynq_error_message(asynq_error_cause(e2)),
	    "row 5 missing");
	assert_null(asynq_error_cause(asynq_error_cause(e2)));

	/* The traceback shows the error, then each cause. */
	text = format_all(e3);
	a = strstr(text, "request r1");
	b = strstr(text, "lookup failed");
	c = strstr(text, "row 5 missing");
	assert_non_null(a);
	assert_non_null(b);
	assert_non_null(c);
	assert_true(a < b);
	assert_true(b < c);
	free(text);
	asynq_error_rele(e2);
	/* e3's cause is still alive after the caller's e2 reference went. */
	assert_string_equal(asynq_error_message(asynq_error_cause(e3)),
	    "lookup failed");
	asynq_error_rele(e3);
}

static void
test_error_wrap_awaited_error_in_task(void **state)
{
	asynq_future *f = asynq_spawn(wrapping_task, NULL);
	asynq_error *e, *cause;
	const char *file;
	int line;

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_UNAVAILABLE);
	e = asynq_future_error(f);
	assert_string_equal(asynq_error_message(e), "while loading profile");
	cause = asynq_error_cause(e);
	assert_non_null(cause);
	assert_status(asynq_error_code(cause), ASYNQ_NOT_FOUND);
	assert_string_equal(asynq_error_message(cause), "no user 42");
	/* The wrapping error was made in wrapping_task, the cause in its
	 * child. */
	assert_string_equal(asynq_error_frame(e, 0, &file, &line),
	    "wrapping_task");
	assert_string_equal(asynq_error_frame(cause, 0, &file, &line),
	    "fail_task");
	assert_string_equal(asynq_error_frame(cause, 1, &file, &line),
	    "wrapping_task");
	assert_int_equal(asynq_error_frames(cause), 2);
	asynq_future_rele(f);
}

static void
test_error_fail_with_moves_error(void **state)
{
	asynq_future *f = asynq_spawn(fail_with_task, NULL);

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_ABORTED);
	assert_string_equal(asynq_error_message(asynq_future_error(f)),
	    "gave up");
	asynq_future_rele(f);
}

static void
test_error_task_recovers_from_awaited_error(void **state)
{
	asynq_future *f = asynq_spawn(recovering_task, NULL);

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(4);
	assert_status(asynq_future_status(f), ASYNQ_OK);
	assert_null(asynq_future_error(f));
	assert_int_equal(asynq_future_i64(f), 1);
	asynq_future_rele(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_error_strerror_every_code),
		TU_TEST(test_error_strerror_out_of_range),
		TU_TEST(test_error_alloc_outside_task_has_no_frames),
		TU_TEST(test_error_valloc),
		TU_TEST(test_error_hold_and_rele),
		TU_TEST(test_error_null_is_resource_exhausted),
		TU_TEST(test_error_fail_inside_task),
		TU_TEST(test_error_task_error_kept_after_finish),
		TU_TEST(test_error_try_propagates_through_three_levels),
		TU_TEST(test_error_frames_name_tasks_and_files),
		TU_TEST(test_error_format_is_a_traceback),
		TU_TEST(test_error_print_writes_the_traceback),
		TU_TEST(test_error_wrap_cause_chain),
		TU_TEST(test_error_wrap_awaited_error_in_task),
		TU_TEST(test_error_fail_with_moves_error),
		TU_TEST(test_error_task_recovers_from_awaited_error),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
