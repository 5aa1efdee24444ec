/* SPDX-License-Identifier: MIT */
/*
 * The asynq RPC framing (proto/asynq/rpc.proto, "Framing"): prefaces, frame
 * headers, and the hand-written encoders that write calls, request trailers
 * and results straight into growing byte buffers, so that a request or a
 * reply is built in one buffer without intermediate protobuf-c structs. Also
 * a strict reader of protobuf wire fields for the envelope messages.
 *
 * Nothing here knows about connections or threads: these are pure functions
 * over bytes, used by the client, the server and the fuzz targets.
 */
#ifndef ASYNQI_RPC_FRAME_H
#define ASYNQI_RPC_FRAME_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "asynq/status.h"

/* The preface each side writes first. */
#define ASYNQI_PREFACE "asynq/1\n"
#define ASYNQI_PREFACE_LEN 8

/* Frame header: type (1 byte) and body length (4 bytes, big-endian). */
#define ASYNQI_FRAME_HDR 5

enum {
	ASYNQI_FRAME_REQUEST = 1,
	ASYNQI_FRAME_REPLY = 2,
	ASYNQI_FRAME_HELLO = 3,
	ASYNQI_FRAME_GOAWAY = 4,
	ASYNQI_FRAME_PING = 5,
	ASYNQI_FRAME_PONG = 6,
	ASYNQI_FRAME_METHODS = 7,
};

/* ---- Byte buffers ------------------------------------------------------ */

/* A growing byte buffer (malloc'd). A failed growth sets `failed`; later
 * writes are dropped, so a builder checks once at the end. */
typedef struct asynqi_buf {
	uint8_t *p;
	size_t len, cap;
	bool failed;
} asynqi_buf;

/* asynqi_buf_grow makes room for n more bytes (the slow path of
 * asynqi_buf_reserve). */
uint8_t *asynqi_buf_grow(asynqi_buf *b, size_t n);

/* asynqi_buf_reserve makes room for n more bytes and returns where they go
 * (NULL when out of memory; then `failed` is set). */
static inline uint8_t *
asynqi_buf_reserve(asynqi_buf *b, size_t n)
{
	if (b->cap - b->len >= n && !b->failed)
		return b->p + b->len;
	return asynqi_buf_grow(b, n);
}

/* asynqi_buf_fini frees the buffer's bytes. */
void asynqi_buf_fini(asynqi_buf *b);

/* asynqi_buf_put appends n bytes. */
void asynqi_buf_put(asynqi_buf *b, const void *p, size_t n);

/* asynqi_hash_bytes hashes n bytes at p with seed (not for adversaries:
 * tables keyed by it compare the bytes too). */
uint64_t asynqi_hash_bytes(const uint8_t *p, size_t n, uint64_t seed);

/* asynqi_buf_varint appends v as a protobuf varint. */
static inline void
asynqi_buf_varint(asynqi_buf *b, uint64_t v)
{
	uint8_t *d = asynqi_buf_reserve(b, 10);
	if (d == NULL)
		return;
	size_t n = 0;
	while (v >= 0x80) {
		d[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	d[n++] = (uint8_t)v;
	b->len += n;
}

/* asynqi_buf_tag appends the key of field `field` with wire type `wt`. */
static inline void
asynqi_buf_tag(asynqi_buf *b, uint32_t field, unsigned wt)
{
	asynqi_buf_varint(b, ((uint64_t)field << 3) | wt);
}

/* asynqi_buf_bytes appends a length-delimited field. */
void asynqi_buf_bytes(asynqi_buf *b, uint32_t field, const void *p, size_t n);

/* asynqi_varint_len returns the bytes of v as a varint. */
static inline size_t
asynqi_varint_len(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

/* asynqi_put_varint writes v as a varint at d (room for 10 bytes) and
 * returns its length. */
static inline size_t
asynqi_put_varint(uint8_t *d, uint64_t v)
{
	size_t n = 0;
	while (v >= 0x80) {
		d[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	d[n++] = (uint8_t)v;
	return n;
}

/* asynqi_frame_hdr writes a frame header for a body of len bytes. */
void asynqi_frame_hdr(uint8_t out[ASYNQI_FRAME_HDR], unsigned type,
    uint32_t len);

/* ---- Reading wire fields ----------------------------------------------- */

/* One field read off the wire: for wire type 0 and the fixed types `v` is
 * the value; for length-delimited fields `p`/`len` are its bytes. */
typedef struct asynqi_field {
	uint32_t num;
	unsigned wt;
	uint64_t v;
	const uint8_t *p;
	size_t len;
} asynqi_field;

/* A cursor over the fields of one message's bytes. */
typedef struct asynqi_reader {
	const uint8_t *p, *end;
} asynqi_reader;

/* asynqi_reader_slow is asynqi_reader_next for keys or values that are not
 * one-byte varints. */
int asynqi_reader_slow(asynqi_reader *r, asynqi_field *f);

/* asynqi_reader_next reads the next field: 1 when one was read, 0 at the
 * end, -1 for malformed bytes (bad varint, length past the end, a group or
 * an unknown wire type, a one-byte key of field 0); exactly what protobuf-c
 * rejects. */
static inline int
asynqi_reader_next(asynqi_reader *r, asynqi_field *f)
{
	const uint8_t *p = r->p;
	if (p >= r->end)
		return 0;
	/* Fast path: a one-byte key and a one-byte varint or length. */
	if (r->end - p >= 2 && p[0] < 0x80 && p[0] >= 8 && p[1] < 0x80) {
		unsigned wt = p[0] & 7;
		if (wt == 0) {
			f->num = p[0] >> 3;
			f->wt = 0;
			f->v = p[1];
			f->p = NULL;
			f->len = 0;
			r->p = p + 2;
			return 1;
		}
		if (wt == 2 && (size_t)(r->end - p - 2) >= p[1]) {
			f->num = p[0] >> 3;
			f->wt = 2;
			f->v = 0;
			f->p = p + 2;
			f->len = p[1];
			r->p = p + 2 + p[1];
			return 1;
		}
	}
	/* A one-byte key and a two-byte varint (ids up to 16383). */
	if (r->end - p >= 3 && p[0] < 0x80 && p[0] >= 8 && (p[0] & 7) == 0 &&
	    p[1] >= 0x80 && p[2] < 0x80) {
		f->num = p[0] >> 3;
		f->wt = 0;
		f->v = (uint64_t)(p[1] & 0x7f) | ((uint64_t)p[2] << 7);
		f->p = NULL;
		f->len = 0;
		r->p = p + 3;
		return 1;
	}
	return asynqi_reader_slow(r, f);
}

/* asynqi_short_varint reads a varint of at most 2 bytes (an index or id
 * under 16384, as this layer's own writers make them) at *pp before end;
 * false for anything else, which the caller reads the general way. */
static inline bool
asynqi_short_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
	const uint8_t *p = *pp;
	if (p < end && p[0] < 0x80) {
		*v = p[0];
		*pp = p + 1;
		return true;
	}
	if (end - p >= 2 && p[0] >= 0x80 && p[1] < 0x80) {
		*v = (uint64_t)(p[0] & 0x7f) | (uint64_t)p[1] << 7;
		*pp = p + 2;
		return true;
	}
	return false;
}

/* asynqi_request_scan_id finds the request_id of Request bytes without
 * decoding them, to answer a request that is refused before it is decoded:
 * the id protobuf-c would decode; for bytes protobuf-c rejects, the last
 * one before the malformed part; 0 when there is none. */
uint64_t asynqi_request_scan_id(const uint8_t *p, size_t len);

/* ---- Parsing a Request ------------------------------------------------- */

/* One Metadata entry, pointing into the parsed bytes. */
typedef struct asynqi_md_ref {
	const uint8_t *key;
	size_t klen;
	const uint8_t *val;
	size_t vlen;
} asynqi_md_ref;

/* One Call, pointing into the parsed bytes. */
typedef struct asynqi_call_ref {
	const uint8_t *method; /* name (not NUL-terminated), or NULL */
	size_t method_len;
	uint64_t call_id;
	const uint8_t *payload;
	size_t payload_len;
	asynqi_md_ref *md;
	size_t n_md;
	uint32_t method_id;
	bool own_metadata;
} asynqi_call_ref;

/* A Request, pointing into the parsed bytes. */
typedef struct asynqi_request_ref {
	asynqi_call_ref *calls;
	size_t n_calls;
	asynqi_md_ref *md;
	size_t n_md;
	int64_t deadline_unix_ns;
	uint64_t request_id;
	uint64_t client_id;
	uint32_t attempt;
	uint64_t timeout_us;
	uint64_t first_instance;
	uint64_t first_sent_ago_us;
} asynqi_request_ref;

/* asynqi_request_count validates the top level of Request bytes and counts
 * its calls and its metadata entries, in one pass: INVALID_ARGUMENT for
 * malformed bytes (as protobuf-c would reject them), else OK. */
asynq_status asynqi_request_count(const uint8_t *p, size_t len, size_t *n_calls,
    size_t *n_md);

/* asynqi_request_parse parses Request bytes (which must outlive *out) into
 * *out, taking its arrays from alloc(ctx, bytes) (NULL: RESOURCE_EXHAUSTED).
 * INVALID_ARGUMENT for bytes protobuf-c would reject. */
asynq_status asynqi_request_parse(const uint8_t *p, size_t len,
    void *(*alloc)(void *ctx, size_t bytes), void *ctx,
    asynqi_request_ref *out);

/* asynqi_request_parse_counted is asynqi_request_parse for bytes that
 * asynqi_request_count found valid, with its counts. */
asynq_status asynqi_request_parse_counted(const uint8_t *p, size_t len,
    size_t n_calls, size_t n_md, void *(*alloc)(void *ctx, size_t bytes),
    void *ctx, asynqi_request_ref *out);

#endif /* ASYNQI_RPC_FRAME_H */
