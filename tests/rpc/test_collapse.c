/* SPDX-License-Identifier: MIT */
/*
 * Batching semantics of RPC calls as DataLoader states them: identical
 * calls to an idempotent method that land in one batch are sent once and
 * every caller gets its own copy of the result; results map to callers by
 * request; a per-call error reaches only the callers of that call; a batch
 * that fails as a whole fails every caller once. Counted on both sides:
 * the channel's logical calls, collapsed and sent calls and requests, the
 * server's calls run and the handler's own count of runs.
 */
#include "tests/rpc/rpc_fixture.h"

/* A task that makes n calls of m, call i asking for vals[i], under
 * metadata tag tags[i] if tags is not NULL, then awaits them all. */
typedef struct many {
	asynq_rpc_channel *ch;
	const asynq_rpc_method_desc *m;
	size_t n;
	const int64_t *vals;
	const char *const *tags;
	asynq_future **out;
} many;

typedef struct one_call {
	many *mc;
	size_t i;
} one_call;

static asynq_status
tagged_call(void *arg)
{
	one_call *oc = arg;
	oc->mc->out[oc->i] = call_num(oc->mc->ch, oc->mc->m,
	    oc->mc->vals[oc->i]);
	return ASYNQ_OK;
}

static asynq_status
many_main(asynq_task *t, void *arg)
{
	many *mc = arg;
	for (size_t i = 0; i < mc->n; i++) {
		one_call oc = { mc, i };
		if (mc->tags != NULL)
			assert_int_equal(asynq_rpc_with_metadata("tag",
			                     mc->tags[i], strlen(mc->tags[i]),
			                     tagged_call, &oc),
			    ASYNQ_OK);
		else
			tagged_call(&oc);
	}
	(void)asynq_await_all(t, mc->out, mc->n);
	return ASYNQ_OK;
}

static void
run_many(many *mc)
{
	asynq_future *f = asynq_spawn(many_main, mc);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

static asynq_rpc_channel_stats
chan_stats(asynq_rpc_channel *ch)
{
	asynq_rpc_channel_stats st;
	asynq_rpc_channel_stats_get(ch, &st);
	return st;
}

/* 100 Twice calls naming 30 distinct values: 30 calls in one request. */
static void
collapse_repeated(int transport)
{
	fixture fx;
	int64_t vals[100];
	asynq_future *out[100];
	fx_start(&fx, transport, NULL, 0);
	for (size_t i = 0; i < 100; i++)
		vals[i] = (int64_t)((i * 7) % 30);
	many mc = { fx.ch, M(TWICE), 100, vals, NULL, out };
	run_many(&mc);
	for (size_t i = 0; i < 100; i++) {
		assert_int_equal(asynq_future_status(out[i]), ASYNQ_OK);
		assert_int_equal(num_of(out[i]), 2 * vals[i]);
	}
	/* Each caller owns its reply: taking them all frees each once. */
	for (size_t i = 0; i < 100; i++) {
		void (*free_fn)(void *) = NULL;
		void *msg = asynq_future_take_owned(out[i], &free_fn);
		assert_non_null(msg);
		assert_non_null(free_fn);
		free_fn(msg);
	}
	asynq_future_rele_n(out, 100);
	asynq_rpc_channel_stats cs = chan_stats(fx.ch);
	assert_int_equal(cs.calls, 100);
	assert_int_equal(cs.collapsed, 70);
	assert_int_equal(cs.sent_calls, 30);
	assert_int_equal(cs.requests, 1);
	assert_int_equal(cs.failures, 0);
	asynq_rpc_server_stats ss = fx_stats(&fx);
	assert_int_equal(ss.calls, 30);
	assert_int_equal(ss.requests, 1);
	fx_stop(&fx);
}

static void
test_collapse_repeated_calls_go_once_inproc(void **state)
{
	(void)state;
	collapse_repeated(TRANSPORT_INPROC);
}

static void
test_collapse_repeated_calls_go_once_tcp(void **state)
{
	(void)state;
	collapse_repeated(TRANSPORT_TCP);
}

/* With no_collapse every call is sent. */
static void
test_collapse_off_sends_every_call(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	const char *urls[] = { fx.url };
	asynq_rpc_channel_cfg cfg = { .urls = urls, .n_urls = 1,
		.no_collapse = true };
	assert_int_equal(asynq_rpc_channel_alloc(&fx.ch, CALC, &cfg),
	    ASYNQ_OK);
	int64_t vals[20] = { 0 };
	asynq_future *out[20];
	many mc = { fx.ch, M(TWICE), 20, vals, NULL, out };
	run_many(&mc);
	for (size_t i = 0; i < 20; i++)
		assert_int_equal(num_of(out[i]), 0);
	asynq_future_rele_n(out, 20);
	asynq_rpc_channel_stats cs = chan_stats(fx.ch);
	assert_int_equal(cs.collapsed, 0);
	assert_int_equal(cs.sent_calls, 20);
	assert_int_equal(fx_stats(&fx).calls, 20);
	fx_stop(&fx);
}

/* A method that is not idempotent runs once per call, identical or not. */
static void
test_collapse_never_for_non_idempotent_methods(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	int64_t vals[10];
	asynq_future *out[10];
	for (size_t i = 0; i < 10; i++)
		vals[i] = 5; /* Fail(5): fails with status 5, NOT_FOUND */
	many mc = { fx.ch, M(FAIL), 10, vals, NULL, out };
	run_many(&mc);
	for (size_t i = 0; i < 10; i++) {
		assert_int_equal(asynq_future_status(out[i]), ASYNQ_NOT_FOUND);
		assert_string_equal(
		    asynq_error_message(asynq_future_error(out[i])),
		    "failed 5");
	}
	asynq_future_rele_n(out, 10);
	asynq_rpc_channel_stats cs = chan_stats(fx.ch);
	assert_int_equal(cs.collapsed, 0);
	assert_int_equal(cs.failures, 10);
	assert_int_equal(fx_stats(&fx).calls, 10);
	fx_stop(&fx);
}

/* Calls under different metadata are different calls. */
static void
test_collapse_keeps_calls_with_other_metadata_apart(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	static const char *const tags[] = { "a", "b", "a", "b", "a" };
	int64_t vals[5] = { 4, 4, 4, 4, 4 };
	asynq_future *out[5];
	many mc = { fx.ch, M(TWICE), 5, vals, tags, out };
	run_many(&mc);
	for (size_t i = 0; i < 5; i++) {
		const Asynq__Rpctest__Num *n = asynq_future_ptr(out[i]);
		assert_non_null(n);
		assert_int_equal(n->v, 8);
		assert_string_equal(n->s, tags[i]);
	}
	asynq_future_rele_n(out, 5);
	asynq_rpc_channel_stats cs = chan_stats(fx.ch);
	assert_int_equal(cs.collapsed, 3);
	assert_int_equal(cs.sent_calls, 2);
	assert_int_equal(fx_stats(&fx).calls, 2);
	fx_stop(&fx);
}

/* Results map to callers by request; a per-call error reaches only the
 * callers of that call, each with its own error. */
static void
test_collapse_errors_reach_only_their_callers(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	atomic_store(&lookup_runs, 0);
	int64_t vals[12];
	asynq_future *out[12];
	for (size_t i = 0; i < 12; i++)
		vals[i] = (int64_t)(i % 4); /* 0, 2 found; 1, 3 missing */
	many mc = { fx.ch, M(LOOKUP), 12, vals, NULL, out };
	run_many(&mc);
	for (size_t i = 0; i < 12; i++) {
		if (vals[i] % 2 == 0) {
			assert_int_equal(asynq_future_status(out[i]),
			    ASYNQ_OK);
			assert_int_equal(num_of(out[i]), 3 * vals[i]);
			continue;
		}
		char want[32];
		snprintf(want, sizeof(want), "no num %lld",
		    (long long)vals[i]);
		assert_int_equal(asynq_future_status(out[i]), ASYNQ_NOT_FOUND);
		assert_string_equal(
		    asynq_error_message(asynq_future_error(out[i])), want);
	}
	assert_ptr_not_equal(asynq_future_error(out[1]),
	    asynq_future_error(out[5]));
	asynq_future_rele_n(out, 12);
	assert_int_equal(atomic_load(&lookup_runs), 4);
	assert_int_equal(chan_stats(fx.ch).sent_calls, 4);
	fx_stop(&fx);
}

/* A batch that fails as a whole (no server) fails every caller once. */
static void
test_collapse_failed_batch_fails_every_caller(void **state)
{
	(void)state;
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", free_port());
	const char *urls[] = { url };
	asynq_rpc_channel_cfg cfg = { .urls = urls, .n_urls = 1 };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg), ASYNQ_OK);
	int64_t vals[6] = { 1, 1, 1, 2, 2, 1 };
	asynq_future *out[6];
	many mc = { ch, M(TWICE), 6, vals, NULL, out };
	run_many(&mc);
	for (size_t i = 0; i < 6; i++)
		assert_int_equal(asynq_future_status(out[i]),
		    ASYNQ_UNAVAILABLE);
	asynq_future_rele_n(out, 6);
	asynq_rpc_channel_stats cs = chan_stats(ch);
	assert_int_equal(cs.calls, 6);
	assert_int_equal(cs.collapsed, 4);
	asynq_rpc_channel_free(ch);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_collapse_repeated_calls_go_once_inproc),
		cmocka_unit_test(test_collapse_repeated_calls_go_once_tcp),
		cmocka_unit_test(test_collapse_off_sends_every_call),
		cmocka_unit_test(test_collapse_never_for_non_idempotent_methods),
		cmocka_unit_test(
		    test_collapse_keeps_calls_with_other_metadata_apart),
		cmocka_unit_test(test_collapse_errors_reach_only_their_callers),
		cmocka_unit_test(test_collapse_failed_batch_fails_every_caller),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
