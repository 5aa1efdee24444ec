/* SPDX-License-Identifier: MIT */
/*
 * The cache service as a program:
 *
 *   bazel run //services/cache -- --listen tcp://127.0.0.1:7003 \
 *       --workers 2 [--max-mb 64] [--exec-log FILE]
 *
 * It prints where it listens, logs its counters at most once per second, and
 * on SIGINT or SIGTERM stops receiving, answers the calls in flight and exits
 * 0. --exec-log FILE appends a record (cache.h: cache_exec_record) for each
 * Incr it runs, with write(2) on an O_APPEND descriptor, so the records of
 * answered calls survive even SIGKILL; tests count executions with it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "services/cache/cache.h"

int
main(int argc, char **argv)
{
	svc_flags f = { .listen = "tcp://127.0.0.1:7003" };
	cache_service *s = NULL;
	asynq_runtime *rt = NULL;
	asynq_status rv;
	size_t max_mb = 64;
	const char *exec_log = NULL;
	int log_fd = -1;

	svc_signals_block();
	/* --max-mb and --exec-log are the cache's own flags; the rest are the
	 * common ones. */
	for (int i = 1; i + 1 < argc;) {
		if (strcmp(argv[i], "--max-mb") == 0)
			max_mb = strtoull(argv[i + 1], NULL, 10);
		else if (strcmp(argv[i], "--exec-log") == 0)
			exec_log = argv[i + 1];
		else {
			i++;
			continue;
		}
		memmove(&argv[i], &argv[i + 2],
		    (size_t)(argc - i - 1) * sizeof(*argv));
		argc -= 2;
	}
	if (!svc_flags_parse(&f, argc, argv,
	        "[--listen URL] [--workers N] [--max-mb N] [--exec-log FILE] "
	        "[--admin URL] [--quiet]"))
		return 2;
	if (svc_admin_open(f.admin, "cache") != ASYNQ_OK)
		return 1;
	if (exec_log != NULL &&
	    (log_fd = open(exec_log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC,
	         0644)) < 0) {
		fprintf(stderr, "cache: exec log %s: %s\n", exec_log,
		    strerror(errno));
		return 1;
	}
	if ((rv = cache_service_alloc(&s, max_mb << 20)) != ASYNQ_OK)
		goto fail;
	if (log_fd >= 0)
		cache_service_exec_log_set(s, log_fd);
	if ((rv = svc_runtime_alloc(&rt, f.workers, NULL)) != ASYNQ_OK)
		goto fail;
	if ((rv = cache_service_start(s, rt, f.listen, &f.server)) != ASYNQ_OK)
		goto fail;
	printf("cache: listening on %s (%zu workers, %zu MiB)\n", f.listen,
	    asynq_runtime_workers(rt), max_mb);
	fflush(stdout);
	svc_run_until_signal("cache", cache_service_counters, s, f.quiet);
	fprintf(stderr, "cache: stopping\n");
	cache_service_close(s);
	svc_admin_close();
	asynq_runtime_free(rt);
	cache_service_free(s);
	if (log_fd >= 0)
		close(log_fd);
	return 0;
fail:
	fprintf(stderr, "cache: %s\n", asynq_strerror(rv));
	cache_service_close(s);
	svc_admin_close();
	asynq_runtime_free(rt);
	cache_service_free(s);
	if (log_fd >= 0)
		close(log_fd);
	return 1;
}
