/* SPDX-License-Identifier: MIT */
/*
 * Request caches (DataLoader's per-request cache, Haxl's request cache):
 * within one request's tree of tasks, the reply of each distinct call to a
 * method that uses the cache, so that a second identical call costs a
 * decode instead of a call. A server handler's cache lives in its task's
 * slot (server.c) and is made on first use; asynq_rpc_with_cache scopes
 * one by hand.
 *
 * Design notes:
 * - Everything here runs on one scheduler thread: a tree of tasks never
 *   leaves its worker, and the futures of its calls complete there.
 * - An entry is keyed by (channel id, method, metadata by content, packed
 *   request). It is PENDING while the first call is in flight: later
 *   identical calls get promises, kept in the entry, and the first call's
 *   on-done callback (which runs when it completes, before any caller can
 *   take its value) packs the reply into the entry, fulfils every promise
 *   with a copy decoded from those bytes and makes the entry DONE. An error
 *   reaches the promises as copies; the entry then stays (cache_errors) or
 *   goes.
 * - References: the scope (or the handler's slot) holds one on the cache,
 *   and each PENDING entry one for its callback, so a call that outlives
 *   its handler still finds its entry. An entry cleared or evicted while
 *   PENDING leaves the table at once (the next identical call goes out)
 *   and is freed by its callback.
 * - Bounds: entries in the table and their bytes (request, reply, message)
 *   are capped; the oldest DONE entries go first (FIFO); when only PENDING
 *   ones are left a new call is simply not remembered.
 */
#include <stdlib.h>
#include <string.h>

#include "asynq/rpc.h"
#include "framework/core/platform.h"
#include "internal.h"

#define DEFAULT_MAX_ENTRIES 1000
#define DEFAULT_MAX_BYTES (1u << 20)

enum { RC_PENDING, RC_DONE };

typedef struct rc_entry rc_entry;

struct rc_entry {
	asynq_rpc_cache *c;
	rc_entry *hnext;         /* hash chain */
	rc_entry *older, *newer; /* age list, while in the table */
	bool in_table;
	int state;
	bool keep_errors;
	uint64_t hash;
	uint64_t chan;
	const asynq_rpc_method_desc *m;
	asynqi_md_node *md; /* held */
	uint8_t *key;
	size_t klen;
	size_t bytes; /* what it counts against max_bytes */
	/* DONE: a reply's bytes, or an error. */
	asynq_status st;
	char *msg;
	uint8_t *val;
	size_t vlen;
	/* PENDING: promises of the calls waiting for the first. */
	asynq_future **waiters;
	size_t n_waiters, cap_waiters;
};

struct asynq_rpc_cache {
	int refs;
	rc_entry **tab;
	size_t mask, n;
	rc_entry *oldest, *newest;
	size_t bytes, max_entries, max_bytes;
};

static const asynq_scoped cache_key =
    ASYNQ_SCOPED_INIT("asynq.rpc.request_cache", 0);

/* ---- Cache and entries --------------------------------------------------- */

static asynq_rpc_cache *
cache_alloc(const asynq_rpc_cache_cfg *cfg)
{
	asynq_rpc_cache *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	c->mask = 15;
	c->tab = calloc(c->mask + 1, sizeof(*c->tab));
	if (c->tab == NULL) {
		free(c);
		return NULL;
	}
	c->refs = 1;
	c->max_entries = cfg != NULL && cfg->max_entries != 0
	    ? cfg->max_entries
	    : DEFAULT_MAX_ENTRIES;
	c->max_bytes = cfg != NULL && cfg->max_bytes != 0 ? cfg->max_bytes
	                                                  : DEFAULT_MAX_BYTES;
	return c;
}

static void
entry_free(rc_entry *e)
{
	asynqi_md_rele(e->md);
	free(e->key);
	free(e->msg);
	free(e->val);
	free(e->waiters);
	free(e);
}

/* Takes e out of the table and the age list (it may live on, PENDING). */
static void
entry_unlink(asynq_rpc_cache *c, rc_entry *e)
{
	if (!e->in_table)
		return;
	rc_entry **pp = &c->tab[e->hash & c->mask];
	while (*pp != e)
		pp = &(*pp)->hnext;
	*pp = e->hnext;
	if (e->older != NULL)
		e->older->newer = e->newer;
	else
		c->oldest = e->newer;
	if (e->newer != NULL)
		e->newer->older = e->older;
	else
		c->newest = e->older;
	e->hnext = e->older = e->newer = NULL;
	e->in_table = false;
	c->n--;
	c->bytes -= e->bytes;
}

/* Forgets e: a DONE entry is freed, a PENDING one by its callback. */
static void
entry_drop(asynq_rpc_cache *c, rc_entry *e)
{
	entry_unlink(c, e);
	if (e->state == RC_DONE)
		entry_free(e);
}

void
asynqi_rpc_cache_rele(asynq_rpc_cache *c)
{
	if (c == NULL)
		return;
	ASYNQ_ASSERT(c->refs > 0);
	if (--c->refs > 0)
		return;
	/* No PENDING entry is left: each held a reference. */
	while (c->oldest != NULL)
		entry_drop(c, c->oldest);
	free(c->tab);
	free(c);
}

/* Makes room in c for `entries` more entries and `bytes` more bytes,
 * evicting the oldest answers other than keep; false if only calls in
 * flight (or keep) are left to evict. */
static bool
cache_room(asynq_rpc_cache *c, size_t entries, size_t bytes,
    const rc_entry *keep)
{
	rc_entry *e = c->oldest;
	while (c->n + entries > c->max_entries ||
	    c->bytes + bytes > c->max_bytes) {
		while (e != NULL && (e->state != RC_DONE || e == keep))
			e = e->newer;
		if (e == NULL)
			return false;
		rc_entry *next = e->newer;
		entry_drop(c, e);
		e = next;
	}
	return true;
}

static void
cache_grow(asynq_rpc_cache *c)
{
	size_t cap = (c->mask + 1) * 2;
	rc_entry **t = calloc(cap, sizeof(*t));
	if (t == NULL)
		return; /* longer chains; still correct */
	for (size_t i = 0; i <= c->mask; i++) {
		while (c->tab[i] != NULL) {
			rc_entry *e = c->tab[i];
			c->tab[i] = e->hnext;
			e->hnext = t[e->hash & (cap - 1)];
			t[e->hash & (cap - 1)] = e;
		}
	}
	free(c->tab);
	c->tab = t;
	c->mask = cap - 1;
}

static void
entry_link(asynq_rpc_cache *c, rc_entry *e)
{
	if (c->n + 1 > (c->mask + 1) * 2)
		cache_grow(c);
	e->hnext = c->tab[e->hash & c->mask];
	c->tab[e->hash & c->mask] = e;
	e->older = c->newest;
	e->newer = NULL;
	if (c->newest != NULL)
		c->newest->newer = e;
	else
		c->oldest = e;
	c->newest = e;
	e->in_table = true;
	c->n++;
	c->bytes += e->bytes;
}

/* ---- Keys ---------------------------------------------------------------- */

/* A call's key: its request packed into a malloc'd buffer. */
typedef struct rc_key {
	uint64_t chan;
	const asynq_rpc_method_desc *m;
	asynqi_md_node *md; /* borrowed */
	uint8_t *p;
	size_t len;
	uint64_t hash;
} rc_key;

static asynq_status
key_make(rc_key *k, const asynq_rpc_channel *ch, const asynq_rpc_method_desc *m,
    const ProtobufCMessage *req)
{
	k->chan = asynqi_rpc_channel_id(ch);
	k->m = m;
	k->md = asynq_scoped_get(&asynqi_md_key);
	k->len = protobuf_c_message_get_packed_size(req);
	k->p = malloc(k->len != 0 ? k->len : 1);
	if (k->p == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	protobuf_c_message_pack(req, k->p);
	k->hash = asynqi_hash_bytes(k->p, k->len,
	    (k->chan * 0x9e3779b97f4a7c15u) ^
	        ((uint64_t)(uintptr_t)m * 0xff51afd7ed558ccdu) ^
	        asynqi_md_hash(k->md));
	return ASYNQ_OK;
}

static rc_entry *
cache_find(const asynq_rpc_cache *c, const rc_key *k)
{
	for (rc_entry *e = c->tab[k->hash & c->mask]; e != NULL; e = e->hnext)
		if (e->hash == k->hash && e->chan == k->chan && e->m == k->m &&
		    e->klen == k->len && memcmp(e->key, k->p, k->len) == 0 &&
		    asynqi_md_equal(e->md, k->md))
			return e;
	return NULL;
}

/* A new entry for k, taking its bytes. NULL without memory (k kept). */
static rc_entry *
entry_new(asynq_rpc_cache *c, rc_key *k, bool keep_errors)
{
	rc_entry *e = calloc(1, sizeof(*e));
	if (e == NULL)
		return NULL;
	e->c = c;
	e->hash = k->hash;
	e->chan = k->chan;
	e->m = k->m;
	e->md = asynqi_md_hold(k->md);
	e->key = k->p;
	e->klen = k->len;
	e->keep_errors = keep_errors;
	e->bytes = sizeof(*e) + k->len;
	k->p = NULL;
	return e;
}

/* ---- Answers ------------------------------------------------------------- */

/* A copy of e's answer for one more caller. */
static asynq_future *
entry_answer(const rc_entry *e)
{
	if (e->st != ASYNQ_OK)
		return asynq_const_error(asynq_error_alloc(e->st, "%s",
		    e->msg != NULL ? e->msg : ""));
	ProtobufCMessage *out =
	    protobuf_c_message_unpack(e->m->output, NULL, e->vlen, e->val);
	if (out == NULL)
		return asynq_const_error(
		    asynq_error_alloc(ASYNQ_RESOURCE_EXHAUSTED,
		        "rpc %s: out of memory copying a cached reply",
		        e->m->full_name));
	return asynq_const_ptr(out, asynqi_rpc_free_msg);
}

/* Completes promise p as e's answer. */
static void
promise_answer(asynq_future *p, const rc_entry *e)
{
	asynq_future *a = entry_answer(e);
	if (a == NULL) {
		(void)asynq_promise_set_error(p,
		    asynq_error_alloc(ASYNQ_RESOURCE_EXHAUSTED,
		        "rpc %s: out of memory", e->m->full_name));
		return;
	}
	if (asynq_future_status(a) != ASYNQ_OK) {
		(void)asynq_promise_set_error(p,
		    asynq_error_hold(asynq_future_error(a)));
	} else {
		void (*free_fn)(void *) = NULL;
		void *v = asynq_future_take_owned(a, &free_fn);
		(void)asynq_promise_set_ptr(p, v, free_fn);
	}
	asynq_future_rele(a);
}

/* The first call of e completed: e becomes its answer. */
static asynq_status
entry_done(asynq_future *f, void *arg)
{
	rc_entry *e = arg;
	asynq_rpc_cache *c = e->c;
	ASYNQ_ASSERT(e->state == RC_PENDING);
	e->st = asynq_future_status(f);
	if (e->st == ASYNQ_OK) {
		const ProtobufCMessage *msg = asynq_future_ptr(f);
		e->vlen =
		    msg != NULL ? protobuf_c_message_get_packed_size(msg) : 0;
		e->val = malloc(e->vlen != 0 ? e->vlen : 1);
		if (msg == NULL || e->val == NULL) {
			e->st = ASYNQ_RESOURCE_EXHAUSTED;
			e->msg = strdup("out of memory keeping a reply");
		} else {
			protobuf_c_message_pack(msg, e->val);
		}
	} else {
		asynq_error *err = asynq_future_error(f);
		e->msg = strdup(err != NULL ? asynq_error_message(err)
		                            : asynq_strerror(e->st));
	}
	e->state = RC_DONE;
	for (size_t i = 0; i < e->n_waiters; i++) {
		promise_answer(e->waiters[i], e);
		asynq_future_rele(e->waiters[i]);
	}
	e->n_waiters = 0;
	free(e->waiters);
	e->waiters = NULL;
	if (e->in_table) {
		/* Its answer now counts too; an error goes unless kept. */
		size_t more = e->vlen + (e->msg != NULL ? strlen(e->msg) : 0);
		if (e->st != ASYNQ_OK && !e->keep_errors) {
			entry_drop(c, e);
		} else if (!cache_room(c, 0, more, e)) {
			entry_drop(c, e);
		} else {
			e->bytes += more;
			c->bytes += more;
		}
	} else {
		entry_free(e); /* cleared or evicted while in flight */
	}
	asynqi_rpc_cache_rele(c);
	return ASYNQ_OK;
}

/* ---- Calls --------------------------------------------------------------- */

/* The current request cache, made now for a handler that has none yet;
 * NULL if there is none here (or no memory for one). */
static asynq_rpc_cache *
cache_here(bool make)
{
	asynq_rpc_cache *c = asynq_scoped_get(&cache_key);
	if (c != NULL)
		return c;
	const asynq_rpc_cache_cfg *cfg = NULL;
	asynq_rpc_cache **slot = asynqi_rpc_handler_cache(&cfg);
	if (slot == NULL)
		return NULL;
	if (*slot == NULL && make)
		*slot = cache_alloc(cfg);
	return *slot;
}

asynq_future *
asynqi_rpc_cache_call(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m,
    const ProtobufCMessage *req)
{
	bool keep_errors = false;
	asynq_rpc_cache *c = cache_here(true);
	if (c == NULL || !asynqi_rpc_channel_caches(ch, m, &keep_errors))
		return asynqi_rpc_call_now(ch, m, req);
	rc_key k;
	if (key_make(&k, ch, m, req) != ASYNQ_OK)
		return asynqi_rpc_call_now(ch, m, req);
	rc_entry *e = cache_find(c, &k);
	if (e != NULL) {
		free(k.p);
		asynqi_rpc_count_cached(ch);
		if (e->state == RC_DONE)
			return entry_answer(e);
		if (e->n_waiters == e->cap_waiters) {
			size_t cap =
			    e->cap_waiters != 0 ? e->cap_waiters * 2 : 4;
			asynq_future **w =
			    realloc(e->waiters, cap * sizeof(*w));
			if (w == NULL)
				return NULL;
			e->waiters = w;
			e->cap_waiters = cap;
		}
		asynq_future *p = asynq_promise_alloc();
		if (p == NULL)
			return NULL;
		e->waiters[e->n_waiters++] = asynq_future_hold(p);
		return p;
	}
	asynq_future *f = asynqi_rpc_call_now(ch, m, req);
	/* A call that failed before it was sent is not remembered. */
	if (f == NULL || asynq_future_done(f) ||
	    !cache_room(c, 1, sizeof(*e) + k.len, NULL) ||
	    (e = entry_new(c, &k, keep_errors)) == NULL) {
		free(k.p);
		return f;
	}
	e->state = RC_PENDING;
	c->refs++;
	if (asynq_future_on_done(f, entry_done, e) != ASYNQ_OK) {
		c->refs--;
		entry_free(e);
		return f;
	}
	entry_link(c, e);
	return f;
}

/* ---- Scopes, prime and clear --------------------------------------------- */

asynq_status
asynq_rpc_with_cache(const asynq_rpc_cache_cfg *cfg,
    asynq_status (*fn)(void *arg), void *arg)
{
	asynq_rpc_cache *c = cache_alloc(cfg);
	if (c == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq_status st = asynq_with_scoped(&cache_key, c, fn, arg);
	asynqi_rpc_cache_rele(c);
	return st;
}

/* The current cache for prime and clear, or why there is none. */
static asynq_status
cache_for(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m,
    const ProtobufCMessage *req, asynq_rpc_cache **cp)
{
	if (ch == NULL || m == NULL || req == NULL ||
	    req->descriptor != m->input)
		return ASYNQ_INVALID_ARGUMENT;
	bool errors;
	if (!asynqi_rpc_channel_caches(ch, m, &errors))
		return ASYNQ_FAILED_PRECONDITION;
	*cp = cache_here(true);
	return *cp != NULL ? ASYNQ_OK : ASYNQ_FAILED_PRECONDITION;
}

asynq_status
asynq_rpc_cache_prime(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m,
    const ProtobufCMessage *req, const ProtobufCMessage *reply)
{
	asynq_rpc_cache *c;
	asynq_status st = cache_for(ch, m, req, &c);
	if (st != ASYNQ_OK)
		return st;
	if (reply == NULL || reply->descriptor != m->output)
		return ASYNQ_INVALID_ARGUMENT;
	rc_key k;
	if (key_make(&k, ch, m, req) != ASYNQ_OK)
		return ASYNQ_RESOURCE_EXHAUSTED;
	if (cache_find(c, &k) != NULL) {
		free(k.p);
		return ASYNQ_OK;
	}
	size_t vlen = protobuf_c_message_get_packed_size(reply);
	rc_entry *e = NULL;
	if (!cache_room(c, 1, sizeof(*e) + k.len + vlen, NULL) ||
	    (e = entry_new(c, &k, false)) == NULL ||
	    (e->val = malloc(vlen != 0 ? vlen : 1)) == NULL) {
		free(k.p);
		if (e != NULL)
			entry_free(e);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	protobuf_c_message_pack(reply, e->val);
	e->vlen = vlen;
	e->st = ASYNQ_OK;
	e->state = RC_DONE;
	e->bytes += vlen;
	entry_link(c, e);
	return ASYNQ_OK;
}

asynq_status
asynq_rpc_cache_clear(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m,
    const ProtobufCMessage *req)
{
	asynq_rpc_cache *c;
	asynq_status st = cache_for(ch, m, req, &c);
	if (st != ASYNQ_OK)
		return st;
	rc_key k;
	if (key_make(&k, ch, m, req) != ASYNQ_OK)
		return ASYNQ_RESOURCE_EXHAUSTED;
	rc_entry *e = cache_find(c, &k);
	free(k.p);
	if (e != NULL)
		entry_drop(c, e);
	return ASYNQ_OK;
}

asynq_status
asynq_rpc_cache_clear_all(void)
{
	asynq_rpc_cache *c = cache_here(false);
	if (c == NULL) {
		/* A handler that has not used its cache yet has nothing. */
		const asynq_rpc_cache_cfg *cfg;
		return asynqi_rpc_handler_cache(&cfg) != NULL
		    ? ASYNQ_OK
		    : ASYNQ_FAILED_PRECONDITION;
	}
	while (c->oldest != NULL)
		entry_drop(c, c->oldest);
	return ASYNQ_OK;
}
