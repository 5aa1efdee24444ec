/* SPDX-License-Identifier: MIT */
/*
 * The channel's adaptive throttle: see throttle.h.
 */
#include "throttle.h"

#include <string.h>

void
asynqi_throttle_init(asynqi_throttle *t, uint32_t ratio_milli, int64_t now_ns)
{
	memset(t->req, 0, sizeof(t->req));
	memset(t->acc, 0, sizeof(t->acc));
	memset(t->ref, 0, sizeof(t->ref));
	t->epoch = now_ns / ASYNQI_THROTTLE_BUCKET_NS;
	t->ratio = ratio_milli;
	atomic_init(&t->p, 0);
	atomic_init(&t->until, 0);
	atomic_init(&t->local, 0);
}

/* The window moves to now's bucket; buckets it passes are emptied. */
static size_t
advance(asynqi_throttle *t, int64_t now_ns)
{
	int64_t e = now_ns / ASYNQI_THROTTLE_BUCKET_NS;
	/* Calls refused here since the last move count where they were
	 * (updates come at least once a bucket while calls are made). */
	t->req[(size_t)(t->epoch % ASYNQI_THROTTLE_BUCKETS)] +=
	    atomic_exchange_explicit(&t->local, 0, memory_order_relaxed);
	if (e > t->epoch) {
		int64_t gone = e - t->epoch;
		if (gone >= ASYNQI_THROTTLE_BUCKETS) {
			memset(t->req, 0, sizeof(t->req));
			memset(t->acc, 0, sizeof(t->acc));
			memset(t->ref, 0, sizeof(t->ref));
		} else {
			for (int64_t i = 1; i <= gone; i++) {
				size_t b = (size_t)((t->epoch + i) %
				    ASYNQI_THROTTLE_BUCKETS);
				t->req[b] = t->acc[b] = t->ref[b] = 0;
			}
		}
		t->epoch = e;
	}
	return (size_t)(t->epoch % ASYNQI_THROTTLE_BUCKETS);
}

static void
set_p(asynqi_throttle *t)
{
	uint64_t req = 0, acc = 0;
	for (size_t i = 0; i < ASYNQI_THROTTLE_BUCKETS; i++) {
		req += t->req[i];
		acc += t->acc[i];
	}
	uint64_t p = 0;
	if (t->ratio != 0 && req >= ASYNQI_THROTTLE_MIN_CALLS &&
	    req * 1000 > t->ratio * acc) {
		p = (req * 1000 - t->ratio * acc) * ASYNQI_THROTTLE_ONE /
		    ((req + 1) * 1000);
		if (p > ASYNQI_THROTTLE_MAX_P)
			p = ASYNQI_THROTTLE_MAX_P;
		/* Halved per finished bucket since the last refusal in
		 * which calls were admitted (empty ones say nothing). */
		for (int64_t i = 1;
		     i < ASYNQI_THROTTLE_BUCKETS && i <= t->epoch && p != 0;
		     i++) {
			size_t b =
			    (size_t)((t->epoch - i) % ASYNQI_THROTTLE_BUCKETS);
			if (t->ref[b] != 0)
				break;
			if (t->acc[b] != 0)
				p >>= 1;
		}
	}
	atomic_store_explicit(&t->until,
	    (t->epoch + 1) * ASYNQI_THROTTLE_BUCKET_NS, memory_order_relaxed);
	atomic_store_explicit(&t->p, (uint32_t)p, memory_order_relaxed);
}

void
asynqi_throttle_note(asynqi_throttle *t, int64_t now_ns, uint64_t calls,
    bool admitted)
{
	if (t->ratio == 0)
		return;
	size_t cur = advance(t, now_ns);
	t->req[cur] += calls;
	if (admitted)
		t->acc[cur] += calls;
	else
		t->ref[cur] += calls;
	set_p(t);
}

void
asynqi_throttle_update(asynqi_throttle *t, int64_t now_ns)
{
	if (t->ratio == 0)
		return;
	(void)advance(t, now_ns);
	set_p(t);
}
