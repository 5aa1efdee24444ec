/* SPDX-License-Identifier: MIT */
/*
 * Mocking a generated RPC stub: the code under test calls
 * asynq__test__user_store__get_name__call as it would in production; the
 * test replaces that stub with a mock that scripts replies and errors,
 * counts calls and is restored afterwards. No server or channel exists.
 */
#include "tests/core/testutil.h"

#include "asynq/testing.h"
#include "tests/codegen/test_service.asynq.h"

static asynq_mock *mock;

ASYNQ_MOCK_FN(get_name_mock, mock, asynq_rpc_channel *ch,
    const Asynq__Test__GetNameRequest *req)

static void
reply_free(void *p)
{
	asynq__test__get_name_reply__free_unpacked(p, NULL);
}

static Asynq__Test__GetNameReply *
reply_new(const char *name)
{
	Asynq__Test__GetNameReply *r = malloc(sizeof(*r));
	asynq__test__get_name_reply__init(r);
	r->name = strdup(name);
	return r;
}

/* The code under test: the user's name, or "?" when the call fails. */
static asynq_status
greeting_task(asynq_task *t, void *arg)
{
	Asynq__Test__GetNameRequest req = ASYNQ__TEST__GET_NAME_REQUEST__INIT;
	req.user_id = (int64_t)(intptr_t)arg;
	asynq_future *f = asynq__test__user_store__get_name__call(NULL, &req);
	asynq_status st = asynq_await(t, f);
	const Asynq__Test__GetNameReply *r =
	    asynq__test__user_store__get_name__reply(f);
	char *out = strdup(st == ASYNQ_OK && r != NULL ? r->name : "?");
	asynq_future_rele(f);
	return asynq_return_ptr(t, out, free);
}

static void
test_mock_stub_scripts_replies_and_errors(void **state)
{
	(void)state;
	assert_int_equal(
	    asynq_mock_alloc(&mock, "GetName", ASYNQ_MOCK_IMMEDIATE), ASYNQ_OK);
	asynq_mock_install(mock, &asynq__test__user_store__get_name__call,
	    get_name_mock);
	asynq_mock_returns_ptr(mock, reply_new("Ada"), reply_free);
	asynq_mock_fails(mock, ASYNQ_UNAVAILABLE, "users is down");

	/* An asynchronous caller (a task) ... */
	asynq_future *a = asynq_spawn(greeting_task, (void *)(intptr_t)1);
	assert_status(asynq_wait(a), ASYNQ_OK);
	assert_string_equal(asynq_future_ptr(a), "Ada");
	/* ... and one more that gets the scripted error. */
	asynq_future *b = asynq_spawn(greeting_task, (void *)(intptr_t)2);
	assert_status(asynq_wait(b), ASYNQ_OK);
	assert_string_equal(asynq_future_ptr(b), "?");
	assert_int_equal(asynq_mock_calls(mock), 2);
	assert_int_equal(asynq_mock_remaining(mock), 0);

	/* A synchronous caller, outside any task. */
	asynq_mock_returns_ptr(mock, reply_new("Grace"), reply_free);
	Asynq__Test__GetNameRequest req = ASYNQ__TEST__GET_NAME_REQUEST__INIT;
	asynq_future *c = asynq__test__user_store__get_name__call(NULL, &req);
	assert_status(asynq_wait(c), ASYNQ_OK);
	assert_string_equal(asynq__test__user_store__get_name__reply(c)->name,
	    "Grace");
	assert_int_equal(asynq_mock_calls(mock), 3);

	asynq_mock_restore(mock);
	assert_ptr_equal(asynq__test__user_store__get_name__call,
	    asynq__test__user_store__get_name__call_rpc);
	asynq_future_rele_n((asynq_future *[]){ a, b, c }, 3);
	asynq_mock_free(mock);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_mock_stub_scripts_replies_and_errors),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
