/* SPDX-License-Identifier: MIT */
/*
 * Internal interface of the RPC layer: the envelope codec shared by the
 * client and the server (decoding into a budgeted arena, a nesting-depth
 * check that runs before protobuf-c's recursive decoder), client metadata
 * chains, status mapping and clocks. Framing is in frame.h, connections in
 * conn.h.
 */
#ifndef ASYNQI_RPC_INTERNAL_H
#define ASYNQI_RPC_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <stdatomic.h>

#include <nng/nng.h>
#include <protobuf-c/protobuf-c.h>

#include "asynq/rpc.h"
#include "frame.h"
#include "proto/asynq/rpc.pb-c.h"

/* Deepest message nesting a decode accepts (protobuf's own default). */
#define ASYNQI_RPC_MAX_DEPTH 100

/* A bump allocator with a byte budget, for decoding one request: every
 * allocation protobuf-c makes comes from it, frees are no-ops, and the whole
 * arena goes at once. Exceeding the budget makes allocations fail, so the
 * decode fails instead of growing without bound. */
typedef struct asynqi_arena_chunk asynqi_arena_chunk;
typedef struct asynqi_arena {
	ProtobufCAllocator pa; /* allocator_data points back here */
	/* The free room of the first chunk that the budget leaves: an
	 * allocation that fits is cut here (asynqi_arena_alloc, inline).
	 * Both 16-aligned; NULL before the first chunk. */
	unsigned char *cur, *lim;
	unsigned char *cur0; /* the start of cur's chunk */
	asynqi_arena_chunk *chunks;
	size_t budget;  /* bytes the arena may hand out */
	size_t used;    /* bytes handed out so far */
	size_t first;   /* bytes of the first chunk (0: 4 KiB); see
	                   asynqi_arena_hint */
	bool exhausted; /* an allocation hit the budget */
	/* Set: the next allocation gets a header holding this pointer (see
	 * asynqi_sarena); `tagged` is what that allocation returned. */
	void *tag;
	void *tagged;
} asynqi_arena;

/* A reference-counted arena for the messages of one reply: each message
 * decoded into it holds a reference, dropped by asynqi_sarena_msg_free, so
 * a batch's results cost no malloc each and go when the last is freed. */
typedef struct asynqi_sarena {
	asynqi_arena a;
	atomic_long refs;
} asynqi_sarena;

/* asynqi_sarena_alloc makes one (one reference, the caller's); NULL
 * without memory. */
asynqi_sarena *asynqi_sarena_alloc(size_t budget);

/* asynqi_sarena_rele drops a reference. Any thread. */
void asynqi_sarena_rele(asynqi_sarena *s);

/* asynqi_sarena_decode decodes a desc message into s; on success the
 * message holds a reference on s and is freed with asynqi_sarena_msg_free.
 * Errors as asynqi_rpc_decode. Not on a coroutine stack. */
asynq_status asynqi_sarena_decode(asynqi_sarena *s,
    const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t len,
    ProtobufCMessage **out);

/* asynqi_sarena_decode_with is asynqi_sarena_decode with usable codec c of
 * desc (may be NULL) tried first. */
asynq_status asynqi_sarena_decode_with(asynqi_sarena *s,
    const ProtobufCMessageDescriptor *desc, const asynq_rpc_codec *c,
    const uint8_t *data, size_t len, ProtobufCMessage **out);

/* asynqi_sarena_msg_free frees a message of asynqi_sarena_decode (an item's
 * free function). Any thread. */
void asynqi_sarena_msg_free(void *m);

/* asynqi_arena_init prepares an arena that may hand out `budget` bytes. */
void asynqi_arena_init(asynqi_arena *a, size_t budget);

/* asynqi_arena_fini frees everything the arena handed out. */
void asynqi_arena_fini(asynqi_arena *a);

/* asynqi_arena_alloc_slow is asynqi_arena_alloc for what does not fit in
 * the current chunk's room, or for a tagged allocation. */
void *asynqi_arena_alloc_slow(asynqi_arena *a, size_t size);

/* asynqi_arena_alloc returns `size` bytes (16-aligned) or NULL when over the
 * budget or out of memory. */
/* asynqi_arena_take cuts n bytes (a multiple of 16, at most lim - cur)
 * off the current chunk's room. */
static inline void *
asynqi_arena_take(asynqi_arena *a, size_t n)
{
	void *p = a->cur;
	a->cur += n;
	a->used += n;
	return p;
}

static inline void *
asynqi_arena_alloc(asynqi_arena *a, size_t size)
{
	/* lim - cur is a multiple of 16 within the budget, so a size that
	 * fits still fits rounded up. */
	if (__builtin_expect(
	        a->tag == NULL && size - 1 < (size_t)(a->lim - a->cur), 1))
		return asynqi_arena_take(a, (size + 15) & ~(size_t)15);
	return asynqi_arena_alloc_slow(a, size);
}

/* asynqi_arena_hint is the first chunk for an arena that will hold what a
 * finished one (whose `used` it is given) held: the power of two that
 * holds it, from 4 KiB to 64 KiB (under malloc's mmap threshold), so a
 * steady load makes one chunk per arena. */
size_t asynqi_arena_hint(size_t used);

/* asynqi_arena_owns_slow is asynqi_arena_owns past the current chunk. */
bool asynqi_arena_owns_slow(const asynqi_arena *a, const void *p);

/* asynqi_arena_owns says whether p points into memory a handed out. */
static inline bool
asynqi_arena_owns(const asynqi_arena *a, const void *p)
{
	/* Mostly in what the current chunk handed out: [its data, cur). */
	uintptr_t at = (uintptr_t)p;
	if (a->cur != NULL && at < (uintptr_t)a->cur &&
	    at >= (uintptr_t)a->cur0)
		return true;
	return asynqi_arena_owns_slow(a, p);
}

/* asynqi_rpc_check_depth walks the wire bytes of a message of type desc
 * without recursion: INVALID_ARGUMENT for malformed framing,
 * RESOURCE_EXHAUSTED for nesting deeper than max_depth, else OK. */
asynq_status asynqi_rpc_check_depth(const ProtobufCMessageDescriptor *desc,
    const uint8_t *data, size_t len, size_t max_depth);

/* asynqi_codec_usable says whether generated codec c (may be NULL) codes
 * messages of type desc as protoc-c's descriptor lays them out: the same
 * fields, numbers, types and labels, none in a oneof. Checked once per
 * method by whoever keeps it; a codec that fails it is not used. */
bool asynqi_codec_usable(const asynq_rpc_codec *c,
    const ProtobufCMessageDescriptor *desc);

/* asynqi_msg_size and asynqi_msg_pack are protobuf_c_message_get_packed_size
 * and _pack (the same bytes), quicker for small messages of scalars and
 * strings. */
size_t asynqi_msg_size(const ProtobufCMessage *m);
size_t asynqi_msg_pack(const ProtobufCMessage *m, uint8_t *out);

/* asynqi_codec_packs says whether usable codec c (may be NULL) packs m: m
 * is its type with no unknown fields. */
static inline bool
asynqi_codec_packs(const asynq_rpc_codec *c, const ProtobufCMessage *m)
{
	return c != NULL && m->descriptor == c->desc &&
	    m->n_unknown_fields == 0;
}

/* asynqi_msg_pack_small packs a small message in one walk of its fields
 * (no size pass first): the length written to out, or SIZE_MAX when m is
 * not one the quick path packs or might not fit in cap bytes (nothing
 * useful is left in out then; size and pack it as above). */
#define ASYNQI_SMALL_MSG 128
size_t asynqi_msg_pack_small(const ProtobufCMessage *m, uint8_t *out,
    size_t cap);

/* How a message is packed into a frame: its length is known first, then
 * its bytes go in place. With the method's codec when it packs the
 * message; else a small message packed once into `small` and copied; else
 * protobuf-c's size and pack. */
typedef struct asynqi_packing {
	const asynq_rpc_codec *codec; /* packs it, or NULL */
	bool in_small;                /* small holds its bytes */
	uint8_t small[ASYNQI_SMALL_MSG];
} asynqi_packing;

/* asynqi_packing_size chooses how m is packed (with usable codec c, which
 * may be NULL, when it packs m) and returns m's length. */
static inline size_t
asynqi_packing_size(asynqi_packing *k, const asynq_rpc_codec *c,
    const ProtobufCMessage *m)
{
	k->in_small = false;
	if (asynqi_codec_packs(c, m)) {
		k->codec = c;
		return c->size(m);
	}
	k->codec = NULL;
	size_t n = asynqi_msg_pack_small(m, k->small, sizeof(k->small));
	if (n != SIZE_MAX) {
		k->in_small = true;
		return n;
	}
	return asynqi_msg_size(m);
}

/* asynqi_packing_put writes m's len bytes (asynqi_packing_size's) at
 * out. */
static inline void
asynqi_packing_put(const asynqi_packing *k, const ProtobufCMessage *m,
    uint8_t *out, size_t len)
{
	if (k->codec != NULL)
		k->codec->pack(m, out);
	else if (k->in_small)
		memcpy(out, k->small, len);
	else
		asynqi_msg_pack(m, out);
}

/* asynqi_rpc_decode checks depth and decodes data as a desc message with
 * allocator pa (NULL for malloc). On failure returns INVALID_ARGUMENT, or
 * RESOURCE_EXHAUSTED when `arena` (may be NULL) ran out of budget or the
 * message nests too deep. Any thread; never on a coroutine stack. */
asynq_status asynqi_rpc_decode(const ProtobufCMessageDescriptor *desc,
    const uint8_t *data, size_t len, ProtobufCAllocator *pa,
    asynqi_arena *arena, ProtobufCMessage **out);

/* asynqi_rpc_decode_rest is asynqi_rpc_decode, after a codec gave up on
 * the bytes when `after_codec` (then without the quick path for small
 * messages, which the codec stands for). */
asynq_status asynqi_rpc_decode_rest(const ProtobufCMessageDescriptor *desc,
    bool after_codec, const uint8_t *data, size_t len, ProtobufCAllocator *pa,
    asynqi_arena *arena, ProtobufCMessage **out);

/* asynqi_rpc_decode_with is asynqi_rpc_decode with usable codec c of desc
 * (may be NULL) tried first, inline. */
static inline asynq_status
asynqi_rpc_decode_with(const ProtobufCMessageDescriptor *desc,
    const asynq_rpc_codec *c, const uint8_t *data, size_t len,
    ProtobufCAllocator *pa, asynqi_arena *arena, ProtobufCMessage **out)
{
	/* Without an allocator (malloc), protobuf-c's path decodes. */
	bool tried = c != NULL && pa != NULL;
	if (tried) {
		ProtobufCMessage *m = c->unpack(pa, data, len);
		if (m != NULL) {
			*out = m;
			return ASYNQ_OK;
		}
		if (arena != NULL && arena->exhausted)
			return ASYNQ_RESOURCE_EXHAUSTED;
	}
	return asynqi_rpc_decode_rest(desc, tried, data, len, pa, arena, out);
}

/* A malloc-backed allocator that counts bytes against a budget; what it
 * allocates may be freed with protobuf_c_message_free_unpacked(m, NULL). */
typedef struct asynqi_budget_alloc {
	ProtobufCAllocator pa;
	size_t budget, used;
	bool exhausted;
} asynqi_budget_alloc;

/* asynqi_budget_alloc_init prepares a counting allocator. */
void asynqi_budget_alloc_init(asynqi_budget_alloc *b, size_t budget);

/* asynqi_buf_message appends m packed as a length-delimited field. */
void asynqi_buf_message(asynqi_buf *b, uint32_t field,
    const ProtobufCMessage *m);

/* One node of a client metadata chain (metadata.c); immutable once pushed. */
typedef struct asynqi_md_node asynqi_md_node;
struct asynqi_md_node {
	atomic_long refs;
	asynqi_md_node *prev; /* holds a reference */
	size_t depth;         /* nodes in the chain from here */
	size_t wire;          /* bytes of the chain as Metadata fields */
	char *key;
	size_t len;
	unsigned char val[];
};

/* The scoped value holding the current chain. */
extern const asynq_scoped asynqi_md_key;

/* asynqi_md_hold adds a reference (NULL is returned as is). */
asynqi_md_node *asynqi_md_hold(asynqi_md_node *n);

/* asynqi_md_rele drops a reference. Any thread. */
void asynqi_md_rele(asynqi_md_node *n);

/* Set by the admin library when it is linked (framework/admin, always
 * linked into //framework:asynq): opens an endpoint at url reporting on s
 * and rt (err says why not), and closes one. NULL otherwise. */
extern asynq_status (*asynqi_admin_for_server)(asynq_rpc_server *s,
    asynq_runtime *rt, const char *url, void **handle, char *err,
    size_t err_len);
extern void (*asynqi_admin_for_server_close)(void *handle);

/* asynqi_rpc_handler_cache returns the slot of the request cache of the
 * server handler the current task runs under (NULL outside handlers) and
 * the server's bounds for it. Scheduler thread. */
asynq_rpc_cache **asynqi_rpc_handler_cache(const asynq_rpc_cache_cfg **cfg);

/* asynqi_rpc_cache_rele drops a reference on a request cache; NULL is
 * ignored. Scheduler thread. */
void asynqi_rpc_cache_rele(asynq_rpc_cache *c);

/* asynqi_rpc_call_now is asynq_rpc_call past the request cache: req has
 * been checked against m. */
asynq_future *asynqi_rpc_call_now(asynq_rpc_channel *ch,
    const asynq_rpc_method_desc *m, const ProtobufCMessage *req);

/* asynqi_rpc_cache_call answers a call of a method that uses the request
 * cache: from the current one, or through asynqi_rpc_call_now (and then
 * remembered). Without a request cache here it is asynqi_rpc_call_now. */
asynq_future *asynqi_rpc_cache_call(asynq_rpc_channel *ch,
    const asynq_rpc_method_desc *m, const ProtobufCMessage *req);

/* asynqi_rpc_channel_caches says whether m's calls through ch use the
 * request cache, and whether their errors are kept (*errors). */
bool asynqi_rpc_channel_caches(const asynq_rpc_channel *ch,
    const asynq_rpc_method_desc *m, bool *errors);

/* asynqi_rpc_channel_id is ch's process-unique id; asynqi_rpc_count_cached
 * counts a call of ch answered from a request cache. */
uint64_t asynqi_rpc_channel_id(const asynq_rpc_channel *ch);
void asynqi_rpc_count_cached(asynq_rpc_channel *ch);

/* asynqi_md_equal says whether two chains say the same (each push makes a
 * node of its own, so equal chains are often different nodes). */
bool asynqi_md_equal(const asynqi_md_node *a, const asynqi_md_node *b);

/* asynqi_md_hash is a hash of a chain that equal chains share. */
uint64_t asynqi_md_hash(const asynqi_md_node *md);

/* asynqi_md_write appends the chain as repeated Metadata field `field`,
 * innermost push first. */
void asynqi_md_write(asynqi_buf *b, uint32_t field, const asynqi_md_node *md);

/* asynqi_rpc_status_from_nng maps an nng error to a status. */
asynq_status asynqi_rpc_status_from_nng(int rv);

/* asynqi_rpc_status_from_wire clamps a status number off the wire. */
asynq_status asynqi_rpc_status_from_wire(int32_t s);

/* asynqi_realtime_ns returns CLOCK_REALTIME in ns since the epoch. */
int64_t asynqi_realtime_ns(void);

/* asynqi_rpc_nng_why turns an nng error into words for a message. */
const char *asynqi_rpc_nng_why(int rv);

/* asynqi_rpc_free_msg frees a message decoded with the malloc allocator;
 * the free function items are given. */
void asynqi_rpc_free_msg(void *m);

/* asynqi_md_make returns a new chain node (key, val[0..len)) on top of
 * prev, holding a reference on prev; NULL without memory. */
asynqi_md_node *asynqi_md_make(asynqi_md_node *prev, const char *key,
    const void *val, size_t len);

/* ---- Interceptors (intercept.c; each side's state in client.c and
 * server.c) ---------------------------------------------------------------- */

/* What both sides keep per intercepted call: the first member of each
 * side's state, which asynq_rpc_call_info.impl_ points at. */
typedef struct asynqi_icall {
	bool in_before; /* a before hook runs: metadata may be added */
	char *reject;   /* asynq_rpc_call_reject's text, malloc'd */
} asynqi_icall;

/* asynqi_icall_reject_msg writes the message of a rejection by interceptor
 * `icpt` with st into buf and returns it: the reject text, or "METHOD:
 * rejected by interceptor NAME". */
const char *asynqi_icall_reject_msg(const asynq_rpc_call_info *c,
    const asynq_rpc_interceptor *icpt, asynq_status st, char *buf, size_t cap);

/* A method's authorization policy, resolved at listen (set: it has one). */
typedef struct asynqi_policy {
	bool set;
	const char *const *peers;
	size_t n_peers;
	const char *const *scopes;
	size_t n_scopes;
} asynqi_policy;

/* Bytes of scopes and of the reason a token verifier may write. */
#define ASYNQI_SCOPES_CAP ASYNQ_RPC_SCOPES_MAX
#define ASYNQI_WHY_CAP 200

/* A request's memory of the last token it verified (tokens are usually
 * the request's shared metadata, so one check serves all its calls). */
typedef struct asynqi_tokcache {
	bool used;
	const void *tok;
	size_t len;
	asynq_status st;
	char scopes[ASYNQI_SCOPES_CAP];
	char why[ASYNQI_WHY_CAP];
} asynqi_tokcache;

/* A trace as a scope holds it: the ids, and the traceparent of calls made
 * in it, formatted on first use, with the metadata chain last made of it
 * (node, a reference: `traceparent` on top of base, which node holds), so
 * calls made under one chain share one node and one request's metadata.
 * Used by the scope's thread only; whoever ends the scope drops node. */
typedef struct asynqi_trace {
	asynq_rpc_trace t;
	bool formatted;
	char tp[56];
	asynqi_md_node *node;
	const asynqi_md_node *base;
} asynqi_trace;

/* The current task's trace (a scoped value holding an asynqi_trace *). */
extern const asynq_scoped asynqi_trace_key;

/* What a request remembers of the last traceparent it parsed (calls of a
 * request usually share one). */
typedef struct asynqi_trace_memo {
	const void *last; /* the value, in the request's arena; NULL: none */
	size_t len;
	bool ok;
	asynq_rpc_trace t;
} asynqi_trace_memo;

/* asynqi_trace_new_id fills n bytes with a fresh random, non-zero id. */
void asynqi_trace_new_id(uint8_t *id, size_t n);

/* Server side of an intercepted call (server.c): its metadata as the
 * handler will see it, adding to it, the slot of the trace the handler
 * runs in (set by the trace interceptor), and the method's policy with
 * what checks tokens and the request's token memory (NULL tc without
 * memory). */
const void *asynqi_srv_call_metadata(const asynq_rpc_call_info *c,
    const char *key, size_t *len);
asynq_status asynqi_srv_call_add_metadata(asynq_rpc_call_info *c,
    const char *key, const void *val, size_t len);
asynqi_trace *asynqi_srv_call_trace(asynq_rpc_call_info *c);
asynqi_trace_memo *asynqi_srv_call_trace_memo(asynq_rpc_call_info *c);
const asynqi_policy *asynqi_srv_call_policy(const asynq_rpc_call_info *c,
    asynq_rpc_token_verify_fn *fn, void **arg, asynqi_tokcache **tc);

/* Client side (client.c), as the server's; and the chain a call is made
 * under, which asynqi_cli_call_use_chain replaces with n (a chain on top
 * of it; n is held). */
const void *asynqi_cli_call_metadata(const asynq_rpc_call_info *c,
    const char *key, size_t *len);
asynq_status asynqi_cli_call_add_metadata(asynq_rpc_call_info *c,
    const char *key, const void *val, size_t len);
const asynqi_md_node *asynqi_cli_call_chain(const asynq_rpc_call_info *c);
void asynqi_cli_call_use_chain(asynq_rpc_call_info *c, asynqi_md_node *n);

#endif /* ASYNQI_RPC_INTERNAL_H */
