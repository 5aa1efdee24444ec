/* SPDX-License-Identifier: MIT */
/*
 * Coroutine contexts and their stacks (internal). A context is a saved stack
 * pointer; asynqi_ctx_switch (assembly, framework/arch/<cpu>/switch.S) moves
 * from one to another. Stacks come from a per-scheduler pool: mmap'd in
 * slabs, each stack with a guard page below it while the process has mapping
 * budget for one (vm.max_map_count), else with a canary word checked on every
 * switch out. Sanitizer fiber hooks are compiled in when the compiler
 * says a sanitizer is on (platform.h).
 */
#ifndef ASYNQ_CORE_CORO_H
#define ASYNQ_CORE_CORO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#if !defined(__x86_64__) && !defined(__aarch64__)
#define ASYNQI_UCONTEXT 1
#include <ucontext.h>
#endif

typedef struct asynqi_ctx {
#ifdef ASYNQI_UCONTEXT
	ucontext_t uc;
#else
	void *sp;
#endif
} asynqi_ctx;

/* asynqi_ctx_switch saves the current context in from and runs to. */
void asynqi_ctx_switch(asynqi_ctx *from, const asynqi_ctx *to);

#ifndef ASYNQI_UCONTEXT
/* ASYNQI_STACK_CALL says asynqi_stack_call exists (the assembly switch). */
#define ASYNQI_STACK_CALL 1

#include "framework/arch/frame.h"
#include "platform.h"

/* asynqi_fpenv_save reads the floating-point control state (slow on x86-64:
 * read it once for a run of calls). */
void asynqi_fpenv_save(asynqi_fpenv *env);

/* asynqi_stack_call runs fn(arg) with the stack pointer at top (16-byte
 * aligned) as an ordinary call and returns when fn returns; fn may switch
 * away and be switched back to in between. fn starts in the default
 * floating-point environment, as a new coroutine does; env, the caller's
 * state from asynqi_fpenv_save, is in force again when the call returns. */
void asynqi_stack_call(void *arg, void (*fn)(void *), void *top,
    const asynqi_fpenv *env);
#endif

/* asynqi_ctx_make prepares ctx to run entry(arg) on the stack [lo, lo+size)
 * the first time it is switched to. entry must never return. */
void asynqi_ctx_make(asynqi_ctx *ctx, void *lo, size_t size,
    void (*entry)(void *), void *arg);

/* Sanitizer state of one execution context (a coroutine stack or a
 * thread's own stack); empty in normal builds. */
typedef struct asynqi_fiber {
	void *tsan_fiber; /* TSan fiber handle, owned */
	/* TSan: the fiber of the call chain running on this stack: its own, or
	 * that of the stack that called into it (asynqi_fiber_call), since TSan
	 * keeps one shadow call stack per fiber. */
	void *tsan_cur;
	const void *stack_lo; /* ASan: the stack bounds */
	size_t stack_size;
	void *asan_fake; /* ASan fake-stack save slot */
} asynqi_fiber;

/* One coroutine stack; tasks take one when they start and give it back when
 * they finish, so its fiber record is reused with it. */
typedef struct asynqi_stack {
	void *lo;     /* lowest usable byte (above the guard page) */
	size_t size;  /* usable bytes */
	bool guarded; /* a PROT_NONE page lies just below lo */
	bool cold;    /* pages handed back to the kernel */
	bool idle;    /* in the pool */
	struct asynqi_stack *next;
	struct asynqi_slab *slab;
	asynqi_fiber fiber;
} asynqi_stack;

typedef struct asynqi_stack_pool {
	size_t stack_size;   /* usable bytes per stack, page multiple */
	size_t warm;         /* idle stacks kept resident */
	size_t guard_budget; /* stacks that may still get a guard page */
	asynqi_stack *hot;   /* LIFO of idle stacks with resident pages */
	asynqi_stack *cold;  /* idle stacks whose pages were handed back */
	size_t n_hot, n_idle;
	size_t in_use, peak; /* stacks held by tasks; most since last trim */
	struct asynqi_slab *slabs;
	size_t n_slabs;
	uint64_t mapped, guarded; /* stacks ever mapped, of which guarded */
	uint64_t unmapped;        /* stacks unmapped again */
} asynqi_stack_pool;

/* asynqi_stack_pool_init prepares a pool; guarded == 0 picks a budget from
 * vm.max_map_count. */
void asynqi_stack_pool_init(asynqi_stack_pool *p, size_t stack_size,
    size_t warm, size_t guarded);

/* asynqi_stack_pool_fini unmaps every slab; all stacks must be idle. */
void asynqi_stack_pool_fini(asynqi_stack_pool *p);

/* asynqi_stack_get_slow maps or warms a stack when the hot list is empty;
 * NULL when mapping fails. */
struct asynqi_stack *asynqi_stack_get_slow(asynqi_stack_pool *p);

/* asynqi_stack_get returns an idle stack or maps more; NULL when mapping
 * fails. */
static inline asynqi_stack *
asynqi_stack_get(asynqi_stack_pool *p)
{
	asynqi_stack *s = p->hot;
	if (__builtin_expect(s == NULL, 0))
		return asynqi_stack_get_slow(p);
	p->hot = s->next;
	p->n_hot--;
	p->n_idle--;
	s->idle = false;
	if (++p->in_use > p->peak)
		p->peak = p->in_use;
	return s;
}

/* asynqi_stack_put returns a stack to the pool. */
static inline void
asynqi_stack_put(asynqi_stack_pool *p, asynqi_stack *s)
{
	s->next = p->hot;
	s->idle = true;
	p->hot = s;
	p->n_hot++;
	p->n_idle++;
	p->in_use--;
}

/* asynqi_stack_pool_trim hands back the pages of idle stacks beyond both the
 * warm count and the most stacks in use since the previous trim, so a
 * workload that repeats keeps its stacks resident and a one-off burst is
 * released one idle period later. The scheduler calls it when it goes idle,
 * never per task. */
void asynqi_stack_pool_trim(asynqi_stack_pool *p);

/* asynqi_stack_pool_release keeps at most `keep` idle stacks: whole slabs
 * of idle stacks beyond it are unmapped (giving back their pages, page
 * tables, map entries and guard budget) and the other surplus stacks have
 * their pages handed back. For a scheduler that has been idle a while. */
void asynqi_stack_pool_release(asynqi_stack_pool *p, size_t keep);

/* asynqi_stack_top returns the initial stack pointer of s: its top, 16-byte
 * aligned. */
static inline void *
asynqi_stack_top(const asynqi_stack *s)
{
	return (void *)(((uintptr_t)s->lo + s->size) & ~(uintptr_t)15);
}

/* The canary of an unguarded stack: its lowest ASYNQI_CANARY_BYTES hold
 * this word. */
#define ASYNQI_CANARY_WORD 0xa5f1c0de5afe57acULL
#define ASYNQI_CANARY_BYTES 64

/* asynqi_stack_canary_ok says whether the canary at the bottom of an
 * unguarded stack is intact (always true for guarded stacks). */
static inline bool
asynqi_stack_canary_ok(const asynqi_stack *s)
{
	if (s->guarded)
		return true;
	const uint64_t *w = s->lo;
	return w[0] == ASYNQI_CANARY_WORD &&
	    w[ASYNQI_CANARY_BYTES / sizeof(*w) - 1] == ASYNQI_CANARY_WORD;
}

/* asynqi_stack_guard_hit says whether addr lies in s's guard page or canary
 * area. */
bool asynqi_stack_guard_hit(const asynqi_stack *s, const void *addr);

/* asynqi_fiber_init_thread describes the calling thread's own stack. */
void asynqi_fiber_init_thread(asynqi_fiber *f);

/* Without sanitizers the fiber hooks are empty and inline; with them,
 * coro.c defines them. */
#if ASYNQI_ASAN || ASYNQI_TSAN
#define ASYNQI_FIBER_HOOKS 1

/* asynqi_fiber_switch switches from one fiber to another; `dying` says the
 * current fiber will never run again. */
void asynqi_fiber_switch(asynqi_fiber *from, asynqi_ctx *from_ctx,
    asynqi_fiber *to, const asynqi_ctx *to_ctx, bool dying);

/* asynqi_fiber_call runs fn(arg) on stack `to` as a call from fiber `from`
 * (asynqi_stack_call), telling the sanitizers; fn ends with
 * asynqi_fiber_return(from). Returns when fn has returned. */
void asynqi_fiber_call(asynqi_fiber *from, asynqi_stack *to, void (*fn)(void *),
    void *arg, const asynqi_fpenv *env);

/* asynqi_fiber_return is the last thing a function run by asynqi_fiber_call
 * does before it returns to fiber `to`; its own stack is done with. */
void asynqi_fiber_return(asynqi_fiber *to);

/* asynqi_fiber_prepare readies a stack's fiber record before the first
 * switch to it (or call on it). */
void asynqi_fiber_prepare(asynqi_fiber *to, const asynqi_stack *s);

/* asynqi_fiber_started is called first thing on a new coroutine. */
void asynqi_fiber_started(asynqi_fiber *self);

#else

static inline void
asynqi_fiber_switch(asynqi_fiber *from, asynqi_ctx *from_ctx, asynqi_fiber *to,
    const asynqi_ctx *to_ctx, bool dying)
{
	(void)from;
	(void)to;
	(void)dying;
	asynqi_ctx_switch(from_ctx, to_ctx);
}

#ifdef ASYNQI_STACK_CALL
static inline void
asynqi_fiber_call(asynqi_fiber *from, asynqi_stack *to, void (*fn)(void *),
    void *arg, const asynqi_fpenv *env)
{
	(void)from;
	asynqi_stack_call(arg, fn, asynqi_stack_top(to), env);
}
#endif

static inline void
asynqi_fiber_return(asynqi_fiber *to)
{
	(void)to;
}

static inline void
asynqi_fiber_prepare(asynqi_fiber *to, const asynqi_stack *s)
{
	(void)to;
	(void)s;
}

static inline void
asynqi_fiber_started(asynqi_fiber *self)
{
	(void)self;
}

#endif

#endif /* ASYNQ_CORE_CORO_H */
