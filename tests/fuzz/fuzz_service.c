/* SPDX-License-Identifier: MIT */
/*
 * The handlers of asynq.fuzz.Fuzz and the message walker the fuzzers share
 * (fuzz_service.h).
 *
 * Design notes:
 * - The handlers run as tasks on 64 KiB coroutine stacks, so nothing here
 *   recurses over a message: fuzz_walk keeps its own stack on the heap, and
 *   Echo copies a chain of nodes in a loop. What the server then does with
 *   a reply (packing and freeing it) is the server's business.
 * - Handlers behave like careful user code: they never abort, they clamp
 *   what they take from the request (a status out of a number, a sleep
 *   length), and they report allocation failures as RESOURCE_EXHAUSTED.
 */
#include "tests/fuzz/fuzz_service.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Walker ------------------------------------------------------------ */

typedef struct walk_item {
	const ProtobufCMessage *m;
	uint64_t depth;
} walk_item;

typedef struct walk_stack {
	walk_item *items;
	size_t n, cap;
} walk_stack;

static void
walk_broken(const ProtobufCMessage *m, const char *why)
{
	fprintf(stderr, "fuzz_walk: broken message %p (%s): %s\n", (void *)m,
	    m->descriptor != NULL ? m->descriptor->name : "?", why);
	abort();
}

static int
walk_push(walk_stack *s, const ProtobufCMessage *m,
    const ProtobufCMessageDescriptor *want, uint64_t depth)
{
	if (m == NULL)
		return 0;
	if (m->descriptor != want ||
	    m->descriptor->magic != PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC)
		walk_broken(m, "descriptor differs from the field's");
	if (s->n == s->cap) {
		size_t cap = s->cap != 0 ? 2 * s->cap : 64;
		walk_item *p = realloc(s->items, cap * sizeof(*p));
		if (p == NULL)
			return -1;
		s->items = p;
		s->cap = cap;
	}
	s->items[s->n++] = (walk_item){ m, depth };
	return 0;
}

static uint64_t
sum_bytes(const void *p, size_t n)
{
	const unsigned char *b = p;
	uint64_t h = n;
	for (size_t i = 0; i < n; i++)
		h = h * 31 + b[i];
	return h;
}

static size_t
elem_size(ProtobufCType type)
{
	switch (type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_SINT32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_FLOAT:
	case PROTOBUF_C_TYPE_ENUM:
		return 4;
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_SINT64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
	case PROTOBUF_C_TYPE_DOUBLE:
		return 8;
	case PROTOBUF_C_TYPE_BOOL:
		return sizeof(protobuf_c_boolean);
	case PROTOBUF_C_TYPE_STRING:
		return sizeof(char *);
	case PROTOBUF_C_TYPE_BYTES:
		return sizeof(ProtobufCBinaryData);
	case PROTOBUF_C_TYPE_MESSAGE:
		return sizeof(ProtobufCMessage *);
	}
	return 0;
}

/* Reads one value of field f at p; pushes it if it is a message. */
static int
walk_value(walk_stack *s, const ProtobufCMessage *m,
    const ProtobufCFieldDescriptor *f, const void *p, uint64_t depth,
    uint64_t *sum)
{
	switch (f->type) {
	case PROTOBUF_C_TYPE_STRING: {
		const char *str = *(char *const *)p;
		if (str != NULL)
			*sum += sum_bytes(str, strlen(str));
		return 0;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		const ProtobufCBinaryData *b = p;
		if (b->len > 0 && b->data == NULL)
			walk_broken(m, "bytes without data");
		if (b->len > 0)
			*sum += sum_bytes(b->data, b->len);
		return 0;
	}
	case PROTOBUF_C_TYPE_MESSAGE:
		return walk_push(s, *(ProtobufCMessage *const *)p,
		    f->descriptor, depth + 1);
	default:
		*sum += sum_bytes(p, elem_size(f->type));
		return 0;
	}
}

int
fuzz_walk(const ProtobufCMessage *root, fuzz_walk_stats *out)
{
	walk_stack s = { 0 };
	fuzz_walk_stats st = { 0 };
	if (walk_push(&s, root, root->descriptor, 1) != 0)
		return -1;
	while (s.n > 0) {
		walk_item it = s.items[--s.n];
		const ProtobufCMessage *m = it.m;
		const ProtobufCMessageDescriptor *d = m->descriptor;
		const char *base = (const char *)m;
		st.messages++;
		if (it.depth > st.depth)
			st.depth = it.depth;
		for (unsigned i = 0; i < m->n_unknown_fields; i++)
			st.sum += sum_bytes(m->unknown_fields[i].data,
			    m->unknown_fields[i].len);
		for (unsigned i = 0; i < d->n_fields; i++) {
			const ProtobufCFieldDescriptor *f = &d->fields[i];
			const void *p = base + f->offset;
			if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
				uint32_t c = *(const uint32_t *)(base +
				    f->quantifier_offset);
				if (c != f->id)
					continue;
			}
			if (f->label != PROTOBUF_C_LABEL_REPEATED) {
				if (walk_value(&s, m, f, p, it.depth,
				        &st.sum) != 0)
					goto fail;
				continue;
			}
			size_t n =
			    *(const size_t *)(base + f->quantifier_offset);
			const char *arr = *(char *const *)p;
			if (n > 0 && arr == NULL)
				walk_broken(m, "repeated field without array");
			size_t es = elem_size(f->type);
			for (size_t j = 0; j < n; j++)
				if (walk_value(&s, m, f, arr + j * es, it.depth,
				        &st.sum) != 0)
					goto fail;
		}
	}
	free(s.items);
	*out = st;
	return 0;
fail:
	free(s.items);
	return -1;
}

/* ---- Handlers ---------------------------------------------------------- */

static Asynq__Fuzz__Num *
num_new(int64_t v)
{
	Asynq__Fuzz__Num *n = malloc(sizeof(*n));
	if (n != NULL) {
		asynq__fuzz__num__init(n);
		n->v = v;
	}
	return n;
}

static asynq_status
h_echo(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	Asynq__Fuzz__Tree *head = NULL, **tail = &head;
	for (const Asynq__Fuzz__Tree *n = (const Asynq__Fuzz__Tree *)req;
	     n != NULL; n = n->child) {
		Asynq__Fuzz__Tree *c = malloc(sizeof(*c));
		if (c == NULL) {
			if (head != NULL)
				protobuf_c_message_free_unpacked(&head->base,
				    NULL);
			return ASYNQ_RESOURCE_EXHAUSTED;
		}
		asynq__fuzz__tree__init(c);
		c->v = n->v;
		*tail = c;
		tail = &c->child;
	}
	*reply = &head->base;
	return ASYNQ_OK;
}

static asynq_status
count_reply(const ProtobufCMessage *req, ProtobufCMessage **reply)
{
	fuzz_walk_stats ws;
	if (fuzz_walk(req, &ws) != 0)
		return ASYNQ_RESOURCE_EXHAUSTED;
	Asynq__Fuzz__Num *out = num_new((int64_t)ws.messages);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	out->w = (int64_t)ws.depth;
	*reply = &out->base;
	return ASYNQ_OK;
}

static asynq_status
h_count(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	return count_reply(req, reply);
}

static int
copy_bytes(ProtobufCBinaryData *to, const ProtobufCBinaryData *from)
{
	to->len = 0;
	to->data = NULL;
	if (from->len == 0)
		return 0;
	if ((to->data = malloc(from->len)) == NULL)
		return -1;
	memcpy(to->data, from->data, from->len);
	to->len = from->len;
	return 0;
}

static asynq_status
h_mirror(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	const Asynq__Fuzz__Leaf *in = (const Asynq__Fuzz__Leaf *)req;
	Asynq__Fuzz__Leaf *o = calloc(1, sizeof(*o));
	if (o == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq__fuzz__leaf__init(o);
	o->i32 = in->i32;
	o->i64 = in->i64;
	o->u32 = in->u32;
	o->u64 = in->u64;
	o->s32 = in->s32;
	o->s64 = in->s64;
	o->f32 = in->f32;
	o->f64 = in->f64;
	o->sf32 = in->sf32;
	o->sf64 = in->sf64;
	o->fl = in->fl;
	o->db = in->db;
	o->b = in->b;
	o->kind = in->kind;
	if ((o->s = strdup(in->s)) == NULL || copy_bytes(&o->by, &in->by) != 0)
		goto fail;
	if (in->n_packed > 0) {
		o->packed = malloc(in->n_packed * sizeof(*o->packed));
		if (o->packed == NULL)
			goto fail;
		memcpy(o->packed, in->packed,
		    in->n_packed * sizeof(*o->packed));
		o->n_packed = in->n_packed;
	}
	if (in->n_strs > 0) {
		o->strs = calloc(in->n_strs, sizeof(*o->strs));
		if (o->strs == NULL)
			goto fail;
		for (size_t i = 0; i < in->n_strs; i++) {
			if ((o->strs[i] = strdup(in->strs[i])) == NULL)
				goto fail;
			o->n_strs++;
		}
	}
	*reply = &o->base;
	return ASYNQ_OK;
fail:
	protobuf_c_message_free_unpacked(&o->base, NULL);
	return ASYNQ_RESOURCE_EXHAUSTED;
}

static asynq_status
h_fail(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)reply;
	(void)ctx;
	const Asynq__Fuzz__Num *in = (const Asynq__Fuzz__Num *)req;
	return asynq_fail(t, (asynq_status)(1 + (uint64_t)in->v % 16),
	    "failed %lld", (long long)in->v);
}

static asynq_status
h_sleep(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)ctx;
	const Asynq__Fuzz__Num *in = (const Asynq__Fuzz__Num *)req;
	asynq_future *f = asynq_sleep((uint64_t)in->v % 4 * 1000000u);
	asynq_status st = asynq_await(t, f);
	asynq_future_rele(f);
	ASYNQ_TRY(st);
	Asynq__Fuzz__Num *out = num_new(asynq_rpc_deadline_get() != 0);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	size_t len = 0;
	const char *tag = asynq_rpc_metadata_get("tag", &len);
	if (tag != NULL && (out->s = strndup(tag, len)) == NULL) {
		protobuf_c_message_free_unpacked(&out->base, NULL);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	*reply = &out->base;
	return ASYNQ_OK;
}

static asynq_status
h_sum(asynq_task *t, asynq_rpc_batch_call *calls, size_t n, void *ctx)
{
	(void)ctx;
	for (size_t i = 0; i < n; i++) {
		const Asynq__Fuzz__Num *in =
		    (const Asynq__Fuzz__Num *)calls[i].req;
		if (in->v == 13)
			return asynq_fail(t, ASYNQ_ABORTED,
			    "sum aborted at call %zu", i);
		if (in->v < 0) {
			calls[i].status =
			    (asynq_status)(1 + (uint64_t)(-(in->v + 1)) % 16);
			calls[i].message = "negative";
			continue;
		}
		/* Wraps around like the client's arithmetic would. */
		Asynq__Fuzz__Num *out =
		    num_new((int64_t)((uint64_t)in->v + (uint64_t)n));
		if (out == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		calls[i].reply = &out->base;
	}
	return ASYNQ_OK;
}

static asynq_status
h_wrong(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	const Asynq__Fuzz__Num *in = (const Asynq__Fuzz__Num *)req;
	if (in->v % 2 != 0) {
		Asynq__Fuzz__Tree *tr = malloc(sizeof(*tr));
		if (tr == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		asynq__fuzz__tree__init(tr);
		*reply = &tr->base;
		return ASYNQ_OK;
	}
	Asynq__Fuzz__Num *out = num_new(in->v);
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	*reply = &out->base;
	return ASYNQ_OK;
}

static asynq_status
h_old(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	return count_reply(req, reply);
}

const char *
fuzz_method_id_name(uint32_t method_id)
{
	if (FUZZ_SVC->n_methods != FUZZ_N_METHODS) {
		fprintf(stderr,
		    "fuzz_service.h: FUZZ_N_METHODS is not the "
		    "number of methods of asynq.fuzz.Fuzz\n");
		abort();
	}
	if (method_id >= 1 && method_id <= FUZZ_N_METHODS)
		return FUZZ_SVC->methods[method_id - 1].full_name;
	if (method_id == FUZZ_N_METHODS + 1)
		return "asynq.fuzz.Absent/Gone";
	if (method_id == FUZZ_N_METHODS + 2)
		return FUZZ_METHOD(ECHO)->full_name;
	return NULL;
}

const asynq_rpc_handler fuzz_handlers[] = {
	[ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_ECHO] = { .unary = h_echo },
	[ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_COUNT] = { .unary = h_count },
	[ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_MIRROR] = { .unary = h_mirror },
	[ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_FAIL] = { .unary = h_fail },
	[ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_SLEEP] = { .unary = h_sleep },
	[ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_SUM] = { .batch = h_sum },
	[ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_WRONG] = { .unary = h_wrong },
	[ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_OLD] = { .unary = h_old },
};
