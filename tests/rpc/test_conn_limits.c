/* SPDX-License-Identifier: MIT */
/*
 * Connection hygiene of the RPC server, seen from raw sockets on tcp
 * loopback: a peer that never sends its preface, one that trickles a frame
 * (slowloris), idle connections (GOAWAY, then closed; an asynq channel
 * reconnects on its next call), idle connections giving way to a new client
 * at the connection cap, and a peer that pipelines requests without reading
 * its replies (closed once its queued replies pass the write-queue cap).
 *
 * Times are checked from below exactly (nothing closes before its limit)
 * and from above generously (the sweeper runs a few times per limit; a
 * loaded machine may be slow), so the checks cannot flake on timing.
 */
#include "tests/rpc/rpc_fixture.h"

#include <sys/resource.h>

#define FRAME_GOAWAY 4
#define FRAME_PING 5
#define FRAME_PONG 6

/* Waits up to ms for the peer to close r: the time it took, or -1. Frames
 * that arrive meanwhile are skipped; *goaway says whether one was. */
static int64_t
wait_closed(raw_conn *r, int ms, bool *goaway)
{
	uint64_t t0 = asynq_now_ns();
	if (goaway != NULL)
		*goaway = false;
	r->timeout_ms = ms;
	for (;;) {
		uint8_t type, *body;
		size_t len;
		if (raw_next(r, &type, &body, &len) != 0)
			break;
		free(body);
		if (type == FRAME_GOAWAY && goaway != NULL)
			*goaway = true;
		r->timeout_ms = ms - (int)ms_since(t0);
		if (r->timeout_ms <= 0)
			return -1;
	}
	int64_t took = ms_since(t0);
	/* raw_next fails on a timeout too: tell it from a close. */
	uint8_t b;
	ssize_t k = recv(r->fd, &b, 1, MSG_DONTWAIT);
	bool closed = k == 0 || (k < 0 && errno != EAGAIN);
	return closed ? took : -1;
}

/* A PING answered by a PONG: the connection is open and served. */
static bool
ping_ok(raw_conn *r)
{
	if (raw_frame(r, FRAME_PING, "12345678", 8) != 0)
		return false;
	for (;;) {
		uint8_t type, *body;
		size_t len;
		if (raw_next(r, &type, &body, &len) != 0)
			return false;
		free(body);
		if (type == FRAME_PONG)
			return true;
	}
}

static void
test_handshake_timeout(void **state)
{
	(void)state;
	asynq_rpc_server_cfg cfg = { .handshake_timeout_ms = 300 };
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, &cfg, 2);
	uint64_t t0 = asynq_now_ns();
	raw_conn silent = raw_connect(fx.url, 5000, false);
	raw_conn late = raw_connect(fx.url, 5000, false);
	raw_conn partial = raw_connect(fx.url, 5000, false);
	assert_true(silent.fd >= 0 && late.fd >= 0 && partial.fd >= 0);
	/* Under the limit: a preface at a third of it is served. */
	usleep(100 * 1000);
	assert_int_equal(raw_write(&late, "asynq/1\n", 8), 0);
	uint8_t pre[8];
	assert_int_equal(raw_read(&late, pre, 8), 0);
	/* Half a preface is not a preface. */
	assert_int_equal(raw_write(&partial, "asyn", 4), 0);
	int64_t took = wait_closed(&silent, 5000, NULL);
	int64_t since = ms_since(t0);
	assert_true(took >= 0);
	assert_true(since >= 300);
	assert_true(since < 5000);
	assert_true(wait_closed(&partial, 5000, NULL) >= 0);
	assert_true(ping_ok(&late));
	assert_int_equal(fx_stats(&fx).conns_stalled, 2);
	raw_close(&silent);
	raw_close(&late);
	raw_close(&partial);
	fx_stop(&fx);
}

static void
test_frame_timeout(void **state)
{
	(void)state;
	asynq_rpc_server_cfg cfg = { .frame_timeout_ms = 300 };
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, &cfg, 2);
	raw_conn slow = raw_open(fx.url, 5000);
	raw_conn steady = raw_open(fx.url, 5000);
	/* A PING frame of 8 bytes trickled one byte per 60 ms takes 780 ms
	 * in all; complete frames, one per 100 ms, each finish in time. */
	uint8_t frame[13] = { FRAME_PING, 0, 0, 0, 8, '1', '2', '3', '4', '5',
		'6', '7', '8' };
	uint64_t t0 = asynq_now_ns();
	bool cut = false;
	for (size_t i = 0; i < sizeof(frame) && !cut; i++) {
		if (raw_write(&slow, &frame[i], 1) != 0)
			cut = true;
		assert_true(ping_ok(&steady));
		usleep(60 * 1000);
		uint8_t b;
		ssize_t k = recv(slow.fd, &b, 1, MSG_DONTWAIT);
		if (k == 0 || (k < 0 && errno != EAGAIN))
			cut = true;
	}
	if (!cut)
		cut = wait_closed(&slow, 5000, NULL) >= 0;
	assert_true(cut);
	assert_true(ms_since(t0) >= 300);
	assert_true(ping_ok(&steady));
	assert_int_equal(fx_stats(&fx).conns_stalled, 1);
	raw_close(&slow);
	raw_close(&steady);
	fx_stop(&fx);
}

static void
test_idle_timeout_then_reconnect(void **state)
{
	(void)state;
	asynq_rpc_server_cfg cfg = { .idle_timeout_ms = 300 };
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, &cfg, 0);
	asynq_future *f = call_num(fx.ch, M(TWICE), 21);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(num_of(f), 42);
	asynq_future_rele(f);
	uint64_t t0 = asynq_now_ns();
	raw_conn idle = raw_open(fx.url, 5000);
	raw_conn busy = raw_open(fx.url, 5000);
	/* Pinged every 100 ms: never idle for 300 ms. */
	for (int i = 0; i < 6; i++) {
		assert_true(ping_ok(&busy));
		usleep(100 * 1000);
	}
	bool goaway = false;
	assert_true(wait_closed(&idle, 5000, &goaway) >= 0);
	assert_true(goaway);
	assert_true(ms_since(t0) >= 300);
	assert_true(ping_ok(&busy));
	/* The channel's connection went idle too; its next call reconnects
	 * and succeeds. */
	while (fx_stats(&fx).conns_idle < 2 && ms_since(t0) < 10000)
		usleep(20 * 1000);
	assert_true(fx_stats(&fx).conns_idle >= 2);
	f = call_num(fx.ch, M(TWICE), 5);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(num_of(f), 10);
	asynq_future_rele(f);
	raw_close(&idle);
	raw_close(&busy);
	fx_stop(&fx);
}

/* Sends a Hold call (it runs until hold_release) on r without reading. */
static void
send_hold(raw_conn *r, uint64_t request_id)
{
	const asynq_rpc_method_desc *ms[] = { M(HOLD) };
	size_t len;
	uint8_t *req = raw_req(&len, ms, 1, 0, 0, request_id, 0);
	assert_int_equal(raw_frame(r, 1, req, len), 0);
	free(req);
}

static void
test_idle_gives_way_at_connection_cap(void **state)
{
	(void)state;
	asynq_rpc_server_cfg cfg = { .max_connections = 4 };
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, &cfg, 2);
	atomic_store(&hold_runs, 0);
	atomic_store(&hold_release, 0);
	raw_conn c[6];
	/* limit-1, limit: served, nobody evicted. */
	for (int i = 0; i < 4; i++) {
		c[i] = raw_open(fx.url, 5000);
		usleep(5 * 1000); /* distinct activity times */
	}
	assert_int_equal(fx_stats(&fx).conns_evicted, 0);
	for (int i = 0; i < 4; i++)
		assert_true(ping_ok(&c[i]));
	/* limit+1: the connection idle longest (c[0], pinged first) gives
	 * way with a GOAWAY; the new one is served. */
	c[4] = raw_open(fx.url, 5000);
	assert_true(ping_ok(&c[4]));
	bool goaway = false;
	assert_true(wait_closed(&c[0], 5000, &goaway) >= 0);
	assert_true(goaway);
	assert_int_equal(fx_stats(&fx).conns_evicted, 1);
	/* With a call in flight on every connection none is idle: a new
	 * connection is refused at once. */
	for (int i = 1; i < 5; i++)
		send_hold(&c[i], 1);
	uint64_t t0 = asynq_now_ns();
	while (atomic_load(&hold_runs) < 4 && ms_since(t0) < 10000)
		usleep(5 * 1000);
	assert_int_equal(atomic_load(&hold_runs), 4);
	c[5] = raw_connect(fx.url, 5000, true);
	assert_true(c[5].fd < 0);
	assert_int_equal(fx_stats(&fx).conns_refused, 1);
	atomic_store(&hold_release, 1);
	for (int i = 1; i < 5; i++) {
		Asynq__Rpc__Reply *rep = NULL;
		for (;;) {
			uint8_t type, *body;
			size_t len;
			assert_int_equal(raw_next(&c[i], &type, &body, &len),
			    0);
			if (type == 2) {
				rep =
				    asynq__rpc__reply__unpack(NULL, len, body);
				free(body);
				break;
			}
			free(body);
		}
		assert_non_null(rep);
		assert_int_equal(rep->n_results, 1);
		assert_int_equal(rep->results[0]->status, 0);
		asynq__rpc__reply__free_unpacked(rep, NULL);
	}
	for (int i = 0; i < 5; i++)
		raw_close(&c[i]);
	fx_stop(&fx);
}

/* Sends `reqs` requests of `calls` Hold calls each on a new connection
 * and checks that `runs` of the calls start (the rest are not read) until
 * the holds are released; then every reply arrives. */
static void
check_conn_caps(const asynq_rpc_server_cfg *cfg, size_t reqs, size_t calls,
    int runs)
{
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, cfg, 2);
	atomic_store(&hold_runs, 0);
	atomic_store(&hold_release, 0);
	raw_conn r = raw_open(fx.url, 20000);
	const asynq_rpc_method_desc *ms[] = { M(HOLD), M(HOLD), M(HOLD),
		M(HOLD) };
	for (size_t i = 0; i < reqs; i++) {
		size_t len;
		uint8_t *req = raw_req(&len, ms, calls, 0, 0, i + 1, 0);
		assert_int_equal(raw_frame(&r, 1, req, len), 0);
		free(req);
	}
	uint64_t t0 = asynq_now_ns();
	while (atomic_load(&hold_runs) < runs && ms_since(t0) < 10000)
		usleep(5 * 1000);
	usleep(200 * 1000); /* nothing more starts */
	assert_int_equal(atomic_load(&hold_runs), runs);
	atomic_store(&hold_release, 1);
	for (size_t i = 0; i < reqs; i++) {
		uint8_t type, *body;
		size_t len;
		do {
			assert_int_equal(raw_next(&r, &type, &body, &len), 0);
			free(body);
		} while (type != 2);
	}
	assert_int_equal(atomic_load(&hold_runs), (int)(reqs * calls));
	raw_close(&r);
	fx_stop(&fx);
}

static void
test_conn_request_and_call_caps(void **state)
{
	(void)state;
	/* 4 requests in flight at most: of 6, 4 run (limit-1 and limit
	 * read), the 5th and 6th wait in the socket until the first finish. */
	asynq_rpc_server_cfg rq = { .max_conn_requests = 4 };
	check_conn_caps(&rq, 6, 1, 4);
	/* 10 calls in flight at most: requests of 4 calls; the third takes
	 * the count to 12 (it was read before the cap was reached), the
	 * fourth waits. */
	asynq_rpc_server_cfg cl = { .max_conn_calls = 10 };
	check_conn_caps(&cl, 4, 4, 12);
	/* Under both caps, all run at once. */
	asynq_rpc_server_cfg big = { .max_conn_requests = 8,
		.max_conn_calls = 100 };
	check_conn_caps(&big, 6, 4, 24);
}

/* A Request of one Twice call whose reply carries `pad` bytes (the
 * handler echoes the "tag" metadata). */
static uint8_t *
big_reply_req(size_t *len, size_t pad, uint64_t request_id)
{
	Asynq__Rpctest__Num num = ASYNQ__RPCTEST__NUM__INIT;
	num.v = 1;
	uint8_t payload[16];
	size_t plen = asynq__rpctest__num__pack(&num, payload);
	Asynq__Rpc__Call call = ASYNQ__RPC__CALL__INIT, *calls[] = { &call };
	call.method = (char *)M(TWICE)->full_name;
	call.payload.data = payload;
	call.payload.len = plen;
	char *val = malloc(pad);
	memset(val, 'x', pad);
	Asynq__Rpc__Metadata md = ASYNQ__RPC__METADATA__INIT, *mds[] = { &md };
	md.key = "tag";
	md.value.data = (uint8_t *)val;
	md.value.len = pad;
	Asynq__Rpc__Request req = ASYNQ__RPC__REQUEST__INIT;
	req.n_calls = 1;
	req.calls = calls;
	req.n_metadata = 1;
	req.metadata = mds;
	req.request_id = request_id;
	*len = asynq__rpc__request__get_packed_size(&req);
	uint8_t *buf = malloc(*len);
	asynq__rpc__request__pack(&req, buf);
	free(val);
	return buf;
}

typedef struct reader {
	raw_conn *r;
	size_t want;
	size_t got;
} reader;

static void *
reader_main(void *arg)
{
	reader *rd = arg;
	while (rd->got < rd->want) {
		uint8_t type, *body;
		size_t len;
		if (raw_next(rd->r, &type, &body, &len) != 0)
			break;
		free(body);
		if (type == 2)
			rd->got++;
	}
	return NULL;
}

static void
test_write_queue_cap(void **state)
{
	(void)state;
	/* Replies of 16 KiB; the cap is 1 MiB of replies not yet written,
	 * and a peer that takes none for 500 ms is cut off. */
	asynq_rpc_server_cfg cfg = {
		.max_write_queue_bytes = 1u << 20,
		.frame_timeout_ms = 500,
	};
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, &cfg, 2);
	size_t len;
	uint8_t *req = big_reply_req(&len, 16u << 10, 1);
	/* A client that reads as it goes: 2,048 replies (32 MiB, 32x the
	 * cap) pipelined, every one arrives (reading pauses while it lags). */
	raw_conn good = raw_open(fx.url, 20000);
	reader rd = { &good, 2048, 0 };
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, reader_main, &rd), 0);
	for (size_t i = 0; i < rd.want; i++)
		assert_int_equal(raw_frame(&good, 1, req, len), 0);
	pthread_join(th, NULL);
	assert_int_equal(rd.got, rd.want);
	assert_int_equal(fx_stats(&fx).conns_overflowed, 0);
	/* One that never reads, with a small receive buffer: once its
	 * replies pile up past the cap the server stops reading its requests,
	 * and 500 ms later cuts it off (a write stall; or, if its sends
	 * stalled mid-frame first, an overdue frame). Sends never block here:
	 * a peer cut off while its own unsent bytes fill the server's window
	 * may learn of the close only after TCP's zero-window probes. */
	raw_conn bad = raw_open(fx.url, 20000);
	int small = 16 << 10;
	setsockopt(bad.fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
	size_t off = 0, sent = 0;
	uint64_t t0 = asynq_now_ns();
	asynq_rpc_server_stats st = fx_stats(&fx);
	while (st.conns_overflowed + st.conns_stalled == 0 &&
	    ms_since(t0) < 20000) {
		struct pollfd pfd = { .fd = bad.fd, .events = POLLOUT };
		if (poll(&pfd, 1, 20) > 0) {
			uint8_t h[5] = { 1, (uint8_t)(len >> 24),
				(uint8_t)(len >> 16), (uint8_t)(len >> 8),
				(uint8_t)len };
			const uint8_t *p = off < 5 ? h + off : req + (off - 5);
			size_t n = off < 5 ? 5 - off : len - (off - 5);
			ssize_t k =
			    send(bad.fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
			if (k > 0 && (off += (size_t)k) == 5 + len) {
				off = 0;
				sent++;
			}
			if (k < 0 && errno != EAGAIN && errno != EINTR)
				break; /* cut off */
		}
		st = fx_stats(&fx);
	}
	st = fx_stats(&fx);
	assert_int_equal(st.conns_overflowed + st.conns_stalled, 1);
	assert_true(sent < 4096);
	/* The server still serves. */
	raw_conn after = raw_open(fx.url, 5000);
	assert_true(ping_ok(&after));
	free(req);
	raw_close(&good);
	raw_close(&bad);
	raw_close(&after);
	fx_stop(&fx);
}

int
main(void)
{
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_handshake_timeout),
		cmocka_unit_test(test_frame_timeout),
		cmocka_unit_test(test_idle_timeout_then_reconnect),
		cmocka_unit_test(test_idle_gives_way_at_connection_cap),
		cmocka_unit_test(test_write_queue_cap),
		cmocka_unit_test(test_conn_request_and_call_caps),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
