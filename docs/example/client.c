/* SPDX-License-Identifier: MIT */
/*
 * The greeter client of docs/write-a-service.md:
 *
 *   bazel run //docs/example:client -- --connect tcp://127.0.0.1:7100
 *
 * It greets five guests with ten calls that go out in one request, then
 * makes one call that fails, and prints the channel's counters. Exits 1 if
 * a call that should succeed fails.
 */
#include <stdio.h>
#include <string.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "docs/example/greeter.asynq.h"

static const char *const guests[] = { "Ada", "Alan", "Barbara", "Donald",
	"Edsger" };
#define N_GUESTS (sizeof(guests) / sizeof(guests[0]))

/* Says hello to and welcomes every guest: 2 x 5 calls, one request. */
static asynq_status
greet_all(asynq_task *t, void *arg)
{
	asynq_rpc_channel *ch = arg;
	asynq_future *f[2 * N_GUESTS];
	asynq_status rv;

	/* The calls made until the pop must be answered within 2 s, else
	 * they fail DEADLINE_EXCEEDED; the server gets the time left. */
	if ((rv = asynq_rpc_timeout_push(2000)) != ASYNQ_OK)
		return rv;
	for (size_t i = 0; i < N_GUESTS; i++) {
		Greeter__HelloRequest req = GREETER__HELLO_REQUEST__INIT;
		req.name = (char *)guests[i];
		f[2 * i] = greeter__greeter__say_hello__call(ch, &req);
		f[2 * i + 1] = greeter__greeter__welcome__call(ch, &req);
	}
	(void)asynq_rpc_timeout_pop();
	/* Nothing has been sent yet: the ten calls go out now, together. */
	if ((rv = asynq_await_all(t, f, 2 * N_GUESTS)) == ASYNQ_OK) {
		for (size_t i = 0; i < 2 * N_GUESTS; i++) {
			const Greeter__HelloReply *r = i % 2 == 0
			    ? greeter__greeter__say_hello__reply(f[i])
			    : greeter__greeter__welcome__reply(f[i]);
			printf("%s\n", r->message);
		}
	}
	asynq_future_rele_n(f, 2 * N_GUESTS);
	return rv;
}

/* A call that fails: its future holds the server's status and message. */
static asynq_status
greet_nobody(asynq_task *t, void *arg)
{
	asynq_rpc_channel *ch = arg;
	Greeter__HelloRequest req = GREETER__HELLO_REQUEST__INIT;
	asynq_future *f = greeter__greeter__say_hello__call(ch, &req);
	asynq_status rv = asynq_await(t, f);

	printf("SayHello(\"\"): %s: %s\n", asynq_strerror(rv),
	    asynq_error_message(asynq_future_error(f)));
	asynq_future_rele(f);
	return rv == ASYNQ_INVALID_ARGUMENT ? ASYNQ_OK : ASYNQ_INTERNAL;
}

int
main(int argc, char **argv)
{
	asynq_rpc_channel *ch = NULL;
	asynq_rpc_channel_stats st;
	asynq_future *f;
	asynq_status rv, rv2;

	if (argc != 3 || strcmp(argv[1], "--connect") != 0) {
		fprintf(stderr, "usage: %s --connect URL\n", argv[0]);
		return 2;
	}
	const char *urls[] = { argv[2] };
	asynq_rpc_channel_cfg cfg = { .urls = urls, .n_urls = 1 };
	if ((rv = asynq_rpc_channel_alloc(&ch, &greeter__greeter__asynq_desc,
	         &cfg)) != ASYNQ_OK) {
		fprintf(stderr, "%s: %s\n", argv[2], asynq_strerror(rv));
		return 1;
	}

	/* greet_all on a runtime's worker thread, as a program that calls
	 * services from several threads does; this thread waits for it. */
	asynq_runtime_cfg rcfg = { .workers = 1 };
	asynq_runtime *rt = NULL;
	asynq_ticket *tk = NULL;
	if ((rv = asynq_runtime_alloc(&rt, &rcfg)) == ASYNQ_OK &&
	    (rv = asynq_runtime_submit(rt, -1, greet_all, ch, &tk)) ==
	        ASYNQ_OK &&
	    (rv = asynq_ticket_wait(tk)) != ASYNQ_OK)
		asynq_error_print(asynq_ticket_error(tk), stderr);
	asynq_ticket_free(tk);
	asynq_runtime_free(rt); /* its worker has finished its calls */

	f = asynq_spawn(greet_nobody, ch);
	rv2 = asynq_wait(f);
	asynq_future_rele(f);

	asynq_rpc_channel_stats_get(ch, &st);
	printf("%llu calls in %llu requests\n", (unsigned long long)st.calls,
	    (unsigned long long)st.requests);
	asynq_rpc_channel_free(ch);
	asynq_thread_fini();
	return rv == ASYNQ_OK && rv2 == ASYNQ_OK ? 0 : 1;
}
