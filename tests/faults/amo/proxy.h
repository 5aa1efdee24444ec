/* SPDX-License-Identifier: MIT */
/*
 * A TCP proxy on loopback that cuts its connections at random moments, as a
 * flaky network would: each connection it accepts is relayed to an upstream
 * port and, while cutting is on, closed after a random lifetime (with FIN or
 * RST, at random) after relaying a random part of what it holds, so a
 * request or reply is often cut mid-frame. It runs on a thread of its own;
 * the functions below may be called from any thread.
 */
#ifndef TESTS_FAULTS_AMO_PROXY_H
#define TESTS_FAULTS_AMO_PROXY_H

#include <stdbool.h>
#include <stdint.h>

typedef struct proxy proxy;

/* proxy_start listens on a free loopback port (proxy_port) and relays to
 * 127.0.0.1:upstream_port, cutting each connection after a lifetime drawn
 * from [min_ms, max_ms] once proxy_cutting(p, true). NULL on failure. */
proxy *proxy_start(int upstream_port, uint32_t min_ms, uint32_t max_ms);

/* proxy_port returns the port p listens on. */
int proxy_port(const proxy *p);

/* proxy_cutting turns the random cuts on or off. */
void proxy_cutting(proxy *p, bool on);

/* proxy_cuts returns how many connections p has cut so far. */
uint64_t proxy_cuts(const proxy *p);

/* proxy_accepted returns how many connections p has accepted so far. */
uint64_t proxy_accepted(const proxy *p);

/* proxy_stop closes every connection, joins the thread and frees p.
 * NULL-safe. */
void proxy_stop(proxy *p);

#endif /* TESTS_FAULTS_AMO_PROXY_H */
