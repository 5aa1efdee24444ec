/* SPDX-License-Identifier: MIT */
/*
 * The asynq quickstart: the names of the authors of many answers, looked up
 * with one batch per backend. Two batch backends stand in for services:
 * "answers" maps an answer id to its author's user id and "users" maps a user
 * id to a name, both from deterministic in-memory tables. The task
 * all_author_names asks for every author one at a time, awaits them all, then
 * asks for every name and awaits them all; the scheduler turns each loop of
 * lookups into one flush. The program checks that it did and that the names
 * are right, and exits 1 otherwise.
 *
 * Design notes: everything runs on the main thread's scheduler. Both
 * backends flush synchronously: they set every item before returning, as a
 * local cache or an in-process table would (an RPC backend would defer and
 * complete later). The backends outlive every future made from them, and the
 * names the task returns are borrowed from the users backend's table.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "asynq/asynq.h"

#define N_ANSWERS 1000 /* answers in the table, all looked up */
#define N_USERS 64     /* users in the table */
#define NAME_MAX_LEN 32

/* ---- Backends over in-memory tables -------------------------------- */

/* A backend that counts what it is asked; the framework's part comes first
 * so the framework's asynq_backend pointer is also ours. */
typedef struct table_backend {
	asynq_backend base;
	size_t flushes; /* batches flushed */
	size_t items;   /* lookups over all flushes */
} table_backend;

/* The users backend owns the names it hands out. */
typedef struct users_backend {
	table_backend tb;
	char names[N_USERS][NAME_MAX_LEN];
} users_backend;

/* A batch of either backend: it remembers its backend for the flush. */
typedef struct table_batch {
	asynq_batch base;
	table_backend *be;
} table_batch;

/* author_of is the answers table: who wrote answer aid (1..N_ANSWERS). */
static int64_t
author_of(int64_t aid)
{
	return (aid * 37) % N_USERS;
}

static asynq_batch *
table_batch_alloc(asynq_backend *be)
{
	table_batch *b;

	if ((b = calloc(1, sizeof(*b))) == NULL)
		return NULL;
	b->be = (table_backend *)be;
	return &b->base;
}

static void
table_batch_free(asynq_batch *b)
{
	free(b);
}

/* table_batch_count records one flush of b and returns its size. */
static size_t
table_batch_count(asynq_batch *b)
{
	table_backend *be = ((table_batch *)b)->be;
	size_t n = asynq_batch_size(b);

	be->flushes++;
	be->items += n;
	return n;
}

/* answers_flush answers every lookup in the batch at once, as one request to
 * an answers service would. An unknown answer fails only its own item. */
static asynq_status
answers_flush(asynq_batch *b)
{
	size_t n = table_batch_count(b);

	for (size_t i = 0; i < n; i++) {
		asynq_future *item = asynq_batch_item(b, i);
		int64_t aid = asynq_item_key(item);

		if (aid < 1 || aid > N_ANSWERS)
			asynq_item_set_error(item,
			    asynq_error_alloc(ASYNQ_NOT_FOUND,
			        "no answer %" PRId64, aid));
		else
			asynq_item_set_i64(item, author_of(aid));
	}
	return ASYNQ_OK;
}

/* users_flush answers every name lookup in the batch; the names stay owned
 * by the backend (no free function). */
static asynq_status
users_flush(asynq_batch *b)
{
	users_backend *users = (users_backend *)((table_batch *)b)->be;
	size_t n = table_batch_count(b);

	for (size_t i = 0; i < n; i++) {
		asynq_future *item = asynq_batch_item(b, i);
		int64_t uid = asynq_item_key(item);

		if (uid < 0 || uid >= N_USERS)
			asynq_item_set_error(item,
			    asynq_error_alloc(ASYNQ_NOT_FOUND,
			        "no user %" PRId64, uid));
		else
			asynq_item_set_ptr(item, users->names[uid], NULL);
	}
	return ASYNQ_OK;
}

/* Neither backend defers its flushes, so neither needs cancel; both keep the
 * default priority (the number of items). */
static const asynq_backend_ops answers_ops = {
	.batch_alloc = table_batch_alloc,
	.flush = answers_flush,
	.batch_free = table_batch_free,
};

static const asynq_backend_ops users_ops = {
	.batch_alloc = table_batch_alloc,
	.flush = users_flush,
	.batch_free = table_batch_free,
};

/* users_init fills the users table with made-up, deterministic names. */
static void
users_init(users_backend *users)
{
	static const char *const first[] = { "Ada", "Alan", "Barbara", "Dennis",
		"Donald", "Edsger", "Frances", "Grace" };
	static const char *const last[] = { "Allen", "Dijkstra", "Hopper",
		"Knuth", "Liskov", "Lovelace", "Ritchie", "Turing" };

	*users = (users_backend){ 0 };
	asynq_backend_init(&users->tb.base, &users_ops, "users");
	for (size_t uid = 0; uid < N_USERS; uid++)
		snprintf(users->names[uid], NAME_MAX_LEN, "%s %s",
		    first[uid % 8], last[uid / 8 % 8]);
}

/* ---- Typed calls: the backends' client API ------------------------- */

/* answers_author_of returns a future of the user id who wrote answer aid.
 * Nothing is looked up yet: the call joins the answers backend's active
 * batch. Scheduler thread only. */
static asynq_future *
answers_author_of(table_backend *answers, int64_t aid)
{
	return asynq_batch_add(&answers->base, aid, NULL);
}

/* users_name_of returns a future of user uid's name (a const char *,
 * borrowed from the users backend); it joins the users backend's active
 * batch. Scheduler thread only. */
static asynq_future *
users_name_of(users_backend *users, int64_t uid)
{
	return asynq_batch_add(&users->tb.base, uid, NULL);
}

/* ---- The task ------------------------------------------------------ */

/* What all_author_names looks up, and where it writes the names. */
typedef struct author_query {
	table_backend *answers;
	users_backend *users;
	const int64_t *aids;
	size_t n;
	const char **names; /* out: n names, borrowed from users */
} author_query;

/* all_author_names looks up the authors of q->aids, then their names: two
 * loops of single lookups, two flushes. Fails with the first lookup's error
 * in answer order. */
static asynq_status
all_author_names(asynq_task *t, void *arg)
{
	author_query *q = arg;
	asynq_future **uid, **name;
	asynq_status rv;

	if (q->n == 0)
		return ASYNQ_OK;
	uid = calloc(q->n, sizeof(*uid));
	name = calloc(q->n, sizeof(*name));
	if (uid == NULL || name == NULL) {
		rv = asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
		    "no memory for %zu lookups", q->n);
		goto done;
	}

	for (size_t i = 0; i < q->n; i++)
		uid[i] = answers_author_of(q->answers, q->aids[i]);
	/* This task blocks and no other can run: the scheduler flushes the
	 * answers batch, all q->n items at once. */
	if ((rv = asynq_await_all(t, uid, q->n)) != ASYNQ_OK)
		goto release;

	for (size_t i = 0; i < q->n; i++)
		name[i] = users_name_of(q->users, asynq_future_i64(uid[i]));
	if ((rv = asynq_await_all(t, name, q->n)) != ASYNQ_OK)
		goto release;

	for (size_t i = 0; i < q->n; i++)
		q->names[i] = asynq_future_ptr(name[i]);

release:
	/* Unused entries are NULL, which asynq_future_rele ignores. */
	asynq_future_rele_n(name, q->n);
	asynq_future_rele_n(uid, q->n);
done:
	free(name);
	free(uid);
	return rv;
}

/* ---- main ---------------------------------------------------------- */

/* report prints how many flushes a backend's lookups took and says whether
 * batching kept its promise: n lookups, one flush. */
static bool
report(const char *what, const table_backend *be, size_t n)
{
	printf("%zu %s lookups -> %zu %s\n", be->items, what, be->flushes,
	    be->flushes == 1 ? "flush" : "flushes");
	return be->flushes == 1 && be->items == n;
}

int
main(void)
{
	static int64_t aids[N_ANSWERS];
	static const char *names[N_ANSWERS];
	static users_backend users;
	table_backend answers = { 0 };
	asynq_future *f;
	asynq_status rv;
	bool names_ok, batched;

	if ((rv = asynq_thread_init(NULL)) != ASYNQ_OK) {
		fprintf(stderr, "quickstart: %s\n", asynq_strerror(rv));
		return 1;
	}
	asynq_backend_init(&answers.base, &answers_ops, "answers");
	users_init(&users);
	for (size_t i = 0; i < N_ANSWERS; i++)
		aids[i] = (int64_t)i + 1;

	author_query q = {
		.answers = &answers,
		.users = &users,
		.aids = aids,
		.n = N_ANSWERS,
		.names = names,
	};
	/* Tasks are lazy: all_author_names starts inside asynq_wait, which
	 * runs the scheduler, flushes included, until the task is done. */
	f = asynq_spawn(all_author_names, &q);
	if ((rv = asynq_wait(f)) != ASYNQ_OK)
		asynq_error_print(asynq_future_error(f), stderr);
	asynq_future_rele(f);

	names_ok = rv == ASYNQ_OK;
	for (size_t i = 0; names_ok && i < N_ANSWERS; i++)
		names_ok = names[i] == users.names[author_of(aids[i])];
	if (rv == ASYNQ_OK && !names_ok)
		fprintf(stderr, "quickstart: wrong author names\n");
	for (size_t i = 0; names_ok && i < 3; i++)
		printf("answer %" PRId64 " was written by %s\n", aids[i],
		    names[i]);
	batched = report("author", &answers, N_ANSWERS);
	batched = report("name", &users.tb, N_ANSWERS) && batched;
	if (!batched)
		fprintf(stderr, "quickstart: expected 1 flush per backend\n");

	asynq_backend_fini(&users.tb.base);
	asynq_backend_fini(&answers.base);
	asynq_thread_fini();
	return names_ok && batched ? 0 : 1;
}
