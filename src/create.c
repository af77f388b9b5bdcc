/*
 * create.c
 *		The fast path of apikey_create: the common call checked and written
 *		in C.
 *
 * apikey_create is the one lifecycle function called in bulk (a service
 * that issues keys), and the PL/pgSQL reference implementation,
 * apikeys_internal._apikey_create, spends most of its time outside the
 * insert: SECURITY DEFINER with SET clauses, nested PL/pgSQL checks each
 * running queries, a subtransaction per attempt.  Here, a call whose
 * arguments are plainly valid is decided in C and its row inserted as the
 * catalog's owner (what SECURITY DEFINER did): directly (insert.c), or by a
 * saved INSERT if the catalog has something the direct insert does not
 * handle.  The table's constraints and triggers (the audit row included)
 * apply as for any insert.  Everything else (a value that could fail a
 * check, a restriction list to normalise, a rate limit or quota to parse, a
 * token to seal for reveal, a role the caller may not act for) takes
 * the reference implementation, which raises the documented errors: the C
 * test below is a strict subset of what _apikey_create accepts, so both
 * paths accept and store exactly the same keys.
 *
 * Both paths bound the keys of a role (apikeys.max_keys_per_role) by the
 * same C check, apikeys_check_key_count(), also called by the other ways a
 * key is made or given a role (request, claim, import, a change of role).
 *
 * No plan ever holds the hash as a constant (the rule of apikeys_internal's
 * plan_cache_mode settings): the direct insert has no plan, and the saved
 * INSERT takes it as a parameter of a generic plan.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type_d.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "rewrite/rewriteHandler.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "catalog/pg_am_d.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/snapmgr.h"
#include "storage/proc.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"

#include "apikeys.h"
#include "compat.h"

/* Size limits of apikeys_internal._limit() the fast path relies on. */
#define LIMIT_NAME_CHARS		200
#define LIMIT_SCOPES			64
#define LIMIT_SCOPE_CHARS		128
#define LIMIT_METADATA_BYTES	8192

/* Arguments of apikey_create, in order. */
enum
{
	Arg_name = 0,
	Arg_role,
	Arg_scopes,
	Arg_expires_at,
	Arg_prefix,
	Arg_metadata,
	Arg_allowed_ips,
	Arg_allowed_origins,
	Arg_rate_limit,
	Arg_remaining,
	Arg_refill,
	Arg_revealable,
	Arg_count
};

#define INSERT_NARGS	11
static const char insert_sql[] =
"INSERT INTO apikeys_internal.key_catalog"
" (key_id, name, prefix, role, scopes, expires_at, metadata,"
"  hash_version, hash, created_by, pepper_id)"
" VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)";

static SPIPlanPtr insert_plan = NULL;

int			apikeys_max_keys_per_role = 10000;

static const char *const insert_columns[INSERT_NARGS] = {
	"key_id", "name", "prefix", "role", "scopes", "expires_at", "metadata",
	"hash_version", "hash", "created_by", "pepper_id"
};
static DirectInsert catalog_insert = {INSERT_NARGS, insert_columns, NULL};
static CachedRelation catalog_rel = {APIKEYS_CATALOG, InvalidOid, false, false, NULL};

/* Is the name plainly valid: printable ASCII, not blank, within its limit? */
static bool
plain_name(text *name)
{
	const char *p = VARDATA_ANY(name);
	int			len = VARSIZE_ANY_EXHDR(name);
	bool		blank = true;

	if (len < 1 || len > LIMIT_NAME_CHARS)
		return false;
	for (int i = 0; i < len; i++)
	{
		if (p[i] < 0x20 || p[i] > 0x7e)
			return false;
		if (p[i] != ' ')
			blank = false;
	}
	return !blank;
}

/*
 * Are the scopes plainly valid: at most one dimension, within the limits,
 * each a non-null OAuth scope-token ([!#-[]-~]+) with '*' only at its end?
 */
static bool
plain_scopes(ArrayType *scopes)
{
	int			n;
	const char *ptr;

	if (ARR_NDIM(scopes) > 1 || ARR_HASNULL(scopes) ||
		ARR_ELEMTYPE(scopes) != TEXTOID)
		return false;
	n = ArrayGetNItems(ARR_NDIM(scopes), ARR_DIMS(scopes));
	if (n > LIMIT_SCOPES)
		return false;
	ptr = (const char *) scopes + ARR_OVERHEAD_NONULLS(ARR_NDIM(scopes));
	for (int i = 0; i < n; i++)
	{
		const char *p;
		int			len;

		ptr = (const char *) att_align_pointer(ptr, TYPALIGN_INT, -1, ptr);
		p = VARDATA_ANY(ptr);
		len = VARSIZE_ANY_EXHDR(ptr);
		ptr += VARSIZE_ANY(ptr);
		if (len < 1 || len > LIMIT_SCOPE_CHARS)
			return false;
		for (int j = 0; j < len; j++)
		{
			char		c = p[j];

			if (c < '!' || c > '~' || c == '"' || c == '\\' ||
				(c == '*' && j != len - 1))
				return false;
		}
		/* only an admin grants it: _apikey_create decides */
		if (len == strlen(APIKEY_MANAGE_SCOPE) &&
			memcmp(p, APIKEY_MANAGE_SCOPE, len) == 0)
			return false;
	}
	return true;
}

/* Is the metadata plainly valid: a json object within its limit? */
static bool
plain_metadata(Jsonb *metadata)
{
	char	   *s;
	bool		ok;

	if (!JB_ROOT_IS_OBJECT(metadata) || JB_ROOT_IS_SCALAR(metadata))
		return false;
	if (JB_ROOT_COUNT(metadata) == 0)
		return true;			/* "{}" */
	s = JsonbToCString(NULL, &metadata->root, VARSIZE(metadata));
	ok = strlen(s) <= LIMIT_METADATA_BYTES;
	pfree(s);
	return ok;
}

/*
 * May caller issue keys for role: does the role exist, and is the caller a
 * member of it or of apikeys_admin (superusers are members of every role)?
 */
static bool
may_issue_for(Oid caller, Oid role)
{
	Oid			admin;

	if (!SearchSysCacheExists1(AUTHOID, ObjectIdGetDatum(role)))
		return false;
	if (is_member_of_role(caller, role))
		return true;
	admin = get_role_oid("apikeys_admin", true);
	return OidIsValid(admin) && is_member_of_role(caller, admin);
}

/* The owner of the key catalog of an up-to-date (0.2.0) installation. */
static Oid
catalog_owner(Oid relid)
{
	HeapTuple	tp;
	Form_pg_class rel;
	Oid			owner = InvalidOid;

	if (!OidIsValid(relid))
		return InvalidOid;
	tp = SearchSysCache1(RELOID, ObjectIdGetDatum(relid));
	if (!HeapTupleIsValid(tp))
		return InvalidOid;
	rel = (Form_pg_class) GETSTRUCT(tp);
	if (rel->relnatts == Natts_key_catalog &&
		rel->relnamespace == get_namespace_oid(APIKEYS_INTERNAL_SCHEMA, true))
		owner = rel->relowner;
	ReleaseSysCache(tp);
	return owner;
}

/* Prepare the INSERT once per backend (plancache revalidates it). */
static SPIPlanPtr
get_insert_plan(void)
{
	static const Oid types[INSERT_NARGS] = {
		TEXTOID, TEXTOID, TEXTOID, REGROLEOID, TEXTARRAYOID, TIMESTAMPTZOID,
		JSONBOID, INT2OID, BYTEAOID, REGROLEOID, TEXTOID
	};
	SPIPlanPtr	plan;

	if (insert_plan != NULL)
		return insert_plan;
	plan = SPI_prepare_cursor(insert_sql, INSERT_NARGS, (Oid *) types,
							  CURSOR_OPT_GENERIC_PLAN);
	if (plan == NULL)
		elog(ERROR, "could not prepare the api key insert: %s",
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "could not keep the api key insert plan");
	insert_plan = plan;
	return plan;
}


/*
 * Run the INSERT as the catalog's owner, as the SECURITY DEFINER half would
 * run it.  A key id that exists already (62^12 of them: never seen) fails
 * the primary key with 23505, where _apikey_create would draw another.
 */
static void
insert_as_owner(Oid relid, Oid owner, Datum *values, const char *nulls)
{
	Oid			save_userid;
	int			save_sec;
	int			rc;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE);
	PG_TRY();
	{
		if (!apikey_insert_direct(&catalog_insert, relid, values, nulls))
		{
			if (SPI_connect() != SPI_OK_CONNECT)
				elog(ERROR, "SPI_connect failed");
			rc = SPI_execute_plan(get_insert_plan(), values, nulls, false, 0);
			if (rc != SPI_OK_INSERT || SPI_processed != 1)
				elog(ERROR, "api key insert failed: %s", SPI_result_code_string(rc));
			SPI_finish();
		}
	}
	PG_FINALLY();
	{
		SetUserIdAndSecContext(save_userid, save_sec);
	}
	PG_END_TRY();
}

/*
 * Create the key of an apikey_create call if its arguments are plainly
 * valid; return false, having done nothing, if they are not (the caller then
 * runs _apikey_create, which decides and reports).  On success *key_id and
 * *token are text datums in the current memory context.
 */
bool
apikey_create_fast(FunctionCallInfo fcinfo, Oid caller, Datum *key_id,
				   Datum *token)
{
	text	   *name;
	Oid			role;
	bool		expires_null;
	TimestampTz expires_at = 0;
	const char *prefix = APIKEY_DEFAULT_PREFIX;
	int			prefix_len = strlen(APIKEY_DEFAULT_PREFIX);
	Datum		metadata;
	Oid			relid;
	Oid			owner;
	char		id[APIKEY_KEY_ID_LEN];
	char		tok[APIKEY_TOKEN_MAXLEN];
	int			tok_len;
	uint8		digest[APIKEY_DIGEST_LEN];
	uint8		stored[APIKEY_DIGEST_LEN];
	char		pepper_id[APIKEY_PEPPER_ID_LEN];
	int16		version;
	bytea	   *hash;
	Datum		values[INSERT_NARGS];
	char		nulls[INSERT_NARGS];
	MemoryContext outer = CurrentMemoryContext;

	/*
	 * The 0.2.0 signature, a name; no restriction lists to normalise, no
	 * rate limit or quota to parse, no token to seal.
	 */
	if (PG_NARGS() != Arg_count || PG_ARGISNULL(Arg_name) ||
		!PG_ARGISNULL(Arg_allowed_ips) || !PG_ARGISNULL(Arg_allowed_origins) ||
		!PG_ARGISNULL(Arg_rate_limit) || !PG_ARGISNULL(Arg_remaining) ||
		!PG_ARGISNULL(Arg_refill) ||
		(!PG_ARGISNULL(Arg_revealable) && PG_GETARG_BOOL(Arg_revealable)))
		return false;

	name = PG_GETARG_TEXT_PP(Arg_name);
	if (!plain_name(name))
		return false;

	if (!PG_ARGISNULL(Arg_scopes) &&
		!plain_scopes(PG_GETARG_ARRAYTYPE_P(Arg_scopes)))
		return false;

	expires_null = PG_ARGISNULL(Arg_expires_at);
	if (!expires_null)
	{
		expires_at = PG_GETARG_TIMESTAMPTZ(Arg_expires_at);
		if (TIMESTAMP_IS_NOEND(expires_at))
			expires_null = true;	/* 'infinity': no expiry */
		else if (TIMESTAMP_NOT_FINITE(expires_at) ||
				 expires_at <= GetCurrentTimestamp())
			return false;
	}

	if (!PG_ARGISNULL(Arg_prefix))
	{
		text	   *p = PG_GETARG_TEXT_PP(Arg_prefix);

		prefix = VARDATA_ANY(p);
		prefix_len = VARSIZE_ANY_EXHDR(p);
		if (!apikey_prefix_is_valid(prefix, prefix_len))
			return false;
	}

	if (!PG_ARGISNULL(Arg_metadata) &&
		!plain_metadata(PG_GETARG_JSONB_P(Arg_metadata)))
		return false;

	role = PG_ARGISNULL(Arg_role) ? caller : PG_GETARG_OID(Arg_role);
	if (!may_issue_for(caller, role))
		return false;
	apikeys_check_key_count(caller, role);

	relid = apikey_cached_relation_oid(&catalog_rel);
	owner = catalog_owner(relid);
	if (!OidIsValid(owner))
		return false;			/* not an up-to-date installation */

	/* Decided: mint the token and write the row (its hash peppered if set). */
	apikey_mint_token(prefix, prefix_len, NULL, id, tok, &tok_len, digest);
	version = apikey_stored_hash(digest, stored, pepper_id);
	hash = (bytea *) palloc(VARHDRSZ + APIKEY_DIGEST_LEN);
	SET_VARSIZE(hash, VARHDRSZ + APIKEY_DIGEST_LEN);
	memcpy(VARDATA(hash), stored, APIKEY_DIGEST_LEN);
	explicit_bzero(digest, sizeof(digest));
	explicit_bzero(stored, sizeof(stored));

	memset(nulls, ' ', sizeof(nulls));
	values[0] = PointerGetDatum(cstring_to_text_with_len(id, APIKEY_KEY_ID_LEN));
	values[1] = PointerGetDatum(name);
	values[2] = PointerGetDatum(cstring_to_text_with_len(prefix, prefix_len));
	values[3] = ObjectIdGetDatum(role);
	values[4] = PG_ARGISNULL(Arg_scopes) ?
		PointerGetDatum(construct_empty_array(TEXTOID)) :
		PG_GETARG_DATUM(Arg_scopes);
	values[5] = TimestampTzGetDatum(expires_at);
	if (expires_null)
		nulls[5] = 'n';
	metadata = PG_ARGISNULL(Arg_metadata) ?
		DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")) :
		PG_GETARG_DATUM(Arg_metadata);
	values[6] = metadata;
	values[7] = Int16GetDatum(version);
	values[8] = PointerGetDatum(hash);
	values[9] = ObjectIdGetDatum(caller);
	if (version == APIKEY_HASH_HMAC_SHA256)
		values[10] = PointerGetDatum(cstring_to_text_with_len(pepper_id, APIKEY_PEPPER_ID_LEN));
	else
	{
		values[10] = (Datum) 0;
		nulls[10] = 'n';
	}

	insert_as_owner(relid, owner, values, nulls);
	MemoryContextSwitchTo(outer);
	*key_id = values[0];
	*token = PointerGetDatum(cstring_to_text_with_len(tok, tok_len));
	explicit_bzero(tok, sizeof(tok));
	return true;
}

/*
 * An index of the catalog on role alone (btree, valid, no predicate), or
 * InvalidOid.  The install script creates key_catalog_role_idx; found by
 * its shape, as the direct insert finds the catalog's indexes.
 */
static Oid
role_index(Relation rel)
{
	List	   *indexes = RelationGetIndexList(rel);
	ListCell   *lc;
	Oid			found = InvalidOid;

	foreach(lc, indexes)
	{
		Relation	ind = index_open(lfirst_oid(lc), AccessShareLock);

		if (ind->rd_rel->relam == BTREE_AM_OID &&
			ind->rd_index->indisvalid && ind->rd_index->indnatts >= 1 &&
			ind->rd_index->indkey.values[0] == Anum_key_role &&
			heap_attisnull(ind->rd_indextuple, Anum_pg_index_indpred, NULL))
			found = RelationGetRelid(ind);
		index_close(ind, AccessShareLock);
		if (OidIsValid(found))
			break;
	}
	list_free(indexes);
	return found;
}

/*
 * The last count of this transaction: role, and how many keys it had then
 * plus those this transaction has been allowed to add since.
 */
static LocalTransactionId counted_lxid = InvalidLocalTransactionId;
static Oid	counted_role = InvalidOid;
static int64 counted_keys = 0;

/*
 * Raise 54000 if role has apikeys.max_keys_per_role keys already and the
 * caller is no admin (admins may go past it: the setting is theirs).  The
 * count takes every row of the catalog for the role (revoked keys too: they
 * stay for audit until deleted), committed or being written by a
 * transaction in progress (a dirty snapshot, as a unique check reads), the
 * caller's own included.  It reads an index on role: its cost follows the
 * role's keys, and only non-admins pay it.  Within a transaction the count
 * is taken once per role and then followed (each check that passes is a
 * key about to be made), and taken again only when that says the bound is
 * reached: so one statement making many keys costs one count, not one per
 * key, and what is refused is refused on a fresh count.
 */
void
apikeys_check_key_count(Oid caller, Oid role)
{
	Oid			admin;
	Oid			relid;
	Relation	rel;
	Oid			indexid;
	SnapshotData dirty;
	ScanKeyData skey;
	SysScanDesc scan;
	int64		n = 0;

	admin = get_role_oid("apikeys_admin", true);
	if (superuser_arg(caller) ||
		(OidIsValid(admin) && is_member_of_role(caller, admin)))
		return;
	if (counted_lxid == APIKEYS_CURRENT_LXID() && counted_role == role &&
		counted_keys + 1 < apikeys_max_keys_per_role)
	{
		counted_keys++;
		return;
	}
	relid = apikey_cached_relation_oid(&catalog_rel);
	if (!OidIsValid(relid))
		return;
	rel = table_open(relid, AccessShareLock);
	indexid = role_index(rel);
	InitDirtySnapshot(dirty);
	ScanKeyInit(&skey, Anum_key_role, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(role));
	scan = systable_beginscan(rel, indexid, OidIsValid(indexid), &dirty, 1, &skey);
	while (n < apikeys_max_keys_per_role && HeapTupleIsValid(systable_getnext(scan)))
		n++;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	counted_lxid = APIKEYS_CURRENT_LXID();
	counted_role = role;
	counted_keys = n + 1;		/* (the key about to be made) */
	if (n >= apikeys_max_keys_per_role)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("role \"%s\" has too many api keys",
						GetUserNameFromId(role, false)),
				 errdetail("A role may have at most %d keys (apikeys.max_keys_per_role), revoked keys included, unless an admin creates them.",
						   apikeys_max_keys_per_role),
				 errhint("Delete keys the role no longer uses (revoked keys stay until deleted), or ask an admin.")));
}

/*
 * SQL function: apikeys_internal._check_key_count(caller oid, role oid) returns void
 *
 * apikeys_check_key_count() for the PL/pgSQL paths that make a key or give
 * it a role.
 */
PG_FUNCTION_INFO_V1(apikeys_check_key_count_sql);
Datum
apikeys_check_key_count_sql(PG_FUNCTION_ARGS)
{
	if (!PG_ARGISNULL(0) && !PG_ARGISNULL(1))
		apikeys_check_key_count(PG_GETARG_OID(0), PG_GETARG_OID(1));
	PG_RETURN_VOID();
}

/* Define apikeys.max_keys_per_role (from _PG_init, through shmem.c). */
void
apikeys_create_define_settings(void)
{
	DefineCustomIntVariable("apikeys.max_keys_per_role",
							"Most api keys a role may have, unless an admin creates them.",
							"Revoked keys count until they are deleted; 0: only admins create keys.",
							&apikeys_max_keys_per_role,
							10000, 0, INT_MAX,
							PGC_SUSET, 0,
							NULL, NULL, NULL);
}

/*
 * SQL function: apikeys_internal._key_row_ok(key_id text, prefix text,
 * name text, state text, no_prev_hash bool, no_prev_valid_until bool)
 * returns bool.  The key catalog's CHECK constraint, the five checks of
 * 0.1.0 in one call: one expression to prepare per INSERT instead of five
 * (each statement that writes the catalog prepares its constraints again).
 *	 key_id ~ '^[0-9A-Za-z]{12}$', prefix ~ '^[a-z][a-z0-9_]{0,19}$',
 *	 btrim(name) <> '', state IN ('active', 'disabled', 'revoked'),
 *	 (prev_hash IS NULL) = (prev_valid_until IS NULL)
 * Strict: a null argument makes the result null, which a CHECK accepts, as
 * it accepted each of the five on null (NOT NULL constraints refuse those).
 */
PG_FUNCTION_INFO_V1(apikeys_key_row_ok);
Datum
apikeys_key_row_ok(PG_FUNCTION_ARGS)
{
	text	   *key_id = PG_GETARG_TEXT_PP(0);
	text	   *prefix = PG_GETARG_TEXT_PP(1);
	text	   *name = PG_GETARG_TEXT_PP(2);
	text	   *state = PG_GETARG_TEXT_PP(3);
	bool		no_prev_hash = PG_GETARG_BOOL(4);
	bool		no_prev_valid_until = PG_GETARG_BOOL(5);
	const char *p;
	int			len;
	bool		ok;

	/* key id: twelve ASCII letters and digits */
	p = VARDATA_ANY(key_id);
	len = VARSIZE_ANY_EXHDR(key_id);
	if (len != APIKEY_KEY_ID_LEN)
		PG_RETURN_BOOL(false);
	for (int i = 0; i < len; i++)
		if (!((p[i] >= '0' && p[i] <= '9') || (p[i] >= 'A' && p[i] <= 'Z') ||
			  (p[i] >= 'a' && p[i] <= 'z')))
			PG_RETURN_BOOL(false);

	if (!apikey_prefix_is_valid(VARDATA_ANY(prefix), VARSIZE_ANY_EXHDR(prefix)))
		PG_RETURN_BOOL(false);

	/* name: something besides spaces (what btrim strips) */
	p = VARDATA_ANY(name);
	len = VARSIZE_ANY_EXHDR(name);
	ok = false;
	for (int i = 0; i < len && !ok; i++)
		ok = p[i] != ' ';
	if (!ok)
		PG_RETURN_BOOL(false);

	p = VARDATA_ANY(state);
	len = VARSIZE_ANY_EXHDR(state);
	if (!((len == 6 && memcmp(p, "active", 6) == 0) ||
		  (len == 8 && memcmp(p, "disabled", 8) == 0) ||
		  (len == 7 && memcmp(p, "revoked", 7) == 0)))
		PG_RETURN_BOOL(false);

	PG_RETURN_BOOL(no_prev_hash == no_prev_valid_until);
}
