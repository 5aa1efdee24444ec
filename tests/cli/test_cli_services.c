/* SPDX-License-Identifier: MIT */
/*
 * The command-line client against every example service, each started as
 * its own program (tests/common/child.h) on small generated data: users,
 * answers, cache and the frontend composing them. It lists and describes
 * each, calls its methods with JSON, and checks the answers agree: the
 * frontend's author names for some answers are the names the users
 * service gives the authors the answers service names.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <jansson.h>

#include "tests/cli/cli_run.h"
#include "tests/common/child.h"

static child users, answers, cache, frontend;

static void
start(child *c, const char *bin, const char *const *extra)
{
	char why[512];
	if (!child_start(NULL, c, bin, bin, extra, 60000, why, sizeof(why)))
		fail_msg("%s did not start: %s", bin, why);
	child_register(c);
}

static int
setup(void **state)
{
	(void)state;
	static char udb[600], adb[600];
	if (!child_env_init())
		return -1;
	snprintf(udb, sizeof(udb), "%s/users.db", child_tmpdir());
	snprintf(adb, sizeof(adb), "%s/answers.db", child_tmpdir());
	start(&users, "users",
	    ARGS("--db", udb, "--gen-users", "100", "--quiet"));
	start(&answers, "answers",
	    ARGS("--db", adb, "--gen-users", "100", "--gen-answers", "300",
	        "--gen-questions", "30", "--quiet"));
	start(&cache, "cache", ARGS("--quiet"));
	start(&frontend, "frontend",
	    ARGS("--users", users.url, "--answers", answers.url, "--cache",
	        cache.url, "--quiet"));
	return 0;
}

static int
teardown(void **state)
{
	(void)state;
	child_kill_all();
	return 0;
}

/* Runs the client, expects exit 0, and returns its output parsed as JSON
 * (the caller's reference). */
static json_t *
call_json(const char *url, const char *method, const char *req)
{
	run r = cli(NULL, ARGS("call", url, method, req));
	if (r.rc != 0)
		fail_msg("%s %s: exit %d: %s", method, req, r.rc, r.err);
	json_t *j = json_loads(r.out, 0, NULL);
	assert_non_null(j);
	run_free(&r);
	return j;
}

static void
test_cli_lists_and_describes_every_service(void **state)
{
	(void)state;
	const struct {
		child *c;
		const char *service, *line;
	} want[] = {
		{ &users, "asynq.users.Users",
		    "  rpc GetUser(asynq.users.UserId) returns "
		    "(asynq.users.User); // idempotent, whole batch\n" },
		{ &answers, "asynq.answers.Answers",
		    "  rpc ListAnswers(asynq.answers.QuestionId) returns "
		    "(asynq.answers.AnswerIds);" },
		{ &cache, "asynq.cache.Cache",
		    "  rpc Incr(asynq.cache.IncrRequest) returns "
		    "(asynq.cache.IncrReply);" },
		{ &frontend, "asynq.frontend.Frontend",
		    "  rpc QuestionPage(asynq.frontend.QuestionId) returns "
		    "(asynq.frontend.Page); // idempotent\n" },
	};
	for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
		char list[256];
		snprintf(list, sizeof(list),
		    "asynq.health.v1.Health\nasynq.reflection.v1.Reflection\n"
		    "%s\n",
		    want[i].service);
		run r = cli(NULL, ARGS("list", want[i].c->url));
		assert_rc(r, 0);
		assert_string_equal(r.out, list);
		run_free(&r);
		r = cli(NULL,
		    ARGS("describe", want[i].c->url, want[i].service));
		assert_rc(r, 0);
		if (strstr(r.out, want[i].line) == NULL)
			fail_msg("describe %s printed:\n%s", want[i].service,
			    r.out);
		run_free(&r);
		r = cli(NULL, ARGS("health", want[i].c->url, want[i].service));
		assert_rc(r, 0);
		assert_string_equal(r.out, "SERVING\n");
		run_free(&r);
	}
}

static void
test_cli_calls_agree_across_the_services(void **state)
{
	(void)state;
	/* The answers' authors, from the answers service. */
	const char *ids[] = { "1", "2", "3" };
	json_t *names = json_array();
	for (size_t i = 0; i < 3; i++) {
		char req[64];
		snprintf(req, sizeof(req), "{\"id\": %s}", ids[i]);
		json_t *a = call_json(answers.url,
		    "asynq.answers.Answers/GetAnswer", req);
		assert_string_equal(json_string_value(json_object_get(a, "id")),
		    ids[i]);
		const char *author =
		    json_string_value(json_object_get(a, "authorId"));
		assert_non_null(author);
		snprintf(req, sizeof(req), "{\"id\": \"%s\"}", author);
		json_t *u =
		    call_json(users.url, "asynq.users.Users/GetUser", req);
		assert_string_equal(json_string_value(json_object_get(u, "id")),
		    author);
		json_array_append(names, json_object_get(u, "name"));
		json_decref(u);
		json_decref(a);
	}
	/* The frontend says the same, in one call. */
	json_t *f = call_json(frontend.url,
	    "asynq.frontend.Frontend/AuthorNames", "{\"ids\": [1, 2, 3]}");
	json_t *want = json_pack("{s:O}", "names", names);
	assert_true(json_equal(f, want));
	json_decref(want);
	json_decref(f);
	json_decref(names);

	/* A missing user or answer fails with the service's status (and
	 * a request none of whose ids exist is served like any other). */
	run r = cli(NULL,
	    ARGS("call", users.url, "asynq.users.Users/GetUser",
	        "{\"id\": 100000}"));
	assert_string_equal(r.err, "asynq: NOT_FOUND: no such user: 100000\n");
	assert_rc(r, 5);
	run_free(&r);
	r = cli(NULL,
	    ARGS("call", answers.url, "asynq.answers.Answers/GetAnswer",
	        "{\"id\": 100000}"));
	assert_rc(r, 5);
	assert_non_null(strstr(r.err, "asynq: NOT_FOUND: "));
	run_free(&r);
}

static void
test_cli_sets_and_gets_through_the_cache(void **state)
{
	(void)state;
	/* bytes travel as base64: "hi" is aGk=, "there" dGhlcmU=. */
	json_t *j = call_json(cache.url, "asynq.cache.Cache/Set",
	    "{\"key\": \"aGk=\", \"value\": \"dGhlcmU=\"}");
	json_decref(j);
	run r = cli("{\"key\": \"aGk=\"}\n{\"key\": \"bm9uZQ==\"}\n",
	    ARGS("call", cache.url, "asynq.cache.Cache/Get"));
	assert_rc(r, 0);
	assert_string_equal(r.out,
	    "{\"found\": true, \"value\": \"dGhlcmU=\"}\n"
	    "{\"found\": false, \"value\": \"\"}\n");
	assert_string_equal(r.err, "asynq: 2 calls in 1 request\n");
	run_free(&r);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_cli_lists_and_describes_every_service),
		cmocka_unit_test(test_cli_calls_agree_across_the_services),
		cmocka_unit_test(test_cli_sets_and_gets_through_the_cache),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
