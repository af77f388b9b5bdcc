/*
 * chain.c
 *		The audit log's hash chain, appended to in C with its head kept in
 *		backend memory for the rest of the transaction.
 *
 * Every audit row carries its place (seq), the previous row's hash and a
 * hash over both and its own canonical content (the SQL function
 * apikeys_internal._audit_row_hash, which audit_verify recomputes: the two
 * encodings must stay identical).  The head of the chain, one row of
 * apikeys_internal.audit_chain, serialises appends.
 *
 * A new row is not inserted when its INSERT runs: it waits in the memory
 * of its transaction (the trigger returns NULL; insert.c's direct insert
 * skips it) and is chained and written in the pre-commit callback, which
 * takes a SHARE ROW EXCLUSIVE lock on audit_chain (no other appender and
 * no other writer of the head can share it; readers are not blocked),
 * reads the head, links and inserts the rows, and writes the head once.
 * So the lock is held for the commit only: an open transaction that
 * changed a key holds back no other, and n rows cost O(n) (updating the
 * head row per append left a row version per append for the next read to
 * step over).  Rows queued by a subtransaction that rolls back are dropped.
 *
 * The lock is never taken while user code of a transaction can still run,
 * unless an admin asked for it: the queue is bounded by
 * apikeys.audit_queue_limit (bytes of waiting rows), and a row past it
 * whose acting role (actor_role) is not an apikeys admin or a superuser
 * fails with 54000, so that no unprivileged transaction can write its rows
 * early and hold every revocation back until it ends.  The bound also
 * bounds the work done under the lock at commit (a few tenths of a second
 * at the 8 MB default).  An admin's row past it writes the queue at once
 * (memory stays bounded) and the lock is held from then on, as it is when
 * something reads the chain in the same transaction
 * (apikeys_internal._audit_chain_flush(), called by audit_verify,
 * audit_head and audit_purge, all admin-only); rows written inside a
 * subtransaction that then rolls back wait again, and the head it began
 * with is restored (and forgotten, with the lock, if the lock was taken
 * inside it).  A transaction that appended cannot be prepared (two-phase
 * commit): it would hold the lock until COMMIT PREPARED.
 *
 * A row that arrives with its place already set (pg_restore, a logical
 * replication subscriber) is accepted if its hash matches its content; the
 * head and the anchor follow the rows loaded.  Each new row queues NOTIFY
 * apikeys naming its seq, nothing else (note.c).
 *
 * The trigger function needs no SECURITY DEFINER: the head is read and
 * written below the executor, and only roles allowed to insert into the
 * audit log (the extension's own functions, its owner) can fire it.
 */
#include "postgres.h"

#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "access/tableam.h"
#include "access/xact.h"
#include "catalog/indexing.h"
#include "catalog/pg_type_d.h"
#include "commands/async.h"
#include "commands/trigger.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/lmgr.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgrprotos.h"
#include "utils/guc.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/inval.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/rls.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/xid8.h"

#include "apikeys.h"
#include "compat.h"

#define HASH_LEN	32

/* The head of the chain as this transaction sees it. */
typedef struct ChainHead
{
	bool		loaded;			/* read from the table (under the lock) */
	bool		dirty;			/* changed since, not yet written */
	int64		seq;
	uint8		hash[HASH_LEN];
	int64		anchor_seq;
	uint8		anchor_hash[HASH_LEN];
} ChainHead;

/* The head a subtransaction started from, restored if it rolls back. */
typedef struct SavedHead
{
	SubTransactionId subid;
	ChainHead	head;
} SavedHead;

/* A new audit row waiting for the commit of its transaction. */
typedef struct QueuedRow
{
	HeapTuple	tup;			/* all its columns, in TopTransactionContext */
	SubTransactionId subid;		/* subtransaction that queued it */
	SubTransactionId drained_at;	/* written in (a subtransaction since
									 * committed into) it; Invalid: waiting */
} QueuedRow;

/*
 * apikeys.audit_queue_limit, in kB: past this many bytes of waiting rows a
 * transaction writes them at once (an admin's) or fails (anyone else's).
 */
static int	queue_limit_kb = 8192;

static ChainHead head;
static bool locked = false;		/* this transaction holds the head's lock */
static Oid	locked_relid = InvalidOid;	/* on this audit_chain */
static SubTransactionId locked_subid = InvalidSubTransactionId;
static QueuedRow *queue = NULL;
static int	nqueued = 0;		/* entries, written ones included */
static int	npending = 0;		/* entries waiting */
static Size pending_bytes = 0;	/* their tuples' size */
static int	queue_cap = 0;
static Oid	queue_relid = InvalidOid;	/* the audit log they go into */
static SavedHead *saved = NULL;
static int	nsaved = 0;
static int	saved_cap = 0;
static bool callbacks_registered = false;

static CachedRelation chain_rel = {"audit_chain", InvalidOid, false, false, NULL};
static CachedRelation log_rel = {"audit_log", InvalidOid, false, false, NULL};

/* The audit log's columns the chain reads or fills, by attribute number. */
typedef struct LogColumns
{
	Oid			relid;
	int			natts;
	AttrNumber	seq,
				at,
				txid,
				action,
				key_id,
				actor,
				actor_role,
				key_role,
				key_role_name,
				changes,
				prev_hash,
				row_hash;
} LogColumns;

static LogColumns cols;

/* The head row's columns. */
#define Anum_chain_seq			2
#define Anum_chain_hash			3
#define Anum_chain_anchor_seq	4
#define Anum_chain_anchor_hash	5

static AttrNumber
column(TupleDesc desc, const char *name)
{
	for (int i = 0; i < desc->natts; i++)
	{
		Form_pg_attribute att = TupleDescAttr(desc, i);

		if (!att->attisdropped && strcmp(NameStr(att->attname), name) == 0)
			return att->attnum;
	}
	elog(ERROR, "apikeys audit log has no column \"%s\"", name);
	return InvalidAttrNumber;	/* keep the compiler quiet */
}

static void
find_columns(Relation rel)
{
	TupleDesc	desc = RelationGetDescr(rel);

	if (cols.relid == RelationGetRelid(rel) && cols.natts == desc->natts)
		return;
	cols.relid = InvalidOid;
	cols.seq = column(desc, "seq");
	cols.at = column(desc, "at");
	cols.txid = column(desc, "txid");
	cols.action = column(desc, "action");
	cols.key_id = column(desc, "key_id");
	cols.actor = column(desc, "actor");
	cols.actor_role = column(desc, "actor_role");
	cols.key_role = column(desc, "key_role");
	cols.key_role_name = column(desc, "key_role_name");
	cols.changes = column(desc, "changes");
	cols.prev_hash = column(desc, "prev_hash");
	cols.row_hash = column(desc, "row_hash");
	cols.natts = desc->natts;
	cols.relid = RelationGetRelid(rel);
}

/* One field of the canonical encoding: byte length, colon, text; or '-'. */
static void
put_field(StringInfo buf, const char *s, int len)
{
	appendStringInfoChar(buf, ',');
	if (s == NULL)
	{
		appendStringInfoChar(buf, '-');
		return;
	}
	appendStringInfo(buf, "%d:", len);
	appendBinaryStringInfo(buf, s, len);
}

static void
put_cstring(StringInfo buf, const char *s)
{
	put_field(buf, s, s ? (int) strlen(s) : 0);
}

/* to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') */
static char *
utc_text(TimestampTz at)
{
	struct pg_tm tm;
	fsec_t		fsec;
	Datum		ts;

	if (!TIMESTAMP_NOT_FINITE(at) &&
		timestamp2tm(at, NULL, &tm, &fsec, NULL, NULL) == 0 &&
		tm.tm_year >= 1 && tm.tm_year <= 9999)
		return psprintf("%04d-%02d-%02d %02d:%02d:%02d.%06d",
						tm.tm_year, tm.tm_mon, tm.tm_mday,
						tm.tm_hour, tm.tm_min, tm.tm_sec, (int) fsec);
	/* anything unusual: exactly what the SQL function does */
	ts = DirectFunctionCall2(timestamptz_zone, CStringGetTextDatum("UTC"),
							 TimestampTzGetDatum(at));
	return TextDatumGetCString(DirectFunctionCall2(timestamp_to_char, ts,
												   CStringGetTextDatum("YYYY-MM-DD HH24:MI:SS.US")));
}

static const char *
datum_text(Datum *values, bool *isnull, AttrNumber att, int *len)
{
	text	   *t;

	if (isnull[att - 1])
		return NULL;
	t = DatumGetTextPP(values[att - 1]);
	*len = VARSIZE_ANY_EXHDR(t);
	return VARDATA_ANY(t);
}

/*
 * The row hash of a row given as a full set of column values: SHA-256 of
 * prev and the canonical encoding apikeys-audit-v1 in UTF-8, as
 * apikeys_internal._audit_row_hash computes it.
 */
static void
row_hash(const uint8 *prev, int prev_len, Datum *values, bool *isnull, uint8 *out)
{
	StringInfoData buf;
	const char *s;
	int			len = 0;
	char	   *utf8;
	char	   *all;
	int			utf8_len;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "apikeys-audit-v1");
	put_cstring(&buf, isnull[cols.seq - 1] ? NULL :
				psprintf(INT64_FORMAT, DatumGetInt64(values[cols.seq - 1])));
	/* to_char gives null for infinity */
	put_cstring(&buf, isnull[cols.at - 1] ||
				TIMESTAMP_NOT_FINITE(DatumGetTimestampTz(values[cols.at - 1])) ? NULL :
				utc_text(DatumGetTimestampTz(values[cols.at - 1])));
	put_cstring(&buf, isnull[cols.txid - 1] ? NULL :
				psprintf(UINT64_FORMAT, U64FromFullTransactionId(DatumGetFullTransactionId(values[cols.txid - 1]))));
	s = datum_text(values, isnull, cols.action, &len);
	put_field(&buf, s, len);
	s = datum_text(values, isnull, cols.key_id, &len);
	put_field(&buf, s, len);
	put_cstring(&buf, isnull[cols.actor - 1] ? NULL :
				NameStr(*DatumGetName(values[cols.actor - 1])));
	put_cstring(&buf, isnull[cols.actor_role - 1] ? NULL :
				NameStr(*DatumGetName(values[cols.actor_role - 1])));
	put_cstring(&buf, isnull[cols.key_role_name - 1] ? NULL :
				NameStr(*DatumGetName(values[cols.key_role_name - 1])));
	if (isnull[cols.changes - 1])
		put_cstring(&buf, NULL);
	else
	{
		Jsonb	   *jb = DatumGetJsonbP(values[cols.changes - 1]);

		put_cstring(&buf, JsonbToCString(NULL, &jb->root, VARSIZE(jb)));
	}

	utf8 = pg_server_to_any(buf.data, buf.len, PG_UTF8);
	utf8_len = utf8 == buf.data ? buf.len : (int) strlen(utf8);
	all = palloc(prev_len + utf8_len);
	memcpy(all, prev, prev_len);
	memcpy(all + prev_len, utf8, utf8_len);
	apikey_digest(all, prev_len + utf8_len, out);
	pfree(all);
	if (utf8 != buf.data)
		pfree(utf8);
	pfree(buf.data);
}

static bytea *
make_bytea(const uint8 *b, int len)
{
	bytea	   *v = palloc(VARHDRSZ + len);

	SET_VARSIZE(v, VARHDRSZ + len);
	memcpy(VARDATA(v), b, len);
	return v;
}

/* A bytea column of exactly HASH_LEN bytes into out; false otherwise. */
static bool
hash_of(Datum d, bool isnull, uint8 *out)
{
	bytea	   *b;

	if (isnull)
		return false;
	b = DatumGetByteaPP(d);
	if (VARSIZE_ANY_EXHDR(b) != HASH_LEN)
		return false;
	memcpy(out, VARDATA_ANY(b), HASH_LEN);
	return true;
}

/* The one row of the head table, as this transaction sees it, or error. */
static HeapTuple
read_head_row(Relation rel, Snapshot snapshot)
{
	TableScanDesc scan;
	HeapTuple	tup;
	HeapTuple	copy;

	/* by default SnapshotSelf: the latest committed row, or this transaction's own */
	scan = table_beginscan(rel, snapshot ? snapshot : SnapshotSelf, 0, NULL);
	tup = heap_getnext(scan, ForwardScanDirection);
	if (tup == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the apikeys audit chain has no head row")));
	copy = heap_copytuple(tup);
	if (heap_getnext(scan, ForwardScanDirection) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the apikeys audit chain has more than one head row")));
	table_endscan(scan);
	return copy;
}

static void notify_row(Datum *values, bool *isnull);
static void chain_xact_callback(XactEvent event, void *arg);
static void chain_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
								   SubTransactionId parentSubid, void *arg);

static void
register_callbacks(void)
{
	if (!callbacks_registered)
	{
		RegisterXactCallback(chain_xact_callback, NULL);
		RegisterSubXactCallback(chain_subxact_callback, NULL);
		callbacks_registered = true;
	}
}

/*
 * Take the head's lock for the transaction, and read the head.  With
 * check_snapshot, a transaction-snapshot transaction (REPEATABLE READ,
 * SERIALIZABLE) that is about to read the chain must see the head as it
 * is: if another transaction appended since its snapshot, 40001.
 */
static void
load_head(bool check_snapshot)
{
	Relation	rel;
	HeapTuple	tup;
	TupleDesc	desc;
	bool		isnull;
	Oid			relid = apikey_cached_relation_oid(&chain_rel);

	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apikeys_internal.audit_chain is missing"),
				 errhint("Update the extension: ALTER EXTENSION apikeys UPDATE.")));
	register_callbacks();
	/* the extension was dropped and created again in this transaction */
	if (locked && locked_relid != relid)
	{
		locked = false;
		memset(&head, 0, sizeof(head));
	}
	if (!locked)
	{
		LockRelationOid(relid, ShareRowExclusiveLock);
		locked = true;
		locked_relid = relid;
		locked_subid = GetCurrentSubTransactionId();
	}
	if (head.loaded && !check_snapshot)
		return;
	rel = table_open(relid, AccessShareLock);
	desc = RelationGetDescr(rel);
	tup = read_head_row(rel, NULL);
	if (check_snapshot && IsolationUsesXactSnapshot())
	{
		HeapTuple	mine = read_head_row(rel, GetTransactionSnapshot());

		if (!ItemPointerEquals(&mine->t_self, &tup->t_self))
			ereport(ERROR,
					(errcode(ERRCODE_T_R_SERIALIZATION_FAILURE),
					 errmsg("could not serialize access due to concurrent update"),
					 errdetail("Another transaction added to the apikeys audit chain after this transaction's snapshot was taken."),
					 errhint("Retry the transaction.")));
	}
	if (!head.loaded)
	{
		head.seq = DatumGetInt64(heap_getattr(tup, Anum_chain_seq, desc, &isnull));
		if (isnull || !hash_of(heap_getattr(tup, Anum_chain_hash, desc, &isnull), isnull, head.hash))
			elog(ERROR, "apikeys audit chain head is malformed");
		head.anchor_seq = DatumGetInt64(heap_getattr(tup, Anum_chain_anchor_seq, desc, &isnull));
		if (isnull || !hash_of(heap_getattr(tup, Anum_chain_anchor_hash, desc, &isnull), isnull,
							   head.anchor_hash))
			elog(ERROR, "apikeys audit chain anchor is malformed");
		head.loaded = true;
		head.dirty = false;
	}
	table_close(rel, AccessShareLock);
}

/* Write the head kept here into the head row (under the lock). */
static void
write_head(void)
{
	Relation	rel;
	HeapTuple	oldtup;
	HeapTuple	newtup;
	Datum		values[Anum_chain_anchor_hash];
	bool		nulls[Anum_chain_anchor_hash] = {0};
	bool		replace[Anum_chain_anchor_hash] = {0};

	rel = table_open(locked_relid, RowExclusiveLock);
	oldtup = read_head_row(rel, NULL);
	values[Anum_chain_seq - 1] = Int64GetDatum(head.seq);
	values[Anum_chain_hash - 1] = PointerGetDatum(make_bytea(head.hash, HASH_LEN));
	values[Anum_chain_anchor_seq - 1] = Int64GetDatum(head.anchor_seq);
	values[Anum_chain_anchor_hash - 1] = PointerGetDatum(make_bytea(head.anchor_hash, HASH_LEN));
	for (int i = Anum_chain_seq - 1; i < Anum_chain_anchor_hash; i++)
		replace[i] = true;
	newtup = heap_modify_tuple(oldtup, RelationGetDescr(rel), values, nulls, replace);
	CatalogTupleUpdate(rel, &oldtup->t_self, newtup);
	table_close(rel, RowExclusiveLock);
	head.dirty = false;
}

/* Before a change of the head: keep the head this subtransaction began with. */
static void
save_for_subxact(void)
{
	SubTransactionId cur = GetCurrentSubTransactionId();

	if (cur == TopSubTransactionId ||
		(nsaved > 0 && saved[nsaved - 1].subid == cur))
		return;
	if (nsaved == saved_cap)
	{
		saved_cap = saved_cap == 0 ? 8 : saved_cap * 2;
		saved = saved == NULL ?
			MemoryContextAlloc(TopMemoryContext, saved_cap * sizeof(SavedHead)) :
			repalloc(saved, saved_cap * sizeof(SavedHead));
	}
	saved[nsaved].subid = cur;
	saved[nsaved].head = head;
	nsaved++;
}

/* Give a new row its place, link and hash, make it the head, queue NOTIFY. */
static void
chain_new_row(Datum *values, bool *isnull)
{
	uint8		h[HASH_LEN];

	save_for_subxact();
	values[cols.seq - 1] = Int64GetDatum(head.seq + 1);
	isnull[cols.seq - 1] = false;
	values[cols.prev_hash - 1] = PointerGetDatum(make_bytea(head.hash, HASH_LEN));
	isnull[cols.prev_hash - 1] = false;
	if (isnull[cols.key_role - 1])
		isnull[cols.key_role_name - 1] = true;
	else
	{
		values[cols.key_role_name - 1] =
			DirectFunctionCall1(pg_get_userbyid, values[cols.key_role - 1]);
		isnull[cols.key_role_name - 1] = false;
	}
	row_hash(head.hash, HASH_LEN, values, isnull, h);
	values[cols.row_hash - 1] = PointerGetDatum(make_bytea(h, HASH_LEN));
	isnull[cols.row_hash - 1] = false;
	head.seq++;
	memcpy(head.hash, h, HASH_LEN);
	head.dirty = true;
	notify_row(values, isnull);
}

/*
 * Chain and insert the queued rows not yet written, in the order they were
 * queued, under the head's lock.  Rows written inside a subtransaction are
 * kept (marked with it) until it commits into the top transaction: if it
 * rolls back, so do they, and they are queued again.
 */
static void
drain_queue(void)
{
	SubTransactionId cur = GetCurrentSubTransactionId();
	Oid			relid;
	RowInserter *ins;
	Relation	rel;
	TupleDesc	desc;
	Datum	   *values;
	bool	   *isnull;
	MemoryContext tmp;
	MemoryContext old;
	bool		pushed = false;
	int			kept = 0;

	if (npending == 0)
		return;
	relid = apikey_cached_relation_oid(&log_rel);
	if (!OidIsValid(relid) || relid != queue_relid)
	{
		/* the audit log they were meant for is gone (DROP EXTENSION) */
		nqueued = npending = 0;
		pending_bytes = 0;
		return;
	}
	load_head(false);
	if (!ActiveSnapshotSet())
	{
		PushActiveSnapshot(GetTransactionSnapshot());
		pushed = true;
	}
	ins = apikey_row_inserter_begin(relid);
	rel = table_open(relid, NoLock);
	find_columns(rel);
	desc = RelationGetDescr(rel);
	values = palloc(desc->natts * sizeof(Datum));
	isnull = palloc(desc->natts * sizeof(bool));
	tmp = AllocSetContextCreate(CurrentMemoryContext, "apikeys audit rows",
								ALLOCSET_DEFAULT_SIZES);
	for (int i = 0; i < nqueued; i++)
	{
		if (queue[i].drained_at != InvalidSubTransactionId)
			continue;
		old = MemoryContextSwitchTo(tmp);
		heap_deform_tuple(queue[i].tup, desc, values, isnull);
		chain_new_row(values, isnull);
		apikey_row_inserter_put(ins, values, isnull);
		MemoryContextSwitchTo(old);
		MemoryContextReset(tmp);
		queue[i].drained_at = cur;
	}
	MemoryContextDelete(tmp);
	table_close(rel, NoLock);
	apikey_row_inserter_end(ins);
	if (pushed)
		PopActiveSnapshot();
	npending = 0;
	pending_bytes = 0;
	/* written by the top transaction itself: nothing to take back */
	if (cur == TopSubTransactionId)
	{
		for (int i = 0; i < nqueued; i++)
			if (queue[i].drained_at != TopSubTransactionId)
				queue[kept++] = queue[i];
			else
				heap_freetuple(queue[i].tup);
		nqueued = kept;
	}
}

static void
forget_all(void)
{
	memset(&head, 0, sizeof(head));
	locked = false;
	locked_relid = InvalidOid;
	locked_subid = InvalidSubTransactionId;
	nsaved = 0;
	/* the rows themselves are in TopTransactionContext, gone with it */
	queue = NULL;
	nqueued = npending = queue_cap = 0;
	pending_bytes = 0;
	queue_relid = InvalidOid;
}

static void
chain_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_PRE_PREPARE:
			/* the lock would be held until COMMIT PREPARED */
			if (nqueued > 0 || locked)
				ereport(ERROR,
						(errcode(ERRCODE_FEATURE_NOT_SUPPORTED),
						 errmsg("cannot prepare a transaction that wrote to the apikeys audit log"),
						 errdetail("A prepared transaction would hold the audit chain's lock until COMMIT PREPARED or ROLLBACK PREPARED, and every audited change would wait for it."),
						 errhint("Commit the transaction instead of preparing it.")));
			break;
		case XACT_EVENT_PRE_COMMIT:
		case XACT_EVENT_PARALLEL_PRE_COMMIT:
			drain_queue();
			if (head.loaded && head.dirty &&
				apikey_cached_relation_oid(&chain_rel) == locked_relid)
				write_head();
			break;
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			forget_all();
			break;
	}
}

static void
chain_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					   SubTransactionId parentSubid, void *arg)
{
	int			n;

	switch (event)
	{
		case SUBXACT_EVENT_ABORT_SUB:
			/* its rows are gone: back to the head it began with */
			while (nsaved > 0 && saved[nsaved - 1].subid >= mySubid)
				head = saved[--nsaved].head;
			if (locked && locked_subid >= mySubid)
			{
				/* and the lock went with it */
				locked = false;
				locked_relid = InvalidOid;
				locked_subid = InvalidSubTransactionId;
				memset(&head, 0, sizeof(head));
			}
			/* rows it queued are dropped; rows of outer levels it wrote, queued again */
			n = 0;
			for (int i = 0; i < nqueued; i++)
			{
				if (queue[i].subid >= mySubid)
					continue;
				if (queue[i].drained_at >= mySubid)
					queue[i].drained_at = InvalidSubTransactionId;
				queue[n++] = queue[i];
			}
			nqueued = n;
			npending = 0;
			pending_bytes = 0;
			for (int i = 0; i < nqueued; i++)
				if (queue[i].drained_at == InvalidSubTransactionId)
				{
					npending++;
					pending_bytes += queue[i].tup->t_len;
				}
			break;
		case SUBXACT_EVENT_COMMIT_SUB:
			/* the parent inherits what it began with, unless it kept its own */
			if (nsaved > 0 && saved[nsaved - 1].subid == mySubid)
			{
				if (parentSubid == TopSubTransactionId ||
					(nsaved > 1 && saved[nsaved - 2].subid == parentSubid))
					nsaved--;
				else
					saved[nsaved - 1].subid = parentSubid;
			}
			if (locked && locked_subid == mySubid)
				locked_subid = parentSubid;
			for (int i = 0; i < nqueued; i++)
				if (queue[i].drained_at == mySubid)
					queue[i].drained_at = parentSubid;
			break;
		default:
			break;
	}
}

/* NOTIFY apikeys, '{"event": "audit", "seq": ...}' (note.c: no key, no role) */
static void
notify_row(Datum *values, bool *isnull)
{
	apikeys_notify_event("audit", DatumGetInt64(values[cols.seq - 1]));
}

/* Queue a new row (all its columns) until commit. */
static void
queue_row(Relation rel, Datum *values, bool *isnull)
{
	MemoryContext old;

	register_callbacks();
	if (nqueued > 0 && queue_relid != RelationGetRelid(rel))
	{
		/* for an audit log dropped since */
		nqueued = npending = 0;
		pending_bytes = 0;
	}
	old = MemoryContextSwitchTo(TopTransactionContext);
	if (nqueued == queue_cap)
	{
		queue_cap = queue_cap == 0 ? 64 : queue_cap * 2;
		queue = queue == NULL ? palloc(queue_cap * sizeof(QueuedRow)) :
			repalloc(queue, queue_cap * sizeof(QueuedRow));
	}
	queue[nqueued].tup = heap_form_tuple(RelationGetDescr(rel), values, isnull);
	queue[nqueued].subid = GetCurrentSubTransactionId();
	queue[nqueued].drained_at = InvalidSubTransactionId;
	pending_bytes += queue[nqueued].tup->t_len;
	nqueued++;
	npending++;
	queue_relid = RelationGetRelid(rel);
	MemoryContextSwitchTo(old);
}

/*
 * Is the role the row names as acting (actor_role) an apikeys admin or a
 * superuser?  The extension's functions fill it in with their caller.
 */
static bool
acted_by_admin(Datum *values, bool *isnull)
{
	Oid			role;
	Oid			admin;

	if (isnull[cols.actor_role - 1])
		return false;
	role = get_role_oid(NameStr(*DatumGetName(values[cols.actor_role - 1])), true);
	if (!OidIsValid(role))
		return false;
	if (superuser_arg(role))
		return true;
	admin = get_role_oid("apikeys_admin", true);
	return OidIsValid(admin) && is_member_of_role(role, admin);
}

/*
 * An audit row (all its columns, in the current memory context) on its way
 * into the log.  A new row is queued until the transaction commits (true:
 * the caller must not insert it), and then chained and written under the
 * head's lock: the lock is held for the commit only, and no open
 * transaction holds back other audited changes.  Past
 * apikeys.audit_queue_limit, a row an admin made writes the queue at once
 * (the lock is held from then on); anyone else's fails with 54000.  A new
 * row the current role may insert only under row-level security is
 * chained now (false: values are filled in, the caller inserts them), as
 * is a row that comes with its place (a restore), which is checked against
 * its hash and moves the head and the anchor.
 */
bool
apikeys_audit_chain_row(Relation rel, Datum *values, bool *isnull)
{
	uint8		h[HASH_LEN];

	find_columns(rel);
	if (isnull[cols.seq - 1] &&
		check_enable_rls(RelationGetRelid(rel), InvalidOid, true) != RLS_ENABLED)
	{
		queue_row(rel, values, isnull);
		if (pending_bytes > (Size) queue_limit_kb * 1024)
		{
			/* (the row just queued goes with the subtransaction) */
			if (!acted_by_admin(values, isnull))
				ereport(ERROR,
						(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
						 errmsg("too many audited changes in one transaction"),
						 errdetail("The audit rows this transaction would write at commit take more than apikeys.audit_queue_limit (%d kB), and only an apikeys admin's transaction may go past it.",
								   queue_limit_kb),
						 errhint("Make the changes in several smaller transactions, or ask a superuser to raise apikeys.audit_queue_limit for this role.")));
			drain_queue();
		}
		return true;
	}

	/* the rows queued before it go first */
	drain_queue();
	load_head(false);
	if (isnull[cols.seq - 1])
	{
		chain_new_row(values, isnull);
		return false;
	}

	/* a row loaded with its place: it must carry the hash of its content */
	{
		int64		seq = DatumGetInt64(values[cols.seq - 1]);
		bytea	   *prev;
		uint8		given[HASH_LEN];

		if (seq < 1 || isnull[cols.prev_hash - 1] ||
			!hash_of(values[cols.row_hash - 1], isnull[cols.row_hash - 1], given))
			goto mismatch;
		prev = DatumGetByteaPP(values[cols.prev_hash - 1]);
		row_hash((const uint8 *) VARDATA_ANY(prev), VARSIZE_ANY_EXHDR(prev),
				 values, isnull, h);
		if (memcmp(h, given, HASH_LEN) != 0)
			goto mismatch;
		save_for_subxact();
		if (seq - 1 < head.anchor_seq || (head.seq == 0 && head.anchor_seq == 0))
		{
			if (VARSIZE_ANY_EXHDR(prev) != HASH_LEN)
				goto mismatch;
			head.anchor_seq = seq - 1;
			memcpy(head.anchor_hash, VARDATA_ANY(prev), HASH_LEN);
			head.dirty = true;
		}
		if (seq > head.seq)
		{
			head.seq = seq;
			memcpy(head.hash, given, HASH_LEN);
			head.dirty = true;
		}
		return false;
mismatch:
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("audit row " INT64_FORMAT " does not match its hash", seq),
				 errdetail("A row loaded with its place in the audit chain must carry the hash of its own content.")));
	}
}

/*
 * SQL trigger: apikeys_internal._audit_chain_append(), BEFORE INSERT FOR
 * EACH ROW on the audit log (ENABLE ALWAYS).  A queued row is not inserted
 * now (the INSERT reports it as skipped); it is at commit.
 */
PG_FUNCTION_INFO_V1(apikeys_audit_chain_append);
Datum
apikeys_audit_chain_append(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	Relation	rel;
	TupleDesc	desc;
	Datum	   *values;
	bool	   *isnull;

	if (!CALLED_AS_TRIGGER(fcinfo) ||
		!TRIGGER_FIRED_BEFORE(trigdata->tg_event) ||
		!TRIGGER_FIRED_FOR_ROW(trigdata->tg_event) ||
		!TRIGGER_FIRED_BY_INSERT(trigdata->tg_event))
		elog(ERROR, "apikeys_internal._audit_chain_append must fire BEFORE INSERT FOR EACH ROW");
	rel = trigdata->tg_relation;
	if (RelationGetRelid(rel) != apikey_cached_relation_oid(&log_rel))
		elog(ERROR, "apikeys_internal._audit_chain_append fires only on apikeys_internal.audit_log");

	desc = RelationGetDescr(rel);
	values = palloc(desc->natts * sizeof(Datum));
	isnull = palloc(desc->natts * sizeof(bool));
	heap_deform_tuple(trigdata->tg_trigtuple, desc, values, isnull);
	if (apikeys_audit_chain_row(rel, values, isnull))
		return PointerGetDatum(NULL);
	return PointerGetDatum(heap_form_tuple(desc, values, isnull));
}

/*
 * SQL function: apikeys_internal._audit_chain_flush(), for readers of the
 * chain in a transaction that may have appended: writes the rows queued
 * and the head kept here (the lock stays), so that the log and
 * apikeys_internal.audit_chain show them.  Under REPEATABLE READ or
 * SERIALIZABLE, 40001 if another transaction appended since the snapshot.
 */
PG_FUNCTION_INFO_V1(apikeys_audit_chain_flush);
Datum
apikeys_audit_chain_flush(PG_FUNCTION_ARGS)
{
	if (npending == 0 && !head.loaded)
		PG_RETURN_VOID();
	drain_queue();
	load_head(true);
	/* (a rollback of this subtransaction undoes the write: keep it dirty) */
	save_for_subxact();
	if (head.dirty)
	{
		write_head();
		CommandCounterIncrement();
	}
	head.loaded = false;
	PG_RETURN_VOID();
}

/* The OID of apikeys_internal._audit_chain_append(), until pg_proc changes. */
static Oid	chain_fn = InvalidOid;
static bool chain_fn_valid = false;

static void
chain_fn_callback(Datum arg, int cacheid, uint32 hashvalue)
{
	chain_fn_valid = false;
}

/* Is funcid the audit chain's trigger function (for insert.c)? */
bool
apikeys_is_chain_trigger(Oid funcid)
{
	static bool registered = false;

	if (!registered)
	{
		CacheRegisterSyscacheCallback(PROCOID, chain_fn_callback, (Datum) 0);
		registered = true;
	}
	if (!chain_fn_valid)
	{
		chain_fn = apikeys_function_oid("_audit_chain_append", 0, NULL);
		chain_fn_valid = true;
	}
	return OidIsValid(funcid) && funcid == chain_fn;
}

/* Define apikeys.audit_queue_limit (at library load). */
void
apikeys_chain_init(void)
{
	DefineCustomIntVariable("apikeys.audit_queue_limit",
							"Audit rows a transaction keeps in memory until it commits.",
							"Past it, a transaction of a role that is not an apikeys admin fails; an admin's rows are written at once, and the audit chain's lock is then held until the transaction ends.",
							&queue_limit_kb,
							8192, 64, MAX_KILOBYTES,
							PGC_SUSET, GUC_UNIT_KB,
							NULL, NULL, NULL);
}
