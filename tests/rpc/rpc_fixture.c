/* SPDX-License-Identifier: MIT */
/*
 * The RPC tests' shared fixture and raw-wire helpers (rpc_fixture.h).
 */
#include "tests/rpc/rpc_fixture.h"
#include "tests/common/child.h"

/* ---- Handlers ----------------------------------------------------------- */

atomic_int sleep_started;
atomic_int hold_runs;
atomic_int hold_release;
/* In a --serve child: where handlers report that they started. */
int notify_fd = -1;
const char *self_exe;

void
notify(char c)
{
	if (notify_fd >= 0)
		(void)!write(notify_fd, &c, 1);
}

Asynq__Rpctest__Num *
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
	notify('S');
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
		if (in->v < 0) {
			asynq_rpc_batch_fail(&calls[i], ASYNQ_INVALID_ARGUMENT,
			    "sum: v = %lld is negative (call %zu of %zu)",
			    (long long)in->v, i, n);
			continue;
		}
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

static asynq_status
h_hold(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)ctx;
	const Asynq__Rpctest__Num *in = (const Asynq__Rpctest__Num *)req;
	atomic_fetch_add(&hold_runs, 1);
	uint64_t t0 = asynq_now_ns();
	while (!atomic_load(&hold_release)) {
		if (asynq_now_ns() - t0 > 30000000000u)
			return asynq_fail(t, ASYNQ_INTERNAL, "never released");
		asynq_future *f = asynq_sleep(2000000);
		asynq_status st = asynq_await(t, f);
		asynq_future_rele(f);
		ASYNQ_TRY(st);
	}
	Asynq__Rpctest__Num *out = num_new(in->v + 1);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	*reply = &out->base;
	return ASYNQ_OK;
}

static asynq_status
h_spin(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	const Asynq__Rpctest__Num *in = (const Asynq__Rpctest__Num *)req;
	uint64_t t0 = asynq_now_ns();
	while (asynq_now_ns() - t0 < (uint64_t)in->v * 1000000u)
		;
	Asynq__Rpctest__Num *out = num_new(in->v);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	*reply = &out->base;
	return ASYNQ_OK;
}

atomic_int lookup_runs;

static asynq_status
h_lookup(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)ctx;
	const Asynq__Rpctest__Num *in = (const Asynq__Rpctest__Num *)req;
	atomic_fetch_add(&lookup_runs, 1);
	if (in->v % 2 != 0)
		return asynq_fail(t, ASYNQ_NOT_FOUND, "no num %lld",
		    (long long)in->v);
	Asynq__Rpctest__Num *out = num_new(in->v * 3);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	*reply = &out->base;
	return ASYNQ_OK;
}

asynq_rpc_channel *relay_ch;

static asynq_status
h_relay(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)ctx;
	const Asynq__Rpctest__Num *in = (const Asynq__Rpctest__Num *)req;
	if (relay_ch == NULL)
		return asynq_fail(t, ASYNQ_FAILED_PRECONDITION, "no relay_ch");
	int64_t sum = 0;
	for (int i = 0; i < 2; i++) {
		asynq_future *f = call_num(relay_ch, M(LOOKUP), in->v);
		asynq_status st = asynq_await(t, f);
		sum += st == ASYNQ_OK ? num_of(f) : 0;
		asynq_future_rele(f);
		ASYNQ_TRY(st);
	}
	Asynq__Rpctest__Num *out = num_new(sum);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	*reply = &out->base;
	return ASYNQ_OK;
}

atomic_int nap_runs;

static asynq_status
h_nap(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)ctx;
	const Asynq__Rpctest__Num *in = (const Asynq__Rpctest__Num *)req;
	atomic_fetch_add(&nap_runs, 1);
	notify('N');
	asynq_future *f = asynq_sleep((uint64_t)in->v * 1000000u);
	asynq_status st = asynq_await(t, f);
	asynq_future_rele(f);
	ASYNQ_TRY(st);
	Asynq__Rpctest__Num *out = num_new(in->v);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	*reply = &out->base;
	return ASYNQ_OK;
}

const asynq_rpc_handler calc_handlers[] = {
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_TWICE] = { .unary = h_double },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_FAIL] = { .unary = h_fail },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_SLEEP] = { .unary = h_sleep },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_SUM] = { .batch = h_sum },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_DEPTH] = { .unary = h_depth },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_HOLD] = { .unary = h_hold },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_SPIN] = { .unary = h_spin },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_LOOKUP] = { .unary = h_lookup },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_CACHED_LOOKUP] = { .unary =
	                                                           h_lookup },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_RELAY] = { .unary = h_relay },
	[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_NAP] = { .unary = h_nap },
};

/* ---- Fixture ------------------------------------------------------------ */

int
free_port(void)
{
	return child_free_port();
}

void
url_make(char *buf, size_t n, int transport)
{
	static int seq;
	if (transport == TRANSPORT_TCP)
		snprintf(buf, n, "tcp://127.0.0.1:%d", free_port());
	else if (transport == TRANSPORT_IPC)
		snprintf(buf, n, "ipc:///tmp/asynq-rpc-test-%d-%d.sock",
		    (int)getpid(), ++seq);
	else
		snprintf(buf, n, "inproc://asynq-rpc-test-%d", ++seq);
}

/* Starts a runtime of `workers` workers and a Calc server with scfg (NULL
 * for defaults) on a new URL; no channel. */
void
fx_server(fixture *fx, int tcp, const asynq_rpc_server_cfg *scfg,
    size_t workers)
{
	fx_server_with(fx, tcp, scfg, workers, calc_handlers);
}

void
fx_server_with(fixture *fx, int tcp, const asynq_rpc_server_cfg *scfg,
    size_t workers, const asynq_rpc_handler *handlers)
{
	memset(fx, 0, sizeof(*fx));
	asynq_runtime_cfg rcfg = { .workers = workers };
	assert_int_equal(asynq_runtime_alloc(&fx->rt, &rcfg), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_alloc(&fx->srv, fx->rt, scfg),
	    ASYNQ_OK);
	assert_int_equal(
	    asynq_rpc_server_add_service(fx->srv, CALC, handlers, NULL),
	    ASYNQ_OK);
	url_make(fx->url, sizeof(fx->url), tcp);
	assert_int_equal(asynq_rpc_server_listen(fx->srv, fx->url), ASYNQ_OK);
}

/* Starts a two-worker runtime and a Calc server with scfg (NULL for
 * defaults) and opens a channel to it with chan_max_calls (0: the
 * service's). */
void
fx_start(fixture *fx, int tcp, const asynq_rpc_server_cfg *scfg,
    size_t chan_max_calls)
{
	fx_server(fx, tcp, scfg, 2);
	const char *urls[] = { fx->url };
	asynq_rpc_channel_cfg ccfg = {
		.urls = urls,
		.n_urls = 1,
		.max_calls = chan_max_calls,
	};
	assert_int_equal(asynq_rpc_channel_alloc(&fx->ch, CALC, &ccfg),
	    ASYNQ_OK);
}

asynq_rpc_server_stats
fx_stats(const fixture *fx)
{
	asynq_rpc_server_stats st;
	asynq_rpc_server_stats_get(fx->srv, &st);
	return st;
}

void
fx_stop(fixture *fx)
{
	asynq_rpc_channel_free(fx->ch);
	asynq_rpc_server_free(fx->srv);
	asynq_runtime_free(fx->rt);
	asynq_thread_fini();
}

asynq_future *
call_num(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m, int64_t v)
{
	Asynq__Rpctest__Num n = ASYNQ__RPCTEST__NUM__INIT;
	n.v = v;
	return asynq_rpc_call(ch, m, &n.base);
}

int64_t
num_of(asynq_future *f)
{
	const Asynq__Rpctest__Num *n = asynq_future_ptr(f);
	return n != NULL ? n->v : INT64_MIN;
}

int64_t
realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int64_t
ms_since(uint64_t t0)
{
	return (int64_t)((asynq_now_ns() - t0) / 1000000u);
}

/* ---- A client task --------------------------------------------------------
 */

/* Makes n calls of m with v = i, then awaits them all. */
asynq_status
job_main(asynq_task *t, void *arg)
{
	job *j = arg;
	for (size_t i = 0; i < j->n; i++)
		j->out[i] = call_num(j->ch, j->m, (int64_t)i);
	j->st = asynq_await_all(t, j->out, j->n);
	return ASYNQ_OK;
}

void
run_job(job *j)
{
	asynq_future *f = asynq_spawn(job_main, j);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

/* ---- A raw asynq connection -------------------------------------------------
 */

/* Reads exactly n bytes within the timeout: 0, or -1 (closed/timeout). */
int
raw_read(raw_conn *r, void *buf, size_t n)
{
	uint8_t *p = buf;
	uint64_t t0 = asynq_now_ns();
	while (n > 0) {
		int64_t left = r->timeout_ms - ms_since(t0);
		if (left <= 0)
			return -1;
		struct pollfd pfd = { .fd = r->fd, .events = POLLIN };
		int pr = poll(&pfd, 1, (int)left);
		if (pr <= 0)
			continue;
		ssize_t k = read(r->fd, p, n);
		if (k <= 0)
			return -1;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

int
raw_write(raw_conn *r, const void *buf, size_t n)
{
	const uint8_t *p = buf;
	while (n > 0) {
		ssize_t k = send(r->fd, p, n, MSG_NOSIGNAL);
		if (k <= 0)
			return -1;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

/* Writes one frame. */
int
raw_frame(raw_conn *r, uint8_t type, const void *body, size_t len)
{
	uint8_t h[5] = { type, (uint8_t)(len >> 24), (uint8_t)(len >> 16),
		(uint8_t)(len >> 8), (uint8_t)len };
	if (raw_write(r, h, sizeof(h)) != 0)
		return -1;
	return len != 0 ? raw_write(r, body, len) : 0;
}

/* Reads one frame (body malloc'd): 0, or -1. */
int
raw_next(raw_conn *r, uint8_t *type, uint8_t **body, size_t *len)
{
	uint8_t h[5];
	if (raw_read(r, h, sizeof(h)) != 0)
		return -1;
	*type = h[0];
	*len = ((size_t)h[1] << 24) | ((size_t)h[2] << 16) |
	    ((size_t)h[3] << 8) | h[4];
	*body = malloc(*len + 1);
	if (raw_read(r, *body, *len) != 0) {
		free(*body);
		return -1;
	}
	return 0;
}

/* Connects to url; with `hello`, writes the preface and reads the server's
 * preface and HELLO. fd is -1 when that failed. */
raw_conn
raw_connect(const char *url, int timeout_ms, bool hello)
{
	raw_conn r = { -1, timeout_ms };
	int fd;
	if (strncmp(url, "tcp://", 6) == 0) {
		struct sockaddr_in a = { .sin_family = AF_INET };
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a.sin_port = htons((uint16_t)atoi(strrchr(url, ':') + 1));
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
			close(fd);
			return r;
		}
	} else {
		struct sockaddr_un a = { .sun_family = AF_UNIX };
		assert_true(strncmp(url, "ipc://", 6) == 0);
		snprintf(a.sun_path, sizeof(a.sun_path), "%s", url + 6);
		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
			close(fd);
			return r;
		}
	}
	r.fd = fd;
	if (!hello)
		return r;
	uint8_t pre[8], type;
	uint8_t *body;
	size_t len;
	if (raw_write(&r, "asynq/1\n", 8) != 0 || raw_read(&r, pre, 8) != 0 ||
	    memcmp(pre, "asynq/1\n", 8) != 0 ||
	    raw_next(&r, &type, &body, &len) != 0) {
		close(fd);
		r.fd = -1;
		return r;
	}
	free(body);
	if (type != 3) {
		close(fd);
		r.fd = -1;
	}
	return r;
}

raw_conn
raw_open(const char *url, int timeout_ms)
{
	raw_conn r = raw_connect(url, timeout_ms, true);
	assert_true(r.fd >= 0);
	return r;
}

void
raw_close(raw_conn *r)
{
	if (r->fd >= 0)
		close(r->fd);
	r->fd = -1;
}

/* Sends buf (freed) as a REQUEST and decodes the REPLY: 0, or -1 when the
 * connection closed or timed out first. */
int
raw_call(raw_conn *r, uint8_t *buf, size_t len, Asynq__Rpc__Reply **rep)
{
	*rep = NULL;
	int rv = r->fd >= 0 ? raw_frame(r, 1, buf, len) : -1;
	free(buf);
	if (rv != 0)
		return -1;
	for (;;) {
		uint8_t type;
		uint8_t *in;
		size_t inlen;
		if (raw_next(r, &type, &in, &inlen) != 0)
			return -1;
		if (type != 2) {
			free(in);
			continue;
		}
		*rep = asynq__rpc__reply__unpack(NULL, inlen, in);
		free(in);
		assert_non_null(*rep);
		return 0;
	}
}

/* ---- Raw requests ---------------------------------------------------------
 */

/* Packs a Request with n calls of ms[i] (call_id i), each with the payload
 * Num{v = 5, s = `pad` x's}. */
uint8_t *
raw_req(size_t *len, const asynq_rpc_method_desc *const *ms, size_t n,
    size_t pad, uint64_t client_id, uint64_t request_id, uint32_t attempt)
{
	char *s = malloc(pad + 1);
	memset(s, 'x', pad);
	s[pad] = '\0';
	Asynq__Rpctest__Num num = ASYNQ__RPCTEST__NUM__INIT;
	num.v = 5;
	num.s = s;
	size_t plen = asynq__rpctest__num__get_packed_size(&num);
	uint8_t *payload = malloc(plen + 1);
	asynq__rpctest__num__pack(&num, payload);
	Asynq__Rpc__Call calls[4], *ptrs[4];
	assert_true(n <= 4);
	for (size_t i = 0; i < n; i++) {
		Asynq__Rpc__Call c = ASYNQ__RPC__CALL__INIT;
		c.method = (char *)ms[i]->full_name;
		c.call_id = i;
		c.payload.data = payload;
		c.payload.len = plen;
		calls[i] = c;
		ptrs[i] = &calls[i];
	}
	Asynq__Rpc__Request req = ASYNQ__RPC__REQUEST__INIT;
	req.n_calls = n;
	req.calls = ptrs;
	req.client_id = client_id;
	req.request_id = request_id;
	req.attempt = attempt;
	*len = asynq__rpc__request__get_packed_size(&req);
	uint8_t *buf = malloc(*len);
	asynq__rpc__request__pack(&req, buf);
	free(payload);
	free(s);
	return buf;
}
