/* SPDX-License-Identifier: MIT */
/*
 * Per-call settings of RPC calls: a timeout in milliseconds
 * (asynq_rpc_with_timeout, asynq_rpc_timeout_push/pop) beside the absolute
 * deadline, which never extends a caller's deadline; and wait_for_ready
 * per call (asynq_rpc_with_wait_for_ready), overriding the channel's in
 * both directions. Over tcp loopback; a "late" server starts listening
 * after the calls were made.
 */
#include "tests/rpc/rpc_fixture.h"

/* One call of m(v) made by a task under the settings below; what it
 * got. */
typedef struct opt_call {
	asynq_rpc_channel *ch;
	const asynq_rpc_method_desc *m;
	int64_t v;
	uint32_t timeout_ms;  /* 0: none */
	uint32_t timeout2_ms; /* 0: none; a second, inner timeout */
	int wfr;              /* 0: the channel's; 1 wait; 2 fail fast */
	asynq_status st;
	int64_t got;
	int64_t ms;
	char message[200];
} opt_call;

static asynq_status
opt_inner(void *arg)
{
	opt_call *c = arg;
	asynq_task *t = asynq_task_current();
	if (c->timeout2_ms != 0) {
		asynq_status st = asynq_rpc_timeout_push(c->timeout2_ms);
		if (st != ASYNQ_OK)
			return st;
	}
	uint64_t t0 = asynq_now_ns();
	asynq_future *f = call_num(c->ch, c->m, c->v);
	c->st = asynq_await(t, f);
	c->ms = ms_since(t0);
	c->got = c->st == ASYNQ_OK ? num_of(f) : INT64_MIN;
	asynq_error *e = asynq_future_error(f);
	snprintf(c->message, sizeof(c->message), "%s",
	    e != NULL ? asynq_error_message(e) : "");
	asynq_future_rele(f);
	if (c->timeout2_ms != 0)
		return asynq_rpc_timeout_pop();
	return ASYNQ_OK;
}

static asynq_status
opt_timeout(void *arg)
{
	opt_call *c = arg;
	if (c->timeout_ms != 0)
		return asynq_rpc_with_timeout(c->timeout_ms, opt_inner, c);
	return opt_inner(c);
}

static asynq_status
opt_main(asynq_task *t, void *arg)
{
	(void)t;
	opt_call *c = arg;
	if (c->wfr != 0)
		return asynq_rpc_with_wait_for_ready(c->wfr == 1, opt_timeout,
		    c);
	return opt_timeout(c);
}

static void
opt_run(opt_call *c)
{
	asynq_future *f = asynq_spawn(opt_main, c);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

static asynq_rpc_channel *
channel_to(const char *url, bool wfr)
{
	const char *urls[] = { url };
	asynq_rpc_channel_cfg ccfg = {
		.urls = urls,
		.n_urls = 1,
		.default_deadline_ms = 20000,
		.wait_for_ready = wfr,
	};
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &ccfg), ASYNQ_OK);
	return ch;
}

static void
test_timeout_ms(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	/* Connected first: a call still waiting for the channel's first
	 * connection when its deadline passes fails UNAVAILABLE (no server
	 * was reached), which on a loaded machine can take over 100 ms. */
	opt_call w = { .ch = fx.ch,
		.m = M(SLEEP),
		.v = 0,
		.timeout_ms = 10000 };
	opt_run(&w);
	assert_int_equal(w.st, ASYNQ_OK);
	/* A 100 ms timeout on a call that takes 2 s. */
	opt_call c = { .ch = fx.ch,
		.m = M(SLEEP),
		.v = 2000,
		.timeout_ms = 100 };
	opt_run(&c);
	assert_int_equal(c.st, ASYNQ_DEADLINE_EXCEEDED);
	assert_true(c.ms >= 100);
	assert_true(c.ms < 1500);
	/* An inner timeout of 5 s does not extend the outer 100 ms. */
	opt_call d = { .ch = fx.ch,
		.m = M(SLEEP),
		.v = 2000,
		.timeout_ms = 100,
		.timeout2_ms = 5000 };
	opt_run(&d);
	assert_int_equal(d.st, ASYNQ_DEADLINE_EXCEEDED);
	assert_true(d.ms < 1500);
	/* Within its timeout a call succeeds; the server saw a deadline. */
	opt_call e = { .ch = fx.ch,
		.m = M(SLEEP),
		.v = 10,
		.timeout_ms = 5000 };
	opt_run(&e);
	assert_int_equal(e.st, ASYNQ_OK);
	assert_int_equal(e.got, 1);
	/* A pop without a push is refused. */
	assert_int_equal(asynq_rpc_timeout_pop(), ASYNQ_FAILED_PRECONDITION);
	fx_stop(&fx);
}

typedef struct late {
	fixture *fx;
	int delay_ms;
} late;

static void *
late_main(void *arg)
{
	late *l = arg;
	usleep((useconds_t)l->delay_ms * 1000);
	assert_int_equal(asynq_rpc_server_listen(l->fx->srv, l->fx->url),
	    ASYNQ_OK);
	return NULL;
}

/* A fixture whose server listens only after delay_ms. */
static void
late_server(fixture *fx, late *l, pthread_t *th, int delay_ms)
{
	memset(fx, 0, sizeof(*fx));
	asynq_runtime_cfg rcfg = { .workers = 1 };
	assert_int_equal(asynq_runtime_alloc(&fx->rt, &rcfg), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_alloc(&fx->srv, fx->rt, NULL),
	    ASYNQ_OK);
	assert_int_equal(
	    asynq_rpc_server_add_service(fx->srv, CALC, calc_handlers, NULL),
	    ASYNQ_OK);
	url_make(fx->url, sizeof(fx->url), TRANSPORT_TCP);
	l->fx = fx;
	l->delay_ms = delay_ms;
	assert_int_equal(pthread_create(th, NULL, late_main, l), 0);
}

static void
test_wait_for_ready_per_call_on_fail_fast_channel(void **state)
{
	(void)state;
	fixture fx;
	late l;
	pthread_t th;
	late_server(&fx, &l, &th, 400);
	fx.ch = channel_to(fx.url, false);
	/* The channel fails fast: with nothing listening yet, UNAVAILABLE
	 * at once, though the deadline is 20 s. */
	opt_call a = { .ch = fx.ch, .m = M(TWICE), .v = 21 };
	opt_run(&a);
	assert_int_equal(a.st, ASYNQ_UNAVAILABLE);
	assert_true(a.ms < 2000);
	assert_non_null(strstr(a.message, "no server reachable"));
	/* This call waits for ready: it gets its answer once the server
	 * listens (the next attempt after the backoff connects). */
	opt_call b = { .ch = fx.ch, .m = M(TWICE), .v = 21, .wfr = 1 };
	opt_run(&b);
	assert_int_equal(b.st, ASYNQ_OK);
	assert_int_equal(b.got, 42);
	pthread_join(th, NULL);
	fx_stop(&fx);
}

static void
test_fail_fast_per_call_on_waiting_channel(void **state)
{
	(void)state;
	char url[64];
	url_make(url, sizeof(url), TRANSPORT_TCP);
	asynq_rpc_channel *ch = channel_to(url, true);
	/* The channel waits for ready: a call with a 300 ms timeout waits
	 * that long for a server that never comes (then UNAVAILABLE: it was
	 * never sent). */
	opt_call a = { .ch = ch, .m = M(TWICE), .v = 1, .timeout_ms = 300 };
	opt_run(&a);
	assert_int_equal(a.st, ASYNQ_UNAVAILABLE); /* it never left */
	assert_non_null(strstr(a.message, "before the deadline"));
	assert_true(a.ms >= 300);
	/* This call fails fast: UNAVAILABLE at once, saying why. */
	opt_call b = { .ch = ch, .m = M(TWICE), .v = 1, .wfr = 2 };
	opt_run(&b);
	assert_int_equal(b.st, ASYNQ_UNAVAILABLE);
	assert_true(b.ms < 2000);
	assert_non_null(strstr(b.message, "connection refused"));
	asynq_rpc_channel_free(ch);
	asynq_thread_fini();
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_timeout_ms),
		cmocka_unit_test(
		    test_wait_for_ready_per_call_on_fail_fast_channel),
		cmocka_unit_test(test_fail_fast_per_call_on_waiting_channel),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
