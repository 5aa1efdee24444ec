/* SPDX-License-Identifier: MIT */
/*
 * Contexts, non-suspending regions and scoped values.
 *
 * Design notes:
 * - A task's contexts form a stack (innermost first through `prev`). When a
 *   task is switched in, the scheduler resumes the contexts of its creator
 *   chain, outermost task first, then its own, innermost last; switching out
 *   pauses in the reverse order. The `active` flag of each context keeps
 *   pause and resume strictly alternating, even when a chain is shared by
 *   several tasks.
 * - The chain walk runs only while some context is entered inside a task
 *   (`ctx_in_tasks`), so programs without contexts pay one compare per
 *   switch.
 * - A failing pause or resume does not stop the others; the first failure is
 *   kept on the task being switched and returned by its next await.
 * - Scoped values are looked up through the creator chain at the time of the
 *   read, so an override covers the task and its children while it is in
 *   place, and never siblings. Nothing global is written: safe across
 *   threads.
 */
#include <stdlib.h>
#include <string.h>

#include "handoff.h"
#include "internal.h"

void
asynq_context_init(asynq_context *ctx, const asynq_context_ops *ops)
{
	memset(ctx, 0, sizeof(*ctx));
	ctx->ops = ops;
}

static void
note_failure(asynq_sched *s, asynq_task *t, asynq_context *ctx, asynq_status st,
    const char *what)
{
	s->stats.context_failures++;
	asynq_error *e = asynq_error_alloc(st, "context %p failed to %s: %s",
	    (void *)ctx, what, asynq_status_name(st));
	if (t != NULL && t->ctx_error == NULL) {
		t->ctx_error = e;
		return;
	}
	if (t == NULL)
		asynqi_report(s, e);
	asynq_error_rele(e);
}

static asynq_status
ctx_resume(asynq_context *ctx)
{
	if (ctx->active)
		return ASYNQ_OK;
	ctx->active = true;
	return ctx->ops->resume != NULL ? ctx->ops->resume(ctx) : ASYNQ_OK;
}

static asynq_status
ctx_pause(asynq_context *ctx)
{
	if (!ctx->active)
		return ASYNQ_OK;
	ctx->active = false;
	return ctx->ops->pause != NULL ? ctx->ops->pause(ctx) : ASYNQ_OK;
}

/* Resumes one task's own contexts, outermost (oldest) first. */
static void
resume_own(asynq_sched *s, asynq_task *who, asynq_context *c)
{
	asynq_context *stack[32];
	size_t n = 0;
	for (asynq_context *x = c; x != NULL; x = x->prev) {
		if (n == 32) {
			/* Deeper than the buffer: recurse on the rest. */
			resume_own(s, who, x);
			break;
		}
		stack[n++] = x;
	}
	while (n > 0) {
		asynq_context *x = stack[--n];
		asynq_status st = ctx_resume(x);
		if (st != ASYNQ_OK)
			note_failure(s, who, x, st, "resume");
	}
}

void
asynqi_ctx_resume_chain(asynq_sched *s, asynq_task *t)
{
	asynq_task *small[64], **chain = small;
	size_t n = 0;
	for (asynq_task *x = t; x != NULL; x = x->creator)
		n++;
	if (n > 64) {
		chain = malloc(n * sizeof(*chain));
		if (chain == NULL) {
			note_failure(s, t, NULL, ASYNQ_RESOURCE_EXHAUSTED,
			    "resume");
			return;
		}
	}
	size_t i = 0;
	for (asynq_task *x = t; x != NULL; x = x->creator)
		chain[i++] = x;
	while (i > 0) {
		asynq_task *x = chain[--i];
		if (x->contexts != NULL)
			resume_own(s, t, x->contexts);
	}
	if (chain != small)
		free(chain);
}

void
asynqi_ctx_pause_chain(asynq_sched *s, asynq_task *t)
{
	for (asynq_task *x = t; x != NULL; x = x->creator) {
		for (asynq_context *c = x->contexts; c != NULL; c = c->prev) {
			asynq_status st = ctx_pause(c);
			if (st != ASYNQ_OK)
				note_failure(s, t, c, st, "pause");
		}
	}
}

void
asynqi_task_contexts_end(asynq_sched *s, asynq_task *t)
{
	while (t->contexts != NULL) {
		asynq_context *c = t->contexts;
		t->contexts = c->prev;
		asynq_status st = ctx_pause(c);
		if (st != ASYNQ_OK)
			note_failure(s, NULL, c, st, "pause");
		c->entered = false;
		c->owner = NULL;
		c->prev = NULL;
		s->ctx_in_tasks--;
	}
}

asynq_status
asynq_context_enter(asynq_context *ctx)
{
	asynq_sched *s = asynqi_sched_get();
	if (s == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	if (ctx->entered)
		return ASYNQ_FAILED_PRECONDITION;
	asynq_task *t = s->current;
	ctx->entered = true;
	ctx->owner = t;
	if (t != NULL) {
		ctx->prev = t->contexts;
		t->contexts = ctx;
		s->ctx_in_tasks++;
	} else {
		ctx->prev = s->thread_contexts;
		s->thread_contexts = ctx;
	}
	return ctx_resume(ctx);
}

asynq_status
asynq_context_exit(asynq_context *ctx)
{
	asynq_sched *s = asynqi_sched_get();
	if (s == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq_task *t = s->current;
	asynq_context **top = t != NULL ? &t->contexts : &s->thread_contexts;
	if (!ctx->entered || ctx->owner != t || *top != ctx)
		return ASYNQ_FAILED_PRECONDITION;
	*top = ctx->prev;
	ctx->prev = NULL;
	ctx->entered = false;
	ctx->owner = NULL;
	if (t != NULL)
		s->ctx_in_tasks--;
	return ctx_pause(ctx);
}

asynq_status
asynq_with_context(asynq_context *ctx, asynq_status (*fn)(void *arg), void *arg)
{
	asynq_status st = asynq_context_enter(ctx);
	if (st == ASYNQ_FAILED_PRECONDITION && !ctx->entered)
		return st;
	asynq_status rv = ctx->entered && st == ASYNQ_OK ? fn(arg) : st;
	asynq_status ex = asynq_context_exit(ctx);
	return rv != ASYNQ_OK ? rv : ex;
}

void
asynq_nonsuspending_enter_at(const char *file, int line)
{
	asynq_task *t = asynq_task_current();
	if (t == NULL)
		return;
	if (t->nonsusp++ == 0) {
		t->nonsusp_file = file;
		t->nonsusp_line = line;
	}
}

void
asynq_nonsuspending_exit(void)
{
	asynq_task *t = asynq_task_current();
	if (t != NULL && t->nonsusp > 0)
		t->nonsusp--;
}

void *
asynq_scoped_get(const asynq_scoped *key)
{
	asynq_sched *s = asynqi_tls_sched;
	/* No value pushed anywhere on this thread: no walk up the tasks. */
	if (s == NULL || s->n_scoped == 0)
		return key->default_value;
	for (asynq_task *x = s->current; x != NULL; x = x->creator)
		for (scoped_entry *e = x->scoped; e != NULL; e = e->prev)
			if (e->key == key)
				return e->value;
	for (scoped_entry *e = s->thread_scoped; e != NULL; e = e->prev)
		if (e->key == key)
			return e->value;
	return key->default_value;
}

asynq_status
asynq_scoped_push(const asynq_scoped *key, void *value)
{
	return asynqi_scoped_push_slot(key, value) != NULL
	    ? ASYNQ_OK
	    : ASYNQ_RESOURCE_EXHAUSTED;
}

void **
asynqi_scoped_push_slot(const asynq_scoped *key, void *value)
{
	asynq_sched *s = asynqi_sched_get();
	if (s == NULL)
		return NULL;
	scoped_entry *e = s->free_scoped;
	if (e != NULL) {
		s->free_scoped = e->prev;
		s->n_free_scoped--;
	} else if ((e = malloc(sizeof(*e))) == NULL) {
		return NULL;
	}
	scoped_entry **top =
	    s->current != NULL ? &s->current->scoped : &s->thread_scoped;
	e->key = key;
	e->value = value;
	e->prev = *top;
	*top = e;
	s->n_scoped++;
	return &e->value;
}

asynq_status
asynq_scoped_pop(const asynq_scoped *key)
{
	asynq_sched *s = asynqi_sched_get();
	if (s == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	scoped_entry **p =
	    s->current != NULL ? &s->current->scoped : &s->thread_scoped;
	for (; *p != NULL; p = &(*p)->prev) {
		if ((*p)->key == key) {
			scoped_entry *e = *p;
			*p = e->prev;
			s->n_scoped--;
			asynqi_scoped_entry_put(s, e);
			return ASYNQ_OK;
		}
	}
	return ASYNQ_FAILED_PRECONDITION;
}

asynq_status
asynq_with_scoped(const asynq_scoped *key, void *value,
    asynq_status (*fn)(void *arg), void *arg)
{
	asynq_status st = asynq_scoped_push(key, value);
	if (st != ASYNQ_OK)
		return st;
	asynq_status rv = fn(arg);
	(void)asynq_scoped_pop(key);
	return rv;
}
