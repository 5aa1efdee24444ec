/* SPDX-License-Identifier: MIT */
/*
 * RPC service descriptors: the tables protoc-gen-asynq generates, one per
 * service of a .proto file, as constant C data in <file>.asynq.c. They name
 * each method as calls carry it on the wire (asynq.rpc.Call.method), point at
 * the protoc-c descriptors that encode and decode its messages, and hold the
 * batching options the service author declared with proto/asynq/options.proto.
 * The RPC client and server read them; nothing writes them, so any thread may
 * read them at any time, and they live as long as the program. Each table
 * also points at its .proto file as protoc saw it (asynq_rpc_file_desc),
 * which the reflection service (proto/asynq/reflection.proto) hands to
 * tools so that they need no .proto file.
 */
#ifndef ASYNQ_RPC_DESC_H
#define ASYNQ_RPC_DESC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* protobuf-c's message descriptor (protobuf-c/protobuf-c.h); declared here
 * so that this header does not need protobuf-c's. */
struct ProtobufCMessageDescriptor;

/* One .proto file, embedded by protoc-gen-asynq in the code generated for
 * a file with services, together with every file it imports, directly or
 * not. */
typedef struct asynq_rpc_file_desc {
	/* The file's name as it is imported ("proto/asynq/health.proto"). */
	const char *name;
	/* Its google.protobuf.FileDescriptorProto, serialized (without
	 * source_code_info: no comments or source positions). */
	const uint8_t *descriptor;
	size_t descriptor_len;
	/* The files it imports, in the order of its dependency list; each
	 * is embedded too, so the closure is complete. */
	const struct asynq_rpc_file_desc *const *deps;
	size_t n_deps;
} asynq_rpc_file_desc;

/* One method of a service. */
typedef struct asynq_rpc_method_desc {
	/* The method's name as the .proto declares it ("GetName"). */
	const char *name;
	/* The name calls carry on the wire: the service's full name, a slash
	 * and the method's name ("pkg.Users/GetName"). */
	const char *full_name;
	/* protoc-c descriptor of the request message. */
	const struct ProtobufCMessageDescriptor *input;
	/* protoc-c descriptor of the response message. */
	const struct ProtobufCMessageDescriptor *output;
	/* The method may run more than once per call, so calls may be resent
	 * or retried: (asynq.idempotent), or idempotency_level IDEMPOTENT or
	 * NO_SIDE_EFFECTS. Other methods run at most once. */
	bool idempotent;
	/* (asynq.whole_batch): the server passes all the calls of this method
	 * in one request to one handler instead of one task per call. */
	bool whole_batch;
	/* (asynq.request_cache): within one incoming request's tree of tasks
	 * a repeated identical call is answered from the request cache
	 * (asynq_rpc_cache_prime); (asynq.cache_errors): errors too. */
	bool request_cache;
	bool cache_errors;
	/* Who may call it ((asynq.allow_peers), (asynq.allow_scopes) of the
	 * method, else its service's (asynq.default_allow_peers) and
	 * (asynq.default_allow_scopes) unless (asynq.allow_anyone); see
	 * asynq_rpc_policy in asynq/rpc.h for the patterns): none of either
	 * means anyone. A server's settings may override them. */
	const char *const *allow_peers;
	size_t n_allow_peers;
	const char *const *allow_scopes;
	size_t n_allow_scopes;
} asynq_rpc_method_desc;

/* One service: its methods in .proto order and its options. */
typedef struct asynq_rpc_service_desc {
	/* The service's name as the .proto declares it ("Users"). */
	const char *name;
	/* The service's full name, with its package ("pkg.Users"). */
	const char *full_name;
	/* The methods, in the order the .proto declares them. */
	const asynq_rpc_method_desc *methods;
	/* How many methods there are (methods is NULL when there are none). */
	size_t n_methods;
	/* (asynq.batch_max_calls): the most calls one request carries; 0 when
	 * unset, meaning the client's default. */
	uint32_t batch_max_calls;
	/* (asynq.flush_delay_us): how long a batch waits for more calls after
	 * its first one; 0 means flush when every task is blocked. */
	uint32_t flush_delay_us;
	/* (asynq.default_deadline_ms): deadline of a call whose caller set
	 * none; 0 means none. */
	uint32_t default_deadline_ms;
	/* The .proto file that declares the service; NULL in a table written
	 * by hand, whose service reflection then cannot describe. */
	const asynq_rpc_file_desc *file;
} asynq_rpc_service_desc;

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_RPC_DESC_H */
