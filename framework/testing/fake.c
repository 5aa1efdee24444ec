/* SPDX-License-Identifier: MIT */
/*
 * A fake in-process backend for a generated service: calls join a batch of
 * the fake's own backend (the item's key is the method index, its request
 * pointer the call's request), and each flush is recorded as the requests an
 * RPC client would send for it, then answered by per-method handlers.
 *
 * Design notes:
 * - Records are two flat arrays: the method index of every call flushed, in
 *   order, and per request the offset and length of its calls in the first.
 * - A request holds at most the service's batch_max_calls calls, like the
 *   client's split of a large batch; 0 means no cap.
 * - Handlers run inside the flush (synchronous: every item is set before the
 *   flush returns), so a handler must not suspend.
 * - The core frees a batch through its backend when the batch's last item
 *   is freed, which may be after the fake is gone (a test keeps a cancelled
 *   future). So the backend lives in a separate shell counting its live
 *   batches; the fake detaches from it and the last of the two frees it.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "asynq/testing.h"

typedef struct handler {
	asynq_fake_handler fn;
	void *arg;
} handler;

typedef struct request {
	size_t first, n;
} request;

/* The backend, apart from the fake so that batches may outlive it. */
typedef struct fake_be {
	asynq_backend be; /* first: the flush finds the shell from it */
	asynq_fake *fake; /* NULL once the fake is freed */
	size_t batches;   /* live batches */
} fake_be;

struct asynq_fake {
	fake_be *shell;
	const asynq_rpc_service_desc *svc;
	handler *handlers;    /* one per method */
	size_t *method_calls; /* calls flushed, per method */
	size_t *calls;        /* method of every call flushed */
	size_t n_calls, cap_calls;
	request *reqs;
	size_t n_reqs, cap_reqs;
	size_t flushes;
};

static asynq_batch *
fake_batch_alloc(asynq_backend *be)
{
	asynq_batch *b = calloc(1, sizeof(asynq_batch));
	if (b != NULL)
		((fake_be *)be)->batches++;
	return b;
}

static void
fake_batch_free(asynq_batch *b)
{
	fake_be *sh = (fake_be *)b->backend;
	free(b);
	if (--sh->batches == 0 && sh->fake == NULL)
		free(sh);
}

static bool
grow(void **v, size_t *cap, size_t want, size_t sz)
{
	if (want <= *cap)
		return true;
	size_t ncap = *cap != 0 ? *cap : 16;
	while (ncap < want)
		ncap *= 2;
	void *nv = realloc(*v, ncap * sz);
	if (nv == NULL)
		return false;
	*v = nv;
	*cap = ncap;
	return true;
}

/* Records the batch as requests; false without memory. */
static bool
record(asynq_fake *f, asynq_batch *b)
{
	size_t n = asynq_batch_size(b);
	size_t cap = f->svc->batch_max_calls != 0 ? f->svc->batch_max_calls
	                                          : (n != 0 ? n : 1);
	size_t n_reqs = (n + cap - 1) / cap;
	if (!grow((void **)&f->calls, &f->cap_calls, f->n_calls + n,
	        sizeof(*f->calls)) ||
	    !grow((void **)&f->reqs, &f->cap_reqs, f->n_reqs + n_reqs,
	        sizeof(*f->reqs)))
		return false;
	for (size_t r = 0; r < n_reqs; r++) {
		size_t len = n - r * cap < cap ? n - r * cap : cap;
		f->reqs[f->n_reqs++] = (request){ f->n_calls + r * cap, len };
	}
	for (size_t i = 0; i < n; i++) {
		size_t m = (size_t)asynq_item_key(asynq_batch_item(b, i));
		f->calls[f->n_calls++] = m;
		f->method_calls[m]++;
	}
	return true;
}

static asynq_status
fake_flush(asynq_batch *b)
{
	asynq_fake *f = ((fake_be *)b->backend)->fake;
	f->flushes++;
	if (!record(f, b))
		return ASYNQ_RESOURCE_EXHAUSTED;
	for (size_t i = 0; i < asynq_batch_size(b); i++) {
		asynq_future *item = asynq_batch_item(b, i);
		size_t m = (size_t)asynq_item_key(item);
		const asynq_rpc_method_desc *md = &f->svc->methods[m];
		handler *h = &f->handlers[m];
		if (h->fn == NULL) {
			asynq_item_set_error(item,
			    asynq_error_alloc(ASYNQ_UNIMPLEMENTED,
			        "fake %s: no handler for %s", f->svc->full_name,
			        md->full_name));
			continue;
		}
		asynq_status st =
		    h->fn(f, m, asynq_item_req(item), item, h->arg);
		if (st != ASYNQ_OK && !asynq_future_done(item))
			asynq_item_set_error(item,
			    asynq_error_alloc(st, "fake %s: %s failed: %s",
			        f->svc->full_name, md->full_name,
			        asynq_strerror(st)));
	}
	return ASYNQ_OK;
}

static const asynq_backend_ops fake_ops = {
	.batch_alloc = fake_batch_alloc,
	.flush = fake_flush,
	.batch_free = fake_batch_free,
};

asynq_status
asynq_fake_alloc(asynq_fake **fp, const asynq_rpc_service_desc *svc)
{
	if (fp == NULL || svc == NULL)
		return ASYNQ_INVALID_ARGUMENT;
	asynq_fake *f = calloc(1, sizeof(*f));
	if (f == NULL)
		goto fail_fake;
	size_t n = svc->n_methods != 0 ? svc->n_methods : 1;
	if ((f->handlers = calloc(n, sizeof(*f->handlers))) == NULL)
		goto fail_handlers;
	if ((f->method_calls = calloc(n, sizeof(*f->method_calls))) == NULL)
		goto fail_counts;
	if ((f->shell = calloc(1, sizeof(*f->shell))) == NULL)
		goto fail_shell;
	f->shell->fake = f;
	f->svc = svc;
	asynq_backend_init(&f->shell->be, &fake_ops,
	    svc->full_name != NULL ? svc->full_name : "fake");
	*fp = f;
	return ASYNQ_OK;

fail_shell:
	free(f->method_calls);
fail_counts:
	free(f->handlers);
fail_handlers:
	free(f);
fail_fake:
	return ASYNQ_RESOURCE_EXHAUSTED;
}

void
asynq_fake_free(asynq_fake *f)
{
	if (f == NULL)
		return;
	asynq_backend_fini(&f->shell->be);
	f->shell->fake = NULL;
	if (f->shell->batches == 0)
		free(f->shell);
	free(f->handlers);
	free(f->method_calls);
	free(f->calls);
	free(f->reqs);
	free(f);
}

asynq_status
asynq_fake_handle(asynq_fake *f, size_t method, asynq_fake_handler fn,
    void *arg)
{
	if (method >= f->svc->n_methods)
		return ASYNQ_INVALID_ARGUMENT;
	f->handlers[method] = (handler){ fn, arg };
	return ASYNQ_OK;
}

int
asynq_fake_method_index(const asynq_fake *f, const char *name)
{
	for (size_t i = 0; i < f->svc->n_methods; i++) {
		const asynq_rpc_method_desc *md = &f->svc->methods[i];
		if ((md->name != NULL && strcmp(md->name, name) == 0) ||
		    (md->full_name != NULL && strcmp(md->full_name, name) == 0))
			return (int)i;
	}
	return -1;
}

asynq_future *
asynq_fake_call(asynq_fake *f, size_t method, void *req)
{
	if (method >= f->svc->n_methods)
		return asynq_const_error(asynq_error_alloc(
		    ASYNQ_INVALID_ARGUMENT, "fake %s: no method #%zu (%zu)",
		    f->svc->full_name, method, f->svc->n_methods));
	return asynq_batch_add(&f->shell->be, (int64_t)method, req);
}

asynq_backend *
asynq_fake_backend(asynq_fake *f)
{
	return &f->shell->be;
}

size_t
asynq_fake_flushes(const asynq_fake *f)
{
	return f->flushes;
}

size_t
asynq_fake_requests(const asynq_fake *f)
{
	return f->n_reqs;
}

size_t
asynq_fake_request_calls(const asynq_fake *f, size_t r)
{
	return r < f->n_reqs ? f->reqs[r].n : 0;
}

const char *
asynq_fake_request_method(const asynq_fake *f, size_t r, size_t c)
{
	if (r >= f->n_reqs || c >= f->reqs[r].n)
		return NULL;
	return f->svc->methods[f->calls[f->reqs[r].first + c]].full_name;
}

size_t
asynq_fake_calls(const asynq_fake *f, size_t method)
{
	if (method == SIZE_MAX)
		return f->n_calls;
	return method < f->svc->n_methods ? f->method_calls[method] : 0;
}

void
asynq_fake_clear(asynq_fake *f)
{
	f->n_calls = 0;
	f->n_reqs = 0;
	f->flushes = 0;
	if (f->svc->n_methods != 0)
		memset(f->method_calls, 0,
		    f->svc->n_methods * sizeof(*f->method_calls));
}
