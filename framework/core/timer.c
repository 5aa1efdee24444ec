/* SPDX-License-Identifier: MIT */
/*
 * Timers: futures computed when the monotonic clock reaches a time. They are
 * what sleeps, retries with backoff and deadlines wait on; the scheduler
 * sleeps until the earliest one (or a posted completion) instead of spinning.
 *
 * Design notes:
 * - A binary min-heap of timer futures ordered by due time; the heap holds a
 *   reference on each, so a caller may drop its own before the timer fires.
 * - The wait loop looks at the heap's top only while timers exist: programs
 *   without timers read no clock.
 * - Timers that expire together are completed latest first, so their tasks,
 *   each woken to the front of the ready queue, run in due order.
 */
#include <stdlib.h>
#include <time.h>

#include "internal.h"

uint64_t
asynqi_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t
asynq_now_ns(void)
{
	return asynqi_now_ns();
}

static void
heap_swap(asynq_future **h, size_t a, size_t b)
{
	asynq_future *t = h[a];
	h[a] = h[b];
	h[b] = t;
}

static void
heap_up(asynq_future **h, size_t i)
{
	while (i > 0) {
		size_t parent = (i - 1) / 2;
		if (ASYNQI_DUE(h[parent]) <= ASYNQI_DUE(h[i]))
			break;
		heap_swap(h, parent, i);
		i = parent;
	}
}

static void
heap_down(asynq_future **h, size_t n, size_t i)
{
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = i;
		if (l < n && ASYNQI_DUE(h[l]) < ASYNQI_DUE(h[m]))
			m = l;
		if (r < n && ASYNQI_DUE(h[r]) < ASYNQI_DUE(h[m]))
			m = r;
		if (m == i)
			return;
		heap_swap(h, m, i);
		i = m;
	}
}

asynq_future *
asynq_sleep(uint64_t ns)
{
	asynq_sched *s = asynqi_sched_get();
	if (s == NULL)
		return NULL;
	if (s->n_timers == s->cap_timers) {
		size_t cap = s->cap_timers != 0 ? s->cap_timers * 2 : 16;
		asynq_future **h = realloc(s->timers, cap * sizeof(*h));
		if (h == NULL)
			return NULL;
		s->timers = h;
		s->cap_timers = cap;
	}
	asynq_future *f = asynqi_future_alloc(s, FUT_TIMER);
	if (f == NULL)
		return NULL;
	f->refs = 2; /* the caller's and the heap's */
	ASYNQI_DUE(f) = asynqi_now_ns() + ns;
	f->vkind = VAL_I64;
	s->timers[s->n_timers] = f;
	heap_up(s->timers, s->n_timers++);
	return f;
}

static asynq_future *
heap_pop(asynq_sched *s)
{
	asynq_future *f = s->timers[0];
	s->timers[0] = s->timers[--s->n_timers];
	heap_down(s->timers, s->n_timers, 0);
	return f;
}

/* Completes expired timers, latest first: each completion puts its waiter
 * at the front of the ready queue, so timers that expired together (the
 * thread woke late) resume their tasks in due order. */
static void
fire_expired(asynq_sched *s, uint64_t now)
{
	asynq_future *batch[32];
	size_t n = 0;
	while (n < 32 && s->n_timers > 0 && ASYNQI_DUE(s->timers[0]) <= now)
		batch[n++] = heap_pop(s);
	if (n == 32)
		fire_expired(s, now); /* the later ones first */
	while (n > 0) {
		asynq_future *f = batch[--n];
		f->status = ASYNQ_OK;
		asynqi_future_complete(s, f);
		asynq_future_rele(f);
	}
}

void
asynqi_timers_fire(asynq_sched *s, uint64_t now)
{
	fire_expired(s, now);
}

void
asynqi_timers_cancel(asynq_sched *s)
{
	while (s->n_timers > 0) {
		asynq_future *f = heap_pop(s);
		f->status = ASYNQ_CANCELLED;
		f->error = asynq_error_alloc(ASYNQ_CANCELLED,
		    "timer cancelled by asynq_thread_fini");
		asynqi_future_complete(s, f);
		asynq_future_rele(f);
	}
	free(s->timers);
	s->timers = NULL;
	s->cap_timers = 0;
}
