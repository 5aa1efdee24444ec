#!/bin/bash
# SPDX-License-Identifier: MIT
#
# asynq_serve_main as a user meets it, through the guide's greeter server
# (docs/example/server.c, a program of a few lines on it):
# - a bad flag or value exits 2 naming it, --help exits 0 with the flags;
# - a taken port exits 1 with a message naming the service and address;
# - SIGTERM: the server says it is not ready (health NOT_SERVING) but still
#   answers calls for --drain-grace-ms, then exits 0, and the program's stop
#   (the greeter prints its counters) runs after the server closed;
# - a second signal cuts the grace period short;
# - the counters log prints what changed (its calls and requests add up);
# - the TLS flags reach the server, and SIGHUP reloads its files (a broken
#   set refused in words, the server serving on).
# Every wait is bounded.
set -euo pipefail

root="${TEST_SRCDIR:?run with bazel test}/${TEST_WORKSPACE:-asynq}"
server="$root/docs/example/server"
client="$root/docs/example/client"
cli="$root/framework/cli/asynq"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
pids=()

fail() {
	echo "FAIL: $*" >&2
	for f in "$tmp"/*.out "$tmp"/*.err; do
		[[ -s "$f" ]] && { echo "--- $f" >&2; cat "$f" >&2; }
	done
	exit 1
}

cleanup() {
	for p in "${pids[@]}"; do
		kill -KILL "$p" 2>/dev/null || true
	done
}
trap cleanup EXIT

# A loopback port free now, below the ephemeral range (32768-60999): a
# port the kernel picks for port 0 is also what it gives outgoing
# connections as their source port, so another test's client could take
# it before the server binds it.
free_port() {
	python3 -c '
import random, socket
for _ in range(200):
    p = random.randint(20000, 31999)
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
        print(p)
        break
    except OSError:
        pass
    finally:
        s.close()
'
}

# alive PID: PID runs (a child that exited but was not waited for is a
# zombie, which kill -0 still finds).
alive() {
	local st
	st=$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) || return 1
	[[ -n "$st" && "$st" != Z ]]
}

# start NAME ARGS...: runs the server in the background, waits (at most
# 10 s) for its "listening" line; sets $pid.
start() {
	local name="$1"
	shift
	"$server" "$@" >"$tmp/$name.out" 2>"$tmp/$name.err" &
	pid=$!
	pids+=("$pid")
	for _ in $(seq 1 1000); do
		grep -q "listening on" "$tmp/$name.out" && return 0
		alive "$pid" || fail "$name exited before listening"
		sleep 0.01
	done
	fail "$name did not listen within 10 s"
}

# wait_exit PID SECONDS: waits at most SECONDS for PID to exit; sets
# $exit_status to its status, or "running". (Not in a subshell: only the
# shell that started PID can wait for it.)
wait_exit() {
	local p="$1" limit="$2"
	exit_status=running
	for _ in $(seq 1 $((limit * 100))); do
		if ! alive "$p"; then
			exit_status=0
			wait "$p" || exit_status=$?
			return 0
		fi
		sleep 0.01
	done
}

# 1. Flags.
st=0
"$server" --bogus >"$tmp/bogus.out" 2>"$tmp/bogus.err" || st=$?
((st == 2)) || fail "--bogus exited $st, want 2"
grep -q "greeter: unknown flag or missing argument: --bogus" \
	"$tmp/bogus.err" || fail "--bogus: no message naming it"
st=0
"$server" --workers many >"$tmp/bad.out" 2>"$tmp/bad.err" || st=$?
((st == 2)) || fail "--workers many exited $st, want 2"
grep -q "greeter: bad value for --workers: many" "$tmp/bad.err" ||
	fail "--workers many: no message naming it"
st=0
"$server" stray >"$tmp/stray.out" 2>"$tmp/stray.err" || st=$?
((st == 2)) || fail "a stray argument exited $st, want 2"
"$server" --help >"$tmp/help.out" 2>"$tmp/help.err" ||
	fail "--help did not exit 0"
for flag in --listen --workers --admin --drain-grace-ms --max-connections \
	--queue-target-us --quiet; do
	grep -q -- "$flag" "$tmp/help.out" || fail "--help does not list $flag"
done
echo "flags: ok"

# 2. A taken port: exit 1, naming the service and the address.
port=$(free_port)
url="tcp://127.0.0.1:$port"
start first --listen "$url" --drain-grace-ms 0 --quiet
first=$pid
st=0
timeout 10 "$server" --listen "$url" >"$tmp/second.out" \
	2>"$tmp/second.err" || st=$?
((st == 1)) || fail "a second server on $url exited $st, want 1"
grep -q "greeter: greeter.Greeter: listen $url" "$tmp/second.err" ||
	fail "the second server's message does not name the service and $url"
kill -TERM "$first"
wait_exit "$first" 10
[[ "$exit_status" == 0 ]] ||
	 fail "the first server did not exit 0"
echo "port in use: ok"

# 3. The drain: not ready but serving for the grace period, then exit 0.
port=$(free_port)
url="tcp://127.0.0.1:$port"
start drain --listen "$url" --drain-grace-ms 3000
p=$pid
"$cli" health "$url" >"$tmp/h1.out" 2>&1 || fail "health before SIGTERM"
grep -q "^SERVING" "$tmp/h1.out" || fail "not SERVING before SIGTERM"
"$client" --connect "$url" >"$tmp/c1.out" 2>&1 || fail "client before SIGTERM"
# The counters log: changes at most once a second, so the health check's
# call and the client's 11 calls in 2 requests may be spread over lines;
# their sums must come to 12 calls in 3 requests, within 3 s.
counted() {
	awk '/^greeter: calls=/ {
		for (i = 2; i <= NF; i++) {
			split($i, kv, "=")
			if (kv[1] == "calls") c += kv[2]
			if (kv[1] == "requests") r += kv[2]
		}
	} END { printf "%d %d\n", c, r }' "$tmp/drain.err"
}
for _ in $(seq 1 300); do
	[[ "$(counted)" == "12 3" ]] && break
	sleep 0.01
done
[[ "$(counted)" == "12 3" ]] ||
	fail "the counters log says $(counted) (calls requests), want 12 3"
kill -TERM "$p"
for _ in $(seq 1 200); do
	grep -q "draining: not ready" "$tmp/drain.err" && break
	sleep 0.01
done
grep -q "draining: not ready" "$tmp/drain.err" || fail "no drain message"
"$cli" health "$url" >"$tmp/h2.out" 2>&1 || true
grep -q "^NOT_SERVING" "$tmp/h2.out" ||
	fail "health during the drain: $(cat "$tmp/h2.out"), want NOT_SERVING"
"$client" --connect "$url" >"$tmp/c2.out" 2>&1 ||
	fail "a client during the drain was not served"
cmp -s "$tmp/c1.out" "$tmp/c2.out" ||
	fail "the client's output during the drain differs"
alive "$p" || fail "the server exited before its grace period"
wait_exit "$p" 10
[[ "$exit_status" == 0 ]] ||
	 fail "the drained server did not exit 0"
# Two health checks and two clients' 11 calls in 2 requests each.
tail -1 "$tmp/drain.out" | grep -q "^greeter: 24 calls in 6 requests$" ||
	fail "the program's stop did not print every call last"
echo "drain: ok"

# 4. A second signal ends the grace period at once.
port=$(free_port)
start second --listen "tcp://127.0.0.1:$port" --drain-grace-ms 60000 --quiet
p=$pid
kill -TERM "$p"
for _ in $(seq 1 200); do
	grep -q "draining: not ready" "$tmp/second.err" && break
	sleep 0.01
done
kill -INT "$p"
wait_exit "$p" 20
[[ "$exit_status" == 0 ]] ||
	fail "a second signal did not end the 60 s grace period"
grep -q "second signal: stopping now" "$tmp/second.err" ||
	fail "no message for the second signal"
echo "second signal: ok"

# 5. TLS flags and SIGHUP: the files are read again; a broken set is
# refused in words and the old one stays; a server without TLS says it has
# nothing to reload.
port=$(free_port)
start plainhup --listen "tcp://127.0.0.1:$port" --drain-grace-ms 0 --quiet
p=$pid
kill -HUP "$p"
for _ in $(seq 1 200); do
	grep -q "SIGHUP: no TLS files to reload" "$tmp/plainhup.err" && break
	sleep 0.01
done
grep -q "SIGHUP: no TLS files to reload" "$tmp/plainhup.err" ||
	fail "SIGHUP on a server without TLS said nothing"
alive "$p" || fail "SIGHUP stopped a server"
kill -TERM "$p"
wait_exit "$p" 10
[[ "$exit_status" == 0 ]] || fail "the plain server did not exit 0"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout "$tmp/key.pem" -out "$tmp/cert.pem" -days 2 -subj "/CN=greeter" \
	-addext "subjectAltName=IP:127.0.0.1" >/dev/null 2>&1 ||
	fail "openssl could not make a certificate"
port=$(free_port)
start tlshup --listen "tls+tcp://127.0.0.1:$port" --tls-cert "$tmp/cert.pem" \
	--tls-key "$tmp/key.pem" --drain-grace-ms 0 --quiet
p=$pid
kill -HUP "$p"
for _ in $(seq 1 200); do
	grep -q "SIGHUP: TLS files reloaded" "$tmp/tlshup.err" && break
	sleep 0.01
done
grep -q "SIGHUP: TLS files reloaded" "$tmp/tlshup.err" ||
	fail "SIGHUP did not reload the TLS files"
echo "not a key" >"$tmp/key.pem"
kill -HUP "$p"
for _ in $(seq 1 200); do
	grep -q "SIGHUP: TLS files not reloaded, the old ones stay: ." \
		"$tmp/tlshup.err" && break
	sleep 0.01
done
grep -q "SIGHUP: TLS files not reloaded, the old ones stay: ." \
	"$tmp/tlshup.err" || fail "a broken key was not refused in words"
alive "$p" || fail "a broken reload stopped the server"
kill -TERM "$p"
wait_exit "$p" 10
[[ "$exit_status" == 0 ]] || fail "the TLS server did not exit 0"
echo "tls and SIGHUP: ok"
echo "serve_test: PASS"
