/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target rpc_decode: the envelope codec of framework/rpc/envelope.c on
 * its own, as the server and the client use it, without sockets or threads.
 * Each input is decoded
 *  - as the server does: asynqi_rpc_decode of an asynq.rpc.Request into an
 *    arena with a small budget, then each call's payload, for a method of
 *    asynq.fuzz.Fuzz found by name or by its number in the method table
 *    the live-server targets send (fuzz_method_id_name), into the same
 *    arena, with the method's generated codec where it has one, as the
 *    server does;
 *  - as the client does: as an asynq.rpc.Reply into an arena, then each
 *    result's payload with the counting malloc allocator, for the output
 *    type of the method picked by call_id.
 *
 * Design notes:
 * - Every decode is checked against asynqi_rpc_check_depth and against
 *   protobuf-c decoding the same bytes with malloc (only once the depth
 *   check has passed, so that decode recurses at most
 *   ASYNQI_RPC_MAX_DEPTH levels): a decode that succeeds must repack to the
 *   same bytes as protobuf-c's own result and nest no deeper than the
 *   limit; one that fails as malformed must fail in protobuf-c too;
 *   RESOURCE_EXHAUSTED must come from the depth check or a spent budget;
 *   and an arena never hands out more than its budget.
 * - The bytes a successful decode repacks to must pass the depth check
 *   again: packing never deepens a message.
 * - This file includes framework/rpc/internal.h, which Bazel keeps private
 *   to //framework/rpc; tests/fuzz/run.sh builds it outside Bazel.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "framework/rpc/internal.h"
#include "tests/fuzz/fuzz_service.h"

_Static_assert(FUZZ_MAX_DEPTH == ASYNQI_RPC_MAX_DEPTH,
    "fuzz_service.h copies the decode depth limit");

/* The input's length, for messages. */
static size_t in_len;

static void __attribute__((noreturn, format(printf, 1, 2)))
dz_fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "\nrpc_decode fuzz: ");
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (input of %zu bytes)\n", in_len);
	abort();
}

static uint8_t *
pack(const ProtobufCMessage *m, size_t *len)
{
	*len = protobuf_c_message_get_packed_size(m);
	uint8_t *b = malloc(*len + 1);
	if (b == NULL)
		abort();
	if (protobuf_c_message_pack(m, b) != *len)
		dz_fail("%s packs to a size other than it said",
		    m->descriptor->name);
	return b;
}

/* Checks one decode of data as desc that returned st (and m when OK). */
static void
check_decode(const ProtobufCMessageDescriptor *desc, const uint8_t *data,
    size_t len, asynq_status st, const ProtobufCMessage *m, bool spent_budget)
{
	asynq_status depth =
	    asynqi_rpc_check_depth(desc, data, len, ASYNQI_RPC_MAX_DEPTH);
	if (depth != ASYNQ_OK && depth != ASYNQ_INVALID_ARGUMENT &&
	    depth != ASYNQ_RESOURCE_EXHAUSTED)
		dz_fail("check_depth returned %d", (int)depth);
	/* A message with no message-typed field cannot nest: the codec skips
	 * the depth walk for it, so malformed bytes may instead run protobuf-c
	 * out of budget; either way the decode must fail. */
	bool flat = true;
	for (unsigned i = 0; i < desc->n_fields; i++)
		if (desc->fields[i].type == PROTOBUF_C_TYPE_MESSAGE)
			flat = false;
	if (depth != ASYNQ_OK) {
		if (st != depth &&
		    !(flat && depth == ASYNQ_INVALID_ARGUMENT &&
		        st == ASYNQ_RESOURCE_EXHAUSTED && spent_budget))
			dz_fail("%s: depth check says %d, decode %d",
			    desc->name, (int)depth, (int)st);
		return;
	}
	if (st == ASYNQ_RESOURCE_EXHAUSTED && !spent_budget)
		dz_fail("%s: RESOURCE_EXHAUSTED with budget left", desc->name);
	if (st != ASYNQ_OK && st != ASYNQ_INVALID_ARGUMENT &&
	    st != ASYNQ_RESOURCE_EXHAUSTED)
		dz_fail("%s: decode returned %d", desc->name, (int)st);
	ProtobufCMessage *ref =
	    protobuf_c_message_unpack(desc, NULL, len, data);
	if (st == ASYNQ_INVALID_ARGUMENT && ref != NULL)
		dz_fail("%s: protobuf-c decodes what the codec calls malformed",
		    desc->name);
	if (st == ASYNQ_OK) {
		if (m == NULL || m->descriptor != desc)
			dz_fail("%s: decode OK without a message", desc->name);
		if (ref == NULL)
			dz_fail("%s: decoded with the arena only", desc->name);
		fuzz_walk_stats ws;
		if (fuzz_walk(m, &ws) != 0)
			abort();
		if (ws.depth > ASYNQI_RPC_MAX_DEPTH)
			dz_fail("%s: decoded %llu deep (limit %d)", desc->name,
			    (unsigned long long)ws.depth, ASYNQI_RPC_MAX_DEPTH);
		size_t a_len, r_len;
		uint8_t *a = pack(m, &a_len), *r = pack(ref, &r_len);
		if (a_len != r_len || memcmp(a, r, a_len) != 0)
			dz_fail("%s: the arena decode repacks differently",
			    desc->name);
		if (asynqi_rpc_check_depth(desc, a, a_len,
		        ASYNQI_RPC_MAX_DEPTH) != ASYNQ_OK)
			dz_fail("%s: a decoded message repacks too deep or "
			        "malformed",
			    desc->name);
		free(a);
		free(r);
	}
	if (ref != NULL)
		protobuf_c_message_free_unpacked(ref, NULL);
}

static const asynq_rpc_method_desc *
method_of(const char *name)
{
	for (size_t i = 0; i < FUZZ_SVC->n_methods; i++)
		if (strcmp(FUZZ_SVC->methods[i].full_name, name) == 0)
			return &FUZZ_SVC->methods[i];
	return NULL;
}

/* The generated codec c of desc's messages when the RPC layer would use
 * it, as channels and servers pick it. */
static const asynq_rpc_codec *
usable(const asynq_rpc_codec *c, const ProtobufCMessageDescriptor *desc)
{
	return asynqi_codec_usable(c, desc) ? c : NULL;
}

/* The server's path: envelope, then payloads, into one budgeted arena. */
static void
as_server(const uint8_t *data, size_t len)
{
	asynqi_arena arena;
	asynqi_arena_init(&arena, FUZZ_DECODE_BUDGET);
	ProtobufCMessage *m = NULL;
	asynq_status st = asynqi_rpc_decode(&asynq__rpc__request__descriptor,
	    data, len, &arena.pa, &arena, &m);
	check_decode(&asynq__rpc__request__descriptor, data, len, st, m,
	    arena.exhausted);
	if (st == ASYNQ_OK) {
		const Asynq__Rpc__Request *rq = (const Asynq__Rpc__Request *)m;
		for (size_t i = 0; i < rq->n_calls; i++) {
			const Asynq__Rpc__Call *c = rq->calls[i];
			const char *name = c->method_id != 0
			    ? fuzz_method_id_name(c->method_id)
			    : c->method;
			const asynq_rpc_method_desc *md =
			    name != NULL ? method_of(name) : NULL;
			if (md == NULL)
				continue;
			ProtobufCMessage *in = NULL;
			st = asynqi_rpc_decode_with(md->input,
			    usable(md->input_codec, md->input), c->payload.data,
			    c->payload.len, &arena.pa, &arena, &in);
			check_decode(md->input, c->payload.data, c->payload.len,
			    st, in, arena.exhausted);
		}
	}
	if (arena.used > arena.budget)
		dz_fail("arena handed out %zu of a %zu budget", arena.used,
		    arena.budget);
	asynqi_arena_fini(&arena);
}

/* The client's path: a Reply into an arena, payloads with malloc. */
static void
as_client(const uint8_t *data, size_t len)
{
	asynqi_arena arena;
	asynqi_arena_init(&arena, FUZZ_DECODE_BUDGET);
	ProtobufCMessage *m = NULL;
	asynq_status st = asynqi_rpc_decode(&asynq__rpc__reply__descriptor,
	    data, len, &arena.pa, &arena, &m);
	check_decode(&asynq__rpc__reply__descriptor, data, len, st, m,
	    arena.exhausted);
	if (st == ASYNQ_OK) {
		const Asynq__Rpc__Reply *rep = (const Asynq__Rpc__Reply *)m;
		for (size_t i = 0; i < rep->n_results; i++) {
			const Asynq__Rpc__Result *r = rep->results[i];
			const asynq_rpc_method_desc *md =
			    &FUZZ_SVC
			         ->methods[r->call_id % FUZZ_SVC->n_methods];
			asynqi_budget_alloc ba;
			asynqi_budget_alloc_init(&ba, FUZZ_DECODE_BUDGET);
			ProtobufCMessage *out = NULL;
			st = asynqi_rpc_decode_with(md->output,
			    usable(md->output_codec, md->output),
			    r->payload.data, r->payload.len, &ba.pa, NULL,
			    &out);
			check_decode(md->output, r->payload.data,
			    r->payload.len, st, out, ba.exhausted);
			if (ba.used > ba.budget)
				dz_fail("budget allocator handed out %zu of "
				        "%zu",
				    ba.used, ba.budget);
			asynqi_rpc_free_msg(out);
		}
	}
	asynqi_arena_fini(&arena);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	return 0;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	in_len = len;
	as_server(data, len);
	as_client(data, len);
	return 0;
}
