/* SPDX-License-Identifier: MIT */
/*
 * The server's per-method and per-request histograms (asynq_rpc_hist,
 * asynq_rpc_method_stats in asynq/rpc.h), kept per worker: each slot is
 * written by its worker alone, so counting costs a relaxed load and store
 * (no lock prefix, no shared cache line), and readers on any thread sum the
 * slots.
 */
#ifndef ASYNQI_RPC_MSTATS_H
#define ASYNQI_RPC_MSTATS_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "asynq/rpc.h"

/* One worker's histogram. */
typedef struct asynqi_hist {
	atomic_uint_fast64_t counts[ASYNQ_RPC_HIST_MAX + 1];
	atomic_uint_fast64_t sum;
	/* The bucket the last observation fell in: the next one is looked
	 * for there first (a hint; any value is safe). */
	atomic_uchar hint;
} asynqi_hist;

/* One worker's counters of one method, padded to a cache line. */
typedef struct asynqi_mstats {
	atomic_uint_fast64_t codes[ASYNQ_STATUS_COUNT];
	asynqi_hist latency;
	asynqi_hist cpr;
	char pad[64];
} asynqi_mstats;

/* One worker's server-wide histogram: calls per request. */
typedef struct asynqi_wstats {
	asynqi_hist cpr;
	asynqi_hist queue; /* ns from a request's read to its start */
	char pad[64];
} asynqi_wstats;

/* Bucket bounds: latency in ns, and calls per request. */
extern const uint64_t asynqi_latency_bounds[];
extern const size_t asynqi_n_latency_bounds;
extern const uint64_t asynqi_cpr_bounds[];
extern const size_t asynqi_n_cpr_bounds;

/* asynqi_hist_add counts `times` observations of v in h (a latency or
 * calls-per-request histogram, as `bounds` says). Its worker only. */
void asynqi_hist_add(asynqi_hist *h, const uint64_t *bounds, size_t n,
    uint64_t v, uint64_t times);

/* asynqi_hist_sum adds the workers' slots h[0..workers) (stride bytes
 * apart) into out, which it first sets up for `bounds`. Any thread. */
void asynqi_hist_sum(const asynqi_hist *h, size_t workers, size_t stride,
    const uint64_t *bounds, size_t n, asynq_rpc_hist *out);

/* asynqi_mstats_code counts one call of m's that ended with st. Its worker
 * only. */
void asynqi_mstats_code(asynqi_mstats *m, asynq_status st);

/* asynqi_mstats_get sums the workers' slots m[0..workers) into out. Any
 * thread. */
void asynqi_mstats_get(const asynqi_mstats *m, size_t workers,
    asynq_rpc_method_stats *out);

#endif /* ASYNQI_RPC_MSTATS_H */
