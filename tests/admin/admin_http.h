/* SPDX-License-Identifier: MIT */
/*
 * What the admin endpoint's /status and /trace tests share: real clients
 * run as child processes with a time limit (curl, headless Chromium), a
 * GET with curl, JSON read with jansson, and an endpoint on a free port.
 */
#ifndef ASYNQ_TESTS_ADMIN_HTTP_H
#define ASYNQ_TESTS_ADMIN_HTTP_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

#include "asynq/admin.h"

/* A fetched page: status, Content-Type and body (malloc'd). */
typedef struct page {
	int status;
	char ctype[128];
	char *body;
} page;

/* A child process: its pid (its own process group) and the end of the
 * pipe its standard output goes to. */
typedef struct ahttp_child {
	pid_t pid;
	int out;
} ahttp_child;

/* ahttp_spawn runs argv (argv[0] looked up in PATH) with its standard
 * error appended to err_path (NULL: to the test's). The test fails,
 * naming `what` to install, when argv[0] cannot be run. */
ahttp_child ahttp_spawn(char *const argv[], const char *err_path,
    const char *what);

/* ahttp_done says whether the child has exited, without waiting; then it
 * is reaped (what is left of its group killed) and *rc gets its exit
 * status (128 + signal when killed). Its output must still be closed
 * with ahttp_finish. */
bool ahttp_done(ahttp_child *c, int *rc);

/* ahttp_finish reads the child's standard output to its end (malloc'd in
 * *out, NUL-terminated) and waits for it, at most timeout_ms in all; then
 * it kills the child's process group and the test fails, saying so.
 * Returns the exit status (-1 when ahttp_done reaped it already). */
int ahttp_finish(ahttp_child *c, int timeout_ms, char **out);

/* http_get GETs url with curl (at most timeout_s seconds). */
page http_get(const char *url, int timeout_s);

/* admin_get GETs the endpoint's URL + path. */
page admin_get(const asynq_admin *a, const char *path);

/* json_of parses p's body (the test fails, showing it, if it is not
 * JSON); the caller json_decref's it. */
json_t *json_of(const page *p);

/* json_find returns the element of array arr whose member key is the
 * string val, NULL if none. Borrowed. */
json_t *json_find(json_t *arr, const char *key, const char *val);

/* json_num returns obj's member key as a number; the test fails if it is
 * missing or not a number. */
double json_num(json_t *obj, const char *key);

/* admin_start opens an endpoint on a free loopback port. */
asynq_admin *admin_start(void);

/* test_path writes $dir_env/name (/tmp/name without it) into buf. */
void test_path(char *buf, size_t n, const char *dir_env, const char *name);

#endif /* ASYNQ_TESTS_ADMIN_HTTP_H */
