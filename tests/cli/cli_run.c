/* SPDX-License-Identifier: MIT */
/*
 * The CLI tests' runner of the client (cli_run.h).
 */
#include <setjmp.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/cli/cli_run.h"

#define CLI "framework/cli/asynq"

static char *
slurp(int fd)
{
	size_t len = 0, cap = 4096;
	char *s = malloc(cap);
	ssize_t got;
	assert_non_null(s);
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	while ((got = read(fd, s + len, cap - len - 1)) > 0) {
		len += (size_t)got;
		if (len + 1 == cap) {
			cap *= 2;
			s = realloc(s, cap);
			assert_non_null(s);
		}
	}
	s[len] = '\0';
	close(fd);
	return s;
}

static int
tmpfd(void)
{
	const char *dir = getenv("TEST_TMPDIR");
	char path[512];
	snprintf(path, sizeof(path), "%s/cli.XXXXXX", dir ? dir : "/tmp");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	return fd;
}

run
cli(const char *in, const char *const *args)
{
	int fin = tmpfd(), fout = tmpfd(), ferr = tmpfd();
	if (in != NULL)
		assert_int_equal(write(fin, in, strlen(in)),
		    (ssize_t)strlen(in));
	assert_int_equal(lseek(fin, 0, SEEK_SET), 0);
	char *argv[32] = { (char *)CLI };
	size_t n = 1;
	while (args[n - 1] != NULL && n < 31) {
		argv[n] = (char *)args[n - 1];
		n++;
	}
	argv[n] = NULL;
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, fin, 0);
	posix_spawn_file_actions_adddup2(&fa, fout, 1);
	posix_spawn_file_actions_adddup2(&fa, ferr, 2);
	pid_t pid;
	extern char **environ;
	assert_int_equal(posix_spawn(&pid, CLI, &fa, NULL, argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	int ws;
	assert_int_equal(waitpid(pid, &ws, 0), pid);
	close(fin);
	run r = { WIFEXITED(ws) ? WEXITSTATUS(ws) : -1, slurp(fout),
		slurp(ferr) };
	return r;
}

void
run_free(run *r)
{
	free(r->out);
	free(r->err);
}
