/* SPDX-License-Identifier: MIT */
/*
 * Client metadata: asynq_rpc_metadata_push/pop keep, as a scoped value, an
 * immutable chain of key/value nodes; every call records the chain it was
 * made under, and the client writes it into the request.
 *
 * Design notes:
 * - Nodes are reference counted (atomics: a call made on one thread may be
 *   freed on another); a node holds a reference on the one before it, so a
 *   call keeps its whole chain alive with one reference.
 * - Each node caches the chain's length and its size as Metadata fields, so
 *   sizing a request needs no walk.
 */
#include <stdlib.h>
#include <string.h>

#include "frame.h"
#include "internal.h"

const asynq_scoped asynqi_md_key = ASYNQ_SCOPED_INIT("asynq.rpc.metadata", 0);

/* Bytes of a length-delimited field of n bytes, with its tag. */
static size_t
ld_len(size_t n)
{
	return 1 + asynqi_varint_len(n) + n;
}

asynqi_md_node *
asynqi_md_hold(asynqi_md_node *n)
{
	if (n != NULL)
		atomic_fetch_add_explicit(&n->refs, 1, memory_order_relaxed);
	return n;
}

void
asynqi_md_rele(asynqi_md_node *n)
{
	while (n != NULL && atomic_fetch_sub(&n->refs, 1) == 1) {
		asynqi_md_node *prev = n->prev;
		free(n); /* the key is in the same block */
		n = prev;
	}
}

bool
asynqi_md_equal(const asynqi_md_node *a, const asynqi_md_node *b)
{
	for (; a != b; a = a->prev, b = b->prev) {
		if (a == NULL || b == NULL || a->depth != b->depth ||
		    a->wire != b->wire || a->len != b->len ||
		    strcmp(a->key, b->key) != 0 ||
		    memcmp(a->val, b->val, a->len) != 0)
			return false;
	}
	return true;
}

uint64_t
asynqi_md_hash(const asynqi_md_node *md)
{
	/* Cheap and shared by equal chains; equality decides. */
	return md != NULL ? (md->wire * 131 + md->depth) * 0xc2b2ae3d27d4eb4fu
	                  : 0;
}

void
asynqi_md_write(asynqi_buf *b, uint32_t field, const asynqi_md_node *md)
{
	for (; md != NULL; md = md->prev) {
		size_t klen = strlen(md->key);
		size_t one = (klen != 0 ? ld_len(klen) : 0) +
		    (md->len != 0 ? ld_len(md->len) : 0);
		asynqi_buf_tag(b, field, 2);
		asynqi_buf_varint(b, one);
		if (klen != 0)
			asynqi_buf_bytes(b, 1, md->key, klen);
		if (md->len != 0)
			asynqi_buf_bytes(b, 2, md->val, md->len);
	}
}

asynqi_md_node *
asynqi_md_make(asynqi_md_node *prev, const char *key, const void *val,
    size_t len)
{
	size_t klen = strlen(key);
	/* One block: the node, the value, the key. */
	asynqi_md_node *n = malloc(sizeof(*n) + len + klen + 1);
	if (n == NULL)
		return NULL;
	n->key = (char *)n->val + len;
	memcpy(n->key, key, klen + 1);
	if (len != 0)
		memcpy(n->val, val, len);
	n->len = len;
	atomic_init(&n->refs, 1);
	n->prev = asynqi_md_hold(prev);
	size_t one =
	    (klen != 0 ? ld_len(klen) : 0) + (len != 0 ? ld_len(len) : 0);
	n->depth = 1 + (n->prev != NULL ? n->prev->depth : 0);
	n->wire = ld_len(one) + (n->prev != NULL ? n->prev->wire : 0);
	return n;
}

asynq_status
asynq_rpc_metadata_push(const char *key, const void *val, size_t len)
{
	if (key == NULL || (val == NULL && len != 0))
		return ASYNQ_INVALID_ARGUMENT;
	asynqi_md_node *n =
	    asynqi_md_make(asynq_scoped_get(&asynqi_md_key), key, val, len);
	if (n == NULL)
		return ASYNQ_RESOURCE_EXHAUSTED;
	asynq_status st = asynq_scoped_push(&asynqi_md_key, n);
	if (st != ASYNQ_OK)
		asynqi_md_rele(n);
	return st;
}

asynq_status
asynq_rpc_metadata_pop(void)
{
	asynqi_md_node *n = asynq_scoped_get(&asynqi_md_key);
	asynq_status st = asynq_scoped_pop(&asynqi_md_key);
	if (st == ASYNQ_OK)
		asynqi_md_rele(n);
	return st;
}

asynq_status
asynq_rpc_with_metadata(const char *key, const void *val, size_t len,
    asynq_status (*fn)(void *arg), void *arg)
{
	asynq_status st = asynq_rpc_metadata_push(key, val, len);
	if (st != ASYNQ_OK)
		return st;
	st = fn(arg);
	(void)asynq_rpc_metadata_pop();
	return st;
}
