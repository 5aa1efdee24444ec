/* SPDX-License-Identifier: MIT */
/*
 * protoc-gen-asynq: the protoc plugin that generates asynq's C for the
 * services of .proto files (gen.c). protoc runs it with a
 * CodeGeneratorRequest on standard input and reads a CodeGeneratorResponse
 * from standard output:
 *
 *   protoc --plugin=protoc-gen-asynq=PATH -I. -I/usr/include \
 *       --asynq_out=DIR file.proto
 *
 * Problems with the .proto files are reported in the response, and protoc
 * prints them; a non-zero exit means the plugin itself failed (bad input,
 * no memory, an I/O error), with a message on standard error.
 */
#include <stdio.h>
#include <stdlib.h>

#include "gen.h"

/* read_all reads f to its end into a malloc'd buffer. */
static int
read_all(FILE *f, uint8_t **datap, size_t *lenp)
{
	uint8_t *data = NULL, *n;
	size_t len = 0, cap = 0, got;

	for (;;) {
		if (len == cap) {
			cap = cap ? cap * 2 : 65536;
			if ((n = realloc(data, cap)) == NULL) {
				free(data);
				return -1;
			}
			data = n;
		}
		got = fread(data + len, 1, cap - len, f);
		len += got;
		if (got == 0)
			break;
	}
	if (ferror(f)) {
		free(data);
		return -1;
	}
	*datap = data;
	*lenp = len;
	return 0;
}

int
main(void)
{
	Google__Protobuf__Compiler__CodeGeneratorRequest *req;
	Google__Protobuf__Compiler__CodeGeneratorResponse *resp;
	asynqi_codegen *g;
	uint8_t *in, *out;
	size_t len, size;
	int rc = 1;

	if (read_all(stdin, &in, &len) != 0) {
		fprintf(stderr,
		    "protoc-gen-asynq: cannot read standard "
		    "input\n");
		goto fail_read;
	}
	req = google__protobuf__compiler__code_generator_request__unpack(NULL,
	    len, in);
	if (req == NULL) {
		fprintf(stderr,
		    "protoc-gen-asynq: standard input is not a "
		    "CodeGeneratorRequest; run me from protoc "
		    "(--plugin=protoc-gen-asynq=PATH "
		    "--asynq_out=DIR)\n");
		goto fail_unpack;
	}
	if (asynqi_codegen_run(req, &resp, &g) != 0) {
		fprintf(stderr, "protoc-gen-asynq: out of memory\n");
		goto fail_run;
	}
	size =
	    google__protobuf__compiler__code_generator_response__get_packed_size(
	        resp);
	if ((out = malloc(size ? size : 1)) == NULL) {
		fprintf(stderr, "protoc-gen-asynq: out of memory\n");
		goto fail_out;
	}
	google__protobuf__compiler__code_generator_response__pack(resp, out);
	if (fwrite(out, 1, size, stdout) != size || fflush(stdout) != 0) {
		fprintf(stderr,
		    "protoc-gen-asynq: cannot write standard "
		    "output\n");
		goto fail_write;
	}
	rc = 0;

fail_write:
	free(out);
fail_out:
	asynqi_codegen_free(g);
fail_run:
	google__protobuf__compiler__code_generator_request__free_unpacked(req,
	    NULL);
fail_unpack:
	free(in);
fail_read:
	return rc;
}
