/* SPDX-License-Identifier: MIT */
/*
 * What the RPC tests share: the Calc service's handlers and the counters
 * they keep, a fixture (a runtime, a server, a channel), helpers that make
 * calls from the test thread, and a raw connection that speaks the framing
 * by hand over plain sockets to send what the client never would.
 */
#ifndef ASYNQ_TESTS_RPC_FIXTURE_H
#define ASYNQ_TESTS_RPC_FIXTURE_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>
#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "proto/asynq/rpc.pb-c.h"
#include "tests/rpc/test_rpc.asynq.h"

#define CALC (&asynq__rpctest__calc__asynq_desc)
/* M(TWICE): the method's descriptor, by its generated index. */
#define M(name) (&CALC->methods[ASYNQ__RPCTEST__CALC__ASYNQ_METHOD_##name])

/* Counters of the Sleep and Hold handlers; hold_release lets Hold calls
 * finish. */
extern atomic_int sleep_started;
extern atomic_int hold_runs;
extern atomic_int hold_release;
/* Runs of the Lookup and Nap handlers. */
extern atomic_int lookup_runs;
extern atomic_int nap_runs;
/* The channel the Relay handler calls through (NULL: Relay fails). */
extern asynq_rpc_channel *relay_ch;
/* In a --serve child: where handlers report that they started. */
extern int notify_fd;
extern const char *self_exe;

/* The Calc service's handlers, by method. */
extern const asynq_rpc_handler calc_handlers[];

typedef struct fixture {
	asynq_runtime *rt;
	asynq_rpc_server *srv;
	asynq_rpc_channel *ch;
	char url[128];
} fixture;

/* Transports of the fixture: false/true keep meaning inproc/tcp. */
enum { TRANSPORT_INPROC = 0, TRANSPORT_TCP = 1, TRANSPORT_IPC = 2 };

typedef struct job {
	asynq_rpc_channel *ch;
	const asynq_rpc_method_desc *m;
	size_t n;
	asynq_future **out;
	asynq_status st;
} job;

/* A connection that speaks the framing by hand (plain sockets, tcp:// and
 * ipc:// URLs), to send what the client never would. */
typedef struct raw_conn {
	int fd;
	int timeout_ms;
} raw_conn;

void notify(char c);

Asynq__Rpctest__Num *num_new(int64_t v);

int free_port(void);

void url_make(char *buf, size_t n, int transport);

/* Starts a runtime of `workers` workers and a Calc server with scfg (NULL
 * for defaults) on a new URL; no channel. */
void fx_server(fixture *fx, int tcp, const asynq_rpc_server_cfg *scfg,
    size_t workers);

/* fx_server with the Calc handlers given (one per method). */
void fx_server_with(fixture *fx, int tcp, const asynq_rpc_server_cfg *scfg,
    size_t workers, const asynq_rpc_handler *handlers);

/* Starts a two-worker runtime and a Calc server with scfg (NULL for
 * defaults) and opens a channel to it with chan_max_calls (0: the
 * service's). */
void fx_start(fixture *fx, int tcp, const asynq_rpc_server_cfg *scfg,
    size_t chan_max_calls);

void fx_stop(fixture *fx);

/* The counters of the fixture's server. */
asynq_rpc_server_stats fx_stats(const fixture *fx);

asynq_future *call_num(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m,
    int64_t v);

int64_t num_of(asynq_future *f);

int64_t realtime_ns(void);

int64_t ms_since(uint64_t t0);

/* Makes n calls of m with v = i, then awaits them all. */
asynq_status job_main(asynq_task *t, void *arg);

void run_job(job *j);

/* Reads exactly n bytes within the timeout: 0, or -1 (closed/timeout). */
int raw_read(raw_conn *r, void *buf, size_t n);

int raw_write(raw_conn *r, const void *buf, size_t n);

/* Writes one frame. */
int raw_frame(raw_conn *r, uint8_t type, const void *body, size_t len);

/* Reads one frame (body malloc'd): 0, or -1. */
int raw_next(raw_conn *r, uint8_t *type, uint8_t **body, size_t *len);

/* Connects to url; with `hello`, writes the preface and reads the server's
 * preface and HELLO. fd is -1 when that failed. */
raw_conn raw_connect(const char *url, int timeout_ms, bool hello);

raw_conn raw_open(const char *url, int timeout_ms);

void raw_close(raw_conn *r);

/* Sends buf (freed) as a REQUEST and decodes the REPLY: 0, or -1 when the
 * connection closed or timed out first. */
int raw_call(raw_conn *r, uint8_t *buf, size_t len, Asynq__Rpc__Reply **rep);

/* Packs a Request with n calls of ms[i] (call_id i), each with the payload
 * Num{v = 5, s = `pad` x's}. */
uint8_t *raw_req(size_t *len, const asynq_rpc_method_desc *const *ms, size_t n,
    size_t pad, uint64_t client_id, uint64_t request_id, uint32_t attempt);

#endif /* ASYNQ_TESTS_RPC_FIXTURE_H */
