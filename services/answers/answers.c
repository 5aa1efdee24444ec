/* SPDX-License-Identifier: MIT */
/*
 * The answers service: GetAnswer and ListAnswers, each answered a whole
 * request at a time with one SQL query (see answers.h).
 *
 * Design notes: as in the users service, a whole-batch handler runs as one
 * task on the receiving worker and uses that worker's own connection. Rows
 * come back in index order, not call order, and a request may repeat an id:
 * GetAnswer sorts rows by id and binary-searches each call's id; ListAnswers
 * asks for rows ordered by (question_id, id) and gives each call the run of
 * rows of its question. Replies own their memory (the server frees them with
 * protobuf_c_message_free_unpacked).
 */
#include <stdlib.h>
#include <string.h>

#include "services/answers/answers.h"

struct answers_service {
	svc_db db;
	asynq_rpc_server *srv;
	bool srv_of_program; /* made by asynq_serve_add: not ours to free */
	asynq__answers__answers__asynq_binding binding;
};

/* A growable array of rows of either query. */
typedef struct answer_row {
	int64_t id, question_id, author_id;
	char *body; /* GetAnswer only */
} answer_row;

typedef struct answer_rows {
	answer_row *v;
	size_t n, cap;
	bool with_body;
} answer_rows;

static asynq_status
rows_collect(sqlite3_stmt *st, void *arg)
{
	answer_rows *r = arg;
	if (r->n == r->cap) {
		size_t cap = r->cap != 0 ? 2 * r->cap : 64;
		answer_row *v = realloc(r->v, cap * sizeof(*v));
		if (v == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
		r->v = v;
		r->cap = cap;
	}
	answer_row *row = &r->v[r->n];
	memset(row, 0, sizeof(*row));
	row->id = sqlite3_column_int64(st, 0);
	row->question_id = sqlite3_column_int64(st, 1);
	if (r->with_body) {
		const unsigned char *body = sqlite3_column_text(st, 3);
		row->author_id = sqlite3_column_int64(st, 2);
		row->body = strdup(body != NULL ? (const char *)body : "");
		if (row->body == NULL)
			return ASYNQ_RESOURCE_EXHAUSTED;
	}
	r->n++;
	return ASYNQ_OK;
}

static void
rows_free(answer_rows *r)
{
	for (size_t i = 0; i < r->n; i++)
		free(r->v[i].body);
	free(r->v);
}

static int
by_id(const void *a, const void *b)
{
	int64_t x = ((const answer_row *)a)->id,
	        y = ((const answer_row *)b)->id;
	return (x > y) - (x < y);
}

/* An array of n ids, or NULL without memory. */
static int64_t *
ids_alloc(size_t n)
{
	/* Zeroed: gcc -O2 cannot see that every slot is written. */
	return calloc(n != 0 ? n : 1, sizeof(int64_t));
}

static asynq_status
h_get_answer(asynq_task *t,
    asynq__answers__answers__get_answer__batch_call *calls, size_t n, void *ctx)
{
	answers_service *s = ctx;
	answer_rows rows = { .with_body = true };
	int64_t *ids = ids_alloc(n);
	asynq_status rv;

	if (ids == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
	for (size_t i = 0; i < n; i++)
		ids[i] = calls[i].req->id;
	rv = svc_db_in(&s->db,
	    "SELECT id, question_id, author_id, body FROM answers", "id", "",
	    ids, n, rows_collect, &rows);
	if (rv != ASYNQ_OK) {
		free(ids);
		rows_free(&rows);
		return asynq_fail(t, rv, "answers query failed");
	}
	if (rows.n > 0) /* qsort takes no NULL, even for 0 rows */
		qsort(rows.v, rows.n, sizeof(*rows.v), by_id);
	for (size_t i = 0; i < n; i++) {
		answer_row key = { .id = ids[i] };
		const answer_row *r = rows.n != 0
		    ? bsearch(&key, rows.v, rows.n, sizeof(*rows.v), by_id)
		    : NULL;
		if (r == NULL) {
			asynq_rpc_batch_fail(&calls[i], ASYNQ_NOT_FOUND,
			    "no such answer: %lld", (long long)ids[i]);
			continue;
		}
		Asynq__Answers__Answer *a = malloc(sizeof(*a));
		char *body = strdup(r->body);
		if (a == NULL || body == NULL) {
			free(a);
			free(body);
			calls[i].status = ASYNQ_RESOURCE_EXHAUSTED;
			continue;
		}
		asynq__answers__answer__init(a);
		a->id = r->id;
		a->question_id = r->question_id;
		a->author_id = r->author_id;
		a->body = body;
		calls[i].reply = a;
		calls[i].status = ASYNQ_OK;
	}
	free(ids);
	rows_free(&rows);
	return ASYNQ_OK;
}

static asynq_status
h_list_answers(asynq_task *t,
    asynq__answers__answers__list_answers__batch_call *calls, size_t n,
    void *ctx)
{
	answers_service *s = ctx;
	answer_rows rows = { .with_body = false };
	int64_t *ids = ids_alloc(n);
	asynq_status rv;

	if (ids == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
	for (size_t i = 0; i < n; i++)
		ids[i] = calls[i].req->id;
	rv = svc_db_in(&s->db, "SELECT id, question_id FROM answers",
	    "question_id", "ORDER BY question_id, id", ids, n, rows_collect,
	    &rows);
	if (rv != ASYNQ_OK) {
		free(ids);
		rows_free(&rows);
		return asynq_fail(t, rv, "answers query failed");
	}
	for (size_t i = 0; i < n; i++) {
		/* First row of the question: rows are sorted by question. */
		size_t lo = 0, hi = rows.n;
		while (lo < hi) {
			size_t mid = lo + (hi - lo) / 2;
			if (rows.v[mid].question_id < ids[i])
				lo = mid + 1;
			else
				hi = mid;
		}
		size_t end = lo;
		while (end < rows.n && rows.v[end].question_id == ids[i])
			end++;
		Asynq__Answers__AnswerIds *out = malloc(sizeof(*out));
		int64_t *v =
		    malloc((end - lo != 0 ? end - lo : 1) * sizeof(*v));
		if (out == NULL || v == NULL) {
			free(out);
			free(v);
			calls[i].status = ASYNQ_RESOURCE_EXHAUSTED;
			continue;
		}
		asynq__answers__answer_ids__init(out);
		for (size_t k = lo; k < end; k++)
			v[k - lo] = rows.v[k].id;
		out->n_ids = end - lo;
		out->ids = v;
		calls[i].reply = out;
		calls[i].status = ASYNQ_OK;
	}
	free(ids);
	rows_free(&rows);
	return ASYNQ_OK;
}

static asynq_status
answers_add(asynq_rpc_server *srv, void *arg)
{
	static const asynq__answers__answers__asynq_handlers h = {
		.get_answer = h_get_answer,
		.list_answers = h_list_answers,
	};
	answers_service *s = arg;
	return asynq__answers__answers__asynq_serve(srv, &h, s, &s->binding);
}

asynq_status
answers_service_alloc(answers_service **sp, const char *db_path)
{
	answers_service *s = calloc(1, sizeof(*s));
	asynq_status rv;

	if (s == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	if ((rv = svc_db_init(&s->db, db_path, "answers")) != ASYNQ_OK) {
		free(s);
		return rv;
	}
	*sp = s;
	return ASYNQ_OK;
}

svc_db *
answers_service_db(answers_service *s)
{
	return &s->db;
}

svc_hook
answers_service_hook(answers_service *s)
{
	return svc_db_hook(&s->db);
}

asynq_status
answers_service_start(answers_service *s, asynq_runtime *rt, const char *url,
    const asynq_rpc_server_cfg *cfg)
{
	return svc_serve(&s->srv, rt, &asynq__answers__answers__asynq_desc,
	    answers_add, s, url, cfg);
}

asynq_status
answers_service_serve(answers_service *s, asynq_serve *sv)
{
	asynq_status rv =
	    asynq_serve_add(sv, &asynq__answers__answers__asynq_desc,
	        answers_add, s, NULL, &s->srv);
	s->srv_of_program = rv == ASYNQ_OK;
	return rv;
}

void
answers_service_close(answers_service *s)
{
	if (s != NULL && s->srv != NULL)
		asynq_rpc_server_close(s->srv);
}

void
answers_service_free(answers_service *s)
{
	if (s == NULL)
		return;
	if (!s->srv_of_program)
		asynq_rpc_server_free(s->srv);
	svc_db_fini(&s->db);
	free(s);
}

void
answers_service_counters(void *arg, svc_counters *out)
{
	answers_service *s = arg;
	if (s->srv != NULL)
		svc_server_counters(s->srv, out);
	out->sql += atomic_load(&s->db.queries);
}
