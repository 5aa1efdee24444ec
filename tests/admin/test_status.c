/* SPDX-License-Identifier: MIT */
/*
 * The admin endpoint's /status page and /status.json as people and tools
 * see them, while a real Calc server (the RPC tests' fixture) answers
 * calls: /status.json fetched with curl and read with jansson, with the
 * counts, rates, percentiles and calls per request of the calls the test
 * made; and /status loaded in headless Chromium, the test asserting on
 * the DOM its script rendered (method names and numbers) and keeping a
 * screenshot among the test's outputs.
 */
#include "tests/rpc/rpc_fixture.h"

#include <math.h>

#include "tests/admin/admin_http.h"

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

static json_t *
status_json(const asynq_admin *a)
{
	page p = admin_get(a, "/status.json");
	assert_int_equal(p.status, 200);
	assert_string_equal(p.ctype, "application/json");
	json_t *j = json_of(&p);
	free(p.body);
	return j;
}

static json_t *
method_of(json_t *srv, const char *full_name)
{
	json_t *m =
	    json_find(json_object_get(srv, "methods"), "full_name", full_name);
	if (m == NULL)
		fail_msg("no method %s in /status.json", full_name);
	return m;
}

/* Reads /status.json until server 0's chart has a point (its history
 * takes a sample at most every 0.9 s), at most 10 s. */
static json_t *
status_with_point(const asynq_admin *a)
{
	uint64_t t0 = asynq_now_ns();
	for (;;) {
		json_t *j = status_json(a);
		json_t *srv = json_array_get(json_object_get(j, "servers"), 0);
		json_t *t =
		    json_object_get(json_object_get(srv, "series"), "t");
		if (json_array_size(t) > 0)
			return j;
		json_decref(j);
		if (ms_since(t0) > 10000)
			fail_msg("/status.json has no chart point after 10 s");
		struct timespec ts = { 0, 50000000 };
		nanosleep(&ts, NULL);
	}
}

static void
test_status_json_counts_rates_and_percentiles(void **state)
{
	(void)state;
	asynq_admin *a = admin_start();
	json_t *j = status_json(a);
	assert_int_equal(json_array_size(json_object_get(j, "servers")), 0);
	assert_int_equal(json_array_size(json_object_get(j, "channels")), 0);
	assert_true(json_is_false(json_object_get(j, "trace_running")));
	json_decref(j);

	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	assert_int_equal(asynq_admin_add_server(a, fx.srv, "calc"), ASYNQ_OK);
	assert_int_equal(asynq_admin_add_channel(a, fx.ch, "calc \"c\""),
	    ASYNQ_OK);
	make_calls(&fx);

	j = status_json(a);
	json_t *srv = json_find(json_object_get(j, "servers"), "name", "calc");
	assert_non_null(srv);
	assert_string_equal(json_string_value(json_object_get(srv, "state")),
	    "serving");
	assert_true(json_is_true(json_object_get(srv, "ready")));
	assert_true(json_num(srv, "calls") == 17);
	assert_true(json_num(srv, "requests") == 1);
	assert_true(json_num(srv, "errors") == 3);
	assert_true(json_num(srv, "inflight_calls") == 0);
	/* The window runs from the sample taken when the server was added,
	 * before the calls, to now. */
	json_t *w = json_object_get(srv, "window");
	assert_true(json_num(w, "seconds") > 0);
	assert_true(json_num(w, "calls_per_s") > 0);
	assert_true(
	    fabs(json_num(w, "calls_per_s") / json_num(w, "requests_per_s") -
	        17) < 1e-3);
	assert_true(json_num(w, "calls_per_request") == 17);

	json_t *twice = method_of(srv, "asynq.rpctest.Calc/Twice");
	assert_string_equal(
	    json_string_value(json_object_get(twice, "service")),
	    "asynq.rpctest.Calc");
	assert_string_equal(json_string_value(json_object_get(twice, "method")),
	    "Twice");
	assert_true(json_num(twice, "calls") == 10);
	assert_true(json_num(twice, "errors") == 0);
	assert_int_equal(
	    json_object_size(json_object_get(twice, "errors_by_code")), 0);
	assert_true(json_num(twice, "calls_per_request") == 10);
	assert_true(json_num(twice, "calls_per_s") > 0);
	/* Ten calls in one request all took under 10 s: the percentiles lie
	 * between 0 and the last bound, p50 at most p99. */
	double p50 = json_num(twice, "p50_ms"), p99 = json_num(twice, "p99_ms");
	assert_true(p50 > 0 && p50 <= p99 && p99 <= 10000);

	json_t *fail = method_of(srv, "asynq.rpctest.Calc/Fail");
	assert_true(json_num(fail, "calls") == 3);
	assert_true(json_num(fail, "errors") == 3);
	assert_true(json_num(json_object_get(fail, "errors_by_code"),
	                "NOT_FOUND") == 3);
	json_t *sum = method_of(srv, "asynq.rpctest.Calc/Sum");
	assert_true(json_num(sum, "calls") == 4);
	assert_true(json_num(sum, "calls_per_request") == 4);
	/* The health service's method is listed, never called: no rate of
	 * its own beyond 0, and nothing to take percentiles of. */
	json_t *check = method_of(srv, "asynq.health.v1.Health/Check");
	assert_true(json_num(check, "calls") == 0);
	assert_true(json_num(check, "calls_per_s") == 0);
	assert_true(json_is_null(json_object_get(check, "p50_ms")));
	assert_true(json_is_null(json_object_get(check, "calls_per_request")));
	/* The channel, its name escaped and read back whole. */
	json_t *ch =
	    json_find(json_object_get(j, "channels"), "name", "calc \"c\"");
	assert_non_null(ch);
	assert_true(json_num(ch, "calls") == 17);
	assert_true(json_num(ch, "requests") == 1);
	assert_true(json_num(ch, "failed_calls") == 3);
	json_decref(j);

	/* The chart's first point covers the calls: 17 calls per request. */
	j = status_with_point(a);
	srv = json_array_get(json_object_get(j, "servers"), 0);
	json_t *series = json_object_get(srv, "series");
	double t =
	    json_number_value(json_array_get(json_object_get(series, "t"), 0));
	double cps = json_number_value(
	    json_array_get(json_object_get(series, "calls_per_s"), 0));
	double rps = json_number_value(
	    json_array_get(json_object_get(series, "requests_per_s"), 0));
	assert_true(t <= 0 && t > -60);
	assert_true(rps > 0);
	assert_true(fabs(cps / rps - 17) < 1e-3);
	json_decref(j);

	/* The page itself: HTML that fetches only status.json, beside it. */
	page p = admin_get(a, "/status");
	assert_int_equal(p.status, 200);
	assert_string_equal(p.ctype, "text/html; charset=utf-8");
	assert_non_null(strstr(p.body, "<title>asynq status</title>"));
	assert_non_null(strstr(p.body, "fetch(\"status.json\""));
	assert_null(strstr(p.body, " src="));
	assert_null(strstr(p.body, "<link"));
	assert_null(strstr(p.body, "@import"));
	assert_null(strstr(p.body, "url("));
	free(p.body);

	/* Removed, the server is no longer listed. */
	asynq_admin_remove_server(a, fx.srv);
	j = status_json(a);
	assert_int_equal(json_array_size(json_object_get(j, "servers")), 0);
	json_decref(j);
	asynq_admin_close(a);
	fx_stop(&fx);
}

/* Runs headless Chromium on url with the extra arguments; its standard
 * output (the DOM with --dump-dom). Fails, saying so, without it. */
static char *
chromium(const char *url, const char *extra)
{
	char profile[4096], err[4096];
	test_path(profile, sizeof(profile), "TEST_TMPDIR", "chromium-profile");
	test_path(err, sizeof(err), "TEST_TMPDIR", "chromium.stderr");
	char dir_arg[4200];
	snprintf(dir_arg, sizeof(dir_arg), "--user-data-dir=%s", profile);
	/* --virtual-time-budget: the page's script runs, its fetches
	 * complete, and its timers fire for 3 s of virtual time, so the DOM
	 * is the rendered page, not the empty one. */
	char *argv[] = { "chromium", "--headless", "--no-sandbox",
		"--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
		"--hide-scrollbars", "--window-size=1100,760", dir_arg,
		"--virtual-time-budget=3000", (char *)extra, (char *)url,
		NULL };
	ahttp_child c = ahttp_spawn(argv, err,
	    "Debian's chromium package (the test loads /status in it)");
	char *out;
	int rc = ahttp_finish(&c, 120000, &out);
	if (rc != 0)
		fail_msg("chromium %s %s exited %d; its messages are in %s",
		    extra, url, rc, err);
	return out;
}

/* The <tr> of the DOM whose data-method is full_name, as text. */
static char *
dom_row(const char *dom, const char *full_name)
{
	char key[256];
	snprintf(key, sizeof(key), "<tr data-method=\"%s\">", full_name);
	const char *r = strstr(dom, key);
	if (r == NULL)
		fail_msg("the page shows no row for %s:\n%.4000s", full_name,
		    dom);
	const char *end = strstr(r, "</tr>");
	assert_non_null(end);
	return strndup(r, (size_t)(end - r));
}

static void
assert_cell(const char *row, const char *k, const char *text)
{
	char cell[256];
	snprintf(cell, sizeof(cell), "<td data-k=\"%s\">%s</td>", k, text);
	if (strstr(row, cell) == NULL)
		fail_msg("expected %s in %s", cell, row);
}

static void
test_status_page_in_chromium(void **state)
{
	(void)state;
	asynq_admin *a = admin_start();
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	assert_int_equal(asynq_admin_add_server(a, fx.srv, "calc"), ASYNQ_OK);
	assert_int_equal(asynq_admin_add_channel(a, fx.ch, "to calc"),
	    ASYNQ_OK);
	make_calls(&fx);
	json_decref(status_with_point(a));

	char url[256];
	snprintf(url, sizeof(url), "%s/status", asynq_admin_url(a));
	char *dom = chromium(url, "--dump-dom");
	/* The script ran and drew the server, its methods, the channel and
	 * the chart from status.json. */
	if (strstr(dom, "<section data-server=\"calc\">") == NULL)
		fail_msg("the page shows no server calc:\n%.4000s", dom);
	assert_non_null(strstr(dom, "<b>17</b> calls per request"));
	assert_non_null(strstr(dom, "in all 17 calls, 1 requests, 3 errors"));
	char *r = dom_row(dom, "asynq.rpctest.Calc/Twice");
	assert_cell(r, "method", "asynq.rpctest.Calc/Twice");
	assert_cell(r, "calls", "10");
	assert_cell(r, "errors", "0");
	assert_cell(r, "calls_per_request", "10");
	free(r);
	r = dom_row(dom, "asynq.rpctest.Calc/Fail");
	assert_cell(r, "calls", "3");
	assert_cell(r, "errors", "3 (NOT_FOUND 3)");
	free(r);
	r = dom_row(dom, "asynq.rpctest.Calc/Sum");
	assert_cell(r, "calls", "4");
	assert_cell(r, "calls_per_request", "4");
	free(r);
	const char *ch = strstr(dom, "<tr data-channel=\"to calc\">");
	assert_non_null(ch);
	assert_non_null(strstr(ch, "<td data-k=\"calls\">17</td>"));
	/* Both lines of the chart have a point. */
	const char *pl = strstr(dom, "<polyline class=\"calls\"");
	assert_non_null(pl);
	assert_non_null(strstr(pl, "points=\""));
	assert_true(strstr(pl, "points=\"")[8] >= '0');
	assert_non_null(strstr(dom, "<polyline class=\"requests\""));
	/* The script's error line is empty: every poll read status.json. */
	const char *err = strstr(dom, "<p id=\"error\" class=\"err\">");
	assert_non_null(err);
	if (strncmp(strchr(err, '>') + 1, "</p>", 4) != 0)
		fail_msg("the page says: %.200s", err);
	free(dom);

	/* A screenshot among the test's outputs, for a person to look at. */
	char png[4096], arg[4200];
	test_path(png, sizeof(png), "TEST_UNDECLARED_OUTPUTS_DIR",
	    "status.png");
	snprintf(arg, sizeof(arg), "--screenshot=%s", png);
	free(chromium(url, arg));
	FILE *f = fopen(png, "rb");
	if (f == NULL)
		fail_msg("chromium wrote no screenshot at %s", png);
	unsigned char magic[8] = { 0 };
	assert_int_equal(fread(magic, 1, 8, f), 8);
	assert_int_equal(memcmp(magic, "\x89PNG\r\n\x1a\n", 8), 0);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	assert_true(ftell(f) > 10000); /* a page, not a blank */
	fclose(f);

	asynq_admin_close(a);
	fx_stop(&fx);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_status_json_counts_rates_and_percentiles),
		cmocka_unit_test(test_status_page_in_chromium),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
