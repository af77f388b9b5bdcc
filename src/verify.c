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

#include <sys/socket.h>

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
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "apikeys.h"
#include "compat.h"


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
	Vf_natts_0_1,				/* 0.1.0 ends here */
	Vf_retry_after = Vf_natts_0_1,
	Vf_remaining,
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
	Datum		allowed_ips;
	bool		ips_null;
	Datum		allowed_origins;
	bool		origins_null;
	ApiKeyLimits limits;		/* rate limits and quota (limits.c) */
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
	Oid			relid;

	if (OidIsValid(catalog_relid))
		return;
	if (!catalog_callback_registered)
	{
		CacheRegisterRelcacheCallback(catalog_relcache_callback, (Datum) 0);
		catalog_callback_registered = true;
	}
	relid = apikeys_relation_oid(APIKEYS_CATALOG);
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
	int			natts;

	key_text = cstring_to_text_with_len(key_id, APIKEY_KEY_ID_LEN);
	rel = open_catalog(&indexid);
	natts = RelationGetDescr(rel)->natts;
	if (natts != Natts_key_catalog && natts != Natts_key_catalog_0_1)
		elog(ERROR, "apikeys catalog has %d columns, expected %d",
			 natts, Natts_key_catalog);

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

		/* columns a 0.1.0 catalog lacks read as null */
		memset(nulls, true, sizeof(nulls));
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
				row->ips_null = nulls[COL(Anum_key_allowed_ips)];
				if (!row->ips_null)
					row->allowed_ips = copy_varlena(values[COL(Anum_key_allowed_ips)]);
				row->origins_null = nulls[COL(Anum_key_allowed_origins)];
				if (!row->origins_null)
					row->allowed_origins = copy_varlena(values[COL(Anum_key_allowed_origins)]);
				apikey_limits_from_row(values, nulls, natts, &row->limits);
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

/*
 * Does a key holding scopes hold want?  A held scope ending in '*' holds
 * every scope that starts with what precedes the '*' ('jobs:*' holds
 * 'jobs:read'; '*' holds everything); any other held scope only itself.
 */
bool
apikey_scopes_hold(ArrayType *scopes, const char *want, int want_len)
{
	Datum	   *elems;
	bool	   *enulls;
	int			n;

	deconstruct_array(scopes, TEXTOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
	for (int i = 0; i < n; i++)
	{
		text	   *e;
		const char *p;
		int			len;

		if (enulls[i])
			continue;
		e = DatumGetTextPP(elems[i]);
		p = VARDATA_ANY(e);
		len = VARSIZE_ANY_EXHDR(e);
		if (len == want_len && memcmp(p, want, len) == 0)
			return true;
		if (len > 0 && p[len - 1] == '*' &&
			want_len >= len - 1 && memcmp(p, want, len - 1) == 0)
			return true;
	}
	return false;
}

/*
 * An IPv4 address written as IPv4-mapped IPv6 (::ffff:a.b.c.d), as a
 * dual-stack listener reports it, is matched as the IPv4 address.
 */
static inet *
unmap_ipv4(inet *ip)
{
	static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	inet	   *v4;

	if (ip_family(ip) != PGSQL_AF_INET6 || ip_bits(ip) < 96 ||
		memcmp(ip_addr(ip), mapped, sizeof(mapped)) != 0)
		return ip;
	v4 = (inet *) palloc0(sizeof(inet));
	ip_family(v4) = PGSQL_AF_INET;
	ip_bits(v4) = ip_bits(ip) - 96;
	memcpy(ip_addr(v4), ip_addr(ip) + 12, 4);
	SET_INET_VARSIZE(v4);
	return v4;
}

/* Is client_ip inside one of the networks? */
static bool
ip_allowed(ArrayType *networks, inet *client_ip)
{
	Datum	   *elems;
	bool	   *enulls;
	int			n;
	inet	   *ip = unmap_ipv4(client_ip);

	deconstruct_array(networks, CIDROID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
	for (int i = 0; i < n; i++)
	{
		if (!enulls[i] &&
			DatumGetBool(DirectFunctionCall2(network_subeq, InetPGetDatum(ip),
											 elems[i])))
			return true;
	}
	return false;
}

/* Is c allowed in the host part of an origin? */
static inline bool
is_host_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		c == '-' || c == '.';
}

/*
 * Is origin (as sent by a browser: scheme://host[:port], compared without
 * regard to ASCII case) one of the allowed origins?  An allowed origin
 * scheme://<star>.example.com admits every subdomain of example.com, at any
 * depth, with the same scheme and port, and not example.com itself.
 */
static bool
origin_allowed(ArrayType *origins, text *origin)
{
	Datum	   *elems;
	bool	   *enulls;
	int			n;
	int			len = VARSIZE_ANY_EXHDR(origin);
	char	   *o;

	if (len == 0 || len > 255)
		return false;
	o = pnstrdup(VARDATA_ANY(origin), len);
	for (int i = 0; i < len; i++)
		o[i] = pg_ascii_tolower((unsigned char) o[i]);

	deconstruct_array(origins, TEXTOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
	for (int i = 0; i < n; i++)
	{
		text	   *e;
		const char *a;
		int			alen;
		const char *star;

		if (enulls[i])
			continue;
		e = DatumGetTextPP(elems[i]);
		a = VARDATA_ANY(e);
		alen = VARSIZE_ANY_EXHDR(e);
		star = memchr(a, '*', alen);
		if (star == NULL)
		{
			if (alen == len && memcmp(a, o, len) == 0)
				return true;
		}
		else
		{
			/* scheme:// before the star, .domain[:port] after it */
			int			head = star - a;
			int			tail = alen - head - 1;
			int			sub;

			if (len <= head + tail || memcmp(o, a, head) != 0 ||
				memcmp(o + len - tail, star + 1, tail) != 0)
				continue;
			sub = len - head - tail;	/* the subdomain labels */
			if (o[head] == '.' || o[head + sub - 1] == '.')
				continue;
			for (int j = head; j < head + sub; j++)
			{
				if (!is_host_char(o[j]))
				{
					sub = 0;
					break;
				}
			}
			if (sub > 0)
				return true;
		}
	}
	return false;
}

/* The name of a status, as apikeys.verification reports it. */
const char *
apikey_status_name(ApiKeyStatus status)
{
	switch (status)
	{
		case APIKEY_VALID:
			return "valid";
		case APIKEY_INVALID:
			return "invalid";
		case APIKEY_REVOKED:
			return "revoked";
		case APIKEY_DISABLED:
			return "disabled";
		case APIKEY_EXPIRED:
			return "expired";
		case APIKEY_IP_NOT_ALLOWED:
			return "ip_not_allowed";
		case APIKEY_ORIGIN_NOT_ALLOWED:
			return "origin_not_allowed";
		case APIKEY_INSUFFICIENT_SCOPE:
			return "insufficient_scope";
		case APIKEY_RATE_LIMITED:
			return "rate_limited";
		case APIKEY_QUOTA_EXCEEDED:
			return "quota_exceeded";
	}
	return "invalid";
}

/* Build the apikeys.verification row from a verdict. */
static Datum
verdict_datum(FunctionCallInfo fcinfo, const ApiKeyVerdict *v)
{
	Oid			rettype = get_fn_expr_rettype(fcinfo->flinfo);
	TupleDesc	tupdesc;
	Datum		values[Vf_natts];
	bool		nulls[Vf_natts];
	Datum		result;

	if (!OidIsValid(rettype))
		rettype = get_func_rettype(fcinfo->flinfo->fn_oid);
	tupdesc = lookup_rowtype_tupdesc(rettype, -1);
	/* (a database still at 0.1.0 has a shorter type) */
	if (tupdesc->natts != Vf_natts && tupdesc->natts != Vf_natts_0_1)
		elog(ERROR, "apikeys.verification has %d columns, expected %d",
			 tupdesc->natts, Vf_natts);

	memset(nulls, true, sizeof(nulls));
	values[Vf_valid] = BoolGetDatum(v->status == APIKEY_VALID);
	nulls[Vf_valid] = false;
	values[Vf_status] = CStringGetTextDatum(apikey_status_name(v->status));
	nulls[Vf_status] = false;
	if (v->status != APIKEY_INVALID)
	{
		char	   *role_name = GetUserNameFromId(v->role, true);

		values[Vf_key_id] = CStringGetTextDatum(v->key_id);
		nulls[Vf_key_id] = false;
		if (role_name != NULL)
		{
			values[Vf_role] = DirectFunctionCall1(namein, CStringGetDatum(role_name));
			nulls[Vf_role] = false;
		}
		if (v->scopes != NULL)
		{
			values[Vf_scopes] = PointerGetDatum(v->scopes);
			nulls[Vf_scopes] = false;
		}
		if (v->has_expiry)
		{
			values[Vf_expires_at] = TimestampTzGetDatum(v->expires_at);
			nulls[Vf_expires_at] = false;
		}
		if (v->metadata != NULL)
		{
			values[Vf_metadata] = JsonbPGetDatum(v->metadata);
			nulls[Vf_metadata] = false;
		}
		values[Vf_name] = PointerGetDatum(v->name);
		nulls[Vf_name] = false;
	}
	if (v->has_retry_after)
	{
		Interval   *iv = (Interval *) palloc0(sizeof(Interval));

		iv->time = v->retry_after;
		values[Vf_retry_after] = IntervalPGetDatum(iv);
		nulls[Vf_retry_after] = false;
	}
	if (v->has_remaining)
	{
		values[Vf_remaining] = Int64GetDatum(v->remaining);
		nulls[Vf_remaining] = false;
	}
	result = HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
	ReleaseTupleDesc(tupdesc);
	return result;
}

/*
 * Verify a parsed token (prefix, key id, digest of the secret) against the
 * catalog and the request, and fill in the verdict.
 */
void
apikey_verify_digest(const char *prefix, int prefix_len, const char *key_id,
					 const uint8 *digest, const ApiKeyRequest *req,
					 ApiKeyVerdict *out)
{
	KeyRow		row;
	TimestampTz now;

	memset(out, 0, sizeof(*out));
	out->status = APIKEY_INVALID;
	if (key_id == NULL)
		return;

	memset(&row, 0, sizeof(row));
	/* one clock reading serves the grace period and the expiry */
	now = GetCurrentTimestamp();
	if (!lookup_key(prefix, prefix_len, key_id, digest, now, &row))
		return;

	/*
	 * A wrong secret; or a key whose role was dropped: it is orphaned and
	 * authenticates nobody.  Either counts as a failure of that key id.
	 */
	if (!row.secret_ok || !SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(row.role)))
	{
		/* apikeys limits and usage (limits.c): count the failure */
		apikey_limits_apply(key_id, NULL, req->cost, now, out);
		return;
	}

	memcpy(out->key_id, key_id, APIKEY_KEY_ID_LEN);
	out->key_id[APIKEY_KEY_ID_LEN] = '\0';
	out->role = row.role;
	out->name = DatumGetTextP(row.name);
	out->scopes = row.scopes_null ? NULL : DatumGetArrayTypeP(row.scopes);
	out->metadata = row.metadata_null ? NULL : DatumGetJsonbP(row.metadata);
	out->has_expiry = !row.expires_null;
	out->expires_at = row.expires_at;

	if (row.state == 'r')
		out->status = APIKEY_REVOKED;
	else if (row.state != 'a')
		out->status = APIKEY_DISABLED;
	else if (!row.expires_null && row.expires_at <= now)
		out->status = APIKEY_EXPIRED;
	else if (!row.ips_null &&
			 (req->client_ip == NULL ||
			  !ip_allowed(DatumGetArrayTypeP(row.allowed_ips), req->client_ip)))
		out->status = APIKEY_IP_NOT_ALLOWED;
	else if (!row.origins_null &&
			 (req->origin == NULL ||
			  !origin_allowed(DatumGetArrayTypeP(row.allowed_origins), req->origin)))
		out->status = APIKEY_ORIGIN_NOT_ALLOWED;
	else if (req->scope != NULL &&
			 (out->scopes == NULL ||
			  !apikey_scopes_hold(out->scopes, VARDATA_ANY(req->scope),
								  VARSIZE_ANY_EXHDR(req->scope))))
		out->status = APIKEY_INSUFFICIENT_SCOPE;
	else
		out->status = APIKEY_VALID;

	/*
	 * apikeys limits and usage (limits.c): a valid request spends its cost
	 * of the key's rate limits and quota, or becomes rate_limited or
	 * quota_exceeded; every status is counted in the key's usage.
	 */
	apikey_limits_apply(key_id, &row.limits, req->cost, now, out);
}

/*
 * Verify a token given as text.  Anything that is not a well-formed token
 * with a matching checksum is invalid, without touching the catalog.
 */
void
apikey_verify_token(const char *s, size_t len, const ApiKeyRequest *req,
					ApiKeyVerdict *out)
{
	ApiKeyToken tok;
	uint8		digest[APIKEY_DIGEST_LEN];

	if (s == NULL || !apikey_parse(s, len, &tok))
	{
		/* not a native token: one imported from another system? (import.c) */
		if (s != NULL && apikey_verify_imported(s, len, req, out))
			return;
		apikey_verify_digest(NULL, 0, NULL, NULL, req, out);
		return;
	}
	apikey_digest(tok.secret, APIKEY_SECRET_LEN, digest);
	apikey_verify_digest(tok.prefix, tok.prefix_len, tok.key_id, digest, req, out);
	explicit_bzero(digest, sizeof(digest));
}

/* The request arguments shared by both apikey_verify functions. */
static void
request_from_args(FunctionCallInfo fcinfo, ApiKeyRequest *req)
{
	req->scope = PG_ARGISNULL(1) ? NULL : PG_GETARG_TEXT_PP(1);
	req->client_ip = PG_NARGS() > 2 && !PG_ARGISNULL(2) ? PG_GETARG_INET_PP(2) : NULL;
	req->origin = PG_NARGS() > 3 && !PG_ARGISNULL(3) ? PG_GETARG_TEXT_PP(3) : NULL;
	req->cost = PG_NARGS() > 4 && !PG_ARGISNULL(4) ? PG_GETARG_INT32(4) : 1;
}

/* SQL function: apikey_verify(text, text, inet, text) returns apikeys.verification */
PG_FUNCTION_INFO_V1(apikey_verify_text);
Datum
apikey_verify_text(PG_FUNCTION_ARGS)
{
	ApiKeyRequest req;
	ApiKeyVerdict v;
	Datum		raw;
	text	   *token;

	request_from_args(fcinfo, &req);
	if (PG_ARGISNULL(0))
		apikey_verify_token(NULL, 0, &req, &v);
	else
	{
		/* Reject oversized input before detoasting it. */
		raw = PG_GETARG_DATUM(0);
		if (toast_raw_datum_size(raw) > VARHDRSZ + APIKEY_INPUT_MAXLEN)
			apikey_verify_token(NULL, 0, &req, &v);
		else
		{
			token = DatumGetTextPP(raw);
			apikey_verify_token(VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token), &req, &v);
		}
	}
	return verdict_datum(fcinfo, &v);
}

/* SQL function: apikey_verify(apikey, text, inet, text) returns apikeys.verification */
PG_FUNCTION_INFO_V1(apikey_verify_apikey);
Datum
apikey_verify_apikey(PG_FUNCTION_ARGS)
{
	ApiKeyRequest req;
	ApiKeyVerdict v;
	ApiKeyData *key;
	uint8		digest[APIKEY_DIGEST_LEN];

	request_from_args(fcinfo, &req);
	if (PG_ARGISNULL(0))
		apikey_verify_digest(NULL, 0, NULL, NULL, &req, &v);
	else
	{
		key = PG_GETARG_APIKEY_P(0);
		/* A value parsed in another transaction proves nothing. */
		if (key->lxid != APIKEYS_CURRENT_LXID())
			apikey_verify_digest(NULL, 0, NULL, NULL, &req, &v);
		else
		{
			/* Unmask; a value parsed by another backend yields a wrong digest. */
			memcpy(digest, key->digest, APIKEY_DIGEST_LEN);
			apikey_session_mask(digest);
			apikey_verify_digest(key->prefix, key->prefix_len, key->key_id,
								 digest, &req, &v);
			explicit_bzero(digest, sizeof(digest));
		}
	}
	return verdict_datum(fcinfo, &v);
}
