/* SPDX-License-Identifier: MIT */
/*
 * Tools over tasks and futures, after Python asynq's asynq.tools: call
 * deduplication, per-object memoisation, an LRU cache and a lazy constant for
 * async functions, retries with exponential backoff, a timer of the time a
 * task spends running, map/filter/sort/min/max with async element functions,
 * a call under a context, and an event hook whose handlers all run.
 *
 * An "async function" here is a task body (asynq_task_fn) with its argument.
 * The tools call that body on a task of their own (the wrapper), so its value
 * (asynq_return_*) and error become the future the tool returns. Arguments
 * come with an optional free function: ownership of arg moves to the tool
 * when a call returns a future (arg_free(arg) runs once the call no longer
 * needs it: when its task finishes, or at once when the call joined another
 * task or hit a cache); with a NULL arg_free, arg is borrowed and must stay
 * valid until the returned future is computed. A call that returns NULL (out
 * of memory) leaves arg with the caller.
 *
 * Keys are explicit byte strings (key, key_len), copied by the tool; a key is
 * compared byte for byte, so zero a struct's padding before using it as one.
 *
 * Cached results are shared futures: several callers hold the same future,
 * so read values with asynq_future_i64/asynq_future_ptr and never take them
 * (asynq_future_take) out of a future a tool returned.
 *
 * Threads: every tool belongs to the scheduler thread that uses it; the
 * deduplication and memoisation tables are per thread, parts of the
 * thread's scheduler that asynq_thread_fini drops (tasks of the tools that
 * never started then fail with CANCELLED without running their body).
 */
#ifndef ASYNQ_TOOLS_H
#define ASYNQ_TOOLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "asynq/context.h"
#include "asynq/core.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Hit and miss counters of a cache. */
typedef struct asynq_cache_stats {
	uint64_t hits;      /* calls answered by a cached or in-flight task */
	uint64_t misses;    /* calls that started a new task */
	uint64_t evictions; /* results dropped for the size cap or the TTL */
	size_t size;        /* results cached now */
	size_t in_flight;   /* tasks running for the cache now */
} asynq_cache_stats;

/* ---- Deduplication (asynq's @deduplicate) -------------------------------- */

/* asynq_dedup_call returns the task future of fn(arg) for key: while a task
 * made for (fn, key) on this thread has not finished, later calls share it
 * (the caller gets a new reference and arg is freed at once); otherwise a new
 * task is made. A call made from inside that task, or from a task it created
 * (a re-entrant call), gets a new task of its own instead of awaiting itself.
 * The entry goes away when the task finishes, whatever its result. Scheduler
 * thread only; NULL without memory. */
#define asynq_dedup_call(fn, arg, arg_free, key, key_len)                      \
	asynq_dedup_call_at((fn), (arg), (arg_free), (key), (key_len), #fn,    \
	    __FILE__, __LINE__)
asynq_future *asynq_dedup_call_at(asynq_task_fn fn, void *arg,
    void (*arg_free)(void *), const void *key, size_t key_len, const char *name,
    const char *file, int line);

/* asynq_dedup_dirty forgets the task for (fn, key), so the next call makes a
 * new one; the old task still runs for those who hold it. Scheduler thread
 * only. */
void asynq_dedup_dirty(asynq_task_fn fn, const void *key, size_t key_len);

/* asynq_dedup_pending returns how many deduplicated tasks of this thread are
 * unfinished and findable. */
size_t asynq_dedup_pending(void);

/* ---- Per-object memoisation (asynq's @acached_per_instance) -------------- */

/* asynq_memo_call returns fn(arg)'s result cached for (obj, fn, key): the
 * first successful result is kept until asynq_memo_forget(obj); concurrent
 * calls share the task in flight (with asynq_dedup_call's re-entrance rule).
 * A failed task caches nothing and leaves no entry behind. obj is only an
 * identity, never dereferenced. Scheduler thread only; NULL without memory. */
#define asynq_memo_call(obj, fn, arg, arg_free, key, key_len)                  \
	asynq_memo_call_at((obj), (fn), (arg), (arg_free), (key), (key_len),   \
	    #fn, __FILE__, __LINE__)
asynq_future *asynq_memo_call_at(const void *obj, asynq_task_fn fn, void *arg,
    void (*arg_free)(void *), const void *key, size_t key_len, const char *name,
    const char *file, int line);

/* asynq_memo_forget drops every entry of obj (call it when obj is freed);
 * tasks in flight for obj finish but store nothing. Scheduler thread only. */
void asynq_memo_forget(const void *obj);

/* asynq_memo_size returns how many entries (cached or in flight) obj has. */
size_t asynq_memo_size(const void *obj);

/* asynq_memo_objects returns how many objects have a table on this thread. */
size_t asynq_memo_objects(void);

/* asynq_memo_stats copies this thread's memoisation counters. */
void asynq_memo_stats(asynq_cache_stats *out);

/* ---- LRU cache (asynq's @alru_cache) ------------------------------------- */

/* A key function: writes the key of arg into buf (at most size bytes) and
 * returns the key's full length; it is called again with a larger buffer
 * when the length exceeds size. */
typedef size_t (*asynq_key_fn)(const void *arg, void *buf, size_t size);

typedef struct asynq_lru_cfg {
	asynq_task_fn fn;    /* the async function cached (required) */
	const char *name;    /* its name for asynq stacks; default "lru" */
	size_t max_size;     /* results kept; default 128 */
	uint64_t ttl_ns;     /* results expire after this; 0: never */
	asynq_key_fn key_fn; /* NULL: the key is arg_size bytes at arg */
	size_t arg_size;     /* with NULL key_fn; 0: the pointer arg itself */
} asynq_lru_cfg;

typedef struct asynq_lru asynq_lru;

/* asynq_lru_alloc makes an LRU cache from cfg (copied). INVALID_ARGUMENT
 * without cfg->fn, RESOURCE_EXHAUSTED without memory. Any thread; the cache
 * then belongs to the scheduler thread that calls it. */
asynq_status asynq_lru_alloc(asynq_lru **cp, const asynq_lru_cfg *cfg);

/* asynq_lru_free drops the results and frees c (NULL is ignored); tasks in
 * flight finish and store nothing. Scheduler thread only. */
void asynq_lru_free(asynq_lru *c);

/* asynq_lru_call returns the cached result for arg's key, marking it most
 * recently used, or the task in flight for it, or a new task of fn(arg) whose
 * successful result is cached (evicting the least recently used result past
 * max_size). Errors are not cached. Scheduler thread only; NULL without
 * memory. */
asynq_future *asynq_lru_call(asynq_lru *c, void *arg, void (*arg_free)(void *));

/* asynq_lru_dirty forgets the result (or task in flight) for arg's key. */
void asynq_lru_dirty(asynq_lru *c, const void *arg);

/* asynq_lru_clear forgets every result. */
void asynq_lru_clear(asynq_lru *c);

/* asynq_lru_stats copies c's counters. */
void asynq_lru_stats(const asynq_lru *c, asynq_cache_stats *out);

/* ---- Lazy constant (asynq's @alazy_constant) ----------------------------- */

typedef struct asynq_lazy asynq_lazy;

/* asynq_lazy_alloc makes a lazy constant computed by fn(arg) (arg borrowed
 * for the constant's lifetime); a result older than ttl_ns (0: never) is
 * computed again. RESOURCE_EXHAUSTED without memory. Any thread. */
#define asynq_lazy_alloc(lp, fn, arg, ttl_ns)                                  \
	asynq_lazy_alloc_at((lp), (fn), (arg), (ttl_ns), #fn, __FILE__,        \
	    __LINE__)
asynq_status asynq_lazy_alloc_at(asynq_lazy **lp, asynq_task_fn fn, void *arg,
    uint64_t ttl_ns, const char *name, const char *file, int line);

/* asynq_lazy_free frees l (NULL is ignored). Scheduler thread only. */
void asynq_lazy_free(asynq_lazy *l);

/* asynq_lazy_get returns the constant's future: the cached result while it
 * is fresh and not dirty, the computation in flight, or a new one. A failed
 * computation is not kept. Scheduler thread only; NULL without memory. */
asynq_future *asynq_lazy_get(asynq_lazy *l);

/* asynq_lazy_dirty makes the next asynq_lazy_get compute the value again. */
void asynq_lazy_dirty(asynq_lazy *l);

/* asynq_lazy_stats copies l's counters. */
void asynq_lazy_stats(const asynq_lazy *l, asynq_cache_stats *out);

/* ---- Retry (asynq's @aretry) ------------------------------------------- */

/* The bit of a status code in asynq_retry_cfg.retry_on. */
#define ASYNQ_RETRY_ON(code) (UINT32_C(1) << (code))

typedef struct asynq_retry_cfg {
	size_t max_tries;      /* tries in all, first included; default 3 */
	uint64_t delay_ns;     /* wait after the first failure; default 50 ms */
	double backoff;        /* factor between waits; default 2 (min 1) */
	uint64_t max_delay_ns; /* cap of one wait; 0: none */
	double jitter;         /* 0..1: a wait d is drawn from [d(1-j), d] */
	uint32_t retry_on;     /* ASYNQ_RETRY_ON bits; default UNAVAILABLE */
} asynq_retry_cfg;

/* asynq_retry_call returns a task that calls fn(arg) up to max_tries times
 * while it fails with a code in retry_on, waiting between tries with
 * asynq_sleep (only the task waits; the thread runs other tasks). The task
 * ends with the first success or the last failure (another code ends it at
 * once). cfg is copied (NULL: defaults). Scheduler thread only; NULL without
 * memory. */
#define asynq_retry_call(cfg, fn, arg, arg_free)                               \
	asynq_retry_call_at((cfg), (fn), (arg), (arg_free), #fn, __FILE__,     \
	    __LINE__)
asynq_future *asynq_retry_call_at(const asynq_retry_cfg *cfg, asynq_task_fn fn,
    void *arg, void (*arg_free)(void *), const char *name, const char *file,
    int line);

/* asynq_retry_delay_ns returns the nominal wait after failed try `try_no`
 * (0 = the first), before jitter. Any thread. */
uint64_t asynq_retry_delay_ns(const asynq_retry_cfg *cfg, size_t try_no);

/* ---- Timer (asynq's AsyncTimer) and sleep ------------------------------- */

/* A context that adds up the time its task (and the tasks it creates) spend
 * running while it is entered, leaving out the time they are suspended. */
typedef struct asynq_timer {
	asynq_context ctx; /* the framework's */
	uint64_t total_ns; /* running time so far; final after stop */
	uint64_t resumed_at;
} asynq_timer;

/* asynq_timer_init zeroes tm. */
void asynq_timer_init(asynq_timer *tm);

/* asynq_timer_start enters tm in the current task (or the thread outside
 * tasks); FAILED_PRECONDITION if it is already started. */
asynq_status asynq_timer_start(asynq_timer *tm);

/* asynq_timer_stop exits tm (timers stop in reverse order of starting). */
asynq_status asynq_timer_stop(asynq_timer *tm);

/* asynq_timer_ns returns the running time measured so far, counting the
 * current stretch if tm's task is running now. */
uint64_t asynq_timer_ns(const asynq_timer *tm);

/* asynq_sleep_for suspends task t for ns nanoseconds (asynq_wait outside
 * tasks, t NULL) and returns the sleep's status. Task only (may suspend). */
asynq_status asynq_sleep_for(asynq_task *t, uint64_t ns);

/* ---- Map, filter, sort, min, max --------------------------------------- */

/* An element function: returns a future (a task, a batch item, a constant)
 * for element `elem` at index i; the tool takes the returned reference.
 * Predicates and keys read the future's integer value. */
typedef asynq_future *(*asynq_elem_fn)(void *elem, size_t i, void *arg);

/* asynq_map calls fn on each of the n elements of `size` bytes at base, then
 * awaits all the futures at once (so their batch items go out together) and
 * stores them in out[0..n) for the caller to read and release (also on
 * failure). Returns OK or the first failure in element order; out[i] is NULL
 * where fn ran out of memory. t NULL waits outside tasks. Task only (may
 * suspend). */
asynq_status asynq_map(asynq_task *t, asynq_elem_fn fn, void *arg, void *base,
    size_t n, size_t size, asynq_future **out);

/* asynq_map_i64 is asynq_map that stores the integer values in out. */
asynq_status asynq_map_i64(asynq_task *t, asynq_elem_fn fn, void *arg,
    void *base, size_t n, size_t size, int64_t *out);

/* asynq_filter keeps the elements whose predicate is non-zero (zero with
 * `invert`, asynq's afilterfalse), compacting them in place at the front of
 * base in their order; *n_kept gets their number. On failure base is left
 * unchanged. Task only (may suspend). */
asynq_status asynq_filter(asynq_task *t, asynq_elem_fn pred, void *arg,
    void *base, size_t n, size_t size, bool invert, size_t *n_kept);

/* asynq_sift splits the elements by predicate (asynq's asift): those that
 * pass are copied to yes (*n_yes of them), the others to no (*n_no); both
 * arrays hold n elements. Task only (may suspend). */
asynq_status asynq_sift(asynq_task *t, asynq_elem_fn pred, void *arg,
    const void *base, size_t n, size_t size, void *yes, size_t *n_yes, void *no,
    size_t *n_no);

/* asynq_sort sorts the elements in place by their integer keys, stably
 * (equal keys keep their order, also with `reverse`). Task only (may
 * suspend); RESOURCE_EXHAUSTED without memory, base unchanged on failure. */
asynq_status asynq_sort(asynq_task *t, asynq_elem_fn key, void *arg, void *base,
    size_t n, size_t size, bool reverse);

/* asynq_min stores in *index the first element with the smallest key;
 * INVALID_ARGUMENT for n == 0. Task only (may suspend). */
asynq_status asynq_min(asynq_task *t, asynq_elem_fn key, void *arg, void *base,
    size_t n, size_t size, size_t *index);

/* asynq_max stores in *index the first element with the largest key. */
asynq_status asynq_max(asynq_task *t, asynq_elem_fn key, void *arg, void *base,
    size_t n, size_t size, size_t *index);

/* Compares two keys, the computed futures the key function returned (read
 * them with asynq_future_ptr, _i64, ...): negative when a goes first, 0
 * for equal keys, positive when b goes first. */
typedef int (
    *asynq_key_cmp)(const asynq_future *a, const asynq_future *b, void *arg);

/* asynq_sort_by, asynq_min_by and asynq_max_by are asynq_sort, _min and _max
 * for keys of any type (strings, structs, tuples), ordered by cmp; arg goes
 * to key and to cmp. Every key future is made first and all are awaited
 * together. A failed key fails the call with its status, base unchanged.
 * Sorting is stable (equal keys keep their order, also with `reverse`);
 * min and max return the first of equal keys. Task only (may suspend). */
asynq_status asynq_sort_by(asynq_task *t, asynq_elem_fn key, asynq_key_cmp cmp,
    void *arg, void *base, size_t n, size_t size, bool reverse);
asynq_status asynq_min_by(asynq_task *t, asynq_elem_fn key, asynq_key_cmp cmp,
    void *arg, void *base, size_t n, size_t size, size_t *index);
asynq_status asynq_max_by(asynq_task *t, asynq_elem_fn key, asynq_key_cmp cmp,
    void *arg, void *base, size_t n, size_t size, size_t *index);

/* ---- Call with a context (asynq's call_with_context) --------------------- */

/* asynq_call_with_context returns a task that enters ctx, runs fn(arg) and
 * exits ctx, so the context covers that call (and the tasks it creates)
 * only, not the caller's other tasks. ctx is borrowed until the future is
 * computed. Scheduler thread only; NULL without memory. */
#define asynq_call_with_context(ctx, fn, arg, arg_free)                        \
	asynq_call_with_context_at((ctx), (fn), (arg), (arg_free), #fn,        \
	    __FILE__, __LINE__)
asynq_future *asynq_call_with_context_at(asynq_context *ctx, asynq_task_fn fn,
    void *arg, void (*arg_free)(void *), const char *name, const char *file,
    int line);

/* ---- Event hook (asynq's AsyncEventHook) -------------------------------- */

/* A handler: a task body given its own argument and the event. */
typedef asynq_status (
    *asynq_handler_fn)(asynq_task *t, void *handler_arg, void *event);

typedef struct asynq_hook_handler {
	asynq_handler_fn fn;
	void *arg;
} asynq_hook_handler;

/* An event hook; embed it and use the functions. */
typedef struct asynq_event_hook {
	asynq_hook_handler *handlers;
	size_t n, cap;
} asynq_event_hook;

/* asynq_hook_init prepares an empty hook. */
void asynq_hook_init(asynq_event_hook *h);

/* asynq_hook_fini frees the handler list (NULL is ignored). */
void asynq_hook_fini(asynq_event_hook *h);

/* asynq_hook_subscribe appends handler fn with its arg (borrowed while
 * subscribed); RESOURCE_EXHAUSTED without memory. */
asynq_status asynq_hook_subscribe(asynq_event_hook *h, asynq_handler_fn fn,
    void *arg);

/* asynq_hook_unsubscribe removes the first handler equal to (fn, arg);
 * NOT_FOUND if there is none. */
asynq_status asynq_hook_unsubscribe(asynq_event_hook *h, asynq_handler_fn fn,
    void *arg);

/* asynq_hook_trigger runs every handler subscribed now, each as its own task
 * and all awaited together (asynq's safe_trigger): every handler runs even
 * when some fail; returns OK or the first failure in subscription order,
 * whose error becomes t's last error. event is borrowed by the handlers
 * until this returns. t NULL waits outside tasks. Task only (may suspend). */
asynq_status asynq_hook_trigger(asynq_task *t, asynq_event_hook *h,
    void *event);

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_TOOLS_H */
