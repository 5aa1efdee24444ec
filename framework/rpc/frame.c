/* SPDX-License-Identifier: MIT */
/*
 * The framing codec: byte buffers with protobuf wire-format writers, frame
 * headers, and a strict field reader. The client and the server build
 * requests and replies with these directly in the buffers they send.
 *
 * Design notes:
 * - Buffers grow by doubling, so appending N calls costs O(log N) reallocs;
 *   a buffer that failed to grow stays failed, and its owner checks once.
 * - The reader rejects what protobuf-c rejects for the envelope messages
 *   (truncated varints and lengths, keys and lengths over 5 bytes, values
 *   over 10, groups, wire types 6 and 7, field 0), so a hand-read envelope
 *   is never accepted where protobuf-c would fail; the rpc_server fuzz
 *   target checks this.
 */
#include <stdlib.h>
#include <string.h>

#include "frame.h"

uint8_t *
asynqi_buf_grow(asynqi_buf *b, size_t n)
{
	if (b->failed)
		return NULL;
	if (b->cap - b->len < n) {
		size_t cap = b->cap != 0 ? b->cap : 256;
		while (cap - b->len < n) {
			if (cap > SIZE_MAX / 2) {
				b->failed = true;
				return NULL;
			}
			cap *= 2;
		}
		uint8_t *p = realloc(b->p, cap);
		if (p == NULL) {
			b->failed = true;
			return NULL;
		}
		b->p = p;
		b->cap = cap;
	}
	return b->p + b->len;
}

void
asynqi_buf_fini(asynqi_buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

void
asynqi_buf_put(asynqi_buf *b, const void *p, size_t n)
{
	uint8_t *d = asynqi_buf_reserve(b, n);
	if (d == NULL)
		return;
	if (n != 0)
		memcpy(d, p, n);
	b->len += n;
}

void
asynqi_buf_bytes(asynqi_buf *b, uint32_t field, const void *p, size_t n)
{
	asynqi_buf_tag(b, field, 2);
	asynqi_buf_varint(b, n);
	asynqi_buf_put(b, p, n);
}

void
asynqi_frame_hdr(uint8_t out[ASYNQI_FRAME_HDR], unsigned type, uint32_t len)
{
	out[0] = (uint8_t)type;
	out[1] = (uint8_t)(len >> 24);
	out[2] = (uint8_t)(len >> 16);
	out[3] = (uint8_t)(len >> 8);
	out[4] = (uint8_t)len;
}

/* Reads a varint of at most max_bytes bytes (protobuf-c takes keys and
 * lengths of up to 5 bytes, values of up to 10). */
static bool
get_varint_n(asynqi_reader *r, uint64_t *v, unsigned max_bytes)
{
	uint64_t x = 0;
	for (unsigned shift = 0; shift < 7 * max_bytes; shift += 7) {
		if (r->p >= r->end)
			return false;
		uint8_t b = *r->p++;
		x |= (uint64_t)(b & 0x7f) << shift;
		if ((b & 0x80) == 0) {
			*v = x;
			return true;
		}
	}
	return false;
}

static bool
get_varint(asynqi_reader *r, uint64_t *v)
{
	return get_varint_n(r, v, 10);
}

int
asynqi_reader_slow(asynqi_reader *r, asynqi_field *f)
{
	if (r->p >= r->end)
		return 0;
	/* As protobuf-c: a first byte with no field bits is malformed; a
	 * longer key that still names field 0 is an unknown field. */
	uint64_t key;
	if ((*r->p & 0xf8) == 0 || !get_varint_n(r, &key, 5))
		return -1;
	f->num = (uint32_t)(key >> 3);
	f->wt = (unsigned)(key & 7);
	f->p = NULL;
	f->len = 0;
	f->v = 0;
	switch (f->wt) {
	case 0:
		return get_varint(r, &f->v) ? 1 : -1;
	case 1:
		if (r->end - r->p < 8)
			return -1;
		for (int i = 7; i >= 0; i--)
			f->v = (f->v << 8) | r->p[i];
		r->p += 8;
		return 1;
	case 5:
		if (r->end - r->p < 4)
			return -1;
		for (int i = 3; i >= 0; i--)
			f->v = (f->v << 8) | r->p[i];
		r->p += 4;
		return 1;
	case 2: {
		uint64_t n;
		if (!get_varint_n(r, &n, 5) || n > (uint64_t)(r->end - r->p))
			return -1;
		f->p = r->p;
		f->len = (size_t)n;
		r->p += n;
		return 1;
	}
	default:
		return -1;
	}
}

uint64_t
asynqi_request_scan_id(const uint8_t *p, size_t len)
{
	/* Not asynqi_reader_next: a key of field number 0 spelt in more than
	 * one byte is taken (as protobuf-c takes it, as an unknown field), so
	 * that the id found is protobuf-c's whenever protobuf-c decodes the
	 * request, and the bytes that are not protobuf end the scan with the
	 * last id before them rather than none. */
	asynqi_reader r = { p, p + len };
	uint64_t id = 0, key, v;
	while (r.p < r.end && get_varint(&r, &key)) {
		unsigned wt = (unsigned)(key & 7);
		size_t skip = 0;
		if (wt == 0) {
			if (!get_varint(&r, &v))
				break;
			if (key >> 3 == 4)
				id = v;
			continue;
		}
		if (wt == 1 || wt == 5)
			skip = wt == 1 ? 8 : 4;
		else if (wt != 2 || !get_varint(&r, &v))
			break;
		else if (v > (uint64_t)(r.end - r.p))
			break;
		else
			skip = (size_t)v;
		if ((size_t)(r.end - r.p) < skip)
			break;
		r.p += skip;
	}
	return id;
}

/* ---- Parsing a Request ------------------------------------------------- */

/* The wire type each known field must have (protobuf-c rejects others). */
static bool
request_field_ok(const asynqi_field *f)
{
	switch (f->num) {
	case 1:
	case 3:
	case 7:
		return f->wt == 2;
	case 5:
	case 9:
		return f->wt == 1;
	case 2:
	case 4:
	case 6:
	case 8:
	case 10:
		return f->wt == 0;
	default:
		return true; /* unknown: skipped */
	}
}

static bool
call_field_ok(const asynqi_field *f)
{
	switch (f->num) {
	case 1:
	case 3:
	case 4:
		return f->wt == 2;
	case 2:
	case 5:
		return f->wt == 0;
	default:
		return true; /* 6, a bool: see call_parse; unknown: skipped */
	}
}

asynq_status
asynqi_request_count(const uint8_t *p, size_t len, size_t *n_calls,
    size_t *n_md)
{
	asynqi_reader r = { p, p + len };
	asynqi_field f;
	size_t n = 0, m = 0;
	int rv;
	while ((rv = asynqi_reader_next(&r, &f)) > 0) {
		if (!request_field_ok(&f))
			return ASYNQ_INVALID_ARGUMENT;
		n += f.num == 1;
		m += f.num == 3; /* its wire type is 2: request_field_ok */
	}
	*n_calls = n;
	if (n_md != NULL)
		*n_md = m;
	return rv < 0 ? ASYNQ_INVALID_ARGUMENT : ASYNQ_OK;
}

/* Parses one Metadata message. */
static bool
md_parse(const uint8_t *p, size_t len, asynqi_md_ref *m)
{
	asynqi_reader r = { p, p + len };
	asynqi_field f;
	int rv;
	m->key = (const uint8_t *)"";
	m->klen = 0;
	m->val = NULL;
	m->vlen = 0;
	while ((rv = asynqi_reader_next(&r, &f)) > 0) {
		if ((f.num == 1 || f.num == 2) && f.wt != 2)
			return false;
		if (f.num == 1) {
			m->key = f.p;
			m->klen = f.len;
		} else if (f.num == 2) {
			m->val = f.p;
			m->vlen = f.len;
		}
	}
	return rv == 0;
}

/* Counts the Metadata fields `field` of a message's bytes. */
static size_t
md_count(const uint8_t *p, size_t len, uint32_t field)
{
	asynqi_reader r = { p, p + len };
	asynqi_field f;
	size_t n = 0;
	while (asynqi_reader_next(&r, &f) > 0)
		if (f.num == field && f.wt == 2)
			n++;
	return n;
}

/* The Call the client writes: [call_id] [payload of < 128 bytes]
 * method_id, in that order, one-byte keys, nothing else. True when p is
 * exactly that (it is then valid, and *c is what the loop below would
 * make of it); false leaves *c for the loop. */
static inline bool
call_parse_usual(const uint8_t *p, size_t len, asynqi_call_ref *c)
{
	const uint8_t *end = p + len;
	uint64_t id = 0, mid;
	const uint8_t *pl = NULL;
	size_t pn = 0;
	if (p < end && p[0] == (2 << 3)) {
		p++;
		if (!asynqi_short_varint(&p, end, &id))
			return false;
	}
	if (end - p >= 2 && p[0] == ((3 << 3) | 2) && p[1] < 0x80 &&
	    (size_t)(end - p - 2) >= p[1]) {
		pl = p + 2;
		pn = p[1];
		p += 2 + pn;
	}
	if (p >= end || p[0] != (5 << 3))
		return false;
	p++;
	if (!asynqi_short_varint(&p, end, &mid) || p != end)
		return false;
	*c = (asynqi_call_ref){ .call_id = id,
		.payload = pl,
		.payload_len = pn,
		.method_id = (uint32_t)mid };
	return true;
}

static asynq_status
call_parse(const uint8_t *p, size_t len, void *(*alloc)(void *, size_t),
    void *ctx, asynqi_call_ref *c)
{
	if (call_parse_usual(p, len, c))
		return ASYNQ_OK;
	memset(c, 0, sizeof(*c));
	/* Metadata entries are counted first only when there are any: one
	 * pass for the common call without. */
	size_t n_md = 0;
	asynqi_reader r = { p, p + len };
	asynqi_field f;
	int rv;
	while ((rv = asynqi_reader_next(&r, &f)) > 0) {
		if (!call_field_ok(&f))
			return ASYNQ_INVALID_ARGUMENT;
		switch (f.num) {
		case 1:
			c->method = f.p;
			c->method_len = f.len;
			break;
		case 2:
			c->call_id = f.v;
			break;
		case 3:
			c->payload = f.p;
			c->payload_len = f.len;
			break;
		case 4:
			if (c->md == NULL) {
				n_md = md_count(p, len, 4);
				c->md = alloc(ctx, n_md * sizeof(*c->md));
				if (c->md == NULL)
					return ASYNQ_RESOURCE_EXHAUSTED;
			}
			if (c->n_md >= n_md ||
			    !md_parse(f.p, f.len, &c->md[c->n_md++]))
				return ASYNQ_INVALID_ARGUMENT;
			break;
		case 5:
			c->method_id = (uint32_t)f.v;
			break;
		case 6:
			/* protobuf-c reads a bool of any wire type as "some
			 * byte of the field, length prefix included, has a low
			 * bit set"; so does this. */
			c->own_metadata = f.wt == 2 ? f.len != 0
			    : f.wt == 0             ? f.v != 0
			                : (f.v & 0x7f7f7f7f7f7f7f7full) != 0;
			break;
		default:
			break;
		}
	}
	if (c->method != NULL && c->method_len == 0)
		c->method = NULL; /* proto3: an empty string is absent */
	return rv < 0 ? ASYNQ_INVALID_ARGUMENT : ASYNQ_OK;
}

asynq_status
asynqi_request_parse(const uint8_t *p, size_t len,
    void *(*alloc)(void *ctx, size_t bytes), void *ctx, asynqi_request_ref *out)
{
	size_t n_calls, n_md;
	asynq_status st = asynqi_request_count(p, len, &n_calls, &n_md);
	if (st != ASYNQ_OK) {
		memset(out, 0, sizeof(*out));
		return st;
	}
	return asynqi_request_parse_counted(p, len, n_calls, n_md, alloc, ctx,
	    out);
}

asynq_status
asynqi_request_parse_counted(const uint8_t *p, size_t len, size_t n_calls,
    size_t n_md, void *(*alloc)(void *ctx, size_t bytes), void *ctx,
    asynqi_request_ref *out)
{
	memset(out, 0, sizeof(*out));
	asynq_status st;
	if (n_calls > 0) {
		out->calls = alloc(ctx, n_calls * sizeof(*out->calls));
		if (out->calls == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
	}
	if (n_md > 0) {
		out->md = alloc(ctx, n_md * sizeof(*out->md));
		if (out->md == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
	}
	asynqi_reader r = { p, p + len };
	asynqi_field f;
	while (asynqi_reader_next(&r, &f) > 0) {
		switch (f.num) {
		case 1:
			st = call_parse(f.p, f.len, alloc, ctx,
			    &out->calls[out->n_calls++]);
			if (st != ASYNQ_OK)
				return st;
			break;
		case 2:
			out->deadline_unix_ns = (int64_t)f.v;
			break;
		case 3:
			if (!md_parse(f.p, f.len, &out->md[out->n_md++]))
				return ASYNQ_INVALID_ARGUMENT;
			break;
		case 4:
			out->request_id = f.v;
			break;
		case 5:
			out->client_id = f.v;
			break;
		case 6:
			out->attempt = (uint32_t)f.v;
			break;
		case 8:
			out->timeout_us = f.v;
			break;
		case 9:
			out->first_instance = f.v;
			break;
		case 10:
			out->first_sent_ago_us = f.v;
			break;
		default:
			break;
		}
	}
	return ASYNQ_OK;
}

uint64_t
asynqi_hash_bytes(const uint8_t *p, size_t n, uint64_t seed)
{
	uint64_t h = seed ^ (n * 0xc2b2ae3d27d4eb4fu);
	while (n >= 8) {
		uint64_t w;
		memcpy(&w, p, 8);
		h = (h ^ w) * 0x100000001b3u;
		h ^= h >> 29;
		p += 8;
		n -= 8;
	}
	/* The last 0-7 bytes without a memcpy of variable length: two
	 * overlapping 4-byte loads, or the first, middle and last byte (the
	 * length is in the seed, and equal hashes are compared byte for
	 * byte). */
	uint64_t w = 0;
	if (n >= 4) {
		uint32_t lo, hi;
		memcpy(&lo, p, 4);
		memcpy(&hi, p + n - 4, 4);
		w = (uint64_t)hi << 32 | lo;
	} else if (n != 0) {
		w = (uint64_t)p[0] | (uint64_t)p[n / 2] << 8 |
		    (uint64_t)p[n - 1] << 16;
	}
	h = (h ^ w) * 0x100000001b3u;
	/* A full avalanche, so that every input bit reaches the low bits a
	 * table indexes by (protobuf payloads differ in their later bytes). */
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdu;
	h ^= h >> 33;
	h *= 0xc4ceb9fe1a85ec53u;
	return h ^ (h >> 33);
}
