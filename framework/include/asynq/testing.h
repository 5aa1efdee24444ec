/* SPDX-License-Identifier: MIT */
/*
 * Helpers for testing code written on asynq (asynq.mock_ in C), linked from
 * //framework/testing:
 *
 * - Mocks of async functions. C has no monkey-patching, so code that wants
 *   its async calls replaceable in tests calls them through a function
 *   pointer declared with ASYNQ_MOCKABLE. A test installs a replacement
 *   that answers from an asynq_mock: a script of results and errors handed
 *   out in call order, a call counter and the calls' integer arguments. The
 *   answers are futures, so callers that await (async) and callers that
 *   asynq_wait (sync) work alike; a mock can also answer through its own
 *   batch backend, so a test sees its calls batched like real ones.
 *
 * - A fake backend for a generated service (asynq_rpc_service_desc): calls
 *   made with asynq_fake_call join one batch like an RPC client's, and each
 *   flush is recorded as the requests a client would send (split at the
 *   service's batch_max_calls) with each call's method, then answered by
 *   per-method handler callbacks. A test can assert "these 50 calls arrived
 *   as 1 request".
 *
 * - The debug backend (asynq's DebugBatchItem): items that resolve to the
 *   integer they were made with, flushes counted, completed at once or from
 *   a thread of its own (as a real I/O backend would), and a default one per
 *   thread for asynq_debug_sync.
 *
 * All of it belongs to the scheduler thread that made it.
 */
#ifndef ASYNQ_TESTING_H
#define ASYNQ_TESTING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "asynq/batch.h"
#include "asynq/core.h"
#include "asynq/rpc_desc.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Mockable functions ------------------------------------------------ */

/* ASYNQ_MOCKABLE declares `name` as a mockable async function returning a
 * future: a function pointer of type name##_fn that callers call like a
 * function, `name(args)`. Put it in a header; define the pointer once with
 * ASYNQ_MOCKABLE_DEFINE. E.g.
 *	ASYNQ_MOCKABLE(users_name_of, users *u, int64_t id);      // .h
 *	ASYNQ_MOCKABLE_DEFINE(users_name_of, users_name_of_impl); // .c */
#define ASYNQ_MOCKABLE(name, ...)                                              \
	typedef asynq_future *(*name##_fn)(__VA_ARGS__);                       \
	extern name##_fn name

/* ASYNQ_MOCKABLE_DEFINE defines the pointer, initially the real function. */
#define ASYNQ_MOCKABLE_DEFINE(name, impl) name##_fn name = (impl)

/* ASYNQ_MOCK_FN defines a replacement `fn` with the given parameters that
 * answers every call from mock m (an asynq_mock * expression) and ignores
 * its arguments. Write the replacement by hand to look at the arguments;
 * asynq_mock_call_i64 records one. */
/* clang-format off */
#define ASYNQ_MOCK_FN(fn, m, ...)                                              \
	_Pragma("GCC diagnostic push")                                         \
	_Pragma("GCC diagnostic ignored \"-Wunused-parameter\"")               \
	static asynq_future *fn(__VA_ARGS__)                                   \
	{                                                                      \
		return asynq_mock_call(m);                                     \
	}                                                                      \
	_Pragma("GCC diagnostic pop")
/* clang-format on */

typedef struct asynq_mock asynq_mock;

/* How a mock hands out its answers. */
typedef enum asynq_mock_mode {
	/* Each call returns a future that is already computed. */
	ASYNQ_MOCK_IMMEDIATE,
	/* Each call returns an item of the mock's own batch backend, computed
	 * when the scheduler flushes it: calls awaited together count as one
	 * flush (asynq_mock_flushes), like a real batched service. */
	ASYNQ_MOCK_BATCHED,
} asynq_mock_mode;

/* asynq_mock_alloc makes a mock named name (copied; for messages and the
 * backend) answering in the given mode. RESOURCE_EXHAUSTED without memory.
 * Scheduler thread only. */
asynq_status asynq_mock_alloc(asynq_mock **mp, const char *name,
    asynq_mock_mode mode);

/* asynq_mock_free restores the function if the mock is installed, cancels
 * an unflushed batch (its futures fail with CANCELLED and may outlive the
 * mock) and frees the script (pointer results never handed out are freed
 * with their free functions). NULL is ignored. */
void asynq_mock_free(asynq_mock *m);

/* asynq_mock_install replaces the mockable function pointer *pp with fn,
 * remembering the original for asynq_mock_restore. fn must have the
 * pointer's type. A mock installs over one pointer at a time. */
#define asynq_mock_install(m, pp, fn)                                          \
	do {                                                                   \
		__typeof__(*(pp)) asynq_mock_fn_ = (fn);                       \
		asynq_mock_install_at((m), (void *)(pp), sizeof(*(pp)),        \
		    &asynq_mock_fn_);                                          \
	} while (0)

/* asynq_mock_install_at is asynq_mock_install's untyped worker: copies size
 * bytes of replacement over slot after saving them. FAILED_PRECONDITION if m
 * is already installed, INVALID_ARGUMENT if size exceeds a function
 * pointer. */
asynq_status asynq_mock_install_at(asynq_mock *m, void *slot, size_t size,
    const void *replacement);

/* asynq_mock_restore puts the original function back; no effect when the
 * mock is not installed. */
void asynq_mock_restore(asynq_mock *m);

/* asynq_mock_returns_i64 appends an integer result to m's script. Returns
 * RESOURCE_EXHAUSTED without memory (the script is unchanged). */
asynq_status asynq_mock_returns_i64(asynq_mock *m, int64_t v);

/* asynq_mock_returns_ptr appends a pointer result; with free_fn, ownership
 * of p moves to the mock (then to the future of the call that takes it), on
 * failure too (p is freed then). */
asynq_status asynq_mock_returns_ptr(asynq_mock *m, void *p,
    void (*free_fn)(void *));

/* asynq_mock_fails appends an error result with a printf-style message. */
asynq_status asynq_mock_fails(asynq_mock *m, asynq_status code, const char *fmt,
    ...) __attribute__((format(printf, 3, 4)));

/* asynq_mock_returns_default_i64 sets the result of calls made after the
 * script is used up (by default they fail with FAILED_PRECONDITION and
 * count as unexpected). */
void asynq_mock_returns_default_i64(asynq_mock *m, int64_t v);

/* asynq_mock_call records a call and returns its answer: the next script
 * entry, the default, or a FAILED_PRECONDITION error naming the mock. The
 * caller owns the future. Scheduler thread only. */
asynq_future *asynq_mock_call(asynq_mock *m);

/* asynq_mock_call_i64 is asynq_mock_call that also records arg (read back
 * with asynq_mock_arg_i64). */
asynq_future *asynq_mock_call_i64(asynq_mock *m, int64_t arg);

/* asynq_mock_calls returns how many calls m answered. */
size_t asynq_mock_calls(const asynq_mock *m);

/* asynq_mock_arg_i64 returns the argument call i recorded (0 if none). */
int64_t asynq_mock_arg_i64(const asynq_mock *m, size_t i);

/* asynq_mock_unexpected returns how many calls found the script used up and
 * no default set. */
size_t asynq_mock_unexpected(const asynq_mock *m);

/* asynq_mock_remaining returns the script entries not yet used. */
size_t asynq_mock_remaining(const asynq_mock *m);

/* asynq_mock_flushes returns how many batches a BATCHED mock flushed. */
size_t asynq_mock_flushes(const asynq_mock *m);

/* ---- A fake backend for a generated service ----------------------------- */

typedef struct asynq_fake asynq_fake;

/* A method handler: answers one call by setting item with
 * asynq_item_set_i64/_ptr/_error. Returning a non-OK status fails an item
 * left unset with that status. Runs inside the flush, on the scheduler
 * thread, and must not suspend. */
typedef asynq_status (*asynq_fake_handler)(asynq_fake *fake, size_t method,
    void *req, asynq_future *item, void *arg);

/* asynq_fake_alloc makes a fake backend for svc (borrowed; generated
 * descriptors live forever). RESOURCE_EXHAUSTED without memory. Scheduler
 * thread only. */
asynq_status asynq_fake_alloc(asynq_fake **fp,
    const asynq_rpc_service_desc *svc);

/* asynq_fake_free cancels the fake's unflushed calls (CANCELLED; their
 * futures may outlive the fake) and frees it and its records. NULL is
 * ignored. */
void asynq_fake_free(asynq_fake *f);

/* asynq_fake_handle sets the handler of method index `method`
 * (INVALID_ARGUMENT past the service's methods). Methods without a handler
 * fail their calls with UNIMPLEMENTED. */
asynq_status asynq_fake_handle(asynq_fake *f, size_t method,
    asynq_fake_handler fn, void *arg);

/* asynq_fake_method_index returns the index of the method called name
 * (short "GetName" or full "pkg.Users/GetName"), or -1. */
int asynq_fake_method_index(const asynq_fake *f, const char *name);

/* asynq_fake_call makes a call of method `method` with request req
 * (borrowed until the returned future is computed): an item of the fake's
 * active batch, answered by the handler when the scheduler flushes it. A
 * method index out of range gives a future failed with INVALID_ARGUMENT.
 * The caller owns the future. Scheduler thread only. */
asynq_future *asynq_fake_call(asynq_fake *f, size_t method, void *req);

/* asynq_fake_backend returns the fake's batch backend (borrowed). */
asynq_backend *asynq_fake_backend(asynq_fake *f);

/* asynq_fake_flushes returns how many batches the fake flushed. */
size_t asynq_fake_flushes(const asynq_fake *f);

/* asynq_fake_requests returns how many requests those flushes make: one per
 * flush, or more where a flush exceeded the service's batch_max_calls. */
size_t asynq_fake_requests(const asynq_fake *f);

/* asynq_fake_request_calls returns the number of calls in request r. */
size_t asynq_fake_request_calls(const asynq_fake *f, size_t r);

/* asynq_fake_request_method returns the full name of call c of request r
 * as the wire carries it ("pkg.Users/GetName"), NULL out of range. */
const char *asynq_fake_request_method(const asynq_fake *f, size_t r, size_t c);

/* asynq_fake_calls returns the number of calls flushed, over all methods
 * (method SIZE_MAX) or of one method. */
size_t asynq_fake_calls(const asynq_fake *f, size_t method);

/* asynq_fake_clear forgets the recorded flushes and requests. */
void asynq_fake_clear(asynq_fake *f);

/* ---- Debug backend (asynq's DebugBatchItem) --------------------------- */

/* A backend whose items resolve to the integer they were made with; counts
 * its flushes. With `async` set, flush hands the batch to a helper thread
 * that completes it through asynq_batch_complete. */
typedef struct asynq_debug_backend {
	asynq_backend base;
	bool async;
	size_t flushes;       /* batches flushed */
	size_t items_flushed; /* items over all flushes */
	size_t last_size;     /* items in the last flush */
} asynq_debug_backend;

/* asynq_debug_backend_init prepares a debug backend named name. */
void asynq_debug_backend_init(asynq_debug_backend *d, const char *name,
    bool async);

/* asynq_debug_backend_fini cancels its active batch; in async mode it waits
 * for in-flight flushes to be posted. Scheduler thread only. */
void asynq_debug_backend_fini(asynq_debug_backend *d);

/* asynq_debug_item returns an item of d that resolves to result. */
asynq_future *asynq_debug_item(asynq_debug_backend *d, int64_t result);

/* asynq_debug_sync awaits one item of the thread's default debug backend:
 * the task blocks until the next flush (asynq's debug.sync()). Task only. */
asynq_status asynq_debug_sync(asynq_task *t);

/* asynq_debug_default returns the thread's default debug backend. */
asynq_debug_backend *asynq_debug_default(void);

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_TESTING_H */
