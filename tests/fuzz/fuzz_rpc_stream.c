/* SPDX-License-Identifier: MIT */
/*
 * Fuzz target rpc_stream: arbitrary bytes on a live connection. The fuzz
 * server of fuzz_wire.c (asynq.fuzz.Fuzz, small limits) runs on a
 * two-worker runtime, listening on an ipc:// socket, started once. Each
 * input is written to a fresh connection, in chunks: its first byte says
 * how (below), the rest are the bytes, which may or may not start with the
 * preface and hold frames of any type and length, truncated ones, length
 * claims far over the limits, METHODS frames good and bad, requests good
 * and bad. Then the server must still be serving: a normal call on a
 * separate, fresh connection succeeds within FUZZ_RECV_TIMEOUT_MS.
 *
 * The first byte of an input:
 *   bits 0-1  opening: 0 the harness writes the preface, then the bytes;
 *             1 the preface and a METHODS frame naming the table of
 *             fuzz_method_id_name, then the bytes; 2 the bytes alone (a
 *             preface is theirs to get right); 3 the preface, then it waits
 *             for the server's preface and HELLO before the bytes;
 *   bits 2-4  chunks: 0 one write; 1, 2, 3, 4, 5: writes of 1, 2, 5, 13
 *             or 256 bytes; 6 pseudo-random sizes of 1 to 64 bytes; 7 at
 *             frame boundaries, each header apart from its body (small
 *             chunks stop after the first 4 KiB: the rest goes in 16 KiB
 *             writes, to keep the pace);
 *   bit 5     pad: a frame cut short by the end of the input is completed
 *             with zero bytes (up to FUZZ_MAX_FRAME), so that short inputs
 *             reach the frame-size limits;
 *   bits 6-7  ending: 0 wait for every answer; 1 shut the write side
 *             down and read until the server closes; 2 close at once, with
 *             requests perhaps in flight; 3 call the canary first, then
 *             wait as 0.
 *
 * Design notes:
 * - The harness models what the server must do with the bytes it writes
 *   (proto/asynq/rpc.proto, "Framing"), independently of the server's
 *   code: a wrong preface closes the connection with nothing written; a
 *   right one is answered with the server's preface and one HELLO; then
 *   frames are taken in order: a length over FUZZ_MAX_FRAME closes the
 *   connection as soon as its header is in; a METHODS frame that is
 *   malformed protobuf, or that takes the connection's table over
 *   FUZZ_MAX_METHOD_NAMES names, closes it; every complete REQUEST gets
 *   one REPLY (whose request_id is the request's when protobuf-c decodes
 *   it); every PING gets a PONG with its first 8 bytes, in order; other
 *   types are skipped. What the server writes is checked as it arrives:
 *   preface, HELLO first and once, then only REPLY and PONG frames, each
 *   as the model says, never more of them than the input asked for. When
 *   the model says the connection stays open, the harness waits until
 *   every answer is in, and the server must not close it; when it says
 *   closed, the server must close it (what it wrote before may be cut
 *   short). The server's request counter must grow by exactly the
 *   REQUEST frames it was given. The ending "close at once" waits until
 *   the server has read them all, then closes with their answers in
 *   flight.
 * - Memory must stay bounded: under ASan the heap in use may not grow more
 *   than FUZZ_MEM_SLACK over what it was after the first input (libFuzzer
 *   keeps its corpus in that heap too, hence the room), and run.sh sets
 *   libFuzzer's -malloc_limit_mb, so a single allocation the size of a
 *   length claim (a 1 GiB claim must not allocate 1 GiB) is a crash. A
 *   connection the server leaks shows up there (each holds its read
 *   buffer) and as a server that cannot close at exit.
 * - Requests inside the bytes take part in duplicate detection like any
 *   other, so an answer may depend on earlier inputs; the model counts
 *   answers and ids only, which that does not change.
 * - The custom mutator knows the layout: it changes the mode byte, frame
 *   types and lengths (to the limits and around them), inserts, deletes,
 *   repeats and swaps frames, truncates, and mutates the requests inside
 *   REQUEST frames with fuzz_mutate_request.
 * - Only this thread writes, and libFuzzer runs inputs one at a time.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sched.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/socket.h>
#include <unistd.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "proto/asynq/rpc.pb-c.h"
#include "tests/fuzz/fuzz_service.h"
#include "tests/fuzz/fuzz_wire.h"

/* How long the answers to one input, or a canary's, may take. */
#define FUZZ_RECV_TIMEOUT_MS 10000
/* Growth of the heap in use over its size after the first input. */
#define FUZZ_MEM_SLACK ((size_t)256 << 20)
/* Longest frame the server may write (a reply to a request of at most
 * FUZZ_MAX_MSG_BYTES). */
#define FUZZ_MAX_OUT_FRAME ((size_t)16 << 20)
/* Bytes written in small chunks before the rest goes in big ones. */
#define SMALL_CHUNKS_UPTO 4096
#define BIG_CHUNK 16384

/* The fields of the mode byte (FUZZ_STREAM_ in fuzz_service.h). */
enum {
	OPEN_PREFACE = FUZZ_STREAM_PREFACE,
	OPEN_METHODS = FUZZ_STREAM_METHODS,
	OPEN_RAW = FUZZ_STREAM_RAW,
	OPEN_HELLO = FUZZ_STREAM_HELLO,
};
enum {
	END_WAIT = FUZZ_STREAM_WAIT >> 6,
	END_SHUT = FUZZ_STREAM_SHUT >> 6,
	END_CLOSE = FUZZ_STREAM_CLOSE >> 6,
	END_CANARY_FIRST = FUZZ_STREAM_CANARY_FIRST >> 6,
};
#define MODE_OPENING(m) ((m)&3u)
#define MODE_CHUNKS(m) ((m) >> 2 & 7u)
#define MODE_PAD FUZZ_STREAM_PAD
#define MODE_ENDING(m) ((m) >> 6 & 3u)

/* The heap in use, where ASan can tell (0 elsewhere). */
size_t __sanitizer_get_current_allocated_bytes(void) __attribute__((weak));

static struct {
	fuzz_server fs;
	bool up;
	bool verbose; /* FUZZ_VERBOSE=1: a line per input */
	uint8_t *canary;
	size_t canary_len;
	size_t heap_base;  /* heap in use after the first input, or 0 */
	uint64_t requests; /* REQUEST frames the server must have read */
	/* Outcomes, printed at exit. */
	uint64_t inputs, by_opening[4], by_ending[4], closed_by_model,
	    bad_preface, bytes, replies, pongs, canaries, canaries_refused,
	    eofs;
} fz;

/* The input being run, for fz_fail. */
static const uint8_t *cur_data;
static size_t cur_len;

static void __attribute__((noreturn, format(printf, 1, 2)))
fz_fail(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "\nrpc_stream fuzz: ");
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (input of %zu bytes:", cur_len);
	for (size_t i = 0; i < cur_len && i < 64; i++)
		fprintf(stderr, " %02x", cur_data[i]);
	fprintf(stderr, "%s)\n", cur_len > 64 ? " ..." : "");
	abort();
}

static void
fz_stop(void)
{
	if (!fz.up)
		return;
	fz.up = false;
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(fz.fs.srv, &ss);
	fuzz_server_stop(&fz.fs);
	free(fz.canary);
	fprintf(stderr,
	    "rpc_stream fuzz: %llu inputs (%llu bytes); opening preface %llu, "
	    "methods %llu, raw %llu, hello %llu; ending wait %llu, shut "
	    "%llu, close %llu, canary first %llu; bad prefaces %llu, closes "
	    "expected %llu, closes seen %llu; answers: %llu replies, %llu "
	    "pongs; canaries %llu (%llu refused while the workers were full, "
	    "and sent again); server: %llu requests, %llu calls run, "
	    "%llu rejected, %llu malformed, %llu duplicates\n",
	    (unsigned long long)fz.inputs, (unsigned long long)fz.bytes,
	    (unsigned long long)fz.by_opening[0],
	    (unsigned long long)fz.by_opening[1],
	    (unsigned long long)fz.by_opening[2],
	    (unsigned long long)fz.by_opening[3],
	    (unsigned long long)fz.by_ending[0],
	    (unsigned long long)fz.by_ending[1],
	    (unsigned long long)fz.by_ending[2],
	    (unsigned long long)fz.by_ending[3],
	    (unsigned long long)fz.bad_preface,
	    (unsigned long long)fz.closed_by_model, (unsigned long long)fz.eofs,
	    (unsigned long long)fz.replies, (unsigned long long)fz.pongs,
	    (unsigned long long)fz.canaries,
	    (unsigned long long)fz.canaries_refused,
	    (unsigned long long)ss.requests, (unsigned long long)ss.calls,
	    (unsigned long long)ss.rejected, (unsigned long long)ss.malformed,
	    (unsigned long long)ss.duplicates);
}

static void
fz_start(void)
{
	fuzz_server_start(&fz.fs, "rpc_stream");
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

static uint32_t
be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
	    (uint32_t)p[2] << 8 | p[3];
}

/* ---- What the server must do ----------------------------------------------
 */

typedef struct model {
	bool preface_ok; /* the server answers with its preface and HELLO */
	bool closes;     /* the server closes the connection */
	const char *why; /* why it closes */
	size_t requests; /* complete REQUEST frames before any close */
	uint64_t *ids;   /* request_ids of those protobuf-c decodes */
	size_t n_ids;
	uint8_t (*pong)[8]; /* expected PONG bodies, in order */
	uint8_t *pong_len;
	size_t n_pongs;
	size_t names; /* the connection's method table */
} model;

static void
model_fini(model *m)
{
	free(m->ids);
	free(m->pong);
	free(m->pong_len);
}

static bool
get_varint(const uint8_t **p, const uint8_t *end, uint64_t *v)
{
	uint64_t x = 0;
	for (unsigned shift = 0; shift < 70; shift += 7) {
		if (*p >= end)
			return false;
		uint8_t b = *(*p)++;
		x |= (uint64_t)(b & 0x7f) << shift;
		if ((b & 0x80) == 0) {
			*v = x;
			return true;
		}
	}
	return false;
}

/* A METHODS body: false when it is not well-formed protobuf (a truncated
 * varint or length, a group, wire type 6 or 7, field number 0 or past 32
 * bits) or its names (field 7) take the table over the limit. */
static bool
methods_take(model *m, const uint8_t *p, size_t len)
{
	const uint8_t *end = p + len;
	while (p < end) {
		uint64_t key, v;
		if (!get_varint(&p, end, &key) || key >> 3 == 0 ||
		    key >> 3 > UINT32_MAX)
			return false;
		switch (key & 7) {
		case 0:
			if (!get_varint(&p, end, &v))
				return false;
			break;
		case 1:
			if (end - p < 8)
				return false;
			p += 8;
			break;
		case 5:
			if (end - p < 4)
				return false;
			p += 4;
			break;
		case 2:
			if (!get_varint(&p, end, &v) || v > (uint64_t)(end - p))
				return false;
			p += v;
			if (key >> 3 == 7 &&
			    m->names++ >= FUZZ_MAX_METHOD_NAMES)
				return false;
			break;
		default:
			return false;
		}
	}
	return true;
}

static void *
grow(void *p, size_t n, size_t size)
{
	/* Powers of two: called with n = the count before adding one. */
	if (n != 0 && (n & (n - 1)) != 0)
		return p;
	void *q = realloc(p, (n != 0 ? 2 * n : 8) * size);
	if (q == NULL)
		abort();
	return q;
}

/* Runs the bytes w[0..len) through the rules the server must follow. */
static void
model_run(model *m, const uint8_t *w, size_t len)
{
	memset(m, 0, sizeof(*m));
	size_t k = len < FUZZ_PREFACE_LEN ? len : FUZZ_PREFACE_LEN;
	if (memcmp(w, FUZZ_PREFACE, k) != 0) {
		m->closes = true;
		m->why = "a wrong preface";
		return;
	}
	if (len < FUZZ_PREFACE_LEN)
		return; /* the server waits for the rest of it */
	m->preface_ok = true;
	size_t at = FUZZ_PREFACE_LEN;
	while (len - at >= FUZZ_FRAME_HDR) {
		const uint8_t *h = w + at;
		uint32_t blen = be32(h + 1);
		if (blen > FUZZ_MAX_FRAME) {
			m->closes = true;
			m->why = "a frame length over the limit";
			return;
		}
		if (len - at - FUZZ_FRAME_HDR < blen)
			return; /* the server waits for the rest of it */
		const uint8_t *body = h + FUZZ_FRAME_HDR;
		switch (h[0]) {
		case FUZZ_FRAME_REQUEST: {
			m->requests++;
			Asynq__Rpc__Request *rq =
			    asynq__rpc__request__unpack(NULL, blen, body);
			if (rq != NULL) {
				m->ids =
				    grow(m->ids, m->n_ids, sizeof(*m->ids));
				m->ids[m->n_ids++] = rq->request_id;
				asynq__rpc__request__free_unpacked(rq, NULL);
			}
			break;
		}
		case FUZZ_FRAME_PING: {
			m->pong = grow(m->pong, m->n_pongs, sizeof(*m->pong));
			m->pong_len =
			    grow(m->pong_len, m->n_pongs, sizeof(*m->pong_len));
			size_t n = blen < 8 ? blen : 8;
			memcpy(m->pong[m->n_pongs], body, n);
			m->pong_len[m->n_pongs++] = (uint8_t)n;
			break;
		}
		case FUZZ_FRAME_METHODS:
			if (!methods_take(m, body, blen)) {
				m->closes = true;
				m->why = "a bad METHODS frame";
				return;
			}
			break;
		default:
			break; /* skipped */
		}
		at += FUZZ_FRAME_HDR + blen;
	}
}

/* ---- What the server wrote ------------------------------------------------
 */

typedef struct output {
	uint8_t *buf; /* not parsed yet */
	size_t len, cap;
	size_t preface; /* bytes of the server's preface seen */
	bool hello;
	size_t replies, pongs;
	uint64_t *ids; /* request_ids of the replies */
	bool eof;
	bool write_failed; /* the server closed while the harness wrote */
	bool canary;       /* the canary ran (ending "canary first") */
} output;

static void
output_fini(output *o)
{
	free(o->buf);
	free(o->ids);
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Checks a frame the server wrote. */
static void
output_frame(output *o, const model *m, unsigned type, const uint8_t *b,
    size_t len)
{
	if (!o->hello && type != FUZZ_FRAME_HELLO)
		fz_fail("the server's first frame is type %u, not HELLO", type);
	switch (type) {
	case FUZZ_FRAME_HELLO: {
		if (o->hello)
			fz_fail("the server sent a second HELLO");
		o->hello = true;
		Asynq__Rpc__Hello *h = asynq__rpc__hello__unpack(NULL, len, b);
		if (h == NULL || h->max_request_bytes != FUZZ_MAX_MSG_BYTES ||
		    h->max_calls != FUZZ_MAX_CALLS)
			fz_fail("the server's HELLO is wrong");
		asynq__rpc__hello__free_unpacked(h, NULL);
		return;
	}
	case FUZZ_FRAME_REPLY: {
		if (o->replies >= m->requests)
			fz_fail("the server sent more replies than the %zu "
			        "requests it was sent",
			    m->requests);
		Asynq__Rpc__Reply *rep =
		    asynq__rpc__reply__unpack(NULL, len, b);
		if (rep == NULL)
			fz_fail("a %zu-byte REPLY is not an asynq.rpc.Reply",
			    len);
		if (rep->status < 0 || rep->status >= ASYNQ_STATUS_COUNT)
			fz_fail("a reply has status %d", (int)rep->status);
		if (rep->status != ASYNQ_OK &&
		    (rep->n_results != 0 || rep->message[0] == '\0'))
			fz_fail("request-level %d with %zu results and message "
			        "\"%s\"",
			    (int)rep->status, rep->n_results, rep->message);
		if (rep->status == ASYNQ_UNAVAILABLE)
			fz_fail("a request was refused UNAVAILABLE on a "
			        "server that is not closing");
		o->ids = grow(o->ids, o->replies, sizeof(*o->ids));
		o->ids[o->replies++] = rep->request_id;
		asynq__rpc__reply__free_unpacked(rep, NULL);
		return;
	}
	case FUZZ_FRAME_PONG:
		if (o->pongs >= m->n_pongs)
			fz_fail("the server sent a PONG for no PING");
		if (len != m->pong_len[o->pongs] ||
		    memcmp(b, m->pong[o->pongs], len) != 0)
			fz_fail("PONG %zu does not carry its PING's bytes",
			    o->pongs);
		o->pongs++;
		return;
	default:
		fz_fail("the server sent a frame of type %u", type);
	}
}

/* Takes n bytes the server wrote. */
static void
output_take(output *o, const model *m, const uint8_t *p, size_t n)
{
	if (!m->preface_ok && n > 0)
		fz_fail("the server answered %s",
		    m->why != NULL ? m->why : "an incomplete preface");
	while (n > 0 && o->preface < FUZZ_PREFACE_LEN) {
		if (*p != (uint8_t)FUZZ_PREFACE[o->preface])
			fz_fail("the server's preface is not asynq/1");
		o->preface++;
		p++;
		n--;
	}
	if (o->cap - o->len < n) {
		size_t cap = o->cap != 0 ? o->cap : 4096;
		while (cap - o->len < n)
			cap *= 2;
		if ((o->buf = realloc(o->buf, cap)) == NULL)
			abort();
		o->cap = cap;
	}
	if (n > 0)
		memcpy(o->buf + o->len, p, n);
	o->len += n;
	size_t at = 0;
	while (o->len - at >= FUZZ_FRAME_HDR) {
		size_t blen = be32(o->buf + at + 1);
		if (blen > FUZZ_MAX_OUT_FRAME)
			fz_fail("the server wrote a frame of %zu bytes", blen);
		if (o->len - at - FUZZ_FRAME_HDR < blen)
			break;
		output_frame(o, m, o->buf[at], o->buf + at + FUZZ_FRAME_HDR,
		    blen);
		at += FUZZ_FRAME_HDR + blen;
	}
	memmove(o->buf, o->buf + at, o->len - at);
	o->len -= at;
}

/* Whether every answer the model asks for is in. */
static bool
output_complete(const output *o, const model *m)
{
	return (!m->preface_ok || o->hello) && o->replies == m->requests &&
	    o->pongs == m->n_pongs;
}

/* ---- Writing --------------------------------------------------------------
 */

/* The writes: the bytes and where each chunk ends. */
typedef struct plan {
	uint8_t *w;
	size_t len;
	size_t *ends; /* chunk ends, increasing, the last is len */
	size_t n_ends;
	size_t sync; /* wait for HELLO once this much is written (0: no) */
} plan;

static void
plan_end(plan *p, size_t at)
{
	if (at > p->len)
		at = p->len;
	if (p->n_ends > 0 && p->ends[p->n_ends - 1] >= at)
		return;
	p->ends = grow(p->ends, p->n_ends, sizeof(*p->ends));
	p->ends[p->n_ends++] = at;
}

/* The chunk ends of the bytes from `from` on. */
static void
plan_chunks(plan *p, unsigned mode, size_t from)
{
	static const size_t sizes[] = { 0, 1, 2, 5, 13, 256 };
	unsigned how = MODE_CHUNKS(mode);
	uint32_t rng = 0x9e3779b9u ^ (uint32_t)p->len;
	size_t at = from;
	if (how == 7) {
		/* Frame boundaries, as the frames are declared; the
		 * preface, if any, is its own chunk. */
		size_t f = 0;
		if (p->len - from >= FUZZ_PREFACE_LEN &&
		    memcmp(p->w + from, FUZZ_PREFACE, FUZZ_PREFACE_LEN) == 0)
			f = FUZZ_PREFACE_LEN;
		at = from + f;
		plan_end(p, at);
		while (at < p->len && at < SMALL_CHUNKS_UPTO) {
			if (p->len - at < FUZZ_FRAME_HDR)
				break;
			uint32_t blen = be32(p->w + at + 1);
			plan_end(p, at + FUZZ_FRAME_HDR);
			at += FUZZ_FRAME_HDR;
			at = p->len - at < blen ? p->len : at + blen;
			plan_end(p, at);
		}
	} else if (how != 0) {
		while (at < p->len && at < SMALL_CHUNKS_UPTO) {
			size_t n = sizes[how < 6 ? how : 0];
			if (how == 6) {
				rng ^= rng << 13;
				rng ^= rng >> 17;
				rng ^= rng << 5;
				n = 1 + rng % 64;
			}
			at += n;
			plan_end(p, at);
		}
	}
	while (at < p->len) {
		at += how != 0 ? BIG_CHUNK : p->len;
		plan_end(p, at);
	}
}

/* How many zero bytes complete the last frame of w[0..len), as the model
 * cuts frames (0 when it is complete or over the limit). */
static size_t
pad_len(const uint8_t *w, size_t len)
{
	if (len < FUZZ_PREFACE_LEN ||
	    memcmp(w, FUZZ_PREFACE, FUZZ_PREFACE_LEN) != 0)
		return 0;
	size_t at = FUZZ_PREFACE_LEN;
	while (len - at >= FUZZ_FRAME_HDR) {
		uint32_t blen = be32(w + at + 1);
		if (blen > FUZZ_MAX_FRAME)
			return 0;
		size_t have = len - at - FUZZ_FRAME_HDR;
		if (have < blen)
			return blen - have;
		at += FUZZ_FRAME_HDR + blen;
	}
	return 0;
}

/* The bytes the harness writes for an input, padded if asked. */
static void
plan_make(plan *p, const uint8_t *data, size_t len)
{
	unsigned mode = len > 0 ? data[0] : 0;
	size_t sl = len > 0 ? len - 1 : 0;
	unsigned opening = MODE_OPENING(mode);
	size_t ml = 0;
	uint8_t *mb = opening == OPEN_METHODS ? fuzz_methods_body(&ml) : NULL;
	size_t head = opening == OPEN_RAW ? 0 : FUZZ_PREFACE_LEN;
	if (mb != NULL)
		head += FUZZ_FRAME_HDR + ml;
	memset(p, 0, sizeof(*p));
	p->len = head + sl;
	if ((p->w = malloc(p->len + 1)) == NULL)
		abort();
	if (opening != OPEN_RAW)
		memcpy(p->w, FUZZ_PREFACE, FUZZ_PREFACE_LEN);
	if (mb != NULL) {
		fuzz_frame_hdr(p->w + FUZZ_PREFACE_LEN, FUZZ_FRAME_METHODS,
		    (uint32_t)ml);
		memcpy(p->w + FUZZ_PREFACE_LEN + FUZZ_FRAME_HDR, mb, ml);
		free(mb);
	}
	if (sl > 0)
		memcpy(p->w + head, data + 1, sl);
	size_t pad = mode & MODE_PAD ? pad_len(p->w, p->len) : 0;
	if (pad > 0) {
		if ((p->w = realloc(p->w, p->len + pad + 1)) == NULL)
			abort();
		memset(p->w + p->len, 0, pad);
		p->len += pad;
	}
	if (opening == OPEN_HELLO)
		p->sync = FUZZ_PREFACE_LEN;
	plan_end(p, head);
	plan_chunks(p, mode, head);
}

static void
plan_fini(plan *p)
{
	free(p->w);
	free(p->ends);
}

/* ---- One input ------------------------------------------------------------
 */

/* Whether a reply refuses a call because the server's workers are full:
 * a clear, fast error under overload, not a failure to serve. */
static bool
refused_in_flight(const Asynq__Rpc__Reply *rep)
{
	for (size_t i = 0; i < rep->n_results; i++)
		if (rep->results[i]->status == ASYNQ_RESOURCE_EXHAUSTED &&
		    strstr(rep->results[i]->message, "in flight") != NULL)
			return true;
	return false;
}

/* A normal call on a fresh connection. Calls an earlier input left
 * running (a connection closes, its calls go on until they end) may still
 * fill the workers: a call refused for that is sent again until the load
 * is gone, within FUZZ_RECV_TIMEOUT_MS, which is then the bound in which
 * the server serves again. */
static void
canary(void)
{
	uint64_t until =
	    asynq_now_ns() + (uint64_t)FUZZ_RECV_TIMEOUT_MS * 1000000;
	for (;;) {
		fuzz_conn c;
		char why[160];
		fz.canaries++;
		if (fuzz_conn_open(&c, &fz.fs, FUZZ_RECV_TIMEOUT_MS, why,
		        sizeof(why)) != 0)
			fz_fail("the server stopped serving: a fresh "
			        "connection: %s",
			    why);
		uint8_t hdr[FUZZ_FRAME_HDR];
		fuzz_frame_hdr(hdr, FUZZ_FRAME_REQUEST,
		    (uint32_t)fz.canary_len);
		if (fuzz_conn_write(&c, hdr, sizeof(hdr)) != 0 ||
		    fuzz_conn_write(&c, fz.canary, fz.canary_len) != 0)
			fz_fail("the server stopped serving: the canary's "
			        "connection closed");
		fz.requests++;
		uint64_t deadline =
		    asynq_now_ns() + (uint64_t)FUZZ_RECV_TIMEOUT_MS * 1000000;
		uint8_t type, *body;
		size_t len;
		int rv = fuzz_conn_next(&c, &type, &body, &len,
		    FUZZ_MAX_OUT_FRAME, deadline);
		if (rv != FUZZ_IO_OK)
			fz_fail("the server stopped serving: canary: %s",
			    rv == FUZZ_IO_TIMEOUT ? "no answer"
			                          : "connection closed");
		Asynq__Rpc__Reply *rep = type == FUZZ_FRAME_REPLY
		    ? asynq__rpc__reply__unpack(NULL, len, body)
		    : NULL;
		free(body);
		if (rep == NULL)
			fz_fail("the canary's answer is not a REPLY (type %u)",
			    type);
		fuzz_conn_close(&c);
		if (refused_in_flight(rep) && asynq_now_ns() < until) {
			asynq__rpc__reply__free_unpacked(rep, NULL);
			fz.canaries_refused++;
			struct timespec ts = { 0, 10 * 1000000 };
			nanosleep(&ts, NULL);
			continue;
		}
		const char *bad = fuzz_canary_judge(rep);
		if (bad != NULL)
			fz_fail("%s", bad);
		asynq__rpc__reply__free_unpacked(rep, NULL);
		return;
	}
}

/* Reads what is there; at the end of the stream sets o->eof. */
static void
drain(int fd, output *o, const model *m)
{
	uint8_t buf[16384];
	for (;;) {
		ssize_t k = recv(fd, buf, sizeof(buf), 0);
		if (k > 0) {
			output_take(o, m, buf, (size_t)k);
			continue;
		}
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0 && errno == EAGAIN)
			return;
		/* The end, or ECONNRESET: the server closed with bytes of
		 * ours unread, which is its right. */
		o->eof = true;
		return;
	}
}

/* Writes the plan on fd while reading what the server writes, and ends as
 * the mode says. Returns with fd closed. */
static void
run(int fd, unsigned mode, const plan *p, const model *m, output *o)
{
	unsigned ending = MODE_ENDING(mode);
	uint64_t deadline =
	    asynq_now_ns() + (uint64_t)FUZZ_RECV_TIMEOUT_MS * 1000000;
	size_t wpos = 0, chunk = 0;
	bool wfailed = false, ended = false;
	for (;;) {
		bool writing = !wfailed && wpos < p->len;
		bool synced = p->sync == 0 || wpos < p->sync || o->hello;
		if (!writing && !ended) {
			ended = true;
			if (ending == END_SHUT)
				(void)shutdown(fd, SHUT_WR);
			if (ending == END_CANARY_FIRST) {
				canary();
				o->canary = true;
			}
		}
		if (o->eof)
			break;
		/* Close as soon as the server has read every request, so
		 * that their answers are in flight. */
		bool read_all = fuzz_server_requests(&fz.fs) >= fz.requests;
		if (!writing && ending == END_CLOSE && read_all) {
			close(fd);
			return;
		}
		if (!writing && ending != END_SHUT && !m->closes &&
		    output_complete(o, m))
			break;
		uint64_t now = asynq_now_ns();
		if (now >= deadline) {
			fz_fail("no end after %d ms: %s; wrote %zu of %zu "
			        "bytes; the server wrote %s preface, %s HELLO, "
			        "%zu of %zu replies, %zu of %zu pongs",
			    FUZZ_RECV_TIMEOUT_MS,
			    m->closes ? "the server did not close the "
			                "connection"
			        : ending == END_SHUT && !writing
			        ? "the server did not close after the harness "
			          "shut its side down"
			        : ending == END_CLOSE && !writing
			        ? "the server did not read every request"
			        : "the server did not answer everything",
			    wpos, p->len, o->preface == 8 ? "its" : "no",
			    o->hello ? "its" : "no", o->replies, m->requests,
			    o->pongs, m->n_pongs);
		}
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		if (writing && synced)
			pfd.events |= POLLOUT;
		uint64_t left = (deadline - now) / 1000000 + 1;
		if (ending == END_CLOSE && !writing)
			left = 1; /* look at the server's counter again soon */
		int pr = poll(&pfd, 1, left > 1000 ? 1000 : (int)left);
		if (pr < 0 && errno != EINTR)
			fz_fail("poll: %s", strerror(errno));
		if (pr <= 0)
			continue;
		if (pfd.revents & (POLLIN | POLLHUP | POLLERR))
			drain(fd, o, m);
		if ((pfd.revents & POLLOUT) && writing && synced) {
			while (p->ends[chunk] <= wpos)
				chunk++;
			size_t end = p->ends[chunk];
			if (p->sync != 0 && wpos < p->sync && end > p->sync)
				end = p->sync;
			ssize_t k = send(fd, p->w + wpos, end - wpos,
			    MSG_NOSIGNAL | MSG_DONTWAIT);
			if (k > 0)
				wpos += (size_t)k;
			else if (k < 0 && errno != EAGAIN && errno != EINTR)
				wfailed = o->write_failed = true;
		}
	}
	close(fd);
}

/* Waits until the server has read `want` requests in all; fails if it
 * reads more, or fewer within the bound. */
static void
requests_settle(uint64_t want)
{
	uint64_t deadline =
	    asynq_now_ns() + (uint64_t)FUZZ_RECV_TIMEOUT_MS * 1000000;
	for (;;) {
		uint64_t got = fuzz_server_requests(&fz.fs);
		if (got > want)
			fz_fail("the server read %llu requests; it was sent "
			        "%llu",
			    (unsigned long long)got, (unsigned long long)want);
		if (got == want)
			return;
		if (asynq_now_ns() >= deadline)
			fz_fail("the server read %llu requests; it was sent "
			        "%llu",
			    (unsigned long long)got, (unsigned long long)want);
		usleep(1000);
	}
}

/* The heap may not keep growing. */
static void
heap_check(void)
{
	if (__sanitizer_get_current_allocated_bytes == NULL)
		return;
	size_t now = __sanitizer_get_current_allocated_bytes();
	if (fz.heap_base == 0) {
		fz.heap_base = now;
		return;
	}
	/* Connections close in the background: give them time. */
	for (int i = 0; i < 200 && now > fz.heap_base + FUZZ_MEM_SLACK; i++) {
		usleep(10000);
		now = __sanitizer_get_current_allocated_bytes();
	}
	if (now > fz.heap_base + FUZZ_MEM_SLACK)
		fz_fail("the heap in use grew from %zu to %zu bytes",
		    fz.heap_base, now);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t len)
{
	if (!fz.up)
		fz_start();
	cur_data = data;
	cur_len = len;
	fz.inputs++;
	unsigned mode = len > 0 ? data[0] : 0;
	plan p;
	plan_make(&p, data, len);
	model m;
	model_run(&m, p.w, p.len);
	output o = { 0 };
	fz.by_opening[MODE_OPENING(mode)]++;
	fz.by_ending[MODE_ENDING(mode)]++;
	fz.bytes += p.len;
	fz.closed_by_model += m.closes;
	fz.bad_preface += !m.preface_ok && m.closes;
	fuzz_conn c;
	if (fuzz_conn_connect(&c, &fz.fs) != 0)
		fz_fail("connect %s: %s", fz.fs.url, strerror(errno));
	if (fcntl(c.fd, F_SETFL, fcntl(c.fd, F_GETFL) | O_NONBLOCK) != 0)
		fz_fail("fcntl: %s", strerror(errno));
	unsigned ending = MODE_ENDING(mode);
	fz.requests += m.requests;
	run(c.fd, mode, &p, &m, &o);
	fz.eofs += o.eof;
	fz.replies += o.replies;
	fz.pongs += o.pongs;
	if (o.write_failed && !m.closes)
		fz_fail("the server closed the connection while the harness "
		        "wrote; it had no reason to");
	if (o.eof && !m.closes && ending != END_SHUT)
		fz_fail("the server closed the connection; it had no reason "
		        "to (%zu of %zu replies, %zu of %zu pongs)",
		    o.replies, m.requests, o.pongs, m.n_pongs);
	/* With every answer in, each request decoded has its reply. */
	if (!o.eof && ending != END_CLOSE) {
		if (m.n_ids > 0)
			qsort(m.ids, m.n_ids, sizeof(*m.ids), cmp_u64);
		if (o.replies > 0)
			qsort(o.ids, o.replies, sizeof(*o.ids), cmp_u64);
		for (size_t i = 0, j = 0; i < m.n_ids; i++, j++) {
			while (j < o.replies && o.ids[j] < m.ids[i])
				j++;
			if (j == o.replies || o.ids[j] != m.ids[i])
				fz_fail("request %llu has no reply",
				    (unsigned long long)m.ids[i]);
		}
	}
	requests_settle(fz.requests);
	if (fz.verbose)
		fprintf(stderr,
		    "rpc_stream fuzz: %zu bytes, mode %02x: %s%s; %zu of %zu "
		    "replies, %zu of %zu pongs%s\n",
		    p.len, mode, m.closes ? "closes: " : "open",
		    m.closes ? m.why : "", o.replies, m.requests, o.pongs,
		    m.n_pongs, o.eof ? ", closed" : "");
	if (!o.canary)
		canary();
	requests_settle(fz.requests);
	heap_check();
	output_fini(&o);
	model_fini(&m);
	plan_fini(&p);
	return 0;
}

/* ---- Mutator ----------------------------------------------------------------
 */

size_t LLVMFuzzerMutate(uint8_t *data, size_t size, size_t max_size)
    __attribute__((weak));

static uint64_t mrng;

static uint32_t
mrnd(uint32_t n)
{
	mrng ^= mrng << 13;
	mrng ^= mrng >> 7;
	mrng ^= mrng << 17;
	return n != 0 ? (uint32_t)(mrng % n) : 0;
}

/* A frame of the input: where it starts and how many bytes it has there
 * (its header and as much of its body as there is). */
typedef struct mframe {
	size_t at, len;
} mframe;

#define MAX_MFRAMES 4096

/* Where the frames of an input start: after the mode byte, and after a
 * preface of its own if the opening is raw. */
static size_t
frames_start(const uint8_t *d, size_t n)
{
	if (n == 0)
		return 0;
	if (MODE_OPENING(d[0]) == OPEN_RAW && n >= 1 + FUZZ_PREFACE_LEN &&
	    memcmp(d + 1, FUZZ_PREFACE, FUZZ_PREFACE_LEN) == 0)
		return 1 + FUZZ_PREFACE_LEN;
	return 1;
}

static size_t
frames_cut(const uint8_t *d, size_t n, size_t start, mframe *f)
{
	size_t k = 0, at = start;
	while (at < n && k < MAX_MFRAMES) {
		size_t len = n - at;
		if (len >= FUZZ_FRAME_HDR) {
			uint32_t blen = be32(d + at + 1);
			if (len - FUZZ_FRAME_HDR > blen)
				len = FUZZ_FRAME_HDR + blen;
		}
		f[k++] = (mframe){ at, len };
		at += len;
	}
	return k;
}

typedef struct mbuf {
	uint8_t *p;
	size_t len, cap;
} mbuf;

static void
mput(mbuf *b, const void *p, size_t n)
{
	if (b->cap - b->len < n) {
		size_t cap = b->cap != 0 ? b->cap : 1024;
		while (cap - b->len < n)
			cap *= 2;
		if ((b->p = realloc(b->p, cap)) == NULL)
			abort();
		b->cap = cap;
	}
	if (n > 0)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void
mframe_put(mbuf *b, unsigned type, const void *body, size_t n)
{
	uint8_t h[FUZZ_FRAME_HDR];
	fuzz_frame_hdr(h, type, (uint32_t)n);
	mput(b, h, sizeof(h));
	mput(b, body, n);
}

/* A new frame worth having. */
static void
mframe_new(mbuf *b)
{
	uint8_t tmp[16];
	switch (mrnd(6)) {
	case 0: { /* PING, 0 to 10 bytes */
		size_t n = mrnd(11);
		for (size_t i = 0; i < n; i++)
			tmp[i] = (uint8_t)mrnd(256);
		mframe_put(b, FUZZ_FRAME_PING, tmp, n);
		break;
	}
	case 1: { /* the canary, a well-formed request */
		size_t n;
		uint8_t *c = fuzz_canary_body(&n);
		mframe_put(b, FUZZ_FRAME_REQUEST, c, n);
		free(c);
		break;
	}
	case 2: { /* the method table, or a short one */
		size_t n;
		uint8_t *mb = fuzz_methods_body(&n);
		mframe_put(b, FUZZ_FRAME_METHODS, mb, mrnd(2) ? n : mrnd(8));
		free(mb);
		break;
	}
	case 3: /* a frame of a type nobody sends, or a server's */
	{
		static const uint8_t types[] = { 0, 8, 9, 127, 128, 255,
			FUZZ_FRAME_REPLY, FUZZ_FRAME_HELLO, FUZZ_FRAME_GOAWAY,
			FUZZ_FRAME_PONG };
		size_t n = mrnd(6);
		for (size_t i = 0; i < n; i++)
			tmp[i] = (uint8_t)mrnd(256);
		mframe_put(b, types[mrnd(sizeof(types))], tmp, n);
		break;
	}
	case 4: { /* a request calling by number */
		Asynq__Fuzz__Num num = ASYNQ__FUZZ__NUM__INIT;
		num.v = mrnd(8);
		uint8_t nb[16];
		size_t nl = asynq__fuzz__num__pack(&num, nb);
		Asynq__Rpc__Call call = ASYNQ__RPC__CALL__INIT;
		call.method_id = 1 + mrnd(FUZZ_METHOD_IDS + 1);
		call.call_id = mrnd(4);
		call.payload = (ProtobufCBinaryData){ nl, nb };
		Asynq__Rpc__Call *cp = &call;
		Asynq__Rpc__Request rq = ASYNQ__RPC__REQUEST__INIT;
		rq.n_calls = 1;
		rq.calls = &cp;
		rq.request_id = mrnd(16);
		rq.client_id = mrnd(4) == 0 ? 1 + mrnd(2) : 0;
		uint8_t rb[64];
		size_t rl = asynq__rpc__request__pack(&rq, rb);
		mframe_put(b, FUZZ_FRAME_REQUEST, rb, rl);
		break;
	}
	default: { /* a header alone, claiming a length */
		static const uint32_t lens[] = { 0, 1, FUZZ_MAX_MSG_BYTES,
			FUZZ_MAX_MSG_BYTES + 1, FUZZ_MAX_FRAME,
			FUZZ_MAX_FRAME + 1, 1u << 30, UINT32_MAX };
		uint8_t h[FUZZ_FRAME_HDR];
		fuzz_frame_hdr(h, 1 + mrnd(7), lens[mrnd(8)]);
		mput(b, h, sizeof(h));
		break;
	}
	}
}

/* One structural change of d[0..n) into out. */
static void
mutate_stream(const uint8_t *d, size_t n, size_t max_size, mbuf *out)
{
	static mframe f[MAX_MFRAMES];
	size_t start = frames_start(d, n);
	size_t k = frames_cut(d, n, start, f);
	size_t end = k > 0 ? f[k - 1].at + f[k - 1].len : start;
	size_t pick = k > 0 ? mrnd((uint32_t)k) : 0;
	unsigned what = mrnd(10);
	if (k == 0 && what != 0 && what != 3)
		what = 4;    /* nothing to change but the mode: add a frame */
	mput(out, d, start); /* the mode and a raw preface */
	if (k == 0 && what == 4) {
		mframe_new(out);
		mput(out, d + start, n - start);
		return;
	}
	switch (what) {
	case 0: /* the mode byte: one field, or all of it */
		if (mrnd(2)) {
			out->p[0] = (uint8_t)mrnd(256);
		} else {
			static const uint8_t masks[] = { 0x03, 0x1c, 0x20,
				0xc0 };
			uint8_t mk = masks[mrnd(4)];
			out->p[0] = (uint8_t)((d[0] & ~mk) | (mrnd(256) & mk));
		}
		mput(out, d + start, n - start);
		return;
	case 3: /* truncate */
		mput(out, d + start, mrnd((uint32_t)(n - start + 1)));
		return;
	default:
		break;
	}
	for (size_t i = 0; i < k; i++) {
		const uint8_t *fp = d + f[i].at;
		size_t fl = f[i].len;
		if (i != pick) {
			mput(out, fp, fl);
			continue;
		}
		switch (what) {
		case 1: { /* the type */
			static const uint8_t types[] = { 0, 1, 2, 3, 4, 5, 6, 7,
				8, 255 };
			mput(out, fp, fl);
			out->p[out->len - fl] = mrnd(4) == 0
			    ? (uint8_t)mrnd(256)
			    : types[mrnd(sizeof(types))];
			break;
		}
		case 2: { /* the length: at the limits and around them */
			mput(out, fp, fl);
			if (fl < FUZZ_FRAME_HDR)
				break;
			uint32_t blen = be32(fp + 1);
			uint32_t lens[] = { 0, blen - 1, blen + 1,
				FUZZ_MAX_MSG_BYTES, FUZZ_MAX_MSG_BYTES + 1,
				FUZZ_MAX_FRAME, FUZZ_MAX_FRAME + 1, 1u << 30,
				UINT32_MAX, mrnd(UINT32_MAX) };
			uint32_t nl = lens[mrnd(10)];
			fuzz_frame_hdr(out->p + out->len - fl, fp[0], nl);
			break;
		}
		case 4: /* a new frame before this one */
			mframe_new(out);
			mput(out, fp, fl);
			break;
		case 5: /* gone */
			break;
		case 6: { /* repeated: twice, or many times (pipelining) */
			size_t times = mrnd(4) == 0 ? 2 + mrnd(300) : 2;
			for (size_t t = 0;
			     t < times && out->len + fl <= max_size; t++)
				mput(out, fp, fl);
			break;
		}
		case 7:   /* the request inside, by the request mutator */
		case 8: { /* the body's bytes */
			if (fl < FUZZ_FRAME_HDR) {
				mput(out, fp, fl);
				break;
			}
			size_t bl = fl - FUZZ_FRAME_HDR;
			size_t room = max_size > n ? max_size - n + bl : bl;
			uint8_t *b = malloc(room + 1);
			if (b == NULL)
				abort();
			memcpy(b, fp + FUZZ_FRAME_HDR, bl);
			size_t nb = what == 7
			    ? fuzz_mutate_request(b, bl, room, mrnd(UINT32_MAX))
			    : LLVMFuzzerMutate != NULL
			    ? LLVMFuzzerMutate(b, bl, room)
			    : bl;
			/* A body that was complete stays complete. */
			bool whole = fl == FUZZ_FRAME_HDR + be32(fp + 1);
			uint8_t h[FUZZ_FRAME_HDR];
			fuzz_frame_hdr(h,
			    what == 7 ? FUZZ_FRAME_REQUEST : fp[0],
			    whole ? (uint32_t)nb : be32(fp + 1));
			mput(out, h, sizeof(h));
			mput(out, b, nb);
			free(b);
			break;
		}
		default: /* swapped with the next one */
			if (i + 1 < k) {
				mput(out, d + f[i + 1].at, f[i + 1].len);
				mput(out, fp, fl);
				i++;
			} else {
				mput(out, fp, fl);
			}
			break;
		}
	}
	mput(out, d + end, n - end);
}

size_t
LLVMFuzzerCustomMutator(uint8_t *data, size_t size, size_t max_size,
    unsigned int seed)
{
	mrng = (uint64_t)seed * 0x9e3779b97f4a7c15u + 1;
	if (LLVMFuzzerMutate == NULL || max_size == 0)
		return size;
	if (size == 0 || mrnd(4) == 0) {
		size_t n = LLVMFuzzerMutate(data, size, max_size);
		return n;
	}
	mbuf out = { 0 };
	mutate_stream(data, size, max_size, &out);
	size_t n = out.len;
	if (n == 0 || n > max_size) {
		free(out.p);
		return LLVMFuzzerMutate(data, size, max_size);
	}
	memcpy(data, out.p, n);
	free(out.p);
	return n;
}
