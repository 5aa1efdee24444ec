/* SPDX-License-Identifier: MIT */
/*
 * A channel's adaptive throttle: calls refused by the client itself, at
 * once, while its servers refuse most of what it sends (client-side
 * throttling as in Google's SRE book, "Handling Overload").
 *
 * Why: a server's admission control refuses at once, but a refusal still
 * costs a round trip, the server's reading and answering of every refused
 * request and the client's reading of every refusal. Offered 5x what a
 * frontend serves (tests/bench:overload), four calls in five are refused:
 * both sides spend their CPU on them, and the refusals' own latency (a
 * round trip through busy processes) reached 12-25 ms at p99. A client
 * that has seen its servers refuse most of its recent calls refuses a
 * share itself, in nanoseconds, and sends the server only about `ratio`
 * times what it recently admitted.
 *
 * Over a window of WINDOW buckets of BUCKET_NS each: `req` calls that had
 * a verdict (a server admitted or refused them, or this throttle refused
 * them) and `acc` calls a server admitted. A new call is refused with
 * probability
 *
 *     p = (req - ratio x acc) / (req + 1),
 *
 * never more than MAX_P (so some calls always probe the server), halved
 * for each bucket since the last server refusal in which a server
 * admitted calls (the formula alone lets go slowly: the share sent grows
 * by `ratio` per window, so after a long overload calls would still be
 * refused for seconds by a client whose servers admit everything again;
 * halved, p is under 3% half a second after the last refusal), and 0
 * while the window holds fewer
 * than MIN_CALLS verdicts (a client that makes a few calls adds no
 * overload to speak of, and one refusal must not throttle half of its
 * next second). Only overload refusals count against: a request refused
 * as RESOURCE_EXHAUSTED before it ran. A server that is closing, a lost
 * connection or a deadline are not verdicts.
 *
 * Locking: note and update run under the owner's lock (the channel's mu);
 * p, until and local are read and added to by any thread without it, so
 * the call path pays one relaxed load while p is 0.
 */
#ifndef ASYNQI_RPC_THROTTLE_H
#define ASYNQI_RPC_THROTTLE_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define ASYNQI_THROTTLE_BUCKETS 10
#define ASYNQI_THROTTLE_BUCKET_NS 100000000ll /* 100 ms: a 1 s window */
#define ASYNQI_THROTTLE_MIN_CALLS 32
/* p is kept in 1/65536: MAX_P is 0.9. */
#define ASYNQI_THROTTLE_ONE 65536u
#define ASYNQI_THROTTLE_MAX_P 58982u

typedef struct asynqi_throttle {
	/* Any thread. */
	atomic_uint_fast32_t p;     /* refusal probability in 1/65536 */
	atomic_int_fast64_t until;  /* p holds until then (ns), if not 0 */
	atomic_uint_fast64_t local; /* refused here, not yet in req */
	/* Under the owner's lock. */
	uint64_t req[ASYNQI_THROTTLE_BUCKETS], acc[ASYNQI_THROTTLE_BUCKETS];
	uint64_t ref[ASYNQI_THROTTLE_BUCKETS]; /* refused by a server */
	int64_t epoch;  /* the newest bucket's number (now / BUCKET_NS) */
	uint64_t ratio; /* in thousandths; 0: off */
} asynqi_throttle;

/* ratio_milli: the admitted-to-sent ratio kept, in thousandths (2000: send
 * about twice what is admitted); 0: never throttle. */
void asynqi_throttle_init(asynqi_throttle *t, uint32_t ratio_milli,
    int64_t now_ns);

/* Under the owner's lock: a server's verdict on `calls` calls. */
void asynqi_throttle_note(asynqi_throttle *t, int64_t now_ns, uint64_t calls,
    bool admitted);

/* Under the owner's lock: move the window to now and set p. */
void asynqi_throttle_update(asynqi_throttle *t, int64_t now_ns);

/* Any thread, while p != 0 (read by the caller): whether this call is
 * refused, given a uniform 32-bit random number; counts it if so. The
 * caller calls update first when now >= until. */
static inline bool
asynqi_throttle_refuse(asynqi_throttle *t, uint32_t rnd)
{
	uint32_t p =
	    (uint32_t)atomic_load_explicit(&t->p, memory_order_relaxed);
	if ((rnd >> 16) >= p)
		return false;
	atomic_fetch_add_explicit(&t->local, 1, memory_order_relaxed);
	return true;
}

#endif
