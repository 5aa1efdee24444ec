/* SPDX-License-Identifier: MIT */
/*
 * RPC benchmark: `bazel run -c opt //tests/bench:rpc`. A server process and a
 * client process on tcp loopback, pinned to different cores. Prints in one
 * run: logical calls/s with one call per request and with batches of 16, 100
 * and 1000; p50/p99 of a single unbatched call next to a bare nng req/rep
 * round trip measured in the same run; CPU microseconds per logical call on
 * each side; decode nanoseconds per call. A report, not a test: a missed
 * budget prints OVER and still exits 0; a wrong answer exits 1.
 *
 * Design notes:
 * - The server is a forked child with a one-worker runtime and an
 *   asynq_rpc_server on tcp://127.0.0.1:P, plus a bare nng REP echo on P+1
 *   for the baseline. A control pipe lets the parent ask it for its own CPU
 *   time (getrusage) before and after each phase, so each side's CPU per
 *   call covers exactly the phase.
 * - The client runs tasks on the main thread's scheduler: a phase with batch
 *   size B runs a task that makes B calls and awaits them all, repeatedly.
 */

#include <errno.h>
#include <pthread.h>
#include <inttypes.h>
#include <sched.h>
#include <signal.h>
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
#include "asynq/rpc.h"
#include "proto/asynq/rpc.pb-c.h"
#include "tests/bench/bench.asynq.h"
#include "tests/bench/bench.pb-c.h"

#define LOOKUP (&asynq__bench__lookup__asynq_desc)
#define GET (&LOOKUP->methods[ASYNQ__BENCH__LOOKUP__ASYNQ_METHOD_GET])

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

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double
percentile(double *v, size_t n, double p)
{
	qsort(v, n, sizeof(*v), cmp_double);
	size_t i = (size_t)(p * (double)(n - 1) + 0.5);
	return v[i];
}

/* ---- The server process ---------------------------------------------- */

static asynq_status
h_get(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	const Asynq__Bench__Id *in = (const Asynq__Bench__Id *)req;
	Asynq__Bench__Id *out = malloc(sizeof(*out));
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq__bench__id__init(out);
	out->id = in->id * 3;
	*reply = &out->base;
	return ASYNQ_OK;
}

static const asynq_rpc_handler handlers[] = { { .unary = h_get } };

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

/* Runs until the control pipe closes. Protocol on the pipes: the parent
 * writes one byte, the child answers with its CPU time in microseconds as a
 * double. */
static int
server_main(int port, int ctl_in, int ctl_out, int ready)
{
	pin(1);
	signal(SIGPIPE, SIG_IGN);
	char url[64], echo_url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	snprintf(echo_url, sizeof(echo_url), "tcp://127.0.0.1:%d", port + 1);
	asynq_runtime *rt;
	asynq_runtime_cfg rcfg = { .workers = 1 };
	asynq_rpc_server *srv;
	asynq_rpc_server_cfg scfg = { .max_calls = 1000 };
	if (asynq_runtime_alloc(&rt, &rcfg) != ASYNQ_OK ||
	    asynq_rpc_server_alloc(&srv, rt, &scfg) != ASYNQ_OK ||
	    asynq_rpc_server_add_service(srv, LOOKUP, handlers, NULL) !=
	        ASYNQ_OK ||
	    asynq_rpc_server_listen(srv, url) != ASYNQ_OK) {
		fprintf(stderr, "bench server: cannot listen on %s\n", url);
		return 1;
	}
	nng_socket rep;
	pthread_t echo;
	if (nng_rep0_open(&rep) != 0 || nng_listen(rep, echo_url, NULL, 0) ||
	    pthread_create(&echo, NULL, echo_main, &rep) != 0) {
		fprintf(stderr, "bench server: cannot listen on %s\n",
		    echo_url);
		return 1;
	}
	char c = 'r';
	if (write(ready, &c, 1) != 1)
		return 1;
	while (read(ctl_in, &c, 1) == 1) {
		double cpu = cpu_us();
		if (write(ctl_out, &cpu, sizeof(cpu)) != sizeof(cpu))
			break;
	}
	nng_close(rep);
	pthread_join(echo, NULL);
	asynq_rpc_server_free(srv);
	asynq_runtime_free(rt);
	return 0;
}

/* ---- The client ------------------------------------------------------ */

typedef struct client {
	pid_t pid;
	int ctl_out, ctl_in;
	asynq_rpc_channel *ch;
	char echo_url[64];
} client;

static double
server_cpu(client *c)
{
	char b = 'c';
	double cpu = 0;
	if (write(c->ctl_out, &b, 1) != 1 ||
	    read(c->ctl_in, &cpu, sizeof(cpu)) != sizeof(cpu)) {
		fprintf(stderr, "bench: lost the server process\n");
		exit(1);
	}
	return cpu;
}

typedef struct round {
	asynq_rpc_channel *ch;
	size_t batch;
	int64_t base;
	asynq_future **fs;
} round;

static asynq_status
round_task(asynq_task *t, void *arg)
{
	round *r = arg;
	for (size_t i = 0; i < r->batch; i++) {
		Asynq__Bench__Id id = ASYNQ__BENCH__ID__INIT;
		id.id = r->base + (int64_t)i;
		r->fs[i] = asynq_rpc_call(r->ch, GET, &id.base);
	}
	asynq_status st = asynq_await_all(t, r->fs, r->batch);
	for (size_t i = 0; i < r->batch; i++) {
		const Asynq__Bench__Id *out = asynq_future_ptr(r->fs[i]);
		if (st == ASYNQ_OK &&
		    (out == NULL || out->id != (r->base + (int64_t)i) * 3))
			st = asynq_fail(t, ASYNQ_INTERNAL, "wrong answer");
	}
	asynq_future_rele_n(r->fs, r->batch);
	return st;
}

typedef struct phase {
	size_t batch, calls;
	double calls_per_s, client_us, server_us;
	double p50, p99; /* per round, batch 1 only */
} phase;

static void
run_phase(client *c, phase *ph)
{
	size_t rounds = ph->calls / ph->batch;
	asynq_future **fs = calloc(ph->batch, sizeof(*fs));
	double *lat = calloc(rounds, sizeof(*lat));
	if (fs == NULL || lat == NULL) {
		fprintf(stderr, "bench: out of memory\n");
		exit(1);
	}
	double s0 = server_cpu(c), c0 = cpu_us(), t0 = now_us();
	for (size_t r = 0; r < rounds; r++) {
		round rd = { c->ch, ph->batch, (int64_t)(r * ph->batch), fs };
		double a = now_us();
		asynq_future *f = asynq_spawn(round_task, &rd);
		asynq_status st = asynq_wait(f);
		lat[r] = now_us() - a;
		if (st != ASYNQ_OK) {
			fprintf(stderr, "bench: batch %zu failed: ", ph->batch);
			asynq_error_print(asynq_future_error(f), stderr);
			failures++;
			asynq_future_rele(f);
			break;
		}
		asynq_future_rele(f);
	}
	double t1 = now_us(), c1 = cpu_us(), s1 = server_cpu(c);
	ph->calls_per_s = (double)(rounds * ph->batch) / ((t1 - t0) / 1e6);
	ph->client_us = (c1 - c0) / (double)(rounds * ph->batch);
	ph->server_us = (s1 - s0) / (double)(rounds * ph->batch);
	ph->p50 = percentile(lat, rounds, 0.50);
	ph->p99 = percentile(lat, rounds, 0.99);
	free(lat);
	free(fs);
}

static void
bare_rtt(client *c, size_t n, double *p50, double *p99)
{
	nng_socket req;
	double *lat = calloc(n, sizeof(*lat));
	if (lat == NULL || nng_req0_open(&req) != 0 ||
	    nng_dial(req, c->echo_url, NULL, 0) != 0) {
		fprintf(stderr, "bench: cannot dial %s\n", c->echo_url);
		exit(1);
	}
	/* The same size as a one-call request. */
	char payload[32];
	memset(payload, 'x', sizeof(payload));
	for (size_t i = 0; i < n + 100; i++) {
		double a = now_us();
		void *buf;
		size_t len;
		if (nng_send(req, payload, sizeof(payload), 0) != 0 ||
		    nng_recv(req, &buf, &len, NNG_FLAG_ALLOC) != 0) {
			fprintf(stderr, "bench: bare round trip failed\n");
			exit(1);
		}
		nng_free(buf, len);
		if (i >= 100) /* warm-up */
			lat[i - 100] = now_us() - a;
	}
	*p50 = percentile(lat, n, 0.50);
	*p99 = percentile(lat, n, 0.99);
	nng_close(req);
	free(lat);
}

/* Decode cost: an envelope of `n` calls, unpacked with each payload, as the
 * server does (protobuf-c's default allocator here). */
static double
decode_ns_per_call(size_t n)
{
	Asynq__Rpc__Call *calls = calloc(n, sizeof(*calls));
	Asynq__Rpc__Call **ptrs = calloc(n, sizeof(*ptrs));
	uint8_t (*payloads)[16] = calloc(n, sizeof(*payloads));
	if (calls == NULL || ptrs == NULL || payloads == NULL)
		exit(1);
	for (size_t i = 0; i < n; i++) {
		Asynq__Bench__Id id = ASYNQ__BENCH__ID__INIT;
		id.id = (int64_t)i * 7919;
		asynq__rpc__call__init(&calls[i]);
		calls[i].method = (char *)GET->full_name;
		calls[i].call_id = i + 1;
		calls[i].payload.len =
		    asynq__bench__id__pack(&id, payloads[i]);
		calls[i].payload.data = payloads[i];
		ptrs[i] = &calls[i];
	}
	Asynq__Rpc__Request rq = ASYNQ__RPC__REQUEST__INIT;
	rq.n_calls = n;
	rq.calls = ptrs;
	size_t len = asynq__rpc__request__get_packed_size(&rq);
	uint8_t *buf = malloc(len);
	if (buf == NULL)
		exit(1);
	asynq__rpc__request__pack(&rq, buf);
	double best = 1e30;
	for (int r = 0; r < 20; r++) {
		double a = now_us();
		Asynq__Rpc__Request *d =
		    asynq__rpc__request__unpack(NULL, len, buf);
		int64_t sum = 0;
		for (size_t i = 0; d != NULL && i < d->n_calls; i++) {
			Asynq__Bench__Id *id = asynq__bench__id__unpack(NULL,
			    d->calls[i]->payload.len,
			    d->calls[i]->payload.data);
			if (id != NULL)
				sum += id->id;
			asynq__bench__id__free_unpacked(id, NULL);
		}
		double t = now_us() - a;
		if (d == NULL || sum != 7919 * (int64_t)(n * (n - 1) / 2))
			failures++;
		asynq__rpc__request__free_unpacked(d, NULL);
		if (t < best)
			best = t;
	}
	free(buf);
	free(payloads);
	free(ptrs);
	free(calls);
	return best * 1e3 / (double)n;
}

static const char *
verdict(bool ok)
{
	return ok ? "PASS" : "OVER";
}

int
main(int argc, char **argv)
{
	double scale = argc > 1 ? atof(argv[1]) : 1.0;
	if (scale <= 0)
		scale = 1.0;
	int port = 20000 + (int)(getpid() % 20000) * 2 % 40000;
	int to_child[2], from_child[2], ready[2];
	if (pipe(to_child) != 0 || pipe(from_child) != 0 || pipe(ready) != 0)
		return 1;
	pid_t pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		close(to_child[1]);
		close(from_child[0]);
		close(ready[0]);
		_exit(server_main(port, to_child[0], from_child[1], ready[1]));
	}
	close(to_child[0]);
	close(from_child[1]);
	close(ready[1]);
	pin(0);
	char c;
	if (read(ready[0], &c, 1) != 1) {
		fprintf(stderr, "bench: the server process did not start\n");
		return 1;
	}
	client cl = { .pid = pid, .ctl_out = to_child[1],
		.ctl_in = from_child[0] };
	snprintf(cl.echo_url, sizeof(cl.echo_url), "tcp://127.0.0.1:%d",
	    port + 1);
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", port);
	const char *urls[] = { url };
	asynq_rpc_channel_cfg ccfg = { .urls = urls, .n_urls = 1,
		.max_calls = 1000 };
	if (asynq_rpc_channel_alloc(&cl.ch, LOOKUP, &ccfg) != ASYNQ_OK) {
		fprintf(stderr, "bench: cannot open a channel to %s\n", url);
		return 1;
	}

	printf("asynq RPC benchmark: client and server processes on tcp "
	       "loopback, pinned to CPUs 0 and 1\n");
	/* Warm up the connection and both sides' pools. */
	phase warm = { .batch = 100, .calls = 2000 };
	run_phase(&cl, &warm);

	double bare50, bare99;
	bare_rtt(&cl, (size_t)(2000 * scale), &bare50, &bare99);
	phase ph[] = {
		{ .batch = 1, .calls = (size_t)(3000 * scale) },
		{ .batch = 16, .calls = (size_t)(32000 * scale) },
		{ .batch = 100, .calls = (size_t)(100000 * scale) },
		{ .batch = 1000, .calls = (size_t)(200000 * scale) },
	};
	size_t n_ph = sizeof(ph) / sizeof(ph[0]);
	for (size_t i = 0; i < n_ph; i++)
		run_phase(&cl, &ph[i]);
	double dec = decode_ns_per_call(1000);

	printf("\n  %-34s %12s %10s %10s\n", "calls per request", "calls/s",
	    "client", "server");
	printf("  %-34s %12s %10s %10s\n", "", "", "CPU us/call",
	    "CPU us/call");
	for (size_t i = 0; i < n_ph; i++)
		printf("  %-34zu %12.0f %10.2f %10.2f\n", ph[i].batch,
		    ph[i].calls_per_s, ph[i].client_us, ph[i].server_us);
	double ratio = ph[2].calls_per_s / ph[0].calls_per_s;
	printf("\n  batches of 100 vs one call per request: %.1fx "
	       "(target >= 40x) %s\n",
	    ratio, verdict(ratio >= 40));
	double cpu100 = (ph[2].client_us + ph[2].server_us) * 1000;
	printf("  CPU per logical call, batches of 100, client + server: "
	       "%.0f ns (budget <= 550 ns) %s\n",
	    cpu100, verdict(cpu100 <= 550));
	printf("  unbatched call: p50 %.0f us, p99 %.0f us; bare nng req/rep: "
	       "p50 %.0f us, p99 %.0f us\n",
	    ph[0].p50, ph[0].p99, bare50, bare99);
	printf("  unbatched p50 / bare p50: %.2fx (target <= 1.2x) %s\n",
	    ph[0].p50 / bare50, verdict(ph[0].p50 / bare50 <= 1.2));
	printf("  decode (envelope + payload, 1000-call request): %.0f ns per "
	       "call\n",
	    dec);

	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(cl.ch, &cs);
	printf("  channel: %" PRIu64 " calls in %" PRIu64
	       " requests, %" PRIu64 " failures\n",
	    cs.calls, cs.requests, cs.failures);
	if (cs.failures != 0)
		failures++;

	asynq_rpc_channel_free(cl.ch);
	asynq_thread_fini();
	close(cl.ctl_out);
	close(cl.ctl_in);
	int status;
	waitpid(pid, &status, 0);
	if (failures > 0) {
		printf("%d correctness failure(s)\n", failures);
		return 1;
	}
	return 0;
}
