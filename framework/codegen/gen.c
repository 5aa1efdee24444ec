/* SPDX-License-Identifier: MIT */
/*
 * protoc-gen-asynq's generator. For every file protoc asks for it writes
 * <file>.asynq.h and <file>.asynq.c (even for a file without services, so a
 * build rule can name its outputs from the .proto names alone); for every
 * service of the file they hold what the parts[] table below emits: the
 * service descriptor table of asynq/rpc_desc.h, typed client stubs
 * (<service>__<method>__call and __reply) and a typed server handler table
 * (<service>__asynq_handlers, registered by <service>__asynq_serve). A file
 * with services also embeds its own FileDescriptorProto and those of every
 * file it imports, for the reflection service.
 *
 * Design notes
 *
 * - Two stages. First every file to generate is read into a model (struct
 *   file, service, method): names, protoc-c C names, option values. All
 *   checks happen there, and the first problem becomes the response's error
 *   (protoc prints it and fails the build). Only a valid model is emitted.
 * - Custom options: protobuf-c does not know the extensions declared in
 *   proto/asynq/options.proto, so their values arrive as unknown fields of
 *   ServiceOptions and MethodOptions (base.unknown_fields), raw as on the
 *   wire (a varint's bytes; a length-delimited field's length prefix and
 *   bytes). They are decoded here by field number; like protobuf, the last
 *   occurrence of a field wins.
 * - C names: the tables point at protoc-c's message descriptors, so protoc-c's
 *   mangling is reproduced: each dotted piece of the full name goes through
 *   CamelToLower ("HTTPRequest" -> "httprequest", "GetName" -> "get_name"),
 *   pieces are joined with "__", and a file's (pb_c_file).c_package replaces
 *   its package. A mismatch would be a compile error of the generated .c,
 *   never a silent one. The typed stubs and handlers also need the C type
 *   of each message, protoc-c's FullNameToC (camel() below).
 * - Names: every C name the output defines, and protoc-c's service names
 *   next to them (<service>__<method> is protoc-c's own stub), is checked
 *   for collisions before anything is emitted (check_names). A method whose
 *   lower-case name is a C keyword ("Double") gets a handler-table field
 *   with a trailing underscore; protoc-c 1.4's own service struct in the
 *   .pb-c.h does not compile for such a method, which is protoc-c's limit.
 * - Typed whole-batch calls: the server's asynq_rpc_batch_call array is
 *   handed to the typed handler as an array of a generated struct whose
 *   layout a _Static_assert in the .c pins to asynq_rpc_batch_call's; the
 *   two are only ever accessed on either side of a call through a function
 *   pointer in another translation unit.
 * - Embedded files: each .asynq.c of a file with services holds, as static
 *   tables (asynq_rpc_file_desc), the serialized FileDescriptorProto of
 *   the file and of every file it imports, directly or not, as protoc sent
 *   them less source_code_info, each pointing at its imports. A file
 *   imported by several generated files is embedded in each (static, so
 *   no symbol clashes; descriptor.proto, which options.proto imports, is
 *   about 8 KB): every table is complete on its own, whatever else is
 *   linked, and protoc-c's libraries of imported files need nothing.
 * - Message codecs: each request and response type of the file's services
 *   whose fields are all singular numbers, bools, enums, strings or bytes
 *   (no oneof, no extensions) gets an asynq_rpc_codec, once per file, that
 *   the method's table points at: size, pack and unpack as straight-line
 *   code over its fields with the keys and presence rules as constants
 *   (asynq/rpc_codec.h holds the pieces). Member offsets come from
 *   protoc-c's descriptor at run time, never from member names, and the
 *   codec lists the fields it was written for, in field-number order (the
 *   order of protoc-c's descriptor): the RPC layer checks them against the
 *   descriptor once and falls back to protobuf-c when they differ.
 * - Memory: everything allocated is recorded in the generator and freed by
 *   asynqi_codegen_free; running out of memory sets a flag that makes the run
 *   fail. Only ISO C is used: the plugin is built for the host too.
 */
#include <ctype.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen.h"

typedef Google__Protobuf__Compiler__CodeGeneratorRequest request;
typedef Google__Protobuf__Compiler__CodeGeneratorResponse response;
typedef Google__Protobuf__Compiler__CodeGeneratorResponse__File response_file;
typedef Google__Protobuf__FileDescriptorProto file_proto;
typedef Google__Protobuf__DescriptorProto message_proto;
typedef Google__Protobuf__FieldDescriptorProto field_proto;
typedef Google__Protobuf__ServiceDescriptorProto service_proto;
typedef Google__Protobuf__MethodDescriptorProto method_proto;

struct asynqi_codegen {
	const request *req;
	response resp;
	void **owned; /* every allocation, freed by asynqi_codegen_free */
	size_t n_owned;
	size_t cap_owned;
	bool oom;
	char *error; /* the first problem found; owned */
};

/* ---- Memory and text ------------------------------------------------ */

/* own records p for asynqi_codegen_free; a NULL p (failed allocation) and
 * a failure to record set the out-of-memory flag. Returns p or NULL. */
static void *
own(asynqi_codegen *g, void *p)
{
	if (p == NULL) {
		g->oom = true;
		return NULL;
	}
	if (g->n_owned == g->cap_owned) {
		size_t cap = g->cap_owned ? g->cap_owned * 2 : 64;
		void **n = realloc(g->owned, cap * sizeof(*n));
		if (n == NULL) {
			free(p);
			g->oom = true;
			return NULL;
		}
		g->owned = n;
		g->cap_owned = cap;
	}
	g->owned[g->n_owned++] = p;
	return p;
}

static void *
gen_zalloc(asynqi_codegen *g, size_t n, size_t size)
{
	return own(g, calloc(n ? n : 1, size));
}

/* A growing string; on out-of-memory it stops growing and flags g. */
struct buf {
	asynqi_codegen *g;
	char *p;
	size_t len;
	size_t cap;
};

static void
buf_init(struct buf *b, asynqi_codegen *g)
{
	b->g = g;
	b->p = NULL;
	b->len = 0;
	b->cap = 0;
}

static bool
buf_reserve(struct buf *b, size_t more)
{
	size_t cap;
	char *p;

	if (b->g->oom)
		return false;
	if (b->len + more + 1 <= b->cap)
		return true;
	cap = b->cap ? b->cap : 256;
	while (cap < b->len + more + 1)
		cap *= 2;
	if ((p = realloc(b->p, cap)) == NULL) {
		b->g->oom = true;
		return false;
	}
	b->p = p;
	b->cap = cap;
	return true;
}

static void
buf_putc(struct buf *b, char c)
{
	if (!buf_reserve(b, 1))
		return;
	b->p[b->len++] = c;
	b->p[b->len] = '\0';
}

static void
buf_vprintf(struct buf *b, const char *fmt, va_list ap)
{
	va_list aq;
	int n;

	va_copy(aq, ap);
	n = vsnprintf(NULL, 0, fmt, aq);
	va_end(aq);
	if (n < 0 || !buf_reserve(b, (size_t)n))
		return;
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	b->len += (size_t)n;
}

static void buf_printf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	buf_vprintf(b, fmt, ap);
	va_end(ap);
}

/* buf_take hands the text to g (freed with it) and returns it, or NULL
 * when memory ran out. */
static char *
buf_take(struct buf *b)
{
	if (b->g->oom) {
		free(b->p);
		b->p = NULL;
		return NULL;
	}
	if (b->p == NULL && !buf_reserve(b, 0))
		return NULL;
	if (b->len == 0)
		b->p[0] = '\0';
	return own(b->g, b->p);
}

static char *gen_printf(asynqi_codegen *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static char *
gen_printf(asynqi_codegen *g, const char *fmt, ...)
{
	struct buf b;
	va_list ap;

	buf_init(&b, g);
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	return buf_take(&b);
}

static int fail(asynqi_codegen *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* fail records the first problem of the run; returns -1 for the caller to
 * pass on. */
static int
fail(asynqi_codegen *g, const char *fmt, ...)
{
	struct buf b;
	va_list ap;

	if (g->error != NULL || g->oom)
		return -1;
	buf_init(&b, g);
	va_start(ap, fmt);
	buf_vprintf(&b, fmt, ap);
	va_end(ap);
	g->error = buf_take(&b);
	return -1;
}

/* ---- protoc-c names ----------------------------------------------- */

/* put_piece appends protoc-c's CamelToLower (or CamelToUpper) of the n
 * bytes at s: an underscore before each upper-case letter that follows a
 * character that is not one, then everything in one case. */
static void
put_piece(struct buf *b, const char *s, size_t n, bool upper)
{
	bool was_upper = true; /* no leading underscore */

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		bool is_upper = isupper(c) != 0;

		if (is_upper && !was_upper)
			buf_putc(b, '_');
		buf_putc(b, (char)(upper ? toupper(c) : tolower(c)));
		was_upper = is_upper;
	}
}

/* mangle returns protoc-c's FullNameToLower (or ToUpper) of a dotted name:
 * the pieces joined with "__", empty pieces skipped. */
static char *
mangle(asynqi_codegen *g, const char *dotted, bool upper)
{
	struct buf b;
	const char *p = dotted;

	buf_init(&b, g);
	while (*p != '\0') {
		const char *dot = strchr(p, '.');
		size_t n = dot ? (size_t)(dot - p) : strlen(p);

		if (n > 0) {
			if (b.len > 0)
				buf_printf(&b, "__");
			put_piece(&b, p, n, upper);
		}
		p += n;
		if (*p == '.')
			p++;
	}
	return buf_take(&b);
}

/* camel returns protoc-c's FullNameToC of a dotted name, the C type name
 * of a message: each piece through ToCamel (an underscore is dropped and
 * the next character upper-cased, as is the first; "get_name_req" ->
 * "GetNameReq", "HTTPLookup" stays), pieces joined with "__". */
static char *
camel(asynqi_codegen *g, const char *dotted)
{
	struct buf b;
	bool next_upper = true;
	bool piece_empty = true;

	buf_init(&b, g);
	for (const char *p = dotted; *p != '\0'; p++) {
		unsigned char c = (unsigned char)*p;

		if (c == '.') {
			next_upper = true;
			piece_empty = true;
			continue;
		}
		if (piece_empty && b.len > 0)
			buf_printf(&b, "__");
		piece_empty = false;
		if (c == '_') {
			next_upper = true;
		} else if (next_upper) {
			buf_putc(&b, (char)toupper(c));
			next_upper = false;
		} else {
			buf_putc(&b, (char)c);
		}
	}
	return buf_take(&b);
}

/* ---- Option values ------------------------------------------------- */

/* read_varint decodes a varint from the len bytes at p; returns how many
 * bytes it took, or 0 when they hold no valid varint. */
static size_t
read_varint(const uint8_t *p, size_t len, uint64_t *v)
{
	uint64_t x = 0;

	for (size_t i = 0; i < len && i < 10; i++) {
		x |= (uint64_t)(p[i] & 0x7f) << (7 * i);
		if ((p[i] & 0x80) == 0) {
			*v = x;
			return i + 1;
		}
	}
	return 0;
}

/* opt_find returns the last unknown field numbered tag of an options
 * message (NULL when the message or the field is absent). */
static const ProtobufCMessageUnknownField *
opt_find(const ProtobufCMessage *opts, uint32_t tag)
{
	const ProtobufCMessageUnknownField *found = NULL;

	if (opts == NULL)
		return NULL;
	for (unsigned i = 0; i < opts->n_unknown_fields; i++)
		if (opts->unknown_fields[i].tag == tag)
			found = &opts->unknown_fields[i];
	return found;
}

/* opt_varint reads varint option tag into *v; returns 1 when set, 0 when
 * unset, -1 (with the run's error set) when the field is not a varint. */
static int
opt_varint(asynqi_codegen *g, const ProtobufCMessage *opts, uint32_t tag,
    const char *where, const char *opt, uint64_t *v)
{
	const ProtobufCMessageUnknownField *f = opt_find(opts, tag);

	if (f == NULL)
		return 0;
	if (f->wire_type != PROTOBUF_C_WIRE_TYPE_VARINT ||
	    read_varint(f->data, f->len, v) != f->len)
		return fail(g,
		    "%s: option %s (field %u) is not the integer "
		    "proto/asynq/options.proto declares; does another "
		    "extension use field number %u?",
		    where, opt, (unsigned)tag, (unsigned)tag);
	return 1;
}

/* opt_uint32 reads a uint32 option; unset leaves *v at 0. */
static int
opt_uint32(asynqi_codegen *g, const ProtobufCMessage *opts, uint32_t tag,
    const char *where, const char *opt, bool *set, uint32_t *v)
{
	uint64_t x = 0;
	int rv;

	*set = false;
	*v = 0;
	if ((rv = opt_varint(g, opts, tag, where, opt, &x)) <= 0)
		return rv;
	if (x > UINT32_MAX)
		return fail(g,
		    "%s: option %s = %llu is out of range (at most "
		    "%lu)",
		    where, opt, (unsigned long long)x,
		    (unsigned long)UINT32_MAX);
	*set = true;
	*v = (uint32_t)x;
	return 0;
}

static int
opt_bool(asynqi_codegen *g, const ProtobufCMessage *opts, uint32_t tag,
    const char *where, const char *opt, bool *v)
{
	uint64_t x = 0;
	int rv;

	*v = false;
	if ((rv = opt_varint(g, opts, tag, where, opt, &x)) <= 0)
		return rv;
	*v = x != 0;
	return 0;
}

/* opt_strings reads every value of the repeated string option tag into
 * *vp (gen-owned copies), *np of them; none leaves *np at 0. A value must
 * be non-empty text without NUL bytes or control characters. */
static int
opt_strings(asynqi_codegen *g, const ProtobufCMessage *opts, uint32_t tag,
    const char *where, const char *opt, char ***vp, size_t *np)
{
	size_t n = 0, k = 0;

	*vp = NULL;
	*np = 0;
	if (opts == NULL)
		return 0;
	for (unsigned i = 0; i < opts->n_unknown_fields; i++)
		if (opts->unknown_fields[i].tag == tag)
			n++;
	if (n == 0)
		return 0;
	if ((*vp = gen_zalloc(g, n, sizeof(char *))) == NULL)
		return -1;
	for (unsigned i = 0; i < opts->n_unknown_fields; i++) {
		const ProtobufCMessageUnknownField *u =
		    &opts->unknown_fields[i];
		uint64_t len;
		size_t h;

		if (u->tag != tag)
			continue;
		if (u->wire_type != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED ||
		    (h = read_varint(u->data, u->len, &len)) == 0 ||
		    len != u->len - h)
			return fail(g,
			    "%s: option %s (field %u) is not the string "
			    "proto/asynq/options.proto declares; does another "
			    "extension use field number %u?",
			    where, opt, (unsigned)tag, (unsigned)tag);
		if (len == 0)
			return fail(g,
			    "%s: option %s is empty: name a peer "
			    "identity or a scope",
			    where, opt);
		for (size_t j = 0; j < len; j++)
			if (u->data[h + j] < 0x20 || u->data[h + j] == 0x7f)
				return fail(g,
				    "%s: option %s = \"%.*s\" has a control "
				    "character",
				    where, opt, (int)len,
				    (const char *)u->data + h);
		if (((*vp)[k++] = gen_printf(g, "%.*s", (int)len,
		         (const char *)u->data + h)) == NULL)
			return -1;
	}
	*np = k;
	return 0;
}

/* c_package returns a file's (pb_c_file).c_package, or NULL when unset.
 * The extension is a message, so its unknown field holds a length prefix
 * and the message's fields. */
static int
c_package(asynqi_codegen *g, const file_proto *f, char **pkgp)
{
	const ProtobufCMessageUnknownField *u;
	const uint8_t *p, *end;
	uint64_t len, key, x;
	size_t n;

	*pkgp = NULL;
	u = opt_find(f->options ? &f->options->base : NULL,
	    ASYNQI_OPT_PB_C_FILE);
	if (u == NULL)
		return 0;
	if (u->wire_type != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED ||
	    (n = read_varint(u->data, u->len, &len)) == 0 || len != u->len - n)
		goto malformed;
	p = u->data + n;
	end = u->data + u->len;
	while (p < end) {
		if ((n = read_varint(p, (size_t)(end - p), &key)) == 0)
			goto malformed;
		p += n;
		switch (key & 7) {
		case PROTOBUF_C_WIRE_TYPE_VARINT:
			if ((n = read_varint(p, (size_t)(end - p), &x)) == 0)
				goto malformed;
			break;
		case PROTOBUF_C_WIRE_TYPE_64BIT:
			n = 8;
			break;
		case PROTOBUF_C_WIRE_TYPE_32BIT:
			n = 4;
			break;
		case PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED:
			if ((n = read_varint(p, (size_t)(end - p), &x)) == 0 ||
			    x > (uint64_t)(end - p) - n)
				goto malformed;
			if ((key >> 3) == ASYNQI_OPT_PB_C_FILE_C_PACKAGE) {
				*pkgp = gen_printf(g, "%.*s", (int)x,
				    (const char *)p + n);
				if (*pkgp == NULL)
					return -1;
			}
			n += (size_t)x;
			break;
		default:
			goto malformed;
		}
		if (n > (size_t)(end - p))
			goto malformed;
		p += n;
	}
	return 0;

malformed:
	return fail(g, "%s: cannot read option (pb_c_file)", f->name);
}

/* ---- The model ----------------------------------------------------- */

struct method {
	const method_proto *proto;
	char *full_name; /* "pkg.Svc/Method" */
	char *upper;     /* "METHOD" in the index enum */
	char *lower;     /* protoc-c's "method" in <service>__<method> */
	char *member;    /* its field in the handler table: lower, or lower
	                    and "_" when lower is a C keyword or macro */
	char *input_c;   /* protoc-c name of the request type */
	char *output_c;  /* protoc-c name of the response type */
	char *input_t;   /* protoc-c C type of the request */
	char *output_t;  /* protoc-c C type of the response */
	/* The messages' declarations, and whether each gets a codec (its
	 * fields are all singular numbers, bools, enums, strings, bytes). */
	const message_proto *input_m, *output_m;
	bool input_proto3, output_proto3;
	bool input_codec, output_codec;
	bool idempotent;
	bool whole_batch;
	bool request_cache, cache_errors;
	char **allow_peers, **allow_scopes;
	size_t n_allow_peers, n_allow_scopes;
	bool allow_anyone;
};

struct service {
	const service_proto *proto;
	char *full_name; /* "pkg.Svc" */
	char *lower;     /* protoc-c's name of the service: "pkg__svc" */
	char *upper;     /* "PKG__SVC" */
	uint32_t batch_max_calls;
	uint32_t flush_delay_us;
	uint32_t default_deadline_ms;
	size_t file_index; /* its file's position in req->proto_file */
	struct method *methods;
	size_t n_methods;
};

struct file {
	const file_proto *proto;
	char *base;   /* the file name without ".proto" */
	char *guard;  /* include guard of the header */
	size_t index; /* position in req->proto_file */
	struct service *services;
	size_t n_services;
};

static const file_proto *
find_file(const request *req, const char *name)
{
	for (size_t i = 0; i < req->n_proto_file; i++)
		if (req->proto_file[i]->name != NULL &&
		    strcmp(req->proto_file[i]->name, name) == 0)
			return req->proto_file[i];
	return NULL;
}

/* find_message returns the message the dotted path rel ("Outer.Inner")
 * names among the n messages at m, or NULL. */
static const message_proto *
find_message(message_proto *const *m, size_t n, const char *rel)
{
	const char *dot = strchr(rel, '.');
	size_t len = dot ? (size_t)(dot - rel) : strlen(rel);

	for (size_t i = 0; i < n; i++) {
		const message_proto *found;

		if (m[i]->name == NULL || strlen(m[i]->name) != len ||
		    strncmp(m[i]->name, rel, len) != 0)
			continue;
		if (dot == NULL)
			return m[i];
		if ((found = find_message(m[i]->nested_type,
		         m[i]->n_nested_type, dot + 1)) != NULL)
			return found;
	}
	return NULL;
}

/* type_c_name returns protoc-c's names of the message type ".pkg.Msg" (the
 * fully qualified form protoc gives), found among the request's files: the
 * lower-case prefix of its functions and descriptor, and its C type; and
 * its declaration, and whether its file is proto3. */
static int
type_c_name(asynqi_codegen *g, const char *where, const char *type,
    char **namep, char **typep, const message_proto **mp, bool *proto3)
{
	const request *req = g->req;

	*namep = NULL;
	*typep = NULL;
	*mp = NULL;
	if (type == NULL || type[0] != '.')
		return fail(g, "%s: message type \"%s\" is not fully qualified",
		    where, type ? type : "");
	for (size_t i = 0; i < req->n_proto_file; i++) {
		const file_proto *f = req->proto_file[i];
		const char *pkg = f->package ? f->package : "";
		size_t plen = strlen(pkg);
		const char *rel = type + 1;
		char *cpkg, *full;

		if (plen > 0) {
			if (strncmp(rel, pkg, plen) != 0 || rel[plen] != '.')
				continue;
			rel += plen + 1;
		}
		if ((*mp = find_message(f->message_type, f->n_message_type,
		         rel)) == NULL)
			continue;
		*proto3 = f->syntax != NULL && strcmp(f->syntax, "proto3") == 0;
		if (c_package(g, f, &cpkg) != 0)
			return -1;
		if (cpkg != NULL)
			pkg = cpkg;
		if ((full = gen_printf(g, "%s.%s", pkg, rel)) == NULL ||
		    (*namep = mangle(g, full, false)) == NULL ||
		    (*typep = camel(g, full)) == NULL)
			return -1;
		return 0;
	}
	return fail(g,
	    "%s: message type %s is not declared in any file protoc "
	    "passed to the plugin",
	    where, type);
}

/* ---- Message codecs: the model ----------------------------------- */

/* A field type a codec takes: protoc-c's name of it, its wire type, and
 * how its value is read and written (the V_ kinds below). */
enum {
	V_VARINT,
	V_ZIGZAG32,
	V_ZIGZAG64,
	V_BOOL,
	V_FIXED32,
	V_FIXED64,
	V_FLOAT,
	V_DOUBLE,
	V_STRING,
	V_BYTES
};

static const struct codec_type {
	int type; /* FieldDescriptorProto.Type */
	const char *pbc;
	unsigned wt;
	int kind;
	const char *ctype; /* the member's C type */
	unsigned bytes;    /* a V_VARINT member's size: 4 or 8 (else 0) */
} codec_types[] = {
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_INT32,
	    "PROTOBUF_C_TYPE_INT32", 0, V_VARINT, "int32_t", 4 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_ENUM,
	    "PROTOBUF_C_TYPE_ENUM", 0, V_VARINT, "int32_t", 4 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_UINT32,
	    "PROTOBUF_C_TYPE_UINT32", 0, V_VARINT, "uint32_t", 4 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_INT64,
	    "PROTOBUF_C_TYPE_INT64", 0, V_VARINT, "int64_t", 8 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_UINT64,
	    "PROTOBUF_C_TYPE_UINT64", 0, V_VARINT, "uint64_t", 8 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SINT32,
	    "PROTOBUF_C_TYPE_SINT32", 0, V_ZIGZAG32, "int32_t", 0 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SINT64,
	    "PROTOBUF_C_TYPE_SINT64", 0, V_ZIGZAG64, "int64_t", 0 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_BOOL,
	    "PROTOBUF_C_TYPE_BOOL", 0, V_BOOL, "protobuf_c_boolean", 0 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_FIXED32,
	    "PROTOBUF_C_TYPE_FIXED32", 5, V_FIXED32, "uint32_t", 0 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SFIXED32,
	    "PROTOBUF_C_TYPE_SFIXED32", 5, V_FIXED32, "uint32_t", 0 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_FLOAT,
	    "PROTOBUF_C_TYPE_FLOAT", 5, V_FLOAT, "float", 0 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_FIXED64,
	    "PROTOBUF_C_TYPE_FIXED64", 1, V_FIXED64, "uint64_t", 0 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SFIXED64,
	    "PROTOBUF_C_TYPE_SFIXED64", 1, V_FIXED64, "uint64_t", 0 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_DOUBLE,
	    "PROTOBUF_C_TYPE_DOUBLE", 1, V_DOUBLE, "double", 0 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_STRING,
	    "PROTOBUF_C_TYPE_STRING", 2, V_STRING, "const char *", 0 },
	{ GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_BYTES,
	    "PROTOBUF_C_TYPE_BYTES", 2, V_BYTES, "ProtobufCBinaryData", 0 },
};

static const struct codec_type *
codec_type(const field_proto *f)
{
	if (!f->has_type)
		return NULL;
	for (size_t i = 0; i < sizeof(codec_types) / sizeof(codec_types[0]);
	     i++)
		if ((int)f->type == codec_types[i].type)
			return &codec_types[i];
	return NULL;
}

/* A field a codec takes: singular, outside any oneof but a proto3
 * `optional`'s own, of a type in codec_types, with a number. Others
 * (repeated, required, messages, groups, oneofs) are protobuf-c's. */
static bool
codec_field_fits(const field_proto *f)
{
	if (codec_type(f) == NULL || !f->has_number || f->number <= 0 ||
	    f->label !=
	        GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_OPTIONAL)
		return false;
	return !f->has_oneof_index || f->proto3_optional;
}

static bool
codec_fits(const message_proto *m)
{
	if (m == NULL || m->n_extension_range != 0)
		return false;
	for (size_t i = 0; i < m->n_field; i++)
		if (!codec_field_fits(m->field[i]))
			return false;
	return true;
}

/* Whether field f has a has_ flag (or, for a string, a default to compare
 * with) rather than proto3's "sent unless zero": proto2 optional fields
 * and proto3 `optional` ones. */
static bool
codec_field_optional(const field_proto *f, bool proto3)
{
	return !proto3 || f->proto3_optional;
}

/* Lower-case method names that cannot be a field of the handler table:
 * C keywords (C11, C23 and GNU's) and the lower-case object-like macros of
 * the standard headers the generated code includes. Such a method's field
 * gets a trailing underscore ("Double" -> double_). C++ keywords are left
 * alone: protoc-c's own service struct in the .pb-c.h uses the same names,
 * so that header does not compile as C++ for them anyway. */
static const char *const c_reserved[] = { "alignas", "alignof", "asm", "assert",
	"auto", "bool", "break", "case", "char", "complex", "const",
	"constexpr", "continue", "default", "do", "double", "else", "enum",
	"errno", "extern", "false", "float", "for", "goto", "if", "imaginary",
	"inline", "int", "long", "noreturn", "nullptr", "offsetof", "register",
	"restrict", "return", "short", "signed", "sizeof", "static",
	"static_assert", "struct", "switch", "thread_local", "true", "typedef",
	"typeof", "typeof_unqual", "union", "unsigned", "void", "volatile",
	"while" };

static bool
is_c_reserved(const char *name)
{
	for (size_t i = 0; i < sizeof(c_reserved) / sizeof(c_reserved[0]); i++)
		if (strcmp(name, c_reserved[i]) == 0)
			return true;
	return false;
}

static int
read_method(asynqi_codegen *g, const struct service *s, const method_proto *mp,
    struct method *m)
{
	const ProtobufCMessage *opts = mp->options ? &mp->options->base : NULL;
	char *where;

	m->proto = mp;
	if ((m->full_name = gen_printf(g, "%s/%s", s->full_name, mp->name)) ==
	        NULL ||
	    (where = gen_printf(g, "method %s", m->full_name)) == NULL ||
	    (m->upper = mangle(g, mp->name, true)) == NULL ||
	    (m->lower = mangle(g, mp->name, false)) == NULL ||
	    (m->member = gen_printf(g, "%s%s", m->lower,
	         is_c_reserved(m->lower) ? "_" : "")) == NULL)
		return -1;
	if (mp->client_streaming || mp->server_streaming)
		return fail(g,
		    "%s: streaming methods are not supported: an "
		    "asynq call sends one request message and gets "
		    "one response",
		    where);
	if (type_c_name(g, where, mp->input_type, &m->input_c, &m->input_t,
	        &m->input_m, &m->input_proto3) != 0 ||
	    type_c_name(g, where, mp->output_type, &m->output_c, &m->output_t,
	        &m->output_m, &m->output_proto3) != 0)
		return -1;
	m->input_codec = codec_fits(m->input_m);
	m->output_codec = codec_fits(m->output_m);
	if (opt_bool(g, opts, ASYNQI_OPT_IDEMPOTENT, where,
	        "(asynq.idempotent)", &m->idempotent) != 0 ||
	    opt_bool(g, opts, ASYNQI_OPT_WHOLE_BATCH, where,
	        "(asynq.whole_batch)", &m->whole_batch) != 0 ||
	    opt_bool(g, opts, ASYNQI_OPT_REQUEST_CACHE, where,
	        "(asynq.request_cache)", &m->request_cache) != 0 ||
	    opt_bool(g, opts, ASYNQI_OPT_CACHE_ERRORS, where,
	        "(asynq.cache_errors)", &m->cache_errors) != 0 ||
	    opt_strings(g, opts, ASYNQI_OPT_ALLOW_PEERS, where,
	        "(asynq.allow_peers)", &m->allow_peers,
	        &m->n_allow_peers) != 0 ||
	    opt_strings(g, opts, ASYNQI_OPT_ALLOW_SCOPES, where,
	        "(asynq.allow_scopes)", &m->allow_scopes,
	        &m->n_allow_scopes) != 0 ||
	    opt_bool(g, opts, ASYNQI_OPT_ALLOW_ANYONE, where,
	        "(asynq.allow_anyone)", &m->allow_anyone) != 0)
		return -1;
	if (m->allow_anyone && m->n_allow_peers + m->n_allow_scopes != 0)
		return fail(g,
		    "%s: (asynq.allow_anyone) with (asynq.allow_peers) or "
		    "(asynq.allow_scopes): choose one",
		    where);
	if (mp->options != NULL && mp->options->has_idempotency_level &&
	    mp->options->idempotency_level !=
	        GOOGLE__PROTOBUF__METHOD_OPTIONS__IDEMPOTENCY_LEVEL__IDEMPOTENCY_UNKNOWN)
		m->idempotent = true;
	if (m->request_cache && !m->idempotent)
		return fail(g,
		    "%s: (asynq.request_cache) needs an idempotent method: a "
		    "cached reply stands for a second run of the call (add "
		    "option (asynq.idempotent) = true)",
		    where);
	if (m->cache_errors && !m->request_cache)
		return fail(g,
		    "%s: (asynq.cache_errors) without (asynq.request_cache) "
		    "does nothing",
		    where);
	return 0;
}

static int
read_service(asynqi_codegen *g, const file_proto *f, const service_proto *sp,
    struct service *s)
{
	const ProtobufCMessage *opts = sp->options ? &sp->options->base : NULL;
	bool set;
	char *where;

	s->proto = sp;
	if (f->package != NULL && f->package[0] != '\0')
		s->full_name = gen_printf(g, "%s.%s", f->package, sp->name);
	else
		s->full_name = gen_printf(g, "%s", sp->name);
	if (s->full_name == NULL ||
	    (where = gen_printf(g, "%s: service %s", f->name, s->full_name)) ==
	        NULL)
		return -1;
	/* The table sits next to protoc-c's service code, so it is named
	 * the way protoc-c names the service (c_package included). */
	{
		char *cpkg, *cname;

		if (c_package(g, f, &cpkg) != 0)
			return -1;
		cname = cpkg ? gen_printf(g, "%s.%s", cpkg, sp->name)
		             : s->full_name;
		if (cname == NULL ||
		    (s->lower = mangle(g, cname, false)) == NULL ||
		    (s->upper = mangle(g, cname, true)) == NULL)
			return -1;
	}

	if (opt_uint32(g, opts, ASYNQI_OPT_BATCH_MAX_CALLS, where,
	        "(asynq.batch_max_calls)", &set, &s->batch_max_calls) != 0)
		return -1;
	if (set && s->batch_max_calls == 0)
		return fail(g,
		    "%s: option (asynq.batch_max_calls) = 0 is "
		    "invalid: a request carries at least 1 call "
		    "(leave the option unset for the client's "
		    "default)",
		    where);
	if (opt_uint32(g, opts, ASYNQI_OPT_FLUSH_DELAY_US, where,
	        "(asynq.flush_delay_us)", &set, &s->flush_delay_us) != 0 ||
	    opt_uint32(g, opts, ASYNQI_OPT_DEFAULT_DEADLINE_MS, where,
	        "(asynq.default_deadline_ms)", &set,
	        &s->default_deadline_ms) != 0)
		return -1;

	s->n_methods = sp->n_method;
	if ((s->methods = gen_zalloc(g, sp->n_method, sizeof(*s->methods))) ==
	    NULL)
		return -1;
	for (size_t i = 0; i < sp->n_method; i++)
		if (read_method(g, s, sp->method[i], &s->methods[i]) != 0)
			return -1;

	/* The service's allow lists go to each method without its own. */
	char **peers, **scopes;
	size_t n_peers, n_scopes;
	if (opt_strings(g, opts, ASYNQI_OPT_SVC_ALLOW_PEERS, where,
	        "(asynq.default_allow_peers)", &peers, &n_peers) != 0 ||
	    opt_strings(g, opts, ASYNQI_OPT_SVC_ALLOW_SCOPES, where,
	        "(asynq.default_allow_scopes)", &scopes, &n_scopes) != 0)
		return -1;
	for (size_t i = 0; i < s->n_methods; i++) {
		struct method *m = &s->methods[i];
		if (m->allow_anyone ||
		    m->n_allow_peers + m->n_allow_scopes != 0)
			continue;
		m->allow_peers = peers;
		m->n_allow_peers = n_peers;
		m->allow_scopes = scopes;
		m->n_allow_scopes = n_scopes;
	}
	return 0;
}

/* One C name the output of a file defines or sits next to: what protoc-c
 * generates for a service (<service>__init, __descriptor, __<method>) and
 * what the parts[] below generate. */
struct c_name {
	const char *name;
	const struct service *s;
	const struct method *m; /* the method that brings it, if any */
};

/* add_names appends the C names of service s to n[*len]. Returns -1 when
 * memory ran out. Keep it in step with what the parts emit. */
static int
add_names(asynqi_codegen *g, const struct service *s, struct c_name *n,
    size_t *len)
{
	static const char *const fixed[] = { "init", "descriptor", "asynq_desc",
		"asynq_methods", "asynq_handlers", "asynq_binding",
		"asynq_serve" };
	size_t k = *len;

	for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++)
		n[k++] = (struct c_name){
			gen_printf(g, "%s__%s", s->lower, fixed[i]), s, NULL
		};
	for (size_t i = 0; i < s->n_methods; i++) {
		const struct method *m = &s->methods[i];
		const char *l = m->lower;

		n[k++] = (struct c_name){ gen_printf(g, "%s__%s", s->lower, l),
			s, m };
		n[k++] =
		    (struct c_name){ gen_printf(g, "%s__%s__call", s->lower, l),
			    s, m };
		n[k++] = (struct c_name){
			gen_printf(g, "%s__%s__call_rpc", s->lower, l), s, m
		};
		n[k++] = (struct c_name){
			gen_printf(g, "%s__%s__reply", s->lower, l), s, m
		};
		n[k++] = (struct c_name){
			gen_printf(g, "%s__%s__%s", s->lower, l,
			    m->whole_batch ? "batch_call" : "asynq_unary"),
			s, m
		};
		if (m->whole_batch)
			n[k++] = (struct c_name){ gen_printf(g,
				                      "%s__%s__asynq_batch",
				                      s->lower, l),
				s, m };
		n[k++] = (struct c_name){ gen_printf(g, "%s__ASYNQ_METHOD_%s",
			                      s->upper, m->upper),
			s, m };
		n[k++] = (struct c_name){ gen_printf(g, "%s__asynq_handlers.%s",
			                      s->lower, m->member),
			s, m };
	}
	for (size_t i = *len; i < k; i++)
		if (n[i].name == NULL)
			return -1;
	*len = k;
	return 0;
}

/* check_names fails the run when two C names of a file's services are the
 * same (e.g. a method "AsynqDesc", whose protoc-c function would be named
 * like the descriptor table, or "Double" next to "Double_", whose fields in
 * the handler table would both be double_). */
static int
check_names(asynqi_codegen *g, const struct file *fl)
{
	struct c_name *n;
	size_t cap = 0, len = 0;

	for (size_t i = 0; i < fl->n_services; i++)
		cap += 7 + 8 * fl->services[i].n_methods;
	if ((n = gen_zalloc(g, cap, sizeof(*n))) == NULL)
		return -1;
	for (size_t i = 0; i < fl->n_services; i++)
		if (add_names(g, &fl->services[i], n, &len) != 0)
			return -1;
	for (size_t j = 1; j < len; j++)
		for (size_t i = 0; i < j; i++) {
			const struct c_name *a = &n[i], *b = &n[j];

			if (strcmp(a->name, b->name) != 0)
				continue;
			if (b->m == NULL)
				b = a;
			if (b->m != NULL)
				return fail(g,
				    "method %s: the name collides with the "
				    "generated symbol %s; rename the method",
				    b->m->full_name, a->name);
			return fail(g,
			    "%s: service %s: the name collides with the "
			    "generated symbol %s; rename the service",
			    fl->proto->name, b->s->full_name, a->name);
		}
	return 0;
}

/* A file name becomes a C string literal and a comment in the output. */
static bool
name_is_plain(const char *name)
{
	for (const char *p = name; *p != '\0'; p++) {
		unsigned char c = (unsigned char)*p;

		if (c < 0x20 || c == 0x7f || c == '"' || c == '\\' ||
		    (c == '*' && p[1] == '/'))
			return false;
	}
	return true;
}

static int
read_file(asynqi_codegen *g, const char *name, struct file *fl)
{
	const file_proto *f = find_file(g->req, name);
	size_t len = strlen(name), n;
	struct buf guard;

	if (f == NULL)
		return fail(g,
		    "%s: protoc asked for this file but did not "
		    "send its descriptor",
		    name);
	if (!name_is_plain(name))
		return fail(g,
		    "%s: the file name cannot be used in a C "
		    "#include",
		    name);
	fl->proto = f;
	for (size_t i = 0; i < g->req->n_proto_file; i++)
		if (g->req->proto_file[i] == f)
			fl->index = i;
	n = len > 6 && strcmp(name + len - 6, ".proto") == 0 ? len - 6 : len;
	if ((fl->base = gen_printf(g, "%.*s", (int)n, name)) == NULL)
		return -1;
	buf_init(&guard, g);
	buf_printf(&guard, "ASYNQ_GEN_");
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];
		buf_putc(&guard, isalnum(c) ? (char)toupper(c) : '_');
	}
	buf_printf(&guard, "_ASYNQ_H");
	if ((fl->guard = buf_take(&guard)) == NULL)
		return -1;

	fl->n_services = f->n_service;
	if ((fl->services =
	            gen_zalloc(g, f->n_service, sizeof(*fl->services))) == NULL)
		return -1;
	for (size_t i = 0; i < f->n_service; i++)
		if (read_service(g, f, f->service[i], &fl->services[i]) != 0)
			return -1;
		else
			fl->services[i].file_index = fl->index;
	return check_names(g, fl);
}

/* ---- Message codecs: what is generated ---------------------------- */

/* The fields of m in field-number order, protoc-c's order of its
 * descriptor's fields; NULL without memory (or fields). */
static const field_proto **
codec_sorted(asynqi_codegen *g, const message_proto *m)
{
	const field_proto **v;

	if (m->n_field == 0 ||
	    (v = gen_zalloc(g, m->n_field, sizeof(*v))) == NULL)
		return NULL;
	for (size_t i = 0; i < m->n_field; i++) {
		size_t j = i;

		while (j > 0 && v[j - 1]->number > m->field[i]->number) {
			v[j] = v[j - 1];
			j--;
		}
		v[j] = m->field[i];
	}
	return v;
}

/* codec_key appends the key bytes of field f as C statements writing them
 * at o; returns how many bytes the key takes. */
static size_t
codec_key(struct buf *c, const field_proto *f, unsigned wt, bool write)
{
	uint64_t key = (uint64_t)(uint32_t)f->number << 3 | wt;
	size_t n = 0;

	do {
		uint8_t b = (uint8_t)(key & 0x7f);

		key >>= 7;
		if (key != 0)
			b |= 0x80;
		if (write)
			buf_printf(c, "\t\t\t*o++ = 0x%02x;\n", b);
		n++;
	} while (key != 0);
	return n;
}

/* codec_out appends field k's part of the size (write false) or pack
 * function: read the member, test whether it is sent, add or write its
 * key and value. */
static void
codec_out(struct buf *c, const field_proto *f, size_t k, bool proto3,
    bool write)
{
	const struct codec_type *t = codec_type(f);
	bool opt = codec_field_optional(f, proto3);
	size_t keylen;

	buf_printf(c, "\t{\n\t\t%s x;\n\n", t->ctype);
	buf_printf(c, "\t\tmemcpy(&x, p + f[%zu].offset, sizeof(x));\n", k);
	if (t->kind == V_STRING && opt)
		buf_printf(c,
		    "\t\tif (x != NULL && x != f[%zu].default_value) {\n", k);
	else if (t->kind == V_STRING)
		buf_printf(c, "\t\tif (x != NULL && x[0] != '\\0') {\n");
	else if (opt)
		buf_printf(c, "\t\tif (asynq_codec_has(m, &f[%zu])) {\n", k);
	else if (t->kind == V_BYTES)
		buf_printf(c, "\t\tif (x.len != 0) {\n");
	else
		buf_printf(c, "\t\tif (x != 0) {\n");
	keylen = codec_key(c, f, t->wt, false);
	if (!write) {
		switch (t->kind) {
		case V_VARINT:
			buf_printf(c,
			    "\t\t\tn += %zu + asynq_codec_varint_size("
			    "(uint64_t)x);\n",
			    keylen);
			break;
		case V_ZIGZAG32:
			buf_printf(c,
			    "\t\t\tn += %zu + asynq_codec_varint_size("
			    "asynq_codec_zigzag32(x));\n",
			    keylen);
			break;
		case V_ZIGZAG64:
			buf_printf(c,
			    "\t\t\tn += %zu + asynq_codec_varint_size("
			    "asynq_codec_zigzag64(x));\n",
			    keylen);
			break;
		case V_BOOL:
			buf_printf(c, "\t\t\tn += %zu + 1;\n", keylen);
			break;
		case V_FIXED32:
		case V_FLOAT:
			buf_printf(c, "\t\t\tn += %zu + 4;\n", keylen);
			break;
		case V_FIXED64:
		case V_DOUBLE:
			buf_printf(c, "\t\t\tn += %zu + 8;\n", keylen);
			break;
		case V_STRING:
			buf_printf(c,
			    "\t\t\tsize_t len = strlen(x);\n\n"
			    "\t\t\tn += %zu + asynq_codec_varint_size(len) + "
			    "len;\n",
			    keylen);
			break;
		default:
			buf_printf(c,
			    "\t\t\tn += %zu + asynq_codec_varint_size(x.len) "
			    "+ x.len;\n",
			    keylen);
			break;
		}
		buf_printf(c, "\t\t}\n\t}\n");
		return;
	}
	codec_key(c, f, t->wt, true);
	switch (t->kind) {
	case V_VARINT:
		buf_printf(c,
		    "\t\t\to = asynq_codec_put_varint(o, (uint64_t)x);\n");
		break;
	case V_ZIGZAG32:
		buf_printf(c,
		    "\t\t\to = asynq_codec_put_varint(o, "
		    "asynq_codec_zigzag32(x));\n");
		break;
	case V_ZIGZAG64:
		buf_printf(c,
		    "\t\t\to = asynq_codec_put_varint(o, "
		    "asynq_codec_zigzag64(x));\n");
		break;
	case V_BOOL:
		buf_printf(c, "\t\t\t*o++ = x != 0;\n");
		break;
	case V_FIXED32:
		buf_printf(c, "\t\t\to = asynq_codec_put_fixed32(o, x);\n");
		break;
	case V_FIXED64:
		buf_printf(c, "\t\t\to = asynq_codec_put_fixed64(o, x);\n");
		break;
	case V_FLOAT:
		buf_printf(c,
		    "\t\t\tuint32_t bits;\n\n"
		    "\t\t\tmemcpy(&bits, &x, sizeof(bits));\n"
		    "\t\t\to = asynq_codec_put_fixed32(o, bits);\n");
		break;
	case V_DOUBLE:
		buf_printf(c,
		    "\t\t\tuint64_t bits;\n\n"
		    "\t\t\tmemcpy(&bits, &x, sizeof(bits));\n"
		    "\t\t\to = asynq_codec_put_fixed64(o, bits);\n");
		break;
	case V_STRING:
		buf_printf(c,
		    "\t\t\to = asynq_codec_put_bytes(o, x, strlen(x));\n");
		break;
	default:
		buf_printf(c,
		    "\t\t\to = asynq_codec_put_bytes(o, x.data, x.len);\n");
		break;
	}
	buf_printf(c, "\t\t}\n\t}\n");
}

/* codec_in appends field k's case of the unpack function's switch. */
static void
codec_in(struct buf *c, const field_proto *f, size_t k, bool proto3)
{
	const struct codec_type *t = codec_type(f);
	uint64_t key = (uint64_t)(uint32_t)f->number << 3 | t->wt;

	buf_printf(c, "\t\tcase %lluu: {\n", (unsigned long long)key);
	switch (t->kind) {
	case V_VARINT:
	case V_ZIGZAG32:
	case V_ZIGZAG64:
	case V_BOOL:
		buf_printf(c,
		    "\t\t\tuint64_t v;\n\n"
		    "\t\t\tif (!asynq_codec_get_varint(&d, end, &v, 10))\n"
		    "\t\t\t\tgoto give_up;\n");
		if (t->kind == V_ZIGZAG32)
			buf_printf(c,
			    "\t\t\tint32_t x = asynq_codec_unzigzag32(v);\n");
		else if (t->kind == V_ZIGZAG64)
			buf_printf(c,
			    "\t\t\tint64_t x = asynq_codec_unzigzag64(v);\n");
		else if (t->kind == V_BOOL)
			buf_printf(c, "\t\t\tprotobuf_c_boolean x = v != 0;\n");
		else if (t->bytes == 4)
			/* int32, uint32, enum: the low 32 bits, as
			 * protobuf-c keeps them. */
			buf_printf(c, "\t\t\tuint32_t x = (uint32_t)v;\n");
		else
			buf_printf(c, "\t\t\tuint64_t x = v;\n");
		buf_printf(c,
		    "\n\t\t\tmemcpy(p + f[%zu].offset, &x, sizeof(x));\n", k);
		break;
	case V_FIXED32:
	case V_FLOAT:
		buf_printf(c,
		    "\t\t\tuint32_t x;\n\n"
		    "\t\t\tif (!asynq_codec_get_fixed32(&d, end, &x))\n"
		    "\t\t\t\tgoto give_up;\n"
		    "\t\t\tmemcpy(p + f[%zu].offset, &x, sizeof(x));\n",
		    k);
		break;
	case V_FIXED64:
	case V_DOUBLE:
		buf_printf(c,
		    "\t\t\tuint64_t x;\n\n"
		    "\t\t\tif (!asynq_codec_get_fixed64(&d, end, &x))\n"
		    "\t\t\t\tgoto give_up;\n"
		    "\t\t\tmemcpy(p + f[%zu].offset, &x, sizeof(x));\n",
		    k);
		break;
	default:
		buf_printf(c,
		    "\t\t\tconst uint8_t *s;\n"
		    "\t\t\tsize_t n;\n\n"
		    "\t\t\tif (!asynq_codec_get_len(&d, end, &s, &n) ||\n"
		    "\t\t\t    !asynq_codec_store_%s(pa, p + f[%zu].offset, "
		    "&f[%zu], s, n))\n"
		    "\t\t\t\tgoto give_up;\n",
		    t->kind == V_STRING ? "string" : "bytes", k, k);
		break;
	}
	if (codec_field_optional(f, proto3) && t->kind != V_STRING)
		buf_printf(c, "\t\t\tasynq_codec_set_has(p, &f[%zu]);\n", k);
	buf_printf(c, "\t\t\tbreak;\n\t\t}\n");
}

/* codec_reader appends the locals through which the size and pack
 * functions of a message with n fields read message m. */
static void
codec_reader(struct buf *c, const char *cn, size_t n)
{
	if (n != 0)
		buf_printf(c,
		    "\tconst ProtobufCFieldDescriptor *f = "
		    "%s__descriptor.fields;\n"
		    "\tconst char *p = (const char *)m;\n",
		    cn);
	else
		buf_printf(c, "\t(void)m;\n");
}

/* emit_codec appends the codec of message m (protoc-c's lower-case
 * prefix cn, C type ct): asynq_rpc_codec <cn>__asynq_codec and what it
 * points at. */
static void
emit_codec(struct buf *c, const char *cn, const char *ct,
    const message_proto *m, bool proto3)
{
	const field_proto **v = codec_sorted(c->g, m);
	size_t n = v != NULL ? m->n_field : 0;

	buf_printf(c, "/* The codec of %s (asynq/rpc_codec.h). */\n", m->name);
	if (n != 0) {
		buf_printf(c,
		    "static const asynq_rpc_codec_field "
		    "%s__asynq_fields[%zu] = {\n",
		    cn, n);
		for (size_t k = 0; k < n; k++)
			buf_printf(c, "\t{ %lu, %s, %s },\n",
			    (unsigned long)(uint32_t)v[k]->number,
			    codec_type(v[k])->pbc,
			    codec_field_optional(v[k], proto3)
			        ? "PROTOBUF_C_LABEL_OPTIONAL"
			        : "PROTOBUF_C_LABEL_NONE");
		buf_printf(c, "};\n\n");
	}
	/* size */
	buf_printf(c,
	    "static size_t\n%s__asynq_size(const ProtobufCMessage *m)\n{\n",
	    cn);
	codec_reader(c, cn, n);
	buf_printf(c, "\tsize_t n = 0;\n\n");
	for (size_t k = 0; k < n; k++)
		codec_out(c, v[k], k, proto3, false);
	buf_printf(c, "\treturn n;\n}\n\n");
	/* pack */
	buf_printf(c,
	    "static size_t\n"
	    "%s__asynq_pack(const ProtobufCMessage *m, uint8_t *out)\n{\n",
	    cn);
	codec_reader(c, cn, n);
	buf_printf(c, "\tuint8_t *o = out;\n\n");
	for (size_t k = 0; k < n; k++)
		codec_out(c, v[k], k, proto3, true);
	buf_printf(c, "\treturn (size_t)(o - out);\n}\n\n");
	/* unpack */
	buf_printf(c,
	    "static ProtobufCMessage *\n"
	    "%s__asynq_unpack(ProtobufCAllocator *pa, const uint8_t *data, "
	    "size_t len)\n"
	    "{\n",
	    cn);
	if (n != 0)
		buf_printf(c,
		    "\tconst ProtobufCFieldDescriptor *f = "
		    "%s__descriptor.fields;\n",
		    cn);
	buf_printf(c,
	    "\t%s *msg = pa->alloc(pa->allocator_data, sizeof(*msg));\n"
	    "\tconst uint8_t *d = data;\n"
	    "\t/* No bytes may come as NULL, where even + 0 is undefined. */\n"
	    "\tconst uint8_t *end = len != 0 ? data + len : data;\n\n"
	    "\tif (msg == NULL)\n"
	    "\t\treturn NULL;\n"
	    "\t%s__init(msg);\n",
	    ct, cn);
	if (n != 0)
		buf_printf(c, "\tchar *p = (char *)msg;\n");
	buf_printf(c,
	    "\twhile (d < end) {\n"
	    "\t\tuint64_t key;\n\n"
	    "\t\tif (!asynq_codec_get_key(&d, end, &key))\n"
	    "\t\t\tgoto give_up;\n"
	    "\t\tswitch (key) {\n");
	for (size_t k = 0; k < n; k++)
		codec_in(c, v[k], k, proto3);
	buf_printf(c,
	    "\t\tdefault:\n"
	    "\t\t\tgoto give_up;\n"
	    "\t\t}\n"
	    "\t}\n"
	    "\treturn (ProtobufCMessage *)msg;\n"
	    "give_up:\n"
	    "\tprotobuf_c_message_free_unpacked((ProtobufCMessage *)msg, "
	    "pa);\n"
	    "\treturn NULL;\n"
	    "}\n\n");
	buf_printf(c,
	    "static const asynq_rpc_codec %s__asynq_codec = {\n"
	    "\t.desc = &%s__descriptor,\n"
	    "\t.size = %s__asynq_size,\n"
	    "\t.pack = %s__asynq_pack,\n"
	    "\t.unpack = %s__asynq_unpack,\n",
	    cn, cn, cn, cn, cn);
	if (n != 0)
		buf_printf(c, "\t.fields = %s__asynq_fields,\n", cn);
	buf_printf(c, "\t.n_fields = %zu,\n};\n", n);
}

/* emit_codecs appends the codec of every request and response type of
 * the file's services that takes one, once each. */
static void
emit_codecs(asynqi_codegen *g, const struct file *fl, struct buf *c)
{
	const char **done;
	size_t n_done = 0, most = 0;

	for (size_t si = 0; si < fl->n_services; si++)
		most += 2 * fl->services[si].n_methods;
	if (most == 0 || (done = gen_zalloc(g, most, sizeof(*done))) == NULL)
		return;
	for (size_t si = 0; si < fl->n_services; si++) {
		const struct service *s = &fl->services[si];

		for (size_t i = 0; i < 2 * s->n_methods; i++) {
			const struct method *m = &s->methods[i / 2];
			bool in = i % 2 == 0;
			const char *cn = in ? m->input_c : m->output_c;
			bool seen = false;

			if (!(in ? m->input_codec : m->output_codec))
				continue;
			for (size_t j = 0; j < n_done && !seen; j++)
				seen = strcmp(done[j], cn) == 0;
			if (seen)
				continue;
			done[n_done++] = cn;
			buf_printf(c, "\n");
			emit_codec(c, cn, in ? m->input_t : m->output_t,
			    in ? m->input_m : m->output_m,
			    in ? m->input_proto3 : m->output_proto3);
		}
	}
}

/* ---- What is generated per service ---------------------------------- */

/* The descriptor table: asynq_rpc_service_desc <service>__asynq_desc. */
static void
desc_decl(const struct service *s, struct buf *h)
{
	buf_printf(h,
	    "/* Service %s: its descriptor table (asynq/rpc_desc.h). */\n"
	    "extern const asynq_rpc_service_desc %s__asynq_desc;\n",
	    s->full_name, s->lower);
	if (s->n_methods == 0)
		return;
	buf_printf(h, "\n/* Indexes of %s__asynq_desc.methods. */\nenum {\n",
	    s->lower);
	for (size_t i = 0; i < s->n_methods; i++)
		buf_printf(h, "\t%s__ASYNQ_METHOD_%s = %zu,\n", s->upper,
		    s->methods[i].upper, i);
	buf_printf(h, "};\n");
	/* Short handles, for the untyped API and the request cache. */
	buf_printf(h,
	    "\n/* Each method's descriptor, for asynq_rpc_call and "
	    "asynq_rpc_cache_prime. */\n");
	for (size_t i = 0; i < s->n_methods; i++)
		buf_printf(h,
		    "#define %s__%s__method (&%s__asynq_desc.methods[%zu])\n",
		    s->lower, s->methods[i].lower, s->lower, i);
}

/* c_literal appends v as a C string literal: printable ASCII as is,
 * quotes, backslashes, question marks (trigraphs) and other bytes as
 * octal escapes. */
static void
c_literal(struct buf *c, const char *v)
{
	buf_printf(c, "\"");
	for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
		if (*p >= 0x20 && *p < 0x7f && *p != '"' && *p != '\\' &&
		    *p != '?')
			buf_printf(c, "%c", *p);
		else
			buf_printf(c, "\\%03o", *p);
	}
	buf_printf(c, "\"");
}

/* allow_list defines the array of one method's (asynq.allow_...) values. */
static void
allow_list(const struct service *s, size_t i, const char *what, char *const *v,
    size_t n, struct buf *c)
{
	if (n == 0)
		return;
	buf_printf(c, "static const char *const %s__asynq_%s_%zu[%zu] = {\n",
	    s->lower, what, i, n);
	for (size_t j = 0; j < n; j++) {
		buf_printf(c, "\t");
		c_literal(c, v[j]);
		buf_printf(c, ",\n");
	}
	buf_printf(c, "};\n\n");
}

static void
desc_defn(const struct service *s, struct buf *c)
{
	for (size_t i = 0; i < s->n_methods; i++) {
		allow_list(s, i, "allow_peers", s->methods[i].allow_peers,
		    s->methods[i].n_allow_peers, c);
		allow_list(s, i, "allow_scopes", s->methods[i].allow_scopes,
		    s->methods[i].n_allow_scopes, c);
	}
	if (s->n_methods > 0) {
		buf_printf(c,
		    "static const asynq_rpc_method_desc "
		    "%s__asynq_methods[%zu] = {\n",
		    s->lower, s->n_methods);
		for (size_t i = 0; i < s->n_methods; i++) {
			const struct method *m = &s->methods[i];

			buf_printf(c,
			    "\t{\n"
			    "\t\t.name = \"%s\",\n"
			    "\t\t.full_name = \"%s\",\n"
			    "\t\t.input = &%s__descriptor,\n"
			    "\t\t.output = &%s__descriptor,\n"
			    "\t\t.idempotent = %s,\n"
			    "\t\t.whole_batch = %s,\n"
			    "\t\t.request_cache = %s,\n"
			    "\t\t.cache_errors = %s,\n",
			    m->proto->name, m->full_name, m->input_c,
			    m->output_c, m->idempotent ? "true" : "false",
			    m->whole_batch ? "true" : "false",
			    m->request_cache ? "true" : "false",
			    m->cache_errors ? "true" : "false");
			if (m->n_allow_peers != 0)
				buf_printf(c,
				    "\t\t.allow_peers = "
				    "%s__asynq_allow_peers_%zu,\n"
				    "\t\t.n_allow_peers = %zu,\n",
				    s->lower, i, m->n_allow_peers);
			if (m->n_allow_scopes != 0)
				buf_printf(c,
				    "\t\t.allow_scopes = "
				    "%s__asynq_allow_scopes_%zu,\n"
				    "\t\t.n_allow_scopes = %zu,\n",
				    s->lower, i, m->n_allow_scopes);
			if (m->input_codec)
				buf_printf(c,
				    "\t\t.input_codec = &%s__asynq_codec,\n",
				    m->input_c);
			if (m->output_codec)
				buf_printf(c,
				    "\t\t.output_codec = &%s__asynq_codec,\n",
				    m->output_c);
			buf_printf(c, "\t},\n");
		}
		buf_printf(c, "};\n\n");
	}
	buf_printf(c,
	    "const asynq_rpc_service_desc %s__asynq_desc = {\n"
	    "\t.name = \"%s\",\n"
	    "\t.full_name = \"%s\",\n",
	    s->lower, s->proto->name, s->full_name);
	if (s->n_methods > 0)
		buf_printf(c, "\t.methods = %s__asynq_methods,\n", s->lower);
	else
		buf_printf(c, "\t.methods = NULL,\n");
	buf_printf(c,
	    "\t.n_methods = %zu,\n"
	    "\t.batch_max_calls = %luu,\n"
	    "\t.flush_delay_us = %luu,\n"
	    "\t.default_deadline_ms = %luu,\n"
	    "\t.file = &asynqi_fd%zu,\n"
	    "};\n",
	    s->n_methods, (unsigned long)s->batch_max_calls,
	    (unsigned long)s->flush_delay_us,
	    (unsigned long)s->default_deadline_ms, s->file_index);
}

/* The client stubs: <service>__<method>__call and __reply. protoc-c
 * already names its own (ProtobufCService) stub <service>__<method>, so
 * ours take a suffix. */
static void
client_decl(const struct service *s, struct buf *h)
{
	if (s->n_methods == 0)
		return;
	buf_printf(h,
	    "/* Client stubs of %s, for a channel opened with\n"
	    " * %s__asynq_desc (asynq/rpc.h). */\n",
	    s->full_name, s->lower);
	for (size_t i = 0; i < s->n_methods; i++) {
		const struct method *m = &s->methods[i];

		buf_printf(h,
		    "\n/* %s__%s__call calls %s with req (borrowed;\n"
		    " * NULL fails the future with INVALID_ARGUMENT): the "
		    "future's value is a\n"
		    " * %s owned by the future (read it with\n"
		    " * %s__%s__reply). Scheduler thread only. It is a\n"
		    " * function pointer, initially %s__%s__call_rpc, so a "
		    "test can\n"
		    " * replace it (asynq/testing.h: asynq_mock_install). */\n"
		    "extern asynq_future *(*%s__%s__call)(asynq_rpc_channel "
		    "*ch,\n"
		    "    const %s *req);\n"
		    "asynq_future *%s__%s__call_rpc(asynq_rpc_channel *ch,\n"
		    "    const %s *req);\n",
		    s->lower, m->lower, m->full_name, m->output_t, s->lower,
		    m->lower, s->lower, m->lower, s->lower, m->lower,
		    m->input_t, s->lower, m->lower, m->input_t);
		buf_printf(h,
		    "\n/* %s__%s__reply returns the reply of a future of\n"
		    " * %s__%s__call, borrowed from f, or NULL unless f is "
		    "computed OK. */\n"
		    "const %s *%s__%s__reply(const asynq_future *f);\n",
		    s->lower, m->lower, s->lower, m->lower, m->output_t,
		    s->lower, m->lower);
	}
}

static void
client_defn(const struct service *s, struct buf *c)
{
	for (size_t i = 0; i < s->n_methods; i++) {
		const struct method *m = &s->methods[i];

		if (i > 0)
			buf_printf(c, "\n");
		/* Casts, not &req->base: (pb_c_msg).base_field_name may
		 * rename the first member, which is a ProtobufCMessage. */
		buf_printf(c,
		    "asynq_future *\n"
		    "%s__%s__call_rpc(asynq_rpc_channel *ch, const %s *req)\n"
		    "{\n"
		    "\treturn asynq_rpc_call(ch,\n"
		    "\t    &%s__asynq_methods[%s__ASYNQ_METHOD_%s],\n"
		    "\t    (const ProtobufCMessage *)req);\n"
		    "}\n\n"
		    "asynq_future *(*%s__%s__call)(asynq_rpc_channel *ch,\n"
		    "    const %s *req) = %s__%s__call_rpc;\n\n",
		    s->lower, m->lower, m->input_t, s->lower, s->upper,
		    m->upper, s->lower, m->lower, m->input_t, s->lower,
		    m->lower);
		buf_printf(c,
		    "const %s *\n"
		    "%s__%s__reply(const asynq_future *f)\n"
		    "{\n"
		    "\tconst ProtobufCMessage *msg;\n\n"
		    "\tif (asynq_future_status(f) != ASYNQ_OK)\n"
		    "\t\treturn NULL;\n"
		    "\tmsg = asynq_future_ptr(f);\n"
		    "\tif (msg == NULL || msg->descriptor != &%s__descriptor)\n"
		    "\t\treturn NULL;\n"
		    "\treturn (const %s *)msg;\n"
		    "}\n",
		    m->output_t, s->lower, m->lower, m->output_c, m->output_t);
	}
}

/* The server's typed handler table, <service>__asynq_handlers, and
 * <service>__asynq_serve, which registers it through generated trampolines
 * with asynq_rpc_handler's generic signatures. They reach the typed table
 * and the caller's ctx through a binding the caller provides: the server
 * keeps the ctx it is given until it is freed but has no hook to free it,
 * so a binding allocated here would leak. */
static void
server_decl(const struct service *s, struct buf *h)
{
	if (s->n_methods == 0) {
		buf_printf(h,
		    "/* %s has no methods: no client stubs or handler "
		    "table. */\n",
		    s->full_name);
		return;
	}
	buf_printf(h,
	    "/* Server side of %s: one typed handler per method in\n"
	    " * %s__asynq_handlers, registered with %s__asynq_serve. */\n",
	    s->full_name, s->lower, s->lower);
	for (size_t i = 0; i < s->n_methods; i++) {
		const struct method *m = &s->methods[i];

		if (!m->whole_batch)
			continue;
		buf_printf(h,
		    "\n/* One call of %s given to its whole-batch handler:\n"
		    " * asynq_rpc_batch_call with the method's types (the "
		    "same layout). */\n"
		    "typedef struct %s__%s__batch_call {\n"
		    "\tconst %s *req; /* decoded request, borrowed */\n"
		    "\t%s *reply; /* set by the handler, as below */\n"
		    "\tasynq_status status; /* set by the handler */\n"
		    "\tconst char *message; /* static or NULL */\n"
		    "\tchar *formatted; /* asynq_rpc_batch_fail's; the "
		    "server frees it */\n"
		    "} %s__%s__batch_call;\n",
		    m->full_name, s->lower, m->lower, m->input_t, m->output_t,
		    s->lower, m->lower);
	}
	for (size_t i = 0; i < s->n_methods; i++) {
		const struct method *m = &s->methods[i];

		buf_printf(h,
		    "\n/* %s__%s__reply_new returns a new reply of %s in\n"
		    " * the memory of the request the handler serves, which "
		    "the server\n"
		    " * never frees, or NULL (asynq/rpc.h: "
		    "asynq_rpc_reply_new). */\n"
		    "static inline %s *\n"
		    "%s__%s__reply_new(void)\n"
		    "{\n"
		    "\treturn (%s *)asynq_rpc_reply_new(&%s__descriptor);\n"
		    "}\n",
		    s->lower, m->lower, m->full_name, m->output_t, s->lower,
		    m->lower, m->output_t, m->output_c);
	}
	buf_printf(h,
	    "\n/* The handlers of %s, one per method, none NULL. A\n"
	    " * reply is one from <method>__reply_new, which the server never "
	    "frees, or\n"
	    " * a message the handler allocated with malloc-compatible "
	    "memory, which\n"
	    " * the server frees with protobuf_c_message_free_unpacked "
	    "(asynq/rpc.h:\n"
	    " * asynq_rpc_unary_fn, asynq_rpc_batch_fn). */\n"
	    "typedef struct %s__asynq_handlers {\n",
	    s->full_name, s->lower);
	for (size_t i = 0; i < s->n_methods; i++) {
		const struct method *m = &s->methods[i];
		const char *note = strcmp(m->member, m->lower) != 0
		    ? " (the field's name has a trailing _: the method's "
		      "C name is reserved)"
		    : "";

		if (m->whole_batch)
			buf_printf(h,
			    "\t/* %s: whole batch; sets each call's reply or "
			    "status%s. */\n"
			    "\tasynq_status (*%s)(asynq_task *t,\n"
			    "\t    %s__%s__batch_call *calls, size_t n, "
			    "void *ctx);\n",
			    m->proto->name, note, m->member, s->lower,
			    m->lower);
		else
			buf_printf(h,
			    "\t/* %s: unary; sets *reply%s. */\n"
			    "\tasynq_status (*%s)(asynq_task *t, const %s "
			    "*req,\n"
			    "\t    %s **reply, void *ctx);\n",
			    m->proto->name, note, m->member, m->input_t,
			    m->output_t);
	}
	buf_printf(h, "} %s__asynq_handlers;\n", s->lower);
	buf_printf(h,
	    "\n/* What the server's generic handlers of %s carry as\n"
	    " * their ctx: a copy of the typed table, the caller's ctx and "
	    "the generic\n"
	    " * table registered. %s__asynq_serve fills it; the caller "
	    "owns it\n"
	    " * and keeps it alive and unchanged until the server is freed "
	    "(e.g. next\n"
	    " * to the server in the caller's own struct). */\n"
	    "typedef struct %s__asynq_binding {\n"
	    "\t%s__asynq_handlers handlers;\n"
	    "\tvoid *ctx;\n"
	    "\tasynq_rpc_handler rpc[%zu];\n"
	    "} %s__asynq_binding;\n",
	    s->full_name, s->lower, s->lower, s->lower, s->n_methods, s->lower);
	buf_printf(h,
	    "\n/* %s__asynq_serve registers the handlers of h on s, each\n"
	    " * called with ctx: it copies h (which need not outlive the call) "
	    "and ctx\n"
	    " * into *b, which must outlive the server, and adds the service "
	    "with\n"
	    " * asynq_rpc_server_add_service. INVALID_ARGUMENT for a NULL s, "
	    "h, b or\n"
	    " * handler (nothing is registered then), otherwise "
	    "add_service's status.\n"
	    " * Before the server listens. */\n"
	    "asynq_status %s__asynq_serve(asynq_rpc_server *s,\n"
	    "    const %s__asynq_handlers *h, void *ctx,\n"
	    "    %s__asynq_binding *b);\n",
	    s->lower, s->lower, s->lower, s->lower);
}

static void
server_defn(const struct service *s, struct buf *c)
{
	if (s->n_methods == 0)
		return;
	for (size_t i = 0; i < s->n_methods; i++) {
		const struct method *m = &s->methods[i];
		const char *bc;

		if (m->whole_batch) {
			if ((bc = gen_printf(c->g, "%s__%s__batch_call",
			         s->lower, m->lower)) == NULL)
				return;
			/* The trampoline passes the server's array through
			 * as the typed one. */
			buf_printf(c,
			    "_Static_assert(sizeof(%s) == "
			    "sizeof(asynq_rpc_batch_call) &&\n"
			    "    _Alignof(%s) == _Alignof(asynq_rpc_batch_call) "
			    "&&\n"
			    "    offsetof(%s, req) == "
			    "offsetof(asynq_rpc_batch_call, req) &&\n"
			    "    offsetof(%s, reply) == "
			    "offsetof(asynq_rpc_batch_call, reply) &&\n"
			    "    offsetof(%s, status) == "
			    "offsetof(asynq_rpc_batch_call, status) &&\n"
			    "    offsetof(%s, message) == "
			    "offsetof(asynq_rpc_batch_call, message) &&\n"
			    "    offsetof(%s, formatted) == "
			    "offsetof(asynq_rpc_batch_call, formatted),\n"
			    "    \"%s has the layout of asynq_rpc_batch_call\");"
			    "\n\n",
			    bc, bc, bc, bc, bc, bc, bc, bc);
			buf_printf(c,
			    "static asynq_status\n"
			    "%s__%s__asynq_batch(asynq_task *t, "
			    "asynq_rpc_batch_call *calls,\n"
			    "    size_t n, void *ctx)\n"
			    "{\n"
			    "\tconst %s__asynq_binding *b = ctx;\n\n"
			    "\treturn (b->handlers.%s)(t, (%s *)calls, n, "
			    "b->ctx);\n"
			    "}\n\n",
			    s->lower, m->lower, s->lower, m->member, bc);
		} else {
			buf_printf(c,
			    "static asynq_status\n"
			    "%s__%s__asynq_unary(asynq_task *t, "
			    "const ProtobufCMessage *req,\n"
			    "    ProtobufCMessage **reply, void *ctx)\n"
			    "{\n"
			    "\tconst %s__asynq_binding *b = ctx;\n"
			    "\t%s *out = NULL;\n"
			    "\tasynq_status st;\n\n"
			    "\tst = (b->handlers.%s)(t, (const %s *)req, &out, "
			    "b->ctx);\n"
			    "\t*reply = (ProtobufCMessage *)out;\n"
			    "\treturn st;\n"
			    "}\n\n",
			    s->lower, m->lower, s->lower, m->output_t,
			    m->member, m->input_t);
		}
	}
	buf_printf(c,
	    "asynq_status\n"
	    "%s__asynq_serve(asynq_rpc_server *s,\n"
	    "    const %s__asynq_handlers *h, void *ctx,\n"
	    "    %s__asynq_binding *b)\n"
	    "{\n"
	    "\tif (s == NULL || h == NULL || b == NULL)\n"
	    "\t\treturn ASYNQ_INVALID_ARGUMENT;\n",
	    s->lower, s->lower, s->lower);
	for (size_t i = 0; i < s->n_methods; i++)
		buf_printf(c,
		    "\tif (h->%s == NULL)\n"
		    "\t\treturn ASYNQ_INVALID_ARGUMENT;\n",
		    s->methods[i].member);
	buf_printf(c, "\tb->handlers = *h;\n\tb->ctx = ctx;\n");
	for (size_t i = 0; i < s->n_methods; i++) {
		const struct method *m = &s->methods[i];

		buf_printf(c,
		    "\tb->rpc[%s__ASYNQ_METHOD_%s] = (asynq_rpc_handler){\n"
		    "\t\t.%s = %s__%s__asynq_%s,\n"
		    "\t};\n",
		    s->upper, m->upper, m->whole_batch ? "batch" : "unary",
		    s->lower, m->lower, m->whole_batch ? "batch" : "unary");
	}
	buf_printf(c,
	    "\treturn asynq_rpc_server_add_service(s, &%s__asynq_desc, "
	    "b->rpc, b);\n"
	    "}\n",
	    s->lower);
}

/* file_index returns the position in the request of the file named name,
 * or -1 (with the run's error set) when protoc did not send it. */
static long
file_index(asynqi_codegen *g, const char *importer, const char *name)
{
	for (size_t i = 0; i < g->req->n_proto_file; i++)
		if (g->req->proto_file[i]->name != NULL &&
		    strcmp(g->req->proto_file[i]->name, name) == 0)
			return (long)i;
	return fail(g, "%s: imports %s, but protoc did not send its descriptor",
	    importer, name);
}

/* emit_file_tables writes the embedded files of fl (see the Design notes):
 * forward declarations first, so that a table may point at any other,
 * then per file its bytes, its imports and its asynq_rpc_file_desc
 * asynqi_fd<index in the request>. */
static int
emit_file_tables(asynqi_codegen *g, const struct file *fl, struct buf *c)
{
	const request *req = g->req;
	size_t n = req->n_proto_file, top = 0;
	bool *need = gen_zalloc(g, n, sizeof(*need));
	size_t *stack = gen_zalloc(g, n, sizeof(*stack));

	if (need == NULL || stack == NULL)
		return -1;
	need[fl->index] = true;
	stack[top++] = fl->index;
	while (top > 0) {
		const file_proto *f = req->proto_file[stack[--top]];

		for (size_t d = 0; d < f->n_dependency; d++) {
			long j = file_index(g, f->name, f->dependency[d]);

			if (j < 0)
				return -1;
			if (!need[j]) {
				need[j] = true;
				stack[top++] = (size_t)j;
			}
		}
	}
	buf_printf(c,
	    "/* The .proto files of this one's services as protoc saw them: "
	    "it and every\n"
	    " * file it imports (asynq/rpc_desc.h: asynq_rpc_file_desc). */\n");
	for (size_t i = 0; i < n; i++)
		if (need[i])
			buf_printf(c,
			    "static const asynq_rpc_file_desc asynqi_fd%zu;\n",
			    i);
	for (size_t i = 0; i < n; i++) {
		const file_proto *f = req->proto_file[i];
		file_proto copy;
		uint8_t *bytes;
		size_t len;

		if (!need[i])
			continue;
		if (!name_is_plain(f->name))
			return fail(g,
			    "%s: the file name cannot be used in a C string",
			    f->name);
		copy = *f;
		copy.source_code_info = NULL;
		len = google__protobuf__file_descriptor_proto__get_packed_size(
		    &copy);
		if ((bytes = gen_zalloc(g, len, 1)) == NULL)
			return -1;
		google__protobuf__file_descriptor_proto__pack(&copy, bytes);
		buf_printf(c,
		    "\n/* %s */\nstatic const uint8_t asynqi_fd%zu_bytes[%zu] = {",
		    f->name, i, len);
		for (size_t k = 0; k < len; k++)
			buf_printf(c, "%s0x%02x,", k % 12 == 0 ? "\n\t" : " ",
			    bytes[k]);
		buf_printf(c, "\n};\n");
		if (f->n_dependency > 0) {
			buf_printf(c,
			    "static const asynq_rpc_file_desc *const "
			    "asynqi_fd%zu_deps[%zu] = {\n",
			    i, f->n_dependency);
			for (size_t d = 0; d < f->n_dependency; d++)
				buf_printf(c, "\t&asynqi_fd%ld,\n",
				    file_index(g, f->name, f->dependency[d]));
			buf_printf(c, "};\n");
		}
		buf_printf(c,
		    "static const asynq_rpc_file_desc asynqi_fd%zu = {\n"
		    "\t.name = \"%s\",\n"
		    "\t.descriptor = asynqi_fd%zu_bytes,\n"
		    "\t.descriptor_len = %zu,\n",
		    i, f->name, i, len);
		if (f->n_dependency > 0)
			buf_printf(c, "\t.deps = asynqi_fd%zu_deps,\n", i);
		else
			buf_printf(c, "\t.deps = NULL,\n");
		buf_printf(c, "\t.n_deps = %zu,\n};\n", f->n_dependency);
	}
	return 0;
}

/*
 * The parts generated for each service, in order: each includes the public
 * header its code needs, declares in <file>.asynq.h and defines in
 * <file>.asynq.c (a part may emit nothing for a service). This is the
 * extension point. The descriptor table comes first: the stubs and the
 * server's registration point into it.
 */
static const struct part {
	const char *include;
	void (*decl)(const struct service *s, struct buf *h);
	void (*defn)(const struct service *s, struct buf *c);
} parts[] = {
	{ "asynq/rpc_desc.h", desc_decl, desc_defn },
	{ "asynq/rpc.h", client_decl, client_defn },
	{ "asynq/rpc.h", server_decl, server_defn },
};

#define N_PARTS (sizeof(parts) / sizeof(parts[0]))

static response_file *
new_file(asynqi_codegen *g, const char *base, const char *ext, char *content)
{
	response_file *rf;

	if (content == NULL || (rf = gen_zalloc(g, 1, sizeof(*rf))) == NULL)
		return NULL;
	google__protobuf__compiler__code_generator_response__file__init(rf);
	rf->content = content;
	if ((rf->name = gen_printf(g, "%s%s", base, ext)) == NULL)
		return NULL;
	return rf;
}

/* emit_part appends what fn emits for s after a blank line, or nothing
 * when fn emits nothing. */
static void
emit_part(struct buf *b, void (*fn)(const struct service *, struct buf *),
    const struct service *s)
{
	size_t len;

	buf_printf(b, "\n");
	len = b->len;
	fn(s, b);
	if (b->len == len && b->p != NULL && !b->g->oom)
		b->p[--b->len] = '\0';
}

static int
emit_file(asynqi_codegen *g, const struct file *fl, response_file **out)
{
	const char *name = fl->proto->name;
	struct buf h, c;

	buf_init(&h, g);
	buf_printf(&h,
	    "/* Generated by protoc-gen-asynq from %s. Do not edit. */\n"
	    "#ifndef %s\n#define %s\n\n",
	    name, fl->guard, fl->guard);
	for (size_t i = 0; i < N_PARTS; i++)
		if (i == 0 ||
		    strcmp(parts[i].include, parts[i - 1].include) != 0)
			buf_printf(&h, "#include \"%s\"\n", parts[i].include);
	buf_printf(&h,
	    "#include \"%s.pb-c.h\"\n\n"
	    "#ifdef __cplusplus\nextern \"C\" {\n#endif\n",
	    fl->base);
	if (fl->n_services == 0)
		buf_printf(&h, "\n/* %s declares no services. */\n", name);
	for (size_t si = 0; si < fl->n_services; si++)
		for (size_t i = 0; i < N_PARTS; i++)
			emit_part(&h, parts[i].decl, &fl->services[si]);
	buf_printf(&h, "\n#ifdef __cplusplus\n}\n#endif\n\n#endif /* %s */\n",
	    fl->guard);

	buf_init(&c, g);
	buf_printf(&c,
	    "/* Generated by protoc-gen-asynq from %s. Do not edit. */\n"
	    "#include \"%s.asynq.h\"\n",
	    name, fl->base);
	if (fl->n_services > 0)
		buf_printf(&c, "#include \"asynq/rpc_codec.h\"\n");
	if (fl->n_services > 0) {
		buf_printf(&c, "\n");
		if (emit_file_tables(g, fl, &c) != 0) {
			free(h.p);
			free(c.p);
			return -1;
		}
		emit_codecs(g, fl, &c);
	}
	for (size_t si = 0; si < fl->n_services; si++)
		for (size_t i = 0; i < N_PARTS; i++)
			emit_part(&c, parts[i].defn, &fl->services[si]);

	if ((out[0] = new_file(g, fl->base, ".asynq.h", buf_take(&h))) ==
	    NULL) {
		free(c.p);
		return -1;
	}
	if ((out[1] = new_file(g, fl->base, ".asynq.c", buf_take(&c))) == NULL)
		return -1;
	return 0;
}

/* ---- Entry points ------------------------------------------------- */

static int
run(asynqi_codegen *g)
{
	const request *req = g->req;
	struct file *files;
	response_file **out;
	size_t n = req->n_file_to_generate;

	if (req->parameter != NULL && req->parameter[0] != '\0')
		return fail(g,
		    "unknown parameter \"%s\": protoc-gen-asynq "
		    "takes none (write --asynq_out=DIR)",
		    req->parameter);
	if ((files = gen_zalloc(g, n, sizeof(*files))) == NULL ||
	    (out = gen_zalloc(g, 2 * n, sizeof(*out))) == NULL)
		return -1;
	for (size_t i = 0; i < n; i++)
		if (read_file(g, req->file_to_generate[i], &files[i]) != 0)
			return -1;
	for (size_t i = 0; i < n; i++)
		if (emit_file(g, &files[i], &out[2 * i]) != 0)
			return -1;
	g->resp.n_file = 2 * n;
	g->resp.file = out;
	return 0;
}

int
asynqi_codegen_run(const request *req, response **respp, asynqi_codegen **genp)
{
	asynqi_codegen *g;

	*respp = NULL;
	*genp = NULL;
	if ((g = calloc(1, sizeof(*g))) == NULL)
		return -1;
	g->req = req;
	google__protobuf__compiler__code_generator_response__init(&g->resp);
	/* Fields of proto3 `optional` do not matter to this plugin. */
	g->resp.has_supported_features = 1;
	g->resp.supported_features =
	    GOOGLE__PROTOBUF__COMPILER__CODE_GENERATOR_RESPONSE__FEATURE__FEATURE_PROTO3_OPTIONAL;

	if (run(g) != 0 && g->oom) {
		asynqi_codegen_free(g);
		return -1;
	}
	if (g->error != NULL) {
		g->resp.error = g->error;
		g->resp.n_file = 0;
		g->resp.file = NULL;
	}
	*respp = &g->resp;
	*genp = g;
	return 0;
}

void
asynqi_codegen_free(asynqi_codegen *g)
{
	if (g == NULL)
		return;
	for (size_t i = 0; i < g->n_owned; i++)
		free(g->owned[i]);
	free(g->owned);
	free(g);
}
