/* SPDX-License-Identifier: MIT */
/*
 * End-to-end tests of asynq RPC in one process: a server on a two-worker
 * runtime, clients on the test thread (or on a second runtime), over
 * inproc:// and tcp://127.0.0.1. They check values, batching (requests per
 * calls, from both sides' counters), errors crossing the wire, deadlines,
 * limits at limit-1/limit/limit+1, malformed input and closing with calls in
 * flight. Assertions run on the test thread only, never on a coroutine
 * stack: tasks record what they see in plain structs.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "proto/asynq/rpc.pb-c.h"
#include "tests/rpc/test_rpc.asynq.h"

#define CALC (&asynq__rpctest__calc__asynq_desc)
#define M(name) (&CALC->methods[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_##name])

/* ---- Handlers ----------------------------------------------------------- */

static atomic_int sleep_started;

static Asynq__Rpctest__Num *
num_new(int64_t v)
{
	Asynq__Rpctest__Num *n = malloc(sizeof(*n));
	if (n != NULL) {
		asynq__rpctest__num__init(n);
		n->v = v;
	}
	return n;
}

static asynq_status
h_double(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	const Asynq__Rpctest__Num *in = (const Asynq__Rpctest__Num *)req;
	Asynq__Rpctest__Num *out = num_new(in->v * 2);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	size_t len = 0;
	const void *tag = asynq_rpc_metadata_get("tag", &len);
	if (tag != NULL) {
		out->s = strndup(tag, len);
	}
	*reply = &out->base;
	return ASYNQ_OK;
}

static asynq_status
h_fail(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)reply;
	(void)ctx;
	const Asynq__Rpctest__Num *in = (const Asynq__Rpctest__Num *)req;
	return asynq_fail(t, (asynq_status)in->v, "failed %lld",
	    (long long)in->v);
}

static asynq_status
h_sleep(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)ctx;
	const Asynq__Rpctest__Num *in = (const Asynq__Rpctest__Num *)req;
	atomic_fetch_add(&sleep_started, 1);
	asynq_future *f = asynq_sleep((uint64_t)in->v * 1000000u);
	asynq_status st = asynq_await(t, f);
	asynq_future_rele(f);
	ASYNQ_TRY(st);
	Asynq__Rpctest__Num *out = num_new(asynq_rpc_deadline_get() != 0);
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
	for (size_t i = 0; i < n; i++) {
		const Asynq__Rpctest__Num *in =
		    (const Asynq__Rpctest__Num *)calls[i].req;
		Asynq__Rpctest__Num *out = num_new(in->v + (int64_t)n);
		if (out == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		calls[i].reply = &out->base;
	}
	return ASYNQ_OK;
}

static asynq_status
h_depth(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	int64_t d = 0;
	for (const Asynq__Rpctest__Tree *n = (const Asynq__Rpctest__Tree *)req;
	     n != NULL; n = n->child)
		d++;
	Asynq__Rpctest__Num *out = num_new(d);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	*reply = &out->base;
	return ASYNQ_OK;
}

static const asynq_rpc_handler calc_handlers[] = {
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_TWICE] = { .unary = h_double },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_FAIL] = { .unary = h_fail },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_SLEEP] = { .unary = h_sleep },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_SUM] = { .batch = h_sum },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_DEPTH] = { .unary = h_depth },
};

/* ---- Fixture ------------------------------------------------------------ */

typedef struct fixture {
	asynq_runtime *rt;
	asynq_rpc_server *srv;
	asynq_rpc_channel *ch;
	char url[128];
} fixture;

static int
free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t len = sizeof(a);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) != 0)
		return -1;
	close(fd);
	return ntohs(a.sin_port);
}

static void
url_make(char *buf, size_t n, bool tcp)
{
	static int seq;
	if (tcp)
		snprintf(buf, n, "tcp://127.0.0.1:%d", free_port());
	else
		snprintf(buf, n, "inproc://asynq-rpc-test-%d", ++seq);
}

/* Starts a two-worker runtime and a Calc server with scfg (NULL for
 * defaults) and opens a channel to it with chan_max_calls (0: the
 * service's). */
static void
fx_start(fixture *fx, bool tcp, const asynq_rpc_server_cfg *scfg,
    size_t chan_max_calls)
{
	memset(fx, 0, sizeof(*fx));
	asynq_runtime_cfg rcfg = { .workers = 2 };
	assert_int_equal(asynq_runtime_alloc(&fx->rt, &rcfg), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_alloc(&fx->srv, fx->rt, scfg),
	    ASYNQ_OK);
	assert_int_equal(
	    asynq_rpc_server_add_service(fx->srv, CALC, calc_handlers, NULL),
	    ASYNQ_OK);
	url_make(fx->url, sizeof(fx->url), tcp);
	assert_int_equal(asynq_rpc_server_listen(fx->srv, fx->url), ASYNQ_OK);
	const char *urls[] = { fx->url };
	asynq_rpc_channel_cfg ccfg = {
		.urls = urls,
		.n_urls = 1,
		.max_calls = chan_max_calls,
	};
	assert_int_equal(asynq_rpc_channel_alloc(&fx->ch, CALC, &ccfg),
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

static asynq_future *
call_num(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m, int64_t v)
{
	Asynq__Rpctest__Num n = ASYNQ__RPCTEST__NUM__INIT;
	n.v = v;
	return asynq_rpc_call(ch, m, &n.base);
}

static int64_t
num_of(asynq_future *f)
{
	const Asynq__Rpctest__Num *n = asynq_future_ptr(f);
	return n != NULL ? n->v : INT64_MIN;
}

static int64_t
ms_since(uint64_t t0)
{
	return (int64_t)((asynq_now_ns() - t0) / 1000000u);
}

/* ---- A client task --------------------------------------------------------
 */

typedef struct job {
	asynq_rpc_channel *ch;
	const asynq_rpc_method_desc *m;
	size_t n;
	asynq_future **out;
	asynq_status st;
} job;

/* Makes n calls of m with v = i, then awaits them all. */
static asynq_status
job_main(asynq_task *t, void *arg)
{
	job *j = arg;
	for (size_t i = 0; i < j->n; i++)
		j->out[i] = call_num(j->ch, j->m, (int64_t)i);
	j->st = asynq_await_all(t, j->out, j->n);
	return ASYNQ_OK;
}

static void
run_job(job *j)
{
	asynq_future *f = asynq_spawn(job_main, j);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

/* ---- Tests ----------------------------------------------------------------
 */

static void
check_thousand(bool tcp)
{
	fixture fx;
	fx_start(&fx, tcp, NULL, 0);
	enum { N = 1000 };
	asynq_future **out = calloc(N, sizeof(*out));
	job j = { fx.ch, M(TWICE), N, out, ASYNQ_UNKNOWN };
	run_job(&j);
	assert_int_equal(j.st, ASYNQ_OK);
	for (size_t i = 0; i < N; i++)
		assert_int_equal(num_of(out[i]), 2 * (int64_t)i);
	asynq_future_rele_n(out, N);
	free(out);
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(fx.ch, &cs);
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(fx.srv, &ss);
	/* batch_max_calls = 100: ceil(1000 / 100) requests. */
	assert_int_equal(cs.calls, N);
	assert_true(cs.requests <= 10);
	assert_int_equal(cs.failures, 0);
	assert_int_equal(ss.requests, cs.requests);
	assert_int_equal(ss.calls, N);
	fx_stop(&fx);
}

static void
test_rpc_batches_calls_inproc(void **state)
{
	(void)state;
	check_thousand(false);
}

static void
test_rpc_batches_calls_tcp(void **state)
{
	(void)state;
	check_thousand(true);
}

static void
test_rpc_mixed_methods(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, false, NULL, 0);
	asynq_future *f[7];
	f[0] = call_num(fx.ch, M(TWICE), 21);
	f[1] = call_num(fx.ch, M(SUM), 10);
	f[2] = call_num(fx.ch, M(FAIL), ASYNQ_NOT_FOUND);
	f[3] = call_num(fx.ch, M(SUM), 20);
	f[4] = call_num(fx.ch, M(TWICE), -4);
	f[5] = call_num(fx.ch, M(SUM), 30);
	f[6] = call_num(fx.ch, M(SLEEP), 1);
	assert_int_equal(asynq_wait_all(f, 7), ASYNQ_NOT_FOUND);
	assert_int_equal(num_of(f[0]), 42);
	/* One whole-batch handler saw the three Sum calls together. */
	assert_int_equal(num_of(f[1]), 13);
	assert_int_equal(num_of(f[3]), 23);
	assert_int_equal(num_of(f[5]), 33);
	assert_int_equal(num_of(f[4]), -8);
	assert_int_equal(asynq_future_status(f[2]), ASYNQ_NOT_FOUND);
	/* The default deadline reached the handler. */
	assert_int_equal(num_of(f[6]), 1);
	asynq_future_rele_n(f, 7);
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(fx.ch, &cs);
	assert_int_equal(cs.requests, 1);
	assert_int_equal(cs.failures, 1);
	fx_stop(&fx);
}

static void
test_rpc_handler_error_reaches_caller(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, true, NULL, 0);
	asynq_future *f = call_num(fx.ch, M(FAIL), ASYNQ_PERMISSION_DENIED);
	assert_int_equal(asynq_wait(f), ASYNQ_PERMISSION_DENIED);
	const asynq_error *e = asynq_future_error(f);
	assert_non_null(e);
	assert_int_equal(asynq_error_code(e), ASYNQ_PERMISSION_DENIED);
	assert_non_null(strstr(asynq_error_message(e), "failed 7"));
	asynq_future_rele(f);
	fx_stop(&fx);
}

static void
test_rpc_unknown_method_unimplemented(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, false, NULL, 0);
	const char *urls[] = { fx.url };
	asynq_rpc_channel_cfg ccfg = { .urls = urls, .n_urls = 1 };
	asynq_rpc_channel *other;
	assert_int_equal(asynq_rpc_channel_alloc(&other,
	                     &asynq__rpctest__missing__asynq_desc, &ccfg),
	    ASYNQ_OK);
	asynq_future *f[2];
	f[0] =
	    call_num(other, &asynq__rpctest__missing__asynq_desc.methods[0], 1);
	f[1] = call_num(fx.ch, M(TWICE), 2);
	assert_int_equal(asynq_wait_all(f, 2), ASYNQ_UNIMPLEMENTED);
	assert_non_null(strstr(asynq_error_message(asynq_future_error(f[0])),
	    "asynq.rpctest.Missing/Gone"));
	assert_int_equal(num_of(f[1]), 4);
	asynq_future_rele_n(f, 2);
	asynq_rpc_channel_free(other);
	fx_stop(&fx);
}

static void
test_rpc_deadline_exceeded(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, true, NULL, 0);
	/* Warm the connection so the deadline measures the call alone. */
	asynq_future *w = call_num(fx.ch, M(TWICE), 1);
	assert_int_equal(asynq_wait(w), ASYNQ_OK);
	asynq_future_rele(w);

	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t dl =
	    (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec + 50 * 1000000;
	assert_int_equal(
	    asynq_scoped_push(&asynq_rpc_deadline, (void *)(intptr_t)dl),
	    ASYNQ_OK);
	uint64_t t0 = asynq_now_ns();
	asynq_future *f = call_num(fx.ch, M(SLEEP), 400);
	assert_int_equal(asynq_scoped_pop(&asynq_rpc_deadline), ASYNQ_OK);
	assert_int_equal(asynq_wait(f), ASYNQ_DEADLINE_EXCEEDED);
	int64_t ms = ms_since(t0);
	assert_true(ms >= 45);
	assert_true(ms < 300);
	asynq_future_rele(f);
	fx_stop(&fx);
}

static void
test_rpc_malformed_request_then_serves(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, false, NULL, 0);
	nng_socket raw;
	assert_int_equal(nng_req0_open(&raw), 0);
	assert_int_equal(nng_socket_set_ms(raw, NNG_OPT_RECVTIMEO, 5000), 0);
	assert_int_equal(nng_dial(raw, fx.url, NULL, 0), 0);
	static const uint8_t junk[] = { 0x0a, 0xff, 0xff, 0xff, 0x7f, 0x01 };
	assert_int_equal(nng_send(raw, (void *)junk, sizeof(junk), 0), 0);
	void *buf = NULL;
	size_t len = 0;
	assert_int_equal(nng_recv(raw, &buf, &len, NNG_FLAG_ALLOC), 0);
	Asynq__Rpc__Reply *rep = asynq__rpc__reply__unpack(NULL, len, buf);
	assert_non_null(rep);
	assert_int_equal(rep->status, ASYNQ_INVALID_ARGUMENT);
	assert_int_equal(rep->n_results, 0);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	nng_free(buf, len);
	nng_close(raw);

	asynq_future *f = call_num(fx.ch, M(TWICE), 5);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(num_of(f), 10);
	asynq_future_rele(f);
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(fx.srv, &ss);
	assert_int_equal(ss.malformed, 1);
	fx_stop(&fx);
}

static void
check_calls_limit(size_t n, asynq_status want)
{
	fixture fx;
	asynq_rpc_server_cfg scfg = { .max_calls = 10 };
	fx_start(&fx, false, &scfg, 100);
	asynq_future *f[16];
	for (size_t i = 0; i < n; i++)
		f[i] = call_num(fx.ch, M(TWICE), (int64_t)i);
	assert_int_equal(asynq_wait_all(f, n), want);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(asynq_future_status(f[i]), want);
		if (want == ASYNQ_OK)
			assert_int_equal(num_of(f[i]), 2 * (int64_t)i);
	}
	asynq_future_rele_n(f, n);
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(fx.srv, &ss);
	assert_int_equal(ss.requests, 1);
	assert_int_equal(ss.rejected, want == ASYNQ_OK ? 0 : 1);
	fx_stop(&fx);
}

static void
test_rpc_max_calls_limit(void **state)
{
	(void)state;
	check_calls_limit(9, ASYNQ_OK);
	check_calls_limit(10, ASYNQ_OK);
	check_calls_limit(11, ASYNQ_RESOURCE_EXHAUSTED);
}

static void
test_rpc_client_splits_at_max_calls(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, false, NULL, 7);
	asynq_future *f[15];
	for (size_t i = 0; i < 15; i++)
		f[i] = call_num(fx.ch, M(SUM), 0);
	assert_int_equal(asynq_wait_all(f, 15), ASYNQ_OK);
	/* Requests of 7, 7 and 1 calls. */
	for (size_t i = 0; i < 15; i++)
		assert_int_equal(num_of(f[i]), i < 14 ? 7 : 1);
	asynq_future_rele_n(f, 15);
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(fx.ch, &cs);
	assert_int_equal(cs.requests, 3);
	fx_stop(&fx);
}

static void
test_rpc_unreachable_unavailable(void **state)
{
	(void)state;
	char url[64];
	url_make(url, sizeof(url), true);
	const char *urls[] = { url };
	asynq_rpc_channel_cfg ccfg = {
		.urls = urls,
		.n_urls = 1,
		.default_deadline_ms = 200,
	};
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &ccfg), ASYNQ_OK);
	uint64_t t0 = asynq_now_ns();
	asynq_future *f = call_num(ch, M(TWICE), 1);
	assert_int_equal(asynq_wait(f), ASYNQ_UNAVAILABLE);
	assert_true(ms_since(t0) < 1000);
	asynq_future_rele(f);
	asynq_rpc_channel_free(ch);
	asynq_thread_fini();
}

static void
test_rpc_bad_url_invalid_argument(void **state)
{
	(void)state;
	const char *urls[] = { "nonsense://x" };
	asynq_rpc_channel_cfg ccfg = { .urls = urls, .n_urls = 1 };
	asynq_rpc_channel *ch = NULL;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &ccfg),
	    ASYNQ_INVALID_ARGUMENT);
	ccfg.n_urls = 0;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &ccfg),
	    ASYNQ_INVALID_ARGUMENT);
}

/* Encodes a Tree of `depth` levels by hand (protobuf-c's packer recurses). */
static uint8_t *
tree_bytes(size_t depth, size_t *len)
{
	/* Innermost: v = 1 (10 01). Each level wraps: 0a <len> <inner>. */
	size_t cap = depth * 8 + 16;
	uint8_t *buf = malloc(cap);
	size_t start = cap - 2;
	buf[start] = 0x10;
	buf[start + 1] = 0x01;
	for (size_t i = 1; i < depth; i++) {
		size_t inner = cap - start;
		uint8_t v[5];
		size_t nv = 0;
		do {
			v[nv++] = (uint8_t)((inner & 0x7f) |
			    (inner > 0x7f ? 0x80 : 0));
			inner >>= 7;
		} while (inner != 0);
		start -= nv;
		memcpy(buf + start, v, nv);
		buf[--start] = 0x0a;
	}
	*len = cap - start;
	memmove(buf, buf + start, *len);
	return buf;
}

static void
test_rpc_deep_nesting_rejected(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, false, NULL, 0);
	/* Within the limit: decoded on this thread's stack, packed by the
	 * channel, decoded by the server. */
	size_t len;
	uint8_t *bytes = tree_bytes(50, &len);
	Asynq__Rpctest__Tree *tr =
	    asynq__rpctest__tree__unpack(NULL, len, bytes);
	free(bytes);
	assert_non_null(tr);
	asynq_future *f = asynq_rpc_call(fx.ch, M(DEPTH), &tr->base);
	asynq__rpctest__tree__free_unpacked(tr, NULL);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(num_of(f), 50);
	asynq_future_rele(f);
	/* Over the limit: a raw request whose payload nests 150 deep. */
	size_t plen;
	uint8_t *payload = tree_bytes(150, &plen);
	Asynq__Rpc__Call call = ASYNQ__RPC__CALL__INIT;
	call.method = (char *)M(DEPTH)->full_name;
	call.call_id = 3;
	call.payload.data = payload;
	call.payload.len = plen;
	Asynq__Rpc__Call *calls[] = { &call };
	Asynq__Rpc__Request req = ASYNQ__RPC__REQUEST__INIT;
	req.n_calls = 1;
	req.calls = calls;
	size_t rlen = asynq__rpc__request__get_packed_size(&req);
	uint8_t *rbuf = malloc(rlen);
	asynq__rpc__request__pack(&req, rbuf);
	free(payload);
	nng_socket raw;
	assert_int_equal(nng_req0_open(&raw), 0);
	assert_int_equal(nng_socket_set_ms(raw, NNG_OPT_RECVTIMEO, 5000), 0);
	assert_int_equal(nng_dial(raw, fx.url, NULL, 0), 0);
	assert_int_equal(nng_send(raw, rbuf, rlen, 0), 0);
	free(rbuf);
	void *buf = NULL;
	len = 0;
	assert_int_equal(nng_recv(raw, &buf, &len, NNG_FLAG_ALLOC), 0);
	Asynq__Rpc__Reply *rep = asynq__rpc__reply__unpack(NULL, len, buf);
	assert_non_null(rep);
	assert_int_equal(rep->status, 0);
	assert_int_equal(rep->n_results, 1);
	assert_int_equal(rep->results[0]->call_id, 3);
	assert_int_equal(rep->results[0]->status, ASYNQ_RESOURCE_EXHAUSTED);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	nng_free(buf, len);
	nng_close(raw);
	fx_stop(&fx);
}

/* Client on a second runtime: ten slow calls in flight while the server
 * closes; every one is answered. */
typedef struct close_job {
	asynq_rpc_channel *ch;
	asynq_status st;
	int64_t sum;
} close_job;

static asynq_status
close_job_main(asynq_task *t, void *arg)
{
	close_job *j = arg;
	asynq_future *f[10];
	for (size_t i = 0; i < 10; i++)
		f[i] = call_num(j->ch, M(SLEEP), 100);
	j->st = asynq_await_all(t, f, 10);
	for (size_t i = 0; i < 10; i++)
		j->sum += num_of(f[i]);
	asynq_future_rele_n(f, 10);
	return ASYNQ_OK;
}

static void
test_rpc_close_answers_inflight(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, false, NULL, 0);
	asynq_runtime *crt;
	asynq_runtime_cfg rcfg = { .workers = 1 };
	assert_int_equal(asynq_runtime_alloc(&crt, &rcfg), ASYNQ_OK);
	atomic_store(&sleep_started, 0);
	close_job j = { fx.ch, ASYNQ_UNKNOWN, 0 };
	asynq_ticket *tk;
	assert_int_equal(asynq_runtime_submit(crt, 0, close_job_main, &j, &tk),
	    ASYNQ_OK);
	while (atomic_load(&sleep_started) < 10)
		usleep(1000);
	asynq_rpc_server_close(fx.srv);
	assert_int_equal(asynq_ticket_wait(tk), ASYNQ_OK);
	asynq_ticket_free(tk);
	assert_int_equal(j.st, ASYNQ_OK);
	assert_int_equal(j.sum, 10);
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(fx.ch, &cs);
	assert_int_equal(cs.failures, 0);
	asynq_runtime_free(crt);
	fx_stop(&fx);
}

static void
test_rpc_metadata_absent_outside_handler(void **state)
{
	(void)state;
	size_t len = 99;
	assert_null(asynq_rpc_metadata_get("tag", &len));
	assert_int_equal(asynq_rpc_deadline_get(), 0);
	asynq_thread_fini();
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rpc_batches_calls_inproc),
		cmocka_unit_test(test_rpc_batches_calls_tcp),
		cmocka_unit_test(test_rpc_mixed_methods),
		cmocka_unit_test(test_rpc_handler_error_reaches_caller),
		cmocka_unit_test(test_rpc_unknown_method_unimplemented),
		cmocka_unit_test(test_rpc_deadline_exceeded),
		cmocka_unit_test(test_rpc_malformed_request_then_serves),
		cmocka_unit_test(test_rpc_max_calls_limit),
		cmocka_unit_test(test_rpc_client_splits_at_max_calls),
		cmocka_unit_test(test_rpc_unreachable_unavailable),
		cmocka_unit_test(test_rpc_bad_url_invalid_argument),
		cmocka_unit_test(test_rpc_deep_nesting_rejected),
		cmocka_unit_test(test_rpc_close_answers_inflight),
		cmocka_unit_test(test_rpc_metadata_absent_outside_handler),
	};
	/* RPC_TEST_FILTER=test_rpc_deadline* runs a subset. */
	if (getenv("RPC_TEST_FILTER") != NULL)
		cmocka_set_test_filter(getenv("RPC_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
