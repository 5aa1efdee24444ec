/* SPDX-License-Identifier: MIT */
/*
 * Retries (asynq_retry_call), ported from asynq's TestRetry: exactly
 * max_tries runs for a retried code, one run for success or another code,
 * arguments passed through, and the backoff waits measured on the clock
 * while the thread keeps running other tasks.
 */
#include "tools_testutil.h"

typedef struct body {
	int calls;
	int fail_first;    /* calls that fail before one succeeds; -1 all */
	asynq_status code; /* the failure's code */
	int64_t value;     /* the success's value */
	uint64_t at[16];   /* when each call started */
	uint64_t rq[16];   /* the thread's run-queue wait by then */
} body;

/* Nanoseconds this thread has spent runnable but waiting for a CPU
 * (/proc/thread-self/schedstat, second field); 0 where it is not kept. */
static uint64_t
runq_wait_ns(void)
{
	FILE *f = fopen("/proc/thread-self/schedstat", "r");
	if (f == NULL)
		return 0;
	unsigned long long on = 0, wait = 0;
	int n = fscanf(f, "%llu %llu", &on, &wait);
	fclose(f);
	return n == 2 ? (uint64_t)wait : 0;
}

static asynq_status
body_fn(asynq_task *t, void *arg)
{
	body *b = arg;
	if (b->calls < 16) {
		b->rq[b->calls] = runq_wait_ns();
		b->at[b->calls] = asynq_now_ns();
	}
	b->calls++;
	if (b->fail_first < 0 || b->calls <= b->fail_first)
		return asynq_fail(t, b->code, "call %d failed", b->calls);
	return asynq_return_i64(t, b->value);
}

static asynq_status
run(const asynq_retry_cfg *cfg, body *b)
{
	asynq_future *f = asynq_retry_call(cfg, body_fn, b, NULL);
	asynq_status st = asynq_wait(f);
	if (st == ASYNQ_OK)
		assert_int_equal(asynq_future_i64(f), b->value);
	asynq_future_rele(f);
	return st;
}

static void
test_retry_passes_arguments_and_does_not_retry_success(void **state)
{
	(void)state;
	asynq_retry_cfg cfg = { .max_tries = 3, .delay_ns = 1 * MS };
	body b = { .value = 42 };
	assert_status(run(&cfg, &b), ASYNQ_OK);
	assert_int_equal(b.calls, 1);
}

static void
test_retry_does_not_retry_unspecified_code(void **state)
{
	(void)state;
	asynq_retry_cfg cfg = { .max_tries = 3,
		.delay_ns = 1 * MS,
		.retry_on = ASYNQ_RETRY_ON(ASYNQ_UNAVAILABLE) };
	body b = { .fail_first = -1, .code = ASYNQ_NOT_FOUND };
	assert_status(run(&cfg, &b), ASYNQ_NOT_FOUND);
	assert_int_equal(b.calls, 1);
}

static void
test_retry_runs_exactly_max_tries(void **state)
{
	(void)state;
	for (size_t max = 1; max <= 4; max++) {
		asynq_retry_cfg cfg = { .max_tries = max, .delay_ns = 1 * MS };
		body b = { .fail_first = -1, .code = ASYNQ_UNAVAILABLE };
		asynq_future *f = asynq_retry_call(&cfg, body_fn, &b, NULL);
		assert_status(asynq_wait(f), ASYNQ_UNAVAILABLE);
		assert_int_equal(b.calls, (int)max);
		/* The error is the last try's. */
		char want[32];
		snprintf(want, sizeof(want), "call %zu failed", max);
		assert_contains(asynq_error_message(asynq_future_error(f)),
		    want);
		asynq_future_rele(f);
	}
}

static void
test_retry_takes_several_codes(void **state)
{
	(void)state;
	asynq_retry_cfg cfg = { .max_tries = 4,
		.delay_ns = 1 * MS,
		.retry_on = ASYNQ_RETRY_ON(ASYNQ_UNAVAILABLE) |
		    ASYNQ_RETRY_ON(ASYNQ_ABORTED) };
	body b = { .fail_first = -1, .code = ASYNQ_UNAVAILABLE };
	assert_status(run(&cfg, &b), ASYNQ_UNAVAILABLE);
	assert_int_equal(b.calls, 4);
	body c = { .fail_first = -1, .code = ASYNQ_ABORTED };
	assert_status(run(&cfg, &c), ASYNQ_ABORTED);
	assert_int_equal(c.calls, 4);
	body d = { .fail_first = 2, .code = ASYNQ_ABORTED, .value = 7 };
	assert_status(run(&cfg, &d), ASYNQ_OK);
	assert_int_equal(d.calls, 3);
}

static void
test_retry_defaults(void **state)
{
	(void)state;
	/* NULL cfg: 3 tries, 50 ms then 100 ms, on UNAVAILABLE. */
	assert_int_equal(asynq_retry_delay_ns(NULL, 0), 50 * MS);
	assert_int_equal(asynq_retry_delay_ns(NULL, 1), 100 * MS);
	asynq_retry_cfg capped = { .delay_ns = 10 * MS,
		.backoff = 3,
		.max_delay_ns = 50 * MS };
	assert_int_equal(asynq_retry_delay_ns(&capped, 1), 30 * MS);
	assert_int_equal(asynq_retry_delay_ns(&capped, 2), 50 * MS);
	assert_int_equal(asynq_retry_delay_ns(&capped, 30), 50 * MS);
	body b = { .fail_first = -1, .code = ASYNQ_UNAVAILABLE };
	asynq_future *f = asynq_retry_call(NULL, body_fn, &b, NULL);
	assert_status(asynq_wait(f), ASYNQ_UNAVAILABLE);
	asynq_future_rele(f);
	assert_int_equal(b.calls, 3);
}

/* Waits measured between try starts: at least the delay, and not much
 * more. A timer never fires early; on a loaded machine the thread may wake
 * late, so the upper bound leaves 15 ms, still less than the next doubling
 * would add, plus whatever time the thread spent runnable but waiting for
 * a CPU during the wait (the kernel's count): under ASan with other tests
 * beside it, a wait of 50.6 ms once took 85 ms. */
#define LATE_SLACK (15 * MS)

static void
check_gaps(const body *b, const uint64_t *want, int n, double jitter)
{
	for (int i = 0; i < n; i++) {
		uint64_t gap = b->at[i + 1] - b->at[i];
		uint64_t queued = b->rq[i + 1] - b->rq[i];
		uint64_t lo = (uint64_t)((double)want[i] * (1.0 - jitter));
		uint64_t hi = want[i] + LATE_SLACK + queued;
		if (gap < lo || gap > hi)
			fail_msg("wait %d: %.2f ms, want %.2f..%.2f ms (%.2f ms"
			         " of it waiting for a CPU)",
			    i, gap / 1e6, lo / 1e6, hi / 1e6, queued / 1e6);
	}
}

static void
test_retry_backoff_delays(void **state)
{
	(void)state;
	asynq_retry_cfg cfg = { .max_tries = 4,
		.delay_ns = 20 * MS,
		.backoff = 2 };
	body b = { .fail_first = -1, .code = ASYNQ_UNAVAILABLE };
	assert_status(run(&cfg, &b), ASYNQ_UNAVAILABLE);
	assert_int_equal(b.calls, 4);
	const uint64_t want[3] = { 20 * MS, 40 * MS, 80 * MS };
	check_gaps(&b, want, 3, 0);

	/* Capped. */
	asynq_retry_cfg capped = { .max_tries = 4,
		.delay_ns = 20 * MS,
		.backoff = 2,
		.max_delay_ns = 30 * MS };
	body c = { .fail_first = -1, .code = ASYNQ_UNAVAILABLE };
	assert_status(run(&capped, &c), ASYNQ_UNAVAILABLE);
	const uint64_t want_capped[3] = { 20 * MS, 30 * MS, 30 * MS };
	check_gaps(&c, want_capped, 3, 0);
}

static void
test_retry_jitter_stays_in_range(void **state)
{
	(void)state;
	asynq_retry_cfg cfg = { .max_tries = 6,
		.delay_ns = 10 * MS,
		.backoff = 1.5,
		.jitter = 0.5 };
	body b = { .fail_first = -1, .code = ASYNQ_UNAVAILABLE };
	assert_status(run(&cfg, &b), ASYNQ_UNAVAILABLE);
	assert_int_equal(b.calls, 6);
	uint64_t want[5];
	int below = 0;
	for (int i = 0; i < 5; i++) {
		want[i] = asynq_retry_delay_ns(&cfg, (size_t)i);
		if (b.at[i + 1] - b.at[i] + MS < want[i])
			below++;
	}
	check_gaps(&b, want, 5, 0.5);
	/* Jitter did shorten some wait (5 draws all within 1 ms of the top
	 * would be a broken generator). */
	assert_true(below > 0);
}

/* While the retry sleeps, the thread runs other tasks and flushes. */
static asynq_status
other_work(asynq_task *t, void *arg)
{
	uint64_t *done_at = arg;
	TCHECK_STATUS(asynq_debug_sync(t), ASYNQ_OK);
	*done_at = asynq_now_ns();
	return ASYNQ_OK;
}

static void
test_retry_sleep_does_not_block_thread(void **state)
{
	(void)state;
	asynq_retry_cfg cfg = { .max_tries = 2, .delay_ns = 50 * MS };
	body b = { .fail_first = 1, .code = ASYNQ_UNAVAILABLE, .value = 5 };
	uint64_t other_done = 0;
	asynq_future *fs[2] = {
		asynq_retry_call(&cfg, body_fn, &b, NULL),
		asynq_spawn(other_work, &other_done),
	};
	assert_status(asynq_wait_all(fs, 2), ASYNQ_OK);
	asynq_future_rele_n(fs, 2);
	ASSERT_TASK_CHECKS(1);
	assert_int_equal(b.calls, 2);
	/* The other task finished during the wait, well before try two. */
	assert_true(other_done > b.at[0]);
	assert_true(other_done + 40 * MS < b.at[1]);
}

/* Arguments move to the retry task and are freed once, at the end. */
static int frees;

static void
count_free(void *p)
{
	frees++;
	free(p);
}

static void
test_retry_arg_freed_once(void **state)
{
	(void)state;
	asynq_retry_cfg cfg = { .max_tries = 3, .delay_ns = 1 * MS };
	body *b = calloc(1, sizeof(*b));
	b->fail_first = 2;
	b->code = ASYNQ_UNAVAILABLE;
	b->value = 9;
	frees = 0;
	asynq_future *f = asynq_retry_call(&cfg, body_fn, b, count_free);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), 9);
	assert_int_equal(frees, 1);
	asynq_future_rele(f);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TT_TEST(test_retry_passes_arguments_and_does_not_retry_success),
		TT_TEST(test_retry_does_not_retry_unspecified_code),
		TT_TEST(test_retry_runs_exactly_max_tries),
		TT_TEST(test_retry_takes_several_codes),
		TT_TEST(test_retry_defaults),
		TT_TEST(test_retry_backoff_delays),
		TT_TEST(test_retry_jitter_stays_in_range),
		TT_TEST(test_retry_sleep_does_not_block_thread),
		TT_TEST(test_retry_arg_freed_once),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
