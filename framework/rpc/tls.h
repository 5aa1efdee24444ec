/* SPDX-License-Identifier: MIT */
/*
 * TLS for the connection layer: asynq's own TLS engine for nng (over mbed
 * TLS), registered in place of nng's, so that a server can read the
 * certificate a client presented (subject and subjectAltNames, which nng
 * 1.5.2 does not expose), say in words why a handshake failed, and swap
 * the certificates, CAs and CRLs of a configuration that listeners use
 * while they keep serving (new connections take the new set, open ones
 * keep theirs).
 */
#ifndef ASYNQI_RPC_TLS_H
#define ASYNQI_RPC_TLS_H

#include <stdbool.h>
#include <stddef.h>

#include <nng/nng.h>
#include <nng/supplemental/tls/tls.h>

#include "asynq/core.h"

typedef struct asynqi_tls asynqi_tls;

/* The files of one TLS configuration; NULL fields are unused. */
typedef struct asynqi_tls_files {
	const char *cert_file;   /* own certificate chain (PEM) */
	const char *key_file;    /* its private key (PEM); with cert_file */
	const char *ca_file;     /* CAs that verify the peer (PEM) */
	const char *crl_file;    /* revocation lists of those CAs (PEM) */
	const char *server_name; /* client: the name the server must have */
	/* Server: a client must present a certificate signed by ca_file
	 * (else one is asked for but a client without may connect). */
	bool require_peer_cert;
	/* What each file is called in the settings, for messages. */
	const char *cert_setting, *key_setting, *ca_setting, *crl_setting;
} asynqi_tls_files;

/* The certificate identity of a TLS connection's peer. */
typedef struct asynqi_tls_peer {
	bool verified; /* a certificate was presented and verified */
	char *subject; /* its subject ("CN=x,O=y"), or NULL */
	char **sans;   /* "DNS:...", "URI:...", "IP:...", "EMAIL:..." */
	size_t n_sans;
	char *rejected; /* a certificate presented but not verified
	                   (optional client certificates): why; or NULL */
} asynqi_tls_peer;

/* asynqi_tls_alloc makes a TLS configuration (server or client) from the
 * files of f. INVALID_ARGUMENT when a file cannot be read or used, with
 * the reason in err ("tls_client_ca_file /x: no such file"),
 * RESOURCE_EXHAUSTED without memory. Any thread. */
asynq_status asynqi_tls_alloc(asynqi_tls **tp, bool server,
    const asynqi_tls_files *f, char *err, size_t err_len);

/* asynqi_tls_reload reads f's files again into t: connections set up from
 * now on use them, open ones keep what they had. On failure (as alloc's)
 * t keeps its files. Any thread. */
asynq_status asynqi_tls_reload(asynqi_tls *t, const asynqi_tls_files *f,
    char *err, size_t err_len);

/* asynqi_tls_config returns t's nng configuration (borrowed), for
 * NNG_OPT_TLS_CONFIG of listeners and dialers. */
nng_tls_config *asynqi_tls_config(const asynqi_tls *t);

/* asynqi_tls_free drops t; connections that use it keep it alive. NULL is
 * ignored. */
void asynqi_tls_free(asynqi_tls *t);

/* asynqi_tls_peer_get fills *p (strings malloc'd; asynqi_tls_peer_fini
 * frees them) with the identity of the peer of TLS stream st once its
 * handshake finished; false for a stream not made with one of ours, or
 * without memory. Any thread, while st is open. */
bool asynqi_tls_peer_get(nng_stream *st, asynqi_tls_peer *p);

/* asynqi_tls_peer_fini frees what asynqi_tls_peer_get filled in. */
void asynqi_tls_peer_fini(asynqi_tls_peer *p);

/* asynqi_tls_failure writes into buf why the handshake of st failed, in
 * words; false if it has not failed (or st is not ours). */
bool asynqi_tls_failure(nng_stream *st, char *buf, size_t len);

#endif /* ASYNQI_RPC_TLS_H */
