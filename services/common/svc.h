/* SPDX-License-Identifier: MIT */
/*
 * What the example services share: a deterministic data generator that makes
 * their SQLite databases on first run, per-worker read-only SQLite
 * connections with a query counter and batched `WHERE id IN (...)` lookups,
 * a runtime whose worker hooks several services can share, servers and an
 * admin endpoint for programs that run several services in one process
 * (the demo, the integration test). The services' own programs are run by
 * asynq_serve_main (asynq/serve.h).
 *
 * Nothing here is part of the framework; it uses the public headers only.
 */
#ifndef SERVICES_COMMON_SVC_H
#define SERVICES_COMMON_SVC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <sqlite3.h>

#include "asynq/admin.h"
#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "asynq/serve.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Most worker threads a service's runtime may have. */
#define SVC_MAX_WORKERS 256

/* Task stacks of the services' runtimes: big enough for SQLite's frames. */
#define SVC_STACK_SIZE (256 * 1024)

/* ---- Data generator ------------------------------------------------------ */

/* Sizes of the generated data; zero fields take the defaults below. */
typedef struct svc_data_cfg {
	size_t users;     /* users 1..users; default 100,000 */
	size_t answers;   /* answers 1..answers; default 1,000,000 */
	size_t questions; /* questions 1..questions; default 100,000 */
} svc_data_cfg;

#define SVC_DEFAULT_USERS 100000
#define SVC_DEFAULT_ANSWERS 1000000
#define SVC_DEFAULT_QUESTIONS 100000

/* svc_user_name writes the generated name of user id into buf (at most n
 * bytes, NUL-terminated): the same id always gets the same name. */
void svc_user_name(int64_t id, char *buf, size_t n);

/* svc_data_users_ensure makes the users database at path (table users(id,
 * name)) unless a file is already there; *created says which. The file
 * appears whole or not at all (written aside, then renamed). INTERNAL with
 * SQLite's message on stderr on failure. Any thread. */
asynq_status svc_data_users_ensure(const char *path, const svc_data_cfg *cfg,
    bool *created);

/* svc_data_answers_ensure makes the answers database at path (table
 * answers(id, question_id, author_id, body), indexed by question_id) unless a
 * file is already there, with authors drawn from cfg->users. Same rules as
 * svc_data_users_ensure. */
asynq_status svc_data_answers_ensure(const char *path, const svc_data_cfg *cfg,
    bool *created);

/* ---- Per-worker SQLite connections ------------------------------------- */

#define SVC_DB_IDLE 16

/* A read-only database a service queries. By default a query runs on the
 * blocking pool (asynq_run_blocking) on a connection of the pool's, so a
 * slow one never stalls the other calls of the worker that asked; with
 * on_worker it runs on the worker's own connection (one per worker thread,
 * SQLITE_OPEN_NOMUTEX: never shared, opened in the worker_start hook and
 * closed in worker_stop), which saves two thread hand-offs per query. */
typedef struct svc_db {
	char *path;
	sqlite3
	    *conns[SVC_MAX_WORKERS];  /* slot i: worker i's, only it uses it */
	atomic_uint_fast64_t queries; /* SQL statements run */
	bool on_worker;
	pthread_mutex_t idle_mu;
	sqlite3 *idle[SVC_DB_IDLE]; /* the pool's connections not in use */
	size_t n_idle;
	/* Fault injection for tests: called before each query, on the thread
	 * that runs it; a non-OK status fails the query. */
	asynq_status (*before_query)(void *arg);
	void *before_query_arg;
} svc_db;

/* svc_db_init checks that path opens read-only and has `table`, and prepares
 * db (no connection kept). NOT_FOUND if the file is missing, INTERNAL if it
 * does not open or lacks the table. */
asynq_status svc_db_init(svc_db *db, const char *path, const char *table);

/* svc_db_fini closes connections left open (their runtime must have
 * stopped) and frees db's memory. NULL-safe. */
void svc_db_fini(svc_db *db);

/* svc_db_worker_open opens worker w's connection; call it from worker w's
 * worker_start hook. A failure is printed; the handler then opens lazily. */
void svc_db_worker_open(svc_db *db, size_t w);

/* svc_db_worker_close closes worker w's connection; from its worker_stop. */
void svc_db_worker_close(svc_db *db, size_t w);

/* svc_db_conn returns the calling worker's connection, opening it if the
 * hook did not; NULL off the runtime's workers or if it cannot open. */
sqlite3 *svc_db_conn(svc_db *db);

/* Called for each row an IN lookup returns; a non-OK status stops it. */
typedef asynq_status (*svc_row_fn)(sqlite3_stmt *row, void *arg);

/* svc_db_in runs `<select> WHERE <column> IN (?,...,?) <tail>` with ids bound
 * (duplicates allowed) and calls fn for each row, on the blocking pool (the
 * calling task waits; fn runs on the pool's thread) or, with on_worker, on
 * the calling worker's connection. It runs one statement per
 * SQLITE_LIMIT_VARIABLE_NUMBER ids (one for any batch the RPC layer delivers by
 * default), counted in db->queries. UNAVAILABLE without a connection, INTERNAL
 * on an SQL error. */
asynq_status svc_db_in(svc_db *db, const char *select, const char *column,
    const char *tail, const int64_t *ids, size_t n, svc_row_fn fn, void *arg);

/* ---- Runtime with shared worker hooks ------------------------------------ */

/* A service's per-worker set-up and tear-down (either may be NULL). */
typedef struct svc_hook {
	void (*start)(asynq_runtime *rt, size_t worker, void *arg);
	void (*stop)(asynq_runtime *rt, size_t worker, void *arg);
	void *arg;
} svc_hook;

#define SVC_MAX_HOOKS 8

/* The hooks of every service that runs on one runtime. */
typedef struct svc_hooks {
	svc_hook hook[SVC_MAX_HOOKS];
	size_t n;
} svc_hooks;

/* svc_hooks_add appends h; RESOURCE_EXHAUSTED past SVC_MAX_HOOKS. */
asynq_status svc_hooks_add(svc_hooks *hs, svc_hook h);

/* svc_db_hook returns the hook that opens db's connection on each worker
 * when it starts and closes it when it stops. */
svc_hook svc_db_hook(svc_db *db);

/* svc_runtime_alloc starts a runtime of `workers` threads (0: one per CPU,
 * at most SVC_MAX_WORKERS) that runs every hook of hs (borrowed: it must
 * outlive the runtime) on each worker, with coroutine stacks big enough for
 * SQLite (256 KiB). Not from a worker. */
asynq_status svc_runtime_alloc(asynq_runtime **rtp, size_t workers,
    svc_hooks *hs);

/* ---- A service program over SQLite --------------------------------------- */

/* The program of a service over one SQLite database, run by
 * svc_sqlite_main on asynq_serve_main: flags --db PATH, --gen-users N (and
 * with answers_data --gen-answers N, --gen-questions N), --db-on-worker,
 * and the common ones; the data is made on first run with ensure; open
 * makes the service for the database (its svc_db and worker hook), serve
 * registers it (in asynq_serve_program.start). The caller frees what open
 * made after svc_sqlite_main returns. */
typedef struct svc_sqlite_program {
	const char *name;   /* "users" */
	const char *listen; /* --listen's default */
	const char *db;     /* --db's default; then the flag's value */
	bool answers_data;
	asynq_status (
	    *ensure)(const char *path, const svc_data_cfg *cfg, bool *created);
	asynq_status (
	    *open)(void *arg, const char *db, svc_db **dbp, svc_hook *hook);
	asynq_status (*serve)(void *arg, asynq_serve *sv);
	void *arg;
	/* svc_sqlite_main's own. */
	svc_data_cfg data;
	bool db_on_worker;
	svc_db *dbh;
	svc_hook hook;
} svc_sqlite_program;

/* svc_sqlite_main runs p and returns the exit code (asynq_serve_main's). */
int svc_sqlite_main(svc_sqlite_program *p, int argc, char **argv);

/* ---- Counters ------------------------------------------------------------ */

/* A service's counters, for programs that show them (the demo). */
typedef struct svc_counters {
	uint64_t calls;        /* calls served */
	uint64_t requests;     /* requests received (calls / requests is the
	                          average batch size) */
	uint64_t sql;          /* SQL statements run */
	uint64_t out_calls;    /* calls made to other services */
	uint64_t out_sent;     /* of which sent (identical calls of a batch
	                          go once) */
	uint64_t out_requests; /* requests they went out in */
	uint64_t shed;         /* requests admission control refused (the
	                          server was overloaded), not run */
	uint64_t shed_late;    /* of those, refused after they waited */
} svc_counters;

/* Reads a service's counters; any thread. */
typedef void (*svc_counters_fn)(void *arg, svc_counters *out);

/* ---- The admin endpoint (asynq/admin.h) ------------------------------- */

/* svc_admin_open opens the process's admin endpoint at url (--admin; NULL:
 * none, and OK) for the program `name` (static): the runtime
 * svc_runtime_alloc makes afterwards, the servers svc_serve makes and the
 * channels svc_admin_channel names are reported on it, /ready answering
 * 503 until a server listens. On failure it prints why ("users: admin
 * http://127.0.0.1:9090: address in use"). Main thread, once. */
asynq_status svc_admin_open(const char *url, const char *name);

/* svc_admin_as makes what is registered from now on be reported as part
 * of `name` (copied), for a process that runs several services (the
 * demo): runtimes as runtime="name", servers as server="name: <full
 * name>", channels as channel="name: <name>". NULL: back to the names of
 * svc_admin_open. Main thread. */
void svc_admin_as(const char *name);

/* svc_admin_url returns the admin endpoint's URL (with the port it got),
 * NULL when none is open. Main thread. */
const char *svc_admin_url(void);

/* svc_admin_channel reports ch as channel="name" on the admin endpoint, if
 * one is open. Main thread. */
void svc_admin_channel(asynq_rpc_channel *ch, const char *name);

/* svc_admin_close closes the admin endpoint, if open: call it after the
 * servers closed (so /ready said draining meanwhile) and before they,
 * their channels and the runtime are freed. Main thread. */
void svc_admin_close(void);

/* Registers a service's typed handler table on srv: its generated
 * <svc>__asynq_serve, with the service as ctx. */
typedef asynq_status (*svc_add_fn)(asynq_rpc_server *srv, void *arg);

/* svc_serve makes *srvp, a server on rt with settings cfg (NULL: the
 * defaults) for service svc, whose handlers add(srv, arg) registers,
 * listening at url, and reports it on the admin endpoint as server="<svc's
 * full name>". FAILED_PRECONDITION if *srvp is already set; on failure
 * *srvp stays NULL and the status says why (UNAVAILABLE: address in use).
 * Not from a worker. */
asynq_status svc_serve(asynq_rpc_server **srvp, asynq_runtime *rt,
    const asynq_rpc_service_desc *svc, svc_add_fn add, void *arg,
    const char *url, const asynq_rpc_server_cfg *cfg);

/* svc_server_counters adds a server's calls, requests and shed requests to
 * out. */
void svc_server_counters(const asynq_rpc_server *s, svc_counters *out);

#ifdef __cplusplus
}
#endif

#endif /* SERVICES_COMMON_SVC_H */
