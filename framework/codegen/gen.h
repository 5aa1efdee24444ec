/* SPDX-License-Identifier: MIT */
/*
 * protoc-gen-asynq's generator: turns protoc's CodeGeneratorRequest into a
 * CodeGeneratorResponse holding <file>.asynq.h and <file>.asynq.c for every
 * file to generate. main.c does the I/O; this module never touches stdin or
 * stdout, so it can be driven by tests too.
 */
#ifndef ASYNQ_CODEGEN_GEN_H
#define ASYNQ_CODEGEN_GEN_H

#include "google/protobuf/compiler/plugin.pb-c.h"

/* Extension numbers of proto/asynq/options.proto. */
#define ASYNQI_OPT_BATCH_MAX_CALLS 50100
#define ASYNQI_OPT_FLUSH_DELAY_US 50101
#define ASYNQI_OPT_DEFAULT_DEADLINE_MS 50102
#define ASYNQI_OPT_SVC_ALLOW_PEERS 50103
#define ASYNQI_OPT_SVC_ALLOW_SCOPES 50104
#define ASYNQI_OPT_IDEMPOTENT 50110
#define ASYNQI_OPT_WHOLE_BATCH 50111
#define ASYNQI_OPT_REQUEST_CACHE 50112
#define ASYNQI_OPT_CACHE_ERRORS 50113
#define ASYNQI_OPT_ALLOW_PEERS 50114
#define ASYNQI_OPT_ALLOW_SCOPES 50115
#define ASYNQI_OPT_ALLOW_ANYONE 50116

/* protobuf-c's FileOptions extension (protobuf-c/protobuf-c.proto) and its
 * c_package field, which renames the package in protoc-c's C names. */
#define ASYNQI_OPT_PB_C_FILE 1019
#define ASYNQI_OPT_PB_C_FILE_C_PACKAGE 6

typedef struct asynqi_codegen asynqi_codegen;

/* asynqi_codegen_run builds the response to req into *respp. Problems with
 * the input (bad option values, unsupported methods) are reported in the
 * response's error field, as protoc expects. Returns 0, or -1 when memory
 * ran out (nothing is returned then). req is borrowed and must outlive the
 * response. */
int asynqi_codegen_run(
    const Google__Protobuf__Compiler__CodeGeneratorRequest *req,
    Google__Protobuf__Compiler__CodeGeneratorResponse **respp,
    asynqi_codegen **genp);

/* asynqi_codegen_free frees a generator and the response it made; NULL is
 * ignored. */
void asynqi_codegen_free(asynqi_codegen *g);

#endif /* ASYNQ_CODEGEN_GEN_H */
