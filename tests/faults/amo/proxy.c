/* SPDX-License-Identifier: MIT */
/*
 * The cutting TCP proxy (proxy.h).
 *
 * Design notes: one thread, one poll loop, non-blocking sockets. A relay is
 * a pair of sockets (0: the client's, 1: upstream) with one buffer per
 * direction; a side is read only when the buffer of what it sends is empty,
 * and polled for writing while the other side's buffer holds bytes, so a
 * peer that stops reading (a SIGSTOPped server) stalls only its own relay and
 * the cuts go on. When the upstream cannot be reached (its process is
 * dead), the client's connection is closed at once, as a refused connection
 * would be. Only the atomics are shared with other threads; the relays are
 * the proxy thread's.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "tests/faults/amo/proxy.h"

#define MAX_LINKS 32
#define BUF_BYTES (64 * 1024)

typedef struct relay {
	int fd[2]; /* -1: free slot */
	/* buf[i]: bytes read from fd[i], not yet written to fd[1 - i] */
	uint8_t *buf[2];
	size_t len[2], off[2];
	/* Monotonic, when cutting is on; 0 until the upstream has sent its
	 * first bytes (the server's preface and HELLO), so that cuts fall on
	 * connections that carry requests, not on handshakes (a channel
	 * treats those as failed attempts and fails its waiting calls fast,
	 * without resending anything). */
	uint64_t cut_ns;
	uint64_t life_ns;
} relay;

struct proxy {
	int lfd, port, upstream;
	uint32_t min_ms, max_ms;
	pthread_t th;
	atomic_bool stop, cutting;
	atomic_uint_fast64_t cuts, accepted;
	unsigned seed;
	relay links[MAX_LINKS];
};

static uint64_t
mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void
nonblock(int fd)
{
	fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
}

/* Closes fd; with rst, as a reset (SO_LINGER 0) instead of a FIN. */
static void
close_fd(int fd, bool rst)
{
	if (rst) {
		struct linger l = { .l_onoff = 1, .l_linger = 0 };
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
	}
	close(fd);
}

static void
relay_close(relay *k, bool rst)
{
	close_fd(k->fd[0], rst);
	close_fd(k->fd[1], rst);
	k->fd[0] = k->fd[1] = -1;
	k->len[0] = k->len[1] = k->off[0] = k->off[1] = 0;
}

/* The cut: relay a random part of what is buffered, then close. */
static void
relay_cut(proxy *p, relay *k)
{
	for (int i = 0; i < 2; i++) {
		size_t left = k->len[i] - k->off[i];
		if (left == 0)
			continue;
		size_t part = (size_t)rand_r(&p->seed) % (left + 1);
		if (part > 0 &&
		    write(k->fd[1 - i], k->buf[i] + k->off[i], part) < 0) {
			/* The peer is gone: nothing more to relay. */
		}
	}
	relay_close(k, rand_r(&p->seed) % 2 == 0);
	atomic_fetch_add(&p->cuts, 1);
}

static uint64_t
lifetime_ns(proxy *p)
{
	uint32_t span = p->max_ms - p->min_ms + 1;
	uint32_t ms = p->min_ms + (uint32_t)rand_r(&p->seed) % span;
	return (uint64_t)ms * 1000000u;
}

static void
accept_one(proxy *p)
{
	int c = accept4(p->lfd, NULL, NULL, SOCK_CLOEXEC);
	if (c < 0)
		return;
	atomic_fetch_add(&p->accepted, 1);
	relay *k = NULL;
	for (size_t i = 0; i < MAX_LINKS && k == NULL; i++)
		if (p->links[i].fd[0] < 0)
			k = &p->links[i];
	int u = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = { .sin_family = AF_INET };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a.sin_port = htons((uint16_t)p->upstream);
	/* A blocking connect on loopback ends at once: accepted, or refused
	 * when the upstream process is dead. */
	if (k == NULL || u < 0 ||
	    connect(u, (struct sockaddr *)&a, sizeof(a)) != 0) {
		if (u >= 0)
			close(u);
		close_fd(c, true);
		return;
	}
	int one = 1;
	setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(u, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	nonblock(c);
	nonblock(u);
	k->fd[0] = c;
	k->fd[1] = u;
	k->cut_ns = 0;
	k->life_ns = lifetime_ns(p);
}

/* Moves bytes for side i of k as poll allows; false when k must close. */
static bool
relay_pump(relay *k, int i, short revents)
{
	if (revents & (POLLERR | POLLNVAL))
		return false;
	if ((revents & (POLLIN | POLLHUP)) && k->len[i] == 0) {
		ssize_t n = read(k->fd[i], k->buf[i], BUF_BYTES);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			return false;
		if (n > 0) {
			k->len[i] = (size_t)n;
			k->off[i] = 0;
			if (i == 1 && k->cut_ns == 0)
				k->cut_ns = mono_ns() + k->life_ns;
		}
	}
	int o = 1 - i;
	if (k->len[o] > k->off[o]) {
		ssize_t n = write(k->fd[i], k->buf[o] + k->off[o],
		    k->len[o] - k->off[o]);
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return false;
		if (n > 0)
			k->off[o] += (size_t)n;
		if (k->off[o] == k->len[o])
			k->len[o] = k->off[o] = 0;
	}
	return true;
}

static void *
proxy_main(void *arg)
{
	proxy *p = arg;
	struct pollfd pfd[1 + 2 * MAX_LINKS];
	relay *who[1 + 2 * MAX_LINKS];
	int side[1 + 2 * MAX_LINKS];
	while (!atomic_load(&p->stop)) {
		uint64_t now = mono_ns();
		bool cutting = atomic_load(&p->cutting);
		int timeout = 10;
		size_t n = 0;
		pfd[n++] = (struct pollfd){ .fd = p->lfd, .events = POLLIN };
		for (size_t i = 0; i < MAX_LINKS; i++) {
			relay *k = &p->links[i];
			if (k->fd[0] < 0)
				continue;
			if (cutting && k->cut_ns != 0 && now >= k->cut_ns) {
				relay_cut(p, k);
				continue;
			}
			if (cutting && k->cut_ns != 0 &&
			    (k->cut_ns - now) / 1000000 < (uint64_t)timeout)
				timeout = (int)((k->cut_ns - now) / 1000000);
			for (int s = 0; s < 2; s++) {
				short ev = 0;
				if (k->len[s] == 0)
					ev |= POLLIN;
				if (k->len[1 - s] > k->off[1 - s])
					ev |= POLLOUT;
				who[n] = k;
				side[n] = s;
				pfd[n++] = (struct pollfd){ .fd = k->fd[s],
					.events = ev };
			}
		}
		if (poll(pfd, n, timeout) <= 0)
			continue;
		if (pfd[0].revents & POLLIN)
			accept_one(p);
		for (size_t j = 1; j < n; j++) {
			relay *k = who[j];
			if (k->fd[0] < 0 || pfd[j].revents == 0)
				continue; /* closed by its other side */
			if (!relay_pump(k, side[j], pfd[j].revents))
				relay_close(k, false);
		}
	}
	for (size_t i = 0; i < MAX_LINKS; i++)
		if (p->links[i].fd[0] >= 0)
			relay_close(&p->links[i], false);
	return NULL;
}

proxy *
proxy_start(int upstream_port, uint32_t min_ms, uint32_t max_ms)
{
	proxy *p = calloc(1, sizeof(*p));
	if (p == NULL)
		return NULL;
	p->upstream = upstream_port;
	p->min_ms = min_ms;
	p->max_ms = max_ms > min_ms ? max_ms : min_ms;
	p->seed = (unsigned)getpid() ^ (unsigned)mono_ns();
	atomic_init(&p->stop, false);
	atomic_init(&p->cutting, false);
	atomic_init(&p->cuts, 0);
	atomic_init(&p->accepted, 0);
	for (size_t i = 0; i < MAX_LINKS; i++) {
		relay *k = &p->links[i];
		k->fd[0] = k->fd[1] = -1;
		k->buf[0] = malloc(BUF_BYTES);
		k->buf[1] = malloc(BUF_BYTES);
		if (k->buf[0] == NULL || k->buf[1] == NULL)
			goto fail;
	}
	struct sockaddr_in a = { .sin_family = AF_INET };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t alen = sizeof(a);
	if ((p->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
		goto fail;
	if (bind(p->lfd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
	    listen(p->lfd, 64) != 0 ||
	    getsockname(p->lfd, (struct sockaddr *)&a, &alen) != 0)
		goto fail_sock;
	p->port = ntohs(a.sin_port);
	if (pthread_create(&p->th, NULL, proxy_main, p) != 0)
		goto fail_sock;
	return p;
fail_sock:
	close(p->lfd);
fail:
	for (size_t i = 0; i < MAX_LINKS; i++) {
		free(p->links[i].buf[0]);
		free(p->links[i].buf[1]);
	}
	free(p);
	return NULL;
}

int
proxy_port(const proxy *p)
{
	return p->port;
}

void
proxy_cutting(proxy *p, bool on)
{
	atomic_store(&p->cutting, on);
}

uint64_t
proxy_cuts(const proxy *p)
{
	return atomic_load(&((proxy *)p)->cuts);
}

uint64_t
proxy_accepted(const proxy *p)
{
	return atomic_load(&((proxy *)p)->accepted);
}

void
proxy_stop(proxy *p)
{
	if (p == NULL)
		return;
	atomic_store(&p->stop, true);
	pthread_join(p->th, NULL);
	close(p->lfd);
	for (size_t i = 0; i < MAX_LINKS; i++) {
		free(p->links[i].buf[0]);
		free(p->links[i].buf[1]);
	}
	free(p);
}
