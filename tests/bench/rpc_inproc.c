/* SPDX-License-Identifier: MIT */
/*
 * In-process RPC benchmark: `bazel run -c opt //tests/bench:rpc_inproc --
 * [CALLS [ROUNDS [URL [WHOLE]]]]`. A one-worker server and a client task in
 * one process, over inproc:// by default (no socket, no syscalls), so what
 * it measures is the per-call path of the framework alone: encoding a call
 * into the batch, cutting the request, parsing and decoding on the server,
 * running the handler, packing the result, decoding it on the client and
 * completing the future. Prints calls/s and CPU ns per call (both sides).
 * Deterministic enough for `valgrind --tool=callgrind`, whose instruction
 * counts divided by CALLS x ROUNDS give the cost per call; run two ROUNDS
 * values and subtract to drop the start-up. A report, not a test: a wrong
 * answer exits 1. In the environment, ASYNQ_BENCH_DISTINCT=K makes call i of a
 * round ask for i % K (identical calls collapse), and ASYNQ_BENCH_NO_COLLAPSE=1
 * opens the channel with no_collapse. ASYNQ_BENCH_ICPT=1 puts an interceptor
 * that counts calls (a before and an after hook) on the channel and on the
 * server, =trace the trace interceptor on both with the client's calls made in
 * a trace, so the difference is what interceptors cost per call.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "tests/bench/bench.asynq.h"
#include "tests/bench/bench.pb-c.h"

#define LOOKUP (&asynq__bench__lookup__asynq_desc)

static size_t n_calls = 1000, n_rounds = 200;
static int whole;
static size_t n_distinct; /* 0: every call of a round distinct */
static asynq_rpc_channel *ch;

static Asynq__Bench__Id *
id_new(int64_t v)
{
	Asynq__Bench__Id *out = asynq__bench__lookup__get__reply_new();
	if (out != NULL)
		out->id = v;
	return out;
}

static asynq_status
h_get(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	Asynq__Bench__Id *out = id_new(((const Asynq__Bench__Id *)req)->id * 3);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	*reply = &out->base;
	return ASYNQ_OK;
}

static asynq_status
h_get_batch(asynq_task *t, asynq_rpc_batch_call *calls, size_t n, void *ctx)
{
	(void)t;
	(void)ctx;
	for (size_t i = 0; i < n; i++) {
		Asynq__Bench__Id *out =
		    id_new(((const Asynq__Bench__Id *)calls[i].req)->id * 3);
		if (out == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		calls[i].reply = &out->base;
	}
	return ASYNQ_OK;
}

/* ASYNQ_BENCH_ICPT=1: an interceptor that counts what it sees. */
static unsigned long icpt_seen;

static asynq_status
count_before(asynq_rpc_call_info *c, void **state, void *arg)
{
	(void)c;
	(void)state;
	(void)arg;
	icpt_seen++;
	return ASYNQ_OK;
}

static void
count_after(const asynq_rpc_call_info *c, void *state, void *arg)
{
	(void)state;
	(void)arg;
	icpt_seen += c->status == ASYNQ_OK;
}

static const asynq_rpc_interceptor count_icpt = {
	.name = "count",
	.before = count_before,
	.after = count_after,
};

static asynq_status client_main(asynq_task *t, void *arg);

static asynq_status
client_traced(void *arg)
{
	asynq_task *t = arg;
	return client_main(t, NULL);
}

static asynq_status
client_main(asynq_task *t, void *arg)
{
	(void)arg;
	const asynq_rpc_method_desc *m =
	    &LOOKUP
	         ->methods[whole ? ASYNQ__BENCH__LOOKUP__ASYNQ_METHOD_GET_BATCH
	                         : ASYNQ__BENCH__LOOKUP__ASYNQ_METHOD_GET];
	asynq_future **f = calloc(n_calls, sizeof(*f));
	if (f == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq_status st = ASYNQ_OK;
	if (arg != NULL) { /* the trace interceptor: calls made in a trace */
		free(f);
		return asynq_rpc_with_trace(NULL, client_traced, t);
	}
	for (size_t r = 0; r < n_rounds && st == ASYNQ_OK; r++) {
		for (size_t i = 0; i < n_calls; i++) {
			Asynq__Bench__Id id = ASYNQ__BENCH__ID__INIT;
			id.id = (int64_t)(n_distinct != 0 ? i % n_distinct : i);
			f[i] = asynq_rpc_call(ch, m, &id.base);
		}
		st = asynq_await_all(t, f, n_calls);
		for (size_t i = 0; i < n_calls && st == ASYNQ_OK; i++) {
			const Asynq__Bench__Id *out = asynq_future_ptr(f[i]);
			int64_t v =
			    (int64_t)(n_distinct != 0 ? i % n_distinct : i);
			if (out == NULL || out->id != 3 * v)
				st = ASYNQ_INTERNAL;
		}
		asynq_future_rele_n(f, n_calls);
	}
	free(f);
	return st;
}

static double
cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
	    ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) * 1e-6;
}

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

int
main(int argc, char **argv)
{
	if (argc > 1)
		n_calls = (size_t)strtoul(argv[1], NULL, 10);
	if (argc > 2)
		n_rounds = (size_t)strtoul(argv[2], NULL, 10);
	const char *url = argc > 3 ? argv[3] : "inproc://rpc-inproc-bench";
	if (argc > 4)
		whole = atoi(argv[4]);
	if (n_calls == 0 || n_rounds == 0) {
		fprintf(stderr, "usage: %s [CALLS [ROUNDS [URL [WHOLE]]]]\n",
		    argv[0]);
		return 2;
	}
	asynq_runtime *rt;
	asynq_runtime_cfg rc = { .workers = 1 };
	asynq_rpc_server *srv;
	asynq_rpc_handler hs[] = {
		[ASYNQ__BENCH__LOOKUP__ASYNQ_METHOD_GET] = { .unary = h_get },
		[ASYNQ__BENCH__LOOKUP__ASYNQ_METHOD_GET_BATCH] = { .batch =
		                                                       h_get_batch },
	};
	const char *urls[] = { url };
	const char *icpt = getenv("ASYNQ_BENCH_ICPT");
	bool trace = icpt != NULL && strcmp(icpt, "trace") == 0;
	const asynq_rpc_interceptor *is[] = {
		trace ? &asynq_rpc_trace_interceptor : &count_icpt
	};
	if (icpt != NULL && icpt[0] == '\0')
		icpt = NULL;
	size_t n_is = icpt != NULL ? 1 : 0;
	asynq_rpc_channel_cfg cc = { .urls = urls,
		.n_urls = 1,
		.max_calls = n_calls,
		.no_collapse = getenv("ASYNQ_BENCH_NO_COLLAPSE") != NULL,
		.interceptors = is,
		.n_interceptors = n_is };
	asynq_rpc_server_cfg sc = { .interceptors = is,
		.n_interceptors = n_is };
	if (getenv("ASYNQ_BENCH_DISTINCT") != NULL)
		n_distinct =
		    (size_t)strtoul(getenv("ASYNQ_BENCH_DISTINCT"), NULL, 10);
	if (asynq_runtime_alloc(&rt, &rc) != ASYNQ_OK ||
	    asynq_rpc_server_alloc(&srv, rt, &sc) != ASYNQ_OK ||
	    asynq_rpc_server_add_service(srv, LOOKUP, hs, NULL) != ASYNQ_OK ||
	    asynq_rpc_server_listen(srv, url) != ASYNQ_OK ||
	    asynq_rpc_channel_alloc(&ch, LOOKUP, &cc) != ASYNQ_OK) {
		fprintf(stderr, "rpc_inproc: cannot set up %s\n", url);
		return 1;
	}
	double t0 = now_s(), c0 = cpu_s();
	asynq_future *f = asynq_spawn(client_main, trace ? (void *)1 : NULL);
	asynq_status st = asynq_wait(f);
	double s = now_s() - t0, cpu = cpu_s() - c0;
	asynq_future_rele(f);
	asynq_rpc_channel_free(ch);
	asynq_rpc_server_free(srv);
	asynq_runtime_free(rt);
	asynq_thread_fini();
	if (st != ASYNQ_OK ||
	    (icpt != NULL && !trace && icpt_seen != 4 * n_calls * n_rounds)) {
		fprintf(stderr, "rpc_inproc: wrong answer (%s)\n",
		    st != ASYNQ_OK ? asynq_strerror(st)
		                   : "the interceptors missed calls");
		return 1;
	}
	double calls = (double)n_calls * (double)n_rounds;
	printf("rpc_inproc: %zu x %zu calls (%s handler) over %s: %.0f "
	       "calls/s, %.0f ns CPU per call (client and server)\n",
	    n_rounds, n_calls, whole ? "whole-batch" : "per-call", url,
	    calls / s, cpu * 1e9 / calls);
	return 0;
}
