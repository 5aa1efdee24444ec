/* SPDX-License-Identifier: MIT */
/*
 * The greeter server of docs/write-a-service.md:
 *
 *   bazel run //docs/example:server -- --listen tcp://127.0.0.1:7100
 *
 * It serves greeter.Greeter until SIGINT or SIGTERM (asynq_serve_main:
 * the common flags, a drain, the calls in flight answered), prints its
 * counters and exits 0.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "asynq/serve.h"
#include "docs/example/greeter.asynq.h"

/* A reply whose message is printf(fmt, ...), in the memory of the request
 * being served (nothing to free: it goes with the request once the reply
 * is sent); NULL without memory. */
static Greeter__HelloReply *
hello_reply(const char *fmt, ...)
{
	Greeter__HelloReply *r = (Greeter__HelloReply *)asynq_rpc_reply_new(
	    &greeter__hello_reply__descriptor);
	va_list ap;

	if (r == NULL)
		return NULL;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 ||
	    (r->message = asynq_rpc_reply_alloc((size_t)n + 1)) == NULL)
		return NULL;
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
	Greeter__HelloReply *out = hello_reply("Hello, %s!", in->name);
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
		Greeter__HelloReply *out =
		    hello_reply("Welcome, %s: %zu guests came together.",
		        calls[i].req->name, n);
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

/* Lives as long as the server: what its handlers are called with. */
static greeter__greeter__asynq_binding binding;
static asynq_rpc_server *server;

static asynq_status
add_greeter(asynq_rpc_server *srv, void *arg)
{
	(void)arg;
	return greeter__greeter__asynq_serve(srv, &handlers, NULL, &binding);
}

/* With the runtime running: the server, on --listen. */
static asynq_status
start(asynq_serve *sv, void *arg)
{
	(void)arg;
	return asynq_serve_add(sv, &greeter__greeter__asynq_desc, add_greeter,
	    NULL, NULL, &server);
}

/* After the server closed, every call it accepted answered. */
static void
stop(asynq_serve *sv, void *arg)
{
	asynq_rpc_server_stats st;

	(void)sv;
	(void)arg;
	if (server == NULL)
		return;
	asynq_rpc_server_stats_get(server, &st);
	printf("greeter: %llu calls in %llu requests\n",
	    (unsigned long long)st.calls, (unsigned long long)st.requests);
}

int
main(int argc, char **argv)
{
	const asynq_serve_program program = {
		.name = "greeter",
		.start = start,
		.stop = stop,
	};
	return asynq_serve_main(&program, argc, argv);
}
