/* SPDX-License-Identifier: MIT */
/*
 * The health service every server answers (proto/asynq/health.proto),
 * called with the RPC client as any other service: Check of the server, of
 * its services and of a service it lacks, batched in one request; answers
 * that follow asynq_rpc_server_set_serving; and the server's states as
 * asynq_rpc_server_serving reports them from start to close, with a call
 * in flight while it drains.
 */
#include "tests/rpc/rpc_fixture.h"

#include "proto/asynq/health.asynq.h"

#define HEALTH (&asynq__health__v1__health__asynq_desc)
#define STATUS(x) ASYNQ__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__##x

/* A channel to the health service of the fixture's server. */
static asynq_rpc_channel *
health_channel(const fixture *fx)
{
	const char *urls[] = { fx->url };
	asynq_rpc_channel_cfg cfg = { .urls = urls, .n_urls = 1 };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, HEALTH, &cfg), ASYNQ_OK);
	return ch;
}

static asynq_future *
check_call(asynq_rpc_channel *ch, const char *service)
{
	Asynq__Health__V1__HealthCheckRequest req =
	    ASYNQ__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	req.service = (char *)service;
	return asynq__health__v1__health__check__call(ch, &req);
}

/* The status a computed Check future answered; -1 if it failed. */
static int
status_of(asynq_future *f)
{
	const Asynq__Health__V1__HealthCheckResponse *r =
	    asynq__health__v1__health__check__reply(f);
	return r != NULL ? (int)r->status : -1;
}

/* Checks `service` from the test thread and returns the answer. */
static int
check(asynq_rpc_channel *ch, const char *service)
{
	asynq_future *f = check_call(ch, service);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	int st = status_of(f);
	asynq_future_rele(f);
	return st;
}

static void
test_health_check_server_and_services(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	asynq_rpc_channel *hc = health_channel(&fx);
	asynq_rpc_server_stats before = fx_stats(&fx);

	/* Four checks made together travel as one request. */
	asynq_future *f[4] = {
		check_call(hc, ""),
		check_call(hc, "asynq.rpctest.Calc"),
		check_call(hc, "asynq.health.v1.Health"),
		check_call(hc, "asynq.rpctest.Missing"),
	};
	assert_int_equal(asynq_wait_all(f, 4), ASYNQ_OK);
	assert_int_equal(status_of(f[0]), STATUS(SERVING));
	assert_int_equal(status_of(f[1]), STATUS(SERVING));
	assert_int_equal(status_of(f[2]), STATUS(SERVING));
	assert_int_equal(status_of(f[3]), STATUS(SERVICE_UNKNOWN));
	asynq_future_rele_n(f, 4);

	asynq_rpc_server_stats after = fx_stats(&fx);
	assert_int_equal(after.calls - before.calls, 4);
	assert_int_equal(after.requests - before.requests, 1);
	/* A prefix of a service's name is not a service. */
	assert_int_equal(check(hc, "asynq.rpctest.Cal"),
	    STATUS(SERVICE_UNKNOWN));
	assert_true(asynq_rpc_server_has_service(fx.srv, "asynq.rpctest.Calc"));
	assert_false(asynq_rpc_server_has_service(fx.srv, "asynq.rpctest"));

	asynq_rpc_channel_free(hc);
	fx_stop(&fx);
}

static void
test_health_follows_set_serving(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	asynq_rpc_channel *hc = health_channel(&fx);
	assert_int_equal(asynq_rpc_server_serving(fx.srv), ASYNQ_RPC_SERVING);

	asynq_rpc_server_set_serving(fx.srv, false);
	assert_int_equal(asynq_rpc_server_serving(fx.srv),
	    ASYNQ_RPC_NOT_SERVING);
	assert_string_equal(asynq_rpc_serving_name(ASYNQ_RPC_NOT_SERVING),
	    "not serving");
	assert_int_equal(check(hc, ""), STATUS(NOT_SERVING));
	assert_int_equal(check(hc, "asynq.rpctest.Calc"), STATUS(NOT_SERVING));
	assert_int_equal(check(hc, "no.such.Service"), STATUS(SERVICE_UNKNOWN));
	/* Not serving, it still answers its calls. */
	asynq_future *t = call_num(fx.ch, M(TWICE), 21);
	assert_int_equal(asynq_wait(t), ASYNQ_OK);
	assert_int_equal(num_of(t), 42);
	asynq_future_rele(t);

	asynq_rpc_server_set_serving(fx.srv, true);
	assert_int_equal(check(hc, ""), STATUS(SERVING));

	asynq_rpc_channel_free(hc);
	fx_stop(&fx);
}

/* What the drain test saw, from a task of the test thread. */
typedef struct drain_job {
	fixture *fx;
	asynq_rpc_channel *hc;
	pthread_t closer;
	bool held, draining, closer_started;
	asynq_status check_st;
	int check_status; /* the answer, when check_st is OK */
} drain_job;

static void *
closer_main(void *arg)
{
	asynq_rpc_server_close(arg);
	return NULL;
}

static bool
sleep_until(asynq_task *t, bool (*cond)(void *), void *arg)
{
	uint64_t t0 = asynq_now_ns();
	while (!cond(arg)) {
		if (ms_since(t0) > 10000)
			return false;
		asynq_future *s = asynq_sleep(1000000);
		(void)asynq_await(t, s);
		asynq_future_rele(s);
	}
	return true;
}

static bool
hold_running(void *arg)
{
	(void)arg;
	return atomic_load(&hold_runs) >= 1;
}

static bool
is_draining(void *arg)
{
	return asynq_rpc_server_serving(arg) == ASYNQ_RPC_DRAINING;
}

static asynq_status
drain_main(asynq_task *t, void *arg)
{
	drain_job *j = arg;
	j->held = sleep_until(t, hold_running, NULL);
	if (!j->held)
		goto out;
	j->closer_started =
	    pthread_create(&j->closer, NULL, closer_main, j->fx->srv) == 0;
	if (!j->closer_started)
		goto out;
	/* Close waits for the Hold call, so the server stays draining. */
	j->draining = sleep_until(t, is_draining, j->fx->srv);
	/* A check while it drains is either refused without running (once
	 * the connection was told to go away) or, read just before that,
	 * answered NOT_SERVING; never SERVING. */
	asynq_future *f = check_call(j->hc, "");
	j->check_st = asynq_await(t, f);
	j->check_status = status_of(f);
	asynq_future_rele(f);
out:
	atomic_store(&hold_release, 1);
	return ASYNQ_OK;
}

static void
test_health_server_states_from_start_to_close(void **state)
{
	(void)state;
	fixture fx;
	memset(&fx, 0, sizeof(fx));
	asynq_runtime_cfg rcfg = { .workers = 2 };
	assert_int_equal(asynq_runtime_alloc(&fx.rt, &rcfg), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_alloc(&fx.srv, fx.rt, NULL),
	    ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_serving(fx.srv), ASYNQ_RPC_STARTING);
	assert_true(
	    asynq_rpc_server_has_service(fx.srv, "asynq.health.v1.Health"));
	/* The health service is there from the start: no other may take
	 * its name. */
	const asynq_rpc_handler mine[1] = { calc_handlers[0] };
	assert_int_equal(
	    asynq_rpc_server_add_service(fx.srv, HEALTH, mine, NULL),
	    ASYNQ_ALREADY_EXISTS);
	assert_string_equal(asynq_rpc_server_last_error(fx.srv),
	    "handler table: method asynq.health.v1.Health/Check is already "
	    "served");
	assert_int_equal(
	    asynq_rpc_server_add_service(fx.srv, CALC, calc_handlers, NULL),
	    ASYNQ_OK);
	url_make(fx.url, sizeof(fx.url), TRANSPORT_TCP);
	assert_int_equal(asynq_rpc_server_listen(fx.srv, fx.url), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_serving(fx.srv), ASYNQ_RPC_SERVING);
	const char *urls[] = { fx.url };
	asynq_rpc_channel_cfg ccfg = { .urls = urls, .n_urls = 1 };
	assert_int_equal(asynq_rpc_channel_alloc(&fx.ch, CALC, &ccfg),
	    ASYNQ_OK);
	asynq_rpc_channel *hc = health_channel(&fx);
	assert_int_equal(check(hc, ""), STATUS(SERVING));

	atomic_store(&hold_runs, 0);
	atomic_store(&hold_release, 0);
	asynq_future *h = call_num(fx.ch, M(HOLD), 1);
	drain_job j = { .fx = &fx, .hc = hc, .check_st = ASYNQ_OK };
	asynq_future *f = asynq_spawn(drain_main, &j);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	assert_true(j.held);
	assert_true(j.closer_started);
	assert_true(j.draining);
	if (j.check_st == ASYNQ_OK)
		assert_int_equal(j.check_status, STATUS(NOT_SERVING));
	else
		assert_int_equal(j.check_st, ASYNQ_UNAVAILABLE);
	/* The call in flight when the drain began was answered. */
	assert_int_equal(asynq_wait(h), ASYNQ_OK);
	assert_int_equal(num_of(h), 2);
	asynq_future_rele(h);
	assert_int_equal(pthread_join(j.closer, NULL), 0);
	assert_int_equal(asynq_rpc_server_serving(fx.srv), ASYNQ_RPC_CLOSED);

	asynq_rpc_channel_free(hc);
	fx_stop(&fx);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_health_check_server_and_services),
		cmocka_unit_test(test_health_follows_set_serving),
		cmocka_unit_test(test_health_server_states_from_start_to_close),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
