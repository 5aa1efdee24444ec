/* SPDX-License-Identifier: MIT */
/*
 * Name resolution for channels (resolve.c): targets "dns:///host:port"
 * (getaddrinfo) and "dns+srv:///_svc._proto.name" (SRV through libresolv),
 * or a user's asynq_rpc_resolver in their place, resolved on a thread of
 * the resolver's own, periodically and when asked.
 */
#ifndef ASYNQI_RPC_RESOLVE_H
#define ASYNQI_RPC_RESOLVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "asynq/rpc.h"

typedef struct asynqi_resolver asynqi_resolver;

/* Called on the resolver's thread with the URLs a resolution found
 * (n > 0), or with n == 0 and why (in words) when it failed or found
 * nothing, or with urls NULL and why NULL for a tick (see below). Returns
 * true to be ticked again soon (about every 100 ms), false to wait for the
 * next resolution. */
typedef bool (*asynqi_resolved_fn)(void *arg, char (*urls)[ASYNQ_RPC_URL_MAX],
    size_t n, const char *why);

/* asynqi_target_is_name says whether url is a target to resolve (dns:// or
 * dns+srv://) rather than a URL to dial. */
bool asynqi_target_is_name(const char *url);

/* asynqi_resolver_open checks target's syntax and starts a thread that
 * resolves it at once, then every interval_ms and when kicked, calling
 * fn with at most max URLs each time (custom: in place of DNS, or NULL).
 * INVALID_ARGUMENT with why (in words) for a target it cannot resolve;
 * RESOURCE_EXHAUSTED without memory or a thread. Any thread. */
asynq_status asynqi_resolver_open(asynqi_resolver **rp, const char *target,
    const asynq_rpc_resolver *custom, uint32_t interval_ms, size_t max,
    asynqi_resolved_fn fn, void *arg, char *why, size_t why_len);

/* asynqi_resolver_kick asks for a resolution soon: at once if the last one
 * is at least a second old (or interval_ms, if shorter), else when it is.
 * now asks at once whatever the last one's age. Any thread; never blocks
 * on a resolution. */
void asynqi_resolver_kick(asynqi_resolver *r, bool now);

/* asynqi_resolver_close stops the thread (waiting for a resolution under
 * way) and frees r; fn is not called after it returns. NULL is ignored.
 * Not from fn. */
void asynqi_resolver_close(asynqi_resolver *r);

/* asynqi_resolve_once resolves target once on the calling thread (it may
 * block): the URLs into urls[0..max), returns how many were found (more
 * than max: the rest left out) or -1 with why set. */
int asynqi_resolve_once(const char *target, const asynq_rpc_resolver *custom,
    char (*urls)[ASYNQ_RPC_URL_MAX], size_t max, char *why, size_t why_len);

/* One SRV record. */
typedef struct asynqi_srv {
	uint16_t priority, weight, port;
	char target[256];
} asynqi_srv;

/* asynqi_srv_parse reads the SRV records of the answer section of a DNS
 * reply msg[0..len) into out[0..max) and returns how many there are, or
 * -1 for a malformed message. */
int asynqi_srv_parse(const uint8_t *msg, size_t len, asynqi_srv *out,
    size_t max);

#endif /* ASYNQI_RPC_RESOLVE_H */
