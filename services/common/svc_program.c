/* SPDX-License-Identifier: MIT */
/*
 * The program of a service over one SQLite database (users, answers), on
 * asynq_serve_main: the database flags, making the data on first run,
 * opening each worker's connection, the SQL counter in the counters log.
 * The service itself comes from the program's open and serve functions.
 */
#include <stdio.h>

#include "services/common/svc.h"

static asynq_status
prepare(void *arg)
{
	svc_sqlite_program *p = arg;
	bool created;
	asynq_status rv = p->ensure(p->db, &p->data, &created);
	if (rv == ASYNQ_OK && created)
		fprintf(stderr, "%s: generated %s\n", p->name, p->db);
	if (rv == ASYNQ_OK &&
	    (rv = p->open(p->arg, p->db, &p->dbh, &p->hook)) == ASYNQ_OK)
		p->dbh->on_worker = p->db_on_worker;
	if (rv != ASYNQ_OK)
		fprintf(stderr, "%s: database %s: %s\n", p->name, p->db,
		    asynq_strerror(rv));
	return rv;
}

static void
worker_start(asynq_runtime *rt, size_t w, void *arg)
{
	svc_sqlite_program *p = arg;
	p->hook.start(rt, w, p->hook.arg);
}

static void
worker_stop(asynq_runtime *rt, size_t w, void *arg)
{
	svc_sqlite_program *p = arg;
	p->hook.stop(rt, w, p->hook.arg);
}

static asynq_status
start(asynq_serve *sv, void *arg)
{
	svc_sqlite_program *p = arg;
	return p->serve(p->arg, sv);
}

static size_t
counters(void *arg, asynq_serve_counter *out)
{
	svc_sqlite_program *p = arg;
	out[0] = (asynq_serve_counter){ "sql", atomic_load(&p->dbh->queries) };
	return 1;
}

int
svc_sqlite_main(svc_sqlite_program *p, int argc, char **argv)
{
	asynq_serve_flag flags[6];
	size_t n = 0;
	flags[n++] = (asynq_serve_flag){ "db", ASYNQ_FLAG_STRING, &p->db,
		"PATH", "the SQLite database (made on first run)" };
	if (p->answers_data) {
		flags[n++] = (asynq_serve_flag){ "gen-answers", ASYNQ_FLAG_SIZE,
			&p->data.answers, "N",
			"answers to generate (default 1,000,000)" };
		flags[n++] = (asynq_serve_flag){ "gen-questions",
			ASYNQ_FLAG_SIZE, &p->data.questions, "N",
			"questions they answer (default 100,000)" };
	}
	flags[n++] = (asynq_serve_flag){ "gen-users", ASYNQ_FLAG_SIZE,
		&p->data.users, "N",
		p->answers_data ? "users who wrote them (default 100,000)"
		                : "users to generate (default 100,000)" };
	flags[n++] = (asynq_serve_flag){ "db-on-worker", ASYNQ_FLAG_BOOL,
		&p->db_on_worker, NULL,
		"queries on the worker threads, not the blocking pool" };
	const asynq_serve_program prog = {
		.name = p->name,
		.listen = p->listen,
		.flags = flags,
		.n_flags = n,
		.stack_size = SVC_STACK_SIZE,
		.prepare = prepare,
		.worker_start = worker_start,
		.worker_stop = worker_stop,
		.start = start,
		.counters = counters,
		.arg = p,
	};
	return asynq_serve_main(&prog, argc, argv);
}
