/* SPDX-License-Identifier: MIT */
/*
 * Structured logs: one line per event, in logfmt (`ts=... level=info
 * event=listen server=asynq.users.Users url=tcp://0.0.0.0:7001`), written
 * to stderr by default with one write(2) per line, so lines of several
 * threads never mix. The framework logs a server's life (listen, not
 * serving, draining, closed), slow requests and, when asked, every request
 * (the access log); programs may log their own events the same way.
 */
#ifndef ASYNQ_LOG_H
#define ASYNQ_LOG_H

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum asynq_log_level {
	ASYNQ_LOG_DEBUG,
	ASYNQ_LOG_INFO,
	ASYNQ_LOG_WARN,
	ASYNQ_LOG_ERROR,
	ASYNQ_LOG_OFF,
} asynq_log_level;

/* asynq_log writes one line for event at level, if the level is enabled:
 * the time, the level, the event, then each (key, value) pair of the
 * NULL-terminated list of string arguments; values with spaces, quotes,
 * `=` or control characters are quoted and escaped. Lines over 2 KiB are
 * cut. Any thread. */
void asynq_log(asynq_log_level level, const char *event, ...)
    __attribute__((sentinel));

/* asynq_log_enabled says whether lines at level are written (the threshold
 * is info, or the ASYNQ_LOG_LEVEL environment variable: debug, info, warn,
 * error or off). Any thread. */
bool asynq_log_enabled(asynq_log_level level);

/* asynq_log_set_level sets the threshold. Any thread. */
void asynq_log_set_level(asynq_log_level level);

/* asynq_log_set_sink sends lines (each ending in a newline) to sink
 * instead of stderr; NULL restores stderr. The sink may be called from any
 * thread at once. Set it before logging starts. */
void asynq_log_set_sink(void (*sink)(const char *line, size_t len, void *arg),
    void *arg);

/* asynq_log_level_parse reads "debug", "info", "warn", "error" or "off";
 * false for anything else. */
bool asynq_log_level_parse(const char *s, asynq_log_level *out);

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_LOG_H */
