/* SPDX-License-Identifier: MIT */
/*
 * Debugging: asynq stack and scheduler dumps.
 *
 * Design notes:
 * - Dumps are bounded (a runaway recursion has tens of thousands of tasks):
 *   the newest tasks first, then a count of the rest.
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
	fprintf(f,
	    "asynq scheduler: %llu live tasks, %llu flushes, %zu "
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
