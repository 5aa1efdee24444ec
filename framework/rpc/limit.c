/* SPDX-License-Identifier: MIT */
/*
 * The server's adaptive limit on calls in flight: see limit.h.
 */
#include "limit.h"

#include <stdlib.h>

/* The baseline rises towards the interval's mean by at most 1/BASE_FREE of
 * itself per interval while the limit does not bind, 1/BASE_BOUND while it
 * does. */
#define BASE_FREE 64.0
#define BASE_BOUND 1024.0
/* The best rate is forgotten by 0.1% per interval (half in ~70 s). */
#define RATE_DECAY 0.999
#define CAP_TARGETS 1.0 /* see limit.h: the cap */

bool
asynqi_limit_init(asynqi_limit *l, size_t n_slots, size_t floor, size_t burst,
    double tolerance, int64_t target_ns, int64_t interval_ns, int64_t now_ns)
{
	l->target_ns = target_ns;
	l->slots = calloc(n_slots != 0 ? n_slots : 1, sizeof(*l->slots));
	if (l->slots == NULL)
		return false;
	for (size_t i = 0; i < n_slots; i++) {
		atomic_init(&l->slots[i].n, 0);
		atomic_init(&l->slots[i].sum_ns, 0);
		atomic_init(&l->slots[i].calls, 0);
	}
	l->n_slots = n_slots;
	l->floor = floor != 0 ? floor : 1;
	l->tolerance = tolerance > 1 ? tolerance : 1;
	l->interval_ns = interval_ns > 0 ? interval_ns : 1;
	atomic_init(&l->limit, SIZE_MAX);
	atomic_init(&l->peak, 0);
	atomic_init(&l->low, SIZE_MAX);
	atomic_init(&l->cap, SIZE_MAX);
	l->rate_max = 0;
	l->burst = burst;
	l->seen_calls = 0;
	l->seen_ns = now_ns;
	atomic_init(&l->next_ns, now_ns + l->interval_ns);
	pthread_mutex_init(&l->mu, NULL);
	l->seen_n = 0;
	l->seen_sum = 0;
	l->base_ns = 0;
	return true;
}

void
asynqi_limit_fini(asynqi_limit *l)
{
	pthread_mutex_destroy(&l->mu);
	free(l->slots);
	l->slots = NULL;
}

bool
asynqi_limit_admit(asynqi_limit *l, size_t load)
{
	size_t p = atomic_load_explicit(&l->peak, memory_order_relaxed);
	while (load > p &&
	    !atomic_compare_exchange_weak_explicit(&l->peak, &p, load,
	        memory_order_relaxed, memory_order_relaxed))
		;
	size_t m = atomic_load_explicit(&l->low, memory_order_relaxed);
	while (load < m &&
	    !atomic_compare_exchange_weak_explicit(&l->low, &m, load,
	        memory_order_relaxed, memory_order_relaxed))
		;
	return load < atomic_load_explicit(&l->limit, memory_order_relaxed) &&
	    load < atomic_load_explicit(&l->cap, memory_order_relaxed);
}

size_t
asynqi_limit_get(asynqi_limit *l)
{
	size_t lim = atomic_load_explicit(&l->limit, memory_order_relaxed);
	size_t cap = atomic_load_explicit(&l->cap, memory_order_relaxed);
	return lim < cap ? lim : cap;
}

/* Under l->mu: the next limit from the interval that ended at now. */
static void
limit_update(asynqi_limit *l, int64_t now)
{
	uint64_t n = 0, sum = 0, calls = 0;
	for (size_t i = 0; i < l->n_slots; i++) {
		n += atomic_load_explicit(&l->slots[i].n, memory_order_relaxed);
		sum += atomic_load_explicit(&l->slots[i].sum_ns,
		    memory_order_relaxed);
		calls += atomic_load_explicit(&l->slots[i].calls,
		    memory_order_relaxed);
	}
	uint64_t dn = n - l->seen_n, dsum = sum - l->seen_sum;
	uint64_t dcalls = calls - l->seen_calls;
	int64_t len = now - l->seen_ns;
	l->seen_n = n;
	l->seen_sum = sum;
	l->seen_calls = calls;
	l->seen_ns = now;
	size_t peak =
	    atomic_exchange_explicit(&l->peak, 0, memory_order_relaxed);
	size_t low =
	    atomic_exchange_explicit(&l->low, SIZE_MAX, memory_order_relaxed);
	if (dn == 0 || len <= 0)
		return; /* nothing finished: no evidence either way */
	double mean = (double)dsum / (double)dn;
	size_t lim = atomic_load_explicit(&l->limit, memory_order_relaxed);
	bool binds = lim != SIZE_MAX && peak >= lim / 2;
	if (l->base_ns == 0 || mean < l->base_ns)
		l->base_ns = mean;
	else {
		/* Rises by at most a fraction of itself: one slow
		 * interval is not a new normal. */
		double up = l->base_ns / (binds ? BASE_BOUND : BASE_FREE);
		l->base_ns += mean - l->base_ns < up ? mean - l->base_ns : up;
	}
	double target = l->tolerance * l->base_ns;
	if (target < (double)l->target_ns)
		target = (double)l->target_ns;
	/* Calls the server finishes in one target at this interval's rate:
	 * a backlog larger than that all interval long is a standing one. */
	double rate = (double)dcalls / (double)len; /* calls per ns */
	double drain = rate * target;
	l->rate_max *= RATE_DECAY;
	if (rate > l->rate_max)
		l->rate_max = rate;
	/* The cap: what the best rate seen finishes in CAP_TARGETS targets,
	 * in force only once that is above the floor of a burst. */
	double capd = CAP_TARGETS * l->rate_max * target;
	size_t cap = capd >= (double)l->burst ? (size_t)capd : SIZE_MAX;
	atomic_store_explicit(&l->cap, cap, memory_order_relaxed);
	size_t next = lim;
	bool standing = low != SIZE_MAX && (double)low > drain;
	if (mean > target || standing) {
		double from = (double)(lim < peak ? lim : peak);
		double cut = from;
		if (mean > target) {
			double g = target / mean;
			cut = from * (g > 0.5 ? g : 0.5);
		}
		if (standing) {
			double c = drain > from / 2 ? drain : from / 2;
			if (c < cut)
				cut = c;
		}
		next = cut > (double)l->floor ? (size_t)cut : l->floor;
	} else if (lim != SIZE_MAX) {
		next = lim + lim / 16 + 1;
		if (next > 4 * peak && next > 4 * l->floor)
			next = SIZE_MAX;
	}
	if (next != lim)
		atomic_store_explicit(&l->limit, next, memory_order_relaxed);
}

void
asynqi_limit_sample(asynqi_limit *l, size_t slot, size_t calls,
    int64_t latency_ns, int64_t now_ns)
{
	asynqi_limit_slot *s = &l->slots[slot < l->n_slots ? slot : 0];
	/* Only slot's worker writes it: no read-modify-write needed. */
	atomic_store_explicit(&s->calls,
	    atomic_load_explicit(&s->calls, memory_order_relaxed) + calls,
	    memory_order_relaxed);
	atomic_store_explicit(&s->n,
	    atomic_load_explicit(&s->n, memory_order_relaxed) + 1,
	    memory_order_relaxed);
	atomic_store_explicit(&s->sum_ns,
	    atomic_load_explicit(&s->sum_ns, memory_order_relaxed) +
	        (uint64_t)(latency_ns > 0 ? latency_ns : 0),
	    memory_order_relaxed);
	if (now_ns < atomic_load_explicit(&l->next_ns, memory_order_relaxed))
		return;
	if (pthread_mutex_trylock(&l->mu) != 0)
		return; /* another worker is updating it */
	if (now_ns >= atomic_load_explicit(&l->next_ns, memory_order_relaxed)) {
		limit_update(l, now_ns);
		atomic_store_explicit(&l->next_ns, now_ns + l->interval_ns,
		    memory_order_relaxed);
	}
	pthread_mutex_unlock(&l->mu);
}
