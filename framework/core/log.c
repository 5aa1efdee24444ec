/* SPDX-License-Identifier: MIT */
/*
 * Structured logs (asynq/log.h): logfmt lines built in a buffer on the
 * caller's stack and handed to the sink whole.
 *
 * Design notes:
 * - The threshold is an atomic, read on every call; ASYNQ_LOG_LEVEL is
 *   read once, on first use.
 * - The sink and its argument are set before logging starts (documented),
 *   so they are read without a lock.
 */
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "asynq/log.h"

#define LINE_MAX_BYTES 2048

static atomic_int threshold = ASYNQ_LOG_INFO;
static pthread_once_t env_once = PTHREAD_ONCE_INIT;
static void (*sink_fn)(const char *, size_t, void *);
static void *sink_arg;

static const char *const names[] = { "debug", "info", "warn", "error", "off" };

bool
asynq_log_level_parse(const char *s, asynq_log_level *out)
{
	for (int i = 0; s != NULL && i <= ASYNQ_LOG_OFF; i++) {
		if (strcmp(s, names[i]) == 0) {
			*out = (asynq_log_level)i;
			return true;
		}
	}
	return false;
}

static void
env_read(void)
{
	asynq_log_level l;
	if (asynq_log_level_parse(getenv("ASYNQ_LOG_LEVEL"), &l))
		atomic_store(&threshold, (int)l);
}

bool
asynq_log_enabled(asynq_log_level level)
{
	pthread_once(&env_once, env_read);
	return level < ASYNQ_LOG_OFF && (int)level >= atomic_load(&threshold);
}

void
asynq_log_set_level(asynq_log_level level)
{
	pthread_once(&env_once, env_read);
	atomic_store(&threshold, (int)level);
}

void
asynq_log_set_sink(void (*sink)(const char *line, size_t len, void *arg),
    void *arg)
{
	sink_fn = sink;
	sink_arg = arg;
}

/* Appends s to buf[*n..cap), quoted and escaped if it needs to be. */
static void
put_value(char *buf, size_t *n, size_t cap, const char *s)
{
	bool quote = *s == '\0';
	for (const char *p = s; *p != '\0' && !quote; p++)
		quote = *p == ' ' || *p == '"' || *p == '=' ||
		    (unsigned char)*p < 0x20;
	if (quote && *n < cap)
		buf[(*n)++] = '"';
	for (const char *p = s; *p != '\0' && *n + 2 < cap; p++) {
		unsigned char c = (unsigned char)*p;
		if (!quote || (c >= 0x20 && c != '"' && c != '\\')) {
			buf[(*n)++] = (char)c;
		} else if (c == '"' || c == '\\') {
			buf[(*n)++] = '\\';
			buf[(*n)++] = (char)c;
		} else {
			buf[(*n)++] = '\\';
			buf[(*n)++] = c == '\n' ? 'n' : c == '\t' ? 't' : '?';
		}
	}
	if (quote && *n < cap)
		buf[(*n)++] = '"';
}

void
asynq_log(asynq_log_level level, const char *event, ...)
{
	if (!asynq_log_enabled(level))
		return;
	char buf[LINE_MAX_BYTES];
	size_t cap = sizeof(buf) - 1, n = 0;
	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	n += strftime(buf, cap, "ts=%Y-%m-%dT%H:%M:%S", &tm);
	n += (size_t)snprintf(buf + n, cap - n,
	    ".%03ldZ level=%s event=", ts.tv_nsec / 1000000, names[level]);
	put_value(buf, &n, cap, event != NULL ? event : "");
	va_list ap;
	va_start(ap, event);
	const char *key;
	while ((key = va_arg(ap, const char *)) != NULL) {
		const char *val = va_arg(ap, const char *);
		if (n + 1 < cap)
			buf[n++] = ' ';
		for (const char *p = key; *p != '\0' && n < cap; p++)
			buf[n++] = *p;
		if (n < cap)
			buf[n++] = '=';
		put_value(buf, &n, cap, val != NULL ? val : "");
	}
	va_end(ap);
	buf[n++] = '\n';
	if (sink_fn != NULL) {
		sink_fn(buf, n, sink_arg);
		return;
	}
	ssize_t w = write(STDERR_FILENO, buf, n);
	(void)w;
}
