/* SPDX-License-Identifier: MIT */
/*
 * asynq's TLS engine for nng, over mbed TLS 2.28 (tls.h).
 *
 * Why an engine of our own: mutual TLS needs the client certificate's
 * subject and subjectAltNames, for handlers (asynq_rpc_peer_get) and for
 * authorization; nng 1.5.2 exposes only NNG_OPT_TLS_VERIFIED. nng lets a
 * program register the engine its TLS streams use
 * (nng/supplemental/tls/engine.h): the engine owns each connection's
 * mbed TLS context, so it can read the peer certificate after the
 * handshake, keep the reason a handshake failed in words, and give each
 * new connection the configuration's current set of certificates, which a
 * reload swaps. The alternative, TLS in conn.c over plain tcp streams,
 * would have duplicated nng's record I/O and its buffering for the same
 * result. nng keeps doing the byte moving and its locking; this file only
 * turns bytes into TLS records and back.
 *
 * Design notes:
 * - Registration: once per process, before our first configuration, after
 *   nng's own initialisation (which registers nng's engine; ours must come
 *   later to replace it). Every nng TLS configuration made after that
 *   uses this engine, ours and nng's internal ones (a tls+tcp:// listener
 *   or dialer makes a default one), so the engine implements every
 *   configuration operation, not only those asynq calls.
 * - A configuration holds a `set` (an mbed TLS configuration with the
 *   certificates, keys, CAs and CRL it points to), reference counted: each
 *   connection takes a reference on the configuration's current set when
 *   it is made and keeps it, so a reload (a new set swapped in under the
 *   configuration's mutex) never changes a connection's, and the old set
 *   goes with its last connection.
 * - nng calls a connection's operations with that connection's lock held
 *   (engine.h's locking statement), so a connection's mbed TLS context
 *   needs no lock of its own. Identities are read by other threads (the
 *   server's reader): they and the failure reason are written and read
 *   under `reg_mu`, in the registry that maps nng's handle of a
 *   connection to ours.
 * - The registry is keyed by the handle nng gives the engine for a
 *   connection, which in nng 1.5.2 is the connection's nng_stream (its
 *   first member): that is how conn.c finds the identity of the stream it
 *   holds. A stream found nowhere has no identity: the peer is reported
 *   unverified (asynq fails closed), and the tests of identities would
 *   show it.
 * - The random generator is one CTR-DRBG behind a mutex.
 * - Lock order: a configuration's mu, then reg_mu (neither held while
 *   calling into nng).
 */
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/entropy.h>
#include <mbedtls/error.h>
#include <mbedtls/net_sockets.h>
#include <mbedtls/oid.h>
#include <mbedtls/pk.h>
#include <mbedtls/ssl.h>
#include <mbedtls/x509_crl.h>
#include <mbedtls/x509_crt.h>
#include <nng/nng.h>
#include <nng/supplemental/tls/engine.h>

#include "tls.h"

#define REG_BUCKETS 256
/* The largest PEM file read (as the server read them before). */
#define MAX_FILE (64u << 20)

/* ---- Random numbers ------------------------------------------------------ */

static pthread_mutex_t rng_mu = PTHREAD_MUTEX_INITIALIZER;
static mbedtls_entropy_context rng_entropy;
static mbedtls_ctr_drbg_context rng_drbg;

static int
rng(void *arg, unsigned char *buf, size_t len)
{
	(void)arg;
	pthread_mutex_lock(&rng_mu);
	int rv = mbedtls_ctr_drbg_random(&rng_drbg, buf, len);
	pthread_mutex_unlock(&rng_mu);
	return rv;
}

/* ---- Sets ---------------------------------------------------------------- */

typedef struct own_key own_key;
struct own_key {
	mbedtls_x509_crt crt;
	mbedtls_pk_context pk;
	own_key *next;
};

typedef struct tls_set {
	atomic_int refs;
	mbedtls_ssl_config conf;
	mbedtls_x509_crt ca;
	mbedtls_x509_crl crl;
	bool has_ca, has_crl;
	own_key *keys;
	char *server_name;
} tls_set;

static tls_set *
set_new(bool server)
{
	tls_set *s = calloc(1, sizeof(*s));
	if (s == NULL)
		return NULL;
	atomic_init(&s->refs, 1);
	mbedtls_ssl_config_init(&s->conf);
	mbedtls_x509_crt_init(&s->ca);
	mbedtls_x509_crl_init(&s->crl);
	if (mbedtls_ssl_config_defaults(&s->conf,
	        server ? MBEDTLS_SSL_IS_SERVER : MBEDTLS_SSL_IS_CLIENT,
	        MBEDTLS_SSL_TRANSPORT_STREAM,
	        MBEDTLS_SSL_PRESET_DEFAULT) != 0) {
		mbedtls_ssl_config_free(&s->conf);
		free(s);
		return NULL;
	}
	/* A client verifies its server unless told otherwise; a server asks
	 * for no client certificate unless told to. TLS 1.2 at least. */
	mbedtls_ssl_conf_authmode(&s->conf,
	    server ? MBEDTLS_SSL_VERIFY_NONE : MBEDTLS_SSL_VERIFY_REQUIRED);
	mbedtls_ssl_conf_rng(&s->conf, rng, NULL);
	mbedtls_ssl_conf_min_version(&s->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
	    MBEDTLS_SSL_MINOR_VERSION_3);
	return s;
}

static void
set_rele(tls_set *s)
{
	if (s == NULL || atomic_fetch_sub(&s->refs, 1) != 1)
		return;
	mbedtls_ssl_config_free(&s->conf);
	mbedtls_x509_crt_free(&s->ca);
	mbedtls_x509_crl_free(&s->crl);
	while (s->keys != NULL) {
		own_key *k = s->keys;
		s->keys = k->next;
		mbedtls_x509_crt_free(&k->crt);
		mbedtls_pk_free(&k->pk);
		free(k);
	}
	free(s->server_name);
	free(s);
}

/* mbed TLS's message for rv. */
static void
mbed_why(int rv, char *buf, size_t len)
{
	mbedtls_strerror(rv, buf, len);
	if (buf[0] == '\0')
		snprintf(buf, len, "mbed TLS error -0x%04x", (unsigned)-rv);
}

/* Sets s's CA chain (and CRL) from PEM text; 0 or an mbed TLS error, with
 * *what saying which of the two was at fault. */
static int
set_ca(tls_set *s, const char *ca, const char *crl, const char **what)
{
	mbedtls_x509_crt_free(&s->ca);
	mbedtls_x509_crt_init(&s->ca);
	mbedtls_x509_crl_free(&s->crl);
	mbedtls_x509_crl_init(&s->crl);
	s->has_ca = s->has_crl = false;
	*what = "ca";
	int rv = mbedtls_x509_crt_parse(&s->ca, (const unsigned char *)ca,
	    strlen(ca) + 1);
	if (rv != 0)
		return rv < 0 ? rv : MBEDTLS_ERR_X509_INVALID_FORMAT;
	s->has_ca = true;
	if (crl != NULL) {
		*what = "crl";
		rv = mbedtls_x509_crl_parse(&s->crl, (const unsigned char *)crl,
		    strlen(crl) + 1);
		if (rv != 0)
			return rv;
		s->has_crl = true;
	}
	mbedtls_ssl_conf_ca_chain(&s->conf, &s->ca,
	    s->has_crl ? &s->crl : NULL);
	return 0;
}

/* Adds a certificate chain and its key to s; 0 or an mbed TLS error
 * (MBEDTLS_ERR_PK_BAD_INPUT_DATA: they do not match). */
static int
set_own(tls_set *s, const char *cert, const char *key, const char *pass,
    const char **what)
{
	own_key *k = calloc(1, sizeof(*k));
	if (k == NULL)
		return MBEDTLS_ERR_SSL_ALLOC_FAILED;
	mbedtls_x509_crt_init(&k->crt);
	mbedtls_pk_init(&k->pk);
	*what = "cert";
	int rv = mbedtls_x509_crt_parse(&k->crt, (const unsigned char *)cert,
	    strlen(cert) + 1);
	if (rv > 0)
		rv = MBEDTLS_ERR_X509_INVALID_FORMAT;
	if (rv == 0) {
		*what = "key";
		rv = mbedtls_pk_parse_key(&k->pk, (const unsigned char *)key,
		    strlen(key) + 1, (const unsigned char *)pass,
		    pass != NULL ? strlen(pass) : 0);
	}
	if (rv == 0 && mbedtls_pk_check_pair(&k->crt.pk, &k->pk) != 0) {
		*what = "pair";
		rv = MBEDTLS_ERR_PK_BAD_INPUT_DATA;
	}
	if (rv == 0)
		rv = mbedtls_ssl_conf_own_cert(&s->conf, &k->crt, &k->pk);
	if (rv != 0) {
		mbedtls_x509_crt_free(&k->crt);
		mbedtls_pk_free(&k->pk);
		free(k);
		return rv;
	}
	k->next = s->keys;
	s->keys = k;
	return 0;
}

/* ---- Configurations (nng's operations) ----------------------------------- */

struct nng_tls_engine_config {
	pthread_mutex_t mu;
	bool server;
	tls_set *cur; /* under mu */
};

/* The configuration the calling thread's nng_tls_config_alloc just made:
 * how asynqi_tls_alloc finds ours in nng's object. */
static _Thread_local struct nng_tls_engine_config *just_made;

static int
map_mbed(int rv)
{
	switch (rv) {
	case 0:
		return 0;
	case MBEDTLS_ERR_SSL_ALLOC_FAILED:
	case MBEDTLS_ERR_X509_ALLOC_FAILED:
	case MBEDTLS_ERR_PK_ALLOC_FAILED:
		return NNG_ENOMEM;
	case MBEDTLS_ERR_SSL_NO_CLIENT_CERTIFICATE:
	case MBEDTLS_ERR_SSL_PEER_VERIFY_FAILED:
	case MBEDTLS_ERR_SSL_CA_CHAIN_REQUIRED:
	case MBEDTLS_ERR_SSL_NO_USABLE_CIPHERSUITE:
	case MBEDTLS_ERR_X509_CERT_VERIFY_FAILED:
		return NNG_EPEERAUTH;
	case MBEDTLS_ERR_SSL_PEER_CLOSE_NOTIFY:
	case MBEDTLS_ERR_SSL_CONN_EOF:
		return NNG_ECONNSHUT;
	default:
		return NNG_ECRYPTO;
	}
}

static int
cfg_init(struct nng_tls_engine_config *c, nng_tls_mode mode)
{
	c->server = mode == NNG_TLS_MODE_SERVER;
	if ((c->cur = set_new(c->server)) == NULL)
		return NNG_ENOMEM;
	if (pthread_mutex_init(&c->mu, NULL) != 0) {
		set_rele(c->cur);
		return NNG_ENOMEM;
	}
	just_made = c;
	return 0;
}

static void
cfg_fini(struct nng_tls_engine_config *c)
{
	set_rele(c->cur);
	pthread_mutex_destroy(&c->mu);
}

static int
cfg_server(struct nng_tls_engine_config *c, const char *name)
{
	char *n = name != NULL ? strdup(name) : NULL;
	if (name != NULL && n == NULL)
		return NNG_ENOMEM;
	pthread_mutex_lock(&c->mu);
	free(c->cur->server_name);
	c->cur->server_name = n;
	pthread_mutex_unlock(&c->mu);
	return 0;
}

static int
cfg_auth(struct nng_tls_engine_config *c, nng_tls_auth_mode mode)
{
	int m = mode == NNG_TLS_AUTH_MODE_NONE   ? MBEDTLS_SSL_VERIFY_NONE
	    : mode == NNG_TLS_AUTH_MODE_OPTIONAL ? MBEDTLS_SSL_VERIFY_OPTIONAL
	    : mode == NNG_TLS_AUTH_MODE_REQUIRED ? MBEDTLS_SSL_VERIFY_REQUIRED
	                                         : -1;
	if (m < 0)
		return NNG_EINVAL;
	pthread_mutex_lock(&c->mu);
	mbedtls_ssl_conf_authmode(&c->cur->conf, m);
	pthread_mutex_unlock(&c->mu);
	return 0;
}

static int
cfg_ca_chain(struct nng_tls_engine_config *c, const char *ca, const char *crl)
{
	const char *what;
	pthread_mutex_lock(&c->mu);
	int rv = set_ca(c->cur, ca, crl, &what);
	pthread_mutex_unlock(&c->mu);
	return rv == 0                            ? 0
	    : rv == MBEDTLS_ERR_X509_ALLOC_FAILED ? NNG_ENOMEM
	                                          : NNG_EINVAL;
}

static int
cfg_own_cert(struct nng_tls_engine_config *c, const char *cert, const char *key,
    const char *pass)
{
	const char *what;
	pthread_mutex_lock(&c->mu);
	int rv = set_own(c->cur, cert, key, pass, &what);
	pthread_mutex_unlock(&c->mu);
	return rv == 0                           ? 0
	    : rv == MBEDTLS_ERR_SSL_ALLOC_FAILED ? NNG_ENOMEM
	                                         : NNG_EINVAL;
}

static int
cfg_version(struct nng_tls_engine_config *c, nng_tls_version lo,
    nng_tls_version hi)
{
	/* mbed TLS 2.28 speaks TLS 1.2 at most, and we accept nothing
	 * older than 1.0. */
	if (lo > hi || lo > NNG_TLS_1_2 || hi < NNG_TLS_1_0)
		return NNG_ENOTSUP;
	if (lo < NNG_TLS_1_0)
		lo = NNG_TLS_1_0;
	if (hi > NNG_TLS_1_2)
		hi = NNG_TLS_1_2;
	pthread_mutex_lock(&c->mu);
	mbedtls_ssl_conf_min_version(&c->cur->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
	    (int)(lo - NNG_TLS_1_0) + 1);
	mbedtls_ssl_conf_max_version(&c->cur->conf, MBEDTLS_SSL_MAJOR_VERSION_3,
	    (int)(hi - NNG_TLS_1_0) + 1);
	pthread_mutex_unlock(&c->mu);
	return 0;
}

/* ---- Connections --------------------------------------------------------- */

struct nng_tls_engine_conn {
	void *tls; /* nng's handle: the key of the registry */
	tls_set *set;
	mbedtls_ssl_context ssl;
	bool server;
	bool done;  /* the handshake finished */
	int failed; /* the mbed TLS error the handshake failed with, or 0 */
	struct nng_tls_engine_conn *next; /* registry bucket */
	/* Under reg_mu. */
	bool verified;
	char *subject;
	char **sans;
	size_t n_sans;
	char *rejected; /* a certificate presented and not verified: why */
	char *failure;  /* why the handshake failed */
};

static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct nng_tls_engine_conn *reg[REG_BUCKETS];

static size_t
reg_hash(const void *p)
{
	uintptr_t v = (uintptr_t)p;
	v ^= v >> 17;
	v *= UINT64_C(0x9e3779b97f4a7c15);
	return (size_t)(v >> 24) % REG_BUCKETS;
}

/* Under reg_mu. */
static struct nng_tls_engine_conn *
reg_find(const void *tls)
{
	struct nng_tls_engine_conn *e = reg[reg_hash(tls)];
	while (e != NULL && e->tls != tls)
		e = e->next;
	return e;
}

static int
bio_send(void *arg, const unsigned char *buf, size_t len)
{
	size_t n = len;
	int rv = nng_tls_engine_send(arg, buf, &n);
	if (rv == NNG_EAGAIN)
		return MBEDTLS_ERR_SSL_WANT_WRITE;
	return rv == 0 ? (int)n : MBEDTLS_ERR_NET_SEND_FAILED;
}

static int
bio_recv(void *arg, unsigned char *buf, size_t len)
{
	size_t n = len;
	int rv = nng_tls_engine_recv(arg, buf, &n);
	if (rv == NNG_EAGAIN)
		return MBEDTLS_ERR_SSL_WANT_READ;
	return rv == 0 ? (int)n : MBEDTLS_ERR_NET_RECV_FAILED;
}

static int
conn_init(struct nng_tls_engine_conn *ec, void *tls,
    struct nng_tls_engine_config *c)
{
	ec->tls = tls;
	ec->server = c->server;
	pthread_mutex_lock(&c->mu);
	ec->set = c->cur;
	atomic_fetch_add(&ec->set->refs, 1);
	pthread_mutex_unlock(&c->mu);
	mbedtls_ssl_init(&ec->ssl);
	int rv = mbedtls_ssl_setup(&ec->ssl, &ec->set->conf);
	if (rv == 0 && ec->set->server_name != NULL)
		rv = mbedtls_ssl_set_hostname(&ec->ssl, ec->set->server_name);
	if (rv != 0) {
		mbedtls_ssl_free(&ec->ssl);
		set_rele(ec->set);
		return map_mbed(rv) == NNG_ENOMEM ? NNG_ENOMEM : NNG_ECRYPTO;
	}
	mbedtls_ssl_set_bio(&ec->ssl, tls, bio_send, bio_recv, NULL);
	pthread_mutex_lock(&reg_mu);
	size_t h = reg_hash(tls);
	ec->next = reg[h];
	reg[h] = ec;
	pthread_mutex_unlock(&reg_mu);
	return 0;
}

static void
conn_fini(struct nng_tls_engine_conn *ec)
{
	pthread_mutex_lock(&reg_mu);
	struct nng_tls_engine_conn **p = &reg[reg_hash(ec->tls)];
	while (*p != NULL && *p != ec)
		p = &(*p)->next;
	if (*p != NULL)
		*p = ec->next;
	pthread_mutex_unlock(&reg_mu);
	mbedtls_ssl_free(&ec->ssl);
	set_rele(ec->set);
	free(ec->subject);
	for (size_t i = 0; i < ec->n_sans; i++)
		free(ec->sans[i]);
	free(ec->sans);
	free(ec->rejected);
	free(ec->failure);
}

static void
conn_close(struct nng_tls_engine_conn *ec)
{
	if (ec->done)
		(void)mbedtls_ssl_close_notify(&ec->ssl);
}

/* A growing string; `failed` once memory ran out. */
typedef struct strbuf {
	char *p;
	size_t len, cap;
	bool failed;
} strbuf;

static void
sb_put(strbuf *b, const char *s, size_t n)
{
	if (b->failed)
		return;
	if (b->cap - b->len <= n) {
		size_t cap = b->cap != 0 ? b->cap : 128;
		while (cap - b->len <= n)
			cap *= 2;
		char *p = realloc(b->p, cap);
		if (p == NULL) {
			b->failed = true;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void
sb_str(strbuf *b, const char *s)
{
	sb_put(b, s, strlen(s));
}

/* The string built, or NULL (freed) when memory ran out. */
static char *
sb_done(strbuf *b)
{
	if (b->failed || b->p == NULL) {
		free(b->p);
		return NULL;
	}
	return b->p;
}

/* Appends an attribute value, escaping what RFC 4514 escapes. */
static void
dn_put(strbuf *b, const unsigned char *s, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = s[i];
		char e[4];
		if (ch < 0x20 || ch == 0x7f) {
			snprintf(e, sizeof(e), "\\%02x", ch);
			sb_str(b, e);
			continue;
		}
		bool esc = ch == ',' || ch == '+' || ch == '"' || ch == '\\' ||
		    ch == '<' || ch == '>' || ch == ';' || ch == '=' ||
		    (i == 0 && (ch == ' ' || ch == '#')) ||
		    (i == n - 1 && ch == ' ');
		if (esc)
			sb_put(b, "\\", 1);
		sb_put(b, (const char *)&ch, 1);
	}
}

/* The subject "CN=frontend,O=example": attributes in the certificate's
 * order, "," between them, "+" inside a multi-valued one. NULL without
 * memory. */
static char *
subject_of(const mbedtls_x509_crt *crt)
{
	strbuf b = { 0 };
	sb_put(&b, "", 0);
	bool sep = false;
	for (const mbedtls_x509_name *n = &crt->subject; n != NULL;
	     n = n->next) {
		if (n->oid.p == NULL)
			continue;
		const char *sn = NULL;
		char oid[64];
		if (mbedtls_oid_get_attr_short_name(&n->oid, &sn) != 0) {
			if (mbedtls_oid_get_numeric_string(oid, sizeof(oid),
			        &n->oid) < 0)
				snprintf(oid, sizeof(oid), "?");
			sn = oid;
		}
		if (sep)
			sb_put(&b, ",", 1);
		sb_str(&b, sn);
		sb_put(&b, "=", 1);
		dn_put(&b, n->val.p, n->val.len);
		sep = true;
		if (n->next_merged) {
			sb_put(&b, "+", 1);
			sep = false;
		}
	}
	return sb_done(&b);
}

/* One subjectAltName entry as "DNS:...", "URI:...", "IP:...", "EMAIL:...";
 * NULL for kinds without a text form (otherName, directoryName, ...), for
 * a name with a NUL inside (it could hide a suffix), or without memory. */
static char *
san_of(const mbedtls_x509_buf *v, bool *nomem)
{
	char b[64];
	int kind = v->tag & 0x1f;
	const char *pre = kind == 1 ? "EMAIL:"
	    : kind == 2             ? "DNS:"
	    : kind == 6             ? "URI:"
	    : kind == 7             ? "IP:"
	                            : NULL;
	if (pre == NULL)
		return NULL;
	if (kind == 7) {
		if (v->len == 4) {
			snprintf(b, sizeof(b), "IP:%u.%u.%u.%u", v->p[0],
			    v->p[1], v->p[2], v->p[3]);
		} else if (v->len == 16) {
			size_t at = (size_t)snprintf(b, sizeof(b), "IP:");
			for (int i = 0; i < 16; i += 2)
				at += (size_t)snprintf(b + at, sizeof(b) - at,
				    "%s%x", i != 0 ? ":" : "",
				    (unsigned)v->p[i] << 8 | v->p[i + 1]);
		} else {
			return NULL;
		}
		char *t = strdup(b);
		*nomem = t == NULL;
		return t;
	}
	if (memchr(v->p, '\0', v->len) != NULL)
		return NULL;
	strbuf sb = { 0 };
	sb_str(&sb, pre);
	sb_put(&sb, (const char *)v->p, v->len);
	char *t = sb_done(&sb);
	*nomem = t == NULL;
	return t;
}

/* Why a certificate failed verification, from mbed TLS's flags, in one
 * line ("the certificate validity has expired; ..."). */
static char *
verify_why(uint32_t flags)
{
	char b[512];
	if (flags == 0 || flags == (uint32_t)-1)
		return strdup("the certificate was not verified");
	if (mbedtls_x509_crt_verify_info(b, sizeof(b), "", flags) < 0)
		snprintf(b, sizeof(b), "verification flags 0x%x",
		    (unsigned)flags);
	size_t n = strlen(b);
	while (n > 0 && b[n - 1] == '\n')
		b[--n] = '\0';
	for (char *p = b; *p != '\0'; p++)
		if (*p == '\n')
			*p = ';';
	if (b[0] >= 'A' && b[0] <= 'Z')
		b[0] = (char)(b[0] - 'A' + 'a');
	return strdup(b);
}

/* After a handshake: the peer's identity into the registry entry. */
static void
conn_identity(struct nng_tls_engine_conn *ec)
{
	const mbedtls_x509_crt *crt = mbedtls_ssl_get_peer_cert(&ec->ssl);
	uint32_t flags = mbedtls_ssl_get_verify_result(&ec->ssl);
	bool verified = crt != NULL && flags == 0;
	char *subject = NULL, **sans = NULL, *rejected = NULL;
	size_t n_sans = 0;
	if (verified) {
		subject = subject_of(crt);
		size_t n = 0;
		for (const mbedtls_x509_sequence *q = &crt->subject_alt_names;
		     q != NULL && q->buf.p != NULL; q = q->next)
			n++;
		sans = n > 0 ? calloc(n, sizeof(*sans)) : NULL;
		bool nomem = n > 0 && sans == NULL;
		for (const mbedtls_x509_sequence *q = &crt->subject_alt_names;
		     sans != NULL && q != NULL && q->buf.p != NULL;
		     q = q->next) {
			bool no = false;
			char *t = san_of(&q->buf, &no);
			if (t != NULL)
				sans[n_sans++] = t;
			nomem = nomem || no;
		}
		/* An identity cut short is no identity: without memory for
		 * all of it the peer counts as unverified. */
		if (nomem) {
			free(subject);
			subject = NULL;
		}
	} else if (crt != NULL) {
		rejected = verify_why(flags);
	}
	if (subject == NULL) {
		for (size_t i = 0; i < n_sans; i++)
			free(sans[i]);
		free(sans);
		sans = NULL;
		n_sans = 0;
	}
	pthread_mutex_lock(&reg_mu);
	ec->verified = verified && subject != NULL;
	ec->subject = subject;
	ec->sans = sans;
	ec->n_sans = n_sans;
	ec->rejected = rejected;
	pthread_mutex_unlock(&reg_mu);
}

/* After a failed handshake: why, in words, into the registry entry. */
static void
conn_failed(struct nng_tls_engine_conn *ec, int rv)
{
	char b[512], m[200];
	uint32_t flags = mbedtls_ssl_get_verify_result(&ec->ssl);
	const char *who = ec->server ? "client" : "server";
	if (rv == MBEDTLS_ERR_SSL_NO_CLIENT_CERTIFICATE ||
	    (rv == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED &&
	        mbedtls_ssl_get_peer_cert(&ec->ssl) == NULL &&
	        (flags & MBEDTLS_X509_BADCERT_MISSING) != 0)) {
		snprintf(b, sizeof(b), "the %s presented no certificate", who);
	} else if (rv == MBEDTLS_ERR_X509_CERT_VERIFY_FAILED) {
		char *why = verify_why(flags);
		snprintf(b, sizeof(b), "the %s certificate was rejected: %s",
		    who, why != NULL ? why : "not verified");
		free(why);
	} else if (rv == MBEDTLS_ERR_SSL_FATAL_ALERT_MESSAGE) {
		snprintf(b, sizeof(b),
		    "the %s refused the handshake (a fatal alert)", who);
	} else {
		mbed_why(rv, m, sizeof(m));
		snprintf(b, sizeof(b),
		    "not a TLS handshake we accept (%s; -0x%04x)", m,
		    (unsigned)-rv);
	}
	char *f = strdup(b);
	pthread_mutex_lock(&reg_mu);
	ec->failure = f;
	pthread_mutex_unlock(&reg_mu);
}

static int
conn_handshake(struct nng_tls_engine_conn *ec)
{
	/* nng may call again after a failure (when the alert it sent is
	 * written): a failed context is not run again, and the first
	 * reason stands. */
	if (ec->failed != 0)
		return map_mbed(ec->failed);
	int rv = mbedtls_ssl_handshake(&ec->ssl);
	if (rv == MBEDTLS_ERR_SSL_WANT_READ || rv == MBEDTLS_ERR_SSL_WANT_WRITE)
		return NNG_EAGAIN;
	if (rv != 0) {
		/* The peer going away mid-handshake is no verdict. */
		if (rv != MBEDTLS_ERR_NET_RECV_FAILED &&
		    rv != MBEDTLS_ERR_NET_SEND_FAILED &&
		    rv != MBEDTLS_ERR_SSL_CONN_EOF)
			conn_failed(ec, rv);
		ec->failed = rv;
		return map_mbed(rv);
	}
	ec->done = true;
	conn_identity(ec);
	return 0;
}

static int
conn_recv(struct nng_tls_engine_conn *ec, uint8_t *buf, size_t *len)
{
	int rv = mbedtls_ssl_read(&ec->ssl, buf, *len);
	if (rv == MBEDTLS_ERR_SSL_WANT_READ || rv == MBEDTLS_ERR_SSL_WANT_WRITE)
		return NNG_EAGAIN;
	if (rv == 0)
		return NNG_ECONNSHUT;
	if (rv < 0)
		return map_mbed(rv);
	*len = (size_t)rv;
	return 0;
}

static int
conn_send(struct nng_tls_engine_conn *ec, const uint8_t *buf, size_t *len)
{
	int rv = mbedtls_ssl_write(&ec->ssl, buf, *len);
	if (rv == MBEDTLS_ERR_SSL_WANT_READ || rv == MBEDTLS_ERR_SSL_WANT_WRITE)
		return NNG_EAGAIN;
	if (rv < 0)
		return map_mbed(rv);
	*len = (size_t)rv;
	return 0;
}

static bool
conn_verified(struct nng_tls_engine_conn *ec)
{
	return ec->done && mbedtls_ssl_get_peer_cert(&ec->ssl) != NULL &&
	    mbedtls_ssl_get_verify_result(&ec->ssl) == 0;
}

/* ---- The engine ------------------------------------------------------ */

static nng_tls_engine_config_ops cfg_ops = {
	.size = sizeof(struct nng_tls_engine_config),
	.init = cfg_init,
	.fini = cfg_fini,
	.server = cfg_server,
	.auth = cfg_auth,
	.ca_chain = cfg_ca_chain,
	.own_cert = cfg_own_cert,
	.version = cfg_version,
};

static nng_tls_engine_conn_ops conn_ops = {
	.size = sizeof(struct nng_tls_engine_conn),
	.init = conn_init,
	.fini = conn_fini,
	.close = conn_close,
	.handshake = conn_handshake,
	.recv = conn_recv,
	.send = conn_send,
	.verified = conn_verified,
};

static const nng_tls_engine engine = {
	.version = NNG_TLS_ENGINE_VERSION,
	.config_ops = &cfg_ops,
	.conn_ops = &conn_ops,
	.name = "asynq-mbedtls",
	.description = "asynq's engine over mbed TLS 2.28 (peer identities, "
	               "reloadable certificates)",
	.fips_mode = false,
};

static pthread_once_t engine_once = PTHREAD_ONCE_INIT;
static int engine_rv;

static void
engine_register(void)
{
	mbedtls_entropy_init(&rng_entropy);
	mbedtls_ctr_drbg_init(&rng_drbg);
	static const unsigned char pers[] = "asynq-tls";
	if (mbedtls_ctr_drbg_seed(&rng_drbg, mbedtls_entropy_func, &rng_entropy,
	        pers, sizeof(pers) - 1) != 0) {
		engine_rv = NNG_ECRYPTO;
		return;
	}
	/* nng initialises itself (registering its own engine) on first
	 * use: make that happen first, so that ours replaces it. */
	(void)nng_tls_engine_name();
	engine_rv = nng_tls_engine_register(&engine);
}

/* ---- asynq's configurations ------------------------------------------ */

struct asynqi_tls {
	nng_tls_config *nng;
	struct nng_tls_engine_config *e; /* inside nng's object */
	bool server;
};

/* Reads a whole file as a string (malloc'd); NULL with errno. */
static char *
file_text(const char *path)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	char *buf = NULL;
	size_t len = 0, cap = 0;
	for (;;) {
		if (cap - len < 4096) {
			cap = cap != 0 ? cap * 2 : 8192;
			char *nb = cap <= MAX_FILE ? realloc(buf, cap) : NULL;
			if (nb == NULL) {
				free(buf);
				fclose(f);
				errno = cap > MAX_FILE ? EFBIG : ENOMEM;
				return NULL;
			}
			buf = nb;
		}
		size_t n = fread(buf + len, 1, cap - len - 1, f);
		len += n;
		if (n == 0)
			break;
	}
	int bad = ferror(f);
	fclose(f);
	if (bad) {
		free(buf);
		errno = EIO;
		return NULL;
	}
	buf[len] = '\0';
	return buf;
}

/* Frees a file's text, wiping it first (keys do not linger in freed
 * memory). */
static void
text_free(char *t)
{
	if (t == NULL)
		return;
	volatile char *v = t;
	for (size_t i = 0; v[i] != '\0'; i++)
		v[i] = 0;
	free(t);
}

static const char *
setting(const char *name, const char *dflt)
{
	return name != NULL ? name : dflt;
}

/* A set made from f's files; NULL with the reason in err. */
static tls_set *
set_from_files(bool server, const asynqi_tls_files *f, asynq_status *st,
    char *err, size_t err_len)
{
	char *cert = NULL, *key = NULL, *ca = NULL, *crl = NULL;
	tls_set *s = NULL;
	*st = ASYNQ_INVALID_ARGUMENT;
	struct {
		const char *path, *name;
		char **out;
	} files[] = {
		{ f->cert_file, setting(f->cert_setting, "tls_cert_file"),
		    &cert },
		{ f->key_file, setting(f->key_setting, "tls_key_file"), &key },
		{ f->ca_file, setting(f->ca_setting, "tls_ca_file"), &ca },
		{ f->crl_file, setting(f->crl_setting, "tls_crl_file"), &crl },
	};
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		if (files[i].path == NULL)
			continue;
		if ((*files[i].out = file_text(files[i].path)) == NULL) {
			snprintf(err, err_len, "%s %s: %s", files[i].name,
			    files[i].path, strerror(errno));
			goto out;
		}
	}
	if ((cert != NULL) != (key != NULL)) {
		snprintf(err, err_len, "%s and %s go together", files[0].name,
		    files[1].name);
		goto out;
	}
	if (crl != NULL && ca == NULL) {
		snprintf(err, err_len, "%s needs %s", files[3].name,
		    files[2].name);
		goto out;
	}
	if (server && cert == NULL) {
		snprintf(err, err_len, "a TLS server needs %s and %s",
		    files[0].name, files[1].name);
		goto out;
	}
	if ((s = set_new(server)) == NULL) {
		*st = ASYNQ_RESOURCE_EXHAUSTED;
		snprintf(err, err_len, "out of memory");
		goto out;
	}
	const char *what = "";
	char m[200];
	int rv;
	if (cert != NULL && (rv = set_own(s, cert, key, NULL, &what)) != 0) {
		mbed_why(rv, m, sizeof(m));
		if (strcmp(what, "pair") == 0)
			snprintf(err, err_len,
			    "%s is not the key of %s: the key is not the "
			    "certificate's (%s, %s)",
			    files[1].name, files[0].name, f->key_file,
			    f->cert_file);
		else
			snprintf(err, err_len, "%s %s: %s",
			    strcmp(what, "key") == 0 ? files[1].name
			                             : files[0].name,
			    strcmp(what, "key") == 0 ? f->key_file
			                             : f->cert_file,
			    m);
		goto fail;
	}
	if (ca != NULL && (rv = set_ca(s, ca, crl, &what)) != 0) {
		mbed_why(rv, m, sizeof(m));
		bool c = strcmp(what, "crl") == 0;
		snprintf(err, err_len, "%s %s: %s",
		    c ? files[3].name : files[2].name,
		    c ? f->crl_file : f->ca_file, m);
		goto fail;
	}
	if (server)
		mbedtls_ssl_conf_authmode(&s->conf,
		    ca == NULL                 ? MBEDTLS_SSL_VERIFY_NONE
		        : f->require_peer_cert ? MBEDTLS_SSL_VERIFY_REQUIRED
		                               : MBEDTLS_SSL_VERIFY_OPTIONAL);
	if (!server && f->server_name != NULL &&
	    (s->server_name = strdup(f->server_name)) == NULL) {
		*st = ASYNQ_RESOURCE_EXHAUSTED;
		snprintf(err, err_len, "out of memory");
		goto fail;
	}
	*st = ASYNQ_OK;
	goto out;
fail:
	set_rele(s);
	s = NULL;
out:
	text_free(cert);
	text_free(key);
	text_free(ca);
	text_free(crl);
	return s;
}

asynq_status
asynqi_tls_alloc(asynqi_tls **tp, bool server, const asynqi_tls_files *f,
    char *err, size_t err_len)
{
	pthread_once(&engine_once, engine_register);
	if (engine_rv != 0) {
		snprintf(err, err_len, "TLS engine: %s",
		    nng_strerror(engine_rv));
		return ASYNQ_INTERNAL;
	}
	asynq_status st;
	tls_set *s = set_from_files(server, f, &st, err, err_len);
	if (s == NULL)
		return st;
	asynqi_tls *t = calloc(1, sizeof(*t));
	if (t == NULL)
		goto fail_t;
	just_made = NULL;
	int rv = nng_tls_config_alloc(&t->nng,
	    server ? NNG_TLS_MODE_SERVER : NNG_TLS_MODE_CLIENT);
	if (rv != 0)
		goto fail_nng;
	if ((t->e = just_made) == NULL) {
		/* nng made it with another engine (it was initialised again
		 * after ours was registered). */
		nng_tls_config_free(t->nng);
		free(t);
		set_rele(s);
		snprintf(err, err_len,
		    "TLS engine: nng no longer uses asynq's engine");
		return ASYNQ_INTERNAL;
	}
	t->server = server;
	pthread_mutex_lock(&t->e->mu);
	tls_set *old = t->e->cur;
	t->e->cur = s;
	pthread_mutex_unlock(&t->e->mu);
	set_rele(old);
	*tp = t;
	return ASYNQ_OK;
fail_nng:
	free(t);
	set_rele(s);
	snprintf(err, err_len, "TLS configuration: %s", nng_strerror(rv));
	return rv == NNG_ENOMEM ? ASYNQ_RESOURCE_EXHAUSTED : ASYNQ_INTERNAL;
fail_t:
	set_rele(s);
	snprintf(err, err_len, "out of memory");
	return ASYNQ_RESOURCE_EXHAUSTED;
}

asynq_status
asynqi_tls_reload(asynqi_tls *t, const asynqi_tls_files *f, char *err,
    size_t err_len)
{
	asynq_status st;
	tls_set *s = set_from_files(t->server, f, &st, err, err_len);
	if (s == NULL)
		return st;
	pthread_mutex_lock(&t->e->mu);
	tls_set *old = t->e->cur;
	t->e->cur = s;
	pthread_mutex_unlock(&t->e->mu);
	set_rele(old); /* connections that use it keep it */
	return ASYNQ_OK;
}

nng_tls_config *
asynqi_tls_config(const asynqi_tls *t)
{
	return t->nng;
}

void
asynqi_tls_free(asynqi_tls *t)
{
	if (t == NULL)
		return;
	nng_tls_config_free(t->nng);
	free(t);
}

/* ---- Identities ---------------------------------------------------------- */

void
asynqi_tls_peer_fini(asynqi_tls_peer *p)
{
	free(p->subject);
	for (size_t i = 0; i < p->n_sans; i++)
		free(p->sans[i]);
	free(p->sans);
	free(p->rejected);
	memset(p, 0, sizeof(*p));
}

bool
asynqi_tls_peer_get(nng_stream *st, asynqi_tls_peer *p)
{
	memset(p, 0, sizeof(*p));
	bool ok = true;
	pthread_mutex_lock(&reg_mu);
	const struct nng_tls_engine_conn *ec = reg_find(st);
	if (ec == NULL) {
		pthread_mutex_unlock(&reg_mu);
		return false;
	}
	p->verified = ec->verified;
	if (ec->subject != NULL)
		ok = (p->subject = strdup(ec->subject)) != NULL;
	if (ok && ec->rejected != NULL)
		ok = (p->rejected = strdup(ec->rejected)) != NULL;
	if (ok && ec->n_sans > 0) {
		ok = (p->sans = calloc(ec->n_sans, sizeof(char *))) != NULL;
		for (size_t i = 0; ok && i < ec->n_sans; i++) {
			ok = (p->sans[i] = strdup(ec->sans[i])) != NULL;
			if (ok)
				p->n_sans++;
		}
	}
	pthread_mutex_unlock(&reg_mu);
	if (!ok)
		asynqi_tls_peer_fini(p);
	return ok;
}

bool
asynqi_tls_failure(nng_stream *st, char *buf, size_t len)
{
	pthread_mutex_lock(&reg_mu);
	const struct nng_tls_engine_conn *ec = reg_find(st);
	bool found = ec != NULL && ec->failure != NULL;
	if (found)
		snprintf(buf, len, "%s", ec->failure);
	pthread_mutex_unlock(&reg_mu);
	return found;
}
