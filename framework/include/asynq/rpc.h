/* SPDX-License-Identifier: MIT */
/*
 * gRPC-style RPC with batching. A client task calls a method and gets a
 * future; the calls that the tasks of one worker make to one channel join a
 * batch, and a flush sends the whole batch as one asynq.rpc.Request of many
 * calls, framed on a byte stream (nng's stream API, or an in-process pipe;
 * proto/asynq/rpc.proto describes the framing), with many requests in flight
 * per connection. A server runs on a runtime's workers: it reads requests,
 * runs a task per call (or one whole-batch handler per method), and answers
 * every call of a request in one reply.
 *
 * Messages are protobuf-c messages described by the tables protoc-gen-asynq
 * generates (asynq/rpc_desc.h). Status codes are asynq's (gRPC's).
 */
#ifndef ASYNQ_RPC_H
#define ASYNQ_RPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "asynq/core.h"
#include "asynq/context.h"
#include "asynq/rpc_desc.h"
#include "asynq/runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

struct ProtobufCMessage;

/* ---- Deadlines and metadata (scoped values) ---------------------------- */

/* The absolute deadline of the current call chain, in nanoseconds of
 * CLOCK_REALTIME since the Unix epoch, stored as (void *)(intptr_t) in a
 * scoped value; NULL (0) means none. A server sets it for its handlers from
 * the request, so calls a handler makes inherit it; a client sets it with
 * asynq_with_scoped or asynq_scoped_push. */
extern const asynq_scoped asynq_rpc_deadline;

/* asynq_rpc_deadline_get returns the current deadline (0 for none). */
int64_t asynq_rpc_deadline_get(void);

/* asynq_rpc_timeout_push sets the deadline of the calls the current task
 * and the tasks it creates make from now on to timeout_ms from now (gRPC's
 * timeout), or keeps the current deadline if that is earlier: a timeout
 * never extends the caller's. Undone by asynq_rpc_timeout_pop, in the same
 * task. Errors as asynq_scoped_push's. Scheduler thread only. */
asynq_status asynq_rpc_timeout_push(uint32_t timeout_ms);

/* asynq_rpc_timeout_pop undoes the current task's innermost
 * asynq_rpc_timeout_push. FAILED_PRECONDITION without one. Scheduler
 * thread only. */
asynq_status asynq_rpc_timeout_pop(void);

/* asynq_rpc_with_timeout runs fn(arg) with the calls it makes bound by a
 * timeout of timeout_ms from now (as asynq_rpc_timeout_push), however fn
 * returns. Returns fn's status, or the push's failure (then fn did not
 * run). Scheduler thread only. */
asynq_status asynq_rpc_with_timeout(uint32_t timeout_ms,
    asynq_status (*fn)(void *arg), void *arg);

/* Whether calls wait for a connection (see asynq_rpc_channel_cfg's
 * wait_for_ready), per call: a scoped value holding ASYNQ_RPC_WAIT or
 * ASYNQ_RPC_FAIL_FAST as (void *)(intptr_t); unset (NULL), the channel's
 * setting applies. */
extern const asynq_scoped asynq_rpc_wait_for_ready;
enum { ASYNQ_RPC_WAIT = 1, ASYNQ_RPC_FAIL_FAST = 2 };

/* asynq_rpc_with_wait_for_ready runs fn(arg) with the calls it makes
 * waiting for ready (wait) or failing fast (!wait), whatever their
 * channel's setting. Returns fn's status, or the push's failure (then fn
 * did not run). Scheduler thread only. */
asynq_status asynq_rpc_with_wait_for_ready(bool wait,
    asynq_status (*fn)(void *arg), void *arg);

/* asynq_rpc_metadata_get returns the value of metadata `key` of the call
 * the current handler serves (borrowed, valid during the handler), or NULL;
 * *len gets its length. A unary handler sees its call's metadata; a
 * whole-batch handler sees the metadata its calls share (a client sends
 * metadata once per request when every call of it has the same). Task
 * only. */
const void *asynq_rpc_metadata_get(const char *key, size_t *len);

/* asynq_rpc_metadata_push adds the pair (key, val[0..len)) to the metadata
 * of every call the current task and the tasks it creates make from now on,
 * until the matching asynq_rpc_metadata_pop (a scoped value). Key and value
 * are copied. A key pushed again shadows the earlier value. Every push must
 * be popped by the same task (otherwise the copy leaks). INVALID_ARGUMENT for
 * a NULL key, RESOURCE_EXHAUSTED without memory. Scheduler thread only. */
asynq_status asynq_rpc_metadata_push(const char *key, const void *val,
    size_t len);

/* asynq_rpc_metadata_pop removes the current task's innermost push;
 * FAILED_PRECONDITION if it has none. Scheduler thread only. */
asynq_status asynq_rpc_metadata_pop(void);

/* asynq_rpc_with_metadata runs fn(arg) with (key, val) pushed and pops it
 * however fn returns. Returns fn's status, or push's failure (then fn did
 * not run). Scheduler thread only. */
asynq_status asynq_rpc_with_metadata(const char *key, const void *val,
    size_t len, asynq_status (*fn)(void *arg), void *arg);

/* ---- Interceptors -------------------------------------------------------- */

struct asynq_rpc_peer;
struct asynq_rpc_batch_call;

/* One call as interceptors see it, on either side. */
typedef struct asynq_rpc_call_info {
	const asynq_rpc_method_desc *method;
	/* The request, borrowed: the caller's message on the client (NULL in
	 * the client's after hooks: the caller may have freed it), the
	 * decoded one on the server. */
	const struct ProtobufCMessage *req;
	/* Server: who called (asynq_rpc_peer: its address and, with mutual
	 * TLS, its verified identity). NULL on the client. */
	const struct asynq_rpc_peer *peer;
	bool server; /* true on the server, false on the client */
	/* Monotonic ns (asynq_now_ns) when the first before hook ran. */
	int64_t start_ns;
	/* For the after hooks, the call's outcome: OK and its reply
	 * (borrowed, valid during the hook; NULL for an empty reply), or an
	 * error status and its message. */
	asynq_status status;
	const char *message;
	const struct ProtobufCMessage *reply;
	void *impl_; /* the framework's */
} asynq_rpc_call_info;

/* A whole-batch handler's run as interceptors see it (server only). */
typedef struct asynq_rpc_batch_info {
	const asynq_rpc_method_desc *method;
	const struct asynq_rpc_peer *peer;
	/* The calls the handler gets: those every interceptor let through;
	 * in the after hooks, with the results the handler set. */
	struct asynq_rpc_batch_call *calls;
	size_t n;
	int64_t start_ns;    /* monotonic ns when the first batch_before ran */
	asynq_status status; /* after hooks: what the handler returned */
} asynq_rpc_batch_info;

/* An interceptor: hooks run around every call, on a server (in
 * asynq_rpc_server_cfg.interceptors, or asynq_rpc_server_add_interceptor)
 * or on a channel (asynq_rpc_channel_cfg.interceptors). Before hooks run
 * in the order the interceptors are listed, after hooks in the reverse
 * order, each interceptor's after only if its before let the call go on,
 * and then always, whatever happened to the call later (a later
 * interceptor's rejection, a handler's error, a deadline). Any hook may be
 * NULL.
 *
 * On a client, `before` runs in the calling task inside asynq_rpc_call,
 * before the call joins a batch (or is answered from a request cache): a
 * call it rejects is never sent and its future fails with the status and
 * message. `after` runs on the same thread when the call's future is
 * computed.
 *
 * On a server, `before` runs on the worker in the request's task, after
 * the server's own limits and before the calls are given to handlers; a
 * rejected call never reaches its handler and is answered with its own
 * status; for a whole-batch method it is left out of the batch the handler
 * sees. `after` runs once the handler is done with the call, before its
 * result is packed. For whole-batch methods, batch_before and batch_after
 * run once around the handler, with the calls that were let through (a
 * non-OK batch_before fails all of them). Hooks should not block; they may
 * read and add metadata (asynq_rpc_call_metadata, _add_metadata). `state`
 * is the interceptor's own pointer for this call, NULL until its before
 * sets it, and handed to its after. */
typedef struct asynq_rpc_interceptor {
	const char *name; /* for messages: "authz", "trace" */
	asynq_status (
	    *before)(asynq_rpc_call_info *call, void **state, void *arg);
	void (*after)(const asynq_rpc_call_info *call, void *state, void *arg);
	asynq_status (*batch_before)(asynq_rpc_batch_info *batch, void *arg);
	void (*batch_after)(const asynq_rpc_batch_info *batch, void *arg);
	void *arg;
} asynq_rpc_interceptor;

/* asynq_rpc_call_reject, for a before hook, rejects the call with st (not
 * OK) and a printf-style message for its caller, and returns st: `return
 * asynq_rpc_call_reject(call, ASYNQ_PERMISSION_DENIED, "...")`. A before
 * hook that returns non-OK without it (or when there is no memory for the
 * text) rejects with "METHOD: rejected by interceptor NAME (STATUS)". A
 * batch_before that returns non-OK fails each call of the batch with
 * "METHOD: rejected by interceptor NAME". */
asynq_status asynq_rpc_call_reject(asynq_rpc_call_info *call, asynq_status st,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* asynq_rpc_call_metadata returns the value of metadata `key` of the call
 * (borrowed, valid during the hook), or NULL; *len (may be NULL) gets its
 * length. On a client: what the call is made under (asynq_rpc_metadata_push)
 * and what interceptors added; on a server: what the call carries and what
 * interceptors added. Any hook. */
const void *asynq_rpc_call_metadata(const asynq_rpc_call_info *call,
    const char *key, size_t *len);

/* asynq_rpc_call_add_metadata adds (key, val[0..len)), copied, to the
 * call's metadata, shadowing an earlier value of the key: on a client it
 * is sent with the call, on a server the handler sees it
 * (asynq_rpc_metadata_get). INVALID_ARGUMENT for a NULL key or outside a
 * before hook, RESOURCE_EXHAUSTED without memory. Before hooks only. */
asynq_status asynq_rpc_call_add_metadata(asynq_rpc_call_info *call,
    const char *key, const void *val, size_t len);

/* ---- Trace context (W3C traceparent) ------------------------------------ */

/* The trace a task works for: W3C trace context's trace id, the current
 * span (the parent of the calls made now) and the flags. */
typedef struct asynq_rpc_trace {
	uint8_t trace_id[16];
	uint8_t span_id[8];
	uint8_t flags; /* bit 0: sampled */
} asynq_rpc_trace;

/* asynq_rpc_trace_interceptor carries the trace in `traceparent` metadata
 * (https://www.w3.org/TR/trace-context/). On a channel it adds
 * "00-TRACE-SPAN-FLAGS" for the calling task's trace, if it has one (a
 * server handler's, or asynq_rpc_with_trace's); on a server it reads a
 * call's traceparent and runs the handler in that trace under a span of
 * its own, so the handler's calls are its children (a whole-batch
 * handler: the trace of its first call that has one), and the server's
 * request logs name the trace (trace_id=). A malformed traceparent is
 * ignored, as the recommendation says. */
extern const asynq_rpc_interceptor asynq_rpc_trace_interceptor;

/* asynq_rpc_trace_get copies the current task's trace to *out and returns
 * true, or returns false when it has none. Task only. */
bool asynq_rpc_trace_get(asynq_rpc_trace *out);

/* asynq_rpc_trace_format writes t as a traceparent value
 * ("00-<32 hex>-<16 hex>-<2 hex>", 55 characters and a NUL) into buf. Any
 * thread. */
void asynq_rpc_trace_format(const asynq_rpc_trace *t, char buf[56]);

/* asynq_rpc_trace_parse reads a traceparent value of len bytes into *out:
 * INVALID_ARGUMENT unless it is version 00's form with non-zero ids (then
 * *out is untouched). Any thread. */
asynq_status asynq_rpc_trace_parse(const char *s, size_t len,
    asynq_rpc_trace *out);

/* asynq_rpc_with_trace runs fn(arg) in a trace (t, or a new one with
 * random ids, sampled, when t is NULL) for it and the tasks it creates.
 * Returns fn's status, or the push's failure (then fn did not run).
 * Scheduler thread only. */
asynq_status asynq_rpc_with_trace(const asynq_rpc_trace *t,
    asynq_status (*fn)(void *arg), void *arg);

/* ---- Client ------------------------------------------------------------ */

typedef struct asynq_rpc_channel asynq_rpc_channel;

/* Client settings; zero fields take the default. */
typedef struct asynq_rpc_channel_cfg {
	/* URLs of the server replicas: "tcp://127.0.0.1:5000",
	 * "ipc:///tmp/users.sock", "abstract://users", "tls+tcp://..." (nng
	 * streams), or "inproc://users" for a server of this process (no
	 * socket: requests and replies are handed over between the runtimes'
	 * threads). Each request goes to a ready replica as `lb` says; at
	 * least one. Or one name (see resolve_interval_ms). */
	const char *const *urls;
	size_t n_urls;
	/* Most calls per request; a larger batch is split. Default: the
	 * service's batch_max_calls option, else 1,000. */
	size_t max_calls;
	/* Deadline of calls whose caller has none, in ms. Default: the
	 * service's default_deadline_ms option, else 10,000. */
	uint32_t default_deadline_ms;
	/* Largest request sent and reply accepted, bytes; default 4 MiB.
	 * Batches are split to fit; a call too big for a request of its own
	 * fails with RESOURCE_EXHAUSTED without being sent. */
	size_t max_msg_bytes;
	/* tls+tcp: PEM file of the CA certificates that verify the server
	 * (a server that fails verification is never connected: calls fail
	 * with UNAVAILABLE at their deadline), and the name its certificate
	 * must carry (default: the host of the URL; an IP address must be
	 * one of the certificate's IP subjectAltNames). Used for tls+tcp://
	 * URLs only. */
	const char *tls_ca_file;
	const char *tls_server_name;
	/* tls+tcp, mutual TLS: PEM files of the certificate (chain) this
	 * client presents and its private key; both or neither (a server
	 * that requires client certificates refuses a client without). */
	const char *tls_cert_file;
	const char *tls_key_file;
	/* A call made when no connection is ready waits while a connection is
	 * being set up; once every replica has failed its last attempt, calls
	 * fail UNAVAILABLE at once (gRPC's default). With wait_for_ready they
	 * wait for a connection until their deadline instead. Per call:
	 * asynq_rpc_with_wait_for_ready. */
	bool wait_for_ready;
	/* A request a replica refused before running any of it (overloaded,
	 * closing) goes to another ready replica, within its deadline, at
	 * most twice, and one caught on a lost connection is sent again (to
	 * any ready replica; see asynq_rpc_server_cfg's dedup for what a
	 * resend may run), at most 3 times, both throttled as gRPC's retries
	 * are (gRFC A6) so that retries never multiply an overload: each
	 * refusal or resend takes a token of
	 * retry_max_tokens (default 10; UINT32_MAX: no retries), each request
	 * answered gives back retry_token_milli thousandths of one (default
	 * 100), and refused requests are retried only while more than half
	 * the tokens are left. */
	uint32_t retry_max_tokens;
	uint32_t retry_token_milli;
	/* Adaptive throttling (client-side, as in Google's SRE book): while
	 * the servers refuse most of what the channel sends as overloaded
	 * (RESOURCE_EXHAUSTED before running it), the channel itself refuses
	 * a share of new calls at once with RESOURCE_EXHAUSTED, so that it
	 * sends about throttle_ratio_milli / 1000 times what they admit
	 * (default 2000; at least 1000; UINT32_MAX: never). Over the last
	 * second, with req calls that had a verdict (admitted, refused by a
	 * server or by the throttle) and acc admitted, a call is refused with
	 * probability (req - ratio x acc) / (req + 1), at most 0.9, and never
	 * while fewer than 32 calls had one. Counted in stats.throttled. */
	uint32_t throttle_ratio_milli;
	/* Calls to an idempotent method that are byte-identical (same method,
	 * request bytes and metadata) and land in one batch are sent once;
	 * each caller gets its own copy of the reply, or of the error
	 * (DataLoader's batch semantics). no_collapse sends every call. */
	bool no_collapse;
	/* request_cache: every idempotent method of the service uses the
	 * request cache, as if it had (asynq.request_cache); cache_errors:
	 * errors are kept too (asynq.cache_errors). See asynq_rpc_with_cache.
	 */
	bool request_cache;
	bool cache_errors;
	/* Interceptors run around every call made through the channel, in
	 * this order (see asynq_rpc_interceptor); the array is copied, the
	 * interceptors are borrowed and must outlive the channel and the
	 * futures of its calls (after hooks run when those are computed). */
	const asynq_rpc_interceptor *const *interceptors;
	size_t n_interceptors;
	/* Names: urls[0] (then the only URL) may be a name instead,
	 * "dns:///users.svc.local:7001" (its A and AAAA records, through
	 * getaddrinfo; the host may also be a literal address) or
	 * "dns+srv:///_users._tcp.svc.local" (its SRV records through
	 * libresolv, those of the lowest priority, each target's addresses at
	 * its record's port). A thread of the channel resolves it, dials
	 * every address as a replica (tcp://ADDR:PORT), and resolves it again
	 * every resolve_interval_ms (default 30,000) and soon after a
	 * connection fails (at most once a second). A replica that appears
	 * gets requests once connected; one that disappears takes no new
	 * requests and is closed once those it has are answered. A resolution
	 * that fails or finds nothing keeps the replicas there are; calls
	 * made before the first one wait for it. At most max_replicas
	 * (default 64) addresses are used, the first ones in the order the
	 * resolver gives. */
	uint32_t resolve_interval_ms;
	size_t max_replicas;
	/* Optional: resolves dns:/// and dns+srv:/// targets in place of DNS
	 * (another registry; tests). Borrowed for the channel's life. */
	const struct asynq_rpc_resolver *resolver;
	/* Which replica a request goes to (see asynq_rpc_lb). */
	int lb;
	/* Outlier ejection: a replica with eject_after consecutive failures
	 * (default 5; UINT32_MAX: never) is ejected: it takes no requests
	 * for eject_base_ms (default 10,000), doubled at each ejection in a
	 * row up to 300,000, then it is probed with a health check
	 * (asynq.health.v1.Health/Check of the channel's service) on its
	 * connection, or on a new one if the last check got no answer within
	 * eject_base_ms: SERVING, or a server without the health service,
	 * takes it back; anything else ejects it again. Failures
	 * are connection attempts that fail, connections lost, requests whose
	 * deadline passed on it, and replies with UNAVAILABLE calls; any
	 * other reply resets the count. A replica is never ejected when no
	 * other ready one is left, and when every ready replica is ejected
	 * requests go to the ejected ones. */
	uint32_t eject_after;
	uint32_t eject_base_ms;
} asynq_rpc_channel_cfg;

/* Balancing policies (asynq_rpc_channel_cfg.lb). */
enum {
	/* The default: every ready replica is looked at and the request goes
	 * to the one with the fewest requests outstanding from this channel
	 * (ties in turn). The counts are the channel's own and exact, so a
	 * full look beats two random choices; at most max_replicas. */
	ASYNQ_RPC_LB_LEAST_OUTSTANDING = 0,
	/* Each request goes to the next ready replica in turn. */
	ASYNQ_RPC_LB_ROUND_ROBIN = 1,
};

/* Longest URL a resolver may give, with its NUL. */
#define ASYNQ_RPC_URL_MAX 128

/* A resolver for dns:/// and dns+srv:/// targets in place of DNS
 * (asynq_rpc_channel_cfg.resolver). */
typedef struct asynq_rpc_resolver {
	/* resolve writes the URLs that `target` (the channel's urls[0]) stands
	 * for now into urls[0..max), each NUL-terminated, and returns how many
	 * it has (more than max: the rest are left out), or -1 with why
	 * (why_len bytes) set in words. Runs on the channel's resolver
	 * thread, never on a scheduler's; it may block. */
	int (*resolve)(void *arg, const char *target,
	    char (*urls)[ASYNQ_RPC_URL_MAX], size_t max, char *why,
	    size_t why_len);
	void *arg;
} asynq_rpc_resolver;

/* asynq_rpc_channel_alloc opens a channel to a service: it dials the URLs,
 * or resolves the name and dials its addresses (in the background; calls
 * made while the first resolution or attempt is in progress wait for it;
 * see wait_for_ready). A lost connection is redialed at once, failed
 * attempts back off (1 s, x1.6, jitter 0.2, at most 120 s).
 * INVALID_ARGUMENT for a bad URL, target or settings (a target or policy
 * it cannot use is also logged in words, event=channel_setup_failed). The
 * channel may be used from any thread; each scheduler thread batches its
 * own calls. Any thread. */
asynq_status asynq_rpc_channel_alloc(asynq_rpc_channel **chp,
    const asynq_rpc_service_desc *svc, const asynq_rpc_channel_cfg *cfg);

/* asynq_rpc_channel_free closes the channel: calls still in flight fail with
 * CANCELLED. Every scheduler that used it must have finished its calls. */
void asynq_rpc_channel_free(asynq_rpc_channel *ch);

/* asynq_rpc_channel_reload_tls reads the channel's TLS files again
 * (tls_cert_file, tls_key_file, tls_ca_file), for short-lived client
 * certificates: connections made from now on (a reconnect, say after the
 * server's idle timeout) present the new certificate; open ones keep
 * theirs. Channels opened with the same files share them, so it reloads
 * them for all of those. Call it once every file of the new set is in
 * place. INVALID_ARGUMENT when a file cannot be read or used (nothing
 * changes; logged at error as event=tls_reload_failed with the reason),
 * FAILED_PRECONDITION for a channel without TLS settings. Any thread. */
asynq_status asynq_rpc_channel_reload_tls(asynq_rpc_channel *ch);

/* asynq_rpc_call encodes req (borrowed; it may be freed on return) as a call
 * of method m, adds it to the calling thread's batch for ch, and returns a
 * future for the reply: its pointer value is the decoded response message
 * (a ProtobufCMessage of m->output, owned by the future). Errors come as the
 * future's status: the handler's, DEADLINE_EXCEEDED when the deadline passes
 * (even if the server never answers), UNAVAILABLE when no server can be
 * reached, UNIMPLEMENTED for a method the server lacks. Scheduler thread
 * only. */
asynq_future *asynq_rpc_call(asynq_rpc_channel *ch,
    const asynq_rpc_method_desc *m, const struct ProtobufCMessage *req);

/* Counters of a channel, summed over threads. */
typedef struct asynq_rpc_channel_stats {
	uint64_t calls;      /* calls made (logical calls) */
	uint64_t collapsed;  /* of which folded into an identical call of the
	                        same batch */
	uint64_t sent_calls; /* distinct calls put in requests */
	uint64_t cached;     /* of the calls, those answered from a request
	                        cache (no call made) */
	uint64_t requests;   /* requests sent (first transmissions) */
	uint64_t failures;   /* calls that ended with an error */
	uint64_t resends;    /* requests resent after a lost connection */
	uint64_t refused;    /* requests a replica refused without running */
	uint64_t retries;    /* refused requests sent to another replica */
	uint64_t throttled;  /* calls the channel's throttle refused at once */
} asynq_rpc_channel_stats;

/* ---- Per-request cache ------------------------------------------------ */

/* A request cache remembers, within one request's tree of tasks, the reply
 * of each distinct call to a method that uses it ((asynq.request_cache) or
 * the channel's request_cache): a second identical call (same channel,
 * method, request bytes and metadata) is answered from it, without a new
 * call, each caller getting its own copy; one made while the first is in
 * flight waits for it. Errors are forgotten (the next identical call goes
 * out again) unless the method keeps them (cache_errors); a call that
 * failed before it was sent (no request, a bad argument) is never kept.
 * Every server handler runs with a request cache of its own (made on
 * first use; a whole-batch handler's is shared by its calls) that ends
 * with the handler's task; elsewhere asynq_rpc_with_cache opens one. Not
 * shared between threads. */

typedef struct asynq_rpc_cache asynq_rpc_cache;

/* Bounds of one request cache; zero fields take the defaults. */
typedef struct asynq_rpc_cache_cfg {
	/* Most replies kept (default 1,000) and most bytes of requests and
	 * replies kept (default 1 MiB). Past either, the oldest answered
	 * entries go first; a reply larger than max_bytes is not kept. */
	size_t max_entries;
	size_t max_bytes;
} asynq_rpc_cache_cfg;

/* asynq_rpc_with_cache runs fn(arg) with a new request cache (cfg NULL
 * for the defaults) for it and the tasks it spawns, and frees the cache
 * when fn returns (calls still in flight keep what they need). Returns
 * fn's status, or RESOURCE_EXHAUSTED (fn did not run). Scheduler thread
 * only. */
asynq_status asynq_rpc_with_cache(const asynq_rpc_cache_cfg *cfg,
    asynq_status (*fn)(void *arg), void *arg);

/* asynq_rpc_cache_prime puts reply (borrowed; copied) in the current
 * request cache as the answer to method m of ch for req, unless that call
 * is already there (DataLoader's prime). FAILED_PRECONDITION with no
 * request cache here or when m does not use it, INVALID_ARGUMENT for
 * messages of the wrong types, RESOURCE_EXHAUSTED when it does not fit.
 * Scheduler thread only. */
asynq_status asynq_rpc_cache_prime(asynq_rpc_channel *ch,
    const asynq_rpc_method_desc *m, const struct ProtobufCMessage *req,
    const struct ProtobufCMessage *reply);

/* asynq_rpc_cache_clear forgets the current request cache's entry for
 * method m of ch and req, if any: the next identical call goes out (one in
 * flight still answers its waiters). OK also when there was none;
 * FAILED_PRECONDITION with no request cache here. Scheduler thread only. */
asynq_status asynq_rpc_cache_clear(asynq_rpc_channel *ch,
    const asynq_rpc_method_desc *m, const struct ProtobufCMessage *req);

/* asynq_rpc_cache_clear_all forgets every entry of the current request
 * cache. FAILED_PRECONDITION with none here. Scheduler thread only. */
asynq_status asynq_rpc_cache_clear_all(void);

/* asynq_rpc_channel_stats_get copies the channel's counters. Any thread. */
void asynq_rpc_channel_stats_get(const asynq_rpc_channel *ch,
    asynq_rpc_channel_stats *out);

/* One replica of a channel, as asynq_rpc_channel_replicas reports it. */
typedef struct asynq_rpc_replica_info {
	char url[ASYNQ_RPC_URL_MAX];
	/* "connecting", "ready", "failed" (backing off), "idle", with
	 * ejected and draining (gone from the name's addresses: no new
	 * requests, closed once its outstanding ones are answered) beside
	 * it. */
	const char *state;
	bool ready, ejected, draining;
	uint64_t outstanding; /* requests sent, not answered yet */
	uint64_t requests;    /* requests sent to it (resends too) */
	uint64_t calls;       /* calls in them */
	uint64_t ejections;   /* times it was ejected */
} asynq_rpc_replica_info;

/* asynq_rpc_channel_replicas copies the state of up to max of ch's
 * replicas into out (the current ones, then those draining) and returns
 * how many there are. Any thread. */
size_t asynq_rpc_channel_replicas(const asynq_rpc_channel *ch,
    asynq_rpc_replica_info *out, size_t max);

/* asynq_rpc_channel_resolve_now makes a channel opened on a name resolve
 * it again at once (on its resolver thread; this does not wait), as it
 * does by itself every resolve_interval_ms. Nothing for a list of URLs.
 * Any thread. */
void asynq_rpc_channel_resolve_now(asynq_rpc_channel *ch);

/* ---- Server ------------------------------------------------------------ */

typedef struct asynq_rpc_server asynq_rpc_server;

/* The peer of the call a handler serves. */
typedef struct asynq_rpc_peer {
	const char *address;     /* "tcp://127.0.0.1:40312", "ipc://...",
	                            "inproc" */
	bool verified;           /* it presented a client certificate that
	                            the server verified (mutual TLS) */
	const char *subject;     /* that certificate's subject, e.g.
	                            "CN=frontend,O=example"; NULL without */
	const char *const *sans; /* its subjectAltNames as "DNS:name",
	                            "URI:spiffe://...", "IP:10.0.0.1",
	                            "EMAIL:..."; n_sans of them */
	size_t n_sans;
} asynq_rpc_peer;

/* asynq_rpc_peer_get returns the peer of the call the current task serves
 * (a handler, whole-batch ones included, and the tasks it spawns; valid
 * until the handler returns), or NULL outside a handler. Task only. */
const asynq_rpc_peer *asynq_rpc_peer_get(void);

/* asynq_rpc_reply_new returns a new, initialized message of type desc in
 * the memory of the request the current handler serves, or NULL outside a
 * handler (and the tasks it spawns, on its worker) or when the request is
 * past its byte budget (decode_budget, which its decoded calls share). A
 * reply made with it costs no malloc and the server never frees it: the
 * memory goes with the request, after its reply is sent. What such a reply
 * points to (strings, bytes, repeated fields, submessages) is never freed
 * either: take it from asynq_rpc_reply_alloc, or from memory that outlives
 * the request. Task only. */
struct ProtobufCMessage *asynq_rpc_reply_new(
    const struct ProtobufCMessageDescriptor *desc);

/* asynq_rpc_reply_alloc returns size bytes (16-aligned) in the same
 * memory, or NULL as above. */
void *asynq_rpc_reply_alloc(size_t size);

/* A per-call handler: runs in a task with the decoded request (borrowed for
 * the call) and sets *reply to a response message of the method's output
 * type: one from asynq_rpc_reply_new (nothing to free), or one it allocated
 * with malloc-compatible memory, which the server packs and frees with
 * protobuf_c_message_free_unpacked(reply, NULL). A non-OK status (with
 * asynq_fail's message) goes to the caller. The
 * handlers of one request's unary calls run one after another in one task
 * until one is about to suspend; the calls after it then go on in a new
 * task at once; scoped values a handler leaves pushed are popped when it
 * returns, as a task's are when it ends. */
typedef asynq_status (*asynq_rpc_unary_fn)(asynq_task *t,
    const struct ProtobufCMessage *req, struct ProtobufCMessage **reply,
    void *ctx);

/* One call given to a whole-batch handler. */
typedef struct asynq_rpc_batch_call {
	const struct ProtobufCMessage *req; /* decoded request, borrowed */
	struct ProtobufCMessage *reply;     /* set by the handler, as above */
	asynq_status status;                /* set by the handler */
	const char *message;                /* static or NULL */
	char *formatted; /* asynq_rpc_batch_fail's message; the server frees
	                    it */
} asynq_rpc_batch_call;

/* asynq_rpc_batch_call_failf fails one call of a whole-batch handler with
 * st and a printf-style message that goes to that call's caller (in place
 * of `message`); without memory for the text the caller gets st's name.
 * Task only, inside the handler. */
void asynq_rpc_batch_call_failf(asynq_rpc_batch_call *c, asynq_status st,
    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* asynq_rpc_batch_fail is asynq_rpc_batch_call_failf for the generated,
 * typed batch-call structs (same layout). */
#define asynq_rpc_batch_fail(c, st, ...)                                       \
	asynq_rpc_batch_call_failf((asynq_rpc_batch_call *)(c), (st),          \
	    __VA_ARGS__)

/* A whole-batch handler: every call of its method in one request at once
 * (e.g. one SQL query for N lookups). It sets each call's reply or status; a
 * non-OK return fails every call it left unset. */
typedef asynq_status (*asynq_rpc_batch_fn)(asynq_task *t,
    asynq_rpc_batch_call *calls, size_t n, void *ctx);

/* The handler of one method: exactly one of the two is set. */
typedef struct asynq_rpc_handler {
	asynq_rpc_unary_fn unary;
	asynq_rpc_batch_fn batch;
} asynq_rpc_handler;

/* Who may call a method of a server (see asynq_rpc_server_cfg.policies):
 * a caller whose verified peer identity matches one of `peers`, or whose
 * bearer token has one of `scopes`, is allowed. A peer pattern is matched
 * against asynq_rpc_peer's subjectAltNames and subject: "DNS:name",
 * "URI:...", "IP:...", "EMAIL:..." a SAN exactly, a bare URI
 * ("spiffe://example/frontend") the SAN "URI:" of it, "CN=name" the
 * subject's common name, and "*" any verified peer. A policy with neither
 * peers nor scopes lets everyone call. */
typedef struct asynq_rpc_policy {
	/* "pkg.Svc/Method", or "pkg.Svc/" and an asterisk for every method
	 * of the service (a method's own policy comes first). */
	const char *method;
	const char *const *peers;
	size_t n_peers;
	const char *const *scopes;
	size_t n_scopes;
} asynq_rpc_policy;

/* Bytes a token verifier may write as scopes, its NUL included. */
#define ASYNQ_RPC_SCOPES_MAX 1024

/* Checks a bearer token (the bytes after "Bearer " in the call's
 * `authorization` metadata, len of them, not NUL-terminated) for a call of
 * method m: OK and its scopes written to scopes[0..cap) as a NUL-terminated
 * list separated by spaces (OAuth 2's form: "users.read users.write"), or
 * a failure (UNAUTHENTICATED: expired, bad signature, ...) with why[0..
 * why_cap) saying so in words. cap is ASYNQ_RPC_SCOPES_MAX: a list of up
 * to cap - 2 characters is read whole; a longer one may have been cut
 * short (by snprintf), so its last scope is ignored rather than read as
 * another. Runs on a worker in the request's task: it should not block.
 * The framework defines no token format. */
typedef asynq_status (*asynq_rpc_token_verify_fn)(const char *token, size_t len,
    const asynq_rpc_method_desc *m, char *scopes, size_t scopes_cap, char *why,
    size_t why_cap, void *arg);

/* Server settings and limits; zero fields take the default. Over a limit a
 * request is answered RESOURCE_EXHAUSTED at once. */
typedef struct asynq_rpc_server_cfg {
	size_t max_msg_bytes;       /* request size; default 4 MiB. A request
	                               more than 64 KiB over it closes the
	                               connection */
	size_t max_calls;           /* calls per request; default 10,000 */
	size_t max_inflight_calls;  /* per worker; default 100,000 */
	size_t max_connections;     /* open connections; default 1,024. A new
	                               connection over it takes the place of
	                               the one idle longest (no request in
	                               flight: it gets a GOAWAY and is closed);
	                               with none idle it is closed at once */
	size_t decode_budget;       /* bytes a decode may allocate; default
	                               8x max_msg_bytes */
	size_t contexts_per_worker; /* unused (requests are no longer received
	                               through a fixed number of contexts);
	                               kept for source compatibility */
	/* tls+tcp: PEM files of the server's certificate (chain) and private
	 * key; both or neither. Used by tls+tcp:// listeners only. */
	const char *tls_cert_file;
	const char *tls_key_file;
	/* tls+tcp, mutual TLS: PEM file of the CAs that client certificates
	 * must be signed by, and optionally of their certificate revocation
	 * lists. With tls_client_ca_file the server asks each client for a
	 * certificate; with tls_require_client_cert too, a client that
	 * presents none, or one that is not signed by those CAs, expired,
	 * not yet valid or revoked, fails the TLS handshake (never gets a
	 * request through; the server logs why at warn, event=
	 * tls_handshake_failed, and keeps serving); without it such a
	 * client connects as an unverified peer. Handlers see the verified
	 * identity through asynq_rpc_peer_get. asynq_rpc_server_reload_tls
	 * reads these files and the certificate and key again. */
	const char *tls_client_ca_file;
	const char *tls_crl_file;
	bool tls_require_client_cert;
	/* At-most-once execution: the server remembers requests that carry
	 * non-idempotent calls by (client id, request id), so a copy that a
	 * client resends after a lost connection does not run them again. A
	 * copy of a request still running waits for it and gets its reply; a
	 * copy of a finished one gets the remembered reply; a copy of one
	 * forgotten runs only its idempotent calls, the others fail with
	 * ABORTED, unless it provably never reached the server (first sent to
	 * this same server process so recently that the table would remember
	 * it: then it runs). Finished requests are remembered up to these
	 * limits: dedup_entries requests (default 4,096), dedup_age_ms (default
	 * 60,000), dedup_bytes of remembered replies (default 16 MiB). */
	size_t dedup_entries;
	uint32_t dedup_age_ms;
	size_t dedup_bytes;
	/* Connection hygiene, so idle, slow or hostile peers cannot hold a
	 * server's connections or memory (in-process connections are
	 * exempt). A connection whose client preface (after the TLS
	 * handshake) has not arrived handshake_timeout_ms (default 10,000)
	 * after it was accepted is closed; so is one in which a frame begun
	 * is not complete within frame_timeout_ms (default 30,000; while the
	 * server itself has paused reading it, the clock stops). One with no
	 * request in flight and nothing read for idle_timeout_ms (default
	 * 300,000; UINT32_MAX: never) gets a GOAWAY and is closed, and the
	 * client reconnects when it next calls. While a connection's replies
	 * queued and not yet written exceed max_write_queue_bytes (default
	 * 4 MiB) the server reads no more requests from it, until half of
	 * that is written; if that takes longer than frame_timeout_ms (the
	 * peer does not read its replies), or the queue passes 4x the cap,
	 * the connection is closed. */
	uint32_t handshake_timeout_ms;
	uint32_t frame_timeout_ms;
	uint32_t idle_timeout_ms;
	size_t max_write_queue_bytes;
	/* Admission control: requests that queue on a worker longer than
	 * queue_target_us (default 5,000 us; UINT32_MAX: off) before they
	 * start, consistently over an interval of 20 targets, put the worker
	 * in overload; while it is, a request that would wait behind more
	 * than the worker starts within the target (and at least 4) is
	 * answered at once with
	 * RESOURCE_EXHAUSTED "server overloaded" without being decoded or
	 * run, and one that still waited over 20 targets is answered
	 * so instead of running. Clients may send those elsewhere. */
	uint32_t queue_target_us;
	/* Admission control's limit on calls in flight, for servers whose
	 * handlers call other services (frontends): their time goes to
	 * waiting on outgoing batches, which grow with what they admit,
	 * rather than to a queue of their own. With latency_target_us set
	 * (0 or UINT32_MAX: off, the default; 10,000 is a good start), once
	 * the mean time requests spend in the server (read to reply) exceeds
	 * it (or 4x what it is unloaded, if more), or the calls in flight
	 * stay above what the server finishes in that time for a whole
	 * interval, the server limits the calls in flight to what keeps the
	 * mean at the target, and refuses a request read while they are at
	 * the limit at once, RESOURCE_EXHAUSTED "server overloaded", before
	 * decoding it. Once a server has finished calls fast enough that
	 * this time's worth is over 128 calls per worker, calls in flight are
	 * also capped at what its best rate finishes in the target (so the
	 * onset of an overload is not admitted whole). The limit grows
	 * back by 1/16 per interval (20 queue targets) and is lifted when far
	 * above what runs; it never falls below 16 calls per worker, and a
	 * request is admitted while fewer calls than the limit are in flight,
	 * whatever its size. Off by default because a leaf service's requests
	 * take longer as its callers' batches grow without it being
	 * overloaded: on by default, the demo's users service refused
	 * requests under a closed loop of 64. Off when queue_target_us is. */
	uint32_t latency_target_us;
	/* Per connection: once max_conn_requests requests (default 256) or
	 * max_conn_calls calls (default 4x max_calls) it sent are in flight,
	 * the server reads nothing more from it until they are down to half
	 * (TCP pushes back on the client; nothing fails). */
	size_t max_conn_requests;
	size_t max_conn_calls;
	/* Bounds of each handler's request cache (asynq_rpc_with_cache). */
	asynq_rpc_cache_cfg request_cache;
	/* Logs (asynq/log.h): a request that took longer than slow_request_ms
	 * from its read to its reply (default 1,000; UINT32_MAX: never) is
	 * logged at warn as event=slow_request; with access_log every request
	 * is logged at info as event=request. Either line names the request,
	 * its first method, its calls and its time. */
	uint32_t slow_request_ms;
	bool access_log;
	/* Optional: an admin endpoint (asynq/admin.h: /live, /ready,
	 * /metrics, /status, /trace) for this server and its runtime, opened
	 * at this URL ("http://0.0.0.0:9090") when the server first listens
	 * (listen fails, in words, if the endpoint cannot) and closed when
	 * the server has closed. For a process with one server; several
	 * servers, channels and runtimes of one process share an endpoint
	 * through asynq_admin_open instead. */
	const char *admin_url;
	/* Interceptors run around every call the server serves, in this
	 * order (see asynq_rpc_interceptor); the array is copied, the
	 * interceptors are borrowed and must outlive the server. More can
	 * be added with asynq_rpc_server_add_interceptor. */
	const asynq_rpc_interceptor *const *interceptors;
	size_t n_interceptors;
	/* Authorization. A method's policy is the one of these that names
	 * it (or its service, with an asterisk for the method), else what
	 * its .proto declares
	 * ((asynq.allow_peers), (asynq.allow_scopes): the method's
	 * asynq_rpc_method_desc), else none: anyone may call it. A built-in
	 * interceptor enforces the policies, first of all interceptors (or
	 * where `interceptors` lists &asynq_rpc_authz_interceptor): a call
	 * with no credential a policy could accept (no verified client
	 * certificate, no `authorization: Bearer` token, or a token the
	 * verifier rejects) fails UNAUTHENTICATED, one whose credentials
	 * are not allowed PERMISSION_DENIED, each with a message naming the
	 * method and what it needs; neither reaches a handler. Tokens are
	 * checked by token_verifier (once per distinct token in a request);
	 * a policy naming scopes without a verifier fails the listen. The
	 * arrays are read at listen. */
	const asynq_rpc_policy *policies;
	size_t n_policies;
	asynq_rpc_token_verify_fn token_verifier;
	void *token_verifier_arg;
} asynq_rpc_server_cfg;

/* The built-in interceptor that enforces authorization policies (see
 * asynq_rpc_server_cfg.policies); servers add it themselves, so list it
 * only to choose its place among the interceptors. Server only. */
extern const asynq_rpc_interceptor asynq_rpc_authz_interceptor;

/* asynq_rpc_server_alloc makes a server that runs on rt's workers, with
 * the health service (proto/asynq/health.proto, asynq.health.v1.Health)
 * and the reflection service (proto/asynq/reflection.proto,
 * asynq.reflection.v1.Reflection) already added, so services of the same
 * names cannot be.
 * Close it before rt stops: requests that arrive while rt stops are
 * answered UNAVAILABLE. INVALID_ARGUMENT for tls files that cannot be read
 * or used. Not from a worker. */
asynq_status asynq_rpc_server_alloc(asynq_rpc_server **sp, asynq_runtime *rt,
    const asynq_rpc_server_cfg *cfg);

/* asynq_rpc_server_add_service registers handlers[i] for svc->methods[i];
 * ctx is passed to them. INVALID_ARGUMENT if a handler is missing or of the
 * wrong kind for a whole_batch method. Before listening only. */
asynq_status asynq_rpc_server_add_service(asynq_rpc_server *s,
    const asynq_rpc_service_desc *svc, const asynq_rpc_handler *handlers,
    void *ctx);

/* asynq_rpc_server_add_interceptor appends icpt (borrowed; it must outlive
 * the server) to the server's interceptors. INVALID_ARGUMENT for NULL,
 * FAILED_PRECONDITION once listening. Before listening only. */
asynq_status asynq_rpc_server_add_interceptor(asynq_rpc_server *s,
    const asynq_rpc_interceptor *icpt);

/* asynq_rpc_server_listen starts accepting connections on a URL (tcp://,
 * ipc://, abstract://, tls+tcp://; inproc://NAME for channels of this
 * process). May be called for several URLs. UNAVAILABLE if the address is
 * in use, INVALID_ARGUMENT for a bad URL. */
asynq_status asynq_rpc_server_listen(asynq_rpc_server *s, const char *url);

/* asynq_rpc_server_reload_tls reads the server's TLS files again
 * (tls_cert_file, tls_key_file, tls_client_ca_file, tls_crl_file, by the
 * paths given in its settings) and uses them for the connections it
 * accepts from now on; connections already open keep theirs, and calls on
 * them go on. For short-lived certificates: call it once every file of the
 * new set is in place (after a rename, say on SIGHUP), so no connection
 * sees a certificate with another's key. Logs event=tls_reloaded, or
 * event=tls_reload_failed at error with the reason. INVALID_ARGUMENT when
 * a file cannot be read or used (nothing changes;
 * asynq_rpc_server_last_error says why), FAILED_PRECONDITION for a server
 * without TLS settings. Any thread. */
asynq_status asynq_rpc_server_reload_tls(asynq_rpc_server *s);

/* asynq_rpc_server_last_error returns, in words, why the last
 * asynq_rpc_server_add_service, asynq_rpc_server_listen or
 * asynq_rpc_server_reload_tls of s failed
 * ("listen tcp://127.0.0.1:7001: address in use", "handler table: method
 * x.Y/Z has no handler"); "" if none did. Borrowed until the next such
 * call. */
const char *asynq_rpc_server_last_error(const asynq_rpc_server *s);

/* asynq_rpc_server_close stops accepting, tells every client (GOAWAY) which
 * of its requests it accepted, answers every one of them, refuses later ones
 * with UNAVAILABLE (they did not run, so clients send them elsewhere), and
 * closes the connections once the replies are sent. Blocks until done. Not
 * from a worker. */
void asynq_rpc_server_close(asynq_rpc_server *s);

/* asynq_rpc_server_free closes the server if needed and frees it. */
void asynq_rpc_server_free(asynq_rpc_server *s);

/* Most buckets of a server histogram (asynq_rpc_hist). */
#define ASYNQ_RPC_HIST_MAX 16

/* A histogram a server keeps: how many observations fell in each bucket.
 * Bucket i counts values <= bounds[i] (and above bounds[i-1]); bucket
 * n_bounds counts those above the last bound. Not cumulative. */
typedef struct asynq_rpc_hist {
	const uint64_t *bounds; /* ascending upper bounds, static */
	size_t n_bounds;        /* at most ASYNQ_RPC_HIST_MAX */
	uint64_t counts[ASYNQ_RPC_HIST_MAX + 1];
	uint64_t count; /* observations: the sum of counts */
	uint64_t sum;   /* of the values observed */
} asynq_rpc_hist;

/* Counters of a server. */
typedef struct asynq_rpc_server_stats {
	uint64_t requests;         /* requests received */
	uint64_t calls;            /* calls run */
	uint64_t rejected;         /* requests answered RESOURCE_EXHAUSTED */
	uint64_t malformed;        /* requests that could not be decoded */
	uint64_t duplicates;       /* resent or repeated requests whose
	                              non-idempotent calls were not run again */
	uint64_t conns_refused;    /* connections closed at accept: at the
	                              cap with none idle, or closing */
	uint64_t conns_evicted;    /* idle connections that made room for a
	                              new one at the cap */
	uint64_t conns_idle;       /* closed after idle_timeout_ms */
	uint64_t conns_stalled;    /* closed for an overdue preface or frame */
	uint64_t conns_overflowed; /* closed over max_write_queue_bytes */
	uint64_t shed;             /* requests refused by admission control
	                              (overloaded), not run */
	uint64_t shed_late;        /* of those, the ones refused after they
	                              waited (decoded, queued), not at once */
	uint64_t shed_limit;       /* of those, the ones refused at once at
	                              the limit on calls in flight */
	uint64_t call_limit;       /* that limit now (latency_target_us);
	                              0: none */
	uint64_t conns_open;       /* connections open now */
	uint64_t inflight_calls;   /* calls read and not answered yet */
	/* Calls run per request that ran any (the batching at a glance). */
	asynq_rpc_hist calls_per_request;
	/* Nanoseconds a request waited from its read to its start on a
	 * worker (what admission control watches), per request started. */
	asynq_rpc_hist queue_ns;
} asynq_rpc_server_stats;

/* asynq_rpc_server_stats_get copies the server's counters. Any thread. */
void asynq_rpc_server_stats_get(const asynq_rpc_server *s,
    asynq_rpc_server_stats *out);

/* Counters of one method a server serves. Kept per worker without locks
 * or atomic read-modify-writes, and summed when read. */
typedef struct asynq_rpc_method_stats {
	const asynq_rpc_method_desc *method;
	/* Calls whose handler ran, by the status they ended with (indexed
	 * by asynq_status; ASYNQ_OK is success), and calls an interceptor
	 * rejected, by its status (authorization's PERMISSION_DENIED and
	 * UNAUTHENTICATED). Calls refused before running (limits, overload,
	 * closing) are counted in the server's stats only. */
	uint64_t codes[ASYNQ_STATUS_COUNT];
	/* Nanoseconds from the request being read to the call's handler
	 * returning (queueing, decoding and the handler), per call; a
	 * whole-batch handler's calls all count its time. */
	asynq_rpc_hist latency_ns;
	/* Calls of this method in one request, per request that had any. */
	asynq_rpc_hist calls_per_request;
} asynq_rpc_method_stats;

/* asynq_rpc_server_methods returns how many methods s serves (its health
 * and reflection services' included). Any thread. */
size_t asynq_rpc_server_methods(const asynq_rpc_server *s);

/* asynq_rpc_server_method_stats_get copies the counters of s's method i
 * (0 <= i < asynq_rpc_server_methods, in the order services were added).
 * OUT_OF_RANGE past the last. Any thread. */
asynq_status asynq_rpc_server_method_stats_get(const asynq_rpc_server *s,
    size_t i, asynq_rpc_method_stats *out);

/* asynq_rpc_channel_method_stats copies the client side's counters of
 * method i of ch's service (0 <= i < n_methods): the calls sent, by the
 * status they ended with; their latency, from their batch's first call to
 * their result (queueing in the batch, the round trip, the decode); and
 * calls of the method per request sent. Calls folded into an identical one
 * or answered from a request cache are not counted (the channel's stats
 * count them). INVALID_ARGUMENT for i out of range. Any thread. */
asynq_status asynq_rpc_channel_method_stats(const asynq_rpc_channel *ch,
    size_t i, asynq_rpc_method_stats *out);

/* asynq_rpc_channel_service returns the service ch was opened for. Any
 * thread. */
const asynq_rpc_service_desc *asynq_rpc_channel_service(
    const asynq_rpc_channel *ch);

/* What a server is doing, as readiness probes and its health service
 * (proto/asynq/health.proto) report it. */
typedef enum asynq_rpc_serving {
	ASYNQ_RPC_STARTING = 0, /* made, not listening yet */
	ASYNQ_RPC_SERVING,      /* listening */
	ASYNQ_RPC_NOT_SERVING,  /* listening, but set not serving */
	ASYNQ_RPC_DRAINING,     /* asynq_rpc_server_close under way */
	ASYNQ_RPC_CLOSED,       /* closed: answers nothing more */
} asynq_rpc_serving;

/* asynq_rpc_server_serving returns what s is doing now. Any thread. */
asynq_rpc_serving asynq_rpc_server_serving(const asynq_rpc_server *s);

/* asynq_rpc_serving_name returns the state in words ("starting",
 * "serving", "not serving", "draining", "closed"); static. */
const char *asynq_rpc_serving_name(asynq_rpc_serving st);

/* asynq_rpc_server_set_serving(s, false) marks a server not serving: it
 * keeps accepting and answering calls, but its health service answers
 * NOT_SERVING and an admin endpoint's /ready 503, so that load balancers
 * stop sending to it before it closes (the first step of a drain); true
 * undoes it. Any thread. */
void asynq_rpc_server_set_serving(asynq_rpc_server *s, bool serving);

/* asynq_rpc_server_has_service says whether s serves the service of that
 * full name ("asynq.users.Users"). Any thread. */
bool asynq_rpc_server_has_service(const asynq_rpc_server *s,
    const char *full_name);

/* asynq_rpc_server_service returns the table of the i-th service s serves,
 * in the order they were added (its health and reflection services
 * first), borrowed as added, or NULL past the last. Any thread. */
const asynq_rpc_service_desc *asynq_rpc_server_service(
    const asynq_rpc_server *s, size_t i);

#ifdef __cplusplus
}
#endif

#endif /* ASYNQ_RPC_H */
