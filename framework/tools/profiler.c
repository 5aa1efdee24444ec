/* SPDX-License-Identifier: MIT */
/*
 * The profiler: a trace hook that turns the scheduler's task and batch events
 * into per-task and per-batch records and a list of time spans, and a writer
 * that exports the spans as Chrome trace JSON.
 *
 * Design notes:
 * - One profile per thread, reached through a thread-local pointer; the hook
 *   runs synchronously on the scheduler thread, so nothing is locked.
 * - Only one task runs at a time on a scheduler, and the core reports a
 *   SUSPEND before any other task's RUN (asynq_await switches out; a nested
 *   asynq_wait suspends its caller before running its loop), so run slices
 *   never overlap: self time is the sum of the slices. A flush made while a
 *   task runs (an explicit asynq_batch_flush) is subtracted from that slice.
 * - Task and batch ids restart when a thread's scheduler is freed and made
 *   again: a SPAWN for an id whose record finished starts a new record.
 * - Names are copied (interned by pointer, checked by content), so a profile
 *   outlives dynamically made task names and backends.
 * - Memory exhaustion inside the hook drops the event and counts it; the
 *   hook never fails the scheduler.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "asynq/profiler.h"

/* ---- A small u64 -> index hash map (open addressing) --------------------- */

typedef struct map_ent {
	uint64_t key;
	size_t val1; /* value + 1; 0 marks an empty slot */
} map_ent;

typedef struct map {
	map_ent *ents;
	size_t cap, len; /* cap is a power of two */
} map;

static uint64_t
map_hash(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	return k;
}

static size_t *
map_find(const map *m, uint64_t key)
{
	if (m->cap == 0)
		return NULL;
	for (size_t i = map_hash(key) & (m->cap - 1);;
	     i = (i + 1) & (m->cap - 1)) {
		map_ent *e = &m->ents[i];
		if (e->val1 == 0)
			return NULL;
		if (e->key == key)
			return &e->val1;
	}
}

static bool
map_put(map *m, uint64_t key, size_t val)
{
	size_t *v = map_find(m, key);
	if (v != NULL) {
		*v = val + 1;
		return true;
	}
	if ((m->len + 1) * 2 > m->cap) {
		size_t ncap = m->cap != 0 ? m->cap * 2 : 64;
		map_ent *ne = calloc(ncap, sizeof(*ne));
		if (ne == NULL)
			return false;
		for (size_t i = 0; i < m->cap; i++) {
			map_ent *e = &m->ents[i];
			if (e->val1 == 0)
				continue;
			size_t j = map_hash(e->key) & (ncap - 1);
			while (ne[j].val1 != 0)
				j = (j + 1) & (ncap - 1);
			ne[j] = *e;
		}
		free(m->ents);
		m->ents = ne;
		m->cap = ncap;
	}
	size_t j = map_hash(key) & (m->cap - 1);
	while (m->ents[j].val1 != 0)
		j = (j + 1) & (m->cap - 1);
	m->ents[j].key = key;
	m->ents[j].val1 = val + 1;
	m->len++;
	return true;
}

static void
map_fini(map *m)
{
	free(m->ents);
	memset(m, 0, sizeof(*m));
}

/* Grows a vector of elements of size `sz` to hold one more. */
static bool
vec_reserve(void **v, size_t *cap, size_t len, size_t sz)
{
	if (len < *cap)
		return true;
	size_t ncap = *cap != 0 ? *cap * 2 : 64;
	void *nv = realloc(*v, ncap * sz);
	if (nv == NULL)
		return false;
	*v = nv;
	*cap = ncap;
	return true;
}

/* ---- The profile ------------------------------------------------------- */

enum { SPAN_TASK, SPAN_FLUSH };
enum { END_SUSPEND, END_FINISH, END_STOP };

typedef struct span {
	uint8_t kind; /* SPAN_* */
	uint8_t end;  /* END_*, task spans */
	size_t rec;   /* task or batch record */
	uint64_t start, dur;
	size_t deps; /* task spans ending in a suspend */
} span;

typedef struct task_rec {
	asynq_profile_task pub;
	uint64_t run_start;    /* 0 when not running */
	uint64_t flush_in_run; /* flush time inside the open slice */
} task_rec;

typedef struct profile {
	bool running;
	uint64_t start_ns, stop_ns;
	long pid, tid;
	size_t dropped;
	size_t max_records; /* spans plus batches kept; 0: no limit */

	task_rec *tasks;
	size_t n_tasks, cap_tasks;
	map task_ids;

	asynq_profile_batch *batches;
	size_t n_batches, cap_batches;
	map batch_ids;

	span *spans;
	size_t n_spans, cap_spans;

	char **names; /* interned copies */
	size_t n_names, cap_names;
	map name_ptrs;

	size_t running_task; /* record + 1, 0 when none runs */
} profile;

static void profile_free(profile *p);

/* The thread's profile hangs off its scheduler (asynq_thread_local): the
 * thread's teardown stops a running profile and frees it. */
static void *
slot_make(void)
{
	return calloc(1, sizeof(profile *));
}

static void
slot_stop(void *p)
{
	profile *pr = *(profile **)p;
	if (pr != NULL && pr->running)
		asynq_profiler_stop();
}

static void
slot_free(void *p)
{
	profile_free(*(profile **)p);
	free(p);
}

static asynq_thread_local prof_key =
    ASYNQ_THREAD_LOCAL_INIT("asynq.profiler", slot_make, slot_stop, slot_free);

/* The thread's profile slot; once its scheduler's states are freed, an
 * empty one (nothing is profiled then). */
static profile **
prof_slot(void)
{
	static _Thread_local profile *none;
	profile **slot = asynq_thread_local_get(&prof_key);
	if (slot != NULL)
		return slot;
	none = NULL;
	return &none;
}

#define prof (*prof_slot())

static void
profile_free(profile *p)
{
	if (p == NULL)
		return;
	for (size_t i = 0; i < p->n_names; i++)
		free(p->names[i]);
	free(p->names);
	map_fini(&p->name_ptrs);
	free(p->tasks);
	map_fini(&p->task_ids);
	free(p->batches);
	map_fini(&p->batch_ids);
	free(p->spans);
	free(p);
}

/* Returns a copy of s owned by the profile, NULL without memory. */
static const char *
intern(profile *p, const char *s)
{
	if (s == NULL)
		s = "?";
	size_t *v = map_find(&p->name_ptrs, (uint64_t)(uintptr_t)s);
	if (v != NULL && strcmp(p->names[*v - 1], s) == 0)
		return p->names[*v - 1];
	if (!vec_reserve((void **)&p->names, &p->cap_names, p->n_names,
	        sizeof(*p->names)))
		return NULL;
	char *copy = strdup(s);
	if (copy == NULL)
		return NULL;
	if (!map_put(&p->name_ptrs, (uint64_t)(uintptr_t)s, p->n_names)) {
		free(copy);
		return NULL;
	}
	p->names[p->n_names++] = copy;
	return copy;
}

/* Returns the record of task `id`, making one if needed (or if `fresh` and
 * the known one finished); NULL without memory. */
static task_rec *
task_get(profile *p, const asynq_trace_event *ev, bool fresh)
{
	size_t *v = map_find(&p->task_ids, ev->task_id);
	if (v != NULL && !(fresh && p->tasks[*v - 1].pub.finished))
		return &p->tasks[*v - 1];
	const char *name = intern(p, ev->name);
	if (name == NULL)
		return NULL;
	if (!vec_reserve((void **)&p->tasks, &p->cap_tasks, p->n_tasks,
	        sizeof(*p->tasks)))
		return NULL;
	if (!map_put(&p->task_ids, ev->task_id, p->n_tasks))
		return NULL;
	task_rec *r = &p->tasks[p->n_tasks++];
	memset(r, 0, sizeof(*r));
	r->pub.id = ev->task_id;
	r->pub.creator_id = ev->creator_id;
	r->pub.name = name;
	return r;
}

static asynq_profile_batch *
batch_get(profile *p, const asynq_trace_event *ev, bool fresh)
{
	size_t *v = map_find(&p->batch_ids, ev->batch_id);
	if (v != NULL && !(fresh && p->batches[*v - 1].done))
		return &p->batches[*v - 1];
	const char *name = intern(p, ev->backend);
	if (name == NULL)
		return NULL;
	if (!vec_reserve((void **)&p->batches, &p->cap_batches, p->n_batches,
	        sizeof(*p->batches)))
		return NULL;
	if (!map_put(&p->batch_ids, ev->batch_id, p->n_batches))
		return NULL;
	asynq_profile_batch *b = &p->batches[p->n_batches++];
	memset(b, 0, sizeof(*b));
	b->id = ev->batch_id;
	b->backend = name;
	b->size = ev->batch_size;
	return b;
}

static void
span_add(profile *p, const span *s)
{
	if (!vec_reserve((void **)&p->spans, &p->cap_spans, p->n_spans,
	        sizeof(*p->spans))) {
		p->dropped++;
		return;
	}
	p->spans[p->n_spans++] = *s;
}

/* Ends the open run slice of task record r at `now`. */
static void
slice_end(profile *p, task_rec *r, uint64_t now, int end, size_t deps)
{
	if (r->run_start == 0)
		return;
	uint64_t dur = now - r->run_start;
	uint64_t self = dur > r->flush_in_run ? dur - r->flush_in_run : 0;
	r->pub.self_ns += self;
	span s = {
		.kind = SPAN_TASK,
		.end = (uint8_t)end,
		.rec = (size_t)(r - p->tasks),
		.start = r->run_start,
		.dur = dur,
		.deps = deps,
	};
	span_add(p, &s);
	r->run_start = 0;
	r->flush_in_run = 0;
	if (p->running_task == (size_t)(r - p->tasks) + 1)
		p->running_task = 0;
}

static void
on_event(const asynq_trace_event *ev, void *arg)
{
	profile *p = arg;
	uint64_t now = asynq_now_ns();
	task_rec *r;
	asynq_profile_batch *b;

	/* Full: everything later is dropped, counted, so a long profile of
	 * a busy thread stays bounded. */
	if (p->max_records != 0 &&
	    p->n_spans + p->n_batches >= p->max_records) {
		p->dropped++;
		return;
	}

	switch (ev->kind) {
	case ASYNQ_TRACE_SPAWN:
		if ((r = task_get(p, ev, true)) == NULL)
			break;
		r->pub.spawn_ns = now;
		r->pub.creator_id = ev->creator_id;
		return;
	case ASYNQ_TRACE_RUN:
		if ((r = task_get(p, ev, false)) == NULL)
			break;
		if (p->running_task != 0) /* defensive: never two at once */
			slice_end(p, &p->tasks[p->running_task - 1], now,
			    END_SUSPEND, 0);
		if (r->pub.first_run_ns == 0)
			r->pub.first_run_ns = now;
		r->pub.runs++;
		r->run_start = now;
		r->flush_in_run = 0;
		p->running_task = (size_t)(r - p->tasks) + 1;
		return;
	case ASYNQ_TRACE_SUSPEND:
		if ((r = task_get(p, ev, false)) == NULL)
			break;
		r->pub.suspends++;
		r->pub.deps_total += ev->deps;
		if (ev->deps > r->pub.deps_max)
			r->pub.deps_max = ev->deps;
		slice_end(p, r, now, END_SUSPEND, ev->deps);
		return;
	case ASYNQ_TRACE_FINISH:
		if ((r = task_get(p, ev, false)) == NULL)
			break;
		slice_end(p, r, now, END_FINISH, 0);
		r->pub.finished = true;
		r->pub.finish_ns = now;
		r->pub.status = ev->status;
		return;
	case ASYNQ_TRACE_FLUSH_BEGIN:
		if ((b = batch_get(p, ev, true)) == NULL)
			break;
		b->flushed = true;
		b->flush_begin_ns = now;
		b->size = ev->batch_size;
		return;
	case ASYNQ_TRACE_FLUSH_END: {
		if ((b = batch_get(p, ev, false)) == NULL)
			break;
		if (b->flush_begin_ns == 0) /* begun before start */
			b->flush_begin_ns = p->start_ns;
		b->flush_ns = now - b->flush_begin_ns;
		if (p->running_task != 0)
			p->tasks[p->running_task - 1].flush_in_run +=
			    b->flush_ns;
		span s = {
			.kind = SPAN_FLUSH,
			.rec = (size_t)(b - p->batches),
			.start = b->flush_begin_ns,
			.dur = b->flush_ns,
		};
		span_add(p, &s);
		return;
	}
	case ASYNQ_TRACE_BATCH_DONE:
		if ((b = batch_get(p, ev, false)) == NULL)
			break;
		b->done = true;
		b->done_ns = now;
		b->status = ev->status;
		if (!b->flushed)
			b->size = ev->batch_size;
		return;
	}
	p->dropped++;
}

asynq_status
asynq_profiler_start(void)
{
	return asynq_profiler_start_cfg(NULL);
}

asynq_status
asynq_profiler_start_cfg(const asynq_profiler_cfg *cfg)
{
	if (prof != NULL && prof->running)
		return ASYNQ_FAILED_PRECONDITION;
	if (asynq_sched_current() == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	profile *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	profile_free(prof);
	prof = p;
	p->pid = (long)getpid();
	p->tid = (long)syscall(SYS_gettid);
	p->start_ns = asynq_now_ns();
	p->max_records = cfg != NULL ? cfg->max_records : 0;
	p->running = true;
	asynq_trace_set(on_event, p);
	return ASYNQ_OK;
}

void
asynq_profiler_stop(void)
{
	profile *p = prof;
	if (p == NULL || !p->running)
		return;
	asynq_trace_set(NULL, NULL);
	p->running = false;
	p->stop_ns = asynq_now_ns();
	for (size_t i = 0; i < p->n_tasks; i++)
		slice_end(p, &p->tasks[i], p->stop_ns, END_STOP, 0);
}

bool
asynq_profiler_running(void)
{
	return prof != NULL && prof->running;
}

void
asynq_profiler_reset(void)
{
	asynq_profiler_stop();
	profile_free(prof);
	prof = NULL;
}

void
asynq_profiler_summary(asynq_profile_summary *out)
{
	profile *p = prof;
	memset(out, 0, sizeof(*out));
	if (p == NULL)
		return;
	out->tasks = p->n_tasks;
	for (size_t i = 0; i < p->n_tasks; i++) {
		const asynq_profile_task *t = &p->tasks[i].pub;
		out->tasks_finished += t->finished;
		out->runs += t->runs;
		out->task_self_ns += t->self_ns;
	}
	out->batches = p->n_batches;
	for (size_t i = 0; i < p->n_batches; i++) {
		const asynq_profile_batch *b = &p->batches[i];
		if (!b->flushed)
			continue;
		out->flushes++;
		out->items_flushed += b->size;
		out->flush_ns += b->flush_ns;
	}
	out->wall_ns = (p->running ? asynq_now_ns() : p->stop_ns) - p->start_ns;
	out->dropped = p->dropped;
}

size_t
asynq_profiler_task_count(void)
{
	return prof != NULL ? prof->n_tasks : 0;
}

bool
asynq_profiler_task(size_t i, asynq_profile_task *out)
{
	if (prof == NULL || i >= prof->n_tasks)
		return false;
	*out = prof->tasks[i].pub;
	return true;
}

size_t
asynq_profiler_batch_count(void)
{
	return prof != NULL ? prof->n_batches : 0;
}

bool
asynq_profiler_batch(size_t i, asynq_profile_batch *out)
{
	if (prof == NULL || i >= prof->n_batches)
		return false;
	*out = prof->batches[i];
	return true;
}

/* ---- Chrome trace export ----------------------------------------------- */

static void
put_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
		switch (*c) {
		case '"':
			fputs("\\\"", f);
			break;
		case '\\':
			fputs("\\\\", f);
			break;
		case '\n':
			fputs("\\n", f);
			break;
		case '\t':
			fputs("\\t", f);
			break;
		default:
			if (*c < 0x20)
				fprintf(f, "\\u%04x", *c);
			else
				fputc(*c, f);
		}
	}
	fputc('"', f);
}

/* Writes a time in microseconds since the profile began, exactly. */
static void
put_us(FILE *f, const profile *p, uint64_t ns, bool relative)
{
	uint64_t v = relative ? (ns > p->start_ns ? ns - p->start_ns : 0) : ns;
	fprintf(f, "%" PRIu64 ".%03u", v / 1000, (unsigned)(v % 1000));
}

static void
put_head(FILE *f, const profile *p, bool *first, const char *name,
    const char *cat, const char *ph)
{
	fputs(*first ? "\n" : ",\n", f);
	*first = false;
	fputs("{\"name\":", f);
	put_str(f, name);
	if (cat != NULL)
		fprintf(f, ",\"cat\":\"%s\"", cat);
	fprintf(f, ",\"ph\":\"%s\",\"pid\":%ld,\"tid\":%ld", ph, p->pid,
	    p->tid);
}

/* Writes the profile's events (no process name, no brackets) with times
 * counted from origin; see asynq_profiler_write_chrome_events. */
static void
put_events(FILE *f, profile *p, uint64_t origin, const char *thread_name,
    bool *first)
{
	char buf[256];
	/* put_us counts from p->start_ns; a merged trace counts from its
	 * own origin, the same for every thread. */
	uint64_t start = p->start_ns;
	p->start_ns = origin;

	put_head(f, p, first, "thread_name", NULL, "M");
	fputs(",\"args\":{\"name\":", f);
	put_str(f, thread_name != NULL ? thread_name : "asynq scheduler");
	fputs("}}", f);

	for (size_t i = 0; i < p->n_spans; i++) {
		const span *s = &p->spans[i];
		if (s->kind == SPAN_TASK) {
			const asynq_profile_task *t = &p->tasks[s->rec].pub;
			static const char *const ends[] = { "suspend", "finish",
				"stop" };
			put_head(f, p, first, t->name, "task", "X");
			fputs(",\"ts\":", f);
			put_us(f, p, s->start, true);
			fputs(",\"dur\":", f);
			put_us(f, p, s->dur, false);
			fprintf(f,
			    ",\"args\":{\"task\":%" PRIu64
			    ",\"creator\":%" PRIu64 ",\"end\":\"%s\"",
			    t->id, t->creator_id, ends[s->end]);
			if (s->end == END_SUSPEND)
				fprintf(f, ",\"deps\":%zu", s->deps);
			if (s->end == END_FINISH)
				fprintf(f, ",\"status\":\"%s\"",
				    asynq_status_name(t->status));
			fputs("}}", f);
		} else {
			const asynq_profile_batch *b = &p->batches[s->rec];
			snprintf(buf, sizeof(buf), "flush %s", b->backend);
			put_head(f, p, first, buf, "flush", "X");
			fputs(",\"ts\":", f);
			put_us(f, p, s->start, true);
			fputs(",\"dur\":", f);
			put_us(f, p, s->dur, false);
			fprintf(f,
			    ",\"args\":{\"size\":%zu,\"batch\":%" PRIu64
			    ",\"backend\":",
			    b->size, b->id);
			put_str(f, b->backend);
			fputs("}}", f);
		}
	}
	/* Batches from flush to done as async events: in-flight batches of
	 * an asynchronous backend overlap, which "X" events may not. Their
	 * ids carry the thread's id, so that the pairs of threads merged
	 * into one trace never match each other (thread ids are below
	 * 2^22, so the ids stay exact as JSON numbers). */
	uint64_t id_base = (uint64_t)p->tid << 28;
	for (size_t i = 0; i < p->n_batches; i++) {
		const asynq_profile_batch *b = &p->batches[i];
		if (!b->flushed || !b->done)
			continue;
		uint64_t id = id_base + (i + 1) % (1u << 28);
		snprintf(buf, sizeof(buf), "batch %s", b->backend);
		put_head(f, p, first, buf, "batch", "b");
		fprintf(f, ",\"id\":%" PRIu64 ",\"ts\":", id);
		put_us(f, p, b->flush_begin_ns, true);
		fprintf(f, ",\"args\":{\"size\":%zu}}", b->size);
		put_head(f, p, first, buf, "batch", "e");
		fprintf(f, ",\"id\":%" PRIu64 ",\"ts\":", id);
		put_us(f, p, b->done_ns, true);
		fprintf(f, ",\"args\":{\"status\":\"%s\"}}",
		    asynq_status_name(b->status));
	}
	p->start_ns = start;
}

asynq_status
asynq_profiler_write_chrome_events(FILE *f, uint64_t origin_ns,
    const char *thread_name, bool *first)
{
	profile *p = prof;
	if (f == NULL || first == NULL)
		return ASYNQ_INVALID_ARGUMENT;
	if (p == NULL)
		return ASYNQ_FAILED_PRECONDITION;
	put_events(f, p, origin_ns != 0 ? origin_ns : p->start_ns, thread_name,
	    first);
	if (fflush(f) != 0 || ferror(f))
		return ASYNQ_DATA_LOSS;
	return ASYNQ_OK;
}

asynq_status
asynq_profiler_write_chrome_file(FILE *f)
{
	profile *p = prof;
	if (f == NULL)
		return ASYNQ_INVALID_ARGUMENT;
	if (p == NULL)
		return ASYNQ_FAILED_PRECONDITION;
	bool first = true;

	fputs("{\"traceEvents\":[", f);
	put_head(f, p, &first, "process_name", NULL, "M");
	fputs(",\"args\":{\"name\":\"asynq\"}}", f);
	put_events(f, p, p->start_ns, NULL, &first);
	asynq_profile_summary sum;
	asynq_profiler_summary(&sum);
	fprintf(f,
	    "\n],\"displayTimeUnit\":\"ns\",\"otherData\":{\"tasks\":%zu,"
	    "\"runs\":%zu,\"flushes\":%zu,\"items_flushed\":%zu,"
	    "\"dropped\":%zu}}\n",
	    sum.tasks, sum.runs, sum.flushes, sum.items_flushed, sum.dropped);
	if (fflush(f) != 0 || ferror(f))
		return ASYNQ_DATA_LOSS;
	return ASYNQ_OK;
}

asynq_status
asynq_profiler_write_chrome(const char *path)
{
	if (path == NULL)
		return ASYNQ_INVALID_ARGUMENT;
	if (prof == NULL)
		return ASYNQ_FAILED_PRECONDITION;
	FILE *f = fopen(path, "w");
	if (f == NULL)
		return ASYNQ_UNAVAILABLE;
	asynq_status st = asynq_profiler_write_chrome_file(f);
	if (fclose(f) != 0 && st == ASYNQ_OK)
		st = ASYNQ_DATA_LOSS;
	return st;
}
