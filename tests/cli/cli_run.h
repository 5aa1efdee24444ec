/* SPDX-License-Identifier: MIT */
/*
 * The command-line client run as a program by the CLI tests: its standard
 * input from a string, its standard output, standard error and exit
 * status caught in files (no pipe to fill), and waited for.
 */
#ifndef TESTS_CLI_CLI_RUN_H
#define TESTS_CLI_CLI_RUN_H

/* What one run of the client did. */
typedef struct run {
	int rc;    /* exit status; -1 if it did not exit */
	char *out; /* standard output, malloc'd */
	char *err; /* standard error, malloc'd */
} run;

/* cli runs framework/cli/asynq (from the runfiles) with args (NULL-
 * terminated, without the program's name) and `in` as its standard input
 * (NULL: empty), and waits for it. Fails the test if it cannot. */
run cli(const char *in, const char *const *args);

/* run_free frees what cli caught. */
void run_free(run *r);

/* assert_rc fails the test unless run r exited want, saying what it
 * printed on standard error. */
#define assert_rc(r, want)                                                     \
	do {                                                                   \
		if ((r).rc != (int)(want))                                     \
			fail_msg("exit %d, not %d; stderr: %s", (r).rc,        \
			    (int)(want), (r).err);                             \
	} while (0)

#define ARGS(...) ((const char *const[]){ __VA_ARGS__, NULL })

#endif /* TESTS_CLI_CLI_RUN_H */
