/* SPDX-License-Identifier: MIT */
/*
 * The users service: GetUser answered a whole request at a time with one SQL
 * query (see users.h).
 *
 * Design notes: the whole-batch handler runs as one task on the worker that
 * received the request and queries that worker's own connection, so workers
 * never share SQLite state. Rows come back in id order of the index, not in
 * call order, and a request may ask for one id many times: the handler sorts
 * the rows and binary-searches each call's id. Replies own their strings
 * (the server frees them with protobuf_c_message_free_unpacked).
 */
#include <stdlib.h>
#include <string.h>

#include "services/users/users.h"

struct users_service {
	svc_db db;
	asynq_rpc_server *srv;
	bool srv_of_program; /* made by asynq_serve_add: not ours to free */
	asynq__users__users__asynq_binding binding;
};

typedef struct user_row {
	int64_t id;
	char *name;
} user_row;

typedef struct user_rows {
	user_row *v;
	size_t n, cap;
} user_rows;

static asynq_status
rows_collect(sqlite3_stmt *st, void *arg)
{
	user_rows *r = arg;
	if (r->n == r->cap) {
		size_t cap = r->cap != 0 ? 2 * r->cap : 64;
		user_row *v = realloc(r->v, cap * sizeof(*v));
		if (v == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		r->v = v;
		r->cap = cap;
	}
	const unsigned char *name = sqlite3_column_text(st, 1);
	char *copy = strdup(name != NULL ? (const char *)name : "");
	if (copy == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	r->v[r->n].id = sqlite3_column_int64(st, 0);
	r->v[r->n].name = copy;
	r->n++;
	return ASYNQ_OK;
}

static void
rows_free(user_rows *r)
{
	for (size_t i = 0; i < r->n; i++)
		free(r->v[i].name);
	free(r->v);
}

static int
row_cmp(const void *a, const void *b)
{
	int64_t x = ((const user_row *)a)->id, y = ((const user_row *)b)->id;
	return (x > y) - (x < y);
}

static asynq_status
h_get_user(asynq_task *t, asynq__users__users__get_user__batch_call *calls,
    size_t n, void *ctx)
{
	users_service *s = ctx;
	user_rows rows = { 0 };
	asynq_status rv;
	int64_t *ids;

	if (n == 0)
		return ASYNQ_OK;
	if ((ids = malloc(n * sizeof(*ids))) == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
	for (size_t i = 0; i < n; i++)
		ids[i] = calls[i].req->id;
	rv = svc_db_in(&s->db, "SELECT id, name FROM users", "id", "", ids, n,
	    rows_collect, &rows);
	free(ids);
	if (rv != ASYNQ_OK) {
		rows_free(&rows);
		return asynq_fail(t, rv, "users query failed");
	}
	if (rows.n > 0) /* qsort takes no NULL, even for 0 rows */
		qsort(rows.v, rows.n, sizeof(*rows.v), row_cmp);
	for (size_t i = 0; i < n; i++) {
		user_row key = { calls[i].req->id, NULL };
		const user_row *r = rows.n != 0
		    ? bsearch(&key, rows.v, rows.n, sizeof(*rows.v), row_cmp)
		    : NULL;
		if (r == NULL) {
			asynq_rpc_batch_fail(&calls[i], ASYNQ_NOT_FOUND,
			    "no such user: %lld", (long long)key.id);
			continue;
		}
		Asynq__Users__User *u = malloc(sizeof(*u));
		char *name = strdup(r->name);
		if (u == NULL || name == NULL) {
			free(u);
			free(name);
			calls[i].status = ASYNQ_RESOURCE_EXHAUSTED;
			continue;
		}
		asynq__users__user__init(u);
		u->id = r->id;
		u->name = name;
		calls[i].reply = u;
		calls[i].status = ASYNQ_OK;
	}
	rows_free(&rows);
	return ASYNQ_OK;
}

static asynq_status
users_add(asynq_rpc_server *srv, void *arg)
{
	static const asynq__users__users__asynq_handlers h = {
		.get_user = h_get_user,
	};
	users_service *s = arg;
	return asynq__users__users__asynq_serve(srv, &h, s, &s->binding);
}

asynq_status
users_service_alloc(users_service **sp, const char *db_path)
{
	users_service *s = calloc(1, sizeof(*s));
	asynq_status rv;

	if (s == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	if ((rv = svc_db_init(&s->db, db_path, "users")) != ASYNQ_OK) {
		free(s);
		return rv;
	}
	*sp = s;
	return ASYNQ_OK;
}

svc_db *
users_service_db(users_service *s)
{
	return &s->db;
}

svc_hook
users_service_hook(users_service *s)
{
	return svc_db_hook(&s->db);
}

asynq_status
users_service_start(users_service *s, asynq_runtime *rt, const char *url,
    const asynq_rpc_server_cfg *cfg)
{
	return svc_serve(&s->srv, rt, &asynq__users__users__asynq_desc,
	    users_add, s, url, cfg);
}

asynq_status
users_service_serve(users_service *s, asynq_serve *sv)
{
	asynq_status rv = asynq_serve_add(sv, &asynq__users__users__asynq_desc,
	    users_add, s, NULL, &s->srv);
	s->srv_of_program = rv == ASYNQ_OK;
	return rv;
}

void
users_service_close(users_service *s)
{
	if (s != NULL && s->srv != NULL)
		asynq_rpc_server_close(s->srv);
}

void
users_service_free(users_service *s)
{
	if (s == NULL)
		return;
	if (!s->srv_of_program)
		asynq_rpc_server_free(s->srv);
	svc_db_fini(&s->db);
	free(s);
}

void
users_service_counters(void *arg, svc_counters *out)
{
	users_service *s = arg;
	if (s->srv != NULL)
		svc_server_counters(s->srv, out);
	out->sql += atomic_load(&s->db.queries);
}
