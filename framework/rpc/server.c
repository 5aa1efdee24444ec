/* SPDX-License-Identifier: MIT */
/*
 * The RPC server: an nng REP socket served by a runtime's workers. Each
 * worker owns `contexts_per_worker` nng contexts; each context receives one
 * request at a time, has its calls run on its worker, and answers them all
 * in one reply before it receives again.
 *
 * Design notes:
 * - A context's receive completes on an nng thread, which decodes the
 *   envelope and every call's request message into a per-request arena with
 *   a byte budget (never on a coroutine stack), holds the runtime
 *   (asynq_runtime_hold) and posts the request to the context's worker; a
 *   burst of posts costs the worker one wake-up. Malformed or over-limit
 *   requests, and requests arriving while the runtime stops, are answered
 *   from the nng thread without bothering the worker.
 * - On the worker, the post handler spawns one task per call (one per method
 *   for whole-batch methods) and starts it; the tasks see the request's
 *   deadline as asynq_rpc_deadline and its metadata through
 *   asynq_rpc_metadata_get. Each task records its result; the on-done
 *   callback of the last one packs the Reply, sends it and releases the
 *   runtime. The send completion (nng thread) receives again.
 * - A context's state moves recv -> worker -> send -> recv, so its request,
 *   post and aios are used by one thread at a time; nng's aio completion and
 *   the scheduler's post queue order the hand-overs.
 * - Closing: `closing` (under mu) stops contexts from receiving again; close
 *   cancels pending receives (repeatedly, to catch a context that was just
 *   re-arming) and waits until every context has stopped, i.e. every request
 *   received has been answered. Lock order: mu is a leaf.
 * - The server must be closed before its runtime stops: requests received
 *   while the runtime stops are answered UNAVAILABLE.
 * - At-most-once: a request with a client_id and at least one
 *   non-idempotent call is entered in the dedup table (one per server,
 *   under dd.mu) while it runs, and stays there with a copy of its reply
 *   once answered, until evicted by count, bytes or age (oldest first;
 *   running entries are never evicted, their number is bounded by the
 *   contexts). A copy of a running request parks its context on the entry
 *   (it receives nothing meanwhile) and is sent the original's reply when
 *   that is ready; a copy of an answered one is sent the stored reply at
 *   once; neither reaches a worker. A resend (Request.attempt > 0) of a
 *   request not in the table runs only its idempotent calls: the others
 *   fail with ABORTED. Every reply to a tracked request goes through
 *   answer(), which completes its entry; it sends to the parked contexts
 *   before the request's own, so the server outlives the sends (close waits
 *   for every active context). Lock order: dd.mu and mu are leaves, never
 *   held together.
 * - Request size: nng drops (by closing the connection) messages more than
 *   SIZE_SLACK bytes over max_msg_bytes; the rest over max_msg_bytes are
 *   answered RESOURCE_EXHAUSTED, so the limit is exact for the peer.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#include <nng/protocol/reqrep0/rep.h>
#include <nng/supplemental/tls/tls.h>

#define DEFAULT_MAX_MSG (4u << 20)
#define DEFAULT_MAX_CALLS 10000
#define DEFAULT_MAX_INFLIGHT 100000
#define DEFAULT_MAX_CONNS 1024
#define DEFAULT_CONTEXTS 8
#define DEFAULT_DEDUP_ENTRIES 4096
#define DEFAULT_DEDUP_AGE_MS 60000
#define DEFAULT_DEDUP_BYTES (16u << 20)
/* Room for the SP header (a backtrace of up to 16 hops) over the body. */
#define SIZE_SLACK 64

typedef struct srv_method {
	const asynq_rpc_method_desc *m;
	asynq_rpc_handler h;
	void *ctx;
} srv_method;

typedef struct srv_ctx srv_ctx;
typedef struct srv_req srv_req;

/* A remembered request (see the design notes). */
typedef struct dd_entry dd_entry;
struct dd_entry {
	uint64_t client_id, request_id;
	dd_entry *hnext;       /* hash chain */
	dd_entry *prev, *next; /* done list, oldest first */
	bool done;
	bool has_reply;
	uint8_t *reply; /* the reply's body, malloc'd */
	size_t len;
	uint64_t done_ns; /* asynq_now_ns when answered */
	srv_ctx *waiters; /* parked copies, via srv_ctx.dd_next */
};

typedef struct dd_table {
	pthread_mutex_t mu;
	dd_entry **buckets;
	size_t mask;
	dd_entry *oldest, *newest; /* done entries */
	size_t n_done, bytes;
} dd_table;

/* One call of a request and its result. */
typedef struct srv_call {
	const srv_method *sm;         /* NULL when the result is already set */
	const Asynq__Rpc__Call *wire; /* the call as received */
	ProtobufCMessage *in; /* decoded request message, in the arena */
	uint64_t call_id;
	asynq_status status;
	char *message; /* malloc'd or NULL */
	uint8_t *out;  /* packed response, malloc'd */
	size_t out_len;
} srv_call;

/* One task of a request: a unary call, or a whole-batch method's calls. */
typedef struct srv_task {
	srv_req *r;
	const srv_method *sm;
	size_t *idx; /* indexes into r->calls */
	size_t n;
	size_t one;
} srv_task;

struct srv_req {
	srv_ctx *c;
	asynqi_arena arena;
	Asynq__Rpc__Request *msg;
	srv_call *calls;
	size_t n;
	srv_task *tasks;
	size_t *idx;
	size_t remaining; /* tasks not finished, worker only */
	size_t running;   /* calls counted in the worker's in-flight count */
	dd_entry *dd;     /* its dedup entry, or NULL */
};

struct srv_ctx {
	asynq_rpc_server *s;
	size_t worker;
	nng_ctx ctx;
	nng_aio *rx, *tx;
	asynq_post post;
	srv_req *req;
	srv_ctx *dd_next; /* parked on a dedup entry, under dd.mu */
	bool ctx_open;
	bool active; /* under s->mu */
};

struct asynq_rpc_server {
	asynq_runtime *rt;
	asynq_rpc_server_cfg cfg;
	nng_socket sock;
	srv_method *methods;
	size_t n_methods;
	srv_ctx *ctxs;
	size_t n_ctxs;
	size_t *w_inflight; /* per worker, worker only */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool started, closing, closed; /* under mu */
	size_t active;                 /* contexts still serving, under mu */
	size_t in_nng;                 /* nng_ctx_send/recv calls running */
	atomic_int conns;
	atomic_uint_fast64_t requests, calls, rejected, malformed, duplicates;
	dd_table dd;
	nng_tls_config *tls;
};

/* The task the current handler runs in; its value is a srv_task. */
static const asynq_scoped srv_req_key = ASYNQ_SCOPED_INIT("asynq.rpc.req", 0);

static const void *
md_find(Asynq__Rpc__Metadata *const *mds, size_t n, const char *key,
    size_t *len)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(mds[i]->key, key) == 0) {
			if (len != NULL)
				*len = mds[i]->value.len;
			return mds[i]->value.data != NULL
			    ? (const void *)mds[i]->value.data
			    : (const void *)"";
		}
	}
	return NULL;
}

const void *
asynq_rpc_metadata_get(const char *key, size_t *len)
{
	const srv_task *k = asynq_scoped_get(&srv_req_key);
	if (k == NULL || key == NULL)
		return NULL;
	const srv_req *r = k->r;
	if (k->sm->h.unary != NULL) {
		const Asynq__Rpc__Call *w = r->calls[k->idx[0]].wire;
		const void *v = md_find(w->metadata, w->n_metadata, key, len);
		if (v != NULL)
			return v;
	}
	return md_find(r->msg->metadata, r->msg->n_metadata, key, len);
}

/* ---- Dedup table --------------------------------------------------------- */

static void ctx_send(srv_ctx *c, nng_msg *msg);

static dd_entry **
dd_slot(dd_table *t, uint64_t client_id, uint64_t request_id)
{
	uint64_t h = client_id ^ (request_id * 0x9e3779b97f4a7c15u);
	h ^= h >> 31;
	h *= 0xbf58476d1ce4e5b9u;
	h ^= h >> 29;
	dd_entry **p = &t->buckets[h & t->mask];
	while (*p != NULL &&
	    ((*p)->client_id != client_id || (*p)->request_id != request_id))
		p = &(*p)->hnext;
	return p;
}

/* Forgets the oldest answered entry. Under dd.mu. */
static void
dd_evict_oldest(dd_table *t)
{
	dd_entry *e = t->oldest;
	dd_entry **p = dd_slot(t, e->client_id, e->request_id);
	*p = e->hnext;
	t->oldest = e->next;
	if (t->oldest != NULL)
		t->oldest->prev = NULL;
	else
		t->newest = NULL;
	t->n_done--;
	t->bytes -= e->len;
	free(e->reply);
	free(e);
}

/* Applies the limits. Under dd.mu. */
static void
dd_trim(asynq_rpc_server *s)
{
	dd_table *t = &s->dd;
	uint64_t now = asynq_now_ns();
	uint64_t age = (uint64_t)s->cfg.dedup_age_ms * 1000000u;
	while (t->oldest != NULL &&
	    (t->n_done > s->cfg.dedup_entries ||
	        t->bytes > s->cfg.dedup_bytes ||
	        now - t->oldest->done_ns > age))
		dd_evict_oldest(t);
}

/* Answers the request of c with msg (ownership moves; NULL: out of memory),
 * completing its dedup entry e (may be NULL) and answering the copies
 * parked on it. Any thread owning c. c->s may be freed on return. */
static void
answer(srv_ctx *c, dd_entry *e, nng_msg *msg)
{
	if (e == NULL) {
		ctx_send(c, msg);
		return;
	}
	asynq_rpc_server *s = c->s;
	dd_table *t = &s->dd;
	size_t len = msg != NULL ? nng_msg_len(msg) : 0;
	uint8_t *copy = NULL;
	if (msg != NULL && len <= s->cfg.dedup_bytes) {
		copy = malloc(len != 0 ? len : 1);
		if (copy != NULL)
			memcpy(copy, nng_msg_body(msg), len);
	}
	pthread_mutex_lock(&t->mu);
	srv_ctx *w = e->waiters;
	e->waiters = NULL;
	e->done = true;
	e->has_reply = copy != NULL;
	e->reply = copy;
	e->len = copy != NULL ? len : 0;
	e->done_ns = asynq_now_ns();
	e->prev = t->newest;
	e->next = NULL;
	if (t->newest != NULL)
		t->newest->next = e;
	else
		t->oldest = e;
	t->newest = e;
	t->n_done++;
	t->bytes += e->len;
	dd_trim(s);
	pthread_mutex_unlock(&t->mu);
	/* c stays active until its own send, so s outlives these. */
	while (w != NULL) {
		srv_ctx *next = w->dd_next;
		nng_msg *m = NULL;
		if (msg != NULL && nng_msg_dup(&m, msg) != 0)
			m = NULL;
		ctx_send(w, m);
		w = next;
	}
	ctx_send(c, msg);
}

/* What to do with a received request, after the dedup table saw it. */
enum { DD_RUN, DD_ANSWERED, DD_PARKED, DD_FORGOTTEN };

/* nng thread: looks r up and enters it when new. DD_ANSWERED: msg is the
 * stored reply to send; DD_PARKED: c waits on the original;
 * DD_FORGOTTEN: run only the idempotent calls; DD_RUN: run (r->dd set if
 * tracked). */
static int
dd_check(asynq_rpc_server *s, srv_ctx *c, srv_req *r, nng_msg **msg)
{
	const Asynq__Rpc__Request *rq = r->msg;
	bool track = false;
	for (size_t i = 0; i < r->n && !track; i++)
		track =
		    r->calls[i].sm != NULL && !r->calls[i].sm->m->idempotent;
	if (!track || rq->client_id == 0)
		return DD_RUN;
	dd_table *t = &s->dd;
	int what = DD_RUN;
	pthread_mutex_lock(&t->mu);
	dd_trim(s);
	dd_entry **p = dd_slot(t, rq->client_id, rq->request_id);
	dd_entry *e = *p;
	if (e != NULL && !e->done) {
		c->dd_next = e->waiters;
		e->waiters = c;
		what = DD_PARKED;
	} else if (e != NULL && e->has_reply) {
		if (nng_msg_alloc(msg, e->len) == 0) {
			memcpy(nng_msg_body(*msg), e->reply, e->len);
			what = DD_ANSWERED;
		} else {
			what = DD_FORGOTTEN; /* out of memory: be safe */
		}
	} else if (e != NULL) {
		what = DD_FORGOTTEN; /* the reply was too big to keep */
	} else {
		e = calloc(1, sizeof(*e));
		if (e != NULL) {
			e->client_id = rq->client_id;
			e->request_id = rq->request_id;
			*p = e;
			r->dd = e;
		}
		what = rq->attempt > 0 || e == NULL ? DD_FORGOTTEN : DD_RUN;
	}
	pthread_mutex_unlock(&t->mu);
	if (what != DD_RUN)
		atomic_fetch_add(&s->duplicates, 1);
	return what;
}

static void
dd_fini(dd_table *t)
{
	for (size_t i = 0; i <= t->mask; i++) {
		dd_entry *e = t->buckets[i];
		while (e != NULL) {
			dd_entry *next = e->hnext;
			free(e->reply);
			free(e);
			e = next;
		}
	}
	free(t->buckets);
	pthread_mutex_destroy(&t->mu);
}

/* ---- Requests ---------------------------------------------------------- */

static void
req_free(srv_req *r)
{
	if (r == NULL)
		return;
	for (size_t i = 0; i < r->n; i++) {
		free(r->calls[i].message);
		free(r->calls[i].out);
	}
	free(r->calls);
	free(r->tasks);
	free(r->idx);
	asynqi_arena_fini(&r->arena);
	free(r);
}

static void
call_fail(srv_call *c, asynq_status st, const char *fmt, const char *arg)
{
	c->sm = NULL;
	c->status = st;
	size_t n = strlen(fmt) + (arg != NULL ? strlen(arg) : 0) + 1;
	c->message = malloc(n);
	if (c->message != NULL)
		snprintf(c->message, n, fmt, arg != NULL ? arg : "");
}

/* nng may complete an operation (and run its callback, which may let
 * close return) before the call that started it has returned; close waits
 * for those calls too, so the aios and the socket outlive them. */
static void
nng_enter(asynq_rpc_server *s)
{
	pthread_mutex_lock(&s->mu);
	s->in_nng++;
	pthread_mutex_unlock(&s->mu);
}

static void
nng_leave(asynq_rpc_server *s)
{
	pthread_mutex_lock(&s->mu);
	if (--s->in_nng == 0)
		pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

static void
ctx_recv(srv_ctx *c)
{
	nng_enter(c->s);
	nng_ctx_recv(c->ctx, c->rx);
	nng_leave(c->s);
}

static void
rearm(srv_ctx *c)
{
	asynq_rpc_server *s = c->s;
	pthread_mutex_lock(&s->mu);
	bool closing = s->closing;
	if (closing) {
		c->active = false;
		if (--s->active == 0)
			pthread_cond_broadcast(&s->cv);
	} else {
		s->in_nng++; /* nng_enter */
	}
	pthread_mutex_unlock(&s->mu);
	if (!closing) {
		nng_ctx_recv(c->ctx, c->rx);
		nng_leave(s);
	}
}

/* Sends msg on c, or receives again if there is nothing to send. */
static void
ctx_send(srv_ctx *c, nng_msg *msg)
{
	if (msg == NULL) {
		rearm(c);
		return;
	}
	nng_aio_set_msg(c->tx, msg);
	nng_enter(c->s);
	nng_ctx_send(c->ctx, c->tx);
	nng_leave(c->s);
}

/* A reply that fails the whole request with one status; NULL without
 * memory. */
static nng_msg *
status_msg(asynq_status st, const char *message, uint64_t request_id)
{
	Asynq__Rpc__Reply rep = ASYNQ__RPC__REPLY__INIT;
	rep.status = (int32_t)st;
	rep.message = (char *)message;
	rep.request_id = request_id;
	nng_msg *msg = NULL;
	(void)asynqi_rpc_pack_msg(&rep.base, &msg);
	return msg;
}

/* Answers the whole request with one status. Any thread owning c. */
static void
send_status(srv_ctx *c, asynq_status st, const char *message,
    uint64_t request_id)
{
	ctx_send(c, status_msg(st, message, request_id));
}

/* Worker: every call has a result; answer and forget the request. */
static void
req_finish(srv_req *r)
{
	srv_ctx *c = r->c;
	asynq_rpc_server *s = c->s;
	s->w_inflight[c->worker] -= r->running;
	Asynq__Rpc__Result *res = calloc(r->n, sizeof(*res));
	Asynq__Rpc__Result **ptrs = calloc(r->n, sizeof(*ptrs));
	nng_msg *msg = NULL;
	if (res != NULL && ptrs != NULL) {
		for (size_t i = 0; i < r->n; i++) {
			const srv_call *k = &r->calls[i];
			Asynq__Rpc__Result one = ASYNQ__RPC__RESULT__INIT;
			one.call_id = k->call_id;
			one.status = (int32_t)k->status;
			if (k->status != ASYNQ_OK)
				one.message = k->message != NULL
				    ? k->message
				    : (char *)asynq_strerror(k->status);
			one.payload.data = k->out;
			one.payload.len = k->out_len;
			res[i] = one;
			ptrs[i] = &res[i];
		}
		Asynq__Rpc__Reply rep = ASYNQ__RPC__REPLY__INIT;
		rep.n_results = r->n;
		rep.results = ptrs;
		rep.request_id = r->msg->request_id;
		(void)asynqi_rpc_pack_msg(&rep.base, &msg);
	}
	free(ptrs);
	free(res);
	uint64_t request_id = r->msg->request_id;
	dd_entry *dd = r->dd;
	req_free(r);
	/* Once the reply is sent, close may return and free s. */
	asynq_runtime *rt = s->rt;
	if (msg == NULL)
		msg = status_msg(ASYNQ_RESOURCE_EXHAUSTED,
		    "server out of memory", request_id);
	answer(c, dd, msg);
	asynq_runtime_rele(rt);
}

/* Records a handler's outcome for call k. */
static void
call_result(srv_call *k, asynq_status st, ProtobufCMessage *reply,
    asynq_task *t)
{
	if (st != ASYNQ_OK) {
		if (reply != NULL)
			protobuf_c_message_free_unpacked(reply, NULL);
		asynq_error *e = t != NULL ? asynq_task_error(t) : NULL;
		k->status = st;
		if (e != NULL && asynq_error_code(e) == st)
			k->message = strdup(asynq_error_message(e));
		return;
	}
	if (reply != NULL && reply->descriptor != k->sm->m->output) {
		protobuf_c_message_free_unpacked(reply, NULL);
		call_fail(k, ASYNQ_INTERNAL,
		    "handler of %s replied with a "
		    "message of the wrong type",
		    k->sm->m->full_name);
		return;
	}
	k->status = ASYNQ_OK;
	if (reply == NULL)
		return; /* an empty message */
	size_t n = protobuf_c_message_get_packed_size(reply);
	if (n > 0) {
		k->out = malloc(n);
		if (k->out == NULL) {
			protobuf_c_message_free_unpacked(reply, NULL);
			call_fail(k, ASYNQ_RESOURCE_EXHAUSTED,
			    "server out of memory%s", "");
			return;
		}
		protobuf_c_message_pack(reply, k->out);
		k->out_len = n;
	}
	protobuf_c_message_free_unpacked(reply, NULL);
}

static asynq_status
task_main(asynq_task *t, void *arg)
{
	srv_task *k = arg;
	srv_req *r = k->r;
	const srv_method *sm = k->sm;
	int64_t dl = r->msg->deadline_unix_ns;
	bool pushed_dl = dl != 0 &&
	    asynq_scoped_push(&asynq_rpc_deadline, (void *)(intptr_t)dl) ==
	        ASYNQ_OK;
	bool pushed_req = asynq_scoped_push(&srv_req_key, k) == ASYNQ_OK;
	if (sm->h.unary != NULL) {
		srv_call *c = &r->calls[k->idx[0]];
		ProtobufCMessage *reply = NULL;
		asynq_status st = sm->h.unary(t, c->in, &reply, sm->ctx);
		call_result(c, st, reply, t);
	} else {
		asynq_rpc_batch_call *bc = calloc(k->n, sizeof(*bc));
		if (bc == NULL) {
			for (size_t i = 0; i < k->n; i++)
				call_fail(&r->calls[k->idx[i]],
				    ASYNQ_RESOURCE_EXHAUSTED,
				    "server out of memory%s", "");
			goto out;
		}
		for (size_t i = 0; i < k->n; i++)
			bc[i].req = r->calls[k->idx[i]].in;
		asynq_status st = sm->h.batch(t, bc, k->n, sm->ctx);
		for (size_t i = 0; i < k->n; i++) {
			srv_call *c = &r->calls[k->idx[i]];
			if (bc[i].status != ASYNQ_OK) {
				if (bc[i].reply != NULL)
					protobuf_c_message_free_unpacked(
					    bc[i].reply, NULL);
				c->status = bc[i].status;
				if (bc[i].message != NULL)
					c->message = strdup(bc[i].message);
			} else if (bc[i].reply != NULL || st == ASYNQ_OK) {
				call_result(c, ASYNQ_OK, bc[i].reply, NULL);
			} else {
				call_result(c, st, NULL, t);
			}
		}
		free(bc);
	}
out:
	if (pushed_req)
		(void)asynq_scoped_pop(&srv_req_key);
	if (pushed_dl)
		(void)asynq_scoped_pop(&asynq_rpc_deadline);
	return ASYNQ_OK;
}

static asynq_status
task_done(asynq_future *f, void *arg)
{
	srv_task *k = arg;
	srv_req *r = k->r;
	asynq_status st = asynq_future_status(f);
	if (st != ASYNQ_OK) {
		/* The task never ran (depth limit) or broke. */
		asynq_error *e = asynq_future_error(f);
		for (size_t i = 0; i < k->n; i++) {
			srv_call *c = &r->calls[k->idx[i]];
			if (c->status == ASYNQ_OK && c->out == NULL) {
				c->status = st;
				if (e != NULL)
					c->message =
					    strdup(asynq_error_message(e));
			}
		}
	}
	asynq_future_rele(f);
	if (--r->remaining == 0)
		req_finish(r);
	return ASYNQ_OK;
}

/* Worker: run the calls of a received request. */
static void
req_run(asynq_post *p)
{
	srv_ctx *c = (srv_ctx *)((char *)p - offsetof(srv_ctx, post));
	asynq_rpc_server *s = c->s;
	srv_req *r = c->req;
	c->req = NULL;
	size_t n_run = 0;
	for (size_t i = 0; i < r->n; i++)
		if (r->calls[i].sm != NULL)
			n_run++;
	if (s->w_inflight[c->worker] + n_run > s->cfg.max_inflight_calls) {
		atomic_fetch_add(&s->rejected, 1);
		uint64_t id = r->msg->request_id;
		dd_entry *dd = r->dd;
		asynq_runtime *rt = s->rt;
		req_free(r);
		answer(c, dd,
		    status_msg(ASYNQ_RESOURCE_EXHAUSTED,
		        "too many calls in flight", id));
		asynq_runtime_rele(rt);
		return;
	}
	int64_t dl = r->msg->deadline_unix_ns;
	if (dl != 0 && dl <= asynqi_realtime_ns()) {
		for (size_t i = 0; i < r->n; i++)
			if (r->calls[i].sm != NULL)
				call_fail(&r->calls[i], ASYNQ_DEADLINE_EXCEEDED,
				    "deadline passed before the call ran%s",
				    "");
		n_run = 0;
	}
	r->running = n_run;
	s->w_inflight[c->worker] += n_run;
	atomic_fetch_add(&s->calls, n_run);
	/* Group the calls into tasks: one per unary call, one per
	 * whole-batch method. */
	size_t n_tasks = 0;
	for (size_t i = 0; i < r->n; i++) {
		srv_call *k = &r->calls[i];
		if (k->sm == NULL)
			continue;
		if (k->sm->h.unary != NULL) {
			srv_task *t = &r->tasks[n_tasks++];
			t->r = r;
			t->sm = k->sm;
			t->one = i;
			t->idx = &t->one;
			t->n = 1;
			continue;
		}
		size_t j = 0;
		while (j < n_tasks && r->tasks[j].sm != k->sm)
			j++;
		if (j == n_tasks) {
			srv_task *t = &r->tasks[n_tasks++];
			t->r = r;
			t->sm = k->sm;
			t->n = 0;
		}
		r->tasks[j].n++;
	}
	/* Lay out the whole-batch index lists, then fill them. */
	size_t off = 0;
	for (size_t j = 0; j < n_tasks; j++) {
		srv_task *t = &r->tasks[j];
		if (t->sm->h.batch != NULL) {
			t->idx = &r->idx[off];
			off += t->n;
			t->n = 0;
		}
	}
	for (size_t i = 0; i < r->n; i++) {
		srv_call *k = &r->calls[i];
		if (k->sm == NULL || k->sm->h.batch == NULL)
			continue;
		size_t j = 0;
		while (r->tasks[j].sm != k->sm)
			j++;
		r->tasks[j].idx[r->tasks[j].n++] = i;
	}
	r->remaining = n_tasks + 1; /* + 1 until every task is started */
	for (size_t j = 0; j < n_tasks; j++) {
		srv_task *t = &r->tasks[j];
		asynq_future *f = asynq_spawn_at(task_main, t,
		    t->sm->m->full_name, __FILE__, __LINE__);
		if (f == NULL ||
		    asynq_future_on_done(f, task_done, t) != ASYNQ_OK) {
			asynq_future_rele(f);
			for (size_t i = 0; i < t->n; i++)
				call_fail(&r->calls[t->idx[i]],
				    ASYNQ_RESOURCE_EXHAUSTED,
				    "server out of memory%s", "");
			r->remaining--;
			continue;
		}
		asynq_task_start(f);
	}
	if (--r->remaining == 0)
		req_finish(r);
}

static const srv_method *
method_find(const asynq_rpc_server *s, const char *name)
{
	for (size_t i = 0; i < s->n_methods; i++)
		if (strcmp(s->methods[i].m->full_name, name) == 0)
			return &s->methods[i];
	return NULL;
}

/* nng thread: decode a received request and hand it to the worker. */
static void
req_received(srv_ctx *c, nng_msg *msg)
{
	asynq_rpc_server *s = c->s;
	atomic_fetch_add(&s->requests, 1);
	if (nng_msg_len(msg) > s->cfg.max_msg_bytes) {
		atomic_fetch_add(&s->rejected, 1);
		char why[96];
		snprintf(why, sizeof(why), "request of %zu bytes; limit %zu",
		    nng_msg_len(msg), s->cfg.max_msg_bytes);
		nng_msg_free(msg);
		send_status(c, ASYNQ_RESOURCE_EXHAUSTED, why, 0);
		return;
	}
	srv_req *r = calloc(1, sizeof(*r));
	if (r == NULL) {
		nng_msg_free(msg);
		send_status(c, ASYNQ_RESOURCE_EXHAUSTED, "server out of memory",
		    0);
		return;
	}
	r->c = c;
	asynqi_arena_init(&r->arena, s->cfg.decode_budget);
	ProtobufCMessage *m = NULL;
	asynq_status st = asynqi_rpc_decode(&asynq__rpc__request__descriptor,
	    nng_msg_body(msg), nng_msg_len(msg), &r->arena.pa, &r->arena, &m);
	nng_msg_free(msg);
	if (st != ASYNQ_OK) {
		if (st == ASYNQ_RESOURCE_EXHAUSTED)
			atomic_fetch_add(&s->rejected, 1);
		else
			atomic_fetch_add(&s->malformed, 1);
		req_free(r);
		send_status(c,
		    st == ASYNQ_RESOURCE_EXHAUSTED ? ASYNQ_RESOURCE_EXHAUSTED
		                                   : ASYNQ_INVALID_ARGUMENT,
		    st == ASYNQ_RESOURCE_EXHAUSTED
		        ? "request over the decode budget"
		        : "malformed request",
		    0);
		return;
	}
	r->msg = (Asynq__Rpc__Request *)m;
	uint64_t id = r->msg->request_id;
	if (r->msg->n_calls > s->cfg.max_calls) {
		atomic_fetch_add(&s->rejected, 1);
		char why[96];
		snprintf(why, sizeof(why), "request has %zu calls; limit %zu",
		    r->msg->n_calls, s->cfg.max_calls);
		req_free(r);
		send_status(c, ASYNQ_RESOURCE_EXHAUSTED, why, id);
		return;
	}
	r->n = r->msg->n_calls;
	size_t n1 = r->n != 0 ? r->n : 1;
	r->calls = calloc(n1, sizeof(*r->calls));
	r->tasks = calloc(n1, sizeof(*r->tasks));
	r->idx = calloc(n1, sizeof(*r->idx));
	if (r->calls == NULL || r->tasks == NULL || r->idx == NULL) {
		req_free(r);
		send_status(c, ASYNQ_RESOURCE_EXHAUSTED, "server out of memory",
		    id);
		return;
	}
	for (size_t i = 0; i < r->n; i++) {
		const Asynq__Rpc__Call *call = r->msg->calls[i];
		srv_call *k = &r->calls[i];
		k->call_id = call->call_id;
		k->wire = call;
		k->sm = method_find(s, call->method);
		if (k->sm == NULL) {
			call_fail(k, ASYNQ_UNIMPLEMENTED, "unknown method %s",
			    call->method);
			continue;
		}
		st = asynqi_rpc_decode(k->sm->m->input, call->payload.data,
		    call->payload.len, &r->arena.pa, &r->arena, &k->in);
		if (st != ASYNQ_OK)
			call_fail(k, st,
			    st == ASYNQ_RESOURCE_EXHAUSTED
			        ? "request message of %s over the decode limits"
			        : "malformed request message for %s",
			    k->sm->m->full_name);
	}
	nng_msg *stored = NULL;
	switch (dd_check(s, c, r, &stored)) {
	case DD_PARKED:
		/* c is answered with the original's reply. */
		req_free(r);
		return;
	case DD_ANSWERED:
		req_free(r);
		ctx_send(c, stored);
		return;
	case DD_FORGOTTEN:
		for (size_t i = 0; i < r->n; i++)
			if (r->calls[i].sm != NULL &&
			    !r->calls[i].sm->m->idempotent)
				call_fail(&r->calls[i], ASYNQ_ABORTED,
				    "%s was resent and the server cannot tell "
				    "whether it ran; not run again",
				    r->calls[i].sm->m->full_name);
		break;
	default:
		break;
	}
	if (asynq_runtime_hold(s->rt) != ASYNQ_OK) {
		dd_entry *dd = r->dd;
		req_free(r);
		answer(c, dd,
		    status_msg(ASYNQ_UNAVAILABLE, "server is stopping", id));
		return;
	}
	c->req = r;
	asynq_sched_post(asynq_runtime_sched(s->rt, c->worker), &c->post);
}

static void
rx_cb(void *arg)
{
	srv_ctx *c = arg;
	int rv = nng_aio_result(c->rx);
	if (rv != 0) {
		if (rv == NNG_ECLOSED) {
			pthread_mutex_lock(&c->s->mu);
			c->active = false;
			if (--c->s->active == 0)
				pthread_cond_broadcast(&c->s->cv);
			pthread_mutex_unlock(&c->s->mu);
			return;
		}
		rearm(c); /* stops if closing */
		return;
	}
	nng_msg *msg = nng_aio_get_msg(c->rx);
	nng_aio_set_msg(c->rx, NULL);
	req_received(c, msg);
}

static void
tx_cb(void *arg)
{
	srv_ctx *c = arg;
	if (nng_aio_result(c->tx) != 0) {
		nng_msg *msg = nng_aio_get_msg(c->tx);
		nng_aio_set_msg(c->tx, NULL);
		nng_msg_free(msg);
	}
	rearm(c);
}

/* ---- Server ------------------------------------------------------------ */

/* Reads a whole (PEM) file as a string; NULL on failure. */
static char *
file_read(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	for (;;) {
		if (cap - len < 4096) {
			cap = cap != 0 ? cap * 2 : 8192;
			char *nb =
			    cap <= (64u << 20) ? realloc(buf, cap) : NULL;
			if (nb == NULL) {
				free(buf);
				fclose(f);
				return NULL;
			}
			buf = nb;
		}
		size_t n = fread(buf + len, 1, cap - len - 1, f);
		len += n;
		if (n == 0)
			break;
	}
	bool bad = ferror(f) != 0;
	fclose(f);
	if (bad) {
		free(buf);
		return NULL;
	}
	buf[len] = '\0';
	return buf;
}

/* A TLS server configuration with the certificate and key of cfg. */
static asynq_status
tls_server_config(nng_tls_config **tp, const asynq_rpc_server_cfg *cfg)
{
	char *cert = file_read(cfg->tls_cert_file);
	char *key = file_read(cfg->tls_key_file);
	nng_tls_config *t = NULL;
	asynq_status st = ASYNQ_INVALID_ARGUMENT;
	int rv;
	if (cert == NULL || key == NULL)
		goto out;
	if ((rv = nng_tls_config_alloc(&t, NNG_TLS_MODE_SERVER)) != 0) {
		st = asynqi_rpc_status_from_nng(rv);
		t = NULL;
		goto out;
	}
	if ((rv = nng_tls_config_auth_mode(t, NNG_TLS_AUTH_MODE_NONE)) != 0 ||
	    (rv = nng_tls_config_own_cert(t, cert, key, NULL)) != 0) {
		st = rv == NNG_ENOMEM ? ASYNQ_RESOURCE_EXHAUSTED
		                      : ASYNQ_INVALID_ARGUMENT;
		nng_tls_config_free(t);
		t = NULL;
		goto out;
	}
	*tp = t;
	st = ASYNQ_OK;
out:
	if (key != NULL) {
		/* The private key does not linger in freed memory. */
		volatile char *v = key;
		for (size_t i = 0; v[i] != '\0'; i++)
			v[i] = 0;
	}
	free(key);
	free(cert);
	return st;
}

static void
conn_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	asynq_rpc_server *s = arg;
	switch (ev) {
	case NNG_PIPE_EV_ADD_PRE:
		/* nng runs REM_POST for every pipe that saw ADD_PRE, also
		 * one closed here, so counting here keeps the count exact
		 * when connections arrive at once. */
		if ((size_t)atomic_fetch_add(&s->conns, 1) >=
		    s->cfg.max_connections)
			nng_pipe_close(p);
		break;
	case NNG_PIPE_EV_REM_POST:
		atomic_fetch_sub(&s->conns, 1);
		break;
	default:
		break;
	}
}

asynq_status
asynq_rpc_server_alloc(asynq_rpc_server **sp, asynq_runtime *rt,
    const asynq_rpc_server_cfg *cfg)
{
	if (rt == NULL)
		return ASYNQ_INVALID_ARGUMENT;
	asynq_rpc_server *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq_status st = ASYNQ_RESOURCE_EXHAUSTED;
	s->rt = rt;
	if (cfg != NULL)
		s->cfg = *cfg;
	if ((s->cfg.tls_cert_file != NULL) != (s->cfg.tls_key_file != NULL)) {
		free(s);
		return ASYNQ_INVALID_ARGUMENT;
	}
	if (s->cfg.max_msg_bytes == 0)
		s->cfg.max_msg_bytes = DEFAULT_MAX_MSG;
	if (s->cfg.max_calls == 0)
		s->cfg.max_calls = DEFAULT_MAX_CALLS;
	if (s->cfg.max_inflight_calls == 0)
		s->cfg.max_inflight_calls = DEFAULT_MAX_INFLIGHT;
	if (s->cfg.max_connections == 0)
		s->cfg.max_connections = DEFAULT_MAX_CONNS;
	if (s->cfg.decode_budget == 0)
		s->cfg.decode_budget = 8 * s->cfg.max_msg_bytes;
	if (s->cfg.contexts_per_worker == 0)
		s->cfg.contexts_per_worker = DEFAULT_CONTEXTS;
	if (s->cfg.dedup_entries == 0)
		s->cfg.dedup_entries = DEFAULT_DEDUP_ENTRIES;
	if (s->cfg.dedup_age_ms == 0)
		s->cfg.dedup_age_ms = DEFAULT_DEDUP_AGE_MS;
	if (s->cfg.dedup_bytes == 0)
		s->cfg.dedup_bytes = DEFAULT_DEDUP_BYTES;
	atomic_init(&s->conns, 0);
	atomic_init(&s->requests, 0);
	atomic_init(&s->calls, 0);
	atomic_init(&s->rejected, 0);
	atomic_init(&s->malformed, 0);
	atomic_init(&s->duplicates, 0);
	size_t workers = asynq_runtime_workers(rt);
	s->n_ctxs = workers * s->cfg.contexts_per_worker;
	size_t nb = 64;
	while (nb < s->cfg.dedup_entries && nb < ((size_t)1 << 24))
		nb *= 2;
	s->dd.buckets = calloc(nb, sizeof(*s->dd.buckets));
	s->dd.mask = nb - 1;
	if (s->dd.buckets == NULL)
		goto fail_dd;
	if (pthread_mutex_init(&s->dd.mu, NULL) != 0)
		goto fail_dd_mu;
	if (s->cfg.tls_cert_file != NULL &&
	    (st = tls_server_config(&s->tls, &s->cfg)) != ASYNQ_OK)
		goto fail_tls;
	st = ASYNQ_RESOURCE_EXHAUSTED;
	if (pthread_mutex_init(&s->mu, NULL) != 0)
		goto fail_mu;
	if (pthread_cond_init(&s->cv, NULL) != 0)
		goto fail_cv;
	s->w_inflight = calloc(workers, sizeof(*s->w_inflight));
	s->ctxs = calloc(s->n_ctxs, sizeof(*s->ctxs));
	if (s->w_inflight == NULL || s->ctxs == NULL)
		goto fail_arrays;
	int rv;
	if ((rv = nng_rep0_open(&s->sock)) != 0) {
		st = asynqi_rpc_status_from_nng(rv);
		goto fail_arrays;
	}
	if ((rv = nng_socket_set_size(s->sock, NNG_OPT_RECVMAXSZ,
	         s->cfg.max_msg_bytes + SIZE_SLACK)) != 0 ||
	    (rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_ADD_PRE, conn_cb, s)) !=
	        0 ||
	    (rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_REM_POST, conn_cb, s)) !=
	        0) {
		st = asynqi_rpc_status_from_nng(rv);
		goto fail_ctxs;
	}
	for (size_t i = 0; i < s->n_ctxs; i++) {
		srv_ctx *c = &s->ctxs[i];
		c->s = s;
		c->worker = i % workers;
		c->post.fn = req_run;
		if (nng_aio_alloc(&c->rx, rx_cb, c) != 0 ||
		    nng_aio_alloc(&c->tx, tx_cb, c) != 0 ||
		    nng_ctx_open(&c->ctx, s->sock) != 0)
			goto fail_ctxs;
		c->ctx_open = true;
	}
	*sp = s;
	return ASYNQ_OK;

fail_ctxs:
	nng_close(s->sock);
	for (size_t i = 0; i < s->n_ctxs; i++) {
		nng_aio_free(s->ctxs[i].rx);
		nng_aio_free(s->ctxs[i].tx);
	}
fail_arrays:
	free(s->ctxs);
	free(s->w_inflight);
	pthread_cond_destroy(&s->cv);
fail_cv:
	pthread_mutex_destroy(&s->mu);
fail_mu:
	if (s->tls != NULL)
		nng_tls_config_free(s->tls);
fail_tls:
	pthread_mutex_destroy(&s->dd.mu);
fail_dd_mu:
	free(s->dd.buckets);
fail_dd:
	free(s);
	return st;
}

asynq_status
asynq_rpc_server_add_service(asynq_rpc_server *s,
    const asynq_rpc_service_desc *svc, const asynq_rpc_handler *handlers,
    void *ctx)
{
	if (svc == NULL || (svc->n_methods > 0 && handlers == NULL))
		return ASYNQ_INVALID_ARGUMENT;
	if (s->started)
		return ASYNQ_FAILED_PRECONDITION;
	for (size_t i = 0; i < svc->n_methods; i++) {
		const asynq_rpc_handler *h = &handlers[i];
		bool whole = svc->methods[i].whole_batch;
		if ((h->unary != NULL) == (h->batch != NULL) ||
		    (whole && h->batch == NULL) || (!whole && h->unary == NULL))
			return ASYNQ_INVALID_ARGUMENT;
		if (method_find(s, svc->methods[i].full_name) != NULL)
			return ASYNQ_ALREADY_EXISTS;
	}
	srv_method *m = realloc(s->methods,
	    (s->n_methods + svc->n_methods + 1) * sizeof(*m));
	if (m == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	s->methods = m;
	for (size_t i = 0; i < svc->n_methods; i++)
		s->methods[s->n_methods++] =
		    (srv_method){ &svc->methods[i], handlers[i], ctx };
	return ASYNQ_OK;
}

asynq_status
asynq_rpc_server_listen(asynq_rpc_server *s, const char *url)
{
	if (url == NULL)
		return ASYNQ_INVALID_ARGUMENT;
	pthread_mutex_lock(&s->mu);
	bool closing = s->closing;
	pthread_mutex_unlock(&s->mu);
	if (closing)
		return ASYNQ_FAILED_PRECONDITION;
	int rv;
	if (strncmp(url, "tls+", 4) == 0) {
		if (s->tls == NULL)
			return ASYNQ_INVALID_ARGUMENT; /* no certificate */
		nng_listener l;
		rv = nng_listener_create(&l, s->sock, url);
		if (rv == 0 &&
		    (rv = nng_listener_set_ptr(l, NNG_OPT_TLS_CONFIG,
		         s->tls)) == 0)
			rv = nng_listener_start(l, 0);
		if (rv != 0 && rv != NNG_EINVAL && rv != NNG_ENOTSUP &&
		    rv != NNG_EADDRINVAL)
			nng_listener_close(l);
	} else {
		rv = nng_listen(s->sock, url, NULL, 0);
	}
	if (rv != 0)
		return rv == NNG_EADDRINUSE ? ASYNQ_UNAVAILABLE
		    : rv == NNG_ENOMEM      ? ASYNQ_RESOURCE_EXHAUSTED
		                            : ASYNQ_INVALID_ARGUMENT;
	pthread_mutex_lock(&s->mu);
	bool start = !s->started;
	if (start) {
		s->started = true;
		s->active = s->n_ctxs;
		for (size_t i = 0; i < s->n_ctxs; i++)
			s->ctxs[i].active = true;
	}
	pthread_mutex_unlock(&s->mu);
	if (start)
		for (size_t i = 0; i < s->n_ctxs; i++)
			ctx_recv(&s->ctxs[i]);
	return ASYNQ_OK;
}

void
asynq_rpc_server_close(asynq_rpc_server *s)
{
	pthread_mutex_lock(&s->mu);
	if (s->closed) {
		pthread_mutex_unlock(&s->mu);
		return;
	}
	s->closing = true;
	while (s->active > 0 || s->in_nng > 0) {
		/* Cancel the receives of idle contexts; busy ones stop after
		 * their reply is sent. Repeat to catch a context that was
		 * re-arming as closing was set. */
		pthread_mutex_unlock(&s->mu);
		for (size_t i = 0; i < s->n_ctxs; i++)
			nng_aio_cancel(s->ctxs[i].rx);
		pthread_mutex_lock(&s->mu);
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 20 * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		if (s->active > 0 || s->in_nng > 0)
			(void)pthread_cond_timedwait(&s->cv, &s->mu, &ts);
	}
	s->closed = true;
	pthread_mutex_unlock(&s->mu);
	nng_close(s->sock);
}

void
asynq_rpc_server_free(asynq_rpc_server *s)
{
	if (s == NULL)
		return;
	asynq_rpc_server_close(s);
	for (size_t i = 0; i < s->n_ctxs; i++) {
		nng_aio_free(s->ctxs[i].rx);
		nng_aio_free(s->ctxs[i].tx);
	}
	free(s->ctxs);
	free(s->w_inflight);
	free(s->methods);
	dd_fini(&s->dd);
	if (s->tls != NULL)
		nng_tls_config_free(s->tls);
	pthread_cond_destroy(&s->cv);
	pthread_mutex_destroy(&s->mu);
	free(s);
}

void
asynq_rpc_server_stats_get(const asynq_rpc_server *s,
    asynq_rpc_server_stats *out)
{
	asynq_rpc_server *m = (asynq_rpc_server *)s;
	out->requests = atomic_load(&m->requests);
	out->calls = atomic_load(&m->calls);
	out->rejected = atomic_load(&m->rejected);
	out->malformed = atomic_load(&m->malformed);
	out->duplicates = atomic_load(&m->duplicates);
}
