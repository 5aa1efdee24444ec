/* SPDX-License-Identifier: MIT */
/*
 * asynq: batching tasks and futures for C services. Include this one header
 * for the whole public API.
 */
#ifndef ASYNQ_ASYNQ_H
#define ASYNQ_ASYNQ_H

#include "asynq/status.h"
#include "asynq/core.h"
#include "asynq/batch.h"
#include "asynq/context.h"
#include "asynq/runtime.h"

#endif /* ASYNQ_ASYNQ_H */
