/* SPDX-License-Identifier: MIT */
/*
 * The server's adaptive limit on calls in flight (admission control's
 * second half, beside the queue-time target in server.c).
 *
 * Why a limit on latency and not only on queue time: a server whose
 * handlers call other services (a frontend) can be overloaded without any
 * queue of its own. Offered more, it admits more calls, its outgoing
 * batches grow, each batch takes longer downstream, and the time a call
 * spends in the server grows with the calls in flight (Little's law)
 * while no request waits long to start. Measured (tests/bench:overload,
 * 5x the frontend's peak): with the queue target alone the frontend's
 * requests never waited past it for long, yet admitted calls took 230 ms
 * at p50, 14,000 of them in flight.
 *
 * The target is the mean time requests spend in the server, read to
 * reply: `target_ns`, or `tolerance` times the baseline if more (the
 * lowest interval mean seen, rising towards the current mean by at most
 * 1/64 of itself per interval while the limit does not bind and 1/1024
 * while it does: a service that really became slower is relearnt, and
 * sustained overload does not teach it that slow is normal). Every
 * interval:
 *
 * - The interval is over the target when its mean exceeded the target,
 *   or when the fewest calls in flight seen at any admission exceeded
 *   what the server finishes in one target at this interval's rate (a
 *   backlog standing all interval long, seen before the slow requests
 *   finish). Then the limit is cut: to what was in flight (or the limit,
 *   if less) times target / mean, and to that backlog's worth, at most by
 *   half per interval, never below `floor`.
 * - Otherwise a limit grows by 1/16 and is lifted altogether once it is
 *   four times the most calls seen in flight (and four times the floor):
 *   a server that is not overloaded has no limit, so bursts pass.
 * - The cap: what the best rate seen (forgotten by 0.1% per interval)
 *   finishes in one target, once that is at least `burst` calls. An
 *   overload's onset is otherwise admitted whole for a whole interval (at
 *   5x, tens of thousands of calls, which then set the p99 of everything
 *   admitted); a server that never ran fast has none. At twice that, the
 *   calls admitted in an overload's first second still took 10 ms more
 *   at p99 than the rest (tests/bench:overload, 31 against 22 ms); a
 *   server can still find a better rate under it, as long as its calls
 *   take less than the target.
 * - A request is admitted while the calls in flight are fewer than both,
 *   whatever its own size, so one larger than the limit still runs when
 *   the server is quiet enough.
 *
 * Samples are added per worker slot (the slot's worker only writes it);
 * whoever adds the first sample after an interval's end takes the lock and
 * computes the next limit. The clock is the caller's, so tests drive it.
 */
#ifndef ASYNQI_RPC_LIMIT_H
#define ASYNQI_RPC_LIMIT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One worker's samples, padded to a cache line. */
typedef struct asynqi_limit_slot {
	atomic_uint_fast64_t n;      /* requests finished */
	atomic_uint_fast64_t sum_ns; /* their time in the server */
	atomic_uint_fast64_t calls;  /* their calls */
	char pad[40];
} asynqi_limit_slot;

typedef struct asynqi_limit {
	atomic_size_t limit; /* SIZE_MAX: none */
	atomic_size_t peak;  /* most in flight at an admission this interval */
	atomic_size_t low;   /* fewest, SIZE_MAX: none */
	atomic_size_t cap;   /* from the best rate; SIZE_MAX: none */
	atomic_int_fast64_t next_ns; /* the current interval's end */
	asynqi_limit_slot *slots;
	size_t n_slots;
	size_t floor;
	double tolerance;
	int64_t target_ns; /* the mean time allowed, at least */
	int64_t interval_ns;
	pthread_mutex_t mu;
	/* Under mu. */
	uint64_t seen_n, seen_sum, seen_calls; /* the slots' totals */
	int64_t seen_ns;                       /* at the last update */
	double base_ns;  /* the baseline; 0 until the first */
	double rate_max; /* best calls per ns, decaying */
	size_t burst;    /* a cap below this is none */
} asynqi_limit;

/* Sets up l for n_slots workers; false when out of memory. No limit until
 * the first interval over the target, no cap until the best rate makes one
 * of at least `burst` calls. */
bool asynqi_limit_init(asynqi_limit *l, size_t n_slots, size_t floor,
    size_t burst, double tolerance, int64_t target_ns, int64_t interval_ns,
    int64_t now_ns);
void asynqi_limit_fini(asynqi_limit *l);

/* Any thread: whether a request may start while `load` calls are in
 * flight (below both the limit and the cap); remembers the most and the
 * fewest seen for the next update. */
bool asynqi_limit_admit(asynqi_limit *l, size_t load);

/* Slot's worker: a request that spent latency_ns in the server finished at
 * now_ns; updates the limit when an interval has ended. */
void asynqi_limit_sample(asynqi_limit *l, size_t slot, size_t calls,
    int64_t latency_ns, int64_t now_ns);

/* The limit now, the lower of the adaptive one and the cap (SIZE_MAX:
 * none). Any thread. */
size_t asynqi_limit_get(asynqi_limit *l);

#endif
