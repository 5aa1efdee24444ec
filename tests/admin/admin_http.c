/* SPDX-License-Identifier: MIT */
/*
 * Child processes with a time limit, curl GETs and JSON for the admin
 * tests (see admin_http.h).
 */
#include "tests/admin/admin_http.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

extern char **environ;

static int64_t
now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

ahttp_child
ahttp_spawn(char *const argv[], const char *err_path, const char *what)
{
	int op[2];
	assert_int_equal(pipe(op), 0);
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, op[1], 1);
	if (err_path != NULL)
		posix_spawn_file_actions_addopen(&fa, 2, err_path,
		    O_WRONLY | O_CREAT | O_APPEND, 0644);
	posix_spawn_file_actions_addclose(&fa, op[0]);
	posix_spawnattr_init(&at);
	/* A group of its own: Chromium's helpers are killed with it. */
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETPGROUP);
	posix_spawnattr_setpgroup(&at, 0);
	ahttp_child c = { .pid = -1, .out = op[0] };
	int err = posix_spawnp(&c.pid, argv[0], &fa, &at, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&at);
	close(op[1]);
	signal(SIGPIPE, SIG_IGN);
	if (err != 0) {
		close(op[0]);
		fail_msg("%s could not run (%s): run bazel/setup, which "
		         "installs %s",
		    argv[0], strerror(err), what);
	}
	return c;
}

/* Exited (a zombie, not reaped yet, so its process group cannot be
 * reused) without waiting? */
static bool
exited(const ahttp_child *c)
{
	siginfo_t si = { 0 };
	return waitid(P_PID, (id_t)c->pid, &si, WEXITED | WNOHANG | WNOWAIT) ==
	    0 &&
	    si.si_pid == c->pid;
}

/* Kills what is left of the child's group (helpers it started), then
 * reaps it; its exit status. */
static int
reap(ahttp_child *c)
{
	int ws = 0;
	kill(-c->pid, SIGKILL);
	while (waitpid(c->pid, &ws, 0) < 0 && errno == EINTR)
		;
	c->pid = -1;
	return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

bool
ahttp_done(ahttp_child *c, int *rc)
{
	if (c->pid <= 0 || !exited(c))
		return false;
	*rc = reap(c);
	return true;
}

int
ahttp_finish(ahttp_child *c, int timeout_ms, char **out)
{
	int64_t deadline = now_ms() + timeout_ms;
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap);
	assert_non_null(buf);
	bool timed_out = false;
	for (;;) {
		int64_t left = deadline - now_ms();
		if (left <= 0) {
			timed_out = true;
			break;
		}
		struct pollfd pf = { .fd = c->out, .events = POLLIN };
		int pr = poll(&pf, 1, (int)left);
		if (pr < 0 && errno == EINTR)
			continue;
		if (pr <= 0) {
			timed_out = pr == 0;
			break;
		}
		if (cap - len < 4096) {
			cap *= 2;
			buf = realloc(buf, cap);
			assert_non_null(buf);
		}
		ssize_t k = read(c->out, buf + len, cap - len - 1);
		if (k <= 0)
			break;
		len += (size_t)k;
	}
	buf[len] = '\0';
	close(c->out);
	/* Output ended: the child exits soon; give it until the deadline. */
	while (!timed_out && c->pid > 0 && !exited(c)) {
		if (now_ms() >= deadline) {
			timed_out = true;
			break;
		}
		struct timespec ts = { 0, 5000000 };
		nanosleep(&ts, NULL);
	}
	int rc = c->pid > 0 ? reap(c) : -1;
	if (timed_out) {
		free(buf);
		fail_msg("a child process did not finish within %d ms (killed)",
		    timeout_ms);
	}
	*out = buf;
	return rc;
}

page
http_get(const char *url, int timeout_s)
{
	char t[16];
	snprintf(t, sizeof(t), "%d", timeout_s);
	char *argv[] = { "curl", "-sS", "--max-time", t, "-o", "-", "-w",
		"\n@@%{http_code} %{content_type}", (char *)url, NULL };
	ahttp_child c = ahttp_spawn(argv, NULL, "Debian's curl package");
	char *out;
	int rc = ahttp_finish(&c, (timeout_s + 10) * 1000, &out);
	if (rc != 0)
		fail_msg("curl %s exited %d: %s", url, rc, out);
	page p = { 0 };
	char *tail = strstr(out, "\n@@");
	assert_non_null(tail);
	*tail = '\0';
	assert_true(sscanf(tail + 3, "%d %127[^\n]", &p.status, p.ctype) >= 1);
	p.body = out;
	return p;
}

page
admin_get(const asynq_admin *a, const char *path)
{
	char url[256];
	snprintf(url, sizeof(url), "%s%s", asynq_admin_url(a), path);
	return http_get(url, 60);
}

json_t *
json_of(const page *p)
{
	json_error_t err;
	json_t *j = json_loads(p->body, 0, &err);
	if (j == NULL)
		fail_msg("not JSON (line %d: %s):\n%.2000s", err.line, err.text,
		    p->body);
	return j;
}

json_t *
json_find(json_t *arr, const char *key, const char *val)
{
	size_t i;
	json_t *e;
	json_array_foreach(arr, i, e)
	{
		const char *s = json_string_value(json_object_get(e, key));
		if (s != NULL && strcmp(s, val) == 0)
			return e;
	}
	return NULL;
}

double
json_num(json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);
	if (!json_is_number(v)) {
		char *d = json_dumps(obj, JSON_COMPACT);
		fail_msg("%s is not a number in %.1000s", key, d);
	}
	return json_number_value(v);
}

asynq_admin *
admin_start(void)
{
	asynq_admin *a;
	char err[256];
	if (asynq_admin_open(&a, "http://127.0.0.1:0", err, sizeof(err)) !=
	    ASYNQ_OK)
		fail_msg("admin open: %s", err);
	return a;
}

void
test_path(char *buf, size_t n, const char *dir_env, const char *name)
{
	const char *d = getenv(dir_env);
	snprintf(buf, n, "%s/%s", d != NULL && d[0] != '\0' ? d : "/tmp", name);
}
