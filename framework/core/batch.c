/* SPDX-License-Identifier: MIT */
/*
 * Batches: items joining a backend's active batch, picking and flushing the
 * best pending batch, finishing items, cancelling, and the cross-thread
 * completion queue of deferred flushes.
 *
 * Design notes:
 * - A batch is pending (linked in the scheduler's list) from its first item
 *   until it is flushed or cancelled. Flushing takes it off the backend, so
 *   the next item starts a new batch.
 * - Items store a result during the flush, from any thread for a deferred
 *   one, after claiming the item with a compare-and-swap; they are marked
 *   computed and their waiters woken only on the scheduler thread, in
 *   asynqi_batch_finish. The completion queue's mutex orders the completing
 *   thread's writes before the scheduler's reads. Cancelling an in-flight
 *   batch claims and fails the unclaimed items at once.
 * - Completions and other cross-thread work arrive as posts (asynq_post) on
 *   one FIFO; the poster signals the condition variable only when the
 *   scheduler sleeps and clears the flag as it does, so a burst of them costs
 *   one wake-up.
 * - Each item holds a reference on its batch; the backend's batch_free runs
 *   when the batch is finished and its last item is gone.
 * - dedup_keys: the batch keeps an open-addressing table from key to item
 *   (index + 1, 0 empty, at most half full). A call whose key is there gets
 *   a follower: an item future that is claimed from birth (nothing can set
 *   it) and is not among the batch's items, so the flush never sees it. It
 *   holds a batch reference like an item and is completed, with a copy of
 *   its item's result, right after that item: in asynqi_batch_finish, or in
 *   an in-flight cancel for the items the cancel failed.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"
#include "platform.h"

void
asynq_backend_init(asynq_backend *be, const asynq_backend_ops *ops,
    const char *name)
{
	memset(be, 0, sizeof(*be));
	be->ops = ops;
	be->name = name != NULL ? name : "backend";
}

void
asynq_backend_fini(asynq_backend *be)
{
	if (be->active != NULL)
		asynq_batch_cancel(be->active);
	be->active = NULL;
}

static void
pending_unlink(asynq_sched *s, asynq_batch *b)
{
	if (b->prev != NULL)
		b->prev->next = b->next;
	else if (s->pending == b)
		s->pending = b->next;
	if (b->next != NULL)
		b->next->prev = b->prev;
	b->prev = b->next = NULL;
}

void
asynqi_batch_free(asynq_batch *b)
{
	free(b->items);
	b->items = NULL;
	free(b->keys);
	free(b->follow);
	free(b->follow_of);
	b->keys = NULL;
	b->follow = NULL;
	b->follow_of = NULL;
	b->ops->batch_free(b);
}

static void
batch_maybe_free(asynq_batch *b)
{
	if (b->refs == 0 && b->state == BATCH_DONE)
		asynqi_batch_free(b);
}

static asynq_batch *
batch_new(asynq_sched *s, asynq_backend *be)
{
	asynq_batch *b = be->ops->batch_alloc(be);
	if (b == NULL)
		return NULL;
	memset(b, 0, sizeof(*b));
	b->backend = be;
	b->ops = be->ops;
	b->sched = s;
	b->state = BATCH_OPEN;
	b->seq = ++s->batch_seq;
	return b;
}

/* The most items a new batch's array starts with. */
#define ITEMS_HINT_MAX 4096

static size_t
key_slot(uint64_t key, size_t mask)
{
	return (size_t)((key * 0x9e3779b97f4a7c15u) >> 32) & mask;
}

/* The index + 1 of the item of b with key, or 0. */
static size_t
key_find(const asynq_batch *b, int64_t key)
{
	if (b->keys == NULL)
		return 0;
	for (size_t j = key_slot((uint64_t)key, b->keys_mask); b->keys[j] != 0;
	     j = (j + 1) & b->keys_mask)
		if (ASYNQI_ITEM(b->items[b->keys[j] - 1])->key == key)
			return b->keys[j];
	return 0;
}

/* Records the last item of b under its key. Without memory the table is
 * dropped and rebuilt at the next insert; calls made meanwhile with a key
 * already there become items of their own (correct, only not folded). */
static void
key_insert(asynq_batch *b)
{
	size_t n = b->n_items;
	if (b->keys == NULL || n * 2 > b->keys_mask + 1) {
		size_t cap = b->keys_mask != 0 ? (b->keys_mask + 1) * 2 : 32;
		uint32_t *t = calloc(cap, sizeof(*t));
		free(b->keys);
		b->keys = t;
		b->keys_mask = t != NULL ? cap - 1 : 0;
		if (t == NULL)
			return;
		for (size_t i = 0; i + 1 < n; i++) {
			size_t j = key_slot(
			    (uint64_t)ASYNQI_ITEM(b->items[i])->key, cap - 1);
			while (t[j] != 0)
				j = (j + 1) & (cap - 1);
			t[j] = (uint32_t)(i + 1);
		}
	}
	size_t j =
	    key_slot((uint64_t)ASYNQI_ITEM(b->items[n - 1])->key, b->keys_mask);
	while (b->keys[j] != 0)
		j = (j + 1) & b->keys_mask;
	b->keys[j] = (uint32_t)n;
}

/* A follower of item `of` of b: see the design notes. */
static asynq_future *
follower_add(asynq_sched *s, asynq_batch *b, asynq_future *of, size_t of_i)
{
	if (b->n_follow == b->cap_follow) {
		size_t cap = b->cap_follow != 0 ? b->cap_follow * 2 : 8;
		asynq_future **fs = realloc(b->follow, cap * sizeof(*fs));
		if (fs == NULL)
			return NULL;
		b->follow = fs;
		size_t *ofs = realloc(b->follow_of, cap * sizeof(*ofs));
		if (ofs == NULL)
			return NULL;
		b->follow_of = ofs;
		b->cap_follow = cap;
	}
	asynq_future *f = asynqi_future_alloc(s, FUT_ITEM);
	if (f == NULL)
		return NULL;
	f->refs = 2; /* the caller's and the batch's */
	atomic_store_explicit(&f->claimed, true, memory_order_relaxed);
	ASYNQI_ITEM(f)->batch = b;
	ASYNQI_ITEM(f)->key = ASYNQI_ITEM(of)->key;
	ASYNQI_ITEM(f)->req = ASYNQI_ITEM(of)->req;
	b->follow[b->n_follow] = f;
	b->follow_of[b->n_follow] = of_i;
	b->n_follow++;
	b->refs++;
	s->stats.items_followed++;
	return f;
}

/* Gives follower f a copy of the result of its (computed) item `of`. */
static void
follower_copy(asynq_batch *b, asynq_future *f, const asynq_future *of)
{
	ASYNQ_ASSERT(of->done && !f->done);
	if (of->status != ASYNQ_OK) {
		asynq_error *e = of->error;
		f->status = of->status;
		f->error = asynq_error_alloc(of->status, "%s",
		    e != NULL ? asynq_error_message(e)
		              : asynq_strerror(of->status));
		return;
	}
	f->status = ASYNQ_OK;
	f->vkind = of->vkind;
	f->v = of->v;
	if (of->vkind != VAL_PTR || of->vfree == NULL)
		return;
	void (*free_fn)(void *) = NULL;
	void *p =
	    b->ops->copy != NULL ? b->ops->copy(b, of->v.p, &free_fn) : NULL;
	if (p == NULL) {
		f->vkind = VAL_NONE;
		f->v.p = NULL;
		f->status = b->ops->copy != NULL ? ASYNQ_RESOURCE_EXHAUSTED
		                                 : ASYNQ_FAILED_PRECONDITION;
		f->error = asynq_error_alloc(f->status,
		    b->ops->copy != NULL
		        ? "%s: out of memory copying a result for a caller "
		          "with the same key"
		        : "%s: dedup_keys with owned pointer results needs "
		          "ops->copy",
		    b->backend->name);
		return;
	}
	f->v.p = p;
	f->vfree = free_fn;
}

/* Completes the followers of computed items; all of them when the batch
 * is done. */
static void
followers_finish(asynq_sched *s, asynq_batch *b)
{
	for (size_t i = 0; i < b->n_follow; i++) {
		asynq_future *f = b->follow[i];
		asynq_future *of = b->items[b->follow_of[i]];
		if (f->done || !of->done)
			continue;
		follower_copy(b, f, of);
		asynqi_future_complete(s, f);
	}
}

asynq_batch *
asynq_backend_active(const asynq_backend *be)
{
	asynq_batch *b = be->active;
	if (b == NULL || b->state != BATCH_OPEN ||
	    (be->flush_at != 0 && b->n_items >= be->flush_at))
		return NULL;
	return b;
}

asynq_future *
asynq_batch_follow(asynq_batch *b, size_t i)
{
	if (b == NULL || b->state != BATCH_OPEN || i >= b->n_items)
		return NULL;
	return follower_add(b->sched, b, b->items[i], i);
}

size_t
asynq_batch_followers(const asynq_batch *b)
{
	return b->n_follow;
}

asynq_future *
asynq_batch_add(asynq_backend *be, int64_t key, void *req)
{
	asynq_sched *s = asynqi_sched_get();
	if (s == NULL)
		return NULL;
	if (be->sched == NULL)
		be->sched = s;
	asynq_batch *b = be->active;
	if (b != NULL && b->state == BATCH_OPEN && be->flush_at != 0 &&
	    b->n_items >= be->flush_at) {
		/* Full: send it now, while the tasks go on running. Done here,
		 * at the next add, so every item of it is complete (the
		 * caller of the last add may still be filling its request). */
		asynqi_batch_run_flush(s, b);
	}
	if (b == NULL || b->state != BATCH_OPEN) {
		b = batch_new(s, be);
		if (b == NULL)
			return NULL;
		be->active = b;
	}
	if (b->n_items == b->cap_items) {
		size_t cap = b->cap_items != 0 ? b->cap_items * 2
		    : be->items_hint > 16      ? be->items_hint
		                               : 16;
		asynq_future **items = realloc(b->items, cap * sizeof(*items));
		if (items == NULL)
			return NULL;
		b->items = items;
		b->cap_items = cap;
	}
	if (be->dedup_keys) {
		size_t of = key_find(b, key);
		if (of != 0)
			return follower_add(s, b, b->items[of - 1], of - 1);
	}
	asynq_future *f = asynqi_future_alloc(s, FUT_ITEM);
	if (f == NULL)
		return NULL;
	f->refs = 2; /* the caller's and the batch's */
	ASYNQI_ITEM(f)->batch = b;
	ASYNQI_ITEM(f)->key = key;
	ASYNQI_ITEM(f)->req = req;
	b->items[b->n_items++] = f;
	b->refs++;
	if (be->dedup_keys)
		key_insert(b);
	if (b->n_items == 1) {
		b->next = s->pending;
		if (s->pending != NULL)
			s->pending->prev = b;
		s->pending = b;
		if (be->flush_delay_ns != 0)
			b->due = asynqi_now_ns() + be->flush_delay_ns;
	}
	return f;
}

size_t
asynq_batch_size(const asynq_batch *b)
{
	return b->n_items;
}

asynq_future *
asynq_batch_item(const asynq_batch *b, size_t i)
{
	return i < b->n_items ? b->items[i] : NULL;
}

asynq_batch *
asynq_item_batch(const asynq_future *item)
{
	return item != NULL && item->kind == FUT_ITEM ? ASYNQI_ITEM(item)->batch
	                                              : NULL;
}

int64_t
asynq_item_key(const asynq_future *item)
{
	return ASYNQI_ITEM(item)->key;
}

void *
asynq_item_req(const asynq_future *item)
{
	return ASYNQI_ITEM(item)->req;
}

static bool
claim(asynq_future *item)
{
	bool expected = false;
	return atomic_compare_exchange_strong_explicit(&item->claimed,
	    &expected, true, memory_order_acq_rel, memory_order_relaxed);
}

static asynq_status
item_claim(asynq_future *item)
{
	if (item == NULL || item->kind != FUT_ITEM || !claim(item))
		return ASYNQ_FAILED_PRECONDITION;
	return ASYNQ_OK;
}

asynq_status
asynq_item_set_i64(asynq_future *item, int64_t v)
{
	asynq_status st = item_claim(item);
	if (st != ASYNQ_OK)
		return st;
	item->status = ASYNQ_OK;
	item->vkind = VAL_I64;
	item->v.i = v;
	return ASYNQ_OK;
}

asynq_status
asynq_item_set_ptr(asynq_future *item, void *p, void (*free_fn)(void *))
{
	asynq_status st = item_claim(item);
	if (st != ASYNQ_OK) {
		if (free_fn != NULL)
			free_fn(p);
		return st;
	}
	item->status = ASYNQ_OK;
	item->vkind = VAL_PTR;
	item->v.p = p;
	item->vfree = free_fn;
	return ASYNQ_OK;
}

asynq_status
asynq_item_set_error(asynq_future *item, asynq_error *e)
{
	asynq_status st = item_claim(item);
	if (st != ASYNQ_OK) {
		asynq_error_rele(e);
		return st;
	}
	asynqi_future_set_error(item, e);
	return ASYNQ_OK;
}

asynq_batch *
asynqi_best_batch(asynq_sched *s, uint64_t *next_due)
{
	asynq_batch *best = NULL;
	int64_t best_prio = 0;
	uint64_t now = 0; /* read only if some batch has a delay */
	if (next_due != NULL)
		*next_due = 0;
	for (asynq_batch *b = s->pending; b != NULL; b = b->next) {
		if (next_due != NULL && b->due != 0) {
			if (now == 0)
				now = asynqi_now_ns();
			if (b->due > now) {
				if (*next_due == 0 || b->due < *next_due)
					*next_due = b->due;
				continue;
			}
		}
		int64_t prio = b->ops->priority != NULL ? b->ops->priority(b)
		                                        : (int64_t)b->n_items;
		/* Ties go to the older batch. */
		if (best == NULL || prio > best_prio ||
		    (prio == best_prio && b->seq < best->seq)) {
			best = b;
			best_prio = prio;
		}
	}
	return best;
}

/* Fails an item the flush did not set. */
static void
item_fail(asynq_batch *b, asynq_future *f, asynq_status fill)
{
	const char *name = b->backend->name;
	if (b->cancelled) {
		f->status = ASYNQ_CANCELLED;
		f->error = asynq_error_alloc(ASYNQ_CANCELLED,
		    "batch of %s was cancelled", name);
	} else if (fill != ASYNQ_OK) {
		f->status = fill;
		f->error = asynq_error_alloc(fill, "flush of %s failed: %s",
		    name, asynq_strerror(fill));
	} else {
		f->status = ASYNQ_INTERNAL;
		f->error = asynq_error_alloc(ASYNQ_INTERNAL,
		    "flush of %s left the item unset", name);
	}
}

void
asynqi_batch_finish(asynq_sched *s, asynq_batch *b)
{
	b->state = BATCH_DONE;
	ASYNQI_TRACE_BATCH(s, ASYNQ_TRACE_BATCH_DONE, b);
	/* The items keep the batch alive through this loop. */
	b->refs++;
	for (size_t i = 0; i < b->n_items; i++) {
		asynq_future *f = b->items[i];
		if (f->done)
			continue; /* failed early by a cancel */
		if (claim(f))
			item_fail(b, f, b->result);
		asynqi_future_complete(s, f);
	}
	followers_finish(s, b);
	for (size_t i = 0; i < b->n_items; i++)
		asynq_future_rele(b->items[i]);
	for (size_t i = 0; i < b->n_follow; i++)
		asynq_future_rele(b->follow[i]);
	b->refs--;
	batch_maybe_free(b);
}

static void
detach(asynq_sched *s, asynq_batch *b)
{
	pending_unlink(s, b);
	if (b->backend->active == b)
		b->backend->active = NULL;
}

void
asynqi_batch_run_flush(asynq_sched *s, asynq_batch *b)
{
	detach(s, b);
	b->state = BATCH_FLUSHING;
	s->stats.flushes++;
	/* The next batch starts with room for as many items as this one has
	 * (a power of two, at most ITEMS_HINT_MAX), so a steady load grows no
	 * array per batch and a smaller one gives the room back. */
	b->backend->items_hint =
	    asynqi_room_hint(b->n_items, 16, ITEMS_HINT_MAX);
	ASYNQI_TRACE_BATCH(s, ASYNQ_TRACE_FLUSH_BEGIN, b);
	asynq_status st = b->ops->flush(b);
	ASYNQI_TRACE_BATCH(s, ASYNQ_TRACE_FLUSH_END, b);
	if (b->deferred && st == ASYNQ_OK) {
		b->state = BATCH_INFLIGHT;
		s->n_inflight++;
		return;
	}
	b->result = st;
	asynqi_batch_finish(s, b);
}

asynq_status
asynq_batch_flush(asynq_batch *b)
{
	if (b->state != BATCH_OPEN)
		return ASYNQ_FAILED_PRECONDITION;
	asynq_sched *s = b->sched;
	asynqi_batch_run_flush(s, b);
	return b->state == BATCH_INFLIGHT ? ASYNQ_OK : b->result;
}

void
asynq_batch_cancel(asynq_batch *b)
{
	asynq_sched *s = b->sched;
	switch (b->state) {
	case BATCH_OPEN:
		detach(s, b);
		b->cancelled = true;
		s->stats.batches_cancelled++;
		asynqi_batch_finish(s, b);
		break;
	case BATCH_INFLIGHT:
		if (b->cancelled)
			break;
		b->cancelled = true;
		s->stats.batches_cancelled++;
		/* Fail now every item no reply has claimed; those a reply is
		 * writing finish when the completion arrives. */
		for (size_t i = 0; i < b->n_items; i++) {
			asynq_future *f = b->items[i];
			if (claim(f)) {
				item_fail(b, f, ASYNQ_CANCELLED);
				asynqi_future_complete(s, f);
			}
		}
		followers_finish(s, b);
		if (b->ops->cancel != NULL)
			b->ops->cancel(b);
		break;
	default:
		break;
	}
}

void
asynq_batch_defer(asynq_batch *b)
{
	/* Only a flush defers itself. */
	ASYNQ_ASSERT(b->state == BATCH_FLUSHING);
	b->deferred = true;
}

/* Runs on the scheduler thread for a completed deferred flush. */
static void
batch_completed(asynq_post *p)
{
	asynq_batch *b =
	    (asynq_batch *)((char *)p - offsetof(asynq_batch, post));
	asynq_sched *s = b->sched;
	/* asynq_batch_complete comes once per deferred flush. */
	ASYNQ_ASSERT(b->state == BATCH_INFLIGHT && s->n_inflight > 0);
	s->n_inflight--;
	s->stats.async_flushes++;
	asynqi_batch_finish(s, b);
}

void
asynq_batch_complete(asynq_batch *b, asynq_status st)
{
	/* Written before the post, whose mutex publishes it (and the items'
	 * results) to the scheduler thread. */
	b->result = st;
	b->post.fn = batch_completed;
	asynq_sched_post(b->sched, &b->post);
}

void
asynq_sched_post(asynq_sched *s, asynq_post *p)
{
	p->next = NULL;
	pthread_mutex_lock(&s->mu);
	if (s->posts_tail != NULL)
		s->posts_tail->next = p;
	else
		s->posts_head = p;
	s->posts_tail = p;
	atomic_store_explicit(&s->has_posted, 1, memory_order_relaxed);
	if (s->sleeping) {
		s->sleeping = false;
		pthread_cond_signal(&s->cv);
	}
	pthread_mutex_unlock(&s->mu);
}

void
asynqi_process_posted(asynq_sched *s, bool block, uint64_t until)
{
	pthread_mutex_lock(&s->mu);
	while (block && s->posts_head == NULL) {
		s->sleeping = true;
		if (until == 0) {
			pthread_cond_wait(&s->cv, &s->mu);
			continue;
		}
		struct timespec ts = {
			.tv_sec = (time_t)(until / 1000000000u),
			.tv_nsec = (long)(until % 1000000000u),
		};
		if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) != 0)
			break; /* a timer is due */
	}
	s->sleeping = false;
	asynq_post *posts = s->posts_head;
	s->posts_head = s->posts_tail = NULL;
	atomic_store_explicit(&s->has_posted, 0, memory_order_relaxed);
	pthread_mutex_unlock(&s->mu);
	while (posts != NULL) {
		asynq_post *p = posts;
		posts = p->next;
		p->next = NULL;
		p->fn(p);
	}
}
