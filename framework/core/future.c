/* SPDX-License-Identifier: MIT */
/*
 * Futures: references and freeing, reading outcomes, computed futures,
 * promises, and what happens when a future is computed beyond waking its
 * first waiter (more waiters, on-done callbacks).
 *
 * Design notes:
 * - A future that is not a task comes from the scheduler's free list of
 *   records (asynqi_future_alloc) and goes back to it when its last
 *   reference is dropped; a task's record is the task's own (task.c).
 * - Freeing the last future of a scheduler that asynq_thread_fini left
 *   behind (a zombie, kept because futures were still referenced) frees
 *   the scheduler.
 */
#include <stdlib.h>

#include "internal.h"

/* Gives a future that is not a task back to the free list. */
static void
fut_put(asynq_sched *s, asynq_future *f)
{
	asynqi_fut_rec *r = (asynqi_fut_rec *)f;
	s->futs_live--;
	if (ASYNQI_USE_FREELIST && !s->zombie) {
		r->free_next = s->free_futs;
		s->free_futs = r;
		s->n_free_futs++;
	} else {
		free(r);
	}
}

static void future_free(asynq_future *f);

/* A task's record, after its last reference: in the same file as
 * future_free so that the two inline into the release path (a
 * call between files cost 3% of the core benchmark's instructions). */
static void
task_free(asynq_sched *s, asynq_task *t)
{
	if (t->last_error != NULL)
		asynq_error_rele(t->last_error);
	if (t->ctx_error != NULL)
		asynq_error_rele(t->ctx_error);
	if (t->all_prev != NULL)
		t->all_prev->all_next = t->all_next;
	else if (s->all_tasks == t)
		s->all_tasks = t->all_next;
	if (t->all_next != NULL)
		t->all_next->all_prev = t->all_prev;
	s->stats.tasks_live--;
	asynq_task *creator = t->creator;
	if (ASYNQI_USE_FREELIST && !s->zombie) {
		t->q_next = s->free_tasks;
		s->free_tasks = t;
		s->n_free_tasks++;
	} else {
		free(t);
	}
	if (creator != NULL && --creator->fut.refs == 0)
		future_free(&creator->fut);
}

static void
future_free(asynq_future *f)
{
	asynq_sched *s = f->sched;
	asynqi_value_clear(f);
	if (f->error != NULL)
		asynq_error_rele(f->error);
	for (cb_node *c = f->cbs; c != NULL;) {
		cb_node *next = c->next;
		free(c);
		c = next;
	}
	switch (f->kind) {
	case FUT_TASK:
		task_free(s, (asynq_task *)f);
		break;
	case FUT_ITEM:
		asynqi_batch_item_freed(f);
		fut_put(s, f);
		break;
	case FUT_PROMISE:
		if (!f->done)
			s->n_promises--;
		fut_put(s, f);
		break;
	default:
		fut_put(s, f);
		break;
	}
	/* After asynq_thread_fini the scheduler lives on until the last
	 * future still referenced is gone. */
	if (--s->live_futures == 0 && s->zombie)
		asynqi_sched_free(s);
}

asynq_future *
asynq_future_hold(asynq_future *f)
{
	if (f != NULL)
		f->refs++;
	return f;
}

void
asynq_future_rele(asynq_future *f)
{
	if (f != NULL && --f->refs == 0)
		future_free(f);
}

void
asynq_future_rele_n(asynq_future **fs, size_t n)
{
	for (size_t i = 0; i < n; i++)
		asynq_future_rele(fs[i]);
}

bool
asynq_future_done(const asynq_future *f)
{
	return f == NULL || f->done;
}

asynq_status
asynq_future_status(const asynq_future *f)
{
	if (f == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	if (!f->done)
		return ASYNQ_FAILED_PRECONDITION;
	return f->status;
}

asynq_error *
asynq_future_error(const asynq_future *f)
{
	if (f == NULL || !f->done || f->status == ASYNQ_OK)
		return NULL;
	return f->error;
}

int64_t
asynq_future_i64(const asynq_future *f)
{
	return f != NULL && f->done && f->vkind == VAL_I64 ? f->v.i : 0;
}

void *
asynq_future_ptr(const asynq_future *f)
{
	return f != NULL && f->done && f->vkind == VAL_PTR ? f->v.p : NULL;
}

void *
asynq_future_take_owned(asynq_future *f, void (**free_fn)(void *))
{
	*free_fn =
	    f != NULL && f->done && f->vkind == VAL_PTR ? f->vfree : NULL;
	return asynq_future_take(f);
}

void *
asynq_future_take(asynq_future *f)
{
	if (f == NULL || !f->done || f->vkind != VAL_PTR)
		return NULL;
	void *p = f->v.p;
	f->vfree = NULL;
	f->vkind = VAL_NONE;
	f->v.p = NULL;
	return p;
}

void
asynqi_future_set_error(asynq_future *f, asynq_error *e)
{
	f->status = asynq_error_code(e);
	if (f->status == ASYNQ_OK)
		f->status = ASYNQ_UNKNOWN;
	f->error = e;
}

static asynq_future *
const_future(void)
{
	asynq_sched *s = asynqi_sched_get();
	if (s == NULL)
		return NULL;
	asynq_future *f = asynqi_future_alloc(s, FUT_CONST);
	if (f != NULL)
		f->done = true;
	return f;
}

asynq_future *
asynq_const_i64(int64_t v)
{
	asynq_future *f = const_future();
	if (f != NULL) {
		f->vkind = VAL_I64;
		f->v.i = v;
	}
	return f;
}

asynq_future *
asynq_const_ptr(void *p, void (*free_fn)(void *))
{
	asynq_future *f = const_future();
	if (f == NULL) {
		if (free_fn != NULL)
			free_fn(p);
		return NULL;
	}
	f->vkind = VAL_PTR;
	f->v.p = p;
	f->vfree = free_fn;
	return f;
}

asynq_future *
asynq_const_error(asynq_error *e)
{
	asynq_future *f = const_future();
	if (f == NULL) {
		asynq_error_rele(e);
		return NULL;
	}
	asynqi_future_set_error(f, e);
	return f;
}

asynq_future *
asynq_promise_alloc(void)
{
	asynq_sched *s = asynqi_sched_get();
	if (s == NULL)
		return NULL;
	asynq_future *f = asynqi_future_alloc(s, FUT_PROMISE);
	if (f != NULL)
		s->n_promises++;
	return f;
}

static bool
promise_open(asynq_future *p)
{
	return p != NULL && p->kind == FUT_PROMISE && !p->done;
}

static void
promise_done(asynq_future *p)
{
	p->sched->n_promises--;
	asynqi_future_complete(p->sched, p);
}

asynq_status
asynq_promise_set_i64(asynq_future *p, int64_t v)
{
	if (!promise_open(p))
		return ASYNQ_FAILED_PRECONDITION;
	p->vkind = VAL_I64;
	p->v.i = v;
	promise_done(p);
	return ASYNQ_OK;
}

asynq_status
asynq_promise_set_ptr(asynq_future *p, void *v, void (*free_fn)(void *))
{
	if (!promise_open(p)) {
		if (free_fn != NULL)
			free_fn(v);
		return ASYNQ_FAILED_PRECONDITION;
	}
	p->vkind = VAL_PTR;
	p->v.p = v;
	p->vfree = free_fn;
	promise_done(p);
	return ASYNQ_OK;
}

asynq_status
asynq_promise_set_error(asynq_future *p, asynq_error *e)
{
	if (!promise_open(p)) {
		asynq_error_rele(e);
		return ASYNQ_FAILED_PRECONDITION;
	}
	asynqi_future_set_error(p, e);
	promise_done(p);
	return ASYNQ_OK;
}

void
asynqi_future_complete_rest(asynq_sched *s, asynq_future *f)
{
	while (f->more_waiters != NULL) {
		waiter_node *n = f->more_waiters;
		f->more_waiters = n->next;
		asynqi_wake(s, n->task, f);
		free(n);
	}
	if (f->cbs == NULL)
		return;
	/* Callbacks may drop the last outside reference; keep f alive. */
	f->refs++;
	while (f->cbs != NULL) {
		cb_node *c = f->cbs;
		f->cbs = c->next;
		asynq_status st = c->fn(f, c->arg);
		if (st != ASYNQ_OK) {
			s->stats.callback_failures++;
			asynq_error *e = asynq_error_alloc(st,
			    "on-done callback %p failed with %s",
			    (void *)(uintptr_t)c->fn, asynq_status_name(st));
			asynqi_report(s, e);
			asynq_error_rele(e);
		}
		free(c);
	}
	asynq_future_rele(f);
}

asynq_status
asynq_future_on_done(asynq_future *f, asynq_done_fn fn, void *arg)
{
	if (f == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	if (f->done) {
		asynq_status st = fn(f, arg);
		if (st != ASYNQ_OK) {
			f->sched->stats.callback_failures++;
			asynq_error *e = asynq_error_alloc(st,
			    "on-done callback failed with %s",
			    asynq_status_name(st));
			asynqi_report(f->sched, e);
			asynq_error_rele(e);
		}
		return ASYNQ_OK;
	}
	cb_node *c = malloc(sizeof(*c));
	if (c == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	c->fn = fn;
	c->arg = arg;
	c->next = NULL;
	cb_node **tail = &f->cbs;
	while (*tail != NULL)
		tail = &(*tail)->next;
	*tail = c;
	return ASYNQ_OK;
}
