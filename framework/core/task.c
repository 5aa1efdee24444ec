/* SPDX-License-Identifier: MIT */
/*
 * Tasks: spawning a task record (not running it: sched.c runs tasks),
 * setting its result and reading what it is. Freeing it is future.c's,
 * where the last reference goes.
 *
 * Design notes:
 * - Spawning is lazy: the record is made and linked, the task runs when
 *   something awaits it (or asynq_task_start). Records come from the
 *   scheduler's free list and are set field by field (no memset).
 * - A task holds a reference on its creator (for asynq stack traces); the
 *   creator is freed, if that was its last reference, after the task.
 * - The depth limit (asynq_sched_cfg.max_depth) fails a spawn with a
 *   computed error and dumps the scheduler once per thread.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "handoff.h"
#include "internal.h"

/* The depth limit's failure, out of the spawn path. */
static asynq_future *__attribute__((noinline, cold))
spawn_too_deep(asynq_sched *s, const char *name, const char *file, int line)
{
	if (!s->depth_dumped) {
		/* Once per thread: a runaway recursion would print this at
		 * every level it unwinds. */
		s->depth_dumped = true;
		fprintf(stderr,
		    "asynq: task depth limit (%zu) reached spawning %s at %s:%d; "
		    "scheduler state:\n",
		    s->cfg.max_depth, name, file, line);
		asynqi_dump_sched(s, stderr, 20);
	}
	return asynq_const_error(asynq_error_alloc(ASYNQ_RESOURCE_EXHAUSTED,
	    "task depth limit (%zu) exceeded spawning %s at %s:%d (runaway "
	    "recursion? raise asynq_sched_cfg.max_depth if intended)",
	    s->cfg.max_depth, name, file, line));
}

/* A task record when the free list is empty; NULL without memory. */
static asynq_task *__attribute__((noinline)) task_record_new(void)
{
	return malloc(sizeof(asynq_task));
}

asynq_future *
asynq_spawn_at(asynq_task_fn fn, void *arg, const char *name, const char *file,
    int line)
{
	asynq_sched *s = asynqi_tls_sched;
	if (__builtin_expect(s == NULL, 0) && (s = asynqi_sched_get()) == NULL)
		return NULL;
	asynq_task *creator = s->current;
	uint32_t depth = creator != NULL ? creator->depth + 1 : 0;
	if (__builtin_expect(depth >= s->cfg.max_depth, 0))
		return spawn_too_deep(s, name, file, line);
	asynq_task *t = s->free_tasks;
	if (__builtin_expect(t != NULL, 1)) {
		s->free_tasks = t->q_next;
		s->n_free_tasks--;
	} else if ((t = task_record_new()) == NULL) {
		return NULL;
	}
	asynqi_fut_init(&t->fut, s, FUT_TASK);
	t->state = TASK_CREATED;
	t->dep_failed = false;
	t->pending = 0;
	t->stack = NULL;
	t->q_prev = t->q_next = NULL;
	t->starter = NULL;
	t->fn = fn;
	t->arg = arg;
	t->contexts = NULL;
	t->creator = creator;
	if (creator != NULL)
		creator->fut.refs++;
	t->all_prev = NULL;
	t->all_next = s->all_tasks;
	if (s->all_tasks != NULL)
		s->all_tasks->all_prev = t;
	s->all_tasks = t;
	t->depth = depth;
	t->name = name;
	t->file = file;
	t->line = line;
	t->nonsusp = 0; /* nonsusp_file and _line are read only above 0 */
	t->deps = NULL;
	t->n_deps = 0;
	t->last_error = NULL;
	t->ctx_error = NULL;
	t->scoped = NULL;
	t->handoff = NULL;
	t->id = ++s->stats.tasks_spawned;
	ASYNQI_TRACE_TASK(s, ASYNQ_TRACE_SPAWN, t, ASYNQ_OK);
	if (++s->stats.tasks_live > s->tasks_peak)
		s->tasks_peak = s->stats.tasks_live;
	return &t->fut;
}

asynq_status
asynq_return_i64(asynq_task *t, int64_t v)
{
	asynqi_value_clear(&t->fut);
	t->fut.vkind = VAL_I64;
	t->fut.v.i = v;
	return ASYNQ_OK;
}

asynq_status
asynq_return_ptr(asynq_task *t, void *p, void (*free_fn)(void *))
{
	asynqi_value_clear(&t->fut);
	t->fut.vkind = VAL_PTR;
	t->fut.v.p = p;
	t->fut.vfree = free_fn;
	return ASYNQ_OK;
}

asynq_status
asynq_fail_with(asynq_task *t, asynq_error *e)
{
	asynq_status code = asynq_error_code(e);
	asynq_error_rele(t->last_error);
	t->last_error = e;
	return code == ASYNQ_OK ? ASYNQ_UNKNOWN : code;
}

asynq_status
asynq_fail(asynq_task *t, asynq_status code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	asynq_error *e = asynqi_error_make(t, code, NULL, fmt, ap);
	va_end(ap);
	asynq_fail_with(t, e);
	return code;
}

asynq_error *
asynq_task_error(const asynq_task *t)
{
	if (t->last_error == NULL && t->fut.done && t->fut.status != ASYNQ_OK)
		return t->fut.error;
	return t->last_error;
}

const void *
asynqi_task_job_begin(asynq_task *t, const char *name, const asynqi_handoff *h)
{
	t->name = name;
	t->handoff = h;
	return t->scoped;
}

void
asynqi_task_scoped_unwind(asynq_task *t, const void *mark)
{
	asynq_sched *s = t->fut.sched;
	while (t->scoped != NULL && (const void *)t->scoped != mark) {
		scoped_entry *e = t->scoped;
		t->scoped = e->prev;
		s->n_scoped--;
		asynqi_scoped_entry_put(s, e);
	}
}

void
asynqi_task_job_end(asynq_task *t, const void *mark)
{
	t->handoff = NULL;
	if (__builtin_expect((const void *)t->scoped != mark, 0))
		asynqi_task_scoped_unwind(t, mark);
	if (t->last_error != NULL) {
		asynq_error_rele(t->last_error);
		t->last_error = NULL;
	}
}

asynq_task *
asynq_task_current(void)
{
	asynq_sched *s = asynqi_tls_sched;
	return s != NULL ? s->current : NULL;
}

asynq_future *
asynq_task_future(asynq_task *t)
{
	return &t->fut;
}

asynq_task *
asynq_future_task(asynq_future *f)
{
	return f != NULL && f->kind == FUT_TASK ? (asynq_task *)f : NULL;
}

const char *
asynq_task_name(const asynq_task *t)
{
	return t->name;
}

uint64_t
asynq_task_id(const asynq_task *t)
{
	return t->id;
}

size_t
asynq_task_depth(const asynq_task *t)
{
	return t->depth;
}

size_t
asynq_task_dependencies(const asynq_task *t)
{
	return t->state == TASK_BLOCKED ? t->pending : 0;
}
