/* SPDX-License-Identifier: MIT */
/*
 * The cache service (services/cache/cache.proto, asynq.cache.Cache) as a
 * library, to run in its own process (services/cache/main.c) or embedded in
 * another one: a memcache-like cache of byte strings with per-entry TTLs and
 * a memory cap enforced by LRU eviction, and counters (Incr). Get, Set,
 * Delete and Incr are whole-batch methods: the calls of one request take the
 * cache's lock once. Incr is the one method that is not idempotent; an
 * optional exec log records each of its executions, for tests that count
 * them (tests/faults/amo).
 *
 * Use: cache_service_alloc; cache_service_start on a runtime; at the end
 * cache_service_close, stop the runtime, then cache_service_free.
 */
#ifndef SERVICES_CACHE_CACHE_H
#define SERVICES_CACHE_CACHE_H

#include "services/cache/cache.asynq.h"
#include "services/common/svc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cache_service cache_service;

/* Default memory cap: bytes of keys, values and per-entry overhead. */
#define CACHE_DEFAULT_MAX_BYTES (64u << 20)

/* Bytes an entry counts against the cap besides its key and value. */
#define CACHE_ENTRY_OVERHEAD 64u

/* cache_service_alloc makes an empty cache holding at most max_bytes (0: the
 * default). RESOURCE_EXHAUSTED without memory. Any thread. */
asynq_status cache_service_alloc(cache_service **sp, size_t max_bytes);

/* One execution of Incr in the exec log: the call's token and the value it
 * produced, in the host's byte order (the log is read on the same machine). */
typedef struct cache_exec_record {
	uint64_t token;
	int64_t value;
} cache_exec_record;

/* cache_service_exec_log_set makes s append a cache_exec_record to fd (open
 * with O_APPEND; borrowed, it must outlive the service) for each Incr it
 * runs, before the call is answered. Before cache_service_start. */
void cache_service_exec_log_set(cache_service *s, int fd);

/* cache_service_start serves the cache on rt's workers at url. UNAVAILABLE
 * if the address is in use, INVALID_ARGUMENT for a bad URL,
 * FAILED_PRECONDITION if already started. Not from a worker. */
asynq_status cache_service_start(cache_service *s, asynq_runtime *rt,
    const char *url, const asynq_rpc_server_cfg *cfg);

/* cache_service_serve is cache_service_start for a program run by
 * asynq_serve_main (asynq/serve.h): the server is the program's (made on
 * its runtime, listening on --listen with the flags' limits, drained,
 * closed and freed by asynq_serve_main). From the program's start. */
asynq_status cache_service_serve(cache_service *s, asynq_serve *sv);

/* cache_service_close stops receiving and answers every call already
 * received; blocks until done. Idempotent. Not from a worker. */
void cache_service_close(cache_service *s);

/* cache_service_free closes the service if needed and frees it and every
 * entry; its runtime must have stopped. NULL-safe. */
void cache_service_free(cache_service *s);

/* The cache's own counters. */
typedef struct cache_stats {
	uint64_t hits, misses; /* Get calls that found a value, or none */
	uint64_t sets, deletes;
	uint64_t incrs;     /* Incr calls that changed a counter */
	uint64_t evictions; /* entries evicted for the memory cap */
	uint64_t expired;   /* entries dropped because their TTL passed */
	uint64_t entries;   /* entries now */
	uint64_t bytes;     /* bytes accounted now */
} cache_stats;

/* cache_service_stats_get copies the cache's counters. Any thread. */
void cache_service_stats_get(cache_service *s, cache_stats *out);

/* cache_service_counters reads the server's counters (an svc_counters_fn;
 * arg is the cache_service). Any thread. */
void cache_service_counters(void *s, svc_counters *out);

#ifdef __cplusplus
}
#endif

#endif /* SERVICES_CACHE_CACHE_H */
