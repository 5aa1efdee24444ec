/* SPDX-License-Identifier: MIT */
/*
 * The users service as a program:
 *
 *   bazel run //services/users -- --listen tcp://127.0.0.1:7001 \
 *       --workers 2 --db /tmp/asynq-users.db
 *
 * It makes the database on first run (--gen-users N users, default 100,000),
 * prints where it listens, logs its counters at most once per second, and on
 * SIGINT or SIGTERM stops receiving, answers the calls in flight and exits 0.
 */
#include <stdio.h>
#include <stdlib.h>

#include "services/users/users.h"

int
main(int argc, char **argv)
{
	svc_flags f = {
		.listen = "tcp://127.0.0.1:7001",
		.db = "/tmp/asynq-users.db",
	};
	svc_hooks hooks = { 0 };
	users_service *s = NULL;
	asynq_runtime *rt = NULL;
	asynq_status rv;
	bool created;

	svc_signals_block();
	if (!svc_flags_parse(&f, argc, argv,
	        "[--listen URL] [--workers N] [--db PATH] [--gen-users N]"
	        " [--admin URL] [--db-on-worker] [--quiet]"))
		return 2;
	if (svc_admin_open(f.admin, "users") != ASYNQ_OK)
		return 1;
	if ((rv = svc_data_users_ensure(f.db, &f.data, &created)) != ASYNQ_OK)
		goto fail;
	if (created)
		fprintf(stderr, "users: generated %s\n", f.db);
	if ((rv = users_service_alloc(&s, f.db)) == ASYNQ_OK)
		users_service_db(s)->on_worker = f.db_on_worker;
	if (rv != ASYNQ_OK)
		goto fail;
	svc_hooks_add(&hooks, users_service_hook(s));
	if ((rv = svc_runtime_alloc(&rt, f.workers, &hooks)) != ASYNQ_OK)
		goto fail;
	if ((rv = users_service_start(s, rt, f.listen, &f.server)) != ASYNQ_OK)
		goto fail;
	printf("users: listening on %s (%zu workers, db %s)\n", f.listen,
	    asynq_runtime_workers(rt), f.db);
	fflush(stdout);
	svc_run_until_signal("users", users_service_counters, s, f.quiet);
	fprintf(stderr, "users: stopping\n");
	users_service_close(s);
	svc_admin_close();
	asynq_runtime_free(rt);
	users_service_free(s);
	return 0;
fail:
	fprintf(stderr, "users: %s\n", asynq_strerror(rv));
	users_service_close(s);
	svc_admin_close();
	asynq_runtime_free(rt);
	users_service_free(s);
	return 1;
}
