#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Scale-out on one machine: three network namespaces are hosts (10.77.0.1-3
# on a bridge in a fourth, switch namespace, through veth pairs), each
# running a replica of users, answers and cache; a client namespace
# (10.77.0.4) runs dnsmasq answering the svc.local names from a hosts file
# (--no-resolv --addn-hosts; SIGHUP re-reads it; its resolv.conf is
# /etc/netns/<ns>/resolv.conf, which `ip netns exec` mounts) and the load,
# scale_load, which calls the services through dns:/// names. Scenarios,
# each printed as one line with its figures:
#   scale up   a users replica added to the names gets requests within the
#              refresh interval;
#   spread     with 3 users replicas the calls per replica are within 10% of
#              their mean; with one stopped in bursts (SIGSTOP) the others
#              take its share;
#   drain      a users replica removed from the names and sent SIGTERM under
#              load: 0 failed calls, it exits 0;
#   host loss  every process of one host SIGKILLed under load: failed calls
#              fail within their deadline, traffic moves to the others, no
#              Incr (not idempotent) runs twice, and once the host is back it
#              gets traffic again;
#   srv        the users replicas found through SRV records.
# Every loop is bounded in count and time; everything made is removed at
# exit. Needs root, iproute2 and dnsmasq (bazel/setup installs them); if the
# sandbox forbids network namespaces (`ip netns add` fails) it says so and
# skips.
set -euo pipefail

fail() {
	echo "netns_test: FAIL: $*" >&2
	exit 1
}

# ---- Programs, from the runfiles ---------------------------------------------

runfiles=${TEST_SRCDIR:-${RUNFILES_DIR:-$0.runfiles}}
ws=${TEST_WORKSPACE:-asynq}
bin() {
	local p="$runfiles/$ws/$1"
	[ -x "$p" ] || fail "$1 not found in the runfiles ($p)"
	echo "$p"
}
USERS=$(bin services/users/users)
ANSWERS=$(bin services/answers/answers)
CACHE=$(bin services/cache/cache)
LOAD=$(bin tests/scale/scale_load)

[ "$(id -u)" -eq 0 ] || {
	echo "netns_test: SKIP: needs root for ip netns (uid $(id -u))"
	exit 0
}
command -v ip >/dev/null || fail "ip (iproute2) not found"
command -v dnsmasq >/dev/null ||
	fail "dnsmasq not found (Debian: dnsmasq-base; bazel/setup installs it)"

# ---- Names, and removal of everything at exit ----------------------------------

P=asq$(($$ % 100000))
SW=$P-sw
C=$P-c
HOSTS_NS=("$P-h1" "$P-h2" "$P-h3")
T=$(mktemp -d "${TEST_TMPDIR:-/tmp}/netns.XXXXXX")
NAMES=$T/names
made_ns=()

cleanup() {
	set +e
	# The shell's notes on the jobs killed here say nothing useful.
	exec 2>/dev/null
	for ns in "${made_ns[@]}"; do
		for pid in $(ip netns pids "$ns" 2>/dev/null); do
			kill -CONT "$pid" 2>/dev/null
			kill -KILL "$pid" 2>/dev/null
		done
	done
	for ns in "${made_ns[@]}"; do
		ip netns del "$ns" 2>/dev/null
		rm -rf "/etc/netns/$ns"
	done
	rmdir /etc/netns 2>/dev/null # only if no one else's is left there
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

# The skip happens only when creating a namespace itself fails.
if ! err=$(ip netns add "$SW" 2>&1); then
	echo "netns_test: SKIP: network namespaces are not allowed here:" \
	    "ip netns add: $err"
	exit 0
fi
made_ns+=("$SW")

nsx() { # nsx NS CMD...: runs CMD in NS
	local ns=$1
	shift
	ip netns exec "$ns" "$@"
}

ip -n "$SW" link add br0 type bridge
ip -n "$SW" link set br0 up
ip -n "$SW" link set lo up
i=0
for ns in "${HOSTS_NS[@]}" "$C"; do
	i=$((i + 1))
	ip netns add "$ns"
	made_ns+=("$ns")
	ip link add "${P}e$i" type veth peer name "${P}s$i"
	ip link set "${P}e$i" netns "$ns"
	ip link set "${P}s$i" netns "$SW"
	ip -n "$SW" link set "${P}s$i" master br0 up
	ip -n "$ns" link set lo up
	ip -n "$ns" addr add "10.77.0.$i/24" dev "${P}e$i"
	ip -n "$ns" link set "${P}e$i" up
done

# The client's resolver is dnsmasq on its own loopback.
mkdir -p "/etc/netns/$C"
echo "nameserver 127.0.0.1" >"/etc/netns/$C/resolv.conf"
printf '127.0.0.1 localhost\n' >"/etc/netns/$C/hosts"

names() { # names LINE...: writes the names file and tells dnsmasq
	printf '%s\n' "$@" >"$NAMES.new"
	mv "$NAMES.new" "$NAMES"
	if [ -n "${DNSMASQ_PID:-}" ]; then
		kill -HUP "$DNSMASQ_PID"
	fi
}
base_names=(
	"10.77.0.1 users-1.svc.local" "10.77.0.2 users-2.svc.local"
	"10.77.0.3 users-3.svc.local"
	"10.77.0.1 answers.svc.local" "10.77.0.2 answers.svc.local"
	"10.77.0.3 answers.svc.local"
	"10.77.0.1 cache.svc.local" "10.77.0.2 cache.svc.local"
	"10.77.0.3 cache.svc.local"
)
names "${base_names[@]}" "10.77.0.1 users.svc.local" \
    "10.77.0.2 users.svc.local"
# Started as plain commands, not through nsx (a function runs in a subshell
# whose pid $! would be), so signals reach the programs themselves.
ip netns exec "$C" dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv \
    --no-hosts --addn-hosts="$NAMES" --listen-address=127.0.0.1 \
    --bind-interfaces --port=53 --user=root --group=root --local-ttl=0 \
    --local=/svc.local/ --pid-file="$T/dnsmasq.pid" \
    --srv-host=_users._tcp.svc.local,users-1.svc.local,7001,0,10 \
    --srv-host=_users._tcp.svc.local,users-2.svc.local,7001,0,10 \
    --srv-host=_users._tcp.svc.local,users-3.svc.local,7001,0,10 \
    >"$T/dnsmasq.log" 2>&1 &
DNSMASQ_PID=$!
for _ in $(seq 1 100); do
	nsx "$C" getent hosts users.svc.local >/dev/null 2>&1 && break
	sleep 0.1
done
nsx "$C" getent hosts users.svc.local >/dev/null ||
	fail "dnsmasq does not answer users.svc.local: $(cat "$T/dnsmasq.log")"

# ---- Replicas ------------------------------------------------------------------

declare -A PID
# Each program takes the flags of its own data only.
gen_users=(--gen-users 1000)
gen_answers=(--gen-users 1000 --gen-answers 1000 --gen-questions 100)

# start SVC H: starts service SVC on host H (1..3), waits until it listens.
start() {
	local svc=$1 h=$2 port bin extra=()
	case $svc in
	users) port=7001 bin=$USERS extra=(--db "$T/users.db" "${gen_users[@]}") ;;
	answers) port=7002 bin=$ANSWERS extra=(--db "$T/answers.db" "${gen_answers[@]}") ;;
	cache) port=7003 bin=$CACHE extra=(--exec-log "$T/exec-$h.log") ;;
	esac
	local log=$T/$svc-$h.log
	: >"$log"
	ASYNQ_LOG_LEVEL=warn ip netns exec "${HOSTS_NS[$((h - 1))]}" "$bin" \
	    --listen "tcp://10.77.0.$h:$port" --workers 1 --quiet \
	    --drain-grace-ms 1000 --admin "http://10.77.0.$h:$((port + 2000))" \
	    "${extra[@]}" >>"$log" 2>&1 &
	PID[$svc-$h]=$!
	for _ in $(seq 1 300); do
		grep -q "listening on" "$log" && return 0
		kill -0 "${PID[$svc-$h]}" 2>/dev/null || break
		sleep 0.1
	done
	fail "$svc on host $h did not start: $(cat "$log")"
}
for h in 1 2 3; do
	for svc in users answers cache; do
		start "$svc" "$h"
	done
done

# ---- Load ----------------------------------------------------------------------

REFRESH_MS=2000
DEADLINE_MS=3000
# load OUT MS [ARGS...]: runs the load from the client namespace for MS ms in
# the background (LOAD_PID), its report in OUT, per-replica ticks in
# OUT.ticks.
load() {
	local out=$1 ms=$2
	shift 2
	ip netns exec "$C" "$LOAD" --users dns:///users.svc.local:7001 \
	    --answers dns:///answers.svc.local:7002 --duration-ms "$ms" \
	    --tasks 8 --batch 20 --max-iters 1000000 \
	    --deadline-ms "$DEADLINE_MS" --resolve-ms "$REFRESH_MS" \
	    --eject-base-ms 2000 --ticks "$out.ticks" "$@" >"$out" \
	    2>"$out.err" &
	LOAD_PID=$!
}
load_wait() {
	wait "$LOAD_PID" || fail "load exited $?: $(tail -5 "$1.err")"
	grep -q '^svc users' "$1" || fail "no load report: $(tail -5 "$1.err")"
}
# field FILE PREFIX KEY: the value of KEY= on the first line of FILE that
# starts with PREFIX.
field() {
	awk -v p="$2" -v k="$3" 'index($0, p) == 1 {
		for (i = 1; i <= NF; i++)
			if (index($i, k "=") == 1) { print substr($i, length(k) + 2); exit }
	}' "$1"
}
now_ms() { date +%s%3N; }
# calls_at TICKS URL MS: the calls sent to URL by the last tick at or
# before MS (0 if none).
calls_at() {
	awk -v u="url=$2" -v t="$3" '$0 ~ u {
		split($2, a, "="); if (a[2] + 0 > t + 0) next
		for (i = 1; i <= NF; i++) if ($i ~ /^calls=/) { split($i, c, "="); v = c[2] }
	} END { print v + 0 }' "$1"
}

# ---- Scale up ------------------------------------------------------------------

out=$T/scaleup
load "$out" 6000
sleep 1.5
names "${base_names[@]}" "10.77.0.1 users.svc.local" \
    "10.77.0.2 users.svc.local" "10.77.0.3 users.svc.local"
t_add=$(now_ms)
load_wait "$out"
first=$(field "$out" "replica users url=tcp://10.77.0.3:7001" first_ms)
[ -n "$first" ] && [ "$first" -gt 0 ] ||
	fail "scale up: the new replica got no request: $(cat "$out")"
delay=$((first - t_add))
failed=$(field "$out" "svc users" failed)
echo "scale up: a users replica added to the names got its first request" \
    "$delay ms later (refresh interval $REFRESH_MS ms);" \
    "$(field "$out" "replica users url=tcp://10.77.0.3:7001" calls) calls" \
    "reached it; users calls $(field "$out" "svc users" calls)," \
    "failed $failed"
[ "$delay" -le $((REFRESH_MS + 1000)) ] ||
	fail "scale up: $delay ms is over the refresh interval and 1 s"
[ "$failed" -eq 0 ] || fail "scale up: $failed calls failed"

# ---- Spread ----------------------------------------------------------------------

# A light load (the machine runs nine servers on two cores: under a heavy one
# the kernel's scheduling, not the channel, decides who answers fastest).
out=$T/spread
load "$out" 6000 --tasks 2
load_wait "$out"
read -r c1 c2 c3 < <(for h in 1 2 3; do
	field "$out" "replica users url=tcp://10.77.0.$h:7001" calls
done | tr '\n' ' '; echo)
mean=$(((c1 + c2 + c3) / 3))
worst=$(awk -v a="$c1" -v b="$c2" -v c="$c3" -v m="$mean" 'BEGIN {
	w = 0; n = split(a " " b " " c, v, " ")
	for (i = 1; i <= n; i++) { d = (v[i] - m) / m * 100; if (d < 0) d = -d; if (d > w) w = d }
	printf "%.1f", w }')
echo "spread: 3 users replicas got $c1, $c2, $c3 calls" \
    "(at most $worst% from the mean $mean)"
awk -v w="$worst" 'BEGIN { exit !(w <= 10) }' ||
	fail "spread: a replica is $worst% from the mean"

out=$T/slow
load "$out" 6000
# users on host 2 stopped for 200 ms of every 400 ms (at most 14 bursts).
for _ in $(seq 1 14); do
	kill -STOP "${PID[users-2]}"
	sleep 0.2
	kill -CONT "${PID[users-2]}"
	sleep 0.2
done
kill -CONT "${PID[users-2]}"
load_wait "$out"
read -r s1 s2 s3 < <(for h in 1 2 3; do
	field "$out" "replica users url=tcp://10.77.0.$h:7001" calls
done | tr '\n' ' '; echo)
total=$((s1 + s2 + s3))
share=$((s2 * 100 / total))
failed=$(field "$out" "svc users" failed)
echo "spread, one slow: users on host 2 stopped 200 ms in every 400 ms got" \
    "$share% of the calls ($s2 of $total; the others $s1 and $s3)," \
    "failed $failed"
[ "$share" -lt 25 ] || fail "spread: the slow replica still got $share%"
[ "$failed" -eq 0 ] || fail "spread: $failed calls failed"

# ---- Drain -----------------------------------------------------------------------

out=$T/drain
load "$out" 6000 --cache dns:///cache.svc.local:7003
sleep 2
# As Kubernetes does: the endpoint leaves the names, the pod gets SIGTERM.
names "${base_names[@]}" "10.77.0.2 users.svc.local" \
    "10.77.0.3 users.svc.local"
t0=$(now_ms)
kill -TERM "${PID[users-1]}"
rc=0
wait "${PID[users-1]}" || rc=$?
exit_ms=$(($(now_ms) - t0))
load_wait "$out"
fu=$(field "$out" "svc users" failed)
fa=$(field "$out" "svc answers" failed)
fc=$(field "$out" "svc cache" failed)
echo "drain: users on host 1 taken out of the names and sent SIGTERM under" \
    "load exited $rc after $exit_ms ms; calls users" \
    "$(field "$out" "svc users" calls), answers" \
    "$(field "$out" "svc answers" calls), cache" \
    "$(field "$out" "svc cache" calls); failed $fu, $fa, $fc"
[ "$rc" -eq 0 ] || fail "drain: users exited $rc"
[ "$fu" -eq 0 ] && [ "$fa" -eq 0 ] && [ "$fc" -eq 0 ] ||
	fail "drain: calls failed"
start users 1
names "${base_names[@]}" "10.77.0.1 users.svc.local" \
    "10.77.0.2 users.svc.local" "10.77.0.3 users.svc.local"

# ---- Host loss -------------------------------------------------------------------

out=$T/loss
load "$out" 12000 --cache dns:///cache.svc.local:7003 --list-incr
sleep 2
t_kill=$(now_ms)
for pid in $(ip netns pids "${HOSTS_NS[1]}"); do
	kill -KILL "$pid"
done
for svc in users answers cache; do
	wait "${PID[$svc-2]}" 2>/dev/null || true
done
sleep 3
t_back=$(now_ms)
for svc in users answers cache; do
	start "$svc" 2
done
load_wait "$out"
ticks=$out.ticks
# Calls sent to host 2 between 1 s after the kill and its return: none.
during=0
after=0
for pp in users:7001 answers:7002 cache:7003; do
	u="tcp://10.77.0.2:${pp#*:}"
	a=$(calls_at "$ticks" "$u" $((t_kill + 1000)))
	b=$(calls_at "$ticks" "$u" "$t_back")
	e=$(calls_at "$ticks" "$u" 99999999999999)
	during=$((during + b - a))
	after=$((after + e - b))
done
# Incr executions, from every cache replica's exec log: tokens run twice.
exec_tokens() {
	cat "$T"/exec-*.log | od -An -v -tu8 -w16 | awk '{ print $1 }'
}
dups=$(exec_tokens | sort | uniq -d | wc -l)
runs=$(exec_tokens | wc -l)
ok_not_run=$(comm -23 <(grep '^incr_ok' "$out" | awk '{ print $2 }' | sort -u) \
    <(exec_tokens | sort -u) | wc -l)
fu=$(field "$out" "svc users" failed)
fa=$(field "$out" "svc answers" failed)
fc=$(field "$out" "svc cache" failed)
mf=0
for s in users answers cache; do
	m=$(field "$out" "svc $s" max_failed_ms)
	[ "$m" -gt "$mf" ] && mf=$m
done
echo "host loss: host 2 killed (users, answers, cache) under load and back" \
    "3 s later: calls users $(field "$out" "svc users" calls)," \
    "answers $(field "$out" "svc answers" calls), cache" \
    "$(field "$out" "svc cache" calls); failed $fu, $fa, $fc (slowest" \
    "failure $mf ms, deadline $DEADLINE_MS ms); resends" \
    "$(field "$out" "svc users" resends)," \
    "$(field "$out" "svc answers" resends)," \
    "$(field "$out" "svc cache" resends); calls to host 2 while down" \
    "$during, after it came back $after; Incr runs $runs, run twice $dups," \
    "answered OK but not run $ok_not_run"
[ "$dups" -eq 0 ] || fail "host loss: $dups Incr calls ran twice"
[ "$ok_not_run" -eq 0 ] || fail "host loss: Incr calls answered OK never ran"
[ "$during" -eq 0 ] || fail "host loss: $during calls went to the dead host"
[ "$after" -gt 0 ] || fail "host loss: host 2 got no traffic after it returned"
[ "$mf" -le $((DEADLINE_MS + 1000)) ] ||
	fail "host loss: a call failed after $mf ms, past its deadline"

# ---- SRV ---------------------------------------------------------------------------

out=$T/srv
nsx "$C" "$LOAD" --users dns+srv:///_users._tcp.svc.local \
    --answers dns:///answers.svc.local:7002 --duration-ms 2000 --tasks 4 \
    --batch 10 --max-iters 100000 >"$out" 2>"$out.err" ||
	fail "srv load: $(tail -3 "$out.err")"
n=$(grep -c '^replica users .*requests=[1-9]' "$out" || true)
echo "srv: _users._tcp.svc.local gave $n users replicas that all got" \
    "requests; users calls $(field "$out" "svc users" calls), failed" \
    "$(field "$out" "svc users" failed)"
[ "$n" -eq 3 ] || fail "srv: $n replicas got requests: $(cat "$out")"

echo "netns_test: all scenarios passed"
