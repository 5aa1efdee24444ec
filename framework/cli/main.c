/* SPDX-License-Identifier: MIT */
/*
 * asynq, the command-line client of asynq services: it lists a server's
 * services, describes them, calls their methods with JSON, many calls in
 * one batch, and checks their health. It needs no .proto file: the
 * server's reflection service (proto/asynq/reflection.proto) sends the
 * descriptors, and dyn.c encodes and decodes messages by walking them.
 *
 *   asynq [OPTIONS] list ADDR
 *   asynq [OPTIONS] describe ADDR SYMBOL
 *   asynq [OPTIONS] call ADDR Service/Method [JSON]
 *   asynq [OPTIONS] health ADDR [SERVICE]
 *
 * Design notes
 *
 * - Calls go through the RPC client like any program's: a channel opened
 *   with a service table made at run time from the reflected descriptors,
 *   whose one method takes and returns asynq.cli.Raw, a message with no
 *   fields. protobuf-c keeps the fields of a message it does not know as
 *   unknown fields and writes them back as they came, so a Raw decoded
 *   from bytes dyn.c encoded is those bytes on the wire, and a reply
 *   decoded as Raw packs back to the reply's bytes. The server's method is
 *   named by its full name, as every call names it.
 * - Without JSON on the command line, every line of standard input is one
 *   call; all are made by one task before it awaits them, so they go out
 *   batched as any task's calls do (split only where the service's
 *   batch_max_calls says), and the request count on standard error is the
 *   channel's own. Nothing is sent unless every line encodes.
 * - Exit codes: 0 when everything succeeded, 2 for a usage error, else
 *   the status number of the first failure (in line order for a batch):
 *   INVALID_ARGUMENT (3) for JSON that does not fit, NOT_FOUND (5) for an
 *   unknown method, the server's status for a failed call. A health check
 *   answered NOT_SERVING exits 14 (UNAVAILABLE), SERVICE_UNKNOWN 5.
 * - --timeout bounds the calls the user asked for: list's and describe's
 *   reflection calls, and call's calls, but not the look-up of the method
 *   before them, which keeps the reflection service's deadline.
 * - Everything runs on the main thread's scheduler; nothing else is
 *   threaded but the RPC client's own.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>
#include <protobuf-c/protobuf-c.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "dyn.h"
#include "framework/cli/raw.pb-c.h"
#include "proto/asynq/health.asynq.h"
#include "proto/asynq/reflection.asynq.h"

#define EXIT_USAGE 2
#define REPEATED GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_REPEATED
#define MAX_METADATA 64

/* asynq's options (proto/asynq/options.proto), read from reflected
 * descriptors, where they are unknown fields. */
#define OPT_BATCH_MAX_CALLS 50100
#define OPT_DEFAULT_DEADLINE_MS 50102
#define OPT_IDEMPOTENT 50110
#define OPT_WHOLE_BATCH 50111
#define OPT_REQUEST_CACHE 50112
#define OPT_ALLOW_PEERS 50114
#define OPT_ALLOW_SCOPES 50115

typedef struct opts {
	const char *url;
	bool has_timeout;
	uint32_t timeout_ms;
	const char *md_key[MAX_METADATA];
	const char *md_val[MAX_METADATA];
	size_t n_md;
} opts;

/* textf is snprintf for text that may be cut at the buffer's end (paths
 * and messages), without the compiler's truncation warnings. */
static void textf(char *buf, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
textf(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, n, fmt, ap);
	va_end(ap);
}

static const char usage_text[] =
    "usage: asynq [OPTIONS] COMMAND ADDR [ARGS]\n"
    "\n"
    "  list ADDR                         the server's services\n"
    "  describe ADDR SYMBOL              a service, Service.Method or "
    "message,\n"
    "                                    with its messages' fields\n"
    "  call ADDR Service/Method [JSON]   call with a JSON request; without "
    "JSON,\n"
    "                                    each line of stdin is one call, "
    "all in\n"
    "                                    one batch, one reply line each\n"
    "  health ADDR [SERVICE]             SERVING, NOT_SERVING or "
    "SERVICE_UNKNOWN\n"
    "\n"
    "ADDR is a URL (tcp://127.0.0.1:7001, ipc:///path, ...) or HOST:PORT.\n"
    "Options: --timeout MS (deadline of each call), --metadata KEY=VALUE\n"
    "(repeatable), --help. Exit status: 0, 2 for a usage error, else the\n"
    "status number of the first failed call (3 INVALID_ARGUMENT, 5\n"
    "NOT_FOUND, 14 UNAVAILABLE, ...).\n";

static int
usage(const char *why)
{
	if (why != NULL)
		fprintf(stderr, "asynq: %s (asynq --help lists the commands)\n",
		    why);
	else
		fputs(usage_text, stderr);
	return EXIT_USAGE;
}

/* fail prints "asynq: STATUS_NAME: message" and returns the exit code. */
static int fail(asynq_status st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int
fail(asynq_status st, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "asynq: %s: ", asynq_status_name(st));
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
	return (int)st;
}

/* fail_future_at prints a failed future's status and message as fail
 * does, the message after `where` ("line 3: "), and returns its exit
 * code. */
static int
fail_future_at(asynq_future *f, const char *where)
{
	asynq_status st = asynq_future_status(f);
	const asynq_error *e = asynq_future_error(f);

	fprintf(stderr, "asynq: %s: %s%s\n", asynq_status_name(st), where,
	    e != NULL && asynq_error_message(e) != NULL ? asynq_error_message(e)
	                                                : asynq_strerror(st));
	return (int)st;
}

static int
fail_future(asynq_future *f)
{
	return fail_future_at(f, "");
}

/* ---- Options ------------------------------------------------------ */

static int
parse_timeout(const char *s, opts *o)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(s, &end, 10);
	if (s[0] == '\0' || s[0] == '-' || *end != '\0' || errno != 0 ||
	    v == 0 || v > UINT32_MAX)
		return -1;
	o->has_timeout = true;
	o->timeout_ms = (uint32_t)v;
	return 0;
}

/* parse_args splits argv into options and up to 4 positional arguments;
 * returns how many positionals, or -1 (usage printed, *rc set). */
static int
parse_args(int argc, char **argv, opts *o, const char **pos, int *rc)
{
	int n = 0;
	bool dashdash = false;

	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		const char *val = NULL;
		char msg[256];

		if (dashdash || a[0] != '-' || strcmp(a, "-") == 0) {
			if (n == 4) {
				textf(msg, sizeof(msg),
				    "too many arguments at \"%s\"", a);
				*rc = usage(msg);
				return -1;
			}
			pos[n++] = a;
			continue;
		}
		if (strcmp(a, "--") == 0) {
			dashdash = true;
			continue;
		}
		if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
			fputs(usage_text, stdout);
			*rc = 0;
			return -1;
		}
		const char *eq = strchr(a, '=');
		size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
		bool is_timeout = nlen == 9 && strncmp(a, "--timeout", 9) == 0;
		bool is_md = nlen == 10 && strncmp(a, "--metadata", 10) == 0;
		if (!is_timeout && !is_md) {
			textf(msg, sizeof(msg), "unknown option %s", a);
			*rc = usage(msg);
			return -1;
		}
		if (eq != NULL)
			val = eq + 1;
		else if (i + 1 < argc)
			val = argv[++i];
		else {
			textf(msg, sizeof(msg), "%.*s needs a value", (int)nlen,
			    a);
			*rc = usage(msg);
			return -1;
		}
		if (is_timeout && parse_timeout(val, o) != 0) {
			textf(msg, sizeof(msg),
			    "--timeout %s: expects milliseconds, a whole "
			    "number from 1 to %lu",
			    val, (unsigned long)UINT32_MAX);
			*rc = usage(msg);
			return -1;
		}
		if (is_md) {
			const char *e2 = strchr(val, '=');
			if (e2 == NULL || e2 == val) {
				textf(msg, sizeof(msg),
				    "--metadata %s: expects KEY=VALUE", val);
				*rc = usage(msg);
				return -1;
			}
			if (o->n_md == MAX_METADATA) {
				*rc = usage("too many --metadata");
				return -1;
			}
			o->md_key[o->n_md] = val;
			o->md_val[o->n_md++] = e2;
		}
	}
	return n;
}

/* The URL of ADDR: a URL as it is, HOST:PORT as tcp://HOST:PORT. */
static char *
addr_url(const char *addr)
{
	size_t n = strlen(addr) + sizeof("tcp://");
	char *u = malloc(n);

	if (u != NULL)
		textf(u, n, "%s%s", strstr(addr, "://") ? "" : "tcp://", addr);
	return u;
}

static asynq_rpc_channel *
channel_open(const opts *o, const asynq_rpc_service_desc *svc)
{
	const char *urls[] = { o->url };
	asynq_rpc_channel_cfg cfg = { .urls = urls, .n_urls = 1 };
	asynq_rpc_channel *ch = NULL;
	asynq_status st = asynq_rpc_channel_alloc(&ch, svc, &cfg);

	if (st != ASYNQ_OK) {
		fail(st, "%s: cannot open a channel: %s", o->url,
		    st == ASYNQ_INVALID_ARGUMENT ? "not a URL asynq can dial"
		                                 : asynq_strerror(st));
		return NULL;
	}
	return ch;
}

/* ---- Calls in a task, with the options ------------------------------ */

/* One batch of calls: made by one task, all before it awaits. */
typedef struct batch {
	const opts *o;
	asynq_rpc_channel *ch;
	const asynq_rpc_method_desc *m;
	ProtobufCMessage **req;
	asynq_future **f;
	size_t n;
} batch;

static asynq_status
batch_main(asynq_task *t, void *arg)
{
	batch *b = arg;
	size_t pushed = 0;
	bool timed = false;
	asynq_status st = ASYNQ_OK;

	if (b->o->has_timeout) {
		if ((st = asynq_rpc_timeout_push(b->o->timeout_ms)) != ASYNQ_OK)
			return st;
		timed = true;
	}
	for (; pushed < b->o->n_md; pushed++) {
		const char *k = b->o->md_key[pushed];
		const char *v = b->o->md_val[pushed];
		char key[256];
		textf(key, sizeof(key), "%.*s", (int)(v - k), k);
		if ((st = asynq_rpc_metadata_push(key, v + 1, strlen(v + 1))) !=
		    ASYNQ_OK)
			goto out;
	}
	for (size_t i = 0; i < b->n; i++)
		b->f[i] = asynq_rpc_call(b->ch, b->m, b->req[i]);
	/* Nothing has been sent yet: every call goes now, together. */
	(void)asynq_await_all(t, b->f, b->n);
out:
	while (pushed-- > 0)
		(void)asynq_rpc_metadata_pop();
	if (timed)
		(void)asynq_rpc_timeout_pop();
	return st;
}

/* run_batch makes b's calls and waits for them; OK, or why they could not
 * be made (then b->f holds no futures). */
static asynq_status
run_batch(batch *b)
{
	asynq_future *f = asynq_spawn(batch_main, b);
	asynq_status st = asynq_wait(f);

	if (st != ASYNQ_OK)
		fail_future(f);
	asynq_future_rele(f);
	return st;
}

/* ---- Reflection --------------------------------------------------- */

#define REFL (&asynq__reflection__v1__reflection__asynq_desc)
#define REFL_M(x)                                                              \
	(&REFL->methods[ASYNQ__REFLECTION__V1__REFLECTION__ASYNQ_METHOD_##x])

/* reflect calls one reflection method with req, with the user's timeout
 * when timed (list, describe) and otherwise with the reflection service's
 * own deadline (the look-up before a call: --timeout is the call's), never
 * with the user's metadata; returns its computed future, or NULL after
 * printing why it failed (*rc: the exit code). */
static asynq_future *
reflect(const opts *o, const asynq_rpc_method_desc *m, ProtobufCMessage *req,
    bool timed, int *rc)
{
	asynq_rpc_channel *ch = channel_open(o, REFL);
	asynq_future *f = NULL;
	opts plain = *o;

	if (ch == NULL) {
		*rc = ASYNQ_INVALID_ARGUMENT;
		return NULL;
	}
	plain.n_md = 0;
	plain.has_timeout = plain.has_timeout && timed;
	batch b = { &plain, ch, m, &req, &f, 1 };
	if ((*rc = (int)run_batch(&b)) == 0 &&
	    asynq_future_status(f) != ASYNQ_OK) {
		*rc = fail_future(f);
		asynq_future_rele(f);
		f = NULL;
	}
	asynq_rpc_channel_free(ch);
	return f;
}

/* load_symbol fills a new pool with the file declaring symbol and its
 * imports (timed: as reflect); NULL after printing why not. */
static asynqi_pool *
load_symbol(const opts *o, const char *symbol, bool timed, int *rc)
{
	Asynq__Reflection__V1__FileContainingSymbolRequest req =
	    ASYNQ__REFLECTION__V1__FILE_CONTAINING_SYMBOL_REQUEST__INIT;
	req.symbol = (char *)symbol;
	asynq_future *f =
	    reflect(o, REFL_M(FILE_CONTAINING_SYMBOL), &req.base, timed, rc);
	if (f == NULL)
		return NULL;
	const Asynq__Reflection__V1__FileDescriptorResponse *r =
	    asynq_future_ptr(f);
	asynqi_pool *p = asynqi_pool_alloc();
	char err[512];
	for (size_t i = 0; p != NULL && i < r->n_file_descriptor_proto; i++)
		if (asynqi_pool_add(p, r->file_descriptor_proto[i].data,
		        r->file_descriptor_proto[i].len, err,
		        sizeof(err)) != 0) {
			*rc = fail(ASYNQ_INTERNAL, "%s: %s", o->url, err);
			asynqi_pool_free(p);
			p = NULL;
		}
	if (p == NULL && *rc == 0)
		*rc = fail(ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
	asynq_future_rele(f);
	return p;
}

/* opt_uint reads option `tag` of an options message (unknown fields):
 * its value, or 0 when unset. */
static uint64_t
opt_uint(const ProtobufCMessage *opts_msg, uint32_t tag)
{
	uint64_t v = 0;

	if (opts_msg == NULL)
		return 0;
	for (unsigned i = 0; i < opts_msg->n_unknown_fields; i++) {
		const ProtobufCMessageUnknownField *u =
		    &opts_msg->unknown_fields[i];
		if (u->tag != tag ||
		    u->wire_type != PROTOBUF_C_WIRE_TYPE_VARINT)
			continue;
		v = 0;
		for (size_t k = 0; k < u->len && k < 10; k++)
			v |= (uint64_t)(u->data[k] & 0x7f) << (7 * k);
	}
	return v;
}

/* print_opt_strings prints the values of repeated string option `tag`
 * as "<sep> <what> a b"; returns the separator for what follows. */
static const char *
print_opt_strings(const ProtobufCMessage *opts_msg, uint32_t tag,
    const char *what, const char *sep)
{
	bool any = false;

	for (unsigned i = 0; opts_msg != NULL && i < opts_msg->n_unknown_fields;
	     i++) {
		const ProtobufCMessageUnknownField *u =
		    &opts_msg->unknown_fields[i];
		uint64_t len = 0;
		size_t k = 0;
		if (u->tag != tag ||
		    u->wire_type != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED)
			continue;
		/* The value after its length prefix. */
		for (; k < u->len && k < 10; k++) {
			len |= (uint64_t)(u->data[k] & 0x7f) << (7 * k);
			if ((u->data[k] & 0x80) == 0)
				break;
		}
		k++;
		if (k > u->len || len != u->len - k)
			continue;
		if (!any)
			printf("%s %s", sep, what);
		printf(" %.*s", (int)len, (const char *)u->data + k);
		any = true;
	}
	return any ? "," : sep;
}

static const ProtobufCMessage *
method_opts(const Google__Protobuf__MethodDescriptorProto *m)
{
	return m->options != NULL ? &m->options->base : NULL;
}

static bool
method_idempotent(const Google__Protobuf__MethodDescriptorProto *m)
{
	return opt_uint(method_opts(m), OPT_IDEMPOTENT) != 0 ||
	    (m->options != NULL && m->options->has_idempotency_level &&
	        m->options->idempotency_level != 0);
}

/* ---- list ----------------------------------------------------------- */

static int
cmd_list(const opts *o)
{
	Asynq__Reflection__V1__ListServicesRequest req =
	    ASYNQ__REFLECTION__V1__LIST_SERVICES_REQUEST__INIT;
	int rc = 0;
	asynq_future *f =
	    reflect(o, REFL_M(LIST_SERVICES), &req.base, true, &rc);

	if (f == NULL)
		return rc;
	const Asynq__Reflection__V1__ListServicesResponse *r =
	    asynq_future_ptr(f);
	for (size_t i = 0; i < r->n_service; i++)
		printf("%s\n", r->service[i]->name);
	asynq_future_rele(f);
	return 0;
}

/* ---- describe ------------------------------------------------------- */

/* Names of the messages and enums to print, each once. */
typedef struct names {
	const char *v[256];
	size_t n;
} names;

static void
names_add(names *ns, const char *name)
{
	for (size_t i = 0; i < ns->n; i++)
		if (strcmp(ns->v[i], name) == 0)
			return;
	if (ns->n < sizeof(ns->v) / sizeof(ns->v[0]))
		ns->v[ns->n++] = name;
}

static const char *
scalar_word(int type)
{
	static const char *const w[] = { "", "double", "float", "int64",
		"uint64", "int32", "fixed64", "fixed32", "bool", "string",
		"group", "message", "bytes", "uint32", "enum", "sfixed32",
		"sfixed64", "sint32", "sint64" };
	return type > 0 && type < 19 ? w[type] : "?";
}

static const char *
field_type(const asynqi_field_proto *f)
{
	if (f->type ==
	        GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_MESSAGE ||
	    f->type ==
	        GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_ENUM)
		return f->type_name != NULL ? f->type_name + 1 : "?";
	return scalar_word(f->type);
}

static void
print_message(const asynqi_pool *p, const char *name, names *todo)
{
	const asynqi_msg_proto *m = asynqi_pool_message(p, name, NULL);
	const asynqi_enum_proto *e;

	if (m == NULL) {
		if ((e = asynqi_pool_enum(p, name)) == NULL) {
			printf("\n// %s: not in the server's descriptors\n",
			    name);
			return;
		}
		printf("\nenum %s {\n", name);
		for (size_t i = 0; i < e->n_value; i++)
			printf("  %s = %d;\n", e->value[i]->name,
			    e->value[i]->number);
		printf("}\n");
		return;
	}
	printf("\nmessage %s {\n", name);
	for (size_t i = 0; i < m->n_field; i++) {
		const asynqi_field_proto *f = m->field[i];
		const asynqi_msg_proto *entry =
		    f->type_name != NULL && f->label == REPEATED
		    ? asynqi_pool_message(p, f->type_name, NULL)
		    : NULL;
		char jn[256];
		const char *json = asynqi_json_name(f, jn, sizeof(jn));

		if (entry != NULL && entry->options != NULL &&
		    entry->options->map_entry && entry->n_field == 2) {
			printf("  map<%s, %s> %s = %d;",
			    field_type(entry->field[0]),
			    field_type(entry->field[1]), f->name, f->number);
			if (entry->field[1]->type_name != NULL)
				names_add(todo, entry->field[1]->type_name + 1);
		} else {
			printf("  %s%s %s = %d;",
			    f->label == REPEATED     ? "repeated "
			        : f->proto3_optional ? "optional "
			                             : "",
			    field_type(f), f->name, f->number);
			if (f->type_name != NULL)
				names_add(todo, f->type_name + 1);
		}
		if (f->has_oneof_index && !f->proto3_optional &&
		    (size_t)f->oneof_index < m->n_oneof_decl)
			printf(" // oneof %s",
			    m->oneof_decl[f->oneof_index]->name);
		if (strcmp(json, f->name) != 0)
			printf(" // JSON: %s", json);
		printf("\n");
	}
	printf("}\n");
}

static void
print_method(const Google__Protobuf__MethodDescriptorProto *m, names *todo)
{
	const ProtobufCMessage *mo = method_opts(m);
	const char *sep = " //";

	printf("  rpc %s(%s) returns (%s);", m->name, m->input_type + 1,
	    m->output_type + 1);
	if (method_idempotent(m)) {
		printf("%s idempotent", sep);
		sep = ",";
	}
	if (opt_uint(mo, OPT_WHOLE_BATCH)) {
		printf("%s whole batch", sep);
		sep = ",";
	}
	if (opt_uint(mo, OPT_REQUEST_CACHE)) {
		printf("%s request cache", sep);
		sep = ",";
	}
	sep = print_opt_strings(mo, OPT_ALLOW_PEERS, "allow peers", sep);
	(void)print_opt_strings(mo, OPT_ALLOW_SCOPES, "allow scopes", sep);
	printf("\n");
	names_add(todo, m->input_type + 1);
	names_add(todo, m->output_type + 1);
}

static int
cmd_describe(const opts *o, const char *symbol)
{
	char svc_name[512], *method = NULL;
	int rc = 0;

	textf(svc_name, sizeof(svc_name), "%s", symbol);
	if ((method = strchr(svc_name, '/')) != NULL)
		*method++ = '\0';
	asynqi_pool *p = load_symbol(o, svc_name, true, &rc);
	if (p == NULL)
		return rc;
	const asynqi_file_proto *file = NULL;
	const asynqi_svc_proto *s = asynqi_pool_service(p, svc_name, &file);
	if (s == NULL && method == NULL &&
	    asynqi_pool_message(p, svc_name, NULL) == NULL &&
	    asynqi_pool_enum(p, svc_name) == NULL &&
	    (method = strrchr(svc_name, '.')) != NULL) {
		*method++ = '\0'; /* Service.Method */
		s = asynqi_pool_service(p, svc_name, &file);
	}
	names todo = { .n = 0 };
	if (s == NULL) {
		if (method != NULL ||
		    (asynqi_pool_message(p, symbol, NULL) == NULL &&
		        asynqi_pool_enum(p, symbol) == NULL)) {
			rc = fail(ASYNQ_NOT_FOUND,
			    "%s: the server's descriptors have no service %s",
			    o->url, svc_name);
			goto out;
		}
		names_add(&todo, symbol);
	} else {
		const Google__Protobuf__MethodDescriptorProto *one = NULL;
		for (size_t i = 0; method != NULL && i < s->n_method; i++)
			if (strcmp(s->method[i]->name, method) == 0)
				one = s->method[i];
		if (method != NULL && one == NULL) {
			rc = fail(ASYNQ_NOT_FOUND,
			    "service %s has no method %s", svc_name, method);
			goto out;
		}
		printf("// %s\nservice %s {\n", file->name, svc_name);
		const ProtobufCMessage *so =
		    s->options != NULL ? &s->options->base : NULL;
		if (one == NULL && opt_uint(so, OPT_BATCH_MAX_CALLS))
			printf("  option (asynq.batch_max_calls) = %" PRIu64
			       ";\n",
			    opt_uint(so, OPT_BATCH_MAX_CALLS));
		if (one == NULL && opt_uint(so, OPT_DEFAULT_DEADLINE_MS))
			printf("  option (asynq.default_deadline_ms) = %" PRIu64
			       ";\n",
			    opt_uint(so, OPT_DEFAULT_DEADLINE_MS));
		for (size_t i = 0; i < s->n_method; i++)
			if (one == NULL || s->method[i] == one)
				print_method(s->method[i], &todo);
		printf("}\n");
	}
	for (size_t i = 0; i < todo.n; i++) /* todo grows as it goes */
		print_message(p, todo.v[i], &todo);
out:
	asynqi_pool_free(p);
	return rc;
}

/* ---- call ------------------------------------------------------------ */

/* One request's JSON text, and its line of standard input. */
typedef struct line {
	char *text;
	size_t no; /* line number, from 1 */
} line;

static int
read_lines(FILE *in, line **linesp, size_t *np)
{
	line *lines = NULL;
	size_t n = 0, cap = 0, no = 0;
	char *buf = NULL;
	size_t bcap = 0;
	ssize_t got;

	while ((got = getline(&buf, &bcap, in)) >= 0) {
		no++;
		while (
		    got > 0 && (buf[got - 1] == '\n' || buf[got - 1] == '\r'))
			buf[--got] = '\0';
		size_t lead = strspn(buf, " \t");
		if (buf[lead] == '\0')
			continue; /* blank lines are no calls */
		if (n == cap) {
			cap = cap ? 2 * cap : 64;
			line *nl = realloc(lines, cap * sizeof(*nl));
			if (nl == NULL)
				goto oom;
			lines = nl;
		}
		if ((lines[n].text = strdup(buf)) == NULL)
			goto oom;
		lines[n++].no = no;
	}
	free(buf);
	*linesp = lines;
	*np = n;
	return 0;
oom:
	free(buf);
	for (size_t i = 0; i < n; i++)
		free(lines[i].text);
	free(lines);
	return -1;
}

/* encode_line turns one JSON text into a Raw request; NULL after printing
 * why (the line number when reading stdin). */
static ProtobufCMessage *
encode_line(const asynqi_pool *p, const char *type, const line *l,
    bool numbered)
{
	json_error_t jerr;
	char where[64] = "", err[1024];
	json_t *j = json_loads(l->text, JSON_REJECT_DUPLICATES, &jerr);
	asynqi_bytes b = { 0 };
	ProtobufCMessage *raw = NULL;

	if (numbered)
		textf(where, sizeof(where), "line %zu: ", l->no);
	if (j == NULL) {
		fail(ASYNQ_INVALID_ARGUMENT, "%sinvalid JSON: %s (column %d)",
		    where, jerr.text, jerr.column);
		return NULL;
	}
	if (asynqi_json_encode(p, type, j, &b, err, sizeof(err)) != 0) {
		fail(ASYNQ_INVALID_ARGUMENT, "%s%s", where, err);
	} else {
		static const uint8_t none = 0;
		raw = protobuf_c_message_unpack(&asynq__cli__raw__descriptor,
		    NULL, b.len, b.len > 0 ? b.p : &none);
		if (raw == NULL)
			fail(ASYNQ_INTERNAL,
			    "%sthe encoded request does not "
			    "decode",
			    where);
	}
	json_decref(j);
	asynqi_bytes_free(&b);
	return raw;
}

/* print_reply prints a Raw reply as JSON; 0, or the exit code. */
static int
print_reply(const asynqi_pool *p, const char *type, const ProtobufCMessage *r)
{
	size_t len = protobuf_c_message_get_packed_size(r);
	uint8_t *bytes = malloc(len ? len : 1);
	char err[1024];
	int rc = 0;

	if (bytes == NULL)
		return fail(ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
	protobuf_c_message_pack(r, bytes);
	json_t *j = asynqi_wire_decode(p, type, bytes, len, err, sizeof(err));
	char *s = j != NULL ? json_dumps(j, 0) : NULL;
	if (s != NULL)
		printf("%s\n", s);
	else
		rc = fail(ASYNQ_INTERNAL, "reply: %s",
		    j == NULL ? err : "out of memory");
	free(s);
	json_decref(j);
	free(bytes);
	return rc;
}

/* The error of a failed call as a JSON line, for its place in the output. */
static void
print_error_line(asynq_future *f)
{
	asynq_status st = asynq_future_status(f);
	const asynq_error *e = asynq_future_error(f);
	json_t *j = json_pack("{s:{s:s,s:i,s:s}}", "error", "status",
	    asynq_status_name(st), "code", (int)st, "message",
	    e != NULL && asynq_error_message(e) ? asynq_error_message(e)
	                                        : asynq_strerror(st));
	char *s = j != NULL ? json_dumps(j, 0) : NULL;

	printf("%s\n", s != NULL ? s : "{\"error\": {}}");
	free(s);
	json_decref(j);
}

static int
cmd_call(const opts *o, const char *target, const char *json_arg)
{
	char svc_name[512], *method;
	int rc = 0;
	line *lines = NULL, one;
	size_t n = 0;

	textf(svc_name, sizeof(svc_name), "%s", target);
	if ((method = strchr(svc_name, '/')) == NULL)
		method = strrchr(svc_name, '.');
	if (method == NULL || method[1] == '\0' || method == svc_name) {
		char msg[600];
		textf(msg, sizeof(msg),
		    "call %s: name the method as Service/Method "
		    "(asynq.users.Users/GetUser)",
		    target);
		return usage(msg);
	}
	*method++ = '\0';

	asynqi_pool *p = load_symbol(o, svc_name, false, &rc);
	if (p == NULL)
		return rc;
	const asynqi_svc_proto *s = asynqi_pool_service(p, svc_name, NULL);
	const Google__Protobuf__MethodDescriptorProto *mp = NULL;
	for (size_t i = 0; s != NULL && i < s->n_method; i++)
		if (strcmp(s->method[i]->name, method) == 0)
			mp = s->method[i];
	if (s == NULL) {
		rc = fail(ASYNQ_NOT_FOUND,
		    "%s is not a service (describe it to "
		    "see what it is)",
		    svc_name);
		goto out_pool;
	}
	if (mp == NULL) {
		char list[1024] = "";
		size_t len = 0;
		for (size_t i = 0; i < s->n_method && len < sizeof(list); i++)
			len += (size_t)snprintf(list + len, sizeof(list) - len,
			    "%s%s", i ? ", " : "", s->method[i]->name);
		rc = fail(ASYNQ_NOT_FOUND,
		    "service %s has no method %s (its methods: %s)", svc_name,
		    method, s->n_method ? list : "none");
		goto out_pool;
	}

	if (json_arg != NULL) {
		one.text = (char *)json_arg;
		one.no = 1;
		lines = &one;
		n = 1;
	} else if (read_lines(stdin, &lines, &n) != 0) {
		rc = fail(ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
		goto out_pool;
	} else if (n == 0) {
		rc = fail(ASYNQ_INVALID_ARGUMENT,
		    "no JSON request: give one after the method, or one per "
		    "line on standard input");
		goto out_lines;
	}

	ProtobufCMessage **req = calloc(n, sizeof(*req));
	asynq_future **f = calloc(n, sizeof(*f));
	if (req == NULL || f == NULL) {
		rc = fail(ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
		goto out_calls;
	}
	for (size_t i = 0; i < n; i++)
		if ((req[i] = encode_line(p, mp->input_type, &lines[i],
		         json_arg == NULL)) == NULL) {
			rc = ASYNQ_INVALID_ARGUMENT;
			goto out_calls;
		}

	/* The service's table, made from its descriptor: one method, whose
	 * messages travel as Raw. */
	char full[1100];
	textf(full, sizeof(full), "%s/%s", svc_name, mp->name);
	const ProtobufCMessage *so = s->options ? &s->options->base : NULL;
	asynq_rpc_method_desc md = {
		.name = mp->name,
		.full_name = full,
		.input = &asynq__cli__raw__descriptor,
		.output = &asynq__cli__raw__descriptor,
		.idempotent = method_idempotent(mp),
	};
	asynq_rpc_service_desc sd = {
		.name = s->name,
		.full_name = svc_name,
		.methods = &md,
		.n_methods = 1,
		.batch_max_calls = (uint32_t)opt_uint(so, OPT_BATCH_MAX_CALLS),
		.default_deadline_ms =
		    (uint32_t)opt_uint(so, OPT_DEFAULT_DEADLINE_MS),
	};
	asynq_rpc_channel *ch = channel_open(o, &sd);
	if (ch == NULL) {
		rc = ASYNQ_INVALID_ARGUMENT;
		goto out_calls;
	}
	batch b = { o, ch, &md, req, f, n };
	if ((rc = (int)run_batch(&b)) == 0) {
		for (size_t i = 0; i < n; i++) {
			int frc;
			if (asynq_future_status(f[i]) == ASYNQ_OK) {
				frc = print_reply(p, mp->output_type,
				    asynq_future_ptr(f[i]));
			} else {
				char where[32] = "";
				if (json_arg == NULL) {
					print_error_line(f[i]);
					textf(where, sizeof(where),
					    "line %zu: ", lines[i].no);
				}
				frc = fail_future_at(f[i], where);
			}
			if (rc == 0)
				rc = frc;
		}
		fflush(stdout);
		if (json_arg == NULL) {
			asynq_rpc_channel_stats cs;
			asynq_rpc_channel_stats_get(ch, &cs);
			fprintf(stderr,
			    "asynq: %" PRIu64 " call%s in %" PRIu64
			    " request%s",
			    cs.calls, cs.calls == 1 ? "" : "s", cs.requests,
			    cs.requests == 1 ? "" : "s");
			if (cs.collapsed > 0)
				fprintf(stderr,
				    " (%" PRIu64 " identical calls sent once)",
				    cs.collapsed);
			fprintf(stderr, "\n");
		}
		asynq_future_rele_n(f, n);
	}
	asynq_rpc_channel_free(ch);
out_calls:
	for (size_t i = 0; req != NULL && i < n; i++)
		if (req[i] != NULL)
			protobuf_c_message_free_unpacked(req[i], NULL);
	free(req);
	free(f);
out_lines:
	if (lines != &one) {
		for (size_t i = 0; i < n; i++)
			free(lines[i].text);
		free(lines);
	}
out_pool:
	asynqi_pool_free(p);
	return rc;
}

/* ---- health --------------------------------------------------------- */

static int
cmd_health(const opts *o, const char *service)
{
	const asynq_rpc_service_desc *hd =
	    &asynq__health__v1__health__asynq_desc;
	asynq_rpc_channel *ch = channel_open(o, hd);
	Asynq__Health__V1__HealthCheckRequest req =
	    ASYNQ__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *rq = &req.base;
	asynq_future *f = NULL;
	int rc;

	if (ch == NULL)
		return ASYNQ_INVALID_ARGUMENT;
	req.service = (char *)(service != NULL ? service : "");
	batch b = { o, ch,
		&hd->methods[ASYNQ__HEALTH__V1__HEALTH__ASYNQ_METHOD_CHECK],
		&rq, &f, 1 };
	if ((rc = (int)run_batch(&b)) == 0) {
		const Asynq__Health__V1__HealthCheckResponse *r =
		    asynq__health__v1__health__check__reply(f);
		if (r == NULL) {
			rc = fail_future(f);
		} else {
			const ProtobufCEnumValue *v =
			    protobuf_c_enum_descriptor_get_value(
			        &asynq__health__v1__health_check_response__serving_status__descriptor,
			        (int)r->status);
			printf("%s\n", v != NULL ? v->name : "UNKNOWN");
			switch (r->status) {
			case ASYNQ__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING:
				rc = 0;
				break;
			case ASYNQ__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN:
				rc = ASYNQ_NOT_FOUND;
				break;
			case ASYNQ__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING:
				rc = ASYNQ_UNAVAILABLE;
				break;
			default:
				rc = ASYNQ_UNKNOWN;
			}
		}
		asynq_future_rele(f);
	}
	asynq_rpc_channel_free(ch);
	return rc;
}

/* ---- main ----------------------------------------------------------- */

int
main(int argc, char **argv)
{
	opts o = { 0 };
	const char *pos[4] = { NULL };
	int rc = 0, n = parse_args(argc, argv, &o, pos, &rc);
	char *url = NULL;

	if (n < 0)
		return rc;
	if (n == 0)
		return usage("no command");
	const char *cmd = pos[0];
	struct {
		const char *name;
		int min, max;
	} const cmds[] = {
		{ "list", 2, 2 },
		{ "describe", 3, 3 },
		{ "call", 3, 4 },
		{ "health", 2, 3 },
	};
	size_t c = 0;
	while (c < 4 && strcmp(cmds[c].name, cmd) != 0)
		c++;
	if (c == 4) {
		char msg[300];
		textf(msg, sizeof(msg),
		    "unknown command \"%s\" (list, describe, call, health)",
		    cmd);
		return usage(msg);
	}
	if (n < cmds[c].min || n > cmds[c].max) {
		char msg[300];
		textf(msg, sizeof(msg), "%s: %s arguments", cmd,
		    n < cmds[c].min ? "missing" : "too many");
		return usage(msg);
	}
	if ((url = addr_url(pos[1])) == NULL)
		return fail(ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
	o.url = url;
	if (c == 0)
		rc = cmd_list(&o);
	else if (c == 1)
		rc = cmd_describe(&o, pos[2]);
	else if (c == 2)
		rc = cmd_call(&o, pos[2], pos[3]);
	else
		rc = cmd_health(&o, pos[2]);
	fflush(stdout);
	free(url);
	asynq_thread_fini();
	return rc;
}
