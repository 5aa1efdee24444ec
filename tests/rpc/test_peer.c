/* SPDX-License-Identifier: MIT */
/*
 * The peer of a call, as handlers see it (asynq_rpc_peer_get): the address
 * over inproc://, tcp:// and ipc://, for unary and whole-batch handlers and
 * the tasks they spawn, and nothing outside a handler.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <sys/socket.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "asynq/asynq.h"
#include "asynq/log.h"
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
h_whoami_batch(asynq_task *t, asynq_rpc_batch_call *calls, size_t n, void *ctx)
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

/* ---- Certificates -------------------------------------------------------- */

/* The certificates of the TLS tests, made with openssl in a directory of
 * TEST_TMPDIR: two CAs (ca, other), the server's (localhost), and clients
 * of ca: front (CN=frontend,O=example with four kinds of SAN), rev (to be
 * revoked), exp (expired in 2020), and rogue (of the other CA). Client
 * certificates are issued with `openssl ca`, which can backdate them and
 * revoke them into a CRL. */
static char dir[512];

static void
run(const char *fmt, ...)
{
	char cmd[4096], line[4800];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	snprintf(line, sizeof(line), "cd '%s' && { %s ; } >>openssl.log 2>&1",
	    dir, cmd);
	int rc = system(line);
	if (rc != 0) {
		fprintf(stderr, "failed (%d): %s\n", rc, cmd);
		snprintf(line, sizeof(line), "cat '%s/openssl.log' >&2", dir);
		(void)!system(line);
	}
	assert_int_equal(rc, 0);
}

/* path(name): "<dir>/<name>" in one of a few static buffers. */
static const char *
path(const char *name)
{
	static char bufs[16][600];
	static int next;
	char *b = bufs[next++ % 16];
	snprintf(b, sizeof(bufs[0]), "%s/%s", dir, name);
	return b;
}

#define EC "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"

/* Issues client certificate `name` of CA `ca` with subject subj and SANs
 * san (or none), valid from start to end (openssl ca's YYMMDDHHMMSSZ, or
 * NULL for two days from now). */
static void
client_cert(const char *ca, const char *name, const char *subj, const char *san,
    const char *start, const char *end)
{
	run("openssl req %s -keyout %s.key -out %s.csr -subj '%s'", EC, name,
	    name, subj);
	char ext[256] = "";
	if (san != NULL) {
		run("printf 'subjectAltName=%s\\nextendedKeyUsage=clientAuth\\n'"
		    " > %s.ext",
		    san, name);
		snprintf(ext, sizeof(ext), "-extfile %s.ext", name);
	}
	char dates[128] = "-days 2";
	if (start != NULL)
		snprintf(dates, sizeof(dates), "-startdate %s -enddate %s",
		    start, end);
	run("openssl ca -batch -config %s.cnf -notext -in %s.csr -out %s.crt "
	    "%s %s",
	    ca, name, name, dates, ext);
}

/* A CA `name` that `openssl ca` can sign with and revoke from. */
static void
make_ca(const char *name, const char *cn)
{
	run("openssl req -x509 %s -days 30 -keyout %s.key -out %s.crt "
	    "-subj /CN=%s",
	    EC, name, name, cn);
	run("mkdir -p %s.db && : > %s.db/index && echo 1000 > %s.db/serial && "
	    "echo 1000 > %s.db/crlnumber",
	    name, name, name, name);
	run("printf '[ca]\\ndefault_ca=d\\n[d]\\ndir=%s\\ndatabase=$dir/%s.db/"
	    "index\\nnew_certs_dir=$dir/%s.db\\nserial=$dir/%s.db/serial\\n"
	    "crlnumber=$dir/%s.db/crlnumber\\ncertificate=$dir/%s.crt\\n"
	    "private_key=$dir/%s.key\\ndefault_md=sha256\\npolicy=p\\n"
	    "unique_subject=no\\ndefault_crl_days=2\\n[p]\\n"
	    "commonName=supplied\\norganizationName=optional\\n' > %s.cnf",
	    dir, name, name, name, name, name, name, name);
}

static bool have_certs;

static void
make_certs(void)
{
	if (have_certs)
		return;
	const char *tmp = getenv("TEST_TMPDIR");
	snprintf(dir, sizeof(dir), "%s/asynq-peer-XXXXXX",
	    tmp != NULL ? tmp : "/tmp");
	assert_non_null(mkdtemp(dir));
	make_ca("ca", "asynq-test-ca");
	make_ca("other", "asynq-other-ca");
	/* The server's, twice (the reload test swaps them). */
	for (int i = 1; i <= 2; i++) {
		run("openssl req %s -keyout srv%d.key -out srv%d.csr "
		    "-subj /CN=localhost",
		    EC, i, i);
		run("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > "
		    "srv.ext && openssl x509 -req -in srv%d.csr -CA ca.crt "
		    "-CAkey ca.key -CAcreateserial -out srv%d.crt -days 2 "
		    "-extfile srv.ext",
		    i, i);
	}
	client_cert("ca", "front", "/CN=frontend/O=example",
	    "DNS:front.example,URI:spiffe://example/front,IP:10.0.0.1,"
	    "IP:fd00::1,email:ops@example.com",
	    NULL, NULL);
	client_cert("ca", "odd", "/CN=a,b/O=example", "DNS:odd.example", NULL,
	    NULL);
	client_cert("ca", "rev", "/CN=revoked-soon", "DNS:rev.example", NULL,
	    NULL);
	client_cert("ca", "exp", "/CN=expired", NULL, "200101000000Z",
	    "200102000000Z");
	client_cert("other", "rogue", "/CN=frontend/O=example",
	    "DNS:front.example", NULL, NULL);
	/* An empty CRL of ca, and one that revokes rev. */
	run("openssl ca -config ca.cnf -gencrl -out crl-empty.pem");
	run("cp ca.db/index ca.db/index.before && "
	    "openssl ca -config ca.cnf -revoke rev.crt && "
	    "openssl ca -config ca.cnf -gencrl -out crl-rev.pem");
	have_certs = true;
}

static void
remove_certs(void)
{
	if (!have_certs)
		return;
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
	have_certs = false;
}

/* ---- Log lines ----------------------------------------------------------- */

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char log_text[1 << 16];
static size_t log_len;

static void
log_sink(const char *line, size_t len, void *arg)
{
	(void)arg;
	pthread_mutex_lock(&log_mu);
	if (log_len + len < sizeof(log_text)) {
		memcpy(log_text + log_len, line, len);
		log_len += len;
		log_text[log_len] = '\0';
	}
	pthread_mutex_unlock(&log_mu);
	(void)!write(2, line, len);
}

static void
log_reset(void)
{
	pthread_mutex_lock(&log_mu);
	log_len = 0;
	log_text[0] = '\0';
	pthread_mutex_unlock(&log_mu);
}

/* Waits up to 10 s for a log line that has every one of the (NULL-ended)
 * strings. */
static bool
log_has(const char *a, ...)
{
	for (int tries = 0; tries < 1000; tries++) {
		pthread_mutex_lock(&log_mu);
		bool found = false;
		for (char *l = log_text; !found && *l != '\0';) {
			char *e = strchr(l, '\n');
			size_t n = e != NULL ? (size_t)(e - l) : strlen(l);
			char line[2048];
			snprintf(line, sizeof(line), "%.*s", (int)n, l);
			bool all = strstr(line, a) != NULL;
			va_list ap;
			va_start(ap, a);
			for (const char *s = va_arg(ap, const char *);
			     all && s != NULL; s = va_arg(ap, const char *))
				all = strstr(line, s) != NULL;
			va_end(ap);
			found = all;
			l += n + (e != NULL);
		}
		pthread_mutex_unlock(&log_mu);
		if (found)
			return true;
		usleep(10 * 1000);
	}
	return false;
}

/* ---- Mutual TLS ---------------------------------------------------------- */

/* A channel to url presenting client certificate `who` (NULL: none). */
static asynq_rpc_channel *
tls_channel(const char *url, const char *who, uint32_t deadline_ms)
{
	char cert[64], key[64];
	const char *urls[] = { url };
	asynq_rpc_channel_cfg ccfg = {
		.urls = urls,
		.n_urls = 1,
		.tls_ca_file = path("ca.crt"),
		.tls_server_name = "localhost",
		.default_deadline_ms = deadline_ms,
	};
	if (who != NULL) {
		snprintf(cert, sizeof(cert), "%s.crt", who);
		snprintf(key, sizeof(key), "%s.key", who);
		ccfg.tls_cert_file = path(cert);
		ccfg.tls_key_file = path(key);
	}
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, WHO, &ccfg), ASYNQ_OK);
	return ch;
}

/* Calls m once through ch: its status, and the reply in *out (to free
 * with asynq_future_rele(*f)) when OK. */
static asynq_status
ask(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m, int64_t v,
    asynq_future **fp)
{
	Asynq__Peertest__Ask a = ASYNQ__PEERTEST__ASK__INIT;
	a.v = v;
	asynq_future *f = asynq_rpc_call(ch, m, &a.base);
	asynq_status st = asynq_wait(f);
	if (fp != NULL && st == ASYNQ_OK)
		*fp = f;
	else
		asynq_future_rele(f);
	return st;
}

/* A call through a new channel with client certificate `who`. */
static asynq_status
ask_as(const char *url, const char *who, uint32_t deadline_ms)
{
	asynq_rpc_channel *ch = tls_channel(url, who, deadline_ms);
	asynq_status st = ask(ch, WM(WHOAMI), 1, NULL);
	asynq_rpc_channel_free(ch);
	return st;
}

static uint64_t
calls_run(asynq_rpc_server *s)
{
	asynq_rpc_server_stats st;
	asynq_rpc_server_stats_get(s, &st);
	return st.calls;
}

/* A server requiring (or only asking for) client certificates of ca;
 * handshake_ms 0 keeps the default handshake timeout. */
static void
mtls_start(who_fx *fx, bool require, const char *crl, uint32_t handshake_ms)
{
	make_certs();
	asynq_rpc_server_cfg scfg = {
		.tls_cert_file = path("srv1.crt"),
		.tls_key_file = path("srv1.key"),
		.tls_client_ca_file = path("ca.crt"),
		.tls_crl_file = crl != NULL ? path(crl) : NULL,
		.tls_require_client_cert = require,
		.handshake_timeout_ms = handshake_ms,
	};
	char url[64];
	snprintf(url, sizeof(url), "tls+tcp://127.0.0.1:%d", free_port());
	who_start(fx, url, &scfg);
}

static const char *const front_sans[] = {
	"DNS:front.example",
	"URI:spiffe://example/front",
	"IP:10.0.0.1",
	"IP:fd00:0:0:0:0:0:0:1",
	"EMAIL:ops@example.com",
};

static void
expect_front(const Asynq__Peertest__Seen *s)
{
	assert_true(s->present);
	assert_true(strncmp(s->address, "tls+tcp://127.0.0.1:", 20) == 0);
	assert_true(s->verified);
	assert_true(s->has_subject);
	assert_string_equal(s->subject, "CN=frontend,O=example");
	assert_int_equal(s->n_sans, 5);
	for (size_t i = 0; i < 5; i++)
		assert_string_equal(s->sans[i], front_sans[i]);
}

static void
test_peer_tls_verified_identity(void **state)
{
	(void)state;
	who_fx fx;
	mtls_start(&fx, true, "crl-empty.pem", 0);
	asynq_rpc_channel *ch = tls_channel(fx.url, "front", 5000);
	asynq_future *f[8];
	for (size_t i = 0; i < 8; i++) {
		Asynq__Peertest__Ask a = ASYNQ__PEERTEST__ASK__INIT;
		a.v = (int64_t)i;
		f[i] = asynq_rpc_call(ch, i % 2 ? WM(WHOAMI_BATCH) : WM(WHOAMI),
		    &a.base);
	}
	assert_int_equal(asynq_wait_all(f, 8), ASYNQ_OK);
	for (size_t i = 0; i < 8; i++) {
		const Asynq__Peertest__Seen *s = asynq_future_ptr(f[i]);
		assert_int_equal(s->v, (int64_t)i);
		expect_front(s);
		if (i % 2 == 0)
			assert_true(s->child_same);
	}
	asynq_future_rele_n(f, 8);
	asynq_rpc_channel_free(ch);
	/* A comma inside a value is escaped, so it cannot pass for two
	 * attributes. */
	ch = tls_channel(fx.url, "odd", 5000);
	asynq_future *g = NULL;
	assert_int_equal(ask(ch, WM(WHOAMI), 1, &g), ASYNQ_OK);
	const Asynq__Peertest__Seen *s = asynq_future_ptr(g);
	assert_true(s->verified);
	assert_string_equal(s->subject, "CN=a\\,b,O=example");
	assert_int_equal(s->n_sans, 1);
	assert_string_equal(s->sans[0], "DNS:odd.example");
	asynq_future_rele(g);
	asynq_rpc_channel_free(ch);
	who_stop(&fx);
}

static void
test_peer_tls_rejected_clients(void **state)
{
	(void)state;
	who_fx fx;
	mtls_start(&fx, true, NULL, 0);
	asynq_log_set_sink(log_sink, NULL);
	struct {
		const char *who, *why;
	} bad[] = {
		{ NULL, "the client presented no certificate" },
		{ "rogue", "not correctly signed by the trusted CA" },
		{ "exp", "validity has expired" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		log_reset();
		uint64_t before = calls_run(fx.srv);
		assert_int_equal(ask_as(fx.url, bad[i].who, 5000),
		    ASYNQ_UNAVAILABLE);
		assert_true(log_has("level=warn", "event=tls_handshake_failed",
		    "peer=tls+tcp://127.0.0.1:", bad[i].why, NULL));
		/* Nothing of it ran; the server keeps serving. */
		assert_int_equal(calls_run(fx.srv), before);
		assert_int_equal(ask_as(fx.url, "front", 5000), ASYNQ_OK);
		assert_int_equal(calls_run(fx.srv), before + 1);
	}
	asynq_log_set_sink(NULL, NULL);
	who_stop(&fx);
}

static void
test_peer_tls_optional_client_cert(void **state)
{
	(void)state;
	who_fx fx;
	mtls_start(&fx, false, NULL, 0);
	asynq_log_set_sink(log_sink, NULL);
	log_reset();
	/* Without a certificate, or with one the server cannot verify, a
	 * client connects as an unverified peer. */
	const char *who[] = { NULL, "rogue" };
	for (size_t i = 0; i < 2; i++) {
		asynq_rpc_channel *ch = tls_channel(fx.url, who[i], 5000);
		asynq_future *f = NULL;
		assert_int_equal(ask(ch, WM(WHOAMI), 1, &f), ASYNQ_OK);
		const Asynq__Peertest__Seen *s = asynq_future_ptr(f);
		assert_true(s->present);
		assert_false(s->verified);
		assert_false(s->has_subject);
		assert_int_equal(s->n_sans, 0);
		asynq_future_rele(f);
		asynq_rpc_channel_free(ch);
	}
	assert_true(log_has("level=warn", "event=tls_client_cert_unverified",
	    "not correctly signed", NULL));
	asynq_rpc_channel *ch = tls_channel(fx.url, "front", 5000);
	asynq_future *f = NULL;
	assert_int_equal(ask(ch, WM(WHOAMI_BATCH), 1, &f), ASYNQ_OK);
	expect_front(asynq_future_ptr(f));
	asynq_future_rele(f);
	asynq_rpc_channel_free(ch);
	asynq_log_set_sink(NULL, NULL);
	who_stop(&fx);
}

/* A TCP connection to the host and port of a tls+tcp:// URL. */
static int
tcp_to(const char *url)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sa = { .sin_family = AF_INET };
	sa.sin_port = htons((uint16_t)atoi(strrchr(url, ':') + 1));
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/* Waits up to 10 s for the server to close fd: true if it did. */
static bool
closed_by_server(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	for (int i = 0; i < 100; i++) {
		if (poll(&p, 1, 100) == 1) {
			char b[256];
			ssize_t n = read(fd, b, sizeof(b));
			if (n <= 0)
				return true;
		}
	}
	return false;
}

static void
test_peer_tls_garbage_and_truncated_handshakes(void **state)
{
	(void)state;
	who_fx fx;
	/* Short enough to watch it close a stalled handshake, long enough
	 * for a real one under a sanitizer. */
	mtls_start(&fx, true, NULL, 2000);
	asynq_log_set_sink(log_sink, NULL);
	asynq_rpc_channel *ch = tls_channel(fx.url, "front", 5000);
	assert_int_equal(ask(ch, WM(WHOAMI), 1, NULL), ASYNQ_OK);

	/* Not TLS at all: the server refuses it, says why, keeps serving. */
	log_reset();
	int fd = tcp_to(fx.url);
	const char junk[] = "GET / HTTP/1.1\r\nHost: x\r\n\r\n";
	assert_int_equal(write(fd, junk, sizeof(junk) - 1),
	    (ssize_t)(sizeof(junk) - 1));
	assert_true(closed_by_server(fd));
	close(fd);
	assert_true(
	    log_has("event=tls_handshake_failed", "not a TLS handshake", NULL));
	assert_int_equal(ask(ch, WM(WHOAMI), 2, NULL), ASYNQ_OK);
	assert_int_equal(ask_as(fx.url, "front", 5000), ASYNQ_OK);

	/* A record of random bytes after a handshake record header. */
	fd = tcp_to(fx.url);
	uint8_t rec[5 + 300] = { 0x16, 0x03, 0x01, 0x01, 0x2c };
	for (size_t i = 5; i < sizeof(rec); i++)
		rec[i] = (uint8_t)(i * 151 + 7);
	assert_int_equal(write(fd, rec, sizeof(rec)), (ssize_t)sizeof(rec));
	assert_true(closed_by_server(fd));
	close(fd);
	assert_int_equal(ask_as(fx.url, "front", 5000), ASYNQ_OK);

	/* A ClientHello cut short, the client then gone. */
	uint8_t hello[] = { 0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01,
		0xfc, 0x03, 0x03, 1, 2, 3, 4, 5, 6, 7, 8 };
	fd = tcp_to(fx.url);
	assert_int_equal(write(fd, hello, sizeof(hello)),
	    (ssize_t)sizeof(hello));
	close(fd);
	assert_int_equal(ask_as(fx.url, "front", 5000), ASYNQ_OK);

	/* The same, the client staying, and one that connects and sends
	 * nothing: the handshake timeout closes both, and calls go on
	 * meanwhile. */
	fd = tcp_to(fx.url);
	assert_int_equal(write(fd, hello, sizeof(hello)),
	    (ssize_t)sizeof(hello));
	int idle = tcp_to(fx.url);
	assert_int_equal(ask(ch, WM(WHOAMI), 3, NULL), ASYNQ_OK);
	assert_true(closed_by_server(fd));
	assert_true(closed_by_server(idle));
	close(fd);
	close(idle);
	assert_int_equal(ask(ch, WM(WHOAMI), 4, NULL), ASYNQ_OK);
	assert_int_equal(ask_as(fx.url, "front", 5000), ASYNQ_OK);
	asynq_rpc_server_stats st;
	asynq_rpc_server_stats_get(fx.srv, &st);
	assert_true(st.conns_stalled >= 2);

	asynq_rpc_channel_free(ch);
	asynq_log_set_sink(NULL, NULL);
	who_stop(&fx);
}

/* Settings that do not fit are refused in words, for servers and
 * channels. */
static void
test_peer_tls_settings_refused_in_words(void **state)
{
	(void)state;
	make_certs();
	asynq_runtime *rt;
	asynq_runtime_cfg rcfg = { .workers = 1 };
	assert_int_equal(asynq_runtime_alloc(&rt, &rcfg), ASYNQ_OK);
	asynq_log_set_sink(log_sink, NULL);
	struct {
		asynq_rpc_server_cfg cfg;
		const char *why;
	} bad[] = {
		{ { .tls_cert_file = path("srv1.crt"),
		      .tls_key_file = path("srv1.key"),
		      .tls_require_client_cert = true },
		    "tls_require_client_cert needs tls_client_ca_file" },
		{ { .tls_client_ca_file = path("ca.crt") },
		    "client certificate settings need tls_cert_file" },
		{ { .tls_cert_file = path("srv1.crt"),
		      .tls_key_file = path("srv1.key"),
		      .tls_client_ca_file = path("nonexistent.crt") },
		    "No such file or directory" },
		{ { .tls_cert_file = path("srv1.crt"),
		      .tls_key_file = path("srv1.key"),
		      .tls_client_ca_file = path("srv1.key") },
		    "tls_client_ca_file" },
		{ { .tls_cert_file = path("srv1.crt"),
		      .tls_key_file = path("srv1.key"),
		      .tls_client_ca_file = path("ca.crt"),
		      .tls_crl_file = path("ca.crt") },
		    "tls_crl_file" },
		{ { .tls_cert_file = path("srv1.crt"),
		      .tls_key_file = path("srv2.key") },
		    "the key is not the certificate's" },
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		log_reset();
		asynq_rpc_server *srv = NULL;
		assert_int_equal(asynq_rpc_server_alloc(&srv, rt, &bad[i].cfg),
		    ASYNQ_INVALID_ARGUMENT);
		assert_null(srv);
		assert_true(log_has("event=setup_failed", bad[i].why, NULL));
	}
	/* A client key without its certificate. */
	log_reset();
	const char *urls[] = { "tls+tcp://127.0.0.1:1" };
	asynq_rpc_channel_cfg ccfg = { .urls = urls,
		.n_urls = 1,
		.tls_ca_file = path("ca.crt"),
		.tls_key_file = path("front.key") };
	asynq_rpc_channel *ch = NULL;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, WHO, &ccfg),
	    ASYNQ_INVALID_ARGUMENT);
	assert_true(log_has("event=setup_failed", "go together", NULL));
	/* Reloading a server without TLS. */
	asynq_rpc_server *srv;
	assert_int_equal(asynq_rpc_server_alloc(&srv, rt, NULL), ASYNQ_OK);
	assert_int_equal(asynq_rpc_server_reload_tls(srv),
	    ASYNQ_FAILED_PRECONDITION);
	assert_non_null(strstr(asynq_rpc_server_last_error(srv),
	    "the server has no TLS settings"));
	asynq_rpc_server_free(srv);
	asynq_log_set_sink(NULL, NULL);
	asynq_runtime_free(rt);
	asynq_thread_fini();
}

/* ---- Reload -------------------------------------------------------------- */

/* Calls made through one connection, opened before the reloads, while the
 * test swaps the server's files: bounded in count and in time. */
typedef struct loader {
	const char *url;
	atomic_bool stop;
	atomic_int ok, failed;
	int max_rounds;
} loader;

static void *
load_main(void *arg)
{
	loader *ld = arg;
	asynq_rpc_channel *ch = tls_channel(ld->url, "front", 5000);
	uint64_t t0 = asynq_now_ns();
	for (int r = 0; r < ld->max_rounds && !atomic_load(&ld->stop) &&
	     asynq_now_ns() - t0 < 60ull * 1000000000u;
	     r++) {
		asynq_future *f[4];
		for (int i = 0; i < 4; i++) {
			Asynq__Peertest__Ask a = ASYNQ__PEERTEST__ASK__INIT;
			a.v = r * 4 + i;
			f[i] = asynq_rpc_call(ch,
			    i % 2 ? WM(WHOAMI_BATCH) : WM(WHOAMI), &a.base);
		}
		(void)asynq_wait_all(f, 4);
		for (int i = 0; i < 4; i++) {
			const Asynq__Peertest__Seen *s =
			    asynq_future_status(f[i]) == ASYNQ_OK
			    ? asynq_future_ptr(f[i])
			    : NULL;
			bool good = s != NULL && s->verified &&
			    strcmp(s->subject, "CN=frontend,O=example") == 0;
			atomic_fetch_add(good ? &ld->ok : &ld->failed, 1);
		}
		asynq_future_rele_n(f, 4);
	}
	asynq_rpc_channel_free(ch);
	asynq_thread_fini();
	return NULL;
}

/* Puts file src in place of dst as a rename does (never half written). */
static void
swap_in(const char *src, const char *dst)
{
	run("cp %s %s.tmp && mv %s.tmp %s", src, dst, dst, dst);
}

static void
test_peer_tls_reload_under_load(void **state)
{
	(void)state;
	make_certs();
	swap_in("srv1.crt", "cur-srv.crt");
	swap_in("srv1.key", "cur-srv.key");
	swap_in("ca.crt", "cur-ca.crt");
	swap_in("crl-empty.pem", "cur-crl.pem");
	asynq_rpc_server_cfg scfg = {
		.tls_cert_file = path("cur-srv.crt"),
		.tls_key_file = path("cur-srv.key"),
		.tls_client_ca_file = path("cur-ca.crt"),
		.tls_crl_file = path("cur-crl.pem"),
		.tls_require_client_cert = true,
	};
	char url[64];
	snprintf(url, sizeof(url), "tls+tcp://127.0.0.1:%d", free_port());
	who_fx fx;
	who_start(&fx, url, &scfg);

	/* A connection of rev's, made before it is revoked. */
	asynq_rpc_channel *rev = tls_channel(fx.url, "rev", 5000);
	assert_int_equal(ask(rev, WM(WHOAMI), 1, NULL), ASYNQ_OK);

	loader ld = { .url = fx.url, .max_rounds = 20000 };
	atomic_init(&ld.stop, false);
	atomic_init(&ld.ok, 0);
	atomic_init(&ld.failed, 0);
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, load_main, &ld), 0);

	/* The server's certificate swapped back and forth under the load;
	 * after each reload a new connection is set up with the new files. */
	for (int i = 0; i < 12; i++) {
		const char *n = i % 2 ? "srv1" : "srv2";
		char crt[16], key[16];
		snprintf(crt, sizeof(crt), "%s.crt", n);
		snprintf(key, sizeof(key), "%s.key", n);
		swap_in(crt, "cur-srv.crt");
		swap_in(key, "cur-srv.key");
		assert_int_equal(asynq_rpc_server_reload_tls(fx.srv), ASYNQ_OK);
		assert_int_equal(ask_as(fx.url, "rev", 5000), ASYNQ_OK);
		if (i == 5) {
			/* A set that does not fit is refused in words, and the
			 * server keeps the one it had. */
			swap_in("srv1.crt", "cur-srv.crt");
			swap_in("srv2.key", "cur-srv.key");
			assert_int_equal(asynq_rpc_server_reload_tls(fx.srv),
			    ASYNQ_INVALID_ARGUMENT);
			assert_non_null(
			    strstr(asynq_rpc_server_last_error(fx.srv),
			        "the key is not the certificate's"));
			assert_int_equal(ask_as(fx.url, "front", 5000),
			    ASYNQ_OK);
			swap_in("srv2.key", "cur-srv.key");
			swap_in("srv2.crt", "cur-srv.crt");
		}
	}

	/* A CRL that revokes rev: it can no longer connect; its open
	 * connection goes on, and so do the others. */
	swap_in("crl-rev.pem", "cur-crl.pem");
	assert_int_equal(asynq_rpc_server_reload_tls(fx.srv), ASYNQ_OK);
	asynq_log_set_sink(log_sink, NULL);
	log_reset();
	assert_int_equal(ask_as(fx.url, "rev", 5000), ASYNQ_UNAVAILABLE);
	assert_true(log_has("event=tls_handshake_failed", "revoked", NULL));
	assert_int_equal(ask(rev, WM(WHOAMI), 2, NULL), ASYNQ_OK);
	assert_int_equal(ask_as(fx.url, "front", 5000), ASYNQ_OK);

	/* The CA taken away (replaced by another): no client of it
	 * connects any more; open connections go on. */
	swap_in("other.crt", "cur-ca.crt");
	assert_int_equal(asynq_rpc_server_reload_tls(fx.srv), ASYNQ_OK);
	log_reset();
	assert_int_equal(ask_as(fx.url, "front", 5000), ASYNQ_UNAVAILABLE);
	assert_true(log_has("event=tls_handshake_failed",
	    "not correctly signed by the trusted CA", NULL));
	asynq_log_set_sink(NULL, NULL);

	atomic_store(&ld.stop, true);
	pthread_join(th, NULL);
	/* Every call of the load succeeded, over its one connection. */
	assert_int_equal(atomic_load(&ld.failed), 0);
	assert_true(atomic_load(&ld.ok) > 0);
	fprintf(stderr, "reload under load: %d calls ok\n",
	    atomic_load(&ld.ok));
	assert_int_equal(ask(rev, WM(WHOAMI), 3, NULL), ASYNQ_OK);
	asynq_rpc_channel_free(rev);
	who_stop(&fx);
}

/* A client's short-lived certificate renewed in place: after
 * asynq_rpc_channel_reload_tls, the channel's next connection (after the
 * server's idle timeout closed the first) presents the new one. */
static void
test_peer_tls_client_reload(void **state)
{
	(void)state;
	make_certs();
	swap_in("rev.crt", "cur-cli.crt");
	swap_in("rev.key", "cur-cli.key");
	asynq_rpc_server_cfg scfg = {
		.tls_cert_file = path("srv1.crt"),
		.tls_key_file = path("srv1.key"),
		.tls_client_ca_file = path("ca.crt"),
		.tls_require_client_cert = true,
		.idle_timeout_ms = 300,
	};
	char url[64];
	snprintf(url, sizeof(url), "tls+tcp://127.0.0.1:%d", free_port());
	who_fx fx;
	who_start(&fx, url, &scfg);
	const char *urls[] = { fx.url };
	char cert[600], key[600];
	snprintf(cert, sizeof(cert), "%s", path("cur-cli.crt"));
	snprintf(key, sizeof(key), "%s", path("cur-cli.key"));
	asynq_rpc_channel_cfg ccfg = { .urls = urls,
		.n_urls = 1,
		.tls_ca_file = path("ca.crt"),
		.tls_server_name = "localhost",
		.tls_cert_file = cert,
		.tls_key_file = key,
		.wait_for_ready = true,
		.default_deadline_ms = 5000 };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, WHO, &ccfg), ASYNQ_OK);
	asynq_future *f = NULL;
	assert_int_equal(ask(ch, WM(WHOAMI), 1, &f), ASYNQ_OK);
	assert_string_equal(
	    ((const Asynq__Peertest__Seen *)asynq_future_ptr(f))->subject,
	    "CN=revoked-soon");
	asynq_future_rele(f);

	swap_in("front.crt", "cur-cli.crt");
	swap_in("front.key", "cur-cli.key");
	assert_int_equal(asynq_rpc_channel_reload_tls(ch), ASYNQ_OK);
	/* The open connection keeps its certificate until it goes: idle
	 * past the server's timeout, it is closed, and the next call
	 * connects again. */
	bool renewed = false;
	for (int i = 0; i < 20 && !renewed; i++) {
		usleep(500 * 1000);
		assert_int_equal(ask(ch, WM(WHOAMI), 2, &f), ASYNQ_OK);
		const char *subj =
		    ((const Asynq__Peertest__Seen *)asynq_future_ptr(f))
		        ->subject;
		renewed = strcmp(subj, "CN=frontend,O=example") == 0;
		if (!renewed)
			assert_string_equal(subj, "CN=revoked-soon");
		asynq_future_rele(f);
	}
	assert_true(renewed);
	asynq_rpc_channel_free(ch);

	/* A channel without TLS has nothing to reload. */
	char plain[64];
	snprintf(plain, sizeof(plain), "tcp://127.0.0.1:%d", free_port());
	ch = channel_to(plain);
	assert_int_equal(asynq_rpc_channel_reload_tls(ch),
	    ASYNQ_FAILED_PRECONDITION);
	asynq_rpc_channel_free(ch);
	who_stop(&fx);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_peer_inproc),
		cmocka_unit_test(test_peer_tcp_address),
		cmocka_unit_test(test_peer_ipc_address),
		cmocka_unit_test(test_peer_absent_outside_handler),
		cmocka_unit_test(test_peer_tls_verified_identity),
		cmocka_unit_test(test_peer_tls_rejected_clients),
		cmocka_unit_test(test_peer_tls_optional_client_cert),
		cmocka_unit_test(
		    test_peer_tls_garbage_and_truncated_handshakes),
		cmocka_unit_test(test_peer_tls_settings_refused_in_words),
		cmocka_unit_test(test_peer_tls_reload_under_load),
		cmocka_unit_test(test_peer_tls_client_reload),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	remove_certs();
	return rc;
}
