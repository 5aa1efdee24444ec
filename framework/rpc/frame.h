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

/* asynqi_buf_reserve makes room for n more bytes and returns where they go
 * (NULL when out of memory; then `failed` is set). */
uint8_t *asynqi_buf_reserve(asynqi_buf *b, size_t n);

/* asynqi_buf_fini frees the buffer's bytes. */
void asynqi_buf_fini(asynqi_buf *b);

/* asynqi_buf_put appends n bytes. */
void asynqi_buf_put(asynqi_buf *b, const void *p, size_t n);

/* asynqi_buf_varint appends v as a protobuf varint. */
void asynqi_buf_varint(asynqi_buf *b, uint64_t v);

/* asynqi_buf_tag appends the key of field `field` with wire type `wt`. */
void asynqi_buf_tag(asynqi_buf *b, uint32_t field, unsigned wt);

/* asynqi_buf_bytes appends a length-delimited field. */
void asynqi_buf_bytes(asynqi_buf *b, uint32_t field, const void *p, size_t n);

/* asynqi_varint_len returns the bytes of v as a varint. */
size_t asynqi_varint_len(uint64_t v);

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

/* asynqi_reader_next reads the next field: 1 when one was read, 0 at the
 * end, -1 for malformed bytes (bad varint, length past the end, a group or
 * an unknown wire type, field number 0). */
int asynqi_reader_next(asynqi_reader *r, asynqi_field *f);

/* asynqi_request_scan_id finds the request_id of Request bytes without
 * decoding them (0 when absent or malformed), to answer a request that is
 * refused before it is decoded. */
uint64_t asynqi_request_scan_id(const uint8_t *p, size_t len);

#endif /* ASYNQI_RPC_FRAME_H */
