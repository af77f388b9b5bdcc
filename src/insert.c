/*
 * insert.c
 *		Direct row insertion for the extension's own tables: what the
 *		executor does for one row of an INSERT (or COPY for each row it
 *		loads), without planning and executor setup per row.
 *
 * apikey_create writes a catalog row and its trigger an audit row; through
 * SPI each is a statement of its own, and most of its cost is setting up
 * the executor and preparing the table's CHECK constraints again.  Here the
 * constraints and column defaults are prepared once per backend and kept
 * while their stored expressions are unchanged; each row gets its defaults,
 * NOT NULL and CHECK constraints are checked, every index maintained
 * (unique ones checked), and AFTER row triggers (the audit row; foreign
 * keys, should any appear) queued and fired before the call returns, as at
 * the end of an INSERT statement.  A relation with anything this does not
 * do (BEFORE or statement triggers, transition tables, rules, row-level
 * security for the current user, generated or identity columns) is
 * refused, and the caller runs its saved INSERT instead; the one BEFORE
 * trigger taken is the audit log's hash chain, whose work (chain.c) is done
 * here as the trigger would.
 */
#include "postgres.h"

#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/pg_class.h"
#include "catalog/pg_trigger.h"
#include "commands/trigger.h"
#include "executor/executor.h"
#include "executor/spi.h"
#include "miscadmin.h"
#include "nodes/makefuncs.h"
#include "optimizer/optimizer.h"
#include "parser/parse_relation.h"
#include "rewrite/rewriteHandler.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"

#include "apikeys.h"
#include "compat.h"

struct DirectInsertPrepared
{
	Oid			relid;
	int			natts;
	AttrNumber *attnums;		/* of the columns the caller sets */
	int			ncheck;
	char	  **ccbin;			/* the CHECK expressions they were built from */
	ExprState **checks;
	char	  **adbin;			/* per column, the default they were built from */
	ExprState **defaults;		/* per column the caller does not set, or NULL */
	uint64		checked_at;		/* relcache invalidations when last compared */
	MemoryContext cxt;
};

/*
 * Relcache invalidations seen by this backend: a relation's constraints
 * and defaults change only with one, so the prepared expressions are
 * compared with the relation's again only after one.
 */
static uint64 relcache_invals = 1;
static bool inval_registered = false;
static CachedRelation *cached_relations = NULL;

/*
 * The one relcache callback of the direct insert and every CachedRelation
 * (PostgreSQL has a handful of slots for all extensions): count the
 * invalidation, and forget a cached relation OID that may be stale.
 */
static void
count_relcache_inval(Datum arg, Oid relid)
{
	relcache_invals++;
	for (CachedRelation *c = cached_relations; c != NULL; c = c->next)
		if (!OidIsValid(relid) || relid == c->relid)
			c->valid = false;
}

/* A number that changes whenever a relation's definition may have changed. */
uint64
apikey_relcache_generation(void)
{
	if (!inval_registered)
	{
		CacheRegisterRelcacheCallback(count_relcache_inval, (Datum) 0);
		inval_registered = true;
	}
	return relcache_invals;
}

/* The stored default expression of column attnum, or NULL. */
static const char *
default_bin(TupleDesc desc, AttrNumber attnum)
{
	if (desc->constr == NULL)
		return NULL;
	for (int i = 0; i < desc->constr->num_defval; i++)
		if (desc->constr->defval[i].adnum == attnum)
			return desc->constr->defval[i].adbin;
	return NULL;
}

/* Are the prepared expressions still those of the relation? */
static bool
prepared_is_current(DirectInsert *di, Relation rel)
{
	DirectInsertPrepared *prepared = di->prepared;
	TupleDesc	desc = RelationGetDescr(rel);
	int			ncheck = desc->constr ? desc->constr->num_check : 0;

	if (prepared != NULL && prepared->relid == RelationGetRelid(rel) &&
		prepared->checked_at == apikey_relcache_generation())
		return true;
	if (prepared == NULL || prepared->relid != RelationGetRelid(rel) ||
		prepared->natts != desc->natts || prepared->ncheck != ncheck)
		return false;
	for (int i = 0; i < di->ncolumns; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, prepared->attnums[i] - 1);

		if (att->attisdropped || strcmp(NameStr(att->attname), di->columns[i]) != 0)
			return false;
	}
	for (int i = 0; i < ncheck; i++)
		if (strcmp(prepared->ccbin[i], desc->constr->check[i].ccbin) != 0)
			return false;
	for (int i = 0; i < desc->natts; i++)
	{
		const char *bin = default_bin(desc, i + 1);

		if ((bin == NULL) != (prepared->adbin[i] == NULL) ||
			(bin != NULL && strcmp(bin, prepared->adbin[i]) != 0))
			return false;
	}
	prepared->checked_at = relcache_invals;
	return true;
}

/* Prepare the CHECK constraints and defaults; false if a column is missing. */
static bool
prepare(DirectInsert *di, Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);
	MemoryContext cxt;
	MemoryContext old;
	DirectInsertPrepared *pc;
	bool		set[MaxHeapAttributeNumber] = {0};

	if (di->prepared != NULL)
	{
		MemoryContextDelete(di->prepared->cxt);
		di->prepared = NULL;
	}
	cxt = AllocSetContextCreate(TopMemoryContext, "apikeys direct insert",
								ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(cxt);
	pc = palloc0(sizeof(DirectInsertPrepared));
	pc->cxt = cxt;
	pc->relid = RelationGetRelid(rel);
	pc->natts = desc->natts;
	pc->attnums = palloc(di->ncolumns * sizeof(AttrNumber));
	for (int i = 0; i < di->ncolumns; i++)
	{
		int			attnum = SPI_fnumber(desc, di->columns[i]);

		if (attnum <= 0)
		{
			MemoryContextSwitchTo(old);
			MemoryContextDelete(cxt);
			return false;
		}
		pc->attnums[i] = attnum;
		set[attnum - 1] = true;
	}
	pc->ncheck = desc->constr ? desc->constr->num_check : 0;
	pc->ccbin = palloc0(Max(pc->ncheck, 1) * sizeof(char *));
	pc->checks = palloc0(Max(pc->ncheck, 1) * sizeof(ExprState *));
	for (int i = 0; i < pc->ncheck; i++)
	{
		Expr	   *e = stringToNode(desc->constr->check[i].ccbin);

		pc->ccbin[i] = pstrdup(desc->constr->check[i].ccbin);
		/* NULL: a constraint that is not enforced, as the executor has it */
		pc->checks[i] = APIKEYS_CHECK_ENFORCED(&desc->constr->check[i]) ?
			ExecInitExpr(expression_planner(e), NULL) : NULL;
	}
	pc->adbin = palloc0(desc->natts * sizeof(char *));
	pc->defaults = palloc0(desc->natts * sizeof(ExprState *));
	for (int i = 0; i < desc->natts; i++)
	{
		const char *bin = default_bin(desc, i + 1);
		Node	   *def;

		if (bin != NULL)
			pc->adbin[i] = pstrdup(bin);
		if (set[i] || TupleDescAttr(desc, i)->attisdropped)
			continue;
		def = build_column_default(rel, i + 1);
		if (def != NULL)
			pc->defaults[i] = ExecInitExpr(expression_planner((Expr *) def), NULL);
	}
	MemoryContextSwitchTo(old);
	pc->checked_at = relcache_invals;
	di->prepared = pc;
	return true;
}

/*
 * Are the relation's BEFORE INSERT row triggers only the audit chain's
 * (chain.c), enabled always, with nothing else to evaluate?  Then the
 * direct insert does its work itself, and *chained says so.
 */
static bool
chain_trigger_only(TriggerDesc *td, bool *chained)
{
	int			n = 0;

	for (int i = 0; i < td->numtriggers; i++)
	{
		Trigger    *t = &td->triggers[i];

		if (!TRIGGER_TYPE_MATCHES(t->tgtype, TRIGGER_TYPE_ROW,
								  TRIGGER_TYPE_BEFORE, TRIGGER_TYPE_INSERT))
			continue;
		if (t->tgenabled == TRIGGER_DISABLED)
			continue;
		if (t->tgenabled != TRIGGER_FIRES_ALWAYS || t->tgqual != NULL ||
			t->tgnargs != 0 || !apikeys_is_chain_trigger(t->tgfoid))
			return false;
		n++;
	}
	*chained = n == 1;
	return n <= 1;
}

/*
 * Can the relation take the direct insert, as the current user?  (Who must
 * hold INSERT on it and not be subject to its row-level security; anyone
 * else goes through the executor, which checks and reports.)
 */
static bool
direct_insert_possible(Relation rel, bool *chained)
{
	TriggerDesc *td = rel->trigdesc;
	TupleDesc	desc = RelationGetDescr(rel);

	*chained = false;
	if (pg_class_aclcheck(RelationGetRelid(rel), GetUserId(), ACL_INSERT) != ACLCHECK_OK)
		return false;

	if (rel->rd_rel->relkind != RELKIND_RELATION || rel->rd_rules != NULL)
		return false;
	if (td != NULL &&
		(td->trig_insert_instead_row ||
		 td->trig_insert_before_statement || td->trig_insert_after_statement ||
		 td->trig_insert_new_table))
		return false;
	if (td != NULL && td->trig_insert_before_row && !chain_trigger_only(td, chained))
		return false;
	if (desc->constr != NULL && desc->constr->has_generated_stored)
		return false;
	for (int i = 0; i < desc->natts; i++)
		if (TupleDescAttr(desc, i)->attidentity || TupleDescAttr(desc, i)->attgenerated)
			return false;
	return check_enable_rls(RelationGetRelid(rel), InvalidOid, false) != RLS_ENABLED;
}

/*
 * Insert one row into relid directly, as the current user, with values for
 * di's columns ('n' in nulls for null, as SPI takes them) and defaults for
 * the others; false (having done nothing) if the relation cannot take it.
 */
bool
apikey_insert_direct(DirectInsert *di, Oid relid, Datum *values,
					 const char *nulls)
{
	DirectInsertPrepared *prepared;
	Relation	rel;
	EState	   *estate;
	RangeTblEntry *rte;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
	ExprContext *econtext;
	TupleDesc	desc;
	List	   *recheck;
	MemoryContext old;
	bool		chained;

	/* what the executor checks first: a read-only transaction, a standby */
	PreventCommandIfReadOnly("INSERT");
	PreventCommandIfParallelMode("INSERT");

	LockRelationOid(relid, RowExclusiveLock);
	rel = table_open(relid, NoLock);
	if (!direct_insert_possible(rel, &chained) ||
		(!prepared_is_current(di, rel) && !prepare(di, rel)))
	{
		table_close(rel, NoLock);
		return false;
	}
	prepared = di->prepared;
	desc = RelationGetDescr(rel);

	estate = CreateExecutorState();
	/* everything below is freed with the executor state */
	old = MemoryContextSwitchTo(estate->es_query_cxt);
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = RELKIND_RELATION;
	rte->rellockmode = RowExclusiveLock;
	APIKEYS_INSERT_RANGE_TABLE(estate, rte);
	rri = makeNode(ResultRelInfo);
	ExecInitResultRelation(estate, rri, 1);
	APIKEYS_CHECK_VALID_INSERT(rri);
	ExecOpenIndices(rri, false);
	/* the prepared constraints, instead of preparing them again */
	if (prepared->ncheck > 0)
		APIKEYS_RRI_CHECK_EXPRS(rri) = prepared->checks;

	slot = ExecInitExtraTupleSlot(estate, desc, table_slot_callbacks(rel));
	econtext = GetPerTupleExprContext(estate);
	econtext->ecxt_scantuple = slot;
	ExecClearTuple(slot);
	for (int i = 0; i < desc->natts; i++)
	{
		slot->tts_values[i] = (Datum) 0;
		slot->tts_isnull[i] = true;
		if (prepared->defaults[i] != NULL)
			slot->tts_values[i] = ExecEvalExpr(prepared->defaults[i], econtext,
											   &slot->tts_isnull[i]);
	}
	for (int i = 0; i < di->ncolumns; i++)
	{
		slot->tts_values[prepared->attnums[i] - 1] = values[i];
		slot->tts_isnull[prepared->attnums[i] - 1] = nulls[i] == 'n';
	}
	/*
	 * What the audit log's BEFORE trigger does (chain.c): a new row waits
	 * for the commit of the transaction, and is not inserted now.
	 */
	if (chained && apikeys_audit_chain_row(rel, slot->tts_values, slot->tts_isnull))
	{
		MemoryContextSwitchTo(old);
		ExecResetTupleTable(estate->es_tupleTable, false);
		ExecCloseResultRelations(estate);
		ExecCloseRangeTableRelations(estate);
		FreeExecutorState(estate);
		table_close(rel, NoLock);
		return true;
	}
	ExecStoreVirtualTuple(slot);
	MemoryContextSwitchTo(old);

	AfterTriggerBeginQuery();
	if (desc->constr != NULL)
		ExecConstraints(rri, slot, estate);
	table_tuple_insert(rel, slot, GetCurrentCommandId(true), 0, NULL);
	recheck = APIKEYS_INSERT_INDEX_TUPLES(rri, slot, estate);
	ExecARInsertTriggers(estate, rri, slot, recheck, NULL);
	AfterTriggerEndQuery(estate);

	ExecResetTupleTable(estate->es_tupleTable, false);
	ExecCloseResultRelations(estate);
	ExecCloseRangeTableRelations(estate);
	FreeExecutorState(estate);
	table_close(rel, NoLock);

	/* later commands of the transaction (a verify in the same query) see it */
	CommandCounterIncrement();
	return true;
}


/*
 * The OID of the extension's relation c->relname (objects.c's lookup, which
 * reads pg_depend), cached until a relcache invalidation names it.
 * InvalidOid if there is none.
 */
Oid
apikey_cached_relation_oid(CachedRelation *c)
{
	if (!c->registered)
	{
		(void) apikey_relcache_generation();	/* registers the callback */
		c->next = cached_relations;
		cached_relations = c;
		c->registered = true;
	}
	if (!c->valid)
	{
		c->relid = apikeys_relation_oid(c->relname);
		c->valid = OidIsValid(c->relid);
	}
	return c->relid;
}

/*
 * Whole rows into one of the extension's tables, below the executor, for
 * rows whose BEFORE trigger's work the caller has done (chain.c's audit
 * rows, written before commit): CHECK and NOT NULL constraints checked,
 * every index maintained, AFTER row triggers fired.  No permission or
 * row-level security check: the caller inserts on the extension's behalf
 * rows an earlier, checked INSERT handed over.
 */
struct RowInserter
{
	Relation	rel;
	EState	   *estate;
	ResultRelInfo *rri;
	TupleTableSlot *slot;
};

RowInserter *
apikey_row_inserter_begin(Oid relid)
{
	RowInserter *ins = palloc0(sizeof(RowInserter));
	RangeTblEntry *rte;
	MemoryContext old;

	PreventCommandIfReadOnly("INSERT");
	PreventCommandIfParallelMode("INSERT");
	LockRelationOid(relid, RowExclusiveLock);
	ins->rel = table_open(relid, NoLock);
	ins->estate = CreateExecutorState();
	old = MemoryContextSwitchTo(ins->estate->es_query_cxt);
	rte = makeNode(RangeTblEntry);
	rte->rtekind = RTE_RELATION;
	rte->relid = relid;
	rte->relkind = RELKIND_RELATION;
	rte->rellockmode = RowExclusiveLock;
	APIKEYS_INSERT_RANGE_TABLE(ins->estate, rte);
	ins->rri = makeNode(ResultRelInfo);
	ExecInitResultRelation(ins->estate, ins->rri, 1);
	APIKEYS_CHECK_VALID_INSERT(ins->rri);
	ExecOpenIndices(ins->rri, false);
	ins->slot = ExecInitExtraTupleSlot(ins->estate, RelationGetDescr(ins->rel),
									  table_slot_callbacks(ins->rel));
	MemoryContextSwitchTo(old);
	AfterTriggerBeginQuery();
	return ins;
}

void
apikey_row_inserter_put(RowInserter *ins, Datum *values, bool *isnull)
{
	TupleDesc	desc = RelationGetDescr(ins->rel);
	List	   *recheck;

	ExecClearTuple(ins->slot);
	memcpy(ins->slot->tts_values, values, desc->natts * sizeof(Datum));
	memcpy(ins->slot->tts_isnull, isnull, desc->natts * sizeof(bool));
	ExecStoreVirtualTuple(ins->slot);
	if (desc->constr != NULL)
		ExecConstraints(ins->rri, ins->slot, ins->estate);
	table_tuple_insert(ins->rel, ins->slot, GetCurrentCommandId(true), 0, NULL);
	recheck = APIKEYS_INSERT_INDEX_TUPLES(ins->rri, ins->slot, ins->estate);
	ExecARInsertTriggers(ins->estate, ins->rri, ins->slot, recheck, NULL);
	ResetPerTupleExprContext(ins->estate);
}

void
apikey_row_inserter_end(RowInserter *ins)
{
	AfterTriggerEndQuery(ins->estate);
	ExecResetTupleTable(ins->estate->es_tupleTable, false);
	ExecCloseResultRelations(ins->estate);
	ExecCloseRangeTableRelations(ins->estate);
	FreeExecutorState(ins->estate);
	table_close(ins->rel, NoLock);
	pfree(ins);
	CommandCounterIncrement();
}
