/* SPDX-License-Identifier: MIT */
/*
 * The cache service as a program:
 *
 *   bazel run //services/cache -- --listen tcp://127.0.0.1:7003 \
 *       --workers 2 [--max-mb 64] [--exec-log FILE]
 *
 * Run by asynq_serve_main (asynq/serve.h: the common flags, the counters
 * log, and on SIGINT or SIGTERM a drain, then every call in flight answered
 * and exit 0). --exec-log FILE appends a record (cache.h: cache_exec_record)
 * for each Incr it runs, with write(2) on an O_APPEND descriptor, so the
 * records of answered calls survive even SIGKILL; tests count executions
 * with it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "services/cache/cache.h"

typedef struct program {
	size_t max_mb;
	const char *exec_log;
	int log_fd;
	cache_service *s;
} program;

static asynq_status
prepare(void *arg)
{
	program *m = arg;
	if (m->max_mb == 0 || m->max_mb > (SIZE_MAX >> 20)) {
		fprintf(stderr, "cache: --max-mb %zu: give 1 or more MiB\n",
		    m->max_mb);
		return ASYNQ_INVALID_ARGUMENT;
	}
	if (m->exec_log != NULL &&
	    (m->log_fd = open(m->exec_log,
	         O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644)) < 0) {
		fprintf(stderr, "cache: exec log %s: %s\n", m->exec_log,
		    strerror(errno));
		return ASYNQ_UNAVAILABLE;
	}
	asynq_status rv = cache_service_alloc(&m->s, m->max_mb << 20);
	if (rv != ASYNQ_OK) {
		fprintf(stderr, "cache: %s\n", asynq_strerror(rv));
		return rv;
	}
	if (m->log_fd >= 0)
		cache_service_exec_log_set(m->s, m->log_fd);
	return ASYNQ_OK;
}

static asynq_status
start(asynq_serve *sv, void *arg)
{
	program *m = arg;
	return cache_service_serve(m->s, sv);
}

int
main(int argc, char **argv)
{
	program m = { .max_mb = 64, .log_fd = -1 };
	const asynq_serve_flag flags[] = {
		{ "max-mb", ASYNQ_FLAG_SIZE, &m.max_mb, "N",
		    "memory for entries, MiB (default 64)" },
		{ "exec-log", ASYNQ_FLAG_STRING, &m.exec_log, "FILE",
		    "append a record for each Incr run" },
	};
	const asynq_serve_program p = {
		.name = "cache",
		.listen = "tcp://127.0.0.1:7003",
		.flags = flags,
		.n_flags = sizeof(flags) / sizeof(flags[0]),
		.prepare = prepare,
		.start = start,
		.arg = &m,
	};
	int rc = asynq_serve_main(&p, argc, argv);
	cache_service_free(m.s);
	if (m.log_fd >= 0)
		close(m.log_fd);
	return rc;
}
