/* SPDX-License-Identifier: MIT */
/*
 * A structure-aware mutator for the RPC fuzzers: most byte-level mutations
 * of a request break its envelope, so the server answers INVALID_ARGUMENT
 * and never gets to dispatch. One time in four this leaves the input to
 * libFuzzer's own mutations; otherwise it decodes the input as an
 * asynq.rpc.Request and changes one thing the server acts on (a payload's
 * bytes, a method name or number, a call_id, the calls themselves, the
 * timeout or deadline, the metadata, the duplicate-detection ids, a payload
 * nested near the depth limit) and encodes it again. fuzz_mutate_request
 * is that mutation, for the requests inside rpc_stream's frames too.
 *
 * Design notes:
 * - Deterministic for a given seed, as libFuzzer requires: all choices come
 *   from a generator seeded with libFuzzer's seed.
 * - A Request nests two levels (payloads are bytes), so decoding any input
 *   as one here is safe on this stack.
 * - Everything put into the decoded message is malloc'd, so
 *   protobuf_c_message_free_unpacked(m, NULL) frees it like protobuf-c's own.
 * - LLVMFuzzerMutate is libFuzzer's; it is declared weak so that programs
 *   without libFuzzer may link this file (they never call the mutator).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proto/asynq/rpc.pb-c.h"
#include "tests/fuzz/fuzz_service.h"

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size)
    __attribute__((weak));
size_t LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size,
    unsigned int seed);

static uint64_t rng;

static uint32_t
rnd(uint32_t n)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return n != 0 ? (uint32_t)(rng % n) : 0;
}

static char *
dup_str(const char *s)
{
	char *p = strdup(s);
	if (p == NULL)
		abort();
	return p;
}

/* Replaces the string *p of a decoded message (which may be protobuf-c's
 * shared empty string, never to be freed) with a copy of v. */
static void
str_set(char **p, const char *v)
{
	if (*p != protobuf_c_empty_string)
		free(*p);
	*p = dup_str(v);
}

static void
varint(uint8_t **p, uint64_t v)
{
	do {
		*(*p)++ = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		v >>= 7;
	} while (v != 0);
}

/* A Tree (or Legacy, field 6) payload whose chain through `field` is depth
 * messages deep; malloc'd into *out. */
static size_t
deep_payload(uint8_t **out, size_t depth, unsigned field)
{
	size_t cap = depth * 8 + 16;
	uint8_t *buf = malloc(cap), tmp[10];
	if (buf == NULL)
		abort();
	size_t start = cap - 2;
	buf[start] = 0x18; /* v = 1 */
	buf[start + 1] = 0x01;
	for (size_t i = 1; i < depth; i++) {
		size_t inner = cap - start;
		uint8_t *q = tmp;
		varint(&q, inner);
		size_t nv = (size_t)(q - tmp);
		start -= nv;
		memcpy(buf + start, tmp, nv);
		buf[--start] = (uint8_t)(field << 3 | 2);
	}
	size_t len = cap - start;
	memmove(buf, buf + start, len);
	*out = buf;
	return len;
}

static void
set_payload(Asynq__Rpc__Call *c, uint8_t *data, size_t len)
{
	free(c->payload.data);
	c->payload.data = data;
	c->payload.len = len;
}

static Asynq__Rpc__Metadata *
md_new(const char *key, const char *val)
{
	Asynq__Rpc__Metadata *md = malloc(sizeof(*md));
	if (md == NULL)
		abort();
	asynq__rpc__metadata__init(md);
	md->key = dup_str(key);
	md->value.len = strlen(val);
	md->value.data = (uint8_t *)dup_str(val);
	return md;
}

static void
md_add(size_t *n, Asynq__Rpc__Metadata ***mds, Asynq__Rpc__Metadata *md)
{
	Asynq__Rpc__Metadata **p = realloc(*mds, (*n + 1) * sizeof(*p));
	if (p == NULL)
		abort();
	p[(*n)++] = md;
	*mds = p;
}

static Asynq__Rpc__Call *
call_copy(const Asynq__Rpc__Call *c)
{
	size_t n = asynq__rpc__call__get_packed_size(c);
	uint8_t *b = malloc(n + 1);
	if (b == NULL)
		abort();
	asynq__rpc__call__pack(c, b);
	Asynq__Rpc__Call *d = asynq__rpc__call__unpack(NULL, n, b);
	free(b);
	return d;
}

static Asynq__Rpc__Call *
call_new(void)
{
	Asynq__Rpc__Call *c = malloc(sizeof(*c));
	if (c == NULL)
		abort();
	asynq__rpc__call__init(c);
	c->method = dup_str(
	    FUZZ_SVC->methods[rnd((uint32_t)FUZZ_SVC->n_methods)].full_name);
	c->call_id = rnd(8);
	return c;
}

static void
calls_add(Asynq__Rpc__Request *rq, Asynq__Rpc__Call *c)
{
	if (c == NULL)
		return;
	Asynq__Rpc__Call **p =
	    realloc(rq->calls, (rq->n_calls + 1) * sizeof(*p));
	if (p == NULL)
		abort();
	p[rq->n_calls++] = c;
	rq->calls = p;
}

/* Applies one structural change to rq; max_payload bounds a payload. */
static void
mutate_request(Asynq__Rpc__Request *rq, size_t max_payload)
{
	Asynq__Rpc__Call *c =
	    rq->n_calls > 0 ? rq->calls[rnd((uint32_t)rq->n_calls)] : NULL;
	switch (rnd(12)) {
	case 0:
	case 1:
	case 2: /* a payload's bytes, by libFuzzer */
		if (c != NULL && LLVMFuzzerMutate != NULL) {
			size_t cap = c->payload.len + 64;
			if (cap > max_payload)
				cap = max_payload;
			if (cap < c->payload.len)
				break;
			uint8_t *b = malloc(cap + 1);
			if (b == NULL)
				abort();
			if (c->payload.len > 0)
				memcpy(b, c->payload.data, c->payload.len);
			size_t n = LLVMFuzzerMutate(b, c->payload.len, cap);
			set_payload(c, b, n);
			break;
		}
		/* fall through */
	case 3: /* a call more, new or a copy */
		calls_add(rq, c != NULL && rnd(2) ? call_copy(c) : call_new());
		break;
	case 4: /* a call less */
		if (rq->n_calls > 0) {
			size_t i = rnd((uint32_t)rq->n_calls);
			protobuf_c_message_free_unpacked(&rq->calls[i]->base,
			    NULL);
			rq->calls[i] = rq->calls[--rq->n_calls];
		}
		break;
	case 5: /* another method, by name or by number */
		if (c != NULL && rnd(2)) {
			uint32_t k = rnd((uint32_t)FUZZ_SVC->n_methods + 1);
			str_set(&c->method,
			    k < FUZZ_SVC->n_methods
			        ? FUZZ_SVC->methods[k].full_name
			        : "asynq.fuzz.Absent/Gone");
			c->method_id = 0;
		} else if (c != NULL) {
			/* 0 (by name again), the table's numbers, and one
			 * or two past its end; the name goes unless kept. */
			c->method_id = rnd(FUZZ_METHOD_IDS + 3);
			if (rnd(4) != 0)
				str_set(&c->method, "");
		}
		break;
	case 6: /* a call_id, often one already used */
		if (c != NULL)
			c->call_id = rnd(2)
			    ? rq->calls[rnd((uint32_t)rq->n_calls)]->call_id
			    : rnd(1000);
		break;
	case 7: { /* a payload nested around the depth limit */
		if (c == NULL)
			break;
		static const unsigned fields[] = { 1, 2, 6 };
		const asynq_rpc_method_desc *m = rnd(2) ? FUZZ_METHOD(COUNT)
		    : rnd(2)                            ? FUZZ_METHOD(ECHO)
		                                        : FUZZ_METHOD(OLD);
		str_set(&c->method, m->full_name);
		uint8_t *b;
		size_t depth = FUZZ_MAX_DEPTH - 3 + rnd(7);
		size_t n = deep_payload(&b, depth,
		    m == FUZZ_METHOD(OLD) ? 6 : fields[rnd(3)]);
		set_payload(c, b, n);
		break;
	}
	case 8: { /* the deadline: relative, or the legacy absolute one */
		static const int64_t dls[] = { 0, 1, -1, INT64_MAX, INT64_MIN,
			INT64_C(4102444800) * 1000000000 };
		static const uint64_t tos[] = { 0, 1, 1000, 60000000,
			UINT64_MAX, (uint64_t)INT64_MAX / 1000 + 1 };
		if (rnd(2))
			rq->timeout_us = tos[rnd(6)];
		else
			rq->deadline_unix_ns = dls[rnd(6)];
		break;
	}
	case 9: /* metadata, of the request or of a call */
		if (c != NULL && rnd(4) == 0)
			c->own_metadata = !c->own_metadata;
		else if (c != NULL && rnd(2))
			md_add(&c->n_metadata, &c->metadata,
			    md_new(rnd(2) ? "tag" : "x", rnd(2) ? "v" : ""));
		else
			md_add(&rq->n_metadata, &rq->metadata,
			    md_new(rnd(2) ? "tag" : "", "w"));
		break;
	case 10: /* duplicate detection: few ids, so they collide */
		rq->client_id = rnd(3);
		rq->request_id = rnd(4);
		rq->attempt = rnd(3) == 0 ? rnd(3) : 0;
		break;
	default: { /* a Num payload with an interesting v */
		if (c == NULL)
			break;
		static const int64_t vs[] = { 0, 1, 2, 3, 13, -1, -13,
			INT64_MIN, INT64_MAX };
		Asynq__Fuzz__Num num = ASYNQ__FUZZ__NUM__INIT;
		num.v = vs[rnd(9)];
		uint8_t *b = malloc(16);
		if (b == NULL)
			abort();
		set_payload(c, b, asynq__fuzz__num__pack(&num, b));
		break;
	}
	}
}

size_t
fuzz_mutate_request(uint8_t *data, size_t size, size_t max_size,
    unsigned int seed)
{
	rng = (uint64_t)seed * 0x9e3779b97f4a7c15u + 1;
	if (LLVMFuzzerMutate == NULL)
		return size;
	if (rnd(4) == 0)
		return LLVMFuzzerMutate(data, size, max_size);
	Asynq__Rpc__Request *rq = asynq__rpc__request__unpack(NULL, size, data);
	if (rq == NULL)
		return LLVMFuzzerMutate(data, size, max_size);
	size_t rounds = 1 + rnd(3);
	for (size_t i = 0; i < rounds; i++)
		mutate_request(rq, max_size / 2);
	size_t n = asynq__rpc__request__get_packed_size(rq);
	if (n <= max_size)
		asynq__rpc__request__pack(rq, data);
	asynq__rpc__request__free_unpacked(rq, NULL);
	if (n > max_size)
		return LLVMFuzzerMutate(data, size, max_size);
	return n;
}

/* Weak, so that a target with a mutator of its own (rpc_stream) overrides
 * it and may still call fuzz_mutate_request. */
__attribute__((weak)) size_t
LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size,
    unsigned int seed)
{
	return fuzz_mutate_request(data, size, max_size, seed);
}
