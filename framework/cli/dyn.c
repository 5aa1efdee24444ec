/* SPDX-License-Identifier: MIT */
/*
 * Run-time messages for the asynq command-line client (dyn.h): a pool of
 * FileDescriptorProtos and a JSON <-> protobuf wire codec that walks their
 * fields.
 *
 * Design notes
 *
 * - The pool keeps each file as protobuf-c decoded it and an index of the
 *   full names of its messages and enums (nested ones too) and services,
 *   searched linearly: a tool's pool holds a few files.
 * - Encoding writes fields in the order the JSON object has them; a nested
 *   message is encoded into a buffer of its own first, for its length.
 *   Repeated numbers, bools and enums are packed in proto3 files unless
 *   [packed = false] says otherwise, and in proto2 files when
 *   [packed = true] does; decoding accepts either form, as protobuf does.
 * - Decoding collects each field's value in declaration order (a later
 *   occurrence of a singular field replaces an earlier one; messages are
 *   not merged) and skips fields the file does not declare, so a newer
 *   server's replies still print. Groups (proto2's deprecated wire types 3
 *   and 4) are refused.
 * - Depth is bounded (MAX_DEPTH) both ways: a recursive message type with
 *   hostile bytes or JSON cannot exhaust the stack.
 * - JSON follows proto3's mapping: lowerCamelCase names out (the original
 *   names are accepted in), 64-bit integers as strings out (numbers or
 *   strings in), floats' NaN and infinities as strings, enums by name
 *   (numbers accepted in), bytes in standard base64 (URL-safe accepted
 *   in), maps as objects. Well-known types (Timestamp, Any, ...) are
 *   handled as the plain messages they are.
 */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dyn.h"

#define MAX_DEPTH 64

#define T(x) GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_##x
#define LABEL_REPEATED                                                         \
	GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_REPEATED

enum { WT_VARINT = 0, WT_64 = 1, WT_LEN = 2, WT_32 = 5 };

enum kind { K_MESSAGE, K_ENUM, K_SERVICE };

typedef struct entry {
	char *name; /* full name, no leading dot */
	enum kind kind;
	const void *proto;
	const asynqi_file_proto *file;
} entry;

struct asynqi_pool {
	asynqi_file_proto **files;
	size_t n_files;
	entry *e;
	size_t n_e, cap_e;
};

/* ---- Errors and buffers ------------------------------------------- */

/* textf is snprintf for text that may be cut at the buffer's end (paths
 * and messages), without the compiler's truncation warnings. */
static void textf(char *buf, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
textf(char *buf, size_t n, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, n, fmt, ap);
	va_end(ap);
}

static int say(char *err, size_t n, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* say writes the reason into err and returns -1. */
static int
say(char *err, size_t n, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(err, n, fmt, ap);
	va_end(ap);
	return -1;
}

static void
put(asynqi_bytes *b, const void *p, size_t n)
{
	if (b->oom)
		return;
	if (b->len + n > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap < b->len + n)
			cap *= 2;
		uint8_t *q = realloc(b->p, cap);
		if (q == NULL) {
			b->oom = 1;
			return;
		}
		b->p = q;
		b->cap = cap;
	}
	if (n > 0)
		memcpy(b->p + b->len, p, n);
	b->len += n;
}

static void
put_varint(asynqi_bytes *b, uint64_t v)
{
	uint8_t tmp[10];
	size_t n = 0;

	do {
		tmp[n] = (uint8_t)(v & 0x7f);
		v >>= 7;
		if (v != 0)
			tmp[n] |= 0x80;
		n++;
	} while (v != 0);
	put(b, tmp, n);
}

static void
put_fixed(asynqi_bytes *b, uint64_t v, size_t n)
{
	uint8_t tmp[8];

	for (size_t i = 0; i < n; i++)
		tmp[i] = (uint8_t)(v >> (8 * i));
	put(b, tmp, n);
}

void
asynqi_bytes_free(asynqi_bytes *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}

/* ---- The pool ----------------------------------------------------- */

asynqi_pool *
asynqi_pool_alloc(void)
{
	return calloc(1, sizeof(asynqi_pool));
}

void
asynqi_pool_free(asynqi_pool *p)
{
	if (p == NULL)
		return;
	for (size_t i = 0; i < p->n_e; i++)
		free(p->e[i].name);
	free(p->e);
	for (size_t i = 0; i < p->n_files; i++)
		google__protobuf__file_descriptor_proto__free_unpacked(
		    p->files[i], NULL);
	free(p->files);
	free(p);
}

static int
index_add(asynqi_pool *p, const char *prefix, const char *name, enum kind kind,
    const void *proto, const asynqi_file_proto *file, char **fullp)
{
	size_t n = strlen(prefix) + strlen(name) + 2;
	char *full = malloc(n);

	if (full == NULL)
		return -1;
	textf(full, n, "%s%s%s", prefix, prefix[0] ? "." : "", name);
	if (p->n_e == p->cap_e) {
		size_t cap = p->cap_e ? 2 * p->cap_e : 64;
		entry *e = realloc(p->e, cap * sizeof(*e));
		if (e == NULL) {
			free(full);
			return -1;
		}
		p->e = e;
		p->cap_e = cap;
	}
	p->e[p->n_e++] = (entry){ full, kind, proto, file };
	if (fullp != NULL)
		*fullp = full;
	return 0;
}

static int
index_message(asynqi_pool *p, const char *prefix, const asynqi_msg_proto *m,
    const asynqi_file_proto *file, int depth)
{
	char *full;

	if (m->name == NULL || depth > MAX_DEPTH ||
	    index_add(p, prefix, m->name, K_MESSAGE, m, file, &full) != 0)
		return -1;
	for (size_t i = 0; i < m->n_enum_type; i++)
		if (index_add(p, full, m->enum_type[i]->name, K_ENUM,
		        m->enum_type[i], file, NULL) != 0)
			return -1;
	for (size_t i = 0; i < m->n_nested_type; i++)
		if (index_message(p, full, m->nested_type[i], file,
		        depth + 1) != 0)
			return -1;
	return 0;
}

int
asynqi_pool_add(asynqi_pool *p, const uint8_t *data, size_t len, char *err,
    size_t errlen)
{
	asynqi_file_proto *f =
	    google__protobuf__file_descriptor_proto__unpack(NULL, len, data);

	if (f == NULL || f->name == NULL) {
		if (f != NULL)
			google__protobuf__file_descriptor_proto__free_unpacked(
			    f, NULL);
		return say(err, errlen,
		    "the server sent a file descriptor that is not a "
		    "google.protobuf.FileDescriptorProto");
	}
	for (size_t i = 0; i < p->n_files; i++)
		if (strcmp(p->files[i]->name, f->name) == 0) {
			google__protobuf__file_descriptor_proto__free_unpacked(
			    f, NULL);
			return 0;
		}
	asynqi_file_proto **fs =
	    realloc(p->files, (p->n_files + 1) * sizeof(*fs));
	if (fs == NULL) {
		google__protobuf__file_descriptor_proto__free_unpacked(f, NULL);
		return say(err, errlen, "out of memory");
	}
	p->files = fs;
	p->files[p->n_files++] = f;
	const char *pkg = f->package != NULL ? f->package : "";
	for (size_t i = 0; i < f->n_message_type; i++)
		if (index_message(p, pkg, f->message_type[i], f, 0) != 0)
			return say(err, errlen, "file %s: cannot index %s",
			    f->name, f->message_type[i]->name);
	for (size_t i = 0; i < f->n_enum_type; i++)
		if (index_add(p, pkg, f->enum_type[i]->name, K_ENUM,
		        f->enum_type[i], f, NULL) != 0)
			return say(err, errlen, "out of memory");
	for (size_t i = 0; i < f->n_service; i++)
		if (index_add(p, pkg, f->service[i]->name, K_SERVICE,
		        f->service[i], f, NULL) != 0)
			return say(err, errlen, "out of memory");
	return 0;
}

static const entry *
find(const asynqi_pool *p, const char *name, enum kind kind)
{
	if (name[0] == '.')
		name++;
	for (size_t i = 0; i < p->n_e; i++)
		if (p->e[i].kind == kind && strcmp(p->e[i].name, name) == 0)
			return &p->e[i];
	return NULL;
}

const asynqi_msg_proto *
asynqi_pool_message(const asynqi_pool *p, const char *name,
    const asynqi_file_proto **filep)
{
	const entry *e = find(p, name, K_MESSAGE);

	if (filep != NULL)
		*filep = e != NULL ? e->file : NULL;
	return e != NULL ? e->proto : NULL;
}

const asynqi_enum_proto *
asynqi_pool_enum(const asynqi_pool *p, const char *name)
{
	const entry *e = find(p, name, K_ENUM);

	return e != NULL ? e->proto : NULL;
}

const asynqi_svc_proto *
asynqi_pool_service(const asynqi_pool *p, const char *name,
    const asynqi_file_proto **filep)
{
	const entry *e = find(p, name, K_SERVICE);

	if (filep != NULL)
		*filep = e != NULL ? e->file : NULL;
	return e != NULL ? e->proto : NULL;
}

/* ---- Fields ------------------------------------------------------- */

const char *
asynqi_json_name(const asynqi_field_proto *f, char *buf, size_t n)
{
	size_t k = 0;
	bool up = false;

	if (f->json_name != NULL && f->json_name[0] != '\0')
		return f->json_name;
	for (const char *s = f->name; *s != '\0' && k + 1 < n; s++) {
		if (*s == '_') {
			up = true;
			continue;
		}
		buf[k++] = up ? (char)toupper((unsigned char)*s) : *s;
		up = false;
	}
	buf[k] = '\0';
	return buf;
}

static bool
is_proto3(const asynqi_file_proto *f)
{
	return f != NULL && f->syntax != NULL &&
	    strcmp(f->syntax, "proto3") == 0;
}

static bool
is_repeated(const asynqi_field_proto *f)
{
	return f->has_label && f->label == LABEL_REPEATED;
}

/* The wire type a single value of the field's type has. */
static int
wire_type(int type)
{
	switch (type) {
	case T(DOUBLE):
	case T(FIXED64):
	case T(SFIXED64):
		return WT_64;
	case T(FLOAT):
	case T(FIXED32):
	case T(SFIXED32):
		return WT_32;
	case T(STRING):
	case T(BYTES):
	case T(MESSAGE):
		return WT_LEN;
	case T(GROUP):
		return -1;
	default:
		return WT_VARINT;
	}
}

static bool
packable(const asynqi_field_proto *f)
{
	return is_repeated(f) && wire_type(f->type) != WT_LEN &&
	    wire_type(f->type) >= 0;
}

static bool
packs(const asynqi_field_proto *f, const asynqi_file_proto *file)
{
	if (!packable(f))
		return false;
	if (f->options != NULL && f->options->has_packed)
		return f->options->packed;
	return is_proto3(file);
}

/* The map entry message of a map field, or NULL. */
static const asynqi_msg_proto *
map_entry(const asynqi_pool *p, const asynqi_field_proto *f)
{
	const asynqi_msg_proto *m;

	if (!is_repeated(f) || f->type != T(MESSAGE) || f->type_name == NULL)
		return NULL;
	m = asynqi_pool_message(p, f->type_name, NULL);
	if (m == NULL || m->options == NULL || !m->options->map_entry ||
	    m->n_field != 2)
		return NULL;
	return m;
}

static const asynqi_field_proto *
field_by_number(const asynqi_msg_proto *m, uint64_t num, size_t *idx)
{
	for (size_t i = 0; i < m->n_field; i++)
		if ((uint64_t)m->field[i]->number == num) {
			*idx = i;
			return m->field[i];
		}
	return NULL;
}

static const char *
type_word(int type)
{
	static const char *const words[] = { "", "double", "float", "int64",
		"uint64", "int32", "fixed64", "fixed32", "bool", "string",
		"group", "message", "bytes", "uint32", "enum", "sfixed32",
		"sfixed64", "sint32", "sint64" };

	return type > 0 && type < (int)(sizeof(words) / sizeof(words[0]))
	    ? words[type]
	    : "unknown";
}

/* ---- Base64 ------------------------------------------------------- */

static const char b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static json_t *
b64_encode(const uint8_t *p, size_t n)
{
	size_t len = 4 * ((n + 2) / 3);
	char *s = malloc(len + 1), *o = s;
	json_t *j;

	if (s == NULL)
		return NULL;
	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;
		if (i + 1 < n)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < n)
			v |= p[i + 2];
		*o++ = b64[(v >> 18) & 63];
		*o++ = b64[(v >> 12) & 63];
		*o++ = i + 1 < n ? b64[(v >> 6) & 63] : '=';
		*o++ = i + 2 < n ? b64[v & 63] : '=';
	}
	*o = '\0';
	j = json_stringn(s, len);
	free(s);
	return j;
}

static int
b64_value(char c)
{
	if (c == '-')
		return 62;
	if (c == '_')
		return 63;
	const char *q = c != '\0' ? strchr(b64, c) : NULL;
	return q != NULL ? (int)(q - b64) : -1;
}

/* b64_decode appends the bytes of standard or URL-safe base64, padded or
 * not; -1 for anything else. */
static int
b64_decode(const char *s, size_t n, asynqi_bytes *out)
{
	uint32_t acc = 0;
	int bits = 0;

	while (n > 0 && s[n - 1] == '=')
		n--;
	for (size_t i = 0; i < n; i++) {
		int v = b64_value(s[i]);
		if (v < 0)
			return -1;
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			uint8_t c = (uint8_t)(acc >> bits);
			put(out, &c, 1);
		}
	}
	return bits >= 6 ? -1 : 0;
}

/* ---- JSON to wire ------------------------------------------------- */

typedef struct enc {
	const asynqi_pool *p;
	char *err;
	size_t errlen;
} enc;

static const char *
json_kind(const json_t *v)
{
	switch (json_typeof(v)) {
	case JSON_OBJECT:
		return "an object";
	case JSON_ARRAY:
		return "an array";
	case JSON_STRING:
		return "a string";
	case JSON_INTEGER:
		return "an integer";
	case JSON_REAL:
		return "a number with a fraction";
	case JSON_TRUE:
	case JSON_FALSE:
		return "a boolean";
	case JSON_NULL:
		return "null";
	}
	return "something else";
}

static bool
is_unsigned_type(int type)
{
	return type == T(UINT32) || type == T(FIXED32) || type == T(UINT64) ||
	    type == T(FIXED64);
}

/* get_int reads an integer from a JSON integer, an integral number or a
 * string of digits; is_unsigned takes the full uint64 range. */
static int
get_int(const json_t *v, bool is_unsigned, uint64_t *out)
{
	if (json_is_integer(v)) {
		json_int_t x = json_integer_value(v);
		if (is_unsigned && x < 0)
			return -1;
		*out = (uint64_t)x;
		return 0;
	}
	if (json_is_real(v)) {
		double d = json_real_value(v);
		if (d != floor(d) || d < -9.2233720368547758e18 ||
		    d >= 1.8446744073709552e19 || (is_unsigned && d < 0))
			return -1;
		if (d >= 9.2233720368547758e18)
			*out = (uint64_t)d;
		else
			*out = (uint64_t)(int64_t)d;
		return 0;
	}
	if (json_is_string(v)) {
		const char *s = json_string_value(v);
		char *end;
		errno = 0;
		if (s[0] == '\0' || isspace((unsigned char)s[0]))
			return -1;
		if (is_unsigned) {
			if (s[0] == '-')
				return -1;
			*out = strtoull(s, &end, 10);
		} else {
			*out = (uint64_t)strtoll(s, &end, 10);
		}
		return errno != 0 || *end != '\0' ? -1 : 0;
	}
	return -1;
}

static int
get_double(const json_t *v, double *out)
{
	if (json_is_number(v)) {
		*out = json_number_value(v);
		return 0;
	}
	if (json_is_string(v)) {
		const char *s = json_string_value(v);
		char *end;
		if (strcmp(s, "NaN") == 0)
			*out = NAN;
		else if (strcmp(s, "Infinity") == 0)
			*out = INFINITY;
		else if (strcmp(s, "-Infinity") == 0)
			*out = -INFINITY;
		else {
			errno = 0;
			*out = strtod(s, &end);
			if (s[0] == '\0' || *end != '\0' || errno != 0)
				return -1;
		}
		return 0;
	}
	return -1;
}

static int encode_message(const enc *e, const char *path, const char *mname,
    const asynqi_msg_proto *m, const asynqi_file_proto *file, json_t *j,
    asynqi_bytes *out, int depth);

/* encode_value appends one value of field f (no tag, except that a
 * message gets its length prefix). */
static int
encode_value(const enc *e, const char *path, const asynqi_field_proto *f,
    json_t *v, asynqi_bytes *out, int depth)
{
	uint64_t u = 0;
	double d = 0;

	switch (f->type) {
	case T(INT32):
	case T(SINT32):
	case T(SFIXED32):
		if (get_int(v, false, &u) != 0 || (int64_t)u < INT32_MIN ||
		    (int64_t)u > INT32_MAX)
			goto bad_int;
		if (f->type == T(INT32))
			put_varint(out, u); /* sign-extended, as protobuf */
		else if (f->type == T(SINT32))
			put_varint(out,
			    ((uint32_t)(int32_t)u << 1) ^
			        (uint32_t)((int32_t)u < 0 ? -1 : 0));
		else
			put_fixed(out, (uint32_t)u, 4);
		return 0;
	case T(UINT32):
	case T(FIXED32):
		if (get_int(v, true, &u) != 0 || u > UINT32_MAX)
			goto bad_int;
		if (f->type == T(UINT32))
			put_varint(out, u);
		else
			put_fixed(out, u, 4);
		return 0;
	case T(INT64):
	case T(SINT64):
	case T(SFIXED64):
		if (get_int(v, false, &u) != 0)
			goto bad_int;
		if (f->type == T(INT64))
			put_varint(out, u);
		else if (f->type == T(SINT64))
			put_varint(out,
			    (u << 1) ^ ((int64_t)u < 0 ? UINT64_MAX : 0));
		else
			put_fixed(out, u, 8);
		return 0;
	case T(UINT64):
	case T(FIXED64):
		if (get_int(v, true, &u) != 0)
			goto bad_int;
		if (f->type == T(UINT64))
			put_varint(out, u);
		else
			put_fixed(out, u, 8);
		return 0;
	case T(BOOL):
		if (!json_is_boolean(v))
			return say(e->err, e->errlen,
			    "field %s: expects true or false, got %s", path,
			    json_kind(v));
		put_varint(out, json_is_true(v) ? 1 : 0);
		return 0;
	case T(DOUBLE):
	case T(FLOAT): {
		if (get_double(v, &d) != 0)
			return say(e->err, e->errlen,
			    "field %s: expects a number (or \"NaN\", "
			    "\"Infinity\", \"-Infinity\"), got %s",
			    path, json_kind(v));
		if (f->type == T(DOUBLE)) {
			memcpy(&u, &d, 8);
			put_fixed(out, u, 8);
		} else {
			float x = (float)d;
			uint32_t w;
			memcpy(&w, &x, 4);
			put_fixed(out, w, 4);
		}
		return 0;
	}
	case T(STRING):
		if (!json_is_string(v))
			return say(e->err, e->errlen,
			    "field %s: expects a string, got %s", path,
			    json_kind(v));
		put_varint(out, json_string_length(v));
		put(out, json_string_value(v), json_string_length(v));
		return 0;
	case T(BYTES): {
		asynqi_bytes b = { 0 };
		if (!json_is_string(v) ||
		    b64_decode(json_string_value(v), json_string_length(v),
		        &b) != 0) {
			asynqi_bytes_free(&b);
			return say(e->err, e->errlen,
			    "field %s: expects bytes as a base64 string, got "
			    "%s",
			    path,
			    json_is_string(v) ? "a string that is not base64"
			                      : json_kind(v));
		}
		put_varint(out, b.len);
		put(out, b.p, b.len);
		asynqi_bytes_free(&b);
		return 0;
	}
	case T(ENUM): {
		const asynqi_enum_proto *en =
		    asynqi_pool_enum(e->p, f->type_name ? f->type_name : "");
		if (json_is_string(v) && en != NULL) {
			for (size_t i = 0; i < en->n_value; i++)
				if (strcmp(en->value[i]->name,
				        json_string_value(v)) == 0) {
					put_varint(out,
					    (uint64_t)(int64_t)en->value[i]
					        ->number);
					return 0;
				}
			return say(e->err, e->errlen,
			    "field %s: %s has no value named \"%s\"", path,
			    f->type_name + 1, json_string_value(v));
		}
		if (json_is_integer(v) && get_int(v, false, &u) == 0 &&
		    (int64_t)u >= INT32_MIN && (int64_t)u <= INT32_MAX) {
			put_varint(out, u);
			return 0;
		}
		return say(e->err, e->errlen,
		    "field %s: expects the name of a value of %s, got %s", path,
		    f->type_name ? f->type_name + 1 : "its enum", json_kind(v));
	}
	case T(MESSAGE): {
		const asynqi_file_proto *file;
		const asynqi_msg_proto *m = asynqi_pool_message(e->p,
		    f->type_name ? f->type_name : "", &file);
		asynqi_bytes b = { 0 };
		if (m == NULL)
			return say(e->err, e->errlen,
			    "field %s: its type %s is not in the server's "
			    "descriptors",
			    path, f->type_name ? f->type_name : "(none)");
		if (encode_message(e, path, f->type_name + 1, m, file, v, &b,
		        depth + 1) != 0) {
			asynqi_bytes_free(&b);
			return -1;
		}
		put_varint(out, b.len);
		put(out, b.p, b.len);
		asynqi_bytes_free(&b);
		return 0;
	}
	default:
		return say(e->err, e->errlen,
		    "field %s: fields of type %s are not supported", path,
		    type_word(f->type));
	}
bad_int:
	if (json_is_string(v))
		return say(e->err, e->errlen,
		    "field %s: expects %s, got the string \"%s\"", path,
		    is_unsigned_type(f->type) ? "an unsigned integer"
		                              : "an integer",
		    json_string_value(v));
	if (json_is_number(v))
		return say(e->err, e->errlen,
		    "field %s: %g is not a whole number in the range of %s",
		    path, json_number_value(v), type_word(f->type));
	return say(e->err, e->errlen, "field %s: expects %s, got %s", path,
	    is_unsigned_type(f->type) ? "an unsigned integer" : "an integer",
	    json_kind(v));
}

static void
put_tag(asynqi_bytes *out, int32_t number, int wt)
{
	put_varint(out, ((uint64_t)(uint32_t)number << 3) | (unsigned)wt);
}

/* A map key given as a JSON string, as the JSON value of the key's type. */
static json_t *
map_key(const asynqi_field_proto *kf, const char *key)
{
	if (kf->type == T(STRING))
		return json_string(key);
	if (kf->type == T(BOOL)) {
		if (strcmp(key, "true") == 0)
			return json_true();
		if (strcmp(key, "false") == 0)
			return json_false();
		return json_string(key); /* fails as a bool */
	}
	return json_string(key); /* integers: strings of digits */
}

static int
encode_field(const enc *e, const char *path, const asynqi_field_proto *f,
    const asynqi_file_proto *file, json_t *v, asynqi_bytes *out, int depth)
{
	const asynqi_msg_proto *entry = map_entry(e->p, f);
	char sub[512];

	if (json_is_null(v))
		return 0;
	if (entry != NULL) {
		const char *k;
		json_t *val;
		if (!json_is_object(v))
			return say(e->err, e->errlen,
			    "field %s: a map, expects an object, got %s", path,
			    json_kind(v));
		json_object_foreach(v, k, val)
		{
			asynqi_bytes b = { 0 };
			json_t *kj = map_key(entry->field[0], k);
			int rv;
			textf(sub, sizeof(sub), "%s[\"%s\"]", path, k);
			put_tag(&b, 1, wire_type(entry->field[0]->type));
			rv = kj != NULL ? encode_value(e, sub, entry->field[0],
			                      kj, &b, depth)
			                : -1;
			json_decref(kj);
			if (rv == 0 && !json_is_null(val)) {
				put_tag(&b, 2,
				    wire_type(entry->field[1]->type));
				rv = encode_value(e, sub, entry->field[1], val,
				    &b, depth);
			}
			if (rv == 0) {
				put_tag(out, f->number, WT_LEN);
				put_varint(out, b.len);
				put(out, b.p, b.len);
			}
			asynqi_bytes_free(&b);
			if (rv != 0)
				return -1;
		}
		return 0;
	}
	if (is_repeated(f)) {
		size_t i;
		json_t *x;
		if (!json_is_array(v))
			return say(e->err, e->errlen,
			    "field %s: repeated, expects an array, got %s",
			    path, json_kind(v));
		if (packs(f, file)) {
			asynqi_bytes b = { 0 };
			json_array_foreach(v, i, x)
			{
				textf(sub, sizeof(sub), "%s[%zu]", path, i);
				if (encode_value(e, sub, f, x, &b, depth) !=
				    0) {
					asynqi_bytes_free(&b);
					return -1;
				}
			}
			if (json_array_size(v) > 0) {
				put_tag(out, f->number, WT_LEN);
				put_varint(out, b.len);
				put(out, b.p, b.len);
			}
			asynqi_bytes_free(&b);
			return 0;
		}
		json_array_foreach(v, i, x)
		{
			textf(sub, sizeof(sub), "%s[%zu]", path, i);
			put_tag(out, f->number, wire_type(f->type));
			if (encode_value(e, sub, f, x, out, depth) != 0)
				return -1;
		}
		return 0;
	}
	put_tag(out, f->number, wire_type(f->type));
	return encode_value(e, path, f, v, out, depth);
}

static int
encode_message(const enc *e, const char *path, const char *mname,
    const asynqi_msg_proto *m, const asynqi_file_proto *file, json_t *j,
    asynqi_bytes *out, int depth)
{
	const char *key;
	json_t *v;
	char sub[512], jn[256];

	if (depth > MAX_DEPTH)
		return say(e->err, e->errlen,
		    "%s: messages nested more than %d deep", path, MAX_DEPTH);
	if (!json_is_object(j))
		return say(e->err, e->errlen,
		    "%s%s%s: message %s expects a JSON object, got %s",
		    path[0] ? "field " : "", path, path[0] ? "" : "request",
		    mname, json_kind(j));
	json_object_foreach(j, key, v)
	{
		const asynqi_field_proto *f = NULL;
		for (size_t i = 0; i < m->n_field && f == NULL; i++)
			if (strcmp(key, m->field[i]->name) == 0 ||
			    strcmp(key,
			        asynqi_json_name(m->field[i], jn,
			            sizeof(jn))) == 0)
				f = m->field[i];
		if (f == NULL) {
			char list[1024] = "";
			size_t len = 0;
			for (size_t i = 0; i < m->n_field && len < sizeof(list);
			     i++)
				len += (size_t)snprintf(list + len,
				    sizeof(list) - len, "%s%s", i ? ", " : "",
				    asynqi_json_name(m->field[i], jn,
				        sizeof(jn)));
			return say(e->err, e->errlen,
			    "unknown field \"%s\"%s%s in message %s (its "
			    "fields: %s)",
			    key, path[0] ? " at " : "", path, mname,
			    m->n_field ? list : "none");
		}
		textf(sub, sizeof(sub), "%s%s%s", path, path[0] ? "." : "",
		    key);
		if (encode_field(e, sub, f, file, v, out, depth) != 0)
			return -1;
	}
	if (out->oom)
		return say(e->err, e->errlen, "out of memory");
	return 0;
}

int
asynqi_json_encode(const asynqi_pool *p, const char *type, json_t *j,
    asynqi_bytes *out, char *err, size_t errlen)
{
	const asynqi_file_proto *file;
	const asynqi_msg_proto *m = asynqi_pool_message(p, type, &file);
	enc e = { p, err, errlen };

	if (m == NULL)
		return say(err, errlen,
		    "message %s is not in the server's descriptors", type);
	return encode_message(&e, "", type[0] == '.' ? type + 1 : type, m, file,
	    j, out, 0);
}

/* ---- Wire to JSON ------------------------------------------------- */

typedef struct rd {
	const uint8_t *p, *end;
} rd;

static int
get_varint(rd *r, uint64_t *v)
{
	uint64_t x = 0;

	for (int i = 0; i < 10; i++) {
		if (r->p >= r->end)
			return -1;
		uint8_t c = *r->p++;
		x |= (uint64_t)(c & 0x7f) << (7 * i);
		if ((c & 0x80) == 0) {
			*v = x;
			return 0;
		}
	}
	return -1;
}

static int
get_fixed(rd *r, size_t n, uint64_t *v)
{
	uint64_t x = 0;

	if ((size_t)(r->end - r->p) < n)
		return -1;
	for (size_t i = 0; i < n; i++)
		x |= (uint64_t)r->p[i] << (8 * i);
	r->p += n;
	*v = x;
	return 0;
}

static json_t *
json_i64(int64_t v)
{
	char s[32];
	textf(s, sizeof(s), "%" PRId64, v);
	return json_string(s);
}

static json_t *
json_u64(uint64_t v)
{
	char s[32];
	textf(s, sizeof(s), "%" PRIu64, v);
	return json_string(s);
}

static json_t *
json_double(double d)
{
	if (isnan(d))
		return json_string("NaN");
	if (isinf(d))
		return json_string(d > 0 ? "Infinity" : "-Infinity");
	return json_real(d);
}

static json_t *
enum_json(const asynqi_pool *p, const asynqi_field_proto *f, int32_t v)
{
	const asynqi_enum_proto *en =
	    asynqi_pool_enum(p, f->type_name ? f->type_name : "");

	for (size_t i = 0; en != NULL && i < en->n_value; i++)
		if (en->value[i]->number == v)
			return json_string(en->value[i]->name);
	return json_integer(v);
}

typedef struct dec {
	const asynqi_pool *p;
	char *err;
	size_t errlen;
} dec;

static json_t *decode_message(const dec *d, const char *path,
    const asynqi_msg_proto *m, const asynqi_file_proto *file,
    const uint8_t *data, size_t len, int depth);

/* decode_scalar turns one raw value (a varint or fixed value in x, or
 * length-delimited bytes) into JSON. */
static json_t *
decode_value(const dec *d, const char *path, const asynqi_field_proto *f,
    uint64_t x, const uint8_t *bytes, size_t n, int depth)
{
	switch (f->type) {
	case T(INT32):
		return json_integer((int32_t)(uint32_t)x);
	case T(SFIXED32):
		return json_integer((int32_t)(uint32_t)x);
	case T(SINT32): {
		uint32_t w = (uint32_t)x;
		return json_integer((int32_t)(w >> 1) ^ -(int32_t)(w & 1));
	}
	case T(UINT32):
	case T(FIXED32):
		return json_integer((uint32_t)x);
	case T(INT64):
	case T(SFIXED64):
		return json_i64((int64_t)x);
	case T(SINT64):
		return json_i64((int64_t)(x >> 1) ^ -(int64_t)(x & 1));
	case T(UINT64):
	case T(FIXED64):
		return json_u64(x);
	case T(BOOL):
		return json_boolean(x != 0);
	case T(ENUM):
		return enum_json(d->p, f, (int32_t)(uint32_t)x);
	case T(DOUBLE): {
		double v;
		memcpy(&v, &x, 8);
		return json_double(v);
	}
	case T(FLOAT): {
		uint32_t w = (uint32_t)x;
		float v;
		memcpy(&v, &w, 4);
		return json_double(v);
	}
	case T(STRING): {
		json_t *s = json_stringn((const char *)bytes, n);
		if (s == NULL)
			say(d->err, d->errlen,
			    "field %s: the string is not valid UTF-8", path);
		return s;
	}
	case T(BYTES):
		return b64_encode(bytes, n);
	case T(MESSAGE): {
		const asynqi_file_proto *file;
		const asynqi_msg_proto *m = asynqi_pool_message(d->p,
		    f->type_name ? f->type_name : "", &file);
		if (m == NULL) {
			say(d->err, d->errlen,
			    "field %s: its type %s is not in the server's "
			    "descriptors",
			    path, f->type_name ? f->type_name : "(none)");
			return NULL;
		}
		return decode_message(d, path, m, file, bytes, n, depth + 1);
	}
	default:
		say(d->err, d->errlen,
		    "field %s: fields of type %s are not supported", path,
		    type_word(f->type));
		return NULL;
	}
}

/* default_value is the JSON of an absent singular field: its type's zero. */
static json_t *
default_value(const dec *d, const asynqi_field_proto *f)
{
	switch (f->type) {
	case T(STRING):
	case T(BYTES):
		return json_string("");
	case T(BOOL):
		return json_false();
	case T(INT64):
	case T(SINT64):
	case T(SFIXED64):
	case T(UINT64):
	case T(FIXED64):
		return json_string("0");
	case T(DOUBLE):
	case T(FLOAT):
		return json_real(0);
	case T(ENUM):
		return enum_json(d->p, f, 0);
	default:
		return json_integer(0);
	}
}

/* A map entry decoded as {"key": k, "value": v}: k as a JSON object key. */
static int
map_put(json_t *map, json_t *entry)
{
	json_t *k = json_object_get(entry, "key");
	json_t *v = json_object_get(entry, "value");
	char buf[32];
	const char *key;

	if (json_is_string(k))
		key = json_string_value(k);
	else if (json_is_boolean(k))
		key = json_is_true(k) ? "true" : "false";
	else if (json_is_integer(k)) {
		textf(buf, sizeof(buf), "%" JSON_INTEGER_FORMAT,
		    json_integer_value(k));
		key = buf;
	} else
		return -1;
	return json_object_set(map, key, v != NULL ? v : json_null());
}

static json_t *
decode_message(const dec *d, const char *path, const asynqi_msg_proto *m,
    const asynqi_file_proto *file, const uint8_t *data, size_t len, int depth)
{
	json_t **vals, *obj = NULL;
	rd r = { data, data + len };
	char sub[512], jn[256];

	if (depth > MAX_DEPTH) {
		say(d->err, d->errlen, "%s: messages nested more than %d deep",
		    path[0] ? path : "reply", MAX_DEPTH);
		return NULL;
	}
	if ((vals = calloc(m->n_field ? m->n_field : 1, sizeof(*vals))) ==
	    NULL) {
		say(d->err, d->errlen, "out of memory");
		return NULL;
	}
	while (r.p < r.end) {
		uint64_t key, x = 0;
		const uint8_t *bytes = NULL;
		size_t n = 0, idx = 0;

		if (get_varint(&r, &key) != 0)
			goto malformed;
		int wt = (int)(key & 7);
		uint64_t num = key >> 3;
		switch (wt) {
		case WT_VARINT:
			if (get_varint(&r, &x) != 0)
				goto malformed;
			break;
		case WT_64:
			if (get_fixed(&r, 8, &x) != 0)
				goto malformed;
			break;
		case WT_32:
			if (get_fixed(&r, 4, &x) != 0)
				goto malformed;
			break;
		case WT_LEN:
			if (get_varint(&r, &x) != 0 ||
			    x > (uint64_t)(r.end - r.p))
				goto malformed;
			bytes = r.p;
			n = (size_t)x;
			r.p += n;
			break;
		default:
			say(d->err, d->errlen,
			    "%s%smessage %s: wire type %d (a group) is not "
			    "supported",
			    path, path[0] ? ": " : "", m->name, wt);
			goto fail;
		}
		const asynqi_field_proto *f = field_by_number(m, num, &idx);
		if (f == NULL)
			continue; /* a field this file does not declare */
		textf(sub, sizeof(sub), "%s%s%s", path, path[0] ? "." : "",
		    asynqi_json_name(f, jn, sizeof(jn)));
		const asynqi_msg_proto *entry = map_entry(d->p, f);
		if (entry != NULL) {
			if (wt != WT_LEN)
				goto wrong_type;
			json_t *e = decode_message(d, sub, entry, file, bytes,
			    n, depth + 1);
			if (e == NULL)
				goto fail;
			if (vals[idx] == NULL)
				vals[idx] = json_object();
			int rv = vals[idx] != NULL ? map_put(vals[idx], e) : -1;
			json_decref(e);
			if (rv != 0)
				goto malformed;
			continue;
		}
		if (packable(f) && wt == WT_LEN) {
			rd pr = { bytes, bytes + n };
			int vwt = wire_type(f->type);
			if (vals[idx] == NULL &&
			    (vals[idx] = json_array()) == NULL)
				goto oom;
			while (pr.p < pr.end) {
				int rv = vwt == WT_VARINT
				    ? get_varint(&pr, &x)
				    : get_fixed(&pr, vwt == WT_64 ? 8 : 4, &x);
				if (rv != 0)
					goto malformed;
				json_t *v =
				    decode_value(d, sub, f, x, NULL, 0, depth);
				if (v == NULL ||
				    json_array_append_new(vals[idx], v) != 0)
					goto fail;
			}
			continue;
		}
		if (wt != wire_type(f->type))
			goto wrong_type;
		json_t *v = decode_value(d, sub, f, x, bytes, n, depth);
		if (v == NULL)
			goto fail;
		if (is_repeated(f)) {
			if (vals[idx] == NULL &&
			    (vals[idx] = json_array()) == NULL) {
				json_decref(v);
				goto oom;
			}
			if (json_array_append_new(vals[idx], v) != 0)
				goto oom;
		} else {
			json_decref(vals[idx]);
			vals[idx] = v;
		}
		continue;
wrong_type:
		say(d->err, d->errlen,
		    "field %s: wire type %d does not fit its type %s", sub, wt,
		    type_word(f->type));
		goto fail;
	}
	if ((obj = json_object()) == NULL)
		goto oom;
	for (size_t i = 0; i < m->n_field; i++) {
		const asynqi_field_proto *f = m->field[i];
		json_t *v = vals[i];
		vals[i] = NULL;
		if (v == NULL) {
			if (map_entry(d->p, f) != NULL)
				v = json_object();
			else if (is_repeated(f))
				v = json_array();
			else if (f->type == T(MESSAGE) || f->has_oneof_index ||
			    f->proto3_optional || !is_proto3(file))
				continue;
			else
				v = default_value(d, f);
		}
		if (v == NULL ||
		    json_object_set_new(obj,
		        asynqi_json_name(f, jn, sizeof(jn)), v) != 0)
			goto oom;
	}
	free(vals);
	return obj;

malformed:
	say(d->err, d->errlen, "%s%sthe bytes are not a valid %s message", path,
	    path[0] ? ": " : "", m->name);
	goto fail;
oom:
	say(d->err, d->errlen, "out of memory");
fail:
	for (size_t i = 0; i < m->n_field; i++)
		json_decref(vals[i]);
	free(vals);
	json_decref(obj);
	return NULL;
}

json_t *
asynqi_wire_decode(const asynqi_pool *p, const char *type, const uint8_t *data,
    size_t len, char *err, size_t errlen)
{
	const asynqi_file_proto *file;
	const asynqi_msg_proto *m = asynqi_pool_message(p, type, &file);
	dec d = { p, err, errlen };

	if (m == NULL) {
		say(err, errlen,
		    "message %s is not in the server's descriptors", type);
		return NULL;
	}
	return decode_message(&d, "", m, file, data, len, 0);
}
