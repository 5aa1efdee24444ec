/* SPDX-License-Identifier: MIT */
/*
 * The connection layer under asynq RPC: byte-stream connections over nng's
 * stream API (tcp://, ipc://, tls+tcp://, abstract://) or in-process pipes
 * (inproc://), listeners that accept them, and dialers that keep one up with
 * gRPC's connection backoff. It moves bytes only: reading into a buffer that
 * the protocol above consumes, and coalesced writes (everything queued for a
 * connection goes out with one send of several iovecs). It knows nothing of
 * frames, so a second protocol can share it.
 *
 * Threads: callbacks (on_read, on_close, accept, connect) run on nng's
 * threads for stream connections, and on the owner scheduler's thread (in a
 * post) for in-process ones. on_read and on_close of one connection never run
 * at the same time, and on_close runs exactly once, after the last on_read.
 */
#ifndef ASYNQI_RPC_CONN_H
#define ASYNQI_RPC_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <nng/nng.h>

#include "asynq/core.h"

typedef struct asynqi_conn asynqi_conn;
typedef struct asynqi_wbuf asynqi_wbuf;
typedef struct asynqi_listener asynqi_listener;
typedef struct asynqi_dialer asynqi_dialer;
struct asynqi_tls_peer;

/* Bytes to write: up to five pieces, borrowed until done runs. */
struct asynqi_wbuf {
	asynqi_wbuf *next; /* the connection's */
	nng_iov iov[5];
	unsigned niov;
	/* Called once, on any thread (possibly inside asynqi_conn_flush or
	 * asynqi_conn_queue), when the bytes were handed to the transport
	 * (err 0) or the connection closed first (err non-zero). Never with
	 * the connection's lock held. */
	void (*done)(asynqi_wbuf *w, int err);
};

/* What the protocol above does with a connection's events. */
typedef struct asynqi_conn_ops {
	/* Input arrived: buf[0..len) is every byte not consumed yet. Returns
	 * how many bytes it consumed from the front, and may set *need to the
	 * number of unconsumed bytes it needs before it can consume more (the
	 * buffer grows to that, up to the connection's max_read); returning
	 * SIZE_MAX closes the connection. */
	size_t (
	    *on_read)(asynqi_conn *c, uint8_t *buf, size_t len, size_t *need);
	/* The connection is closed; err is the nng error that closed it
	 * (NNG_ECLOSED when asynqi_conn_close did). Exactly once. */
	void (*on_close)(asynqi_conn *c, int err);
} asynqi_conn_ops;

/* asynqi_conn_alloc_stream wraps a connected nng stream (ownership moves on
 * success) in a connection for ops with protocol state arg; max_read bounds
 * the read buffer. Reading starts with asynqi_conn_start. The caller holds
 * one reference. */
asynq_status asynqi_conn_alloc_stream(asynqi_conn **cp, nng_stream *st,
    const asynqi_conn_ops *ops, void *arg, size_t max_read);

/* asynqi_conn_pair makes two connected in-process connections; bytes
 * written to one are read by the other. Every callback of both runs in a
 * post on `owner`, which must outlive both. The caller holds one reference
 * on each; asynqi_conn_set_ops gives each its protocol. */
asynq_status asynqi_conn_pair(asynqi_conn **ap, asynqi_conn **bp,
    asynq_sched *owner, size_t max_read);

/* asynqi_conn_set_ops sets the protocol of a connection before it starts. */
void asynqi_conn_set_ops(asynqi_conn *c, const asynqi_conn_ops *ops, void *arg,
    size_t max_read);

/* asynqi_conn_start begins reading. */
void asynqi_conn_start(asynqi_conn *c);

/* asynqi_conn_arg returns the protocol state given at set-up. */
void *asynqi_conn_arg(const asynqi_conn *c);

/* asynqi_conn_hold and asynqi_conn_rele count references; the last rele
 * frees the connection (it must be closed by then, or is closed). Any
 * thread. */
void asynqi_conn_hold(asynqi_conn *c);
void asynqi_conn_rele(asynqi_conn *c);

/* asynqi_conn_queue adds w to the connection's write queue; nothing is sent
 * until asynqi_conn_flush. Returns the bytes queued and not yet being sent,
 * w's included. On a closed connection w->done runs at once with an error
 * and it returns 0. Any thread. */
size_t asynqi_conn_queue(asynqi_conn *c, asynqi_wbuf *w);

/* asynqi_conn_flush sends everything queued: at once from the calling
 * thread when no write is in flight (one send for all of it, small pieces
 * copied together), else when the write in flight finishes. Any thread. */
void asynqi_conn_flush(asynqi_conn *c);

/* asynqi_conn_queued_bytes returns the bytes queued and not yet sent. */
size_t asynqi_conn_queued_bytes(asynqi_conn *c);

/* asynqi_conn_pause stops reading after the current on_read (which may
 * leave bytes unconsumed without asking for more); asynqi_conn_resume
 * starts again, handing on_read the bytes left first. Any thread. */
void asynqi_conn_pause(asynqi_conn *c);
void asynqi_conn_resume(asynqi_conn *c);

/* asynqi_conn_close closes the connection: writes not sent are dropped
 * (their done gets an error) and on_close follows, maybe on this thread.
 * Idempotent. Any thread. */
void asynqi_conn_close(asynqi_conn *c);

/* asynqi_conn_close_flushed closes the connection once everything queued
 * so far is sent (at once when nothing is). Any thread. */
void asynqi_conn_close_flushed(asynqi_conn *c);

/* asynqi_conn_is_inproc tells an in-process connection. */
bool asynqi_conn_is_inproc(const asynqi_conn *c);

/* asynqi_conn_owner returns the scheduler an in-process connection's
 * callbacks run on (NULL for a stream). */
asynq_sched *asynqi_conn_owner(const asynqi_conn *c);

/* asynqi_conn_peer_url writes the peer's address as a URL
 * ("tcp://127.0.0.1:40312", "tls+tcp://[::1]:7001", "ipc:///tmp/x.sock",
 * "abstract://name", "inproc") into buf (truncated to len) and returns its
 * length. Any thread. */
size_t asynqi_conn_peer_url(const asynqi_conn *c, char *buf, size_t len);

/* asynqi_conn_tls_peer fills *p (tls.h; free with asynqi_tls_peer_fini)
 * with the certificate identity of a TLS connection's peer once its
 * handshake is done (after the first bytes were read); false for other
 * connections. Any thread. */
bool asynqi_conn_tls_peer(const asynqi_conn *c, struct asynqi_tls_peer *p);

/* asynqi_conn_tls_failure writes why a TLS connection's handshake failed
 * into buf, in words; false when it did not (or c is not TLS). Any thread,
 * until the last reference goes. */
bool asynqi_conn_tls_failure(const asynqi_conn *c, char *buf, size_t len);

/* ---- Listeners --------------------------------------------------------- */

/* Called for each accepted connection (a new connection with one reference
 * that moves to the callee, not started). For inproc listeners it runs on
 * the dialing thread. */
typedef void (*asynqi_accept_fn)(void *arg, asynqi_conn *c);

/* Picks the scheduler that owns an accepted in-process connection. */
typedef asynq_sched *(*asynqi_owner_fn)(void *arg);

/* asynqi_listener_open listens on url (tcp://, ipc://, tls+tcp:// with
 * tls, abstract://, or inproc://NAME) and calls accept for each new
 * connection. Errors: UNAVAILABLE (address in use), INVALID_ARGUMENT (bad
 * URL), ALREADY_EXISTS (inproc name taken); *why gets a static reason. */
asynq_status asynqi_listener_open(asynqi_listener **lp, const char *url,
    void *tls, asynqi_accept_fn accept, asynqi_owner_fn owner, void *arg,
    const char **why);

/* asynqi_listener_close stops accepting and waits until no accept callback
 * runs; then frees. NULL is ignored. */
void asynqi_listener_close(asynqi_listener *l);

/* ---- Dialers ----------------------------------------------------------- */

/* Called with a new connection (one reference that moves to the callee,
 * not started) or, on failure, NULL and the nng error. */
typedef void (*asynqi_connect_fn)(void *arg, asynqi_conn *c, int err);

/* asynqi_dialer_open prepares dialing url (tls: an nng_tls_config for
 * tls+tcp:// URLs, or NULL). INVALID_ARGUMENT for a bad URL. */
asynq_status asynqi_dialer_open(asynqi_dialer **dp, const char *url, void *tls,
    asynqi_connect_fn connect, void *arg);

/* asynqi_dialer_dial starts one connection attempt after delay_ms; connect
 * is called once with its outcome. At most one attempt at a time. */
void asynqi_dialer_dial(asynqi_dialer *d, uint32_t delay_ms);

/* asynqi_dialer_hurry starts an attempt that is waiting for its delay at
 * once; nothing when the attempt has begun or none is pending. Any
 * thread. */
void asynqi_dialer_hurry(asynqi_dialer *d);

/* asynqi_dialer_close cancels an attempt in flight, waits for its callback,
 * and frees the dialer. NULL is ignored. */
void asynqi_dialer_close(asynqi_dialer *d);

#endif /* ASYNQI_RPC_CONN_H */
