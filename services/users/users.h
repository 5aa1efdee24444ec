/* SPDX-License-Identifier: MIT */
/*
 * The users service (services/users/users.proto, asynq.users.Users) as a
 * library, to run in its own process (services/users/main.c) or embedded in
 * another one. GetUser is a whole-batch method: every GetUser call of one
 * request becomes one `SELECT id, name FROM users WHERE id IN (...)` on the
 * serving worker's own read-only SQLite connection.
 *
 * Use: users_service_alloc; add users_service_hook to the svc_hooks of the
 * runtime it will run on (svc_runtime_alloc), so each worker opens its
 * connection at start and closes it at stop; users_service_start on that
 * runtime; at the end users_service_close, stop the runtime, then
 * users_service_free. One runtime per service object.
 */
#ifndef SERVICES_USERS_USERS_H
#define SERVICES_USERS_USERS_H

#include "services/common/svc.h"
#include "services/users/users.asynq.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct users_service users_service;

/* users_service_alloc makes a users service over the database at db_path
 * (made by svc_data_users_ensure). NOT_FOUND if the file is missing,
 * INTERNAL if it is not a users database. Not from a worker. */
asynq_status users_service_alloc(users_service **sp, const char *db_path);

/* users_service_hook returns the worker hooks that open and close each
 * worker's SQLite connection; without them connections open on first use. */
svc_hook users_service_hook(users_service *s);

/* users_service_db returns the service's database, for its settings
 * (on_worker) and tests' fault injection; set them before it starts. */
svc_db *users_service_db(users_service *s);

/* users_service_start serves the service on rt's workers at url (nng URL).
 * UNAVAILABLE if the address is in use, INVALID_ARGUMENT for a bad URL,
 * FAILED_PRECONDITION if already started. Not from a worker. */
asynq_status users_service_start(users_service *s, asynq_runtime *rt,
    const char *url, const asynq_rpc_server_cfg *cfg);

/* users_service_serve is users_service_start for a program run by
 * asynq_serve_main (asynq/serve.h): the server is the program's (made on
 * its runtime, listening on --listen with the flags' limits, drained,
 * closed and freed by asynq_serve_main). From the program's start. */
asynq_status users_service_serve(users_service *s, asynq_serve *sv);

/* users_service_close stops receiving and answers every call already
 * received; blocks until done. Idempotent. Not from a worker. */
void users_service_close(users_service *s);

/* users_service_free closes the service if needed and frees it, closing
 * connections left open; its runtime must have stopped. NULL-safe. */
void users_service_free(users_service *s);

/* users_service_counters reads the service's counters (an svc_counters_fn;
 * arg is the users_service). Any thread. */
void users_service_counters(void *s, svc_counters *out);

#ifdef __cplusplus
}
#endif

#endif /* SERVICES_USERS_USERS_H */
