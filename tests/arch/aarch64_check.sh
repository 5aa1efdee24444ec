#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
#
# Checks the coroutine context switch of both supported instruction sets with
# one program, tests/arch/switch_check.c: cross-compiled for aarch64 with
# framework/arch/aarch64/switch.S and run under qemu-user, then compiled
# natively for x86-64 with framework/arch/x86_64/switch.S. Outside Bazel: the
# workspace's toolchain has no cross compiler.
#
# Usage: tests/arch/aarch64_check.sh [--install]
#   (CROSS_CC, QEMU and SYSROOT override the aarch64 tools' names.)
#   --install  apt-get install the cross compiler and qemu-user if missing
#              (needs root and Debian's archive). Without it, a machine
#              lacking them skips the aarch64 half: "skipped: no aarch64
#              toolchain" and exit 0.
# Exits non-zero when a build or a check fails.
set -euo pipefail

cd "$(dirname "$0")/../.."

install=0
for arg in "$@"; do
	case "$arg" in
	--install) install=1 ;;
	-h | --help)
		sed -n '3,16p' "$0" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "unknown argument: $arg" >&2
		exit 2
		;;
	esac
done

CROSS_CC=${CROSS_CC:-aarch64-linux-gnu-gcc}
QEMU=${QEMU:-qemu-aarch64}
SYSROOT=${SYSROOT:-/usr/aarch64-linux-gnu}
CFLAGS=(-std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -Werror
	-Iframework/include -I. -Iframework/arch)
SRCS=(framework/core/*.c framework/testing/debug.c tests/arch/switch_check.c)

have_cross() {
	command -v "$CROSS_CC" >/dev/null 2>&1 &&
		command -v "$QEMU" >/dev/null 2>&1 &&
		[ -d "$SYSROOT/lib" ]
}

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

status=0

# run_check NAME CMD...: runs a built check, echoing its output, and records
# a failure if it exits non-zero or prints no final count line.
run_check() {
	local name=$1 log="$out/$1.log" rc=0
	shift
	echo "== $name: $*"
	"$@" >"$log" 2>&1 || rc=$?
	cat "$log"
	if [ "$rc" -ne 0 ] || ! tail -n 1 "$log" | grep -Eq '^[0-9]+ passed, 0 failed$'; then
		echo "== $name: FAILED (exit $rc)"
		status=1
	else
		echo "== $name: ok"
	fi
}

# ---- aarch64, under qemu ---------------------------------------------------
if ! have_cross && [ "$install" -eq 1 ]; then
	echo "== installing the aarch64 cross toolchain and qemu-user"
	sudo=
	[ "$(id -u)" -eq 0 ] || sudo=sudo
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq \
		gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user
fi
if have_cross; then
	echo "== aarch64: building with $($CROSS_CC -dumpfullversion)"
	if "$CROSS_CC" "${CFLAGS[@]}" "${SRCS[@]}" \
		framework/arch/aarch64/switch.S \
		-o "$out/switch_check.aarch64" -lm -lpthread; then
		run_check aarch64 "$QEMU" -L "$SYSROOT" \
			"$out/switch_check.aarch64"
	else
		echo "== aarch64: build FAILED"
		status=1
	fi
else
	echo "skipped: no aarch64 toolchain"
fi

# ---- x86-64, natively --------------------------------------------------------
if [ "$(uname -m)" = x86_64 ] && command -v gcc >/dev/null 2>&1; then
	echo "== x86_64: building with gcc $(gcc -dumpfullversion)"
	if gcc "${CFLAGS[@]}" "${SRCS[@]}" framework/arch/x86_64/switch.S \
		-o "$out/switch_check.x86_64" -lm -lpthread; then
		run_check x86_64 "$out/switch_check.x86_64"
	else
		echo "== x86_64: build FAILED"
		status=1
	fi
else
	echo "skipped: not an x86-64 host with gcc"
fi

exit "$status"
