/* SPDX-License-Identifier: MIT */
/*
 * A command-line client of the frontend service, to try the services by
 * hand and to put load on them:
 *
 *   bazel run //services/frontend:client -- --connect tcp://127.0.0.1:7000 \
 *       --answers 10 [--requests 1] [--question 7]
 *
 * It calls AuthorNames with `--answers` answer ids (1, 1 + 7919, ... modulo
 * --max-answer) `--requests` times from as many concurrent tasks, prints the
 * names of the first request, and with --question prints that question's
 * page. Exits 1 on any error.
 */
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

#include "services/frontend/frontend.h"

#define FRONTEND (&asynq__frontend__frontend__asynq_desc)

typedef struct client {
	asynq_rpc_channel *ch;
	size_t answers, requests;
	int64_t max_answer, question;
	int failures;
} client;

static asynq_status
one_request(asynq_task *t, void *arg)
{
	client *c = arg;
	/* Which request this is: the task's order among its siblings. */
	static size_t next;
	size_t r = next++;
	int64_t *ids = malloc((c->answers ? c->answers : 1) * sizeof(*ids));
	if (ids == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
	for (size_t i = 0; i < c->answers; i++)
		ids[i] = 1 +
		    (int64_t)(((r * c->answers + i) * 7919) %
		        (uint64_t)c->max_answer);
	Asynq__Frontend__AnswerIds req = ASYNQ__FRONTEND__ANSWER_IDS__INIT;
	req.n_ids = c->answers;
	req.ids = ids;
	asynq_future *f =
	    asynq__frontend__frontend__author_names__call(c->ch, &req);
	free(ids);
	asynq_status st = asynq_await(t, f);
	if (st != ASYNQ_OK) {
		c->failures++;
		asynq_error_print(asynq_future_error(f), stderr);
	} else if (r == 0) {
		const Asynq__Frontend__Names *n =
		    asynq__frontend__frontend__author_names__reply(f);
		for (size_t i = 0; i < n->n_names; i++)
			printf("answer %" PRId64 " was written by %s\n",
			    1 + (int64_t)((i * 7919) % (uint64_t)c->max_answer),
			    n->names[i]);
	}
	asynq_future_rele(f);
	return ASYNQ_OK;
}

static asynq_status
page(asynq_task *t, void *arg)
{
	client *c = arg;
	Asynq__Frontend__QuestionId req = ASYNQ__FRONTEND__QUESTION_ID__INIT;
	req.id = c->question;
	asynq_future *f =
	    asynq__frontend__frontend__question_page__call(c->ch, &req);
	asynq_status st = asynq_await(t, f);
	if (st != ASYNQ_OK) {
		c->failures++;
		asynq_error_print(asynq_future_error(f), stderr);
	} else {
		const Asynq__Frontend__Page *p =
		    asynq__frontend__frontend__question_page__reply(f);
		printf("question %" PRId64 ": %zu answers\n", p->question_id,
		    p->n_items);
		for (size_t i = 0; i < p->n_items; i++)
			printf("  answer %" PRId64 " by %s: %s\n",
			    p->items[i]->answer_id, p->items[i]->author_name,
			    p->items[i]->body);
	}
	asynq_future_rele(f);
	return ASYNQ_OK;
}

int
main(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "connect", required_argument, NULL, 'c' },
		{ "answers", required_argument, NULL, 'a' },
		{ "requests", required_argument, NULL, 'r' },
		{ "max-answer", required_argument, NULL, 'm' },
		{ "question", required_argument, NULL, 'q' },
		{ NULL, 0, NULL, 0 },
	};
	const char *url = "tcp://127.0.0.1:7000";
	client c = { .answers = 10, .requests = 1, .max_answer = 1000000 };
	int o;

	while ((o = getopt_long(argc, argv, "c:a:r:m:q:", opts, NULL)) != -1) {
		switch (o) {
		case 'c':
			url = optarg;
			break;
		case 'a':
			c.answers = strtoull(optarg, NULL, 10);
			break;
		case 'r':
			c.requests = strtoull(optarg, NULL, 10);
			break;
		case 'm':
			c.max_answer = strtoll(optarg, NULL, 10);
			break;
		case 'q':
			c.question = strtoll(optarg, NULL, 10);
			break;
		default:
			fprintf(stderr,
			    "usage: %s [--connect URL] [--answers N]"
			    " [--requests N] [--max-answer N] [--question ID]\n",
			    argv[0]);
			return 2;
		}
	}
	if (c.max_answer < 1)
		c.max_answer = 1;
	const char *urls[] = { url };
	asynq_rpc_channel_cfg cfg = { .urls = urls, .n_urls = 1 };
	asynq_status rv = asynq_rpc_channel_alloc(&c.ch, FRONTEND, &cfg);
	if (rv != ASYNQ_OK) {
		fprintf(stderr, "%s: %s\n", url, asynq_strerror(rv));
		return 1;
	}
	asynq_future **fs = calloc(c.requests + 1, sizeof(*fs));
	size_t n = 0;
	uint64_t t0 = asynq_now_ns();
	for (size_t i = 0; i < c.requests && fs != NULL; i++)
		fs[n++] = asynq_spawn(one_request, &c);
	if (c.question != 0 && fs != NULL)
		fs[n++] = asynq_spawn(page, &c);
	if (fs != NULL)
		asynq_wait_all(fs, n);
	double ms = (double)(asynq_now_ns() - t0) / 1e6;
	if (fs != NULL)
		asynq_future_rele_n(fs, n);
	asynq_rpc_channel_stats cs;
	asynq_rpc_channel_stats_get(c.ch, &cs);
	fprintf(stderr,
	    "%zu AuthorNames calls of %zu answers: %" PRIu64
	    " requests, %d failed, %.1f ms\n",
	    c.requests, c.answers, cs.requests, c.failures, ms);
	free(fs);
	asynq_rpc_channel_free(c.ch);
	asynq_thread_fini();
	return c.failures != 0 || fs == NULL;
}
