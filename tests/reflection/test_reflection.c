/* SPDX-License-Identifier: MIT */
/*
 * The reflection service every server answers
 * (proto/asynq/reflection.proto), called with the RPC client as any other
 * service on the RPC tests' Calc server: the services it lists, and the
 * files it returns for a symbol or a name, decoded as
 * google.protobuf.FileDescriptorProto and checked for the messages,
 * methods, options and imports the .proto files declare; unknown names
 * fail NOT_FOUND in words; calls made together go in one request.
 */
#include "tests/rpc/rpc_fixture.h"

#include "google/protobuf/descriptor.pb-c.h"
#include "proto/asynq/reflection.asynq.h"

#define REFL (&asynq__reflection__v1__reflection__asynq_desc)

typedef Google__Protobuf__FileDescriptorProto file_proto;
typedef Asynq__Reflection__V1__FileDescriptorResponse files_reply;

static asynq_rpc_channel *
refl_channel(const fixture *fx)
{
	const char *urls[] = { fx->url };
	asynq_rpc_channel_cfg cfg = { .urls = urls, .n_urls = 1 };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, REFL, &cfg), ASYNQ_OK);
	return ch;
}

static asynq_future *
by_symbol(asynq_rpc_channel *ch, const char *symbol)
{
	Asynq__Reflection__V1__FileContainingSymbolRequest req =
	    ASYNQ__REFLECTION__V1__FILE_CONTAINING_SYMBOL_REQUEST__INIT;
	req.symbol = (char *)symbol;
	return asynq__reflection__v1__reflection__file_containing_symbol__call(
	    ch, &req);
}

static asynq_future *
by_name(asynq_rpc_channel *ch, const char *name)
{
	Asynq__Reflection__V1__FileByNameRequest req =
	    ASYNQ__REFLECTION__V1__FILE_BY_NAME_REQUEST__INIT;
	req.filename = (char *)name;
	return asynq__reflection__v1__reflection__file_by_name__call(ch, &req);
}

/* The i-th file of a computed reply, decoded (free with file_free). */
static file_proto *
file_at(asynq_future *f, size_t i)
{
	const files_reply *r =
	    asynq__reflection__v1__reflection__file_containing_symbol__reply(f);
	if (r == NULL)
		r = asynq__reflection__v1__reflection__file_by_name__reply(f);
	assert_non_null(r);
	assert_true(i < r->n_file_descriptor_proto);
	file_proto *fp = google__protobuf__file_descriptor_proto__unpack(NULL,
	    r->file_descriptor_proto[i].len, r->file_descriptor_proto[i].data);
	assert_non_null(fp);
	return fp;
}

static void
file_free(file_proto *fp)
{
	google__protobuf__file_descriptor_proto__free_unpacked(fp, NULL);
}

static size_t
n_files(asynq_future *f)
{
	const files_reply *r =
	    asynq__reflection__v1__reflection__file_containing_symbol__reply(f);
	if (r == NULL)
		r = asynq__reflection__v1__reflection__file_by_name__reply(f);
	assert_non_null(r);
	return r->n_file_descriptor_proto;
}

/* The name of the i-th file of a reply. */
static void
assert_file_name(asynq_future *f, size_t i, const char *name)
{
	file_proto *fp = file_at(f, i);
	assert_string_equal(fp->name, name);
	file_free(fp);
}

static void
test_reflection_lists_the_servers_services(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	asynq_rpc_channel *rc = refl_channel(&fx);

	Asynq__Reflection__V1__ListServicesRequest req =
	    ASYNQ__REFLECTION__V1__LIST_SERVICES_REQUEST__INIT;
	asynq_future *f =
	    asynq__reflection__v1__reflection__list_services__call(rc, &req);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	const Asynq__Reflection__V1__ListServicesResponse *r =
	    asynq__reflection__v1__reflection__list_services__reply(f);
	assert_non_null(r);
	/* Calc's file also declares Missing, which the server lacks. */
	assert_int_equal(r->n_service, 3);
	assert_string_equal(r->service[0]->name, "asynq.health.v1.Health");
	assert_string_equal(r->service[0]->file, "proto/asynq/health.proto");
	assert_string_equal(r->service[1]->name,
	    "asynq.reflection.v1.Reflection");
	assert_string_equal(r->service[1]->file,
	    "proto/asynq/reflection.proto");
	assert_string_equal(r->service[2]->name, "asynq.rpctest.Calc");
	assert_string_equal(r->service[2]->file, "tests/rpc/test_rpc.proto");
	asynq_future_rele(f);

	assert_ptr_equal(asynq_rpc_server_service(fx.srv, 2), CALC);
	assert_null(asynq_rpc_server_service(fx.srv, 3));

	asynq_rpc_channel_free(rc);
	fx_stop(&fx);
}

static void
test_reflection_file_of_a_service_decodes_with_its_imports(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	asynq_rpc_channel *rc = refl_channel(&fx);

	asynq_future *f = by_symbol(rc, "asynq.rpctest.Calc");
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	/* The file, then what it imports, directly or not, each once. */
	assert_int_equal(n_files(f), 3);
	assert_file_name(f, 1, "proto/asynq/options.proto");
	assert_file_name(f, 2, "google/protobuf/descriptor.proto");

	file_proto *fp = file_at(f, 0);
	assert_string_equal(fp->name, "tests/rpc/test_rpc.proto");
	assert_string_equal(fp->package, "asynq.rpctest");
	assert_string_equal(fp->syntax, "proto3");
	assert_int_equal(fp->n_dependency, 1);
	assert_string_equal(fp->dependency[0], "proto/asynq/options.proto");
	/* No comments or source positions travel. */
	assert_null(fp->source_code_info);

	assert_int_equal(fp->n_message_type, 2);
	const Google__Protobuf__DescriptorProto *num = fp->message_type[0];
	assert_string_equal(num->name, "Num");
	assert_int_equal(num->n_field, 2);
	assert_string_equal(num->field[0]->name, "v");
	assert_int_equal(num->field[0]->number, 1);
	assert_int_equal(num->field[0]->type,
	    GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_INT64);
	assert_string_equal(num->field[1]->name, "s");
	assert_int_equal(num->field[1]->type,
	    GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_STRING);
	const Google__Protobuf__DescriptorProto *tree = fp->message_type[1];
	assert_string_equal(tree->name, "Tree");
	assert_string_equal(tree->field[0]->type_name, ".asynq.rpctest.Tree");

	assert_int_equal(fp->n_service, 2);
	const Google__Protobuf__ServiceDescriptorProto *calc = fp->service[0];
	assert_string_equal(calc->name, "Calc");
	assert_int_equal(calc->n_method, CALC->n_methods);
	for (size_t i = 0; i < calc->n_method; i++)
		assert_string_equal(calc->method[i]->name,
		    CALC->methods[i].name);
	const Google__Protobuf__MethodDescriptorProto *sum =
	    calc->method[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_SUM];
	assert_string_equal(sum->name, "Sum");
	assert_string_equal(sum->input_type, ".asynq.rpctest.Num");
	assert_string_equal(sum->output_type, ".asynq.rpctest.Num");
	/* asynq's options travel as the extensions they are: (asynq.
	 * whole_batch) is field 50111 of MethodOptions, true. */
	assert_non_null(sum->options);
	assert_int_equal(sum->options->base.n_unknown_fields, 1);
	assert_int_equal(sum->options->base.unknown_fields[0].tag, 50111);
	assert_int_equal(sum->options->base.unknown_fields[0].data[0], 1);
	assert_string_equal(fp->service[1]->name, "Missing");
	file_free(fp);
	asynq_future_rele(f);

	asynq_rpc_channel_free(rc);
	fx_stop(&fx);
}

static void
test_reflection_symbols_and_names_batched(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	asynq_rpc_channel *rc = refl_channel(&fx);
	asynq_rpc_server_stats before = fx_stats(&fx);

	asynq_future *f[] = {
		by_symbol(rc, "asynq.rpctest.Calc.Twice"),
		by_symbol(rc, "asynq.rpctest.Calc/Sum"),
		by_symbol(rc, ".asynq.rpctest.Num"),
		by_symbol(rc,
		    "asynq.health.v1.HealthCheckResponse.ServingStatus"),
		by_symbol(rc, "asynq.reflection.v1.Reflection"),
		by_symbol(rc, "google.protobuf.FileDescriptorProto"),
		by_name(rc, "proto/asynq/health.proto"),
		by_name(rc, "proto/asynq/options.proto"),
	};
	size_t n = sizeof(f) / sizeof(f[0]);
	assert_int_equal(asynq_wait_all(f, n), ASYNQ_OK);
	const char *first[] = {
		"tests/rpc/test_rpc.proto",
		"tests/rpc/test_rpc.proto",
		"tests/rpc/test_rpc.proto",
		"proto/asynq/health.proto",
		"proto/asynq/reflection.proto",
		"google/protobuf/descriptor.proto",
		"proto/asynq/health.proto",
		"proto/asynq/options.proto",
	};
	const size_t count[] = { 3, 3, 3, 3, 3, 1, 3, 2 };
	for (size_t i = 0; i < n; i++) {
		assert_file_name(f[i], 0, first[i]);
		assert_int_equal(n_files(f[i]), count[i]);
	}
	asynq_future_rele_n(f, n);
	/* Eight calls made together went as one request. */
	asynq_rpc_server_stats after = fx_stats(&fx);
	assert_int_equal(after.calls - before.calls, n);
	assert_int_equal(after.requests - before.requests, 1);

	asynq_rpc_channel_free(rc);
	fx_stop(&fx);
}

/* Fails the future's call with st and the message msg. */
static void
assert_fails(asynq_future *f, asynq_status st, const char *msg)
{
	assert_int_equal(asynq_wait(f), st);
	assert_string_equal(asynq_error_message(asynq_future_error(f)), msg);
	asynq_future_rele(f);
}

static void
test_reflection_unknown_names_fail_in_words(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	asynq_rpc_channel *rc = refl_channel(&fx);

	assert_fails(by_symbol(rc, "asynq.rpctest.Nope"), ASYNQ_NOT_FOUND,
	    "reflection: no service, method, message or enum named "
	    "asynq.rpctest.Nope on this server");
	assert_fails(by_symbol(rc, "asynq.rpctest.Calc.Nope"), ASYNQ_NOT_FOUND,
	    "reflection: no service, method, message or enum named "
	    "asynq.rpctest.Calc.Nope on this server");
	/* A prefix of a package is not a symbol. */
	assert_fails(by_symbol(rc, "asynq.rpc"), ASYNQ_NOT_FOUND,
	    "reflection: no service, method, message or enum named "
	    "asynq.rpc on this server");
	assert_fails(by_symbol(rc, ""), ASYNQ_INVALID_ARGUMENT,
	    "reflection: no symbol given: name a service, method, message or "
	    "enum with its package");
	assert_fails(by_name(rc, "nope.proto"), ASYNQ_NOT_FOUND,
	    "reflection: no file \"nope.proto\" among the files of this "
	    "server's services");

	asynq_rpc_channel_free(rc);
	fx_stop(&fx);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reflection_lists_the_servers_services),
		cmocka_unit_test(
		    test_reflection_file_of_a_service_decodes_with_its_imports),
		cmocka_unit_test(test_reflection_symbols_and_names_batched),
		cmocka_unit_test(test_reflection_unknown_names_fail_in_words),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
