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

/* A file with services embeds its FileDescriptorProto and those of the
 * files it imports, directly or not, in protoc's order (each import
 * first), each pointing at its imports; the service table points at its
 * file. */
static void
test_plugin_embeds_the_files_for_reflection(void **state)
{
	struct run r;
	char proto[1024];
	char *c;

	(void)state;
	protoc(&r, "embeds", "good.proto",
	    service_with(proto, sizeof(proto), ""), "");
	assert_int_equal(r.status, 0);
	assert_non_null(c = read_out(&r, "good.asynq.c"));
	assert_contains(c,
	    "\n/* google/protobuf/descriptor.proto */\n"
	    "static const uint8_t asynqi_fd0_bytes[");
	assert_contains(c,
	    "\t.name = \"google/protobuf/descriptor.proto\",\n"
	    "\t.descriptor = asynqi_fd0_bytes,\n");
	assert_contains(c, "\t.deps = NULL,\n\t.n_deps = 0,\n");
	assert_contains(c,
	    "static const asynq_rpc_file_desc *const asynqi_fd1_deps[1] = {\n"
	    "\t&asynqi_fd0,\n};\n");
	assert_contains(c, "\t.name = \"proto/asynq/options.proto\",\n");
	/* FileDescriptorProto.name (field 1) comes first: "good.proto". */
	assert_contains(c,
	    "\n/* good.proto */\n"
	    "static const uint8_t asynqi_fd2_bytes[");
	assert_contains(c,
	    "] = {\n\t0x0a, 0x0a, 0x67, 0x6f, 0x6f, 0x64, 0x2e,");
	assert_contains(c,
	    "static const asynq_rpc_file_desc *const asynqi_fd2_deps[1] = {\n"
	    "\t&asynqi_fd1,\n};\n");
	assert_contains(c, "\t.file = &asynqi_fd2,\n");
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
	assert_null(strstr(c, "asynqi_fd")); /* no files embedded */
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

static void
test_plugin_rejects_request_cache_on_non_idempotent_method(void **state)
{
	struct run r;

	(void)state;
	protoc(&r, "rcache", "rcache.proto",
	    HEAD "service Svc { rpc Add(Req) returns (Req) {"
	         " option (asynq.request_cache) = true; } }\n",
	    "");
	assert_int_not_equal(r.status, 0);
	assert_contains(r.output,
	    "method t.Svc/Add: (asynq.request_cache) needs an idempotent "
	    "method");
	assert_no_output_files(&r, "rcache");
}

/* (asynq.allow_peers) and (asynq.allow_scopes): every value, in order, as
 * C strings (quotes and question marks escaped) in the method's table. */
static void
test_plugin_emits_allow_lists(void **state)
{
	struct run r;
	char *c;

	(void)state;
	protoc(&r, "allow", "allow.proto",
	    HEAD "service Svc { rpc Get(Req) returns (Req) {"
	         " option (asynq.allow_peers) = \"spiffe://x/a\";"
	         " option (asynq.allow_peers) = \"CN=\\\"q\\\"?\";"
	         " option (asynq.allow_scopes) = \"read\"; }"
	         " rpc Put(Req) returns (Req); }\n",
	    "");
	assert_int_equal(r.status, 0);
	assert_non_null(c = read_out(&r, "allow.asynq.c"));
	assert_contains(c,
	    "static const char *const t__svc__asynq_allow_peers_0[2] = {\n"
	    "\t\"spiffe://x/a\",\n\t\"CN=\\042q\\042\\077\",\n};");
	assert_contains(c,
	    "static const char *const t__svc__asynq_allow_scopes_0[1] = {\n"
	    "\t\"read\",\n};");
	assert_contains(c,
	    "\t\t.allow_peers = t__svc__asynq_allow_peers_0,\n"
	    "\t\t.n_allow_peers = 2,\n"
	    "\t\t.allow_scopes = t__svc__asynq_allow_scopes_0,\n"
	    "\t\t.n_allow_scopes = 1,\n");
	/* Put has none. */
	assert_null(strstr(c, "asynq_allow_peers_1"));
	free(c);
}

/* A service's lists go to its methods without their own;
 * (asynq.allow_anyone) opens one; it cannot be mixed with lists. */
static void
test_plugin_service_allow_lists(void **state)
{
	struct run r;
	char *c;

	(void)state;
	protoc(&r, "allow_svc", "allows.proto",
	    HEAD "service Svc {"
	         " option (asynq.default_allow_scopes) = \"svc.read\";"
	         " rpc Get(Req) returns (Req);"
	         " rpc Put(Req) returns (Req) {"
	         " option (asynq.allow_peers) = \"DNS:admin.svc\"; }"
	         " rpc Ping(Req) returns (Req) {"
	         " option (asynq.allow_anyone) = true; } }\n",
	    "");
	assert_int_equal(r.status, 0);
	assert_non_null(c = read_out(&r, "allows.asynq.c"));
	assert_contains(c,
	    "static const char *const t__svc__asynq_allow_scopes_0[1] = {\n"
	    "\t\"svc.read\",\n};");
	assert_contains(c,
	    "static const char *const t__svc__asynq_allow_peers_1[1] = {\n"
	    "\t\"DNS:admin.svc\",\n};");
	assert_null(strstr(c, "asynq_allow_scopes_1"));
	assert_null(strstr(c, "asynq_allow_peers_2"));
	assert_null(strstr(c, "asynq_allow_scopes_2"));
	free(c);

	protoc(&r, "allow_mixed", "allowm.proto",
	    HEAD "service Svc { rpc Get(Req) returns (Req) {"
	         " option (asynq.allow_anyone) = true;"
	         " option (asynq.allow_scopes) = \"x\"; } }\n",
	    "");
	assert_int_not_equal(r.status, 0);
	assert_contains(r.output,
	    "method t.Svc/Get: (asynq.allow_anyone) with (asynq.allow_peers) "
	    "or (asynq.allow_scopes): choose one");
}

static void
test_plugin_rejects_empty_allow(void **state)
{
	struct run r;

	(void)state;
	protoc(&r, "allow_empty", "allowe.proto",
	    HEAD "service Svc { rpc Get(Req) returns (Req) {"
	         " option (asynq.allow_scopes) = \"\"; } }\n",
	    "");
	assert_int_not_equal(r.status, 0);
	assert_contains(r.output,
	    "method t.Svc/Get: option (asynq.allow_scopes) is empty: name a "
	    "peer identity or a scope");
	assert_no_output_files(&r, "allowe");
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
	/* So do the stubs' functions and types. */
	assert_contains(h, "asynq_future *(*short__svc__get__call)(");
	assert_contains(h, "const Short__Req *req);");
	assert_contains(h, "typedef struct short__svc__asynq_handlers {");
	/* The wire name keeps the .proto's package. */
	assert_contains(c, ".full_name = \"long.name.Svc/Get\",");
	free(h);
	free(c);
}

/* Typed client stubs and the server's handler table, next to the
 * descriptor table: names, types and the trampolines' registration. */
static void
test_plugin_writes_stubs_and_handlers(void **state)
{
	struct run r;
	char *h, *c;

	(void)state;
	protoc(&r, "stubs", "stubs.proto",
	    HEAD "message Out { string s = 1; }\n"
	         "service Svc {\n"
	         "  rpc Get(Req) returns (Out);\n"
	         "  rpc All(Req) returns (Out) {\n"
	         "    option (asynq.whole_batch) = true;\n"
	         "  }\n"
	         "}\n"
	         "service Empty {}\n",
	    "");
	assert_int_equal(r.status, 0);
	assert_string_equal(r.output, "");
	assert_non_null(h = read_out(&r, "stubs.asynq.h"));
	assert_non_null(c = read_out(&r, "stubs.asynq.c"));
	assert_contains(h, "#include \"asynq/rpc.h\"");
	assert_contains(h, "#include \"stubs.pb-c.h\"");
	/* The table is still there, unchanged. */
	assert_contains(h,
	    "extern const asynq_rpc_service_desc "
	    "t__svc__asynq_desc;");
	/* The stub is a mockable pointer to the real call. */
	assert_contains(h,
	    "extern asynq_future *(*t__svc__get__call)(asynq_rpc_channel "
	    "*ch,\n"
	    "    const T__Req *req);");
	assert_contains(h,
	    "asynq_future *t__svc__get__call_rpc(asynq_rpc_channel *ch,\n"
	    "    const T__Req *req);");
	assert_contains(h,
	    "const T__Out *t__svc__get__reply(const "
	    "asynq_future *f);");
	assert_contains(h,
	    "typedef struct t__svc__all__batch_call {\n"
	    "\tconst T__Req *req;");
	assert_contains(h, "\tT__Out *reply;");
	assert_contains(h, "typedef struct t__svc__asynq_handlers {");
	assert_contains(h,
	    "\tasynq_status (*get)(asynq_task *t, const T__Req *req,\n"
	    "\t    T__Out **reply, void *ctx);");
	assert_contains(h,
	    "\tasynq_status (*all)(asynq_task *t,\n"
	    "\t    t__svc__all__batch_call *calls, size_t n, void *ctx);");
	assert_contains(h,
	    "\tasynq_rpc_handler rpc[2];\n"
	    "} t__svc__asynq_binding;");
	assert_contains(h,
	    "asynq_status t__svc__asynq_serve(asynq_rpc_server *s,\n"
	    "    const t__svc__asynq_handlers *h, void *ctx,\n"
	    "    t__svc__asynq_binding *b);");
	/* A unary method has no batch call type. */
	assert_null(strstr(h, "t__svc__get__batch_call"));
	/* A service without methods gets its table only. */
	assert_contains(h, "t__empty__asynq_desc;");
	assert_contains(h, "t.Empty has no methods");
	assert_null(strstr(h, "t__empty__asynq_handlers"));

	assert_contains(c,
	    "\treturn asynq_rpc_call(ch,\n"
	    "\t    &t__svc__asynq_methods[T__SVC__ASYNQ_METHOD_GET],");
	assert_contains(c, "msg->descriptor != &t__out__descriptor");
	assert_contains(c,
	    "_Static_assert(sizeof(t__svc__all__batch_call) == "
	    "sizeof(asynq_rpc_batch_call)");
	assert_contains(c,
	    "\tif (h->all == NULL)\n"
	    "\t\treturn ASYNQ_INVALID_ARGUMENT;");
	assert_contains(c, "\t\t.unary = t__svc__get__asynq_unary,");
	assert_contains(c, "\t\t.batch = t__svc__all__asynq_batch,");
	assert_contains(c,
	    "asynq_rpc_server_add_service(s, "
	    "&t__svc__asynq_desc, b->rpc, b);");
	free(h);
	free(c);
}

/* A method whose lower-case name is a C keyword ("Double") or a standard
 * macro ("Bool": stdbool.h's bool) gets a handler field with a trailing
 * underscore; the functions are prefixed, so they keep the name. */
static void
test_plugin_keyword_method_names(void **state)
{
	struct run r;
	char *h, *c;

	(void)state;
	protoc(&r, "keyword", "kw.proto",
	    HEAD "service Svc {\n"
	         "  rpc Double(Req) returns (Req);\n"
	         "  rpc Bool(Req) returns (Req) {\n"
	         "    option (asynq.whole_batch) = true;\n"
	         "  }\n"
	         "  rpc Doubles(Req) returns (Req);\n"
	         "}\n",
	    "");
	assert_int_equal(r.status, 0);
	assert_non_null(h = read_out(&r, "kw.asynq.h"));
	assert_non_null(c = read_out(&r, "kw.asynq.c"));
	assert_contains(h, "\tasynq_status (*double_)(asynq_task *t,");
	assert_contains(h, "\tasynq_status (*bool_)(asynq_task *t,");
	assert_contains(h, "\tasynq_status (*doubles)(asynq_task *t,");
	assert_null(strstr(h, "(*double)"));
	assert_null(strstr(h, "(*bool)"));
	assert_contains(h, "asynq_future *(*t__svc__double__call)(");
	assert_contains(h, "const T__Req *t__svc__double__reply(");
	assert_contains(h, "typedef struct t__svc__bool__batch_call {");
	assert_contains(h, "T__SVC__ASYNQ_METHOD_DOUBLE = 0,");
	assert_contains(c, "\tif (h->double_ == NULL)");
	assert_contains(c, "(b->handlers.double_)(t, ");
	assert_contains(c, "(b->handlers.bool_)(t, ");
	free(h);
	free(c);
}

/* Names that would collide in the output are refused, naming the method:
 * two handler fields (Double and Double_), a generated function and
 * protoc-c's stub of another method (Get__call is Get_Call's), and a fixed
 * name of the output. */
static void
test_plugin_rejects_colliding_stub_names(void **state)
{
	static const struct {
		const char *methods;
		const char *want;
	} cases[] = {
		{ "rpc Double(Req) returns (Req); "
		  "rpc Double_(Req) returns (Req);",
		    "method t.Svc/Double_: the name collides with the "
		    "generated symbol t__svc__asynq_handlers.double_;" },
		{ "rpc Get(Req) returns (Req); "
		  "rpc Get_Call(Req) returns (Req);",
		    "method t.Svc/Get_Call: the name collides with the "
		    "generated symbol t__svc__get__call;" },
		{ "rpc AsynqServe(Req) returns (Req);",
		    "method t.Svc/AsynqServe: the name collides with the "
		    "generated symbol t__svc__asynq_serve;" },
		{ "rpc Init(Req) returns (Req);",
		    "method t.Svc/Init: the name collides with the "
		    "generated symbol t__svc__init;" },
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct run r;
		char proto[1024], test[32];

		snprintf(proto, sizeof(proto), HEAD "service Svc { %s }\n",
		    cases[i].methods);
		snprintf(test, sizeof(test), "stub_collision_%zu", i);
		protoc(&r, test, "coll.proto", proto, "");
		assert_int_not_equal(r.status, 0);
		assert_contains(r.output, cases[i].want);
		assert_no_output_files(&r, "coll");
	}
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
		cmocka_unit_test(test_plugin_embeds_the_files_for_reflection),
		cmocka_unit_test(test_plugin_file_without_services),
		cmocka_unit_test(test_plugin_rejects_zero_batch_max_calls),
		cmocka_unit_test(test_plugin_batch_max_calls_limits),
		cmocka_unit_test(test_plugin_rejects_streaming_method),
		cmocka_unit_test(
		    test_plugin_rejects_request_cache_on_non_idempotent_method),
		cmocka_unit_test(test_plugin_emits_allow_lists),
		cmocka_unit_test(test_plugin_service_allow_lists),
		cmocka_unit_test(test_plugin_rejects_empty_allow),
		cmocka_unit_test(test_plugin_rejects_colliding_method_name),
		cmocka_unit_test(test_plugin_rejects_parameter),
		cmocka_unit_test(test_plugin_follows_c_package),
		cmocka_unit_test(test_plugin_writes_stubs_and_handlers),
		cmocka_unit_test(test_plugin_keyword_method_names),
		cmocka_unit_test(test_plugin_rejects_colliding_stub_names),
		cmocka_unit_test(test_plugin_rejects_bad_input),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
