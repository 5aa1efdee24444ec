/* SPDX-License-Identifier: MIT */
/*
 * Coroutine stacks and contexts: the stack pool, the first frame of a new
 * coroutine, and the sanitizer fiber hooks around the assembly switch.
 *
 * Design notes:
 * - Stacks are mapped in slabs of ASYNQI_SLAB stacks with one mmap. Each
 *   guard page splits the mapping, costing two kernel map entries per stack;
 *   a process may have vm.max_map_count of them (65,530 by default), so only
 *   a budget of stacks gets a guard page. The others carry a canary at their
 *   lowest bytes, checked each time their task is switched out: an overflow
 *   there is reported at the next switch instead of at the faulting write.
 * - Idle stacks beyond the warm count and the recent peak have their pages
 *   handed back with madvise(MADV_DONTNEED) when an outermost wait ends
 *   (asynqi_stack_pool_trim), never on each put: a page fault costs more than
 *   a task here, and a repeating burst of tasks reuses its stacks. After an
 *   idle period the scheduler calls asynqi_stack_pool_release, which unmaps
 *   whole slabs of idle stacks beyond the warm count (their page tables, map
 *   entries and guard budget go back too) and drops the pages of the rest.
 *   So 100,000 tasks parked at once do not stay resident after they finish.
 *   Unguarded stacks get their canary back when they are taken from the
 *   cold list.
 * - A task that its awaiter starts runs as a plain call onto its stack
 *   (asynqi_fiber_call). For TSan the call chain stays one fiber: the called
 *   stack's fiber record points at its caller's TSan fiber (tsan_cur), so
 *   the shadow call stack sees balanced calls and returns, and a switch back
 *   to the called task lands in the fiber that holds its frames. ASan is told
 *   of the stack change both ways.
 * - Stacks are not coloured (each one's top is page-aligned): starting
 *   stacks 0-2 KiB below their tops made 10,000 suspended tasks resume ~30%
 *   slower here on a busy machine, and helped a 500-deep chain by no more
 *   than the noise.
 * - Everything here runs on the scheduler's thread; nothing is shared.
 */
#include "coro.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "framework/arch/frame.h"

#if ASYNQI_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#if ASYNQI_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#define ASYNQI_SLAB 16
#define CANARY_BYTES ASYNQI_CANARY_BYTES
static const uint64_t canary_word = ASYNQI_CANARY_WORD;

struct asynqi_slab {
	struct asynqi_slab *next;
	void *base;
	size_t len;
	asynqi_stack stacks[ASYNQI_SLAB];
};

static size_t
page_size(void)
{
	/* Not cached in a static: schedulers start on many threads at once. */
	return (size_t)sysconf(_SC_PAGESIZE);
}

static size_t
default_guard_budget(void)
{
	long max_maps = 65530;
	FILE *f = fopen("/proc/sys/vm/max_map_count", "r");
	if (f != NULL) {
		if (fscanf(f, "%ld", &max_maps) != 1)
			max_maps = 65530;
		fclose(f);
	}
	/* Two map entries per guarded stack; leave a quarter of the table to
	 * the rest of the process and to other schedulers. */
	return (size_t)(max_maps / 2) * 3 / 4 / 2;
}

void
asynqi_stack_pool_init(asynqi_stack_pool *p, size_t stack_size, size_t warm,
    size_t guarded)
{
	size_t ps = page_size();
	memset(p, 0, sizeof(*p));
	if (stack_size < 4 * ps)
		stack_size = 4 * ps;
	p->stack_size = (stack_size + ps - 1) / ps * ps;
	p->warm = warm;
	p->guard_budget = guarded != 0 ? guarded : default_guard_budget();
}

void
asynqi_stack_pool_fini(asynqi_stack_pool *p)
{
	struct asynqi_slab *s = p->slabs;
	while (s != NULL) {
		struct asynqi_slab *next = s->next;
		for (int i = 0; i < ASYNQI_SLAB; i++) {
#if ASYNQI_TSAN
			if (s->stacks[i].fiber.tsan_fiber != NULL)
				__tsan_destroy_fiber(
				    s->stacks[i].fiber.tsan_fiber);
#endif
		}
		munmap(s->base, s->len);
		free(s);
		s = next;
	}
	memset(p, 0, sizeof(*p));
}

static void
put_canary(asynqi_stack *s)
{
	uint64_t *w = s->lo;
	for (size_t i = 0; i < CANARY_BYTES / sizeof(*w); i++)
		w[i] = canary_word;
}

bool
asynqi_stack_guard_hit(const asynqi_stack *s, const void *addr)
{
	const char *a = addr, *lo = s->lo;
	if (s->guarded)
		return a >= lo - page_size() && a < lo;
	return a >= lo - page_size() && a < lo + CANARY_BYTES;
}

static int
map_slab(asynqi_stack_pool *p)
{
	size_t ps = page_size();
	size_t each = p->stack_size + ps; /* guard page (or gap) + body */
	size_t len = each * ASYNQI_SLAB;
	struct asynqi_slab *slab = calloc(1, sizeof(*slab));
	if (slab == NULL)
		return ENOMEM;
	void *base = mmap(NULL, len, PROT_READ | PROT_WRITE,
	    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (base == MAP_FAILED) {
		free(slab);
		return ENOMEM;
	}
	slab->base = base;
	slab->len = len;
	for (int i = 0; i < ASYNQI_SLAB; i++) {
		asynqi_stack *s = &slab->stacks[i];
		char *guard = (char *)base + (size_t)i * each;
		s->lo = guard + ps;
		s->size = p->stack_size;
		s->slab = slab;
		s->idle = true;
		if (p->guard_budget > 0 &&
		    mprotect(guard, ps, PROT_NONE) == 0) {
			s->guarded = true;
			p->guard_budget--;
			p->guarded++;
		} else {
			p->guard_budget = 0;
			put_canary(s);
		}
		s->next = p->hot;
		p->hot = s;
		p->n_hot++;
		p->n_idle++;
		p->mapped++;
	}
	slab->next = p->slabs;
	p->slabs = slab;
	p->n_slabs++;
	return 0;
}

asynqi_stack *
asynqi_stack_get_slow(asynqi_stack_pool *p)
{
	asynqi_stack *s;
	if (p->cold == NULL) {
		if (map_slab(p) != 0)
			return NULL;
		return asynqi_stack_get(p); /* map_slab filled the hot list */
	}
	s = p->cold;
	p->cold = s->next;
	s->cold = false;
	if (!s->guarded)
		put_canary(s);
	p->n_idle--;
	s->idle = false;
	if (++p->in_use > p->peak)
		p->peak = p->in_use;
	return s;
}

/* Hands back the pages of hot stacks beyond `keep`. */
static void
cool(asynqi_stack_pool *p, size_t keep)
{
	while (p->n_hot > keep) {
		asynqi_stack *s = p->hot;
		p->hot = s->next;
		p->n_hot--;
		/* Keep the mapping (and its guard), drop the pages. */
		madvise(s->lo, s->size, MADV_DONTNEED);
		s->cold = true;
		s->next = p->cold;
		p->cold = s;
	}
}

void
asynqi_stack_pool_trim(asynqi_stack_pool *p)
{
	size_t keep = p->warm > p->peak ? p->warm : p->peak;
	p->peak = p->in_use;
	cool(p, keep);
}

static bool
slab_idle(const struct asynqi_slab *slab)
{
	for (int i = 0; i < ASYNQI_SLAB; i++)
		if (!slab->stacks[i].idle)
			return false;
	return true;
}

static void
slab_unmap(asynqi_stack_pool *p, struct asynqi_slab *slab)
{
	for (int i = 0; i < ASYNQI_SLAB; i++) {
		asynqi_stack *s = &slab->stacks[i];
#if ASYNQI_TSAN
		if (s->fiber.tsan_fiber != NULL)
			__tsan_destroy_fiber(s->fiber.tsan_fiber);
#endif
		if (s->guarded)
			p->guard_budget++;
	}
	munmap(slab->base, slab->len);
	free(slab);
	p->n_idle -= ASYNQI_SLAB;
	p->unmapped += ASYNQI_SLAB;
	p->n_slabs--;
}

void
asynqi_stack_pool_release(asynqi_stack_pool *p, size_t keep)
{
	if (keep < p->warm)
		keep = p->warm;
	p->peak = p->in_use;
	if (p->n_idle <= keep)
		return;
	/* Whole idle slabs first: they give back everything. */
	struct asynqi_slab **sp = &p->slabs;
	bool unmapped = false;
	while (*sp != NULL && p->n_idle >= keep + ASYNQI_SLAB) {
		struct asynqi_slab *slab = *sp;
		if (!slab_idle(slab)) {
			sp = &slab->next;
			continue;
		}
		*sp = slab->next;
		slab_unmap(p, slab);
		unmapped = true;
	}
	if (unmapped) {
		/* Rebuild the idle lists from the slabs left. */
		p->hot = p->cold = NULL;
		p->n_hot = 0;
		for (struct asynqi_slab *slab = p->slabs; slab != NULL;
		     slab = slab->next) {
			for (int i = ASYNQI_SLAB - 1; i >= 0; i--) {
				asynqi_stack *s = &slab->stacks[i];
				if (!s->idle)
					continue;
				if (s->cold) {
					s->next = p->cold;
					p->cold = s;
				} else {
					s->next = p->hot;
					p->hot = s;
					p->n_hot++;
				}
			}
		}
	}
	cool(p, keep);
}

#ifdef ASYNQI_UCONTEXT

void
asynqi_ctx_switch(asynqi_ctx *from, const asynqi_ctx *to)
{
	swapcontext(&from->uc, &to->uc);
}

void
asynqi_ctx_make(asynqi_ctx *ctx, void *lo, size_t size, void (*entry)(void *),
    void *arg)
{
	getcontext(&ctx->uc);
	ctx->uc.uc_stack.ss_sp = lo;
	ctx->uc.uc_stack.ss_size = size;
	ctx->uc.uc_link = NULL;
	/* makecontext passes int arguments; split the pointer in two. */
	uintptr_t a = (uintptr_t)arg;
	makecontext(&ctx->uc, (void (*)(void))entry, 2,
	    (unsigned)(a & 0xffffffffu), (unsigned)((uint64_t)a >> 32));
}

#else

extern void asynqi_ctx_trampoline(void);

void
asynqi_ctx_make(asynqi_ctx *ctx, void *lo, size_t size, void (*entry)(void *),
    void *arg)
{
	uintptr_t top = ((uintptr_t)lo + size) & ~(uintptr_t)15;
	struct asynqi_frame *f =
	    (struct asynqi_frame *)(top - sizeof(struct asynqi_frame));
	memset(f, 0, sizeof(*f));
#if defined(__x86_64__)
	/* After `ret` pops the trampoline address, rsp is 16-byte aligned; the
	 * trampoline's call then gives entry the ABI's entry alignment. */
	f->mxcsr = 0x1f80;
	f->fpucw = 0x037f;
	f->ret = (uint64_t)(uintptr_t)asynqi_ctx_trampoline;
#elif defined(__aarch64__)
	/* `ret` jumps to the trampoline (x30) with sp back at top, 16-byte
	 * aligned. FPCR starts at its reset value (round to nearest, no traps,
	 * no flush-to-zero), as MXCSR does on x86-64: a new coroutine gets the
	 * default floating-point environment, not whichever mode the context
	 * that happened to start it was in. */
	f->x[11] = (uint64_t)(uintptr_t)asynqi_ctx_trampoline; /* x30 */
	f->fpcr = 0;
#endif
	ASYNQI_FRAME_ARG(f) = (uint64_t)(uintptr_t)arg;
	ASYNQI_FRAME_FN(f) = (uint64_t)(uintptr_t)entry;
	ctx->sp = f;
}

#endif

void
asynqi_fiber_init_thread(asynqi_fiber *f)
{
	memset(f, 0, sizeof(*f));
#if ASYNQI_ASAN
	pthread_attr_t attr;
	if (pthread_getattr_np(pthread_self(), &attr) == 0) {
		void *lo;
		size_t size;
		if (pthread_attr_getstack(&attr, &lo, &size) == 0) {
			f->stack_lo = lo;
			f->stack_size = size;
		}
		pthread_attr_destroy(&attr);
	}
#endif
#if ASYNQI_TSAN
	f->tsan_fiber = __tsan_get_current_fiber();
	f->tsan_cur = f->tsan_fiber;
#endif
}

#ifdef ASYNQI_FIBER_HOOKS
void
asynqi_fiber_prepare(asynqi_fiber *to, const asynqi_stack *s)
{
	(void)to;
	(void)s;
#if ASYNQI_ASAN
	if (s != NULL) {
		to->stack_lo = s->lo;
		to->stack_size = s->size;
		/* A task that finished never returned from its outer frames, so
		 * their redzones are still poisoned: clear them before the
		 * stack runs another task. */
		__asan_unpoison_memory_region(s->lo, s->size);
	}
#endif
#if ASYNQI_TSAN
	if (s != NULL && to->tsan_fiber == NULL)
		to->tsan_fiber = __tsan_create_fiber(0);
	to->tsan_cur = to->tsan_fiber;
#endif
}

void
asynqi_fiber_switch(asynqi_fiber *from, asynqi_ctx *from_ctx, asynqi_fiber *to,
    const asynqi_ctx *to_ctx, bool dying)
{
	(void)dying;
#if ASYNQI_ASAN
	__sanitizer_start_switch_fiber(dying ? NULL : &from->asan_fake,
	    to->stack_lo, to->stack_size);
#endif
#if ASYNQI_TSAN
	__tsan_switch_to_fiber(to->tsan_cur, 0);
#endif
	(void)to;
	asynqi_ctx_switch(from_ctx, to_ctx);
#if ASYNQI_ASAN
	__sanitizer_finish_switch_fiber(from->asan_fake, NULL, NULL);
#endif
	(void)from;
}

#ifdef ASYNQI_STACK_CALL
void
asynqi_fiber_call(asynqi_fiber *from, asynqi_stack *to, void (*fn)(void *),
    void *arg, const asynqi_fpenv *env)
{
#if ASYNQI_ASAN
	__sanitizer_start_switch_fiber(&from->asan_fake, to->lo, to->size);
#endif
#if ASYNQI_TSAN
	/* No TSan switch: the call and its return stay on one shadow call
	 * stack, the caller's; a switch back to this stack must find it. */
	to->fiber.tsan_cur = from->tsan_cur;
#endif
	asynqi_stack_call(arg, fn, asynqi_stack_top(to), env);
#if ASYNQI_ASAN
	__sanitizer_finish_switch_fiber(from->asan_fake, NULL, NULL);
#endif
	(void)from;
}
#endif

void
asynqi_fiber_return(asynqi_fiber *to)
{
	(void)to;
#if ASYNQI_ASAN
	__sanitizer_start_switch_fiber(NULL, to->stack_lo, to->stack_size);
#endif
}

void
asynqi_fiber_started(asynqi_fiber *self)
{
	(void)self;
#if ASYNQI_ASAN
	__sanitizer_finish_switch_fiber(NULL, NULL, NULL);
#endif
}
#endif
