/*
 * import.c
 *		Imported and custom keys: apikey_import, and the verification of
 *		tokens that are not in apikeys' format.
 *
 * Users migrating from another system keep their keys working.
 * apikey_import takes an existing token, or only its SHA-256, with the
 * usual settings and the key's status:
 *
 * - A token in apikeys' own format (a custom key: user-chosen value with a
 *   valid checksum) becomes a native key with the token's key id and
 *   prefix, its secret hashed as usual.  Nothing else about it is special.
 * - Any other token (a legacy key) gets a fresh key id; the catalog stores
 *   SHA-256 of the whole token as the key's hash (for such a key the whole
 *   token is the secret), and apikeys_internal.imported_keys maps that
 *   digest to the key id, through a unique index.
 *
 * Verification of a legacy token starts where the native path gives up:
 * apikey_verify_token calls apikey_verify_imported only for input that does
 * not parse as a native token, so a native token pays nothing for this.
 * Input with the native shape but a wrong checksum (a typo) is still
 * rejected with no table read: import refuses legacy tokens of that shape.
 * Otherwise the whole input is hashed, the digest looked up by a direct
 * index scan (latest snapshot, as the catalog), and the key verified with
 * apikey_verify_digest like any other: status, expiry, restrictions,
 * scopes, limits.  apikey_rotate turns an imported key into a native one.
 *
 * The plaintext token never enters SQL: apikey_import hashes it here and
 * hands the internal function its digest only.
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/xact.h"
#include "catalog/pg_index.h"
#include "catalog/pg_type_d.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/pg_list.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "apikeys.h"

#define IMPORTED_KEYS		"imported_keys"
/* columns of apikeys_internal.imported_keys */
#define Anum_imported_key_id	1
#define Anum_imported_digest	2
#define Anum_imported_prefix	3

/*
 * The table and its digest index, resolved once per backend and forgotten
 * on any relcache invalidation of the table (or of everything).
 */
static Oid	imported_relid = InvalidOid;
static Oid	imported_indexid = InvalidOid;
static bool callback_registered = false;

/* Relcache callback: forget the table's and index's OIDs if they may be stale. */
static void
imported_relcache_callback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == imported_relid)
	{
		imported_relid = InvalidOid;
		imported_indexid = InvalidOid;
	}
}

/* The unique index on digest of the opened table (what verify scans). */
static Oid
digest_index(Relation rel)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	Oid			found = InvalidOid;

	foreach(lc, indexes)
	{
		HeapTuple	tp = SearchSysCache1(INDEXRELID, ObjectIdGetDatum(lfirst_oid(lc)));
		Form_pg_index idx;

		if (!HeapTupleIsValid(tp))
			continue;
		idx = (Form_pg_index) GETSTRUCT(tp);
		if (idx->indisunique && idx->indnkeyatts == 1 &&
			idx->indkey.values[0] == Anum_imported_digest)
			found = idx->indexrelid;
		ReleaseSysCache(tp);
	}
	list_free(indexes);
	if (!OidIsValid(found))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apikeys imported_keys has no unique index on digest"),
				 errhint("Re-create the extension.")));
	return found;
}

/* Is c a base62 character? */
static inline bool
is_base62(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
		(c >= 'a' && c <= 'z');
}

/*
 * Does s[0..len) have the shape of a native token (prefix, "_", 12 base62,
 * "_", 38 base62), whatever its checksum?
 */
static bool
apikey_has_native_shape(const char *s, size_t len)
{
	int			prefix_len;
	const char *tail;

	if (len < APIKEY_TOKEN_MINLEN || len > APIKEY_TOKEN_MAXLEN)
		return false;
	prefix_len = (int) (len - APIKEY_TAIL_LEN);
	tail = s + prefix_len;
	if (tail[0] != '_' || tail[1 + APIKEY_KEY_ID_LEN] != '_' ||
		!apikey_prefix_is_valid(s, prefix_len))
		return false;
	for (int i = 1; i < APIKEY_TAIL_LEN; i++)
	{
		if (i != 1 + APIKEY_KEY_ID_LEN && !is_base62(tail[i]))
			return false;
	}
	return true;
}

/* Is s[0..len) acceptable as a legacy token: printable ASCII, no space? */
static bool
legacy_token_chars_ok(const char *s, size_t len)
{
	if (len < APIKEY_IMPORTED_MINLEN || len > APIKEY_INPUT_MAXLEN)
		return false;
	for (size_t i = 0; i < len; i++)
	{
		if ((unsigned char) s[i] < 0x21 || (unsigned char) s[i] > 0x7e)
			return false;
	}
	return true;
}

/*
 * Open imported_keys and find its unique index on digest.  Returns NULL
 * (and no lock) when the table does not exist: a database at 0.1.0.
 */
static Relation
open_imported(Oid *indexid)
{
	for (int attempt = 0;; attempt++)
	{
		Oid			relid;
		Relation	rel;

		if (!callback_registered)
		{
			CacheRegisterRelcacheCallback(imported_relcache_callback, (Datum) 0);
			callback_registered = true;
		}
		if (!OidIsValid(imported_relid))
			imported_relid = apikeys_relation_oid(IMPORTED_KEYS);
		relid = imported_relid;
		if (!OidIsValid(relid))
			return NULL;
		rel = try_relation_open(relid, AccessShareLock);
		if (rel != NULL && relid == imported_relid &&
			rel->rd_rel->relkind == RELKIND_RELATION)
		{
			/* looked up once, then kept until the table is invalidated */
			if (!OidIsValid(imported_indexid))
				imported_indexid = digest_index(rel);
			*indexid = imported_indexid;
			return rel;
		}
		if (rel != NULL)
			relation_close(rel, AccessShareLock);
		imported_relid = InvalidOid;
		if (attempt >= 10)
			elog(ERROR, "apikeys imported_keys keeps changing while it is opened");
	}
}

/*
 * Verify s[0..len), which is not a native token, as an imported legacy
 * token.  Returns false, touching nothing, when it cannot be one (the
 * caller then answers invalid); otherwise fills in the verdict and returns
 * true.
 */
bool
apikey_verify_imported(const char *s, size_t len, const ApiKeyRequest *req,
					   ApiKeyVerdict *out)
{
	uint8		digest[APIKEY_DIGEST_LEN];
	Relation	rel;
	Oid			indexid;
	Snapshot	snapshot;
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tup;
	bytea	   *digest_b;
	char		key_id[APIKEY_KEY_ID_LEN];
	char		prefix[APIKEY_PREFIX_MAXLEN];
	int			prefix_len = 0;
	bool		found = false;

	/* a typo in a native token stays a checksum failure, no table read */
	if (!legacy_token_chars_ok(s, len) || apikey_has_native_shape(s, len))
		return false;
	rel = open_imported(&indexid);
	if (rel == NULL)
		return false;

	apikey_digest(s, len, digest);
	digest_b = (bytea *) palloc(VARHDRSZ + APIKEY_DIGEST_LEN);
	SET_VARSIZE(digest_b, VARHDRSZ + APIKEY_DIGEST_LEN);
	memcpy(VARDATA(digest_b), digest, APIKEY_DIGEST_LEN);

	snapshot = RegisterSnapshot(IsInParallelMode() ? GetActiveSnapshot()
								: GetLatestSnapshot());
	ScanKeyInit(&skey, Anum_imported_digest, BTEqualStrategyNumber, F_BYTEAEQ,
				PointerGetDatum(digest_b));
	scan = systable_beginscan(rel, indexid, true, snapshot, 1, &skey);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup) &&
		RelationGetDescr(rel)->natts >= Anum_imported_prefix)
	{
		bool		isnull[3];
		Datum		kid = heap_getattr(tup, Anum_imported_key_id, RelationGetDescr(rel), &isnull[0]);
		Datum		pfx = heap_getattr(tup, Anum_imported_prefix, RelationGetDescr(rel), &isnull[1]);

		if (!isnull[0] && !isnull[1])
		{
			text	   *k = DatumGetTextPP(kid);
			text	   *p = DatumGetTextPP(pfx);

			if (VARSIZE_ANY_EXHDR(k) == APIKEY_KEY_ID_LEN &&
				VARSIZE_ANY_EXHDR(p) <= APIKEY_PREFIX_MAXLEN)
			{
				memcpy(key_id, VARDATA_ANY(k), APIKEY_KEY_ID_LEN);
				prefix_len = VARSIZE_ANY_EXHDR(p);
				memcpy(prefix, VARDATA_ANY(p), prefix_len);
				found = true;
			}
		}
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	relation_close(rel, AccessShareLock);
	pfree(digest_b);

	/* the token of no imported key: the caller treats it as no token */
	if (!found)
	{
		explicit_bzero(digest, sizeof(digest));
		return false;
	}

	/*
	 * The catalog decides: its hash (SHA-256 of the whole token) must match,
	 * now or as the previous secret of a rotation with grace.
	 */
	apikey_verify_digest(prefix, prefix_len, key_id, digest, req, out);
	explicit_bzero(digest, sizeof(digest));
	return true;
}

/* SQL function: apikey_import(text, regrole, text, bytea, text[], timestamptz, text, jsonb, cidr[], text[], text) returns text */
PG_FUNCTION_INFO_V1(apikey_import);
Datum
apikey_import(PG_FUNCTION_ARGS)
{
	/* the SQL arguments, in order */
	enum
	{
		A_name, A_role, A_token, A_token_sha256, A_scopes, A_expires_at,
		A_prefix, A_metadata, A_allowed_ips, A_allowed_origins, A_status,
		A_nargs
	};
	/* _apikey_import(caller, name, role, scopes, expires_at, prefix, metadata,
	 * allowed_ips, allowed_origins, status, key_id, digest, format,
	 * hash_version, pepper_id) */
	Oid			argtypes[14] = {TEXTOID, REGROLEOID, TEXTARRAYOID, TIMESTAMPTZOID,
		TEXTOID, JSONBOID, CIDRARRAYOID, TEXTARRAYOID, TEXTOID, TEXTOID, BYTEAOID, TEXTOID,
	INT2OID, TEXTOID};
	NullableDatum args[14];
	uint8		digest[APIKEY_DIGEST_LEN];
	int16		version = APIKEY_HASH_SHA256;
	char		pepper_id[APIKEY_PEPPER_ID_LEN];
	bytea	   *digest_b;
	const char *format;
	text	   *key_id = NULL;
	text	   *prefix = NULL;
	bool		isnull;
	Datum		result;

	if (PG_NARGS() != A_nargs)
		elog(ERROR, "apikey_import called with %d arguments", PG_NARGS());
	/* a logged-in key imports no keys (lifecycle.c) */
	apikeys_refuse_key_session("apikey_import");
	if (PG_ARGISNULL(A_token) == PG_ARGISNULL(A_token_sha256))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("give either token or token_sha256 to apikey_import"),
				 errdetail("token is the key's existing token; token_sha256 is the SHA-256 of that token, as another system stored it."),
				 errhint("Pass exactly one of them, by name: apikey_import('name', token => $1).")));

	if (!PG_ARGISNULL(A_token))
	{
		Datum		raw = PG_GETARG_DATUM(A_token);
		text	   *token;
		const char *s;
		int			len;
		ApiKeyToken tok;
		uint8		secret_digest[APIKEY_DIGEST_LEN];

		if (toast_raw_datum_size(raw) > VARHDRSZ + APIKEY_INPUT_MAXLEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("token to import is too long"),
					 errdetail("An imported token has at most %d characters; the value given is not shown.",
							   APIKEY_INPUT_MAXLEN)));
		token = PG_GETARG_TEXT_PP(A_token);
		s = VARDATA_ANY(token);
		len = VARSIZE_ANY_EXHDR(token);
		if (apikey_parse(s, len, &tok))
		{
			/* a custom key in apikeys' own format: a native key */
			if (!PG_ARGISNULL(A_prefix))
			{
				text	   *p = PG_GETARG_TEXT_PP(A_prefix);

				if ((int) VARSIZE_ANY_EXHDR(p) != tok.prefix_len ||
					memcmp(VARDATA_ANY(p), tok.prefix, tok.prefix_len) != 0)
					ereport(ERROR,
							(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
							 errmsg("prefix does not match the token's prefix"),
							 errdetail("The token is in apikeys' format, and its prefix is part of it."),
							 errhint("Leave prefix out when importing a token in apikeys' format.")));
			}
			/*
			 * its secret hashed as a created key's is: peppered if set (a
			 * legacy token keeps plain SHA-256, which imported_keys needs
			 * for the lookup anyway)
			 */
			apikey_digest(tok.secret, APIKEY_SECRET_LEN, secret_digest);
			version = apikey_stored_hash(secret_digest, digest, pepper_id);
			explicit_bzero(secret_digest, sizeof(secret_digest));
			key_id = cstring_to_text_with_len(tok.key_id, APIKEY_KEY_ID_LEN);
			prefix = cstring_to_text_with_len(tok.prefix, tok.prefix_len);
			format = "native";
		}
		else if (apikey_has_native_shape(s, len))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("token to import has apikeys' format but a wrong checksum"),
					 errdetail("A token shaped like <prefix>_<key id>_<secret><checksum> must carry its checksum; the value given is not shown."),
					 errhint("Check it for a typo: tokens of this shape with a wrong checksum are rejected before any lookup.")));
		else if (!legacy_token_chars_ok(s, len))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("token to import is not acceptable"),
					 errdetail("An imported token is %d to %d printable ASCII characters without spaces; the value given is not shown.",
							   APIKEY_IMPORTED_MINLEN, APIKEY_INPUT_MAXLEN)));
		else
		{
			apikey_digest(s, len, digest);
			format = "token";
		}
	}
	else
	{
		bytea	   *h = PG_GETARG_BYTEA_PP(A_token_sha256);

		if (VARSIZE_ANY_EXHDR(h) != APIKEY_DIGEST_LEN)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("token_sha256 must be 32 bytes"),
					 errdetail("The value given has %d bytes.", (int) VARSIZE_ANY_EXHDR(h)),
					 errhint("Pass the SHA-256 digest as bytea, such as decode($1, 'hex').")));
		memcpy(digest, VARDATA_ANY(h), APIKEY_DIGEST_LEN);
		format = "token_sha256";
	}

	digest_b = (bytea *) palloc(VARHDRSZ + APIKEY_DIGEST_LEN);
	SET_VARSIZE(digest_b, VARHDRSZ + APIKEY_DIGEST_LEN);
	memcpy(VARDATA(digest_b), digest, APIKEY_DIGEST_LEN);
	explicit_bzero(digest, sizeof(digest));

#define PASS(i, a) (args[i] = fcinfo->args[a])
	PASS(0, A_name);
	PASS(1, A_role);
	PASS(2, A_scopes);
	PASS(3, A_expires_at);
	if (prefix != NULL)
	{
		args[4].value = PointerGetDatum(prefix);
		args[4].isnull = false;
	}
	else
		PASS(4, A_prefix);
	PASS(5, A_metadata);
	PASS(6, A_allowed_ips);
	PASS(7, A_allowed_origins);
	PASS(8, A_status);
#undef PASS
	args[9].value = key_id ? PointerGetDatum(key_id) : (Datum) 0;
	args[9].isnull = key_id == NULL;
	args[10].value = PointerGetDatum(digest_b);
	args[10].isnull = false;
	args[11].value = CStringGetTextDatum(format);
	args[11].isnull = false;
	args[12].value = Int16GetDatum(version);
	args[12].isnull = false;
	args[13].value = version == APIKEY_HASH_HMAC_SHA256 ?
		PointerGetDatum(cstring_to_text_with_len(pepper_id, APIKEY_PEPPER_ID_LEN)) : (Datum) 0;
	args[13].isnull = version != APIKEY_HASH_HMAC_SHA256;

	result = apikeys_call_internal("_apikey_import", 14, argtypes, args, &isnull);
	explicit_bzero(VARDATA(digest_b), APIKEY_DIGEST_LEN);
	if (isnull)
		elog(ERROR, "apikeys_internal._apikey_import returned null");
	PG_RETURN_DATUM(result);
}
