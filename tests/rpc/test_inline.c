/* SPDX-License-Identifier: MIT */
/*
 * A request's per-call handlers run one after another inside one task, as
 * plain calls, and the calls after one that suspends go on in a new task at
 * once (server.c's runners, framework/core/handoff.h). What a user sees:
 *
 * - Handlers that never suspend cost no task each: a request of 100 calls
 *   starts at most 3 tasks on the server's worker (the request's, a runner,
 *   and at most one more), where it started 101.
 * - Handlers that suspend still overlap: of 100 calls that each sleep
 *   50 ms, and of 1,000 in one request, all are asleep at once (the chain
 *   of handoffs meets no task-depth limit).
 * - Nothing one call leaves on the task reaches the next: a handler that
 *   returns NOT_FOUND without a message right after one that failed with
 *   asynq_fail's "failed 5" gets "not found", a scoped value one left
 *   pushed is gone for the next, and each call reads its own metadata.
 * - Mixed requests (suspending, not suspending, whole-batch) answer every
 *   call with its own value.
 */
#include "tests/rpc/rpc_fixture.h"

#define NUM(p) ((const Asynq__Rpctest__Num *)(p))

/* Spin, here: returns status v with no asynq_fail (so no message). */
static asynq_status
h_bare(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	if (NUM(req)->v != 0)
		return (asynq_status)NUM(req)->v;
	Asynq__Rpctest__Num *out = asynq__rpctest__calc__spin__reply_new();
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	*reply = &out->base;
	return ASYNQ_OK;
}

/* Nap, here: sleeps v ms, counting the calls asleep at once. */
static int active, most_active;

static asynq_status
h_nap_count(asynq_task *t, const ProtobufCMessage *req,
    ProtobufCMessage **reply, void *ctx)
{
	(void)ctx;
	atomic_fetch_add(&nap_runs, 1);
	if (++active > most_active) /* one worker: no race */
		most_active = active;
	asynq_future *f = asynq_sleep((uint64_t)NUM(req)->v * 1000000u);
	asynq_status st = asynq_await(t, f);
	asynq_future_rele(f);
	active--;
	ASYNQ_TRY(st);
	Asynq__Rpctest__Num *out = asynq__rpctest__calc__nap__reply_new();
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	out->v = NUM(req)->v;
	*reply = &out->base;
	return ASYNQ_OK;
}

/* Lookup, here: an odd v pushes a scoped value and leaves it pushed; an
 * even v replies 1 if it sees one, else 0. */
static const asynq_scoped left_key = ASYNQ_SCOPED_INIT("test.left", 0);

static asynq_status
h_leaky(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	Asynq__Rpctest__Num *out = asynq__rpctest__calc__lookup__reply_new();
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	if (NUM(req)->v % 2 != 0)
		ASYNQ_TRY(asynq_scoped_push(&left_key, (void *)1));
	else
		out->v = asynq_scoped_get(&left_key) != NULL;
	*reply = &out->base;
	return ASYNQ_OK;
}

/* Tasks the server's worker started (one worker, read on it). */
static asynq_status
stats_main(asynq_task *t, void *arg)
{
	(void)t;
	asynq_sched_stats st;
	asynq_sched_stats_get(&st);
	*(uint64_t *)arg = st.tasks_started;
	return ASYNQ_OK;
}

static uint64_t
worker_tasks(fixture *fx)
{
	uint64_t n = 0;
	asynq_ticket *tk = NULL;
	assert_int_equal(asynq_runtime_submit(fx->rt, 0, stats_main, &n, &tk),
	    ASYNQ_OK);
	assert_int_equal(asynq_ticket_wait(tk), ASYNQ_OK);
	asynq_ticket_free(tk);
	return n;
}

static asynq_rpc_handler handlers[64];

static void
start(fixture *fx, size_t chan_max_calls)
{
	memcpy(handlers, calc_handlers, CALC->n_methods * sizeof(handlers[0]));
	handlers[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_SPIN] =
	    (asynq_rpc_handler){ .unary = h_bare };
	handlers[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_NAP] =
	    (asynq_rpc_handler){ .unary = h_nap_count };
	handlers[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_LOOKUP] =
	    (asynq_rpc_handler){ .unary = h_leaky };
	asynq_rpc_server_cfg scfg = { .max_calls = 2000 };
	fx_server_with(fx, TRANSPORT_INPROC, &scfg, 1, handlers);
	const char *urls[] = { fx->url };
	/* Identical calls stay separate calls (Nap is idempotent). */
	asynq_rpc_channel_cfg ccfg = { .urls = urls,
		.n_urls = 1,
		.max_calls = chan_max_calls,
		.no_collapse = true };
	assert_int_equal(asynq_rpc_channel_alloc(&fx->ch, CALC, &ccfg),
	    ASYNQ_OK);
}

/* A batch of calls, each its own method and value, made at once. */
typedef struct mix {
	asynq_rpc_channel *ch;
	size_t n;
	const asynq_rpc_method_desc **ms;
	const int64_t *vs;
	const char **tags; /* "tag" metadata per call, NULL: none */
	asynq_future **out;
} mix;

static asynq_status
mix_main(asynq_task *t, void *arg)
{
	mix *x = arg;
	for (size_t i = 0; i < x->n; i++) {
		if (x->tags != NULL && x->tags[i] != NULL)
			assert_int_equal(asynq_rpc_metadata_push("tag",
			                     x->tags[i], strlen(x->tags[i])),
			    ASYNQ_OK);
		x->out[i] = call_num(x->ch, x->ms[i], x->vs[i]);
		if (x->tags != NULL && x->tags[i] != NULL)
			assert_int_equal(asynq_rpc_metadata_pop(), ASYNQ_OK);
	}
	(void)asynq_await_all(t, x->out, x->n);
	return ASYNQ_OK;
}

static void
run_mix(mix *x)
{
	asynq_future *f = asynq_spawn(mix_main, x);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

static void
test_inline_handlers_start_no_task_each(void **state)
{
	(void)state;
	fixture fx;
	start(&fx, 0);
	enum { N = 100 };
	asynq_future *fs[N];
	job j = { .ch = fx.ch, .m = M(TWICE), .n = N, .out = fs };
	run_job(&j); /* warm */
	asynq_future_rele_n(fs, N);
	uint64_t before = worker_tasks(&fx);
	run_job(&j);
	uint64_t after = worker_tasks(&fx);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(num_of(fs[i]), (int64_t)i * 2);
	asynq_future_rele_n(fs, N);
	assert_int_equal(fx_stats(&fx).requests, 2);
	/* The request's task and its runner (the stats task is one more). */
	print_message("a request of %d calls started %llu tasks\n", N,
	    (unsigned long long)(after - before - 1));
	assert_true(after - before - 1 <= 3);
	fx_stop(&fx);
}

static void
test_suspending_handlers_overlap(void **state)
{
	(void)state;
	fixture fx;
	start(&fx, 2000);
	size_t sizes[] = { 100, 1000 };
	for (size_t s = 0; s < 2; s++) {
		size_t n = sizes[s];
		asynq_future **fs = calloc(n, sizeof(*fs));
		const asynq_rpc_method_desc **ms = calloc(n, sizeof(*ms));
		int64_t *vs = calloc(n, sizeof(*vs));
		assert_non_null(fs);
		assert_non_null(ms);
		assert_non_null(vs);
		for (size_t i = 0; i < n; i++) {
			ms[i] = M(NAP);
			vs[i] = 50;
		}
		atomic_store(&nap_runs, 0);
		most_active = 0;
		uint64_t reqs = fx_stats(&fx).requests;
		uint64_t t0 = asynq_now_ns();
		mix x = { .ch = fx.ch, .n = n, .ms = ms, .vs = vs, .out = fs };
		run_mix(&x);
		int64_t took = ms_since(t0);
		for (size_t i = 0; i < n; i++)
			assert_int_equal(num_of(fs[i]), 50);
		assert_int_equal(atomic_load(&nap_runs), (int)n);
		assert_int_equal(fx_stats(&fx).requests, reqs + 1);
		print_message("%zu calls sleeping 50 ms in one request: all "
		              "%d asleep at once, %lld ms\n",
		    n, most_active, (long long)took);
		/* Every handler was asleep before the first woke: none waited
		 * for another to finish. */
		assert_int_equal(most_active, (int)n);
		asynq_future_rele_n(fs, n);
		free(fs);
		free(ms);
		free(vs);
	}
	fx_stop(&fx);
}

static void
test_nothing_leaks_from_one_call_to_the_next(void **state)
{
	(void)state;
	fixture fx;
	start(&fx, 0);
	/* Fail(5) fails with "failed 5"; Spin(5) returns 5 bare; Twice reads
	 * its call's tag. */
	const asynq_rpc_method_desc *ms[] = { M(FAIL), M(SPIN), M(TWICE),
		M(TWICE), M(SPIN), M(TWICE), M(LOOKUP), M(LOOKUP) };
	int64_t vs[] = { ASYNQ_NOT_FOUND, ASYNQ_NOT_FOUND, 1, 2, 0, 3, 1, 2 };
	const char *tags[] = { NULL, NULL, "one", NULL, NULL, "three", NULL,
		NULL };
	enum { N = 8 };
	asynq_future *fs[N];
	mix x = { .ch = fx.ch,
		.n = N,
		.ms = ms,
		.vs = vs,
		.tags = tags,
		.out = fs };
	run_mix(&x);
	assert_int_equal(asynq_future_status(fs[0]), ASYNQ_NOT_FOUND);
	assert_non_null(
	    strstr(asynq_error_message(asynq_future_error(fs[0])), "failed 5"));
	assert_int_equal(asynq_future_status(fs[1]), ASYNQ_NOT_FOUND);
	const char *bare = asynq_error_message(asynq_future_error(fs[1]));
	print_message("a bare NOT_FOUND after \"failed 5\": \"%s\"\n", bare);
	assert_null(strstr(bare, "failed 5"));
	const Asynq__Rpctest__Num *r2 = asynq_future_ptr(fs[2]);
	const Asynq__Rpctest__Num *r3 = asynq_future_ptr(fs[3]);
	const Asynq__Rpctest__Num *r5 = asynq_future_ptr(fs[5]);
	assert_non_null(r2);
	assert_non_null(r3);
	assert_non_null(r5);
	assert_int_equal(r2->v, 2);
	assert_string_equal(r2->s, "one");
	assert_int_equal(r3->v, 4);
	assert_string_equal(r3->s, "");
	assert_int_equal(r5->v, 6);
	assert_string_equal(r5->s, "three");
	assert_int_equal(asynq_future_status(fs[4]), ASYNQ_OK);
	/* Lookup(1) left a scoped value pushed; Lookup(2) does not see it. */
	assert_int_equal(num_of(fs[6]), 0);
	assert_int_equal(num_of(fs[7]), 0);
	asynq_future_rele_n(fs, N);
	fx_stop(&fx);
}

static void
test_mixed_request_answers_every_call(void **state)
{
	(void)state;
	fixture fx;
	start(&fx, 0);
	/* Nap (suspends), Twice (does not) and Sum (whole batch),
	 * interleaved: 90 calls in one request. */
	enum { N = 90 };
	const asynq_rpc_method_desc *ms[N];
	int64_t vs[N];
	asynq_future *fs[N];
	for (size_t i = 0; i < N; i++) {
		ms[i] = i % 3 == 0 ? M(NAP) : i % 3 == 1 ? M(TWICE) : M(SUM);
		vs[i] = i % 3 == 0 ? 5 : (int64_t)i;
	}
	mix x = { .ch = fx.ch, .n = N, .ms = ms, .vs = vs, .out = fs };
	run_mix(&x);
	for (size_t i = 0; i < N; i++) {
		int64_t want = i % 3 == 0 ? 5
		    : i % 3 == 1          ? (int64_t)i * 2
		                          : (int64_t)i + N / 3;
		assert_int_equal(num_of(fs[i]), want);
	}
	asynq_future_rele_n(fs, N);
	assert_int_equal(fx_stats(&fx).calls, N);
	fx_stop(&fx);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_inline_handlers_start_no_task_each),
		cmocka_unit_test(test_suspending_handlers_overlap),
		cmocka_unit_test(test_nothing_leaks_from_one_call_to_the_next),
		cmocka_unit_test(test_mixed_request_answers_every_call),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
