/* SPDX-License-Identifier: MIT */
/*
 * Tests of the fake service backend (asynq/testing.h): 50 calls made by 50
 * tasks arrive as one request with their method names, handlers answer with
 * values and errors, methods without a handler are UNIMPLEMENTED, the
 * service's batch_max_calls splits a flush into requests, and unflushed
 * calls are cancelled when the fake is freed.
 */
#include <stdint.h>

#include "asynq/testing.h"
#include "tests/core/testutil.h"

/* A service descriptor as protoc-gen-asynq would generate it (the message
 * descriptors are not needed by the fake). */
static const asynq_rpc_method_desc users_methods[] = {
	{ .name = "GetName", .full_name = "test.Users/GetName" },
	{ .name = "GetAge",
	    .full_name = "test.Users/GetAge",
	    .idempotent = true },
	{ .name = "Delete", .full_name = "test.Users/Delete" },
};

static const asynq_rpc_service_desc users_svc = {
	.name = "Users",
	.full_name = "test.Users",
	.methods = users_methods,
	.n_methods = 3,
};

static const asynq_rpc_service_desc capped_svc = {
	.name = "Users",
	.full_name = "test.CappedUsers",
	.methods = users_methods,
	.n_methods = 3,
	.batch_max_calls = 20,
};

enum { GET_NAME, GET_AGE, DELETE };

static asynq_fake *fake;
static int handled;

/* GetName: the request is an int64 id; the reply a string "user<id>". */
static asynq_status
get_name(asynq_fake *f, size_t method, void *req, asynq_future *item, void *arg)
{
	(void)f;
	(void)arg;
	TCHECK_INT(method, GET_NAME);
	int64_t id = *(int64_t *)req;
	char *s = malloc(32);
	if (s == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	snprintf(s, 32, "user%lld", (long long)id);
	handled++;
	return asynq_item_set_ptr(item, s, free);
}

/* GetAge: ids below zero are NOT_FOUND; the reply is 20 + id. */
static asynq_status
get_age(asynq_fake *f, size_t method, void *req, asynq_future *item, void *arg)
{
	(void)f;
	(void)method;
	int64_t id = *(int64_t *)req;
	handled++;
	if (id < 0)
		return ASYNQ_NOT_FOUND;
	return asynq_item_set_i64(item, 20 + id + *(int64_t *)arg);
}

typedef struct call_arg {
	size_t method;
	int64_t id;
} call_arg;

/* One call per task, as request handlers would make them. */
static asynq_status
one_call(asynq_task *t, void *arg)
{
	call_arg *c = arg;
	asynq_future *f = asynq_fake_call(fake, c->method, &c->id);
	asynq_status st = asynq_await(t, f);
	if (st == ASYNQ_OK && c->method == GET_NAME) {
		char want[32];
		snprintf(want, sizeof(want), "user%lld", (long long)c->id);
		TCHECK(strcmp(asynq_future_ptr(f), want) == 0);
	} else if (st == ASYNQ_OK) {
		TCHECK_INT(asynq_future_i64(f), 20 + c->id);
	}
	asynq_future_rele(f);
	return st;
}

typedef struct fan_out {
	call_arg calls[64];
	size_t n;
	asynq_status st[64];
} fan_out;

static asynq_status
spawn_all(asynq_task *t, void *arg)
{
	fan_out *fo = arg;
	asynq_future *fs[64];
	for (size_t i = 0; i < fo->n; i++)
		fs[i] = asynq_spawn(one_call, &fo->calls[i]);
	(void)asynq_await_all(t, fs, fo->n);
	for (size_t i = 0; i < fo->n; i++)
		fo->st[i] = asynq_future_status(fs[i]);
	asynq_future_rele_n(fs, fo->n);
	return ASYNQ_OK;
}

static void
run_fan_out(fan_out *fo)
{
	asynq_future *f = asynq_spawn(spawn_all, fo);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

static int64_t zero = 0;

static void
test_fake_fifty_calls_one_request(void **state)
{
	(void)state;
	fan_out fo = { .n = 50 };
	handled = 0;
	assert_status(asynq_fake_alloc(&fake, &users_svc), ASYNQ_OK);
	assert_status(asynq_fake_handle(fake, GET_NAME, get_name, NULL),
	    ASYNQ_OK);
	for (size_t i = 0; i < fo.n; i++)
		fo.calls[i] = (call_arg){ GET_NAME, (int64_t)i };
	run_fan_out(&fo);
	ASSERT_TASK_CHECKS(100);
	for (size_t i = 0; i < fo.n; i++)
		assert_status(fo.st[i], ASYNQ_OK);
	assert_int_equal(handled, 50);
	assert_int_equal(asynq_fake_flushes(fake), 1);
	assert_int_equal(asynq_fake_requests(fake), 1);
	assert_int_equal(asynq_fake_request_calls(fake, 0), 50);
	for (size_t c = 0; c < 50; c++)
		assert_string_equal(asynq_fake_request_method(fake, 0, c),
		    "test.Users/GetName");
	assert_null(asynq_fake_request_method(fake, 0, 50));
	assert_null(asynq_fake_request_method(fake, 1, 0));
	assert_int_equal(asynq_fake_calls(fake, SIZE_MAX), 50);
	assert_int_equal(asynq_fake_calls(fake, GET_NAME), 50);
	assert_int_equal(asynq_fake_calls(fake, GET_AGE), 0);
	asynq_fake_free(fake);
}

static void
test_fake_mixed_methods_handlers_and_errors(void **state)
{
	(void)state;
	fan_out fo = { .n = 6 };
	handled = 0;
	assert_status(asynq_fake_alloc(&fake, &users_svc), ASYNQ_OK);
	assert_int_equal(asynq_fake_method_index(fake, "GetAge"), GET_AGE);
	assert_int_equal(asynq_fake_method_index(fake, "test.Users/Delete"),
	    DELETE);
	assert_int_equal(asynq_fake_method_index(fake, "Nope"), -1);
	assert_status(asynq_fake_handle(fake, 3, get_age, NULL),
	    ASYNQ_INVALID_ARGUMENT);
	asynq_fake_handle(fake, GET_NAME, get_name, NULL);
	asynq_fake_handle(fake, GET_AGE, get_age, &zero);
	fo.calls[0] = (call_arg){ GET_NAME, 1 };
	fo.calls[1] = (call_arg){ GET_AGE, 2 };
	fo.calls[2] = (call_arg){ GET_AGE, -1 }; /* NOT_FOUND */
	fo.calls[3] = (call_arg){ DELETE, 4 };   /* no handler */
	fo.calls[4] = (call_arg){ 7, 5 };        /* no such method */
	fo.calls[5] = (call_arg){ GET_NAME, 6 };
	run_fan_out(&fo);
	ASSERT_TASK_CHECKS(4);
	assert_status(fo.st[0], ASYNQ_OK);
	assert_status(fo.st[1], ASYNQ_OK);
	assert_status(fo.st[2], ASYNQ_NOT_FOUND);
	assert_status(fo.st[3], ASYNQ_UNIMPLEMENTED);
	assert_status(fo.st[4], ASYNQ_INVALID_ARGUMENT);
	assert_status(fo.st[5], ASYNQ_OK);
	assert_int_equal(handled, 4);
	/* The bad method index never reached the backend. */
	assert_int_equal(asynq_fake_requests(fake), 1);
	assert_int_equal(asynq_fake_request_calls(fake, 0), 5);
	static const char *const want[] = { "test.Users/GetName",
		"test.Users/GetAge", "test.Users/GetAge", "test.Users/Delete",
		"test.Users/GetName" };
	for (size_t c = 0; c < 5; c++)
		assert_string_equal(asynq_fake_request_method(fake, 0, c),
		    want[c]);
	assert_int_equal(asynq_fake_calls(fake, GET_AGE), 2);
	assert_int_equal(asynq_fake_calls(fake, DELETE), 1);

	asynq_fake_clear(fake);
	assert_int_equal(asynq_fake_requests(fake), 0);
	assert_int_equal(asynq_fake_calls(fake, SIZE_MAX), 0);
	asynq_fake_free(fake);
}

static void
test_fake_batch_max_calls_splits_requests(void **state)
{
	(void)state;
	fan_out fo = { .n = 50 };
	assert_status(asynq_fake_alloc(&fake, &capped_svc), ASYNQ_OK);
	asynq_fake_handle(fake, GET_AGE, get_age, &zero);
	for (size_t i = 0; i < fo.n; i++)
		fo.calls[i] = (call_arg){ GET_AGE, (int64_t)i };
	run_fan_out(&fo);
	ASSERT_TASK_CHECKS(50);
	assert_int_equal(asynq_fake_flushes(fake), 1);
	assert_int_equal(asynq_fake_requests(fake), 3);
	assert_int_equal(asynq_fake_request_calls(fake, 0), 20);
	assert_int_equal(asynq_fake_request_calls(fake, 1), 20);
	assert_int_equal(asynq_fake_request_calls(fake, 2), 10);

	/* A second round is a second flush. */
	fo.n = 5;
	run_fan_out(&fo);
	assert_int_equal(asynq_fake_flushes(fake), 2);
	assert_int_equal(asynq_fake_requests(fake), 4);
	assert_int_equal(asynq_fake_request_calls(fake, 3), 5);
	assert_int_equal(asynq_fake_calls(fake, GET_AGE), 55);
	asynq_fake_free(fake);
}

static void
test_fake_free_cancels_unflushed(void **state)
{
	(void)state;
	int64_t id = 1;
	assert_status(asynq_fake_alloc(&fake, &users_svc), ASYNQ_OK);
	asynq_fake_handle(fake, GET_NAME, get_name, NULL);
	asynq_future *f = asynq_fake_call(fake, GET_NAME, &id);
	assert_false(asynq_future_done(f));
	assert_non_null(asynq_fake_backend(fake));
	asynq_fake_free(fake);
	assert_status(asynq_future_status(f), ASYNQ_CANCELLED);
	asynq_future_rele(f);
	asynq_fake_free(NULL);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_fake_fifty_calls_one_request),
		TU_TEST(test_fake_mixed_methods_handlers_and_errors),
		TU_TEST(test_fake_batch_max_calls_splits_requests),
		TU_TEST(test_fake_free_cancels_unflushed),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
