/* SPDX-License-Identifier: MIT */
/*
 * The answers service (services/answers/answers.proto, asynq.answers.Answers)
 * as a library, to run in its own process (services/answers/main.c) or
 * embedded in another one. GetAnswer and ListAnswers are whole-batch methods:
 * all the GetAnswer calls of one request become one `SELECT ... FROM answers
 * WHERE id IN (...)`, all its ListAnswers calls one `... WHERE question_id IN
 * (...)`, on the serving worker's own read-only SQLite connection.
 *
 * Use: answers_service_alloc; add answers_service_hook to the svc_hooks of the
 * runtime it will run on (svc_runtime_alloc), so each worker opens its
 * connection at start and closes it at stop; answers_service_start on that
 * runtime; at the end answers_service_close, stop the runtime, then
 * answers_service_free. One runtime per service object.
 */
#ifndef SERVICES_ANSWERS_ANSWERS_H
#define SERVICES_ANSWERS_ANSWERS_H

#include "services/common/svc.h"
#include "services/answers/answers.asynq.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct answers_service answers_service;

/* answers_service_alloc makes an answers service over the database at db_path
 * (made by svc_data_answers_ensure). NOT_FOUND if the file is missing,
 * INTERNAL if it is not an answers database. Not from a worker. */
asynq_status answers_service_alloc(answers_service **sp, const char *db_path);

/* answers_service_db returns the service's database, for its settings
 * (on_worker); set them before it starts. */
svc_db *answers_service_db(answers_service *s);

/* answers_service_hook returns the worker hooks that open and close each
 * worker's SQLite connection; without them connections open on first use. */
svc_hook answers_service_hook(answers_service *s);

/* answers_service_start serves the service on rt's workers at url (nng URL).
 * UNAVAILABLE if the address is in use, INVALID_ARGUMENT for a bad URL,
 * FAILED_PRECONDITION if already started. Not from a worker. */
asynq_status answers_service_start(answers_service *s, asynq_runtime *rt,
    const char *url, const asynq_rpc_server_cfg *cfg);

/* answers_service_serve is answers_service_start for a program run by
 * asynq_serve_main (asynq/serve.h): the server is the program's (made on
 * its runtime, listening on --listen with the flags' limits, drained,
 * closed and freed by asynq_serve_main). From the program's start. */
asynq_status answers_service_serve(answers_service *s, asynq_serve *sv);

/* answers_service_close stops receiving and answers every call already
 * received; blocks until done. Idempotent. Not from a worker. */
void answers_service_close(answers_service *s);

/* answers_service_free closes the service if needed and frees it, closing
 * connections left open; its runtime must have stopped. NULL-safe. */
void answers_service_free(answers_service *s);

/* answers_service_counters reads the service's counters (an svc_counters_fn;
 * arg is the answers_service). Any thread. */
void answers_service_counters(void *s, svc_counters *out);

#ifdef __cplusplus
}
#endif

#endif /* SERVICES_ANSWERS_ANSWERS_H */
