/* SPDX-License-Identifier: MIT */
/*
 * Admission control of the RPC server, on a one-worker server over tcp
 * loopback: calls that keep the worker busy (Spin) make a standing queue;
 * the server then sheds what waited too long (answered RESOURCE_EXHAUSTED
 * instead of run), refuses new requests at once while the queue is full,
 * and never refuses when requests do not queue.
 *
 * The timeline is built from spins of 150 ms against a 5 ms target (100 ms
 * intervals), so what the test checks follows from the order of events,
 * with hundreds of milliseconds of slack for a slow machine.
 */
#include "tests/rpc/rpc_fixture.h"

/* Sends a request of one call of m (Num{v}) on r, with request_id id. */
static void
send_call(raw_conn *r, const asynq_rpc_method_desc *m, int64_t v, uint64_t id)
{
	Asynq__Rpctest__Num num = ASYNQ__RPCTEST__NUM__INIT;
	num.v = v;
	uint8_t payload[16];
	size_t plen = asynq__rpctest__num__pack(&num, payload);
	Asynq__Rpc__Call call = ASYNQ__RPC__CALL__INIT, *calls[] = { &call };
	call.method = (char *)m->full_name;
	call.payload.data = payload;
	call.payload.len = plen;
	Asynq__Rpc__Request req = ASYNQ__RPC__REQUEST__INIT;
	req.n_calls = 1;
	req.calls = calls;
	req.request_id = id;
	size_t len = asynq__rpc__request__get_packed_size(&req);
	uint8_t *buf = malloc(len);
	asynq__rpc__request__pack(&req, buf);
	assert_int_equal(raw_frame(r, 1, buf, len), 0);
	free(buf);
}

/* What a reply says: the request's id, and its one call's status (the
 * request's when it failed as a whole) and message. */
typedef struct outcome {
	uint64_t id;
	int32_t status;
	bool whole; /* the request failed as a whole */
	char message[200];
} outcome;

static outcome
next_reply(raw_conn *r)
{
	outcome o = { 0 };
	for (;;) {
		uint8_t type, *body;
		size_t len;
		assert_int_equal(raw_next(r, &type, &body, &len), 0);
		if (type != 2) {
			free(body);
			continue;
		}
		Asynq__Rpc__Reply *rep =
		    asynq__rpc__reply__unpack(NULL, len, body);
		free(body);
		assert_non_null(rep);
		o.id = rep->request_id;
		const char *msg = rep->message;
		if (rep->status != 0 || rep->n_results == 0) {
			o.status = rep->status;
			o.whole = true;
		} else {
			o.status = rep->results[0]->status;
			msg = rep->results[0]->message;
		}
		snprintf(o.message, sizeof(o.message), "%s",
		    msg != NULL ? msg : "");
		asynq__rpc__reply__free_unpacked(rep, NULL);
		return o;
	}
}

static void
test_no_queue_no_refusal(void **state)
{
	(void)state;
	asynq_rpc_server_cfg cfg = { .queue_target_us = 1000 };
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, &cfg, 1);
	raw_conn r = raw_open(fx.url, 10000);
	/* One at a time, each keeping the worker busy for 5 ms: nothing
	 * waits, so nothing is refused however busy the worker is. */
	for (uint64_t i = 1; i <= 40; i++) {
		send_call(&r, M(SPIN), 5, i);
		outcome o = next_reply(&r);
		assert_int_equal(o.id, i);
		assert_int_equal(o.status, ASYNQ_OK);
	}
	assert_int_equal(fx_stats(&fx).shed, 0);
	raw_close(&r);
	fx_stop(&fx);
}

static void
test_standing_queue_is_shed_and_refused(void **state)
{
	(void)state;
	/* A 20 ms target (400 ms intervals): the first request's own wait,
	 * from its read to its start, must stay under the target however slow
	 * the machine (TSan on a loaded 2-core machine took over 5 ms). */
	asynq_rpc_server_cfg cfg = { .queue_target_us = 20000 };
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, &cfg, 1);
	raw_conn r = raw_open(fx.url, 30000);
	/* Ten spins of 600 ms at once. The first starts at 0 with no wait;
	 * the second at 600 ms, after a whole interval whose shortest wait
	 * was 0 (a burst, not overload); the third at 1.2 s, after an
	 * interval whose shortest wait was 600 ms: the worker is overloaded,
	 * and the third to tenth, which waited 1.2 s, are shed. */
	for (uint64_t i = 1; i <= 10; i++)
		send_call(&r, M(SPIN), 600, i);
	int ok = 0, shed = 0;
	for (int i = 0; i < 10; i++) {
		outcome o = next_reply(&r);
		if (o.status == ASYNQ_OK) {
			ok++;
			assert_true(o.id <= 2);
		} else {
			assert_int_equal(o.status, ASYNQ_RESOURCE_EXHAUSTED);
			assert_non_null(strstr(o.message, "overloaded"));
			assert_non_null(strstr(o.message, "did not run"));
			shed++;
		}
	}
	assert_int_equal(ok, 2);
	assert_int_equal(shed, 8);
	assert_int_equal(fx_stats(&fx).shed, 8);
	/* Still overloaded (until an interval passes with a short wait): a
	 * spin of 1 s is admitted, since nothing waits; while it runs, four
	 * more requests fit the worker's budget (its least) and the rest are
	 * refused at once, before the spin ends, without being decoded. */
	send_call(&r, M(SPIN), 1000, 100);
	usleep(50 * 1000);
	for (uint64_t i = 101; i <= 110; i++)
		send_call(&r, M(TWICE), 1, i);
	int refused = 0;
	for (int i = 0; i < 6; i++) {
		outcome o = next_reply(&r);
		assert_true(o.id > 104);
		assert_true(o.whole);
		assert_int_equal(o.status, ASYNQ_RESOURCE_EXHAUSTED);
		assert_non_null(strstr(o.message, "did not run"));
		refused++;
	}
	assert_int_equal(refused, 6);
	/* Then the spin, then the four admitted behind it (run, or shed for
	 * having waited the rest of the spin: the worker cannot tell a spin
	 * from a lull, and a lull ends its overload). */
	outcome spin = next_reply(&r);
	assert_int_equal(spin.id, 100);
	assert_int_equal(spin.status, ASYNQ_OK);
	uint64_t late = 0;
	for (uint64_t i = 101; i <= 104; i++) {
		outcome o = next_reply(&r);
		assert_int_equal(o.id, i);
		if (o.status != ASYNQ_OK) {
			assert_int_equal(o.status, ASYNQ_RESOURCE_EXHAUSTED);
			assert_non_null(strstr(o.message, "waited"));
			late++;
		}
	}
	asynq_rpc_server_stats st = fx_stats(&fx);
	assert_int_equal(st.shed, 8 + 6 + late);
	assert_int_equal(st.shed_late, 8 + late);
	/* The server serves normally once requests stop queueing (a lull of
	 * more than an interval). */
	usleep(1200 * 1000);
	for (uint64_t i = 200; i < 205; i++) {
		send_call(&r, M(TWICE), 4, i);
		outcome o = next_reply(&r);
		assert_int_equal(o.status, ASYNQ_OK);
	}
	raw_close(&r);
	fx_stop(&fx);
}

static void
test_admission_off(void **state)
{
	(void)state;
	asynq_rpc_server_cfg cfg = { .queue_target_us = UINT32_MAX };
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, &cfg, 1);
	raw_conn r = raw_open(fx.url, 20000);
	for (uint64_t i = 1; i <= 6; i++)
		send_call(&r, M(SPIN), 60, i);
	for (int i = 0; i < 6; i++)
		assert_int_equal(next_reply(&r).status, ASYNQ_OK);
	assert_int_equal(fx_stats(&fx).shed, 0);
	raw_close(&r);
	fx_stop(&fx);
}

/* How calls of Twice(i) ended; throttled: of the exhausted, those the
 * channel's own throttle refused. */
typedef struct outcomes {
	int ok, exhausted, throttled, late, other;
} outcomes;

/* Counts f, the call of Twice(i), and lets it go. */
static void
outcome_add(outcomes *o, asynq_future *f, int i)
{
	asynq_status st = asynq_future_status(f);
	if (st == ASYNQ_OK && num_of(f) == 2 * i) {
		o->ok++;
	} else if (st == ASYNQ_RESOURCE_EXHAUSTED) {
		o->exhausted++;
		if (strstr(asynq_error_message(asynq_future_error(f)),
		        "client's throttle") != NULL)
			o->throttled++;
	} else if (st == ASYNQ_DEADLINE_EXCEEDED) {
		o->late++;
	} else {
		o->other++;
	}
	asynq_future_rele(f);
}

/* Makes n calls of Twice(i) at once through ch (one call per request)
 * and awaits them; counts the outcomes. */
typedef struct spread_job {
	asynq_rpc_channel *ch;
	int n, ok, exhausted, late, other;
} spread_job;

static asynq_status
spread_main(asynq_task *t, void *arg)
{
	spread_job *j = arg;
	asynq_future *fs[64];
	/* The one request the busy replica admits waits behind its spin:
	 * it ends at its deadline instead. */
	if (asynq_rpc_timeout_push(300) != ASYNQ_OK)
		return ASYNQ_INTERNAL;
	for (int i = 0; i < j->n; i++)
		fs[i] = call_num(j->ch, M(TWICE), i);
	(void)asynq_rpc_timeout_pop();
	(void)asynq_await_all(t, fs, (size_t)j->n);
	outcomes o = { 0 };
	for (int i = 0; i < j->n; i++)
		outcome_add(&o, fs[i], i);
	j->ok = o.ok;
	j->exhausted = o.exhausted;
	j->late = o.late;
	j->other = o.other;
	return ASYNQ_OK;
}

/* A channel to replicas a and b, one call per request, with both
 * connected (so requests spread over both). */
static asynq_rpc_channel *
channel_pair(const char *a, const char *b, uint32_t tokens)
{
	const char *urls[] = { a, b };
	asynq_rpc_channel_cfg ccfg = {
		.urls = urls,
		.n_urls = 2,
		.max_calls = 1,
		.retry_max_tokens = tokens,
	};
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &ccfg), ASYNQ_OK);
	for (int i = 0; i < 20; i++) {
		asynq_future *f = call_num(ch, M(TWICE), 1);
		assert_int_equal(asynq_wait(f), ASYNQ_OK);
		asynq_future_rele(f);
	}
	return ch;
}

/* Runs j on ch; what the channel counted meanwhile. */
static asynq_rpc_channel_stats
spread(asynq_rpc_channel *ch, spread_job *j)
{
	asynq_rpc_channel_stats before, st;
	asynq_rpc_channel_stats_get(ch, &before);
	j->ch = ch;
	asynq_future *f = asynq_spawn(spread_main, j);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	asynq_rpc_channel_stats_get(ch, &st);
	st.refused -= before.refused;
	st.retries -= before.retries;
	return st;
}

/* Overloads the one-worker server at url as the standing-queue test does
 * (ten spins of 150 ms at once), then keeps its worker spinning for 3 s
 * from 50 ms before this returns; the connection that sent them. */
static raw_conn
stall_worker(const char *url)
{
	raw_conn r = raw_open(url, 20000);
	for (uint64_t i = 1; i <= 10; i++)
		send_call(&r, M(SPIN), 150, i);
	for (int i = 0; i < 10; i++)
		(void)next_reply(&r);
	send_call(&r, M(SPIN), 3000, 100);
	usleep(50 * 1000);
	return r;
}

/* A replica that refuses (overloaded) sends requests to the other one, as
 * many as the retry throttle allows; with retries off, none. */
static void
test_refused_requests_go_elsewhere_throttled(void **state)
{
	(void)state;
	asynq_rpc_server_cfg cfg = { .queue_target_us = 5000 };
	fixture busy, idle;
	fx_server(&busy, TRANSPORT_TCP, &cfg, 1);
	fx_server(&idle, TRANSPORT_TCP, &cfg, 1);
	asynq_rpc_channel *on = channel_pair(busy.url, idle.url, 0);
	asynq_rpc_channel *off = channel_pair(busy.url, idle.url, UINT32_MAX);
	/* Meanwhile `busy` admits four requests (its least budget; they
	 * wait) and refuses the rest at once. */
	raw_conn r = stall_worker(busy.url);
	spread_job j = { .n = 60 };
	asynq_rpc_channel_stats st = spread(on, &j);
	/* About half the requests went to the busy replica; it refused all
	 * but four. Retries went to the idle one while more than half of the
	 * 10 tokens were left: 5, plus 0.1 per request answered meanwhile. */
	assert_true(st.refused >= 10);
	assert_true(st.retries >= 5);
	assert_true(st.retries <= 5 + (uint64_t)j.ok / 10 + 1);
	assert_true(st.retries < st.refused);
	assert_true(j.late <= 4);
	assert_int_equal(j.other, 0);
	assert_int_equal(j.ok + j.exhausted + j.late, j.n);
	assert_int_equal(j.exhausted, (int)(st.refused - st.retries));
	/* Retries off: every refusal reaches its caller. */
	spread_job k = { .n = 60 };
	st = spread(off, &k);
	assert_true(st.refused >= 10);
	assert_int_equal(st.retries, 0);
	assert_int_equal(k.exhausted, (int)st.refused);
	assert_true(k.late <= 4);
	assert_int_equal(k.ok + k.exhausted + k.late, k.n);
	raw_close(&r);
	asynq_rpc_channel_free(on);
	asynq_rpc_channel_free(off);
	fx_stop(&busy);
	fx_stop(&idle);
}

/* A channel of one call per request to url, its throttle at ratio
 * (0: the default), retries off. */
static asynq_rpc_channel *
channel_one(const char *url, uint32_t ratio)
{
	const char *urls[] = { url };
	asynq_rpc_channel_cfg ccfg = {
		.urls = urls,
		.n_urls = 1,
		.max_calls = 1,
		.retry_max_tokens = UINT32_MAX,
		.throttle_ratio_milli = ratio,
	};
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &ccfg), ASYNQ_OK);
	asynq_future *f = call_num(ch, M(TWICE), 1);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	return ch;
}

/* Rounds of 10 calls at once against a server that refuses them: how
 * many the channel's throttle refused (their messages say so) and how
 * many a server refused. */
typedef struct throttle_job {
	asynq_rpc_channel *ch;
	int rounds, ok, refused, throttled, late, other;
} throttle_job;

static asynq_status
throttle_main(asynq_task *t, void *arg)
{
	throttle_job *j = arg;
	for (int r = 0; r < j->rounds; r++) {
		asynq_future *fs[10];
		if (asynq_rpc_timeout_push(300) != ASYNQ_OK)
			return ASYNQ_INTERNAL;
		for (int i = 0; i < 10; i++)
			fs[i] = call_num(j->ch, M(TWICE), i);
		(void)asynq_rpc_timeout_pop();
		(void)asynq_await_all(t, fs, 10);
		outcomes o = { 0 };
		for (int i = 0; i < 10; i++)
			outcome_add(&o, fs[i], i);
		j->ok += o.ok;
		j->throttled += o.throttled;
		j->refused += o.exhausted - o.throttled;
		j->late += o.late;
		j->other += o.other;
	}
	return ASYNQ_OK;
}

static void
run_throttle_job(throttle_job *j)
{
	asynq_future *f = asynq_spawn(throttle_main, j);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

/* A server that refuses everything: once 32 calls had a verdict, the
 * channel refuses 9 in 10 itself, at once (they never reach the server);
 * a second after the server admits again, nothing is throttled, and the
 * server, idle since, admits a burst of 10 whole. With
 * the throttle off every call goes to the server. The ratio's edge:
 * 999 is refused, 1000 and 1001 accepted. */
static void
test_client_throttle(void **state)
{
	(void)state;
	for (uint32_t r = 999; r <= 1001; r++) {
		const char *urls[] = { "tcp://127.0.0.1:1" };
		asynq_rpc_channel_cfg ccfg = { .urls = urls,
			.n_urls = 1,
			.throttle_ratio_milli = r };
		asynq_rpc_channel *ch = NULL;
		asynq_status st = asynq_rpc_channel_alloc(&ch, CALC, &ccfg);
		assert_int_equal(st,
		    r < 1000 ? ASYNQ_INVALID_ARGUMENT : ASYNQ_OK);
		if (ch != NULL)
			asynq_rpc_channel_free(ch);
	}
	asynq_rpc_server_cfg cfg = { .queue_target_us = 5000 };
	fixture busy;
	fx_server(&busy, TRANSPORT_TCP, &cfg, 1);
	asynq_rpc_channel *on = channel_one(busy.url, 0);
	asynq_rpc_channel *off = channel_one(busy.url, UINT32_MAX);
	raw_conn r = stall_worker(busy.url);
	int64_t t0 = (int64_t)asynq_now_ns();
	uint64_t shed0 = fx_stats(&busy).shed;
	asynq_rpc_channel_stats b0, b1;
	asynq_rpc_method_stats m0, m1;
	asynq_rpc_channel_stats_get(on, &b0);
	assert_int_equal(asynq_rpc_channel_method_stats(on,
	                     ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_TWICE, &m0),
	    ASYNQ_OK);
	throttle_job j = { .ch = on, .rounds = 30 };
	run_throttle_job(&j);
	asynq_rpc_channel_stats_get(on, &b1);
	assert_int_equal(asynq_rpc_channel_method_stats(on,
	                     ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_TWICE, &m1),
	    ASYNQ_OK);
	/* The method's counts have both kinds of refusal. */
	assert_int_equal(m1.codes[ASYNQ_RESOURCE_EXHAUSTED] -
	        m0.codes[ASYNQ_RESOURCE_EXHAUSTED],
	    (uint64_t)(j.refused + j.throttled));
	uint64_t shed1 = fx_stats(&busy).shed;
	assert_int_equal(j.ok + j.refused + j.throttled + j.late, 300);
	assert_int_equal(j.other, 0);
	/* At most four admitted (they wait past their deadline). */
	assert_true(j.late <= 4);
	/* The server refused until the window held 32 verdicts (the round
	 * in flight then still went: about 36), then 1 in 10 went on: about
	 * 36 + 0.1 x 264 = 62 of 300 reached it (sd 5; 100 is over 7 sd
	 * away, and without the throttle all 300 would), and each refusal
	 * is one the server counted. */
	assert_true(j.refused >= 28);
	assert_true(j.refused <= 100);
	assert_int_equal(b1.throttled - b0.throttled, (uint64_t)j.throttled);
	assert_int_equal(b1.refused - b0.refused, (uint64_t)j.refused);
	assert_int_equal(shed1 - shed0, (uint64_t)j.refused);
	assert_int_equal(b1.requests - b0.requests,
	    (uint64_t)(j.refused + j.late + j.ok));
	/* The throttle off: all 100 go to the server and are refused. */
	throttle_job k = { .ch = off, .rounds = 10 };
	run_throttle_job(&k);
	assert_int_equal(k.throttled, 0);
	assert_int_equal(k.refused + k.late, 100);
	assert_true((int64_t)asynq_now_ns() - t0 < 2500 * 1000000ll);
	/* The spin ends 3 s after it began; a second later the window has
	 * forgotten the refusals. */
	while ((int64_t)asynq_now_ns() - t0 < 3000 * 1000000ll + 1100000000ll)
		usleep(20 * 1000);
	throttle_job m = { .ch = on, .rounds = 3 };
	run_throttle_job(&m);
	/* Neither the throttle nor the server (its overloaded verdict is
	 * a second old: the burst comes after a lull) refuses any. */
	assert_int_equal(m.throttled, 0);
	assert_int_equal(m.refused, 0);
	assert_int_equal(m.ok, 30);
	raw_close(&r);
	asynq_rpc_channel_free(on);
	asynq_rpc_channel_free(off);
	fx_stop(&busy);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_no_queue_no_refusal),
		cmocka_unit_test(test_standing_queue_is_shed_and_refused),
		cmocka_unit_test(test_admission_off),
		cmocka_unit_test(test_refused_requests_go_elsewhere_throttled),
		cmocka_unit_test(test_client_throttle),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
