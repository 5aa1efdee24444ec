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

#endif /* ASYNQ_TESTS_FUZZ_SERVICE_H */
