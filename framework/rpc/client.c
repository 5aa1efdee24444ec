/* SPDX-License-Identifier: MIT */
/*
 * The RPC client: a channel is one nng REQ socket dialed to every replica;
 * each scheduler thread that calls through it gets its own batch backend, so
 * the calls the tasks of one worker make join one batch, and a flush sends
 * the batch as one or more multi-call requests.
 *
 * Design notes:
 * - A thread finds its backend for a channel in a small thread-local table
 *   keyed by the channel's unique id (never by address, which may be reused
 *   after a free; stale entries are never matched). The table is freed at
 *   thread exit.
 * - Backends are reference counted: the channel holds one, every batch one.
 *   So a batch finished after the channel is freed (its calls CANCELLED) can
 *   still reach its backend's vtable.
 * - asynq_rpc_call packs the request at call time into the batch's call
 *   list. A flush splits the batch into requests of at most max_calls calls,
 *   each with its own nng context and aio, defers the batch, and sends them
 *   all. Each request's aio callback (an nng thread) walks send -> receive,
 *   decodes the reply, sets its items by call_id (which is the item's index
 *   in the batch), and the last of the batch's requests calls
 *   asynq_batch_complete. Nothing touches a request or the batch after
 *   that call except through the channel, which outlives every request in
 *   flight (`inflight`, waited for by asynq_rpc_channel_free).
 * - Request timeouts come from the earliest call deadline of the request;
 *   nng's resend timer is off so a slow call is never sent twice by timer.
 *   With the timer off, nng fails a request whose connection drops with
 *   NNG_ECONNRESET instead of resending it. The client then resends it
 *   itself (at most MAX_RESENDS times, within the deadline) with the same
 *   client_id and request_id and Request.attempt set: the server answers a
 *   copy of a request it remembers with the original's reply, and runs only
 *   the idempotent calls of a resend it does not remember (the others fail
 *   with ABORTED), so every call still runs at most once. The resend is the
 *   original bytes with an `attempt` field appended (protobuf keeps the last
 *   value of a scalar field), kept as a copy while the request is in flight.
 * - Requests are split at max_calls calls and at max_msg_bytes bytes; a
 *   call too big for a request of its own fails with RESOURCE_EXHAUSTED
 *   and is never sent.
 * - Metadata (asynq_rpc_metadata_push) is a scoped value holding an
 *   immutable, reference-counted chain of key/value nodes; a call holds a
 *   reference to the chain it was made under. A request whose calls all
 *   share one chain carries it once in Request.metadata, else each call
 *   carries its own, so calls with different metadata still share a batch.
 * - Lock order: the channel's mutex is a leaf.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "asynq/batch.h"
#include "internal.h"

#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/tls/tls.h>

#define DEFAULT_MAX_CALLS 1000
#define DEFAULT_DEADLINE_MS 10000
#define DEFAULT_MAX_MSG (4u << 20)
/* Resends of one request after lost connections. */
#define MAX_RESENDS 3
/* Upper bound of the bytes a Request spends outside its calls and hoisted
 * metadata: deadline (1 + 10), request_id (1 + 10), client_id (1 + 8),
 * attempt (1 + 5). */
#define REQUEST_OVERHEAD 37

typedef struct chan_backend chan_backend;

struct asynq_rpc_channel {
	const asynq_rpc_service_desc *svc;
	uint64_t id;
	nng_socket sock;
	size_t max_calls;
	uint32_t default_deadline_ms;
	size_t max_msg_bytes;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	chan_backend *backends; /* under mu */
	long inflight;          /* requests in flight, under mu */
	atomic_bool closing;
	atomic_int pipes; /* connected pipes */
	uint64_t client_id;
	atomic_uint_fast64_t next_request_id;
	atomic_uint_fast64_t calls, requests, failures, resends;
	nng_tls_config *tls;
};

struct chan_backend {
	asynq_backend base;
	asynq_rpc_channel *ch;
	atomic_int refs;
	chan_backend *next; /* channel's list */
};

/* One node of a metadata chain; immutable once pushed. */
typedef struct md_node md_node;
struct md_node {
	atomic_long refs;
	md_node *prev; /* holds a reference */
	size_t depth;  /* nodes in the chain from here */
	size_t wire;   /* bytes of the chain as Metadata fields */
	char *key;
	size_t len;
	unsigned char val[];
};

/* One call in a batch, packed at call time. */
typedef struct call_rec {
	const asynq_rpc_method_desc *m;
	uint8_t *buf;
	size_t len;
	int64_t deadline;
	md_node *md; /* holds a reference, or NULL */
	size_t wire; /* bytes the call adds to a Request, with metadata */
	bool failed; /* failed at flush, not sent */
} call_rec;

typedef struct rpc_batch rpc_batch;

enum { SUB_SEND, SUB_RECV };

/* One nng request of a flushed batch: calls [start, start + n). */
typedef struct sub_req {
	rpc_batch *b;
	nng_ctx ctx;
	nng_aio *aio;
	size_t start, n;
	int64_t deadline;
	int state;
	bool ctx_open;
	unsigned attempt; /* resends so far */
	nng_msg *copy;    /* the request as first sent, for resends */
	/* Receive hand-off: the callback and the return of nng_ctx_recv
	 * each drop one; the last handles the reply (nng may complete the
	 * receive before the call returns). */
	atomic_int gate;
} sub_req;

struct rpc_batch {
	asynq_batch base;
	chan_backend *be;
	call_rec *recs;
	size_t n_recs, cap_recs;
	sub_req *subs;
	size_t n_subs;
	atomic_size_t pending; /* requests not yet finished */
};

static atomic_uint_fast64_t next_channel_id = 1;

/* ---- Metadata ---------------------------------------------------------- */

static const asynq_scoped md_key = ASYNQ_SCOPED_INIT("asynq.rpc.metadata", 0);

static size_t
varint_len(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

/* Bytes of a length-delimited field of n bytes, with its tag. */
static size_t
ld_len(size_t n)
{
	return 1 + varint_len(n) + n;
}

static md_node *
md_hold(md_node *n)
{
	if (n != NULL)
		atomic_fetch_add(&n->refs, 1);
	return n;
}

static void
md_rele(md_node *n)
{
	while (n != NULL && atomic_fetch_sub(&n->refs, 1) == 1) {
		md_node *prev = n->prev;
		free(n->key);
		free(n);
		n = prev;
	}
}

asynq_status
asynq_rpc_metadata_push(const char *key, const void *val, size_t len)
{
	if (key == NULL || (val == NULL && len != 0))
		return ASYNQ_INVALID_ARGUMENT;
	md_node *n = malloc(sizeof(*n) + (len != 0 ? len : 1));
	if (n == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	n->key = strdup(key);
	if (n->key == NULL) {
		free(n);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	if (len != 0)
		memcpy(n->val, val, len);
	n->len = len;
	atomic_init(&n->refs, 1);
	n->prev = md_hold(asynq_scoped_get(&md_key));
	size_t klen = strlen(key);
	size_t one =
	    (klen != 0 ? ld_len(klen) : 0) + (len != 0 ? ld_len(len) : 0);
	n->depth = 1 + (n->prev != NULL ? n->prev->depth : 0);
	n->wire = ld_len(one) + (n->prev != NULL ? n->prev->wire : 0);
	asynq_status st = asynq_scoped_push(&md_key, n);
	if (st != ASYNQ_OK)
		md_rele(n);
	return st;
}

asynq_status
asynq_rpc_metadata_pop(void)
{
	md_node *n = asynq_scoped_get(&md_key);
	asynq_status st = asynq_scoped_pop(&md_key);
	if (st == ASYNQ_OK)
		md_rele(n);
	return st;
}

asynq_status
asynq_rpc_with_metadata(const char *key, const void *val, size_t len,
    asynq_status (*fn)(void *arg), void *arg)
{
	asynq_status st = asynq_rpc_metadata_push(key, val, len);
	if (st != ASYNQ_OK)
		return st;
	st = fn(arg);
	(void)asynq_rpc_metadata_pop();
	return st;
}

/* ---- Thread-local backend table -------------------------------------- */

typedef struct tls_entry {
	uint64_t id;
	chan_backend *be;
} tls_entry;

typedef struct tls_table {
	tls_entry *e;
	size_t n, cap;
} tls_table;

static pthread_key_t tls_key;
static pthread_once_t tls_once = PTHREAD_ONCE_INIT;
static _Thread_local tls_table *tls_tab;

static void
tls_table_free(void *p)
{
	tls_table *t = p;
	free(t->e);
	free(t);
}

static void
tls_key_make(void)
{
	(void)pthread_key_create(&tls_key, tls_table_free);
}

/* ---- Backend ---------------------------------------------------------- */

static void
backend_rele(chan_backend *be)
{
	if (atomic_fetch_sub(&be->refs, 1) == 1)
		free(be);
}

static asynq_batch *
rpc_batch_alloc(asynq_backend *base)
{
	chan_backend *be = (chan_backend *)base;
	rpc_batch *b = calloc(1, sizeof(*b));
	if (b == NULL)
		return NULL;
	b->be = be;
	atomic_fetch_add(&be->refs, 1);
	return &b->base;
}

static void
rpc_batch_free(asynq_batch *base)
{
	rpc_batch *b = (rpc_batch *)base;
	for (size_t i = 0; i < b->n_subs; i++) {
		/* Waits for a callback still returning. */
		if (b->subs[i].aio != NULL)
			nng_aio_free(b->subs[i].aio);
	}
	free(b->subs);
	for (size_t i = 0; i < b->n_recs; i++) {
		free(b->recs[i].buf);
		md_rele(b->recs[i].md);
	}
	free(b->recs);
	chan_backend *be = b->be;
	free(b);
	backend_rele(be);
}

static void
rpc_batch_cancel(asynq_batch *base)
{
	rpc_batch *b = (rpc_batch *)base;
	for (size_t i = 0; i < b->n_subs; i++)
		nng_aio_cancel(b->subs[i].aio);
}

static asynq_status rpc_batch_flush(asynq_batch *base);

static const asynq_backend_ops rpc_backend_ops = {
	.batch_alloc = rpc_batch_alloc,
	.flush = rpc_batch_flush,
	.cancel = rpc_batch_cancel,
	.batch_free = rpc_batch_free,
};

static chan_backend *
thread_backend(asynq_rpc_channel *ch)
{
	tls_table *t = tls_tab;
	if (t != NULL)
		for (size_t i = 0; i < t->n; i++)
			if (t->e[i].id == ch->id)
				return t->e[i].be;
	if (t == NULL) {
		(void)pthread_once(&tls_once, tls_key_make);
		t = calloc(1, sizeof(*t));
		if (t == NULL)
			return NULL;
		tls_tab = t;
		(void)pthread_setspecific(tls_key, t);
	}
	if (t->n == t->cap) {
		size_t cap = t->cap != 0 ? t->cap * 2 : 4;
		tls_entry *e = realloc(t->e, cap * sizeof(*e));
		if (e == NULL)
			return NULL;
		t->e = e;
		t->cap = cap;
	}
	chan_backend *be = calloc(1, sizeof(*be));
	if (be == NULL)
		return NULL;
	asynq_backend_init(&be->base, &rpc_backend_ops, ch->svc->full_name);
	/* Flush policy: a full request goes out while the tasks keep running;
	 * the service's flush_delay_us lets calls from work that arrives
	 * meanwhile join an idle worker's batch. */
	be->base.flush_at = ch->max_calls;
	be->base.flush_delay_ns = (uint64_t)ch->svc->flush_delay_us * 1000u;
	be->ch = ch;
	atomic_init(&be->refs, 1);
	pthread_mutex_lock(&ch->mu);
	be->next = ch->backends;
	ch->backends = be;
	pthread_mutex_unlock(&ch->mu);
	t->e[t->n].id = ch->id;
	t->e[t->n].be = be;
	t->n++;
	return be;
}

/* ---- Calls ------------------------------------------------------------ */

asynq_future *
asynq_rpc_call(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m,
    const ProtobufCMessage *req)
{
	atomic_fetch_add_explicit(&ch->calls, 1, memory_order_relaxed);
	if (req == NULL || req->descriptor != m->input) {
		atomic_fetch_add_explicit(&ch->failures, 1,
		    memory_order_relaxed);
		return asynq_const_error(
		    asynq_error_alloc(ASYNQ_INVALID_ARGUMENT,
		        "rpc %s: request is not a %s", m->full_name,
		        ((const ProtobufCMessageDescriptor *)m->input)->name));
	}
	chan_backend *be = thread_backend(ch);
	if (be == NULL)
		return NULL;
	int64_t deadline = asynq_rpc_deadline_get();
	if (deadline == 0)
		deadline = asynqi_realtime_ns() +
		    (int64_t)ch->default_deadline_ms * 1000000;
	size_t len = protobuf_c_message_get_packed_size(req);
	uint8_t *buf = malloc(len != 0 ? len : 1);
	if (buf == NULL)
		return NULL;
	protobuf_c_message_pack(req, buf);
	asynq_future *f = asynq_batch_add(&be->base, 0, NULL);
	if (f == NULL) {
		free(buf);
		return NULL;
	}
	rpc_batch *b = (rpc_batch *)asynq_item_batch(f);
	if (b->n_recs == b->cap_recs) {
		size_t cap = b->cap_recs != 0 ? b->cap_recs * 2 : 16;
		call_rec *r = realloc(b->recs, cap * sizeof(*r));
		if (r == NULL) {
			free(buf);
			/* Keep the item's index equal to its record's. */
			asynq_item_set_error(f,
			    asynq_error_alloc(ASYNQ_RESOURCE_EXHAUSTED,
			        "rpc %s: out of memory", m->full_name));
			return f;
		}
		b->recs = r;
		b->cap_recs = cap;
	}
	md_node *md = md_hold(asynq_scoped_get(&md_key));
	size_t idx = b->n_recs;
	size_t nlen = strlen(m->full_name);
	size_t call = ld_len(nlen) + (idx != 0 ? 1 + varint_len(idx) : 0) +
	    (len != 0 ? ld_len(len) : 0) + (md != NULL ? md->wire : 0);
	b->recs[b->n_recs++] =
	    (call_rec){ m, buf, len, deadline, md, ld_len(call), false };
	return f;
}

/* ---- Flush and completion --------------------------------------------- */

static int64_t
ms_until(int64_t deadline)
{
	int64_t left = deadline - asynqi_realtime_ns();
	if (left <= 0)
		return 0;
	return (left + 999999) / 1000000;
}

static void
fail_item(rpc_batch *b, size_t i, asynq_status st, const char *why)
{
	asynq_rpc_channel *ch = b->be->ch;
	const call_rec *r = &b->recs[i];
	if (asynq_item_set_error(asynq_batch_item(&b->base, i),
	        asynq_error_alloc(st, "rpc %s: %s", r->m->full_name, why)) ==
	    ASYNQ_OK)
		atomic_fetch_add_explicit(&ch->failures, 1,
		    memory_order_relaxed);
}

/* On an nng thread (or the flushing thread): the request is over. */
static void
sub_finish(sub_req *q)
{
	rpc_batch *b = q->b;
	asynq_rpc_channel *ch = b->be->ch;
	nng_msg_free(q->copy);
	q->copy = NULL;
	if (q->ctx_open) {
		nng_ctx_close(q->ctx);
		q->ctx_open = false;
	}
	if (atomic_fetch_sub(&b->pending, 1) == 1)
		asynq_batch_complete(&b->base, ASYNQ_OK);
	/* b may be gone now. */
	pthread_mutex_lock(&ch->mu);
	if (--ch->inflight == 0)
		pthread_cond_broadcast(&ch->cv);
	pthread_mutex_unlock(&ch->mu);
}

static void
sub_fail(sub_req *q, asynq_status st, const char *why)
{
	for (size_t i = q->start; i < q->start + q->n; i++)
		fail_item(q->b, i, st, why);
	sub_finish(q);
}

static void
sub_reply(sub_req *q, nng_msg *msg)
{
	rpc_batch *b = q->b;
	asynq_rpc_channel *ch = b->be->ch;
	asynqi_arena arena;
	asynqi_arena_init(&arena, 8 * ch->max_msg_bytes);
	ProtobufCMessage *m = NULL;
	asynq_status st = asynqi_rpc_decode(&asynq__rpc__reply__descriptor,
	    nng_msg_body(msg), nng_msg_len(msg), &arena.pa, &arena, &m);
	nng_msg_free(msg);
	if (st != ASYNQ_OK) {
		asynqi_arena_fini(&arena);
		sub_fail(q, ASYNQ_INTERNAL, "malformed reply");
		return;
	}
	Asynq__Rpc__Reply *rep = (Asynq__Rpc__Reply *)m;
	if (rep->status != 0) {
		asynq_status rst = asynqi_rpc_status_from_wire(rep->status);
		for (size_t i = q->start; i < q->start + q->n; i++) {
			if (asynq_item_set_error(asynq_batch_item(&b->base, i),
			        asynq_error_alloc(rst, "rpc %s: %s",
			            b->recs[i].m->full_name,
			            rep->message[0] != '\0'
			                ? rep->message
			                : asynq_strerror(rst))) == ASYNQ_OK)
				atomic_fetch_add_explicit(&ch->failures, 1,
				    memory_order_relaxed);
		}
		asynqi_arena_fini(&arena);
		sub_finish(q);
		return;
	}
	for (size_t k = 0; k < rep->n_results; k++) {
		const Asynq__Rpc__Result *r = rep->results[k];
		if (r->call_id < q->start || r->call_id >= q->start + q->n)
			continue;
		size_t i = (size_t)r->call_id;
		asynq_future *item = asynq_batch_item(&b->base, i);
		const asynq_rpc_method_desc *md = b->recs[i].m;
		if (r->status != 0) {
			asynq_status cst =
			    asynqi_rpc_status_from_wire(r->status);
			if (asynq_item_set_error(item,
			        asynq_error_alloc(cst, "%s",
			            r->message[0] != '\0'
			                ? r->message
			                : asynq_strerror(cst))) == ASYNQ_OK)
				atomic_fetch_add_explicit(&ch->failures, 1,
				    memory_order_relaxed);
			continue;
		}
		asynqi_budget_alloc ba;
		asynqi_budget_alloc_init(&ba, 8 * ch->max_msg_bytes);
		ProtobufCMessage *out = NULL;
		asynq_status dst = asynqi_rpc_decode(md->output,
		    r->payload.data, r->payload.len, &ba.pa, NULL, &out);
		if (dst != ASYNQ_OK) {
			fail_item(b, i, ASYNQ_INTERNAL,
			    "malformed response message");
			continue;
		}
		asynq_item_set_ptr(item, out, asynqi_rpc_free_msg);
	}
	asynqi_arena_fini(&arena);
	/* Calls the reply left out. */
	for (size_t i = q->start; i < q->start + q->n; i++)
		fail_item(b, i, ASYNQ_INTERNAL, "the reply has no result");
	sub_finish(q);
}

static void sub_done(sub_req *q);

/* After a lost connection: send q again, marked as a resend. False if it
 * may not (no copy, too many resends, deadline passed, closing). */
static bool
sub_resend(sub_req *q)
{
	asynq_rpc_channel *ch = q->b->be->ch;
	if (q->copy == NULL || q->attempt >= MAX_RESENDS ||
	    atomic_load(&ch->closing))
		return false;
	int64_t ms = ms_until(q->deadline);
	nng_msg *msg;
	if (ms == 0 || nng_msg_dup(&msg, q->copy) != 0)
		return false;
	q->attempt++;
	/* Request.attempt = q->attempt: field 6, varint. */
	uint8_t tail[6] = { 6 << 3 };
	size_t n = 1;
	for (uint32_t v = q->attempt; n < sizeof(tail); v >>= 7) {
		tail[n++] = (uint8_t)((v & 0x7f) | (v > 0x7f ? 0x80 : 0));
		if (v <= 0x7f)
			break;
	}
	if (nng_msg_append(msg, tail, n) != 0) {
		nng_msg_free(msg);
		return false;
	}
	atomic_fetch_add_explicit(&ch->resends, 1, memory_order_relaxed);
	q->state = SUB_SEND;
	nng_aio_set_timeout(q->aio, (nng_duration)ms);
	nng_aio_set_msg(q->aio, msg);
	nng_ctx_send(q->ctx, q->aio);
	return true;
}

static void
sub_cb(void *arg)
{
	sub_req *q = arg;
	if (q->state == SUB_RECV && atomic_fetch_sub(&q->gate, 1) != 1)
		return;
	sub_done(q);
}

/* An nng thread: the send or the receive of q is over. */
static void
sub_done(sub_req *q)
{
	asynq_rpc_channel *ch = q->b->be->ch;
	int rv = nng_aio_result(q->aio);
	if (rv != 0) {
		if (q->state == SUB_SEND) {
			nng_msg *msg = nng_aio_get_msg(q->aio);
			nng_aio_set_msg(q->aio, NULL);
			nng_msg_free(msg);
		}
		if (atomic_load(&ch->closing) || rv == NNG_ECANCELED)
			sub_fail(q, ASYNQ_CANCELLED, "cancelled");
		else if (rv == NNG_ECONNRESET && sub_resend(q))
			return; /* q belongs to the send now */
		else if (rv == NNG_ECONNRESET)
			sub_fail(q, ASYNQ_UNAVAILABLE,
			    "connection lost; the call may have run");
		else if (rv == NNG_ETIMEDOUT && q->state == SUB_SEND &&
		    atomic_load(&ch->pipes) == 0)
			sub_fail(q, ASYNQ_UNAVAILABLE,
			    "no server reachable before the deadline");
		else if (rv == NNG_ETIMEDOUT)
			sub_fail(q, ASYNQ_DEADLINE_EXCEEDED,
			    "deadline exceeded");
		else
			sub_fail(q, asynqi_rpc_status_from_nng(rv),
			    nng_strerror(rv));
		return;
	}
	if (q->state == SUB_SEND) {
		int64_t ms = ms_until(q->deadline);
		if (ms == 0) {
			sub_fail(q, ASYNQ_DEADLINE_EXCEEDED,
			    "deadline exceeded");
			return;
		}
		q->state = SUB_RECV;
		atomic_store(&q->gate, 2);
		nng_aio_set_timeout(q->aio, (nng_duration)ms);
		nng_ctx_recv(q->ctx, q->aio);
		if (atomic_fetch_sub(&q->gate, 1) == 1)
			sub_done(q);
		return;
	}
	nng_msg *msg = nng_aio_get_msg(q->aio);
	nng_aio_set_msg(q->aio, NULL);
	sub_reply(q, msg);
}

/* Lays out the metadata chain md as Metadata messages in out[0..depth). */
static void
md_fill(const md_node *md, Asynq__Rpc__Metadata *out,
    Asynq__Rpc__Metadata **ptrs)
{
	for (size_t i = 0; md != NULL; md = md->prev, i++) {
		Asynq__Rpc__Metadata m = ASYNQ__RPC__METADATA__INIT;
		m.key = md->key;
		m.value.data = (uint8_t *)md->val;
		m.value.len = md->len;
		out[i] = m;
		ptrs[i] = &out[i];
	}
}

static asynq_status
build_request(rpc_batch *b, sub_req *q, nng_msg **msgp)
{
	asynq_rpc_channel *ch = b->be->ch;
	asynq_status st = ASYNQ_RESOURCE_EXHAUSTED;
	/* One shared chain goes once into the Request; else per call. */
	const md_node *shared = b->recs[q->start].md;
	size_t n_md = 0;
	for (size_t k = 0; k < q->n; k++) {
		const md_node *md = b->recs[q->start + k].md;
		if (md != shared)
			shared = NULL;
		n_md += md != NULL ? md->depth : 0;
	}
	if (shared != NULL)
		n_md = shared->depth;
	Asynq__Rpc__Call *calls = calloc(q->n, sizeof(*calls));
	Asynq__Rpc__Call **ptrs = calloc(q->n, sizeof(*ptrs));
	Asynq__Rpc__Metadata *mds = calloc(n_md + 1, sizeof(*mds));
	Asynq__Rpc__Metadata **mdp = calloc(n_md + 1, sizeof(*mdp));
	if (calls == NULL || ptrs == NULL || mds == NULL || mdp == NULL)
		goto out;
	int64_t deadline = INT64_MAX;
	size_t n_calls = 0, md_off = 0;
	for (size_t k = 0; k < q->n; k++) {
		const call_rec *r = &b->recs[q->start + k];
		if (r->failed)
			continue;
		Asynq__Rpc__Call c = ASYNQ__RPC__CALL__INIT;
		c.method = (char *)r->m->full_name;
		c.call_id = q->start + k;
		c.payload.data = r->buf;
		c.payload.len = r->len;
		if (shared == NULL && r->md != NULL) {
			md_fill(r->md, &mds[md_off], &mdp[md_off]);
			c.n_metadata = r->md->depth;
			c.metadata = &mdp[md_off];
			md_off += r->md->depth;
		}
		calls[n_calls] = c;
		ptrs[n_calls] = &calls[n_calls];
		n_calls++;
		if (r->deadline < deadline)
			deadline = r->deadline;
	}
	Asynq__Rpc__Request req = ASYNQ__RPC__REQUEST__INIT;
	req.n_calls = n_calls;
	req.calls = ptrs;
	req.deadline_unix_ns = deadline;
	req.request_id = atomic_fetch_add(&ch->next_request_id, 1);
	req.client_id = ch->client_id;
	if (shared != NULL) {
		md_fill(shared, mds, mdp);
		req.n_metadata = shared->depth;
		req.metadata = mdp;
	}
	q->deadline = deadline;
	st = asynqi_rpc_pack_msg(&req.base, msgp);
out:
	free(mdp);
	free(mds);
	free(ptrs);
	free(calls);
	return st;
}

static asynq_status
rpc_batch_flush(asynq_batch *base)
{
	rpc_batch *b = (rpc_batch *)base;
	asynq_rpc_channel *ch = b->be->ch;
	size_t n = asynq_batch_size(base);
	if (n != b->n_recs)
		return ASYNQ_INTERNAL;
	if (atomic_load(&ch->closing))
		return ASYNQ_CANCELLED;
	/* Requests of at most max_calls calls and max_msg_bytes bytes (as
	 * estimated from above), cut greedily in call order. */
	size_t budget = ch->max_msg_bytes > REQUEST_OVERHEAD
	    ? ch->max_msg_bytes - REQUEST_OVERHEAD
	    : 0;
	size_t n_subs = 0;
	for (size_t i = 0, cn = 0, cb = 0; i < n; i++) {
		size_t w = b->recs[i].wire;
		if (cn == 0 || cn == ch->max_calls || w > budget - cb) {
			n_subs++;
			cn = 0;
			cb = 0;
		}
		cn++;
		cb += w < budget ? w : budget;
	}
	b->subs = calloc(n_subs, sizeof(*b->subs));
	nng_msg **msgs = calloc(n_subs, sizeof(*msgs));
	if (b->subs == NULL || msgs == NULL) {
		free(msgs);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	for (size_t i = 0, k = 0, cn = 0, cb = 0; i < n; i++) {
		size_t w = b->recs[i].wire;
		if (cn == 0 || cn == ch->max_calls || w > budget - cb) {
			b->subs[k].start = i;
			k++;
			cn = 0;
			cb = 0;
		}
		b->subs[k - 1].n++;
		cn++;
		cb += w < budget ? w : budget;
	}
	b->n_subs = n_subs;
	asynq_status st = ASYNQ_OK;
	for (size_t i = 0; i < n_subs && st == ASYNQ_OK; i++) {
		sub_req *q = &b->subs[i];
		q->b = b;
		q->state = SUB_SEND;
		if (nng_aio_alloc(&q->aio, sub_cb, q) != 0) {
			q->aio = NULL;
			st = ASYNQ_RESOURCE_EXHAUSTED;
			break;
		}
		int rv = nng_ctx_open(&q->ctx, ch->sock);
		if (rv != 0) {
			st = asynqi_rpc_status_from_nng(rv);
			break;
		}
		q->ctx_open = true;
		st = build_request(b, q, &msgs[i]);
		if (st == ASYNQ_OK &&
		    nng_msg_len(msgs[i]) > ch->max_msg_bytes) {
			/* Only a call too big alone gets here; failed
			 * below without being sent. */
			nng_msg_free(msgs[i]);
			msgs[i] = NULL;
		} else if (st == ASYNQ_OK) {
			(void)nng_msg_dup(&q->copy, msgs[i]);
		}
	}
	if (st != ASYNQ_OK) {
		for (size_t i = 0; i < n_subs; i++) {
			if (b->subs[i].ctx_open)
				nng_ctx_close(b->subs[i].ctx);
			b->subs[i].ctx_open = false;
			nng_msg_free(msgs[i]);
			nng_msg_free(b->subs[i].copy);
			b->subs[i].copy = NULL;
		}
		free(msgs);
		return st;
	}
	/* The payloads are in the messages now. */
	for (size_t i = 0; i < b->n_recs; i++) {
		free(b->recs[i].buf);
		b->recs[i].buf = NULL;
	}
	atomic_store(&b->pending, n_subs);
	pthread_mutex_lock(&ch->mu);
	ch->inflight += (long)n_subs;
	pthread_mutex_unlock(&ch->mu);
	asynq_batch_defer(base);
	for (size_t i = 0; i < n_subs; i++) {
		sub_req *q = &b->subs[i];
		if (msgs[i] == NULL) {
			sub_fail(q, ASYNQ_RESOURCE_EXHAUSTED,
			    "request over the channel's max_msg_bytes");
			continue;
		}
		int64_t ms = ms_until(q->deadline);
		if (ms == 0) {
			nng_msg_free(msgs[i]);
			sub_fail(q, ASYNQ_DEADLINE_EXCEEDED,
			    "deadline exceeded");
			continue;
		}
		atomic_fetch_add_explicit(&ch->requests, 1,
		    memory_order_relaxed);
		nng_aio_set_timeout(q->aio, (nng_duration)ms);
		nng_aio_set_msg(q->aio, msgs[i]);
		nng_ctx_send(q->ctx, q->aio);
	}
	free(msgs);
	return ASYNQ_OK;
}

/* ---- Channel ---------------------------------------------------------- */

static void
pipe_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	(void)p;
	asynq_rpc_channel *ch = arg;
	if (ev == NNG_PIPE_EV_ADD_POST)
		atomic_fetch_add(&ch->pipes, 1);
	else if (ev == NNG_PIPE_EV_REM_POST)
		atomic_fetch_sub(&ch->pipes, 1);
}

/* A random client id, never 0 (0 means "no id" on the wire). */
static uint64_t
random_client_id(void)
{
	uint64_t v = 0;
	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v)) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		v = ((uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec) ^
		    ((uint64_t)getpid() << 32) ^
		    (atomic_fetch_add(&next_channel_id, 0) *
		        0x9e3779b97f4a7c15u);
	}
	return v != 0 ? v : 1;
}

asynq_status
asynq_rpc_channel_alloc(asynq_rpc_channel **chp,
    const asynq_rpc_service_desc *svc, const asynq_rpc_channel_cfg *cfg)
{
	if (svc == NULL || cfg == NULL || cfg->urls == NULL || cfg->n_urls == 0)
		return ASYNQ_INVALID_ARGUMENT;
	asynq_status st = ASYNQ_RESOURCE_EXHAUSTED;
	asynq_rpc_channel *ch = calloc(1, sizeof(*ch));
	if (ch == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	ch->svc = svc;
	ch->id = atomic_fetch_add(&next_channel_id, 1);
	ch->max_calls = cfg->max_calls != 0 ? cfg->max_calls
	    : svc->batch_max_calls != 0     ? svc->batch_max_calls
	                                    : DEFAULT_MAX_CALLS;
	ch->default_deadline_ms = cfg->default_deadline_ms != 0
	    ? cfg->default_deadline_ms
	    : svc->default_deadline_ms != 0 ? svc->default_deadline_ms
	                                    : DEFAULT_DEADLINE_MS;
	ch->max_msg_bytes =
	    cfg->max_msg_bytes != 0 ? cfg->max_msg_bytes : DEFAULT_MAX_MSG;
	atomic_init(&ch->closing, false);
	atomic_init(&ch->pipes, 0);
	atomic_init(&ch->next_request_id, 1);
	atomic_init(&ch->calls, 0);
	atomic_init(&ch->requests, 0);
	atomic_init(&ch->failures, 0);
	atomic_init(&ch->resends, 0);
	ch->client_id = random_client_id();
	if (pthread_mutex_init(&ch->mu, NULL) != 0)
		goto fail_mu;
	if (pthread_cond_init(&ch->cv, NULL) != 0)
		goto fail_cv;
	int rv;
	if ((rv = nng_req0_open(&ch->sock)) != 0) {
		st = asynqi_rpc_status_from_nng(rv);
		goto fail_sock;
	}
	if ((rv = nng_socket_set_ms(ch->sock, NNG_OPT_REQ_RESENDTIME,
	         NNG_DURATION_INFINITE)) != 0 ||
	    (rv = nng_socket_set_size(ch->sock, NNG_OPT_RECVMAXSZ,
	         ch->max_msg_bytes)) != 0 ||
	    (rv = nng_pipe_notify(ch->sock, NNG_PIPE_EV_ADD_POST, pipe_cb,
	         ch)) != 0 ||
	    (rv = nng_pipe_notify(ch->sock, NNG_PIPE_EV_REM_POST, pipe_cb,
	         ch)) != 0) {
		st = asynqi_rpc_status_from_nng(rv);
		goto fail_dial;
	}
	if (cfg->tls_ca_file != NULL || cfg->tls_server_name != NULL) {
		if ((rv = nng_tls_config_alloc(&ch->tls,
		         NNG_TLS_MODE_CLIENT)) != 0) {
			ch->tls = NULL;
			st = asynqi_rpc_status_from_nng(rv);
			goto fail_dial;
		}
		if ((rv = nng_tls_config_auth_mode(ch->tls,
		         NNG_TLS_AUTH_MODE_REQUIRED)) != 0 ||
		    (cfg->tls_ca_file != NULL &&
		        (rv = nng_tls_config_ca_file(ch->tls,
		             cfg->tls_ca_file)) != 0) ||
		    (cfg->tls_server_name != NULL &&
		        (rv = nng_tls_config_server_name(ch->tls,
		             cfg->tls_server_name)) != 0)) {
			st = rv == NNG_ENOMEM ? ASYNQ_RESOURCE_EXHAUSTED
			                      : ASYNQ_INVALID_ARGUMENT;
			goto fail_dial;
		}
	}
	for (size_t i = 0; i < cfg->n_urls; i++) {
		if (cfg->urls[i] == NULL) {
			st = ASYNQ_INVALID_ARGUMENT;
			goto fail_dial;
		}
		nng_dialer d;
		rv = nng_dialer_create(&d, ch->sock, cfg->urls[i]);
		if (rv == 0 && ch->tls != NULL &&
		    strncmp(cfg->urls[i], "tls+", 4) == 0)
			rv = nng_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG, ch->tls);
		if (rv == 0)
			rv = nng_dialer_start(d, NNG_FLAG_NONBLOCK);
		if (rv != 0) {
			st = rv == NNG_ENOMEM ? ASYNQ_RESOURCE_EXHAUSTED
			                      : ASYNQ_INVALID_ARGUMENT;
			goto fail_dial;
		}
	}
	*chp = ch;
	return ASYNQ_OK;

fail_dial:
	nng_close(ch->sock);
	if (ch->tls != NULL)
		nng_tls_config_free(ch->tls);
fail_sock:
	pthread_cond_destroy(&ch->cv);
fail_cv:
	pthread_mutex_destroy(&ch->mu);
fail_mu:
	free(ch);
	return st;
}

void
asynq_rpc_channel_free(asynq_rpc_channel *ch)
{
	if (ch == NULL)
		return;
	atomic_store(&ch->closing, true);
	/* Aborts every request in flight (NNG_ECLOSED -> CANCELLED). */
	nng_close(ch->sock);
	pthread_mutex_lock(&ch->mu);
	while (ch->inflight > 0)
		pthread_cond_wait(&ch->cv, &ch->mu);
	chan_backend *be = ch->backends;
	ch->backends = NULL;
	pthread_mutex_unlock(&ch->mu);
	while (be != NULL) {
		chan_backend *next = be->next;
		backend_rele(be);
		be = next;
	}
	if (ch->tls != NULL)
		nng_tls_config_free(ch->tls);
	pthread_cond_destroy(&ch->cv);
	pthread_mutex_destroy(&ch->mu);
	free(ch);
}

void
asynq_rpc_channel_stats_get(const asynq_rpc_channel *ch,
    asynq_rpc_channel_stats *out)
{
	asynq_rpc_channel *c = (asynq_rpc_channel *)ch;
	out->calls = atomic_load(&c->calls);
	out->requests = atomic_load(&c->requests);
	out->failures = atomic_load(&c->failures);
	out->resends = atomic_load(&c->resends);
}
