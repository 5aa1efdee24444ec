/* SPDX-License-Identifier: MIT */
/*
 * Scale-out of a channel over replicas: targets as names (a real
 * getaddrinfo of localhost, SRV replies parsed, and a resolver of the
 * test's own whose answers it changes), replicas that come and go without
 * failing calls, the max_replicas limit, balancing (round robin, fewest
 * outstanding, a batch over max_calls split across replicas), outlier
 * ejection at eject_after failures and the health probe that takes a
 * replica back, and calls caught on a replica whose process dies: the
 * idempotent ones answered by another, the non-idempotent one never run
 * twice. Servers are Calc servers of this process on loopback TCP ports,
 * or this binary re-executed with --serve.
 */
#include "tests/rpc/rpc_fixture.h"
#include "framework/rpc/resolve.h"

/* ---- Helpers ------------------------------------------------------------- */

/* A resolver whose answer the test sets. */
typedef struct fake_dns {
	pthread_mutex_t mu;
	char urls[80][ASYNQ_RPC_URL_MAX];
	int n;
	bool fail;
	int calls;
} fake_dns;

static int
fake_resolve(void *arg, const char *target, char (*urls)[ASYNQ_RPC_URL_MAX],
    size_t max, char *why, size_t why_len)
{
	fake_dns *d = arg;
	pthread_mutex_lock(&d->mu);
	d->calls++;
	int n = d->n;
	if (d->fail) {
		snprintf(why, why_len, "fake: %s has no records", target);
		n = -1;
	}
	for (int i = 0; i < n && (size_t)i < max; i++)
		memcpy(urls[i], d->urls[i], ASYNQ_RPC_URL_MAX);
	pthread_mutex_unlock(&d->mu);
	return n;
}

static void
fake_set(fake_dns *d, const char *const *urls, int n)
{
	pthread_mutex_lock(&d->mu);
	for (int i = 0; i < n; i++)
		snprintf(d->urls[i], ASYNQ_RPC_URL_MAX, "%s", urls[i]);
	d->n = n;
	d->fail = false;
	pthread_mutex_unlock(&d->mu);
}

static void
sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };
	nanosleep(&ts, NULL);
}

/* How many of ch's replicas are ready (and not draining). */
static size_t
n_ready(asynq_rpc_channel *ch)
{
	asynq_rpc_replica_info info[80];
	size_t n = asynq_rpc_channel_replicas(ch, info, 80), k = 0;
	for (size_t i = 0; i < n && i < 80; i++)
		k += info[i].ready && !info[i].draining;
	return k;
}

/* How many of ch's replicas failed their last connection attempt. */
static size_t
n_failed(asynq_rpc_channel *ch)
{
	asynq_rpc_replica_info info[80];
	size_t n = asynq_rpc_channel_replicas(ch, info, 80), k = 0;
	for (size_t i = 0; i < n && i < 80; i++)
		k += strcmp(info[i].state, "failed") == 0;
	return k;
}

/* Waits up to 10 s until ch has `want` replicas ready and `total`
 * replicas in all (draining ones included). */
static bool
wait_replicas(asynq_rpc_channel *ch, size_t want, size_t total)
{
	for (int i = 0; i < 1000; i++) {
		if (n_ready(ch) == want &&
		    asynq_rpc_channel_replicas(ch, NULL, 0) == total)
			return true;
		sleep_ms(10);
	}
	return false;
}

/* The info of ch's replica with url, or all zero. */
static asynq_rpc_replica_info
rep_of(asynq_rpc_channel *ch, const char *url)
{
	asynq_rpc_replica_info info[80], none;
	size_t n = asynq_rpc_channel_replicas(ch, info, 80);
	for (size_t i = 0; i < n && i < 80; i++)
		if (strcmp(info[i].url, url) == 0)
			return info[i];
	memset(&none, 0, sizeof(none));
	return none;
}

/* Makes n calls of m (v = i) from this thread as one batch; returns how
 * many succeeded. */
static size_t
calls_ok(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m, size_t n)
{
	asynq_future **f = calloc(n, sizeof(*f));
	assert_non_null(f);
	for (size_t i = 0; i < n; i++)
		f[i] = call_num(ch, m, (int64_t)i);
	(void)asynq_wait_all(f, n);
	size_t ok = 0;
	for (size_t i = 0; i < n; i++)
		ok += asynq_future_status(f[i]) == ASYNQ_OK;
	asynq_future_rele_n(f, n);
	free(f);
	return ok;
}

static uint64_t
srv_requests(const fixture *fx)
{
	return fx_stats(fx).requests;
}

static void
srv_stop(fixture *fx)
{
	asynq_rpc_server_free(fx->srv);
	asynq_runtime_free(fx->rt);
}

/* Makes n calls of m with v + i and a payload of pad bytes (Num.s) from
 * this thread as one batch; returns how many succeeded. */
static size_t
calls_v_ok(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m, size_t n,
    int64_t v, size_t pad)
{
	asynq_future **f = calloc(n, sizeof(*f));
	char *s = malloc(pad + 1);
	assert_non_null(f);
	assert_non_null(s);
	memset(s, 'x', pad);
	s[pad] = '\0';
	for (size_t i = 0; i < n; i++) {
		Asynq__Rpctest__Num num = ASYNQ__RPCTEST__NUM__INIT;
		num.v = v + (int64_t)i; /* distinct: none collapses */
		num.s = s;
		f[i] = asynq_rpc_call(ch, m, &num.base);
	}
	(void)asynq_wait_all(f, n);
	size_t ok = 0;
	for (size_t i = 0; i < n; i++)
		ok += asynq_future_status(f[i]) == ASYNQ_OK;
	asynq_future_rele_n(f, n);
	free(f);
	free(s);
	return ok;
}

/* ---- Names ----------------------------------------------------------------
 */

/* A real resolution: dns:///localhost:PORT through getaddrinfo. */
static void
test_scale_dns_localhost(void **state)
{
	(void)state;
	fixture a;
	fx_server(&a, TRANSPORT_TCP, NULL, 2);
	const char *port = strrchr(a.url, ':') + 1;
	char target[64];
	snprintf(target, sizeof(target), "dns:///localhost:%s", port);
	const char *urls[] = { target };
	asynq_rpc_channel_cfg cfg = { .urls = urls, .n_urls = 1 };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg), ASYNQ_OK);
	/* Calls made before the first resolution wait for it. */
	assert_int_equal(calls_ok(ch, M(TWICE), 10), 10);
	asynq_rpc_replica_info r = rep_of(ch, a.url);
	assert_string_equal(r.url, a.url);
	assert_true(r.ready);
	assert_int_equal(r.requests, 1);
	assert_int_equal(r.calls, 10);
	asynq_rpc_channel_free(ch);
	srv_stop(&a);
	asynq_thread_fini();
}

/* Targets that cannot be resolved are refused in words at alloc. */
static void
test_scale_bad_targets(void **state)
{
	(void)state;
	const char *bad[] = {
		"dns:///localhost",       /* no port */
		"dns:///localhost:0",     /* bad port */
		"dns:///localhost:7x",    /* bad port */
		"dns://10.0.0.1/users:1", /* a DNS server in the target */
		"dns:///",                /* no name */
		"dns+srv:///_u._tcp.x:1", /* SRV with a port */
		"dns:///[::1:7001",       /* unclosed IPv6 */
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		const char *urls[] = { bad[i] };
		asynq_rpc_channel_cfg cfg = { .urls = urls, .n_urls = 1 };
		asynq_rpc_channel *ch = NULL;
		assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg),
		    ASYNQ_INVALID_ARGUMENT);
		char why[256];
		char u[4][ASYNQ_RPC_URL_MAX];
		assert_int_equal(
		    asynqi_resolve_once(bad[i], NULL, u, 4, why, sizeof(why)),
		    -1);
		assert_non_null(strstr(why, bad[i]));
	}
	/* A name with other URLs; an unknown policy. */
	const char *two[] = { "dns:///localhost:7001", "tcp://127.0.0.1:1" };
	asynq_rpc_channel_cfg cfg = { .urls = two, .n_urls = 2 };
	asynq_rpc_channel *ch = NULL;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg),
	    ASYNQ_INVALID_ARGUMENT);
	cfg = (asynq_rpc_channel_cfg){ .urls = two + 1, .n_urls = 1, .lb = 7 };
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg),
	    ASYNQ_INVALID_ARGUMENT);
}

/* SRV answers as a DNS server sends them, compressed names included. */
static void
test_scale_srv_parse(void **state)
{
	(void)state;
	static const uint8_t msg[] = {
		0x12,
		0x34,
		0x81,
		0x80,
		0,
		1,
		0,
		2,
		0,
		0,
		0,
		0,
		/* question _u._tcp.x SRV IN; "x" at offset 20 */
		2,
		'_',
		'u',
		4,
		'_',
		't',
		'c',
		'p',
		1,
		'x',
		0,
		0,
		33,
		0,
		1,
		/* answer: (ptr 12) SRV IN ttl 30, 10 5 7001 a.(ptr 20) */
		0xc0,
		12,
		0,
		33,
		0,
		1,
		0,
		0,
		0,
		30,
		0,
		10,
		0,
		10,
		0,
		5,
		0x1b,
		0x59,
		1,
		'a',
		0xc0,
		20,
		/* answer: 20 0 7002 b.(ptr 20) */
		0xc0,
		12,
		0,
		33,
		0,
		1,
		0,
		0,
		0,
		30,
		0,
		10,
		0,
		20,
		0,
		0,
		0x1b,
		0x5a,
		1,
		'b',
		0xc0,
		20,
	};
	asynqi_srv recs[4];
	assert_int_equal(asynqi_srv_parse(msg, sizeof(msg), recs, 4), 2);
	assert_int_equal(recs[0].priority, 10);
	assert_int_equal(recs[0].weight, 5);
	assert_int_equal(recs[0].port, 7001);
	assert_string_equal(recs[0].target, "a.x");
	assert_int_equal(recs[1].priority, 20);
	assert_int_equal(recs[1].port, 7002);
	assert_string_equal(recs[1].target, "b.x");
	/* Room for one: the count says two. */
	assert_int_equal(asynqi_srv_parse(msg, sizeof(msg), recs, 1), 2);
	/* Cut anywhere inside an answer: malformed. */
	assert_int_equal(asynqi_srv_parse(msg, sizeof(msg) - 3, recs, 4), -1);
	assert_int_equal(asynqi_srv_parse(msg, 40, recs, 4), -1);
	assert_int_equal(asynqi_srv_parse(msg, 8, recs, 4), -1);
}

/* Replicas that appear get requests; one that disappears while its calls
 * run answers them all and gets no more. */
static void
test_scale_replicas_come_and_go(void **state)
{
	(void)state;
	fixture s[3];
	for (int i = 0; i < 3; i++)
		fx_server(&s[i], TRANSPORT_TCP, NULL, 2);
	fake_dns dns = { .mu = PTHREAD_MUTEX_INITIALIZER };
	/* A URL no channel can dial is left out (logged in words). */
	const char *one[] = { s[0].url, "bogus://calc" };
	fake_set(&dns, one, 2);
	asynq_rpc_resolver res = { fake_resolve, &dns };
	const char *urls[] = { "dns:///calc.test:7001" };
	asynq_rpc_channel_cfg cfg = { .urls = urls,
		.n_urls = 1,
		.resolver = &res,
		.resolve_interval_ms = 100,
		.max_calls = 1 };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg), ASYNQ_OK);
	assert_int_equal(calls_ok(ch, M(TWICE), 6), 6);
	assert_int_equal(srv_requests(&s[0]), 6);

	/* Two more: within the refresh interval they are dialled. */
	const char *three[] = { s[0].url, s[1].url, s[2].url };
	fake_set(&dns, three, 3);
	assert_true(wait_replicas(ch, 3, 3));
	/* Six one-call requests at once (each naps 200 ms, so all are
	 * outstanding as the later ones are sent): two per replica. */
	assert_int_equal(calls_v_ok(ch, M(NAP), 6, 200, 0), 6);
	assert_int_equal(srv_requests(&s[0]), 6 + 2);
	assert_int_equal(srv_requests(&s[1]), 2);
	assert_int_equal(srv_requests(&s[2]), 2);

	/* s[1] goes from the name while a call naps on each replica. */
	asynq_future *f[3];
	for (int i = 0; i < 3; i++)
		f[i] = call_num(ch, M(NAP), 400);
	asynq_future *kick = asynq_sleep(100 * 1000000u);
	assert_int_equal(asynq_wait(kick), ASYNQ_OK);
	asynq_future_rele(kick);
	const char *two[] = { s[0].url, s[2].url };
	fake_set(&dns, two, 2);
	asynq_rpc_channel_resolve_now(ch);
	assert_int_equal(asynq_wait_all(f, 3), ASYNQ_OK);
	for (int i = 0; i < 3; i++)
		assert_int_equal(num_of(f[i]), 400);
	asynq_future_rele_n(f, 3);
	assert_int_equal(srv_requests(&s[1]), 3);
	/* Once its call was answered it is closed and forgotten. */
	assert_true(wait_replicas(ch, 2, 2));
	assert_int_equal(calls_ok(ch, M(TWICE), 8), 8);
	assert_int_equal(srv_requests(&s[1]), 3);
	assert_int_equal(srv_requests(&s[0]) + srv_requests(&s[2]),
	    6 + 2 + 2 + 2 + 8);
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(ch, &cs);
	assert_int_equal(cs.failures, 0);

	/* Resolution fails: the replicas stay and calls go on. */
	pthread_mutex_lock(&dns.mu);
	dns.fail = true;
	int before = dns.calls;
	pthread_mutex_unlock(&dns.mu);
	asynq_rpc_channel_resolve_now(ch);
	for (int i = 0; i < 500; i++) {
		pthread_mutex_lock(&dns.mu);
		bool done = dns.calls > before;
		pthread_mutex_unlock(&dns.mu);
		if (done)
			break;
		sleep_ms(10);
	}
	assert_int_equal(calls_ok(ch, M(TWICE), 4), 4);
	assert_int_equal(n_ready(ch), 2);
	asynq_rpc_channel_free(ch);
	for (int i = 0; i < 3; i++)
		srv_stop(&s[i]);
	asynq_thread_fini();
}

/* A name that does not resolve fails calls UNAVAILABLE, saying why. */
static void
test_scale_unresolved_name_fails_in_words(void **state)
{
	(void)state;
	fake_dns dns = { .mu = PTHREAD_MUTEX_INITIALIZER, .fail = true };
	asynq_rpc_resolver res = { fake_resolve, &dns };
	const char *urls[] = { "dns:///nowhere.test:7001" };
	asynq_rpc_channel_cfg cfg = { .urls = urls,
		.n_urls = 1,
		.resolver = &res };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg), ASYNQ_OK);
	asynq_future *f = call_num(ch, M(TWICE), 1);
	assert_int_equal(asynq_wait(f), ASYNQ_UNAVAILABLE);
	const char *msg = asynq_error_message(asynq_future_error(f));
	assert_non_null(strstr(msg,
	    "fake: dns:///nowhere.test:7001 has no "
	    "records"));
	asynq_future_rele(f);
	asynq_rpc_channel_free(ch);
	asynq_thread_fini();
}

/* max_replicas at limit-1, limit and limit+1, and the default (64). */
static void
test_scale_max_replicas(void **state)
{
	(void)state;
	struct {
		size_t max;
		int given;
		size_t kept;
	} cases[] = {
		{ 3, 2, 2 },
		{ 3, 3, 3 },
		{ 3, 4, 3 },
		{ 0, 63, 63 },
		{ 0, 64, 64 },
		{ 0, 65, 64 },
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		fake_dns dns = { .mu = PTHREAD_MUTEX_INITIALIZER };
		dns.n = cases[c].given;
		for (int i = 0; i < dns.n; i++)
			snprintf(dns.urls[i], ASYNQ_RPC_URL_MAX,
			    "tcp://127.0.0.1:%d", 1 + i + 100 * (int)c);
		asynq_rpc_resolver res = { fake_resolve, &dns };
		const char *urls[] = { "dns:///many.test:1" };
		asynq_rpc_channel_cfg cfg = { .urls = urls,
			.n_urls = 1,
			.resolver = &res,
			.max_replicas = cases[c].max };
		asynq_rpc_channel *ch;
		assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg),
		    ASYNQ_OK);
		size_t n = 0;
		for (int i = 0; i < 500 && n == 0; i++) {
			n = asynq_rpc_channel_replicas(ch, NULL, 0);
			if (n == 0)
				sleep_ms(10);
		}
		assert_int_equal(n, cases[c].kept);
		asynq_rpc_replica_info last = rep_of(ch, dns.urls[n - 1]);
		assert_string_equal(last.url, dns.urls[n - 1]);
		/* Closed once every first attempt has failed (nothing
		 * listens there): nng 1.5.2 may abort when a dial is stopped
		 * while it resolves the address. */
		for (int i = 0; i < 500 && n_failed(ch) < n; i++)
			sleep_ms(10);
		assert_int_equal(n_failed(ch), n);
		asynq_rpc_channel_free(ch);
	}
}

/* ---- Balancing ------------------------------------------------------------
 */

static asynq_rpc_channel *
open_list(fixture *s, size_t n, int lb, size_t max_calls)
{
	const char *urls[8];
	for (size_t i = 0; i < n; i++)
		urls[i] = s[i].url;
	asynq_rpc_channel_cfg cfg = { .urls = urls,
		.n_urls = n,
		.lb = lb,
		.max_calls = max_calls };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg), ASYNQ_OK);
	assert_true(wait_replicas(ch, n, n));
	return ch;
}

/* Round robin: one request after another, each replica in turn; fewest
 * outstanding: the same when every count is 0 (ties in turn). */
static void
test_scale_round_robin_and_least(void **state)
{
	(void)state;
	fixture s[3];
	for (int i = 0; i < 3; i++)
		fx_server(&s[i], TRANSPORT_TCP, NULL, 2);
	int lbs[] = { ASYNQ_RPC_LB_ROUND_ROBIN,
		ASYNQ_RPC_LB_LEAST_OUTSTANDING };
	for (int k = 0; k < 2; k++) {
		uint64_t before[3];
		for (int i = 0; i < 3; i++)
			before[i] = srv_requests(&s[i]);
		asynq_rpc_channel *ch = open_list(s, 3, lbs[k], 0);
		for (int j = 0; j < 30; j++)
			assert_int_equal(calls_ok(ch, M(TWICE), 1), 1);
		for (int i = 0; i < 3; i++) {
			assert_int_equal(srv_requests(&s[i]) - before[i], 10);
			assert_int_equal(rep_of(ch, s[i].url).requests, 10);
		}
		asynq_rpc_channel_free(ch);
	}
	for (int i = 0; i < 3; i++)
		srv_stop(&s[i]);
	asynq_thread_fini();
}

/* The calls of one worker over max_calls go out as several requests, and
 * those go to different replicas. A batch is sent as soon as it holds
 * max_calls calls (the next call starts a new one), so the requests of 30
 * calls at 10 a request leave one after another; each goes to the replica
 * with the fewest outstanding, so while the earlier ones are still there
 * (the calls nap 300 ms) they go one to each, and 60 calls two to each. A
 * batch cut by size within one flush (12 calls of 1,100 bytes, at most 3
 * in a request of 4 KiB) spreads its 4 requests over all three. */
static void
test_scale_split_batch_spreads(void **state)
{
	(void)state;
	fixture s[3];
	for (int i = 0; i < 3; i++)
		fx_server(&s[i], TRANSPORT_TCP, NULL, 2);
	asynq_rpc_channel *ch =
	    open_list(s, 3, ASYNQ_RPC_LB_LEAST_OUTSTANDING, 10);
	assert_int_equal(calls_v_ok(ch, M(NAP), 30, 300, 0), 30);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(srv_requests(&s[i]), 1);
		assert_int_equal(rep_of(ch, s[i].url).calls, 10);
	}
	assert_int_equal(calls_v_ok(ch, M(NAP), 60, 300, 0), 60);
	for (int i = 0; i < 3; i++)
		assert_int_equal(srv_requests(&s[i]), 3);
	asynq_rpc_channel_free(ch);

	const char *urls[] = { s[0].url, s[1].url, s[2].url };
	asynq_rpc_channel_cfg cfg = { .urls = urls,
		.n_urls = 3,
		.max_msg_bytes = 4096 };
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg), ASYNQ_OK);
	assert_true(wait_replicas(ch, 3, 3));
	assert_int_equal(calls_v_ok(ch, M(TWICE), 12, 1, 1100), 12);
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(ch, &cs);
	assert_int_equal(cs.requests, 4);
	uint64_t most = 0;
	for (int i = 0; i < 3; i++) {
		uint64_t n = srv_requests(&s[i]) - 3;
		assert_true(n >= 1);
		most = n > most ? n : most;
	}
	assert_int_equal(most, 2);
	asynq_rpc_channel_free(ch);
	for (int i = 0; i < 3; i++)
		srv_stop(&s[i]);
	asynq_thread_fini();
}

/* ---- Ejection ----------------------------------------------------------- */

/* A Calc server whose Twice fails UNAVAILABLE while `broken` is 1, and
 * answers after 1.5 s while it is 2. */
static atomic_int broken;

static asynq_status
h_broken_twice(asynq_task *t, const ProtobufCMessage *req,
    ProtobufCMessage **reply, void *ctx)
{
	(void)ctx;
	const Asynq__Rpctest__Num *in = (const Asynq__Rpctest__Num *)req;
	if (atomic_load(&broken) == 2) {
		/* Slow: answers after the caller's deadline. */
		asynq_future *f = asynq_sleep(1500 * 1000000u);
		asynq_status st = asynq_await(t, f);
		asynq_future_rele(f);
		ASYNQ_TRY(st);
	} else if (atomic_load(&broken)) {
		return asynq_fail(t, ASYNQ_UNAVAILABLE, "database down");
	}
	Asynq__Rpctest__Num *out = num_new(in->v * 2);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	*reply = &out->base;
	return ASYNQ_OK;
}

static void
broken_server(fixture *fx)
{
	static asynq_rpc_handler h[32];
	assert_true(CALC->n_methods <= 32);
	memcpy(h, calc_handlers, CALC->n_methods * sizeof(h[0]));
	h[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_TWICE].unary = h_broken_twice;
	memset(fx, 0, sizeof(*fx));
	asynq_runtime_cfg rcfg = { .workers = 1 };
	assert_int_equal(asynq_runtime_alloc(&fx->rt, &rcfg), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_alloc(&fx->srv, fx->rt, NULL),
	    ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_add_service(fx->srv, CALC, h, NULL),
	    ASYNQ_OK);
	url_make(fx->url, sizeof(fx->url), TRANSPORT_TCP);
	assert_int_equal(asynq_rpc_server_listen(fx->srv, fx->url), ASYNQ_OK);
}

/* Sends single-call requests until `bad` has had n of them (bounded):
 * with round robin, every other one. */
static void
calls_until(asynq_rpc_channel *ch, const fixture *bad, uint64_t n)
{
	for (int i = 0; i < 100 && srv_requests(bad) < n; i++)
		(void)calls_ok(ch, M(TWICE), 1);
	assert_int_equal(srv_requests(bad), n);
}

/* eject_after 3: after 2 failures in a row the replica still takes
 * requests, after 3 it takes none; when it serves again the probe takes
 * it back; a probe it fails (not serving) keeps it out. */
static void
test_scale_eject_and_probe(void **state)
{
	(void)state;
	fixture good, bad;
	fx_server(&good, TRANSPORT_TCP, NULL, 2);
	broken_server(&bad);
	atomic_store(&broken, 1);
	const char *urls[] = { good.url, bad.url };
	asynq_rpc_channel_cfg cfg = { .urls = urls,
		.n_urls = 2,
		.lb = ASYNQ_RPC_LB_ROUND_ROBIN,
		.eject_after = 3,
		.eject_base_ms = 300 };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg), ASYNQ_OK);
	assert_true(wait_replicas(ch, 2, 2));
	calls_until(ch, &bad, 2); /* limit - 1 */
	assert_false(rep_of(ch, bad.url).ejected);
	calls_until(ch, &bad, 3); /* limit */
	assert_true(rep_of(ch, bad.url).ejected);
	assert_int_equal(rep_of(ch, bad.url).ejections, 1);
	/* Ejected: the next 20 requests all go to the good one. */
	uint64_t g0 = srv_requests(&good);
	for (int i = 0; i < 20; i++)
		assert_int_equal(calls_ok(ch, M(TWICE), 1), 1);
	assert_int_equal(srv_requests(&good) - g0, 20);
	assert_int_equal(srv_requests(&bad), 3);

	/* It serves again, but says it is not serving: the probe keeps it
	 * out. */
	atomic_store(&broken, 0);
	asynq_rpc_server_set_serving(bad.srv, false);
	uint64_t t0 = asynq_now_ns();
	while (ms_since(t0) < 1000) {
		assert_int_equal(calls_ok(ch, M(TWICE), 1), 1);
		sleep_ms(20);
	}
	asynq_rpc_replica_info r = rep_of(ch, bad.url);
	assert_true(r.ejected);
	assert_int_equal(r.ejections, 1);
	/* Only health checks reached it, no Twice. */
	uint64_t twice_runs = 0;
	for (size_t i = 0; i < asynq_rpc_server_methods(bad.srv); i++) {
		asynq_rpc_method_stats ms;
		assert_int_equal(
		    asynq_rpc_server_method_stats_get(bad.srv, i, &ms),
		    ASYNQ_OK);
		if (ms.method != M(TWICE))
			continue;
		for (int c = 0; c < ASYNQ_STATUS_COUNT; c++)
			twice_runs += ms.codes[c];
	}
	assert_int_equal(twice_runs, 3);
	assert_true(srv_requests(&bad) > 3);

	/* Serving: within a few probe periods it is back and gets half. */
	asynq_rpc_server_set_serving(bad.srv, true);
	t0 = asynq_now_ns();
	while (rep_of(ch, bad.url).ejected && ms_since(t0) < 5000) {
		assert_int_equal(calls_ok(ch, M(TWICE), 1), 1);
		sleep_ms(20);
	}
	assert_false(rep_of(ch, bad.url).ejected);
	uint64_t b0 = rep_of(ch, bad.url).requests;
	for (int i = 0; i < 20; i++)
		assert_int_equal(calls_ok(ch, M(TWICE), 1), 1);
	assert_int_equal(rep_of(ch, bad.url).requests - b0, 10);
	asynq_rpc_channel_free(ch);
	srv_stop(&good);
	srv_stop(&bad);
	asynq_thread_fini();
}

/* The last ready replica is never ejected, however often it fails. */
static void
test_scale_last_replica_never_ejected(void **state)
{
	(void)state;
	fixture bad;
	broken_server(&bad);
	atomic_store(&broken, 1);
	const char *urls[] = { bad.url };
	asynq_rpc_channel_cfg cfg = { .urls = urls,
		.n_urls = 1,
		.eject_after = 2 };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg), ASYNQ_OK);
	for (int i = 0; i < 10; i++)
		assert_int_equal(calls_ok(ch, M(TWICE), 1), 0);
	assert_false(rep_of(ch, bad.url).ejected);
	assert_int_equal(srv_requests(&bad), 10);
	atomic_store(&broken, 0);
	assert_int_equal(calls_ok(ch, M(TWICE), 1), 1);
	asynq_rpc_channel_free(ch);
	srv_stop(&bad);
	asynq_thread_fini();
}

/* Requests whose deadline passes on a replica count as its failures: a
 * replica that answers too late (its Twice takes 1.5 s, the deadline is
 * 400 ms) is ejected after eject_after (2) of them, and the next calls
 * all go to the other and succeed. */
static void
test_scale_timeouts_eject(void **state)
{
	(void)state;
	fixture good, slow;
	fx_server(&good, TRANSPORT_TCP, NULL, 2);
	broken_server(&slow);
	atomic_store(&broken, 2);
	const char *urls[] = { good.url, slow.url };
	asynq_rpc_channel_cfg cfg = { .urls = urls,
		.n_urls = 2,
		.lb = ASYNQ_RPC_LB_ROUND_ROBIN,
		.default_deadline_ms = 400,
		.eject_after = 2,
		.eject_base_ms = 60000 };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg), ASYNQ_OK);
	assert_true(wait_replicas(ch, 2, 2));
	size_t ok = 0;
	for (int i = 0; i < 4; i++)
		ok += calls_ok(ch, M(TWICE), 1);
	/* Round robin: two went to the slow one and timed out. */
	assert_int_equal(ok, 2);
	assert_true(rep_of(ch, slow.url).ejected);
	for (int i = 0; i < 10; i++)
		assert_int_equal(calls_ok(ch, M(TWICE), 1), 1);
	assert_int_equal(rep_of(ch, slow.url).requests, 2);
	atomic_store(&broken, 0);
	asynq_rpc_channel_free(ch);
	srv_stop(&good);
	srv_stop(&slow);
	asynq_thread_fini();
}

/* ---- Retries elsewhere ----------------------------------------------------
 */

/* This binary as a Calc server on url in another process: it writes 'R'
 * to fd 3 once listening and 'N' or 'S' when a Nap or Sleep starts. */
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
	        ASYNQ_OK ||
	    asynq_rpc_server_listen(srv, url) != ASYNQ_OK)
		return 2;
	notify('R');
	for (int i = 0; i < 600; i++)
		sleep(1); /* killed by the test well before */
	return 0;
}

static pid_t
serve_child(const char *url, int *rfd)
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

/* Reads n notifications from fd (any of 'N', 'S') within ms. */
static bool
expect_n(int fd, int n, int ms)
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
		n -= got == 'N' || got == 'S' || got == 'R';
	}
	return true;
}

typedef struct lost_job {
	asynq_rpc_channel *ch;
	asynq_status nap[4], sleep[2];
	int64_t ms;
} lost_job;

static asynq_status
lost_job_main(asynq_task *t, void *arg)
{
	lost_job *j = arg;
	asynq_future *f[6];
	uint64_t t0 = asynq_now_ns();
	/* One call per request (max_calls 1): they alternate between the
	 * two replicas, Nap, Sleep, Nap, Sleep, Nap, Nap. */
	f[0] = call_num(j->ch, M(NAP), 800);
	f[1] = call_num(j->ch, M(NAP), 800);
	f[2] = call_num(j->ch, M(SLEEP), 800);
	f[3] = call_num(j->ch, M(SLEEP), 800);
	f[4] = call_num(j->ch, M(NAP), 800);
	f[5] = call_num(j->ch, M(NAP), 800);
	(void)asynq_await_all(t, f, 6);
	j->ms = ms_since(t0);
	j->nap[0] = asynq_future_status(f[0]);
	j->nap[1] = asynq_future_status(f[1]);
	j->nap[2] = asynq_future_status(f[4]);
	j->nap[3] = asynq_future_status(f[5]);
	j->sleep[0] = asynq_future_status(f[2]);
	j->sleep[1] = asynq_future_status(f[3]);
	asynq_future_rele_n(f, 6);
	return ASYNQ_OK;
}

/* A replica's process dies with a call of each kind running on it: its
 * idempotent calls are answered by the other replica within their
 * deadline; its non-idempotent call fails (it may have run) and is not run
 * on the other. */
static void
test_scale_lost_replica_retried_elsewhere(void **state)
{
	(void)state;
	char far[64];
	url_make(far, sizeof(far), TRANSPORT_TCP);
	int rfd;
	pid_t pid = serve_child(far, &rfd);
	assert_true(expect_n(rfd, 1, 20000));
	/* Admission control off: under TSan the resent naps can queue past
	 * its 5 ms target and be refused RESOURCE_EXHAUSTED, with no other
	 * replica left to take them (test_admission covers refusals). */
	asynq_rpc_server_cfg scfg = { .queue_target_us = UINT32_MAX };
	fixture near;
	fx_server(&near, TRANSPORT_TCP, &scfg, 2);
	const char *urls[] = { far, near.url };
	asynq_rpc_channel_cfg cfg = { .urls = urls,
		.n_urls = 2,
		.lb = ASYNQ_RPC_LB_ROUND_ROBIN,
		.max_calls = 1,
		.default_deadline_ms = 5000 };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg), ASYNQ_OK);
	assert_true(wait_replicas(ch, 2, 2));
	atomic_store(&nap_runs, 0);
	atomic_store(&sleep_started, 0);
	asynq_runtime *crt;
	asynq_runtime_cfg rcfg = { .workers = 1 };
	assert_int_equal(asynq_runtime_alloc(&crt, &rcfg), ASYNQ_OK);
	lost_job j = { .ch = ch };
	asynq_ticket *tk;
	assert_int_equal(asynq_runtime_submit(crt, 0, lost_job_main, &j, &tk),
	    ASYNQ_OK);
	/* Three calls start in the child (two naps, a sleep): kill it. */
	bool started = expect_n(rfd, 3, 20000);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(rfd);
	assert_true(started);
	assert_int_equal(asynq_ticket_wait(tk), ASYNQ_OK);
	asynq_ticket_free(tk);
	for (int i = 0; i < 4; i++)
		assert_int_equal(j.nap[i], ASYNQ_OK);
	/* One Sleep ran here and succeeded; the one that ran in the child
	 * failed and did not run here. */
	int ok = (j.sleep[0] == ASYNQ_OK) + (j.sleep[1] == ASYNQ_OK);
	assert_int_equal(ok, 1);
	asynq_status lost = j.sleep[0] == ASYNQ_OK ? j.sleep[1] : j.sleep[0];
	assert_true(lost == ASYNQ_ABORTED || lost == ASYNQ_UNAVAILABLE);
	assert_int_equal(atomic_load(&sleep_started), 1);
	/* All four naps ran here in the end: two first, two again. */
	assert_int_equal(atomic_load(&nap_runs), 4);
	assert_true(j.ms < 5000);
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(ch, &cs);
	assert_true(cs.resends >= 3);
	asynq_runtime_free(crt);
	asynq_rpc_channel_free(ch);
	srv_stop(&near);
	asynq_thread_fini();
}

int
main(int argc, char **argv)
{
	self_exe = argv[0];
	if (argc == 3 && strcmp(argv[1], "--serve") == 0)
		return serve_main(argv[2]);
	signal(SIGPIPE, SIG_IGN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_scale_dns_localhost),
		cmocka_unit_test(test_scale_bad_targets),
		cmocka_unit_test(test_scale_srv_parse),
		cmocka_unit_test(test_scale_replicas_come_and_go),
		cmocka_unit_test(test_scale_unresolved_name_fails_in_words),
		cmocka_unit_test(test_scale_max_replicas),
		cmocka_unit_test(test_scale_round_robin_and_least),
		cmocka_unit_test(test_scale_split_batch_spreads),
		cmocka_unit_test(test_scale_eject_and_probe),
		cmocka_unit_test(test_scale_last_replica_never_ejected),
		cmocka_unit_test(test_scale_timeouts_eject),
		cmocka_unit_test(test_scale_lost_replica_retried_elsewhere),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
