/* SPDX-License-Identifier: MIT */
/*
 * Tracked calls and call tables: the machinery under deduplication,
 * memoisation, the LRU cache, the lazy constant, retries and calls with a
 * context. Every task these tools spawn runs a wrapper body (tcall_task) over
 * a heap record (tcall) that holds the user's function and argument.
 *
 * Design notes:
 * - A record lives exactly as long as its task is unfinished, plus as long
 *   as a cache keeps its result; it holds one reference to the task future
 *   the whole time, so the record can never point at a freed task. It is
 *   always reachable: from its table, or from the thread's list of detached
 *   records (dirtied, forgotten, evicted while in flight, re-entrant calls,
 *   calls with a context, retries). The on-done callback frees it.
 * - A task that never runs never finishes, so the thread's teardown marks
 *   the records of unstarted tasks abandoned and starts them: their wrapper
 *   fails with CANCELLED at once, without calling the user's body, and the
 *   callback frees them while asynq_thread_fini drains the ready queue.
 * - Re-entrance: while a wrapper runs the user's body it overrides a scoped
 *   value keyed by its own record. Scoped values are visible to the task and
 *   the tasks it creates, so a call that finds an in-flight record whose
 *   override it can see comes from inside that task: awaiting the record's
 *   task would await itself, so it gets a new detached task instead.
 * - Everything is per scheduler thread: the dedup and memo tables are
 *   thread-local, and nothing here is locked.
 */
#include <stdlib.h>
#include <string.h>

#include "tcall.h"

/* ---- kmap --------------------------------------------------------------- */

uint64_t
asynqi_kmap_hash(const void *key, size_t len)
{
	/* FNV-1a, then a final mix so the low bits index buckets well. */
	const unsigned char *p = key;
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	return h;
}

kmap_node *
asynqi_kmap_find(const kmap *m, const void *key, size_t len, uint64_t hash)
{
	if (m->nbuckets == 0)
		return NULL;
	for (kmap_node *n = m->buckets[hash & (m->nbuckets - 1)]; n != NULL;
	     n = n->next)
		if (n->hash == hash && n->klen == len &&
		    (len == 0 || memcmp(n->key, key, len) == 0))
			return n;
	return NULL;
}

static bool
kmap_grow(kmap *m)
{
	size_t nb = m->nbuckets != 0 ? m->nbuckets * 2 : 16;
	kmap_node **b = calloc(nb, sizeof(*b));
	if (b == NULL)
		return false;
	for (size_t i = 0; i < m->nbuckets; i++) {
		kmap_node *n = m->buckets[i];
		while (n != NULL) {
			kmap_node *next = n->next;
			n->next = b[n->hash & (nb - 1)];
			b[n->hash & (nb - 1)] = n;
			n = next;
		}
	}
	free(m->buckets);
	m->buckets = b;
	m->nbuckets = nb;
	return true;
}

bool
asynqi_kmap_insert(kmap *m, kmap_node *n)
{
	/* Load factor 1; a failed growth still inserts into the old table. */
	if (m->count >= m->nbuckets && !kmap_grow(m) && m->nbuckets == 0)
		return false;
	kmap_node **b = &m->buckets[n->hash & (m->nbuckets - 1)];
	n->next = *b;
	*b = n;
	m->count++;
	return true;
}

void
asynqi_kmap_remove(kmap *m, kmap_node *n)
{
	kmap_node **p = &m->buckets[n->hash & (m->nbuckets - 1)];
	while (*p != NULL && *p != n)
		p = &(*p)->next;
	if (*p == n) {
		*p = n->next;
		n->next = NULL;
		m->count--;
	}
}

void
asynqi_kmap_fini(kmap *m)
{
	free(m->buckets);
	m->buckets = NULL;
	m->nbuckets = 0;
	m->count = 0;
}

/* ---- Thread state ------------------------------------------------------- */

typedef struct memo_obj {
	kmap_node node; /* key: the object pointer's bytes */
	ctab tab;
	const void *obj;
} memo_obj;

typedef struct tools_tls {
	ctab dedup;
	kmap objs;
	asynq_cache_stats memo_stats;
	asynq_cache_stats memo_sum; /* asynqi_tools_memo_stats' answer */
	tcall *detached;
} tools_tls;

static void *tools_make(void);
static void tools_stop(void *p);
static void tools_free(void *p);

/* The thread's tables, a sub-context of its scheduler. */
static asynq_thread_local tools_key =
    ASYNQ_THREAD_LOCAL_INIT("asynq.tools", tools_make, tools_stop, tools_free);

static tools_tls *
tools_state(void)
{
	return asynq_thread_local_get(&tools_key);
}

static void
detached_push(tcall *e)
{
	tools_tls *t = tools_state();
	e->tab = NULL;
	e->prev = NULL;
	e->next = NULL;
	if (t == NULL)
		return; /* the thread is torn down: nothing will run it */
	e->next = t->detached;
	if (t->detached != NULL)
		t->detached->prev = e;
	t->detached = e;
}

static void
detached_remove(tcall *e)
{
	tools_tls *t = tools_state();
	if (t == NULL)
		return;
	if (e->prev != NULL)
		e->prev->next = e->next;
	else if (t->detached == e)
		t->detached = e->next;
	if (e->next != NULL)
		e->next->prev = e->prev;
	e->prev = e->next = NULL;
}

/* ---- Call tables -------------------------------------------------------- */

void
asynqi_ctab_init(ctab *tab, bool keep_ok, size_t max_cached, uint64_t ttl_ns)
{
	memset(tab, 0, sizeof(*tab));
	tab->keep_ok = keep_ok;
	tab->max_cached = max_cached;
	tab->ttl_ns = ttl_ns;
}

static void
tcall_free(tcall *e)
{
	asynq_future *f = e->fut;
	e->fut = NULL;
	free(e);
	asynq_future_rele(f);
}

static void
lru_unlink(ctab *tab, tcall *e)
{
	if (e->prev != NULL)
		e->prev->next = e->next;
	else
		tab->lru_head = e->next;
	if (e->next != NULL)
		e->next->prev = e->prev;
	else
		tab->lru_tail = e->prev;
	e->prev = e->next = NULL;
}

static void
lru_push_front(ctab *tab, tcall *e)
{
	e->prev = NULL;
	e->next = tab->lru_head;
	if (tab->lru_head != NULL)
		tab->lru_head->prev = e;
	else
		tab->lru_tail = e;
	tab->lru_head = e;
}

/* Drops a cached result. */
static void
drop_cached(ctab *tab, tcall *e)
{
	lru_unlink(tab, e);
	asynqi_kmap_remove(&tab->map, &e->node);
	tab->stats.size--;
	tcall_free(e);
}

/* Takes an in-flight record out of its table; it lives on, detached, until
 * its task finishes. */
static void
detach(ctab *tab, tcall *e)
{
	asynqi_kmap_remove(&tab->map, &e->node);
	tab->stats.in_flight--;
	detached_push(e);
}

static void
forget(ctab *tab, tcall *e)
{
	if (e->state == TCALL_CACHED)
		drop_cached(tab, e);
	else
		detach(tab, e);
}

void
asynqi_ctab_clear(ctab *tab)
{
	for (size_t i = 0; i < tab->map.nbuckets; i++)
		while (tab->map.buckets[i] != NULL)
			forget(tab, (tcall *)tab->map.buckets[i]);
	asynqi_kmap_fini(&tab->map);
}

void
asynqi_ctab_dirty(ctab *tab, const void *key, size_t klen)
{
	tcall *e = (tcall *)asynqi_kmap_find(&tab->map, key, klen,
	    asynqi_kmap_hash(key, klen));
	if (e != NULL)
		forget(tab, e);
}

static asynq_status
tcall_done(asynq_future *f, void *arg)
{
	tcall *e = arg;
	if (e->arg_free != NULL)
		e->arg_free(e->arg);
	e->arg = NULL;
	e->arg_free = NULL;
	ctab *tab = e->tab;
	if (tab == NULL) {
		detached_remove(e);
		tcall_free(e);
		return ASYNQ_OK;
	}
	tab->stats.in_flight--;
	if (tab->keep_ok && asynq_future_status(f) == ASYNQ_OK) {
		e->state = TCALL_CACHED;
		e->done_at = asynq_now_ns();
		lru_push_front(tab, e);
		tab->stats.size++;
		while (
		    tab->max_cached != 0 && tab->stats.size > tab->max_cached) {
			tab->stats.evictions++;
			drop_cached(tab, tab->lru_tail);
		}
		return ASYNQ_OK;
	}
	asynqi_kmap_remove(&tab->map, &e->node);
	tcall_free(e);
	return ASYNQ_OK;
}

static asynq_status
run_with_context(asynq_task *t, tcall *e)
{
	asynq_status st = asynq_context_enter(e->ctx);
	if (st == ASYNQ_FAILED_PRECONDITION)
		return asynq_fail(t, st, "%s: context %p is already entered",
		    asynq_task_name(t), (void *)e->ctx);
	if (st == ASYNQ_OK)
		st = e->fn(t, e->arg);
	else
		st = asynq_fail(t, st, "%s: context %p failed to resume",
		    asynq_task_name(t), (void *)e->ctx);
	asynq_status ex = asynq_context_exit(e->ctx);
	if (st == ASYNQ_OK && ex != ASYNQ_OK)
		st = asynq_fail(t, ex, "%s: context %p failed to exit",
		    asynq_task_name(t), (void *)e->ctx);
	return st;
}

static asynq_status
tcall_task(asynq_task *t, void *arg)
{
	tcall *e = arg;
	if (e->abandoned)
		return asynq_fail(t, ASYNQ_CANCELLED,
		    "%s abandoned by asynq_thread_fini before it ran",
		    asynq_task_name(t));
	e->started = true;
	switch (e->kind) {
	case TCALL_CTX:
		return run_with_context(t, e);
	case TCALL_RETRY:
		return asynqi_retry_run(t, e);
	default:
		break;
	}
	if (asynq_scoped_push(&e->marker, e) != ASYNQ_OK)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
		    "%s: out of memory", asynq_task_name(t));
	asynq_status st = e->fn(t, e->arg);
	(void)asynq_scoped_pop(&e->marker);
	return st;
}

asynq_future *
asynqi_ctab_call(ctab *tab, const void *key, size_t klen, const tcall *proto,
    asynq_task_fn fn, void *arg, void (*arg_free)(void *), const char *name,
    const char *file, int line)
{
	uint64_t hash = 0;
	bool reentrant = false;
	if (tab != NULL) {
		hash = asynqi_kmap_hash(key, klen);
		tcall *e =
		    (tcall *)asynqi_kmap_find(&tab->map, key, klen, hash);
		if (e != NULL && e->state == TCALL_CACHED && tab->ttl_ns != 0 &&
		    asynq_now_ns() - e->done_at >= tab->ttl_ns) {
			tab->stats.evictions++;
			drop_cached(tab, e);
			e = NULL;
		}
		if (e != NULL && e->state == TCALL_CACHED) {
			lru_unlink(tab, e);
			lru_push_front(tab, e);
		} else if (e != NULL && asynq_scoped_get(&e->marker) == e) {
			reentrant = true;
			e = NULL;
		}
		if (e != NULL) {
			tab->stats.hits++;
			if (arg_free != NULL)
				arg_free(arg);
			return asynq_future_hold(e->fut);
		}
	}
	tcall *e = calloc(1, sizeof(*e) + klen);
	if (e == NULL)
		return NULL;
	if (proto != NULL) {
		e->kind = proto->kind;
		e->ctx = proto->ctx;
		e->retry = proto->retry;
	}
	e->fn = fn;
	e->arg = arg;
	e->arg_free = arg_free;
	e->marker.name = "asynq tool call";
	if (klen > 0)
		memcpy(e->key, key, klen);
	e->node.hash = hash;
	e->node.klen = klen;
	e->node.key = e->key;
	asynq_future *f = asynq_spawn_at(tcall_task, e, name, file, line);
	if (f == NULL) {
		free(e);
		return NULL;
	}
	if (asynq_future_task(f) == NULL) {
		/* Refused (the depth limit): the error future is the result. */
		free(e);
		if (arg_free != NULL)
			arg_free(arg);
		return f;
	}
	if (asynq_future_on_done(f, tcall_done, e) != ASYNQ_OK) {
		asynq_future_rele(f);
		free(e);
		return NULL;
	}
	e->fut = asynq_future_hold(f);
	if (tab != NULL)
		tab->stats.misses++;
	if (tab != NULL && !reentrant &&
	    asynqi_kmap_insert(&tab->map, &e->node)) {
		e->tab = tab;
		tab->stats.in_flight++;
	} else {
		detached_push(e);
	}
	return f;
}

/* ---- Per-thread tables -------------------------------------------------- */

static void *
tools_make(void)
{
	tools_tls *t = calloc(1, sizeof(*t));
	if (t != NULL)
		asynqi_ctab_init(&t->dedup, false, 0, 0);
	return t;
}

ctab *
asynqi_tools_dedup(void)
{
	tools_tls *t = tools_state();
	return t != NULL ? &t->dedup : NULL;
}

static memo_obj *
memo_find(tools_tls *t, const void *obj)
{
	return (memo_obj *)asynqi_kmap_find(&t->objs, &obj, sizeof(obj),
	    asynqi_kmap_hash(&obj, sizeof(obj)));
}

ctab *
asynqi_tools_memo(const void *obj, bool make)
{
	tools_tls *t = tools_state();
	if (t == NULL)
		return NULL;
	memo_obj *mo = memo_find(t, obj);
	if (mo != NULL || !make)
		return mo != NULL ? &mo->tab : NULL;
	mo = calloc(1, sizeof(*mo));
	if (mo == NULL)
		return NULL;
	asynqi_ctab_init(&mo->tab, true, 0, 0);
	mo->obj = obj;
	mo->node.hash = asynqi_kmap_hash(&obj, sizeof(obj));
	mo->node.klen = sizeof(obj);
	mo->node.key = (const unsigned char *)&mo->obj;
	if (!asynqi_kmap_insert(&t->objs, &mo->node)) {
		free(mo);
		return NULL;
	}
	return &mo->tab;
}

static void
memo_obj_free(tools_tls *t, memo_obj *mo)
{
	t->memo_stats.hits += mo->tab.stats.hits;
	t->memo_stats.misses += mo->tab.stats.misses;
	t->memo_stats.evictions += mo->tab.stats.evictions;
	asynqi_ctab_clear(&mo->tab);
	asynqi_kmap_remove(&t->objs, &mo->node);
	free(mo);
	if (t->objs.count == 0)
		asynqi_kmap_fini(&t->objs);
}

void
asynqi_tools_memo_forget(const void *obj)
{
	tools_tls *t = tools_state();
	memo_obj *mo = t != NULL ? memo_find(t, obj) : NULL;
	if (mo != NULL)
		memo_obj_free(t, mo);
}

size_t
asynqi_tools_memo_objects(void)
{
	tools_tls *t = tools_state();
	return t != NULL ? t->objs.count : 0;
}

asynq_cache_stats *
asynqi_tools_memo_stats(void)
{
	static const asynq_cache_stats none;
	tools_tls *t = tools_state();
	if (t == NULL)
		return (asynq_cache_stats *)&none;
	asynq_cache_stats *sum = &t->memo_sum;
	*sum = t->memo_stats;
	sum->size = 0;
	sum->in_flight = 0;
	for (size_t i = 0; i < t->objs.nbuckets; i++) {
		for (kmap_node *n = t->objs.buckets[i]; n != NULL;
		     n = n->next) {
			const memo_obj *mo = (const memo_obj *)n;
			sum->hits += mo->tab.stats.hits;
			sum->misses += mo->tab.stats.misses;
			sum->evictions += mo->tab.stats.evictions;
			sum->size += mo->tab.stats.size;
			sum->in_flight += mo->tab.stats.in_flight;
		}
	}
	return sum;
}

/* Before the scheduler drains: the tables let go of their entries, and
 * tasks that never started are started so that they fail at once (the
 * drain runs them and their callbacks free their records). */
static void
tools_stop(void *p)
{
	tools_tls *t = p;
	asynqi_ctab_clear(&t->dedup);
	while (t->objs.count > 0) {
		for (size_t i = 0; i < t->objs.nbuckets; i++) {
			if (t->objs.buckets[i] != NULL) {
				memo_obj_free(t,
				    (memo_obj *)t->objs.buckets[i]);
				break;
			}
		}
	}
	asynqi_kmap_fini(&t->objs);
	for (tcall *e = t->detached; e != NULL; e = e->next) {
		if (!e->started && !asynq_future_done(e->fut)) {
			e->abandoned = true;
			asynq_task_start(e->fut);
		}
	}
}

static void
tools_free(void *p)
{
	tools_tls *t = p;
	asynqi_ctab_clear(&t->dedup);
	asynqi_kmap_fini(&t->objs);
	free(t);
}
