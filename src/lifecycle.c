/*
 * lifecycle.c
 *		Entry points of the key lifecycle (create, rotate, disable, enable,
 *		revoke, delete, update) and the minting of new secrets.
 *
 * Each public lifecycle function is a thin C entry point running as the
 * invoker.  It records who called it (GetUserId(), the role whose
 * privileges a SECURITY DEFINER wrapper of the caller's own would carry)
 * and calls the matching internal PL/pgSQL function apikeys_internal._<name>, which
 * is SECURITY DEFINER, pinned to a safe search_path and not executable by
 * PUBLIC.  The internal function receives the caller as its first argument
 * and makes every privilege decision with it, so no caller can forge
 * another identity, and the audit trigger reads the same caller through
 * apikeys_internal._actor().
 *
 * A key never manages keys: while the transaction has logged in with a key
 * (apikey_login, pre_request), every entry point here refuses (42501),
 * whatever role the transaction acts as by then.  The test is on the key
 * context itself, not on current_user, so a SECURITY DEFINER wrapper of the
 * user's own, RESET ROLE or a function's SET role clause does not get past
 * it: a transaction that logged in with a key has handed itself to the
 * key's holder, and nothing the holder sends afterwards should mint, widen
 * or revoke keys.  The one exception is a key holding the scope
 * apikeys:manage by name (no wildcard holds it), which only admins give.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type_d.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "nodes/value.h"
#include "catalog/namespace.h"
#include "commands/trigger.h"
#include "utils/array.h"
#include "utils/rel.h"
#include "utils/builtins.h"
#include "utils/memutils.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"
#include "utils/typcache.h"

#include "apikeys.h"
#include "compat.h"

/* The role on whose behalf the current lifecycle call runs, if any. */
static Oid	current_actor = InvalidOid;

/* Per-call-site cache of the internal function to call. */
typedef struct InternalCall
{
	FmgrInfo	flinfo;
	int			nargs;
	char		name[NAMEDATALEN];	/* the public function's name */
} InternalCall;

/*
 * Resolve apikeys_internal._<own name>(oid, <own argument types>) once per
 * call site.
 */
static InternalCall *
internal_call_for(FunctionCallInfo fcinfo)
{
	InternalCall *ic = (InternalCall *) fcinfo->flinfo->fn_extra;
	HeapTuple	tp;
	Form_pg_proc proc;
	Oid			argtypes[FUNC_MAX_ARGS];
	char	   *internal_name;
	Oid			internal_oid;
	int			nargs;

	if (ic != NULL)
		return ic;

	tp = SearchSysCache1(PROCOID, ObjectIdGetDatum(fcinfo->flinfo->fn_oid));
	if (!HeapTupleIsValid(tp))
		elog(ERROR, "cache lookup failed for function %u", fcinfo->flinfo->fn_oid);
	proc = (Form_pg_proc) GETSTRUCT(tp);
	nargs = proc->pronargs;
	if (nargs + 1 > FUNC_MAX_ARGS)
		elog(ERROR, "too many arguments for an apikeys lifecycle function");
	argtypes[0] = OIDOID;
	memcpy(&argtypes[1], proc->proargtypes.values, nargs * sizeof(Oid));
	internal_name = psprintf("_%s", NameStr(proc->proname));
	ReleaseSysCache(tp);

	/*
	 * Look the function up by schema OID, name and argument types: the
	 * caller has no USAGE on the private schema, and needs none (a lookup
	 * through the parser would check it).
	 */
	internal_oid = apikeys_function_oid(internal_name, nargs + 1, argtypes);
	if (!OidIsValid(internal_oid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s.%s is missing", APIKEYS_INTERNAL_SCHEMA, internal_name),
				 errhint("Re-create the extension, or finish updating it with ALTER EXTENSION apikeys UPDATE.")));

	ic = MemoryContextAllocZero(fcinfo->flinfo->fn_mcxt, sizeof(InternalCall));
	fmgr_info_cxt(internal_oid, &ic->flinfo, fcinfo->flinfo->fn_mcxt);
	ic->nargs = nargs;
	strlcpy(ic->name, internal_name + 1, NAMEDATALEN);
	fcinfo->flinfo->fn_extra = ic;
	return ic;
}

/* Call the internal twin of this function with the caller prepended. */
static Datum
call_internal(FunctionCallInfo fcinfo, bool *isnull)
{
	InternalCall *ic = internal_call_for(fcinfo);
	LOCAL_FCINFO(inner, FUNC_MAX_ARGS);
	Oid			caller = GetUserId();
	Oid			saved_actor = current_actor;
	Datum		result;

	apikeys_refuse_key_session(ic->name);

	/*
	 * The caller's collation is not passed on: the internal functions compare
	 * key ids and match patterns under collations of their own choosing, and
	 * an ICU or nondeterministic collation on an argument must not change
	 * that (or make it fail).
	 */
	InitFunctionCallInfoData(*inner, &ic->flinfo, ic->nargs + 1,
							 InvalidOid, NULL, NULL);
	inner->args[0].value = ObjectIdGetDatum(caller);
	inner->args[0].isnull = false;
	for (int i = 0; i < ic->nargs; i++)
		inner->args[i + 1] = fcinfo->args[i];

	current_actor = caller;
	PG_TRY();
	{
		result = FunctionCallInvoke(inner);
	}
	PG_FINALLY();
	{
		current_actor = saved_actor;
	}
	PG_END_TRY();

	*isnull = inner->isnull;
	return result;
}

/* SQL functions: apikey_rotate, apikey_disable, apikey_enable, apikey_revoke, apikey_delete, apikey_update */
PG_FUNCTION_INFO_V1(apikeys_lifecycle_call);
Datum
apikeys_lifecycle_call(PG_FUNCTION_ARGS)
{
	bool		isnull;
	Datum		result = call_internal(fcinfo, &isnull);

	if (isnull)
		PG_RETURN_NULL();
	return result;
}

/* SQL function: apikey_create(text, regrole, text[], timestamptz, text, jsonb) returns table(key_id text, token text) */
/*
 * InitMaterializedSRF(fcinfo, 0) for a function called once per key: the
 * result row type is worked out once per backend and function, not from
 * pg_proc on every call; the executor frees the copy it is given.
 */
static void
materialize_result(FunctionCallInfo fcinfo)
{
	static Oid	desc_fn = InvalidOid;
	static TupleDesc desc = NULL;
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	MemoryContext old;

	if (rsinfo == NULL || !IsA(rsinfo, ReturnSetInfo) ||
		!(rsinfo->allowedModes & SFRM_Materialize))
		ereport(ERROR,
				(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
				 errmsg("materialize mode required, but it is not allowed in this context")));
	if (desc == NULL || desc_fn != fcinfo->flinfo->fn_oid)
	{
		TupleDesc	d;

		if (get_call_result_type(fcinfo, NULL, &d) != TYPEFUNC_COMPOSITE)
			elog(ERROR, "return type must be a row type");
		if (desc != NULL)
			FreeTupleDesc(desc);
		desc = NULL;
		old = MemoryContextSwitchTo(TopMemoryContext);
		desc = CreateTupleDescCopy(d);
		MemoryContextSwitchTo(old);
		desc_fn = fcinfo->flinfo->fn_oid;
	}
	old = MemoryContextSwitchTo(rsinfo->econtext->ecxt_per_query_memory);
	rsinfo->returnMode = SFRM_Materialize;
	rsinfo->setDesc = CreateTupleDescCopy(desc);
	rsinfo->setResult = tuplestore_begin_heap((rsinfo->allowedModes & SFRM_Materialize_Random) != 0,
											  false, work_mem);
	MemoryContextSwitchTo(old);
}

PG_FUNCTION_INFO_V1(apikeys_create);
Datum
apikeys_create(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	bool		isnull;
	Datum		result;
	HeapTupleHeader th;
	TupleDesc	rowdesc;
	HeapTupleData tuple;
	Datum		values[2];
	bool		nulls[2];

	apikeys_refuse_key_session("apikey_create");
	materialize_result(fcinfo);

	/* the common call, decided and written in C (create.c) */
	{
		Oid			caller = GetUserId();
		Oid			saved_actor = current_actor;
		bool		done;

		current_actor = caller;
		PG_TRY();
		{
			done = apikey_create_fast(fcinfo, caller, &values[0], &values[1]);
		}
		PG_FINALLY();
		{
			current_actor = saved_actor;
		}
		PG_END_TRY();
		if (done)
		{
			nulls[0] = nulls[1] = false;
			tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
			return (Datum) 0;
		}
	}

	/* anything else: the reference implementation decides and reports */
	result = call_internal(fcinfo, &isnull);
	if (isnull)
		elog(ERROR, "apikeys_internal._apikey_create returned null");

	th = DatumGetHeapTupleHeader(result);
	rowdesc = lookup_rowtype_tupdesc(HeapTupleHeaderGetTypeId(th),
									 HeapTupleHeaderGetTypMod(th));
	if (rowdesc->natts != 2 || rsinfo->setDesc->natts != 2)
		elog(ERROR, "unexpected row shape from apikeys_internal._apikey_create");
	tuple.t_len = HeapTupleHeaderGetDatumLength(th);
	ItemPointerSetInvalid(&tuple.t_self);
	tuple.t_tableOid = InvalidOid;
	tuple.t_data = th;
	heap_deform_tuple(&tuple, rowdesc, values, nulls);
	ReleaseTupleDesc(rowdesc);

	tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	return (Datum) 0;
}

/* The role that called the running lifecycle function (InvalidOid outside one). */
Oid
apikeys_current_actor(void)
{
	return current_actor;
}

/* SQL function: apikeys_internal._actor() returns oid */
PG_FUNCTION_INFO_V1(apikeys_actor);
Datum
apikeys_actor(PG_FUNCTION_ARGS)
{
	if (!OidIsValid(current_actor))
		PG_RETURN_NULL();
	PG_RETURN_OID(current_actor);
}

/*
 * SQL function: apikeys_internal._mint(text, text) returns record(key_id
 * text, token text, hash bytea, hash_version int2, pepper_id text)
 *
 * The hash is the one to store: peppered when apikeys.pepper_file is set
 * (pepper.c).  A 0.1.0 database declares the first four columns only, and
 * has no place for a pepper id: it gets SHA-256.
 */
PG_FUNCTION_INFO_V1(apikeys_mint);
Datum
apikeys_mint(PG_FUNCTION_ARGS)
{
	text	   *prefix_t;
	const char *prefix;
	int			prefix_len;
	char		key_id[APIKEY_KEY_ID_LEN];
	char		token[APIKEY_TOKEN_MAXLEN];
	int			len;
	uint8		digest[APIKEY_DIGEST_LEN];
	uint8		stored[APIKEY_DIGEST_LEN];
	char		pepper_id[APIKEY_PEPPER_ID_LEN];
	int16		version = APIKEY_HASH_SHA256;
	bytea	   *hash;
	TupleDesc	tupdesc;
	Datum		values[5];
	bool		nulls[5] = {false, false, false, false, true};
	Datum		result;

	if (PG_ARGISNULL(0))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("api key prefix must not be null")));
	prefix_t = PG_GETARG_TEXT_PP(0);
	prefix = VARDATA_ANY(prefix_t);
	prefix_len = VARSIZE_ANY_EXHDR(prefix_t);
	if (!apikey_prefix_is_valid(prefix, prefix_len))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid api key prefix"),
				 errdetail("A prefix is a lowercase letter followed by at most %d lowercase letters, digits or underscores.",
						   APIKEY_PREFIX_MAXLEN - 1)));

	if (PG_ARGISNULL(1))
		apikey_mint_token(prefix, prefix_len, NULL, key_id, token, &len, digest);
	else
	{
		text	   *k = PG_GETARG_TEXT_PP(1);

		if (VARSIZE_ANY_EXHDR(k) != APIKEY_KEY_ID_LEN)
			elog(ERROR, "malformed key id passed to apikeys_internal._mint");
		apikey_mint_token(prefix, prefix_len, VARDATA_ANY(k), key_id, token,
						  &len, digest);
	}

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "apikeys_internal._mint must return a composite type");
	if (tupdesc->natts != 4 && tupdesc->natts != 5)
		elog(ERROR, "apikeys_internal._mint returns %d columns, expected 5", tupdesc->natts);
	if (tupdesc->natts == 5)
		version = apikey_stored_hash(digest, stored, pepper_id);
	else
		memcpy(stored, digest, APIKEY_DIGEST_LEN);
	hash = (bytea *) palloc(VARHDRSZ + APIKEY_DIGEST_LEN);
	SET_VARSIZE(hash, VARHDRSZ + APIKEY_DIGEST_LEN);
	memcpy(VARDATA(hash), stored, APIKEY_DIGEST_LEN);

	tupdesc = BlessTupleDesc(tupdesc);
	values[0] = PointerGetDatum(cstring_to_text_with_len(key_id, APIKEY_KEY_ID_LEN));
	values[1] = PointerGetDatum(cstring_to_text_with_len(token, len));
	values[2] = PointerGetDatum(hash);
	values[3] = Int16GetDatum(version);
	if (version == APIKEY_HASH_HMAC_SHA256)
	{
		values[4] = PointerGetDatum(cstring_to_text_with_len(pepper_id, APIKEY_PEPPER_ID_LEN));
		nulls[4] = false;
	}
	result = HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));

	explicit_bzero(token, sizeof(token));
	explicit_bzero(digest, sizeof(digest));
	explicit_bzero(stored, sizeof(stored));
	PG_RETURN_DATUM(result);
}

/* SQL function: apikeys_internal._current_role() returns oid */
PG_FUNCTION_INFO_V1(apikeys_current_role);
Datum
apikeys_current_role(PG_FUNCTION_ARGS)
{
	/* current_user as an OID, without a round trip through its name */
	PG_RETURN_OID(GetUserId());
}

/*
 * Call apikeys_internal.<name>(caller, args...) with the caller prepended
 * and recorded as the actor, as the lifecycle entry points above do; for
 * entry points in other files (leak.c, reveal.c, request.c).  The function
 * is looked up by name and argument types on every call (these are not hot
 * paths) and used only if it is a member of the extension.
 */
Datum
apikeys_call_internal(const char *name, int nargs, const Oid *argtypes,
					  const NullableDatum *args, bool *isnull)
{
	Oid			types[FUNC_MAX_ARGS];
	Oid			funcid;
	FmgrInfo	flinfo;
	LOCAL_FCINFO(inner, FUNC_MAX_ARGS);
	Oid			caller = GetUserId();
	Oid			saved_actor = current_actor;
	Datum		result;

	if (nargs + 1 > FUNC_MAX_ARGS)
		elog(ERROR, "too many arguments for an apikeys internal function");
	types[0] = OIDOID;
	memcpy(&types[1], argtypes, nargs * sizeof(Oid));
	funcid = apikeys_function_oid(name, nargs + 1, types);
	if (!OidIsValid(funcid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("function %s.%s is missing", APIKEYS_INTERNAL_SCHEMA, name),
				 errhint("Re-create the extension, or finish updating it with ALTER EXTENSION apikeys UPDATE.")));
	fmgr_info(funcid, &flinfo);
	InitFunctionCallInfoData(*inner, &flinfo, nargs + 1, InvalidOid, NULL, NULL);
	inner->args[0].value = ObjectIdGetDatum(caller);
	inner->args[0].isnull = false;
	for (int i = 0; i < nargs; i++)
		inner->args[i + 1] = args[i];

	current_actor = caller;
	PG_TRY();
	{
		result = FunctionCallInvoke(inner);
	}
	PG_FINALLY();
	{
		current_actor = saved_actor;
	}
	PG_END_TRY();

	*isnull = inner->isnull;
	return result;
}

/*
 * Does the array hold the scope apikeys:manage by name?  Walked in place;
 * a wildcard ('*', 'apikeys:*') does not count.
 */
static bool
scopes_name_manage(ArrayType *scopes)
{
	int			n = ArrayGetNItems(ARR_NDIM(scopes), ARR_DIMS(scopes));
	bits8	   *nullmap = ARR_NULLBITMAP(scopes);
	const char *ptr;
	const int	want_len = strlen(APIKEY_MANAGE_SCOPE);

	ptr = (const char *) scopes +
		(ARR_HASNULL(scopes) ? (Size) scopes->dataoffset :
		 ARR_OVERHEAD_NONULLS(ARR_NDIM(scopes)));
	for (int i = 0; i < n; i++)
	{
		if (nullmap != NULL && !(nullmap[i / 8] & (1 << (i % 8))))
			continue;
		ptr = (const char *) att_align_pointer(ptr, TYPALIGN_INT, -1, ptr);
		if (VARSIZE_ANY_EXHDR(ptr) == want_len &&
			memcmp(VARDATA_ANY(ptr), APIKEY_MANAGE_SCOPE, want_len) == 0)
			return true;
		ptr += VARSIZE_ANY(ptr);
	}
	return false;
}

/*
 * The key whose rows alone the listings show, and which manages no keys:
 * the key this transaction logged in with (whatever role it acts as now),
 * unless that key holds apikeys:manage; NULL otherwise.
 */
static const char *
restricted_session_key(void)
{
	ArrayType  *scopes;
	const char *key_id = apikey_session_login(&scopes);

	if (key_id == NULL || scopes_name_manage(scopes))
		return NULL;
	return key_id;
}

/* Refuse (42501) to run what while a key without apikeys:manage is logged in. */
void
apikeys_refuse_key_session(const char *what)
{
	const char *key_id = restricted_session_key();

	if (key_id == NULL)
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("%s is not allowed while an api key is logged in", what),
			 errdetail("This transaction logged in with api key %s, and a key never manages keys, not even after RESET ROLE.",
					   key_id),
			 errhint("Manage keys in a transaction that has not logged in with a key; to let a key manage keys, an admin gives it the scope %s.",
					 APIKEY_MANAGE_SCOPE)));
}

/* SQL function: apikeys_internal._key_session() returns text */
PG_FUNCTION_INFO_V1(apikeys_key_session);
Datum
apikeys_key_session(PG_FUNCTION_ARGS)
{
	const char *key_id = restricted_session_key();

	if (key_id == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text_with_len(key_id, APIKEY_KEY_ID_LEN));
}

/* SQL function: apikeys_internal._logged_in_key() returns text */
PG_FUNCTION_INFO_V1(apikeys_logged_in_key);
Datum
apikeys_logged_in_key(PG_FUNCTION_ARGS)
{
	const char *key_id = apikey_session_login(NULL);

	if (key_id == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text_with_len(key_id, APIKEY_KEY_ID_LEN));
}

/* SQL function: apikeys_internal._refuse_key_session() returns trigger */
PG_FUNCTION_INFO_V1(apikeys_refuse_key_session_trigger);
Datum
apikeys_refuse_key_session_trigger(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "apikeys_internal._refuse_key_session must be called as a trigger");
	apikeys_refuse_key_session(psprintf("changing %s",
										RelationGetRelationName(trigdata->tg_relation)));
	return PointerGetDatum(NULL);
}
