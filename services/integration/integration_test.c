/* SPDX-License-Identifier: MIT */
/*
 * The example services end to end in one process: users, answers and
 * frontend, each on its own two-worker runtime, talking over inproc://, on
 * small generated databases in TEST_TMPDIR. Client tasks on the test thread
 * call the frontend (and the users service directly); the tests check every
 * value against the databases, read independently with a direct SQL join,
 * and check the batching from the services' counters: N lookups cost one
 * request and one SQL query per service and level.
 *
 * Assertions run on the test thread only, never on a coroutine stack: tasks
 * record what they see in plain structs.
 */
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <unistd.h>

#include "services/answers/answers.h"
#include "services/cache/cache.h"
#include "services/frontend/frontend.h"
#include "services/users/users.h"

#define N_USERS 1000
#define N_ANSWERS 10000
#define N_QUESTIONS 1000

#define FRONTEND (&asynq__frontend__frontend__asynq_desc)
#define AUTHOR_NAMES                                                           \
	(&FRONTEND->methods                                                    \
	        [ASYNQ__FRONTEND__FRONTEND__ASYNQ_METHOD_AUTHOR_NAMES])
#define QUESTION_PAGE                                                          \
	(&FRONTEND->methods                                                    \
	        [ASYNQ__FRONTEND__FRONTEND__ASYNQ_METHOD_QUESTION_PAGE])
#define GET_USER                                                               \
	(&asynq__users__users__asynq_desc                                      \
	        .methods[ASYNQ__USERS__USERS__ASYNQ_METHOD_GET_USER])

static char users_db[1024], answers_db[1024];

/* ---- Fixture: the three services ------------------------------------------
 */

typedef struct fixture {
	svc_hooks users_hooks, answers_hooks;
	asynq_runtime *users_rt, *answers_rt, *frontend_rt, *cache_rt;
	users_service *users;
	answers_service *answers;
	cache_service *cache;   /* only with fx_setup_cached */
	asynq_rpc_channel *cch; /* the test's channel to the cache */
	frontend_service *frontend;
	asynq_rpc_channel *ch;       /* the test's channel to the frontend */
	asynq_rpc_channel *uch;      /* the test's channel to the users */
	sqlite3 *db;                 /* the test's own view of the data */
	svc_counters u0, a0, f0, c0; /* counters before the test's calls */
} fixture;

static int
group_setup(void **state)
{
	(void)state;
	const char *dir = getenv("TEST_TMPDIR");
	if (dir == NULL)
		dir = "/tmp";
	snprintf(users_db, sizeof(users_db), "%s/users-%d.db", dir, N_USERS);
	snprintf(answers_db, sizeof(answers_db), "%s/answers-%d-%d-%d.db", dir,
	    N_ANSWERS, N_QUESTIONS, N_USERS);
	svc_data_cfg cfg = {
		.users = N_USERS,
		.answers = N_ANSWERS,
		.questions = N_QUESTIONS,
	};
	if (svc_data_users_ensure(users_db, &cfg, NULL) != ASYNQ_OK ||
	    svc_data_answers_ensure(answers_db, &cfg, NULL) != ASYNQ_OK)
		return -1;
	return 0;
}

static asynq_rpc_channel *
channel(const asynq_rpc_service_desc *svc, const char *url)
{
	const char *urls[] = { url };
	asynq_rpc_channel_cfg cfg = { .urls = urls, .n_urls = 1 };
	asynq_rpc_channel *ch = NULL;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, svc, &cfg), ASYNQ_OK);
	return ch;
}

/* Starts users, answers, frontend and, with cache_bytes != 0, a cache of
 * that many bytes that the frontend reads names through. */
static int
fx_start(void **state, size_t cache_bytes)
{
	static int seq;
	char uurl[64], aurl[64], furl[64], curl[64];
	fixture *fx = calloc(1, sizeof(*fx));
	assert_non_null(fx);
	seq++;
	snprintf(uurl, sizeof(uurl), "inproc://svc-users-%d", seq);
	snprintf(aurl, sizeof(aurl), "inproc://svc-answers-%d", seq);
	snprintf(furl, sizeof(furl), "inproc://svc-frontend-%d", seq);
	snprintf(curl, sizeof(curl), "inproc://svc-cache-%d", seq);

	if (cache_bytes != 0) {
		assert_int_equal(cache_service_alloc(&fx->cache, cache_bytes),
		    ASYNQ_OK);
		assert_int_equal(svc_runtime_alloc(&fx->cache_rt, 2, NULL),
		    ASYNQ_OK);
		assert_int_equal(
		    cache_service_start(fx->cache, fx->cache_rt, curl, NULL),
		    ASYNQ_OK);
		fx->cch = channel(&asynq__cache__cache__asynq_desc, curl);
	}

	assert_int_equal(users_service_alloc(&fx->users, users_db), ASYNQ_OK);
	assert_int_equal(
	    svc_hooks_add(&fx->users_hooks, users_service_hook(fx->users)),
	    ASYNQ_OK);
	assert_int_equal(svc_runtime_alloc(&fx->users_rt, 2, &fx->users_hooks),
	    ASYNQ_OK);
	assert_int_equal(
	    users_service_start(fx->users, fx->users_rt, uurl, NULL), ASYNQ_OK);

	assert_int_equal(answers_service_alloc(&fx->answers, answers_db),
	    ASYNQ_OK);
	assert_int_equal(svc_hooks_add(&fx->answers_hooks,
	                     answers_service_hook(fx->answers)),
	    ASYNQ_OK);
	assert_int_equal(
	    svc_runtime_alloc(&fx->answers_rt, 2, &fx->answers_hooks),
	    ASYNQ_OK);
	assert_int_equal(
	    answers_service_start(fx->answers, fx->answers_rt, aurl, NULL),
	    ASYNQ_OK);

	assert_int_equal(frontend_service_alloc(&fx->frontend, uurl, aurl,
	                     fx->cache != NULL ? curl : NULL),
	    ASYNQ_OK);
	assert_int_equal(svc_runtime_alloc(&fx->frontend_rt, 2, NULL),
	    ASYNQ_OK);
	assert_int_equal(
	    frontend_service_start(fx->frontend, fx->frontend_rt, furl, NULL),
	    ASYNQ_OK);

	fx->ch = channel(FRONTEND, furl);
	fx->uch = channel(&asynq__users__users__asynq_desc, uurl);

	assert_int_equal(
	    sqlite3_open_v2(answers_db, &fx->db, SQLITE_OPEN_READONLY, NULL),
	    SQLITE_OK);
	char attach[1200];
	snprintf(attach, sizeof(attach), "ATTACH DATABASE '%s' AS u;",
	    users_db);
	assert_int_equal(sqlite3_exec(fx->db, attach, NULL, NULL, NULL),
	    SQLITE_OK);
	*state = fx;
	return 0;
}

static int
fx_setup(void **state)
{
	return fx_start(state, 0);
}

static int
fx_setup_cached(void **state)
{
	return fx_start(state, 1u << 20);
}

static int
fx_teardown(void **state)
{
	fixture *fx = *state;
	asynq_rpc_channel_free(fx->ch);
	asynq_rpc_channel_free(fx->uch);
	asynq_rpc_channel_free(fx->cch);
	asynq_thread_fini();
	frontend_service_close(fx->frontend);
	asynq_runtime_free(fx->frontend_rt);
	frontend_service_free(fx->frontend);
	answers_service_close(fx->answers);
	asynq_runtime_free(fx->answers_rt);
	answers_service_free(fx->answers);
	users_service_close(fx->users);
	asynq_runtime_free(fx->users_rt);
	users_service_free(fx->users);
	cache_service_close(fx->cache);
	asynq_runtime_free(fx->cache_rt);
	cache_service_free(fx->cache);
	sqlite3_close(fx->db);
	free(fx);
	return 0;
}

/* Remembers the counters, so checks count only what follows. */
static void
counters_mark(fixture *fx)
{
	memset(&fx->u0, 0, sizeof(fx->u0));
	memset(&fx->a0, 0, sizeof(fx->a0));
	memset(&fx->f0, 0, sizeof(fx->f0));
	users_service_counters(fx->users, &fx->u0);
	answers_service_counters(fx->answers, &fx->a0);
	frontend_service_counters(fx->frontend, &fx->f0);
	memset(&fx->c0, 0, sizeof(fx->c0));
	if (fx->cache != NULL)
		cache_service_counters(fx->cache, &fx->c0);
}

/* Counter deltas since counters_mark. */
static svc_counters
delta(void (*fn)(void *, svc_counters *), void *s, const svc_counters *was)
{
	svc_counters now = { 0 };
	fn(s, &now);
	now.calls -= was->calls;
	now.requests -= was->requests;
	now.sql -= was->sql;
	now.out_calls -= was->out_calls;
	now.out_requests -= was->out_requests;
	return now;
}

/* ---- The independent view: direct SQL -------------------------------------
 */

static char *
sql_author_name(sqlite3 *db, int64_t aid)
{
	sqlite3_stmt *st;
	char *name = NULL;
	assert_int_equal(sqlite3_prepare_v2(db,
	                     "SELECT u.name FROM answers a JOIN u.users u"
	                     " ON u.id = a.author_id WHERE a.id = ?",
	                     -1, &st, NULL),
	    SQLITE_OK);
	sqlite3_bind_int64(st, 1, aid);
	if (sqlite3_step(st) == SQLITE_ROW)
		name = strdup((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return name;
}

/* The number of distinct authors of answers aids[0..n). */
static int64_t
sql_distinct_authors(sqlite3 *db, const int64_t *aids, size_t n)
{
	size_t cap = 64 + n * 24;
	char *q = malloc(cap);
	assert_non_null(q);
	size_t k = (size_t)snprintf(q, cap,
	    "SELECT COUNT(DISTINCT author_id) FROM answers WHERE id IN (");
	for (size_t i = 0; i < n; i++)
		k += (size_t)snprintf(q + k, cap - k, "%s%lld", i ? "," : "",
		    (long long)aids[i]);
	snprintf(q + k, cap - k, ")");
	sqlite3_stmt *st;
	assert_int_equal(sqlite3_prepare_v2(db, q, -1, &st, NULL), SQLITE_OK);
	int64_t v = -1;
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	free(q);
	return v;
}

static int64_t
sql_i64(sqlite3 *db, const char *sql)
{
	sqlite3_stmt *st;
	int64_t v = -1;
	assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
	if (sqlite3_step(st) == SQLITE_ROW)
		v = sqlite3_column_int64(st, 0);
	sqlite3_finalize(st);
	return v;
}

/* ---- Client tasks ----------------------------------------------------------
 */

typedef struct call_job {
	asynq_rpc_channel *ch;
	const asynq_rpc_method_desc *m;
	const ProtobufCMessage *req;
	asynq_future *reply; /* kept for the test thread to read */
	asynq_status st;
} call_job;

/* One call, awaited from a task. */
static asynq_status
call_main(asynq_task *t, void *arg)
{
	call_job *j = arg;
	j->reply = asynq_rpc_call(j->ch, j->m, j->req);
	j->st = asynq_await(t, j->reply);
	return ASYNQ_OK;
}

static void
run_call(call_job *j)
{
	asynq_future *f = asynq_spawn(call_main, j);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

/* ---- Tests -------------------------------------------------------------- */

static void
test_services_author_names_batched(void **state)
{
	fixture *fx = *state;
	enum { N = 100 };
	int64_t aids[N];
	for (size_t i = 0; i < N; i++)
		aids[i] = 1 + (int64_t)((i * 7919) % N_ANSWERS);
	Asynq__Frontend__AnswerIds req = ASYNQ__FRONTEND__ANSWER_IDS__INIT;
	req.n_ids = N;
	req.ids = aids;

	counters_mark(fx);
	call_job j = { fx->ch, AUTHOR_NAMES, &req.base, NULL, ASYNQ_UNKNOWN };
	run_call(&j);
	assert_int_equal(j.st, ASYNQ_OK);
	const Asynq__Frontend__Names *names = asynq_future_ptr(j.reply);
	assert_non_null(names);
	assert_int_equal(names->n_names, N);
	for (size_t i = 0; i < N; i++) {
		char *want = sql_author_name(fx->db, aids[i]);
		assert_non_null(want);
		assert_string_equal(names->names[i], want);
		free(want);
	}
	asynq_future_rele(j.reply);

	/* 100 GetAnswer calls: one request, one query; likewise GetUser,
	 * each distinct author asked once. */
	int64_t d = sql_distinct_authors(fx->db, aids, N);
	assert_true(d > 1 && d < N);
	svc_counters u = delta(users_service_counters, fx->users, &fx->u0);
	svc_counters a = delta(answers_service_counters, fx->answers, &fx->a0);
	svc_counters f =
	    delta(frontend_service_counters, fx->frontend, &fx->f0);
	assert_int_equal(u.calls, d);
	assert_int_equal(u.requests, 1);
	assert_int_equal(u.sql, 1);
	assert_int_equal(a.calls, N);
	assert_int_equal(a.requests, 1);
	assert_int_equal(a.sql, 1);
	assert_int_equal(f.calls, 1);
	assert_int_equal(f.requests, 1);
	assert_int_equal(f.out_calls, 2 * N);
	assert_int_equal(f.out_requests, 2);
}

static void
test_services_question_page_three_levels(void **state)
{
	fixture *fx = *state;
	/* The question with the most answers. */
	int64_t qid = sql_i64(fx->db,
	    "SELECT question_id FROM answers GROUP BY question_id"
	    " ORDER BY count(*) DESC, question_id LIMIT 1");
	assert_true(qid > 0);
	Asynq__Frontend__QuestionId req = ASYNQ__FRONTEND__QUESTION_ID__INIT;
	req.id = qid;

	counters_mark(fx);
	call_job j = { fx->ch, QUESTION_PAGE, &req.base, NULL, ASYNQ_UNKNOWN };
	run_call(&j);
	assert_int_equal(j.st, ASYNQ_OK);
	const Asynq__Frontend__Page *page = asynq_future_ptr(j.reply);
	assert_non_null(page);
	assert_int_equal(page->question_id, qid);

	sqlite3_stmt *st;
	assert_int_equal(sqlite3_prepare_v2(fx->db,
	                     "SELECT a.id, a.author_id, u.name, a.body"
	                     " FROM answers a JOIN u.users u"
	                     " ON u.id = a.author_id"
	                     " WHERE a.question_id = ? ORDER BY a.id",
	                     -1, &st, NULL),
	    SQLITE_OK);
	sqlite3_bind_int64(st, 1, qid);
	size_t n = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		assert_true(n < page->n_items);
		const Asynq__Frontend__PageItem *it = page->items[n++];
		assert_int_equal(it->answer_id, sqlite3_column_int64(st, 0));
		assert_int_equal(it->author_id, sqlite3_column_int64(st, 1));
		assert_string_equal(it->author_name,
		    (const char *)sqlite3_column_text(st, 2));
		assert_string_equal(it->body,
		    (const char *)sqlite3_column_text(st, 3));
	}
	sqlite3_finalize(st);
	assert_true(n > 1);
	assert_int_equal(page->n_items, n);
	asynq_future_rele(j.reply);

	/* ListAnswers, then GetAnswer for each: two requests, two queries;
	 * GetUser for each author: one request, one query. */
	svc_counters u = delta(users_service_counters, fx->users, &fx->u0);
	svc_counters a = delta(answers_service_counters, fx->answers, &fx->a0);
	assert_int_equal(a.requests, 2);
	assert_int_equal(a.sql, 2);
	assert_int_equal(a.calls, 1 + n);
	assert_int_equal(u.requests, 1);
	assert_int_equal(u.sql, 1);
	assert_int_equal(u.calls, n);
}

static void
test_services_unknown_answer_not_found(void **state)
{
	fixture *fx = *state;
	int64_t aids[] = { 1, N_ANSWERS + 5, 2 };
	Asynq__Frontend__AnswerIds req = ASYNQ__FRONTEND__ANSWER_IDS__INIT;
	req.n_ids = 3;
	req.ids = aids;
	call_job j = { fx->ch, AUTHOR_NAMES, &req.base, NULL, ASYNQ_UNKNOWN };
	run_call(&j);
	assert_int_equal(j.st, ASYNQ_NOT_FOUND);
	const char *msg = asynq_error_message(asynq_future_error(j.reply));
	assert_non_null(strstr(msg, "answer 10005"));
	assert_non_null(strstr(msg, "no such answer"));
	asynq_future_rele(j.reply);
}

/* Several GetUser calls, made by one task, await all. */
typedef struct users_job {
	asynq_rpc_channel *ch;
	const int64_t *ids;
	size_t n;
	asynq_future **out;
} users_job;

static asynq_status
users_main(asynq_task *t, void *arg)
{
	users_job *j = arg;
	for (size_t i = 0; i < j->n; i++) {
		Asynq__Users__UserId r = ASYNQ__USERS__USER_ID__INIT;
		r.id = j->ids[i];
		j->out[i] = asynq_rpc_call(j->ch, GET_USER, &r.base);
	}
	(void)asynq_await_all(t, j->out, j->n);
	return ASYNQ_OK;
}

static void
test_users_get_user_whole_batch(void **state)
{
	fixture *fx = *state;
	/* Repeats and unknown ids in one batch. */
	static const int64_t ids[] = { 5, 0, 1, N_USERS, N_USERS + 1, 5, -3 };
	enum { N = sizeof(ids) / sizeof(ids[0]) };
	asynq_future *out[N];

	counters_mark(fx);
	users_job j = { fx->uch, ids, N, out };
	asynq_future *f = asynq_spawn(users_main, &j);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	for (size_t i = 0; i < N; i++) {
		if (ids[i] < 1 || ids[i] > N_USERS) {
			assert_int_equal(asynq_future_status(out[i]),
			    ASYNQ_NOT_FOUND);
			/* Each missing id named in its own caller's error. */
			char want[64];
			snprintf(want, sizeof(want), "no such user: %lld",
			    (long long)ids[i]);
			assert_string_equal(
			    asynq_error_message(asynq_future_error(out[i])),
			    want);
			continue;
		}
		assert_int_equal(asynq_future_status(out[i]), ASYNQ_OK);
		const Asynq__Users__User *u = asynq_future_ptr(out[i]);
		char want[64];
		svc_user_name(ids[i], want, sizeof(want));
		assert_int_equal(u->id, ids[i]);
		assert_string_equal(u->name, want);
	}
	asynq_future_rele_n(out, N);
	svc_counters u = delta(users_service_counters, fx->users, &fx->u0);
	assert_int_equal(u.requests, 1);
	assert_int_equal(u.sql, 1);
	/* Id 5 twice: asked once, both callers answered. */
	assert_int_equal(u.calls, N - 1);
}

static void
test_data_deterministic_and_kept(void **state)
{
	fixture *fx = *state;
	bool created = true;
	svc_data_cfg cfg = { .users = 5 };
	/* An existing file is kept as it is, whatever the sizes asked. */
	assert_int_equal(svc_data_users_ensure(users_db, &cfg, &created),
	    ASYNQ_OK);
	assert_false(created);
	assert_int_equal(sql_i64(fx->db, "SELECT count(*) FROM u.users"),
	    N_USERS);
	assert_int_equal(sql_i64(fx->db, "SELECT count(*) FROM answers"),
	    N_ANSWERS);
	assert_int_equal(sql_i64(fx->db,
	                     "SELECT count(*) FROM answers WHERE"
	                     " question_id NOT BETWEEN 1 AND 1000"
	                     " OR author_id NOT BETWEEN 1 AND 1000"),
	    0);
	/* A second database made with the same sizes has the same rows. */
	char other[1100];
	snprintf(other, sizeof(other), "%s.copy", answers_db);
	remove(other);
	cfg = (svc_data_cfg){ N_USERS, N_ANSWERS, N_QUESTIONS };
	assert_int_equal(svc_data_answers_ensure(other, &cfg, &created),
	    ASYNQ_OK);
	assert_true(created);
	char attach[1200];
	snprintf(attach, sizeof(attach), "ATTACH DATABASE '%s' AS c;", other);
	assert_int_equal(sqlite3_exec(fx->db, attach, NULL, NULL, NULL),
	    SQLITE_OK);
	assert_int_equal(sql_i64(fx->db,
	                     "SELECT count(*) FROM (SELECT * FROM answers"
	                     " EXCEPT SELECT * FROM c.answers)"),
	    0);
	assert_int_equal(
	    sqlite3_exec(fx->db, "DETACH DATABASE c;", NULL, NULL, NULL),
	    SQLITE_OK);
	remove(other);
	/* Names come from the generator's function. */
	char want[64];
	svc_user_name(42, want, sizeof(want));
	sqlite3_stmt *st;
	assert_int_equal(sqlite3_prepare_v2(fx->db,
	                     "SELECT name FROM u.users WHERE id = 42", -1, &st,
	                     NULL),
	    SQLITE_OK);
	assert_int_equal(sqlite3_step(st), SQLITE_ROW);
	assert_string_equal((const char *)sqlite3_column_text(st, 0), want);
	sqlite3_finalize(st);
}

/* Calls AuthorNames for aids[0..n) and checks every name against SQL. */
static void
author_names_check(fixture *fx, const int64_t *aids, size_t n)
{
	Asynq__Frontend__AnswerIds req = ASYNQ__FRONTEND__ANSWER_IDS__INIT;
	req.n_ids = n;
	req.ids = (int64_t *)aids;
	call_job j = { fx->ch, AUTHOR_NAMES, &req.base, NULL, ASYNQ_UNKNOWN };
	run_call(&j);
	assert_int_equal(j.st, ASYNQ_OK);
	const Asynq__Frontend__Names *names = asynq_future_ptr(j.reply);
	assert_int_equal(names->n_names, n);
	for (size_t i = 0; i < n; i++) {
		char *want = sql_author_name(fx->db, aids[i]);
		assert_non_null(want);
		assert_string_equal(names->names[i], want);
		free(want);
	}
	asynq_future_rele(j.reply);
}

static void
test_services_author_names_cache_aside(void **state)
{
	fixture *fx = *state;
	enum { N = 100 };
	int64_t aids[N];
	for (size_t i = 0; i < N; i++)
		aids[i] = 1 + (int64_t)((i * 7919) % N_ANSWERS);

	/* Cold: one Get request (all miss), one GetUser request and query,
	 * one Set request; each distinct author once in each. */
	int64_t d = sql_distinct_authors(fx->db, aids, N);
	counters_mark(fx);
	author_names_check(fx, aids, N);
	svc_counters u = delta(users_service_counters, fx->users, &fx->u0);
	svc_counters c = delta(cache_service_counters, fx->cache, &fx->c0);
	assert_int_equal(u.requests, 1);
	assert_int_equal(u.sql, 1);
	assert_int_equal(u.calls, d);
	assert_int_equal(c.requests, 2);
	assert_int_equal(c.calls, 2 * d);
	cache_stats cs;
	cache_service_stats_get(fx->cache, &cs);
	assert_int_equal(cs.misses, d);
	assert_int_equal(cs.hits, 0);
	assert_int_equal(cs.sets, d);

	/* Warm: every name from the cache, the users service untouched. */
	counters_mark(fx);
	author_names_check(fx, aids, N);
	u = delta(users_service_counters, fx->users, &fx->u0);
	c = delta(cache_service_counters, fx->cache, &fx->c0);
	assert_int_equal(u.requests, 0);
	assert_int_equal(u.sql, 0);
	assert_int_equal(c.requests, 1);
	cache_service_stats_get(fx->cache, &cs);
	assert_int_equal(cs.hits, d);
	assert_int_equal(cs.misses, d);
}

/* Cache calls made by one task and awaited together. */
typedef struct cache_job {
	asynq_rpc_channel *ch;
	size_t n;
	const asynq_rpc_method_desc *m[8];
	const ProtobufCMessage *req[8];
	asynq_future *out[8];
} cache_job;

static asynq_status
cache_main(asynq_task *t, void *arg)
{
	cache_job *j = arg;
	for (size_t i = 0; i < j->n; i++)
		j->out[i] = asynq_rpc_call(j->ch, j->m[i], j->req[i]);
	(void)asynq_await_all(t, j->out, j->n);
	return ASYNQ_OK;
}

#define CACHE_M(name)                                                          \
	(&asynq__cache__cache__asynq_desc                                      \
	        .methods[ASYNQ__CACHE__CACHE__ASYNQ_METHOD_##name])

static Asynq__Cache__SetRequest
set_req(const char *k, const char *v, uint32_t ttl_ms)
{
	Asynq__Cache__SetRequest r = ASYNQ__CACHE__SET_REQUEST__INIT;
	r.key.data = (uint8_t *)k;
	r.key.len = strlen(k);
	r.value.data = (uint8_t *)v;
	r.value.len = strlen(v);
	r.ttl_ms = ttl_ms;
	return r;
}

static Asynq__Cache__Key
key_req(const char *k)
{
	Asynq__Cache__Key r = ASYNQ__CACHE__KEY__INIT;
	r.key.data = (uint8_t *)k;
	r.key.len = strlen(k);
	return r;
}

static void
cache_run(cache_job *j)
{
	asynq_future *f = asynq_spawn(cache_main, j);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

static void
cache_done(cache_job *j)
{
	asynq_future_rele_n(j->out, j->n);
	j->n = 0;
}

static void
cache_add(cache_job *j, const asynq_rpc_method_desc *m, const void *req)
{
	j->m[j->n] = m;
	j->req[j->n] = req;
	j->n++;
}

/* The value a Get returned, or NULL for a miss. */
static const char *
got(const cache_job *j, size_t i, char *buf, size_t n)
{
	assert_int_equal(asynq_future_status(j->out[i]), ASYNQ_OK);
	const Asynq__Cache__Value *v = asynq_future_ptr(j->out[i]);
	if (!v->found)
		return NULL;
	snprintf(buf, n, "%.*s", (int)v->value.len,
	    (const char *)v->value.data);
	return buf;
}

static void
test_cache_get_set_delete_ttl_lru(void **state)
{
	(void)state;
	/* Three entries of a 2-byte key and 10-byte value fit, not four. */
	const size_t entry = CACHE_ENTRY_OVERHEAD + 2 + 10;
	cache_service *cs;
	asynq_runtime *rt;
	assert_int_equal(cache_service_alloc(&cs, 3 * entry + entry / 2),
	    ASYNQ_OK);
	assert_int_equal(svc_runtime_alloc(&rt, 2, NULL), ASYNQ_OK);
	assert_int_equal(
	    cache_service_start(cs, rt, "inproc://svc-cache-lru", NULL),
	    ASYNQ_OK);
	asynq_rpc_channel *ch =
	    channel(&asynq__cache__cache__asynq_desc, "inproc://svc-cache-lru");
	cache_job j = { .ch = ch };
	char buf[64];

	/* Batched sets, then gets of a hit and a miss, all in one request
	 * each. */
	Asynq__Cache__SetRequest s1 = set_req("k1", "value-0001", 0);
	Asynq__Cache__SetRequest s2 = set_req("k2", "value-0002", 0);
	Asynq__Cache__SetRequest s3 = set_req("k3", "value-0003", 30);
	cache_add(&j, CACHE_M(SET), &s1);
	cache_add(&j, CACHE_M(SET), &s2);
	cache_add(&j, CACHE_M(SET), &s3);
	cache_run(&j);
	for (size_t i = 0; i < 3; i++)
		assert_int_equal(asynq_future_status(j.out[i]), ASYNQ_OK);
	cache_done(&j);
	Asynq__Cache__Key g1 = key_req("k1"), gx = key_req("nope");
	cache_add(&j, CACHE_M(GET), &g1);
	cache_add(&j, CACHE_M(GET), &gx);
	cache_run(&j);
	assert_string_equal(got(&j, 0, buf, sizeof(buf)), "value-0001");
	assert_null(got(&j, 1, buf, sizeof(buf)));
	cache_done(&j);

	/* k1 was used last: a fourth entry evicts k2, the least recent. */
	Asynq__Cache__SetRequest s4 = set_req("k4", "value-0004", 0);
	cache_add(&j, CACHE_M(SET), &s4);
	cache_run(&j);
	cache_done(&j);
	Asynq__Cache__Key g2 = key_req("k2"), g4 = key_req("k4");
	cache_add(&j, CACHE_M(GET), &g1);
	cache_add(&j, CACHE_M(GET), &g2);
	cache_add(&j, CACHE_M(GET), &g4);
	cache_run(&j);
	assert_string_equal(got(&j, 0, buf, sizeof(buf)), "value-0001");
	assert_null(got(&j, 1, buf, sizeof(buf)));
	assert_string_equal(got(&j, 2, buf, sizeof(buf)), "value-0004");
	cache_done(&j);
	cache_stats st;
	cache_service_stats_get(cs, &st);
	assert_int_equal(st.evictions, 1);
	assert_int_equal(st.entries, 3);
	assert_int_equal(st.bytes, 3 * entry);

	/* k3's TTL passes. */
	usleep(60 * 1000);
	Asynq__Cache__Key g3 = key_req("k3");
	cache_add(&j, CACHE_M(GET), &g3);
	cache_run(&j);
	assert_null(got(&j, 0, buf, sizeof(buf)));
	cache_done(&j);

	/* Delete says whether the key was there. */
	cache_add(&j, CACHE_M(DELETE), &g1);
	cache_add(&j, CACHE_M(DELETE), &g2);
	cache_run(&j);
	assert_true(
	    ((const Asynq__Cache__DeleteReply *)asynq_future_ptr(j.out[0]))
	        ->deleted);
	assert_false(
	    ((const Asynq__Cache__DeleteReply *)asynq_future_ptr(j.out[1]))
	        ->deleted);
	cache_done(&j);

	/* An entry larger than the whole cache is refused. */
	char big[512];
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	Asynq__Cache__SetRequest sb = set_req("kb", big, 0);
	cache_add(&j, CACHE_M(SET), &sb);
	cache_run(&j);
	assert_int_equal(asynq_future_status(j.out[0]),
	    ASYNQ_RESOURCE_EXHAUSTED);
	cache_done(&j);
	cache_service_stats_get(cs, &st);
	assert_int_equal(st.expired, 1);
	assert_int_equal(st.entries, 1);

	svc_counters c = { 0 };
	cache_service_counters(cs, &c);
	assert_int_equal(c.requests, 7);
	asynq_rpc_channel_free(ch);
	asynq_thread_fini();
	cache_service_close(cs);
	asynq_runtime_free(rt);
	cache_service_free(cs);
}

static Asynq__Cache__IncrRequest
incr_req(const char *k, int64_t delta)
{
	Asynq__Cache__IncrRequest r = ASYNQ__CACHE__INCR_REQUEST__INIT;
	r.key.data = (uint8_t *)k;
	r.key.len = strlen(k);
	r.delta = delta;
	return r;
}

static int64_t
incr_value(const cache_job *j, size_t i)
{
	assert_int_equal(asynq_future_status(j->out[i]), ASYNQ_OK);
	return ((const Asynq__Cache__IncrReply *)asynq_future_ptr(j->out[i]))
	    ->value;
}

static void
test_cache_incr_counts_in_text(void **state)
{
	(void)state;
	cache_service *cs;
	asynq_runtime *rt;
	assert_int_equal(cache_service_alloc(&cs, 0), ASYNQ_OK);
	assert_int_equal(svc_runtime_alloc(&rt, 2, NULL), ASYNQ_OK);
	assert_int_equal(
	    cache_service_start(cs, rt, "inproc://svc-cache-incr", NULL),
	    ASYNQ_OK);
	asynq_rpc_channel *ch = channel(&asynq__cache__cache__asynq_desc,
	    "inproc://svc-cache-incr");
	cache_job j = { .ch = ch };
	char buf[64];

	/* Calls of one batch run in order: a missing key counts from 0. */
	Asynq__Cache__IncrRequest a = incr_req("n", 5), b = incr_req("n", -2);
	cache_add(&j, CACHE_M(INCR), &a);
	cache_add(&j, CACHE_M(INCR), &b);
	cache_run(&j);
	assert_int_equal(incr_value(&j, 0), 5);
	assert_int_equal(incr_value(&j, 1), 3);
	cache_done(&j);

	/* The counter is decimal text to Get, and Set can reset it. */
	Asynq__Cache__Key gn = key_req("n");
	cache_add(&j, CACHE_M(GET), &gn);
	cache_run(&j);
	assert_string_equal(got(&j, 0, buf, sizeof(buf)), "3");
	cache_done(&j);
	Asynq__Cache__SetRequest s40 = set_req("n", "40", 0);
	Asynq__Cache__SetRequest st = set_req("t", "text", 0);
	cache_add(&j, CACHE_M(SET), &s40);
	cache_add(&j, CACHE_M(SET), &st);
	cache_run(&j);
	cache_done(&j);

	/* A value that is not a number is left alone; so is an overflow. */
	Asynq__Cache__IncrRequest c = incr_req("n", 2), d = incr_req("t", 1);
	Asynq__Cache__IncrRequest e = incr_req("n", INT64_MAX);
	cache_add(&j, CACHE_M(INCR), &c);
	cache_add(&j, CACHE_M(INCR), &d);
	cache_add(&j, CACHE_M(INCR), &e);
	cache_run(&j);
	assert_int_equal(incr_value(&j, 0), 42);
	assert_int_equal(asynq_future_status(j.out[1]),
	    ASYNQ_FAILED_PRECONDITION);
	assert_int_equal(asynq_future_status(j.out[2]), ASYNQ_OUT_OF_RANGE);
	cache_done(&j);
	Asynq__Cache__Key gt = key_req("t");
	cache_add(&j, CACHE_M(GET), &gn);
	cache_add(&j, CACHE_M(GET), &gt);
	cache_run(&j);
	assert_string_equal(got(&j, 0, buf, sizeof(buf)), "42");
	assert_string_equal(got(&j, 1, buf, sizeof(buf)), "text");
	cache_done(&j);
	cache_stats cst;
	cache_service_stats_get(cs, &cst);
	assert_int_equal(cst.incrs, 3);
	/* The counter's entry is accounted at its text's length. */
	assert_int_equal(cst.bytes, 2 * CACHE_ENTRY_OVERHEAD + 1 + 2 + 1 + 4);

	asynq_rpc_channel_free(ch);
	asynq_thread_fini();
	cache_service_close(cs);
	asynq_runtime_free(rt);
	cache_service_free(cs);
}

/* ---- A slow query does not stall its worker ------------------------------ */

/* The first query blocks until the gate opens (at most 10 s); later ones
 * pass at once. */
static pthread_mutex_t slow_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t slow_cv = PTHREAD_COND_INITIALIZER;
static bool slow_open;
static int slow_queries;

static asynq_status
slow_first_query(void *arg)
{
	(void)arg;
	struct timespec dl;
	clock_gettime(CLOCK_REALTIME, &dl);
	dl.tv_sec += 10;
	pthread_mutex_lock(&slow_mu);
	bool first = slow_queries++ == 0;
	int rv = 0;
	while (first && !slow_open && rv == 0)
		rv = pthread_cond_timedwait(&slow_cv, &slow_mu, &dl);
	bool ok = !first || slow_open;
	pthread_mutex_unlock(&slow_mu);
	return ok ? ASYNQ_OK : ASYNQ_DEADLINE_EXCEEDED;
}

typedef struct slow_job {
	asynq_rpc_channel *ch;
	int64_t id;
	asynq_status st;
	int64_t got;
	bool opens; /* opens the gate once answered */
} slow_job;

static asynq_status
slow_lookup(asynq_task *t, void *arg)
{
	slow_job *j = arg;
	if (j->opens) {
		/* After the first lookup's request has reached the worker. */
		for (int i = 0; i < 2000; i++) {
			pthread_mutex_lock(&slow_mu);
			int q = slow_queries;
			pthread_mutex_unlock(&slow_mu);
			if (q > 0)
				break;
			asynq_future *s = asynq_sleep(1000000);
			(void)asynq_await(t, s);
			asynq_future_rele(s);
		}
	}
	Asynq__Users__UserId r = ASYNQ__USERS__USER_ID__INIT;
	r.id = j->id;
	asynq_future *f = asynq_rpc_call(j->ch, GET_USER, &r.base);
	j->st = asynq_await(t, f);
	const Asynq__Users__User *u = asynq_future_ptr(f);
	j->got = u != NULL ? u->id : -1;
	asynq_future_rele(f);
	if (j->opens) {
		pthread_mutex_lock(&slow_mu);
		slow_open = true;
		pthread_cond_broadcast(&slow_cv);
		pthread_mutex_unlock(&slow_mu);
	}
	return ASYNQ_OK;
}

/* One worker: a GetUser whose query is stuck, and a second GetUser that
 * must be answered meanwhile (it is the one that unsticks the first; with
 * queries on the worker's thread the worker would never read it). */
static void
test_users_slow_query_does_not_stall_worker(void **state)
{
	(void)state;
	users_service *us;
	asynq_runtime *rt;
	svc_hooks hooks = { 0 };
	slow_open = false;
	slow_queries = 0;
	assert_int_equal(users_service_alloc(&us, users_db), ASYNQ_OK);
	users_service_db(us)->before_query = slow_first_query;
	assert_int_equal(svc_hooks_add(&hooks, users_service_hook(us)),
	    ASYNQ_OK);
	assert_int_equal(svc_runtime_alloc(&rt, 1, &hooks), ASYNQ_OK);
	assert_int_equal(
	    users_service_start(us, rt, "inproc://svc-users-slow", NULL),
	    ASYNQ_OK);
	/* Two channels, so the lookups travel as two requests. */
	asynq_rpc_channel *a = channel(&asynq__users__users__asynq_desc,
	    "inproc://svc-users-slow");
	asynq_rpc_channel *b = channel(&asynq__users__users__asynq_desc,
	    "inproc://svc-users-slow");
	slow_job jobs[2] = { { a, 3, ASYNQ_UNKNOWN, 0, false },
		{ b, 4, ASYNQ_UNKNOWN, 0, true } };
	asynq_future *fs[2] = { asynq_spawn(slow_lookup, &jobs[0]),
		asynq_spawn(slow_lookup, &jobs[1]) };
	assert_int_equal(asynq_wait_all(fs, 2), ASYNQ_OK);
	asynq_future_rele_n(fs, 2);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(jobs[i].st, ASYNQ_OK);
		assert_int_equal(jobs[i].got, jobs[i].id);
	}
	assert_int_equal(slow_queries, 2);
	asynq_rpc_channel_free(a);
	asynq_rpc_channel_free(b);
	users_service_close(us);
	asynq_runtime_free(rt);
	users_service_free(us);
}

/* The frontend takes a comma-separated list of replicas' URLs: 15 and 16
 * URLs (the most) open, 17 are refused in words. (users and answers get
 * ports of their own: two channels dialling one address at once share an
 * nng stream dialer, and nng 1.5.2 can then leave a finished dial on its
 * list and abort on the next one.) */
static void
test_frontend_url_lists(void **state)
{
	(void)state;
	for (int n = 15; n <= 17; n++) {
		char lists[2][17 * 24 + 8] = { "", "" };
		for (int k = 0; k < 2; k++) {
			for (int i = 0; i < n; i++) {
				size_t len = strlen(lists[k]);
				snprintf(lists[k] + len, sizeof(lists[k]) - len,
				    "%stcp://127.0.0.1:%d", i != 0 ? "," : "",
				    1 + i + 20 * k + 40 * (n - 15));
			}
		}
		frontend_service *fe = NULL;
		asynq_status st =
		    frontend_service_alloc(&fe, lists[0], lists[1], NULL);
		assert_int_equal(st,
		    n <= 16 ? ASYNQ_OK : ASYNQ_INVALID_ARGUMENT);
		frontend_service_free(fe);
	}
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
		    test_services_author_names_batched, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(
		    test_services_question_page_three_levels, fx_setup,
		    fx_teardown),
		cmocka_unit_test_setup_teardown(
		    test_services_unknown_answer_not_found, fx_setup,
		    fx_teardown),
		cmocka_unit_test_setup_teardown(test_users_get_user_whole_batch,
		    fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(
		    test_data_deterministic_and_kept, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(
		    test_services_author_names_cache_aside, fx_setup_cached,
		    fx_teardown),
		cmocka_unit_test(test_users_slow_query_does_not_stall_worker),
		cmocka_unit_test(test_cache_get_set_delete_ttl_lru),
		cmocka_unit_test(test_cache_incr_counts_in_text),
		cmocka_unit_test(test_frontend_url_lists),
	};
	return cmocka_run_group_tests(tests, group_setup, NULL);
}
