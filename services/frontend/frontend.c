/* SPDX-License-Identifier: MIT */
/*
 * The frontend service: AuthorNames and QuestionPage, built from calls to
 * the users and answers services (see frontend.h).
 *
 * Design notes: each level of lookups is a loop of typed calls (..._call)
 * followed by one asynq_await_all, asynq's `yield [...]`: nothing is sent while
 * the loop runs, and when the handler blocks (with every other handler of the
 * worker) the channel's batch goes out as one request. Handlers run on the
 * frontend's workers; the channels batch per worker thread. Futures arrays
 * live on the heap, not the coroutine stack, since N is the caller's.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "services/answers/answers.asynq.h"
#include "services/cache/cache.asynq.h"
#include "services/frontend/frontend.h"
#include "services/users/users.asynq.h"

struct frontend_service {
	asynq_rpc_channel *users;
	asynq_rpc_channel *answers;
	asynq_rpc_channel *cache; /* NULL: no cache */
	asynq_rpc_server *srv;
	bool srv_of_program; /* made by asynq_serve_add: not ours to free */
	asynq__frontend__frontend__asynq_binding binding;
};

/* Fails t with the first failed future of fs, saying what it looked up. */
static asynq_status
fail_first(asynq_task *t, asynq_status st, asynq_future **fs,
    const int64_t *keys, size_t n, const char *what)
{
	for (size_t i = 0; i < n; i++) {
		const asynq_error *e = asynq_future_error(fs[i]);
		if (asynq_future_status(fs[i]) != ASYNQ_OK)
			return asynq_fail(t, st, "%s %" PRId64 ": %s", what,
			    keys[i], asynq_error_message(e));
	}
	return asynq_fail(t, st, "%s lookup failed", what);
}

/* Calls GetAnswer for ids[0..n) and awaits them all: one request. */
static asynq_status
get_answers(asynq_task *t, frontend_service *s, const int64_t *ids, size_t n,
    asynq_future **fa)
{
	for (size_t i = 0; i < n; i++) {
		Asynq__Answers__AnswerId r = ASYNQ__ANSWERS__ANSWER_ID__INIT;
		r.id = ids[i];
		fa[i] =
		    asynq__answers__answers__get_answer__call(s->answers, &r);
	}
	asynq_status st = asynq_await_all(t, fa, n);
	return st == ASYNQ_OK ? st : fail_first(t, st, fa, ids, n, "answer");
}

/* The cache key of user uid's name. */
static void
user_key(int64_t uid, char *buf, size_t n)
{
	snprintf(buf, n, "user:%" PRId64 ":name", uid);
}

/* Looks up names[i] in the cache for every i with need[i]; a hit clears
 * need[i]. A failed cache call counts as a miss: the cache is an
 * optimisation, never a source of errors. One request. */
static asynq_status
cache_read(asynq_task *t, frontend_service *s, const int64_t *uids, size_t n,
    bool *need, char **names)
{
	asynq_future **fc = calloc(n != 0 ? n : 1, sizeof(*fc));
	char key[48];

	if (fc == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
	for (size_t i = 0; i < n; i++) {
		Asynq__Cache__Key k = ASYNQ__CACHE__KEY__INIT;
		user_key(uids[i], key, sizeof(key));
		k.key.data = (uint8_t *)key;
		k.key.len = strlen(key);
		fc[i] = asynq__cache__cache__get__call(s->cache, &k);
	}
	(void)asynq_await_all(t, fc, n);
	for (size_t i = 0; i < n; i++) {
		const Asynq__Cache__Value *v =
		    asynq__cache__cache__get__reply(fc[i]);
		if (asynq_future_status(fc[i]) != ASYNQ_OK || !v->found)
			continue;
		if ((names[i] = strndup((const char *)v->value.data,
		         v->value.len)) != NULL)
			need[i] = false;
	}
	asynq_future_rele_n(fc, n);
	free(fc);
	return ASYNQ_OK;
}

/* Stores the names looked up for every i with need[i]; one request,
 * awaited so that the next reader finds them, errors ignored. */
static void
cache_write(asynq_task *t, frontend_service *s, const int64_t *uids, size_t n,
    const bool *need, char **names)
{
	asynq_future **fc = calloc(n != 0 ? n : 1, sizeof(*fc));
	size_t k = 0;
	char key[48];

	if (fc == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		if (!need[i])
			continue;
		Asynq__Cache__SetRequest r = ASYNQ__CACHE__SET_REQUEST__INIT;
		user_key(uids[i], key, sizeof(key));
		r.key.data = (uint8_t *)key;
		r.key.len = strlen(key);
		r.value.data = (uint8_t *)names[i];
		r.value.len = strlen(names[i]);
		r.ttl_ms = FRONTEND_NAME_TTL_MS;
		fc[k++] = asynq__cache__cache__set__call(s->cache, &r);
	}
	if (k != 0)
		(void)asynq_await_all(t, fc, k);
	asynq_future_rele_n(fc, k);
	free(fc);
}

/* Sets names[i] (malloc'd) to the name of the author of each answer of fa:
 * cache-aside when the frontend has a cache (one Get request, then GetUser
 * for the misses, then one Set request), else one GetUser request. */
static asynq_status
get_author_names(asynq_task *t, frontend_service *s, asynq_future **fa,
    size_t n, char **names)
{
	size_t cap = n != 0 ? n : 1;
	int64_t *uids = malloc(cap * sizeof(*uids));
	bool *need = malloc(cap * sizeof(*need));
	asynq_future **fu = calloc(cap, sizeof(*fu));
	int64_t *asked = malloc(cap * sizeof(*asked));
	asynq_status st = ASYNQ_OK;
	size_t nu = 0, k = 0;

	if (uids == NULL || need == NULL || fu == NULL || asked == NULL) {
		st = asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		const Asynq__Answers__Answer *a =
		    asynq__answers__answers__get_answer__reply(fa[i]);
		uids[i] = a->author_id;
		need[i] = true;
	}
	if (s->cache != NULL &&
	    (st = cache_read(t, s, uids, n, need, names)) != ASYNQ_OK)
		goto out;
	for (size_t i = 0; i < n; i++) {
		if (!need[i])
			continue;
		Asynq__Users__UserId r = ASYNQ__USERS__USER_ID__INIT;
		r.id = asked[nu] = uids[i];
		fu[nu++] = asynq__users__users__get_user__call(s->users, &r);
	}
	if (nu != 0 && (st = asynq_await_all(t, fu, nu)) != ASYNQ_OK) {
		st = fail_first(t, st, fu, asked, nu, "user");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (!need[i])
			continue;
		const Asynq__Users__User *u =
		    asynq__users__users__get_user__reply(fu[k++]);
		if ((names[i] = strdup(u->name)) == NULL) {
			st = asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
			    "out of memory");
			goto out;
		}
	}
	if (s->cache != NULL)
		cache_write(t, s, uids, n, need, names);
out:
	if (fu != NULL)
		asynq_future_rele_n(fu, nu);
	free(fu);
	free(asked);
	free(need);
	free(uids);
	return st;
}

static void
names_free(char **names, size_t n)
{
	if (names == NULL)
		return;
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
}

asynq_status
frontend_author_names(asynq_task *t, frontend_service *s, const int64_t *aids,
    size_t n, char ***names)
{
	size_t cap = n != 0 ? n : 1;
	asynq_future **fa = calloc(cap, sizeof(*fa));
	char **out = calloc(cap, sizeof(*out));
	asynq_status st;

	*names = NULL;
	if (fa == NULL || out == NULL) {
		st = asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
		goto out;
	}
	if ((st = get_answers(t, s, aids, n, fa)) != ASYNQ_OK ||
	    (st = get_author_names(t, s, fa, n, out)) != ASYNQ_OK)
		goto out;
	*names = out;
	out = NULL;
out:
	names_free(out, n);
	if (fa != NULL)
		asynq_future_rele_n(fa, n);
	free(fa);
	return st;
}

static asynq_status
h_author_names(asynq_task *t, const Asynq__Frontend__AnswerIds *in,
    Asynq__Frontend__Names **reply, void *ctx)
{
	char **names;

	ASYNQ_TRY(frontend_author_names(t, ctx, in->ids, in->n_ids, &names));
	Asynq__Frontend__Names *out = malloc(sizeof(*out));
	if (out == NULL) {
		names_free(names, in->n_ids);
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
	}
	asynq__frontend__names__init(out);
	out->n_names = in->n_ids;
	out->names = names;
	*reply = out;
	return ASYNQ_OK;
}

/* Builds the page from the three levels of lookups. */
static asynq_status
page_fill(asynq_task *t, Asynq__Frontend__Page *page, asynq_future **fa,
    char **names, size_t n)
{
	page->items = calloc(n != 0 ? n : 1, sizeof(*page->items));
	if (page->items == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
	for (size_t i = 0; i < n; i++) {
		const Asynq__Answers__Answer *a =
		    asynq__answers__answers__get_answer__reply(fa[i]);
		Asynq__Frontend__PageItem *it = malloc(sizeof(*it));
		if (it == NULL)
			return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
			    "out of memory");
		asynq__frontend__page_item__init(it);
		page->items[page->n_items++] = it;
		it->answer_id = a->id;
		it->author_id = a->author_id;
		it->author_name = names[i];
		names[i] = NULL;
		it->body = strdup(a->body);
		if (it->author_name == NULL || it->body == NULL)
			return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED,
			    "out of memory");
	}
	return ASYNQ_OK;
}

static asynq_status
h_question_page(asynq_task *t, const Asynq__Frontend__QuestionId *in,
    Asynq__Frontend__Page **reply, void *ctx)
{
	frontend_service *s = ctx;
	Asynq__Answers__QuestionId q = ASYNQ__ANSWERS__QUESTION_ID__INIT;
	asynq_future **fa = NULL;
	char **names = NULL;
	Asynq__Frontend__Page *page = NULL;
	asynq_status st;
	size_t n = 0;

	q.id = in->id;
	asynq_future *fl =
	    asynq__answers__answers__list_answers__call(s->answers, &q);
	if ((st = asynq_await(t, fl)) != ASYNQ_OK) {
		st = asynq_fail(t, st, "question %" PRId64 ": %s", in->id,
		    asynq_error_message(asynq_future_error(fl)));
		goto out;
	}
	const Asynq__Answers__AnswerIds *ids =
	    asynq__answers__answers__list_answers__reply(fl);
	n = ids->n_ids;
	fa = calloc(n != 0 ? n : 1, sizeof(*fa));
	names = calloc(n != 0 ? n : 1, sizeof(*names));
	page = malloc(sizeof(*page));
	if (fa == NULL || names == NULL || page == NULL) {
		st = asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
		goto out;
	}
	asynq__frontend__page__init(page);
	page->question_id = in->id;
	if ((st = get_answers(t, s, ids->ids, n, fa)) != ASYNQ_OK ||
	    (st = get_author_names(t, s, fa, n, names)) != ASYNQ_OK ||
	    (st = page_fill(t, page, fa, names, n)) != ASYNQ_OK)
		goto out;
	*reply = page;
	page = NULL;
out:
	if (page != NULL)
		protobuf_c_message_free_unpacked(&page->base, NULL);
	if (fa != NULL)
		asynq_future_rele_n(fa, n);
	names_free(names, n);
	free(fa);
	asynq_future_rele(fl);
	return st;
}

static asynq_status
frontend_add(asynq_rpc_server *srv, void *arg)
{
	static const asynq__frontend__frontend__asynq_handlers h = {
		.author_names = h_author_names,
		.question_page = h_question_page,
	};
	frontend_service *s = arg;
	return asynq__frontend__frontend__asynq_serve(srv, &h, s, &s->binding);
}

/* Most URLs in one --users/--answers/--cache list. */
#define FRONTEND_MAX_URLS 16

/* Opens a channel to the replicas of `url`: one URL, a comma-separated
 * list of them, or a name (dns:///host:port). */
static asynq_status
channel_open(asynq_rpc_channel **chp, const asynq_rpc_service_desc *svc,
    const char *url, const frontend_cfg *fc)
{
	char *copy = strdup(url);
	const char *urls[FRONTEND_MAX_URLS];
	size_t n = 0;
	if (copy == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	for (char *save = NULL, *u = strtok_r(copy, ",", &save); u != NULL;
	     u = strtok_r(NULL, ",", &save)) {
		if (n == FRONTEND_MAX_URLS) {
			fprintf(stderr,
			    "frontend: %s: more than %d URLs in one list\n",
			    svc->full_name, FRONTEND_MAX_URLS);
			free(copy);
			return ASYNQ_INVALID_ARGUMENT;
		}
		urls[n++] = u;
	}
	asynq_rpc_channel_cfg cfg = { .urls = urls,
		.n_urls = n,
		.max_calls = fc->max_calls,
		.no_collapse = fc->no_collapse,
		.tls_ca_file = fc->tls_ca_file,
		.tls_server_name = fc->tls_server_name,
		.tls_cert_file = fc->tls_cert_file,
		.tls_key_file = fc->tls_key_file };
	asynq_status st = n != 0 ? asynq_rpc_channel_alloc(chp, svc, &cfg)
	                         : ASYNQ_INVALID_ARGUMENT;
	free(copy);
	return st;
}

asynq_status
frontend_service_alloc(frontend_service **sp, const char *users_url,
    const char *answers_url, const char *cache_url)
{
	frontend_cfg cfg = { .users_url = users_url,
		.answers_url = answers_url,
		.cache_url = cache_url };
	return frontend_service_alloc_cfg(sp, &cfg);
}

asynq_status
frontend_service_alloc_cfg(frontend_service **sp, const frontend_cfg *cfg)
{
	frontend_service *s = calloc(1, sizeof(*s));
	asynq_status rv;

	if (s == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	if ((rv = channel_open(&s->users, &asynq__users__users__asynq_desc,
	         cfg->users_url, cfg)) != ASYNQ_OK)
		goto fail_users;
	if ((rv = channel_open(&s->answers,
	         &asynq__answers__answers__asynq_desc, cfg->answers_url,
	         cfg)) != ASYNQ_OK)
		goto fail_answers;
	if (cfg->cache_url != NULL &&
	    (rv = channel_open(&s->cache, &asynq__cache__cache__asynq_desc,
	         cfg->cache_url, cfg)) != ASYNQ_OK)
		goto fail_cache;
	/* Reported on the program's admin endpoint, if it has one. */
	svc_admin_channel(s->users, "users");
	svc_admin_channel(s->answers, "answers");
	svc_admin_channel(s->cache, "cache");
	*sp = s;
	return ASYNQ_OK;
fail_cache:
	asynq_rpc_channel_free(s->answers);
fail_answers:
	asynq_rpc_channel_free(s->users);
fail_users:
	free(s);
	return rv;
}

asynq_status
frontend_service_start(frontend_service *s, asynq_runtime *rt, const char *url,
    const asynq_rpc_server_cfg *cfg)
{
	return svc_serve(&s->srv, rt, &asynq__frontend__frontend__asynq_desc,
	    frontend_add, s, url, cfg);
}

asynq_status
frontend_service_serve(frontend_service *s, asynq_serve *sv)
{
	asynq_status rv =
	    asynq_serve_add(sv, &asynq__frontend__frontend__asynq_desc,
	        frontend_add, s, NULL, &s->srv);
	s->srv_of_program = rv == ASYNQ_OK;
	if (rv == ASYNQ_OK) {
		asynq_serve_channel(sv, s->users, "users");
		asynq_serve_channel(sv, s->answers, "answers");
		asynq_serve_channel(sv, s->cache, "cache");
	}
	return rv;
}

void
frontend_service_close(frontend_service *s)
{
	if (s != NULL && s->srv != NULL)
		asynq_rpc_server_close(s->srv);
}

void
frontend_service_free(frontend_service *s)
{
	if (s == NULL)
		return;
	if (!s->srv_of_program)
		asynq_rpc_server_free(s->srv);
	asynq_rpc_channel_free(s->users);
	asynq_rpc_channel_free(s->answers);
	asynq_rpc_channel_free(s->cache);
	free(s);
}

void
frontend_service_counters(void *arg, svc_counters *out)
{
	frontend_service *s = arg;
	asynq_rpc_channel_stats cs;
	if (s->srv != NULL)
		svc_server_counters(s->srv, out);
	asynq_rpc_channel *chs[] = { s->users, s->answers, s->cache };
	for (size_t i = 0; i < 3; i++) {
		if (chs[i] == NULL)
			continue;
		asynq_rpc_channel_stats_get(chs[i], &cs);
		out->out_calls += cs.calls;
		out->out_sent += cs.sent_calls;
		out->out_requests += cs.requests;
	}
}
