/* SPDX-License-Identifier: MIT */
/*
 * The connection layer: nng stream connections and in-process pipes behind
 * one interface (conn.h), listeners and dialers.
 *
 * Design notes:
 * - Reading: one receive in flight per connection, into `rbuf`; its callback
 *   hands every unconsumed byte to on_read, keeps what it did not consume,
 *   grows the buffer to what on_read says it needs (up to max_read) and
 *   receives again unless paused or closed. Only the read path touches
 *   rbuf, so it needs no lock.
 * - Writing: writers queue wbufs under `mu`; a flush takes the whole queue
 *   (as many wbufs as fit in nng's 8 iovecs, small pieces copied into the
 *   connection's staging buffer so that many frames become one iovec) and
 *   sends it with one nng_stream_send. `tx_busy` makes one thread the
 *   sender until the queue is empty. The first attempt runs on the flushing
 *   thread with an aio that has no callback: nng's tcp and ipc streams write
 *   inline, so a send that fits the socket buffer completes before
 *   nng_stream_send returns and costs no thread hand-off. If it did not
 *   complete (the socket buffer is full, or the stream is TLS), it is
 *   cancelled, and the rest goes through an aio with a callback that keeps
 *   sending from nng's thread.
 * - Closing: `closed` under mu stops new reads and writes; nng_stream_close
 *   completes the aios in flight with an error. `finish` runs once nothing
 *   is in flight (rx_busy and tx_busy clear): it fails the queued wbufs and
 *   calls on_close. So on_close never overlaps on_read. Receives and
 *   callback sends start under mu while open, so each starts before the
 *   close and nng_stream_close completes it (nng never completes one that
 *   starts after, see send_async).
 * - In-process pairs have no stream: a flush copies the queued bytes into
 *   the peer's inbox and posts the peer's read to the owner scheduler; the
 *   post hands the inbox to on_read. Closing either end closes both, each
 *   end's finish running in a post, so every callback of a pair runs on the
 *   owner's thread.
 * - References: the creator's, plus one while a receive or a send is in
 *   flight, plus one per queued post. Aios are freed with nng_aio_reap,
 *   since the last reference may drop inside an aio callback.
 * - Lock order: mu of a connection, then (in-process) the peer's inbox
 *   lock `in_mu`, never the other way. The inproc registry lock is taken
 *   alone.
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>

#include "conn.h"
#include "tls.h"

#define RBUF_INIT (64u << 10)
#define STAGE_MAX (64u << 10)
#define STAGE_PIECE 4096 /* pieces up to this size are copied */
#define MAX_IOV 8

struct asynqi_conn {
	const asynqi_conn_ops *ops;
	void *arg;
	atomic_long refs;
	/* The rx aio runs as a timer of 0 ms: on resume, bytes already
	 * buffered are handed to on_read before more are read. (Kept apart
	 * from the flags under mu, which the compiler may load together.) */
	atomic_bool rx_kick;
	/* Bytes are left that on_read did not ask more for (it stopped):
	 * written by the read path, read when arming the next read. */
	atomic_bool stalled;
	pthread_mutex_t mu;
	nng_stream *st; /* NULL for in-process */
	bool fast_tx;   /* the stream writes inline (tcp, ipc) */
	bool tls;       /* the stream is TLS */
	nng_aio *rx, *txf, *txs;
	/* Reading (read path only). */
	uint8_t *rbuf;
	size_t rlen, rcap, max_read;
	/* Under mu. */
	bool started, closed, finished, paused, rx_busy, tx_busy;
	bool close_flushed; /* close once the queue is sent */
	int err;
	asynqi_wbuf *q_head, *q_tail; /* queued */
	size_t q_bytes;
	asynqi_wbuf *s_head; /* being sent (not copied) */
	/* The send in flight (sender only). */
	nng_iov iov[MAX_IOV];
	unsigned niov;
	uint8_t *stage;
	/* In-process. */
	asynqi_conn *peer; /* holds no reference; cleared on finish */
	asynq_sched *owner;
	pthread_mutex_t in_mu;
	uint8_t *inbox;
	size_t in_len, in_cap;
	bool read_posted;  /* under in_mu */
	bool close_posted; /* under mu */
	asynq_post read_post, close_post;
};

static void conn_free(asynqi_conn *c);

void
asynqi_conn_hold(asynqi_conn *c)
{
	atomic_fetch_add_explicit(&c->refs, 1, memory_order_relaxed);
}

void
asynqi_conn_rele(asynqi_conn *c)
{
	if (c != NULL && atomic_fetch_sub(&c->refs, 1) == 1)
		conn_free(c);
}

void *
asynqi_conn_arg(const asynqi_conn *c)
{
	return c->arg;
}

bool
asynqi_conn_is_inproc(const asynqi_conn *c)
{
	return c->st == NULL;
}

asynq_sched *
asynqi_conn_owner(const asynqi_conn *c)
{
	return c->owner;
}

static void rx_cb(void *arg);
static void inproc_flush(asynqi_conn *c);
static void txs_cb(void *arg);
static void inproc_read(asynq_post *p);
static void inproc_close(asynq_post *p);

static asynqi_conn *
conn_new(size_t max_read)
{
	asynqi_conn *c = calloc(1, sizeof(*c));
	if (c == NULL)
		return NULL;
	atomic_init(&c->refs, 1);
	atomic_init(&c->rx_kick, false);
	atomic_init(&c->stalled, false);
	c->max_read = max_read;
	if (pthread_mutex_init(&c->mu, NULL) != 0) {
		free(c);
		return NULL;
	}
	if (pthread_mutex_init(&c->in_mu, NULL) != 0) {
		pthread_mutex_destroy(&c->mu);
		free(c);
		return NULL;
	}
	c->read_post.fn = inproc_read;
	c->close_post.fn = inproc_close;
	return c;
}

static void
conn_free(asynqi_conn *c)
{
	if (c->st != NULL) {
		nng_stream_close(c->st);
		nng_stream_free(c->st);
	}
	if (c->rx != NULL)
		nng_aio_reap(c->rx);
	if (c->txf != NULL)
		nng_aio_reap(c->txf);
	if (c->txs != NULL)
		nng_aio_reap(c->txs);
	free(c->rbuf);
	free(c->stage);
	free(c->inbox);
	pthread_mutex_destroy(&c->in_mu);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

asynq_status
asynqi_conn_alloc_stream(asynqi_conn **cp, nng_stream *st,
    const asynqi_conn_ops *ops, void *arg, size_t max_read)
{
	asynqi_conn *c = conn_new(max_read);
	if (c == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	if (nng_aio_alloc(&c->rx, rx_cb, c) != 0 ||
	    nng_aio_alloc(&c->txf, NULL, NULL) != 0 ||
	    nng_aio_alloc(&c->txs, txs_cb, c) != 0) {
		conn_free(c);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	/* tcp and ipc streams write inline; TLS and websocket do not. A
	 * stream that answers the TCP option is TCP; ipc has its peer pid. */
	bool nodelay;
	int pid;
	bool tls = nng_stream_get_bool(st, NNG_OPT_TLS_VERIFIED, &nodelay) == 0;
	bool tcp = nng_stream_get_bool(st, NNG_OPT_TCP_NODELAY, &nodelay) == 0;
	c->tls = tls;
	c->fast_tx = !tls &&
	    (tcp || nng_stream_get_int(st, NNG_OPT_IPC_PEER_PID, &pid) == 0);
	/* Frames are written whole: Nagle's algorithm would only hold a reply
	 * back for the peer's delayed ACK. */
	if (tcp)
		(void)nng_stream_set_bool(st, NNG_OPT_TCP_NODELAY, true);
	c->st = st;
	c->ops = ops;
	c->arg = arg;
	*cp = c;
	return ASYNQ_OK;
}

asynq_status
asynqi_conn_pair(asynqi_conn **ap, asynqi_conn **bp, asynq_sched *owner,
    size_t max_read)
{
	asynqi_conn *a = conn_new(max_read), *b = conn_new(max_read);
	if (a == NULL || b == NULL) {
		if (a != NULL)
			conn_free(a);
		if (b != NULL)
			conn_free(b);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	a->peer = b;
	b->peer = a;
	a->owner = b->owner = owner;
	*ap = a;
	*bp = b;
	return ASYNQ_OK;
}

void
asynqi_conn_set_ops(asynqi_conn *c, const asynqi_conn_ops *ops, void *arg,
    size_t max_read)
{
	c->ops = ops;
	c->arg = arg;
	c->max_read = max_read;
}

size_t
asynqi_conn_peer_url(const asynqi_conn *c, char *buf, size_t len)
{
	nng_sockaddr sa;
	int n;
	if (c->st == NULL)
		n = snprintf(buf, len, "inproc");
	else if (nng_stream_get_addr(c->st, NNG_OPT_REMADDR, &sa) != 0)
		n = snprintf(buf, len, "%s", c->tls ? "tls+tcp://?" : "?");
	else if (sa.s_family == NNG_AF_INET) {
		const uint8_t *a = (const uint8_t *)&sa.s_in.sa_addr;
		const uint8_t *p = (const uint8_t *)&sa.s_in.sa_port;
		n = snprintf(buf, len, "%s://%u.%u.%u.%u:%u",
		    c->tls ? "tls+tcp" : "tcp", a[0], a[1], a[2], a[3],
		    (unsigned)p[0] << 8 | p[1]);
	} else if (sa.s_family == NNG_AF_INET6) {
		/* Network byte order, as in struct in6_addr. */
		const uint8_t *a = sa.s_in6.sa_addr;
		const uint8_t *p = (const uint8_t *)&sa.s_in6.sa_port;
		char h[48];
		size_t at = 0;
		for (int i = 0; i < 16; i += 2)
			at += (size_t)snprintf(h + at, sizeof(h) - at, "%s%x",
			    i != 0 ? ":" : "", (unsigned)a[i] << 8 | a[i + 1]);
		n = snprintf(buf, len, "%s://[%s]:%u",
		    c->tls ? "tls+tcp" : "tcp", h, (unsigned)p[0] << 8 | p[1]);
	} else if (sa.s_family == NNG_AF_IPC) {
		n = snprintf(buf, len, "ipc://%s", sa.s_ipc.sa_path);
	} else if (sa.s_family == NNG_AF_ABSTRACT) {
		n = snprintf(buf, len, "abstract://%.*s",
		    (int)sa.s_abstract.sa_len,
		    (const char *)sa.s_abstract.sa_name);
	} else {
		n = snprintf(buf, len, "?");
	}
	return n < 0 ? 0 : (size_t)n < len ? (size_t)n : len - 1;
}

bool
asynqi_conn_tls_peer(const asynqi_conn *c, asynqi_tls_peer *p)
{
	if (c->st == NULL || !c->tls)
		return false;
	return asynqi_tls_peer_get(c->st, p);
}

bool
asynqi_conn_tls_failure(const asynqi_conn *c, char *buf, size_t len)
{
	if (c->st == NULL || !c->tls)
		return false;
	return asynqi_tls_failure(c->st, buf, len);
}

/* ---- Finishing ----------------------------------------------------------- */

/* Fails the wbufs of a list. No lock held. */
static void
fail_list(asynqi_wbuf *w, int err)
{
	while (w != NULL) {
		asynqi_wbuf *next = w->next;
		w->next = NULL;
		w->done(w, err);
		w = next;
	}
}

/* Under mu: if closed and idle, claims the finish. The caller then calls
 * finish() without the lock. */
static bool
finish_claim(asynqi_conn *c)
{
	if (!c->closed || c->finished || c->rx_busy || c->tx_busy)
		return false;
	if (c->st == NULL && c->close_posted)
		return false; /* the post finishes */
	c->finished = true;
	return true;
}

static void
finish(asynqi_conn *c)
{
	pthread_mutex_lock(&c->mu);
	asynqi_wbuf *q = c->q_head;
	c->q_head = c->q_tail = NULL;
	c->q_bytes = 0;
	int err = c->err != 0 ? c->err : NNG_ECLOSED;
	pthread_mutex_unlock(&c->mu);
	fail_list(q, err);
	if (c->ops != NULL && c->ops->on_close != NULL)
		c->ops->on_close(c, err);
}

/* Marks c closed with err. Under mu. Returns whether it was open. */
static bool
mark_closed(asynqi_conn *c, int err)
{
	if (c->closed)
		return false;
	c->closed = true;
	c->err = err;
	return true;
}

/* In-process: schedules an end's finish on the owner. Under c->mu. */
static void
inproc_post_close(asynqi_conn *c)
{
	if (c->close_posted || c->finished)
		return;
	c->close_posted = true;
	asynqi_conn_hold(c);
	asynq_sched_post(c->owner, &c->close_post);
}

/* In-process: the other end of a closing end closes too. No lock held. */
static void
inproc_close_peer(asynqi_conn *peer)
{
	pthread_mutex_lock(&peer->mu);
	if (mark_closed(peer, NNG_ECONNSHUT))
		inproc_post_close(peer);
	pthread_mutex_unlock(&peer->mu);
}

/* In-process: posts the read of end c to the owner when its inbox has bytes
 * and no read is posted yet. Without in_mu held. */
static void
inproc_post_read(asynqi_conn *c)
{
	pthread_mutex_lock(&c->in_mu);
	bool post = c->in_len > 0 && !c->read_posted;
	if (post) {
		c->read_posted = true;
		asynqi_conn_hold(c);
	}
	pthread_mutex_unlock(&c->in_mu);
	if (post)
		asynq_sched_post(c->owner, &c->read_post);
}

static void
inproc_close(asynq_post *p)
{
	asynqi_conn *c =
	    (asynqi_conn *)((char *)p - offsetof(asynqi_conn, close_post));
	pthread_mutex_lock(&c->mu);
	c->close_posted = false;
	bool fin = finish_claim(c);
	pthread_mutex_unlock(&c->mu);
	if (fin)
		finish(c);
	asynqi_conn_rele(c);
}

void
asynqi_conn_close_flushed(asynqi_conn *c)
{
	if (c->st == NULL) {
		/* In process, a flush delivers at once. */
		inproc_flush(c);
		asynqi_conn_close(c);
		return;
	}
	pthread_mutex_lock(&c->mu);
	c->close_flushed = true;
	pthread_mutex_unlock(&c->mu);
	asynqi_conn_flush(c);
	pthread_mutex_lock(&c->mu);
	bool now = !c->tx_busy && c->q_head == NULL;
	pthread_mutex_unlock(&c->mu);
	if (now)
		asynqi_conn_close(c);
}

void
asynqi_conn_close(asynqi_conn *c)
{
	pthread_mutex_lock(&c->mu);
	bool was_open = mark_closed(c, NNG_ECLOSED);
	if (c->st == NULL) {
		asynqi_conn *peer = c->peer;
		if (was_open)
			inproc_post_close(c);
		pthread_mutex_unlock(&c->mu);
		if (peer != NULL && was_open)
			inproc_close_peer(peer);
		return;
	}
	bool fin = finish_claim(c);
	pthread_mutex_unlock(&c->mu);
	if (was_open) {
		nng_stream_close(c->st); /* completes the aios in flight */
		/* nng's TLS stream keeps a send queued behind a handshake that
		 * never finished, even when closed: cancel it too. */
		nng_aio_cancel(c->txs);
		nng_aio_cancel(c->rx);
	}
	if (fin)
		finish(c);
}

/* ---- Reading ------------------------------------------------------------- */

/* Hands rbuf to on_read; false when the protocol closed the connection or
 * the buffer cannot grow. Read path only. */
static bool
consume(asynqi_conn *c)
{
	size_t need = 0;
	size_t used = c->ops->on_read(c, c->rbuf, c->rlen, &need);
	if (used == SIZE_MAX)
		return false;
	if (used > c->rlen)
		used = c->rlen;
	if (used != 0) {
		memmove(c->rbuf, c->rbuf + used, c->rlen - used);
		c->rlen -= used;
	}
	if (need > c->max_read)
		return false;
	/* Bytes left that the protocol did not ask more for: it stopped. */
	atomic_store(&c->stalled, c->rlen > 0 && need <= c->rlen);
	size_t want = c->rcap;
	if (need > want) {
		/* Room for the next frame: a power of two, at most max_read. */
		want = RBUF_INIT;
		while (want < need)
			want *= 2;
		if (want > c->max_read)
			want = c->max_read;
	} else if (c->rlen == c->rcap) {
		return false; /* full, and the protocol consumed nothing */
	} else if (c->rcap > 4 * RBUF_INIT && c->rlen <= RBUF_INIT &&
	    need <= RBUF_INIT) {
		want = RBUF_INIT; /* give back what a large frame took */
	}
	if (want != c->rcap) {
		uint8_t *p = realloc(c->rbuf, want);
		if (p == NULL)
			return false;
		c->rbuf = p;
		c->rcap = want;
	}
	return true;
}

/* Under mu: starts a receive if allowed. */
static void
rx_arm_locked(asynqi_conn *c)
{
	if (c->closed || c->paused || c->rx_busy || !c->started ||
	    c->st == NULL)
		return;
	c->rx_busy = true;
	asynqi_conn_hold(c);
	if (atomic_load(&c->stalled)) {
		/* The protocol stopped in the middle of what it was given
		 * (it paused the connection): it gets the rest first, on
		 * nng's thread as reads are. */
		atomic_store(&c->rx_kick, true);
		nng_sleep_aio(0, c->rx);
		return;
	}
	nng_iov iov = { c->rbuf + c->rlen, c->rcap - c->rlen };
	nng_aio_set_iov(c->rx, 1, &iov);
	nng_stream_recv(c->st, c->rx);
}

static void
rx_cb(void *arg)
{
	asynqi_conn *c = arg;
	bool kick = atomic_exchange(&c->rx_kick, false);
	int rv = kick ? 0 : nng_aio_result(c->rx);
	if (kick) {
		pthread_mutex_lock(&c->mu);
		if (c->closed)
			rv = NNG_ECLOSED;
		pthread_mutex_unlock(&c->mu);
	}
	bool ok = rv == 0;
	if (ok) {
		if (!kick)
			c->rlen += nng_aio_count(c->rx);
		ok = consume(c);
	}
	pthread_mutex_lock(&c->mu);
	c->rx_busy = false;
	bool closing = false;
	if (!ok)
		closing = mark_closed(c, rv != 0 ? rv : NNG_EPROTO);
	else
		rx_arm_locked(c);
	bool fin = finish_claim(c);
	pthread_mutex_unlock(&c->mu);
	if (closing)
		nng_stream_close(c->st);
	if (fin)
		finish(c);
	asynqi_conn_rele(c);
}

void
asynqi_conn_start(asynqi_conn *c)
{
	if (c->rbuf == NULL) {
		size_t cap = RBUF_INIT < c->max_read ? RBUF_INIT : c->max_read;
		if (cap < 64)
			cap = 64;
		c->rbuf = malloc(cap);
		c->rcap = c->rbuf != NULL ? cap : 0;
	}
	pthread_mutex_lock(&c->mu);
	c->started = true;
	if (c->rbuf == NULL)
		mark_closed(c, NNG_ENOMEM);
	if (c->st != NULL) {
		rx_arm_locked(c);
		bool fin = finish_claim(c);
		pthread_mutex_unlock(&c->mu);
		if (fin)
			finish(c);
		return;
	}
	if (c->closed)
		inproc_post_close(c);
	pthread_mutex_unlock(&c->mu);
	inproc_post_read(c); /* bytes the peer wrote before this end started */
}

void
asynqi_conn_pause(asynqi_conn *c)
{
	pthread_mutex_lock(&c->mu);
	c->paused = true;
	pthread_mutex_unlock(&c->mu);
}

void
asynqi_conn_resume(asynqi_conn *c)
{
	pthread_mutex_lock(&c->mu);
	c->paused = false;
	rx_arm_locked(c);
	pthread_mutex_unlock(&c->mu);
	if (c->st == NULL)
		inproc_post_read(c);
}

/* In-process: the owner runs the read of end c. */
static void
inproc_read(asynq_post *p)
{
	asynqi_conn *c =
	    (asynqi_conn *)((char *)p - offsetof(asynqi_conn, read_post));
	pthread_mutex_lock(&c->mu);
	/* Bytes that arrived before a close are still read. */
	bool skip = c->finished || c->paused || !c->started;
	if (!skip)
		c->rx_busy = true;
	pthread_mutex_unlock(&c->mu);
	bool ok = true;
	if (!skip) {
		pthread_mutex_lock(&c->in_mu);
		c->read_posted = false;
		size_t n = c->in_len;
		if (c->rcap - c->rlen < n) {
			size_t cap = c->rcap != 0 ? c->rcap : RBUF_INIT;
			while (cap - c->rlen < n)
				cap *= 2;
			uint8_t *nb = realloc(c->rbuf, cap);
			if (nb != NULL) {
				c->rbuf = nb;
				c->rcap = cap;
			} else {
				ok = false;
			}
		}
		if (ok) {
			memcpy(c->rbuf + c->rlen, c->inbox, n);
			c->rlen += n;
			c->in_len = 0;
		}
		pthread_mutex_unlock(&c->in_mu);
		if (ok)
			ok = consume(c);
	} else {
		pthread_mutex_lock(&c->in_mu);
		c->read_posted = false;
		pthread_mutex_unlock(&c->in_mu);
	}
	pthread_mutex_lock(&c->mu);
	c->rx_busy = false;
	bool was_open = false;
	if (!ok)
		was_open = mark_closed(c, NNG_EPROTO);
	asynqi_conn *peer = c->peer;
	if (c->closed)
		inproc_post_close(c);
	pthread_mutex_unlock(&c->mu);
	if (was_open && peer != NULL)
		inproc_close_peer(peer);
	asynqi_conn_rele(c);
}

/* ---- Writing ------------------------------------------------------------- */

size_t
asynqi_conn_queue(asynqi_conn *c, asynqi_wbuf *w)
{
	size_t n = 0;
	for (unsigned i = 0; i < w->niov; i++)
		n += w->iov[i].iov_len;
	w->next = NULL;
	pthread_mutex_lock(&c->mu);
	if (c->closed) {
		int err = c->err != 0 ? c->err : NNG_ECLOSED;
		pthread_mutex_unlock(&c->mu);
		w->done(w, err);
		return 0;
	}
	if (c->q_tail != NULL)
		c->q_tail->next = w;
	else
		c->q_head = w;
	c->q_tail = w;
	c->q_bytes += n;
	size_t queued = c->q_bytes;
	pthread_mutex_unlock(&c->mu);
	return queued;
}

size_t
asynqi_conn_queued_bytes(asynqi_conn *c)
{
	pthread_mutex_lock(&c->mu);
	size_t n = c->q_bytes;
	pthread_mutex_unlock(&c->mu);
	return n;
}

/* Under mu, with tx_busy claimed: moves queued wbufs into the iovecs of the
 * next send. Copied wbufs go to *copied (done once unlocked); the others to
 * s_head. Returns the bytes to send. */
static size_t
build_send(asynqi_conn *c, asynqi_wbuf **copied)
{
	c->niov = 0;
	size_t staged = 0, total = 0;
	asynqi_wbuf **sent_tail = &c->s_head;
	while (*sent_tail != NULL)
		sent_tail = &(*sent_tail)->next;
	while (c->q_head != NULL) {
		asynqi_wbuf *w = c->q_head;
		size_t wlen = 0;
		bool small = true;
		for (unsigned i = 0; i < w->niov; i++) {
			wlen += w->iov[i].iov_len;
			if (w->iov[i].iov_len > STAGE_PIECE)
				small = false;
		}
		bool copy =
		    small && c->stage != NULL && staged + wlen <= STAGE_MAX;
		if (!copy && c->niov + w->niov > MAX_IOV)
			break;
		if (copy) {
			/* Merge with the staging iovec if it is the last one.
			 */
			bool merge = c->niov > 0 && staged > 0 &&
			    (uint8_t *)c->iov[c->niov - 1].iov_buf +
			            c->iov[c->niov - 1].iov_len ==
			        c->stage + staged;
			if (!merge && c->niov == MAX_IOV)
				break;
			uint8_t *d = c->stage + staged;
			for (unsigned i = 0; i < w->niov; i++) {
				memcpy(d, w->iov[i].iov_buf, w->iov[i].iov_len);
				d += w->iov[i].iov_len;
			}
			if (merge) {
				c->iov[c->niov - 1].iov_len += wlen;
			} else {
				c->iov[c->niov].iov_buf = c->stage + staged;
				c->iov[c->niov].iov_len = wlen;
				c->niov++;
			}
			staged += wlen;
			c->q_head = w->next;
			w->next = *copied;
			*copied = w;
		} else {
			for (unsigned i = 0; i < w->niov; i++) {
				if (w->iov[i].iov_len == 0)
					continue;
				c->iov[c->niov++] = w->iov[i];
			}
			c->q_head = w->next;
			w->next = NULL;
			*sent_tail = w;
			sent_tail = &w->next;
		}
		total += wlen;
		c->q_bytes -= wlen;
	}
	if (c->q_head == NULL)
		c->q_tail = NULL;
	return total;
}

/* Drops the first n bytes of the send's iovecs. */
static void
iov_advance(asynqi_conn *c, size_t n)
{
	unsigned i = 0;
	while (i < c->niov && n >= c->iov[i].iov_len) {
		n -= c->iov[i].iov_len;
		i++;
	}
	if (i < c->niov && n > 0) {
		c->iov[i].iov_buf = (uint8_t *)c->iov[i].iov_buf + n;
		c->iov[i].iov_len -= n;
	}
	memmove(c->iov, c->iov + i, (c->niov - i) * sizeof(c->iov[0]));
	c->niov -= i;
}

static void send_failed(asynqi_conn *c, int rv);

/* Sends the iovecs through the callback aio (tx_busy held; the caller's
 * reference moves to txs_cb). The send starts under mu, and only while the
 * connection is open: nng's streams leave a send that starts after their
 * close queued for ever, and nng 1.5.2's TLS stream cannot even cancel one
 * that waits behind an unfinished handshake (its cancel aborts the TCP
 * send beneath, which a close already stopped), so txs_cb would never
 * run, tx_busy never clear, and finish and on_close never come: the
 * channel's free or the server's close waited for ever. Started before
 * the close (which marks `closed` under mu first), the send is failed by
 * nng_stream_close; after it, it fails here. */
static void
send_async(asynqi_conn *c)
{
	asynqi_conn_hold(c); /* txs_cb may drop the caller's at once */
	nng_aio_set_iov(c->txs, c->niov, c->iov);
	pthread_mutex_lock(&c->mu);
	bool closed = c->closed;
	if (!closed)
		nng_stream_send(c->st, c->txs);
	pthread_mutex_unlock(&c->mu);
	if (closed) {
		send_failed(c, NNG_ECLOSED);
		asynqi_conn_rele(c); /* what txs_cb would have dropped */
	}
	asynqi_conn_rele(c);
}

/* The send in flight failed with rv (tx_busy held): the connection closes,
 * the wbufs of the send fail, and the sender role ends. */
static void
send_failed(asynqi_conn *c, int rv)
{
	pthread_mutex_lock(&c->mu);
	bool was_open = mark_closed(c, rv);
	asynqi_wbuf *sent = c->s_head;
	c->s_head = NULL;
	c->tx_busy = false;
	c->niov = 0;
	bool fin = finish_claim(c);
	pthread_mutex_unlock(&c->mu);
	if (was_open)
		nng_stream_close(c->st);
	fail_list(sent, rv);
	if (fin)
		finish(c);
}

/* The sender (tx_busy held): keeps sending until the queue is empty, an
 * asynchronous send is in flight (its callback continues), or an error. */
static void
send_loop(asynqi_conn *c, bool from_cb)
{
	for (;;) {
		if (c->niov == 0) {
			pthread_mutex_lock(&c->mu);
			asynqi_wbuf *sent = c->s_head;
			c->s_head = NULL;
			asynqi_wbuf *copied = NULL;
			bool more = !c->closed && c->q_head != NULL;
			if (more)
				(void)build_send(c, &copied);
			else
				c->tx_busy = false;
			bool shut = !more && c->close_flushed &&
			    mark_closed(c, NNG_ECLOSED);
			bool fin = !more && finish_claim(c);
			pthread_mutex_unlock(&c->mu);
			if (shut)
				nng_stream_close(c->st);
			fail_list(sent, 0);
			fail_list(copied, 0);
			if (fin)
				finish(c);
			if (!more)
				goto out;
			continue;
		}
		int rv = NNG_ECANCELED;
		size_t n = 0;
		if (c->fast_tx && !from_cb) {
			nng_aio_set_iov(c->txf, c->niov, c->iov);
			nng_stream_send(c->st, c->txf);
			/* Done inline when it has a count or an error (a send
			 * of n > 0 bytes completes with one of them); else
			 * the socket buffer is full: take it back. The wait
			 * also covers a completion racing with the reads. */
			if (nng_aio_count(c->txf) == 0 &&
			    nng_aio_result(c->txf) == 0)
				nng_aio_cancel(c->txf);
			nng_aio_wait(c->txf);
			rv = nng_aio_result(c->txf);
			n = nng_aio_count(c->txf);
		}
		if (rv == NNG_ECANCELED && n == 0) {
			/* Not sent inline: the callback aio takes over. */
			send_async(c);
			return; /* the reference moves to txs_cb */
		}
		from_cb = false;
		if (rv != 0) {
			send_failed(c, rv);
			goto out;
		}
		iov_advance(c, n);
	}
out:
	asynqi_conn_rele(c);
}

static void
txs_cb(void *arg)
{
	asynqi_conn *c = arg;
	int rv = nng_aio_result(c->txs);
	if (rv != 0) {
		send_failed(c, rv);
		asynqi_conn_rele(c);
		return;
	}
	iov_advance(c, nng_aio_count(c->txs));
	if (c->niov > 0) {
		/* The rest of this send, again through the callback aio. */
		send_async(c);
		return;
	}
	send_loop(c, false);
}

/* In-process: copies the queue into the peer's inbox. */
static void
inproc_flush(asynqi_conn *c)
{
	pthread_mutex_lock(&c->mu);
	asynqi_wbuf *q = c->q_head;
	c->q_head = c->q_tail = NULL;
	c->q_bytes = 0;
	asynqi_conn *peer = c->closed ? NULL : c->peer;
	bool ok = true;
	bool post = false;
	if (peer != NULL && q != NULL) {
		pthread_mutex_lock(&peer->in_mu);
		for (asynqi_wbuf *w = q; w != NULL && ok; w = w->next) {
			for (unsigned i = 0; i < w->niov && ok; i++) {
				size_t n = w->iov[i].iov_len;
				if (peer->in_cap - peer->in_len < n) {
					size_t cap = peer->in_cap != 0
					    ? peer->in_cap
					    : 4096;
					while (cap - peer->in_len < n)
						cap *= 2;
					uint8_t *nb = realloc(peer->inbox, cap);
					if (nb == NULL) {
						ok = false;
						break;
					}
					peer->inbox = nb;
					peer->in_cap = cap;
				}
				memcpy(peer->inbox + peer->in_len,
				    w->iov[i].iov_buf, n);
				peer->in_len += n;
			}
		}
		post = ok && !peer->read_posted && peer->in_len > 0;
		if (post) {
			peer->read_posted = true;
			asynqi_conn_hold(peer);
		}
		pthread_mutex_unlock(&peer->in_mu);
	}
	int err = peer == NULL ? (c->err != 0 ? c->err : NNG_ECLOSED)
	    : ok               ? 0
	                       : NNG_ENOMEM;
	pthread_mutex_unlock(&c->mu);
	if (post)
		asynq_sched_post(peer->owner, &peer->read_post);
	fail_list(q, err);
	if (err == NNG_ENOMEM)
		asynqi_conn_close(c);
}

void
asynqi_conn_flush(asynqi_conn *c)
{
	if (c->st == NULL) {
		inproc_flush(c);
		return;
	}
	pthread_mutex_lock(&c->mu);
	if (c->closed || c->tx_busy || c->q_head == NULL) {
		pthread_mutex_unlock(&c->mu);
		return;
	}
	if (c->stage == NULL)
		c->stage = malloc(STAGE_MAX);
	c->tx_busy = true;
	asynqi_conn_hold(c);
	asynqi_wbuf *copied = NULL;
	(void)build_send(c, &copied);
	pthread_mutex_unlock(&c->mu);
	fail_list(copied, 0);
	send_loop(c, false);
}

/* ---- In-process registry ------------------------------------------------- */

struct asynqi_listener {
	char *name;             /* inproc name, or NULL */
	nng_stream_listener *l; /* stream listener, or NULL */
	nng_aio *aio;
	asynqi_accept_fn accept;
	asynqi_owner_fn owner;
	void *arg;
	asynqi_listener *next; /* registry */
	long busy;             /* inproc accepts running, under reg_mu */
	bool closing;
	pthread_mutex_t mu;
	pthread_cond_t cv;
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t reg_cv = PTHREAD_COND_INITIALIZER;
static asynqi_listener *reg_head;

static void
accept_cb(void *arg)
{
	asynqi_listener *l = arg;
	int rv = nng_aio_result(l->aio);
	if (rv == NNG_ECLOSED || rv == NNG_ECANCELED)
		return;
	if (rv == 0) {
		nng_stream *st = nng_aio_get_output(l->aio, 0);
		asynqi_conn *c;
		if (asynqi_conn_alloc_stream(&c, st, NULL, NULL, 64) ==
		    ASYNQ_OK)
			l->accept(l->arg, c);
		else
			nng_stream_free(st);
	}
	pthread_mutex_lock(&l->mu);
	bool closing = l->closing;
	pthread_mutex_unlock(&l->mu);
	if (!closing)
		nng_stream_listener_accept(l->l, l->aio);
}

asynq_status
asynqi_listener_open(asynqi_listener **lp, const char *url, void *tls,
    asynqi_accept_fn accept, asynqi_owner_fn owner, void *arg, const char **why)
{
	asynqi_listener *l = calloc(1, sizeof(*l));
	*why = "out of memory";
	if (l == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	l->accept = accept;
	l->owner = owner;
	l->arg = arg;
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->cv, NULL);
	if (strncmp(url, "inproc://", 9) == 0) {
		l->name = strdup(url + 9);
		if (l->name == NULL)
			goto fail;
		pthread_mutex_lock(&reg_mu);
		for (asynqi_listener *o = reg_head; o != NULL; o = o->next) {
			if (strcmp(o->name, l->name) == 0) {
				pthread_mutex_unlock(&reg_mu);
				*why = "address in use";
				free(l->name);
				pthread_mutex_destroy(&l->mu);
				pthread_cond_destroy(&l->cv);
				free(l);
				return ASYNQ_UNAVAILABLE;
			}
		}
		l->next = reg_head;
		reg_head = l;
		pthread_mutex_unlock(&reg_mu);
		*lp = l;
		return ASYNQ_OK;
	}
	int rv = nng_stream_listener_alloc(&l->l, url);
	if (rv == 0 && tls != NULL && strncmp(url, "tls+", 4) == 0)
		rv = nng_stream_listener_set_ptr(l->l, NNG_OPT_TLS_CONFIG, tls);
	if (rv == 0)
		rv = nng_stream_listener_listen(l->l);
	if (rv == 0)
		rv = nng_aio_alloc(&l->aio, accept_cb, l);
	if (rv != 0) {
		*why = rv == NNG_EADDRINUSE ? "address in use"
		    : rv == NNG_ENOMEM      ? "out of memory"
		    : rv == NNG_ENOTSUP    ? "not a scheme a server listens on "
		                             "(tcp://, ipc://, tls+tcp://, "
		                             "abstract://, inproc://)"
		    : rv == NNG_EINVAL     ? "malformed URL"
		    : rv == NNG_EADDRINVAL ? "no such address here"
		                           : nng_strerror(rv);
		asynq_status st = rv == NNG_EADDRINUSE ? ASYNQ_UNAVAILABLE
		    : rv == NNG_ENOMEM ? ASYNQ_RESOURCE_EXHAUSTED
		                       : ASYNQ_INVALID_ARGUMENT;
		if (l->l != NULL)
			nng_stream_listener_free(l->l);
		pthread_mutex_destroy(&l->mu);
		pthread_cond_destroy(&l->cv);
		free(l);
		return st;
	}
	nng_stream_listener_accept(l->l, l->aio);
	*lp = l;
	return ASYNQ_OK;
fail:
	pthread_mutex_destroy(&l->mu);
	pthread_cond_destroy(&l->cv);
	free(l);
	return ASYNQ_RESOURCE_EXHAUSTED;
}

void
asynqi_listener_close(asynqi_listener *l)
{
	if (l == NULL)
		return;
	if (l->name != NULL) {
		pthread_mutex_lock(&reg_mu);
		for (asynqi_listener **p = &reg_head; *p != NULL;
		     p = &(*p)->next) {
			if (*p == l) {
				*p = l->next;
				break;
			}
		}
		while (l->busy > 0)
			pthread_cond_wait(&reg_cv, &reg_mu);
		pthread_mutex_unlock(&reg_mu);
		free(l->name);
	} else {
		pthread_mutex_lock(&l->mu);
		l->closing = true;
		pthread_mutex_unlock(&l->mu);
		nng_stream_listener_close(l->l);
		nng_aio_stop(l->aio);
		nng_aio_free(l->aio);
		nng_stream_listener_free(l->l);
	}
	pthread_mutex_destroy(&l->mu);
	pthread_cond_destroy(&l->cv);
	free(l);
}

/* ---- Dialers ------------------------------------------------------------- */

/* nng stream dialers are kept for the life of the process, one per URL and
 * TLS configuration, and shared by every dialer of ours for them. nng frees
 * a stream dialer on its reaper thread when the last of its connections
 * goes, through reference counts ThreadSanitizer cannot follow; one that is
 * never freed keeps every TSan run meaningful, and costs a few hundred bytes
 * per distinct address. */
typedef struct nng_dialer_ent nng_dialer_ent;
struct nng_dialer_ent {
	char *url;
	void *tls;
	nng_stream_dialer *d;
	nng_dialer_ent *next;
};

static pthread_mutex_t nd_mu = PTHREAD_MUTEX_INITIALIZER;
static nng_dialer_ent *nd_head;

static int
shared_dialer(const char *url, void *tls, nng_stream_dialer **dp)
{
	int rv = 0;
	pthread_mutex_lock(&nd_mu);
	nng_dialer_ent *e = nd_head;
	while (e != NULL && (strcmp(e->url, url) != 0 || e->tls != tls))
		e = e->next;
	if (e == NULL) {
		nng_stream_dialer *d = NULL;
		rv = nng_stream_dialer_alloc(&d, url);
		if (rv == 0 && strncmp(url, "tls+", 4) == 0 && tls != NULL)
			rv = nng_stream_dialer_set_ptr(d, NNG_OPT_TLS_CONFIG,
			    tls);
		e = rv == 0 ? calloc(1, sizeof(*e)) : NULL;
		if (e != NULL)
			e->url = strdup(url);
		if (rv == 0 && (e == NULL || e->url == NULL)) {
			rv = NNG_ENOMEM;
			if (e != NULL)
				free(e);
			e = NULL;
		}
		if (rv != 0) {
			if (d != NULL)
				nng_stream_dialer_free(d);
		} else {
			e->tls = tls;
			e->d = d;
			e->next = nd_head;
			nd_head = e;
		}
	}
	if (e != NULL)
		*dp = e->d;
	pthread_mutex_unlock(&nd_mu);
	return rv;
}

struct asynqi_dialer {
	char *name;           /* inproc name, or NULL */
	nng_stream_dialer *d; /* or NULL */
	nng_aio *timer, *dial;
	asynqi_connect_fn connect;
	void *arg;
	pthread_mutex_t mu;
	bool sleeping; /* the timer runs: the attempt has not begun */
	bool hurry;    /* the timer was cancelled to dial at once */
};

static void
dial_cb(void *arg)
{
	asynqi_dialer *d = arg;
	int rv = nng_aio_result(d->dial);
	if (rv != 0) {
		d->connect(d->arg, NULL, rv);
		return;
	}
	nng_stream *st = nng_aio_get_output(d->dial, 0);
	asynqi_conn *c;
	if (asynqi_conn_alloc_stream(&c, st, NULL, NULL, 64) != ASYNQ_OK) {
		nng_stream_free(st);
		d->connect(d->arg, NULL, NNG_ENOMEM);
		return;
	}
	d->connect(d->arg, c, 0);
}

/* The delay passed: dial (stream) or connect in process. */
static void
timer_cb(void *arg)
{
	asynqi_dialer *d = arg;
	int rv = nng_aio_result(d->timer);
	pthread_mutex_lock(&d->mu);
	d->sleeping = false;
	if (rv == NNG_ECANCELED && d->hurry)
		rv = 0;
	d->hurry = false;
	pthread_mutex_unlock(&d->mu);
	if (rv != 0) {
		d->connect(d->arg, NULL, rv);
		return;
	}
	if (d->name == NULL) {
		nng_stream_dialer_dial(d->d, d->dial);
		return;
	}
	pthread_mutex_lock(&reg_mu);
	asynqi_listener *l = reg_head;
	while (l != NULL && strcmp(l->name, d->name) != 0)
		l = l->next;
	if (l != NULL)
		l->busy++;
	pthread_mutex_unlock(&reg_mu);
	if (l == NULL) {
		d->connect(d->arg, NULL, NNG_ECONNREFUSED);
		return;
	}
	asynqi_conn *srv_end = NULL, *cli_end = NULL;
	asynq_sched *owner = l->owner(l->arg);
	rv = owner == NULL ? NNG_ECONNREFUSED
	    : asynqi_conn_pair(&srv_end, &cli_end, owner, 64) == ASYNQ_OK
	    ? 0
	    : NNG_ENOMEM;
	if (rv == 0)
		l->accept(l->arg, srv_end);
	pthread_mutex_lock(&reg_mu);
	if (--l->busy == 0)
		pthread_cond_broadcast(&reg_cv);
	pthread_mutex_unlock(&reg_mu);
	d->connect(d->arg, cli_end, rv);
}

asynq_status
asynqi_dialer_open(asynqi_dialer **dp, const char *url, void *tls,
    asynqi_connect_fn connect, void *arg)
{
	asynqi_dialer *d = calloc(1, sizeof(*d));
	if (d == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	if (pthread_mutex_init(&d->mu, NULL) != 0) {
		free(d);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	d->connect = connect;
	d->arg = arg;
	int rv;
	if (strncmp(url, "inproc://", 9) == 0) {
		if (url[9] == '\0') {
			free(d);
			return ASYNQ_INVALID_ARGUMENT;
		}
		d->name = strdup(url + 9);
		rv = d->name != NULL ? 0 : NNG_ENOMEM;
	} else {
		rv = shared_dialer(url, tls, &d->d);
	}
	if (rv == 0)
		rv = nng_aio_alloc(&d->timer, timer_cb, d);
	if (rv == 0)
		rv = nng_aio_alloc(&d->dial, dial_cb, d);
	if (rv != 0) {
		nng_aio_free(d->timer);
		free(d->name);
		pthread_mutex_destroy(&d->mu);
		free(d);
		return rv == NNG_ENOMEM ? ASYNQ_RESOURCE_EXHAUSTED
		                        : ASYNQ_INVALID_ARGUMENT;
	}
	*dp = d;
	return ASYNQ_OK;
}

void
asynqi_dialer_dial(asynqi_dialer *d, uint32_t delay_ms)
{
	pthread_mutex_lock(&d->mu);
	d->sleeping = true;
	d->hurry = false;
	pthread_mutex_unlock(&d->mu);
	nng_sleep_aio((nng_duration)delay_ms, d->timer);
}

void
asynqi_dialer_hurry(asynqi_dialer *d)
{
	pthread_mutex_lock(&d->mu);
	bool cancel = d->sleeping && !d->hurry;
	if (cancel)
		d->hurry = true;
	pthread_mutex_unlock(&d->mu);
	if (cancel)
		nng_aio_cancel(d->timer);
}

void
asynqi_dialer_close(asynqi_dialer *d)
{
	if (d == NULL)
		return;
	/* Stops our attempt; the shared nng dialer stays (see above). */
	nng_aio_stop(d->timer);
	nng_aio_stop(d->dial);
	nng_aio_free(d->timer);
	nng_aio_free(d->dial);
	free(d->name);
	pthread_mutex_destroy(&d->mu);
	free(d);
}
