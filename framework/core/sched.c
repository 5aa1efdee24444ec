/* SPDX-License-Identifier: MIT */
/*
 * The per-thread scheduler: running tasks (the ready queue, awaiting, the
 * hand-off between coroutines), the wait loop that runs tasks depth-first
 * and flushes batches when every task is blocked, trimming idle memory,
 * and a thread's scheduler's life (asynq_thread_init / _fini). Futures are
 * in future.c, task records in task.c, stack overflow reports in
 * overflow.c, batches in batch.c.
 *
 * Design notes:
 * - One scheduler per thread, reached through a thread-local pointer; no
 *   state is shared between threads except the completion queue (batch.c).
 * - A task is a future (its first member). The scheduler holds one reference
 *   on every task that has started and drops it when the task finishes, so a
 *   running or blocked task never disappears under the scheduler.
 * - Tasks hand the CPU directly to the next ready task when they block or
 *   finish; they fall back to the wait loop's context (the thread's stack, or
 *   the stack of the task that called asynq_wait) when nothing is ready or
 *   the loop's target is computed. A finished task cannot free the stack it
 *   runs on, so it leaves itself in `dead` and whoever runs next frees it.
 * - Ready queue: tasks woken or started go to the front, so execution is
 *   depth-first like asynq's; children awaited together start in array
 *   order.
 * - Stacks are taken when a task first runs and given back when it finishes:
 *   a task that never suspends reuses a warm stack from the pool.
 * - Calls instead of switches: a task that has never run and that the
 *   running task awaits (its `starter`) cannot let the awaiter go on before
 *   it finishes, so nothing needs the awaiter's stack meanwhile. It runs as
 *   an ordinary call onto its own fresh stack (asynqi_stack_call): from
 *   asynq_await at once, or from switch_next when it is next in the queue.
 *   Finishing returns to the awaiter's frame, which then does what a dying
 *   task's switch_next would: go on itself if its dependencies are done and
 *   it is next, else run the next task or return to the wait loop. A called
 *   task that suspends is switched away from and back to like any other,
 *   and returns to its awaiter when it finishes. The wait loop never calls
 *   tasks (it must stay switchable-to), and a dying task never does.
 * - Records: tasks and other futures come from per-scheduler free lists and
 *   are set field by field (no memset, whose rep stos costs more than the
 *   rest of a spawn). The free lists, like the stack pool, are trimmed to
 *   what the last period needed at its peak when an outermost wait ends,
 *   and to a few hundred once the scheduler has slept idle_trim_ms with
 *   nothing run (the idle trim, planned before the sleep and run when it
 *   ends; it also unmaps idle stack slabs and trims the allocator). A
 *   scheduler that keeps working never pays for it.
 * - Overflow: a guard page hit is caught by a SIGSEGV handler on an
 *   alternate stack that names the task; an unguarded stack's canary is
 *   checked on each switch out and when a called task returns. The handler
 *   is installed once, only if SIGSEGV has no handler of the program's
 *   own, sets an alternate stack only on threads without one, reports with
 *   write(2) alone, then restores the default action and returns, so the
 *   fault repeats and kills the process where it happened.
 */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "handoff.h"
#include "internal.h"

_Thread_local asynq_sched *asynqi_tls_sched;

#if ASYNQI_ASAN || ASYNQI_TSAN
#define USE_SEGV_HANDLER 0
#else
#define USE_SEGV_HANDLER 1
#endif

/* ---- Overflow (overflow.c reports) --------------------------------- */

static inline void
canary_check(asynq_task *t)
{
	if (t->stack != NULL &&
	    __builtin_expect(!asynqi_stack_canary_ok(t->stack), 0))
		asynqi_overflow_canary(t);
}

/* ---- Scheduler lifecycle ------------------------------------------- */

static void
default_on_error(const asynq_error *e, void *arg)
{
	(void)arg;
	fputs("asynq: unhandled error\n", stderr);
	asynq_error_print(e, stderr);
}

asynq_status
asynq_thread_init(const asynq_sched_cfg *cfg)
{
	if (asynqi_tls_sched != NULL)
		return ASYNQ_FAILED_PRECONDITION;
	asynq_sched *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	if (cfg != NULL)
		s->cfg = *cfg;
	/* 64 KiB, chosen by measuring (//tests/bench:core with
	 * ASYNQ_BENCH_STACK_KIB): resident memory does not depend on it (only
	 * touched pages count: 8.0 KiB per parked task at 16, 64, 256 and
	 * 1024 KiB stacks), but time does once many tasks are suspended at
	 * once: 10,000 tasks of two awaits each take 15-35% longer on
	 * 256 KiB stacks than on 64 KiB ones (more address space to walk
	 * per stack touched), and 1 MiB stacks cost 25% more to map. So the
	 * default stays small; code with big frames (SQLite) asks for more.
	 */
	if (s->cfg.stack_size == 0)
		s->cfg.stack_size = ASYNQI_DEFAULT_STACK;
	if (s->cfg.max_depth == 0)
		s->cfg.max_depth = 20000;
	if (s->cfg.warm_stacks == 0)
		s->cfg.warm_stacks = 64;
	if (s->cfg.on_error == NULL)
		s->cfg.on_error = default_on_error;
	if (s->cfg.idle_trim_ms == 0)
		s->cfg.idle_trim_ms = 250;
	if (pthread_mutex_init(&s->mu, NULL) != 0)
		goto fail_mu;
	/* Timed sleeps (timers) use the monotonic clock, like asynqi_now_ns. */
	pthread_condattr_t ca;
	if (pthread_condattr_init(&ca) != 0)
		goto fail_cv;
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	int crv = pthread_cond_init(&s->cv, &ca);
	pthread_condattr_destroy(&ca);
	if (crv != 0)
		goto fail_cv;
	asynqi_stack_pool_init(&s->pool, s->cfg.stack_size, s->cfg.warm_stacks,
	    s->cfg.guarded_stacks);
	asynqi_fiber_init_thread(&s->thread_fiber);
	atomic_init(&s->has_posted, 0);
#if USE_SEGV_HANDLER
	/* The guard-page report runs on its own stack (the faulting one is
	 * full), unless the thread has an alternate stack already. */
	stack_t ss, cur;
	if (asynqi_overflow_install() && sigaltstack(NULL, &cur) == 0 &&
	    (cur.ss_flags & SS_DISABLE) != 0) {
		memset(&ss, 0, sizeof(ss));
		ss.ss_size = 64 * 1024;
		s->altstack = malloc(ss.ss_size);
		if (s->altstack != NULL) {
			ss.ss_sp = s->altstack;
			if (sigaltstack(&ss, NULL) != 0) {
				free(s->altstack);
				s->altstack = NULL;
			}
		}
	}
#endif
	asynqi_tls_sched = s;
	return ASYNQ_OK;

fail_cv:
	pthread_mutex_destroy(&s->mu);
fail_mu:
	free(s);
	return ASYNQ_RESOURCE_EXHAUSTED;
}

asynq_sched *
asynqi_sched_make(void)
{
	if (asynqi_tls_sched == NULL)
		(void)asynq_thread_init(NULL);
	return asynqi_tls_sched;
}

asynq_sched *
asynq_sched_current(void)
{
	return asynqi_sched_get();
}

void
asynq_sched_stats_get(asynq_sched_stats *out)
{
	asynq_sched *s = asynqi_sched_get();
	if (s == NULL) {
		memset(out, 0, sizeof(*out));
		return;
	}
	*out = s->stats;
	out->stacks_mapped = s->pool.mapped;
	out->stacks_guarded = s->pool.guarded;
	out->stacks_idle = s->pool.n_idle;
	out->stacks_held = s->pool.mapped - s->pool.unmapped;
	out->stacks_warm = s->pool.n_hot;
	out->records_cached = s->n_free_tasks + s->n_free_futs;
}

void
asynqi_report(asynq_sched *s, const asynq_error *e)
{
	s->cfg.on_error(e, s->cfg.on_error_arg);
}

/* ---- Ready queue ---------------------------------------------------- */

/* Inserts t before `before` (NULL: at the back). */
static void
ready_insert(asynq_sched *s, asynq_task *t, asynq_task *before)
{
	if (before == NULL) {
		t->q_next = NULL;
		t->q_prev = s->ready_tail;
		if (s->ready_tail != NULL)
			s->ready_tail->q_next = t;
		else
			s->ready_head = t;
		s->ready_tail = t;
		return;
	}
	t->q_next = before;
	t->q_prev = before->q_prev;
	if (before->q_prev != NULL)
		before->q_prev->q_next = t;
	else
		s->ready_head = t;
	before->q_prev = t;
}

static asynq_task *
ready_pop(asynq_sched *s)
{
	asynq_task *t = s->ready_head;
	if (t == NULL)
		return NULL;
	s->ready_head = t->q_next;
	if (s->ready_head != NULL)
		s->ready_head->q_prev = NULL;
	else
		s->ready_tail = NULL;
	t->q_next = t->q_prev = NULL;
	return t;
}

void
asynq_trace_set(asynq_trace_fn fn, void *arg)
{
	asynq_sched *s = asynqi_sched_get();
	if (s == NULL)
		return;
	s->trace = fn;
	s->trace_arg = arg;
}

void
asynqi_trace_task(asynq_sched *s, asynq_trace_kind kind, asynq_task *t,
    asynq_status st)
{
	asynq_trace_event ev = {
		.kind = kind,
		.task_id = t->id,
		.creator_id = t->creator != NULL ? t->creator->id : 0,
		.name = t->name,
		.deps = kind == ASYNQ_TRACE_SUSPEND ? t->pending : 0,
		.status = st,
	};
	s->trace(&ev, s->trace_arg);
}

void
asynqi_trace_batch(asynq_sched *s, asynq_trace_kind kind, asynq_batch *b)
{
	asynq_trace_event ev = {
		.kind = kind,
		.batch_id = b->seq,
		.backend = b->backend->name,
		.batch_size = b->n_items,
		.status = kind == ASYNQ_TRACE_BATCH_DONE
		    ? (b->cancelled ? ASYNQ_CANCELLED : b->result)
		    : ASYNQ_OK,
	};
	s->trace(&ev, s->trace_arg);
}

/* Stores the task body's outcome in its future; the scoped values it left
 * pushed are unwound out of line (rare), so this stays small enough to
 * inline. */
static inline void
task_finish(asynq_sched *s, asynq_task *t, asynq_status st)
{
	if (__builtin_expect(t->scoped != NULL, 0))
		asynqi_task_scoped_unwind(t, NULL);
	if (st == ASYNQ_OK) {
		t->fut.status = ASYNQ_OK;
	} else {
		asynqi_value_clear(&t->fut);
		asynq_error *e = t->last_error;
		t->last_error = NULL;
		if (e == NULL || asynq_error_code(e) != st) {
			asynq_error *cause = e;
			e = asynqi_error_makef(t, st, cause,
			    "task %s returned %s", t->name,
			    asynq_status_name(st));
			asynq_error_rele(cause);
		}
		t->fut.status = st;
		t->fut.error = e;
	}
	t->state = TASK_DONE;
	asynqi_future_complete(s, &t->fut);
}

/* Frees the stack of a task that finished on it; runs on the next stack. */
static inline void
after_switch(asynq_sched *s)
{
	asynq_task *d = s->dead;
	if (d != NULL) {
		s->dead = NULL;
		asynqi_stack_put(&s->pool, d->stack);
		d->stack = NULL;
		asynq_future_rele(&d->fut);
	}
}

static void task_entry(void *arg);
static asynq_status take_ctx_error(asynq_task *t);

/* Finishes t with RESOURCE_EXHAUSTED: no stack could be mapped for it. */
static void
task_no_stack(asynq_sched *s, asynq_task *t)
{
	t->fut.status = ASYNQ_RESOURCE_EXHAUSTED;
	t->fut.error = asynqi_error_makef(t, ASYNQ_RESOURCE_EXHAUSTED, NULL,
	    "no coroutine stack for task %s: %s", t->name, strerror(ENOMEM));
	t->state = TASK_DONE;
	asynqi_future_complete(s, &t->fut);
	asynq_future_rele(&t->fut); /* the scheduler's reference */
}

/* Gives t a stack and a first frame; false if no stack can be mapped, in
 * which case t is finished with RESOURCE_EXHAUSTED. */
static bool
task_prepare(asynq_sched *s, asynq_task *t)
{
	if (t->stack != NULL)
		return true;
	asynqi_stack *st = asynqi_stack_get(&s->pool);
	if (__builtin_expect(st == NULL, 0)) {
		task_no_stack(s, t);
		return false;
	}
	t->stack = st;
	t->starter = NULL;
	asynqi_fiber_prepare(&st->fiber, st);
	asynqi_ctx_make(&t->ctx, st->lo, st->size, task_entry, t);
	s->stats.tasks_started++;
	return true;
}

/* Runs t's body and stores its outcome, on t's own stack. Inline: one
 * frame less on every task's stack. */
static inline __attribute__((always_inline)) void
task_run(asynq_sched *s, asynq_task *t)
{
	ASYNQI_TRACE_TASK(s, ASYNQ_TRACE_RUN, t, ASYNQ_OK);
	if (s->ctx_in_tasks > 0)
		asynqi_ctx_resume_chain(s, t);
	asynq_status st = t->fn(t, t->arg);
	if (t->contexts != NULL)
		asynqi_task_contexts_end(s, t);
	if (s->ctx_in_tasks > 0)
		asynqi_ctx_pause_chain(s, t);
	if (st == ASYNQ_OK && t->ctx_error != NULL)
		st = take_ctx_error(t);
	ASYNQI_TRACE_TASK(s, ASYNQ_TRACE_FINISH, t, st);
	task_finish(s, t, st);
}

#ifdef ASYNQI_STACK_CALL
/* Entry of a task run as a call (call_task): returns to its starter. */
static void
called_entry(void *arg)
{
	asynq_task *t = arg;
	asynq_sched *s = t->fut.sched;
	asynqi_fiber_started(&t->stack->fiber);
	task_run(s, t);
	canary_check(t);
	asynqi_fiber_return(&t->starter->stack->fiber);
}

/* Runs next, which has never run and which `from` awaits, as a plain call
 * on a fresh stack: `from` cannot go on before next finishes, so nothing
 * needs from's stack meanwhile, and a task that finishes without suspending
 * costs a call instead of two switches. If next suspends, whatever resumes
 * it later finishes it, and it returns here then. */
static inline __attribute__((always_inline)) void
call_task(asynq_sched *s, asynq_task *from, asynq_task *next,
    const asynqi_fpenv *env)
{
	asynqi_stack *st = asynqi_stack_get(&s->pool);
	if (__builtin_expect(st == NULL, 0)) {
		task_no_stack(s, next);
		return;
	}
	next->stack = st;
	asynqi_fiber_prepare(&st->fiber, st);
	s->stats.tasks_started++;
	next->state = TASK_RUNNING;
	s->current = next;
	s->stats.switches++;
	asynqi_fiber_call(&from->stack->fiber, st, called_entry, next, env);
	/* Back on from's stack: next has finished. */
	s->current = from;
	s->stats.switches++;
	next->stack = NULL;
	asynqi_stack_put(&s->pool, st);
	asynq_future_rele(&next->fut); /* the scheduler's reference */
}
#endif

/* Leaves task `from` for the next ready task or the wait loop. Returns when
 * `from` is resumed (never if it is dying). */
static void
switch_next(asynq_sched *s, asynq_task *from, bool dying)
{
	canary_check(from);
#ifdef ASYNQI_STACK_CALL
	/* from's floating-point state, read at the first call only: nothing
	 * but the scheduler runs on from's stack between calls. */
	asynqi_fpenv env;
	bool have_env = false;
#endif
	for (;;) {
		asynq_task *next = NULL;
		if (!s->loop->target->done)
			next = ready_pop(s);
		if (next == NULL) {
			s->current = NULL;
			s->stats.switches++;
			asynqi_fiber_switch(&from->stack->fiber, &from->ctx,
			    s->loop->fiber, &s->loop->ctx, dying);
			break;
		}
		if (next == from) {
			/* Woken while a task it called ran: go on. */
			next->state = TASK_RUNNING;
			return;
		}
#ifdef ASYNQI_STACK_CALL
		if (next->starter == from && next->stack == NULL && !dying) {
			if (!have_env) {
				asynqi_fpenv_save(&env);
				have_env = true;
			}
			call_task(s, from, next, &env);
			continue;
		}
#endif
		if (!task_prepare(s, next))
			continue;
		next->state = TASK_RUNNING;
		s->current = next;
		s->stats.switches++;
		asynqi_fiber_switch(&from->stack->fiber, &from->ctx,
		    &next->stack->fiber, &next->ctx, dying);
		break;
	}
	after_switch(s);
}

static void
task_entry(void *arg)
{
	asynq_task *t = arg;
	asynq_sched *s = t->fut.sched;
	asynqi_fiber_started(&t->stack->fiber);
	after_switch(s);
	task_run(s, t);
	s->dead = t;
	switch_next(s, t, true);
	ASYNQ_ASSERT(!"a dead task is never resumed");
	abort();
}

/* Registers t as a waiter of f. */
static bool
add_waiter(asynq_future *f, asynq_task *t)
{
	if (f->waiter == NULL) {
		f->waiter = t;
		return true;
	}
	waiter_node *n = malloc(sizeof(*n));
	if (n == NULL)
		return false;
	n->task = t;
	n->next = f->more_waiters;
	f->more_waiters = n;
	return true;
}

/* Undoes add_waiter after a failure part-way through an await. */
static void
remove_waiter(asynq_future *f, asynq_task *t)
{
	if (f->waiter == t) {
		f->waiter = NULL;
		return;
	}
	for (waiter_node **p = &f->more_waiters; *p != NULL; p = &(*p)->next) {
		if ((*p)->task == t) {
			waiter_node *n = *p;
			*p = n->next;
			free(n);
			return;
		}
	}
}

/* The status rule of await_all: OK, or the first failure in array order,
 * which becomes t's last error. */
static asynq_status
collect(asynq_task *t, asynq_future **fs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		asynq_future *f = fs[i];
		asynq_status st = asynq_future_status(f);
		if (st == ASYNQ_OK)
			continue;
		if (t != NULL) {
			asynq_error *e = f != NULL
			    ? asynq_error_hold(f->error)
			    : asynq_error_alloc(ASYNQ_RESOURCE_EXHAUSTED,
			          "out of memory making a future");
			asynq_fail_with(t, e);
		}
		return st;
	}
	return ASYNQ_OK;
}

static asynq_status
take_ctx_error(asynq_task *t)
{
	asynq_error *e = t->ctx_error;
	if (e == NULL)
		return ASYNQ_OK;
	t->ctx_error = NULL;
	return asynq_fail_with(t, e);
}

/* Takes back a child that asynq_await_all started a moment ago. */
static void
ready_unstart(asynq_sched *s, asynq_task *c)
{
	if (c->q_prev != NULL)
		c->q_prev->q_next = c->q_next;
	else
		s->ready_head = c->q_next;
	if (c->q_next != NULL)
		c->q_next->q_prev = c->q_prev;
	else
		s->ready_tail = c->q_prev;
	c->q_prev = c->q_next = NULL;
	c->state = TASK_CREATED;
	c->starter = NULL;
	c->fut.refs--;
}

/* Undoes the first n futures' registration by an await of t that fails. */
static void
await_undo(asynq_sched *s, asynq_task *t, asynq_future **fs, size_t n)
{
	for (size_t j = 0; j < n; j++) {
		asynq_future *f = fs[j];
		if (f == NULL || f->done)
			continue;
		remove_waiter(f, t);
		asynq_task *c = asynq_future_task(f);
		if (c != NULL && c->state == TASK_READY && c->starter == t &&
		    c->stack == NULL)
			ready_unstart(s, c);
	}
}

/* t is about to give up control with a handoff hook set (handoff.h):
 * clears and calls it, then starts the task it returned behind `before`
 * (NULL: at the back) as t's sibling. */
static void __attribute__((noinline))
handoff_run(asynq_sched *s, asynq_task *t, asynq_task *before)
{
	const asynqi_handoff *h = t->handoff;
	t->handoff = NULL;
	asynq_task *c = asynq_future_task(h->fn(h->arg));
	if (c == NULL || c->state != TASK_CREATED || c->fut.sched != s)
		return;
	if (c->creator == t) {
		/* t runs, so the scheduler still holds it after this. */
		t->fut.refs--;
		c->creator = t->creator;
		if (c->creator != NULL)
			c->creator->fut.refs++;
		c->depth = t->depth;
	}
	c->state = TASK_READY;
	c->fut.refs++; /* the scheduler's, until done */
	ready_insert(s, c, before);
}

asynq_status
asynq_await_all(asynq_task *t, asynq_future **fs, size_t n)
{
	asynq_sched *s = t->fut.sched;
	size_t pending = 0;
	bool failed = false;
	if (t != s->current)
		return asynq_fail(t, ASYNQ_FAILED_PRECONDITION,
		    "asynq_await called for task %s, which is not running",
		    t->name);
	/* One pass: register as a waiter of each pending future, and start
	 * the children that have not run, in array order, ahead of everything
	 * else: depth first. */
	asynq_task *before = s->ready_head;
	for (size_t i = 0; i < n; i++) {
		asynq_future *f = fs[i];
		if (f == NULL) {
			failed = true;
			continue;
		}
		if (f->done) {
			failed |= f->status != ASYNQ_OK;
			continue;
		}
		if (__builtin_expect(f == &t->fut, 0)) {
			await_undo(s, t, fs, i);
			return asynq_fail(t, ASYNQ_FAILED_PRECONDITION,
			    "task %s awaits itself", t->name);
		}
		if (__builtin_expect(t->nonsusp > 0 || !add_waiter(f, t), 0)) {
			await_undo(s, t, fs, i);
			if (t->nonsusp > 0)
				return asynq_fail(t, ASYNQ_FAILED_PRECONDITION,
				    "task %s awaits inside a non-suspending "
				    "context entered at %s:%d",
				    t->name, t->nonsusp_file, t->nonsusp_line);
			return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
			    "out of memory awaiting");
		}
		pending++;
		if (f->kind == FUT_TASK) {
			asynq_task *c = (asynq_task *)f;
			if (c->state == TASK_CREATED) {
				c->state = TASK_READY;
				c->starter = t;
				c->fut.refs++; /* the scheduler's, until done */
				ready_insert(s, c, before);
			}
		}
	}
	if (pending > 0) {
		t->pending = pending;
		t->deps = fs;
		t->n_deps = n;
		t->dep_failed = failed;
		t->state = TASK_BLOCKED;
		if (__builtin_expect(t->handoff != NULL, 0))
			handoff_run(s, t, before);
		if (s->ctx_in_tasks > 0)
			asynqi_ctx_pause_chain(s, t);
		ASYNQI_TRACE_TASK(s, ASYNQ_TRACE_SUSPEND, t, ASYNQ_OK);
		switch_next(s, t, false);
		/* Resumed: every dependency is computed. */
		ASYNQI_TRACE_TASK(s, ASYNQ_TRACE_RUN, t, ASYNQ_OK);
		t->deps = NULL;
		t->n_deps = 0;
		failed = t->dep_failed;
		if (s->ctx_in_tasks > 0)
			asynqi_ctx_resume_chain(s, t);
	}
	if (t->ctx_error != NULL) {
		asynq_status st = take_ctx_error(t);
		if (st != ASYNQ_OK)
			return st;
	}
	return failed ? collect(t, fs, n) : ASYNQ_OK;
}

void
asynq_task_start(asynq_future *f)
{
	asynq_task *t = asynq_future_task(f);
	if (t == NULL || t->state != TASK_CREATED)
		return;
	t->state = TASK_READY;
	t->fut.refs++; /* the scheduler's, until it finishes */
	ready_insert(t->fut.sched, t, NULL);
}

asynq_status
asynq_await(asynq_task *t, asynq_future *f)
{
	asynq_sched *s = t->fut.sched;
	/* The common case, one pending future and no hooks, on a short path;
	 * everything else as an await of one. */
	if (f == NULL || f->done || f == &t->fut || f->waiter != NULL ||
	    t != s->current || t->nonsusp > 0 || s->ctx_in_tasks > 0 ||
	    s->trace != NULL)
		return asynq_await_all(t, &f, 1);
	f->waiter = t;
	t->pending = 1;
	t->deps = &f; /* n_deps stays 0: one */
	t->dep_failed = false;
	t->state = TASK_BLOCKED;
	if (__builtin_expect(t->handoff != NULL, 0))
		handoff_run(s, t, s->ready_head);
	if (f->kind == FUT_TASK) {
		asynq_task *c = (asynq_task *)f;
		if (c->state == TASK_CREATED) {
			c->state = TASK_READY;
			c->starter = t;
			c->fut.refs++; /* the scheduler's, until done */
#ifdef ASYNQI_STACK_CALL
			if (!s->loop->target->done) {
				/* What switch_next would do next, without the
				 * queue: run c as a call, then go on if c's end
				 * made t the next to run. */
				/* No canary check: t is not switched out, and
				 * is checked when it is (or when it finishes).
				 */
				asynqi_fpenv env;
				asynqi_fpenv_save(&env);
				call_task(s, t, c, &env);
				if (s->ready_head == t &&
				    !s->loop->target->done) {
					ready_pop(s);
					t->state = TASK_RUNNING;
				} else {
					switch_next(s, t, false);
				}
				goto resumed;
			}
#endif
			asynqi_ready_push_front(s, c);
		}
	}
	switch_next(s, t, false);
#ifdef ASYNQI_STACK_CALL
resumed:
#endif
	/* Hooks installed, or contexts entered, by the tasks that ran. */
	ASYNQI_TRACE_TASK(s, ASYNQ_TRACE_RUN, t, ASYNQ_OK);
	if (__builtin_expect(s->ctx_in_tasks > 0, 0))
		asynqi_ctx_resume_chain(s, t);
	t->deps = NULL;
	if (t->ctx_error != NULL) {
		asynq_status st = take_ctx_error(t);
		if (st != ASYNQ_OK)
			return st;
	}
	return t->dep_failed ? collect(t, &f, 1) : ASYNQ_OK;
}

/* ---- Giving memory back -------------------------------------------- */

/* Freed task and future records always kept for reuse. */
#define RECORDS_WARM 256

static void
free_tasks_trim(asynq_sched *s, uint64_t keep)
{
	while (s->n_free_tasks > keep) {
		asynq_task *t = s->free_tasks;
		s->free_tasks = t->q_next;
		s->n_free_tasks--;
		free(t);
	}
}

static void
free_futs_trim(asynq_sched *s, uint64_t keep)
{
	while (s->n_free_futs > keep) {
		asynqi_fut_rec *r = s->free_futs;
		s->free_futs = r->free_next;
		s->n_free_futs--;
		free(r);
	}
}

/* The cheap trim, at the end of an outermost wait and when work ran since
 * the idle trim was planned: what the last period needed at its peak stays,
 * so a workload that repeats keeps its stacks and records. */
static void
trim_recent(asynq_sched *s)
{
	asynqi_stack_pool_trim(&s->pool);
	uint64_t need = s->tasks_peak - s->stats.tasks_live;
	free_tasks_trim(s, need > RECORDS_WARM ? need : RECORDS_WARM);
	s->tasks_peak = s->stats.tasks_live;
	need = s->futs_peak - s->futs_live;
	free_futs_trim(s, need > RECORDS_WARM ? need : RECORDS_WARM);
	s->futs_peak = s->futs_live;
}

/* jemalloc, when the program links it (the services do): its arenas keep
 * freed pages until more allocation activity decays them, which an idle
 * worker never has. */
extern int mallctl(const char *name, void *oldp, size_t *oldlenp, void *newp,
    size_t newlen) __attribute__((weak));
/* glibc's; declared here rather than through <malloc.h>. */
extern int malloc_trim(size_t pad);

/* Hands the allocator's free pages back to the system. Not under TSan:
 * jemalloc's purge from several threads at once (workers trimming or
 * exiting together) is reported as a race through its own uninstrumented
 * atomics, and TSan's allocator is not the one the program ships with. Not
 * under ASan either: its allocator is not glibc's, and glibc's malloc_trim
 * racing a thread's exit there trips glibc's arena assertion
 * (attached_threads > 0). */
static void
allocator_trim(void)
{
#if !ASYNQI_TSAN && !ASYNQI_ASAN
	if (mallctl != NULL)
		(void)mallctl("arena.4096.purge", NULL, NULL, NULL, 0);
	else
		(void)malloc_trim(0);
#endif
}

/* The full trim, after an idle period: everything beyond the warm counts
 * goes back, then the allocator's free pages. */
static void
trim_all(asynq_sched *s)
{
	asynqi_stack_pool_release(&s->pool, 0);
	free_tasks_trim(s, RECORDS_WARM);
	free_futs_trim(s, RECORDS_WARM);
	s->tasks_peak = s->stats.tasks_live;
	s->futs_peak = s->futs_live;
	allocator_trim();
	s->stats.trims++;
	s->trim_switches = s->stats.switches;
	s->trim_due = 0;
}

/* Whether an idle trim would give anything back. */
static bool
trim_surplus(const asynq_sched *s)
{
	const asynqi_stack_pool *p = &s->pool;
	return p->n_hot > p->warm || p->n_idle >= p->warm + 16 ||
	    s->n_free_tasks > RECORDS_WARM || s->n_free_futs > RECORDS_WARM;
}

/* Called each time the loop is about to sleep: plans an idle trim when work
 * ran since the last full one and left a surplus, and returns when the sleep
 * must end for it (0: none planned). */
static uint64_t
trim_plan(asynq_sched *s)
{
	if (s->trim_due != 0)
		return s->trim_due;
	if (s->stats.switches == s->trim_switches || !trim_surplus(s))
		return 0;
	s->trim_switches = s->stats.switches;
	s->trim_due =
	    asynqi_now_ns() + (uint64_t)s->cfg.idle_trim_ms * 1000000u;
	return s->trim_due;
}

/* Called each time the loop wakes from a sleep, before it looks at timers
 * or posts: runs the planned trim once its time has come. It is full only
 * if nothing ran since it was planned; else what the last period needed
 * stays and the next sleep plans again. */
static void
trim_if_due(asynq_sched *s)
{
	if (s->trim_due == 0 || asynqi_now_ns() < s->trim_due)
		return;
	if (s->stats.switches == s->trim_switches) {
		trim_all(s);
		return;
	}
	trim_recent(s);
	s->trim_due = 0;
}

void
asynq_sched_trim(void)
{
	asynq_sched *s = asynqi_tls_sched;
	if (s != NULL)
		trim_all(s);
}

/* ---- The wait loop -------------------------------------------------- */

static void
run_task(asynq_sched *s, sched_loop *l, asynq_task *t)
{
	if (!task_prepare(s, t))
		return;
	t->state = TASK_RUNNING;
	s->current = t;
	s->stats.switches++;
	asynqi_fiber_switch(l->fiber, &l->ctx, &t->stack->fiber, &t->ctx,
	    false);
	after_switch(s);
}

static asynq_status
run_loop(asynq_sched *s, asynq_future *target)
{
	sched_loop l;
	memset(&l, 0, sizeof(l));
	l.target = target;
	l.prev = s->loop;
	asynq_task *caller = s->current;
	l.fiber = caller != NULL ? &caller->stack->fiber : &s->thread_fiber;
	s->loop = &l;
	s->current = NULL;

	asynq_task *root = asynq_future_task(target);
	if (root != NULL && root->state == TASK_CREATED) {
		root->state = TASK_READY;
		root->fut.refs++; /* the scheduler's, until it finishes */
		asynqi_ready_push_front(s, root);
	}
	asynq_status rv = ASYNQ_OK;
	while (!target->done) {
		if (atomic_load_explicit(&s->has_posted,
		        memory_order_relaxed)) {
			asynqi_process_posted(s, false, 0);
			continue;
		}
		/* Woken tasks run before timers are looked at again: a timer
		 * that came due meanwhile must not put its task ahead of the
		 * task of one that fired before it. (Tasks hand the CPU to
		 * each other directly, so the loop sees timers only when no
		 * task is ready anyway.) */
		asynq_task *t = ready_pop(s);
		if (t != NULL) {
			run_task(s, &l, t);
			continue;
		}
		if (s->n_timers > 0 &&
		    ASYNQI_DUE(s->timers[0]) <= asynqi_now_ns()) {
			asynqi_timers_fire(s, asynqi_now_ns());
			continue;
		}
		uint64_t due = 0;
		asynq_batch *b = asynqi_best_batch(s, &due);
		if (b != NULL) {
			asynqi_batch_run_flush(s, b);
			continue;
		}
		if (s->n_inflight > 0 || s->n_timers > 0 || s->n_promises > 0 ||
		    due != 0) {
			uint64_t until =
			    s->n_timers > 0 ? ASYNQI_DUE(s->timers[0]) : 0;
			if (due != 0 && (until == 0 || due < until))
				until = due;
			uint64_t trim = trim_plan(s);
			if (trim != 0 && (until == 0 || trim < until))
				until = trim;
			s->stats.sleeps++;
			asynqi_process_posted(s, true, until);
			if (trim != 0)
				trim_if_due(s);
			continue;
		}
		fprintf(stderr,
		    "asynq: asynq_wait cannot finish: no task is runnable and "
		    "no batch is pending or in flight; scheduler state:\n");
		asynqi_dump_sched(s, stderr, 20);
		rv = ASYNQ_INTERNAL;
		break;
	}
	s->loop = l.prev;
	s->current = caller;
	if (s->loop == NULL)
		trim_recent(s);
	return rv;
}

static asynq_status
wait_one(asynq_sched *s, asynq_future *f, asynq_status *loop_rv)
{
	asynq_task *caller = s->current;
	if (caller != NULL && f == &caller->fut)
		return asynq_fail(caller, ASYNQ_FAILED_PRECONDITION,
		    "task %s waits on itself", caller->name);
	if (caller != NULL && s->ctx_in_tasks > 0)
		asynqi_ctx_pause_chain(s, caller);
	if (caller != NULL)
		ASYNQI_TRACE_TASK(s, ASYNQ_TRACE_SUSPEND, caller, ASYNQ_OK);
	*loop_rv = run_loop(s, f);
	if (caller != NULL)
		ASYNQI_TRACE_TASK(s, ASYNQ_TRACE_RUN, caller, ASYNQ_OK);
	if (caller != NULL && s->ctx_in_tasks > 0)
		asynqi_ctx_resume_chain(s, caller);
	return ASYNQ_OK;
}

asynq_status
asynq_wait(asynq_future *f)
{
	asynq_sched *s = asynqi_sched_get();
	if (f == NULL || s == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq_task *caller = s->current;
	asynq_status rv = ASYNQ_OK;
	if (!f->done) {
		/* Other tasks run on top of the caller's stack meanwhile. */
		if (caller != NULL && caller->handoff != NULL)
			handoff_run(s, caller, s->ready_head);
		asynq_status st = wait_one(s, f, &rv);
		if (st != ASYNQ_OK)
			return st;
		if (rv != ASYNQ_OK)
			return caller != NULL
			    ? asynq_fail(caller, rv,
			          "asynq_wait: deadlock, nothing can run")
			    : rv;
	}
	if (caller != NULL) {
		asynq_status st = take_ctx_error(caller);
		if (st != ASYNQ_OK)
			return st;
	}
	return collect(caller, &f, 1);
}

typedef struct gather {
	asynq_future **fs;
	size_t n;
} gather;

static asynq_status
gather_task(asynq_task *t, void *arg)
{
	gather *g = arg;
	return asynq_await_all(t, g->fs, g->n);
}

asynq_status
asynq_wait_all(asynq_future **fs, size_t n)
{
	asynq_sched *s = asynqi_sched_get();
	if (s == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	gather g = { fs, n };
	asynq_future *all = asynq_spawn(gather_task, &g);
	if (all == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq_status st = asynq_wait(all);
	asynq_future_rele(all);
	if (st == ASYNQ_INTERNAL)
		return st;
	return collect(s->current, fs, n);
}

/* ---- Teardown ------------------------------------------------------- */

void
asynq_thread_fini(void)
{
	asynq_sched *s = asynqi_tls_sched;
	if (s == NULL)
		return;
	if (s->current != NULL || s->loop != NULL) {
		fprintf(stderr,
		    "asynq: asynq_thread_fini inside a task or "
		    "asynq_wait; ignored\n");
		return;
	}
	/* Modules first: they abandon or cancel what they started, and the
	 * drain below runs what that wakes. */
	asynqi_locals_stop(s);
	asynqi_timers_cancel(s);
	/* Cancel what never flushed and let woken tasks finish. */
	for (;;) {
		asynq_batch *b = asynqi_best_batch(s, NULL);
		if (b != NULL) {
			asynq_batch_cancel(b);
			continue;
		}
		if (s->n_inflight > 0) {
			asynqi_process_posted(s, true, 0);
			continue;
		}
		if (s->ready_head == NULL)
			break;
		/* Run the woken tasks with a loop whose target never
		 * completes until the queue drains. */
		asynq_future never;
		memset(&never, 0, sizeof(never));
		sched_loop l;
		memset(&l, 0, sizeof(l));
		l.target = &never;
		l.fiber = &s->thread_fiber;
		s->loop = &l;
		asynq_task *t;
		while ((t = ready_pop(s)) != NULL)
			run_task(s, &l, t);
		s->loop = NULL;
	}
	/* Nothing runs any more: the modules' states go. */
	asynqi_locals_free(s);
	/* Tasks that never ran or stay blocked can never finish now: drop their
	 * stacks and leave them failed with CANCELLED. */
	for (asynq_task *t = s->all_tasks; t != NULL; t = t->all_next) {
		if (t->stack != NULL) {
			asynqi_stack_put(&s->pool, t->stack);
			t->stack = NULL;
		}
		if (t->state != TASK_DONE) {
			t->state = TASK_DONE;
			t->fut.done = true;
			t->fut.status = ASYNQ_CANCELLED;
			t->fut.error = asynqi_error_makef(t, ASYNQ_CANCELLED,
			    NULL, "task %s cancelled by asynq_thread_fini",
			    t->name);
		}
	}
#if USE_SEGV_HANDLER
	if (s->altstack != NULL) {
		stack_t ss;
		memset(&ss, 0, sizeof(ss));
		ss.ss_flags = SS_DISABLE;
		sigaltstack(&ss, NULL);
		free(s->altstack);
		s->altstack = NULL;
	}
#endif
	free_tasks_trim(s, 0);
	free_futs_trim(s, 0);
	while (s->free_scoped != NULL) {
		scoped_entry *e = s->free_scoped;
		s->free_scoped = e->prev;
		free(e);
	}
	s->n_free_scoped = 0;
	asynqi_stack_pool_fini(&s->pool);
	allocator_trim(); /* the records of a burst were many small blocks */
	asynqi_tls_sched = NULL;
	s->zombie = true;
	if (s->live_futures == 0)
		asynqi_sched_free(s);
}

void
asynqi_sched_free(asynq_sched *s)
{
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	free(s);
}
