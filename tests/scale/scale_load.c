/* SPDX-License-Identifier: MIT */
/*
 * The load of the namespace scale test (netns_test.sh): a client of the
 * users, answers and cache services through names,
 *
 *   scale_load --users dns:///users.svc.local:7001 \
 *       --answers dns:///answers.svc.local:7002 \
 *       [--cache dns:///cache.svc.local:7003] [--duration-ms 5000]
 *       [--tasks 8] [--batch 20] [--max-iters 100000] [--deadline-ms 3000]
 *       [--resolve-ms 2000] [--eject-base-ms 2000] [--ticks FILE]
 *
 * Its tasks loop until the duration or the iteration cap (both bound it):
 * each iteration asks GetUser and GetAnswer for `batch` ids each (one
 * request per service, idempotent) and, with --cache, one Incr of a token
 * of its own (not idempotent), and waits for them. At the end it prints,
 * per service, the calls and how they ended and the slowest call, then per
 * replica the requests and calls its channel sent there and when (wall
 * clock ms) it first got one; with --ticks it also writes every 250 ms a
 * line per replica with its calls so far, so the test can tell when
 * traffic moved. The Incr tokens it saw answered go to stdout as lines
 * "incr_ok TOKEN" only with --list-incr.
 */
#include <getopt.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "services/answers/answers.asynq.h"
#include "services/cache/cache.asynq.h"
#include "services/users/users.asynq.h"

#define MAX_TASKS 64
#define MAX_BATCH 500
#define MAX_REPS 16

enum { SVC_USERS, SVC_ANSWERS, SVC_CACHE, N_SVC };
static const char *svc_names[N_SVC] = { "users", "answers", "cache" };

typedef struct tally {
	atomic_uint_fast64_t calls, ok, failed, deadline, unavailable, aborted,
	    other, max_ms, max_failed_ms;
} tally;

typedef struct load {
	asynq_rpc_channel *ch[N_SVC];
	int64_t end_ns;
	uint64_t max_iters;
	atomic_uint_fast64_t iters;
	size_t batch;
	tally t[N_SVC];
	/* first time (wall ms) each replica of each service had a request */
	pthread_mutex_t mu;
} load;

typedef struct worker_arg {
	load *l;
	unsigned id;
} worker_arg;

static int64_t
mono_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static int64_t
wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void
max_store(atomic_uint_fast64_t *m, uint64_t v)
{
	uint64_t cur = atomic_load(m);
	while (v > cur && !atomic_compare_exchange_weak(m, &cur, v))
		;
}

static void
count(tally *t, asynq_status st, uint64_t ms)
{
	atomic_fetch_add(&t->calls, 1);
	max_store(&t->max_ms, ms);
	if (st == ASYNQ_OK) {
		atomic_fetch_add(&t->ok, 1);
		return;
	}
	atomic_fetch_add(&t->failed, 1);
	max_store(&t->max_failed_ms, ms);
	if (st == ASYNQ_DEADLINE_EXCEEDED)
		atomic_fetch_add(&t->deadline, 1);
	else if (st == ASYNQ_UNAVAILABLE)
		atomic_fetch_add(&t->unavailable, 1);
	else if (st == ASYNQ_ABORTED)
		atomic_fetch_add(&t->aborted, 1);
	else
		atomic_fetch_add(&t->other, 1);
}

static bool list_incr;

static asynq_status
task_main(asynq_task *t, void *arg)
{
	worker_arg *wa = arg;
	load *l = wa->l;
	asynq_future *fu[MAX_BATCH], *fa[MAX_BATCH], *fc = NULL;
	uint64_t seq = 0;
	uint32_t rng = 2654435761u * (wa->id + 1);
	while (mono_ns() < l->end_ns &&
	    atomic_fetch_add(&l->iters, 1) < l->max_iters) {
		int64_t t0 = mono_ns();
		for (size_t i = 0; i < l->batch; i++) {
			rng = rng * 1664525u + 1013904223u;
			Asynq__Users__UserId u = ASYNQ__USERS__USER_ID__INIT;
			u.id = 1 + (int64_t)(rng % 1000);
			fu[i] = asynq__users__users__get_user__call(
			    l->ch[SVC_USERS], &u);
			Asynq__Answers__AnswerId a =
			    ASYNQ__ANSWERS__ANSWER_ID__INIT;
			a.id = 1 + (int64_t)((rng >> 10) % 1000);
			fa[i] = asynq__answers__answers__get_answer__call(
			    l->ch[SVC_ANSWERS], &a);
		}
		uint64_t token = 0;
		if (l->ch[SVC_CACHE] != NULL) {
			Asynq__Cache__IncrRequest r =
			    ASYNQ__CACHE__INCR_REQUEST__INIT;
			token = ((uint64_t)getpid() << 40) |
			    ((uint64_t)wa->id << 28) | ++seq;
			char key[48];
			snprintf(key, sizeof(key), "visits-%" PRIu64, token);
			r.key.data = (uint8_t *)key;
			r.key.len = strlen(key);
			r.delta = 1;
			r.token = token;
			fc = asynq__cache__cache__incr__call(l->ch[SVC_CACHE],
			    &r);
		}
		(void)asynq_await_all(t, fu, l->batch);
		(void)asynq_await_all(t, fa, l->batch);
		if (fc != NULL)
			(void)asynq_await(t, fc);
		uint64_t ms = (uint64_t)(mono_ns() - t0) / 1000000;
		for (size_t i = 0; i < l->batch; i++) {
			count(&l->t[SVC_USERS], asynq_future_status(fu[i]), ms);
			count(&l->t[SVC_ANSWERS], asynq_future_status(fa[i]),
			    ms);
		}
		asynq_future_rele_n(fu, l->batch);
		asynq_future_rele_n(fa, l->batch);
		if (fc != NULL) {
			asynq_status st = asynq_future_status(fc);
			count(&l->t[SVC_CACHE], st, ms);
			if (st == ASYNQ_OK && list_incr)
				printf("incr_ok %" PRIu64 "\n", token);
			asynq_future_rele(fc);
			fc = NULL;
		}
	}
	return ASYNQ_OK;
}

typedef struct ticker {
	load *l;
	FILE *out;
	atomic_bool stop;
	int64_t first[N_SVC][MAX_REPS];
	char urls[N_SVC][MAX_REPS][ASYNQ_RPC_URL_MAX];
	size_t n[N_SVC];
} ticker;

/* Notes when each replica first had a request (and, with a file, writes
 * its calls so far), every 50 ms. */
static void
tick_once(ticker *tk, bool write)
{
	int64_t now = wall_ms();
	for (int s = 0; s < N_SVC; s++) {
		if (tk->l->ch[s] == NULL)
			continue;
		asynq_rpc_replica_info info[MAX_REPS];
		size_t n =
		    asynq_rpc_channel_replicas(tk->l->ch[s], info, MAX_REPS);
		for (size_t i = 0; i < n && i < MAX_REPS; i++) {
			size_t k = 0;
			while (k < tk->n[s] &&
			    strcmp(tk->urls[s][k], info[i].url) != 0)
				k++;
			if (k == tk->n[s] && k < MAX_REPS) {
				memcpy(tk->urls[s][k], info[i].url,
				    ASYNQ_RPC_URL_MAX);
				tk->first[s][k] = 0;
				tk->n[s]++;
			}
			if (k < MAX_REPS && tk->first[s][k] == 0 &&
			    info[i].requests > 0)
				tk->first[s][k] = now;
			if (write && tk->out != NULL)
				fprintf(tk->out,
				    "tick ms=%" PRId64 " svc=%s url=%s "
				    "calls=%" PRIu64 " state=%s%s%s\n",
				    now, svc_names[s], info[i].url,
				    info[i].calls, info[i].state,
				    info[i].ejected ? ",ejected" : "",
				    info[i].draining ? ",draining" : "");
		}
	}
	if (write && tk->out != NULL)
		fflush(tk->out);
}

static void *
ticker_main(void *arg)
{
	ticker *tk = arg;
	for (unsigned i = 0; !atomic_load(&tk->stop); i++) {
		tick_once(tk, i % 5 == 0);
		struct timespec ts = { 0, 50000000 };
		nanosleep(&ts, NULL);
	}
	return NULL;
}

int
main(int argc, char **argv)
{
	const char *url[N_SVC] = { NULL, NULL, NULL };
	const char *ticks = NULL;
	uint32_t duration_ms = 5000, deadline_ms = 3000, resolve_ms = 2000,
	         eject_base_ms = 0;
	size_t tasks = 8, batch = 20;
	uint64_t max_iters = 100000;
	static const struct option opts[] = {
		{ "users", required_argument, NULL, 'u' },
		{ "answers", required_argument, NULL, 'a' },
		{ "cache", required_argument, NULL, 'c' },
		{ "duration-ms", required_argument, NULL, 'd' },
		{ "tasks", required_argument, NULL, 't' },
		{ "batch", required_argument, NULL, 'b' },
		{ "max-iters", required_argument, NULL, 'm' },
		{ "deadline-ms", required_argument, NULL, 'D' },
		{ "resolve-ms", required_argument, NULL, 'r' },
		{ "eject-base-ms", required_argument, NULL, 'e' },
		{ "ticks", required_argument, NULL, 'k' },
		{ "list-incr", no_argument, NULL, 'l' },
		{ NULL, 0, NULL, 0 },
	};
	int o;
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case 'u':
			url[SVC_USERS] = optarg;
			break;
		case 'a':
			url[SVC_ANSWERS] = optarg;
			break;
		case 'c':
			url[SVC_CACHE] = optarg;
			break;
		case 'd':
			duration_ms = (uint32_t)strtoul(optarg, NULL, 10);
			break;
		case 't':
			tasks = strtoul(optarg, NULL, 10);
			break;
		case 'b':
			batch = strtoul(optarg, NULL, 10);
			break;
		case 'm':
			max_iters = strtoull(optarg, NULL, 10);
			break;
		case 'D':
			deadline_ms = (uint32_t)strtoul(optarg, NULL, 10);
			break;
		case 'r':
			resolve_ms = (uint32_t)strtoul(optarg, NULL, 10);
			break;
		case 'e':
			eject_base_ms = (uint32_t)strtoul(optarg, NULL, 10);
			break;
		case 'k':
			ticks = optarg;
			break;
		case 'l':
			list_incr = true;
			break;
		default:
			fprintf(stderr,
			    "usage: %s --users URL --answers URL "
			    "[--cache URL] [--duration-ms N] ...\n",
			    argv[0]);
			return 2;
		}
	}
	if (url[SVC_USERS] == NULL || url[SVC_ANSWERS] == NULL || tasks == 0 ||
	    tasks > MAX_TASKS || batch == 0 || batch > MAX_BATCH ||
	    duration_ms > 600000) {
		fprintf(stderr,
		    "scale_load: --users and --answers are needed; "
		    "1..64 tasks, 1..500 calls a batch, at most "
		    "600,000 ms\n");
		return 2;
	}
	signal(SIGPIPE, SIG_IGN);
	static load l;
	pthread_mutex_init(&l.mu, NULL);
	l.batch = batch;
	l.max_iters = max_iters;
	const asynq_rpc_service_desc *descs[N_SVC] = {
		&asynq__users__users__asynq_desc,
		&asynq__answers__answers__asynq_desc,
		&asynq__cache__cache__asynq_desc,
	};
	for (int s = 0; s < N_SVC; s++) {
		if (url[s] == NULL)
			continue;
		const char *urls[] = { url[s] };
		asynq_rpc_channel_cfg cfg = { .urls = urls,
			.n_urls = 1,
			.default_deadline_ms = deadline_ms,
			.resolve_interval_ms = resolve_ms,
			.eject_base_ms = eject_base_ms,
			.wait_for_ready = true };
		asynq_status st =
		    asynq_rpc_channel_alloc(&l.ch[s], descs[s], &cfg);
		if (st != ASYNQ_OK) {
			fprintf(stderr, "scale_load: channel %s: %s\n", url[s],
			    asynq_strerror(st));
			return 1;
		}
	}
	asynq_runtime *rt;
	asynq_runtime_cfg rcfg = { .workers = 2 };
	if (asynq_runtime_alloc(&rt, &rcfg) != ASYNQ_OK) {
		fprintf(stderr, "scale_load: no runtime\n");
		return 1;
	}
	static ticker tk;
	tk.l = &l;
	if (ticks != NULL && (tk.out = fopen(ticks, "w")) == NULL) {
		perror(ticks);
		return 1;
	}
	pthread_t tth;
	pthread_create(&tth, NULL, ticker_main, &tk);
	int64_t t_start = wall_ms();
	l.end_ns = mono_ns() + (int64_t)duration_ms * 1000000;
	worker_arg wa[MAX_TASKS];
	asynq_ticket *tkts[MAX_TASKS];
	for (size_t i = 0; i < tasks; i++) {
		wa[i] = (worker_arg){ &l, (unsigned)i };
		if (asynq_runtime_submit(rt, i % 2, task_main, &wa[i],
		        &tkts[i]) != ASYNQ_OK) {
			fprintf(stderr, "scale_load: submit failed\n");
			return 1;
		}
	}
	for (size_t i = 0; i < tasks; i++) {
		asynq_ticket_wait(tkts[i]);
		asynq_ticket_free(tkts[i]);
	}
	int64_t t_end = wall_ms();
	atomic_store(&tk.stop, true);
	pthread_join(tth, NULL);
	tick_once(&tk, true);
	if (tk.out != NULL)
		fclose(tk.out);
	printf("load start_ms=%" PRId64 " end_ms=%" PRId64 " iters=%" PRIu64
	       "\n",
	    t_start, t_end, atomic_load(&l.iters));
	for (int s = 0; s < N_SVC; s++) {
		if (l.ch[s] == NULL)
			continue;
		tally *t = &l.t[s];
		asynq_rpc_channel_stats cs;
		asynq_rpc_channel_stats_get(l.ch[s], &cs);
		printf("svc %s calls=%" PRIu64 " ok=%" PRIu64 " failed=%" PRIu64
		       " deadline=%" PRIu64 " unavailable=%" PRIu64
		       " aborted=%" PRIu64 " other=%" PRIu64 " max_ms=%" PRIu64
		       " max_failed_ms=%" PRIu64 " resends=%" PRIu64
		       " retries=%" PRIu64 "\n",
		    svc_names[s], atomic_load(&t->calls), atomic_load(&t->ok),
		    atomic_load(&t->failed), atomic_load(&t->deadline),
		    atomic_load(&t->unavailable), atomic_load(&t->aborted),
		    atomic_load(&t->other), atomic_load(&t->max_ms),
		    atomic_load(&t->max_failed_ms), cs.resends, cs.retries);
		asynq_rpc_replica_info info[MAX_REPS];
		size_t n = asynq_rpc_channel_replicas(l.ch[s], info, MAX_REPS);
		for (size_t i = 0; i < n && i < MAX_REPS; i++) {
			int64_t first = 0;
			for (size_t k = 0; k < tk.n[s]; k++)
				if (strcmp(tk.urls[s][k], info[i].url) == 0)
					first = tk.first[s][k];
			printf("replica %s url=%s requests=%" PRIu64
			       " calls=%" PRIu64 " ejections=%" PRIu64
			       " first_ms=%" PRId64 " state=%s\n",
			    svc_names[s], info[i].url, info[i].requests,
			    info[i].calls, info[i].ejections, first,
			    info[i].state);
		}
	}
	fflush(stdout);
	asynq_runtime_free(rt);
	for (int s = 0; s < N_SVC; s++)
		asynq_rpc_channel_free(l.ch[s]);
	asynq_thread_fini();
	return 0;
}
