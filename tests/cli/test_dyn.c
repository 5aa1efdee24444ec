/* SPDX-License-Identifier: MIT */
/*
 * The command-line client's codec (framework/cli/dyn.c) on every kind of
 * field of tests/cli/types.proto, against protoc-c's code for the same
 * messages: JSON encoded by the codec decodes with protoc-c to the values
 * written, bytes packed by protoc-c decode to the JSON expected (proto3's
 * mapping), both ways at the types' limits; unknown fields are skipped,
 * and bad values and bytes fail with messages that say where and why.
 */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "framework/cli/dyn.h"
#include "tests/cli/types.asynq.h"

typedef Asynq__Clitest__All all;

/* A pool with types.proto and its imports, from the embedded table. */
static asynqi_pool *
pool(void)
{
	const asynq_rpc_file_desc *f = asynq__clitest__types__asynq_desc.file;
	asynqi_pool *p = asynqi_pool_alloc();
	char err[256];
	assert_non_null(p);
	assert_string_equal(f->name, "tests/cli/types.proto");
	assert_int_equal(asynqi_pool_add(p, f->descriptor, f->descriptor_len,
	                     err, sizeof(err)),
	    0);
	/* Adding a file again keeps the first. */
	assert_int_equal(asynqi_pool_add(p, f->descriptor, f->descriptor_len,
	                     err, sizeof(err)),
	    0);
	return p;
}

/* Encodes the JSON text as All and decodes it with protoc-c. */
static all *
encode(asynqi_pool *p, const char *text)
{
	json_error_t je;
	json_t *j = json_loads(text, 0, &je);
	asynqi_bytes b = { 0 };
	char err[512];
	assert_non_null(j);
	int rv =
	    asynqi_json_encode(p, "asynq.clitest.All", j, &b, err, sizeof(err));
	if (rv != 0)
		fail_msg("encode: %s", err);
	json_decref(j);
	all *m = asynq__clitest__all__unpack(NULL, b.len, b.p);
	assert_non_null(m);
	asynqi_bytes_free(&b);
	return m;
}

/* The codec's error for the JSON text. */
static void
assert_encode_fails(asynqi_pool *p, const char *text, const char *want)
{
	json_t *j = json_loads(text, 0, NULL);
	asynqi_bytes b = { 0 };
	char err[512];
	assert_non_null(j);
	assert_int_equal(
	    asynqi_json_encode(p, "asynq.clitest.All", j, &b, err, sizeof(err)),
	    -1);
	assert_string_equal(err, want);
	json_decref(j);
	asynqi_bytes_free(&b);
}

/* Packs m with protoc-c and decodes the bytes with the codec as JSON. */
static char *
decode(asynqi_pool *p, const all *m)
{
	size_t len = asynq__clitest__all__get_packed_size(m);
	uint8_t *buf = malloc(len + 1);
	char err[512];
	assert_non_null(buf);
	asynq__clitest__all__pack(m, buf);
	json_t *j = asynqi_wire_decode(p, ".asynq.clitest.All", buf, len, err,
	    sizeof(err));
	if (j == NULL)
		fail_msg("decode: %s", err);
	char *s = json_dumps(j, JSON_COMPACT);
	json_decref(j);
	free(buf);
	return s;
}

static void
test_dyn_encodes_every_scalar_as_protoc_c_reads_it(void **state)
{
	(void)state;
	asynqi_pool *p = pool();
	all *m = encode(p,
	    "{\"fDouble\": -2.5, \"fFloat\": 0.25, "
	    "\"fInt64\": \"-9223372036854775808\", "
	    "\"fUint64\": \"18446744073709551615\", \"fInt32\": -7, "
	    "\"fFixed64\": 18446744073709551, \"fFixed32\": 4294967295, "
	    "\"fBool\": true, \"fString\": \"h\\u00e9llo\", "
	    "\"fBytes\": \"AAEC/w==\", \"fUint32\": \"4000000000\", "
	    "\"fColor\": \"GREEN\", \"fSfixed32\": -2147483648, "
	    "\"fSfixed64\": -3, \"f_sint32\": -2147483648, "
	    "\"fSint64\": \"-9223372036854775807\"}");
	assert_true(m->f_double == -2.5);
	assert_true(m->f_float == 0.25f);
	assert_true(m->f_int64 == INT64_MIN);
	assert_true(m->f_uint64 == UINT64_MAX);
	assert_int_equal(m->f_int32, -7);
	assert_true(m->f_fixed64 == 18446744073709551u);
	assert_true(m->f_fixed32 == UINT32_MAX);
	assert_true(m->f_bool);
	assert_string_equal(m->f_string, "h\xc3\xa9llo");
	assert_int_equal(m->f_bytes.len, 4);
	assert_memory_equal(m->f_bytes.data, "\x00\x01\x02\xff", 4);
	assert_true(m->f_uint32 == 4000000000u);
	assert_int_equal(m->f_color, ASYNQ__CLITEST__COLOR__GREEN);
	assert_int_equal(m->f_sfixed32, INT32_MIN);
	assert_true(m->f_sfixed64 == -3);
	assert_int_equal(m->f_sint32, INT32_MIN);
	assert_true(m->f_sint64 == -INT64_MAX);
	asynq__clitest__all__free_unpacked(m, NULL);
	asynqi_pool_free(p);
}

static void
test_dyn_encodes_repeated_maps_messages_and_oneofs(void **state)
{
	(void)state;
	asynqi_pool *p = pool();
	/* r_int64 is packed (proto3's default), r_sint32 is not; both
	 * decode with protoc-c. URL-safe base64 without padding is taken. */
	all *m = encode(p,
	    "{\"rInt64\": [1, \"-2\", 300], \"rSint32\": [-1, 0, 1], "
	    "\"rString\": [\"a\", \"\"], "
	    "\"rSub\": [{\"name\": \"x\", \"nums\": [1, 2]}, {}], "
	    "\"rColor\": [\"RED\", -1, 2], "
	    "\"mCounts\": {\"k\": 3}, "
	    "\"mSubs\": {\"-5\": {\"name\": \"neg\"}}, "
	    "\"fSub\": {\"name\": \"one\"}, \"oNum\": 9, "
	    "\"fBytes\": \"_-8\", \"fString\": null}");
	assert_int_equal(m->n_r_int64, 3);
	assert_true(
	    m->r_int64[0] == 1 && m->r_int64[1] == -2 && m->r_int64[2] == 300);
	assert_int_equal(m->n_r_sint32, 3);
	assert_int_equal(m->r_sint32[0], -1);
	assert_int_equal(m->r_sint32[2], 1);
	assert_int_equal(m->n_r_string, 2);
	assert_string_equal(m->r_string[0], "a");
	assert_string_equal(m->r_string[1], "");
	assert_int_equal(m->n_r_sub, 2);
	assert_string_equal(m->r_sub[0]->name, "x");
	assert_int_equal(m->r_sub[0]->n_nums, 2);
	assert_int_equal(m->r_sub[0]->nums[1], 2);
	assert_int_equal(m->n_r_color, 3);
	assert_int_equal(m->r_color[0], ASYNQ__CLITEST__COLOR__RED);
	assert_int_equal(m->r_color[1], ASYNQ__CLITEST__COLOR__NEGATIVE);
	assert_int_equal(m->n_m_counts, 1);
	assert_string_equal(m->m_counts[0]->key, "k");
	assert_int_equal(m->m_counts[0]->value, 3);
	assert_int_equal(m->n_m_subs, 1);
	assert_true(m->m_subs[0]->key == -5);
	assert_string_equal(m->m_subs[0]->value->name, "neg");
	assert_non_null(m->f_sub);
	assert_string_equal(m->f_sub->name, "one");
	assert_int_equal(m->pick_case, ASYNQ__CLITEST__ALL__PICK_O_NUM);
	assert_int_equal(m->o_num, 9);
	assert_int_equal(m->f_bytes.len, 2);
	assert_memory_equal(m->f_bytes.data, "\xff\xef", 2);
	asynq__clitest__all__free_unpacked(m, NULL);
	asynqi_pool_free(p);
}

static void
test_dyn_decodes_protoc_c_bytes_as_proto3_json(void **state)
{
	(void)state;
	asynqi_pool *p = pool();
	all m = ASYNQ__CLITEST__ALL__INIT;
	char *s = decode(p, &m);
	/* Nothing set: every scalar at its default, messages and oneof
	 * members left out, repeated fields empty. */
	assert_string_equal(s,
	    "{\"fDouble\":0.0,\"fFloat\":0.0,\"fInt64\":\"0\",\"fUint64\":"
	    "\"0\",\"fInt32\":0,\"fFixed64\":\"0\",\"fFixed32\":0,\"fBool\":"
	    "false,\"fString\":\"\",\"fBytes\":\"\",\"fUint32\":0,\"fColor\":"
	    "\"COLOR_UNSET\",\"fSfixed32\":0,\"fSfixed64\":\"0\",\"fSint32\":"
	    "0,\"fSint64\":\"0\",\"rInt64\":[],\"rSint32\":[],\"rString\":[],"
	    "\"rSub\":[],\"rColor\":[],\"mCounts\":{},\"mSubs\":{}}");
	free(s);

	Asynq__Clitest__Sub sub = ASYNQ__CLITEST__SUB__INIT;
	int32_t nums[] = { -1, 5 };
	sub.name = "s";
	sub.n_nums = 2;
	sub.nums = nums;
	Asynq__Clitest__Sub *subs[] = { &sub };
	int64_t r64[] = { INT64_MIN, 7 };
	int32_t rs32[] = { -3 };
	Asynq__Clitest__Color colors[] = { ASYNQ__CLITEST__COLOR__NEGATIVE,
		(Asynq__Clitest__Color)77 };
	Asynq__Clitest__All__MCountsEntry ce =
	    ASYNQ__CLITEST__ALL__MCOUNTS_ENTRY__INIT;
	ce.key = "k";
	ce.value = -4;
	Asynq__Clitest__All__MCountsEntry *ces[] = { &ce };
	Asynq__Clitest__All__MSubsEntry se =
	    ASYNQ__CLITEST__ALL__MSUBS_ENTRY__INIT;
	se.key = 12;
	se.value = &sub;
	Asynq__Clitest__All__MSubsEntry *ses[] = { &se };
	uint8_t bytes[] = { 0xfb, 0xff };
	m.f_double = INFINITY;
	m.f_float = NAN;
	m.f_int64 = -1;
	m.f_uint64 = UINT64_MAX;
	m.f_int32 = INT32_MIN;
	m.f_fixed64 = 1;
	m.f_fixed32 = UINT32_MAX;
	m.f_bool = 1;
	m.f_string = "\xc3\xa9";
	m.f_sub = &sub;
	m.f_bytes = (ProtobufCBinaryData){ 2, bytes };
	m.f_uint32 = UINT32_MAX;
	m.f_color = ASYNQ__CLITEST__COLOR__RED;
	m.f_sfixed32 = -1;
	m.f_sfixed64 = INT64_MIN;
	m.f_sint32 = INT32_MIN;
	m.f_sint64 = INT64_MIN;
	m.n_r_int64 = 2;
	m.r_int64 = r64;
	m.n_r_sint32 = 1;
	m.r_sint32 = rs32;
	m.n_r_sub = 1;
	m.r_sub = subs;
	m.n_r_color = 2;
	m.r_color = colors;
	m.n_m_counts = 1;
	m.m_counts = ces;
	m.n_m_subs = 1;
	m.m_subs = ses;
	m.pick_case = ASYNQ__CLITEST__ALL__PICK_O_TEXT;
	m.o_text = "t";
	s = decode(p, &m);
	/* An enum number the file does not name stays a number. */
	assert_string_equal(s,
	    "{\"fDouble\":\"Infinity\",\"fFloat\":\"NaN\",\"fInt64\":\"-1\","
	    "\"fUint64\":\"18446744073709551615\",\"fInt32\":-2147483648,"
	    "\"fFixed64\":\"1\",\"fFixed32\":4294967295,\"fBool\":true,"
	    "\"fString\":\"\xc3\xa9\",\"fSub\":{\"name\":\"s\",\"nums\":[-1,"
	    "5]},\"fBytes\":\"+/8=\",\"fUint32\":4294967295,\"fColor\":"
	    "\"RED\",\"fSfixed32\":-1,\"fSfixed64\":\"-9223372036854775808\","
	    "\"fSint32\":-2147483648,\"fSint64\":\"-9223372036854775808\","
	    "\"rInt64\":[\"-9223372036854775808\",\"7\"],\"rSint32\":[-3],"
	    "\"rString\":[],\"rSub\":[{\"name\":\"s\",\"nums\":[-1,5]}],"
	    "\"rColor\":[\"NEGATIVE\",77],\"mCounts\":{\"k\":-4},\"mSubs\":{"
	    "\"12\":{\"name\":\"s\",\"nums\":[-1,5]}},\"oText\":\"t\"}");
	free(s);
	asynqi_pool_free(p);
}

static void
test_dyn_skips_unknown_fields_and_refuses_bad_bytes(void **state)
{
	(void)state;
	asynqi_pool *p = pool();
	char err[512];
	/* Field 99 (varint) and 98 (bytes), which Sub does not declare,
	 * around name = "ab". */
	const uint8_t known[] = { 0x98, 0x06, 0x05, 0x0a, 0x02, 'a', 'b', 0x92,
		0x06, 0x01, 'z' };
	json_t *j = asynqi_wire_decode(p, "asynq.clitest.Sub", known,
	    sizeof(known), err, sizeof(err));
	assert_non_null(j);
	char *s = json_dumps(j, JSON_COMPACT);
	assert_string_equal(s, "{\"name\":\"ab\",\"nums\":[]}");
	free(s);
	json_decref(j);

	const uint8_t truncated[] = { 0x0a, 0x05, 'a' };
	assert_null(asynqi_wire_decode(p, "asynq.clitest.Sub", truncated,
	    sizeof(truncated), err, sizeof(err)));
	assert_string_equal(err, "the bytes are not a valid Sub message");
	const uint8_t wrong_type[] = { 0x0d, 1, 2, 3, 4 }; /* name, 32-bit */
	assert_null(asynqi_wire_decode(p, "asynq.clitest.Sub", wrong_type,
	    sizeof(wrong_type), err, sizeof(err)));
	assert_string_equal(err,
	    "field name: wire type 5 does not fit its type string");
	const uint8_t not_utf8[] = { 0x0a, 0x01, 0xff };
	assert_null(asynqi_wire_decode(p, "asynq.clitest.Sub", not_utf8,
	    sizeof(not_utf8), err, sizeof(err)));
	assert_string_equal(err, "field name: the string is not valid UTF-8");
	const uint8_t group[] = { 0x0b };
	assert_null(asynqi_wire_decode(p, "asynq.clitest.Sub", group,
	    sizeof(group), err, sizeof(err)));
	assert_string_equal(err,
	    "message Sub: wire type 3 (a group) is not supported");
	assert_null(asynqi_wire_decode(p, "asynq.clitest.Nope", known,
	    sizeof(known), err, sizeof(err)));
	assert_string_equal(err,
	    "message asynq.clitest.Nope is not in the server's descriptors");
	asynqi_pool_free(p);
}

static void
test_dyn_bad_values_fail_in_words(void **state)
{
	(void)state;
	asynqi_pool *p = pool();
	assert_encode_fails(p, "{\"fInt32\": 2147483648}",
	    "field fInt32: 2.14748e+09 is not a whole number in the range of "
	    "int32");
	assert_encode_fails(p, "{\"fUint64\": -1}",
	    "field fUint64: -1 is not a whole number in the range of uint64");
	assert_encode_fails(p, "{\"fInt64\": \"12x\"}",
	    "field fInt64: expects an integer, got the string \"12x\"");
	assert_encode_fails(p, "{\"fBool\": 1}",
	    "field fBool: expects true or false, got an integer");
	assert_encode_fails(p, "{\"fColor\": \"BLUE\"}",
	    "field fColor: asynq.clitest.Color has no value named \"BLUE\"");
	assert_encode_fails(p, "{\"fBytes\": \"a*b\"}",
	    "field fBytes: expects bytes as a base64 string, got a string "
	    "that is not base64");
	assert_encode_fails(p, "{\"fDouble\": \"fast\"}",
	    "field fDouble: expects a number (or \"NaN\", \"Infinity\", "
	    "\"-Infinity\"), got a string");
	assert_encode_fails(p, "{\"rInt64\": 5}",
	    "field rInt64: repeated, expects an array, got an integer");
	assert_encode_fails(p, "{\"rSub\": [{}, {\"nam\": 1}]}",
	    "unknown field \"nam\" at rSub[1] in message asynq.clitest.Sub "
	    "(its fields: name, nums)");
	assert_encode_fails(p, "{\"mSubs\": {\"x\": {}}}",
	    "field mSubs[\"x\"]: expects an integer, got the string \"x\"");
	assert_encode_fails(p, "{\"mCounts\": []}",
	    "field mCounts: a map, expects an object, got an array");
	assert_encode_fails(p, "{\"fSub\": 3}",
	    "field fSub: message asynq.clitest.Sub expects a JSON object, got "
	    "an integer");
	asynqi_pool_free(p);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(
		    test_dyn_encodes_every_scalar_as_protoc_c_reads_it),
		cmocka_unit_test(
		    test_dyn_encodes_repeated_maps_messages_and_oneofs),
		cmocka_unit_test(
		    test_dyn_decodes_protoc_c_bytes_as_proto3_json),
		cmocka_unit_test(
		    test_dyn_skips_unknown_fields_and_refuses_bad_bytes),
		cmocka_unit_test(test_dyn_bad_values_fail_in_words),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
