/* SPDX-License-Identifier: MIT */
/*
 * The envelope codec: decoding untrusted protobuf bytes safely, packing
 * messages into byte buffers, and the mapping of nng errors and wire
 * numbers to asynq statuses. Also the deadline scoped value.
 *
 * Design notes:
 * - protobuf-c recurses once per nesting level (about 1 KiB of stack each)
 *   and has no depth limit, and it may allocate ~40x the input. So every
 *   decode first walks the wire bytes iteratively with the descriptor
 *   (asynqi_rpc_check_depth) and rejects nesting over ASYNQI_RPC_MAX_DEPTH,
 *   then decodes with an allocator that has a byte budget. Callers decode on
 *   nng's callback threads, never on a coroutine stack.
 * - The arena never frees single allocations: a request's decoded envelope
 *   and payloads live exactly as long as the request.
 */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "framework/core/platform.h"
#include "internal.h"

const asynq_scoped asynq_rpc_deadline =
    ASYNQ_SCOPED_INIT("asynq.rpc.deadline", 0);

const asynq_scoped asynq_rpc_wait_for_ready =
    ASYNQ_SCOPED_INIT("asynq.rpc.wait_for_ready", 0);

int64_t
asynq_rpc_deadline_get(void)
{
	return (int64_t)(intptr_t)asynq_scoped_get(&asynq_rpc_deadline);
}

/* The deadline timeout_ms from now, or the current one if earlier. */
static int64_t
deadline_within(uint32_t timeout_ms)
{
	int64_t dl = asynqi_realtime_ns() + (int64_t)timeout_ms * 1000000;
	int64_t cur = asynq_rpc_deadline_get();
	return cur != 0 && cur < dl ? cur : dl;
}

asynq_status
asynq_rpc_timeout_push(uint32_t timeout_ms)
{
	return asynq_scoped_push(&asynq_rpc_deadline,
	    (void *)(intptr_t)deadline_within(timeout_ms));
}

asynq_status
asynq_rpc_timeout_pop(void)
{
	return asynq_scoped_pop(&asynq_rpc_deadline);
}

asynq_status
asynq_rpc_with_timeout(uint32_t timeout_ms, asynq_status (*fn)(void *arg),
    void *arg)
{
	return asynq_with_scoped(&asynq_rpc_deadline,
	    (void *)(intptr_t)deadline_within(timeout_ms), fn, arg);
}

asynq_status
asynq_rpc_with_wait_for_ready(bool wait, asynq_status (*fn)(void *arg),
    void *arg)
{
	return asynq_with_scoped(&asynq_rpc_wait_for_ready,
	    (void *)(intptr_t)(wait ? ASYNQ_RPC_WAIT : ASYNQ_RPC_FAIL_FAST), fn,
	    arg);
}

int64_t
asynqi_realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* ---- Arena ------------------------------------------------------------ */

struct asynqi_arena_chunk {
	asynqi_arena_chunk *next;
	size_t size, off;
	_Alignas(16) unsigned char data[];
};

static void *
arena_pa_alloc(void *data, size_t size)
{
	return asynqi_arena_alloc(data, size);
}

static void
arena_pa_free(void *data, void *p)
{
	(void)data;
	(void)p;
}

void
asynqi_arena_init(asynqi_arena *a, size_t budget)
{
	memset(a, 0, sizeof(*a));
	a->pa.alloc = arena_pa_alloc;
	a->pa.free = arena_pa_free;
	a->pa.allocator_data = a;
	a->budget = budget;
}

void
asynqi_arena_fini(asynqi_arena *a)
{
	asynqi_arena_chunk *c = a->chunks;
	while (c != NULL) {
		asynqi_arena_chunk *next = c->next;
		free(c);
		c = next;
	}
	a->chunks = NULL;
	a->cur = a->lim = a->cur0 = NULL;
	a->used = 0;
}

static void *arena_alloc_raw(asynqi_arena *a, size_t size);

void *
asynqi_arena_alloc_slow(asynqi_arena *a, size_t size)
{
	if (a->tag == NULL)
		return arena_alloc_raw(a, size);
	/* 16 bytes in front for the owner, keeping the 16-alignment. */
	if (size > SIZE_MAX - 32)
		return NULL;
	void **p;
	size_t n = (size + 16 + 15) & ~(size_t)15;
	if (n <= (size_t)(a->lim - a->cur))
		p = asynqi_arena_take(a, n); /* as inline allocations */
	else if ((p = arena_alloc_raw(a, size + 16)) == NULL)
		return NULL;
	p[0] = a->tag;
	a->tag = NULL;
	a->tagged = (char *)p + 16;
	return a->tagged;
}

size_t
asynqi_arena_hint(size_t used)
{
	/* A quarter more for the end of a chunk that a larger allocation did
	 * not fit in. */
	return asynqi_room_hint(used + used / 4, 4096, ASYNQI_ROOM_MAX);
}

bool
asynqi_arena_owns_slow(const asynqi_arena *a, const void *p)
{
	uintptr_t at = (uintptr_t)p;
	for (const asynqi_arena_chunk *c = a->chunks; c != NULL; c = c->next) {
		/* The first chunk's end is where the inline allocations got
		 * to. */
		size_t off = c == a->chunks && a->cur != NULL
		    ? (size_t)(a->cur - c->data)
		    : c->off;
		if (at >= (uintptr_t)c->data && at < (uintptr_t)c->data + off)
			return true;
	}
	return false;
}

/* The first chunk's offset, which inline allocations move on in a->cur,
 * made current. */
static void
arena_sync(asynqi_arena *a)
{
	if (a->chunks != NULL && a->cur != NULL)
		a->chunks->off = (size_t)(a->cur - a->chunks->data);
}

/* The room inline allocations may take: the first chunk's rest, within
 * the budget, both 16-aligned. */
static void
arena_room(asynqi_arena *a)
{
	asynqi_arena_chunk *c = a->chunks;
	size_t room = c->size - c->off;
	size_t left = (a->budget - a->used) & ~(size_t)15;
	if (room > left)
		room = left;
	a->cur0 = c->data;
	a->cur = c->data + c->off;
	a->lim = a->cur + (room & ~(size_t)15);
}

static void *
arena_alloc_raw(asynqi_arena *a, size_t size)
{
	arena_sync(a);
	if (size >
	    a->budget) { /* also keeps the rounding below from wrapping */
		a->exhausted = true;
		return NULL;
	}
	size = (size + 15) & ~(size_t)15;
	if (size == 0)
		size = 16;
	if (size > a->budget - a->used) {
		a->exhausted = true;
		return NULL;
	}
	asynqi_arena_chunk *c = a->chunks;
	if (c == NULL || c->size - c->off < size) {
		size_t want = c != NULL ? c->size * 2
		    : a->first != 0     ? a->first
		                        : 4096;
		if (want > 1u << 20)
			want = 1u << 20;
		if (want < size)
			want = size;
		asynqi_arena_chunk *n = malloc(sizeof(*n) + want);
		if (n == NULL)
			return NULL;
		n->size = want;
		n->off = 0;
		/* A chunk made for one large allocation goes behind the current
		 * one, so the current one keeps serving small ones. */
		if (c != NULL && want == size && c->size - c->off > 0) {
			n->next = c->next;
			c->next = n;
		} else {
			n->next = c;
			a->chunks = n;
		}
		c = n;
	}
	void *p = c->data + c->off;
	c->off += size;
	a->used += size;
	arena_room(a);
	return p;
}

/* ---- Shared arenas ----------------------------------------------------- */

asynqi_sarena *
asynqi_sarena_alloc(size_t budget)
{
	asynqi_sarena *s = malloc(sizeof(*s));
	if (s == NULL)
		return NULL;
	asynqi_arena_init(&s->a, budget);
	atomic_init(&s->refs, 1);
	return s;
}

void
asynqi_sarena_rele(asynqi_sarena *s)
{
	if (s != NULL && atomic_fetch_sub(&s->refs, 1) == 1) {
		asynqi_arena_fini(&s->a);
		free(s);
	}
}

asynq_status
asynqi_sarena_decode(asynqi_sarena *s, const ProtobufCMessageDescriptor *desc,
    const uint8_t *data, size_t len, ProtobufCMessage **out)
{
	return asynqi_sarena_decode_with(s, desc, NULL, data, len, out);
}

asynq_status
asynqi_sarena_decode_with(asynqi_sarena *s,
    const ProtobufCMessageDescriptor *desc, const asynq_rpc_codec *c,
    const uint8_t *data, size_t len, ProtobufCMessage **out)
{
	/* protobuf-c allocates the message itself first; it gets the header.
	 * Should it not, the message is decoded again with malloc. */
	s->a.tag = s;
	s->a.tagged = NULL;
	ProtobufCMessage *m = NULL;
	asynq_status st =
	    asynqi_rpc_decode_with(desc, c, data, len, &s->a.pa, &s->a, &m);
	void *tagged = s->a.tagged;
	s->a.tag = NULL;
	if (st != ASYNQ_OK)
		return st;
	if ((void *)m != tagged) {
		asynqi_budget_alloc ba;
		asynqi_budget_alloc_init(&ba, s->a.budget);
		st = asynqi_rpc_decode(desc, data, len, &ba.pa, NULL, &m);
		if (st != ASYNQ_OK)
			return st;
		*out = m;
		return ASYNQ_STATUS_COUNT; /* freed with asynqi_rpc_free_msg */
	}
	atomic_fetch_add_explicit(&s->refs, 1, memory_order_relaxed);
	*out = m;
	return ASYNQ_OK;
}

void
asynqi_sarena_msg_free(void *m)
{
	if (m != NULL)
		asynqi_sarena_rele(*(asynqi_sarena **)((char *)m - 16));
}

/* ---- Counting malloc allocator ---------------------------------------- */

static void *
budget_pa_alloc(void *data, size_t size)
{
	asynqi_budget_alloc *b = data;
	if (size > b->budget - b->used) {
		b->exhausted = true;
		return NULL;
	}
	b->used += size;
	return malloc(size);
}

static void
budget_pa_free(void *data, void *p)
{
	(void)data;
	free(p);
}

static void *
budget_pa_sys_alloc(void *data, size_t size)
{
	(void)data;
	return malloc(size);
}

void
asynqi_budget_alloc_init(asynqi_budget_alloc *b, size_t budget)
{
	memset(b, 0, sizeof(*b));
	b->pa.alloc = budget_pa_alloc;
	b->pa.free = budget_pa_free;
	b->pa.allocator_data = b;
	b->budget = budget;
}

void
asynqi_rpc_free_msg(void *m)
{
	if (m != NULL)
		protobuf_c_message_free_unpacked(m, NULL);
}

/* ---- Depth check ------------------------------------------------------ */

static bool
read_varint(const uint8_t *p, size_t end, size_t *pos, uint64_t *v)
{
	uint64_t r = 0;
	for (unsigned shift = 0; shift < 70; shift += 7) {
		if (*pos >= end)
			return false;
		uint8_t b = p[(*pos)++];
		r |= (uint64_t)(b & 0x7f) << shift;
		if ((b & 0x80) == 0) {
			*v = r;
			return true;
		}
	}
	return false;
}

asynq_status
asynqi_rpc_check_depth(const ProtobufCMessageDescriptor *desc,
    const uint8_t *data, size_t len, size_t max_depth)
{
	struct level {
		const ProtobufCMessageDescriptor *d;
		size_t end;
	} stack[ASYNQI_RPC_MAX_DEPTH + 1];
	if (max_depth > ASYNQI_RPC_MAX_DEPTH)
		max_depth = ASYNQI_RPC_MAX_DEPTH;
	size_t top = 0, pos = 0;
	stack[0].d = desc;
	stack[0].end = len;
	for (;;) {
		while (top > 0 && pos == stack[top].end)
			top--;
		if (pos >= stack[top].end)
			break;
		size_t end = stack[top].end;
		uint64_t tag, v;
		if (!read_varint(data, end, &pos, &tag))
			return ASYNQ_INVALID_ARGUMENT;
		switch (tag & 7) {
		case 0:
			if (!read_varint(data, end, &pos, &v))
				return ASYNQ_INVALID_ARGUMENT;
			break;
		case 1:
			if (end - pos < 8)
				return ASYNQ_INVALID_ARGUMENT;
			pos += 8;
			break;
		case 5:
			if (end - pos < 4)
				return ASYNQ_INVALID_ARGUMENT;
			pos += 4;
			break;
		case 2: {
			if (!read_varint(data, end, &pos, &v) || v > end - pos)
				return ASYNQ_INVALID_ARGUMENT;
			const ProtobufCFieldDescriptor *f =
			    stack[top].d != NULL && (tag >> 3) <= UINT32_MAX
			    ? protobuf_c_message_descriptor_get_field(
			          stack[top].d, (unsigned)(tag >> 3))
			    : NULL;
			if (f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE) {
				if (top + 1 >= max_depth)
					return ASYNQ_RESOURCE_EXHAUSTED;
				top++;
				stack[top].d = f->descriptor;
				stack[top].end = pos + (size_t)v;
			} else {
				pos += (size_t)v;
			}
			break;
		}
		default:
			/* Groups (3, 4) are proto2-only and nest without a
			 * length; asynq does not accept them. */
			return ASYNQ_INVALID_ARGUMENT;
		}
	}
	return ASYNQ_OK;
}

/* A message with no message-typed field cannot nest. */
static bool
is_flat(const ProtobufCMessageDescriptor *desc)
{
	for (unsigned i = 0; i < desc->n_fields; i++)
		if (desc->fields[i].type == PROTOBUF_C_TYPE_MESSAGE)
			return false;
	return true;
}

/* ---- Small messages of scalars and strings, decoded directly ----------
 *
 * protobuf-c's unpack is general (unknown fields, repeated and packed
 * fields, oneofs, required-field checks, two passes over the bytes) and
 * costs ~240 instructions for a one-field message, more than the rest of a
 * call's decoding. A message whose fields are all singular numbers, bools,
 * enums, strings or bytes (the usual request and reply of a lookup) is
 * decoded here in one pass into the same struct, allocated from the same
 * allocator, message first (the arena's tagging relies on that), so that
 * protobuf_c_message_free_unpacked frees it as if protobuf-c had made it.
 * Anything else in the bytes (an unknown field, a wire type the field does
 * not take) makes it give up, free what it made and leave the bytes to
 * protobuf-c, so every outcome, errors included, is protobuf-c's. */

#define SIMPLE_MAX_FIELDS 16

static bool
simple_field(const ProtobufCFieldDescriptor *f)
{
	if (f->label == PROTOBUF_C_LABEL_REPEATED ||
	    f->label == PROTOBUF_C_LABEL_REQUIRED ||
	    (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0)
		return false;
	return f->type != PROTOBUF_C_TYPE_MESSAGE;
}

static bool
compute_simple(const ProtobufCMessageDescriptor *desc)
{
	if (desc->n_fields > SIMPLE_MAX_FIELDS || desc->message_init == NULL)
		return false;
	for (unsigned i = 0; i < desc->n_fields; i++)
		if (!simple_field(&desc->fields[i]))
			return false;
	return true;
}

/* What is known of a descriptor: DESC_SIMPLE (compute_simple), DESC_FLAT
 * (is_flat: no message field, so no nesting to bound). */
enum { DESC_SIMPLE = 1, DESC_FLAT = 2 };

/* Those answers for the descriptors seen last, direct-mapped by address:
 * the descriptor's address with the answers in its low bits (descriptors
 * hold pointers, so are 8-aligned). Any thread: a slot holds one whole
 * answer or another, and a stale one is only recomputed. */
#define SIMPLE_SLOTS 256
static _Atomic uintptr_t simple_cache[SIMPLE_SLOTS];
_Static_assert(_Alignof(ProtobufCMessageDescriptor) >= 8,
    "descriptor addresses leave 3 low bits for the answers");

static unsigned
desc_kind(const ProtobufCMessageDescriptor *desc)
{
	uintptr_t key = (uintptr_t)desc;
	_Atomic uintptr_t *slot = &simple_cache[(key >> 4) % SIMPLE_SLOTS];
	uintptr_t v = atomic_load_explicit(slot, memory_order_relaxed);
	if ((v & ~(uintptr_t)7) == key)
		return (unsigned)(v & 3);
	unsigned kind = (compute_simple(desc) ? DESC_SIMPLE : 0) |
	    (is_flat(desc) ? DESC_FLAT : 0);
	atomic_store_explicit(slot, key | kind, memory_order_relaxed);
	return kind;
}

static bool
is_simple(const ProtobufCMessageDescriptor *desc)
{
	return (desc_kind(desc) & DESC_SIMPLE) != 0;
}

/* The wire type a field of type t is written with. */
static unsigned
wire_type(ProtobufCType t)
{
	switch (t) {
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_FIXED64:
	case PROTOBUF_C_TYPE_DOUBLE:
		return 1;
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_FLOAT:
		return 5;
	case PROTOBUF_C_TYPE_STRING:
	case PROTOBUF_C_TYPE_BYTES:
		return 2;
	default:
		return 0;
	}
}

/* Stores field g's value in m's member for f; false to give up. */
static bool
simple_store(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
    const asynqi_field *g, ProtobufCAllocator *pa)
{
	char *at = (char *)m + f->offset;
	uint64_t v = g->v;
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_ENUM:
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_FLOAT: {
		uint32_t x = (uint32_t)v;
		memcpy(at, &x, 4);
		break;
	}
	case PROTOBUF_C_TYPE_SINT32: {
		uint32_t z = (uint32_t)v;
		int32_t x = (int32_t)((z >> 1) ^ (~(z & 1) + 1));
		memcpy(at, &x, 4);
		break;
	}
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
	case PROTOBUF_C_TYPE_SFIXED64:
	case PROTOBUF_C_TYPE_DOUBLE:
		memcpy(at, &v, 8);
		break;
	case PROTOBUF_C_TYPE_SINT64: {
		int64_t x = (int64_t)((v >> 1) ^ (~(v & 1) + 1));
		memcpy(at, &x, 8);
		break;
	}
	case PROTOBUF_C_TYPE_BOOL: {
		protobuf_c_boolean x = v != 0;
		memcpy(at, &x, sizeof(x));
		break;
	}
	case PROTOBUF_C_TYPE_STRING: {
		char *old;
		memcpy(&old, at, sizeof(old));
		if (old != NULL && old != f->default_value &&
		    old != protobuf_c_empty_string)
			return false; /* a repeated key: protobuf-c's to merge
			               */
		char *str = pa->alloc(pa->allocator_data, g->len + 1);
		if (str == NULL)
			return false;
		memcpy(str, g->p, g->len);
		str[g->len] = '\0';
		memcpy(at, &str, sizeof(str));
		break;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		ProtobufCBinaryData bd;
		memcpy(&bd, at, sizeof(bd));
		const ProtobufCBinaryData *def = f->default_value;
		if (bd.data != NULL && (def == NULL || bd.data != def->data))
			return false;
		bd.len = g->len;
		bd.data = NULL;
		if (g->len != 0 &&
		    (bd.data = pa->alloc(pa->allocator_data, g->len)) == NULL)
			return false;
		if (g->len != 0)
			memcpy(bd.data, g->p, g->len);
		memcpy(at, &bd, sizeof(bd));
		break;
	}
	default:
		return false;
	}
	if (f->label == PROTOBUF_C_LABEL_OPTIONAL &&
	    f->quantifier_offset != 0 && f->type != PROTOBUF_C_TYPE_STRING) {
		protobuf_c_boolean has = 1;
		memcpy((char *)m + f->quantifier_offset, &has, sizeof(has));
	}
	return true;
}

/* Decodes a simple message (is_simple) into *out; NULL when protobuf-c is
 * to decode it instead (nothing is left allocated then). */
static ProtobufCMessage *
simple_unpack(const ProtobufCMessageDescriptor *desc, ProtobufCAllocator *pa,
    const uint8_t *data, size_t len)
{
	ProtobufCAllocator sys = { .alloc = NULL };
	if (pa == NULL) {
		/* protobuf-c's default: malloc. */
		sys = (ProtobufCAllocator){ budget_pa_sys_alloc, budget_pa_free,
			NULL };
		pa = &sys;
	}
	ProtobufCMessage *m =
	    pa->alloc(pa->allocator_data, desc->sizeof_message);
	if (m == NULL)
		return NULL;
	desc->message_init(m);
	/* No bytes may come as a NULL pointer, where even + 0 is undefined. */
	asynqi_reader r = { data, len != 0 ? data + len : data };
	asynqi_field g;
	int rv;
	while ((rv = asynqi_reader_next(&r, &g)) > 0) {
		const ProtobufCFieldDescriptor *f = NULL;
		for (unsigned i = 0; i < desc->n_fields; i++)
			if (desc->fields[i].id == g.num) {
				f = &desc->fields[i];
				break;
			}
		if (f == NULL || g.wt != wire_type(f->type) ||
		    !simple_store(m, f, &g, pa)) {
			rv = -1;
			break;
		}
	}
	if (rv < 0) {
		protobuf_c_message_free_unpacked(m, pa == &sys ? NULL : pa);
		return NULL;
	}
	return m;
}

/* ---- Packing the same small messages -----------------------------------
 *
 * What protobuf_c_message_get_packed_size and _pack write, for the
 * messages simple_unpack decodes, without their generic field walk: the
 * fields in the descriptor's order; a proto3 field (no label) only when it
 * is not zero (as a number: -0.0 is left out) or empty; a proto2 optional
 * one when its has_ flag is set
 * (a string when it is set and not its default). test_codec compares the
 * bytes with protobuf-c's. */

static inline size_t
varint_size(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

static uint8_t *
varint_put(uint8_t *p, uint64_t v)
{
	while (v >= 0x80) {
		*p++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*p++ = (uint8_t)v;
	return p;
}

/* The value of field f of m as its wire value (varint or fixed bits), or
 * for strings and bytes its length and bytes; false when it is not sent. */
static inline __attribute__((always_inline)) bool
simple_value(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
    uint64_t *v, const uint8_t **p, size_t *len)
{
	const char *at = (const char *)m + f->offset;
	bool none = f->label == PROTOBUF_C_LABEL_NONE;
	if (!none && f->type != PROTOBUF_C_TYPE_STRING) {
		protobuf_c_boolean has;
		memcpy(&has, (const char *)m + f->quantifier_offset,
		    sizeof(has));
		if (!has)
			return false;
	}
	switch (f->type) {
	case PROTOBUF_C_TYPE_INT32:
	case PROTOBUF_C_TYPE_ENUM: {
		int32_t x;
		memcpy(&x, at, 4);
		*v = (uint64_t)(int64_t)x;
		break;
	}
	case PROTOBUF_C_TYPE_SINT32: {
		int32_t x;
		memcpy(&x, at, 4);
		*v = ((uint32_t)x << 1) ^ (uint32_t)(x >> 31);
		break;
	}
	case PROTOBUF_C_TYPE_FLOAT: {
		/* Zero as a number: protobuf-c leaves -0.0 out too. */
		float x;
		memcpy(&x, at, 4);
		if (none && x == 0)
			return false;
		uint32_t bits;
		memcpy(&bits, at, 4);
		*v = bits;
		return true;
	}
	case PROTOBUF_C_TYPE_DOUBLE: {
		double x;
		memcpy(&x, at, 8);
		if (none && x == 0)
			return false;
		memcpy(v, at, 8);
		return true;
	}
	case PROTOBUF_C_TYPE_UINT32:
	case PROTOBUF_C_TYPE_FIXED32:
	case PROTOBUF_C_TYPE_SFIXED32: {
		uint32_t x;
		memcpy(&x, at, 4);
		*v = x;
		break;
	}
	case PROTOBUF_C_TYPE_SINT64: {
		int64_t x;
		memcpy(&x, at, 8);
		*v = ((uint64_t)x << 1) ^ (uint64_t)(x >> 63);
		break;
	}
	case PROTOBUF_C_TYPE_INT64:
	case PROTOBUF_C_TYPE_UINT64:
	case PROTOBUF_C_TYPE_FIXED64:
	case PROTOBUF_C_TYPE_SFIXED64:
		memcpy(v, at, 8);
		break;
	case PROTOBUF_C_TYPE_BOOL: {
		protobuf_c_boolean x;
		memcpy(&x, at, sizeof(x));
		*v = x != 0;
		break;
	}
	case PROTOBUF_C_TYPE_STRING: {
		const char *str;
		memcpy(&str, at, sizeof(str));
		if (str == NULL || (!none && str == f->default_value))
			return false;
		*p = (const uint8_t *)str;
		*len = strlen(str);
		return !none || *len != 0;
	}
	case PROTOBUF_C_TYPE_BYTES: {
		ProtobufCBinaryData bd;
		memcpy(&bd, at, sizeof(bd));
		*p = bd.data;
		*len = bd.len;
		return !none || bd.len != 0;
	}
	default:
		return false;
	}
	return !none || *v != 0;
}

static size_t
simple_size(const ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	size_t n = 0;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		uint64_t v = 0;
		const uint8_t *p = NULL;
		size_t len = 0;
		if (!simple_value(m, f, &v, &p, &len))
			continue;
		n += varint_size((uint64_t)f->id << 3);
		switch (wire_type(f->type)) {
		case 0:
			n += varint_size(v);
			break;
		case 1:
			n += 8;
			break;
		case 5:
			n += 4;
			break;
		default:
			n += varint_size(len) + len;
			break;
		}
	}
	return n;
}

/* simple_pack's walk; bounded: room is checked before each field for the
 * most it can write, SIZE_MAX when it might not fit in cap. */
static inline __attribute__((always_inline)) size_t
simple_pack_to(const ProtobufCMessage *m, uint8_t *out, size_t cap,
    bool bounded)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	uint8_t *o = out;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &d->fields[i];
		uint64_t v = 0;
		const uint8_t *p = NULL;
		size_t len = 0;
		if (!simple_value(m, f, &v, &p, &len))
			continue;
		unsigned wt = wire_type(f->type);
		if (bounded) {
			/* A key is at most 5 bytes, a varint 10. */
			size_t room = cap - (size_t)(o - out);
			size_t most = 5 +
			    (wt == 0          ? 10
			            : wt == 1 ? 8
			            : wt == 5 ? 4
			                      : 10);
			if (most > room || (wt == 2 && len > room - most))
				return SIZE_MAX;
		}
		o = varint_put(o, ((uint64_t)f->id << 3) | wt);
		switch (wt) {
		case 0:
			o = varint_put(o, v);
			break;
		case 1:
			for (int k = 0; k < 8; k++)
				*o++ = (uint8_t)(v >> (8 * k));
			break;
		case 5:
			for (int k = 0; k < 4; k++)
				*o++ = (uint8_t)(v >> (8 * k));
			break;
		default:
			o = varint_put(o, len);
			if (len != 0)
				memcpy(o, p, len);
			o += len;
			break;
		}
	}
	return (size_t)(o - out);
}

static size_t
simple_pack(const ProtobufCMessage *m, uint8_t *out)
{
	return simple_pack_to(m, out, 0, false);
}

static size_t
simple_pack_within(const ProtobufCMessage *m, uint8_t *out, size_t cap)
{
	return simple_pack_to(m, out, cap, true);
}

/* Unknown fields a message was decoded with are packed again, by
 * protobuf-c (the command-line client's Raw messages are nothing else). */
static bool
packs_simply(const ProtobufCMessage *m)
{
	return m->n_unknown_fields == 0 && is_simple(m->descriptor);
}

size_t
asynqi_msg_size(const ProtobufCMessage *m)
{
	return packs_simply(m) ? simple_size(m)
	                       : protobuf_c_message_get_packed_size(m);
}

size_t
asynqi_msg_pack(const ProtobufCMessage *m, uint8_t *out)
{
	return packs_simply(m) ? simple_pack(m, out)
	                       : protobuf_c_message_pack(m, out);
}

size_t
asynqi_msg_pack_small(const ProtobufCMessage *m, uint8_t *out, size_t cap)
{
	return packs_simply(m) ? simple_pack_within(m, out, cap) : SIZE_MAX;
}

bool
asynqi_codec_usable(const asynq_rpc_codec *c,
    const ProtobufCMessageDescriptor *desc)
{
	if (c == NULL || c->desc != desc || desc == NULL ||
	    desc->magic != PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC ||
	    desc->n_fields != c->n_fields || desc->message_init == NULL ||
	    c->size == NULL || c->pack == NULL || c->unpack == NULL)
		return false;
	for (unsigned i = 0; i < desc->n_fields; i++) {
		const ProtobufCFieldDescriptor *f = &desc->fields[i];
		const asynq_rpc_codec_field *g = &c->fields[i];
		if (f->id != g->id || (unsigned)f->type != g->type ||
		    (unsigned)f->label != g->label ||
		    (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0 ||
		    (f->label == PROTOBUF_C_LABEL_OPTIONAL &&
		        f->type != PROTOBUF_C_TYPE_STRING &&
		        f->quantifier_offset == 0))
			return false;
	}
	return true;
}

asynq_status
asynqi_rpc_decode(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
    size_t len, ProtobufCAllocator *pa, asynqi_arena *arena,
    ProtobufCMessage **out)
{
	return asynqi_rpc_decode_with(desc, NULL, data, len, pa, arena, out);
}

asynq_status
asynqi_rpc_decode_rest(const ProtobufCMessageDescriptor *desc, bool after_codec,
    const uint8_t *data, size_t len, ProtobufCAllocator *pa,
    asynqi_arena *arena, ProtobufCMessage **out)
{
	unsigned kind = desc_kind(desc);
	if (!after_codec && (kind & DESC_SIMPLE) != 0) {
		ProtobufCMessage *m = simple_unpack(desc, pa, data, len);
		if (m != NULL) {
			*out = m;
			return ASYNQ_OK;
		}
		if (arena != NULL && arena->exhausted)
			return ASYNQ_RESOURCE_EXHAUSTED;
	}
	asynq_status st = (kind & DESC_FLAT) != 0
	    ? ASYNQ_OK
	    : asynqi_rpc_check_depth(desc, data, len, ASYNQI_RPC_MAX_DEPTH);
	if (st != ASYNQ_OK)
		return st;
	ProtobufCMessage *m = protobuf_c_message_unpack(desc, pa, len, data);
	if (m == NULL) {
		if (arena != NULL && arena->exhausted)
			return ASYNQ_RESOURCE_EXHAUSTED;
		if (pa != NULL && pa->alloc == budget_pa_alloc &&
		    ((asynqi_budget_alloc *)pa->allocator_data)->exhausted)
			return ASYNQ_RESOURCE_EXHAUSTED;
		return ASYNQ_INVALID_ARGUMENT;
	}
	*out = m;
	return ASYNQ_OK;
}

void
asynqi_buf_message(asynqi_buf *b, uint32_t field, const ProtobufCMessage *m)
{
	size_t n = asynqi_msg_size(m);
	asynqi_buf_tag(b, field, 2);
	asynqi_buf_varint(b, n);
	uint8_t *d = asynqi_buf_reserve(b, n);
	if (d == NULL)
		return;
	asynqi_msg_pack(m, d);
	b->len += n;
}

const char *
asynqi_rpc_nng_why(int rv)
{
	switch (rv) {
	case NNG_ECONNREFUSED:
		return "connection refused";
	case NNG_ECONNRESET:
	case NNG_ECONNSHUT:
		return "connection lost";
	case NNG_ETIMEDOUT:
		return "timed out";
	case NNG_EADDRINUSE:
		return "address in use";
	case NNG_EPEERAUTH:
		return "peer could not be authenticated";
	case NNG_ECRYPTO:
		return "TLS handshake failed";
	case NNG_EPROTO:
		return "protocol error";
	default:
		return nng_strerror(rv);
	}
}

asynq_status
asynqi_rpc_status_from_nng(int rv)
{
	switch (rv) {
	case 0:
		return ASYNQ_OK;
	case NNG_ETIMEDOUT:
		return ASYNQ_DEADLINE_EXCEEDED;
	case NNG_ECANCELED:
		return ASYNQ_CANCELLED;
	case NNG_ENOMEM:
		return ASYNQ_RESOURCE_EXHAUSTED;
	case NNG_EMSGSIZE:
		return ASYNQ_RESOURCE_EXHAUSTED;
	case NNG_EINVAL:
	case NNG_EADDRINVAL:
	case NNG_ENOTSUP:
		return ASYNQ_INVALID_ARGUMENT;
	case NNG_EPERM:
		return ASYNQ_PERMISSION_DENIED;
	default:
		return ASYNQ_UNAVAILABLE;
	}
}

asynq_status
asynqi_rpc_status_from_wire(int32_t s)
{
	if (s < 0 || s >= ASYNQ_STATUS_COUNT)
		return ASYNQ_UNKNOWN;
	return (asynq_status)s;
}
