/* SPDX-License-Identifier: MIT */
/*
 * The fuzz server and the hand-written framed client of the live-server
 * fuzz targets (fuzz_wire.h).
 *
 * Design notes:
 * - The client is plain POSIX sockets and poll, independent of the
 *   framework's connection layer, so that it checks the server's framing
 *   from outside rather than agreeing with it by construction.
 * - Sockets are ipc:// (AF_UNIX) files under /tmp named by harness and
 *   process id: short enough for sun_path, and no port to collide on.
 * - Writes use MSG_NOSIGNAL, so a server that closes a connection
 *   mid-write is an error return, not a SIGPIPE.
 * - Stopping is watched: a server that cannot close (a connection whose
 *   close never finishes, a request never answered) aborts the harness
 *   after FUZZ_STOP_TIMEOUT_S with a message that says so, rather than
 *   hanging until run.sh's timeout.
 */
#include "tests/fuzz/fuzz_wire.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "tests/fuzz/fuzz_service.h"

void
fuzz_server_start(fuzz_server *fs, const char *name)
{
	asynq_runtime_cfg rcfg = { .workers = 2 };
	asynq_rpc_server_cfg scfg = {
		.max_msg_bytes = FUZZ_MAX_MSG_BYTES,
		.max_calls = FUZZ_MAX_CALLS,
		.max_inflight_calls = FUZZ_MAX_INFLIGHT,
		.decode_budget = FUZZ_DECODE_BUDGET,
		.dedup_entries = FUZZ_DEDUP_ENTRIES,
		.dedup_age_ms = FUZZ_DEDUP_AGE_MS,
		.dedup_bytes = FUZZ_DEDUP_BYTES,
	};
	memset(fs, 0, sizeof(*fs));
	fs->name = name;
	snprintf(fs->path, sizeof(fs->path), "/tmp/asynq-fuzz-%s-%d.sock", name,
	    (int)getpid());
	snprintf(fs->url, sizeof(fs->url), "ipc://%s", fs->path);
	(void)unlink(fs->path);
	asynq_status st;
	const char *what = "runtime";
	if ((st = asynq_runtime_alloc(&fs->rt, &rcfg)) != ASYNQ_OK)
		goto fail;
	what = "server";
	if ((st = asynq_rpc_server_alloc(&fs->srv, fs->rt, &scfg)) != ASYNQ_OK)
		goto fail;
	what = "service";
	if ((st = asynq_rpc_server_add_service(fs->srv, FUZZ_SVC, fuzz_handlers,
	         NULL)) != ASYNQ_OK)
		goto fail;
	what = fs->url;
	if ((st = asynq_rpc_server_listen(fs->srv, fs->url)) != ASYNQ_OK)
		goto fail;
	return;
fail:
	fprintf(stderr, "%s fuzz: cannot start the server: %s: %s\n", name,
	    what, asynq_strerror(st));
	abort();
}

/* The watchdog of fuzz_server_stop. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	bool done;
	const char *name;
} stop_wd = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false,
	NULL };

static void *
stop_watch(void *arg)
{
	(void)arg;
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += FUZZ_STOP_TIMEOUT_S;
	pthread_mutex_lock(&stop_wd.mu);
	while (!stop_wd.done)
		if (pthread_cond_timedwait(&stop_wd.cv, &stop_wd.mu, &ts) ==
		    ETIMEDOUT) {
			fprintf(stderr,
			    "\n%s fuzz: the server did not close within %d s "
			    "(a connection or a request it holds never "
			    "finished)\n",
			    stop_wd.name, FUZZ_STOP_TIMEOUT_S);
			abort();
		}
	pthread_mutex_unlock(&stop_wd.mu);
	return NULL;
}

void
fuzz_server_stop(fuzz_server *fs)
{
	pthread_t wd;
	stop_wd.name = fs->name;
	bool watched = pthread_create(&wd, NULL, stop_watch, NULL) == 0;
	asynq_rpc_server_free(fs->srv);
	asynq_runtime_free(fs->rt);
	asynq_thread_fini();
	(void)unlink(fs->path);
	fs->srv = NULL;
	fs->rt = NULL;
	if (watched) {
		pthread_mutex_lock(&stop_wd.mu);
		stop_wd.done = true;
		pthread_cond_signal(&stop_wd.cv);
		pthread_mutex_unlock(&stop_wd.mu);
		pthread_join(wd, NULL);
	}
}

uint64_t
fuzz_server_requests(const fuzz_server *fs)
{
	asynq_rpc_server_stats ss;
	asynq_rpc_server_stats_get(fs->srv, &ss);
	return ss.requests;
}

int
fuzz_conn_connect(fuzz_conn *c, const fuzz_server *fs)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	snprintf(a.sun_path, sizeof(a.sun_path), "%s", fs->path);
	c->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (c->fd < 0)
		return -1;
	if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		int e = errno;
		close(c->fd);
		c->fd = -1;
		errno = e;
		return -1;
	}
	return 0;
}

int
fuzz_conn_write(fuzz_conn *c, const void *p, size_t n)
{
	const uint8_t *b = p;
	while (n > 0) {
		ssize_t k = send(c->fd, b, n, MSG_NOSIGNAL);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		b += k;
		n -= (size_t)k;
	}
	return 0;
}

int
fuzz_conn_read(fuzz_conn *c, void *p, size_t n, uint64_t deadline_ns)
{
	uint8_t *b = p;
	while (n > 0) {
		uint64_t now = asynq_now_ns();
		if (now >= deadline_ns)
			return FUZZ_IO_TIMEOUT;
		uint64_t left_ms = (deadline_ns - now + 999999) / 1000000;
		struct pollfd pfd = { .fd = c->fd, .events = POLLIN };
		int pr = poll(&pfd, 1, left_ms > 60000 ? 60000 : (int)left_ms);
		if (pr < 0 && errno != EINTR)
			return FUZZ_IO_CLOSED;
		if (pr <= 0)
			continue;
		ssize_t k = recv(c->fd, b, n, 0);
		if (k < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (k <= 0)
			return FUZZ_IO_CLOSED;
		b += k;
		n -= (size_t)k;
	}
	return FUZZ_IO_OK;
}

int
fuzz_conn_next(fuzz_conn *c, uint8_t *type, uint8_t **body, size_t *len,
    size_t max_len, uint64_t deadline_ns)
{
	uint8_t h[FUZZ_FRAME_HDR];
	*body = NULL;
	*len = 0;
	int rv = fuzz_conn_read(c, h, sizeof(h), deadline_ns);
	if (rv != FUZZ_IO_OK)
		return rv;
	*type = h[0];
	*len =
	    (size_t)h[1] << 24 | (size_t)h[2] << 16 | (size_t)h[3] << 8 | h[4];
	if (*len > max_len)
		return FUZZ_IO_CLOSED;
	if ((*body = malloc(*len + 1)) == NULL)
		abort();
	rv = fuzz_conn_read(c, *body, *len, deadline_ns);
	if (rv != FUZZ_IO_OK) {
		free(*body);
		*body = NULL;
	}
	return rv;
}

void
fuzz_conn_close(fuzz_conn *c)
{
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

void
fuzz_frame_hdr(uint8_t out[FUZZ_FRAME_HDR], unsigned type, uint32_t len)
{
	out[0] = (uint8_t)type;
	out[1] = (uint8_t)(len >> 24);
	out[2] = (uint8_t)(len >> 16);
	out[3] = (uint8_t)(len >> 8);
	out[4] = (uint8_t)len;
}

uint8_t *
fuzz_methods_body(size_t *len)
{
	char *names[FUZZ_METHOD_IDS];
	for (uint32_t i = 0; i < FUZZ_METHOD_IDS; i++)
		names[i] = (char *)fuzz_method_id_name(i + 1);
	Asynq__Rpc__Request rq = ASYNQ__RPC__REQUEST__INIT;
	rq.n_methods = FUZZ_METHOD_IDS;
	rq.methods = names;
	*len = asynq__rpc__request__get_packed_size(&rq);
	uint8_t *b = malloc(*len);
	if (b == NULL)
		abort();
	asynq__rpc__request__pack(&rq, b);
	return b;
}

int
fuzz_conn_open(fuzz_conn *c, const fuzz_server *fs, int timeout_ms, char *why,
    size_t n)
{
	uint64_t deadline = asynq_now_ns() + (uint64_t)timeout_ms * 1000000;
	uint8_t pre[FUZZ_PREFACE_LEN], type, *body = NULL;
	size_t len;
	int rv;
	if (fuzz_conn_connect(c, fs) != 0) {
		snprintf(why, n, "connect %s: %s", fs->url, strerror(errno));
		return -1;
	}
	if (fuzz_conn_write(c, FUZZ_PREFACE, FUZZ_PREFACE_LEN) != 0) {
		snprintf(why, n, "the server closed before the preface");
		goto fail;
	}
	if ((rv = fuzz_conn_read(c, pre, sizeof(pre), deadline)) != 0) {
		snprintf(why, n, "no server preface: %s",
		    rv == FUZZ_IO_TIMEOUT ? "timed out" : "closed");
		goto fail;
	}
	if (memcmp(pre, FUZZ_PREFACE, FUZZ_PREFACE_LEN) != 0) {
		snprintf(why, n, "the server's preface is not asynq/1");
		goto fail;
	}
	if ((rv = fuzz_conn_next(c, &type, &body, &len, 1024, deadline)) != 0) {
		snprintf(why, n, "no HELLO: %s",
		    rv == FUZZ_IO_TIMEOUT ? "timed out" : "closed");
		goto fail;
	}
	Asynq__Rpc__Hello *h = type == FUZZ_FRAME_HELLO
	    ? asynq__rpc__hello__unpack(NULL, len, body)
	    : NULL;
	free(body);
	if (h == NULL) {
		snprintf(why, n, "the first frame is type %u, not a HELLO",
		    type);
		goto fail;
	}
	bool right = h->max_request_bytes == FUZZ_MAX_MSG_BYTES &&
	    h->max_calls == FUZZ_MAX_CALLS;
	snprintf(why, n, "HELLO announces %llu bytes and %u calls",
	    (unsigned long long)h->max_request_bytes, h->max_calls);
	asynq__rpc__hello__free_unpacked(h, NULL);
	if (!right)
		goto fail;
	size_t ml;
	uint8_t *mb = fuzz_methods_body(&ml);
	uint8_t hdr[FUZZ_FRAME_HDR];
	fuzz_frame_hdr(hdr, FUZZ_FRAME_METHODS, (uint32_t)ml);
	rv = fuzz_conn_write(c, hdr, sizeof(hdr)) == 0 &&
	        fuzz_conn_write(c, mb, ml) == 0
	    ? 0
	    : -1;
	free(mb);
	if (rv != 0) {
		snprintf(why, n, "the server closed after HELLO");
		goto fail;
	}
	why[0] = '\0';
	return 0;
fail:
	fuzz_conn_close(c);
	return -1;
}

/* ---- The canary ---------------------------------------------------------- */

uint8_t *
fuzz_canary_body(size_t *len)
{
	Asynq__Fuzz__Num num = ASYNQ__FUZZ__NUM__INIT;
	num.v = 1;
	Asynq__Fuzz__Tree tree = ASYNQ__FUZZ__TREE__INIT;
	tree.v = 2;
	uint8_t nb[16], tb[16];
	size_t nl = asynq__fuzz__num__pack(&num, nb);
	size_t tl = asynq__fuzz__tree__pack(&tree, tb);
	Asynq__Rpc__Call c[3] = { ASYNQ__RPC__CALL__INIT,
		ASYNQ__RPC__CALL__INIT, ASYNQ__RPC__CALL__INIT };
	c[0].method = (char *)FUZZ_METHOD(SUM)->full_name;
	c[0].call_id = 1;
	c[0].payload = (ProtobufCBinaryData){ nl, nb };
	c[1].method_id = ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_COUNT + 1;
	c[1].call_id = 2;
	c[1].payload = (ProtobufCBinaryData){ tl, tb };
	c[2].method = "asynq.fuzz.Absent/Gone";
	c[2].call_id = 3;
	Asynq__Rpc__Call *cp[3] = { &c[0], &c[1], &c[2] };
	Asynq__Rpc__Request rq = ASYNQ__RPC__REQUEST__INIT;
	rq.n_calls = 3;
	rq.calls = cp;
	rq.request_id = FUZZ_CANARY_ID;
	*len = asynq__rpc__request__get_packed_size(&rq);
	uint8_t *b = malloc(*len);
	if (b == NULL)
		abort();
	asynq__rpc__request__pack(&rq, b);
	return b;
}

const char *
fuzz_canary_judge(const Asynq__Rpc__Reply *rep)
{
	if (rep->status != ASYNQ_OK)
		return "the canary failed as a whole";
	if (rep->request_id != FUZZ_CANARY_ID)
		return "the canary's reply has another request_id";
	if (rep->n_results != 3)
		return "the canary's 3 calls got another number of results";
	bool seen[3] = { false, false, false };
	for (size_t i = 0; i < 3; i++) {
		const Asynq__Rpc__Result *r = rep->results[i];
		if (r->call_id < 1 || r->call_id > 3 || seen[r->call_id - 1])
			return "the canary's results have wrong call_ids";
		seen[r->call_id - 1] = true;
		if (r->call_id == 3) {
			if (r->status != ASYNQ_UNIMPLEMENTED)
				return "the canary's unknown method did not "
				       "fail UNIMPLEMENTED";
			continue;
		}
		if (r->status != ASYNQ_OK)
			return "a canary call failed";
		Asynq__Fuzz__Num *out = asynq__fuzz__num__unpack(NULL,
		    r->payload.len, r->payload.data);
		if (out == NULL)
			return "a canary call replied garbage";
		/* Sum(1) of one call is 2; Count of one Tree is 1 message,
		 * 1 deep. */
		bool ok =
		    r->call_id == 1 ? out->v == 2 : out->v == 1 && out->w == 1;
		asynq__fuzz__num__free_unpacked(out, NULL);
		if (!ok)
			return "a canary call replied a wrong value";
	}
	return NULL;
}
