/* SPDX-License-Identifier: MIT */
/*
 * What the RPC fuzzers share: the handlers of the asynq.fuzz.Fuzz service
 * (tests/fuzz/fuzz.proto) that the in-process server runs, a walker that
 * reads every field of a decoded protobuf-c message without recursion, and
 * the limits the fuzz server is configured with.
 */
#ifndef ASYNQ_TESTS_FUZZ_SERVICE_H
#define ASYNQ_TESTS_FUZZ_SERVICE_H

#include <stddef.h>
#include <stdint.h>

#include <protobuf-c/protobuf-c.h>

#include "asynq/rpc.h"
#include "tests/fuzz/fuzz.asynq.h"

/* The service and its methods. */
#define FUZZ_SVC (&asynq__fuzz__fuzz__asynq_desc)
#define FUZZ_METHOD(name)                                                      \
	(&FUZZ_SVC->methods[ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_##name])

/* Limits of the fuzz server: small, so that inputs of at most 64 KiB (the
 * fuzzers' -max_len) can cross each of them. FUZZ_MAX_INFLIGHT is below
 * FUZZ_MAX_CALLS so a request of a few hundred calls meets the per-worker
 * in-flight limit. */
#define FUZZ_MAX_MSG_BYTES (32u << 10)
/* Longest frame body the server reads: a REQUEST up to 64 KiB over
 * max_msg_bytes is read and answered RESOURCE_EXHAUSTED, a longer frame
 * closes the connection (proto/asynq/rpc.proto, "Framing"). */
#define FUZZ_MAX_FRAME (FUZZ_MAX_MSG_BYTES + (64u << 10))
#define FUZZ_DECODE_BUDGET (256u << 10)
#define FUZZ_MAX_CALLS 256
#define FUZZ_MAX_INFLIGHT 200
/* Duplicate detection forgets quickly, so that its eviction paths run and
 * the rpc_server harness need remember replies only briefly. */
#define FUZZ_DEDUP_ENTRIES 32
#define FUZZ_DEDUP_AGE_MS 2000
#define FUZZ_DEDUP_BYTES (16u << 10)

/* Deepest message nesting a server decode accepts (ASYNQI_RPC_MAX_DEPTH in
 * framework/rpc/internal.h; DESIGN.md §5). */
#define FUZZ_MAX_DEPTH 100

/* The method table the live-server harnesses send in a METHODS frame on
 * each connection: the methods of FUZZ_SVC in order (method_id 1 to
 * FUZZ_N_METHODS, the last of them Old), then a method the server lacks,
 * then Echo a second time. */
#define FUZZ_N_METHODS (ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_OLD + 1)
#define FUZZ_METHOD_IDS (FUZZ_N_METHODS + 2)

/* The first byte of an rpc_stream input (fuzz_rpc_stream.c tells what each
 * means): the opening, how the bytes are cut into writes, padding of the
 * last frame, and the ending. */
#define FUZZ_STREAM_PREFACE 0u /* openings */
#define FUZZ_STREAM_METHODS 1u
#define FUZZ_STREAM_RAW 2u
#define FUZZ_STREAM_HELLO 3u
#define FUZZ_STREAM_CHUNKS(k) ((unsigned)(k) << 2) /* 0 to 7 */
#define FUZZ_STREAM_PAD 0x20u
#define FUZZ_STREAM_WAIT 0x00u /* endings */
#define FUZZ_STREAM_SHUT 0x40u
#define FUZZ_STREAM_CLOSE 0x80u
#define FUZZ_STREAM_CANARY_FIRST 0xc0u

/* Names a connection's method table may hold: the server's methods (the
 * fuzz service's, the health service's Check and the reflection service's
 * three, which every server answers) and 4096 more (server.c); a METHODS
 * frame past that closes the connection. */
#define FUZZ_MAX_METHOD_NAMES (FUZZ_N_METHODS + 1 + 3 + 4096)

/* fuzz_method_id_name returns the name method_id stands for in the table,
 * or NULL when the table has no such number. */
const char *fuzz_method_id_name(uint32_t method_id);

/* The handlers of FUZZ_SVC, indexed like its methods. */
extern const asynq_rpc_handler fuzz_handlers[];

/* What fuzz_walk saw. */
typedef struct fuzz_walk_stats {
	uint64_t messages; /* messages, the root included */
	uint64_t depth;    /* deepest nesting; the root alone is 1 */
	uint64_t sum;      /* a checksum of every byte read */
} fuzz_walk_stats;

/* fuzz_walk reads every field of m and of the messages it holds, checking
 * that each holds the descriptor its field declares, with an explicit stack
 * (so it is safe on a coroutine stack). Returns 0, or -1 without memory;
 * aborts on a broken message. Any thread. */
int fuzz_walk(const ProtobufCMessage *m, fuzz_walk_stats *out);

/* fuzz_mutate_request is the structure-aware mutation of an encoded
 * asynq.rpc.Request in data[0..size) (fuzz_mutator.c): it returns the new
 * size, at most max_size; deterministic for a seed. Only inside libFuzzer
 * does it change anything. */
size_t fuzz_mutate_request(uint8_t *data, size_t size, size_t max_size,
    unsigned int seed);

#endif /* ASYNQ_TESTS_FUZZ_SERVICE_H */
