/* SPDX-License-Identifier: MIT */
/*
 * What the message codecs protoc-gen-asynq generates are made of
 * (asynq_rpc_codec, asynq/rpc_desc.h): protobuf's wire format for singular
 * fields, as inline functions the generated pack, size and unpack functions
 * of each message call field by field, so that a message's codec is
 * straight-line code with its field numbers, wire types and presence rules
 * as constants. Only generated code needs this header.
 *
 * The rules are protobuf-c's (1.4): a proto3 field (no label) is sent when
 * it is not zero (a float or double as a number: -0.0 is not sent), a
 * string or bytes when not empty; a proto2 or proto3 `optional` one when
 * its has_ flag is set, a string when it is not NULL and not its default.
 * Reading, a varint takes at most 10 bytes and a key or a length at most
 * 5; anything else (and anything the generated switch does not expect)
 * makes the unpack give up, and protobuf-c decodes the bytes instead.
 */
#ifndef ASYNQ_RPC_CODEC_H
#define ASYNQ_RPC_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "asynq/rpc_desc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* asynq_codec_varint_size is the number of bytes v takes as a varint. */
static inline size_t
asynq_codec_varint_size(uint64_t v)
{
	/* ceil(bits / 7) for bits = 1..64, without a division. */
	return (size_t)(((64 - __builtin_clzll(v | 1)) * 9 + 64) / 64);
}

/* asynq_codec_put_varint writes v as a varint at o (room for 10 bytes) and
 * returns the byte after it. */
static inline uint8_t *
asynq_codec_put_varint(uint8_t *o, uint64_t v)
{
	while (v >= 0x80) {
		*o++ = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	*o++ = (uint8_t)v;
	return o;
}

/* asynq_codec_put_fixed32 writes v in 4 little-endian bytes at o. */
static inline uint8_t *
asynq_codec_put_fixed32(uint8_t *o, uint32_t v)
{
	for (int k = 0; k < 4; k++)
		*o++ = (uint8_t)(v >> (8 * k));
	return o;
}

/* asynq_codec_put_fixed64 writes v in 8 little-endian bytes at o. */
static inline uint8_t *
asynq_codec_put_fixed64(uint8_t *o, uint64_t v)
{
	for (int k = 0; k < 8; k++)
		*o++ = (uint8_t)(v >> (8 * k));
	return o;
}

/* asynq_codec_put_bytes writes n as a varint and the n bytes at p. */
static inline uint8_t *
asynq_codec_put_bytes(uint8_t *o, const void *p, size_t n)
{
	o = asynq_codec_put_varint(o, n);
	if (n != 0)
		memcpy(o, p, n);
	return o + n;
}

/* asynq_codec_zigzag32 and _64 are sint32's and sint64's wire values. */
static inline uint64_t
asynq_codec_zigzag32(int32_t x)
{
	return ((uint32_t)x << 1) ^ (uint32_t)(x >> 31);
}

static inline uint64_t
asynq_codec_zigzag64(int64_t x)
{
	return ((uint64_t)x << 1) ^ (uint64_t)(x >> 63);
}

/* asynq_codec_unzigzag32 and _64 undo them (of the low 32 bits for
 * sint32, as protobuf-c reads it). */
static inline int32_t
asynq_codec_unzigzag32(uint64_t v)
{
	uint32_t z = (uint32_t)v;
	return (int32_t)((z >> 1) ^ (~(z & 1) + 1));
}

static inline int64_t
asynq_codec_unzigzag64(uint64_t v)
{
	return (int64_t)((v >> 1) ^ (~(v & 1) + 1));
}

/* asynq_codec_has reads the has_ flag of an optional field. */
static inline bool
asynq_codec_has(const void *m, const ProtobufCFieldDescriptor *f)
{
	protobuf_c_boolean h;
	memcpy(&h, (const char *)m + f->quantifier_offset, sizeof(h));
	return h != 0;
}

/* asynq_codec_set_has sets it. */
static inline void
asynq_codec_set_has(void *m, const ProtobufCFieldDescriptor *f)
{
	protobuf_c_boolean h = 1;
	memcpy((char *)m + f->quantifier_offset, &h, sizeof(h));
}

/* asynq_codec_get_varint reads a varint of at most max bytes at *pp
 * (before end) into *v and moves *pp past it; false when it is longer or
 * runs past end. */
static inline bool
asynq_codec_get_varint(const uint8_t **pp, const uint8_t *end, uint64_t *v,
    unsigned max)
{
	const uint8_t *p = *pp;
	if (p < end && *p < 0x80) {
		*v = *p;
		*pp = p + 1;
		return true;
	}
	uint64_t x = 0;
	for (unsigned s = 0; s < 7 * max; s += 7) {
		if (p >= end)
			return false;
		uint8_t b = *p++;
		x |= (uint64_t)(b & 0x7f) << s;
		if ((b & 0x80) == 0) {
			*v = x;
			*pp = p;
			return true;
		}
	}
	return false;
}

/* asynq_codec_get_key reads a field's key; false for malformed bytes (a
 * first byte without field bits, as protobuf-c sees it, or too long). */
static inline bool
asynq_codec_get_key(const uint8_t **pp, const uint8_t *end, uint64_t *key)
{
	if ((**pp & 0xf8) == 0)
		return false;
	return asynq_codec_get_varint(pp, end, key, 5);
}

/* asynq_codec_get_fixed32 and _64 read 4 or 8 little-endian bytes. */
static inline bool
asynq_codec_get_fixed32(const uint8_t **pp, const uint8_t *end, uint32_t *v)
{
	const uint8_t *p = *pp;
	if (end - p < 4)
		return false;
	*v = (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
	    (uint32_t)p[3] << 24;
	*pp = p + 4;
	return true;
}

static inline bool
asynq_codec_get_fixed64(const uint8_t **pp, const uint8_t *end, uint64_t *v)
{
	uint32_t lo, hi;
	if (end - *pp < 8 || !asynq_codec_get_fixed32(pp, end, &lo) ||
	    !asynq_codec_get_fixed32(pp, end, &hi))
		return false;
	*v = (uint64_t)hi << 32 | lo;
	return true;
}

/* asynq_codec_get_len reads a length-delimited value: its bytes at *s, n
 * of them. */
static inline bool
asynq_codec_get_len(const uint8_t **pp, const uint8_t *end, const uint8_t **s,
    size_t *n)
{
	uint64_t len;
	if (!asynq_codec_get_varint(pp, end, &len, 5) ||
	    len > (uint64_t)(end - *pp))
		return false;
	*s = *pp;
	*n = (size_t)len;
	*pp += len;
	return true;
}

/* asynq_codec_store_string stores a string field's n bytes at s in the
 * member at `at`, copied into pa's memory with a NUL; false when pa has no
 * memory or the field was already read (protobuf-c's to decode then). */
static inline bool
asynq_codec_store_string(ProtobufCAllocator *pa, void *at,
    const ProtobufCFieldDescriptor *f, const uint8_t *s, size_t n)
{
	char *old;
	memcpy(&old, at, sizeof(old));
	if (old != NULL && old != f->default_value &&
	    old != protobuf_c_empty_string)
		return false;
	char *str = (char *)pa->alloc(pa->allocator_data, n + 1);
	if (str == NULL)
		return false;
	if (n != 0)
		memcpy(str, s, n);
	str[n] = '\0';
	memcpy(at, &str, sizeof(str));
	return true;
}

/* asynq_codec_store_bytes does the same for a bytes field. */
static inline bool
asynq_codec_store_bytes(ProtobufCAllocator *pa, void *at,
    const ProtobufCFieldDescriptor *f, const uint8_t *s, size_t n)
{
	ProtobufCBinaryData bd;
	memcpy(&bd, at, sizeof(bd));
	const ProtobufCBinaryData *def =
	    (const ProtobufCBinaryData *)f->default_value;
	if (bd.data != NULL && (def == NULL || bd.data != def->data))
		return false;
	bd.len = n;
	bd.data = NULL;
	if (n != 0) {
		if ((bd.data = (uint8_t *)pa->alloc(pa->allocator_data, n)) ==
		    NULL)
			return false;
		memcpy(bd.data, s, n);
	}
	memcpy(at, &bd, sizeof(bd));
	return true;
}

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_RPC_CODEC_H */
