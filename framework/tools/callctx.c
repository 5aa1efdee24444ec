/* SPDX-License-Identifier: MIT */
/*
 * A call under a context (asynq's call_with_context): the context is entered
 * inside a task of its own, so it covers that call and the tasks it creates
 * but none of the caller's other tasks running alongside.
 */
#include <string.h>

#include "tcall.h"

asynq_future *
asynq_call_with_context_at(asynq_context *ctx, asynq_task_fn fn, void *arg,
    void (*arg_free)(void *), const char *name, const char *file, int line)
{
	tcall proto;
	memset(&proto, 0, sizeof(proto));
	proto.kind = TCALL_CTX;
	proto.ctx = ctx;
	return asynqi_ctab_call(NULL, NULL, 0, &proto, fn, arg, arg_free, name,
	    file, line);
}
