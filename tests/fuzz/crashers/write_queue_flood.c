/* SPDX-License-Identifier: MIT */
/*
 * Reproducer (not a test): a client that writes frames and never reads what
 * the server answers. The fuzz server (fuzz_wire.c) answers each PING with
 * a PONG and each request with a reply, queues them on the connection, and
 * goes on reading: nothing bounds a connection's write queue, so its memory
 * grows with what the client writes. Prints the growth of this process's
 * resident memory (the server runs in it) and exits 1 when it is over
 * LIMIT_MB, 0 when it stayed under it:
 *
 *   bazel run //tests/fuzz:write_queue_flood -- [MiB to write] [ping|mirror]
 *
 * (16 MiB of empty PINGs by default). Measured under ASan on the branch
 * that introduced the framing: 64 MiB of PINGs made the server hold
 * ~4.8 GiB of heap (about 75 bytes per byte written: a 256-byte buffer and
 * a write record for each 5-byte PONG); 64 MiB of 1 KiB Mirror requests,
 * ~128 MiB of replies.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "tests/fuzz/fuzz_service.h"
#include "tests/fuzz/fuzz_wire.h"

/* Growth that counts as unbounded for the default 16 MiB written. */
#define LIMIT_MB 256

static size_t
rss_mb(void)
{
	FILE *f = fopen("/proc/self/statm", "r");
	unsigned long size = 0, rss = 0;
	if (f == NULL)
		return 0;
	if (fscanf(f, "%lu %lu", &size, &rss) != 2)
		rss = 0;
	fclose(f);
	return (size_t)rss * (size_t)sysconf(_SC_PAGESIZE) >> 20;
}

int
main(int argc, char **argv)
{
	size_t mb = argc > 1 ? (size_t)atoi(argv[1]) : 16;
	bool mirror = argc > 2 && strcmp(argv[2], "mirror") == 0;
	fuzz_server fs;
	fuzz_server_start(&fs, "flood");
	fuzz_conn c;
	char why[160];
	if (fuzz_conn_open(&c, &fs, 5000, why, sizeof(why)) != 0) {
		fprintf(stderr, "write_queue_flood: %s\n", why);
		return 2;
	}
	/* A 64 KiB block of frames: empty PINGs, or requests of one Mirror
	 * call with a 1000-byte field, whose reply is as big. */
	uint8_t body[2048];
	size_t bl = 0;
	if (mirror) {
		static uint8_t blob[1000];
		Asynq__Fuzz__Leaf leaf = ASYNQ__FUZZ__LEAF__INIT;
		leaf.by = (ProtobufCBinaryData){ sizeof(blob), blob };
		uint8_t lb[1100];
		size_t ll = asynq__fuzz__leaf__pack(&leaf, lb);
		Asynq__Rpc__Call call = ASYNQ__RPC__CALL__INIT;
		call.method_id = ASYNQ__FUZZ__FUZZ__ASYNQ_METHOD_MIRROR + 1;
		call.call_id = 1;
		call.payload = (ProtobufCBinaryData){ ll, lb };
		Asynq__Rpc__Call *cp = &call;
		Asynq__Rpc__Request rq = ASYNQ__RPC__REQUEST__INIT;
		rq.n_calls = 1;
		rq.calls = &cp;
		bl = asynq__rpc__request__pack(&rq, body);
	}
	static uint8_t block[65536];
	size_t n = 0;
	while (n + FUZZ_FRAME_HDR + bl <= sizeof(block)) {
		fuzz_frame_hdr(block + n,
		    mirror ? FUZZ_FRAME_REQUEST : FUZZ_FRAME_PING,
		    (uint32_t)bl);
		memcpy(block + n + FUZZ_FRAME_HDR, body, bl);
		n += FUZZ_FRAME_HDR + bl;
	}
	size_t before = rss_mb(), sent = 0;
	while (sent < mb << 20 && fuzz_conn_write(&c, block, n) == 0)
		sent += n;
	sleep(1); /* the server reads what is left in the socket */
	size_t grew = rss_mb() - before;
	printf("wrote %zu MiB of %s and read nothing: resident memory grew "
	       "by %zu MiB\n",
	    sent >> 20, mirror ? "Mirror requests" : "PINGs", grew);
	fuzz_conn_close(&c);
	fuzz_server_stop(&fs);
	return grew > LIMIT_MB ? 1 : 0;
}
