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
 * - Lock order: the channel's mutex is a leaf.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "asynq/batch.h"
#include "internal.h"

#include <nng/protocol/reqrep0/req.h>

#define DEFAULT_MAX_CALLS 1000
#define DEFAULT_DEADLINE_MS 10000
#define DEFAULT_MAX_MSG (4u << 20)

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
	atomic_uint_fast64_t next_request_id;
	atomic_uint_fast64_t calls, requests, failures;
};

struct chan_backend {
	asynq_backend base;
	asynq_rpc_channel *ch;
	atomic_int refs;
	chan_backend *next; /* channel's list */
};

/* One call in a batch, packed at call time. */
typedef struct call_rec {
	const asynq_rpc_method_desc *m;
	uint8_t *buf;
	size_t len;
	int64_t deadline;
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
	for (size_t i = 0; i < b->n_recs; i++)
		free(b->recs[i].buf);
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
	b->recs[b->n_recs++] = (call_rec){ m, buf, len, deadline };
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

static asynq_status
build_request(rpc_batch *b, sub_req *q, nng_msg **msgp)
{
	asynq_rpc_channel *ch = b->be->ch;
	asynq_status st = ASYNQ_RESOURCE_EXHAUSTED;
	Asynq__Rpc__Call *calls = calloc(q->n, sizeof(*calls));
	Asynq__Rpc__Call **ptrs = calloc(q->n, sizeof(*ptrs));
	if (calls == NULL || ptrs == NULL)
		goto out;
	int64_t deadline = INT64_MAX;
	for (size_t k = 0; k < q->n; k++) {
		const call_rec *r = &b->recs[q->start + k];
		Asynq__Rpc__Call c = ASYNQ__RPC__CALL__INIT;
		c.method = (char *)r->m->full_name;
		c.call_id = q->start + k;
		c.payload.data = r->buf;
		c.payload.len = r->len;
		calls[k] = c;
		ptrs[k] = &calls[k];
		if (r->deadline < deadline)
			deadline = r->deadline;
	}
	Asynq__Rpc__Request req = ASYNQ__RPC__REQUEST__INIT;
	req.n_calls = q->n;
	req.calls = ptrs;
	req.deadline_unix_ns = deadline;
	req.request_id = atomic_fetch_add(&ch->next_request_id, 1);
	q->deadline = deadline;
	st = asynqi_rpc_pack_msg(&req.base, msgp);
out:
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
	size_t n_subs = (n + ch->max_calls - 1) / ch->max_calls;
	b->subs = calloc(n_subs, sizeof(*b->subs));
	nng_msg **msgs = calloc(n_subs, sizeof(*msgs));
	if (b->subs == NULL || msgs == NULL) {
		free(msgs);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	b->n_subs = n_subs;
	asynq_status st = ASYNQ_OK;
	for (size_t i = 0; i < n_subs && st == ASYNQ_OK; i++) {
		sub_req *q = &b->subs[i];
		q->b = b;
		q->start = i * ch->max_calls;
		q->n =
		    n - q->start < ch->max_calls ? n - q->start : ch->max_calls;
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
	}
	if (st != ASYNQ_OK) {
		for (size_t i = 0; i < n_subs; i++) {
			if (b->subs[i].ctx_open)
				nng_ctx_close(b->subs[i].ctx);
			b->subs[i].ctx_open = false;
			nng_msg_free(msgs[i]);
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
	atomic_fetch_add_explicit(&ch->requests, n_subs, memory_order_relaxed);
	asynq_batch_defer(base);
	for (size_t i = 0; i < n_subs; i++) {
		sub_req *q = &b->subs[i];
		int64_t ms = ms_until(q->deadline);
		if (ms == 0) {
			nng_msg_free(msgs[i]);
			sub_fail(q, ASYNQ_DEADLINE_EXCEEDED,
			    "deadline exceeded");
			continue;
		}
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

asynq_status
asynq_rpc_channel_alloc(asynq_rpc_channel **chp,
    const asynq_rpc_service_desc *svc, const asynq_rpc_channel_cfg *cfg)
{
	if (svc == NULL || cfg == NULL || cfg->urls == NULL || cfg->n_urls == 0)
		return ASYNQ_INVALID_ARGUMENT;
	if (cfg->tls_ca_file != NULL)
		return ASYNQ_UNIMPLEMENTED; /* tls+tcp: not yet */
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
	for (size_t i = 0; i < cfg->n_urls; i++) {
		if (cfg->urls[i] == NULL) {
			st = ASYNQ_INVALID_ARGUMENT;
			goto fail_dial;
		}
		rv = nng_dial(ch->sock, cfg->urls[i], NULL, NNG_FLAG_NONBLOCK);
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
}
