/* SPDX-License-Identifier: MIT */
/*
 * RPC benchmark: `bazel run -c opt //tests/bench:rpc [-- FLAGS]`. A server
 * process and a client process on tcp loopback, the server pinned to CPU 0
 * and the client to CPU 1. Prints in one run: logical calls/s with one call
 * per request and with batches of 16, 100 and 1000, with CPU per call on
 * each side; the fixed (per request) and marginal (per call) CPU cost fitted
 * over those batch sizes; a pipelined shape (800 calls awaited together on a
 * channel capped at 100 calls per request: 8 requests of 100 in flight at
 * the start of each round) and its closed loop (8 tasks each making rounds
 * of 100 calls: 8 requests of 100 in flight all the time, as the gRPC
 * peer keeps 8 GetMany(100) outstanding);
 * whole-batch against per-call handlers; 100 calls of which 30 repeat
 * earlier keys (identical calls collapsed, and with collapsing off);
 * p50/p99 of an unbatched call next
 * to a bare nng req/rep round trip; decode nanoseconds per call. With the
 * gRPC C++ peer (tests/bench/peers/grpc), the same shapes run against gRPC
 * in the same run, interleaved with asynq's, and print as ratios. A report,
 * not a test: a missed target prints OVER and still exits 0; a wrong answer
 * exits 1.
 *
 * Flags:
 *   --grpc-peer DIR  DIR holds lookup_server and lookup_client (built by
 *                    make -C tests/bench/peers/grpc O=DIR); the environment
 *                    variable ASYNQ_BENCH_GRPC_PEER does the same.
 *                    tests/bench/rpc_vs_grpc.sh sets up, builds and passes it
 *   --quick          one short round (a smoke run; figures are rougher)
 *   --rounds N       rounds of every shape (default 5)
 *   --seconds S      measured time per shape per round (default 0.25)
 *   --serve          internal: be the asynq server (see below)
 *
 * Design notes:
 * - Processes. nng must not cross a fork, so servers are new programs
 *   started with posix_spawn: this binary re-executed as
 *   `/proc/self/exe --serve` for asynq, the peer's lookup_server for gRPC,
 *   and the peer's lookup_client as gRPC's client. A process started while
 *   the spawning thread is pinned to a CPU inherits the pin, and so do all
 *   the threads it makes: main pins itself to CPU 1 before anything starts a
 *   thread, and pins itself to CPU 0 around the spawning of each server.
 * - Control. Each server answers a "cpu" line on its stdin with its CPU time
 *   so far ("cpu US"), and its first line says its port ("port N"); the end
 *   of its stdin stops it. The client asks both servers' CPU time around
 *   each shape, so a side's CPU per call covers exactly that shape.
 *   lookup_client runs one shape per "run" line (its file says the rest).
 * - Shapes. Every shape runs for --seconds per round. A round runs every
 *   shape once, asynq and gRPC alternating, in reverse order every other
 *   round so slow drift touches both alike; each figure printed is the
 *   median of that figure over the rounds. An asynq shape of B calls is a
 *   task that makes B calls and awaits them all, spawned and waited for
 *   again and again (one round trip at a time, except in the pipelined
 *   shape, whose B = 800 calls leave as 8 requests); a gRPC shape keeps
 *   DEPTH RPCs outstanding. Every reply of both is checked.
 * - The fit: CPU per request = fixed + marginal x calls, least squares on
 *   relative residuals (weights 1/y^2), so each batch size counts alike
 *   rather than the 1000-call point's noise deciding the fixed cost.
 */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stddef.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <protobuf-c/protobuf-c.h>

#include "asynq/asynq.h"
#include "asynq/log.h"
#include "asynq/rpc.h"
#include "framework/rpc/internal.h"
#include "proto/asynq/rpc.pb-c.h"
#include "tests/bench/bench.asynq.h"
#include "tests/bench/bench.pb-c.h"

extern char **environ;

#define SERVER_CPU 0
#define CLIENT_CPU 1
#define MAX_ROUNDS 15
#define PIPE_CALLS 800 /* the pipelined shape: calls awaited together */
#define PIPE_CAP 100   /* ... on a channel with this max_calls */

static int failures;

static double
now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static double
cpu_us(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec * 1e6 + (double)ru.ru_utime.tv_usec +
	    (double)ru.ru_stime.tv_sec * 1e6 + (double)ru.ru_stime.tv_usec;
}

/* Pins the calling thread (and what it starts from now on) to cpu; does
 * nothing on a machine with one CPU. */
static void
pin(int cpu)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 2)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu % n, &set);
	(void)sched_setaffinity(0, sizeof(set), &set);
}

static void
die(const char *what)
{
	fprintf(stderr, "bench: %s\n", what);
	exit(1);
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

/* The value at rank p of v[0..n) (nearest rank); sorts v. */
static double
percentile(double *v, size_t n, double p)
{
	if (n == 0)
		return 0;
	qsort(v, n, sizeof(*v), cmp_double);
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);
	return v[i];
}

/* ---- The asynq server process (--serve) ------------------------------ */

static asynq_status
serve_get(asynq_task *t, const Asynq__Bench__Id *req, Asynq__Bench__Id **reply,
    void *ctx)
{
	(void)ctx;
	Asynq__Bench__Id *out = asynq__bench__lookup__get__reply_new();
	if (out == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
	out->id = req->id * 3;
	*reply = out;
	return ASYNQ_OK;
}

static asynq_status
serve_get_batch(asynq_task *t,
    asynq__bench__lookup__get_batch__batch_call *calls, size_t n, void *ctx)
{
	(void)t;
	(void)ctx;
	for (size_t i = 0; i < n; i++) {
		Asynq__Bench__Id *out =
		    asynq__bench__lookup__get_batch__reply_new();
		if (out == NULL) {
			calls[i].status = ASYNQ_RESOURCE_EXHAUSTED;
			calls[i].message = "out of memory";
			continue;
		}
		out->id = calls[i].req->id * 3;
		calls[i].reply = out;
		calls[i].status = ASYNQ_OK;
	}
	return ASYNQ_OK;
}

static void *
echo_main(void *arg)
{
	nng_socket *rep = arg;
	for (;;) {
		nng_msg *m;
		if (nng_recvmsg(*rep, &m, 0) != 0)
			return NULL;
		if (nng_sendmsg(*rep, m, 0) != 0)
			nng_msg_free(m);
	}
}

/* The asynq server: Lookup on tcp://127.0.0.1:P with a one-worker runtime,
 * and a bare nng REP echo on P+1 for the baseline round trip. P is the
 * first free pair of a few tried. Runs until its stdin ends. */
static int
serve(void)
{
	signal(SIGPIPE, SIG_IGN);
	/* The report is the client's output: the server's lifecycle lines
	 * would land in the middle of it. */
	asynq_log_set_level(ASYNQ_LOG_WARN);
	asynq_runtime *rt;
	asynq_runtime_cfg rcfg = { .workers = 1 };
	asynq_rpc_server *srv;
	asynq_rpc_server_cfg scfg = { .max_calls = 1000 };
	asynq__bench__lookup__asynq_binding binding;
	static const asynq__bench__lookup__asynq_handlers handlers = {
		.get = serve_get,
		.get_batch = serve_get_batch,
	};
	nng_socket rep;
	if (asynq_runtime_alloc(&rt, &rcfg) != ASYNQ_OK ||
	    asynq_rpc_server_alloc(&srv, rt, &scfg) != ASYNQ_OK ||
	    asynq__bench__lookup__asynq_serve(srv, &handlers, NULL, &binding) !=
	        ASYNQ_OK ||
	    nng_rep0_open(&rep) != 0) {
		fprintf(stderr, "bench server: cannot start the server\n");
		return 1;
	}
	int port = 0;
	for (int i = 0; i < 40 && port == 0; i++) {
		int p = 20000 + (int)((getpid() + i * 7919) % 10000) * 2;
		char url[64], echo_url[64];
		nng_listener l;
		snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", p);
		snprintf(echo_url, sizeof(echo_url), "tcp://127.0.0.1:%d",
		    p + 1);
		if (nng_listen(rep, echo_url, &l, 0) != 0)
			continue;
		if (asynq_rpc_server_listen(srv, url) == ASYNQ_OK)
			port = p;
		else
			nng_listener_close(l);
	}
	pthread_t echo;
	if (port == 0 || pthread_create(&echo, NULL, echo_main, &rep) != 0) {
		fprintf(stderr, "bench server: no free tcp port pair found\n");
		return 1;
	}
	printf("port %d\n", port);
	fflush(stdout);
	char line[64];
	while (fgets(line, sizeof(line), stdin) != NULL) {
		printf("cpu %.0f\n", cpu_us());
		fflush(stdout);
	}
	nng_close(rep);
	pthread_join(echo, NULL);
	asynq_rpc_server_free(srv);
	asynq_runtime_free(rt);
	return 0;
}

/* ---- Child processes ------------------------------------------------- */

typedef struct proc {
	const char *name;
	pid_t pid;
	FILE *in;  /* its stdin */
	FILE *out; /* its stdout */
} proc;

/* Starts argv[0] pinned to cpu with its stdin and stdout on pipes. */
static void
proc_start(proc *p, const char *name, int cpu, char *const argv[])
{
	int in[2], out[2];
	posix_spawn_file_actions_t fa;
	cpu_set_t old;
	char msg[PATH_MAX + 64];

	p->name = name;
	if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 ||
	    posix_spawn_file_actions_init(&fa) != 0 ||
	    posix_spawn_file_actions_adddup2(&fa, in[0], 0) != 0 ||
	    posix_spawn_file_actions_adddup2(&fa, out[1], 1) != 0 ||
	    sched_getaffinity(0, sizeof(old), &old) != 0)
		die("cannot set up a child process");
	pin(cpu);
	int rv = posix_spawn(&p->pid, argv[0], &fa, NULL, argv, environ);
	(void)sched_setaffinity(0, sizeof(old), &old);
	posix_spawn_file_actions_destroy(&fa);
	if (rv != 0) {
		snprintf(msg, sizeof(msg), "cannot start %s: %s", argv[0],
		    strerror(rv));
		die(msg);
	}
	close(in[0]);
	close(out[1]);
	p->in = fdopen(in[1], "w");
	p->out = fdopen(out[0], "r");
	if (p->in == NULL || p->out == NULL)
		die("cannot set up a child process");
}

/* Reads one line of p's output into buf; exits if p is gone. */
static void
proc_read(proc *p, char *buf, size_t n)
{
	if (fgets(buf, (int)n, p->out) == NULL) {
		fprintf(stderr, "bench: lost the %s process\n", p->name);
		exit(1);
	}
}

static void
proc_write(proc *p, const char *line)
{
	if (fputs(line, p->in) == EOF || fflush(p->in) != 0) {
		fprintf(stderr, "bench: lost the %s process\n", p->name);
		exit(1);
	}
}

/* Ends p's stdin (which stops it) and waits for it. */
static void
proc_stop(proc *p)
{
	int status;
	fclose(p->in);
	fclose(p->out);
	if (waitpid(p->pid, &status, 0) == p->pid &&
	    !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
		fprintf(stderr, "bench: the %s process did not exit cleanly\n",
		    p->name);
}

/* A server's CPU time so far, in microseconds. */
static double
server_cpu(proc *p)
{
	char line[128];
	double us;
	proc_write(p, "cpu\n");
	proc_read(p, line, sizeof(line));
	if (sscanf(line, "cpu %lf", &us) != 1) {
		fprintf(stderr, "bench: %s answered: %s", p->name, line);
		exit(1);
	}
	return us;
}

/* Starts a server and returns the port its first line names. */
static int
server_start(proc *p, const char *name, char *const argv[])
{
	char line[128];
	int port;
	proc_start(p, name, SERVER_CPU, argv);
	proc_read(p, line, sizeof(line));
	if (sscanf(line, "port %d", &port) != 1) {
		fprintf(stderr, "bench: %s said: %s", name, line);
		exit(1);
	}
	return port;
}

/* ---- Measurements ---------------------------------------------------- */

/* One measurement of one shape. CPU is per logical call (one id looked
 * up); latency is per round trip (asynq: a round's calls awaited together;
 * gRPC: one RPC). */
typedef struct sample {
	double calls_per_s;
	double client_ns, server_ns;
	double p50_us, p99_us;
	double requests; /* asynq requests per round */
	double sent;     /* asynq calls sent per logical call */
	double inflight; /* closed loop: rounds in flight on average */
} sample;

typedef enum { ASYNQ, GRPC } side;

typedef struct bench {
	proc aserver;              /* asynq server */
	asynq_rpc_channel *ch;     /* max_calls 1000 */
	asynq_rpc_channel *ch100;  /* max_calls 100: the pipelined shape */
	asynq_rpc_channel *ch_all; /* max_calls 1000, no_collapse */
	char echo_url[64];
	bool peer;
	proc gserver, gclient; /* gRPC peer */
	char grpc_version[64];
	asynq_future **fs; /* PIPE_CALLS or 1000 */
	int64_t next_id;
} bench;

typedef struct trip {
	asynq_rpc_channel *ch;
	bool whole_batch;
	size_t n;
	size_t distinct; /* call i asks for base + i % distinct (0: n) */
	int64_t base;
	asynq_future **fs;
} trip;

static asynq_status
trip_task(asynq_task *t, void *arg)
{
	trip *r = arg;
	size_t d = r->distinct != 0 ? r->distinct : r->n;
	for (size_t i = 0; i < r->n; i++) {
		Asynq__Bench__Id id = ASYNQ__BENCH__ID__INIT;
		id.id = r->base + (int64_t)(i % d);
		r->fs[i] = r->whole_batch
		    ? asynq__bench__lookup__get_batch__call(r->ch, &id)
		    : asynq__bench__lookup__get__call(r->ch, &id);
	}
	asynq_status st = asynq_await_all(t, r->fs, r->n);
	for (size_t i = 0; i < r->n && st == ASYNQ_OK; i++) {
		const Asynq__Bench__Id *out = r->whole_batch
		    ? asynq__bench__lookup__get_batch__reply(r->fs[i])
		    : asynq__bench__lookup__get__reply(r->fs[i]);
		int64_t want = (r->base + (int64_t)(i % d)) * 3;
		if (out == NULL || out->id != want)
			st = asynq_fail(t, ASYNQ_INTERNAL,
			    "id %" PRId64 ": wrong answer",
			    r->base + (int64_t)(i % d));
	}
	asynq_future_rele_n(r->fs, r->n);
	return st;
}

/* Fills *out from `rounds` rounds of n calls each (latencies lat, in us)
 * that took wall_us, the client's cpu_us and the server's srv_us, and the
 * channel's counts before and after. */
static void
sample_fill(sample *out, double *lat, size_t rounds, size_t n, double wall_us,
    double cpu_us, double srv_us, const asynq_rpc_channel_stats *st0,
    const asynq_rpc_channel_stats *st1)
{
	double calls = rounds != 0 ? (double)(rounds * n) : 1;
	out->calls_per_s = calls / (wall_us / 1e6);
	out->client_ns = cpu_us * 1e3 / calls;
	out->server_ns = srv_us * 1e3 / calls;
	out->p50_us = percentile(lat, rounds, 0.50);
	out->p99_us = percentile(lat, rounds, 0.99);
	out->requests = rounds
	    ? (double)(st1->requests - st0->requests) / (double)rounds
	    : 0;
	out->sent =
	    rounds ? (double)(st1->sent_calls - st0->sent_calls) / calls : 0;
}

/* Runs rounds of n calls awaited together for secs seconds. */
static void
asynq_measure(bench *b, asynq_rpc_channel *ch, bool whole_batch, size_t n,
    size_t distinct, double secs, sample *out)
{
	size_t cap = 1024, rounds = 0;
	double *lat = malloc(cap * sizeof(*lat));
	if (lat == NULL)
		die("out of memory");
	asynq_rpc_channel_stats st0, st1;
	asynq_rpc_channel_stats_get(ch, &st0);
	double s0 = server_cpu(&b->aserver), c0 = cpu_us(), t0 = now_us();
	double t1;
	do {
		trip rd = { ch, whole_batch, n, distinct, b->next_id, b->fs };
		b->next_id += (int64_t)n;
		double a = now_us();
		asynq_future *f = asynq_spawn(trip_task, &rd);
		asynq_status st = asynq_wait(f);
		t1 = now_us();
		if (st != ASYNQ_OK) {
			fprintf(stderr,
			    "bench: a round of %zu calls failed: ", n);
			asynq_error_print(asynq_future_error(f), stderr);
			failures++;
			asynq_future_rele(f);
			break;
		}
		asynq_future_rele(f);
		if (rounds == cap) {
			double *bigger = realloc(lat, 2 * cap * sizeof(*lat));
			if (bigger == NULL)
				die("out of memory");
			lat = bigger;
			cap *= 2;
		}
		lat[rounds++] = t1 - a;
	} while (t1 - t0 < secs * 1e6);
	double c1 = cpu_us(), s1 = server_cpu(&b->aserver);
	asynq_rpc_channel_stats_get(ch, &st1);
	sample_fill(out, lat, rounds, n, t1 - t0, c1 - c0, s1 - s0, &st0, &st1);
	out->inflight = 1; /* one round at a time */
	free(lat);
}

/* One of the closed loop's tasks: rounds of rd.n calls awaited together,
 * one after another until `until_us`, each round's latency kept. */
typedef struct looper {
	trip rd;
	double until_us;
	double *lat;
	size_t rounds, cap;
} looper;

static asynq_status
looper_task(asynq_task *t, void *arg)
{
	looper *l = arg;
	double a = now_us();
	while (a < l->until_us) {
		asynq_status st = trip_task(t, &l->rd);
		if (st != ASYNQ_OK)
			return st;
		l->rd.base += (int64_t)l->rd.n;
		double z = now_us();
		if (l->rounds == l->cap) {
			size_t cap = l->cap != 0 ? 2 * l->cap : 1024;
			double *bigger = realloc(l->lat, cap * sizeof(*bigger));
			if (bigger == NULL)
				return ASYNQ_RESOURCE_EXHAUSTED;
			l->lat = bigger;
			l->cap = cap;
		}
		l->lat[l->rounds++] = z - a;
		a = z;
	}
	return ASYNQ_OK;
}

/* The closed loop's root: starts every looper at once (tasks are lazy: a
 * task runs once something awaits it) and waits for them all. */
typedef struct loop_root {
	asynq_future **fs;
	size_t n;
} loop_root;

static asynq_status
loop_root_task(asynq_task *t, void *arg)
{
	loop_root *lr = arg;
	return asynq_await_all(t, lr->fs, lr->n);
}

/* The closed loop: `tasks` tasks each making rounds of n calls awaited
 * together for secs seconds, so that (on a channel capped at n calls per
 * request) `tasks` requests of n are in flight all the time: a task whose
 * reply came sends its next request while the others' are out, as the
 * gRPC peer replaces a completed RPC at once. Latency is per round. */
static void
asynq_measure_loop(bench *b, asynq_rpc_channel *ch, size_t tasks, size_t n,
    double secs, sample *out)
{
	looper *ls = calloc(tasks, sizeof(*ls));
	asynq_future **fs = calloc(tasks, sizeof(*fs));
	asynq_future **calls = calloc(tasks * n, sizeof(*calls));
	if (ls == NULL || fs == NULL || calls == NULL)
		die("out of memory");
	asynq_rpc_channel_stats st0, st1;
	asynq_rpc_channel_stats_get(ch, &st0);
	double s0 = server_cpu(&b->aserver), c0 = cpu_us(), t0 = now_us();
	for (size_t k = 0; k < tasks; k++) {
		/* Disjoint ids: no call of one task collapses with another's.
		 */
		ls[k].rd = (trip){ ch, false, n, 0,
			b->next_id + (int64_t)k * ((int64_t)1 << 40),
			&calls[k * n] };
		ls[k].until_us = t0 + secs * 1e6;
		if ((fs[k] = asynq_spawn(looper_task, &ls[k])) == NULL)
			die("out of memory");
	}
	loop_root lr = { fs, tasks };
	asynq_future *root = asynq_spawn(loop_root_task, &lr);
	if (root == NULL)
		die("out of memory");
	(void)asynq_wait(root);
	asynq_future_rele(root);
	size_t rounds = 0;
	for (size_t k = 0; k < tasks; k++) {
		if (asynq_future_status(fs[k]) != ASYNQ_OK) {
			fprintf(stderr, "bench: a closed-loop task failed: ");
			asynq_error_print(asynq_future_error(fs[k]), stderr);
			failures++;
		}
		asynq_future_rele(fs[k]);
		rounds += ls[k].rounds;
	}
	double t1 = now_us(), c1 = cpu_us(), s1 = server_cpu(&b->aserver);
	asynq_rpc_channel_stats_get(ch, &st1);
	b->next_id += (int64_t)tasks * ((int64_t)1 << 40);
	double *lat = malloc((rounds != 0 ? rounds : 1) * sizeof(*lat));
	if (lat == NULL)
		die("out of memory");
	size_t at = 0;
	for (size_t k = 0; k < tasks; k++) {
		if (ls[k].rounds != 0)
			memcpy(&lat[at], ls[k].lat,
			    ls[k].rounds * sizeof(*lat));
		at += ls[k].rounds;
		free(ls[k].lat);
	}
	/* Little's law: rounds in flight = rounds per second x the mean
	 * time of a round. */
	double lsum = 0;
	for (size_t i = 0; i < rounds; i++)
		lsum += lat[i];
	out->inflight = t1 > t0 ? lsum / (t1 - t0) : 0;
	sample_fill(out, lat, rounds, n, t1 - t0, c1 - c0, s1 - s0, &st0, &st1);
	free(lat);
	free(calls);
	free(fs);
	free(ls);
}

/* Runs a gRPC shape on the peer: ids per GetMany (0: Get), depth RPCs
 * outstanding, for secs seconds. */
static void
grpc_measure(bench *b, int ids, int depth, double secs, sample *out)
{
	char cmd[64], line[256];
	unsigned long long rpcs, calls;
	double wall_us, cpu, p50, p99;

	snprintf(cmd, sizeof(cmd), "run %d %d %.0f\n", ids, depth, secs * 1e3);
	double s0 = server_cpu(&b->gserver);
	proc_write(&b->gclient, cmd);
	proc_read(&b->gclient, line, sizeof(line));
	double s1 = server_cpu(&b->gserver);
	if (sscanf(line, "done %llu %llu %lf %lf %lf %lf", &rpcs, &calls,
	        &wall_us, &cpu, &p50, &p99) != 6 ||
	    calls == 0) {
		fprintf(stderr, "bench: gRPC peer: %s", line);
		failures++;
		calls = 1;
		wall_us = 1;
	}
	out->calls_per_s = (double)calls / (wall_us / 1e6);
	out->client_ns = cpu * 1e3 / (double)calls;
	out->server_ns = (s1 - s0) * 1e3 / (double)calls;
	out->p50_us = p50;
	out->p99_us = p99;
	out->requests = 0;
}

/* Every shape, in the order a round runs them. */
enum {
	A_1,     /* asynq, 1 call per request */
	G_GET,   /* gRPC Get, 1 outstanding */
	G_MANY1, /* gRPC GetMany(1), for the fit */
	A_16,
	G_MANY16,
	A_100,
	A_WHOLE100, /* asynq whole-batch handler, 100 per request */
	G_MANY100,
	A_1000,
	A_WHOLE1000,
	G_MANY1000,
	A_PIPE,       /* asynq, 800 calls on the max_calls = 100 channel */
	A_LOOP8,      /* asynq, 8 tasks of 100 calls, closed loop, same */
	G_MANY100X8,  /* gRPC GetMany(100), 8 outstanding */
	A_REP100,     /* asynq, 100 calls naming 70 keys */
	A_REP100_ALL, /* the same with collapsing off */
	A_100_ALL,    /* 100 distinct calls with collapsing off */
	N_SHAPES
};

typedef struct shape {
	side side;
	size_t calls;     /* asynq: calls per round; gRPC: ids per RPC */
	bool whole_batch; /* asynq */
	bool pipelined;   /* asynq: on ch100 */
	size_t tasks;     /* asynq: closed-loop tasks (0: one round at once) */
	bool all;         /* asynq: on ch_all (no collapsing) */
	size_t distinct;  /* asynq: keys per round (0: calls) */
	int depth;        /* gRPC */
	sample s[MAX_ROUNDS];
	sample med; /* the median of each field */
} shape;

static shape shapes[N_SHAPES] = {
	[A_1] = { .side = ASYNQ, .calls = 1 },
	[G_GET] = { .side = GRPC, .calls = 0, .depth = 1 },
	[G_MANY1] = { .side = GRPC, .calls = 1, .depth = 1 },
	[A_16] = { .side = ASYNQ, .calls = 16 },
	[G_MANY16] = { .side = GRPC, .calls = 16, .depth = 1 },
	[A_100] = { .side = ASYNQ, .calls = 100 },
	[A_WHOLE100] = { .side = ASYNQ, .calls = 100, .whole_batch = true },
	[G_MANY100] = { .side = GRPC, .calls = 100, .depth = 1 },
	[A_1000] = { .side = ASYNQ, .calls = 1000 },
	[A_WHOLE1000] = { .side = ASYNQ, .calls = 1000, .whole_batch = true },
	[G_MANY1000] = { .side = GRPC, .calls = 1000, .depth = 1 },
	[A_PIPE] = { .side = ASYNQ, .calls = PIPE_CALLS, .pipelined = true },
	[A_LOOP8] = { .side = ASYNQ,
	    .calls = PIPE_CAP,
	    .pipelined = true,
	    .tasks = PIPE_CALLS / PIPE_CAP },
	[G_MANY100X8] = { .side = GRPC, .calls = 100, .depth = 8 },
	[A_REP100] = { .side = ASYNQ, .calls = 100, .distinct = 70 },
	[A_REP100_ALL] = { .side = ASYNQ,
	    .calls = 100,
	    .distinct = 70,
	    .all = true },
	[A_100_ALL] = { .side = ASYNQ, .calls = 100, .all = true },
};

static void
shape_run(bench *b, shape *sh, double secs, sample *out)
{
	if (sh->side == ASYNQ && sh->tasks != 0)
		asynq_measure_loop(b, b->ch100, sh->tasks, sh->calls, secs,
		    out);
	else if (sh->side == ASYNQ)
		asynq_measure(b,
		    sh->pipelined ? b->ch100
		        : sh->all ? b->ch_all
		                  : b->ch,
		    sh->whole_batch, sh->calls, sh->distinct, secs, out);
	else
		grpc_measure(b, (int)sh->calls, sh->depth, secs, out);
}

/* The median over n rounds of the field at byte offset off of sample. */
static double
median_of(const sample *s, int n, size_t off)
{
	double v[MAX_ROUNDS];
	for (int i = 0; i < n; i++)
		memcpy(&v[i], (const char *)&s[i] + off, sizeof(double));
	return percentile(v, (size_t)n, 0.5);
}

static void
medians(shape *sh, int n)
{
	sh->med.calls_per_s =
	    median_of(sh->s, n, offsetof(sample, calls_per_s));
	sh->med.client_ns = median_of(sh->s, n, offsetof(sample, client_ns));
	sh->med.server_ns = median_of(sh->s, n, offsetof(sample, server_ns));
	sh->med.p50_us = median_of(sh->s, n, offsetof(sample, p50_us));
	sh->med.p99_us = median_of(sh->s, n, offsetof(sample, p99_us));
	sh->med.requests = median_of(sh->s, n, offsetof(sample, requests));
	sh->med.sent = median_of(sh->s, n, offsetof(sample, sent));
	sh->med.inflight = median_of(sh->s, n, offsetof(sample, inflight));
}

static void
bare_rtt(bench *b, size_t n, double *p50, double *p99)
{
	nng_socket req;
	double *lat = calloc(n, sizeof(*lat));
	if (lat == NULL || nng_req0_open(&req) != 0 ||
	    nng_dial(req, b->echo_url, NULL, 0) != 0)
		die("cannot dial the echo server");
	/* The same size as a one-call request. */
	char payload[32];
	memset(payload, 'x', sizeof(payload));
	for (size_t i = 0; i < n + 100; i++) {
		double a = now_us();
		void *buf;
		size_t len;
		if (nng_send(req, payload, sizeof(payload), 0) != 0 ||
		    nng_recv(req, &buf, &len, NNG_FLAG_ALLOC) != 0)
			die("bare round trip failed");
		nng_free(buf, len);
		if (i >= 100) /* warm-up */
			lat[i - 100] = now_us() - a;
	}
	*p50 = percentile(lat, n, 0.50);
	*p99 = percentile(lat, n, 0.99);
	nng_close(req);
	free(lat);
}

static void *
arena_cb(void *ctx, size_t n)
{
	return asynqi_arena_alloc(ctx, n);
}

/* Decode cost: an envelope of `n` calls as the client sends it (methods by
 * number), parsed and each payload decoded into a per-request arena, as the
 * server does (framework/rpc's own parser and decoder). */
static double
decode_ns_per_call(size_t n)
{
	Asynq__Rpc__Call *calls = calloc(n, sizeof(*calls));
	Asynq__Rpc__Call **ptrs = calloc(n, sizeof(*ptrs));
	uint8_t(*payloads)[16] = calloc(n, sizeof(*payloads));
	if (calls == NULL || ptrs == NULL || payloads == NULL)
		die("out of memory");
	for (size_t i = 0; i < n; i++) {
		Asynq__Bench__Id id = ASYNQ__BENCH__ID__INIT;
		id.id = (int64_t)i * 7919;
		asynq__rpc__call__init(&calls[i]);
		calls[i].method_id = 1 + ASYNQ__BENCH__LOOKUP__ASYNQ_METHOD_GET;
		calls[i].call_id = i + 1;
		calls[i].payload.len = asynq__bench__id__pack(&id, payloads[i]);
		calls[i].payload.data = payloads[i];
		ptrs[i] = &calls[i];
	}
	Asynq__Rpc__Request rq = ASYNQ__RPC__REQUEST__INIT;
	rq.n_calls = n;
	rq.calls = ptrs;
	size_t len = asynq__rpc__request__get_packed_size(&rq);
	uint8_t *buf = malloc(len);
	if (buf == NULL)
		die("out of memory");
	asynq__rpc__request__pack(&rq, buf);
	/* The generated codec, as the server decodes with it. */
	const asynq_rpc_codec *codec =
	    asynq__bench__lookup__asynq_desc
	        .methods[ASYNQ__BENCH__LOOKUP__ASYNQ_METHOD_GET]
	        .input_codec;
	if (!asynqi_codec_usable(codec, &asynq__bench__id__descriptor))
		codec = NULL;
	double best = 1e30;
	for (int r = 0; r < 20; r++) {
		double a = now_us();
		asynqi_arena arena;
		asynqi_arena_init(&arena, 64u << 20);
		asynqi_request_ref d;
		asynq_status st =
		    asynqi_request_parse(buf, len, arena_cb, &arena, &d);
		int64_t sum = 0;
		for (size_t i = 0; st == ASYNQ_OK && i < d.n_calls; i++) {
			ProtobufCMessage *m = NULL;
			if (asynqi_rpc_decode_with(
			        &asynq__bench__id__descriptor, codec,
			        d.calls[i].payload, d.calls[i].payload_len,
			        &arena.pa, &arena, &m) == ASYNQ_OK)
				sum += ((Asynq__Bench__Id *)m)->id;
		}
		double t = now_us() - a;
		if (st != ASYNQ_OK || sum != 7919 * (int64_t)(n * (n - 1) / 2))
			failures++;
		asynqi_arena_fini(&arena);
		if (t < best)
			best = t;
	}
	free(buf);
	free(payloads);
	free(ptrs);
	free(calls);
	return best * 1e3 / (double)n;
}

/* ---- The fit --------------------------------------------------------- */

typedef struct fit {
	double fixed_us;    /* per request */
	double marginal_ns; /* per call */
	double worst;       /* largest |relative residual| */
} fit;

/* Fits y = a + b x to (x[i], y[i]), minimising sum ((y - a - b x) / y)^2. */
static fit
fit_line(const double *x, const double *y, int n)
{
	double w = 0, sx = 0, sy = 0, sxx = 0, sxy = 0;
	fit f = { 0, 0, 0 };
	for (int i = 0; i < n; i++) {
		double wi = y[i] > 0 ? 1 / (y[i] * y[i]) : 0;
		w += wi;
		sx += wi * x[i];
		sy += wi * y[i];
		sxx += wi * x[i] * x[i];
		sxy += wi * x[i] * y[i];
	}
	double det = w * sxx - sx * sx;
	if (w == 0 || det == 0)
		return f;
	double b = (w * sxy - sx * sy) / det;
	double a = (sy - b * sx) / w;
	for (int i = 0; i < n; i++) {
		double r = fabs((y[i] - a - b * x[i]) / y[i]);
		if (r > f.worst)
			f.worst = r;
	}
	f.fixed_us = a / 1e3; /* y is in ns per request */
	f.marginal_ns = b;
	return f;
}

typedef enum { CLIENT, SERVER, BOTH } part;

static double
cpu_ns(const sample *s, part p)
{
	return p == CLIENT ? s->client_ns
	    : p == SERVER  ? s->server_ns
	                   : s->client_ns + s->server_ns;
}

/* The fit of one side's CPU over 1, 16, 100 and 1000 calls per request. */
static fit
fit_side(const int idx[4], part p)
{
	static const double x[4] = { 1, 16, 100, 1000 };
	double y[4];
	for (int i = 0; i < 4; i++)
		y[i] = cpu_ns(&shapes[idx[i]].med, p) * x[i];
	return fit_line(x, y, 4);
}

/* ---- Report ---------------------------------------------------------- */

static const char *
verdict(bool ok)
{
	return ok ? "PASS" : "OVER";
}

static const char *const part_name[] = { "client", "server",
	"client + server" };

static void
print_fits(const char *who, const int idx[4])
{
	for (int p = CLIENT; p <= BOTH; p++) {
		fit f = fit_side(idx, (part)p);
		printf("  %-6s %-24s %12.1f %14.0f %11.0f%%\n",
		    p == CLIENT ? who : "", part_name[p], f.fixed_us,
		    f.marginal_ns, f.worst * 100);
	}
}

/* One row of the comparison: higher is better when more_is_better. */
static void
compare(const char *what, double a, double g, bool more_is_better,
    double target)
{
	double r = a / g;
	bool ok = more_is_better ? r >= target : r <= target;
	char tgt[32];
	snprintf(tgt, sizeof(tgt), "%s %.1fx",
	    more_is_better ? ">=" : "<=", target);
	if (target > 0)
		printf("    %-32s %12.1f %12.1f %7.2fx  %-8s %s\n", what, a, g,
		    r, tgt, verdict(ok));
	else
		printf("    %-32s %12.1f %12.1f %7.2fx\n", what, a, g, r);
}

static void
report(bench *b, double bare50, double bare99, double dec)
{
	const sample *a1 = &shapes[A_1].med, *a100 = &shapes[A_100].med;
	static const int a_idx[4] = { A_1, A_16, A_100, A_1000 };
	static const int g_idx[4] = { G_MANY1, G_MANY16, G_MANY100,
		G_MANY1000 };

	printf("\n  %-34s %12s %10s %10s\n", "calls per request", "calls/s",
	    "client", "server");
	printf("  %-34s %12s %10s %10s\n", "", "", "CPU us/call",
	    "CPU us/call");
	for (int i = 0; i < 4; i++) {
		const sample *s = &shapes[a_idx[i]].med;
		printf("  %-34zu %12.0f %10.2f %10.2f\n",
		    shapes[a_idx[i]].calls, s->calls_per_s, s->client_ns / 1e3,
		    s->server_ns / 1e3);
	}
	double ratio = a100->calls_per_s / a1->calls_per_s;
	printf("\n  batches of 100 vs one call per request: %.1fx "
	       "(target >= 40x) %s\n",
	    ratio, verdict(ratio >= 40));
	double cpu100 = a100->client_ns + a100->server_ns;
	printf("  CPU per logical call, batches of 100, client + server: "
	       "%.0f ns (budget <= 550 ns) %s\n",
	    cpu100, verdict(cpu100 <= 550));
	printf("  unbatched call: p50 %.0f us, p99 %.0f us; bare nng req/rep: "
	       "p50 %.0f us, p99 %.0f us\n",
	    a1->p50_us, a1->p99_us, bare50, bare99);
	printf("  unbatched p50 / bare p50: %.2fx (target <= 1.2x) %s\n",
	    a1->p50_us / bare50, verdict(a1->p50_us / bare50 <= 1.2));
	printf("  decode (envelope + payload, 1000-call request): %.0f ns per "
	       "call\n",
	    dec);

	printf("\n  CPU cost fitted over 1, 16, 100, 1000 calls per request: "
	       "per request = fixed + marginal x calls\n"
	       "  (least squares on relative error; worst = largest "
	       "residual of the four)\n");
	printf("  %-31s %12s %14s %12s\n", "", "fixed", "marginal", "worst");
	printf("  %-31s %12s %14s %12s\n", "", "us/request", "ns/call", "");
	print_fits("asynq", a_idx);
	if (b->peer)
		print_fits("gRPC", g_idx);

	const sample *pp = &shapes[A_PIPE].med;
	printf("\n  pipelined: %d calls awaited together on a channel with "
	       "max_calls = %d\n",
	    PIPE_CALLS, PIPE_CAP);
	printf("    %.0f calls/s (%.2fx 100 per request, 1 in flight), "
	       "%.1f requests per round (%d expected),\n"
	       "    CPU per call: client %.0f ns, server %.0f ns\n",
	    pp->calls_per_s, pp->calls_per_s / a100->calls_per_s, pp->requests,
	    PIPE_CALLS / PIPE_CAP, pp->client_ns, pp->server_ns);
	const sample *lq = &shapes[A_LOOP8].med;
	printf("  closed loop: %zu tasks, each making rounds of %d calls "
	       "awaited together, on the same channel\n"
	       "    %.0f calls/s (%.2fx 100 per request, 1 in flight), "
	       "%.2f requests per round (1 expected),\n"
	       "    %.1f rounds in flight on average (%zu expected), "
	       "CPU per call: client %.0f ns, server %.0f ns\n",
	    shapes[A_LOOP8].tasks, PIPE_CAP, lq->calls_per_s,
	    lq->calls_per_s / a100->calls_per_s, lq->requests, lq->inflight,
	    shapes[A_LOOP8].tasks, lq->client_ns, lq->server_ns);
	if (lq->inflight < 0.9 * (double)shapes[A_LOOP8].tasks) {
		fprintf(stderr,
		    "bench: closed loop: %.1f rounds in flight, expected "
		    "%zu\n",
		    lq->inflight, shapes[A_LOOP8].tasks);
		failures++;
	}
	if (lq->requests > 1.05) {
		fprintf(stderr,
		    "bench: closed loop: %.2f requests per round, expected "
		    "1\n",
		    lq->requests);
		failures++;
	}

	printf("\n  whole-batch handler (GetBatch) against per-call handler "
	       "(Get), same lookups\n");
	printf("  %-18s %12s %12s %7s %14s %14s\n", "calls per request",
	    "per-call", "whole-batch", "ratio", "server CPU", "server CPU");
	printf("  %-18s %12s %12s %7s %14s %14s\n", "", "calls/s", "calls/s",
	    "", "ns/call, per", "ns/call, whole");
	static const int wb[2][2] = { { A_100, A_WHOLE100 },
		{ A_1000, A_WHOLE1000 } };
	for (int i = 0; i < 2; i++) {
		const sample *u = &shapes[wb[i][0]].med;
		const sample *w = &shapes[wb[i][1]].med;
		printf("  %-18zu %12.0f %12.0f %6.2fx %14.0f %14.0f\n",
		    shapes[wb[i][0]].calls, u->calls_per_s, w->calls_per_s,
		    w->calls_per_s / u->calls_per_s, u->server_ns,
		    w->server_ns);
	}

	const sample *r1 = &shapes[A_REP100].med,
	             *r0 = &shapes[A_REP100_ALL].med;
	printf("\n  100 calls per request naming 70 keys (30%% repeat a key"
	       " of the same batch)\n");
	printf("  %-26s %12s %14s %14s\n", "", "calls/s", "CPU ns/call",
	    "sent per call");
	printf("  %-26s %12.0f %14.0f %14.2f\n", "identical calls collapsed",
	    r1->calls_per_s, r1->client_ns + r1->server_ns, r1->sent);
	printf("  %-26s %12.0f %14.0f %14.2f\n", "collapsing off",
	    r0->calls_per_s, r0->client_ns + r0->server_ns, r0->sent);
	printf("  %-26s %12.0f %14.0f %14.2f\n", "all 100 distinct",
	    a100->calls_per_s, a100->client_ns + a100->server_ns, a100->sent);
	const sample *d0 = &shapes[A_100_ALL].med;
	printf("  %-26s %12.0f %14.0f %14.2f\n", "all distinct, off",
	    d0->calls_per_s, d0->client_ns + d0->server_ns, d0->sent);
	printf("  collapsed / off: %.2fx calls/s, %.2fx CPU per call; looking"
	       " for twins costs %.0f ns per distinct call (client)\n",
	    r1->calls_per_s / r0->calls_per_s,
	    (r1->client_ns + r1->server_ns) / (r0->client_ns + r0->server_ns),
	    a100->client_ns - d0->client_ns);
	if (r1->sent > 0.71 || r0->sent < 0.99) {
		fprintf(stderr,
		    "bench: repeated keys: %.2f and %.2f calls sent per call,"
		    " expected 0.70 and 1.00\n",
		    r1->sent, r0->sent);
		failures++;
	}

	fit af = fit_side(a_idx, BOTH);
	if (!b->peer) {
		printf("\n  marginal CPU per call, client + server: %.0f ns "
		       "(target <= 150 ns) %s\n",
		    af.marginal_ns, verdict(af.marginal_ns <= 150));
		printf("\n  gRPC peer: not run. tests/bench/rpc_vs_grpc.sh "
		       "installs, builds and runs it\n"
		       "  (or pass --grpc-peer DIR with DIR holding "
		       "lookup_server and lookup_client)\n");
		return;
	}

	fit gf = fit_side(g_idx, BOTH);
	const sample *gg = &shapes[G_GET].med, *g100 = &shapes[G_MANY100].med,
	             *g8 = &shapes[G_MANY100X8].med;
	printf("\n  asynq against gRPC C++ %s, same shapes, same run "
	       "(ratio = asynq / gRPC)\n",
	    b->grpc_version);
	printf("    %-32s %12s %12s %8s  %-8s\n", "", "asynq", "gRPC", "ratio",
	    "target");
	printf("  one call per request (gRPC: unary Get, 1 outstanding)\n");
	compare("calls/s", a1->calls_per_s, gg->calls_per_s, true, 1.0);
	compare("p50 us", a1->p50_us, gg->p50_us, false, 1.0);
	compare("p99 us", a1->p99_us, gg->p99_us, false, 0);
	compare("CPU us/call, client + server",
	    (a1->client_ns + a1->server_ns) / 1e3,
	    (gg->client_ns + gg->server_ns) / 1e3, false, 1.0);
	compare("  client", a1->client_ns / 1e3, gg->client_ns / 1e3, false, 0);
	compare("  server", a1->server_ns / 1e3, gg->server_ns / 1e3, false, 0);
	printf("  100 per request, 1 in flight (gRPC: GetMany(100 ids))\n");
	compare("calls/s (thousands)", a100->calls_per_s / 1e3,
	    g100->calls_per_s / 1e3, true, 1.0);
	compare("CPU ns/call, client + server", cpu100,
	    g100->client_ns + g100->server_ns, false, 1.0);
	compare("  client", a100->client_ns, g100->client_ns, false, 0);
	compare("  server", a100->server_ns, g100->server_ns, false, 0);
	const sample *lp = &shapes[A_LOOP8].med;
	printf("  100 per request, 8 in flight (asynq: %zu tasks of %d calls "
	       "in a closed loop, max_calls %d;\n"
	       "  gRPC: GetMany(100) x 8 outstanding)\n",
	    shapes[A_LOOP8].tasks, PIPE_CAP, PIPE_CAP);
	compare("calls/s (thousands)", lp->calls_per_s / 1e3,
	    g8->calls_per_s / 1e3, true, 1.0);
	compare("p50 us (asynq: a task's round)", lp->p50_us, g8->p50_us, false,
	    0);
	compare("CPU ns/call, client + server", lp->client_ns + lp->server_ns,
	    g8->client_ns + g8->server_ns, false, 0);
	printf("  the same, asynq as %d calls awaited together (8 requests "
	       "at the start of each round)\n",
	    PIPE_CALLS);
	compare("calls/s (thousands)", pp->calls_per_s / 1e3,
	    g8->calls_per_s / 1e3, true, 0);
	printf("  marginal CPU per call, client + server (the fit above)\n");
	printf("    %-32s %12.0f %12.0f %7.2fx  %-8s %s\n", "ns/call",
	    af.marginal_ns, gf.marginal_ns, af.marginal_ns / gf.marginal_ns,
	    "<= 150ns", verdict(af.marginal_ns <= 150));
}

/* ---- main ------------------------------------------------------------ */

static void
usage(void)
{
	fprintf(stderr,
	    "usage: rpc [--quick] [--rounds N] [--seconds S] "
	    "[--grpc-peer DIR]\n");
	exit(2);
}

/* DIR/name as an absolute path: bazel run starts the binary in its
 * runfiles, so a relative DIR is taken from where bazel was run. */
static char *
peer_path(const char *dir, const char *name)
{
	const char *base = getenv("BUILD_WORKING_DIRECTORY");
	char *p = malloc(PATH_MAX);
	if (p == NULL)
		die("out of memory");
	if (dir[0] != '/' && base != NULL)
		snprintf(p, PATH_MAX, "%s/%s/%s", base, dir, name);
	else
		snprintf(p, PATH_MAX, "%s/%s", dir, name);
	if (access(p, X_OK) != 0) {
		fprintf(stderr,
		    "bench: gRPC peer: %s: %s (build it with "
		    "tests/bench/rpc_vs_grpc.sh, or make -C "
		    "tests/bench/peers/grpc O=DIR)\n",
		    p, strerror(errno));
		exit(1);
	}
	return p;
}

static void
peer_start(bench *b, const char *dir)
{
	char *server = peer_path(dir, "lookup_server");
	char *client = peer_path(dir, "lookup_client");
	char *sargv[] = { server, "0", NULL };
	int port = server_start(&b->gserver, "gRPC server", sargv);
	char addr[64], line[128];
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", port);
	char *cargv[] = { client, addr, NULL };
	proc_start(&b->gclient, "gRPC client", CLIENT_CPU, cargv);
	proc_read(&b->gclient, line, sizeof(line));
	if (sscanf(line, "ready %63s", b->grpc_version) != 1) {
		fprintf(stderr, "bench: gRPC client: %s", line);
		exit(1);
	}
	b->peer = true;
	free(server);
	free(client);
}

int
main(int argc, char **argv)
{
	int rounds = 5;
	double secs = 0.25;
	const char *peer = getenv("ASYNQ_BENCH_GRPC_PEER");
	bool quick = false;

	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--serve") == 0)
			return serve();
		else if (strcmp(argv[i], "--quick") == 0)
			quick = true;
		else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
			rounds = atoi(argv[++i]);
		else if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
			secs = atof(argv[++i]);
		else if (strcmp(argv[i], "--grpc-peer") == 0 && i + 1 < argc)
			peer = argv[++i];
		else
			usage();
	}
	if (quick) {
		rounds = 1;
		secs = 0.1;
	}
	if (rounds < 1 || rounds > MAX_ROUNDS || !(secs > 0 && secs <= 10))
		usage();
	if (peer != NULL && peer[0] == '\0')
		peer = NULL;

	/* Before anything starts a thread: they all inherit the pin. */
	pin(CLIENT_CPU);
	signal(SIGPIPE, SIG_IGN);

	static bench b;
	char *aargv[] = { "/proc/self/exe", "--serve", NULL };
	int port = server_start(&b.aserver, "asynq server", aargv);
	if (peer != NULL)
		peer_start(&b, peer);
	snprintf(b.echo_url, sizeof(b.echo_url), "tcp://127.0.0.1:%d",
	    port + 1);
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	const char *urls[] = { url };
	asynq_rpc_channel_cfg ccfg = { .urls = urls,
		.n_urls = 1,
		.max_calls = 1000 };
	asynq_rpc_channel_cfg pcfg = { .urls = urls,
		.n_urls = 1,
		.max_calls = PIPE_CAP };
	asynq_rpc_channel_cfg acfg = { .urls = urls,
		.n_urls = 1,
		.max_calls = 1000,
		.no_collapse = true };
	if (asynq_rpc_channel_alloc(&b.ch, &asynq__bench__lookup__asynq_desc,
	        &ccfg) != ASYNQ_OK ||
	    asynq_rpc_channel_alloc(&b.ch100, &asynq__bench__lookup__asynq_desc,
	        &pcfg) != ASYNQ_OK ||
	    asynq_rpc_channel_alloc(&b.ch_all,
	        &asynq__bench__lookup__asynq_desc, &acfg) != ASYNQ_OK) {
		fprintf(stderr, "bench: cannot open a channel to %s\n", url);
		return 1;
	}
	b.fs = calloc(PIPE_CALLS > 1000 ? PIPE_CALLS : 1000, sizeof(*b.fs));
	if (b.fs == NULL)
		die("out of memory");
	b.next_id = 1;

	printf("asynq RPC benchmark: client and server processes on tcp "
	       "loopback, server pinned to CPU %d, client to CPU %d\n",
	    SERVER_CPU, CLIENT_CPU);
	printf("%d round%s of %.2f s per shape%s; figures are medians over "
	       "rounds\n",
	    rounds, rounds == 1 ? "" : "s", secs,
	    b.peer ? ", asynq and gRPC interleaved" : "");
	fflush(stdout);

	/* Warm up connections and both sides' pools, every shape once. */
	sample warm;
	for (int i = 0; i < N_SHAPES && failures == 0; i++)
		if (shapes[i].side == ASYNQ || b.peer)
			shape_run(&b, &shapes[i], secs < 0.1 ? secs : 0.1,
			    &warm);
	for (int r = 0; r < rounds && failures == 0; r++)
		for (int k = 0; k < N_SHAPES; k++) {
			int i = r % 2 == 0 ? k : N_SHAPES - 1 - k;
			if (shapes[i].side == ASYNQ || b.peer)
				shape_run(&b, &shapes[i], secs,
				    &shapes[i].s[r]);
		}
	for (int i = 0; i < N_SHAPES; i++)
		medians(&shapes[i], rounds);

	double bare50 = 0, bare99 = 0;
	bare_rtt(&b, quick ? 300 : 2000, &bare50, &bare99);
	double dec = decode_ns_per_call(1000);
	if (failures == 0)
		report(&b, bare50, bare99, dec);

	asynq_rpc_channel_stats cs, ps;
	asynq_rpc_channel_stats_get(b.ch, &cs);
	asynq_rpc_channel_stats_get(b.ch100, &ps);
	printf("\n  channels: %" PRIu64 " calls in %" PRIu64
	       " requests, %" PRIu64 " failures\n",
	    cs.calls + ps.calls, cs.requests + ps.requests,
	    cs.failures + ps.failures);
	if (cs.failures + ps.failures != 0)
		failures++;

	asynq_rpc_channel_free(b.ch100);
	asynq_rpc_channel_free(b.ch_all);
	asynq_rpc_channel_free(b.ch);
	asynq_thread_fini();
	free(b.fs);
	if (b.peer) {
		proc_stop(&b.gclient);
		proc_stop(&b.gserver);
	}
	proc_stop(&b.aserver);
	if (failures > 0) {
		printf("%d correctness failure(s)\n", failures);
		return 1;
	}
	return 0;
}
