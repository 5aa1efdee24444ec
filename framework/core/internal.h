/* SPDX-License-Identifier: MIT */
/*
 * Internal structures of the core: futures, tasks, the scheduler. Only
 * framework/core includes this header.
 */
#ifndef ASYNQ_CORE_INTERNAL_H
#define ASYNQ_CORE_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "asynq/batch.h"
#include "asynq/context.h"
#include "asynq/core.h"
#include "asynq/status.h"
#include "coro.h"
#include "platform.h"

enum fut_kind { FUT_CONST, FUT_TASK, FUT_ITEM, FUT_TIMER, FUT_PROMISE };
enum val_kind { VAL_NONE, VAL_I64, VAL_PTR };
enum task_state {
	TASK_CREATED, /* spawned, never run */
	TASK_READY,   /* in the ready queue */
	TASK_RUNNING, /* on the CPU (or running a nested wait) */
	TASK_BLOCKED, /* awaiting futures */
	TASK_DONE,
};
enum batch_state { BATCH_OPEN, BATCH_FLUSHING, BATCH_INFLIGHT, BATCH_DONE };

typedef struct waiter_node {
	asynq_task *task;
	struct waiter_node *next;
} waiter_node;

typedef struct cb_node {
	asynq_done_fn fn;
	void *arg;
	struct cb_node *next;
} cb_node;

struct asynq_future {
	uint32_t refs;
	uint8_t kind;  /* enum fut_kind */
	uint8_t vkind; /* enum val_kind */
	bool done;
	/* Items: a result was claimed (by a flush, a completing thread or a
	 * cancel); set with a compare-and-swap, so a cancel on the scheduler
	 * thread and a reply on an I/O thread never both write the item. */
	_Atomic(bool) claimed;
	asynq_status status;
	union {
		int64_t i;
		void *p;
	} v;
	asynq_task *waiter; /* first waiter, inline */
	asynq_sched *sched;
	waiter_node *more_waiters; /* the rest */
	cb_node *cbs;
	void (*vfree)(void *);
	asynq_error *error;
};

/* The record of a future that is not a task: what follows depends on its
 * kind. Tasks embed the bare asynq_future. */
typedef struct asynqi_fut_rec {
	asynq_future fut;
	union {
		struct {
			asynq_batch *batch;
			int64_t key;
			void *req;
		} item;
		uint64_t due; /* timers: when it fires (monotonic ns) */
		struct asynqi_fut_rec *free_next; /* on the free list */
	};
} asynqi_fut_rec;

/* ASYNQI_ITEM is the batch-item part of an item future. */
#define ASYNQI_ITEM(f) (&((asynqi_fut_rec *)(f))->item)
/* ASYNQI_DUE is a timer future's due time. */
#define ASYNQI_DUE(f) (((asynqi_fut_rec *)(f))->due)

typedef struct scoped_entry {
	const asynq_scoped *key;
	void *value;
	struct scoped_entry *prev;
} scoped_entry;

struct asynq_task {
	asynq_future fut; /* first: a task is a future */
	/* What spawning, awaiting, calling and switching touch first: with the
	 * future, the first 128 bytes; 256 in all. */
	uint8_t state;    /* enum task_state */
	bool dep_failed;  /* a dependency of the current await failed */
	uint32_t pending; /* dependencies not yet computed */
	asynqi_stack *stack;
	asynqi_ctx ctx;
	asynq_task *q_prev, *q_next; /* ready queue; q_next: free list */
	/* The task that started it by awaiting it, until it runs: that task
	 * cannot go on before this one finishes, so it may run this one as a
	 * plain call on a fresh stack instead of switching to it. */
	asynq_task *starter;
	/* What it awaits now, n_deps futures; n_deps 0 with deps set means
	 * one (the short path of asynq_await leaves n_deps alone). */
	asynq_future **deps;
	asynq_task_fn fn;
	void *arg;
	asynq_context *contexts;         /* innermost entered */
	asynq_task *creator;             /* held */
	asynq_task *all_prev, *all_next; /* live tasks */
	scoped_entry *scoped;
	asynq_error *ctx_error; /* first context failure, unreported */
	asynq_error *last_error;
	const char *name;
	const char *file;
	uint64_t id;
	const char *nonsusp_file;
	const struct asynqi_handoff *handoff; /* handoff.h; NULL: none */
	uint32_t depth;
	uint32_t n_deps;
	int line;
	int nonsusp;
	int nonsusp_line;
};

/* A running scheduler loop (asynq_wait); nested waits stack them. */
typedef struct sched_loop {
	asynqi_ctx ctx;
	asynqi_fiber *fiber;
	asynq_future *target;
	struct sched_loop *prev;
} sched_loop;

/* One module's state on one thread (asynq_thread_local). */
typedef struct asynqi_local {
	asynq_thread_local *key;
	void *state;
} asynqi_local;

struct asynq_sched {
	asynq_sched_cfg cfg;
	/* Modules' per-thread states in the order they were made, and by
	 * slot; locals_closed once asynq_thread_fini has freed them. */
	asynqi_local *locals;
	size_t n_locals, cap_locals, n_locals_stopped;
	void **local_by_slot;
	size_t n_slots;
	bool locals_closed;
	asynqi_stack_pool pool;
	asynqi_fiber thread_fiber;
	sched_loop *loop;
	asynq_task *current;
	asynq_task *dead; /* finished task whose stack to free */
	asynq_task *ready_head, *ready_tail;
	asynq_task *all_tasks;
	asynq_batch *pending;  /* open batches with items */
	size_t n_inflight;     /* deferred flushes outstanding */
	size_t n_promises;     /* promises not yet computed */
	asynq_future **timers; /* min-heap on `due`, each held */
	size_t n_timers, cap_timers;
	uint64_t live_futures; /* allocated and not yet freed */
	bool zombie;           /* thread_fini ran; free at last future */
	bool depth_dumped;     /* the depth-limit dump was printed */
	uint64_t batch_seq;
	size_t ctx_in_tasks; /* contexts entered inside tasks */
	asynq_context *thread_contexts;
	scoped_entry *thread_scoped;
	size_t n_scoped; /* scoped values pushed and not popped, all tasks */
	scoped_entry *free_scoped; /* free list of scoped entries */
	size_t n_free_scoped;
	asynq_task *free_tasks;    /* free list of task records */
	asynqi_fut_rec *free_futs; /* free list of other futures */
	size_t n_free_tasks, n_free_futs;
	uint64_t tasks_peak;           /* most live tasks since the last trim */
	uint64_t futs_live, futs_peak; /* other futures, likewise */
	uint64_t trim_due;             /* idle trim planned at (0: none) */
	uint64_t trim_switches;        /* stats.switches when it was planned */
	asynq_sched_stats stats;
	asynq_trace_fn trace;
	void *trace_arg;
	/* Completion queue, written by any thread. */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	asynq_post *posts_head, *posts_tail;
	_Atomic(int) has_posted;
	bool sleeping;
	void *altstack;
};

/* The calling thread's scheduler, or NULL if it has none yet. */
extern _Thread_local asynq_sched *asynqi_tls_sched;

/* Scoped entries a scheduler keeps for reuse: a push and its pop per call
 * (a server's handlers push their call) cost no malloc in steady state, and
 * the list never holds more than this. */
#define ASYNQI_SCOPED_FREE_MAX 256

/* asynqi_scoped_entry_put gives back an entry of s's (popped, or left by a
 * finished task). */
static inline void
asynqi_scoped_entry_put(asynq_sched *s, scoped_entry *e)
{
	if (s->n_free_scoped >= ASYNQI_SCOPED_FREE_MAX || s->zombie) {
		free(e);
		return;
	}
	e->prev = s->free_scoped;
	s->free_scoped = e;
	s->n_free_scoped++;
}

/* asynqi_task_scoped_unwind pops (and gives back) the scoped values t
 * pushed since `mark` (NULL: all of them). */
void asynqi_task_scoped_unwind(asynq_task *t, const void *mark);

/* Trace helpers: emit only when a hook is installed. */
void asynqi_trace_task(asynq_sched *s, asynq_trace_kind kind, asynq_task *t,
    asynq_status st);
void asynqi_trace_batch(asynq_sched *s, asynq_trace_kind kind, asynq_batch *b);
#define ASYNQI_TRACE_TASK(s, kind, t, st)                                      \
	do {                                                                   \
		if (__builtin_expect((s)->trace != NULL, 0))                   \
			asynqi_trace_task((s), (kind), (t), (st));             \
	} while (0)
#define ASYNQI_TRACE_BATCH(s, kind, b)                                         \
	do {                                                                   \
		if (__builtin_expect((s)->trace != NULL, 0))                   \
			asynqi_trace_batch((s), (kind), (b));                  \
	} while (0)

/* asynqi_sched_make makes the thread's default scheduler and returns it
 * (NULL without memory). */
asynq_sched *asynqi_sched_make(void);

/* asynqi_sched_get returns the thread's scheduler, making it on first use. */
static inline asynq_sched *
asynqi_sched_get(void)
{
	asynq_sched *s = asynqi_tls_sched;
	return __builtin_expect(s != NULL, 1) ? s : asynqi_sched_make();
}

/* asynqi_ready_push_front makes t the next task to run. */
static inline void
asynqi_ready_push_front(asynq_sched *s, asynq_task *t)
{
	t->q_prev = NULL;
	t->q_next = s->ready_head;
	if (s->ready_head != NULL)
		s->ready_head->q_prev = t;
	else
		s->ready_tail = t;
	s->ready_head = t;
}

/* asynqi_wake tells waiter w that f, one of the futures it awaits, is
 * computed; the last one makes it ready, at the front: depth first. */
static inline void
asynqi_wake(asynq_sched *s, asynq_task *w, const asynq_future *f)
{
	if (f->status != ASYNQ_OK)
		w->dep_failed = true;
	if (--w->pending == 0 && w->state == TASK_BLOCKED) {
		w->state = TASK_READY;
		asynqi_ready_push_front(s, w);
	}
}

/* asynqi_future_complete_rest wakes f's other waiters and runs its
 * callbacks. */
void asynqi_future_complete_rest(asynq_sched *s, asynq_future *f);

/* asynqi_future_complete marks f computed and wakes its waiters and
 * callbacks; the result must already be stored. */
static inline void
asynqi_future_complete(asynq_sched *s, asynq_future *f)
{
	f->done = true;
	asynq_task *w = f->waiter;
	if (w != NULL) {
		f->waiter = NULL;
		asynqi_wake(s, w, f);
	}
	if (__builtin_expect(f->more_waiters != NULL || f->cbs != NULL, 0))
		asynqi_future_complete_rest(s, f);
}

/* asynqi_future_set_error stores e (owned) as f's outcome; an error whose
 * code is OK is stored as UNKNOWN. */
void asynqi_future_set_error(asynq_future *f, asynq_error *e);

/* asynq_sched_cfg.stack_size's default (sched.c says why). */
#define ASYNQI_DEFAULT_STACK (64 * 1024)

/* Free lists of records, off under the sanitizers so they see every
 * record's life. */
#if ASYNQI_ASAN || ASYNQI_TSAN
#define ASYNQI_USE_FREELIST 0
#else
#define ASYNQI_USE_FREELIST 1
#endif

/* asynqi_value_clear frees f's owned pointer value, if any, and leaves f
 * without a value. */
static inline void
asynqi_value_clear(asynq_future *f)
{
	if (f->vkind == VAL_PTR && f->vfree != NULL)
		f->vfree(f->v.p);
	f->vkind = VAL_NONE;
	f->vfree = NULL;
	f->v.i = 0;
}

/* asynqi_sched_free frees a scheduler that asynq_thread_fini has finished
 * (sched.c). */
void asynqi_sched_free(asynq_sched *s);

/* asynqi_fut_init sets every field of a future record: records come from
 * the free lists dirty, and naming the fields is cheaper than clearing the
 * whole record. */
static inline void
asynqi_fut_init(asynq_future *f, asynq_sched *s, int kind)
{
	f->refs = 1;
	f->kind = (uint8_t)kind;
	f->vkind = VAL_NONE;
	f->done = false;
	atomic_init(&f->claimed, false);
	f->status = ASYNQ_OK;
	f->v.i = 0;
	f->waiter = NULL;
	f->sched = s;
	f->more_waiters = NULL;
	f->cbs = NULL;
	f->vfree = NULL;
	f->error = NULL;
	s->live_futures++;
}

/* asynqi_future_alloc returns a future that is not a task, with one
 * reference and its kind's fields zero; NULL without memory. */
static inline asynq_future *
asynqi_future_alloc(asynq_sched *s, int kind)
{
	asynqi_fut_rec *r = s->free_futs;
	if (__builtin_expect(r != NULL, 1)) {
		s->free_futs = r->free_next;
		s->n_free_futs--;
	} else if ((r = malloc(sizeof(*r))) == NULL) {
		return NULL;
	}
	asynqi_fut_init(&r->fut, s, kind);
	r->item.batch = NULL;
	r->item.key = 0;
	r->item.req = NULL;
	if (++s->futs_live > s->futs_peak)
		s->futs_peak = s->futs_live;
	return &r->fut;
}

/* asynqi_report sends an error nobody awaits to the on_error hook; the error
 * is borrowed. */
void asynqi_report(asynq_sched *s, const asynq_error *e);

/* Batches: flushing, finishing, cancelling at scheduler teardown. */
/* asynqi_best_batch returns the pending batch to flush now, or NULL. With
 * next_due, batches whose flush delay has not passed are skipped and the
 * earliest time one becomes due is stored there (0 if none); without, every
 * pending batch counts. */
asynq_batch *asynqi_best_batch(asynq_sched *s, uint64_t *next_due);
void asynqi_batch_run_flush(asynq_sched *s, asynq_batch *b);
void asynqi_batch_finish(asynq_sched *s, asynq_batch *b);
/* asynqi_batch_free frees a finished batch whose last item is gone. */
void asynqi_batch_free(asynq_batch *b);

/* asynqi_batch_item_freed drops a freed item's reference on its batch. */
static inline void
asynqi_batch_item_freed(asynq_future *item)
{
	asynq_batch *b = ASYNQI_ITEM(item)->batch;
	if (--b->refs == 0 && b->state == BATCH_DONE)
		asynqi_batch_free(b);
}
/* asynqi_process_posted finishes posted completions; with block, it first
 * sleeps until one is posted or the monotonic clock reaches `until` (0: no
 * limit). */
void asynqi_process_posted(asynq_sched *s, bool block, uint64_t until);

/* Timers: fire the expired ones; fail every pending one at teardown. */
void asynqi_timers_fire(asynq_sched *s, uint64_t now);
void asynqi_timers_cancel(asynq_sched *s);
uint64_t asynqi_now_ns(void);

/* Contexts: called by the scheduler around switches. */
void asynqi_ctx_pause_chain(asynq_sched *s, asynq_task *t);
void asynqi_ctx_resume_chain(asynq_sched *s, asynq_task *t);
void asynqi_task_contexts_end(asynq_sched *s, asynq_task *t);

/* Error capture of a task's creator chain. */
asynq_error *asynqi_error_make(asynq_task *t, asynq_status code,
    asynq_error *cause, const char *fmt, va_list ap);
asynq_error *asynqi_error_makef(asynq_task *t, asynq_status code,
    asynq_error *cause, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Debug dumps, bounded to `max_tasks` tasks. */
void asynqi_dump_sched(asynq_sched *s, FILE *f, size_t max_tasks);

/* Debug backend setup for a scheduler. */

/* asynqi_locals_stop runs the stop callbacks of s's thread-locals, newest
 * first; asynqi_locals_free then frees them, newest first. Scheduler
 * thread, from asynq_thread_fini. */
void asynqi_locals_stop(asynq_sched *s);
void asynqi_locals_free(asynq_sched *s);

/* asynqi_overflow_install installs the stack-overflow reporter once per
 * process (overflow.c) and says whether it is in place, so the thread
 * needs an alternate stack. Any thread. */
bool asynqi_overflow_install(void);

/* asynqi_overflow_canary reports t's overwritten stack canary and aborts.
 * On t's (overrun) stack. */
void asynqi_overflow_canary(asynq_task *t) __attribute__((noreturn, cold));

/* asynqi_sig_write writes s to stderr; asynqi_sig_write_int writes v in
 * decimal. Async-signal-safe (write(2) only). */
void asynqi_sig_write(const char *s);
void asynqi_sig_write_int(long long v);

#endif /* ASYNQ_CORE_INTERNAL_H */
