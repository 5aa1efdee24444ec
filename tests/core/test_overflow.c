/* SPDX-License-Identifier: MIT */
/*
 * Tests of stack-overflow reporting: a task that overflows its coroutine
 * stack must kill the process with a message that names the task and where
 * it was spawned, whether the stack has a guard page (SIGSEGV, reported by
 * the scheduler's handler on its alternate signal stack) or only a canary
 * (checked when the task is switched out, then abort). These are death
 * tests: each forks a child that overflows a stack while the parent reads
 * the child's stderr through a pipe and checks how it died. The parent never
 * makes a scheduler, so each child installs the SIGSEGV handler itself.
 *
 * Under ASan and TSan the handler is compiled out (the sanitizers own
 * SIGSEGV), so the tests are skipped there.
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#if ASYNQI_ASAN || ASYNQI_TSAN
#define SKIP_WITHOUT_HANDLER() skip()
#else
#define SKIP_WITHOUT_HANDLER() ((void)0)
#endif

/* Exit status of a child whose set-up was not what the test needs. */
#define CHILD_PREMISE_FAILED 2

/* Seconds a child may run before SIGALRM ends it. */
#define CHILD_TIMEOUT 30

/* ---- Child side ----------------------------------------------------- */

/* child_premise ends the child with CHILD_PREMISE_FAILED and a note on
 * stderr if ok is false. */
static void
child_premise(bool ok, const char *what)
{
	if (ok)
		return;
	fprintf(stderr, "test_overflow: premise failed: %s\n", what);
	_exit(CHILD_PREMISE_FAILED);
}

/* The stack size the children ask for: 16 KiB, or the pool's minimum of
 * four pages where pages are larger, so the size is what the pool maps. */
static size_t
child_stack_size(void)
{
	size_t ps = (size_t)sysconf(_SC_PAGESIZE);
	size_t want = 16 * 1024;
	return 4 * ps > want ? 4 * ps : want;
}

/* Depth at which the runaway recursion would stop; never reached. */
static volatile int recursion_limit = 1 << 30;

/* recurse_deeper calls itself with a 1 KiB frame written top down, as a
 * growing stack is, so the first write past the stack lands in the page just
 * below it. */
static int
recurse_deeper(int depth)
{
	volatile char frame[1024];

	for (size_t i = sizeof(frame); i-- > 0;)
		frame[i] = (char)depth;
	if (depth >= recursion_limit)
		return frame[0];
	/* Use the frame after the call so it is no tail call. */
	return recurse_deeper(depth + 1) + frame[(size_t)depth % sizeof(frame)];
}

static asynq_status
runaway_recursion_task(asynq_task *t, void *arg)
{
	asynq_sched_stats st;

	(void)arg;
	asynq_sched_stats_get(&st);
	/* Otherwise the recursion could run on into a neighbour stack. */
	child_premise(st.stacks_guarded == st.stacks_mapped,
	    "every stack has a guard page");
	return asynq_return_i64(t, recurse_deeper(0));
}

/* Child of test_overflow_guard_page_names_task. */
static void
guard_page_child(void)
{
	asynq_sched_cfg cfg = { .stack_size = child_stack_size() };
	asynq_future *f;

	child_premise(asynq_thread_init(&cfg) == ASYNQ_OK, "thread init");
	f = asynq_spawn(runaway_recursion_task, NULL);
	(void)asynq_wait(f);
	asynq_future_rele(f);
	asynq_thread_fini();
}

/* fill_local writes a local buffer of n bytes, top down. Called with more
 * bytes than the whole stack from near its top, it runs a little past the
 * stack's lowest byte: over the canary and a few hundred bytes into the
 * unused page that separates an unguarded stack from the one below it, and
 * no further. It returns before anything else runs on the overflowed part. */
static __attribute__((noinline)) int
fill_local(size_t n)
{
	volatile char buf[n];

	for (size_t i = n; i-- > 0;)
		buf[i] = (char)i;
	return buf[0];
}

/* Bytes fill_local writes past the stack's lowest byte, beyond the depth of
 * the frames above it: enough to cover the canary, far less than a page. */
#define CANARY_OVERRUN 256

static asynq_status
canary_overrun_task(asynq_task *t, void *arg)
{
	asynq_sched_stats st;

	(void)arg;
	asynq_sched_stats_get(&st);
	child_premise(st.stacks_guarded == 1, "exactly one guarded stack");
	(void)fill_local(child_stack_size() + CANARY_OVERRUN);
	/* Suspending switches the task out: the canary is checked there. */
	ASYNQ_TRY(asynq_debug_sync(t));
	return asynq_return_i64(t, 1);
}

static asynq_status
blocked_task(asynq_task *t, void *arg)
{
	(void)arg;
	return asynq_debug_sync(t);
}

/* Tasks that hold a stack each while the overflowing task starts: more than
 * a slab, so the one guarded stack (in the first slab, whichever way the pool
 * hands its stacks out) is taken and the overflowing task's stack is
 * unguarded. */
#define BLOCKERS 32

static asynq_status
canary_parent_task(asynq_task *t, void *arg)
{
	asynq_future *fs[BLOCKERS + 1];
	asynq_status st;

	(void)arg;
	for (size_t i = 0; i < BLOCKERS; i++)
		fs[i] = asynq_spawn(blocked_task, NULL);
	/* Children start in array order: the blockers first. */
	fs[BLOCKERS] = asynq_spawn(canary_overrun_task, NULL);
	st = asynq_await_all(t, fs, BLOCKERS + 1);
	asynq_future_rele_n(fs, BLOCKERS + 1);
	return st;
}

/* Child of test_overflow_canary_names_task. */
static void
canary_child(void)
{
	asynq_sched_cfg cfg = {
		.stack_size = child_stack_size(),
		.guarded_stacks = 1,
	};
	asynq_future *f;

	child_premise(asynq_thread_init(&cfg) == ASYNQ_OK, "thread init");
	f = asynq_spawn(canary_parent_task, NULL);
	(void)asynq_wait(f);
	asynq_future_rele(f);
	asynq_thread_fini();
}

/* A task with a frame larger than its whole stack: without stack-clash
 * probes its first write would land beyond the guard page. */
static asynq_status
big_frame_task(asynq_task *t, void *arg)
{
	volatile char big[80 * 1024];

	(void)arg;
	big[0] = 1;
	big[sizeof(big) - 1] = 2;
	return asynq_return_i64(t, big[0] + big[sizeof(big) - 1]);
}

/* Child of test_overflow_large_frame_names_task: the default stack. */
static void
big_frame_child(void)
{
	asynq_future *f;

	child_premise(asynq_thread_init(NULL) == ASYNQ_OK, "thread init");
	f = asynq_spawn(big_frame_task, NULL);
	(void)asynq_wait(f);
	asynq_future_rele(f);
	asynq_thread_fini();
}

static void
own_segv(int sig)
{
	(void)sig;
	_exit(3);
}

/* Child of test_overflow_program_handler_kept: a SIGSEGV handler of the
 * program's own stays in place (exit 0), and the alternate stack is left
 * as it was. */
static void
own_handler_child(void)
{
	struct sigaction sa, cur;
	stack_t before, after;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = own_segv;
	sigemptyset(&sa.sa_mask);
	child_premise(sigaction(SIGSEGV, &sa, NULL) == 0, "sigaction");
	/* (A sanitizer's runtime may have set one already.) */
	child_premise(sigaltstack(NULL, &before) == 0, "sigaltstack");
	child_premise(asynq_thread_init(NULL) == ASYNQ_OK, "thread init");
	child_premise(sigaction(SIGSEGV, NULL, &cur) == 0, "sigaction");
	child_premise(sigaltstack(NULL, &after) == 0, "sigaltstack");
	asynq_thread_fini();
	_exit(cur.sa_handler == own_segv && after.ss_sp == before.ss_sp &&
	            after.ss_flags == before.ss_flags
	        ? 0
	        : 1);
}

/* Child of test_overflow_assertion_says_what: asynq_batch_defer outside a
 * flush breaks an invariant batch.h states. */
static asynq_batch *
assert_alloc(asynq_backend *be)
{
	(void)be;
	return calloc(1, sizeof(asynq_batch));
}

static asynq_status
assert_flush(asynq_batch *b)
{
	(void)b;
	return ASYNQ_OK;
}

static void
assert_free(asynq_batch *b)
{
	free(b);
}

static void
assert_child(void)
{
	static const asynq_backend_ops ops = {
		.batch_alloc = assert_alloc,
		.flush = assert_flush,
		.batch_free = assert_free,
	};
	asynq_backend be;

	child_premise(asynq_thread_init(NULL) == ASYNQ_OK, "thread init");
	asynq_backend_init(&be, &ops, "assert-test");
	asynq_future *f = asynq_batch_add(&be, 1, NULL);
	child_premise(f != NULL, "batch add");
	asynq_batch_defer(asynq_item_batch(f));
	_exit(0); /* not reached */
}

/* ---- Parent side ---------------------------------------------------- */

/* How a child ended. */
typedef struct death {
	int status;     /* from waitpid */
	char err[8192]; /* the start of its stderr */
} death;

/* child_start readies a forked child: stderr into the pipe, the signal
 * dispositions of a plain program (cmocka catches SIGSEGV in the process
 * that runs the tests, and would return into its runner in the child), no
 * core file, and a time limit. */
static void
child_start(int err_fd)
{
	static const int sigs[] = { SIGSEGV, SIGBUS, SIGABRT, SIGILL, SIGFPE };
	struct rlimit no_core = { 0, 0 };

	if (dup2(err_fd, STDERR_FILENO) < 0)
		_exit(127);
	close(err_fd);
	for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
		signal(sigs[i], SIG_DFL);
	(void)setrlimit(RLIMIT_CORE, &no_core);
	alarm(CHILD_TIMEOUT);
}

/* run_child runs fn in a forked child and records how the child ended. */
static void
run_child(void (*fn)(void), death *d)
{
	int fds[2];
	size_t len = 0;
	pid_t pid;

	memset(d, 0, sizeof(*d));
	assert_int_equal(pipe(fds), 0);
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		child_start(fds[1]);
		fn();
		_exit(0);
	}
	close(fds[1]);
	for (;;) {
		char chunk[512];
		ssize_t n = read(fds[0], chunk, sizeof(chunk));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		/* Keep the start; drain the rest so the child never blocks. */
		size_t room = sizeof(d->err) - 1 - len;
		size_t take = (size_t)n < room ? (size_t)n : room;
		memcpy(d->err + len, chunk, take);
		len += take;
	}
	d->err[len] = '\0';
	close(fds[0]);
	while (waitpid(pid, &d->status, 0) < 0)
		assert_int_equal(errno, EINTR);
}

/* Fails the test unless the child was killed by sig. */
static void
assert_killed_by(const death *d, int sig)
{
	if (WIFSIGNALED(d->status) && WTERMSIG(d->status) == sig)
		return;
	if (WIFSIGNALED(d->status))
		fail_msg("child killed by signal %d (%s), want %d (%s); its "
		         "stderr:\n%s",
		    WTERMSIG(d->status), strsignal(WTERMSIG(d->status)), sig,
		    strsignal(sig), d->err);
	fail_msg("child exited with status %d, want it killed by signal %d "
	         "(%s); its stderr:\n%s",
	    WEXITSTATUS(d->status), sig, strsignal(sig), d->err);
}

/* ---- Tests ---------------------------------------------------------- */

static void
test_overflow_guard_page_names_task(void **state)
{
	death d;

	(void)state;
	SKIP_WITHOUT_HANDLER();
	run_child(guard_page_child, &d);
	assert_killed_by(&d, SIGSEGV);
	assert_contains(d.err, "stack overflow in task runaway_recursion_task");
	assert_contains(d.err, "spawned at " __FILE__ ":");
}

static void
test_overflow_canary_names_task(void **state)
{
	death d;

	(void)state;
	SKIP_WITHOUT_HANDLER();
	run_child(canary_child, &d);
	assert_killed_by(&d, SIGABRT);
	assert_contains(d.err, "stack overflow in task canary_overrun_task");
	assert_contains(d.err, "spawned at " __FILE__ ":");
}

/* An 80 KiB array on a 64 KiB stack (the default): stack-clash probes (the
 * build's default flags) touch the guard page first, so it is reported as an
 * overflow of that task, not a bare segmentation fault. */
static void
test_overflow_large_frame_names_task(void **state)
{
	death d;

	(void)state;
	SKIP_WITHOUT_HANDLER();
	run_child(big_frame_child, &d);
	assert_killed_by(&d, SIGSEGV);
	assert_contains(d.err, "stack overflow in task big_frame_task");
	assert_contains(d.err, "default 64 KiB");
}

/* A program's own SIGSEGV handler is never replaced. */
static void
test_overflow_program_handler_kept(void **state)
{
	death d;

	(void)state;
	run_child(own_handler_child, &d);
	if (!WIFEXITED(d.status) || WEXITSTATUS(d.status) != 0)
		fail_msg("the program's SIGSEGV handler was replaced (status "
		         "%d); stderr:\n%s",
		    d.status, d.err);
}

/* A broken invariant aborts naming the condition and the place. */
static void
test_overflow_assertion_says_what(void **state)
{
	death d;

	(void)state;
	run_child(assert_child, &d);
	assert_killed_by(&d, SIGABRT);
	assert_contains(d.err,
	    "asynq: assertion failed: b->state == BATCH_FLUSHING at ");
	assert_contains(d.err, "batch.c:");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_overflow_guard_page_names_task),
		cmocka_unit_test(test_overflow_canary_names_task),
		cmocka_unit_test(test_overflow_large_frame_names_task),
		cmocka_unit_test(test_overflow_program_handler_kept),
		cmocka_unit_test(test_overflow_assertion_says_what),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
