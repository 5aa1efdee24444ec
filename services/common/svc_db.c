/* SPDX-License-Identifier: MIT */
/*
 * Per-worker read-only SQLite connections and batched IN lookups for the
 * example services.
 *
 * Design notes: slot i of svc_db.conns belongs to worker i of the one
 * runtime the service runs on; only that worker's thread touches it while the
 * runtime runs (hence SQLITE_OPEN_NOMUTEX), and svc_db_fini, which runs after
 * the runtime stopped, closes whatever is left. Queries run on the handler's
 * coroutine stack, so services give their runtime larger stacks
 * (svc_runtime_alloc). The query counter is the one number tests and logs
 * read from other threads, hence atomic.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asynq/runtime.h"
#include "services/common/svc.h"

static sqlite3 *
conn_open(const char *path)
{
	sqlite3 *c = NULL;
	if (sqlite3_open_v2(path, &c,
	        SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX,
	        NULL) != SQLITE_OK) {
		fprintf(stderr, "%s: %s\n", path,
		    c != NULL ? sqlite3_errmsg(c) : "out of memory");
		sqlite3_close(c);
		return NULL;
	}
	return c;
}

asynq_status
svc_db_init(svc_db *db, const char *path, const char *table)
{
	memset(db, 0, sizeof(*db));
	atomic_init(&db->queries, 0);
	pthread_mutex_init(&db->idle_mu, NULL);
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return ASYNQ_NOT_FOUND;
	fclose(f);
	sqlite3 *c = conn_open(path);
	if (c == NULL)
		return ASYNQ_INTERNAL;
	sqlite3_stmt *st = NULL;
	int ok = sqlite3_prepare_v2(c,
	             "SELECT 1 FROM sqlite_master WHERE type = 'table'"
	             " AND name = ?",
	             -1, &st, NULL) == SQLITE_OK &&
	    sqlite3_bind_text(st, 1, table, -1, SQLITE_STATIC) == SQLITE_OK &&
	    sqlite3_step(st) == SQLITE_ROW;
	sqlite3_finalize(st);
	sqlite3_close(c);
	if (!ok) {
		fprintf(stderr, "%s: no table %s\n", path, table);
		return ASYNQ_INTERNAL;
	}
	if ((db->path = strdup(path)) == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	return ASYNQ_OK;
}

void
svc_db_fini(svc_db *db)
{
	if (db == NULL)
		return;
	for (size_t i = 0; i < SVC_MAX_WORKERS; i++) {
		sqlite3_close(db->conns[i]);
		db->conns[i] = NULL;
	}
	for (size_t i = 0; i < db->n_idle; i++)
		sqlite3_close(db->idle[i]);
	db->n_idle = 0;
	pthread_mutex_destroy(&db->idle_mu);
	free(db->path);
	db->path = NULL;
}

void
svc_db_worker_open(svc_db *db, size_t w)
{
	if (w < SVC_MAX_WORKERS && db->conns[w] == NULL)
		db->conns[w] = conn_open(db->path);
}

void
svc_db_worker_close(svc_db *db, size_t w)
{
	if (w < SVC_MAX_WORKERS) {
		sqlite3_close(db->conns[w]);
		db->conns[w] = NULL;
	}
}

static void
db_hook_start(asynq_runtime *rt, size_t w, void *arg)
{
	(void)rt;
	svc_db_worker_open(arg, w);
}

static void
db_hook_stop(asynq_runtime *rt, size_t w, void *arg)
{
	(void)rt;
	svc_db_worker_close(arg, w);
}

svc_hook
svc_db_hook(svc_db *db)
{
	return (svc_hook){ .start = db_hook_start,
		.stop = db_hook_stop,
		.arg = db };
}

sqlite3 *
svc_db_conn(svc_db *db)
{
	int w = asynq_runtime_current_worker();
	if (w < 0 || w >= SVC_MAX_WORKERS)
		return NULL;
	if (db->conns[w] == NULL)
		db->conns[w] = conn_open(db->path);
	return db->conns[w];
}

/* Runs one IN statement over ids[0..n). */
static asynq_status
in_chunk(svc_db *db, sqlite3 *c, const char *select, const char *column,
    const char *tail, const int64_t *ids, size_t n, svc_row_fn fn, void *arg)
{
	size_t len =
	    strlen(select) + strlen(column) + strlen(tail) + 2 * n + 32;
	char *sql = malloc(len);
	sqlite3_stmt *st = NULL;
	asynq_status rv = ASYNQ_OK;
	int rc;

	if (sql == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	size_t off =
	    (size_t)snprintf(sql, len, "%s WHERE %s IN (", select, column);
	for (size_t i = 0; i < n; i++) {
		sql[off++] = '?';
		sql[off++] = i + 1 < n ? ',' : ')';
	}
	snprintf(sql + off, len - off, " %s", tail);
	if (sqlite3_prepare_v2(c, sql, -1, &st, NULL) != SQLITE_OK) {
		fprintf(stderr, "%s: %s\n", db->path, sqlite3_errmsg(c));
		rv = ASYNQ_INTERNAL;
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		sqlite3_bind_int64(st, (int)i + 1, ids[i]);
	atomic_fetch_add(&db->queries, 1);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW) {
		if ((rv = fn(st, arg)) != ASYNQ_OK)
			goto out;
	}
	if (rc != SQLITE_DONE) {
		fprintf(stderr, "%s: %s\n", db->path, sqlite3_errmsg(c));
		rv = ASYNQ_INTERNAL;
	}
out:
	sqlite3_finalize(st);
	free(sql);
	return rv;
}

/* Runs the whole IN lookup on connection c. */
static asynq_status
in_all(svc_db *db, sqlite3 *c, const char *select, const char *column,
    const char *tail, const int64_t *ids, size_t n, svc_row_fn fn, void *arg)
{
	if (db->before_query != NULL)
		ASYNQ_TRY(db->before_query(db->before_query_arg));
	size_t max = (size_t)sqlite3_limit(c, SQLITE_LIMIT_VARIABLE_NUMBER, -1);
	if (max == 0)
		max = 999;
	for (size_t i = 0; i < n; i += max) {
		size_t k = n - i < max ? n - i : max;
		ASYNQ_TRY(
		    in_chunk(db, c, select, column, tail, ids + i, k, fn, arg));
	}
	return ASYNQ_OK;
}

/* One lookup handed to the blocking pool. */
typedef struct db_job {
	svc_db *db;
	const char *select, *column, *tail;
	const int64_t *ids;
	size_t n;
	svc_row_fn fn;
	void *arg;
} db_job;

static asynq_status
db_job_run(void *p, const char **why)
{
	db_job *j = p;
	svc_db *db = j->db;
	sqlite3 *c = NULL;
	pthread_mutex_lock(&db->idle_mu);
	if (db->n_idle > 0)
		c = db->idle[--db->n_idle];
	pthread_mutex_unlock(&db->idle_mu);
	if (c == NULL && (c = conn_open(db->path)) == NULL) {
		*why = "cannot open the database";
		return ASYNQ_UNAVAILABLE;
	}
	asynq_status rv = in_all(db, c, j->select, j->column, j->tail, j->ids,
	    j->n, j->fn, j->arg);
	pthread_mutex_lock(&db->idle_mu);
	if (db->n_idle < SVC_DB_IDLE) {
		db->idle[db->n_idle++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&db->idle_mu);
	sqlite3_close(c);
	if (rv != ASYNQ_OK)
		*why = "query failed";
	return rv;
}

asynq_status
svc_db_in(svc_db *db, const char *select, const char *column, const char *tail,
    const int64_t *ids, size_t n, svc_row_fn fn, void *arg)
{
	asynq_task *t = asynq_task_current();
	if (!db->on_worker && t != NULL) {
		db_job j = { db, select, column, tail, ids, n, fn, arg };
		asynq_future *f = asynq_run_blocking(db_job_run, &j);
		if (f == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		asynq_status st = asynq_await(t, f);
		asynq_future_rele(f);
		return st;
	}
	sqlite3 *c = svc_db_conn(db);
	if (c == NULL)
		return ASYNQ_UNAVAILABLE;
	return in_all(db, c, select, column, tail, ids, n, fn, arg);
}
