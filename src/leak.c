/*
 * leak.c
 *		Leak response: apikey_check(text), the offline format and checksum
 *		test, and apikey_report_leak(token, source), which revokes a key
 *		whose token was found where it should not be.
 *
 * apikey_report_leak is meant for a secret scanner's endpoint: whoever
 * holds a token may report it, whatever their role, since holding it is
 * all the authority a leak needs.  The token is verified here, through the
 * verify path, before anything is written; a garbage string, a wrong
 * secret and an unknown key id all get the same answer, 'invalid', and
 * leave no trace.  A live secret revokes its key at once through the
 * internal function apikeys_internal._apikey_report_leak, which checks the
 * secret again under the row lock (a rotation that committed meanwhile
 * wins), writes the audit row "revoke_leak" with the reporter and the
 * source, and queues a NOTIFY on channel apikeys, sent at commit.
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/xact.h"
#include "catalog/pg_type_d.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"

#include "apikeys.h"

/* Longest source a report may carry, in characters (README: size limits). */
#define LEAK_SOURCE_MAXLEN	1000

/* SQL function: apikey_check(text) returns boolean */
PG_FUNCTION_INFO_V1(apikey_check);
Datum
apikey_check(PG_FUNCTION_ARGS)
{
	Datum		raw = PG_GETARG_DATUM(0);
	text	   *t;
	ApiKeyToken tok;

	/* no token is longer: do not even detoast it */
	if (toast_raw_datum_size(raw) > VARHDRSZ + APIKEY_TOKEN_MAXLEN)
		PG_RETURN_BOOL(false);
	t = DatumGetTextPP(raw);
	PG_RETURN_BOOL(apikey_parse(VARDATA_ANY(t), VARSIZE_ANY_EXHDR(t), &tok));
}

/* Does s[0..len) contain a well-formed token, anywhere? */
static bool
contains_token(const char *s, int len)
{
	ApiKeyToken tok;

	for (int start = 0; start + APIKEY_TOKEN_MINLEN <= len; start++)
	{
		if (s[start] < 'a' || s[start] > 'z')
			continue;
		for (int n = APIKEY_TOKEN_MINLEN;
			 n <= APIKEY_TOKEN_MAXLEN && start + n <= len; n++)
		{
			if (apikey_parse(s + start, n, &tok))
				return true;
		}
	}
	return false;
}

/*
 * Raise unless the source of a report is acceptable: at most
 * LEAK_SOURCE_MAXLEN characters, no control or bidirectional characters,
 * and no token (the audit log must never hold one).  The value is never
 * echoed.
 */
static void
check_source(text *source, const ApiKeyToken *tok)
{
	const char *s = VARDATA_ANY(source);
	int			len = VARSIZE_ANY_EXHDR(source);
	int			chars = pg_mbstrlen_with_len(s, len);
	bool		utf8 = GetDatabaseEncoding() == PG_UTF8;

	if (chars > LEAK_SOURCE_MAXLEN)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("leak report field \"source\" exceeds its size limit"),
				 errdetail("The limit is %d characters; the value given has %d.",
						   LEAK_SOURCE_MAXLEN, chars)));
	for (int i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];
		bool		bad = c < 0x20 || c == 0x7f;

		if (utf8 && !bad && i + 1 < len)
		{
			unsigned char c1 = (unsigned char) s[i + 1];

			/* C1 controls U+0080-U+009F; U+061C */
			bad = (c == 0xc2 && c1 >= 0x80 && c1 <= 0x9f) ||
				(c == 0xd8 && c1 == 0x9c);
			/* U+200E, U+200F, U+202A-U+202E, U+2066-U+2069 */
			if (!bad && c == 0xe2 && i + 2 < len)
			{
				unsigned char c2 = (unsigned char) s[i + 2];

				bad = (c1 == 0x80 && (c2 == 0x8e || c2 == 0x8f ||
									  (c2 >= 0xaa && c2 <= 0xae))) ||
					(c1 == 0x81 && c2 >= 0xa6 && c2 <= 0xa9);
			}
		}
		if (bad)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("leak report source contains a control character"),
					 errdetail("A source may not contain control characters (line breaks and tabs included) or bidirectional text controls; the value given is not shown.")));
	}
	if (contains_token(s, len) ||
		(tok != NULL && len >= APIKEY_SECRET_LEN &&
		 memmem(s, len, tok->secret, APIKEY_SECRET_LEN) != NULL))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("leak report source must not contain an api key"),
				 errdetail("The source is written to the audit log, which never holds a secret; the value given is not shown."),
				 errhint("Name where the token was found, such as a repository and path or a URL, without the token.")));
}

/* SQL function: apikey_report_leak(text, text) returns text */
PG_FUNCTION_INFO_V1(apikey_report_leak);
Datum
apikey_report_leak(PG_FUNCTION_ARGS)
{
	text	   *token;
	text	   *source = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	ApiKeyToken tok;
	bool		native;
	ApiKeyRequest req = {NULL, NULL, NULL, 0};	/* cost 0: checks, spends nothing */
	ApiKeyVerdict v;
	uint8		digest[APIKEY_DIGEST_LEN];
	bytea	   *digest_b;
	StringInfoData changes;
	Oid			argtypes[2] = {TEXTOID, BYTEAOID};
	NullableDatum args[2];
	bool		isnull;
	volatile Datum result = (Datum) 0;

	/* Anything that is not a token is invalid, whatever the source. */
	if (PG_ARGISNULL(0) ||
		toast_raw_datum_size(PG_GETARG_DATUM(0)) > VARHDRSZ + APIKEY_INPUT_MAXLEN)
		PG_RETURN_TEXT_P(cstring_to_text("invalid"));
	token = PG_GETARG_TEXT_PP(0);
	native = apikey_parse(VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token), &tok);
	if (source != NULL)
		check_source(source, native ? &tok : NULL);
	/* nor may the source hold the token as given (an imported one, say) */
	if (source != NULL && !native && VARSIZE_ANY_EXHDR(token) >= APIKEY_IMPORTED_MINLEN &&
		memmem(VARDATA_ANY(source), VARSIZE_ANY_EXHDR(source),
			   VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token)) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("leak report source must not contain an api key"),
				 errdetail("The source is written to the audit log, which never holds a secret; the value given is not shown."),
				 errhint("Name where the token was found, such as a repository and path or a URL, without the token.")));

	/*
	 * Only a live secret counts: wrong or unknown is "invalid", no trace.
	 * A token imported from another system (import.c) counts too; its
	 * secret, for the catalog, is the whole token.
	 */
	apikey_request_log_kind_next(APIKEY_REQUEST_LEAK_REPORT);
	apikey_verify_token(VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token), &req, &v);
	if (v.status == APIKEY_INVALID)
		PG_RETURN_TEXT_P(cstring_to_text("invalid"));

	if (XactReadOnly)
		ereport(ERROR,
				(errcode(ERRCODE_READ_ONLY_SQL_TRANSACTION),
				 errmsg("cannot report an api key leak in a read-only transaction"),
				 errhint("Report it on the primary, outside a READ ONLY transaction: the key is revoked by the report.")));

	if (native)
		apikey_digest(tok.secret, APIKEY_SECRET_LEN, digest);
	else
		apikey_digest(VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token), digest);
	digest_b = (bytea *) palloc(VARHDRSZ + APIKEY_DIGEST_LEN);
	SET_VARSIZE(digest_b, VARHDRSZ + APIKEY_DIGEST_LEN);
	memcpy(VARDATA(digest_b), digest, APIKEY_DIGEST_LEN);
	explicit_bzero(digest, sizeof(digest));

	/* {"leak": {"source": ...}} for the audit row */
	initStringInfo(&changes);
	appendStringInfoString(&changes, "{\"leak\": {\"source\": ");
	if (source != NULL)
		escape_json(&changes, text_to_cstring(source));
	else
		appendStringInfoString(&changes, "null");
	appendStringInfoString(&changes, "}}");

	args[0].value = PointerGetDatum(cstring_to_text_with_len(native ? tok.key_id : v.key_id,
															 APIKEY_KEY_ID_LEN));
	args[0].isnull = false;
	args[1].value = PointerGetDatum(digest_b);
	args[1].isnull = false;

	apikeys_audit_note_set("revoke_leak", changes.data);
	PG_TRY();
	{
		result = apikeys_call_internal("_apikey_report_leak", 2, argtypes, args, &isnull);
	}
	PG_FINALLY();
	{
		apikeys_audit_note_clear();
		explicit_bzero(VARDATA(digest_b), APIKEY_DIGEST_LEN);
	}
	PG_END_TRY();

	if (isnull)
		elog(ERROR, "apikeys_internal._apikey_report_leak returned null");
	PG_RETURN_DATUM(result);
}
