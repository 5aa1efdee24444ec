/* SPDX-License-Identifier: MIT */
/*
 * Retries with exponential backoff and jitter (asynq's @aretry). The retry
 * task calls the user's body once per try on its own task, so the value or
 * error of the last try is the task's; between tries it awaits asynq_sleep,
 * which suspends only this task.
 *
 * Design notes:
 * - Jitter draws from the per-thread generator (asynqi_thread_rand); it
 *   only ever shortens a wait, so max_delay_ns stays a true cap.
 */
#include <string.h>

#include "tcall.h"
#include "framework/core/platform.h"

#define MS 1000000ull

static void
retry_defaults(asynq_retry_cfg *c, const asynq_retry_cfg *in)
{
	if (in != NULL)
		*c = *in;
	else
		memset(c, 0, sizeof(*c));
	if (c->max_tries == 0)
		c->max_tries = 3;
	if (c->delay_ns == 0)
		c->delay_ns = 50 * MS;
	if (!(c->backoff >= 1.0))
		c->backoff = c->backoff == 0.0 ? 2.0 : 1.0;
	if (!(c->jitter >= 0.0))
		c->jitter = 0.0;
	if (c->jitter > 1.0)
		c->jitter = 1.0;
	if (c->retry_on == 0)
		c->retry_on = ASYNQ_RETRY_ON(ASYNQ_UNAVAILABLE);
}

uint64_t
asynq_retry_delay_ns(const asynq_retry_cfg *cfg, size_t try_no)
{
	asynq_retry_cfg c;
	retry_defaults(&c, cfg);
	double cap = c.max_delay_ns != 0 ? (double)c.max_delay_ns : 1.8e19;
	double d = (double)c.delay_ns;
	for (size_t i = 0; i < try_no && d < cap; i++)
		d *= c.backoff;
	return (uint64_t)(d < cap ? d : cap);
}

static uint64_t
jittered(uint64_t d, double jitter)
{
	if (jitter <= 0.0 || d == 0)
		return d;
	double r = (double)(asynqi_thread_rand() >> 11) /
	    9007199254740992.0; /* [0,1) */
	return (uint64_t)((double)d * (1.0 - jitter * r));
}

asynq_status
asynqi_retry_run(asynq_task *t, tcall *e)
{
	const asynq_retry_cfg *c = &e->retry;
	asynq_status st = ASYNQ_OK;
	for (size_t i = 0; i < c->max_tries; i++) {
		st = e->fn(t, e->arg);
		if (st == ASYNQ_OK || (unsigned)st >= 32 ||
		    (c->retry_on & ASYNQ_RETRY_ON(st)) == 0 ||
		    i + 1 == c->max_tries)
			return st;
		/* Keep the try's error across the sleep: awaiting replaces
		 * the task's last error only on failure. */
		uint64_t d = jittered(asynq_retry_delay_ns(c, i), c->jitter);
		asynq_future *f = asynq_sleep(d);
		asynq_status sst = asynq_await(t, f);
		asynq_future_rele(f);
		if (sst != ASYNQ_OK)
			return sst;
	}
	return st;
}

asynq_future *
asynq_retry_call_at(const asynq_retry_cfg *cfg, asynq_task_fn fn, void *arg,
    void (*arg_free)(void *), const char *name, const char *file, int line)
{
	tcall proto;
	memset(&proto, 0, sizeof(proto));
	proto.kind = TCALL_RETRY;
	retry_defaults(&proto.retry, cfg);
	return asynqi_ctab_call(NULL, NULL, 0, &proto, fn, arg, arg_free, name,
	    file, line);
}
