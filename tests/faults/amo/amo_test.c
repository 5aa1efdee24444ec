/* SPDX-License-Identifier: MIT */
/*
 * At-most-once execution proven under faults: 100,000 calls of the cache's
 * non-idempotent Incr, each with a unique token, from client tasks through
 * a proxy that cuts connections at random moments (so requests in flight
 * are resent and the server must deduplicate them), while the cache process
 * is also SIGKILLed and restarted on the same port, and SIGSTOPped for a
 * while and then SIGCONTed. The cache's --exec-log files say which tokens
 * ran; the test asserts that none ran twice, that every call the client saw
 * succeed ran exactly once with the value its reply carried, and that each
 * process's counters went up by one per logged execution. It prints calls,
 * OK, ABORTED, UNAVAILABLE, DEADLINE_EXCEEDED, resends and duplicates.
 *
 * Design notes: client tasks and the fault controller run on the test
 * thread (the controller polls with asynq_sleep_for, so calls go on while
 * the cache restarts); the proxy has a thread of its own and shares only
 * atomics. Faults are scheduled by calls made, not by time, so every run
 * has the same number of kills and stops however fast the machine is; their
 * moments within that are random. Calls wait at the threshold of the next
 * fault until the one under way is done, so fast calls cannot finish the
 * run while a restart is still running (4 of 6 kills happened once). Each cache
 * process writes its own log, so the per-process counter check can start from
 * zero for each. Tasks only record; assertions run on the test thread at the
 * end.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <fcntl.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "asynq/tools.h"
#include "services/cache/cache.asynq.h"
#include "services/cache/cache.h"
#include "tests/faults/amo/proxy.h"
#include "tests/common/child.h"

#define MS (1000 * 1000ull)
#define TOTAL 100000
#define CLIENTS 128
#define KEYS 8
#define DEADLINE_MS 1000
/* Faults after every TOTAL / (FAULTS + 1) calls, alternately a SIGKILL
 * and a SIGSTOP. */
#define FAULTS 12
#define STOP_MIN_MS 100
#define STOP_MAX_MS 1500
/* Connection lifetimes through the proxy. */
#define CUT_MIN_MS 1
#define CUT_MAX_MS 15
#define TEST_LIMIT_MS (240 * 1000)
#define MAX_LOGS (FAULTS + 2)

/* What a call ended with, per token index. */
enum {
	OUT_NONE,
	OUT_OK,
	OUT_ABORTED,
	OUT_UNAVAILABLE,
	OUT_DEADLINE,
	OUT_OTHER
};

typedef struct amo_run {
	asynq_rpc_channel *ch;
	proxy *px;
	child srv;
	uint64_t salt; /* high half of every token */
	size_t made;   /* tokens handed out */
	size_t ended;  /* calls ended */
	uint8_t out[TOTAL];
	int64_t value[TOTAL]; /* the reply's value, for OK */
	asynq_status other_st;
	char why[OUT_OTHER + 1][160]; /* the first message of each outcome */
	char logs[MAX_LOGS][1200];
	size_t n_logs;
	size_t kills, stops;
	size_t faults_done;   /* faults the controller finished */
	bool controller_done; /* it ended (all faults, or a failure) */
	bool clients_done;
	char failure[512];
	uint64_t elapsed_ns;
} amo_run;

static uint64_t
token_of(const amo_run *r, size_t i)
{
	return r->salt << 32 | (uint64_t)(i + 1);
}

static void
key_of(size_t i, char *buf, size_t n)
{
	snprintf(buf, n, "counter-%zu", i % KEYS);
}

static asynq_status
client_main(asynq_task *t, void *arg)
{
	amo_run *r = arg;
	char key[32];
	uint64_t start = asynq_now_ns();
	while (r->made < TOTAL && asynq_now_ns() - start < TEST_LIMIT_MS * MS) {
		/* Calls may run past the threshold of the fault under way but
		 * not the next one: fast calls would otherwise use up the
		 * rest while one fault's restart runs, and faults be left
		 * out. */
		if (!r->controller_done &&
		    r->made >= (r->faults_done + 2) * (TOTAL / (FAULTS + 1))) {
			asynq_sleep_for(t, 1 * MS);
			continue;
		}
		size_t i = r->made++;
		key_of(i, key, sizeof(key));
		Asynq__Cache__IncrRequest req =
		    ASYNQ__CACHE__INCR_REQUEST__INIT;
		req.key.data = (uint8_t *)key;
		req.key.len = strlen(key);
		req.delta = 1;
		req.token = token_of(r, i);
		asynq_future *f = asynq__cache__cache__incr__call(r->ch, &req);
		asynq_status st = asynq_await(t, f);
		switch (st) {
		case ASYNQ_OK:
			r->out[i] = OUT_OK;
			r->value[i] =
			    asynq__cache__cache__incr__reply(f)->value;
			break;
		case ASYNQ_ABORTED:
			r->out[i] = OUT_ABORTED;
			break;
		case ASYNQ_UNAVAILABLE:
			r->out[i] = OUT_UNAVAILABLE;
			break;
		case ASYNQ_DEADLINE_EXCEEDED:
			r->out[i] = OUT_DEADLINE;
			break;
		default:
			r->out[i] = OUT_OTHER;
			r->other_st = st;
			break;
		}
		if (st != ASYNQ_OK && r->why[r->out[i]][0] == '\0')
			snprintf(r->why[r->out[i]], sizeof(r->why[0]), "%s",
			    asynq_error_message(asynq_future_error(f)));
		asynq_future_rele(f);
		r->ended++;
		/* No server: do not use up the calls on fast failures. */
		if (st == ASYNQ_UNAVAILABLE)
			asynq_sleep_for(t, 5 * MS);
	}
	return ASYNQ_OK;
}

/* Starts a cache process on the run's port with an exec log of its own. */
static bool
server_start(asynq_task *t, amo_run *r)
{
	for (int i = 0; i < 3; i++) {
		if (r->n_logs >= MAX_LOGS)
			return false;
		char *log = r->logs[r->n_logs++];
		snprintf(log, sizeof(r->logs[0]), "%s/exec-%zu.log",
		    child_tmpdir(), r->n_logs);
		const char *extra[] = { "--exec-log", log, "--quiet", NULL };
		if (!child_spawn(&r->srv, "cache", "cache", extra))
			return false;
		if (child_wait_listening(t, &r->srv, 10000))
			return true;
		asynq_sleep_for(t, 100 * MS);
	}
	return false;
}

static uint64_t
rand_ms(unsigned *seed, uint64_t lo, uint64_t hi)
{
	return lo + (uint64_t)rand_r(seed) % (hi - lo + 1);
}

static asynq_status
controller_main(asynq_task *t, void *arg)
{
	amo_run *r = arg;
	unsigned seed = (unsigned)getpid() ^ (unsigned)asynq_now_ns();
	for (size_t k = 0; k < FAULTS; k++) {
		size_t at = (k + 1) * (TOTAL / (FAULTS + 1));
		while (r->made < at && !r->clients_done)
			asynq_sleep_for(t, 1 * MS);
		if (r->clients_done)
			break;
		/* A random moment after the threshold. */
		asynq_sleep_for(t, rand_ms(&seed, 0, 20) * MS);
		if (k % 2 == 0) {
			kill(r->srv.pid, SIGKILL);
			child_wait_exit(t, &r->srv, asynq_now_ns(), 10000);
			r->kills++;
			if (!server_start(t, r)) {
				snprintf(r->failure, sizeof(r->failure),
				    "the cache did not restart on %s",
				    r->srv.url);
				break;
			}
		} else {
			/* Every other stop without cuts: the requests wait
			 * in the stopped server's socket, their calls reach
			 * their deadline, and the server runs them when it
			 * resumes. With cuts, they are resent meanwhile. */
			bool quiet = k % 4 == 3;
			if (quiet)
				proxy_cutting(r->px, false);
			kill(r->srv.pid, SIGSTOP);
			asynq_sleep_for(t,
			    rand_ms(&seed, STOP_MIN_MS, STOP_MAX_MS) * MS);
			kill(r->srv.pid, SIGCONT);
			if (quiet)
				proxy_cutting(r->px, true);
			r->stops++;
		}
		r->faults_done++;
	}
	r->controller_done = true;
	return ASYNQ_OK;
}

/* Runs the clients, then tells the controller they are done. */
static asynq_status
clients_main(asynq_task *t, void *arg)
{
	amo_run *r = arg;
	asynq_future *fs[CLIENTS];
	for (size_t i = 0; i < CLIENTS; i++)
		fs[i] = asynq_spawn(client_main, r);
	asynq_status st = asynq_await_all(t, fs, CLIENTS);
	asynq_future_rele_n(fs, CLIENTS);
	r->clients_done = true;
	return st;
}

/* What the exec logs say. */
typedef struct exec_count {
	uint8_t runs[TOTAL]; /* executions per token index (saturating) */
	uint64_t records, unknown, torn, duplicates;
	uint64_t ok_not_once;  /* OK calls that did not run exactly once */
	uint64_t wrong_value;  /* OK calls whose reply differs from the log */
	uint64_t out_of_order; /* a process's counter did not go up by 1 */
	uint64_t ran_not_ok;   /* executions the client did not see OK */
} exec_count;

static void
logs_read(const amo_run *r, exec_count *x)
{
	for (size_t l = 0; l < r->n_logs; l++) {
		int fd = open(r->logs[l], O_RDONLY);
		if (fd < 0)
			continue; /* that process never started */
		struct stat sb;
		assert_int_equal(fstat(fd, &sb), 0);
		size_t n = (size_t)sb.st_size / sizeof(cache_exec_record);
		/* A write cut by SIGKILL can leave a partial last record. */
		if ((size_t)sb.st_size % sizeof(cache_exec_record) != 0)
			x->torn++;
		cache_exec_record *recs = malloc(n * sizeof(*recs) + 1);
		assert_non_null(recs);
		size_t want = n * sizeof(*recs), got = 0;
		while (got < want) {
			ssize_t k = read(fd, (char *)recs + got, want - got);
			assert_true(k > 0);
			got += (size_t)k;
		}
		close(fd);
		int64_t last[KEYS] = { 0 }; /* each process starts at 0 */
		for (size_t i = 0; i < n; i++) {
			uint64_t tok = recs[i].token;
			uint64_t idx = (tok & 0xffffffffu) - 1;
			x->records++;
			if (tok >> 32 != r->salt || idx >= TOTAL) {
				x->unknown++;
				continue;
			}
			if (x->runs[idx] < 255)
				x->runs[idx]++;
			if (recs[i].value != last[idx % KEYS] + 1)
				x->out_of_order++;
			last[idx % KEYS] = recs[i].value;
			if (r->out[idx] == OUT_OK &&
			    r->value[idx] != recs[i].value)
				x->wrong_value++;
		}
		free(recs);
	}
	for (size_t i = 0; i < TOTAL; i++) {
		if (x->runs[i] > 1)
			x->duplicates++;
		if (r->out[i] == OUT_OK && x->runs[i] != 1)
			x->ok_not_once++;
		if (r->out[i] != OUT_OK && x->runs[i] > 0)
			x->ran_not_ok++;
	}
}

static asynq_status
first_start_main(asynq_task *t, void *arg)
{
	amo_run *r = arg;
	if (!server_start(t, r))
		snprintf(r->failure, sizeof(r->failure),
		    "the cache did not start on %s", r->srv.url);
	return ASYNQ_OK;
}

static asynq_status
last_stop_main(asynq_task *t, void *arg)
{
	amo_run *r = arg;
	kill(r->srv.pid, SIGTERM);
	uint64_t ns = child_wait_exit(t, &r->srv, asynq_now_ns(), 10000);
	char how[64];
	child_describe_exit(&r->srv, how, sizeof(how));
	if (ns == 0 || !child_exited_0(&r->srv)) {
		child_dump(&r->srv);
		snprintf(r->failure, sizeof(r->failure),
		    "the last cache process %s after SIGTERM",
		    ns == 0 ? "did not exit" : how);
	}
	return ASYNQ_OK;
}

static void
test_amo_incr_runs_at_most_once_under_faults(void **state)
{
	(void)state;
	static amo_run r; /* large; zeroed below */
	static exec_count x;
	memset(&r, 0, sizeof(r));
	memset(&x, 0, sizeof(x));
	child_register(&r.srv);
	r.salt =
	    ((uint64_t)getpid() << 16 ^ (uint64_t)asynq_now_ns()) & 0xffffffffu;
	r.srv.port = child_free_port();
	assert_true(r.srv.port > 0);
	r.px = proxy_start(r.srv.port, CUT_MIN_MS, CUT_MAX_MS);
	assert_non_null(r.px);
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", proxy_port(r.px));
	const char *urls[] = { url };
	asynq_rpc_channel_cfg cfg = {
		.urls = urls,
		.n_urls = 1,
		.default_deadline_ms = DEADLINE_MS,
	};
	assert_int_equal(asynq_rpc_channel_alloc(&r.ch,
	                     &asynq__cache__cache__asynq_desc, &cfg),
	    ASYNQ_OK);

	asynq_future *f = asynq_spawn(first_start_main, &r);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	if (r.failure[0] != '\0')
		fail_msg("%s", r.failure);

	proxy_cutting(r.px, true);
	uint64_t t0 = asynq_now_ns();
	asynq_future *fs[2] = {
		asynq_spawn(controller_main, &r),
		asynq_spawn(clients_main, &r),
	};
	assert_int_equal(asynq_wait_all(fs, 2), ASYNQ_OK);
	asynq_future_rele_n(fs, 2);
	r.elapsed_ns = asynq_now_ns() - t0;
	proxy_cutting(r.px, false);

	/* The last process still stops cleanly. */
	f = asynq_spawn(last_stop_main, &r);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(r.ch, &cs);
	asynq_rpc_channel_free(r.ch);
	asynq_thread_fini();
	uint64_t cuts = proxy_cuts(r.px);
	proxy_stop(r.px);

	logs_read(&r, &x);
	uint64_t n[OUT_OTHER + 1] = { 0 };
	for (size_t i = 0; i < r.made; i++)
		n[r.out[i]]++;
	printf("calls: %zu\n", r.made);
	printf("OK: %llu\n", (unsigned long long)n[OUT_OK]);
	printf("ABORTED: %llu\n", (unsigned long long)n[OUT_ABORTED]);
	printf("UNAVAILABLE: %llu\n", (unsigned long long)n[OUT_UNAVAILABLE]);
	printf("DEADLINE_EXCEEDED: %llu\n",
	    (unsigned long long)n[OUT_DEADLINE]);
	printf("other: %llu\n", (unsigned long long)n[OUT_OTHER]);
	for (int o = OUT_ABORTED; o <= OUT_OTHER; o++)
		if (r.why[o][0] != '\0')
			printf("  first %s: %s\n",
			    o == OUT_ABORTED           ? "ABORTED"
			        : o == OUT_UNAVAILABLE ? "UNAVAILABLE"
			        : o == OUT_DEADLINE    ? "DEADLINE_EXCEEDED"
			                               : "other",
			    r.why[o]);
	printf("resends: %llu\n", (unsigned long long)cs.resends);
	printf("executions logged: %llu (in %zu logs, %llu torn)\n",
	    (unsigned long long)x.records, r.n_logs,
	    (unsigned long long)x.torn);
	printf("ran but not seen OK: %llu\n", (unsigned long long)x.ran_not_ok);
	printf("duplicates found: %llu\n", (unsigned long long)x.duplicates);
	printf("faults: %llu cuts, %zu SIGKILLs, %zu SIGSTOPs\n",
	    (unsigned long long)cuts, r.kills, r.stops);
	printf("test s: %.1f\n", (double)r.elapsed_ns / 1e9);
	fflush(stdout);

	if (r.failure[0] != '\0')
		fail_msg("%s", r.failure);
	/* Every call was made and ended once, each with one outcome. */
	assert_int_equal(r.made, TOTAL);
	assert_int_equal(r.ended, TOTAL);
	assert_int_equal(n[OUT_NONE], 0);
	assert_int_equal(cs.calls, TOTAL);
	assert_int_equal(cs.failures, TOTAL - n[OUT_OK]);
	/* At most once, and exactly once for what the client saw succeed. */
	assert_int_equal(x.duplicates, 0);
	assert_int_equal(x.ok_not_once, 0);
	assert_int_equal(x.wrong_value, 0);
	assert_int_equal(x.unknown, 0);
	assert_int_equal(x.out_of_order, 0);
	if (n[OUT_OTHER] != 0)
		fail_msg("%llu calls failed with %s",
		    (unsigned long long)n[OUT_OTHER],
		    asynq_strerror(r.other_st));
	/* The faults happened and made the client resend. */
	assert_int_equal(r.kills, (FAULTS + 1) / 2);
	assert_int_equal(r.stops, FAULTS / 2);
	assert_true(cuts > 0);
	assert_true(cs.resends > 0);
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
		cmocka_unit_test(test_amo_incr_runs_at_most_once_under_faults),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
