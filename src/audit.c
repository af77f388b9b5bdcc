/*
 * audit.c
 *		The audit row of a new key, written in C.
 *
 * apikeys_internal._audit_key_create() is the AFTER INSERT row trigger of
 * the key catalog; apikeys_internal._audit_key_change() (PL/pgSQL) keeps
 * UPDATE and DELETE.  The row it writes is the one the PL/pgSQL trigger
 * wrote for an insert: action 'create' (or 'direct_insert' when the insert
 * did not come through an apikeys function), the key id, the session user,
 * the acting role, the key's role, and as changes the new row as
 * to_jsonb() renders it, less the columns that are never shown (hashes and
 * their schemes and pepper ids, ids, timestamps: the same list as
 * _audit_key_change's, plus state, prev_valid_until and quota_set_at: keep
 * the two lists in step).  Columns added to the catalog later appear in it
 * unless listed here.
 *
 * Building the object column by column skips the hashes (which to_jsonb of
 * the whole row would hex-encode, only for them to be removed) and the
 * PL/pgSQL call with its SET clauses; the audit row is inserted by a saved
 * plan, as the current user, like the PL/pgSQL trigger's INSERT.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/pg_type_d.h"
#include "commands/trigger.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"

#include "apikeys.h"
#include "compat.h"

/* Columns an insert's audit row leaves out. */
static const char *const hidden_columns[] = {
	"hash", "hash_version", "prev_hash", "prev_hash_version", "pepper_id",
	"prev_pepper_id", "key_id", "updated_at", "created_at", "created_by",
	"rotated_at", "revoked_at", "state", "prev_valid_until", "quota_set_at"
};

#define AUDIT_NARGS	6
static const char audit_sql[] =
"INSERT INTO apikeys_internal.audit_log"
" (action, key_id, actor, actor_role, key_role, changes)"
" VALUES ($1, $2, $3, $4, $5, $6)";

static SPIPlanPtr audit_plan = NULL;

static const char *const audit_columns[AUDIT_NARGS] = {
	"action", "key_id", "actor", "actor_role", "key_role", "changes"
};
static DirectInsert audit_insert = {AUDIT_NARGS, audit_columns, NULL};
static CachedRelation audit_rel = {"audit_log", InvalidOid, false, false, NULL};

/*
 * to_jsonb(), set up once per backend and column type: it reads its
 * argument's type from its call expression, so each type gets a FmgrInfo
 * whose expression is a call on a constant of that type.
 */
typedef struct ToJsonb
{
	Oid			typid;
	FmgrInfo	flinfo;
} ToJsonb;

#define MAX_TO_JSONB 32
static ToJsonb to_jsonb_fns[MAX_TO_JSONB];
static int	n_to_jsonb = 0;

/* The to_jsonb() call for values of typid. */
static FmgrInfo *
to_jsonb_for(Oid typid)
{
	MemoryContext old;
	ToJsonb    *t;

	for (int i = 0; i < n_to_jsonb; i++)
		if (to_jsonb_fns[i].typid == typid)
			return &to_jsonb_fns[i].flinfo;
	if (n_to_jsonb >= MAX_TO_JSONB)
		elog(ERROR, "too many column types in the apikeys catalog");

	t = &to_jsonb_fns[n_to_jsonb];
	old = MemoryContextSwitchTo(TopMemoryContext);
	fmgr_info(F_TO_JSONB, &t->flinfo);
	t->flinfo.fn_expr = (Node *)
		makeFuncExpr(F_TO_JSONB, JSONBOID,
					 list_make1(makeNullConst(typid, -1, InvalidOid)),
					 InvalidOid, InvalidOid, COERCE_EXPLICIT_CALL);
	MemoryContextSwitchTo(old);
	t->typid = typid;
	n_to_jsonb++;
	return &t->flinfo;
}

/* Is the column one an insert's audit row leaves out? */
static bool
is_hidden(const char *name)
{
	for (int i = 0; i < (int) lengthof(hidden_columns); i++)
		if (strcmp(name, hidden_columns[i]) == 0)
			return true;
	return false;
}

/*
 * Which columns of the catalog are hidden, by attribute number: worked out
 * again when the relation's definition may have changed.
 */
static bool *
hidden_attributes(Relation rel)
{
	static Oid	relid = InvalidOid;
	static int	natts = 0;
	static uint64 generation = 0;
	static bool *hidden = NULL;
	TupleDesc	desc = RelationGetDescr(rel);

	if (hidden != NULL && relid == RelationGetRelid(rel) && natts == desc->natts &&
		generation == apikey_relcache_generation())
		return hidden;
	if (hidden != NULL)
		pfree(hidden);
	hidden = MemoryContextAllocZero(TopMemoryContext, Max(desc->natts, 1) * sizeof(bool));
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		hidden[i] = att->attisdropped || is_hidden(NameStr(att->attname));
	}
	relid = RelationGetRelid(rel);
	natts = desc->natts;
	generation = apikey_relcache_generation();
	return hidden;
}

/* to_jsonb(NEW) less the hidden columns, built column by column. */
static Jsonb *
row_changes(HeapTuple tup, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	bool	   *hidden = hidden_attributes(rel);
	JsonbParseState *state = NULL;
	JsonbValue *res;

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);
		const char *name = NameStr(att->attname);
		JsonbValue	k;
		JsonbValue	v;
		bool		isnull;
		Datum		d;

		if (hidden[i])
			continue;
		k.type = jbvString;
		k.val.string.val = (char *) name;
		k.val.string.len = strlen(name);
		pushJsonbValue(&state, WJB_KEY, &k);

		d = heap_getattr(tup, i + 1, desc, &isnull);
		if (isnull)
		{
			v.type = jbvNull;
			pushJsonbValue(&state, WJB_VALUE, &v);
		}
		else
		{
			Jsonb	   *j = DatumGetJsonbP(FunctionCall1(to_jsonb_for(att->atttypid), d));

			v.type = jbvBinary;
			v.val.binary.data = &j->root;
			v.val.binary.len = VARSIZE(j) - VARHDRSZ;
			pushJsonbValue(&state, WJB_VALUE, &v);
		}
	}
	res = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	return JsonbValueToJsonb(res);
}

/* A role's name as pg_get_userbyid() gives it. */
static Datum
role_name(Oid role)
{
	return DirectFunctionCall1(pg_get_userbyid, ObjectIdGetDatum(role));
}

/* Prepare the audit INSERT once per backend. */
static SPIPlanPtr
get_audit_plan(void)
{
	static const Oid types[AUDIT_NARGS] = {
		TEXTOID, TEXTOID, NAMEOID, NAMEOID, REGROLEOID, JSONBOID
	};
	SPIPlanPtr	plan;

	if (audit_plan != NULL)
		return audit_plan;
	plan = SPI_prepare_cursor(audit_sql, AUDIT_NARGS, (Oid *) types,
							  CURSOR_OPT_GENERIC_PLAN);
	if (plan == NULL)
		elog(ERROR, "could not prepare the audit insert: %s",
			 SPI_result_code_string(SPI_result));
	if (SPI_keepplan(plan) != 0)
		elog(ERROR, "could not keep the audit insert plan");
	audit_plan = plan;
	return plan;
}

/*
 * SQL trigger: apikeys_internal._audit_key_create(), AFTER INSERT FOR EACH
 * ROW on the key catalog.  Writes the new key's audit row.
 */
PG_FUNCTION_INFO_V1(apikeys_audit_key_create);
Datum
apikeys_audit_key_create(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tup;
	TupleDesc	desc;
	Oid			actor = apikeys_current_actor();
	Datum		values[AUDIT_NARGS];
	char		nulls[AUDIT_NARGS] = {' ', ' ', ' ', ' ', ' ', ' '};
	Oid			relid;
	bool		isnull;
	int			attno;
	int			rc;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_AFTER(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		elog(ERROR, "apikeys_internal._audit_key_create must fire AFTER INSERT FOR EACH ROW");
	tup = trigdata->tg_trigtuple;
	desc = RelationGetDescr(trigdata->tg_relation);

	values[0] = CStringGetTextDatum(OidIsValid(actor) ? "create" : "direct_insert");
	attno = SPI_fnumber(desc, "key_id");
	values[1] = attno > 0 ? heap_getattr(tup, attno, desc, &isnull) : (Datum) 0;
	if (attno <= 0 || isnull)
		elog(ERROR, "apikeys catalog row without a key id");
	values[2] = role_name(GetSessionUserId());
	values[3] = role_name(OidIsValid(actor) ? actor : GetUserId());
	attno = SPI_fnumber(desc, "role");
	values[4] = attno > 0 ? heap_getattr(tup, attno, desc, &isnull) : (Datum) 0;
	if (attno <= 0 || isnull)
		elog(ERROR, "apikeys catalog row without a role");
	values[5] = JsonbPGetDatum(row_changes(tup, trigdata->tg_relation));

	/* directly when the audit log allows it (insert.c), else by the plan */
	relid = apikey_cached_relation_oid(&audit_rel);
	if (OidIsValid(relid) &&
		apikey_insert_direct(&audit_insert, relid, values, nulls))
		return PointerGetDatum(NULL);
	if (SPI_connect() != SPI_OK_CONNECT)
		elog(ERROR, "SPI_connect failed");
	rc = SPI_execute_plan(get_audit_plan(), values, NULL, false, 0);
	if (rc != SPI_OK_INSERT)
		elog(ERROR, "audit insert failed: %s", SPI_result_code_string(rc));
	SPI_finish();
	return PointerGetDatum(NULL);
}
