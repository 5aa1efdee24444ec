/* SPDX-License-Identifier: MIT */
/*
 * Writes the seed corpora of the RPC fuzzers: `make_corpus DIR` replaces the
 * files of DIR/rpc_server, DIR/rpc_decode and DIR/rpc_stream
 * (tests/fuzz/corpus in the repository; run it with tests/fuzz/run.sh
 * --corpus). Every seed is made by encoding asynq.rpc.Request (or Reply)
 * messages with protobuf-c, or by hand where the point is a malformed
 * encoding, and nothing is random but for a fixed-seed generator, so the
 * output is the same on every run (//tests/fuzz:corpus_up_to_date checks
 * that the committed files are it).
 *
 * The request seeds (rpc_server, rpc_decode): requests of 1, 2 and 100
 * calls to every method; methods by number (the table of
 * fuzz_method_id_name) and unknown ones; metadata; past and future
 * deadlines and timeouts; call counts at the limits; payloads nested 99,
 * 100, 101 and 200 deep; a budget-busting request; oversized ones (over
 * max_msg_bytes, and over the frame limit, which closes the connection);
 * truncated varints and huge declared lengths; groups; random bytes; and,
 * for rpc_decode only, replies as a client decodes them.
 *
 * The stream seeds (rpc_stream; a mode byte, then the bytes, as
 * fuzz_rpc_stream.c reads them): a valid handshake and requests, by name
 * and by number; wrong and partial prefaces; truncated headers and frames;
 * huge length claims; lengths at the limits and one past them; unknown and
 * server-only frame types; PINGs; METHODS frames malformed, at and over
 * the table's limit; pipelined and duplicate requests; each way of
 * chunking and of ending.
 */
#include <errno.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proto/asynq/rpc.pb-c.h"
#include "tests/fuzz/fuzz_service.h"

#define MAX_CALLS 300

static char server_dir[4096], decode_dir[4096], stream_dir[4096];
static size_t total_bytes, total_files;

static void
die(const char *what)
{
	perror(what);
	exit(1);
}

static void
write_file(const char *dir, const char *name, const void *data, size_t len)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	FILE *f = fopen(path, "wb");
	if (f == NULL || (len > 0 && fwrite(data, 1, len, f) != len) ||
	    fclose(f) != 0)
		die(path);
	total_bytes += len;
	total_files++;
}

/* A seed of both targets. */
static void
seed(const char *name, const void *data, size_t len)
{
	write_file(server_dir, name, data, len);
	write_file(decode_dir, name, data, len);
}

/* A seed of rpc_decode only (replies). */
static void
seed_decode(const char *name, const void *data, size_t len)
{
	write_file(decode_dir, name, data, len);
}

/* Makes dir if needed and removes its files. */
static void
clear_dir(const char *dir)
{
	if (mkdir(dir, 0755) != 0 && errno != EEXIST)
		die(dir);
	DIR *d = opendir(dir);
	if (d == NULL)
		die(dir);
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		char path[4200];
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (unlink(path) != 0)
			die(path);
	}
	closedir(d);
}

/* ---- Encoding helpers ---------------------------------------------------- */

typedef struct buf {
	uint8_t *p;
	size_t len, cap;
} buf;

static void
buf_put(buf *b, const void *p, size_t n)
{
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < b->len + n)
			cap *= 2;
		if ((b->p = realloc(b->p, cap)) == NULL)
			die("realloc");
		b->cap = cap;
	}
	if (n > 0)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void
buf_byte(buf *b, uint8_t c)
{
	buf_put(b, &c, 1);
}

static void
buf_varint(buf *b, uint64_t v)
{
	do {
		buf_byte(b, (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0)));
		v >>= 7;
	} while (v != 0);
}

/* Appends field `field` as length-delimited bytes. */
static void
buf_ld(buf *b, unsigned field, const void *p, size_t n)
{
	buf_varint(b, (uint64_t)field << 3 | 2);
	buf_varint(b, n);
	buf_put(b, p, n);
}

static buf
pack_msg(const ProtobufCMessage *m)
{
	buf b = { 0 };
	size_t n = protobuf_c_message_get_packed_size(m);
	b.p = malloc(n + 1);
	if (b.p == NULL)
		die("malloc");
	b.len = b.cap = protobuf_c_message_pack(m, b.p);
	return b;
}

/* A request under construction: calls point into static storage. */
typedef struct req {
	Asynq__Rpc__Request r;
	Asynq__Rpc__Call call[MAX_CALLS];
	Asynq__Rpc__Call *callp[MAX_CALLS];
	buf payload[MAX_CALLS];
	Asynq__Rpc__Metadata md[8];
	Asynq__Rpc__Metadata *mdp[8];
} req;

static void
req_init(req *q, uint64_t request_id)
{
	memset(q, 0, sizeof(*q));
	asynq__rpc__request__init(&q->r);
	q->r.calls = q->callp;
	q->r.metadata = q->mdp;
	q->r.request_id = request_id;
}

/* Adds a call of `method` with payload p (taken over) and the next id. */
static void
req_call(req *q, const char *method, buf p)
{
	size_t i = q->r.n_calls++;
	if (i >= MAX_CALLS)
		abort();
	asynq__rpc__call__init(&q->call[i]);
	q->call[i].method = (char *)method;
	q->call[i].call_id = 1000 + i;
	q->payload[i] = p;
	q->call[i].payload.data = p.p;
	q->call[i].payload.len = p.len;
	q->callp[i] = &q->call[i];
}

static void
req_meta(req *q, const char *key, const void *value, size_t len)
{
	size_t i = q->r.n_metadata++;
	asynq__rpc__metadata__init(&q->md[i]);
	q->md[i].key = (char *)key;
	q->md[i].value.data = (uint8_t *)value;
	q->md[i].value.len = len;
	q->mdp[i] = &q->md[i];
}

/* Packs the request and frees its payloads. */
static buf
req_pack(req *q)
{
	buf b = pack_msg(&q->r.base);
	for (size_t i = 0; i < q->r.n_calls; i++)
		free(q->payload[i].p);
	return b;
}

static void
req_seed(req *q, const char *name)
{
	buf b = req_pack(q);
	seed(name, b.p, b.len);
	free(b.p);
}

static buf
num(int64_t v)
{
	Asynq__Fuzz__Num n = ASYNQ__FUZZ__NUM__INIT;
	n.v = v;
	return pack_msg(&n.base);
}

/* A Tree whose `child` chain is depth messages deep (the root is 1),
 * encoded by hand from the innermost node out. */
static buf
chain(size_t depth, unsigned field)
{
	buf in = { 0 };
	buf_byte(&in, 0x18); /* v = 1 */
	buf_byte(&in, 0x01);
	for (size_t i = 1; i < depth; i++) {
		buf out = { 0 };
		buf_ld(&out, field, in.p, in.len);
		buf_byte(&out, 0x18);
		buf_varint(&out, i + 1);
		free(in.p);
		in = out;
	}
	return in;
}

/* A Tree with a bit of everything: a leaf with every field, a oneof set
 * three times (the last wins), map entries and repeated children. */
static buf
tree_full(void)
{
	Asynq__Fuzz__Leaf leaf = ASYNQ__FUZZ__LEAF__INIT;
	leaf.i32 = -1;
	leaf.i64 = INT64_MIN;
	leaf.u32 = UINT32_MAX;
	leaf.u64 = UINT64_MAX;
	leaf.s32 = INT32_MIN;
	leaf.s64 = INT64_MAX;
	leaf.f32 = 7;
	leaf.f64 = 8;
	leaf.sf32 = -9;
	leaf.sf64 = -10;
	leaf.fl = 1.5f;
	leaf.db = -2.25;
	leaf.b = 1;
	leaf.s = "leaf";
	leaf.by = (ProtobufCBinaryData){ 3, (uint8_t *)"\0\1\2" };
	leaf.kind = ASYNQ__FUZZ__KIND__KIND_BIG;
	int64_t packed[] = { 1, -1, 300, INT64_MAX };
	leaf.n_packed = 4;
	leaf.packed = packed;
	char *strs[] = { "a", "", "ccc" };
	leaf.n_strs = 3;
	leaf.strs = strs;
	Asynq__Fuzz__Kind kinds[] = { ASYNQ__FUZZ__KIND__KIND_ONE, 77 };
	leaf.n_kinds = 2;
	leaf.kinds = kinds;
	uint32_t fixed[] = { 1, 2 };
	leaf.n_fixed = 2;
	leaf.fixed = fixed;
	ProtobufCBinaryData blobs[] = { { 1, (uint8_t *)"x" }, { 0, NULL } };
	leaf.n_blobs = 2;
	leaf.blobs = blobs;

	Asynq__Fuzz__Tree kid[2] = { ASYNQ__FUZZ__TREE__INIT,
		ASYNQ__FUZZ__TREE__INIT };
	kid[0].v = 10;
	kid[1].v = 11;
	Asynq__Fuzz__Tree *kids[] = { &kid[0], &kid[1] };
	Asynq__Fuzz__Tree__NamedEntry ne = ASYNQ__FUZZ__TREE__NAMED_ENTRY__INIT;
	ne.key = "k";
	ne.value = &kid[0];
	Asynq__Fuzz__Tree__NamedEntry *nes[] = { &ne };
	Asynq__Fuzz__Tree__LeavesEntry le =
	    ASYNQ__FUZZ__TREE__LEAVES_ENTRY__INIT;
	le.key = 5;
	le.value = &leaf;
	Asynq__Fuzz__Tree__LeavesEntry *les[] = { &le };
	Asynq__Fuzz__Legacy leg = ASYNQ__FUZZ__LEGACY__INIT;
	leg.id = 1;
	leg.name = "legacy";

	Asynq__Fuzz__Tree t = ASYNQ__FUZZ__TREE__INIT;
	t.v = 1;
	t.leaf = &leaf;
	t.n_children = 2;
	t.children = kids;
	t.n_named = 1;
	t.named = nes;
	t.n_leaves = 1;
	t.leaves = les;
	t.legacy = &leg;
	t.pick_case = ASYNQ__FUZZ__TREE__PICK_ALT;
	t.alt = &kid[1];
	buf b = pack_msg(&t.base);
	/* Set the oneof twice more: name, then other (a leaf). */
	buf_ld(&b, 5, "nm", 2);
	buf_ld(&b, 7, "\x08\x01", 2);
	/* A second occurrence of `leaf`, which protobuf-c merges. */
	buf_ld(&b, 4, "\x10\x05\x72\x01\x7a", 5);
	return b;
}

static buf
leaf_full(void)
{
	Asynq__Fuzz__Leaf leaf = ASYNQ__FUZZ__LEAF__INIT;
	leaf.i32 = 5;
	leaf.s = "mirror";
	leaf.by = (ProtobufCBinaryData){ 4, (uint8_t *)"\xff\x00\xfe\x01" };
	int64_t packed[] = { 5, 6, 7 };
	leaf.n_packed = 3;
	leaf.packed = packed;
	char *strs[] = { "s1", "s2" };
	leaf.n_strs = 2;
	leaf.strs = strs;
	leaf.db = 3.5;
	return pack_msg(&leaf.base);
}

/* A Legacy whose `next` chain is depth deep. */
static buf
legacy_chain(size_t depth, int with_id)
{
	buf in = { 0 };
	if (with_id) {
		buf_byte(&in, 0x08);
		buf_byte(&in, 0x01);
	}
	for (size_t i = 1; i < depth; i++) {
		buf out = { 0 };
		if (with_id) {
			buf_byte(&out, 0x08);
			buf_varint(&out, i + 1);
		}
		buf_ld(&out, 6, in.p, in.len);
		free(in.p);
		in = out;
	}
	return in;
}

static buf
raw(const void *p, size_t n)
{
	buf b = { 0 };
	buf_put(&b, p, n);
	return b;
}

#define M(name) (FUZZ_METHOD(name)->full_name)

/* ---- Seeds --------------------------------------------------------------- */

static void
seeds_valid(void)
{
	req q;

	req_init(&q, 1);
	req_call(&q, M(ECHO), chain(3, 1));
	req_seed(&q, "call-1-echo");

	req_init(&q, 2);
	req_call(&q, M(SUM), num(1));
	req_call(&q, M(COUNT), tree_full());
	req_seed(&q, "call-2-sum-count");

	/* 100 calls over every method, in turn. */
	req_init(&q, 3);
	for (size_t i = 0; i < 100; i++) {
		switch (i % 9) {
		case 0:
			req_call(&q, M(ECHO), chain(1 + i % 7, 1));
			break;
		case 1:
			req_call(&q, M(COUNT),
			    i % 2 ? tree_full() : chain(4, 2));
			break;
		case 2:
			req_call(&q, M(MIRROR), leaf_full());
			break;
		case 3:
			req_call(&q, M(FAIL), num((int64_t)i));
			break;
		case 4:
			req_call(&q, M(SLEEP), num((int64_t)i));
			break;
		case 5:
			req_call(&q, M(SUM), num(i == 95 ? 13 : (int64_t)i));
			break;
		case 6:
			req_call(&q, M(WRONG), num((int64_t)i));
			break;
		case 7:
			req_call(&q, M(OLD), legacy_chain(3, 1));
			break;
		default:
			req_call(&q, "asynq.fuzz.Absent/Gone", num(1));
			break;
		}
	}
	req_seed(&q, "call-100-mixed");

	req_init(&q, 4);
	req_call(&q, "asynq.fuzz.Absent/Gone", num(1));
	req_call(&q, "", raw(NULL, 0));
	req_call(&q, "asynq.fuzz.Fuzz/Nope", num(2));
	req_call(&q, "asynq.fuzz.Fuzz/Echo\xff", num(3));
	req_call(&q, M(SUM), num(4));
	req_seed(&q, "unknown-methods");

	req_init(&q, 5);
	req_meta(&q, "tag", "hello", 5);
	req_meta(&q, "tag", "second", 6);
	req_meta(&q, "empty", NULL, 0);
	req_meta(&q, "", "nul\0inside", 10);
	req_call(&q, M(SLEEP), num(1));
	req_call(&q, M(SLEEP), num(2));
	req_seed(&q, "metadata");

	req_init(&q, 6);
	req_meta(&q, "tag", "a\0b", 3);
	req_call(&q, M(SLEEP), num(0));
	req_seed(&q, "metadata-nul");

	req_init(&q, 7);
	q.r.deadline_unix_ns = 1;
	req_call(&q, M(FAIL), num(3));
	req_call(&q, M(SLEEP), num(1));
	req_call(&q, M(SUM), num(1));
	req_call(&q, M(COUNT), chain(2, 1));
	req_seed(&q, "deadline-past");

	req_init(&q, 8);
	q.r.deadline_unix_ns = INT64_C(4102444800) * 1000000000; /* 2100 */
	req_call(&q, M(SLEEP), num(3));
	req_call(&q, M(FAIL), num(2));
	req_seed(&q, "deadline-future");

	req_init(&q, 9);
	q.r.deadline_unix_ns = -1;
	req_call(&q, M(SLEEP), num(1));
	req_seed(&q, "deadline-negative");

	req_init(&q, 10);
	req_call(&q, M(SUM), num(-1));
	req_call(&q, M(SUM), num(5));
	req_call(&q, M(SUM), num(13));
	req_call(&q, M(SUM), num(INT64_MIN));
	req_call(&q, M(WRONG), num(1));
	req_call(&q, M(WRONG), num(2));
	req_call(&q, M(FAIL), num(-1));
	req_seed(&q, "batch-errors");

	req_init(&q, 11);
	req_call(&q, M(SUM), num(1));
	req_call(&q, M(ECHO), chain(2, 1));
	q.call[1].call_id = q.call[0].call_id; /* the same id twice */
	req_seed(&q, "duplicate-call-ids");

	req_init(&q, 12);
	req_call(&q, M(OLD), legacy_chain(4, 1));
	req_call(&q, M(OLD), legacy_chain(2, 0)); /* required id missing */
	req_seed(&q, "proto2-required");

	req_init(&q, 13);
	req_seed(&q, "no-calls");
	/* Keys as protobuf-c reads them: a 6-byte key is malformed, an
	 * overlong key of field 0 is an unknown field (both once told apart
	 * wrongly by the server's own envelope parser). */
	static const uint8_t six_byte_key[] = { 0x8a, 0x80, 0x80, 0x80, 0x80,
		0x00, 0x00 };
	seed("key-six-bytes", six_byte_key, sizeof(six_byte_key));
	static const uint8_t key_field_0[] = { 0x8a, 0x80, 0x0a, 0x00, 0x80,
		0x00, 0x00 };
	seed("key-overlong-field-0", key_field_0, sizeof(key_field_0));
	/* A call whose bool own_metadata comes length-delimited, which
	 * protobuf-c takes (true: the length byte is set). */
	static const uint8_t bool_len[] = { 0x0a, 0x05, 0x28, 0x01, 0x32, 0x01,
		0x00 };
	seed("call-bool-length-delimited", bool_len, sizeof(bool_len));

	/* Per-call metadata shadows the request's. */
	req_init(&q, 14);
	req_meta(&q, "tag", "request", 7);
	req_call(&q, M(SLEEP), num(0));
	req_call(&q, M(SLEEP), num(1));
	Asynq__Rpc__Metadata cmd = ASYNQ__RPC__METADATA__INIT;
	cmd.key = "tag";
	cmd.value = (ProtobufCBinaryData){ 4, (uint8_t *)"call" };
	Asynq__Rpc__Metadata *cmdp[] = { &cmd };
	q.call[0].n_metadata = 1;
	q.call[0].metadata = cmdp;
	req_seed(&q, "metadata-per-call");

	/* Duplicate detection: a request with a client id and a
	 * non-idempotent call, the same again, a resend of it, and a resend
	 * of one the server never saw. */
	for (int k = 0; k < 3; k++) {
		static const char *const names[] = { "dedup-1-first",
			"dedup-2-again", "dedup-3-resend" };
		req_init(&q, 50);
		q.r.client_id = 0xc0ffee;
		q.r.attempt = k == 2 ? 1 : 0;
		req_call(&q, M(FAIL), num(4));
		req_call(&q, M(SLEEP), num(0));
		req_call(&q, M(SUM), num(2));
		req_seed(&q, names[k]);
	}
	req_init(&q, 51);
	q.r.client_id = 0xdecaf;
	q.r.attempt = 3;
	req_call(&q, M(WRONG), num(1));
	req_call(&q, M(SLEEP), num(0));
	req_seed(&q, "dedup-resend-unknown");

	/* Methods by number: every number of the table, one past it, and a
	 * number with a name that disagrees (the number wins). */
	req_init(&q, 60);
	for (uint32_t id = 1; id <= FUZZ_METHOD_IDS + 1; id++) {
		const char *name = fuzz_method_id_name(id);
		const asynq_rpc_method_desc *md = NULL;
		for (size_t k = 0; name != NULL && k < FUZZ_SVC->n_methods; k++)
			if (strcmp(FUZZ_SVC->methods[k].full_name, name) == 0)
				md = &FUZZ_SVC->methods[k];
		buf p = md == NULL                                ? num(1)
		    : md->input == &asynq__fuzz__tree__descriptor ? chain(2, 1)
		    : md->input == &asynq__fuzz__leaf__descriptor ? leaf_full()
		    : md->input == &asynq__fuzz__legacy__descriptor
		    ? legacy_chain(2, 1)
		    : num(id);
		req_call(&q, "", p);
		q.call[q.r.n_calls - 1].method_id = id;
	}
	req_call(&q, M(SUM), num(3));
	q.call[q.r.n_calls - 1].method_id =
	    ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_SLEEP + 1;
	req_seed(&q, "method-ids");

	/* Relative timeouts: one long past every exchange, and 1 µs. */
	req_init(&q, 61);
	q.r.timeout_us = 60u * 1000 * 1000;
	req_call(&q, M(SLEEP), num(2));
	req_call(&q, M(FAIL), num(5));
	req_call(&q, M(SUM), num(1));
	req_seed(&q, "timeout-future");
	req_init(&q, 62);
	q.r.timeout_us = 1;
	req_call(&q, M(SLEEP), num(3));
	req_call(&q, M(COUNT), chain(2, 1));
	req_seed(&q, "timeout-1us");
	/* A timeout wins over the legacy absolute deadline. */
	req_init(&q, 63);
	q.r.timeout_us = 60u * 1000 * 1000;
	q.r.deadline_unix_ns = 1;
	req_call(&q, M(SLEEP), num(1));
	req_seed(&q, "timeout-over-deadline");

	/* A call whose metadata is its own: no fallback to the request's. */
	req_init(&q, 64);
	req_meta(&q, "tag", "request", 7);
	req_call(&q, M(SLEEP), num(0));
	req_call(&q, M(SLEEP), num(1));
	q.call[0].own_metadata = 1;
	req_seed(&q, "metadata-own");
}

static void
seeds_limits(void)
{
	req q;
	/* Calls per request: FUZZ_MAX_CALLS - 1, at, + 1 (most of them of an
	 * unknown method, which never runs, so the in-flight limit stays
	 * clear); runnable calls in flight: FUZZ_MAX_INFLIGHT, + 1. */
	static const size_t counts[] = { FUZZ_MAX_CALLS - 1, FUZZ_MAX_CALLS,
		FUZZ_MAX_CALLS + 1, FUZZ_MAX_INFLIGHT, FUZZ_MAX_INFLIGHT + 1 };
	static const char *const names[] = { "calls-limit-minus-1",
		"calls-limit", "calls-limit-plus-1", "inflight-limit",
		"inflight-limit-plus-1" };
	for (size_t k = 0; k < 5; k++) {
		req_init(&q, 20 + k);
		for (size_t i = 0; i < counts[k]; i++)
			req_call(&q, k >= 3 || i < 100 ? M(SUM) : "x/y",
			    num((int64_t)i));
		req_seed(&q, names[k]);
	}

	/* Nesting: a Count payload 99, 100, 101 and 200 deep (the limit is
	 * FUZZ_MAX_DEPTH with the Request itself not counted). */
	static const size_t depths[] = { 99, 100, 101, 200 };
	for (size_t k = 0; k < 4; k++) {
		char name[64];
		req_init(&q, 30 + k);
		req_call(&q, M(COUNT), chain(depths[k], 1));
		snprintf(name, sizeof(name), "deep-%zu", depths[k]);
		req_seed(&q, name);
	}
	/* Deep through the oneof, the repeated field and proto2. */
	req_init(&q, 35);
	req_call(&q, M(COUNT), chain(200, 6));
	req_call(&q, M(COUNT), chain(200, 2));
	req_call(&q, M(OLD), legacy_chain(200, 1));
	req_seed(&q, "deep-200-oneof-repeated-proto2");
	/* Echo replies as deep as it is asked: the server packs it. */
	req_init(&q, 36);
	req_call(&q, M(ECHO), chain(99, 1));
	req_seed(&q, "deep-99-echo");

	/* Over the decode budget: thousands of empty metadata entries cost
	 * ~70 bytes of arena each for 2 bytes of input. */
	req_init(&q, 37);
	req_call(&q, M(SUM), num(1));
	buf b = pack_msg(&q.r.base);
	for (size_t i = 0; i < 4500; i++)
		buf_put(&b, "\x1a\x00", 2);
	seed("decode-budget", b.p, b.len);
	free(b.p);
	/* Over the budget too, ending in a key of field number 0 spelt in
	 * four bytes, which protobuf-c takes: the refusal must still carry
	 * the request's id. */
	b = raw("\x20\x07", 2);
	for (size_t i = 0; i < 4500; i++)
		buf_put(&b, "\x1a\x00", 2);
	buf_put(&b, "\x80\x80\x80\x00\x7e", 5);
	seed("decode-budget-field-0-key", b.p, b.len);
	free(b.p);
	for (size_t i = 0; i < q.r.n_calls; i++)
		free(q.payload[i].p);

	/* Just over max_msg_bytes: a Mirror call with a big bytes field
	 * (rpc_server only: for the codec it is just a big message). */
	req_init(&q, 38);
	buf big = { 0 };
	uint8_t *blob = calloc(FUZZ_MAX_MSG_BYTES, 1);
	if (blob == NULL)
		die("calloc");
	buf_ld(&big, 15, blob, FUZZ_MAX_MSG_BYTES);
	free(blob);
	req_call(&q, M(MIRROR), big);
	b = pack_msg(&q.r.base);
	write_file(server_dir, "over-max-msg-bytes", b.p, b.len);
	free(b.p);
	free(big.p);

	/* Over the frame limit: the server closes the connection unanswered
	 * (longer than libFuzzer's -max_len, so replayed only). */
	req_init(&q, 39);
	big = (buf){ 0 };
	blob = calloc(FUZZ_MAX_FRAME, 1);
	if (blob == NULL)
		die("calloc");
	buf_ld(&big, 15, blob, FUZZ_MAX_FRAME);
	free(blob);
	req_call(&q, M(MIRROR), big);
	b = pack_msg(&q.r.base);
	write_file(server_dir, "over-frame-limit", b.p, b.len);
	free(b.p);
	free(big.p);
}

static void
seeds_malformed(void)
{
	seed("empty", NULL, 0);
	/* Truncated varints: a tag, a length, a deadline. */
	seed("truncated-tag", "\x80", 1);
	seed("truncated-length", "\x0a\xff", 2);
	seed("truncated-deadline", "\x10\xff\xff\xff", 4);
	/* An 11-byte varint (protobuf allows 10). */
	seed("varint-11-bytes",
	    "\x10\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 12);
	/* A 6-byte tag: the depth check reads it, protobuf-c does not. */
	seed("tag-6-bytes", "\x8a\x80\x80\x80\x80\x00\x00", 7);
	/* Huge declared lengths: of a call, of a payload inside a call. */
	seed("huge-call-length", "\x0a\xff\xff\xff\xff\x0f\x08\x01", 8);
	buf call = { 0 };
	buf_ld(&call, 1, "asynq.fuzz.Fuzz/Sum", 19);
	buf_byte(&call, 0x1a); /* payload, 2^31 - 1 bytes declared */
	buf_put(&call, "\xff\xff\xff\xff\x07", 5);
	buf_byte(&call, 0x08);
	buf b = { 0 };
	buf_ld(&b, 1, call.p, call.len);
	free(call.p);
	seed("huge-payload-length", b.p, b.len);
	free(b.p);
	/* A well-formed envelope whose payload is truncated. */
	req q;
	req_init(&q, 40);
	req_call(&q, M(COUNT), raw("\x0a\x05\x18\x01", 4));
	req_call(&q, M(SUM), raw("\x08", 1));
	req_seed(&q, "truncated-payloads");
	/* Groups (wire types 3 and 4) and wire types 6 and 7. */
	seed("group-in-request", "\x1b\x08\x01\x1c", 4);
	req_init(&q, 41);
	req_call(&q, M(COUNT), raw("\x0b\x18\x01\x0c", 4));
	req_call(&q, M(SUM), raw("\x0e\x00", 2));
	req_call(&q, M(SUM), raw("\x0f\x00", 2));
	req_seed(&q, "group-in-payload");
	/* Unknown fields in the request and in a payload; a field number 0
	 * (malformed). */
	req_init(&q, 42);
	req_call(&q, M(COUNT), raw("\xa8\x1f\x01\x18\x02", 5));
	b = pack_msg(&q.r.base);
	buf_put(&b, "\xf8\x07\x05\x92\x08\x01\x00", 7);
	seed("unknown-fields", b.p, b.len);
	buf_put(&b, "\x02\x00", 2);
	seed("field-zero", b.p, b.len);
	free(b.p);
	free(q.payload[0].p);
	/* A call field with the wrong wire type (varint, not a message). */
	seed("call-as-varint", "\x08\x01", 2);
	/* A string method that is not UTF-8 and embeds a NUL. */
	seed("method-binary", "\x0a\x08\x0a\x04\xff\x00\xfe\x01\x10\x05", 10);

	/* Random bytes from a fixed-seed xorshift. */
	uint64_t x = 0x9e3779b97f4a7c15u;
	static const size_t sizes[] = { 16, 256, 2048 };
	for (size_t k = 0; k < 3; k++) {
		uint8_t r[2048];
		for (size_t i = 0; i < sizes[k]; i++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			r[i] = (uint8_t)x;
		}
		char name[32];
		snprintf(name, sizeof(name), "random-%zu", sizes[k]);
		seed(name, r, sizes[k]);
	}
}

/* Replies, as a client decodes them (rpc_decode only). */
static void
seeds_replies(void)
{
	Asynq__Rpc__Result res[3] = { ASYNQ__RPC__RESULT__INIT,
		ASYNQ__RPC__RESULT__INIT, ASYNQ__RPC__RESULT__INIT };
	buf p0 = num(42), p1 = chain(5, 1);
	/* call_id % n_methods picks the method whose output is decoded. */
	res[0].call_id = ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_SUM;
	res[0].payload = (ProtobufCBinaryData){ p0.len, p0.p };
	res[1].call_id = ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_ECHO;
	res[1].payload = (ProtobufCBinaryData){ p1.len, p1.p };
	res[2].call_id = ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_FAIL;
	res[2].status = ASYNQ_NOT_FOUND;
	res[2].message = "failed 4";
	Asynq__Rpc__Result *rp[3] = { &res[0], &res[1], &res[2] };
	Asynq__Rpc__Reply rep = ASYNQ__RPC__REPLY__INIT;
	rep.n_results = 3;
	rep.results = rp;
	rep.request_id = 9;
	buf b = pack_msg(&rep.base);
	seed_decode("reply-3-results", b.p, b.len);
	free(b.p);
	free(p0.p);
	free(p1.p);

	Asynq__Rpc__Reply err = ASYNQ__RPC__REPLY__INIT;
	err.status = ASYNQ_RESOURCE_EXHAUSTED;
	err.message = "request has 300 calls; limit 256";
	err.request_id = 10;
	b = pack_msg(&err.base);
	seed_decode("reply-request-error", b.p, b.len);
	free(b.p);

	buf deep = chain(200, 1);
	res[0].call_id = ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_ECHO;
	res[0].payload = (ProtobufCBinaryData){ deep.len, deep.p };
	rep.n_results = 1;
	b = pack_msg(&rep.base);
	seed_decode("reply-deep-200", b.p, b.len);
	free(b.p);
	free(deep.p);
}

/* ---- Stream seeds (rpc_stream) --------------------------------------------
 */

#define PREFACE "asynq/1\n"

static void
stream_seed(const char *name, unsigned mode, const buf *b)
{
	buf s = { 0 };
	buf_byte(&s, (uint8_t)mode);
	buf_put(&s, b->p, b->len);
	write_file(stream_dir, name, s.p, s.len);
	free(s.p);
}

static void
frame_hdr(buf *b, uint8_t type, uint32_t len)
{
	uint8_t h[5] = { type, (uint8_t)(len >> 24), (uint8_t)(len >> 16),
		(uint8_t)(len >> 8), (uint8_t)len };
	buf_put(b, h, sizeof(h));
}

static void
frame(buf *b, uint8_t type, const void *p, size_t n)
{
	frame_hdr(b, type, (uint32_t)n);
	buf_put(b, p, n);
}

/* A REQUEST frame of q (its payloads freed). */
static void
frame_req(buf *b, req *q)
{
	buf r = req_pack(q);
	frame(b, 1, r.p, r.len);
	free(r.p);
}

/* A METHODS frame naming the table of fuzz_method_id_name, then `extra`
 * empty names. */
static void
frame_methods(buf *b, size_t extra)
{
	buf m = { 0 };
	for (uint32_t id = 1; id <= FUZZ_METHOD_IDS; id++) {
		const char *name = fuzz_method_id_name(id);
		buf_ld(&m, 7, name, strlen(name));
	}
	for (size_t i = 0; i < extra; i++)
		buf_ld(&m, 7, NULL, 0);
	frame(b, 7, m.p, m.len);
	free(m.p);
}

/* A request of calls by name and by number, and a PING. */
static void
stream_mixed(buf *b, uint64_t request_id)
{
	req q;
	req_init(&q, request_id);
	req_call(&q, M(SUM), num(1));
	req_call(&q, "", chain(3, 1));
	q.call[1].method_id = ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_COUNT + 1;
	req_call(&q, "", num(1));
	q.call[2].method_id = ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_SLEEP + 1;
	req_call(&q, "", num(1));
	q.call[3].method_id = FUZZ_N_METHODS + 1; /* a method it lacks */
	req_call(&q, "", num(1));
	q.call[4].method_id = FUZZ_METHOD_IDS + 1; /* not in the table */
	req_meta(&q, "tag", "stream", 6);
	frame_req(b, &q);
	frame(b, 5, "pingpong", 8);
}

/* n requests of one Sleep call each, by number. */
static void
stream_sleeps(buf *b, size_t n, uint64_t first_id)
{
	for (size_t i = 0; i < n; i++) {
		req q;
		req_init(&q, first_id + i);
		req_call(&q, "", num((int64_t)i));
		q.call[0].method_id = ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_SLEEP + 1;
		frame_req(b, &q);
	}
}

static void
seeds_stream(void)
{
	buf b = { 0 };
	req q;

	/* A whole conversation in the input's bytes, preface included. */
	buf_put(&b, PREFACE, 8);
	frame_methods(&b, 0);
	stream_mixed(&b, 1);
	stream_seed("handshake-request", FUZZ_STREAM_RAW, &b);
	/* The same, cut every way. */
	stream_seed("chunks-1-byte", FUZZ_STREAM_RAW | FUZZ_STREAM_CHUNKS(1),
	    &b);
	stream_seed("chunks-random", FUZZ_STREAM_RAW | FUZZ_STREAM_CHUNKS(6),
	    &b);
	stream_seed("chunks-frames", FUZZ_STREAM_RAW | FUZZ_STREAM_CHUNKS(7),
	    &b);
	b.len = 0;

	/* The harness does the handshake. */
	stream_mixed(&b, 2);
	stream_seed("methods-then-request", FUZZ_STREAM_METHODS, &b);
	stream_seed("hello-then-request", FUZZ_STREAM_HELLO, &b);
	stream_seed("chunks-5-bytes",
	    FUZZ_STREAM_METHODS | FUZZ_STREAM_CHUNKS(3), &b);
	b.len = 0;
	stream_seed("empty", FUZZ_STREAM_PREFACE, &b);
	write_file(stream_dir, "no-mode-byte", NULL, 0);

	/* Prefaces: another protocol's, another version's, half of one,
	 * none. */
	buf_put(&b, "GET / HTTP/1.1\r\nHost: asynq\r\n\r\n", 31);
	stream_seed("bad-preface-http1", FUZZ_STREAM_RAW, &b);
	b.len = 0;
	buf_put(&b, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 24);
	stream_seed("bad-preface-http2", FUZZ_STREAM_RAW, &b);
	b.len = 0;
	buf_put(&b, "asynq/2\n", 8);
	stream_mixed(&b, 3);
	stream_seed("bad-preface-version", FUZZ_STREAM_RAW, &b);
	b.len = 0;
	buf_put(&b, "asyn", 4);
	stream_seed("partial-preface", FUZZ_STREAM_RAW, &b);
	b.len = 0;
	stream_mixed(&b, 4);
	stream_seed("no-preface", FUZZ_STREAM_RAW, &b);
	b.len = 0;

	/* Cut short: a header, a body. */
	stream_mixed(&b, 5);
	buf_put(&b, "\x01\x00\x00", 3);
	stream_seed("truncated-header", FUZZ_STREAM_METHODS, &b);
	b.len = 0;
	frame(&b, 5, "x", 1);
	frame_hdr(&b, 1, 100);
	buf_put(&b, "\x0a\x05\x10\x01\x18\x02", 6);
	stream_seed("truncated-frame", FUZZ_STREAM_PREFACE, &b);
	b.len = 0;

	/* Length claims far over the limit: the connection closes at the
	 * header, without allocating what it claims. */
	frame(&b, 5, "before", 6);
	frame_hdr(&b, 1, 1u << 30);
	buf_put(&b, "\x0a\x00", 2);
	stream_seed("huge-length-1gib", FUZZ_STREAM_PREFACE, &b);
	b.len = 0;
	frame_hdr(&b, 5, UINT32_MAX);
	stream_seed("huge-length-ping", FUZZ_STREAM_PREFACE, &b);
	b.len = 0;
	frame_hdr(&b, 200, 0x7fffffff);
	stream_seed("huge-length-unknown-type", FUZZ_STREAM_PREFACE, &b);
	b.len = 0;

	/* Lengths at the limits (padded with zeros by the harness) and one
	 * past them. */
	static const struct {
		const char *name;
		uint32_t len;
		unsigned mode;
	} at[] = {
		{ "length-max-msg", FUZZ_MAX_MSG_BYTES, FUZZ_STREAM_PAD },
		{ "length-max-msg-plus-1", FUZZ_MAX_MSG_BYTES + 1,
		    FUZZ_STREAM_PAD },
		{ "length-frame-limit", FUZZ_MAX_FRAME, FUZZ_STREAM_PAD },
		{ "length-frame-limit-plus-1", FUZZ_MAX_FRAME + 1,
		    FUZZ_STREAM_PAD },
		{ "length-frame-limit-ping", FUZZ_MAX_FRAME,
		    FUZZ_STREAM_PAD | FUZZ_STREAM_CHUNKS(5) },
	};
	for (size_t i = 0; i < sizeof(at) / sizeof(at[0]); i++) {
		frame_hdr(&b, i == 4 ? 5 : 1, at[i].len);
		stream_seed(at[i].name, FUZZ_STREAM_METHODS | at[i].mode, &b);
		b.len = 0;
	}
	/* A real request over max_msg_bytes. */
	req_init(&q, 6);
	buf big = { 0 };
	uint8_t *blob = calloc(FUZZ_MAX_MSG_BYTES, 1);
	if (blob == NULL)
		die("calloc");
	buf_ld(&big, 15, blob, FUZZ_MAX_MSG_BYTES);
	free(blob);
	req_call(&q, M(MIRROR), big);
	frame_req(&b, &q);
	frame(&b, 5, "after", 5);
	stream_seed("request-over-max-msg", FUZZ_STREAM_METHODS, &b);
	b.len = 0;

	/* Types the server skips: unknown ones, and the server's own. */
	frame(&b, 0, "zero", 4);
	frame(&b, 8, "eight", 5);
	frame(&b, 200, NULL, 0);
	frame(&b, 255, "\xff\xff", 2);
	frame(&b, 5, "x", 1);
	stream_seed("unknown-types", FUZZ_STREAM_PREFACE, &b);
	b.len = 0;
	frame(&b, 2, "\x20\x01", 2);
	frame(&b, 3, "\x08\x01", 2);
	frame(&b, 4, "\x08\x01", 2);
	frame(&b, 6, "pong", 4);
	stream_mixed(&b, 7);
	stream_seed("server-frame-types", FUZZ_STREAM_METHODS, &b);
	b.len = 0;

	/* PINGs: empty, 8 bytes, longer (the PONG carries the first 8). */
	frame(&b, 5, NULL, 0);
	frame(&b, 5, "12345678", 8);
	frame(&b, 5, "123456789", 9);
	uint8_t hundred[100];
	for (size_t i = 0; i < sizeof(hundred); i++)
		hundred[i] = (uint8_t)i;
	frame(&b, 5, hundred, sizeof(hundred));
	stream_seed("pings", FUZZ_STREAM_PREFACE, &b);
	b.len = 0;

	/* METHODS frames: malformed (the connection closes: later numbers
	 * would be wrong), twice (the table grows), at the table's limit
	 * and one name past it. */
	frame(&b, 7,
	    "\x3a\x05"
	    "ab",
	    4);
	stream_mixed(&b, 8);
	stream_seed("methods-malformed", FUZZ_STREAM_PREFACE, &b);
	b.len = 0;
	frame(&b, 7, "\x0b\x0c", 2);
	stream_seed("methods-group", FUZZ_STREAM_PREFACE, &b);
	b.len = 0;
	frame_methods(&b, 0);
	buf two = { 0 };
	buf_ld(&two, 7, M(SUM), strlen(M(SUM)));
	buf_ld(&two, 7, "nope", 4);
	buf_ld(&two, 1, "ignored", 7);
	frame(&b, 7, two.p, two.len);
	free(two.p);
	req_init(&q, 9);
	req_call(&q, "", num(1));
	q.call[0].method_id = FUZZ_METHOD_IDS + 1; /* Sum */
	req_call(&q, "", num(1));
	q.call[1].method_id = FUZZ_METHOD_IDS + 2; /* nope */
	frame_req(&b, &q);
	stream_seed("methods-twice", FUZZ_STREAM_PREFACE, &b);
	b.len = 0;
	for (int over = 0; over < 2; over++) {
		frame_methods(&b,
		    FUZZ_MAX_METHOD_NAMES - FUZZ_METHOD_IDS + (size_t)over);
		req_init(&q, 10);
		req_call(&q, "", chain(1, 1));
		q.call[0].method_id = FUZZ_METHOD_IDS; /* Echo */
		req_call(&q, "", num(1));
		q.call[1].method_id = FUZZ_MAX_METHOD_NAMES;
		frame_req(&b, &q);
		stream_seed(over ? "methods-over-limit" : "methods-at-limit",
		    FUZZ_STREAM_PREFACE, &b);
		b.len = 0;
	}

	/* Pipelining: more requests at once than a connection may have in
	 * flight before the server stops reading it. */
	stream_sleeps(&b, 300, 100);
	stream_seed("pipelined-300", FUZZ_STREAM_METHODS, &b);
	b.len = 0;
	/* Replies flushed while the reader closes the connection (a length
	 * claim over the limit after 50 quick requests): a race the
	 * connection layer once lost, leaving the server unable to close. */
	for (size_t i = 0; i < 50; i++) {
		req_init(&q, 200 + i);
		req_call(&q, M(SUM), num(1));
		frame_req(&b, &q);
	}
	frame_hdr(&b, 1, UINT32_MAX);
	stream_seed("replies-racing-close", FUZZ_STREAM_METHODS, &b);
	b.len = 0;
	/* Duplicate detection: the same request twice in a row. */
	for (int k = 0; k < 2; k++) {
		req_init(&q, 5);
		q.r.client_id = 0xfeed;
		req_call(&q, M(FAIL), num(2));
		req_call(&q, M(SLEEP), num(1));
		frame_req(&b, &q);
	}
	stream_seed("dedup-pair", FUZZ_STREAM_METHODS, &b);
	b.len = 0;

	/* Endings with answers in flight. */
	stream_sleeps(&b, 8, 400);
	stream_seed("end-shut-in-flight",
	    FUZZ_STREAM_METHODS | FUZZ_STREAM_SHUT, &b);
	stream_seed("end-close-in-flight",
	    FUZZ_STREAM_METHODS | FUZZ_STREAM_CLOSE, &b);
	stream_seed("end-canary-first",
	    FUZZ_STREAM_METHODS | FUZZ_STREAM_CANARY_FIRST, &b);
	b.len = 0;

	/* Random bytes after the preface. */
	uint64_t x = 0x2545f4914f6cdd1du;
	for (size_t i = 0; i < 256; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		buf_byte(&b, (uint8_t)x);
	}
	stream_seed("random-256", FUZZ_STREAM_PREFACE, &b);
	free(b.p);
}

int
main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
		return 2;
	}
	if (mkdir(argv[1], 0755) != 0 && errno != EEXIST)
		die(argv[1]);
	snprintf(server_dir, sizeof(server_dir), "%s/rpc_server", argv[1]);
	snprintf(decode_dir, sizeof(decode_dir), "%s/rpc_decode", argv[1]);
	snprintf(stream_dir, sizeof(stream_dir), "%s/rpc_stream", argv[1]);
	clear_dir(server_dir);
	clear_dir(decode_dir);
	clear_dir(stream_dir);
	seeds_valid();
	seeds_limits();
	seeds_malformed();
	seeds_replies();
	seeds_stream();
	printf("%zu files, %zu bytes\n", total_files, total_bytes);
	return 0;
}
