/* SPDX-License-Identifier: MIT */
/*
 * The dedup table (dedup.h).
 *
 * Design notes:
 * - A hash of entries by (client id, request id) and a list of answered
 *   entries, oldest first, from which the limits evict; running entries are
 *   never evicted (their number is bounded by the requests in flight).
 * - A copy of a running request parks a waiter on its entry; the reply of
 *   the original goes to every waiter. A copy of an answered one gets the
 *   stored reply. A resend (attempt > 0) of a request not in the table, or
 *   whose reply was too big to keep, may have run already: only its
 *   idempotent calls may run. Unless it is known to have been first sent
 *   to this server process (Request.first_instance) so recently that the
 *   table would still remember it had it arrived (nothing forgotten early
 *   since, and younger than the age limit): then it never arrived, and
 *   runs.
 * - Lock order: the table's mutex is a leaf; callbacks run without it.
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "asynq/core.h"
#include "dedup.h"

typedef struct dd_waiter dd_waiter;
struct dd_waiter {
	void *w;
	dd_waiter *next;
};

struct asynqi_dd_entry {
	uint64_t client_id, request_id;
	asynqi_dd_entry *hnext;       /* hash chain */
	asynqi_dd_entry *prev, *next; /* answered list, oldest first */
	bool done;
	bool has_reply;
	uint8_t *reply;
	size_t len;
	uint64_t done_ns;
	dd_waiter *waiters;
};

struct asynqi_dedup {
	pthread_mutex_t mu;
	asynqi_dd_entry **buckets;
	size_t mask;
	asynqi_dd_entry *oldest, *newest;
	size_t n_done, bytes;
	size_t max_entries, max_bytes;
	uint64_t max_age_ns;
	/* When an answered entry was last forgotten before its age (count or
	 * bytes over the limit); 0: never. */
	uint64_t early_evict_ns;
};

asynq_status
asynqi_dedup_alloc(asynqi_dedup **tp, size_t entries, uint32_t age_ms,
    size_t bytes)
{
	asynqi_dedup *t = calloc(1, sizeof(*t));
	if (t == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	size_t nb = 64;
	while (nb < entries && nb < ((size_t)1 << 24))
		nb *= 2;
	t->buckets = calloc(nb, sizeof(*t->buckets));
	if (t->buckets == NULL || pthread_mutex_init(&t->mu, NULL) != 0) {
		free(t->buckets);
		free(t);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	t->mask = nb - 1;
	t->max_entries = entries;
	t->max_bytes = bytes;
	t->max_age_ns = (uint64_t)age_ms * 1000000u;
	*tp = t;
	return ASYNQ_OK;
}

void
asynqi_dedup_free(asynqi_dedup *t)
{
	if (t == NULL)
		return;
	for (size_t i = 0; i <= t->mask; i++) {
		asynqi_dd_entry *e = t->buckets[i];
		while (e != NULL) {
			asynqi_dd_entry *next = e->hnext;
			free(e->reply);
			free(e);
			e = next;
		}
	}
	free(t->buckets);
	pthread_mutex_destroy(&t->mu);
	free(t);
}

static asynqi_dd_entry **
slot(asynqi_dedup *t, uint64_t client_id, uint64_t request_id)
{
	uint64_t h = client_id ^ (request_id * 0x9e3779b97f4a7c15u);
	h ^= h >> 31;
	h *= 0xbf58476d1ce4e5b9u;
	h ^= h >> 29;
	asynqi_dd_entry **p = &t->buckets[h & t->mask];
	while (*p != NULL &&
	    ((*p)->client_id != client_id || (*p)->request_id != request_id))
		p = &(*p)->hnext;
	return p;
}

/* Forgets the oldest answered entry. Under mu. */
static void
evict_oldest(asynqi_dedup *t)
{
	asynqi_dd_entry *e = t->oldest;
	asynqi_dd_entry **p = slot(t, e->client_id, e->request_id);
	*p = e->hnext;
	t->oldest = e->next;
	if (t->oldest != NULL)
		t->oldest->prev = NULL;
	else
		t->newest = NULL;
	t->n_done--;
	t->bytes -= e->len;
	free(e->reply);
	free(e);
}

/* Applies the limits. Under mu. */
static void
trim(asynqi_dedup *t)
{
	uint64_t now = asynq_now_ns();
	while (t->oldest != NULL &&
	    (t->n_done > t->max_entries || t->bytes > t->max_bytes ||
	        now - t->oldest->done_ns > t->max_age_ns)) {
		if (now - t->oldest->done_ns <= t->max_age_ns)
			t->early_evict_ns = now;
		evict_oldest(t);
	}
}

/* Under mu: whether a request first sent ago_ns ago, had it reached this
 * table, would still be in it (nothing forgotten since, nor by age). */
static bool
would_remember(const asynqi_dedup *t, uint64_t ago_ns)
{
	/* The clocks of client and server may run at slightly different
	 * rates: a second of margin. */
	uint64_t window = ago_ns + 1000000000u;
	if (ago_ns == ASYNQI_DD_UNKNOWN || window >= t->max_age_ns)
		return false;
	return t->early_evict_ns == 0 ||
	    asynq_now_ns() - t->early_evict_ns > window;
}

int
asynqi_dedup_check(asynqi_dedup *t, uint64_t client_id, uint64_t request_id,
    uint64_t resend_ago_ns, void *waiter, asynqi_dd_entry **entry,
    uint8_t **reply, size_t *len)
{
	int what = ASYNQI_DD_RUN;
	*entry = NULL;
	dd_waiter *wn = malloc(sizeof(*wn));
	pthread_mutex_lock(&t->mu);
	trim(t);
	asynqi_dd_entry **p = slot(t, client_id, request_id);
	asynqi_dd_entry *e = *p;
	if (e != NULL && !e->done) {
		if (wn != NULL) {
			wn->w = waiter;
			wn->next = e->waiters;
			e->waiters = wn;
			wn = NULL;
			what = ASYNQI_DD_PARKED;
		} else {
			what = ASYNQI_DD_FORGOTTEN; /* out of memory: be safe */
		}
	} else if (e != NULL && e->has_reply) {
		*reply = malloc(e->len != 0 ? e->len : 1);
		if (*reply != NULL) {
			memcpy(*reply, e->reply, e->len);
			*len = e->len;
			what = ASYNQI_DD_ANSWERED;
		} else {
			what = ASYNQI_DD_FORGOTTEN;
		}
	} else if (e != NULL) {
		what = ASYNQI_DD_FORGOTTEN; /* the reply was too big to keep */
	} else {
		e = calloc(1, sizeof(*e));
		if (e != NULL) {
			e->client_id = client_id;
			e->request_id = request_id;
			*p = e;
			*entry = e;
		}
		bool maybe_ran =
		    resend_ago_ns != 0 && !would_remember(t, resend_ago_ns);
		what = maybe_ran || e == NULL ? ASYNQI_DD_FORGOTTEN
		                              : ASYNQI_DD_RUN;
	}
	pthread_mutex_unlock(&t->mu);
	free(wn);
	return what;
}

void
asynqi_dedup_complete(asynqi_dedup *t, asynqi_dd_entry *e, const uint8_t *reply,
    size_t len, void (*each)(void *waiter, void *ctx), void *ctx)
{
	uint8_t *copy = NULL;
	if (reply != NULL && len <= t->max_bytes) {
		copy = malloc(len != 0 ? len : 1);
		if (copy != NULL)
			memcpy(copy, reply, len);
	}
	pthread_mutex_lock(&t->mu);
	dd_waiter *w = e->waiters;
	e->waiters = NULL;
	e->done = true;
	e->has_reply = copy != NULL;
	e->reply = copy;
	e->len = copy != NULL ? len : 0;
	e->done_ns = asynq_now_ns();
	e->prev = t->newest;
	e->next = NULL;
	if (t->newest != NULL)
		t->newest->next = e;
	else
		t->oldest = e;
	t->newest = e;
	t->n_done++;
	t->bytes += e->len;
	trim(t);
	pthread_mutex_unlock(&t->mu);
	while (w != NULL) {
		dd_waiter *next = w->next;
		each(w->w, ctx);
		free(w);
		w = next;
	}
}
