/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target rpc_server: the whole server path for one untrusted request.
 * An asynq RPC server serving asynq.fuzz.Fuzz (fuzz_service.c) runs on a
 * two-worker runtime over inproc://, started once; each input goes to it as
 * the raw body of one nng request from a plain REQ socket, so it is decoded
 * on an nng thread, checked against the limits, dispatched to tasks on the
 * workers and answered exactly as a request from the network would be.
 *
 * Design notes:
 * - What must hold for every input: the server answers within
 *   FUZZ_RECV_TIMEOUT_MS with a body that decodes as asynq.rpc.Reply (only
 *   an input more than 64 bytes over FUZZ_MAX_MSG_BYTES may go unanswered,
 *   where nng enforces its size limit; inproc does not), and the answer
 *   agrees with the input: over max_msg_bytes or max_calls it is
 *   RESOURCE_EXHAUSTED; a request protobuf-c rejects is never answered OK;
 *   an OK answer echoes the request_id and has one result per call,
 *   matched by call_id, with a valid status; unknown methods are
 *   UNIMPLEMENTED; a past deadline fails calls with DEADLINE_EXCEEDED, and
 *   without one no call fails so (but by its handler's choice); a payload
 *   protobuf-c decodes is never called malformed; no decoded payload nests
 *   deeper than FUZZ_MAX_DEPTH; Fail, Wrong and Sleep (deadline, per-call
 *   then request metadata) answer as their handlers say. Each request
 *   reaches the server exactly once (its counters), and a canary request is
 *   still served after failed answers. A broken rule aborts, so libFuzzer
 *   saves the input; ASan, UBSan and LSan check memory.
 * - Duplicate detection makes the server's answer depend on earlier inputs:
 *   a request with a client_id may get the remembered reply of an earlier
 *   one with the same (client_id, request_id), and its non-idempotent calls
 *   may fail ABORTED. The harness allows ABORTED there, and accepts an
 *   answer that fails the other checks only if it is byte for byte a reply
 *   it received for that key within the server's dedup age (the server is
 *   configured to forget after FUZZ_DEDUP_AGE_MS). A crash that depends on
 *   that state may need the inputs before it to reproduce.
 * - The harness decodes the input itself with protobuf-c only as an
 *   asynq.rpc.Request (which nests two levels) and payloads only of flat
 *   types (Num, Leaf): decoding a hostile recursive message on this thread
 *   would overflow the harness's own stack.
 * - Only this thread talks to the REQ socket, and libFuzzer runs inputs one
 *   at a time, so the server sees one request at a time (REQ resends are
 *   pushed out to an hour).
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/protocol/reqrep0/req.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "proto/asynq/rpc.pb-c.h"
#include "tests/fuzz/fuzz_service.h"

/* How long a request may go unanswered before it counts as a hang. */
#define FUZZ_RECV_TIMEOUT_MS 10000

static struct {
	asynq_runtime *rt;
	asynq_rpc_server *srv;
	nng_socket req;
	nng_ctx ctx[2]; /* two requests of the REQ socket may be in flight */
	nng_aio *aio[2];
	bool up;
	bool verbose; /* FUZZ_VERBOSE=1: a line per input */
	uint8_t *canary;
	size_t canary_len;
	/* Outcomes, printed at exit. */
	uint64_t inputs, by_status[ASYNQ_STATUS_COUNT], dropped, replayed,
	    canaries;
	uint64_t sent;         /* requests sent */
	unsigned since_canary; /* failed answers since the last canary */
} fz;

static void __attribute__((noreturn, format(printf, 3, 4)))
fz_fail(const uint8_t *data, size_t len, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "\nrpc_server fuzz: ");
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (input of %zu bytes:", len);
	for (size_t i = 0; i < len && i < 64; i++)
		fprintf(stderr, " %02x", data[i]);
	fprintf(stderr, "%s)\n", len > 64 ? " ..." : "");
	abort();
}

static int64_t
realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static const asynq_rpc_method_desc *
method_of(const char *name)
{
	for (size_t i = 0; i < FUZZ_SVC->n_methods; i++)
		if (strcmp(FUZZ_SVC->methods[i].full_name, name) == 0)
			return &FUZZ_SVC->methods[i];
	return NULL;
}

/* ---- Replies the server may replay ----------------------------------------
 * A request with a client_id may be answered with the remembered reply of an
 * earlier request with the same (client_id, request_id) instead of its own.
 * The harness remembers the hash of every reply to such a request for as long
 * as the server may replay it (FUZZ_DEDUP_AGE_MS after it was received, plus
 * a margin), and accepts a reply that fails the checks of a fresh answer only
 * if it is one of those.
 */

#define SEEN_BUCKETS 4096
#define SEEN_KEEP_NS ((int64_t)(FUZZ_DEDUP_AGE_MS + 500) * 1000000)

typedef struct seen {
	uint64_t client_id, request_id, hash;
	int64_t at_ns; /* monotonic, when received */
	struct seen *next;
} seen;

static seen *seen_tab[SEEN_BUCKETS];

static seen **
seen_bucket(uint64_t client_id, uint64_t request_id)
{
	uint64_t h = (client_id ^ request_id * 0x9e3779b97f4a7c15u) *
	    0xbf58476d1ce4e5b9u;
	return &seen_tab[h >> 52 & (SEEN_BUCKETS - 1)];
}

/* Whether the reply hashed h was received for the key and may be
 * replayed; forgets the expired entries of the bucket. */
static bool
seen_match(uint64_t client_id, uint64_t request_id, uint64_t h)
{
	int64_t now = (int64_t)asynq_now_ns();
	bool found = false;
	for (seen **p = seen_bucket(client_id, request_id); *p != NULL;) {
		seen *e = *p;
		if (now - e->at_ns > SEEN_KEEP_NS) {
			*p = e->next;
			free(e);
			continue;
		}
		if (e->client_id == client_id && e->request_id == request_id &&
		    e->hash == h)
			found = true;
		p = &e->next;
	}
	return found;
}

static void
seen_add(uint64_t client_id, uint64_t request_id, uint64_t h)
{
	seen *e = malloc(sizeof(*e));
	if (e == NULL)
		abort();
	seen **b = seen_bucket(client_id, request_id);
	*e = (seen){ client_id, request_id, h, (int64_t)asynq_now_ns(), *b };
	*b = e;
}

static void
seen_clear(void)
{
	for (size_t i = 0; i < SEEN_BUCKETS; i++)
		while (seen_tab[i] != NULL) {
			seen *e = seen_tab[i];
			seen_tab[i] = e->next;
			free(e);
		}
}

static void
fz_stop(void)
{
	if (!fz.up)
		return;
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(fz.srv, &ss);
	fz.up = false;
	nng_close(fz.req);
	nng_aio_free(fz.aio[0]);
	nng_aio_free(fz.aio[1]);
	asynq_rpc_server_free(fz.srv);
	asynq_runtime_free(fz.rt);
	asynq_thread_fini();
	free(fz.canary);
	seen_clear();
	fprintf(stderr,
	    "rpc_server fuzz: %llu inputs; answered OK %llu, "
	    "INVALID_ARGUMENT %llu, RESOURCE_EXHAUSTED %llu; dropped %llu; "
	    "replayed by dedup %llu; canaries %llu; server: %llu requests, "
	    "%llu calls run, %llu rejected, %llu malformed, %llu duplicates\n",
	    (unsigned long long)fz.inputs,
	    (unsigned long long)fz.by_status[ASYNQ_OK],
	    (unsigned long long)fz.by_status[ASYNQ_INVALID_ARGUMENT],
	    (unsigned long long)fz.by_status[ASYNQ_RESOURCE_EXHAUSTED],
	    (unsigned long long)fz.dropped, (unsigned long long)fz.replayed,
	    (unsigned long long)fz.canaries, (unsigned long long)ss.requests,
	    (unsigned long long)ss.calls, (unsigned long long)ss.rejected,
	    (unsigned long long)ss.malformed,
	    (unsigned long long)ss.duplicates);
}

/* The canary: a Sum call, a Count call and a call of an unknown method. */
static void
canary_make(void)
{
	Asynq__Fuzz__Num num = ASYNQ__FUZZ__NUM__INIT;
	num.v = 1;
	Asynq__Fuzz__Tree tree = ASYNQ__FUZZ__TREE__INIT;
	tree.v = 2;
	uint8_t nb[16], tb[16];
	size_t nl = asynq__fuzz__num__pack(&num, nb);
	size_t tl = asynq__fuzz__tree__pack(&tree, tb);
	Asynq__Rpc__Call c[3] = { ASYNQ__RPC__CALL__INIT,
		ASYNQ__RPC__CALL__INIT, ASYNQ__RPC__CALL__INIT };
	c[0].method = (char *)FUZZ_METHOD(SUM)->full_name;
	c[0].call_id = 1;
	c[0].payload = (ProtobufCBinaryData){ nl, nb };
	c[1].method = (char *)FUZZ_METHOD(COUNT)->full_name;
	c[1].call_id = 2;
	c[1].payload = (ProtobufCBinaryData){ tl, tb };
	c[2].method = "asynq.fuzz.Absent/Gone";
	c[2].call_id = 3;
	Asynq__Rpc__Call *cp[3] = { &c[0], &c[1], &c[2] };
	Asynq__Rpc__Request rq = ASYNQ__RPC__REQUEST__INIT;
	rq.n_calls = 3;
	rq.calls = cp;
	rq.request_id = 77;
	fz.canary_len = asynq__rpc__request__get_packed_size(&rq);
	fz.canary = malloc(fz.canary_len);
	if (fz.canary == NULL)
		abort();
	asynq__rpc__request__pack(&rq, fz.canary);
}

static void
fz_start(void)
{
	asynq_runtime_cfg rcfg = { .workers = 2 };
	asynq_rpc_server_cfg scfg = {
		.max_msg_bytes = FUZZ_MAX_MSG_BYTES,
		.max_calls = FUZZ_MAX_CALLS,
		.max_inflight_calls = FUZZ_MAX_INFLIGHT,
		.decode_budget = FUZZ_DECODE_BUDGET,
		.dedup_entries = FUZZ_DEDUP_ENTRIES,
		.dedup_age_ms = FUZZ_DEDUP_AGE_MS,
		.dedup_bytes = FUZZ_DEDUP_BYTES,
	};
	char url[64];
	snprintf(url, sizeof(url), "inproc://asynq-fuzz-%d", (int)getpid());
	if (asynq_runtime_alloc(&fz.rt, &rcfg) != ASYNQ_OK ||
	    asynq_rpc_server_alloc(&fz.srv, fz.rt, &scfg) != ASYNQ_OK ||
	    asynq_rpc_server_add_service(fz.srv, FUZZ_SVC, fuzz_handlers,
	        NULL) != ASYNQ_OK ||
	    asynq_rpc_server_listen(fz.srv, url) != ASYNQ_OK) {
		fprintf(stderr, "rpc_server fuzz: cannot start the server\n");
		abort();
	}
	int rv;
	if ((rv = nng_req0_open(&fz.req)) != 0 ||
	    (rv = nng_socket_set_ms(fz.req, NNG_OPT_RECVTIMEO,
	         FUZZ_RECV_TIMEOUT_MS)) != 0 ||
	    (rv = nng_socket_set_ms(fz.req, NNG_OPT_REQ_RESENDTIME,
	         3600 * 1000)) != 0 ||
	    (rv = nng_dial(fz.req, url, NULL, 0)) != 0) {
		fprintf(stderr, "rpc_server fuzz: REQ socket: %s\n",
		    nng_strerror(rv));
		abort();
	}
	for (size_t i = 0; i < 2; i++)
		if ((rv = nng_ctx_open(&fz.ctx[i], fz.req)) != 0 ||
		    (rv = nng_ctx_set_ms(fz.ctx[i], NNG_OPT_REQ_RESENDTIME,
		         3600 * 1000)) != 0 ||
		    (rv = nng_aio_alloc(&fz.aio[i], NULL, NULL)) != 0) {
			fprintf(stderr, "rpc_server fuzz: REQ context: %s\n",
			    nng_strerror(rv));
			abort();
		}
	canary_make();
	fz.verbose = getenv("FUZZ_VERBOSE") != NULL;
	fz.up = true;
	atexit(fz_stop);
}

int
LLVMFuzzerInitialize(int *argc, char ***argv)
{
	(void)argc;
	(void)argv;
	fz_start();
	return 0;
}

/* Sends data as a request on n (1 or 2) contexts at once and waits for
 * the answers: rv[i] is 0 with the decoded reply in rep[i] and a hash of
 * its bytes in hash[i], or an nng error (NNG_ETIMEDOUT: no answer). */
static void
exchange(const uint8_t *data, size_t len, size_t n, int *rv,
    Asynq__Rpc__Reply **rep, uint64_t *hash)
{
	for (size_t i = 0; i < n; i++) {
		nng_msg *m;
		if (nng_msg_alloc(&m, len) != 0)
			abort();
		if (len > 0)
			memcpy(nng_msg_body(m), data, len);
		nng_aio_set_msg(fz.aio[i], m);
		nng_aio_set_timeout(fz.aio[i], FUZZ_RECV_TIMEOUT_MS);
		nng_ctx_send(fz.ctx[i], fz.aio[i]);
	}
	for (size_t i = 0; i < n; i++) {
		nng_aio_wait(fz.aio[i]);
		int r = nng_aio_result(fz.aio[i]);
		if (r != 0) {
			nng_msg_free(nng_aio_get_msg(fz.aio[i]));
			fz_fail(data, len, "send: %s", nng_strerror(r));
		}
		fz.sent++;
	}
	for (size_t i = 0; i < n; i++)
		nng_ctx_recv(fz.ctx[i], fz.aio[i]);
	for (size_t i = 0; i < n; i++) {
		rep[i] = NULL;
		nng_aio_wait(fz.aio[i]);
		if ((rv[i] = nng_aio_result(fz.aio[i])) != 0)
			continue;
		nng_msg *m = nng_aio_get_msg(fz.aio[i]);
		const uint8_t *b = nng_msg_body(m);
		size_t bl = nng_msg_len(m);
		rep[i] = asynq__rpc__reply__unpack(NULL, bl, b);
		uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */
		for (size_t k = 0; k < bl; k++)
			h = (h ^ b[k]) * 0x100000001b3u;
		hash[i] = h;
		nng_msg_free(m);
		if (rep[i] == NULL)
			fz_fail(data, len,
			    "the %zu-byte answer is not an asynq.rpc.Reply",
			    bl);
	}
}

static void
canary(void)
{
	Asynq__Rpc__Reply *rep = NULL;
	fz.canaries++;
	fz.since_canary = 0;
	uint64_t hash;
	int rv;
	exchange(fz.canary, fz.canary_len, 1, &rv, &rep, &hash);
	if (rv != 0)
		fz_fail(fz.canary, fz.canary_len,
		    "the server stopped serving: canary: %s", nng_strerror(rv));
	if (rep->status != ASYNQ_OK || rep->n_results != 3 ||
	    rep->request_id != 77)
		fz_fail(fz.canary, fz.canary_len,
		    "canary answered status %d with %zu results",
		    (int)rep->status, rep->n_results);
	for (size_t i = 0; i < 3; i++) {
		const Asynq__Rpc__Result *r = rep->results[i];
		int want = r->call_id == 3 ? ASYNQ_UNIMPLEMENTED : ASYNQ_OK;
		if (r->status != want)
			fz_fail(fz.canary, fz.canary_len,
			    "canary call %llu answered %d",
			    (unsigned long long)r->call_id, (int)r->status);
	}
	asynq__rpc__reply__free_unpacked(rep, NULL);
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* ---- Checks of a fresh answer --------------------------------------------
 * Each returns true, or false with the broken rule in `why`.
 */

static char why[512];

#define BROKEN(...)                                                            \
	do {                                                                   \
		snprintf(why, sizeof(why), __VA_ARGS__);                       \
		return false;                                                  \
	} while (0)

/* The metadata value a unary handler of call c sees for key, as
 * asynq_rpc_metadata_get finds it: the call's own, then the request's. */
static const Asynq__Rpc__Metadata *
md_lookup(const Asynq__Rpc__Request *rq, const Asynq__Rpc__Call *c,
    const char *key)
{
	for (size_t k = 0; k < c->n_metadata; k++)
		if (strcmp(c->metadata[k]->key, key) == 0)
			return c->metadata[k];
	for (size_t k = 0; k < rq->n_metadata; k++)
		if (strcmp(rq->metadata[k]->key, key) == 0)
			return rq->metadata[k];
	return NULL;
}

/* Checks the result r of call c (whose call_id is unique). */
static bool
check_call(const Asynq__Rpc__Request *rq, const Asynq__Rpc__Call *c,
    const Asynq__Rpc__Result *r, bool past, bool future)
{
	const asynq_rpc_method_desc *m = method_of(c->method);
	int st = r->status;
	if (m == NULL) {
		if (st != ASYNQ_UNIMPLEMENTED)
			BROKEN("unknown method \"%s\" answered %d", c->method,
			    st);
		return true;
	}
	/* Non-idempotent calls of a request that may be a copy (it has a
	 * client_id) fail ABORTED when the server cannot tell whether they
	 * ran; a decode error comes before that. */
	bool may_abort = rq->client_id != 0 && !m->idempotent;
	bool decode_err =
	    st == ASYNQ_INVALID_ARGUMENT || st == ASYNQ_RESOURCE_EXHAUSTED;
	bool by_handler = m == FUZZ_METHOD(FAIL) || m == FUZZ_METHOD(SUM);
	if (st == ASYNQ_ABORTED && may_abort)
		return true;
	if (past && st != ASYNQ_DEADLINE_EXCEEDED && !decode_err)
		BROKEN("call of %s with a past deadline answered %d",
		    m->full_name, st);
	if (future && st == ASYNQ_DEADLINE_EXCEEDED && !by_handler)
		BROKEN("call of %s without a past deadline answered "
		       "DEADLINE_EXCEEDED",
		    m->full_name);
	/* Payloads of flat types are safe to decode here. */
	ProtobufCMessage *in = NULL;
	if (m->input == &asynq__fuzz__num__descriptor ||
	    m->input == &asynq__fuzz__leaf__descriptor) {
		in = protobuf_c_message_unpack(m->input, NULL, c->payload.len,
		    c->payload.data);
		if (in == NULL && !decode_err)
			BROKEN("malformed payload of %s answered %d",
			    m->full_name, st);
		if (in != NULL && st == ASYNQ_INVALID_ARGUMENT && !by_handler) {
			protobuf_c_message_free_unpacked(in, NULL);
			BROKEN("well-formed payload of %s called malformed",
			    m->full_name);
		}
	}
	const Asynq__Fuzz__Num *num = m->input == &asynq__fuzz__num__descriptor
	    ? (const Asynq__Fuzz__Num *)in
	    : NULL;
	bool ok = true;
	if (num != NULL && !past && m == FUZZ_METHOD(FAIL) &&
	    st != (int)(1 + (uint64_t)num->v % 16) &&
	    st != ASYNQ_RESOURCE_EXHAUSTED) {
		snprintf(why, sizeof(why), "Fail(%lld) answered %d",
		    (long long)num->v, st);
		ok = false;
	}
	if (num != NULL && !past && m == FUZZ_METHOD(WRONG) &&
	    num->v % 2 != 0 && st != ASYNQ_INTERNAL &&
	    st != ASYNQ_RESOURCE_EXHAUSTED) {
		snprintf(why, sizeof(why), "Wrong(%lld) answered %d",
		    (long long)num->v, st);
		ok = false;
	}
	if (in != NULL)
		protobuf_c_message_free_unpacked(in, NULL);
	if (!ok || st != ASYNQ_OK)
		return ok;
	if (m != FUZZ_METHOD(COUNT) && m != FUZZ_METHOD(OLD) &&
	    m != FUZZ_METHOD(SLEEP))
		return true;
	Asynq__Fuzz__Num *out =
	    asynq__fuzz__num__unpack(NULL, r->payload.len, r->payload.data);
	if (out == NULL)
		BROKEN("%s replied garbage", m->full_name);
	if (m != FUZZ_METHOD(SLEEP)) {
		if (out->w < 1 || out->w > FUZZ_MAX_DEPTH) {
			snprintf(why, sizeof(why),
			    "%s decoded a payload %lld deep (limit %d)",
			    m->full_name, (long long)out->w, FUZZ_MAX_DEPTH);
			ok = false;
		}
	} else if (out->v != (rq->deadline_unix_ns != 0)) {
		snprintf(why, sizeof(why),
		    "Sleep saw deadline %lld; request "
		    "has %lld",
		    (long long)out->v, (long long)rq->deadline_unix_ns);
		ok = false;
	} else {
		/* The handler replies the "tag" value up to its first NUL,
		 * as strndup copies it. */
		const Asynq__Rpc__Metadata *md = md_lookup(rq, c, "tag");
		const char *tag = md != NULL && md->value.len > 0
		    ? (const char *)md->value.data
		    : "";
		size_t tl = md != NULL ? strnlen(tag, md->value.len) : 0;
		if (strlen(out->s) != tl || memcmp(out->s, tag, tl) != 0) {
			snprintf(why, sizeof(why), "Sleep saw tag \"%s\"",
			    out->s);
			ok = false;
		}
	}
	asynq__fuzz__num__free_unpacked(out, NULL);
	return ok;
}

/* Checks an OK reply against the calls of the request. */
static bool
check_results(const Asynq__Rpc__Request *rq, const Asynq__Rpc__Reply *rep,
    int64_t sent_ns, int64_t answered_ns)
{
	size_t n = rq->n_calls;
	if (rep->n_results != n)
		BROKEN("%zu calls answered with %zu results", n,
		    rep->n_results);
	uint64_t *a = malloc((2 * n + 1) * sizeof(*a)), *b = a + n;
	if (a == NULL)
		abort();
	for (size_t i = 0; i < n; i++) {
		a[i] = rq->calls[i]->call_id;
		b[i] = rep->results[i]->call_id;
	}
	qsort(a, n, sizeof(*a), cmp_u64);
	qsort(b, n, sizeof(*b), cmp_u64);
	bool same = n == 0 || memcmp(a, b, n * sizeof(*a)) == 0;
	free(a);
	if (!same)
		BROKEN("the results' call_ids are not the calls'");
	for (size_t i = 0; i < n; i++) {
		const Asynq__Rpc__Result *r = rep->results[i];
		if (r->status < 0 || r->status >= ASYNQ_STATUS_COUNT)
			BROKEN("result status %d", (int)r->status);
		if (r->status != ASYNQ_OK && r->payload.len != 0)
			BROKEN("failed call with a payload");
		if (r->status == ASYNQ_OK && r->message[0] != '\0')
			BROKEN("OK call with message \"%s\"", r->message);
	}
	int64_t dl = rq->deadline_unix_ns;
	bool past = dl != 0 && dl <= sent_ns;
	bool future = dl == 0 || dl > answered_ns;
	for (size_t i = 0; i < n; i++) {
		const Asynq__Rpc__Call *c = rq->calls[i];
		const Asynq__Rpc__Result *r = NULL;
		size_t count = 0;
		for (size_t j = 0; j < n; j++)
			if (rep->results[j]->call_id == c->call_id) {
				r = rep->results[j];
				count++;
			}
		/* A repeated call_id is only counted (above). */
		if (count == 1 && !check_call(rq, c, r, past, future))
			return false;
	}
	return true;
}

/* Checks the answer to a request as a fresh one. */
static bool
check_reply(size_t len, const Asynq__Rpc__Request *rq,
    const Asynq__Rpc__Reply *rep, int64_t sent_ns, int64_t answered_ns)
{
	int st = rep->status;
	if (st != ASYNQ_OK && (rep->n_results != 0 || rep->message[0] == '\0'))
		BROKEN("request-level %d with %zu results and message \"%s\"",
		    st, rep->n_results, rep->message);
	if (len > FUZZ_MAX_MSG_BYTES) {
		if (st != ASYNQ_RESOURCE_EXHAUSTED)
			BROKEN("a request over max_msg_bytes answered %d", st);
		return true;
	}
	if (rq == NULL) {
		if (st != ASYNQ_INVALID_ARGUMENT &&
		    st != ASYNQ_RESOURCE_EXHAUSTED)
			BROKEN("a request protobuf-c rejects answered %d", st);
		return true;
	}
	if (rq->n_calls > FUZZ_MAX_CALLS) {
		if (st != ASYNQ_RESOURCE_EXHAUSTED ||
		    rep->request_id != rq->request_id)
			BROKEN("%zu calls (limit %d) answered %d for id %llu",
			    rq->n_calls, FUZZ_MAX_CALLS, st,
			    (unsigned long long)rep->request_id);
		return true;
	}
	if (st == ASYNQ_RESOURCE_EXHAUSTED)
		return true; /* decode budget or calls in flight */
	if (st != ASYNQ_OK)
		BROKEN("a well-formed request answered %d", st);
	if (rep->request_id != rq->request_id)
		BROKEN("request_id %llu answered as %llu",
		    (unsigned long long)rq->request_id,
		    (unsigned long long)rep->request_id);
	return check_results(rq, rep, sent_ns, answered_ns);
}

/* Judges answer i to the input; returns its status, or -1 if dropped. */
static int
judge(const uint8_t *data, size_t len, const Asynq__Rpc__Request *rq, int rv,
    const Asynq__Rpc__Reply *rep, uint64_t hash, int64_t sent, int64_t answered)
{
	if (rv == NNG_ETIMEDOUT && len > FUZZ_MAX_MSG_BYTES + 64) {
		/* Where nng enforces the size limit, it drops the request. */
		if (fz.verbose)
			fprintf(stderr, "rpc_server fuzz: %zu bytes: dropped\n",
			    len);
		fz.dropped++;
		return -1;
	}
	if (rv != 0)
		fz_fail(data, len, "no answer: %s", nng_strerror(rv));
	int st = rep->status;
	if (fz.verbose)
		fprintf(stderr,
		    "rpc_server fuzz: %zu bytes: %s (%zu results) %s\n", len,
		    asynq_status_name((asynq_status)st), rep->n_results,
		    rep->message);
	if (st < 0 || st >= ASYNQ_STATUS_COUNT)
		fz_fail(data, len, "reply status %d", st);
	fz.by_status[st]++;
	bool dedup = rq != NULL && rq->client_id != 0;
	if (!check_reply(len, rq, rep, sent, answered)) {
		if (!dedup || !seen_match(rq->client_id, rq->request_id, hash))
			fz_fail(data, len, "%s", why);
		fz.replayed++;
	}
	if (dedup)
		seen_add(rq->client_id, rq->request_id, hash);
	return st;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	if (!fz.up)
		fz_start();
	fz.inputs++;
	Asynq__Rpc__Request *rq = asynq__rpc__request__unpack(NULL, len, data);
	/* A request that takes part in duplicate detection goes twice at
	 * once, so the copy may find the original running. */
	size_t n = rq != NULL && rq->client_id != 0 ? 2 : 1;
	Asynq__Rpc__Reply *rep[2] = { NULL, NULL };
	uint64_t hash[2] = { 0, 0 };
	int rv[2];
	int64_t sent = realtime_ns();
	exchange(data, len, n, rv, rep, hash);
	int64_t answered = realtime_ns();
	bool failed = false;
	for (size_t i = 0; i < n; i++) {
		int st = judge(data, len, rq, rv[i], rep[i], hash[i], sent,
		    answered);
		if (st == -1)
			fz.since_canary = 16; /* dropped: check at once */
		failed |= st != ASYNQ_OK;
	}
	/* Each request sent reached the server once. */
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(fz.srv, &ss);
	if (ss.requests != fz.sent)
		fz_fail(data, len, "%llu requests sent, server received %llu",
		    (unsigned long long)fz.sent,
		    (unsigned long long)ss.requests);
	/* A well-formed request is still served after failures (every
	 * 16th, to keep the pace). */
	if (failed && ++fz.since_canary >= 16)
		canary();
	for (size_t i = 0; i < n; i++)
		if (rep[i] != NULL)
			asynq__rpc__reply__free_unpacked(rep[i], NULL);
	if (rq != NULL)
		asynq__rpc__request__free_unpacked(rq, NULL);
	return 0;
}
