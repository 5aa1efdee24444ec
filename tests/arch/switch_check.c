/* SPDX-License-Identifier: MIT */
/*
 * A check of the per-ISA context switch (framework/arch/<cpu>/switch.S),
 * built and run by tests/arch/aarch64_check.sh for aarch64 (under qemu) and
 * x86-64 (natively). Without cmocka, so it cross-compiles with nothing but
 * the framework's own sources.
 *
 * First the raw switch: asynqi_ctx_make and asynqi_ctx_switch ping-pong a
 * value between the main stack and a coroutine; an assembly helper loads
 * known patterns into every callee-saved register, switches, and reports
 * what it finds on the way back; doubles stay live across switches in both
 * directions; a rounding mode set in one context never leaks into the other.
 * Then the public API on top of it: a 1,000-wide fan-out, a 1,000-deep
 * recursion and a batch of 32 debug items that costs one flush.
 *
 * Prints one line per failed check and a final "N passed, N failed"; exits
 * non-zero when any check failed.
 */
#include <fenv.h>
#include <inttypes.h>
#include <signal.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "asynq/asynq.h"
#include "asynq/testing.h"
#include "framework/core/coro.h"

/* ---- Checks ---------------------------------------------------------- */

static int passed, failed;

static void
check(int ok, int line, const char *what)
{
	if (ok) {
		passed++;
		return;
	}
	failed++;
	printf("FAIL line %d: %s\n", line, what);
}

#define CHECK(cond) check(!!(cond), __LINE__, #cond)

#define CHECK_I64(a, b)                                                        \
	do {                                                                   \
		int64_t ci_a_ = (int64_t)(a), ci_b_ = (int64_t)(b);            \
		if (ci_a_ != ci_b_)                                            \
			printf("  %s = %" PRId64 ", want %" PRId64 "\n", #a,   \
			    ci_a_, ci_b_);                                     \
		check(ci_a_ == ci_b_, __LINE__, #a " == " #b);                 \
	} while (0)

/* ---- Register pattern switch ----------------------------------------- */

/*
 * regs_switch(from, to, in, out) loads the callee-saved registers from
 * in[], calls asynqi_ctx_switch(from, to) and, once switched back, stores
 * the same registers (and the stack pointer) in out[]; it saves and
 * restores the caller's values itself. Whatever the other side did to the
 * registers in between, a correct switch returns them unchanged.
 */
#if defined(__aarch64__)
/* x19-x28 (10 words), then d8-d15 (8 words). The frame pointer x29 and
 * the stack pointer are reported after them. */
#define NREGS 18
#define SP_SLOT (NREGS + 1)
__asm__("	.text\n"
        "	.p2align 2\n"
        "	.type	regs_switch, %function\n"
        "regs_switch:\n"
        "	stp	x29, x30, [sp, #-176]!\n"
        "	mov	x29, sp\n"
        "	stp	x19, x20, [sp, #16]\n"
        "	stp	x21, x22, [sp, #32]\n"
        "	stp	x23, x24, [sp, #48]\n"
        "	stp	x25, x26, [sp, #64]\n"
        "	stp	x27, x28, [sp, #80]\n"
        "	stp	d8, d9, [sp, #96]\n"
        "	stp	d10, d11, [sp, #112]\n"
        "	stp	d12, d13, [sp, #128]\n"
        "	stp	d14, d15, [sp, #144]\n"
        "	str	x3, [sp, #160]\n"
        "	ldp	x19, x20, [x2, #0]\n"
        "	ldp	x21, x22, [x2, #16]\n"
        "	ldp	x23, x24, [x2, #32]\n"
        "	ldp	x25, x26, [x2, #48]\n"
        "	ldp	x27, x28, [x2, #64]\n"
        "	ldp	d8, d9, [x2, #80]\n"
        "	ldp	d10, d11, [x2, #96]\n"
        "	ldp	d12, d13, [x2, #112]\n"
        "	ldp	d14, d15, [x2, #128]\n"
        /* Scribble over caller-saved registers too: a switch may clobber
         * them, but the callee-saved ones must come back. */
        "	movi	v16.2d, #0\n"
        "	bl	asynqi_ctx_switch\n"
        "	ldr	x3, [sp, #160]\n"
        "	stp	x19, x20, [x3, #0]\n"
        "	stp	x21, x22, [x3, #16]\n"
        "	stp	x23, x24, [x3, #32]\n"
        "	stp	x25, x26, [x3, #48]\n"
        "	stp	x27, x28, [x3, #64]\n"
        "	stp	d8, d9, [x3, #80]\n"
        "	stp	d10, d11, [x3, #96]\n"
        "	stp	d12, d13, [x3, #112]\n"
        "	stp	d14, d15, [x3, #128]\n"
        "	mov	x4, sp\n"
        "	stp	x29, x4, [x3, #144]\n"
        "	ldp	x19, x20, [sp, #16]\n"
        "	ldp	x21, x22, [sp, #32]\n"
        "	ldp	x23, x24, [sp, #48]\n"
        "	ldp	x25, x26, [sp, #64]\n"
        "	ldp	x27, x28, [sp, #80]\n"
        "	ldp	d8, d9, [sp, #96]\n"
        "	ldp	d10, d11, [sp, #112]\n"
        "	ldp	d12, d13, [sp, #128]\n"
        "	ldp	d14, d15, [sp, #144]\n"
        "	ldp	x29, x30, [sp], #176\n"
        "	ret\n"
        "	.size	regs_switch, .-regs_switch\n");
#elif defined(__x86_64__)
/* rbx, rbp, r12-r15, then the stack pointer. */
#define NREGS 6
#define SP_SLOT NREGS
__asm__("	.text\n"
        "	.p2align 4\n"
        "	.type	regs_switch, @function\n"
        "regs_switch:\n"
        "	pushq	%rbp\n"
        "	pushq	%rbx\n"
        "	pushq	%r12\n"
        "	pushq	%r13\n"
        "	pushq	%r14\n"
        "	pushq	%r15\n"
        "	pushq	%rcx\n" /* out; also realigns rsp to 16 for the call */
        "	movq	0(%rdx), %rbx\n"
        "	movq	8(%rdx), %rbp\n"
        "	movq	16(%rdx), %r12\n"
        "	movq	24(%rdx), %r13\n"
        "	movq	32(%rdx), %r14\n"
        "	movq	40(%rdx), %r15\n"
        "	call	asynqi_ctx_switch\n"
        "	popq	%rcx\n"
        "	movq	%rbx, 0(%rcx)\n"
        "	movq	%rbp, 8(%rcx)\n"
        "	movq	%r12, 16(%rcx)\n"
        "	movq	%r13, 24(%rcx)\n"
        "	movq	%r14, 32(%rcx)\n"
        "	movq	%r15, 40(%rcx)\n"
        "	movq	%rsp, 48(%rcx)\n"
        "	popq	%r15\n"
        "	popq	%r14\n"
        "	popq	%r13\n"
        "	popq	%r12\n"
        "	popq	%rbx\n"
        "	popq	%rbp\n"
        "	ret\n"
        "	.size	regs_switch, .-regs_switch\n");
#else
#error "switch_check.c: no register check for this CPU"
#endif

/* out[] has room for the registers plus up to two extra words. */
#define NOUT (NREGS + 2)

void regs_switch(asynqi_ctx *from, const asynqi_ctx *to, const uint64_t *in,
    uint64_t *out);

static void
fill_pattern(uint64_t *in, uint64_t seed)
{
	for (int i = 0; i < NREGS; i++)
		in[i] = seed * 0x9e3779b97f4a7c15ULL +
		    (uint64_t)i * 0x0101010101ULL;
}

static int
same_regs(const uint64_t *in, const uint64_t *out)
{
	for (int i = 0; i < NREGS; i++)
		if (in[i] != out[i]) {
			printf("  register slot %d: %016" PRIx64
			       ", want %016" PRIx64 "\n",
			    i, out[i], in[i]);
			return 0;
		}
	return 1;
}

/* ---- Raw switch ------------------------------------------------------ */

#define ROUNDS 1000
#define RAW_STACK (256 * 1024)

static asynqi_ctx main_ctx, co_ctx;
static volatile int64_t mailbox;    /* main -> co -> main */
static void *volatile co_arg_seen;  /* what entry received */
static volatile int co_rounds;      /* rounds the coroutine completed */
static volatile int co_bad_regs;    /* coroutine-side register mismatches */
static volatile int co_bad_doubles; /* coroutine-side double mismatches */
static volatile int co_bad_round;   /* coroutine saw main's rounding mode */
static volatile int co_start_round; /* rounding mode a new coroutine sees */
static char arg_token;

/* The rounding mode the FPU really applies, found by arithmetic: fenv's
 * view may come from a different control register (x87's control word on
 * x86-64, where doubles are computed under MXCSR). */
static int
arith_round(void)
{
	volatile double one = 1.0, three_ulp4 = 0x3p-54, ulp4 = 0x1p-54;
	double a = one + three_ulp4; /* 3/4 of an ulp above 1 */
	double b = one + ulp4;       /* 1/4 of an ulp above 1 */
	double c = -one - three_ulp4;

	if (a > 1.0 && b == 1.0 && c < -1.0)
		return FE_TONEAREST;
	if (a > 1.0 && b > 1.0 && c == -1.0)
		return FE_UPWARD;
	if (a == 1.0 && b == 1.0 && c < -1.0)
		return FE_DOWNWARD;
	if (a == 1.0 && b == 1.0 && c == -1.0)
		return FE_TOWARDZERO;
	return -1;
}

/* cur_round returns the rounding mode when fenv and the arithmetic agree on
 * it, else -2. */
static int
cur_round(void)
{
	int env = fegetround(), arith = arith_round();

	if (env != arith) {
		printf("  fegetround() = %d, arithmetic rounds as %d\n", env,
		    arith);
		return -2;
	}
	return env;
}

/* The coroutine: answers each value with 2v+1, keeping doubles live and
 * callee-saved registers loaded across every switch back to main. */
static void
co_entry(void *arg)
{
	uint64_t in[NOUT], out[NOUT];
	double acc = 1.0, x = 0.5, y = 3.25, z = -7.125;

	co_arg_seen = arg;
	co_start_round = cur_round();
	for (int i = 0;; i++) {
		int64_t v = mailbox;
		mailbox = 2 * v + 1;
		/* a, b and c stay live across the switch (in callee-saved FP
		 * registers, d8-d15 on aarch64); the volatile copies are what
		 * they must still be afterwards. */
		double a = acc * 1.5 + x, b = y - z * 0.25, c = z * x + y;
		volatile double ea = a, eb = b, ec = c;
		if (i % 3 == 0) {
			fill_pattern(in, 1000 + (uint64_t)i);
			regs_switch(&co_ctx, &main_ctx, in, out);
			if (!same_regs(in, out))
				co_bad_regs++;
		} else if (i == 1) {
			/* A rounding mode only this context uses. */
			fesetround(FE_UPWARD);
			asynqi_ctx_switch(&co_ctx, &main_ctx);
		} else {
			asynqi_ctx_switch(&co_ctx, &main_ctx);
		}
		if (i >= 1 && cur_round() != FE_UPWARD)
			co_bad_round++;
		if (a != ea || b != eb || c != ec)
			co_bad_doubles++;
		acc = a * 0.5 + b * 0.125 - c * 0.0625;
		x += 0.25;
		y -= 0.125;
		z *= -1.0;
		co_rounds++;
	}
}

/* The same (exact, so rounding-mode independent) arithmetic as the loop
 * in test_raw_switch, without switches. */
static double
expected_main_sum(int rounds)
{
	volatile double s = 0.0, p = 1.0, q = 2.5;
	for (int i = 0; i < rounds; i++) {
		s = s + p * q;
		p = p + 0.5;
		q = q - 0.001953125;
	}
	return s;
}

static void
test_raw_switch(void)
{
	uint64_t in[NOUT], out[NOUT];
	void *stack = mmap(NULL, RAW_STACK, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	double s = 0.0, p = 1.0, q = 2.5;
	int bad_regs = 0, bad_round = 0, bad_sp = 0;
	uint64_t sp_seen = 0;

	CHECK(stack != MAP_FAILED);
	if (stack == MAP_FAILED)
		return;
	CHECK(cur_round() == FE_TONEAREST);
	asynqi_ctx_make(&co_ctx, stack, RAW_STACK, co_entry, &arg_token);
	for (int i = 0; i < ROUNDS; i++) {
		mailbox = i;
		/* s, p and q stay live across the switch. */
		if (i % 2 == 0) {
			fill_pattern(in, (uint64_t)i);
			regs_switch(&main_ctx, &co_ctx, in, out);
			if (!same_regs(in, out))
				bad_regs++;
			/* The stack pointer comes back where it was, every
			 * round. */
			if (sp_seen == 0)
				sp_seen = out[SP_SLOT];
			if (out[SP_SLOT] != sp_seen)
				bad_sp++;
#if defined(__aarch64__)
			/* x29 as regs_switch set it (= sp) before the call. */
			if (out[NREGS] != out[SP_SLOT])
				bad_sp++;
#endif
		} else {
			asynqi_ctx_switch(&main_ctx, &co_ctx);
		}
		if (mailbox != 2 * (int64_t)i + 1)
			break;
		if (cur_round() !=
		    (i >= 2 && i < 10 ? FE_DOWNWARD : FE_TONEAREST))
			bad_round++;
		/* Main changes its own mode for a while: the coroutine must
		 * keep seeing its FE_UPWARD. */
		if (i == 1)
			fesetround(FE_DOWNWARD);
		if (i == 9)
			fesetround(FE_TONEAREST);
		s = s + p * q;
		p = p + 0.5;
		q = q - 0.001953125;
	}
	fesetround(FE_TONEAREST);
	CHECK_I64(mailbox, 2 * (ROUNDS - 1) + 1);
	CHECK_I64(co_rounds, ROUNDS - 1);
	CHECK(co_arg_seen == &arg_token);
	CHECK_I64(co_start_round, FE_TONEAREST);
	CHECK_I64(bad_regs, 0);
	CHECK_I64(bad_sp, 0);
	CHECK_I64(co_bad_regs, 0);
	CHECK_I64(co_bad_doubles, 0);
	CHECK_I64(bad_round, 0);
	CHECK_I64(co_bad_round, 0);
	CHECK(s == expected_main_sum(ROUNDS));
	/* The coroutine never finishes; its stack just goes away. */
	munmap(stack, RAW_STACK);
}

/* A coroutine made while its creator runs in another rounding mode starts
 * in the default floating-point environment, as a thread does: what a new
 * task sees must not depend on which context happened to start it. */
static asynqi_ctx fresh_ctx;
static volatile int fresh_round = -1;

static void
fresh_entry(void *arg)
{
	(void)arg;
	fresh_round = cur_round();
	/* Leave a mode behind that main must not inherit. */
	fesetround(FE_TOWARDZERO);
	for (;;)
		asynqi_ctx_switch(&fresh_ctx, &main_ctx);
}

static void
test_raw_fresh_fp_env(void)
{
	void *stack = mmap(NULL, RAW_STACK, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	CHECK(stack != MAP_FAILED);
	if (stack == MAP_FAILED)
		return;
	fesetround(FE_DOWNWARD);
	asynqi_ctx_make(&fresh_ctx, stack, RAW_STACK, fresh_entry, NULL);
	asynqi_ctx_switch(&main_ctx, &fresh_ctx);
	CHECK_I64(cur_round(), FE_DOWNWARD);
	fesetround(FE_TONEAREST);
	CHECK_I64(fresh_round, FE_TONEAREST);
	munmap(stack, RAW_STACK);
}

/* ---- Public API ------------------------------------------------------ */

#define FAN 1000
#define DEPTH 1000
#define BATCH 32

static asynq_debug_backend fan_dbg, batch_dbg;
static volatile int task_bad_doubles;

/* One leaf of the fan-out: awaits a debug item (so it suspends until the
 * flush) with doubles live across the suspension, returns item + i*i. */
static asynq_status
fan_leaf(asynq_task *t, void *arg)
{
	int64_t i = (int64_t)(intptr_t)arg;
	double d0 = (double)i * 0.5, d1 = (double)i + 0.25, d2 = 1.0 / (i + 1);
	volatile double e0 = d0, e1 = d1, e2 = d2;
	asynq_future *item = asynq_debug_item(&fan_dbg, i);
	asynq_status st = asynq_await(t, item);
	int64_t v = asynq_future_i64(item);

	asynq_future_rele(item);
	ASYNQ_TRY(st);
	if (d0 != e0 || d1 != e1 || d2 != e2)
		task_bad_doubles++;
	return asynq_return_i64(t, v + i * i);
}

/* The fan-out's root: FAN children awaited at once, their values summed. */
static asynq_status
fan_root(asynq_task *t, void *arg)
{
	asynq_future **fs = calloc(FAN, sizeof(*fs));
	int64_t sum = 0;
	asynq_status st;

	(void)arg;
	if (fs == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "no memory");
	for (int i = 0; i < FAN; i++)
		fs[i] = asynq_spawn(fan_leaf, (void *)(intptr_t)i);
	st = asynq_await_all(t, fs, FAN);
	for (int i = 0; i < FAN; i++)
		sum += asynq_future_i64(fs[i]);
	asynq_future_rele_n(fs, FAN);
	free(fs);
	ASYNQ_TRY(st);
	return asynq_return_i64(t, sum);
}

static void
test_fan_out(void)
{
	asynq_future *f;
	int64_t want = 0;

	asynq_debug_backend_init(&fan_dbg, "fan", false);
	f = asynq_spawn(fan_root, NULL);
	CHECK_I64(asynq_wait(f), ASYNQ_OK);
	for (int64_t i = 0; i < FAN; i++)
		want += i + i * i;
	CHECK_I64(asynq_future_i64(f), want);
	CHECK_I64(fan_dbg.flushes, 1);
	CHECK_I64(fan_dbg.last_size, FAN);
	CHECK_I64(task_bad_doubles, 0);
	asynq_future_rele(f);
	asynq_debug_backend_fini(&fan_dbg);
}

/* rec_sum(n) = n + rec_sum(n - 1), one task per level, each awaiting its
 * child on its own stack. */
static asynq_status
rec_sum(asynq_task *t, void *arg)
{
	int64_t n = (int64_t)(intptr_t)arg;
	double live = (double)n * 1.25;
	volatile double want_live = live;
	asynq_future *child;
	asynq_status st;
	int64_t v;

	if (n == 0)
		return asynq_return_i64(t, 0);
	child = asynq_spawn(rec_sum, (void *)(intptr_t)(n - 1));
	st = asynq_await(t, child);
	v = asynq_future_i64(child);
	asynq_future_rele(child);
	ASYNQ_TRY(st);
	if (live != want_live)
		task_bad_doubles++;
	if ((int64_t)asynq_task_depth(t) != DEPTH - n)
		return asynq_fail(t, ASYNQ_INTERNAL, "depth %zu at n=%lld",
		    asynq_task_depth(t), (long long)n);
	return asynq_return_i64(t, v + n);
}

static void
test_deep_recursion(void)
{
	asynq_future *f = asynq_spawn(rec_sum, (void *)(intptr_t)DEPTH);

	CHECK_I64(asynq_wait(f), ASYNQ_OK);
	CHECK_I64(asynq_future_i64(f), (int64_t)DEPTH * (DEPTH + 1) / 2);
	CHECK_I64(task_bad_doubles, 0);
	asynq_future_rele(f);
}

/* A child task reads the rounding mode it starts with; its parent runs in
 * FE_UPWARD around the await, which must neither leak into the child nor be
 * lost by the parent. */
static asynq_status
round_child(asynq_task *t, void *arg)
{
	(void)arg;
	return asynq_return_i64(t, cur_round());
}

static asynq_status
round_parent(asynq_task *t, void *arg)
{
	asynq_future *child;
	asynq_status st;
	int after;

	(void)arg;
	fesetround(FE_UPWARD);
	child = asynq_spawn(round_child, NULL);
	st = asynq_await(t, child);
	after = cur_round();
	fesetround(FE_TONEAREST);
	if (st == ASYNQ_OK && asynq_future_i64(child) != FE_TONEAREST)
		st = asynq_fail(t, ASYNQ_INTERNAL,
		    "child started with rounding mode %lld",
		    (long long)asynq_future_i64(child));
	asynq_future_rele(child);
	ASYNQ_TRY(st);
	return asynq_return_i64(t, after);
}

static void
test_task_fp_env(void)
{
	asynq_future *f = asynq_spawn(round_parent, NULL);
	asynq_status st = asynq_wait(f);

	CHECK_I64(st, ASYNQ_OK);
	if (st != ASYNQ_OK && asynq_future_error(f) != NULL)
		printf("  %s\n", asynq_error_message(asynq_future_error(f)));
	CHECK_I64(asynq_future_i64(f), FE_UPWARD);
	CHECK_I64(cur_round(), FE_TONEAREST);
	asynq_future_rele(f);
}

/* One of BATCH independent lookups, written one by one. */
static asynq_status
batch_leaf(asynq_task *t, void *arg)
{
	int64_t i = (int64_t)(intptr_t)arg;
	asynq_future *item = asynq_debug_item(&batch_dbg, 100 + i);
	asynq_status st = asynq_await(t, item);
	int64_t v = asynq_future_i64(item);

	asynq_future_rele(item);
	ASYNQ_TRY(st);
	return asynq_return_i64(t, v);
}

static void
test_batch_one_flush(void)
{
	asynq_future *fs[BATCH];
	asynq_sched_stats before, after;

	asynq_debug_backend_init(&batch_dbg, "batch", false);
	asynq_sched_stats_get(&before);
	for (int i = 0; i < BATCH; i++)
		fs[i] = asynq_spawn(batch_leaf, (void *)(intptr_t)i);
	CHECK_I64(asynq_wait_all(fs, BATCH), ASYNQ_OK);
	asynq_sched_stats_get(&after);
	for (int i = 0; i < BATCH; i++) {
		CHECK_I64(asynq_future_status(fs[i]), ASYNQ_OK);
		CHECK_I64(asynq_future_i64(fs[i]), 100 + i);
	}
	CHECK_I64(batch_dbg.flushes, 1);
	CHECK_I64(batch_dbg.items_flushed, BATCH);
	CHECK_I64(batch_dbg.last_size, BATCH);
	CHECK_I64(after.flushes - before.flushes, 1);
	CHECK(after.switches > before.switches);
	asynq_future_rele_n(fs, BATCH);
	asynq_debug_backend_fini(&batch_dbg);
}

/* A broken switch usually crashes rather than failing a check: report the
 * counts so far and the signal, on a stack of its own (the coroutine's may be
 * the thing that broke). */
static char crash_stack[64 * 1024];

static void
put_num(char **p, long v)
{
	char tmp[24];
	int n = 0;

	if (v < 0) {
		*(*p)++ = '-';
		v = -v;
	}
	do
		tmp[n++] = (char)('0' + v % 10);
	while ((v /= 10) != 0);
	while (n > 0)
		*(*p)++ = tmp[--n];
}

static void
crash_report(int sig)
{
	char buf[128], *p = buf;
	const char *msg = "FAIL crashed with signal ";

	while (*msg != '\0')
		*p++ = *msg++;
	put_num(&p, sig);
	*p++ = '\n';
	put_num(&p, passed);
	for (msg = " passed, "; *msg != '\0';)
		*p++ = *msg++;
	put_num(&p, failed + 1);
	for (msg = " failed\n"; *msg != '\0';)
		*p++ = *msg++;
	fflush(stdout);
	if (write(STDOUT_FILENO, buf, (size_t)(p - buf)) < 0)
		_exit(3);
	_exit(2);
}

static void
install_crash_report(void)
{
	stack_t ss = { .ss_sp = crash_stack, .ss_size = sizeof(crash_stack) };
	struct sigaction sa;
	int sigs[] = { SIGSEGV, SIGBUS, SIGILL, SIGTRAP, SIGFPE, SIGABRT };

	sigaltstack(&ss, NULL);
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = crash_report;
	sa.sa_flags = SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		sigaction(sigs[i], &sa, NULL);
}

int
main(void)
{
	install_crash_report();
	test_raw_switch();
	test_raw_fresh_fp_env();
	CHECK_I64(asynq_thread_init(NULL), ASYNQ_OK);
	test_fan_out();
	test_deep_recursion();
	test_batch_one_flush();
	test_task_fp_env();
	CHECK(cur_round() == FE_TONEAREST);
	asynq_thread_fini();
	printf("%d passed, %d failed\n", passed, failed);
	return failed == 0 ? 0 : 1;
}
