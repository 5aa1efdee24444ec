/* SPDX-License-Identifier: MIT */
/*
 * The health service every server answers (proto/asynq/health.proto):
 * asynq.health.v1.Health/Check, registered by asynq_rpc_server_alloc.
 */
#ifndef ASYNQI_RPC_HEALTH_H
#define ASYNQI_RPC_HEALTH_H

#include "asynq/rpc.h"

/* asynqi_health_add adds the health service to s, answering from s's
 * state. Errors as asynq_rpc_server_add_service's. Before listening. */
asynq_status asynqi_health_add(asynq_rpc_server *s);

#endif /* ASYNQI_RPC_HEALTH_H */
