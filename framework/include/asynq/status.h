/* SPDX-License-Identifier: MIT */
/*
 * Status codes and error values. One status enum serves local errors and RPC
 * alike; its names and numbers are gRPC's, so a status that crosses the wire
 * keeps its meaning. An asynq_error carries a status, a message, an optional
 * cause and the asynq stack (the chain of creator tasks) captured where the
 * error was made, and prints like a traceback.
 */
#ifndef ASYNQ_STATUS_H
#define ASYNQ_STATUS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/* X(name, number, description): the one list the enum and the strerror table
 * are generated from. */
#define ASYNQ_STATUS_LIST(X)                                                   \
	X(OK, 0, "ok")                                                         \
	X(CANCELLED, 1, "cancelled")                                           \
	X(UNKNOWN, 2, "unknown error")                                         \
	X(INVALID_ARGUMENT, 3, "invalid argument")                             \
	X(DEADLINE_EXCEEDED, 4, "deadline exceeded")                           \
	X(NOT_FOUND, 5, "not found")                                           \
	X(ALREADY_EXISTS, 6, "already exists")                                 \
	X(PERMISSION_DENIED, 7, "permission denied")                           \
	X(RESOURCE_EXHAUSTED, 8, "resource exhausted")                         \
	X(FAILED_PRECONDITION, 9, "failed precondition")                       \
	X(ABORTED, 10, "aborted")                                              \
	X(OUT_OF_RANGE, 11, "out of range")                                    \
	X(UNIMPLEMENTED, 12, "unimplemented")                                  \
	X(INTERNAL, 13, "internal error")                                      \
	X(UNAVAILABLE, 14, "unavailable")                                      \
	X(DATA_LOSS, 15, "data loss")                                          \
	X(UNAUTHENTICATED, 16, "unauthenticated")

typedef enum asynq_status {
#define ASYNQ_STATUS_ENUM(name, num, desc) ASYNQ_##name = num,
	ASYNQ_STATUS_LIST(ASYNQ_STATUS_ENUM)
#undef ASYNQ_STATUS_ENUM
} asynq_status;

/* Number of status codes; every valid code is below it. */
#define ASYNQ_STATUS_COUNT 17

/* asynq_strerror returns a static description of a status ("unknown status"
 * for a value outside the enum). Any thread. */
const char *asynq_strerror(asynq_status s);

/* asynq_status_name returns the code's name as gRPC spells it
 * ("DEADLINE_EXCEEDED"), or "UNKNOWN" outside the enum. Any thread. */
const char *asynq_status_name(asynq_status s);

/* An error value: reference counted, immutable once made. */
typedef struct asynq_error asynq_error;

/* asynq_error_alloc makes an error with a printf-style message, capturing the
 * asynq stack of the calling thread's current task (none outside tasks). The
 * caller owns the one reference. Returns NULL only when memory is exhausted;
 * every function below accepts NULL and treats it as a RESOURCE_EXHAUSTED
 * error. Any thread. */
asynq_error *asynq_error_alloc(asynq_status code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* asynq_error_valloc is asynq_error_alloc with a va_list. Any thread. */
asynq_error *asynq_error_valloc(asynq_status code, const char *fmt, va_list ap);

/* asynq_error_wrap makes an error whose cause is `cause` (a new reference to
 * it is taken; the caller keeps its own). Any thread. */
asynq_error *asynq_error_wrap(asynq_error *cause, asynq_status code,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* asynq_error_hold takes another reference and returns e. Any thread. */
asynq_error *asynq_error_hold(asynq_error *e);

/* asynq_error_rele drops a reference, freeing the error at zero; NULL is
 * ignored. Any thread. */
void asynq_error_rele(asynq_error *e);

/* asynq_error_code returns the error's status (RESOURCE_EXHAUSTED for NULL). */
asynq_status asynq_error_code(const asynq_error *e);

/* asynq_error_message returns the message, valid while the error lives. */
const char *asynq_error_message(const asynq_error *e);

/* asynq_error_cause returns the cause or NULL; borrowed from e. */
asynq_error *asynq_error_cause(const asynq_error *e);

/* asynq_error_frames returns how many asynq stack frames were captured. */
size_t asynq_error_frames(const asynq_error *e);

/* asynq_error_frame returns frame i (0 = innermost task) as its function name,
 * file and line; NULL past the end. */
const char *asynq_error_frame(const asynq_error *e, size_t i, const char **file,
    int *line);

/* asynq_error_format writes the error as a traceback (innermost task last,
 * then each cause) into buf, truncating to size; returns the length the whole
 * text needs, like snprintf. */
size_t asynq_error_format(const asynq_error *e, char *buf, size_t size);

/* asynq_error_print writes the traceback to f. */
void asynq_error_print(const asynq_error *e, FILE *f);

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_STATUS_H */
