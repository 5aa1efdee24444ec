/* SPDX-License-Identifier: MIT */
/*
 * Helpers shared by the core tests. cmocka reports a failed assertion with a
 * longjmp back to its runner, which must never happen from a coroutine
 * stack: task bodies record what they observe with TCHECK and friends, and
 * the test body asserts after asynq_wait returns (ASSERT_TASK_CHECKS). The
 * teardown frees the thread's scheduler so every test starts from a fresh
 * one. Also: a small event log that tasks, backends and contexts append to.
 */
#ifndef ASYNQ_TESTS_CORE_TESTUTIL_H
#define ASYNQ_TESTS_CORE_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "asynq/asynq.h"
#include "asynq/testing.h"
#include "framework/core/platform.h"

/* What the checks made inside tasks found. */
typedef struct tu_state {
	int checks;      /* checks evaluated */
	int failures;    /* checks that failed */
	char first[512]; /* the first failure, for the report */
	char log[8192];  /* event log */
	size_t log_len;
} tu_state;

static inline tu_state *
tu(void)
{
	static tu_state state;
	return &state;
}

static inline void
tu_reset(void)
{
	memset(tu(), 0, sizeof(tu_state));
}

static inline void tu_record(int ok, const char *file, int line,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static inline void
tu_record(int ok, const char *file, int line, const char *fmt, ...)
{
	tu_state *s = tu();
	va_list ap;
	int n;

	s->checks++;
	if (ok)
		return;
	if (s->failures++ > 0)
		return;
	n = snprintf(s->first, sizeof(s->first), "%s:%d: ", file, line);
	if (n < 0 || (size_t)n >= sizeof(s->first))
		return;
	va_start(ap, fmt);
	vsnprintf(s->first + n, sizeof(s->first) - (size_t)n, fmt, ap);
	va_end(ap);
}

/* Checks usable inside task bodies, callbacks and backends. */
#define TCHECK(cond)                                                           \
	tu_record(!!(cond), __FILE__, __LINE__, "check failed: %s", #cond)

#define TCHECK_INT(a, b)                                                       \
	do {                                                                   \
		long long tu_a_ = (long long)(a), tu_b_ = (long long)(b);      \
		tu_record(tu_a_ == tu_b_, __FILE__, __LINE__,                  \
		    "%s == %s: %lld != %lld", #a, #b, tu_a_, tu_b_);           \
	} while (0)

#define TCHECK_STATUS(a, b)                                                    \
	do {                                                                   \
		asynq_status tu_a_ = (a), tu_b_ = (b);                         \
		tu_record(tu_a_ == tu_b_, __FILE__, __LINE__,                  \
		    "%s == %s: %s != %s", #a, #b, asynq_status_name(tu_a_),    \
		    asynq_status_name(tu_b_));                                 \
	} while (0)

/* ASSERT_TASK_CHECKS fails the test if any check made in a task failed, and
 * also if fewer than `min` checks ran (a task that never ran checks
 * nothing). Test body only. */
#define ASSERT_TASK_CHECKS(min)                                                \
	do {                                                                   \
		if (tu()->failures > 0)                                        \
			fail_msg("%d failed check(s) inside tasks; first: %s", \
			    tu()->failures, tu()->first);                      \
		if (tu()->checks < (min))                                      \
			fail_msg("only %d check(s) ran inside tasks, want %d", \
			    tu()->checks, (min));                              \
	} while (0)

/* Assert a status with its name in the failure message. */
#define assert_status(a, b)                                                    \
	do {                                                                   \
		asynq_status as_a_ = (a), as_b_ = (b);                         \
		if (as_a_ != as_b_)                                            \
			fail_msg("%s == %s: %s != %s", #a, #b,                 \
			    asynq_status_name(as_a_),                          \
			    asynq_status_name(as_b_));                         \
	} while (0)

/* Assert that haystack contains needle, printing both otherwise. */
#define assert_contains(haystack, needle)                                      \
	do {                                                                   \
		const char *ac_h_ = (haystack), *ac_n_ = (needle);             \
		if (ac_h_ == NULL || strstr(ac_h_, ac_n_) == NULL)             \
			fail_msg("%s does not contain \"%s\":\n%s", #haystack, \
			    ac_n_, ac_h_ != NULL ? ac_h_ : "(null)");          \
	} while (0)

/* tu_log appends a printf-style entry to the event log. */
static inline void tu_log(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

static inline void
tu_log(const char *fmt, ...)
{
	tu_state *s = tu();
	va_list ap;
	int n;

	if (s->log_len >= sizeof(s->log) - 1)
		return;
	va_start(ap, fmt);
	n = vsnprintf(s->log + s->log_len, sizeof(s->log) - s->log_len, fmt,
	    ap);
	va_end(ap);
	if (n > 0)
		s->log_len += (size_t)n;
	if (s->log_len >= sizeof(s->log))
		s->log_len = sizeof(s->log) - 1;
}

static inline const char *
tu_log_str(void)
{
	return tu()->log;
}

static inline void
tu_log_clear(void)
{
	tu()->log[0] = '\0';
	tu()->log_len = 0;
}

/* Default setup: reset the check state. Must not touch asynq, so a test may
 * call asynq_thread_init itself. */
static inline int
tu_setup(void **state)
{
	(void)state;
	tu_reset();
	return 0;
}

/* Default teardown: free the thread's scheduler. */
static inline int
tu_teardown(void **state)
{
	(void)state;
	asynq_thread_fini();
	return 0;
}

static inline asynq_sched_stats
tu_stats(void)
{
	asynq_sched_stats st;

	memset(&st, 0, sizeof(st));
	asynq_sched_stats_get(&st);
	return st;
}

#define TU_TEST(fn) cmocka_unit_test_setup_teardown(fn, tu_setup, tu_teardown)

#endif /* ASYNQ_TESTS_CORE_TESTUTIL_H */
