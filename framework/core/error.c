/* SPDX-License-Identifier: MIT */
/*
 * Status names and error values. An error is immutable after it is made and
 * reference counted with atomics, so it may cross threads (an RPC reply made
 * on an I/O thread, read by a task).
 *
 * Design notes:
 * - The asynq stack is captured as (function, file, line) triples pointing at
 *   the static strings tasks were spawned with; no task is kept alive by an
 *   error. At most MAX_FRAMES innermost frames are kept, with the number of
 *   frames left out.
 * - NULL stands for the out-of-memory error everywhere, so a failed
 *   allocation still reads as RESOURCE_EXHAUSTED.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MAX_FRAMES 32

typedef struct frame {
	const char *name;
	const char *file;
	int line;
} frame;

struct asynq_error {
	atomic_uint refs;
	asynq_status code;
	asynq_error *cause;
	size_t n_frames;
	size_t omitted;
	frame frames[MAX_FRAMES]; /* [0] innermost */
	char message[];
};

static const char *const descriptions[] = {
#define DESC(name, num, desc) [num] = desc,
	ASYNQ_STATUS_LIST(DESC)
#undef DESC
};

static const char *const names[] = {
#define NAME(name, num, desc) [num] = #name,
	ASYNQ_STATUS_LIST(NAME)
#undef NAME
};

const char *
asynq_strerror(asynq_status s)
{
	if ((unsigned)s >= ASYNQ_STATUS_COUNT)
		return "unknown status";
	return descriptions[s];
}

const char *
asynq_status_name(asynq_status s)
{
	if ((unsigned)s >= ASYNQ_STATUS_COUNT)
		return "UNKNOWN";
	return names[s];
}

asynq_error *
asynqi_error_make(asynq_task *t, asynq_status code, asynq_error *cause,
    const char *fmt, va_list ap)
{
	va_list ap2;
	va_copy(ap2, ap);
	int len = vsnprintf(NULL, 0, fmt, ap2);
	va_end(ap2);
	if (len < 0)
		len = 0;
	asynq_error *e = malloc(sizeof(*e) + (size_t)len + 1);
	if (e == NULL)
		return NULL;
	atomic_init(&e->refs, 1);
	e->code = code;
	e->cause = cause != NULL ? asynq_error_hold(cause) : NULL;
	vsnprintf(e->message, (size_t)len + 1, fmt, ap);
	e->n_frames = 0;
	e->omitted = 0;
	for (; t != NULL; t = t->creator) {
		if (e->n_frames == MAX_FRAMES) {
			e->omitted++;
			continue;
		}
		frame *fr = &e->frames[e->n_frames++];
		fr->name = t->name;
		fr->file = t->file;
		fr->line = t->line;
	}
	return e;
}

asynq_error *
asynqi_error_makef(asynq_task *t, asynq_status code, asynq_error *cause,
    const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	asynq_error *e = asynqi_error_make(t, code, cause, fmt, ap);
	va_end(ap);
	return e;
}

asynq_error *
asynq_error_valloc(asynq_status code, const char *fmt, va_list ap)
{
	return asynqi_error_make(asynq_task_current(), code, NULL, fmt, ap);
}

asynq_error *
asynq_error_alloc(asynq_status code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	asynq_error *e = asynq_error_valloc(code, fmt, ap);
	va_end(ap);
	return e;
}

asynq_error *
asynq_error_wrap(asynq_error *cause, asynq_status code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	asynq_error *e =
	    asynqi_error_make(asynq_task_current(), code, cause, fmt, ap);
	va_end(ap);
	return e;
}

asynq_error *
asynq_error_hold(asynq_error *e)
{
	if (e != NULL)
		atomic_fetch_add_explicit(&e->refs, 1, memory_order_relaxed);
	return e;
}

void
asynq_error_rele(asynq_error *e)
{
	while (e != NULL) {
		if (atomic_fetch_sub_explicit(&e->refs, 1,
		        memory_order_acq_rel) != 1)
			return;
		asynq_error *cause = e->cause;
		free(e);
		e = cause;
	}
}

asynq_status
asynq_error_code(const asynq_error *e)
{
	return e != NULL ? e->code : ASYNQ_RESOURCE_EXHAUSTED;
}

const char *
asynq_error_message(const asynq_error *e)
{
	return e != NULL ? e->message : "out of memory";
}

asynq_error *
asynq_error_cause(const asynq_error *e)
{
	return e != NULL ? e->cause : NULL;
}

size_t
asynq_error_frames(const asynq_error *e)
{
	return e != NULL ? e->n_frames : 0;
}

const char *
asynq_error_frame(const asynq_error *e, size_t i, const char **file, int *line)
{
	if (e == NULL || i >= e->n_frames)
		return NULL;
	if (file != NULL)
		*file = e->frames[i].file;
	if (line != NULL)
		*line = e->frames[i].line;
	return e->frames[i].name;
}

/* Appends to a bounded buffer, counting what the whole text needs. */
typedef struct out {
	char *buf;
	size_t size, len;
} out;

static void put(out *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
put(out *o, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	size_t room = o->len < o->size ? o->size - o->len : 0;
	int n = vsnprintf(room > 0 ? o->buf + o->len : NULL, room, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->len += (size_t)n;
}

static void
format_one(out *o, const asynq_error *e)
{
	if (e != NULL && e->n_frames > 0) {
		put(o, "asynq traceback (innermost task last):\n");
		if (e->omitted > 0)
			put(o, "  ... %zu outer tasks omitted\n", e->omitted);
		for (size_t i = e->n_frames; i-- > 0;)
			put(o, "  task %s, spawned at %s:%d\n",
			    e->frames[i].name, e->frames[i].file,
			    e->frames[i].line);
	}
	put(o, "%s: %s\n", asynq_status_name(asynq_error_code(e)),
	    asynq_error_message(e));
}

size_t
asynq_error_format(const asynq_error *e, char *buf, size_t size)
{
	out o = { buf, size, 0 };
	if (size > 0)
		buf[0] = '\0';
	format_one(&o, e);
	for (const asynq_error *c = asynq_error_cause(e); c != NULL;
	     c = c->cause) {
		put(&o, "caused by: ");
		format_one(&o, c);
	}
	return o.len;
}

void
asynq_error_print(const asynq_error *e, FILE *f)
{
	char small[1024];
	size_t n = asynq_error_format(e, small, sizeof(small));
	if (n < sizeof(small)) {
		fputs(small, f);
		return;
	}
	char *big = malloc(n + 1);
	if (big == NULL) {
		fputs(small, f);
		return;
	}
	asynq_error_format(e, big, n + 1);
	fputs(big, f);
	free(big);
}
