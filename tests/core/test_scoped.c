/* SPDX-License-Identifier: MIT */
/*
 * Tests of scoped values (asynq's AsyncScopedValue): defaults, overrides
 * seen by a task and its children but not its siblings, stacking, and
 * removal when the task ends, also by an error or an early ASYNQ_TRY return
 * out of asynq_with_scoped.
 */
#include <pthread.h>

#include "testutil.h"

static asynq_scoped key_user = ASYNQ_SCOPED_INIT("user", "nobody");
static asynq_scoped key_tag = ASYNQ_SCOPED_INIT("tag", NULL);

static asynq_debug_backend dbg;
static bool dbg_ready;

static int
scoped_setup(void **state)
{
	asynq_debug_backend_init(&dbg, "scoped-test", false);
	dbg_ready = true;
	return tu_setup(state);
}

static int
scoped_teardown(void **state)
{
	if (dbg_ready)
		asynq_debug_backend_fini(&dbg);
	dbg_ready = false;
	return tu_teardown(state);
}

#define SCOPED_TEST(fn)                                                        \
	cmocka_unit_test_setup_teardown(fn, scoped_setup, scoped_teardown)

/* user returns the current value of key_user. */
static const char *
user(void)
{
	return asynq_scoped_get(&key_user);
}

#define TCHECK_USER(want)                                                      \
	tu_record(user() != NULL && strcmp(user(), (want)) == 0, __FILE__,     \
	    __LINE__, "user() is \"%s\", want \"%s\"",                         \
	    user() != NULL ? user() : "(null)", (want))

static asynq_status
await_item(asynq_task *t)
{
	asynq_future *item = asynq_debug_item(&dbg, 1);
	asynq_status st = asynq_await(t, item);

	asynq_future_rele(item);
	return st;
}

/* ---- Task bodies ---------------------------------------------------- */

/* reader checks that key_user reads arg, before and after an await. */
static asynq_status
reader(asynq_task *t, void *arg)
{
	TCHECK_USER((const char *)arg);
	TCHECK_STATUS(await_item(t), ASYNQ_OK);
	TCHECK_USER((const char *)arg);
	return ASYNQ_OK;
}

static asynq_status
reader_parent(asynq_task *t, void *arg)
{
	asynq_future *child = asynq_spawn(reader, arg);
	asynq_status st;

	TCHECK_USER((const char *)arg);
	st = asynq_await(t, child);
	asynq_future_rele(child);
	TCHECK_USER((const char *)arg);
	return st;
}

static asynq_status
overriding_task(asynq_task *t, void *arg)
{
	asynq_future *child;
	asynq_status st;

	(void)arg;
	TCHECK_USER("nobody");
	TCHECK_STATUS(asynq_scoped_push(&key_user, "alice"), ASYNQ_OK);
	TCHECK_USER("alice");
	/* Children and grandchildren see the override. */
	child = asynq_spawn(reader_parent, "alice");
	st = asynq_await(t, child);
	asynq_future_rele(child);
	TCHECK_STATUS(st, ASYNQ_OK);
	TCHECK_USER("alice");
	TCHECK_STATUS(asynq_scoped_pop(&key_user), ASYNQ_OK);
	TCHECK_USER("nobody");
	return ASYNQ_OK;
}

/* Overrides a thread-level override, then its own goes away. */
static asynq_status
overriding_task_over_thread(asynq_task *t, void *arg)
{
	(void)arg;
	(void)t;
	TCHECK_USER("thread");
	TCHECK_STATUS(asynq_scoped_push(&key_user, "task"), ASYNQ_OK);
	TCHECK_USER("task");
	TCHECK_STATUS(asynq_scoped_pop(&key_user), ASYNQ_OK);
	TCHECK_USER("thread");
	return ASYNQ_OK;
}

/* Siblings: the first overrides and blocks, the second reads. */
static asynq_status
sibling_overrider(asynq_task *t, void *arg)
{
	(void)arg;
	TCHECK_STATUS(asynq_scoped_push(&key_user, "alice"), ASYNQ_OK);
	TCHECK_STATUS(await_item(t), ASYNQ_OK);
	TCHECK_USER("alice");
	TCHECK_STATUS(await_item(t), ASYNQ_OK);
	TCHECK_USER("alice");
	TCHECK_STATUS(asynq_scoped_pop(&key_user), ASYNQ_OK);
	return ASYNQ_OK;
}

static asynq_status
siblings_root(asynq_task *t, void *arg)
{
	asynq_future *fs[3];
	asynq_status st;

	(void)arg;
	fs[0] = asynq_spawn(sibling_overrider, NULL);
	fs[1] = asynq_spawn(reader, "nobody");
	fs[2] = asynq_spawn(reader_parent, "nobody");
	st = asynq_await_all(t, fs, 3);
	TCHECK_USER("nobody");
	asynq_future_rele_n(fs, 3);
	return st;
}

/* A task that overrides and fails without removing its override. */
static asynq_status
failing_overrider(asynq_task *t, void *arg)
{
	const char *value = arg;

	TCHECK_STATUS(asynq_scoped_push(&key_user, (void *)value), ASYNQ_OK);
	TCHECK_STATUS(await_item(t), ASYNQ_OK);
	TCHECK_USER(value);
	return asynq_fail(t, ASYNQ_ABORTED, "failed while \"%s\"", value);
}

/* A task that overrides and ends normally without removing it. */
static asynq_status
forgetful_overrider(asynq_task *t, void *arg)
{
	(void)t;
	TCHECK_STATUS(asynq_scoped_push(&key_user, arg), ASYNQ_OK);
	return ASYNQ_OK;
}

static asynq_status
parent_of_failing(asynq_task *t, void *arg)
{
	asynq_future *child;
	asynq_status st;

	(void)arg;
	TCHECK_STATUS(asynq_scoped_push(&key_user, "parent"), ASYNQ_OK);
	child = asynq_spawn(failing_overrider, "child");
	st = asynq_await(t, child);
	asynq_future_rele(child);
	TCHECK_STATUS(st, ASYNQ_ABORTED);
	TCHECK_USER("parent");
	/* A later child sees the parent's value, not the failed child's. */
	child = asynq_spawn(reader, "parent");
	st = asynq_await(t, child);
	asynq_future_rele(child);
	TCHECK_STATUS(st, ASYNQ_OK);
	TCHECK_STATUS(asynq_scoped_pop(&key_user), ASYNQ_OK);
	TCHECK_USER("nobody");
	return ASYNQ_OK;
}

/* asynq_with_scoped whose body returns early through ASYNQ_TRY. */
static asynq_status
try_body(void *arg)
{
	asynq_task *t = arg;
	asynq_future *child;
	asynq_status st;

	TCHECK_USER("inner");
	child = asynq_spawn(failing_overrider, "grandchild");
	st = asynq_await(t, child);
	asynq_future_rele(child);
	TCHECK_USER("inner");
	ASYNQ_TRY(st);
	tu_log("not reached ");
	return ASYNQ_OK;
}

static asynq_status
with_scoped_try_task(asynq_task *t, void *arg)
{
	(void)arg;
	TCHECK_STATUS(asynq_scoped_push(&key_user, "outer"), ASYNQ_OK);
	ASYNQ_TRY(asynq_with_scoped(&key_user, "inner", try_body, t));
	tu_log("not reached either ");
	return ASYNQ_OK;
}

/* The same, looking at the value right after asynq_with_scoped. */
static asynq_status
with_scoped_check_task(asynq_task *t, void *arg)
{
	asynq_status st;

	(void)arg;
	TCHECK_STATUS(asynq_scoped_push(&key_user, "outer"), ASYNQ_OK);
	st = asynq_with_scoped(&key_user, "inner", try_body, t);
	TCHECK_STATUS(st, ASYNQ_ABORTED);
	TCHECK_USER("outer");
	TCHECK_STATUS(asynq_scoped_pop(&key_user), ASYNQ_OK);
	TCHECK_USER("nobody");
	return ASYNQ_OK;
}

static asynq_status
stacking_task(asynq_task *t, void *arg)
{
	asynq_future *child;

	(void)arg;
	TCHECK_STATUS(asynq_scoped_push(&key_user, "a"), ASYNQ_OK);
	TCHECK_STATUS(asynq_scoped_push(&key_user, "b"), ASYNQ_OK);
	TCHECK_USER("b");
	child = asynq_spawn(reader, "b");
	TCHECK_STATUS(asynq_await(t, child), ASYNQ_OK);
	asynq_future_rele(child);
	TCHECK_STATUS(asynq_scoped_pop(&key_user), ASYNQ_OK);
	TCHECK_USER("a");
	child = asynq_spawn(reader, "a");
	TCHECK_STATUS(asynq_await(t, child), ASYNQ_OK);
	asynq_future_rele(child);
	TCHECK_STATUS(asynq_scoped_pop(&key_user), ASYNQ_OK);
	TCHECK_USER("nobody");
	TCHECK_STATUS(asynq_scoped_pop(&key_user), ASYNQ_FAILED_PRECONDITION);
	return ASYNQ_OK;
}

/* A child cannot pop its parent's override. */
static asynq_status
popping_child(asynq_task *t, void *arg)
{
	(void)t;
	(void)arg;
	TCHECK_USER("parent");
	TCHECK_STATUS(asynq_scoped_pop(&key_user), ASYNQ_FAILED_PRECONDITION);
	TCHECK_USER("parent");
	return ASYNQ_OK;
}

static asynq_status
popping_parent(asynq_task *t, void *arg)
{
	asynq_future *child;

	(void)arg;
	TCHECK_STATUS(asynq_scoped_push(&key_user, "parent"), ASYNQ_OK);
	child = asynq_spawn(popping_child, NULL);
	TCHECK_STATUS(asynq_await(t, child), ASYNQ_OK);
	asynq_future_rele(child);
	TCHECK_USER("parent");
	TCHECK_STATUS(asynq_scoped_pop(&key_user), ASYNQ_OK);
	return ASYNQ_OK;
}

static asynq_status
two_keys_task(asynq_task *t, void *arg)
{
	(void)t;
	(void)arg;
	TCHECK(asynq_scoped_get(&key_tag) == NULL);
	TCHECK_STATUS(asynq_scoped_push(&key_tag, "t1"), ASYNQ_OK);
	TCHECK_USER("nobody");
	TCHECK(strcmp(asynq_scoped_get(&key_tag), "t1") == 0);
	TCHECK_STATUS(asynq_scoped_pop(&key_user), ASYNQ_FAILED_PRECONDITION);
	TCHECK_STATUS(asynq_scoped_pop(&key_tag), ASYNQ_OK);
	TCHECK(asynq_scoped_get(&key_tag) == NULL);
	return ASYNQ_OK;
}

/* A body run outside tasks: sees the override and fails. */
static asynq_status
inner_body(void *arg)
{
	(void)arg;
	TCHECK_USER("inner");
	return ASYNQ_NOT_FOUND;
}

/* One thread of the sharing test: its own scheduler and backend, its own
 * overrides of the shared key, checked before and after awaits while the
 * other threads do the same. */
typedef struct thread_run {
	char value[32];
	pthread_barrier_t *barrier;
	int mismatches;
	int reads;
	asynq_status st;
} thread_run;

static asynq_status
thread_child(asynq_task *t, void *arg)
{
	thread_run *r = arg;
	asynq_debug_backend *d = asynq_debug_default();

	for (int i = 0; i < 20; i++) {
		asynq_future *item = asynq_debug_item(d, i);
		asynq_status st = asynq_await(t, item);

		asynq_future_rele(item);
		ASYNQ_TRY(st);
		r->reads++;
		if (user() == NULL || strcmp(user(), r->value) != 0)
			r->mismatches++;
	}
	return ASYNQ_OK;
}

static asynq_status
thread_task(asynq_task *t, void *arg)
{
	thread_run *r = arg;
	asynq_future *child;
	asynq_status st;

	ASYNQ_TRY(asynq_scoped_push(&key_user, r->value));
	child = asynq_spawn(thread_child, r);
	st = asynq_await(t, child);
	asynq_future_rele(child);
	return st;
}

static void *
thread_main(void *arg)
{
	thread_run *r = arg;
	asynq_future *f;

	pthread_barrier_wait(r->barrier);
	if (user() == NULL || strcmp(user(), "nobody") != 0)
		r->mismatches++;
	f = asynq_spawn(thread_task, r);
	r->st = asynq_wait(f);
	asynq_future_rele(f);
	if (user() == NULL || strcmp(user(), "nobody") != 0)
		r->mismatches++;
	asynq_thread_fini();
	return NULL;
}

/* ---- Tests ---------------------------------------------------------- */

static void
test_scoped_default_outside_tasks(void **state)
{
	(void)state;
	assert_string_equal(user(), "nobody");
	assert_null(asynq_scoped_get(&key_tag));
}

static void
test_scoped_thread_override_outside_tasks(void **state)
{
	(void)state;
	assert_status(asynq_scoped_push(&key_user, "alice"), ASYNQ_OK);
	assert_string_equal(user(), "alice");
	assert_status(asynq_scoped_push(&key_user, "bob"), ASYNQ_OK);
	assert_string_equal(user(), "bob");
	assert_null(asynq_scoped_get(&key_tag));
	assert_status(asynq_scoped_pop(&key_user), ASYNQ_OK);
	assert_string_equal(user(), "alice");
	assert_status(asynq_scoped_pop(&key_user), ASYNQ_OK);
	assert_string_equal(user(), "nobody");
	assert_status(asynq_scoped_pop(&key_user), ASYNQ_FAILED_PRECONDITION);
	assert_string_equal(user(), "nobody");
}

static void
test_scoped_thread_override_visible_in_tasks(void **state)
{
	asynq_future *f;

	(void)state;
	/* asynq's `with value.override(x):` around a synchronous call: the
	 * thread's override is the fallback below every task's own. */
	assert_status(asynq_scoped_push(&key_user, "thread"), ASYNQ_OK);
	f = asynq_spawn(reader_parent, "thread");
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(5);
	asynq_future_rele(f);
	f = asynq_spawn(overriding_task_over_thread, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(9);
	asynq_future_rele(f);
	assert_string_equal(user(), "thread");
	assert_status(asynq_scoped_pop(&key_user), ASYNQ_OK);
}

static void
test_scoped_default_inside_task(void **state)
{
	asynq_future *f = asynq_spawn(reader_parent, "nobody");

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(5);
	asynq_future_rele(f);
}

static void
test_scoped_override_visible_to_task_and_children(void **state)
{
	asynq_future *f = asynq_spawn(overriding_task, NULL);

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(12);
	assert_string_equal(user(), "nobody");
	asynq_future_rele(f);
}

static void
test_scoped_not_visible_to_siblings(void **state)
{
	asynq_future *f = asynq_spawn(siblings_root, NULL);

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(15);
	assert_string_equal(user(), "nobody");
	asynq_future_rele(f);
}

static void
test_scoped_removed_when_task_fails(void **state)
{
	asynq_future *f, *g;

	(void)state;
	f = asynq_spawn(failing_overrider, "mallory");
	assert_status(asynq_wait(f), ASYNQ_ABORTED);
	assert_string_equal(user(), "nobody");
	/* A task run afterwards sees the default. */
	g = asynq_spawn(reader_parent, "nobody");
	assert_status(asynq_wait(g), ASYNQ_OK);
	ASSERT_TASK_CHECKS(8);
	asynq_future_rele(g);
	asynq_future_rele(f);
}

static void
test_scoped_removed_when_task_ends(void **state)
{
	asynq_future *f, *g;

	(void)state;
	f = asynq_spawn(forgetful_overrider, "eve");
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_string_equal(user(), "nobody");
	g = asynq_spawn(reader, "nobody");
	assert_status(asynq_wait(g), ASYNQ_OK);
	ASSERT_TASK_CHECKS(4);
	asynq_future_rele(g);
	asynq_future_rele(f);
}

static void
test_scoped_parent_value_restored_after_child_fails(void **state)
{
	asynq_future *f = asynq_spawn(parent_of_failing, NULL);

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(12);
	assert_string_equal(user(), "nobody");
	asynq_future_rele(f);
}

static void
test_scoped_with_scoped_removed_on_try_return(void **state)
{
	asynq_future *f, *g;

	(void)state;
	f = asynq_spawn(with_scoped_try_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_ABORTED);
	assert_string_equal(asynq_error_message(asynq_future_error(f)),
	    "failed while \"grandchild\"");
	assert_string_equal(tu_log_str(), "");
	assert_string_equal(user(), "nobody");
	g = asynq_spawn(with_scoped_check_task, NULL);
	assert_status(asynq_wait(g), ASYNQ_OK);
	ASSERT_TASK_CHECKS(16);
	assert_string_equal(tu_log_str(), "");
	assert_string_equal(user(), "nobody");
	asynq_future_rele(g);
	asynq_future_rele(f);
}

static void
test_scoped_with_scoped_outside_tasks(void **state)
{
	(void)state;
	assert_status(asynq_scoped_push(&key_user, "outer"), ASYNQ_OK);
	assert_status(asynq_with_scoped(&key_user, "inner", inner_body, NULL),
	    ASYNQ_NOT_FOUND);
	ASSERT_TASK_CHECKS(1);
	assert_string_equal(user(), "outer");
	assert_status(asynq_scoped_pop(&key_user), ASYNQ_OK);
	assert_string_equal(user(), "nobody");
}

static void
test_scoped_nested_overrides_stack(void **state)
{
	asynq_future *f = asynq_spawn(stacking_task, NULL);

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(16);
	asynq_future_rele(f);
}

static void
test_scoped_pop_only_own_override(void **state)
{
	asynq_future *f = asynq_spawn(popping_parent, NULL);

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(7);
	asynq_future_rele(f);
}

static void
test_scoped_keys_are_independent(void **state)
{
	asynq_future *f = asynq_spawn(two_keys_task, NULL);

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(7);
	asynq_future_rele(f);
}

static void
test_scoped_key_shared_between_threads(void **state)
{
	enum { N = 4 };
	pthread_barrier_t barrier;
	pthread_t threads[N];
	thread_run runs[N];

	(void)state;
	pthread_barrier_init(&barrier, NULL, N);
	for (int i = 0; i < N; i++) {
		memset(&runs[i], 0, sizeof(runs[i]));
		snprintf(runs[i].value, sizeof(runs[i].value), "thread-%d", i);
		runs[i].barrier = &barrier;
		assert_int_equal(
		    pthread_create(&threads[i], NULL, thread_main, &runs[i]),
		    0);
	}
	for (int i = 0; i < N; i++)
		pthread_join(threads[i], NULL);
	pthread_barrier_destroy(&barrier);
	for (int i = 0; i < N; i++) {
		assert_status(runs[i].st, ASYNQ_OK);
		assert_int_equal(runs[i].reads, 20);
		assert_int_equal(runs[i].mismatches, 0);
	}
	assert_string_equal(user(), "nobody");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		SCOPED_TEST(test_scoped_default_outside_tasks),
		SCOPED_TEST(test_scoped_thread_override_outside_tasks),
		SCOPED_TEST(test_scoped_thread_override_visible_in_tasks),
		SCOPED_TEST(test_scoped_default_inside_task),
		SCOPED_TEST(test_scoped_override_visible_to_task_and_children),
		SCOPED_TEST(test_scoped_not_visible_to_siblings),
		SCOPED_TEST(test_scoped_removed_when_task_fails),
		SCOPED_TEST(test_scoped_removed_when_task_ends),
		SCOPED_TEST(
		    test_scoped_parent_value_restored_after_child_fails),
		SCOPED_TEST(test_scoped_with_scoped_removed_on_try_return),
		SCOPED_TEST(test_scoped_with_scoped_outside_tasks),
		SCOPED_TEST(test_scoped_nested_overrides_stack),
		SCOPED_TEST(test_scoped_pop_only_own_override),
		SCOPED_TEST(test_scoped_keys_are_independent),
		SCOPED_TEST(test_scoped_key_shared_between_threads),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
