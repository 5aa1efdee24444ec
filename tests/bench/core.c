/* SPDX-License-Identifier: MIT */
/*
 * Core benchmark: prints, in one run, the figures that DESIGN.md §9 budgets
 * for the core (context switch, empty task, await chain, local batched call,
 * resident memory per suspended task and its return after a burst on a
 * runtime worker), each next to its budget with PASS or OVER, and, when Node
 * is present, the same three task shapes run by the DataLoader peer
 * (peers/dataloader) in the same run, as ratios against the budget of
 * at most 0.5x DataLoader's time. Run with `bazel run -c opt
 * //tests/bench:core`; `core 2 3` runs only sections 2 and 3, and `core -n`
 * (or ASYNQ_BENCH_NO_PEER=1) skips the peer.
 *
 * Design notes:
 * - A report, not a test: a missed budget still exits 0. Every shape checks
 *   its results (values, flush counts, tasks left alive) and any wrong result
 *   makes the program exit 1.
 * - The machines are noisy, so each figure is the best (and where it helps
 *   the median) of several rounds, and the context switch is compared with
 *   swapcontext inside the same run.
 * - Each shape runs on a fresh scheduler (asynq_thread_init/_fini around it),
 *   so the scheduler counters printed belong to that shape alone.
 * - Big per-shape arrays live on the heap: a 64 KiB coroutine stack cannot
 *   hold 10,000 future pointers.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include "asynq/asynq.h"
#include "framework/core/coro.h"

/* ---- Reporting -------------------------------------------------------- */

static int failures;
static int overs;

static uint64_t
now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fail(const char *what, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
fail(const char *what, const char *fmt, ...)
{
	va_list ap;
	fprintf(stdout, "  !! CHECK FAILED (%s): ", what);
	va_start(ap, fmt);
	vfprintf(stdout, fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
	failures++;
}

static void
check_status(const char *what, asynq_status st)
{
	if (st != ASYNQ_OK)
		fail(what, "status %s", asynq_status_name(st));
}

/* row prints one figure. cmp is "<=" or ">=" with a budget, or NULL for a
 * figure shown for context only. */
static void
row(const char *what, double v, const char *unit, const char *cmp,
    double budget)
{
	char fig[64], bud[64];
	snprintf(fig, sizeof(fig), "%.1f %s", v, unit);
	if (cmp == NULL) {
		printf("  %-52s %14s  %-14s %s\n", what, fig, "", "");
		return;
	}
	snprintf(bud, sizeof(bud), "%s %g %s", cmp, budget, unit);
	bool ok = cmp[0] == '<' ? v <= budget : v >= budget;
	if (!ok)
		overs++;
	printf("  %-52s %14s  %-14s %s\n", what, fig, bud,
	    ok ? "PASS" : "OVER");
}

static void
section(const char *title)
{
	printf("\n%s\n", title);
}

static int
cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double
best_of(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return v[0];
}

/* Call after best_of (the array is sorted). */
static double
median_of(const double *v, size_t n)
{
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static size_t
rss_bytes(void)
{
	unsigned long size = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	if (f == NULL)
		return 0;
	if (fscanf(f, "%lu %lu", &size, &resident) != 2)
		resident = 0;
	fclose(f);
	return (size_t)resident * (size_t)sysconf(_SC_PAGESIZE);
}

/* fresh_sched makes a new scheduler for the calling thread with cfg
 * (NULL: defaults); ASYNQ_BENCH_STACK_KIB sets its stack size when cfg
 * leaves it 0, to compare stack sizes. */
static void
fresh_sched(const asynq_sched_cfg *cfg)
{
	asynq_sched_cfg c = cfg != NULL ? *cfg : (asynq_sched_cfg){ 0 };
	const char *sk = getenv("ASYNQ_BENCH_STACK_KIB");
	if (c.stack_size == 0 && sk != NULL)
		c.stack_size = (size_t)strtoull(sk, NULL, 10) * 1024;
	asynq_thread_fini();
	check_status("asynq_thread_init", asynq_thread_init(&c));
}

/* end_sched checks that a shape left no task alive, then frees the
 * scheduler. */
static void
end_sched(const char *what)
{
	asynq_sched_stats st;
	asynq_sched_stats_get(&st);
	if (st.tasks_live != 0)
		fail(what, "%" PRIu64 " tasks still alive after release",
		    st.tasks_live);
	asynq_thread_fini();
}

/* The asynq figures compared with the peer, filled in by their sections
 * (0: not measured in this run). */
static double our_fanout_ns, our_chain_ns, our_lookup_ns;

/* ---- 1. Context switch ------------------------------------------------ */

#define STACK_BYTES (64 * 1024)
#define SWITCH_ROUNDS 5
#define SWITCH_TRIPS 5000000 /* round trips per round: 10M switches */
#define UC_ROUNDS 3
#define UC_TRIPS 100000

static asynqi_ctx sw_main, sw_co;
static volatile uint64_t sw_count;

static void
sw_entry(void *arg)
{
	(void)arg;
	for (;;) {
		sw_count++;
		asynqi_ctx_switch(&sw_co, &sw_main);
	}
}

static ucontext_t uc_main, uc_co;
static volatile uint64_t uc_count;

static void
uc_entry(void)
{
	for (;;) {
		uc_count++;
		swapcontext(&uc_co, &uc_main);
	}
}

static void
bench_switch(void)
{
	section("1. context switch: ping-pong main <-> coroutine on a 64 KiB "
	        "mmap'd stack");
	void *stk = mmap(NULL, STACK_BYTES, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	void *ustk = mmap(NULL, STACK_BYTES, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (stk == MAP_FAILED || ustk == MAP_FAILED) {
		fail("mmap", "cannot map coroutine stacks");
		return;
	}

	double asm_ns[SWITCH_ROUNDS];
	asynqi_ctx_make(&sw_co, stk, STACK_BYTES, sw_entry, NULL);
	asynqi_ctx_switch(&sw_main, &sw_co); /* first entry, warm up */
	for (int r = 0; r < SWITCH_ROUNDS; r++) {
		uint64_t c0 = sw_count, t0 = now_ns();
		for (int i = 0; i < SWITCH_TRIPS; i++)
			asynqi_ctx_switch(&sw_main, &sw_co);
		uint64_t t1 = now_ns();
		if (sw_count - c0 != SWITCH_TRIPS)
			fail("asynqi_ctx_switch",
			    "coroutine ran %" PRIu64 " times, expected %d",
			    sw_count - c0, SWITCH_TRIPS);
		asm_ns[r] = (double)(t1 - t0) / (2.0 * SWITCH_TRIPS);
	}

	double uc_ns[UC_ROUNDS];
	getcontext(&uc_co);
	uc_co.uc_stack.ss_sp = ustk;
	uc_co.uc_stack.ss_size = STACK_BYTES;
	uc_co.uc_link = NULL;
	makecontext(&uc_co, uc_entry, 0);
	swapcontext(&uc_main, &uc_co);
	for (int r = 0; r < UC_ROUNDS; r++) {
		uint64_t c0 = uc_count, t0 = now_ns();
		for (int i = 0; i < UC_TRIPS; i++)
			swapcontext(&uc_main, &uc_co);
		uint64_t t1 = now_ns();
		if (uc_count - c0 != UC_TRIPS)
			fail("swapcontext",
			    "coroutine ran %" PRIu64 " times, expected %d",
			    uc_count - c0, UC_TRIPS);
		uc_ns[r] = (double)(t1 - t0) / (2.0 * UC_TRIPS);
	}
	/* Both coroutines stay suspended forever; their stacks go now. */
	munmap(stk, STACK_BYTES);
	munmap(ustk, STACK_BYTES);

	/* swapcontext makes one rt_sigprocmask call per switch, so the ratio
	 * budget depends on what a syscall costs on the machine. */
	double sys_ns[UC_ROUNDS];
	for (int r = 0; r < UC_ROUNDS; r++) {
		uint64_t t0 = now_ns();
		for (int i = 0; i < UC_TRIPS; i++)
			(void)getppid();
		sys_ns[r] = (double)(now_ns() - t0) / UC_TRIPS;
	}

	double a = best_of(asm_ns, SWITCH_ROUNDS);
	double am = median_of(asm_ns, SWITCH_ROUNDS);
	double u = best_of(uc_ns, UC_ROUNDS);
	printf("  (%d rounds of %d switches; swapcontext %d rounds of %d)\n",
	    SWITCH_ROUNDS, 2 * SWITCH_TRIPS, UC_ROUNDS, 2 * UC_TRIPS);
	row("asynqi_ctx_switch, best (ns/switch)", a, "ns", "<=", 15);
	row("asynqi_ctx_switch, median (ns/switch)", am, "ns", NULL, 0);
	row("swapcontext, best (ns/switch)", u, "ns", NULL, 0);
	row("speed-up over swapcontext (best/best)", u / a, "x", ">=", 50);
	row("one syscall, getppid (context for the ratio)",
	    best_of(sys_ns, UC_ROUNDS), "ns", NULL, 0);
}

/* ---- 2. Empty task fan-out -------------------------------------------- */

#define FAN_N 100000
#define FAN_ROUNDS 15

static asynq_status
empty_task(asynq_task *t, void *arg)
{
	return asynq_return_i64(t, (int64_t)(intptr_t)arg);
}

struct fan {
	asynq_future **fs;
	size_t n;
	uint64_t ns; /* spawn + await + release, checks excluded */
	size_t bad;
};

static asynq_status
fan_root(asynq_task *t, void *arg)
{
	struct fan *fa = arg;
	uint64_t t0 = now_ns();
	for (size_t i = 0; i < fa->n; i++)
		fa->fs[i] = asynq_spawn(empty_task, (void *)(intptr_t)i);
	asynq_status st = asynq_await_all(t, fa->fs, fa->n);
	uint64_t t1 = now_ns();
	for (size_t i = 0; i < fa->n; i++)
		if (asynq_future_status(fa->fs[i]) != ASYNQ_OK ||
		    asynq_future_i64(fa->fs[i]) != (int64_t)i)
			fa->bad++;
	uint64_t t2 = now_ns();
	asynq_future_rele_n(fa->fs, fa->n);
	uint64_t t3 = now_ns();
	fa->ns = (t1 - t0) + (t3 - t2);
	return st;
}

static void
bench_fanout(void)
{
	section("2. spawn + await + complete of an empty task: one root, "
	        "100,000-wide await_all");
	fresh_sched(NULL);
	struct fan fa = { .n = FAN_N };
	fa.fs = calloc(FAN_N, sizeof(*fa.fs));
	if (fa.fs == NULL) {
		fail("fan-out", "out of memory");
		return;
	}
	double ns[FAN_ROUNDS], outer[FAN_ROUNDS];
	for (int r = 0; r < FAN_ROUNDS; r++) {
		fa.bad = 0;
		uint64_t t0 = now_ns();
		asynq_future *root = asynq_spawn(fan_root, &fa);
		asynq_status st = asynq_wait(root);
		asynq_future_rele(root);
		uint64_t t1 = now_ns();
		check_status("fan-out wait", st);
		if (fa.bad != 0)
			fail("fan-out", "%zu of %d tasks had a wrong value",
			    fa.bad, FAN_N);
		ns[r] = (double)fa.ns / FAN_N;
		outer[r] = (double)(t1 - t0) / FAN_N;
	}
	asynq_sched_stats s;
	asynq_sched_stats_get(&s);
	end_sched("fan-out");
	free(fa.fs);
	double b = best_of(ns, FAN_ROUNDS), m = median_of(ns, FAN_ROUNDS);
	double ob = best_of(outer, FAN_ROUNDS);
	our_fanout_ns = b;
	printf("  (%d rounds; %" PRIu64 " switches, %" PRIu64
	       " stacks mapped in all)\n",
	    FAN_ROUNDS, s.switches, s.stacks_mapped);
	row("per empty task, best (ns)", b, "ns", "<=", 100);
	row("per empty task, median (ns)", m, "ns", "<=", 100);
	row("per task incl. root spawn/wait, best (ns)", ob, "ns", NULL, 0);
}

/* ---- 3. Await chain --------------------------------------------------- */

#define CHAIN_DEPTH 500
#define CHAIN_ROUNDS 400

static asynq_status
chain_task(asynq_task *t, void *arg)
{
	intptr_t d = (intptr_t)arg;
	if (d == CHAIN_DEPTH)
		return asynq_return_i64(t, d);
	asynq_future *c = asynq_spawn(chain_task, (void *)(d + 1));
	asynq_status st = asynq_await(t, c);
	int64_t v = asynq_future_i64(c);
	asynq_future_rele(c);
	if (st != ASYNQ_OK)
		return st;
	return asynq_return_i64(t, v + d);
}

static void
run_chain(const char *label, const asynq_sched_cfg *cfg, bool budgeted)
{
	fresh_sched(cfg);
	double ns[CHAIN_ROUNDS];
	/* 1 + 2 + ... + 500 */
	const int64_t want = (int64_t)CHAIN_DEPTH * (CHAIN_DEPTH + 1) / 2;
	int rounds = 0;
	for (int r = 0; r < CHAIN_ROUNDS; r++) {
		uint64_t t0 = now_ns();
		asynq_future *f = asynq_spawn(chain_task, (void *)(intptr_t)1);
		asynq_status st = asynq_wait(f);
		int64_t v = asynq_future_i64(f);
		asynq_future_rele(f);
		uint64_t t1 = now_ns();
		if (st != ASYNQ_OK || v != want) {
			fail("chain",
			    "status %s value %" PRId64 ", expected %" PRId64,
			    asynq_status_name(st), v, want);
			break;
		}
		ns[rounds++] = (double)(t1 - t0) / CHAIN_DEPTH;
	}
	end_sched("chain");
	if (rounds == 0)
		return;
	double b = best_of(ns, (size_t)rounds);
	double m = median_of(ns, (size_t)rounds);
	char what[96];
	our_chain_ns = b;
	snprintf(what, sizeof(what), "per await, best (ns) %s", label);
	row(what, b, "ns", budgeted ? "<=" : NULL, 100);
	snprintf(what, sizeof(what), "per await, median (ns) %s", label);
	row(what, m, "ns", NULL, 0);
}

static void
bench_chain(void)
{
	section("3. await chain: each task spawns and awaits its child, "
	        "500 deep (time / 500)");
	printf("  (%d rounds; the issue sets no budget for this shape)\n",
	    CHAIN_ROUNDS);
	run_chain("", NULL, false);
}

/* ---- 4. Two-level batched lookup -------------------------------------- */

#define LK_N 10000
#define LK_AUTHORS 4096
#define LK_ROUNDS 31

/* A local backend that answers from memory: answers (answer id -> author
 * id) or users (author id -> name). */
struct lk_backend {
	asynq_backend base;
	bool users;
	size_t flushes, items, bad_keys;
};

struct lk_batch {
	asynq_batch base;
	struct lk_backend *be;
};

static char lk_names[LK_AUTHORS][24];

static int64_t
author_of(int64_t aid)
{
	return (aid * 7919) % LK_AUTHORS;
}

static asynq_batch *
lk_batch_alloc(asynq_backend *be)
{
	struct lk_batch *b = malloc(sizeof(*b));
	if (b == NULL)
		return NULL;
	b->be = (struct lk_backend *)be;
	return &b->base;
}

static asynq_status
lk_flush(asynq_batch *b)
{
	struct lk_backend *be = ((struct lk_batch *)b)->be;
	size_t n = asynq_batch_size(b);
	be->flushes++;
	be->items += n;
	for (size_t i = 0; i < n; i++) {
		asynq_future *it = asynq_batch_item(b, i);
		int64_t k = asynq_item_key(it);
		if (!be->users) {
			asynq_item_set_i64(it, author_of(k));
		} else if (k >= 0 && k < LK_AUTHORS) {
			asynq_item_set_ptr(it, lk_names[k], NULL);
		} else {
			be->bad_keys++; /* left unset: fails with INTERNAL */
		}
	}
	return ASYNQ_OK;
}

static void
lk_batch_free(asynq_batch *b)
{
	free(b);
}

static const asynq_backend_ops lk_ops = {
	.batch_alloc = lk_batch_alloc,
	.flush = lk_flush,
	.batch_free = lk_batch_free,
};

static struct lk_backend answers, users;

/* Shape B: one task's id and answer. */
struct lk_one {
	int64_t aid;
	const char *name;
};

struct lookup {
	const int64_t *aids;
	size_t n;
	asynq_future **uid, **name; /* shape A */
	asynq_future **tasks;       /* shape B */
	struct lk_one *ones;        /* shape B */
	size_t bad;
};

/* Shape A: the seed's all_author_names, one task, two await_alls. */
static asynq_status
all_author_names(asynq_task *t, void *arg)
{
	struct lookup *lk = arg;
	size_t n = lk->n;
	for (size_t i = 0; i < n; i++)
		lk->uid[i] = asynq_batch_add(&answers.base, lk->aids[i], NULL);
	asynq_status st = asynq_await_all(t, lk->uid, n);
	if (st != ASYNQ_OK)
		goto out_uid;
	for (size_t i = 0; i < n; i++)
		lk->name[i] = asynq_batch_add(&users.base,
		    asynq_future_i64(lk->uid[i]), NULL);
	st = asynq_await_all(t, lk->name, n);
	for (size_t i = 0; i < n; i++)
		if (asynq_future_ptr(lk->name[i]) !=
		    (void *)lk_names[author_of(lk->aids[i])])
			lk->bad++;
	asynq_future_rele_n(lk->name, n);
out_uid:
	asynq_future_rele_n(lk->uid, n);
	return st;
}

/* Shape B: one task per answer id, each awaiting twice. */
static asynq_status
author_name(asynq_task *t, void *arg)
{
	struct lk_one *one = arg;
	asynq_future *f = asynq_batch_add(&answers.base, one->aid, NULL);
	asynq_status st = asynq_await(t, f);
	int64_t author = asynq_future_i64(f);
	asynq_future_rele(f);
	if (st != ASYNQ_OK)
		return st;
	f = asynq_batch_add(&users.base, author, NULL);
	st = asynq_await(t, f);
	one->name = asynq_future_ptr(f);
	asynq_future_rele(f);
	return st;
}

static asynq_status
author_names_root(asynq_task *t, void *arg)
{
	struct lookup *lk = arg;
	for (size_t i = 0; i < lk->n; i++)
		lk->tasks[i] = asynq_spawn(author_name, &lk->ones[i]);
	asynq_status st = asynq_await_all(t, lk->tasks, lk->n);
	asynq_future_rele_n(lk->tasks, lk->n);
	for (size_t i = 0; i < lk->n; i++)
		if (lk->ones[i].name != lk_names[author_of(lk->ones[i].aid)])
			lk->bad++;
	return st;
}

static void
run_lookup(const char *label, asynq_task_fn root_fn, struct lookup *lk,
    const asynq_sched_cfg *cfg, bool budgeted)
{
	fresh_sched(cfg);
	asynq_backend_init(&answers.base, &lk_ops, "answers");
	asynq_backend_init(&users.base, &lk_ops, "users");
	answers.users = false;
	users.users = true;
	double ns[LK_ROUNDS];
	size_t flushes_first = 0;
	for (int r = 0; r < LK_ROUNDS; r++) {
		answers.flushes = answers.items = answers.bad_keys = 0;
		users.flushes = users.items = users.bad_keys = 0;
		lk->bad = 0;
		for (size_t i = 0; i < lk->n; i++)
			lk->ones[i].name = NULL;
		asynq_sched_stats s0, s1;
		asynq_sched_stats_get(&s0);
		uint64_t t0 = now_ns();
		asynq_future *root =
		    asynq_spawn_at(root_fn, lk, label, __FILE__, __LINE__);
		asynq_status st = asynq_wait(root);
		asynq_future_rele(root);
		uint64_t t1 = now_ns();
		asynq_sched_stats_get(&s1);
		ns[r] = (double)(t1 - t0) / (2.0 * (double)lk->n);
		size_t flushes = answers.flushes + users.flushes;
		if (r == 0)
			flushes_first = flushes;
		check_status(label, st);
		if (lk->bad != 0)
			fail(label, "%zu of %zu names wrong", lk->bad, lk->n);
		if (flushes != 2 || s1.flushes - s0.flushes != 2)
			fail(label,
			    "%zu backend flushes (scheduler counted %" PRIu64
			    "), expected 2",
			    flushes, s1.flushes - s0.flushes);
		if (answers.items != lk->n || users.items != lk->n)
			fail(label,
			    "flushed %zu + %zu items, expected %zu + %zu",
			    answers.items, users.items, lk->n, lk->n);
		if (answers.bad_keys + users.bad_keys != 0)
			fail(label, "backend saw bad keys");
	}
	asynq_backend_fini(&answers.base);
	asynq_backend_fini(&users.base);
	end_sched(label);
	double b = best_of(ns, LK_ROUNDS), m = median_of(ns, LK_ROUNDS);
	char what[96];
	if (root_fn == author_names_root)
		our_lookup_ns = b;
	printf("  %s: %zu flushes per round (%zu answers + %zu users items)\n",
	    label, flushes_first, lk->n, lk->n);
	snprintf(what, sizeof(what), "%s, best (ns/call)", label);
	row(what, b, "ns", budgeted ? "<=" : NULL, 300);
	snprintf(what, sizeof(what), "%s, median (ns/call)", label);
	row(what, m, "ns", budgeted ? "<=" : NULL, 300);
}

static void
bench_lookup(void)
{
	section("4. two-level local batched lookup (all_author_names): 10,000 "
	        "answer ids -> authors -> names,\n   time / 20,000 logical "
	        "calls");
	for (int i = 0; i < LK_AUTHORS; i++)
		snprintf(lk_names[i], sizeof(lk_names[i]), "user-%d", i);
	struct lookup lk = { .n = LK_N };
	int64_t *aids = calloc(LK_N, sizeof(*aids));
	lk.uid = calloc(LK_N, sizeof(*lk.uid));
	lk.name = calloc(LK_N, sizeof(*lk.name));
	lk.tasks = calloc(LK_N, sizeof(*lk.tasks));
	lk.ones = calloc(LK_N, sizeof(*lk.ones));
	if (aids == NULL || lk.uid == NULL || lk.name == NULL ||
	    lk.tasks == NULL || lk.ones == NULL) {
		fail("lookup", "out of memory");
		goto out;
	}
	for (size_t i = 0; i < LK_N; i++) {
		aids[i] = 1000000 + (int64_t)i;
		lk.ones[i].aid = aids[i];
	}
	lk.aids = aids;
	printf("  (%d rounds each)\n", LK_ROUNDS);
	run_lookup("one task, await_all", all_author_names, &lk, NULL, true);
	run_lookup("10,000 tasks x two awaits", author_names_root, &lk, NULL,
	    true);
out:
	free(aids);
	free(lk.uid);
	free(lk.name);
	free(lk.tasks);
	free(lk.ones);
}

/* ---- 5. Resident memory per suspended task ---------------------------- */

#define PARK_N 100000

struct park_backend {
	asynq_backend base;
	size_t flushes, items;
	size_t rss_in_flush;
	asynq_sched_stats stats_in_flush;
};

static struct park_backend park;

static asynq_batch *
park_batch_alloc(asynq_backend *be)
{
	(void)be;
	return malloc(sizeof(asynq_batch));
}

static asynq_status
park_flush(asynq_batch *b)
{
	size_t n = asynq_batch_size(b);
	/* Every task is parked on this batch now. */
	if (park.flushes++ == 0) {
		park.rss_in_flush = rss_bytes();
		asynq_sched_stats_get(&park.stats_in_flush);
	}
	park.items += n;
	for (size_t i = 0; i < n; i++) {
		asynq_future *it = asynq_batch_item(b, i);
		asynq_item_set_i64(it, asynq_item_key(it) * 3);
	}
	return ASYNQ_OK;
}

static void
park_batch_free(asynq_batch *b)
{
	free(b);
}

static const asynq_backend_ops park_ops = {
	.batch_alloc = park_batch_alloc,
	.flush = park_flush,
	.batch_free = park_batch_free,
};

static asynq_status
parked_task(asynq_task *t, void *arg)
{
	int64_t k = (int64_t)(intptr_t)arg;
	asynq_future *f = asynq_batch_add(&park.base, k, NULL);
	asynq_status st = asynq_await(t, f);
	int64_t v = asynq_future_i64(f);
	asynq_future_rele(f);
	if (st != ASYNQ_OK)
		return st;
	return asynq_return_i64(t, v);
}

struct park_root_arg {
	asynq_future **fs;
	size_t rss_before;
	size_t bad;
};

static asynq_status
park_root(asynq_task *t, void *arg)
{
	struct park_root_arg *pa = arg;
	pa->rss_before = rss_bytes();
	for (size_t i = 0; i < PARK_N; i++)
		pa->fs[i] = asynq_spawn(parked_task, (void *)(intptr_t)i);
	asynq_status st = asynq_await_all(t, pa->fs, PARK_N);
	for (size_t i = 0; i < PARK_N; i++)
		if (asynq_future_i64(pa->fs[i]) != (int64_t)i * 3)
			pa->bad++;
	asynq_future_rele_n(pa->fs, PARK_N);
	return st;
}

static void
bench_rss(void)
{
	section("5. resident memory per suspended task: 100,000 tasks parked "
	        "on one backend's batch");
	/* ASYNQ_BENCH_STACK_KIB (fresh_sched): the stack size to measure it
	 * at (the default was chosen so: untouched pages cost nothing). */
	if (getenv("ASYNQ_BENCH_STACK_KIB") != NULL)
		printf("  task stacks of %s KiB\n",
		    getenv("ASYNQ_BENCH_STACK_KIB"));
	fresh_sched(NULL);
	asynq_backend_init(&park.base, &park_ops, "park");
	struct park_root_arg pa = { 0 };
	pa.fs = malloc(PARK_N * sizeof(*pa.fs));
	if (pa.fs == NULL) {
		fail("rss", "out of memory");
		asynq_backend_fini(&park.base);
		return;
	}
	/* Touch the caller's array first: only the framework is measured. */
	memset(pa.fs, 0, PARK_N * sizeof(*pa.fs));
	uint64_t t0 = now_ns();
	asynq_future *root = asynq_spawn(park_root, &pa);
	asynq_status st = asynq_wait(root);
	asynq_future_rele(root);
	uint64_t t1 = now_ns();
	size_t rss_after = rss_bytes();
	check_status("park wait", st);
	if (pa.bad != 0)
		fail("park", "%zu of %d tasks had a wrong value", pa.bad,
		    PARK_N);
	if (park.flushes != 1 || park.items != PARK_N)
		fail("park", "%zu flushes of %zu items, expected 1 of %d",
		    park.flushes, park.items, PARK_N);
	asynq_sched_stats s;
	asynq_sched_stats_get(&s);
	asynq_backend_fini(&park.base);
	end_sched("park");
	size_t rss_fini = rss_bytes();
	free(pa.fs);

	double delta = (double)park.rss_in_flush - (double)pa.rss_before;
	row("resident per suspended task (KiB)", delta / 1024.0 / PARK_N, "KiB",
	    "<=", 16);
	row("whole shape, per task incl. flush (ns)",
	    (double)(t1 - t0) / PARK_N, "ns", NULL, 0);
	printf("  RSS before spawning %zu KiB, inside the flush %zu KiB, after "
	       "release %zu KiB, after asynq_thread_fini %zu KiB\n",
	    pa.rss_before / 1024, park.rss_in_flush / 1024, rss_after / 1024,
	    rss_fini / 1024);
	printf("  asynq_sched_stats in the flush: tasks_live %" PRIu64
	       ", stacks_mapped %" PRIu64 ", stacks_guarded %" PRIu64
	       ", stacks_idle %" PRIu64 "\n",
	    park.stats_in_flush.tasks_live, park.stats_in_flush.stacks_mapped,
	    park.stats_in_flush.stacks_guarded,
	    park.stats_in_flush.stacks_idle);
	printf("  asynq_sched_stats at the end: tasks_spawned %" PRIu64
	       ", switches %" PRIu64 ", flushes %" PRIu64
	       ", stacks_mapped %" PRIu64 ", stacks_guarded %" PRIu64
	       ", stacks_idle %" PRIu64 "\n",
	    s.tasks_spawned, s.switches, s.flushes, s.stacks_mapped,
	    s.stacks_guarded, s.stacks_idle);
}

/* ---- 6. Memory returned after a burst on a runtime worker ------------- */

#define BURST_N 100000
#define IDLE_MS 1000

extern int malloc_trim(size_t pad); /* glibc's, without <malloc.h> */

/* The burst's backend lives on the one worker: items join the batch of the
 * scheduler of the thread that adds them. */
static struct park_backend burst;

static asynq_status
burst_flush(asynq_batch *b)
{
	size_t n = asynq_batch_size(b);
	if (burst.flushes++ == 0)
		burst.rss_in_flush = rss_bytes();
	burst.items += n;
	for (size_t i = 0; i < n; i++) {
		asynq_future *it = asynq_batch_item(b, i);
		asynq_item_set_i64(it, asynq_item_key(it) + 1);
	}
	return ASYNQ_OK;
}

static const asynq_backend_ops burst_ops = {
	.batch_alloc = park_batch_alloc,
	.flush = burst_flush,
	.batch_free = park_batch_free,
};

static asynq_status
burst_task(asynq_task *t, void *arg)
{
	int64_t k = (int64_t)(intptr_t)arg;
	asynq_future *f = asynq_batch_add(&burst.base, k, NULL);
	asynq_status st = asynq_await(t, f);
	int64_t v = asynq_future_i64(f);
	asynq_future_rele(f);
	ASYNQ_TRY(st);
	return asynq_return_i64(t, v == k + 1);
}

static asynq_status
burst_root(asynq_task *t, void *arg)
{
	asynq_future **fs = arg;
	for (size_t i = 0; i < BURST_N; i++)
		fs[i] = asynq_spawn(burst_task, (void *)(intptr_t)i);
	asynq_status st = asynq_await_all(t, fs, BURST_N);
	int64_t good = 0;
	for (size_t i = 0; i < BURST_N; i++)
		good += asynq_future_i64(fs[i]);
	asynq_future_rele_n(fs, BURST_N);
	ASYNQ_TRY(st);
	return asynq_return_i64(t, good);
}

/* Reads the worker's scheduler counters, on the worker. */
static asynq_status
burst_stats(asynq_task *t, void *arg)
{
	(void)t;
	asynq_sched_stats_get(arg);
	return ASYNQ_OK;
}

static void
bench_burst(void)
{
	section("6. memory after a burst: 100,000 tasks parked at once on a "
	        "runtime worker, then 1 s idle");
	asynq_runtime *rt;
	asynq_runtime_cfg cfg = { .workers = 1 };
	asynq_future **fs = calloc(BURST_N, sizeof(*fs));
	if (fs == NULL || asynq_runtime_alloc(&rt, &cfg) != ASYNQ_OK) {
		fail("burst", "cannot start a runtime");
		free(fs);
		return;
	}
	memset(fs, 0, BURST_N * sizeof(*fs)); /* resident before "before" */
	asynq_backend_init(&burst.base, &burst_ops, "burst");
	/* What earlier sections freed on this thread is not the worker's. */
	(void)malloc_trim(0);
	struct timespec settle = { 0, 100 * 1000000 };
	nanosleep(&settle, NULL);
	size_t before = rss_bytes();
	asynq_ticket *tk;
	asynq_status st = asynq_runtime_submit(rt, 0, burst_root, fs, &tk);
	check_status("burst submit", st);
	if (st != ASYNQ_OK)
		goto out;
	check_status("burst", asynq_ticket_wait(tk));
	size_t done = rss_bytes();
	if (asynq_ticket_i64(tk) != BURST_N || burst.flushes != 1)
		fail("burst", "%" PRId64 " of %d tasks right, %zu flushes",
		    asynq_ticket_i64(tk), BURST_N, burst.flushes);
	asynq_ticket_free(tk);
	struct timespec idle = { IDLE_MS / 1000, (IDLE_MS % 1000) * 1000000L };
	nanosleep(&idle, NULL);
	size_t after = rss_bytes();
	asynq_sched_stats ws;
	memset(&ws, 0, sizeof(ws));
	if (asynq_runtime_submit(rt, 0, burst_stats, &ws, &tk) == ASYNQ_OK) {
		(void)asynq_ticket_wait(tk);
		asynq_ticket_free(tk);
	}
	double grown = (double)burst.rss_in_flush - (double)before;
	double kept = (double)after - (double)before;
	printf("  RSS before %zu KiB, all parked %zu KiB, all finished %zu "
	       "KiB, after %d ms idle %zu KiB\n",
	    before / 1024, burst.rss_in_flush / 1024, done / 1024, IDLE_MS,
	    after / 1024);
	printf("  worker after idle: stacks_held %" PRIu64
	       ", stacks_warm %" PRIu64 ", records_cached %" PRIu64
	       ", trims %" PRIu64 "\n",
	    ws.stacks_held, ws.stacks_warm, ws.records_cached, ws.trims);
	row("resident after 1 s idle, above before (MiB)", kept / 1048576.0,
	    "MiB", NULL, 0);
	row("share of the burst's growth given back (%)",
	    grown > 0 ? 100.0 * (grown - kept) / grown : 100.0, "%", ">=", 95);
out:
	asynq_runtime_free(rt);
	free(fs);
}

/* ---- The DataLoader peer ---------------------------------------------- */

struct peer_fig {
	double best, median;
	bool have;
};

static struct peer_fig peer_fanout, peer_chain, peer_lookup;
static bool peer_failed; /* a run failed: no figures, not even a second run */
static char peer_note[256]; /* why there are no peer figures, or its banner */

/* peer_script finds peers/dataloader/run.sh: in the runfiles (bazel run
 * starts in them), beside the binary's runfiles, or in a source tree. */
static bool
peer_script(const char *argv0, char *out, size_t len)
{
	const char *rel = "tests/bench/peers/dataloader/run.sh";
	const char *rd = getenv("RUNFILES_DIR");
	char cand[4][1024];
	int n = 0;
	if (rd != NULL)
		snprintf(cand[n++], sizeof(cand[0]), "%.900s/asynq/%s", rd,
		    rel);
	snprintf(cand[n++], sizeof(cand[0]), "%s", rel);
	snprintf(cand[n++], sizeof(cand[0]), "%.900s.runfiles/asynq/%s", argv0,
	    rel);
	for (int i = 0; i < n; i++) {
		if (access(cand[i], R_OK) == 0) {
			snprintf(out, len, "%.1000s", cand[i]);
			return true;
		}
	}
	return false;
}

/* run_peer runs the DataLoader benchmark and keeps its figures; without
 * Node or the package it notes why. */
static void
run_peer(const char *argv0)
{
	char script[1100], cmd[1200], line[512];
	if (!peer_script(argv0, script, sizeof(script))) {
		snprintf(peer_note, sizeof(peer_note),
		    "peers/dataloader/run.sh not found next to the benchmark");
		peer_failed = true;
		return;
	}
	snprintf(cmd, sizeof(cmd), "sh '%s' 2>&1", script);
	printf("\nRunning the DataLoader peer (%s) ...\n", script);
	FILE *p = popen(cmd, "r");
	if (p == NULL) {
		snprintf(peer_note, sizeof(peer_note),
		    "cannot run %.160s: %.80s", script, strerror(errno));
		peer_failed = true;
		return;
	}
	bool ok = false;
	while (fgets(line, sizeof(line), p) != NULL) {
		char name[32];
		double b, m;
		line[strcspn(line, "\n")] = '\0';
		if (sscanf(line, "%31s best %lf median %lf", name, &b, &m) ==
		    3) {
			struct peer_fig *f = strcmp(name, "fanout") == 0
			    ? &peer_fanout
			    : strcmp(name, "chain") == 0  ? &peer_chain
			    : strcmp(name, "lookup") == 0 ? &peer_lookup
			                                  : NULL;
			/* Two runs, one either side of asynq's: the better
			 * of each is kept, as each side's best round is. */
			if (f != NULL && (!f->have || b < f->best))
				*f = (struct peer_fig){ b, m, true };
		} else if (strcmp(line, "ok") == 0) {
			ok = true;
		} else if (strncmp(line, "node ", 5) == 0 ||
		    strncmp(line, "unavailable: ", 13) == 0 ||
		    strncmp(line, "error: ", 7) == 0) {
			snprintf(peer_note, sizeof(peer_note), "%.250s", line);
		}
		printf("  peer: %s\n", line);
	}
	int rc = pclose(p);
	if (!ok || rc != 0) {
		peer_fanout.have = peer_chain.have = peer_lookup.have = false;
		peer_failed = true;
		if (peer_note[0] == '\0' || strncmp(peer_note, "node ", 5) == 0)
			snprintf(peer_note, sizeof(peer_note),
			    "the peer exited with status %d", rc);
	}
}

static void
compare_row(const char *what, double ours, const struct peer_fig *peer)
{
	if (ours <= 0)
		return;
	if (!peer->have) {
		printf("  %-44s %9.1f %13s %7s\n", what, ours, "-", "-");
		return;
	}
	double ratio = ours / peer->best;
	bool ok = ratio <= 0.5;
	if (!ok)
		overs++;
	printf("  %-44s %9.1f %13.1f %6.2fx  <= 0.50x  %s\n", what, ours,
	    peer->best, ratio, ok ? "PASS" : "OVER");
}

static void
print_comparison(bool peer_ran)
{
	section("DataLoader on Node, same run: best ns of each side, target "
	        "asynq <= 0.5x DataLoader's time");
	if (!peer_ran)
		printf("  (peer skipped: -n or ASYNQ_BENCH_NO_PEER)\n");
	else if (!peer_fanout.have)
		printf("  (no DataLoader figures: %s; asynq's own only)\n",
		    peer_note);
	else
		printf("  (%s; DataLoader run before and after asynq's "
		       "shapes, best of both)\n",
		    peer_note);
	printf("  %-44s %9s %13s %7s  %-8s  %s\n", "shape", "asynq ns",
	    "DataLoader ns", "ratio", "target", "verdict");
	compare_row("empty task in a 100,000-task fan-out", our_fanout_ns,
	    &peer_fanout);
	compare_row("await chain, per level (500 deep)", our_chain_ns,
	    &peer_chain);
	compare_row("batched lookup, a task per call (10,000)", our_lookup_ns,
	    &peer_lookup);
}

/* ---- Main ------------------------------------------------------------- */

/* want says whether section n was asked for: all of them with no
 * arguments, else those listed (`core 3 5`, handy under perf). */
static bool
want(int argc, char **argv, int n)
{
	bool any = false;
	for (int i = 1; i < argc; i++) {
		if (argv[i][0] == '-')
			continue;
		any = true;
		if (atoi(argv[i]) == n)
			return true;
	}
	return !any;
}

static bool
no_peer(int argc, char **argv)
{
	const char *e = getenv("ASYNQ_BENCH_NO_PEER");
	if (e != NULL && e[0] != '\0' && strcmp(e, "0") != 0)
		return true;
	for (int i = 1; i < argc; i++)
		if (strcmp(argv[i], "-n") == 0)
			return true;
	return false;
}

int
main(int argc, char **argv)
{
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("asynq core benchmark (%ld CPUs online, page %ld bytes)\n",
	    sysconf(_SC_NPROCESSORS_ONLN), sysconf(_SC_PAGESIZE));
	printf("  figure = best of several rounds unless marked median; "
	       "budgets from DESIGN.md section 9\n");
	printf("  %-52s %14s  %-14s %s\n", "measure", "figure", "budget",
	    "verdict");

	bool peer = !no_peer(argc, argv) &&
	    (want(argc, argv, 2) || want(argc, argv, 3) || want(argc, argv, 4));
	if (peer)
		run_peer(argv[0]);
	if (want(argc, argv, 1))
		bench_switch();
	if (want(argc, argv, 2))
		bench_fanout();
	if (want(argc, argv, 3))
		bench_chain();
	if (want(argc, argv, 4))
		bench_lookup();
	if (peer && !peer_failed)
		run_peer(argv[0]);
	if (want(argc, argv, 5))
		bench_rss();
	if (want(argc, argv, 6))
		bench_burst();
	if (want(argc, argv, 2) || want(argc, argv, 3) || want(argc, argv, 4))
		print_comparison(peer);
	asynq_thread_fini();
	printf("\n%d figure(s) over budget; %d correctness check(s) failed\n",
	    overs, failures);
	return failures != 0 ? 1 : 0;
}
