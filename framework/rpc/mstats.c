/* SPDX-License-Identifier: MIT */
/*
 * Per-worker histograms and per-method counters of the server (mstats.h).
 *
 * Design notes: a slot has one writer, its worker, so an increment is a
 * relaxed load and a relaxed store rather than an atomic read-modify-write:
 * on x86-64 two plain moves, and no cache line bounces between workers. A
 * reader may see a histogram's sum and its counts from slightly different
 * moments; each figure on its own is exact at some instant, which is what
 * a scrape needs.
 */
#include <string.h>

#include "mstats.h"

/* 50 us to 10 s: a batched lookup takes well under a millisecond, a
 * request that queued or fanned out takes tens. */
const uint64_t asynqi_latency_bounds[] = {
	50000,
	100000,
	250000,
	500000,
	1000000,
	2500000,
	5000000,
	10000000,
	25000000,
	50000000,
	100000000,
	250000000,
	500000000,
	1000000000,
	2500000000u,
	10000000000u,
};
const size_t asynqi_n_latency_bounds =
    sizeof(asynqi_latency_bounds) / sizeof(asynqi_latency_bounds[0]);

/* Powers of two up to the client's default max_calls and past it. */
const uint64_t asynqi_cpr_bounds[] = {
	1,
	2,
	4,
	8,
	16,
	32,
	64,
	128,
	256,
	512,
	1024,
	4096,
};
const size_t asynqi_n_cpr_bounds =
    sizeof(asynqi_cpr_bounds) / sizeof(asynqi_cpr_bounds[0]);

_Static_assert(sizeof(asynqi_latency_bounds) / sizeof(uint64_t) <=
        ASYNQ_RPC_HIST_MAX,
    "latency buckets fit asynq_rpc_hist");
_Static_assert(sizeof(asynqi_cpr_bounds) / sizeof(uint64_t) <=
        ASYNQ_RPC_HIST_MAX,
    "calls-per-request buckets fit asynq_rpc_hist");

static void
bump(atomic_uint_fast64_t *x, uint64_t d)
{
	atomic_store_explicit(x,
	    atomic_load_explicit(x, memory_order_relaxed) + d,
	    memory_order_relaxed);
}

void
asynqi_hist_add(asynqi_hist *h, const uint64_t *bounds, size_t n, uint64_t v,
    uint64_t times)
{
	/* Observations in a row mostly fall in one bucket: the last one's
	 * is tried first. */
	size_t i = atomic_load_explicit(&h->hint, memory_order_relaxed);
	if (i > n || (i < n && v > bounds[i]) ||
	    (i > 0 && v <= bounds[i - 1])) {
		i = 0;
		while (i < n && v > bounds[i])
			i++;
		atomic_store_explicit(&h->hint, (unsigned char)i,
		    memory_order_relaxed);
	}
	bump(&h->counts[i], times);
	bump(&h->sum, v * times);
}

void
asynqi_hist_sum(const asynqi_hist *h, size_t workers, size_t stride,
    const uint64_t *bounds, size_t n, asynq_rpc_hist *out)
{
	memset(out, 0, sizeof(*out));
	out->bounds = bounds;
	out->n_bounds = n;
	for (size_t w = 0; w < workers; w++) {
		const asynqi_hist *x =
		    (const asynqi_hist *)((const char *)h + w * stride);
		for (size_t i = 0; i <= n; i++) {
			uint64_t c = atomic_load_explicit(&x->counts[i],
			    memory_order_relaxed);
			out->counts[i] += c;
			out->count += c;
		}
		out->sum += atomic_load_explicit(&x->sum, memory_order_relaxed);
	}
}

void
asynqi_mstats_code(asynqi_mstats *m, asynq_status st)
{
	if ((unsigned)st >= ASYNQ_STATUS_COUNT)
		st = ASYNQ_UNKNOWN;
	bump(&m->codes[st], 1);
}

void
asynqi_mstats_get(const asynqi_mstats *m, size_t workers,
    asynq_rpc_method_stats *out)
{
	const asynq_rpc_method_desc *method = out->method;
	memset(out, 0, sizeof(*out));
	out->method = method;
	for (size_t w = 0; w < workers; w++)
		for (size_t c = 0; c < ASYNQ_STATUS_COUNT; c++)
			out->codes[c] += atomic_load_explicit(&m[w].codes[c],
			    memory_order_relaxed);
	asynqi_hist_sum(&m[0].latency, workers, sizeof(*m),
	    asynqi_latency_bounds, asynqi_n_latency_bounds, &out->latency_ns);
	asynqi_hist_sum(&m[0].cpr, workers, sizeof(*m), asynqi_cpr_bounds,
	    asynqi_n_cpr_bounds, &out->calls_per_request);
}
