#!/bin/sh
# SPDX-License-Identifier: MIT
# Checks that the committed seed corpus is what make_corpus writes now:
#   corpus_check.sh MAKE_CORPUS CORPUS_DIR
# Fails listing the differences; rebuild with tests/fuzz/run.sh --corpus.
set -eu
gen="$1"
corpus="$2"
out="${TEST_TMPDIR:-$(mktemp -d)}/corpus"
"$gen" "$out" >/dev/null
if diff -r "$corpus" "$out"; then
	echo "corpus up to date: $(find "$out" -type f | wc -l) files"
else
	echo "tests/fuzz/corpus differs from make_corpus's output;" \
	    "rebuild it with tests/fuzz/run.sh --corpus" >&2
	exit 1
fi
