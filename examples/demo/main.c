/* SPDX-License-Identifier: MIT */
/*
 * The demo the README runs: `bazel run -c opt //examples/demo` (add
 * `-- --help` for the flags). Everything is in demo.c, which the smoke test
 * runs too.
 */
#include "examples/demo/demo.h"

int
main(int argc, char **argv)
{
	return demo_main(argc, argv, NULL);
}
