/*
 * type.c
 *		The apikey type: a parsed, checksum-validated token.
 *
 * Input accepts only well-formed tokens and never echoes what it was given.
 * The value keeps the prefix, the key id and the SHA-256 digest of the
 * secret masked for this backend and bound to the parsing transaction, never
 * the secret itself; output (text and binary) is redacted to the prefix and
 * key id.
 */
#include "postgres.h"

#include "lib/stringinfo.h"
#include "libpq/pqformat.h"
#include "storage/proc.h"
#include "utils/builtins.h"

#include "apikeys.h"
#include "compat.h"

#define APIKEY_REDACTED		"********"

/* Raise the one input error the type has, without the input. */
static void
report_invalid_apikey(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_TEXT_REPRESENTATION),
			 errmsg("invalid input syntax for type apikey"),
			 errdetail("The value is not a well-formed api key token, or its checksum does not match.")));
}

/* Build an apikey value from a token, or raise 22P02. */
static ApiKeyData *
apikey_from_token(const char *s, size_t len)
{
	ApiKeyToken tok;
	ApiKeyData *key;
	Size		size;

	if (!apikey_parse(s, len, &tok))
		report_invalid_apikey();

	size = offsetof(ApiKeyData, prefix) + tok.prefix_len;
	key = (ApiKeyData *) palloc0(size);
	SET_VARSIZE(key, size);
	key->prefix_len = (uint8) tok.prefix_len;
	memcpy(key->key_id, tok.key_id, APIKEY_KEY_ID_LEN);
	apikey_digest(tok.secret, APIKEY_SECRET_LEN, key->digest);
	apikey_session_mask(key->digest);
	key->lxid = APIKEYS_CURRENT_LXID();
	memcpy(key->prefix, tok.prefix, tok.prefix_len);
	return key;
}

/* The redacted text form: <prefix>_<key_id>_******** */
static char *
apikey_redacted_cstring(const ApiKeyData *key)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendBinaryStringInfo(&buf, key->prefix, key->prefix_len);
	appendStringInfoChar(&buf, '_');
	appendBinaryStringInfo(&buf, key->key_id, APIKEY_KEY_ID_LEN);
	appendStringInfoChar(&buf, '_');
	appendStringInfoString(&buf, APIKEY_REDACTED);
	return buf.data;
}

/* SQL function: apikey_in(cstring) returns apikey */
PG_FUNCTION_INFO_V1(apikey_in);
Datum
apikey_in(PG_FUNCTION_ARGS)
{
	char	   *str = PG_GETARG_CSTRING(0);

	PG_RETURN_POINTER(apikey_from_token(str, strlen(str)));
}

/* SQL function: apikey_out(apikey) returns cstring */
PG_FUNCTION_INFO_V1(apikey_out);
Datum
apikey_out(PG_FUNCTION_ARGS)
{
	ApiKeyData *key = PG_GETARG_APIKEY_P(0);

	PG_RETURN_CSTRING(apikey_redacted_cstring(key));
}

/* SQL function: apikey_recv(internal) returns apikey */
PG_FUNCTION_INFO_V1(apikey_recv);
Datum
apikey_recv(PG_FUNCTION_ARGS)
{
	StringInfo	buf = (StringInfo) PG_GETARG_POINTER(0);
	const char *s;
	int			len = buf->len - buf->cursor;

	/* The binary form of an incoming token is its text; validate it alike. */
	if (len < 0 || len > APIKEY_TOKEN_MAXLEN)
		report_invalid_apikey();
	s = pq_getmsgbytes(buf, len);
	PG_RETURN_POINTER(apikey_from_token(s, len));
}

/* SQL function: apikey_send(apikey) returns bytea */
PG_FUNCTION_INFO_V1(apikey_send);
Datum
apikey_send(PG_FUNCTION_ARGS)
{
	ApiKeyData *key = PG_GETARG_APIKEY_P(0);
	StringInfoData buf;
	char	   *redacted = apikey_redacted_cstring(key);

	pq_begintypsend(&buf);
	pq_sendbytes(&buf, redacted, strlen(redacted));
	PG_RETURN_BYTEA_P(pq_endtypsend(&buf));
}

/* SQL function: apikey_key_id(apikey) returns text */
PG_FUNCTION_INFO_V1(apikey_key_id);
Datum
apikey_key_id(PG_FUNCTION_ARGS)
{
	ApiKeyData *key = PG_GETARG_APIKEY_P(0);

	PG_RETURN_TEXT_P(cstring_to_text_with_len(key->key_id, APIKEY_KEY_ID_LEN));
}

/* SQL function: apikey_prefix(apikey) returns text */
PG_FUNCTION_INFO_V1(apikey_prefix);
Datum
apikey_prefix(PG_FUNCTION_ARGS)
{
	ApiKeyData *key = PG_GETARG_APIKEY_P(0);

	PG_RETURN_TEXT_P(cstring_to_text_with_len(key->prefix, key->prefix_len));
}

/*
 * The unmasked digest of an apikey value, for verification; false when the
 * value was parsed in another transaction (it proves nothing there).  A
 * value parsed by another backend unmasks to a wrong digest.
 */
bool
apikey_value_digest(const ApiKeyData *key, uint8 digest[APIKEY_DIGEST_LEN])
{
	if (key->lxid != APIKEYS_CURRENT_LXID())
		return false;
	memcpy(digest, key->digest, APIKEY_DIGEST_LEN);
	apikey_session_mask(digest);
	return true;
}
