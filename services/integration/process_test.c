/* SPDX-License-Identifier: MIT */
/*
 * The example services as separate processes: the users, answers, cache and
 * frontend binaries (data deps, found in the runfiles) on tcp loopback ports,
 * on small databases they generate in TEST_TMPDIR. The test is only a client:
 * an RPC channel to the frontend. It checks the answers against the
 * databases read directly with SQLite, what the frontend says while the
 * users service is dead and after it comes back on the same port, that a
 * repeated request with the cache service running does not reach the users
 * service (read from the users' counters log), and that SIGTERM makes each
 * binary exit 0 after answering the calls it holds.
 *
 * Design notes: each child's stdout and stderr go to files in TEST_TMPDIR,
 * so a child never blocks on a full pipe and the test can read its
 * "listening on" line and its counters log at leisure. Children are kept in
 * one table; the teardown kills (SIGKILL) and reaps every one still alive,
 * so a failed assertion leaves no process behind, and each child also gets
 * SIGKILL if the test process dies (PR_SET_PDEATHSIG). Assertions run on the
 * test thread only, never in a task: tasks record what they see.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <sqlite3.h>

#include "asynq/asynq.h"
#include "asynq/rpc.h"
#include "proto/asynq/health.asynq.h"
#include "services/frontend/frontend.asynq.h"
#include "services/users/users.asynq.h"
#include "tests/common/child.h"

#define N_USERS 1000
#define N_ANSWERS 10000
#define N_QUESTIONS 1000

#define FRONTEND (&asynq__frontend__frontend__asynq_desc)
#define AUTHOR_NAMES                                                           \
	(&FRONTEND->methods                                                    \
	        [ASYNQ__FRONTEND__FRONTEND__ASYNQ_METHOD_AUTHOR_NAMES])

#define MS (1000 * 1000ull)

/* ---- Child processes ----------------------------------------------------
 */

#define MAX_PROCS 8

typedef struct proc {
	char name[32];
	pid_t pid;  /* 0: not running (never started, or reaped) */
	int status; /* waitpid's status once reaped */
	char out[1200], err[1200]; /* stdout and stderr files */
	char url[64];
} proc;

static proc procs[MAX_PROCS];
static char bindir[1024]; /* runfiles directory of the service programs */
static char tmpdir[1024];
static char users_db[1100], answers_db[1100];
static char gen[3][32]; /* --gen-* values */

/* A loopback port free now, below the ephemeral range (tests/common). */
static int
free_port(void)
{
	return child_free_port();
}

static void
url_make(char *buf, size_t n)
{
	int port = free_port();
	assert_true(port > 0);
	snprintf(buf, n, "tcp://127.0.0.1:%d", port);
}

/* Reads a whole file into a malloc'd string ("" if it does not exist). */
static char *
slurp(const char *path)
{
	FILE *f = fopen(path, "rb");
	size_t cap = 4096, len = 0;
	char *buf = malloc(cap);
	assert_non_null(buf);
	if (f != NULL) {
		size_t k;
		while ((k = fread(buf + len, 1, cap - len - 1, f)) > 0) {
			len += k;
			if (cap - len - 1 == 0) {
				cap *= 2;
				buf = realloc(buf, cap);
				assert_non_null(buf);
			}
		}
		fclose(f);
	}
	buf[len] = '\0';
	return buf;
}

static bool
file_has(const char *path, const char *needle)
{
	char *s = slurp(path);
	bool has = strstr(s, needle) != NULL;
	free(s);
	return has;
}

/* Prints a child's output files, to explain a failure. */
static void
proc_dump(const proc *p)
{
	char *o = slurp(p->out), *e = slurp(p->err);
	fprintf(stderr, "---- %s (pid %d) stdout:\n%s---- stderr:\n%s----\n",
	    p->name, (int)p->pid, o, e);
	free(o);
	free(e);
}

/* Reaps p if it has exited; with wait_ms > 0 waits that long for it.
 * Returns true once p is reaped. */
static bool
proc_reap(proc *p, int wait_ms)
{
	for (int i = 0; p->pid != 0; i++) {
		pid_t r = waitpid(p->pid, &p->status, WNOHANG);
		if (r == p->pid || (r < 0 && errno == ECHILD)) {
			p->pid = 0;
			break;
		}
		if (i >= wait_ms / 10)
			return false;
		usleep(10 * 1000);
	}
	return true;
}

/* Sends SIGKILL to p and reaps it. */
static void
proc_kill(proc *p)
{
	if (p->pid > 0) {
		kill(p->pid, SIGKILL);
		while (waitpid(p->pid, &p->status, 0) < 0 && errno == EINTR)
			;
		p->pid = 0;
	}
}

/* Starts binary `bin` as child `name` listening on url with the extra
 * arguments argv[5..] (NULL-terminated), and waits until it prints that it
 * listens. Returns NULL if it exited first, having printed its output. */
static proc *
proc_try(const char *name, const char *bin, const char *url, const char **argv)
{
	static int seq;
	proc *p = NULL;
	for (size_t i = 0; i < MAX_PROCS && p == NULL; i++)
		if (procs[i].pid == 0)
			p = &procs[i];
	assert_non_null(p);
	memset(p, 0, sizeof(*p));
	snprintf(p->name, sizeof(p->name), "%s", name);
	snprintf(p->url, sizeof(p->url), "%s", url);
	seq++;
	snprintf(p->out, sizeof(p->out), "%s/%s-%d.out", tmpdir, name, seq);
	snprintf(p->err, sizeof(p->err), "%s/%s-%d.err", tmpdir, name, seq);

	char path[1200];
	snprintf(path, sizeof(path), "%s/%s/%s", bindir, bin, bin);
	argv[0] = path;
	argv[1] = "--listen";
	argv[2] = url;
	argv[3] = "--workers";
	argv[4] = "2";
	/* Stopped at once on SIGTERM unless the extra arguments ask for a
	 * grace period (a later flag wins). */
	const char *args[64];
	size_t n = 0;
	for (size_t i = 0; i < 5; i++)
		args[n++] = argv[i];
	args[n++] = "--drain-grace-ms";
	args[n++] = "0";
	for (size_t i = 5; argv[i] != NULL && n + 1 < 64; i++)
		args[n++] = argv[i];
	args[n] = NULL;

	fflush(NULL);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		int o = open(p->out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		int e = open(p->err, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (o < 0 || e < 0 || dup2(o, 1) < 0 || dup2(e, 2) < 0)
			_exit(126);
		execv(path, (char *const *)args);
		_exit(127);
	}
	p->pid = pid;

	/* Up to 60 s: a first start generates its database. */
	for (int i = 0; i < 6000; i++) {
		if (file_has(p->out, "listening on"))
			return p;
		if (proc_reap(p, 0))
			break;
		usleep(10 * 1000);
	}
	proc_dump(p);
	proc_kill(p);
	return NULL;
}

/* proc_try with the extra arguments after url_len (NULL-terminated) on the
 * URL in url[0..url_len): that URL if set (a restart), else on a free port,
 * and then on another if that one was taken in the meantime (the URL used
 * is left in url). Fails the test if the child does not start. */
static proc *
proc_start(const char *name, const char *bin, char *url, size_t url_len, ...)
{
	const char *argv[24];
	size_t argc = 5;
	bool fresh = url[0] == '\0';
	va_list ap;
	va_start(ap, url_len);
	const char *a;
	while ((a = va_arg(ap, const char *)) != NULL && argc < 23)
		argv[argc++] = a;
	va_end(ap);
	argv[argc] = NULL;

	for (int i = 0; i < 5; i++) {
		if (fresh)
			url_make(url, url_len);
		proc *p = proc_try(name, bin, url, argv);
		if (p != NULL)
			return p;
		if (!fresh)
			break;
	}
	fail_msg("%s did not start listening on %s", name, url);
	return NULL;
}

/* Sends sig to p (still running). */
static void
proc_signal(proc *p, int sig)
{
	assert_true(p->pid > 0);
	assert_int_equal(kill(p->pid, sig), 0);
}

/* Asserts that p exits with status 0 within wait_ms. */
static void
proc_expect_exit_0(proc *p, int wait_ms)
{
	if (!proc_reap(p, wait_ms)) {
		proc_dump(p);
		fail_msg("%s did not exit within %d ms", p->name, wait_ms);
	}
	if (!WIFEXITED(p->status) || WEXITSTATUS(p->status) != 0) {
		proc_dump(p);
		fail_msg("%s: %s %d", p->name,
		    WIFEXITED(p->status) ? "exit status" : "killed by signal",
		    WIFEXITED(p->status) ? WEXITSTATUS(p->status)
		                         : WTERMSIG(p->status));
	}
}

/* Sums "name: calls=N" over the counters log lines of p's stderr. */
static unsigned long long
log_calls(const proc *p)
{
	char *s = slurp(p->err);
	char key[48];
	unsigned long long sum = 0;
	snprintf(key, sizeof(key), "%s: calls=", p->name);
	for (char *l = s; (l = strstr(l, key)) != NULL; l += strlen(key))
		sum += strtoull(l + strlen(key), NULL, 10);
	free(s);
	return sum;
}

/* ---- Fixture -------------------------------------------------------------
 */

typedef struct fixture {
	proc *users, *answers, *frontend;
	asynq_rpc_channel *ch; /* the test's channel to the frontend */
	sqlite3 *db;           /* answers, with users attached as u */
} fixture;

static int
group_setup(void **state)
{
	(void)state;
	const char *dir = getenv("TEST_TMPDIR");
	const char *src = getenv("TEST_SRCDIR");
	const char *ws = getenv("TEST_WORKSPACE");
	snprintf(tmpdir, sizeof(tmpdir), "%s", dir != NULL ? dir : "/tmp");
	if (src == NULL) {
		fprintf(stderr,
		    "TEST_SRCDIR is not set: run with bazel test\n");
		return -1;
	}
	snprintf(bindir, sizeof(bindir), "%s/%s/services", src,
	    ws != NULL ? ws : "asynq");
	snprintf(users_db, sizeof(users_db), "%s/proc-users.db", tmpdir);
	snprintf(answers_db, sizeof(answers_db), "%s/proc-answers.db", tmpdir);
	snprintf(gen[0], sizeof(gen[0]), "%d", N_USERS);
	snprintf(gen[1], sizeof(gen[1]), "%d", N_ANSWERS);
	snprintf(gen[2], sizeof(gen[2]), "%d", N_QUESTIONS);
	return 0;
}

/* Kills what a failed fx_setup left running (cmocka skips the teardown of
 * a test whose setup failed). */
static int
group_teardown(void **state)
{
	(void)state;
	for (size_t i = 0; i < MAX_PROCS; i++)
		proc_kill(&procs[i]);
	return 0;
}

static proc *
users_start(char *url, size_t n)
{
	return proc_start("users", "users", url, n, "--db", users_db,
	    "--gen-users", gen[0], NULL);
}

static asynq_rpc_channel *
channel(const char *url, uint32_t deadline_ms)
{
	const char *urls[] = { url };
	asynq_rpc_channel_cfg cfg = {
		.urls = urls,
		.n_urls = 1,
		.default_deadline_ms = deadline_ms,
	};
	asynq_rpc_channel *ch = NULL;
	assert_int_equal(asynq_rpc_channel_alloc(&ch, FRONTEND, &cfg),
	    ASYNQ_OK);
	return ch;
}

/* Starts users, answers and a frontend without cache, and a channel to it
 * whose calls have a 2 s deadline. */
static int
fx_setup(void **state)
{
	char uurl[64], aurl[64], furl[64]; /* "": any free port */
	fixture *fx = calloc(1, sizeof(*fx));
	assert_non_null(fx);
	*state = fx;
	uurl[0] = aurl[0] = furl[0] = '\0';
	fx->users = users_start(uurl, sizeof(uurl));
	fx->answers = proc_start("answers", "answers", aurl, sizeof(aurl),
	    "--db", answers_db, "--gen-users", gen[0], "--gen-answers", gen[1],
	    "--gen-questions", gen[2], NULL);
	fx->frontend = proc_start("frontend", "frontend", furl, sizeof(furl),
	    "--users", uurl, "--answers", aurl, NULL);
	fx->ch = channel(furl, 2000);

	assert_int_equal(
	    sqlite3_open_v2(answers_db, &fx->db, SQLITE_OPEN_READONLY, NULL),
	    SQLITE_OK);
	char attach[1200];
	snprintf(attach, sizeof(attach), "ATTACH DATABASE '%s' AS u;",
	    users_db);
	assert_int_equal(sqlite3_exec(fx->db, attach, NULL, NULL, NULL),
	    SQLITE_OK);
	return 0;
}

static int
fx_teardown(void **state)
{
	fixture *fx = *state;
	for (size_t i = 0; i < MAX_PROCS; i++)
		proc_kill(&procs[i]);
	if (fx != NULL) {
		asynq_rpc_channel_free(fx->ch);
		sqlite3_close(fx->db);
		free(fx);
	}
	asynq_thread_fini();
	return 0;
}

/* ---- The independent view: direct SQL -------------------------------------
 */

static char *
sql_author_name(sqlite3 *db, int64_t aid)
{
	sqlite3_stmt *st;
	char *name = NULL;
	assert_int_equal(sqlite3_prepare_v2(db,
	                     "SELECT u.name FROM answers a JOIN u.users u"
	                     " ON u.id = a.author_id WHERE a.id = ?",
	                     -1, &st, NULL),
	    SQLITE_OK);
	sqlite3_bind_int64(st, 1, aid);
	if (sqlite3_step(st) == SQLITE_ROW)
		name = strdup((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return name;
}

/* ---- Client calls ----------------------------------------------------------
 */

/* One AuthorNames call for ids[0..n), run by a task on the test thread. */
typedef struct names_call {
	asynq_rpc_channel *ch;
	const int64_t *ids;
	size_t n;
	asynq_future *reply; /* kept for the test thread to read */
	asynq_status st;
	uint64_t ms; /* how long the call took */
} names_call;

static asynq_future *
names_send(names_call *c)
{
	Asynq__Frontend__AnswerIds req = ASYNQ__FRONTEND__ANSWER_IDS__INIT;
	req.n_ids = c->n;
	req.ids = (int64_t *)c->ids;
	return asynq_rpc_call(c->ch, AUTHOR_NAMES, &req.base);
}

static asynq_status
names_main(asynq_task *t, void *arg)
{
	names_call *c = arg;
	uint64_t t0 = asynq_now_ns();
	c->reply = names_send(c);
	c->st = asynq_await(t, c->reply);
	c->ms = (asynq_now_ns() - t0) / MS;
	return ASYNQ_OK;
}

static void
names_run(names_call *c)
{
	asynq_future_rele(c->reply);
	c->reply = NULL;
	asynq_future *f = asynq_spawn(names_main, c);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
}

static void
names_done(names_call *c)
{
	asynq_future_rele(c->reply);
	c->reply = NULL;
}

/* Asserts that c succeeded with the database's author names. */
static void
names_check(const names_call *c, sqlite3 *db)
{
	if (c->st != ASYNQ_OK)
		fail_msg("AuthorNames: %s: %s", asynq_strerror(c->st),
		    asynq_error_message(asynq_future_error(c->reply)));
	const Asynq__Frontend__Names *names = asynq_future_ptr(c->reply);
	assert_non_null(names);
	assert_int_equal(names->n_names, c->n);
	for (size_t i = 0; i < c->n; i++) {
		char *want = sql_author_name(db, c->ids[i]);
		assert_non_null(want);
		assert_string_equal(names->names[i], want);
		free(want);
	}
}

static void
ids_fill(int64_t *ids, size_t n, size_t salt)
{
	for (size_t i = 0; i < n; i++)
		ids[i] = 1 + (int64_t)(((salt * n + i) * 7919) % N_ANSWERS);
}

/* ---- Tests -------------------------------------------------------------- */

static void
test_process_author_names_match_db(void **state)
{
	fixture *fx = *state;
	enum { N = 300 };
	int64_t ids[N];
	ids_fill(ids, N, 0);
	names_call c = { .ch = fx->ch, .ids = ids, .n = N };
	names_run(&c);
	names_check(&c, fx->db);
	names_done(&c);

	/* An unknown answer is NOT_FOUND, not a partial reply. */
	int64_t bad[] = { 1, N_ANSWERS + 5, 2 };
	c = (names_call){ .ch = fx->ch, .ids = bad, .n = 3 };
	names_run(&c);
	assert_int_equal(c.st, ASYNQ_NOT_FOUND);
	names_done(&c);
}

/* Asserts that c failed as a call whose users service is gone does, within
 * its 2 s deadline (plus slack for a loaded machine). */
static void
expect_no_users(const names_call *c)
{
	fprintf(stderr, "without users: %s in %llu ms\n", asynq_strerror(c->st),
	    (unsigned long long)c->ms);
	if (c->st != ASYNQ_UNAVAILABLE && c->st != ASYNQ_DEADLINE_EXCEEDED)
		fail_msg("AuthorNames without users: %s",
		    asynq_strerror(c->st));
	assert_true(c->ms < 2000 + 500);
}

static void
test_process_users_killed_then_restarted(void **state)
{
	fixture *fx = *state;
	enum { N = 50 };
	int64_t ids[N];
	ids_fill(ids, N, 1);
	names_call c = { .ch = fx->ch, .ids = ids, .n = N };
	names_run(&c);
	names_check(&c, fx->db);

	/* Users dies without a word: the frontend's GetUser calls cannot
	 * reach it, and AuthorNames fails within its 2 s deadline. */
	char uurl[64];
	snprintf(uurl, sizeof(uurl), "%s", fx->users->url);
	proc_kill(fx->users);
	names_run(&c);
	expect_no_users(&c);
	/* Again, now that the connection is known to be gone. */
	names_run(&c);
	expect_no_users(&c);

	/* Users comes back on the same port; the same frontend process
	 * reconnects and calls succeed again. */
	fx->users = users_start(uurl, sizeof(uurl));
	uint64_t t0 = asynq_now_ns();
	do
		names_run(&c);
	while (c.st != ASYNQ_OK && asynq_now_ns() - t0 < 20000 * MS);
	fprintf(stderr, "users restarted: OK after %llu ms\n",
	    (unsigned long long)((asynq_now_ns() - t0) / MS));
	names_check(&c, fx->db);
	names_run(&c);
	names_check(&c, fx->db);
	names_done(&c);
	assert_true(fx->frontend->pid > 0 && !proc_reap(fx->frontend, 0));
}

static void
test_process_repeat_served_from_cache(void **state)
{
	fixture *fx = *state;
	char curl[64] = "", furl[64] = "";
	proc *cache = proc_start("cache", "cache", curl, sizeof(curl), NULL);
	proc_start("frontend", "frontend", furl, sizeof(furl), "--users",
	    fx->users->url, "--answers", fx->answers->url, "--cache", curl,
	    NULL);
	asynq_rpc_channel *ch = channel(furl, 5000);

	enum { N = 40 };
	int64_t ids[N];
	ids_fill(ids, N, 2);
	names_call c = { .ch = ch, .ids = ids, .n = N };
	names_run(&c);
	names_check(&c, fx->db);

	/* The users service logs its calls at most once a second: wait for
	 * the first request's GetUser calls to show. */
	unsigned long long first = 0;
	for (int i = 0; i < 300 && first == 0; i++) {
		usleep(10 * 1000);
		first = log_calls(fx->users);
	}
	assert_true(first > 0 && first <= N);

	/* The same request again: every name is in the cache. */
	names_run(&c);
	names_check(&c, fx->db);
	names_done(&c);
	/* Long enough for a log line of new calls to appear (> 1 s). */
	usleep(2500 * 1000);
	if (log_calls(fx->users) != first) {
		proc_dump(fx->users);
		fail_msg("the repeated request reached the users service");
	}
	assert_true(log_calls(cache) > 0);
	asynq_rpc_channel_free(ch);
}

/* The frontend's SIGTERM test: a call in flight at the frontend (its
 * GetUser calls held by a stopped users service) when SIGTERM arrives. */
typedef struct sigterm_job {
	fixture *fx;
	int stage; /* how far the controller got */
} sigterm_job;

static asynq_status
sigterm_controller(asynq_task *t, void *arg)
{
	sigterm_job *j = arg;
	/* Wait until the frontend logs calls going out: its handler runs. */
	for (int i = 0; i < 100; i++) {
		asynq_future *f = asynq_sleep(50 * MS);
		asynq_await(t, f);
		asynq_future_rele(f);
		if (file_has(j->fx->frontend->err, "out_calls="))
			break;
	}
	if (!file_has(j->fx->frontend->err, "out_calls="))
		return ASYNQ_OK;
	j->stage = 1;
	if (kill(j->fx->frontend->pid, SIGTERM) != 0)
		return ASYNQ_OK;
	j->stage = 2;
	/* Let the frontend start closing before users answers. */
	asynq_future *f = asynq_sleep(300 * MS);
	asynq_await(t, f);
	asynq_future_rele(f);
	if (kill(j->fx->users->pid, SIGCONT) == 0)
		j->stage = 3;
	return ASYNQ_OK;
}

static void
test_process_sigterm_frontend_answers_inflight(void **state)
{
	fixture *fx = *state;
	enum { N = 20 };
	int64_t ids[N];
	ids_fill(ids, N, 3);
	asynq_rpc_channel *ch = channel(fx->frontend->url, 10000);
	names_call c = { .ch = ch, .ids = ids, .n = N };
	sigterm_job j = { .fx = fx };

	proc_signal(fx->users, SIGSTOP);
	asynq_future *fs[2] = {
		asynq_spawn(names_main, &c),
		asynq_spawn(sigterm_controller, &j),
	};
	asynq_wait_all(fs, 2);
	asynq_future_rele_n(fs, 2);
	if (j.stage < 3)
		kill(fx->users->pid, SIGCONT);
	assert_int_equal(j.stage, 3);
	names_check(&c, fx->db);
	names_done(&c);
	proc_expect_exit_0(fx->frontend, 10000);
	assert_true(file_has(fx->frontend->err, "frontend: stopping"));
	asynq_rpc_channel_free(ch);
}

/* The backends' SIGTERM test: client tasks keep calling while the users and
 * answers services get SIGTERM. */
typedef struct load {
	fixture *fx;
	size_t salt;
	bool stop;
	size_t ok, gone, other; /* calls that succeeded / found no service /
	                           failed otherwise */
	asynq_status other_st;
} load;

static asynq_status
load_main(asynq_task *t, void *arg)
{
	load *l = arg;
	enum { N = 10 };
	int64_t ids[N];
	while (!l->stop) {
		ids_fill(ids, N, l->salt++);
		names_call c = { .ch = l->fx->ch, .ids = ids, .n = N };
		asynq_future *f = names_send(&c);
		asynq_status st = asynq_await(t, f);
		asynq_future_rele(f);
		if (st == ASYNQ_OK)
			l->ok++;
		else if (st == ASYNQ_UNAVAILABLE ||
		    st == ASYNQ_DEADLINE_EXCEEDED)
			l->gone++;
		else {
			l->other++;
			l->other_st = st;
		}
	}
	return ASYNQ_OK;
}

static asynq_status
load_controller(asynq_task *t, void *arg)
{
	load *l = arg;
	asynq_future *f = asynq_sleep(300 * MS);
	asynq_await(t, f);
	asynq_future_rele(f);
	kill(l->fx->users->pid, SIGTERM);
	kill(l->fx->answers->pid, SIGTERM);
	f = asynq_sleep(1000 * MS);
	asynq_await(t, f);
	asynq_future_rele(f);
	l->stop = true;
	return ASYNQ_OK;
}

static void
test_process_sigterm_each_binary_exits_0(void **state)
{
	fixture *fx = *state;
	enum { CLIENTS = 8 };
	load l = { .fx = fx };
	asynq_future *fs[CLIENTS + 1];
	for (size_t i = 0; i < CLIENTS; i++)
		fs[i] = asynq_spawn(load_main, &l);
	fs[CLIENTS] = asynq_spawn(load_controller, &l);
	asynq_wait_all(fs, CLIENTS + 1);
	asynq_future_rele_n(fs, CLIENTS + 1);

	/* Every call ended, with a value or with "no service". */
	fprintf(stderr, "calls around SIGTERM: %zu ok, %zu unavailable\n", l.ok,
	    l.gone);
	assert_true(l.ok > 0);
	if (l.other != 0)
		fail_msg("%zu calls failed with %s", l.other,
		    asynq_strerror(l.other_st));
	proc_expect_exit_0(fx->users, 10000);
	proc_expect_exit_0(fx->answers, 10000);
	assert_true(file_has(fx->users->err, "users: stopping"));
	assert_true(file_has(fx->answers->err, "answers: stopping"));

	/* An idle cache and an idle frontend exit 0 too. */
	char curl[64] = "";
	proc *cache = proc_start("cache", "cache", curl, sizeof(curl), NULL);
	proc_signal(cache, SIGTERM);
	proc_expect_exit_0(cache, 10000);
	proc_signal(fx->frontend, SIGTERM);
	proc_expect_exit_0(fx->frontend, 10000);
}

/* SIGTERM with a grace period: the users service says NOT_SERVING to
 * health checks at once but answers calls for the grace period, then
 * exits 0. */
typedef struct drain_job {
	asynq_rpc_channel *users;
	proc *p;
	int health; /* the check's status after SIGTERM, -1 failed */
	asynq_status get_st;
	int64_t got;
} drain_job;

static asynq_status
drain_main(asynq_task *t, void *arg)
{
	drain_job *j = arg;
	proc_signal(j->p, SIGTERM);
	/* Until the service says it drains (bounded: 10 s). */
	for (int i = 0; i < 1000 && !file_has(j->p->err, "draining"); i++) {
		asynq_future *s = asynq_sleep(10000000);
		(void)asynq_await(t, s);
		asynq_future_rele(s);
	}
	Asynq__Health__V1__HealthCheckRequest hq =
	    ASYNQ__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	hq.service = "";
	Asynq__Users__UserId uq = ASYNQ__USERS__USER_ID__INIT;
	uq.id = 7;
	asynq_future *fs[2] = {
		asynq__health__v1__health__check__call(j->users, &hq),
		asynq__users__users__get_user__call(j->users, &uq),
	};
	(void)asynq_await_all(t, fs, 2);
	const Asynq__Health__V1__HealthCheckResponse *h =
	    asynq__health__v1__health__check__reply(fs[0]);
	j->health = h != NULL ? (int)h->status : -1;
	j->get_st = asynq_future_status(fs[1]);
	const Asynq__Users__User *u =
	    asynq__users__users__get_user__reply(fs[1]);
	j->got = u != NULL ? u->id : -1;
	asynq_future_rele_n(fs, 2);
	return ASYNQ_OK;
}

static void
test_process_sigterm_drains_with_grace(void **state)
{
	(void)state;
	char url[64] = "";
	proc *p = proc_start("users", "users", url, sizeof(url), "--db",
	    users_db, "--gen-users", gen[0], "--drain-grace-ms", "3000", NULL);
	const char *urls[] = { url };
	asynq_rpc_channel_cfg cfg = { .urls = urls,
		.n_urls = 1,
		.default_deadline_ms = 2000 };
	asynq_rpc_channel *users = NULL;
	assert_int_equal(asynq_rpc_channel_alloc(&users,
	                     &asynq__users__users__asynq_desc, &cfg),
	    ASYNQ_OK);
	drain_job j = { users, p, -2, ASYNQ_UNKNOWN, 0 };
	asynq_future *f = asynq_spawn(drain_main, &j);
	assert_int_equal(asynq_wait(f), ASYNQ_OK);
	asynq_future_rele(f);
	/* Not ready, still serving. */
	assert_int_equal(j.health,
	    ASYNQ__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
	assert_int_equal(j.get_st, ASYNQ_OK);
	assert_int_equal(j.got, 7);
	proc_expect_exit_0(p, 15000);
	assert_true(file_has(p->err, "users: draining: not ready"));
	asynq_rpc_channel_free(users);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
		    test_process_author_names_match_db, fx_setup, fx_teardown),
		cmocka_unit_test_setup_teardown(
		    test_process_users_killed_then_restarted, fx_setup,
		    fx_teardown),
		cmocka_unit_test_setup_teardown(
		    test_process_repeat_served_from_cache, fx_setup,
		    fx_teardown),
		cmocka_unit_test_setup_teardown(
		    test_process_sigterm_frontend_answers_inflight, fx_setup,
		    fx_teardown),
		cmocka_unit_test_setup_teardown(
		    test_process_sigterm_each_binary_exits_0, fx_setup,
		    fx_teardown),
		cmocka_unit_test(test_process_sigterm_drains_with_grace),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
