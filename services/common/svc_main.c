/* SPDX-License-Identifier: MIT */
/*
 * Process plumbing for programs that run several example services in one
 * process (the demo, the integration test): a runtime whose worker hooks
 * the services share, servers made on it, and one admin endpoint for all.
 * The services' own programs are run by asynq_serve_main (asynq/serve.h)
 * instead.
 *
 * The admin endpoint is one per process, so it is kept here rather than
 * passed to every service's start function: svc_serve and
 * svc_runtime_alloc register what they make with it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "asynq/log.h"
#include "services/common/svc.h"

/* ---- The admin endpoint ------------------------------------------------- */

/* Main thread only (set up and torn down around the services). */
static asynq_admin *admin;
static const char *admin_name = "";
/* svc_admin_as: the name everything registered is reported under, "" for
 * the plain names. */
static char admin_as[96];

void
svc_admin_as(const char *name)
{
	snprintf(admin_as, sizeof(admin_as), "%s", name != NULL ? name : "");
}

const char *
svc_admin_url(void)
{
	return admin != NULL ? asynq_admin_url(admin) : NULL;
}

/* name, or "<svc_admin_as name>: name", in buf. */
static const char *
admin_label(char *buf, size_t n, const char *name)
{
	if (admin_as[0] == '\0')
		return name;
	snprintf(buf, n, "%s: %s", admin_as, name);
	return buf;
}

asynq_status
svc_admin_open(const char *url, const char *name)
{
	char err[256];
	asynq_status rv;
	if (url == NULL || admin != NULL)
		return ASYNQ_OK;
	if ((rv = asynq_admin_open(&admin, url, err, sizeof(err))) !=
	    ASYNQ_OK) {
		fprintf(stderr, "%s: %s\n", name, err);
		return rv;
	}
	admin_name = name;
	printf("%s: admin endpoint on %s (/live, /ready, /metrics, /status, "
	       "/trace)\n",
	    name, asynq_admin_url(admin));
	fflush(stdout);
	return ASYNQ_OK;
}

void
svc_admin_channel(asynq_rpc_channel *ch, const char *name)
{
	char buf[256];
	if (admin != NULL && ch != NULL)
		(void)asynq_admin_add_channel(admin, ch,
		    admin_label(buf, sizeof(buf), name));
}

void
svc_admin_close(void)
{
	asynq_admin_close(admin);
	admin = NULL;
}

/* ---- Runtime ------------------------------------------------------------ */

asynq_status
svc_hooks_add(svc_hooks *hs, svc_hook h)
{
	if (hs->n >= SVC_MAX_HOOKS)
		return ASYNQ_RESOURCE_EXHAUSTED;
	hs->hook[hs->n++] = h;
	return ASYNQ_OK;
}

static void
hooks_start(asynq_runtime *rt, size_t w, void *arg)
{
	svc_hooks *hs = arg;
	for (size_t i = 0; i < hs->n; i++)
		if (hs->hook[i].start != NULL)
			hs->hook[i].start(rt, w, hs->hook[i].arg);
}

static void
hooks_stop(asynq_runtime *rt, size_t w, void *arg)
{
	svc_hooks *hs = arg;
	for (size_t i = hs->n; i-- > 0;)
		if (hs->hook[i].stop != NULL)
			hs->hook[i].stop(rt, w, hs->hook[i].arg);
}

asynq_status
svc_runtime_alloc(asynq_runtime **rtp, size_t workers, svc_hooks *hs)
{
	if (workers > SVC_MAX_WORKERS)
		return ASYNQ_INVALID_ARGUMENT;
	asynq_runtime_cfg cfg = {
		.workers = workers,
		.sched = { .stack_size = SVC_STACK_SIZE },
		.worker_start = hs != NULL ? hooks_start : NULL,
		.worker_stop = hs != NULL ? hooks_stop : NULL,
		.worker_arg = hs,
	};
	asynq_status rv = asynq_runtime_alloc(rtp, &cfg);
	if (rv == ASYNQ_OK && asynq_runtime_workers(*rtp) > SVC_MAX_WORKERS) {
		asynq_runtime_free(*rtp);
		*rtp = NULL;
		return ASYNQ_INVALID_ARGUMENT;
	}
	if (rv == ASYNQ_OK && admin != NULL)
		(void)asynq_admin_add_runtime(admin, *rtp,
		    admin_as[0] != '\0' ? admin_as : admin_name);
	return rv;
}

/* ---- Servers ------------------------------------------------------------ */

asynq_status
svc_serve(asynq_rpc_server **srvp, asynq_runtime *rt,
    const asynq_rpc_service_desc *svc, svc_add_fn add, void *arg,
    const char *url, const asynq_rpc_server_cfg *cfg)
{
	asynq_rpc_server *srv;
	asynq_status rv;

	if (*srvp != NULL)
		return ASYNQ_FAILED_PRECONDITION;
	if ((rv = asynq_rpc_server_alloc(&srv, rt, cfg)) != ASYNQ_OK)
		return rv;
	if ((rv = add(srv, arg)) != ASYNQ_OK ||
	    (rv = asynq_rpc_server_listen(srv, url)) != ASYNQ_OK) {
		/* The status alone says little ("unavailable"); the server
		 * says what failed ("listen tcp://...: address in use"). */
		fprintf(stderr, "%s: %s\n", svc->full_name,
		    asynq_rpc_server_last_error(srv));
		asynq_rpc_server_free(srv);
		return rv;
	}
	char label[256];
	if (admin != NULL)
		(void)asynq_admin_add_server(admin, srv,
		    admin_label(label, sizeof(label), svc->full_name));
	*srvp = srv;
	return ASYNQ_OK;
}

void
svc_server_counters(const asynq_rpc_server *s, svc_counters *out)
{
	asynq_rpc_server_stats st;
	asynq_rpc_server_stats_get(s, &st);
	out->calls += st.calls;
	out->requests += st.requests;
	out->shed += st.shed;
	out->shed_late += st.shed_late;
}
