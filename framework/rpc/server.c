/* SPDX-License-Identifier: MIT */
/*
 * The RPC server: listeners accept connections (conn.c) that speak the
 * asynq framing (proto/asynq/rpc.proto); the requests read on a connection
 * run on the runtime worker the connection belongs to, many at once, and
 * each is answered with one REPLY frame as soon as its calls are done.
 *
 * Design notes:
 * - Reading runs on nng's threads (or, in process, on the connection's
 *   worker in a post): it checks the preface, answers with the server's
 *   preface and HELLO, cuts frames, and for each REQUEST decodes the
 *   envelope and every call's message into a per-request arena with a byte
 *   budget (never on a coroutine stack), resolves methods (by the
 *   connection's method table or by name), applies the limits, consults the
 *   dedup table, holds the runtime (asynq_runtime_hold) and posts the
 *   request to the worker; a burst of posts costs one wake-up. Requests
 *   refused before they run are answered from the reader.
 * - Requests spread over the workers as they arrive, whatever their
 *   connection (one client usually has one connection). On the worker, a
 *   request's calls run as tasks: one per whole-batch method, and for each
 *   run of unary calls a runner, which calls their handlers one after
 *   another on its own stack. A handler that finishes without suspending
 *   so costs a call, not a task. When one is about to suspend, the
 *   scheduler lets the runner hand the calls after it to a new runner
 *   (framework/core/handoff.h), started at once behind what that handler
 *   awaits, so they run, and their downstream calls join the same
 *   batches, as they would were each its own task. A runner awaits the one
 *   it handed to before it ends. Between handlers it pops the scoped
 *   values a handler left pushed (metadata for its calls, say), clears the
 *   task's last error and names itself after the method it runs. Each
 *   result is packed straight into the request's reply buffer as a Result
 *   field; the last task to finish completes the frame, queues it on the
 *   connection and marks the connection dirty. A post on the worker flushes
 *   its dirty connections, so replies that finish in one pass of the
 *   scheduler go out in one write.
 * - Connection state `sc` is reference counted (atomics): the transport's
 *   reference until on_close, one per request in flight, one per dirty
 *   mark, one per parked dedup copy. A connection with more than
 *   max_conn_requests requests or max_conn_calls calls in flight stops
 *   reading until they are down to half, so a pipelining client cannot
 *   grow the server's memory (decoded requests) without bound.
 * - Admission control (CoDel on the time a request waits to start): each
 *   worker keeps, per interval of ADM_INTERVAL_TARGETS queue targets, the
 *   shortest wait of the requests it started and how many it ran. A worker
 *   whose shortest wait exceeded the target over a whole interval has a
 *   standing queue, not a burst, and is overloaded for the next: requests
 *   it starts after waiting over a whole interval are answered
 *   RESOURCE_EXHAUSTED instead of run, and the reader refuses a request
 *   at once, before decoding it, when more requests already wait for the
 *   worker than it ran per target (its budget, at least ADM_MIN_BUDGET).
 *   Refusing early, cheaply and rarely late matters with batching: a
 *   request shed after it waited may carry hundreds of calls whose callers
 *   upstream have done all their work. Posts run before tasks,
 *   so the wait measured is from the read to the request task's start.
 *   Beside it, a limit on the server's calls in flight (limit.c) follows
 *   the time requests spend in the server, read to reply, against
 *   latency_target_us: a frontend's time goes to its outgoing batches,
 *   which grow with what it admits, not to its own queue. The reader
 *   checks it with the queue's budget, before decoding; each finished
 *   request is a sample on its worker.
 * - Connection hygiene: a connection with more than max_write_queue_bytes
 *   of replies unwritten stops reading too (out_done resumes it at half),
 *   and one far past it is closed at once. A sweeper thread, a few times
 *   per shortest timeout, closes connections whose preface or current frame
 *   is overdue or whose write queue stayed over the cap, and sends idle ones
 *   (no request in flight, nothing read) a GOAWAY and closes them once it
 *   is written. At the connection cap, accept does the same to the
 *   connection idle longest. Such connections are `doomed` (not picked
 *   twice, not counted against the cap); one that does not take its GOAWAY
 *   within CLOSE_LINGER_MS is cut. In-process connections are exempt.
 * - Closing: `closing` stops the listeners; every connection gets a GOAWAY
 *   naming the last request id it accepted (under the connection's mutex,
 *   so no request is accepted after the id is read); requests read later
 *   are answered UNAVAILABLE without running. Close waits until every
 *   request received is answered, then closes each connection once its
 *   queued writes are sent, and waits until every connection is gone.
 * - The server must be closed before its runtime stops: requests received
 *   while the runtime stops are answered UNAVAILABLE.
 * - At-most-once (dedup.c): a request with a client_id and a non-idempotent
 *   call is entered in the table while it runs and remembered with its
 *   reply; copies of it never reach a worker.
 * - Observability: per-method counters (calls by final status, latency
 *   from the read to the handler's return, calls per request) and the
 *   server's calls-per-request histogram are kept per worker (mstats.c),
 *   so counting a call costs no atomic read-modify-write; readers sum the
 *   workers' slots under s->mu. The health service (health.c) is added
 *   by alloc like any other and reads asynq_rpc_server_serving; so is
 *   the reflection service (reflection.c), which reads the services'
 *   tables through asynq_rpc_server_service.
 * - Peers (asynq_rpc_peer_get): a connection's identity is read once and
 *   kept with it: its address at accept, and for TLS the verified client
 *   certificate's subject and SANs by the reader on the first bytes (the
 *   handshake is done by then), before any request of it exists; the
 *   post that hands a request to its worker orders the two. A handler
 *   finds it through its task's srv_task, as it finds metadata.
 * - TLS (tls.c): the listeners' configuration is asynq's own nng engine's,
 *   so asynq_rpc_server_reload_tls swaps the certificates it gives new
 *   connections without touching the listeners; a failed handshake is
 *   logged from on_close with the engine's reason.
 * - Interceptors (asynq_rpc_interceptor; intercept.c has the built-in
 *   ones): with any (r->icpt), the request's task gives each call still to
 *   run, after admission and before grouping, a srv_icall in the request's
 *   arena and runs the before hooks; a call one rejects is answered at once
 *   and never grouped, so no handler and no whole batch sees it. The after
 *   hooks run once per call (passed drops to 0) where its result is put:
 *   call_result, call_fail. Metadata hooks add lives in the arena and
 *   shadows the call's own for asynq_rpc_metadata_get. Without
 *   interceptors a call pays a NULL ic and the r->icpt tests.
 * - Authorization policies are resolved at the first listen into each
 *   srv_method (settings over the descriptor's), which also puts the
 *   authorization interceptor first when some method has one; the tables
 *   are fixed from then on, so workers read them without locks.
 * - Lock order: s->mu, then sc->mu; the dedup table's lock is a leaf; no
 *   server lock is held while calling into conn.c.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>

#include "conn.h"
#include "framework/core/handoff.h"
#include "framework/core/platform.h"
#include "dedup.h"
#include "asynq/log.h"
#include "health.h"
#include "reflection.h"
#include "internal.h"
#include "limit.h"
#include "mstats.h"
#include "tls.h"

#define DEFAULT_MAX_MSG (4u << 20)
#define DEFAULT_MAX_CALLS 10000
#define DEFAULT_MAX_INFLIGHT 100000
#define DEFAULT_MAX_CONNS 1024
#define DEFAULT_DEDUP_ENTRIES 4096
#define DEFAULT_DEDUP_AGE_MS 60000
#define DEFAULT_DEDUP_BYTES (16u << 20)
/* A request up to this much over max_msg_bytes is read and answered
 * RESOURCE_EXHAUSTED; a longer frame closes the connection. */
#define SIZE_SLACK (64u << 10)
#define put_varint asynqi_put_varint
/* Requests in flight on one connection before it stops reading. */
#define DEFAULT_CONN_REQUESTS 256
/* How long close waits for a peer to read the last replies. */
#define CLOSE_LINGER_MS 2000
#define DEFAULT_HANDSHAKE_MS 10000
#define DEFAULT_IDLE_MS 300000
#define DEFAULT_FRAME_MS 30000
#define DEFAULT_WRITE_QUEUE (4u << 20)
#define DEFAULT_QUEUE_TARGET_US 5000
#define DEFAULT_SLOW_REQUEST_MS 1000
/* Admission intervals last this many queue targets (CoDel's 100 ms for
 * 5 ms). */
#define ADM_INTERVAL_TARGETS 20
/* Requests that may always wait for an overloaded worker: a service that
 * gets few large requests (batches of hundreds of calls from another
 * service) runs about one per target, and refusing the second of two that
 * arrive together would throw away all the work their callers did. */
#define ADM_MIN_BUDGET 4
/* The limit on calls in flight (limit.h) never falls below
 * ADM_MIN_LIMIT_PER_WORKER calls per worker, lets requests' time in the
 * server grow to ADM_LATENCY_TOLERANCE times what it is unloaded before it
 * binds, and has a cap only once that cap is ADM_BURST_PER_WORKER calls
 * per worker or more. */
#define ADM_MIN_LIMIT_PER_WORKER 16
#define ADM_LATENCY_TOLERANCE 4.0
#define ADM_BURST_PER_WORKER 128
/* Connections the sweeper closes in one pass; the rest wait a tick. */
#define SWEEP_BATCH 256

typedef struct srv_method {
	const asynq_rpc_method_desc *m;
	asynq_rpc_handler h;
	void *ctx;
	asynqi_mstats *st; /* per worker, slot w written by worker w only */
	asynqi_policy pol; /* who may call it, resolved at the first listen */
	/* The codecs of its request and response when usable
	 * (asynqi_codec_usable), else NULL. */
	const asynq_rpc_codec *in_codec, *out_codec;
} srv_method;

typedef struct srv_conn srv_conn;
typedef struct srv_req srv_req;
typedef struct srv_icall srv_icall;

/* An entry of a connection's method table: the method, or for a name the
 * server lacks, the name (malloc'd), for the error message. */
typedef struct srv_mt_entry {
	const srv_method *sm;
	char *missing;
} srv_mt_entry;
typedef struct srv_writer srv_writer;

/* Admission control of one worker (see the design notes). */
typedef struct srv_adm {
	/* Written by the worker, read by readers. */
	atomic_bool overloaded;
	atomic_uint budget; /* requests that start within the target */
	/* When the overloaded verdict is due again (the next interval's
	 * end): past it, the worker has started nothing since. */
	atomic_int_fast64_t verdict_until;
	/* Requests posted to the worker and not started: readers add,
	 * the worker takes away; busy_since: when a reader last found
	 * none waiting. */
	atomic_uint waiting;
	atomic_int_fast64_t busy_since;
	/* Worker only. */
	int64_t interval_end; /* monotonic ns */
	int64_t interval_start;
	int64_t min_sojourn;
	uint32_t started;
	char pad[64];
} srv_adm;

/* One call of a request and its result. */
typedef struct srv_call {
	const srv_method *sm; /* NULL when the result is already set */
	const asynqi_call_ref *wire;
	ProtobufCMessage *in; /* decoded request message, in the arena */
	uint64_t call_id;
	bool answered;
	srv_icall *ic; /* its interceptors' state, in the arena; NULL without */
} srv_call;

/* Metadata an interceptor added to a call, in the request's arena. */
typedef struct srv_md_extra srv_md_extra;
struct srv_md_extra {
	srv_md_extra *next; /* added earlier */
	const char *key;
	const void *val;
	size_t len;
};

/* The interceptors' state of one call (see the design notes). */
struct srv_icall {
	asynqi_icall base;
	asynq_rpc_call_info info;
	srv_req *r;
	srv_call *k;
	srv_md_extra *md;
	bool has_trace;
	asynqi_trace trace; /* the handler's, when has_trace */
	size_t passed;      /* interceptors whose before let the call go on */
	void *state[];
};

/* A runner: a task that runs unary calls r->tasks[next..end) one after
 * another, each handler as a plain call, until one is about to suspend;
 * then the calls after it go to a new runner, `rest`, which this one
 * awaits once that handler is done (see the design notes). */
typedef struct srv_runner {
	srv_req *r;
	size_t next, end;
	asynq_future *rest;
	asynqi_handoff hook;
} srv_runner;

/* One job of a request: a unary call, or a whole-batch method's calls. */
typedef struct srv_task {
	srv_req *r;
	const srv_method *sm;
	size_t *idx; /* indexes into r->calls */
	size_t n;
	size_t one;
	asynq_rpc_cache *cache; /* its request cache, made on first use */
	srv_runner run;         /* the runner that starts at this unary call */
} srv_task;

struct srv_req {
	srv_conn *sc;  /* holds a reference */
	size_t worker; /* the worker that runs it */
	asynq_post post;
	asynqi_arena arena;
	asynqi_request_ref rq; /* points into a copy of the body, in arena */
	uint64_t request_id;
	int64_t deadline; /* CLOCK_REALTIME ns, 0 for none */
	int64_t recv_ns;  /* monotonic, when read */
	bool waiting;     /* counted in its worker's adm.waiting */
	srv_call *calls;
	size_t n;
	srv_task *tasks;
	size_t *idx;
	size_t n_tasks; /* of `tasks`, worker only */
	size_t running; /* calls counted in the worker's in-flight count */
	asynqi_dd_entry *dd;
	asynqi_buf out;      /* the reply frame being built */
	asynqi_tokcache *tc; /* authorization's, in the arena; made on use */
	bool icpt;           /* the server has interceptors */
	asynqi_trace_memo trace_memo; /* the trace interceptor's */
};

/* A reply frame on its way out. */
typedef struct srv_out {
	asynqi_wbuf w;
	srv_conn *sc; /* holds a reference */
	uint8_t *p;   /* malloc'd frame */
} srv_out;

struct srv_conn {
	asynq_rpc_server *s;
	asynqi_conn *c; /* holds a reference */
	atomic_long refs;
	long inflight;         /* requests not answered, under mu */
	size_t inflight_calls; /* their calls, under mu */
	/* In process: the worker its reads run on, which takes its requests
	 * when it has no more calls in flight than the others (no hop to
	 * another thread each way); -1 for a stream. */
	int home;
	pthread_mutex_t mu;
	bool goaway;      /* under mu */
	uint64_t last_id; /* under mu */
	/* Reading stops while too many requests are in flight or too many
	 * reply bytes wait to be written (since wq_since_ns); under mu. */
	bool paused_calls, paused_wq, paused;
	atomic_bool stop_reading; /* paused, read by the reader */
	int64_t wq_since_ns;
	atomic_bool wq_over; /* paused_wq, read without mu */
	/* Room its next request starts with, from the last one finished:
	 * the arena's first chunk and the reply frame's bytes (relaxed; set
	 * by workers, read by the reader). */
	atomic_size_t arena_hint, out_hint;
	/* Reader only. */
	bool got_preface;
	/* For the sweeper (monotonic ns): when accepted, when bytes last
	 * arrived, and since when an incomplete frame waits (0: none). */
	int64_t accepted_ns;
	atomic_int_fast64_t last_ns;
	atomic_int_fast64_t partial_ns;
	atomic_bool preface_ok;
	/* Under s->mu: being closed for the sweeper or to make room (GOAWAY
	 * sent, closing once flushed), since doomed_ns; counted in
	 * s->evicting until on_close. */
	bool doomed;
	int64_t doomed_ns;
	bool closed; /* on_close ran (it may live on for its requests) */
	srv_mt_entry *mt;
	size_t n_mt;
	/* Who is calling (asynq_rpc_peer_get): the address is set at accept,
	 * the certificate's identity by the reader before the first request,
	 * and both are constant after; requests point at it. */
	asynq_rpc_peer peer;
	char addr[128];
	asynqi_tls_peer tp; /* the strings peer points at */
	bool peer_read;     /* reader only: tp was read */
	/* Bit w: listed by worker w's writer (workers 0-63). */
	atomic_uint_fast64_t dirty_mask;
	/* Server's list, under s->mu. */
	srv_conn *prev, *next;
};

/* Flushes the connections a worker's replies made dirty. */
struct srv_writer {
	asynq_post post;
	asynq_rpc_server *s;
	size_t index;
	srv_conn **dirty; /* worker only, each held */
	size_t n_dirty, cap_dirty;
	bool posted; /* worker only */
};

asynq_status (*asynqi_admin_for_server)(asynq_rpc_server *s, asynq_runtime *rt,
    const char *url, void **handle, char *err, size_t err_len);
void (*asynqi_admin_for_server_close)(void *handle);

struct asynq_rpc_server {
	void *admin; /* cfg.admin_url's endpoint, once listening */
	asynq_runtime *rt;
	asynq_rpc_server_cfg cfg;
	srv_method *methods;
	size_t n_methods;
	size_t workers;
	size_t *w_inflight;    /* per worker, worker only */
	atomic_size_t *w_load; /* calls read and not answered, per worker */
	srv_adm *adm;          /* per worker */
	asynqi_limit limit;    /* calls in flight; when limit_on */
	bool limit_on;
	srv_writer *writers;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool started, closing, closed; /* under mu */
	asynqi_listener **listeners;   /* under mu */
	size_t n_listeners;
	srv_conn *conns;   /* under mu */
	size_t n_conns;    /* srv_conns alive, under mu */
	size_t open;       /* accepted and not closed yet, under mu */
	size_t evicting;   /* of those, doomed ones, under mu */
	pthread_t sweeper; /* closes stalled and idle connections */
	bool sweeper_on;
	pthread_cond_t sweep_cv; /* CLOCK_MONOTONIC */
	long reqs;               /* requests held, under mu */
	long writer_posts;       /* writer posts queued, under mu */
	atomic_size_t next_worker;
	atomic_uint_fast64_t requests, calls, rejected, malformed, duplicates;
	atomic_uint_fast64_t conns_refused, conns_evicted, conns_idle,
	    conns_stalled, conns_overflowed, shed, shed_late, shed_limit;
	asynqi_dedup *dd;
	asynqi_tls *tls; /* tls+tcp listeners' configuration, or NULL */
	/* Copies of the TLS files' paths (cfg's point at them), so that a
	 * reload reads the same files whatever the caller did with its
	 * strings. */
	char *tls_paths[4];
	uint64_t instance; /* Hello.instance: this server, at random */
	/* What the last failed set-up call (add_service, listen) failed at,
	 * in words; under mu. */
	char last_error[256];
	asynqi_wstats *w_stats;  /* per worker, as srv_method.st */
	atomic_bool not_serving; /* asynq_rpc_server_set_serving(s, false) */
	/* The services added, in order, for the reflection service; under
	 * mu. */
	const asynq_rpc_service_desc **services;
	size_t n_services;
	/* Interceptors in order, borrowed (the array is the server's);
	 * fixed once listening. */
	const asynq_rpc_interceptor **icpt;
	size_t n_icpt;
	bool policies_done; /* resolved at the first listen, under mu */
};

/* Records why a set-up call failed and returns st. */
static asynq_status setup_fail(asynq_rpc_server *s, asynq_status st,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* Sets what asynq_rpc_server_last_error says. */
static void
last_error_set(asynq_rpc_server *s, const char *msg)
{
	pthread_mutex_lock(&s->mu);
	snprintf(s->last_error, sizeof(s->last_error), "%.*s",
	    (int)sizeof(s->last_error) - 1, msg);
	pthread_mutex_unlock(&s->mu);
}

static asynq_status
setup_fail(asynq_rpc_server *s, asynq_status st, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char msg[sizeof(s->last_error)];
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	last_error_set(s, msg);
	asynq_log(ASYNQ_LOG_ERROR, "setup_failed", "status",
	    asynq_status_name(st), "error", msg, NULL);
	return st;
}

const char *
asynq_rpc_server_last_error(const asynq_rpc_server *s)
{
	return s != NULL ? s->last_error : "";
}

/* The task the current handler runs in; its value is a srv_task. */
static const asynq_scoped srv_req_key = ASYNQ_SCOPED_INIT("asynq.rpc.req", 0);

void
asynq_rpc_batch_call_failf(asynq_rpc_batch_call *c, asynq_status st,
    const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	char *text = NULL;
	if (vasprintf(&text, fmt, ap) < 0)
		text = NULL;
	va_end(ap);
	free(c->formatted);
	c->formatted = text;
	c->status = st != ASYNQ_OK ? st : ASYNQ_UNKNOWN;
}

asynq_rpc_cache **
asynqi_rpc_handler_cache(const asynq_rpc_cache_cfg **cfg)
{
	srv_task *k = asynq_scoped_get(&srv_req_key);
	if (k == NULL)
		return NULL;
	*cfg = &k->r->sc->s->cfg.request_cache;
	return &k->cache;
}

/* ---- Metadata ------------------------------------------------------------ */

static const void *
md_find(const asynqi_md_ref *mds, size_t n, const char *key, size_t *len)
{
	size_t klen = strlen(key);
	for (size_t i = 0; i < n; i++) {
		if (mds[i].klen == klen && memcmp(mds[i].key, key, klen) == 0) {
			if (len != NULL)
				*len = mds[i].vlen;
			return mds[i].val != NULL ? (const void *)mds[i].val
			                          : (const void *)"";
		}
	}
	return NULL;
}

/* The value interceptors added to a call for key, or NULL. */
static const srv_md_extra *
extra_find(const srv_icall *ic, const char *key)
{
	for (const srv_md_extra *e = ic != NULL ? ic->md : NULL; e != NULL;
	     e = e->next)
		if (strcmp(e->key, key) == 0)
			return e;
	return NULL;
}

/* Metadata key of call c of r as its handler sees it. */
static const void *
call_md(const srv_req *r, const srv_call *c, const char *key, size_t *len)
{
	const srv_md_extra *e = extra_find(c->ic, key);
	if (e != NULL) {
		if (len != NULL)
			*len = e->len;
		return e->val;
	}
	const asynqi_call_ref *w = c->wire;
	const void *v = md_find(w->md, w->n_md, key, len);
	if (v != NULL || w->own_metadata)
		return v;
	return md_find(r->rq.md, r->rq.n_md, key, len);
}

const void *
asynq_rpc_metadata_get(const char *key, size_t *len)
{
	const srv_task *k = asynq_scoped_get(&srv_req_key);
	if (k == NULL || key == NULL)
		return NULL;
	const srv_req *r = k->r;
	if (k->sm->h.unary != NULL)
		return call_md(r, &r->calls[k->idx[0]], key, len);
	/* A whole batch: what interceptors gave every one of its calls
	 * alike, else the request's shared metadata. */
	if (k->n != 0 && r->calls[k->idx[0]].ic != NULL) {
		const srv_md_extra *e0 =
		    extra_find(r->calls[k->idx[0]].ic, key);
		bool same = e0 != NULL;
		for (size_t i = 1; same && i < k->n; i++) {
			const srv_md_extra *e =
			    extra_find(r->calls[k->idx[i]].ic, key);
			same = e != NULL && e->len == e0->len &&
			    memcmp(e->val, e0->val, e0->len) == 0;
		}
		if (same) {
			if (len != NULL)
				*len = e0->len;
			return e0->val;
		}
	}
	return md_find(r->rq.md, r->rq.n_md, key, len);
}

const void *
asynqi_srv_call_metadata(const asynq_rpc_call_info *c, const char *key,
    size_t *len)
{
	const srv_icall *ic = c->impl_;
	return call_md(ic->r, ic->k, key, len);
}

asynq_status
asynqi_srv_call_add_metadata(asynq_rpc_call_info *c, const char *key,
    const void *val, size_t len)
{
	srv_icall *ic = c->impl_;
	asynqi_arena *a = &ic->r->arena;
	size_t klen = strlen(key);
	srv_md_extra *e = asynqi_arena_alloc(a, sizeof(*e));
	char *k = asynqi_arena_alloc(a, klen + 1);
	void *v = asynqi_arena_alloc(a, len != 0 ? len : 1);
	if (e == NULL || k == NULL || v == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	memcpy(k, key, klen + 1);
	if (len != 0)
		memcpy(v, val, len);
	*e = (srv_md_extra){ ic->md, k, v, len };
	ic->md = e;
	return ASYNQ_OK;
}

asynqi_trace *
asynqi_srv_call_trace(asynq_rpc_call_info *c)
{
	srv_icall *ic = c->impl_;
	ic->has_trace = true;
	ic->trace.formatted = false;
	ic->trace.node = NULL;
	return &ic->trace;
}

asynqi_trace_memo *
asynqi_srv_call_trace_memo(asynq_rpc_call_info *c)
{
	srv_icall *ic = c->impl_;
	return &ic->r->trace_memo;
}

const asynqi_policy *
asynqi_srv_call_policy(const asynq_rpc_call_info *c,
    asynq_rpc_token_verify_fn *fn, void **arg, asynqi_tokcache **tc)
{
	const srv_icall *ic = c->impl_;
	srv_req *r = ic->r;
	const asynq_rpc_server *s = r->sc->s;
	*fn = s->cfg.token_verifier;
	*arg = s->cfg.token_verifier_arg;
	if (r->tc == NULL &&
	    (r->tc = asynqi_arena_alloc(&r->arena, sizeof(*r->tc))) != NULL)
		r->tc->used = false;
	*tc = r->tc;
	return ic->k->sm->pol.set ? &ic->k->sm->pol : NULL;
}

/* ---- Peer ---------------------------------------------------------------- */

const asynq_rpc_peer *
asynq_rpc_peer_get(void)
{
	const srv_task *k = asynq_scoped_get(&srv_req_key);
	return k != NULL ? &k->r->sc->peer : NULL;
}

/* ---- Replies in the request's memory ----------------------------------- */

void *
asynq_rpc_reply_alloc(size_t size)
{
	const srv_task *k = asynq_scoped_get(&srv_req_key);
	return k != NULL ? asynqi_arena_alloc(&k->r->arena, size) : NULL;
}

ProtobufCMessage *
asynq_rpc_reply_new(const ProtobufCMessageDescriptor *desc)
{
	ProtobufCMessage *m = asynq_rpc_reply_alloc(desc->sizeof_message);
	if (m != NULL)
		desc->message_init(m);
	return m;
}

/* Frees a handler's reply unless it lives in the request's memory. */
static void
reply_free(srv_req *r, ProtobufCMessage *reply)
{
	if (reply != NULL && !asynqi_arena_owns(&r->arena, reply))
		protobuf_c_message_free_unpacked(reply, NULL);
}

/* ---- Connections --------------------------------------------------------- */

static void
sc_hold(srv_conn *sc)
{
	atomic_fetch_add_explicit(&sc->refs, 1, memory_order_relaxed);
}

/* Holds sc unless its last reference is already gone (it is being freed
 * and only waits for s->mu to leave the server's list). Under s->mu. */
static bool
sc_tryhold(srv_conn *sc)
{
	long r = atomic_load(&sc->refs);
	while (r > 0)
		if (atomic_compare_exchange_weak(&sc->refs, &r, r + 1))
			return true;
	return false;
}

static void
sc_rele(srv_conn *sc)
{
	if (atomic_fetch_sub(&sc->refs, 1) != 1)
		return;
	asynq_rpc_server *s = sc->s;
	asynqi_conn_rele(sc->c);
	for (size_t i = 0; i < sc->n_mt; i++)
		free(sc->mt[i].missing);
	free(sc->mt);
	asynqi_tls_peer_fini(&sc->tp);
	pthread_mutex_destroy(&sc->mu);
	pthread_mutex_lock(&s->mu);
	if (sc->prev != NULL)
		sc->prev->next = sc->next;
	else
		s->conns = sc->next;
	if (sc->next != NULL)
		sc->next->prev = sc->prev;
	s->n_conns--;
	pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
	free(sc);
}

/* Under sc->mu: reading follows the reasons to pause it. */
static void
sc_reading_locked(srv_conn *sc)
{
	bool pause = sc->paused_calls || sc->paused_wq;
	if (pause == sc->paused)
		return;
	sc->paused = pause;
	atomic_store_explicit(&sc->stop_reading, pause, memory_order_relaxed);
	if (pause)
		asynqi_conn_pause(sc->c);
	else
		asynqi_conn_resume(sc->c);
}

static void
out_done(asynqi_wbuf *w, int err)
{
	srv_out *o = (srv_out *)w;
	srv_conn *sc = o->sc;
	free(o->p);
	free(o);
	if (err == 0 &&
	    atomic_load_explicit(&sc->wq_over, memory_order_relaxed)) {
		/* The peer reads again: resume once half the cap is free. */
		size_t q = asynqi_conn_queued_bytes(sc->c);
		pthread_mutex_lock(&sc->mu);
		if (sc->paused_wq &&
		    q <= sc->s->cfg.max_write_queue_bytes / 2) {
			sc->paused_wq = false;
			atomic_store(&sc->wq_over, false);
			sc_reading_locked(sc);
		}
		pthread_mutex_unlock(&sc->mu);
	}
	sc_rele(sc);
}

/* Queues a frame (ownership of p moves; NULL: out of memory, nothing
 * sent). Any thread. */
static void
sc_queue(srv_conn *sc, uint8_t *p, size_t len)
{
	if (p == NULL)
		return;
	srv_out *o = malloc(sizeof(*o));
	if (o == NULL) {
		free(p);
		return;
	}
	o->p = p;
	o->sc = sc;
	sc_hold(sc);
	o->w.iov[0] = (nng_iov){ p, len };
	o->w.niov = 1;
	o->w.done = out_done;
	asynq_rpc_server *s = sc->s;
	size_t cap = s->cfg.max_write_queue_bytes;
	size_t q = asynqi_conn_queue(sc->c, &o->w);
	if (q <= cap || sc->home >= 0)
		return;
	if (q / 4 > cap) {
		/* Replies of requests read before the pause took it far
		 * past the cap: the connection goes at once. */
		atomic_fetch_add(&s->conns_overflowed, 1);
		asynqi_conn_close(sc->c);
		return;
	}
	/* Over the cap: no more requests are read until the peer takes its
	 * replies (the sweeper closes it if it does not, within
	 * frame_timeout_ms). */
	pthread_mutex_lock(&sc->mu);
	if (!sc->paused_wq) {
		sc->paused_wq = true;
		sc->wq_since_ns = (int64_t)asynq_now_ns();
		atomic_store(&sc->wq_over, true);
		sc_reading_locked(sc);
	}
	pthread_mutex_unlock(&sc->mu);
}

/* A frame of type with body b (taken over). */
static void
sc_queue_frame(srv_conn *sc, unsigned type, asynqi_buf *b)
{
	if (b->failed) {
		asynqi_buf_fini(b);
		return;
	}
	/* b was built with ASYNQI_FRAME_HDR bytes reserved in front. */
	asynqi_frame_hdr(b->p, type, (uint32_t)(b->len - ASYNQI_FRAME_HDR));
	sc_queue(sc, b->p, b->len);
	b->p = NULL;
	asynqi_buf_fini(b);
}

/* Starts a frame in b (its old contents forgotten) with room for `room`
 * bytes in all. */
static void
buf_frame_start_room(asynqi_buf *b, size_t room)
{
	memset(b, 0, sizeof(*b));
	uint8_t *d = asynqi_buf_reserve(b,
	    room > ASYNQI_FRAME_HDR ? room : ASYNQI_FRAME_HDR);
	if (d != NULL)
		b->len = ASYNQI_FRAME_HDR;
}

static void
buf_frame_start(asynqi_buf *b)
{
	buf_frame_start_room(b, 0);
}

/* A reply failing a whole request with one status; not_run says that
 * none of its calls ran (Reply.not_run), so it may go elsewhere. */
static void
sc_reply_status(srv_conn *sc, asynq_status st, const char *message,
    uint64_t request_id, bool not_run)
{
	asynqi_buf b;
	buf_frame_start(&b);
	asynqi_buf_tag(&b, 4, 0);
	asynqi_buf_varint(&b, request_id);
	asynqi_buf_tag(&b, 2, 0);
	asynqi_buf_varint(&b, (uint64_t)st);
	asynqi_buf_bytes(&b, 3, message, strlen(message));
	if (not_run) {
		asynqi_buf_tag(&b, 5, 0);
		asynqi_buf_varint(&b, 1);
	}
	sc_queue_frame(sc, ASYNQI_FRAME_REPLY, &b);
}

/* A request refused as a whole for what it is (over a limit, malformed). */
static void
sc_status(srv_conn *sc, asynq_status st, const char *message,
    uint64_t request_id)
{
	sc_reply_status(sc, st, message, request_id, false);
}

/* A request refused before any of its calls ran (closing, overloaded). */
static void
sc_refuse(srv_conn *sc, asynq_status st, const char *message,
    uint64_t request_id)
{
	sc_reply_status(sc, st, message, request_id, true);
}

/* A GOAWAY naming the last request accepted, and why. */
static void
sc_goaway(srv_conn *sc, uint64_t last, const char *why)
{
	asynqi_buf b;
	buf_frame_start(&b);
	asynqi_buf_tag(&b, 1, 0);
	asynqi_buf_varint(&b, last);
	asynqi_buf_bytes(&b, 2, why, strlen(why));
	sc_queue_frame(sc, ASYNQI_FRAME_GOAWAY, &b);
}

/* A stored reply body, framed. */
static void
sc_reply_body(srv_conn *sc, const uint8_t *body, size_t len)
{
	uint8_t *p = malloc(ASYNQI_FRAME_HDR + len);
	if (p == NULL)
		return;
	asynqi_frame_hdr(p, ASYNQI_FRAME_REPLY, (uint32_t)len);
	memcpy(p + ASYNQI_FRAME_HDR, body, len);
	sc_queue(sc, p, ASYNQI_FRAME_HDR + len);
}

/* ---- Writers (worker only) ----------------------------------------------- */

static void
writer_run(asynq_post *p)
{
	srv_writer *w = (srv_writer *)p;
	asynq_rpc_server *s = w->s;
	uint64_t bit = (uint64_t)1 << w->index;
	w->posted = false;
	for (size_t i = 0; i < w->n_dirty; i++) {
		srv_conn *sc = w->dirty[i];
		atomic_fetch_and(&sc->dirty_mask, ~bit);
		asynqi_conn_flush(sc->c);
		sc_rele(sc);
	}
	w->n_dirty = 0;
	pthread_mutex_lock(&s->mu);
	if (--s->writer_posts == 0)
		pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

/* Worker `worker`: sc has replies queued; flush it when this pass of the
 * worker's scheduler ends (at once past 64 workers, or without memory). */
static void
writer_mark(asynq_rpc_server *s, srv_conn *sc, size_t worker)
{
	srv_writer *w = &s->writers[worker];
	if (worker >= 64) {
		asynqi_conn_flush(sc->c);
		return;
	}
	uint64_t bit = (uint64_t)1 << worker;
	if ((atomic_fetch_or(&sc->dirty_mask, bit) & bit) == 0) {
		if (w->n_dirty == w->cap_dirty) {
			size_t cap = w->cap_dirty != 0 ? 2 * w->cap_dirty : 16;
			srv_conn **d = realloc(w->dirty, cap * sizeof(*d));
			if (d == NULL) {
				atomic_fetch_and(&sc->dirty_mask, ~bit);
				asynqi_conn_flush(sc->c);
				return;
			}
			w->dirty = d;
			w->cap_dirty = cap;
		}
		sc_hold(sc);
		w->dirty[w->n_dirty++] = sc;
	}
	if (!w->posted) {
		w->posted = true;
		pthread_mutex_lock(&s->mu);
		s->writer_posts++;
		pthread_mutex_unlock(&s->mu);
		asynq_sched_post(asynq_runtime_sched(s->rt, worker), &w->post);
	}
}

/* ---- Requests ------------------------------------------------------------ */

static void
req_free(srv_req *r)
{
	if (r == NULL)
		return;
	free(r->calls);
	free(r->tasks);
	free(r->idx);
	asynqi_buf_fini(&r->out);
	asynqi_arena_fini(&r->arena);
	free(r);
}

/* Appends call k's Result: status and message, or a packed reply. */
static void
result_put(srv_req *r, srv_call *k, asynq_status st, const char *message,
    const ProtobufCMessage *reply)
{
	asynqi_buf *b = &r->out;
	if (k->answered)
		return;
	k->answered = true;
	/* Sized now, packed in place below. */
	asynqi_packing pk;
	size_t plen = st == ASYNQ_OK && reply != NULL
	    ? asynqi_packing_size(&pk, k->sm != NULL ? k->sm->out_codec : NULL,
	          reply)
	    : 0;
	size_t mlen = st != ASYNQ_OK ? strlen(message) : 0;
	size_t body =
	    (k->call_id != 0 ? 1 + asynqi_varint_len(k->call_id) : 0) +
	    (st != ASYNQ_OK ? 1 + asynqi_varint_len((uint64_t)st) : 0) +
	    (mlen != 0 ? 1 + asynqi_varint_len(mlen) + mlen : 0) +
	    (plen != 0 ? 1 + asynqi_varint_len(plen) + plen : 0);
	/* The whole Reply.results field at once: reserved, then written. */
	uint8_t *d = asynqi_buf_reserve(b, 1 + 10 + body);
	if (d == NULL)
		return;
	uint8_t *p = d;
	*p++ = (1 << 3) | 2;
	p += put_varint(p, body);
	if (k->call_id != 0) {
		*p++ = 1 << 3;
		p += put_varint(p, k->call_id);
	}
	if (st != ASYNQ_OK) {
		*p++ = 2 << 3;
		p += put_varint(p, (uint64_t)st);
		if (mlen != 0) {
			*p++ = (3 << 3) | 2;
			p += put_varint(p, mlen);
			memcpy(p, message, mlen);
			p += mlen;
		}
	}
	if (plen != 0) {
		*p++ = (4 << 3) | 2;
		p += put_varint(p, plen);
		asynqi_packing_put(&pk, reply, p, plen);
		p += plen;
	}
	b->len += (size_t)(p - d);
}

/* Runs the after hooks of call k's interceptors, the last one first, with
 * its outcome; once. Worker. */
static void
icpt_after(const asynq_rpc_server *s, srv_call *k, asynq_status st,
    const char *msg, const ProtobufCMessage *reply)
{
	srv_icall *ic = k->ic;
	if (ic == NULL || ic->passed == 0)
		return;
	ic->info.status = st;
	ic->info.message = st != ASYNQ_OK ? msg : NULL;
	ic->info.reply = st == ASYNQ_OK ? reply : NULL;
	for (size_t i = ic->passed; i-- > 0;) {
		const asynq_rpc_interceptor *x = s->icpt[i];
		if (x->after != NULL)
			x->after(&ic->info, ic->state[i], x->arg);
	}
	ic->passed = 0;
}

static void
call_fail(srv_req *r, srv_call *k, asynq_status st, const char *fmt,
    const char *arg)
{
	char msg[256];
	snprintf(msg, sizeof(msg), fmt, arg != NULL ? arg : "");
	k->sm = NULL;
	if (k->ic != NULL)
		icpt_after(r->sc->s, k, st, msg, NULL);
	result_put(r, k, st, msg, NULL);
}

/* What a parked copy of a request is sent. */
typedef struct dd_answer {
	const uint8_t *body; /* the reply body, or NULL: refused */
	size_t len;
	uint64_t request_id;
} dd_answer;

static void
dd_send_waiter(void *waiter, void *ctx)
{
	srv_conn *sc = waiter;
	const dd_answer *a = ctx;
	if (a->body != NULL)
		sc_reply_body(sc, a->body, a->len);
	else
		sc_refuse(sc, ASYNQ_UNAVAILABLE,
		    "server is stopping; the request did not run",
		    a->request_id);
	asynqi_conn_flush(sc->c);
	sc_rele(sc);
}

/* A request of n_calls calls on `worker` left the server (answered or
 * refused). Any thread. */
static void
req_release(asynq_rpc_server *s, srv_conn *sc, size_t worker, size_t n_calls)
{
	atomic_fetch_sub_explicit(&s->w_load[worker], n_calls,
	    memory_order_relaxed);
	pthread_mutex_lock(&sc->mu);
	sc->inflight--;
	sc->inflight_calls -= n_calls;
	if (sc->paused_calls &&
	    (size_t)sc->inflight <= s->cfg.max_conn_requests / 2 &&
	    sc->inflight_calls <= s->cfg.max_conn_calls / 2) {
		sc->paused_calls = false;
		sc_reading_locked(sc);
	}
	pthread_mutex_unlock(&sc->mu);
	pthread_mutex_lock(&s->mu);
	if (--s->reqs == 0)
		pthread_cond_broadcast(&s->cv);
	pthread_mutex_unlock(&s->mu);
}

/* Worker: every call has a result; send the reply, forget the request. */
/* The server's name in logs: its last service (the framework's own come
 * first). */
static const char *
server_name(const asynq_rpc_server *s)
{
	return s->n_services != 0 ? s->services[s->n_services - 1]->full_name
	                          : "(no service)";
}

/* Logs request r if it was slow, or every one with access_log. */
static void
req_log(asynq_rpc_server *s, const srv_req *r, uint64_t id, size_t n_calls)
{
	uint64_t us =
	    ((uint64_t)(int64_t)asynq_now_ns() - (uint64_t)r->recv_ns) / 1000u;
	bool slow = s->cfg.slow_request_ms != UINT32_MAX &&
	    us > (uint64_t)s->cfg.slow_request_ms * 1000u;
	if (!slow && !s->cfg.access_log)
		return;
	asynq_log_level lvl = slow ? ASYNQ_LOG_WARN : ASYNQ_LOG_INFO;
	if (!asynq_log_enabled(lvl))
		return;
	char sid[24], scalls[24], sus[24];
	snprintf(sid, sizeof(sid), "%llu", (unsigned long long)id);
	snprintf(scalls, sizeof(scalls), "%zu", n_calls);
	snprintf(sus, sizeof(sus), "%llu", (unsigned long long)us);
	const char *method = "(none)";
	for (size_t i = 0; i < r->n; i++)
		if (r->calls[i].sm != NULL) {
			method = r->calls[i].sm->m->full_name;
			break;
		}
	/* The trace of its first traced call (asynq_rpc_trace_interceptor),
	 * so a log line leads to the trace. */
	char tid[33] = "";
	for (size_t i = 0; i < r->n && tid[0] == '\0'; i++) {
		const srv_icall *ic = r->calls[i].ic;
		if (ic != NULL && ic->has_trace) {
			char tp[56];
			asynq_rpc_trace_format(&ic->trace.t, tp);
			memcpy(tid, tp + 3, 32);
			tid[32] = '\0';
		}
	}
	asynq_log(lvl, slow ? "slow_request" : "request", "server",
	    server_name(s), "request_id", sid, "method", method, "calls",
	    scalls, "duration_us", sus, tid[0] != '\0' ? "trace_id" : NULL, tid,
	    NULL);
}

static void
req_finish(srv_req *r)
{
	srv_conn *sc = r->sc;
	asynq_rpc_server *s = sc->s;
	size_t worker = r->worker;
	size_t n_calls = r->n;
	s->w_inflight[worker] -= r->running;
	for (size_t i = 0; i < r->n; i++)
		if (!r->calls[i].answered)
			call_fail(r, &r->calls[i], ASYNQ_INTERNAL,
			    "the handler left the call unanswered%s", "");
	asynqi_buf out = r->out;
	memset(&r->out, 0, sizeof(r->out));
	atomic_store_explicit(&sc->arena_hint, asynqi_arena_hint(r->arena.used),
	    memory_order_relaxed);
	atomic_store_explicit(&sc->out_hint, out.len, memory_order_relaxed);
	asynqi_dd_entry *dd = r->dd;
	uint64_t request_id = r->request_id;
	req_log(s, r, request_id, n_calls);
	if (s->limit_on) {
		int64_t now = (int64_t)asynq_now_ns();
		asynqi_limit_sample(&s->limit, worker, n_calls,
		    now - r->recv_ns, now);
	}
	req_free(r);
	if (out.failed) {
		asynqi_buf_fini(&out);
		buf_frame_start(&out);
		asynqi_buf_tag(&out, 4, 0);
		asynqi_buf_varint(&out, request_id);
		asynqi_buf_tag(&out, 2, 0);
		asynqi_buf_varint(&out, ASYNQ_RESOURCE_EXHAUSTED);
		asynqi_buf_bytes(&out, 3, "server out of memory", 20);
	}
	if (dd != NULL) {
		dd_answer a = { out.p + ASYNQI_FRAME_HDR,
			out.len - ASYNQI_FRAME_HDR, 0 };
		asynqi_dedup_complete(s->dd, dd, out.failed ? NULL : a.body,
		    a.len, dd_send_waiter, &a);
	}
	sc_queue_frame(sc, ASYNQI_FRAME_REPLY, &out);
	writer_mark(s, sc, worker);
	asynq_runtime *rt = s->rt;
	req_release(s, sc, worker, n_calls);
	sc_rele(sc);
	asynq_runtime_rele(rt);
}

/* Records a handler's outcome for call k: counted, shown to its
 * interceptors' after hooks, packed. */
static void
call_result(srv_req *r, srv_call *k, asynq_status st, ProtobufCMessage *reply,
    asynq_task *t, const char *message)
{
	char why[256];
	if (st == ASYNQ_OK && reply != NULL &&
	    reply->descriptor != k->sm->m->output) {
		reply_free(r, reply);
		reply = NULL;
		snprintf(why, sizeof(why),
		    "handler of %s replied with a message of the wrong type",
		    k->sm->m->full_name);
		st = ASYNQ_INTERNAL;
		message = why;
	}
	asynqi_mstats_code(&k->sm->st[r->worker], st);
	if (st != ASYNQ_OK) {
		reply_free(r, reply);
		reply = NULL;
		asynq_error *e = t != NULL ? asynq_task_error(t) : NULL;
		if (message == NULL && e != NULL && asynq_error_code(e) == st)
			message = asynq_error_message(e);
		if (message == NULL)
			message = asynq_strerror(st);
	}
	if (k->ic != NULL)
		icpt_after(r->sc->s, k, st, message, reply);
	result_put(r, k, st, message, reply);
	reply_free(r, reply);
}

/* The handler of task k runs in its call's trace (its first traced
 * call's, for a whole batch) when the trace interceptor found one: pushes
 * it and returns it (NULL: none). */
static asynqi_trace *__attribute__((noinline)) trace_push(const srv_task *k)
{
	for (size_t i = 0; i < k->n; i++) {
		srv_icall *ic = k->r->calls[k->idx[i]].ic;
		if (ic != NULL && ic->has_trace)
			return asynq_scoped_push(&asynqi_trace_key,
			           &ic->trace) == ASYNQ_OK
			    ? &ic->trace
			    : NULL;
	}
	return NULL;
}

/* Ends the scope of trace_push's trace: popped, its cached metadata
 * dropped. */
static void __attribute__((noinline)) trace_pop(asynqi_trace *tr)
{
	(void)asynq_scoped_pop(&asynqi_trace_key);
	asynqi_md_rele(tr->node);
	tr->node = NULL;
}

/* The peer of request r: its connection's. */
static const asynq_rpc_peer *
srv_peer(const srv_req *r)
{
	return &r->sc->peer;
}

/* Runs the interceptors' before hooks for every call of r that is to run:
 * a call one rejects is answered with its status and never reaches a
 * handler (nor the batch of its whole-batch method). Worker, in the
 * request's task. */
static void
icpt_before(asynq_rpc_server *s, srv_req *r)
{
	int64_t now = (int64_t)asynq_now_ns();
	const asynq_rpc_peer *peer = srv_peer(r);
	for (size_t i = 0; i < r->n; i++) {
		srv_call *k = &r->calls[i];
		if (k->sm == NULL)
			continue;
		size_t sz = sizeof(srv_icall) + s->n_icpt * sizeof(void *);
		srv_icall *ic = asynqi_arena_alloc(&r->arena, sz);
		if (ic == NULL) {
			call_fail(r, k, ASYNQ_RESOURCE_EXHAUSTED,
			    "server out of memory%s", "");
			continue;
		}
		ic->base = (asynqi_icall){ false, NULL };
		ic->md = NULL;
		ic->has_trace = false;
		ic->passed = 0;
		memset(ic->state, 0, s->n_icpt * sizeof(void *));
		ic->info = (asynq_rpc_call_info){ .method = k->sm->m,
			.req = k->in,
			.peer = peer,
			.server = true,
			.start_ns = now,
			.impl_ = ic };
		ic->r = r;
		ic->k = k;
		k->ic = ic;
		asynq_status st = ASYNQ_OK;
		size_t j = 0;
		for (; j < s->n_icpt; j++) {
			const asynq_rpc_interceptor *x = s->icpt[j];
			if (x->before != NULL) {
				ic->base.in_before = true;
				st =
				    x->before(&ic->info, &ic->state[j], x->arg);
				ic->base.in_before = false;
				if (st != ASYNQ_OK)
					break;
				/* It let the call go: a reject text is moot. */
				if (ic->base.reject != NULL) {
					free(ic->base.reject);
					ic->base.reject = NULL;
				}
			}
			ic->passed = j + 1;
		}
		if (st == ASYNQ_OK)
			continue;
		if (st < 0 || st >= ASYNQ_STATUS_COUNT)
			st = ASYNQ_UNKNOWN;
		char msg[256];
		asynqi_icall_reject_msg(&ic->info, s->icpt[j], st, msg,
		    sizeof(msg));
		free(ic->base.reject);
		ic->base.reject = NULL;
		asynqi_mstats_code(&k->sm->st[r->worker], st);
		k->sm = NULL;
		icpt_after(s, k, st, msg, NULL);
		result_put(r, k, st, msg, NULL);
	}
}

/* Runs task k's handler, with k as srv_req_key's value unless the caller
 * (a runner) has it in place already (`in_place`). */
static void
task_run(asynq_task *t, srv_task *k, bool in_place)
{
	srv_req *r = k->r;
	const srv_method *sm = k->sm;
	bool pushed_req =
	    !in_place && asynq_scoped_push(&srv_req_key, k) == ASYNQ_OK;
	asynqi_trace *pushed_tr = r->icpt ? trace_push(k) : NULL;
	if (sm->h.unary != NULL) {
		srv_call *c = &r->calls[k->idx[0]];
		ProtobufCMessage *reply = NULL;
		asynq_status st = sm->h.unary(t, c->in, &reply, sm->ctx);
		asynqi_hist_add(&sm->st[r->worker].latency,
		    asynqi_latency_bounds, asynqi_n_latency_bounds,
		    (uint64_t)((int64_t)asynq_now_ns() - r->recv_ns), 1);
		call_result(r, c, st, reply, t, NULL);
	} else {
		asynq_rpc_batch_call *bc = calloc(k->n, sizeof(*bc));
		if (bc == NULL) {
			for (size_t i = 0; i < k->n; i++)
				call_fail(r, &r->calls[k->idx[i]],
				    ASYNQ_RESOURCE_EXHAUSTED,
				    "server out of memory%s", "");
			goto out;
		}
		for (size_t i = 0; i < k->n; i++)
			bc[i].req = r->calls[k->idx[i]].in;
		asynq_status st = ASYNQ_OK;
		asynq_rpc_batch_info bi;
		size_t passed = 0;
		const asynq_rpc_server *s = r->sc->s;
		if (r->icpt) {
			bi = (asynq_rpc_batch_info){ .method = sm->m,
				.peer = srv_peer(r),
				.calls = bc,
				.n = k->n,
				.start_ns = (int64_t)asynq_now_ns() };
			for (; passed < s->n_icpt; passed++) {
				const asynq_rpc_interceptor *x =
				    s->icpt[passed];
				if (x->batch_before != NULL &&
				    (st = x->batch_before(&bi, x->arg)) !=
				        ASYNQ_OK)
					break;
			}
			if (st != ASYNQ_OK) {
				if (st < 0 || st >= ASYNQ_STATUS_COUNT)
					st = ASYNQ_UNKNOWN;
				for (size_t i = 0; i < k->n; i++)
					asynq_rpc_batch_call_failf(&bc[i], st,
					    "%s: rejected by interceptor %s",
					    sm->m->full_name,
					    s->icpt[passed]->name != NULL
					        ? s->icpt[passed]->name
					        : "(unnamed)");
			}
		}
		if (st == ASYNQ_OK)
			st = sm->h.batch(t, bc, k->n, sm->ctx);
		if (r->icpt) {
			bi.status = st;
			for (size_t j = passed; j-- > 0;) {
				const asynq_rpc_interceptor *x = s->icpt[j];
				if (x->batch_after != NULL)
					x->batch_after(&bi, x->arg);
			}
		}
		asynqi_hist_add(&sm->st[r->worker].latency,
		    asynqi_latency_bounds, asynqi_n_latency_bounds,
		    (uint64_t)((int64_t)asynq_now_ns() - r->recv_ns), k->n);
		for (size_t i = 0; i < k->n; i++) {
			srv_call *c = &r->calls[k->idx[i]];
			if (bc[i].status != ASYNQ_OK)
				call_result(r, c, bc[i].status, bc[i].reply,
				    NULL,
				    bc[i].formatted != NULL ? bc[i].formatted
				        : bc[i].message != NULL
				        ? bc[i].message
				        : asynq_strerror(bc[i].status));
			else if (bc[i].reply != NULL || st == ASYNQ_OK)
				call_result(r, c, ASYNQ_OK, bc[i].reply, NULL,
				    NULL);
			else
				call_result(r, c, st, NULL, t, NULL);
			free(bc[i].formatted);
		}
		free(bc);
	}
out:
	asynqi_rpc_cache_rele(k->cache);
	k->cache = NULL;
	if (pushed_tr != NULL)
		trace_pop(pushed_tr);
	if (pushed_req)
		(void)asynq_scoped_pop(&srv_req_key);
}

static asynq_status
task_main(asynq_task *t, void *arg)
{
	task_run(t, arg, false);
	return ASYNQ_OK;
}

static asynq_status runner_main(asynq_task *t, void *arg);

/* The handoff hook of runner u: its next call onwards go to a new runner,
 * spawned here and started by the scheduler; NULL (u keeps them) without
 * memory. */
static asynq_future *
runner_handoff(void *arg)
{
	srv_runner *u = arg;
	if (u->next >= u->end)
		return NULL;
	srv_runner *v = &u->r->tasks[u->next].run;
	*v = (srv_runner){ .r = u->r, .next = u->next, .end = u->end };
	asynq_future *f = asynq_spawn_at(runner_main, v,
	    u->r->tasks[v->next].sm->m->full_name, __FILE__, __LINE__);
	if (f == NULL || asynq_future_done(f)) {
		asynq_future_rele(f);
		return NULL;
	}
	u->end = u->next;
	u->rest = f;
	return f;
}

static asynq_status
runner_main(asynq_task *t, void *arg)
{
	srv_runner *u = arg;
	u->hook = (asynqi_handoff){ runner_handoff, u };
	/* srv_req_key is pushed once, below the jobs' marks, and set to
	 * each call's task in turn. */
	void **slot = u->next < u->end
	    ? asynqi_scoped_push_slot(&srv_req_key, &u->r->tasks[u->next])
	    : NULL;
	while (u->next < u->end) {
		srv_task *k = &u->r->tasks[u->next++];
		if (slot != NULL)
			*slot = k;
		const void *mark = asynqi_task_job_begin(t, k->sm->m->full_name,
		    u->next < u->end ? &u->hook : NULL);
		task_run(t, k, slot != NULL);
		asynqi_task_job_end(t, mark);
	}
	if (slot != NULL)
		(void)asynq_scoped_pop(&srv_req_key);
	if (u->rest != NULL) {
		(void)asynq_await(t, u->rest);
		asynq_future_rele(u->rest);
		u->rest = NULL;
	}
	return ASYNQ_OK;
}

/* Worker: r no longer waits to start (it starts, or never will). */
static void
req_unwait(asynq_rpc_server *s, srv_req *r)
{
	if (!r->waiting)
		return;
	r->waiting = false;
	atomic_fetch_sub_explicit(&s->adm[r->worker].waiting, 1,
	    memory_order_relaxed);
}

/* Worker: request r starts r->recv_ns after it was read; counts it in the
 * worker's admission state. True when it waited past a whole interval
 * while the worker is overloaded: it is refused instead of run. */
static bool
adm_start(asynq_rpc_server *s, srv_req *r)
{
	srv_adm *a = &s->adm[r->worker];
	req_unwait(s, r);
	int64_t now = (int64_t)asynq_now_ns();
	int64_t sojourn = now - r->recv_ns;
	asynqi_hist_add(&s->w_stats[r->worker].queue, asynqi_latency_bounds,
	    asynqi_n_latency_bounds, sojourn > 0 ? (uint64_t)sojourn : 0, 1);
	uint32_t target_us = s->cfg.queue_target_us;
	if (target_us == UINT32_MAX)
		return false;
	int64_t target = (int64_t)target_us * 1000;
	if (now >= a->interval_end) {
		/* CoDel: the worker is overloaded for the next interval if
		 * even the shortest wait of this one exceeded the target (a
		 * standing queue, not a burst). The budget is how many
		 * requests it ran per target's worth of time. */
		int64_t interval = ADM_INTERVAL_TARGETS * target;
		bool over = a->min_sojourn > target &&
		    now - a->interval_end < interval; /* not after a lull */
		int64_t len = now - a->interval_start;
		uint64_t budget = len > 0
		    ? (uint64_t)a->started * (uint64_t)target / (uint64_t)len
		    : 1;
		if (budget < ADM_MIN_BUDGET)
			budget = ADM_MIN_BUDGET;
		if (budget > UINT32_MAX)
			budget = UINT32_MAX;
		atomic_store_explicit(&a->budget, (unsigned)budget,
		    memory_order_relaxed);
		atomic_store_explicit(&a->verdict_until, now + interval,
		    memory_order_relaxed);
		atomic_store_explicit(&a->overloaded, over,
		    memory_order_relaxed);
		a->interval_start = now;
		a->interval_end = now + interval;
		a->min_sojourn = INT64_MAX;
		a->started = 0;
	}
	if (sojourn < a->min_sojourn)
		a->min_sojourn = sojourn;
	bool shed = sojourn > ADM_INTERVAL_TARGETS * target &&
	    atomic_load_explicit(&a->overloaded, memory_order_relaxed);
	if (!shed)
		a->started++; /* the budget counts work, not refusals */
	return shed;
}

/* Groups the calls of r still to run into tasks: one per unary call, one
 * per whole-batch method. Worker. */
static void
req_group(srv_req *r)
{
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
			t->cache = NULL;
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
			t->cache = NULL;
		}
		r->tasks[j].n++;
	}
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
	r->n_tasks = n_tasks;
}

/* The task of a request: its calls' tasks, awaited together. Awaited
 * before they ever ran, they start as plain calls on fresh stacks (the
 * core's "calls instead of switches"), so a handler that finishes without
 * suspending costs a call, and one that suspends lets the next start, so
 * their own calls still batch. The deadline is pushed once; every call's
 * task inherits it. */
static asynq_status
req_main(asynq_task *t, void *arg)
{
	srv_req *r = arg;
	asynq_rpc_server *s = r->sc->s;
	bool shed = adm_start(s, r);
	if (shed) {
		atomic_fetch_add(&r->sc->s->shed, 1);
		atomic_fetch_add(&r->sc->s->shed_late, 1);
		char why[128];
		snprintf(why, sizeof(why),
		    "server overloaded: the request waited %lld us to start "
		    "(target %u us) and did not run",
		    (long long)((int64_t)asynq_now_ns() - r->recv_ns) / 1000,
		    r->sc->s->cfg.queue_target_us);
		for (size_t i = 0; i < r->n; i++)
			if (r->calls[i].sm != NULL)
				call_fail(r, &r->calls[i],
				    ASYNQ_RESOURCE_EXHAUSTED, "%s", why);
	}
	int64_t dl = r->deadline;
	bool pushed_dl = dl != 0 &&
	    asynq_scoped_push(&asynq_rpc_deadline, (void *)(intptr_t)dl) ==
	        ASYNQ_OK;
	r->icpt = s->n_icpt != 0;
	if (!shed && r->icpt)
		icpt_before(s, r);
	req_group(r);
	size_t n = r->n_tasks;
	asynq_future *one, **fs = n > 1 ? malloc(n * sizeof(*fs)) : &one;
	size_t k = 0;
	for (size_t j = 0; j < n;) {
		srv_task *tk = &r->tasks[j];
		/* A whole-batch method's calls are a task; a run of unary
		 * calls, a runner. */
		size_t end = j + 1;
		if (tk->sm->h.unary != NULL) {
			while (end < n && r->tasks[end].sm->h.unary != NULL)
				end++;
			tk->run = (srv_runner){ .r = r, .next = j, .end = end };
		}
		asynq_future *f = fs == NULL ? NULL
		    : tk->sm->h.unary != NULL
		    ? asynq_spawn_at(runner_main, &tk->run,
		          tk->sm->m->full_name, __FILE__, __LINE__)
		    : asynq_spawn_at(task_main, tk, tk->sm->m->full_name,
		          __FILE__, __LINE__);
		if (f == NULL || asynq_future_done(f)) {
			for (size_t x = j; x < end; x++)
				for (size_t i = 0; i < r->tasks[x].n; i++)
					call_fail(r,
					    &r->calls[r->tasks[x].idx[i]],
					    f == NULL ? ASYNQ_RESOURCE_EXHAUSTED
					              : asynq_future_status(f),
					    "the server could not start the "
					    "call%s",
					    "");
			asynq_future_rele(f);
			j = end;
			continue;
		}
		fs[k++] = f;
		j = end;
	}
	if (k > 0) {
		(void)asynq_await_all(t, fs, k);
		asynq_future_rele_n(fs, k);
	}
	if (fs != &one)
		free(fs);
	if (pushed_dl)
		(void)asynq_scoped_pop(&asynq_rpc_deadline);
	req_finish(r);
	return ASYNQ_OK;
}

/* Worker: counts request r's n_run calls in the calls-per-request
 * histograms, the server's and each method's (the first
 * TALLY_METHODS methods of a request; more are rare and not counted). */
#define TALLY_METHODS 8
static void
req_tally(asynq_rpc_server *s, srv_req *r, size_t n_run)
{
	const srv_method *sm[TALLY_METHODS];
	uint64_t n[TALLY_METHODS];
	size_t k = 0;
	if (n_run == 0)
		return;
	asynqi_hist_add(&s->w_stats[r->worker].cpr, asynqi_cpr_bounds,
	    asynqi_n_cpr_bounds, n_run, 1);
	for (size_t i = 0; i < r->n; i++) {
		const srv_method *m = r->calls[i].sm;
		size_t j = 0;
		if (m == NULL)
			continue;
		while (j < k && sm[j] != m)
			j++;
		if (j == k) {
			if (k == TALLY_METHODS)
				continue;
			sm[k] = m;
			n[k++] = 0;
		}
		n[j]++;
	}
	for (size_t j = 0; j < k; j++)
		asynqi_hist_add(&sm[j]->st[r->worker].cpr, asynqi_cpr_bounds,
		    asynqi_n_cpr_bounds, n[j], 1);
}

/* Worker: run the calls of a received request. */
static void
req_run(asynq_post *p)
{
	srv_req *r = (srv_req *)((char *)p - offsetof(srv_req, post));
	srv_conn *sc = r->sc;
	asynq_rpc_server *s = sc->s;
	size_t n_run = 0;
	for (size_t i = 0; i < r->n; i++)
		if (r->calls[i].sm != NULL)
			n_run++;
	if (s->w_inflight[r->worker] + n_run > s->cfg.max_inflight_calls) {
		atomic_fetch_add(&s->rejected, 1);
		for (size_t i = 0; i < r->n; i++)
			if (r->calls[i].sm != NULL)
				call_fail(r, &r->calls[i],
				    ASYNQ_RESOURCE_EXHAUSTED,
				    "too many calls in flight on the server%s",
				    "");
		n_run = 0;
	}
	if (n_run != 0 && r->deadline != 0 &&
	    r->deadline <= asynqi_realtime_ns()) {
		for (size_t i = 0; i < r->n; i++)
			if (r->calls[i].sm != NULL)
				call_fail(r, &r->calls[i],
				    ASYNQ_DEADLINE_EXCEEDED,
				    "deadline passed before the call ran%s",
				    "");
		n_run = 0;
	}
	r->running = n_run;
	s->w_inflight[r->worker] += n_run;
	atomic_fetch_add(&s->calls, n_run);
	req_tally(s, r, n_run);
	asynq_future *f = n_run != 0
	    ? asynq_spawn_at(req_main, r, "asynq.rpc.request", __FILE__,
	          __LINE__)
	    : NULL;
	if (f == NULL || asynq_future_done(f)) {
		for (size_t i = 0; i < r->n; i++)
			if (r->calls[i].sm != NULL)
				call_fail(r, &r->calls[i],
				    ASYNQ_RESOURCE_EXHAUSTED,
				    "the server could not start the call%s",
				    "");
		asynq_future_rele(f);
		req_unwait(s, r);
		req_finish(r);
		return;
	}
	asynq_task_start(f);
	asynq_future_rele(f);
}

static const srv_method *
method_find_n(const asynq_rpc_server *s, const char *name, size_t len)
{
	for (size_t i = 0; i < s->n_methods; i++) {
		const char *fn = s->methods[i].m->full_name;
		if (strncmp(fn, name, len) == 0 && fn[len] == '\0')
			return &s->methods[i];
	}
	return NULL;
}

static const srv_method *
method_find(const asynq_rpc_server *s, const char *name)
{
	return method_find_n(s, name, strlen(name));
}

static void *
arena_cb(void *ctx, size_t n)
{
	return asynqi_arena_alloc(ctx, n);
}

/* Reader: a METHODS frame; false when it is malformed or too large (the
 * connection is closed, since later numbers would be wrong). */
static bool
methods_received(srv_conn *sc, const uint8_t *body, size_t len)
{
	asynq_rpc_server *s = sc->s;
	asynqi_reader rd = { body, body + len };
	asynqi_field f;
	int rv;
	while ((rv = asynqi_reader_next(&rd, &f)) > 0) {
		if (f.num != 7 || f.wt != 2)
			continue;
		if (sc->n_mt >= s->n_methods + 4096)
			return false;
		srv_mt_entry *mt =
		    realloc(sc->mt, (sc->n_mt + 1) * sizeof(*mt));
		char *name = malloc(f.len + 1);
		if (mt != NULL)
			sc->mt = mt;
		if (mt == NULL || name == NULL) {
			free(name);
			return false;
		}
		memcpy(name, f.p, f.len);
		name[f.len] = '\0';
		srv_mt_entry *e = &sc->mt[sc->n_mt++];
		e->sm = method_find(s, name);
		e->missing = e->sm == NULL ? name : NULL;
		if (e->sm != NULL)
			free(name);
	}
	return rv == 0;
}

/* Calls read and not answered in the whole server. Any thread. */
static size_t
srv_load(asynq_rpc_server *s)
{
	size_t n = 0;
	for (size_t w = 0; w < s->workers; w++)
		n += atomic_load_explicit(&s->w_load[w], memory_order_relaxed);
	return n;
}

/* Reader: the worker a request of sc goes to. Requests of one connection
 * spread over the workers as they arrive: each goes to the worker with the
 * fewest calls in flight (ties in turn), which batches the calls of the
 * requests it runs. */
static size_t
pick_worker(asynq_rpc_server *s, const srv_conn *sc)
{
	size_t start = sc->home >= 0
	    ? (size_t)sc->home
	    : atomic_fetch_add_explicit(&s->next_worker, 1,
	          memory_order_relaxed);
	size_t best = start % s->workers;
	size_t least =
	    atomic_load_explicit(&s->w_load[best], memory_order_relaxed);
	for (size_t k = 1; k < s->workers && least > 0; k++) {
		size_t w = (start + k) % s->workers;
		size_t l =
		    atomic_load_explicit(&s->w_load[w], memory_order_relaxed);
		if (l < least) {
			least = l;
			best = w;
		}
	}
	return best;
}

/* Reader, at `now`: whether the worker's queue is over its budget while
 * the worker is overloaded. A verdict past its due time (the worker has
 * started nothing for an interval) holds only while the queue has stood
 * for a queue target: a worker stuck in a long call is still overloaded,
 * one that sat idle is not, so the first burst after a lull is admitted
 * (its first start gives the next verdict). */
static bool
adm_full(const asynq_rpc_server *s, srv_adm *a, int64_t now)
{
	if (!atomic_load_explicit(&a->overloaded, memory_order_relaxed) ||
	    atomic_load_explicit(&a->waiting, memory_order_relaxed) <
	        atomic_load_explicit(&a->budget, memory_order_relaxed))
		return false;
	if (now < atomic_load_explicit(&a->verdict_until, memory_order_relaxed))
		return true;
	return now -
	    atomic_load_explicit(&a->busy_since, memory_order_relaxed) >=
	    (int64_t)s->cfg.queue_target_us * 1000;
}

/* Reader: a REQUEST frame read at `now`. */
static void
req_received(srv_conn *sc, const uint8_t *body, size_t len, int64_t now)
{
	asynq_rpc_server *s = sc->s;
	atomic_fetch_add(&s->requests, 1);
	char why[128];
	if (len > s->cfg.max_msg_bytes) {
		atomic_fetch_add(&s->rejected, 1);
		snprintf(why, sizeof(why), "request of %zu bytes; limit %zu",
		    len, s->cfg.max_msg_bytes);
		sc_status(sc, ASYNQ_RESOURCE_EXHAUSTED, why,
		    asynqi_request_scan_id(body, len));
		return;
	}
	/* Admission: while its worker is overloaded, a request that would
	 * queue behind more than the worker starts within the target is
	 * refused at once, before anything is decoded. */
	size_t worker = pick_worker(s, sc);
	srv_adm *a = &s->adm[worker];
	bool over_limit =
	    s->limit_on && !asynqi_limit_admit(&s->limit, srv_load(s));
	if (over_limit || adm_full(s, a, now)) {
		if (over_limit)
			atomic_fetch_add(&s->shed_limit, 1);
		atomic_fetch_add(&s->shed, 1);
		sc_refuse(sc, ASYNQ_RESOURCE_EXHAUSTED,
		    "server overloaded; the request did not run",
		    asynqi_request_scan_id(body, len));
		return;
	}
	srv_req *r = calloc(1, sizeof(*r));
	if (r == NULL) {
		sc_status(sc, ASYNQ_RESOURCE_EXHAUSTED, "server out of memory",
		    asynqi_request_scan_id(body, len));
		return;
	}
	asynqi_arena_init(&r->arena, s->cfg.decode_budget);
	r->arena.first =
	    atomic_load_explicit(&sc->arena_hint, memory_order_relaxed);
	/* The body is copied: the read buffer is reused after this frame. */
	uint8_t *copy = asynqi_arena_alloc(&r->arena, len);
	size_t n_calls = 0, n_md = 0;
	asynq_status st = copy == NULL
	    ? ASYNQ_RESOURCE_EXHAUSTED
	    : asynqi_request_count(body, len, &n_calls, &n_md);
	if (st == ASYNQ_OK && n_calls > s->cfg.max_calls) {
		atomic_fetch_add(&s->rejected, 1);
		snprintf(why, sizeof(why), "request has %zu calls; limit %zu",
		    n_calls, s->cfg.max_calls);
		req_free(r);
		sc_status(sc, ASYNQ_RESOURCE_EXHAUSTED, why,
		    asynqi_request_scan_id(body, len));
		return;
	}
	if (st == ASYNQ_OK) {
		memcpy(copy, body, len);
		st = asynqi_request_parse_counted(copy, len, n_calls, n_md,
		    arena_cb, &r->arena, &r->rq);
	}
	if (st != ASYNQ_OK) {
		if (st == ASYNQ_RESOURCE_EXHAUSTED)
			atomic_fetch_add(&s->rejected, 1);
		else
			atomic_fetch_add(&s->malformed, 1);
		req_free(r);
		sc_status(sc,
		    st == ASYNQ_RESOURCE_EXHAUSTED ? ASYNQ_RESOURCE_EXHAUSTED
		                                   : ASYNQ_INVALID_ARGUMENT,
		    st == ASYNQ_RESOURCE_EXHAUSTED
		        ? "request over the decode budget"
		        : "malformed request",
		    asynqi_request_scan_id(body, len));
		return;
	}
	r->request_id = r->rq.request_id;
	r->recv_ns = now;
	uint64_t id = r->request_id;
	pthread_mutex_lock(&sc->mu);
	bool refused = sc->goaway;
	if (!refused && id > sc->last_id)
		sc->last_id = id;
	pthread_mutex_unlock(&sc->mu);
	if (refused) {
		req_free(r);
		sc_refuse(sc, ASYNQ_UNAVAILABLE,
		    "server is closing; the request did not run", id);
		return;
	}
	if (r->rq.timeout_us != 0) {
		uint64_t us = r->rq.timeout_us;
		if (us > (uint64_t)INT64_MAX / 2000)
			us = (uint64_t)INT64_MAX / 2000;
		r->deadline = asynqi_realtime_ns() + (int64_t)us * 1000;
	} else {
		r->deadline = r->rq.deadline_unix_ns;
	}
	r->n = r->rq.n_calls;
	size_t n1 = r->n != 0 ? r->n : 1;
	/* Every field is set below (calls) or in req_run (tasks, idx). */
	r->calls = malloc(n1 * sizeof(*r->calls));
	r->tasks = malloc(n1 * sizeof(*r->tasks));
	r->idx = malloc(n1 * sizeof(*r->idx));
	/* Room for as much as the connection's last reply took (at most
	 * 64 KiB, under malloc's mmap threshold): one allocation. */
	size_t out_hint =
	    atomic_load_explicit(&sc->out_hint, memory_order_relaxed);
	buf_frame_start_room(&r->out,
	    out_hint < ASYNQI_ROOM_MAX ? out_hint : ASYNQI_ROOM_MAX);
	/* The reply names its request first, so a client matches it before
	 * reading its results. */
	asynqi_buf_tag(&r->out, 4, 0);
	asynqi_buf_varint(&r->out, r->request_id);
	if (r->calls == NULL || r->tasks == NULL || r->idx == NULL ||
	    r->out.failed) {
		req_free(r);
		sc_status(sc, ASYNQ_RESOURCE_EXHAUSTED, "server out of memory",
		    id);
		return;
	}
	bool track = false;
	for (size_t i = 0; i < r->n; i++) {
		const asynqi_call_ref *call = &r->rq.calls[i];
		srv_call *k = &r->calls[i];
		k->call_id = call->call_id;
		k->wire = call;
		k->in = NULL;
		k->answered = false;
		k->ic = NULL;
		if (call->method_id != 0) {
			const srv_mt_entry *e = call->method_id <= sc->n_mt
			    ? &sc->mt[call->method_id - 1]
			    : NULL;
			k->sm = e != NULL ? e->sm : NULL;
			if (k->sm == NULL) {
				char num[24];
				snprintf(num, sizeof(num), "%u",
				    call->method_id);
				if (e != NULL)
					call_fail(r, k, ASYNQ_UNIMPLEMENTED,
					    "unknown method %s",
					    e->missing != NULL ? e->missing
					                       : "");
				else
					call_fail(r, k, ASYNQ_UNIMPLEMENTED,
					    "method number %s is not in the "
					    "connection's method table",
					    num);
				continue;
			}
		} else {
			k->sm = call->method != NULL
			    ? method_find_n(s, (const char *)call->method,
			          call->method_len)
			    : NULL;
			if (k->sm == NULL) {
				char name[200];
				snprintf(name, sizeof(name), "%.*s",
				    (int)call->method_len,
				    call->method != NULL
				        ? (const char *)call->method
				        : "");
				call_fail(r, k, ASYNQ_UNIMPLEMENTED,
				    "unknown method %s", name);
				continue;
			}
		}
		st = asynqi_rpc_decode_with(k->sm->m->input, k->sm->in_codec,
		    call->payload, call->payload_len, &r->arena.pa, &r->arena,
		    &k->in);
		if (st != ASYNQ_OK) {
			call_fail(r, k, st,
			    st == ASYNQ_RESOURCE_EXHAUSTED
			        ? "request message of %s over the decode limits"
			        : "malformed request message for %s",
			    k->sm->m->full_name);
			continue;
		}
		if (!k->sm->m->idempotent)
			track = true;
	}
	if (track && r->rq.client_id != 0) {
		uint8_t *stored = NULL;
		size_t slen = 0;
		sc_hold(sc); /* the waiter's, if parked */
		/* A resend first sent to this very process says how long
		 * ago; the table then knows whether it would remember it. */
		uint64_t ago = 0;
		if (r->rq.attempt > 0)
			ago = r->rq.first_instance == s->instance &&
			        r->rq.first_sent_ago_us != 0 &&
			        r->rq.first_sent_ago_us < UINT64_MAX / 2000
			    ? r->rq.first_sent_ago_us * 1000
			    : ASYNQI_DD_UNKNOWN;
		int what = asynqi_dedup_check(s->dd, r->rq.client_id, id, ago,
		    sc, &r->dd, &stored, &slen);
		if (what != ASYNQI_DD_PARKED)
			sc_rele(sc);
		if (what != ASYNQI_DD_RUN)
			atomic_fetch_add(&s->duplicates, 1);
		if (what == ASYNQI_DD_PARKED) {
			req_free(r); /* answered with the original's reply */
			return;
		}
		if (what == ASYNQI_DD_ANSWERED) {
			req_free(r);
			sc_reply_body(sc, stored, slen);
			free(stored);
			return;
		}
		if (what == ASYNQI_DD_FORGOTTEN) {
			for (size_t i = 0; i < r->n; i++)
				if (r->calls[i].sm != NULL &&
				    !r->calls[i].sm->m->idempotent)
					call_fail(r, &r->calls[i],
					    ASYNQ_ABORTED,
					    "%s was resent and the server "
					    "cannot tell whether it ran; not "
					    "run again",
					    r->calls[i].sm->m->full_name);
		}
	}
	if (asynq_runtime_hold(s->rt) != ASYNQ_OK) {
		asynqi_dd_entry *dd = r->dd;
		req_free(r);
		if (dd != NULL) {
			dd_answer a = { NULL, 0, id };
			asynqi_dedup_complete(s->dd, dd, NULL, 0,
			    dd_send_waiter, &a);
		}
		sc_refuse(sc, ASYNQ_UNAVAILABLE,
		    "server is stopping; the request did not run", id);
		return;
	}
	pthread_mutex_lock(&s->mu);
	s->reqs++;
	pthread_mutex_unlock(&s->mu);
	sc_hold(sc);
	r->sc = sc;
	r->post.fn = req_run;
	pthread_mutex_lock(&sc->mu);
	sc->inflight++;
	sc->inflight_calls += r->n;
	if (!sc->paused_calls &&
	    ((size_t)sc->inflight >= s->cfg.max_conn_requests ||
	        sc->inflight_calls >= s->cfg.max_conn_calls)) {
		sc->paused_calls = true;
		sc_reading_locked(sc);
	}
	pthread_mutex_unlock(&sc->mu);
	r->worker = worker;
	r->waiting = true;
	if (atomic_fetch_add_explicit(&a->waiting, 1, memory_order_relaxed) ==
	    0)
		atomic_store_explicit(&a->busy_since, now,
		    memory_order_relaxed);
	atomic_fetch_add_explicit(&s->w_load[worker], r->n,
	    memory_order_relaxed);
	asynq_sched_post(asynq_runtime_sched(s->rt, r->worker), &r->post);
}

static void
send_hello(srv_conn *sc)
{
	asynq_rpc_server *s = sc->s;
	asynqi_buf b;
	memset(&b, 0, sizeof(b));
	asynqi_buf_put(&b, ASYNQI_PREFACE, ASYNQI_PREFACE_LEN);
	size_t at = b.len;
	uint8_t hdr[ASYNQI_FRAME_HDR] = { 0 };
	asynqi_buf_put(&b, hdr, sizeof(hdr));
	asynqi_buf_tag(&b, 1, 0);
	asynqi_buf_varint(&b, s->cfg.max_msg_bytes);
	asynqi_buf_tag(&b, 2, 0);
	asynqi_buf_varint(&b, s->cfg.max_calls);
	asynqi_buf_tag(&b, 3, 1);
	uint8_t inst[8];
	for (int i = 0; i < 8; i++)
		inst[i] = (uint8_t)(s->instance >> (8 * i));
	asynqi_buf_put(&b, inst, 8);
	if (b.failed) {
		asynqi_buf_fini(&b);
		return;
	}
	asynqi_frame_hdr(b.p + at, ASYNQI_FRAME_HELLO,
	    (uint32_t)(b.len - at - ASYNQI_FRAME_HDR));
	sc_queue(sc, b.p, b.len);
}

/* The first bytes of a connection arrived, so its TLS handshake (if any)
 * is done: the peer's certificate identity is kept with the connection,
 * before any of its requests exists. Reader only. */
static void
peer_read(srv_conn *sc)
{
	sc->peer_read = true;
	if (!asynqi_conn_tls_peer(sc->c, &sc->tp))
		return;
	sc->peer.verified = sc->tp.verified;
	sc->peer.subject = sc->tp.subject;
	sc->peer.sans = (const char *const *)sc->tp.sans;
	sc->peer.n_sans = sc->tp.n_sans;
	if (sc->tp.rejected != NULL)
		asynq_log(ASYNQ_LOG_WARN, "tls_client_cert_unverified",
		    "server", server_name(sc->s), "peer", sc->addr, "reason",
		    sc->tp.rejected, NULL);
}

static size_t
srv_on_read(asynqi_conn *c, uint8_t *buf, size_t len, size_t *need)
{
	srv_conn *sc = asynqi_conn_arg(c);
	asynq_rpc_server *s = sc->s;
	size_t used = 0;
	int64_t now = (int64_t)asynq_now_ns();
	atomic_store_explicit(&sc->last_ns, now, memory_order_relaxed);
	if (!sc->peer_read)
		peer_read(sc);
	if (!sc->got_preface) {
		size_t k = len < ASYNQI_PREFACE_LEN ? len : ASYNQI_PREFACE_LEN;
		if (memcmp(buf, ASYNQI_PREFACE, k) != 0) {
			atomic_fetch_add(&s->malformed, 1);
			return SIZE_MAX; /* not an asynq client */
		}
		if (len < ASYNQI_PREFACE_LEN) {
			*need = ASYNQI_PREFACE_LEN;
			return 0;
		}
		sc->got_preface = true;
		atomic_store(&sc->preface_ok, true);
		used = ASYNQI_PREFACE_LEN;
		send_hello(sc);
	}
	for (;;) {
		if (len - used < ASYNQI_FRAME_HDR) {
			*need = ASYNQI_FRAME_HDR;
			break;
		}
		const uint8_t *h = buf + used;
		size_t blen = ((size_t)h[1] << 24) | ((size_t)h[2] << 16) |
		    ((size_t)h[3] << 8) | h[4];
		if (blen > s->cfg.max_msg_bytes + SIZE_SLACK) {
			atomic_fetch_add(&s->rejected, 1);
			asynqi_conn_flush(c);
			return SIZE_MAX;
		}
		if (len - used - ASYNQI_FRAME_HDR < blen) {
			*need = ASYNQI_FRAME_HDR + blen;
			break;
		}
		const uint8_t *body = h + ASYNQI_FRAME_HDR;
		switch (h[0]) {
		case ASYNQI_FRAME_REQUEST:
			req_received(sc, body, blen, now);
			if (atomic_load_explicit(&sc->stop_reading,
			        memory_order_relaxed)) {
				/* Over a cap: the frames after this one wait
				 * in the buffer until reading resumes. */
				used += ASYNQI_FRAME_HDR + blen;
				goto stopped;
			}
			break;
		case ASYNQI_FRAME_METHODS:
			if (!methods_received(sc, body, blen)) {
				asynqi_conn_flush(c);
				return SIZE_MAX;
			}
			break;
		case ASYNQI_FRAME_PING: {
			asynqi_buf b;
			buf_frame_start(&b);
			asynqi_buf_put(&b, body, blen < 8 ? blen : 8);
			sc_queue_frame(sc, ASYNQI_FRAME_PONG, &b);
			break;
		}
		default:
			break; /* unknown frames are skipped */
		}
		used += ASYNQI_FRAME_HDR + blen;
	}
stopped:;
	/* The frame left incomplete began now if this read finished the one
	 * before it; a frame that makes no progress keeps its first time. */
	int64_t partial = 0;
	if (len > used)
		partial = used > 0 ? now
		                   : atomic_load_explicit(&sc->partial_ns,
		                         memory_order_relaxed);
	if (len > used && partial == 0)
		partial = now;
	atomic_store_explicit(&sc->partial_ns, partial, memory_order_relaxed);
	asynqi_conn_flush(c);
	return used;
}

static void
srv_on_close(asynqi_conn *c, int err)
{
	srv_conn *sc = asynqi_conn_arg(c);
	asynq_rpc_server *s = sc->s;
	char why[512];
	if (err != NNG_ECLOSED && !atomic_load(&sc->preface_ok) &&
	    asynqi_conn_tls_failure(c, why, sizeof(why)))
		asynq_log(ASYNQ_LOG_WARN, "tls_handshake_failed", "server",
		    server_name(s), "peer", sc->addr, "reason", why, NULL);
	pthread_mutex_lock(&s->mu);
	s->open--;
	if (sc->doomed)
		s->evicting--;
	sc->closed = true; /* never doomed now: no on_close would follow */
	pthread_mutex_unlock(&s->mu);
	sc_rele(sc);
}

static const asynqi_conn_ops srv_ops = {
	.on_read = srv_on_read,
	.on_close = srv_on_close,
};

/* ---- Connection hygiene ---------------------------------------------------
 */

/* Under sc->mu: no request in flight, reading (not paused) and no frame
 * half read: closing it loses nothing. */
static bool
sc_quiet_locked(const srv_conn *sc)
{
	return sc->inflight == 0 && !sc->paused &&
	    atomic_load_explicit(&sc->partial_ns, memory_order_relaxed) == 0;
}

/* Tells the peer of an idle connection to go (GOAWAY naming the last
 * request accepted; later ones are refused and resent elsewhere), then
 * closes it once that is written. False when a request arrived since it
 * was found idle (then it stays). */
static bool
sc_goaway_idle(srv_conn *sc, const char *why)
{
	pthread_mutex_lock(&sc->mu);
	bool quiet = sc_quiet_locked(sc);
	if (quiet)
		sc->goaway = true;
	uint64_t last = sc->last_id;
	pthread_mutex_unlock(&sc->mu);
	if (!quiet)
		return false;
	if (atomic_load(&sc->preface_ok)) {
		sc_goaway(sc, last, why);
		asynqi_conn_close_flushed(sc->c);
		asynqi_conn_flush(sc->c);
	} else {
		asynqi_conn_close(sc->c);
	}
	return true;
}

/* Under s->mu: dooms sc (held by the caller) so it is not picked twice and
 * leaves the connection count at once. */
static void
sc_doom_locked(asynq_rpc_server *s, srv_conn *sc, int64_t now)
{
	sc->doomed = true;
	sc->doomed_ns = now;
	s->evicting++;
}

/* Under s->mu: the connection idle longest (no request in flight), held,
 * or NULL. One that never sent its preface counts as idle since it was
 * accepted. */
static srv_conn *
oldest_idle_locked(asynq_rpc_server *s)
{
	srv_conn *best = NULL;
	int64_t best_ns = INT64_MAX;
	for (srv_conn *sc = s->conns; sc != NULL; sc = sc->next) {
		if (sc->home >= 0 || sc->doomed || sc->closed)
			continue;
		int64_t t =
		    atomic_load_explicit(&sc->last_ns, memory_order_relaxed);
		if (t >= best_ns)
			continue;
		pthread_mutex_lock(&sc->mu);
		bool quiet = sc_quiet_locked(sc);
		pthread_mutex_unlock(&sc->mu);
		if (quiet) {
			best = sc;
			best_ns = t;
		}
	}
	if (best != NULL && !sc_tryhold(best))
		best = NULL;
	return best;
}

/* What the sweeper does with a connection. */
enum {
	SWEEP_KEEP,
	SWEEP_HANDSHAKE,
	SWEEP_FRAME,
	SWEEP_WRITE,
	SWEEP_IDLE,
	SWEEP_LINGER
};

/* Under s->mu: the sweeper's verdict on sc at `now`. */
static int
sweep_verdict(const asynq_rpc_server *s, srv_conn *sc, int64_t now)
{
	const asynq_rpc_server_cfg *cfg = &s->cfg;
	if (sc->doomed)
		return now - sc->doomed_ns >= CLOSE_LINGER_MS * 1000000ll
		    ? SWEEP_LINGER
		    : SWEEP_KEEP;
	if (!atomic_load(&sc->preface_ok))
		return now - sc->accepted_ns >=
		        (int64_t)cfg->handshake_timeout_ms * 1000000
		    ? SWEEP_HANDSHAKE
		    : SWEEP_KEEP;
	pthread_mutex_lock(&sc->mu);
	bool paused = sc->paused;
	bool quiet = sc_quiet_locked(sc);
	int64_t wq_since = sc->paused_wq ? sc->wq_since_ns : 0;
	pthread_mutex_unlock(&sc->mu);
	if (wq_since != 0 &&
	    now - wq_since >= (int64_t)cfg->frame_timeout_ms * 1000000)
		return SWEEP_WRITE;
	int64_t partial =
	    atomic_load_explicit(&sc->partial_ns, memory_order_relaxed);
	if (partial != 0 && !paused &&
	    now - partial >= (int64_t)cfg->frame_timeout_ms * 1000000)
		return SWEEP_FRAME;
	int64_t last = atomic_load_explicit(&sc->last_ns, memory_order_relaxed);
	if (quiet && cfg->idle_timeout_ms != UINT32_MAX &&
	    now - last >= (int64_t)cfg->idle_timeout_ms * 1000000)
		return SWEEP_IDLE;
	return SWEEP_KEEP;
}

/* The sweeper thread: a few times per shortest timeout it closes the
 * connections whose handshake or frame is overdue, tells idle ones to go,
 * and cuts doomed ones that did not read their GOAWAY in time. */
static void *
sweeper_main(void *arg)
{
	asynq_rpc_server *s = arg;
	const asynq_rpc_server_cfg *cfg = &s->cfg;
	uint32_t shortest = cfg->handshake_timeout_ms;
	if (cfg->frame_timeout_ms < shortest)
		shortest = cfg->frame_timeout_ms;
	if (cfg->idle_timeout_ms < shortest)
		shortest = cfg->idle_timeout_ms;
	uint32_t tick_ms = shortest / 5;
	if (tick_ms < 10)
		tick_ms = 10;
	if (tick_ms > 1000)
		tick_ms = 1000;
	pthread_mutex_lock(&s->mu);
	while (!s->closing) {
		struct timespec ts;
		clock_gettime(CLOCK_MONOTONIC, &ts);
		ts.tv_nsec += (long)(tick_ms % 1000) * 1000000;
		ts.tv_sec += tick_ms / 1000 + ts.tv_nsec / 1000000000;
		ts.tv_nsec %= 1000000000;
		(void)pthread_cond_timedwait(&s->sweep_cv, &s->mu, &ts);
		if (s->closing)
			break;
		int64_t now = (int64_t)asynq_now_ns();
		srv_conn *victim[SWEEP_BATCH];
		int why[SWEEP_BATCH];
		size_t n = 0;
		for (srv_conn *sc = s->conns; sc != NULL && n < SWEEP_BATCH;
		     sc = sc->next) {
			if (sc->home >= 0 || sc->closed)
				continue;
			int v = sweep_verdict(s, sc, now);
			if (v == SWEEP_KEEP || !sc_tryhold(sc))
				continue;
			if (v != SWEEP_LINGER)
				sc_doom_locked(s, sc, now);
			else
				sc->doomed_ns = INT64_MAX / 2; /* cut once */
			victim[n] = sc;
			why[n++] = v;
		}
		pthread_mutex_unlock(&s->mu);
		for (size_t i = 0; i < n; i++) {
			srv_conn *sc = victim[i];
			bool closed = true;
			if (why[i] == SWEEP_IDLE) {
				closed = sc_goaway_idle(sc, "idle");
				if (closed)
					atomic_fetch_add(&s->conns_idle, 1);
			} else {
				if (why[i] == SWEEP_WRITE)
					atomic_fetch_add(&s->conns_overflowed,
					    1);
				else if (why[i] != SWEEP_LINGER)
					atomic_fetch_add(&s->conns_stalled, 1);
				asynqi_conn_close(sc->c);
			}
			if (!closed) {
				pthread_mutex_lock(&s->mu);
				sc->doomed = false;
				s->evicting--;
				pthread_mutex_unlock(&s->mu);
			}
			sc_rele(sc);
		}
		pthread_mutex_lock(&s->mu);
	}
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

/* A listener accepted c. At the connection cap, the connection idle
 * longest gives way to it; with none idle, c is closed at once. */
static void
srv_accept(void *arg, asynqi_conn *c)
{
	asynq_rpc_server *s = arg;
	srv_conn *sc = calloc(1, sizeof(*sc));
	if (sc == NULL || pthread_mutex_init(&sc->mu, NULL) != 0) {
		free(sc);
		atomic_fetch_add(&s->conns_refused, 1);
		asynqi_conn_close(c);
		asynqi_conn_rele(c);
		return;
	}
	sc->s = s;
	sc->c = c;
	atomic_init(&sc->refs, 1);
	atomic_init(&sc->dirty_mask, 0);
	int64_t now = (int64_t)asynq_now_ns();
	sc->accepted_ns = now;
	atomic_init(&sc->last_ns, now);
	atomic_init(&sc->partial_ns, 0);
	atomic_init(&sc->preface_ok, false);
	atomic_init(&sc->wq_over, false);
	atomic_init(&sc->stop_reading, false);
	sc->home = -1;
	asynqi_conn_peer_url(c, sc->addr, sizeof(sc->addr));
	sc->peer.address = sc->addr;
	asynq_sched *owner = asynqi_conn_owner(c);
	for (size_t i = 0; owner != NULL && i < s->workers; i++)
		if (asynq_runtime_sched(s->rt, i) == owner)
			sc->home = (int)i;
	srv_conn *victim = NULL;
	pthread_mutex_lock(&s->mu);
	bool refused = s->closing;
	if (!refused && s->open - s->evicting >= s->cfg.max_connections) {
		victim = oldest_idle_locked(s);
		if (victim != NULL)
			sc_doom_locked(s, victim, now);
		else
			refused = true;
	}
	if (!refused) {
		sc->next = s->conns;
		if (s->conns != NULL)
			s->conns->prev = sc;
		s->conns = sc;
		s->n_conns++;
		s->open++;
	}
	pthread_mutex_unlock(&s->mu);
	if (victim != NULL) {
		atomic_fetch_add(&s->conns_evicted, 1);
		if (!sc_goaway_idle(victim, "connection limit; idle longest")) {
			/* A request came in after all: it stays, and the new
			 * connection is over the cap until the next close. */
			pthread_mutex_lock(&s->mu);
			victim->doomed = false;
			s->evicting--;
			pthread_mutex_unlock(&s->mu);
		}
		sc_rele(victim);
	}
	if (refused) {
		atomic_fetch_add(&s->conns_refused, 1);
		pthread_mutex_destroy(&sc->mu);
		free(sc);
		asynqi_conn_close(c);
		asynqi_conn_rele(c);
		return;
	}
	asynqi_conn_set_ops(c, &srv_ops, sc,
	    s->cfg.max_msg_bytes + SIZE_SLACK + ASYNQI_FRAME_HDR);
	asynqi_conn_start(c);
}

/* In-process connections run on one worker, chosen in turn. */
static asynq_sched *
srv_owner(void *arg)
{
	asynq_rpc_server *s = arg;
	pthread_mutex_lock(&s->mu);
	bool closing = s->closing;
	pthread_mutex_unlock(&s->mu);
	if (closing)
		return NULL;
	return asynq_runtime_sched(s->rt,
	    atomic_fetch_add(&s->next_worker, 1) % s->workers);
}

/* ---- Server -------------------------------------------------------------- */

/* The TLS files of the server's settings. */
static asynqi_tls_files
tls_files(const asynq_rpc_server_cfg *cfg)
{
	return (asynqi_tls_files){
		.cert_file = cfg->tls_cert_file,
		.key_file = cfg->tls_key_file,
		.ca_file = cfg->tls_client_ca_file,
		.crl_file = cfg->tls_crl_file,
		.require_peer_cert = cfg->tls_require_client_cert,
		.cert_setting = "tls_cert_file",
		.key_setting = "tls_key_file",
		.ca_setting = "tls_client_ca_file",
		.crl_setting = "tls_crl_file",
	};
}

static void
tls_paths_free(asynq_rpc_server *s)
{
	for (size_t i = 0; i < 4; i++)
		free(s->tls_paths[i]);
}

/* Points s->cfg's TLS paths at copies of their own; false without
 * memory. */
static bool
tls_paths_copy(asynq_rpc_server *s)
{
	const char **f[4] = { &s->cfg.tls_cert_file, &s->cfg.tls_key_file,
		&s->cfg.tls_client_ca_file, &s->cfg.tls_crl_file };
	for (size_t i = 0; i < 4; i++) {
		if (*f[i] == NULL)
			continue;
		if ((s->tls_paths[i] = strdup(*f[i])) == NULL)
			return false;
		*f[i] = s->tls_paths[i];
	}
	return true;
}

/* Whether the TLS settings fit together; else why, in err. */
static bool
tls_settings_ok(const asynq_rpc_server_cfg *cfg, char *err, size_t len)
{
	if ((cfg->tls_cert_file != NULL) != (cfg->tls_key_file != NULL)) {
		snprintf(err, len,
		    "tls_cert_file and tls_key_file go together");
		return false;
	}
	if (cfg->tls_cert_file == NULL &&
	    (cfg->tls_client_ca_file != NULL || cfg->tls_crl_file != NULL ||
	        cfg->tls_require_client_cert)) {
		snprintf(err, len,
		    "client certificate settings need tls_cert_file and "
		    "tls_key_file");
		return false;
	}
	if (cfg->tls_require_client_cert && cfg->tls_client_ca_file == NULL) {
		snprintf(err, len,
		    "tls_require_client_cert needs tls_client_ca_file");
		return false;
	}
	return true;
}

asynq_status
asynq_rpc_server_reload_tls(asynq_rpc_server *s)
{
	if (s->tls == NULL) {
		/* Nothing to reload; the caller has the status. */
		last_error_set(s, "reload tls: the server has no TLS settings");
		return ASYNQ_FAILED_PRECONDITION;
	}
	asynqi_tls_files f = tls_files(&s->cfg);
	char err[512];
	asynq_status st = asynqi_tls_reload(s->tls, &f, err, sizeof(err));
	if (st != ASYNQ_OK) {
		char msg[sizeof(err) + 16];
		snprintf(msg, sizeof(msg), "reload tls: %s", err);
		last_error_set(s, msg);
		asynq_log(ASYNQ_LOG_ERROR, "tls_reload_failed", "server",
		    server_name(s), "status", asynq_status_name(st), "error",
		    err, NULL);
		return st;
	}
	asynq_log(ASYNQ_LOG_INFO, "tls_reloaded", "server", server_name(s),
	    NULL);
	return ASYNQ_OK;
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
	char err[512] = "";
	if (!tls_settings_ok(&s->cfg, err, sizeof(err)) ||
	    (s->cfg.n_interceptors != 0 && s->cfg.interceptors == NULL) ||
	    (s->cfg.n_policies != 0 && s->cfg.policies == NULL)) {
		if (err[0] == '\0')
			snprintf(err, sizeof(err), "%s",
			    "interceptors or policies: a count without an "
			    "array");
		asynq_log(ASYNQ_LOG_ERROR, "setup_failed", "status",
		    asynq_status_name(ASYNQ_INVALID_ARGUMENT), "error", err,
		    NULL);
		free(s);
		return ASYNQ_INVALID_ARGUMENT;
	}
	for (size_t i = 0; i < s->cfg.n_interceptors; i++)
		if (s->cfg.interceptors[i] == NULL) {
			free(s);
			return ASYNQ_INVALID_ARGUMENT;
		}
	if (s->cfg.n_interceptors != 0) {
		s->icpt = malloc(s->cfg.n_interceptors * sizeof(*s->icpt));
		if (s->icpt == NULL) {
			free(s);
			return ASYNQ_RESOURCE_EXHAUSTED;
		}
		memcpy(s->icpt, s->cfg.interceptors,
		    s->cfg.n_interceptors * sizeof(*s->icpt));
		s->n_icpt = s->cfg.n_interceptors;
	}
	s->cfg.interceptors = NULL;
	s->cfg.n_interceptors = 0;
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
	if (s->cfg.dedup_entries == 0)
		s->cfg.dedup_entries = DEFAULT_DEDUP_ENTRIES;
	if (s->cfg.dedup_age_ms == 0)
		s->cfg.dedup_age_ms = DEFAULT_DEDUP_AGE_MS;
	if (s->cfg.dedup_bytes == 0)
		s->cfg.dedup_bytes = DEFAULT_DEDUP_BYTES;
	if (s->cfg.handshake_timeout_ms == 0)
		s->cfg.handshake_timeout_ms = DEFAULT_HANDSHAKE_MS;
	if (s->cfg.idle_timeout_ms == 0)
		s->cfg.idle_timeout_ms = DEFAULT_IDLE_MS;
	if (s->cfg.frame_timeout_ms == 0)
		s->cfg.frame_timeout_ms = DEFAULT_FRAME_MS;
	if (s->cfg.max_write_queue_bytes == 0)
		s->cfg.max_write_queue_bytes = DEFAULT_WRITE_QUEUE;
	if (s->cfg.queue_target_us == 0)
		s->cfg.queue_target_us = DEFAULT_QUEUE_TARGET_US;
	/* Off unless asked for: see asynq_rpc_server_cfg. */
	if (s->cfg.latency_target_us == 0)
		s->cfg.latency_target_us = UINT32_MAX;
	if (s->cfg.slow_request_ms == 0)
		s->cfg.slow_request_ms = DEFAULT_SLOW_REQUEST_MS;
	if (s->cfg.max_conn_requests == 0)
		s->cfg.max_conn_requests = DEFAULT_CONN_REQUESTS;
	if (s->cfg.max_conn_calls == 0)
		s->cfg.max_conn_calls = 4 * s->cfg.max_calls;
	atomic_init(&s->next_worker, 0);
	atomic_init(&s->conns_refused, 0);
	atomic_init(&s->conns_evicted, 0);
	atomic_init(&s->conns_idle, 0);
	atomic_init(&s->conns_stalled, 0);
	atomic_init(&s->conns_overflowed, 0);
	atomic_init(&s->shed, 0);
	atomic_init(&s->shed_late, 0);
	atomic_init(&s->shed_limit, 0);
	atomic_init(&s->requests, 0);
	atomic_init(&s->calls, 0);
	atomic_init(&s->rejected, 0);
	atomic_init(&s->malformed, 0);
	atomic_init(&s->duplicates, 0);
	s->workers = asynq_runtime_workers(rt);
	if (getrandom(&s->instance, sizeof(s->instance), 0) !=
	    (ssize_t)sizeof(s->instance))
		s->instance = asynq_now_ns() ^ ((uint64_t)getpid() << 32);
	s->instance |= 1; /* never 0, which means none */
	if ((st = asynqi_dedup_alloc(&s->dd, s->cfg.dedup_entries,
	         s->cfg.dedup_age_ms, s->cfg.dedup_bytes)) != ASYNQ_OK)
		goto fail_dd;
	if (!tls_paths_copy(s)) {
		st = ASYNQ_RESOURCE_EXHAUSTED;
		goto fail_tls;
	}
	if (s->cfg.tls_cert_file != NULL) {
		asynqi_tls_files f = tls_files(&s->cfg);
		if ((st = asynqi_tls_alloc(&s->tls, true, &f, err,
		         sizeof(err))) != ASYNQ_OK) {
			asynq_log(ASYNQ_LOG_ERROR, "setup_failed", "status",
			    asynq_status_name(st), "error", err, NULL);
			goto fail_tls;
		}
	}
	st = ASYNQ_RESOURCE_EXHAUSTED;
	if (pthread_mutex_init(&s->mu, NULL) != 0)
		goto fail_mu;
	if (pthread_cond_init(&s->cv, NULL) != 0)
		goto fail_cv;
	pthread_condattr_t ca;
	if (pthread_condattr_init(&ca) != 0)
		goto fail_sweep_cv;
	int crv = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (crv == 0)
		crv = pthread_cond_init(&s->sweep_cv, &ca);
	pthread_condattr_destroy(&ca);
	if (crv != 0)
		goto fail_sweep_cv;
	s->w_inflight = calloc(s->workers, sizeof(*s->w_inflight));
	s->w_load = calloc(s->workers, sizeof(*s->w_load));
	s->writers = calloc(s->workers, sizeof(*s->writers));
	s->adm = calloc(s->workers, sizeof(*s->adm));
	s->w_stats = calloc(s->workers, sizeof(*s->w_stats));
	atomic_init(&s->not_serving, false);
	if (s->w_inflight == NULL || s->writers == NULL || s->w_load == NULL ||
	    s->adm == NULL || s->w_stats == NULL)
		goto fail_arrays;
	for (size_t i = 0; i < s->workers; i++) {
		atomic_init(&s->adm[i].overloaded, false);
		atomic_init(&s->adm[i].budget, 1);
		atomic_init(&s->adm[i].waiting, 0);
		atomic_init(&s->adm[i].verdict_until, 0);
		atomic_init(&s->adm[i].busy_since, 0);
	}
	if (s->cfg.queue_target_us != UINT32_MAX &&
	    s->cfg.latency_target_us != UINT32_MAX) {
		if (!asynqi_limit_init(&s->limit, s->workers,
		        ADM_MIN_LIMIT_PER_WORKER * s->workers,
		        ADM_BURST_PER_WORKER * s->workers,
		        ADM_LATENCY_TOLERANCE,
		        (int64_t)s->cfg.latency_target_us * 1000,
		        (int64_t)ADM_INTERVAL_TARGETS * s->cfg.queue_target_us *
		            1000,
		        (int64_t)asynq_now_ns()))
			goto fail_arrays;
		s->limit_on = true;
	}
	for (size_t i = 0; i < s->workers; i++) {
		s->writers[i].post.fn = writer_run;
		s->writers[i].s = s;
		s->writers[i].index = i;
	}
	if ((st = asynqi_health_add(s)) != ASYNQ_OK ||
	    (st = asynqi_reflection_add(s)) != ASYNQ_OK)
		goto fail_health;
	st = ASYNQ_RESOURCE_EXHAUSTED;
	if (pthread_create(&s->sweeper, NULL, sweeper_main, s) != 0)
		goto fail_health;
	s->sweeper_on = true;
	*sp = s;
	return ASYNQ_OK;

fail_health:
	for (size_t i = 0; i < s->n_methods; i++)
		free(s->methods[i].st);
	free(s->methods);
	free(s->services);
	if (s->limit_on)
		asynqi_limit_fini(&s->limit);
fail_arrays:
	free(s->w_stats);
	free(s->adm);
	free(s->writers);
	free(s->w_inflight);
	free(s->w_load);
	pthread_cond_destroy(&s->sweep_cv);
fail_sweep_cv:
	pthread_cond_destroy(&s->cv);
fail_cv:
	pthread_mutex_destroy(&s->mu);
fail_mu:
	asynqi_tls_free(s->tls);
fail_tls:
	tls_paths_free(s);
	asynqi_dedup_free(s->dd);
fail_dd:
	free(s->icpt);
	free(s);
	return st;
}

asynq_status
asynq_rpc_server_add_interceptor(asynq_rpc_server *s,
    const asynq_rpc_interceptor *icpt)
{
	if (s == NULL || icpt == NULL)
		return s != NULL ? setup_fail(s, ASYNQ_INVALID_ARGUMENT,
		                       "add interceptor: no interceptor")
		                 : ASYNQ_INVALID_ARGUMENT;
	pthread_mutex_lock(&s->mu);
	bool started = s->started;
	const asynq_rpc_interceptor **v =
	    started ? NULL : realloc(s->icpt, (s->n_icpt + 1) * sizeof(*v));
	if (v != NULL) {
		v[s->n_icpt++] = icpt;
		s->icpt = v;
	}
	pthread_mutex_unlock(&s->mu);
	if (started)
		return setup_fail(s, ASYNQ_FAILED_PRECONDITION,
		    "add interceptor %s: the server is already listening",
		    icpt->name != NULL ? icpt->name : "(unnamed)");
	if (v == NULL)
		return setup_fail(s, ASYNQ_RESOURCE_EXHAUSTED,
		    "add interceptor %s: out of memory",
		    icpt->name != NULL ? icpt->name : "(unnamed)");
	return ASYNQ_OK;
}

/* The policy of cfg.policies for method full name `name`: its own, else
 * its service's (the service's name, "/" and an asterisk), else NULL. */
static const asynq_rpc_policy *
policy_find(const asynq_rpc_server *s, const char *name)
{
	const asynq_rpc_policy *svc = NULL;
	const char *slash = strrchr(name, '/');
	size_t slen = slash != NULL ? (size_t)(slash - name) : 0;
	for (size_t i = 0; i < s->cfg.n_policies; i++) {
		const char *pm = s->cfg.policies[i].method;
		if (pm == NULL)
			continue;
		if (strcmp(pm, name) == 0)
			return &s->cfg.policies[i];
		if (slash != NULL && strncmp(pm, name, slen) == 0 &&
		    strcmp(pm + slen, "/*") == 0)
			svc = &s->cfg.policies[i];
	}
	return svc;
}

/* At the first listen: each method's policy from the settings or its
 * descriptor, the settings checked, and the authorization interceptor put
 * first when some method has a policy and the settings did not place it.
 * Under mu. */
static asynq_status
policies_resolve_locked(asynq_rpc_server *s, char *err, size_t cap)
{
	bool any = false;
	for (size_t i = 0; i < s->cfg.n_policies; i++) {
		const asynq_rpc_policy *p = &s->cfg.policies[i];
		const char *pm = p->method;
		if (pm == NULL || (p->n_peers != 0 && p->peers == NULL) ||
		    (p->n_scopes != 0 && p->scopes == NULL)) {
			snprintf(err, cap, "policy %zu: %s", i,
			    pm == NULL ? "no method named"
			               : "a list with no entries given");
			return ASYNQ_INVALID_ARGUMENT;
		}
		size_t len = strlen(pm);
		bool found = false;
		for (size_t j = 0; j < s->n_methods && !found; j++) {
			const char *name = s->methods[j].m->full_name;
			found = strcmp(name, pm) == 0 ||
			    (len > 2 && strcmp(pm + len - 2, "/*") == 0 &&
			        strncmp(name, pm, len - 1) == 0);
		}
		if (!found) {
			snprintf(err, cap,
			    "policy for %s: the server serves no such method "
			    "(name it \"pkg.Service/Method\" or "
			    "\"pkg.Service/*\")",
			    pm);
			return ASYNQ_INVALID_ARGUMENT;
		}
	}
	for (size_t j = 0; j < s->n_methods; j++) {
		srv_method *sm = &s->methods[j];
		const asynq_rpc_policy *p = policy_find(s, sm->m->full_name);
		if (p != NULL)
			sm->pol = (asynqi_policy){ p->n_peers + p->n_scopes !=
				    0,
				p->peers, p->n_peers, p->scopes, p->n_scopes };
		else
			sm->pol = (asynqi_policy){
				.set = sm->m->n_allow_peers +
				        sm->m->n_allow_scopes !=
				    0,
				.peers = sm->m->allow_peers,
				.n_peers = sm->m->n_allow_peers,
				.scopes = sm->m->allow_scopes,
				.n_scopes = sm->m->n_allow_scopes,
			};
		if (sm->pol.n_scopes != 0 && s->cfg.token_verifier == NULL) {
			snprintf(err, cap,
			    "method %s allows token scopes (%s%s) but the "
			    "server has no token_verifier to check tokens",
			    sm->m->full_name, sm->pol.scopes[0],
			    sm->pol.n_scopes > 1 ? ", ..." : "");
			return ASYNQ_INVALID_ARGUMENT;
		}
		any = any || sm->pol.set;
	}
	bool placed = false;
	for (size_t i = 0; i < s->n_icpt; i++)
		placed = placed || s->icpt[i] == &asynq_rpc_authz_interceptor;
	if (any && !placed) {
		const asynq_rpc_interceptor **v =
		    realloc(s->icpt, (s->n_icpt + 1) * sizeof(*v));
		if (v == NULL) {
			snprintf(err, cap, "out of memory");
			return ASYNQ_RESOURCE_EXHAUSTED;
		}
		memmove(v + 1, v, s->n_icpt * sizeof(*v));
		v[0] = &asynq_rpc_authz_interceptor;
		s->icpt = v;
		s->n_icpt++;
	}
	return ASYNQ_OK;
}

asynq_status
asynq_rpc_server_add_service(asynq_rpc_server *s,
    const asynq_rpc_service_desc *svc, const asynq_rpc_handler *handlers,
    void *ctx)
{
	if (svc == NULL || (svc->n_methods > 0 && handlers == NULL))
		return setup_fail(s, ASYNQ_INVALID_ARGUMENT,
		    "add service %s: no %s",
		    svc != NULL ? svc->full_name : "(null)",
		    svc == NULL ? "service" : "handler table");
	if (s->started)
		return setup_fail(s, ASYNQ_FAILED_PRECONDITION,
		    "add service %s: the server is already listening",
		    svc->full_name);
	for (size_t i = 0; i < svc->n_methods; i++) {
		const asynq_rpc_handler *h = &handlers[i];
		const char *name = svc->methods[i].full_name;
		bool whole = svc->methods[i].whole_batch;
		if (h->unary == NULL && h->batch == NULL)
			return setup_fail(s, ASYNQ_INVALID_ARGUMENT,
			    "handler table: method %s has no handler", name);
		if (h->unary != NULL && h->batch != NULL)
			return setup_fail(s, ASYNQ_INVALID_ARGUMENT,
			    "handler table: method %s has both a unary and a "
			    "whole-batch handler",
			    name);
		if (whole != (h->batch != NULL))
			return setup_fail(s, ASYNQ_INVALID_ARGUMENT,
			    "handler table: method %s is %s but has a %s "
			    "handler",
			    name, whole ? "whole_batch" : "not whole_batch",
			    whole ? "unary" : "whole-batch");
		if (method_find(s, name) != NULL)
			return setup_fail(s, ASYNQ_ALREADY_EXISTS,
			    "handler table: method %s is already served", name);
	}
	asynqi_mstats **st = calloc(svc->n_methods + 1, sizeof(*st));
	bool ok = st != NULL;
	for (size_t i = 0; ok && i < svc->n_methods; i++)
		ok = (st[i] = calloc(s->workers, sizeof(*st[i]))) != NULL;
	/* Under mu: stats readers walk the table from other threads. */
	pthread_mutex_lock(&s->mu);
	const asynq_rpc_service_desc **sv =
	    ok ? realloc(s->services, (s->n_services + 1) * sizeof(*sv)) : NULL;
	if (sv != NULL)
		s->services = sv;
	srv_method *m = sv != NULL
	    ? realloc(s->methods,
	          (s->n_methods + svc->n_methods + 1) * sizeof(*m))
	    : NULL;
	if (m != NULL) {
		s->services[s->n_services++] = svc;
		s->methods = m;
		for (size_t i = 0; i < svc->n_methods; i++) {
			const asynq_rpc_method_desc *md = &svc->methods[i];
			s->methods[s->n_methods++] = (srv_method){ md,
				handlers[i], ctx, st[i], { 0 },
				asynqi_codec_usable(md->input_codec, md->input)
				    ? md->input_codec
				    : NULL,
				asynqi_codec_usable(md->output_codec,
				    md->output)
				    ? md->output_codec
				    : NULL };
		}
	}
	pthread_mutex_unlock(&s->mu);
	if (m == NULL) {
		for (size_t i = 0; st != NULL && i < svc->n_methods; i++)
			free(st[i]);
		free(st);
		return setup_fail(s, ASYNQ_RESOURCE_EXHAUSTED,
		    "add service %s: out of memory", svc->full_name);
	}
	free(st);
	return ASYNQ_OK;
}

asynq_status
asynq_rpc_server_listen(asynq_rpc_server *s, const char *url)
{
	if (url == NULL)
		return setup_fail(s, ASYNQ_INVALID_ARGUMENT, "listen: no URL");
	pthread_mutex_lock(&s->mu);
	bool closing = s->closing;
	char perr[200] = "";
	asynq_status pst = ASYNQ_OK;
	if (!closing && !s->policies_done) {
		pst = policies_resolve_locked(s, perr, sizeof(perr));
		s->policies_done = pst == ASYNQ_OK;
	}
	if (pst == ASYNQ_OK)
		s->started = true;
	pthread_mutex_unlock(&s->mu);
	if (closing)
		return setup_fail(s, ASYNQ_FAILED_PRECONDITION,
		    "listen %s: the server is closing", url);
	if (pst != ASYNQ_OK)
		return setup_fail(s, pst, "listen %s: %s", url, perr);
	if (strncmp(url, "tls+", 4) == 0 && s->tls == NULL)
		return setup_fail(s, ASYNQ_INVALID_ARGUMENT,
		    "listen %s: a tls+ URL needs tls_cert_file and "
		    "tls_key_file in the server settings",
		    url);
	asynqi_listener **ls =
	    realloc(s->listeners, (s->n_listeners + 1) * sizeof(*ls));
	if (ls == NULL)
		return setup_fail(s, ASYNQ_RESOURCE_EXHAUSTED,
		    "listen %s: out of memory", url);
	s->listeners = ls;
	asynqi_listener *l = NULL;
	const char *why = NULL;
	asynq_status st = asynqi_listener_open(&l, url,
	    s->tls != NULL ? asynqi_tls_config(s->tls) : NULL, srv_accept,
	    srv_owner, s, &why);
	if (st != ASYNQ_OK)
		return setup_fail(s, st, "listen %s: %s", url,
		    why != NULL ? why : asynq_strerror(st));
	pthread_mutex_lock(&s->mu);
	s->listeners[s->n_listeners++] = l;
	bool want_admin = s->cfg.admin_url != NULL && s->admin == NULL;
	pthread_mutex_unlock(&s->mu);
	asynq_log(ASYNQ_LOG_INFO, "listen", "server", server_name(s), "url",
	    url, NULL);
	if (want_admin) {
		char err[200] = "the admin library is not linked";
		void *h = NULL;
		st = asynqi_admin_for_server != NULL
		    ? asynqi_admin_for_server(s, s->rt, s->cfg.admin_url, &h,
		          err, sizeof(err))
		    : ASYNQ_UNIMPLEMENTED;
		if (st != ASYNQ_OK)
			return setup_fail(s, st, "%s", err);
		pthread_mutex_lock(&s->mu);
		s->admin = h;
		pthread_mutex_unlock(&s->mu);
	}
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
	char inflight[24];
	snprintf(inflight, sizeof(inflight), "%zu", s->reqs);
	asynqi_listener **ls = s->listeners;
	size_t n_ls = s->n_listeners;
	s->listeners = NULL;
	s->n_listeners = 0;
	bool sweeper = s->sweeper_on;
	s->sweeper_on = false;
	pthread_cond_broadcast(&s->sweep_cv);
	pthread_mutex_unlock(&s->mu);
	asynq_log(ASYNQ_LOG_INFO, "draining", "server", server_name(s),
	    "requests_in_flight", inflight, NULL);
	if (sweeper)
		pthread_join(s->sweeper, NULL);
	for (size_t i = 0; i < n_ls; i++)
		asynqi_listener_close(ls[i]);
	free(ls);
	/* GOAWAY on every connection; later requests are refused. */
	pthread_mutex_lock(&s->mu);
	size_t n = s->n_conns, k = 0;
	srv_conn **all = calloc(n != 0 ? n : 1, sizeof(*all));
	for (srv_conn *sc = s->conns; sc != NULL && all != NULL && k < n;
	     sc = sc->next)
		if (sc_tryhold(sc))
			all[k++] = sc;
	pthread_mutex_unlock(&s->mu);
	for (size_t i = 0; i < k; i++) {
		srv_conn *sc = all[i];
		pthread_mutex_lock(&sc->mu);
		sc->goaway = true;
		uint64_t last = sc->last_id;
		pthread_mutex_unlock(&sc->mu);
		sc_goaway(sc, last, "server closing");
		asynqi_conn_flush(sc->c);
	}
	/* Every request received is answered... */
	pthread_mutex_lock(&s->mu);
	while (s->reqs > 0 || s->writer_posts > 0)
		pthread_cond_wait(&s->cv, &s->mu);
	pthread_mutex_unlock(&s->mu);
	/* ...and sent; then the connections close. A peer that does not
	 * read what is left is cut off after CLOSE_LINGER_MS. */
	for (size_t i = 0; i < k; i++) {
		asynqi_conn_close_flushed(all[i]->c);
		sc_rele(all[i]);
	}
	free(all);
	uint64_t t0 = asynq_now_ns();
	pthread_mutex_lock(&s->mu);
	while (s->n_conns > 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 50 * 1000000;
		if (ts.tv_nsec >= 1000000000) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000;
		}
		if (pthread_cond_timedwait(&s->cv, &s->mu, &ts) == 0 ||
		    asynq_now_ns() - t0 < CLOSE_LINGER_MS * 1000000ull)
			continue;
		asynqi_conn *cs[64];
		size_t nc = 0;
		srv_conn *held[64];
		for (srv_conn *sc = s->conns; sc != NULL && nc < 64;
		     sc = sc->next) {
			if (!sc_tryhold(sc))
				continue;
			held[nc] = sc;
			cs[nc++] = sc->c;
		}
		pthread_mutex_unlock(&s->mu);
		for (size_t i = 0; i < nc; i++) {
			asynqi_conn_close(cs[i]);
			sc_rele(held[i]);
		}
		pthread_mutex_lock(&s->mu);
	}
	s->closed = true;
	void *admin = s->admin;
	s->admin = NULL;
	pthread_mutex_unlock(&s->mu);
	asynq_log(ASYNQ_LOG_INFO, "closed", "server", server_name(s), NULL);
	/* After the close, so /ready said draining while it ran. */
	if (admin != NULL && asynqi_admin_for_server_close != NULL)
		asynqi_admin_for_server_close(admin);
}

void
asynq_rpc_server_free(asynq_rpc_server *s)
{
	if (s == NULL)
		return;
	asynq_rpc_server_close(s);
	free(s->listeners);
	for (size_t i = 0; i < s->workers; i++)
		free(s->writers[i].dirty);
	free(s->writers);
	free(s->w_inflight);
	free(s->w_load);
	free(s->adm);
	free(s->w_stats);
	if (s->limit_on)
		asynqi_limit_fini(&s->limit);
	for (size_t i = 0; i < s->n_methods; i++)
		free(s->methods[i].st);
	free(s->methods);
	free(s->services);
	free(s->icpt);
	asynqi_dedup_free(s->dd);
	asynqi_tls_free(s->tls);
	tls_paths_free(s);
	pthread_cond_destroy(&s->sweep_cv);
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
	out->conns_refused = atomic_load(&m->conns_refused);
	out->conns_evicted = atomic_load(&m->conns_evicted);
	out->conns_idle = atomic_load(&m->conns_idle);
	out->conns_stalled = atomic_load(&m->conns_stalled);
	out->conns_overflowed = atomic_load(&m->conns_overflowed);
	out->shed = atomic_load(&m->shed);
	out->shed_late = atomic_load(&m->shed_late);
	out->shed_limit = atomic_load(&m->shed_limit);
	size_t lim = SIZE_MAX;
	if (m->limit_on)
		lim = asynqi_limit_get((asynqi_limit *)&m->limit);
	out->call_limit = lim == SIZE_MAX ? 0 : (uint64_t)lim;
	out->inflight_calls = srv_load(m);
	pthread_mutex_lock(&m->mu);
	out->conns_open = m->open;
	pthread_mutex_unlock(&m->mu);
	asynqi_hist_sum(&m->w_stats[0].cpr, m->workers, sizeof(*m->w_stats),
	    asynqi_cpr_bounds, asynqi_n_cpr_bounds, &out->calls_per_request);
	asynqi_hist_sum(&m->w_stats[0].queue, m->workers, sizeof(*m->w_stats),
	    asynqi_latency_bounds, asynqi_n_latency_bounds, &out->queue_ns);
}

/* ---- Per-method counters and state, for probes and the health service --
 */

size_t
asynq_rpc_server_methods(const asynq_rpc_server *s)
{
	asynq_rpc_server *m = (asynq_rpc_server *)s;
	pthread_mutex_lock(&m->mu);
	size_t n = m->n_methods;
	pthread_mutex_unlock(&m->mu);
	return n;
}

asynq_status
asynq_rpc_server_method_stats_get(const asynq_rpc_server *s, size_t i,
    asynq_rpc_method_stats *out)
{
	asynq_rpc_server *m = (asynq_rpc_server *)s;
	pthread_mutex_lock(&m->mu);
	if (i >= m->n_methods) {
		pthread_mutex_unlock(&m->mu);
		return ASYNQ_OUT_OF_RANGE;
	}
	out->method = m->methods[i].m;
	asynqi_mstats_get(m->methods[i].st, m->workers, out);
	pthread_mutex_unlock(&m->mu);
	return ASYNQ_OK;
}

asynq_rpc_serving
asynq_rpc_server_serving(const asynq_rpc_server *s)
{
	asynq_rpc_server *m = (asynq_rpc_server *)s;
	asynq_rpc_serving st;
	pthread_mutex_lock(&m->mu);
	if (m->closed)
		st = ASYNQ_RPC_CLOSED;
	else if (m->closing)
		st = ASYNQ_RPC_DRAINING;
	else if (m->n_listeners == 0)
		st = ASYNQ_RPC_STARTING;
	else if (atomic_load(&m->not_serving))
		st = ASYNQ_RPC_NOT_SERVING;
	else
		st = ASYNQ_RPC_SERVING;
	pthread_mutex_unlock(&m->mu);
	return st;
}

const char *
asynq_rpc_serving_name(asynq_rpc_serving st)
{
	switch (st) {
	case ASYNQ_RPC_STARTING:
		return "starting";
	case ASYNQ_RPC_SERVING:
		return "serving";
	case ASYNQ_RPC_NOT_SERVING:
		return "not serving";
	case ASYNQ_RPC_DRAINING:
		return "draining";
	case ASYNQ_RPC_CLOSED:
		return "closed";
	}
	return "unknown";
}

void
asynq_rpc_server_set_serving(asynq_rpc_server *s, bool serving)
{
	if (atomic_exchange(&s->not_serving, !serving) != !serving)
		asynq_log(ASYNQ_LOG_INFO, serving ? "serving" : "not_serving",
		    "server", server_name(s), NULL);
}

bool
asynq_rpc_server_has_service(const asynq_rpc_server *s, const char *full_name)
{
	asynq_rpc_server *m = (asynq_rpc_server *)s;
	size_t len = strlen(full_name);
	bool found = false;
	pthread_mutex_lock(&m->mu);
	for (size_t i = 0; i < m->n_methods && !found; i++) {
		const char *f = m->methods[i].m->full_name;
		found = strncmp(f, full_name, len) == 0 && f[len] == '/';
	}
	pthread_mutex_unlock(&m->mu);
	return found;
}

const asynq_rpc_service_desc *
asynq_rpc_server_service(const asynq_rpc_server *s, size_t i)
{
	asynq_rpc_server *m = (asynq_rpc_server *)s;
	pthread_mutex_lock(&m->mu);
	const asynq_rpc_service_desc *svc =
	    i < m->n_services ? m->services[i] : NULL;
	pthread_mutex_unlock(&m->mu);
	return svc;
}
