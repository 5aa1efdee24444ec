/* SPDX-License-Identifier: MIT */
/*
 * The blocking pool: threads that run work which would stall a scheduler
 * (asynq_run_blocking), so a worker whose task waits on a slow query keeps
 * running its other tasks.
 *
 * Design notes:
 * - A call is an item of a batch backend of the calling thread (a
 *   sub-context of its scheduler) whose batches hold one item each and are
 *   flushed at once: the flush defers itself and queues a job; a pool thread
 *   runs fn, sets the item and completes the batch. So the core's rules
 *   hold: the result reaches the task on its own thread, and
 *   asynq_thread_fini waits for calls in flight like any deferred flush.
 *   The item carries the call: fn as its key, arg as its request.
 * - One process-wide pool: a mutex, a condition variable and a FIFO of
 *   jobs. Threads start on demand, while every started one is busy, up to
 *   `threads`, and then stay (idle on the condition variable) for the life
 *   of the process.
 * - Cancelling a batch whose job is still queued takes the job off the
 *   queue and completes the batch CANCELLED on the spot; a running job
 *   completes when it returns.
 */
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "asynq/batch.h"
#include "asynq/runtime.h"

#define DEFAULT_THREADS 4
#define DEFAULT_QUEUED 4096
#define MAX_THREADS 256

typedef struct job job;

struct job {
	asynq_batch base; /* first: the framework's part */
	asynq_blocking_fn fn;
	void *arg;
	job *next;
	bool queued; /* on the pool's FIFO (under the pool's mutex) */
};

static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	job *head, *tail;
	size_t queued, started, idle;
	size_t threads, max_queued;
	bool used;
} pool = {
	.mu = PTHREAD_MUTEX_INITIALIZER,
	.cv = PTHREAD_COND_INITIALIZER,
	.threads = DEFAULT_THREADS,
	.max_queued = DEFAULT_QUEUED,
};

asynq_status
asynq_blocking_configure(const asynq_blocking_cfg *cfg)
{
	if (cfg == NULL || cfg->threads > MAX_THREADS)
		return ASYNQ_INVALID_ARGUMENT;
	pthread_mutex_lock(&pool.mu);
	asynq_status st = ASYNQ_FAILED_PRECONDITION;
	if (!pool.used) {
		pool.threads =
		    cfg->threads != 0 ? cfg->threads : DEFAULT_THREADS;
		pool.max_queued =
		    cfg->max_queued != 0 ? cfg->max_queued : DEFAULT_QUEUED;
		st = ASYNQ_OK;
	}
	pthread_mutex_unlock(&pool.mu);
	return st;
}

static void
job_run(job *j)
{
	const char *why = NULL;
	asynq_future *item = asynq_batch_item(&j->base, 0);
	asynq_status st = j->fn(j->arg, &why);
	if (st == ASYNQ_OK)
		(void)asynq_item_set_i64(item, 0);
	else
		(void)asynq_item_set_error(item,
		    asynq_error_alloc(st, "%s",
		        why != NULL ? why : asynq_strerror(st)));
	asynq_batch_complete(&j->base, ASYNQ_OK);
}

static void *
pool_main(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&pool.mu);
	for (;;) {
		while (pool.head == NULL) {
			pool.idle++;
			pthread_cond_wait(&pool.cv, &pool.mu);
			pool.idle--;
		}
		job *j = pool.head;
		pool.head = j->next;
		if (pool.head == NULL)
			pool.tail = NULL;
		j->queued = false;
		pool.queued--;
		pthread_mutex_unlock(&pool.mu);
		job_run(j);
		pthread_mutex_lock(&pool.mu);
	}
	return NULL;
}

/* ---- The per-thread backend ---------------------------------------------- */

static asynq_batch *
job_alloc(asynq_backend *be)
{
	(void)be;
	return calloc(1, sizeof(job));
}

static asynq_status
job_flush(asynq_batch *b)
{
	job *j = (job *)b;
	j->fn = (asynq_blocking_fn)(uintptr_t)asynq_item_key(
	    asynq_batch_item(b, 0));
	j->arg = asynq_item_req(asynq_batch_item(b, 0));
	pthread_mutex_lock(&pool.mu);
	pool.used = true;
	if (pool.queued >= pool.max_queued) {
		pthread_mutex_unlock(&pool.mu);
		(void)asynq_item_set_error(asynq_batch_item(b, 0),
		    asynq_error_alloc(ASYNQ_RESOURCE_EXHAUSTED,
		        "blocking pool: %zu calls already wait for its %zu "
		        "threads",
		        pool.max_queued, pool.threads));
		return ASYNQ_OK;
	}
	if (pool.idle <= pool.queued && pool.started < pool.threads) {
		pthread_t th;
		pthread_attr_t at;
		pthread_attr_init(&at);
		pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
		if (pthread_create(&th, &at, pool_main, NULL) == 0)
			pool.started++;
		pthread_attr_destroy(&at);
	}
	if (pool.started == 0) {
		pthread_mutex_unlock(&pool.mu);
		(void)asynq_item_set_error(asynq_batch_item(b, 0),
		    asynq_error_alloc(ASYNQ_RESOURCE_EXHAUSTED,
		        "blocking pool: cannot start a thread"));
		return ASYNQ_OK;
	}
	asynq_batch_defer(b);
	j->next = NULL;
	j->queued = true;
	if (pool.tail != NULL)
		pool.tail->next = j;
	else
		pool.head = j;
	pool.tail = j;
	pool.queued++;
	pthread_cond_signal(&pool.cv);
	pthread_mutex_unlock(&pool.mu);
	return ASYNQ_OK;
}

static void
job_cancel(asynq_batch *b)
{
	job *j = (job *)b;
	pthread_mutex_lock(&pool.mu);
	bool mine = j->queued;
	if (mine) {
		job **pp = &pool.head;
		job *prev = NULL;
		while (*pp != j) {
			prev = *pp;
			pp = &(*pp)->next;
		}
		*pp = j->next;
		if (pool.tail == j)
			pool.tail = prev;
		j->queued = false;
		pool.queued--;
	}
	pthread_mutex_unlock(&pool.mu);
	if (mine)
		asynq_batch_complete(b, ASYNQ_CANCELLED);
}

static void
job_free(asynq_batch *b)
{
	free(b);
}

static const asynq_backend_ops blocking_ops = {
	.batch_alloc = job_alloc,
	.flush = job_flush,
	.cancel = job_cancel,
	.batch_free = job_free,
};

static void *
backend_make(void)
{
	asynq_backend *be = malloc(sizeof(*be));
	if (be != NULL) {
		asynq_backend_init(be, &blocking_ops, "blocking pool");
		be->flush_at = 1;
	}
	return be;
}

static void
backend_stop(void *p)
{
	asynq_backend_fini(p);
}

static asynq_thread_local backend_key =
    ASYNQ_THREAD_LOCAL_INIT("asynq.blocking", backend_make, backend_stop, free);

asynq_future *
asynq_run_blocking(asynq_blocking_fn fn, void *arg)
{
	if (fn == NULL)
		return asynq_const_error(asynq_error_alloc(
		    ASYNQ_INVALID_ARGUMENT, "asynq_run_blocking: no function"));
	asynq_backend *be = asynq_thread_local_get(&backend_key);
	if (be == NULL)
		return NULL;
	asynq_future *f = asynq_batch_add(be, (int64_t)(uintptr_t)fn, arg);
	if (f == NULL)
		return NULL;
	/* Started now, not when every task blocks: the point is to overlap. */
	(void)asynq_batch_flush(asynq_item_batch(f));
	return f;
}
