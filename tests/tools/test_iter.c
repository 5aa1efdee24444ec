/* SPDX-License-Identifier: MIT */
/*
 * Map, filter, sift, sort, min and max with async element functions, ported
 * from asynq's test_amap, test_afilter, test_asift, test_asorted, test_amin
 * and test_amax; and the batching they exist for: mapping 100 elements whose
 * calls are batch items goes out as one flush.
 */
#include "tools_testutil.h"

/* asynq's filter_fn: awaits a lookup, then says whether elt is not None
 * (here: not 0). Each element's call is a task. */
static asynq_status
filter_task(asynq_task *t, void *arg)
{
	int64_t elt = *(int64_t *)arg;
	TCHECK_INT(tt_item(t, elt), elt);
	return asynq_return_i64(t, elt != 0);
}

static asynq_future *
filter_fn(void *elem, size_t i, void *arg)
{
	(void)i;
	(void)arg;
	return asynq_spawn(filter_task, elem);
}

/* A key that is the element itself, through a batch item. */
static asynq_future *
item_key(void *elem, size_t i, void *arg)
{
	(void)i;
	(void)arg;
	return asynq_debug_item(asynq_debug_default(), *(int64_t *)elem);
}

/* A key that is the element's last digit, so ties exist. */
static asynq_future *
digit_key(void *elem, size_t i, void *arg)
{
	(void)i;
	(void)arg;
	return asynq_debug_item(asynq_debug_default(), *(int64_t *)elem % 10);
}

static void
test_iter_map_100_tasks_is_one_flush(void **state)
{
	(void)state;
	int64_t in[100], out[100];
	for (int i = 0; i < 100; i++)
		in[i] = i;
	assert_status(
	    asynq_map_i64(NULL, filter_fn, NULL, in, 100, sizeof(in[0]), out),
	    ASYNQ_OK);
	for (int i = 0; i < 100; i++)
		assert_int_equal(out[i], i != 0);
	ASSERT_TASK_CHECKS(100);
	assert_int_equal(asynq_debug_default()->flushes, 1);
	assert_int_equal(asynq_debug_default()->last_size, 100);
}

static asynq_status
map_items_in_task(asynq_task *t, void *arg)
{
	int64_t *in = arg, out[100];
	asynq_future *fs[100];
	TCHECK_STATUS(asynq_map(t, item_key, NULL, in, 100, sizeof(in[0]), fs),
	    ASYNQ_OK);
	for (int i = 0; i < 100; i++)
		out[i] = asynq_future_i64(fs[i]);
	asynq_future_rele_n(fs, 100);
	for (int i = 0; i < 100; i++)
		TCHECK_INT(out[i], in[i]);
	return ASYNQ_OK;
}

static void
test_iter_map_100_items_in_task_is_one_flush(void **state)
{
	(void)state;
	int64_t in[100];
	for (int i = 0; i < 100; i++)
		in[i] = 1000 + i;
	asynq_future *f = asynq_spawn(map_items_in_task, in);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	ASSERT_TASK_CHECKS(101);
	assert_int_equal(asynq_debug_default()->flushes, 1);
}

static void
test_iter_map_empty(void **state)
{
	(void)state;
	assert_status(asynq_map_i64(NULL, filter_fn, NULL, NULL, 0, 8, NULL),
	    ASYNQ_OK);
	assert_int_equal(asynq_debug_default()->flushes, 0);
}

static void
test_iter_filter_and_filterfalse(void **state)
{
	(void)state;
	size_t n;
	int64_t a[3] = { 0, 1, 0 };
	assert_status(
	    asynq_filter(NULL, filter_fn, NULL, a, 3, sizeof(a[0]), false, &n),
	    ASYNQ_OK);
	assert_int_equal(n, 1);
	assert_int_equal(a[0], 1);
	int64_t b[3] = { 0, 1, 0 };
	assert_status(
	    asynq_filter(NULL, filter_fn, NULL, b, 3, sizeof(b[0]), true, &n),
	    ASYNQ_OK);
	assert_int_equal(n, 2);
	assert_int_equal(b[0], 0);
	assert_int_equal(b[1], 0);
	int64_t c[1] = { 0 };
	assert_status(
	    asynq_filter(NULL, filter_fn, NULL, c, 1, sizeof(c[0]), false, &n),
	    ASYNQ_OK);
	assert_int_equal(n, 0);
	assert_status(
	    asynq_filter(NULL, filter_fn, NULL, NULL, 0, 8, false, &n),
	    ASYNQ_OK);
	assert_int_equal(n, 0);
	int64_t d[5] = { 3, 0, 4, 0, 5 };
	assert_status(
	    asynq_filter(NULL, filter_fn, NULL, d, 5, sizeof(d[0]), false, &n),
	    ASYNQ_OK);
	assert_int_equal(n, 3);
	assert_int_equal(d[0], 3);
	assert_int_equal(d[1], 4);
	assert_int_equal(d[2], 5);
}

static void
test_iter_sift(void **state)
{
	(void)state;
	int64_t a[3] = { 0, 1, 0 }, yes[3], no[3];
	size_t ny, nn;
	assert_status(asynq_sift(NULL, filter_fn, NULL, a, 3, sizeof(a[0]), yes,
	                  &ny, no, &nn),
	    ASYNQ_OK);
	assert_int_equal(ny, 1);
	assert_int_equal(yes[0], 1);
	assert_int_equal(nn, 2);
	assert_int_equal(no[0], 0);
	assert_int_equal(no[1], 0);
}

static void
test_iter_sort_stable_both_ways(void **state)
{
	(void)state;
	int64_t a[6] = { 21, 13, 11, 2, 33, 12 };
	assert_status(
	    asynq_sort(NULL, digit_key, NULL, a, 6, sizeof(a[0]), false),
	    ASYNQ_OK);
	/* Last digits 1,3,1,2,3,2: ties keep their order. */
	const int64_t up[6] = { 21, 11, 2, 12, 13, 33 };
	for (int i = 0; i < 6; i++)
		assert_int_equal(a[i], up[i]);
	int64_t b[6] = { 21, 13, 11, 2, 33, 12 };
	assert_status(
	    asynq_sort(NULL, digit_key, NULL, b, 6, sizeof(b[0]), true),
	    ASYNQ_OK);
	const int64_t down[6] = { 13, 33, 2, 12, 21, 11 };
	for (int i = 0; i < 6; i++)
		assert_int_equal(b[i], down[i]);
	/* asorted([2, 1]) */
	int64_t c[2] = { 2, 1 };
	assert_status(
	    asynq_sort(NULL, item_key, NULL, c, 2, sizeof(c[0]), false),
	    ASYNQ_OK);
	assert_int_equal(c[0], 1);
	assert_int_equal(c[1], 2);
	/* Three sorts, three flushes: all keys of one sort go out together. */
	assert_int_equal(asynq_debug_default()->flushes, 3);
}

static void
test_iter_min_max(void **state)
{
	(void)state;
	size_t i;
	int64_t a[5] = { 21, 13, 11, 23, 12 };
	assert_status(asynq_max(NULL, digit_key, NULL, a, 5, sizeof(a[0]), &i),
	    ASYNQ_OK);
	assert_int_equal(i, 1); /* first of the 3s */
	assert_status(asynq_min(NULL, digit_key, NULL, a, 5, sizeof(a[0]), &i),
	    ASYNQ_OK);
	assert_int_equal(i, 0); /* first of the 1s */
	/* amax(1, None, key=filter_fn) is 1; amin is None. */
	int64_t b[2] = { 1, 0 };
	assert_status(asynq_max(NULL, filter_fn, NULL, b, 2, sizeof(b[0]), &i),
	    ASYNQ_OK);
	assert_int_equal(b[i], 1);
	assert_status(asynq_min(NULL, filter_fn, NULL, b, 2, sizeof(b[0]), &i),
	    ASYNQ_OK);
	assert_int_equal(b[i], 0);
	assert_status(asynq_max(NULL, filter_fn, NULL, NULL, 0, 8, &i),
	    ASYNQ_INVALID_ARGUMENT);
	assert_status(asynq_min(NULL, filter_fn, NULL, NULL, 0, 8, &i),
	    ASYNQ_INVALID_ARGUMENT);
}

/* Keys of any type: each person's name is looked up (a batch item per
 * person, all in one flush) and the key is a string; sorted by
 * (last name, first name) with a comparison function. */
typedef struct person {
	int64_t id;
	const char *first, *last;
} person;

/* The "name service": the item resolves to the id, and the task turns it
 * into the person's "Last First" string (an owned pointer key). */
static asynq_status
name_task(asynq_task *t, void *arg)
{
	const person *p = arg;
	TCHECK_INT(tt_item(t, p->id), p->id);
	char *s = malloc(64);
	if (s == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "no memory");
	snprintf(s, 64, "%s %s", p->last, p->first);
	return asynq_return_ptr(t, s, free);
}

static asynq_future *
name_key(void *elem, size_t i, void *arg)
{
	(void)i;
	(void)arg;
	return asynq_spawn(name_task, elem);
}

static int by_name_calls;

static int
by_name(const asynq_future *a, const asynq_future *b, void *arg)
{
	(void)arg;
	by_name_calls++;
	return strcmp(asynq_future_ptr(a), asynq_future_ptr(b));
}

static void
test_iter_sort_by_string_keys(void **state)
{
	(void)state;
	person ps[5] = {
		{ 1, "Ada", "Lovelace" }, { 2, "Alan", "Turing" },
		{ 3, "Grace", "Hopper" }, { 4, "Edsger", "Dijkstra" },
		{ 5, "Ada", "Lovelace" }, /* equal key: stays after id 1 */
	};
	size_t flushes = asynq_debug_default()->flushes;
	by_name_calls = 0;
	assert_status(asynq_sort_by(NULL, name_key, by_name, NULL, ps, 5,
	                  sizeof(ps[0]), false),
	    ASYNQ_OK);
	const int64_t up[5] = { 4, 3, 1, 5, 2 };
	for (int i = 0; i < 5; i++)
		assert_int_equal(ps[i].id, up[i]);
	assert_true(by_name_calls > 0);
	/* All five lookups went out in one flush. */
	assert_int_equal(asynq_debug_default()->flushes, flushes + 1);
	assert_status(asynq_sort_by(NULL, name_key, by_name, NULL, ps, 5,
	                  sizeof(ps[0]), true),
	    ASYNQ_OK);
	const int64_t down[5] = { 2, 1, 5, 3, 4 };
	for (int i = 0; i < 5; i++)
		assert_int_equal(ps[i].id, down[i]);
	size_t i;
	assert_status(asynq_min_by(NULL, name_key, by_name, NULL, ps, 5,
	                  sizeof(ps[0]), &i),
	    ASYNQ_OK);
	assert_int_equal(ps[i].id, 4);
	assert_status(asynq_max_by(NULL, name_key, by_name, NULL, ps, 5,
	                  sizeof(ps[0]), &i),
	    ASYNQ_OK);
	assert_int_equal(ps[i].id, 2);
	/* Equal keys: the first of them. */
	person twins[2] = { { 7, "Ada", "Lovelace" },
		{ 8, "Ada", "Lovelace" } };
	assert_status(asynq_min_by(NULL, name_key, by_name, NULL, twins, 2,
	                  sizeof(twins[0]), &i),
	    ASYNQ_OK);
	assert_int_equal(i, 0);
	assert_status(asynq_max_by(NULL, name_key, by_name, NULL, NULL, 0,
	                  sizeof(ps[0]), &i),
	    ASYNQ_INVALID_ARGUMENT);
	assert_int_equal(tu_stats().tasks_live, 0);
}

/* A failing element: every future still computed, first failure reported,
 * the array left as it was. */
static asynq_status
fail_on_negative(asynq_task *t, void *arg)
{
	int64_t v = *(int64_t *)arg;
	TCHECK_INT(tt_item(t, v), v);
	if (v < 0)
		return asynq_fail(t, v == -1 ? ASYNQ_NOT_FOUND : ASYNQ_ABORTED,
		    "negative %lld", (long long)v);
	return asynq_return_i64(t, v);
}

static asynq_future *
failing_fn(void *elem, size_t i, void *arg)
{
	(void)i;
	(void)arg;
	return asynq_spawn(fail_on_negative, elem);
}

static asynq_status
sort_failing(asynq_task *t, void *arg)
{
	int64_t *a = arg;
	asynq_status st =
	    asynq_sort(t, failing_fn, NULL, a, 4, sizeof(a[0]), false);
	TCHECK_STATUS(st, ASYNQ_NOT_FOUND);
	TCHECK(asynq_task_error(t) != NULL &&
	    strstr(asynq_error_message(asynq_task_error(t)), "negative -1"));
	return st;
}

static asynq_status
sort_by_failing(asynq_task *t, void *arg)
{
	int64_t *a = arg;
	asynq_status st =
	    asynq_sort_by(t, failing_fn, NULL, NULL, a, 4, sizeof(a[0]), false);
	TCHECK_STATUS(st, ASYNQ_NOT_FOUND);
	return st;
}

static void
test_iter_sort_by_failure_leaves_array(void **state)
{
	(void)state;
	int64_t a[4] = { 3, -1, 2, -2 };
	asynq_future *f = asynq_spawn(sort_by_failing, a);
	assert_status(asynq_wait(f), ASYNQ_NOT_FOUND);
	asynq_future_rele(f);
	assert_int_equal(a[0], 3);
	assert_int_equal(a[1], -1);
	assert_int_equal(a[2], 2);
	assert_int_equal(a[3], -2);
	assert_int_equal(tu_stats().tasks_live, 0);
}

static void
test_iter_failure_reports_first_in_order(void **state)
{
	(void)state;
	int64_t a[4] = { 3, -1, 2, -2 };
	asynq_future *f = asynq_spawn(sort_failing, a);
	assert_status(asynq_wait(f), ASYNQ_NOT_FOUND);
	asynq_future_rele(f);
	ASSERT_TASK_CHECKS(6);
	assert_int_equal(a[0], 3);
	assert_int_equal(a[1], -1);
	assert_int_equal(a[2], 2);
	assert_int_equal(a[3], -2);
	assert_int_equal(tu_stats().tasks_live, 0);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TT_TEST(test_iter_map_100_tasks_is_one_flush),
		TT_TEST(test_iter_map_100_items_in_task_is_one_flush),
		TT_TEST(test_iter_map_empty),
		TT_TEST(test_iter_filter_and_filterfalse),
		TT_TEST(test_iter_sift),
		TT_TEST(test_iter_sort_stable_both_ways),
		TT_TEST(test_iter_min_max),
		TT_TEST(test_iter_failure_reports_first_in_order),
		TT_TEST(test_iter_sort_by_string_keys),
		TT_TEST(test_iter_sort_by_failure_leaves_array),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
