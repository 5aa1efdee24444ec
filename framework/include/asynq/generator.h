/* SPDX-License-Identifier: MIT */
/*
 * Async generators (asynq.generator): a producer that yields a sequence of
 * futures lazily, one each time the consumer asks, while still batching.
 * The producer is a function run as its own coroutine task; each
 * asynq_gen_yield hands one future (a constant, a task, a batch item that is
 * still pending...) to the consumer and suspends the producer until the next
 * element is asked for. Because elements may be pending futures, a consumer
 * that takes n elements and awaits them together (asynq_gen_take) sends their
 * batch items out in one flush, as asynq's take_first does.
 *
 *	static asynq_status
 *	user_names(asynq_gen_yield_ctx *y, asynq_task *t, void *arg)
 *	{
 *		for (int64_t id = 1;; id++)   // infinite: the consumer stops
 *			ASYNQ_TRY(asynq_gen_yield(y, users_name_of(id)));
 *	}
 *	...
 *	asynq_gen *g;
 *	asynq_gen_alloc(&g, user_names, NULL, 0);
 *	asynq_future *first[10];
 *	size_t n;
 *	asynq_gen_take(t, g, 10, first, &n);   // one request for 10 names
 *
 * The end of the sequence is the status ASYNQ_OUT_OF_RANGE from
 * asynq_gen_next (never a marker value). A generator belongs to the thread
 * that made it and is consumed by one task at a time.
 */
#ifndef ASYNQ_GENERATOR_H
#define ASYNQ_GENERATOR_H

#include <stdbool.h>
#include <stddef.h>

#include "asynq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct asynq_gen asynq_gen;

/* The producer's handle, passed to its function. */
typedef struct asynq_gen_yield_ctx asynq_gen_yield_ctx;

/* A producer: yields each element with asynq_gen_yield and returns OK at the
 * end of the sequence, or an error, which the consumer's next call returns
 * (then the sequence ends). t is the producer's own task: it may await
 * anything between yields. When asynq_gen_yield returns an error the
 * producer must stop yielding and return (ASYNQ_TRY does this). */
typedef asynq_status (
    *asynq_gen_fn)(asynq_gen_yield_ctx *y, asynq_task *t, void *arg);

/* Flags of asynq_gen_alloc. */
enum {
	/* Advancing while the element handed out last is not computed yet is
	 * FAILED_PRECONDITION (asynq's "You must compute the previous task
	 * before advancing the generator"). asynq_gen_take is exempt for the
	 * elements it takes itself. */
	ASYNQ_GEN_STRICT = 1u << 0,
};

/* asynq_gen_alloc makes a generator running fn(y, t, arg) as a lazily
 * spawned task named after fn; nothing runs until the first element is
 * asked for. arg is borrowed until the producer returns or the generator is
 * freed. RESOURCE_EXHAUSTED without memory, INVALID_ARGUMENT for a NULL fn.
 * Scheduler thread only. */
#define asynq_gen_alloc(gp, fn, arg, flags)                                    \
	asynq_gen_alloc_at((gp), (fn), (arg), (flags), #fn, __FILE__, __LINE__)

/* asynq_gen_alloc_at is asynq_gen_alloc with the producer task's name and
 * location given explicitly. */
asynq_status asynq_gen_alloc_at(asynq_gen **gp, asynq_gen_fn fn, void *arg,
    unsigned flags, const char *name, const char *file, int line);

/* asynq_gen_free frees g. A producer suspended in asynq_gen_yield (or not
 * yet at one) is resumed with CANCELLED from asynq_gen_yield and run to its
 * end first, synchronously (with asynq_wait). Futures already handed out
 * stay valid: the consumer holds its own references. NULL is ignored. Not
 * while a task is inside asynq_gen_next on g. Scheduler thread only. */
void asynq_gen_free(asynq_gen *g);

/* asynq_gen_yield hands f to the consumer and suspends the producer until
 * the next element is asked for. Ownership of f moves to the generator,
 * whatever the result. Returns OK when the producer should go on, CANCELLED
 * when the generator is being freed. Producer task only (may suspend). */
asynq_status asynq_gen_yield(asynq_gen_yield_ctx *y, asynq_future *f);

/* asynq_gen_next runs the producer up to its next yield and stores the
 * element in *out (a new reference for the caller; it may still be
 * pending). ASYNQ_OUT_OF_RANGE at the end of the sequence (and on every
 * later call); the producer's error, once, if it failed (the sequence then
 * ends); FAILED_PRECONDITION for a strict generator whose previous element is
 * not computed; *out is NULL whenever the status is not OK. Errors become
 * t's last error. With t NULL it may be called outside tasks and runs the
 * scheduler synchronously (asynq_wait) instead of suspending. Task only
 * (may suspend) unless t is NULL. */
asynq_status asynq_gen_next(asynq_task *t, asynq_gen *g, asynq_future **out);

/* asynq_gen_take asks for up to n elements and awaits them all together, so
 * their batch items go out in one flush. out[0..*n_out) receives new
 * references the caller owns whatever the status; *n_out < n means the
 * sequence ended. Returns OK if every element taken succeeded, else the
 * status of the first failure (a failed element, or the producer's error,
 * which also ends the take). A later call resumes where this one stopped.
 * t NULL works as for asynq_gen_next. Task only (may suspend) unless t is
 * NULL. */
asynq_status asynq_gen_take(asynq_task *t, asynq_gen *g, size_t n,
    asynq_future **out, size_t *n_out);

/* asynq_gen_done says whether the sequence has ended (the producer returned
 * or failed). */
bool asynq_gen_done(const asynq_gen *g);

/* asynq_gen_count returns how many elements g has handed out. */
size_t asynq_gen_count(const asynq_gen *g);

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_GENERATOR_H */
