/* SPDX-License-Identifier: MIT */
/*
 * Debugging: asynq stack and scheduler dumps, and the debug backend (asynq's
 * DebugBatchItem), whose items resolve to the integer they were made with.
 *
 * Design notes:
 * - Dumps are bounded (a runaway recursion has tens of thousands of tasks):
 *   the newest tasks first, then a count of the rest.
 * - The async debug backend completes each flush from a thread of its own,
 *   joined when the batch is freed on the scheduler thread: the same path a
 *   real I/O backend takes, small enough for tests.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static const char *const state_names[] = {
	[TASK_CREATED] = "created",
	[TASK_READY] = "ready",
	[TASK_RUNNING] = "running",
	[TASK_BLOCKED] = "blocked",
	[TASK_DONE] = "done",
};

static const char *const batch_states[] = {
	[BATCH_OPEN] = "pending",
	[BATCH_FLUSHING] = "flushing",
	[BATCH_INFLIGHT] = "in flight",
	[BATCH_DONE] = "done",
};

static void
print_chain(FILE *f, asynq_task *t)
{
	size_t n = 0;
	for (asynq_task *x = t; x != NULL; x = x->creator)
		n++;
	fprintf(f, "asynq stack (innermost task last):\n");
	/* Outermost first: walk down from the root, n-1 steps each time, but
	 * only for the last 32 levels. */
	size_t shown = n > 32 ? 32 : n;
	if (n > shown)
		fprintf(f, "  ... %zu outer tasks omitted\n", n - shown);
	for (size_t k = shown; k-- > 0;) {
		asynq_task *x = t;
		for (size_t i = 0; i < k; i++)
			x = x->creator;
		fprintf(f, "  task %s, spawned at %s:%d\n", x->name, x->file,
		    x->line);
	}
}

void
asynq_dump_stack(FILE *f)
{
	asynq_task *t = asynq_task_current();
	if (t == NULL) {
		fprintf(f, "asynq stack: not inside a task\n");
		return;
	}
	print_chain(f, t);
}

static void
dump_task(FILE *f, asynq_task *t)
{
	fprintf(f, "  task %s (%s) spawned at %s:%d, depth %zu", t->name,
	    state_names[t->state], t->file, t->line, (size_t)t->depth);
	if (t->creator != NULL)
		fprintf(f, ", created by %s", t->creator->name);
	fputc('\n', f);
	if (t->state != TASK_BLOCKED)
		return;
	size_t n_deps = t->n_deps != 0 ? t->n_deps : t->deps != NULL;
	fprintf(f, "    waits on %zu of %zu:", (size_t)t->pending, n_deps);
	size_t shown = 0;
	for (size_t i = 0; i < n_deps && shown < 8; i++) {
		asynq_future *d = t->deps[i];
		if (d == NULL || d->done)
			continue;
		shown++;
		if (d->kind == FUT_TASK)
			fprintf(f, " task %s", ((asynq_task *)d)->name);
		else if (d->kind == FUT_ITEM)
			fprintf(f, " item of %s (key %lld)",
			    ASYNQI_ITEM(d)->batch->backend->name,
			    (long long)ASYNQI_ITEM(d)->key);
		else
			fprintf(f, " future");
	}
	if (t->pending > shown)
		fprintf(f, " ...");
	fputc('\n', f);
}

void
asynqi_dump_sched(asynq_sched *s, FILE *f, size_t max_tasks)
{
	fprintf(f, "asynq scheduler: %llu live tasks, %llu flushes, %zu "
	           "flushes in flight\n",
	    (unsigned long long)s->stats.tasks_live,
	    (unsigned long long)s->stats.flushes, s->n_inflight);
	if (s->current != NULL)
		fprintf(f, "current task: %s\n", s->current->name);
	fprintf(f, "tasks (newest first):\n");
	size_t n = 0;
	for (asynq_task *t = s->all_tasks; t != NULL; t = t->all_next) {
		if (n++ < max_tasks)
			dump_task(f, t);
	}
	if (n > max_tasks)
		fprintf(f, "  ... %zu more tasks\n", n - max_tasks);
	fprintf(f, "pending batches:\n");
	for (asynq_batch *b = s->pending; b != NULL; b = b->next)
		fprintf(f, "  batch of %s: %zu items, %s\n", b->backend->name,
		    b->n_items, batch_states[b->state]);
}

void
asynq_dump_sched(FILE *f)
{
	asynq_sched *s = asynqi_sched_get();
	if (s != NULL)
		asynqi_dump_sched(s, f, 1000);
}

/* ---- The debug backend ---------------------------------------------- */

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

asynq_debug_backend *
asynq_debug_default(void)
{
	asynq_sched *s = asynqi_sched_get();
	return s != NULL ? &s->debug : NULL;
}

asynq_status
asynq_debug_sync(asynq_task *t)
{
	asynq_future *f = asynq_debug_item(&t->fut.sched->debug, 0);
	asynq_status st = asynq_await(t, f);
	asynq_future_rele(f);
	return st;
}

void
asynqi_debug_init(asynq_sched *s)
{
	asynq_debug_backend_init(&s->debug, "debug", false);
}

void
asynqi_debug_fini(asynq_sched *s)
{
	asynq_debug_backend_fini(&s->debug);
}
