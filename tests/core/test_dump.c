/* SPDX-License-Identifier: MIT */
/*
 * Tests of the debug dumps: asynq_dump_sched names the live tasks and the
 * pending batches, asynq_dump_stack names the current task's creator chain,
 * innermost last.
 */
#include "testutil.h"

static asynq_debug_backend dbg;
static bool dbg_ready;
static char *sched_text, *stack_text;

static int
dump_setup(void **state)
{
	asynq_debug_backend_init(&dbg, "dump-backend", false);
	dbg_ready = true;
	sched_text = stack_text = NULL;
	return tu_setup(state);
}

static int
dump_teardown(void **state)
{
	free(sched_text);
	free(stack_text);
	sched_text = stack_text = NULL;
	if (dbg_ready)
		asynq_debug_backend_fini(&dbg);
	dbg_ready = false;
	return tu_teardown(state);
}

#define DUMP_TEST(fn)                                                          \
	cmocka_unit_test_setup_teardown(fn, dump_setup, dump_teardown)

/* capture returns what dump(f) writes, in a malloc'd string. */
static char *
capture(void (*dump)(FILE *))
{
	char *buf = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&buf, &len);

	if (f == NULL)
		return NULL;
	dump(f);
	fclose(f);
	return buf;
}

/* ---- Task bodies ---------------------------------------------------- */

static asynq_status
dump_child_task(asynq_task *t, void *arg)
{
	asynq_future *item = asynq_debug_item(&dbg, 1);
	asynq_status st = asynq_await(t, item);

	(void)arg;
	asynq_future_rele(item);
	return st;
}

static asynq_status
dump_observer_task(asynq_task *t, void *arg)
{
	(void)t;
	(void)arg;
	/* dump_child_task is blocked on a pending batch of dump-backend. */
	sched_text = capture(asynq_dump_sched);
	stack_text = capture(asynq_dump_stack);
	TCHECK(sched_text != NULL);
	TCHECK(stack_text != NULL);
	return ASYNQ_OK;
}

static asynq_status
dump_root_task(asynq_task *t, void *arg)
{
	asynq_future *fs[2];
	asynq_status st;

	(void)arg;
	fs[0] = asynq_spawn(dump_child_task, NULL);
	fs[1] = asynq_spawn(dump_observer_task, NULL);
	st = asynq_await_all(t, fs, 2);
	asynq_future_rele_n(fs, 2);
	return st;
}

/* ---- Tests ---------------------------------------------------------- */

static void
test_dump_sched_names_tasks_and_pending_batch(void **state)
{
	asynq_future *f = asynq_spawn(dump_root_task, NULL);

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(2);
	assert_contains(sched_text, "dump_root_task");
	assert_contains(sched_text, "dump_child_task");
	assert_contains(sched_text, "dump_observer_task");
	assert_contains(sched_text, "dump-backend");
	asynq_future_rele(f);
}

static void
test_dump_stack_names_creator_chain(void **state)
{
	asynq_future *f = asynq_spawn(dump_root_task, NULL);
	const char *root, *observer;

	(void)state;
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(2);
	root = strstr(stack_text, "dump_root_task");
	observer = strstr(stack_text, "dump_observer_task");
	if (root == NULL || observer == NULL)
		fail_msg("stack dump lacks a task:\n%s", stack_text);
	/* Innermost last. */
	assert_true(root < observer);
	/* Only the creator chain, not the sibling. */
	if (strstr(stack_text, "dump_child_task") != NULL)
		fail_msg("stack dump names a sibling:\n%s", stack_text);
	assert_contains(stack_text, "test_dump.c");
	asynq_future_rele(f);
}

static void
test_dump_sched_outside_tasks_shows_pending_batch(void **state)
{
	asynq_future *item = asynq_debug_item(&dbg, 3);

	(void)state;
	sched_text = capture(asynq_dump_sched);
	assert_contains(sched_text, "dump-backend");
	/* asynq_dump_stack outside any task writes without crashing. */
	stack_text = capture(asynq_dump_stack);
	assert_non_null(stack_text);
	assert_null(strstr(stack_text, "dump_root_task"));
	assert_status(asynq_wait(item), ASYNQ_OK);
	asynq_future_rele(item);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		DUMP_TEST(test_dump_sched_names_tasks_and_pending_batch),
		DUMP_TEST(test_dump_stack_names_creator_chain),
		DUMP_TEST(test_dump_sched_outside_tasks_shows_pending_batch),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
