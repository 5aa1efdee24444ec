/* SPDX-License-Identifier: MIT */
/*
 * The peer of a call, as handlers see it (asynq_rpc_peer_get): the address
 * over inproc://, tcp:// and ipc://, for unary and whole-batch handlers and
 * the tasks they spawn, and nothing outside a handler.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "tests/rpc/rpc_fixture.h"
#include "tests/rpc/test_peer.asynq.h"

#define WHO (&asynq__peertest__who__asynq_desc)
#define WM(name) (&WHO->methods[ASYNQ__PEERTEST__WHO__ASYNQ_METHOD_##name])

/* ---- The Who service ----------------------------------------------------- */

/* A copy of p in a new Seen message (malloc'd, as the server frees it). */
static Asynq__Peertest__Seen *
seen_new(const asynq_rpc_peer *p, int64_t v)
{
	Asynq__Peertest__Seen *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return NULL;
	asynq__peertest__seen__init(s);
	s->v = v;
	if (p == NULL)
		return s;
	s->present = true;
	s->address = strdup(p->address != NULL ? p->address : "(null)");
	s->verified = p->verified;
	s->has_subject = p->subject != NULL;
	if (p->subject != NULL)
		s->subject = strdup(p->subject);
	if (p->n_sans > 0) {
		s->sans = calloc(p->n_sans, sizeof(char *));
		for (size_t i = 0; s->sans != NULL && i < p->n_sans; i++)
			s->sans[s->n_sans++] = strdup(p->sans[i]);
	}
	return s;
}

static asynq_status
child_main(asynq_task *t, void *arg)
{
	(void)t;
	return asynq_rpc_peer_get() == arg ? ASYNQ_OK : ASYNQ_INTERNAL;
}

static asynq_status
h_whoami(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)ctx;
	const Asynq__Peertest__Ask *in = (const Asynq__Peertest__Ask *)req;
	const asynq_rpc_peer *p = asynq_rpc_peer_get();
	asynq_future *f = asynq_spawn(child_main, (void *)p);
	asynq_status cst = asynq_await(t, f);
	asynq_future_rele(f);
	Asynq__Peertest__Seen *s = seen_new(p, in->v);
	if (s == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	s->child_same = cst == ASYNQ_OK;
	*reply = &s->base;
	return ASYNQ_OK;
}

static asynq_status
h_whoami_batch(asynq_task *t, asynq_rpc_batch_call *calls, size_t n,
    void *ctx)
{
	(void)t;
	(void)ctx;
	const asynq_rpc_peer *p = asynq_rpc_peer_get();
	for (size_t i = 0; i < n; i++) {
		const Asynq__Peertest__Ask *in =
		    (const Asynq__Peertest__Ask *)calls[i].req;
		Asynq__Peertest__Seen *s = seen_new(p, in->v);
		if (s == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		calls[i].reply = &s->base;
	}
	return ASYNQ_OK;
}

static const asynq_rpc_handler who_handlers[] = {
	[ASYNQ__PEERTEST__WHO__ASYNQ_METHOD_WHOAMI] = { .unary = h_whoami },
	[ASYNQ__PEERTEST__WHO__ASYNQ_METHOD_WHOAMI_BATCH] = { .batch =
		                                                 h_whoami_batch },
};

/* ---- Helpers ------------------------------------------------------------- */

typedef struct who_fx {
	asynq_runtime *rt;
	asynq_rpc_server *srv;
	char url[160];
} who_fx;

static void
who_start(who_fx *fx, const char *url, const asynq_rpc_server_cfg *scfg)
{
	memset(fx, 0, sizeof(*fx));
	asynq_runtime_cfg rcfg = { .workers = 2 };
	assert_int_equal(asynq_runtime_alloc(&fx->rt, &rcfg), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_alloc(&fx->srv, fx->rt, scfg),
	    ASYNQ_OK);
	assert_int_equal(
	    asynq_rpc_server_add_service(fx->srv, WHO, who_handlers, NULL),
	    ASYNQ_OK);
	snprintf(fx->url, sizeof(fx->url), "%s", url);
	assert_int_equal(asynq_rpc_server_listen(fx->srv, fx->url), ASYNQ_OK);
}

static void
who_stop(who_fx *fx)
{
	asynq_rpc_server_free(fx->srv);
	asynq_runtime_free(fx->rt);
	asynq_thread_fini();
}

/* Calls method m n times (v = i) through ch and checks every reply saw a
 * peer whose address starts with `prefix`, unverified and without a
 * certificate; for Whoami also that the spawned task saw it. */
static void
expect_plain_peer(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m,
    size_t n, const char *prefix)
{
	asynq_future *f[16];
	assert_true(n <= 16);
	for (size_t i = 0; i < n; i++) {
		Asynq__Peertest__Ask a = ASYNQ__PEERTEST__ASK__INIT;
		a.v = (int64_t)i;
		f[i] = asynq_rpc_call(ch, m, &a.base);
	}
	assert_int_equal(asynq_wait_all(f, n), ASYNQ_OK);
	for (size_t i = 0; i < n; i++) {
		const Asynq__Peertest__Seen *s = asynq_future_ptr(f[i]);
		assert_int_equal(s->v, (int64_t)i);
		assert_true(s->present);
		assert_true(strncmp(s->address, prefix, strlen(prefix)) == 0);
		assert_false(s->verified);
		assert_false(s->has_subject);
		assert_int_equal(s->n_sans, 0);
		if (m == WM(WHOAMI))
			assert_true(s->child_same);
	}
	asynq_future_rele_n(f, n);
}

static asynq_rpc_channel *
channel_to(const char *url)
{
	const char *urls[] = { url };
	asynq_rpc_channel_cfg ccfg = { .urls = urls, .n_urls = 1 };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, WHO, &ccfg), ASYNQ_OK);
	return ch;
}

/* ---- Plain transports ---------------------------------------------------- */

static void
test_peer_inproc(void **state)
{
	(void)state;
	who_fx fx;
	char url[64];
	snprintf(url, sizeof(url), "inproc://asynq-peer-%d", (int)getpid());
	who_start(&fx, url, NULL);
	asynq_rpc_channel *ch = channel_to(fx.url);
	expect_plain_peer(ch, WM(WHOAMI), 8, "inproc");
	expect_plain_peer(ch, WM(WHOAMI_BATCH), 8, "inproc");
	asynq_rpc_channel_free(ch);
	who_stop(&fx);
}

static void
test_peer_tcp_address(void **state)
{
	(void)state;
	who_fx fx;
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", free_port());
	who_start(&fx, url, NULL);
	asynq_rpc_channel *ch = channel_to(fx.url);
	expect_plain_peer(ch, WM(WHOAMI), 8, "tcp://127.0.0.1:");
	expect_plain_peer(ch, WM(WHOAMI_BATCH), 8, "tcp://127.0.0.1:");
	/* The port is the client's own, not the server's. */
	Asynq__Peertest__Ask a = ASYNQ__PEERTEST__ASK__INIT;
	asynq_future *f = asynq_rpc_call(ch, WM(WHOAMI), &a.base);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	const Asynq__Peertest__Seen *s = asynq_future_ptr(f);
	assert_string_not_equal(s->address, fx.url);
	int port = atoi(strrchr(s->address, ':') + 1);
	assert_true(port > 0 && port < 65536);
	asynq_future_rele(f);
	asynq_rpc_channel_free(ch);
	who_stop(&fx);
}

static void
test_peer_ipc_address(void **state)
{
	(void)state;
	who_fx fx;
	char url[128];
	snprintf(url, sizeof(url), "ipc:///tmp/asynq-peer-%d.sock",
	    (int)getpid());
	who_start(&fx, url, NULL);
	asynq_rpc_channel *ch = channel_to(fx.url);
	expect_plain_peer(ch, WM(WHOAMI), 4, "ipc://");
	expect_plain_peer(ch, WM(WHOAMI_BATCH), 4, "ipc://");
	asynq_rpc_channel_free(ch);
	who_stop(&fx);
}

static void
test_peer_absent_outside_handler(void **state)
{
	(void)state;
	assert_null(asynq_rpc_peer_get());
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_peer_inproc),
		cmocka_unit_test(test_peer_tcp_address),
		cmocka_unit_test(test_peer_ipc_address),
		cmocka_unit_test(test_peer_absent_outside_handler),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
