/* SPDX-License-Identifier: MIT */
/*
 * Tests of the typed client stubs and server handler table protoc-gen-asynq
 * generates for test_service.proto, end to end over inproc://: a UserStore
 * server on a two-worker runtime registered with
 * asynq__test__user_store__asynq_serve (typed unary and whole-batch
 * handlers, no casts), and a client task on the test thread that calls the
 * typed stubs and reads typed replies. Assertions run on the test thread
 * only; handlers record what they see in atomics.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "tests/codegen/test_service.asynq.h"

typedef Asynq__Test__GetNameRequest name_req;
typedef Asynq__Test__GetNameReply name_reply;
typedef Asynq__Test__HTTPLookup__V2Batch lookup_req;
typedef Asynq__Test__HTTPLookup__Answer lookup_reply;
typedef asynq__test__user_store__lookup_httpnames__batch_call lookup_call;

/* ---- Typed handlers ----------------------------------------------------- */

/* What the handlers saw; the server's ctx. */
typedef struct seen {
	atomic_int get_name_runs;
	atomic_int lookup_batches;
	atomic_int lookup_last_n;
	atomic_int wrong_ctx;
} seen;

static seen server_seen;

static char *
str_printf(const char *fmt, long long v)
{
	int n = snprintf(NULL, 0, fmt, v);
	char *s = malloc((size_t)n + 1);

	if (s != NULL)
		snprintf(s, (size_t)n + 1, fmt, v);
	return s;
}

/* GetName: "user-<id>"; NOT_FOUND for a negative id. */
static asynq_status
h_get_name(asynq_task *t, const name_req *req, name_reply **reply, void *ctx)
{
	seen *s = ctx;
	name_reply *out;

	if (s != &server_seen) {
		atomic_fetch_add(&server_seen.wrong_ctx, 1);
		return ASYNQ_INTERNAL;
	}
	atomic_fetch_add(&s->get_name_runs, 1);
	if (req->user_id < 0)
		return asynq_fail(t, ASYNQ_NOT_FOUND, "no user %lld",
		    (long long)req->user_id);
	if ((out = malloc(sizeof(*out))) == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq__test__get_name_reply__init(out);
	if ((out->name = str_printf("user-%lld", (long long)req->user_id)) ==
	    NULL) {
		free(out);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	*reply = out;
	return ASYNQ_OK;
}

/* LookupHTTPNames, whole batch: "n<id>" per id, then "of <n>" with the
 * number of calls the handler got; INVALID_ARGUMENT for a call without
 * ids. */
static asynq_status
h_lookup(asynq_task *t, lookup_call *calls, size_t n, void *ctx)
{
	seen *s = ctx;

	(void)t;
	if (s != &server_seen) {
		atomic_fetch_add(&server_seen.wrong_ctx, 1);
		return ASYNQ_INTERNAL;
	}
	atomic_fetch_add(&s->lookup_batches, 1);
	atomic_store(&s->lookup_last_n, (int)n);
	for (size_t i = 0; i < n; i++) {
		const lookup_req *in = calls[i].req;
		lookup_reply *out;

		if (in->n_ids == 0) {
			calls[i].status = ASYNQ_INVALID_ARGUMENT;
			calls[i].message = "no ids";
			continue;
		}
		if ((out = malloc(sizeof(*out))) == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		asynq__test__httplookup__answer__init(out);
		calls[i].reply = out;
		out->names = calloc(in->n_ids + 1, sizeof(*out->names));
		if (out->names == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		for (size_t j = 0; j < in->n_ids; j++) {
			out->names[out->n_names] =
			    str_printf("n%lld", (long long)in->ids[j]);
			if (out->names[out->n_names] == NULL)
				return ASYNQ_RESOURCE_EXHAUSTED;
			out->n_names++;
		}
		out->names[out->n_names] = str_printf("of %lld", (long long)n);
		if (out->names[out->n_names] == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		out->n_names++;
	}
	return ASYNQ_OK;
}

/* SetMeta: changed = whether the key is not empty. */
static asynq_status
h_set_meta(asynq_task *t, const Asynq__Rpc__Metadata *req,
    Asynq__Test__SetReply **reply, void *ctx)
{
	Asynq__Test__SetReply *out;

	(void)t;
	(void)ctx;
	if ((out = malloc(sizeof(*out))) == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq__test__set_reply__init(out);
	out->changed = req->key != NULL && req->key[0] != '\0';
	*reply = out;
	return ASYNQ_OK;
}

/* ---- Fixture ------------------------------------------------------------ */

typedef struct fixture {
	asynq_runtime *rt;
	asynq_rpc_server *srv;
	asynq__test__user_store__asynq_binding binding;
	asynq_rpc_channel *ch;
	char url[64];
} fixture;

/* Starts a two-worker runtime, a UserStore server with the typed handlers
 * and a channel with the service's options. */
static void
fx_start(fixture *fx)
{
	static int seq;
	/* Not static: the serve call copies it. */
	asynq__test__user_store__asynq_handlers h = {
		.get_name = h_get_name,
		.lookup_httpnames = h_lookup,
		.set_meta = h_set_meta,
	};
	asynq_runtime_cfg rcfg = { .workers = 2 };
	const char *urls[1];
	asynq_rpc_channel_cfg ccfg = { .urls = urls, .n_urls = 1 };

	memset(fx, 0, sizeof(*fx));
	memset(&server_seen, 0, sizeof(server_seen));
	assert_int_equal(asynq_runtime_alloc(&fx->rt, &rcfg), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_alloc(&fx->srv, fx->rt, NULL),
	    ASYNQ_OK);
	assert_int_equal(asynq__test__user_store__asynq_serve(fx->srv, &h,
	                     &server_seen, &fx->binding),
	    ASYNQ_OK);
	snprintf(fx->url, sizeof(fx->url), "inproc://asynq-stubs-%d", ++seq);
	assert_int_equal(asynq_rpc_server_listen(fx->srv, fx->url), ASYNQ_OK);
	urls[0] = fx->url;
	assert_int_equal(asynq_rpc_channel_alloc(&fx->ch,
	                     &asynq__test__user_store__asynq_desc, &ccfg),
	    ASYNQ_OK);
}

static void
fx_stop(fixture *fx)
{
	asynq_rpc_channel_free(fx->ch);
	asynq_rpc_server_free(fx->srv);
	asynq_runtime_free(fx->rt);
	asynq_thread_fini();
}

/* ---- A client task ------------------------------------------------------ */

typedef struct names_job {
	asynq_rpc_channel *ch;
	size_t n;
	asynq_future **out;
	asynq_status st;
} names_job;

/* Calls GetName for ids 0..n-1 through the typed stub, then awaits all. */
static asynq_status
names_main(asynq_task *t, void *arg)
{
	names_job *j = arg;

	for (size_t i = 0; i < j->n; i++) {
		name_req req = ASYNQ__TEST__GET_NAME_REQUEST__INIT;

		req.user_id = (int64_t)i;
		j->out[i] =
		    asynq__test__user_store__get_name__call(j->ch, &req);
	}
	j->st = asynq_await_all(t, j->out, j->n);
	return ASYNQ_OK;
}

static asynq_future *
lookup(asynq_rpc_channel *ch, int64_t *ids, size_t n)
{
	lookup_req req = ASYNQ__TEST__HTTPLOOKUP__V2_BATCH__INIT;

	req.ids = ids;
	req.n_ids = n;
	return asynq__test__user_store__lookup_httpnames__call(ch, &req);
}

/* ---- Tests -------------------------------------------------------------- */

/* 100 typed calls from one task: batch_max_calls = 100 makes them one
 * request, and every reply is read through the typed accessor. */
static void
test_stubs_unary_hundred_calls(void **state)
{
	enum { N = 100 };
	asynq_future *out[N];
	names_job j = { NULL, N, out, ASYNQ_UNKNOWN };
	asynq_rpc_channel_stats cs;
	asynq_rpc_server_stats ss;
	asynq_future *f;
	fixture fx;

	(void)state;
	fx_start(&fx);
	j.ch = fx.ch;
	f = asynq_spawn(names_main, &j);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	assert_int_equal(j.st, ASYNQ_OK);
	for (size_t i = 0; i < N; i++) {
		const name_reply *r =
		    asynq__test__user_store__get_name__reply(out[i]);
		char want[32];

		assert_non_null(r);
		snprintf(want, sizeof(want), "user-%zu", i);
		assert_string_equal(r->name, want);
	}
	asynq_future_rele_n(out, N);
	asynq_rpc_channel_stats_get(fx.ch, &cs);
	asynq_rpc_server_stats_get(fx.srv, &ss);
	assert_int_equal(cs.calls, N);
	assert_int_equal(cs.requests, 1);
	assert_int_equal(cs.failures, 0);
	assert_int_equal(ss.requests, 1);
	assert_int_equal(ss.calls, N);
	assert_int_equal(atomic_load(&server_seen.get_name_runs), N);
	assert_int_equal(atomic_load(&server_seen.wrong_ctx), 0);
	fx_stop(&fx);
}

/* The whole-batch handler gets every LookupHTTPNames call of the request in
 * one typed array; per-call statuses and messages reach their callers, and
 * a unary call in the same request is served alongside. */
static void
test_stubs_whole_batch_typed_calls(void **state)
{
	enum { N = 10 };
	int64_t ids[N][2];
	asynq_future *f[N + 2];
	asynq_rpc_channel_stats cs;
	const lookup_reply *r;
	const name_reply *nr;
	fixture fx;

	(void)state;
	fx_start(&fx);
	for (size_t i = 0; i < N; i++) {
		ids[i][0] = (int64_t)i;
		ids[i][1] = 100 + (int64_t)i;
		f[i] = lookup(fx.ch, ids[i], 2);
	}
	f[N] = lookup(fx.ch, NULL, 0);
	{
		name_req req = ASYNQ__TEST__GET_NAME_REQUEST__INIT;

		req.user_id = 7;
		f[N + 1] = asynq__test__user_store__get_name__call(fx.ch, &req);
	}
	assert_int_equal(asynq_wait_all(f, N + 2), ASYNQ_INVALID_ARGUMENT);

	assert_int_equal(atomic_load(&server_seen.lookup_batches), 1);
	assert_int_equal(atomic_load(&server_seen.lookup_last_n), N + 1);
	for (size_t i = 0; i < N; i++) {
		char want[32];

		assert_non_null(
		    r = asynq__test__user_store__lookup_httpnames__reply(f[i]));
		assert_int_equal(r->n_names, 3);
		snprintf(want, sizeof(want), "n%zu", i);
		assert_string_equal(r->names[0], want);
		snprintf(want, sizeof(want), "n%zu", 100 + i);
		assert_string_equal(r->names[1], want);
		assert_string_equal(r->names[2], "of 11");
	}
	assert_null(asynq__test__user_store__lookup_httpnames__reply(f[N]));
	assert_int_equal(asynq_future_status(f[N]), ASYNQ_INVALID_ARGUMENT);
	assert_non_null(
	    strstr(asynq_error_message(asynq_future_error(f[N])), "no ids"));
	assert_non_null(
	    nr = asynq__test__user_store__get_name__reply(f[N + 1]));
	assert_string_equal(nr->name, "user-7");
	asynq_future_rele_n(f, N + 2);
	asynq_rpc_channel_stats_get(fx.ch, &cs);
	assert_int_equal(cs.requests, 1);
	assert_int_equal(cs.failures, 1);
	assert_int_equal(atomic_load(&server_seen.wrong_ctx), 0);
	fx_stop(&fx);
}

/* The reply accessor returns NULL unless the future is computed OK with a
 * reply of its method's type; a NULL request fails the future. */
static void
test_stubs_reply_only_when_ok(void **state)
{
	name_req req = ASYNQ__TEST__GET_NAME_REQUEST__INIT;
	Asynq__Rpc__Metadata md = ASYNQ__RPC__METADATA__INIT;
	asynq_future *f[3];
	const Asynq__Test__SetReply *sr;
	fixture fx;

	(void)state;
	fx_start(&fx);
	assert_null(asynq__test__user_store__get_name__reply(NULL));

	req.user_id = -5;
	f[0] = asynq__test__user_store__get_name__call(fx.ch, &req);
	req.user_id = 5;
	f[1] = asynq__test__user_store__get_name__call(fx.ch, &req);
	md.key = "k";
	f[2] = asynq__test__user_store__set_meta__call(fx.ch, &md);
	/* Not sent yet: pending. */
	assert_false(asynq_future_done(f[1]));
	assert_null(asynq__test__user_store__get_name__reply(f[1]));
	assert_int_equal(asynq_wait_all(f, 3), ASYNQ_NOT_FOUND);

	assert_null(asynq__test__user_store__get_name__reply(f[0]));
	assert_non_null(strstr(asynq_error_message(asynq_future_error(f[0])),
	    "no user -5"));
	assert_non_null(asynq__test__user_store__get_name__reply(f[1]));
	/* A GetName future read as another method's: not its type. */
	assert_null(asynq__test__user_store__lookup_httpnames__reply(f[1]));
	/* A type of another file (rpc.proto) as the request. */
	assert_non_null(sr = asynq__test__user_store__set_meta__reply(f[2]));
	assert_true(sr->changed);
	asynq_future_rele_n(f, 3);

	f[0] = asynq__test__user_store__get_name__call(fx.ch, NULL);
	assert_int_equal(asynq_wait(f[0]), ASYNQ_INVALID_ARGUMENT);
	assert_null(asynq__test__user_store__get_name__reply(f[0]));
	asynq_future_rele(f[0]);
	fx_stop(&fx);
}

/* serve registers nothing when a handler or an argument is missing. */
static void
test_stubs_serve_rejects_missing_handler(void **state)
{
	asynq__test__user_store__asynq_handlers h = {
		.get_name = h_get_name,
		.set_meta = h_set_meta,
	};
	asynq__test__user_store__asynq_binding b, b2;
	asynq_runtime_cfg rcfg = { .workers = 1 };
	asynq_runtime *rt;
	asynq_rpc_server *srv;

	(void)state;
	assert_int_equal(asynq_runtime_alloc(&rt, &rcfg), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_alloc(&srv, rt, NULL), ASYNQ_OK);
	assert_int_equal(
	    asynq__test__user_store__asynq_serve(srv, &h, NULL, &b),
	    ASYNQ_INVALID_ARGUMENT);
	h.lookup_httpnames = h_lookup;
	h.get_name = NULL;
	assert_int_equal(
	    asynq__test__user_store__asynq_serve(srv, &h, NULL, &b),
	    ASYNQ_INVALID_ARGUMENT);
	h.get_name = h_get_name;
	assert_int_equal(
	    asynq__test__user_store__asynq_serve(srv, &h, NULL, NULL),
	    ASYNQ_INVALID_ARGUMENT);
	assert_int_equal(
	    asynq__test__user_store__asynq_serve(NULL, &h, NULL, &b),
	    ASYNQ_INVALID_ARGUMENT);
	assert_int_equal(
	    asynq__test__user_store__asynq_serve(srv, NULL, NULL, &b),
	    ASYNQ_INVALID_ARGUMENT);
	/* Nothing was registered by the failures: the full table is taken
	 * once, and a second registration of the service is refused. */
	assert_int_equal(
	    asynq__test__user_store__asynq_serve(srv, &h, NULL, &b), ASYNQ_OK);
	assert_int_equal(
	    asynq__test__user_store__asynq_serve(srv, &h, NULL, &b2),
	    ASYNQ_ALREADY_EXISTS);
	asynq_rpc_server_free(srv);
	asynq_runtime_free(rt);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stubs_unary_hundred_calls),
		cmocka_unit_test(test_stubs_whole_batch_typed_calls),
		cmocka_unit_test(test_stubs_reply_only_when_ok),
		cmocka_unit_test(test_stubs_serve_rejects_missing_handler),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
