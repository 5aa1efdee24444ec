#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# Runs check_manifests.py (Debian's python3 and python3-yaml; bazel/setup
# installs them) on the manifests beside it.
set -euo pipefail
dir=${TEST_SRCDIR:-$(dirname "$0")/../..}/${TEST_WORKSPACE:-asynq}/examples/k8s
[ -d "$dir" ] || dir=$(dirname "$0")
exec python3 "$dir/check_manifests.py"
