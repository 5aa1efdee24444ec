/* SPDX-License-Identifier: MIT */
/*
 * Internal to the tools: tracked calls and call tables. A tracked call is a
 * task the tools spawn around a user's async function (a task body and its
 * argument); it may live in a call table, found by a byte key, which shares
 * it between callers and, for caches, keeps its successful result.
 */
#ifndef ASYNQ_TOOLS_TCALL_H
#define ASYNQ_TOOLS_TCALL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "asynq/tools.h"

/* ---- Byte-keyed hash map with chained nodes embedded in their owners ----- */

typedef struct kmap_node {
	struct kmap_node *next;
	uint64_t hash;
	size_t klen;
	const unsigned char *key; /* owned by the node's owner */
} kmap_node;

typedef struct kmap {
	kmap_node **buckets;
	size_t nbuckets; /* a power of two, or 0 */
	size_t count;
} kmap;

uint64_t asynqi_kmap_hash(const void *key, size_t len);
kmap_node *asynqi_kmap_find(const kmap *m, const void *key, size_t len,
    uint64_t hash);
/* Inserts n (hash, klen and key set); false without memory. */
bool asynqi_kmap_insert(kmap *m, kmap_node *n);
void asynqi_kmap_remove(kmap *m, kmap_node *n);
/* Frees the buckets (the map must be empty). */
void asynqi_kmap_fini(kmap *m);

/* ---- Tracked calls ------------------------------------------------------ */

enum tcall_kind { TCALL_PLAIN, TCALL_CTX, TCALL_RETRY };
enum tcall_state { TCALL_PENDING, TCALL_CACHED };

typedef struct ctab ctab;

typedef struct tcall {
	kmap_node node;      /* in tab->map while `tab` is set */
	ctab *tab;           /* NULL: detached (on the thread's list) */
	asynq_scoped marker; /* its override is set while the body runs */
	asynq_future *fut;   /* held until the task finishes (or cached) */
	asynq_task_fn fn;
	void *arg;
	void (*arg_free)(void *);
	int kind;  /* enum tcall_kind */
	int state; /* enum tcall_state */
	bool started, abandoned;
	uint64_t done_at;          /* monotonic ns of the result */
	struct tcall *prev, *next; /* LRU list (cached) or detached list */
	asynq_context *ctx;        /* TCALL_CTX */
	asynq_retry_cfg retry;     /* TCALL_RETRY */
	unsigned char key[];
} tcall;

/* A call table. */
struct ctab {
	kmap map;
	bool keep_ok;               /* cache successful results */
	size_t max_cached;          /* 0: no cap */
	uint64_t ttl_ns;            /* 0: results never expire */
	tcall *lru_head, *lru_tail; /* cached, most recent first */
	asynq_cache_stats stats;
};

void asynqi_ctab_init(ctab *tab, bool keep_ok, size_t max_cached,
    uint64_t ttl_ns);
/* Forgets every entry: results are dropped, tasks in flight detached. */
void asynqi_ctab_clear(ctab *tab);
/* Forgets the entry for key, if any. */
void asynqi_ctab_dirty(ctab *tab, const void *key, size_t klen);

/* asynqi_ctab_call returns the shared or cached future for key in tab, or a
 * new tracked call of fn(arg) stored there; with tab NULL, always a new
 * detached call. `proto` gives kind, ctx and retry settings for new calls.
 * Follows the ownership rule of tools.h for arg. */
asynq_future *asynqi_ctab_call(ctab *tab, const void *key, size_t klen,
    const tcall *proto, asynq_task_fn fn, void *arg, void (*arg_free)(void *),
    const char *name, const char *file, int line);

/* asynqi_retry_run runs a TCALL_RETRY record's tries on task t (retry.c). */
asynq_status asynqi_retry_run(asynq_task *t, tcall *e);

/* The thread's deduplication table (made on first use). */
ctab *asynqi_tools_dedup(void);
/* The thread's table of per-object tables; found/made by object. */
ctab *asynqi_tools_memo(const void *obj, bool make);
void asynqi_tools_memo_forget(const void *obj);
size_t asynqi_tools_memo_objects(void);
asynq_cache_stats *asynqi_tools_memo_stats(void);

#endif /* ASYNQ_TOOLS_TCALL_H */
