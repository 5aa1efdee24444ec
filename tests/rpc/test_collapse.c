/* SPDX-License-Identifier: MIT */
/*
 * Batching semantics of RPC calls as DataLoader states them: identical
 * calls to an idempotent method that land in one batch are sent once and
 * every caller gets its own copy of the result; results map to callers by
 * request; a per-call error reaches only the callers of that call; a batch
 * that fails as a whole fails every caller once. Counted on both sides:
 * the channel's logical calls, collapsed and sent calls and requests, the
 * server's calls run and the handler's own count of runs. And request
 * caches: within one request's tree of tasks a repeated call is answered
 * from the first's reply (or waits for it in flight), errors are kept only
 * when asked, prime and clear, bounds, and a handler's own cache that ends
 * with it.
 */
#include "tests/rpc/rpc_fixture.h"

/* A task that makes n calls of m, call i asking for vals[i], under
 * metadata tag tags[i] if tags is not NULL, then awaits them all. */
typedef struct many {
	asynq_rpc_channel *ch;
	const asynq_rpc_method_desc *m;
	size_t n;
	const int64_t *vals;
	const char *const *tags;
	asynq_future **out;
} many;

typedef struct one_call {
	many *mc;
	size_t i;
} one_call;

static asynq_status
tagged_call(void *arg)
{
	one_call *oc = arg;
	oc->mc->out[oc->i] =
	    call_num(oc->mc->ch, oc->mc->m, oc->mc->vals[oc->i]);
	return ASYNQ_OK;
}

static asynq_status
many_main(asynq_task *t, void *arg)
{
	many *mc = arg;
	for (size_t i = 0; i < mc->n; i++) {
		one_call oc = { mc, i };
		if (mc->tags != NULL)
			assert_int_equal(asynq_rpc_with_metadata("tag",
			                     mc->tags[i], strlen(mc->tags[i]),
			                     tagged_call, &oc),
			    ASYNQ_OK);
		else
			tagged_call(&oc);
	}
	(void)asynq_await_all(t, mc->out, mc->n);
	return ASYNQ_OK;
}

static void
run_many(many *mc)
{
	asynq_future *f = asynq_spawn(many_main, mc);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

static asynq_rpc_channel_stats
chan_stats(asynq_rpc_channel *ch)
{
	asynq_rpc_channel_stats st;
	asynq_rpc_channel_stats_get(ch, &st);
	return st;
}

/* 100 Twice calls naming 30 distinct values: 30 calls in one request. */
static void
collapse_repeated(int transport)
{
	fixture fx;
	int64_t vals[100];
	asynq_future *out[100];
	fx_start(&fx, transport, NULL, 0);
	for (size_t i = 0; i < 100; i++)
		vals[i] = (int64_t)((i * 7) % 30);
	many mc = { fx.ch, M(TWICE), 100, vals, NULL, out };
	run_many(&mc);
	for (size_t i = 0; i < 100; i++) {
		assert_int_equal(asynq_future_status(out[i]), ASYNQ_OK);
		assert_int_equal(num_of(out[i]), 2 * vals[i]);
	}
	/* Each caller owns its reply: taking them all frees each once. */
	for (size_t i = 0; i < 100; i++) {
		void (*free_fn)(void *) = NULL;
		void *msg = asynq_future_take_owned(out[i], &free_fn);
		assert_non_null(msg);
		assert_non_null(free_fn);
		free_fn(msg);
	}
	asynq_future_rele_n(out, 100);
	asynq_rpc_channel_stats cs = chan_stats(fx.ch);
	assert_int_equal(cs.calls, 100);
	assert_int_equal(cs.collapsed, 70);
	assert_int_equal(cs.sent_calls, 30);
	assert_int_equal(cs.requests, 1);
	assert_int_equal(cs.failures, 0);
	asynq_rpc_server_stats ss = fx_stats(&fx);
	assert_int_equal(ss.calls, 30);
	assert_int_equal(ss.requests, 1);
	fx_stop(&fx);
}

static void
test_collapse_repeated_calls_go_once_inproc(void **state)
{
	(void)state;
	collapse_repeated(TRANSPORT_INPROC);
}

static void
test_collapse_repeated_calls_go_once_tcp(void **state)
{
	(void)state;
	collapse_repeated(TRANSPORT_TCP);
}

/* With no_collapse every call is sent. */
static void
test_collapse_off_sends_every_call(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	const char *urls[] = { fx.url };
	asynq_rpc_channel_cfg cfg = { .urls = urls,
		.n_urls = 1,
		.no_collapse = true };
	assert_int_equal(asynq_rpc_channel_alloc(&fx.ch, CALC, &cfg), ASYNQ_OK);
	int64_t vals[20] = { 0 };
	asynq_future *out[20];
	many mc = { fx.ch, M(TWICE), 20, vals, NULL, out };
	run_many(&mc);
	for (size_t i = 0; i < 20; i++)
		assert_int_equal(num_of(out[i]), 0);
	asynq_future_rele_n(out, 20);
	asynq_rpc_channel_stats cs = chan_stats(fx.ch);
	assert_int_equal(cs.collapsed, 0);
	assert_int_equal(cs.sent_calls, 20);
	assert_int_equal(fx_stats(&fx).calls, 20);
	fx_stop(&fx);
}

/* A method that is not idempotent runs once per call, identical or not. */
static void
test_collapse_never_for_non_idempotent_methods(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	int64_t vals[10];
	asynq_future *out[10];
	for (size_t i = 0; i < 10; i++)
		vals[i] = 5; /* Fail(5): fails with status 5, NOT_FOUND */
	many mc = { fx.ch, M(FAIL), 10, vals, NULL, out };
	run_many(&mc);
	for (size_t i = 0; i < 10; i++) {
		assert_int_equal(asynq_future_status(out[i]), ASYNQ_NOT_FOUND);
		assert_string_equal(
		    asynq_error_message(asynq_future_error(out[i])),
		    "failed 5");
	}
	asynq_future_rele_n(out, 10);
	asynq_rpc_channel_stats cs = chan_stats(fx.ch);
	assert_int_equal(cs.collapsed, 0);
	assert_int_equal(cs.failures, 10);
	assert_int_equal(fx_stats(&fx).calls, 10);
	fx_stop(&fx);
}

/* Calls under different metadata are different calls. */
static void
test_collapse_keeps_calls_with_other_metadata_apart(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	static const char *const tags[] = { "a", "b", "a", "b", "a" };
	int64_t vals[5] = { 4, 4, 4, 4, 4 };
	asynq_future *out[5];
	many mc = { fx.ch, M(TWICE), 5, vals, tags, out };
	run_many(&mc);
	for (size_t i = 0; i < 5; i++) {
		const Asynq__Rpctest__Num *n = asynq_future_ptr(out[i]);
		assert_non_null(n);
		assert_int_equal(n->v, 8);
		assert_string_equal(n->s, tags[i]);
	}
	asynq_future_rele_n(out, 5);
	asynq_rpc_channel_stats cs = chan_stats(fx.ch);
	assert_int_equal(cs.collapsed, 3);
	assert_int_equal(cs.sent_calls, 2);
	assert_int_equal(fx_stats(&fx).calls, 2);
	fx_stop(&fx);
}

/* Results map to callers by request; a per-call error reaches only the
 * callers of that call, each with its own error. */
static void
test_collapse_errors_reach_only_their_callers(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	atomic_store(&lookup_runs, 0);
	int64_t vals[12];
	asynq_future *out[12];
	for (size_t i = 0; i < 12; i++)
		vals[i] = (int64_t)(i % 4); /* 0, 2 found; 1, 3 missing */
	many mc = { fx.ch, M(LOOKUP), 12, vals, NULL, out };
	run_many(&mc);
	for (size_t i = 0; i < 12; i++) {
		if (vals[i] % 2 == 0) {
			assert_int_equal(asynq_future_status(out[i]), ASYNQ_OK);
			assert_int_equal(num_of(out[i]), 3 * vals[i]);
			continue;
		}
		char want[32];
		snprintf(want, sizeof(want), "no num %lld", (long long)vals[i]);
		assert_int_equal(asynq_future_status(out[i]), ASYNQ_NOT_FOUND);
		assert_string_equal(
		    asynq_error_message(asynq_future_error(out[i])), want);
	}
	assert_ptr_not_equal(asynq_future_error(out[1]),
	    asynq_future_error(out[5]));
	asynq_future_rele_n(out, 12);
	assert_int_equal(atomic_load(&lookup_runs), 4);
	assert_int_equal(chan_stats(fx.ch).sent_calls, 4);
	fx_stop(&fx);
}

/* A whole-batch handler fails one call with a message of its own making;
 * the others of the batch succeed. */
static void
test_collapse_whole_batch_item_error_formatted(void **state)
{
	(void)state;
	fixture fx;
	fx_start(&fx, TRANSPORT_TCP, NULL, 0);
	int64_t vals[3] = { 4, -3, 5 };
	asynq_future *out[3];
	many mc = { fx.ch, M(SUM), 3, vals, NULL, out };
	run_many(&mc);
	assert_int_equal(num_of(out[0]), 4 + 3);
	assert_int_equal(asynq_future_status(out[1]), ASYNQ_INVALID_ARGUMENT);
	assert_string_equal(asynq_error_message(asynq_future_error(out[1])),
	    "sum: v = -3 is negative (call 1 of 3)");
	assert_int_equal(num_of(out[2]), 5 + 3);
	asynq_future_rele_n(out, 3);
	fx_stop(&fx);
}

/* A batch that fails as a whole (no server) fails every caller once. */
static void
test_collapse_failed_batch_fails_every_caller(void **state)
{
	(void)state;
	char url[64];
	snprintf(url, sizeof(url), "tcp://127.0.0.1:%d", free_port());
	const char *urls[] = { url };
	asynq_rpc_channel_cfg cfg = { .urls = urls, .n_urls = 1 };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg), ASYNQ_OK);
	int64_t vals[6] = { 1, 1, 1, 2, 2, 1 };
	asynq_future *out[6];
	many mc = { ch, M(TWICE), 6, vals, NULL, out };
	run_many(&mc);
	for (size_t i = 0; i < 6; i++)
		assert_int_equal(asynq_future_status(out[i]),
		    ASYNQ_UNAVAILABLE);
	asynq_future_rele_n(out, 6);
	asynq_rpc_channel_stats cs = chan_stats(ch);
	assert_int_equal(cs.calls, 6);
	assert_int_equal(cs.collapsed, 4);
	asynq_rpc_channel_free(ch);
}

/* ---- Request caches ---------------------------------------------------- */

/* A channel to fx's server with the given cache settings. */
static asynq_rpc_channel *
cache_channel(const fixture *fx, bool all, bool errors)
{
	const char *urls[] = { fx->url };
	asynq_rpc_channel_cfg cfg = { .urls = urls,
		.n_urls = 1,
		.request_cache = all,
		.cache_errors = errors };
	asynq_rpc_channel *ch;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, CALC, &cfg), ASYNQ_OK);
	return ch;
}

/* One call awaited: its status and value, and the future (for owned). */
typedef struct seq_call {
	const asynq_rpc_method_desc *m;
	int64_t v;
	asynq_status st;
	int64_t got;
} seq_call;

typedef struct seq {
	asynq_rpc_channel *ch;
	seq_call calls[8];
	size_t n;
	asynq_rpc_cache_cfg cfg;
	/* Before call i (if >= 0): prime prime_v -> prime_reply, or clear. */
	int prime_before, clear_before;
	int64_t prime_v, prime_reply;
	asynq_status prime_st, clear_st;
} seq;

static asynq_status
seq_body(void *arg)
{
	seq *q = arg;
	asynq_task *t = asynq_task_current();
	for (size_t i = 0; i < q->n; i++) {
		if ((int)i == q->prime_before) {
			Asynq__Rpctest__Num rq = ASYNQ__RPCTEST__NUM__INIT;
			Asynq__Rpctest__Num rp = ASYNQ__RPCTEST__NUM__INIT;
			rq.v = q->prime_v;
			rp.v = q->prime_reply;
			q->prime_st = asynq_rpc_cache_prime(q->ch,
			    q->calls[i].m, &rq.base, &rp.base);
		}
		if ((int)i == q->clear_before) {
			Asynq__Rpctest__Num rq = ASYNQ__RPCTEST__NUM__INIT;
			rq.v = q->prime_v;
			q->clear_st = asynq_rpc_cache_clear(q->ch,
			    q->calls[i].m, &rq.base);
		}
		seq_call *c = &q->calls[i];
		asynq_future *f = call_num(q->ch, c->m, c->v);
		c->st = asynq_await(t, f);
		c->got = c->st == ASYNQ_OK ? num_of(f) : INT64_MIN;
		asynq_future_rele(f);
	}
	return ASYNQ_OK;
}

static asynq_status
seq_main(asynq_task *t, void *arg)
{
	(void)t;
	seq *q = arg;
	return asynq_rpc_with_cache(&q->cfg, seq_body, q);
}

static void
run_seq(seq *q)
{
	asynq_future *f = asynq_spawn(seq_main, q);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

static seq
seq_of(asynq_rpc_channel *ch, const asynq_rpc_method_desc *m,
    const int64_t *vals, size_t n)
{
	seq q = { .ch = ch, .n = n, .prime_before = -1, .clear_before = -1 };
	for (size_t i = 0; i < n; i++)
		q.calls[i] = (seq_call){ m, vals[i], ASYNQ_UNKNOWN, 0 };
	return q;
}

/* A call repeated later in the same scope is answered from the cache;
 * another scope starts empty. */
static void
test_cache_repeated_call_answered_without_a_call(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	/* Declared in the .proto: any channel caches it. */
	asynq_rpc_channel *ch = cache_channel(&fx, false, false);
	atomic_store(&lookup_runs, 0);
	static const int64_t vals[] = { 2, 4, 2, 2, 4 };
	seq q = seq_of(ch, M(CACHED_LOOKUP), vals, 5);
	run_seq(&q);
	for (size_t i = 0; i < 5; i++) {
		assert_int_equal(q.calls[i].st, ASYNQ_OK);
		assert_int_equal(q.calls[i].got, 3 * vals[i]);
	}
	assert_int_equal(atomic_load(&lookup_runs), 2);
	asynq_rpc_channel_stats cs = chan_stats(ch);
	assert_int_equal(cs.calls, 5);
	assert_int_equal(cs.cached, 3);
	assert_int_equal(cs.requests, 2);
	/* A new scope: nothing carried over. */
	run_seq(&q);
	assert_int_equal(atomic_load(&lookup_runs), 4);
	/* The same method without a scope: every call goes out. */
	asynq_future *f = call_num(ch, M(CACHED_LOOKUP), 2);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	assert_int_equal(atomic_load(&lookup_runs), 5);
	/* Lookup itself does not use the cache on this channel. */
	seq p = seq_of(ch, M(LOOKUP), vals, 3);
	run_seq(&p);
	assert_int_equal(atomic_load(&lookup_runs), 8);
	asynq_rpc_channel_free(ch);
	fx_stop(&fx);
}

/* Errors are not kept unless asked; then the second call fails at once. */
static void
test_cache_errors_kept_only_when_asked(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	static const int64_t vals[] = { 1, 1, 1 };
	for (int keep = 0; keep < 2; keep++) {
		asynq_rpc_channel *ch = cache_channel(&fx, true, keep);
		atomic_store(&lookup_runs, 0);
		seq q = seq_of(ch, M(LOOKUP), vals, 3);
		run_seq(&q);
		for (size_t i = 0; i < 3; i++)
			assert_int_equal(q.calls[i].st, ASYNQ_NOT_FOUND);
		assert_int_equal(atomic_load(&lookup_runs), keep ? 1 : 3);
		assert_int_equal(chan_stats(ch).cached, keep ? 2 : 0);
		asynq_rpc_channel_free(ch);
	}
	fx_stop(&fx);
}

/* prime answers without a call and never overwrites; clear forgets. */
static void
test_cache_prime_and_clear(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	asynq_rpc_channel *ch = cache_channel(&fx, true, false);
	atomic_store(&lookup_runs, 0);
	static const int64_t vals[] = { 8, 8, 8 };
	seq q = seq_of(ch, M(LOOKUP), vals, 3);
	q.prime_before = 0;
	q.prime_v = 8;
	q.prime_reply = 100;
	q.clear_before = 2;
	run_seq(&q);
	assert_int_equal(q.prime_st, ASYNQ_OK);
	assert_int_equal(q.clear_st, ASYNQ_OK);
	assert_int_equal(q.calls[0].got, 100);
	assert_int_equal(q.calls[1].got, 100);
	assert_int_equal(q.calls[2].got, 24); /* cleared: asked again */
	assert_int_equal(atomic_load(&lookup_runs), 1);
	/* Priming a call already answered changes nothing. */
	seq r = seq_of(ch, M(LOOKUP), vals, 2);
	r.prime_before = 1;
	r.prime_v = 8;
	r.prime_reply = 7;
	run_seq(&r);
	assert_int_equal(r.prime_st, ASYNQ_OK);
	assert_int_equal(r.calls[1].got, 24);
	/* Misuse, in words of a status. */
	Asynq__Rpctest__Num n = ASYNQ__RPCTEST__NUM__INIT;
	Asynq__Rpctest__Tree tr = ASYNQ__RPCTEST__TREE__INIT;
	assert_int_equal(asynq_rpc_cache_prime(ch, M(LOOKUP), &n.base, &n.base),
	    ASYNQ_FAILED_PRECONDITION); /* no cache here */
	assert_int_equal(asynq_rpc_cache_clear(ch, M(LOOKUP), &n.base),
	    ASYNQ_FAILED_PRECONDITION);
	assert_int_equal(asynq_rpc_cache_clear_all(),
	    ASYNQ_FAILED_PRECONDITION);
	assert_int_equal(
	    asynq_rpc_cache_prime(ch, M(LOOKUP), &tr.base, &n.base),
	    ASYNQ_INVALID_ARGUMENT);
	asynq_rpc_channel_free(ch);
	/* A method that does not use the cache cannot be primed. */
	ch = cache_channel(&fx, false, false);
	seq u = seq_of(ch, M(LOOKUP), vals, 1);
	u.prime_before = 0;
	u.prime_v = 8;
	u.prime_reply = 1;
	run_seq(&u);
	assert_int_equal(u.prime_st, ASYNQ_FAILED_PRECONDITION);
	assert_int_equal(u.calls[0].got, 24);
	asynq_rpc_channel_free(ch);
	fx_stop(&fx);
}

/* Past max_entries the oldest answer goes first. */
static void
test_cache_bounded_oldest_first(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	asynq_rpc_channel *ch = cache_channel(&fx, true, false);
	atomic_store(&lookup_runs, 0);
	static const int64_t vals[] = { 0, 2, 4, 4, 2, 0, 4 };
	seq q = seq_of(ch, M(LOOKUP), vals, 7);
	q.cfg.max_entries = 2;
	run_seq(&q);
	for (size_t i = 0; i < 7; i++)
		assert_int_equal(q.calls[i].got, 3 * vals[i]);
	/* 0, 2, 4 asked (0 evicted by 4); 4 and 2 cached; 0 asked again
	 * (evicting 2); 4 cached. */
	assert_int_equal(atomic_load(&lookup_runs), 4);
	assert_int_equal(chan_stats(ch).cached, 3);
	/* max_bytes smaller than any entry: nothing is kept, so the same
	 * call three times runs three times. */
	static const int64_t same[] = { 6, 6, 6 };
	seq r = seq_of(ch, M(LOOKUP), same, 3);
	r.cfg.max_bytes = 8;
	atomic_store(&lookup_runs, 0);
	run_seq(&r);
	for (size_t i = 0; i < 3; i++)
		assert_int_equal(r.calls[i].got, 18);
	assert_int_equal(atomic_load(&lookup_runs), 3);
	asynq_rpc_channel_free(ch);
	fx_stop(&fx);
}

/* A call made while an identical one is in flight waits for it. */
typedef struct race {
	asynq_rpc_channel *ch;
	asynq_status st[2];
	int64_t got[2];
	int64_t done_ms[2];
	uint64_t t0;
} race;

static asynq_status
race_first(asynq_task *t, void *arg)
{
	race *r = arg;
	asynq_future *f = call_num(r->ch, M(SPIN), 150);
	r->st[0] = asynq_await(t, f);
	r->got[0] = num_of(f);
	r->done_ms[0] = ms_since(r->t0);
	asynq_future_rele(f);
	return ASYNQ_OK;
}

static asynq_status
race_second(asynq_task *t, void *arg)
{
	race *r = arg;
	asynq_future *s = asynq_sleep(30000000);
	(void)asynq_await(t, s);
	asynq_future_rele(s);
	asynq_future *f = call_num(r->ch, M(SPIN), 150);
	r->st[1] = asynq_await(t, f);
	r->got[1] = num_of(f);
	r->done_ms[1] = ms_since(r->t0);
	asynq_future_rele(f);
	return ASYNQ_OK;
}

static asynq_status
race_body(void *arg)
{
	race *r = arg;
	asynq_future *fs[2] = { asynq_spawn(race_first, r),
		asynq_spawn(race_second, r) };
	asynq_status st = asynq_await_all(asynq_task_current(), fs, 2);
	asynq_future_rele_n(fs, 2);
	return st;
}

static asynq_status
race_main(asynq_task *t, void *arg)
{
	(void)t;
	return asynq_rpc_with_cache(NULL, race_body, arg);
}

static void
test_cache_call_in_flight_is_waited_for(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	asynq_rpc_channel *ch = cache_channel(&fx, true, false);
	race r = { .ch = ch, .t0 = asynq_now_ns() };
	asynq_future *f = asynq_spawn(race_main, &r);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(r.st[i], ASYNQ_OK);
		assert_int_equal(r.got[i], 150);
	}
	/* One Spin ran; the second caller got its answer with the first. */
	assert_int_equal(fx_stats(&fx).calls, 1);
	assert_int_equal(chan_stats(ch).cached, 1);
	assert_true(r.done_ms[1] >= 150);
	asynq_rpc_channel_free(ch);
	fx_stop(&fx);
}

/* Each server handler has a cache of its own: Relay's two Lookups cost
 * one run, and two Relay calls two. */
static void
test_cache_per_handler(void **state)
{
	(void)state;
	fixture fx;
	fx_server(&fx, TRANSPORT_TCP, NULL, 2);
	relay_ch = cache_channel(&fx, true, false);
	asynq_rpc_channel *ch = cache_channel(&fx, false, false);
	atomic_store(&lookup_runs, 0);
	int64_t vals[2] = { 6, 10 };
	asynq_future *out[2];
	many mc = { ch, M(RELAY), 2, vals, NULL, out };
	run_many(&mc);
	assert_int_equal(num_of(out[0]), 2 * 18);
	assert_int_equal(num_of(out[1]), 2 * 30);
	asynq_future_rele_n(out, 2);
	assert_int_equal(atomic_load(&lookup_runs), 2);
	assert_int_equal(chan_stats(relay_ch).cached, 2);
	/* Again: the handlers' caches ended with them. */
	run_many(&mc);
	asynq_future_rele_n(out, 2);
	assert_int_equal(atomic_load(&lookup_runs), 4);
	asynq_rpc_channel_free(ch);
	fx_stop(&fx);
	asynq_rpc_channel_free(relay_ch);
	relay_ch = NULL;
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_collapse_repeated_calls_go_once_inproc),
		cmocka_unit_test(test_collapse_repeated_calls_go_once_tcp),
		cmocka_unit_test(test_collapse_off_sends_every_call),
		cmocka_unit_test(
		    test_collapse_never_for_non_idempotent_methods),
		cmocka_unit_test(
		    test_collapse_keeps_calls_with_other_metadata_apart),
		cmocka_unit_test(test_collapse_errors_reach_only_their_callers),
		cmocka_unit_test(test_collapse_failed_batch_fails_every_caller),
		cmocka_unit_test(
		    test_collapse_whole_batch_item_error_formatted),
		cmocka_unit_test(
		    test_cache_repeated_call_answered_without_a_call),
		cmocka_unit_test(test_cache_errors_kept_only_when_asked),
		cmocka_unit_test(test_cache_prime_and_clear),
		cmocka_unit_test(test_cache_bounded_oldest_first),
		cmocka_unit_test(test_cache_call_in_flight_is_waited_for),
		cmocka_unit_test(test_cache_per_handler),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
