/* SPDX-License-Identifier: MIT */
/*
 * Stop stress test: the cache service as a child process on tcp loopback,
 * under a small continuous load from client tasks, gets SIGTERM 200 times
 * (restarted on the same port after each exit). It checks what an operator
 * and a client would see: every stop ends with exit status 0 within 2 s,
 * every call the client made ended exactly once (OK, UNAVAILABLE,
 * DEADLINE_EXCEEDED or something else, all counted), and no call outlived
 * its deadline. It prints one line per figure: stops, max/p50/p99 exit ms,
 * calls OK/failed.
 *
 * Design notes: the client tasks and the controller (start, wait for calls
 * to succeed, SIGTERM, time the exit, restart) all run on the test thread;
 * the controller polls with asynq_sleep_for, so the load keeps running and
 * call deadlines keep being checked while a child starts or stops. Each
 * call's completion is also counted by an on_done callback on its future,
 * so a future completed twice (or never) shows as a count that differs from
 * the calls made. Assertions run on the test thread after the tasks end;
 * tasks only record.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "asynq/tools.h"
#include "services/cache/cache.asynq.h"
#include "tests/common/child.h"

#define MS (1000 * 1000ull)
#define CYCLES 200
#define CLIENTS 4
#define DEADLINE_MS 1000
/* How late a call may end after its deadline on a busy 2-core machine
 * before it counts as hung. */
#define LATE_SLACK_MS 500
/* A stop must take at most this long... */
#define EXIT_LIMIT_MS 2000
/* ...and the whole test at most this long. */
#define TEST_LIMIT_MS (240 * 1000)
/* Successful calls each cycle waits for before SIGTERM, so calls are in
 * flight when it lands. */
#define CALLS_BEFORE_STOP 10

typedef struct tally {
	uint64_t made, completions; /* calls made; on_done callbacks run */
	uint64_t ok, unavailable, deadline, other;
	asynq_status other_st;
	uint64_t max_call_ns;
	uint64_t late; /* calls that ended past deadline + slack */
} tally;

typedef struct stop_run {
	asynq_rpc_channel *ch;
	child srv;
	bool stop; /* tells the client tasks to finish */
	tally t;
	uint64_t exit_ns[CYCLES];
	size_t stops;
	/* What went wrong first, for the test thread to report. */
	char failure[512];
	uint64_t elapsed_ns;
} stop_run;

static asynq_status
count_completion(asynq_future *f, void *arg)
{
	(void)f;
	((tally *)arg)->completions++;
	return ASYNQ_OK;
}

static asynq_status
client_main(asynq_task *t, void *arg)
{
	stop_run *r = arg;
	static unsigned next_id;
	unsigned id = next_id++;
	char key[16], val[32];
	for (uint64_t i = 0; !r->stop; i++) {
		snprintf(key, sizeof(key), "k%u-%u", id, (unsigned)(i % 16));
		asynq_future *f;
		uint64_t t0 = asynq_now_ns();
		/* Half writes, half reads: both kinds are in flight at a stop.
		 */
		if (i % 2 == 0) {
			Asynq__Cache__SetRequest req =
			    ASYNQ__CACHE__SET_REQUEST__INIT;
			snprintf(val, sizeof(val), "v%llu",
			    (unsigned long long)i);
			req.key.data = (uint8_t *)key;
			req.key.len = strlen(key);
			req.value.data = (uint8_t *)val;
			req.value.len = strlen(val);
			f = asynq__cache__cache__set__call(r->ch, &req);
		} else {
			Asynq__Cache__Key req = ASYNQ__CACHE__KEY__INIT;
			req.key.data = (uint8_t *)key;
			req.key.len = strlen(key);
			f = asynq__cache__cache__get__call(r->ch, &req);
		}
		r->t.made++;
		if (asynq_future_on_done(f, count_completion, &r->t) !=
		    ASYNQ_OK)
			r->t.completions++; /* no memory: counted here */
		asynq_status st = asynq_await(t, f);
		uint64_t ns = asynq_now_ns() - t0;
		asynq_future_rele(f);
		if (ns > r->t.max_call_ns)
			r->t.max_call_ns = ns;
		if (ns > (uint64_t)(DEADLINE_MS + LATE_SLACK_MS) * MS)
			r->t.late++;
		if (st == ASYNQ_OK) {
			r->t.ok++;
			continue;
		}
		if (st == ASYNQ_UNAVAILABLE)
			r->t.unavailable++;
		else if (st == ASYNQ_DEADLINE_EXCEEDED)
			r->t.deadline++;
		else {
			r->t.other++;
			r->t.other_st = st;
		}
		/* The server is down: do not spin on fast failures. */
		asynq_sleep_for(t, 2 * MS);
	}
	return ASYNQ_OK;
}

/* Starts the cache on its port, retrying a few times in case the port is
 * briefly unavailable after the last exit. */
static bool
server_start(asynq_task *t, stop_run *r)
{
	static const char *const quiet[] = { "--quiet", NULL };
	for (int i = 0; i < 3; i++) {
		if (!child_spawn(&r->srv, "cache", "cache", quiet))
			return false;
		if (child_wait_listening(t, &r->srv, 10000))
			return true;
		asynq_sleep_for(t, 100 * MS);
	}
	return false;
}

static asynq_status
controller_main(asynq_task *t, void *arg)
{
	stop_run *r = arg;
	uint64_t test_start = asynq_now_ns();
	unsigned seed = (unsigned)getpid();
	for (size_t i = 0; i < CYCLES; i++) {
		if (asynq_now_ns() - test_start > TEST_LIMIT_MS * MS) {
			snprintf(r->failure, sizeof(r->failure),
			    "only %zu stops within %d s", i,
			    TEST_LIMIT_MS / 1000);
			break;
		}
		if (!server_start(t, r)) {
			snprintf(r->failure, sizeof(r->failure),
			    "cycle %zu: the cache did not start on %s", i,
			    r->srv.url);
			break;
		}
		/* The client reconnects (its calls hurry the dial) and calls
		 * succeed again before the next stop. */
		uint64_t ok0 = r->t.ok, t0 = asynq_now_ns();
		while (r->t.ok < ok0 + CALLS_BEFORE_STOP &&
		    asynq_now_ns() - t0 < 5000 * MS)
			asynq_sleep_for(t, 1 * MS);
		if (r->t.ok < ok0 + CALLS_BEFORE_STOP) {
			snprintf(r->failure, sizeof(r->failure),
			    "cycle %zu: no calls succeeded within 5 s of the "
			    "restart",
			    i);
			break;
		}
		/* Then a random moment more, so that stops land at every
		 * phase of the calls in flight. */
		asynq_sleep_for(t, (uint64_t)(rand_r(&seed) % 20000) * 1000);
		uint64_t sent = asynq_now_ns();
		kill(r->srv.pid, SIGTERM);
		uint64_t ns = child_wait_exit(t, &r->srv, sent, 10000);
		if (ns == 0) {
			snprintf(r->failure, sizeof(r->failure),
			    "cycle %zu: the cache (pid %d) did not exit "
			    "within 10 s of SIGTERM",
			    i, (int)r->srv.pid);
			child_dump(&r->srv);
			break;
		}
		r->exit_ns[r->stops++] = ns;
		char how[64];
		child_describe_exit(&r->srv, how, sizeof(how));
		if (!child_exited_0(&r->srv) || ns > EXIT_LIMIT_MS * MS) {
			snprintf(r->failure, sizeof(r->failure),
			    "cycle %zu: the cache ended with %s %llu ms after "
			    "SIGTERM",
			    i, how, (unsigned long long)(ns / MS));
			child_dump(&r->srv);
			break;
		}
	}
	r->elapsed_ns = asynq_now_ns() - test_start;
	r->stop = true;
	return ASYNQ_OK;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static double
ms_of(uint64_t ns)
{
	return (double)ns / 1e6;
}

static void
test_stop_sigterm_200_under_load(void **state)
{
	(void)state;
	static stop_run r; /* large; zeroed */
	memset(&r, 0, sizeof(r));
	child_register(&r.srv);
	r.srv.port = child_free_port();
	assert_true(r.srv.port > 0);
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", r.srv.port);
	const char *urls[] = { url };
	asynq_rpc_channel_cfg cfg = {
		.urls = urls,
		.n_urls = 1,
		.default_deadline_ms = DEADLINE_MS,
	};
	assert_int_equal(asynq_rpc_channel_alloc(&r.ch,
	                     &asynq__cache__cache__asynq_desc, &cfg),
	    ASYNQ_OK);

	asynq_future *fs[CLIENTS + 1];
	fs[0] = asynq_spawn(controller_main, &r);
	for (size_t i = 0; i < CLIENTS; i++)
		fs[i + 1] = asynq_spawn(client_main, &r);
	assert_int_equal(asynq_wait_all(fs, CLIENTS + 1), ASYNQ_OK);
	asynq_future_rele_n(fs, CLIENTS + 1);
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(r.ch, &cs);
	asynq_rpc_channel_free(r.ch);
	asynq_thread_fini();

	uint64_t sorted[CYCLES];
	memcpy(sorted, r.exit_ns, r.stops * sizeof(*sorted));
	qsort(sorted, r.stops, sizeof(*sorted), cmp_u64);
	uint64_t failed = r.t.unavailable + r.t.deadline + r.t.other;
	printf("stops: %zu\n", r.stops);
	if (r.stops > 0) {
		printf("max exit ms: %.1f\n", ms_of(sorted[r.stops - 1]));
		printf("p50 exit ms: %.1f\n", ms_of(sorted[r.stops / 2]));
		printf("p99 exit ms: %.1f\n",
		    ms_of(sorted[(r.stops * 99) / 100 < r.stops
		            ? (r.stops * 99) / 100
		            : r.stops - 1]));
	}
	printf("calls: %llu\n", (unsigned long long)r.t.made);
	printf("calls OK: %llu\n", (unsigned long long)r.t.ok);
	printf("calls failed: %llu (UNAVAILABLE %llu, DEADLINE_EXCEEDED %llu, "
	       "other %llu)\n",
	    (unsigned long long)failed, (unsigned long long)r.t.unavailable,
	    (unsigned long long)r.t.deadline, (unsigned long long)r.t.other);
	printf("max call ms: %.1f (deadline %d)\n", ms_of(r.t.max_call_ns),
	    DEADLINE_MS);
	printf("resends: %llu\n", (unsigned long long)cs.resends);
	printf("test s: %.1f\n", (double)r.elapsed_ns / 1e9);
	fflush(stdout);

	if (r.failure[0] != '\0')
		fail_msg("%s", r.failure);
	assert_int_equal(r.stops, CYCLES);
	/* Every call ended, exactly once, and the channel agrees. */
	assert_int_equal(r.t.completions, r.t.made);
	assert_int_equal(r.t.ok + failed, r.t.made);
	assert_int_equal(cs.calls, r.t.made);
	assert_int_equal(cs.failures, failed);
	if (r.t.other != 0)
		fail_msg("%llu calls failed with %s",
		    (unsigned long long)r.t.other,
		    asynq_strerror(r.t.other_st));
	if (r.t.late != 0)
		fail_msg("%llu calls ended more than %d ms past their %d ms "
		         "deadline (longest %.1f ms)",
		    (unsigned long long)r.t.late, LATE_SLACK_MS, DEADLINE_MS,
		    ms_of(r.t.max_call_ns));
	assert_true(r.t.ok >= (uint64_t)CYCLES * CALLS_BEFORE_STOP);
}

static int
group_setup(void **state)
{
	(void)state;
	return child_env_init() ? 0 : -1;
}

static int
group_teardown(void **state)
{
	(void)state;
	child_kill_all();
	return 0;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_stop_sigterm_200_under_load),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
