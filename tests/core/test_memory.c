/* SPDX-License-Identifier: MIT */
/*
 * Memory a burst leaves behind: a scheduler that has been idle for
 * asynq_sched_cfg.idle_trim_ms hands back its surplus stacks (unmapped
 * beyond warm_stacks) and cached records; asynq_sched_trim does the same at
 * once; and a scheduler that keeps working keeps what its last burst needed.
 * The outcomes are read from asynq_sched_stats: stacks mapped now, idle ones
 * with resident pages, records cached, trims done.
 */
#include "testutil.h"

#define MS 1000000ull
#define WARM 4
#define BURST 200 /* parked at once: well over WARM, many slabs */

static asynq_status
parked_task(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_status st = asynq_debug_sync(t);
	TCHECK_STATUS(st, ASYNQ_OK);
	return st;
}

/* Parks BURST tasks at once on one debug batch and lets them finish. */
static void
burst(void)
{
	static asynq_future *fs[BURST];
	for (int i = 0; i < BURST; i++)
		fs[i] = asynq_spawn(parked_task, NULL);
	assert_status(asynq_wait_all(fs, BURST), ASYNQ_OK);
	asynq_future_rele_n(fs, BURST);
	ASSERT_TASK_CHECKS(BURST);
}

static void
init_sched(uint32_t idle_trim_ms)
{
	asynq_sched_cfg cfg = {
		.warm_stacks = WARM,
		.idle_trim_ms = idle_trim_ms,
	};
	assert_status(asynq_thread_init(&cfg), ASYNQ_OK);
}

/* An idle scheduler, here one asleep on a timer, gives a burst's stacks and
 * records back once idle_trim_ms has passed, before the timer fires. */
static void
test_memory_idle_scheduler_gives_back_a_burst(void **state)
{
	(void)state;
	init_sched(1);
	burst();
	asynq_sched_stats st = tu_stats();
	assert_true(st.stacks_held >= BURST);
	assert_true(st.stacks_warm >= BURST); /* the burst may come again */
	assert_int_equal(st.trims, 0);

	asynq_future *f = asynq_sleep(50 * MS);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	st = tu_stats();
	assert_int_equal(st.trims, 1);
	/* Whole slabs of 16 idle stacks are unmapped down to WARM. */
	assert_true(st.stacks_held < WARM + 16);
	assert_true(st.stacks_warm <= WARM);
	assert_true(st.records_cached <= 2 * 256);
	assert_int_equal(st.tasks_live, 0);
}

/* asynq_sched_trim does at once what an idle period does. */
static void
test_memory_trim_now(void **state)
{
	(void)state;
	init_sched(0);
	burst();
	asynq_sched_trim();
	asynq_sched_stats st = tu_stats();
	assert_int_equal(st.trims, 1);
	assert_true(st.stacks_held < WARM + 16);
	assert_true(st.stacks_warm <= WARM);
	assert_true(st.stacks_idle == st.stacks_held);
	/* The pool maps again what the next burst needs. */
	burst();
	st = tu_stats();
	assert_true(st.stacks_held >= BURST);
}

/* Without an idle period, a scheduler keeps what its last burst needed:
 * waits that end do not drop the stacks a repeating burst reuses. */
static void
test_memory_busy_scheduler_keeps_its_stacks(void **state)
{
	(void)state;
	init_sched(0);
	burst();
	uint64_t mapped = tu_stats().stacks_mapped;
	for (int i = 0; i < 3; i++)
		burst();
	asynq_sched_stats st = tu_stats();
	assert_int_equal(st.trims, 0);
	assert_true(st.stacks_warm >= BURST);
	assert_int_equal(st.stacks_mapped, mapped); /* nothing mapped again */
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_memory_idle_scheduler_gives_back_a_burst),
		TU_TEST(test_memory_trim_now),
		TU_TEST(test_memory_busy_scheduler_keeps_its_stacks),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
