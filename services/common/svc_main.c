/* SPDX-License-Identifier: MIT */
/*
 * Process plumbing for the example services: a runtime whose worker hooks
 * several services share, command-line flags, and the main thread's loop
 * that waits for SIGINT/SIGTERM while logging counters.
 *
 * The admin endpoint is one per process, so it is kept here rather than
 * passed to every service's start function: svc_serve and
 * svc_runtime_alloc register what they make with it.
 *
 * Design notes: signals are blocked in main before any thread exists, so
 * every thread (workers, nng's) inherits the mask and only the main thread,
 * in sigtimedwait, ever receives SIGINT or SIGTERM; no handler runs, so
 * nothing here needs to be async-signal-safe. The caller then closes its
 * servers (which answers the calls in flight) and stops its runtimes.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "asynq/log.h"
#include "services/common/svc.h"

/* ---- The admin endpoint ------------------------------------------------- */

/* Main thread only (set up and torn down around the services). */
static asynq_admin *admin;
static const char *admin_name = "";
/* svc_admin_as: the name everything registered is reported under, "" for
 * the plain names. */
static char admin_as[96];

void
svc_admin_as(const char *name)
{
	snprintf(admin_as, sizeof(admin_as), "%s", name != NULL ? name : "");
}

const char *
svc_admin_url(void)
{
	return admin != NULL ? asynq_admin_url(admin) : NULL;
}

/* name, or "<svc_admin_as name>: name", in buf. */
static const char *
admin_label(char *buf, size_t n, const char *name)
{
	if (admin_as[0] == '\0')
		return name;
	snprintf(buf, n, "%s: %s", admin_as, name);
	return buf;
}

asynq_status
svc_admin_open(const char *url, const char *name)
{
	char err[256];
	asynq_status rv;
	if (url == NULL || admin != NULL)
		return ASYNQ_OK;
	if ((rv = asynq_admin_open(&admin, url, err, sizeof(err))) !=
	    ASYNQ_OK) {
		fprintf(stderr, "%s: %s\n", name, err);
		return rv;
	}
	admin_name = name;
	printf("%s: admin endpoint on %s (/live, /ready, /metrics, /status, "
	       "/trace)\n",
	    name, asynq_admin_url(admin));
	fflush(stdout);
	return ASYNQ_OK;
}

void
svc_admin_channel(asynq_rpc_channel *ch, const char *name)
{
	char buf[256];
	if (admin != NULL && ch != NULL)
		(void)asynq_admin_add_channel(admin, ch,
		    admin_label(buf, sizeof(buf), name));
}

void
svc_admin_close(void)
{
	asynq_admin_close(admin);
	admin = NULL;
}

/* ---- Runtime ------------------------------------------------------------ */

asynq_status
svc_hooks_add(svc_hooks *hs, svc_hook h)
{
	if (hs->n >= SVC_MAX_HOOKS)
		return ASYNQ_RESOURCE_EXHAUSTED;
	hs->hook[hs->n++] = h;
	return ASYNQ_OK;
}

static void
hooks_start(asynq_runtime *rt, size_t w, void *arg)
{
	svc_hooks *hs = arg;
	for (size_t i = 0; i < hs->n; i++)
		if (hs->hook[i].start != NULL)
			hs->hook[i].start(rt, w, hs->hook[i].arg);
}

static void
hooks_stop(asynq_runtime *rt, size_t w, void *arg)
{
	svc_hooks *hs = arg;
	for (size_t i = hs->n; i-- > 0;)
		if (hs->hook[i].stop != NULL)
			hs->hook[i].stop(rt, w, hs->hook[i].arg);
}

asynq_status
svc_runtime_alloc(asynq_runtime **rtp, size_t workers, svc_hooks *hs)
{
	if (workers > SVC_MAX_WORKERS)
		return ASYNQ_INVALID_ARGUMENT;
	asynq_runtime_cfg cfg = {
		.workers = workers,
		.sched = { .stack_size = 256 * 1024 },
		.worker_start = hs != NULL ? hooks_start : NULL,
		.worker_stop = hs != NULL ? hooks_stop : NULL,
		.worker_arg = hs,
	};
	asynq_status rv = asynq_runtime_alloc(rtp, &cfg);
	if (rv == ASYNQ_OK && asynq_runtime_workers(*rtp) > SVC_MAX_WORKERS) {
		asynq_runtime_free(*rtp);
		*rtp = NULL;
		return ASYNQ_INVALID_ARGUMENT;
	}
	if (rv == ASYNQ_OK && admin != NULL)
		(void)asynq_admin_add_runtime(admin, *rtp,
		    admin_as[0] != '\0' ? admin_as : admin_name);
	return rv;
}

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
parse_ms(const char *s, uint32_t *out)
{
	size_t v;
	if (!parse_size(s, &v) || v > UINT32_MAX)
		return false;
	*out = (uint32_t)v;
	return true;
}

/* The servers svc_serve made, for the drain. */
static asynq_rpc_server *served[8];
static size_t n_served;
static uint32_t grace_ms = SVC_DRAIN_GRACE_MS;

/* The first step of a graceful stop: every server says it is not ready
 * (health NOT_SERVING, /ready 503) and keeps serving for grace_ms, so load
 * balancers move traffic away before anything is refused; a second
 * signal ends the wait. */
static void
drain_grace(const char *name, const sigset_t *set)
{
	if (grace_ms == 0 || n_served == 0)
		return;
	for (size_t i = 0; i < n_served; i++)
		asynq_rpc_server_set_serving(served[i], false);
	fprintf(stderr,
	    "%s: draining: not ready, serving %u ms more so load balancers "
	    "notice\n",
	    name, grace_ms);
	struct timespec ts = { .tv_sec = grace_ms / 1000,
		.tv_nsec = (long)(grace_ms % 1000) * 1000000 };
	int sig;
	while ((sig = sigtimedwait(set, NULL, &ts)) < 0 && errno == EINTR)
		;
	if (sig > 0)
		fprintf(stderr, "%s: second signal: stopping now\n", name);
}

bool
svc_flags_parse(svc_flags *f, int argc, char **argv, const char *usage)
{
	enum {
		O_USERS = 256,
		O_ANSWERS,
		O_CACHE,
		O_GEN_U,
		O_GEN_A,
		O_GEN_Q,
		O_MAX_CONNS,
		O_HANDSHAKE,
		O_FRAME,
		O_IDLE,
		O_WRITE_QUEUE,
		O_QUEUE_TARGET,
		O_ADMIN,
		O_DB_ON_WORKER,
		O_DRAIN_GRACE,
		O_TLS_CERT,
		O_TLS_KEY,
		O_TLS_CLIENT_CA,
		O_TLS_CRL,
		O_REQUIRE_CLIENT_CERT,
		O_TLS_CA,
		O_TLS_SERVER_NAME,
	};
	static const struct option opts[] = {
		{ "listen", required_argument, NULL, 'l' },
		{ "workers", required_argument, NULL, 'w' },
		{ "db", required_argument, NULL, 'd' },
		{ "users", required_argument, NULL, O_USERS },
		{ "answers", required_argument, NULL, O_ANSWERS },
		{ "cache", required_argument, NULL, O_CACHE },
		{ "gen-users", required_argument, NULL, O_GEN_U },
		{ "gen-answers", required_argument, NULL, O_GEN_A },
		{ "gen-questions", required_argument, NULL, O_GEN_Q },
		{ "max-connections", required_argument, NULL, O_MAX_CONNS },
		{ "handshake-timeout-ms", required_argument, NULL,
		    O_HANDSHAKE },
		{ "frame-timeout-ms", required_argument, NULL, O_FRAME },
		{ "idle-timeout-ms", required_argument, NULL, O_IDLE },
		{ "max-write-queue-bytes", required_argument, NULL,
		    O_WRITE_QUEUE },
		{ "queue-target-us", required_argument, NULL, O_QUEUE_TARGET },
		{ "admin", required_argument, NULL, O_ADMIN },
		{ "db-on-worker", no_argument, NULL, O_DB_ON_WORKER },
		{ "drain-grace-ms", required_argument, NULL, O_DRAIN_GRACE },
		{ "tls-cert", required_argument, NULL, O_TLS_CERT },
		{ "tls-key", required_argument, NULL, O_TLS_KEY },
		{ "tls-client-ca", required_argument, NULL, O_TLS_CLIENT_CA },
		{ "tls-crl", required_argument, NULL, O_TLS_CRL },
		{ "require-client-cert", no_argument, NULL,
		    O_REQUIRE_CLIENT_CERT },
		{ "tls-ca", required_argument, NULL, O_TLS_CA },
		{ "tls-server-name", required_argument, NULL,
		    O_TLS_SERVER_NAME },
		{ "quiet", no_argument, NULL, 'q' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;
	bool ok = true;

	optind = 1;
	while (
	    ok && (c = getopt_long(argc, argv, "l:w:d:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'l':
			f->listen = optarg;
			break;
		case 'w':
			ok = parse_size(optarg, &f->workers) &&
			    f->workers <= SVC_MAX_WORKERS;
			break;
		case 'd':
			f->db = optarg;
			break;
		case O_USERS:
			f->users_url = optarg;
			break;
		case O_ANSWERS:
			f->answers_url = optarg;
			break;
		case O_CACHE:
			f->cache_url = optarg;
			break;
		case O_GEN_U:
			ok = parse_size(optarg, &f->data.users);
			break;
		case O_GEN_A:
			ok = parse_size(optarg, &f->data.answers);
			break;
		case O_GEN_Q:
			ok = parse_size(optarg, &f->data.questions);
			break;
		case O_MAX_CONNS:
			ok = parse_size(optarg, &f->server.max_connections);
			break;
		case O_HANDSHAKE:
			ok = parse_ms(optarg, &f->server.handshake_timeout_ms);
			break;
		case O_FRAME:
			ok = parse_ms(optarg, &f->server.frame_timeout_ms);
			break;
		case O_IDLE:
			ok = parse_ms(optarg, &f->server.idle_timeout_ms);
			break;
		case O_WRITE_QUEUE:
			ok = parse_size(optarg,
			    &f->server.max_write_queue_bytes);
			break;
		case O_QUEUE_TARGET:
			if (strcmp(optarg, "off") == 0)
				f->server.queue_target_us = UINT32_MAX;
			else
				ok = parse_ms(optarg,
				    &f->server.queue_target_us);
			break;
		case O_ADMIN:
			f->admin = optarg;
			break;
		case O_DB_ON_WORKER:
			f->db_on_worker = true;
			break;
		case O_DRAIN_GRACE:
			ok = parse_ms(optarg, &grace_ms);
			break;
		case O_TLS_CERT:
			f->server.tls_cert_file = optarg;
			break;
		case O_TLS_KEY:
			f->server.tls_key_file = optarg;
			break;
		case O_TLS_CLIENT_CA:
			f->server.tls_client_ca_file = optarg;
			break;
		case O_TLS_CRL:
			f->server.tls_crl_file = optarg;
			break;
		case O_REQUIRE_CLIENT_CERT:
			f->server.tls_require_client_cert = true;
			break;
		case O_TLS_CA:
			f->tls_ca = optarg;
			break;
		case O_TLS_SERVER_NAME:
			f->tls_server_name = optarg;
			break;
		case 'q':
			f->quiet = true;
			break;
		default:
			ok = false;
			break;
		}
	}
	if (ok && optind < argc)
		ok = false;
	if (!ok)
		fprintf(stderr,
		    "usage: %s %s\n"
		    "server limits: [--max-connections N] "
		    "[--handshake-timeout-ms MS] [--frame-timeout-ms MS]\n"
		    "  [--idle-timeout-ms MS] [--max-write-queue-bytes N] "
		    "[--queue-target-us US|off]\n"
		    "tls+tcp: [--tls-cert FILE --tls-key FILE] [--tls-client-ca "
		    "FILE [--tls-crl FILE]\n"
		    "  [--require-client-cert]] (mutual TLS; SIGHUP reloads "
		    "the files)\n"
		    "admin endpoint: [--admin http://HOST:PORT] serves /live, "
		    "/ready and /metrics\n",
		    argv[0], usage);
	return ok;
}

/* ---- Signals and the counters log ----------------------------------------
 */

void
svc_signals_block(void)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
}

asynq_status
svc_serve(asynq_rpc_server **srvp, asynq_runtime *rt,
    const asynq_rpc_service_desc *svc, svc_add_fn add, void *arg,
    const char *url, const asynq_rpc_server_cfg *cfg)
{
	asynq_rpc_server *srv;
	asynq_status rv;

	if (*srvp != NULL)
		return ASYNQ_FAILED_PRECONDITION;
	if ((rv = asynq_rpc_server_alloc(&srv, rt, cfg)) != ASYNQ_OK)
		return rv;
	if ((rv = add(srv, arg)) != ASYNQ_OK ||
	    (rv = asynq_rpc_server_listen(srv, url)) != ASYNQ_OK) {
		/* The status alone says little ("unavailable"); the server
		 * says what failed ("listen tcp://...: address in use"). */
		fprintf(stderr, "%s: %s\n", svc->full_name,
		    asynq_rpc_server_last_error(srv));
		asynq_rpc_server_free(srv);
		return rv;
	}
	char label[256];
	if (admin != NULL)
		(void)asynq_admin_add_server(admin, srv,
		    admin_label(label, sizeof(label), svc->full_name));
	if (n_served < sizeof(served) / sizeof(served[0]))
		served[n_served++] = srv;
	*srvp = srv;
	return ASYNQ_OK;
}

void
svc_server_counters(const asynq_rpc_server *s, svc_counters *out)
{
	asynq_rpc_server_stats st;
	asynq_rpc_server_stats_get(s, &st);
	out->calls += st.calls;
	out->requests += st.requests;
	out->shed += st.shed;
	out->shed_late += st.shed_late;
}

static void
log_delta(const char *name, const svc_counters *now, const svc_counters *was)
{
	uint64_t calls = now->calls - was->calls;
	uint64_t reqs = now->requests - was->requests;
	char out[128] = "", shed[64] = "";
	if (now->out_calls != was->out_calls)
		snprintf(out, sizeof(out),
		    " out_calls=%llu out_sent=%llu out_requests=%llu",
		    (unsigned long long)(now->out_calls - was->out_calls),
		    (unsigned long long)(now->out_sent - was->out_sent),
		    (unsigned long long)(now->out_requests -
		        was->out_requests));
	/* Only when it happened: an unloaded service's line stays as it was. */
	if (now->shed != was->shed)
		snprintf(shed, sizeof(shed), " shed=%llu late=%llu",
		    (unsigned long long)(now->shed - was->shed),
		    (unsigned long long)(now->shed_late - was->shed_late));
	fprintf(stderr,
	    "%s: calls=%llu requests=%llu avg_batch=%.1f sql=%llu%s%s\n", name,
	    (unsigned long long)calls, (unsigned long long)reqs,
	    reqs != 0 ? (double)calls / (double)reqs : 0.0,
	    (unsigned long long)(now->sql - was->sql), out, shed);
}

int
svc_run_until_signal(const char *name, svc_counters_fn fn, void *arg,
    bool quiet)
{
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP);
	svc_counters was = { 0 };
	if (fn != NULL)
		fn(arg, &was);
	char pid[24];
	snprintf(pid, sizeof(pid), "%ld", (long)getpid());
	asynq_log(ASYNQ_LOG_INFO, "running", "program", name, "pid", pid,
	    NULL);
	for (;;) {
		struct timespec ts = { .tv_sec = 1 };
		int sig = sigtimedwait(&set, NULL, &ts);
		if (sig == SIGINT || sig == SIGTERM) {
			asynq_log(ASYNQ_LOG_INFO, "signal", "program", name,
			    "signal", sig == SIGTERM ? "SIGTERM" : "SIGINT",
			    NULL);
			sigdelset(&set, SIGHUP);
			drain_grace(name, &set);
			return sig;
		}
		if (sig == SIGHUP) {
			/* New certificates are in place: connections from
			 * now on use them. The servers log the outcome
			 * (event=tls_reloaded, or tls_reload_failed and why,
			 * keeping the files they had). */
			for (size_t i = 0; i < n_served; i++)
				(void)asynq_rpc_server_reload_tls(served[i]);
			continue;
		}
		if (sig < 0 && errno != EAGAIN && errno != EINTR)
			return -1;
		if (quiet || fn == NULL)
			continue;
		svc_counters now = { 0 };
		fn(arg, &now);
		if (memcmp(&now, &was, sizeof(now)) != 0)
			log_delta(name, &now, &was);
		was = now;
	}
}
