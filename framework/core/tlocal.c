/* SPDX-License-Identifier: MIT */
/*
 * The per-thread context: every module's per-thread state hangs off the
 * thread's scheduler as a registered sub-context (asynq_thread_local), made
 * on first use and torn down in reverse by asynq_thread_fini, so no module
 * keeps a thread-local of its own with a teardown call of its own.
 *
 * Design notes:
 * - A key gets a process-wide slot number (from 1) on its first use on any
 *   thread, by compare-and-swap, so lookups are an index into the
 *   scheduler's slot array. The states are also kept in the order they
 *   were made, for the teardown.
 * - Teardown has two passes (asynqi_locals_stop before the scheduler drains,
 *   asynqi_locals_free after), newest first. A state made during the stop
 *   pass (by a task that runs in the drain) is stopped and freed too; once
 *   the free pass starts, asynq_thread_local_get returns NULL.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static size_t next_slot; /* atomic; the last slot handed out */

static size_t
slot_of(asynq_thread_local *k)
{
	size_t slot = __atomic_load_n(&k->slot, __ATOMIC_ACQUIRE);
	if (slot != 0)
		return slot;
	size_t mine = __atomic_add_fetch(&next_slot, 1, __ATOMIC_RELAXED);
	size_t expected = 0;
	if (__atomic_compare_exchange_n(&k->slot, &expected, mine, false,
	        __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
		return mine;
	return expected; /* another thread named it first */
}

void *
asynq_thread_local_get(asynq_thread_local *k)
{
	asynq_sched *s = asynqi_sched_get();
	if (s == NULL || s->locals_closed)
		return NULL;
	size_t slot = slot_of(k);
	if (slot < s->n_slots && s->local_by_slot[slot] != NULL)
		return s->local_by_slot[slot];
	if (slot >= s->n_slots) {
		size_t n = s->n_slots != 0 ? s->n_slots : 8;
		while (n <= slot)
			n *= 2;
		void **t = realloc(s->local_by_slot, n * sizeof(*t));
		if (t == NULL)
			return NULL;
		memset(t + s->n_slots, 0, (n - s->n_slots) * sizeof(*t));
		s->local_by_slot = t;
		s->n_slots = n;
	}
	if (s->n_locals == s->cap_locals) {
		size_t cap = s->cap_locals != 0 ? s->cap_locals * 2 : 8;
		asynqi_local *l = realloc(s->locals, cap * sizeof(*l));
		if (l == NULL)
			return NULL;
		s->locals = l;
		s->cap_locals = cap;
	}
	void *state = k->make();
	if (state == NULL)
		return NULL;
	s->locals[s->n_locals++] = (asynqi_local){ k, state };
	s->local_by_slot[slot] = state;
	return state;
}

void
asynqi_locals_stop(asynq_sched *s)
{
	for (size_t i = s->n_locals; i-- > 0;)
		if (s->locals[i].key->stop != NULL)
			s->locals[i].key->stop(s->locals[i].state);
	s->n_locals_stopped = s->n_locals;
}

void
asynqi_locals_free(asynq_sched *s)
{
	s->locals_closed = true;
	for (size_t i = s->n_locals; i-- > 0;) {
		asynqi_local *l = &s->locals[i];
		/* Made by a task of the drain, after the stop pass. */
		if (i >= s->n_locals_stopped && l->key->stop != NULL)
			l->key->stop(l->state);
		l->key->free(l->state);
	}
	free(s->locals);
	free(s->local_by_slot);
	s->locals = NULL;
	s->local_by_slot = NULL;
	s->n_locals = s->cap_locals = s->n_slots = 0;
}
