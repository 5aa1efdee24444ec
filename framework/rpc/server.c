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
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

#include <nng/protocol/reqrep0/rep.h>

#define DEFAULT_MAX_MSG (4u << 20)
#define DEFAULT_MAX_CALLS 10000
#define DEFAULT_MAX_INFLIGHT 100000
#define DEFAULT_MAX_CONNS 1024
#define DEFAULT_CONTEXTS 8

typedef struct srv_method {
	const asynq_rpc_method_desc *m;
	asynq_rpc_handler h;
	void *ctx;
} srv_method;

typedef struct srv_ctx srv_ctx;
typedef struct srv_req srv_req;

/* One call of a request and its result. */
typedef struct srv_call {
	const srv_method *sm; /* NULL when the result is already set */
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
};

struct srv_ctx {
	asynq_rpc_server *s;
	size_t worker;
	nng_ctx ctx;
	nng_aio *rx, *tx;
	asynq_post post;
	srv_req *req;
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
};

/* The request the current handler serves; its value is a srv_req. */
static const asynq_scoped srv_req_key = ASYNQ_SCOPED_INIT("asynq.rpc.req", 0);

const void *
asynq_rpc_metadata_get(const char *key, size_t *len)
{
	srv_req *r = asynq_scoped_get(&srv_req_key);
	if (r == NULL || key == NULL)
		return NULL;
	for (size_t i = 0; i < r->msg->n_metadata; i++) {
		const Asynq__Rpc__Metadata *md = r->msg->metadata[i];
		if (strcmp(md->key, key) == 0) {
			if (len != NULL)
				*len = md->value.len;
			return md->value.data != NULL
			    ? (const void *)md->value.data
			    : (const void *)"";
		}
	}
	return NULL;
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

/* Answers the whole request with one status. Any thread owning c. */
static void
send_status(srv_ctx *c, asynq_status st, const char *message,
    uint64_t request_id)
{
	Asynq__Rpc__Reply rep = ASYNQ__RPC__REPLY__INIT;
	rep.status = (int32_t)st;
	rep.message = (char *)message;
	rep.request_id = request_id;
	nng_msg *msg = NULL;
	(void)asynqi_rpc_pack_msg(&rep.base, &msg);
	ctx_send(c, msg);
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
	req_free(r);
	/* Once the reply is sent, close may return and free s. */
	asynq_runtime *rt = s->rt;
	if (msg != NULL)
		ctx_send(c, msg);
	else
		send_status(c, ASYNQ_RESOURCE_EXHAUSTED, "server out of memory",
		    request_id);
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
	bool pushed_req = asynq_scoped_push(&srv_req_key, r) == ASYNQ_OK;
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
		asynq_runtime *rt = s->rt;
		req_free(r);
		send_status(c, ASYNQ_RESOURCE_EXHAUSTED,
		    "too many calls in flight", id);
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
	if (asynq_runtime_hold(s->rt) != ASYNQ_OK) {
		req_free(r);
		send_status(c, ASYNQ_UNAVAILABLE, "server is stopping", id);
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

static void
conn_cb(nng_pipe p, nng_pipe_ev ev, void *arg)
{
	asynq_rpc_server *s = arg;
	switch (ev) {
	case NNG_PIPE_EV_ADD_PRE:
		if ((size_t)atomic_load(&s->conns) >= s->cfg.max_connections)
			nng_pipe_close(p);
		break;
	case NNG_PIPE_EV_ADD_POST:
		atomic_fetch_add(&s->conns, 1);
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
	if (s->cfg.tls_cert_file != NULL || s->cfg.tls_key_file != NULL) {
		free(s);
		return ASYNQ_UNIMPLEMENTED; /* tls+tcp: not yet */
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
	atomic_init(&s->conns, 0);
	atomic_init(&s->requests, 0);
	atomic_init(&s->calls, 0);
	atomic_init(&s->rejected, 0);
	atomic_init(&s->malformed, 0);
	atomic_init(&s->duplicates, 0);
	size_t workers = asynq_runtime_workers(rt);
	s->n_ctxs = workers * s->cfg.contexts_per_worker;
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
	         s->cfg.max_msg_bytes)) != 0 ||
	    (rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_ADD_PRE, conn_cb, s)) !=
	        0 ||
	    (rv = nng_pipe_notify(s->sock, NNG_PIPE_EV_ADD_POST, conn_cb, s)) !=
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
	int rv = nng_listen(s->sock, url, NULL, 0);
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
