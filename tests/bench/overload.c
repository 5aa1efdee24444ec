/* SPDX-License-Identifier: MIT */
/*
 * Overload benchmark: `bazel run -c opt //tests/bench:overload [-- FLAGS]`.
 * How the RPC server's admission control holds up when offered five times
 * what it can serve, tried as a user would: the users, answers and frontend
 * programs (data deps, from the runfiles) as processes on tcp loopback, two
 * workers each, on small generated databases, and this program as the load
 * client (an asynq runtime of one worker) calling the frontend's AuthorNames
 * with IDS_PER_CALL answer ids per call (the frontend fans each call out to
 * answers, then users). Phases, in one run:
 *   1. peak: closed loop, K tasks calling back to back, K = 16, 64, 256;
 *      P = the best OK calls/s;
 *   2. unloaded: open loop at 10% of P; p50/p99 of OK calls;
 *   3. overload: open loop at 5x P, each call with a 2 s deadline: goodput,
 *      latencies, failures by status, the frontend's memory, servers' sheds;
 *   4. the same overload with admission control off (--queue-target-us off
 *      on all three services, restarted for it).
 * A report, not a test: a missed target prints OVER and still exits 0; a
 * wrong answer (a name that is not the database's) or a call that never
 * completes exits 1.
 *
 * Reading the figures: every latency is measured from the time the call was
 * due by the schedule, not when the client got round to it, so a client
 * that falls behind shows as latency (its own lag is printed as "lag" so it
 * can be told apart); "offered" is the rate actually issued. Goodput counts
 * OK replies that arrived within the phase. The machine is shared with
 * other work: absolute figures drift from run to run; the ratios printed
 * (goodput / P, overload p99 / unloaded p99, on against off) compare figures
 * of one run and are what the targets judge. "shed" is the servers' own
 * count of requests (not calls: a request carries up to 100) refused by
 * admission control, read from their counters log. Goodput above 1.00 P
 * means the closed loop did not saturate the services: under more load the
 * frontend's batches grow and each call costs less. "unread in kernel" is
 * the most bytes seen waiting in the sockets' receive queues
 * (/proc/net/tcp): requests into a server wait there before any admission
 * control can see them (a call is some 20 bytes), and replies into this
 * client wait there when the client itself is short of CPU, which then
 * shows in every latency; it is sampled (every 200 ms) with admission
 * control off only, as each read stalls this client's CPU for some 7 ms
 * (it walks the kernel's whole connection hash), which would otherwise
 * be in the p99 of the phase that the targets judge. "steady" leaves out
 * an overload phase's first second, the onset before the limits settle.
 * "cores used" is CPU time over the phase (and an
 * open phase's drain) per second of wall time, from /proc: the machine's
 * rest is other work sharing it, so a phase whose sum nears the CPU count
 * was CPU bound and one well below it was latency bound.
 *
 * Flags:
 *   --seconds S  scale every phase's length by S (default 1: 2 s per peak
 *                step, 2 s unloaded, 5 s per overload phase)
 *   --quick      a short smoke run (--seconds 0.2)
 *   --keep       keep the temporary directory (databases, service logs)
 *   --latency-target-us US|off
 *                the frontend's (default 10000)
 *   --no-pin     let the services and the client share both CPUs; by
 *                default the services run on CPU 0 and the client on
 *                CPU 1, so the load generator's own work (5x the calls,
 *                and reading every refusal) does not take the services'
 *                CPU and queue their requests in the kernel
 *
 * Design notes:
 * - Processes. Services start with tests/common/child (fork and at once
 *   exec, so nothing of nng crosses; SIGKILL when this program dies). Their
 *   stdout and stderr go to files, so a child never blocks on a pipe and
 *   the "listening on" line and counters log can be read at leisure.
 *   Children are spawned from the main thread only: the death signal
 *   follows the thread that spawned, not the process, and so does the CPU
 *   set a child inherits (see pin_to).
 * - Threads. Phases run as tasks on the client runtime's single worker;
 *   the main thread waits for each and meanwhile samples the frontend's
 *   VmRSS every 20 ms. Every per-call figure is written on the worker only.
 * - Open loop. A driver task wakes every 1 ms and issues every call due by
 *   then; a call is not a task but an RPC future whose on-done callback
 *   records it, so 200,000 outstanding calls cost 200,000 small records
 *   (preallocated, on a free list), not 200,000 stacks. A call due when
 *   every record is in use is dropped and counted. Calls issued in one tick
 *   share one deadline (asynq_rpc_deadline, pushed around the tick).
 * - Recording is a few counters and log-linear histograms (32 buckets per
 *   octave of microseconds, about 3% resolution); replies are checked
 *   against a table of expected names read from the databases with SQLite
 *   at start-up, so the check is a few strcmp per reply.
 */
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "services/frontend/frontend.asynq.h"
#include "tests/common/child.h"

#define N_USERS 1000
#define N_ANSWERS 10000
#define N_QUESTIONS 1000
#define IDS_PER_CALL 4
#define DEADLINE_MS 2000
#define MAX_OUTSTANDING 200000
#define N_K 3
#define MS (1000 * 1000ull)
#define SEC (1000 * MS)

/* Targets. */
#define GOODPUT_MIN 0.90    /* overload goodput / P */
#define P99_RATIO_MAX 3.0   /* overload OK p99 / unloaded OK p99 */
#define SHED_P99_MAX_MS 10. /* RESOURCE_EXHAUSTED: p99 time to fail */
#define RSS_GROWTH_MAX_MIB 256.

/* A broken invariant of this program (asynq's ASYNQ_ASSERT is internal). */
#define CHECK(cond)                                                            \
	do {                                                                   \
		if (!(cond)) {                                                 \
			fprintf(stderr, "overload: %s:%d: %s failed\n",        \
			    __FILE__, __LINE__, #cond);                        \
			abort();                                               \
		}                                                              \
	} while (0)

static const size_t peak_k[N_K] = { 16, 64, 256 };

/* The frontend's --latency-target-us (--latency-target-us). */
static const char *latency_target = "10000";

/* ---- Histograms ---------------------------------------------------------
 */

#define HIST_SUB 32 /* buckets per octave */
#define HIST_N (HIST_SUB + 27 * HIST_SUB)

/* Microseconds, exact below 32 us and within 1/32 above. */
typedef struct hist {
	uint64_t n;
	uint32_t b[HIST_N];
} hist;

static void
hist_add(hist *h, uint64_t ns)
{
	uint64_t us = ns / 1000;
	if (us >= (1ull << 32))
		us = (1ull << 32) - 1;
	size_t i;
	if (us < HIST_SUB) {
		i = (size_t)us;
	} else {
		int shift = 63 - __builtin_clzll(us) - 5;
		i = HIST_SUB + (size_t)shift * HIST_SUB +
		    (size_t)((us >> shift) - HIST_SUB);
	}
	h->b[i]++;
	h->n++;
}

/* The q-quantile in milliseconds (the middle of its bucket); 0 if empty. */
static double
hist_ms(const hist *h, double q)
{
	if (h->n == 0)
		return 0;
	uint64_t want = (uint64_t)ceil(q * (double)h->n), seen = 0;
	if (want == 0)
		want = 1;
	for (size_t i = 0; i < HIST_N; i++) {
		seen += h->b[i];
		if (seen < want)
			continue;
		if (i < HIST_SUB)
			return (double)i / 1000.0;
		size_t shift = (i - HIST_SUB) / HIST_SUB;
		double lo =
		    (double)((HIST_SUB + (i - HIST_SUB) % HIST_SUB) << shift);
		return (lo + (double)(1u << shift) / 2) / 1000.0;
	}
	return 0;
}

/* ---- What a phase saw ---------------------------------------------------
 */

typedef struct tally {
	uint64_t t_start, t_end; /* the phase's window, monotonic ns */
	uint64_t ok, ok_in_window, shed, deadline, other;
	uint64_t shed_local; /* of shed: refused by the channel's throttle
	                        (failed when made, no round trip) */
	uint64_t wrong;      /* OK replies with names not the database's */
	uint64_t issued;     /* open loop: calls due and made */
	uint64_t dropped;    /* open loop: calls due when the cap was reached */
	uint64_t unfinished; /* calls with no completion by the drain limit */
	asynq_status other_st;
	char other_msg[160], wrong_msg[200];
	hist ok_lat, shed_lat, deadline_lat, lag;
	hist shed_server_lat; /* shed less shed_local */
	hist ok_steady_lat;   /* OK calls due 1 s or more into the phase */
} tally;

/* expect[id]: the author name of answer id, from the databases. */
static char (*expect)[48];

static void
ids_fill(int64_t *ids, uint64_t salt)
{
	for (size_t i = 0; i < IDS_PER_CALL; i++)
		ids[i] = 1 +
		    (int64_t)(((salt * IDS_PER_CALL + i) * 7919) % N_ANSWERS);
}

/* Records call `salt`, due at t_due, whose future f is computed;
 * at_once: it was computed when made. */
static void
tally_call(tally *ty, asynq_future *f, uint64_t salt, uint64_t t_due,
    bool at_once)
{
	uint64_t now = asynq_now_ns();
	uint64_t lat = now > t_due ? now - t_due : 0;
	asynq_status st = asynq_future_status(f);
	switch (st) {
	case ASYNQ_OK: {
		const Asynq__Frontend__Names *r =
		    asynq__frontend__frontend__author_names__reply(f);
		int64_t ids[IDS_PER_CALL];
		ids_fill(ids, salt);
		bool good = r != NULL && r->n_names == IDS_PER_CALL;
		for (size_t i = 0; good && i < IDS_PER_CALL; i++)
			good = strcmp(r->names[i], expect[ids[i]]) == 0;
		if (!good) {
			if (ty->wrong++ == 0)
				snprintf(ty->wrong_msg, sizeof(ty->wrong_msg),
				    "answer %lld: got %zu names, first \"%s\","
				    " want \"%s\"",
				    (long long)ids[0],
				    r != NULL ? r->n_names : 0,
				    r != NULL && r->n_names > 0 ? r->names[0]
				                                : "",
				    expect[ids[0]]);
			break;
		}
		ty->ok++;
		if (now <= ty->t_end)
			ty->ok_in_window++;
		hist_add(&ty->ok_lat, lat);
		if (t_due >= ty->t_start + SEC)
			hist_add(&ty->ok_steady_lat, lat);
		break;
	}
	case ASYNQ_RESOURCE_EXHAUSTED:
		ty->shed++;
		hist_add(&ty->shed_lat, lat);
		if (at_once)
			ty->shed_local++;
		else
			hist_add(&ty->shed_server_lat, lat);
		break;
	case ASYNQ_DEADLINE_EXCEEDED:
		ty->deadline++;
		hist_add(&ty->deadline_lat, lat);
		break;
	default:
		if (ty->other++ == 0) {
			ty->other_st = st;
			snprintf(ty->other_msg, sizeof(ty->other_msg), "%s",
			    asynq_error_message(asynq_future_error(f)));
		}
		break;
	}
}

static asynq_future *
names_call(asynq_rpc_channel *ch, uint64_t salt)
{
	int64_t ids[IDS_PER_CALL];
	ids_fill(ids, salt);
	Asynq__Frontend__AnswerIds req = ASYNQ__FRONTEND__ANSWER_IDS__INIT;
	req.n_ids = IDS_PER_CALL;
	req.ids = ids;
	return asynq__frontend__frontend__author_names__call(ch, &req);
}

static asynq_status
sleep_ns(asynq_task *t, uint64_t ns)
{
	asynq_future *f = asynq_sleep(ns);
	asynq_status st = asynq_await(t, f);
	asynq_future_rele(f);
	return st;
}

/* ---- Closed loop ----------------------------------------------------------
 */

typedef struct closed_run {
	asynq_rpc_channel *ch;
	size_t k;
	uint64_t dur_ns;
	uint64_t salt;
	tally *ty;
	atomic_bool done; /* read by the main thread */
} closed_run;

static asynq_status
closed_caller(asynq_task *t, void *arg)
{
	closed_run *c = arg;
	while (asynq_now_ns() < c->ty->t_end) {
		uint64_t salt = c->salt++, t0 = asynq_now_ns();
		asynq_future *f = names_call(c->ch, salt);
		asynq_await(t, f);
		tally_call(c->ty, f, salt, t0, false);
		asynq_future_rele(f);
	}
	return ASYNQ_OK;
}

static asynq_status
closed_main(asynq_task *t, void *arg)
{
	closed_run *c = arg;
	asynq_future *fs[256];
	CHECK(c->k <= 256);
	c->ty->t_start = asynq_now_ns();
	c->ty->t_end = c->ty->t_start + c->dur_ns;
	for (size_t i = 0; i < c->k; i++)
		fs[i] = asynq_spawn(closed_caller, c);
	asynq_await_all(t, fs, c->k);
	asynq_future_rele_n(fs, c->k);
	atomic_store(&c->done, true);
	return ASYNQ_OK;
}

/* ---- Open loop ------------------------------------------------------------
 */

typedef struct open_run open_run;

/* One outstanding call; on the free list while not in use. */
typedef struct ocall {
	open_run *o;
	uint64_t t_due, salt;
	struct ocall *next_free;
} ocall;

struct open_run {
	asynq_rpc_channel *ch;
	double rate; /* calls per second */
	uint64_t dur_ns;
	uint64_t salt;
	tally *ty;
	ocall *calls; /* MAX_OUTSTANDING of them */
	ocall *free;
	size_t outstanding, max_outstanding;
	atomic_bool done;
};

static asynq_status
open_done(asynq_future *f, void *arg)
{
	ocall *c = arg;
	open_run *o = c->o;
	tally_call(o->ty, f, c->salt, c->t_due, false);
	/* The callback owns the reference the call returned. */
	asynq_future_rele(f);
	c->next_free = o->free;
	o->free = c;
	o->outstanding--;
	return ASYNQ_OK;
}

static int64_t
realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Issues every call due by now; returns how many are due in all. */
static uint64_t
open_tick(open_run *o, uint64_t t0, uint64_t now, uint64_t issued)
{
	tally *ty = o->ty;
	uint64_t due = (uint64_t)((double)(now - t0) * o->rate / 1e9);
	if (issued >= due)
		return issued;
	int64_t dl = realtime_ns() + (int64_t)DEADLINE_MS * (int64_t)MS;
	bool pushed = asynq_scoped_push(&asynq_rpc_deadline,
	                  (void *)(intptr_t)dl) == ASYNQ_OK;
	for (; issued < due; issued++) {
		uint64_t t_due =
		    t0 + (uint64_t)((double)issued * 1e9 / o->rate);
		if (o->free == NULL) {
			ty->dropped++;
			continue;
		}
		ocall *c = o->free;
		o->free = c->next_free;
		o->outstanding++;
		if (o->outstanding > o->max_outstanding)
			o->max_outstanding = o->outstanding;
		c->t_due = t_due;
		c->salt = o->salt++;
		ty->issued++;
		hist_add(&ty->lag, now - t_due);
		asynq_future *f = names_call(o->ch, c->salt);
		/* Computed already (refused by the channel's throttle, say):
		 * recorded now, as failed when made. */
		if (asynq_future_done(f) ||
		    asynq_future_on_done(f, open_done, c) != ASYNQ_OK) {
			tally_call(ty, f, c->salt, t_due, asynq_future_done(f));
			asynq_future_rele(f);
			c->next_free = o->free;
			o->free = c;
			o->outstanding--;
		}
	}
	if (pushed)
		(void)asynq_scoped_pop(&asynq_rpc_deadline);
	return issued;
}

static asynq_status
open_main(asynq_task *t, void *arg)
{
	open_run *o = arg;
	tally *ty = o->ty;
	uint64_t issued = 0;
	for (size_t i = 0; i < MAX_OUTSTANDING; i++) {
		o->calls[i].o = o;
		o->calls[i].next_free =
		    i + 1 < MAX_OUTSTANDING ? &o->calls[i + 1] : NULL;
	}
	o->free = &o->calls[0];
	uint64_t t0 = ty->t_start = asynq_now_ns();
	ty->t_end = t0 + o->dur_ns;
	for (uint64_t now; (now = asynq_now_ns()) < ty->t_end;) {
		issued = open_tick(o, t0, now, issued);
		sleep_ns(t, MS);
	}
	/* Every call has a deadline: all must be done soon after it. */
	uint64_t limit = asynq_now_ns() + (DEADLINE_MS + 3000) * MS;
	while (o->outstanding > 0 && asynq_now_ns() < limit)
		sleep_ns(t, MS);
	ty->unfinished = o->outstanding;
	atomic_store(&o->done, true);
	return ASYNQ_OK;
}

/* ---- Child processes ------------------------------------------------------
 */

static char tmpdir[256];
static char users_db[300], answers_db[300];

/* Reads up to n - 1 bytes of a file into buf (NUL-terminated); "" if it
 * cannot be read. Enough for the small files read here. */
static char *
slurp(const char *path, char *buf, size_t n)
{
	buf[0] = '\0';
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return buf;
	size_t k = fread(buf, 1, n - 1, f);
	buf[k] = '\0';
	fclose(f);
	return buf;
}

/* Starts service `name` on a free port with the extra arguments (NULL
 * terminated) and waits for it to listen (up to 60 s: a first start
 * generates its database); false (having printed why) if it never did. */
static bool
service_start(child *c, const char *name, const char *const *extra)
{
	char why[512];
	memset(c, 0, sizeof(*c));
	if (child_start(NULL, c, name, name, extra, 60000, why, sizeof(why)))
		return true;
	fprintf(stderr, "overload: %s did not start: %s\n", name, why);
	return false;
}

/* The frontend's (or any process's) VmRSS in MiB; -1 if unreadable. */
static double
rss_mib(pid_t pid)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	const char *l = strstr(slurp(path, buf, sizeof(buf)), "VmRSS:");
	return l != NULL ? strtod(l + 6, NULL) / 1024.0 : -1;
}

/* Sums " shed=N" over the counters log of p (a line each second at most). */
static uint64_t
log_shed(const child *p)
{
	static char buf[1 << 20];
	uint64_t sum = 0;
	slurp(p->err, buf, sizeof(buf));
	for (char *l = buf; (l = strstr(l, " shed=")) != NULL; l += 6)
		sum += strtoull(l + 6, NULL, 10);
	return sum;
}

/* CPU time used so far: this client, each service and the whole machine
 * (busy time of every CPU: what other work on the machine took shows as the
 * rest). Clock ticks. */
typedef struct cpu_snap {
	uint64_t t_ns;
	double client, frontend, answers, users, machine;
} cpu_snap;

static double
cpu_of(pid_t pid)
{
	char path[64], buf[1024];
	unsigned long ut = 0, st = 0;
	if (pid == 0)
		snprintf(path, sizeof(path), "/proc/self/stat");
	else
		snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	/* The name in parentheses may hold spaces: fields follow the last ). */
	const char *c = strrchr(slurp(path, buf, sizeof(buf)), ')');
	if (c == NULL ||
	    sscanf(c + 1,
	        " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u"
	        " %lu %lu",
	        &ut, &st) != 2)
		return 0;
	return (double)(ut + st);
}

static double
cpu_machine(void)
{
	char buf[512];
	unsigned long long v[8] = { 0 };
	if (sscanf(slurp("/proc/stat", buf, sizeof(buf)),
	        "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
	        &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]) != 8)
		return 0;
	/* All but idle (v[3]) and iowait (v[4]). */
	return (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]);
}

static cpu_snap
cpu_now(pid_t frontend, pid_t answers, pid_t users)
{
	return (cpu_snap){ .t_ns = asynq_now_ns(),
		.client = cpu_of(0),
		.frontend = cpu_of(frontend),
		.answers = cpu_of(answers),
		.users = cpu_of(users),
		.machine = cpu_machine() };
}

/* Prints the cores each used between a and b. */
static void
cpu_print(const char *indent, const cpu_snap *a, const cpu_snap *b)
{
	double ticks =
	    (double)sysconf(_SC_CLK_TCK) * (double)(b->t_ns - a->t_ns) / 1e9;
	double c = (b->client - a->client) / ticks;
	double f = (b->frontend - a->frontend) / ticks;
	double an = (b->answers - a->answers) / ticks;
	double u = (b->users - a->users) / ticks;
	double m = (b->machine - a->machine) / ticks;
	double rest = m - c - f - an - u;
	printf("%scores used        client %.2f, frontend %.2f, answers %.2f,"
	       " users %.2f; the rest of the machine %.2f (of %ld)\n",
	    indent, c, f, an, u, rest > 0 ? rest : 0,
	    sysconf(_SC_NPROCESSORS_ONLN));
}

/* ---- The services ---------------------------------------------------------
 */

/* --pin: the services on CPU 0, this client on CPU 1 (children inherit the
 * CPU set of the thread that spawns them), so the load generator does not
 * take the services' CPU and what is measured is the services' own
 * handling of the overload. Off (--no-pin), all share both CPUs. */
static bool pin = true;

static void
pin_to(int cpu)
{
	if (!pin)
		return;
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	(void)sched_setaffinity(0, sizeof(set), &set);
}

typedef struct stack {
	child users, answers, frontend;
	asynq_rpc_channel *ch;
} stack;

static bool
stack_start(stack *s, bool admission)
{
	static char nu[16], na[16], nq[16];
	snprintf(nu, sizeof(nu), "%d", N_USERS);
	snprintf(na, sizeof(na), "%d", N_ANSWERS);
	snprintf(nq, sizeof(nq), "%d", N_QUESTIONS);
	/* With admission control on, the lists end before "off". */
	const char *ac = admission ? NULL : "--queue-target-us";
	const char *u[] = { "--db", users_db, "--gen-users", nu, ac, "off",
		NULL };
	const char *a[] = { "--db", answers_db, "--gen-users", nu,
		"--gen-answers", na, "--gen-questions", nq, ac, "off", NULL };
	pin_to(0);
	bool up = service_start(&s->users, "users", u) &&
	    service_start(&s->answers, "answers", a);
	/* The frontend, whose time goes to its outgoing batches, also
	 * limits its calls in flight by their time in it (a leaf does not:
	 * asynq_rpc_server_cfg.latency_target_us). */
	const char *f[] = { "--users", s->users.url, "--answers",
		s->answers.url, "--latency-target-us", latency_target, ac,
		"off", NULL };
	up = up && service_start(&s->frontend, "frontend", f);
	pin_to(1);
	if (!up)
		return false;
	const char *urls[] = { s->frontend.url };
	asynq_rpc_channel_cfg cfg = {
		.urls = urls,
		.n_urls = 1,
		.default_deadline_ms = DEADLINE_MS,
	};
	return asynq_rpc_channel_alloc(&s->ch,
	           &asynq__frontend__frontend__asynq_desc, &cfg) == ASYNQ_OK;
}

static void
stack_stop(stack *s)
{
	asynq_rpc_channel_free(s->ch);
	s->ch = NULL;
	child_kill(&s->frontend);
	child_kill(&s->answers);
	child_kill(&s->users);
}

/* Fills expect[] from the databases: the independent view of the answer. */
static bool
expect_load(void)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *st = NULL;
	char attach[400];
	size_t n = 0;
	expect = calloc(N_ANSWERS + 1, sizeof(*expect));
	snprintf(attach, sizeof(attach), "ATTACH DATABASE '%s' AS u;",
	    users_db);
	if (expect == NULL ||
	    sqlite3_open_v2(answers_db, &db, SQLITE_OPEN_READONLY, NULL) !=
	        SQLITE_OK ||
	    sqlite3_exec(db, attach, NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_prepare_v2(db,
	        "SELECT a.id, u.name FROM answers a JOIN u.users u"
	        " ON u.id = a.author_id",
	        -1, &st, NULL) != SQLITE_OK) {
		fprintf(stderr, "overload: read %s: %s\n", answers_db,
		    db != NULL ? sqlite3_errmsg(db) : "out of memory");
		sqlite3_finalize(st);
		sqlite3_close(db);
		return false;
	}
	while (sqlite3_step(st) == SQLITE_ROW) {
		int64_t id = sqlite3_column_int64(st, 0);
		const char *name = (const char *)sqlite3_column_text(st, 1);
		if (id >= 1 && id <= N_ANSWERS && name != NULL &&
		    strlen(name) < sizeof(expect[0])) {
			snprintf(expect[id], sizeof(expect[0]), "%s", name);
			n++;
		}
	}
	sqlite3_finalize(st);
	sqlite3_close(db);
	if (n != N_ANSWERS)
		fprintf(stderr, "overload: %zu of %d answers have an author\n",
		    n, N_ANSWERS);
	return n == N_ANSWERS;
}

/* ---- Running phases -------------------------------------------------------
 */

static asynq_runtime *rt;

/* What the main thread watches while an overload phase runs: the
 * frontend's memory, and the bytes that wait unread in the kernel's receive
 * queues of the connections into each server (a queue admission control
 * cannot see: it measures from the server's read) and into this client
 * (replies it has not read). */
typedef struct rss_watch {
	pid_t pid;
	double peak;
	int port[3];          /* frontend, answers, users */
	uint64_t rxq_peak[4]; /* into each of them, and into this client */
	bool rxq;             /* sample the receive queues */
} rss_watch;

static int
url_port(const char *url)
{
	const char *c = strrchr(url, ':');
	return c != NULL ? atoi(c + 1) : -1;
}

/* Sums the receive queues of /proc/net/tcp by server port. */
static void
rxq_sample(rss_watch *w)
{
	static char buf[1 << 20];
	uint64_t sum[4] = { 0 };
	slurp("/proc/net/tcp", buf, sizeof(buf));
	char *l = strchr(buf, '\n'); /* past the heading */
	while (l != NULL && *++l != '\0') {
		unsigned lport, rport, state;
		unsigned long txq, rxq;
		if (sscanf(l, "%*d: %*x:%x %*x:%x %x %lx:%lx", &lport, &rport,
		        &state, &txq, &rxq) == 5) {
			for (size_t i = 0; i < 3; i++)
				if ((int)lport == w->port[i])
					sum[i] += rxq;
			if ((int)rport == w->port[0])
				sum[3] += rxq;
		}
		l = strchr(l, '\n');
	}
	for (size_t i = 0; i < 4; i++)
		if (sum[i] > w->rxq_peak[i])
			w->rxq_peak[i] = sum[i];
}

/* Runs fn(arg) as a task on the client's worker until *done, sampling the
 * frontend's memory meanwhile if w is set. */
static void
phase_run(asynq_task_fn fn, void *arg, atomic_bool *done, rss_watch *w)
{
	asynq_ticket *tk = NULL;
	asynq_status st = asynq_runtime_submit(rt, 0, fn, arg, &tk);
	CHECK(st == ASYNQ_OK);
	/* The receive queues every 200 ms, and only when asked: a read of
	 * /proc/net/tcp walks the kernel's whole connection hash (7 ms of
	 * system time on a machine of this size) on this client's CPU;
	 * every 20 ms it took a third of the CPU from the worker, and even
	 * every 200 ms its stalls set the p99 of latencies of a few ms. */
	for (unsigned tick = 0; !atomic_load(done); tick++) {
		if (w != NULL) {
			double m = rss_mib(w->pid);
			if (m > w->peak)
				w->peak = m;
			if (w->rxq && tick % 10 == 0)
				rxq_sample(w);
		}
		usleep(20 * 1000);
	}
	st = asynq_ticket_wait(tk);
	CHECK(st == ASYNQ_OK);
	asynq_ticket_free(tk);
}

static tally *
tally_alloc(void)
{
	tally *ty = calloc(1, sizeof(*ty));
	CHECK(ty != NULL);
	return ty;
}

static uint64_t salt; /* next call's ids; every call of the run differs */

static tally *
closed_phase(stack *s, size_t k, double seconds)
{
	closed_run c = { .ch = s->ch,
		.k = k,
		.salt = salt,
		.dur_ns = (uint64_t)(seconds * 1e9),
		.ty = tally_alloc() };
	phase_run(closed_main, &c, &c.done, NULL);
	salt = c.salt;
	return c.ty;
}

static ocall *ocalls; /* MAX_OUTSTANDING, reused by every open phase */

static tally *
open_phase(stack *s, double rate, double seconds, rss_watch *w, size_t *max_out)
{
	open_run o = { .ch = s->ch,
		.rate = rate,
		.salt = salt,
		.dur_ns = (uint64_t)(seconds * 1e9),
		.ty = tally_alloc(),
		.calls = ocalls };
	phase_run(open_main, &o, &o.done, w);
	salt = o.salt;
	if (max_out != NULL)
		*max_out = o.max_outstanding;
	if (o.ty->unfinished > 0)
		/* Their callbacks may still run and write the records. */
		ocalls = calloc(MAX_OUTSTANDING, sizeof(*ocalls));
	CHECK(ocalls != NULL);
	return o.ty;
}

static bool failed; /* a wrong answer or a lost call: exit 1 */

/* Prints what went wrong in a phase, and remembers it. */
static void
tally_problems(const char *phase, const tally *ty)
{
	if (ty->wrong > 0) {
		printf("  WRONG %s: %llu replies with wrong names; first: %s\n",
		    phase, (unsigned long long)ty->wrong, ty->wrong_msg);
		failed = true;
	}
	if (ty->unfinished > 0) {
		printf("  LOST %s: %llu calls not completed %d ms after their"
		       " deadline\n",
		    phase, (unsigned long long)ty->unfinished, 3000);
		failed = true;
	}
}

static const char *
mark(bool ok)
{
	return ok ? "ok" : "OVER";
}

/* The figures of one overload phase. */
typedef struct overload_fig {
	double goodput, ok_p50, ok_p99, shed_p99;
	double rss_before, rss_peak, rss_after;
	uint64_t shed_frontend, shed_users, shed_answers;
} overload_fig;

static overload_fig
overload_phase(const char *title, stack *s, double p, double unl_p99,
    double seconds, bool rxq)
{
	overload_fig fig = { 0 };
	size_t max_out = 0;
	usleep(1200 * 1000); /* settle; let the counters log catch up */
	uint64_t shed0[3] = { log_shed(&s->frontend), log_shed(&s->users),
		log_shed(&s->answers) };
	rss_watch w = { .pid = s->frontend.pid,
		.port = { url_port(s->frontend.url), url_port(s->answers.url),
		    url_port(s->users.url) },
		.rxq = rxq };
	fig.rss_before = w.peak = rss_mib(w.pid);
	cpu_snap c0 = cpu_now(s->frontend.pid, s->answers.pid, s->users.pid);
	tally *ty = open_phase(s, 5 * p, seconds, &w, &max_out);
	cpu_snap c1 = cpu_now(s->frontend.pid, s->answers.pid, s->users.pid);
	usleep(1200 * 1000);
	fig.rss_after = rss_mib(w.pid);
	fig.rss_peak = w.peak > fig.rss_after ? w.peak : fig.rss_after;
	fig.shed_frontend = log_shed(&s->frontend) - shed0[0];
	fig.shed_users = log_shed(&s->users) - shed0[1];
	fig.shed_answers = log_shed(&s->answers) - shed0[2];

	double secs = (double)(ty->t_end - ty->t_start) / 1e9;
	fig.goodput = (double)ty->ok_in_window / secs;
	fig.ok_p50 = hist_ms(&ty->ok_lat, 0.50);
	fig.ok_p99 = hist_ms(&ty->ok_lat, 0.99);
	fig.shed_p99 = hist_ms(&ty->shed_lat, 0.99);
	double ratio = fig.goodput / p;
	double p99r = unl_p99 > 0 ? fig.ok_p99 / unl_p99 : 0;
	double growth = fig.rss_peak - fig.rss_before;

	printf("\n%s: open loop at 5x P = %.0f calls/s for %.1f s, %d ms"
	       " deadline\n",
	    title, 5 * p, secs, DEADLINE_MS);
	printf("  offered    %.0f calls/s (%llu issued, %llu dropped at the"
	       " cap of %d, most outstanding %zu), lag p50 %.2f p99 %.2f ms\n",
	    (double)ty->issued / secs, (unsigned long long)ty->issued,
	    (unsigned long long)ty->dropped, MAX_OUTSTANDING, max_out,
	    hist_ms(&ty->lag, 0.5), hist_ms(&ty->lag, 0.99));
	printf("  goodput    %.0f OK calls/s = %.2f P (target >= %.2f)  %s\n",
	    fig.goodput, ratio, GOODPUT_MIN, mark(ratio >= GOODPUT_MIN));
	printf("  OK         %llu calls, p50 %.2f ms, p99 %.2f ms = %.1fx"
	       " unloaded p99 (target <= %.0fx)  %s\n",
	    (unsigned long long)ty->ok, fig.ok_p50, fig.ok_p99, p99r,
	    P99_RATIO_MAX, mark(ty->ok > 0 && p99r <= P99_RATIO_MAX));
	printf("    steady       OK calls due 1 s or more into the phase:"
	       " p50 %.2f ms, p99 %.2f ms (the onset left out)\n",
	    hist_ms(&ty->ok_steady_lat, 0.5),
	    hist_ms(&ty->ok_steady_lat, 0.99));
	if (ty->shed > 0)
		printf("  RESOURCE_EXHAUSTED %llu calls, failed after p50 %.2f"
		       " ms, p99 %.2f ms (target p99 <= %.0f ms)  %s\n",
		    (unsigned long long)ty->shed, hist_ms(&ty->shed_lat, 0.5),
		    fig.shed_p99, SHED_P99_MAX_MS,
		    mark(fig.shed_p99 <= SHED_P99_MAX_MS));
	else
		printf("  RESOURCE_EXHAUSTED 0 calls\n");
	if (ty->shed > 0)
		printf("    of which     %llu refused by the client's throttle"
		       " at once; %llu by a server, after p50 %.2f ms, p99"
		       " %.2f ms\n",
		    (unsigned long long)ty->shed_local,
		    (unsigned long long)(ty->shed - ty->shed_local),
		    hist_ms(&ty->shed_server_lat, 0.5),
		    hist_ms(&ty->shed_server_lat, 0.99));
	printf("  DEADLINE_EXCEEDED  %llu calls (after p50 %.0f ms)\n",
	    (unsigned long long)ty->deadline, hist_ms(&ty->deadline_lat, 0.5));
	if (ty->other > 0)
		printf("  other errors       %llu calls, first %s: %s\n",
		    (unsigned long long)ty->other,
		    asynq_status_name(ty->other_st), ty->other_msg);
	else
		printf("  other errors       0 calls\n");
	printf("  frontend VmRSS     before %.1f MiB, peak %.1f MiB, after"
	       " %.1f MiB (target: peak growth <= %.0f MiB)  %s\n",
	    fig.rss_before, fig.rss_peak, fig.rss_after, RSS_GROWTH_MAX_MIB,
	    mark(growth <= RSS_GROWTH_MAX_MIB));
	printf("  servers' shed      frontend %llu, answers %llu, users %llu"
	       " requests\n",
	    (unsigned long long)fig.shed_frontend,
	    (unsigned long long)fig.shed_answers,
	    (unsigned long long)fig.shed_users);
	if (w.rxq)
		printf("  unread in kernel   peak KiB into frontend %.0f,"
		       " answers %.0f, users %.0f; replies into client %.0f\n",
		    (double)w.rxq_peak[0] / 1024, (double)w.rxq_peak[1] / 1024,
		    (double)w.rxq_peak[2] / 1024, (double)w.rxq_peak[3] / 1024);
	else
		printf(
		    "  unread in kernel   not sampled in this phase (each read"
		    " of /proc/net/tcp stalls this client ~7 ms)\n");
	cpu_print("  ", &c0, &c1);
	tally_problems(title, ty);
	free(ty);
	return fig;
}

/* ---- Main ---------------------------------------------------------------- */

static void
tmpdir_init(void)
{
	const char *t = getenv("TMPDIR");
	snprintf(tmpdir, sizeof(tmpdir), "%s/asynq-overload.XXXXXX",
	    t != NULL && t[0] != '\0' ? t : "/tmp");
}

static void
tmpdir_remove(void)
{
	char path[600];
	/* Only the directory this run made (mkdtemp), with its files. */
	DIR *d = opendir(tmpdir);
	if (d == NULL)
		return;
	for (struct dirent *e; (e = readdir(d)) != NULL;) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", tmpdir, e->d_name);
		unlink(path);
	}
	closedir(d);
	rmdir(tmpdir);
}

int
main(int argc, char **argv)
{
	double scale = 1.0;
	bool keep = false;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
			scale = strtod(argv[++i], NULL);
		else if (strcmp(argv[i], "--quick") == 0)
			scale = 0.2;
		else if (strcmp(argv[i], "--keep") == 0)
			keep = true;
		else if (strcmp(argv[i], "--no-pin") == 0)
			pin = false;
		else if (strcmp(argv[i], "--latency-target-us") == 0 &&
		    i + 1 < argc)
			latency_target = argv[++i];
		else {
			fprintf(stderr,
			    "usage: %s [--seconds S] [--quick] [--keep] "
			    "[--no-pin] [--latency-target-us US|off]\n",
			    argv[0]);
			return 2;
		}
	}
	if (!(scale > 0 && scale <= 100)) {
		fprintf(stderr, "overload: --seconds wants 0 < S <= 100\n");
		return 2;
	}

	tmpdir_init();
	if (mkdtemp(tmpdir) == NULL) {
		fprintf(stderr, "overload: mkdtemp %s: %s\n", tmpdir,
		    strerror(errno));
		return 2;
	}
	if (!child_env_init_run(tmpdir)) {
		tmpdir_remove();
		return 2;
	}
	snprintf(users_db, sizeof(users_db), "%s/users.db", tmpdir);
	snprintf(answers_db, sizeof(answers_db), "%s/answers.db", tmpdir);
	ocalls = calloc(MAX_OUTSTANDING, sizeof(*ocalls));
	pin_to(1); /* before the client's threads start */
	asynq_runtime_cfg rcfg = { .workers = 1 };
	stack s = { 0 };
	int rc = 2;
	if (ocalls == NULL || asynq_runtime_alloc(&rt, &rcfg) != ASYNQ_OK) {
		fprintf(stderr, "overload: client runtime: out of memory\n");
		goto out;
	}
	if (!stack_start(&s, true) || !expect_load())
		goto out;
	rc = 0;

	printf("overload: AuthorNames (%d ids a call) on frontend -> answers,"
	       " users; 2 workers each, tcp loopback;\n"
	       "client: one asynq worker. %d users, %d answers. Phase lengths"
	       " x%.2f\n",
	    IDS_PER_CALL, N_USERS, N_ANSWERS, scale);

	/* Warm up: connections, the services' caches and stacks. */
	free(closed_phase(&s, 16, 0.3 * scale));

	printf("\npeak: closed loop, K tasks calling back to back\n");
	double p = 0, peak_p99 = 0;
	size_t best_k = 0;
	for (size_t i = 0; i < N_K; i++) {
		cpu_snap c0 =
		    cpu_now(s.frontend.pid, s.answers.pid, s.users.pid);
		tally *ty = closed_phase(&s, peak_k[i], 2 * scale);
		cpu_snap c1 =
		    cpu_now(s.frontend.pid, s.answers.pid, s.users.pid);
		double secs = (double)(ty->t_end - ty->t_start) / 1e9;
		double rate = (double)ty->ok_in_window / secs;
		printf("  K=%-4zu %8.0f OK calls/s, p50 %.2f ms, p99 %.2f ms;"
		       " errors: %llu RESOURCE_EXHAUSTED, %llu"
		       " DEADLINE_EXCEEDED, %llu other\n",
		    peak_k[i], rate, hist_ms(&ty->ok_lat, 0.5),
		    hist_ms(&ty->ok_lat, 0.99), (unsigned long long)ty->shed,
		    (unsigned long long)ty->deadline,
		    (unsigned long long)ty->other);
		cpu_print("         ", &c0, &c1);
		tally_problems("peak", ty);
		if (rate > p) {
			p = rate;
			best_k = peak_k[i];
			peak_p99 = hist_ms(&ty->ok_lat, 0.99);
		}
		free(ty);
	}
	printf("  P = %.0f OK calls/s (K=%zu)\n", p, best_k);
	if (p < 10) {
		printf("overload: no calls succeeded; nothing to overload\n");
		rc = 1;
		goto out;
	}

	tally *ty = open_phase(&s, 0.1 * p, 2 * scale, NULL, NULL);
	double unl_secs = (double)(ty->t_end - ty->t_start) / 1e9;
	double unl_p50 = hist_ms(&ty->ok_lat, 0.5);
	double unl_p99 = hist_ms(&ty->ok_lat, 0.99);
	printf("\nunloaded: open loop at 0.1 P = %.0f calls/s for %.1f s\n",
	    0.1 * p, unl_secs);
	printf("  OK %llu calls, p50 %.2f ms, p99 %.2f ms; errors: %llu"
	       " RESOURCE_EXHAUSTED, %llu DEADLINE_EXCEEDED, %llu other\n",
	    (unsigned long long)ty->ok, unl_p50, unl_p99,
	    (unsigned long long)ty->shed, (unsigned long long)ty->deadline,
	    (unsigned long long)ty->other);
	/* What the targets ask of admitted calls, against what the services
	 * do at P without overload: a limiter that keeps 0.9 P cannot make
	 * admitted calls much faster than the closed loop that reached P. */
	printf("  reference: the closed loop at P had p99 %.2f ms = %.1fx this"
	       " unloaded p99\n",
	    peak_p99, unl_p99 > 0 ? peak_p99 / unl_p99 : 0);
	tally_problems("unloaded", ty);
	free(ty);

	overload_fig on = overload_phase("overload, admission control on", &s,
	    p, unl_p99, 5 * scale, false);

	stack_stop(&s);
	if (!stack_start(&s, false)) {
		rc = 2;
		goto out;
	}
	/* Warm the new processes up as the first ones were, gently. */
	ty = open_phase(&s, 0.1 * p, 0.5 * scale, NULL, NULL);
	tally_problems("warm-up", ty);
	free(ty);
	overload_fig off = overload_phase(
	    "overload, admission control off (--queue-target-us off)", &s, p,
	    unl_p99, 5 * scale, true);

	printf("\non / off: goodput %.2f P / %.2f P; OK p99 %.1f / %.1f ms;"
	       " frontend peak VmRSS %.1f / %.1f MiB\n",
	    on.goodput / p, off.goodput / p, on.ok_p99, off.ok_p99, on.rss_peak,
	    off.rss_peak);
	if (failed)
		rc = 1;
out:
	stack_stop(&s);
	asynq_runtime_free(rt);
	if (rc != 0 || keep)
		fprintf(stderr, "overload: services' logs are in %s\n", tmpdir);
	else
		tmpdir_remove();
	free(expect);
	return rc;
}
