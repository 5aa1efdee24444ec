/* SPDX-License-Identifier: MIT */
/*
 * Service programs as child processes, for the fault tests and the
 * benchmarks: start a binary of services/ from the runfiles on a tcp
 * loopback port, see when it listens, signal it, reap it and time its exit.
 * The waits take the calling task and suspend it, so the client tasks on a
 * test thread keep calling (and their deadlines keep being checked) while a
 * child starts or stops; a caller that is not a task passes NULL and the
 * wait sleeps its thread instead.
 *
 * Each child's stdout and stderr go to files in the output directory (a
 * child never blocks on a full pipe; a failure prints them, and a caller may
 * read its counters log there); each child gets SIGKILL if the thread that
 * started it dies (PR_SET_PDEATHSIG), and child_kill_all reaps what a failed
 * assertion left running. A child inherits the CPU affinity of the thread
 * that starts it.
 */
#ifndef TESTS_COMMON_CHILD_H
#define TESTS_COMMON_CHILD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "asynq/asynq.h"

typedef struct child {
	char name[32];
	char bin[32];   /* services/<bin>/<bin> */
	pid_t pid;      /* 0: not running (never started, or reaped) */
	int status;     /* waitpid's status once reaped */
	char out[1200]; /* stdout file */
	char err[1200]; /* stderr file */
	char url[64];   /* tcp://127.0.0.1:port */
	int port;
	uint64_t start_ns; /* when it was forked */
} child;

/* child_env_init reads the runfiles and TEST_TMPDIR from the environment
 * bazel test sets; false (with a message) outside bazel test. Main thread,
 * before the first child. */
bool child_env_init(void);

/* child_env_init_run is child_env_init for a program started with bazel run
 * or by hand (no TEST_SRCDIR): the service programs are found in this
 * executable's runfiles (RUNFILES_DIR, or <executable>.runfiles) and the
 * output files go to outdir, which must exist; false (with a message) if
 * the runfiles hold no services/. Main thread, before the first child. */
bool child_env_init_run(const char *outdir);

/* child_tmpdir returns the output directory: TEST_TMPDIR (or /tmp), or
 * child_env_init_run's outdir. */
const char *child_tmpdir(void);

/* child_free_port returns a loopback port free now, below the ephemeral
 * range (so outgoing connections do not take it first), or -1. */
int child_free_port(void);

/* child_spawn forks and execs services/<bin>/<bin> --listen <c->url>
 * --workers 2 and the NULL-terminated extra arguments (at most 16; a
 * service prints its counters log unless they hold --quiet), with name and
 * bin copied into c and its output files numbered anew. The port must be
 * in c->port. Returns at once; false (with a message) if fork failed or
 * there are too many arguments. */
bool child_spawn(child *c, const char *name, const char *bin,
    const char *const *extra);

/* child_start spawns c as child_spawn does and waits until it listens, up
 * to timeout_ms (suspending task t, or sleeping when t is NULL). With
 * c->port 0 it picks a free port, and picks another (up to 5 times) when
 * the service finds it taken; otherwise it uses c->port once. On failure it
 * returns false with c reaped, its output printed and the reason (the
 * first line of its stderr, or how it ended) in why. */
bool child_start(asynq_task *t, child *c, const char *name, const char *bin,
    const char *const *extra, int timeout_ms, char *why, size_t why_n);

/* child_listening says whether c has printed its "listening on" line. */
bool child_listening(const child *c);

/* child_reap reaps c if it has exited (without waiting); true once c is
 * reaped (also when it was never started). */
bool child_reap(child *c);

/* child_wait_listening polls every 2 ms (suspending task t, or sleeping
 * when t is NULL) until c listens, up to timeout_ms; false if it exited
 * first or the time passed (c is then killed and its output printed). */
bool child_wait_listening(asynq_task *t, child *c, int timeout_ms);

/* child_wait_exit polls every ms (suspending task t, or sleeping when t is
 * NULL) until c exits, up to timeout_ms from `since`; returns the ns from
 * `since` to when the exit was seen, or 0 if it had not exited by then (c
 * stays running). */
uint64_t child_wait_exit(asynq_task *t, child *c, uint64_t since,
    int timeout_ms);

/* child_exited_0 says whether the reaped c exited with status 0. */
bool child_exited_0(const child *c);

/* child_describe_exit writes "exit status N" or "killed by signal N". */
void child_describe_exit(const child *c, char *buf, size_t n);

/* child_kill sends SIGKILL to c if it runs and reaps it (blocking). */
void child_kill(child *c);

/* child_dump prints c's output files to stderr, to explain a failure. */
void child_dump(const child *c);

/* child_register lists c for child_kill_all (at most 8). */
void child_register(child *c);

/* child_kill_all kills and reaps every registered child still running. */
void child_kill_all(void);

#endif /* TESTS_COMMON_CHILD_H */
