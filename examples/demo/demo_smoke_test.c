/* SPDX-License-Identifier: MIT */
/*
 * The demo on small data with a tiny workload, in one process over inproc://
 * and as processes over TCP: it must exit 0, the batched run must send
 * fewer requests than calls to every service, and the unbatched run one
 * request per call. Also: a service that cannot listen makes the demo exit
 * non-zero, naming the service and its address; and --serve keeps a load
 * running, watched on the status JSON its admin endpoint serves (fetched
 * with curl), until SIGTERM, when it exits 0.
 *
 * Each case runs demo_main in a forked child (the demo forks its service
 * processes before it uses nng, so the test process never touches nng);
 * the child hands its figures back through shared memory and its stderr
 * through a pipe. Assertions run in the test process only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <poll.h>
#include <signal.h>
#include <time.h>

#include "examples/demo/demo.h"
#include "tests/admin/admin_http.h"

typedef struct outcome {
	int status; /* exit status, or -1 if the child did not exit */
	char err[8192];
	demo_result res;
} outcome;

/* Runs the demo with the smoke-test flags plus `extra` in a child. */
static void
run_demo(const char *const *extra, size_t n_extra, outcome *o)
{
	static char data_dir[1024];
	const char *dir = getenv("TEST_TMPDIR");
	/* Admission control off: the checks below count every request and
	 * lookup, and under a sanitizer's slowdown the unbatched run's bursts
	 * of one-call requests would queue past the 5 ms target and be shed
	 * (tests/rpc:test_admission and the fault suite cover refusals). */
	const char *argv[32] = { "demo", "--small", "--requests", "40",
		"--pages", "10", "--inflight", "8", "--workers", "2", "--quiet",
		"--queue-target-us", "off", "--data-dir", data_dir };
	size_t argc = 15;
	demo_result *shared = mmap(NULL, sizeof(*shared),
	    PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int errp[2];

	snprintf(data_dir, sizeof(data_dir), "%s/demo-data",
	    dir != NULL ? dir : "/tmp");
	for (size_t i = 0; i < n_extra; i++)
		argv[argc++] = extra[i];
	assert_true(shared != MAP_FAILED);
	assert_int_equal(pipe(errp), 0);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(errp[0]);
		dup2(errp[1], 2);
		close(errp[1]);
		exit(demo_main((int)argc, (char **)argv, shared));
	}
	close(errp[1]);
	size_t len = 0;
	ssize_t r;
	while ((r = read(errp[0], o->err + len, sizeof(o->err) - 1 - len)) > 0)
		len += (size_t)r;
	o->err[len] = '\0';
	close(errp[0]);
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	o->status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
	o->res = *shared;
	munmap(shared, sizeof(*shared));
	if (o->status != 0)
		fprintf(stderr, "demo's stderr:\n%s", o->err);
}

static void
check_batching(const demo_result *r)
{
	const demo_run *b = &r->batched, *u = &r->unbatched;

	assert_true(b->ran);
	assert_true(u->ran);
	assert_int_equal(b->requests, 50);
	assert_int_equal(u->requests, 50);
	for (int k = 0; k < DEMO_N_SVC; k++) {
		assert_true(b->svc[k].calls > 1);
		assert_true(b->svc[k].requests < b->svc[k].calls);
		assert_int_equal(u->svc[k].requests, u->svc[k].calls);
	}
	/* One SQL query per request for the whole-batch lookups. */
	assert_true(b->svc[DEMO_USERS].sql < b->svc[DEMO_USERS].calls);
	assert_true(b->svc[DEMO_ANSWERS].sql < b->svc[DEMO_ANSWERS].calls);
	assert_true(b->svc[DEMO_FRONTEND].out_requests <
	    b->svc[DEMO_FRONTEND].out_calls);
	assert_int_equal(u->svc[DEMO_FRONTEND].out_requests,
	    u->svc[DEMO_FRONTEND].out_calls);
	assert_int_equal(u->svc[DEMO_ANSWERS].sql, u->svc[DEMO_ANSWERS].calls);
}

static void
test_demo_inproc_batches(void **state)
{
	(void)state;
	static outcome o;
	run_demo(NULL, 0, &o);
	assert_int_equal(o.status, 0);
	check_batching(&o.res);
}

static void
test_demo_tcp_batches(void **state)
{
	(void)state;
	static outcome o;
	const char *extra[] = { "--tcp" };
	run_demo(extra, 1, &o);
	assert_int_equal(o.status, 0);
	check_batching(&o.res);
}

/* --mtls-dir: the services as processes on tls+tcp:// requiring client
 * certificates, made with openssl in the directory on the first run and
 * used as they are on the next; batching as over TCP. A demo whose own
 * certificate is not of the services' CA gets no request through. */
static void
test_demo_mtls_batches(void **state)
{
	(void)state;
	static outcome o;
	static char dir[1024], ca[1100], cmd[3400];
	const char *tmp = getenv("TEST_TMPDIR");
	snprintf(dir, sizeof(dir), "%s/demo-mtls", tmp != NULL ? tmp : "/tmp");
	snprintf(ca, sizeof(ca), "%s/ca.crt", dir);
	const char *extra[] = { "--mtls-dir", dir };
	run_demo(extra, 2, &o);
	assert_int_equal(o.status, 0);
	check_batching(&o.res);
	struct stat st1, st2;
	assert_int_equal(stat(ca, &st1), 0);
	run_demo(extra, 2, &o);
	assert_int_equal(o.status, 0);
	assert_int_equal(stat(ca, &st2), 0);
	assert_true(st1.st_mtim.tv_sec == st2.st_mtim.tv_sec &&
	    st1.st_mtim.tv_nsec == st2.st_mtim.tv_nsec);
	assert_int_equal(o.res.batched.requests, 50);

	/* The demo's certificate swapped for a self-signed one. */
	snprintf(cmd, sizeof(cmd),
	    "cd '%s' && openssl req -x509 -newkey ec -pkeyopt "
	    "ec_paramgen_curve:prime256v1 -nodes -days 2 -keyout demo.key "
	    "-out demo.crt -subj /CN=demo >/dev/null 2>&1",
	    dir);
	assert_int_equal(system(cmd), 0);
	const char *bad[] = { "--mtls-dir", dir, "--batching-only" };
	run_demo(bad, 3, &o);
	assert_int_equal(o.status, 1);
	assert_int_equal(o.res.batched.requests, 0);
	assert_int_equal(o.res.batched.svc[DEMO_FRONTEND].calls, 0);
}

/* --replicas 3: users and answers run as three processes each; every
 * replica serves some of the calls, and their calls add up to the
 * service's. */
static void
test_demo_replicas_share_calls(void **state)
{
	(void)state;
	static outcome o;
	const char *extra[] = { "--replicas", "3" };
	run_demo(extra, 2, &o);
	assert_int_equal(o.status, 0);
	check_batching(&o.res);
	/* Unbatched, each call is a request of its own: hundreds, so each
	 * replica's share is never empty; batched, a few requests. */
	const demo_run *runs[] = { &o.res.batched, &o.res.unbatched };
	for (int k = 0; k < 2; k++) {
		const demo_run *b = runs[k];
		assert_int_equal(b->replicas, 3);
		for (int j = 0; j < 2; j++) {
			uint64_t sum = 0;
			for (size_t r = 0; r < 3; r++) {
				assert_true(
				    k == 0 || b->replica_calls[j][r] > 0);
				sum += b->replica_calls[j][r];
			}
			assert_int_equal(sum,
			    b->svc[j == 0 ? DEMO_USERS : DEMO_ANSWERS].calls);
		}
	}
}

/* --replicas takes 1 to 8 (DEMO_MAX_REPLICAS): 0 and 9 are bad flags. */
static void
test_demo_replicas_bounds(void **state)
{
	(void)state;
	static outcome o;
	const char *zero[] = { "--replicas", "0" };
	run_demo(zero, 2, &o);
	assert_int_equal(o.status, 2);
	const char *nine[] = { "--replicas", "9" };
	run_demo(nine, 2, &o);
	assert_int_equal(o.status, 2);
	assert_non_null(strstr(o.err, "--replicas N"));
}

/* Hot answers: identical lookups of a batch go once, so the frontend sends
 * fewer calls than it makes; with --no-collapse it sends them all. */
static void
test_demo_hot_answers_collapse(void **state)
{
	(void)state;
	static outcome o;
	const char *hot[] = { "--hot", "60", "--batching-only" };
	run_demo(hot, 3, &o);
	assert_int_equal(o.status, 0);
	const svc_counters *f = &o.res.batched.svc[DEMO_FRONTEND];
	assert_true(f->out_sent < f->out_calls);
	assert_int_equal(f->out_sent,
	    o.res.batched.svc[DEMO_USERS].calls +
	        o.res.batched.svc[DEMO_ANSWERS].calls +
	        o.res.batched.svc[DEMO_CACHE].calls);
	const char *off[] = { "--hot", "60", "--batching-only",
		"--no-collapse" };
	run_demo(off, 4, &o);
	assert_int_equal(o.status, 0);
	f = &o.res.batched.svc[DEMO_FRONTEND];
	assert_int_equal(f->out_sent, f->out_calls);
}

static void
test_demo_tcp_port_in_use_fails(void **state)
{
	(void)state;
	static outcome o;
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	char port[16], want[128];

	/* Hold a port so the users service cannot listen there. */
	assert_true(fd >= 0);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(fd, 1), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &len), 0);
	snprintf(port, sizeof(port), "%d", ntohs(a.sin_port));
	const char *extra[] = { "--tcp", "--base-port", port };
	run_demo(extra, 3, &o);
	close(fd);
	assert_int_equal(o.status, 1);
	snprintf(want, sizeof(want),
	    "the users service failed to start on tcp://127.0.0.1:%s", port);
	assert_non_null(strstr(o.err, want));
	assert_false(o.res.batched.ran);
}

/* Reads the child's standard output (fd) line by line until a line
 * starting with prefix, at most 120 s; the rest of that line. */
static void
read_until(int fd, const char *prefix, char *rest, size_t n, char *seen,
    size_t seen_cap, size_t *seen_len)
{
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		seen[*seen_len] = '\0';
		for (char *l = seen; l != NULL && *l != '\0';) {
			char *nl = strchr(l, '\n');
			if (nl == NULL)
				break;
			if (strncmp(l, prefix, strlen(prefix)) == 0) {
				snprintf(rest, n, "%.*s",
				    (int)(nl - l - strlen(prefix)),
				    l + strlen(prefix));
				return;
			}
			l = nl + 1;
		}
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		long left = 120000 -
		    ((now.tv_sec - t0.tv_sec) * 1000 +
		        (now.tv_nsec - t0.tv_nsec) / 1000000);
		struct pollfd pf = { .fd = fd, .events = POLLIN };
		if (left <= 0 || poll(&pf, 1, (int)left) <= 0)
			fail_msg("no \"%s\" line from the demo; it said:\n%s",
			    prefix, seen);
		ssize_t k =
		    read(fd, seen + *seen_len, seen_cap - 1 - *seen_len);
		if (k <= 0)
			fail_msg("the demo ended before \"%s\"; it said:\n%s",
			    prefix, seen);
		*seen_len += (size_t)k;
	}
}

/* The calls the server named name served so far, per /status.json. */
static double
served(const char *status_url, const char *name)
{
	page p = http_get(status_url, 30);
	assert_int_equal(p.status, 200);
	json_t *j = json_of(&p);
	free(p.body);
	/* --serve runs the batched set only. */
	json_t *srv = json_find(json_object_get(j, "servers"), "name", name);
	assert_non_null(srv);
	assert_null(json_find(json_object_get(j, "servers"), "name",
	    "unbatched frontend: asynq.frontend.Frontend"));
	double calls = json_num(srv, "calls");
	json_decref(j);
	return calls;
}

static void
test_demo_serve_until_sigterm(void **state)
{
	(void)state;
	static char data_dir[1024];
	const char *dir = getenv("TEST_TMPDIR");
	snprintf(data_dir, sizeof(data_dir), "%s/demo-data",
	    dir != NULL ? dir : "/tmp");
	const char *argv[] = { "demo", "--small", "--workers", "2",
		"--inflight", "4", "--rate", "100", "--serve", "--admin",
		"http://127.0.0.1:0", "--data-dir", data_dir, NULL };
	int out[2];
	assert_int_equal(pipe(out), 0);
	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		setpgid(0, 0);
		close(out[0]);
		dup2(out[1], 1);
		close(out[1]);
		exit(demo_main(13, (char **)argv, NULL));
	}
	close(out[1]);
	static char seen[65536];
	size_t seen_len = 0;
	char url[256];
	read_until(out[0], "status page: ", url, sizeof(url), seen,
	    sizeof(seen), &seen_len);
	/* "http://127.0.0.1:PORT/status (trace for Perfetto: ...)" */
	char *sp = strchr(url, ' ');
	assert_non_null(sp);
	*sp = '\0';
	assert_int_equal(strncmp(url, "http://127.0.0.1:", 17), 0);
	char status_url[300];
	snprintf(status_url, sizeof(status_url), "%s.json", url);

	/* The load keeps coming: the frontend serves more and more. */
	const char *fe = "batched frontend: asynq.frontend.Frontend";
	struct timespec t0, now;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	double first = served(status_url, fe), last = first;
	while (last < first + 50) {
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - t0.tv_sec > 120)
			fail_msg("the frontend served %.0f calls in 120 s, "
			         "then %.0f",
			    first, last);
		struct timespec ts = { 0, 100000000 };
		nanosleep(&ts, NULL);
		last = served(status_url, fe);
	}

	assert_int_equal(kill(pid, SIGTERM), 0);
	ahttp_child c = { .pid = pid, .out = out[0] };
	char *rest;
	int rc = ahttp_finish(&c, 60000, &rest);
	if (rc != 0 || strstr(rest, "stopping on Terminated: ") == NULL)
		fail_msg("demo --serve exited %d after SIGTERM; it said:\n%s%s",
		    rc, seen, rest);
	free(rest);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_demo_inproc_batches),
		cmocka_unit_test(test_demo_tcp_batches),
		cmocka_unit_test(test_demo_mtls_batches),
		cmocka_unit_test(test_demo_replicas_share_calls),
		cmocka_unit_test(test_demo_replicas_bounds),
		cmocka_unit_test(test_demo_hot_answers_collapse),
		cmocka_unit_test(test_demo_tcp_port_in_use_fails),
		cmocka_unit_test(test_demo_serve_until_sigterm),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
