/* SPDX-License-Identifier: MIT */
/*
 * What every layer of the framework needs of its build: whether a
 * sanitizer is on (found from the compiler, so a plain -fsanitize=address
 * or -fsanitize=thread build works with no extra defines) and ASYNQ_ASSERT,
 * which checks an invariant the design notes state. Assertions stay in
 * release builds: each is a compare the code can afford, and a broken
 * invariant left running corrupts more than it reports.
 */
#ifndef ASYNQ_CORE_PLATFORM_H
#define ASYNQ_CORE_PLATFORM_H

#include <stdint.h>

#if defined(__SANITIZE_ADDRESS__)
#define ASYNQI_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define ASYNQI_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer) && !defined(ASYNQI_ASAN)
#define ASYNQI_ASAN 1
#endif
#if __has_feature(thread_sanitizer) && !defined(ASYNQI_TSAN)
#define ASYNQI_TSAN 1
#endif
#endif
#ifndef ASYNQI_ASAN
#define ASYNQI_ASAN 0
#endif
#ifndef ASYNQI_TSAN
#define ASYNQI_TSAN 0
#endif

/* asynqi_assert_fail writes "asynq: assertion failed: EXPR at FILE:LINE"
 * to stderr with write(2) alone and aborts. Any thread, any stack. */
void asynqi_assert_fail(const char *expr, const char *file, int line)
    __attribute__((noreturn, cold));

/* ASYNQ_ASSERT aborts with a message naming cond and where it failed
 * unless cond holds. */
#define ASYNQ_ASSERT(cond)                                                     \
	(__builtin_expect(!(cond), 0)                                          \
	        ? asynqi_assert_fail(#cond, __FILE__, __LINE__)                \
	        : (void)0)

/* The most room a buffer starts with from what the last one needed: under
 * malloc's mmap threshold, so a start costs no system call. */
#define ASYNQI_ROOM_MAX ((size_t)64 << 10)

/* asynqi_room_hint is the room a buffer (or array) starts with when the
 * last one needed `need`: the power of two >= need, at least lo (a power
 * of two) and at most hi. So a steady load grows nothing per use, and a
 * lighter one gives the room back. */
static inline size_t
asynqi_room_hint(size_t need, size_t lo, size_t hi)
{
	size_t h = lo;
	while (h < need && h < hi)
		h *= 2;
	return h;
}

/* asynqi_thread_rand returns 64 pseudo-random bits from a per-thread
 * xorshift generator seeded from the clock: for jitter and sampling, not
 * for anything an attacker may guess. Any thread, no lock. */
uint64_t asynqi_thread_rand(void);

#endif /* ASYNQ_CORE_PLATFORM_H */
