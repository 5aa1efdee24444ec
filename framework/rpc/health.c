/* SPDX-License-Identifier: MIT */
/*
 * The health service (health.h): Check answers whether the server, or one
 * service on it, serves, from asynq_rpc_server_serving.
 *
 * Design notes: the handler runs as a task on a worker like any call, so a
 * check that is answered at all went through the same read, admission and
 * worker queue as real calls: a server whose workers are stuck does not
 * answer checks either. Once the server closes, a connection's requests
 * are refused UNAVAILABLE before any handler runs (those read just before
 * its GOAWAY still run and answer NOT_SERVING), so a check then mostly
 * fails; asynq_rpc_server_set_serving(s, false) is the way to answer
 * NOT_SERVING while still serving. The handler only reads the
 * server's state (under its mutex, briefly), so it never suspends.
 */
#include <stdlib.h>
#include <string.h>

#include <protobuf-c/protobuf-c.h>

#include "health.h"
#include "proto/asynq/health.asynq.h"

typedef Asynq__Health__V1__HealthCheckRequest check_req;
typedef Asynq__Health__V1__HealthCheckResponse check_reply;

static asynq_status
health_check(asynq_task *t, const ProtobufCMessage *req,
    ProtobufCMessage **reply, void *ctx)
{
	const asynq_rpc_server *s = ctx;
	const check_req *in = (const check_req *)req;
	check_reply *out = malloc(sizeof(*out));
	if (out == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
		    "health: out of memory");
	asynq__health__v1__health_check_response__init(out);
	const char *svc = in->service != NULL ? in->service : "";
	if (svc[0] != '\0' && !asynq_rpc_server_has_service(s, svc))
		out->status =
		    ASYNQ__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
	else if (asynq_rpc_server_serving(s) == ASYNQ_RPC_SERVING)
		out->status =
		    ASYNQ__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
	else
		out->status =
		    ASYNQ__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
	*reply = &out->base;
	return ASYNQ_OK;
}

static const asynq_rpc_handler health_handlers[] = {
	[ASYNQ__HEALTH__V1__HEALTH__ASYNQ_METHOD_CHECK] = { .unary =
	                                                        health_check },
};

asynq_status
asynqi_health_add(asynq_rpc_server *s)
{
	return asynq_rpc_server_add_service(s,
	    &asynq__health__v1__health__asynq_desc, health_handlers, s);
}
