/* SPDX-License-Identifier: MIT */
/*
 * The asynq command-line client (framework/cli), run as a program against
 * the RPC tests' Calc server in this process: what it prints for list,
 * describe, call and health, its exit codes (0, the failed call's status,
 * 2 for usage errors), the reply per line of a batch read from standard
 * input with the request count it reports (checked against the server's
 * own counters), --metadata and --timeout reaching the server, and its
 * error messages for bad JSON, unknown fields and unknown methods.
 */
#include "tests/rpc/rpc_fixture.h"

#include "tests/cli/cli_run.h"
#include "tests/rpc/test_intercept.asynq.h"

static void
test_cli_list_names_the_services(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	run r = cli(NULL, ARGS("list", fx.url));
	assert_string_equal(r.err, "");
	assert_rc(r, 0);
	assert_string_equal(r.out,
	    "asynq.health.v1.Health\n"
	    "asynq.reflection.v1.Reflection\n"
	    "asynq.rpctest.Calc\n");
	run_free(&r);
	/* HOST:PORT stands for tcp://HOST:PORT. */
	r = cli(NULL, ARGS("list", fx.url + strlen("tcp://")));
	assert_rc(r, 0);
	assert_non_null(strstr(r.out, "asynq.rpctest.Calc\n"));
	run_free(&r);
	fx_stop(&fx);
}

static void
test_cli_describe_prints_methods_and_fields(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	run r = cli(NULL, ARGS("describe", fx.url, "asynq.rpctest.Calc"));
	assert_rc(r, 0);
	assert_non_null(strstr(r.out,
	    "// tests/rpc/test_rpc.proto\n"
	    "service asynq.rpctest.Calc {\n"
	    "  option (asynq.batch_max_calls) = 100;\n"
	    "  rpc Twice(asynq.rpctest.Num) returns (asynq.rpctest.Num); // "
	    "idempotent\n"
	    "  rpc Fail(asynq.rpctest.Num) returns (asynq.rpctest.Num);\n"));
	assert_non_null(strstr(r.out,
	    "  rpc Sum(asynq.rpctest.Num) returns (asynq.rpctest.Num); // "
	    "whole batch\n"));
	assert_non_null(strstr(r.out,
	    "  rpc CachedLookup(asynq.rpctest.Num) returns "
	    "(asynq.rpctest.Num); // idempotent, request cache\n"));
	assert_non_null(strstr(r.out,
	    "\nmessage asynq.rpctest.Num {\n"
	    "  int64 v = 1;\n"
	    "  string s = 2;\n"
	    "}\n"));
	assert_non_null(strstr(r.out,
	    "\nmessage asynq.rpctest.Tree {\n"
	    "  asynq.rpctest.Tree child = 1;\n"
	    "  int64 v = 2;\n"
	    "}\n"));
	run_free(&r);

	/* One method: its line and its messages only. */
	r = cli(NULL, ARGS("describe", fx.url, "asynq.rpctest.Calc.Depth"));
	assert_rc(r, 0);
	assert_string_equal(r.out,
	    "// tests/rpc/test_rpc.proto\n"
	    "service asynq.rpctest.Calc {\n"
	    "  rpc Depth(asynq.rpctest.Tree) returns (asynq.rpctest.Num);\n"
	    "}\n"
	    "\n"
	    "message asynq.rpctest.Tree {\n"
	    "  asynq.rpctest.Tree child = 1;\n"
	    "  int64 v = 2;\n"
	    "}\n"
	    "\n"
	    "message asynq.rpctest.Num {\n"
	    "  int64 v = 1;\n"
	    "  string s = 2;\n"
	    "}\n");
	run_free(&r);

	/* A nested enum of another service's file. */
	r = cli(NULL,
	    ARGS("describe", fx.url, "asynq.health.v1.HealthCheckResponse"));
	assert_rc(r, 0);
	assert_string_equal(r.out,
	    "\n"
	    "message asynq.health.v1.HealthCheckResponse {\n"
	    "  asynq.health.v1.HealthCheckResponse.ServingStatus status = 1;\n"
	    "}\n"
	    "\n"
	    "enum asynq.health.v1.HealthCheckResponse.ServingStatus {\n"
	    "  UNKNOWN = 0;\n"
	    "  SERVING = 1;\n"
	    "  NOT_SERVING = 2;\n"
	    "  SERVICE_UNKNOWN = 3;\n"
	    "}\n");
	run_free(&r);

	r = cli(NULL, ARGS("describe", fx.url, "asynq.rpctest.Calc/Nope"));
	assert_rc(r, ASYNQ_NOT_FOUND);
	assert_string_equal(r.err,
	    "asynq: NOT_FOUND: service asynq.rpctest.Calc has no method Nope\n");
	run_free(&r);
	fx_stop(&fx);
}

/* Guarded's handlers never run here: describe asks reflection only. */
static asynq_status
never_unary(asynq_task *t, const ProtobufCMessage *req,
    ProtobufCMessage **reply, void *ctx)
{
	(void)req;
	(void)reply;
	(void)ctx;
	return asynq_fail(t, ASYNQ_INTERNAL, "not in this test");
}

static asynq_status
never_batch(asynq_task *t, asynq_rpc_batch_call *calls, size_t n, void *ctx)
{
	(void)calls;
	(void)n;
	(void)ctx;
	return asynq_fail(t, ASYNQ_INTERNAL, "not in this test");
}

static asynq_status
no_tokens(const char *tok, size_t len, const asynq_rpc_method_desc *m,
    char *scopes, size_t cap, char *why, size_t why_cap, void *arg)
{
	(void)tok;
	(void)len;
	(void)m;
	(void)scopes;
	(void)cap;
	(void)arg;
	snprintf(why, why_cap, "no tokens here");
	return ASYNQ_UNAUTHENTICATED;
}

/* Who may call a method, as its .proto declares it. */
static void
test_cli_describe_prints_who_may_call(void **state)
{
	(void)state;
	asynq_runtime *rt;
	asynq_runtime_cfg rcfg = { .workers = 1 };
	assert_int_equal(asynq_runtime_alloc(&rt, &rcfg), ASYNQ_OK);
	asynq_rpc_server_cfg scfg = { .token_verifier = no_tokens };
	asynq_rpc_server *srv;
	assert_int_equal(asynq_rpc_server_alloc(&srv, rt, &scfg), ASYNQ_OK);
	static const asynq_rpc_handler hs[] = {
		{ .unary = never_unary },
		{ .batch = never_batch },
		{ .unary = never_unary },
		{ .unary = never_unary },
	};
	assert_int_equal(asynq_rpc_server_add_service(srv,
	                     &asynq__icpttest__guarded__asynq_desc, hs, NULL),
	    ASYNQ_OK);
	char url[64];
	url_make(url, sizeof(url), TRANSPORT_TCP);
	assert_int_equal(asynq_rpc_server_listen(srv, url), ASYNQ_OK);
	run r = cli(NULL, ARGS("describe", url, "asynq.icpttest.Guarded"));
	assert_rc(r, 0);
	assert_non_null(strstr(r.out,
	    "  rpc Echo(asynq.icpttest.Num) returns (asynq.icpttest.Num);\n"
	    "  rpc Sum(asynq.icpttest.Num) returns (asynq.icpttest.Num); // "
	    "whole batch, allow scopes sum\n"
	    "  rpc Read(asynq.icpttest.Num) returns (asynq.icpttest.Num); // "
	    "allow peers spiffe://example/frontend, allow scopes users.read "
	    "users.admin\n"));
	run_free(&r);
	asynq_rpc_server_free(srv);
	asynq_runtime_stop(rt);
	asynq_runtime_free(rt);
}

static void
test_cli_call_prints_the_reply_as_json(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	run r = cli(NULL,
	    ARGS("call", fx.url, "asynq.rpctest.Calc/Twice", "{\"v\": 21}"));
	assert_string_equal(r.err, "");
	assert_rc(r, 0);
	/* proto3's JSON: int64 as a string, every scalar field printed. */
	assert_string_equal(r.out, "{\"v\": \"42\", \"s\": \"\"}\n");
	run_free(&r);

	/* Metadata reaches the handler (Twice echoes "tag"); a 64-bit
	 * number may come as a string; Service.Method works too. */
	r = cli(NULL,
	    ARGS("--metadata", "tag=hello world", "call", fx.url,
	        "asynq.rpctest.Calc.Twice", "{\"v\": \"-4\"}"));
	assert_rc(r, 0);
	assert_string_equal(r.out, "{\"v\": \"-8\", \"s\": \"hello world\"}\n");
	run_free(&r);

	/* A nested message, three deep. */
	r = cli(NULL,
	    ARGS("call", fx.url, "asynq.rpctest.Calc/Depth",
	        "{\"child\": {\"child\": {\"v\": 7}}}"));
	assert_rc(r, 0);
	assert_string_equal(r.out, "{\"v\": \"3\", \"s\": \"\"}\n");
	run_free(&r);
	fx_stop(&fx);
}

static void
test_cli_failed_calls_exit_with_their_status(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	run r = cli(NULL,
	    ARGS("call", fx.url, "asynq.rpctest.Calc/Fail", "{\"v\": 9}"));
	assert_rc(r, ASYNQ_FAILED_PRECONDITION);
	assert_string_equal(r.out, "");
	assert_string_equal(r.err, "asynq: FAILED_PRECONDITION: failed 9\n");
	run_free(&r);

	/* The deadline of --timeout travels: Sleep outlasts it. (Half a
	 * second leaves a slow machine the time to connect; the server ends
	 * the Sleep before it closes.) */
	r = cli(NULL,
	    ARGS("call", "--timeout", "500", fx.url, "asynq.rpctest.Calc/Sleep",
	        "{\"v\": 1500}"));
	assert_rc(r, ASYNQ_DEADLINE_EXCEEDED);
	assert_non_null(strstr(r.err, "asynq: DEADLINE_EXCEEDED: "));
	run_free(&r);

	/* Nobody listens there. */
	char url[128];
	url_make(url, sizeof(url), TRANSPORT_TCP);
	r = cli(NULL, ARGS("list", url));
	assert_rc(r, ASYNQ_UNAVAILABLE);
	assert_non_null(strstr(r.err, "asynq: UNAVAILABLE: "));
	assert_non_null(strstr(r.err, "connection refused"));
	run_free(&r);
	fx_stop(&fx);
}

static void
test_cli_lines_on_stdin_go_as_one_batch(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	asynq_rpc_server_stats before = fx_stats(&fx);
	/* Sum answers v + the number of Sum calls in its request. */
	run r = cli("{\"v\": 1}\n{\"v\": 2}\n\n{\"v\": 3}\n{}\n{\"v\": 5}\n",
	    ARGS("call", fx.url, "asynq.rpctest.Calc/Sum"));
	assert_rc(r, 0);
	assert_string_equal(r.out,
	    "{\"v\": \"6\", \"s\": \"\"}\n"
	    "{\"v\": \"7\", \"s\": \"\"}\n"
	    "{\"v\": \"8\", \"s\": \"\"}\n"
	    "{\"v\": \"5\", \"s\": \"\"}\n"
	    "{\"v\": \"10\", \"s\": \"\"}\n");
	assert_string_equal(r.err, "asynq: 5 calls in 1 request\n");
	run_free(&r);
	asynq_rpc_server_stats after = fx_stats(&fx);
	/* One request for the descriptors, one for the five calls. */
	assert_int_equal(after.requests - before.requests, 2);
	assert_int_equal(after.calls - before.calls, 6);

	/* 250 calls: Calc's batch_max_calls of 100 splits them 100, 100, 50,
	 * as any client of Calc would. */
	char *in = malloc(250 * 16);
	assert_non_null(in);
	size_t len = 0;
	for (int i = 0; i < 250; i++)
		len += (size_t)sprintf(in + len, "{\"v\": %d}\n", i);
	before = fx_stats(&fx);
	r = cli(in, ARGS("call", fx.url, "asynq.rpctest.Calc/Sum"));
	free(in);
	assert_rc(r, 0);
	assert_string_equal(r.err, "asynq: 250 calls in 3 requests\n");
	const char *p = r.out;
	for (int i = 0; i < 250; i++) {
		char want[64];
		int n = sprintf(want, "{\"v\": \"%d\", \"s\": \"\"}\n",
		    i + (i < 200 ? 100 : 50));
		assert_memory_equal(p, want, (size_t)n);
		p += n;
	}
	assert_string_equal(p, "");
	run_free(&r);
	after = fx_stats(&fx);
	assert_int_equal(after.requests - before.requests, 4);
	assert_int_equal(after.calls - before.calls, 251);
	fx_stop(&fx);
}

static void
test_cli_batch_prints_each_calls_error_in_its_place(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	/* Lookup: even v is found (v * 3), odd v fails NOT_FOUND. */
	run r = cli("{\"v\": 2}\n{\"v\": 3}\n{\"v\": 4}\n{\"v\": 5}\n",
	    ARGS("call", fx.url, "asynq.rpctest.Calc/Lookup"));
	assert_rc(r, ASYNQ_NOT_FOUND);
	assert_string_equal(r.out,
	    "{\"v\": \"6\", \"s\": \"\"}\n"
	    "{\"error\": {\"status\": \"NOT_FOUND\", \"code\": 5, "
	    "\"message\": \"no num 3\"}}\n"
	    "{\"v\": \"12\", \"s\": \"\"}\n"
	    "{\"error\": {\"status\": \"NOT_FOUND\", \"code\": 5, "
	    "\"message\": \"no num 5\"}}\n");
	assert_string_equal(r.err,
	    "asynq: NOT_FOUND: line 2: no num 3\n"
	    "asynq: NOT_FOUND: line 4: no num 5\n"
	    "asynq: 4 calls in 1 request\n");
	run_free(&r);
	fx_stop(&fx);
}

static void
test_cli_bad_input_fails_in_words_and_sends_no_call(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	asynq_rpc_server_stats before = fx_stats(&fx);

	run r = cli("{\"v\": 1}\n{\"v\": 2\n{\"v\": 3}\n",
	    ARGS("call", fx.url, "asynq.rpctest.Calc/Twice"));
	assert_rc(r, ASYNQ_INVALID_ARGUMENT);
	assert_string_equal(r.out, "");
	assert_string_equal(r.err,
	    "asynq: INVALID_ARGUMENT: line 2: invalid JSON: '}' expected near "
	    "end of file (column 7)\n");
	run_free(&r);

	r = cli(NULL,
	    ARGS("call", fx.url, "asynq.rpctest.Calc/Twice", "{\"w\": 1}"));
	assert_rc(r, ASYNQ_INVALID_ARGUMENT);
	assert_string_equal(r.err,
	    "asynq: INVALID_ARGUMENT: unknown field \"w\" in message "
	    "asynq.rpctest.Num (its fields: v, s)\n");
	run_free(&r);

	r = cli(NULL,
	    ARGS("call", fx.url, "asynq.rpctest.Calc/Depth",
	        "{\"child\": {\"v\": \"seven\"}}"));
	assert_rc(r, ASYNQ_INVALID_ARGUMENT);
	assert_string_equal(r.err,
	    "asynq: INVALID_ARGUMENT: field child.v: expects an integer, got "
	    "the string \"seven\"\n");
	run_free(&r);

	r = cli(NULL,
	    ARGS("call", fx.url, "asynq.rpctest.Calc/Twice", "{\"s\": 5}"));
	assert_rc(r, ASYNQ_INVALID_ARGUMENT);
	assert_string_equal(r.err,
	    "asynq: INVALID_ARGUMENT: field s: expects a string, got an "
	    "integer\n");
	run_free(&r);

	/* Each of those sent only its one call for the descriptors. */
	asynq_rpc_server_stats after = fx_stats(&fx);
	assert_int_equal(after.calls - before.calls, 4);

	r = cli(NULL, ARGS("call", fx.url, "asynq.rpctest.Calc/Nope", "{}"));
	assert_rc(r, ASYNQ_NOT_FOUND);
	assert_string_equal(r.err,
	    "asynq: NOT_FOUND: service asynq.rpctest.Calc has no method Nope "
	    "(its methods: Twice, Fail, Sleep, Sum, Depth, Hold, Spin, "
	    "Lookup, CachedLookup, Relay, Nap)\n");
	run_free(&r);

	r = cli(NULL, ARGS("call", fx.url, "asynq.rpctest.Nope/Twice", "{}"));
	assert_rc(r, ASYNQ_NOT_FOUND);
	assert_string_equal(r.err,
	    "asynq: NOT_FOUND: reflection: no service, method, message or enum "
	    "named asynq.rpctest.Nope on this server\n");
	run_free(&r);

	/* Usage errors exit 2. */
	r = cli(NULL, ARGS("call", fx.url));
	assert_rc(r, 2);
	assert_string_equal(r.err,
	    "asynq: call: missing arguments (asynq --help lists the "
	    "commands)\n");
	run_free(&r);
	r = cli(NULL, ARGS("frob", fx.url));
	assert_rc(r, 2);
	run_free(&r);
	r = cli(NULL, ARGS("--timeout", "soon", "list", fx.url));
	assert_rc(r, 2);
	assert_non_null(strstr(r.err, "--timeout soon: expects milliseconds"));
	run_free(&r);
	r = cli(NULL, ARGS("--metadata", "novalue", "list", fx.url));
	assert_rc(r, 2);
	assert_non_null(strstr(r.err, "--metadata novalue: expects KEY=VALUE"));
	run_free(&r);
	fx_stop(&fx);
}

static void
test_cli_health_follows_the_server(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	run r = cli(NULL, ARGS("health", fx.url));
	assert_rc(r, 0);
	assert_string_equal(r.out, "SERVING\n");
	run_free(&r);
	r = cli(NULL, ARGS("health", fx.url, "asynq.rpctest.Calc"));
	assert_rc(r, 0);
	assert_string_equal(r.out, "SERVING\n");
	run_free(&r);
	r = cli(NULL, ARGS("health", fx.url, "asynq.rpctest.Missing"));
	assert_rc(r, ASYNQ_NOT_FOUND);
	assert_string_equal(r.out, "SERVICE_UNKNOWN\n");
	run_free(&r);
	asynq_rpc_server_set_serving(fx.srv, false);
	r = cli(NULL, ARGS("health", fx.url));
	assert_rc(r, ASYNQ_UNAVAILABLE);
	assert_string_equal(r.out, "NOT_SERVING\n");
	run_free(&r);
	fx_stop(&fx);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cli_list_names_the_services),
		cmocka_unit_test(test_cli_describe_prints_methods_and_fields),
		cmocka_unit_test(test_cli_describe_prints_who_may_call),
		cmocka_unit_test(test_cli_call_prints_the_reply_as_json),
		cmocka_unit_test(test_cli_failed_calls_exit_with_their_status),
		cmocka_unit_test(test_cli_lines_on_stdin_go_as_one_batch),
		cmocka_unit_test(
		    test_cli_batch_prints_each_calls_error_in_its_place),
		cmocka_unit_test(
		    test_cli_bad_input_fails_in_words_and_sends_no_call),
		cmocka_unit_test(test_cli_health_follows_the_server),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
