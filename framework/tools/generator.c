/* SPDX-License-Identifier: MIT */
/*
 * Async generators: a producer function run as its own task hands futures to
 * a consumer one at a time, through two promises: the slot (the consumer
 * waits on it for the next element) and the demand (the producer waits on it
 * for the next request).
 *
 * Design notes:
 * - The generator owns the slot: the consumer makes it, the producer only
 *   sets it (1 = an element is in g->elem, 0 = the sequence ended, an error
 *   = the producer failed), and the consumer releases it once it has picked
 *   the outcome up. A consumer interrupted before the slot is set (an await
 *   refused inside a non-suspending region) leaves it in place, and the next
 *   call waits on the same slot: nothing is lost or produced twice.
 * - The producer owns the demand: it makes it in asynq_gen_yield and
 *   releases it after waking; g->demand is set only while the producer is
 *   parked in asynq_gen_yield, and whoever wakes it (the consumer with a
 *   value, asynq_gen_free with CANCELLED) clears g->demand first.
 * - The producer runs only while the consumer waits on the slot (or while
 *   asynq_gen_free runs it to its end), so at most one element is ever
 *   buffered, and the scheduler sees a runnable producer, not a blocked
 *   consumer, until the producer has yielded: a pending batch item yielded
 *   by it is not flushed before the consumer could gather more.
 * - A parked producer is a pending promise: while one exists, a scheduler
 *   with nothing else to do sleeps instead of reporting a deadlock (core.h).
 *   Free generators you stop consuming.
 */
#include <stdlib.h>

#include "asynq/generator.h"

struct asynq_gen_yield_ctx {
	asynq_gen *g;
};

struct asynq_gen {
	asynq_gen_yield_ctx y;
	asynq_gen_fn fn;
	void *arg;
	unsigned flags;
	const char *name;
	asynq_future *producer; /* the producer task; our reference */
	asynq_future *slot;     /* owned; set while an element is asked for */
	asynq_future *demand;   /* the producer's; set while it is parked */
	asynq_future *elem;     /* yielded, not yet picked up; owned */
	asynq_future *last;     /* handed out last; a reference for STRICT */
	size_t count;
	bool started, ended, closing, in_next;
};

static asynq_status
producer_main(asynq_task *t, void *arg)
{
	asynq_gen *g = arg;
	asynq_status st =
	    g->closing ? ASYNQ_CANCELLED : g->fn(&g->y, t, g->arg);
	g->ended = true;
	if (g->slot != NULL && !asynq_future_done(g->slot)) {
		if (st == ASYNQ_OK) {
			asynq_promise_set_i64(g->slot, 0);
		} else {
			asynq_error *e = asynq_task_error(t);
			if (e != NULL && asynq_error_code(e) == st)
				e = asynq_error_hold(e);
			else
				e = asynq_error_alloc(st,
				    "generator %s failed: %s", g->name,
				    asynq_strerror(st));
			asynq_promise_set_error(g->slot, e);
		}
	}
	/* The consumer has the outcome; the producer task itself succeeds
	 * so that its end is never reported as an unhandled error. */
	return ASYNQ_OK;
}

asynq_status
asynq_gen_alloc_at(asynq_gen **gp, asynq_gen_fn fn, void *arg, unsigned flags,
    const char *name, const char *file, int line)
{
	if (gp == NULL || fn == NULL)
		return ASYNQ_INVALID_ARGUMENT;
	asynq_gen *g = calloc(1, sizeof(*g));
	if (g == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	g->y.g = g;
	g->fn = fn;
	g->arg = arg;
	g->flags = flags;
	g->name = name;
	g->producer = asynq_spawn_at(producer_main, g, name, file, line);
	if (g->producer == NULL) {
		free(g);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	if (asynq_future_task(g->producer) == NULL) {
		/* Spawning failed (the depth limit): a failed future. */
		asynq_status st = asynq_future_status(g->producer);
		asynq_future_rele(g->producer);
		free(g);
		return st;
	}
	*gp = g;
	return ASYNQ_OK;
}

void
asynq_gen_free(asynq_gen *g)
{
	if (g == NULL)
		return;
	g->closing = true;
	if (g->started && !g->ended) {
		asynq_future *d = g->demand;
		if (d != NULL) {
			g->demand = NULL;
			asynq_promise_set_error(d,
			    asynq_error_alloc(ASYNQ_CANCELLED,
			        "generator %s freed", g->name));
		}
		(void)asynq_wait(g->producer);
	}
	if (g->slot != NULL) {
		/* Settle it so the scheduler stops counting it as pending. */
		asynq_promise_set_error(g->slot,
		    asynq_error_alloc(ASYNQ_CANCELLED, "generator %s freed",
		        g->name));
		asynq_future_rele(g->slot);
	}
	asynq_future_rele(g->elem);
	asynq_future_rele(g->last);
	asynq_future_rele(g->producer);
	free(g);
}

asynq_status
asynq_gen_yield(asynq_gen_yield_ctx *y, asynq_future *f)
{
	asynq_gen *g = y->g;
	asynq_task *t = asynq_future_task(g->producer);

	if (g->closing) {
		asynq_future_rele(f);
		return ASYNQ_CANCELLED;
	}
	if (asynq_task_current() != t || g->slot == NULL ||
	    asynq_future_done(g->slot)) {
		asynq_future_rele(f);
		if (asynq_task_current() == NULL)
			return ASYNQ_FAILED_PRECONDITION;
		return asynq_fail(asynq_task_current(),
		    ASYNQ_FAILED_PRECONDITION,
		    "asynq_gen_yield outside generator %s's own task", g->name);
	}
	asynq_future *d = asynq_promise_alloc();
	if (d == NULL) {
		asynq_future_rele(f);
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
		    "out of memory yielding from %s", g->name);
	}
	g->elem = f;
	g->demand = d;
	asynq_promise_set_i64(g->slot, 1);
	asynq_status st = asynq_await(t, d);
	if (!asynq_future_done(d)) {
		/* The await was refused (a non-suspending region): nobody
		 * may wake a promise that is about to be freed. */
		g->demand = NULL;
		asynq_promise_set_error(d,
		    asynq_error_alloc(ASYNQ_CANCELLED,
		        "generator %s: yield refused", g->name));
	}
	asynq_future_rele(d);
	return st;
}

/* Waits for f on t, or synchronously when t is NULL. */
static asynq_status
wait_on(asynq_task *t, asynq_future *f)
{
	return t != NULL ? asynq_await(t, f) : asynq_wait(f);
}

/* Gets the next element into *out. OUT_OF_RANGE at the end, without making
 * an error; other failures are t's last error when t is set. */
static asynq_status
advance(asynq_task *t, asynq_gen *g, asynq_future **out)
{
	*out = NULL;
	if (g->slot == NULL) {
		if (g->ended)
			return ASYNQ_OUT_OF_RANGE;
		if ((g->slot = asynq_promise_alloc()) == NULL)
			return t != NULL
			    ? asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
			          "out of memory")
			    : ASYNQ_RESOURCE_EXHAUSTED;
		if (!g->started) {
			g->started = true;
			asynq_task_start(g->producer);
		} else if (g->demand != NULL) {
			asynq_future *d = g->demand;
			g->demand = NULL;
			asynq_promise_set_i64(d, 0);
		}
		/* Otherwise the producer is busy between yields: it sets
		 * the slot at its next yield or when it returns. */
	}
	g->in_next = true;
	asynq_status st = wait_on(t, g->slot);
	g->in_next = false;
	if (!asynq_future_done(g->slot))
		return st; /* interrupted; the next call waits again */
	asynq_future *slot = g->slot;
	g->slot = NULL;
	st = asynq_future_status(slot);
	bool has_elem = st == ASYNQ_OK && asynq_future_i64(slot) == 1;
	asynq_future_rele(slot);
	if (st != ASYNQ_OK)
		return st; /* the producer's error, t's last error by now */
	if (!has_elem)
		return ASYNQ_OUT_OF_RANGE;
	*out = g->elem;
	g->elem = NULL;
	asynq_future_rele(g->last);
	g->last = asynq_future_hold(*out);
	g->count++;
	return ASYNQ_OK;
}

/* Checks the calls that may advance g now. */
static asynq_status
check_advance(asynq_task *t, asynq_gen *g)
{
	const char *why = NULL;
	if (g->in_next)
		why = "is already being advanced by another task";
	else if ((g->flags & ASYNQ_GEN_STRICT) && g->last != NULL &&
	    !asynq_future_done(g->last))
		why = "was advanced before its previous value was computed";
	if (why == NULL)
		return ASYNQ_OK;
	if (t == NULL)
		return ASYNQ_FAILED_PRECONDITION;
	return asynq_fail(t, ASYNQ_FAILED_PRECONDITION, "generator %s %s",
	    g->name, why);
}

asynq_status
asynq_gen_next(asynq_task *t, asynq_gen *g, asynq_future **out)
{
	*out = NULL;
	ASYNQ_TRY(check_advance(t, g));
	asynq_status st = advance(t, g, out);
	if (st == ASYNQ_OUT_OF_RANGE && t != NULL)
		return asynq_fail(t, ASYNQ_OUT_OF_RANGE,
		    "generator %s is exhausted", g->name);
	return st;
}

asynq_status
asynq_gen_take(asynq_task *t, asynq_gen *g, size_t n, asynq_future **out,
    size_t *n_out)
{
	size_t k = 0;
	asynq_status st;

	*n_out = 0;
	ASYNQ_TRY(check_advance(t, g));
	for (;;) {
		if (k == n) {
			st = ASYNQ_OK;
			break;
		}
		st = advance(t, g, &out[k]);
		if (st == ASYNQ_OUT_OF_RANGE) {
			st = ASYNQ_OK;
			break;
		}
		if (st != ASYNQ_OK)
			break;
		k++;
	}
	*n_out = k;
	if (k > 0) {
		asynq_status ast = t != NULL ? asynq_await_all(t, out, k)
		                             : asynq_wait_all(out, k);
		if (st == ASYNQ_OK)
			st = ast;
	}
	return st;
}

bool
asynq_gen_done(const asynq_gen *g)
{
	return g->ended && g->slot == NULL;
}

size_t
asynq_gen_count(const asynq_gen *g)
{
	return g->count;
}
