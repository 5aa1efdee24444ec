/* SPDX-License-Identifier: MIT */
/*
 * The envelope codec's direct decoder of small messages (singular numbers,
 * bools, enums, strings, bytes) against protobuf-c on the same bytes:
 * every value of every field kind, proto2 optional fields (has_ flags,
 * defaults), proto3 defaults, the last of a repeated key, unknown fields,
 * wrong wire types, truncated and malformed bytes, and 20,000 random
 * mutations of encoded messages (fixed seed). A decode that succeeds must
 * give what protobuf-c gives (repacked, byte for byte, and the has_ flags
 * and strings read back); one that fails must fail in protobuf-c too; both
 * allocators the RPC layer uses (the arena and the counting malloc one)
 * free everything (LeakSanitizer under --config=asan). And its packer:
 * 20,000 random messages (values at the edges: zero, -0.0, NaN, empty and
 * default strings, has_ flags on and off) packed to exactly protobuf-c's
 * bytes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "framework/rpc/internal.h"
#include "tests/rpc/codec2.asynq.h"
#include "tests/rpc/codec3.asynq.h"

/* Set while a test runs again through the generated codecs: decodes and
 * packs then go through the codec of the message's method. */
static bool gen;

/* The generated codec of desc's messages (a request type of Codec3 or
 * Codec2), when gen; NULL otherwise or when it has none. */
static const asynq_rpc_codec *
codec_for(const ProtobufCMessageDescriptor *desc)
{
	const asynq_rpc_service_desc *svcs[] = {
		&asynq__codectest__codec3__asynq_desc,
		&asynq__codectest2__codec2__asynq_desc,
	};
	if (!gen)
		return NULL;
	for (size_t i = 0; i < 2; i++)
		for (size_t j = 0; j < svcs[i]->n_methods; j++)
			if (svcs[i]->methods[j].input == desc)
				return svcs[i]->methods[j].input_codec;
	return NULL;
}

static uint8_t *
pack(const ProtobufCMessage *m, size_t *len)
{
	*len = protobuf_c_message_get_packed_size(m);
	uint8_t *b = malloc(*len + 1);
	assert_non_null(b);
	protobuf_c_message_pack(m, b);
	return b;
}

/* Decodes data as desc both ways and checks they agree; returns whether it
 * decoded. With an arena when `arena`, else the counting malloc one. */
static bool
agree(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
    bool arena)
{
	ProtobufCMessage *ref =
	    protobuf_c_message_unpack(desc, NULL, len, data);
	ProtobufCMessage *m = NULL;
	asynq_status st;
	asynqi_sarena *sa = NULL;
	asynqi_budget_alloc ba;
	bool in_arena = arena;
	if (arena) {
		sa = asynqi_sarena_alloc(1 << 20);
		assert_non_null(sa);
		st = asynqi_sarena_decode_with(sa, desc, codec_for(desc), data,
		    len, &m);
		if (st == ASYNQ_STATUS_COUNT) {
			st = ASYNQ_OK; /* decoded with malloc after all */
			in_arena = false;
		}
	} else {
		asynqi_budget_alloc_init(&ba, 1 << 20);
		st = asynqi_rpc_decode_with(desc, codec_for(desc), data, len,
		    &ba.pa, NULL, &m);
	}
	if (ref == NULL) {
		if (st == ASYNQ_OK)
			fail_msg("decoded bytes protobuf-c rejects (%zu bytes)",
			    len);
		asynqi_sarena_rele(sa);
		return false;
	}
	if (st != ASYNQ_OK)
		fail_msg("rejected bytes protobuf-c decodes: %s",
		    asynq_status_name(st));
	size_t la, lb;
	uint8_t *a = pack(ref, &la), *b = pack(m, &lb);
	if (la != lb || memcmp(a, b, la) != 0)
		fail_msg("decoded differently from protobuf-c (%zu vs %zu "
		         "bytes repacked)",
		    la, lb);
	free(a);
	free(b);
	protobuf_c_message_free_unpacked(ref, NULL);
	if (in_arena)
		asynqi_sarena_msg_free(m);
	else if (arena)
		asynqi_rpc_free_msg(m);
	else
		protobuf_c_message_free_unpacked(m, &ba.pa);
	asynqi_sarena_rele(sa);
	return true;
}

static void
agree_both(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
    size_t len, bool want_ok)
{
	assert_int_equal(agree(desc, data, len, false), want_ok);
	assert_int_equal(agree(desc, data, len, true), want_ok);
}

static Asynq__Codectest__Flat3
flat3_full(void)
{
	Asynq__Codectest__Flat3 f = ASYNQ__CODECTEST__FLAT3__INIT;
	static uint8_t by[] = { 0, 1, 2, 0xff };
	f.i32 = -5;
	f.i64 = INT64_MIN;
	f.u32 = UINT32_MAX;
	f.u64 = UINT64_MAX;
	f.s32 = INT32_MIN;
	f.s64 = -1234567890123LL;
	f.f32 = 0xdeadbeefu;
	f.f64 = 0x0123456789abcdefULL;
	f.sf32 = -7;
	f.sf64 = INT64_MIN + 1;
	f.fl = 1.5f;
	f.db = -2.25;
	f.b = 1;
	f.color = ASYNQ__CODECTEST__COLOR__BLUE;
	f.str = "héllo";
	f.by = (ProtobufCBinaryData){ sizeof(by), by };
	return f;
}

/* Every kind of field, extreme values, read back field by field. */
static void
test_codec_flat3_every_kind(void **state)
{
	(void)state;
	Asynq__Codectest__Flat3 f = flat3_full();
	size_t len;
	uint8_t *b = pack(&f.base, &len);
	agree_both(&asynq__codectest__flat3__descriptor, b, len, true);
	asynqi_budget_alloc ba;
	asynqi_budget_alloc_init(&ba, 1 << 20);
	ProtobufCMessage *m = NULL;
	assert_int_equal(
	    asynqi_rpc_decode_with(&asynq__codectest__flat3__descriptor,
	        codec_for(&asynq__codectest__flat3__descriptor), b, len, &ba.pa,
	        NULL, &m),
	    ASYNQ_OK);
	Asynq__Codectest__Flat3 *g = (Asynq__Codectest__Flat3 *)m;
	assert_int_equal(g->i32, -5);
	assert_true(g->i64 == INT64_MIN);
	assert_true(g->u32 == UINT32_MAX);
	assert_true(g->u64 == UINT64_MAX);
	assert_true(g->s32 == INT32_MIN);
	assert_true(g->s64 == -1234567890123LL);
	assert_true(g->f32 == 0xdeadbeefu);
	assert_true(g->f64 == 0x0123456789abcdefULL);
	assert_int_equal(g->sf32, -7);
	assert_true(g->sf64 == INT64_MIN + 1);
	assert_true(g->fl == 1.5f);
	assert_true(g->db == -2.25);
	assert_int_equal(g->b, 1);
	assert_int_equal(g->color, ASYNQ__CODECTEST__COLOR__BLUE);
	assert_string_equal(g->str, "héllo");
	assert_int_equal(g->by.len, 4);
	assert_memory_equal(g->by.data, f.by.data, 4);
	protobuf_c_message_free_unpacked(m, &ba.pa);
	/* Empty: every default, strings the empty string; also as a NULL
	 * pointer (what an empty payload is on the wire path). */
	agree_both(&asynq__codectest__flat3__descriptor, b, 0, true);
	agree_both(&asynq__codectest__flat3__descriptor, NULL, 0, true);
	free(b);
}

/* proto2: has_ flags set for what was sent, defaults for the rest. */
static void
test_codec_flat2_has_and_defaults(void **state)
{
	(void)state;
	Asynq__Codectest2__Flat2 f = ASYNQ__CODECTEST2__FLAT2__INIT;
	f.has_i64 = 1;
	f.i64 = 42;
	f.has_b = 1;
	f.b = 0;
	f.str = "set";
	size_t len;
	uint8_t *b = pack(&f.base, &len);
	agree_both(&asynq__codectest2__flat2__descriptor, b, len, true);
	asynqi_budget_alloc ba;
	asynqi_budget_alloc_init(&ba, 1 << 20);
	ProtobufCMessage *m = NULL;
	assert_int_equal(
	    asynqi_rpc_decode_with(&asynq__codectest2__flat2__descriptor,
	        codec_for(&asynq__codectest2__flat2__descriptor), b, len,
	        &ba.pa, NULL, &m),
	    ASYNQ_OK);
	Asynq__Codectest2__Flat2 *g = (Asynq__Codectest2__Flat2 *)m;
	assert_true(g->has_i64 && g->i64 == 42);
	assert_true(g->has_b && g->b == 0);
	assert_false(g->has_i32);
	assert_int_equal(g->i32, 7);
	assert_false(g->has_s64);
	assert_false(g->has_db);
	assert_true(g->db == 2.5);
	assert_string_equal(g->str, "set");
	protobuf_c_message_free_unpacked(m, &ba.pa);
	/* Nothing sent: the proto2 defaults ("none", 7, 2.5). */
	agree_both(&asynq__codectest2__flat2__descriptor, b, 0, true);
	free(b);
}

/* Hand-made bytes: the last of a repeated key, an unknown field, a wrong
 * wire type, truncation, a 10-byte varint for an int32, field 0. */
static void
test_codec_edge_bytes(void **state)
{
	(void)state;
	const ProtobufCMessageDescriptor *d =
	    &asynq__codectest__flat3__descriptor;
	/* i64 = 1 then i64 = 2: the last wins. */
	const uint8_t twice[] = { 0x10, 0x01, 0x10, 0x02 };
	agree_both(d, twice, sizeof(twice), true);
	/* str twice: protobuf-c keeps the last. */
	const uint8_t str2[] = { 0x7a, 0x01, 'a', 0x7a, 0x02, 'b', 'c' };
	agree_both(d, str2, sizeof(str2), true);
	/* An unknown field 99 (kept by protobuf-c and repacked, also by
	 * asynqi_msg_pack). */
	const uint8_t unknown[] = { 0x98, 0x06, 0x05, 0x10, 0x03 };
	agree_both(d, unknown, sizeof(unknown), true);
	ProtobufCMessage *u =
	    protobuf_c_message_unpack(d, NULL, sizeof(unknown), unknown);
	assert_non_null(u);
	assert_int_equal(asynqi_msg_size(u), sizeof(unknown));
	uint8_t back[sizeof(unknown)];
	assert_int_equal(asynqi_msg_pack(u, back), sizeof(unknown));
	protobuf_c_message_free_unpacked(u, NULL);
	/* i64 sent length-delimited. */
	const uint8_t wrong_wt[] = { 0x12, 0x01, 0x00 };
	agree(d, wrong_wt, sizeof(wrong_wt), false);
	agree(d, wrong_wt, sizeof(wrong_wt), true);
	/* Truncated varint, truncated length, truncated fixed64. */
	const uint8_t trunc1[] = { 0x10, 0x80 };
	agree_both(d, trunc1, sizeof(trunc1), false);
	const uint8_t trunc2[] = { 0x7a, 0x05, 'a' };
	agree_both(d, trunc2, sizeof(trunc2), false);
	const uint8_t trunc3[] = { 0x41, 1, 2, 3 };
	agree_both(d, trunc3, sizeof(trunc3), false);
	/* int32 -1 as protobuf writes it: ten bytes. */
	const uint8_t neg[] = { 0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
		0xff, 0xff, 0x01 };
	agree_both(d, neg, sizeof(neg), true);
	/* Field number 0. */
	const uint8_t zero[] = { 0x00, 0x01 };
	agree_both(d, zero, sizeof(zero), false);
	/* A message it does not decode directly still decodes. */
	Asynq__Codectest__NotFlat nf = ASYNQ__CODECTEST__NOT_FLAT__INIT;
	int64_t vs[] = { 1, 2, 3 };
	nf.v = 9;
	nf.vs = vs;
	nf.n_vs = 3;
	size_t len;
	uint8_t *b = pack(&nf.base, &len);
	agree_both(&asynq__codectest__not_flat__descriptor, b, len, true);
	free(b);
}

/* Random mutations of encoded messages, both decoders compared. */
static void
test_codec_mutations_agree(void **state)
{
	(void)state;
	uint64_t seed = 0x9e3779b97f4a7c15ULL;
	Asynq__Codectest__Flat3 f3 = flat3_full();
	Asynq__Codectest2__Flat2 f2 = ASYNQ__CODECTEST2__FLAT2__INIT;
	f2.has_i32 = 1;
	f2.i32 = -3;
	f2.str = "two";
	f2.has_by = 1;
	f2.by = (ProtobufCBinaryData){ 3, (uint8_t *)"xyz" };
	size_t l3, l2;
	uint8_t *b3 = pack(&f3.base, &l3), *b2 = pack(&f2.base, &l2);
	size_t ok = 0, bad = 0;
	for (int n = 0; n < 20000; n++) {
		bool three = n % 2 == 0;
		const uint8_t *src = three ? b3 : b2;
		size_t len = three ? l3 : l2;
		uint8_t buf[256];
		memcpy(buf, src, len);
		/* 1-4 random byte changes, sometimes a cut. */
		seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
		int edits = 1 + (int)((seed >> 60) & 3);
		for (int e = 0; e < edits; e++) {
			seed = seed * 6364136223846793005ULL +
			    1442695040888963407ULL;
			buf[(seed >> 33) % len] = (uint8_t)(seed >> 17);
		}
		size_t cut =
		    (seed >> 8) % 4 == 0 ? (seed >> 40) % (len + 1) : len;
		if (agree(three ? &asynq__codectest__flat3__descriptor
		                : &asynq__codectest2__flat2__descriptor,
		        buf, cut, n % 3 == 0))
			ok++;
		else
			bad++;
	}
	/* Both outcomes were exercised. */
	assert_true(ok > 1000);
	assert_true(bad > 1000);
	free(b3);
	free(b2);
}

/* asynqi_msg_size and _pack against protobuf-c's; simple: m is one the
 * quick path packs (flat, no unknown fields). */
static void
same_packing(const ProtobufCMessage *m, bool simple)
{
	size_t want = protobuf_c_message_get_packed_size(m);
	assert_int_equal(asynqi_msg_size(m), want);
	uint8_t *a = malloc(want + 1), *b = malloc(want + 1);
	assert_non_null(a);
	assert_non_null(b);
	assert_int_equal(protobuf_c_message_pack(m, a), want);
	assert_int_equal(asynqi_msg_pack(m, b), want);
	assert_memory_equal(a, b, want);
	/* The generated codec: the same size and bytes, nothing past them. */
	const asynq_rpc_codec *c = codec_for(m->descriptor);
	if (c != NULL && asynqi_codec_packs(c, m)) {
		assert_int_equal(c->size(m), want);
		uint8_t *g = malloc(want + 16);
		assert_non_null(g);
		memset(g, 0xa5, want + 16);
		assert_int_equal(c->pack(m, g), want);
		assert_memory_equal(a, g, want);
		for (size_t k = want; k < want + 16; k++)
			assert_int_equal(g[k], 0xa5);
		free(g);
	}
	/* The one-walk packer: the same bytes when it packs, never a byte
	 * past cap; it refuses a cap under the size (want - 1), may refuse
	 * one at or just over it (it checks for the most a field can
	 * take), packs flat messages given room for the most every field
	 * can take (15 bytes each, at most 16 fields), and refuses others
	 * (protobuf-c packs them). */
	size_t caps[] = { want != 0 ? want - 1 : 0, want, want + 1,
		ASYNQI_SMALL_MSG, want + 16 * 15 };
	for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
		size_t cap = caps[i];
		uint8_t *c = malloc(cap + 16);
		assert_non_null(c);
		memset(c, 0xa5, cap + 16);
		size_t got = asynqi_msg_pack_small(m, c, cap);
		if (got != SIZE_MAX) {
			assert_int_equal(got, want);
			assert_memory_equal(a, c, want);
		}
		for (size_t k = cap; k < cap + 16; k++)
			assert_int_equal(c[k], 0xa5);
		if (i == 0 && want != 0)
			assert_true(got == SIZE_MAX);
		if (i == 4 && simple)
			assert_int_equal(got, want);
		if (!simple)
			assert_true(got == SIZE_MAX);
		free(c);
	}
	free(a);
	free(b);
}

static uint64_t rng = 0x2545f4914f6cdd1dULL;

static uint64_t
next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* A value at an edge half the time, else random bits. */
static uint64_t
edgy(void)
{
	static const uint64_t edges[] = { 0, 1, 0x7f, 0x80, 0x3fff, 0x4000,
		UINT32_MAX, 0x80000000u, INT64_MAX, (uint64_t)INT64_MIN,
		UINT64_MAX };
	uint64_t r = next();
	return r & 1 ? edges[(r >> 1) % (sizeof(edges) / sizeof(edges[0]))]
	             : next();
}

static double
edgy_double(void)
{
	static const double edges[] = { 0.0, -0.0, 1.0, -1.5, 1e300 };
	uint64_t r = next();
	if (r % 5 == 0) {
		uint64_t nan = 0x7ff8000000000001ULL;
		double d;
		memcpy(&d, &nan, 8);
		return d;
	}
	return r & 2 ? edges[(r >> 2) % 5] : (double)(int64_t)next() / 7.0;
}

static void
test_codec_packing_matches_protobuf_c(void **state)
{
	(void)state;
	static const char *strs[] = { "", "a", "none", "héllo wörld",
		"a longer string of more than one hundred and twenty-seven "
		"bytes, so that its length takes two bytes of varint on the "
		"wire as protobuf writes it" };
	uint8_t bytes[200];
	for (size_t i = 0; i < sizeof(bytes); i++)
		bytes[i] = (uint8_t)(i * 7);
	for (int n = 0; n < 20000; n++) {
		Asynq__Codectest__Flat3 f = ASYNQ__CODECTEST__FLAT3__INIT;
		uint64_t mask = next();
		if (mask & 1)
			f.i32 = (int32_t)edgy();
		if (mask & 2)
			f.i64 = (int64_t)edgy();
		if (mask & 4)
			f.u32 = (uint32_t)edgy();
		if (mask & 8)
			f.u64 = edgy();
		if (mask & 16)
			f.s32 = (int32_t)edgy();
		if (mask & 32)
			f.s64 = (int64_t)edgy();
		if (mask & 64)
			f.f32 = (uint32_t)edgy();
		if (mask & 128)
			f.f64 = edgy();
		if (mask & 256)
			f.sf32 = (int32_t)edgy();
		if (mask & 512)
			f.sf64 = (int64_t)edgy();
		if (mask & 1024)
			f.fl = (float)edgy_double();
		if (mask & 2048)
			f.db = edgy_double();
		if (mask & 4096)
			f.b = (protobuf_c_boolean)(next() % 3);
		if (mask & 8192)
			f.color = (Asynq__Codectest__Color)(next() % 4);
		if (mask & 16384)
			f.str = (char *)strs[next() % 5];
		if (mask & 32768)
			f.by = (ProtobufCBinaryData){ next() % sizeof(bytes),
				bytes };
		same_packing(&f.base, true);

		Asynq__Codectest2__Flat2 g = ASYNQ__CODECTEST2__FLAT2__INIT;
		mask = next();
		g.has_i32 = (mask & 1) != 0;
		g.i32 = (int32_t)edgy();
		g.has_i64 = (mask & 2) != 0;
		g.i64 = (int64_t)edgy();
		g.has_s64 = (mask & 4) != 0;
		g.s64 = (int64_t)edgy();
		g.has_b = (mask & 8) != 0;
		g.b = (protobuf_c_boolean)(next() % 2);
		if (mask & 16)
			g.str = (char *)strs[next() % 5];
		else if (mask & 32)
			g.str = NULL;
		g.has_by = (mask & 64) != 0;
		g.by = (ProtobufCBinaryData){ next() % 4, bytes };
		g.has_db = (mask & 128) != 0;
		g.db = edgy_double();
		same_packing(&g.base, true);
	}
	/* Not simple: protobuf-c packs it. */
	Asynq__Codectest__NotFlat nf = ASYNQ__CODECTEST__NOT_FLAT__INIT;
	int64_t vs[] = { 5, -6 };
	nf.v = -1;
	nf.vs = vs;
	nf.n_vs = 2;
	same_packing(&nf.base, false);
}

/* Which messages get codecs, and a codec that does not match protoc-c's
 * descriptor is refused. */
static void
test_codec_generated_usable(void **state)
{
	(void)state;
	const asynq_rpc_method_desc *m3 =
	    asynq__codectest__codec3__asynq_desc.methods;
	const asynq_rpc_method_desc *m2 =
	    asynq__codectest2__codec2__asynq_desc.methods;
	const asynq_rpc_codec *flat3 =
	    m3[ASYNQ__CODECTEST__CODEC3__ASYNQ_METHOD_FLAT].input_codec;
	const asynq_rpc_codec *far3 =
	    m3[ASYNQ__CODECTEST__CODEC3__ASYNQ_METHOD_FAR].input_codec;
	const asynq_rpc_codec *flat2 =
	    m2[ASYNQ__CODECTEST2__CODEC2__ASYNQ_METHOD_FLAT].input_codec;
	assert_true(
	    asynqi_codec_usable(flat3, &asynq__codectest__flat3__descriptor));
	assert_true(
	    asynqi_codec_usable(far3, &asynq__codectest__far3__descriptor));
	assert_true(
	    asynqi_codec_usable(flat2, &asynq__codectest2__flat2__descriptor));
	assert_ptr_equal(
	    m3[ASYNQ__CODECTEST__CODEC3__ASYNQ_METHOD_FLAT].output_codec,
	    flat3);
	/* A repeated field: protobuf-c's. */
	assert_null(m3[ASYNQ__CODECTEST__CODEC3__ASYNQ_METHOD_NOT].input_codec);
	assert_false(
	    asynqi_codec_usable(NULL, &asynq__codectest__not_flat__descriptor));
	/* For another message, or with a field that disagrees. */
	assert_false(
	    asynqi_codec_usable(flat3, &asynq__codectest__far3__descriptor));
	asynq_rpc_codec_field fields[32];
	assert_true(far3->n_fields <= 32);
	memcpy(fields, far3->fields, far3->n_fields * sizeof(*fields));
	asynq_rpc_codec bad = *far3;
	bad.fields = fields;
	assert_true(
	    asynqi_codec_usable(&bad, &asynq__codectest__far3__descriptor));
	fields[2].id = 301;
	assert_false(
	    asynqi_codec_usable(&bad, &asynq__codectest__far3__descriptor));
	fields[2].id = far3->fields[2].id;
	fields[1].type = PROTOBUF_C_TYPE_BYTES;
	assert_false(
	    asynqi_codec_usable(&bad, &asynq__codectest__far3__descriptor));
	fields[1].type = far3->fields[1].type;
	fields[0].label = PROTOBUF_C_LABEL_OPTIONAL;
	assert_false(
	    asynqi_codec_usable(&bad, &asynq__codectest__far3__descriptor));
	bad.fields = far3->fields;
	bad.n_fields--;
	assert_false(
	    asynqi_codec_usable(&bad, &asynq__codectest__far3__descriptor));
}

/* Keys of two to five bytes, through every path. */
static void
test_codec_far_fields(void **state)
{
	(void)state;
	for (int n = 0; n < 2000; n++) {
		Asynq__Codectest__Far3 f = ASYNQ__CODECTEST__FAR3__INIT;
		uint64_t mask = next();
		static uint8_t by[] = { 1, 2, 3 };
		if (mask & 1)
			f.near = (int64_t)edgy();
		if (mask & 2)
			f.s = (char *)"far";
		if (mask & 4)
			f.far = (int32_t)edgy();
		if (mask & 8)
			f.flag = 1;
		if (mask & 16)
			f.d = edgy_double();
		if (mask & 32)
			f.by =
			    (ProtobufCBinaryData){ (size_t)(next() % 4), by };
		same_packing(&f.base, true);
		size_t len;
		uint8_t *b = pack(&f.base, &len);
		agree_both(&asynq__codectest__far3__descriptor, b, len, true);
		/* Cut anywhere: both decoders agree on every prefix. */
		for (size_t cut = 0; cut < len; cut++)
			(void)agree(&asynq__codectest__far3__descriptor, b, cut,
			    cut % 2 == 0);
		free(b);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_codec_flat3_every_kind),
		cmocka_unit_test(test_codec_flat2_has_and_defaults),
		cmocka_unit_test(test_codec_edge_bytes),
		cmocka_unit_test(test_codec_mutations_agree),
		cmocka_unit_test(test_codec_packing_matches_protobuf_c),
		cmocka_unit_test(test_codec_far_fields),
		cmocka_unit_test(test_codec_generated_usable),
	};
	/* Every test twice: the descriptor walk, then the generated codecs. */
	int failed =
	    cmocka_run_group_tests_name("descriptor walk", tests, NULL, NULL);
	gen = true;
	failed +=
	    cmocka_run_group_tests_name("generated codecs", tests, NULL, NULL);
	return failed;
}
