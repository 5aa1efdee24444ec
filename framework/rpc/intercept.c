/* SPDX-License-Identifier: MIT */
/*
 * Interceptors: what hooks may do with the call they see (reject it, read
 * and add metadata), and the two interceptors the framework ships: W3C
 * trace context carried in `traceparent` metadata, and authorization by
 * per-method policies (peer identities of mutual TLS, scopes of bearer
 * tokens). The hooks themselves are run by the client (client.c, in
 * asynq_rpc_call and when a call's future is computed) and the server
 * (server.c, in the request's task and around handlers).
 *
 * Design notes:
 * - asynq_rpc_call_info.impl_ points at the side's own state, whose first
 *   member is an asynqi_icall; `server` says which side it is.
 * - Authorization checks a method's resolved policy (server.c resolves it
 *   at the first listen: settings first, then the descriptor): a verified
 *   peer that matches, or a bearer token whose scopes match. A request
 *   remembers its last token's verification (asynqi_tokcache), since a
 *   token sent once per request is one value for every call of it.
 * - The trace context is a scoped value pointing at an asynq_rpc_trace
 *   that lives as long as the scope (a handler's call, in the request's
 *   arena; asynq_rpc_with_trace's frame). Span ids come from a counter
 *   mixed by splitmix64 from a random seed: unique in a process, random
 *   looking, no lock and no per-thread state.
 */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "internal.h"

/* ---- What hooks may do --------------------------------------------------- */

asynq_status
asynq_rpc_call_reject(asynq_rpc_call_info *call, asynq_status st,
    const char *fmt, ...)
{
	if (st == ASYNQ_OK)
		st = ASYNQ_UNKNOWN;
	if (call == NULL || call->impl_ == NULL)
		return st;
	asynqi_icall *ic = call->impl_;
	va_list ap;
	va_start(ap, fmt);
	char *text = NULL;
	if (vasprintf(&text, fmt, ap) < 0)
		text = NULL;
	va_end(ap);
	free(ic->reject);
	ic->reject = text;
	return st;
}

const char *
asynqi_icall_reject_msg(const asynq_rpc_call_info *c,
    const asynq_rpc_interceptor *icpt, asynq_status st, char *buf, size_t cap)
{
	const asynqi_icall *ic = c->impl_;
	if (ic->reject != NULL)
		snprintf(buf, cap, "%s", ic->reject);
	else
		snprintf(buf, cap, "%s: rejected by interceptor %s (%s)",
		    c->method->full_name,
		    icpt->name != NULL ? icpt->name : "(unnamed)",
		    asynq_status_name(st));
	return buf;
}

const void *
asynq_rpc_call_metadata(const asynq_rpc_call_info *call, const char *key,
    size_t *len)
{
	if (call == NULL || call->impl_ == NULL || key == NULL)
		return NULL;
	return call->server ? asynqi_srv_call_metadata(call, key, len)
	                    : asynqi_cli_call_metadata(call, key, len);
}

asynq_status
asynq_rpc_call_add_metadata(asynq_rpc_call_info *call, const char *key,
    const void *val, size_t len)
{
	if (call == NULL || call->impl_ == NULL || key == NULL ||
	    (val == NULL && len != 0) ||
	    !((asynqi_icall *)call->impl_)->in_before)
		return ASYNQ_INVALID_ARGUMENT;
	return call->server ? asynqi_srv_call_add_metadata(call, key, val, len)
	                    : asynqi_cli_call_add_metadata(call, key, val, len);
}

/* ---- Trace context ------------------------------------------------------- */

const asynq_scoped asynqi_trace_key = ASYNQ_SCOPED_INIT("asynq.rpc.trace", 0);

static atomic_uint_fast64_t id_next;
static atomic_bool id_seeded;

static uint64_t
splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15u;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9u;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebu;
	return x ^ (x >> 31);
}

void
asynqi_trace_new_id(uint8_t *id, size_t n)
{
	if (!atomic_load_explicit(&id_seeded, memory_order_acquire)) {
		uint64_t seed = 0;
		if (getrandom(&seed, sizeof(seed), GRND_NONBLOCK) !=
		    (ssize_t)sizeof(seed))
			seed = (uint64_t)asynq_now_ns() ^
			    (uint64_t)(uintptr_t)&seed;
		uint_fast64_t zero = 0;
		atomic_compare_exchange_strong(&id_next, &zero, seed);
		atomic_store_explicit(&id_seeded, true, memory_order_release);
	}
	for (size_t i = 0; i < n; i += 8) {
		uint64_t x = 0;
		while (x == 0)
			x = splitmix64(atomic_fetch_add_explicit(&id_next, 1,
			    memory_order_relaxed));
		for (size_t j = 0; j < 8 && i + j < n; j++)
			id[i + j] = (uint8_t)(x >> (8 * j));
	}
}

static const char hexd[] = "0123456789abcdef";

static void
hex_put(char *p, const uint8_t *v, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		p[2 * i] = hexd[v[i] >> 4];
		p[2 * i + 1] = hexd[v[i] & 15];
	}
}

/* Lower-case hex digits' values + 1, 0 for anything else (upper case is
 * invalid in traceparent). */
static const uint8_t hexv[256] = {
	['0'] = 1,
	['1'] = 2,
	['2'] = 3,
	['3'] = 4,
	['4'] = 5,
	['5'] = 6,
	['6'] = 7,
	['7'] = 8,
	['8'] = 9,
	['9'] = 10,
	['a'] = 11,
	['b'] = 12,
	['c'] = 13,
	['d'] = 14,
	['e'] = 15,
	['f'] = 16,
};

static int
hex_val(char c)
{
	return (int)hexv[(unsigned char)c] - 1;
}

/* Reads 2n lower-case hex digits into v; false if any is not one, or
 * all bytes are zero. */
static bool
hex_get(const char *p, uint8_t *v, size_t n)
{
	const unsigned char *q = (const unsigned char *)p;
	unsigned bad = 0, any = 0;
	for (size_t i = 0; i < n; i++) {
		unsigned hi = hexv[q[2 * i]], lo = hexv[q[2 * i + 1]];
		bad |= (hi == 0) | (lo == 0);
		v[i] = (uint8_t)((hi - 1) << 4 | (lo - 1));
		any |= v[i];
	}
	return !bad && any != 0;
}

void
asynq_rpc_trace_format(const asynq_rpc_trace *t, char buf[56])
{
	memcpy(buf, "00-", 3);
	hex_put(buf + 3, t->trace_id, 16);
	buf[35] = '-';
	hex_put(buf + 36, t->span_id, 8);
	buf[52] = '-';
	hex_put(buf + 53, &t->flags, 1);
	buf[55] = '\0';
}

asynq_status
asynq_rpc_trace_parse(const char *s, size_t len, asynq_rpc_trace *out)
{
	asynq_rpc_trace t;
	if (s == NULL || out == NULL || len != 55 || s[0] != '0' ||
	    s[1] != '0' || s[2] != '-' || s[35] != '-' || s[52] != '-' ||
	    !hex_get(s + 3, t.trace_id, 16) || !hex_get(s + 36, t.span_id, 8))
		return ASYNQ_INVALID_ARGUMENT;
	int hi = hex_val(s[53]), lo = hex_val(s[54]);
	if (hi < 0 || lo < 0)
		return ASYNQ_INVALID_ARGUMENT;
	t.flags = (uint8_t)(hi << 4 | lo);
	*out = t;
	return ASYNQ_OK;
}

bool
asynq_rpc_trace_get(asynq_rpc_trace *out)
{
	const asynqi_trace *t = asynq_scoped_get(&asynqi_trace_key);
	if (t == NULL)
		return false;
	if (out != NULL)
		*out = t->t;
	return true;
}

asynq_status
asynq_rpc_with_trace(const asynq_rpc_trace *t, asynq_status (*fn)(void *arg),
    void *arg)
{
	asynqi_trace mine = { .formatted = false };
	if (t != NULL) {
		mine.t = *t;
	} else {
		asynqi_trace_new_id(mine.t.trace_id, 16);
		asynqi_trace_new_id(mine.t.span_id, 8);
		mine.t.flags = 1;
	}
	asynq_status st = asynq_scoped_push(&asynqi_trace_key, &mine);
	if (st != ASYNQ_OK)
		return st;
	st = fn(arg);
	(void)asynq_scoped_pop(&asynqi_trace_key);
	asynqi_md_rele(mine.node);
	return st;
}

/* Client: the calling task's trace goes out as the call's traceparent.
 * Server: the call's traceparent, if well formed, becomes the handler's
 * trace under a new span. */
static asynq_status
trace_before(asynq_rpc_call_info *call, void **state, void *arg)
{
	(void)state;
	(void)arg;
	if (!call->server) {
		asynqi_trace *t = asynq_scoped_get(&asynqi_trace_key);
		if (t == NULL)
			return ASYNQ_OK;
		const asynqi_md_node *cur = asynqi_cli_call_chain(call);
		if (t->node == NULL || t->base != cur) {
			if (!t->formatted) {
				asynq_rpc_trace_format(&t->t, t->tp);
				t->formatted = true;
			}
			asynqi_md_node *n = asynqi_md_make(
			    (asynqi_md_node *)cur, "traceparent", t->tp, 55);
			if (n == NULL)
				return asynq_rpc_call_reject(call,
				    ASYNQ_RESOURCE_EXHAUSTED,
				    "%s: out of memory",
				    call->method->full_name);
			asynqi_md_rele(t->node);
			t->node = n;
			t->base = cur;
		}
		asynqi_cli_call_use_chain(call, t->node);
		return ASYNQ_OK;
	}
	size_t len = 0;
	const char *v = asynq_rpc_call_metadata(call, "traceparent", &len);
	if (v == NULL)
		return ASYNQ_OK;
	/* Calls of a request mostly share one value: parsed once. */
	asynqi_trace_memo *mo = asynqi_srv_call_trace_memo(call);
	if (mo->last != v || mo->len != len) {
		mo->ok = asynq_rpc_trace_parse(v, len, &mo->t) == ASYNQ_OK;
		mo->last = v;
		mo->len = len;
	}
	if (!mo->ok)
		return ASYNQ_OK;
	asynqi_trace *t = asynqi_srv_call_trace(call);
	memcpy(t->t.trace_id, mo->t.trace_id, 16);
	asynqi_trace_new_id(t->t.span_id, 8);
	t->t.flags = mo->t.flags;
	return ASYNQ_OK;
}

const asynq_rpc_interceptor asynq_rpc_trace_interceptor = {
	.name = "trace",
	.before = trace_before,
};

/* ---- Authorization ------------------------------------------------------- */

/* The common name of a subject "CN=frontend,O=example" (RDNs separated by
 * commas, a comma in a value escaped "\,"), unescaped into buf; false
 * without one or when it does not fit. */
static bool
subject_cn(const char *subject, char *buf, size_t cap)
{
	const char *p = subject;
	while (*p != '\0') {
		bool cn = strncmp(p, "CN=", 3) == 0;
		if (cn)
			p += 3;
		size_t n = 0;
		for (; *p != '\0' && *p != ','; p++) {
			if (*p == '\\' && p[1] != '\0')
				p++;
			if (cn && n + 1 < cap)
				buf[n++] = *p;
			else if (cn)
				return false;
		}
		if (cn) {
			buf[n] = '\0';
			return true;
		}
		if (*p == ',')
			p++;
	}
	return false;
}

/* Whether the verified peer matches pattern pat (see asynq_rpc_policy). */
static bool
peer_matches(const asynq_rpc_peer *peer, const char *pat)
{
	if (strcmp(pat, "*") == 0)
		return true;
	if (strncmp(pat, "CN=", 3) == 0) {
		char cn[256];
		return peer->subject != NULL &&
		    subject_cn(peer->subject, cn, sizeof(cn)) &&
		    strcmp(cn, pat + 3) == 0;
	}
	bool bare_uri =
	    strstr(pat, "://") != NULL && strncmp(pat, "URI:", 4) != 0;
	for (size_t i = 0; i < peer->n_sans; i++) {
		const char *san = peer->sans[i];
		if (san == NULL)
			continue;
		if (bare_uri ? strncmp(san, "URI:", 4) == 0 &&
		            strcmp(san + 4, pat) == 0
		             : strcmp(san, pat) == 0)
			return true;
	}
	return false;
}

/* A list that filled its buffer may have been cut in the middle of its
 * last scope ("users.readwrite" read as "users.read"): that one goes. */
static void
scopes_trim(char *scopes, size_t cap)
{
	if (strlen(scopes) < cap - 1)
		return;
	char *sp = strrchr(scopes, ' ');
	if (sp != NULL)
		*sp = '\0';
	else
		scopes[0] = '\0';
}

/* Whether the space-separated scope list has one of the n wanted. */
static bool
scopes_match(const char *have, const char *const *want, size_t n)
{
	for (const char *p = have; *p != '\0';) {
		while (*p == ' ')
			p++;
		size_t len = strcspn(p, " ");
		for (size_t i = 0; len != 0 && i < n; i++)
			if (strlen(want[i]) == len &&
			    memcmp(want[i], p, len) == 0)
				return true;
		p += len;
	}
	return false;
}

/* Appends "a, b or c" of v[0..n) to buf at *off. */
static void
list_put(char *buf, size_t cap, size_t *off, const char *const *v, size_t n)
{
	for (size_t i = 0; i < n && *off < cap; i++) {
		int w = snprintf(buf + *off, cap - *off, "%s%s",
		    i == 0           ? ""
		        : i + 1 == n ? " or "
		                     : ", ",
		    v[i]);
		if (w > 0)
			*off += (size_t)w;
	}
	if (*off >= cap)
		*off = cap - 1;
}

/* What policy p accepts, in words, into buf. */
static const char *
policy_words(const asynqi_policy *p, char *buf, size_t cap)
{
	size_t off = 0;
	buf[0] = '\0';
	if (p->n_peers != 0) {
		off += (size_t)snprintf(buf, cap, "a client certificate of ");
		list_put(buf, cap, &off, p->peers, p->n_peers);
	}
	if (p->n_scopes != 0 && off < cap) {
		int w = snprintf(buf + off, cap - off,
		    "%sa bearer token with scope ", off != 0 ? ", or " : "");
		if (w > 0)
			off += (size_t)w;
		if (off < cap)
			list_put(buf, cap, &off, p->scopes, p->n_scopes);
	}
	return buf;
}

/* Who the peer is, in words: its first SAN, else its subject. */
static const char *
peer_words(const asynq_rpc_peer *peer)
{
	if (peer->n_sans != 0 && peer->sans[0] != NULL)
		return peer->sans[0];
	return peer->subject != NULL ? peer->subject : "(no name)";
}

static asynq_status
authz_before(asynq_rpc_call_info *call, void **state, void *arg)
{
	(void)state;
	(void)arg;
	if (!call->server)
		return ASYNQ_OK;
	asynq_rpc_token_verify_fn verify;
	void *varg;
	asynqi_tokcache *tc;
	const asynqi_policy *p =
	    asynqi_srv_call_policy(call, &verify, &varg, &tc);
	if (p == NULL)
		return ASYNQ_OK;
	const char *name = call->method->full_name;
	const asynq_rpc_peer *peer = call->peer;
	bool verified = peer != NULL && peer->verified;
	for (size_t i = 0; verified && i < p->n_peers; i++)
		if (peer_matches(peer, p->peers[i]))
			return ASYNQ_OK;

	/* The token: "authorization: Bearer <token>" (RFC 6750). */
	size_t alen = 0;
	const char *auth =
	    asynq_rpc_call_metadata(call, "authorization", &alen);
	bool token_ok = false;
	const char *scopes = "";
	const char *token_why = NULL;
	char why[ASYNQI_WHY_CAP + 64];
	if (auth != NULL && p->n_scopes != 0) {
		if (alen < 8 || strncasecmp(auth, "Bearer ", 7) != 0) {
			token_why = "its authorization metadata is not "
			            "\"Bearer <token>\"";
		} else {
			const char *tok = auth + 7;
			size_t tlen = alen - 7;
			while (tlen != 0 && *tok == ' ') {
				tok++;
				tlen--;
			}
			if (tc == NULL)
				return asynq_rpc_call_reject(call,
				    ASYNQ_RESOURCE_EXHAUSTED,
				    "%s: server out of memory", name);
			if (!tc->used || tc->len != tlen ||
			    (tc->tok != tok &&
			        memcmp(tc->tok, tok, tlen) != 0)) {
				tc->scopes[0] = '\0';
				tc->why[0] = '\0';
				tc->st = verify(tok, tlen, call->method,
				    tc->scopes, sizeof(tc->scopes), tc->why,
				    sizeof(tc->why), varg);
				tc->scopes[sizeof(tc->scopes) - 1] = '\0';
				tc->why[sizeof(tc->why) - 1] = '\0';
				scopes_trim(tc->scopes, sizeof(tc->scopes));
				tc->tok = tok;
				tc->len = tlen;
				tc->used = true;
			}
			if (tc->st == ASYNQ_OK) {
				token_ok = true;
				scopes = tc->scopes;
				if (scopes_match(scopes, p->scopes,
				        p->n_scopes))
					return ASYNQ_OK;
			} else {
				snprintf(why, sizeof(why),
				    "its bearer token was rejected: %s",
				    tc->why[0] != '\0'
				        ? tc->why
				        : asynq_status_name(tc->st));
				token_why = why;
			}
		}
	}
	char needs[512];
	policy_words(p, needs, sizeof(needs));
	bool has_cred = (p->n_peers != 0 && verified) || token_ok;
	if (!has_cred)
		return asynq_rpc_call_reject(call, ASYNQ_UNAUTHENTICATED,
		    "%s needs %s; the call %s", name, needs,
		    token_why != NULL ? token_why : "had none");
	char who[ASYNQI_SCOPES_CAP + 320];
	size_t off = 0;
	who[0] = '\0';
	if (p->n_peers != 0 && verified)
		off += (size_t)snprintf(who, sizeof(who), "peer %s",
		    peer_words(peer));
	if (token_ok && off < sizeof(who))
		snprintf(who + off, sizeof(who) - off,
		    "%sa token with scopes \"%s\"", off != 0 ? " and " : "",
		    scopes);
	return asynq_rpc_call_reject(call, ASYNQ_PERMISSION_DENIED,
	    "%s may not be called by %s: it needs %s", name, who, needs);
}

const asynq_rpc_interceptor asynq_rpc_authz_interceptor = {
	.name = "authz",
	.before = authz_before,
};
