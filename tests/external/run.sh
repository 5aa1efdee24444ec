#!/bin/bash
# SPDX-License-Identifier: MIT
#
# asynq as an external repository: makes a scratch Bazel workspace outside
# this tree that depends on it the way the README says a user's does
# (local_repository "asynq" plus the offline shims), copies the guide's
# example service into it (docs/example: greeter.proto, server.c, client.c,
# a BUILD that names asynq's targets as @asynq//...), builds it there, runs
# the server on a free port and the client against it, and checks the
# client's output against the guide's. CI runs it (.ci/run); by hand:
# `bash tests/external/run.sh`. Exit 0 on success.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
work="$(mktemp -d "${TMPDIR:-/tmp}/asynq-external.XXXXXX")"
server_pid=
cleanup() {
	if [[ -n "$server_pid" ]]; then
		kill -KILL "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
	if [[ -d "$work/ws" ]]; then
		(cd "$work/ws" && bazel --output_base="$work/ob" shutdown \
			>/dev/null 2>&1) || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT
fail() {
	echo "external: FAIL: $*" >&2
	exit 1
}

ws="$work/ws"
mkdir -p "$ws/docs/example"
# The README's WORKSPACE lines, with this checkout as the path.
sed "s|/path/to/asynq|$root|g" >"$ws/WORKSPACE" <<'WS'
workspace(name = "hello")

local_repository(
    name = "asynq",
    path = "/path/to/asynq",
)

# asynq builds offline: Bazel's own rules come from its small stand-ins.
local_repository(
    name = "rules_cc",
    path = "/path/to/asynq/bazel/shims/rules_cc",
)

local_repository(
    name = "rules_java",
    path = "/path/to/asynq/bazel/shims/rules_java",
)

local_repository(
    name = "remote_coverage_tools",
    path = "/path/to/asynq/bazel/shims/remote_coverage_tools",
)
WS
cp "$root/docs/example/greeter.proto" "$root/docs/example/server.c" \
	"$root/docs/example/client.c" "$ws/docs/example/"
cat >"$ws/docs/example/BUILD" <<'BUILD'
load("@asynq//bazel:asynq_proto.bzl", "asynq_proto_library")

asynq_proto_library(
    name = "greeter_proto",
    srcs = ["greeter.proto"],
)

cc_binary(
    name = "server",
    srcs = ["server.c"],
    deps = [
        ":greeter_proto",
        "@asynq//framework:asynq",
        "@asynq//framework/serve",
    ],
)

cc_binary(
    name = "client",
    srcs = ["client.c"],
    deps = [
        ":greeter_proto",
        "@asynq//framework:asynq",
    ],
)
BUILD
: >"$ws/BUILD"

echo "external: building the guide's service in $ws"
(cd "$ws" && bazel --output_base="$work/ob" build --color=no --curses=no \
	//docs/example:server //docs/example:client) ||
	fail "the scratch workspace does not build"
bin="$(cd "$ws" && bazel --output_base="$work/ob" info bazel-bin 2>/dev/null)"

port=
for try in $(seq 1 20); do
	p=$((20000 + (RANDOM * 7 + try) % 12000))
	: >"$work/server.out"
	"$bin/docs/example/server" --listen "tcp://127.0.0.1:$p" \
		>"$work/server.out" 2>"$work/server.err" &
	server_pid=$!
	for _ in $(seq 1 500); do
		grep -q "listening" "$work/server.out" && break
		kill -0 "$server_pid" 2>/dev/null || break
		sleep 0.01
	done
	if grep -q "listening" "$work/server.out"; then
		port=$p
		break
	fi
	wait "$server_pid" || true
	server_pid=
done
[[ -n "$port" ]] || fail "the server did not start: $(cat "$work/server.err")"

"$bin/docs/example/client" --connect "tcp://127.0.0.1:$port" \
	>"$work/client.out" || fail "the client failed: $(cat "$work/client.out")"
want="$(awk -v marker="<!-- output of the client -->" '
	$0 == marker { want = 1; next }
	want && /^```/ { if (open) exit; open = 1; next }
	open { print }' "$root/docs/write-a-service.md")"
diff -u <(echo "$want") "$work/client.out" ||
	fail "the client's output differs from the guide's"
kill -INT "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=
((status == 0)) || fail "the server exited $status"
echo "external: PASS: built in a workspace of its own against @asynq, served" \
	"and called on port $port"
