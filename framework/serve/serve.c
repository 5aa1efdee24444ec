/* SPDX-License-Identifier: MIT */
/*
 * asynq_serve_main: a service program's life, from flags to exit code.
 *
 * Design notes:
 * - Signals are blocked before any thread exists, so every thread (workers,
 *   nng's) inherits the mask and only the main thread, in sigtimedwait,
 *   ever receives SIGINT or SIGTERM; no handler runs, so nothing here needs
 *   to be async-signal-safe.
 * - The stop is ordered: not ready (the grace period, for load balancers),
 *   close every server (answers what it accepted; clients move the rest),
 *   the program's stop (its channels), the admin endpoint (it reads the
 *   servers and the runtime), the runtime (a closed server's last posts
 *   may still be running on its workers), then the servers.
 * - The counters log reads stats through the public getters from the main
 *   thread; it prints a line only when something changed, so an idle
 *   service stays quiet.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "asynq/admin.h"
#include "asynq/log.h"
#include "asynq/serve.h"

#define MAX_SERVERS 16
#define MAX_CHANNELS 16
#define MAX_FLAGS 64
#define DEFAULT_GRACE_MS 2000

struct asynq_serve {
	const asynq_serve_program *p;
	const char *listen;
	size_t workers;
	const char *admin_url;
	uint32_t grace_ms;
	bool quiet;
	asynq_rpc_server_cfg server;
	asynq_runtime *rt;
	asynq_admin *admin;
	asynq_rpc_server *srv[MAX_SERVERS];
	size_t n_srv;
	asynq_rpc_channel *ch[MAX_CHANNELS];
	size_t n_ch;
};

/* ---- Flags -------------------------------------------------------------- */

static bool
parse_size(const char *s, size_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || s[0] == '-')
		return false;
	*out = (size_t)v;
	return true;
}

static bool
parse_u32(const char *s, uint32_t *out)
{
	size_t v;
	if (!parse_size(s, &v) || v > UINT32_MAX)
		return false;
	*out = (uint32_t)v;
	return true;
}

/* A u32 setting that "off" sets to UINT32_MAX. */
static bool
parse_u32_off(const char *s, uint32_t *out)
{
	if (strcmp(s, "off") == 0) {
		*out = UINT32_MAX;
		return true;
	}
	return parse_u32(s, out);
}

enum {
	F_LISTEN = 256,
	F_WORKERS,
	F_ADMIN,
	F_GRACE,
	F_MAX_CONNS,
	F_HANDSHAKE,
	F_FRAME,
	F_IDLE,
	F_WRITE_QUEUE,
	F_QUEUE_TARGET,
	F_LATENCY_TARGET,
	F_TLS_CERT,
	F_TLS_KEY,
	F_TLS_CLIENT_CA,
	F_TLS_CRL,
	F_TLS_REQUIRE,
	F_QUIET,
	F_HELP,
	F_PROGRAM, /* + index into the program's flags */
};

static const struct {
	const char *name, *arg, *help;
	int id;
} common_flags[] = {
	{ "listen", "URL", "where the servers listen", F_LISTEN },
	{ "workers", "N", "worker threads (default: one per CPU)", F_WORKERS },
	{ "admin", "http://HOST:PORT",
	    "admin endpoint: /live /ready /metrics /status /trace", F_ADMIN },
	{ "drain-grace-ms", "MS",
	    "not ready but serving this long after SIGTERM (default 2000)",
	    F_GRACE },
	{ "max-connections", "N", "server limit (default 1024)", F_MAX_CONNS },
	{ "handshake-timeout-ms", "MS", "server limit", F_HANDSHAKE },
	{ "frame-timeout-ms", "MS", "server limit", F_FRAME },
	{ "idle-timeout-ms", "MS", "server limit", F_IDLE },
	{ "max-write-queue-bytes", "N", "server limit", F_WRITE_QUEUE },
	{ "queue-target-us", "US|off", "admission control's queue-time target",
	    F_QUEUE_TARGET },
	{ "latency-target-us", "US|off",
	    "admission control's mean time in the server, for frontends"
	    " (default off)",
	    F_LATENCY_TARGET },
	{ "tls-cert", "PEM", "tls+tcp: the server's certificate (chain)",
	    F_TLS_CERT },
	{ "tls-key", "PEM", "tls+tcp: its private key", F_TLS_KEY },
	{ "tls-client-ca", "PEM",
	    "tls+tcp: CAs that sign client certificates (mutual TLS)",
	    F_TLS_CLIENT_CA },
	{ "tls-crl", "PEM", "tls+tcp: revoked client certificates", F_TLS_CRL },
	{ "require-client-cert", NULL,
	    "tls+tcp: refuse clients without a certificate of those CAs",
	    F_TLS_REQUIRE },
	{ "quiet", NULL, "no counters log", F_QUIET },
	{ "help", NULL, "this text", F_HELP },
};
#define N_COMMON (sizeof(common_flags) / sizeof(common_flags[0]))

static void
usage(const asynq_serve_program *p, const char *argv0, FILE *f)
{
	fprintf(f, "usage: %s [flags]\n", argv0);
	for (size_t i = 0; i < p->n_flags; i++) {
		const asynq_serve_flag *pf = &p->flags[i];
		char lhs[64];
		snprintf(lhs, sizeof(lhs), "--%s%s%s", pf->name,
		    pf->kind != ASYNQ_FLAG_BOOL ? " " : "",
		    pf->kind != ASYNQ_FLAG_BOOL
		        ? (pf->arg != NULL ? pf->arg : "VALUE")
		        : "");
		fprintf(f, "  %-32s %s\n", lhs,
		    pf->help != NULL ? pf->help : "");
	}
	for (size_t i = 0; i < N_COMMON; i++) {
		char lhs[64];
		snprintf(lhs, sizeof(lhs), "--%s%s%s", common_flags[i].name,
		    common_flags[i].arg != NULL ? " " : "",
		    common_flags[i].arg != NULL ? common_flags[i].arg : "");
		fprintf(f, "  %-32s %s\n", lhs, common_flags[i].help);
	}
}

static bool
set_program_flag(const asynq_serve_flag *pf, const char *val)
{
	switch (pf->kind) {
	case ASYNQ_FLAG_STRING:
		*(const char **)pf->dst = val;
		return true;
	case ASYNQ_FLAG_SIZE:
		return parse_size(val, pf->dst);
	case ASYNQ_FLAG_U32:
		return parse_u32(val, pf->dst);
	case ASYNQ_FLAG_BOOL:
		*(bool *)pf->dst = true;
		return true;
	}
	return false;
}

static bool
set_common_flag(asynq_serve *sv, int id, const char *v)
{
	asynq_rpc_server_cfg *c = &sv->server;
	switch (id) {
	case F_LISTEN:
		sv->listen = v;
		return true;
	case F_WORKERS:
		return parse_size(v, &sv->workers);
	case F_ADMIN:
		sv->admin_url = v;
		return true;
	case F_GRACE:
		return parse_u32(v, &sv->grace_ms);
	case F_MAX_CONNS:
		return parse_size(v, &c->max_connections);
	case F_HANDSHAKE:
		return parse_u32(v, &c->handshake_timeout_ms);
	case F_FRAME:
		return parse_u32(v, &c->frame_timeout_ms);
	case F_IDLE:
		return parse_u32(v, &c->idle_timeout_ms);
	case F_WRITE_QUEUE:
		return parse_size(v, &c->max_write_queue_bytes);
	case F_QUEUE_TARGET:
		return parse_u32_off(v, &c->queue_target_us);
	case F_LATENCY_TARGET:
		return parse_u32_off(v, &c->latency_target_us);
	case F_TLS_CERT:
		c->tls_cert_file = v;
		return true;
	case F_TLS_KEY:
		c->tls_key_file = v;
		return true;
	case F_TLS_CLIENT_CA:
		c->tls_client_ca_file = v;
		return true;
	case F_TLS_CRL:
		c->tls_crl_file = v;
		return true;
	case F_TLS_REQUIRE:
		c->tls_require_client_cert = true;
		return true;
	case F_QUIET:
		sv->quiet = true;
		return true;
	}
	return false;
}

static const char *
flag_name(const asynq_serve_program *p, int id)
{
	if (id >= F_PROGRAM)
		return p->flags[id - F_PROGRAM].name;
	for (size_t i = 0; i < N_COMMON; i++)
		if (common_flags[i].id == id)
			return common_flags[i].name;
	return "?";
}

/* 0: parsed; 2: bad flag (said why); -1: --help (printed). */
static int
parse_flags(asynq_serve *sv, int argc, char **argv)
{
	const asynq_serve_program *p = sv->p;
	struct option opts[MAX_FLAGS + N_COMMON + 1];
	size_t n = 0;
	if (p->n_flags > MAX_FLAGS) {
		fprintf(stderr, "%s: more than %d flags of its own\n", p->name,
		    MAX_FLAGS);
		return 2;
	}
	for (size_t i = 0; i < p->n_flags; i++)
		opts[n++] = (struct option){ p->flags[i].name,
			p->flags[i].kind == ASYNQ_FLAG_BOOL ? no_argument
			                                    : required_argument,
			NULL, F_PROGRAM + (int)i };
	for (size_t i = 0; i < N_COMMON; i++)
		opts[n++] = (struct option){ common_flags[i].name,
			common_flags[i].arg != NULL ? required_argument
			                            : no_argument,
			NULL, common_flags[i].id };
	opts[n] = (struct option){ NULL, 0, NULL, 0 };
	optind = 1;
	opterr = 0;
	int c;
	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		if (c == F_HELP) {
			usage(p, argv[0], stdout);
			return -1;
		}
		bool ok;
		if (c >= F_PROGRAM)
			ok = set_program_flag(&p->flags[c - F_PROGRAM], optarg);
		else if (c == '?' || c == ':')
			ok = false;
		else
			ok = set_common_flag(sv, c, optarg);
		if (!ok) {
			if (c == '?' || c == ':')
				fprintf(stderr,
				    "%s: unknown flag or missing "
				    "argument: %s\n",
				    p->name, argv[optind - 1]);
			else
				fprintf(stderr, "%s: bad value for --%s: %s\n",
				    p->name, flag_name(p, c),
				    optarg != NULL ? optarg : "");
			usage(p, argv[0], stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "%s: unexpected argument: %s\n", p->name,
		    argv[optind]);
		usage(p, argv[0], stderr);
		return 2;
	}
	return 0;
}

/* ---- Servers and channels ------------------------------------------------ */

asynq_status
asynq_serve_add(asynq_serve *sv, const asynq_rpc_service_desc *svc,
    asynq_serve_add_fn add, void *arg, const char *url, asynq_rpc_server **out)
{
	const char *name = sv->p->name;
	asynq_rpc_server *srv;
	asynq_status rv;
	if (url == NULL)
		url = sv->listen;
	if (url == NULL) {
		fprintf(stderr, "%s: %s: no URL to listen on (--listen)\n",
		    name, svc->full_name);
		return ASYNQ_INVALID_ARGUMENT;
	}
	if (sv->n_srv == MAX_SERVERS) {
		fprintf(stderr, "%s: %s: more than %d servers\n", name,
		    svc->full_name, MAX_SERVERS);
		return ASYNQ_RESOURCE_EXHAUSTED;
	}
	if ((rv = asynq_rpc_server_alloc(&srv, sv->rt, &sv->server)) !=
	    ASYNQ_OK) {
		fprintf(stderr, "%s: %s: server settings: %s\n", name,
		    svc->full_name, asynq_strerror(rv));
		return rv;
	}
	if ((rv = add(srv, arg)) != ASYNQ_OK ||
	    (rv = asynq_rpc_server_listen(srv, url)) != ASYNQ_OK) {
		/* The server says what failed ("listen tcp://...: address in
		 * use", "handler table: method ... has no handler"). */
		const char *why = asynq_rpc_server_last_error(srv);
		fprintf(stderr, "%s: %s: %s\n", name, svc->full_name,
		    why != NULL && why[0] != '\0' ? why : asynq_strerror(rv));
		asynq_rpc_server_free(srv);
		return rv;
	}
	if (sv->admin != NULL)
		(void)asynq_admin_add_server(sv->admin, srv, svc->full_name);
	sv->srv[sv->n_srv++] = srv;
	printf("%s: %s listening on %s\n", name, svc->full_name, url);
	fflush(stdout);
	if (out != NULL)
		*out = srv;
	return ASYNQ_OK;
}

void
asynq_serve_channel(asynq_serve *sv, asynq_rpc_channel *ch, const char *name)
{
	if (ch == NULL)
		return;
	if (sv->admin != NULL)
		(void)asynq_admin_add_channel(sv->admin, ch, name);
	if (sv->n_ch < MAX_CHANNELS)
		sv->ch[sv->n_ch++] = ch;
}

asynq_runtime *
asynq_serve_runtime(const asynq_serve *sv)
{
	return sv->rt;
}

const char *
asynq_serve_listen(const asynq_serve *sv)
{
	return sv->listen;
}

const asynq_rpc_server_cfg *
asynq_serve_server_cfg(const asynq_serve *sv)
{
	return &sv->server;
}

asynq_admin *
asynq_serve_admin(const asynq_serve *sv)
{
	return sv->admin;
}

/* ---- The counters log ---------------------------------------------------- */

typedef struct counters {
	uint64_t calls, requests, shed, shed_late;
	uint64_t out_calls, out_sent, out_requests;
	asynq_serve_counter prog[ASYNQ_SERVE_MAX_COUNTERS];
	size_t n_prog;
} counters;

static void
counters_read(const asynq_serve *sv, counters *c)
{
	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < sv->n_srv; i++) {
		asynq_rpc_server_stats st;
		asynq_rpc_server_stats_get(sv->srv[i], &st);
		c->calls += st.calls;
		c->requests += st.requests;
		c->shed += st.shed;
		c->shed_late += st.shed_late;
	}
	for (size_t i = 0; i < sv->n_ch; i++) {
		asynq_rpc_channel_stats st;
		asynq_rpc_channel_stats_get(sv->ch[i], &st);
		c->out_calls += st.calls;
		c->out_sent += st.sent_calls;
		c->out_requests += st.requests;
	}
	if (sv->p->counters != NULL) {
		c->n_prog = sv->p->counters(sv->p->arg, c->prog);
		if (c->n_prog > ASYNQ_SERVE_MAX_COUNTERS)
			c->n_prog = ASYNQ_SERVE_MAX_COUNTERS;
	}
}

static bool
counters_same(const counters *a, const counters *b)
{
	if (a->calls != b->calls || a->requests != b->requests ||
	    a->shed != b->shed || a->out_calls != b->out_calls ||
	    a->out_requests != b->out_requests || a->n_prog != b->n_prog)
		return false;
	for (size_t i = 0; i < a->n_prog; i++)
		if (a->prog[i].value != b->prog[i].value)
			return false;
	return true;
}

#define D(f) ((unsigned long long)(now->f - was->f))

static void
counters_log(const char *name, const counters *now, const counters *was)
{
	char line[512];
	size_t n = 0;
	uint64_t calls = now->calls - was->calls;
	uint64_t reqs = now->requests - was->requests;
	n += (size_t)snprintf(line + n, sizeof(line) - n,
	    "%s: calls=%llu requests=%llu avg_batch=%.1f", name, D(calls),
	    D(requests), reqs != 0 ? (double)calls / (double)reqs : 0.0);
	for (size_t i = 0; i < now->n_prog && n < sizeof(line); i++)
		n += (size_t)snprintf(line + n, sizeof(line) - n, " %s=%llu",
		    now->prog[i].name,
		    (unsigned long long)(now->prog[i].value -
		        (i < was->n_prog ? was->prog[i].value : 0)));
	/* Only when there is something: an unloaded line stays short. */
	if (now->out_calls != was->out_calls && n < sizeof(line))
		n += (size_t)snprintf(line + n, sizeof(line) - n,
		    " out_calls=%llu out_sent=%llu out_requests=%llu",
		    D(out_calls), D(out_sent), D(out_requests));
	if (now->shed != was->shed && n < sizeof(line))
		n += (size_t)snprintf(line + n, sizeof(line) - n,
		    " shed=%llu late=%llu", D(shed), D(shed_late));
	fprintf(stderr, "%s\n", line);
}

#undef D

/* ---- The program's life -------------------------------------------------- */

/* SIGHUP: every server reads its TLS files again (certificates renewed
 * in place); a server without TLS has nothing to reload. */
static void
reload_tls(asynq_serve *sv)
{
	const char *name = sv->p->name;
	const asynq_rpc_server_cfg *c = &sv->server;
	if (c->tls_cert_file == NULL && c->tls_client_ca_file == NULL) {
		fprintf(stderr, "%s: SIGHUP: no TLS files to reload\n", name);
		return;
	}
	for (size_t i = 0; i < sv->n_srv; i++) {
		if (asynq_rpc_server_reload_tls(sv->srv[i]) == ASYNQ_OK)
			fprintf(stderr, "%s: SIGHUP: TLS files reloaded\n",
			    name);
		else
			fprintf(stderr,
			    "%s: SIGHUP: TLS files not reloaded, the old ones "
			    "stay: %s\n",
			    name, asynq_rpc_server_last_error(sv->srv[i]));
	}
}

static void
drain_grace(asynq_serve *sv, const sigset_t *set)
{
	const char *name = sv->p->name;
	if (sv->grace_ms == 0 || sv->n_srv == 0)
		return;
	for (size_t i = 0; i < sv->n_srv; i++)
		asynq_rpc_server_set_serving(sv->srv[i], false);
	fprintf(stderr,
	    "%s: draining: not ready, serving %u ms more so load balancers "
	    "notice\n",
	    name, sv->grace_ms);
	struct timespec ts = { .tv_sec = sv->grace_ms / 1000,
		.tv_nsec = (long)(sv->grace_ms % 1000) * 1000000 };
	int sig;
	while ((sig = sigtimedwait(set, NULL, &ts)) == SIGHUP ||
	    (sig < 0 && errno == EINTR))
		if (sig == SIGHUP)
			reload_tls(sv);
	if (sig > 0)
		fprintf(stderr, "%s: second signal: stopping now\n", name);
}

/* Waits for SIGINT or SIGTERM, logging counter changes meanwhile and
 * reloading TLS files on SIGHUP. */
static int
wait_for_signal(asynq_serve *sv, const sigset_t *set)
{
	const char *name = sv->p->name;
	counters was, now;
	counters_read(sv, &was);
	char pid[24];
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	asynq_log(ASYNQ_LOG_INFO, "running", "program", name, "pid", pid, NULL);
	for (;;) {
		struct timespec ts = { .tv_sec = 1 };
		int sig = sigtimedwait(set, NULL, &ts);
		if (sig == SIGINT || sig == SIGTERM) {
			asynq_log(ASYNQ_LOG_INFO, "signal", "program", name,
			    "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT",
			    NULL);
			return sig;
		}
		if (sig == SIGHUP) {
			reload_tls(sv);
			continue;
		}
		if (sig < 0 && errno != EAGAIN && errno != EINTR)
			return -1;
		if (sv->quiet)
			continue;
		counters_read(sv, &now);
		if (!counters_same(&now, &was))
			counters_log(name, &now, &was);
		was = now;
	}
}

static void
close_servers(asynq_serve *sv)
{
	for (size_t i = 0; i < sv->n_srv; i++)
		asynq_rpc_server_close(sv->srv[i]);
}

int
asynq_serve_main(const asynq_serve_program *p, int argc, char **argv)
{
	asynq_serve sv = {
		.p = p,
		.listen = p->listen,
		.grace_ms = DEFAULT_GRACE_MS,
	};
	const char *name = p->name != NULL ? p->name : "service";
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	int rc = parse_flags(&sv, argc, argv);
	if (rc != 0)
		return rc < 0 ? 0 : rc;
	if (p->prepare != NULL && p->prepare(p->arg) != ASYNQ_OK)
		return 1;
	if (sv.admin_url != NULL) {
		char err[256];
		if (asynq_admin_open(&sv.admin, sv.admin_url, err,
		        sizeof(err)) != ASYNQ_OK) {
			fprintf(stderr, "%s: %s\n", name, err);
			return 1;
		}
		printf("%s: admin endpoint on %s (/live, /ready, /metrics, "
		       "/status, /trace)\n",
		    name, asynq_admin_url(sv.admin));
		fflush(stdout);
	}
	asynq_runtime_cfg rcfg = {
		.workers = sv.workers,
		.sched = { .stack_size = p->stack_size },
		.worker_start = p->worker_start,
		.worker_stop = p->worker_stop,
		.worker_arg = p->arg,
	};
	asynq_status rv = asynq_runtime_alloc(&sv.rt, &rcfg);
	if (rv != ASYNQ_OK) {
		fprintf(stderr, "%s: runtime of %zu workers: %s\n", name,
		    sv.workers, asynq_strerror(rv));
		asynq_admin_close(sv.admin);
		return 1;
	}
	if (sv.admin != NULL)
		(void)asynq_admin_add_runtime(sv.admin, sv.rt, name);
	rc = 0;
	if (p->start != NULL && (rv = p->start(&sv, p->arg)) != ASYNQ_OK) {
		fprintf(stderr, "%s: not started: %s\n", name,
		    asynq_strerror(rv));
		rc = 1;
	} else {
		(void)wait_for_signal(&sv, &set);
		drain_grace(&sv, &set);
		fprintf(stderr, "%s: stopping\n", name);
	}
	close_servers(&sv);
	if (p->stop != NULL)
		p->stop(&sv, p->arg);
	asynq_admin_close(sv.admin);
	/* The runtime first: a closed server's last posts (its writers) may
	 * still run on a worker until the runtime stops. */
	asynq_runtime_free(sv.rt);
	for (size_t i = 0; i < sv.n_srv; i++)
		asynq_rpc_server_free(sv.srv[i]);
	return rc;
}
