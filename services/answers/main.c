/* SPDX-License-Identifier: MIT */
/*
 * The answers service as a program:
 *
 *   bazel run //services/answers -- --listen tcp://127.0.0.1:7002 \
 *       --workers 2 --db /tmp/asynq-answers.db
 *
 * It makes the database on first run (--gen-answers, --gen-questions,
 * --gen-users: how many of each) and is run by svc_sqlite_main on
 * asynq_serve_main (asynq/serve.h: the common flags, the counters log, and
 * on SIGINT or SIGTERM a drain, then every call in flight answered and
 * exit 0).
 */
#include "services/answers/answers.h"

static asynq_status
open_answers(void *arg, const char *db, svc_db **dbp, svc_hook *hook)
{
	answers_service **sp = arg;
	asynq_status rv = answers_service_alloc(sp, db);
	if (rv == ASYNQ_OK) {
		*dbp = answers_service_db(*sp);
		*hook = answers_service_hook(*sp);
	}
	return rv;
}

static asynq_status
serve_answers(void *arg, asynq_serve *sv)
{
	answers_service **sp = arg;
	return answers_service_serve(*sp, sv);
}

int
main(int argc, char **argv)
{
	answers_service *s = NULL;
	svc_sqlite_program p = {
		.name = "answers",
		.listen = "tcp://127.0.0.1:7002",
		.db = "/tmp/asynq-answers.db",
		.answers_data = true,
		.ensure = svc_data_answers_ensure,
		.open = open_answers,
		.serve = serve_answers,
		.arg = &s,
	};
	int rc = svc_sqlite_main(&p, argc, argv);
	answers_service_free(s);
	return rc;
}
