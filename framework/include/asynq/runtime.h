/* SPDX-License-Identifier: MIT */
/*
 * The multi-threaded runtime: N worker threads, each running its own asynq
 * scheduler (own stack pool, own completion queue, nothing shared in the hot
 * path). Work is submitted from any thread and lands on one worker, where it
 * runs as a task and batches with everything else that worker runs: calls
 * from different requests to the same backend share a batch. Stopping is
 * graceful: new work is refused, and everything already accepted finishes
 * and is answered before the workers exit.
 */
#ifndef ASYNQ_RUNTIME_H
#define ASYNQ_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#include "asynq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct asynq_runtime asynq_runtime;
typedef struct asynq_ticket asynq_ticket;

/* Runtime settings; zero fields take the default. */
typedef struct asynq_runtime_cfg {
	size_t workers;        /* worker threads; default one per online CPU */
	asynq_sched_cfg sched; /* each worker's scheduler settings */
	/* Optional: run on each worker thread after its scheduler exists and
	 * before it takes work (e.g. to make per-worker backends), and when it
	 * stops, after the last accepted work is answered. */
	void (*worker_start)(asynq_runtime *rt, size_t worker, void *arg);
	void (*worker_stop)(asynq_runtime *rt, size_t worker, void *arg);
	void *worker_arg;
} asynq_runtime_cfg;

/* asynq_runtime_alloc starts a runtime's worker threads and returns once
 * every worker is ready. RESOURCE_EXHAUSTED without memory or threads. Any
 * thread that is not one of its workers. */
asynq_status asynq_runtime_alloc(asynq_runtime **rtp,
    const asynq_runtime_cfg *cfg);

/* asynq_runtime_stop refuses new work (submissions fail with UNAVAILABLE),
 * waits until everything already accepted is answered, runs worker_stop on
 * each worker and joins the threads. Idempotent. Not from a worker. */
void asynq_runtime_stop(asynq_runtime *rt);

/* asynq_runtime_free stops the runtime if needed and frees it; NULL is
 * ignored. Not from a worker. */
void asynq_runtime_free(asynq_runtime *rt);

/* asynq_runtime_workers returns the number of worker threads. */
size_t asynq_runtime_workers(const asynq_runtime *rt);

/* asynq_runtime_sched returns worker i's scheduler, for asynq_sched_post
 * from other threads (I/O callbacks). Valid until the runtime stops. */
asynq_sched *asynq_runtime_sched(const asynq_runtime *rt, size_t i);

/* asynq_runtime_current_worker returns the calling thread's worker index in
 * its runtime, or -1 on a thread that is not a worker. */
int asynq_runtime_current_worker(void);

/* asynq_runtime_hold counts one unit of accepted work (e.g. an RPC request)
 * that stop must wait for; UNAVAILABLE once the runtime is stopping, and
 * then nothing was counted. Any thread. */
asynq_status asynq_runtime_hold(asynq_runtime *rt);

/* asynq_runtime_rele marks a held unit of work answered. Any thread. */
void asynq_runtime_rele(asynq_runtime *rt);

/* asynq_runtime_submit runs fn(t, arg) as a task on worker `worker` (or on
 * the next worker in turn when worker < 0) and returns a ticket for its
 * result in *tkp. UNAVAILABLE when the runtime is stopping, INVALID_ARGUMENT
 * for a worker out of range, RESOURCE_EXHAUSTED without memory; then no
 * ticket is made and fn never runs. arg is borrowed until the task ends.
 * The task is named after fn and the call's file:line in asynq stacks. Any
 * thread. */
#define asynq_runtime_submit(rt, worker, fn, arg, tkp)                         \
	asynq_runtime_submit_at((rt), (worker), (fn), (arg), (tkp), #fn,       \
	    __FILE__, __LINE__)

/* asynq_runtime_submit_at is asynq_runtime_submit with an explicit name and
 * location (static strings). */
asynq_status asynq_runtime_submit_at(asynq_runtime *rt, int worker,
    asynq_task_fn fn, void *arg, asynq_ticket **tkp, const char *name,
    const char *file, int line);

/* asynq_ticket_wait blocks until the ticket's task has finished and returns
 * its status. FAILED_PRECONDITION on a worker thread (blocking a worker would
 * stall every task on it). Any other thread. */
asynq_status asynq_ticket_wait(asynq_ticket *tk);

/* asynq_ticket_i64 returns the task's integer value once it finished. */
int64_t asynq_ticket_i64(const asynq_ticket *tk);

/* asynq_ticket_take_ptr moves the task's pointer value to the caller (who
 * then frees it) once it finished; NULL if there is none. */
void *asynq_ticket_take_ptr(asynq_ticket *tk);

/* asynq_ticket_error returns the task's error (borrowed from the ticket) or
 * NULL. */
asynq_error *asynq_ticket_error(const asynq_ticket *tk);

/* asynq_ticket_free frees a ticket; it may be called before the task
 * finishes (the result is then discarded). NULL is ignored. Any thread. */
void asynq_ticket_free(asynq_ticket *tk);

/* ---- Blocking work ------------------------------------------------------ */

/* Work that blocks its thread (a synchronous database query, a slow system
 * call, a CPU-heavy step): run on a thread of the process's blocking pool,
 * never on a scheduler's thread. It must not call asynq functions; what it
 * computes goes through arg. A non-OK status fails the future with it and
 * the message in *why (static text, or NULL). */
typedef asynq_status (*asynq_blocking_fn)(void *arg, const char **why);

/* Bounds of the blocking pool; zero fields take the defaults. */
typedef struct asynq_blocking_cfg {
	size_t threads;    /* pool threads, started as needed; default 4 */
	size_t max_queued; /* calls waiting for a thread; default 4,096 */
} asynq_blocking_cfg;

/* asynq_blocking_configure sets the pool's bounds; FAILED_PRECONDITION once
 * the pool has run a call, INVALID_ARGUMENT for more than 256 threads. Any
 * thread. */
asynq_status asynq_blocking_configure(const asynq_blocking_cfg *cfg);

/* asynq_run_blocking starts fn(arg) on a thread of the blocking pool and
 * returns a future computed (value 0) when it returned OK, or failed with
 * its status; meanwhile the scheduler runs its other tasks. arg is borrowed
 * until the future is computed. Fails RESOURCE_EXHAUSTED at once when
 * max_queued calls already wait. asynq_thread_fini waits for calls in
 * flight. Scheduler thread only. */
asynq_future *asynq_run_blocking(asynq_blocking_fn fn, void *arg);

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_RUNTIME_H */
