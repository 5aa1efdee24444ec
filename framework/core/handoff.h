/* SPDX-License-Identifier: MIT */
/*
 * Handoff: running many short jobs as plain calls inside one task, and
 * handing the jobs left to a new task the moment one of them suspends.
 * The RPC server runs a request's per-call handlers this way, so a handler
 * that finishes without suspending costs a function call, not a task.
 *
 * - A task sets a hook (asynqi_task_set_handoff) before it calls a job.
 *   When that task is about to give up control, in an await that blocks or
 *   in an asynq_wait nested in it, the scheduler clears the hook and calls
 *   it, as that task, before anything else can run. The hook may return a
 *   task it spawned (asynq_spawn, not started): the scheduler starts it at
 *   once, right behind the tasks that await starts (so the job's own
 *   children still run first, depth first, as they would were each job a
 *   task), and makes it a sibling of the blocking task: same creator (for
 *   scoped values, contexts and stack traces) and depth.
 * - Between jobs the task drops what one job left on it that the next must
 *   not see: its last error (asynqi_task_error_clear) and scoped values it
 *   left pushed (asynqi_task_scoped_unwind); it names itself for the job
 *   it runs (asynqi_task_rename, for dumps, traces and profiles).
 */
#ifndef ASYNQ_CORE_HANDOFF_H
#define ASYNQ_CORE_HANDOFF_H

#include "asynq/asynq.h"

typedef struct asynqi_handoff {
	/* Returns a task spawned for the jobs left, or NULL. */
	asynq_future *(*fn)(void *arg);
	void *arg;
} asynqi_handoff;

/* asynqi_task_set_handoff sets t's hook (NULL: none); h must live until it
 * is called or cleared. t is the running task. */
void asynqi_task_set_handoff(asynq_task *t, const asynqi_handoff *h);

/* asynqi_task_scoped_mark returns a mark of t's scoped values pushed so
 * far; asynqi_task_scoped_unwind pops those t pushed since (what a job
 * left pushed), as a finished task's are. */
const void *asynqi_task_scoped_mark(const asynq_task *t);
void asynqi_task_scoped_unwind(asynq_task *t, const void *mark);

/* asynqi_task_error_clear drops t's last error (asynq_fail's). */
void asynqi_task_error_clear(asynq_task *t);

/* asynqi_task_rename names t `name` (static, or outliving t). */
void asynqi_task_rename(asynq_task *t, const char *name);

#endif /* ASYNQ_CORE_HANDOFF_H */
