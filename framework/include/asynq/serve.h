/* SPDX-License-Identifier: MIT */
/*
 * A service program's main in a few lines (//framework/serve): flags,
 * signals, the runtime, the admin endpoint, listening, a counters log, and
 * a graceful stop (drain, close, free), the same for every service.
 *
 *   static asynq_status
 *   start(asynq_serve *sv, void *arg)
 *   {
 *   	return asynq_serve_add(sv, &greeter__greeter__asynq_desc, add_fn,
 *   	    arg, NULL);
 *   }
 *
 *   int
 *   main(int argc, char **argv)
 *   {
 *   	const asynq_serve_program p = {
 *   		.name = "greeter",
 *   		.listen = "tcp://127.0.0.1:7100",
 *   		.start = start,
 *   	};
 *   	return asynq_serve_main(&p, argc, argv);
 *   }
 *
 * What asynq_serve_main does, in order: blocks SIGINT, SIGTERM and SIGHUP
 * (before any thread exists, so that only the main thread ever receives
 * them);
 * parses the flags below and the program's own; opens the admin endpoint
 * (--admin); starts a runtime (--workers, worker hooks, task stack size);
 * calls the program's start, which makes its servers with asynq_serve_add
 * (each listens on --listen unless given a URL, and is reported on the
 * admin endpoint) and its channels (asynq_serve_channel); logs "running"
 * and, unless --quiet, a line of counter changes at most once a second;
 * on the first SIGINT or SIGTERM drains: every server says it is not
 * ready (health NOT_SERVING, /ready 503) and keeps serving for
 * --drain-grace-ms (default 2000; a second signal cuts it short), then
 * closes (answering every call it accepted); then calls the program's stop
 * (channels and state go there), closes the admin endpoint and frees the
 * runtime, then the servers. It returns the exit code: 0 after a signal, 1
 * when set-up failed (the reason is printed, naming what failed), 2 for a
 * bad flag (with the usage).
 *
 * Flags every program has:
 *   --listen URL              where asynq_serve_add's servers listen
 *   --workers N               worker threads (default: one per CPU)
 *   --admin http://HOST:PORT  admin endpoint (/live /ready /metrics
 *                             /status /trace); none by default
 *   --drain-grace-ms MS       time between not-ready and close
 *   --max-connections N, --handshake-timeout-ms MS, --frame-timeout-ms MS,
 *   --idle-timeout-ms MS, --max-write-queue-bytes N,
 *   --queue-target-us US|off, --latency-target-us US|off
 *                             the server limits (asynq_rpc_server_cfg)
 *   --tls-cert PEM, --tls-key PEM, --tls-client-ca PEM, --tls-crl PEM,
 *   --require-client-cert     TLS for tls+tcp:// (mutual with a client CA);
 *                             SIGHUP reads the files again (certificates
 *                             renewed in place; open connections keep
 *                             theirs)
 *   --quiet                   no counters log
 *   --help
 */
#ifndef ASYNQ_SERVE_H
#define ASYNQ_SERVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "asynq/rpc.h"
#include "asynq/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct asynq_serve asynq_serve;

/* How a program's own flag is parsed into *dst. */
typedef enum asynq_serve_flag_kind {
	ASYNQ_FLAG_STRING, /* const char *: the argument (borrowed from argv) */
	ASYNQ_FLAG_SIZE,   /* size_t: a decimal number */
	ASYNQ_FLAG_U32,    /* uint32_t: a decimal number (e.g. milliseconds) */
	ASYNQ_FLAG_BOOL,   /* bool: a switch without argument, sets true */
} asynq_serve_flag_kind;

/* A program's own flag: --name ARG. */
typedef struct asynq_serve_flag {
	const char *name; /* without the dashes: "db" for --db */
	asynq_serve_flag_kind kind;
	void *dst;        /* where the value goes; keeps its default else */
	const char *arg;  /* the argument's name in the usage, e.g. "PATH" */
	const char *help; /* one line for --help */
} asynq_serve_flag;

/* A named counter a program adds to the counters log (as its change). */
typedef struct asynq_serve_counter {
	const char *name; /* static, e.g. "sql" */
	uint64_t value;   /* running total */
} asynq_serve_counter;

#define ASYNQ_SERVE_MAX_COUNTERS 8

/* A service program. Only name is required. */
typedef struct asynq_serve_program {
	const char *name;   /* in messages and logs: "users" */
	const char *listen; /* --listen's default; NULL: none (then servers
	                       need --listen or a URL of their own) */
	const asynq_serve_flag *flags; /* the program's own, n_flags of them */
	size_t n_flags;
	size_t stack_size; /* task stacks of the runtime (default: the
	                      scheduler's; 256 KiB for SQLite, say) */
	/* Per worker, as asynq_runtime_cfg's hooks. */
	void (*worker_start)(asynq_runtime *rt, size_t worker, void *arg);
	void (*worker_stop)(asynq_runtime *rt, size_t worker, void *arg);
	/* After the flags and before the runtime: open files, make data. A
	 * non-OK status ends the program (exit 1); print why first. */
	asynq_status (*prepare)(void *arg);
	/* With the runtime running: make the servers (asynq_serve_add) and
	 * channels. Non-OK ends the program (exit 1); servers already made
	 * are closed. */
	asynq_status (*start)(asynq_serve *sv, void *arg);
	/* After every server closed, with the runtime still running: close
	 * channels, free what start made. Also after a failed start. */
	void (*stop)(asynq_serve *sv, void *arg);
	/* The program's counters for the log line, up to
	 * ASYNQ_SERVE_MAX_COUNTERS; returns how many it wrote. Any thread. */
	size_t (*counters)(void *arg, asynq_serve_counter *out);
	void *arg;
} asynq_serve_program;

/* asynq_serve_main runs the program (see the top of this file) and returns
 * its exit code. Main thread, first thing in main, once. */
int asynq_serve_main(const asynq_serve_program *p, int argc, char **argv);

/* Registers a service's handlers on srv (e.g. its generated
 * <svc>__asynq_serve with a binding). */
typedef asynq_status (*asynq_serve_add_fn)(asynq_rpc_server *srv, void *arg);

/* asynq_serve_add makes a server on the program's runtime with the limits
 * of the flags, for service svc whose handlers add(srv, arg) registers,
 * listening at url (NULL: --listen), reported on the admin endpoint and
 * drained and closed by asynq_serve_main. *out (if not NULL) gets the
 * server, which stays the program's (do not free it). On failure the
 * status is returned after the reason was printed ("greeter: listen
 * tcp://127.0.0.1:7100: address in use"). From start only. */
asynq_status asynq_serve_add(asynq_serve *sv, const asynq_rpc_service_desc *svc,
    asynq_serve_add_fn add, void *arg, const char *url, asynq_rpc_server **out);

/* asynq_serve_channel reports ch on the admin endpoint as channel="name"
 * and adds its calls to the counters log (out_calls, out_sent,
 * out_requests). ch stays the program's: free it in stop. */
void asynq_serve_channel(asynq_serve *sv, asynq_rpc_channel *ch,
    const char *name);

/* The program's runtime, --listen URL (NULL if none), the server limits of
 * the flags, and its admin endpoint (NULL without --admin). */
asynq_runtime *asynq_serve_runtime(const asynq_serve *sv);
const char *asynq_serve_listen(const asynq_serve *sv);
const asynq_rpc_server_cfg *asynq_serve_server_cfg(const asynq_serve *sv);
struct asynq_admin *asynq_serve_admin(const asynq_serve *sv);

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_SERVE_H */
