/* SPDX-License-Identifier: MIT */
/*
 * The event hook (asynq's AsyncEventHook with safe_trigger semantics): each
 * handler subscribed when the event fires runs as its own task; all are
 * awaited together, so every handler runs even when some fail, and the first
 * failure in subscription order is reported afterwards.
 */
#include <stdlib.h>
#include <string.h>

#include "asynq/tools.h"

void
asynq_hook_init(asynq_event_hook *h)
{
	memset(h, 0, sizeof(*h));
}

void
asynq_hook_fini(asynq_event_hook *h)
{
	if (h == NULL)
		return;
	free(h->handlers);
	memset(h, 0, sizeof(*h));
}

asynq_status
asynq_hook_subscribe(asynq_event_hook *h, asynq_handler_fn fn, void *arg)
{
	if (h->n == h->cap) {
		size_t cap = h->cap != 0 ? h->cap * 2 : 4;
		asynq_hook_handler *hs =
		    realloc(h->handlers, cap * sizeof(*hs));
		if (hs == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		h->handlers = hs;
		h->cap = cap;
	}
	h->handlers[h->n].fn = fn;
	h->handlers[h->n].arg = arg;
	h->n++;
	return ASYNQ_OK;
}

asynq_status
asynq_hook_unsubscribe(asynq_event_hook *h, asynq_handler_fn fn, void *arg)
{
	for (size_t i = 0; i < h->n; i++) {
		if (h->handlers[i].fn == fn && h->handlers[i].arg == arg) {
			memmove(&h->handlers[i], &h->handlers[i + 1],
			    (h->n - i - 1) * sizeof(h->handlers[0]));
			h->n--;
			return ASYNQ_OK;
		}
	}
	return ASYNQ_NOT_FOUND;
}

/* One handler call of one trigger. */
typedef struct hook_call {
	asynq_hook_handler handler;
	void *event;
} hook_call;

static asynq_status
hook_task(asynq_task *t, void *arg)
{
	hook_call *c = arg;
	return c->handler.fn(t, c->handler.arg, c->event);
}

asynq_status
asynq_hook_trigger(asynq_task *t, asynq_event_hook *h, void *event)
{
	size_t n = h->n;
	if (n == 0)
		return ASYNQ_OK;
	/* A snapshot: handlers may (un)subscribe while the event runs. */
	hook_call *calls = malloc(n * sizeof(*calls));
	asynq_future **fs = malloc(n * sizeof(*fs));
	if (calls == NULL || fs == NULL) {
		free(calls);
		free(fs);
		return t != NULL ? asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
		                       "asynq_hook_trigger: out of memory")
		                 : ASYNQ_RESOURCE_EXHAUSTED;
	}
	for (size_t i = 0; i < n; i++) {
		calls[i].handler = h->handlers[i];
		calls[i].event = event;
		fs[i] = asynq_spawn(hook_task, &calls[i]);
	}
	asynq_status st =
	    t != NULL ? asynq_await_all(t, fs, n) : asynq_wait_all(fs, n);
	asynq_future_rele_n(fs, n);
	free(fs);
	free(calls);
	return st;
}
