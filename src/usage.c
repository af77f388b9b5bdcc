/*
 * usage.c
 *		Usage of keys: counters in shared memory, bumped by every
 *		verification of an existing key, and the functions that read them
 *		together with what the worker has flushed (apikeys.usage, the
 *		listing's last_used_at, apikeys.usage_stats()).
 *
 * Per key: uses (valid verifications), failures (a wrong secret for an
 * existing key id, a dropped role, revoked, disabled, expired, a refused
 * address or origin, a missing scope), rate_limited, quota_exceeded and
 * the time of the last valid use.  Only key ids that exist in the catalog
 * are counted, so a flood of made-up key ids creates no entries.  Entries
 * hold counts not yet flushed; the worker writes them to
 * apikeys_internal.usage (the totals, and the current hour's counts, which
 * it moves to usage_hourly once the hour is over) and subtracts what it
 * wrote.
 *
 * Counting takes the entry's partition lock shared and adds with atomics;
 * a new entry takes it exclusive.  A cached key remembers where its entry
 * is, so a verification usually skips the shared hash lookup
 * (apikeys_entry_find_hinted says when that address can be trusted).
 * When the table is full (90% of it for keys without limits), or the
 * key's role or database holds its share of it (shmem.c), a verification
 * is not counted but added to apikeys.usage_stats().untracked, never
 * silently dropped.
 *
 * Readers add flushed and pending counts.  The worker makes the sequence
 * counter odd while it commits a flush and subtracts what it wrote, so a
 * reader that saw the same even value before reading the table and after
 * reading shared memory has counted every request exactly once.
 *
 * Usage is counted in the database the worker serves (apikeys.database);
 * on a hot standby, the counts of that node since it started, on top of
 * what the primary flushed.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/tableam.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "funcapi.h"
#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"
#include "utils/tuplestore.h"

#include "apikeys.h"
#include "compat.h"
#include "shmem.h"

#define APIKEYS_USAGE_TABLE		"usage"

/* apikeys_internal.usage, in table order (1-based) */
enum
{
	Anum_usage_key_id = 1,
	Anum_usage_uses,
	Anum_usage_failures,
	Anum_usage_rate_limited,
	Anum_usage_quota_exceeded,
	Anum_usage_last_used_at,
	Anum_usage_updated_at,
	Anum_usage_hour,
	Anum_usage_hour_uses,
	Anum_usage_hour_failures,
	Anum_usage_hour_rate_limited,
	Anum_usage_hour_quota_exceeded,
	Natts_usage = Anum_usage_hour_quota_exceeded
};

/* Count one status in an entry; the caller holds its partition lock. */
void
apikeys_usage_count_locked(ApiKeysEntry *e, ApiKeyStatus status, TimestampTz now)
{
	pg_atomic_write_u64(&e->last_active, (uint64) now);
	if (!e->counted)
		return;
	switch (status)
	{
		case APIKEY_VALID:
			{
				uint64		prev = pg_atomic_read_u64(&e->last_used);

				pg_atomic_fetch_add_u64(&e->uses, 1);
				/* the latest wins, whichever backend writes last */
				while (prev < (uint64) now &&
					   !pg_atomic_compare_exchange_u64(&e->last_used, &prev, (uint64) now))
					;
				break;
			}
		case APIKEY_RATE_LIMITED:
			pg_atomic_fetch_add_u64(&e->rate_limited, 1);
			break;
		case APIKEY_QUOTA_EXCEEDED:
			pg_atomic_fetch_add_u64(&e->quota_exceeded, 1);
			break;
		default:
			pg_atomic_fetch_add_u64(&e->failures, 1);
			break;
	}
}

/*
 * Count one verification of an existing key without limits; hint is where
 * the key's entry was last found (NULL: not kept), owner the key's role,
 * whose share a new entry takes (InvalidOid for a wrong secret: then the
 * current user's, so that guessing at another role's keys uses up the
 * guesser's share, not theirs).  Nothing happens without preloading, or
 * outside the database the worker serves.
 */
void
apikeys_usage_count(const char *key_id, ApiKeySharedHint *hint, Oid owner,
					ApiKeyStatus status, TimestampTz now)
{
	ApiKeysEntryKey k;
	ApiKeysEntry *e;
	uint32		h;
	LWLock	   *lock;
	ApiKeysNoRoom why = APIKEYS_ROOM;

	if (!apikeys_shmem_ready() || !apikeys_database_served())
		return;
	h = apikeys_key_entry(&k, key_id, hint);
	lock = apikeys_partition_lock(h);

	LWLockAcquire(lock, LW_SHARED);
	e = apikeys_entry_find_hinted(&k, h, hint);
	if (e == NULL)
	{
		LWLockRelease(lock);
		LWLockAcquire(lock, LW_EXCLUSIVE);
		/* a wrong secret takes room from whoever presented it */
		if (!OidIsValid(owner))
			owner = GetUserId();
		e = apikeys_entry_enter(&k, h, false, owner, hint, &why);
		if (e != NULL)
			e->counted = true;
	}
	if (e != NULL)
		apikeys_usage_count_locked(e, status, now);
	else
		pg_atomic_fetch_add_u64(&apikeys_shmem->untracked, 1);
	LWLockRelease(lock);
	if (why != APIKEYS_ROOM)
		apikeys_share_warning(why, owner, false);
}

/*
 * Does an entry hold nothing that would be lost if it were dropped (counts
 * flushed, buckets full, quota written, no NOTIFY queued), and has it been
 * idle for a flush interval?  The caller holds its partition lock.
 */
bool
apikeys_entry_clean(ApiKeysEntry *e, TimestampTz now)
{
	return pg_atomic_read_u64(&e->uses) == 0 &&
		pg_atomic_read_u64(&e->failures) == 0 &&
		pg_atomic_read_u64(&e->rate_limited) == 0 &&
		pg_atomic_read_u64(&e->quota_exceeded) == 0 &&
		pg_atomic_read_u64(&e->last_used) == 0 &&
		(!e->has_quota || e->quota_changes == e->quota_flushed) &&
		e->notify_pending == 0 &&
		apikeys_windows_idle(e, now) &&
		now - (TimestampTz) pg_atomic_read_u64(&e->last_active) >=
		(int64) apikeys_flush_interval * 1000;
}

/* Raise unless usage can be read in this database. */
static void
require_usage(void)
{
	if (!apikeys_shmem_ready())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("api key usage is unavailable"),
				 errdetail("Usage is counted in shared memory, which apikeys has only when it is loaded at server start."),
				 errhint("Add apikeys to shared_preload_libraries in postgresql.conf and restart the server.")));
	if (!apikeys_database_served())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("api key usage is unavailable in this database"),
				 errdetail("Usage is counted only in database \"%s\", which the apikeys background worker serves.",
						   apikeys_database),
				 errhint("Set apikeys.database to this database's name in postgresql.conf and restart the server.")));
}

typedef struct UsageRow
{
	char		key_id[APIKEY_KEY_ID_LEN];
	int64		uses;
	int64		failures;
	int64		rate_limited;
	int64		quota_exceeded;
	TimestampTz last_used_at;	/* 0: never */
	int64		unflushed;
} UsageRow;

/* Add the flushed rows of apikeys_internal.usage to the hash table. */
static void
read_flushed(HTAB *rows)
{
	Oid			relid = apikeys_relation_oid(APIKEYS_USAGE_TABLE);
	Relation	rel;
	Snapshot	snapshot;
	TableScanDesc scan;
	HeapTuple	tup;

	if (!OidIsValid(relid))
		return;
	rel = relation_open(relid, AccessShareLock);
	if (RelationGetDescr(rel)->natts != Natts_usage)
		elog(ERROR, "apikeys_internal.usage has %d columns, expected %d",
			 RelationGetDescr(rel)->natts, Natts_usage);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snapshot, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		Datum		values[Natts_usage];
		bool		nulls[Natts_usage];
		text	   *k;
		UsageRow   *r;
		bool		found;

		heap_deform_tuple(tup, RelationGetDescr(rel), values, nulls);
		if (nulls[Anum_usage_key_id - 1])
			continue;
		k = DatumGetTextPP(values[Anum_usage_key_id - 1]);
		if (VARSIZE_ANY_EXHDR(k) != APIKEY_KEY_ID_LEN)
			continue;
		r = hash_search(rows, VARDATA_ANY(k), HASH_ENTER, &found);
		if (!found)
			memset((char *) r + APIKEY_KEY_ID_LEN, 0, sizeof(UsageRow) - APIKEY_KEY_ID_LEN);
#define GET(a) (nulls[(a) - 1] ? 0 : DatumGetInt64(values[(a) - 1]))
		r->uses += GET(Anum_usage_uses);
		r->failures += GET(Anum_usage_failures);
		r->rate_limited += GET(Anum_usage_rate_limited);
		r->quota_exceeded += GET(Anum_usage_quota_exceeded);
#undef GET
		if (!nulls[Anum_usage_last_used_at - 1])
			r->last_used_at = Max(r->last_used_at,
								  DatumGetTimestampTz(values[Anum_usage_last_used_at - 1]));
	}
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	relation_close(rel, AccessShareLock);
}

/* Add the pending counts of this database's entries to the hash table. */
static void
read_pending(HTAB *rows)
{
	HASH_SEQ_STATUS seq;
	ApiKeysEntry *e;

	apikeys_lock_all(LW_SHARED);
	hash_seq_init(&seq, apikeys_entries);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		UsageRow   *r;
		bool		found;
		int64		u,
					f,
					rl,
					q;
		TimestampTz lu;

		if (e->key.dboid != MyDatabaseId || e->key.kind != APIKEYS_ENTRY_KEY ||
			!e->counted)
			continue;
		u = (int64) pg_atomic_read_u64(&e->uses);
		f = (int64) pg_atomic_read_u64(&e->failures);
		rl = (int64) pg_atomic_read_u64(&e->rate_limited);
		q = (int64) pg_atomic_read_u64(&e->quota_exceeded);
		lu = (TimestampTz) pg_atomic_read_u64(&e->last_used);
		if (u == 0 && f == 0 && rl == 0 && q == 0 && lu == 0)
			continue;
		r = hash_search(rows, e->key.id, HASH_ENTER, &found);
		if (!found)
			memset((char *) r + APIKEY_KEY_ID_LEN, 0, sizeof(UsageRow) - APIKEY_KEY_ID_LEN);
		r->uses += u;
		r->failures += f;
		r->rate_limited += rl;
		r->quota_exceeded += q;
		r->unflushed += u + f + rl + q;
		r->last_used_at = Max(r->last_used_at, lu);
	}
	apikeys_unlock_all();
}

/*
 * SQL function: apikeys_internal._usage() returns setof record(key_id text, uses int8, failures int8, rate_limited int8, quota_exceeded int8, last_used_at timestamptz, unflushed int8)
 *
 * Flushed plus pending usage of every key of this database, each request
 * counted once even while the worker flushes.
 */
PG_FUNCTION_INFO_V1(apikeys_usage);
Datum
apikeys_usage(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASHCTL		ctl;
	HTAB	   *rows = NULL;
	HASH_SEQ_STATUS seq;
	UsageRow   *r;

	require_usage();
	InitMaterializedSRF(fcinfo, 0);

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = APIKEY_KEY_ID_LEN;
	ctl.entrysize = sizeof(UsageRow);
	ctl.hcxt = CurrentMemoryContext;
	for (int attempt = 0;; attempt++)
	{
		uint64		before;

		before = pg_atomic_read_u64(&apikeys_shmem->flush_seq);
		if (before % 2 == 1 && attempt < 5000)
		{
			/* the worker is committing a flush: it takes milliseconds */
			CHECK_FOR_INTERRUPTS();
			pg_usleep(1000L);
			continue;
		}
		pg_memory_barrier();
		rows = hash_create("apikeys usage", 256, &ctl,
						   HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		read_flushed(rows);
		read_pending(rows);
		pg_memory_barrier();
		if (pg_atomic_read_u64(&apikeys_shmem->flush_seq) == before || attempt >= 5000)
			break;
		hash_destroy(rows);
	}

	hash_seq_init(&seq, rows);
	while ((r = hash_seq_search(&seq)) != NULL)
	{
		Datum		values[7];
		bool		nulls[7] = {false, false, false, false, false, false, false};

		values[0] = PointerGetDatum(cstring_to_text_with_len(r->key_id, APIKEY_KEY_ID_LEN));
		values[1] = Int64GetDatum(r->uses);
		values[2] = Int64GetDatum(r->failures);
		values[3] = Int64GetDatum(r->rate_limited);
		values[4] = Int64GetDatum(r->quota_exceeded);
		values[5] = TimestampTzGetDatum(r->last_used_at);
		nulls[5] = r->last_used_at == 0;
		values[6] = Int64GetDatum(r->unflushed);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}

/* The flushed last use of a key, by index scan of apikeys_internal.usage. */
static TimestampTz
flushed_last_used(text *key_text)
{
	Oid			relid = apikeys_relation_oid(APIKEYS_USAGE_TABLE);
	Relation	rel;
	Oid			indexid;
	Snapshot	snapshot;
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tup;
	TimestampTz lu = 0;

	if (!OidIsValid(relid))
		return 0;
	rel = relation_open(relid, AccessShareLock);
	indexid = APIKEYS_PRIMARY_KEY_INDEX(rel);
	if (OidIsValid(indexid) && RelationGetDescr(rel)->natts == Natts_usage)
	{
		snapshot = RegisterSnapshot(GetLatestSnapshot());
		ScanKeyInit(&skey, Anum_usage_key_id, BTEqualStrategyNumber, F_TEXTEQ,
					PointerGetDatum(key_text));
		scan = systable_beginscan(rel, indexid, true, snapshot, 1, &skey);
		tup = systable_getnext(scan);
		if (HeapTupleIsValid(tup))
		{
			bool		isnull;
			Datum		d = heap_getattr(tup, Anum_usage_last_used_at,
										 RelationGetDescr(rel), &isnull);

			if (!isnull)
				lu = DatumGetTimestampTz(d);
		}
		systable_endscan(scan);
		UnregisterSnapshot(snapshot);
	}
	relation_close(rel, AccessShareLock);
	return lu;
}

/*
 * SQL function: apikeys_internal._last_used(key_id text) returns timestamptz
 *
 * The last valid use of a key: counted in shared memory and not yet
 * flushed, or flushed; null if never.
 */
PG_FUNCTION_INFO_V1(apikeys_last_used);
Datum
apikeys_last_used(PG_FUNCTION_ARGS)
{
	text	   *k;
	ApiKeysEntryKey kk;
	ApiKeysEntry *e;
	uint32		h;
	LWLock	   *lock;
	TimestampTz lu = 0;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	k = PG_GETARG_TEXT_PP(0);
	if (VARSIZE_ANY_EXHDR(k) != APIKEY_KEY_ID_LEN)
		PG_RETURN_NULL();
	if (apikeys_shmem_ready())
	{
		apikeys_entry_key(&kk, MyDatabaseId, APIKEYS_ENTRY_KEY, VARDATA_ANY(k));
		h = apikeys_entry_hash(&kk);
		lock = apikeys_partition_lock(h);
		LWLockAcquire(lock, LW_SHARED);
		e = apikeys_entry_find(&kk, h);
		if (e != NULL)
			lu = (TimestampTz) pg_atomic_read_u64(&e->last_used);
		LWLockRelease(lock);
	}
	lu = Max(lu, flushed_last_used(k));
	if (lu == 0)
		PG_RETURN_NULL();
	PG_RETURN_TIMESTAMPTZ(lu);
}

/*
 * SQL function: apikeys.usage_stats() returns record
 *
 * The state of the shared table and of the worker, for monitoring.
 */
PG_FUNCTION_INFO_V1(apikeys_usage_stats);
Datum
apikeys_usage_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[10];
	bool		nulls[10];
	TimestampTz last_flush;
	uint64		flushes,
				failures;
	Oid			dboid;
	Latch	   *latch;
	char	   *dbname;

	apikeys_require_shmem("usage statistics");
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);

	SpinLockAcquire(&apikeys_shmem->mutex);
	last_flush = apikeys_shmem->last_flush;
	flushes = apikeys_shmem->flushes;
	failures = apikeys_shmem->flush_failures;
	dboid = apikeys_shmem->worker_dboid;
	latch = apikeys_shmem->worker_latch;
	SpinLockRelease(&apikeys_shmem->mutex);

	memset(nulls, false, sizeof(nulls));
	values[0] = Int32GetDatum((int32) pg_atomic_read_u32(&apikeys_shmem->nentries));
	values[1] = Int32GetDatum(apikeys_shmem->max_entries);
	values[2] = Int64GetDatum((int64) pg_atomic_read_u64(&apikeys_shmem->untracked));
	values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&apikeys_shmem->refused));
	values[4] = Int64GetDatum((int64) pg_atomic_read_u64(&apikeys_shmem->evicted));
	values[5] = Int64GetDatum((int64) flushes);
	values[6] = Int64GetDatum((int64) failures);
	values[7] = TimestampTzGetDatum(last_flush);
	nulls[7] = last_flush == 0;
	dbname = OidIsValid(dboid) ? get_database_name(dboid) : NULL;
	values[8] = dbname != NULL ? CStringGetTextDatum(dbname) : CStringGetTextDatum(apikeys_database);
	values[9] = BoolGetDatum(latch != NULL);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * SQL function: apikeys.usage_shares() returns setof record(kind text, name text, tracked int4, share int4, refused int8, untracked int8, borrowed int4)
 *
 * Every role and database holding entries of the shared table: how many,
 * its share (for keys with limits), what its full share refused or left
 * uncounted since it last held none, and how many of its entries were
 * borrowed past a share.
 */
PG_FUNCTION_INFO_V1(apikeys_usage_shares);
Datum
apikeys_usage_shares(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	HASH_SEQ_STATUS seq;
	ApiKeysAccount *a;
	ApiKeysAccount *copy;
	int			n = 0;
	long		cap;

	apikeys_require_shmem("usage statistics");
	InitMaterializedSRF(fcinfo, 0);

	/* copy them out first: names are looked up with no lock held */
	LWLockAcquire(&apikeys_shmem->locks[APIKEYS_PARTITIONS].lock, LW_SHARED);
	cap = Max(hash_get_num_entries(apikeys_accounts), 1);
	copy = palloc(cap * sizeof(ApiKeysAccount));
	hash_seq_init(&seq, apikeys_accounts);
	while ((a = hash_seq_search(&seq)) != NULL)
	{
		if (n < cap)
			copy[n++] = *a;
	}
	LWLockRelease(&apikeys_shmem->locks[APIKEYS_PARTITIONS].lock);

	for (int i = 0; i < n; i++)
	{
		Datum		values[7];
		bool		nulls[7] = {false, false, false, false, false, false, false};
		bool		role = copy[i].key.kind == APIKEYS_ACCOUNT_ROLE;
		char	   *name = role ? GetUserNameFromId(copy[i].key.oid, true) :
			get_database_name(copy[i].key.oid);

		values[0] = CStringGetTextDatum(role ? "role" : "database");
		if (name != NULL)
			values[1] = CStringGetTextDatum(name);
		else
			values[1] = CStringGetTextDatum(psprintf("%u", copy[i].key.oid));
		values[2] = Int32GetDatum(copy[i].held);
		values[3] = Int32GetDatum(apikeys_share_cap(copy[i].key.kind, true));
		values[4] = Int64GetDatum(copy[i].refused);
		values[5] = Int64GetDatum(copy[i].untracked);
		values[6] = Int32GetDatum(copy[i].lent);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
