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
#include "tests/rpc/rpc_fixture.h"

/* ---- Tests ----------------------------------------------------------------
 */

static void
check_thousand(int tcp)
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
	check_thousand(TRANSPORT_TCP);
}

static void
test_rpc_batches_calls_ipc(void **state)
{
	(void)state;
	check_thousand(TRANSPORT_IPC);
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
	fx_start(&fx, true, NULL, 0);
	raw_conn raw = raw_open(fx.url, 5000);
	static const uint8_t junk[] = { 0x0a, 0xff, 0xff, 0xff, 0x7f, 0x01 };
	uint8_t *buf = malloc(sizeof(junk));
	memcpy(buf, junk, sizeof(junk));
	Asynq__Rpc__Reply *rep;
	assert_int_equal(raw_call(&raw, buf, sizeof(junk), &rep), 0);
	assert_int_equal(rep->status, ASYNQ_INVALID_ARGUMENT);
	assert_int_equal(rep->n_results, 0);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	/* The same connection goes on serving. */
	const asynq_rpc_method_desc *twice[] = { M(TWICE) };
	size_t len;
	buf = raw_req(&len, twice, 1, 0, 0, 9, 0);
	assert_int_equal(raw_call(&raw, buf, len, &rep), 0);
	assert_int_equal(rep->status, ASYNQ_OK);
	assert_int_equal(rep->request_id, 9);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	raw_close(&raw);
	/* A peer that is not an asynq client is cut off. */
	raw = raw_connect(fx.url, 5000, false);
	assert_true(raw.fd >= 0);
	assert_int_equal(raw_write(&raw, "GET / HTTP/1.1\r\n\r\n", 18), 0);
	uint8_t b1;
	assert_int_equal(raw_read(&raw, &b1, 1), -1);
	raw_close(&raw);

	asynq_future *f = call_num(fx.ch, M(TWICE), 5);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(num_of(f), 10);
	asynq_future_rele(f);
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(fx.srv, &ss);
	assert_int_equal(ss.malformed, 2); /* the request and the peer */
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

/* A server's set-up failures say what failed and why. */
static void
test_rpc_server_setup_errors_in_words(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, true, NULL, 1);
	assert_string_equal(asynq_rpc_server_last_error(fx.srv), "");
	asynq_rpc_server *s2;
	assert_int_equal(asynq_rpc_server_alloc(&s2, fx.rt, NULL), ASYNQ_OK);
	/* A handler missing, or of the wrong kind. */
	asynq_rpc_handler h[16];
	assert_true(CALC->n_methods <= 16);
	memcpy(h, calc_handlers, sizeof(asynq_rpc_handler) * CALC->n_methods);
	h[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_FAIL].unary = NULL;
	assert_int_equal(asynq_rpc_server_add_service(s2, CALC, h, NULL),
	    ASYNQ_INVALID_ARGUMENT);
	assert_non_null(strstr(asynq_rpc_server_last_error(s2),
	    "method asynq.rpctest.Calc/Fail has no handler"));
	memcpy(h, calc_handlers, sizeof(asynq_rpc_handler) * CALC->n_methods);
	h[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_SUM].unary = h[0].unary;
	h[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_SUM].batch = NULL;
	assert_int_equal(asynq_rpc_server_add_service(s2, CALC, h, NULL),
	    ASYNQ_INVALID_ARGUMENT);
	assert_non_null(strstr(asynq_rpc_server_last_error(s2),
	    "is whole_batch but has a unary handler"));
	/* The address of the running server, a scheme, a malformed URL. */
	assert_int_equal(asynq_rpc_server_listen(s2, fx.url),
	    ASYNQ_UNAVAILABLE);
	char want[200];
	snprintf(want, sizeof(want), "listen %s: address in use", fx.url);
	assert_string_equal(asynq_rpc_server_last_error(s2), want);
	assert_int_equal(asynq_rpc_server_listen(s2, "nonsense://x"),
	    ASYNQ_INVALID_ARGUMENT);
	assert_non_null(strstr(asynq_rpc_server_last_error(s2),
	    "listen nonsense://x: not a scheme"));
	assert_int_equal(asynq_rpc_server_listen(s2, "tls+tcp://127.0.0.1:1"),
	    ASYNQ_INVALID_ARGUMENT);
	assert_non_null(
	    strstr(asynq_rpc_server_last_error(s2), "needs tls_cert_file"));
	asynq_rpc_server_free(s2);
	fx_stop(&fx);
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
	fx_start(&fx, true, NULL, 0);
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
	raw_conn raw = raw_open(fx.url, 5000);
	Asynq__Rpc__Reply *rep;
	assert_int_equal(raw_call(&raw, rbuf, rlen, &rep), 0);
	assert_int_equal(rep->status, 0);
	assert_int_equal(rep->n_results, 1);
	assert_int_equal(rep->results[0]->call_id, 3);
	assert_int_equal(rep->results[0]->status, ASYNQ_RESOURCE_EXHAUSTED);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	raw_close(&raw);
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

/* Status and value of the result for call_id in rep (INT64_MIN: none). */
static int32_t
rep_status(const Asynq__Rpc__Reply *rep, uint64_t call_id, int64_t *v)
{
	for (size_t i = 0; i < rep->n_results; i++) {
		const Asynq__Rpc__Result *r = rep->results[i];
		if (r->call_id != call_id)
			continue;
		if (v != NULL) {
			Asynq__Rpctest__Num *n = asynq__rpctest__num__unpack(
			    NULL, r->payload.len, r->payload.data);
			*v = n != NULL ? n->v : INT64_MIN;
			asynq__rpctest__num__free_unpacked(n, NULL);
		}
		return r->status;
	}
	return -1;
}

static uint64_t
server_dups(asynq_rpc_server *s)
{
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(s, &ss);
	return ss.duplicates;
}

/* ---- At most once ----------------------------------------------------------
 */

static void
test_rpc_dedup_table(void **state)
{
	(void)state;
	fixture fx;
	asynq_rpc_server_cfg scfg = { .dedup_entries = 2 };
	fx_server(&fx, true, &scfg, 2);
	atomic_store(&hold_runs, 0);
	atomic_store(&hold_release, 1);
	raw_conn raw = raw_open(fx.url, 5000);
	const asynq_rpc_method_desc *hold[] = { M(HOLD) };
	const asynq_rpc_method_desc *twice[] = { M(TWICE) };
	const asynq_rpc_method_desc *mixed[] = { M(HOLD), M(TWICE) };
	Asynq__Rpc__Reply *rep;
	size_t len;
	int64_t v;
	/* The first transmission runs. */
	uint8_t *b = raw_req(&len, hold, 1, 0, 7, 1, 0);
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep_status(rep, 0, &v), ASYNQ_OK);
	assert_int_equal(v, 6);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	assert_int_equal(atomic_load(&hold_runs), 1);
	/* A copy, and a resend, of a finished request get its reply. */
	for (uint32_t attempt = 0; attempt < 2; attempt++) {
		b = raw_req(&len, hold, 1, 0, 7, 1, attempt);
		assert_int_equal(raw_call(&raw, b, len, &rep), 0);
		assert_int_equal(rep_status(rep, 0, &v), ASYNQ_OK);
		assert_int_equal(v, 6);
		assert_int_equal(rep->request_id, 1);
		asynq__rpc__reply__free_unpacked(rep, NULL);
	}
	assert_int_equal(atomic_load(&hold_runs), 1);
	assert_int_equal(server_dups(fx.srv), 2);
	/* A resend the server never saw: not run, ABORTED. */
	b = raw_req(&len, hold, 1, 0, 7, 2, 1);
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep_status(rep, 0, NULL), ASYNQ_ABORTED);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	assert_int_equal(atomic_load(&hold_runs), 1);
	assert_int_equal(server_dups(fx.srv), 3);
	/* ... but its idempotent calls run. */
	b = raw_req(&len, mixed, 2, 0, 7, 3, 1);
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep_status(rep, 0, NULL), ASYNQ_ABORTED);
	assert_int_equal(rep_status(rep, 1, &v), ASYNQ_OK);
	assert_int_equal(v, 10);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	b = raw_req(&len, twice, 1, 0, 7, 4, 1);
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep_status(rep, 0, &v), ASYNQ_OK);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	assert_int_equal(atomic_load(&hold_runs), 1);
	/* Two more finished requests evict request 1 (dedup_entries = 2):
	 * its resend is ABORTED, never run again. */
	for (uint64_t id = 5; id <= 6; id++) {
		b = raw_req(&len, hold, 1, 0, 7, id, 0);
		assert_int_equal(raw_call(&raw, b, len, &rep), 0);
		assert_int_equal(rep_status(rep, 0, NULL), ASYNQ_OK);
		asynq__rpc__reply__free_unpacked(rep, NULL);
	}
	assert_int_equal(atomic_load(&hold_runs), 3);
	b = raw_req(&len, hold, 1, 0, 7, 1, 1);
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep_status(rep, 0, NULL), ASYNQ_ABORTED);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	/* Another client's request 1 is a different request. */
	b = raw_req(&len, hold, 1, 0, 8, 1, 0);
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep_status(rep, 0, NULL), ASYNQ_OK);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	assert_int_equal(atomic_load(&hold_runs), 4);
	raw_close(&raw);
	fx_stop(&fx);
}

/* Connects to url and reads the server's HELLO: its instance. */
static uint64_t
raw_instance(const char *url, raw_conn *out)
{
	*out = raw_connect(url, 5000, false);
	assert_true(out->fd >= 0);
	uint8_t pre[8], type, *body;
	size_t len;
	assert_int_equal(raw_write(out, "asynq/1\n", 8), 0);
	assert_int_equal(raw_read(out, pre, 8), 0);
	assert_int_equal(raw_next(out, &type, &body, &len), 0);
	assert_int_equal(type, 3);
	Asynq__Rpc__Hello *h = asynq__rpc__hello__unpack(NULL, len, body);
	free(body);
	assert_non_null(h);
	uint64_t inst = h->instance;
	asynq__rpc__hello__free_unpacked(h, NULL);
	assert_true(inst != 0);
	return inst;
}

/* A resend (attempt 1) of one Hold call, first sent to `instance`
 * ago_us ago. */
static uint8_t *
resend_req(size_t *len, uint64_t client_id, uint64_t id, uint64_t instance,
    uint64_t ago_us)
{
	const asynq_rpc_method_desc *hold[] = { M(HOLD) };
	uint8_t *b = raw_req(len, hold, 1, 0, client_id, id, 1);
	Asynq__Rpc__Request *r = asynq__rpc__request__unpack(NULL, *len, b);
	assert_non_null(r);
	free(b);
	r->first_instance = instance;
	r->first_sent_ago_us = ago_us;
	*len = asynq__rpc__request__get_packed_size(r);
	b = malloc(*len);
	asynq__rpc__request__pack(r, b);
	asynq__rpc__request__free_unpacked(r, NULL);
	return b;
}

/* A resend the server does not remember runs when it provably never
 * reached it: first sent to this very server process so recently that the
 * table would still remember it. Otherwise it stays ABORTED. */
static void
test_rpc_resend_proven_new_runs(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, true, NULL, 2);
	atomic_store(&hold_runs, 0);
	atomic_store(&hold_release, 1);
	raw_conn raw;
	uint64_t inst = raw_instance(fx.url, &raw);
	Asynq__Rpc__Reply *rep;
	size_t len;
	int64_t v;
	/* First sent here 1 ms ago, never arrived: it runs, once. */
	for (int copy = 0; copy < 2; copy++) {
		uint8_t *b = resend_req(&len, 7, 1, inst, 1000);
		assert_int_equal(raw_call(&raw, b, len, &rep), 0);
		assert_int_equal(rep_status(rep, 0, &v), ASYNQ_OK);
		assert_int_equal(v, 6);
		asynq__rpc__reply__free_unpacked(rep, NULL);
		assert_int_equal(atomic_load(&hold_runs), 1);
	}
	/* First sent to another server process (one since restarted, say):
	 * it may have run there. */
	uint8_t *b = resend_req(&len, 7, 2, inst ^ 2, 1000);
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep_status(rep, 0, NULL), ASYNQ_ABORTED);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	/* First sent longer ago than the table remembers (60 s, less a
	 * second of margin): it may have run and been forgotten. */
	b = resend_req(&len, 7, 3, inst, 59500000);
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep_status(rep, 0, NULL), ASYNQ_ABORTED);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	assert_int_equal(atomic_load(&hold_runs), 1);
	raw_close(&raw);
	fx_stop(&fx);
	/* A table that forgot a request early (dedup_entries = 1) cannot
	 * vouch for the time since. */
	asynq_rpc_server_cfg scfg = { .dedup_entries = 1 };
	fx_server(&fx, true, &scfg, 2);
	atomic_store(&hold_runs, 0);
	inst = raw_instance(fx.url, &raw);
	const asynq_rpc_method_desc *hold[] = { M(HOLD) };
	for (uint64_t id = 1; id <= 3; id++) {
		b = raw_req(&len, hold, 1, 0, 9, id, 0);
		assert_int_equal(raw_call(&raw, b, len, &rep), 0);
		assert_int_equal(rep_status(rep, 0, NULL), ASYNQ_OK);
		asynq__rpc__reply__free_unpacked(rep, NULL);
	}
	b = resend_req(&len, 9, 4, inst, 1000);
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep_status(rep, 0, NULL), ASYNQ_ABORTED);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	assert_int_equal(atomic_load(&hold_runs), 3);
	raw_close(&raw);
	fx_stop(&fx);
}

/* A TCP proxy whose connections the test can cut, as a network would. */
typedef struct proxy {
	int lfd, port, up_port;
	pthread_t th;
	atomic_bool stop, drop;
	atomic_int accepted;
} proxy;

static int
write_all(int fd, const char *p, size_t n)
{
	while (n > 0) {
		ssize_t k = write(fd, p, n);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static void *
proxy_main(void *arg)
{
	proxy *px = arg;
	enum { MAXFD = 16 };
	int fds[MAXFD]; /* pairs: client, upstream */
	size_t n = 0;
	static _Thread_local char buf[65536];
	while (!atomic_load(&px->stop)) {
		if (atomic_exchange(&px->drop, false)) {
			for (size_t i = 0; i < n; i++)
				close(fds[i]);
			n = 0;
		}
		struct pollfd pf[1 + MAXFD];
		pf[0] = (struct pollfd){ .fd = px->lfd, .events = POLLIN };
		for (size_t i = 0; i < n; i++)
			pf[1 + i] =
			    (struct pollfd){ .fd = fds[i], .events = POLLIN };
		size_t polled = n;
		if (poll(pf, 1 + polled, 5) <= 0)
			continue;
		for (size_t i = 0; i < polled; i++) {
			if (fds[i] < 0 || (pf[1 + i].revents == 0))
				continue;
			ssize_t k = read(fds[i], buf, sizeof(buf));
			if (k <= 0 ||
			    write_all(fds[i ^ 1], buf, (size_t)k) != 0) {
				close(fds[i & ~(size_t)1]);
				close(fds[i | 1]);
				fds[i & ~(size_t)1] = fds[i | 1] = -1;
			}
		}
		size_t m = 0;
		for (size_t i = 0; i < n; i++)
			if (fds[i] >= 0)
				fds[m++] = fds[i];
		n = m;
		if (pf[0].revents & POLLIN) {
			int c = accept(px->lfd, NULL, NULL);
			if (c < 0)
				continue;
			int u = socket(AF_INET, SOCK_STREAM, 0);
			struct sockaddr_in a = { .sin_family = AF_INET };
			a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
			a.sin_port = htons((uint16_t)px->up_port);
			if (n + 2 > MAXFD || u < 0 ||
			    connect(u, (struct sockaddr *)&a, sizeof(a)) != 0) {
				close(c);
				if (u >= 0)
					close(u);
				continue;
			}
			fds[n++] = c;
			fds[n++] = u;
			atomic_fetch_add(&px->accepted, 1);
		}
	}
	for (size_t i = 0; i < n; i++)
		close(fds[i]);
	return NULL;
}

static int
url_port(const char *url)
{
	const char *colon = strrchr(url, ':');
	return colon != NULL ? atoi(colon + 1) : -1;
}

static void
proxy_start(proxy *px, int up_port)
{
	memset(px, 0, sizeof(*px));
	px->up_port = up_port;
	px->lfd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(px->lfd >= 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t alen = sizeof(a);
	assert_int_equal(bind(px->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(px->lfd, 16), 0);
	assert_int_equal(getsockname(px->lfd, (struct sockaddr *)&a, &alen), 0);
	px->port = ntohs(a.sin_port);
	assert_int_equal(pthread_create(&px->th, NULL, proxy_main, px), 0);
}

static void
proxy_stop(proxy *px)
{
	atomic_store(&px->stop, true);
	pthread_join(px->th, NULL);
	close(px->lfd);
}

/* Waits up to ms for *v >= want. */
static bool
wait_atomic(atomic_int *v, int want, int ms)
{
	for (int i = 0; i < ms && atomic_load(v) < want; i++)
		usleep(1000);
	return atomic_load(v) >= want;
}

typedef struct dropper {
	proxy *px;
	asynq_rpc_server *srv;
	bool saw_run, saw_dup;
} dropper;

/* Cuts the connection while Hold runs, waits for the resent copy to reach
 * the server, then lets Hold finish. */
static void *
dropper_main(void *arg)
{
	dropper *d = arg;
	d->saw_run = wait_atomic(&hold_runs, 1, 20000);
	atomic_store(&d->px->drop, true);
	for (int i = 0; i < 20000 && server_dups(d->srv) < 1; i++)
		usleep(1000);
	d->saw_dup = server_dups(d->srv) >= 1;
	atomic_store(&hold_release, 1);
	return NULL;
}

static void
test_rpc_resend_after_lost_connection_runs_once(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, true, NULL, 2);
	proxy px;
	proxy_start(&px, url_port(fx.url));
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", px.port);
	const char *urls[] = { url };
	asynq_rpc_channel_cfg ccfg = {
		.urls = urls,
		.n_urls = 1,
		.default_deadline_ms = 30000,
	};
	assert_int_equal(asynq_rpc_channel_alloc(&fx.ch, CALC, &ccfg),
	    ASYNQ_OK);
	asynq_future *w = call_num(fx.ch, M(TWICE), 1);
	assert_int_equal(asynq_wait(w), ASYNQ_OK);
	asynq_future_rele(w);

	atomic_store(&hold_runs, 0);
	atomic_store(&hold_release, 0);
	dropper d = { &px, fx.srv, false, false };
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, dropper_main, &d), 0);
	asynq_future *f = call_num(fx.ch, M(HOLD), 5);
	asynq_status st = asynq_wait(f);
	pthread_join(th, NULL);
	assert_true(d.saw_run);
	assert_true(d.saw_dup);
	assert_int_equal(st, ASYNQ_OK);
	assert_int_equal(num_of(f), 6);
	asynq_future_rele(f);
	assert_int_equal(atomic_load(&hold_runs), 1);
	assert_true(atomic_load(&px.accepted) >= 2);
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(fx.ch, &cs);
	assert_true(cs.resends >= 1);
	assert_int_equal(cs.failures, 0);
	assert_true(server_dups(fx.srv) >= 1);
	fx_stop(&fx);
	proxy_stop(&px);
}

/* ---- A server in another process ------------------------------------------
 */

/* The --serve mode of this binary: a Calc server on argv[2] that writes 'R'
 * to fd 3 once listening and 'S' whenever Sleep starts; runs until killed. */
static int
serve_main(const char *url)
{
	notify_fd = 3;
	asynq_runtime *rt;
	asynq_runtime_cfg rcfg = { .workers = 2 };
	asynq_rpc_server *srv;
	if (asynq_runtime_alloc(&rt, &rcfg) != ASYNQ_OK ||
	    asynq_rpc_server_alloc(&srv, rt, NULL) != ASYNQ_OK ||
	    asynq_rpc_server_add_service(srv, CALC, calc_handlers, NULL) !=
	        ASYNQ_OK)
		return 2;
	for (int i = 0; asynq_rpc_server_listen(srv, url) != ASYNQ_OK; i++) {
		if (i == 100)
			return 3;
		usleep(50000);
	}
	notify('R');
	for (;;)
		pause();
}

/* Starts `self --serve url`; *rfd reads its notifications. */
static pid_t
child_start(const char *url, int *rfd)
{
	int p[2];
	assert_int_equal(pipe(p), 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, p[1], 3);
	char *argv[] = { (char *)self_exe, "--serve", (char *)url, NULL };
	extern char **environ;
	pid_t pid;
	assert_int_equal(posix_spawn(&pid, self_exe, &fa, NULL, argv, environ),
	    0);
	posix_spawn_file_actions_destroy(&fa);
	close(p[1]);
	*rfd = p[0];
	return pid;
}

/* Reads n bytes equal to c from fd within ms. */
static bool
child_expect(int fd, char c, int n, int ms)
{
	uint64_t t0 = asynq_now_ns();
	while (n > 0) {
		int left = ms - (int)ms_since(t0);
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		if (left <= 0 || poll(&pf, 1, left) <= 0)
			return false;
		char got;
		if (read(fd, &got, 1) != 1)
			return false;
		if (got == c)
			n--;
	}
	return true;
}

typedef struct killed_job {
	asynq_rpc_channel *ch;
	asynq_status st[5];
	int64_t ms;
} killed_job;

static asynq_status
killed_job_main(asynq_task *t, void *arg)
{
	killed_job *j = arg;
	asynq_future *f[5];
	uint64_t t0 = asynq_now_ns();
	for (size_t i = 0; i < 5; i++)
		f[i] = call_num(j->ch, M(SLEEP), 60000);
	(void)asynq_await_all(t, f, 5);
	j->ms = ms_since(t0);
	for (size_t i = 0; i < 5; i++)
		j->st[i] = asynq_future_status(f[i]);
	asynq_future_rele_n(f, 5);
	return ASYNQ_OK;
}

static void
test_rpc_server_killed_then_restarted(void **state)
{
	(void)state;
	char url[64];
	url_make(url, sizeof(url), true);
	int rfd;
	pid_t pid = child_start(url, &rfd);
	assert_true(child_expect(rfd, 'R', 1, 20000));
	const char *urls[] = { url };
	asynq_rpc_channel_cfg ccfg = {
		.urls = urls,
		.n_urls = 1,
		.default_deadline_ms = 3000,
	};
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &ccfg), ASYNQ_OK);
	asynq_runtime *crt;
	asynq_runtime_cfg rcfg = { .workers = 1 };
	assert_int_equal(asynq_runtime_alloc(&crt, &rcfg), ASYNQ_OK);
	killed_job j = { .ch = ch };
	asynq_ticket *tk;
	assert_int_equal(asynq_runtime_submit(crt, 0, killed_job_main, &j, &tk),
	    ASYNQ_OK);
	/* Every call is running in the child: kill it mid-batch. */
	bool started = child_expect(rfd, 'S', 5, 20000);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(rfd);
	assert_true(started);
	assert_int_equal(asynq_ticket_wait(tk), ASYNQ_OK);
	asynq_ticket_free(tk);
	for (size_t i = 0; i < 5; i++)
		assert_true(j.st[i] == ASYNQ_UNAVAILABLE ||
		    j.st[i] == ASYNQ_DEADLINE_EXCEEDED);
	/* Within the deadline (3 s), plus scheduling slack. */
	assert_true(j.ms < 3000 + 2000);
	asynq_runtime_free(crt);

	/* A new server on the same address: the same channel works again. */
	pid = child_start(url, &rfd);
	bool ready = child_expect(rfd, 'R', 1, 20000);
	if (ready) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		int64_t dl = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec +
		    (int64_t)20000 * 1000000;
		assert_int_equal(asynq_scoped_push(&asynq_rpc_deadline,
		                     (void *)(intptr_t)dl),
		    ASYNQ_OK);
		asynq_future *f[3];
		for (size_t i = 0; i < 3; i++)
			f[i] = call_num(ch, M(TWICE), 20 + (int64_t)i);
		assert_int_equal(asynq_scoped_pop(&asynq_rpc_deadline),
		    ASYNQ_OK);
		asynq_status st = asynq_wait_all(f, 3);
		int64_t v0 = num_of(f[0]), v2 = num_of(f[2]);
		asynq_future_rele_n(f, 3);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		close(rfd);
		assert_int_equal(st, ASYNQ_OK);
		assert_int_equal(v0, 40);
		assert_int_equal(v2, 44);
	} else {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		close(rfd);
	}
	assert_true(ready);
	asynq_rpc_channel_free(ch);
	asynq_thread_fini();
}

/* ---- Replicas --------------------------------------------------------------
 */

static uint64_t
server_requests(asynq_rpc_server *s)
{
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(s, &ss);
	return ss.requests;
}

/* Makes n calls one request at a time; returns how many succeeded. */
static int
one_by_one(asynq_rpc_channel *ch, int n)
{
	int ok = 0;
	for (int i = 0; i < n; i++) {
		asynq_future *f = call_num(ch, M(TWICE), i);
		if (asynq_wait(f) == ASYNQ_OK && num_of(f) == 2 * i)
			ok++;
		asynq_future_rele(f);
	}
	return ok;
}

static void
test_rpc_replicas_share_requests(void **state)
{
	(void)state;
	fixture a, b;
	fx_server(&a, true, NULL, 2);
	fx_server(&b, true, NULL, 2);
	const char *urls[] = { a.url, b.url };
	asynq_rpc_channel_cfg ccfg = { .urls = urls, .n_urls = 2 };
	assert_int_equal(asynq_rpc_channel_alloc(&a.ch, CALC, &ccfg), ASYNQ_OK);
	assert_int_equal(one_by_one(a.ch, 200), 200);
	uint64_t ra = server_requests(a.srv), rb = server_requests(b.srv);
	assert_true(ra > 0);
	assert_true(rb > 0);
	assert_int_equal(ra + rb, 200);
	/* One replica down: the other answers everything. */
	asynq_rpc_server_close(b.srv);
	assert_int_equal(one_by_one(a.ch, 50), 50);
	assert_int_equal(server_requests(b.srv), rb);
	assert_int_equal(server_requests(a.srv), ra + 50);

	/* A replica that never came up does not hold calls back. */
	char down[64];
	url_make(down, sizeof(down), true);
	const char *urls2[] = { down, a.url };
	asynq_rpc_channel_cfg ccfg2 = {
		.urls = urls2,
		.n_urls = 2,
		.default_deadline_ms = 5000,
	};
	asynq_rpc_channel *ch2;
	assert_int_equal(asynq_rpc_channel_alloc(&ch2, CALC, &ccfg2), ASYNQ_OK);
	assert_int_equal(one_by_one(ch2, 20), 20);
	asynq_rpc_channel_free(ch2);
	fx_stop(&b);
	fx_stop(&a);
}

/* ---- Limits ----------------------------------------------------------------
 */

/* Exact size of the Request the channel sends for one Twice call with
 * s = `pad` bytes, as its first request (request_id 1) with 30 s left. */
static size_t
request_size(size_t pad, int64_t dl)
{
	char *s = malloc(pad + 1);
	memset(s, 'y', pad);
	s[pad] = '\0';
	Asynq__Rpctest__Num num = ASYNQ__RPCTEST__NUM__INIT;
	num.v = 3;
	num.s = s;
	size_t plen = asynq__rpctest__num__get_packed_size(&num);
	uint8_t *payload = malloc(plen);
	asynq__rpctest__num__pack(&num, payload);
	Asynq__Rpc__Call c = ASYNQ__RPC__CALL__INIT, *cp = &c;
	c.method_id = 1 + ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_TWICE;
	c.payload.data = payload;
	c.payload.len = plen;
	Asynq__Rpc__Request req = ASYNQ__RPC__REQUEST__INIT;
	req.n_calls = 1;
	req.calls = &cp;
	(void)dl;
	req.timeout_us = 29000000; /* as long a varint as 30 s */
	req.request_id = 1;
	req.client_id = 1; /* fixed64: any non-zero id has this size */
	size_t n = asynq__rpc__request__get_packed_size(&req);
	free(payload);
	free(s);
	return n;
}

static void
test_rpc_client_max_msg_bytes(void **state)
{
	(void)state;
	enum { LIMIT = 1000 };
	fixture fx;
	fx_server(&fx, false, NULL, 2);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t dl = (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec +
	    (int64_t)30000 * 1000000;
	const char *urls[] = { fx.url };
	asynq_rpc_channel_cfg ccfg = {
		.urls = urls,
		.n_urls = 1,
		.max_msg_bytes = LIMIT,
	};
	for (int d = -1; d <= 1; d++) {
		size_t want = (size_t)(LIMIT + d), pad = 0;
		while (pad < LIMIT && request_size(pad, dl) < want)
			pad++;
		assert_int_equal(request_size(pad, dl), want);
		asynq_rpc_channel *ch;
		assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &ccfg),
		    ASYNQ_OK);
		char *s = malloc(pad + 1);
		memset(s, 'y', pad);
		s[pad] = '\0';
		Asynq__Rpctest__Num n = ASYNQ__RPCTEST__NUM__INIT;
		n.v = 3;
		n.s = s;
		assert_int_equal(asynq_scoped_push(&asynq_rpc_deadline,
		                     (void *)(intptr_t)dl),
		    ASYNQ_OK);
		asynq_future *f = asynq_rpc_call(ch, M(TWICE), &n.base);
		assert_int_equal(asynq_scoped_pop(&asynq_rpc_deadline),
		    ASYNQ_OK);
		free(s);
		asynq_status st = asynq_wait(f);
		asynq_rpc_channel_stats cs;
		asynq_rpc_channel_stats_get(ch, &cs);
		if (d <= 0) {
			assert_int_equal(st, ASYNQ_OK);
			assert_int_equal(num_of(f), 6);
			assert_int_equal(cs.requests, 1);
		} else {
			assert_int_equal(st, ASYNQ_RESOURCE_EXHAUSTED);
			assert_int_equal(cs.requests, 0); /* never sent */
		}
		asynq_future_rele(f);
		asynq_rpc_channel_free(ch);
	}
	/* A batch too big for one request is split to fit. */
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &ccfg), ASYNQ_OK);
	char s[301];
	memset(s, 'z', 300);
	s[300] = '\0';
	asynq_future *f[6];
	for (size_t i = 0; i < 6; i++) {
		Asynq__Rpctest__Num n = ASYNQ__RPCTEST__NUM__INIT;
		n.v = (int64_t)i;
		n.s = s;
		f[i] = asynq_rpc_call(ch, M(TWICE), &n.base);
	}
	assert_int_equal(asynq_wait_all(f, 6), ASYNQ_OK);
	for (size_t i = 0; i < 6; i++)
		assert_int_equal(num_of(f[i]), 2 * (int64_t)i);
	asynq_future_rele_n(f, 6);
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(ch, &cs);
	assert_true(cs.requests >= 2);
	asynq_rpc_channel_free(ch);
	fx_stop(&fx);
}

static void
test_rpc_server_max_msg_bytes(void **state)
{
	(void)state;
	enum { LIMIT = 1000 };
	fixture fx;
	asynq_rpc_server_cfg scfg = { .max_msg_bytes = LIMIT };
	fx_start(&fx, true, &scfg, 0);
	const asynq_rpc_method_desc *twice[] = { M(TWICE) };
	for (int d = -1; d <= 1; d++) {
		size_t want = (size_t)(LIMIT + d), pad = 0, len = 0;
		uint8_t *b = NULL;
		for (;; pad++) {
			free(b);
			b = raw_req(&len, twice, 1, pad, 0, 1, 0);
			if (len >= want)
				break;
		}
		assert_int_equal(len, want);
		raw_conn raw = raw_open(fx.url, 5000);
		Asynq__Rpc__Reply *rep;
		assert_int_equal(raw_call(&raw, b, len, &rep), 0);
		if (d <= 0) {
			assert_int_equal(rep->status, ASYNQ_OK);
			assert_int_equal(rep_status(rep, 0, NULL), ASYNQ_OK);
		} else {
			assert_int_equal(rep->status, ASYNQ_RESOURCE_EXHAUSTED);
		}
		asynq__rpc__reply__free_unpacked(rep, NULL);
		raw_close(&raw);
	}
	/* Over the limit but within 64 KiB of it: read, and answered. */
	size_t len;
	uint8_t *b = raw_req(&len, twice, 1, 4 * LIMIT, 0, 1, 0);
	raw_conn raw = raw_open(fx.url, 5000);
	Asynq__Rpc__Reply *rep;
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep->status, ASYNQ_RESOURCE_EXHAUSTED);
	assert_int_equal(rep->request_id, 1);
	assert_non_null(strstr(rep->message, "limit 1000"));
	asynq__rpc__reply__free_unpacked(rep, NULL);
	/* Further over: the connection is closed, nothing is read. */
	b = raw_req(&len, twice, 1, LIMIT + (64u << 10) + 1, 0, 2, 0);
	assert_int_not_equal(raw_call(&raw, b, len, &rep), 0);
	raw_close(&raw);
	/* The server keeps serving. */
	asynq_future *f = call_num(fx.ch, M(TWICE), 8);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(num_of(f), 16);
	asynq_future_rele(f);
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(fx.srv, &ss);
	assert_int_equal(ss.rejected, 3);
	fx_stop(&fx);
}

typedef struct inflight_job {
	asynq_rpc_channel *ch;
	size_t k;
	bool held;
	asynq_status st;
	int64_t sum;
} inflight_job;

/* Once the six Hold calls run, makes k Twice calls as a second request. */
static asynq_status
inflight_job_main(asynq_task *t, void *arg)
{
	inflight_job *j = arg;
	uint64_t t0 = asynq_now_ns();
	while (atomic_load(&hold_runs) < 6 && ms_since(t0) < 20000) {
		asynq_future *s = asynq_sleep(2000000);
		(void)asynq_await(t, s);
		asynq_future_rele(s);
	}
	j->held = atomic_load(&hold_runs) == 6;
	asynq_future *f[8];
	/* Distinct calls: identical ones would go as one. */
	for (size_t i = 0; i < j->k; i++)
		f[i] = call_num(j->ch, M(TWICE), (int64_t)i + 1);
	j->st = asynq_await_all(t, f, j->k);
	for (size_t i = 0; i < j->k && j->st == ASYNQ_OK; i++)
		j->sum += num_of(f[i]);
	asynq_future_rele_n(f, j->k);
	atomic_store(&hold_release, 1);
	return ASYNQ_OK;
}

static void
check_inflight(size_t k, asynq_status want)
{
	fixture fx;
	asynq_rpc_server_cfg scfg = { .max_inflight_calls = 10 };
	fx_server(&fx, false, &scfg, 1);
	const char *urls[] = { fx.url };
	asynq_rpc_channel_cfg ccfg = { .urls = urls, .n_urls = 1 };
	assert_int_equal(asynq_rpc_channel_alloc(&fx.ch, CALC, &ccfg),
	    ASYNQ_OK);
	atomic_store(&hold_runs, 0);
	atomic_store(&hold_release, 0);
	asynq_future *h[6];
	for (size_t i = 0; i < 6; i++)
		h[i] = call_num(fx.ch, M(HOLD), (int64_t)i);
	inflight_job j = { fx.ch, k, false, ASYNQ_UNKNOWN, 0 };
	asynq_future *jf = asynq_spawn(inflight_job_main, &j);
	assert_int_equal(asynq_wait(jf), ASYNQ_OK);
	asynq_future_rele(jf);
	assert_int_equal(asynq_wait_all(h, 6), ASYNQ_OK);
	for (size_t i = 0; i < 6; i++)
		assert_int_equal(num_of(h[i]), (int64_t)i + 1);
	asynq_future_rele_n(h, 6);
	assert_true(j.held);
	assert_int_equal(j.st, want);
	if (want == ASYNQ_OK)
		assert_int_equal(j.sum, (int64_t)(k * (k + 1)));
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(fx.srv, &ss);
	assert_int_equal(ss.rejected, want == ASYNQ_OK ? 0 : 1);
	fx_stop(&fx);
}

static void
test_rpc_max_inflight_calls_limit(void **state)
{
	(void)state;
	check_inflight(3, ASYNQ_OK);                 /* 9 in flight */
	check_inflight(4, ASYNQ_OK);                 /* 10 */
	check_inflight(5, ASYNQ_RESOURCE_EXHAUSTED); /* 11 */
}

/* ---- Metadata --------------------------------------------------------------
 */

typedef struct md_job {
	asynq_rpc_channel *ch;
	const char *tag;
	asynq_future *f;
} md_job;

static asynq_status
md_job_main(asynq_task *t, void *arg)
{
	md_job *j = arg;
	ASYNQ_TRY(asynq_rpc_metadata_push("tag", j->tag, strlen(j->tag)));
	j->f = call_num(j->ch, M(TWICE), 1);
	ASYNQ_TRY(asynq_rpc_metadata_pop());
	return asynq_await(t, j->f);
}

static const char *
reply_s(asynq_future *f)
{
	const Asynq__Rpctest__Num *n = asynq_future_ptr(f);
	return n != NULL && n->s != NULL && n->s[0] != '\0' ? n->s : "(none)";
}

static void
test_rpc_metadata_from_client(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, false, NULL, 0);
	/* On the thread: every call made while pushed carries it; an inner
	 * push shadows an outer one. */
	assert_int_equal(asynq_rpc_metadata_pop(), ASYNQ_FAILED_PRECONDITION);
	assert_int_equal(asynq_rpc_metadata_push(NULL, "x", 1),
	    ASYNQ_INVALID_ARGUMENT);
	assert_int_equal(asynq_rpc_metadata_push("tag", "outer", 5), ASYNQ_OK);
	asynq_future *f[4];
	f[0] = call_num(fx.ch, M(TWICE), 1);
	assert_int_equal(asynq_rpc_metadata_push("tag", "inner", 5), ASYNQ_OK);
	f[1] = call_num(fx.ch, M(TWICE), 1);
	assert_int_equal(asynq_rpc_metadata_pop(), ASYNQ_OK);
	f[2] = call_num(fx.ch, M(TWICE), 1);
	assert_int_equal(asynq_rpc_metadata_pop(), ASYNQ_OK);
	f[3] = call_num(fx.ch, M(TWICE), 1);
	assert_int_equal(asynq_wait_all(f, 4), ASYNQ_OK);
	assert_string_equal(reply_s(f[0]), "outer");
	assert_string_equal(reply_s(f[1]), "inner");
	assert_string_equal(reply_s(f[2]), "outer");
	assert_string_equal(reply_s(f[3]), "(none)");
	asynq_future_rele_n(f, 4);
	/* Tasks with different metadata still share one request. */
	asynq_rpc_channel_stats cs0, cs1;
	asynq_rpc_channel_stats_get(fx.ch, &cs0);
	md_job j[3] = { { fx.ch, "alpha", NULL }, { fx.ch, "beta", NULL },
		{ fx.ch, "gamma", NULL } };
	asynq_future *t[3];
	for (size_t i = 0; i < 3; i++)
		t[i] = asynq_spawn(md_job_main, &j[i]);
	assert_int_equal(asynq_wait_all(t, 3), ASYNQ_OK);
	asynq_future_rele_n(t, 3);
	asynq_rpc_channel_stats_get(fx.ch, &cs1);
	assert_int_equal(cs1.requests - cs0.requests, 1);
	for (size_t i = 0; i < 3; i++) {
		assert_string_equal(reply_s(j[i].f), j[i].tag);
		asynq_future_rele(j[i].f);
	}
	/* Binary values with NULs arrive intact. */
	static const char bin[] = { 'a', 0, 'b' };
	assert_int_equal(asynq_rpc_metadata_push("tag", bin, 3), ASYNQ_OK);
	asynq_future *g = call_num(fx.ch, M(TWICE), 1);
	assert_int_equal(asynq_rpc_metadata_pop(), ASYNQ_OK);
	assert_int_equal(asynq_wait(g), ASYNQ_OK);
	assert_string_equal(reply_s(g), "a"); /* strndup stops at the NUL */
	asynq_future_rele(g);
	fx_stop(&fx);
}

/* ---- TLS -------------------------------------------------------------------
 */

static int
sh(const char *dir, const char *cmd)
{
	char buf[2048];
	snprintf(buf, sizeof(buf), "cd '%s' && %s >/dev/null 2>&1", dir, cmd);
	return system(buf);
}

static void
test_rpc_tls_with_certificate_files(void **state)
{
	(void)state;
	if (access("/usr/bin/openssl", X_OK) != 0) {
		skip();
		return;
	}
	const char *tmp = getenv("TEST_TMPDIR");
	char dir[512];
	snprintf(dir, sizeof(dir), "%s/asynq-tls-XXXXXX",
	    tmp != NULL ? tmp : "/tmp");
	assert_non_null(mkdtemp(dir));
	char cmd[1024];
	const char *ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
	                 "-nodes -days 2";
	snprintf(cmd, sizeof(cmd),
	    "openssl req -x509 %s -keyout ca.key -out ca.crt "
	    "-subj /CN=asynq-test-ca",
	    ec);
	assert_int_equal(sh(dir, cmd), 0);
	snprintf(cmd, sizeof(cmd),
	    "openssl req -x509 %s -keyout other.key -out other.crt "
	    "-subj /CN=asynq-other-ca",
	    ec);
	assert_int_equal(sh(dir, cmd), 0);
	snprintf(cmd, sizeof(cmd),
	    "openssl req %s -keyout srv.key -out srv.csr -subj /CN=localhost",
	    ec);
	assert_int_equal(sh(dir, cmd), 0);
	assert_int_equal(sh(dir,
	                     "printf 'subjectAltName=DNS:localhost,"
	                     "IP:127.0.0.1\\n' > ext.cnf && "
	                     "openssl x509 -req -in srv.csr -CA ca.crt "
	                     "-CAkey ca.key -CAcreateserial -out srv.crt "
	                     "-days 2 -extfile ext.cnf"),
	    0);
	char cert[600], key[600], ca[600], other[600];
	snprintf(cert, sizeof(cert), "%s/srv.crt", dir);
	snprintf(key, sizeof(key), "%s/srv.key", dir);
	snprintf(ca, sizeof(ca), "%s/ca.crt", dir);
	snprintf(other, sizeof(other), "%s/other.crt", dir);

	/* Files that cannot be used. */
	asynq_runtime *rt;
	asynq_runtime_cfg rcfg = { .workers = 2 };
	assert_int_equal(asynq_runtime_alloc(&rt, &rcfg), ASYNQ_OK);
	asynq_rpc_server *srv;
	asynq_rpc_server_cfg bad = { .tls_cert_file = "/nonexistent",
		.tls_key_file = key };
	assert_int_equal(asynq_rpc_server_alloc(&srv, rt, &bad),
	    ASYNQ_INVALID_ARGUMENT);
	bad.tls_cert_file = cert;
	bad.tls_key_file = NULL;
	assert_int_equal(asynq_rpc_server_alloc(&srv, rt, &bad),
	    ASYNQ_INVALID_ARGUMENT);

	asynq_rpc_server_cfg scfg = { .tls_cert_file = cert,
		.tls_key_file = key };
	assert_int_equal(asynq_rpc_server_alloc(&srv, rt, &scfg), ASYNQ_OK);
	assert_int_equal(
	    asynq_rpc_server_add_service(srv, CALC, calc_handlers, NULL),
	    ASYNQ_OK);
	char url[64];
	snprintf(url, sizeof(url), "tls+tcp://127.0.0.1:%d", free_port());
	assert_int_equal(asynq_rpc_server_listen(srv, url), ASYNQ_OK);
	const char *urls[] = { url };
	asynq_rpc_channel_cfg ccfg = {
		.urls = urls,
		.n_urls = 1,
		.tls_ca_file = ca,
		.tls_server_name = "localhost",
	};
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &ccfg), ASYNQ_OK);
	asynq_future *f[20];
	for (size_t i = 0; i < 20; i++)
		f[i] = call_num(ch, M(TWICE), (int64_t)i);
	assert_int_equal(asynq_wait_all(f, 20), ASYNQ_OK);
	for (size_t i = 0; i < 20; i++)
		assert_int_equal(num_of(f[i]), 2 * (int64_t)i);
	asynq_future_rele_n(f, 20);
	asynq_rpc_channel_free(ch);

	/* A client that trusts another CA never connects. */
	ccfg.tls_ca_file = other;
	ccfg.default_deadline_ms = 1000;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &ccfg), ASYNQ_OK);
	asynq_future *g = call_num(ch, M(TWICE), 1);
	assert_int_equal(asynq_wait(g), ASYNQ_UNAVAILABLE);
	asynq_future_rele(g);
	asynq_rpc_channel_free(ch);
	/* Nor does one that expects another name. */
	ccfg.tls_ca_file = ca;
	ccfg.tls_server_name = "not-this-server";
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &ccfg), ASYNQ_OK);
	g = call_num(ch, M(TWICE), 1);
	assert_int_equal(asynq_wait(g), ASYNQ_UNAVAILABLE);
	asynq_future_rele(g);
	asynq_rpc_channel_free(ch);

	asynq_rpc_server_free(srv);
	asynq_runtime_free(rt);
	asynq_thread_fini();
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
}

/* ---- The stream transport ---------------------------------------------------
 */

/* A server that is not there: calls fail UNAVAILABLE at once, not at their
 * deadline, also after the first attempt (later calls start the next
 * attempt instead of waiting out the backoff). */
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
		.default_deadline_ms = 20000,
	};
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &ccfg), ASYNQ_OK);
	for (int i = 0; i < 3; i++) {
		uint64_t t0 = asynq_now_ns();
		asynq_future *f = call_num(ch, M(TWICE), 1);
		assert_int_equal(asynq_wait(f), ASYNQ_UNAVAILABLE);
		assert_true(ms_since(t0) < 2000); /* the deadline is 20 s */
		assert_non_null(
		    strstr(asynq_error_message(asynq_future_error(f)),
		        "no server reachable"));
		assert_non_null(
		    strstr(asynq_error_message(asynq_future_error(f)),
		        "connection refused")); /* ...and why */
		asynq_future_rele(f);
	}
	asynq_rpc_channel_free(ch);
	asynq_thread_fini();
}

typedef struct late_server {
	fixture *fx;
	const char *url;
	int delay_ms;
} late_server;

static void *
late_server_main(void *arg)
{
	late_server *ls = arg;
	struct timespec ts = { ls->delay_ms / 1000,
		(long)(ls->delay_ms % 1000) * 1000000 };
	nanosleep(&ts, NULL);
	assert_int_equal(asynq_rpc_server_listen(ls->fx->srv, ls->url),
	    ASYNQ_OK);
	return NULL;
}

/* wait_for_ready: a call made before its server listens waits for it and
 * succeeds; the first attempt failed, the next one (after the backoff)
 * connects. */
static void
test_rpc_wait_for_ready(void **state)
{
	(void)state;
	fixture fx;
	memset(&fx, 0, sizeof(fx));
	asynq_runtime_cfg rcfg = { .workers = 1 };
	assert_int_equal(asynq_runtime_alloc(&fx.rt, &rcfg), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_alloc(&fx.srv, fx.rt, NULL),
	    ASYNQ_OK);
	assert_int_equal(
	    asynq_rpc_server_add_service(fx.srv, CALC, calc_handlers, NULL),
	    ASYNQ_OK);
	url_make(fx.url, sizeof(fx.url), true);
	const char *urls[] = { fx.url };
	asynq_rpc_channel_cfg ccfg = {
		.urls = urls,
		.n_urls = 1,
		.default_deadline_ms = 10000,
		.wait_for_ready = true,
	};
	assert_int_equal(asynq_rpc_channel_alloc(&fx.ch, CALC, &ccfg),
	    ASYNQ_OK);
	late_server ls = { &fx, fx.url, 300 };
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, late_server_main, &ls), 0);
	uint64_t t0 = asynq_now_ns();
	asynq_future *f = call_num(fx.ch, M(TWICE), 21);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(num_of(f), 42);
	assert_true(ms_since(t0) >= 300);
	asynq_future_rele(f);
	pthread_join(th, NULL);
	fx_stop(&fx);
}

/* Many requests in flight on one connection are answered as they finish:
 * a fast call sent after a slow one is answered first. */
static void
test_rpc_replies_in_any_order(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, true, NULL, 1); /* one call per request */
	asynq_future *w = call_num(fx.ch, M(TWICE), 1);
	assert_int_equal(asynq_wait(w), ASYNQ_OK);
	asynq_future_rele(w);
	uint64_t t0 = asynq_now_ns();
	asynq_future *slow = call_num(fx.ch, M(SLEEP), 400);
	asynq_future *fast = call_num(fx.ch, M(TWICE), 4);
	assert_int_equal(asynq_wait(fast), ASYNQ_OK);
	int64_t fast_ms = ms_since(t0);
	assert_false(asynq_future_done(slow));
	assert_int_equal(asynq_wait(slow), ASYNQ_OK);
	assert_true(fast_ms < 300);
	assert_true(ms_since(t0) >= 400);
	asynq_future_rele(slow);
	asynq_future_rele(fast);
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(fx.ch, &cs);
	assert_int_equal(cs.requests, 3);
	fx_stop(&fx);
}

/* A Request of one call of method number `mid` (1-based in the METHODS
 * table) with Num{v}, a deadline_unix_ns and a timeout_us. */
static uint8_t *
raw_req_by_id(size_t *len, uint32_t mid, int64_t v, uint64_t request_id,
    int64_t deadline_unix_ns, uint64_t timeout_us)
{
	Asynq__Rpctest__Num num = ASYNQ__RPCTEST__NUM__INIT;
	num.v = v;
	size_t plen = asynq__rpctest__num__get_packed_size(&num);
	uint8_t *payload = malloc(plen + 1);
	asynq__rpctest__num__pack(&num, payload);
	Asynq__Rpc__Call c = ASYNQ__RPC__CALL__INIT, *cp = &c;
	c.method_id = mid;
	c.payload.data = payload;
	c.payload.len = plen;
	Asynq__Rpc__Request req = ASYNQ__RPC__REQUEST__INIT;
	req.n_calls = 1;
	req.calls = &cp;
	req.request_id = request_id;
	req.deadline_unix_ns = deadline_unix_ns;
	req.timeout_us = timeout_us;
	*len = asynq__rpc__request__get_packed_size(&req);
	uint8_t *buf = malloc(*len);
	asynq__rpc__request__pack(&req, buf);
	free(payload);
	return buf;
}

/* The framing by hand: PING is answered PONG with its bytes, unknown frame
 * types are skipped, methods go by number after a METHODS frame, a number
 * outside the table is UNIMPLEMENTED, and the time left (timeout_us) wins
 * over a wall-clock deadline, so clock skew cannot fail a call. */
static void
test_rpc_raw_frames(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, true, NULL, 0);
	raw_conn raw = raw_open(fx.url, 5000);
	uint8_t type, *body;
	size_t len;
	assert_int_equal(raw_frame(&raw, 5, "12345678", 8), 0);
	assert_int_equal(raw_next(&raw, &type, &body, &len), 0);
	assert_int_equal(type, 6);
	assert_int_equal(len, 8);
	assert_memory_equal(body, "12345678", 8);
	free(body);
	assert_int_equal(raw_frame(&raw, 99, "zz", 2), 0);
	/* METHODS: Sleep then Twice, numbered 1 and 2. */
	Asynq__Rpc__Request mt = ASYNQ__RPC__REQUEST__INIT;
	char *names[] = { (char *)M(SLEEP)->full_name,
		(char *)M(TWICE)->full_name };
	mt.n_methods = 2;
	mt.methods = names;
	size_t mlen = asynq__rpc__request__get_packed_size(&mt);
	uint8_t *mbuf = malloc(mlen);
	asynq__rpc__request__pack(&mt, mbuf);
	assert_int_equal(raw_frame(&raw, 7, mbuf, mlen), 0);
	free(mbuf);
	Asynq__Rpc__Reply *rep;
	int64_t v;
	/* By number; the wall-clock deadline is an hour ago (a skewed
	 * clock), but 5 s are left: it runs. */
	int64_t past = realtime_ns() - 3600 * (int64_t)1000000000;
	uint8_t *b = raw_req_by_id(&len, 2, 21, 1, past, 5000000);
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep->request_id, 1);
	assert_int_equal(rep_status(rep, 0, &v), ASYNQ_OK);
	assert_int_equal(v, 42);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	/* 1 us left: the deadline passes before the call runs. */
	b = raw_req_by_id(&len, 1, 50, 2, 0, 1);
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep_status(rep, 0, NULL), ASYNQ_DEADLINE_EXCEEDED);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	/* Number 3 is not in the table. */
	b = raw_req_by_id(&len, 3, 1, 3, 0, 0);
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep_status(rep, 0, NULL), ASYNQ_UNIMPLEMENTED);
	assert_non_null(strstr(rep->results[0]->message, "method table"));
	asynq__rpc__reply__free_unpacked(rep, NULL);
	raw_close(&raw);
	fx_stop(&fx);
}

typedef struct closer {
	asynq_rpc_server *srv;
	atomic_int done;
} closer;

static void *
closer_main(void *arg)
{
	closer *c = arg;
	asynq_rpc_server_close(c->srv);
	atomic_store(&c->done, 1);
	return NULL;
}

/* Closing: the client gets a GOAWAY naming the last request the server
 * accepted; a request sent after it is refused UNAVAILABLE without running;
 * close returns once the connection is done. */
static void
test_rpc_close_sends_goaway(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, true, NULL, 0);
	atomic_store(&hold_runs, 0);
	atomic_store(&hold_release, 1);
	raw_conn raw = raw_open(fx.url, 5000);
	const asynq_rpc_method_desc *hold[] = { M(HOLD) };
	size_t len;
	Asynq__Rpc__Reply *rep;
	uint8_t *b = raw_req(&len, hold, 1, 0, 0, 5, 0);
	assert_int_equal(raw_call(&raw, b, len, &rep), 0);
	assert_int_equal(rep_status(rep, 0, NULL), ASYNQ_OK);
	asynq__rpc__reply__free_unpacked(rep, NULL);
	assert_int_equal(atomic_load(&hold_runs), 1);
	closer c = { fx.srv, 0 };
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, closer_main, &c), 0);
	uint8_t type, *body;
	assert_int_equal(raw_next(&raw, &type, &body, &len), 0);
	assert_int_equal(type, 4);
	Asynq__Rpc__GoAway *ga = asynq__rpc__go_away__unpack(NULL, len, body);
	free(body);
	assert_non_null(ga);
	assert_int_equal(ga->last_request_id, 5);
	asynq__rpc__go_away__free_unpacked(ga, NULL);
	/* Sent after the GOAWAY: refused (or the connection is gone). */
	b = raw_req(&len, hold, 1, 0, 0, 6, 0);
	if (raw_call(&raw, b, len, &rep) == 0) {
		assert_int_equal(rep->status, ASYNQ_UNAVAILABLE);
		assert_int_equal(rep->request_id, 6);
		asynq__rpc__reply__free_unpacked(rep, NULL);
	}
	assert_int_equal(atomic_load(&hold_runs), 1);
	uint8_t one;
	assert_int_equal(raw_read(&raw, &one, 1), -1); /* closed */
	pthread_join(th, NULL);
	assert_int_equal(atomic_load(&c.done), 1);
	raw_close(&raw);
	fx_stop(&fx);
}

int
main(int argc, char **argv)
{
	self_exe = "/proc/self/exe";
	if (argc == 3 && strcmp(argv[1], "--serve") == 0)
		return serve_main(argv[2]);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_rpc_batches_calls_inproc),
		cmocka_unit_test(test_rpc_batches_calls_tcp),
		cmocka_unit_test(test_rpc_batches_calls_ipc),
		cmocka_unit_test(test_rpc_mixed_methods),
		cmocka_unit_test(test_rpc_handler_error_reaches_caller),
		cmocka_unit_test(test_rpc_unknown_method_unimplemented),
		cmocka_unit_test(test_rpc_deadline_exceeded),
		cmocka_unit_test(test_rpc_malformed_request_then_serves),
		cmocka_unit_test(test_rpc_max_calls_limit),
		cmocka_unit_test(test_rpc_client_splits_at_max_calls),
		cmocka_unit_test(test_rpc_bad_url_invalid_argument),
		cmocka_unit_test(test_rpc_server_setup_errors_in_words),
		cmocka_unit_test(test_rpc_deep_nesting_rejected),
		cmocka_unit_test(test_rpc_close_answers_inflight),
		cmocka_unit_test(test_rpc_metadata_absent_outside_handler),
		cmocka_unit_test(test_rpc_dedup_table),
		cmocka_unit_test(test_rpc_resend_proven_new_runs),
		cmocka_unit_test(
		    test_rpc_resend_after_lost_connection_runs_once),
		cmocka_unit_test(test_rpc_server_killed_then_restarted),
		cmocka_unit_test(test_rpc_replicas_share_requests),
		cmocka_unit_test(test_rpc_client_max_msg_bytes),
		cmocka_unit_test(test_rpc_server_max_msg_bytes),
		cmocka_unit_test(test_rpc_max_inflight_calls_limit),
		cmocka_unit_test(test_rpc_metadata_from_client),
		cmocka_unit_test(test_rpc_tls_with_certificate_files),
		cmocka_unit_test(test_rpc_unreachable_unavailable),
		cmocka_unit_test(test_rpc_wait_for_ready),
		cmocka_unit_test(test_rpc_replies_in_any_order),
		cmocka_unit_test(test_rpc_raw_frames),
		cmocka_unit_test(test_rpc_close_sends_goaway),
	};
	/* RPC_TEST_FILTER=test_rpc_deadline* runs a subset. */
	if (getenv("RPC_TEST_FILTER") != NULL)
		cmocka_set_test_filter(getenv("RPC_TEST_FILTER"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
