/* SPDX-License-Identifier: MIT */
/*
 * asynq: batching tasks and futures for C services. This header brings the
 * programming model: errors and statuses, tasks, futures and the scheduler,
 * batch backends, contexts and scoped values, and the multi-threaded
 * runtime. The other parts have headers of their own, included where they
 * are used: asynq/rpc.h (channels, servers, deadlines, metadata, request
 * caches; generated code includes it), asynq/admin.h (the admin HTTP
 * endpoint), asynq/tools.h (dedup, memo, caches, retry, timing, async
 * map/filter/sort), asynq/generator.h, asynq/profiler.h, and asynq/testing.h
 * (mocks and fakes, in //framework/testing, for tests only).
 */
#ifndef ASYNQ_ASYNQ_H
#define ASYNQ_ASYNQ_H

#include "asynq/status.h"
#include "asynq/core.h"
#include "asynq/batch.h"
#include "asynq/context.h"
#include "asynq/runtime.h"

#endif /* ASYNQ_ASYNQ_H */
