/* SPDX-License-Identifier: MIT */
/*
 * Child processes of the fault tests and benchmarks (child.h).
 *
 * Design notes: everything the child needs (paths, argv) is built before
 * fork, since the parent has threads (nng's, a runtime's workers) and the
 * child may only call async-signal-safe functions until execv; so nothing
 * of nng crosses into the new image. The child reads stdin from /dev/null
 * and closes every descriptor it inherited but its output files before
 * execv. The "listening on" line is looked for in the child's stdout file,
 * which the service flushes after printing it. Waiting is polling with
 * asynq_sleep_for when the caller is a task, so the other tasks of its
 * thread run meanwhile, and nanosleep only when it is not.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "asynq/tools.h"
#include "tests/common/child.h"
#include "framework/core/platform.h"

#define MS (1000 * 1000ull)
#define MAX_CHILDREN 8
#define MAX_EXTRA 16

static char bindir[1024]; /* runfiles directory of the service programs */
static char tmpdir[1024];
static child *registered[MAX_CHILDREN];
static size_t n_registered;

/* TSan sleeps 1 s in a process's exit by default (to catch races at exit);
 * the children inherit this and would count it in the exit times the tests
 * measure. */
static void
tsan_no_exit_sleep(void)
{
#if ASYNQI_TSAN
	const char *old = getenv("TSAN_OPTIONS");
	char opts[1024];
	snprintf(opts, sizeof(opts), "%s%satexit_sleep_ms=0",
	    old != NULL ? old : "", old != NULL && old[0] != '\0' ? ":" : "");
	setenv("TSAN_OPTIONS", opts, 1);
#endif
}

static const char *
workspace(void)
{
	const char *ws = getenv("TEST_WORKSPACE");
	return ws != NULL && ws[0] != '\0' ? ws : "asynq";
}

bool
child_env_init(void)
{
	const char *dir = getenv("TEST_TMPDIR");
	const char *src = getenv("TEST_SRCDIR");
	snprintf(tmpdir, sizeof(tmpdir), "%s", dir != NULL ? dir : "/tmp");
	if (src == NULL) {
		fprintf(stderr,
		    "TEST_SRCDIR is not set: run with bazel test\n");
		return false;
	}
	snprintf(bindir, sizeof(bindir), "%s/%s/services", src, workspace());
	tsan_no_exit_sleep();
	return true;
}

bool
child_env_init_run(const char *outdir)
{
	const char *rf = getenv("RUNFILES_DIR");
	char exe[900];
	struct stat st;
	snprintf(tmpdir, sizeof(tmpdir), "%s", outdir);
	if (rf != NULL && rf[0] != '\0') {
		snprintf(bindir, sizeof(bindir), "%s/%s/services", rf,
		    workspace());
	} else {
		/* bazel run starts the program from its runfiles tree without
		 * saying where that is; it sits next to the executable. */
		ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
		if (n <= 0) {
			fprintf(stderr, "/proc/self/exe: %s\n",
			    strerror(errno));
			return false;
		}
		exe[n] = '\0';
		snprintf(bindir, sizeof(bindir), "%s.runfiles/%s/services", exe,
		    workspace());
	}
	if (stat(bindir, &st) != 0) {
		fprintf(stderr, "%s: %s: run with bazel run\n", bindir,
		    strerror(errno));
		return false;
	}
	tsan_no_exit_sleep();
	return true;
}

const char *
child_tmpdir(void)
{
	return tmpdir;
}

int
child_free_port(void)
{
	static unsigned seed;
	if (seed == 0)
		seed = (unsigned)getpid() ^ (unsigned)time(NULL);
	for (int i = 0; i < 100; i++) {
		int port = 20000 + (int)(rand_r(&seed) % 12000);
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in a = { .sin_family = AF_INET };
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a.sin_port = htons((uint16_t)port);
		bool ok =
		    fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
		if (fd >= 0)
			close(fd);
		if (ok)
			return port;
	}
	return -1;
}

bool
child_spawn(child *c, const char *name, const char *bin,
    const char *const *extra)
{
	static int seq;
	const char *argv[8 + MAX_EXTRA + 1];
	char path[1200];
	size_t argc = 0, n_extra = 0;

	while (extra != NULL && extra[n_extra] != NULL)
		n_extra++;
	if (n_extra > MAX_EXTRA) {
		fprintf(stderr, "%s: %zu arguments, at most %d\n", name,
		    n_extra, MAX_EXTRA);
		return false;
	}
	c->pid = 0;
	c->status = 0;
	snprintf(c->name, sizeof(c->name), "%s", name);
	snprintf(c->bin, sizeof(c->bin), "%s", bin);
	snprintf(c->url, sizeof(c->url), "tcp://127.0.0.1:%d", c->port);
	seq++;
	snprintf(c->out, sizeof(c->out), "%s/%s-%d.out", tmpdir, name, seq);
	snprintf(c->err, sizeof(c->err), "%s/%s-%d.err", tmpdir, name, seq);
	snprintf(path, sizeof(path), "%s/%s/%s", bindir, bin, bin);
	argv[argc++] = path;
	argv[argc++] = "--listen";
	argv[argc++] = c->url;
	argv[argc++] = "--workers";
	argv[argc++] = "2";
	/* Stopped at once: the tests that want the grace period ask. */
	argv[argc++] = "--drain-grace-ms";
	argv[argc++] = "0";
	for (size_t i = 0; i < n_extra; i++)
		argv[argc++] = extra[i];
	argv[argc] = NULL;

	fflush(NULL);
	pid_t parent = getpid();
	c->start_ns = asynq_now_ns();
	pid_t pid = fork();
	if (pid < 0) {
		fprintf(stderr, "%s: fork: %s\n", name, strerror(errno));
		return false;
	}
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(125); /* the test died before prctl */
		int o = open(c->out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int e = open(c->err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int i = open("/dev/null", O_RDONLY);
		if (o < 0 || e < 0 || i < 0 || dup2(o, 1) < 0 ||
		    dup2(e, 2) < 0 || dup2(i, 0) < 0)
			_exit(126);
		/* The test's sockets must not live on in the child: a proxy
		 * connection the test closes would stay open in it, and the
		 * peer would never see the cut. */
		if (close_range(3, ~0u, 0) != 0)
			for (int fd = 3; fd < 4096; fd++)
				close(fd);
		execv(path, (char *const *)argv);
		_exit(127);
	}
	c->pid = pid;
	return true;
}

/* Reads up to n - 1 bytes of path into buf, NUL-terminated. */
static void
read_head(const char *path, char *buf, size_t n)
{
	size_t len = 0;
	int fd = open(path, O_RDONLY);
	if (fd >= 0) {
		ssize_t k;
		while (
		    len + 1 < n && (k = read(fd, buf + len, n - 1 - len)) > 0)
			len += (size_t)k;
		close(fd);
	}
	buf[len] = '\0';
}

bool
child_listening(const child *c)
{
	char buf[512];
	read_head(c->out, buf, sizeof(buf));
	return strstr(buf, "listening on") != NULL;
}

bool
child_reap(child *c)
{
	if (c->pid == 0)
		return true;
	pid_t r = waitpid(c->pid, &c->status, WNOHANG);
	if (r == c->pid || (r < 0 && errno == ECHILD)) {
		c->pid = 0;
		return true;
	}
	return false;
}

/* Suspends task t for ns, or sleeps the thread when there is no task. */
static void
pause_ns(asynq_task *t, uint64_t ns)
{
	if (t != NULL) {
		asynq_sleep_for(t, ns);
		return;
	}
	struct timespec ts = { (time_t)(ns / 1000000000u),
		(long)(ns % 1000000000u) };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

typedef enum { LISTENING, EXITED, TIMED_OUT } listen_result;

static listen_result
wait_listening(asynq_task *t, child *c, int timeout_ms)
{
	uint64_t end = asynq_now_ns() + (uint64_t)timeout_ms * MS;
	listen_result r = TIMED_OUT;
	while (asynq_now_ns() < end) {
		if (child_listening(c))
			return LISTENING;
		if (child_reap(c)) {
			r = EXITED;
			break;
		}
		pause_ns(t, 2 * MS);
	}
	child_dump(c);
	child_kill(c);
	return r;
}

bool
child_wait_listening(asynq_task *t, child *c, int timeout_ms)
{
	return wait_listening(t, c, timeout_ms) == LISTENING;
}

bool
child_start(asynq_task *t, child *c, const char *name, const char *bin,
    const char *const *extra, int timeout_ms, char *why, size_t why_n)
{
	bool fresh = c->port == 0;
	for (int attempt = 0; attempt < 5; attempt++) {
		if (fresh && (c->port = child_free_port()) < 0) {
			c->port = 0;
			snprintf(why, why_n, "no free loopback port");
			return false;
		}
		if (!child_spawn(c, name, bin, extra)) {
			snprintf(why, why_n, "could not start %s", bin);
			return false;
		}
		listen_result r = wait_listening(t, c, timeout_ms);
		if (r == LISTENING)
			return true;
		if (r == TIMED_OUT) {
			snprintf(why, why_n,
			    "%s did not listen on %s within %d ms", name,
			    c->url, timeout_ms);
			return false;
		}
		char e[1024];
		read_head(c->err, e, sizeof(e));
		/* Another process may take a free port before the service
		 * binds it; only then is another port worth a try. */
		bool in_use = strstr(e, "in use") != NULL;
		char *nl = strchr(e, '\n');
		if (nl != NULL)
			*nl = '\0';
		if (e[0] != '\0')
			snprintf(why, why_n, "%s", e);
		else
			child_describe_exit(c, why, why_n);
		if (!fresh || !in_use)
			return false;
	}
	return false;
}

uint64_t
child_wait_exit(asynq_task *t, child *c, uint64_t since, int timeout_ms)
{
	uint64_t end = since + (uint64_t)timeout_ms * MS;
	for (;;) {
		if (child_reap(c)) {
			uint64_t ns = asynq_now_ns() - since;
			return ns != 0 ? ns : 1;
		}
		if (asynq_now_ns() >= end)
			return 0;
		pause_ns(t, 1 * MS);
	}
}

bool
child_exited_0(const child *c)
{
	return WIFEXITED(c->status) && WEXITSTATUS(c->status) == 0;
}

void
child_describe_exit(const child *c, char *buf, size_t n)
{
	if (WIFEXITED(c->status))
		snprintf(buf, n, "exit status %d", WEXITSTATUS(c->status));
	else if (WIFSIGNALED(c->status))
		snprintf(buf, n, "killed by signal %d", WTERMSIG(c->status));
	else
		snprintf(buf, n, "wait status %#x", (unsigned)c->status);
}

void
child_kill(child *c)
{
	if (c->pid <= 0)
		return;
	kill(c->pid, SIGKILL);
	while (waitpid(c->pid, &c->status, 0) < 0 && errno == EINTR)
		;
	c->pid = 0;
}

void
child_dump(const child *c)
{
	char o[4096], e[4096];
	read_head(c->out, o, sizeof(o));
	read_head(c->err, e, sizeof(e));
	fprintf(stderr, "---- %s (pid %d) stdout:\n%s---- stderr:\n%s----\n",
	    c->name, (int)c->pid, o, e);
}

void
child_register(child *c)
{
	if (n_registered < MAX_CHILDREN)
		registered[n_registered++] = c;
}

void
child_kill_all(void)
{
	for (size_t i = 0; i < n_registered; i++)
		child_kill(registered[i]);
}
