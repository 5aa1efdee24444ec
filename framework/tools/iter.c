/* SPDX-License-Identifier: MIT */
/*
 * Map, filter, sift, sort, min and max with async element functions (asynq's
 * amap, afilter, afilterfalse, asift, asorted, amin, amax). Every element's
 * future is made first and all are awaited in one asynq_await_all, so the
 * batch items they need join the same batches and go out in as few flushes
 * as the scheduler can manage: one per backend when nothing else interferes.
 * Keys are integers, or any value with a comparison function (the _by
 * forms, which compare the key futures themselves).
 */
#include <stdlib.h>
#include <string.h>

#include "asynq/tools.h"

#define SMALL 32

static asynq_status
await_n(asynq_task *t, asynq_future **fs, size_t n)
{
	if (n == 0)
		return ASYNQ_OK;
	return t != NULL ? asynq_await_all(t, fs, n) : asynq_wait_all(fs, n);
}

asynq_status
asynq_map(asynq_task *t, asynq_elem_fn fn, void *arg, void *base, size_t n,
    size_t size, asynq_future **out)
{
	unsigned char *p = base;
	for (size_t i = 0; i < n; i++)
		out[i] = fn(p + i * size, i, arg);
	return await_n(t, out, n);
}

/* Runs the element function over every element and collects the integer
 * values into keys[0..n). */
static asynq_status
map_keys(asynq_task *t, asynq_elem_fn fn, void *arg, void *base, size_t n,
    size_t size, int64_t *keys)
{
	asynq_future *small[SMALL], **fs = small;
	if (n > SMALL && (fs = malloc(n * sizeof(*fs))) == NULL)
		return t != NULL ? asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
		                       "asynq_map: out of memory")
		                 : ASYNQ_RESOURCE_EXHAUSTED;
	asynq_status st = asynq_map(t, fn, arg, base, n, size, fs);
	for (size_t i = 0; i < n; i++)
		keys[i] = asynq_future_i64(fs[i]);
	asynq_future_rele_n(fs, n);
	if (fs != small)
		free(fs);
	return st;
}

asynq_status
asynq_map_i64(asynq_task *t, asynq_elem_fn fn, void *arg, void *base, size_t n,
    size_t size, int64_t *out)
{
	return map_keys(t, fn, arg, base, n, size, out);
}

/* map_keys into a scratch array the caller frees with keys_free. */
static asynq_status
keys_of(asynq_task *t, asynq_elem_fn fn, void *arg, void *base, size_t n,
    size_t size, int64_t *small, int64_t **keys)
{
	*keys = small;
	if (n > SMALL && (*keys = malloc(n * sizeof(**keys))) == NULL)
		return t != NULL ? asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
		                       "out of memory for %zu keys", n)
		                 : ASYNQ_RESOURCE_EXHAUSTED;
	asynq_status st = map_keys(t, fn, arg, base, n, size, *keys);
	if (st != ASYNQ_OK && *keys != small) {
		free(*keys);
		*keys = NULL;
	}
	return st;
}

static void
keys_free(int64_t *keys, int64_t *small)
{
	if (keys != small)
		free(keys);
}

asynq_status
asynq_filter(asynq_task *t, asynq_elem_fn pred, void *arg, void *base, size_t n,
    size_t size, bool invert, size_t *n_kept)
{
	int64_t small[SMALL], *keep;
	asynq_status st = keys_of(t, pred, arg, base, n, size, small, &keep);
	if (st != ASYNQ_OK)
		return st;
	unsigned char *p = base;
	size_t j = 0;
	for (size_t i = 0; i < n; i++) {
		if ((keep[i] != 0) == invert)
			continue;
		if (j != i)
			memmove(p + j * size, p + i * size, size);
		j++;
	}
	*n_kept = j;
	keys_free(keep, small);
	return ASYNQ_OK;
}

asynq_status
asynq_sift(asynq_task *t, asynq_elem_fn pred, void *arg, const void *base,
    size_t n, size_t size, void *yes, size_t *n_yes, void *no, size_t *n_no)
{
	int64_t small[SMALL], *keep;
	asynq_status st = keys_of(t, pred, arg, (void *)(uintptr_t)base, n,
	    size, small, &keep);
	if (st != ASYNQ_OK)
		return st;
	const unsigned char *p = base;
	size_t y = 0, o = 0;
	for (size_t i = 0; i < n; i++) {
		if (keep[i] != 0)
			memcpy((unsigned char *)yes + y++ * size, p + i * size,
			    size);
		else
			memcpy((unsigned char *)no + o++ * size, p + i * size,
			    size);
	}
	*n_yes = y;
	*n_no = o;
	keys_free(keep, small);
	return ASYNQ_OK;
}

typedef struct sort_pair {
	int64_t key;
	size_t index;
} sort_pair;

/* Ties go by original index, so qsort's order is stable. */
static int
cmp_up(const void *a, const void *b)
{
	const sort_pair *x = a, *y = b;
	if (x->key != y->key)
		return x->key < y->key ? -1 : 1;
	return x->index < y->index ? -1 : x->index > y->index;
}

static int
cmp_down(const void *a, const void *b)
{
	const sort_pair *x = a, *y = b;
	if (x->key != y->key)
		return x->key > y->key ? -1 : 1;
	return x->index < y->index ? -1 : x->index > y->index;
}

asynq_status
asynq_sort(asynq_task *t, asynq_elem_fn key, void *arg, void *base, size_t n,
    size_t size, bool reverse)
{
	int64_t small[SMALL], *keys;
	asynq_status st = keys_of(t, key, arg, base, n, size, small, &keys);
	if (st != ASYNQ_OK)
		return st;
	if (n < 2) {
		keys_free(keys, small);
		return ASYNQ_OK;
	}
	sort_pair *pairs = malloc(n * sizeof(*pairs));
	unsigned char *tmp = malloc(n * size);
	if (pairs == NULL || tmp == NULL) {
		free(pairs);
		free(tmp);
		keys_free(keys, small);
		return t != NULL ? asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
		                       "asynq_sort: out of memory")
		                 : ASYNQ_RESOURCE_EXHAUSTED;
	}
	for (size_t i = 0; i < n; i++) {
		pairs[i].key = keys[i];
		pairs[i].index = i;
	}
	qsort(pairs, n, sizeof(*pairs), reverse ? cmp_down : cmp_up);
	unsigned char *p = base;
	for (size_t i = 0; i < n; i++)
		memcpy(tmp + i * size, p + pairs[i].index * size, size);
	memcpy(p, tmp, n * size);
	free(pairs);
	free(tmp);
	keys_free(keys, small);
	return ASYNQ_OK;
}

static asynq_status
extreme(asynq_task *t, asynq_elem_fn key, void *arg, void *base, size_t n,
    size_t size, size_t *index, bool want_max)
{
	if (n == 0)
		return t != NULL
		    ? asynq_fail(t, ASYNQ_INVALID_ARGUMENT, "%s of no elements",
		          want_max ? "asynq_max" : "asynq_min")
		    : ASYNQ_INVALID_ARGUMENT;
	int64_t small[SMALL], *keys;
	asynq_status st = keys_of(t, key, arg, base, n, size, small, &keys);
	if (st != ASYNQ_OK)
		return st;
	size_t best = 0;
	for (size_t i = 1; i < n; i++)
		if (want_max ? keys[i] > keys[best] : keys[i] < keys[best])
			best = i;
	*index = best;
	keys_free(keys, small);
	return ASYNQ_OK;
}

asynq_status
asynq_min(asynq_task *t, asynq_elem_fn key, void *arg, void *base, size_t n,
    size_t size, size_t *index)
{
	return extreme(t, key, arg, base, n, size, index, false);
}

asynq_status
asynq_max(asynq_task *t, asynq_elem_fn key, void *arg, void *base, size_t n,
    size_t size, size_t *index)
{
	return extreme(t, key, arg, base, n, size, index, true);
}

/* ---- Keys of any type, compared by a function ------------------------- */

typedef struct by_ctx {
	asynq_key_cmp cmp;
	void *arg;
	bool reverse;
} by_ctx;

/* Order of elements i and j by their key futures; ties by index (stable). */
static int
by_order(const by_ctx *c, asynq_future **keys, size_t i, size_t j)
{
	int r = c->cmp(keys[i], keys[j], c->arg);
	if (c->reverse)
		r = r < 0 ? 1 : r > 0 ? -1 : 0;
	if (r != 0)
		return r;
	return i < j ? -1 : i > j;
}

/* Stable merge sort of idx[0..n) (scratch: tmp[0..n)); no qsort_r needed,
 * and the order of equal keys is kept without relying on the library. */
static void
by_sort(const by_ctx *c, asynq_future **keys, size_t *idx, size_t *tmp,
    size_t n)
{
	for (size_t w = 1; w < n; w *= 2) {
		for (size_t lo = 0; lo < n; lo += 2 * w) {
			size_t mid = lo + w < n ? lo + w : n;
			size_t hi = lo + 2 * w < n ? lo + 2 * w : n;
			size_t a = lo, b = mid, k = lo;
			while (a < mid && b < hi)
				tmp[k++] =
				    by_order(c, keys, idx[a], idx[b]) <= 0
				    ? idx[a++]
				    : idx[b++];
			while (a < mid)
				tmp[k++] = idx[a++];
			while (b < hi)
				tmp[k++] = idx[b++];
		}
		memcpy(idx, tmp, n * sizeof(*idx));
	}
}

/* The key futures of every element, awaited together; the caller releases
 * them (keys_by_free). */
static asynq_status
keys_by(asynq_task *t, asynq_elem_fn key, void *arg, void *base, size_t n,
    size_t size, asynq_future **small, asynq_future ***keys, const char *what)
{
	*keys = small;
	if (n > SMALL && (*keys = malloc(n * sizeof(**keys))) == NULL)
		return t != NULL
		    ? asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
		          "%s: out of memory for %zu keys", what, n)
		    : ASYNQ_RESOURCE_EXHAUSTED;
	asynq_status st = asynq_map(t, key, arg, base, n, size, *keys);
	for (size_t i = 0; st == ASYNQ_OK && i < n; i++)
		if ((*keys)[i] == NULL)
			st = t != NULL
			    ? asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
			          "%s: out of memory for a key", what)
			    : ASYNQ_RESOURCE_EXHAUSTED;
	return st;
}

static void
keys_by_free(asynq_future **keys, size_t n, asynq_future **small)
{
	asynq_future_rele_n(keys, n);
	if (keys != small)
		free(keys);
}

asynq_status
asynq_sort_by(asynq_task *t, asynq_elem_fn key, asynq_key_cmp cmp, void *arg,
    void *base, size_t n, size_t size, bool reverse)
{
	asynq_future *small[SMALL], **keys;
	asynq_status st =
	    keys_by(t, key, arg, base, n, size, small, &keys, "asynq_sort_by");
	if (st != ASYNQ_OK || n < 2) {
		keys_by_free(keys, n, small);
		return st;
	}
	size_t *idx = malloc(2 * n * sizeof(*idx));
	unsigned char *tmp = malloc(n * size);
	if (idx == NULL || tmp == NULL) {
		free(idx);
		free(tmp);
		keys_by_free(keys, n, small);
		return t != NULL ? asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
		                       "asynq_sort_by: out of memory")
		                 : ASYNQ_RESOURCE_EXHAUSTED;
	}
	for (size_t i = 0; i < n; i++)
		idx[i] = i;
	by_ctx c = { cmp, arg, reverse };
	by_sort(&c, keys, idx, idx + n, n);
	unsigned char *p = base;
	for (size_t i = 0; i < n; i++)
		memcpy(tmp + i * size, p + idx[i] * size, size);
	memcpy(p, tmp, n * size);
	free(idx);
	free(tmp);
	keys_by_free(keys, n, small);
	return ASYNQ_OK;
}

static asynq_status
extreme_by(asynq_task *t, asynq_elem_fn key, asynq_key_cmp cmp, void *arg,
    void *base, size_t n, size_t size, size_t *index, bool want_max)
{
	const char *what = want_max ? "asynq_max_by" : "asynq_min_by";
	if (n == 0)
		return t != NULL ? asynq_fail(t, ASYNQ_INVALID_ARGUMENT,
		                       "%s of no elements", what)
		                 : ASYNQ_INVALID_ARGUMENT;
	asynq_future *small[SMALL], **keys;
	asynq_status st =
	    keys_by(t, key, arg, base, n, size, small, &keys, what);
	if (st == ASYNQ_OK) {
		size_t best = 0;
		for (size_t i = 1; i < n; i++) {
			int r = cmp(keys[i], keys[best], arg);
			if (want_max ? r > 0 : r < 0)
				best = i;
		}
		*index = best;
	}
	keys_by_free(keys, n, small);
	return st;
}

asynq_status
asynq_min_by(asynq_task *t, asynq_elem_fn key, asynq_key_cmp cmp, void *arg,
    void *base, size_t n, size_t size, size_t *index)
{
	return extreme_by(t, key, cmp, arg, base, n, size, index, false);
}

asynq_status
asynq_max_by(asynq_task *t, asynq_elem_fn key, asynq_key_cmp cmp, void *arg,
    void *base, size_t n, size_t size, size_t *index)
{
	return extreme_by(t, key, cmp, arg, base, n, size, index, true);
}
