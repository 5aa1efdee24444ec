/* SPDX-License-Identifier: MIT */
/*
 * What a server logs (asynq/log.h), read as a log pipeline would: its life
 * (listen, draining, closed), a slow request at warn, and with access_log
 * one line per request naming its first method and its calls.
 */
#include "asynq/log.h"
#include "tests/rpc/rpc_fixture.h"

static pthread_mutex_t cap_mu = PTHREAD_MUTEX_INITIALIZER;
static char cap[16384];
static size_t cap_len;

static void
capture(const char *line, size_t n, void *arg)
{
	(void)arg;
	pthread_mutex_lock(&cap_mu);
	if (cap_len + n < sizeof(cap)) {
		memcpy(cap + cap_len, line, n);
		cap_len += n;
		cap[cap_len] = '\0';
	}
	pthread_mutex_unlock(&cap_mu);
}

/* The number of captured lines containing every one of the strings. */
static int
lines_with(const char *a, const char *b, const char *c)
{
	int count = 0;
	pthread_mutex_lock(&cap_mu);
	for (char *l = cap; *l != '\0';) {
		char *end = strchr(l, '\n');
		size_t n = end != NULL ? (size_t)(end - l) : strlen(l);
		char line[2048];
		snprintf(line, sizeof(line), "%.*s", (int)n, l);
		if (strstr(line, a) != NULL && (b == NULL || strstr(line, b)) &&
		    (c == NULL || strstr(line, c)))
			count++;
		l += n + (end != NULL);
	}
	pthread_mutex_unlock(&cap_mu);
	return count;
}

typedef struct trio {
	asynq_rpc_channel *ch;
	asynq_status st;
} trio;

static asynq_status
three_twice(asynq_task *t, void *arg)
{
	trio *j = arg;
	asynq_future *fs[3];
	for (int i = 0; i < 3; i++)
		fs[i] = call_num(j->ch, M(TWICE), 10 + i);
	j->st = asynq_await_all(t, fs, 3);
	asynq_future_rele_n(fs, 3);
	return ASYNQ_OK;
}

static void
test_server_logs_life_slow_and_access(void **state)
{
	(void)state;
	asynq_log_set_sink(capture, NULL);
	asynq_log_set_level(ASYNQ_LOG_INFO);
	asynq_rpc_server_cfg cfg = { .access_log = true,
		.slow_request_ms = 50 };
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, &cfg, 0);
	assert_int_equal(
	    lines_with("event=listen", "server=asynq.rpctest.Calc", fx.url), 1);
	trio j = { fx.ch, ASYNQ_UNKNOWN };
	asynq_future *f = asynq_spawn(three_twice, &j);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	assert_int_equal(j.st, ASYNQ_OK);
	/* One request of three calls, one access line. */
	assert_int_equal(lines_with("level=info event=request",
	                     "method=asynq.rpctest.Calc/Twice", "calls=3"),
	    1);
	asynq_future *s = call_num(fx.ch, M(SPIN), 120);
	assert_int_equal(asynq_wait(s), ASYNQ_OK);
	asynq_future_rele(s);
	assert_int_equal(lines_with("level=warn event=slow_request",
	                     "method=asynq.rpctest.Calc/Spin", "calls=1"),
	    1);
	fx_stop(&fx);
	assert_int_equal(
	    lines_with("event=draining", "server=asynq.rpctest.Calc", NULL), 1);
	assert_int_equal(
	    lines_with("event=closed", "server=asynq.rpctest.Calc", NULL), 1);
	asynq_log_set_sink(NULL, NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_server_logs_life_slow_and_access),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
