#!/bin/bash
# SPDX-License-Identifier: MIT
#
# Every C file and header of the tree is as clang-format (.clang-format)
# writes it. Prints the files that drift, with clang-format's first
# complaints, and exits 1 if any does; `clang-format -i FILE` fixes one.
# With --install, installs Debian's clang-format first if it is missing
# (CI does).
set -euo pipefail

cd "$(git rev-parse --show-toplevel)"
if ! command -v clang-format >/dev/null && [[ "${1:-}" == --install ]]; then
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q clang-format \
		</dev/null >/dev/null || {
		apt-get update -q >/dev/null &&
			DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
				clang-format </dev/null >/dev/null
	}
fi
command -v clang-format >/dev/null || {
	echo "format: clang-format is not installed (--install installs it)" >&2
	exit 2
}
bad=0
n=0
while IFS= read -r f; do
	n=$((n + 1))
	if ! out=$(clang-format --dry-run --Werror "$f" 2>&1); then
		bad=$((bad + 1))
		echo "format: $f drifts from .clang-format:" >&2
		echo "$out" | head -6 >&2
	fi
done < <(git ls-files '*.c' '*.h' | grep -v '^bazel/shims/')
if ((bad > 0)); then
	echo "format: $bad of $n files drift (clang-format -i FILE fixes one)" >&2
	exit 1
fi
echo "format: $n files as clang-format writes them"
