/* SPDX-License-Identifier: MIT */
/*
 * Tests of the core's cross-thread API on one scheduler (asynq/core.h):
 * promises completed by functions that another thread posts with
 * asynq_sched_post, the order posts run in, a post freeing itself, the
 * scheduler sleeping on a pending promise rather than reporting a deadlock,
 * a burst of posts costing one wake-up, the promise setters' rules
 * (once only, pointer ownership, errors) and fire-and-forget tasks started
 * with asynq_task_start.
 *
 * The scheduler is the test thread's own. Posting threads never touch cmocka
 * or testutil's state: they only post; what the posted functions see is
 * recorded on the scheduler thread and asserted by the test body.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "tests/core/testutil.h"

#define MS (1000 * 1000ull) /* nanoseconds in a millisecond */

static void
sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0)
		;
}

/* ---- Posts ----------------------------------------------------------- */

/* A numbered post; its function logs the number and the thread it ran on. */
typedef struct num_post {
	asynq_post base;
	int n;
	bool heap; /* allocated by the poster; freed by its function */
} num_post;

#define MAX_POSTS 1000

static int run_log[MAX_POSTS]; /* scheduler thread only */
static int run_len;
static int run_off_thread; /* posts that ran on another thread */
static pthread_t sched_thread;

static void
num_run(asynq_post *p)
{
	num_post *np = (num_post *)p;

	if (!pthread_equal(pthread_self(), sched_thread))
		run_off_thread++;
	if (run_len < MAX_POSTS)
		run_log[run_len] = np->n;
	run_len++;
	if (np->heap)
		free(np);
}

/* Sets a promise; runs on the scheduler thread. */
typedef struct set_post {
	asynq_post base;
	asynq_future *promise;
	int64_t value;
	int posts_before; /* numbered posts that ran before this one */
	asynq_status st;
	bool ran;
} set_post;

static void
set_run(asynq_post *p)
{
	set_post *sp = (set_post *)p;

	if (!pthread_equal(pthread_self(), sched_thread))
		run_off_thread++;
	sp->posts_before = run_len;
	sp->st = asynq_promise_set_i64(sp->promise, sp->value);
	sp->ran = true;
}

/* What a posting thread does: wait, post `n` numbered posts in one burst,
 * then the post that sets the promise. */
typedef struct poster {
	asynq_sched *sched;
	int delay_ms;
	int n;
	bool heap;
	num_post posts[MAX_POSTS];
	set_post set;
	atomic_int alloc_failures;
} poster;

static poster the_poster; /* large: kept off the stack */

static void *
poster_main(void *arg)
{
	poster *ps = arg;

	sleep_ms(ps->delay_ms);
	for (int i = 0; i < ps->n; i++) {
		num_post *np = &ps->posts[i];

		if (ps->heap) {
			np = calloc(1, sizeof(*np));
			if (np == NULL) {
				atomic_fetch_add(&ps->alloc_failures, 1);
				continue;
			}
			np->heap = true;
		}
		np->base.fn = num_run;
		np->n = i;
		asynq_sched_post(ps->sched, &np->base);
	}
	asynq_sched_post(ps->sched, &ps->set.base);
	return NULL;
}

/* poster_start starts a thread that completes promise p with v. */
static void
poster_start(pthread_t *th, asynq_future *p, int64_t v, int delay_ms, int n,
    bool heap)
{
	poster *ps = &the_poster;

	memset(ps, 0, sizeof(*ps));
	ps->sched = asynq_sched_current();
	assert_non_null(ps->sched);
	ps->delay_ms = delay_ms;
	ps->n = n;
	ps->heap = heap;
	ps->set.base.fn = set_run;
	ps->set.promise = p;
	ps->set.value = v;
	ps->set.st = ASYNQ_UNKNOWN;
	assert_int_equal(pthread_create(th, NULL, poster_main, ps), 0);
}

static int
post_setup(void **state)
{
	run_len = 0;
	run_off_thread = 0;
	sched_thread = pthread_self();
	return tu_setup(state);
}

#define POST_TEST(fn)                                                          \
	cmocka_unit_test_setup_teardown(fn, post_setup, tu_teardown)

static void
test_post_sets_promise_from_another_thread(void **state)
{
	asynq_sched_stats s0, s1;
	asynq_future *p;
	pthread_t th;
	uint64_t t0;

	(void)state;
	p = asynq_promise_alloc();
	assert_non_null(p);
	assert_false(asynq_future_done(p));
	assert_status(asynq_future_status(p), ASYNQ_FAILED_PRECONDITION);
	s0 = tu_stats();
	t0 = asynq_now_ns();
	poster_start(&th, p, 42, 20, 0, false);
	/* Nothing else can run: the pending promise keeps the scheduler
	 * asleep until the post arrives, instead of reporting a deadlock. */
	assert_status(asynq_wait(p), ASYNQ_OK);
	pthread_join(th, NULL);
	s1 = tu_stats();
	assert_true(asynq_now_ns() - t0 >= 20 * MS);
	assert_true(the_poster.set.ran);
	assert_status(the_poster.set.st, ASYNQ_OK);
	assert_int_equal(run_off_thread, 0);
	assert_int_equal(asynq_future_i64(p), 42);
	assert_true(s1.sleeps > s0.sleeps);
	asynq_future_rele(p);
}

static void
test_post_runs_in_posting_order(void **state)
{
	asynq_future *p;
	pthread_t th;

	(void)state;
	p = asynq_promise_alloc();
	assert_non_null(p);
	poster_start(&th, p, 1, 0, 100, false);
	assert_status(asynq_wait(p), ASYNQ_OK);
	pthread_join(th, NULL);
	assert_int_equal(run_off_thread, 0);
	assert_int_equal(run_len, 100);
	assert_int_equal(the_poster.set.posts_before, 100);
	for (int i = 0; i < 100; i++)
		assert_int_equal(run_log[i], i);
	asynq_future_rele(p);
}

static void
test_post_may_free_itself(void **state)
{
	asynq_future *p;
	pthread_t th;

	(void)state;
	p = asynq_promise_alloc();
	assert_non_null(p);
	/* Each post's function frees it: ASan reports any later use. */
	poster_start(&th, p, 1, 0, 200, true);
	assert_status(asynq_wait(p), ASYNQ_OK);
	pthread_join(th, NULL);
	assert_int_equal(atomic_load(&the_poster.alloc_failures), 0);
	assert_int_equal(run_len, 200);
	for (int i = 0; i < 200; i++)
		assert_int_equal(run_log[i], i);
	asynq_future_rele(p);
}

/* One burst: while the scheduler sleeps on a promise, another thread posts
 * MAX_POSTS numbered posts and then the one that sets it; returns how often
 * the scheduler slept meanwhile. */
static uint64_t
burst_sleeps(void)
{
	asynq_sched_stats s0, s1;
	asynq_future *p;
	pthread_t th;

	run_len = 0;
	p = asynq_promise_alloc();
	assert_non_null(p);
	s0 = tu_stats();
	poster_start(&th, p, 3, 20, MAX_POSTS, false);
	assert_status(asynq_wait(p), ASYNQ_OK);
	pthread_join(th, NULL);
	s1 = tu_stats();
	asynq_future_rele(p);
	assert_int_equal(run_len, MAX_POSTS);
	assert_int_equal(the_poster.set.posts_before, MAX_POSTS);
	for (int i = 0; i < MAX_POSTS; i++)
		assert_int_equal(run_log[i], i);
	return s1.sleeps - s0.sleeps;
}

static void
test_post_burst_costs_one_wakeup(void **state)
{
	uint64_t best = UINT64_MAX;

	(void)state;
	/* A poster preempted mid-burst (a loaded machine, TSan) lets the
	 * scheduler catch up and sleep again, so the best of three bursts is
	 * judged: a scheduler woken per post sleeps ~1,000 times in each. */
	for (int attempt = 0; attempt < 3 && best >= 50; attempt++) {
		uint64_t n = burst_sleeps();

		print_message("scheduler slept %llu time(s) for 1,001 posts\n",
		    (unsigned long long)n);
		if (n < best)
			best = n;
	}
	if (best >= 50)
		fail_msg("slept %llu times (best of 3) for a burst of 1,001 "
		         "posts",
		    (unsigned long long)best);
}

/* ---- Promises awaited by tasks --------------------------------------- */

static asynq_status
await_promise_task(asynq_task *t, void *arg)
{
	asynq_future *p = arg;
	asynq_status st = asynq_await(t, p);

	TCHECK_STATUS(st, ASYNQ_OK);
	TCHECK(asynq_task_current() == t);
	ASYNQ_TRY(st);
	return asynq_return_i64(t, asynq_future_i64(p) + 1);
}

static void
test_post_task_awaits_promise(void **state)
{
	asynq_future *p, *fs[3];
	pthread_t th;

	(void)state;
	p = asynq_promise_alloc();
	assert_non_null(p);
	/* Three tasks block on the same promise; one post wakes them all. */
	for (int i = 0; i < 3; i++)
		fs[i] = asynq_spawn(await_promise_task, p);
	poster_start(&th, p, 10, 5, 0, false);
	assert_status(asynq_wait_all(fs, 3), ASYNQ_OK);
	pthread_join(th, NULL);
	ASSERT_TASK_CHECKS(6);
	for (int i = 0; i < 3; i++)
		assert_int_equal(asynq_future_i64(fs[i]), 11);
	asynq_future_rele_n(fs, 3);
	asynq_future_rele(p);
}

/* ---- The promise setters --------------------------------------------- */

static int freed; /* strings freed by count_free */

static void
count_free(void *p)
{
	freed++;
	free(p);
}

static void
test_post_promise_sets_once(void **state)
{
	asynq_future *p, *c;

	(void)state;
	freed = 0;
	p = asynq_promise_alloc();
	assert_non_null(p);
	assert_status(asynq_promise_set_i64(p, 5), ASYNQ_OK);
	assert_true(asynq_future_done(p));
	assert_status(asynq_promise_set_i64(p, 6), ASYNQ_FAILED_PRECONDITION);
	/* A refused pointer is freed at once. */
	assert_status(asynq_promise_set_ptr(p, strdup("late"), count_free),
	    ASYNQ_FAILED_PRECONDITION);
	assert_int_equal(freed, 1);
	assert_status(asynq_wait(p), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(p), 5);
	asynq_future_rele(p);

	/* Only promises can be set. */
	c = asynq_const_i64(1);
	assert_non_null(c);
	assert_status(asynq_promise_set_i64(c, 2), ASYNQ_FAILED_PRECONDITION);
	assert_int_equal(asynq_future_i64(c), 1);
	asynq_future_rele(c);
	assert_status(asynq_promise_set_i64(NULL, 2),
	    ASYNQ_FAILED_PRECONDITION);
}

static void
test_post_promise_ptr_ownership(void **state)
{
	asynq_future *p, *q;
	void (*fn)(void *) = NULL;
	char *s;

	(void)state;
	freed = 0;
	/* Taken with its free function, to hand on. */
	p = asynq_promise_alloc();
	assert_non_null(p);
	assert_status(asynq_promise_set_ptr(p, strdup("taken"), count_free),
	    ASYNQ_OK);
	assert_string_equal(asynq_future_ptr(p), "taken");
	s = asynq_future_take_owned(p, &fn);
	assert_ptr_equal(fn, count_free);
	assert_string_equal(s, "taken");
	assert_null(asynq_future_take(p));
	asynq_future_rele(p);
	assert_int_equal(freed, 0);
	fn(s);
	assert_int_equal(freed, 1);

	/* Not taken: the promise frees it with the function it came with. */
	q = asynq_promise_alloc();
	assert_non_null(q);
	assert_status(asynq_promise_set_ptr(q, strdup("kept"), count_free),
	    ASYNQ_OK);
	asynq_future_rele(q);
	assert_int_equal(freed, 2);
}

static asynq_status
await_failing_promise_task(asynq_task *t, void *arg)
{
	asynq_status st = asynq_await(t, arg);

	TCHECK_STATUS(st, ASYNQ_ABORTED);
	TCHECK(asynq_task_error(t) != NULL);
	TCHECK_STATUS(asynq_error_code(asynq_task_error(t)), ASYNQ_ABORTED);
	return st;
}

static void
test_post_promise_error(void **state)
{
	asynq_future *p, *f;
	asynq_error *e;

	(void)state;
	p = asynq_promise_alloc();
	assert_non_null(p);
	f = asynq_spawn(await_failing_promise_task, p);
	e = asynq_error_alloc(ASYNQ_ABORTED, "backend %s went away", "db");
	assert_non_null(e);
	/* Set before anything awaits it: the task still sees the error. */
	assert_status(asynq_promise_set_error(p, e), ASYNQ_OK);
	assert_status(asynq_future_status(p), ASYNQ_ABORTED);
	assert_contains(asynq_error_message(asynq_future_error(p)),
	    "backend db went away");
	assert_status(asynq_wait(f), ASYNQ_ABORTED);
	ASSERT_TASK_CHECKS(3);
	asynq_future_rele(f);
	asynq_future_rele(p);
}

/* ---- Fire and forget ------------------------------------------------- */

static asynq_status
logged_task(asynq_task *t, void *arg)
{
	tu_log("%s ", (const char *)arg);
	return asynq_return_i64(t, (int64_t)strlen(arg));
}

static int64_t done_values[4];
static int done_calls;

static asynq_status
note_done(asynq_future *f, void *arg)
{
	(void)arg;
	if (done_calls < 4)
		done_values[done_calls] = asynq_future_i64(f);
	done_calls++;
	return ASYNQ_OK;
}

static void
test_post_task_start_fire_and_forget(void **state)
{
	asynq_future *a, *b, *tick, *c;

	(void)state;
	done_calls = 0;
	a = asynq_spawn(logged_task, "a");
	b = asynq_spawn(logged_task, "bb");
	assert_status(asynq_future_on_done(a, note_done, NULL), ASYNQ_OK);
	assert_status(asynq_future_on_done(b, note_done, NULL), ASYNQ_OK);
	asynq_task_start(a);
	asynq_task_start(b);
	asynq_task_start(a); /* already started: no effect */
	c = asynq_const_i64(0);
	asynq_task_start(c); /* not a task: no effect */
	/* Started, not run: nothing runs until the scheduler does. */
	assert_string_equal(tu_log_str(), "");
	assert_false(asynq_future_done(a));
	/* Dropping our references does not stop them. */
	asynq_future_rele(a);
	asynq_future_rele(b);
	tick = asynq_sleep(1 * MS);
	assert_status(asynq_wait(tick), ASYNQ_OK);
	/* They ran once each, in start order, and their results arrived. */
	assert_string_equal(tu_log_str(), "a bb ");
	assert_int_equal(done_calls, 2);
	assert_int_equal(done_values[0], 1);
	assert_int_equal(done_values[1], 2);
	assert_int_equal(tu_stats().tasks_live, 0);
	asynq_future_rele(tick);
	asynq_future_rele(c);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		POST_TEST(test_post_sets_promise_from_another_thread),
		POST_TEST(test_post_runs_in_posting_order),
		POST_TEST(test_post_may_free_itself),
		POST_TEST(test_post_burst_costs_one_wakeup),
		POST_TEST(test_post_task_awaits_promise),
		POST_TEST(test_post_promise_sets_once),
		POST_TEST(test_post_promise_ptr_ownership),
		POST_TEST(test_post_promise_error),
		POST_TEST(test_post_task_start_fire_and_forget),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
