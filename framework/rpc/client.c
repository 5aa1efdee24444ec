/* SPDX-License-Identifier: MIT */
/*
 * The RPC client: a channel keeps a connection to each replica (conn.c) and
 * speaks the asynq framing on it (proto/asynq/rpc.proto). Each scheduler
 * thread that calls through a channel gets its own batch backend, so the
 * calls the tasks of one worker make join one batch; a flush sends the
 * batch as one or more multi-call requests, many of which may be in flight
 * on one connection at once.
 *
 * Design notes:
 * - Calls are encoded at call time straight into the batch's buffer, each as
 *   a complete Request.calls field (method by number, call_id = the item's
 *   index, payload packed in place), so a flush only cuts the buffer into
 *   requests of at most max_calls calls and max_msg_bytes bytes and sends
 *   each as [frame header][method table, first request of a connection]
 *   [calls][shared metadata][trailer] with no copy of the calls.
 * - Collapsing: a call to an idempotent method whose method, metadata
 *   (by content) and payload bytes equal those of a call already in the active
 *   batch is not encoded again: it becomes a follower of that call's item
 *   (asynq_batch_follow), which gets a copy of the reply (rpc_copy) or of
 *   the error when the batch finishes, and lends the first call its
 *   deadline if earlier. The batch finds them through a hash table of its
 *   collapsible records. Followers are not records: item index = record
 *   index = call_id still holds.
 * - A batch's metadata chain is the first call's: it goes once into every
 *   request of the batch; a call made under another chain carries its own
 *   with own_metadata set.
 * - Sub-request states (under the channel's mutex `mu`): WAITING (no ready
 *   connection yet), SENT (on a connection, in the pending table by
 *   request_id), DONE. Whoever moves a sub-request to DONE (its reply, its
 *   deadline, a cancel, a failure) sets its items and counts it finished; the
 *   last sub-request of a batch calls asynq_batch_complete. Replies are
 *   decoded on the connection's reader thread after the claim, outside mu.
 * - A batch's memory (buffer, sub-requests) is reference counted: the core
 *   holds one until batch_free, and each wbuf queued on a connection one,
 *   so a write that outlives its batch never reads freed bytes.
 * - Deadlines: each backend keeps its in-flight sub-requests in a list by
 *   deadline (scheduler thread only) and one core timer for the earliest,
 *   so a call fails with DEADLINE_EXCEEDED even if its server never answers.
 *   On the wire the deadline goes as the time left (timeout_us).
 * - Replicas: a list of URLs is fixed; a name (dns:, dns+srv:) is resolved
 *   on resolve.c's thread, whose callback (chan_set_replicas) adds replicas
 *   and retires those gone: a retired replica leaves ch->reps (so nothing
 *   picks it), keeps its connection until its outstanding requests are
 *   answered, then the resolver thread's ticks (reap) close it, close its
 *   dialer and free it once no cli_conn points to it (n_conns). Replicas
 *   are heap objects, so cli_conn->rep and sub_req->avoid stay valid while
 *   the array moves.
 * - Connections: a replica dials, writes the preface, and is READY once the
 *   server's preface and HELLO arrived. A flush picks the READY replica with
 *   the fewest outstanding requests (a full scan: the counts are exact and
 *   this channel's own, so two random choices would only add noise), or the
 *   next in turn with round robin; each sub-request of a split batch is
 *   picked on its own, so they spread. With none READY, calls wait while a
 *   first attempt is in progress; when every replica has failed its last
 *   attempt they fail UNAVAILABLE at once, unless wait_for_ready (then they
 *   wait until their deadline). Failed attempts back off as gRPC does (1 s,
 *   x1.6, jitter 0.2, at most 120 s); a lost READY connection redials at
 *   once.
 * - At-most-once: a request in flight on a connection that is lost is sent
 *   again (at most MAX_RESENDS times, within its deadline) with the same
 *   client_id and request_id and attempt + 1; the server answers a copy it
 *   remembers with the original's reply, and runs only the idempotent calls
 *   of one it does not. After a GOAWAY, requests with ids above its
 *   last_request_id never reached a handler and go again as new.
 * - Refusals: a reply with a request-level status and not_run (the server
 *   ran none of it: overloaded, closing) is retried on another READY
 *   replica (q->avoid), at most MAX_RETRY_HOPS times within its deadline,
 *   under gRFC A6's throttle: tokens, taken by each refusal and given back
 *   in part by each answered request, must be over half full. Calls that
 *   wait for ready and calls that fail fast go in separate per-thread
 *   backends, so each sub-request is wholly one or the other.
 * - Interceptors run in asynq_rpc_call, before the request cache and the
 *   batch, on a cli_icall of their own (out of line, so a channel without
 *   them pays one test); a rejected call is a failed constant future. The
 *   after hooks hang on the call's future (asynq_future_on_done) with a
 *   copy of the interceptor list. Metadata they add is a chain on top of
 *   the caller's, pushed as the scoped chain while the call is made; a
 *   call whose chain differs from the batch's first only by node but not
 *   by content shares the batch's metadata.
 * - Outlier ejection (under mu): replica_note counts failures in a row
 *   (connection attempts failed, connections lost, deadlines passed while
 *   SENT, replies with UNAVAILABLE calls; any other reply resets it) and
 *   ejects at eject_after unless no other READY replica is left. An ejected
 *   replica is picked only when no other is READY. When its time is up a
 *   dispatch (probe_ejected) sends a health check on its connection
 *   (probe_id, its own wbuf; a reply matched in on_reply before the pending
 *   table) or closes a connection whose last check went unanswered; the
 *   check passes on SERVING or UNIMPLEMENTED.
 * - A resend after a lost connection of a request that may have run takes a
 *   retry token, as a refusal does.
 * - Lock order: the channel's mu, then a connection's lock (inside conn.c),
 *   or the resolver's (a kick); conn.c calls wbuf done and on_close without
 *   its lock, and they take mu. Nothing calls into conn.c's queue/flush
 *   with mu held; dialers are opened and closed without it.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>

#include "asynq/batch.h"
#include "asynq/log.h"
#include "conn.h"
#include "tls.h"
#include "mstats.h"
#include "resolve.h"
#include "throttle.h"
#include "framework/core/platform.h"
#include "internal.h"

#define DEFAULT_MAX_CALLS 1000
#define DEFAULT_DEADLINE_MS 10000
#define DEFAULT_MAX_MSG (4u << 20)
#define MAX_RESENDS 3
/* Bytes of a trailer: request_id (1 + 10), client_id (1 + 8), timeout_us
 * (1 + 10), attempt (1 + 5), first_instance (1 + 8), first_sent_ago_us
 * (1 + 10). */
#define TRAILER_MAX 60
#define BACKOFF_INITIAL_MS 1000
#define BACKOFF_MAX_MS 120000
/* Retry throttling (gRFC A6), in thousandths of a token. */
#define DEFAULT_RETRY_TOKENS 10
#define DEFAULT_RETRY_TOKEN_MILLI 100
/* The adaptive throttle (throttle.h): send about twice what is admitted. */
#define DEFAULT_THROTTLE_RATIO_MILLI 2000
/* Replicas a refused request may try after the first. */
#define MAX_RETRY_HOPS 2
/* Names (resolve.c) and outlier ejection: see asynq_rpc_channel_cfg. */
#define DEFAULT_RESOLVE_MS 30000
#define DEFAULT_MAX_REPLICAS 64
#define DEFAULT_EJECT_AFTER 5
#define DEFAULT_EJECT_BASE_MS 10000
#define EJECT_MAX_MS 300000
#define HEALTH_CHECK "asynq.health.v1.Health/Check"

typedef struct chan_backend chan_backend;

/* A histogram many threads add to. */
typedef struct cli_hist {
	atomic_uint_fast64_t counts[ASYNQ_RPC_HIST_MAX + 1];
	atomic_uint_fast64_t sum;
} cli_hist;

typedef struct cli_mstats {
	atomic_uint_fast64_t codes[ASYNQ_STATUS_COUNT];
	cli_hist latency, cpr;
} cli_mstats;
typedef struct rpc_batch rpc_batch;
typedef struct sub_req sub_req;
typedef struct replica replica;
typedef struct cli_conn cli_conn;

enum { REP_IDLE, REP_CONNECTING, REP_HANDSHAKE, REP_READY, REP_FAILED };
enum { SUB_NEW, SUB_WAITING, SUB_SENT, SUB_DONE };

struct asynq_rpc_channel {
	const asynq_rpc_service_desc *svc;
	uint64_t id;
	size_t max_calls;
	uint32_t default_deadline_ms;
	size_t max_msg_bytes;
	bool wait_for_ready;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	replica **reps; /* the current replicas */
	size_t n_reps, cap_reps;
	replica *retired; /* gone from the name: draining, then freed */
	/* A name's resolver (NULL for a list of URLs); `resolved` once its
	 * first resolution ended; why the last one failed, in a ring so a
	 * message being formatted is not overwritten under it. */
	asynqi_resolver *resolver; /* set under mu after its thread started */
	bool named, resolved;
	char resolve_why[4][256];
	unsigned why_slot;
	int lb;
	uint32_t eject_after, eject_base_ms;
	size_t n_ejected;
	sub_req *wait_head, *wait_tail; /* WAITING, in order */
	sub_req **pend;                 /* SENT, by request_id */
	size_t pend_mask, n_pend;
	chan_backend *backends;
	long inflight; /* sub-requests not DONE */
	long live_conns;
	/* Every connection until its on_close, a replica's current one or not
	 * (one draining after a GOAWAY is no replica's): what the channel's
	 * free closes. */
	cli_conn *conns;
	bool closing;
	uint64_t client_id;
	atomic_uint_fast64_t next_request_id;
	asynqi_buf table; /* Request.methods of the whole service */
	/* The first chunk of a reply's arena, from the last reply decoded
	 * (asynqi_arena_hint; relaxed, readers only). */
	atomic_size_t reply_arena_hint;
	atomic_uint_fast64_t calls, requests, failures, resends, refused,
	    retries, sent_calls, collapsed;
	bool collapse; /* identical idempotent calls of a batch go once */
	bool cache_all, cache_errors; /* cfg.request_cache, cache_errors */
	atomic_uint_fast64_t cached;
	/* Per method of svc: calls sent by how they ended, their latency
	 * and calls per request (any thread adds; atomics). */
	struct cli_mstats *mst;
	/* Per method of svc: the codecs of its request (2 mi) and response
	 * (2 mi + 1) when usable (asynqi_codec_usable), else NULL. */
	const asynq_rpc_codec **codecs;
	/* Retry throttling, under mu: tokens (thousandths) of at most
	 * tokens_max; a refused request takes a whole one, a request answered
	 * gives token_milli back; refused requests go to another replica only
	 * while more than half are left. tokens_max 0: never. */
	int64_t tokens, tokens_max, token_milli;
	/* The adaptive throttle (throttle.h; note and update under mu) and
	 * the calls it refused. */
	asynqi_throttle thr;
	atomic_uint_fast64_t throttled;
	uint64_t rng;
	size_t rr; /* where the next replica pick starts */
	/* Interceptors in order, borrowed (the array is the channel's). */
	const asynq_rpc_interceptor **icpt;
	size_t n_icpt;
};

struct replica {
	asynq_rpc_channel *ch;
	char *url;
	asynqi_dialer *d;
	int state;
	cli_conn *cc; /* current connection, or NULL */
	uint32_t backoff_ms;
	size_t outstanding;
	int last_err;
	bool probing;            /* calls wait for an attempt they hurried */
	struct tls_ent *tls_ent; /* tls+ URLs: its TLS configuration */
	/* Gone from the name's addresses: on ch->retired (via next), takes
	 * no new requests; freed once it has no connection left. */
	bool removed;
	replica *next;
	size_t n_conns; /* cli_conns alive that point here */
	uint64_t requests, calls;
	/* Outlier ejection: failures in a row; ejected until eject_until
	 * (monotonic ns), then probed (health_due) with a health check
	 * (probe_cc: the connection it went on); eject_streak ejections in a
	 * row without a probe passing. */
	unsigned consec_fail, eject_streak;
	bool ejected, health_due;
	int64_t eject_until;
	cli_conn *probe_cc;
	uint64_t ejections;
};

struct cli_conn {
	replica *rep;
	asynqi_conn *c;
	cli_conn *all_prev, *all_next; /* ch->conns, under mu */
	bool freeing;                  /* closed by the channel's free */
	int refs; /* under mu: the connection's, one per busy wbuf */
	bool got_preface, ready, goaway, dead;
	uint64_t instance; /* the server's (Hello.instance), 0 if none */
	sub_req *head;     /* SENT on it */
	asynqi_wbuf pw;
	/* A health check of an ejected replica: its request id (0: none),
	 * bytes and wbuf (busy while queued). */
	uint64_t probe_id;
	asynqi_buf probe_buf;
	asynqi_wbuf probe_w;
	bool probe_busy;
};

struct chan_backend {
	asynq_backend base;
	asynq_rpc_channel *ch;
	atomic_int refs;
	atomic_bool dead;   /* the channel is gone */
	bool wfr;           /* its calls wait for ready */
	chan_backend *next; /* channel's list */
	/* Scheduler thread only. */
	sub_req *dl_head, *dl_tail; /* by deadline */
	uint64_t armed;             /* due time of the armed timer, or 0 */
	/* Room a new batch starts with, from the last one flushed (powers of
	 * two): records, encoded bytes, collapse table slots. A steady load
	 * then grows no array per batch. */
	size_t recs_hint, buf_hint, ctab_hint;
};

/* The most call records a batch starts with. */
#define RECS_HINT_MAX 4096

/* One call in a batch. */
typedef struct call_rec {
	const asynq_rpc_method_desc *m;
	size_t off, wire; /* its bytes in the batch buffer */
	int64_t deadline; /* monotonic ns */
	asynqi_md_node *md;
	bool answered; /* its result was set (reader, while handling) */
	/* Collapsible calls: the payload's place in the buffer and hash. */
	size_t poff, plen;
	uint64_t hash;
} call_rec;

struct sub_req {
	rpc_batch *b;
	size_t start, n;
	size_t off, len;
	int64_t deadline;
	uint64_t request_id;
	int state;
	unsigned attempt;
	unsigned hops; /* replicas that refused it */
	/* Where and when it was last sent as new (attempt 0), for a resend
	 * to prove it never ran (Request.first_instance). */
	uint64_t first_instance;
	int64_t first_sent_ns;
	replica *avoid; /* the last that refused it, or NULL */
	bool w_busy;
	bool unsendable;
	cli_conn *w_cc; /* the connection the wbuf was queued on (held) */
	sub_req *hnext; /* pending table */
	sub_req *qnext; /* waiting list */
	sub_req *cprev, *cnext; /* connection's list */
	cli_conn *cc;
	sub_req *dprev, *dnext; /* backend's deadline list */
	bool in_dl;
	asynqi_wbuf w;
	uint8_t hdr[ASYNQI_FRAME_HDR];
	uint8_t trailer[TRAILER_MAX];
	asynq_status fail_st; /* set with fail_why by the claimer */
	const char *fail_why;
	const char *fail_detail; /* the transport's reason, or NULL */
};

struct rpc_batch {
	asynq_batch base;
	chan_backend *be;
	call_rec *recs;
	size_t n_recs, cap_recs;
	asynqi_buf buf;   /* the calls, encoded */
	asynqi_buf mdbuf; /* the batch's chain as Request.metadata */
	asynqi_md_node *base_md;
	sub_req *subs;
	size_t n_subs;
	atomic_size_t pending;
	atomic_int refs;
	uint64_t first_id;  /* request_id of subs[0]; the others follow */
	int64_t default_dl; /* the default deadline of its calls, or 0 */
	int64_t t0;         /* when its first call was made (monotonic) */
	int64_t min_dl;     /* the earliest deadline of its calls */
	/* Collapsible calls by hash: record index + 1, 0 empty. */
	uint32_t *ctab;
	size_t ctab_mask, n_ctab;
};

static atomic_uint_fast64_t next_channel_id = 1;

static void replica_dial(replica *r, uint32_t delay_ms);
static void client_requeue(asynq_rpc_channel *ch, sub_req *q, bool maybe_sent);

/* ---- Small helpers ------------------------------------------------------- */

static void
backend_rele(chan_backend *be)
{
	if (atomic_fetch_sub(&be->refs, 1) == 1)
		free(be);
}

static void
batch_rele(rpc_batch *b)
{
	if (atomic_fetch_sub(&b->refs, 1) != 1)
		return;
	for (size_t i = 0; i < b->n_recs; i++)
		asynqi_md_rele(b->recs[i].md);
	free(b->recs);
	free(b->subs);
	free(b->ctab);
	asynqi_buf_fini(&b->buf);
	asynqi_buf_fini(&b->mdbuf);
	chan_backend *be = b->be;
	free(b);
	backend_rele(be);
}

static int64_t mono_ns(void);

static void
cli_hist_add(cli_hist *h, const uint64_t *bounds, size_t n, uint64_t v,
    uint64_t times)
{
	size_t i = 0;
	while (i < n && v > bounds[i])
		i++;
	atomic_fetch_add_explicit(&h->counts[i], times, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum, v * times, memory_order_relaxed);
}

/* Counts `times` calls of method m of b that ended with st, `now`
 * (monotonic ns) after the batch's first call. Any thread. */
static void
count_calls(asynq_rpc_channel *ch, const rpc_batch *b,
    const asynq_rpc_method_desc *m, asynq_status st, int64_t now,
    uint64_t times)
{
	size_t mi = (size_t)(m - ch->svc->methods);
	if (times == 0 || m < ch->svc->methods || mi >= ch->svc->n_methods ||
	    (size_t)st >= ASYNQ_STATUS_COUNT)
		return;
	cli_mstats *ms = &ch->mst[mi];
	atomic_fetch_add_explicit(&ms->codes[st], times, memory_order_relaxed);
	cli_hist_add(&ms->latency, asynqi_latency_bounds,
	    asynqi_n_latency_bounds, now > b->t0 ? (uint64_t)(now - b->t0) : 0,
	    times);
}

static void
count_call(asynq_rpc_channel *ch, const rpc_batch *b, size_t i, asynq_status st,
    int64_t now)
{
	count_calls(ch, b, b->recs[i].m, st, now, 1);
}

/* OK results of one reply counted together: the calls of a reply end at
 * one instant, so a run of calls of one method costs one bucket search
 * and two atomic adds, not that per call. */
typedef struct ok_run {
	const asynq_rpc_method_desc *m;
	uint64_t n;
} ok_run;

static void
ok_run_add(asynq_rpc_channel *ch, const rpc_batch *b, ok_run *run,
    const asynq_rpc_method_desc *m, int64_t now)
{
	if (run->m != m) {
		count_calls(ch, b, run->m, ASYNQ_OK, now, run->n);
		run->m = m;
		run->n = 0;
	}
	run->n++;
}

static void
fail_item(rpc_batch *b, size_t i, asynq_status st, const char *why)
{
	asynq_rpc_channel *ch = b->be->ch;
	const call_rec *r = &b->recs[i];
	if (asynq_item_set_error(asynq_batch_item(&b->base, i),
	        asynq_error_alloc(st, "rpc %s: %s", r->m->full_name, why)) ==
	        ASYNQ_OK &&
	    ch != NULL) {
		atomic_fetch_add_explicit(&ch->failures, 1,
		    memory_order_relaxed);
		count_call(ch, b, i, st, mono_ns());
	}
}

/* The sub-request is DONE and its items set: counts it finished. Any
 * thread; no lock held. */
static void
sub_finished(asynq_rpc_channel *ch, sub_req *q)
{
	rpc_batch *b = q->b;
	/* Each sub-request finishes once: whoever made it DONE. */
	size_t was = atomic_fetch_sub(&b->pending, 1);
	ASYNQ_ASSERT(was > 0);
	if (was == 1)
		asynq_batch_complete(&b->base, ASYNQ_OK);
	/* b may be gone now. */
	pthread_mutex_lock(&ch->mu);
	ASYNQ_ASSERT(ch->inflight > 0);
	if (--ch->inflight == 0)
		pthread_cond_broadcast(&ch->cv);
	pthread_mutex_unlock(&ch->mu);
}

/* Fails every call of a claimed sub-request and finishes it. */
static void
sub_fail(asynq_rpc_channel *ch, sub_req *q, asynq_status st, const char *why)
{
	for (size_t i = q->start; i < q->start + q->n; i++)
		fail_item(q->b, i, st, why);
	sub_finished(ch, q);
}

/* ---- Pending table (under mu) -------------------------------------------- */

static size_t
pend_slot(const asynq_rpc_channel *ch, uint64_t id)
{
	uint64_t h = id * 0x9e3779b97f4a7c15u;
	return (size_t)(h >> 20) & ch->pend_mask;
}

static bool
pend_insert(asynq_rpc_channel *ch, sub_req *q)
{
	if (ch->n_pend + 1 > (ch->pend_mask + 1) / 2 || ch->pend == NULL) {
		size_t nb = ch->pend != NULL ? (ch->pend_mask + 1) * 2 : 64;
		sub_req **t = calloc(nb, sizeof(*t));
		if (t == NULL)
			return false;
		size_t old = ch->pend != NULL ? ch->pend_mask + 1 : 0;
		sub_req **ot = ch->pend;
		ch->pend = t;
		ch->pend_mask = nb - 1;
		for (size_t i = 0; i < old; i++) {
			sub_req *e = ot[i];
			while (e != NULL) {
				sub_req *next = e->hnext;
				size_t s = pend_slot(ch, e->request_id);
				e->hnext = t[s];
				t[s] = e;
				e = next;
			}
		}
		free(ot);
	}
	size_t s = pend_slot(ch, q->request_id);
	q->hnext = ch->pend[s];
	ch->pend[s] = q;
	ch->n_pend++;
	return true;
}

static sub_req *
pend_find(asynq_rpc_channel *ch, uint64_t id)
{
	if (ch->pend == NULL)
		return NULL;
	sub_req *e = ch->pend[pend_slot(ch, id)];
	while (e != NULL && e->request_id != id)
		e = e->hnext;
	return e;
}

static void
pend_remove(asynq_rpc_channel *ch, sub_req *q)
{
	sub_req **p = &ch->pend[pend_slot(ch, q->request_id)];
	while (*p != NULL && *p != q)
		p = &(*p)->hnext;
	if (*p == q) {
		*p = q->hnext;
		ch->n_pend--;
	}
	q->hnext = NULL;
}

/* ---- Sub-request lists (under mu) ---------------------------------------- */

static void
wait_push(asynq_rpc_channel *ch, sub_req *q)
{
	q->state = SUB_WAITING;
	q->qnext = NULL;
	if (ch->wait_tail != NULL)
		ch->wait_tail->qnext = q;
	else
		ch->wait_head = q;
	ch->wait_tail = q;
}

static void
wait_remove(asynq_rpc_channel *ch, sub_req *q)
{
	sub_req *prev = NULL;
	for (sub_req *e = ch->wait_head; e != NULL; prev = e, e = e->qnext) {
		if (e != q)
			continue;
		if (prev != NULL)
			prev->qnext = e->qnext;
		else
			ch->wait_head = e->qnext;
		if (ch->wait_tail == e)
			ch->wait_tail = prev;
		break;
	}
	q->qnext = NULL;
}

static void
conn_list_remove(sub_req *q)
{
	cli_conn *cc = q->cc;
	if (q->cprev != NULL)
		q->cprev->cnext = q->cnext;
	else if (cc != NULL && cc->head == q)
		cc->head = q->cnext;
	if (q->cnext != NULL)
		q->cnext->cprev = q->cprev;
	q->cprev = q->cnext = NULL;
}

/* Claims q for completion: moves it to DONE and out of every list. False if
 * it was DONE already. */
static bool
sub_claim(asynq_rpc_channel *ch, sub_req *q)
{
	switch (q->state) {
	case SUB_DONE:
		return false;
	case SUB_WAITING:
		wait_remove(ch, q);
		break;
	case SUB_SENT:
		pend_remove(ch, q);
		conn_list_remove(q);
		if (q->cc != NULL && q->cc->rep != NULL &&
		    q->cc->rep->outstanding > 0)
			q->cc->rep->outstanding--;
		break;
	default:
		break;
	}
	q->state = SUB_DONE;
	return true;
}

/* Under mu: takes SENT q off its connection (pending table, connection's
 * list, replica's outstanding count), back to NEW, to be sent again. */
static void
sub_unsend(asynq_rpc_channel *ch, sub_req *q)
{
	pend_remove(ch, q);
	conn_list_remove(q);
	if (q->cc != NULL && q->cc->rep != NULL && q->cc->rep->outstanding > 0)
		q->cc->rep->outstanding--;
	q->cc = NULL;
	q->state = SUB_NEW;
}

static void
cc_rele_locked(cli_conn *cc)
{
	if (--cc->refs != 0)
		return;
	cc->rep->n_conns--;
	asynqi_buf_fini(&cc->probe_buf);
	free(cc);
}

/* ---- Sending ------------------------------------------------------------- */

static int64_t
mono_ns(void)
{
	return (int64_t)asynq_now_ns();
}

/* A wbuf was written (err 0) or dropped by a closed connection. */
static void
sub_wdone(asynqi_wbuf *w, int err)
{
	sub_req *q = (sub_req *)((char *)w - offsetof(sub_req, w));
	rpc_batch *b = q->b;
	asynq_rpc_channel *ch = b->be->ch;
	pthread_mutex_lock(&ch->mu);
	q->w_busy = false;
	cli_conn *cc = q->w_cc;
	q->w_cc = NULL;
	/* on_close ran before this write failed: it left q to us. */
	bool requeue =
	    err != 0 && q->state == SUB_SENT && q->cc == cc && cc->dead;
	pthread_mutex_unlock(&ch->mu);
	if (requeue)
		client_requeue(ch, q, true);
	pthread_mutex_lock(&ch->mu);
	if (cc != NULL)
		cc_rele_locked(cc);
	pthread_mutex_unlock(&ch->mu);
	batch_rele(b);
}

#define put_varint asynqi_put_varint

/* Under mu: readies q's wbuf for connection cc (q SENT on it). */
static void
sub_prepare(asynq_rpc_channel *ch, sub_req *q, cli_conn *cc)
{
	rpc_batch *b = q->b;
	size_t t = 0;
	uint8_t *tr = q->trailer;
	/* request_id = 4, client_id = 5 (fixed64), timeout_us = 8,
	 * attempt = 6. */
	tr[t++] = 4 << 3;
	t += put_varint(tr + t, q->request_id);
	tr[t++] = (5 << 3) | 1;
	for (int i = 0; i < 8; i++)
		tr[t++] = (uint8_t)(ch->client_id >> (8 * i));
	int64_t left = q->deadline - mono_ns();
	uint64_t us = left > 0 ? (uint64_t)(left + 999) / 1000 : 1;
	tr[t++] = 8 << 3;
	t += put_varint(tr + t, us);
	if (q->attempt == 0) {
		q->first_instance = cc->instance;
		q->first_sent_ns = mono_ns();
	} else {
		tr[t++] = 6 << 3;
		t += put_varint(tr + t, q->attempt);
		if (q->first_instance != 0) {
			tr[t++] = (9 << 3) | 1;
			for (int i = 0; i < 8; i++)
				tr[t++] =
				    (uint8_t)(q->first_instance >> (8 * i));
			int64_t ago = mono_ns() - q->first_sent_ns;
			tr[t++] = 10 << 3;
			t += put_varint(tr + t,
			    ago > 1000 ? (uint64_t)ago / 1000 : 1);
		}
	}
	unsigned k = 0;
	q->w.iov[k++] = (nng_iov){ q->hdr, ASYNQI_FRAME_HDR };
	size_t body = 0;
	q->w.iov[k++] = (nng_iov){ b->buf.p + q->off, q->len };
	body += q->len;
	if (b->mdbuf.len > 0) {
		q->w.iov[k++] = (nng_iov){ b->mdbuf.p, b->mdbuf.len };
		body += b->mdbuf.len;
	}
	q->w.iov[k++] = (nng_iov){ q->trailer, t };
	body += t;
	q->w.niov = k;
	q->w.done = sub_wdone;
	asynqi_frame_hdr(q->hdr, ASYNQI_FRAME_REQUEST, (uint32_t)body);
	q->w_busy = true;
	q->w_cc = cc;
	q->cc = cc;
	cc->refs++;
	atomic_fetch_add(&b->refs, 1);
	q->state = SUB_SENT;
	q->cprev = NULL;
	q->cnext = cc->head;
	if (cc->head != NULL)
		cc->head->cprev = q;
	cc->head = q;
	cc->rep->outstanding++;
	cc->rep->requests++;
	cc->rep->calls += q->n;
	if (q->attempt > 0)
		atomic_fetch_add_explicit(&ch->resends, 1,
		    memory_order_relaxed);
	else
		atomic_fetch_add_explicit(&ch->requests, 1,
		    memory_order_relaxed);
}

static bool
rep_usable(const replica *r)
{
	return r->state == REP_READY && r->cc != NULL;
}

/* Under mu: where a request goes (asynq_rpc_channel_cfg.lb): the READY
 * replica with the fewest outstanding requests, or the next READY one in
 * turn, other than `avoid` unless it is the only one. Ejected replicas
 * only when no other is READY. The scan is over every replica: the
 * counts are exact and local, and max_replicas keeps it short. */
static replica *
pick_replica(asynq_rpc_channel *ch, const replica *avoid)
{
	replica *best = NULL;
	size_t n = ch->n_reps;
	if (n == 0)
		return NULL;
	size_t start = ch->rr++;
	for (int pass = 0; pass < 2 && best == NULL; pass++) {
		if (pass == 1 && ch->n_ejected == 0)
			break;
		for (size_t k = 0; k < n; k++) {
			replica *r = ch->reps[(start + k) % n];
			if (!rep_usable(r) || r->ejected != (pass == 1))
				continue;
			if (ch->lb == ASYNQ_RPC_LB_ROUND_ROBIN) {
				if (best == NULL)
					best = r;
				if (r == avoid)
					continue;
				best = r;
				ch->rr = start + k + 1;
				break;
			}
			if (best == NULL || (best == avoid && r != avoid) ||
			    ((r != avoid || best == avoid) &&
			        r->outstanding < best->outstanding))
				best = r;
		}
	}
	return best;
}

/* Under mu: in words, the error of the last failed connection attempt or
 * lost connection of any replica, else of the last failed resolution
 * (NULL if none). */
static const char *
last_reason(const asynq_rpc_channel *ch)
{
	for (size_t i = 0; i < ch->n_reps; i++)
		if (ch->reps[i]->last_err != 0)
			return asynqi_rpc_nng_why(ch->reps[i]->last_err);
	const char *w = ch->resolve_why[ch->why_slot % 4];
	return w[0] != '\0' ? w : NULL;
}

/* Under mu: whether a call that does not wait for ready may still wait
 * for a connection (some replica is connecting, or an attempt hurried by
 * calls is under way). */
static bool
may_wait(const asynq_rpc_channel *ch)
{
	if (ch->named && !ch->resolved)
		return true; /* the first resolution is under way */
	for (size_t i = 0; i < ch->n_reps; i++) {
		int s = ch->reps[i]->state;
		if (s == REP_CONNECTING || s == REP_HANDSHAKE ||
		    s == REP_READY || ch->reps[i]->probing)
			return true;
	}
	return false;
}

/* Under mu: every replica failed its last attempt. Calls start the next
 * attempt of each at once (instead of after its backoff) and wait for its
 * outcome, so the first call after a server comes back finds it; when the
 * attempts fail too, the waiting calls fail UNAVAILABLE. */
static bool
probe_replicas(asynq_rpc_channel *ch)
{
	bool any = false;
	for (size_t i = 0; i < ch->n_reps; i++) {
		replica *r = ch->reps[i];
		if (r->state != REP_FAILED)
			continue;
		r->probing = true;
		any = true;
		asynqi_dialer_hurry(r->d);
	}
	return any;
}

/* What a dispatch decided, acted on once mu is released. */
typedef struct outbox {
	cli_conn *touched[8]; /* connections to flush (held) */
	size_t n_touched;
	sub_req *sends;      /* prepared, to queue (via qnext) */
	sub_req *fails;      /* claimed, to fail with fail_st (via qnext) */
	cli_conn *probes[4]; /* health checks to send (held) */
	size_t n_probes;
	cli_conn *closes[4]; /* connections to close (held) */
	size_t n_closes;
} outbox;

static void
outbox_touch(outbox *o, cli_conn *cc)
{
	for (size_t i = 0; i < o->n_touched; i++)
		if (o->touched[i] == cc)
			return;
	if (o->n_touched < 8) {
		cc->refs++;
		asynqi_conn_hold(cc->c);
		o->touched[o->n_touched++] = cc;
	}
}

/* Under mu: cc into one of o's lists of held connections; false if it is
 * full (nothing is done, the next dispatch tries again). */
static bool
outbox_hold(cli_conn **list, size_t *n, cli_conn *cc)
{
	for (size_t i = 0; i < *n; i++)
		if (list[i] == cc)
			return true;
	if (*n == 4)
		return false;
	cc->refs++;
	asynqi_conn_hold(cc->c);
	list[(*n)++] = cc;
	return true;
}

static void replica_eject(asynq_rpc_channel *ch, replica *r);

/* Under mu: counts a success (ok) or a failure of r, and ejects r at
 * eject_after failures in a row unless no other READY replica would be
 * left. */
static void
replica_note(asynq_rpc_channel *ch, replica *r, bool ok)
{
	if (r == NULL)
		return;
	if (ok) {
		r->consec_fail = 0;
		return;
	}
	if (r->removed || r->ejected || ch->eject_after == UINT32_MAX ||
	    ++r->consec_fail < ch->eject_after)
		return;
	for (size_t i = 0; i < ch->n_reps; i++) {
		replica *e = ch->reps[i];
		if (e != r && rep_usable(e) && !e->ejected) {
			replica_eject(ch, r);
			return;
		}
	}
}

/* Under mu: ejects r (or, already ejected after a failed probe, keeps it
 * so) for eject_base_ms doubled per ejection in a row. */
static void
replica_eject(asynq_rpc_channel *ch, replica *r)
{
	if (!r->ejected) {
		r->ejected = true;
		ch->n_ejected++;
		r->ejections++;
	}
	unsigned shift = r->eject_streak < 12 ? r->eject_streak : 12;
	uint64_t ms = (uint64_t)ch->eject_base_ms << shift;
	if (ms > EJECT_MAX_MS)
		ms = EJECT_MAX_MS;
	r->eject_streak++;
	r->eject_until = mono_ns() + (int64_t)ms * 1000000;
	r->health_due = false;
	r->probe_cc = NULL;
	r->consec_fail = 0;
}

/* Under mu: r is back (its probe passed, or it is gone). */
static void
replica_restore(asynq_rpc_channel *ch, replica *r)
{
	if (r->ejected) {
		r->ejected = false;
		ch->n_ejected--;
	}
	r->eject_streak = 0;
	r->health_due = false;
	r->probe_cc = NULL;
	r->consec_fail = 0;
}

/* Under mu: starts the probe of each ejected replica whose time is up:
 * a health check on its connection, or a new connection when the last
 * check got no answer (or none is up: the check goes once it is). The
 * probe has eject_base_ms to pass. */
static void
probe_ejected(asynq_rpc_channel *ch, outbox *o)
{
	int64_t now = mono_ns();
	for (size_t i = 0; i < ch->n_reps; i++) {
		replica *r = ch->reps[i];
		if (!r->ejected || now < r->eject_until)
			continue;
		bool idle =
		    r->cc != NULL && !r->cc->probe_busy && r->cc->probe_id == 0;
		if ((r->probe_cc != NULL && r->probe_cc == r->cc) ||
		    (rep_usable(r) && !idle)) {
			/* The last check got no answer: a new connection. */
			if (!outbox_hold(o->closes, &o->n_closes, r->cc))
				continue;
			r->probe_cc = NULL;
		} else if (rep_usable(r)) {
			if (!outbox_hold(o->probes, &o->n_probes, r->cc))
				continue;
			r->cc->probe_id =
			    atomic_fetch_add(&ch->next_request_id, 1) + 1;
			r->cc->probe_busy = true;
			r->probe_cc = r->cc;
		} else if (r->state == REP_FAILED) {
			asynqi_dialer_hurry(r->d);
		}
		r->health_due = true;
		r->eject_until = now + (int64_t)ch->eject_base_ms * 1000000;
	}
}

/* Under mu: sends q on a ready replica, parks it, or fails it. */
static void
dispatch(asynq_rpc_channel *ch, sub_req *q, outbox *o)
{
	if (ch->closing) {
		if (sub_claim(ch, q)) {
			q->fail_st = ASYNQ_CANCELLED;
			q->fail_why = "channel closed";
			q->qnext = o->fails;
			o->fails = q;
		}
		return;
	}
	if (ch->n_ejected > 0)
		probe_ejected(ch, o);
	replica *r = pick_replica(ch, q->avoid);
	if (r != NULL) {
		if (!pend_insert(ch, q)) {
			if (sub_claim(ch, q)) {
				q->fail_st = ASYNQ_RESOURCE_EXHAUSTED;
				q->fail_why = "out of memory";
				q->qnext = o->fails;
				o->fails = q;
			}
			return;
		}
		sub_prepare(ch, q, r->cc);
		outbox_touch(o, r->cc);
		q->qnext = o->sends;
		o->sends = q;
		return;
	}
	if (q->b->be->wfr || may_wait(ch) || probe_replicas(ch)) {
		wait_push(ch, q);
		return;
	}
	if (sub_claim(ch, q)) {
		q->fail_st = ASYNQ_UNAVAILABLE;
		q->fail_why = "no server reachable: every replica failed its "
		              "last connection attempt";
		q->fail_detail = last_reason(ch);
		q->qnext = o->fails;
		o->fails = q;
	}
}

/* A health check's bytes were written or dropped: its hold on cc goes. */
static void
probe_wdone(asynqi_wbuf *w, int err)
{
	(void)err;
	cli_conn *cc = (cli_conn *)((char *)w - offsetof(cli_conn, probe_w));
	asynq_rpc_channel *ch = cc->rep->ch;
	pthread_mutex_lock(&ch->mu);
	cc->probe_busy = false;
	cc_rele_locked(cc);
	pthread_mutex_unlock(&ch->mu);
}

/* Without mu: sends the health check of the channel's service on cc
 * (held by the caller; the hold moves to the write), by method name, as
 * request probe_id with no client id (it takes no part in dedup). */
static void
probe_send(asynq_rpc_channel *ch, cli_conn *cc, uint64_t id)
{
	asynqi_buf arg = { 0 }, call = { 0 };
	asynqi_buf *b = &cc->probe_buf;
	b->len = 0; /* the last check's write is done (probe_busy) */
	asynqi_buf_bytes(&arg, 1, ch->svc->full_name,
	    strlen(ch->svc->full_name));
	asynqi_buf_bytes(&call, 1, HEALTH_CHECK, strlen(HEALTH_CHECK));
	asynqi_buf_bytes(&call, 3, arg.p, arg.len);
	if (asynqi_buf_reserve(b, ASYNQI_FRAME_HDR) != NULL)
		b->len = ASYNQI_FRAME_HDR;
	asynqi_buf_bytes(b, 1, call.p, call.len);
	asynqi_buf_tag(b, 4, 0);
	asynqi_buf_varint(b, id);
	asynqi_buf_tag(b, 8, 0);
	asynqi_buf_varint(b, (uint64_t)ch->eject_base_ms * 1000);
	bool failed = b->failed || arg.failed || call.failed;
	asynqi_buf_fini(&arg);
	asynqi_buf_fini(&call);
	if (failed) {
		/* No memory: the probe is not answered and the next one
		 * dials anew. */
		pthread_mutex_lock(&ch->mu);
		cc->probe_busy = false;
		cc_rele_locked(cc);
		pthread_mutex_unlock(&ch->mu);
		return;
	}
	asynqi_frame_hdr(b->p, ASYNQI_FRAME_REQUEST,
	    (uint32_t)(b->len - ASYNQI_FRAME_HDR));
	cc->probe_w.iov[0] = (nng_iov){ b->p, b->len };
	cc->probe_w.niov = 1;
	cc->probe_w.done = probe_wdone;
	asynqi_conn_queue(cc->c, &cc->probe_w);
	asynqi_conn_flush(cc->c);
}

/* Without mu: queues the prepared sends, flushes, fails the failures. */
static void
outbox_run(asynq_rpc_channel *ch, outbox *o)
{
	for (size_t i = 0; i < o->n_probes; i++) {
		cli_conn *cc = o->probes[i];
		asynqi_conn *c = cc->c;
		pthread_mutex_lock(&ch->mu);
		uint64_t id = cc->probe_id;
		pthread_mutex_unlock(&ch->mu);
		probe_send(ch, cc, id);
		asynqi_conn_rele(c);
	}
	for (size_t i = 0; i < o->n_closes; i++) {
		cli_conn *cc = o->closes[i];
		asynqi_conn *c = cc->c;
		asynqi_conn_close(c);
		pthread_mutex_lock(&ch->mu);
		cc_rele_locked(cc);
		pthread_mutex_unlock(&ch->mu);
		asynqi_conn_rele(c);
	}
	/* Sends were pushed in reverse; queue them in order. */
	sub_req *rev = NULL;
	while (o->sends != NULL) {
		sub_req *q = o->sends;
		o->sends = q->qnext;
		q->qnext = rev;
		rev = q;
	}
	while (rev != NULL) {
		sub_req *q = rev;
		rev = q->qnext;
		q->qnext = NULL;
		/* w_cc is held by q's wbuf until its done runs. */
		asynqi_conn_queue(q->w_cc->c, &q->w);
	}
	for (size_t i = 0; i < o->n_touched; i++) {
		cli_conn *cc = o->touched[i];
		asynqi_conn_flush(cc->c);
		asynqi_conn *c = cc->c;
		pthread_mutex_lock(&ch->mu);
		cc_rele_locked(cc);
		pthread_mutex_unlock(&ch->mu);
		asynqi_conn_rele(c);
	}
	while (o->fails != NULL) {
		sub_req *q = o->fails;
		o->fails = q->qnext;
		q->qnext = NULL;
		char why[200];
		if (q->fail_detail != NULL)
			snprintf(why, sizeof(why), "%s (%s)", q->fail_why,
			    q->fail_detail);
		sub_fail(ch, q, q->fail_st,
		    q->fail_detail != NULL ? why : q->fail_why);
	}
}

/* A sub-request lost its connection (it may have reached the server when
 * `maybe_sent`): send it again, or fail it. Takes mu. */
static void
client_requeue(asynq_rpc_channel *ch, sub_req *q, bool maybe_sent)
{
	outbox o = { 0 };
	pthread_mutex_lock(&ch->mu);
	if (q->state == SUB_SENT)
		sub_unsend(ch, q);
	if (q->state != SUB_DONE) {
		/* A resend of a request that may have run is a retry: it takes
		 * a token as a refusal does (gRFC A6). One that never left
		 * (GOAWAY said so) goes again freely. */
		bool budget = true;
		if (maybe_sent) {
			q->attempt++;
			budget = ch->tokens * 2 > ch->tokens_max;
			ch->tokens = ch->tokens > 1000 ? ch->tokens - 1000 : 0;
		}
		if (q->attempt > MAX_RESENDS || mono_ns() >= q->deadline ||
		    !budget) {
			q->state = SUB_DONE;
			q->fail_st = ASYNQ_UNAVAILABLE;
			q->fail_why = budget
			    ? "connection lost; the call may have run"
			    : "connection lost; the call may have run and "
			      "was not sent again: the retry budget is spent";
			q->qnext = o.fails;
			o.fails = q;
		} else {
			dispatch(ch, q, &o);
		}
	}
	pthread_mutex_unlock(&ch->mu);
	outbox_run(ch, &o);
}

/* ---- Connections --------------------------------------------------------- */

static size_t cli_on_read(asynqi_conn *c, uint8_t *buf, size_t len,
    size_t *need);
static void cli_on_close(asynqi_conn *c, int err);

static const asynqi_conn_ops cli_ops = {
	.on_read = cli_on_read,
	.on_close = cli_on_close,
};

static void
preface_done(asynqi_wbuf *w, int err)
{
	(void)err;
	cli_conn *cc = (cli_conn *)((char *)w - offsetof(cli_conn, pw));
	asynq_rpc_channel *ch = cc->rep->ch;
	pthread_mutex_lock(&ch->mu);
	cc_rele_locked(cc);
	pthread_mutex_unlock(&ch->mu);
}

/* gRPC's connection backoff: the next delay after `cur` (0: first). */
static uint32_t
backoff_next(uint32_t cur)
{
	uint64_t next = cur == 0 ? BACKOFF_INITIAL_MS : (uint64_t)cur * 8 / 5;
	if (next > BACKOFF_MAX_MS)
		next = BACKOFF_MAX_MS;
	return (uint32_t)next;
}

static uint32_t
jitter(asynq_rpc_channel *ch, uint32_t ms)
{
	/* xorshift64*; under mu. */
	ch->rng ^= ch->rng >> 12;
	ch->rng ^= ch->rng << 25;
	ch->rng ^= ch->rng >> 27;
	uint64_t r = ch->rng * 2685821657736338717u;
	double f = 0.8 + 0.4 * (double)(r >> 11) / (double)(1ull << 53);
	return (uint32_t)((double)ms * f);
}

/* Under mu: starts a connection attempt after delay_ms (the dialer runs
 * one at a time; every caller has just seen the last one end). */
static void
replica_dial(replica *r, uint32_t delay_ms)
{
	if (r->ch->closing || r->removed) {
		r->state = REP_IDLE;
		pthread_cond_broadcast(&r->ch->cv);
		return;
	}
	asynqi_dialer_dial(r->d, delay_ms);
}

/* Under mu: the last attempt of r failed: fail fast until one succeeds,
 * and try again after the backoff. */
static void
replica_failed(replica *r)
{
	asynq_rpc_channel *ch = r->ch;
	r->state = REP_FAILED;
	r->backoff_ms = backoff_next(r->backoff_ms);
	replica_dial(r, jitter(ch, r->backoff_ms));
}

/* Under mu: when no replica can take calls any more, fails the waiting
 * ones (fail fast) into o, with the last transport error as the reason. */
static void
fail_waiting_if_hopeless(asynq_rpc_channel *ch, outbox *o, const char *why)
{
	if (may_wait(ch))
		return;
	for (sub_req *q = ch->wait_head, *next; q != NULL; q = next) {
		next = q->qnext;
		if (q->b->be->wfr)
			continue; /* waits until its deadline */
		sub_claim(ch, q);
		q->fail_st = ASYNQ_UNAVAILABLE;
		q->fail_why = why;
		q->fail_detail = last_reason(ch);
		q->qnext = o->fails;
		o->fails = q;
	}
}

static void
on_connect(void *arg, asynqi_conn *c, int err)
{
	replica *r = arg;
	asynq_rpc_channel *ch = r->ch;
	outbox o = { 0 };
	pthread_mutex_lock(&ch->mu);
	if (c == NULL) {
		r->last_err = err;
		if (ch->closing || r->removed) {
			r->state = REP_IDLE;
			pthread_cond_broadcast(&ch->cv);
			pthread_mutex_unlock(&ch->mu);
			return;
		}
		r->probing = false;
		replica_failed(r);
		replica_note(ch, r, false);
		asynqi_resolver_kick(ch->resolver, false);
		fail_waiting_if_hopeless(ch, &o,
		    "no server reachable: connection attempt failed");
		pthread_mutex_unlock(&ch->mu);
		outbox_run(ch, &o);
		return;
	}
	cli_conn *cc = calloc(1, sizeof(*cc));
	if (cc == NULL || ch->closing || r->removed) {
		free(cc);
		r->state = REP_IDLE;
		pthread_cond_broadcast(&ch->cv);
		pthread_mutex_unlock(&ch->mu);
		asynqi_conn_close(c);
		asynqi_conn_rele(c);
		return;
	}
	cc->rep = r;
	cc->c = c;
	r->n_conns++;
	r->probing = false;
	cc->refs = 2; /* the connection's, the preface wbuf's */
	r->cc = cc;
	r->state = REP_HANDSHAKE;
	ch->live_conns++;
	cc->all_next = ch->conns;
	if (ch->conns != NULL)
		ch->conns->all_prev = cc;
	ch->conns = cc;
	pthread_mutex_unlock(&ch->mu);
	asynqi_conn_set_ops(c, &cli_ops, cc,
	    ch->max_msg_bytes + ASYNQI_FRAME_HDR + (64u << 10));
	/* The preface, then the service's method table. */
	cc->pw.iov[0] = (nng_iov){ (void *)ASYNQI_PREFACE, ASYNQI_PREFACE_LEN };
	cc->pw.iov[1] = (nng_iov){ ch->table.p, ch->table.len };
	cc->pw.niov = 2;
	cc->pw.done = preface_done;
	/* Once reading starts the connection may close and its last
	 * reference go (cli_on_close) before this returns: hold one. */
	asynqi_conn_hold(c);
	asynqi_conn_start(c);
	asynqi_conn_queue(c, &cc->pw);
	asynqi_conn_flush(c);
	asynqi_conn_rele(c);
}

static void
cli_on_close(asynqi_conn *c, int err)
{
	cli_conn *cc = asynqi_conn_arg(c);
	replica *r = cc->rep;
	asynq_rpc_channel *ch = r->ch;
	sub_req *lost = NULL;
	outbox o = { 0 };
	/* A server this channel cannot trust (or that refused it) is worth
	 * a line that says why. */
	char why[512];
	pthread_mutex_lock(&ch->mu);
	bool was_ready = cc->ready;
	pthread_mutex_unlock(&ch->mu);
	if (!was_ready && asynqi_conn_tls_failure(c, why, sizeof(why)))
		asynq_log(ASYNQ_LOG_WARN, "tls_handshake_failed", "channel",
		    ch->svc->full_name, "url", r->url, "reason", why, NULL);
	pthread_mutex_lock(&ch->mu);
	cc->dead = true;
	if (!ch->closing && !cc->goaway && err != NNG_ECLOSED) {
		replica_note(ch, r, false);
		asynqi_resolver_kick(ch->resolver, false);
	}
	if (r->probe_cc == cc)
		r->probe_cc = NULL;
	if (r->cc == cc) {
		r->cc = NULL;
		r->last_err = err;
		if (ch->closing || r->removed) {
			r->state = REP_IDLE;
		} else if (cc->ready || cc->goaway) {
			r->state = REP_CONNECTING; /* redial at once */
			r->backoff_ms = 0;
			replica_dial(r, 0);
		} else {
			replica_failed(r); /* lost during the handshake */
		}
	}
	/* Requests on it go again. Those whose write is still busy are left
	 * SENT on cc: their wbuf's done sees `dead` and requeues them. */
	sub_req *q = cc->head;
	cc->head = NULL;
	while (q != NULL) {
		sub_req *next = q->cnext;
		q->cprev = q->cnext = NULL;
		if (!q->w_busy) {
			pend_remove(ch, q);
			if (r->outstanding > 0)
				r->outstanding--;
			q->cc = NULL;
			q->state = SUB_NEW;
			q->qnext = lost;
			lost = q;
		}
		q = next;
	}
	ch->live_conns--;
	if (cc->all_prev != NULL)
		cc->all_prev->all_next = cc->all_next;
	else
		ch->conns = cc->all_next;
	if (cc->all_next != NULL)
		cc->all_next->all_prev = cc->all_prev;
	cc->all_prev = cc->all_next = NULL;
	pthread_cond_broadcast(&ch->cv);
	if (!ch->closing)
		fail_waiting_if_hopeless(ch, &o,
		    "no server reachable: connection lost");
	cc_rele_locked(cc);
	pthread_mutex_unlock(&ch->mu);
	outbox_run(ch, &o);
	while (lost != NULL) {
		sub_req *e = lost;
		lost = e->qnext;
		e->qnext = NULL;
		client_requeue(ch, e, true);
	}
	asynqi_conn_rele(c);
}

/* Sends every waiting sub-request that a ready replica can take. Under
 * mu. */
static void
drain_waiting(asynq_rpc_channel *ch, outbox *o)
{
	while (ch->wait_head != NULL && pick_replica(ch, NULL) != NULL) {
		sub_req *q = ch->wait_head;
		ch->wait_head = q->qnext;
		if (ch->wait_head == NULL)
			ch->wait_tail = NULL;
		q->qnext = NULL;
		q->state = SUB_NEW;
		dispatch(ch, q, o);
	}
}

/* The reply to q (claimed) arrived from replica `from` (NULL: a refusal,
 * which says nothing of its health): sets its items from one pass over the
 * reply's fields and, before they complete, counts a success of `from`, or
 * a failure if a call failed UNAVAILABLE. Reader thread. */
/* The Result the server writes: [call_id] [payload of < 128 bytes], in
 * that order, one-byte keys, nothing else. True when p is exactly that
 * (then valid, and read into *id, *payload and *len as the field loop
 * would); false leaves them as they were, for the loop. */
static inline bool
result_parse_usual(const uint8_t *p, size_t len, uint64_t *id,
    const uint8_t **payload, size_t *plen)
{
	const uint8_t *end = p + len;
	uint64_t v = 0;
	if (p < end && p[0] == 1 << 3) {
		p++;
		if (!asynqi_short_varint(&p, end, &v))
			return false;
	}
	const uint8_t *pl = NULL;
	size_t pn = 0;
	if (end - p >= 2 && p[0] == ((4 << 3) | 2) && p[1] < 0x80 &&
	    (size_t)(end - p - 2) == p[1]) {
		pl = p + 2;
		pn = p[1];
		p = end;
	}
	if (p != end)
		return false;
	*id = v;
	*payload = pl;
	*plen = pn;
	return true;
}

static void
handle_results(asynq_rpc_channel *ch, sub_req *q, replica *from,
    const uint8_t *body, size_t len)
{
	size_t unavail = 0;
	rpc_batch *b = q->b;
	int64_t now = mono_ns();
	asynqi_sarena *arena = NULL;
	ok_run run = { NULL, 0 };
	asynqi_reader rd = { body, body + len };
	asynqi_field f;
	int32_t rstatus = 0;
	const uint8_t *rmsg = NULL;
	size_t rmsg_len = 0;
	int rv;
	while ((rv = asynqi_reader_next(&rd, &f)) > 0) {
		if (f.num == 2 && f.wt == 0) {
			rstatus = (int32_t)f.v;
			continue;
		}
		if (f.num == 3 && f.wt == 2) {
			rmsg = f.p;
			rmsg_len = f.len;
			continue;
		}
		if (f.num != 1 || f.wt != 2)
			continue;
		asynqi_reader rr = { f.p, f.p + f.len };
		asynqi_field g;
		uint64_t call_id = 0;
		int32_t status = 0;
		const uint8_t *msg = NULL, *payload = NULL;
		size_t msg_len = 0, payload_len = 0;
		int rv2 = 0;
		bool usual = result_parse_usual(f.p, f.len, &call_id, &payload,
		    &payload_len);
		while (!usual && (rv2 = asynqi_reader_next(&rr, &g)) > 0) {
			if (g.num == 1 && g.wt == 0)
				call_id = g.v;
			else if (g.num == 2 && g.wt == 0)
				status = (int32_t)g.v;
			else if (g.num == 3 && g.wt == 2) {
				msg = g.p;
				msg_len = g.len;
			} else if (g.num == 4 && g.wt == 2) {
				payload = g.p;
				payload_len = g.len;
			}
		}
		if (rv2 < 0 || call_id < q->start ||
		    call_id >= q->start + q->n || b->recs[call_id].answered)
			continue;
		size_t i = (size_t)call_id;
		b->recs[i].answered = true;
		asynq_future *item = asynq_batch_item(&b->base, i);
		if (status != 0) {
			asynq_status cst = asynqi_rpc_status_from_wire(status);
			if (cst == ASYNQ_UNAVAILABLE)
				unavail++;
			if (asynq_item_set_error(item,
			        asynq_error_alloc(cst, "%.*s",
			            msg_len != 0
			                ? (int)msg_len
			                : (int)strlen(asynq_strerror(cst)),
			            msg_len != 0 ? (const char *)msg
			                         : asynq_strerror(cst))) ==
			    ASYNQ_OK) {
				atomic_fetch_add_explicit(&ch->failures, 1,
				    memory_order_relaxed);
				count_call(ch, b, i, cst, now);
			}
			continue;
		}
		if (arena == NULL &&
		    (arena = asynqi_sarena_alloc(8 * ch->max_msg_bytes)) !=
		        NULL)
			arena->a.first = atomic_load_explicit(
			    &ch->reply_arena_hint, memory_order_relaxed);
		ProtobufCMessage *out = NULL;
		const asynq_rpc_method_desc *md = b->recs[i].m;
		size_t mi = (size_t)(md - ch->svc->methods);
		const asynq_rpc_codec *codec =
		    md >= ch->svc->methods && mi < ch->svc->n_methods
		    ? ch->codecs[2 * mi + 1]
		    : NULL;
		asynq_status dst = arena != NULL
		    ? asynqi_sarena_decode_with(arena, md->output, codec,
		          payload, payload_len, &out)
		    : ASYNQ_RESOURCE_EXHAUSTED;
		if (dst != ASYNQ_OK && dst != ASYNQ_STATUS_COUNT) {
			fail_item(b, i, ASYNQ_INTERNAL,
			    dst == ASYNQ_RESOURCE_EXHAUSTED
			        ? "response message over the decode limits"
			        : "malformed response message");
			continue;
		}
		void (*free_fn)(void *) = dst == ASYNQ_OK
		    ? asynqi_sarena_msg_free
		    : asynqi_rpc_free_msg;
		if (asynq_item_set_ptr(item, out, free_fn) != ASYNQ_OK)
			free_fn(out);
		else
			ok_run_add(ch, b, &run, md, now);
	}
	count_calls(ch, b, run.m, ASYNQ_OK, now, run.n);
	if (arena != NULL)
		atomic_store_explicit(&ch->reply_arena_hint,
		    asynqi_arena_hint(arena->a.used), memory_order_relaxed);
	asynqi_sarena_rele(arena);
	/* Calls the reply left out: a request-level failure (over a limit,
	 * malformed, refused) fails them with its status; else it is the
	 * server's fault. */
	asynq_status rst = asynqi_rpc_status_from_wire(rstatus);
	if (rst == ASYNQ_UNAVAILABLE)
		unavail++;
	char why[256];
	if (rst != ASYNQ_OK)
		snprintf(why, sizeof(why), "%.*s", (int)rmsg_len,
		    rmsg != NULL ? (const char *)rmsg : "");
	for (size_t i = q->start; i < q->start + q->n; i++) {
		if (b->recs[i].answered)
			continue;
		if (rst != ASYNQ_OK)
			fail_item(b, i, rst,
			    rmsg_len != 0 ? why : asynq_strerror(rst));
		else
			fail_item(b, i, ASYNQ_INTERNAL,
			    rv < 0 ? "malformed reply"
			           : "the reply has no result");
	}
	if (from != NULL) {
		pthread_mutex_lock(&ch->mu);
		replica_note(ch, from, unavail == 0);
		pthread_mutex_unlock(&ch->mu);
	}
	sub_finished(ch, q);
}

/* Whether the reply to a health check says the service serves: SERVING,
 * or a server without the health service (UNIMPLEMENTED). */
static bool
probe_passed(const uint8_t *body, size_t len)
{
	asynqi_reader rd = { body, body + len };
	asynqi_field f;
	while (asynqi_reader_next(&rd, &f) > 0) {
		if (f.num == 2 && f.wt == 0 && f.v != 0)
			return false; /* refused as a request */
		if (f.num != 1 || f.wt != 2)
			continue;
		asynqi_reader rr = { f.p, f.p + f.len };
		asynqi_field g;
		int32_t status = 0;
		uint64_t serving = 0;
		while (asynqi_reader_next(&rr, &g) > 0) {
			if (g.num == 2 && g.wt == 0)
				status = (int32_t)g.v;
			else if (g.num == 4 && g.wt == 2) {
				asynqi_reader pr = { g.p, g.p + g.len };
				asynqi_field h;
				while (asynqi_reader_next(&pr, &h) > 0)
					if (h.num == 1 && h.wt == 0)
						serving = h.v;
			}
		}
		if (status != 0)
			return asynqi_rpc_status_from_wire(status) ==
			    ASYNQ_UNIMPLEMENTED;
		return serving == 1;
	}
	return false;
}

/* Under mu: q (SENT on a connection of `from`) was refused before any of
 * its calls ran. It takes a retry token, and goes to another READY replica
 * if the throttle, its deadline and its hops allow (true: dispatched into
 * o). */
static bool
retry_elsewhere(asynq_rpc_channel *ch, sub_req *q, replica *from, outbox *o)
{
	bool allowed = ch->tokens * 2 > ch->tokens_max;
	ch->tokens = ch->tokens > 1000 ? ch->tokens - 1000 : 0;
	if (!allowed || q->hops >= MAX_RETRY_HOPS || q->w_busy ||
	    mono_ns() >= q->deadline)
		return false;
	replica *other = pick_replica(ch, from);
	if (other == NULL || other == from)
		return false;
	sub_unsend(ch, q);
	q->hops++;
	q->avoid = from;
	atomic_fetch_add_explicit(&ch->retries, 1, memory_order_relaxed);
	dispatch(ch, q, o);
	return true;
}

static void
on_reply(cli_conn *cc, const uint8_t *body, size_t len)
{
	asynq_rpc_channel *ch = cc->rep->ch;
	asynqi_reader rd = { body, body + len };
	asynqi_field f;
	uint64_t id = 0;
	/* The server writes request_id first; any order is read. */
	int rv = asynqi_reader_next(&rd, &f);
	if (rv > 0 && f.num == 4 && f.wt == 0) {
		id = f.v;
	} else {
		rd.p = body;
		while ((rv = asynqi_reader_next(&rd, &f)) > 0)
			if (f.num == 4 && f.wt == 0)
				id = f.v;
		if (rv < 0)
			return; /* unmatchable; its calls time out */
	}
	/* A request-level status comes next (its reply has no results): was
	 * the request refused before anything ran? */
	bool failed = false, not_run = false, overloaded = false;
	asynqi_reader peek = rd;
	if (asynqi_reader_next(&peek, &f) > 0 && f.num == 2 && f.wt == 0) {
		failed = f.v != 0;
		overloaded = f.v == ASYNQ_RESOURCE_EXHAUSTED;
		while (asynqi_reader_next(&peek, &f) > 0)
			if (f.num == 5 && f.wt == 0)
				not_run = f.v != 0;
	}
	outbox o = { 0 };
	pthread_mutex_lock(&ch->mu);
	if (cc->probe_id != 0 && id == cc->probe_id) {
		replica *r = cc->rep;
		cc->probe_id = 0;
		if (r->ejected && r->probe_cc == cc) {
			if (probe_passed(body, len)) {
				replica_restore(ch, r);
				drain_waiting(ch, &o);
			} else {
				replica_eject(ch, r);
			}
		}
		pthread_mutex_unlock(&ch->mu);
		outbox_run(ch, &o);
		return;
	}
	sub_req *q = pend_find(ch, id);
	bool mine = q != NULL && q->state == SUB_SENT && q->cc == cc;
	if (mine && (!failed || (not_run && overloaded)))
		asynqi_throttle_note(&ch->thr, mono_ns(), q->n, !failed);
	if (mine && failed && not_run) {
		atomic_fetch_add_explicit(&ch->refused, 1,
		    memory_order_relaxed);
		if (retry_elsewhere(ch, q, cc->rep, &o)) {
			pthread_mutex_unlock(&ch->mu);
			outbox_run(ch, &o);
			return;
		}
	} else if (mine && !failed && ch->tokens < ch->tokens_max) {
		ch->tokens += ch->token_milli;
		if (ch->tokens > ch->tokens_max)
			ch->tokens = ch->tokens_max;
	}
	if (mine)
		sub_claim(ch, q);
	pthread_mutex_unlock(&ch->mu);
	if (!mine)
		return; /* late (its deadline passed) or not ours */
	/* cc (so its replica) lives while its reader runs. */
	handle_results(ch, q, failed && not_run ? NULL : cc->rep, body, len);
}

static void
on_hello(cli_conn *cc, const uint8_t *body, size_t len)
{
	/* The server's limits in it are for tools; a channel keeps to its
	 * own max_msg_bytes and max_calls, and the server refuses what is
	 * over its own. */
	asynq_rpc_channel *ch = cc->rep->ch;
	uint64_t instance = 0;
	asynqi_reader rd = { body, body + len };
	asynqi_field f;
	while (asynqi_reader_next(&rd, &f) > 0)
		if (f.num == 3 && f.wt == 1)
			instance = f.v;
	outbox o = { 0 };
	pthread_mutex_lock(&ch->mu);
	cc->instance = instance;
	cc->ready = true;
	if (cc->rep->cc == cc && !cc->dead && !cc->goaway) {
		replica *r = cc->rep;
		r->state = REP_READY;
		r->backoff_ms = 0;
		r->last_err = 0;
		if (r->ejected && r->health_due && !cc->probe_busy &&
		    outbox_hold(o.probes, &o.n_probes, cc)) {
			cc->probe_id =
			    atomic_fetch_add(&ch->next_request_id, 1) + 1;
			cc->probe_busy = true;
			r->probe_cc = cc;
		}
		drain_waiting(ch, &o);
	}
	pthread_mutex_unlock(&ch->mu);
	outbox_run(ch, &o);
}

static void
on_goaway(cli_conn *cc, const uint8_t *body, size_t len)
{
	asynq_rpc_channel *ch = cc->rep->ch;
	asynqi_reader rd = { body, body + len };
	asynqi_field f;
	uint64_t last = 0;
	while (asynqi_reader_next(&rd, &f) > 0)
		if (f.num == 1 && f.wt == 0)
			last = f.v;
	sub_req *fresh = NULL;
	pthread_mutex_lock(&ch->mu);
	cc->goaway = true;
	replica *r = cc->rep;
	if (r->cc == cc) {
		/* It takes no new requests; the next go to a new connection
		 * while this one drains. */
		r->cc = NULL;
		r->state = REP_CONNECTING;
		r->backoff_ms = 0;
		replica_dial(r, 0);
	}
	for (sub_req *q = cc->head; q != NULL;) {
		sub_req *next = q->cnext;
		if (q->request_id > last && !q->w_busy) {
			sub_unsend(ch, q);
			q->qnext = fresh;
			fresh = q;
		}
		q = next;
	}
	pthread_mutex_unlock(&ch->mu);
	while (fresh != NULL) {
		sub_req *q = fresh;
		fresh = q->qnext;
		q->qnext = NULL;
		client_requeue(ch, q, false);
	}
}

static size_t
cli_on_read(asynqi_conn *c, uint8_t *buf, size_t len, size_t *need)
{
	cli_conn *cc = asynqi_conn_arg(c);
	size_t used = 0;
	if (!cc->got_preface) {
		if (len < ASYNQI_PREFACE_LEN) {
			*need = ASYNQI_PREFACE_LEN;
			return 0;
		}
		if (memcmp(buf, ASYNQI_PREFACE, ASYNQI_PREFACE_LEN) != 0)
			return SIZE_MAX; /* not an asynq server */
		cc->got_preface = true;
		used = ASYNQI_PREFACE_LEN;
	}
	for (;;) {
		if (len - used < ASYNQI_FRAME_HDR) {
			*need = ASYNQI_FRAME_HDR;
			return used;
		}
		const uint8_t *h = buf + used;
		size_t blen = ((size_t)h[1] << 24) | ((size_t)h[2] << 16) |
		    ((size_t)h[3] << 8) | h[4];
		size_t max = cc->rep->ch->max_msg_bytes + (64u << 10);
		if (blen > max)
			return SIZE_MAX;
		if (len - used - ASYNQI_FRAME_HDR < blen) {
			*need = ASYNQI_FRAME_HDR + blen;
			return used;
		}
		const uint8_t *body = h + ASYNQI_FRAME_HDR;
		switch (h[0]) {
		case ASYNQI_FRAME_REPLY:
			if (!cc->ready)
				return SIZE_MAX;
			on_reply(cc, body, blen);
			break;
		case ASYNQI_FRAME_HELLO:
			if (cc->ready)
				return SIZE_MAX;
			on_hello(cc, body, blen);
			break;
		case ASYNQI_FRAME_GOAWAY:
			on_goaway(cc, body, blen);
			break;
		default:
			break; /* PING, PONG and unknown types: skipped */
		}
		used += ASYNQI_FRAME_HDR + blen;
	}
}

/* ---- Thread-local backend table ------------------------------------------ */

typedef struct tls_entry {
	uint64_t id;
	chan_backend *be;
} tls_entry;

typedef struct tls_table {
	tls_entry *e;
	size_t n, cap;
} tls_table;

static void *
tls_table_make(void)
{
	return calloc(1, sizeof(tls_table));
}

/* The backends stay the channels' (channel_free releases them); a
 * scheduler made later on this thread gets backends of its own. */
static void
tls_table_free(void *p)
{
	tls_table *t = p;
	free(t->e);
	free(t);
}

/* The thread's backend per channel, a sub-context of its scheduler. */
static asynq_thread_local tls_key = ASYNQ_THREAD_LOCAL_INIT(
    "asynq.rpc.backends", tls_table_make, NULL, tls_table_free);

/* ---- Backend ------------------------------------------------------------- */

static asynq_batch *
rpc_batch_alloc(asynq_backend *base)
{
	chan_backend *be = (chan_backend *)base;
	rpc_batch *b = calloc(1, sizeof(*b));
	if (b == NULL)
		return NULL;
	b->be = be;
	atomic_init(&b->refs, 1);
	atomic_fetch_add(&be->refs, 1);
	return &b->base;
}

static void dl_remove(chan_backend *be, sub_req *q);

static void
rpc_batch_free(asynq_batch *base)
{
	rpc_batch *b = (rpc_batch *)base;
	for (size_t i = 0; i < b->n_subs; i++)
		if (b->subs[i].in_dl)
			dl_remove(b->be, &b->subs[i]);
	batch_rele(b);
}

static void
rpc_batch_cancel(asynq_batch *base)
{
	rpc_batch *b = (rpc_batch *)base;
	asynq_rpc_channel *ch = b->be->ch;
	for (size_t i = 0; i < b->n_subs; i++) {
		sub_req *q = &b->subs[i];
		pthread_mutex_lock(&ch->mu);
		bool mine = sub_claim(ch, q);
		pthread_mutex_unlock(&ch->mu);
		if (mine)
			sub_fail(ch, q, ASYNQ_CANCELLED, "cancelled");
	}
}

/* A collapsed call's own copy of the reply its item got. */
static void *
rpc_copy(asynq_batch *base, const void *p, void (**free_fn)(void *))
{
	(void)base;
	const ProtobufCMessage *m = p;
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t small[512];
	uint8_t *tmp = n <= sizeof(small) ? small : malloc(n);
	if (tmp == NULL)
		return NULL;
	protobuf_c_message_pack(m, tmp);
	ProtobufCMessage *out =
	    protobuf_c_message_unpack(m->descriptor, NULL, n, tmp);
	if (tmp != small)
		free(tmp);
	*free_fn = asynqi_rpc_free_msg;
	return out;
}

static asynq_status rpc_batch_flush(asynq_batch *base);

static const asynq_backend_ops rpc_backend_ops = {
	.batch_alloc = rpc_batch_alloc,
	.flush = rpc_batch_flush,
	.cancel = rpc_batch_cancel,
	.batch_free = rpc_batch_free,
	.copy = rpc_copy,
};

/* The calling thread's backend for ch's calls that wait for ready (wfr)
 * or not: two batches, since a request either waits or fails fast. */
static chan_backend *
thread_backend(asynq_rpc_channel *ch, bool wfr)
{
	tls_table *t = asynq_thread_local_get(&tls_key);
	if (t == NULL)
		return NULL;
	for (size_t i = 0; i < t->n; i++)
		if (t->e[i].id == ch->id && t->e[i].be->wfr == wfr)
			return t->e[i].be;
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
	be->wfr = wfr;
	atomic_init(&be->refs, 1);
	atomic_init(&be->dead, false);
	pthread_mutex_lock(&ch->mu);
	be->next = ch->backends;
	ch->backends = be;
	pthread_mutex_unlock(&ch->mu);
	t->e[t->n].id = ch->id;
	t->e[t->n].be = be;
	t->n++;
	return be;
}

/* ---- Deadlines (scheduler thread) ---------------------------------------- */

static void
dl_remove(chan_backend *be, sub_req *q)
{
	if (q->dprev != NULL)
		q->dprev->dnext = q->dnext;
	else
		be->dl_head = q->dnext;
	if (q->dnext != NULL)
		q->dnext->dprev = q->dprev;
	else
		be->dl_tail = q->dprev;
	q->dprev = q->dnext = NULL;
	q->in_dl = false;
}

static void dl_arm(chan_backend *be);

static asynq_status
dl_fire(asynq_future *f, void *arg)
{
	(void)f;
	chan_backend *be = arg;
	be->armed = 0;
	if (!atomic_load(&be->dead)) {
		asynq_rpc_channel *ch = be->ch;
		int64_t now = mono_ns();
		while (be->dl_head != NULL && be->dl_head->deadline <= now) {
			sub_req *q = be->dl_head;
			dl_remove(be, q);
			pthread_mutex_lock(&ch->mu);
			int was = q->state;
			/* A request that timed out on a replica counts against
			 * it (q's connection lives while q is SENT on it). */
			if (was == SUB_SENT && q->cc != NULL)
				replica_note(ch, q->cc->rep, false);
			bool mine = sub_claim(ch, q);
			pthread_mutex_unlock(&ch->mu);
			if (!mine)
				continue;
			if (was == SUB_WAITING)
				sub_fail(ch, q, ASYNQ_UNAVAILABLE,
				    "no server reachable before the deadline");
			else
				sub_fail(ch, q, ASYNQ_DEADLINE_EXCEEDED,
				    "deadline exceeded");
		}
		dl_arm(be);
	}
	backend_rele(be);
	return ASYNQ_OK;
}

/* Arms the timer for the earliest deadline unless one as early is armed. */
static void
dl_arm(chan_backend *be)
{
	if (be->dl_head == NULL)
		return;
	uint64_t due = (uint64_t)be->dl_head->deadline;
	if (be->armed != 0 && be->armed <= due)
		return;
	uint64_t now = asynq_now_ns();
	asynq_future *t = asynq_sleep(due > now ? due - now : 0);
	if (t == NULL)
		return;
	atomic_fetch_add(&be->refs, 1);
	if (asynq_future_on_done(t, dl_fire, be) != ASYNQ_OK) {
		backend_rele(be);
		asynq_future_rele(t);
		return;
	}
	be->armed = due;
	asynq_future_rele(t);
}

static void
dl_insert(chan_backend *be, sub_req *q)
{
	sub_req *p = be->dl_tail;
	while (p != NULL && p->deadline > q->deadline)
		p = p->dprev;
	q->dprev = p;
	q->dnext = p != NULL ? p->dnext : be->dl_head;
	if (q->dnext != NULL)
		q->dnext->dprev = q;
	else
		be->dl_tail = q;
	if (p != NULL)
		p->dnext = q;
	else
		be->dl_head = q;
	q->in_dl = true;
}

/* ---- Calls --------------------------------------------------------------- */

/* A collapsible call's key: method, metadata chain and payload bytes. */
static uint64_t
call_hash(const uint8_t *p, size_t n, const asynq_rpc_method_desc *m,
    const asynqi_md_node *md)
{
	return asynqi_hash_bytes(p, n,
	    (uint64_t)(uintptr_t)m * 0x9e3779b97f4a7c15u ^ asynqi_md_hash(md));
}

/* The record index + 1 of a call of b equal to the one whose payload is
 * at poff (not yet a record), or 0. */
static size_t
ctab_find(const rpc_batch *b, uint64_t h, const asynq_rpc_method_desc *m,
    const asynqi_md_node *md, size_t poff, size_t plen)
{
	for (size_t j = (size_t)h & b->ctab_mask; b->ctab[j] != 0;
	     j = (j + 1) & b->ctab_mask) {
		const call_rec *r = &b->recs[b->ctab[j] - 1];
		if (r->hash == h && r->m == m && r->plen == plen &&
		    memcmp(b->buf.p + r->poff, b->buf.p + poff, plen) == 0 &&
		    asynqi_md_equal(r->md, md))
			return b->ctab[j];
	}
	return 0;
}

/* Records call idx of b as collapsible. Without memory the table goes and
 * is rebuilt at the next insert: calls meanwhile are just not collapsed. */
static void
ctab_insert(rpc_batch *b, size_t idx)
{
	if (b->ctab == NULL || (b->n_ctab + 1) * 2 > b->ctab_mask + 1) {
		size_t cap = b->ctab != NULL ? (b->ctab_mask + 1) * 2
		    : b->be->ctab_hint > 32  ? b->be->ctab_hint
		                             : 32;
		uint32_t *t = calloc(cap, sizeof(*t));
		free(b->ctab);
		b->ctab = t;
		b->ctab_mask = t != NULL ? cap - 1 : 0;
		b->n_ctab = 0;
		if (t == NULL)
			return;
		for (size_t i = 0; i < idx; i++) {
			if (!b->recs[i].m->idempotent)
				continue;
			size_t j = (size_t)b->recs[i].hash & (cap - 1);
			while (t[j] != 0)
				j = (j + 1) & (cap - 1);
			t[j] = (uint32_t)(i + 1);
			b->n_ctab++;
		}
	}
	size_t j = (size_t)b->recs[idx].hash & b->ctab_mask;
	while (b->ctab[j] != 0)
		j = (j + 1) & b->ctab_mask;
	b->ctab[j] = (uint32_t)(idx + 1);
	b->n_ctab++;
}

/* Whether two different chains say the same (out of line: rare). */
static bool __attribute__((noinline, cold))
md_same(const asynqi_md_node *a, const asynqi_md_node *b)
{
	return asynqi_md_equal(a, b);
}

/* A call that cannot get a record: it fails as an item of its own, so
 * that item indexes keep matching records. */
static asynq_future *
call_oom(chan_backend *be, rpc_batch *b, asynq_future *f,
    const asynq_rpc_method_desc *m)
{
	if (f == NULL && (f = asynq_batch_add(&be->base, 0, NULL)) == NULL)
		return NULL;
	(void)b;
	asynq_item_set_error(f,
	    asynq_error_alloc(ASYNQ_RESOURCE_EXHAUSTED, "rpc %s: out of memory",
	        m->full_name));
	return f;
}

/* A call past its interceptors: from the request cache, or made. */
static inline asynq_future *
call_inner(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m,
    const ProtobufCMessage *req)
{
	bool errors;
	if (asynqi_rpc_channel_caches(ch, m, &errors))
		return asynqi_rpc_cache_call(ch, m, req);
	return asynqi_rpc_call_now(ch, m, req);
}

/* ---- Interceptors ---------------------------------------------------------
 * A call's interceptor state lives from asynq_rpc_call until its future is
 * computed (the after hooks), or only during the call when no interceptor
 * that let it through has an after hook. Metadata they add is a chain of
 * its own on top of the caller's, in scope while the call is made. */

typedef struct cli_icall {
	asynqi_icall base;
	asynq_rpc_call_info info;
	/* The channel's interceptors (a copy: the after hooks may run once
	 * the channel is gone, its calls failed CANCELLED). */
	const asynq_rpc_interceptor **icpt;
	asynqi_md_node *md;    /* the chain the call is made under */
	asynqi_md_node *added; /* its top when interceptors added to it: a
	                          reference of ours */
	size_t passed; /* interceptors whose before let the call go on */
	void *state[]; /* n_icpt of them, then the copy of icpt */
} cli_icall;

const void *
asynqi_cli_call_metadata(const asynq_rpc_call_info *c, const char *key,
    size_t *len)
{
	const cli_icall *ic = c->impl_;
	for (const asynqi_md_node *n = ic->md; n != NULL; n = n->prev)
		if (strcmp(n->key, key) == 0) {
			if (len != NULL)
				*len = n->len;
			return n->val;
		}
	return NULL;
}

asynq_status
asynqi_cli_call_add_metadata(asynq_rpc_call_info *c, const char *key,
    const void *val, size_t len)
{
	cli_icall *ic = c->impl_;
	asynqi_md_node *n = asynqi_md_make(ic->md, key, val, len);
	if (n == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynqi_md_rele(ic->added); /* n holds it now */
	ic->added = n;
	ic->md = n;
	return ASYNQ_OK;
}

const asynqi_md_node *
asynqi_cli_call_chain(const asynq_rpc_call_info *c)
{
	const cli_icall *ic = c->impl_;
	return ic->md;
}

void
asynqi_cli_call_use_chain(asynq_rpc_call_info *c, asynqi_md_node *n)
{
	cli_icall *ic = c->impl_;
	asynqi_md_hold(n);
	asynqi_md_rele(ic->added); /* n holds what it is on top of */
	ic->added = n;
	ic->md = n;
}

static void
icall_free(cli_icall *ic)
{
	free(ic->base.reject);
	asynqi_md_rele(ic->added);
	free(ic);
}

/* The after hooks, the last interceptor first, with the call's outcome;
 * then ic goes. */
static void
icall_after(cli_icall *ic, asynq_status st, const char *msg,
    const ProtobufCMessage *reply)
{
	ic->info.req = NULL;
	ic->info.status = st;
	ic->info.message = st != ASYNQ_OK ? msg : NULL;
	ic->info.reply = st == ASYNQ_OK ? reply : NULL;
	for (size_t i = ic->passed; i-- > 0;) {
		const asynq_rpc_interceptor *x = ic->icpt[i];
		if (x->after != NULL)
			x->after(&ic->info, ic->state[i], x->arg);
	}
	icall_free(ic);
}

static asynq_status
icall_done(asynq_future *f, void *arg)
{
	asynq_status st = asynq_future_status(f);
	asynq_error *e = asynq_future_error(f);
	icall_after(arg, st,
	    e != NULL ? asynq_error_message(e) : asynq_strerror(st),
	    st == ASYNQ_OK ? asynq_future_ptr(f) : NULL);
	return ASYNQ_OK;
}

/* asynq_rpc_call through the channel's interceptors (out of line: the
 * call without them stays short). */
static asynq_future *__attribute__((noinline, cold))
icpt_call(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m,
    const ProtobufCMessage *req)
{
	size_t sz = sizeof(cli_icall) + 2 * ch->n_icpt * sizeof(void *);
	cli_icall *ic = calloc(1, sz);
	if (ic == NULL) {
		atomic_fetch_add_explicit(&ch->failures, 1,
		    memory_order_relaxed);
		return asynq_const_error(
		    asynq_error_alloc(ASYNQ_RESOURCE_EXHAUSTED,
		        "rpc %s: out of memory", m->full_name));
	}
	ic->info = (asynq_rpc_call_info){ .method = m,
		.req = req,
		.server = false,
		.start_ns = (int64_t)asynq_now_ns(),
		.impl_ = ic };
	ic->icpt = (const asynq_rpc_interceptor **)&ic->state[ch->n_icpt];
	memcpy(ic->icpt, ch->icpt, ch->n_icpt * sizeof(*ic->icpt));
	ic->md = asynq_scoped_get(&asynqi_md_key);
	asynq_status st = ASYNQ_OK;
	size_t j = 0;
	for (; j < ch->n_icpt; j++) {
		const asynq_rpc_interceptor *x = ch->icpt[j];
		if (x->before != NULL) {
			ic->base.in_before = true;
			st = x->before(&ic->info, &ic->state[j], x->arg);
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
	asynq_future *f;
	if (st != ASYNQ_OK) {
		/* Rejected: never sent, no request. */
		if (st < 0 || st >= ASYNQ_STATUS_COUNT)
			st = ASYNQ_UNKNOWN;
		char msg[256];
		asynqi_icall_reject_msg(&ic->info, ch->icpt[j], st, msg,
		    sizeof(msg));
		atomic_fetch_add_explicit(&ch->failures, 1,
		    memory_order_relaxed);
		f = asynq_const_error(asynq_error_alloc(st, "%s", msg));
	} else if (ic->added != NULL) {
		/* Made under the chain with the additions. */
		if (asynq_scoped_push(&asynqi_md_key, ic->md) == ASYNQ_OK) {
			f = call_inner(ch, m, req);
			(void)asynq_scoped_pop(&asynqi_md_key);
		} else {
			f = asynq_const_error(
			    asynq_error_alloc(ASYNQ_RESOURCE_EXHAUSTED,
			        "rpc %s: out of memory", m->full_name));
		}
	} else {
		f = call_inner(ch, m, req);
	}
	bool after = false;
	for (size_t i = 0; i < ic->passed && !after; i++)
		after = ch->icpt[i]->after != NULL;
	if (!after) {
		icall_free(ic);
		return f;
	}
	ic->info.req = NULL;
	if (f == NULL || asynq_future_on_done(f, icall_done, ic) != ASYNQ_OK)
		icall_after(ic, ASYNQ_RESOURCE_EXHAUSTED, "out of memory",
		    NULL);
	return f;
}

asynq_future *
asynq_rpc_call(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m,
    const ProtobufCMessage *req)
{
	atomic_fetch_add_explicit(&ch->calls, 1, memory_order_relaxed);
	if (req == NULL || m == NULL || req->descriptor != m->input) {
		atomic_fetch_add_explicit(&ch->failures, 1,
		    memory_order_relaxed);
		return asynq_const_error(asynq_error_alloc(
		    ASYNQ_INVALID_ARGUMENT, "rpc %s: request is not a %s",
		    m != NULL ? m->full_name : "(no method)",
		    m != NULL
		        ? ((const ProtobufCMessageDescriptor *)m->input)->name
		        : "message"));
	}
	if (ch->n_icpt != 0)
		return icpt_call(ch, m, req);
	return call_inner(ch, m, req);
}

bool
asynqi_rpc_channel_caches(const asynq_rpc_channel *ch,
    const asynq_rpc_method_desc *m, bool *errors)
{
	if (!m->idempotent || !(m->request_cache || ch->cache_all))
		return false;
	*errors = m->cache_errors || ch->cache_errors;
	return true;
}

uint64_t
asynqi_rpc_channel_id(const asynq_rpc_channel *ch)
{
	return ch->id;
}

void
asynqi_rpc_count_cached(asynq_rpc_channel *ch)
{
	atomic_fetch_add_explicit(&ch->cached, 1, memory_order_relaxed);
}

/* While the throttle refuses some calls: a failed constant future if it
 * refuses this one, else NULL. */
static asynq_future *__attribute__((noinline, cold))
throttle_call(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m)
{
	int64_t now = mono_ns();
	if (now >= atomic_load_explicit(&ch->thr.until, memory_order_relaxed)) {
		pthread_mutex_lock(&ch->mu);
		asynqi_throttle_update(&ch->thr, now);
		pthread_mutex_unlock(&ch->mu);
	}
	if (!asynqi_throttle_refuse(&ch->thr,
	        (uint32_t)(asynqi_thread_rand() >> 32)))
		return NULL;
	atomic_fetch_add_explicit(&ch->throttled, 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&ch->failures, 1, memory_order_relaxed);
	/* In the method's counts too, at no latency (it never waited). */
	size_t mi = (size_t)(m - ch->svc->methods);
	if (m >= ch->svc->methods && mi < ch->svc->n_methods) {
		atomic_fetch_add_explicit(
		    &ch->mst[mi].codes[ASYNQ_RESOURCE_EXHAUSTED], 1,
		    memory_order_relaxed);
		cli_hist_add(&ch->mst[mi].latency, asynqi_latency_bounds,
		    asynqi_n_latency_bounds, 0, 1);
	}
	return asynq_const_error(asynq_error_alloc(ASYNQ_RESOURCE_EXHAUSTED,
	    "rpc %s: refused by the client's throttle: its servers refused "
	    "most of its recent calls (overloaded)",
	    m->full_name));
}

asynq_future *
asynqi_rpc_call_now(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m,
    const ProtobufCMessage *req)
{
	if (__builtin_expect(
	        atomic_load_explicit(&ch->thr.p, memory_order_relaxed) != 0,
	        0)) {
		asynq_future *tf = throttle_call(ch, m);
		if (tf != NULL)
			return tf;
	}
	intptr_t wv = (intptr_t)asynq_scoped_get(&asynq_rpc_wait_for_ready);
	chan_backend *be = thread_backend(ch,
	    wv == ASYNQ_RPC_WAIT            ? true
	        : wv == ASYNQ_RPC_FAIL_FAST ? false
	                                    : ch->wait_for_ready);
	if (be == NULL)
		return NULL;
	int64_t dl_rt = asynq_rpc_deadline_get();
	/* A collapsible call looks for its twin in the batch it would join
	 * before it becomes an item of its own; others join at once. */
	bool collapsible = ch->collapse && m->idempotent;
	rpc_batch *b =
	    collapsible ? (rpc_batch *)asynq_backend_active(&be->base) : NULL;
	asynq_future *f = NULL;
	bool has_twins = b != NULL; /* a batch with calls to compare with */
	if (b == NULL) {
		if ((f = asynq_batch_add(&be->base, 0, NULL)) == NULL)
			return NULL;
		b = (rpc_batch *)asynq_item_batch(f);
	}
	/* A call without a deadline of its own gets the default one from
	 * the batch's first such call: one clock read per batch. */
	int64_t deadline, tnow = 0;
	if (dl_rt != 0) {
		tnow = mono_ns();
		deadline = tnow + (dl_rt - asynqi_realtime_ns());
	} else {
		if (b->default_dl == 0) {
			tnow = mono_ns();
			b->default_dl =
			    tnow + (int64_t)ch->default_deadline_ms * 1000000;
		}
		deadline = b->default_dl;
	}
	if (b->n_recs == 0)
		b->t0 = tnow != 0 ? tnow : mono_ns();
	if (b->n_recs == 0 || deadline < b->min_dl)
		b->min_dl = deadline;
	if (b->n_recs == b->cap_recs) {
		size_t cap = b->cap_recs != 0 ? b->cap_recs * 2
		    : be->recs_hint > 16      ? be->recs_hint
		                              : 16;
		call_rec *r = realloc(b->recs, cap * sizeof(*r));
		if (r == NULL)
			return call_oom(be, b, f, m);
		b->recs = r;
		b->cap_recs = cap;
		if (b->buf.cap == 0 && be->buf_hint != 0)
			(void)asynqi_buf_reserve(&b->buf, be->buf_hint);
	}
	asynqi_md_node *md = asynq_scoped_get(&asynqi_md_key);
	size_t idx = b->n_recs;
	if (idx == 0)
		b->base_md = md;
	/* Chains equal in content share the batch's metadata too (an
	 * interceptor's additions make a chain of their own per call). */
	bool own = md != b->base_md;
	if (__builtin_expect(own, 0))
		own = !md_same(md, b->base_md);
	size_t mi = (size_t)(m - ch->svc->methods);
	bool by_id = m >= ch->svc->methods && mi < ch->svc->n_methods;
	/* Sized now, packed in place below. */
	asynqi_packing pk;
	size_t plen =
	    asynqi_packing_size(&pk, by_id ? ch->codecs[2 * mi] : NULL, req);
	size_t nlen = by_id ? 0 : strlen(m->full_name);
	size_t mdw = own ? (md != NULL ? md->wire : 0) + 2 : 0;
	size_t body = (idx != 0 ? 1 + asynqi_varint_len(idx) : 0) +
	    (plen != 0 ? 1 + asynqi_varint_len(plen) + plen : 0) +
	    (by_id ? 1 + asynqi_varint_len(mi + 1)
	           : 1 + asynqi_varint_len(nlen) + nlen) +
	    mdw;
	asynqi_buf *buf = &b->buf;
	size_t off = buf->len;
	size_t poff = 0;
	/* The whole Request.calls field at once: reserved, then written. */
	uint8_t *d = asynqi_buf_reserve(buf, 1 + 10 + body);
	uint8_t *p = d;
	if (d != NULL) {
		*p++ = (1 << 3) | 2;
		p += put_varint(p, body);
		if (idx != 0) {
			*p++ = 2 << 3;
			p += put_varint(p, idx);
		}
		if (plen != 0) {
			*p++ = (3 << 3) | 2;
			p += put_varint(p, plen);
			poff = off + (size_t)(p - d);
			asynqi_packing_put(&pk, req, p, plen);
			p += plen;
		}
		if (by_id) {
			*p++ = 5 << 3;
			p += put_varint(p, mi + 1);
		} else {
			*p++ = (1 << 3) | 2;
			p += put_varint(p, nlen);
			memcpy(p, m->full_name, nlen);
			p += nlen;
		}
	}
	uint64_t h = 0;
	collapsible = collapsible && d != NULL;
	if (collapsible) {
		h = call_hash(buf->p + poff, plen, m, md);
		size_t twin = has_twins && b->ctab != NULL
		    ? ctab_find(b, h, m, md, poff, plen)
		    : 0;
		if (twin != 0) {
			/* Sent once: the bytes just written are dropped. */
			call_rec *r = &b->recs[twin - 1];
			if (deadline < r->deadline)
				r->deadline = deadline;
			f = asynq_batch_follow(&b->base, twin - 1);
			if (f != NULL)
				atomic_fetch_add_explicit(&ch->collapsed, 1,
				    memory_order_relaxed);
			return f;
		}
	}
	if (f == NULL) {
		if ((f = asynq_batch_add(&be->base, 0, NULL)) == NULL)
			return NULL;
		/* asynq_backend_active said this add joins b. */
		ASYNQ_ASSERT(asynq_item_batch(f) == &b->base);
	}
	if (d != NULL) {
		buf->len += (size_t)(p - d);
		if (own) {
			asynqi_md_write(buf, 4, md);
			asynqi_buf_tag(buf, 6, 0);
			asynqi_buf_varint(buf, 1);
		}
	}
	b->recs[b->n_recs++] = (call_rec){ m, off, buf->len - off, deadline,
		asynqi_md_hold(md), false, poff, plen, h };
	if (collapsible)
		ctab_insert(b, idx);
	if (buf->failed)
		asynq_item_set_error(f,
		    asynq_error_alloc(ASYNQ_RESOURCE_EXHAUSTED,
		        "rpc %s: out of memory", m->full_name));
	return f;
}

/* ---- Flush --------------------------------------------------------------- */

/* Bytes of the trailer of a request (as first sent) with id `id` whose
 * earliest deadline is dl: request_id, client_id, timeout_us. */
static size_t
trailer_len(uint64_t id, int64_t dl, int64_t now)
{
	int64_t left = dl - now;
	uint64_t us = left > 0 ? (uint64_t)(left + 999) / 1000 : 1;
	return 1 + asynqi_varint_len(id) + 9 + 1 + asynqi_varint_len(us);
}

static asynq_status
rpc_batch_flush(asynq_batch *base)
{
	rpc_batch *b = (rpc_batch *)base;
	chan_backend *be = b->be;
	asynq_rpc_channel *ch = be->ch;
	size_t n = asynq_batch_size(base);
	if (n != b->n_recs || b->buf.failed)
		return b->buf.failed ? ASYNQ_RESOURCE_EXHAUSTED
		                     : ASYNQ_INTERNAL;
	be->recs_hint = asynqi_room_hint(b->n_recs, 16, RECS_HINT_MAX);
	be->buf_hint = asynqi_room_hint(b->buf.len, 256, ASYNQI_ROOM_MAX);
	be->ctab_hint = b->ctab != NULL
	    ? asynqi_room_hint(b->n_ctab * 2 + 2, 32, RECS_HINT_MAX * 2)
	    : 0;
	if (b->base_md != NULL)
		asynqi_md_write(&b->mdbuf, 3, b->base_md);
	if (b->mdbuf.failed)
		return ASYNQ_RESOURCE_EXHAUSTED;
	atomic_fetch_add_explicit(&ch->sent_calls, n, memory_order_relaxed);
	/* Requests of at most max_calls calls and max_msg_bytes bytes (the
	 * Request as first sent), cut greedily in call order. */
	int64_t t_split = mono_ns();
	size_t n_subs = 0;
	if (n <= ch->max_calls &&
	    b->buf.len + b->mdbuf.len + TRAILER_MAX <= ch->max_msg_bytes) {
		/* The common case: the whole batch is one request. */
		b->first_id = atomic_fetch_add(&ch->next_request_id, 1) + 1;
		b->subs = calloc(1, sizeof(*b->subs));
		if (b->subs == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		sub_req *q = &b->subs[0];
		q->b = b;
		q->n = n;
		q->len = b->buf.len;
		q->deadline = b->min_dl;
		n_subs = 1;
		goto cut;
	}
	/* Ids for up to n requests (one per call at most), so that their
	 * sizes are known while cutting. */
	b->first_id = atomic_fetch_add(&ch->next_request_id, n) + 1;
	for (int pass = 0; pass < 2; pass++) {
		size_t k = 0, cn = 0, cb = 0;
		int64_t dl = INT64_MAX;
		for (size_t i = 0; i < n; i++) {
			size_t w = b->recs[i].wire;
			int64_t d =
			    b->recs[i].deadline < dl ? b->recs[i].deadline : dl;
			if (cn == 0 || cn == ch->max_calls ||
			    cb + w + b->mdbuf.len +
			            trailer_len(b->first_id + k, d, t_split) >
			        ch->max_msg_bytes) {
				if (pass == 1) {
					sub_req *q = &b->subs[k];
					q->b = b;
					q->start = i;
					q->off = b->recs[i].off;
					q->deadline = INT64_MAX;
				}
				k++;
				cn = 0;
				cb = 0;
				d = b->recs[i].deadline;
			}
			dl = d;
			if (pass == 1) {
				sub_req *q = &b->subs[k - 1];
				q->n++;
				q->len += w;
				q->deadline = d;
				if (w + b->mdbuf.len +
				        trailer_len(b->first_id + k - 1, d,
				            t_split) >
				    ch->max_msg_bytes)
					q->unsendable = true;
			}
			cn++;
			cb += w;
		}
		if (pass == 0) {
			n_subs = k;
			b->subs = calloc(n_subs, sizeof(*b->subs));
			if (b->subs == NULL)
				return ASYNQ_RESOURCE_EXHAUSTED;
		}
	}
cut:
	b->n_subs = n_subs;
	for (size_t k = 0; k < n_subs && ch->svc->n_methods <= 64; k++) {
		uint32_t per[64] = { 0 };
		const sub_req *q = &b->subs[k];
		for (size_t i = q->start; i < q->start + q->n; i++) {
			size_t mi = (size_t)(b->recs[i].m - ch->svc->methods);
			if (b->recs[i].m >= ch->svc->methods &&
			    mi < ch->svc->n_methods)
				per[mi]++;
		}
		for (size_t mi = 0; mi < ch->svc->n_methods; mi++)
			if (per[mi] != 0)
				cli_hist_add(&ch->mst[mi].cpr,
				    asynqi_cpr_bounds, asynqi_n_cpr_bounds,
				    per[mi], 1);
	}
	atomic_store(&b->pending, n_subs);
	asynq_batch_defer(base);
	outbox o = { 0 };
	int64_t now = mono_ns();
	pthread_mutex_lock(&ch->mu);
	ch->inflight += (long)n_subs;
	for (size_t i = 0; i < n_subs; i++) {
		sub_req *q = &b->subs[i];
		q->request_id = b->first_id + i;
		q->state = SUB_NEW;
		if (q->unsendable || q->deadline <= now || ch->closing) {
			q->state = SUB_DONE;
			q->fail_st = ch->closing ? ASYNQ_CANCELLED
			    : q->unsendable      ? ASYNQ_RESOURCE_EXHAUSTED
			                         : ASYNQ_DEADLINE_EXCEEDED;
			q->fail_why = ch->closing ? "channel closed"
			    : q->unsendable
			    ? "request over the channel's max_msg_bytes"
			    : "deadline exceeded";
			q->qnext = o.fails;
			o.fails = q;
			continue;
		}
		dispatch(ch, q, &o);
	}
	pthread_mutex_unlock(&ch->mu);
	/* Deadlines before the sends, so a reply cannot beat them. */
	for (size_t i = 0; i < n_subs; i++)
		if (b->subs[i].deadline != INT64_MAX)
			dl_insert(be, &b->subs[i]);
	dl_arm(be);
	outbox_run(ch, &o);
	return ASYNQ_OK;
}

/* ---- Channel ------------------------------------------------------------- */

/* A random client id, never 0 (0 means "no id" on the wire). */
static uint64_t
random_u64(void)
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

/* TLS client configurations, one per (CA file, server name, certificate
 * and key files), kept for the life of the process: the shared nng
 * dialers (conn.c) hold them. */
typedef struct tls_ent tls_ent;
struct tls_ent {
	char *ca, *name, *cert, *key;
	asynqi_tls *t;
	tls_ent *next;
};
static pthread_mutex_t tls_mu = PTHREAD_MUTEX_INITIALIZER;
static tls_ent *tls_head;

static bool
str_eq(const char *a, const char *b)
{
	return a == b || (a != NULL && b != NULL && strcmp(a, b) == 0);
}

/* strdup of NULL is NULL; *ok turns false when a copy fails. */
static char *
str_dup(const char *s, bool *ok)
{
	char *d = s != NULL ? strdup(s) : NULL;
	if (s != NULL && d == NULL)
		*ok = false;
	return d;
}

/* The host of a URL ("tls+tcp://[::1]:7001" -> "::1") in buf. */
static void
url_host(const char *url, char *buf, size_t len)
{
	const char *h = strstr(url, "://");
	h = h != NULL ? h + 3 : url;
	size_t n;
	if (*h == '[') {
		h++;
		n = strcspn(h, "]");
	} else {
		n = strcspn(h, ":/");
	}
	snprintf(buf, len, "%.*s", (int)n, h);
}

/* The TLS configuration for dialing url with cfg's files, shared by every
 * channel with the same files and server name; the name defaults to the
 * URL's host. */
static asynq_status
tls_client_config(const asynq_rpc_channel_cfg *cfg, const char *url,
    tls_ent **ep)
{
	char host[256];
	const char *name = cfg->tls_server_name;
	if (name == NULL) {
		url_host(url, host, sizeof(host));
		name = host;
	}
	asynq_status st = ASYNQ_OK;
	pthread_mutex_lock(&tls_mu);
	tls_ent *e = tls_head;
	while (e != NULL &&
	    (!str_eq(e->ca, cfg->tls_ca_file) || !str_eq(e->name, name) ||
	        !str_eq(e->cert, cfg->tls_cert_file) ||
	        !str_eq(e->key, cfg->tls_key_file)))
		e = e->next;
	if (e == NULL) {
		asynqi_tls_files f = {
			.cert_file = cfg->tls_cert_file,
			.key_file = cfg->tls_key_file,
			.ca_file = cfg->tls_ca_file,
			.server_name = name,
		};
		asynqi_tls *t = NULL;
		char err[512];
		st = asynqi_tls_alloc(&t, false, &f, err, sizeof(err));
		if (st != ASYNQ_OK)
			asynq_log(ASYNQ_LOG_ERROR, "setup_failed", "status",
			    asynq_status_name(st), "error", err, NULL);
		e = st == ASYNQ_OK ? calloc(1, sizeof(*e)) : NULL;
		if (st == ASYNQ_OK && e == NULL)
			st = ASYNQ_RESOURCE_EXHAUSTED;
		bool ok = true;
		if (e != NULL) {
			e->ca = str_dup(cfg->tls_ca_file, &ok);
			e->name = str_dup(name, &ok);
			e->cert = str_dup(cfg->tls_cert_file, &ok);
			e->key = str_dup(cfg->tls_key_file, &ok);
		}
		if (e != NULL && ok) {
			e->t = t;
			e->next = tls_head;
			tls_head = e;
		} else {
			if (e != NULL) {
				free(e->ca);
				free(e->name);
				free(e->cert);
				free(e->key);
				free(e);
				e = NULL;
				st = ASYNQ_RESOURCE_EXHAUSTED;
			}
			asynqi_tls_free(t);
		}
	}
	*ep = e;
	pthread_mutex_unlock(&tls_mu);
	return st;
}

asynq_status
asynq_rpc_channel_reload_tls(asynq_rpc_channel *ch)
{
	/* The distinct configurations of the replicas, taken under mu (a
	 * named channel's replicas come and go), reloaded without it. Only
	 * tls+ URLs of a static list have one. */
	pthread_mutex_lock(&ch->mu);
	size_t n = 0;
	tls_ent **es = malloc((ch->n_reps != 0 ? ch->n_reps : 1) * sizeof(*es));
	for (size_t i = 0; es != NULL && i < ch->n_reps; i++) {
		tls_ent *e = ch->reps[i]->tls_ent;
		bool seen = false;
		for (size_t j = 0; j < n && !seen; j++)
			seen = es[j] == e;
		if (e != NULL && !seen)
			es[n++] = e;
	}
	pthread_mutex_unlock(&ch->mu);
	if (es == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq_status st = n == 0 ? ASYNQ_FAILED_PRECONDITION : ASYNQ_OK;
	for (size_t i = 0; i < n && st == ASYNQ_OK; i++) {
		tls_ent *e = es[i];
		asynqi_tls_files f = {
			.cert_file = e->cert,
			.key_file = e->key,
			.ca_file = e->ca,
			.server_name = e->name,
		};
		char err[512];
		st = asynqi_tls_reload(e->t, &f, err, sizeof(err));
		if (st != ASYNQ_OK)
			asynq_log(ASYNQ_LOG_ERROR, "tls_reload_failed",
			    "channel", ch->svc->full_name, "status",
			    asynq_status_name(st), "error", err, NULL);
	}
	free(es);
	if (st == ASYNQ_OK)
		asynq_log(ASYNQ_LOG_INFO, "tls_reloaded", "channel",
		    ch->svc->full_name, NULL);
	return st;
}

/* ---- Replicas from names ------------------------------------------------- */

/* A new replica of ch for url, with its dialer; NULL without memory or for
 * a URL that cannot be dialled (*st says which). Not in ch's list yet. */
static replica *
replica_alloc(asynq_rpc_channel *ch, const char *url,
    const asynq_rpc_channel_cfg *tls_cfg, asynq_status *st)
{
	replica *r = calloc(1, sizeof(*r));
	*st = ASYNQ_RESOURCE_EXHAUSTED;
	if (r == NULL)
		return NULL;
	r->ch = ch;
	if ((r->url = strdup(url)) == NULL)
		goto fail;
	/* tls+ URLs of a channel with TLS files: the configuration of those
	 * files and the URL's host (shared, kept for the process). */
	if (tls_cfg != NULL && strncmp(url, "tls+", 4) == 0 &&
	    (*st = tls_client_config(tls_cfg, url, &r->tls_ent)) != ASYNQ_OK)
		goto fail;
	if ((*st = asynqi_dialer_open(&r->d, url,
	         r->tls_ent != NULL ? asynqi_tls_config(r->tls_ent->t) : NULL,
	         on_connect, r)) != ASYNQ_OK)
		goto fail;
	return r;
fail:
	free(r->url);
	free(r);
	return NULL;
}

static void
replica_free(replica *r)
{
	if (r == NULL)
		return;
	asynqi_dialer_close(r->d);
	free(r->url);
	free(r);
}

/* Under mu: room for n replicas in ch->reps. */
static bool
reps_reserve(asynq_rpc_channel *ch, size_t n)
{
	if (n <= ch->cap_reps)
		return true;
	size_t cap = ch->cap_reps != 0 ? ch->cap_reps : 4;
	while (cap < n)
		cap *= 2;
	replica **v = realloc(ch->reps, cap * sizeof(*v));
	if (v == NULL)
		return false;
	ch->reps = v;
	ch->cap_reps = cap;
	return true;
}

/* Takes the replicas of ch to those of urls[0..n): new ones are dialled,
 * those gone are retired (no new requests; their connection is closed
 * once idle, see reap). Resolver thread. */
static void
chan_set_replicas(asynq_rpc_channel *ch, char (*urls)[ASYNQ_RPC_URL_MAX],
    size_t n)
{
	replica **fresh = calloc(n, sizeof(*fresh));
	if (fresh == NULL)
		return; /* tried again at the next resolution */
	pthread_mutex_lock(&ch->mu);
	bool *known = calloc(n, sizeof(*known));
	for (size_t i = 0; known != NULL && i < n; i++)
		for (size_t k = 0; k < ch->n_reps && !known[i]; k++)
			known[i] = strcmp(ch->reps[k]->url, urls[i]) == 0;
	pthread_mutex_unlock(&ch->mu);
	if (known == NULL) {
		free(fresh);
		return;
	}
	/* Dialers are made without the channel's lock. */
	for (size_t i = 0; i < n; i++) {
		asynq_status st;
		if (!known[i] &&
		    (fresh[i] = replica_alloc(ch, urls[i], NULL, &st)) == NULL)
			asynq_log(ASYNQ_LOG_WARN, "replica_not_added", "url",
			    urls[i], "why",
			    st == ASYNQ_INVALID_ARGUMENT
			        ? "not a URL a channel can dial"
			        : "out of memory",
			    NULL);
	}
	outbox o = { 0 };
	pthread_mutex_lock(&ch->mu);
	bool ok = !ch->closing && reps_reserve(ch, ch->n_reps + n);
	if (ok) {
		/* Current replicas not among urls retire. */
		size_t kept = 0;
		for (size_t k = 0; k < ch->n_reps; k++) {
			replica *r = ch->reps[k];
			bool stays = false;
			for (size_t i = 0; i < n && !stays; i++)
				stays =
				    known[i] && strcmp(r->url, urls[i]) == 0;
			if (stays) {
				ch->reps[kept++] = r;
				continue;
			}
			replica_restore(ch, r);
			r->removed = true;
			r->next = ch->retired;
			ch->retired = r;
			asynq_log(ASYNQ_LOG_INFO, "replica_removed", "url",
			    r->url, NULL);
		}
		ch->n_reps = kept;
		for (size_t i = 0; i < n; i++) {
			replica *r = fresh[i];
			if (r == NULL)
				continue;
			fresh[i] = NULL;
			ch->reps[ch->n_reps++] = r;
			r->state = REP_CONNECTING;
			replica_dial(r, 0);
			asynq_log(ASYNQ_LOG_INFO, "replica_added", "url",
			    r->url, NULL);
		}
	}
	ch->resolved = true;
	ch->resolve_why[(ch->why_slot + 1) % 4][0] = '\0';
	ch->why_slot++;
	/* Calls that waited for the first resolution wait for connections
	 * now, or fail if there is none to wait for. */
	fail_waiting_if_hopeless(ch, &o, "no server reachable");
	pthread_mutex_unlock(&ch->mu);
	outbox_run(ch, &o);
	for (size_t i = 0; i < n; i++)
		replica_free(fresh[i]);
	free(fresh);
	free(known);
}

/* A resolution failed: the replicas stay; calls waiting for the first
 * resolution fail with why, unless they wait for ready. */
static void
chan_resolve_failed(asynq_rpc_channel *ch, const char *why)
{
	outbox o = { 0 };
	pthread_mutex_lock(&ch->mu);
	unsigned slot = (ch->why_slot + 1) % 4;
	snprintf(ch->resolve_why[slot], sizeof(ch->resolve_why[slot]), "%s",
	    why);
	ch->why_slot++;
	ch->resolved = true;
	fail_waiting_if_hopeless(ch, &o, "no server reachable");
	pthread_mutex_unlock(&ch->mu);
	asynq_log(ASYNQ_LOG_WARN, "resolve_failed", "why", why, NULL);
	outbox_run(ch, &o);
}

/* Closes the connections of retired replicas that have no request left,
 * then frees the replicas with no connection. Returns whether some are
 * still draining. Resolver thread. */
static bool
reap(asynq_rpc_channel *ch)
{
	asynqi_conn *conns[16];
	asynqi_dialer *dials[16];
	size_t nc = 0, nd = 0;
	pthread_mutex_lock(&ch->mu);
	for (replica *r = ch->retired; r != NULL; r = r->next) {
		if (r->cc != NULL && r->outstanding == 0 && nc < 16) {
			asynqi_conn_hold(r->cc->c);
			conns[nc++] = r->cc->c;
		}
		if (r->cc == NULL && r->d != NULL && nd < 16) {
			dials[nd++] = r->d;
			r->d = NULL;
		}
	}
	pthread_mutex_unlock(&ch->mu);
	for (size_t i = 0; i < nc; i++) {
		asynqi_conn_close(conns[i]);
		asynqi_conn_rele(conns[i]);
	}
	/* Their connect callback has run once these return. */
	for (size_t i = 0; i < nd; i++)
		asynqi_dialer_close(dials[i]);
	replica *dead = NULL;
	pthread_mutex_lock(&ch->mu);
	for (replica **pp = &ch->retired; *pp != NULL;) {
		replica *r = *pp;
		if (r->d == NULL && r->cc == NULL && r->n_conns == 0) {
			*pp = r->next;
			r->next = dead;
			dead = r;
		} else {
			pp = &r->next;
		}
	}
	bool more = ch->retired != NULL;
	pthread_mutex_unlock(&ch->mu);
	while (dead != NULL) {
		replica *r = dead;
		dead = r->next;
		replica_free(r);
	}
	return more;
}

static bool
chan_resolved(void *arg, char (*urls)[ASYNQ_RPC_URL_MAX], size_t n,
    const char *why)
{
	asynq_rpc_channel *ch = arg;
	if (n > 0)
		chan_set_replicas(ch, urls, n);
	else if (why != NULL)
		chan_resolve_failed(ch, why);
	return reap(ch);
}

void
asynq_rpc_channel_resolve_now(asynq_rpc_channel *ch)
{
	if (ch == NULL)
		return;
	pthread_mutex_lock(&ch->mu);
	asynqi_resolver_kick(ch->resolver, true);
	pthread_mutex_unlock(&ch->mu);
}

static const char *
rep_state_name(const replica *r)
{
	switch (r->state) {
	case REP_READY:
		return "ready";
	case REP_CONNECTING:
	case REP_HANDSHAKE:
		return "connecting";
	case REP_FAILED:
		return "failed";
	default:
		return "idle";
	}
}

static void
rep_info(const replica *r, asynq_rpc_replica_info *out)
{
	memset(out, 0, sizeof(*out));
	snprintf(out->url, sizeof(out->url), "%s", r->url);
	out->state = rep_state_name(r);
	out->ready = rep_usable(r);
	out->ejected = r->ejected;
	out->draining = r->removed;
	out->outstanding = r->outstanding;
	out->requests = r->requests;
	out->calls = r->calls;
	out->ejections = r->ejections;
}

size_t
asynq_rpc_channel_replicas(const asynq_rpc_channel *cch,
    asynq_rpc_replica_info *out, size_t max)
{
	asynq_rpc_channel *ch = (asynq_rpc_channel *)cch;
	size_t n = 0;
	pthread_mutex_lock(&ch->mu);
	for (size_t i = 0; i < ch->n_reps; i++, n++)
		if (n < max && out != NULL)
			rep_info(ch->reps[i], &out[n]);
	for (const replica *r = ch->retired; r != NULL; r = r->next, n++)
		if (n < max && out != NULL)
			rep_info(r, &out[n]);
	pthread_mutex_unlock(&ch->mu);
	return n;
}

asynq_status
asynq_rpc_channel_alloc(asynq_rpc_channel **chp,
    const asynq_rpc_service_desc *svc, const asynq_rpc_channel_cfg *cfg)
{
	if (svc == NULL || cfg == NULL || cfg->urls == NULL || cfg->n_urls == 0)
		return ASYNQ_INVALID_ARGUMENT;
	for (size_t i = 0; i < cfg->n_urls; i++)
		if (cfg->urls[i] == NULL)
			return ASYNQ_INVALID_ARGUMENT;
	if (cfg->n_interceptors != 0 && cfg->interceptors == NULL)
		return ASYNQ_INVALID_ARGUMENT;
	for (size_t i = 0; i < cfg->n_interceptors; i++)
		if (cfg->interceptors[i] == NULL)
			return ASYNQ_INVALID_ARGUMENT;
	bool named = asynqi_target_is_name(cfg->urls[0]);
	if (named && cfg->n_urls != 1) {
		asynq_log(ASYNQ_LOG_ERROR, "channel_setup_failed", "why",
		    "a dns: target must be the channel's only URL", NULL);
		return ASYNQ_INVALID_ARGUMENT;
	}
	if (cfg->throttle_ratio_milli != 0 &&
	    cfg->throttle_ratio_milli < 1000) {
		asynq_log(ASYNQ_LOG_ERROR, "channel_setup_failed", "why",
		    "throttle_ratio_milli under 1000 would refuse calls a "
		    "server admits",
		    NULL);
		return ASYNQ_INVALID_ARGUMENT;
	}
	if (cfg->lb != ASYNQ_RPC_LB_LEAST_OUTSTANDING &&
	    cfg->lb != ASYNQ_RPC_LB_ROUND_ROBIN) {
		asynq_log(ASYNQ_LOG_ERROR, "channel_setup_failed", "why",
		    "unknown balancing policy (lb)", NULL);
		return ASYNQ_INVALID_ARGUMENT;
	}
	asynq_rpc_channel *ch = calloc(1, sizeof(*ch));
	if (ch == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq_status st = ASYNQ_RESOURCE_EXHAUSTED;
	if (cfg->n_interceptors != 0) {
		ch->icpt = malloc(cfg->n_interceptors * sizeof(*ch->icpt));
		if (ch->icpt == NULL) {
			free(ch);
			return ASYNQ_RESOURCE_EXHAUSTED;
		}
		memcpy(ch->icpt, cfg->interceptors,
		    cfg->n_interceptors * sizeof(*ch->icpt));
		ch->n_icpt = cfg->n_interceptors;
	}
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
	ch->wait_for_ready = cfg->wait_for_ready;
	ch->collapse = !cfg->no_collapse;
	ch->cache_all = cfg->request_cache;
	ch->cache_errors = cfg->cache_errors;
	atomic_init(&ch->next_request_id, 0);
	atomic_init(&ch->calls, 0);
	atomic_init(&ch->requests, 0);
	atomic_init(&ch->failures, 0);
	atomic_init(&ch->resends, 0);
	atomic_init(&ch->refused, 0);
	atomic_init(&ch->retries, 0);
	uint32_t tmax = cfg->retry_max_tokens != 0 ? cfg->retry_max_tokens
	                                           : DEFAULT_RETRY_TOKENS;
	ch->tokens_max = tmax == UINT32_MAX ? 0 : (int64_t)tmax * 1000;
	ch->tokens = ch->tokens_max;
	ch->token_milli = cfg->retry_token_milli != 0
	    ? cfg->retry_token_milli
	    : DEFAULT_RETRY_TOKEN_MILLI;
	uint32_t tr = cfg->throttle_ratio_milli != 0
	    ? cfg->throttle_ratio_milli
	    : DEFAULT_THROTTLE_RATIO_MILLI;
	asynqi_throttle_init(&ch->thr, tr == UINT32_MAX ? 0 : tr, mono_ns());
	atomic_init(&ch->throttled, 0);
	ch->client_id = random_u64();
	ch->rng = random_u64();
	ch->lb = cfg->lb;
	ch->eject_after =
	    cfg->eject_after != 0 ? cfg->eject_after : DEFAULT_EJECT_AFTER;
	ch->eject_base_ms = cfg->eject_base_ms != 0 ? cfg->eject_base_ms
	                                            : DEFAULT_EJECT_BASE_MS;
	ch->mst =
	    calloc(svc->n_methods != 0 ? svc->n_methods : 1, sizeof(*ch->mst));
	if (ch->mst == NULL)
		goto fail_table;
	ch->codecs = calloc(2 * (svc->n_methods != 0 ? svc->n_methods : 1),
	    sizeof(*ch->codecs));
	if (ch->codecs == NULL)
		goto fail_table;
	for (size_t i = 0; i < svc->n_methods; i++) {
		const asynq_rpc_method_desc *md = &svc->methods[i];
		if (asynqi_codec_usable(md->input_codec, md->input))
			ch->codecs[2 * i] = md->input_codec;
		if (asynqi_codec_usable(md->output_codec, md->output))
			ch->codecs[2 * i + 1] = md->output_codec;
	}
	/* The METHODS frame every connection starts with. */
	uint8_t *th = asynqi_buf_reserve(&ch->table, ASYNQI_FRAME_HDR);
	if (th != NULL)
		ch->table.len = ASYNQI_FRAME_HDR;
	for (size_t i = 0; i < svc->n_methods; i++)
		asynqi_buf_bytes(&ch->table, 7, svc->methods[i].full_name,
		    strlen(svc->methods[i].full_name));
	if (!ch->table.failed)
		asynqi_frame_hdr(ch->table.p, ASYNQI_FRAME_METHODS,
		    (uint32_t)(ch->table.len - ASYNQI_FRAME_HDR));
	if (ch->table.failed)
		goto fail_table;
	if (pthread_mutex_init(&ch->mu, NULL) != 0)
		goto fail_table;
	if (pthread_cond_init(&ch->cv, NULL) != 0)
		goto fail_cv;
	bool tls = cfg->tls_ca_file != NULL || cfg->tls_server_name != NULL ||
	    cfg->tls_cert_file != NULL || cfg->tls_key_file != NULL;
	st = ASYNQ_RESOURCE_EXHAUSTED;
	if (!reps_reserve(ch, named ? 1 : cfg->n_urls))
		goto fail_reps_alloc;
	if (named) {
		/* Replicas come from the resolver's thread. */
		char why[300];
		asynqi_resolver *res = NULL;
		ch->named = true;
		st = asynqi_resolver_open(&res, cfg->urls[0], cfg->resolver,
		    cfg->resolve_interval_ms != 0 ? cfg->resolve_interval_ms
		                                  : DEFAULT_RESOLVE_MS,
		    cfg->max_replicas != 0 ? cfg->max_replicas
		                           : DEFAULT_MAX_REPLICAS,
		    chan_resolved, ch, why, sizeof(why));
		if (st != ASYNQ_OK) {
			asynq_log(ASYNQ_LOG_ERROR, "channel_setup_failed",
			    "why", why, NULL);
			goto fail_reps;
		}
		pthread_mutex_lock(&ch->mu);
		ch->resolver = res;
		pthread_mutex_unlock(&ch->mu);
		*chp = ch;
		return ASYNQ_OK;
	}
	for (size_t i = 0; i < cfg->n_urls; i++) {
		replica *r =
		    replica_alloc(ch, cfg->urls[i], tls ? cfg : NULL, &st);
		if (r == NULL)
			goto fail_reps;
		ch->reps[ch->n_reps++] = r;
	}
	pthread_mutex_lock(&ch->mu);
	for (size_t i = 0; i < ch->n_reps; i++) {
		ch->reps[i]->state = REP_CONNECTING;
		replica_dial(ch->reps[i], 0);
	}
	pthread_mutex_unlock(&ch->mu);
	*chp = ch;
	return ASYNQ_OK;

fail_reps:
	for (size_t i = 0; i < ch->n_reps; i++)
		replica_free(ch->reps[i]);
	free(ch->reps);
fail_reps_alloc:
	pthread_cond_destroy(&ch->cv);
fail_cv:
	pthread_mutex_destroy(&ch->mu);
fail_table:
	asynqi_buf_fini(&ch->table);
	free(ch->mst);
	free(ch->codecs);
	free(ch->icpt);
	free(ch);
	return st;
}

void
asynq_rpc_channel_free(asynq_rpc_channel *ch)
{
	if (ch == NULL)
		return;
	/* No replica comes or goes from here on. */
	pthread_mutex_lock(&ch->mu);
	asynqi_resolver *res = ch->resolver;
	ch->resolver = NULL;
	pthread_mutex_unlock(&ch->mu);
	asynqi_resolver_close(res);
	outbox o = { 0 };
	pthread_mutex_lock(&ch->mu);
	ch->closing = true;
	/* Retired replicas close with the others. */
	if (reps_reserve(ch, ch->n_reps + 1)) {
		while (
		    ch->retired != NULL && reps_reserve(ch, ch->n_reps + 1)) {
			replica *r = ch->retired;
			ch->retired = r->next;
			r->next = NULL;
			ch->reps[ch->n_reps++] = r;
		}
	}
	/* Everything not answered yet fails CANCELLED. */
	while (ch->wait_head != NULL) {
		sub_req *q = ch->wait_head;
		sub_claim(ch, q);
		q->fail_st = ASYNQ_CANCELLED;
		q->fail_why = "channel closed";
		q->qnext = o.fails;
		o.fails = q;
	}
	for (size_t s = 0; ch->pend != NULL && s <= ch->pend_mask; s++) {
		while (ch->pend[s] != NULL) {
			sub_req *q = ch->pend[s];
			sub_claim(ch, q);
			q->fail_st = ASYNQ_CANCELLED;
			q->fail_why = "channel closed";
			q->qnext = o.fails;
			o.fails = q;
		}
	}
	pthread_mutex_unlock(&ch->mu);
	outbox_run(ch, &o);
	for (size_t i = 0; i < ch->n_reps; i++) {
		asynqi_dialer_close(ch->reps[i]->d);
		ch->reps[i]->d = NULL;
	}
	pthread_mutex_lock(&ch->mu);
	/* Every connection, the replicas' and those draining after a GOAWAY
	 * (a server that never closes one would hold this free for ever),
	 * and any that came up as the dialers closed. */
	for (;;) {
		cli_conn *cc = ch->conns;
		while (cc != NULL && cc->freeing)
			cc = cc->all_next;
		if (cc == NULL)
			break;
		cc->freeing = true;
		asynqi_conn *c = cc->c;
		asynqi_conn_hold(c);
		pthread_mutex_unlock(&ch->mu);
		asynqi_conn_close(c);
		asynqi_conn_rele(c);
		pthread_mutex_lock(&ch->mu);
	}
	while (ch->inflight > 0 || ch->live_conns > 0)
		pthread_cond_wait(&ch->cv, &ch->mu);
	chan_backend *be = ch->backends;
	ch->backends = NULL;
	pthread_mutex_unlock(&ch->mu);
	while (be != NULL) {
		chan_backend *next = be->next;
		atomic_store(&be->dead, true);
		backend_rele(be);
		be = next;
	}
	for (size_t i = 0; i < ch->n_reps; i++)
		replica_free(ch->reps[i]);
	while (ch->retired != NULL) { /* only without memory above */
		replica *r = ch->retired;
		ch->retired = r->next;
		replica_free(r);
	}
	free(ch->reps);
	free(ch->pend);
	asynqi_buf_fini(&ch->table);
	pthread_cond_destroy(&ch->cv);
	pthread_mutex_destroy(&ch->mu);
	free(ch->mst);
	free(ch->codecs);
	free(ch->icpt);
	free(ch);
}

static void
cli_hist_get(const cli_hist *h, const uint64_t *bounds, size_t n,
    asynq_rpc_hist *out)
{
	memset(out, 0, sizeof(*out));
	out->bounds = bounds;
	out->n_bounds = n;
	for (size_t i = 0; i <= n; i++) {
		out->counts[i] =
		    atomic_load_explicit(&h->counts[i], memory_order_relaxed);
		out->count += out->counts[i];
	}
	out->sum = atomic_load_explicit(&h->sum, memory_order_relaxed);
}

const asynq_rpc_service_desc *
asynq_rpc_channel_service(const asynq_rpc_channel *ch)
{
	return ch->svc;
}

asynq_status
asynq_rpc_channel_method_stats(const asynq_rpc_channel *ch, size_t i,
    asynq_rpc_method_stats *out)
{
	if (ch == NULL || out == NULL || i >= ch->svc->n_methods)
		return ASYNQ_INVALID_ARGUMENT;
	memset(out, 0, sizeof(*out));
	const cli_mstats *ms = &ch->mst[i];
	out->method = &ch->svc->methods[i];
	for (size_t c = 0; c < ASYNQ_STATUS_COUNT; c++)
		out->codes[c] =
		    atomic_load_explicit(&ms->codes[c], memory_order_relaxed);
	cli_hist_get(&ms->latency, asynqi_latency_bounds,
	    asynqi_n_latency_bounds, &out->latency_ns);
	cli_hist_get(&ms->cpr, asynqi_cpr_bounds, asynqi_n_cpr_bounds,
	    &out->calls_per_request);
	return ASYNQ_OK;
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
	out->refused = atomic_load(&c->refused);
	out->retries = atomic_load(&c->retries);
	out->sent_calls = atomic_load(&c->sent_calls);
	out->collapsed = atomic_load(&c->collapsed);
	out->cached = atomic_load(&c->cached);
	out->throttled = atomic_load(&c->throttled);
}
