/*
 * verify.c
 *		The verify hot path: apikey_verify(text) and apikey_verify(apikey).
 *
 * C end to end: the token is parsed and checksummed in place, the key is
 * found with a direct index scan of apikeys.key_catalog (no SPI, no SQL, no
 * SECURITY DEFINER), the secret's SHA-256 is compared in constant time, and
 * status, expiry, role and scope are checked.  Bad client input of any kind
 * yields status 'invalid'; this file raises only for can't-happen states.
 *
 * The scan uses the latest snapshot, not the statement's, so a revoke is
 * effective for every session from the moment it commits, whatever the
 * caller's isolation level.
 */
#include "postgres.h"

#include "access/detoast.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class_d.h"
#include "catalog/pg_collation_d.h"
#include "catalog/pg_type_d.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/rel.h"
#include "utils/relcache.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "apikeys.h"
#include "compat.h"

#define APIKEYS_SCHEMA			"apikeys"
#define APIKEYS_CATALOG			"key_catalog"

/* Columns of apikeys.verification, in type order. */
enum
{
	Vf_valid = 0,
	Vf_status,
	Vf_key_id,
	Vf_role,
	Vf_scopes,
	Vf_expires_at,
	Vf_metadata,
	Vf_name,
	Vf_natts
};

/* What the index lookup copies out of a catalog row. */
typedef struct KeyRow
{
	bool		secret_ok;
	char		state;			/* 'a'ctive, 'd'isabled, 'r'evoked */
	Oid			role;
	Datum		name;
	Datum		scopes;
	bool		scopes_null;
	TimestampTz expires_at;
	bool		expires_null;
	Datum		metadata;
	bool		metadata_null;
} KeyRow;

/*
 * The catalog's OID, resolved once per backend and forgotten whenever a
 * relcache invalidation names it (or all relations): that covers DROP
 * EXTENSION and anything else that could make it stale.  Its primary key
 * index comes from the relcache each time, under the lock.
 */
static Oid	catalog_relid = InvalidOid;
static bool catalog_callback_registered = false;

/* Relcache callback: forget the catalog's OID if it may be stale. */
static void
catalog_relcache_callback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == catalog_relid)
		catalog_relid = InvalidOid;
}

/* Look up apikeys.key_catalog by name, if its OID is not known. */
static void
resolve_catalog(void)
{
	Oid			nsp;
	Oid			relid = InvalidOid;

	if (OidIsValid(catalog_relid))
		return;
	if (!catalog_callback_registered)
	{
		CacheRegisterRelcacheCallback(catalog_relcache_callback, (Datum) 0);
		catalog_callback_registered = true;
	}
	nsp = get_namespace_oid(APIKEYS_SCHEMA, true);
	if (OidIsValid(nsp))
		relid = get_relname_relid(APIKEYS_CATALOG, nsp);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apikeys catalog is missing"),
				 errhint("Run CREATE EXTENSION apikeys in this database.")));
	catalog_relid = relid;
}

/*
 * Open and lock the catalog; return it with its primary key index.
 *
 * Taking the lock processes pending invalidations.  If they made the OID
 * we used stale (the extension was dropped or re-created meanwhile), let go
 * and try again with the name looked up afresh; once the lock is held and
 * nothing was invalidated, the relation cannot change under us.
 */
static Relation
open_catalog(Oid *indexid)
{
	for (int attempt = 0;; attempt++)
	{
		Oid			relid;
		Relation	rel;

		resolve_catalog();
		relid = catalog_relid;
		rel = try_relation_open(relid, AccessShareLock);
		if (rel != NULL && relid == catalog_relid &&
			rel->rd_rel->relkind == RELKIND_RELATION)
		{
			*indexid = RelationGetPrimaryKeyIndex(rel);
			if (!OidIsValid(*indexid))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("apikeys catalog has no primary key"),
						 errhint("Re-create the extension.")));
			return rel;
		}
		if (rel != NULL)
			relation_close(rel, AccessShareLock);
		catalog_relid = InvalidOid;
		if (attempt >= 10)
			elog(ERROR, "apikeys catalog keeps changing while it is opened");
	}
}

/* Does a stored (version, hash) pair match this digest? */
static bool
stored_hash_matches(Datum version, Datum hash, const uint8 *digest)
{
	bytea	   *h;
	bool		ok;

	if (DatumGetInt16(version) != APIKEY_HASH_SHA256)
		return false;
	h = DatumGetByteaPP(hash);
	ok = VARSIZE_ANY_EXHDR(h) == APIKEY_DIGEST_LEN &&
		apikey_digest_equal((const uint8 *) VARDATA_ANY(h), digest,
							APIKEY_DIGEST_LEN);
	if ((Pointer) h != DatumGetPointer(hash))
		pfree(h);
	return ok;
}

/* Copy a varlena column out of the scanned tuple, detoasted. */
static Datum
copy_varlena(Datum d)
{
	return PointerGetDatum(PG_DETOAST_DATUM_COPY(d));
}

/*
 * Find key_id in the catalog by index scan and copy out what verify needs.
 * Returns false when there is no such key or the prefix differs.
 */
static bool
lookup_key(const char *prefix, int prefix_len, const char *key_id,
		   const uint8 *digest, TimestampTz now, KeyRow *row)
{
	Relation	rel;
	Oid			indexid;
	Snapshot	snapshot;
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tup;
	text	   *key_text;
	bool		found = false;

	key_text = cstring_to_text_with_len(key_id, APIKEY_KEY_ID_LEN);
	rel = open_catalog(&indexid);
	if (RelationGetDescr(rel)->natts != Natts_key_catalog)
		elog(ERROR, "apikeys catalog has %d columns, expected %d",
			 RelationGetDescr(rel)->natts, Natts_key_catalog);

	/*
	 * The latest snapshot makes a commit elsewhere effective at once.  It
	 * cannot be taken in parallel mode (verify is PARALLEL UNSAFE, but a
	 * mislabelled caller could still get there): fall back to the
	 * statement's snapshot rather than fail.
	 */
	snapshot = RegisterSnapshot(IsInParallelMode() ? GetActiveSnapshot()
								: GetLatestSnapshot());
	ScanKeyInit(&skey, Anum_key_key_id, BTEqualStrategyNumber, F_TEXTEQ,
				PointerGetDatum(key_text));
	scan = systable_beginscan(rel, indexid, true, snapshot, 1, &skey);

	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
	{
		Datum		values[Natts_key_catalog];
		bool		nulls[Natts_key_catalog];
		text	   *stored_prefix;

		heap_deform_tuple(tup, RelationGetDescr(rel), values, nulls);
#define COL(a) ((a) - 1)
		stored_prefix = DatumGetTextPP(values[COL(Anum_key_prefix)]);
		if ((int) VARSIZE_ANY_EXHDR(stored_prefix) == prefix_len &&
			memcmp(VARDATA_ANY(stored_prefix), prefix, prefix_len) == 0)
		{
			text	   *state = DatumGetTextPP(values[COL(Anum_key_state)]);

			found = true;
			row->secret_ok = stored_hash_matches(values[COL(Anum_key_hash_version)],
												 values[COL(Anum_key_hash)],
												 digest);
			/* The previous secret of a rotation with grace. */
			if (!row->secret_ok &&
				!nulls[COL(Anum_key_prev_hash)] &&
				!nulls[COL(Anum_key_prev_hash_version)] &&
				!nulls[COL(Anum_key_prev_valid_until)] &&
				DatumGetTimestampTz(values[COL(Anum_key_prev_valid_until)]) > now)
				row->secret_ok = stored_hash_matches(values[COL(Anum_key_prev_hash_version)],
													 values[COL(Anum_key_prev_hash)],
													 digest);

			/* Nothing more is needed, or returned, for a wrong secret. */
			if (row->secret_ok)
			{
				row->state = VARSIZE_ANY_EXHDR(state) > 0 ? *VARDATA_ANY(state) : '?';
				row->role = DatumGetObjectId(values[COL(Anum_key_role)]);
				row->name = copy_varlena(values[COL(Anum_key_name)]);
				row->scopes_null = nulls[COL(Anum_key_scopes)];
				if (!row->scopes_null)
					row->scopes = copy_varlena(values[COL(Anum_key_scopes)]);
				row->expires_null = nulls[COL(Anum_key_expires_at)];
				if (!row->expires_null)
					row->expires_at = DatumGetTimestampTz(values[COL(Anum_key_expires_at)]);
				row->metadata_null = nulls[COL(Anum_key_metadata)];
				if (!row->metadata_null)
					row->metadata = copy_varlena(values[COL(Anum_key_metadata)]);
			}
		}
#undef COL
	}

	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	relation_close(rel, AccessShareLock);
	pfree(key_text);
	return found;
}

/* Is scope among the key's scopes ('*' grants every scope)? */
static bool
scopes_contain(Datum scopes, text *scope)
{
	ArrayType  *arr = DatumGetArrayTypeP(scopes);
	Datum	   *elems;
	bool	   *enulls;
	int			n;
	const char *want = VARDATA_ANY(scope);
	int			want_len = VARSIZE_ANY_EXHDR(scope);

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
	for (int i = 0; i < n; i++)
	{
		text	   *e;
		int			len;

		if (enulls[i])
			continue;
		e = DatumGetTextPP(elems[i]);
		len = VARSIZE_ANY_EXHDR(e);
		if ((len == 1 && *VARDATA_ANY(e) == '*') ||
			(len == want_len && memcmp(VARDATA_ANY(e), want, len) == 0))
			return true;
	}
	return false;
}

/* Build the apikeys.verification row. */
static Datum
make_result(FunctionCallInfo fcinfo, const char *status, const char *key_id,
			const char *role_name, const KeyRow *row)
{
	Oid			rettype = get_fn_expr_rettype(fcinfo->flinfo);
	TupleDesc	tupdesc;
	Datum		values[Vf_natts];
	bool		nulls[Vf_natts];
	Datum		result;

	if (!OidIsValid(rettype))
		rettype = get_func_rettype(fcinfo->flinfo->fn_oid);
	tupdesc = lookup_rowtype_tupdesc(rettype, -1);
	if (tupdesc->natts != Vf_natts)
		elog(ERROR, "apikeys.verification has %d columns, expected %d",
			 tupdesc->natts, Vf_natts);

	memset(nulls, true, sizeof(nulls));
	values[Vf_valid] = BoolGetDatum(strcmp(status, "valid") == 0);
	nulls[Vf_valid] = false;
	values[Vf_status] = CStringGetTextDatum(status);
	nulls[Vf_status] = false;
	if (row != NULL)
	{
		values[Vf_key_id] = PointerGetDatum(cstring_to_text_with_len(key_id, APIKEY_KEY_ID_LEN));
		nulls[Vf_key_id] = false;
		if (role_name != NULL)
		{
			values[Vf_role] = DirectFunctionCall1(namein, CStringGetDatum(role_name));
			nulls[Vf_role] = false;
		}
		values[Vf_scopes] = row->scopes;
		nulls[Vf_scopes] = row->scopes_null;
		values[Vf_expires_at] = TimestampTzGetDatum(row->expires_at);
		nulls[Vf_expires_at] = row->expires_null;
		values[Vf_metadata] = row->metadata;
		nulls[Vf_metadata] = row->metadata_null;
		values[Vf_name] = row->name;
		nulls[Vf_name] = false;
	}
	result = HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
	ReleaseTupleDesc(tupdesc);
	return result;
}

/*
 * Verify a parsed token (prefix, key id, digest of the secret) and return
 * the apikeys.verification row.  key_id NULL means the input did not parse.
 */
Datum
apikey_verify_parsed(FunctionCallInfo fcinfo, const char *prefix,
					 int prefix_len, const char *key_id,
					 const uint8 *digest, text *scope)
{
	KeyRow		row;
	TimestampTz now;
	char	   *role_name;

	if (key_id == NULL)
		return make_result(fcinfo, "invalid", NULL, NULL, NULL);

	memset(&row, 0, sizeof(row));
	/* one clock reading serves the grace period and the expiry */
	now = GetCurrentTimestamp();
	if (!lookup_key(prefix, prefix_len, key_id, digest, now, &row) || !row.secret_ok)
		return make_result(fcinfo, "invalid", NULL, NULL, NULL);

	/* A key whose role was dropped is orphaned: it authenticates nobody. */
	role_name = GetUserNameFromId(row.role, true);
	if (role_name == NULL)
		return make_result(fcinfo, "invalid", NULL, NULL, NULL);

	if (row.state == 'r')
		return make_result(fcinfo, "revoked", key_id, role_name, &row);
	if (row.state != 'a')
		return make_result(fcinfo, "disabled", key_id, role_name, &row);
	if (!row.expires_null && row.expires_at <= now)
		return make_result(fcinfo, "expired", key_id, role_name, &row);
	if (scope != NULL &&
		(row.scopes_null || !scopes_contain(row.scopes, scope)))
		return make_result(fcinfo, "insufficient_scope", key_id, role_name, &row);
	return make_result(fcinfo, "valid", key_id, role_name, &row);
}

/* SQL function: apikey_verify(text, text) returns apikeys.verification */
PG_FUNCTION_INFO_V1(apikey_verify_text);
Datum
apikey_verify_text(PG_FUNCTION_ARGS)
{
	text	   *scope = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	Datum		raw;
	text	   *token;
	ApiKeyToken tok;
	uint8		digest[APIKEY_DIGEST_LEN];
	Datum		result;

	if (PG_ARGISNULL(0))
		return apikey_verify_parsed(fcinfo, NULL, 0, NULL, NULL, scope);

	/* Reject oversized input before detoasting it. */
	raw = PG_GETARG_DATUM(0);
	if (toast_raw_datum_size(raw) > VARHDRSZ + APIKEY_TOKEN_MAXLEN)
		return apikey_verify_parsed(fcinfo, NULL, 0, NULL, NULL, scope);

	token = DatumGetTextPP(raw);
	if (!apikey_parse(VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token), &tok))
		return apikey_verify_parsed(fcinfo, NULL, 0, NULL, NULL, scope);

	apikey_digest(tok.secret, APIKEY_SECRET_LEN, digest);
	result = apikey_verify_parsed(fcinfo, tok.prefix, tok.prefix_len,
								  tok.key_id, digest, scope);
	explicit_bzero(digest, sizeof(digest));
	return result;
}

/* SQL function: apikey_verify(apikey, text) returns apikeys.verification */
PG_FUNCTION_INFO_V1(apikey_verify_apikey);
Datum
apikey_verify_apikey(PG_FUNCTION_ARGS)
{
	text	   *scope = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	ApiKeyData *key;
	uint8		digest[APIKEY_DIGEST_LEN];
	Datum		result;

	if (PG_ARGISNULL(0))
		return apikey_verify_parsed(fcinfo, NULL, 0, NULL, NULL, scope);
	key = PG_GETARG_APIKEY_P(0);

	/* A value parsed in another transaction proves nothing. */
	if (key->lxid != APIKEYS_CURRENT_LXID())
		return apikey_verify_parsed(fcinfo, NULL, 0, NULL, NULL, scope);

	/* Unmask; a value parsed by another backend yields a wrong digest. */
	memcpy(digest, key->digest, APIKEY_DIGEST_LEN);
	apikey_session_mask(digest);
	result = apikey_verify_parsed(fcinfo, key->prefix, key->prefix_len,
								  key->key_id, digest, scope);
	explicit_bzero(digest, sizeof(digest));
	return result;
}
