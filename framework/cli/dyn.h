/* SPDX-License-Identifier: MIT */
/*
 * Messages known only at run time, for the asynq command-line client: a
 * pool of .proto files as google.protobuf.FileDescriptorProto (from the
 * reflection service), and the protocol buffers wire format written from
 * JSON and read back into JSON by walking the fields those files declare,
 * with proto3's JSON mapping (lowerCamelCase names, 64-bit integers as
 * strings, enums by name, bytes in base64). No protobuf-c message
 * descriptor is made at run time.
 */
#ifndef ASYNQI_CLI_DYN_H
#define ASYNQI_CLI_DYN_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "google/protobuf/descriptor.pb-c.h"

typedef Google__Protobuf__FileDescriptorProto asynqi_file_proto;
typedef Google__Protobuf__DescriptorProto asynqi_msg_proto;
typedef Google__Protobuf__EnumDescriptorProto asynqi_enum_proto;
typedef Google__Protobuf__ServiceDescriptorProto asynqi_svc_proto;
typedef Google__Protobuf__FieldDescriptorProto asynqi_field_proto;

typedef struct asynqi_pool asynqi_pool;

/* A growing byte buffer; on failure it stops growing and sets oom. */
typedef struct asynqi_bytes {
	uint8_t *p;
	size_t len, cap;
	int oom;
} asynqi_bytes;

/* asynqi_pool_alloc returns an empty pool, or NULL without memory. */
asynqi_pool *asynqi_pool_alloc(void);

/* asynqi_pool_free frees the pool and every file in it; NULL is ignored. */
void asynqi_pool_free(asynqi_pool *p);

/* asynqi_pool_add decodes a serialized FileDescriptorProto (borrowed) into
 * the pool; a file whose name is already there is skipped. Returns 0, or
 * -1 with the reason in err when the bytes are not one. */
int asynqi_pool_add(asynqi_pool *p, const uint8_t *data, size_t len, char *err,
    size_t errlen);

/* asynqi_pool_message returns the message of that full name ("pkg.Msg",
 * a leading dot allowed), borrowed from the pool, or NULL; *filep (when
 * not NULL) gets the file that declares it. */
const asynqi_msg_proto *asynqi_pool_message(const asynqi_pool *p,
    const char *name, const asynqi_file_proto **filep);

/* asynqi_pool_enum returns the enum of that full name, or NULL. */
const asynqi_enum_proto *asynqi_pool_enum(const asynqi_pool *p,
    const char *name);

/* asynqi_pool_service returns the service of that full name, or NULL;
 * *filep (when not NULL) gets its file. */
const asynqi_svc_proto *asynqi_pool_service(const asynqi_pool *p,
    const char *name, const asynqi_file_proto **filep);

/* asynqi_json_name returns the name a field has in JSON (its json_name,
 * else its name in lowerCamelCase) in buf of n bytes. */
const char *asynqi_json_name(const asynqi_field_proto *f, char *buf, size_t n);

/* asynqi_json_encode appends message `type` (a full name) encoded from
 * the JSON object j to out. Returns 0, or -1 with the reason in err (the
 * field's path, what it expected and what it got; an unknown field with
 * the fields there are). */
int asynqi_json_encode(const asynqi_pool *p, const char *type, json_t *j,
    asynqi_bytes *out, char *err, size_t errlen);

/* asynqi_wire_decode decodes the len bytes at data as message `type` into a
 * new JSON object (the caller's reference) holding every field: those
 * absent with their default values, except messages, oneof members and
 * proto3 optional fields. NULL with the reason in err when the bytes are
 * not such a message. */
json_t *asynqi_wire_decode(const asynqi_pool *p, const char *type,
    const uint8_t *data, size_t len, char *err, size_t errlen);

/* asynqi_bytes_free frees the buffer's bytes. */
void asynqi_bytes_free(asynqi_bytes *b);

#endif /* ASYNQI_CLI_DYN_H */
