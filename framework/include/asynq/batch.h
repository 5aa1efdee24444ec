/* SPDX-License-Identifier: MIT */
/*
 * Batch backends. A backend collects the items that tasks ask of it into its
 * active batch; when every task is blocked the scheduler flushes the pending
 * batch with the highest priority. A flush either sets every item before it
 * returns (synchronous) or starts I/O, calls asynq_batch_defer, and later
 * calls asynq_batch_complete from any thread (asynchronous); the owning
 * scheduler then finishes the items on its own thread, so waiting tasks never
 * see another thread's half-written results.
 *
 * Rules: a flushed batch takes no new items (the next item starts a new
 * active batch); flushing twice is an error; items a flush leaves unset fail
 * with INTERNAL; a failed flush fails every unset item with its status;
 * cancelling never fails and fails every unset item with CANCELLED.
 *
 * A backend object belongs to one scheduler thread (the RPC layer makes one
 * per worker). Embed asynq_backend and asynq_batch as the first member of
 * your own structs; their fields are the framework's.
 */
#ifndef ASYNQ_BATCH_H
#define ASYNQ_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "asynq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct asynq_backend asynq_backend;
typedef struct asynq_batch asynq_batch;

/* The backend vtable. */
typedef struct asynq_backend_ops {
	/* Switch the active batch: return a new empty batch (the framework
	 * initialises its asynq_batch part), or NULL without memory. */
	asynq_batch *(*batch_alloc)(asynq_backend *be);
	/* Compute the items (asynq_batch_item, asynq_item_set_*). Return OK
	 * when done or deferred; another status fails every unset item. */
	asynq_status (*flush)(asynq_batch *b);
	/* Optional: stop I/O of a deferred batch (asynq_batch_complete must
	 * still be called exactly once). */
	void (*cancel)(asynq_batch *b);
	/* Optional: higher flushes first; default is the number of items. */
	int64_t (*priority)(const asynq_batch *b);
	/* Free a batch made by batch_alloc, after its items are finished. */
	void (*batch_free)(asynq_batch *b);
	/* Optional, for backends with dedup_keys whose items own pointer
	 * results (set with a free_fn): return a copy of p, owned by the
	 * caller, freed with *free_fn; NULL without memory. Scheduler
	 * thread, while the batch finishes. */
	void *(*copy)(asynq_batch *b, const void *p, void (**free_fn)(void *));
} asynq_backend_ops;

struct asynq_backend {
	const asynq_backend_ops *ops;
	const char *name; /* for dumps and errors */
	/* Flush policy (asynq_backend_init sets both to 0: flush when every
	 * task is blocked, as asynq does). flush_at: a batch holding this many
	 * items is flushed when the next item arrives (which starts a new
	 * batch), while tasks go on running; the last one flushes when they
	 * block. flush_delay_ns:
	 * an idle scheduler waits up to this long after a batch's first item
	 * before flushing it, so calls from work that arrives meanwhile (other
	 * requests) join it; other batches and tasks run as usual. */
	size_t flush_at;
	uint64_t flush_delay_ns;
	/* dedup_keys: an item whose key is already in the active batch is not
	 * added to it: the caller gets a follower future that receives a copy
	 * of the first item's result when the batch finishes (the integer,
	 * the borrowed pointer, ops->copy of an owned pointer, the error's
	 * code and message), so the flush sees each key once, as a
	 * DataLoader's batch function does. Set it before the first item. */
	bool dedup_keys;
	asynq_batch *active; /* framework's: the batch new items join */
	asynq_sched *sched;  /* framework's: owner, set on first item */
	size_t items_hint;   /* framework's: room a new batch starts with */
};

struct asynq_batch {
	/* All fields are the framework's; read them through the functions. */
	asynq_backend *backend;
	const asynq_backend_ops *ops; /* the backend's, kept for batch_free:
	                                 a batch an item still holds may
	                                 outlive its backend */
	asynq_sched *sched;
	asynq_future **items;
	size_t n_items, cap_items;
	int state;
	bool cancelled, deferred;
	uint32_t refs; /* one per live item */
	asynq_status result;
	asynq_batch *prev, *next; /* pending list */
	asynq_post post;          /* completion, posted to the scheduler */
	uint64_t seq;
	uint64_t due;   /* flush_delay_ns: not flushed before */
	uint32_t *keys; /* dedup_keys: item index + 1 by key hash */
	size_t keys_mask;
	asynq_future **follow; /* followers, and the item each follows */
	size_t *follow_of;
	size_t n_follow, cap_follow;
};

/* asynq_backend_init prepares an embedded backend. */
void asynq_backend_init(asynq_backend *be, const asynq_backend_ops *ops,
    const char *name);

/* asynq_backend_fini cancels the backend's active batch, if any. Items
 * still referenced may outlive the backend (their batch is freed with the
 * last of them, through the ops, which must stay valid: make them static).
 * Scheduler thread only. */
void asynq_backend_fini(asynq_backend *be);

/* asynq_batch_add returns a new item future in be's active batch (starting a
 * new batch if there is none or it was flushed). key and req are the item's
 * request, borrowed until the batch is finished. Scheduler thread only. */
asynq_future *asynq_batch_add(asynq_backend *be, int64_t key, void *req);

/* asynq_backend_active returns the batch the next asynq_batch_add on be
 * would join, or NULL if that add would start a new one (none yet, or the
 * active one is flushed or full). Scheduler thread only. */
asynq_batch *asynq_backend_active(const asynq_backend *be);
/* asynq_batch_follow returns a follower of item i of b (a future that gets
 * a copy of the item's result when b finishes, as dedup_keys gives), for a
 * backend that matches calls by more than an integer key; b must still
 * take items (asynq_backend_active). NULL without memory, for a bad index
 * or for a flushed batch. Scheduler thread only. */
asynq_future *asynq_batch_follow(asynq_batch *b, size_t i);
/* asynq_batch_size returns the number of items in b. */
size_t asynq_batch_size(const asynq_batch *b);

/* asynq_batch_followers returns how many calls of b were folded into an
 * item with the same key (dedup_keys): b served asynq_batch_size(b) +
 * asynq_batch_followers(b) callers. */
size_t asynq_batch_followers(const asynq_batch *b);
/* asynq_batch_item returns item i of b (borrowed); items keep the order in
 * which they were added. */
asynq_future *asynq_batch_item(const asynq_batch *b, size_t i);

/* asynq_batch_flush flushes b now (the scheduler does this by itself).
 * FAILED_PRECONDITION if b was already flushed or cancelled; otherwise the
 * flush's status. Scheduler thread only. */
asynq_status asynq_batch_flush(asynq_batch *b);

/* asynq_batch_cancel fails every unset item of b with CANCELLED; never
 * fails, and does nothing to a finished batch. Scheduler thread only. */
void asynq_batch_cancel(asynq_batch *b);

/* asynq_batch_defer, called inside flush, says the flush completes later
 * through asynq_batch_complete. */
void asynq_batch_defer(asynq_batch *b);

/* asynq_batch_complete finishes a deferred flush: the items set by then keep
 * their results, the rest fail with `st` (INTERNAL if st is OK). Exactly once
 * per deferred flush. Any thread: the work is posted to the owning
 * scheduler, and many completions cost it one wake-up. */
void asynq_batch_complete(asynq_batch *b, asynq_status st);

/* asynq_item_batch returns the batch an item belongs to, borrowed from the
 * item (a batch lives as long as any of its items). */
asynq_batch *asynq_item_batch(const asynq_future *item);

/* asynq_item_key returns the key an item was added with. */
int64_t asynq_item_key(const asynq_future *item);

/* asynq_item_req returns the request pointer an item was added with. */
void *asynq_item_req(const asynq_future *item);

/* asynq_item_set_i64 sets an item's result. Inside flush, or from the
 * completing thread of a deferred flush before asynq_batch_complete. A second
 * result for the same item is ignored and returns FAILED_PRECONDITION. */
asynq_status asynq_item_set_i64(asynq_future *item, int64_t v);

/* asynq_item_set_ptr sets an item's pointer result; with free_fn, ownership
 * of p moves to the item (also when FAILED_PRECONDITION is returned: p is
 * freed then). Same calling rule as asynq_item_set_i64. */
asynq_status asynq_item_set_ptr(asynq_future *item, void *p,
    void (*free_fn)(void *));

/* asynq_item_set_error fails an item; ownership of e moves to the item. Same
 * calling rule as asynq_item_set_i64. */
asynq_status asynq_item_set_error(asynq_future *item, asynq_error *e);

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_BATCH_H */
