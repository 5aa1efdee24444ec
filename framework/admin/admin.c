/* SPDX-License-Identifier: MIT */
/*
 * The admin endpoint (asynq/admin.h): /live, /ready, /metrics, /status
 * (with /status.json) and /trace over nng's HTTP server, reporting on the
 * servers, channels and runtimes a process registers.
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
 * - /status.json keeps, per server, a ring of counter samples (hist,
 *   under `mu`): one when the server is added and one more whenever it is
 *   read at least HIST_SPACING_NS after the last, so an idle endpoint
 *   does no work and an open page (polling each second) gets a point a
 *   second. Rates and percentiles are differences between now and the
 *   sample that starts the window (STATUS_WINDOW_NS); the chart is the
 *   differences between neighbouring samples.
 * - /trace runs on a thread of its own, one trace at a time (trace_busy,
 *   under `tmu`): its handler returns at once and leaves the request
 *   pending (nng_aio_defer with trace_cancel), so no nng thread is held
 *   for the N seconds. The thread posts a profiler start to every worker
 *   (holding the runtime, so it cannot stop before the stop post ran;
 *   status.json says a trace runs only from then, trace_begun, so a
 *   runtime removed after it said so is one the trace holds),
 *   waits on `tcv` until the time is up or the trace is cut (close, a
 *   runtime removed, the request cancelled), posts the stops, waits for
 *   them at most TRACE_STOP_WAIT_MS (a late one writes into the
 *   refcounted trace_job, as scrapes do) and answers. Whichever of the
 *   thread and trace_cancel takes trace_aio first answers it; the other
 *   finds NULL. Once closing, the thread leaves it to trace_cancel (nng's
 *   server stop cancels it), so a close always cuts the connection.
 *   close sets `closing` before stopping nng's server, so no trace starts
 *   after it, and joins the thread. Lock order: mu, then tmu
 *   (status.json reads trace_busy); the trace thread takes them one at a
 *   time.
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
#include "asynq/profiler.h"

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

typedef struct hist hist;

typedef struct entry {
	void *obj;
	char *name;
	hist *h; /* servers: their /status history; else NULL */
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
	uint64_t opened_ns;

	/* /trace, one at a time (see the design notes). All under tmu. */
	pthread_mutex_t tmu;
	pthread_cond_t tcv;  /* CLOCK_MONOTONIC; trace_cut, closing */
	bool closing;        /* asynq_admin_close began */
	bool trace_busy;     /* a trace thread runs */
	bool trace_begun;    /* it has posted its starts (status.json's
	                        trace_running: the runtimes it traces are
	                        those registered by then) */
	bool trace_cut;      /* end the running trace now */
	bool trace_joinable; /* trace_thread was made and not joined */
	pthread_t trace_thread;
	nng_aio *trace_aio; /* the request it answers; NULL once answered */
	unsigned trace_seconds;
	uint64_t trace_until; /* asynq_now_ns() it ends at */
};

static hist *hist_alloc(void);
static void hist_free(hist *h);
static void hist_start(hist *h, asynq_rpc_server *s);

/* Adds obj as name; h (may be NULL) is the server's history, owned by the
 * entry from then on (freed here on failure). */
static asynq_status
reg_add(asynq_admin *a, registry *r, void *obj, const char *name, hist *h)
{
	asynq_status st = ASYNQ_OK;
	char *copy = strdup(name != NULL ? name : "");
	if (obj == NULL) {
		free(copy);
		hist_free(h);
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
		r->e[r->n++] = (entry){ obj, copy, h };
		copy = NULL;
		/* The rates /status shows are counted from here. */
		if (h != NULL)
			hist_start(h, obj);
		h = NULL;
	}
	pthread_mutex_unlock(&a->mu);
	free(copy);
	hist_free(h);
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
		hist_free(r->e[i].h);
		memmove(&r->e[i], &r->e[i + 1], (r->n - i - 1) * sizeof(*r->e));
		r->n--;
		break;
	}
	pthread_mutex_unlock(&a->mu);
}

static void
reg_fini(registry *r)
{
	for (size_t i = 0; i < r->n; i++) {
		free(r->e[i].name);
		hist_free(r->e[i].h);
	}
	free(r->e);
}

asynq_status
asynq_admin_add_server(asynq_admin *a, asynq_rpc_server *s, const char *name)
{
	hist *h = hist_alloc();
	if (h == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	return reg_add(a, &a->servers, s, name, h);
}

void
asynq_admin_remove_server(asynq_admin *a, const asynq_rpc_server *s)
{
	reg_remove(a, &a->servers, s);
}

asynq_status
asynq_admin_add_channel(asynq_admin *a, asynq_rpc_channel *ch, const char *name)
{
	return reg_add(a, &a->channels, ch, name, NULL);
}

void
asynq_admin_remove_channel(asynq_admin *a, const asynq_rpc_channel *ch)
{
	reg_remove(a, &a->channels, ch);
}

asynq_status
asynq_admin_add_runtime(asynq_admin *a, asynq_runtime *rt, const char *name)
{
	return reg_add(a, &a->runtimes, rt, name, NULL);
}

void
asynq_admin_remove_runtime(asynq_admin *a, const asynq_runtime *rt)
{
	reg_remove(a, &a->runtimes, rt);
	/* A trace holds the runtimes it traces, so stopping rt would wait
	 * for the trace: end it now. */
	pthread_mutex_lock(&a->tmu);
	if (a->trace_busy) {
		a->trace_cut = true;
		pthread_cond_broadcast(&a->tcv);
	}
	pthread_mutex_unlock(&a->tmu);
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
	    "/metrics  Prometheus text format\n"
	    "/status   a page for people: per method calls/s, p50/p99, calls "
	    "per request, errors, and a chart of calls against requests\n"
	    "/status.json  what /status shows, as JSON\n"
	    "/trace?seconds=N  every worker's profile for N s (1..30), one "
	    "Chrome trace JSON (open it in https://ui.perfetto.dev)\n";
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
	{ "asynq_rpc_server_shed_limit_requests_total", "counter",
	    "Shed requests refused at once at the limit on calls in flight.",
	    SRV(shed_limit) },
	{ "asynq_rpc_server_call_limit", "gauge",
	    "Admission control's limit on calls in flight now; 0: none.",
	    SRV(call_limit) },
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
	{ "asynq_rpc_client_throttled_calls_total", "counter",
	    "Calls the channel's adaptive throttle refused at once.",
	    CH(throttled) },
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

	family(b, "asynq_rpc_server_queue_seconds", "histogram",
	    "Seconds a request waited from its read to its start on a worker "
	    "(what admission control watches).");
	for (size_t i = 0; i < n; i++) {
		sbuf l = { 0 };
		sb_printf(&l, "server=\"");
		sb_label(&l, ss[i].name);
		sb_printf(&l, "\"");
		if (!l.failed)
			histogram(b, "asynq_rpc_server_queue_seconds", l.p,
			    &ss[i].st.queue_ns, true);
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

/* The client side per method: calls sent by status, their latency and
 * calls per request, for every method a channel has sent. */
static void
metrics_channel_methods(sbuf *b, const registry *chs)
{
	static const char *const names[3][2] = {
		{ "asynq_rpc_client_handled_calls_total",
		    "Calls sent, by the status they ended with." },
		{ "asynq_rpc_client_handling_seconds",
		    "Seconds from a call's batch starting to its result "
		    "(queueing in the batch, the round trip, the decode)." },
		{ "asynq_rpc_client_method_calls_per_request",
		    "Calls of the method per request sent that had any." },
	};
	for (size_t h = 0; h < 3; h++) {
		family(b, names[h][0], h == 0 ? "counter" : "histogram",
		    names[h][1]);
		for (size_t i = 0; i < chs->n; i++) {
			const asynq_rpc_service_desc *svc =
			    asynq_rpc_channel_service(chs->e[i].obj);
			for (size_t k = 0; k < svc->n_methods; k++) {
				asynq_rpc_method_stats ms;
				if (asynq_rpc_channel_method_stats(
				        chs->e[i].obj, k, &ms) != ASYNQ_OK ||
				    ms.latency_ns.count == 0)
					continue;
				sbuf l = { 0 };
				sb_printf(&l, "channel=\"");
				sb_label(&l, chs->e[i].name);
				sb_printf(&l, "\",service=\"");
				sb_label(&l, svc->full_name);
				sb_printf(&l, "\",method=\"");
				sb_label(&l, ms.method->name);
				sb_printf(&l, "\"");
				if (l.failed) {
					b->failed = true;
					free(l.p);
					continue;
				}
				if (h == 0) {
					for (size_t c = 0;
					     c < ASYNQ_STATUS_COUNT; c++)
						if (c == ASYNQ_OK ||
						    ms.codes[c] != 0)
							sb_printf(b,
							    "%s{%s,code=\"%s\"} "
							    "%" PRIu64 "\n",
							    names[h][0], l.p,
							    code_names[c],
							    ms.codes[c]);
				} else {
					histogram(b, names[h][0], l.p,
					    h == 1 ? &ms.latency_ns
					           : &ms.calls_per_request,
					    h == 1);
				}
				free(l.p);
			}
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
	metrics_channel_methods(b, chs);
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

/* Reads every registered server's state and counters; NULL (and *n 0)
 * without memory. Under a->mu. Free with servers_free. */
static srv_snap *
servers_read(asynq_admin *a, size_t *np)
{
	size_t n = a->servers.n;
	srv_snap *ss = calloc(n != 0 ? n : 1, sizeof(*ss));
	*np = 0;
	if (ss == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		asynq_rpc_server *s = a->servers.e[i].obj;
		ss[i].name = a->servers.e[i].name;
		ss[i].state = asynq_rpc_server_serving(s);
		asynq_rpc_server_stats_get(s, &ss[i].st);
		size_t nm = asynq_rpc_server_methods(s);
		ss[i].m = calloc(nm != 0 ? nm : 1, sizeof(*ss[i].m));
		if (ss[i].m == NULL) {
			for (size_t k = 0; k < i; k++)
				free(ss[k].m);
			free(ss);
			return NULL;
		}
		for (size_t k = 0; k < nm; k++)
			if (asynq_rpc_server_method_stats_get(s, k,
			        &ss[i].m[ss[i].n_m]) == ASYNQ_OK)
				ss[i].n_m++;
	}
	*np = n;
	return ss;
}

static void
servers_free(srv_snap *ss, size_t n)
{
	for (size_t i = 0; ss != NULL && i < n; i++)
		free(ss[i].m);
	free(ss);
}

static void
handle_metrics(nng_aio *aio)
{
	asynq_admin *a = admin_of(aio);
	sbuf b = { 0 };
	size_t n;
	pthread_mutex_lock(&a->mu);
	srv_snap *ss = servers_read(a, &n);
	if (ss == NULL)
		b.failed = true;
	else
		metrics_servers(&b, ss, n);
	metrics_channels(&b, &a->channels);
	metrics_workers(&b, a);
	pthread_mutex_unlock(&a->mu);
	metrics_process(&b);
	servers_free(ss, n);
	reply_sb(aio, NNG_HTTP_STATUS_OK,
	    "text/plain; version=0.0.4; charset=utf-8", &b);
}

/* ---- /status and /status.json -------------------------------------------- */

/* Samples a server's history keeps, and how far apart they are at least:
 * two minutes of one a second while the page is open. */
#define HIST_SAMPLES 120
#define HIST_SPACING_NS 900000000ull
/* The window the table's rates and percentiles are over. */
#define STATUS_WINDOW_NS 10000000000ull

/* One method's counters at a sample. */
typedef struct msample {
	uint64_t calls, errors;
	uint64_t lat[ASYNQ_RPC_HIST_MAX + 1]; /* latency buckets */
	uint64_t cpr_count, cpr_sum;          /* calls per request */
} msample;

/* A server's counters at a sample. */
typedef struct ssample {
	uint64_t t_ns;
	uint64_t requests, calls;
} ssample;

/* A ring of samples of one server; sample i's methods are
 * m[i * n_m .. (i + 1) * n_m). Under a->mu. */
struct hist {
	size_t head, len; /* the oldest sample, and how many there are */
	size_t n_m;       /* methods per sample */
	ssample s[HIST_SAMPLES];
	msample *m;
};

static hist *
hist_alloc(void)
{
	return calloc(1, sizeof(hist));
}

static void
hist_free(hist *h)
{
	if (h == NULL)
		return;
	free(h->m);
	free(h);
}

static void
msample_of(msample *out, const asynq_rpc_method_stats *ms)
{
	memset(out, 0, sizeof(*out));
	for (size_t c = 0; c < ASYNQ_STATUS_COUNT; c++)
		out->calls += ms->codes[c];
	out->errors = out->calls - ms->codes[ASYNQ_OK];
	memcpy(out->lat, ms->latency_ns.counts, sizeof(out->lat));
	out->cpr_count = ms->calls_per_request.count;
	out->cpr_sum = ms->calls_per_request.sum;
}

/* The i-th sample from the oldest. */
static size_t
hist_at(const hist *h, size_t i)
{
	return (h->head + i) % HIST_SAMPLES;
}

/* Appends a sample of snap taken at now, dropping the oldest when full.
 * A server whose method count changed starts its history again. Without
 * memory the sample is left out. */
static void
hist_push(hist *h, const srv_snap *snap, uint64_t now)
{
	if (h->m == NULL || h->n_m != snap->n_m) {
		msample *m =
		    calloc(HIST_SAMPLES * (snap->n_m != 0 ? snap->n_m : 1),
		        sizeof(*m));
		if (m == NULL)
			return;
		free(h->m);
		h->m = m;
		h->n_m = snap->n_m;
		h->head = h->len = 0;
	}
	size_t slot;
	if (h->len < HIST_SAMPLES) {
		slot = hist_at(h, h->len++);
	} else {
		slot = h->head;
		h->head = (h->head + 1) % HIST_SAMPLES;
	}
	h->s[slot] = (ssample){ now, snap->st.requests, snap->st.calls };
	for (size_t k = 0; k < snap->n_m; k++)
		msample_of(&h->m[slot * h->n_m + k], &snap->m[k]);
}

/* The first sample, when the server is added. Under a->mu. */
static void
hist_start(hist *h, asynq_rpc_server *s)
{
	srv_snap snap = { .name = "" };
	asynq_rpc_server_stats_get(s, &snap.st);
	size_t nm = asynq_rpc_server_methods(s);
	snap.m = calloc(nm != 0 ? nm : 1, sizeof(*snap.m));
	if (snap.m == NULL)
		return;
	for (size_t k = 0; k < nm; k++)
		if (asynq_rpc_server_method_stats_get(s, k,
		        &snap.m[snap.n_m]) == ASYNQ_OK)
			snap.n_m++;
	hist_push(h, &snap, asynq_now_ns());
	free(snap.m);
}

/* Appends s as a JSON string (quotes included). */
static void
sb_json_str(sbuf *b, const char *s)
{
	sb_printf(b, "\"");
	for (const unsigned char *c = (const unsigned char *)s; *c; c++) {
		if (*c == '"' || *c == '\\')
			sb_printf(b, "\\%c", *c);
		else if (*c < 0x20)
			sb_printf(b, "\\u%04x", *c);
		else
			sb_printf(b, "%c", *c);
	}
	sb_printf(b, "\"");
}

/* Appends v, or null when it is not a number (nothing to divide by). */
static void
sb_num(sbuf *b, double v, bool valid)
{
	if (valid)
		sb_printf(b, "%.6g", v);
	else
		sb_printf(b, "null");
}

/* The q-quantile (0..1) of the observations in buckets lat (the bounds of
 * h), interpolated linearly within its bucket as Prometheus'
 * histogram_quantile does; a quantile in the last, unbounded bucket is
 * its lower bound. Nanoseconds; false without observations. */
static bool
quantile(const uint64_t *lat, const asynq_rpc_hist *h, double q, double *out)
{
	uint64_t total = 0;
	for (size_t i = 0; i <= h->n_bounds; i++)
		total += lat[i];
	if (total == 0 || h->n_bounds == 0)
		return false;
	double rank = q * (double)total, below = 0;
	for (size_t i = 0; i <= h->n_bounds; i++) {
		if (lat[i] == 0 || below + (double)lat[i] < rank) {
			below += (double)lat[i];
			continue;
		}
		double lo = i == 0 ? 0 : (double)h->bounds[i - 1];
		if (i == h->n_bounds) {
			*out = lo;
			return true;
		}
		double hi = (double)h->bounds[i];
		*out = lo + (hi - lo) * (rank - below) / (double)lat[i];
		return true;
	}
	*out = (double)h->bounds[h->n_bounds - 1];
	return true;
}

/* Writes server snap (now at `now`) with its history h as one object of
 * /status.json's "servers". */
static void
status_server(sbuf *b, const srv_snap *snap, const hist *h, uint64_t now)
{
	/* The window starts at the newest sample at least STATUS_WINDOW_NS
	 * old, else at the oldest. */
	const ssample *w = NULL;
	const msample *wm = NULL;
	for (size_t i = 0; i < h->len; i++) {
		size_t at = hist_at(h, i);
		if (w == NULL || now - h->s[at].t_ns >= STATUS_WINDOW_NS) {
			w = &h->s[at];
			wm = h->n_m == snap->n_m ? &h->m[at * h->n_m] : NULL;
		}
	}
	double secs = w != NULL ? (double)(now - w->t_ns) / 1e9 : 0;
	bool have = w != NULL && secs > 0;

	sb_printf(b, "{\"name\":");
	sb_json_str(b, snap->name);
	sb_printf(b, ",\"state\":\"%s\",\"ready\":%s",
	    snap->state == ASYNQ_RPC_STARTING          ? "starting"
	        : snap->state == ASYNQ_RPC_SERVING     ? "serving"
	        : snap->state == ASYNQ_RPC_NOT_SERVING ? "not serving"
	        : snap->state == ASYNQ_RPC_DRAINING    ? "draining"
	                                               : "closed",
	    snap->state == ASYNQ_RPC_SERVING ? "true" : "false");
	uint64_t errors = 0;
	for (size_t k = 0; k < snap->n_m; k++) {
		msample cur;
		msample_of(&cur, &snap->m[k]);
		errors += cur.errors;
	}
	sb_printf(b,
	    ",\"requests\":%" PRIu64 ",\"calls\":%" PRIu64
	    ",\"errors\":%" PRIu64 ",\"inflight_calls\":%" PRIu64
	    ",\"connections\":%" PRIu64,
	    snap->st.requests, snap->st.calls, errors, snap->st.inflight_calls,
	    snap->st.conns_open);
	const asynq_rpc_hist *cpr = &snap->st.calls_per_request;
	sb_printf(b, ",\"calls_per_request_all\":");
	sb_num(b, cpr->count != 0 ? (double)cpr->sum / (double)cpr->count : 0,
	    cpr->count != 0);

	uint64_t dcalls = have ? snap->st.calls - w->calls : 0;
	uint64_t dreqs = have ? snap->st.requests - w->requests : 0;
	sb_printf(b, ",\"window\":{\"seconds\":");
	sb_num(b, secs, have);
	sb_printf(b, ",\"calls_per_s\":");
	sb_num(b, (double)dcalls / secs, have);
	sb_printf(b, ",\"requests_per_s\":");
	sb_num(b, (double)dreqs / secs, have);
	sb_printf(b, ",\"calls_per_request\":");
	sb_num(b, (double)dcalls / (double)dreqs, have && dreqs != 0);
	sb_printf(b, "}");

	/* The chart: each pair of neighbouring samples is one point, at
	 * the later one, seconds before now. */
	sbuf t = { 0 }, c = { 0 }, r = { 0 };
	for (size_t i = 1; i < h->len; i++) {
		const ssample *p = &h->s[hist_at(h, i - 1)];
		const ssample *q = &h->s[hist_at(h, i)];
		double dt = (double)(q->t_ns - p->t_ns) / 1e9;
		const char *sep = i > 1 ? "," : "";
		sb_printf(&t, "%s%.3f", sep, -(double)(now - q->t_ns) / 1e9);
		sb_printf(&c, "%s%.6g", sep,
		    (double)(q->calls - p->calls) / dt);
		sb_printf(&r, "%s%.6g", sep,
		    (double)(q->requests - p->requests) / dt);
	}
	sb_printf(b,
	    ",\"series\":{\"t\":[%s],\"calls_per_s\":[%s],"
	    "\"requests_per_s\":[%s]}",
	    t.p != NULL ? t.p : "", c.p != NULL ? c.p : "",
	    r.p != NULL ? r.p : "");
	b->failed = b->failed || t.failed || c.failed || r.failed;
	free(t.p);
	free(c.p);
	free(r.p);

	sb_printf(b, ",\"methods\":[");
	for (size_t k = 0; k < snap->n_m; k++) {
		const asynq_rpc_method_stats *ms = &snap->m[k];
		const char *full = ms->method->full_name;
		const char *slash = strchr(full, '/');
		msample cur;
		msample_of(&cur, ms);
		const msample *was = have && wm != NULL ? &wm[k] : NULL;
		msample d = { 0 };
		if (was != NULL) {
			d.calls = cur.calls - was->calls;
			d.cpr_count = cur.cpr_count - was->cpr_count;
			d.cpr_sum = cur.cpr_sum - was->cpr_sum;
			for (size_t i = 0; i <= ASYNQ_RPC_HIST_MAX; i++)
				d.lat[i] = cur.lat[i] - was->lat[i];
		}
		sb_printf(b, "%s{\"service\":", k > 0 ? "," : "");
		sbuf svc = { 0 };
		sb_printf(&svc, "%.*s",
		    (int)(slash != NULL ? (size_t)(slash - full)
		                        : strlen(full)),
		    full);
		sb_json_str(b, svc.p != NULL ? svc.p : "");
		b->failed = b->failed || svc.failed;
		free(svc.p);
		sb_printf(b, ",\"method\":");
		sb_json_str(b, ms->method->name);
		sb_printf(b, ",\"full_name\":");
		sb_json_str(b, full);
		sb_printf(b,
		    ",\"calls\":%" PRIu64 ",\"errors\":%" PRIu64
		    ",\"errors_by_code\":{",
		    cur.calls, cur.errors);
		bool first = true;
		for (size_t code = 0; code < ASYNQ_STATUS_COUNT; code++) {
			if (code == ASYNQ_OK || ms->codes[code] == 0)
				continue;
			sb_printf(b, "%s\"%s\":%" PRIu64, first ? "" : ",",
			    code_names[code], ms->codes[code]);
			first = false;
		}
		sb_printf(b, "},\"calls_per_s\":");
		sb_num(b, (double)d.calls / secs, was != NULL);
		double p50 = 0, p99 = 0;
		bool q50 =
		    was != NULL && quantile(d.lat, &ms->latency_ns, 0.50, &p50);
		bool q99 =
		    was != NULL && quantile(d.lat, &ms->latency_ns, 0.99, &p99);
		sb_printf(b, ",\"p50_ms\":");
		sb_num(b, p50 / 1e6, q50);
		sb_printf(b, ",\"p99_ms\":");
		sb_num(b, p99 / 1e6, q99);
		sb_printf(b, ",\"calls_per_request\":");
		sb_num(b, (double)d.cpr_sum / (double)d.cpr_count,
		    d.cpr_count != 0);
		sb_printf(b, "}");
	}
	sb_printf(b, "]}");
}

static void
handle_status_json(nng_aio *aio)
{
	asynq_admin *a = admin_of(aio);
	sbuf b = { 0 };
	size_t n;
	pthread_mutex_lock(&a->mu);
	uint64_t now = asynq_now_ns();
	srv_snap *ss = servers_read(a, &n);
	if (ss == NULL)
		b.failed = true;
	pthread_mutex_lock(&a->tmu);
	bool tracing = a->trace_busy && a->trace_begun;
	pthread_mutex_unlock(&a->tmu);
	sb_printf(&b,
	    "{\"uptime_s\":%.3f,\"window_s\":%.0f,\"trace_running\":%s,"
	    "\"servers\":[",
	    (double)(now - a->opened_ns) / 1e9, (double)STATUS_WINDOW_NS / 1e9,
	    tracing ? "true" : "false");
	for (size_t i = 0; ss != NULL && i < n; i++) {
		hist *h = a->servers.e[i].h;
		if (h->len == 0 ||
		    now - h->s[hist_at(h, h->len - 1)].t_ns >= HIST_SPACING_NS)
			hist_push(h, &ss[i], now);
		if (i > 0)
			sb_printf(&b, ",");
		status_server(&b, &ss[i], h, now);
	}
	sb_printf(&b, "],\"channels\":[");
	for (size_t i = 0; i < a->channels.n; i++) {
		asynq_rpc_channel_stats st;
		asynq_rpc_channel_stats_get(a->channels.e[i].obj, &st);
		sb_printf(&b, "%s{\"name\":", i > 0 ? "," : "");
		sb_json_str(&b, a->channels.e[i].name);
		sb_printf(&b,
		    ",\"calls\":%" PRIu64 ",\"requests\":%" PRIu64
		    ",\"sent_calls\":%" PRIu64 ",\"collapsed\":%" PRIu64
		    ",\"cached\":%" PRIu64 ",\"failed_calls\":%" PRIu64
		    ",\"calls_per_request\":",
		    st.calls, st.requests, st.sent_calls, st.collapsed,
		    st.cached, st.failures);
		sb_num(&b, (double)st.sent_calls / (double)st.requests,
		    st.requests != 0);
		sb_printf(&b, "}");
	}
	sb_printf(&b, "]}\n");
	pthread_mutex_unlock(&a->mu);
	servers_free(ss, n);
	reply_sb(aio, NNG_HTTP_STATUS_OK, "application/json", &b);
}

/* The page: framework/admin/status.html, made a C string at build time. */
#include "framework/admin/status_html.h"

static void
handle_status(nng_aio *aio)
{
	reply(aio, NNG_HTTP_STATUS_OK, "text/html; charset=utf-8",
	    asynqi_status_html, sizeof(asynqi_status_html) - 1);
}

/* ---- /trace -------------------------------------------------------------- */

/* The longest trace, and how long the end waits for the workers. */
#define TRACE_MAX_SECONDS 30
#define TRACE_STOP_WAIT_MS 2000
/* Records each worker's profile keeps, at most (a busy worker makes a few
 * hundred thousand a second; this keeps a trace in the tens of MB). */
#define TRACE_MAX_RECORDS 100000

typedef struct trace_job trace_job;

/* One worker in a trace. */
typedef struct trace_slot {
	asynq_post start, stop;
	trace_job *job;
	asynq_runtime *rt; /* held from the start post to the stop's end */
	char name[160];    /* "runtime worker i": its track in the trace */
	size_t worker;
	bool posted;          /* the start went out (the runtime was held) */
	asynq_status started; /* the profiler's start, on the worker */
	/* Under job->mu once done: */
	bool done;
	bool lost; /* its events could not be written (no memory) */
	asynq_profile_summary sum;
	char *events; /* malloc'd JSON elements, NULL if none */
	size_t len;
} trace_slot;

/* Counted like a scrape: the trace thread's reference and one per stop
 * post in flight. */
struct trace_job {
	pthread_mutex_t mu;
	pthread_cond_t cv; /* CLOCK_MONOTONIC */
	int refs;          /* under mu */
	uint64_t origin;   /* asynq_now_ns() the trace counts from */
	size_t n;
	trace_slot slot[];
};

static void
trace_job_rele(trace_job *j)
{
	pthread_mutex_lock(&j->mu);
	bool last = --j->refs == 0;
	pthread_mutex_unlock(&j->mu);
	if (!last)
		return;
	for (size_t i = 0; i < j->n; i++)
		free(j->slot[i].events);
	pthread_cond_destroy(&j->cv);
	pthread_mutex_destroy(&j->mu);
	free(j);
}

/* On the worker: its profiler starts, bounded. */
static void
trace_start_run(asynq_post *p)
{
	trace_slot *sl =
	    (trace_slot *)((char *)p - offsetof(trace_slot, start));
	asynq_profiler_cfg cfg = { .max_records = TRACE_MAX_RECORDS };
	sl->started = asynq_profiler_start_cfg(&cfg);
}

/* On the worker, after its start: the profiler stops and its events are
 * written out; then the runtime is let go. */
static void
trace_stop_run(asynq_post *p)
{
	trace_slot *sl = (trace_slot *)((char *)p - offsetof(trace_slot, stop));
	trace_job *j = sl->job;
	asynq_runtime *rt = sl->rt;
	asynq_profile_summary sum = { 0 };
	char *events = NULL;
	size_t len = 0;
	bool lost = false;
	if (sl->started == ASYNQ_OK) {
		asynq_profiler_stop();
		asynq_profiler_summary(&sum);
		FILE *f = open_memstream(&events, &len);
		bool first = true;
		if (f == NULL ||
		    asynq_profiler_write_chrome_events(f, j->origin, sl->name,
		        &first) != ASYNQ_OK)
			lost = true;
		if (f != NULL)
			fclose(f);
		if (lost) {
			free(events);
			events = NULL;
		}
		asynq_profiler_reset();
	}
	pthread_mutex_lock(&j->mu);
	sl->sum = sum;
	sl->lost = lost;
	sl->events = events;
	sl->len = len;
	sl->done = true;
	pthread_cond_broadcast(&j->cv);
	pthread_mutex_unlock(&j->mu);
	trace_job_rele(j);
	asynq_runtime_rele(rt);
}

/* Makes the job and posts the starts to every worker of the registered
 * runtimes; NULL without memory. Takes a->mu. */
static trace_job *
trace_begin(asynq_admin *a)
{
	pthread_mutex_lock(&a->mu);
	size_t n = 0;
	for (size_t r = 0; r < a->runtimes.n; r++)
		n += asynq_runtime_workers(a->runtimes.e[r].obj);
	trace_job *j = calloc(1, sizeof(*j) + n * sizeof(j->slot[0]));
	pthread_condattr_t ca;
	bool ok = j != NULL && pthread_condattr_init(&ca) == 0;
	if (ok) {
		ok = pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
		    pthread_cond_init(&j->cv, &ca) == 0;
		pthread_condattr_destroy(&ca);
		if (ok && pthread_mutex_init(&j->mu, NULL) != 0) {
			pthread_cond_destroy(&j->cv);
			ok = false;
		}
	}
	if (!ok) {
		pthread_mutex_unlock(&a->mu);
		free(j);
		return NULL;
	}
	j->refs = 1;
	j->n = n;
	j->origin = asynq_now_ns();
	size_t k = 0;
	for (size_t r = 0; r < a->runtimes.n; r++) {
		asynq_runtime *rt = a->runtimes.e[r].obj;
		for (size_t w = 0; w < asynq_runtime_workers(rt) && k < n;
		     w++, k++) {
			trace_slot *sl = &j->slot[k];
			sl->job = j;
			sl->rt = rt;
			sl->worker = w;
			snprintf(sl->name, sizeof(sl->name), "%s worker %zu",
			    a->runtimes.e[r].name, w);
			sl->started = ASYNQ_UNAVAILABLE;
			sl->start.fn = trace_start_run;
			sl->stop.fn = trace_stop_run;
			/* Held until the stop ran: the runtime cannot stop,
			 * and its worker exit with the profiler on, before
			 * that. A stopping runtime is left out. */
			if (asynq_runtime_hold(rt) != ASYNQ_OK)
				continue;
			sl->posted = true;
			asynq_sched_post(asynq_runtime_sched(rt, w),
			    &sl->start);
		}
	}
	pthread_mutex_unlock(&a->mu);
	return j;
}

/* Posts the stops and waits for them at most TRACE_STOP_WAIT_MS. */
static void
trace_end(trace_job *j)
{
	size_t posted = 0;
	for (size_t i = 0; i < j->n; i++) {
		trace_slot *sl = &j->slot[i];
		if (!sl->posted)
			continue;
		pthread_mutex_lock(&j->mu);
		j->refs++;
		pthread_mutex_unlock(&j->mu);
		asynq_sched_post(asynq_runtime_sched(sl->rt, sl->worker),
		    &sl->stop);
		posted++;
	}
	struct timespec until;
	clock_gettime(CLOCK_MONOTONIC, &until);
	until.tv_sec += TRACE_STOP_WAIT_MS / 1000;
	until.tv_nsec += (TRACE_STOP_WAIT_MS % 1000) * 1000000L;
	until.tv_sec += until.tv_nsec / 1000000000L;
	until.tv_nsec %= 1000000000L;
	pthread_mutex_lock(&j->mu);
	for (;;) {
		size_t done = 0;
		for (size_t i = 0; i < j->n; i++)
			done += j->slot[i].done;
		if (done == posted ||
		    pthread_cond_timedwait(&j->cv, &j->mu, &until) != 0)
			break;
	}
	pthread_mutex_unlock(&j->mu);
}

/* Writes the merged trace: every worker's events, each worker a thread
 * (track) of one process, and what became of each worker in otherData.
 * Under j->mu. */
static void
trace_write(sbuf *b, const trace_job *j, unsigned seconds, bool cut)
{
	sb_printf(b,
	    "{\"traceEvents\":[\n{\"name\":\"process_name\",\"ph\":\"M\","
	    "\"pid\":%ld,\"tid\":0,\"args\":{\"name\":\"asynq\"}}",
	    (long)getpid());
	for (size_t i = 0; i < j->n; i++) {
		const trace_slot *sl = &j->slot[i];
		if (sl->done && sl->events != NULL && sl->len > 0)
			sb_printf(b, ",%.*s", (int)sl->len, sl->events);
	}
	sb_printf(b,
	    "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{\"seconds\":%u,"
	    "\"cut_short\":%s,\"workers\":[",
	    seconds, cut ? "true" : "false");
	for (size_t i = 0; i < j->n; i++) {
		const trace_slot *sl = &j->slot[i];
		const char *why = NULL;
		if (!sl->posted)
			why = "its runtime was stopping";
		else if (!sl->done)
			why = "busy: it did not answer within 2 s of the end "
			      "(a long task?)";
		else if (sl->started == ASYNQ_FAILED_PRECONDITION)
			why = "its profiler was already running (someone else "
			      "profiles it)";
		else if (sl->started != ASYNQ_OK)
			why = "its profiler could not start";
		else if (sl->lost)
			why = "out of memory writing its events";
		sb_printf(b, "%s{\"thread\":", i > 0 ? "," : "");
		sb_json_str(b, sl->name);
		sb_printf(b, ",\"traced\":%s", why == NULL ? "true" : "false");
		if (why != NULL) {
			sb_printf(b, ",\"why\":");
			sb_json_str(b, why);
		} else {
			sb_printf(b,
			    ",\"tasks\":%zu,\"runs\":%zu,\"flushes\":%zu,"
			    "\"items_flushed\":%zu,\"dropped\":%zu",
			    sl->sum.tasks, sl->sum.runs, sl->sum.flushes,
			    sl->sum.items_flushed, sl->sum.dropped);
		}
		sb_printf(b, "}");
	}
	sb_printf(b, "]}}\n");
}

static void *
trace_main(void *arg)
{
	asynq_admin *a = arg;
	sbuf b = { 0 };
	pthread_mutex_lock(&a->tmu);
	unsigned seconds = a->trace_seconds;
	pthread_mutex_unlock(&a->tmu);

	trace_job *j = trace_begin(a);
	pthread_mutex_lock(&a->tmu);
	a->trace_begun = j != NULL;
	pthread_mutex_unlock(&a->tmu);
	bool cut = false;
	if (j != NULL) {
		uint64_t until = j->origin + (uint64_t)seconds * 1000000000u;
		struct timespec ts = { .tv_sec = (time_t)(until / 1000000000u),
			.tv_nsec = (long)(until % 1000000000u) };
		/* asynq_now_ns is CLOCK_MONOTONIC, as the condition's. */
		pthread_mutex_lock(&a->tmu);
		while (!a->closing && !a->trace_cut && a->trace_aio != NULL &&
		    asynq_now_ns() < until)
			if (pthread_cond_timedwait(&a->tcv, &a->tmu, &ts) != 0)
				break;
		cut = asynq_now_ns() < until;
		pthread_mutex_unlock(&a->tmu);
		trace_end(j);
		pthread_mutex_lock(&j->mu);
		trace_write(&b, j, seconds, cut);
		pthread_mutex_unlock(&j->mu);
		trace_job_rele(j);
	} else {
		b.failed = true;
	}

	/* Closing, the request is left to trace_cancel, which nng's server
	 * stop is about to call: the connection goes without an answer. */
	/* Not busy before the answer goes out, so whoever reads it can
	 * start the next trace at once (its handler joins this thread). */
	pthread_mutex_lock(&a->tmu);
	nng_aio *aio = a->closing ? NULL : a->trace_aio;
	if (aio != NULL)
		a->trace_aio = NULL;
	a->trace_busy = false;
	a->trace_begun = false;
	pthread_mutex_unlock(&a->tmu);
	if (aio != NULL)
		reply_sb(aio, NNG_HTTP_STATUS_OK, "application/json", &b);
	else
		free(b.p);
	return NULL;
}

/* nng cancels a trace's request when the server stops: it is answered
 * with the error at once, and the trace ends early. */
static void
trace_cancel(nng_aio *aio, void *arg, int rv)
{
	asynq_admin *a = arg;
	pthread_mutex_lock(&a->tmu);
	bool ours = a->trace_aio == aio;
	if (ours) {
		a->trace_aio = NULL;
		a->trace_cut = true;
		pthread_cond_broadcast(&a->tcv);
	}
	pthread_mutex_unlock(&a->tmu);
	if (ours)
		nng_aio_finish(aio, rv);
}

/* The value of ?seconds=N in uri: 1..TRACE_MAX_SECONDS, else 0 and why
 * in err. */
static unsigned
trace_seconds_of(const char *uri, char *err, size_t err_len)
{
	const char *q = strchr(uri, '?');
	const char *v = NULL;
	for (const char *p = q; p != NULL; p = strchr(p + 1, '&'))
		if (strncmp(p + 1, "seconds=", 8) == 0)
			v = p + 9;
	if (v == NULL) {
		snprintf(err, err_len,
		    "trace: say how long to trace with ?seconds=N, N from 1 "
		    "to %d (e.g. /trace?seconds=5)\n",
		    TRACE_MAX_SECONDS);
		return 0;
	}
	size_t len = strcspn(v, "&");
	unsigned long n = 0;
	bool digits = len > 0 && len <= 2;
	for (size_t i = 0; digits && i < len; i++) {
		digits = v[i] >= '0' && v[i] <= '9';
		n = n * 10 + (unsigned long)(v[i] - '0');
	}
	if (!digits || n < 1 || n > TRACE_MAX_SECONDS) {
		snprintf(err, err_len,
		    "trace: seconds must be a whole number from 1 to %d, not "
		    "\"%.*s\"\n",
		    TRACE_MAX_SECONDS, (int)(len < 32 ? len : 32), v);
		return 0;
	}
	return (unsigned)n;
}

static void
handle_trace(nng_aio *aio)
{
	asynq_admin *a = admin_of(aio);
	nng_http_req *req = nng_aio_get_input(aio, 0);
	char err[256];
	unsigned seconds =
	    trace_seconds_of(nng_http_req_get_uri(req), err, sizeof(err));
	if (seconds == 0) {
		reply(aio, NNG_HTTP_STATUS_BAD_REQUEST, TEXT, err, strlen(err));
		return;
	}
	pthread_mutex_lock(&a->tmu);
	if (a->closing || a->trace_busy) {
		uint64_t left = 0, now = asynq_now_ns();
		bool closing = a->closing;
		if (a->trace_busy && a->trace_until > now)
			left =
			    (a->trace_until - now + 999999999u) / 1000000000u;
		pthread_mutex_unlock(&a->tmu);
		if (closing)
			snprintf(err, sizeof(err),
			    "trace: the admin endpoint is closing\n");
		else
			snprintf(err, sizeof(err),
			    "trace: another trace is running (about %" PRIu64
			    " s left); one at a time, as each worker has one "
			    "profiler\n",
			    left);
		reply(aio,
		    closing ? NNG_HTTP_STATUS_SERVICE_UNAVAILABLE
		            : NNG_HTTP_STATUS_CONFLICT,
		    TEXT, err, strlen(err));
		return;
	}
	/* The last trace's thread set trace_busy false; at most its answer
	 * is left to do. */
	if (a->trace_joinable)
		pthread_join(a->trace_thread, NULL);
	a->trace_joinable = false;
	a->trace_busy = true;
	a->trace_cut = false;
	a->trace_seconds = seconds;
	a->trace_until = asynq_now_ns() + (uint64_t)seconds * 1000000000u;
	a->trace_aio = aio;
	if (pthread_create(&a->trace_thread, NULL, trace_main, a) != 0) {
		a->trace_busy = false;
		a->trace_aio = NULL;
		pthread_mutex_unlock(&a->tmu);
		static const char msg[] =
		    "trace: cannot start the thread that runs it\n";
		reply(aio, NNG_HTTP_STATUS_INTERNAL_SERVER_ERROR, TEXT, msg,
		    sizeof(msg) - 1);
		return;
	}
	a->trace_joinable = true;
	/* Answered by the trace's thread, or by trace_cancel when the
	 * server stops first. */
	nng_aio_defer(aio, trace_cancel, a);
	pthread_mutex_unlock(&a->tmu);
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
	{ "/status", handle_status },
	{ "/status.json", handle_status_json },
	{ "/trace", handle_trace },
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
		    "endpoints are /live, /ready, /metrics, /status and /trace "
		    "under it)",
		    url);
		goto fail_url;
	}
	asynq_admin *a = calloc(1, sizeof(*a));
	if (a == NULL) {
		st = open_fail(err, err_len, ASYNQ_RESOURCE_EXHAUSTED,
		    "admin %s: out of memory", url);
		goto fail_url;
	}
	a->opened_ns = asynq_now_ns();
	if (pthread_mutex_init(&a->mu, NULL) != 0) {
		st = open_fail(err, err_len, ASYNQ_RESOURCE_EXHAUSTED,
		    "admin %s: out of memory", url);
		goto fail_mu;
	}
	pthread_condattr_t ca;
	bool cv_ok = pthread_condattr_init(&ca) == 0;
	cv_ok = cv_ok && pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
	    pthread_cond_init(&a->tcv, &ca) == 0;
	pthread_condattr_destroy(&ca);
	if (!cv_ok) {
		st = open_fail(err, err_len, ASYNQ_RESOURCE_EXHAUSTED,
		    "admin %s: out of memory", url);
		goto fail_tcv;
	}
	if (pthread_mutex_init(&a->tmu, NULL) != 0) {
		st = open_fail(err, err_len, ASYNQ_RESOURCE_EXHAUSTED,
		    "admin %s: out of memory", url);
		goto fail_tmu;
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
	pthread_mutex_destroy(&a->tmu);
fail_tmu:
	pthread_cond_destroy(&a->tcv);
fail_tcv:
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
	/* A trace running ends now; its request is answered (cancelled)
	 * as nng's server stops. */
	pthread_mutex_lock(&a->tmu);
	a->closing = true;
	pthread_cond_broadcast(&a->tcv);
	pthread_mutex_unlock(&a->tmu);
	nng_http_server_stop(a->http);
	pthread_mutex_lock(&a->tmu);
	bool join = a->trace_joinable;
	pthread_mutex_unlock(&a->tmu);
	if (join)
		pthread_join(a->trace_thread, NULL);
	nng_http_server_release(a->http);
	reg_fini(&a->servers);
	reg_fini(&a->channels);
	reg_fini(&a->runtimes);
	pthread_mutex_destroy(&a->tmu);
	pthread_cond_destroy(&a->tcv);
	pthread_mutex_destroy(&a->mu);
	free(a);
}

/* ---- An endpoint for one server (asynq_rpc_server_cfg.admin_url) ------ */

/* The RPC server's hooks (framework/rpc/internal.h declares them). */
extern asynq_status (*asynqi_admin_for_server)(asynq_rpc_server *s,
    asynq_runtime *rt, const char *url, void **handle, char *err,
    size_t err_len);
extern void (*asynqi_admin_for_server_close)(void *handle);

static asynq_status
for_server(asynq_rpc_server *s, asynq_runtime *rt, const char *url,
    void **handle, char *err, size_t err_len)
{
	asynq_admin *a;
	asynq_status st = asynq_admin_open(&a, url, err, err_len);
	if (st != ASYNQ_OK)
		return st;
	/* Named after its last service (the framework's own come first). */
	const char *name = "server";
	const asynq_rpc_service_desc *svc;
	for (size_t i = 0; (svc = asynq_rpc_server_service(s, i)) != NULL; i++)
		name = svc->full_name;
	if ((st = asynq_admin_add_server(a, s, name)) != ASYNQ_OK ||
	    (rt != NULL &&
	        (st = asynq_admin_add_runtime(a, rt, name)) != ASYNQ_OK)) {
		asynq_admin_close(a);
		snprintf(err, err_len, "admin %s: out of memory", url);
		return st;
	}
	*handle = a;
	return ASYNQ_OK;
}

static void
for_server_close(void *handle)
{
	asynq_admin_close(handle);
}

/* Runs at load: the library is always linked into //framework:asynq
 * (alwayslink), and the RPC layer below it cannot name it. */
__attribute__((constructor)) static void
for_server_install(void)
{
	asynqi_admin_for_server = for_server;
	asynqi_admin_for_server_close = for_server_close;
}
