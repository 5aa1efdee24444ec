/* SPDX-License-Identifier: MIT */
/*
 * Tests of asynchronous flushes: a flush that defers and is completed from
 * another thread. Covers the debug backend's async mode, a backend of our
 * own whose worker thread sleeps, sets the items and calls
 * asynq_batch_complete, several batches in flight at once, items left unset
 * or failed by the completion, other tasks running while a reply is in
 * flight, and that a scheduler waiting for a reply sleeps instead of
 * spinning.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "testutil.h"

/* ---- A backend completed by a worker thread ------------------------- */

typedef struct dl_backend {
	asynq_backend base;  /* first: the framework's part */
	int delay_ms;        /* how long the worker sleeps */
	bool gated;          /* the worker also waits for the gate */
	size_t set_count;    /* items the worker sets; the rest stay unset */
	asynq_status result; /* what the worker completes with */
	int flushes;         /* scheduler thread only */
} dl_backend;

/* A batch remembers its items and keys, copied on the scheduler thread in
 * flush, so the worker calls nothing but the item setters and
 * asynq_batch_complete. */
typedef struct dl_batch {
	asynq_batch base; /* first: the framework's part */
	dl_backend *be;
	size_t n;
	asynq_future **items;
	int64_t *keys;
} dl_batch;

static atomic_int inflight, max_inflight, worker_sets_ok;
static pthread_t workers[32]; /* scheduler thread only */
static int n_workers;

static asynq_batch *
dl_batch_alloc(asynq_backend *be)
{
	dl_batch *b = calloc(1, sizeof(*b));

	if (b == NULL)
		return NULL;
	b->be = (dl_backend *)be;
	return &b->base;
}

static void
dl_batch_free(asynq_batch *b)
{
	dl_batch *db = (dl_batch *)b;

	free(db->items);
	free(db->keys);
	free(db);
}

static void
sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000L };

	while (nanosleep(&ts, &ts) != 0)
		;
}

/* The gate: workers of a gated backend wait until a task or the flush opens
 * it, so a test controls when replies arrive instead of racing a timer. A
 * worker gives up waiting after five seconds, so a scheduler that never lets
 * the gate open fails the test instead of hanging it. */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static bool gate_open;
static atomic_int gate_timeouts;

static void
gate_set(bool open)
{
	pthread_mutex_lock(&gate_mu);
	gate_open = open;
	pthread_cond_broadcast(&gate_cv);
	pthread_mutex_unlock(&gate_mu);
}

static void
gate_wait(void)
{
	struct timespec deadline;
	int rv = 0;

	clock_gettime(CLOCK_REALTIME, &deadline);
	deadline.tv_sec += 5;
	pthread_mutex_lock(&gate_mu);
	while (!gate_open && rv == 0)
		rv = pthread_cond_timedwait(&gate_cv, &gate_mu, &deadline);
	if (!gate_open)
		atomic_fetch_add(&gate_timeouts, 1);
	pthread_mutex_unlock(&gate_mu);
}

/* Opened by the flush that brings this many batches in flight; 0 never. */
static int gate_at_inflight;

static void *
dl_worker(void *arg)
{
	dl_batch *db = arg;
	dl_backend *be = db->be;
	asynq_status result = be->result;

	sleep_ms(be->delay_ms);
	if (be->gated)
		gate_wait();
	for (size_t i = 0; i < db->n && i < be->set_count; i++)
		if (asynq_item_set_i64(db->items[i], db->keys[i] * 3) ==
		    ASYNQ_OK)
			atomic_fetch_add(&worker_sets_ok, 1);
	atomic_fetch_sub(&inflight, 1);
	/* db may be freed as soon as this returns. */
	asynq_batch_complete(&db->base, result);
	return NULL;
}

static asynq_status
dl_flush(asynq_batch *b)
{
	dl_batch *db = (dl_batch *)b;
	int now, max;

	db->n = asynq_batch_size(b);
	db->items = calloc(db->n, sizeof(*db->items));
	db->keys = calloc(db->n, sizeof(*db->keys));
	if (db->items == NULL || db->keys == NULL || n_workers == 32)
		return ASYNQ_RESOURCE_EXHAUSTED;
	for (size_t i = 0; i < db->n; i++) {
		db->items[i] = asynq_batch_item(b, i);
		db->keys[i] = asynq_item_key(db->items[i]);
	}
	db->be->flushes++;
	now = atomic_fetch_add(&inflight, 1) + 1;
	if (gate_at_inflight > 0 && now >= gate_at_inflight)
		gate_set(true);
	max = atomic_load(&max_inflight);
	while (now > max &&
	    !atomic_compare_exchange_weak(&max_inflight, &max, now))
		;
	asynq_batch_defer(b);
	if (pthread_create(&workers[n_workers], NULL, dl_worker, db) != 0) {
		atomic_fetch_sub(&inflight, 1);
		asynq_batch_complete(b, ASYNQ_UNAVAILABLE);
		return ASYNQ_OK;
	}
	n_workers++;
	return ASYNQ_OK;
}

static int cancel_calls; /* scheduler thread only */

static void
dl_cancel(asynq_batch *b)
{
	(void)b;
	cancel_calls++;
}

static const asynq_backend_ops dl_ops = {
	.batch_alloc = dl_batch_alloc,
	.flush = dl_flush,
	.cancel = dl_cancel,
	.batch_free = dl_batch_free,
};

/* A deferred flush completed at once, on the scheduler thread itself
 * (asynq_batch_complete may be called from any thread): what a fast reply
 * looks like when it arrives before the scheduler goes back to its loop. */
static asynq_status
instant_flush(asynq_batch *b)
{
	for (size_t i = 0; i < asynq_batch_size(b); i++) {
		asynq_future *item = asynq_batch_item(b, i);

		asynq_item_set_i64(item, asynq_item_key(item) * 3);
	}
	asynq_batch_defer(b);
	asynq_batch_complete(b, ASYNQ_OK);
	return ASYNQ_OK;
}

static const asynq_backend_ops instant_ops = {
	.batch_alloc = dl_batch_alloc,
	.flush = instant_flush,
	.batch_free = dl_batch_free,
};

/* The file's backends. */
static dl_backend dls[3];
static bool dls_ready[3];
static asynq_debug_backend dbgs[3];
static bool dbgs_ready[3];
static asynq_debug_backend sync_dbg;
static bool sync_dbg_ready;

static void
dl_init(int i, int delay_ms)
{
	memset(&dls[i], 0, sizeof(dls[i]));
	asynq_backend_init(&dls[i].base, &dl_ops, "delayed");
	dls[i].delay_ms = delay_ms;
	dls[i].set_count = SIZE_MAX;
	dls[i].result = ASYNQ_OK;
	dls_ready[i] = true;
}

static void
instant_init(int i)
{
	memset(&dls[i], 0, sizeof(dls[i]));
	asynq_backend_init(&dls[i].base, &instant_ops, "instant");
	dls_ready[i] = true;
}

static void
dbg_init(int i)
{
	asynq_debug_backend_init(&dbgs[i], "async-debug", true);
	dbgs_ready[i] = true;
}

static void
join_workers(void)
{
	for (int i = 0; i < n_workers; i++)
		pthread_join(workers[i], NULL);
	n_workers = 0;
}

static int
async_setup(void **state)
{
	atomic_store(&inflight, 0);
	atomic_store(&max_inflight, 0);
	atomic_store(&worker_sets_ok, 0);
	n_workers = 0;
	cancel_calls = 0;
	gate_set(false);
	gate_at_inflight = 0;
	atomic_store(&gate_timeouts, 0);
	return tu_setup(state);
}

static int
async_teardown(void **state)
{
	gate_set(true);
	join_workers();
	for (int i = 0; i < 3; i++) {
		if (dls_ready[i])
			asynq_backend_fini(&dls[i].base);
		if (dbgs_ready[i])
			asynq_debug_backend_fini(&dbgs[i]);
		dls_ready[i] = dbgs_ready[i] = false;
	}
	if (sync_dbg_ready)
		asynq_debug_backend_fini(&sync_dbg);
	sync_dbg_ready = false;
	return tu_teardown(state);
}

#define ASYNC_TEST(fn)                                                         \
	cmocka_unit_test_setup_teardown(fn, async_setup, async_teardown)

static int64_t
elapsed_ns(const struct timespec *a, const struct timespec *b)
{
	return (int64_t)(b->tv_sec - a->tv_sec) * 1000000000 +
	    (b->tv_nsec - a->tv_nsec);
}

/* ---- Task bodies ---------------------------------------------------- */

/* Three dependent lookups, then eight at once, on dbgs[0]. */
static asynq_status
debug_async_task(asynq_task *t, void *arg)
{
	asynq_future *fs[8];
	int64_t sum = 0;
	asynq_status st;

	(void)arg;
	for (int i = 0; i < 3; i++) {
		asynq_future *item = asynq_debug_item(&dbgs[0], i + 1);

		st = asynq_await(t, item);
		TCHECK_STATUS(st, ASYNQ_OK);
		TCHECK_INT(asynq_future_i64(item), i + 1);
		sum += asynq_future_i64(item);
		asynq_future_rele(item);
		ASYNQ_TRY(st);
	}
	for (int i = 0; i < 8; i++)
		fs[i] = asynq_debug_item(&dbgs[0], 100 + i);
	st = asynq_await_all(t, fs, 8);
	TCHECK_STATUS(st, ASYNQ_OK);
	for (int i = 0; i < 8; i++) {
		TCHECK_INT(asynq_future_i64(fs[i]), 100 + i);
		sum += asynq_future_i64(fs[i]);
	}
	asynq_future_rele_n(fs, 8);
	ASYNQ_TRY(st);
	return asynq_return_i64(t, sum);
}

/* Items of every given backend at once: backend i gets i + 2 items. */
static asynq_status
many_backends_task(asynq_task *t, void *arg)
{
	bool delayed = arg != NULL;
	asynq_future *fs[9];
	size_t n = 0;
	asynq_status st;

	for (int b = 0; b < 3; b++)
		for (int i = 0; i < b + 2; i++) {
			int64_t key = 10 * b + i;

			fs[n++] = delayed
			    ? asynq_batch_add(&dls[b].base, key, NULL)
			    : asynq_debug_item(&dbgs[b], key);
		}
	st = asynq_await_all(t, fs, n);
	TCHECK_STATUS(st, ASYNQ_OK);
	n = 0;
	for (int b = 0; b < 3; b++)
		for (int i = 0; i < b + 2; i++) {
			int64_t key = 10 * b + i;

			TCHECK_INT(asynq_future_i64(fs[n]),
			    delayed ? 3 * key : key);
			n++;
		}
	asynq_future_rele_n(fs, n);
	return st;
}

/* Dependent lookups on dls[0]: each key is the previous result. */
static asynq_status
delayed_chain_task(asynq_task *t, void *arg)
{
	int64_t v = 1;

	(void)arg;
	for (int i = 0; i < 3; i++) {
		asynq_future *item = asynq_batch_add(&dls[0].base, v, NULL);
		asynq_status st = asynq_await(t, item);

		v = asynq_future_i64(item);
		asynq_future_rele(item);
		ASYNQ_TRY(st);
	}
	return asynq_return_i64(t, v);
}

/* Runs while a slow reply is in flight. */
static asynq_status
slow_lookup_task(asynq_task *t, void *arg)
{
	asynq_future *item = asynq_batch_add(&dls[0].base, 5, NULL);
	asynq_status st = asynq_await(t, item);

	(void)arg;
	tu_log("slow ");
	TCHECK_INT(asynq_future_i64(item), 15);
	asynq_future_rele(item);
	return st;
}

static asynq_status
fast_chain_task(asynq_task *t, void *arg)
{
	(void)arg;
	for (int i = 0; i < 5; i++) {
		asynq_future *item = asynq_debug_item(&sync_dbg, i);
		asynq_status st = asynq_await(t, item);

		asynq_future_rele(item);
		ASYNQ_TRY(st);
	}
	tu_log("fast ");
	/* Only now may the slow reply arrive. */
	gate_set(true);
	return ASYNQ_OK;
}

/* ---- Tests ---------------------------------------------------------- */

static void
test_async_flush_debug_backend_values_arrive(void **state)
{
	asynq_future *f;
	asynq_sched_stats st;

	(void)state;
	dbg_init(0);
	f = asynq_spawn(debug_async_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(15);
	assert_int_equal(asynq_future_i64(f), 1 + 2 + 3 + 8 * 100 + 28);
	assert_int_equal(dbgs[0].flushes, 4);
	assert_int_equal(dbgs[0].items_flushed, 11);
	assert_int_equal(dbgs[0].last_size, 8);
	st = tu_stats();
	assert_int_equal(st.flushes, 4);
	assert_int_equal(st.async_flushes, 4);
	asynq_future_rele(f);
}

static void
test_async_flush_several_debug_batches_in_flight(void **state)
{
	asynq_future *f;

	(void)state;
	for (int i = 0; i < 3; i++)
		dbg_init(i);
	f = asynq_spawn(many_backends_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(10);
	for (int i = 0; i < 3; i++) {
		assert_int_equal(dbgs[i].flushes, 1);
		assert_int_equal(dbgs[i].last_size, (size_t)i + 2);
	}
	assert_int_equal(tu_stats().async_flushes, 3);
	asynq_future_rele(f);
}

static void
test_async_flush_starts_every_pending_batch(void **state)
{
	asynq_future *f;

	(void)state;
	for (int i = 0; i < 3; i++) {
		dl_init(i, 0);
		dls[i].gated = true;
	}
	gate_at_inflight = 3;
	f = asynq_spawn(many_backends_task, (void *)1);
	assert_status(asynq_wait(f), ASYNQ_OK);
	join_workers();
	ASSERT_TASK_CHECKS(10);
	/* DESIGN.md §2: with asynchronous flushes the scheduler starts every
	 * pending batch before it sleeps. The replies are held until the third
	 * flush starts. */
	assert_int_equal(atomic_load(&max_inflight), 3);
	assert_int_equal(atomic_load(&gate_timeouts), 0);
	for (int i = 0; i < 3; i++)
		assert_int_equal(dls[i].flushes, 1);
	assert_int_equal(atomic_load(&worker_sets_ok), 9);
	asynq_future_rele(f);
}

static void
test_async_flush_sleeps_without_busy_wait(void **state)
{
	struct timespec cpu0, cpu1, wall0, wall1;
	asynq_future *item;
	int64_t cpu, wall;

	(void)state;
	dl_init(0, 50);
	item = asynq_batch_add(&dls[0].base, 7, NULL);
	clock_gettime(CLOCK_MONOTONIC, &wall0);
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu0);
	assert_status(asynq_wait(item), ASYNQ_OK);
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &cpu1);
	clock_gettime(CLOCK_MONOTONIC, &wall1);
	join_workers();
	cpu = elapsed_ns(&cpu0, &cpu1);
	wall = elapsed_ns(&wall0, &wall1);
	assert_int_equal(asynq_future_i64(item), 21);
	assert_true(wall >= 50 * 1000000);
	if (cpu >= wall / 4)
		fail_msg("busy wait: %lld ns of CPU in %lld ns waiting",
		    (long long)cpu, (long long)wall);
	assert_true(tu_stats().sleeps > 0);
	assert_int_equal(tu_stats().async_flushes, 1);
	asynq_future_rele(item);
}

static void
test_async_flush_worker_sets_values_from_its_thread(void **state)
{
	asynq_future *f;

	(void)state;
	dl_init(0, 2);
	f = asynq_spawn(delayed_chain_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	join_workers();
	/* 1 -> 3 -> 9 -> 27, one flush and one worker thread each. */
	assert_int_equal(asynq_future_i64(f), 27);
	assert_int_equal(dls[0].flushes, 3);
	assert_int_equal(atomic_load(&worker_sets_ok), 3);
	assert_int_equal(tu_stats().async_flushes, 3);
	asynq_future_rele(f);
}

static void
test_async_flush_unset_items_fail_internal(void **state)
{
	asynq_future *fs[4];

	(void)state;
	dl_init(0, 1);
	dls[0].set_count = 2;
	for (int i = 0; i < 4; i++)
		fs[i] = asynq_batch_add(&dls[0].base, i + 1, NULL);
	assert_status(asynq_wait_all(fs, 4), ASYNQ_INTERNAL);
	join_workers();
	assert_int_equal(asynq_future_i64(fs[0]), 3);
	assert_int_equal(asynq_future_i64(fs[1]), 6);
	assert_status(asynq_future_status(fs[2]), ASYNQ_INTERNAL);
	assert_status(asynq_future_status(fs[3]), ASYNQ_INTERNAL);
	asynq_future_rele_n(fs, 4);
}

static void
test_async_flush_complete_with_error_fails_unset_items(void **state)
{
	asynq_future *fs[3], *item;

	(void)state;
	dl_init(0, 1);
	dls[0].set_count = 1;
	dls[0].result = ASYNQ_DEADLINE_EXCEEDED;
	for (int i = 0; i < 3; i++)
		fs[i] = asynq_batch_add(&dls[0].base, i + 1, NULL);
	assert_status(asynq_wait_all(fs, 3), ASYNQ_DEADLINE_EXCEEDED);
	join_workers();
	assert_status(asynq_future_status(fs[0]), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(fs[0]), 3);
	assert_status(asynq_future_status(fs[1]), ASYNQ_DEADLINE_EXCEEDED);
	assert_status(asynq_future_status(fs[2]), ASYNQ_DEADLINE_EXCEEDED);
	asynq_future_rele_n(fs, 3);

	/* The scheduler keeps working. */
	dls[0].set_count = SIZE_MAX;
	dls[0].result = ASYNQ_OK;
	item = asynq_batch_add(&dls[0].base, 4, NULL);
	assert_status(asynq_wait(item), ASYNQ_OK);
	join_workers();
	assert_int_equal(asynq_future_i64(item), 12);
	asynq_future_rele(item);
}

static void
test_async_flush_other_tasks_run_while_in_flight(void **state)
{
	asynq_future *fs[2];

	(void)state;
	dl_init(0, 0);
	dls[0].gated = true;
	asynq_debug_backend_init(&sync_dbg, "sync-debug", false);
	sync_dbg_ready = true;
	fs[0] = asynq_spawn(slow_lookup_task, NULL);
	fs[1] = asynq_spawn(fast_chain_task, NULL);
	assert_status(asynq_wait_all(fs, 2), ASYNQ_OK);
	join_workers();
	ASSERT_TASK_CHECKS(1);
	assert_int_equal(sync_dbg.flushes, 5);
	assert_int_equal(dls[0].flushes, 1);
	/* Five round trips of the fast chain ran while the slow reply was
	 * held back: the scheduler did not wait for it first. */
	assert_string_equal(tu_log_str(), "fast slow ");
	assert_int_equal(atomic_load(&gate_timeouts), 0);
	asynq_future_rele_n(fs, 2);
}

static asynq_status
instant_task(asynq_task *t, void *arg)
{
	asynq_future *item = asynq_batch_add(&dls[0].base, 4, NULL);
	asynq_status st = asynq_await(t, item);

	(void)arg;
	TCHECK_STATUS(st, ASYNQ_OK);
	TCHECK_INT(asynq_future_i64(item), 12);
	asynq_future_rele(item);
	return st;
}

static void
test_async_flush_completed_before_scheduler_sleeps(void **state)
{
	asynq_future *item, *f;

	(void)state;
	instant_init(0);
	/* Awaited by a task. */
	f = asynq_spawn(instant_task, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	ASSERT_TASK_CHECKS(2);
	asynq_future_rele(f);
	/* Waited on directly, from outside any task. */
	item = asynq_batch_add(&dls[0].base, 5, NULL);
	assert_status(asynq_wait(item), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(item), 15);
	assert_int_equal(tu_stats().async_flushes, 2);
	asynq_future_rele(item);
}

/* Cancelling a batch while its flush is in flight; with follow, a third
 * call repeats key 1 (dedup_keys) and must fail once with the others. */
static asynq_future *inflight_items[3];
static bool follow;

static asynq_status
cancelled_lookup_task(asynq_task *t, void *arg)
{
	asynq_status st;

	(void)arg;
	inflight_items[0] = asynq_batch_add(&dls[0].base, 1, NULL);
	inflight_items[1] = asynq_batch_add(&dls[0].base, 2, NULL);
	size_t n = 2;
	if (follow)
		inflight_items[n++] = asynq_batch_add(&dls[0].base, 1, NULL);
	st = asynq_await_all(t, inflight_items, n);
	TCHECK_STATUS(st, ASYNQ_CANCELLED);
	for (size_t i = 0; i < n; i++)
		TCHECK_STATUS(asynq_future_status(inflight_items[i]),
		    ASYNQ_CANCELLED);
	/* Dropped while the worker still has the batch. */
	asynq_future_rele_n(inflight_items, n);
	return st;
}

static asynq_status
canceller_task(asynq_task *t, void *arg)
{
	asynq_future *item = asynq_debug_item(&sync_dbg, 1);
	asynq_status st = asynq_await(t, item);
	asynq_batch *b;

	(void)arg;
	asynq_future_rele(item);
	/* The two-item batch flushed first (priority: more items) and is in
	 * flight: its worker waits for the gate. */
	TCHECK_STATUS(st, ASYNQ_OK);
	TCHECK(!asynq_future_done(inflight_items[0]));
	TCHECK_INT(dls[0].flushes, 1);
	b = asynq_item_batch(inflight_items[0]);
	asynq_batch_cancel(b);
	TCHECK_INT(cancel_calls, 1);
	TCHECK(asynq_future_done(inflight_items[0]));
	TCHECK(asynq_future_done(inflight_items[1]));
	if (follow)
		TCHECK(asynq_future_done(inflight_items[2]));
	/* Let the worker reply now: too late for the cancelled items. */
	gate_set(true);
	return ASYNQ_OK;
}

static void
cancel_in_flight(bool with_follower)
{
	asynq_future *fs[2], *after;
	asynq_status st;

	dl_init(0, 0);
	follow = with_follower;
	dls[0].base.dedup_keys = with_follower;
	dls[0].gated = true;
	asynq_debug_backend_init(&sync_dbg, "sync-debug", false);
	sync_dbg_ready = true;
	fs[0] = asynq_spawn(cancelled_lookup_task, NULL);
	fs[1] = asynq_spawn(canceller_task, NULL);
	st = asynq_wait_all(fs, 2);
	ASSERT_TASK_CHECKS(9);
	assert_status(st, ASYNQ_CANCELLED);
	assert_status(asynq_future_status(fs[1]), ASYNQ_OK);
	assert_int_equal(tu_stats().batches_cancelled, 1);
	asynq_future_rele_n(fs, 2);
	/* The worker still completes the cancelled batch, exactly once; the
	 * scheduler takes that completion and keeps working. */
	join_workers();
	int worker_sets_ok_first = (int)atomic_load(&worker_sets_ok);
	after = asynq_batch_add(&dls[0].base, 3, NULL);
	assert_status(asynq_wait(after), ASYNQ_OK);
	join_workers();
	assert_int_equal(asynq_future_i64(after), 9);
	/* Every set came too late; the repeated key was folded. */
	assert_int_equal(worker_sets_ok_first, 0);
	assert_int_equal(tu_stats().items_followed, with_follower ? 1 : 0);
	asynq_future_rele(after);
}

static void
test_async_flush_cancel_in_flight_batch(void **state)
{
	(void)state;
	cancel_in_flight(false);
}

static void
test_async_flush_cancel_in_flight_fails_followers_once(void **state)
{
	(void)state;
	cancel_in_flight(true);
}

/* Followers of a deferred flush get their items' results when the
 * completion arrives from the worker thread. */
static void
test_async_flush_followers_get_results_from_the_worker(void **state)
{
	static const int64_t keys[] = { 4, 4, 2, 4, 2 };
	asynq_future *fs[5];

	(void)state;
	dl_init(0, 1);
	dls[0].base.dedup_keys = true;
	for (int i = 0; i < 5; i++)
		fs[i] = asynq_batch_add(&dls[0].base, keys[i], NULL);
	assert_status(asynq_wait_all(fs, 5), ASYNQ_OK);
	join_workers();
	assert_int_equal(dls[0].flushes, 1);
	assert_int_equal(atomic_load(&worker_sets_ok), 2);
	for (int i = 0; i < 5; i++)
		assert_int_equal(asynq_future_i64(fs[i]), 3 * keys[i]);
	asynq_future_rele_n(fs, 5);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		ASYNC_TEST(test_async_flush_debug_backend_values_arrive),
		ASYNC_TEST(test_async_flush_several_debug_batches_in_flight),
		ASYNC_TEST(test_async_flush_starts_every_pending_batch),
		ASYNC_TEST(test_async_flush_sleeps_without_busy_wait),
		ASYNC_TEST(test_async_flush_worker_sets_values_from_its_thread),
		ASYNC_TEST(test_async_flush_unset_items_fail_internal),
		ASYNC_TEST(
		    test_async_flush_complete_with_error_fails_unset_items),
		ASYNC_TEST(test_async_flush_other_tasks_run_while_in_flight),
		ASYNC_TEST(test_async_flush_completed_before_scheduler_sleeps),
		ASYNC_TEST(test_async_flush_cancel_in_flight_batch),
		ASYNC_TEST(
		    test_async_flush_cancel_in_flight_fails_followers_once),
		ASYNC_TEST(
		    test_async_flush_followers_get_results_from_the_worker),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
