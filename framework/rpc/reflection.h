/* SPDX-License-Identifier: MIT */
/*
 * The reflection service every server answers
 * (proto/asynq/reflection.proto): asynq.reflection.v1.Reflection, with
 * ListServices, FileByName and FileContainingSymbol, registered by
 * asynq_rpc_server_alloc after the health service.
 */
#ifndef ASYNQI_RPC_REFLECTION_H
#define ASYNQI_RPC_REFLECTION_H

#include "asynq/rpc.h"

/* asynqi_reflection_add adds the reflection service to s, answering from
 * the tables of the services s serves at the time of each call. Errors as
 * asynq_rpc_server_add_service's. Before listening. */
asynq_status asynqi_reflection_add(asynq_rpc_server *s);

#endif /* ASYNQI_RPC_REFLECTION_H */
