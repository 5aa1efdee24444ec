/* SPDX-License-Identifier: MIT */
/*
 * The multi-threaded runtime: worker threads each running one scheduler,
 * submission from any thread, tickets for results, graceful stop.
 *
 * Design notes:
 * - A worker thread makes its scheduler, makes a "stop" promise and runs
 *   asynq_wait on it: the wait loop runs tasks, flushes batches and sleeps on
 *   the scheduler's completion queue when idle (a pending promise keeps it
 *   sleeping rather than reporting a deadlock). Everything from outside
 *   (submissions, I/O completions, stop) arrives as a post on that queue, so
 *   a burst of them costs the worker one wake-up.
 * - Accepted work is counted in `inflight` before it is queued; stop first
 *   sets `stopping` (after which asynq_runtime_hold refuses and undoes its
 *   count), then waits for `inflight` to reach zero, and only then tells the
 *   workers to leave. So nothing accepted is dropped, and nothing posted after
 *   a worker left can exist.
 * - Tickets are shared by the submitter and the worker: two references,
 *   atomically counted; the result is handed over under the ticket's mutex.
 * - Lock order: a ticket's mutex and the runtime's mutex are never held
 *   together; neither is held while posting.
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "asynq/asynq.h"

typedef struct worker {
	asynq_runtime *rt;
	size_t index;
	pthread_t thread;
	asynq_sched *sched;
	asynq_future *stop; /* promise, worker thread only */
	asynq_post stop_post;
	bool started;
	asynq_status init_status;
} worker;

struct asynq_runtime {
	asynq_runtime_cfg cfg;
	size_t n;
	worker *workers;
	atomic_size_t next;   /* round-robin cursor */
	atomic_long inflight; /* accepted, not yet answered */
	atomic_bool stopping;
	bool stopped;
	pthread_mutex_t mu; /* guards the counters below and `started` */
	pthread_cond_t cv;
	size_t started;
};

struct asynq_ticket {
	asynq_post post;
	asynq_runtime *rt;
	asynq_task_fn fn;
	void *arg;
	const char *name, *file;
	int line;
	atomic_int refs;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
	asynq_status status;
	int64_t i;
	void *p;
	void (*pfree)(void *);
	asynq_error *err;
};

static _Thread_local int tls_worker = -1;

int
asynq_runtime_current_worker(void)
{
	return tls_worker;
}

size_t
asynq_runtime_workers(const asynq_runtime *rt)
{
	return rt->n;
}

asynq_sched *
asynq_runtime_sched(const asynq_runtime *rt, size_t i)
{
	return i < rt->n ? rt->workers[i].sched : NULL;
}

asynq_status
asynq_runtime_hold(asynq_runtime *rt)
{
	atomic_fetch_add(&rt->inflight, 1);
	if (atomic_load(&rt->stopping)) {
		asynq_runtime_rele(rt);
		return ASYNQ_UNAVAILABLE;
	}
	return ASYNQ_OK;
}

void
asynq_runtime_rele(asynq_runtime *rt)
{
	if (atomic_fetch_sub(&rt->inflight, 1) == 1 &&
	    atomic_load(&rt->stopping)) {
		pthread_mutex_lock(&rt->mu);
		pthread_cond_broadcast(&rt->cv);
		pthread_mutex_unlock(&rt->mu);
	}
}

/* ---- Worker threads -------------------------------------------------- */

static void
stop_here(asynq_post *p)
{
	worker *w = (worker *)((char *)p - offsetof(worker, stop_post));
	asynq_promise_set_i64(w->stop, 0);
}

static void *
worker_main(void *arg)
{
	worker *w = arg;
	asynq_runtime *rt = w->rt;
	tls_worker = (int)w->index;
	asynq_status st = asynq_thread_init(&rt->cfg.sched);
	if (st == ASYNQ_OK) {
		w->sched = asynq_sched_current();
		w->stop = asynq_promise_alloc();
		if (w->stop == NULL)
			st = ASYNQ_RESOURCE_EXHAUSTED;
	}
	if (st == ASYNQ_OK && rt->cfg.worker_start != NULL)
		rt->cfg.worker_start(rt, w->index, rt->cfg.worker_arg);
	pthread_mutex_lock(&rt->mu);
	w->init_status = st;
	w->started = true;
	rt->started++;
	pthread_cond_broadcast(&rt->cv);
	pthread_mutex_unlock(&rt->mu);
	if (st != ASYNQ_OK) {
		asynq_thread_fini();
		return NULL;
	}
	(void)asynq_wait(w->stop);
	if (rt->cfg.worker_stop != NULL)
		rt->cfg.worker_stop(rt, w->index, rt->cfg.worker_arg);
	asynq_future_rele(w->stop);
	w->stop = NULL;
	asynq_thread_fini();
	return NULL;
}

static size_t
online_cpus(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);
	return n > 0 ? (size_t)n : 1;
}

asynq_status
asynq_runtime_alloc(asynq_runtime **rtp, const asynq_runtime_cfg *cfg)
{
	asynq_status st = ASYNQ_RESOURCE_EXHAUSTED;
	asynq_runtime *rt = calloc(1, sizeof(*rt));
	if (rt == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	if (cfg != NULL)
		rt->cfg = *cfg;
	rt->n = rt->cfg.workers != 0 ? rt->cfg.workers : online_cpus();
	rt->workers = calloc(rt->n, sizeof(*rt->workers));
	if (rt->workers == NULL)
		goto fail_workers;
	if (pthread_mutex_init(&rt->mu, NULL) != 0)
		goto fail_mu;
	if (pthread_cond_init(&rt->cv, NULL) != 0)
		goto fail_cv;
	atomic_init(&rt->next, 0);
	atomic_init(&rt->inflight, 0);
	atomic_init(&rt->stopping, false);

	size_t made = 0;
	for (; made < rt->n; made++) {
		worker *w = &rt->workers[made];
		w->rt = rt;
		w->index = made;
		w->stop_post.fn = stop_here;
		if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
			break;
	}
	pthread_mutex_lock(&rt->mu);
	while (rt->started < made)
		pthread_cond_wait(&rt->cv, &rt->mu);
	pthread_mutex_unlock(&rt->mu);
	st = made == rt->n ? ASYNQ_OK : ASYNQ_RESOURCE_EXHAUSTED;
	for (size_t i = 0; i < made; i++)
		if (rt->workers[i].init_status != ASYNQ_OK)
			st = rt->workers[i].init_status;
	if (st != ASYNQ_OK) {
		/* Unwind: tell the ready workers to leave, join them all. */
		atomic_store(&rt->stopping, true);
		for (size_t i = 0; i < made; i++) {
			worker *w = &rt->workers[i];
			if (w->init_status == ASYNQ_OK)
				asynq_sched_post(w->sched, &w->stop_post);
		}
		for (size_t i = 0; i < made; i++)
			pthread_join(rt->workers[i].thread, NULL);
		goto fail_threads;
	}
	*rtp = rt;
	return ASYNQ_OK;

fail_threads:
	pthread_cond_destroy(&rt->cv);
fail_cv:
	pthread_mutex_destroy(&rt->mu);
fail_mu:
	free(rt->workers);
fail_workers:
	free(rt);
	return st == ASYNQ_OK ? ASYNQ_RESOURCE_EXHAUSTED : st;
}

void
asynq_runtime_stop(asynq_runtime *rt)
{
	if (rt->stopped)
		return;
	atomic_store(&rt->stopping, true);
	pthread_mutex_lock(&rt->mu);
	while (atomic_load(&rt->inflight) > 0)
		pthread_cond_wait(&rt->cv, &rt->mu);
	pthread_mutex_unlock(&rt->mu);
	for (size_t i = 0; i < rt->n; i++)
		asynq_sched_post(rt->workers[i].sched,
		    &rt->workers[i].stop_post);
	for (size_t i = 0; i < rt->n; i++)
		pthread_join(rt->workers[i].thread, NULL);
	rt->stopped = true;
}

void
asynq_runtime_free(asynq_runtime *rt)
{
	if (rt == NULL)
		return;
	asynq_runtime_stop(rt);
	pthread_cond_destroy(&rt->cv);
	pthread_mutex_destroy(&rt->mu);
	free(rt->workers);
	free(rt);
}

/* ---- Tickets ---------------------------------------------------------- */

static void
ticket_rele(asynq_ticket *tk)
{
	if (atomic_fetch_sub(&tk->refs, 1) != 1)
		return;
	if (tk->pfree != NULL)
		tk->pfree(tk->p);
	asynq_error_rele(tk->err);
	pthread_cond_destroy(&tk->cv);
	pthread_mutex_destroy(&tk->mu);
	free(tk);
}

/* On the worker: hand the task's result to the ticket. */
static asynq_status
ticket_deliver(asynq_future *f, void *arg)
{
	asynq_ticket *tk = arg;
	asynq_runtime *rt = tk->rt;
	asynq_status st = asynq_future_status(f);
	int64_t i = asynq_future_i64(f);
	asynq_error *err = asynq_error_hold(asynq_future_error(f));
	/* Move a pointer value out with its owner's free function; the
	 * future would free it otherwise. */
	void (*pfree)(void *) = NULL;
	void *p = asynq_future_take_owned(f, &pfree);
	pthread_mutex_lock(&tk->mu);
	tk->status = st;
	tk->i = i;
	tk->p = p;
	tk->pfree = pfree;
	tk->err = err;
	tk->done = true;
	pthread_cond_broadcast(&tk->cv);
	pthread_mutex_unlock(&tk->mu);
	asynq_future_rele(f);
	ticket_rele(tk);
	asynq_runtime_rele(rt);
	return ASYNQ_OK;
}

/* On the worker: start the submitted task. */
static void
ticket_start(asynq_post *p)
{
	asynq_ticket *tk = (asynq_ticket *)p;
	asynq_future *f =
	    asynq_spawn_at(tk->fn, tk->arg, tk->name, tk->file, tk->line);
	if (f == NULL ||
	    asynq_future_on_done(f, ticket_deliver, tk) != ASYNQ_OK) {
		if (f != NULL)
			asynq_future_rele(f);
		f = asynq_const_error(asynq_error_alloc(
		    ASYNQ_RESOURCE_EXHAUSTED, "no memory to start a task"));
		(void)ticket_deliver(f, tk);
		return;
	}
	asynq_task_start(f);
}

asynq_status
asynq_runtime_submit_at(asynq_runtime *rt, int worker_index, asynq_task_fn fn,
    void *arg, asynq_ticket **tkp, const char *name, const char *file, int line)
{
	if (worker_index >= (int)rt->n)
		return ASYNQ_INVALID_ARGUMENT;
	asynq_status st = ASYNQ_RESOURCE_EXHAUSTED;
	asynq_ticket *tk = calloc(1, sizeof(*tk));
	if (tk == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	if (pthread_mutex_init(&tk->mu, NULL) != 0)
		goto fail_mu;
	if (pthread_cond_init(&tk->cv, NULL) != 0)
		goto fail_cv;
	st = asynq_runtime_hold(rt);
	if (st != ASYNQ_OK)
		goto fail_hold;
	tk->rt = rt;
	tk->fn = fn;
	tk->arg = arg;
	tk->name = name;
	tk->file = file;
	tk->line = line;
	tk->post.fn = ticket_start;
	atomic_init(&tk->refs, 2); /* the submitter's and the worker's */
	size_t w = worker_index >= 0 ? (size_t)worker_index
	                             : atomic_fetch_add(&rt->next, 1) % rt->n;
	*tkp = tk;
	asynq_sched_post(rt->workers[w].sched, &tk->post);
	return ASYNQ_OK;

fail_hold:
	pthread_cond_destroy(&tk->cv);
fail_cv:
	pthread_mutex_destroy(&tk->mu);
fail_mu:
	free(tk);
	return st == ASYNQ_OK ? ASYNQ_RESOURCE_EXHAUSTED : st;
}

asynq_status
asynq_ticket_wait(asynq_ticket *tk)
{
	if (tls_worker >= 0)
		return ASYNQ_FAILED_PRECONDITION;
	pthread_mutex_lock(&tk->mu);
	while (!tk->done)
		pthread_cond_wait(&tk->cv, &tk->mu);
	asynq_status st = tk->status;
	pthread_mutex_unlock(&tk->mu);
	return st;
}

int64_t
asynq_ticket_i64(const asynq_ticket *tk)
{
	return tk->done ? tk->i : 0;
}

void *
asynq_ticket_take_ptr(asynq_ticket *tk)
{
	if (!tk->done)
		return NULL;
	void *p = tk->p;
	tk->p = NULL;
	tk->pfree = NULL;
	return p;
}

asynq_error *
asynq_ticket_error(const asynq_ticket *tk)
{
	return tk->done ? tk->err : NULL;
}

void
asynq_ticket_free(asynq_ticket *tk)
{
	if (tk != NULL)
		ticket_rele(tk);
}
