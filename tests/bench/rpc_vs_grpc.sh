#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# tests/bench/rpc_vs_grpc.sh [FLAGS]: the RPC benchmark with its gRPC C++
# peer in the same run. It installs what is missing (bazel/setup, then
# tests/bench/peers/grpc/setup: Debian's gRPC C++), builds the peer with make
# into $GRPC_PEER_OUT (default ~/.cache/asynq/grpc-peer), and runs
# `bazel run -c opt //tests/bench:rpc -- --grpc-peer DIR FLAGS` (FLAGS:
# --quick, --rounds N, --seconds S). $BAZEL is the bazel command, e.g.
# BAZEL="bazel --output_base=/tmp/bazel-bench".
set -euo pipefail

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
read -ra bazel <<<"${BAZEL:-bazel}"
out=${GRPC_PEER_OUT:-${XDG_CACHE_HOME:-$HOME/.cache}/asynq/grpc-peer}

bazel/setup
tests/bench/peers/grpc/setup
make -s -j"$(nproc)" -C tests/bench/peers/grpc O="$out"
exec "${bazel[@]}" run -c opt //tests/bench:rpc -- --grpc-peer "$out" "$@"
