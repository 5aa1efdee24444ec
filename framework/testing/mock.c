/* SPDX-License-Identifier: MIT */
/*
 * Mocks of async functions: a script of outcomes handed out in call order,
 * as constant futures or as items of the mock's own batch backend, and the
 * swap of a mockable function pointer.
 *
 * Design notes:
 * - The script is an array that only grows; a cursor marks the next entry.
 *   Entries stay until the mock is freed, so a batched call can name its
 *   outcome by index (the item's key) however the array moves meanwhile.
 *   Keys below zero mean the default result or an unexpected call.
 * - A pointer result belongs to the mock until a future takes it (at the
 *   call, or at the flush for a batched mock); the mock frees what no future
 *   took.
 * - The core frees a batch through its backend when the batch's last item
 *   is freed, which may be after the mock is gone (a test keeps a cancelled
 *   future). So the backend lives in a separate shell counting its live
 *   batches, with its own copy of the name; the mock detaches from it and
 *   the last of the two frees it.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asynq/testing.h"

enum { OC_I64, OC_PTR, OC_ERR };

enum { KEY_DEFAULT = -1, KEY_UNEXPECTED = -2 };

typedef struct outcome {
	int kind;
	int64_t i;
	void *p;
	void (*free_fn)(void *);
	bool taken; /* a future owns p */
	asynq_status code;
	char *msg;
} outcome;

/* The backend, apart from the mock so that batches may outlive it. */
typedef struct mock_be {
	asynq_backend be; /* first: the flush finds the shell from it */
	asynq_mock *mock; /* NULL once the mock is freed */
	size_t batches;   /* live batches */
	char name[];
} mock_be;

struct asynq_mock {
	mock_be *shell;
	const char *name; /* the shell's copy */
	asynq_mock_mode mode;
	outcome *script;
	size_t n_script, cap_script, next;
	bool has_default;
	int64_t dflt;
	int64_t *args;
	size_t cap_args;
	size_t calls, unexpected, flushes;
	void *slot;
	size_t slot_size;
	unsigned char saved[sizeof(void (*)(void))];
	bool installed;
};

static asynq_batch *
mock_batch_alloc(asynq_backend *be)
{
	asynq_batch *b = calloc(1, sizeof(asynq_batch));
	if (b != NULL)
		((mock_be *)be)->batches++;
	return b;
}

static void
mock_batch_free(asynq_batch *b)
{
	mock_be *sh = (mock_be *)b->backend;
	free(b);
	if (--sh->batches == 0 && sh->mock == NULL)
		free(sh);
}

static asynq_error *
unexpected_error(const asynq_mock *m, size_t call)
{
	return asynq_error_alloc(ASYNQ_FAILED_PRECONDITION,
	    "mock %s: unexpected call #%zu (script used up, no default)",
	    m->name, call + 1);
}

static asynq_error *
outcome_error(const asynq_mock *m, const outcome *o)
{
	return asynq_error_alloc(o->code, "%s",
	    o->msg != NULL ? o->msg : m->name);
}

static asynq_status
mock_flush(asynq_batch *b)
{
	asynq_mock *m = ((mock_be *)b->backend)->mock;
	m->flushes++;
	for (size_t i = 0; i < asynq_batch_size(b); i++) {
		asynq_future *item = asynq_batch_item(b, i);
		int64_t key = asynq_item_key(item);
		if (key == KEY_DEFAULT) {
			asynq_item_set_i64(item, m->dflt);
			continue;
		}
		if (key == KEY_UNEXPECTED) {
			asynq_item_set_error(item,
			    unexpected_error(m,
			        (size_t)(uintptr_t)asynq_item_req(item)));
			continue;
		}
		outcome *o = &m->script[key];
		switch (o->kind) {
		case OC_I64:
			asynq_item_set_i64(item, o->i);
			break;
		case OC_PTR:
			o->taken = true;
			asynq_item_set_ptr(item, o->p, o->free_fn);
			break;
		default:
			asynq_item_set_error(item, outcome_error(m, o));
			break;
		}
	}
	return ASYNQ_OK;
}

static const asynq_backend_ops mock_ops = {
	.batch_alloc = mock_batch_alloc,
	.flush = mock_flush,
	.batch_free = mock_batch_free,
};

asynq_status
asynq_mock_alloc(asynq_mock **mp, const char *name, asynq_mock_mode mode)
{
	if (name == NULL)
		name = "mock";
	asynq_mock *m = calloc(1, sizeof(*m));
	if (m == NULL)
		goto fail_mock;
	size_t len = strlen(name) + 1;
	if ((m->shell = calloc(1, sizeof(*m->shell) + len)) == NULL)
		goto fail_shell;
	memcpy(m->shell->name, name, len);
	m->shell->mock = m;
	m->name = m->shell->name;
	m->mode = mode;
	asynq_backend_init(&m->shell->be, &mock_ops, m->name);
	*mp = m;
	return ASYNQ_OK;

fail_shell:
	free(m);
fail_mock:
	return ASYNQ_RESOURCE_EXHAUSTED;
}

void
asynq_mock_free(asynq_mock *m)
{
	if (m == NULL)
		return;
	asynq_mock_restore(m);
	asynq_backend_fini(&m->shell->be);
	m->shell->mock = NULL;
	if (m->shell->batches == 0)
		free(m->shell);
	for (size_t i = 0; i < m->n_script; i++) {
		outcome *o = &m->script[i];
		if (o->kind == OC_PTR && !o->taken && o->free_fn != NULL)
			o->free_fn(o->p);
		free(o->msg);
	}
	free(m->script);
	free(m->args);
	free(m);
}

asynq_status
asynq_mock_install_at(asynq_mock *m, void *slot, size_t size,
    const void *replacement)
{
	if (m->installed)
		return ASYNQ_FAILED_PRECONDITION;
	if (slot == NULL || size > sizeof(m->saved))
		return ASYNQ_INVALID_ARGUMENT;
	memcpy(m->saved, slot, size);
	memcpy(slot, replacement, size);
	m->slot = slot;
	m->slot_size = size;
	m->installed = true;
	return ASYNQ_OK;
}

void
asynq_mock_restore(asynq_mock *m)
{
	if (!m->installed)
		return;
	memcpy(m->slot, m->saved, m->slot_size);
	m->installed = false;
	m->slot = NULL;
}

static outcome *
script_push(asynq_mock *m)
{
	if (m->n_script == m->cap_script) {
		size_t ncap = m->cap_script != 0 ? m->cap_script * 2 : 8;
		outcome *ns = realloc(m->script, ncap * sizeof(*ns));
		if (ns == NULL)
			return NULL;
		m->script = ns;
		m->cap_script = ncap;
	}
	outcome *o = &m->script[m->n_script++];
	memset(o, 0, sizeof(*o));
	return o;
}

asynq_status
asynq_mock_returns_i64(asynq_mock *m, int64_t v)
{
	outcome *o = script_push(m);
	if (o == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	o->kind = OC_I64;
	o->i = v;
	return ASYNQ_OK;
}

asynq_status
asynq_mock_returns_ptr(asynq_mock *m, void *p, void (*free_fn)(void *))
{
	outcome *o = script_push(m);
	if (o == NULL) {
		if (free_fn != NULL)
			free_fn(p);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	o->kind = OC_PTR;
	o->p = p;
	o->free_fn = free_fn;
	return ASYNQ_OK;
}

asynq_status
asynq_mock_fails(asynq_mock *m, asynq_status code, const char *fmt, ...)
{
	va_list ap;
	char *msg = NULL;

	va_start(ap, fmt);
	int n = vasprintf(&msg, fmt, ap);
	va_end(ap);
	if (n < 0)
		return ASYNQ_RESOURCE_EXHAUSTED;
	outcome *o = script_push(m);
	if (o == NULL) {
		free(msg);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	o->kind = OC_ERR;
	o->code = code;
	o->msg = msg;
	return ASYNQ_OK;
}

void
asynq_mock_returns_default_i64(asynq_mock *m, int64_t v)
{
	m->has_default = true;
	m->dflt = v;
}

/* Records argument arg of call number `call`. */
static void
record_arg(asynq_mock *m, size_t call, int64_t arg)
{
	if (call >= m->cap_args) {
		size_t ncap = m->cap_args != 0 ? m->cap_args * 2 : 16;
		while (ncap <= call)
			ncap *= 2;
		int64_t *na = realloc(m->args, ncap * sizeof(*na));
		if (na == NULL)
			return; /* the argument is lost, the call is not */
		memset(na + m->cap_args, 0, (ncap - m->cap_args) * sizeof(*na));
		m->args = na;
		m->cap_args = ncap;
	}
	m->args[call] = arg;
}

static asynq_future *
mock_answer(asynq_mock *m, size_t call)
{
	int64_t key;
	if (m->next < m->n_script) {
		key = (int64_t)m->next++;
	} else if (m->has_default) {
		key = KEY_DEFAULT;
	} else {
		key = KEY_UNEXPECTED;
		m->unexpected++;
	}
	if (m->mode == ASYNQ_MOCK_BATCHED)
		return asynq_batch_add(&m->shell->be, key,
		    (void *)(uintptr_t)call);
	if (key == KEY_DEFAULT)
		return asynq_const_i64(m->dflt);
	if (key == KEY_UNEXPECTED)
		return asynq_const_error(unexpected_error(m, call));
	outcome *o = &m->script[key];
	switch (o->kind) {
	case OC_I64:
		return asynq_const_i64(o->i);
	case OC_PTR:
		o->taken = true;
		return asynq_const_ptr(o->p, o->free_fn);
	default:
		return asynq_const_error(outcome_error(m, o));
	}
}

asynq_future *
asynq_mock_call(asynq_mock *m)
{
	size_t call = m->calls++;
	return mock_answer(m, call);
}

asynq_future *
asynq_mock_call_i64(asynq_mock *m, int64_t arg)
{
	size_t call = m->calls++;
	record_arg(m, call, arg);
	return mock_answer(m, call);
}

size_t
asynq_mock_calls(const asynq_mock *m)
{
	return m->calls;
}

int64_t
asynq_mock_arg_i64(const asynq_mock *m, size_t i)
{
	return i < m->cap_args && i < m->calls ? m->args[i] : 0;
}

size_t
asynq_mock_unexpected(const asynq_mock *m)
{
	return m->unexpected;
}

size_t
asynq_mock_remaining(const asynq_mock *m)
{
	return m->n_script - m->next;
}

size_t
asynq_mock_flushes(const asynq_mock *m)
{
	return m->flushes;
}
