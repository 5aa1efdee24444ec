/* SPDX-License-Identifier: MIT */
/*
 * Tests of the code protoc-gen-asynq generates for test_service.proto
 * through asynq_proto_library: the service descriptor tables hold the names,
 * methods, flags and option values of the .proto, and their message
 * descriptors are protoc-c's own, so payloads encode and decode with them.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "asynq/rpc_desc.h"
#include "tests/codegen/test_service.asynq.h"

static const asynq_rpc_service_desc *const users =
    &asynq__test__user_store__asynq_desc;
static const asynq_rpc_service_desc *const plain =
    &asynq__test__plain__asynq_desc;

static void
test_codegen_service_names(void **state)
{
	(void)state;
	assert_string_equal(users->name, "UserStore");
	assert_string_equal(users->full_name, "asynq.test.UserStore");
	assert_string_equal(plain->name, "Plain");
	assert_string_equal(plain->full_name, "asynq.test.Plain");
}

/* Each method has a short handle to its descriptor. */
static void
test_codegen_method_handles(void **state)
{
	(void)state;
	assert_ptr_equal(asynq__test__user_store__get_name__method,
	    &users->methods[0]);
	assert_ptr_equal(asynq__test__user_store__lookup_httpnames__method,
	    &users->methods[1]);
	assert_string_equal(asynq__test__user_store__set_meta__method->name,
	    "SetMeta");
	assert_string_equal(asynq__test__plain__echo__method->full_name,
	    "asynq.test.Plain/Echo");
}

static void
test_codegen_methods_in_proto_order(void **state)
{
	static const char *const names[] = { "GetName", "LookupHTTPNames",
		"SetMeta" };
	static const char *const full[] = { "asynq.test.UserStore/GetName",
		"asynq.test.UserStore/LookupHTTPNames",
		"asynq.test.UserStore/SetMeta" };

	(void)state;
	assert_int_equal(users->n_methods, 3);
	assert_non_null(users->methods);
	for (size_t i = 0; i < 3; i++) {
		assert_string_equal(users->methods[i].name, names[i]);
		assert_string_equal(users->methods[i].full_name, full[i]);
	}
	assert_int_equal(ASYNQ__TEST__USER_STORE__ASYNQ_METHOD_GET_NAME, 0);
	assert_int_equal(ASYNQ__TEST__USER_STORE__ASYNQ_METHOD_LOOKUP_HTTPNAMES,
	    1);
	assert_int_equal(ASYNQ__TEST__USER_STORE__ASYNQ_METHOD_SET_META, 2);
	assert_int_equal(plain->n_methods, 1);
	assert_string_equal(
	    plain->methods[ASYNQ__TEST__PLAIN__ASYNQ_METHOD_ECHO].full_name,
	    "asynq.test.Plain/Echo");
}

static void
test_codegen_method_flags(void **state)
{
	const asynq_rpc_method_desc *m = users->methods;

	(void)state;
	/* (asynq.idempotent) = true */
	assert_true(m[0].idempotent);
	assert_false(m[0].whole_batch);
	/* (asynq.whole_batch) = true and idempotency_level = NO_SIDE_EFFECTS */
	assert_true(m[1].idempotent);
	assert_true(m[1].whole_batch);
	/* no options */
	assert_false(m[2].idempotent);
	assert_false(m[2].whole_batch);
	assert_false(plain->methods[0].idempotent);
	assert_false(plain->methods[0].whole_batch);
}

static void
test_codegen_service_options(void **state)
{
	(void)state;
	assert_int_equal(users->batch_max_calls, 100);
	assert_int_equal(users->flush_delay_us, 250);
	assert_int_equal(users->default_deadline_ms, 1500);
	/* Unset options read as 0: the runtime's defaults apply. */
	assert_int_equal(plain->batch_max_calls, 0);
	assert_int_equal(plain->flush_delay_us, 0);
	assert_int_equal(plain->default_deadline_ms, 0);
}

static void
test_codegen_message_descriptors_are_protoc_c(void **state)
{
	const asynq_rpc_method_desc *m = users->methods;

	(void)state;
	assert_ptr_equal(m[0].input,
	    &asynq__test__get_name_request__descriptor);
	assert_ptr_equal(m[0].output, &asynq__test__get_name_reply__descriptor);
	/* Nested types, acronyms and digits in the names. */
	assert_ptr_equal(m[1].input,
	    &asynq__test__httplookup__v2_batch__descriptor);
	assert_ptr_equal(m[1].output,
	    &asynq__test__httplookup__answer__descriptor);
	/* A type of another file (rpc.proto). */
	assert_ptr_equal(m[2].input, &asynq__rpc__metadata__descriptor);
	assert_string_equal(m[2].input->name, "asynq.rpc.Metadata");
	assert_string_equal(m[0].input->name, "asynq.test.GetNameRequest");
	assert_ptr_equal(plain->methods[0].input, plain->methods[0].output);
}

/* A request encoded with the method's input descriptor decodes with it,
 * as the server will decode a call's payload. */
static void
test_codegen_payload_round_trip(void **state)
{
	const asynq_rpc_method_desc *m =
	    &users->methods[ASYNQ__TEST__USER_STORE__ASYNQ_METHOD_GET_NAME];
	Asynq__Test__GetNameRequest req = ASYNQ__TEST__GET_NAME_REQUEST__INIT;
	ProtobufCMessage *msg;
	uint8_t buf[64];
	size_t len;

	(void)state;
	req.user_id = 123456789;
	assert_true(protobuf_c_message_check(&req.base));
	assert_ptr_equal(req.base.descriptor, m->input);
	len = protobuf_c_message_pack(&req.base, buf);
	assert_int_equal(len, protobuf_c_message_get_packed_size(&req.base));
	msg = protobuf_c_message_unpack(m->input, NULL, len, buf);
	assert_non_null(msg);
	assert_ptr_equal(msg->descriptor, m->input);
	assert_int_equal(((Asynq__Test__GetNameRequest *)msg)->user_id,
	    123456789);
	protobuf_c_message_free_unpacked(msg, NULL);

	/* The output descriptor decodes a reply. */
	{
		Asynq__Test__GetNameReply rep =
		    ASYNQ__TEST__GET_NAME_REPLY__INIT;
		Asynq__Test__GetNameReply *got;

		rep.name = "ada";
		len = protobuf_c_message_pack(&rep.base, buf);
		got = (Asynq__Test__GetNameReply *)protobuf_c_message_unpack(
		    m->output, NULL, len, buf);
		assert_non_null(got);
		assert_string_equal(got->name, "ada");
		protobuf_c_message_free_unpacked(&got->base, NULL);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_codegen_service_names),
		cmocka_unit_test(test_codegen_method_handles),
		cmocka_unit_test(test_codegen_methods_in_proto_order),
		cmocka_unit_test(test_codegen_method_flags),
		cmocka_unit_test(test_codegen_service_options),
		cmocka_unit_test(test_codegen_message_descriptors_are_protoc_c),
		cmocka_unit_test(test_codegen_payload_round_trip),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
