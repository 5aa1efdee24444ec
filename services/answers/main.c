/* SPDX-License-Identifier: MIT */
/*
 * The answers service as a program:
 *
 *   bazel run //services/answers -- --listen tcp://127.0.0.1:7002 \
 *       --workers 2 --db /tmp/asynq-answers.db
 *
 * It makes the database on first run (--gen-answers N answers, default
 * 1,000,000, over --gen-questions N questions, default 100,000, by
 * --gen-users N users, default 100,000),
 * prints where it listens, logs its counters at most once per second, and on
 * SIGINT or SIGTERM stops receiving, answers the calls in flight and exits 0.
 */
#include <stdio.h>
#include <stdlib.h>

#include "services/answers/answers.h"

int
main(int argc, char **argv)
{
	svc_flags f = {
		.listen = "tcp://127.0.0.1:7002",
		.db = "/tmp/asynq-answers.db",
	};
	svc_hooks hooks = { 0 };
	answers_service *s = NULL;
	asynq_runtime *rt = NULL;
	asynq_status rv;
	bool created;

	svc_signals_block();
	if (!svc_flags_parse(&f, argc, argv,
	        "[--listen URL] [--workers N] [--db PATH] [--gen-answers N]"
	        " [--gen-questions N] [--gen-users N]"
	        " [--admin URL] [--db-on-worker] [--quiet]"))
		return 2;
	if (svc_admin_open(f.admin, "answers") != ASYNQ_OK)
		return 1;
	if ((rv = svc_data_answers_ensure(f.db, &f.data, &created)) != ASYNQ_OK)
		goto fail;
	if (created)
		fprintf(stderr, "answers: generated %s\n", f.db);
	if ((rv = answers_service_alloc(&s, f.db)) == ASYNQ_OK)
		answers_service_db(s)->on_worker = f.db_on_worker;
	if (rv != ASYNQ_OK)
		goto fail;
	svc_hooks_add(&hooks, answers_service_hook(s));
	if ((rv = svc_runtime_alloc(&rt, f.workers, &hooks)) != ASYNQ_OK)
		goto fail;
	if ((rv = answers_service_start(s, rt, f.listen, &f.server)) !=
	    ASYNQ_OK)
		goto fail;
	printf("answers: listening on %s (%zu workers, db %s)\n", f.listen,
	    asynq_runtime_workers(rt), f.db);
	fflush(stdout);
	svc_run_until_signal("answers", answers_service_counters, s, f.quiet);
	fprintf(stderr, "answers: stopping\n");
	answers_service_close(s);
	svc_admin_close();
	asynq_runtime_free(rt);
	answers_service_free(s);
	return 0;
fail:
	fprintf(stderr, "answers: %s\n", asynq_strerror(rv));
	answers_service_close(s);
	svc_admin_close();
	asynq_runtime_free(rt);
	answers_service_free(s);
	return 1;
}
