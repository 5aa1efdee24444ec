/* SPDX-License-Identifier: MIT */
/*
 * Tests of batches: how many flushes dependent and independent lookups cost
 * (asynq's DebugBatchItem tests), the batch rules of batch.h (a flushed batch
 * takes no new items, flushing twice, unset items, failed flushes,
 * cancelling), priority between pending batches, and what a backend sees and
 * sets (keys, requests, order, pointer and error results).
 */
#include "testutil.h"

/* ---- A recording backend -------------------------------------------- */

/* fill sets item i of a flush; NULL leaves every item unset. */
typedef void (*fill_fn)(asynq_future *item, size_t i);

typedef struct rec_backend {
	asynq_backend base; /* first: the framework's part */
	char tag;           /* logged on flush: "<tag><size> " */
	fill_fn fill;
	asynq_status flush_status; /* what flush returns */
	bool log_keys;             /* also log "k<key>" per item */
	int flushes;
	int batches_alloced, batches_freed;
	int priority_calls;
} rec_backend;

typedef struct rec_batch {
	asynq_batch base; /* first: the framework's part */
	rec_backend *be;
} rec_batch;

static asynq_batch *
rec_batch_alloc(asynq_backend *be)
{
	rec_batch *b = calloc(1, sizeof(*b));

	if (b == NULL)
		return NULL;
	b->be = (rec_backend *)be;
	b->be->batches_alloced++;
	return &b->base;
}

static void
rec_batch_free(asynq_batch *b)
{
	((rec_batch *)b)->be->batches_freed++;
	free(b);
}

static asynq_status
rec_flush(asynq_batch *b)
{
	rec_backend *be = ((rec_batch *)b)->be;
	size_t n = asynq_batch_size(b);

	be->flushes++;
	tu_log("%c%zu ", be->tag, n);
	for (size_t i = 0; i < n; i++) {
		asynq_future *item = asynq_batch_item(b, i);

		TCHECK(item != NULL);
		TCHECK(asynq_item_batch(item) == b);
		TCHECK(!asynq_future_done(item));
		if (be->log_keys)
			tu_log("k%lld ", (long long)asynq_item_key(item));
		if (be->fill != NULL)
			be->fill(item, i);
	}
	return be->flush_status;
}

/* Reverses the default: fewer items flush first. */
static int64_t
rec_priority_fewest_first(const asynq_batch *b)
{
	((const rec_batch *)b)->be->priority_calls++;
	return -(int64_t)asynq_batch_size(b);
}

static const asynq_backend_ops rec_ops = {
	.batch_alloc = rec_batch_alloc,
	.flush = rec_flush,
	.batch_free = rec_batch_free,
};

static void counting_free(void *p);

static void *
copy_string(asynq_batch *b, const void *p, void (**free_fn)(void *))
{
	(void)b;
	*free_fn = counting_free;
	return strdup(p);
}

static const asynq_backend_ops rec_ops_copy = {
	.batch_alloc = rec_batch_alloc,
	.flush = rec_flush,
	.batch_free = rec_batch_free,
	.copy = copy_string,
};

static const asynq_backend_ops rec_ops_fewest_first = {
	.batch_alloc = rec_batch_alloc,
	.flush = rec_flush,
	.priority = rec_priority_fewest_first,
	.batch_free = rec_batch_free,
};

static void
fill_double_key(asynq_future *item, size_t i)
{
	(void)i;
	TCHECK_STATUS(asynq_item_set_i64(item, 2 * asynq_item_key(item)),
	    ASYNQ_OK);
}

static void
fill_even(asynq_future *item, size_t i)
{
	if (i % 2 == 0)
		fill_double_key(item, i);
}

static void
fill_first(asynq_future *item, size_t i)
{
	if (i == 0)
		fill_double_key(item, i);
}

static int free_calls;

static void
counting_free(void *p)
{
	free_calls++;
	free(p);
}

static void
fill_twice(asynq_future *item, size_t i)
{
	(void)i;
	TCHECK_STATUS(asynq_item_set_i64(item, 1), ASYNQ_OK);
	TCHECK_STATUS(asynq_item_set_i64(item, 2), ASYNQ_FAILED_PRECONDITION);
	TCHECK_STATUS(asynq_item_set_ptr(item, malloc(8), counting_free),
	    ASYNQ_FAILED_PRECONDITION);
	TCHECK_STATUS(asynq_item_set_error(item,
	                  asynq_error_alloc(ASYNQ_ABORTED, "late")),
	    ASYNQ_FAILED_PRECONDITION);
}

static void
fill_string(asynq_future *item, size_t i)
{
	char *s = malloc(16);

	snprintf(s, 16, "item-%zu", i);
	TCHECK_STATUS(asynq_item_set_ptr(item, s, counting_free), ASYNQ_OK);
}

/* Odd keys are missing (NOT_FOUND), even ones double. */
static void
fill_odd_missing(asynq_future *item, size_t i)
{
	int64_t k = asynq_item_key(item);

	(void)i;
	if (k % 2 == 0)
		TCHECK_STATUS(asynq_item_set_i64(item, 2 * k), ASYNQ_OK);
	else
		TCHECK_STATUS(asynq_item_set_error(item,
		                  asynq_error_alloc(ASYNQ_NOT_FOUND,
		                      "no key %lld", (long long)k)),
		    ASYNQ_OK);
}

static void
fill_key_string(asynq_future *item, size_t i)
{
	char *s = malloc(16);

	(void)i;
	snprintf(s, 16, "key-%lld", (long long)asynq_item_key(item));
	TCHECK_STATUS(asynq_item_set_ptr(item, s, counting_free), ASYNQ_OK);
}

static void
fill_error(asynq_future *item, size_t i)
{
	(void)i;
	TCHECK_STATUS(asynq_item_set_error(item,
	                  asynq_error_alloc(ASYNQ_NOT_FOUND, "no key %lld",
	                      (long long)asynq_item_key(item))),
	    ASYNQ_OK);
}

/* The file's backends; the teardown finishes them before the scheduler. */
static asynq_debug_backend dbg;
static bool dbg_ready;
static rec_backend rec_a, rec_b;
static bool rec_a_ready, rec_b_ready;

static void
dbg_init(void)
{
	asynq_debug_backend_init(&dbg, "batch-test", false);
	dbg_ready = true;
}

static void
rec_init(rec_backend *be, bool *ready, const asynq_backend_ops *ops, char tag,
    fill_fn fill)
{
	memset(be, 0, sizeof(*be));
	asynq_backend_init(&be->base, ops, tag == 'A' ? "rec-a" : "rec-b");
	be->tag = tag;
	be->fill = fill;
	be->flush_status = ASYNQ_OK;
	*ready = true;
}

static int
batch_setup(void **state)
{
	free_calls = 0;
	return tu_setup(state);
}

static int
batch_teardown(void **state)
{
	if (dbg_ready)
		asynq_debug_backend_fini(&dbg);
	if (rec_a_ready)
		asynq_backend_fini(&rec_a.base);
	if (rec_b_ready)
		asynq_backend_fini(&rec_b.base);
	dbg_ready = rec_a_ready = rec_b_ready = false;
	return tu_teardown(state);
}

#define BATCH_TEST(fn)                                                         \
	cmocka_unit_test_setup_teardown(fn, batch_setup, batch_teardown)

/* ---- Task bodies ---------------------------------------------------- */

/* Ten lookups, each made after the previous one's result is known. */
static asynq_status
chain_task(asynq_task *t, void *arg)
{
	int64_t sum = 0;

	(void)arg;
	for (int i = 0; i < 10; i++) {
		asynq_future *item = asynq_debug_item(&dbg, i);
		asynq_status st = asynq_await(t, item);

		sum += asynq_future_i64(item);
		asynq_future_rele(item);
		ASYNQ_TRY(st);
	}
	return asynq_return_i64(t, sum);
}

/* A binary tree of tasks; each of the 32 leaves (depth 5) looks up one
 * item. Returns the number of leaves under it. */
static asynq_status
tree_task(asynq_task *t, void *arg)
{
	int depth = (int)(intptr_t)arg;
	asynq_future *fs[2];
	asynq_status st;
	int64_t v;

	if (depth == 5) {
		fs[0] = asynq_debug_item(&dbg, 1);
		st = asynq_await(t, fs[0]);
		v = asynq_future_i64(fs[0]);
		asynq_future_rele(fs[0]);
		ASYNQ_TRY(st);
		return asynq_return_i64(t, v);
	}
	fs[0] = asynq_spawn(tree_task, (void *)(intptr_t)(depth + 1));
	fs[1] = asynq_spawn(tree_task, (void *)(intptr_t)(depth + 1));
	st = asynq_await_all(t, fs, 2);
	v = asynq_future_i64(fs[0]) + asynq_future_i64(fs[1]);
	asynq_future_rele_n(fs, 2);
	ASYNQ_TRY(st);
	return asynq_return_i64(t, v);
}

static asynq_status
sync_task(asynq_task *t, void *arg)
{
	(void)arg;
	return asynq_debug_sync(t);
}

/* Items of two backends awaited together: 3 of A, 5 of B. */
static asynq_status
two_backends_task(asynq_task *t, void *arg)
{
	asynq_future *fs[8];
	asynq_status st;

	(void)arg;
	for (int i = 0; i < 3; i++)
		fs[i] = asynq_batch_add(&rec_a.base, i, NULL);
	for (int i = 0; i < 5; i++)
		fs[3 + i] = asynq_batch_add(&rec_b.base, 10 + i, NULL);
	st = asynq_await_all(t, fs, 8);
	TCHECK_STATUS(st, ASYNQ_OK);
	for (int i = 0; i < 3; i++)
		TCHECK_INT(asynq_future_i64(fs[i]), 2 * i);
	for (int i = 0; i < 5; i++)
		TCHECK_INT(asynq_future_i64(fs[3 + i]), 2 * (10 + i));
	asynq_future_rele_n(fs, 8);
	return st;
}

/* Cancelling a batch that a blocked task waits on. */
static asynq_future *cancel_target_item;

static asynq_status
cancel_target(asynq_task *t, void *arg)
{
	asynq_status st;

	(void)arg;
	cancel_target_item = asynq_batch_add(&rec_a.base, 1, NULL);
	st = asynq_await(t, cancel_target_item);
	TCHECK_STATUS(st, ASYNQ_CANCELLED);
	TCHECK(asynq_task_error(t) != NULL);
	TCHECK_STATUS(asynq_error_code(asynq_task_error(t)), ASYNQ_CANCELLED);
	asynq_future_rele(cancel_target_item);
	return st;
}

static asynq_status
cancel_sibling(asynq_task *t, void *arg)
{
	(void)t;
	(void)arg;
	TCHECK(cancel_target_item != NULL);
	TCHECK(!asynq_future_done(cancel_target_item));
	asynq_batch_cancel(asynq_item_batch(cancel_target_item));
	TCHECK(asynq_future_done(cancel_target_item));
	return ASYNQ_OK;
}

static asynq_status
cancel_root(asynq_task *t, void *arg)
{
	asynq_future *fs[2];
	asynq_status st;

	(void)arg;
	fs[0] = asynq_spawn(cancel_target, NULL);
	fs[1] = asynq_spawn(cancel_sibling, NULL);
	st = asynq_await_all(t, fs, 2);
	TCHECK_STATUS(asynq_future_status(fs[0]), ASYNQ_CANCELLED);
	TCHECK_STATUS(asynq_future_status(fs[1]), ASYNQ_OK);
	asynq_future_rele_n(fs, 2);
	return st;
}

/* Items of a failing backend, awaited in a task. */
static asynq_status
failing_items_task(asynq_task *t, void *arg)
{
	asynq_future *fs[3];
	asynq_status st;

	(void)arg;
	for (int i = 0; i < 3; i++)
		fs[i] = asynq_batch_add(&rec_a.base, 7 + i, NULL);
	st = asynq_await_all(t, fs, 3);
	asynq_future_rele_n(fs, 3);
	return st;
}

/* ---- Tests ---------------------------------------------------------- */

static void
test_batch_chain_of_dependent_items_flushes_each(void **state)
{
	asynq_future *f;

	(void)state;
	dbg_init();
	f = asynq_spawn(chain_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), 45);
	assert_int_equal(dbg.flushes, 10);
	assert_int_equal(dbg.items_flushed, 10);
	assert_int_equal(dbg.last_size, 1);
	assert_int_equal(tu_stats().flushes, 10);
	asynq_future_rele(f);
}

static void
test_batch_tree_of_tasks_flushes_once(void **state)
{
	asynq_future *f;

	(void)state;
	dbg_init();
	f = asynq_spawn(tree_task, (void *)(intptr_t)0);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), 32);
	assert_int_equal(dbg.flushes, 1);
	assert_int_equal(dbg.last_size, 32);
	assert_int_equal(dbg.items_flushed, 32);
	assert_int_equal(tu_stats().flushes, 1);
	assert_int_equal(tu_stats().tasks_spawned, 63);
	asynq_future_rele(f);
}

static void
test_batch_debug_sync_joins_one_flush(void **state)
{
	asynq_future *fs[3];

	(void)state;
	for (int i = 0; i < 3; i++)
		fs[i] = asynq_spawn(sync_task, NULL);
	assert_status(asynq_wait_all(fs, 3), ASYNQ_OK);
	assert_int_equal(asynq_debug_default()->flushes, 1);
	assert_int_equal(asynq_debug_default()->last_size, 3);
	asynq_future_rele_n(fs, 3);
}

static void
test_batch_flushed_batch_takes_no_new_items(void **state)
{
	asynq_future *it1, *it2;
	asynq_batch *b1, *b2;

	(void)state;
	dbg_init();
	it1 = asynq_debug_item(&dbg, 1);
	b1 = asynq_item_batch(it1);
	assert_non_null(b1);
	assert_int_equal(asynq_batch_size(b1), 1);
	assert_ptr_equal(asynq_batch_item(b1, 0), it1);
	assert_status(asynq_batch_flush(b1), ASYNQ_OK);
	assert_true(asynq_future_done(it1));
	assert_int_equal(asynq_future_i64(it1), 1);
	assert_int_equal(dbg.flushes, 1);

	it2 = asynq_debug_item(&dbg, 2);
	b2 = asynq_item_batch(it2);
	assert_non_null(b2);
	assert_ptr_not_equal(b2, b1);
	assert_int_equal(asynq_batch_size(b1), 1);
	assert_int_equal(asynq_batch_size(b2), 1);
	assert_false(asynq_future_done(it2));
	assert_status(asynq_wait(it2), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(it2), 2);
	assert_int_equal(dbg.flushes, 2);
	asynq_future_rele(it1);
	asynq_future_rele(it2);
}

static void
test_batch_flush_twice_fails(void **state)
{
	asynq_future *it;
	asynq_batch *b;

	(void)state;
	dbg_init();
	it = asynq_debug_item(&dbg, 4);
	b = asynq_item_batch(it);
	assert_status(asynq_batch_flush(b), ASYNQ_OK);
	assert_status(asynq_batch_flush(b), ASYNQ_FAILED_PRECONDITION);
	assert_int_equal(dbg.flushes, 1);
	assert_status(asynq_future_status(it), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(it), 4);
	asynq_future_rele(it);
}

static void
test_batch_flush_after_cancel_fails(void **state)
{
	asynq_future *it;
	asynq_batch *b;

	(void)state;
	dbg_init();
	it = asynq_debug_item(&dbg, 4);
	b = asynq_item_batch(it);
	asynq_batch_cancel(b);
	assert_status(asynq_batch_flush(b), ASYNQ_FAILED_PRECONDITION);
	assert_int_equal(dbg.flushes, 0);
	assert_status(asynq_future_status(it), ASYNQ_CANCELLED);
	asynq_future_rele(it);
}

static void
test_batch_unset_items_fail_internal(void **state)
{
	asynq_future *fs[5];

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_even);
	for (int i = 0; i < 5; i++)
		fs[i] = asynq_batch_add(&rec_a.base, i + 1, NULL);
	assert_status(asynq_wait_all(fs, 5), ASYNQ_INTERNAL);
	assert_int_equal(rec_a.flushes, 1);
	for (int i = 0; i < 5; i++) {
		assert_true(asynq_future_done(fs[i]));
		if (i % 2 == 0) {
			assert_status(asynq_future_status(fs[i]), ASYNQ_OK);
			assert_int_equal(asynq_future_i64(fs[i]), 2 * (i + 1));
		} else {
			assert_status(asynq_future_status(fs[i]),
			    ASYNQ_INTERNAL);
			assert_non_null(asynq_future_error(fs[i]));
		}
	}
	ASSERT_TASK_CHECKS(15);
	asynq_future_rele_n(fs, 5);
}

static void
test_batch_flush_error_fails_unset_items(void **state)
{
	asynq_future *fs[3], *f;

	(void)state;
	dbg_init();
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_first);
	rec_a.flush_status = ASYNQ_UNAVAILABLE;
	for (int i = 0; i < 3; i++)
		fs[i] = asynq_batch_add(&rec_a.base, i + 1, NULL);
	assert_status(asynq_wait_all(fs, 3), ASYNQ_UNAVAILABLE);
	assert_status(asynq_future_status(fs[0]), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(fs[0]), 2);
	assert_status(asynq_future_status(fs[1]), ASYNQ_UNAVAILABLE);
	assert_status(asynq_future_status(fs[2]), ASYNQ_UNAVAILABLE);
	asynq_future_rele_n(fs, 3);

	/* The failure reaches a task awaiting such items... */
	f = asynq_spawn(failing_items_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_UNAVAILABLE);
	assert_int_equal(rec_a.flushes, 2);
	asynq_future_rele(f);

	/* ...and the scheduler keeps working for the next tasks. */
	f = asynq_spawn(chain_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), 45);
	assert_int_equal(dbg.flushes, 10);
	asynq_future_rele(f);
}

static void
test_batch_cancel_fails_unset_items(void **state)
{
	asynq_future *fs[3];
	asynq_batch *b;

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_double_key);
	for (int i = 0; i < 3; i++)
		fs[i] = asynq_batch_add(&rec_a.base, i, NULL);
	b = asynq_item_batch(fs[0]);
	assert_ptr_equal(asynq_item_batch(fs[2]), b);
	asynq_batch_cancel(b);
	for (int i = 0; i < 3; i++) {
		assert_true(asynq_future_done(fs[i]));
		assert_status(asynq_future_status(fs[i]), ASYNQ_CANCELLED);
	}
	assert_int_equal(tu_stats().batches_cancelled, 1);
	/* Cancelling again never fails and changes nothing. */
	asynq_batch_cancel(b);
	assert_status(asynq_future_status(fs[0]), ASYNQ_CANCELLED);
	assert_status(asynq_wait_all(fs, 3), ASYNQ_CANCELLED);
	assert_int_equal(rec_a.flushes, 0);
	asynq_future_rele_n(fs, 3);
}

static void
test_batch_cancel_flushed_batch_does_nothing(void **state)
{
	asynq_future *it;
	asynq_batch *b;

	(void)state;
	dbg_init();
	it = asynq_debug_item(&dbg, 6);
	b = asynq_item_batch(it);
	assert_status(asynq_wait(it), ASYNQ_OK);
	asynq_batch_cancel(b);
	assert_status(asynq_future_status(it), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(it), 6);
	assert_int_equal(tu_stats().batches_cancelled, 0);
	asynq_future_rele(it);
}

static void
test_batch_cancel_wakes_awaiting_task(void **state)
{
	asynq_future *f;

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_double_key);
	cancel_target_item = NULL;
	f = asynq_spawn(cancel_root, NULL);
	assert_status(asynq_wait(f), ASYNQ_CANCELLED);
	ASSERT_TASK_CHECKS(8);
	assert_int_equal(rec_a.flushes, 0);
	asynq_future_rele(f);
}

static void
test_batch_priority_default_largest_first(void **state)
{
	asynq_future *f;

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_double_key);
	rec_init(&rec_b, &rec_b_ready, &rec_ops, 'B', fill_double_key);
	f = asynq_spawn(two_backends_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(9);
	assert_string_equal(tu_log_str(), "B5 A3 ");
	asynq_future_rele(f);
}

static void
test_batch_priority_custom_op(void **state)
{
	asynq_future *f;

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops_fewest_first, 'A',
	    fill_double_key);
	rec_init(&rec_b, &rec_b_ready, &rec_ops_fewest_first, 'B',
	    fill_double_key);
	f = asynq_spawn(two_backends_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(9);
	assert_string_equal(tu_log_str(), "A3 B5 ");
	assert_true(rec_a.priority_calls + rec_b.priority_calls > 0);
	asynq_future_rele(f);
}

static void
test_batch_items_keep_order_key_and_req(void **state)
{
	static const int64_t keys[] = { 5, 3, 9, 3 };
	int reqs[4];
	asynq_future *fs[4];

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_double_key);
	rec_a.log_keys = true;
	for (int i = 0; i < 4; i++) {
		fs[i] = asynq_batch_add(&rec_a.base, keys[i], &reqs[i]);
		assert_int_equal(asynq_item_key(fs[i]), keys[i]);
		assert_ptr_equal(asynq_item_req(fs[i]), &reqs[i]);
	}
	assert_int_equal(asynq_batch_size(asynq_item_batch(fs[0])), 4);
	for (int i = 0; i < 4; i++)
		assert_ptr_equal(
		    asynq_batch_item(asynq_item_batch(fs[0]), (size_t)i),
		    fs[i]);
	assert_status(asynq_wait_all(fs, 4), ASYNQ_OK);
	/* Equal keys are not merged: every item is its own request. */
	assert_string_equal(tu_log_str(), "A4 k5 k3 k9 k3 ");
	for (int i = 0; i < 4; i++)
		assert_int_equal(asynq_future_i64(fs[i]), 2 * keys[i]);
	ASSERT_TASK_CHECKS(16);
	asynq_future_rele_n(fs, 4);
}

static void
test_batch_item_second_result_ignored(void **state)
{
	asynq_future *fs[2];

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_twice);
	fs[0] = asynq_batch_add(&rec_a.base, 1, NULL);
	fs[1] = asynq_batch_add(&rec_a.base, 2, NULL);
	assert_status(asynq_wait_all(fs, 2), ASYNQ_OK);
	ASSERT_TASK_CHECKS(14);
	for (int i = 0; i < 2; i++) {
		assert_status(asynq_future_status(fs[i]), ASYNQ_OK);
		assert_int_equal(asynq_future_i64(fs[i]), 1);
	}
	/* The refused pointers were freed, once each. */
	assert_int_equal(free_calls, 2);
	asynq_future_rele_n(fs, 2);
	assert_int_equal(free_calls, 2);
}

static void
test_batch_item_ptr_result_freed_on_release(void **state)
{
	asynq_future *fs[3];

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_string);
	for (int i = 0; i < 3; i++)
		fs[i] = asynq_batch_add(&rec_a.base, i, NULL);
	assert_status(asynq_wait_all(fs, 3), ASYNQ_OK);
	assert_string_equal(asynq_future_ptr(fs[0]), "item-0");
	assert_string_equal(asynq_future_ptr(fs[2]), "item-2");
	assert_int_equal(free_calls, 0);
	free(asynq_future_take(fs[1]));
	asynq_future_rele_n(fs, 3);
	assert_int_equal(free_calls, 2);
}

static void
test_batch_item_error_result(void **state)
{
	asynq_future *fs[2];

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_error);
	fs[0] = asynq_batch_add(&rec_a.base, 41, NULL);
	fs[1] = asynq_batch_add(&rec_a.base, 42, NULL);
	assert_status(asynq_wait_all(fs, 2), ASYNQ_NOT_FOUND);
	assert_status(asynq_future_status(fs[1]), ASYNQ_NOT_FOUND);
	assert_string_equal(asynq_error_message(asynq_future_error(fs[0])),
	    "no key 41");
	assert_string_equal(asynq_error_message(asynq_future_error(fs[1])),
	    "no key 42");
	asynq_future_rele_n(fs, 2);
}

static void
test_batch_backend_fini_cancels_active_batch(void **state)
{
	asynq_future *it;

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_double_key);
	it = asynq_batch_add(&rec_a.base, 1, NULL);
	asynq_backend_fini(&rec_a.base);
	rec_a_ready = false;
	assert_true(asynq_future_done(it));
	assert_status(asynq_future_status(it), ASYNQ_CANCELLED);
	assert_int_equal(rec_a.flushes, 0);
	asynq_future_rele(it);
}

static void
test_batch_every_batch_freed(void **state)
{
	asynq_future *fs[4];

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_double_key);
	/* Two flushed batches and one cancelled by the scheduler's end. */
	fs[0] = asynq_batch_add(&rec_a.base, 1, NULL);
	assert_status(asynq_wait(fs[0]), ASYNQ_OK);
	fs[1] = asynq_batch_add(&rec_a.base, 2, NULL);
	fs[2] = asynq_batch_add(&rec_a.base, 3, NULL);
	assert_status(asynq_wait_all(&fs[1], 2), ASYNQ_OK);
	fs[3] = asynq_batch_add(&rec_a.base, 4, NULL);
	assert_int_equal(rec_a.batches_alloced, 3);
	asynq_future_rele_n(fs, 4);
	asynq_backend_fini(&rec_a.base);
	rec_a_ready = false;
	asynq_thread_fini();
	assert_int_equal(rec_a.flushes, 2);
	assert_int_equal(rec_a.batches_freed, 3);
}

/* ---- dedup_keys ------------------------------------------------------ */

static void
test_batch_dedup_keys_flush_sees_each_key_once(void **state)
{
	static const int64_t keys[] = { 5, 3, 9, 3, 5, 5 };
	asynq_future *fs[6];
	uint64_t before = tu_stats().items_followed;

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_double_key);
	rec_a.base.dedup_keys = true;
	rec_a.log_keys = true;
	for (int i = 0; i < 6; i++)
		fs[i] = asynq_batch_add(&rec_a.base, keys[i], NULL);
	asynq_batch *b = asynq_item_batch(fs[0]);
	assert_int_equal(asynq_batch_size(b), 3);
	assert_int_equal(asynq_batch_followers(b), 3);
	/* A follower answers for its key like an item. */
	assert_int_equal(asynq_item_key(fs[3]), 3);
	assert_ptr_equal(asynq_item_batch(fs[5]), b);
	assert_status(asynq_wait_all(fs, 6), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "A3 k5 k3 k9 ");
	for (int i = 0; i < 6; i++)
		assert_int_equal(asynq_future_i64(fs[i]), 2 * keys[i]);
	assert_int_equal(tu_stats().items_followed - before, 3);
	/* A follower cannot be set by the backend. */
	assert_status(asynq_item_set_i64(fs[3], 1), ASYNQ_FAILED_PRECONDITION);
	asynq_future_rele_n(fs, 6);
	/* The next batch starts empty: the same keys are new there. */
	fs[0] = asynq_batch_add(&rec_a.base, 5, NULL);
	fs[1] = asynq_batch_add(&rec_a.base, 5, NULL);
	assert_status(asynq_wait_all(fs, 2), ASYNQ_OK);
	assert_string_equal(tu_log_str(), "A3 k5 k3 k9 A1 k5 ");
	assert_int_equal(asynq_future_i64(fs[1]), 10);
	asynq_future_rele_n(fs, 2);
	ASSERT_TASK_CHECKS(16);
}

static void
test_batch_dedup_keys_many_keys_grow_the_table(void **state)
{
	enum { N = 3000 };
	asynq_future **fs = calloc(2 * N, sizeof(*fs));

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_double_key);
	rec_a.base.dedup_keys = true;
	/* Keys that collide in low bits: multiples of 1024. */
	for (int i = 0; i < 2 * N; i++)
		fs[i] =
		    asynq_batch_add(&rec_a.base, (int64_t)(i % N) * 1024, NULL);
	assert_int_equal(asynq_batch_size(asynq_item_batch(fs[0])), N);
	assert_status(asynq_wait_all(fs, 2 * N), ASYNQ_OK);
	assert_int_equal(rec_a.flushes, 1);
	for (int i = 0; i < 2 * N; i++)
		assert_int_equal(asynq_future_i64(fs[i]),
		    2 * (int64_t)(i % N) * 1024);
	asynq_future_rele_n(fs, 2 * N);
	free(fs);
}

static void
test_batch_dedup_keys_error_reaches_only_its_key(void **state)
{
	static const int64_t keys[] = { 1, 2, 1, 2, 3, 1 };
	asynq_future *fs[6];

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_odd_missing);
	rec_a.base.dedup_keys = true;
	for (int i = 0; i < 6; i++)
		fs[i] = asynq_batch_add(&rec_a.base, keys[i], NULL);
	assert_status(asynq_wait_all(fs, 6), ASYNQ_NOT_FOUND);
	assert_int_equal(rec_a.flushes, 1);
	for (int i = 0; i < 6; i++) {
		if (keys[i] % 2 == 0) {
			assert_status(asynq_future_status(fs[i]), ASYNQ_OK);
			assert_int_equal(asynq_future_i64(fs[i]), 4);
			continue;
		}
		char want[16];
		snprintf(want, sizeof(want), "no key %lld", (long long)keys[i]);
		assert_status(asynq_future_status(fs[i]), ASYNQ_NOT_FOUND);
		assert_string_equal(
		    asynq_error_message(asynq_future_error(fs[i])), want);
	}
	/* Each caller has an error of its own. */
	assert_ptr_not_equal(asynq_future_error(fs[0]),
	    asynq_future_error(fs[2]));
	asynq_future_rele_n(fs, 6);
}

static void
test_batch_dedup_keys_owned_results_are_copied(void **state)
{
	asynq_future *fs[3];
	char *a, *b;

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops_copy, 'A', fill_key_string);
	rec_a.base.dedup_keys = true;
	for (int i = 0; i < 3; i++)
		fs[i] = asynq_batch_add(&rec_a.base, 7, NULL);
	assert_status(asynq_wait_all(fs, 3), ASYNQ_OK);
	/* Each caller owns its own copy: taking one leaves the others. */
	a = asynq_future_take(fs[0]);
	b = asynq_future_take(fs[1]);
	assert_ptr_not_equal(a, b);
	assert_string_equal(a, "key-7");
	assert_string_equal(b, "key-7");
	assert_string_equal(asynq_future_ptr(fs[2]), "key-7");
	free(a);
	free(b);
	asynq_future_rele_n(fs, 3);
	assert_int_equal(free_calls, 1);
}

static void
test_batch_dedup_keys_owned_results_without_copy_fail_clearly(void **state)
{
	asynq_future *fs[2];

	(void)state;
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', fill_key_string);
	rec_a.base.dedup_keys = true;
	fs[0] = asynq_batch_add(&rec_a.base, 7, NULL);
	fs[1] = asynq_batch_add(&rec_a.base, 7, NULL);
	assert_status(asynq_wait_all(fs, 2), ASYNQ_FAILED_PRECONDITION);
	assert_string_equal(asynq_future_ptr(fs[0]), "key-7");
	assert_status(asynq_future_status(fs[1]), ASYNQ_FAILED_PRECONDITION);
	assert_string_equal(asynq_error_message(asynq_future_error(fs[1])),
	    "rec-a: dedup_keys with owned pointer results needs ops->copy");
	asynq_future_rele_n(fs, 2);
	assert_int_equal(free_calls, 1);
}

static void
test_batch_dedup_keys_failed_or_cancelled_batch_fails_every_caller(void **state)
{
	asynq_future *fs[4];

	(void)state;
	/* A flush that fails. */
	rec_init(&rec_a, &rec_a_ready, &rec_ops, 'A', NULL);
	rec_a.base.dedup_keys = true;
	rec_a.flush_status = ASYNQ_UNAVAILABLE;
	for (int i = 0; i < 4; i++)
		fs[i] = asynq_batch_add(&rec_a.base, i % 2, NULL);
	assert_status(asynq_wait_all(fs, 4), ASYNQ_UNAVAILABLE);
	for (int i = 0; i < 4; i++)
		assert_status(asynq_future_status(fs[i]), ASYNQ_UNAVAILABLE);
	asynq_future_rele_n(fs, 4);
	/* A batch cancelled before its flush. */
	for (int i = 0; i < 4; i++)
		fs[i] = asynq_batch_add(&rec_a.base, 9, NULL);
	asynq_batch_cancel(asynq_item_batch(fs[0]));
	for (int i = 0; i < 4; i++) {
		assert_true(asynq_future_done(fs[i]));
		assert_status(asynq_future_status(fs[i]), ASYNQ_CANCELLED);
	}
	assert_int_equal(rec_a.flushes, 1);
	asynq_future_rele_n(fs, 4);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		BATCH_TEST(test_batch_chain_of_dependent_items_flushes_each),
		BATCH_TEST(test_batch_tree_of_tasks_flushes_once),
		BATCH_TEST(test_batch_debug_sync_joins_one_flush),
		BATCH_TEST(test_batch_flushed_batch_takes_no_new_items),
		BATCH_TEST(test_batch_flush_twice_fails),
		BATCH_TEST(test_batch_flush_after_cancel_fails),
		BATCH_TEST(test_batch_unset_items_fail_internal),
		BATCH_TEST(test_batch_flush_error_fails_unset_items),
		BATCH_TEST(test_batch_cancel_fails_unset_items),
		BATCH_TEST(test_batch_cancel_flushed_batch_does_nothing),
		BATCH_TEST(test_batch_cancel_wakes_awaiting_task),
		BATCH_TEST(test_batch_priority_default_largest_first),
		BATCH_TEST(test_batch_priority_custom_op),
		BATCH_TEST(test_batch_items_keep_order_key_and_req),
		BATCH_TEST(test_batch_item_second_result_ignored),
		BATCH_TEST(test_batch_item_ptr_result_freed_on_release),
		BATCH_TEST(test_batch_item_error_result),
		BATCH_TEST(test_batch_backend_fini_cancels_active_batch),
		BATCH_TEST(test_batch_every_batch_freed),
		BATCH_TEST(test_batch_dedup_keys_flush_sees_each_key_once),
		BATCH_TEST(test_batch_dedup_keys_many_keys_grow_the_table),
		BATCH_TEST(test_batch_dedup_keys_error_reaches_only_its_key),
		BATCH_TEST(test_batch_dedup_keys_owned_results_are_copied),
		BATCH_TEST(
		    test_batch_dedup_keys_owned_results_without_copy_fail_clearly),
		BATCH_TEST(
		    test_batch_dedup_keys_failed_or_cancelled_batch_fails_every_caller),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
