/* SPDX-License-Identifier: MIT */
/*
 * Deduplication, per-object memoisation, the LRU cache and the lazy
 * constant: thin front ends over call tables (tcall.c), which differ only in
 * where the table lives, how the key is made and whether successful results
 * are kept.
 *
 * Design notes:
 * - Dedup keys and memo keys start with the function pointer's bytes, so two
 *   functions never share an entry even with equal argument keys.
 * - The LRU cache is one table per asynq_lru; the lazy constant is a table
 *   with one entry under the empty key.
 */
#include <stdlib.h>
#include <string.h>

#include "tcall.h"

/* A key built on the stack when small. */
typedef struct keybuf {
	unsigned char small[256];
	unsigned char *p;
	size_t len;
} keybuf;

static bool
key_fn_prefixed(keybuf *kb, asynq_task_fn fn, const void *key, size_t klen)
{
	size_t need = sizeof(fn) + klen;
	kb->p = need <= sizeof(kb->small) ? kb->small : malloc(need);
	if (kb->p == NULL)
		return false;
	memcpy(kb->p, &fn, sizeof(fn));
	if (klen > 0)
		memcpy(kb->p + sizeof(fn), key, klen);
	kb->len = need;
	return true;
}

static void
key_done(keybuf *kb)
{
	if (kb->p != kb->small)
		free(kb->p);
}

/* ---- Deduplication ------------------------------------------------------ */

asynq_future *
asynq_dedup_call_at(asynq_task_fn fn, void *arg, void (*arg_free)(void *),
    const void *key, size_t key_len, const char *name, const char *file,
    int line)
{
	keybuf kb;
	if (!key_fn_prefixed(&kb, fn, key, key_len))
		return NULL;
	asynq_future *f = asynqi_ctab_call(asynqi_tools_dedup(), kb.p, kb.len,
	    NULL, fn, arg, arg_free, name, file, line);
	key_done(&kb);
	return f;
}

void
asynq_dedup_dirty(asynq_task_fn fn, const void *key, size_t key_len)
{
	keybuf kb;
	if (!key_fn_prefixed(&kb, fn, key, key_len))
		return;
	ctab *tab = asynqi_tools_dedup();
	if (tab != NULL)
		asynqi_ctab_dirty(tab, kb.p, kb.len);
	key_done(&kb);
}

size_t
asynq_dedup_pending(void)
{
	ctab *tab = asynqi_tools_dedup();
	return tab != NULL ? tab->map.count : 0;
}

/* ---- Per-object memoisation --------------------------------------------- */

asynq_future *
asynq_memo_call_at(const void *obj, asynq_task_fn fn, void *arg,
    void (*arg_free)(void *), const void *key, size_t key_len, const char *name,
    const char *file, int line)
{
	keybuf kb;
	if (!key_fn_prefixed(&kb, fn, key, key_len))
		return NULL;
	asynq_future *f = NULL;
	ctab *tab = asynqi_tools_memo(obj, true);
	if (tab != NULL)
		f = asynqi_ctab_call(tab, kb.p, kb.len, NULL, fn, arg, arg_free,
		    name, file, line);
	key_done(&kb);
	return f;
}

void
asynq_memo_forget(const void *obj)
{
	asynqi_tools_memo_forget(obj);
}

size_t
asynq_memo_size(const void *obj)
{
	ctab *tab = asynqi_tools_memo(obj, false);
	return tab != NULL ? tab->map.count : 0;
}

size_t
asynq_memo_objects(void)
{
	return asynqi_tools_memo_objects();
}

void
asynq_memo_stats(asynq_cache_stats *out)
{
	*out = *asynqi_tools_memo_stats();
}

/* ---- LRU cache ---------------------------------------------------------- */

struct asynq_lru {
	ctab tab;
	asynq_lru_cfg cfg;
};

asynq_status
asynq_lru_alloc(asynq_lru **cp, const asynq_lru_cfg *cfg)
{
	*cp = NULL;
	if (cfg == NULL || cfg->fn == NULL)
		return ASYNQ_INVALID_ARGUMENT;
	asynq_lru *c = malloc(sizeof(*c));
	if (c == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	c->cfg = *cfg;
	if (c->cfg.max_size == 0)
		c->cfg.max_size = 128;
	if (c->cfg.name == NULL)
		c->cfg.name = "lru";
	asynqi_ctab_init(&c->tab, true, c->cfg.max_size, c->cfg.ttl_ns);
	*cp = c;
	return ASYNQ_OK;
}

void
asynq_lru_free(asynq_lru *c)
{
	if (c == NULL)
		return;
	asynqi_ctab_clear(&c->tab);
	free(c);
}

static bool
lru_key(const asynq_lru *c, const void *arg, keybuf *kb)
{
	kb->p = kb->small;
	if (c->cfg.key_fn == NULL) {
		const void *src =
		    c->cfg.arg_size != 0 ? arg : (const void *)&arg;
		size_t len =
		    c->cfg.arg_size != 0 ? c->cfg.arg_size : sizeof(arg);
		if (len > sizeof(kb->small) && (kb->p = malloc(len)) == NULL)
			return false;
		memcpy(kb->p, src, len);
		kb->len = len;
		return true;
	}
	size_t len = c->cfg.key_fn(arg, kb->small, sizeof(kb->small));
	if (len > sizeof(kb->small)) {
		if ((kb->p = malloc(len)) == NULL)
			return false;
		size_t again = c->cfg.key_fn(arg, kb->p, len);
		if (again < len)
			len = again;
	}
	kb->len = len;
	return true;
}

asynq_future *
asynq_lru_call(asynq_lru *c, void *arg, void (*arg_free)(void *))
{
	keybuf kb;
	if (!lru_key(c, arg, &kb))
		return NULL;
	asynq_future *f = asynqi_ctab_call(&c->tab, kb.p, kb.len, NULL,
	    c->cfg.fn, arg, arg_free, c->cfg.name, __FILE__, __LINE__);
	key_done(&kb);
	return f;
}

void
asynq_lru_dirty(asynq_lru *c, const void *arg)
{
	keybuf kb;
	if (!lru_key(c, arg, &kb))
		return;
	asynqi_ctab_dirty(&c->tab, kb.p, kb.len);
	key_done(&kb);
}

void
asynq_lru_clear(asynq_lru *c)
{
	asynqi_ctab_clear(&c->tab);
}

void
asynq_lru_stats(const asynq_lru *c, asynq_cache_stats *out)
{
	*out = c->tab.stats;
}

/* ---- Lazy constant ------------------------------------------------------ */

struct asynq_lazy {
	ctab tab;
	asynq_task_fn fn;
	void *arg;
	const char *name, *file;
	int line;
};

asynq_status
asynq_lazy_alloc_at(asynq_lazy **lp, asynq_task_fn fn, void *arg,
    uint64_t ttl_ns, const char *name, const char *file, int line)
{
	asynq_lazy *l = malloc(sizeof(*l));
	*lp = NULL;
	if (l == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynqi_ctab_init(&l->tab, true, 1, ttl_ns);
	l->fn = fn;
	l->arg = arg;
	l->name = name;
	l->file = file;
	l->line = line;
	*lp = l;
	return ASYNQ_OK;
}

void
asynq_lazy_free(asynq_lazy *l)
{
	if (l == NULL)
		return;
	asynqi_ctab_clear(&l->tab);
	free(l);
}

asynq_future *
asynq_lazy_get(asynq_lazy *l)
{
	return asynqi_ctab_call(&l->tab, "", 0, NULL, l->fn, l->arg, NULL,
	    l->name, l->file, l->line);
}

void
asynq_lazy_dirty(asynq_lazy *l)
{
	asynqi_ctab_dirty(&l->tab, "", 0);
}

void
asynq_lazy_stats(const asynq_lazy *l, asynq_cache_stats *out)
{
	*out = l->tab.stats;
}
