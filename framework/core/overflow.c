/* SPDX-License-Identifier: MIT */
/*
 * Stack overflow reports: a task that overruns its stack is named, with
 * where it was spawned and the tasks that created it, before the process
 * dies. A guarded stack's overrun faults on its guard page and is caught
 * by a SIGSEGV handler on the thread's alternate stack; an unguarded
 * stack's canary is checked by the scheduler on each switch out.
 *
 * Design notes:
 * - The handler is installed once per process, only if SIGSEGV has no
 *   handler of the program's own (ASYNQ_NO_SEGV_HANDLER: never), and not
 *   under a sanitizer. It reports with write(2) alone (async-signal-safe),
 *   then restores the default action and returns, so the fault repeats and
 *   kills the process where it happened (a core dump at the right address);
 *   a SIGSEGV sent by kill() is raised again instead.
 */
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* Names the task whose stack overflowed (write(2) only: we may be on a
 * signal's alternate stack or on the overrun stack itself). */
static void
overflow_report(const asynq_task *t, const char *how)
{
	asynqi_sig_write("asynq: stack overflow in task ");
	asynqi_sig_write(t->name);
	asynqi_sig_write(", spawned at ");
	asynqi_sig_write(t->file);
	asynqi_sig_write(":");
	asynqi_sig_write_int(t->line);
	asynqi_sig_write(" (");
	asynqi_sig_write(how);
	asynqi_sig_write("; raise asynq_sched_cfg.stack_size, "
	                 "default 64 KiB, or keep large arrays off task "
	                 "stacks)\n");
	for (const asynq_task *c = t->creator; c != NULL; c = c->creator) {
		asynqi_sig_write("  created by task ");
		asynqi_sig_write(c->name);
		asynqi_sig_write("\n");
	}
}

#if !ASYNQI_ASAN && !ASYNQI_TSAN
/* Installed once per process, and only if SIGSEGV had no handler of the
 * program's own (a crash reporter's stays in charge). */
static pthread_once_t segv_once = PTHREAD_ONCE_INIT;
static bool segv_installed;

static void
segv_handler(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	asynq_sched *s = asynqi_tls_sched;
	asynq_task *t = s != NULL ? s->current : NULL;
	if (t != NULL && t->stack != NULL &&
	    asynqi_stack_guard_hit(t->stack, si->si_addr))
		overflow_report(t, "the task's stack hit its guard page");
	/* The default action, for the same fault: returning re-runs the
	 * faulting instruction, which now kills the process with a core
	 * dump at the right address. */
	struct sigaction dfl;
	memset(&dfl, 0, sizeof(dfl));
	dfl.sa_handler = SIG_DFL;
	sigemptyset(&dfl.sa_mask);
	(void)sigaction(sig, &dfl, NULL);
	if (si->si_code <= 0)
		(void)raise(sig); /* sent, not a fault: nothing re-runs */
}

static void
install_segv(void)
{
	struct sigaction old;
	if (getenv("ASYNQ_NO_SEGV_HANDLER") != NULL ||
	    sigaction(SIGSEGV, NULL, &old) != 0 ||
	    (old.sa_flags & SA_SIGINFO) != 0 || old.sa_handler != SIG_DFL)
		return;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = segv_handler;
	sa.sa_flags = SA_SIGINFO | SA_ONSTACK;
	sigemptyset(&sa.sa_mask);
	segv_installed = sigaction(SIGSEGV, &sa, NULL) == 0;
}

bool
asynqi_overflow_install(void)
{
	pthread_once(&segv_once, install_segv);
	return segv_installed;
}
#else
/* The sanitizers catch overflows themselves and own SIGSEGV. */
bool
asynqi_overflow_install(void)
{
	return false;
}
#endif

void
asynqi_overflow_canary(asynq_task *t)
{
	overflow_report(t, "its stack canary was overwritten");
	abort();
}
