#!/bin/bash
# SPDX-License-Identifier: MIT
#
# Checks docs/write-a-service.md against docs/example, so the guide stays
# true:
# - every c, proto and python (BUILD) code block of the guide is quoted
#   verbatim from a file of docs/example (or, for section 13, from the
#   users service it shows);
# - its `bazel run //docs/example:NAME -- ARGS` commands run (as the built
#   programs, on a free port instead of the guide's 7100), the server is
#   stopped with SIGINT as Ctrl-C would, and each program's output is
#   exactly what the guide shows; the server exits 0;
# - its `bazel run //framework/cli:asynq -- ARGS` commands (the command-line
#   client, with a pipe into it where the guide has one) run against a
#   second run of the server, and what each prints (standard output, then
#   standard error) is what the guide shows after "output of asynq N";
# - its other commands are `bazel build` and `bazel test` of //docs, which
#   building and running this test does.
set -euo pipefail

root="${TEST_SRCDIR:?run with bazel test}/${TEST_WORKSPACE:-asynq}"
guide="$root/docs/write-a-service.md"
ex="$root/docs/example"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
server_pid=

fail() {
	echo "FAIL: $*" >&2
	exit 1
}

cleanup() {
	if [[ -n "$server_pid" ]]; then
		kill -KILL "$server_pid" 2>/dev/null || true
		wait "$server_pid" 2>/dev/null || true
	fi
}
trap cleanup EXIT

# Writes the guide's fenced blocks of language $1 to $tmp/$1.N, one file
# each; prints how many.
blocks() {
	awk -v lang="$1" -v out="$tmp/$1" '
		/^```/ {
			if (open) { open = 0; if (f != "") close(f); f = ""; next }
			open = 1
			if (substr($0, 4) == lang) { n++; f = out "." n; printf "" > f }
			next
		}
		open && f != "" { print > f }
		END { print n + 0 }' "$guide"
}

# Prints the text block that follows the line "<!-- $1 -->".
output_block() {
	awk -v marker="<!-- $1 -->" '
		$0 == marker { want = 1; next }
		want && /^```/ { if (open) exit; open = 1; next }
		open { print }' "$guide"
}

# ---- Code blocks are quotes ---------------------------------------------

quoted=0
for spec in c:server.c,client.c,../../services/users/users.c \
	proto:greeter.proto python:BUILD; do
	lang="${spec%%:*}"
	files="${spec#*:}"
	n=$(blocks "$lang")
	for ((i = 1; i <= n; i++)); do
		block="$(cat "$tmp/$lang.$i")"
		found=
		for f in ${files//,/ }; do
			if [[ "$(cat "$ex/$f")" == *"$block"* ]]; then
				found=$f
			fi
		done
		[[ -n "$found" ]] ||
			fail "$lang block $i of the guide is not in docs/example ($files):
$block"
		quoted=$((quoted + 1))
	done
done
((quoted >= 10)) || fail "only $quoted code blocks found in the guide"

# ---- Commands --------------------------------------------------------------

n=$(blocks sh)
server_args=
client_args=
asynq_cmds=()
for ((i = 1; i <= n; i++)); do
	while read -r cmd; do
		case "$cmd" in
		"bazel run //docs/example:server -- "*)
			server_args="${cmd#*-- }" ;;
		"bazel run //docs/example:client -- "*)
			client_args="${cmd#*-- }" ;;
		*"bazel run //framework/cli:asynq -- "*)
			asynq_cmds+=("$cmd") ;;
		"bazel build //docs/"* | "bazel test //docs/"*) ;;
		"") ;;
		*) fail "a command of the guide this test does not run: $cmd" ;;
		esac
	done <"$tmp/sh.$i"
done
[[ "$server_args" == *7100* && "$client_args" == *7100* ]] ||
	fail "the guide's server and client commands are not on port 7100"

# start_server starts the server on a free port: a taken port makes it exit
# at once, and then another is tried.
start_server() {
	for try in $(seq 1 20); do
		port=$((20000 + (RANDOM * 7 + try) % 12000)) # below the ephemeral ports
		: >"$tmp/server.out"
		# Job control off: bash ignores SIGINT in background jobs; the
		# server blocks it and sigwaits, which Linux still delivers.
		# shellcheck disable=SC2086
		"$ex/server" ${server_args//7100/$port} >"$tmp/server.out" \
			2>"$tmp/server.err" &
		server_pid=$!
		for _ in $(seq 1 500); do
			grep -q "listening" "$tmp/server.out" && break
			kill -0 "$server_pid" 2>/dev/null || break
			sleep 0.01
		done
		grep -q "listening" "$tmp/server.out" && break
		wait "$server_pid" || true
		server_pid=
	done
}

start_server
[[ -n "$server_pid" ]] || fail "the server did not start: $(cat "$tmp/server.err")"

diff -u <(output_block "output of the server" | sed "s/7100/$port/g") \
	"$tmp/server.out" || fail "the server's output differs from the guide's"

# shellcheck disable=SC2086
"$ex/client" ${client_args//7100/$port} >"$tmp/client.out" ||
	fail "the client failed: $(cat "$tmp/client.out")"
diff -u <(output_block "output of the client") "$tmp/client.out" ||
	fail "the client's output differs from the guide's"

kill -INT "$server_pid"
status=0
wait "$server_pid" || status=$?
server_pid=
((status == 0)) || fail "the server exited $status: $(cat "$tmp/server.err")"
diff -u <(output_block "output of the server when stopped" |
	sed "s/7100/$port/g") "$tmp/server.out" ||
	fail "the stopped server's output differs from the guide's"
# The command-line client's commands, against a server with fresh counters.
if ((${#asynq_cmds[@]} > 0)); then
	start_server
	[[ -n "$server_pid" ]] || fail "the server did not start again"
	for k in "${!asynq_cmds[@]}"; do
		line="${asynq_cmds[$k]//bazel run \/\/framework\/cli:asynq --/$root/framework/cli/asynq}"
		line="${line//7100/$port}"
		(eval "$line") >"$tmp/asynq.$k" 2>&1 || true
		diff -u <(output_block "output of asynq $((k + 1))" |
			sed "s/7100/$port/g") "$tmp/asynq.$k" ||
			fail "the output of ${asynq_cmds[$k]} differs from the guide's"
	done
	kill -INT "$server_pid"
	wait "$server_pid" || true
	server_pid=
fi
echo "PASS: $quoted code blocks quoted, ${#asynq_cmds[@]} asynq commands, commands run on port $port"
