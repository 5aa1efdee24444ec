/* SPDX-License-Identifier: MIT */
/*
 * The admin endpoint's /trace?seconds=N as a user fetches it: with curl,
 * while calls run on every worker of a real Calc server's runtime (the
 * RPC tests' fixture), read back with jansson: one Chrome trace with each
 * worker its own named thread, the handlers' tasks by their method names,
 * and what became of each worker. Also: a bad or missing window is a 400
 * that says why, one trace runs at a time (409), and closing the endpoint
 * cuts a running trace short instead of waiting for it.
 */
#include "tests/rpc/rpc_fixture.h"

#include "tests/admin/admin_http.h"

static void
assert_body(const page *p, int status, const char *body)
{
	if (p->status != status || strcmp(p->body, body) != 0)
		fail_msg("expected %d \"%s\", got %d \"%s\"", status, body,
		    p->status, p->body);
}

static void
test_trace_window_errors_in_words(void **state)
{
	(void)state;
	asynq_admin *a = admin_start();
	page p = admin_get(a, "/trace");
	assert_body(&p, 400,
	    "trace: say how long to trace with ?seconds=N, N from 1 to 30 "
	    "(e.g. /trace?seconds=5)\n");
	assert_string_equal(p.ctype, "text/plain; charset=utf-8");
	free(p.body);
	static const char *const bad[][2] = {
		{ "0", "0" },
		{ "31", "31" },
		{ "abc", "abc" },
		{ "1.5", "1.5" },
		{ "-1", "-1" },
		{ "", "" },
		{ "100&x=1", "100" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char path[64], want[160];
		snprintf(path, sizeof(path), "/trace?seconds=%s", bad[i][0]);
		snprintf(want, sizeof(want),
		    "trace: seconds must be a whole number from 1 to 30, not "
		    "\"%s\"\n",
		    bad[i][1]);
		p = admin_get(a, path);
		assert_body(&p, 400, want);
		free(p.body);
	}
	asynq_admin_close(a);
}

/* A few calls from a task on a worker, so every worker has tasks of its
 * own in the trace whichever worker the server runs the handlers on. */
static asynq_status
load_main(asynq_task *t, void *arg)
{
	fixture *fx = arg;
	asynq_future *f[8];
	for (int i = 0; i < 8; i++)
		f[i] = call_num(fx->ch, i % 2 == 0 ? M(TWICE) : M(SUM), i);
	asynq_status st = ASYNQ_OK;
	for (int i = 0; i < 8; i++)
		if (asynq_await(t, f[i]) != ASYNQ_OK)
			st = asynq_future_status(f[i]);
	asynq_future_rele_n(f, 8);
	return st;
}

/* Runs load on both of fx's workers until child c (a curl of /trace)
 * exits; its exit status. At most 60 s. */
static int
load_until_done(fixture *fx, ahttp_child *c)
{
	uint64_t t0 = asynq_now_ns();
	int rc;
	while (!ahttp_done(c, &rc)) {
		if (ms_since(t0) > 60000)
			fail_msg("curl of /trace did not end within 60 s");
		asynq_ticket *tk[2];
		for (int w = 0; w < 2; w++)
			assert_int_equal(asynq_runtime_submit(fx->rt, w,
			                     load_main, fx, &tk[w]),
			    ASYNQ_OK);
		for (int w = 0; w < 2; w++) {
			assert_int_equal(asynq_ticket_wait(tk[w]), ASYNQ_OK);
			asynq_ticket_free(tk[w]);
		}
	}
	return rc;
}

static void
test_trace_merges_every_worker(void **state)
{
	(void)state;
	asynq_admin *a = admin_start();
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	assert_int_equal(asynq_admin_add_server(a, fx.srv, "calc"), ASYNQ_OK);
	assert_int_equal(asynq_admin_add_runtime(a, fx.rt, "calc"), ASYNQ_OK);

	/* Kept among the test's outputs: open it in ui.perfetto.dev. */
	char file[4096], url[256];
	test_path(file, sizeof(file), "TEST_UNDECLARED_OUTPUTS_DIR",
	    "calc.trace.json");
	snprintf(url, sizeof(url), "%s/trace?seconds=1", asynq_admin_url(a));
	char *argv[] = { "curl", "-sS", "--max-time", "60", "-o", file, "-w",
		"%{http_code} %{content_type}", url, NULL };
	ahttp_child c = ahttp_spawn(argv, NULL, "Debian's curl package");
	int rc = load_until_done(&fx, &c);
	char *out;
	(void)ahttp_finish(&c, 10000, &out);
	if (rc != 0)
		fail_msg("curl %s exited %d: %s", url, rc, out);
	assert_string_equal(out, "200 application/json");
	free(out);

	json_error_t err;
	json_t *doc = json_load_file(file, 0, &err);
	if (doc == NULL)
		fail_msg("%s is not JSON (line %d: %s)", file, err.line,
		    err.text);
	json_t *evs = json_object_get(doc, "traceEvents");
	assert_true(json_is_array(evs));

	/* Each worker is a thread of its own, named after its runtime. */
	json_int_t tid[2] = { -1, -1 };
	size_t i;
	json_t *e;
	json_array_foreach(evs, i, e)
	{
		const char *name =
		    json_string_value(json_object_get(e, "name"));
		if (strcmp(json_string_value(json_object_get(e, "ph")), "M") !=
		        0 ||
		    strcmp(name, "thread_name") != 0)
			continue;
		const char *tn = json_string_value(
		    json_object_get(json_object_get(e, "args"), "name"));
		for (int w = 0; w < 2; w++) {
			char want[32];
			snprintf(want, sizeof(want), "calc worker %d", w);
			if (strcmp(tn, want) == 0) {
				assert_int_equal(tid[w], -1);
				tid[w] = json_integer_value(
				    json_object_get(e, "tid"));
			}
		}
	}
	assert_true(tid[0] > 0 && tid[1] > 0 && tid[0] != tid[1]);

	/* Task slices on both workers, among them the handlers', named
	 * after their methods; every slice on a worker's track and within
	 * the window (plus the end's wait). */
	size_t slices[2] = { 0, 0 }, twice = 0, sum = 0, loads[2] = { 0, 0 };
	json_array_foreach(evs, i, e)
	{
		if (strcmp(json_string_value(json_object_get(e, "ph")), "X") !=
		    0)
			continue;
		json_int_t t = json_integer_value(json_object_get(e, "tid"));
		assert_true(t == tid[0] || t == tid[1]);
		int w = t == tid[1];
		double ts = json_number_value(json_object_get(e, "ts"));
		double dur = json_number_value(json_object_get(e, "dur"));
		assert_true(ts >= 0 && dur >= 0 && ts + dur < 10e6);
		const char *cat = json_string_value(json_object_get(e, "cat"));
		if (strcmp(cat, "task") != 0)
			continue;
		slices[w]++;
		const char *name =
		    json_string_value(json_object_get(e, "name"));
		twice += strcmp(name, "asynq.rpctest.Calc/Twice") == 0;
		sum += strcmp(name, "asynq.rpctest.Calc/Sum") == 0;
		loads[w] += strcmp(name, "load_main") == 0;
	}
	assert_true(slices[0] > 0 && slices[1] > 0);
	assert_true(loads[0] > 0 && loads[1] > 0);
	assert_true(twice > 0);
	assert_true(sum > 0);

	/* What became of each worker. */
	json_t *od = json_object_get(doc, "otherData");
	assert_true(json_num(od, "seconds") == 1);
	assert_true(json_is_false(json_object_get(od, "cut_short")));
	json_t *ws = json_object_get(od, "workers");
	assert_int_equal(json_array_size(ws), 2);
	json_array_foreach(ws, i, e)
	{
		char want[64];
		snprintf(want, sizeof(want), "calc worker %zu", i);
		assert_string_equal(
		    json_string_value(json_object_get(e, "thread")), want);
		assert_true(json_is_true(json_object_get(e, "traced")));
		assert_true(json_num(e, "tasks") > 0);
		assert_true(json_num(e, "dropped") == 0);
	}
	json_decref(doc);

	/* The workers' profilers are off again: a second trace runs. */
	c = ahttp_spawn(argv, NULL, "Debian's curl package");
	rc = load_until_done(&fx, &c);
	(void)ahttp_finish(&c, 10000, &out);
	assert_int_equal(rc, 0);
	assert_string_equal(out, "200 application/json");
	free(out);
	asynq_admin_close(a);
	fx_stop(&fx);
}

static bool
trace_running(const asynq_admin *a)
{
	page p = admin_get(a, "/status.json");
	json_t *j = json_of(&p);
	bool on = json_is_true(json_object_get(j, "trace_running"));
	json_decref(j);
	free(p.body);
	return on;
}

static void
test_trace_one_at_a_time_and_cut_by_close(void **state)
{
	(void)state;
	asynq_admin *a = admin_start();
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	assert_int_equal(asynq_admin_add_runtime(a, fx.rt, "calc"), ASYNQ_OK);
	char url[256];
	snprintf(url, sizeof(url), "%s/trace?seconds=30", asynq_admin_url(a));
	char *argv[] = { "curl", "-sS", "--max-time", "60", "-o", "/dev/null",
		"-w", "%{http_code}", url, NULL };
	ahttp_child c = ahttp_spawn(argv, "/dev/null", "Debian's curl package");
	uint64_t t0 = asynq_now_ns();
	while (!trace_running(a)) {
		if (ms_since(t0) > 20000)
			fail_msg("/status.json never said a trace runs");
		struct timespec ts = { 0, 20000000 };
		nanosleep(&ts, NULL);
	}
	/* A second one is refused while the first runs, and says why. */
	page p = admin_get(a, "/trace?seconds=1");
	assert_int_equal(p.status, 409);
	if (strstr(p.body, "trace: another trace is running (about ") !=
	        p.body ||
	    strstr(p.body,
	        " s left); one at a time, as each worker has one "
	        "profiler\n") == NULL)
		fail_msg("409 body: %s", p.body);
	free(p.body);

	/* Closing does not wait out the 30 s: the trace is cut, its
	 * request cancelled, and the workers' profilers stopped. */
	uint64_t t1 = asynq_now_ns();
	asynq_admin_close(a);
	assert_true(ms_since(t1) < 5000);
	char *out;
	int rc = ahttp_finish(&c, 20000, &out);
	/* curl saw the connection end without an answer. */
	assert_int_not_equal(rc, 0);
	assert_string_equal(out, "000");
	free(out);
	/* Stopping the runtime does not hang on the trace's hold either. */
	fx_stop(&fx);
}

/* Fetches url (a /trace) with curl in the background into file; the
 * child. */
static ahttp_child
trace_fetch(const char *url, const char *file)
{
	char *argv[] = { "curl", "-sS", "--max-time", "60", "-o", (char *)file,
		"-w", "%{http_code}", (char *)url, NULL };
	return ahttp_spawn(argv, NULL, "Debian's curl package");
}

/* Waits, at most 20 s, until /status.json says a trace runs. */
static void
await_trace_running(const asynq_admin *a)
{
	uint64_t t0 = asynq_now_ns();
	while (!trace_running(a)) {
		if (ms_since(t0) > 20000)
			fail_msg("/status.json never said a trace runs");
		struct timespec ts = { 0, 20000000 };
		nanosleep(&ts, NULL);
	}
}

static json_t *
trace_done(ahttp_child *c, const char *file)
{
	char *out;
	int rc = ahttp_finish(c, 60000, &out);
	if (rc != 0 || strcmp(out, "200") != 0)
		fail_msg("curl of /trace exited %d, saying %s", rc, out);
	free(out);
	json_error_t err;
	json_t *doc = json_load_file(file, 0, &err);
	if (doc == NULL)
		fail_msg("%s is not JSON (line %d: %s)", file, err.line,
		    err.text);
	return doc;
}

static void
test_trace_cut_by_removing_the_runtime(void **state)
{
	(void)state;
	asynq_admin *a = admin_start();
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	assert_int_equal(asynq_admin_add_runtime(a, fx.rt, "calc"), ASYNQ_OK);
	char url[256], file[4096];
	snprintf(url, sizeof(url), "%s/trace?seconds=30", asynq_admin_url(a));
	test_path(file, sizeof(file), "TEST_TMPDIR", "cut.trace.json");
	ahttp_child c = trace_fetch(url, file);
	await_trace_running(a);
	/* The trace holds the runtime; removing it ends the trace, so the
	 * runtime's stop waits for no 30 s. */
	uint64_t t0 = asynq_now_ns();
	asynq_admin_remove_runtime(a, fx.rt);
	fx_stop(&fx);
	assert_true(ms_since(t0) < 5000);
	json_t *doc = trace_done(&c, file);
	json_t *od = json_object_get(doc, "otherData");
	assert_true(json_is_true(json_object_get(od, "cut_short")));
	json_t *ws = json_object_get(od, "workers");
	assert_int_equal(json_array_size(ws), 2);
	assert_true(
	    json_is_true(json_object_get(json_array_get(ws, 0), "traced")));
	json_decref(doc);
	assert_false(trace_running(a));
	asynq_admin_close(a);
}

static void
test_trace_busy_worker_left_out(void **state)
{
	(void)state;
	asynq_admin *a = admin_start();
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 1);
	const char *urls[] = { fx.url };
	asynq_rpc_channel_cfg ccfg = { .urls = urls, .n_urls = 1 };
	assert_int_equal(asynq_rpc_channel_alloc(&fx.ch, CALC, &ccfg),
	    ASYNQ_OK);
	assert_int_equal(asynq_admin_add_runtime(a, fx.rt, "calc"), ASYNQ_OK);
	/* Spin busy-waits on the only worker for 5 s: it takes the start
	 * and stop of a 1 s trace only after the trace has answered (1 s
	 * and its 2 s wait for the worker). */
	asynq_future *f = call_num(fx.ch, M(SPIN), 5000);
	uint64_t t0 = asynq_now_ns();
	while (fx_stats(&fx).inflight_calls == 0 && ms_since(t0) < 10000) {
		asynq_future *s = asynq_sleep(1000000);
		(void)asynq_wait(s);
		asynq_future_rele(s);
	}
	assert_int_equal(fx_stats(&fx).inflight_calls, 1);
	char url[256], file[4096];
	snprintf(url, sizeof(url), "%s/trace?seconds=1", asynq_admin_url(a));
	test_path(file, sizeof(file), "TEST_TMPDIR", "busy.trace.json");
	ahttp_child c = trace_fetch(url, file);
	json_t *doc = trace_done(&c, file);
	json_t *w = json_array_get(
	    json_object_get(json_object_get(doc, "otherData"), "workers"), 0);
	assert_string_equal(json_string_value(json_object_get(w, "thread")),
	    "calc worker 0");
	assert_true(json_is_false(json_object_get(w, "traced")));
	assert_string_equal(json_string_value(json_object_get(w, "why")),
	    "busy: it did not answer within 2 s of the end (a long task?)");
	json_decref(doc);
	/* The late start and stop run once Spin returns; the runtime stops
	 * after them (it was held), and the trace's memory goes with the
	 * last of them (ASan checks both). */
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	asynq_admin_close(a);
	fx_stop(&fx);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_trace_window_errors_in_words),
		cmocka_unit_test(test_trace_merges_every_worker),
		cmocka_unit_test(test_trace_one_at_a_time_and_cut_by_close),
		cmocka_unit_test(test_trace_cut_by_removing_the_runtime),
		cmocka_unit_test(test_trace_busy_worker_left_out),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
