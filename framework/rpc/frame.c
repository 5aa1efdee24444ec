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
 *   (truncated varints and lengths, groups, wire types 6 and 7, field 0),
 *   so a hand-read envelope is never accepted where protobuf-c would fail.
 */
#include <stdlib.h>
#include <string.h>

#include "frame.h"

uint8_t *
asynqi_buf_reserve(asynqi_buf *b, size_t n)
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

size_t
asynqi_varint_len(uint64_t v)
{
	size_t n = 1;
	while (v >= 0x80) {
		v >>= 7;
		n++;
	}
	return n;
}

void
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

void
asynqi_buf_tag(asynqi_buf *b, uint32_t field, unsigned wt)
{
	asynqi_buf_varint(b, ((uint64_t)field << 3) | wt);
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

static bool
get_varint(asynqi_reader *r, uint64_t *v)
{
	uint64_t x = 0;
	for (unsigned shift = 0; shift < 70; shift += 7) {
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

int
asynqi_reader_next(asynqi_reader *r, asynqi_field *f)
{
	if (r->p >= r->end)
		return 0;
	uint64_t key;
	if (!get_varint(r, &key) || (key >> 3) == 0 || (key >> 3) > UINT32_MAX)
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
		if (!get_varint(r, &n) || n > (uint64_t)(r->end - r->p))
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
	asynqi_reader r = { p, p + len };
	asynqi_field f;
	uint64_t id = 0;
	int rv;
	while ((rv = asynqi_reader_next(&r, &f)) > 0)
		if (f.num == 4 && f.wt == 0)
			id = f.v;
	return rv < 0 ? 0 : id;
}
