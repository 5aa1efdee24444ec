/* SPDX-License-Identifier: MIT */
/*
 * Tests of protoc-gen-asynq as protoc runs it: each test writes a small
 * .proto file into the test's temporary directory, runs protoc with the
 * plugin (a data dependency, found in the runfiles like
 * proto/asynq/options.proto), and checks what a user sees: the exit
 * status, protoc's message, and the files written.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include <cmocka.h>

#define PLUGIN "framework/codegen/protoc-gen-asynq"

/* What one protoc run produced. */
struct run {
	char dir[512];     /* the run's directory: in/ and out/ */
	int status;        /* protoc's exit status */
	char output[8192]; /* its standard output and error */
};

static void
make_dir(const char *path)
{
	struct stat st;

	if (mkdir(path, 0755) != 0)
		assert_true(stat(path, &st) == 0 && S_ISDIR(st.st_mode));
}

/* The directory of a test (cmocka runs the tests one after another). */
static void
run_dir(struct run *r, const char *test)
{
	const char *tmp = getenv("TEST_TMPDIR");
	char path[600];

	assert_non_null(tmp);
	snprintf(r->dir, sizeof(r->dir), "%s/%s", tmp, test);
	make_dir(r->dir);
	snprintf(path, sizeof(path), "%s/in", r->dir);
	make_dir(path);
	snprintf(path, sizeof(path), "%s/out", r->dir);
	make_dir(path);
}

/* capture runs cmd through the shell, keeping its output and status. */
static void
capture(struct run *r, const char *cmd)
{
	FILE *p = popen(cmd, "r");
	size_t len = 0, got;
	int st;

	assert_non_null(p);
	while ((got = fread(r->output + len, 1, sizeof(r->output) - 1 - len,
	            p)) > 0)
		len += got;
	r->output[len] = '\0';
	st = pclose(p);
	assert_true(WIFEXITED(st));
	r->status = WEXITSTATUS(st);
}

/* protoc writes in/<name> holding text and runs protoc with the plugin;
 * out_prefix goes before the output directory in --asynq_out. */
static void
protoc(struct run *r, const char *test, const char *name, const char *text,
    const char *out_prefix)
{
	char path[700], cmd[4096];
	FILE *f;

	run_dir(r, test);
	snprintf(path, sizeof(path), "%s/in/%s", r->dir, name);
	assert_non_null(f = fopen(path, "w"));
	assert_true(fputs(text, f) >= 0);
	assert_int_equal(fclose(f), 0);
	snprintf(cmd, sizeof(cmd),
	    "/usr/bin/protoc --plugin=protoc-gen-asynq=%s -I%s/in -I. "
	    "-I/usr/include --asynq_out=%s%s/out %s 2>&1",
	    PLUGIN, r->dir, out_prefix, r->dir, path);
	capture(r, cmd);
}

/* read_out returns the content of out/<name> (malloc'd), or NULL. */
static char *
read_out(const struct run *r, const char *name)
{
	char path[700];
	char *text;
	long len;
	FILE *f;

	snprintf(path, sizeof(path), "%s/out/%s", r->dir, name);
	if ((f = fopen(path, "r")) == NULL)
		return NULL;
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	assert_true((len = ftell(f)) >= 0);
	rewind(f);
	assert_non_null(text = malloc((size_t)len + 1));
	assert_int_equal(fread(text, 1, (size_t)len, f), (size_t)len);
	text[len] = '\0';
	fclose(f);
	return text;
}

static void
assert_contains(const char *text, const char *want)
{
	if (strstr(text, want) == NULL)
		fail_msg("\"%s\" not found in:\n%s", want, text);
}

static void
assert_no_output_files(const struct run *r, const char *base)
{
	char name[256];

	snprintf(name, sizeof(name), "%s.asynq.h", base);
	assert_null(read_out(r, name));
	snprintf(name, sizeof(name), "%s.asynq.c", base);
	assert_null(read_out(r, name));
}

#define HEAD                                                                   \
	"syntax = \"proto3\";\n"                                               \
	"package t;\n"                                                         \
	"import \"proto/asynq/options.proto\";\n"                              \
	"message Req { int64 id = 1; }\n"

/* A service whose options are given by the test. */
static const char *
service_with(char *buf, size_t size, const char *options)
{
	snprintf(buf, size,
	    HEAD "service Svc {\n%s\n  rpc Get(Req) returns (Req);\n}\n",
	    options);
	return buf;
}

static void
test_plugin_writes_header_and_source(void **state)
{
	struct run r;
	char proto[1024];
	char *h, *c;

	(void)state;
	protoc(&r, "writes", "good.proto",
	    service_with(proto, sizeof(proto),
	        "  option (asynq.default_deadline_ms) = 7;"),
	    "");
	assert_int_equal(r.status, 0);
	assert_string_equal(r.output, "");
	assert_non_null(h = read_out(&r, "good.asynq.h"));
	assert_non_null(c = read_out(&r, "good.asynq.c"));
	assert_contains(h, "#include \"asynq/rpc_desc.h\"");
	assert_contains(h, "#include \"good.pb-c.h\"");
	assert_contains(h,
	    "extern const asynq_rpc_service_desc "
	    "t__svc__asynq_desc;");
	assert_contains(h, "T__SVC__ASYNQ_METHOD_GET = 0,");
	assert_contains(c, "#include \"good.asynq.h\"");
	assert_contains(c, ".full_name = \"t.Svc/Get\",");
	assert_contains(c, ".input = &t__req__descriptor,");
	assert_contains(c, ".batch_max_calls = 0u,");
	assert_contains(c, ".default_deadline_ms = 7u,");
	free(h);
	free(c);
}

/* Build rules name the outputs from the .proto names alone, so a file
 * without services still gets both. */
static void
test_plugin_file_without_services(void **state)
{
	struct run r;
	char *h, *c;

	(void)state;
	protoc(&r, "no_services", "empty.proto", HEAD, "");
	assert_int_equal(r.status, 0);
	assert_non_null(h = read_out(&r, "empty.asynq.h"));
	assert_non_null(c = read_out(&r, "empty.asynq.c"));
	assert_contains(h, "declares no services");
	assert_null(strstr(c, "asynq_rpc_service_desc"));
	free(h);
	free(c);
}

/* batch_max_calls at its limits: 0 is rejected by the plugin, 1 and the
 * largest uint32 are accepted, one more is rejected by protoc itself. */
static void
test_plugin_rejects_zero_batch_max_calls(void **state)
{
	struct run r;
	char proto[1024];

	(void)state;
	protoc(&r, "batch_zero", "bad.proto",
	    service_with(proto, sizeof(proto),
	        "  option (asynq.batch_max_calls) = 0;"),
	    "");
	assert_int_not_equal(r.status, 0);
	assert_contains(r.output,
	    "bad.proto: service t.Svc: option "
	    "(asynq.batch_max_calls) = 0 is invalid");
	assert_no_output_files(&r, "bad");
}

static void
test_plugin_batch_max_calls_limits(void **state)
{
	static const struct {
		const char *value;
		int ok;
		const char *want;
	} cases[] = {
		{ "1", 1, ".batch_max_calls = 1u," },
		{ "4294967295", 1, ".batch_max_calls = 4294967295u," },
		{ "4294967296", 0, "batch_max_calls" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct run r;
		char proto[1024], opt[128], test[32];
		char *c;

		snprintf(opt, sizeof(opt),
		    "  option (asynq.batch_max_calls) = %s;", cases[i].value);
		snprintf(test, sizeof(test), "batch_limit_%zu", i);
		protoc(&r, test, "lim.proto",
		    service_with(proto, sizeof(proto), opt), "");
		if (!cases[i].ok) {
			assert_int_not_equal(r.status, 0);
			assert_contains(r.output, cases[i].want);
			continue;
		}
		assert_int_equal(r.status, 0);
		assert_non_null(c = read_out(&r, "lim.asynq.c"));
		assert_contains(c, cases[i].want);
		free(c);
	}
}

static void
test_plugin_rejects_streaming_method(void **state)
{
	struct run r;

	(void)state;
	protoc(&r, "streaming", "stream.proto",
	    HEAD "service Svc { rpc Watch(Req) returns (stream Req); }\n", "");
	assert_int_not_equal(r.status, 0);
	assert_contains(r.output,
	    "method t.Svc/Watch: streaming methods are "
	    "not supported");
	assert_no_output_files(&r, "stream");
}

/* A method whose protoc-c function would have the name of the table. */
static void
test_plugin_rejects_colliding_method_name(void **state)
{
	struct run r;

	(void)state;
	protoc(&r, "collision", "coll.proto",
	    HEAD "service Svc { rpc AsynqDesc(Req) returns (Req); }\n", "");
	assert_int_not_equal(r.status, 0);
	assert_contains(r.output,
	    "method t.Svc/AsynqDesc: the name collides "
	    "with the generated symbol "
	    "t__svc__asynq_desc");
}

static void
test_plugin_rejects_parameter(void **state)
{
	struct run r;
	char proto[1024];

	(void)state;
	protoc(&r, "parameter", "param.proto",
	    service_with(proto, sizeof(proto), ""), "stubs=yes:");
	assert_int_not_equal(r.status, 0);
	assert_contains(r.output, "unknown parameter \"stubs=yes\"");
	assert_no_output_files(&r, "param");
}

/* protobuf-c's (pb_c_file).c_package renames the package in protoc-c's C
 * names; the table follows it (a length-delimited option, decoded from
 * FileOptions' unknown fields). */
static void
test_plugin_follows_c_package(void **state)
{
	struct run r;
	char *h, *c;

	(void)state;
	protoc(&r, "c_package", "cpkg.proto",
	    "syntax = \"proto3\";\n"
	    "package long.name;\n"
	    "import \"protobuf-c/protobuf-c.proto\";\n"
	    "option (pb_c_file).const_strings = true;\n"
	    "option (pb_c_file).c_package = \"short\";\n"
	    "message Req { int64 id = 1; }\n"
	    "service Svc { rpc Get(Req) returns (Req); }\n",
	    "");
	assert_int_equal(r.status, 0);
	assert_non_null(h = read_out(&r, "cpkg.asynq.h"));
	assert_non_null(c = read_out(&r, "cpkg.asynq.c"));
	assert_contains(h, "short__svc__asynq_desc;");
	assert_contains(c, ".input = &short__req__descriptor,");
	/* The wire name keeps the .proto's package. */
	assert_contains(c, ".full_name = \"long.name.Svc/Get\",");
	free(h);
	free(c);
}

/* Run by hand on something that is not a CodeGeneratorRequest. */
static void
test_plugin_rejects_bad_input(void **state)
{
	struct run r;

	(void)state;
	capture(&r, "echo garbage | " PLUGIN " 2>&1");
	assert_int_equal(r.status, 1);
	assert_contains(r.output, "is not a CodeGeneratorRequest");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_plugin_writes_header_and_source),
		cmocka_unit_test(test_plugin_file_without_services),
		cmocka_unit_test(test_plugin_rejects_zero_batch_max_calls),
		cmocka_unit_test(test_plugin_batch_max_calls_limits),
		cmocka_unit_test(test_plugin_rejects_streaming_method),
		cmocka_unit_test(test_plugin_rejects_colliding_method_name),
		cmocka_unit_test(test_plugin_rejects_parameter),
		cmocka_unit_test(test_plugin_follows_c_package),
		cmocka_unit_test(test_plugin_rejects_bad_input),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
