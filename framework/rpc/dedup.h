/* SPDX-License-Identifier: MIT */
/*
 * The server's table of remembered requests, for at-most-once execution:
 * requests that carry non-idempotent calls are entered by (client id,
 * request id) while they run, and kept with a copy of their reply once
 * answered, within limits of count, bytes and age. Thread-safe (one mutex).
 */
#ifndef ASYNQI_RPC_DEDUP_H
#define ASYNQI_RPC_DEDUP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "asynq/status.h"

typedef struct asynqi_dd_entry asynqi_dd_entry;
typedef struct asynqi_dedup asynqi_dedup;

/* What to do with a received request. */
enum {
	ASYNQI_DD_RUN,       /* run it (entered when entry is set) */
	ASYNQI_DD_ANSWERED,  /* answered before: send the stored reply */
	ASYNQI_DD_PARKED,    /* a copy of one running: waits for its reply */
	ASYNQI_DD_FORGOTTEN, /* a resend not remembered: run only the
	                        idempotent calls */
};

/* asynqi_dedup_alloc makes a table with its limits. */
asynq_status asynqi_dedup_alloc(asynqi_dedup **tp, size_t entries,
    uint32_t age_ms, size_t bytes);

/* asynqi_dedup_free frees the table; parked waiters must be gone. */
void asynqi_dedup_free(asynqi_dedup *t);

/* A resend whose first sending is of unknown time or to another server. */
#define ASYNQI_DD_UNKNOWN UINT64_MAX

/* asynqi_dedup_check looks a request up and enters it when new. RUN sets
 * *entry (the caller completes it); ANSWERED gives a malloc'd copy of the
 * stored reply body in *reply and *len; PARKED queues `waiter`, which
 * asynqi_dedup_complete hands back. resend_ago_ns: 0 for a first sending,
 * else how long ago the request was first sent to this server (or
 * ASYNQI_DD_UNKNOWN); a resend not remembered is FORGOTTEN unless the table
 * would remember it after that long. Any thread. */
int asynqi_dedup_check(asynqi_dedup *t, uint64_t client_id, uint64_t request_id,
    uint64_t resend_ago_ns, void *waiter, asynqi_dd_entry **entry,
    uint8_t **reply, size_t *len);

/* asynqi_dedup_complete records the reply body of a running entry (a copy
 * is kept if it fits the byte limit; reply may be NULL when there is none)
 * and calls each(waiter, ctx) for every parked copy, outside the lock. Any
 * thread. */
void asynqi_dedup_complete(asynqi_dedup *t, asynqi_dd_entry *e,
    const uint8_t *reply, size_t len, void (*each)(void *waiter, void *ctx),
    void *ctx);

#endif /* ASYNQI_RPC_DEDUP_H */
