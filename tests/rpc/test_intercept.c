/* SPDX-License-Identifier: MIT */
/*
 * Interceptors and authorization, end to end over inproc:// and tcp://:
 * the order of several client and server interceptors around a call,
 * metadata they add as the handler sees it, rejections (the caller's
 * status and message, no handler run, no request for a client-side one),
 * the results after hooks see, whole-batch methods (one handler run for
 * the calls let through, the others failing on their own), W3C
 * traceparent through a handler's outgoing call, and per-method policies:
 * token scopes checked by a verifier, missing and rejected tokens,
 * policies in the server settings overriding the .proto, and verified
 * peer identities of mutual TLS (certificates made with openssl in the
 * test) matched by URI and DNS SANs, common name and "*".
 */
#include <pthread.h>
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
#include "asynq/log.h"
#include "asynq/rpc.h"
#include "tests/rpc/rpc_fixture.h"
#include "tests/rpc/test_intercept.asynq.h"

#define G (&asynq__icpttest__guarded__asynq_desc)
#define GM(name) (&G->methods[ASYNQ__ICPTTEST__GUARDED__ASYNQ_METHOD_##name])
#define NAME(m) "asynq.icpttest.Guarded/" m

typedef Asynq__Icpttest__Num Num;

static atomic_int echo_runs, sum_runs, sum_calls, read_runs, verify_runs;
static asynq_rpc_channel *relay;

/* ---- Events, in the order they happened (any thread) --------------------- */

#define MAX_EVENTS 64
static pthread_mutex_t ev_mu = PTHREAD_MUTEX_INITIALIZER;
static char events[MAX_EVENTS][80];
static size_t n_events;

static void ev(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
ev(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	pthread_mutex_lock(&ev_mu);
	if (n_events < MAX_EVENTS)
		vsnprintf(events[n_events++], sizeof(events[0]), fmt, ap);
	pthread_mutex_unlock(&ev_mu);
	va_end(ap);
}

static void
ev_reset(void)
{
	pthread_mutex_lock(&ev_mu);
	n_events = 0;
	pthread_mutex_unlock(&ev_mu);
}

static bool
ev_has(const char *s)
{
	bool found = false;
	pthread_mutex_lock(&ev_mu);
	for (size_t i = 0; i < n_events && !found; i++)
		found = strcmp(events[i], s) == 0;
	pthread_mutex_unlock(&ev_mu);
	return found;
}

static void
ev_expect(const char *const *want, size_t n)
{
	pthread_mutex_lock(&ev_mu);
	size_t have = n_events;
	for (size_t i = 0; i < have; i++)
		print_message("event %zu: %s\n", i, events[i]);
	pthread_mutex_unlock(&ev_mu);
	assert_int_equal(have, n);
	for (size_t i = 0; i < n; i++)
		assert_string_equal(events[i], want[i]);
}

/* ---- The Guarded service ------------------------------------------------- */

static Num *
num_make(int64_t v, const char *s)
{
	Num *n = malloc(sizeof(*n));
	if (n == NULL)
		return NULL;
	asynq__icpttest__num__init(n);
	n->v = v;
	n->s = s != NULL ? strdup(s) : (char *)protobuf_c_empty_string;
	return n;
}

static asynq_status
h_echo(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)ctx;
	const Num *in = (const Num *)req;
	atomic_fetch_add(&echo_runs, 1);
	ev("handler Echo %lld", (long long)in->v);
	if (in->v < 0)
		return asynq_fail(t, ASYNQ_INVALID_ARGUMENT, "negative %lld",
		    (long long)in->v);
	char val[128] = "";
	size_t len = 0;
	const char *v =
	    in->s[0] != '\0' ? asynq_rpc_metadata_get(in->s, &len) : NULL;
	if (v != NULL)
		snprintf(val, sizeof(val), "%.*s", (int)len, v);
	Num *out = num_make(in->v, val);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	*reply = &out->base;
	return ASYNQ_OK;
}

static asynq_status
h_sum(asynq_task *t, asynq_rpc_batch_call *calls, size_t n, void *ctx)
{
	(void)t;
	(void)ctx;
	atomic_fetch_add(&sum_runs, 1);
	atomic_fetch_add(&sum_calls, (int)n);
	for (size_t i = 0; i < n; i++) {
		Num *out =
		    num_make(((const Num *)calls[i].req)->v + (int64_t)n, NULL);
		if (out == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		calls[i].reply = &out->base;
	}
	return ASYNQ_OK;
}

static asynq_status
h_read(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	atomic_fetch_add(&read_runs, 1);
	Num *out = num_make(((const Num *)req)->v, NULL);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	*reply = &out->base;
	return ASYNQ_OK;
}

static asynq_status
h_relay(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)ctx;
	Num q = ASYNQ__ICPTTEST__NUM__INIT;
	q.v = ((const Num *)req)->v;
	q.s = "traceparent";
	asynq_future *f = asynq_rpc_call(relay, GM(ECHO), &q.base);
	asynq_status st = asynq_await(t, f);
	Num *out = st == ASYNQ_OK
	    ? num_make(q.v, ((const Num *)asynq_future_ptr(f))->s)
	    : NULL;
	asynq_future_rele(f);
	if (st != ASYNQ_OK)
		return st;
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	*reply = &out->base;
	return ASYNQ_OK;
}

static const asynq_rpc_handler handlers[] = {
	[ASYNQ__ICPTTEST__GUARDED__ASYNQ_METHOD_ECHO] = { .unary = h_echo },
	[ASYNQ__ICPTTEST__GUARDED__ASYNQ_METHOD_SUM] = { .batch = h_sum },
	[ASYNQ__ICPTTEST__GUARDED__ASYNQ_METHOD_READ] = { .unary = h_read },
	[ASYNQ__ICPTTEST__GUARDED__ASYNQ_METHOD_RELAY] = { .unary = h_relay },
};

/* The tokens the tests' verifier knows. */
static asynq_status
verifier(const char *tok, size_t len, const asynq_rpc_method_desc *m,
    char *scopes, size_t cap, char *why, size_t why_cap, void *arg)
{
	(void)m;
	(void)arg;
	atomic_fetch_add(&verify_runs, 1);
	if (len == 8 && memcmp(tok, "tok-read", 8) == 0) {
		snprintf(scopes, cap, "users.read");
		return ASYNQ_OK;
	}
	if (len == 7 && memcmp(tok, "tok-sum", 7) == 0) {
		snprintf(scopes, cap, "sum other");
		return ASYNQ_OK;
	}
	/* "long-N": N characters of scopes, "users.read" last. */
	if (len > 5 && memcmp(tok, "long-", 5) == 0) {
		static char xs[2048];
		memset(xs, 'x', sizeof(xs));
		int n = atoi(tok + 5) - (int)strlen(" users.read");
		snprintf(scopes, cap, "%.*s users.read", n, xs);
		return ASYNQ_OK;
	}
	snprintf(why, why_cap, "%s",
	    len == 11 && memcmp(tok, "tok-expired", 11) == 0 ? "token expired"
	                                                     : "unknown token");
	return ASYNQ_UNAUTHENTICATED;
}

/* ---- A recording interceptor --------------------------------------------- */

typedef struct rec {
	asynq_rpc_interceptor icpt;    /* arg: the rec */
	const char *add_key, *add_val; /* added in before */
	const char *read_key;          /* logged in before */
	int64_t reject_v;              /* rejected in before; 0: none */
	bool reject_batch;             /* batch_before refuses */
	atomic_int batch_before, batch_after;
	size_t batch_n;
	/* The last after hook's view of a call. */
	asynq_status last_st;
	int64_t last_v;
	char last_msg[160];
	int64_t last_ns; /* from the first before hook to this after hook */
} rec;

static asynq_status
rec_before(asynq_rpc_call_info *c, void **state, void *arg)
{
	rec *r = arg;
	int64_t v = ((const Num *)c->req)->v;
	ev("%s.before %s %lld", r->icpt.name, c->method->name, (long long)v);
	*state = r;
	if (r->read_key != NULL) {
		size_t len = 0;
		const char *val = asynq_rpc_call_metadata(c, r->read_key, &len);
		ev("%s saw %s=%.*s", r->icpt.name, r->read_key,
		    val != NULL ? (int)len : 6, val != NULL ? val : "(none)");
	}
	if (r->add_key != NULL &&
	    asynq_rpc_call_add_metadata(c, r->add_key, r->add_val,
	        strlen(r->add_val)) != ASYNQ_OK)
		ev("%s could not add metadata", r->icpt.name);
	if (r->reject_v != 0 && v == r->reject_v)
		return asynq_rpc_call_reject(c, ASYNQ_PERMISSION_DENIED,
		    "%s says no to %lld", r->icpt.name, (long long)v);
	return ASYNQ_OK;
}

static void
rec_after(const asynq_rpc_call_info *c, void *state, void *arg)
{
	rec *r = arg;
	ev("%s.after %s %s%s", r->icpt.name, c->method->name,
	    asynq_status_name(c->status), state == r ? "" : " (bad state)");
	r->last_st = c->status;
	r->last_v = c->reply != NULL ? ((const Num *)c->reply)->v : -1000;
	snprintf(r->last_msg, sizeof(r->last_msg), "%s",
	    c->message != NULL ? c->message : "");
	r->last_ns = (int64_t)asynq_now_ns() - c->start_ns;
}

static asynq_status
rec_batch_before(asynq_rpc_batch_info *b, void *arg)
{
	rec *r = arg;
	atomic_fetch_add(&r->batch_before, 1);
	r->batch_n = b->n;
	ev("%s.batch_before %s %zu", r->icpt.name, b->method->name, b->n);
	return r->reject_batch ? ASYNQ_FAILED_PRECONDITION : ASYNQ_OK;
}

static void
rec_batch_after(const asynq_rpc_batch_info *b, void *arg)
{
	rec *r = arg;
	atomic_fetch_add(&r->batch_after, 1);
	ev("%s.batch_after %s %s", r->icpt.name, b->method->name,
	    asynq_status_name(b->status));
}

static void
rec_init(rec *r, const char *name)
{
	memset(r, 0, sizeof(*r));
	r->icpt = (asynq_rpc_interceptor){ .name = name,
		.before = rec_before,
		.after = rec_after,
		.batch_before = rec_batch_before,
		.batch_after = rec_batch_after,
		.arg = r };
}

/* ---- Fixture ------------------------------------------------------------- */

typedef struct ifx {
	asynq_runtime *rt;
	asynq_rpc_server *srv;
	asynq_rpc_channel *ch;
	char url[128];
} ifx;

/* A two-worker server of Guarded with scfg (verifier added unless
 * no_verifier) and a channel to it with the given interceptors. */
static void
ifx_start(ifx *fx, int transport, asynq_rpc_server_cfg scfg,
    const asynq_rpc_interceptor *const *ci, size_t n_ci)
{
	memset(fx, 0, sizeof(*fx));
	atomic_store(&echo_runs, 0);
	atomic_store(&sum_runs, 0);
	atomic_store(&sum_calls, 0);
	atomic_store(&read_runs, 0);
	atomic_store(&verify_runs, 0);
	ev_reset();
	if (scfg.token_verifier == NULL)
		scfg.token_verifier = verifier;
	asynq_runtime_cfg rcfg = { .workers = 2 };
	assert_int_equal(asynq_runtime_alloc(&fx->rt, &rcfg), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_alloc(&fx->srv, fx->rt, &scfg),
	    ASYNQ_OK);
	assert_int_equal(
	    asynq_rpc_server_add_service(fx->srv, G, handlers, NULL), ASYNQ_OK);
	url_make(fx->url, sizeof(fx->url), transport);
	asynq_status st = asynq_rpc_server_listen(fx->srv, fx->url);
	if (st != ASYNQ_OK)
		print_message("listen: %s\n",
		    asynq_rpc_server_last_error(fx->srv));
	assert_int_equal(st, ASYNQ_OK);
	const char *urls[] = { fx->url };
	asynq_rpc_channel_cfg ccfg = { .urls = urls,
		.n_urls = 1,
		.interceptors = ci,
		.n_interceptors = n_ci };
	assert_int_equal(asynq_rpc_channel_alloc(&fx->ch, G, &ccfg), ASYNQ_OK);
}

static void
ifx_stop(ifx *fx)
{
	asynq_rpc_channel_free(fx->ch);
	asynq_rpc_server_close(fx->srv);
	asynq_rpc_channel_free(relay);
	relay = NULL;
	asynq_rpc_server_free(fx->srv);
	asynq_runtime_stop(fx->rt);
	asynq_runtime_free(fx->rt);
	asynq_thread_fini();
}

/* Calls made by one task before it awaits them all: one batch. */
#define MAX_CALLS 8
typedef struct cjob {
	asynq_rpc_channel *ch;
	const asynq_rpc_method_desc *m;
	size_t n;
	int64_t v[MAX_CALLS];
	const char *s;               /* every call's s */
	const char *auth[MAX_CALLS]; /* its authorization metadata, or NULL */
	asynq_future *f[MAX_CALLS];
} cjob;

static asynq_status
cjob_main(asynq_task *t, void *arg)
{
	cjob *j = arg;
	const char *cur = NULL; /* the pushed authorization */
	for (size_t i = 0; i < j->n; i++) {
		if (cur != j->auth[i]) {
			if (cur != NULL)
				(void)asynq_rpc_metadata_pop();
			cur = j->auth[i];
			if (cur != NULL)
				assert_int_equal(
				    asynq_rpc_metadata_push("authorization",
				        cur, strlen(cur)),
				    ASYNQ_OK);
		}
		Num q = ASYNQ__ICPTTEST__NUM__INIT;
		q.v = j->v[i];
		if (j->s != NULL)
			q.s = (char *)j->s;
		j->f[i] = asynq_rpc_call(j->ch, j->m, &q.base);
	}
	if (cur != NULL)
		(void)asynq_rpc_metadata_pop();
	(void)asynq_await_all(t, j->f, j->n);
	return ASYNQ_OK;
}

static void
cjob_run(cjob *j)
{
	asynq_future *f = asynq_spawn(cjob_main, j);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

static void
cjob_done(cjob *j)
{
	for (size_t i = 0; i < j->n; i++)
		asynq_future_rele(j->f[i]);
}

static int64_t
reply_v(asynq_future *f)
{
	assert_int_equal(asynq_future_status(f), ASYNQ_OK);
	return ((const Num *)asynq_future_ptr(f))->v;
}

static const char *
reply_s(asynq_future *f)
{
	assert_int_equal(asynq_future_status(f), ASYNQ_OK);
	return ((const Num *)asynq_future_ptr(f))->s;
}

static const char *
err_msg(asynq_future *f)
{
	asynq_error *e = asynq_future_error(f);
	return e != NULL ? asynq_error_message(e) : "";
}

/* ---- Interceptors -------------------------------------------------------- */

static void
icpt_order(int transport)
{
	rec s1, s2, s3, c1, c2;
	rec_init(&s1, "S1");
	rec_init(&s2, "S2");
	rec_init(&s3, "S3");
	rec_init(&c1, "C1");
	rec_init(&c2, "C2");
	const asynq_rpc_interceptor *si[] = { &s1.icpt, &s2.icpt };
	const asynq_rpc_interceptor *ci[] = { &c1.icpt, &c2.icpt };
	/* S1 and S2 from the settings, S3 added before listening. */
	ifx fx;
	memset(&fx, 0, sizeof(fx));
	ev_reset();
	asynq_runtime_cfg rcfg = { .workers = 2 };
	assert_int_equal(asynq_runtime_alloc(&fx.rt, &rcfg), ASYNQ_OK);
	asynq_rpc_server_cfg scfg = { .interceptors = si,
		.n_interceptors = 2,
		.token_verifier = verifier };
	assert_int_equal(asynq_rpc_server_alloc(&fx.srv, fx.rt, &scfg),
	    ASYNQ_OK);
	assert_int_equal(
	    asynq_rpc_server_add_service(fx.srv, G, handlers, NULL), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_add_interceptor(fx.srv, &s3.icpt),
	    ASYNQ_OK);
	url_make(fx.url, sizeof(fx.url), transport);
	assert_int_equal(asynq_rpc_server_listen(fx.srv, fx.url), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_add_interceptor(fx.srv, &c1.icpt),
	    ASYNQ_FAILED_PRECONDITION);
	const char *urls[] = { fx.url };
	asynq_rpc_channel_cfg ccfg = { .urls = urls,
		.n_urls = 1,
		.interceptors = ci,
		.n_interceptors = 2 };
	assert_int_equal(asynq_rpc_channel_alloc(&fx.ch, G, &ccfg), ASYNQ_OK);
	cjob j = { .ch = fx.ch, .m = GM(ECHO), .n = 1, .v = { 1 } };
	cjob_run(&j);
	assert_int_equal(reply_v(j.f[0]), 1);
	cjob_done(&j);
	static const char *const want[] = {
		"C1.before Echo 1",
		"C2.before Echo 1",
		"S1.before Echo 1",
		"S2.before Echo 1",
		"S3.before Echo 1",
		"handler Echo 1",
		"S3.after Echo OK",
		"S2.after Echo OK",
		"S1.after Echo OK",
		"C2.after Echo OK",
		"C1.after Echo OK",
	};
	ev_expect(want, sizeof(want) / sizeof(want[0]));
	ifx_stop(&fx);
}

static void
test_icpt_order_inproc(void **state)
{
	(void)state;
	icpt_order(TRANSPORT_INPROC);
}

static void
test_icpt_order_tcp(void **state)
{
	(void)state;
	icpt_order(TRANSPORT_TCP);
}

static void
icpt_metadata(int transport)
{
	rec s1, c1;
	rec_init(&s1, "S1");
	rec_init(&c1, "C1");
	s1.add_key = "stag";
	s1.add_val = "from-server";
	s1.read_key = "ctag";
	c1.add_key = "ctag";
	c1.add_val = "from-client";
	const asynq_rpc_interceptor *si[] = { &s1.icpt };
	const asynq_rpc_interceptor *ci[] = { &c1.icpt };
	ifx fx;
	ifx_start(&fx, transport,
	    (asynq_rpc_server_cfg){ .interceptors = si, .n_interceptors = 1 },
	    ci, 1);
	cjob a = { .ch = fx.ch,
		.m = GM(ECHO),
		.n = 2,
		.v = { 1, 2 },
		.s = "ctag" };
	cjob_run(&a);
	assert_string_equal(reply_s(a.f[0]), "from-client");
	assert_string_equal(reply_s(a.f[1]), "from-client");
	cjob_done(&a);
	assert_true(ev_has("S1 saw ctag=from-client"));
	cjob b = { .ch = fx.ch,
		.m = GM(ECHO),
		.n = 1,
		.v = { 3 },
		.s = "stag" };
	cjob_run(&b);
	assert_string_equal(reply_s(b.f[0]), "from-server");
	cjob_done(&b);
	/* Two calls with equal additions share the request's metadata: two
	 * requests in all, one per batch. */
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(fx.ch, &cs);
	assert_int_equal(cs.requests, 2);
	assert_int_equal(cs.sent_calls, 3);
	ifx_stop(&fx);
}

static void
test_icpt_metadata_inproc(void **state)
{
	(void)state;
	icpt_metadata(TRANSPORT_INPROC);
}

static void
test_icpt_metadata_tcp(void **state)
{
	(void)state;
	icpt_metadata(TRANSPORT_TCP);
}

static void
icpt_reject(int transport)
{
	rec s1, s2, c1, c2;
	rec_init(&s1, "S1");
	rec_init(&s2, "S2");
	rec_init(&c1, "C1");
	rec_init(&c2, "C2");
	s1.reject_v = 13;
	c2.reject_v = 7;
	const asynq_rpc_interceptor *si[] = { &s1.icpt, &s2.icpt };
	const asynq_rpc_interceptor *ci[] = { &c1.icpt, &c2.icpt };
	ifx fx;
	ifx_start(&fx, transport,
	    (asynq_rpc_server_cfg){ .interceptors = si, .n_interceptors = 2 },
	    ci, 2);
	/* The server rejects 13: the caller gets its status and message,
	 * the handler runs for 1 only, S2 never sees 13. */
	cjob a = { .ch = fx.ch, .m = GM(ECHO), .n = 2, .v = { 13, 1 } };
	cjob_run(&a);
	assert_int_equal(asynq_future_status(a.f[0]), ASYNQ_PERMISSION_DENIED);
	assert_string_equal(err_msg(a.f[0]), "S1 says no to 13");
	assert_int_equal(reply_v(a.f[1]), 1);
	cjob_done(&a);
	assert_int_equal(atomic_load(&echo_runs), 1);
	assert_false(ev_has("S2.before Echo 13"));
	assert_false(ev_has("S1.after Echo PERMISSION_DENIED"));
	assert_true(ev_has("C2.after Echo PERMISSION_DENIED"));
	assert_true(ev_has("C1.after Echo PERMISSION_DENIED"));
	assert_int_equal(
	    c1.last_st == ASYNQ_PERMISSION_DENIED || c1.last_st == ASYNQ_OK, 1);
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(fx.srv, &ss);
	assert_int_equal(ss.requests, 1);

	/* The client rejects 7: never sent, no request, C1's after sees it,
	 * C2's (the one that rejected) does not run. */
	ev_reset();
	asynq_rpc_channel_stats before;
	asynq_rpc_channel_stats_get(fx.ch, &before);
	cjob b = { .ch = fx.ch, .m = GM(ECHO), .n = 1, .v = { 7 } };
	cjob_run(&b);
	assert_int_equal(asynq_future_status(b.f[0]), ASYNQ_PERMISSION_DENIED);
	assert_string_equal(err_msg(b.f[0]), "C2 says no to 7");
	cjob_done(&b);
	asynq_rpc_channel_stats after;
	asynq_rpc_channel_stats_get(fx.ch, &after);
	assert_int_equal(after.requests, before.requests);
	assert_int_equal(after.failures, before.failures + 1);
	assert_int_equal(atomic_load(&echo_runs), 1);
	static const char *const want[] = {
		"C1.before Echo 7",
		"C2.before Echo 7",
		"C1.after Echo PERMISSION_DENIED",
	};
	ev_expect(want, 3);
	assert_string_equal(c1.last_msg, "C2 says no to 7");
	asynq_rpc_server_stats_get(fx.srv, &ss);
	assert_int_equal(ss.requests, 1);
	ifx_stop(&fx);
}

static void
test_icpt_reject_inproc(void **state)
{
	(void)state;
	icpt_reject(TRANSPORT_INPROC);
}

static void
test_icpt_reject_tcp(void **state)
{
	(void)state;
	icpt_reject(TRANSPORT_TCP);
}

static void
icpt_after_results(int transport)
{
	rec s1, c1;
	rec_init(&s1, "S1");
	rec_init(&c1, "C1");
	const asynq_rpc_interceptor *si[] = { &s1.icpt };
	const asynq_rpc_interceptor *ci[] = { &c1.icpt };
	ifx fx;
	ifx_start(&fx, transport,
	    (asynq_rpc_server_cfg){ .interceptors = si, .n_interceptors = 1 },
	    ci, 1);
	cjob a = { .ch = fx.ch, .m = GM(ECHO), .n = 1, .v = { 5 } };
	cjob_run(&a);
	assert_int_equal(reply_v(a.f[0]), 5);
	cjob_done(&a);
	assert_int_equal(s1.last_st, ASYNQ_OK);
	assert_int_equal(s1.last_v, 5);
	assert_int_equal(c1.last_st, ASYNQ_OK);
	assert_int_equal(c1.last_v, 5);
	/* Timed: the client's span holds the server's. */
	assert_true(s1.last_ns > 0);
	assert_true(c1.last_ns >= s1.last_ns);
	assert_true(c1.last_ns < 10000000000);
	cjob b = { .ch = fx.ch, .m = GM(ECHO), .n = 1, .v = { -3 } };
	cjob_run(&b);
	assert_int_equal(asynq_future_status(b.f[0]), ASYNQ_INVALID_ARGUMENT);
	cjob_done(&b);
	assert_int_equal(s1.last_st, ASYNQ_INVALID_ARGUMENT);
	assert_string_equal(s1.last_msg, "negative -3");
	assert_int_equal(s1.last_v, -1000);
	assert_int_equal(c1.last_st, ASYNQ_INVALID_ARGUMENT);
	assert_string_equal(c1.last_msg, "negative -3");
	ifx_stop(&fx);
}

static void
test_icpt_after_results_inproc(void **state)
{
	(void)state;
	icpt_after_results(TRANSPORT_INPROC);
}

static void
test_icpt_after_results_tcp(void **state)
{
	(void)state;
	icpt_after_results(TRANSPORT_TCP);
}

static void
icpt_whole_batch(int transport)
{
	rec s1, s2;
	rec_init(&s1, "S1");
	rec_init(&s2, "S2");
	s1.reject_v = 2;
	s2.reject_v = 4;
	const asynq_rpc_interceptor *si[] = { &s1.icpt, &s2.icpt };
	ifx fx;
	ifx_start(&fx, transport,
	    (asynq_rpc_server_cfg){ .interceptors = si, .n_interceptors = 2 },
	    NULL, 0);
	cjob j = { .ch = fx.ch, .m = GM(SUM), .n = 5, .v = { 1, 2, 3, 4, 5 } };
	for (size_t i = 0; i < 5; i++)
		j.auth[i] = "Bearer tok-sum";
	cjob_run(&j);
	/* One handler run with the three let through: v + 3 each. */
	assert_int_equal(reply_v(j.f[0]), 4);
	assert_int_equal(reply_v(j.f[2]), 6);
	assert_int_equal(reply_v(j.f[4]), 8);
	assert_int_equal(asynq_future_status(j.f[1]), ASYNQ_PERMISSION_DENIED);
	assert_string_equal(err_msg(j.f[1]), "S1 says no to 2");
	assert_int_equal(asynq_future_status(j.f[3]), ASYNQ_PERMISSION_DENIED);
	assert_string_equal(err_msg(j.f[3]), "S2 says no to 4");
	cjob_done(&j);
	assert_int_equal(atomic_load(&sum_runs), 1);
	assert_int_equal(atomic_load(&sum_calls), 3);
	assert_int_equal(atomic_load(&s1.batch_before), 1);
	assert_int_equal(atomic_load(&s2.batch_before), 1);
	assert_int_equal(atomic_load(&s1.batch_after), 1);
	assert_int_equal(atomic_load(&s2.batch_after), 1);
	assert_int_equal(s1.batch_n, 3);
	assert_true(ev_has("S2.batch_after Sum OK"));
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(fx.srv, &ss);
	assert_int_equal(ss.requests, 1);
	/* The token was checked once for the five calls. */
	assert_int_equal(atomic_load(&verify_runs), 1);
	ifx_stop(&fx);
}

/* A batch_before that refuses fails every call of the batch; the handler
 * never runs; the interceptors before it see the batch end. */
static void
test_icpt_batch_rejected(void **state)
{
	(void)state;
	rec s1, s2;
	rec_init(&s1, "S1");
	rec_init(&s2, "S2");
	s2.reject_batch = true;
	const asynq_rpc_interceptor *si[] = { &s1.icpt, &s2.icpt };
	ifx fx;
	ifx_start(&fx, TRANSPORT_INPROC,
	    (asynq_rpc_server_cfg){ .interceptors = si, .n_interceptors = 2 },
	    NULL, 0);
	cjob j = { .ch = fx.ch,
		.m = GM(SUM),
		.n = 2,
		.v = { 1, 2 },
		.auth = { "Bearer tok-sum", "Bearer tok-sum" } };
	cjob_run(&j);
	for (size_t i = 0; i < 2; i++) {
		assert_int_equal(asynq_future_status(j.f[i]),
		    ASYNQ_FAILED_PRECONDITION);
		assert_string_equal(err_msg(j.f[i]),
		    NAME("Sum") ": rejected by interceptor S2");
	}
	cjob_done(&j);
	assert_int_equal(atomic_load(&sum_runs), 0);
	assert_int_equal(atomic_load(&s1.batch_after), 1);
	assert_int_equal(atomic_load(&s2.batch_after), 0);
	assert_true(ev_has("S1.batch_after Sum FAILED_PRECONDITION"));
	assert_true(ev_has("S2.after Sum FAILED_PRECONDITION"));
	assert_true(ev_has("S1.after Sum FAILED_PRECONDITION"));
	ifx_stop(&fx);
}

static void
test_icpt_whole_batch_inproc(void **state)
{
	(void)state;
	icpt_whole_batch(TRANSPORT_INPROC);
}

static void
test_icpt_whole_batch_tcp(void **state)
{
	(void)state;
	icpt_whole_batch(TRANSPORT_TCP);
}

/* ---- Log lines, captured ------------------------------------------------ */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char logbuf[1 << 16];
static size_t loglen;

static void
log_capture(const char *line, size_t len, void *arg)
{
	(void)arg;
	pthread_mutex_lock(&log_mu);
	if (loglen + len + 1 < sizeof(logbuf)) {
		memcpy(logbuf + loglen, line, len);
		loglen += len;
		if (len == 0 || line[len - 1] != '\n')
			logbuf[loglen++] = '\n';
	}
	pthread_mutex_unlock(&log_mu);
}

/* Captured lines holding both a and b (b may be NULL). */
static int
log_lines(const char *a, const char *b)
{
	int n = 0;
	pthread_mutex_lock(&log_mu);
	logbuf[loglen] = '\0';
	for (char *l = logbuf; *l != '\0';) {
		char *end = strchr(l, '\n');
		size_t len = end != NULL ? (size_t)(end - l) : strlen(l);
		char one[1024];
		snprintf(one, sizeof(one), "%.*s", (int)len, l);
		if (strstr(one, a) != NULL && (b == NULL || strstr(one, b)))
			n++;
		l += len + (end != NULL);
	}
	pthread_mutex_unlock(&log_mu);
	return n;
}

/* ---- Trace context ------------------------------------------------------- */

typedef struct relay_job {
	asynq_rpc_channel *ch;
	asynq_future *f;
} relay_job;

static asynq_status
relay_main(void *arg)
{
	relay_job *j = arg;
	Num q = ASYNQ__ICPTTEST__NUM__INIT;
	q.v = 9;
	j->f = asynq_rpc_call(j->ch, GM(RELAY), &q.base);
	return ASYNQ_OK;
}

static asynq_status
relay_task(asynq_task *t, void *arg)
{
	relay_job *j = arg;
	(void)relay_main(j);
	(void)asynq_await(t, j->f);
	return ASYNQ_OK;
}

typedef struct traced {
	relay_job *j;
	const asynq_rpc_trace *tr;
} traced;

static asynq_status
traced_main(void *arg)
{
	traced *x = arg;
	asynq_rpc_trace cur;
	assert_true(asynq_rpc_trace_get(&cur));
	assert_memory_equal(cur.trace_id, x->tr->trace_id, 16);
	return relay_main(x->j);
}

static asynq_status
traced_task(asynq_task *t, void *arg)
{
	traced *x = arg;
	assert_false(asynq_rpc_trace_get(NULL));
	assert_int_equal(asynq_rpc_with_trace(x->tr, traced_main, x), ASYNQ_OK);
	assert_false(asynq_rpc_trace_get(NULL));
	(void)asynq_await(t, x->j->f);
	return ASYNQ_OK;
}

/* Relay under a traceparent value of the caller's own (not a trace). */
static asynq_status
garbled_task(asynq_task *t, void *arg)
{
	relay_job *j = arg;
	const char *junk = "00-not-a-trace";
	assert_int_equal(
	    asynq_rpc_metadata_push("traceparent", junk, strlen(junk)),
	    ASYNQ_OK);
	(void)relay_main(j);
	(void)asynq_rpc_metadata_pop();
	(void)asynq_await(t, j->f);
	return ASYNQ_OK;
}

static void
trace_relay(int transport)
{
	pthread_mutex_lock(&log_mu);
	loglen = 0;
	pthread_mutex_unlock(&log_mu);
	asynq_log_set_sink(log_capture, NULL);
	asynq_log_set_level(ASYNQ_LOG_INFO);
	const asynq_rpc_interceptor *ti[] = { &asynq_rpc_trace_interceptor };
	ifx fx;
	ifx_start(&fx, transport,
	    (asynq_rpc_server_cfg){ .interceptors = ti,
	        .n_interceptors = 1,
	        .access_log = true },
	    ti, 1);
	const char *urls[] = { fx.url };
	asynq_rpc_channel_cfg rcfg = { .urls = urls,
		.n_urls = 1,
		.interceptors = ti,
		.n_interceptors = 1 };
	assert_int_equal(asynq_rpc_channel_alloc(&relay, G, &rcfg), ASYNQ_OK);

	/* In a trace: the inner call carries its trace id and the Relay
	 * handler's own span, not the caller's. */
	asynq_rpc_trace tr;
	assert_int_equal(
	    asynq_rpc_trace_parse("00-4bf92f3577b34da6a3ce929d0e0e4736-"
	                          "00f067aa0ba902b7-01",
	        55, &tr),
	    ASYNQ_OK);
	relay_job j = { .ch = fx.ch };
	traced x = { &j, &tr };
	asynq_future *f = asynq_spawn(traced_task, &x);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	const char *tp = reply_s(j.f);
	assert_int_equal(strlen(tp), 55);
	assert_memory_equal(tp, "00-4bf92f3577b34da6a3ce929d0e0e4736-", 36);
	assert_memory_not_equal(tp + 36, "00f067aa0ba902b7", 16);
	assert_string_equal(tp + 52, "-01");
	asynq_rpc_trace inner;
	assert_int_equal(asynq_rpc_trace_parse(tp, 55, &inner), ASYNQ_OK);
	asynq_future_rele(j.f);

	/* The server's request lines name the trace: Relay's and the inner
	 * Echo's. */
	assert_int_equal(log_lines("method=" NAME("Relay"),
	                     "trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
	    1);
	assert_int_equal(log_lines("method=" NAME("Echo"),
	                     "trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
	    1);

	/* Outside a trace: no traceparent at all. */
	relay_job k = { .ch = fx.ch };
	f = asynq_spawn(relay_task, &k);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	assert_string_equal(reply_s(k.f), "");
	asynq_future_rele(k.f);

	/* A malformed traceparent is ignored: the call runs, not in a
	 * trace. */
	relay_job g = { .ch = fx.ch };
	f = asynq_spawn(garbled_task, &g);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	assert_string_equal(reply_s(g.f), "");
	asynq_future_rele(g.f);
	ifx_stop(&fx);
	assert_int_equal(log_lines("event=request", "trace_id="), 2);
	asynq_log_set_sink(NULL, NULL);
}

static void
test_trace_relay_inproc(void **state)
{
	(void)state;
	trace_relay(TRANSPORT_INPROC);
}

static void
test_trace_relay_tcp(void **state)
{
	(void)state;
	trace_relay(TRANSPORT_TCP);
}

static void
test_trace_parse_rejects(void **state)
{
	(void)state;
	asynq_rpc_trace t;
	const char *bad[] = {
		/* upper case, zero trace id, zero span, version 01, short */
		"00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
		"00-00000000000000000000000000000000-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
		"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
		"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(
		    asynq_rpc_trace_parse(bad[i], strlen(bad[i]), &t),
		    ASYNQ_INVALID_ARGUMENT);
	const char *good =
	    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
	assert_int_equal(asynq_rpc_trace_parse(good, 55, &t), ASYNQ_OK);
	char out[56];
	asynq_rpc_trace_format(&t, out);
	assert_string_equal(out, good);
}

/* ---- Authorization ------------------------------------------------------- */

static void
authz_scopes(int transport)
{
	ifx fx;
	ifx_start(&fx, transport, (asynq_rpc_server_cfg){ 0 }, NULL, 0);
	cjob j = { .ch = fx.ch, .m = GM(READ), .n = 1, .v = { 1 } };
	/* No token. */
	cjob_run(&j);
	assert_int_equal(asynq_future_status(j.f[0]), ASYNQ_UNAUTHENTICATED);
	assert_string_equal(err_msg(j.f[0]),
	    NAME("Read") " needs a client certificate of "
	                 "spiffe://example/frontend, or a bearer token with "
	                 "scope users.read or users.admin; the call had none");
	cjob_done(&j);
	/* A token without the scope. */
	j.auth[0] = "Bearer tok-sum";
	cjob_run(&j);
	assert_int_equal(asynq_future_status(j.f[0]), ASYNQ_PERMISSION_DENIED);
	assert_string_equal(err_msg(j.f[0]),
	    NAME("Read") " may not be called by a token with scopes \"sum "
	                 "other\": it needs a client certificate of "
	                 "spiffe://example/frontend, or a bearer token with "
	                 "scope users.read or users.admin");
	cjob_done(&j);
	/* An expired one, and no Bearer. */
	j.auth[0] = "Bearer tok-expired";
	cjob_run(&j);
	assert_int_equal(asynq_future_status(j.f[0]), ASYNQ_UNAUTHENTICATED);
	assert_non_null(strstr(err_msg(j.f[0]),
	    "; the call its bearer token was rejected: token expired"));
	cjob_done(&j);
	j.auth[0] = "Basic dXNlcjpwdw==";
	cjob_run(&j);
	assert_int_equal(asynq_future_status(j.f[0]), ASYNQ_UNAUTHENTICATED);
	assert_non_null(strstr(err_msg(j.f[0]),
	    "its authorization metadata is not \"Bearer <token>\""));
	cjob_done(&j);
	assert_int_equal(atomic_load(&read_runs), 0);
	/* The right scope, three calls, one check. */
	atomic_store(&verify_runs, 0);
	cjob k = { .ch = fx.ch, .m = GM(READ), .n = 3, .v = { 1, 2, 3 } };
	for (size_t i = 0; i < 3; i++)
		k.auth[i] = "Bearer tok-read";
	cjob_run(&k);
	for (size_t i = 0; i < 3; i++)
		assert_int_equal(reply_v(k.f[i]), (int64_t)i + 1);
	cjob_done(&k);
	assert_int_equal(atomic_load(&read_runs), 3);
	assert_int_equal(atomic_load(&verify_runs), 1);
	/* Echo has no policy: anyone. */
	cjob e = { .ch = fx.ch, .m = GM(ECHO), .n = 1, .v = { 4 } };
	cjob_run(&e);
	assert_int_equal(reply_v(e.f[0]), 4);
	cjob_done(&e);
	ifx_stop(&fx);
}

static void
test_authz_scopes_inproc(void **state)
{
	(void)state;
	authz_scopes(TRANSPORT_INPROC);
}

static void
test_authz_scopes_tcp(void **state)
{
	(void)state;
	authz_scopes(TRANSPORT_TCP);
}

static void
authz_whole_batch(int transport)
{
	ifx fx;
	ifx_start(&fx, transport, (asynq_rpc_server_cfg){ 0 }, NULL, 0);
	/* One batch: three calls with the token, two without. */
	cjob j = { .ch = fx.ch,
		.m = GM(SUM),
		.n = 5,
		.v = { 1, 2, 3, 4, 5 },
		.auth = { "Bearer tok-sum", "Bearer tok-sum", NULL,
		    "Bearer tok-sum", NULL } };
	cjob_run(&j);
	assert_int_equal(reply_v(j.f[0]), 4);
	assert_int_equal(reply_v(j.f[1]), 5);
	assert_int_equal(reply_v(j.f[3]), 7);
	assert_int_equal(asynq_future_status(j.f[2]), ASYNQ_UNAUTHENTICATED);
	assert_int_equal(asynq_future_status(j.f[4]), ASYNQ_UNAUTHENTICATED);
	assert_non_null(strstr(err_msg(j.f[4]),
	    NAME("Sum") " needs a "
	                "bearer token with scope sum"));
	cjob_done(&j);
	assert_int_equal(atomic_load(&sum_runs), 1);
	assert_int_equal(atomic_load(&sum_calls), 3);
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(fx.srv, &ss);
	assert_int_equal(ss.requests, 1);
	/* Counted by code per method. */
	asynq_rpc_method_stats ms;
	for (size_t i = 0; i < asynq_rpc_server_methods(fx.srv); i++) {
		assert_int_equal(
		    asynq_rpc_server_method_stats_get(fx.srv, i, &ms),
		    ASYNQ_OK);
		if (ms.method == GM(SUM))
			break;
	}
	assert_ptr_equal(ms.method, GM(SUM));
	assert_int_equal(ms.codes[ASYNQ_OK], 3);
	assert_int_equal(ms.codes[ASYNQ_UNAUTHENTICATED], 2);
	ifx_stop(&fx);
}

static void
test_authz_whole_batch_inproc(void **state)
{
	(void)state;
	authz_whole_batch(TRANSPORT_INPROC);
}

static void
test_authz_whole_batch_tcp(void **state)
{
	(void)state;
	authz_whole_batch(TRANSPORT_TCP);
}

static void
authz_settings(int transport)
{
	static const char *const admin[] = { "admin" };
	asynq_rpc_policy pol[] = {
		{ .method = NAME("*"), .scopes = admin, .n_scopes = 1 },
		{ .method = NAME("Read") }, /* open */
	};
	ifx fx;
	ifx_start(&fx, transport,
	    (asynq_rpc_server_cfg){ .policies = pol, .n_policies = 2 }, NULL,
	    0);
	/* Read: its own policy (anyone) overrides the .proto's. */
	cjob r = { .ch = fx.ch, .m = GM(READ), .n = 1, .v = { 1 } };
	cjob_run(&r);
	assert_int_equal(reply_v(r.f[0]), 1);
	cjob_done(&r);
	/* Echo and Sum: the service's, scope admin. */
	cjob e = { .ch = fx.ch, .m = GM(ECHO), .n = 1, .v = { 2 } };
	cjob_run(&e);
	assert_int_equal(asynq_future_status(e.f[0]), ASYNQ_UNAUTHENTICATED);
	assert_string_equal(err_msg(e.f[0]),
	    NAME("Echo") " needs a bearer token with scope admin; the call "
	                 "had none");
	cjob_done(&e);
	cjob s = { .ch = fx.ch,
		.m = GM(SUM),
		.n = 1,
		.v = { 3 },
		.auth = { "Bearer tok-sum" } };
	cjob_run(&s);
	assert_int_equal(asynq_future_status(s.f[0]), ASYNQ_PERMISSION_DENIED);
	cjob_done(&s);
	assert_int_equal(atomic_load(&echo_runs), 0);
	assert_int_equal(atomic_load(&sum_runs), 0);
	ifx_stop(&fx);
}

static void
test_authz_settings_inproc(void **state)
{
	(void)state;
	authz_settings(TRANSPORT_INPROC);
}

static void
test_authz_settings_tcp(void **state)
{
	(void)state;
	authz_settings(TRANSPORT_TCP);
}

/* A verifier's scope list of ASYNQ_RPC_SCOPES_MAX - 2 characters is read
 * whole; one that filled the buffer may be cut short, so its last scope is
 * ignored. */
static void
test_authz_scopes_limit(void **state)
{
	(void)state;
	ifx fx;
	ifx_start(&fx, TRANSPORT_INPROC, (asynq_rpc_server_cfg){ 0 }, NULL, 0);
	const int lim = ASYNQ_RPC_SCOPES_MAX - 2;
	const asynq_status want[] = { ASYNQ_OK, ASYNQ_OK,
		ASYNQ_PERMISSION_DENIED };
	for (int i = 0; i < 3; i++) {
		char auth[64];
		snprintf(auth, sizeof(auth), "Bearer long-%d", lim - 1 + i);
		cjob j = { .ch = fx.ch,
			.m = GM(READ),
			.n = 1,
			.v = { 1 },
			.auth = { auth } };
		cjob_run(&j);
		assert_int_equal(asynq_future_status(j.f[0]), want[i]);
		cjob_done(&j);
	}
	assert_int_equal(atomic_load(&read_runs), 2);
	ifx_stop(&fx);
}

/* Set-up mistakes fail the listen in words. */
static void
test_authz_setup_errors(void **state)
{
	(void)state;
	asynq_runtime *rt;
	asynq_runtime_cfg rcfg = { .workers = 1 };
	assert_int_equal(asynq_runtime_alloc(&rt, &rcfg), ASYNQ_OK);
	char url[128];

	/* Scopes in the .proto, no verifier. */
	asynq_rpc_server *srv;
	assert_int_equal(asynq_rpc_server_alloc(&srv, rt, NULL), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_add_service(srv, G, handlers, NULL),
	    ASYNQ_OK);
	url_make(url, sizeof(url), TRANSPORT_INPROC);
	assert_int_equal(asynq_rpc_server_listen(srv, url),
	    ASYNQ_INVALID_ARGUMENT);
	assert_non_null(strstr(asynq_rpc_server_last_error(srv),
	    "method " NAME("Sum") " allows token scopes (sum) but the server "
	                          "has no token_verifier to check tokens"));
	asynq_rpc_server_free(srv);

	/* A policy for a method the server does not serve. */
	asynq_rpc_policy pol[] = { { .method = NAME("Nope") } };
	asynq_rpc_server_cfg scfg = { .policies = pol,
		.n_policies = 1,
		.token_verifier = verifier };
	assert_int_equal(asynq_rpc_server_alloc(&srv, rt, &scfg), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_add_service(srv, G, handlers, NULL),
	    ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_listen(srv, url),
	    ASYNQ_INVALID_ARGUMENT);
	assert_non_null(strstr(asynq_rpc_server_last_error(srv),
	    "policy for " NAME("Nope") ": the server serves no such method"));
	asynq_rpc_server_free(srv);
	asynq_runtime_stop(rt);
	asynq_runtime_free(rt);
}

/* ---- Authorization by peer identity (mutual TLS) ------------------------- */

/* Certificates made with openssl in a directory of TEST_TMPDIR: a CA, the
 * server's (localhost), and clients: front (CN=frontend, the SANs
 * URI:spiffe://example/frontend and DNS:front.svc), batch (CN=batchjob,
 * DNS:batch.svc) and mallory (CN=mallory, an O whose value reads
 * ",CN=frontend"). */
static char cdir[512];

static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
sh(const char *fmt, ...)
{
	char cmd[2048], line[2700];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	snprintf(line, sizeof(line), "cd '%s' && { %s ; } >>openssl.log 2>&1",
	    cdir, cmd);
	int rc = system(line);
	if (rc != 0)
		print_message("failed (%d): %s\n", rc, cmd);
	assert_int_equal(rc, 0);
}

static const char *
cpath(const char *name)
{
	static char bufs[8][600];
	static int next;
	char *b = bufs[next++ % 8];
	snprintf(b, sizeof(bufs[0]), "%s/%s", cdir, name);
	return b;
}

#define EC_KEY "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"

static void
cert(const char *name, const char *subj, const char *ext)
{
	sh("openssl req %s -keyout %s.key -out %s.csr -subj '%s' && "
	   "printf '%s\n' > %s.ext && openssl x509 -req -in %s.csr -CA ca.crt "
	   "-CAkey ca.key -CAcreateserial -out %s.crt -days 2 -extfile %s.ext",
	    EC_KEY, name, name, subj, ext, name, name, name, name);
}

static void
certs_make(void)
{
	if (cdir[0] != '\0')
		return;
	const char *tmp = getenv("TEST_TMPDIR");
	snprintf(cdir, sizeof(cdir), "%s/asynq-icpt-XXXXXX",
	    tmp != NULL ? tmp : "/tmp");
	assert_non_null(mkdtemp(cdir));
	sh("openssl req -x509 %s -days 2 -keyout ca.key -out ca.crt "
	   "-subj /CN=asynq-icpt-ca",
	    EC_KEY);
	cert("srv", "/CN=localhost", "subjectAltName=DNS:localhost");
	cert("front", "/CN=frontend/O=example",
	    "subjectAltName=URI:spiffe://example/frontend,DNS:front.svc\\n"
	    "extendedKeyUsage=clientAuth");
	cert("batch", "/CN=batchjob/O=example",
	    "subjectAltName=DNS:batch.svc\\nextendedKeyUsage=clientAuth");
	cert("mallory", "/CN=mallory/O=x,CN=frontend",
	    "extendedKeyUsage=clientAuth");
}

/* A tls+tcp server of Guarded asking for client certificates of the CA
 * (optional ones), with policies pol. */
static void
mtls_fx(ifx *fx, const asynq_rpc_policy *pol, size_t n_pol)
{
	certs_make();
	memset(fx, 0, sizeof(*fx));
	atomic_store(&echo_runs, 0);
	atomic_store(&sum_runs, 0);
	atomic_store(&read_runs, 0);
	asynq_rpc_server_cfg scfg = { .tls_cert_file = cpath("srv.crt"),
		.tls_key_file = cpath("srv.key"),
		.tls_client_ca_file = cpath("ca.crt"),
		.token_verifier = verifier,
		.policies = pol,
		.n_policies = n_pol };
	asynq_runtime_cfg rcfg = { .workers = 2 };
	assert_int_equal(asynq_runtime_alloc(&fx->rt, &rcfg), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_alloc(&fx->srv, fx->rt, &scfg),
	    ASYNQ_OK);
	assert_int_equal(
	    asynq_rpc_server_add_service(fx->srv, G, handlers, NULL), ASYNQ_OK);
	snprintf(fx->url, sizeof(fx->url), "tls+tcp://127.0.0.1:%d",
	    free_port());
	assert_int_equal(asynq_rpc_server_listen(fx->srv, fx->url), ASYNQ_OK);
}

static asynq_rpc_channel *
mtls_channel(const ifx *fx, const char *who)
{
	char crt[64], key[64];
	const char *urls[] = { fx->url };
	asynq_rpc_channel_cfg ccfg = { .urls = urls,
		.n_urls = 1,
		.tls_ca_file = cpath("ca.crt"),
		.tls_server_name = "localhost",
		.default_deadline_ms = 5000 };
	if (who != NULL) {
		snprintf(crt, sizeof(crt), "%s.crt", who);
		snprintf(key, sizeof(key), "%s.key", who);
		ccfg.tls_cert_file = cpath(crt);
		ccfg.tls_key_file = cpath(key);
	}
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, G, &ccfg), ASYNQ_OK);
	return ch;
}

/* One call of m with v through a channel presenting who's certificate,
 * with authorization auth (or none): its status, message in msg. */
static asynq_status
mtls_call(const ifx *fx, const char *who, const asynq_rpc_method_desc *m,
    const char *auth, char *msg, size_t cap)
{
	asynq_rpc_channel *ch = mtls_channel(fx, who);
	cjob j = { .ch = ch, .m = m, .n = 1, .v = { 6 }, .auth = { auth } };
	cjob_run(&j);
	asynq_status st = asynq_future_status(j.f[0]);
	snprintf(msg, cap, "%s", err_msg(j.f[0]));
	if (st == ASYNQ_OK)
		assert_int_equal(reply_v(j.f[0]), m == GM(SUM) ? 7 : 6);
	cjob_done(&j);
	asynq_rpc_channel_free(ch);
	return st;
}

/* The .proto's policy of Read: the peer spiffe://example/frontend, or a
 * token with users.read. */
static void
test_authz_peer_proto(void **state)
{
	(void)state;
	ifx fx;
	mtls_fx(&fx, NULL, 0);
	char msg[512];
	assert_int_equal(
	    mtls_call(&fx, "front", GM(READ), NULL, msg, sizeof(msg)),
	    ASYNQ_OK);
	assert_int_equal(atomic_load(&read_runs), 1);
	/* Another verified peer: a credential, not the right one. */
	assert_int_equal(
	    mtls_call(&fx, "batch", GM(READ), NULL, msg, sizeof(msg)),
	    ASYNQ_PERMISSION_DENIED);
	assert_string_equal(msg,
	    NAME("Read") " may not be called by peer DNS:batch.svc: it needs "
	                 "a client certificate of spiffe://example/frontend, "
	                 "or a bearer token with scope users.read or "
	                 "users.admin");
	/* ... that may still come in with a token of the scope. */
	assert_int_equal(mtls_call(&fx, "batch", GM(READ), "Bearer tok-read",
	                     msg, sizeof(msg)),
	    ASYNQ_OK);
	/* No certificate (the server asks but does not require one): no
	 * credential at all. */
	assert_int_equal(mtls_call(&fx, NULL, GM(READ), NULL, msg, sizeof(msg)),
	    ASYNQ_UNAUTHENTICATED);
	assert_non_null(strstr(msg, "; the call had none"));
	assert_int_equal(atomic_load(&read_runs), 2);
	ifx_stop(&fx);
}

/* Policies in the settings: by CN, by DNS SAN, any verified peer. */
static void
test_authz_peer_settings(void **state)
{
	(void)state;
	static const char *const echo_peers[] = { "CN=frontend",
		"DNS:batch.svc" };
	static const char *const any[] = { "*" };
	asynq_rpc_policy pol[] = {
		{ .method = NAME("Echo"), .peers = echo_peers, .n_peers = 2 },
		{ .method = NAME("Sum"), .peers = any, .n_peers = 1 },
	};
	ifx fx;
	mtls_fx(&fx, pol, 2);
	char msg[512];
	assert_int_equal(
	    mtls_call(&fx, "front", GM(ECHO), NULL, msg, sizeof(msg)),
	    ASYNQ_OK);
	assert_int_equal(
	    mtls_call(&fx, "batch", GM(ECHO), NULL, msg, sizeof(msg)),
	    ASYNQ_OK);
	/* O=x\,CN=frontend is not a CN. */
	assert_int_equal(
	    mtls_call(&fx, "mallory", GM(ECHO), NULL, msg, sizeof(msg)),
	    ASYNQ_PERMISSION_DENIED);
	assert_non_null(strstr(msg, "may not be called by peer CN=mallory,"));
	assert_int_equal(atomic_load(&echo_runs), 2);
	/* Any verified peer, and none. */
	assert_int_equal(
	    mtls_call(&fx, "mallory", GM(SUM), NULL, msg, sizeof(msg)),
	    ASYNQ_OK);
	assert_int_equal(mtls_call(&fx, NULL, GM(SUM), NULL, msg, sizeof(msg)),
	    ASYNQ_UNAUTHENTICATED);
	assert_string_equal(msg,
	    NAME("Sum") " needs a client certificate of "
	                "*; the call had none");
	assert_int_equal(atomic_load(&sum_runs), 1);
	ifx_stop(&fx);
}

static int
certs_remove(void **state)
{
	(void)state;
	if (cdir[0] != '\0') {
		char cmd[600];
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", cdir);
		(void)!system(cmd);
	}
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_icpt_order_inproc),
		cmocka_unit_test(test_icpt_order_tcp),
		cmocka_unit_test(test_icpt_metadata_inproc),
		cmocka_unit_test(test_icpt_metadata_tcp),
		cmocka_unit_test(test_icpt_reject_inproc),
		cmocka_unit_test(test_icpt_reject_tcp),
		cmocka_unit_test(test_icpt_after_results_inproc),
		cmocka_unit_test(test_icpt_after_results_tcp),
		cmocka_unit_test(test_icpt_batch_rejected),
		cmocka_unit_test(test_icpt_whole_batch_inproc),
		cmocka_unit_test(test_icpt_whole_batch_tcp),
		cmocka_unit_test(test_trace_relay_inproc),
		cmocka_unit_test(test_trace_relay_tcp),
		cmocka_unit_test(test_trace_parse_rejects),
		cmocka_unit_test(test_authz_scopes_inproc),
		cmocka_unit_test(test_authz_scopes_tcp),
		cmocka_unit_test(test_authz_whole_batch_inproc),
		cmocka_unit_test(test_authz_whole_batch_tcp),
		cmocka_unit_test(test_authz_settings_inproc),
		cmocka_unit_test(test_authz_settings_tcp),
		cmocka_unit_test(test_authz_scopes_limit),
		cmocka_unit_test(test_authz_setup_errors),
		cmocka_unit_test(test_authz_peer_proto),
		cmocka_unit_test(test_authz_peer_settings),
	};
	return cmocka_run_group_tests(tests, NULL, certs_remove);
}
