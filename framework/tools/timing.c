/* SPDX-License-Identifier: MIT */
/*
 * The timer context (asynq's AsyncTimer) and a sleep helper. The scheduler
 * resumes a context when its task, or a task that task created, is switched
 * in and pauses it when that task is switched out, so adding up the
 * resume-to-pause stretches measures the time spent running, not the time
 * spent suspended in awaits or sleeps.
 */
#include <string.h>

#include "asynq/tools.h"

static asynq_status
timer_resume(asynq_context *ctx)
{
	asynq_timer *tm = (asynq_timer *)ctx;
	tm->resumed_at = asynq_now_ns();
	return ASYNQ_OK;
}

static asynq_status
timer_pause(asynq_context *ctx)
{
	asynq_timer *tm = (asynq_timer *)ctx;
	tm->total_ns += asynq_now_ns() - tm->resumed_at;
	return ASYNQ_OK;
}

static const asynq_context_ops timer_ops = {
	.resume = timer_resume,
	.pause = timer_pause,
};

void
asynq_timer_init(asynq_timer *tm)
{
	memset(tm, 0, sizeof(*tm));
	asynq_context_init(&tm->ctx, &timer_ops);
}

asynq_status
asynq_timer_start(asynq_timer *tm)
{
	return asynq_context_enter(&tm->ctx);
}

asynq_status
asynq_timer_stop(asynq_timer *tm)
{
	return asynq_context_exit(&tm->ctx);
}

uint64_t
asynq_timer_ns(const asynq_timer *tm)
{
	if (tm->ctx.active)
		return tm->total_ns + (asynq_now_ns() - tm->resumed_at);
	return tm->total_ns;
}

asynq_status
asynq_sleep_for(asynq_task *t, uint64_t ns)
{
	asynq_future *f = asynq_sleep(ns);
	asynq_status st = t != NULL ? asynq_await(t, f) : asynq_wait(f);
	asynq_future_rele(f);
	return st;
}
