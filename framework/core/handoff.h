/* SPDX-License-Identifier: MIT */
/*
 * Handoff: running many short jobs as plain calls inside one task, and
 * handing the jobs left to a new task the moment one of them suspends.
 * The RPC server runs a request's per-call handlers this way, so a handler
 * that finishes without suspending costs a function call, not a task.
 *
 * - A task sets a hook (asynqi_task_job_begin) before it calls a job.
 *   When that task is about to give up control, in an await that blocks or
 *   in an asynq_wait nested in it, the scheduler clears the hook and calls
 *   it, as that task, before anything else can run. The hook may return a
 *   task it spawned (asynq_spawn, not started): the scheduler starts it at
 *   once, right behind the tasks that await starts (so the job's own
 *   children still run first, depth first, as they would were each job a
 *   task), and makes it a sibling of the blocking task: same creator (for
 *   scoped values, contexts and stack traces) and depth.
 * - After a job (asynqi_task_job_end) the task drops what the job left on
 *   it that the next must not see: its last error and the scoped values
 *   it left pushed. It is named for the job it runs (for dumps, traces
 *   and profiles).
 */
#ifndef ASYNQ_CORE_HANDOFF_H
#define ASYNQ_CORE_HANDOFF_H

#include "asynq/asynq.h"

typedef struct asynqi_handoff {
	/* Returns a task spawned for the jobs left, or NULL. */
	asynq_future *(*fn)(void *arg);
	void *arg;
} asynqi_handoff;

/* asynqi_task_job_begin: t, the running task, is about to run a job
 * named `name` with the hook h (NULL: none; h must live until it is called
 * or the job ends). Names t after the job, sets the hook and returns a
 * mark of t's scoped values. */
const void *asynqi_task_job_begin(asynq_task *t, const char *name,
    const asynqi_handoff *h);

/* asynqi_task_job_end: the job begun with `mark` is done. Clears the hook,
 * pops the scoped values the job left pushed (as a finished task's are)
 * and drops t's last error (asynq_fail's), so the next job sees none. */
void asynqi_task_job_end(asynq_task *t, const void *mark);

/* asynqi_scoped_push_slot is asynq_scoped_push returning where the value
 * is kept (NULL without memory): a task running jobs one after another
 * pushes a value once, before the first job's mark, and changes it in
 * place for each job rather than pushing and popping it every time.
 * Scheduler thread only; pop it with asynq_scoped_pop. */
void **asynqi_scoped_push_slot(const asynq_scoped *key, void *value);

#endif /* ASYNQ_CORE_HANDOFF_H */
