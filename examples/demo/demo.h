/* SPDX-License-Identifier: MIT */
/*
 * The demo the README runs, as a function so that a test can run it: it
 * makes the example services' databases, starts users, answers, cache and
 * frontend (in one process over inproc://, or with --tcp as processes on
 * loopback TCP; --replicas N runs users and answers as N processes each),
 * puts a load of concurrent frontend requests on them with
 * and without batching, and prints throughput, latency and what each
 * service was asked, so the batching shows. `demo --help` lists the flags.
 */
#ifndef EXAMPLES_DEMO_DEMO_H
#define EXAMPLES_DEMO_DEMO_H

#include <stdbool.h>
#include <stdint.h>

#include "services/common/svc.h"

/* Most replicas of users and of answers (--replicas). */
#define DEMO_MAX_REPLICAS 8

/* The services a run starts, in the order they start. */
enum { DEMO_USERS, DEMO_ANSWERS, DEMO_CACHE, DEMO_FRONTEND, DEMO_N_SVC };

/* What one workload run measured. */
typedef struct demo_run {
	bool ran;
	uint64_t requests;     /* frontend requests that succeeded */
	double elapsed_s;      /* wall time of the workload */
	double rps;            /* requests per second */
	double p50_ms, p99_ms; /* request latency */
	/* Each service's counters over the workload: calls served,
	 * requests received, SQL run, calls and requests made. */
	svc_counters svc[DEMO_N_SVC];
	uint64_t client_calls, client_requests; /* demo -> frontend */
	/* With --replicas N: the calls each replica of users (0) and
	 * answers (1) served, replica 0 first; svc[] holds their sums. */
	size_t replicas;
	uint64_t replica_calls[2][DEMO_MAX_REPLICAS];
} demo_run;

/* What demo_main measured: the batched and unbatched runs it made. */
typedef struct demo_result {
	demo_run batched, unbatched;
} demo_result;

/* demo_main runs the demo with command-line arguments argv[1..argc) and
 * returns the process exit status: 0 on success, 1 when anything failed
 * (printed to stderr), 2 for bad flags. With --tcp it forks the service
 * processes, so call it before anything in the process has used nng (nng's
 * threads do not survive fork). out (may be NULL) receives the figures. */
int demo_main(int argc, char **argv, demo_result *out);

#endif /* EXAMPLES_DEMO_DEMO_H */
