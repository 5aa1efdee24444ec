/* SPDX-License-Identifier: MIT */
/*
 * Replies in the request's memory (asynq_rpc_reply_new / _reply_alloc) and
 * what a call costs in mallocs once a channel and a server are warm.
 *
 * - Handlers that build their replies (strings included) with reply_new
 *   and reply_alloc, per-call and whole-batch, get them to their callers;
 *   the server never frees them (ASan would report a free of memory malloc
 *   never gave).
 * - Outside a handler both return NULL; a handler's reply memory counts
 *   against the request's decode_budget, and what it can take stops short
 *   of that budget by no more than what the request itself used.
 * - In steady state a call costs no malloc on either side: this binary
 *   counts every malloc of the process (its own malloc, calloc and realloc
 *   in front of glibc's), and rounds of 100 calls (one request each) take
 *   as many mallocs as rounds of 10: each buffer and arena of a request
 *   starts with the room the last one needed. Sanitizer builds have their
 *   own allocator in front, so that test says it is skipped there.
 */
#include "tests/rpc/rpc_fixture.h"

#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define COUNTING 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define COUNTING 0
#endif
#endif
#ifndef COUNTING
#define COUNTING 1
#endif

#define NUM(p) ((const Asynq__Rpctest__Num *)(p))

/* ---- Counting mallocs ------------------------------------------------- */

static atomic_ulong n_mallocs;

#if COUNTING
extern void *__libc_malloc(size_t n);
extern void *__libc_calloc(size_t n, size_t size);
extern void *__libc_realloc(void *p, size_t n);
extern void __libc_free(void *p);

void *
malloc(size_t n)
{
	atomic_fetch_add_explicit(&n_mallocs, 1, memory_order_relaxed);
	return __libc_malloc(n);
}

void *
calloc(size_t n, size_t size)
{
	atomic_fetch_add_explicit(&n_mallocs, 1, memory_order_relaxed);
	return __libc_calloc(n, size);
}

void *
realloc(void *p, size_t n)
{
	atomic_fetch_add_explicit(&n_mallocs, 1, memory_order_relaxed);
	return __libc_realloc(p, n);
}

void
free(void *p)
{
	__libc_free(p);
}
#endif

/* ---- Handlers that reply in the request's memory ---------------------- */

/* Twice: v * 2, s = "twice <v>" in reply memory. */
static asynq_status
h_twice(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)ctx;
	Asynq__Rpctest__Num *out = asynq__rpctest__calc__twice__reply_new();
	char *s = asynq_rpc_reply_alloc(32);
	if (out == NULL || s == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
		    "no reply memory");
	snprintf(s, 32, "twice %lld", (long long)NUM(req)->v);
	out->v = NUM(req)->v * 2;
	out->s = s;
	*reply = &out->base;
	return ASYNQ_OK;
}

/* Sum (whole batch): v + n. */
static asynq_status
h_sum(asynq_task *t, asynq_rpc_batch_call *calls, size_t n, void *ctx)
{
	(void)ctx;
	for (size_t i = 0; i < n; i++) {
		Asynq__Rpctest__Num *out =
		    asynq__rpctest__calc__sum__reply_new();
		if (out == NULL)
			return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
			    "no reply memory");
		out->v = NUM(calls[i].req)->v + (int64_t)n;
		calls[i].reply = &out->base;
	}
	return ASYNQ_OK;
}

/* Lookup: takes reply memory 1 KiB at a time until there is none and
 * replies how many KiB it got. */
static asynq_status
h_greedy(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)ctx;
	(void)req;
	Asynq__Rpctest__Num *out = asynq__rpctest__calc__lookup__reply_new();
	if (out == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
		    "no reply memory");
	int64_t kib = 0;
	while (asynq_rpc_reply_alloc(1024) != NULL)
		kib++;
	out->v = kib;
	*reply = &out->base;
	return ASYNQ_OK;
}

/* Spin: asks for v bytes of reply memory in one piece; replies 1 if it got
 * them, 0 if not. */
static asynq_status
h_ask(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)ctx;
	Asynq__Rpctest__Num *out = asynq__rpctest__calc__spin__reply_new();
	if (out == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
		    "no reply memory");
	out->v = asynq_rpc_reply_alloc((size_t)NUM(req)->v) != NULL;
	*reply = &out->base;
	return ASYNQ_OK;
}

static asynq_rpc_handler handlers[64];

static void
start(fixture *fx, size_t decode_budget, size_t workers)
{
	assert_true(CALC->n_methods <= 64);
	memcpy(handlers, calc_handlers, CALC->n_methods * sizeof(handlers[0]));
	handlers[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_TWICE] =
	    (asynq_rpc_handler){ .unary = h_twice };
	handlers[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_SUM] =
	    (asynq_rpc_handler){ .batch = h_sum };
	handlers[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_LOOKUP] =
	    (asynq_rpc_handler){ .unary = h_greedy };
	handlers[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_SPIN] =
	    (asynq_rpc_handler){ .unary = h_ask };
	asynq_rpc_server_cfg scfg = { .decode_budget = decode_budget };
	fx_server_with(fx, TRANSPORT_INPROC, &scfg, workers, handlers);
	const char *urls[] = { fx->url };
	asynq_rpc_channel_cfg ccfg = { .urls = urls, .n_urls = 1 };
	assert_int_equal(asynq_rpc_channel_alloc(&fx->ch, CALC, &ccfg),
	    ASYNQ_OK);
}

/* Makes n calls of m (v = i) in one batch and waits for them: the futures
 * go to out, to be released by the caller. */
static void
calls(fixture *fx, const asynq_rpc_method_desc *m, size_t n, asynq_future **out)
{
	job j = { .ch = fx->ch, .m = m, .n = n, .out = out };
	run_job(&j);
	assert_int_equal(j.st, ASYNQ_OK);
}

static void
test_reply_new_reaches_callers(void **state)
{
	(void)state;
	fixture fx;
	start(&fx, 0, 2);
	enum { N = 150 };
	asynq_future *fs[N];
	calls(&fx, M(TWICE), N, fs);
	for (size_t i = 0; i < N; i++) {
		const Asynq__Rpctest__Num *r = asynq_future_ptr(fs[i]);
		assert_non_null(r);
		assert_int_equal(r->v, (int64_t)i * 2);
		char want[32];
		snprintf(want, sizeof(want), "twice %zu", i);
		assert_string_equal(r->s, want);
	}
	asynq_future_rele_n(fs, N);
	/* 150 calls of Sum with batch_max_calls 100: requests of 100 and 50,
	 * each call replies v + the calls of its request. */
	calls(&fx, M(SUM), N, fs);
	size_t with100 = 0, with50 = 0;
	for (size_t i = 0; i < N; i++) {
		int64_t d = num_of(fs[i]) - (int64_t)i;
		with100 += d == 100;
		with50 += d == 50;
	}
	assert_int_equal(with100, 100);
	assert_int_equal(with50, 50);
	asynq_future_rele_n(fs, N);
	assert_int_equal(fx_stats(&fx).calls, 2 * N);
	fx_stop(&fx);
}

static asynq_status
outside_main(asynq_task *t, void *arg)
{
	(void)t;
	bool *null = arg;
	*null = asynq_rpc_reply_new(&asynq__rpctest__num__descriptor) == NULL &&
	    asynq_rpc_reply_alloc(16) == NULL;
	return ASYNQ_OK;
}

static void
test_reply_memory_outside_a_handler_is_null(void **state)
{
	(void)state;
	assert_null(asynq_rpc_reply_new(&asynq__rpctest__num__descriptor));
	assert_null(asynq_rpc_reply_alloc(16));
	bool null = false;
	asynq_future *f = asynq_spawn(outside_main, &null);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	assert_true(null);
	asynq_thread_fini();
}

/* One call of m with v = 0, from the test thread; its reply's v. */
static int64_t
one(fixture *fx, const asynq_rpc_method_desc *m)
{
	asynq_future *f;
	job j = { .ch = fx->ch, .m = m, .n = 1, .out = &f };
	run_job(&j);
	int64_t got = asynq_future_status(f) == ASYNQ_OK ? num_of(f) : -1;
	asynq_future_rele(f);
	return got;
}

static asynq_status
ask_main(asynq_task *t, void *arg)
{
	int64_t *v = arg;
	asynq_future *f = call_num(*(asynq_rpc_channel **)(v + 1), M(SPIN), *v);
	asynq_status st = asynq_await(t, f);
	*v = st == ASYNQ_OK ? num_of(f) : -1;
	asynq_future_rele(f);
	return ASYNQ_OK;
}

/* Whether a Spin (h_ask) call for `bytes` got them. */
static int64_t
ask(fixture *fx, int64_t bytes)
{
	struct {
		int64_t v;
		asynq_rpc_channel *ch;
	} a = { bytes, fx->ch };
	asynq_future *f = asynq_spawn(ask_main, &a);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	return a.v;
}

static void
test_reply_memory_counts_against_decode_budget(void **state)
{
	(void)state;
	enum { BUDGET = 64 * 1024 };
	fixture fx;
	start(&fx, BUDGET, 1);
	/* What a handler can take: under the budget, and short of it by no
	 * more than the request's own copy, envelope and decoded call. */
	int64_t kib = one(&fx, M(LOOKUP));
	print_message("a handler got %lld KiB of a %d KiB budget\n",
	    (long long)kib, BUDGET / 1024);
	assert_true(kib * 1024 <= BUDGET);
	assert_true(kib * 1024 >= BUDGET - 4096);
	/* One piece: the whole budget never fits (the request used some),
	 * the budget + 1 neither; a KiB does. The server goes on serving. */
	assert_int_equal(ask(&fx, BUDGET + 1), 0);
	assert_int_equal(ask(&fx, BUDGET), 0);
	assert_int_equal(ask(&fx, BUDGET - 4096), 1);
	assert_int_equal(ask(&fx, 1024), 1);
	assert_int_equal(one(&fx, M(LOOKUP)), kib);
	fx_stop(&fx);
}

/* Mallocs of the whole process while `rounds` rounds of n Twice calls (the
 * per-call handler) or Sum calls (whole batch) run, per round. */
static double
mallocs_per_round(fixture *fx, const asynq_rpc_method_desc *m, size_t n,
    size_t rounds)
{
	asynq_future **fs = calloc(n, sizeof(*fs));
	assert_non_null(fs);
	for (size_t w = 0; w < 20; w++) { /* warm: free lists, pools */
		calls(fx, m, n, fs);
		asynq_future_rele_n(fs, n);
	}
	unsigned long before = atomic_load(&n_mallocs);
	for (size_t r = 0; r < rounds; r++) {
		calls(fx, m, n, fs);
		asynq_future_rele_n(fs, n);
	}
	unsigned long after = atomic_load(&n_mallocs);
	free(fs);
	return (double)(after - before) / (double)rounds;
}

static void
test_steady_state_no_malloc_per_call(void **state)
{
	(void)state;
	if (!COUNTING) {
		print_message("skipped: a sanitizer's allocator is in front of "
		              "malloc in this build\n");
		skip();
	}
	fixture fx;
	start(&fx, 0, 1);
	/* A call's reply allocates on the client: its future's value is
	 * decoded into memory of the reply's. Calls of 100 (the service's
	 * batch_max_calls) make one request each. */
	const asynq_rpc_method_desc *ms[] = { M(TWICE), M(SUM) };
	for (size_t i = 0; i < 2; i++) {
		double small = mallocs_per_round(&fx, ms[i], 10, 200);
		double big = mallocs_per_round(&fx, ms[i], 100, 200);
		double per_call = (big - small) / 90.0;
		print_message("%s: %.1f mallocs a round of 10 calls, %.1f of "
		              "100: %.3f per call\n",
		    ms[i]->name, small, big, per_call);
		assert_true(small > 0); /* the count sees the process */
		/* The rounds of 200 x 100 calls against 200 x 10: what other
		 * threads do meanwhile (the sweeper) leaves less than one
		 * malloc a round. */
		assert_true(per_call < 0.01);
	}
	fx_stop(&fx);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reply_new_reaches_callers),
		cmocka_unit_test(test_reply_memory_outside_a_handler_is_null),
		cmocka_unit_test(
		    test_reply_memory_counts_against_decode_budget),
		cmocka_unit_test(test_steady_state_no_malloc_per_call),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
