/* SPDX-License-Identifier: MIT */
/*
 * Tests of tasks: lazy start, await_all's shape and order, dependencies
 * cleared on every resume, depth-first start order, sibling errors, early
 * returns, pointer values and their free functions, asynq_wait from outside
 * and from inside a task. Ported from Python asynq's test_scheduler,
 * test_async_task and test_base behaviours.
 */
#include "testutil.h"

/* The file's debug backend; the teardown finishes it before the scheduler. */
static asynq_debug_backend dbg;
static bool dbg_ready;

static void
dbg_init(void)
{
	asynq_debug_backend_init(&dbg, "task-test", false);
	dbg_ready = true;
}

static int
task_teardown(void **state)
{
	if (dbg_ready)
		asynq_debug_backend_fini(&dbg);
	dbg_ready = false;
	return tu_teardown(state);
}

#define TASK_TEST(fn)                                                          \
	cmocka_unit_test_setup_teardown(fn, tu_setup, task_teardown)

/* Pointer values and their frees. */
static int free_calls;
static void *freed[8];

static void
counting_free(void *p)
{
	if (free_calls < 8)
		freed[free_calls] = p;
	free_calls++;
	free(p);
}

/* ---- Task bodies ---------------------------------------------------- */

static asynq_status
value_task(asynq_task *t, void *arg)
{
	return asynq_return_i64(t, (int64_t)(intptr_t)arg);
}

static int lazy_runs;

static asynq_status
lazy_task(asynq_task *t, void *arg)
{
	(void)arg;
	lazy_runs++;
	return asynq_return_i64(t, 100 + lazy_runs);
}

/* item_task awaits one debug item of value arg and returns ten times it. */
static asynq_status
item_task(asynq_task *t, void *arg)
{
	asynq_future *item = asynq_debug_item(&dbg, (int64_t)(intptr_t)arg);
	asynq_status st = asynq_await(t, item);
	int64_t v = asynq_future_i64(item);

	asynq_future_rele(item);
	ASYNQ_TRY(st);
	return asynq_return_i64(t, v * 10);
}

/* await_all over constants, tasks and batch items, mixed. */
static asynq_future *mixed[6];

static asynq_status
mixed_root_task(asynq_task *t, void *arg)
{
	asynq_status st;

	(void)arg;
	mixed[0] = asynq_const_i64(1);
	mixed[1] = asynq_spawn(value_task, (void *)(intptr_t)2);
	mixed[2] = asynq_debug_item(&dbg, 3);
	mixed[3] = asynq_spawn(item_task, (void *)(intptr_t)4);
	mixed[4] = asynq_const_i64(5);
	mixed[5] = asynq_debug_item(&dbg, 6);
	st = asynq_await_all(t, mixed, 6);
	TCHECK_STATUS(st, ASYNQ_OK);
	for (int i = 0; i < 6; i++)
		TCHECK(asynq_future_done(mixed[i]));
	TCHECK_INT(asynq_future_i64(mixed[0]), 1);
	TCHECK_INT(asynq_future_i64(mixed[1]), 2);
	TCHECK_INT(asynq_future_i64(mixed[2]), 3);
	TCHECK_INT(asynq_future_i64(mixed[3]), 40);
	TCHECK_INT(asynq_future_i64(mixed[4]), 5);
	TCHECK_INT(asynq_future_i64(mixed[5]), 6);
	return asynq_return_i64(t, 7);
}

/* Dependencies: a target that awaits in several shapes, an observer that
 * looks at it (and at the root) while they are blocked. */
static asynq_task *deps_target_task;
static asynq_task *deps_root;

static asynq_status
deps_target(asynq_task *t, void *arg)
{
	asynq_future *fs[3];
	asynq_future *item;

	(void)arg;
	TCHECK_INT(asynq_task_dependencies(t), 0);

	item = asynq_debug_item(&dbg, 1);
	TCHECK_STATUS(asynq_await(t, item), ASYNQ_OK);
	TCHECK_INT(asynq_task_dependencies(t), 0);
	asynq_future_rele(item);

	for (int i = 0; i < 3; i++)
		fs[i] = asynq_debug_item(&dbg, 2 + i);
	TCHECK_STATUS(asynq_await_all(t, fs, 3), ASYNQ_OK);
	TCHECK_INT(asynq_task_dependencies(t), 0);
	asynq_future_rele_n(fs, 3);

	fs[0] = asynq_const_i64(5);
	fs[1] = asynq_spawn(item_task, (void *)(intptr_t)6);
	fs[2] = asynq_debug_item(&dbg, 7);
	TCHECK_STATUS(asynq_await_all(t, fs, 3), ASYNQ_OK);
	TCHECK_INT(asynq_task_dependencies(t), 0);
	asynq_future_rele_n(fs, 3);

	/* Awaiting a computed future leaves no dependency either. */
	fs[0] = asynq_const_i64(8);
	TCHECK_STATUS(asynq_await(t, fs[0]), ASYNQ_OK);
	TCHECK_INT(asynq_task_dependencies(t), 0);
	asynq_future_rele(fs[0]);
	return asynq_return_i64(t, 1);
}

static asynq_status
deps_observer(asynq_task *t, void *arg)
{
	(void)arg;
	TCHECK_INT(asynq_task_dependencies(t), 0);
	/* The target started first and is blocked on exactly one item. */
	TCHECK_INT(asynq_task_dependencies(deps_target_task), 1);
	/* The root is blocked on the target and on this task. */
	TCHECK(asynq_task_dependencies(deps_root) > 0);
	return asynq_return_i64(t, 2);
}

static asynq_status
deps_root_task(asynq_task *t, void *arg)
{
	asynq_future *fs[2];
	asynq_status st;

	(void)arg;
	deps_root = t;
	fs[0] = asynq_spawn(deps_target, NULL);
	deps_target_task = asynq_future_task(fs[0]);
	TCHECK(deps_target_task != NULL);
	fs[1] = asynq_spawn(deps_observer, NULL);
	st = asynq_await_all(t, fs, 2);
	TCHECK_STATUS(st, ASYNQ_OK);
	TCHECK_INT(asynq_task_dependencies(t), 0);
	TCHECK_INT(asynq_task_dependencies(deps_target_task), 0);
	asynq_future_rele_n(fs, 2);
	return st;
}

/* Start order: every task logs its id when it starts. */
static int starts[16];
static int n_starts;

static asynq_status
ordered_child(asynq_task *t, void *arg)
{
	int id = (int)(intptr_t)arg;
	asynq_future *item;
	asynq_status st;

	starts[n_starts++] = id;
	item = asynq_debug_item(&dbg, id);
	st = asynq_await(t, item);
	asynq_future_rele(item);
	ASYNQ_TRY(st);
	return asynq_return_i64(t, id);
}

static asynq_status
ordered_root(asynq_task *t, void *arg)
{
	asynq_future *fs[5];
	asynq_status st;

	(void)arg;
	for (int i = 0; i < 5; i++)
		fs[i] = asynq_spawn(ordered_child, (void *)(intptr_t)i);
	/* Spawning started nothing. */
	TCHECK_INT(n_starts, 0);
	st = asynq_await_all(t, fs, 5);
	for (int i = 0; i < 5; i++)
		TCHECK_INT(asynq_future_i64(fs[i]), i);
	asynq_future_rele_n(fs, 5);
	return st;
}

/* Depth-first: id 10 awaits 11 and 12, id 20 awaits 21; root awaits 10, 20.
 * None of them blocks on a batch. */
static asynq_status
df_task(asynq_task *t, void *arg)
{
	int id = (int)(intptr_t)arg;
	int n = id == 0 ? 2 : id == 10 ? 2 : id == 20 ? 1 : 0;
	asynq_future *fs[2];
	asynq_status st;

	starts[n_starts++] = id;
	for (int i = 0; i < n; i++)
		fs[i] = asynq_spawn(df_task,
		    (void *)(intptr_t)(id == 0 ? 10 * (i + 1) : id + i + 1));
	st = asynq_await_all(t, fs, (size_t)n);
	asynq_future_rele_n(fs, (size_t)n);
	ASYNQ_TRY(st);
	return asynq_return_i64(t, id);
}

/* Sibling errors: child modes 0 = value after an item, 1 = NOT_FOUND after
 * an item, 2 = INVALID_ARGUMENT at once (before child 1 fails). */
static int sib_finished[4];
static asynq_future *sib[4];

static asynq_status
sib_child(asynq_task *t, void *arg)
{
	int id = (int)(intptr_t)arg;
	int mode = id == 1 ? 1 : id == 2 ? 2 : 0;
	asynq_future *item;
	asynq_status st;

	if (mode == 2) {
		sib_finished[id] = 1;
		return asynq_fail(t, ASYNQ_INVALID_ARGUMENT, "child %d invalid",
		    id);
	}
	item = asynq_debug_item(&dbg, 100 + id);
	st = asynq_await(t, item);
	asynq_future_rele(item);
	ASYNQ_TRY(st);
	sib_finished[id] = 1;
	if (mode == 1)
		return asynq_fail(t, ASYNQ_NOT_FOUND, "child %d not found", id);
	return asynq_return_i64(t, 100 + id);
}

static asynq_status
sib_root(asynq_task *t, void *arg)
{
	asynq_status st;

	(void)arg;
	for (int i = 0; i < 4; i++)
		sib[i] = asynq_spawn(sib_child, (void *)(intptr_t)i);
	st = asynq_await_all(t, sib, 4);
	TCHECK_STATUS(st, ASYNQ_NOT_FOUND);
	TCHECK(asynq_task_error(t) != NULL);
	TCHECK_STATUS(asynq_error_code(asynq_task_error(t)), ASYNQ_NOT_FOUND);
	TCHECK(strcmp(asynq_error_message(asynq_task_error(t)),
	           "child 1 not found") == 0);
	/* Every sibling finished before await_all returned. */
	for (int i = 0; i < 4; i++) {
		TCHECK_INT(sib_finished[i], 1);
		TCHECK(asynq_future_done(sib[i]));
	}
	TCHECK_INT(asynq_future_i64(sib[0]), 100);
	TCHECK_INT(asynq_future_i64(sib[3]), 103);
	return st;
}

/* Early return from the middle of a loop that awaits. */
static int early_iters;

static asynq_status
early_task(asynq_task *t, void *arg)
{
	(void)arg;
	for (int i = 0; i < 100; i++) {
		asynq_future *item = asynq_debug_item(&dbg, i);
		asynq_status st = asynq_await(t, item);
		int64_t v = asynq_future_i64(item);

		asynq_future_rele(item);
		ASYNQ_TRY(st);
		early_iters++;
		if (v == 7)
			return asynq_return_i64(t, v * 10);
	}
	return asynq_return_i64(t, -1);
}

/* Pointer results. */
static asynq_status
ptr_task(asynq_task *t, void *arg)
{
	char *p = malloc(16);
	asynq_future *item = asynq_debug_item(&dbg, 1);
	asynq_status st = asynq_await(t, item);

	(void)arg;
	asynq_future_rele(item);
	strcpy(p, "hello");
	if (st != ASYNQ_OK) {
		free(p);
		return st;
	}
	return asynq_return_ptr(t, p, counting_free);
}

static void *replaced_first, *replaced_second;

static asynq_status
ptr_replace_task(asynq_task *t, void *arg)
{
	(void)arg;
	replaced_first = malloc(4);
	replaced_second = malloc(4);
	TCHECK_STATUS(asynq_return_ptr(t, replaced_first, counting_free),
	    ASYNQ_OK);
	return asynq_return_ptr(t, replaced_second, counting_free);
}

static asynq_status
no_value_task(asynq_task *t, void *arg)
{
	(void)t;
	(void)arg;
	return ASYNQ_OK;
}

/* asynq_wait from inside a task. */
static asynq_task *nested_outer_task;

static asynq_status
nested_child(asynq_task *t, void *arg)
{
	asynq_future *item;
	asynq_status st;
	int64_t v;

	(void)arg;
	TCHECK(asynq_task_current() == t);
	TCHECK(t != nested_outer_task);
	item = asynq_debug_item(&dbg, 5);
	st = asynq_await(t, item);
	TCHECK_STATUS(st, ASYNQ_OK);
	TCHECK(asynq_task_current() == t);
	v = asynq_future_i64(item);
	asynq_future_rele(item);
	return asynq_return_i64(t, v + 1);
}

static asynq_status
nested_outer(asynq_task *t, void *arg)
{
	asynq_future *child, *item;
	int64_t v;

	(void)arg;
	nested_outer_task = t;
	child = asynq_spawn(nested_child, NULL);
	TCHECK_STATUS(asynq_wait(child), ASYNQ_OK);
	TCHECK(asynq_task_current() == t);
	TCHECK(asynq_future_done(child));
	TCHECK_INT(asynq_future_i64(child), 6);
	asynq_future_rele(child);

	/* The outer task can still await afterwards. */
	item = asynq_debug_item(&dbg, 7);
	TCHECK_STATUS(asynq_await(t, item), ASYNQ_OK);
	TCHECK(asynq_task_current() == t);
	v = asynq_future_i64(item);
	TCHECK_INT(v, 7);
	asynq_future_rele(item);
	return asynq_return_i64(t, 13);
}

/* A task awaited by two others runs once. */
static int shared_runs;

static asynq_status
shared_child(asynq_task *t, void *arg)
{
	asynq_future *item = asynq_debug_item(&dbg, 9);
	asynq_status st = asynq_await(t, item);

	(void)arg;
	asynq_future_rele(item);
	shared_runs++;
	ASYNQ_TRY(st);
	return asynq_return_i64(t, 90);
}

static asynq_status
shared_awaiter(asynq_task *t, void *arg)
{
	asynq_future *shared = arg;

	ASYNQ_TRY(asynq_await(t, shared));
	return asynq_return_i64(t, asynq_future_i64(shared) + 1);
}

static asynq_status
current_task(asynq_task *t, void *arg)
{
	(void)arg;
	TCHECK(asynq_task_current() == t);
	TCHECK(asynq_task_future(t) != NULL);
	TCHECK(asynq_future_task(asynq_task_future(t)) == t);
	TCHECK(strcmp(asynq_task_name(t), "current_task") == 0);
	TCHECK_INT(asynq_task_depth(t), 0);
	return ASYNQ_OK;
}

static asynq_status
await_null_task(asynq_task *t, void *arg)
{
	asynq_future *fs[3];

	(void)arg;
	TCHECK_STATUS(asynq_await(t, NULL), ASYNQ_RESOURCE_EXHAUSTED);
	TCHECK_STATUS(asynq_error_code(asynq_task_error(t)),
	    ASYNQ_RESOURCE_EXHAUSTED);
	fs[0] = asynq_const_i64(1);
	fs[1] = NULL;
	fs[2] = asynq_debug_item(&dbg, 3);
	TCHECK_STATUS(asynq_await_all(t, fs, 3), ASYNQ_RESOURCE_EXHAUSTED);
	TCHECK(asynq_future_done(fs[2]));
	TCHECK_INT(asynq_future_i64(fs[2]), 3);
	asynq_future_rele_n(fs, 3);
	return ASYNQ_OK;
}

static asynq_status
await_same_twice_task(asynq_task *t, void *arg)
{
	asynq_future *child = asynq_spawn(item_task, (void *)(intptr_t)2);
	asynq_future *item = asynq_debug_item(&dbg, 5);
	asynq_future *fs[4] = { child, item, child, item };

	(void)arg;
	TCHECK_STATUS(asynq_await_all(t, fs, 4), ASYNQ_OK);
	TCHECK_INT(asynq_future_i64(child), 20);
	TCHECK_INT(asynq_future_i64(item), 5);
	TCHECK_INT(asynq_task_dependencies(t), 0);
	asynq_future_rele(child);
	asynq_future_rele(item);
	return ASYNQ_OK;
}

/* ---- Tests ---------------------------------------------------------- */

static void
test_task_lazy_start(void **state)
{
	asynq_future *f, *g;

	(void)state;
	lazy_runs = 0;
	f = asynq_spawn(lazy_task, NULL);
	assert_non_null(f);
	assert_false(asynq_future_done(f));
	assert_status(asynq_future_status(f), ASYNQ_FAILED_PRECONDITION);
	assert_int_equal(lazy_runs, 0);
	assert_int_equal(tu_stats().tasks_spawned, 1);
	assert_int_equal(tu_stats().tasks_started, 0);

	/* Driving the scheduler for another task does not start f. */
	g = asynq_spawn(value_task, (void *)(intptr_t)2);
	assert_status(asynq_wait(g), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(g), 2);
	assert_int_equal(lazy_runs, 0);
	assert_false(asynq_future_done(f));

	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(lazy_runs, 1);
	assert_int_equal(asynq_future_i64(f), 101);
	/* Computed once: waiting again does not run it again. */
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(lazy_runs, 1);
	assert_int_equal(tu_stats().tasks_started, 2);
	asynq_future_rele(g);
	asynq_future_rele(f);
}

static void
test_task_released_unawaited_never_runs(void **state)
{
	asynq_future *f, *g;

	(void)state;
	lazy_runs = 0;
	f = asynq_spawn(lazy_task, NULL);
	asynq_future_rele(f);
	g = asynq_spawn(value_task, (void *)(intptr_t)3);
	assert_status(asynq_wait(g), ASYNQ_OK);
	asynq_future_rele(g);
	assert_int_equal(lazy_runs, 0);
	assert_int_equal(tu_stats().tasks_started, 1);
}

static void
test_task_await_all_results_in_array_order(void **state)
{
	asynq_future *root;

	(void)state;
	dbg_init();
	root = asynq_spawn(mixed_root_task, NULL);
	assert_status(asynq_wait(root), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(root), 7);
	ASSERT_TASK_CHECKS(13);
	/* The two items awaited together and the one awaited by the child
	 * went out in one flush. */
	assert_int_equal(dbg.flushes, 1);
	assert_int_equal(dbg.last_size, 3);
	for (int i = 0; i < 6; i++)
		assert_status(asynq_future_status(mixed[i]), ASYNQ_OK);
	asynq_future_rele_n(mixed, 6);
	asynq_future_rele(root);
}

static void
test_task_await_all_empty(void **state)
{
	asynq_future *none[1] = { NULL };

	(void)state;
	assert_status(asynq_wait_all(none, 0), ASYNQ_OK);
}

static void
test_task_dependencies_cleared_after_resume(void **state)
{
	asynq_future *root;

	(void)state;
	dbg_init();
	root = asynq_spawn(deps_root_task, NULL);
	assert_status(asynq_wait(root), ASYNQ_OK);
	ASSERT_TASK_CHECKS(16);
	asynq_future_rele(root);
}

static void
test_task_children_start_in_array_order(void **state)
{
	asynq_future *root;

	(void)state;
	dbg_init();
	n_starts = 0;
	root = asynq_spawn(ordered_root, NULL);
	assert_status(asynq_wait(root), ASYNQ_OK);
	ASSERT_TASK_CHECKS(6);
	assert_int_equal(n_starts, 5);
	for (int i = 0; i < 5; i++)
		assert_int_equal(starts[i], i);
	/* All five blocked together: one flush of five items. */
	assert_int_equal(dbg.flushes, 1);
	assert_int_equal(dbg.last_size, 5);
	asynq_future_rele(root);
}

static void
test_task_depth_first_start_order(void **state)
{
	static const int want[] = { 0, 10, 11, 12, 20, 21 };
	asynq_future *root;

	(void)state;
	n_starts = 0;
	root = asynq_spawn(df_task, (void *)(intptr_t)0);
	assert_status(asynq_wait(root), ASYNQ_OK);
	assert_int_equal(n_starts, 6);
	for (int i = 0; i < 6; i++)
		assert_int_equal(starts[i], want[i]);
	asynq_future_rele(root);
}

static void
test_task_sibling_errors_keep_their_own_results(void **state)
{
	asynq_future *root;

	(void)state;
	dbg_init();
	memset(sib_finished, 0, sizeof(sib_finished));
	root = asynq_spawn(sib_root, NULL);
	assert_status(asynq_wait(root), ASYNQ_NOT_FOUND);
	ASSERT_TASK_CHECKS(14);
	assert_string_equal(asynq_error_message(asynq_future_error(root)),
	    "child 1 not found");
	assert_status(asynq_future_status(sib[0]), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(sib[0]), 100);
	assert_status(asynq_future_status(sib[1]), ASYNQ_NOT_FOUND);
	assert_string_equal(asynq_error_message(asynq_future_error(sib[1])),
	    "child 1 not found");
	assert_status(asynq_future_status(sib[2]), ASYNQ_INVALID_ARGUMENT);
	assert_string_equal(asynq_error_message(asynq_future_error(sib[2])),
	    "child 2 invalid");
	assert_status(asynq_future_status(sib[3]), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(sib[3]), 103);
	asynq_future_rele_n(sib, 4);
	asynq_future_rele(root);
}

static void
test_task_wait_all_outside_first_error_in_array_order(void **state)
{
	asynq_future *fs[4];

	(void)state;
	dbg_init();
	fs[0] = asynq_spawn(item_task, (void *)(intptr_t)1);
	fs[1] = asynq_const_error(asynq_error_alloc(ASYNQ_ABORTED, "second"));
	fs[2] = asynq_const_error(asynq_error_alloc(ASYNQ_NOT_FOUND, "third"));
	fs[3] = asynq_spawn(item_task, (void *)(intptr_t)4);
	assert_status(asynq_wait_all(fs, 4), ASYNQ_ABORTED);
	assert_true(asynq_future_done(fs[0]));
	assert_true(asynq_future_done(fs[3]));
	assert_int_equal(asynq_future_i64(fs[0]), 10);
	assert_int_equal(asynq_future_i64(fs[3]), 40);
	assert_int_equal(dbg.flushes, 1);
	asynq_future_rele_n(fs, 4);
}

static void
test_task_early_return_from_loop(void **state)
{
	asynq_future *f;

	(void)state;
	dbg_init();
	early_iters = 0;
	f = asynq_spawn(early_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), 70);
	assert_int_equal(early_iters, 8);
	assert_int_equal(dbg.flushes, 8);
	asynq_future_rele(f);
}

static void
test_task_no_value_is_zero(void **state)
{
	asynq_future *f = asynq_spawn(no_value_task, NULL);

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), 0);
	assert_null(asynq_future_ptr(f));
	assert_null(asynq_future_error(f));
	asynq_future_rele(f);
}

static void
test_task_return_ptr_freed_once_on_release(void **state)
{
	asynq_future *f;
	void *p;

	(void)state;
	dbg_init();
	free_calls = 0;
	f = asynq_spawn(ptr_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	p = asynq_future_ptr(f);
	assert_non_null(p);
	assert_string_equal(p, "hello");
	assert_int_equal(free_calls, 0);
	asynq_future_rele(f);
	assert_int_equal(free_calls, 1);
	assert_ptr_equal(freed[0], p);
}

static void
test_task_return_ptr_take_skips_free(void **state)
{
	asynq_future *f;
	void *p;

	(void)state;
	dbg_init();
	free_calls = 0;
	f = asynq_spawn(ptr_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	p = asynq_future_take(f);
	assert_non_null(p);
	assert_string_equal(p, "hello");
	asynq_future_rele(f);
	assert_int_equal(free_calls, 0);
	free(p);
}

static void
test_task_return_ptr_replaced_value_freed(void **state)
{
	asynq_future *f;

	(void)state;
	free_calls = 0;
	f = asynq_spawn(ptr_replace_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(1);
	assert_ptr_equal(asynq_future_ptr(f), replaced_second);
	assert_int_equal(free_calls, 1);
	assert_ptr_equal(freed[0], replaced_first);
	asynq_future_rele(f);
	assert_int_equal(free_calls, 2);
	assert_ptr_equal(freed[1], replaced_second);
}

static void
test_task_wait_outside_any_task(void **state)
{
	asynq_future *f;

	(void)state;
	dbg_init();
	assert_null(asynq_task_current());
	f = asynq_spawn(item_task, (void *)(intptr_t)3);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_null(asynq_task_current());
	assert_int_equal(asynq_future_i64(f), 30);
	assert_int_equal(dbg.flushes, 1);
	asynq_future_rele(f);
}

static void
test_task_wait_nested_inside_task(void **state)
{
	asynq_future *f;

	(void)state;
	dbg_init();
	f = asynq_spawn(nested_outer, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(11);
	assert_int_equal(asynq_future_i64(f), 13);
	assert_null(asynq_task_current());
	assert_int_equal(dbg.flushes, 2);
	asynq_future_rele(f);
}

/* A child its awaiter runs at once (as a call onto its own stack), waiting
 * from inside on a grandchild with a nested asynq_wait, then suspending on
 * an item of its own: the awaiter resumes once, after it, with its value. */
static asynq_task *called_parent_task;

static asynq_status
called_grandchild(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_future *item = asynq_debug_item(&dbg, 20);
	asynq_status st = asynq_await(t, item);
	int64_t v = asynq_future_i64(item);
	asynq_future_rele(item);
	TCHECK_STATUS(st, ASYNQ_OK);
	return asynq_return_i64(t, v + 1);
}

static asynq_status
called_child(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_future *g = asynq_spawn(called_grandchild, NULL);
	TCHECK_STATUS(asynq_wait(g), ASYNQ_OK);
	TCHECK(asynq_task_current() == t);
	int64_t v = asynq_future_i64(g);
	asynq_future_rele(g);
	asynq_future *item = asynq_debug_item(&dbg, 100);
	TCHECK_STATUS(asynq_await(t, item), ASYNQ_OK);
	TCHECK(asynq_task_current() == t);
	v += asynq_future_i64(item);
	asynq_future_rele(item);
	/* Its awaiter is still blocked on it. */
	TCHECK_INT(asynq_task_dependencies(called_parent_task), 1);
	return asynq_return_i64(t, v);
}

static asynq_status
called_parent(asynq_task *t, void *arg)
{
	(void)arg;
	called_parent_task = t;
	asynq_future *c = asynq_spawn(called_child, NULL);
	TCHECK_STATUS(asynq_await(t, c), ASYNQ_OK);
	TCHECK(asynq_task_current() == t);
	int64_t v = asynq_future_i64(c);
	asynq_future_rele(c);
	return asynq_return_i64(t, v);
}

static void
test_task_awaited_child_waits_nested_and_suspends(void **state)
{
	(void)state;
	dbg_init();
	asynq_future *f = asynq_spawn(called_parent, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(8);
	assert_int_equal(asynq_future_i64(f), 121);
	assert_int_equal(dbg.flushes, 2);
	assert_null(asynq_task_current());
	asynq_future_rele(f);
}

static void
test_task_awaited_twice_runs_once(void **state)
{
	asynq_future *shared, *fs[2];

	(void)state;
	dbg_init();
	shared_runs = 0;
	shared = asynq_spawn(shared_child, NULL);
	fs[0] = asynq_spawn(shared_awaiter, shared);
	fs[1] = asynq_spawn(shared_awaiter, shared);
	assert_status(asynq_wait_all(fs, 2), ASYNQ_OK);
	assert_int_equal(shared_runs, 1);
	assert_int_equal(asynq_future_i64(fs[0]), 91);
	assert_int_equal(asynq_future_i64(fs[1]), 91);
	assert_int_equal(dbg.flushes, 1);
	asynq_future_rele_n(fs, 2);
	asynq_future_rele(shared);
}

static void
test_task_current_name_and_future(void **state)
{
	asynq_future *f = asynq_spawn(current_task, NULL);
	asynq_task *t = asynq_future_task(f);

	(void)state;
	assert_non_null(t);
	assert_ptr_equal(asynq_task_future(t), f);
	assert_string_equal(asynq_task_name(t), "current_task");
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(5);
	asynq_future_rele(f);
}

static void
test_task_await_null_future(void **state)
{
	asynq_future *f;

	(void)state;
	dbg_init();
	f = asynq_spawn(await_null_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(5);
	asynq_future_rele(f);
}

static void
test_task_await_same_future_twice(void **state)
{
	asynq_future *f;

	(void)state;
	dbg_init();
	f = asynq_spawn(await_same_twice_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(4);
	assert_int_equal(dbg.flushes, 1);
	assert_int_equal(dbg.last_size, 2);
	asynq_future_rele(f);
}

static void
test_task_stats_count_tasks(void **state)
{
	asynq_future *fs[3];
	asynq_sched_stats st;

	(void)state;
	for (int i = 0; i < 3; i++)
		fs[i] = asynq_spawn(value_task, (void *)(intptr_t)i);
	st = tu_stats();
	assert_int_equal(st.tasks_spawned, 3);
	assert_int_equal(st.tasks_started, 0);
	assert_int_equal(st.tasks_live, 3);
	for (int i = 0; i < 3; i++)
		assert_status(asynq_wait(fs[i]), ASYNQ_OK);
	st = tu_stats();
	assert_int_equal(st.tasks_spawned, 3);
	assert_int_equal(st.tasks_started, 3);
	assert_int_equal(st.tasks_live, 3);
	asynq_future_rele_n(fs, 3);
	assert_int_equal(tu_stats().tasks_live, 0);
}

static void
test_task_thread_fini_cancels_referenced(void **state)
{
	asynq_future *task, *item;

	(void)state;
	lazy_runs = 0;
	task = asynq_spawn(lazy_task, NULL);
	item = asynq_debug_item(asynq_debug_default(), 1);
	asynq_thread_fini();
	/* core.h: tasks still referenced are left failed with CANCELLED,
	 * and unflushed batches are cancelled. */
	assert_true(asynq_future_done(task));
	assert_status(asynq_future_status(task), ASYNQ_CANCELLED);
	assert_true(asynq_future_done(item));
	assert_status(asynq_future_status(item), ASYNQ_CANCELLED);
	assert_int_equal(lazy_runs, 0);
	asynq_future_rele(item);
	asynq_future_rele(task);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TASK_TEST(test_task_lazy_start),
		TASK_TEST(test_task_released_unawaited_never_runs),
		TASK_TEST(test_task_await_all_results_in_array_order),
		TASK_TEST(test_task_await_all_empty),
		TASK_TEST(test_task_dependencies_cleared_after_resume),
		TASK_TEST(test_task_children_start_in_array_order),
		TASK_TEST(test_task_depth_first_start_order),
		TASK_TEST(test_task_sibling_errors_keep_their_own_results),
		TASK_TEST(
		    test_task_wait_all_outside_first_error_in_array_order),
		TASK_TEST(test_task_early_return_from_loop),
		TASK_TEST(test_task_no_value_is_zero),
		TASK_TEST(test_task_return_ptr_freed_once_on_release),
		TASK_TEST(test_task_return_ptr_take_skips_free),
		TASK_TEST(test_task_return_ptr_replaced_value_freed),
		TASK_TEST(test_task_wait_outside_any_task),
		TASK_TEST(test_task_wait_nested_inside_task),
		TASK_TEST(test_task_awaited_child_waits_nested_and_suspends),
		TASK_TEST(test_task_awaited_twice_runs_once),
		TASK_TEST(test_task_current_name_and_future),
		TASK_TEST(test_task_await_null_future),
		TASK_TEST(test_task_await_same_future_twice),
		TASK_TEST(test_task_stats_count_tasks),
		TASK_TEST(test_task_thread_fini_cancels_referenced),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
