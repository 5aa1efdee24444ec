/* SPDX-License-Identifier: MIT */
/*
 * The cache service: an in-memory hash table of byte strings with TTLs and
 * an LRU list, served by whole-batch handlers (see cache.h).
 *
 * Design notes: one table serves every worker, so it has one mutex; a
 * whole-batch handler takes it once for all the calls of its request, which
 * is the point of batching here. Entries live in a chained hash table
 * (power-of-two buckets, doubled when the load passes 1) and in an LRU list,
 * most recent first. Expiry is lazy: a Get that meets an expired entry drops
 * it; eviction for the memory cap takes from the LRU tail, expired or not.
 * An entry's size is its key, its value and the entry struct. Replies copy
 * values out under the lock, so nothing outside it points into the table.
 * Incr keeps counters as decimal text (memcached's rule), so Get and Set see
 * them as ordinary values. With an exec log, the records of one request's
 * Incr calls are appended in one write(2) while the lock is held, before any
 * of them is answered: a call whose reply left the server is in the log,
 * and an increment the log lacks died with the process before anyone saw
 * it (the table is in memory only).
 */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "services/cache/cache.h"

typedef struct entry entry;
struct entry {
	entry *hnext;       /* bucket chain */
	entry *prev, *next; /* LRU list, most recent first */
	uint64_t hash;
	uint64_t expires_ns; /* 0: never */
	size_t klen, vlen;
	uint8_t *val;
	uint8_t key[]; /* klen bytes */
};

_Static_assert(sizeof(entry) <= CACHE_ENTRY_OVERHEAD,
    "an entry must fit its accounted overhead");

struct cache_service {
	pthread_mutex_t mu;
	entry **buckets;
	size_t n_buckets; /* a power of two */
	entry *head, *tail;
	size_t max_bytes;
	cache_stats st;
	asynq_rpc_server *srv;
	bool srv_of_program; /* made by asynq_serve_add: not ours to free */
	asynq__cache__cache__asynq_binding binding;
	int exec_log; /* fd opened O_APPEND, or -1 */
};

static uint64_t
hash_bytes(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3u;
	return h;
}

static size_t
entry_bytes(const entry *e)
{
	return CACHE_ENTRY_OVERHEAD + e->klen + e->vlen;
}

static void
lru_unlink(cache_service *s, entry *e)
{
	if (e->prev != NULL)
		e->prev->next = e->next;
	else
		s->head = e->next;
	if (e->next != NULL)
		e->next->prev = e->prev;
	else
		s->tail = e->prev;
	e->prev = e->next = NULL;
}

static void
lru_push(cache_service *s, entry *e)
{
	e->prev = NULL;
	e->next = s->head;
	if (s->head != NULL)
		s->head->prev = e;
	s->head = e;
	if (s->tail == NULL)
		s->tail = e;
}

static entry **
slot_of(cache_service *s, const uint8_t *key, size_t klen, uint64_t h)
{
	entry **pp = &s->buckets[h & (s->n_buckets - 1)];
	for (; *pp != NULL; pp = &(*pp)->hnext)
		if ((*pp)->hash == h && (*pp)->klen == klen &&
		    memcmp((*pp)->key, key, klen) == 0)
			break;
	return pp;
}

/* Unlinks and frees the entry *pp points to. */
static void
entry_drop(cache_service *s, entry **pp)
{
	entry *e = *pp;
	*pp = e->hnext;
	lru_unlink(s, e);
	s->st.entries--;
	s->st.bytes -= entry_bytes(e);
	free(e->val);
	free(e);
}

static void
evict_to(cache_service *s, size_t max)
{
	while (s->st.bytes > max && s->tail != NULL) {
		entry *e = s->tail;
		entry_drop(s, slot_of(s, e->key, e->klen, e->hash));
		s->st.evictions++;
	}
}

/* Doubles the buckets; on failure the table stays as it was. */
static void
grow(cache_service *s)
{
	size_t n = s->n_buckets * 2;
	entry **b = calloc(n, sizeof(*b));
	if (b == NULL)
		return;
	for (size_t i = 0; i < s->n_buckets; i++) {
		entry *e = s->buckets[i], *next;
		for (; e != NULL; e = next) {
			next = e->hnext;
			e->hnext = b[e->hash & (n - 1)];
			b[e->hash & (n - 1)] = e;
		}
	}
	free(s->buckets);
	s->buckets = b;
	s->n_buckets = n;
}

static asynq_status
cache_get(cache_service *s, const ProtobufCBinaryData *k, uint64_t now,
    Asynq__Cache__Value *out)
{
	entry **pp = slot_of(s, k->data, k->len, hash_bytes(k->data, k->len));
	entry *e = *pp;
	if (e != NULL && e->expires_ns != 0 && e->expires_ns <= now) {
		entry_drop(s, pp);
		s->st.expired++;
		e = NULL;
	}
	if (e == NULL) {
		s->st.misses++;
		return ASYNQ_OK;
	}
	uint8_t *copy = malloc(e->vlen != 0 ? e->vlen : 1);
	if (copy == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	memcpy(copy, e->val, e->vlen);
	lru_unlink(s, e);
	lru_push(s, e);
	s->st.hits++;
	out->found = true;
	out->value.data = copy;
	out->value.len = e->vlen;
	return ASYNQ_OK;
}

static asynq_status
cache_set(cache_service *s, const Asynq__Cache__SetRequest *r, uint64_t now)
{
	size_t size = CACHE_ENTRY_OVERHEAD + r->key.len + r->value.len;
	if (size > s->max_bytes)
		return ASYNQ_RESOURCE_EXHAUSTED;
	entry *e = malloc(sizeof(*e) + r->key.len);
	uint8_t *val = malloc(r->value.len != 0 ? r->value.len : 1);
	if (e == NULL || val == NULL) {
		free(e);
		free(val);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	uint64_t h = hash_bytes(r->key.data, r->key.len);
	entry **pp = slot_of(s, r->key.data, r->key.len, h);
	if (*pp != NULL)
		entry_drop(s, pp);
	memset(e, 0, sizeof(*e));
	e->hash = h;
	e->klen = r->key.len;
	e->vlen = r->value.len;
	e->val = val;
	e->expires_ns =
	    r->ttl_ms != 0 ? now + (uint64_t)r->ttl_ms * 1000000u : 0;
	if (r->key.len != 0)
		memcpy(e->key, r->key.data, r->key.len);
	if (r->value.len != 0)
		memcpy(val, r->value.data, r->value.len);
	evict_to(s, s->max_bytes - size);
	pp = &s->buckets[h & (s->n_buckets - 1)];
	e->hnext = *pp;
	*pp = e;
	lru_push(s, e);
	s->st.entries++;
	s->st.bytes += size;
	s->st.sets++;
	if (s->st.entries > s->n_buckets)
		grow(s);
	return ASYNQ_OK;
}

/* Parses a counter's decimal text; false if it is not one. */
static bool
counter_parse(const uint8_t *p, size_t n, int64_t *out)
{
	char buf[24];
	if (n == 0 || n >= sizeof(buf))
		return false;
	memcpy(buf, p, n);
	buf[n] = '\0';
	char *end;
	errno = 0;
	long long v = strtoll(buf, &end, 10);
	if (errno != 0 || *end != '\0' ||
	    !(buf[0] == '-' || (buf[0] >= '0' && buf[0] <= '9')))
		return false;
	*out = (int64_t)v;
	return true;
}

static asynq_status
cache_incr(cache_service *s, const Asynq__Cache__IncrRequest *r, uint64_t now,
    int64_t *value, const char **why)
{
	entry **pp = slot_of(s, r->key.data, r->key.len,
	    hash_bytes(r->key.data, r->key.len));
	entry *e = *pp;
	if (e != NULL && e->expires_ns != 0 && e->expires_ns <= now) {
		entry_drop(s, pp);
		s->st.expired++;
		e = NULL;
	}
	int64_t old = 0;
	if (e != NULL && !counter_parse(e->val, e->vlen, &old)) {
		*why = "the value at the key is not a decimal number";
		return ASYNQ_FAILED_PRECONDITION;
	}
	if (__builtin_add_overflow(old, r->delta, value)) {
		*why = "the counter would overflow 64 bits";
		return ASYNQ_OUT_OF_RANGE;
	}
	char text[24];
	int tlen = snprintf(text, sizeof(text), "%" PRId64, *value);
	if (e == NULL) {
		/* A new counter is a Set of its text, with no TTL. */
		Asynq__Cache__SetRequest set = ASYNQ__CACHE__SET_REQUEST__INIT;
		set.key = r->key;
		set.value.data = (uint8_t *)text;
		set.value.len = (size_t)tlen;
		asynq_status st = cache_set(s, &set, now);
		if (st != ASYNQ_OK)
			*why = "no room for the counter";
		return st;
	}
	/* In place: the entry keeps its TTL; only its value's size changes. */
	uint8_t *val = malloc((size_t)tlen);
	if (val == NULL) {
		*why = "server out of memory";
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	memcpy(val, text, (size_t)tlen);
	s->st.bytes = s->st.bytes - e->vlen + (size_t)tlen;
	free(e->val);
	e->val = val;
	e->vlen = (size_t)tlen;
	lru_unlink(s, e);
	lru_push(s, e);
	return ASYNQ_OK;
}

static asynq_status
h_get(asynq_task *t, asynq__cache__cache__get__batch_call *calls, size_t n,
    void *ctx)
{
	(void)t;
	cache_service *s = ctx;
	uint64_t now = asynq_now_ns();
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < n; i++) {
		const Asynq__Cache__Key *k = calls[i].req;
		Asynq__Cache__Value *v = malloc(sizeof(*v));
		if (v == NULL) {
			calls[i].status = ASYNQ_RESOURCE_EXHAUSTED;
			continue;
		}
		asynq__cache__value__init(v);
		calls[i].status = cache_get(s, &k->key, now, v);
		if (calls[i].status != ASYNQ_OK) {
			free(v);
			continue;
		}
		calls[i].reply = v;
	}
	pthread_mutex_unlock(&s->mu);
	return ASYNQ_OK;
}

static asynq_status
h_set(asynq_task *t, asynq__cache__cache__set__batch_call *calls, size_t n,
    void *ctx)
{
	(void)t;
	cache_service *s = ctx;
	uint64_t now = asynq_now_ns();
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < n; i++) {
		Asynq__Cache__SetReply *r = malloc(sizeof(*r));
		if (r == NULL) {
			calls[i].status = ASYNQ_RESOURCE_EXHAUSTED;
			continue;
		}
		asynq__cache__set_reply__init(r);
		calls[i].status = cache_set(s, calls[i].req, now);
		if (calls[i].status != ASYNQ_OK) {
			calls[i].message = "entry larger than the cache";
			free(r);
			continue;
		}
		calls[i].reply = r;
	}
	pthread_mutex_unlock(&s->mu);
	return ASYNQ_OK;
}

static asynq_status
h_delete(asynq_task *t, asynq__cache__cache__delete__batch_call *calls,
    size_t n, void *ctx)
{
	(void)t;
	cache_service *s = ctx;
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < n; i++) {
		const Asynq__Cache__Key *k = calls[i].req;
		Asynq__Cache__DeleteReply *r = malloc(sizeof(*r));
		if (r == NULL) {
			calls[i].status = ASYNQ_RESOURCE_EXHAUSTED;
			continue;
		}
		asynq__cache__delete_reply__init(r);
		entry **pp = slot_of(s, k->key.data, k->key.len,
		    hash_bytes(k->key.data, k->key.len));
		if (*pp != NULL) {
			entry_drop(s, pp);
			r->deleted = true;
		}
		s->st.deletes++;
		calls[i].reply = r;
		calls[i].status = ASYNQ_OK;
	}
	pthread_mutex_unlock(&s->mu);
	return ASYNQ_OK;
}

/* Appends n records to the exec log; a failure is printed, since a log that
 * misses executions would make the test that reads it wrong. Under mu. */
static void
exec_log_write(cache_service *s, const cache_exec_record *recs, size_t n)
{
	const char *p = (const char *)recs;
	size_t left = n * sizeof(*recs);
	while (left > 0) {
		ssize_t k = write(s->exec_log, p, left);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0) {
			fprintf(stderr, "cache: exec log: write: %s\n",
			    strerror(errno));
			return;
		}
		p += k;
		left -= (size_t)k;
	}
}

static asynq_status
h_incr(asynq_task *t, asynq__cache__cache__incr__batch_call *calls, size_t n,
    void *ctx)
{
	(void)t;
	cache_service *s = ctx;
	uint64_t now = asynq_now_ns();
	cache_exec_record *recs = NULL;
	size_t n_recs = 0;
	if (s->exec_log >= 0 && (recs = malloc(n * sizeof(*recs))) == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED; /* runs none of them */
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < n; i++) {
		const Asynq__Cache__IncrRequest *r = calls[i].req;
		Asynq__Cache__IncrReply *out = malloc(sizeof(*out));
		if (out == NULL) {
			calls[i].status = ASYNQ_RESOURCE_EXHAUSTED;
			continue;
		}
		asynq__cache__incr_reply__init(out);
		calls[i].status =
		    cache_incr(s, r, now, &out->value, &calls[i].message);
		if (calls[i].status != ASYNQ_OK) {
			free(out);
			continue;
		}
		s->st.incrs++;
		if (recs != NULL)
			recs[n_recs++] = (cache_exec_record){ .token = r->token,
				.value = out->value };
		calls[i].reply = out;
	}
	if (n_recs > 0)
		exec_log_write(s, recs, n_recs);
	pthread_mutex_unlock(&s->mu);
	free(recs);
	return ASYNQ_OK;
}

static asynq_status
cache_add(asynq_rpc_server *srv, void *arg)
{
	static const asynq__cache__cache__asynq_handlers h = {
		.get = h_get,
		.set = h_set,
		.delete = h_delete,
		.incr = h_incr,
	};
	cache_service *s = arg;
	return asynq__cache__cache__asynq_serve(srv, &h, s, &s->binding);
}

asynq_status
cache_service_alloc(cache_service **sp, size_t max_bytes)
{
	cache_service *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	s->n_buckets = 1024;
	if ((s->buckets = calloc(s->n_buckets, sizeof(*s->buckets))) == NULL) {
		free(s);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	if (pthread_mutex_init(&s->mu, NULL) != 0) {
		free(s->buckets);
		free(s);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	s->max_bytes = max_bytes != 0 ? max_bytes : CACHE_DEFAULT_MAX_BYTES;
	s->exec_log = -1;
	*sp = s;
	return ASYNQ_OK;
}

void
cache_service_exec_log_set(cache_service *s, int fd)
{
	s->exec_log = fd;
}

asynq_status
cache_service_start(cache_service *s, asynq_runtime *rt, const char *url,
    const asynq_rpc_server_cfg *cfg)
{
	return svc_serve(&s->srv, rt, &asynq__cache__cache__asynq_desc,
	    cache_add, s, url, cfg);
}

asynq_status
cache_service_serve(cache_service *s, asynq_serve *sv)
{
	asynq_status rv = asynq_serve_add(sv, &asynq__cache__cache__asynq_desc,
	    cache_add, s, NULL, &s->srv);
	s->srv_of_program = rv == ASYNQ_OK;
	return rv;
}

void
cache_service_close(cache_service *s)
{
	if (s != NULL && s->srv != NULL)
		asynq_rpc_server_close(s->srv);
}

void
cache_service_free(cache_service *s)
{
	if (s == NULL)
		return;
	if (!s->srv_of_program)
		asynq_rpc_server_free(s->srv);
	for (entry *e = s->head, *next; e != NULL; e = next) {
		next = e->next;
		free(e->val);
		free(e);
	}
	free(s->buckets);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

void
cache_service_stats_get(cache_service *s, cache_stats *out)
{
	pthread_mutex_lock(&s->mu);
	*out = s->st;
	pthread_mutex_unlock(&s->mu);
}

void
cache_service_counters(void *arg, svc_counters *out)
{
	cache_service *s = arg;
	if (s->srv != NULL)
		svc_server_counters(s->srv, out);
}
