/* SPDX-License-Identifier: MIT */
/*
 * The frontend service (services/frontend/frontend.proto,
 * asynq.frontend.Frontend) as a library, to run in its own process
 * (services/frontend/main.c) or embedded in another one. Its handlers call
 * the users and answers services over RPC channels; the calls a worker's
 * handlers make before they all block go out as one request per service, so
 * AuthorNames for N answers costs one GetAnswer request and one GetUser
 * request, whatever N (up to the services' batch_max_calls). With a cache
 * service, names are read cache-aside: one Get request for all the authors,
 * GetUser for the misses only, one Set request for what was fetched.
 *
 * Use: frontend_service_alloc with the users', answers' (and cache's) URLs;
 * frontend_service_start on a runtime; at the end frontend_service_close,
 * stop the runtime, then frontend_service_free.
 */
#ifndef SERVICES_FRONTEND_FRONTEND_H
#define SERVICES_FRONTEND_FRONTEND_H

#include "services/common/svc.h"
#include "services/frontend/frontend.asynq.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct frontend_service frontend_service;

/* How long the frontend caches a user's name, in milliseconds. */
#define FRONTEND_NAME_TTL_MS 60000

/* frontend_service_alloc makes a frontend that calls the users service at
 * users_url and the answers service at answers_url (dialled in the
 * background), and, unless cache_url is NULL, reads users' names
 * cache-aside through the cache service there. INVALID_ARGUMENT for a bad
 * URL. Any thread but a worker. */
asynq_status frontend_service_alloc(frontend_service **sp,
    const char *users_url, const char *answers_url, const char *cache_url);

/* Settings of a frontend; zero fields take the default. */
typedef struct frontend_cfg {
	const char *users_url;   /* required */
	const char *answers_url; /* required */
	const char *cache_url;   /* NULL: no cache */
	size_t max_calls;        /* calls per request to each service; 0: the
	                            services' batch_max_calls; 1: no batching */
	bool no_collapse;        /* send identical calls of a batch each (the
	                            channels' no_collapse) */
	/* tls+tcp:// backends (asynq_rpc_channel_cfg's fields of the same
	 * names): the CA that verifies them, the name their certificates
	 * carry, and the certificate and key the frontend presents to
	 * servers that require one (mutual TLS). NULL: unused. */
	const char *tls_ca_file;
	const char *tls_server_name;
	const char *tls_cert_file;
	const char *tls_key_file;
} frontend_cfg;

/* frontend_service_alloc_cfg is frontend_service_alloc with settings. */
asynq_status frontend_service_alloc_cfg(frontend_service **sp,
    const frontend_cfg *cfg);

/* frontend_service_start serves the service on rt's workers at url.
 * UNAVAILABLE if the address is in use, INVALID_ARGUMENT for a bad URL,
 * FAILED_PRECONDITION if already started. Not from a worker. */
asynq_status frontend_service_start(frontend_service *s, asynq_runtime *rt,
    const char *url, const asynq_rpc_server_cfg *cfg);

/* frontend_author_names looks up the names of the authors of answers
 * aids[0..n) with one round trip to each service and returns them in
 * *names (n malloc'd strings in a malloc'd array, which the caller frees);
 * on error *names is NULL and t's error says which lookup failed. Task
 * only (may suspend), on any scheduler thread. */
asynq_status frontend_author_names(asynq_task *t, frontend_service *s,
    const int64_t *aids, size_t n, char ***names);

/* frontend_service_close stops receiving and answers every call already
 * received; blocks until done. Idempotent. Not from a worker. */
void frontend_service_close(frontend_service *s);

/* frontend_service_free closes the service if needed, closes its channels
 * and frees it; every runtime that used it must have stopped. NULL-safe. */
void frontend_service_free(frontend_service *s);

/* frontend_service_counters reads the counters (an svc_counters_fn; arg is
 * the frontend_service): calls served, and calls and requests made to the
 * users, answers and cache services. Any thread. */
void frontend_service_counters(void *s, svc_counters *out);

#ifdef __cplusplus
}
#endif

#endif /* SERVICES_FRONTEND_FRONTEND_H */
