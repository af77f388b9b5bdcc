/*
 * fuzz_apikey.c
 *		libFuzzer target for the token parser and the apikey type's input,
 *		receive and output functions.
 *
 * Built by test/fuzz/run.sh with clang -fsanitize=fuzzer,address,undefined
 * from src/token.c and src/type.c, outside any server: the few backend
 * routines they call (error reporting, the current transaction id, message
 * buffers) are replaced below by stand-ins that are faithful enough for
 * them.  Each input is checked against a reference parser written the slow,
 * obvious way (a byte-at-a-time CRC-32 and explicit character classes), so
 * any optimisation of the real parser that changes what it accepts is a
 * crash.  Every rejection must be the one fixed 22P02 message, which never
 * contains the input; output never contains the secret; nothing leaks.
 */
#include "postgres.h"

#include <setjmp.h>

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "storage/proc.h"
#include "utils/builtins.h"

#include "apikeys.h"

/* ---------------------------------------------------------------------
 * Stand-ins for the backend
 * --------------------------------------------------------------------- */

static PGPROC fake_proc;
struct PGPROC *MyProc = &fake_proc;

static sigjmp_buf *error_jmp;
static int	error_code;
static char error_text[1024];

bool
errstart(int elevel, const char *domain)
{
	if (elevel < ERROR)
		return false;
	error_code = 0;
	error_text[0] = '\0';
	return true;
}

bool
errstart_cold(int elevel, const char *domain)
{
	return errstart(elevel, domain);
}

int
errcode(int sqlerrcode)
{
	error_code = sqlerrcode;
	return 0;
}

static int
append_text(const char *fmt, va_list ap)
{
	size_t		used = strlen(error_text);

	vsnprintf(error_text + used, sizeof(error_text) - used, fmt, ap);
	strlcat(error_text, "\n", sizeof(error_text));
	return 0;
}

int
errmsg(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	append_text(fmt, ap);
	va_end(ap);
	return 0;
}

int
errmsg_internal(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	append_text(fmt, ap);
	va_end(ap);
	return 0;
}

int
errdetail(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	append_text(fmt, ap);
	va_end(ap);
	return 0;
}

int
errhint(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	append_text(fmt, ap);
	va_end(ap);
	return 0;
}

void
errfinish(const char *filename, int lineno, const char *funcname)
{
	if (error_jmp == NULL)
		abort();
	siglongjmp(*error_jmp, 1);
}

/* Memory: malloc, remembered, all freed after each input. */
#define MAX_ALLOCS 64
static void *allocs[MAX_ALLOCS];
static int	nallocs;

static void *
remember(void *p)
{
	if (p == NULL || nallocs == MAX_ALLOCS)
		abort();
	allocs[nallocs++] = p;
	return p;
}

void *
palloc(Size size)
{
	return remember(malloc(size));
}

void *
palloc0(Size size)
{
	return remember(calloc(1, size));
}

void
pfree(void *pointer)
{
	for (int i = 0; i < nallocs; i++)
	{
		if (allocs[i] == pointer)
		{
			free(pointer);
			allocs[i] = allocs[--nallocs];
			return;
		}
	}
	abort();
}

static void
free_all(void)
{
	while (nallocs > 0)
		free(allocs[--nallocs]);
}

void
initStringInfo(StringInfo str)
{
	str->maxlen = 1024;
	str->data = palloc(str->maxlen);
	str->len = 0;
	str->data[0] = '\0';
	str->cursor = 0;
}

void
appendBinaryStringInfo(StringInfo str, const char *data, int datalen)
{
	if (str->len + datalen + 1 > str->maxlen)
		abort();				/* redacted output is short: never here */
	memcpy(str->data + str->len, data, datalen);
	str->len += datalen;
	str->data[str->len] = '\0';
}

void
appendStringInfoString(StringInfo str, const char *s)
{
	appendBinaryStringInfo(str, s, strlen(s));
}

void
appendStringInfoChar(StringInfo str, char ch)
{
	appendBinaryStringInfo(str, &ch, 1);
}

const char *
pq_getmsgbytes(StringInfo msg, int datalen)
{
	const char *result;

	if (datalen < 0 || datalen > (msg->len - msg->cursor))
		abort();
	result = &msg->data[msg->cursor];
	msg->cursor += datalen;
	return result;
}

void
pq_begintypsend(StringInfo buf)
{
	initStringInfo(buf);
	appendBinaryStringInfo(buf, "\0\0\0\0", 4);
}

void
pq_sendbytes(StringInfo buf, const char *data, int datalen)
{
	appendBinaryStringInfo(buf, data, datalen);
}

bytea *
pq_endtypsend(StringInfo buf)
{
	bytea	   *result = (bytea *) buf->data;

	SET_VARSIZE(result, buf->len);
	return result;
}

text *
cstring_to_text_with_len(const char *s, int len)
{
	text	   *result = (text *) palloc(len + VARHDRSZ);

	SET_VARSIZE(result, len + VARHDRSZ);
	memcpy(VARDATA(result), s, len);
	return result;
}

struct varlena *
pg_detoast_datum(struct varlena *datum)
{
	return datum;				/* the values here are never toasted */
}

/* ---------------------------------------------------------------------
 * The reference parser: the grammar of DESIGN.md section 1, slowly.
 * --------------------------------------------------------------------- */

static const char b62[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

static uint32
ref_crc32(const unsigned char *p, size_t n)
{
	uint32		crc = 0xFFFFFFFF;

	for (size_t i = 0; i < n; i++)
	{
		crc ^= p[i];
		for (int k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0xEDB88320 & (0 - (crc & 1)));
	}
	return ~crc;
}

static bool
ref_is_b62(unsigned char c)
{
	return c != '\0' && strchr(b62, c) != NULL;
}

static bool
ref_parse(const unsigned char *s, size_t len, size_t *prefix_len)
{
	size_t		tail = 1 + 12 + 1 + 32 + 6;
	size_t		plen;
	uint32		crc;
	char		sum[6];

	if (len < tail + 1 || len > tail + 20)
		return false;
	plen = len - tail;
	if (!(s[0] >= 'a' && s[0] <= 'z'))
		return false;
	for (size_t i = 1; i < plen; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '_'))
			return false;
	if (s[plen] != '_' || s[plen + 13] != '_')
		return false;
	for (size_t i = plen + 1; i < len; i++)
		if (i != plen + 13 && !ref_is_b62(s[i]))
			return false;
	crc = ref_crc32(s, len - 6);
	for (int i = 5; i >= 0; i--)
	{
		sum[i] = b62[crc % 62];
		crc /= 62;
	}
	if (memcmp(sum, s + len - 6, 6) != 0)
		return false;
	*prefix_len = plen;
	return true;
}

/* ---------------------------------------------------------------------
 * The target
 * --------------------------------------------------------------------- */

extern Datum apikey_in(PG_FUNCTION_ARGS);
extern Datum apikey_recv(PG_FUNCTION_ARGS);
extern Datum apikey_out(PG_FUNCTION_ARGS);

static const char expected_error[] =
"invalid input syntax for type apikey\n"
"The value is not a well-formed api key token, or its checksum does not match.\n";

/* Call an apikey I/O function; NULL when it raised (the error is checked). */
static ApiKeyData *
call_input(PGFunction fn, Datum arg)
{
	LOCAL_FCINFO(fcinfo, 1);
	sigjmp_buf	jmp;
	ApiKeyData *volatile result = NULL;

	InitFunctionCallInfoData(*fcinfo, NULL, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = arg;
	fcinfo->args[0].isnull = false;
	error_jmp = &jmp;
	if (sigsetjmp(jmp, 0) == 0)
		result = (ApiKeyData *) DatumGetPointer(fn(fcinfo));
	else
	{
		if (error_code != ERRCODE_INVALID_TEXT_REPRESENTATION ||
			strcmp(error_text, expected_error) != 0)
			abort();			/* only the one fixed message, never the input */
	}
	error_jmp = NULL;
	return result;
}

/* A parsed value matches the reference's split of the same bytes. */
static void
check_value(const ApiKeyData *key, const unsigned char *s, size_t prefix_len)
{
	LOCAL_FCINFO(fcinfo, 1);
	char	   *out;

	if (key == NULL || key->prefix_len != prefix_len ||
		memcmp(key->prefix, s, prefix_len) != 0 ||
		memcmp(key->key_id, s + prefix_len + 1, APIKEY_KEY_ID_LEN) != 0)
		abort();
	/* output is redacted: prefix, key id, never a byte of the secret */
	InitFunctionCallInfoData(*fcinfo, NULL, 1, InvalidOid, NULL, NULL);
	fcinfo->args[0].value = PointerGetDatum(key);
	fcinfo->args[0].isnull = false;
	out = DatumGetCString(apikey_out(fcinfo));
	if (strlen(out) != prefix_len + 1 + APIKEY_KEY_ID_LEN + 1 + 8 ||
		memcmp(out, s, prefix_len + 1 + APIKEY_KEY_ID_LEN + 1) != 0 ||
		strcmp(out + prefix_len + 2 + APIKEY_KEY_ID_LEN, "********") != 0)
		abort();
}

int			LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/*
 * Overwrite the last six bytes with the checksum of the bytes before them.
 * Without this a random input almost never carries a valid checksum, and a
 * grammar bug in the parser would hide behind the checksum test.
 */
static void
repair_checksum(unsigned char *s, size_t len)
{
	uint32		crc;

	if (len < 7)
		return;
	crc = ref_crc32(s, len - 6);
	for (int i = 5; i >= 0; i--)
	{
		s[len - 6 + i] = b62[crc % 62];
		crc /= 62;
	}
}

int
LLVMFuzzerTestOneInput(const uint8_t *input, size_t input_size)
{
	uint8_t    *data;
	size_t		size;
	ApiKeyToken tok;
	size_t		ref_plen = 0;
	bool		ok,
				ref;
	char	   *cstr;
	size_t		clen;
	StringInfoData msg;

	fake_proc.lxid = 42;

	/* the first byte chooses: the rest as it is, or with its checksum repaired */
	if (input_size == 0)
		return 0;
	size = input_size - 1;
	data = malloc(size + 1);
	memcpy(data, input + 1, size);
	if (input[0] & 1)
		repair_checksum(data, size);

	/* the parser agrees with the reference, on any bytes */
	ok = apikey_parse((const char *) data, size, &tok);
	ref = ref_parse(data, size, &ref_plen);
	if (ok != ref)
		abort();
	if (ok && (tok.prefix != (const char *) data || tok.prefix_len != (int) ref_plen ||
			   tok.key_id != (const char *) data + ref_plen + 1 ||
			   tok.secret != (const char *) data + ref_plen + 14))
		abort();

	/* text input: the bytes up to the first NUL, as a cstring */
	cstr = malloc(size + 1);
	memcpy(cstr, data, size);
	cstr[size] = '\0';
	clen = strlen(cstr);
	ref = ref_parse((const unsigned char *) cstr, clen, &ref_plen);
	{
		ApiKeyData *key = call_input(apikey_in, CStringGetDatum(cstr));

		if ((key != NULL) != ref)
			abort();
		if (key != NULL)
			check_value(key, (const unsigned char *) cstr, ref_plen);
	}
	free(cstr);
	free_all();

	/* binary input: all the bytes */
	msg.data = (char *) data;
	msg.len = (int) size;
	msg.maxlen = (int) size;
	msg.cursor = 0;
	ref = ref_parse(data, size, &ref_plen);
	{
		ApiKeyData *key = call_input(apikey_recv, PointerGetDatum(&msg));

		if ((key != NULL) != ref)
			abort();
		if (key != NULL)
			check_value(key, data, ref_plen);
	}
	free_all();
	free(data);
	return 0;
}
