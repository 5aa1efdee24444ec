#!/bin/sh
# SPDX-License-Identifier: MIT
#
# Runs the DataLoader peer benchmark (bench.js beside this script) with
# Node, installing dataloader@2 from the npm registry into a cache directory
# the first time: $ASYNQ_BENCH_CACHE, else $XDG_CACHE_HOME/asynq, else
# ~/.cache/asynq, under dataloader2/. tests/bench/core.c runs it and prints
# its figures beside asynq's.
#
# Prints bench.js's lines; when Node, npm or the package cannot be had,
# prints one line "unavailable: <why>" and exits 2.
set -u

here=$(cd "$(dirname "$0")" && pwd)
cache=${ASYNQ_BENCH_CACHE:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/asynq}/dataloader2

if ! command -v node >/dev/null 2>&1; then
	echo "unavailable: node is not on PATH"
	exit 2
fi
if [ ! -f "$cache/node_modules/dataloader/package.json" ]; then
	if ! command -v npm >/dev/null 2>&1; then
		echo "unavailable: dataloader@2 is not in $cache and npm is not on PATH"
		exit 2
	fi
	mkdir -p "$cache" || {
		echo "unavailable: cannot make $cache"
		exit 2
	}
	if ! npm install --prefix "$cache" --no-audit --no-fund --silent \
		--no-package-lock dataloader@2 >"$cache/npm.log" 2>&1; then
		echo "unavailable: npm install dataloader@2 failed (see $cache/npm.log)"
		exit 2
	fi
fi
NODE_PATH="$cache/node_modules" exec node "$here/bench.js"
