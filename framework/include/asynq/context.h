/* SPDX-License-Identifier: MIT */
/*
 * Contexts and scoped values. A context entered inside a task is resumed
 * whenever that task (or a task it creates) is switched in and paused when it
 * is switched out, so it covers the task and its children but never its
 * siblings. Entered outside any task, a context is resumed once and covers
 * everything until it exits. Contexts are told apart by identity (address),
 * never by value. Scoped values are per-task overrides of a variable: visible
 * to the task and the tasks it creates while the override is in place, and
 * removed when the task ends, even by an error.
 */
#ifndef ASYNQ_CONTEXT_H
#define ASYNQ_CONTEXT_H

#include "asynq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct asynq_context asynq_context;

/* What a context does when its task is switched in and out. A failure does
 * not stop the other contexts; it is reported to the task, whose next await
 * (or the enter/exit call) returns it. */
typedef struct asynq_context_ops {
	asynq_status (*resume)(asynq_context *ctx);
	asynq_status (*pause)(asynq_context *ctx);
} asynq_context_ops;

/* Embed as the first member of your own context struct. */
struct asynq_context {
	const asynq_context_ops *ops;
	/* The framework's: */
	asynq_context *prev;
	asynq_task *owner;
	bool entered;
	bool active;
};

/* asynq_context_init prepares a context with its operations. */
void asynq_context_init(asynq_context *ctx, const asynq_context_ops *ops);

/* asynq_context_enter resumes ctx and attaches it to the current task (or to
 * the thread outside tasks). FAILED_PRECONDITION if ctx is already entered;
 * else resume's status (ctx stays entered either way, so exit balances it). */
asynq_status asynq_context_enter(asynq_context *ctx);

/* asynq_context_exit pauses ctx and detaches it; contexts must exit in
 * reverse order of entering (FAILED_PRECONDITION otherwise). Returns pause's
 * status. */
asynq_status asynq_context_exit(asynq_context *ctx);

/* asynq_with_context runs fn(arg) inside ctx (asynq's `with ctx:`): ctx
 * exits however fn returns. Returns fn's status, else the first context
 * failure. */
asynq_status asynq_with_context(asynq_context *ctx,
    asynq_status (*fn)(void *arg), void *arg);

/* asynq_nonsuspending_enter starts a region in the current task where an
 * await that would suspend is an error (FAILED_PRECONDITION from that
 * await, naming where the region began); awaiting a future that is already
 * computed still works. Regions nest. */
#define asynq_nonsuspending_enter()                                            \
	asynq_nonsuspending_enter_at(__FILE__, __LINE__)
void asynq_nonsuspending_enter_at(const char *file, int line);

/* asynq_nonsuspending_exit ends the innermost non-suspending region. */
void asynq_nonsuspending_exit(void);

/* A scoped value: declare one per variable, usually static. Safe to share
 * between threads: overrides live in tasks, never in the key. */
typedef struct asynq_scoped {
	const char *name;
	void *default_value;
} asynq_scoped;

#define ASYNQ_SCOPED_INIT(name, dflt)                                          \
	{                                                                      \
		(name), (void *)(dflt)                                         \
	}

/* asynq_scoped_get returns the innermost override of key visible from the
 * current task (its own, then its creators'), the thread's override outside
 * tasks, or the default. */
void *asynq_scoped_get(const asynq_scoped *key);

/* asynq_scoped_push overrides key for the current task and the tasks it
 * creates (for the thread, outside tasks). RESOURCE_EXHAUSTED without
 * memory. */
asynq_status asynq_scoped_push(const asynq_scoped *key, void *value);

/* asynq_scoped_pop removes the innermost override of key made by the current
 * task; FAILED_PRECONDITION if it has none. */
asynq_status asynq_scoped_pop(const asynq_scoped *key);

/* asynq_with_scoped runs fn(arg) with key overridden to value and removes the
 * override however fn returns. Returns fn's status. */
asynq_status asynq_with_scoped(const asynq_scoped *key, void *value,
    asynq_status (*fn)(void *arg), void *arg);

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_CONTEXT_H */
