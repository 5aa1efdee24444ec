/* SPDX-License-Identifier: MIT */
/*
 * The greeter server of docs/write-a-service.md:
 *
 *   bazel run //docs/example:server -- --listen tcp://127.0.0.1:7100
 *
 * It serves greeter.Greeter on two workers until SIGINT or SIGTERM, then
 * answers the calls in flight, prints its counters and exits 0.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "docs/example/greeter.asynq.h"

/* A reply whose message is printf(fmt, ...); NULL without memory. */
static Greeter__HelloReply *
reply_new(const char *fmt, ...)
{
	Greeter__HelloReply *r = malloc(sizeof(*r));
	va_list ap;

	if (r == NULL)
		return NULL;
	greeter__hello_reply__init(r);
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || (r->message = malloc((size_t)n + 1)) == NULL) {
		free(r);
		return NULL;
	}
	va_start(ap, fmt);
	vsnprintf(r->message, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return r;
}

/* SayHello: a task per call. */
static asynq_status
say_hello(asynq_task *t, const Greeter__HelloRequest *in,
    Greeter__HelloReply **reply, void *ctx)
{
	(void)ctx;

	if (in->name[0] == '\0')
		return asynq_fail(t, ASYNQ_INVALID_ARGUMENT, "empty name");
	Greeter__HelloReply *out = reply_new("Hello, %s!", in->name);
	if (out == NULL)
		return asynq_fail(t, ASYNQ_RESOURCE_EXHAUSTED, "out of memory");
	*reply = out;
	return ASYNQ_OK;
}

/* Welcome: every call of a request at once. */
static asynq_status
welcome(asynq_task *t, greeter__greeter__welcome__batch_call *calls, size_t n,
    void *ctx)
{
	(void)t;
	(void)ctx;
	for (size_t i = 0; i < n; i++) {
		Greeter__HelloReply *out = reply_new(
		    "Welcome, %s: %zu guests came together.", calls[i].req->name,
		    n);
		if (out == NULL) {
			calls[i].status = ASYNQ_RESOURCE_EXHAUSTED;
			calls[i].message = "out of memory";
			continue;
		}
		calls[i].reply = out;
	}
	return ASYNQ_OK;
}

static const greeter__greeter__asynq_handlers handlers = {
	.say_hello = say_hello,
	.welcome = welcome,
};

int
main(int argc, char **argv)
{
	asynq_runtime_cfg rcfg = { .workers = 2 };
	asynq_runtime *rt = NULL;
	asynq_rpc_server *srv = NULL;
	/* Lives as long as the server: what its handlers are called with. */
	static greeter__greeter__asynq_binding binding;
	asynq_rpc_server_stats st;
	asynq_status rv;
	sigset_t stop;
	int sig;

	if (argc != 3 || strcmp(argv[1], "--listen") != 0) {
		fprintf(stderr, "usage: %s --listen URL\n", argv[0]);
		return 2;
	}
	/* Before any thread starts, so that only sigwait sees them. */
	sigemptyset(&stop);
	sigaddset(&stop, SIGINT);
	sigaddset(&stop, SIGTERM);
	pthread_sigmask(SIG_BLOCK, &stop, NULL);

	if ((rv = asynq_runtime_alloc(&rt, &rcfg)) != ASYNQ_OK)
		goto fail;
	if ((rv = asynq_rpc_server_alloc(&srv, rt, NULL)) != ASYNQ_OK)
		goto fail;
	if ((rv = greeter__greeter__asynq_serve(srv, &handlers, NULL,
	         &binding)) != ASYNQ_OK)
		goto fail;
	if ((rv = asynq_rpc_server_listen(srv, argv[2])) != ASYNQ_OK)
		goto fail;
	printf("greeter: listening on %s\n", argv[2]);
	fflush(stdout);

	sigwait(&stop, &sig);
	asynq_rpc_server_close(srv); /* answers the calls in flight */
	asynq_rpc_server_stats_get(srv, &st);
	printf("greeter: %llu calls in %llu requests\n",
	    (unsigned long long)st.calls, (unsigned long long)st.requests);
	asynq_rpc_server_free(srv);
	asynq_runtime_free(rt);
	return 0;
fail:
	fprintf(stderr, "greeter: %s\n", asynq_strerror(rv));
	asynq_rpc_server_free(srv);
	asynq_runtime_free(rt);
	return 1;
}
