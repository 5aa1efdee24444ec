/* SPDX-License-Identifier: MIT */
/*
 * Per-object memoisation, the LRU cache and the lazy constant, ported from
 * asynq's test_acached_per_instance, test_alru_cache and test_alazy_constant:
 * hit and miss counts, eviction order, expiry, dirty entries, and errors that
 * are never cached.
 */
#include "tools_testutil.h"
#include "asynq/profiler.h"
#include "asynq/runtime.h"

/* ---- Per-object memoisation --------------------------------------------- */

typedef struct object {
	int64_t value;
} object;

typedef struct get_args {
	object *self;
	int64_t index;
} get_args;

static int frees;

static void
args_free(void *p)
{
	frees++;
	free(p);
}

/* asynq's AsyncObject.get_value: counts its runs in self->value. */
static asynq_status
get_value(asynq_task *t, void *arg)
{
	get_args *a = arg;
	a->self->value += 1;
	return asynq_return_i64(t, a->self->value);
}

static int64_t
memo_get(object *o, int64_t index)
{
	get_args *a = malloc(sizeof(*a));
	a->self = o;
	a->index = index;
	asynq_future *f = asynq_memo_call(o, get_value, a, args_free, &a->index,
	    sizeof(a->index));
	int64_t v = asynq_wait(f) == ASYNQ_OK ? asynq_future_i64(f) : -1;
	asynq_future_rele(f);
	return v;
}

typedef struct kw_key {
	int64_t x, y, z;
} kw_key;

typedef struct kw_args {
	object *self;
	kw_key k;
} kw_args;

static asynq_status
with_kwargs(asynq_task *t, void *arg)
{
	kw_args *a = arg;
	a->self->value += a->k.x + a->k.y + a->k.z;
	return asynq_return_i64(t, a->self->value);
}

static int64_t
memo_kw(object *o, int64_t x, int64_t y, int64_t z)
{
	kw_args *a = calloc(1, sizeof(*a));
	a->self = o;
	a->k.x = x;
	a->k.y = y;
	a->k.z = z;
	asynq_future *f =
	    asynq_memo_call(o, with_kwargs, a, args_free, &a->k, sizeof(a->k));
	int64_t v = asynq_wait(f) == ASYNQ_OK ? asynq_future_i64(f) : -1;
	asynq_future_rele(f);
	return v;
}

static void
test_cache_memo_per_instance(void **state)
{
	(void)state;
	object obj = { 0 }, other = { 0 };
	frees = 0;
	assert_int_equal(asynq_memo_objects(), 0);
	assert_int_equal(memo_get(&obj, 0), 1);
	assert_int_equal(memo_get(&obj, 0), 1);
	assert_int_equal(memo_get(&obj, 1), 2);
	assert_int_equal(memo_get(&obj, 0), 1);
	assert_int_equal(memo_kw(&obj, 1, 2, 3), 8);
	assert_int_equal(memo_kw(&obj, 1, 2, 3), 8);
	assert_int_equal(memo_kw(&obj, 3, 3, 3), 17);
	assert_int_equal(asynq_memo_size(&obj), 4);
	/* Another object has its own table. */
	assert_int_equal(memo_get(&other, 0), 1);
	assert_int_equal(asynq_memo_objects(), 2);
	asynq_cache_stats st;
	asynq_memo_stats(&st);
	assert_int_equal(st.misses, 5);
	assert_int_equal(st.hits, 3);
	assert_int_equal(st.size, 5);
	assert_int_equal(frees, 8); /* every argument, once */

	asynq_memo_forget(&obj);
	assert_int_equal(asynq_memo_objects(), 1);
	assert_int_equal(asynq_memo_size(&obj), 0);
	/* A new object at the same address starts empty. */
	obj.value = 100;
	assert_int_equal(memo_get(&obj, 0), 101);
	asynq_memo_forget(&obj);
	asynq_memo_forget(&other);
	assert_int_equal(asynq_memo_objects(), 0);
}

static int raises_runs;

static asynq_status
raises_exception(asynq_task *t, void *arg)
{
	(void)arg;
	raises_runs++;
	TCHECK_INT(tt_item(t, 1), 1);
	return asynq_fail(t, ASYNQ_INTERNAL, "assert False");
}

static void
test_cache_memo_error_not_cached(void **state)
{
	(void)state;
	object obj = { 0 };
	raises_runs = 0;
	for (int i = 1; i <= 2; i++) {
		asynq_future *f = asynq_memo_call(&obj, raises_exception, NULL,
		    NULL, NULL, 0);
		assert_status(asynq_wait(f), ASYNQ_INTERNAL);
		asynq_future_rele(f);
		assert_int_equal(raises_runs, i);
		assert_int_equal(asynq_memo_size(&obj), 0);
		/* No task left active or alive. */
		assert_null(asynq_task_current());
		assert_int_equal(tu_stats().tasks_live, 0);
	}
	ASSERT_TASK_CHECKS(2);
	asynq_memo_forget(&obj);
}

/* Concurrent calls share the task in flight. */
static asynq_status
slow_value(asynq_task *t, void *arg)
{
	object *o = arg;
	o->value++;
	return asynq_return_i64(t, tt_item(t, 9));
}

static asynq_status
memo_user(asynq_task *t, void *arg)
{
	asynq_future *f = asynq_memo_call(arg, slow_value, arg, NULL, "k", 1);
	asynq_status st = asynq_await(t, f);
	TCHECK_INT(asynq_future_i64(f), 9);
	asynq_future_rele(f);
	return st;
}

static void
test_cache_memo_concurrent_calls_share(void **state)
{
	(void)state;
	object obj = { 0 };
	asynq_future *fs[5];
	for (int i = 0; i < 5; i++)
		fs[i] = asynq_spawn(memo_user, &obj);
	assert_status(asynq_wait_all(fs, 5), ASYNQ_OK);
	asynq_future_rele_n(fs, 5);
	ASSERT_TASK_CHECKS(5);
	assert_int_equal(obj.value, 1);
	assert_int_equal(asynq_debug_default()->flushes, 1);
	asynq_memo_forget(&obj);
}

/* ---- LRU cache ---------------------------------------------------------- */

static int cube_runs;

static asynq_status
cube(asynq_task *t, void *arg)
{
	int64_t n = *(int64_t *)arg;
	cube_runs++;
	return asynq_return_i64(t, n * n * n);
}

/* asynq's key_fn=lambda args: args[0] % 2 == 0 */
static size_t
parity_key(const void *arg, void *buf, size_t size)
{
	unsigned char k = (*(const int64_t *)arg % 2) == 0;
	if (size >= 1)
		memcpy(buf, &k, 1);
	return 1;
}

static int64_t
lru_get(asynq_lru *c, int64_t n)
{
	asynq_future *f = asynq_lru_call(c, &n, NULL);
	int64_t v = asynq_wait(f) == ASYNQ_OK ? asynq_future_i64(f) : -1;
	asynq_future_rele(f);
	return v;
}

static void
test_cache_lru_key_fn(void **state)
{
	(void)state;
	asynq_lru *c;
	asynq_lru_cfg cfg = { .fn = cube, .max_size = 1, .key_fn = parity_key };
	assert_status(asynq_lru_alloc(&c, &cfg), ASYNQ_OK);
	cube_runs = 0;
	assert_int_equal(lru_get(c, 1), 1);
	assert_int_equal(lru_get(c, 3), 1);  /* hit: same parity */
	assert_int_equal(lru_get(c, 2), 8);  /* miss, evicts the odd key */
	assert_int_equal(lru_get(c, 3), 27); /* now a miss */
	assert_int_equal(cube_runs, 3);
	asynq_cache_stats st;
	asynq_lru_stats(c, &st);
	assert_int_equal(st.hits, 1);
	assert_int_equal(st.misses, 3);
	assert_int_equal(st.evictions, 2);
	assert_int_equal(st.size, 1);
	asynq_lru_free(c);
}

static void
test_cache_lru_evicts_least_recently_used(void **state)
{
	(void)state;
	asynq_lru *c;
	asynq_lru_cfg cfg = { .fn = cube,
		.max_size = 2,
		.arg_size = sizeof(int64_t) };
	assert_status(asynq_lru_alloc(&c, &cfg), ASYNQ_OK);
	cube_runs = 0;
	lru_get(c, 1);
	lru_get(c, 2);
	lru_get(c, 1); /* 1 is now the most recent */
	lru_get(c, 3); /* evicts 2 */
	assert_int_equal(cube_runs, 3);
	lru_get(c, 1); /* hit */
	lru_get(c, 3); /* hit */
	assert_int_equal(cube_runs, 3);
	lru_get(c, 2); /* miss: evicts 1, the least recent */
	assert_int_equal(cube_runs, 4);
	lru_get(c, 3); /* hit */
	assert_int_equal(cube_runs, 4);
	lru_get(c, 1); /* miss */
	assert_int_equal(cube_runs, 5);
	asynq_cache_stats st;
	asynq_lru_stats(c, &st);
	assert_int_equal(st.hits, 4);
	assert_int_equal(st.misses, 5);
	assert_int_equal(st.evictions, 3);
	assert_int_equal(st.size, 2);
	/* Dirty and clear. */
	int64_t three = 3;
	asynq_lru_dirty(c, &three);
	lru_get(c, 3);
	assert_int_equal(cube_runs, 6);
	asynq_lru_clear(c);
	asynq_lru_stats(c, &st);
	assert_int_equal(st.size, 0);
	asynq_lru_free(c);
}

static int flaky_runs;

static asynq_status
flaky(asynq_task *t, void *arg)
{
	(void)arg;
	if (flaky_runs++ == 0)
		return asynq_fail(t, ASYNQ_UNAVAILABLE, "try later");
	return asynq_return_i64(t, 11);
}

static void
test_cache_lru_error_not_cached_and_ttl(void **state)
{
	(void)state;
	asynq_lru *c;
	asynq_lru_cfg cfg = { .fn = flaky, .ttl_ns = 30 * MS };
	assert_status(asynq_lru_alloc(&c, &cfg), ASYNQ_OK);
	flaky_runs = 0;
	asynq_future *f = asynq_lru_call(c, NULL, NULL);
	assert_status(asynq_wait(f), ASYNQ_UNAVAILABLE);
	asynq_future_rele(f);
	assert_int_equal(lru_get(c, 0), 11);
	assert_int_equal(lru_get(c, 0), 11);
	assert_int_equal(flaky_runs, 2);
	assert_status(asynq_sleep_for(NULL, 40 * MS), ASYNQ_OK);
	assert_int_equal(lru_get(c, 0), 11);
	assert_int_equal(flaky_runs, 3);
	asynq_cache_stats st;
	asynq_lru_stats(c, &st);
	assert_int_equal(st.evictions, 1);
	asynq_lru_free(c);

	asynq_lru_cfg bad = { .max_size = 1 };
	assert_status(asynq_lru_alloc(&c, &bad), ASYNQ_INVALID_ARGUMENT);
	assert_null(c);
}

/* ---- Lazy constant ------------------------------------------------------ */

static int constant_calls;

static asynq_status
constant(asynq_task *t, void *arg)
{
	(void)arg;
	constant_calls++;
	return asynq_return_i64(t, constant_calls);
}

static asynq_status
lazy_reads(asynq_task *t, void *arg)
{
	asynq_lazy *l = arg;
	int64_t v = -1;
	for (int i = 0; i < 3; i++) {
		asynq_future *f = asynq_lazy_get(l);
		TCHECK_STATUS(asynq_await(t, f), ASYNQ_OK);
		if (i == 0)
			v = asynq_future_i64(f);
		TCHECK_INT(asynq_future_i64(f), v);
		asynq_future_rele(f);
	}
	return asynq_return_i64(t, v);
}

static int64_t
read_three_times(asynq_lazy *l)
{
	asynq_future *f = asynq_spawn(lazy_reads, l);
	int64_t v = asynq_wait(f) == ASYNQ_OK ? asynq_future_i64(f) : -1;
	asynq_future_rele(f);
	return v;
}

static void
test_cache_lazy_constant_no_ttl(void **state)
{
	(void)state;
	asynq_lazy *l;
	constant_calls = 0;
	assert_status(asynq_lazy_alloc(&l, constant, NULL, 0), ASYNQ_OK);
	assert_int_equal(read_three_times(l), 1);
	asynq_lazy_dirty(l);
	assert_int_equal(read_three_times(l), 2);
	assert_int_equal(constant_calls, 2);
	ASSERT_TASK_CHECKS(12);
	asynq_cache_stats st;
	asynq_lazy_stats(l, &st);
	assert_int_equal(st.misses, 2);
	assert_int_equal(st.hits, 4);
	asynq_lazy_free(l);
}

static void
test_cache_lazy_constant_ttl(void **state)
{
	(void)state;
	asynq_lazy *l;
	constant_calls = 0;
	assert_status(asynq_lazy_alloc(&l, constant, NULL, 100 * MS), ASYNQ_OK);
	assert_int_equal(read_three_times(l), 1);
	/* After the TTL it is computed again. */
	assert_status(asynq_sleep_for(NULL, 100 * MS), ASYNQ_OK);
	assert_int_equal(read_three_times(l), 2);
	/* Or after a dirty. */
	asynq_lazy_dirty(l);
	assert_int_equal(read_three_times(l), 3);
	assert_int_equal(constant_calls, 3);
	asynq_lazy_free(l);
}

static void
test_cache_lazy_failure_not_kept(void **state)
{
	(void)state;
	asynq_lazy *l;
	flaky_runs = 0;
	assert_status(asynq_lazy_alloc(&l, flaky, NULL, 0), ASYNQ_OK);
	asynq_future *f = asynq_lazy_get(l);
	assert_status(asynq_wait(f), ASYNQ_UNAVAILABLE);
	asynq_future_rele(f);
	f = asynq_lazy_get(l);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), 11);
	asynq_future_rele(f);
	asynq_lazy_free(l);
}

/* On a runtime worker: a memo call, a dedup call and a never-awaited dedup
 * call, a profile never stopped, a blocking call, the thread's debug
 * backend (one item awaited, one left unflushed); the workers' teardown
 * frees the tools' tables and the profile with their schedulers
 * (LeakSanitizer checks nothing is left under --config=asan). */
static object worker_objs[2];

static asynq_status
nothing_blocking(void *arg, const char **why)
{
	(void)arg;
	(void)why;
	return ASYNQ_OK;
}

static asynq_status
worker_tools(asynq_task *t, void *arg)
{
	object *o = arg;
	ASYNQ_TRY(asynq_profiler_start());
	asynq_future *bf = asynq_run_blocking(nothing_blocking, NULL);
	asynq_status bst = asynq_await(t, bf);
	asynq_future_rele(bf);
	ASYNQ_TRY(bst);
	ASYNQ_TRY(asynq_debug_sync(t));
	asynq_future *left = asynq_debug_item(asynq_debug_default(), 7);
	asynq_future_rele(left); /* the backend's stop cancels its batch */
	get_args *a = malloc(sizeof(*a));
	a->self = o;
	a->index = 1;
	asynq_future *f = asynq_memo_call(o, get_value, a, args_free, &a->index,
	    sizeof(a->index));
	asynq_status st = asynq_await(t, f);
	int64_t v = asynq_future_i64(f);
	asynq_future_rele(f);
	ASYNQ_TRY(st);
	get_args *b = malloc(sizeof(*b));
	b->self = o;
	b->index = 2;
	/* Never awaited: abandoned when the worker stops. */
	asynq_future_rele(asynq_dedup_call(get_value, b, args_free, "k", 1));
	return asynq_return_i64(t, v + (int64_t)asynq_memo_objects() * 10);
}

static void
test_cache_tools_on_runtime_workers_torn_down(void **state)
{
	(void)state;
	asynq_runtime *rt;
	asynq_runtime_cfg rc = { .workers = 2 };
	frees = 0;
	assert_int_equal(asynq_runtime_alloc(&rt, &rc), ASYNQ_OK);
	asynq_ticket *tk[2];
	for (int w = 0; w < 2; w++) {
		memset(&worker_objs[w], 0, sizeof(worker_objs[w]));
		assert_int_equal(asynq_runtime_submit(rt, w, worker_tools,
		                     &worker_objs[w], &tk[w]),
		    ASYNQ_OK);
	}
	for (int w = 0; w < 2; w++) {
		assert_int_equal(asynq_ticket_wait(tk[w]), ASYNQ_OK);
		/* One run, one memoised object on that worker. */
		assert_int_equal(asynq_ticket_i64(tk[w]), 11);
		asynq_ticket_free(tk[w]);
	}
	asynq_runtime_free(rt);
	/* Every argument freed once: the memo call's with its table, the
	 * abandoned dedup call's without its body running. */
	assert_int_equal(frees, 4);
	assert_int_equal(worker_objs[0].value, 1);
	assert_int_equal(worker_objs[1].value, 1);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TT_TEST(test_cache_tools_on_runtime_workers_torn_down),
		TT_TEST(test_cache_memo_per_instance),
		TT_TEST(test_cache_memo_error_not_cached),
		TT_TEST(test_cache_memo_concurrent_calls_share),
		TT_TEST(test_cache_lru_key_fn),
		TT_TEST(test_cache_lru_evicts_least_recently_used),
		TT_TEST(test_cache_lru_error_not_cached_and_ttl),
		TT_TEST(test_cache_lazy_constant_no_ttl),
		TT_TEST(test_cache_lazy_constant_ttl),
		TT_TEST(test_cache_lazy_failure_not_kept),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
