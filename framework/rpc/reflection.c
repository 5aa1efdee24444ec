/* SPDX-License-Identifier: MIT */
/*
 * The reflection service (reflection.h): ListServices from the tables of
 * the services a server serves, FileByName and FileContainingSymbol from
 * the .proto files protoc-gen-asynq embedded in them
 * (asynq_rpc_service_desc.file, asynq_rpc_file_desc in asynq/rpc_desc.h).
 *
 * Design notes: each call walks the server's current tables. The files a
 * server knows are the closure of its services' files over their imports,
 * taken by name: several generated files embed their own copy of a file
 * they all import, and the first copy found stands for all. A symbol is
 * looked for by unpacking each file's FileDescriptorProto with protobuf-c;
 * reflection serves a tool's start, not traffic, so nothing is cached. The
 * handlers only read constant tables and never suspend. Replies own copies
 * of the bytes and names, since the server frees them with
 * protobuf_c_message_free_unpacked.
 */
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "google/protobuf/descriptor.pb-c.h"
#include "proto/asynq/reflection.asynq.h"
#include "reflection.h"

typedef Asynq__Reflection__V1__ListServicesResponse list_reply;
typedef Asynq__Reflection__V1__ServiceResponse service_reply;
typedef Asynq__Reflection__V1__FileByNameRequest by_name_req;
typedef Asynq__Reflection__V1__FileContainingSymbolRequest by_symbol_req;
typedef Asynq__Reflection__V1__FileDescriptorResponse files_reply;
typedef Google__Protobuf__FileDescriptorProto file_proto;
typedef Google__Protobuf__DescriptorProto message_proto;

/* A set of files, each once by name, in the order they were added. */
typedef struct file_set {
	const asynq_rpc_file_desc **f;
	size_t n, cap;
	bool oom;
} file_set;

static const asynq_rpc_file_desc *
set_find(const file_set *fs, const char *name)
{
	for (size_t i = 0; i < fs->n; i++)
		if (strcmp(fs->f[i]->name, name) == 0)
			return fs->f[i];
	return NULL;
}

/* set_add_closure adds f and, after it, every file it imports that the set
 * lacks, depth first. */
static void
set_add_closure(file_set *fs, const asynq_rpc_file_desc *f)
{
	if (f == NULL || fs->oom || set_find(fs, f->name) != NULL)
		return;
	if (fs->n == fs->cap) {
		size_t cap = fs->cap ? 2 * fs->cap : 16;
		const asynq_rpc_file_desc **n =
		    realloc(fs->f, cap * sizeof(*n));
		if (n == NULL) {
			fs->oom = true;
			return;
		}
		fs->f = n;
		fs->cap = cap;
	}
	fs->f[fs->n++] = f;
	for (size_t i = 0; i < f->n_deps; i++)
		set_add_closure(fs, f->deps[i]);
}

/* server_files fills fs with every file s knows. */
static void
server_files(const asynq_rpc_server *s, file_set *fs)
{
	const asynq_rpc_service_desc *svc;

	for (size_t i = 0; (svc = asynq_rpc_server_service(s, i)) != NULL; i++)
		set_add_closure(fs, svc->file);
}

static asynq_status
oom(asynq_task *t)
{
	return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
	    "reflection: out of memory");
}

/* ---- ListServices ------------------------------------------------- */

static asynq_status
list_services(asynq_task *t, const ProtobufCMessage *req,
    ProtobufCMessage **reply, void *ctx)
{
	const asynq_rpc_server *s = ctx;
	const asynq_rpc_service_desc *svc;
	size_t n = 0;
	(void)req;

	while (asynq_rpc_server_service(s, n) != NULL)
		n++;
	list_reply *out = malloc(sizeof(*out));
	if (out == NULL)
		return oom(t);
	asynq__reflection__v1__list_services_response__init(out);
	*reply = &out->base; /* freed by the server, also on failure */
	if ((out->service = calloc(n ? n : 1, sizeof(*out->service))) == NULL)
		return oom(t);
	for (size_t i = 0; i < n && (svc = asynq_rpc_server_service(s, i));
	     i++) {
		service_reply *r = malloc(sizeof(*r));
		if (r == NULL)
			return oom(t);
		asynq__reflection__v1__service_response__init(r);
		out->service[out->n_service++] = r;
		r->name = strdup(svc->full_name);
		r->file = strdup(svc->file != NULL ? svc->file->name : "");
		if (r->name == NULL || r->file == NULL)
			return oom(t);
	}
	return ASYNQ_OK;
}

/* ---- Files -------------------------------------------------------- */

/* answer_files sets *reply to f and the files it imports, each once. */
static asynq_status
answer_files(asynq_task *t, const asynq_rpc_file_desc *f,
    ProtobufCMessage **reply)
{
	file_set fs = { 0 };
	set_add_closure(&fs, f);
	files_reply *out = fs.oom ? NULL : malloc(sizeof(*out));
	if (out == NULL) {
		free(fs.f);
		return oom(t);
	}
	asynq__reflection__v1__file_descriptor_response__init(out);
	*reply = &out->base;
	out->file_descriptor_proto =
	    calloc(fs.n, sizeof(*out->file_descriptor_proto));
	for (size_t i = 0; out->file_descriptor_proto != NULL && i < fs.n;
	     i++) {
		ProtobufCBinaryData *b =
		    &out->file_descriptor_proto[out->n_file_descriptor_proto];
		if ((b->data = malloc(fs.f[i]->descriptor_len)) == NULL)
			break;
		memcpy(b->data, fs.f[i]->descriptor, fs.f[i]->descriptor_len);
		b->len = fs.f[i]->descriptor_len;
		out->n_file_descriptor_proto++;
	}
	bool whole = out->n_file_descriptor_proto == fs.n;
	free(fs.f);
	return whole ? ASYNQ_OK : oom(t);
}

static asynq_status
file_by_name(asynq_task *t, const ProtobufCMessage *req,
    ProtobufCMessage **reply, void *ctx)
{
	const by_name_req *in = (const by_name_req *)req;
	const char *name = in->filename != NULL ? in->filename : "";
	file_set fs = { 0 };

	server_files(ctx, &fs);
	if (fs.oom) {
		free(fs.f);
		return oom(t);
	}
	const asynq_rpc_file_desc *f = set_find(&fs, name);
	free(fs.f);
	if (f == NULL)
		return asynq_fail(t, ASYNQ_NOT_FOUND,
		    "reflection: no file \"%s\" among the files of this "
		    "server's services",
		    name);
	return answer_files(t, f, reply);
}

/* piece_is says whether the n bytes at p are the string s. */
static bool
piece_is(const char *p, size_t n, const char *s)
{
	return s != NULL && strlen(s) == n && strncmp(p, s, n) == 0;
}

/* message_has says whether rel ("Inner" or "Inner.Deeper.E") names m
 * itself (when rel is m's name), or a message or enum nested in it. */
static bool
message_has(const message_proto *m, const char *rel)
{
	const char *dot = strchr(rel, '.');
	size_t n = dot ? (size_t)(dot - rel) : strlen(rel);

	if (!piece_is(rel, n, m->name))
		return false;
	if (dot == NULL)
		return true;
	for (size_t i = 0; i < m->n_enum_type; i++)
		if (strcmp(dot + 1, m->enum_type[i]->name) == 0)
			return true;
	for (size_t i = 0; i < m->n_nested_type; i++)
		if (message_has(m->nested_type[i], dot + 1))
			return true;
	return false;
}

/* file_has says whether f declares the service, method, message or enum
 * of that full name. */
static bool
file_has(const file_proto *f, const char *symbol)
{
	const char *pkg = f->package != NULL ? f->package : "";
	size_t plen = strlen(pkg);
	const char *rel = symbol;

	if (plen > 0) {
		if (strncmp(symbol, pkg, plen) != 0 || symbol[plen] != '.')
			return false;
		rel = symbol + plen + 1;
	}
	for (size_t i = 0; i < f->n_service; i++) {
		const Google__Protobuf__ServiceDescriptorProto *sp =
		    f->service[i];
		size_t n = strcspn(rel, "./");
		if (!piece_is(rel, n, sp->name))
			continue;
		if (rel[n] == '\0')
			return true;
		for (size_t j = 0; j < sp->n_method; j++)
			if (strcmp(rel + n + 1, sp->method[j]->name) == 0)
				return true;
	}
	for (size_t i = 0; i < f->n_enum_type; i++)
		if (strcmp(rel, f->enum_type[i]->name) == 0)
			return true;
	for (size_t i = 0; i < f->n_message_type; i++)
		if (message_has(f->message_type[i], rel))
			return true;
	return false;
}

static asynq_status
file_containing_symbol(asynq_task *t, const ProtobufCMessage *req,
    ProtobufCMessage **reply, void *ctx)
{
	const by_symbol_req *in = (const by_symbol_req *)req;
	const char *symbol = in->symbol != NULL ? in->symbol : "";
	const asynq_rpc_file_desc *found = NULL;
	file_set fs = { 0 };

	if (symbol[0] == '.')
		symbol++;
	if (symbol[0] == '\0')
		return asynq_fail(t, ASYNQ_INVALID_ARGUMENT,
		    "reflection: no symbol given: name a service, method, "
		    "message or enum with its package");
	server_files(ctx, &fs);
	if (fs.oom) {
		free(fs.f);
		return oom(t);
	}
	for (size_t i = 0; i < fs.n && found == NULL; i++) {
		file_proto *f = google__protobuf__file_descriptor_proto__unpack(
		    NULL, fs.f[i]->descriptor_len, fs.f[i]->descriptor);
		if (f == NULL)
			continue; /* cannot happen: protoc-gen-asynq packed it
			           */
		if (file_has(f, symbol))
			found = fs.f[i];
		google__protobuf__file_descriptor_proto__free_unpacked(f, NULL);
	}
	free(fs.f);
	if (found == NULL)
		return asynq_fail(t, ASYNQ_NOT_FOUND,
		    "reflection: no service, method, message or enum named "
		    "%s on this server",
		    symbol);
	return answer_files(t, found, reply);
}

static const asynq_rpc_handler reflection_handlers[] = {
	[ASYNQ__REFLECTION__V1__REFLECTION__ASYNQ_METHOD_LIST_SERVICES] = { .unary =
	                                                                        list_services },
	[ASYNQ__REFLECTION__V1__REFLECTION__ASYNQ_METHOD_FILE_BY_NAME] = { .unary =
	                                                                       file_by_name },
	[ASYNQ__REFLECTION__V1__REFLECTION__ASYNQ_METHOD_FILE_CONTAINING_SYMBOL] = { .unary =
	                                                                                 file_containing_symbol },
};

asynq_status
asynqi_reflection_add(asynq_rpc_server *s)
{
	return asynq_rpc_server_add_service(s,
	    &asynq__reflection__v1__reflection__asynq_desc, reflection_handlers,
	    s);
}
