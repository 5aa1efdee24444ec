/* SPDX-License-Identifier: MIT */
/*
 * The profiler: where a thread's tasks and batches spend their time. It is
 * built on the core's trace hook (asynq_trace_set), so it costs nothing but
 * one branch per scheduler event while it is off, which is the default. When
 * started on a thread it records, for every task, its run slices (the time
 * between being switched in and being switched out or finishing: time spent
 * in children and in other tasks is excluded), how often it suspended and on
 * how many futures, and for every batch its size, its flush duration and when
 * its items were finished. The records can be read back as structs or
 * exported as a Chrome trace (the JSON "traceEvents" format that
 * chrome://tracing and Perfetto load).
 *
 * Everything here works on the calling thread's profile only: each thread
 * (each runtime worker) profiles itself, and a profile belongs to the thread
 * that started it. None of these calls may be made from inside a trace hook.
 */
#ifndef ASYNQ_PROFILER_H
#define ASYNQ_PROFILER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "asynq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* What the profile knows about one task. Times are asynq_now_ns() values. */
typedef struct asynq_profile_task {
	uint64_t id;         /* asynq_task_id */
	uint64_t creator_id; /* the creator's id, 0 outside tasks or unknown */
	const char *name;    /* the function name; valid until the next
	                        asynq_profiler_start or asynq_profiler_reset */
	uint64_t spawn_ns;   /* 0 if spawned before the profiler started */
	uint64_t first_run_ns; /* 0 if it never ran while profiled */
	uint64_t finish_ns;    /* 0 if it has not finished */
	uint64_t self_ns;      /* time it ran, children and flushes excluded */
	uint32_t runs;         /* run slices (first run and every resume) */
	uint32_t suspends;     /* times it was switched out while blocked */
	uint64_t deps_total;   /* futures it waited for, summed over suspends */
	size_t deps_max;       /* the most futures it waited for at once */
	asynq_status status;   /* the body's outcome once finished */
	bool finished;
} asynq_profile_task;

/* What the profile knows about one batch. */
typedef struct asynq_profile_batch {
	uint64_t id;         /* the batch's id within its scheduler */
	const char *backend; /* the backend's name; same lifetime as names */
	size_t size;         /* items when flushed (or when finished) */
	uint64_t flush_begin_ns; /* 0 if it was never flushed (cancelled) */
	uint64_t flush_ns;       /* how long the backend's flush call took */
	uint64_t done_ns;    /* when its items were finished; 0 if not yet */
	asynq_status status; /* the outcome once done */
	bool flushed;
	bool done;
} asynq_profile_batch;

/* Totals of a profile. */
typedef struct asynq_profile_summary {
	size_t tasks;          /* tasks seen */
	size_t tasks_finished; /* of which finished */
	size_t runs;           /* run slices over all tasks */
	uint64_t task_self_ns; /* their summed self time */
	size_t batches;        /* batches seen */
	size_t flushes;        /* batches flushed */
	size_t items_flushed;  /* items over all flushes */
	uint64_t flush_ns;     /* summed flush call durations */
	uint64_t wall_ns;      /* from start to stop (or to now if running) */
	size_t dropped;        /* events lost to memory exhaustion or over
	                          asynq_profiler_cfg.max_records */
} asynq_profile_summary;

/* asynq_profiler_start starts a new profile on the calling thread (freeing a
 * previous one) and installs the trace hook on its scheduler, replacing any
 * other hook. FAILED_PRECONDITION if it is already running,
 * RESOURCE_EXHAUSTED without memory. The profile is a part of the thread's
 * scheduler: asynq_thread_fini stops it and frees it. Scheduler thread, not
 * from a trace hook. */
asynq_status asynq_profiler_start(void);

/* Profiler settings; zero fields take the default. */
typedef struct asynq_profiler_cfg {
	/* Run slices, flushes and batches kept, at most; once there are
	 * that many, later events are dropped and counted (summary's
	 * dropped). 0: no limit. */
	size_t max_records;
} asynq_profiler_cfg;

/* asynq_profiler_start_cfg is asynq_profiler_start with settings (NULL:
 * the defaults). */
asynq_status asynq_profiler_start_cfg(const asynq_profiler_cfg *cfg);

/* asynq_profiler_stop removes the trace hook; the profile stays readable
 * until the next start or asynq_profiler_reset. Slices still open end now.
 * No effect when not running. Same thread as start. */
void asynq_profiler_stop(void);

/* asynq_profiler_running says whether the calling thread is profiling. */
bool asynq_profiler_running(void);

/* asynq_profiler_reset stops the profiler if needed and frees the calling
 * thread's profile. Call it before the thread exits. */
void asynq_profiler_reset(void);

/* asynq_profiler_summary fills out with the totals of the calling thread's
 * profile (zeros if there is none). */
void asynq_profiler_summary(asynq_profile_summary *out);

/* asynq_profiler_task_count returns how many tasks the profile holds. */
size_t asynq_profiler_task_count(void);

/* asynq_profiler_task copies task record i (in order of first sight) to out;
 * false past the end. */
bool asynq_profiler_task(size_t i, asynq_profile_task *out);

/* asynq_profiler_batch_count returns how many batches the profile holds. */
size_t asynq_profiler_batch_count(void);

/* asynq_profiler_batch copies batch record i (in order of first sight) to
 * out; false past the end. */
bool asynq_profiler_batch(size_t i, asynq_profile_batch *out);

/* asynq_profiler_write_chrome_file writes the calling thread's profile to f
 * as Chrome trace JSON: one complete ("X") event per task run slice, named
 * after the task's function, with args {task, creator, deps, status}; one
 * "X" event per batch flush named "flush <backend>" with args {size, batch,
 * backend}; and an async pair ("b"/"e") per batch from flush to done. ts and
 * dur are microseconds since the profile started. Works while running or
 * stopped. INVALID_ARGUMENT for a NULL f, FAILED_PRECONDITION without a
 * profile, DATA_LOSS if writing failed. */
asynq_status asynq_profiler_write_chrome_file(FILE *f);

/* asynq_profiler_write_chrome_events writes the calling thread's profile
 * to f as elements of a Chrome trace's "traceEvents" array, without the
 * array's brackets or a process name, so that the profiles of several
 * threads (each profiling itself) make one trace: a thread_name event
 * naming the thread thread_name (NULL: "asynq scheduler"), then the events
 * asynq_profiler_write_chrome_file writes, their ts counted from
 * origin_ns (an asynq_now_ns() value, the same for every thread merged;
 * 0: the profile's start). *first says whether the array is still empty
 * (no comma goes before the first element) and is cleared once anything
 * is written. Works while running or stopped. INVALID_ARGUMENT for a NULL
 * f or first, FAILED_PRECONDITION without a profile, DATA_LOSS if writing
 * failed. */
asynq_status asynq_profiler_write_chrome_events(FILE *f, uint64_t origin_ns,
    const char *thread_name, bool *first);

/* asynq_profiler_write_chrome is asynq_profiler_write_chrome_file to a file
 * at path (created or truncated); UNAVAILABLE if it cannot be opened. */
asynq_status asynq_profiler_write_chrome(const char *path);

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_PROFILER_H */
