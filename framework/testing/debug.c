/* SPDX-License-Identifier: MIT */
/*
 * The debug backend (asynq's DebugBatchItem), a test double: its items
 * resolve to the integer they were made with, and it counts its flushes.
 *
 * Design notes:
 * - The async mode completes each flush from a thread of its own, joined
 *   when the batch is freed on the scheduler thread: the same path a real
 *   I/O backend takes, small enough for tests.
 * - The thread's default backend (asynq_debug_sync's) is a thread-local
 *   state of its own (asynq_thread_local), made on first use: a scheduler
 *   that never uses it carries nothing of it.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "asynq/asynq.h"
#include "asynq/testing.h"

typedef struct debug_batch {
	asynq_batch base;
	pthread_t thread;
	bool has_thread;
} debug_batch;

static asynq_batch *
debug_batch_alloc(asynq_backend *be)
{
	(void)be;
	debug_batch *b = calloc(1, sizeof(*b));
	return b != NULL ? &b->base : NULL;
}

static void *
debug_complete_thread(void *arg)
{
	asynq_batch *b = arg;
	for (size_t i = 0; i < asynq_batch_size(b); i++) {
		asynq_future *it = asynq_batch_item(b, i);
		asynq_item_set_i64(it, asynq_item_key(it));
	}
	asynq_batch_complete(b, ASYNQ_OK);
	return NULL;
}

static asynq_status
debug_flush(asynq_batch *b)
{
	asynq_debug_backend *d = (asynq_debug_backend *)b->backend;
	d->flushes++;
	d->items_flushed += asynq_batch_size(b);
	d->last_size = asynq_batch_size(b);
	if (d->async) {
		debug_batch *db = (debug_batch *)b;
		asynq_batch_defer(b);
		if (pthread_create(&db->thread, NULL, debug_complete_thread,
		        b) != 0)
			return ASYNQ_RESOURCE_EXHAUSTED;
		db->has_thread = true;
		return ASYNQ_OK;
	}
	for (size_t i = 0; i < asynq_batch_size(b); i++) {
		asynq_future *it = asynq_batch_item(b, i);
		asynq_item_set_i64(it, asynq_item_key(it));
	}
	return ASYNQ_OK;
}

static void
debug_batch_free(asynq_batch *b)
{
	debug_batch *db = (debug_batch *)b;
	if (db->has_thread)
		pthread_join(db->thread, NULL);
	free(db);
}

static const asynq_backend_ops debug_ops = {
	.batch_alloc = debug_batch_alloc,
	.flush = debug_flush,
	.batch_free = debug_batch_free,
};

void
asynq_debug_backend_init(asynq_debug_backend *d, const char *name, bool async)
{
	memset(d, 0, sizeof(*d));
	asynq_backend_init(&d->base, &debug_ops, name != NULL ? name : "debug");
	d->async = async;
}

void
asynq_debug_backend_fini(asynq_debug_backend *d)
{
	asynq_backend_fini(&d->base);
}

asynq_future *
asynq_debug_item(asynq_debug_backend *d, int64_t result)
{
	return asynq_batch_add(&d->base, result, NULL);
}

/* ---- The thread's default debug backend ------------------------------ */

static void *
default_make(void)
{
	asynq_debug_backend *d = malloc(sizeof(*d));
	if (d != NULL)
		asynq_debug_backend_init(d, "debug", false);
	return d;
}

/* Stopped while the scheduler can still cancel its unflushed batch. */
static void
default_stop(void *state)
{
	asynq_debug_backend_fini(state);
}

static asynq_thread_local default_key =
    ASYNQ_THREAD_LOCAL_INIT("debug backend", default_make, default_stop, free);

asynq_debug_backend *
asynq_debug_default(void)
{
	return asynq_thread_local_get(&default_key);
}

asynq_status
asynq_debug_sync(asynq_task *t)
{
	asynq_debug_backend *d = asynq_debug_default();
	if (d == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq_future *f = asynq_debug_item(d, 0);
	if (f == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq_status st = asynq_await(t, f);
	asynq_future_rele(f);
	return st;
}
