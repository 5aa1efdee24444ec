/* SPDX-License-Identifier: MIT */
/*
 * The answers service as a program:
 *
 *   bazel run //services/answers -- --listen tcp://127.0.0.1:7002 \
 *       --workers 2 --db /tmp/asynq-answers.db
 *
 * It makes the database on first run (--gen-answers, --gen-questions,
 * --gen-users: how many of each)
 * and is run by asynq_serve_main (asynq/serve.h: the common flags, the
 * counters log, and on SIGINT or SIGTERM a drain, then every call in flight
 * answered and exit 0).
 */
#include <stdio.h>

#include "services/answers/answers.h"

typedef struct program {
	const char *db;
	svc_data_cfg data;
	bool db_on_worker;
	answers_service *s;
	svc_hook hook;
} program;

static asynq_status
prepare(void *arg)
{
	program *m = arg;
	bool created;
	asynq_status rv = svc_data_answers_ensure(m->db, &m->data, &created);
	if (rv == ASYNQ_OK && created)
		fprintf(stderr, "answers: generated %s\n", m->db);
	if (rv == ASYNQ_OK &&
	    (rv = answers_service_alloc(&m->s, m->db)) == ASYNQ_OK) {
		answers_service_db(m->s)->on_worker = m->db_on_worker;
		m->hook = answers_service_hook(m->s);
	}
	if (rv != ASYNQ_OK)
		fprintf(stderr, "answers: database %s: %s\n", m->db,
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
	return answers_service_serve(m->s, sv);
}

static size_t
counters(void *arg, asynq_serve_counter *out)
{
	program *m = arg;
	out[0] = (asynq_serve_counter){ "sql",
		atomic_load(&answers_service_db(m->s)->queries) };
	return 1;
}

int
main(int argc, char **argv)
{
	program m = { .db = "/tmp/asynq-answers.db" };
	const asynq_serve_flag flags[] = {
		{ "db", ASYNQ_FLAG_STRING, &m.db, "PATH",
		    "the SQLite database (made on first run)" },
		{ "gen-answers", ASYNQ_FLAG_SIZE, &m.data.answers, "N",
		    "answers to generate (default 1,000,000)" },
		{ "gen-questions", ASYNQ_FLAG_SIZE, &m.data.questions, "N",
		    "questions they answer (default 100,000)" },
		{ "gen-users", ASYNQ_FLAG_SIZE, &m.data.users, "N",
		    "users who wrote them (default 100,000)" },
		{ "db-on-worker", ASYNQ_FLAG_BOOL, &m.db_on_worker, NULL,
		    "queries on the worker threads, not the blocking pool" },
	};
	const asynq_serve_program p = {
		.name = "answers",
		.listen = "tcp://127.0.0.1:7002",
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
	answers_service_free(m.s);
	return rc;
}
