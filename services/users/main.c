/* SPDX-License-Identifier: MIT */
/*
 * The users service as a program:
 *
 *   bazel run //services/users -- --listen tcp://127.0.0.1:7001 \
 *       --workers 2 --db /tmp/asynq-users.db
 *
 * It makes the database on first run (--gen-users N users, default 100,000)
 * and is run by asynq_serve_main (asynq/serve.h: the common flags, the
 * counters log, and on SIGINT or SIGTERM a drain, then every call in flight
 * answered and exit 0).
 */
#include <stdio.h>

#include "services/users/users.h"

typedef struct program {
	const char *db;
	svc_data_cfg data;
	bool db_on_worker;
	users_service *s;
	svc_hook hook;
} program;

static asynq_status
prepare(void *arg)
{
	program *m = arg;
	bool created;
	asynq_status rv = svc_data_users_ensure(m->db, &m->data, &created);
	if (rv == ASYNQ_OK && created)
		fprintf(stderr, "users: generated %s\n", m->db);
	if (rv == ASYNQ_OK &&
	    (rv = users_service_alloc(&m->s, m->db)) == ASYNQ_OK) {
		users_service_db(m->s)->on_worker = m->db_on_worker;
		m->hook = users_service_hook(m->s);
	}
	if (rv != ASYNQ_OK)
		fprintf(stderr, "users: database %s: %s\n", m->db,
		    asynq_strerror(rv));
	return rv;
}

static void
worker_start(asynq_runtime *rt, size_t w, void *arg)
{
	program *m = arg;
	m->hook.start(rt, w, m->hook.arg);
}

static void
worker_stop(asynq_runtime *rt, size_t w, void *arg)
{
	program *m = arg;
	m->hook.stop(rt, w, m->hook.arg);
}

static asynq_status
start(asynq_serve *sv, void *arg)
{
	program *m = arg;
	return users_service_serve(m->s, sv);
}

static size_t
counters(void *arg, asynq_serve_counter *out)
{
	program *m = arg;
	out[0] = (asynq_serve_counter){ "sql",
		atomic_load(&users_service_db(m->s)->queries) };
	return 1;
}

int
main(int argc, char **argv)
{
	program m = { .db = "/tmp/asynq-users.db" };
	const asynq_serve_flag flags[] = {
		{ "db", ASYNQ_FLAG_STRING, &m.db, "PATH",
		    "the SQLite database (made on first run)" },
		{ "gen-users", ASYNQ_FLAG_SIZE, &m.data.users, "N",
		    "users to generate (default 100,000)" },
		{ "db-on-worker", ASYNQ_FLAG_BOOL, &m.db_on_worker, NULL,
		    "queries on the worker threads, not the blocking pool" },
	};
	const asynq_serve_program p = {
		.name = "users",
		.listen = "tcp://127.0.0.1:7001",
		.flags = flags,
		.n_flags = sizeof(flags) / sizeof(flags[0]),
		.stack_size = SVC_STACK_SIZE,
		.prepare = prepare,
		.worker_start = worker_start,
		.worker_stop = worker_stop,
		.start = start,
		.counters = counters,
		.arg = &m,
	};
	int rc = asynq_serve_main(&p, argc, argv);
	users_service_free(m.s);
	return rc;
}
