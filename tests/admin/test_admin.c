/* SPDX-License-Identifier: MIT */
/*
 * The admin endpoint (asynq/admin.h) as its users see it: fetched with
 * curl, a real HTTP client run as a child process, while a real Calc
 * server (the RPC tests' fixture) answers calls. /live; /ready from
 * starting to serving, not serving, draining and closed, with the reasons
 * in its body; /metrics with the counts of the calls the test made, the
 * workers' counters and the process's memory and files, and accepted by
 * `promtool check metrics`; a scrape that a busy worker cannot stall; a
 * close that connections left half-sent cannot hold up; and set-up errors
 * in words.
 */
#include "tests/rpc/rpc_fixture.h"

#include "asynq/admin.h"

/* A fetched page: status, Content-Type and body (malloc'd). */
typedef struct page {
	int status;
	char ctype[128];
	char *body;
} page;

/* Runs argv (argv[0] looked up in PATH) with `in` on its standard input
 * and returns its exit status (-1 if it could not run: *spawn_err gets
 * errno), its standard output and error in *out (malloc'd). */
static int
run(char *const argv[], const char *in, char **out, int *spawn_err)
{
	int ip[2], op[2];
	assert_int_equal(pipe(ip), 0);
	assert_int_equal(pipe(op), 0);
	posix_spawn_file_actions_t fa;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, ip[0], 0);
	posix_spawn_file_actions_adddup2(&fa, op[1], 1);
	posix_spawn_file_actions_adddup2(&fa, op[1], 2);
	posix_spawn_file_actions_addclose(&fa, ip[1]);
	posix_spawn_file_actions_addclose(&fa, op[0]);
	extern char **environ;
	pid_t pid;
	*spawn_err = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(ip[0]);
	close(op[1]);
	if (*spawn_err != 0) {
		close(ip[1]);
		close(op[0]);
		*out = NULL;
		return -1;
	}
	/* Small inputs only (a scrape): the pipe holds it while the child
	 * starts reading. Writing first, then reading, keeps this simple. */
	signal(SIGPIPE, SIG_IGN);
	if (in != NULL) {
		size_t len = strlen(in), off = 0;
		while (off < len) {
			ssize_t k = write(ip[1], in + off, len - off);
			if (k <= 0)
				break;
			off += (size_t)k;
		}
	}
	close(ip[1]);
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap);
	assert_non_null(buf);
	for (;;) {
		if (cap - len < 4096) {
			cap *= 2;
			buf = realloc(buf, cap);
			assert_non_null(buf);
		}
		ssize_t k = read(op[0], buf + len, cap - len - 1);
		if (k <= 0)
			break;
		len += (size_t)k;
	}
	buf[len] = '\0';
	close(op[0]);
	int ws;
	assert_int_equal(waitpid(pid, &ws, 0), pid);
	*out = buf;
	return WIFEXITED(ws) ? WEXITSTATUS(ws) : 128 + WTERMSIG(ws);
}

/* GETs url with curl. The test fails, saying why, when curl is missing. */
static page
get(const char *url)
{
	char *argv[] = { "curl", "-sS", "--max-time", "10", "-o", "-", "-w",
		"\n@@%{http_code} %{content_type}", (char *)url, NULL };
	char *out;
	int err;
	int rc = run(argv, NULL, &out, &err);
	if (rc == -1)
		fail_msg("curl could not run (%s): run bazel/setup, which "
		         "installs Debian's curl package",
		    strerror(err));
	if (rc != 0)
		fail_msg("curl %s exited %d: %s", url, rc, out);
	page p = { 0 };
	char *tail = strstr(out, "\n@@");
	assert_non_null(tail);
	*tail = '\0';
	assert_int_equal(
	    sscanf(tail + 3, "%d %127[^\n]", &p.status, p.ctype) >= 1, 1);
	p.body = out;
	return p;
}

/* GETs base + path; the body must be freed. */
static page
get_path(const asynq_admin *a, const char *path)
{
	char url[256];
	snprintf(url, sizeof(url), "%s%s", asynq_admin_url(a), path);
	return get(url);
}

/* The value of the sample `series` (name{labels}) in a scrape; -1 if it
 * is not there. */
static double
sample(const char *metrics, const char *series)
{
	size_t n = strlen(series);
	for (const char *p = metrics; (p = strstr(p, series)) != NULL; p += n) {
		bool line_start = p == metrics || p[-1] == '\n';
		if (line_start && p[n] == ' ')
			return strtod(p + n + 1, NULL);
	}
	return -1;
}

static asynq_admin *
admin_open(void)
{
	asynq_admin *a;
	char err[256];
	asynq_status st =
	    asynq_admin_open(&a, "http://127.0.0.1:0", err, sizeof(err));
	if (st != ASYNQ_OK)
		fail_msg("admin open: %s", err);
	assert_int_equal(strncmp(asynq_admin_url(a), "http://127.0.0.1:", 17),
	    0);
	assert_int_not_equal(atoi(asynq_admin_url(a) + 17), 0);
	return a;
}

static void
test_admin_open_errors_in_words(void **state)
{
	(void)state;
	asynq_admin *a = NULL;
	char err[256];
	assert_int_equal(asynq_admin_open(&a, "not a url", err, sizeof(err)),
	    ASYNQ_INVALID_ARGUMENT);
	assert_string_equal(err,
	    "admin not a url: not a URL (expected http://HOST:PORT)");
	assert_int_equal(
	    asynq_admin_open(&a, "tcp://127.0.0.1:9090", err, sizeof(err)),
	    ASYNQ_INVALID_ARGUMENT);
	assert_string_equal(err,
	    "admin tcp://127.0.0.1:9090: scheme tcp:// is not served; use "
	    "http://HOST:PORT");
	assert_int_equal(asynq_admin_open(&a, "http://127.0.0.1:9090/metrics",
	                     err, sizeof(err)),
	    ASYNQ_INVALID_ARGUMENT);
	assert_non_null(strstr(err, "the URL must have no path"));
	assert_int_equal(asynq_admin_open(&a, NULL, err, sizeof(err)),
	    ASYNQ_INVALID_ARGUMENT);
	assert_string_equal(err, "admin: no URL (expected http://HOST:PORT)");

	/* A port another socket listens on. */
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = { .sin_family = AF_INET };
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t len = sizeof(sa);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, 1), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &len), 0);
	char url[64], want[128];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(sa.sin_port));
	snprintf(want, sizeof(want), "admin %s: address in use", url);
	assert_int_equal(asynq_admin_open(&a, url, err, sizeof(err)),
	    ASYNQ_UNAVAILABLE);
	assert_string_equal(err, want);
	close(fd);
	assert_null(a);
	/* NULL err is allowed. */
	assert_int_equal(asynq_admin_open(&a, "nope", NULL, 0),
	    ASYNQ_INVALID_ARGUMENT);
	asynq_admin_close(NULL);
}

/* Makes 10 Twice, 3 Fail (NOT_FOUND) and 4 Sum calls together: one
 * request of 17 calls. */
static void
make_calls(fixture *fx)
{
	asynq_future *f[17];
	size_t k = 0;
	for (int i = 0; i < 10; i++)
		f[k++] = call_num(fx->ch, M(TWICE), i);
	for (int i = 0; i < 3; i++)
		f[k++] = call_num(fx->ch, M(FAIL), ASYNQ_NOT_FOUND);
	for (int i = 0; i < 4; i++)
		f[k++] = call_num(fx->ch, M(SUM), i);
	(void)asynq_wait_all(f, k);
	for (size_t i = 0; i < k; i++)
		assert_int_equal(asynq_future_status(f[i]),
		    i >= 10 && i < 13 ? ASYNQ_NOT_FOUND : ASYNQ_OK);
	asynq_future_rele_n(f, k);
}

static void
test_admin_live_ready_and_metrics(void **state)
{
	(void)state;
	asynq_admin *a = admin_open();
	page p = get_path(a, "/live");
	assert_int_equal(p.status, 200);
	assert_string_equal(p.body, "live\n");
	free(p.body);
	p = get_path(a, "/ready");
	assert_int_equal(p.status, 503);
	assert_string_equal(p.body,
	    "not ready\nstarting: no server added yet\n");
	free(p.body);

	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	assert_int_equal(asynq_admin_add_server(a, fx.srv, "calc"), ASYNQ_OK);
	assert_int_equal(asynq_admin_add_server(a, fx.srv, "again"),
	    ASYNQ_ALREADY_EXISTS);
	assert_int_equal(asynq_admin_add_channel(a, fx.ch, "calc"), ASYNQ_OK);
	assert_int_equal(asynq_admin_add_runtime(a, fx.rt, "calc"), ASYNQ_OK);
	p = get_path(a, "/ready");
	assert_int_equal(p.status, 200);
	assert_string_equal(p.body, "ready\nserver calc: serving\n");
	free(p.body);

	make_calls(&fx);
	p = get_path(a, "/metrics");
	assert_int_equal(p.status, 200);
	assert_string_equal(p.ctype,
	    "text/plain; version=0.0.4; charset=utf-8");
	const char *m = p.body;
	assert_non_null(strstr(m,
	    "# HELP asynq_rpc_server_calls_total Calls run.\n"
	    "# TYPE asynq_rpc_server_calls_total counter\n"));
	assert_true(
	    sample(m, "asynq_rpc_server_calls_total{server=\"calc\"}") == 17);
	assert_true(
	    sample(m, "asynq_rpc_server_requests_total{server=\"calc\"}") == 1);
	assert_true(
	    sample(m, "asynq_rpc_server_connections{server=\"calc\"}") == 1);
	assert_true(
	    sample(m, "asynq_rpc_server_inflight_calls{server=\"calc\"}") == 0);
	assert_true(sample(m, "asynq_rpc_server_ready{server=\"calc\"}") == 1);
#define CALC_M(meth)                                                           \
	"server=\"calc\",service=\"asynq.rpctest.Calc\",method=\"" meth "\""
	assert_true(sample(m,
	                "asynq_rpc_server_handled_calls_total{" CALC_M(
	                    "Twice") ",code=\"OK\"}") == 10);
	assert_true(sample(m,
	                "asynq_rpc_server_handled_calls_total{" CALC_M(
	                    "Fail") ",code=\"NOT_FOUND\"}") == 3);
	assert_true(sample(m,
	                "asynq_rpc_server_handled_calls_total{" CALC_M(
	                    "Fail") ",code=\"OK\"}") == 0);
	assert_true(sample(m,
	                "asynq_rpc_server_handled_calls_total{" CALC_M(
	                    "Sum") ",code=\"OK\"}") == 4);
	assert_true(sample(m,
	                "asynq_rpc_server_handling_seconds_count{" CALC_M(
	                    "Twice") "}") == 10);
	assert_true(sample(m,
	                "asynq_rpc_server_handling_seconds_bucket{" CALC_M(
	                    "Twice") ",le=\"+Inf\"}") == 10);
	assert_true(sample(m,
	                "asynq_rpc_server_handling_seconds_bucket{" CALC_M(
	                    "Twice") ",le=\"0.00005\"}") >= 0);
	/* Ten Twice calls in one request: in the bucket up to 16, not 8. */
	assert_true(
	    sample(m,
	        "asynq_rpc_server_method_calls_per_request_bucket{" CALC_M(
	            "Twice") ",le=\"8\"}") == 0);
	assert_true(
	    sample(m,
	        "asynq_rpc_server_method_calls_per_request_bucket{" CALC_M(
	            "Twice") ",le=\"16\"}") == 1);
	assert_true(sample(m,
	                "asynq_rpc_server_method_calls_per_request_sum{" CALC_M(
	                    "Twice") "}") == 10);
	/* The request as a whole: 17 calls. */
	assert_true(
	    sample(m,
	        "asynq_rpc_server_calls_per_request_bucket{server=\"calc\","
	        "le=\"16\"}") == 0);
	assert_true(
	    sample(m,
	        "asynq_rpc_server_calls_per_request_bucket{server=\"calc\","
	        "le=\"32\"}") == 1);
	assert_true(
	    sample(m,
	        "asynq_rpc_server_calls_per_request_sum{server=\"calc\"}") ==
	    17);
	/* The health service's method is listed, never called. */
	assert_true(
	    sample(m,
	        "asynq_rpc_server_handled_calls_total{server=\"calc\",service="
	        "\"asynq.health.v1.Health\",method=\"Check\",code=\"OK\"}") ==
	    0);
	/* The client's side. */
	assert_true(
	    sample(m, "asynq_rpc_client_calls_total{channel=\"calc\"}") == 17);
	assert_true(
	    sample(m, "asynq_rpc_client_requests_total{channel=\"calc\"}") ==
	    1);
	assert_true(
	    sample(m,
	        "asynq_rpc_client_failed_calls_total{channel=\"calc\"}") == 3);
	/* Per method on the client: what was sent, how it ended, how many
	 * a request carried, how long they took. */
#define CLI_M(meth)                                                            \
	"channel=\"calc\",service=\"asynq.rpctest.Calc\",method=\"" meth "\""
	assert_true(sample(m,
	                "asynq_rpc_client_handled_calls_total{" CLI_M(
	                    "Twice") ",code=\"OK\"}") == 10);
	assert_true(sample(m,
	                "asynq_rpc_client_handled_calls_total{" CLI_M(
	                    "Fail") ",code=\"NOT_FOUND\"}") == 3);
	assert_true(sample(m,
	                "asynq_rpc_client_handling_seconds_count{" CLI_M(
	                    "Sum") "}") == 4);
	assert_true(sample(m,
	                "asynq_rpc_client_method_calls_per_request_sum{" CLI_M(
	                    "Twice") "}") == 10);
	assert_true(
	    sample(m,
	        "asynq_rpc_client_method_calls_per_request_count{" CLI_M(
	            "Twice") "}") == 1);
	/* The server's queue time: one request started. */
	assert_true(
	    sample(m,
	        "asynq_rpc_server_queue_seconds_count{server=\"calc\"}") == 1);
	/* Both workers answered, and between them ran the request's tasks:
	 * its own, a runner for its 13 unary calls (none suspends, so they
	 * run in it one after another) and one for the whole-batch Sum. */
	assert_true(
	    sample(m, "asynq_worker_up{runtime=\"calc\",worker=\"0\"}") == 1);
	assert_true(
	    sample(m, "asynq_worker_up{runtime=\"calc\",worker=\"1\"}") == 1);
	double t0 = sample(m,
	    "asynq_worker_tasks_started_total{runtime=\"calc\",worker=\"0\"}");
	double t1 = sample(m,
	    "asynq_worker_tasks_started_total{runtime=\"calc\",worker=\"1\"}");
	assert_true(t0 >= 0 && t1 >= 0 && t0 + t1 >= 3);
	/* The process. */
	assert_true(sample(m, "asynq_process_resident_memory_bytes") > 1e6);
	assert_true(sample(m, "asynq_process_open_fds") >= 3);
	assert_true(sample(m, "asynq_process_cpu_seconds_total") > 0);
	free(p.body);

	/* Told to stop taking traffic, it is not ready, and says why. */
	asynq_rpc_server_set_serving(fx.srv, false);
	p = get_path(a, "/ready");
	assert_int_equal(p.status, 503);
	assert_string_equal(p.body,
	    "not ready\nserver calc: not serving (told to stop taking "
	    "traffic; it still answers calls)\n");
	free(p.body);
	asynq_rpc_server_set_serving(fx.srv, true);

	p = get_path(a, "/nothing-here");
	assert_int_equal(p.status, 404);
	free(p.body);
	p = get_path(a, "/");
	assert_int_equal(p.status, 200);
	assert_non_null(strstr(p.body, "/metrics"));
	free(p.body);

	asynq_admin_close(a);
	fx_stop(&fx);
}

static bool
hold_running(void *arg)
{
	(void)arg;
	return atomic_load(&hold_runs) >= 1;
}

static asynq_status
wait_main(asynq_task *t, void *arg)
{
	uint64_t t0 = asynq_now_ns();
	while (!hold_running(arg) && ms_since(t0) < 10000) {
		asynq_future *s = asynq_sleep(1000000);
		(void)asynq_await(t, s);
		asynq_future_rele(s);
	}
	return hold_running(arg) ? ASYNQ_OK : ASYNQ_DEADLINE_EXCEEDED;
}

static void *
closer_main(void *arg)
{
	asynq_rpc_server_close(arg);
	return NULL;
}

static void
test_admin_ready_while_draining(void **state)
{
	(void)state;
	asynq_admin *a = admin_open();
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	assert_int_equal(asynq_admin_add_server(a, fx.srv, "calc"), ASYNQ_OK);
	page p = get_path(a, "/ready");
	assert_int_equal(p.status, 200);
	free(p.body);

	/* A call in flight keeps the close draining until it is released. */
	atomic_store(&hold_runs, 0);
	atomic_store(&hold_release, 0);
	asynq_future *h = call_num(fx.ch, M(HOLD), 1);
	asynq_future *w = asynq_spawn(wait_main, NULL);
	assert_int_equal(asynq_wait(w), ASYNQ_OK);
	asynq_future_rele(w);
	pthread_t closer;
	assert_int_equal(pthread_create(&closer, NULL, closer_main, fx.srv), 0);
	uint64_t t0 = asynq_now_ns();
	for (;;) {
		p = get_path(a, "/ready");
		if (p.status == 503 || ms_since(t0) > 10000)
			break;
		free(p.body);
	}
	assert_int_equal(p.status, 503);
	assert_string_equal(p.body,
	    "not ready\nserver calc: draining (closing: it finishes the calls "
	    "it accepted and refuses new ones)\n");
	free(p.body);
	atomic_store(&hold_release, 1);
	assert_int_equal(asynq_wait(h), ASYNQ_OK);
	assert_int_equal(num_of(h), 2);
	asynq_future_rele(h);
	assert_int_equal(pthread_join(closer, NULL), 0);
	p = get_path(a, "/ready");
	assert_int_equal(p.status, 503);
	assert_string_equal(p.body, "not ready\nserver calc: closed\n");
	free(p.body);

	/* Removed, the server is no longer reported. */
	asynq_admin_remove_server(a, fx.srv);
	p = get_path(a, "/ready");
	assert_int_equal(p.status, 503);
	assert_string_equal(p.body,
	    "not ready\nstarting: no server added yet\n");
	free(p.body);
	p = get_path(a, "/metrics");
	assert_null(strstr(p.body, "server=\"calc\""));
	free(p.body);
	asynq_admin_close(a);
	fx_stop(&fx);
}

static void
test_admin_metrics_pass_promtool(void **state)
{
	(void)state;
	asynq_admin *a = admin_open();
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	assert_int_equal(asynq_admin_add_server(a, fx.srv, "calc \"main\""),
	    ASYNQ_OK);
	assert_int_equal(asynq_admin_add_channel(a, fx.ch, "calc"), ASYNQ_OK);
	assert_int_equal(asynq_admin_add_runtime(a, fx.rt, "calc"), ASYNQ_OK);
	make_calls(&fx);
	page p = get_path(a, "/metrics");
	assert_int_equal(p.status, 200);
	/* A name with a quote is escaped in its label. */
	assert_true(sample(p.body,
	                "asynq_rpc_server_calls_total{server=\"calc "
	                "\\\"main\\\"\"}") == 17);
	char *argv[] = { "promtool", "check", "metrics", NULL };
	char *out;
	int err;
	int rc = run(argv, p.body, &out, &err);
	if (rc == -1)
		fail_msg("promtool could not run (%s): run bazel/setup, which "
		         "installs Debian's prometheus package (promtool "
		         "checks the /metrics text)",
		    strerror(err));
	if (rc != 0)
		fail_msg("promtool check metrics exited %d:\n%s\non:\n%s", rc,
		    out, p.body);
	free(out);
	free(p.body);
	asynq_admin_close(a);
	fx_stop(&fx);
}

static void
test_admin_scrape_not_stalled_by_a_busy_worker(void **state)
{
	(void)state;
	asynq_admin *a = admin_open();
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 1);
	const char *urls[] = { fx.url };
	asynq_rpc_channel_cfg ccfg = { .urls = urls, .n_urls = 1 };
	assert_int_equal(asynq_rpc_channel_alloc(&fx.ch, CALC, &ccfg),
	    ASYNQ_OK);
	assert_int_equal(asynq_admin_add_server(a, fx.srv, "calc"), ASYNQ_OK);
	assert_int_equal(asynq_admin_add_runtime(a, fx.rt, "calc"), ASYNQ_OK);
	/* Spin busy-waits on the only worker for 3 s. Wait until it runs:
	 * the server counts it in flight. */
	asynq_future *f = call_num(fx.ch, M(SPIN), 3000);
	uint64_t t0 = asynq_now_ns();
	while (fx_stats(&fx).inflight_calls == 0 && ms_since(t0) < 10000) {
		asynq_future *s = asynq_sleep(1000000);
		(void)asynq_wait(s);
		asynq_future_rele(s);
	}
	assert_int_equal(fx_stats(&fx).inflight_calls, 1);
	uint64_t t1 = asynq_now_ns();
	page p = get_path(a, "/metrics");
	int64_t took = ms_since(t1);
	assert_int_equal(p.status, 200);
	assert_true(sample(p.body,
	                "asynq_worker_up{runtime=\"calc\",worker=\"0\"}") == 0);
	assert_true(
	    sample(p.body,
	        "asynq_rpc_server_inflight_calls{server=\"calc\"}") == 1);
	/* The scrape waited its half second for the worker, not the 3 s. */
	assert_true(took < 2000);
	free(p.body);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	p = get_path(a, "/metrics");
	assert_true(sample(p.body,
	                "asynq_worker_up{runtime=\"calc\",worker=\"0\"}") == 1);
	free(p.body);
	asynq_admin_close(a);
	fx_stop(&fx);
}

static void
test_admin_close_with_connections_half_sent(void **state)
{
	(void)state;
	asynq_admin *a = admin_open();
	int port = atoi(asynq_admin_url(a) + 17);
	int fds[3];
	for (int i = 0; i < 3; i++) {
		fds[i] = socket(AF_INET, SOCK_STREAM, 0);
		struct sockaddr_in sa = { .sin_family = AF_INET };
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		sa.sin_port = htons((uint16_t)port);
		assert_int_equal(
		    connect(fds[i], (struct sockaddr *)&sa, sizeof(sa)), 0);
	}
	/* One sends half a request, one a whole one it never reads the
	 * answer of, one nothing. */
	static const char half[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n";
	static const char whole[] = "GET /live HTTP/1.1\r\nHost: x\r\n\r\n";
	assert_int_equal(write(fds[0], half, sizeof(half) - 1),
	    (ssize_t)sizeof(half) - 1);
	assert_int_equal(write(fds[1], whole, sizeof(whole) - 1),
	    (ssize_t)sizeof(whole) - 1);
	uint64_t t0 = asynq_now_ns();
	asynq_admin_close(a);
	assert_true(ms_since(t0) < 2000);
	for (int i = 0; i < 3; i++)
		close(fds[i]);
}

/* A server with admin_url in its settings opens its own endpoint when it
 * listens and closes it once it has closed; a URL that cannot be served
 * fails the listen, in words. */
static void
test_admin_from_server_settings(void **state)
{
	(void)state;
	char url[64];
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", free_port());
	asynq_rpc_server_cfg cfg = { .admin_url = url };
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, &cfg, 0);
	char path[128];
	snprintf(path, sizeof(path), "%s/ready", url);
	page p = get(path);
	assert_int_equal(p.status, 200);
	assert_non_null(strstr(p.body, "serving"));
	free(p.body);
	asynq_future *f = call_num(fx.ch, M(TWICE), 21);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	snprintf(path, sizeof(path), "%s/metrics", url);
	p = get(path);
	assert_int_equal(p.status, 200);
	assert_true(sample(p.body,
	                "asynq_rpc_server_calls_total{server="
	                "\"asynq.rpctest.Calc\"}") == 1);
	assert_true(strstr(p.body,
	                "asynq_worker_up{runtime="
	                "\"asynq.rpctest.Calc\",worker=\"0\"} 1") != NULL);
	free(p.body);
	fx_stop(&fx);
	/* Closed with the server: nothing listens there any more. */
	char *argv[] = { "curl", "-sS", "--max-time", "5", path, NULL };
	char *out;
	int err;
	assert_int_not_equal(run(argv, NULL, &out, &err), 0);
	free(out);

	/* An endpoint that cannot be opened fails the listen. */
	asynq_rpc_server_cfg bad = { .admin_url = "ftp://127.0.0.1:1" };
	asynq_runtime *rt;
	asynq_runtime_cfg rc = { .workers = 1 };
	asynq_rpc_server *srv;
	assert_int_equal(asynq_runtime_alloc(&rt, &rc), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_alloc(&srv, rt, &bad), ASYNQ_OK);
	assert_int_equal(
	    asynq_rpc_server_add_service(srv, CALC, calc_handlers, NULL),
	    ASYNQ_OK);
	char lurl[128];
	url_make(lurl, sizeof(lurl), TRANSPORT_TCP);
	assert_int_not_equal(asynq_rpc_server_listen(srv, lurl), ASYNQ_OK);
	assert_non_null(strstr(asynq_rpc_server_last_error(srv),
	    "admin ftp://127.0.0.1:1"));
	asynq_rpc_server_free(srv);
	asynq_runtime_free(rt);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_admin_open_errors_in_words),
		cmocka_unit_test(test_admin_live_ready_and_metrics),
		cmocka_unit_test(test_admin_ready_while_draining),
		cmocka_unit_test(test_admin_metrics_pass_promtool),
		cmocka_unit_test(test_admin_from_server_settings),
		cmocka_unit_test(
		    test_admin_scrape_not_stalled_by_a_busy_worker),
		cmocka_unit_test(test_admin_close_with_connections_half_sent),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
