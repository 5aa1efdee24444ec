/* SPDX-License-Identifier: MIT */
/*
 * The admin endpoint: an HTTP server of its own per process (nng's HTTP
 * server), on a port apart from the RPC ones, for probes, scrapers and
 * people:
 *
 *   /live     200 while the process runs
 *   /ready    200 when every registered server serves, else 503; the body
 *             says, in words, each server's state
 *   /metrics  Prometheus text format (0.0.4): the registered servers'
 *             counters and per-method histograms, channels' counters, each
 *             runtime worker's scheduler counters, the process's resident
 *             memory, CPU time and open files
 *   /status   an HTML page for people: per server and method calls/s,
 *             p50/p99 latency, calls per request and errors, the
 *             channels, and a live chart of calls against requests per
 *             second; its own script draws it from /status.json, polled
 *             each second (no external scripts, styles or fonts)
 *   /status.json  what /status shows: totals, rates and percentiles over
 *             the last 10 s, and up to 120 samples (about 1 s apart, taken
 *             while it is read) of calls/s and requests/s per server
 *   /trace?seconds=N  runs the profiler (asynq/profiler.h) on every
 *             worker of the registered runtimes for N seconds (1..30;
 *             else 400 saying why) and answers one Chrome trace JSON with
 *             each worker its own named thread (open it in
 *             https://ui.perfetto.dev); one at a time (409 meanwhile).
 *             The profiler's trace hook replaces any other on those
 *             workers for the window, and a worker profiling itself
 *             already is left out (otherData.workers says so)
 *
 * A process opens one, registers what it wants reported (servers,
 * channels, runtimes, each under a name that becomes a label), and closes
 * it when it stops. Handlers run on nng's threads; they read counters that
 * may be read from any thread, and ask each worker for its scheduler's
 * counters with a post they wait at most half a second for.
 */
#ifndef ASYNQ_ADMIN_H
#define ASYNQ_ADMIN_H

#include <stddef.h>

#include "asynq/rpc.h"
#include "asynq/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct asynq_admin asynq_admin;

/* asynq_admin_open starts an admin endpoint listening at url, an http URL
 * with a host and port and no path ("http://127.0.0.1:9090"; port 0 takes
 * a free one, see asynq_admin_url). INVALID_ARGUMENT for a URL that does
 * not parse or is not of that form, UNAVAILABLE when the address is in use
 * or cannot be listened on, RESOURCE_EXHAUSTED without memory; then, unless
 * err is NULL, err (err_len bytes) says why in words ("admin
 * http://127.0.0.1:9090: address in use"). Any thread but a worker. */
asynq_status asynq_admin_open(asynq_admin **ap, const char *url, char *err,
    size_t err_len);

/* asynq_admin_url returns the URL the endpoint listens at, with the port
 * it got ("http://127.0.0.1:41234"); borrowed until close. Any thread. */
const char *asynq_admin_url(const asynq_admin *a);

/* asynq_admin_add_server reports on s (borrowed: remove it, or close the
 * admin endpoint, before freeing s) as server="name" (copied): its
 * readiness in /ready and its counters in /metrics. While no server is
 * added, /ready answers 503 (starting). ALREADY_EXISTS if s is added
 * already, RESOURCE_EXHAUSTED without memory. Any thread. */
asynq_status asynq_admin_add_server(asynq_admin *a, asynq_rpc_server *s,
    const char *name);

/* asynq_admin_remove_server stops reporting on s; once it returns, no
 * handler touches s. Not added: nothing happens. Any thread. */
void asynq_admin_remove_server(asynq_admin *a, const asynq_rpc_server *s);

/* asynq_admin_add_channel reports ch's counters in /metrics as
 * channel="name". Rules as asynq_admin_add_server's. Any thread. */
asynq_status asynq_admin_add_channel(asynq_admin *a, asynq_rpc_channel *ch,
    const char *name);

/* asynq_admin_remove_channel stops reporting on ch. Any thread. */
void asynq_admin_remove_channel(asynq_admin *a, const asynq_rpc_channel *ch);

/* asynq_admin_add_runtime reports the scheduler counters of rt's workers
 * in /metrics as runtime="name", worker="i". Rules as
 * asynq_admin_add_server's: remove it before rt is freed. Any thread. */
asynq_status asynq_admin_add_runtime(asynq_admin *a, asynq_runtime *rt,
    const char *name);

/* asynq_admin_remove_runtime stops reporting on rt, and ends a /trace
 * running now (which holds rt until its workers' profilers stopped, so
 * that stopping rt waits at most for that). Any thread but its workers. */
void asynq_admin_remove_runtime(asynq_admin *a, const asynq_runtime *rt);

/* asynq_admin_close stops the endpoint (requests in progress are cut off,
 * a /trace running included; it waits at most for a scrape already
 * running and for the workers to stop a trace, both bounded) and frees
 * it; NULL is ignored. Any thread but a worker. */
void asynq_admin_close(asynq_admin *a);

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_ADMIN_H */
