/* SPDX-License-Identifier: MIT */
/*
 * The admin endpoint (asynq/admin.h): /live, /ready and /metrics over
 * nng's HTTP server, reporting on the servers, channels and runtimes a
 * process registers.
 *
 * Design notes:
 * - nng runs the handlers on its own threads, possibly several at once.
 *   Each takes the endpoint's mutex `mu` for as long as it reads the
 *   registry, so remove_* (which takes it too) returns only when no
 *   handler can touch the removed object any more. Nothing else is locked
 *   while `mu` is held except the objects' own locks (server stats,
 *   channel stats), which are leaves.
 * - Worker scheduler counters can only be read on the worker itself
 *   (asynq_sched_stats_get is per thread), so a scrape posts one
 *   scrape_slot to each worker and waits at most SCRAPE_WAIT_MS for their
 *   answers; a worker stuck in a long task shows as asynq_worker_up 0
 *   rather than stalling the scrape. Each post holds the runtime
 *   (asynq_runtime_hold), so the runtime cannot stop, and its scheduler
 *   go away, before the post ran. The slots live in a `scrape` counted by
 *   references (the scraper's and one per post in flight): whichever
 *   lets go last frees it, so a late answer writes to live memory.
 * - Close stops nng's server first. nng_http_server_stop closes every
 *   connection and waits until each is reaped, which includes waiting for
 *   a handler in progress; handlers are bounded (the scrape wait), so
 *   close is too. Only then are the registry and the endpoint freed.
 * - Metric families are written whole, one after the other (every sample
 *   of a name together, as the text format requires), each with its HELP
 *   and TYPE lines; a family with no samples is left out.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <nng/nng.h>
#include <nng/supplemental/http/http.h>

#include "asynq/admin.h"

/* How long a scrape waits for the workers' scheduler counters. */
#define SCRAPE_WAIT_MS 500

/* ---- A growing text buffer ---------------------------------------------- */

typedef struct sbuf {
	char *p;
	size_t len, cap;
	bool failed; /* out of memory: the text is cut */
} sbuf;

static void sb_printf(sbuf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void
sb_printf(sbuf *b, const char *fmt, ...)
{
	for (;;) {
		if (b->failed)
			return;
		va_list ap;
		va_start(ap, fmt);
		size_t room = b->cap - b->len;
		int n = vsnprintf(b->p != NULL ? b->p + b->len : NULL, room,
		    fmt, ap);
		va_end(ap);
		if (n < 0) {
			b->failed = true;
			return;
		}
		if ((size_t)n < room) {
			b->len += (size_t)n;
			return;
		}
		size_t cap = b->cap != 0 ? b->cap : 4096;
		while (cap - b->len <= (size_t)n)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (p == NULL) {
			b->failed = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
}

/* Appends s as a label value: backslash, quote and newline escaped. */
static void
sb_label(sbuf *b, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '\\')
			sb_printf(b, "\\\\");
		else if (*s == '"')
			sb_printf(b, "\\\"");
		else if (*s == '\n')
			sb_printf(b, "\\n");
		else
			sb_printf(b, "%c", *s);
	}
}

/* ---- The registry ----------------------------------------------------------
 */

typedef struct entry {
	void *obj;
	char *name;
} entry;

typedef struct registry {
	entry *e;
	size_t n, cap;
} registry;

struct asynq_admin {
	nng_http_server *http;
	char url[160];
	pthread_mutex_t mu; /* guards the registries; see the design notes */
	registry servers, channels, runtimes;
};

static asynq_status
reg_add(asynq_admin *a, registry *r, void *obj, const char *name)
{
	asynq_status st = ASYNQ_OK;
	char *copy = strdup(name != NULL ? name : "");
	if (obj == NULL) {
		free(copy);
		return ASYNQ_INVALID_ARGUMENT;
	}
	pthread_mutex_lock(&a->mu);
	for (size_t i = 0; i < r->n; i++)
		if (r->e[i].obj == obj)
			st = ASYNQ_ALREADY_EXISTS;
	if (st == ASYNQ_OK && copy == NULL)
		st = ASYNQ_RESOURCE_EXHAUSTED;
	if (st == ASYNQ_OK && r->n == r->cap) {
		size_t cap = r->cap != 0 ? 2 * r->cap : 4;
		entry *e = realloc(r->e, cap * sizeof(*e));
		if (e == NULL) {
			st = ASYNQ_RESOURCE_EXHAUSTED;
		} else {
			r->e = e;
			r->cap = cap;
		}
	}
	if (st == ASYNQ_OK) {
		r->e[r->n++] = (entry){ obj, copy };
		copy = NULL;
	}
	pthread_mutex_unlock(&a->mu);
	free(copy);
	return st;
}

static void
reg_remove(asynq_admin *a, registry *r, const void *obj)
{
	pthread_mutex_lock(&a->mu);
	for (size_t i = 0; i < r->n; i++) {
		if (r->e[i].obj != obj)
			continue;
		free(r->e[i].name);
		memmove(&r->e[i], &r->e[i + 1], (r->n - i - 1) * sizeof(*r->e));
		r->n--;
		break;
	}
	pthread_mutex_unlock(&a->mu);
}

static void
reg_fini(registry *r)
{
	for (size_t i = 0; i < r->n; i++)
		free(r->e[i].name);
	free(r->e);
}

asynq_status
asynq_admin_add_server(asynq_admin *a, asynq_rpc_server *s, const char *name)
{
	return reg_add(a, &a->servers, s, name);
}

void
asynq_admin_remove_server(asynq_admin *a, const asynq_rpc_server *s)
{
	reg_remove(a, &a->servers, s);
}

asynq_status
asynq_admin_add_channel(asynq_admin *a, asynq_rpc_channel *ch, const char *name)
{
	return reg_add(a, &a->channels, ch, name);
}

void
asynq_admin_remove_channel(asynq_admin *a, const asynq_rpc_channel *ch)
{
	reg_remove(a, &a->channels, ch);
}

asynq_status
asynq_admin_add_runtime(asynq_admin *a, asynq_runtime *rt, const char *name)
{
	return reg_add(a, &a->runtimes, rt, name);
}

void
asynq_admin_remove_runtime(asynq_admin *a, const asynq_runtime *rt)
{
	reg_remove(a, &a->runtimes, rt);
}

const char *
asynq_admin_url(const asynq_admin *a)
{
	return a->url;
}

/* ---- Replies --------------------------------------------------------------
 */

static void
reply(nng_aio *aio, uint16_t status, const char *ctype, const char *body,
    size_t len)
{
	nng_http_res *res;
	int rv;
	if ((rv = nng_http_res_alloc(&res)) != 0) {
		nng_aio_finish(aio, rv);
		return;
	}
	if ((rv = nng_http_res_set_status(res, status)) != 0 ||
	    (rv = nng_http_res_set_header(res, "Content-Type", ctype)) != 0 ||
	    (rv = nng_http_res_set_header(res, "Cache-Control", "no-store")) !=
	        0 ||
	    (rv = nng_http_res_copy_data(res, body, len)) != 0) {
		nng_http_res_free(res);
		nng_aio_finish(aio, rv);
		return;
	}
	nng_aio_set_output(aio, 0, res);
	nng_aio_finish(aio, 0);
}

static void
reply_sb(nng_aio *aio, uint16_t status, const char *ctype, sbuf *b)
{
	if (b->failed)
		reply(aio, NNG_HTTP_STATUS_INTERNAL_SERVER_ERROR,
		    "text/plain; charset=utf-8", "out of memory\n", 14);
	else
		reply(aio, status, ctype, b->p != NULL ? b->p : "", b->len);
	free(b->p);
}

static asynq_admin *
admin_of(nng_aio *aio)
{
	nng_http_handler *h = nng_aio_get_input(aio, 1);
	return nng_http_handler_get_data(h);
}

static const char TEXT[] = "text/plain; charset=utf-8";

static void
handle_root(nng_aio *aio)
{
	static const char body[] =
	    "asynq admin endpoint\n"
	    "/live     200 while the process runs\n"
	    "/ready    200 when every server serves, else 503 and why\n"
	    "/metrics  Prometheus text format\n";
	reply(aio, NNG_HTTP_STATUS_OK, TEXT, body, sizeof(body) - 1);
}

static void
handle_live(nng_aio *aio)
{
	reply(aio, NNG_HTTP_STATUS_OK, TEXT, "live\n", 5);
}

/* What a server's state means, for a person reading /ready. */
static const char *
state_words(asynq_rpc_serving st)
{
	switch (st) {
	case ASYNQ_RPC_STARTING:
		return "starting (not listening yet)";
	case ASYNQ_RPC_SERVING:
		return "serving";
	case ASYNQ_RPC_NOT_SERVING:
		return "not serving (told to stop taking traffic; it still "
		       "answers calls)";
	case ASYNQ_RPC_DRAINING:
		return "draining (closing: it finishes the calls it accepted "
		       "and refuses new ones)";
	case ASYNQ_RPC_CLOSED:
		return "closed";
	}
	return "in an unknown state";
}

static void
handle_ready(nng_aio *aio)
{
	asynq_admin *a = admin_of(aio);
	sbuf lines = { 0 }, b = { 0 };
	bool ready;
	pthread_mutex_lock(&a->mu);
	ready = a->servers.n > 0;
	for (size_t i = 0; i < a->servers.n; i++) {
		asynq_rpc_serving st =
		    asynq_rpc_server_serving(a->servers.e[i].obj);
		ready = ready && st == ASYNQ_RPC_SERVING;
		sb_printf(&lines, "server %s: %s\n", a->servers.e[i].name,
		    state_words(st));
	}
	if (a->servers.n == 0)
		sb_printf(&lines, "starting: no server added yet\n");
	pthread_mutex_unlock(&a->mu);
	sb_printf(&b, "%s\n%s", ready ? "ready" : "not ready",
	    lines.p != NULL ? lines.p : "");
	b.failed = b.failed || lines.failed;
	free(lines.p);
	reply_sb(aio,
	    ready ? NNG_HTTP_STATUS_OK : NNG_HTTP_STATUS_SERVICE_UNAVAILABLE,
	    TEXT, &b);
}

/* ---- Worker counters: a post to each worker ----------------------------- */

typedef struct scrape scrape;

typedef struct scrape_slot {
	asynq_post post;
	scrape *sc;
	asynq_runtime *rt;
	asynq_sched_stats st;
	bool done; /* under sc->mu */
} scrape_slot;

struct scrape {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* CLOCK_MONOTONIC */
	int refs;          /* under mu */
	size_t n;
	scrape_slot slot[];
};

static void
scrape_rele(scrape *sc)
{
	pthread_mutex_lock(&sc->mu);
	bool last = --sc->refs == 0;
	pthread_mutex_unlock(&sc->mu);
	if (!last)
		return;
	pthread_cond_destroy(&sc->cv);
	pthread_mutex_destroy(&sc->mu);
	free(sc);
}

/* On the worker: its scheduler's counters into the slot. */
static void
slot_run(asynq_post *p)
{
	scrape_slot *sl = (scrape_slot *)p;
	asynq_runtime *rt = sl->rt;
	scrape *sc = sl->sc;
	asynq_sched_stats st;
	asynq_sched_stats_get(&st);
	pthread_mutex_lock(&sc->mu);
	sl->st = st;
	sl->done = true;
	pthread_cond_broadcast(&sc->cv);
	pthread_mutex_unlock(&sc->mu);
	scrape_rele(sc);
	asynq_runtime_rele(rt);
}

/* Asks the n workers of the registered runtimes for their counters and
 * waits for them at most SCRAPE_WAIT_MS; out[i] and up[i] get worker i's
 * (in registry order). Under a->mu. */
static void
scrape_workers(asynq_admin *a, size_t n, asynq_sched_stats *out, bool *up)
{
	memset(up, 0, n * sizeof(*up));
	if (n == 0)
		return;
	scrape *sc = calloc(1, sizeof(*sc) + n * sizeof(sc->slot[0]));
	if (sc == NULL)
		return;
	pthread_condattr_t ca;
	bool cv_ok = pthread_condattr_init(&ca) == 0;
	cv_ok = cv_ok && pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
	    pthread_cond_init(&sc->cv, &ca) == 0;
	pthread_condattr_destroy(&ca);
	if (!cv_ok || pthread_mutex_init(&sc->mu, NULL) != 0) {
		if (cv_ok)
			pthread_cond_destroy(&sc->cv);
		free(sc);
		return;
	}
	sc->n = n;
	sc->refs = 1;
	size_t k = 0, posted = 0;
	for (size_t r = 0; r < a->runtimes.n; r++) {
		asynq_runtime *rt = a->runtimes.e[r].obj;
		for (size_t w = 0; w < asynq_runtime_workers(rt) && k < n;
		     w++, k++) {
			scrape_slot *sl = &sc->slot[k];
			sl->post.fn = slot_run;
			sl->sc = sc;
			sl->rt = rt;
			/* A stopping runtime takes no more work: its
			 * workers are reported down. */
			if (asynq_runtime_hold(rt) != ASYNQ_OK)
				continue;
			pthread_mutex_lock(&sc->mu);
			sc->refs++;
			pthread_mutex_unlock(&sc->mu);
			asynq_sched_post(asynq_runtime_sched(rt, w), &sl->post);
			posted++;
		}
	}
	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_nsec += SCRAPE_WAIT_MS * 1000000L;
	until.tv_sec += until.tv_nsec / 1000000000L;
	until.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&sc->mu);
	for (;;) {
		size_t done = 0;
		for (size_t i = 0; i < n; i++)
			done += sc->slot[i].done;
		if (done == posted ||
		    pthread_cond_timedwait(&sc->cv, &sc->mu, &until) != 0)
			break;
	}
	for (size_t i = 0; i < n; i++) {
		up[i] = sc->slot[i].done;
		if (up[i])
			out[i] = sc->slot[i].st;
	}
	pthread_mutex_unlock(&sc->mu);
	scrape_rele(sc);
}

/* ---- /metrics ----------------------------------------------------------- */

/* Writes a family's HELP and TYPE lines. */
static void
family(sbuf *b, const char *name, const char *type, const char *help)
{
	sb_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Nanoseconds as decimal seconds, exactly ("0.00005"). */
static void
sb_seconds(sbuf *b, uint64_t ns)
{
	char frac[16];
	snprintf(frac, sizeof(frac), "%09" PRIu64, ns % 1000000000u);
	size_t n = strlen(frac);
	while (n > 0 && frac[n - 1] == '0')
		frac[--n] = '\0';
	if (n == 0)
		sb_printf(b, "%" PRIu64, ns / 1000000000u);
	else
		sb_printf(b, "%" PRIu64 ".%s", ns / 1000000000u, frac);
}

/* Writes the samples of one histogram; labels is `k="v",...` (no braces)
 * and seconds says whether its values are nanoseconds shown as seconds. */
static void
histogram(sbuf *b, const char *name, const char *labels,
    const asynq_rpc_hist *h, bool seconds)
{
	uint64_t cum = 0;
	for (size_t i = 0; i <= h->n_bounds; i++) {
		cum += h->counts[i];
		sb_printf(b, "%s_bucket{%s,le=\"", name, labels);
		if (i == h->n_bounds)
			sb_printf(b, "+Inf");
		else if (seconds)
			sb_seconds(b, h->bounds[i]);
		else
			sb_printf(b, "%" PRIu64, h->bounds[i]);
		sb_printf(b, "\"} %" PRIu64 "\n", cum);
	}
	sb_printf(b, "%s_sum{%s} ", name, labels);
	if (seconds)
		sb_seconds(b, h->sum);
	else
		sb_printf(b, "%" PRIu64, h->sum);
	sb_printf(b, "\n%s_count{%s} %" PRIu64 "\n", name, labels, h->count);
}

/* A counter or gauge of a stats struct, by offset. */
typedef struct field {
	const char *name;
	const char *type;
	const char *help;
	size_t off;
} field;

static uint64_t
field_of(const void *stats, const field *f)
{
	return *(const uint64_t *)((const char *)stats + f->off);
}

#define SRV(f) offsetof(asynq_rpc_server_stats, f)
static const field server_fields[] = {
	{ "asynq_rpc_server_requests_total", "counter", "Requests received.",
	    SRV(requests) },
	{ "asynq_rpc_server_calls_total", "counter", "Calls run.", SRV(calls) },
	{ "asynq_rpc_server_rejected_requests_total", "counter",
	    "Requests answered RESOURCE_EXHAUSTED for going over a limit.",
	    SRV(rejected) },
	{ "asynq_rpc_server_malformed_requests_total", "counter",
	    "Requests that could not be decoded.", SRV(malformed) },
	{ "asynq_rpc_server_duplicate_requests_total", "counter",
	    "Resent or repeated requests whose non-idempotent calls did not "
	    "run again.",
	    SRV(duplicates) },
	{ "asynq_rpc_server_shed_requests_total", "counter",
	    "Requests refused by admission control (overloaded), not run.",
	    SRV(shed) },
	{ "asynq_rpc_server_shed_late_requests_total", "counter",
	    "Shed requests refused after they had waited, not at once.",
	    SRV(shed_late) },
	{ "asynq_rpc_server_connections", "gauge", "Connections open.",
	    SRV(conns_open) },
	{ "asynq_rpc_server_inflight_calls", "gauge",
	    "Calls read and not answered yet.", SRV(inflight_calls) },
};

/* Connections the server closed, by why. */
static const struct {
	const char *reason;
	size_t off;
} conn_reasons[] = {
	{ "refused", SRV(conns_refused) },
	{ "evicted", SRV(conns_evicted) },
	{ "idle", SRV(conns_idle) },
	{ "stalled", SRV(conns_stalled) },
	{ "overflowed", SRV(conns_overflowed) },
};
#undef SRV

#define CH(f) offsetof(asynq_rpc_channel_stats, f)
static const field channel_fields[] = {
	{ "asynq_rpc_client_calls_total", "counter", "Calls made.", CH(calls) },
	{ "asynq_rpc_client_requests_total", "counter",
	    "Requests sent (first transmissions).", CH(requests) },
	{ "asynq_rpc_client_failed_calls_total", "counter",
	    "Calls that ended with an error.", CH(failures) },
	{ "asynq_rpc_client_resent_requests_total", "counter",
	    "Requests resent after a lost connection.", CH(resends) },
	{ "asynq_rpc_client_refused_requests_total", "counter",
	    "Requests a server refused without running them.", CH(refused) },
	{ "asynq_rpc_client_retried_requests_total", "counter",
	    "Refused requests sent to another replica.", CH(retries) },
	{ "asynq_rpc_client_collapsed_calls_total", "counter",
	    "Calls folded into an identical call of the same batch.",
	    CH(collapsed) },
	{ "asynq_rpc_client_cached_calls_total", "counter",
	    "Calls answered from a request cache, not sent.", CH(cached) },
	{ "asynq_rpc_client_sent_calls_total", "counter",
	    "Distinct calls put in requests.", CH(sent_calls) },
};
#undef CH

#define SCH(f) offsetof(asynq_sched_stats, f)
static const field worker_fields[] = {
	{ "asynq_worker_tasks_spawned_total", "counter", "Tasks created.",
	    SCH(tasks_spawned) },
	{ "asynq_worker_tasks_started_total", "counter",
	    "Tasks that began running.", SCH(tasks_started) },
	{ "asynq_worker_tasks_live", "gauge", "Tasks not freed yet.",
	    SCH(tasks_live) },
	{ "asynq_worker_switches_total", "counter", "Coroutine switches.",
	    SCH(switches) },
	{ "asynq_worker_flushes_total", "counter", "Batch flushes started.",
	    SCH(flushes) },
	{ "asynq_worker_async_flushes_total", "counter",
	    "Batch flushes completed later from another thread.",
	    SCH(async_flushes) },
	{ "asynq_worker_batches_cancelled_total", "counter",
	    "Batches cancelled.", SCH(batches_cancelled) },
	{ "asynq_worker_items_followed_total", "counter",
	    "Batch calls folded into an identical key's item.",
	    SCH(items_followed) },
	{ "asynq_worker_sleeps_total", "counter",
	    "Times the worker slept waiting for work or I/O.", SCH(sleeps) },
	{ "asynq_worker_stacks_mapped_total", "counter",
	    "Coroutine stacks ever mapped.", SCH(stacks_mapped) },
	{ "asynq_worker_stacks", "gauge",
	    "Coroutine stacks mapped now, in use or idle.", SCH(stacks_held) },
	{ "asynq_worker_stacks_idle", "gauge",
	    "Coroutine stacks in the pool, not in use.", SCH(stacks_idle) },
};
#undef SCH

static const char *const code_names[ASYNQ_STATUS_COUNT] = {
#define CODE_NAME(name, num, desc) [num] = #name,
	ASYNQ_STATUS_LIST(CODE_NAME)
#undef CODE_NAME
};

/* One registered server, as one scrape read it. */
typedef struct srv_snap {
	const char *name;
	asynq_rpc_serving state;
	asynq_rpc_server_stats st;
	asynq_rpc_method_stats *m;
	size_t n_m;
} srv_snap;

/* `server="x",service="pkg.S",method="M"` for method stats ms of s. */
static void
method_labels(sbuf *b, const srv_snap *s, const asynq_rpc_method_stats *ms)
{
	const char *full = ms->method->full_name;
	const char *slash = strchr(full, '/');
	size_t svc_len = slash != NULL ? (size_t)(slash - full) : strlen(full);
	char svc[256];
	snprintf(svc, sizeof(svc), "%.*s", (int)svc_len, full);
	sb_printf(b, "server=\"");
	sb_label(b, s->name);
	sb_printf(b, "\",service=\"");
	sb_label(b, svc);
	sb_printf(b, "\",method=\"");
	sb_label(b, ms->method->name);
	sb_printf(b, "\"");
}

static void
metrics_servers(sbuf *b, const srv_snap *ss, size_t n)
{
	if (n == 0)
		return;
	family(b, "asynq_rpc_server_ready", "gauge",
	    "1 while the server serves (listening, not draining or told to "
	    "stop taking traffic), else 0.");
	for (size_t i = 0; i < n; i++) {
		sb_printf(b, "asynq_rpc_server_ready{server=\"");
		sb_label(b, ss[i].name);
		sb_printf(b, "\"} %d\n", ss[i].state == ASYNQ_RPC_SERVING);
	}
	for (size_t f = 0; f < sizeof(server_fields) / sizeof(*server_fields);
	     f++) {
		family(b, server_fields[f].name, server_fields[f].type,
		    server_fields[f].help);
		for (size_t i = 0; i < n; i++) {
			sb_printf(b, "%s{server=\"", server_fields[f].name);
			sb_label(b, ss[i].name);
			sb_printf(b, "\"} %" PRIu64 "\n",
			    field_of(&ss[i].st, &server_fields[f]));
		}
	}
	family(b, "asynq_rpc_server_connections_closed_total", "counter",
	    "Connections the server closed: refused at accept, evicted for a "
	    "new one, idle, stalled (overdue preface or frame), overflowed "
	    "(replies unread).");
	for (size_t i = 0; i < n; i++)
		for (size_t r = 0;
		     r < sizeof(conn_reasons) / sizeof(*conn_reasons); r++) {
			sb_printf(b,
			    "asynq_rpc_server_connections_closed_total{server=\"");
			sb_label(b, ss[i].name);
			sb_printf(b, "\",reason=\"%s\"} %" PRIu64 "\n",
			    conn_reasons[r].reason,
			    *(const uint64_t *)((const char *)&ss[i].st +
			        conn_reasons[r].off));
		}
	family(b, "asynq_rpc_server_calls_per_request", "histogram",
	    "Calls run per request that ran any: the batching at a glance.");
	for (size_t i = 0; i < n; i++) {
		sbuf l = { 0 };
		sb_printf(&l, "server=\"");
		sb_label(&l, ss[i].name);
		sb_printf(&l, "\"");
		if (!l.failed)
			histogram(b, "asynq_rpc_server_calls_per_request", l.p,
			    &ss[i].st.calls_per_request, false);
		b->failed = b->failed || l.failed;
		free(l.p);
	}

	family(b, "asynq_rpc_server_handled_calls_total", "counter",
	    "Calls whose handler ran, by the status they ended with.");
	for (size_t i = 0; i < n; i++)
		for (size_t k = 0; k < ss[i].n_m; k++) {
			const asynq_rpc_method_stats *ms = &ss[i].m[k];
			for (size_t c = 0; c < ASYNQ_STATUS_COUNT; c++) {
				if (c != ASYNQ_OK && ms->codes[c] == 0)
					continue;
				sb_printf(b,
				    "asynq_rpc_server_handled_calls_total{");
				method_labels(b, &ss[i], ms);
				sb_printf(b, ",code=\"%s\"} %" PRIu64 "\n",
				    code_names[c], ms->codes[c]);
			}
		}
	static const char *const hists[2][2] = {
		{ "asynq_rpc_server_handling_seconds",
		    "Seconds from a call's request being read to its handler "
		    "returning (queueing, decoding and the handler)." },
		{ "asynq_rpc_server_method_calls_per_request",
		    "Calls of the method per request that had any." },
	};
	for (size_t h = 0; h < 2; h++) {
		family(b, hists[h][0], "histogram", hists[h][1]);
		for (size_t i = 0; i < n; i++)
			for (size_t k = 0; k < ss[i].n_m; k++) {
				const asynq_rpc_method_stats *ms = &ss[i].m[k];
				sbuf l = { 0 };
				method_labels(&l, &ss[i], ms);
				if (!l.failed)
					histogram(b, hists[h][0], l.p,
					    h == 0 ? &ms->latency_ns
					           : &ms->calls_per_request,
					    h == 0);
				b->failed = b->failed || l.failed;
				free(l.p);
			}
	}
}

static void
metrics_channels(sbuf *b, const registry *chs)
{
	if (chs->n == 0)
		return;
	asynq_rpc_channel_stats *st = calloc(chs->n, sizeof(*st));
	if (st == NULL) {
		b->failed = true;
		return;
	}
	for (size_t i = 0; i < chs->n; i++)
		asynq_rpc_channel_stats_get(chs->e[i].obj, &st[i]);
	for (size_t f = 0; f < sizeof(channel_fields) / sizeof(*channel_fields);
	     f++) {
		family(b, channel_fields[f].name, channel_fields[f].type,
		    channel_fields[f].help);
		for (size_t i = 0; i < chs->n; i++) {
			sb_printf(b, "%s{channel=\"", channel_fields[f].name);
			sb_label(b, chs->e[i].name);
			sb_printf(b, "\"} %" PRIu64 "\n",
			    field_of(&st[i], &channel_fields[f]));
		}
	}
	free(st);
}

static void
metrics_workers(sbuf *b, asynq_admin *a)
{
	size_t n = 0;
	for (size_t r = 0; r < a->runtimes.n; r++)
		n += asynq_runtime_workers(a->runtimes.e[r].obj);
	if (n == 0)
		return;
	asynq_sched_stats *st = calloc(n, sizeof(*st));
	bool *up = calloc(n, sizeof(*up));
	if (st == NULL || up == NULL) {
		free(st);
		free(up);
		b->failed = true;
		return;
	}
	scrape_workers(a, n, st, up);
	family(b, "asynq_worker_up", "gauge",
	    "1 if the worker answered this scrape within 0.5 s, else 0 (busy "
	    "in a long task, or its runtime stopping).");
	for (int pass = -1;
	     pass < (int)(sizeof(worker_fields) / sizeof(*worker_fields));
	     pass++) {
		if (pass >= 0)
			family(b, worker_fields[pass].name,
			    worker_fields[pass].type, worker_fields[pass].help);
		size_t k = 0;
		for (size_t r = 0; r < a->runtimes.n; r++) {
			size_t nw = asynq_runtime_workers(a->runtimes.e[r].obj);
			for (size_t w = 0; w < nw; w++, k++) {
				if (pass >= 0 && !up[k])
					continue;
				sb_printf(b, "%s{runtime=\"",
				    pass < 0 ? "asynq_worker_up"
				             : worker_fields[pass].name);
				sb_label(b, a->runtimes.e[r].name);
				sb_printf(b, "\",worker=\"%zu\"} %" PRIu64 "\n",
				    w,
				    pass < 0 ? (uint64_t)up[k]
				             : field_of(&st[k],
				                   &worker_fields[pass]));
			}
		}
	}
	free(st);
	free(up);
}

static void
metrics_process(sbuf *b)
{
	unsigned long long size = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	bool statm = f != NULL && fscanf(f, "%llu %llu", &size, &resident) == 2;
	if (f != NULL)
		fclose(f);
	long page = sysconf(_SC_PAGESIZE);
	if (statm && page > 0) {
		family(b, "asynq_process_resident_memory_bytes", "gauge",
		    "Resident memory of the process (/proc/self/statm).");
		sb_printf(b, "asynq_process_resident_memory_bytes %llu\n",
		    resident * (unsigned long long)page);
		family(b, "asynq_process_virtual_memory_bytes", "gauge",
		    "Virtual memory of the process (/proc/self/statm).");
		sb_printf(b, "asynq_process_virtual_memory_bytes %llu\n",
		    size * (unsigned long long)page);
	}
	DIR *d = opendir("/proc/self/fd");
	if (d != NULL) {
		size_t fds = 0;
		const struct dirent *e;
		while ((e = readdir(d)) != NULL)
			if (e->d_name[0] != '.')
				fds++;
		closedir(d);
		family(b, "asynq_process_open_fds", "gauge",
		    "Open file descriptors of the process (/proc/self/fd).");
		/* The directory being read was one of them. */
		sb_printf(b, "asynq_process_open_fds %zu\n",
		    fds > 0 ? fds - 1 : 0);
	}
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) == 0) {
		uint64_t us =
		    (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) *
		        1000000u +
		    (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
		family(b, "asynq_process_cpu_seconds_total", "counter",
		    "User and system CPU time of the process.");
		sb_printf(b, "asynq_process_cpu_seconds_total ");
		sb_seconds(b, us * 1000u);
		sb_printf(b, "\n");
	}
}

static void
handle_metrics(nng_aio *aio)
{
	asynq_admin *a = admin_of(aio);
	sbuf b = { 0 };
	pthread_mutex_lock(&a->mu);
	size_t n = a->servers.n;
	srv_snap *ss = calloc(n != 0 ? n : 1, sizeof(*ss));
	if (ss == NULL)
		b.failed = true;
	for (size_t i = 0; ss != NULL && i < n; i++) {
		asynq_rpc_server *s = a->servers.e[i].obj;
		ss[i].name = a->servers.e[i].name;
		ss[i].state = asynq_rpc_server_serving(s);
		asynq_rpc_server_stats_get(s, &ss[i].st);
		size_t nm = asynq_rpc_server_methods(s);
		ss[i].m = calloc(nm != 0 ? nm : 1, sizeof(*ss[i].m));
		if (ss[i].m == NULL) {
			b.failed = true;
			continue;
		}
		for (size_t k = 0; k < nm; k++)
			if (asynq_rpc_server_method_stats_get(s, k,
			        &ss[i].m[ss[i].n_m]) == ASYNQ_OK)
				ss[i].n_m++;
	}
	if (ss != NULL)
		metrics_servers(&b, ss, n);
	metrics_channels(&b, &a->channels);
	metrics_workers(&b, a);
	pthread_mutex_unlock(&a->mu);
	metrics_process(&b);
	for (size_t i = 0; ss != NULL && i < n; i++)
		free(ss[i].m);
	free(ss);
	reply_sb(aio, NNG_HTTP_STATUS_OK,
	    "text/plain; version=0.0.4; charset=utf-8", &b);
}

/* ---- Open and close ------------------------------------------------------ */

static asynq_status open_fail(char *err, size_t err_len, asynq_status st,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static asynq_status
open_fail(char *err, size_t err_len, asynq_status st, const char *fmt, ...)
{
	if (err != NULL && err_len > 0) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, err_len, fmt, ap);
		va_end(ap);
	}
	return st;
}

static const struct {
	const char *path;
	void (*fn)(nng_aio *);
} endpoints[] = {
	{ "/", handle_root },
	{ "/live", handle_live },
	{ "/ready", handle_ready },
	{ "/metrics", handle_metrics },
};

asynq_status
asynq_admin_open(asynq_admin **ap, const char *url, char *err, size_t err_len)
{
	nng_url *u = NULL;
	asynq_status st;
	int rv;

	if (err != NULL && err_len > 0)
		err[0] = '\0';
	if (url == NULL || url[0] == '\0')
		return open_fail(err, err_len, ASYNQ_INVALID_ARGUMENT,
		    "admin: no URL (expected http://HOST:PORT)");
	if ((rv = nng_url_parse(&u, url)) != 0)
		return open_fail(err, err_len, ASYNQ_INVALID_ARGUMENT,
		    "admin %s: not a URL (expected http://HOST:PORT)", url);
	if (strcmp(u->u_scheme, "http") != 0) {
		st = open_fail(err, err_len, ASYNQ_INVALID_ARGUMENT,
		    "admin %s: scheme %s:// is not served; use http://HOST:PORT",
		    url, u->u_scheme);
		goto fail_url;
	}
	if ((u->u_path[0] != '\0' && strcmp(u->u_path, "/") != 0) ||
	    u->u_query != NULL || u->u_fragment != NULL) {
		st = open_fail(err, err_len, ASYNQ_INVALID_ARGUMENT,
		    "admin %s: the URL must have no path or query (the "
		    "endpoints are /live, /ready and /metrics under it)",
		    url);
		goto fail_url;
	}
	asynq_admin *a = calloc(1, sizeof(*a));
	if (a == NULL) {
		st = open_fail(err, err_len, ASYNQ_RESOURCE_EXHAUSTED,
		    "admin %s: out of memory", url);
		goto fail_url;
	}
	if (pthread_mutex_init(&a->mu, NULL) != 0) {
		st = open_fail(err, err_len, ASYNQ_RESOURCE_EXHAUSTED,
		    "admin %s: out of memory", url);
		goto fail_mu;
	}
	if ((rv = nng_http_server_hold(&a->http, u)) != 0) {
		st = open_fail(err, err_len, ASYNQ_INVALID_ARGUMENT,
		    "admin %s: cannot serve this address: %s", url,
		    nng_strerror(rv));
		goto fail_hold;
	}
	for (size_t i = 0; i < sizeof(endpoints) / sizeof(*endpoints); i++) {
		nng_http_handler *h;
		if ((rv = nng_http_handler_alloc(&h, endpoints[i].path,
		         endpoints[i].fn)) != 0) {
			st = open_fail(err, err_len, ASYNQ_RESOURCE_EXHAUSTED,
			    "admin %s: %s", url, nng_strerror(rv));
			goto fail_handlers;
		}
		if ((rv = nng_http_handler_set_data(h, a, NULL)) != 0 ||
		    (rv = nng_http_server_add_handler(a->http, h)) != 0) {
			nng_http_handler_free(h);
			if (rv == NNG_EADDRINUSE)
				st = open_fail(err, err_len, ASYNQ_UNAVAILABLE,
				    "admin %s: address in use (by another "
				    "admin endpoint of this process)",
				    url);
			else
				st = open_fail(err, err_len,
				    ASYNQ_RESOURCE_EXHAUSTED, "admin %s: %s",
				    url, nng_strerror(rv));
			goto fail_handlers;
		}
	}
	if ((rv = nng_http_server_start(a->http)) != 0) {
		if (rv == NNG_EADDRINUSE)
			st = open_fail(err, err_len, ASYNQ_UNAVAILABLE,
			    "admin %s: address in use", url);
		else
			st = open_fail(err, err_len, ASYNQ_UNAVAILABLE,
			    "admin %s: cannot listen: %s", url,
			    nng_strerror(rv));
		goto fail_handlers;
	}
	nng_sockaddr sa;
	int port = 0;
	if (nng_http_server_get_addr(a->http, &sa) == 0)
		port = sa.s_family == NNG_AF_INET6 ? ntohs(sa.s_in6.sa_port)
		                                   : ntohs(sa.s_in.sa_port);
	const char *host = u->u_hostname[0] != '\0' ? u->u_hostname : "0.0.0.0";
	snprintf(a->url, sizeof(a->url),
	    strchr(host, ':') != NULL ? "http://[%s]:%d" : "http://%s:%d", host,
	    port);
	nng_url_free(u);
	*ap = a;
	return ASYNQ_OK;

fail_handlers:
	/* Releasing the server frees the handlers added to it. */
	nng_http_server_release(a->http);
fail_hold:
	pthread_mutex_destroy(&a->mu);
fail_mu:
	free(a);
fail_url:
	nng_url_free(u);
	return st;
}

void
asynq_admin_close(asynq_admin *a)
{
	if (a == NULL)
		return;
	nng_http_server_stop(a->http);
	nng_http_server_release(a->http);
	reg_fini(&a->servers);
	reg_fini(&a->channels);
	reg_fini(&a->runtimes);
	pthread_mutex_destroy(&a->mu);
	free(a);
}
