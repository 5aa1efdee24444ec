/* SPDX-License-Identifier: MIT */
/*
 * What the live-server fuzz targets (rpc_server, rpc_stream) share: the
 * fuzz server (asynq.fuzz.Fuzz with the limits of fuzz_service.h) on a
 * two-worker runtime, listening on an ipc:// socket, and a client that
 * speaks the asynq framing (proto/asynq/rpc.proto, "Framing") by hand over
 * a plain socket, so that a harness can write what the real client never
 * would and see exactly what the server answers.
 */
#ifndef ASYNQ_TESTS_FUZZ_WIRE_H
#define ASYNQ_TESTS_FUZZ_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "proto/asynq/rpc.pb-c.h"

#define FUZZ_PREFACE "asynq/1\n"
#define FUZZ_PREFACE_LEN 8
#define FUZZ_FRAME_HDR 5

/* Frame types. */
enum {
	FUZZ_FRAME_REQUEST = 1,
	FUZZ_FRAME_REPLY = 2,
	FUZZ_FRAME_HELLO = 3,
	FUZZ_FRAME_GOAWAY = 4,
	FUZZ_FRAME_PING = 5,
	FUZZ_FRAME_PONG = 6,
	FUZZ_FRAME_METHODS = 7,
};

/* Outcomes of reads. */
enum {
	FUZZ_IO_OK = 0,
	FUZZ_IO_CLOSED = -1,  /* end of stream or a socket error */
	FUZZ_IO_TIMEOUT = -2, /* nothing (more) before the deadline */
};

/* The server a harness fuzzes. */
/* How long fuzz_server_stop may take before the harness aborts. */
#define FUZZ_STOP_TIMEOUT_S 20

typedef struct fuzz_server {
	const char *name; /* the harness's, for messages */
	asynq_runtime *rt;
	asynq_rpc_server *srv;
	char path[96]; /* the ipc socket's file */
	char url[112]; /* ipc://path */
} fuzz_server;

/* fuzz_server_start starts the fuzz server for the harness `name` on a
 * socket of its own (the name and the process id make its path); prints
 * why and aborts when it cannot. */
void fuzz_server_start(fuzz_server *fs, const char *name);

/* fuzz_server_stop closes the server (it answers what it received and
 * closes its connections), stops the runtime and removes the socket;
 * aborts if that takes FUZZ_STOP_TIMEOUT_S. */
void fuzz_server_stop(fuzz_server *fs);

/* fuzz_server_requests returns how many REQUEST frames the server read. */
uint64_t fuzz_server_requests(const fuzz_server *fs);

/* A connection of the harness: a plain socket, blocking unless the harness
 * makes it otherwise. */
typedef struct fuzz_conn {
	int fd;
} fuzz_conn;

/* fuzz_conn_connect connects to the server without writing anything:
 * 0, or -1 (errno set). */
int fuzz_conn_connect(fuzz_conn *c, const fuzz_server *fs);

/* fuzz_conn_open connects and does what a client does first: writes the
 * preface, reads the server's preface and its HELLO (which must announce
 * FUZZ_MAX_MSG_BYTES and FUZZ_MAX_CALLS), then sends a METHODS frame
 * naming the table of fuzz_method_id_name. 0, or -1 with the reason in
 * why[0..n) (and the connection closed). */
int fuzz_conn_open(fuzz_conn *c, const fuzz_server *fs, int timeout_ms,
    char *why, size_t n);

/* fuzz_conn_write writes every byte (blocking): 0, or -1 when the server
 * closed the connection. */
int fuzz_conn_write(fuzz_conn *c, const void *p, size_t n);

/* fuzz_conn_read reads exactly n bytes before the deadline (asynq_now_ns
 * clock): FUZZ_IO_OK, FUZZ_IO_CLOSED or FUZZ_IO_TIMEOUT. */
int fuzz_conn_read(fuzz_conn *c, void *p, size_t n, uint64_t deadline_ns);

/* fuzz_conn_next reads one frame before the deadline: its type and its
 * body (malloc'd, the caller frees it) of *len bytes; the FUZZ_IO_ codes.
 * A body longer than max_len is FUZZ_IO_CLOSED (and *len says how long). */
int fuzz_conn_next(fuzz_conn *c, uint8_t *type, uint8_t **body, size_t *len,
    size_t max_len, uint64_t deadline_ns);

/* fuzz_conn_close closes the socket; a closed connection is ignored. */
void fuzz_conn_close(fuzz_conn *c);

/* fuzz_frame_hdr writes a frame header. */
void fuzz_frame_hdr(uint8_t out[FUZZ_FRAME_HDR], unsigned type, uint32_t len);

/* fuzz_methods_body returns the body of the METHODS frame naming the
 * table of fuzz_method_id_name (malloc'd) and its length. */
uint8_t *fuzz_methods_body(size_t *len);

/* ---- The canary -------------------------------------------------------- */

/* Request id of the canary. */
#define FUZZ_CANARY_ID 77

/* fuzz_canary_body returns the canary request (malloc'd): a Sum call named
 * by its name, a Count call by its method_id and a call of a method the
 * server lacks; and its length. */
uint8_t *fuzz_canary_body(size_t *len);

/* fuzz_canary_judge returns NULL if rep is the right answer to the
 * canary, else what is wrong with it (a static string). */
const char *fuzz_canary_judge(const Asynq__Rpc__Reply *rep);

#endif /* ASYNQ_TESTS_FUZZ_WIRE_H */
