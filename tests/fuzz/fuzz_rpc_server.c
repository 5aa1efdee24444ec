/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target rpc_server: the whole server path for one untrusted request.
 * An asynq RPC server serving asynq.fuzz.Fuzz (fuzz_service.c) runs on a
 * two-worker runtime, listening on an ipc:// socket, started once; the
 * harness keeps two live connections to it (fuzz_wire.c: a plain socket,
 * the preface and HELLO handshake, then a METHODS frame naming the table
 * of fuzz_method_id_name) and sends each input as the body of one REQUEST
 * frame, so it is cut from the stream and decoded on an nng thread,
 * checked against the limits, dispatched to tasks on the workers (methods
 * named by number as well as by name) and answered exactly as a request
 * from the network would be.
 *
 * Design notes:
 * - What must hold for every input: the server answers within
 *   FUZZ_RECV_TIMEOUT_MS with one REPLY frame whose body decodes as
 *   asynq.rpc.Reply, and sends nothing else (only an input longer than
 *   FUZZ_MAX_FRAME goes unanswered: the server must close the connection,
 *   and the harness opens a new one), and the answer agrees with the
 *   input: over max_msg_bytes or max_calls it is RESOURCE_EXHAUSTED; a
 *   request protobuf-c rejects is never answered OK; a request protobuf-c
 *   decodes has its request_id echoed, whatever the status; an OK answer
 *   has one result per call, matched by call_id, with a valid status;
 *   unknown methods (by name, or by a number the connection's table lacks
 *   or names a method the server lacks) are UNIMPLEMENTED; a past
 *   deadline fails calls with DEADLINE_EXCEEDED, and without one (or with
 *   a timeout_us longer than the exchange) no call fails so (but by its
 *   handler's choice; a shorter timeout may cut any call short); a payload
 * protobuf-c decodes is never called malformed; no decoded payload nests deeper
 * than FUZZ_MAX_DEPTH; Fail, Wrong and Sleep (deadline, per-call then request
 * metadata) answer as their handlers say. Each request reaches the server
 * exactly once (its counters), and a canary request is still served after
 * failed answers. A broken rule aborts, so libFuzzer saves the input; ASan,
 * UBSan and LSan check memory.
 * - Duplicate detection makes the server's answer depend on earlier inputs:
 *   a request with a client_id may get the remembered reply of an earlier
 *   one with the same (client_id, request_id), and its non-idempotent calls
 *   may fail ABORTED. The harness allows ABORTED there, and accepts an
 *   answer that fails the other checks only if it is byte for byte a reply
 *   it received for that key within the server's dedup age (the server is
 *   configured to forget after FUZZ_DEDUP_AGE_MS). A crash that depends on
 *   that state may need the inputs before it to reproduce.
 * - A request that takes part in duplicate detection is sent twice at
 *   once, so that the copy may find the original running: both frames in
 *   one write on one connection when its request_id is even, one on each
 *   connection when it is odd (a copy parked on another connection).
 * - The harness decodes the input itself with protobuf-c only as an
 *   asynq.rpc.Request (which nests two levels) and payloads only of flat
 *   types (Num, Leaf): decoding a hostile recursive message on this thread
 *   would overflow the harness's own stack.
 * - Only this thread writes to the connections, and libFuzzer runs inputs
 *   one at a time, so the server sees at most two requests at a time.
 */
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "proto/asynq/rpc.pb-c.h"
#include "tests/fuzz/fuzz_service.h"
#include "tests/fuzz/fuzz_wire.h"

/* How long a request may go unanswered before it counts as a hang. */
#define FUZZ_RECV_TIMEOUT_MS 10000

static struct {
	fuzz_server fs;
	fuzz_conn c[2]; /* live connections, handshake and METHODS done */
	bool up;
	bool verbose; /* FUZZ_VERBOSE=1: a line per input */
	uint8_t *canary;
	size_t canary_len;
	/* Outcomes, printed at exit. */
	uint64_t inputs, by_status[ASYNQ_STATUS_COUNT], dropped, replayed,
	    canaries, by_id, reconnects;
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

/* The method a call names: by method_id through the connection's table
 * when it is set (the name is then ignored), else by name; NULL for one
 * the server lacks. */
static const asynq_rpc_method_desc *
call_method(const Asynq__Rpc__Call *c, const char **name)
{
	*name = c->method;
	if (c->method_id == 0)
		return method_of(c->method);
	*name = fuzz_method_id_name(c->method_id);
	if (*name == NULL) {
		*name = "(a number not in the table)";
		return NULL;
	}
	return method_of(*name);
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
	asynq_rpc_server_stats_get(fz.fs.srv, &ss);
	fz.up = false;
	fuzz_conn_close(&fz.c[0]);
	fuzz_conn_close(&fz.c[1]);
	fuzz_server_stop(&fz.fs);
	free(fz.canary);
	seen_clear();
	fprintf(stderr,
	    "rpc_server fuzz: %llu inputs; answered OK %llu, "
	    "INVALID_ARGUMENT %llu, RESOURCE_EXHAUSTED %llu; dropped %llu; "
	    "replayed by dedup %llu; canaries %llu; calls by number %llu; "
	    "reconnects %llu; server: %llu requests, %llu calls run, "
	    "%llu rejected, %llu malformed, %llu duplicates\n",
	    (unsigned long long)fz.inputs,
	    (unsigned long long)fz.by_status[ASYNQ_OK],
	    (unsigned long long)fz.by_status[ASYNQ_INVALID_ARGUMENT],
	    (unsigned long long)fz.by_status[ASYNQ_RESOURCE_EXHAUSTED],
	    (unsigned long long)fz.dropped, (unsigned long long)fz.replayed,
	    (unsigned long long)fz.canaries, (unsigned long long)fz.by_id,
	    (unsigned long long)fz.reconnects, (unsigned long long)ss.requests,
	    (unsigned long long)ss.calls, (unsigned long long)ss.rejected,
	    (unsigned long long)ss.malformed,
	    (unsigned long long)ss.duplicates);
}

/* Opens connection i (closing what is left of it). */
static void
conn_open(size_t i)
{
	char why[160];
	fuzz_conn_close(&fz.c[i]);
	if (fuzz_conn_open(&fz.c[i], &fz.fs, FUZZ_RECV_TIMEOUT_MS, why,
	        sizeof(why)) != 0) {
		fprintf(stderr, "rpc_server fuzz: cannot connect: %s\n", why);
		abort();
	}
}

static void
fz_start(void)
{
	fuzz_server_start(&fz.fs, "rpc_server");
	fz.c[0].fd = fz.c[1].fd = -1;
	conn_open(0);
	conn_open(1);
	fz.canary = fuzz_canary_body(&fz.canary_len);
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

/* Writes data as REQUEST frames: n copies on connection `on[i]` each, the
 * copies for one connection in one write. */
static void
send_requests(const uint8_t *data, size_t len, size_t n, const size_t *on)
{
	for (size_t k = 0; k < 2; k++) {
		size_t copies = 0;
		for (size_t i = 0; i < n; i++)
			copies += on[i] == k;
		if (copies == 0)
			continue;
		size_t fl = FUZZ_FRAME_HDR + len;
		uint8_t *b = malloc(copies * fl);
		if (b == NULL)
			abort();
		for (size_t i = 0; i < copies; i++) {
			fuzz_frame_hdr(b + i * fl, FUZZ_FRAME_REQUEST,
			    (uint32_t)len);
			if (len > 0)
				memcpy(b + i * fl + FUZZ_FRAME_HDR, data, len);
		}
		/* A write that fails means the server closed the
		 * connection; the read that follows tells. */
		(void)fuzz_conn_write(&fz.c[k], b, copies * fl);
		free(b);
	}
}

/* Reads the next REPLY on connection k: FUZZ_IO_OK with the decoded reply
 * in *rep and a hash of its bytes in *hash, or a FUZZ_IO_ code. Any other
 * frame breaks a rule (the server sends nothing unasked but for GOAWAY
 * when it closes, and the harness does not close it). */
static int
read_reply(const uint8_t *data, size_t len, size_t k, uint64_t deadline,
    Asynq__Rpc__Reply **rep, uint64_t *hash)
{
	uint8_t type, *b;
	size_t bl;
	*rep = NULL;
	int rv =
	    fuzz_conn_next(&fz.c[k], &type, &b, &bl, SIZE_MAX / 2, deadline);
	if (rv != FUZZ_IO_OK)
		return rv;
	if (type != FUZZ_FRAME_REPLY) {
		free(b);
		fz_fail(data, len,
		    "the server sent a frame of type %u, not a "
		    "REPLY",
		    type);
	}
	*rep = asynq__rpc__reply__unpack(NULL, bl, b);
	uint64_t h = 0xcbf29ce484222325u; /* FNV-1a */
	for (size_t i = 0; i < bl; i++)
		h = (h ^ b[i]) * 0x100000001b3u;
	*hash = h;
	free(b);
	if (*rep == NULL)
		fz_fail(data, len,
		    "the %zu-byte answer is not an asynq.rpc.Reply", bl);
	return FUZZ_IO_OK;
}

/* Sends data as a request n (1 or 2) times at once and waits for the
 * answers: rv[i] is FUZZ_IO_OK with the decoded reply in rep[i] and a hash
 * of its bytes in hash[i], or a FUZZ_IO_ code. */
static void
exchange(const uint8_t *data, size_t len, size_t n, uint64_t request_id,
    int *rv, Asynq__Rpc__Reply **rep, uint64_t *hash)
{
	size_t on[2] = { 0, n == 2 && request_id % 2 != 0 ? 1 : 0 };
	send_requests(data, len, n, on);
	fz.sent += n;
	uint64_t deadline =
	    asynq_now_ns() + (uint64_t)FUZZ_RECV_TIMEOUT_MS * 1000000;
	for (size_t i = 0; i < n; i++)
		rv[i] =
		    read_reply(data, len, on[i], deadline, &rep[i], &hash[i]);
}

static void
canary(void)
{
	Asynq__Rpc__Reply *rep = NULL;
	fz.canaries++;
	fz.since_canary = 0;
	uint64_t hash;
	int rv;
	exchange(fz.canary, fz.canary_len, 1, FUZZ_CANARY_ID, &rv, &rep, &hash);
	if (rv != FUZZ_IO_OK)
		fz_fail(fz.canary, fz.canary_len,
		    "the server stopped serving: canary: %s",
		    rv == FUZZ_IO_TIMEOUT ? "no answer" : "connection closed");
	const char *why = fuzz_canary_judge(rep);
	if (why != NULL)
		fz_fail(fz.canary, fz.canary_len, "%s (status %d, %zu results)",
		    why, (int)rep->status, rep->n_results);
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
 * asynq_rpc_metadata_get finds it: the call's own, then (unless the call's
 * metadata is its own) the request's. */
static const Asynq__Rpc__Metadata *
md_lookup(const Asynq__Rpc__Request *rq, const Asynq__Rpc__Call *c,
    const char *key)
{
	for (size_t k = 0; k < c->n_metadata; k++)
		if (strcmp(c->metadata[k]->key, key) == 0)
			return c->metadata[k];
	if (c->own_metadata)
		return NULL;
	for (size_t k = 0; k < rq->n_metadata; k++)
		if (strcmp(rq->metadata[k]->key, key) == 0)
			return rq->metadata[k];
	return NULL;
}

/* Whether the request carries a deadline (timeout_us first, as the server
 * reads it). */
static bool
has_deadline(const Asynq__Rpc__Request *rq)
{
	return rq->timeout_us != 0 || rq->deadline_unix_ns != 0;
}

/* Checks the result r of call c (whose call_id is unique). */
static bool
check_call(const Asynq__Rpc__Request *rq, const Asynq__Rpc__Call *c,
    const Asynq__Rpc__Result *r, bool past, bool future)
{
	const char *name;
	const asynq_rpc_method_desc *m = call_method(c, &name);
	int st = r->status;
	if (m == NULL) {
		if (st != ASYNQ_UNIMPLEMENTED)
			BROKEN("unknown method \"%s\" (method_id %u) answered "
			       "%d",
			    name, c->method_id, st);
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
	/* A deadline neither past nor future (a short timeout_us) may pass
	 * before the call runs, or while it runs. */
	bool dl_cut = !future && st == ASYNQ_DEADLINE_EXCEEDED;
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
	if (num != NULL && !past && !dl_cut && m == FUZZ_METHOD(FAIL) &&
	    st != (int)(1 + (uint64_t)num->v % 16) &&
	    st != ASYNQ_RESOURCE_EXHAUSTED) {
		snprintf(why, sizeof(why), "Fail(%lld) answered %d",
		    (long long)num->v, st);
		ok = false;
	}
	if (num != NULL && !past && !dl_cut && m == FUZZ_METHOD(WRONG) &&
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
	} else if (out->v != has_deadline(rq)) {
		snprintf(why, sizeof(why),
		    "Sleep saw deadline %lld; request has timeout_us %llu, "
		    "deadline_unix_ns %lld",
		    (long long)out->v, (unsigned long long)rq->timeout_us,
		    (long long)rq->deadline_unix_ns);
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
	/* The deadline: timeout_us, counted from when the request arrived
	 * (after sent_ns), else the absolute deadline_unix_ns. */
	bool past, future;
	if (rq->timeout_us != 0) {
		past = false;
		future = rq->timeout_us / 1000 >
		    (uint64_t)(answered_ns - sent_ns) / 1000000 + 1;
	} else {
		int64_t dl = rq->deadline_unix_ns;
		past = dl != 0 && dl <= sent_ns;
		future = dl == 0 || dl > answered_ns;
	}
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
	/* Even a request refused before it is decoded has its id found. */
	if (rq != NULL && rep->request_id != rq->request_id)
		BROKEN("request_id %llu answered as %llu (status %d)",
		    (unsigned long long)rq->request_id,
		    (unsigned long long)rep->request_id, st);
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
		if (st != ASYNQ_RESOURCE_EXHAUSTED)
			BROKEN("%zu calls (limit %d) answered %d", rq->n_calls,
			    FUZZ_MAX_CALLS, st);
		return true;
	}
	if (st == ASYNQ_RESOURCE_EXHAUSTED)
		return true; /* decode budget or calls in flight */
	if (st != ASYNQ_OK)
		BROKEN("a well-formed request answered %d", st);
	return check_results(rq, rep, sent_ns, answered_ns);
}

/* Judges answer i to the input; returns its status. */
static int
judge(const uint8_t *data, size_t len, const Asynq__Rpc__Request *rq, int rv,
    const Asynq__Rpc__Reply *rep, uint64_t hash, int64_t sent, int64_t answered)
{
	if (rv != FUZZ_IO_OK)
		fz_fail(data, len, "no answer: %s",
		    rv == FUZZ_IO_TIMEOUT ? "timed out" : "connection closed");
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

/* An input longer than a frame may be: the server must close the
 * connection without answering (it may not read the rest of it); the
 * harness then opens a new one. */
static void
too_long(const uint8_t *data, size_t len)
{
	size_t on = 0;
	send_requests(data, len, 1, &on);
	uint64_t deadline =
	    asynq_now_ns() + (uint64_t)FUZZ_RECV_TIMEOUT_MS * 1000000;
	uint8_t type, *b;
	size_t bl;
	int rv =
	    fuzz_conn_next(&fz.c[0], &type, &b, &bl, SIZE_MAX / 2, deadline);
	free(b);
	if (rv == FUZZ_IO_OK)
		fz_fail(data, len,
		    "a frame over the limit was answered (type %u)", type);
	if (rv == FUZZ_IO_TIMEOUT)
		fz_fail(data, len,
		    "a frame over the limit did not close the "
		    "connection");
	if (fz.verbose)
		fprintf(stderr, "rpc_server fuzz: %zu bytes: closed\n", len);
	fz.dropped++;
	fz.reconnects++;
	conn_open(0);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	if (!fz.up)
		fz_start();
	fz.inputs++;
	if (len > FUZZ_MAX_FRAME) {
		too_long(data, len);
		canary();
		return 0;
	}
	Asynq__Rpc__Request *rq = asynq__rpc__request__unpack(NULL, len, data);
	if (rq != NULL)
		for (size_t i = 0; i < rq->n_calls; i++)
			fz.by_id += rq->calls[i]->method_id != 0;
	/* A request that takes part in duplicate detection goes twice at
	 * once, so the copy may find the original running. */
	size_t n = rq != NULL && rq->client_id != 0 ? 2 : 1;
	Asynq__Rpc__Reply *rep[2] = { NULL, NULL };
	uint64_t hash[2] = { 0, 0 };
	int rv[2];
	int64_t sent = realtime_ns();
	exchange(data, len, n, rq != NULL ? rq->request_id : 0, rv, rep, hash);
	int64_t answered = realtime_ns();
	bool failed = false;
	for (size_t i = 0; i < n; i++)
		failed |= judge(data, len, rq, rv[i], rep[i], hash[i], sent,
		              answered) != ASYNQ_OK;
	/* Each request sent reached the server once. */
	uint64_t got = fuzz_server_requests(&fz.fs);
	if (got != fz.sent)
		fz_fail(data, len, "%llu requests sent, server received %llu",
		    (unsigned long long)fz.sent, (unsigned long long)got);
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
