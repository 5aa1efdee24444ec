/* SPDX-License-Identifier: MIT */
/*
 * The users service as a program:
 *
 *   bazel run //services/users -- --listen tcp://127.0.0.1:7001 \
 *       --workers 2 --db /tmp/asynq-users.db
 *
 * It makes the database on first run (--gen-users N users, default 100,000)
 * and is run by svc_sqlite_main on asynq_serve_main (asynq/serve.h: the
 * common flags, the counters log, and on SIGINT or SIGTERM a drain, then
 * every call in flight answered and exit 0).
 */
#include "services/users/users.h"

static asynq_status
open_users(void *arg, const char *db, svc_db **dbp, svc_hook *hook)
{
	users_service **sp = arg;
	asynq_status rv = users_service_alloc(sp, db);
	if (rv == ASYNQ_OK) {
		*dbp = users_service_db(*sp);
		*hook = users_service_hook(*sp);
	}
	return rv;
}

static asynq_status
serve_users(void *arg, asynq_serve *sv)
{
	users_service **sp = arg;
	return users_service_serve(*sp, sv);
}

int
main(int argc, char **argv)
{
	users_service *s = NULL;
	svc_sqlite_program p = {
		.name = "users",
		.listen = "tcp://127.0.0.1:7001",
		.db = "/tmp/asynq-users.db",
		.ensure = svc_data_users_ensure,
		.open = open_users,
		.serve = serve_users,
		.arg = &s,
	};
	int rc = svc_sqlite_main(&p, argc, argv);
	users_service_free(s);
	return rc;
}
