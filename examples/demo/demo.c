/* SPDX-License-Identifier: MIT */
/*
 * The demo (see demo.h): the example services under a load of concurrent
 * frontend requests, batched and unbatched, with the figures that show what
 * batching saves.
 *
 * Design notes:
 * - A "set" is the four services of one run. Every set a demo needs is
 *   started before any workload runs. With --tcp each service is a child
 *   process made by fork() that calls the service library and talks to the
 *   demo over two pipes (a start report, then counter snapshots on request;
 *   EOF on its command pipe tells it to stop). fork() must happen before
 *   the demo process uses nng, whose threads do not survive it: hence all
 *   sets first.
 * - The unbatched run caps every channel at one call per request: the
 *   demo's own channel to the frontend, and the frontend's channels to the
 *   services (frontend_cfg.max_calls), set from demo_max_calls while a set
 *   of services starts.
 * - The workload runs as `inflight` lane tasks on the calling thread's
 *   scheduler; each lane takes the next request number and calls the
 *   frontend, so the lanes' calls made before they all block go out
 *   together, as a real client's would.
 */
#include <errno.h>
#include <getopt.h>
#include <stdatomic.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "asynq/log.h"
#include "examples/demo/demo.h"
#include "services/answers/answers.h"
#include "services/cache/cache.h"
#include "services/frontend/frontend.h"
#include "services/users/users.h"

#define FRONTEND (&asynq__frontend__frontend__asynq_desc)

static const char *const svc_names[DEMO_N_SVC] = { "users", "answers", "cache",
	"frontend" };

/* ---- Settings ------------------------------------------------------------ */

typedef struct demo_cfg {
	svc_data_cfg data;
	char data_dir[512];
	bool tcp;
	size_t replicas;         /* --replicas: of users and answers */
	bool batched, unbatched; /* which runs */
	int base_port;           /* --tcp ports base_port.. (0: free ones) */
	size_t workers;          /* per service (0: one per CPU) */
	size_t names;            /* AuthorNames requests */
	size_t ids;              /* answer ids per AuthorNames */
	size_t pages;            /* QuestionPage requests */
	size_t inflight;         /* lanes */
	unsigned hot_pct;        /* --hot: answer ids from the hot set, % */
	bool quiet;              /* no examples, no per-service lines */
	bool runs_given;         /* --compare, --no-batching, --batching-only */
	bool serve;              /* --serve: load until SIGINT/SIGTERM */
	size_t rate;             /* --rate: --serve's requests/s per set */
	const char *admin;       /* --admin URL (in process) */
	bool mtls;               /* --mtls / --mtls-dir: tls+tcp, client
	                            certificates required */
	const char *mtls_dir;    /* --mtls-dir: the certificates' directory */
} demo_cfg;

/* ---- One channel cap for the whole process --------------------------------
 */

/* 0: every channel takes its service's cap; else the frontend started
 * while it is set caps its channels at demo_max_calls calls per request. */
static size_t demo_max_calls;
/* --no-collapse: the frontend sends identical calls of a batch each. */
static bool demo_no_collapse;
/* --db-on-worker: SQLite queries on the services' workers, not the
 * blocking pool. */
static bool demo_db_on_worker;

/* The settings every service's server starts with (--queue-target-us). */
static asynq_rpc_server_cfg demo_server_cfg;
/* --queue-target-us was given: the unbatched set keeps it too. */
static bool demo_queue_target_set;

/* ---- Mutual TLS (--mtls) --------------------------------------------------
 */

/* With --mtls every service listens on tls+tcp:// and requires a client
 * certificate of the demo's CA: the frontend presents its own to the
 * backends, the demo its own to the frontend. The certificates come from
 * --mtls-dir DIR (made there with openssl if ca.crt is missing) or are
 * made with openssl in a temporary directory that the demo removes. Each
 * carries the names the channels check (DNS:localhost, IP:127.0.0.1) and
 * a SPIFFE-style URI naming the service, which handlers see through
 * asynq_rpc_peer_get. Set before any set of services starts. */
static bool demo_mtls;
static char mtls_dir[512];
static bool mtls_temp; /* made by the demo, removed at the end */
static char mtls_ca[600];
static char mtls_crt[DEMO_N_SVC + 1][600], mtls_key[DEMO_N_SVC + 1][600];

/* The certificates' owners: the services, then the demo's own client. */
static const char *const mtls_names[DEMO_N_SVC + 1] = { "users", "answers",
	"cache", "frontend", "demo" };

/* Runs a shell command in mtls_dir, its output to openssl.log there. */
static int
mtls_sh(const char *cmd)
{
	char line[2048];
	snprintf(line, sizeof(line), "cd '%s' && { %s ; } >>openssl.log 2>&1",
	    mtls_dir, cmd);
	return system(line);
}

/* Makes the CA and one certificate per name in mtls_dir. */
static int
mtls_make(void)
{
	char cmd[1400];
	const char *ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 "
	                 "-nodes";
	snprintf(cmd, sizeof(cmd),
	    "openssl req -x509 %s -days 7 -keyout ca.key -out ca.crt "
	    "-subj /CN=asynq-demo-ca",
	    ec);
	if (mtls_sh(cmd) != 0)
		return -1;
	for (int k = 0; k <= DEMO_N_SVC; k++) {
		const char *n = mtls_names[k];
		snprintf(cmd, sizeof(cmd),
		    "openssl req %s -keyout %s.key -out %s.csr "
		    "-subj /CN=%s/O=asynq-demo && "
		    "printf 'subjectAltName=DNS:localhost,IP:127.0.0.1,"
		    "URI:spiffe://asynq-demo/%s\nextendedKeyUsage=serverAuth,"
		    "clientAuth\n' > %s.ext && "
		    "openssl x509 -req -in %s.csr -CA ca.crt -CAkey ca.key "
		    "-CAcreateserial -days 7 -extfile %s.ext -out %s.crt",
		    ec, n, n, n, n, n, n, n, n);
		if (mtls_sh(cmd) != 0)
			return -1;
	}
	return 0;
}

/* Sets up the certificates' paths (making them if needed); 0, or -1 after
 * saying why. */
static int
mtls_setup(const demo_cfg *cfg)
{
	if (cfg->mtls_dir != NULL) {
		snprintf(mtls_dir, sizeof(mtls_dir), "%s", cfg->mtls_dir);
		if (mkdir(mtls_dir, 0700) != 0 && errno != EEXIST) {
			fprintf(stderr, "demo: --mtls-dir %s: %s\n", mtls_dir,
			    strerror(errno));
			return -1;
		}
	} else {
		const char *tmp = getenv("TMPDIR");
		snprintf(mtls_dir, sizeof(mtls_dir),
		    "%s/asynq-demo-mtls-XXXXXX",
		    tmp != NULL && tmp[0] == '/' ? tmp : "/tmp");
		if (mkdtemp(mtls_dir) == NULL) {
			fprintf(stderr,
			    "demo: cannot make a directory for the "
			    "mTLS certificates: %s\n",
			    strerror(errno));
			return -1;
		}
		mtls_temp = true;
	}
	snprintf(mtls_ca, sizeof(mtls_ca), "%s/ca.crt", mtls_dir);
	for (int k = 0; k <= DEMO_N_SVC; k++) {
		snprintf(mtls_crt[k], sizeof(mtls_crt[k]), "%s/%s.crt",
		    mtls_dir, mtls_names[k]);
		snprintf(mtls_key[k], sizeof(mtls_key[k]), "%s/%s.key",
		    mtls_dir, mtls_names[k]);
	}
	if (access(mtls_ca, R_OK) != 0 && mtls_make() != 0) {
		fprintf(stderr,
		    "demo: openssl could not make the mTLS certificates in %s "
		    "(see openssl.log there; is openssl installed?)\n",
		    mtls_dir);
		return -1;
	}
	demo_mtls = true;
	return 0;
}

/* Removes a temporary certificate directory. */
static void
mtls_cleanup(void)
{
	if (!mtls_temp)
		return;
	char cmd[600];
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", mtls_dir);
	(void)!system(cmd);
	mtls_temp = false;
}

/* A channel's TLS settings for certificate owner k (DEMO_N_SVC: the
 * demo). */
static void
mtls_channel(asynq_rpc_channel_cfg *c, int k)
{
	if (!demo_mtls)
		return;
	c->tls_ca_file = mtls_ca;
	c->tls_server_name = "localhost";
	c->tls_cert_file = mtls_crt[k];
	c->tls_key_file = mtls_key[k];
}

/* ---- Formatting ------------------------------------------------------------
 */

/* Writes v with thousands separators into buf (at least 32 bytes). */
static const char *
commas(char *buf, uint64_t v)
{
	char tmp[32];
	int n = snprintf(tmp, sizeof(tmp), "%" PRIu64, v), o = 0;

	for (int i = 0; i < n; i++) {
		if (i != 0 && (n - i) % 3 == 0)
			buf[o++] = ',';
		buf[o++] = tmp[i];
	}
	buf[o] = '\0';
	return buf;
}

static double
secs_since(uint64_t t0)
{
	return (double)(asynq_now_ns() - t0) / 1e9;
}

/* splitmix64: request contents depend only on the request's number. */
static uint64_t
mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* ---- Data ------------------------------------------------------------------
 */

static int
mkdirs(const char *dir)
{
	char p[512];

	snprintf(p, sizeof(p), "%s", dir);
	for (char *s = p + 1; *s != '\0'; s++) {
		if (*s != '/')
			continue;
		*s = '\0';
		if (mkdir(p, 0755) != 0 && errno != EEXIST)
			return -1;
		*s = '/';
	}
	return mkdir(p, 0755) != 0 && errno != EEXIST ? -1 : 0;
}

static int
data_ensure(const demo_cfg *cfg, char *users_db, char *answers_db, size_t n)
{
	char a[32], b[32], c[32];
	bool created;
	uint64_t t0;

	if (mkdirs(cfg->data_dir) != 0) {
		fprintf(stderr, "demo: cannot make the data directory %s: %s\n",
		    cfg->data_dir, strerror(errno));
		return -1;
	}
	snprintf(users_db, n, "%s/users-%zu.db", cfg->data_dir,
	    cfg->data.users);
	snprintf(answers_db, n, "%s/answers-%zu-%zu-%zu.db", cfg->data_dir,
	    cfg->data.answers, cfg->data.questions, cfg->data.users);
	printf("data: %s users, %s answers over %s questions in %s\n",
	    commas(a, cfg->data.users), commas(b, cfg->data.answers),
	    commas(c, cfg->data.questions), cfg->data_dir);
	fflush(stdout);

	t0 = asynq_now_ns();
	if (svc_data_users_ensure(users_db, &cfg->data, &created) != ASYNQ_OK) {
		fprintf(stderr, "demo: cannot make %s\n", users_db);
		return -1;
	}
	printf("  %s: %s\n", users_db, created ? "generated" : "found");
	if (created)
		printf("    in %.1f s\n", secs_since(t0));
	fflush(stdout);

	t0 = asynq_now_ns();
	if (svc_data_answers_ensure(answers_db, &cfg->data, &created) !=
	    ASYNQ_OK) {
		fprintf(stderr, "demo: cannot make %s\n", answers_db);
		return -1;
	}
	printf("  %s: %s\n", answers_db, created ? "generated" : "found");
	if (created)
		printf("    in %.1f s\n", secs_since(t0));
	fflush(stdout);
	return 0;
}

/* ---- One service, in process ------------------------------------------------
 */

/* A started service: its object and its runtime, or (with --tcp) the child
 * process that runs them. */
typedef struct svc {
	int kind;
	char url[96];
	char label[64]; /* "batched users": its name on the admin page */
	svc_hooks hooks;
	asynq_runtime *rt;
	void *obj;
	pid_t pid;    /* child, with --tcp; 0 otherwise */
	bool failed;  /* did not start: its exit status says nothing new */
	int cmd, rep; /* pipes to and from the child */
} svc;

/* A counter snapshot as a child sends it. */
typedef struct svc_snap {
	svc_counters c;
	cache_stats cs;
} svc_snap;

static asynq_status svc_local_start_as(svc *s,
    const char *const urls[DEMO_N_SVC], const char *users_db,
    const char *answers_db, size_t workers);

/* Starts service s->kind at s->url on a new runtime in this process;
 * urls[] are the set's addresses (the frontend dials the others). */
static asynq_status
svc_local_start(svc *s, const char *const urls[DEMO_N_SVC],
    const char *users_db, const char *answers_db, size_t workers)
{
	asynq_status rv;

	/* What this service registers on the admin endpoint, if one is
	 * open, is reported under its label. */
	svc_admin_as(s->label);
	rv = svc_local_start_as(s, urls, users_db, answers_db, workers);
	svc_admin_as(NULL);
	return rv;
}

static asynq_status
svc_local_start_as(svc *s, const char *const urls[DEMO_N_SVC],
    const char *users_db, const char *answers_db, size_t workers)
{
	asynq_status rv;

	switch (s->kind) {
	case DEMO_USERS:
		if ((rv = users_service_alloc((users_service **)&s->obj,
		         users_db)) != ASYNQ_OK)
			return rv;
		users_service_db(s->obj)->on_worker = demo_db_on_worker;
		(void)svc_hooks_add(&s->hooks, users_service_hook(s->obj));
		break;
	case DEMO_ANSWERS:
		if ((rv = answers_service_alloc((answers_service **)&s->obj,
		         answers_db)) != ASYNQ_OK)
			return rv;
		answers_service_db(s->obj)->on_worker = demo_db_on_worker;
		(void)svc_hooks_add(&s->hooks, answers_service_hook(s->obj));
		break;
	case DEMO_CACHE:
		if ((rv = cache_service_alloc((cache_service **)&s->obj, 0)) !=
		    ASYNQ_OK)
			return rv;
		break;
	default:
		frontend_cfg fc = { .users_url = urls[DEMO_USERS],
			.answers_url = urls[DEMO_ANSWERS],
			.cache_url = urls[DEMO_CACHE],
			.max_calls = demo_max_calls,
			.no_collapse = demo_no_collapse };
		if (demo_mtls) {
			fc.tls_ca_file = mtls_ca;
			fc.tls_server_name = "localhost";
			fc.tls_cert_file = mtls_crt[DEMO_FRONTEND];
			fc.tls_key_file = mtls_key[DEMO_FRONTEND];
		}
		if ((rv = frontend_service_alloc_cfg(
		         (frontend_service **)&s->obj, &fc)) != ASYNQ_OK)
			return rv;
		break;
	}
	if ((rv = svc_runtime_alloc(&s->rt, workers, &s->hooks)) != ASYNQ_OK)
		return rv;
	/* The unbatched set is the cost of not batching: a request per call
	 * queues on a busy machine by design, and admission control would
	 * refuse some of it and spoil the comparison. It runs without, unless
	 * the flag asked otherwise. */
	asynq_rpc_server_cfg scfg = demo_server_cfg;
	if (demo_max_calls == 1 && !demo_queue_target_set)
		scfg.queue_target_us = UINT32_MAX;
	if (demo_mtls) {
		scfg.tls_cert_file = mtls_crt[s->kind];
		scfg.tls_key_file = mtls_key[s->kind];
		scfg.tls_client_ca_file = mtls_ca;
		scfg.tls_require_client_cert = true;
	}
	switch (s->kind) {
	case DEMO_USERS:
		return users_service_start(s->obj, s->rt, s->url, &scfg);
	case DEMO_ANSWERS:
		return answers_service_start(s->obj, s->rt, s->url, &scfg);
	case DEMO_CACHE:
		return cache_service_start(s->obj, s->rt, s->url, &scfg);
	default:
		return frontend_service_start(s->obj, s->rt, s->url, &scfg);
	}
}

/* Closes the service, stops its runtime and frees both (any part may be
 * missing). */
static void
svc_local_stop(svc *s)
{
	switch (s->kind) {
	case DEMO_USERS:
		users_service_close(s->obj);
		asynq_runtime_free(s->rt);
		users_service_free(s->obj);
		break;
	case DEMO_ANSWERS:
		answers_service_close(s->obj);
		asynq_runtime_free(s->rt);
		answers_service_free(s->obj);
		break;
	case DEMO_CACHE:
		cache_service_close(s->obj);
		asynq_runtime_free(s->rt);
		cache_service_free(s->obj);
		break;
	default:
		frontend_service_close(s->obj);
		asynq_runtime_free(s->rt);
		frontend_service_free(s->obj);
		break;
	}
	s->obj = NULL;
	s->rt = NULL;
}

static void
svc_local_snap(svc *s, svc_snap *out)
{
	memset(out, 0, sizeof(*out));
	switch (s->kind) {
	case DEMO_USERS:
		users_service_counters(s->obj, &out->c);
		break;
	case DEMO_ANSWERS:
		answers_service_counters(s->obj, &out->c);
		break;
	case DEMO_CACHE:
		cache_service_counters(s->obj, &out->c);
		cache_service_stats_get(s->obj, &out->cs);
		break;
	default:
		frontend_service_counters(s->obj, &out->c);
		break;
	}
}

/* ---- One service, in a child process ------------------------------------- */

/* What a child reports once it has started, or failed to. */
typedef struct svc_hello {
	asynq_status status;
} svc_hello;

static int
write_all(int fd, const void *p, size_t n)
{
	const char *c = p;

	while (n != 0) {
		ssize_t w = write(fd, c, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		c += w;
		n -= (size_t)w;
	}
	return 0;
}

static int
read_all(int fd, void *p, size_t n)
{
	char *c = p;

	while (n != 0) {
		ssize_t r = read(fd, c, n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		c += r;
		n -= (size_t)r;
	}
	return 0;
}

/* The child's life: start, report, answer snapshot requests until the
 * command pipe closes, stop. Never returns. */
static void
svc_child(svc *s, const char *const urls[DEMO_N_SVC], const char *users_db,
    const char *answers_db, size_t workers)
{
	svc_hello h = { .status = ASYNQ_OK };
	char c;

	/* Each service process has an admin endpoint of its own, on a free
	 * port, and prints where ("batched users: admin endpoint on ..."). */
	(void)svc_admin_open("http://127.0.0.1:0", s->label);
	h.status = svc_local_start(s, urls, users_db, answers_db, workers);
	(void)write_all(s->rep, &h, sizeof(h));
	while (h.status == ASYNQ_OK && read_all(s->cmd, &c, 1) == 0) {
		svc_snap snap;
		svc_local_snap(s, &snap);
		if (write_all(s->rep, &snap, sizeof(snap)) != 0)
			break;
	}
	svc_admin_close();
	svc_local_stop(s);
	close(s->cmd);
	close(s->rep);
	exit(h.status == ASYNQ_OK ? 0 : 1);
}

/* The demo's ends of the pipes to the children forked so far: a new child
 * closes them, or a sibling would never see its command pipe close. */
static int parent_fds[4 * (DEMO_N_SVC + 2 * DEMO_MAX_REPLICAS)];
static size_t n_parent_fds;

/* Forks the child that runs s; the parent keeps one end of each pipe. */
static int
svc_fork(svc *s, const char *const urls[DEMO_N_SVC], const char *users_db,
    const char *answers_db, size_t workers)
{
	int cmd[2], rep[2];

	if (pipe(cmd) != 0)
		return -1;
	if (pipe(rep) != 0) {
		close(cmd[0]);
		close(cmd[1]);
		return -1;
	}
	fflush(NULL);
	if ((s->pid = fork()) < 0) {
		close(cmd[0]);
		close(cmd[1]);
		close(rep[0]);
		close(rep[1]);
		return -1;
	}
	if (s->pid == 0) {
		close(cmd[1]);
		close(rep[0]);
		for (size_t i = 0; i < n_parent_fds; i++)
			close(parent_fds[i]);
		s->cmd = cmd[0];
		s->rep = rep[1];
		svc_child(s, urls, users_db, answers_db, workers);
	}
	close(cmd[0]);
	close(rep[1]);
	s->cmd = cmd[1];
	s->rep = rep[0];
	parent_fds[n_parent_fds++] = s->cmd;
	parent_fds[n_parent_fds++] = s->rep;
	return 0;
}

/* ---- A set of four services ------------------------------------------------
 */

typedef struct svc_set {
	const char *label; /* "batched" or "unbatched" */
	size_t max_calls;  /* channel cap: 0 (the services') or 1 */
	svc s[DEMO_N_SVC];
	const char *urls[DEMO_N_SVC];
	bool started[DEMO_N_SVC];
	/* --replicas: users (0) and answers (1) replicas after s[], their
	 * URL lists for the frontend ("tcp://...,tcp://..."), and the calls
	 * each had served at the last snapshot (replica 0 is s[]). */
	svc extra[2][DEMO_MAX_REPLICAS - 1];
	bool extra_started[2][DEMO_MAX_REPLICAS - 1];
	char lists[2][DEMO_MAX_REPLICAS * 40];
	uint64_t rep_calls[2][DEMO_MAX_REPLICAS];
} svc_set;

/* The replicated services: users and answers. */
static int
rep_kind(int j)
{
	return j == 0 ? DEMO_USERS : DEMO_ANSWERS;
}

/* A TCP port on 127.0.0.1 that nobody listens on right now. */
static int
free_port(void)
{
	/* Below Linux's ephemeral range (32768-60999): a port the kernel
	 * hands out for port 0 is also what it gives outgoing connections
	 * as their source port, so one could take it before the service
	 * binds it (seen as "address in use" with tests running beside). */
	static unsigned seed;
	if (seed == 0)
		seed = (unsigned)getpid() ^ (unsigned)time(NULL);
	for (int i = 0; i < 200; i++) {
		int port = 20000 + (int)(rand_r(&seed) % 12000);
		struct sockaddr_in a = { .sin_family = AF_INET };
		a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		a.sin_port = htons((uint16_t)port);
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		bool ok =
		    fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
		if (fd >= 0)
			close(fd);
		if (ok)
			return port;
	}
	errno = EADDRINUSE;
	return -1;
}

static int
set_addresses(svc_set *set, const demo_cfg *cfg, int idx)
{
	for (int k = 0; k < DEMO_N_SVC; k++) {
		svc *s = &set->s[k];
		s->kind = k;
		snprintf(s->label, sizeof(s->label), "%s %s", set->label,
		    svc_names[k]);
		if (cfg->tcp) {
			int port = cfg->base_port != 0
			    ? cfg->base_port + idx * DEMO_N_SVC + k
			    : free_port();
			if (port <= 0) {
				fprintf(stderr,
				    "demo: no free TCP port for %s: %s\n",
				    svc_names[k], strerror(errno));
				return -1;
			}
			snprintf(s->url, sizeof(s->url), "%s://127.0.0.1:%d",
			    demo_mtls ? "tls+tcp" : "tcp", port);
		} else {
			snprintf(s->url, sizeof(s->url),
			    "inproc://asynq-demo-%s-%s", set->label,
			    svc_names[k]);
		}
		set->urls[k] = s->url;
	}
	/* Replicas after the first: on free ports; the frontend gets the
	 * list. */
	for (int j = 0; j < 2 && cfg->replicas > 1; j++) {
		int k = rep_kind(j);
		/* memcpy: gcc -O1 sees set->s and set->lists as one object
		 * and calls a snprintf of one into the other overlapping. */
		_Static_assert(sizeof(set->lists[j]) > sizeof(set->s[k].url),
		    "a replica list holds the first URL");
		memcpy(set->lists[j], set->s[k].url, sizeof(set->s[k].url));
		for (size_t r = 1; r < cfg->replicas; r++) {
			svc *s = &set->extra[j][r - 1];
			int port = free_port();
			if (port <= 0) {
				fprintf(stderr,
				    "demo: no free TCP port for %s: %s\n",
				    svc_names[k], strerror(errno));
				return -1;
			}
			s->kind = k;
			snprintf(s->label, sizeof(s->label), "%s %s %zu",
			    set->label, svc_names[k], r + 1);
			snprintf(s->url, sizeof(s->url), "tcp://127.0.0.1:%d",
			    port);
			size_t len = strlen(set->lists[j]);
			snprintf(set->lists[j] + len,
			    sizeof(set->lists[j]) - len, ",%s", s->url);
		}
		set->urls[k] = set->lists[j];
	}
	return 0;
}

/* Forks replica r (1..) of users (j 0) or answers (j 1) and waits for
 * its start report. */
static asynq_status
extra_start(svc_set *set, const demo_cfg *cfg, int j, size_t r,
    const char *users_db, const char *answers_db)
{
	svc *s = &set->extra[j][r - 1];
	svc_hello h = { .status = ASYNQ_INTERNAL };
	if (svc_fork(s, set->urls, users_db, answers_db, cfg->workers) != 0)
		return ASYNQ_INTERNAL;
	set->extra_started[j][r - 1] = true;
	if (read_all(s->rep, &h, sizeof(h)) != 0)
		h.status = ASYNQ_INTERNAL;
	if (h.status != ASYNQ_OK) {
		s->failed = true;
		fprintf(stderr,
		    "demo: replica %zu of %s failed to start on %s: %s\n",
		    r + 1, svc_names[rep_kind(j)], s->url,
		    asynq_strerror(h.status));
	}
	return h.status;
}

/* Ends a child started by svc_fork; false if it ended badly. */
static bool svc_reap(svc *s);

static bool set_stop(svc_set *set, const demo_cfg *cfg);

/* Starts the set's services, backends first; on a failure says which
 * service and address, stops what started and returns -1. */
static int
set_start(svc_set *set, const demo_cfg *cfg, const char *users_db,
    const char *answers_db)
{
	demo_max_calls = set->max_calls;
	for (int k = 0; k < DEMO_N_SVC; k++) {
		svc *s = &set->s[k];
		svc_hello h = { .status = ASYNQ_INTERNAL };

		if (cfg->tcp) {
			if (svc_fork(s, set->urls, users_db, answers_db,
			        cfg->workers) != 0) {
				fprintf(stderr,
				    "demo: cannot start the %s service"
				    " process: %s\n",
				    svc_names[k], strerror(errno));
				goto fail;
			}
			set->started[k] = true;
			if (read_all(s->rep, &h, sizeof(h)) != 0)
				h.status = ASYNQ_INTERNAL;
		} else {
			h.status = svc_local_start(s, set->urls, users_db,
			    answers_db, cfg->workers);
			set->started[k] = true;
		}
		if (h.status != ASYNQ_OK) {
			s->failed = true;
			fprintf(stderr,
			    "demo: the %s service failed to start on %s: %s%s\n",
			    svc_names[k], s->url, asynq_strerror(h.status),
			    h.status == ASYNQ_UNAVAILABLE
			        ? " (is the address in use?)"
			        : "");
			goto fail;
		}
		for (int j = 0; j < 2; j++)
			for (size_t r = 1;
			     rep_kind(j) == k && r < cfg->replicas; r++)
				if (extra_start(set, cfg, j, r, users_db,
				        answers_db) != ASYNQ_OK)
					goto fail;
	}
	demo_max_calls = 0;
	return 0;
fail:
	demo_max_calls = 0;
	(void)set_stop(set, cfg);
	return -1;
}

/* Stops the set's services, frontend first; false if a service process
 * ended badly. */
static bool
set_stop(svc_set *set, const demo_cfg *cfg)
{
	bool ok = true;

	for (int k = DEMO_N_SVC - 1; k >= 0; k--) {
		svc *s = &set->s[k];
		if (!set->started[k])
			continue;
		set->started[k] = false;
		if (!cfg->tcp) {
			svc_local_stop(s);
			continue;
		}
		for (int j = 0; j < 2; j++) {
			for (size_t r = 1; r < DEMO_MAX_REPLICAS; r++) {
				if (rep_kind(j) != k ||
				    !set->extra_started[j][r - 1])
					continue;
				set->extra_started[j][r - 1] = false;
				ok = svc_reap(&set->extra[j][r - 1]) && ok;
			}
		}
		ok = svc_reap(s) && ok;
	}
	return ok;
}

static bool
svc_reap(svc *s)
{
	int st = 0;
	close(s->cmd);
	close(s->rep);
	while (waitpid(s->pid, &st, 0) < 0 && errno == EINTR)
		;
	if (!s->failed && (!WIFEXITED(st) || WEXITSTATUS(st) != 0)) {
		fprintf(stderr,
		    "demo: the %s service process (%s) ended with %s %d\n",
		    svc_names[s->kind], s->url,
		    WIFEXITED(st) ? "status" : "signal",
		    WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st));
		return false;
	}
	return true;
}

/* Asks a child for its counters. */
static int
child_snap(svc *s, svc_snap *out)
{
	char c = 'c';
	if (write_all(s->cmd, &c, 1) != 0 ||
	    read_all(s->rep, out, sizeof(*out)) != 0) {
		fprintf(stderr,
		    "demo: the %s service process (pid %d, %s) is gone\n",
		    svc_names[s->kind], (int)s->pid, s->url);
		return -1;
	}
	return 0;
}

/* Reads every service's counters. */
static int
set_snap(svc_set *set, const demo_cfg *cfg, svc_snap out[DEMO_N_SVC])
{
	for (int k = 0; k < DEMO_N_SVC; k++) {
		svc *s = &set->s[k];
		if (!cfg->tcp) {
			svc_local_snap(s, &out[k]);
			continue;
		}
		if (child_snap(s, &out[k]) != 0)
			return -1;
	}
	/* Replicas: each one's calls, and their sums as the service's. */
	for (int j = 0; j < 2 && cfg->replicas > 1; j++) {
		int k = rep_kind(j);
		set->rep_calls[j][0] = out[k].c.calls;
		for (size_t r = 1; r < cfg->replicas; r++) {
			svc_snap e;
			if (child_snap(&set->extra[j][r - 1], &e) != 0)
				return -1;
			set->rep_calls[j][r] = e.c.calls;
			out[k].c.calls += e.c.calls;
			out[k].c.requests += e.c.requests;
			out[k].c.sql += e.c.sql;
		}
	}
	return 0;
}

/* ---- The workload ----------------------------------------------------------
 */

typedef struct workload {
	const demo_cfg *cfg;
	asynq_rpc_channel *ch;
	size_t total, next;  /* requests, and the next to make */
	uint64_t *lat;       /* ns per request, by request number */
	size_t ok, failures; /* requests that succeeded, failed */
	uint64_t page_items; /* answers over every page returned */
	uint64_t wrong;      /* names that do not match the data */
	bool printed_error;
	bool examples;             /* print a few replies */
	char examples_buf[8][160]; /* lines to print after the run */
	size_t n_examples;
} workload;

/* Request r is a QuestionPage when it is one of `pages` spread evenly. */
static bool
is_page(const workload *w, size_t r)
{
	size_t p = w->cfg->pages;
	return p != 0 && (r * p) / w->total != ((r + 1) * p) / w->total;
}

/* Answers everyone reads (--hot): the first DEMO_HOT_ANSWERS ids. */
#define DEMO_HOT_ANSWERS 100

static int64_t
answer_id(const workload *w, size_t r, size_t i)
{
	uint64_t u = mix(r * w->cfg->ids + i);
	if (w->cfg->hot_pct != 0 && mix(~u) % 100 < w->cfg->hot_pct)
		return 1 + (int64_t)(u % DEMO_HOT_ANSWERS);
	return 1 + (int64_t)(u % (uint64_t)w->cfg->data.answers);
}

static void
note_failure(workload *w, asynq_future *f, const char *what)
{
	w->failures++;
	if (w->printed_error)
		return;
	w->printed_error = true;
	fprintf(stderr, "demo: a %s request failed:\n", what);
	asynq_error_print(asynq_future_error(f), stderr);
}

static void
author_names(workload *w, asynq_task *t, size_t r)
{
	int64_t ids[256];
	size_t n = w->cfg->ids;
	Asynq__Frontend__AnswerIds req = ASYNQ__FRONTEND__ANSWER_IDS__INIT;

	for (size_t i = 0; i < n; i++)
		ids[i] = answer_id(w, r, i);
	req.n_ids = n;
	req.ids = ids;
	uint64_t t0 = asynq_now_ns();
	asynq_future *f =
	    asynq__frontend__frontend__author_names__call(w->ch, &req);
	if (asynq_await(t, f) != ASYNQ_OK) {
		note_failure(w, f, "AuthorNames");
		goto out;
	}
	w->lat[r] = asynq_now_ns() - t0;
	const Asynq__Frontend__Names *names =
	    asynq__frontend__frontend__author_names__reply(f);
	if (names->n_names != n) {
		w->wrong++;
		goto out;
	}
	w->ok++;
	for (size_t i = 0; w->examples && i < n && w->n_examples < 3; i++)
		snprintf(w->examples_buf[w->n_examples++],
		    sizeof(w->examples_buf[0]),
		    "answer %" PRId64 " was written by %s", ids[i],
		    names->names[i]);
out:
	asynq_future_rele(f);
}

static void
question_page(workload *w, asynq_task *t, size_t r)
{
	Asynq__Frontend__QuestionId req = ASYNQ__FRONTEND__QUESTION_ID__INIT;
	char name[128];

	req.id = 1 + (int64_t)(mix(~(uint64_t)r) % w->cfg->data.questions);
	uint64_t t0 = asynq_now_ns();
	asynq_future *f =
	    asynq__frontend__frontend__question_page__call(w->ch, &req);
	if (asynq_await(t, f) != ASYNQ_OK) {
		note_failure(w, f, "QuestionPage");
		goto out;
	}
	w->lat[r] = asynq_now_ns() - t0;
	const Asynq__Frontend__Page *p =
	    asynq__frontend__frontend__question_page__reply(f);
	w->ok++;
	w->page_items += p->n_items;
	/* The page carries author ids, so its names can be checked. */
	for (size_t i = 0; i < p->n_items; i++) {
		svc_user_name(p->items[i]->author_id, name, sizeof(name));
		if (strcmp(name, p->items[i]->author_name) != 0)
			w->wrong++;
	}
	if (w->examples && w->n_examples < 5 && p->n_items != 0)
		snprintf(w->examples_buf[w->n_examples++],
		    sizeof(w->examples_buf[0]),
		    "question %" PRId64 " has %zu answer%s; answer %" PRId64
		    " by %s: \"%.60s\"",
		    p->question_id, p->n_items, p->n_items == 1 ? "" : "s",
		    p->items[0]->answer_id, p->items[0]->author_name,
		    p->items[0]->body);
out:
	asynq_future_rele(f);
}

static asynq_status
lane(asynq_task *t, void *arg)
{
	workload *w = arg;

	while (w->next < w->total) {
		size_t r = w->next++;
		if (is_page(w, r))
			question_page(w, t, r);
		else
			author_names(w, t, r);
	}
	return ASYNQ_OK;
}

static int
cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Runs the workload from the calling thread against set's frontend and
 * fills run; prints examples when asked. 0 when every request succeeded. */
static int
workload_run(svc_set *set, const demo_cfg *cfg, bool examples, demo_run *run)
{
	workload w = {
		.cfg = cfg,
		.total = cfg->names + cfg->pages,
		.examples = examples,
	};
	const char *urls[] = { set->urls[DEMO_FRONTEND] };
	asynq_rpc_channel_cfg ccfg = { .urls = urls, .n_urls = 1 };
	mtls_channel(&ccfg, DEMO_N_SVC);
	asynq_future **lanes = calloc(cfg->inflight, sizeof(*lanes));
	asynq_rpc_channel_stats cs;
	svc_snap before[DEMO_N_SVC], after[DEMO_N_SVC];
	int rc = -1;

	w.lat = calloc(w.total != 0 ? w.total : 1, sizeof(*w.lat));
	if (lanes == NULL || w.lat == NULL) {
		fprintf(stderr, "demo: out of memory\n");
		goto out;
	}
	ccfg.max_calls = set->max_calls;
	asynq_status rv = asynq_rpc_channel_alloc(&w.ch, FRONTEND, &ccfg);
	if (rv != ASYNQ_OK) {
		fprintf(stderr, "demo: cannot open a channel to %s: %s\n",
		    urls[0], asynq_strerror(rv));
		goto out;
	}
	/* One request first, so connections are up before the clock
	 * starts; the counters are read after it. */
	{
		workload warm = w;
		warm.total = 1;
		warm.examples = false;
		asynq_future *f = asynq_spawn(lane, &warm);
		(void)asynq_wait(f);
		asynq_future_rele(f);
		if (warm.failures != 0) {
			fprintf(stderr, "demo: the %s services do not answer\n",
			    set->label);
			goto out;
		}
	}
	asynq_rpc_channel_stats cs0;
	asynq_rpc_channel_stats_get(w.ch, &cs0);
	if (set_snap(set, cfg, before) != 0)
		goto out;
	uint64_t rep0[2][DEMO_MAX_REPLICAS];
	memcpy(rep0, set->rep_calls, sizeof(rep0));

	uint64_t t0 = asynq_now_ns();
	for (size_t i = 0; i < cfg->inflight; i++)
		lanes[i] = asynq_spawn(lane, &w);
	(void)asynq_wait_all(lanes, cfg->inflight);
	run->elapsed_s = secs_since(t0);
	asynq_future_rele_n(lanes, cfg->inflight);

	if (set_snap(set, cfg, after) != 0)
		goto out;
	run->replicas = cfg->replicas > 1 ? cfg->replicas : 0;
	for (int j = 0; j < 2; j++)
		for (size_t r = 0; r < run->replicas; r++)
			run->replica_calls[j][r] =
			    set->rep_calls[j][r] - rep0[j][r];
	asynq_rpc_channel_stats_get(w.ch, &cs);
	run->ran = true;
	run->requests = w.ok;
	run->rps = run->elapsed_s > 0 ? (double)w.ok / run->elapsed_s : 0;
	run->client_calls = cs.calls - cs0.calls;
	run->client_requests = cs.requests - cs0.requests;
	for (int k = 0; k < DEMO_N_SVC; k++) {
		svc_counters *d = &run->svc[k];
		d->calls = after[k].c.calls - before[k].c.calls;
		d->requests = after[k].c.requests - before[k].c.requests;
		d->sql = after[k].c.sql - before[k].c.sql;
		d->out_calls = after[k].c.out_calls - before[k].c.out_calls;
		d->out_sent = after[k].c.out_sent - before[k].c.out_sent;
		d->out_requests =
		    after[k].c.out_requests - before[k].c.out_requests;
	}
	if (w.ok != 0) {
		qsort(w.lat, w.total, sizeof(*w.lat), cmp_u64);
		/* Failed requests left 0 at the front: skip them. */
		uint64_t *l = w.lat + (w.total - w.ok);
		run->p50_ms = (double)l[(w.ok - 1) / 2] / 1e6;
		run->p99_ms = (double)l[(w.ok * 99 + 99) / 100 - 1] / 1e6;
	}
	for (size_t i = 0; i < w.n_examples; i++)
		printf("  %s\n", w.examples_buf[i]);

	/* The counters must add up. */
	const svc_counters *u = &run->svc[DEMO_USERS],
	                   *a = &run->svc[DEMO_ANSWERS],
	                   *c = &run->svc[DEMO_CACHE],
	                   *f = &run->svc[DEMO_FRONTEND];
	uint64_t misses =
	    after[DEMO_CACHE].cs.misses - before[DEMO_CACHE].cs.misses;
	uint64_t want_answers =
	    (uint64_t)cfg->names * cfg->ids + w.page_items + cfg->pages;
	/* Identical calls of a batch go once: answers may serve fewer
	 * lookups than were asked for, never more. Unbatched (one call per
	 * request) nothing collapses. */
	bool collapses = set->max_calls != 1 && !demo_no_collapse;
	uint64_t got_answers =
	    collapses && a->calls <= want_answers ? want_answers : a->calls;
	/* Likewise two misses of one user in two batches may meet in one
	 * GetUser batch. */
	uint64_t got_users =
	    collapses && u->calls <= misses ? misses : u->calls;
	struct {
		const char *what;
		uint64_t got, want;
	} checks[] = {
		{ "frontend requests that succeeded", w.ok, w.total },
		{ "names that match the data (wrong ones)", w.wrong, 0 },
		{ "frontend calls served vs demo's calls", f->calls,
		    run->client_calls },
		{ "frontend requests received vs demo's requests", f->requests,
		    run->client_requests },
		{ "answers lookups served vs expected", got_answers,
		    want_answers },
		{ "frontend's calls sent vs calls served", f->out_sent,
		    u->calls + a->calls + c->calls },
		{ "frontend's calls sent vs made (nothing collapses)",
		    collapses ? f->out_calls : f->out_sent, f->out_calls },
		{ "frontend's outgoing requests vs requests received",
		    f->out_requests, u->requests + a->requests + c->requests },
		{ "users lookups vs cache misses", got_users, misses },
	};
	rc = 0;
	for (size_t i = 0; i < sizeof(checks) / sizeof(checks[0]); i++) {
		if (checks[i].got == checks[i].want)
			continue;
		fprintf(stderr,
		    "demo: %s run: %s: %" PRIu64 ", expected %" PRIu64 "\n",
		    set->label, checks[i].what, checks[i].got, checks[i].want);
		rc = -1;
	}
	if (set->max_calls == 1 && f->out_requests != f->out_calls) {
		fprintf(stderr,
		    "demo: unbatched run: %" PRIu64
		    " calls went out in %" PRIu64
		    " requests, expected one request per call\n",
		    f->out_calls, f->out_requests);
		rc = -1;
	}
	if (set->max_calls != 1) {
		for (int k = 0; k < DEMO_N_SVC; k++) {
			const svc_counters *s = &run->svc[k];
			if (s->calls <= 1 || s->requests < s->calls)
				continue;
			fprintf(stderr,
			    "demo: batched run: %s got %" PRIu64
			    " calls in %" PRIu64 " requests: no batching\n",
			    svc_names[k], s->calls, s->requests);
			rc = -1;
		}
	}
out:
	if (w.ch != NULL) {
		asynq_rpc_channel_free(w.ch);
	}
	free(w.lat);
	free(lanes);
	return rc;
}

/* ---- Report
 * ------------------------------------------------------------------ */

static void
print_services(const demo_run *r)
{
	char a[32], b[32], c[32];
	const svc_counters *s = r->svc;

	printf("  client:   %s requests -> %s RPC requests\n",
	    commas(a, r->client_calls), commas(b, r->client_requests));
	char d[32];
	const svc_counters *fe = &s[DEMO_FRONTEND];
	printf("  frontend: %s requests -> %s calls to the services, %s sent"
	       " (%.2f per call; identical calls of a batch go once) in %s"
	       " requests\n",
	    commas(a, fe->calls), commas(b, fe->out_calls),
	    commas(d, fe->out_sent),
	    fe->out_calls != 0 ? (double)fe->out_sent / (double)fe->out_calls
	                       : 0.0,
	    commas(c, fe->out_requests));
	printf("  answers:  %s lookups -> %s requests -> %s SQL queries (one "
	       "per method per request)\n",
	    commas(a, s[DEMO_ANSWERS].calls),
	    commas(b, s[DEMO_ANSWERS].requests),
	    commas(c, s[DEMO_ANSWERS].sql));
	printf("  cache:    %s gets and sets -> %s requests\n",
	    commas(a, s[DEMO_CACHE].calls), commas(b, s[DEMO_CACHE].requests));
	printf("  users:    %s lookups -> %s requests -> %s SQL queries\n",
	    commas(a, s[DEMO_USERS].calls), commas(b, s[DEMO_USERS].requests),
	    commas(c, s[DEMO_USERS].sql));
	for (int j = 0; j < 2 && r->replicas > 1; j++) {
		int k = j == 0 ? DEMO_USERS : DEMO_ANSWERS;
		printf("  %s per replica:", svc_names[k]);
		for (size_t i = 0; i < r->replicas; i++)
			printf("%s %s (%.0f%%)", i != 0 ? "," : "",
			    commas(a, r->replica_calls[j][i]),
			    s[k].calls != 0
			        ? 100.0 * (double)r->replica_calls[j][i] /
			            (double)s[k].calls
			        : 0.0);
		printf(" calls\n");
	}
}

static void
print_run(const char *label, const demo_run *r)
{
	char a[32], b[32];

	printf("%s: %s requests in %.2f s: %s requests/s, latency p50 %.2f "
	       "ms, p99 %.2f ms\n",
	    label, commas(a, r->requests), r->elapsed_s,
	    commas(b, (uint64_t)(r->rps + 0.5)), r->p50_ms, r->p99_ms);
}

/* ---- --serve: a steady load until SIGINT or SIGTERM ---------------------- */

/* The signal that ends --serve (0 until one came). Set by the handler,
 * on whichever thread the signal lands; read by the lanes. */
static atomic_int demo_stop_signal;

static void
on_stop_signal(int sig)
{
	atomic_store(&demo_stop_signal, sig);
}

/* One set's share of the --serve load: its own channel and workload,
 * paced to cfg->rate requests/s (0: as fast as the lanes go). */
typedef struct serve_load {
	workload w;
	uint64_t gap_ns;  /* between requests; 0: no pacing */
	uint64_t next_ns; /* when the next request may start */
	size_t made;      /* requests started */
} serve_load;

/* Sleeps the task for ns, at most, and less when the load is told to
 * stop meanwhile. */
static void
nap(asynq_task *t, uint64_t ns)
{
	asynq_future *f = asynq_sleep(ns);
	(void)asynq_await(t, f);
	asynq_future_rele(f);
}

static asynq_status
serve_lane(asynq_task *t, void *arg)
{
	serve_load *sl = arg;
	workload *w = &sl->w;

	while (atomic_load(&demo_stop_signal) == 0) {
		if (sl->gap_ns != 0) {
			/* Paced: a slot each gap_ns; a lane that fell
			 * behind takes the next one without bursting. */
			uint64_t now = asynq_now_ns();
			uint64_t at = sl->next_ns > now ? sl->next_ns : now;
			sl->next_ns = at + sl->gap_ns;
			if (at > now) {
				nap(t, at - now);
				if (atomic_load(&demo_stop_signal) != 0)
					break;
			}
		}
		/* Request numbers cycle over the workload's, so the load is
		 * the same mix as the measured runs'. */
		size_t r = sl->made++ % w->total;
		if (is_page(w, r))
			question_page(w, t, r);
		else
			author_names(w, t, r);
	}
	return ASYNQ_OK;
}

/* Prints the load's progress every 10 s until it is told to stop. */
static asynq_status
serve_report(asynq_task *t, void *arg)
{
	serve_load *loads = arg;
	uint64_t t0 = asynq_now_ns(), last = t0;
	size_t ok_last = 0;

	while (atomic_load(&demo_stop_signal) == 0) {
		nap(t, 200000000);
		uint64_t now = asynq_now_ns();
		if (now - last < 10000000000ull)
			continue;
		size_t ok = 0, failed = 0;
		for (int i = 0; i < 2; i++) {
			ok += loads[i].w.ok;
			failed += loads[i].w.failures;
		}
		printf("serving: %zu requests in %.0f s (%.0f/s lately), %zu "
		       "failed\n",
		    ok, (double)(now - t0) / 1e9,
		    (double)(ok - ok_last) * 1e9 / (double)(now - last),
		    failed);
		fflush(stdout);
		last = now;
		ok_last = ok;
	}
	return ASYNQ_OK;
}

/* Puts a steady load on the wanted sets' frontends until SIGINT or
 * SIGTERM; 0 when it ran (failed requests are counted, not fatal: a
 * person may be watching the errors on /status). */
static int
serve_run(svc_set *sets, const bool want[2], const demo_cfg *cfg)
{
	serve_load loads[2];
	size_t lanes = cfg->inflight;
	asynq_future **f = calloc(2 * lanes + 1, sizeof(*f));
	size_t nf = 0;
	int rc = -1;

	memset(loads, 0, sizeof(loads));
	if (f == NULL) {
		fprintf(stderr, "demo: out of memory\n");
		return -1;
	}
	for (int i = 0; i < 2; i++) {
		if (!want[i])
			continue;
		serve_load *sl = &loads[i];
		sl->w.cfg = cfg;
		sl->w.total = cfg->names + cfg->pages;
		sl->w.lat = calloc(sl->w.total, sizeof(*sl->w.lat));
		sl->gap_ns = cfg->rate != 0 ? 1000000000u / cfg->rate : 0;
		const char *urls[] = { sets[i].urls[DEMO_FRONTEND] };
		asynq_rpc_channel_cfg ccfg = { .urls = urls,
			.n_urls = 1,
			.max_calls = sets[i].max_calls };
		mtls_channel(&ccfg, DEMO_N_SVC);
		if (sl->w.lat == NULL) {
			fprintf(stderr, "demo: out of memory\n");
			goto out;
		}
		asynq_status rv =
		    asynq_rpc_channel_alloc(&sl->w.ch, FRONTEND, &ccfg);
		if (rv != ASYNQ_OK) {
			fprintf(stderr,
			    "demo: cannot open a channel to %s: %s\n", urls[0],
			    asynq_strerror(rv));
			goto out;
		}
	}
	struct sigaction sa = { .sa_handler = on_stop_signal }, old_int,
	                 old_term;
	sigemptyset(&sa.sa_mask);
	atomic_store(&demo_stop_signal, 0);
	sigaction(SIGINT, &sa, &old_int);
	sigaction(SIGTERM, &sa, &old_term);
	printf("\nserving until SIGINT (Ctrl-C) or SIGTERM: %zu requests in "
	       "flight%s",
	    lanes, cfg->rate != 0 ? "" : ", as fast as they go");
	if (cfg->rate != 0)
		printf(", %zu requests/s per set", cfg->rate);
	printf("\n");
	fflush(stdout);
	for (int i = 0; i < 2; i++)
		for (size_t k = 0; want[i] && k < lanes; k++)
			f[nf++] = asynq_spawn(serve_lane, &loads[i]);
	f[nf++] = asynq_spawn(serve_report, loads);
	(void)asynq_wait_all(f, nf);
	asynq_future_rele_n(f, nf);
	sigaction(SIGINT, &old_int, NULL);
	sigaction(SIGTERM, &old_term, NULL);
	printf("stopping on %s: %zu requests served, %zu failed\n",
	    strsignal(atomic_load(&demo_stop_signal)),
	    loads[0].w.ok + loads[1].w.ok,
	    loads[0].w.failures + loads[1].w.failures);
	fflush(stdout);
	rc = 0;
out:
	for (int i = 0; i < 2; i++) {
		asynq_rpc_channel_free(loads[i].w.ch);
		free(loads[i].w.lat);
	}
	free(f);
	return rc;
}

/* ---- Flags
 * ------------------------------------------------------------------- */

static void
usage(FILE *f, const char *prog)
{
	fprintf(f,
	    "usage: %s [--small] [--tcp] [--compare | --no-batching |"
	    " --batching-only]\n"
	    "       [--requests N] [--ids N] [--pages N] [--inflight N]"
	    " [--workers N]\n"
	    "       [--data-dir DIR] [--base-port PORT]"
	    " [--queue-target-us US|off] [--no-collapse] [--hot PCT]"
	    " [--db-on-worker] [--quiet]\n"
	    "       [--serve [--rate N]] [--admin http://HOST:PORT]"
	    " [--mtls | --mtls-dir DIR]\n"
	    "       [--replicas N]\n"
	    "\n"
	    "Starts the users, answers, cache and frontend services (one"
	    " process over\n"
	    "inproc://, or with --tcp one process each on 127.0.0.1), sends"
	    " --requests\n"
	    "AuthorNames requests of --ids answer ids and --pages QuestionPage"
	    " requests,\n"
	    "--inflight at a time, and prints throughput, latency and what"
	    " each service\n"
	    "was asked. By default it runs the workload batched and with every"
	    " channel\n"
	    "capped at one call per request, and prints the speedup.\n"
	    "Data (made on first run): --data-dir, default"
	    " $XDG_CACHE_HOME/asynq-demo\n"
	    "or $HOME/.cache/asynq-demo; --small: 10,000 users and 100,000"
	    " answers\n"
	    "instead of 100,000 and 1,000,000. --queue-target-us sets the"
	    " services'\n"
	    "admission control (default 5000 us; off: never refuse; the"
	    " unbatched run\n"
	    "has it off unless this flag is given).\n"
	    "--no-collapse: the frontend sends identical calls of one batch"
	    " each\n"
	    "(by default they go once and every caller gets the reply).\n"
	    "--hot PCT: PCT%% of the answers asked for are among the 100 that"
	    " everyone\n"
	    "reads (default 0: every answer alike).\n"
	    "--db-on-worker: the services run SQLite on their workers instead"
	    " of the\n"
	    "blocking pool.\n"
	    "--serve: instead of the measured runs, keep the services and a"
	    " steady load\n"
	    "(--inflight requests in flight, --rate N requests/s, default"
	    " 200; 0: as fast\n"
	    "as they go) running until SIGINT or SIGTERM, to watch on the"
	    " admin\n"
	    "endpoint's /status page; batched only unless --compare or"
	    " --no-batching.\n"
	    "--admin: where the demo's admin endpoint listens (default"
	    " http://127.0.0.1:9090\n"
	    "with --serve, a free port otherwise); with --tcp each service"
	    " process has\n"
	    "its own on a free port. The demo prints the URLs.\n"
	    "--mtls: the services as processes (--tcp) on tls+tcp://, each"
	    " requiring a\n"
	    "client certificate of the demo's CA (the frontend and the demo"
	    " present theirs);\n"
	    "the certificates are made with openssl in a temporary"
	    " directory.\n"
	    "--mtls-dir DIR: the same with the certificates of DIR (ca.crt,"
	    " users.crt/.key,\n"
	    "answers, cache, frontend, demo), made there first if ca.crt is"
	    " missing.\n"
	    "--replicas N (2 to 8; implies --tcp): users and answers run as N"
	    " processes\n"
	    "each on loopback ports; the frontend's channels send each request"
	    " to the\n"
	    "replica with the fewest outstanding, and the report says how many"
	    " calls\n"
	    "each replica served.\n",
	    prog);
}

static bool
parse_size(const char *s, size_t *out, size_t max)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0' || v > max || s[0] == '-')
		return false;
	*out = (size_t)v;
	return true;
}

static void
default_data_dir(char *buf, size_t n)
{
	const char *x = getenv("XDG_CACHE_HOME"), *h = getenv("HOME");

	if (x != NULL && x[0] == '/')
		snprintf(buf, n, "%s/asynq-demo", x);
	else if (h != NULL && h[0] == '/')
		snprintf(buf, n, "%s/.cache/asynq-demo", h);
	else
		snprintf(buf, n, "/tmp/asynq-demo");
}

/* 0 to run, 1 after --help, 2 for a bad flag. */
static int
parse_flags(demo_cfg *cfg, int argc, char **argv)
{
	enum {
		F_SMALL = 256,
		F_TCP,
		F_COMPARE,
		F_NO_BATCHING,
		F_BATCHING_ONLY,
		F_REQUESTS,
		F_IDS,
		F_PAGES,
		F_INFLIGHT,
		F_WORKERS,
		F_DATA_DIR,
		F_BASE_PORT,
		F_QUEUE_TARGET,
		F_NO_COLLAPSE,
		F_HOT,
		F_DB_ON_WORKER,
		F_QUIET,
		F_SERVE,
		F_RATE,
		F_ADMIN,
		F_MTLS,
		F_MTLS_DIR,
		F_REPLICAS,
		F_HELP,
	};
	static const struct option opts[] = {
		{ "small", no_argument, NULL, F_SMALL },
		{ "tcp", no_argument, NULL, F_TCP },
		{ "compare", no_argument, NULL, F_COMPARE },
		{ "no-batching", no_argument, NULL, F_NO_BATCHING },
		{ "batching-only", no_argument, NULL, F_BATCHING_ONLY },
		{ "requests", required_argument, NULL, F_REQUESTS },
		{ "ids", required_argument, NULL, F_IDS },
		{ "pages", required_argument, NULL, F_PAGES },
		{ "inflight", required_argument, NULL, F_INFLIGHT },
		{ "workers", required_argument, NULL, F_WORKERS },
		{ "data-dir", required_argument, NULL, F_DATA_DIR },
		{ "base-port", required_argument, NULL, F_BASE_PORT },
		{ "queue-target-us", required_argument, NULL, F_QUEUE_TARGET },
		{ "no-collapse", no_argument, NULL, F_NO_COLLAPSE },
		{ "hot", required_argument, NULL, F_HOT },
		{ "db-on-worker", no_argument, NULL, F_DB_ON_WORKER },
		{ "quiet", no_argument, NULL, F_QUIET },
		{ "serve", no_argument, NULL, F_SERVE },
		{ "rate", required_argument, NULL, F_RATE },
		{ "admin", required_argument, NULL, F_ADMIN },
		{ "mtls", no_argument, NULL, F_MTLS },
		{ "mtls-dir", required_argument, NULL, F_MTLS_DIR },
		{ "replicas", required_argument, NULL, F_REPLICAS },
		{ "help", no_argument, NULL, F_HELP },
		{ NULL, 0, NULL, 0 },
	};
	size_t v;
	int o;

	*cfg = (demo_cfg){
		.data = { SVC_DEFAULT_USERS, SVC_DEFAULT_ANSWERS,
		    SVC_DEFAULT_QUESTIONS },
		.batched = true,
		.unbatched = true,
		.names = 2000,
		.ids = 20,
		.pages = 500,
		.inflight = 64,
		.rate = 200,
	};
	default_data_dir(cfg->data_dir, sizeof(cfg->data_dir));
	optind = 0; /* glibc: start afresh, demo_main may run twice */
	while ((o = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (o) {
		case F_SMALL:
			cfg->data = (svc_data_cfg){ 10000, 100000, 10000 };
			break;
		case F_TCP:
			cfg->tcp = true;
			break;
		case F_COMPARE:
			cfg->batched = cfg->unbatched = true;
			cfg->runs_given = true;
			break;
		case F_NO_BATCHING:
			cfg->batched = false;
			cfg->unbatched = true;
			cfg->runs_given = true;
			break;
		case F_BATCHING_ONLY:
			cfg->batched = true;
			cfg->unbatched = false;
			cfg->runs_given = true;
			break;
		case F_REQUESTS:
			if (!parse_size(optarg, &cfg->names, 100000000))
				goto bad;
			break;
		case F_IDS:
			if (!parse_size(optarg, &cfg->ids, 256))
				goto bad;
			break;
		case F_PAGES:
			if (!parse_size(optarg, &cfg->pages, 100000000))
				goto bad;
			break;
		case F_INFLIGHT:
			if (!parse_size(optarg, &cfg->inflight, 100000) ||
			    cfg->inflight == 0)
				goto bad;
			break;
		case F_WORKERS:
			if (!parse_size(optarg, &cfg->workers, 64))
				goto bad;
			break;
		case F_DATA_DIR:
			if (optarg[0] == '\0' ||
			    strlen(optarg) >= sizeof(cfg->data_dir) - 64)
				goto bad;
			snprintf(cfg->data_dir, sizeof(cfg->data_dir), "%s",
			    optarg);
			break;
		case F_BASE_PORT:
			if (!parse_size(optarg, &v, 65535 - 2 * DEMO_N_SVC) ||
			    v == 0)
				goto bad;
			cfg->base_port = (int)v;
			break;
		case F_QUEUE_TARGET:
			if (strcmp(optarg, "off") == 0)
				v = UINT32_MAX;
			else if (!parse_size(optarg, &v, UINT32_MAX - 1) ||
			    v == 0)
				goto bad;
			demo_server_cfg.queue_target_us = (uint32_t)v;
			demo_queue_target_set = true;
			break;
		case F_NO_COLLAPSE:
			demo_no_collapse = true;
			break;
		case F_DB_ON_WORKER:
			demo_db_on_worker = true;
			break;
		case F_HOT:
			if (!parse_size(optarg, &v, 100))
				goto bad;
			cfg->hot_pct = (unsigned)v;
			break;
		case F_QUIET:
			cfg->quiet = true;
			break;
		case F_SERVE:
			cfg->serve = true;
			break;
		case F_RATE:
			if (!parse_size(optarg, &cfg->rate, 1000000))
				goto bad;
			break;
		case F_ADMIN:
			cfg->admin = optarg;
			break;
		case F_MTLS:
			cfg->mtls = cfg->tcp = true;
			break;
		case F_MTLS_DIR:
			if (optarg[0] == '\0' || strlen(optarg) >= 400)
				goto bad;
			cfg->mtls = cfg->tcp = true;
			cfg->mtls_dir = optarg;
			break;
		case F_REPLICAS:
			if (!parse_size(optarg, &cfg->replicas,
			        DEMO_MAX_REPLICAS) ||
			    cfg->replicas == 0)
				goto bad;
			break;
		case F_HELP:
			usage(stdout, argv[0]);
			return 1;
		default:
			goto bad;
		}
	}
	if (optind != argc || cfg->names + cfg->pages == 0)
		goto bad;
	/* Replicas are processes, on plain tcp:// (not with --mtls yet). */
	if (cfg->replicas > 1 && cfg->mtls) {
		fprintf(stderr,
		    "%s: --replicas and --mtls cannot be combined "
		    "yet (replicas listen on plain tcp://)\n",
		    argv[0]);
		goto bad;
	}
	if (cfg->replicas > 1)
		cfg->tcp = true;
	if (cfg->admin != NULL && cfg->tcp) {
		fprintf(stderr,
		    "%s: --admin is for the in-process demo; with --tcp each "
		    "service process opens its own admin endpoint on a free "
		    "port and the demo prints where\n",
		    argv[0]);
		return 2;
	}
	if (cfg->serve && !cfg->runs_given)
		cfg->unbatched = false;
	return 0;
bad:
	usage(stderr, argv[0]);
	return 2;
}

/* ---- Main
 * -------------------------------------------------------------------- */

int
demo_main(int argc, char **argv, demo_result *out)
{
	static char users_db[640], answers_db[640];
	demo_result res = { 0 };
	demo_cfg cfg;
	svc_set sets[2] = {
		{ .label = "batched", .max_calls = 0 },
		{ .label = "unbatched", .max_calls = 1 },
	};
	bool want[2];
	int rc = 1;
	char a[32], b[32];

	/* The report is the demo's output: the services' own log lines only
	 * at warn (slow requests), unless ASYNQ_LOG_LEVEL says otherwise. */
	if (getenv("ASYNQ_LOG_LEVEL") == NULL)
		asynq_log_set_level(ASYNQ_LOG_WARN);

	switch (parse_flags(&cfg, argc, argv)) {
	case 0:
		break;
	case 1:
		return 0; /* --help */
	default:
		return 2;
	}
	want[0] = cfg.batched;
	want[1] = cfg.unbatched;
	signal(SIGPIPE, SIG_IGN);
	uint64_t t_start = asynq_now_ns();

	if (data_ensure(&cfg, users_db, answers_db, sizeof(users_db)) != 0)
		return 1;
	demo_mtls = false;
	if (cfg.mtls && mtls_setup(&cfg) != 0) {
		mtls_cleanup();
		return 1;
	}

	/* In process, one admin endpoint reports every service (each under
	 * its set and name); with --tcp each service process has its own,
	 * as the parent must not use nng before it forks. */
	if (!cfg.tcp &&
	    svc_admin_open(cfg.admin != NULL ? cfg.admin
	            : cfg.serve              ? "http://127.0.0.1:9090"
	                                     : "http://127.0.0.1:0",
	        "demo") != ASYNQ_OK)
		return 1;

	/* Every set starts before the demo uses nng (see design notes). */
	for (int i = 0; i < 2; i++) {
		if (!want[i])
			continue;
		if (set_addresses(&sets[i], &cfg, i) != 0 ||
		    set_start(&sets[i], &cfg, users_db, answers_db) != 0)
			goto stop;
	}
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	printf("services: users, answers, cache, frontend %s, %zu worker "
	       "threads each\n",
	    cfg.tcp ? "as processes on 127.0.0.1 TCP"
	            : "in this process over inproc://",
	    cfg.workers != 0 ? cfg.workers : (size_t)(ncpu > 0 ? ncpu : 1));
	for (int i = 0; i < 2; i++)
		if (want[i] && cfg.tcp)
			printf("  %s: users %s, answers %s, cache %s, frontend "
			       "%s\n",
			    sets[i].label, sets[i].urls[0], sets[i].urls[1],
			    sets[i].urls[2], sets[i].urls[3]);
	if (demo_mtls)
		printf("mTLS: every service requires a client certificate of "
		       "%s; the frontend\n  presents %s, the demo %s "
		       "(CN=<name>, URI:spiffe://asynq-demo/<name>)\n",
		    mtls_ca, mtls_crt[DEMO_FRONTEND], mtls_crt[DEMO_N_SVC]);
	if (!cfg.tcp)
		printf("status page: %s/status (trace for Perfetto: "
		       "%s/trace?seconds=5)\n",
		    svc_admin_url(), svc_admin_url());
	printf("workload: %s AuthorNames of %zu answers + %s QuestionPage, "
	       "%zu in flight\n",
	    commas(a, cfg.names), cfg.ids, commas(b, cfg.pages), cfg.inflight);
	fflush(stdout);

	if (cfg.serve) {
		rc = serve_run(sets, want, &cfg) == 0 ? 0 : 1;
		goto stop;
	}

	demo_run *runs[2] = { &res.batched, &res.unbatched };
	bool failed = false;
	for (int i = 0; i < 2; i++) {
		if (!want[i])
			continue;
		printf("\n%s run (%s):\n", sets[i].label,
		    sets[i].max_calls == 1
		        ? "every channel capped at 1 call per request"
		        : "calls batched per worker");
		fflush(stdout);
		bool first = i == 0 || !want[0];
		if (workload_run(&sets[i], &cfg, !cfg.quiet && first,
		        runs[i]) != 0)
			failed = true;
		if (!runs[i]->ran)
			break;
		print_run(sets[i].label, runs[i]);
		if (!cfg.quiet)
			print_services(runs[i]);
		fflush(stdout);
	}
	if (!failed && res.batched.ran && res.unbatched.ran) {
		printf("\n%-22s %12s %12s\n", "", "batched", "unbatched");
		printf("%-22s %12.0f %12.0f\n", "requests/s", res.batched.rps,
		    res.unbatched.rps);
		printf("%-22s %12.2f %12.2f\n", "p50 latency (ms)",
		    res.batched.p50_ms, res.unbatched.p50_ms);
		printf("%-22s %12.2f %12.2f\n", "p99 latency (ms)",
		    res.batched.p99_ms, res.unbatched.p99_ms);
		printf("%-22s %12" PRIu64 " %12" PRIu64 "\n",
		    "service requests",
		    res.batched.svc[DEMO_FRONTEND].out_requests,
		    res.unbatched.svc[DEMO_FRONTEND].out_requests);
		printf("speedup with batching: %.1fx the requests/s\n",
		    res.unbatched.rps > 0 ? res.batched.rps / res.unbatched.rps
		                          : 0.0);
	}
	rc = failed ? 1 : 0;
stop:
	asynq_thread_fini();
	/* Before the services it reports on are freed. */
	svc_admin_close();
	for (int i = 1; i >= 0; i--)
		if (!set_stop(&sets[i], &cfg))
			rc = 1;
	mtls_cleanup();
	demo_mtls = false;
	printf("%s in %.1f s\n", rc == 0 ? "done" : "FAILED",
	    secs_since(t_start));
	fflush(stdout);
	if (out != NULL)
		*out = res;
	return rc;
}
