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
 * It prints where it listens, logs its counters (calls served, calls and
 * requests made to users and answers) at most once per second, and on
 * SIGINT or SIGTERM stops receiving, answers the calls in flight and exits 0.
 */
#include <stdio.h>
#include <stdlib.h>

#include "services/frontend/frontend.h"

int
main(int argc, char **argv)
{
	svc_flags f = {
		.listen = "tcp://127.0.0.1:7000",
		.users_url = "tcp://127.0.0.1:7001",
		.answers_url = "tcp://127.0.0.1:7002",
	};
	frontend_service *s = NULL;
	asynq_runtime *rt = NULL;
	asynq_status rv;

	svc_signals_block();
	if (!svc_flags_parse(&f, argc, argv,
	        "[--listen URL] [--workers N] [--users URL[,URL...]]"
	        " [--answers URL[,URL...]] [--cache URL[,URL...]]"
	        " [--admin URL] [--quiet]"))
		return 2;
	if (svc_admin_open(f.admin, "frontend") != ASYNQ_OK)
		return 1;
	if ((rv = frontend_service_alloc(&s, f.users_url, f.answers_url,
	         f.cache_url)) != ASYNQ_OK)
		goto fail;
	if ((rv = svc_runtime_alloc(&rt, f.workers, NULL)) != ASYNQ_OK)
		goto fail;
	if ((rv = frontend_service_start(s, rt, f.listen, &f.server)) !=
	    ASYNQ_OK)
		goto fail;
	printf("frontend: listening on %s (%zu workers, users %s, answers %s,"
	       " cache %s)\n",
	    f.listen, asynq_runtime_workers(rt), f.users_url, f.answers_url,
	    f.cache_url != NULL ? f.cache_url : "none");
	fflush(stdout);
	svc_run_until_signal("frontend", frontend_service_counters, s, f.quiet);
	fprintf(stderr, "frontend: stopping\n");
	frontend_service_close(s);
	svc_admin_close();
	asynq_runtime_free(rt);
	frontend_service_free(s);
	return 0;
fail:
	fprintf(stderr, "frontend: %s\n", asynq_strerror(rv));
	frontend_service_close(s);
	svc_admin_close();
	asynq_runtime_free(rt);
	frontend_service_free(s);
	return 1;
}
