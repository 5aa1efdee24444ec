/* SPDX-License-Identifier: MIT */
/*
 * Tasks, futures and the per-thread scheduler: asynq's programming model in
 * C. A task is a stackful coroutine that may await futures from any depth of
 * ordinary C calls. A future holds a value or an error and is computed exactly
 * once. Each thread has its own scheduler (made on first use): it runs
 * runnable tasks depth-first and, when every task is blocked, flushes the
 * pending batch with the highest priority, so loops of lookups written one by
 * one go out as one batch.
 *
 * Ownership: every function that returns a future hands the caller one
 * reference; drop it with asynq_future_rele. A function that returns a future
 * never returns NULL except when memory is exhausted, and NULL may be passed
 * anywhere a future is expected: it behaves as a future failed with
 * RESOURCE_EXHAUSTED. Futures, tasks and batches belong to the thread that
 * made them; only the calls marked "any thread" may be made from elsewhere.
 */
#ifndef ASYNQ_CORE_H
#define ASYNQ_CORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "asynq/status.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct asynq_future asynq_future;
typedef struct asynq_task asynq_task;
typedef struct asynq_sched asynq_sched;

/* A task body. It returns ASYNQ_OK after setting its value with one of the
 * asynq_return_* calls (a task that sets none has the value 0/NULL), or an
 * error status, usually through asynq_fail or ASYNQ_TRY. */
typedef asynq_status (*asynq_task_fn)(asynq_task *t, void *arg);

/* Scheduler settings; zero fields take the default. */
typedef struct asynq_sched_cfg {
	size_t stack_size;     /* bytes per coroutine stack; default 64 KiB
	                          (pages a task never touches cost no
	                          memory) */
	size_t max_depth;      /* task nesting limit; default 20,000 */
	size_t warm_stacks;    /* idle stacks kept resident; default 64 */
	size_t guarded_stacks; /* stacks with a guard page; default from
	                          vm.max_map_count, the rest get a canary */
	/* Called on the scheduler thread with errors nobody awaits (a failing
	 * on-done callback, a context failing outside any task); default prints
	 * the traceback to stderr. The error is borrowed. */
	void (*on_error)(const asynq_error *e, void *arg);
	void *on_error_arg;
	/* After this long asleep with nothing to run, the scheduler hands back
	 * what a burst left behind: idle stacks beyond warm_stacks (unmapped,
	 * or their pages dropped), cached task and future records, and the
	 * allocator's free memory. Default 250 ms; the hot path never pays
	 * for it. */
	uint32_t idle_trim_ms;
} asynq_sched_cfg;

/* Counters of one scheduler, for tests, benchmarks and logs. */
typedef struct asynq_sched_stats {
	uint64_t tasks_spawned;     /* tasks created */
	uint64_t tasks_started;     /* tasks that began running */
	uint64_t tasks_live;        /* tasks not yet freed */
	uint64_t switches;          /* coroutine switches */
	uint64_t flushes;           /* batch flushes started */
	uint64_t async_flushes;     /* of which completed from a completion */
	uint64_t batches_cancelled; /* batches cancelled */
	uint64_t items_followed;    /* batch calls folded into an identical
	                               key's item (dedup_keys) */
	uint64_t callback_failures; /* on-done callbacks that failed */
	uint64_t context_failures;  /* context pause/resume failures */
	uint64_t sleeps;            /* times the scheduler slept for I/O */
	uint64_t stacks_mapped;     /* coroutine stacks ever mapped */
	uint64_t stacks_guarded;    /* of which with a guard page */
	uint64_t stacks_idle;       /* stacks in the pool now */
	uint64_t stacks_held;       /* stacks mapped now, in use or idle */
	uint64_t stacks_warm;       /* idle stacks whose pages are resident */
	uint64_t records_cached;    /* freed task and future records kept */
	uint64_t trims;             /* idle trims (asynq_sched_trim too) */
} asynq_sched_stats;

/* asynq_thread_init makes the calling thread's scheduler with cfg (NULL for
 * defaults). FAILED_PRECONDITION if the thread already has one,
 * RESOURCE_EXHAUSTED without memory. Calling it is optional: the first asynq
 * call on a thread makes a default scheduler. Any thread, for itself. */
asynq_status asynq_thread_init(const asynq_sched_cfg *cfg);

/* Per-thread state of a module or a program, owned by the thread's
 * scheduler: made on the thread's first asynq_thread_local_get and torn
 * down by asynq_thread_fini (which the runtime's workers run as they stop)
 * in the reverse order of making: every `stop` first, while the scheduler
 * can still run the tasks it starts (to abandon or cancel work), then,
 * once nothing runs, every `free`. Declare one per kind of state, static,
 * with ASYNQ_THREAD_LOCAL_INIT; `slot` is the framework's. */
typedef struct asynq_thread_local {
	const char *name;
	void *(*make)(void);       /* the new state; NULL without memory */
	void (*stop)(void *state); /* optional */
	void (*free)(void *state);
	size_t slot; /* read and set atomically */
} asynq_thread_local;

#define ASYNQ_THREAD_LOCAL_INIT(name, make, stop, free)                        \
	{                                                                      \
		(name), (make), (stop), (free), 0                              \
	}

/* asynq_thread_local_get returns the calling thread's state for k, making
 * it (and the thread's scheduler) on first use. NULL without memory, and
 * once asynq_thread_fini has freed the thread's states (until the next
 * scheduler). Any thread, for itself. */
void *asynq_thread_local_get(asynq_thread_local *k);

/* asynq_thread_fini frees the calling thread's scheduler: the modules'
 * per-thread states are stopped (asynq_thread_local), unflushed batches
 * are cancelled, tasks still referenced are left failed with CANCELLED,
 * then the states are freed.
 * Safe to call without a scheduler. Not from inside a task. */
void asynq_thread_fini(void);

/* asynq_sched_current returns the calling thread's scheduler, making a
 * default one if needed (NULL without memory). Any thread, for itself. */
asynq_sched *asynq_sched_current(void);

/* asynq_sched_stats_get copies the calling thread's scheduler counters. */
void asynq_sched_stats_get(asynq_sched_stats *out);

/* asynq_sched_trim hands back now what an idle scheduler hands back after
 * asynq_sched_cfg.idle_trim_ms: idle stacks beyond warm_stacks, cached
 * records beyond a few hundred, the allocator's free memory. Any thread, for
 * itself; outside tasks or inside, never needed for correctness. */
void asynq_sched_trim(void);

/* ---- Futures -------------------------------------------------------- */

/* asynq_const_i64 returns a future already computed with an integer. */
asynq_future *asynq_const_i64(int64_t v);

/* asynq_const_ptr returns a computed future holding p. If free_fn is not
 * NULL, ownership of p moves to the future, which calls free_fn(p) when it is
 * freed (unless the value was taken with asynq_future_take). */
asynq_future *asynq_const_ptr(void *p, void (*free_fn)(void *));

/* asynq_const_error returns a future failed with e; ownership of e moves to
 * the future. */
asynq_future *asynq_const_error(asynq_error *e);

/* asynq_future_hold takes another reference and returns f. */
asynq_future *asynq_future_hold(asynq_future *f);

/* asynq_future_rele drops a reference; NULL is ignored. A pending task whose
 * last reference is dropped still runs to completion if something awaits it,
 * and is freed when it finishes. Scheduler thread only. */
void asynq_future_rele(asynq_future *f);

/* asynq_future_rele_n drops one reference on each of fs[0..n). */
void asynq_future_rele_n(asynq_future **fs, size_t n);

/* asynq_future_done says whether f is computed (true for NULL). */
bool asynq_future_done(const asynq_future *f);

/* asynq_future_status returns OK for a value and the error's code for an
 * error. A pending future has no status yet: asking is answered
 * FAILED_PRECONDITION (not a code a caller might take for a transient
 * failure and retry); ask asynq_future_done first where f may be pending.
 * RESOURCE_EXHAUSTED for NULL (what an allocation that failed returns). */
asynq_status asynq_future_status(const asynq_future *f);

/* asynq_future_error returns the error of a failed future, borrowed from f,
 * or NULL for a value or a pending future. */
asynq_error *asynq_future_error(const asynq_future *f);

/* asynq_future_i64 returns the integer value (0 unless computed with one). */
int64_t asynq_future_i64(const asynq_future *f);

/* asynq_future_ptr returns the pointer value, borrowed from f. */
void *asynq_future_ptr(const asynq_future *f);

/* asynq_future_take moves the pointer value out: the caller owns it and the
 * future no longer frees it. NULL if f has no pointer value. */
void *asynq_future_take(asynq_future *f);

/* asynq_future_take_owned is asynq_future_take that also returns the free
 * function the value came with (NULL if it was not owned), so the value can
 * be handed on, e.g. to another thread. */
void *asynq_future_take_owned(asynq_future *f, void (**free_fn)(void *));

/* A callback run once when a future is computed. A non-OK return is reported
 * through the scheduler's on_error hook; the other callbacks still run. */
typedef asynq_status (*asynq_done_fn)(asynq_future *f, void *arg);

/* asynq_future_on_done registers fn to run when f is computed, in
 * registration order; if f is already computed fn runs now. Returns
 * RESOURCE_EXHAUSTED without memory, and then fn never runs. Scheduler
 * thread only. */
asynq_status asynq_future_on_done(asynq_future *f, asynq_done_fn fn, void *arg);

/* asynq_sleep returns a future computed (with the value 0) once `ns`
 * nanoseconds of the monotonic clock have passed. Awaiting it suspends only
 * the task; the scheduler runs other tasks and sleeps when nothing else can
 * run. Scheduler thread only. */
asynq_future *asynq_sleep(uint64_t ns);

/* asynq_now_ns returns the monotonic clock in nanoseconds. Any thread. */
uint64_t asynq_now_ns(void);

/* asynq_promise_alloc returns a pending future that code on the scheduler
 * thread completes with asynq_promise_set_* (typically a function posted
 * from another thread with asynq_sched_post). While any promise is pending,
 * a scheduler with nothing to run sleeps until something is posted instead
 * of reporting a deadlock. Scheduler thread only. */
asynq_future *asynq_promise_alloc(void);

/* asynq_promise_set_i64 computes promise p with v and wakes its waiters.
 * FAILED_PRECONDITION if p is not a pending promise. Scheduler thread only. */
asynq_status asynq_promise_set_i64(asynq_future *p, int64_t v);

/* asynq_promise_set_ptr computes p with a pointer; with free_fn, ownership
 * of v moves to p (also on failure, when v is freed at once). */
asynq_status asynq_promise_set_ptr(asynq_future *p, void *v,
    void (*free_fn)(void *));

/* asynq_promise_set_error fails p with e; ownership of e moves to p (also
 * on failure, when e is released at once). */
asynq_status asynq_promise_set_error(asynq_future *p, asynq_error *e);

/* A unit of work posted to a scheduler from any thread: fn(post) runs on the
 * scheduler's thread, from its wait loop, in posting order. The post struct
 * is owned by the poster and must stay valid until fn runs; fn may free it. */
typedef struct asynq_post asynq_post;
struct asynq_post {
	void (*fn)(asynq_post *post);
	asynq_post *next; /* the framework's */
};

/* asynq_sched_post queues p on scheduler s and wakes s if it sleeps; a burst
 * of posts costs one wake-up. Any thread; s must not be freed before p runs.
 */
void asynq_sched_post(asynq_sched *s, asynq_post *p);

/* ---- Tasks ----------------------------------------------------------- */

/* Each task has a stack of asynq_sched_cfg.stack_size bytes of its own and
 * starts in the default floating-point environment, whichever task started
 * it; control modes a task sets stay with it across its awaits. A task that
 * its awaiter starts may run as an ordinary call from the awaiter's stack
 * onto its own: cheaper than switching to it, and nothing a task can
 * observe. */

/* asynq_spawn returns a task future that will run fn(t, arg). Tasks are lazy:
 * nothing runs until the future is awaited or waited on. The name and
 * file:line of the call are recorded for asynq stacks. Past the depth limit
 * the future is failed with RESOURCE_EXHAUSTED. Scheduler thread only. */
#define asynq_spawn(fn, arg)                                                   \
	asynq_spawn_at((fn), (arg), #fn, __FILE__, __LINE__)

/* asynq_spawn_at is asynq_spawn with an explicit name and location. */
asynq_future *asynq_spawn_at(asynq_task_fn fn, void *arg, const char *name,
    const char *file, int line);

/* asynq_task_start starts a task that was spawned lazily without waiting
 * for it (fire and forget): it joins the back of the ready queue and runs
 * the next time the scheduler runs; its result is read from the future later
 * (asynq_future_on_done). No effect on a task already started or on another
 * kind of future. Scheduler thread only. */
void asynq_task_start(asynq_future *f);

/* asynq_await suspends task t until f is computed and returns f's status;
 * on error t's last error (asynq_task_error) is set to f's error. Awaiting
 * from any depth of C calls inside t is allowed. Task only (may suspend). */
asynq_status asynq_await(asynq_task *t, asynq_future *f);

/* asynq_await_all suspends t until every fs[i] is computed (asynq's
 * `yield [a, b, c]`): not-yet-started tasks among them start in array order.
 * Returns OK when all succeeded, else the status of the first failed future in
 * array order (whose error becomes t's last error); every future keeps its own
 * value or error. Task only (may suspend). */
asynq_status asynq_await_all(asynq_task *t, asynq_future **fs, size_t n);

/* asynq_wait runs the scheduler until f is computed and returns its status.
 * From inside a task it runs a nested scheduler loop on the task's stack (as
 * Python asynq's .value() does): f's subtree, and any other task that becomes
 * ready meanwhile, runs synchronously; the calling task's contexts are paused
 * meanwhile and it is the current task again when this returns. INTERNAL if
 * nothing can run and no batch is pending (a dependency cycle). Scheduler
 * thread only. */
asynq_status asynq_wait(asynq_future *f);

/* asynq_wait_all is asynq_wait for several futures, with asynq_await_all's
 * status rule; it runs them under one internal gathering task (counted in
 * the scheduler's task statistics). Scheduler thread only. */
asynq_status asynq_wait_all(asynq_future **fs, size_t n);

/* asynq_return_i64 sets t's value to v and returns ASYNQ_OK, so a task body
 * can end (early, too) with `return asynq_return_i64(t, v);`. */
asynq_status asynq_return_i64(asynq_task *t, int64_t v);

/* asynq_return_ptr sets t's value to p; with free_fn, ownership of p moves
 * to the task's future. A value set earlier is freed. Returns ASYNQ_OK. */
asynq_status asynq_return_ptr(asynq_task *t, void *p, void (*free_fn)(void *));

/* asynq_fail makes an error (capturing t's asynq stack), makes it t's last
 * error and returns code, so a task body can end with
 * `return asynq_fail(t, ASYNQ_NOT_FOUND, "no user %d", id);`. */
asynq_status asynq_fail(asynq_task *t, asynq_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* asynq_fail_with makes e t's last error (ownership moves) and returns its
 * code. */
asynq_status asynq_fail_with(asynq_task *t, asynq_error *e);

/* ASYNQ_TRY returns from the enclosing task body (or any function returning
 * asynq_status) when expr is not OK; the error travels as t's last error. */
#define ASYNQ_TRY(expr)                                                        \
	do {                                                                   \
		asynq_status asynq_try_status_ = (expr);                       \
		if (asynq_try_status_ != ASYNQ_OK)                             \
			return asynq_try_status_;                              \
	} while (0)

/* asynq_task_error returns t's last error, borrowed, or NULL. */
asynq_error *asynq_task_error(const asynq_task *t);

/* asynq_task_current returns the running task of the calling thread, or NULL
 * outside tasks. */
asynq_task *asynq_task_current(void);

/* asynq_task_future returns t as a future (borrowed). */
asynq_future *asynq_task_future(asynq_task *t);

/* asynq_future_task returns the task behind f, or NULL if f is not a task. */
asynq_task *asynq_future_task(asynq_future *f);

/* asynq_task_name returns the function name the task was spawned with. */
const char *asynq_task_name(const asynq_task *t);

/* asynq_task_depth returns how many creator tasks t has (0 for a task
 * spawned outside any task). */
size_t asynq_task_depth(const asynq_task *t);

/* asynq_task_dependencies returns how many futures t is blocked on now; it is
 * 0 whenever t runs, since dependencies are cleared on every resume. */
size_t asynq_task_dependencies(const asynq_task *t);

/* ---- Tracing (for profilers) --------------------------------------------- */

/* What a trace event reports. */
typedef enum asynq_trace_kind {
	ASYNQ_TRACE_SPAWN,   /* a task was spawned */
	ASYNQ_TRACE_RUN,     /* a task was switched in (first run or resume) */
	ASYNQ_TRACE_SUSPEND, /* a task was switched out, blocked on `deps` */
	ASYNQ_TRACE_FINISH,  /* a task's body returned `status` */
	ASYNQ_TRACE_FLUSH_BEGIN, /* a batch flush starts */
	ASYNQ_TRACE_FLUSH_END,   /* the flush call returned (deferred or not) */
	ASYNQ_TRACE_BATCH_DONE,  /* a batch's items are finished */
} asynq_trace_kind;

typedef struct asynq_trace_event {
	asynq_trace_kind kind;
	uint64_t task_id;    /* task events: the task's id (1, 2, ...) */
	uint64_t creator_id; /* SPAWN: the creator's id, 0 outside tasks */
	const char *name;    /* task events: the task's function name */
	size_t deps;         /* SUSPEND: futures it waits for */
	asynq_status status; /* FINISH, BATCH_DONE: the outcome */
	uint64_t batch_id;   /* batch events: the batch's id (1, 2, ...) */
	const char *backend; /* batch events: the backend's name */
	size_t batch_size;   /* batch events: its items */
} asynq_trace_event;

/* A trace hook: called synchronously on the scheduler thread; it must not
 * call back into the scheduler. */
typedef void (*asynq_trace_fn)(const asynq_trace_event *ev, void *arg);

/* asynq_trace_set installs fn on the calling thread's scheduler (NULL turns
 * tracing off; off costs one predictable branch per event). */
void asynq_trace_set(asynq_trace_fn fn, void *arg);

/* asynq_task_id returns t's id, unique within its scheduler. */
uint64_t asynq_task_id(const asynq_task *t);

/* ---- Debugging ------------------------------------------------------- */

/* asynq_dump_stack prints the asynq stack (creator chain, innermost last) of
 * the current task to f. */
void asynq_dump_stack(FILE *f);

/* asynq_dump_sched prints the calling thread's scheduler state: live tasks
 * with their state and dependencies, pending and in-flight batches. */
void asynq_dump_sched(FILE *f);

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_CORE_H */
