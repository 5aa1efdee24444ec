/* SPDX-License-Identifier: MIT */
/*
 * Tests of the profiler: off by default, per-task and per-batch records from
 * a known workload (three tasks each awaiting a debug item: one flush of
 * three), self time that excludes children, and the Chrome trace export,
 * read back with a small recursive-descent JSON parser so that a malformed
 * file fails the test.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "asynq/profiler.h"
#include "tests/core/testutil.h"

/* ---- A minimal JSON parser (RFC 8259 syntax, no surrogate checks) ------- */

typedef enum { J_NULL, J_BOOL, J_NUM, J_STR, J_ARR, J_OBJ } jtype;

typedef struct jv {
	jtype type;
	double num;
	bool b;
	char *str;         /* J_STR */
	struct jv **items; /* J_ARR values, J_OBJ values */
	char **keys;       /* J_OBJ keys */
	size_t n;
} jv;

typedef struct jp {
	const char *s;
	size_t i, len;
	int depth;
} jp;

static void
jv_free(jv *v)
{
	if (v == NULL)
		return;
	for (size_t i = 0; i < v->n; i++) {
		jv_free(v->items[i]);
		if (v->keys != NULL)
			free(v->keys[i]);
	}
	free(v->items);
	free(v->keys);
	free(v->str);
	free(v);
}

static void
jp_ws(jp *p)
{
	while (p->i < p->len && strchr(" \t\r\n", p->s[p->i]) != NULL)
		p->i++;
}

static bool
jp_lit(jp *p, const char *lit)
{
	size_t n = strlen(lit);
	if (p->len - p->i < n || memcmp(p->s + p->i, lit, n) != 0)
		return false;
	p->i += n;
	return true;
}

static char *
jp_string(jp *p)
{
	if (p->i >= p->len || p->s[p->i] != '"')
		return NULL;
	p->i++;
	char *out = malloc(p->len - p->i + 1);
	size_t o = 0;
	if (out == NULL)
		return NULL;
	while (p->i < p->len) {
		unsigned char c = (unsigned char)p->s[p->i++];
		if (c == '"') {
			out[o] = '\0';
			return out;
		}
		if (c < 0x20)
			break;
		if (c != '\\') {
			out[o++] = (char)c;
			continue;
		}
		if (p->i >= p->len)
			break;
		c = (unsigned char)p->s[p->i++];
		if (c == 'u') {
			if (p->len - p->i < 4)
				break;
			for (int k = 0; k < 4; k++)
				if (strchr("0123456789abcdefABCDEF",
				        p->s[p->i + k]) == NULL ||
				    p->s[p->i + k] == '\0')
					goto fail;
			p->i += 4;
			out[o++] = '?';
			continue;
		}
		const char *esc = strchr("\"\\/bfnrt", c);
		if (esc == NULL || c == '\0')
			break;
		out[o++] = "\"\\/\b\f\n\r\t"[esc - "\"\\/bfnrt"];
	}
fail:
	free(out);
	return NULL;
}

static bool
jp_digits(jp *p)
{
	size_t start = p->i;
	while (p->i < p->len && p->s[p->i] >= '0' && p->s[p->i] <= '9')
		p->i++;
	return p->i > start;
}

static jv *jp_value(jp *p);

static bool
jv_push(jv *v, jv *item, char *key)
{
	jv **ni = realloc(v->items, (v->n + 1) * sizeof(*ni));
	if (ni == NULL)
		return false;
	v->items = ni;
	if (v->type == J_OBJ) {
		char **nk = realloc(v->keys, (v->n + 1) * sizeof(*nk));
		if (nk == NULL)
			return false;
		v->keys = nk;
		v->keys[v->n] = key;
	}
	v->items[v->n++] = item;
	return true;
}

static jv *
jp_value(jp *p)
{
	jv *v = calloc(1, sizeof(*v));
	if (v == NULL || ++p->depth > 64)
		goto fail;
	jp_ws(p);
	if (p->i >= p->len)
		goto fail;
	char c = p->s[p->i];
	if (c == '{' || c == '[') {
		v->type = c == '{' ? J_OBJ : J_ARR;
		char close = c == '{' ? '}' : ']';
		p->i++;
		jp_ws(p);
		if (p->i < p->len && p->s[p->i] == close) {
			p->i++;
			goto done;
		}
		for (;;) {
			char *key = NULL;
			if (v->type == J_OBJ) {
				jp_ws(p);
				if ((key = jp_string(p)) == NULL)
					goto fail;
				jp_ws(p);
				if (p->i >= p->len || p->s[p->i] != ':') {
					free(key);
					goto fail;
				}
				p->i++;
			}
			jv *item = jp_value(p);
			if (item == NULL || !jv_push(v, item, key)) {
				free(key);
				jv_free(item);
				goto fail;
			}
			jp_ws(p);
			if (p->i < p->len && p->s[p->i] == ',') {
				p->i++;
				continue;
			}
			if (p->i < p->len && p->s[p->i] == close) {
				p->i++;
				goto done;
			}
			goto fail;
		}
	} else if (c == '"') {
		v->type = J_STR;
		if ((v->str = jp_string(p)) == NULL)
			goto fail;
	} else if (jp_lit(p, "true") || jp_lit(p, "false")) {
		v->type = J_BOOL;
		v->b = p->s[p->i - 1] == 'e' && p->s[p->i - 2] == 'u';
	} else if (jp_lit(p, "null")) {
		v->type = J_NULL;
	} else {
		size_t start = p->i;
		if (p->s[p->i] == '-')
			p->i++;
		if (p->i < p->len && p->s[p->i] == '0')
			p->i++;
		else if (!jp_digits(p))
			goto fail;
		if (p->i < p->len && p->s[p->i] == '.') {
			p->i++;
			if (!jp_digits(p))
				goto fail;
		}
		if (p->i < p->len && (p->s[p->i] == 'e' || p->s[p->i] == 'E')) {
			p->i++;
			if (p->i < p->len &&
			    (p->s[p->i] == '+' || p->s[p->i] == '-'))
				p->i++;
			if (!jp_digits(p))
				goto fail;
		}
		char tmp[64];
		size_t n = p->i - start;
		if (n >= sizeof(tmp))
			goto fail;
		memcpy(tmp, p->s + start, n);
		tmp[n] = '\0';
		v->type = J_NUM;
		v->num = strtod(tmp, NULL);
	}
done:
	p->depth--;
	return v;
fail:
	jv_free(v);
	return NULL;
}

/* json_parse parses a whole document; NULL if it is not valid JSON. */
static jv *
json_parse(const char *s, size_t len)
{
	jp p = { s, 0, len, 0 };
	jv *v = jp_value(&p);
	if (v == NULL)
		return NULL;
	jp_ws(&p);
	if (p.i != len) {
		jv_free(v);
		return NULL;
	}
	return v;
}

static const jv *
jv_get(const jv *o, const char *key)
{
	if (o == NULL || o->type != J_OBJ)
		return NULL;
	for (size_t i = 0; i < o->n; i++)
		if (strcmp(o->keys[i], key) == 0)
			return o->items[i];
	return NULL;
}

static const char *
jv_str(const jv *o, const char *key)
{
	const jv *v = jv_get(o, key);
	return v != NULL && v->type == J_STR ? v->str : NULL;
}

static bool
jv_num(const jv *o, const char *key, double *out)
{
	const jv *v = jv_get(o, key);
	if (v == NULL || v->type != J_NUM)
		return false;
	*out = v->num;
	return true;
}

/* ---- Workloads -------------------------------------------------------- */

static asynq_debug_backend be;

static asynq_status
child(asynq_task *t, void *arg)
{
	int64_t v = (int64_t)(intptr_t)arg;
	asynq_future *item = asynq_debug_item(&be, v);
	asynq_status st = asynq_await(t, item);
	TCHECK_STATUS(st, ASYNQ_OK);
	int64_t got = asynq_future_i64(item);
	asynq_future_rele(item);
	return asynq_return_i64(t, got * 10);
}

static asynq_status
parent(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_future *kids[3];
	for (int i = 0; i < 3; i++)
		kids[i] = asynq_spawn(child, (void *)(intptr_t)(i + 1));
	asynq_status st = asynq_await_all(t, kids, 3);
	TCHECK_STATUS(st, ASYNQ_OK);
	int64_t sum = 0;
	for (int i = 0; i < 3; i++)
		sum += asynq_future_i64(kids[i]);
	asynq_future_rele_n(kids, 3);
	return asynq_return_i64(t, sum);
}

static void
run_workload(void)
{
	asynq_future *f = asynq_spawn(parent, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	assert_int_equal(asynq_future_i64(f), 60);
	asynq_future_rele(f);
}

/* Finds the record of the first task named `name`. */
static bool
find_task(const char *name, asynq_profile_task *out)
{
	for (size_t i = 0; i < asynq_profiler_task_count(); i++)
		if (asynq_profiler_task(i, out) && strcmp(out->name, name) == 0)
			return true;
	return false;
}

/* ---- Tests ------------------------------------------------------------ */

static void
test_profiler_off_by_default(void **state)
{
	(void)state;
	asynq_debug_backend_init(&be, "users", false);
	assert_false(asynq_profiler_running());
	run_workload();
	assert_int_equal(asynq_profiler_task_count(), 0);
	assert_int_equal(asynq_profiler_batch_count(), 0);
	assert_status(asynq_profiler_write_chrome_file(stderr),
	    ASYNQ_FAILED_PRECONDITION);
	asynq_debug_backend_fini(&be);
}

static void
test_profiler_records_tasks_and_batches(void **state)
{
	(void)state;
	asynq_debug_backend_init(&be, "users", false);
	assert_status(asynq_profiler_start(), ASYNQ_OK);
	assert_true(asynq_profiler_running());
	assert_status(asynq_profiler_start(), ASYNQ_FAILED_PRECONDITION);
	run_workload();
	asynq_profiler_stop();
	assert_false(asynq_profiler_running());
	ASSERT_TASK_CHECKS(4);

	assert_int_equal(asynq_profiler_task_count(), 4);
	size_t children = 0;
	for (size_t i = 0; i < asynq_profiler_task_count(); i++) {
		asynq_profile_task t;
		assert_true(asynq_profiler_task(i, &t));
		assert_true(t.finished);
		assert_status(t.status, ASYNQ_OK);
		assert_int_equal(t.runs, 2);
		assert_int_equal(t.suspends, 1);
		assert_true(t.spawn_ns != 0 && t.first_run_ns >= t.spawn_ns);
		assert_true(t.finish_ns >= t.first_run_ns);
		assert_true(t.self_ns <= t.finish_ns - t.first_run_ns);
		if (strcmp(t.name, "child") == 0) {
			children++;
			assert_int_equal(t.deps_total, 1);
			assert_int_equal(t.deps_max, 1);
		} else {
			assert_string_equal(t.name, "parent");
			assert_int_equal(t.deps_total, 3);
			assert_int_equal(t.deps_max, 3);
		}
	}
	assert_int_equal(children, 3);
	asynq_profile_task par, kid;
	assert_true(find_task("parent", &par));
	assert_true(find_task("child", &kid));
	assert_int_equal(kid.creator_id, par.id);

	assert_int_equal(asynq_profiler_batch_count(), 1);
	asynq_profile_batch b;
	assert_false(asynq_profiler_batch(1, &b));
	assert_true(asynq_profiler_batch(0, &b));
	assert_string_equal(b.backend, "users");
	assert_int_equal(b.size, 3);
	assert_true(b.flushed);
	assert_true(b.done);
	assert_status(b.status, ASYNQ_OK);
	assert_true(b.done_ns >= b.flush_begin_ns);

	asynq_profile_summary sum;
	asynq_profiler_summary(&sum);
	assert_int_equal(sum.tasks, 4);
	assert_int_equal(sum.tasks_finished, 4);
	assert_int_equal(sum.runs, 8);
	assert_int_equal(sum.flushes, 1);
	assert_int_equal(sum.items_flushed, 3);
	assert_int_equal(sum.dropped, 0);
	assert_true(sum.task_self_ns + sum.flush_ns <= sum.wall_ns);

	/* Stopped: more work is not recorded. */
	run_workload();
	assert_int_equal(asynq_profiler_task_count(), 4);
	assert_int_equal(asynq_profiler_batch_count(), 1);

	asynq_profiler_reset();
	assert_int_equal(asynq_profiler_task_count(), 0);
	asynq_debug_backend_fini(&be);
}

static void
spin_ns(uint64_t ns)
{
	uint64_t end = asynq_now_ns() + ns;
	while (asynq_now_ns() < end)
		;
}

static asynq_status
busy_child(asynq_task *t, void *arg)
{
	(void)arg;
	spin_ns(3000000); /* 3 ms, before and after an await */
	TCHECK_STATUS(asynq_debug_sync(t), ASYNQ_OK);
	spin_ns(3000000);
	return ASYNQ_OK;
}

static asynq_status
lazy_parent(asynq_task *t, void *arg)
{
	(void)arg;
	asynq_future *c = asynq_spawn(busy_child, NULL);
	TCHECK_STATUS(asynq_await(t, c), ASYNQ_OK);
	asynq_future_rele(c);
	return ASYNQ_OK;
}

static void
test_profiler_self_time_excludes_children(void **state)
{
	(void)state;
	assert_status(asynq_profiler_start(), ASYNQ_OK);
	asynq_future *f = asynq_spawn(lazy_parent, NULL);
	assert_status(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	asynq_profiler_stop();
	ASSERT_TASK_CHECKS(2);

	asynq_profile_task par, kid;
	assert_true(find_task("lazy_parent", &par));
	assert_true(find_task("busy_child", &kid));
	assert_true(kid.self_ns >= 6000000);
	/* The parent's life spans the child's, its self time does not. */
	assert_true(par.finish_ns - par.first_run_ns >= 6000000);
	assert_true(par.self_ns < kid.self_ns / 2);
	asynq_profiler_reset();
}

static char *
slurp(FILE *f, size_t *len)
{
	if (fseek(f, 0, SEEK_END) != 0)
		return NULL;
	long n = ftell(f);
	if (n < 0 || fseek(f, 0, SEEK_SET) != 0)
		return NULL;
	char *buf = malloc((size_t)n + 1);
	if (buf == NULL)
		return NULL;
	*len = fread(buf, 1, (size_t)n, f);
	buf[*len] = '\0';
	return buf;
}

/* Checks the Chrome trace in text and counts its events. */
static void
check_chrome(const char *text, size_t len)
{
	jv *doc = json_parse(text, len);
	if (doc == NULL)
		fail_msg("not valid JSON:\n%s", text);
	const jv *evs = jv_get(doc, "traceEvents");
	assert_non_null(evs);
	assert_int_equal(evs->type, J_ARR);

	size_t tasks = 0, children = 0, parents = 0, flushes = 0, meta = 0;
	size_t begins = 0, ends = 0;
	for (size_t i = 0; i < evs->n; i++) {
		const jv *e = evs->items[i];
		assert_int_equal(e->type, J_OBJ);
		const char *ph = jv_str(e, "ph"), *name = jv_str(e, "name");
		double pid, tid, ts, dur, size;
		assert_non_null(ph);
		assert_non_null(name);
		assert_true(jv_num(e, "pid", &pid));
		assert_true(jv_num(e, "tid", &tid));
		if (strcmp(ph, "M") == 0) {
			meta++;
			continue;
		}
		assert_true(jv_num(e, "ts", &ts));
		assert_true(ts >= 0);
		const char *cat = jv_str(e, "cat");
		assert_non_null(cat);
		if (strcmp(ph, "b") == 0 || strcmp(ph, "e") == 0) {
			assert_non_null(jv_get(e, "id"));
			*(strcmp(ph, "b") == 0 ? &begins : &ends) += 1;
			continue;
		}
		assert_string_equal(ph, "X");
		assert_true(jv_num(e, "dur", &dur));
		assert_true(dur >= 0);
		const jv *args = jv_get(e, "args");
		assert_non_null(args);
		if (strcmp(cat, "task") == 0) {
			tasks++;
			children += strcmp(name, "child") == 0;
			parents += strcmp(name, "parent") == 0;
			double id;
			assert_true(jv_num(args, "task", &id));
			assert_non_null(jv_str(args, "end"));
		} else {
			assert_string_equal(cat, "flush");
			assert_string_equal(name, "flush users");
			assert_true(jv_num(args, "size", &size));
			assert_true(size == 3);
			assert_string_equal(jv_str(args, "backend"), "users");
			flushes++;
		}
	}
	assert_int_equal(meta, 2);
	assert_int_equal(tasks, 8); /* 4 tasks, each run twice */
	assert_int_equal(children, 6);
	assert_int_equal(parents, 2);
	assert_int_equal(flushes, 1);
	assert_int_equal(begins, 1);
	assert_int_equal(ends, 1);
	jv_free(doc);
}

static void
test_profiler_chrome_trace_is_valid(void **state)
{
	(void)state;
	asynq_debug_backend_init(&be, "users", false);
	assert_status(asynq_profiler_start(), ASYNQ_OK);
	run_workload();
	asynq_profiler_stop();

	FILE *f = tmpfile();
	assert_non_null(f);
	assert_status(asynq_profiler_write_chrome_file(f), ASYNQ_OK);
	size_t len = 0;
	char *text = slurp(f, &len);
	fclose(f);
	assert_non_null(text);
	check_chrome(text, len);
	free(text);

	/* The same through a path. */
	const char *dir = getenv("TEST_TMPDIR");
	char path[4096];
	snprintf(path, sizeof(path), "%s/trace.json",
	    dir != NULL ? dir : "/tmp");
	assert_status(asynq_profiler_write_chrome(path), ASYNQ_OK);
	f = fopen(path, "r");
	assert_non_null(f);
	text = slurp(f, &len);
	fclose(f);
	remove(path);
	assert_non_null(text);
	check_chrome(text, len);
	free(text);

	/* Kept with the test's outputs, to load in chrome://tracing. */
	const char *out = getenv("TEST_UNDECLARED_OUTPUTS_DIR");
	if (out != NULL) {
		snprintf(path, sizeof(path), "%s/workload.trace.json", out);
		assert_status(asynq_profiler_write_chrome(path), ASYNQ_OK);
	}

	assert_status(asynq_profiler_write_chrome("/nonexistent/dir/t.json"),
	    ASYNQ_UNAVAILABLE);
	assert_status(asynq_profiler_write_chrome_file(NULL),
	    ASYNQ_INVALID_ARGUMENT);
	asynq_profiler_reset();
	asynq_debug_backend_fini(&be);
}

static void
test_profiler_json_checker_rejects_garbage(void **state)
{
	(void)state;
	static const char *const bad[] = { "", "{", "{\"a\":}", "[1,]",
		"{\"a\" 1}", "[01]", "\"\\x\"", "[1] x", "{'a':1}" };
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		jv *v = json_parse(bad[i], strlen(bad[i]));
		if (v != NULL) {
			jv_free(v);
			fail_msg("accepted %s", bad[i]);
		}
	}
	const char *good = "{\"a\":[1,-2.5e3,true,false,null,\"x\\u0041\"]}";
	jv *v = json_parse(good, strlen(good));
	assert_non_null(v);
	jv_free(v);
}

static void
test_profiler_async_backend_and_restart(void **state)
{
	(void)state;
	/* An async backend's in-flight time and the scheduler's flushes are
	 * outside every task slice; a restart begins a fresh profile. */
	asynq_debug_backend_init(&be, "users", true);
	assert_status(asynq_profiler_start(), ASYNQ_OK);
	run_workload();
	asynq_profiler_stop();
	ASSERT_TASK_CHECKS(4);
	assert_int_equal(asynq_profiler_batch_count(), 1);
	asynq_profile_batch b;
	assert_true(asynq_profiler_batch(0, &b));
	assert_int_equal(b.size, 3);
	assert_true(b.done);
	assert_true(b.done_ns >= b.flush_begin_ns + b.flush_ns);

	assert_status(asynq_profiler_start(), ASYNQ_OK);
	assert_int_equal(asynq_profiler_task_count(), 0);
	asynq_profiler_reset();
	asynq_debug_backend_fini(&be);
}

static void
test_profiler_events_merge_and_limit(void **state)
{
	(void)state;
	asynq_debug_backend_init(&be, "users", false);
	/* The events alone, named and counted from an earlier origin, make
	 * a whole trace once wrapped: what the admin endpoint's /trace does
	 * with every worker's profile. */
	uint64_t origin = asynq_now_ns();
	assert_status(asynq_profiler_start(), ASYNQ_OK);
	run_workload();
	asynq_profiler_stop();
	FILE *f = tmpfile();
	assert_non_null(f);
	bool first = true;
	fputs("{\"traceEvents\":[", f);
	assert_status(asynq_profiler_write_chrome_events(f, origin,
	                  "users worker 0", &first),
	    ASYNQ_OK);
	assert_false(first);
	fputs("]}", f);
	size_t len = 0;
	char *text = slurp(f, &len);
	fclose(f);
	assert_non_null(text);
	jv *doc = json_parse(text, len);
	if (doc == NULL)
		fail_msg("not valid JSON:\n%s", text);
	const jv *evs = jv_get(doc, "traceEvents");
	assert_non_null(evs);
	/* One thread_name, no process_name; the task slices as in a whole
	 * file. */
	size_t meta = 0, slices = 0;
	for (size_t i = 0; i < evs->n; i++) {
		const char *ph = jv_str(evs->items[i], "ph");
		if (strcmp(ph, "M") == 0) {
			meta++;
			assert_string_equal(jv_str(evs->items[i], "name"),
			    "thread_name");
			const jv *args = jv_get(evs->items[i], "args");
			assert_string_equal(jv_str(args, "name"),
			    "users worker 0");
		}
		slices += strcmp(ph, "X") == 0;
	}
	assert_int_equal(meta, 1);
	assert_int_equal(slices, 9); /* 8 task slices and 1 flush */
	jv_free(doc);
	free(text);
	assert_status(asynq_profiler_write_chrome_events(NULL, 0, NULL, &first),
	    ASYNQ_INVALID_ARGUMENT);
	assert_status(asynq_profiler_write_chrome_events(stderr, 0, NULL, NULL),
	    ASYNQ_INVALID_ARGUMENT);

	/* At most 3 records: the rest of the workload's events are dropped
	 * and counted. */
	asynq_profiler_cfg cfg = { .max_records = 3 };
	assert_status(asynq_profiler_start_cfg(&cfg), ASYNQ_OK);
	run_workload();
	asynq_profiler_stop();
	asynq_profile_summary sum;
	asynq_profiler_summary(&sum);
	assert_true(sum.dropped > 0);
	assert_true(sum.runs <= 3 + sum.tasks);
	assert_true(sum.flushes + sum.runs <= 3 + sum.tasks);
	asynq_profiler_reset();
	assert_status(
	    asynq_profiler_write_chrome_events(stderr, 0, NULL, &first),
	    ASYNQ_FAILED_PRECONDITION);
	asynq_debug_backend_fini(&be);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		TU_TEST(test_profiler_off_by_default),
		TU_TEST(test_profiler_records_tasks_and_batches),
		TU_TEST(test_profiler_self_time_excludes_children),
		TU_TEST(test_profiler_chrome_trace_is_valid),
		TU_TEST(test_profiler_json_checker_rejects_garbage),
		TU_TEST(test_profiler_async_backend_and_restart),
		TU_TEST(test_profiler_events_merge_and_limit),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
