/* SPDX-License-Identifier: MIT */
/*
 * What TLS and mutual TLS cost an asynq RPC: `bazel run -c opt
 * //tests/bench:tls -- [CONNS [ROUNDS]]`. A one-worker server and a client
 * in one process on loopback, over tcp://, tls+tcp:// (server certificate
 * only) and tls+tcp:// with a client certificate the server requires
 * (certificates: EC P-256, made with openssl in a temporary directory).
 * For each it prints new connections per second (a channel opened, one
 * call, the channel closed: the handshake's cost), and over one open
 * connection the round trips per second of one call per request and the
 * calls per second of 100 calls per request, with CPU per unit (both
 * sides). A report, not a test: a wrong answer exits 1.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "asynq/asynq.h"
#include "asynq/log.h"
#include "asynq/rpc.h"
#include "tests/bench/bench.asynq.h"
#include "tests/bench/bench.pb-c.h"

#define LOOKUP (&asynq__bench__lookup__asynq_desc)
#define GET (&LOOKUP->methods[ASYNQ__BENCH__LOOKUP__ASYNQ_METHOD_GET])

static char dir[256];
static char ca[300], srv_crt[300], srv_key[300], cli_crt[300], cli_key[300];

static asynq_status
h_get(asynq_task *t, const ProtobufCMessage *req, ProtobufCMessage **reply,
    void *ctx)
{
	(void)t;
	(void)ctx;
	Asynq__Bench__Id *out = malloc(sizeof(*out));
	if (out == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq__bench__id__init(out);
	out->id = ((const Asynq__Bench__Id *)req)->id * 3;
	*reply = &out->base;
	return ASYNQ_OK;
}

static asynq_status
h_get_batch(asynq_task *t, asynq_rpc_batch_call *calls, size_t n, void *ctx)
{
	(void)t;
	(void)ctx;
	(void)calls;
	(void)n;
	return ASYNQ_UNIMPLEMENTED;
}

static double
cpu_s(void)
{
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
	    ((double)ru.ru_utime.tv_usec + (double)ru.ru_stime.tv_usec) * 1e-6;
}

static double
now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static int
free_port(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET };
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
	    getsockname(fd, (struct sockaddr *)&a, &len) == 0)
		port = ntohs(a.sin_port);
	if (fd >= 0)
		close(fd);
	return port;
}

static int
sh(const char *cmd)
{
	char line[1400];
	snprintf(line, sizeof(line), "cd '%s' && { %s ; } >/dev/null 2>&1",
	    dir, cmd);
	return system(line);
}

static int
make_certs(void)
{
	const char *tmp = getenv("TMPDIR");
	snprintf(dir, sizeof(dir), "%s/asynq-tls-bench-XXXXXX",
	    tmp != NULL && tmp[0] == '/' ? tmp : "/tmp");
	if (mkdtemp(dir) == NULL)
		return -1;
	const char *ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
	                 "-nodes";
	char cmd[1024];
	snprintf(cmd, sizeof(cmd),
	    "openssl req -x509 %s -days 2 -keyout ca.key -out ca.crt "
	    "-subj /CN=bench-ca",
	    ec);
	if (sh(cmd) != 0)
		return -1;
	const char *names[] = { "srv", "cli" };
	for (int i = 0; i < 2; i++) {
		snprintf(cmd, sizeof(cmd),
		    "openssl req %s -keyout %s.key -out %s.csr -subj /CN=%s && "
		    "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > "
		    "%s.ext && openssl x509 -req -in %s.csr -CA ca.crt "
		    "-CAkey ca.key -CAcreateserial -days 2 -extfile %s.ext "
		    "-out %s.crt",
		    ec, names[i], names[i], names[i], names[i], names[i],
		    names[i], names[i]);
		if (sh(cmd) != 0)
			return -1;
	}
	snprintf(ca, sizeof(ca), "%s/ca.crt", dir);
	snprintf(srv_crt, sizeof(srv_crt), "%s/srv.crt", dir);
	snprintf(srv_key, sizeof(srv_key), "%s/srv.key", dir);
	snprintf(cli_crt, sizeof(cli_crt), "%s/cli.crt", dir);
	snprintf(cli_key, sizeof(cli_key), "%s/cli.key", dir);
	return 0;
}

/* n calls of Get through ch, awaited together; false on a wrong answer. */
static bool
calls(asynq_rpc_channel *ch, size_t n, int64_t base)
{
	asynq_future *f[100];
	for (size_t i = 0; i < n; i++) {
		Asynq__Bench__Id id = ASYNQ__BENCH__ID__INIT;
		id.id = base + (int64_t)i;
		f[i] = asynq_rpc_call(ch, GET, &id.base);
	}
	bool ok = asynq_wait_all(f, n) == ASYNQ_OK;
	for (size_t i = 0; ok && i < n; i++) {
		const Asynq__Bench__Id *out = asynq_future_ptr(f[i]);
		ok = out != NULL && out->id == 3 * (base + (int64_t)i);
	}
	asynq_future_rele_n(f, n);
	return ok;
}

typedef enum { PLAIN, TLS, MTLS } mode;
static const char *const mode_names[] = { "tcp", "tls", "mtls" };

static int
run(mode m, size_t n_conns, size_t n_rounds)
{
	asynq_runtime *rt;
	asynq_runtime_cfg rc = { .workers = 1 };
	asynq_rpc_server_cfg scfg = { 0 };
	if (m != PLAIN) {
		scfg.tls_cert_file = srv_crt;
		scfg.tls_key_file = srv_key;
	}
	if (m == MTLS) {
		scfg.tls_client_ca_file = ca;
		scfg.tls_require_client_cert = true;
	}
	asynq_rpc_handler hs[] = {
		[ASYNQ__BENCH__LOOKUP__ASYNQ_METHOD_GET] = { .unary = h_get },
		[ASYNQ__BENCH__LOOKUP__ASYNQ_METHOD_GET_BATCH] = { .batch =
		                                                       h_get_batch },
	};
	char url[64];
	snprintf(url, sizeof(url), "%s://127.0.0.1:%d",
	    m == PLAIN ? "tcp" : "tls+tcp", free_port());
	const char *urls[] = { url };
	asynq_rpc_channel_cfg cc = { .urls = urls, .n_urls = 1 };
	if (m != PLAIN) {
		cc.tls_ca_file = ca;
		cc.tls_server_name = "localhost";
	}
	if (m == MTLS) {
		cc.tls_cert_file = cli_crt;
		cc.tls_key_file = cli_key;
	}
	asynq_rpc_server *srv;
	if (asynq_runtime_alloc(&rt, &rc) != ASYNQ_OK ||
	    asynq_rpc_server_alloc(&srv, rt, &scfg) != ASYNQ_OK ||
	    asynq_rpc_server_add_service(srv, LOOKUP, hs, NULL) != ASYNQ_OK ||
	    asynq_rpc_server_listen(srv, url) != ASYNQ_OK) {
		fprintf(stderr, "tls bench: cannot serve %s\n", url);
		return 1;
	}
	bool ok = true;
	/* New connections: one call each. */
	double t0 = now_s(), c0 = cpu_s();
	for (size_t i = 0; ok && i < n_conns; i++) {
		asynq_rpc_channel *ch;
		ok = asynq_rpc_channel_alloc(&ch, LOOKUP, &cc) == ASYNQ_OK &&
		    calls(ch, 1, (int64_t)i);
		asynq_rpc_channel_free(ch);
	}
	double conn_s = now_s() - t0, conn_cpu = cpu_s() - c0;
	/* One connection: 1 call per request, then 100. */
	asynq_rpc_channel *ch;
	ok = ok && asynq_rpc_channel_alloc(&ch, LOOKUP, &cc) == ASYNQ_OK;
	ok = ok && calls(ch, 1, 0);
	t0 = now_s();
	c0 = cpu_s();
	for (size_t r = 0; ok && r < n_rounds; r++)
		ok = calls(ch, 1, (int64_t)r);
	double one_s = now_s() - t0, one_cpu = cpu_s() - c0;
	t0 = now_s();
	c0 = cpu_s();
	size_t batch_rounds = n_rounds / 10 + 1;
	for (size_t r = 0; ok && r < batch_rounds; r++)
		ok = calls(ch, 100, (int64_t)r);
	double hun_s = now_s() - t0, hun_cpu = cpu_s() - c0;
	asynq_rpc_channel_free(ch);
	asynq_rpc_server_free(srv);
	asynq_runtime_free(rt);
	if (!ok) {
		fprintf(stderr, "tls bench: %s: a call failed or was wrong\n",
		    mode_names[m]);
		return 1;
	}
	printf("%-5s %10.0f %10.0f %12.0f %10.1f %12.0f %10.0f\n",
	    mode_names[m], (double)n_conns / conn_s,
	    conn_cpu * 1e6 / (double)n_conns, (double)n_rounds / one_s,
	    one_cpu * 1e6 / (double)n_rounds,
	    100.0 * (double)batch_rounds / hun_s,
	    hun_cpu * 1e9 / (100.0 * (double)batch_rounds));
	fflush(stdout);
	return 0;
}

int
main(int argc, char **argv)
{
	size_t n_conns = argc > 1 ? (size_t)strtoul(argv[1], NULL, 10) : 300;
	size_t n_rounds = argc > 2 ? (size_t)strtoul(argv[2], NULL, 10)
	                           : 20000;
	if (n_conns == 0 || n_rounds == 0) {
		fprintf(stderr, "usage: %s [CONNS [ROUNDS]]\n", argv[0]);
		return 2;
	}
	if (getenv("ASYNQ_LOG_LEVEL") == NULL)
		asynq_log_set_level(ASYNQ_LOG_WARN);
	if (make_certs() != 0) {
		fprintf(stderr, "tls bench: openssl could not make the "
		                "certificates (is it installed?)\n");
		return 1;
	}
	printf("one-worker server and its client in one process, loopback; "
	       "CPU is both sides\n");
	printf("%-5s %10s %10s %12s %10s %12s %10s\n", "", "conns/s",
	    "us CPU", "1-call rt/s", "us CPU", "calls/s@100", "ns CPU");
	int rc = 0;
	for (int m = PLAIN; m <= MTLS && rc == 0; m++)
		rc = run((mode)m, n_conns, n_rounds);
	asynq_thread_fini();
	char cmd[300];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
	(void)!system(cmd);
	return rc;
}
