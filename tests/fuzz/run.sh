#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Builds the RPC fuzz targets with clang's libFuzzer, ASan and UBSan, outside
# Bazel (whose default toolchain is gcc), and runs them on a copy of the
# committed seed corpus (the repository's corpus is never written).
#
#   tests/fuzz/run.sh [SECONDS]            fuzz rpc_server, rpc_stream, then
#                                          rpc_decode (the codec against
#                                          protobuf-c), SECONDS each (60; CI)
#   tests/fuzz/run.sh -t TARGET [SECONDS]  rpc_server, rpc_stream, rpc_decode
#                                          or all (all: each for SECONDS)
#   tests/fuzz/run.sh -t TARGET -r FILE    run one input (a reproducer) once
#   tests/fuzz/run.sh --replay             run every seed once, all targets
#   tests/fuzz/run.sh --corpus             rebuild tests/fuzz/corpus
#
# -o DIR keeps the build, corpus copies, logs and artifacts in DIR (default:
# a new directory under ${TMPDIR:-/tmp}, printed). Extra libFuzzer flags may
# follow `--`, e.g. `-- -seed=1`. BAZEL names the Bazel command for the
# generated code (default `bazel`; e.g. BAZEL="bazel --output_base=DIR").
#
# Exit status 0 when every run finished clean, 1 when one found a crash, a
# leak or a timeout (its reproducer's path is printed), 2 for a usage or build
# error. The last line is "N passed, N failed", one per target run.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SELF="$ROOT/tests/fuzz/run.sh"
cd "$ROOT"

SECONDS_EACH=60
TARGETS=(rpc_server rpc_stream rpc_decode)
ALL=(rpc_server rpc_stream rpc_decode)
read -r -a BAZEL_CMD <<<"${BAZEL:-bazel}"
WORK=""
REPRO=""
MODE=fuzz
EXTRA=()

usage() {
	sed -n '3,23p' "$SELF" | sed 's/^# \{0,1\}//' >&2
	exit 2
}

while [ $# -gt 0 ]; do
	case "$1" in
	-t)
		[ $# -ge 2 ] || usage
		case "$2" in
		all) TARGETS=("${ALL[@]}") ;;
		rpc_server | rpc_stream | rpc_decode) TARGETS=("$2") ;;
		*) usage ;;
		esac
		shift 2
		;;
	-r)
		[ $# -ge 2 ] || usage
		REPRO="$(cd "$(dirname "$2")" && pwd)/$(basename "$2")"
		MODE=repro
		shift 2
		;;
	-o)
		[ $# -ge 2 ] || usage
		WORK="$2"
		shift 2
		;;
	--replay) MODE=replay; TARGETS=("${ALL[@]}"); shift ;;
	--corpus) MODE=corpus; shift ;;
	--) shift; EXTRA=("$@"); break ;;
	-h | --help) usage ;;
	[0-9]*) SECONDS_EACH="$1"; shift ;;
	*) usage ;;
	esac
done

if [ "$MODE" = corpus ]; then
	"${BAZEL_CMD[@]}" run //tests/fuzz:make_corpus -- "$ROOT/tests/fuzz/corpus"
	exit $?
fi

# ---- Build --------------------------------------------------------------------

if ! "${BAZEL_CMD[@]}" build //proto/asynq:rpc_c //proto/asynq:health_proto_pb_c \
    //proto/asynq:health_proto_asynq_gen //proto/asynq:reflection_proto_pb_c \
    //proto/asynq:reflection_proto_asynq_gen //proto/asynq:descriptor_c \
    //tests/fuzz:fuzz_proto; then
	echo "run.sh: bazel build of the generated protobuf code failed" >&2
	exit 2
fi
BIN="$("${BAZEL_CMD[@]}" info bazel-bin 2>/dev/null)"

if [ -z "$WORK" ]; then
	WORK="$(mktemp -d "${TMPDIR:-/tmp}/asynq-fuzz.XXXXXX")"
fi
mkdir -p "$WORK"
WORK="$(cd "$WORK" && pwd)"
echo "run.sh: work directory $WORK"

# The generated sources, copied so a concurrent bazel build cannot change
# them under the compiler.
GEN="$WORK/gen"
rm -rf "$GEN"
mkdir -p "$GEN/proto/asynq/wkt/google/protobuf" "$GEN/tests/fuzz"
cp "$BIN"/proto/asynq/rpc.pb-c.[ch] "$BIN"/proto/asynq/options.pb-c.h \
    "$BIN"/proto/asynq/health.pb-c.[ch] "$BIN"/proto/asynq/health.asynq.[ch] \
    "$BIN"/proto/asynq/reflection.pb-c.[ch] \
    "$BIN"/proto/asynq/reflection.asynq.[ch] "$GEN/proto/asynq/"
cp "$BIN"/proto/asynq/wkt/google/protobuf/descriptor.pb-c.[ch] \
    "$GEN/proto/asynq/wkt/google/protobuf/"
cp "$BIN"/tests/fuzz/fuzz*.pb-c.[ch] "$BIN"/tests/fuzz/fuzz*.asynq.[ch] \
    "$GEN/tests/fuzz/"

CC="${CC_FUZZ:-clang}"
CFLAGS=(-g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
	-fno-omit-frame-pointer -std=c11 -D_GNU_SOURCE
	-Wall -Wextra -Wno-unused-parameter
	-Iframework/include -I. -I"$GEN" -I"$GEN/proto/asynq/wkt" -Iframework/arch)
LIBS=(-lnng -lmbedtls -lmbedx509 -lmbedcrypto -lprotobuf-c -lpthread)

# Every source of the framework's folders (framework/rpc/*.c is the
# connection layer, framing, dedup table, metadata, envelope codec, client
# and server), the generated code, and what the targets share.
# fuzz_mutator.c's mutator is weak: rpc_stream's own replaces it.
COMMON=(framework/core/*.c framework/arch/x86_64/switch.S framework/runtime/*.c
	framework/rpc/*.c "$GEN"/proto/asynq/rpc.pb-c.c
	"$GEN"/proto/asynq/health.pb-c.c "$GEN"/proto/asynq/health.asynq.c
	"$GEN"/proto/asynq/reflection.pb-c.c "$GEN"/proto/asynq/reflection.asynq.c
	"$GEN"/proto/asynq/wkt/google/protobuf/descriptor.pb-c.c
	"$GEN"/tests/fuzz/*.pb-c.c
	"$GEN"/tests/fuzz/*.asynq.c tests/fuzz/fuzz_service.c
	tests/fuzz/fuzz_mutator.c tests/fuzz/fuzz_wire.c)

OBJ="$WORK/obj"
rm -rf "$OBJ"
mkdir -p "$OBJ"
compile() {
	local src="$1" obj
	obj="$OBJ/$(echo "${src#"$WORK"/}" | tr '/' '_').o"
	"$CC" "${CFLAGS[@]}" -c "$src" -o "$obj"
}
echo "run.sh: compiling ${#COMMON[@]} sources with $CC"
pids=()
failed=0
jobs_max="$(nproc)"
for src in "${COMMON[@]}" tests/fuzz/fuzz_rpc_server.c \
    tests/fuzz/fuzz_rpc_stream.c tests/fuzz/fuzz_rpc_decode.c; do
	compile "$src" &
	pids+=($!)
	while [ "$(jobs -rp | wc -l)" -ge "$jobs_max" ]; do
		sleep 0.1
	done
done
for p in "${pids[@]}"; do
	wait "$p" || failed=1
done
if [ "$failed" != 0 ]; then
	echo "run.sh: compile failed" >&2
	echo "0 passed, ${#TARGETS[@]} failed"
	exit 2
fi
common_objs=()
for src in "${COMMON[@]}"; do
	common_objs+=("$OBJ/$(echo "${src#"$WORK"/}" | tr '/' '_').o")
done
for t in "${TARGETS[@]}"; do
	if ! "$CC" "${CFLAGS[@]}" -o "$WORK/$t" "${common_objs[@]}" \
	    "$OBJ/tests_fuzz_fuzz_$t.c.o" "${LIBS[@]}"; then
		echo "run.sh: link of $t failed" >&2
		echo "0 passed, ${#TARGETS[@]} failed"
		exit 2
	fi
done

# ---- Run ------------------------------------------------------------------------

export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:detect_stack_use_after_return=0:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
# libFuzzer's leak check after each input with new coverage costs a heap
# scan, and the server keeps memory across inputs (duplicate detection), so
# early in a run it would check nearly every input and run at a tenth of
# the speed. LeakSanitizer still checks at exit, after the harness has
# closed the server; a leak found there is traced to its input afterwards
# by replaying the corpus with the per-input check on.
# No single allocation may reach 64 MiB (the server's limits are a few
# hundred KiB; a length claim must not turn into an allocation).
FLAGS=(-rss_limit_mb=2048 -malloc_limit_mb=64 -max_len=65536 -timeout=30
	-detect_leaks=0 -dict="$ROOT/tests/fuzz/rpc.dict" -print_final_stats=1)

passed=0
nfailed=0
for t in "${TARGETS[@]}"; do
	log="$WORK/$t.log"
	art="$WORK/artifacts/$t/"
	mkdir -p "$art"
	case "$MODE" in
	repro)
		echo "run.sh: $t on $REPRO"
		set +e
		"$WORK/$t" "${FLAGS[@]}" -artifact_prefix="$art" "${EXTRA[@]}" \
		    "$REPRO" 2>&1 | tee "$log"
		rc=${PIPESTATUS[0]}
		set -e
		;;
	replay)
		echo "run.sh: $t: every seed once"
		set +e
		"$WORK/$t" "${FLAGS[@]}" -artifact_prefix="$art" -runs=0 \
		    "${EXTRA[@]}" "$ROOT/tests/fuzz/corpus/$t" >"$log" 2>&1
		rc=$?
		set -e
		;;
	fuzz)
		corpus="$WORK/corpus/$t"
		mkdir -p "$corpus"
		cp -r "$ROOT/tests/fuzz/corpus/$t/." "$corpus/"
		echo "run.sh: fuzzing $t for ${SECONDS_EACH}s on $corpus (log $log)"
		set +e
		# The server closes at exit; a run that cannot stop counts
		# as a hang.
		timeout -k 10 $((SECONDS_EACH + 180)) "$WORK/$t" "${FLAGS[@]}" \
		    -max_total_time="$SECONDS_EACH" -artifact_prefix="$art" \
		    "${EXTRA[@]}" "$corpus" >"$log" 2>&1
		rc=$?
		set -e
		;;
	esac
	done_line="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)"
	[ -n "$done_line" ] && echo "run.sh: $t: $done_line"
	grep -E '^(stat::|rpc_(server|stream) fuzz: [0-9]+ inputs)' "$log" |
	    sed "s/^/run.sh: $t: /" || true
	if [ "$rc" = 0 ]; then
		passed=$((passed + 1))
		continue
	fi
	nfailed=$((nfailed + 1))
	[ "$rc" = 124 ] && echo "run.sh: $t did not stop within its time" >&2
	grep -E 'ERROR: (AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|libFuzzer)|SUMMARY|runtime error|rpc_(server|stream|decode) fuzz: |ALARM' \
	    "$log" | head -20 >&2 || true
	repro="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)"
	# A leak found at exit comes with the empty input as its "unit".
	if [ "$MODE" = fuzz ] && grep -q 'ERROR: LeakSanitizer' "$log" &&
	    grep -qE '^Done [0-9]+ runs' "$log"; then
		echo "run.sh: $t leaked; replaying its corpus to find the input" >&2
		"$WORK/$t" "${FLAGS[@]}" -detect_leaks=1 -runs=0 \
		    -artifact_prefix="$art" "$WORK/corpus/$t" \
		    >"$log.leak" 2>&1 || true
		repro="$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' \
		    "$log.leak" | tail -1)"
		[ -n "$repro" ] || echo "run.sh: no single input leaks;" \
		    "the leak needs a sequence (see $log)" >&2
	fi
	if [ -n "$repro" ]; then
		echo "run.sh: $t: reproducer: $repro" >&2
		echo "run.sh: reproduce with: tests/fuzz/run.sh -t $t -r $repro" >&2
	fi
	echo "run.sh: $t: full log: $log" >&2
done
echo "$passed passed, $nfailed failed"
[ "$nfailed" = 0 ]
