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
#include "compat.h"

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

/* errmsg() and its kin: each appends its line to error_text. */
#define APPENDING_ERROR_FIELD(name) \
int \
name(const char *fmt,...) \
{ \
	va_list		ap; \
\
	va_start(ap, fmt); \
	append_text(fmt, ap); \
	va_end(ap); \
	return 0; \
}
APPENDING_ERROR_FIELD(errmsg)
APPENDING_ERROR_FIELD(errmsg_internal)
APPENDING_ERROR_FIELD(errdetail)
APPENDING_ERROR_FIELD(errhint)

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
appendBinaryStringInfo(StringInfo str, APIKEYS_BYTES_ARG data, int datalen)
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
pq_sendbytes(StringInfo buf, APIKEYS_BYTES_ARG data, int datalen)
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

/*
 * The backend's CRC-32 table (src/backend/utils/hash/pg_crc.c), which
 * token.c's checksum macros read: the reflected polynomial 0xEDB88320.
 * The reference parser below computes its CRC bit by bit instead.
 */
const uint32 pg_crc32_table[256] = {
	0x00000000, 0x77073096, 0xEE0E612C, 0x990951BA, 0x076DC419, 0x706AF48F,
	0xE963A535, 0x9E6495A3, 0x0EDB8832, 0x79DCB8A4, 0xE0D5E91E, 0x97D2D988,
	0x09B64C2B, 0x7EB17CBD, 0xE7B82D07, 0x90BF1D91, 0x1DB71064, 0x6AB020F2,
	0xF3B97148, 0x84BE41DE, 0x1ADAD47D, 0x6DDDE4EB, 0xF4D4B551, 0x83D385C7,
	0x136C9856, 0x646BA8C0, 0xFD62F97A, 0x8A65C9EC, 0x14015C4F, 0x63066CD9,
	0xFA0F3D63, 0x8D080DF5, 0x3B6E20C8, 0x4C69105E, 0xD56041E4, 0xA2677172,
	0x3C03E4D1, 0x4B04D447, 0xD20D85FD, 0xA50AB56B, 0x35B5A8FA, 0x42B2986C,
	0xDBBBC9D6, 0xACBCF940, 0x32D86CE3, 0x45DF5C75, 0xDCD60DCF, 0xABD13D59,
	0x26D930AC, 0x51DE003A, 0xC8D75180, 0xBFD06116, 0x21B4F4B5, 0x56B3C423,
	0xCFBA9599, 0xB8BDA50F, 0x2802B89E, 0x5F058808, 0xC60CD9B2, 0xB10BE924,
	0x2F6F7C87, 0x58684C11, 0xC1611DAB, 0xB6662D3D, 0x76DC4190, 0x01DB7106,
	0x98D220BC, 0xEFD5102A, 0x71B18589, 0x06B6B51F, 0x9FBFE4A5, 0xE8B8D433,
	0x7807C9A2, 0x0F00F934, 0x9609A88E, 0xE10E9818, 0x7F6A0DBB, 0x086D3D2D,
	0x91646C97, 0xE6635C01, 0x6B6B51F4, 0x1C6C6162, 0x856530D8, 0xF262004E,
	0x6C0695ED, 0x1B01A57B, 0x8208F4C1, 0xF50FC457, 0x65B0D9C6, 0x12B7E950,
	0x8BBEB8EA, 0xFCB9887C, 0x62DD1DDF, 0x15DA2D49, 0x8CD37CF3, 0xFBD44C65,
	0x4DB26158, 0x3AB551CE, 0xA3BC0074, 0xD4BB30E2, 0x4ADFA541, 0x3DD895D7,
	0xA4D1C46D, 0xD3D6F4FB, 0x4369E96A, 0x346ED9FC, 0xAD678846, 0xDA60B8D0,
	0x44042D73, 0x33031DE5, 0xAA0A4C5F, 0xDD0D7CC9, 0x5005713C, 0x270241AA,
	0xBE0B1010, 0xC90C2086, 0x5768B525, 0x206F85B3, 0xB966D409, 0xCE61E49F,
	0x5EDEF90E, 0x29D9C998, 0xB0D09822, 0xC7D7A8B4, 0x59B33D17, 0x2EB40D81,
	0xB7BD5C3B, 0xC0BA6CAD, 0xEDB88320, 0x9ABFB3B6, 0x03B6E20C, 0x74B1D29A,
	0xEAD54739, 0x9DD277AF, 0x04DB2615, 0x73DC1683, 0xE3630B12, 0x94643B84,
	0x0D6D6A3E, 0x7A6A5AA8, 0xE40ECF0B, 0x9309FF9D, 0x0A00AE27, 0x7D079EB1,
	0xF00F9344, 0x8708A3D2, 0x1E01F268, 0x6906C2FE, 0xF762575D, 0x806567CB,
	0x196C3671, 0x6E6B06E7, 0xFED41B76, 0x89D32BE0, 0x10DA7A5A, 0x67DD4ACC,
	0xF9B9DF6F, 0x8EBEEFF9, 0x17B7BE43, 0x60B08ED5, 0xD6D6A3E8, 0xA1D1937E,
	0x38D8C2C4, 0x4FDFF252, 0xD1BB67F1, 0xA6BC5767, 0x3FB506DD, 0x48B2364B,
	0xD80D2BDA, 0xAF0A1B4C, 0x36034AF6, 0x41047A60, 0xDF60EFC3, 0xA867DF55,
	0x316E8EEF, 0x4669BE79, 0xCB61B38C, 0xBC66831A, 0x256FD2A0, 0x5268E236,
	0xCC0C7795, 0xBB0B4703, 0x220216B9, 0x5505262F, 0xC5BA3BBE, 0xB2BD0B28,
	0x2BB45A92, 0x5CB36A04, 0xC2D7FFA7, 0xB5D0CF31, 0x2CD99E8B, 0x5BDEAE1D,
	0x9B64C2B0, 0xEC63F226, 0x756AA39C, 0x026D930A, 0x9C0906A9, 0xEB0E363F,
	0x72076785, 0x05005713, 0x95BF4A82, 0xE2B87A14, 0x7BB12BAE, 0x0CB61B38,
	0x92D28E9B, 0xE5D5BE0D, 0x7CDCEFB7, 0x0BDBDF21, 0x86D3D2D4, 0xF1D4E242,
	0x68DDB3F8, 0x1FDA836E, 0x81BE16CD, 0xF6B9265B, 0x6FB077E1, 0x18B74777,
	0x88085AE6, 0xFF0F6A70, 0x66063BCA, 0x11010B5C, 0x8F659EFF, 0xF862AE69,
	0x616BFFD3, 0x166CCF45, 0xA00AE278, 0xD70DD2EE, 0x4E048354, 0x3903B3C2,
	0xA7672661, 0xD06016F7, 0x4969474D, 0x3E6E77DB, 0xAED16A4A, 0xD9D65ADC,
	0x40DF0B66, 0x37D83BF0, 0xA9BCAE53, 0xDEBB9EC5, 0x47B2CF7F, 0x30B5FFE9,
	0xBDBDF21C, 0xCABAC28A, 0x53B39330, 0x24B4A3A6, 0xBAD03605, 0xCDD70693,
	0x54DE5729, 0x23D967BF, 0xB3667A2E, 0xC4614AB8, 0x5D681B02, 0x2A6F2B94,
	0xB40BBE37, 0xC30C8EA1, 0x5A05DF1B, 0x2D02EF8D,
};

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

/*
 * Rewrite only the checksum digits of a repaired token, as how says: bit 4
 * set, the CRC plus k * 2^32 (k from 1 to 13 by bits 0-3, fewer where six
 * base62 digits cannot hold it); clear, the CRC plus a delta from -8 to 7
 * (bits 0-3; 0 becomes +2^32 too; 15 keeps the right digits but puts a
 * byte that is not a base62 digit in place of each 0 digit).  These are the
 * values an integer-width or off-by-one mistake in summing or reading the
 * digits would take for the CRC, and the reference rejects every one.
 */
static void
mutate_checksum(unsigned char *s, size_t len, unsigned int how)
{
	const uint64 digits_max = UINT64CONST(56800235584);	/* 62^6 */
	uint64		v;

	if (len < 7)
		return;
	v = ref_crc32(s, len - 6);
	if ((how & 0x1F) == 0x0F)
	{
		/* the right digits, each 0 among them replaced by a non-digit */
		repair_checksum(s, len);
		for (size_t i = len - 6; i < len; i++)
			if (s[i] == '0')
				s[i] = "!-/:@[`{~_"[(i + len) % 10];
		return;
	}
	if ((how & 0x10) || (how & 0x0F) == 8)
	{
		v += (uint64) (1 + (how & 0x0F) % 13) << 32;
		while (v >= digits_max)
			v -= UINT64CONST(1) << 32;
	}
	else
		v = (v + digits_max + (how & 0x0F) - 8) % digits_max;
	for (int i = 5; i >= 0; i--)
	{
		s[len - 6 + i] = b62[v % 62];
		v /= 62;
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

	APIKEYS_CURRENT_LXID() = 42;	/* MyProc is fake_proc */

	/*
	 * The first byte chooses: the rest as it is, or with its checksum
	 * repaired (bit 0), and then (bits 1 and 2 both set) with only its
	 * checksum digits rewritten by mutate_checksum (bits 3 to 7).
	 */
	if (input_size == 0)
		return 0;
	size = input_size - 1;
	data = malloc(size + 1);
	memcpy(data, input + 1, size);
	if (input[0] & 1)
		repair_checksum(data, size);
	if ((input[0] & 7) == 7)
		mutate_checksum(data, size, input[0] >> 3);

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
