/* SPDX-License-Identifier: MIT */
/*
 * Name resolution for channels: a target "dns:///host:port" stands for the
 * addresses getaddrinfo gives for host (A and AAAA records, or the host
 * itself when it is a literal address), each dialled as tcp://ADDR:PORT; a
 * target "dns+srv:///_svc._proto.name" for the SRV records of that name
 * (libresolv's res_nquery), those of the lowest priority present, each
 * target's addresses at its record's port. A channel opened on a target
 * gets a resolver here: a thread that resolves it at once, then every
 * interval, and soon after the channel kicks it (a connection failed), and
 * hands the URLs found to the channel.
 *
 * Design notes:
 * - Resolutions block (a DNS server may take seconds), so they run on the
 *   resolver's own thread, never on a scheduler's; the channel's callback
 *   runs there too, with no lock of ours held, and takes the channel's.
 * - Lock order: the channel's mu, then the resolver's mu (a kick from
 *   under the channel's lock only signals the condition variable).
 * - A failed resolution is tried again sooner than the interval: after 1 s,
 *   x1.6 each time, up to the interval.
 * - Kicks are rate limited (one resolution a second at most, or one per
 *   interval if that is shorter), so a replica that keeps failing does not
 *   turn into a stream of DNS queries.
 */
#include <arpa/inet.h>
#include <arpa/nameser.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <resolv.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include "resolve.h"

#define KICK_GAP_MS 1000
#define RETRY_INITIAL_MS 1000
#define TICK_MS 100

enum { TARGET_DNS, TARGET_SRV };

struct asynqi_resolver {
	char *target;
	const asynq_rpc_resolver *custom;
	uint32_t interval_ms;
	size_t max;
	asynqi_resolved_fn fn;
	void *arg;
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv; /* CLOCK_MONOTONIC */
	bool stop, kicked, now;
	char (*urls)[ASYNQ_RPC_URL_MAX];
};

static int64_t
mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

bool
asynqi_target_is_name(const char *url)
{
	return url != NULL &&
	    (strncmp(url, "dns:", 4) == 0 || strncmp(url, "dns+srv:", 8) == 0);
}

/* Splits target into its kind and the name after "dns:///" (and, for
 * dns:, host and port). False with why for a target we cannot resolve. */
static bool
target_parse(const char *target, int *kind, char *host, size_t host_len,
    char *port, size_t port_len, char *why, size_t why_len)
{
	const char *rest;
	if (strncmp(target, "dns+srv:", 8) == 0) {
		*kind = TARGET_SRV;
		rest = target + 8;
	} else if (strncmp(target, "dns:", 4) == 0) {
		*kind = TARGET_DNS;
		rest = target + 4;
	} else {
		snprintf(why, why_len, "%s: not a dns: or dns+srv: target",
		    target);
		return false;
	}
	if (strncmp(rest, "///", 3) == 0) {
		rest += 3;
	} else if (strncmp(rest, "//", 2) == 0) {
		snprintf(why, why_len,
		    "%s: a DNS server in the target (dns://SERVER/...) is not "
		    "supported; write dns:///NAME and set the resolver in "
		    "resolv.conf",
		    target);
		return false;
	}
	if (*rest == '\0') {
		snprintf(why, why_len, "%s: no name", target);
		return false;
	}
	if (*kind == TARGET_SRV) {
		if (strlen(rest) >= host_len || strchr(rest, ':') != NULL) {
			snprintf(why, why_len,
			    "%s: an SRV name carries no port (the records "
			    "give it) and has at most 255 characters",
			    target);
			return false;
		}
		snprintf(host, host_len, "%s", rest);
		port[0] = '\0';
		return true;
	}
	const char *colon;
	const char *h = rest;
	size_t hl;
	if (*rest == '[') {
		const char *close = strchr(rest, ']');
		if (close == NULL || close[1] != ':') {
			snprintf(why, why_len,
			    "%s: an IPv6 address is written [ADDR]:PORT",
			    target);
			return false;
		}
		h = rest + 1;
		hl = (size_t)(close - h);
		colon = close + 1;
	} else {
		colon = strrchr(rest, ':');
		if (colon == NULL) {
			snprintf(why, why_len, "%s: no port (dns:///HOST:PORT)",
			    target);
			return false;
		}
		hl = (size_t)(colon - rest);
	}
	const char *p = colon + 1;
	char *end;
	long pn = strtol(p, &end, 10);
	if (*p == '\0' || *end != '\0' || pn < 1 || pn > 65535) {
		snprintf(why, why_len, "%s: bad port \"%s\" (1 to 65535)",
		    target, p);
		return false;
	}
	if (hl == 0 || hl >= host_len) {
		snprintf(why, why_len, "%s: bad host name", target);
		return false;
	}
	memcpy(host, h, hl);
	host[hl] = '\0';
	snprintf(port, port_len, "%ld", pn);
	return true;
}

/* Appends tcp://ADDR:port of each address of host to urls (skipping ones
 * already there); returns the new count, or -1 with why. */
static int
add_addrs(const char *host, const char *port, char (*urls)[ASYNQ_RPC_URL_MAX],
    size_t max, int n, char *why, size_t why_len)
{
	struct addrinfo hints, *res = NULL;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_protocol = IPPROTO_TCP;
	int rv = getaddrinfo(host, port, &hints, &res);
	if (rv != 0) {
		snprintf(why, why_len, "resolve %s: %s", host,
		    rv == EAI_SYSTEM ? strerror(errno) : gai_strerror(rv));
		return -1;
	}
	for (struct addrinfo *a = res; a != NULL; a = a->ai_next) {
		char ip[INET6_ADDRSTRLEN], url[ASYNQ_RPC_URL_MAX];
		if (a->ai_family == AF_INET) {
			const struct sockaddr_in *s =
			    (const struct sockaddr_in *)a->ai_addr;
			inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
			snprintf(url, sizeof(url), "tcp://%s:%s", ip, port);
		} else if (a->ai_family == AF_INET6) {
			const struct sockaddr_in6 *s =
			    (const struct sockaddr_in6 *)a->ai_addr;
			inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
			snprintf(url, sizeof(url), "tcp://[%s]:%s", ip, port);
		} else {
			continue;
		}
		bool dup = false;
		for (int i = 0; i < n && (size_t)i < max; i++)
			dup = dup || strcmp(urls[i], url) == 0;
		if (dup)
			continue;
		if ((size_t)n < max)
			memcpy(urls[n], url, sizeof(url));
		n++;
	}
	freeaddrinfo(res);
	return n;
}

static uint16_t
get16(const uint8_t *p)
{
	return (uint16_t)((p[0] << 8) | p[1]);
}

int
asynqi_srv_parse(const uint8_t *msg, size_t len, asynqi_srv *out, size_t max)
{
	if (len < 12)
		return -1;
	const uint8_t *end = msg + len;
	unsigned qd = get16(msg + 4), an = get16(msg + 6);
	const uint8_t *p = msg + 12;
	for (unsigned i = 0; i < qd; i++) {
		int k = dn_skipname(p, end);
		if (k < 0 || end - p < k + 4)
			return -1;
		p += k + 4;
	}
	int n = 0;
	for (unsigned i = 0; i < an; i++) {
		int k = dn_skipname(p, end);
		if (k < 0 || end - p < k + 10)
			return -1;
		p += k;
		uint16_t type = get16(p), rdlen = get16(p + 8);
		p += 10;
		if (end - p < rdlen)
			return -1;
		if (type == ns_t_srv) {
			if (rdlen < 7)
				return -1;
			asynqi_srv rec;
			rec.priority = get16(p);
			rec.weight = get16(p + 2);
			rec.port = get16(p + 4);
			if (dn_expand(msg, end, p + 6, rec.target,
			        sizeof(rec.target)) < 0)
				return -1;
			if ((size_t)n < max)
				out[n] = rec;
			n++;
		}
		p += rdlen;
	}
	return n;
}

#define SRV_MAX 64

static int
resolve_srv(const char *name, char (*urls)[ASYNQ_RPC_URL_MAX], size_t max,
    char *why, size_t why_len)
{
	struct __res_state st;
	memset(&st, 0, sizeof(st));
	if (res_ninit(&st) != 0) {
		snprintf(why, why_len, "resolve SRV %s: resolver set-up failed",
		    name);
		return -1;
	}
	uint8_t ans[8192];
	int len = res_nquery(&st, name, ns_c_in, ns_t_srv, ans, sizeof(ans));
	int herr = st.res_h_errno;
	res_nclose(&st);
	if (len < 0) {
		snprintf(why, why_len, "resolve SRV %s: %s", name,
		    herr == HOST_NOT_FOUND ? "no such name"
		        : herr == NO_DATA  ? "no SRV records"
		        : herr == TRY_AGAIN
		        ? "no answer from the DNS server (try again)"
		        : "the DNS server refused or failed the query");
		return -1;
	}
	asynqi_srv *recs = malloc(SRV_MAX * sizeof(*recs));
	if (recs == NULL) {
		snprintf(why, why_len, "resolve SRV %s: out of memory", name);
		return -1;
	}
	int nr = asynqi_srv_parse(ans, (size_t)len, recs, SRV_MAX);
	if (nr < 0) {
		free(recs);
		snprintf(why, why_len, "resolve SRV %s: malformed DNS reply",
		    name);
		return -1;
	}
	if (nr > SRV_MAX)
		nr = SRV_MAX;
	unsigned best = 65536;
	for (int i = 0; i < nr; i++)
		if (recs[i].priority < best)
			best = recs[i].priority;
	int n = 0;
	char last[256] = "";
	for (int i = 0; i < nr; i++) {
		if (recs[i].priority != best ||
		    strcmp(recs[i].target, ".") == 0)
			continue;
		char port[8];
		snprintf(port, sizeof(port), "%u", recs[i].port);
		int m = add_addrs(recs[i].target, port, urls, max, n, last,
		    sizeof(last));
		if (m >= 0)
			n = m;
	}
	free(recs);
	if (n == 0) {
		snprintf(why, why_len, "resolve SRV %s: %s", name,
		    last[0] != '\0' ? last : "no usable SRV records");
		return -1;
	}
	return n;
}

int
asynqi_resolve_once(const char *target, const asynq_rpc_resolver *custom,
    char (*urls)[ASYNQ_RPC_URL_MAX], size_t max, char *why, size_t why_len)
{
	int kind;
	char host[256], port[16];
	if (!target_parse(target, &kind, host, sizeof(host), port, sizeof(port),
	        why, why_len))
		return -1;
	if (custom != NULL) {
		why[0] = '\0';
		int n = custom->resolve(custom->arg, target, urls, max, why,
		    why_len);
		if (n < 0 && why[0] == '\0')
			snprintf(why, why_len, "resolve %s: failed", target);
		return n;
	}
	if (kind == TARGET_SRV)
		return resolve_srv(host, urls, max, why, why_len);
	int n = add_addrs(host, port, urls, max, 0, why, why_len);
	if (n == 0)
		snprintf(why, why_len, "resolve %s: no addresses", host);
	return n > 0 ? n : -1;
}

static void
abs_after(struct timespec *ts, int64_t ms_from_now)
{
	clock_gettime(CLOCK_MONOTONIC, ts);
	ts->tv_sec += ms_from_now / 1000;
	ts->tv_nsec += (ms_from_now % 1000) * 1000000;
	if (ts->tv_nsec >= 1000000000) {
		ts->tv_sec++;
		ts->tv_nsec -= 1000000000;
	}
}

static void *
resolver_main(void *arg)
{
	asynqi_resolver *r = arg;
	int64_t gap =
	    r->interval_ms < KICK_GAP_MS ? r->interval_ms : KICK_GAP_MS;
	int64_t retry = 0;
	pthread_mutex_lock(&r->mu);
	while (!r->stop) {
		r->kicked = r->now = false;
		pthread_mutex_unlock(&r->mu);
		char why[256] = "";
		int n = asynqi_resolve_once(r->target, r->custom, r->urls,
		    r->max, why, sizeof(why));
		if (n > (int)r->max)
			n = (int)r->max;
		if (n == 0 && why[0] == '\0')
			snprintf(why, sizeof(why), "resolve %s: no addresses",
			    r->target);
		bool tick = r->fn(r->arg, r->urls, n > 0 ? (size_t)n : 0,
		    n > 0 ? NULL : why);
		int64_t last = mono_ms();
		int64_t wait = r->interval_ms;
		if (n <= 0) {
			retry = retry == 0 ? RETRY_INITIAL_MS : retry * 8 / 5;
			if (retry < wait)
				wait = retry;
		} else {
			retry = 0;
		}
		pthread_mutex_lock(&r->mu);
		for (;;) {
			if (r->stop)
				break;
			int64_t now = mono_ms();
			if (now - last >= wait || r->now ||
			    (r->kicked && now - last >= gap))
				break;
			int64_t until = r->kicked ? last + gap : last + wait;
			if (tick && until - now > TICK_MS)
				until = now + TICK_MS;
			struct timespec ts;
			abs_after(&ts, until - now);
			pthread_cond_timedwait(&r->cv, &r->mu, &ts);
			if (tick && !r->stop && mono_ms() >= now + TICK_MS) {
				pthread_mutex_unlock(&r->mu);
				tick = r->fn(r->arg, NULL, 0, NULL);
				pthread_mutex_lock(&r->mu);
			}
		}
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

asynq_status
asynqi_resolver_open(asynqi_resolver **rp, const char *target,
    const asynq_rpc_resolver *custom, uint32_t interval_ms, size_t max,
    asynqi_resolved_fn fn, void *arg, char *why, size_t why_len)
{
	int kind;
	char host[256], port[16];
	if (!target_parse(target, &kind, host, sizeof(host), port, sizeof(port),
	        why, why_len))
		return ASYNQ_INVALID_ARGUMENT;
	asynqi_resolver *r = calloc(1, sizeof(*r));
	if (r == NULL)
		goto fail;
	r->target = strdup(target);
	r->urls = calloc(max, sizeof(*r->urls));
	if (r->target == NULL || r->urls == NULL)
		goto fail_mem;
	r->custom = custom;
	r->interval_ms = interval_ms;
	r->max = max;
	r->fn = fn;
	r->arg = arg;
	pthread_condattr_t ca;
	if (pthread_condattr_init(&ca) != 0)
		goto fail_mem;
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	int crv = pthread_cond_init(&r->cv, &ca);
	pthread_condattr_destroy(&ca);
	if (crv != 0)
		goto fail_mem;
	if (pthread_mutex_init(&r->mu, NULL) != 0)
		goto fail_mu;
	if (pthread_create(&r->th, NULL, resolver_main, r) != 0)
		goto fail_thread;
	*rp = r;
	return ASYNQ_OK;

fail_thread:
	pthread_mutex_destroy(&r->mu);
fail_mu:
	pthread_cond_destroy(&r->cv);
fail_mem:
	free(r->urls);
	free(r->target);
	free(r);
fail:
	snprintf(why, why_len, "%s: out of memory or threads", target);
	return ASYNQ_RESOURCE_EXHAUSTED;
}

void
asynqi_resolver_kick(asynqi_resolver *r, bool now)
{
	if (r == NULL)
		return;
	pthread_mutex_lock(&r->mu);
	r->kicked = true;
	r->now = r->now || now;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

void
asynqi_resolver_close(asynqi_resolver *r)
{
	if (r == NULL)
		return;
	pthread_mutex_lock(&r->mu);
	r->stop = true;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
	pthread_join(r->th, NULL);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	free(r->urls);
	free(r->target);
	free(r);
}
