/* SPDX-License-Identifier: MIT */
/*
 * The deterministic data generator of the example services. Users get names
 * made from two word lists; answers get a question, an author and a short
 * body of words, all drawn from splitmix64 streams seeded by the row id, so a
 * row's content depends only on its id and the sizes, never on the order or
 * the machine.
 *
 * Design notes: a database is written to "<path>.tmp.<pid>" in one
 * transaction with one prepared statement and no journal, indexed after the
 * inserts, and renamed into place, so readers (and a second process starting
 * at the same time) see the whole file or none.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "services/common/svc.h"

/* clang-format off */
static const char *const first_names[] = {
	"Ada", "Alan", "Barbara", "Donald", "Edsger", "Frances", "Grace",
	"Niklaus", "John", "Margaret", "Ken", "Dennis", "Radia", "Leslie",
	"Tony", "Butler", "Robin", "Shafi", "Silvio", "Whitfield", "Martin",
	"Adele", "Karen", "Jean", "Fran", "Sophie", "Lynn", "Mary", "Hedy",
	"Anita", "Carl", "Peter", "Ivan", "Judea", "Yann", "Geoffrey",
	"Yoshua", "Andrew", "Michael", "Raj", "Manuel", "Ron", "Adi", "Len",
	"Jim", "Bjarne", "Guido", "Linus",
};
/* clang-format on */

/* clang-format off */
static const char *const last_names[] = {
	"Lovelace", "Turing", "Liskov", "Knuth", "Dijkstra", "Allen", "Hopper",
	"Wirth", "McCarthy", "Hamilton", "Thompson", "Ritchie", "Perlman",
	"Lamport", "Hoare", "Lampson", "Milner", "Goldwasser", "Micali",
	"Diffie", "Hellman", "Goldberg", "Sparck", "Sammet", "Wilson",
	"Conway", "Keller", "Lamarr", "Borg", "Kay", "Naur", "Sutherland",
	"Pearl", "LeCun", "Hinton", "Bengio", "Yao", "Rabin", "Scott", "Reddy",
	"Blum", "Rivest", "Shamir", "Adleman", "Gray", "Stroustrup", "Rossum",
	"Torvalds",
};
/* clang-format on */

/* clang-format off */
static const char *const words[] = {
	"batch", "future", "task", "scheduler", "await", "latency", "cache",
	"query", "index", "replica", "shard", "thread", "stack", "yield",
	"request", "reply", "service", "backend", "deadline", "retry", "queue",
	"flush", "lookup", "answer", "question", "user", "name", "fast",
	"slow", "simple", "because", "usually", "never", "always", "the", "a",
	"one", "many", "every", "some", "works", "fails", "scales", "waits",
	"runs", "helps", "costs", "saves",
};
/* clang-format on */

#define COUNT(a) (sizeof(a) / sizeof((a)[0]))

static uint64_t
splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15u);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9u;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebu;
	return z ^ (z >> 31);
}

void
svc_user_name(int64_t id, char *buf, size_t n)
{
	uint64_t s = (uint64_t)id * 2654435761u;
	uint64_t r = splitmix64(&s);
	snprintf(buf, n, "%s %s", first_names[r % COUNT(first_names)],
	    last_names[(r >> 32) % COUNT(last_names)]);
}

static void
cfg_defaults(const svc_data_cfg *in, svc_data_cfg *out)
{
	*out = in != NULL ? *in : (svc_data_cfg){ 0 };
	if (out->users == 0)
		out->users = SVC_DEFAULT_USERS;
	if (out->answers == 0)
		out->answers = SVC_DEFAULT_ANSWERS;
	if (out->questions == 0)
		out->questions = SVC_DEFAULT_QUESTIONS;
}

/* The rows of one table: fill binds row `id` into an insert statement. */
typedef void (*fill_fn)(sqlite3_stmt *ins, int64_t id, const svc_data_cfg *c,
    char *scratch, size_t scratch_len);

static void
fill_user(sqlite3_stmt *ins, int64_t id, const svc_data_cfg *c, char *buf,
    size_t len)
{
	(void)c;
	svc_user_name(id, buf, len);
	sqlite3_bind_int64(ins, 1, id);
	sqlite3_bind_text(ins, 2, buf, -1, SQLITE_STATIC);
}

static void
fill_answer(sqlite3_stmt *ins, int64_t id, const svc_data_cfg *c, char *buf,
    size_t len)
{
	uint64_t s = (uint64_t)id * 0x2545f4914f6cdd1du;
	int64_t question = 1 + (int64_t)(splitmix64(&s) % c->questions);
	int64_t author = 1 + (int64_t)(splitmix64(&s) % c->users);
	size_t nw = 4 + splitmix64(&s) % 6;
	size_t off = 0;
	for (size_t i = 0; i < nw && off < len; i++) {
		int k = snprintf(buf + off, len - off, "%s%s", i ? " " : "",
		    words[splitmix64(&s) % COUNT(words)]);
		if (k < 0)
			break;
		off += (size_t)k;
	}
	sqlite3_bind_int64(ins, 1, id);
	sqlite3_bind_int64(ins, 2, question);
	sqlite3_bind_int64(ins, 3, author);
	sqlite3_bind_text(ins, 4, buf, -1, SQLITE_STATIC);
}

static asynq_status
sql_error(sqlite3 *db, const char *what, const char *path)
{
	fprintf(stderr, "%s: %s: %s\n", path, what,
	    db != NULL ? sqlite3_errmsg(db) : "out of memory");
	return ASYNQ_INTERNAL;
}

/* Writes a fresh database at tmp: schema, rows 1..rows, post. */
static asynq_status
generate(const char *tmp, const char *schema, const char *insert,
    const char *post, int64_t rows, fill_fn fill, const svc_data_cfg *c)
{
	sqlite3 *db = NULL;
	sqlite3_stmt *ins = NULL;
	char scratch[256];
	asynq_status rv = ASYNQ_OK;

	if (sqlite3_open_v2(tmp, &db,
	        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE,
	        NULL) != SQLITE_OK) {
		rv = sql_error(db, "open", tmp);
		goto out;
	}
	if (sqlite3_exec(db,
	        "PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;"
	        "BEGIN;",
	        NULL, NULL, NULL) != SQLITE_OK ||
	    sqlite3_exec(db, schema, NULL, NULL, NULL) != SQLITE_OK) {
		rv = sql_error(db, "schema", tmp);
		goto out;
	}
	if (sqlite3_prepare_v2(db, insert, -1, &ins, NULL) != SQLITE_OK) {
		rv = sql_error(db, "prepare", tmp);
		goto out;
	}
	for (int64_t id = 1; id <= rows; id++) {
		fill(ins, id, c, scratch, sizeof(scratch));
		if (sqlite3_step(ins) != SQLITE_DONE) {
			rv = sql_error(db, "insert", tmp);
			goto out;
		}
		sqlite3_reset(ins);
	}
	if ((post != NULL &&
	        sqlite3_exec(db, post, NULL, NULL, NULL) != SQLITE_OK) ||
	    sqlite3_exec(db, "COMMIT;", NULL, NULL, NULL) != SQLITE_OK) {
		rv = sql_error(db, "commit", tmp);
		goto out;
	}
out:
	sqlite3_finalize(ins);
	if (sqlite3_close(db) != SQLITE_OK && rv == ASYNQ_OK)
		rv = ASYNQ_INTERNAL;
	return rv;
}

static asynq_status
ensure(const char *path, const char *schema, const char *insert,
    const char *post, int64_t rows, fill_fn fill, const svc_data_cfg *c,
    bool *created)
{
	char tmp[4096];
	asynq_status rv;

	if (created != NULL)
		*created = false;
	if (access(path, F_OK) == 0)
		return ASYNQ_OK;
	if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >=
	    (int)sizeof(tmp))
		return ASYNQ_INVALID_ARGUMENT;
	unlink(tmp);
	if ((rv = generate(tmp, schema, insert, post, rows, fill, c)) !=
	    ASYNQ_OK) {
		unlink(tmp);
		return rv;
	}
	if (rename(tmp, path) != 0) {
		fprintf(stderr, "%s: rename: %s\n", path, strerror(errno));
		unlink(tmp);
		return ASYNQ_INTERNAL;
	}
	if (created != NULL)
		*created = true;
	return ASYNQ_OK;
}

asynq_status
svc_data_users_ensure(const char *path, const svc_data_cfg *cfg, bool *created)
{
	svc_data_cfg c;
	cfg_defaults(cfg, &c);
	return ensure(path,
	    "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL);",
	    "INSERT INTO users (id, name) VALUES (?, ?);", NULL,
	    (int64_t)c.users, fill_user, &c, created);
}

asynq_status
svc_data_answers_ensure(const char *path, const svc_data_cfg *cfg,
    bool *created)
{
	svc_data_cfg c;
	cfg_defaults(cfg, &c);
	return ensure(path,
	    "CREATE TABLE answers (id INTEGER PRIMARY KEY,"
	    " question_id INTEGER NOT NULL, author_id INTEGER NOT NULL,"
	    " body TEXT NOT NULL);",
	    "INSERT INTO answers (id, question_id, author_id, body)"
	    " VALUES (?, ?, ?, ?);",
	    "CREATE INDEX answers_question ON answers (question_id, id);",
	    (int64_t)c.answers, fill_answer, &c, created);
}
