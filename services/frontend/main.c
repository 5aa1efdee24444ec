/* SPDX-License-Identifier: MIT */
/*
 * The frontend service as a program:
 *
 *   bazel run //services/frontend -- --listen tcp://127.0.0.1:7000 \
 *       --workers 2 --users tcp://127.0.0.1:7001 \
 *       --answers tcp://127.0.0.1:7002 [--cache tcp://127.0.0.1:7003]
 *
 * With --cache it reads users' names cache-aside through the cache service.
 * Each of --users, --answers and --cache may be a comma-separated list of
 * replicas' URLs or a name, dns:///users.svc.local:7001 (resolved again
 * every 30 s): requests go to the replica with the fewest outstanding.
 * Run by asynq_serve_main (asynq/serve.h: the common flags; the counters
 * log with the calls and requests it made to users and answers; on SIGINT
 * or SIGTERM a drain, then every call in flight answered and exit 0).
 */
#include <stdio.h>

#include "services/frontend/frontend.h"

typedef struct program {
	const char *users, *answers, *cache;
	frontend_service *s;
} program;

static asynq_status
prepare(void *arg)
{
	program *m = arg;
	asynq_status rv =
	    frontend_service_alloc(&m->s, m->users, m->answers, m->cache);
	if (rv != ASYNQ_OK)
		fprintf(stderr,
		    "frontend: channels to users %s, answers %s, cache %s: "
		    "%s\n",
		    m->users, m->answers, m->cache != NULL ? m->cache : "none",
		    asynq_strerror(rv));
	return rv;
}

static asynq_status
start(asynq_serve *sv, void *arg)
{
	program *m = arg;
	return frontend_service_serve(m->s, sv);
}

int
main(int argc, char **argv)
{
	program m = {
		.users = "tcp://127.0.0.1:7001",
		.answers = "tcp://127.0.0.1:7002",
	};
	const asynq_serve_flag flags[] = {
		{ "users", ASYNQ_FLAG_STRING, &m.users, "URL[,URL...]",
		    "the users service: replicas, or a dns:/// name" },
		{ "answers", ASYNQ_FLAG_STRING, &m.answers, "URL[,URL...]",
		    "the answers service: replicas, or a dns:/// name" },
		{ "cache", ASYNQ_FLAG_STRING, &m.cache, "URL[,URL...]",
		    "the cache service (default: none)" },
	};
	const asynq_serve_program p = {
		.name = "frontend",
		.listen = "tcp://127.0.0.1:7000",
		.flags = flags,
		.n_flags = sizeof(flags) / sizeof(flags[0]),
		.stack_size = SVC_STACK_SIZE,
		.prepare = prepare,
		.start = start,
		.arg = &m,
	};
	int rc = asynq_serve_main(&p, argc, argv);
	frontend_service_free(m.s);
	return rc;
}
