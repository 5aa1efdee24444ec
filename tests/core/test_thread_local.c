/* SPDX-License-Identifier: MIT */
/*
 * The per-thread context (asynq_thread_local): a module's state is made on
 * first use on each thread, and asynq_thread_fini stops every state newest
 * first while the scheduler can still run what that starts, then frees
 * them newest first once nothing runs; a later scheduler on the thread
 * starts with none.
 */
#include <pthread.h>

#include "testutil.h"

typedef struct st {
	char name;
	int id;
} st;

static int made;

static void *
make_a(void)
{
	st *s = calloc(1, sizeof(*s));
	s->name = 'A';
	s->id = ++made;
	return s;
}

static void *
make_b(void)
{
	st *s = calloc(1, sizeof(*s));
	s->name = 'B';
	s->id = ++made;
	return s;
}

static asynq_thread_local key_a, key_b;

static void
stop_st(void *p)
{
	tu_log("stop%c ", ((st *)p)->name);
}

static void
free_st(void *p)
{
	/* Nothing is handed out while the states go. */
	tu_log("free%c%s ", ((st *)p)->name,
	    asynq_thread_local_get(&key_a) == NULL ? "" : "!");
	free(p);
}

static asynq_thread_local key_a =
    ASYNQ_THREAD_LOCAL_INIT("test.a", make_a, stop_st, free_st);
static asynq_thread_local key_b =
    ASYNQ_THREAD_LOCAL_INIT("test.b", make_b, stop_st, free_st);

static void
test_thread_local_made_once_per_thread(void **state)
{
	(void)state;
	made = 0;
	st *a = asynq_thread_local_get(&key_a);
	assert_non_null(a);
	assert_ptr_equal(asynq_thread_local_get(&key_a), a);
	assert_int_equal(made, 1);
	st *b = asynq_thread_local_get(&key_b);
	assert_int_equal(b->name, 'B');
	assert_ptr_not_equal(a, b);
	assert_int_equal(made, 2);
}

static void
test_thread_local_torn_down_newest_first(void **state)
{
	(void)state;
	(void)asynq_thread_local_get(&key_b);
	(void)asynq_thread_local_get(&key_a);
	asynq_thread_fini();
	assert_string_equal(tu_log_str(), "stopA stopB freeA freeB ");
	/* A new scheduler, new states. */
	made = 0;
	st *a = asynq_thread_local_get(&key_a);
	assert_non_null(a);
	assert_int_equal(a->id, 1);
}

static void *
other_thread(void *arg)
{
	st **out = arg;
	out[0] = asynq_thread_local_get(&key_a);
	out[1] = asynq_thread_local_get(&key_a);
	asynq_thread_fini();
	return NULL;
}

static void
test_thread_local_each_thread_its_own(void **state)
{
	(void)state;
	st *mine = asynq_thread_local_get(&key_a);
	st *theirs[2];
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, other_thread, theirs), 0);
	assert_int_equal(pthread_join(th, NULL), 0);
	assert_ptr_equal(theirs[0], theirs[1]);
	assert_ptr_not_equal(theirs[0], mine);
	/* The other thread's teardown stopped and freed its own only. */
	assert_string_equal(tu_log_str(), "stopA freeA ");
	assert_ptr_equal(asynq_thread_local_get(&key_a), mine);
}

/* A state first made by a task that runs during the teardown's drain is
 * stopped and freed too. */
static asynq_status
late_user(asynq_task *t, void *arg)
{
	(void)t;
	(void)arg;
	return asynq_thread_local_get(&key_b) != NULL ? ASYNQ_OK
	                                              : ASYNQ_INTERNAL;
}

static void
test_thread_local_made_in_the_drain_is_freed(void **state)
{
	(void)state;
	(void)asynq_thread_local_get(&key_a);
	asynq_future *f = asynq_spawn(late_user, NULL);
	asynq_task_start(f);
	asynq_future_rele(f);
	asynq_thread_fini();
	assert_string_equal(tu_log_str(), "stopA stopB freeB freeA ");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
		    test_thread_local_made_once_per_thread, tu_setup,
		    tu_teardown),
		cmocka_unit_test_setup_teardown(
		    test_thread_local_torn_down_newest_first, tu_setup,
		    tu_teardown),
		cmocka_unit_test_setup_teardown(
		    test_thread_local_each_thread_its_own, tu_setup,
		    tu_teardown),
		cmocka_unit_test_setup_teardown(
		    test_thread_local_made_in_the_drain_is_freed, tu_setup,
		    tu_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
