/*
 * worker.c
 *		The apikeys background worker: one process, started with the server
 *		when apikeys is preloaded, connected to the database named by
 *		apikeys.database (default postgres), as pg_cron does.
 *
 * It is a loop over a list of duties, woken by its timer or by its latch
 * (backends set it when a quota crosses its warning threshold or the
 * shared table is full):
 *
 *   flush     every apikeys.usage_flush_interval and at every hour
 *             boundary: write pending usage into apikeys_internal.usage
 *             (totals, and the current hour's counts in the same row,
 *             moved to usage_hourly once the hour is over), quota state
 *             into quota_state, record the quota events (apikeys.quota_events)
 *             and NOTIFY apikeys of them,
 *             then subtract what was written from shared memory;
 *   maintain  once an hour: drop hourly buckets older than
 *             apikeys.usage_retention, and usage and quota rows of deleted
 *             keys;
 *   evict     when the shared table, or the share of a role or database,
 *             is three quarters full: drop entries that hold nothing
 *             unwritten (of the crowded shares only, unless the table is).
 *
 * Right after a flush, it also frees the entries of keys deleted or
 * revoked since (shmem.c marks them gone at commit), whatever their
 * buckets hold.
 *
 * Each flush and each maintenance also does the request log's share
 * (request_log.c): write the queued requests, in a transaction of their
 * own, and drop rows older than apikeys.audit_request_retention.
 *
 * The worker writes as the bootstrap superuser, in transactions of its own,
 * and never updates the key catalog: a flush must neither fire the audit
 * trigger nor invalidate key caches.  It skips, silently, a database
 * where the extension is not installed or not yet updated.  On a hot
 * standby it runs but writes nothing (only "evict", which there drops the
 * counts of keys idle for a minute); promoted, it flushes what the node
 * counted.  After an error it logs, rolls back and goes on; if it dies, the
 * postmaster starts it again after 5 seconds.
 *
 * What a crash can lose: whatever was counted after the last committed
 * flush began (its transaction start is usage.updated_at): about one flush
 * interval of usage and quota spending (the quota is given back), never
 * anything twice.  A clean or immediate shutdown loses nothing (shmem.c
 * writes the table to a file, unless the worker was stopped between a
 * flush's commit and its subtraction).  test/t/010_crash.pl checks it.
 */
#include "postgres.h"

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "lib/stringinfo.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "postmaster/bgworker.h"
#include "postmaster/interrupt.h"
#include "storage/ipc.h"
#include "storage/latch.h"
#include "storage/proc.h"
#include "tcop/tcopprot.h"
#include "utils/array.h"
#include "catalog/namespace.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "apikeys.h"
#include "compat.h"
#include "shmem.h"

int			apikeys_flush_interval = 5000;
int			apikeys_usage_retention = 90 * 24 * 60;
char	   *apikeys_database = NULL;

PGDLLEXPORT void apikeys_worker_main(Datum arg);

/* What a flush copies out of shared memory lives here, past its commit. */
static MemoryContext flush_cxt = NULL;

/* One entry's share of a flush, copied out of shared memory. */
typedef struct FlushItem
{
	ApiKeysEntryKey key;
	int64		uses;
	int64		failures;
	int64		rate_limited;
	int64		quota_exceeded;
	TimestampTz last_used;
	bool		quota;			/* quota state to write */
	TimestampTz quota_set_at;
	int64		remaining;
	TimestampTz refilled_at;
	uint64		quota_changes;
	uint8		notify;			/* APIKEYS_NOTIFY_* to send */
} FlushItem;

/* Start of the hour that contains t. */
static TimestampTz
hour_of(TimestampTz t)
{
	return t - ((t % USECS_PER_HOUR) + USECS_PER_HOUR) % USECS_PER_HOUR;
}

/* Copy out what this database's entries hold unwritten. */
static FlushItem *
collect(int *nitems)
{
	HASH_SEQ_STATUS seq;
	ApiKeysEntry *e;
	FlushItem  *items;
	int			n = 0;
	int			cap = 64;

	items = MemoryContextAlloc(flush_cxt, cap * sizeof(FlushItem));
	apikeys_lock_all(LW_SHARED);
	hash_seq_init(&seq, apikeys_entries);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		FlushItem	it;

		if (e->key.dboid != MyDatabaseId || e->key.kind != APIKEYS_ENTRY_KEY)
			continue;
		memset(&it, 0, sizeof(it));
		it.key = e->key;
		it.uses = (int64) pg_atomic_read_u64(&e->uses);
		it.failures = (int64) pg_atomic_read_u64(&e->failures);
		it.rate_limited = (int64) pg_atomic_read_u64(&e->rate_limited);
		it.quota_exceeded = (int64) pg_atomic_read_u64(&e->quota_exceeded);
		it.last_used = (TimestampTz) pg_atomic_read_u64(&e->last_used);
		if (e->has_quota && e->quota_changes != e->quota_flushed)
		{
			it.quota = true;
			it.quota_set_at = e->quota_set_at;
			it.remaining = e->remaining;
			it.refilled_at = e->refilled_at;
			it.quota_changes = e->quota_changes;
		}
		it.notify = e->notify_pending;
		if (it.uses == 0 && it.failures == 0 && it.rate_limited == 0 &&
			it.quota_exceeded == 0 && it.last_used == 0 && !it.quota &&
			it.notify == 0)
			continue;
		if (n == cap)
		{
			/* (no allocation failure can leave the locks held: see caller) */
			cap *= 2;
			items = repalloc(items, cap * sizeof(FlushItem));
		}
		items[n++] = it;
	}
	apikeys_unlock_all();
	*nitems = n;
	return items;
}

/* After the flush committed: take what was written out of shared memory. */
static void
subtract(FlushItem *items, int n)
{
	for (int i = 0; i < n; i++)
	{
		FlushItem  *it = &items[i];
		uint32		h = apikeys_entry_hash(&it->key);
		LWLock	   *lock = apikeys_partition_lock(h);
		ApiKeysEntry *e;

		LWLockAcquire(lock, LW_EXCLUSIVE);
		e = apikeys_entry_find(&it->key, h);
		if (e != NULL)
		{
			uint64		lu = (uint64) it->last_used;

			pg_atomic_fetch_sub_u64(&e->uses, it->uses);
			pg_atomic_fetch_sub_u64(&e->failures, it->failures);
			pg_atomic_fetch_sub_u64(&e->rate_limited, it->rate_limited);
			pg_atomic_fetch_sub_u64(&e->quota_exceeded, it->quota_exceeded);
			/* unless a later use came in meanwhile */
			if (lu != 0)
				pg_atomic_compare_exchange_u64(&e->last_used, &lu, 0);
			if (it->quota && e->quota_set_at == it->quota_set_at)
				e->quota_flushed = it->quota_changes;
			e->notify_pending &= ~it->notify;
			/* a deleted or revoked key's entry, now written: free it */
			if (e->gone && !apikeys_entry_unwritten(e))
				apikeys_entry_remove(e);
		}
		LWLockRelease(lock);
	}
}

/*
 * The extension is not installed here (dropped, or not yet updated): what
 * this database's entries hold can never be written, so let it go, and let
 * the entries be freed.
 */
static void
discard(void)
{
	HASH_SEQ_STATUS seq;
	ApiKeysEntry *e;

	apikeys_lock_all(LW_EXCLUSIVE);
	hash_seq_init(&seq, apikeys_entries);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		if (e->key.dboid != MyDatabaseId)
			continue;
		pg_atomic_write_u64(&e->uses, 0);
		pg_atomic_write_u64(&e->failures, 0);
		pg_atomic_write_u64(&e->rate_limited, 0);
		pg_atomic_write_u64(&e->quota_exceeded, 0);
		pg_atomic_write_u64(&e->last_used, 0);
		e->quota_flushed = e->quota_changes;
		e->notify_pending = 0;
	}
	apikeys_unlock_all();
}

/*
 * Is the extension installed here, at a version with the usage tables?
 * Each table counts only as a member of the extension: in a database not
 * yet updated, a role could have created a schema apikeys_internal with
 * tables of these names (and triggers on them), and the worker writes as a
 * superuser.
 */
static bool
extension_ready(void)
{
	static const char *const tables[] = {"key_catalog", "usage", "usage_hourly", "quota_state"};

	for (int i = 0; i < (int) lengthof(tables); i++)
	{
		Oid			relid = apikeys_relation_oid(tables[i]);

		if (!OidIsValid(relid) ||
			get_rel_namespace(relid) != get_namespace_oid(APIKEYS_INTERNAL_SCHEMA, true))
			return false;
	}
	return true;
}

/* Run a statement with arguments; raise on failure. */
static void
run(const char *sql, int nargs, Oid *types, Datum *values)
{
	int			ret = SPI_execute_with_args(sql, nargs, types, values, NULL, false, 0);

	if (ret < 0)
		elog(ERROR, "apikeys worker: SPI_execute_with_args failed: %s",
			 SPI_result_code_string(ret));
}

/* A text[] of the items' key ids, and int8[] / timestamptz[] columns. */
static Datum
text_array(FlushItem *items, int n)
{
	Datum	   *d = palloc(Max(n, 1) * sizeof(Datum));

	for (int i = 0; i < n; i++)
		d[i] = PointerGetDatum(cstring_to_text_with_len(items[i].key.id, APIKEY_KEY_ID_LEN));
	return PointerGetDatum(construct_array(d, n, TEXTOID, -1, false, TYPALIGN_INT));
}

static Datum
int8_array(int64 *v, int n)
{
	Datum	   *d = palloc(Max(n, 1) * sizeof(Datum));

	for (int i = 0; i < n; i++)
		d[i] = Int64GetDatum(v[i]);
	return PointerGetDatum(construct_array(d, n, INT8OID, 8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

static Datum
ts_array(TimestampTz *v, bool *isnull, int n)
{
	Datum	   *d = palloc(Max(n, 1) * sizeof(Datum));
	int			dims[1] = {n};
	int			lbs[1] = {1};

	for (int i = 0; i < n; i++)
		d[i] = TimestampTzGetDatum(v[i]);
	return PointerGetDatum(construct_md_array(d, isnull, 1, dims, lbs, TIMESTAMPTZOID,
											  8, FLOAT8PASSBYVAL, TYPALIGN_DOUBLE));
}

/*
 * The end of a statement that adds rows to usage_hourly: the same key and
 * hour twice (a restore, a clock set back) are summed.
 */
#define HOURLY_ADD \
	" ON CONFLICT (key_id, hour) DO UPDATE" \
	"    SET uses = h.uses OPERATOR(pg_catalog.+) excluded.uses," \
	"        failures = h.failures OPERATOR(pg_catalog.+) excluded.failures," \
	"        rate_limited = h.rate_limited OPERATOR(pg_catalog.+) excluded.rate_limited," \
	"        quota_exceeded = h.quota_exceeded OPERATOR(pg_catalog.+) excluded.quota_exceeded"

/*
 * Move the hour_ counts of every usage row whose hour is not the given one
 * (an hour now over) into usage_hourly, and clear them (inside the
 * caller's transaction: the worker is the only writer of both tables).
 */
static void
move_past_hours(TimestampTz hour)
{
	Oid			types[1] = {TIMESTAMPTZOID};
	Datum		values[1] = {TimestampTzGetDatum(hour)};

	run("INSERT INTO apikeys_internal.usage_hourly AS h"
		"       (key_id, hour, uses, failures, rate_limited, quota_exceeded)"
		" SELECT u.key_id, u.hour, u.hour_uses, u.hour_failures,"
		"        u.hour_rate_limited, u.hour_quota_exceeded"
		"   FROM apikeys_internal.usage u"
		"  WHERE u.hour OPERATOR(pg_catalog.<>) $1"
		"    AND (u.hour_uses OPERATOR(pg_catalog.+) u.hour_failures"
		"         OPERATOR(pg_catalog.+) u.hour_rate_limited"
		"         OPERATOR(pg_catalog.+) u.hour_quota_exceeded) OPERATOR(pg_catalog.>) 0"
		HOURLY_ADD, 1, types, values);
	run("UPDATE apikeys_internal.usage AS u"
		"   SET hour = NULL, hour_uses = 0, hour_failures = 0,"
		"       hour_rate_limited = 0, hour_quota_exceeded = 0"
		" WHERE u.hour OPERATOR(pg_catalog.<>) $1", 1, types, values);
}

/* Write the items (inside the caller's transaction). */
static void
write_items(FlushItem *items, int n, TimestampTz hour)
{
	int64	   *uses = palloc(n * sizeof(int64));
	int64	   *failures = palloc(n * sizeof(int64));
	int64	   *rate_limited = palloc(n * sizeof(int64));
	int64	   *quota_exceeded = palloc(n * sizeof(int64));
	TimestampTz *last_used = palloc(n * sizeof(TimestampTz));
	bool	   *lu_null = palloc(n * sizeof(bool));
	FlushItem  *q = palloc(n * sizeof(FlushItem));
	int			nq = 0;
	Datum	   *notes = palloc(2 * n * sizeof(Datum) + sizeof(Datum));
	Datum	   *note_ids = palloc(2 * n * sizeof(Datum) + sizeof(Datum));
	int64	   *note_rem = palloc(2 * n * sizeof(int64) + sizeof(int64));
	int			nnotes = 0;
	Oid			types[7];
	Datum		values[7];

	for (int i = 0; i < n; i++)
	{
		uses[i] = items[i].uses;
		failures[i] = items[i].failures;
		rate_limited[i] = items[i].rate_limited;
		quota_exceeded[i] = items[i].quota_exceeded;
		last_used[i] = items[i].last_used;
		lu_null[i] = items[i].last_used == 0;
		if (items[i].quota)
			q[nq++] = items[i];
	}

	types[0] = TEXTARRAYOID;
	values[0] = text_array(items, n);
	types[1] = types[2] = types[3] = types[4] = INT8ARRAYOID;
	values[1] = int8_array(uses, n);
	values[2] = int8_array(failures, n);
	values[3] = int8_array(rate_limited, n);
	values[4] = int8_array(quota_exceeded, n);
	types[5] = TIMESTAMPTZARRAYOID;
	values[5] = ts_array(last_used, lu_null, n);
	types[6] = TIMESTAMPTZOID;
	values[6] = TimestampTzGetDatum(hour);

	/*
	 * An UPDATE of the rows there are, then an INSERT of the others (the
	 * worker is the table's only writer): about twice as fast as INSERT
	 * ... ON CONFLICT DO UPDATE, which locks each row first and logs the
	 * lock; the fillfactor leaves room for HOT updates.  The counts of the
	 * hour go to the same row (the hour_ columns), so a flush writes one
	 * row per key.  A row still holding another hour's counts (which
	 * move_past_hours() should have moved: a restore since, say) is left
	 * alone, so its key's INSERT fails on the primary key and the flush is
	 * done again, after a move, rather than reset those counts.
	 */
	run("WITH t AS (SELECT * FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
		"                  pg_catalog.unnest($3), pg_catalog.unnest($4),"
		"                  pg_catalog.unnest($5), pg_catalog.unnest($6)) AS t(k, a, b, c, d, l)),"
		"     done AS (UPDATE apikeys_internal.usage AS u"
		"                 SET uses = u.uses OPERATOR(pg_catalog.+) t.a,"
		"                     failures = u.failures OPERATOR(pg_catalog.+) t.b,"
		"                     rate_limited = u.rate_limited OPERATOR(pg_catalog.+) t.c,"
		"                     quota_exceeded = u.quota_exceeded OPERATOR(pg_catalog.+) t.d,"
		"                     last_used_at = GREATEST(u.last_used_at, t.l),"
		"                     updated_at = pg_catalog.now(),"
		"                     hour = $7,"
		"                     hour_uses = CASE WHEN u.hour OPERATOR(pg_catalog.=) $7"
		"                                 THEN u.hour_uses ELSE 0 END OPERATOR(pg_catalog.+) t.a,"
		"                     hour_failures = CASE WHEN u.hour OPERATOR(pg_catalog.=) $7"
		"                                 THEN u.hour_failures ELSE 0 END OPERATOR(pg_catalog.+) t.b,"
		"                     hour_rate_limited = CASE WHEN u.hour OPERATOR(pg_catalog.=) $7"
		"                                 THEN u.hour_rate_limited ELSE 0 END OPERATOR(pg_catalog.+) t.c,"
		"                     hour_quota_exceeded = CASE WHEN u.hour OPERATOR(pg_catalog.=) $7"
		"                                 THEN u.hour_quota_exceeded ELSE 0 END OPERATOR(pg_catalog.+) t.d"
		"                FROM t WHERE u.key_id OPERATOR(pg_catalog.=) t.k"
		"                 AND (u.hour IS NULL OR u.hour OPERATOR(pg_catalog.=) $7)"
		"              RETURNING u.key_id)"
		" INSERT INTO apikeys_internal.usage"
		"        (key_id, uses, failures, rate_limited, quota_exceeded, last_used_at, updated_at,"
		"         hour, hour_uses, hour_failures, hour_rate_limited, hour_quota_exceeded)"
		" SELECT t.k, t.a, t.b, t.c, t.d, t.l, pg_catalog.now(), $7, t.a, t.b, t.c, t.d FROM t"
		"  WHERE NOT EXISTS (SELECT FROM done WHERE done.key_id OPERATOR(pg_catalog.=) t.k)",
		7, types, values);

	if (nq > 0)
	{
		int64	   *rem = palloc(nq * sizeof(int64));
		TimestampTz *set_at = palloc(nq * sizeof(TimestampTz));
		TimestampTz *refilled = palloc(nq * sizeof(TimestampTz));
		bool	   *nonull = palloc0(nq * sizeof(bool));
		bool	   *refill_null = palloc0(nq * sizeof(bool));

		for (int i = 0; i < nq; i++)
		{
			rem[i] = q[i].remaining;
			set_at[i] = q[i].quota_set_at;
			refilled[i] = q[i].refilled_at;
			refill_null[i] = TIMESTAMP_NOT_FINITE(q[i].refilled_at);
		}
		types[0] = TEXTARRAYOID;
		values[0] = text_array(q, nq);
		types[1] = TIMESTAMPTZARRAYOID;
		values[1] = ts_array(set_at, nonull, nq);
		types[2] = INT8ARRAYOID;
		values[2] = int8_array(rem, nq);
		types[3] = TIMESTAMPTZARRAYOID;
		values[3] = ts_array(refilled, refill_null, nq);
		run("INSERT INTO apikeys_internal.quota_state AS q"
			"       (key_id, quota_set_at, remaining, refilled_at, updated_at)"
			" SELECT t.k, t.s, t.r, t.f, pg_catalog.now()"
			"   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
		"                  pg_catalog.unnest($4)) AS t(k, s, r, f)"
			" ON CONFLICT (key_id) DO UPDATE"
			"    SET quota_set_at = excluded.quota_set_at, remaining = excluded.remaining,"
			"        refilled_at = excluded.refilled_at, updated_at = excluded.updated_at"
			"  WHERE q.quota_set_at OPERATOR(pg_catalog.<=) excluded.quota_set_at",
			4, types, values);
	}

	/*
	 * The events go to apikeys.quota_events, read through its row-level
	 * security; NOTIFY apikeys names only the row (note.c): any role can
	 * LISTEN, and the key ids are not everyone's to know.
	 */
	for (int i = 0; i < n; i++)
	{
		for (int bit = 0; bit < 2; bit++)
		{
			uint8		flag = bit == 0 ? APIKEYS_NOTIFY_LOW : APIKEYS_NOTIFY_EMPTY;

			if (!(items[i].notify & flag))
				continue;
			notes[nnotes] = CStringGetTextDatum(flag == APIKEYS_NOTIFY_LOW ?
												"quota_low" : "quota_exhausted");
			note_ids[nnotes] = PointerGetDatum(cstring_to_text_with_len(items[i].key.id,
																		 APIKEY_KEY_ID_LEN));
			note_rem[nnotes] = items[i].quota ? items[i].remaining : (int64) -1;
			nnotes++;
		}
	}
	if (nnotes > 0)
	{
		types[0] = types[1] = TEXTARRAYOID;
		values[0] = PointerGetDatum(construct_array(notes, nnotes, TEXTOID, -1, false, TYPALIGN_INT));
		values[1] = PointerGetDatum(construct_array(note_ids, nnotes, TEXTOID, -1, false, TYPALIGN_INT));
		types[2] = INT8ARRAYOID;
		values[2] = int8_array(note_rem, nnotes);
		run("WITH old AS (DELETE FROM apikeys_internal.quota_events o"
			"              WHERE o.at OPERATOR(pg_catalog.<)"
			"                    (pg_catalog.now() OPERATOR(pg_catalog.-) '7 days'::pg_catalog.interval)),"
			"     e AS (INSERT INTO apikeys_internal.quota_events (event, key_id, remaining)"
			"           SELECT t.e, t.k, NULLIF(t.r, -1)"
			"             FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2),"
			"                             pg_catalog.unnest($3)) AS t(e, k, r)"
			"           RETURNING seq)"
			" SELECT pg_catalog.pg_notify('" APIKEYS_EVENT_CHANNEL "',"
			"        '{\"event\": \"quota\", \"seq\": ' OPERATOR(pg_catalog.||) e.seq::pg_catalog.text"
			"        OPERATOR(pg_catalog.||) '}')"
			"   FROM e ORDER BY e.seq",
			3, types, values);
	}
}

/*
 * Duty "flush".  Counts taken at this cut are written to the hourly bucket
 * of the previous cut: the worker cuts at every hour boundary, so every
 * interval lies within one hour (give or take its scheduling).  The first
 * flush of each hour (and the first of the process) first moves the
 * counts of the hours before out of the usage rows.
 */
static void
duty_flush(TimestampTz *prev_cut)
{
	static TimestampTz moved_for = DT_NOBEGIN;	/* committed for this hour */
	volatile TimestampTz hour = DT_NOBEGIN;
	MemoryContext cxt = CurrentMemoryContext;
	FlushItem  *volatile items = NULL;
	volatile int n = 0;
	TimestampTz cut;
	volatile bool committed = false;
	int			count = 0;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "apikeys: flushing usage");
		if (extension_ready())
		{
			cut = GetCurrentTimestamp();
			items = collect(&count);
			n = count;
			hour = hour_of(*prev_cut);
			if (hour != moved_for)
				move_past_hours(hour);
			if (n > 0)
				write_items(items, n, hour);
			*prev_cut = cut;
		}
		else
		{
			discard();
			*prev_cut = GetCurrentTimestamp();
		}
		SPI_finish();
		PopActiveSnapshot();
		/* readers of usage wait while the flush commits and is subtracted */
		if (n > 0)
			pg_atomic_fetch_add_u64(&apikeys_shmem->flush_seq, 1);
		CommitTransactionCommand();
		committed = true;
		if (hour != DT_NOBEGIN)
			moved_for = hour;
		if (n > 0)
		{
			subtract(items, n);
			pg_atomic_fetch_add_u64(&apikeys_shmem->flush_seq, 1);
		}
		SpinLockAcquire(&apikeys_shmem->mutex);
		apikeys_shmem->last_flush = GetCurrentTimestamp();
		apikeys_shmem->flushes++;
		SpinLockRelease(&apikeys_shmem->mutex);
	}
	PG_CATCH();
	{
		/* nothing was subtracted: it is all written again next time */
		moved_for = DT_NOBEGIN; /* and after a move of past hours */
		if (pg_atomic_read_u64(&apikeys_shmem->flush_seq) % 2 == 1)
			pg_atomic_fetch_add_u64(&apikeys_shmem->flush_seq, 1);
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		if (!committed)
			AbortCurrentTransaction();
		SpinLockAcquire(&apikeys_shmem->mutex);
		apikeys_shmem->flush_failures++;
		SpinLockRelease(&apikeys_shmem->mutex);
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextReset(flush_cxt);
}

/* Duty "maintain": retention of hourly buckets, rows of deleted keys. */
static void
duty_maintain(void)
{
	MemoryContext cxt = CurrentMemoryContext;

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "apikeys: usage retention");
		if (extension_ready())
		{
			if (apikeys_usage_retention > 0)
			{
				Oid			types[1] = {INT4OID};
				Datum		values[1] = {Int32GetDatum(apikeys_usage_retention)};

				run("DELETE FROM apikeys_internal.usage_hourly h"
					" WHERE h.hour OPERATOR(pg_catalog.<)"
					"       (pg_catalog.now() OPERATOR(pg_catalog.-) pg_catalog.make_interval(mins => $1))",
					1, types, values);
			}
			/* deleted keys: the counts of their hour go to usage_hourly */
			run("WITH gone AS (DELETE FROM apikeys_internal.usage u WHERE NOT EXISTS"
				"                (SELECT 1 FROM apikeys_internal.key_catalog k"
				"                  WHERE k.key_id OPERATOR(pg_catalog.=) u.key_id)"
				"              RETURNING u.*)"
				" INSERT INTO apikeys_internal.usage_hourly AS h"
				"        (key_id, hour, uses, failures, rate_limited, quota_exceeded)"
				" SELECT g.key_id, g.hour, g.hour_uses, g.hour_failures,"
				"        g.hour_rate_limited, g.hour_quota_exceeded"
				"   FROM gone g"
				"  WHERE g.hour IS NOT NULL"
				"    AND (g.hour_uses OPERATOR(pg_catalog.+) g.hour_failures"
				"         OPERATOR(pg_catalog.+) g.hour_rate_limited"
				"         OPERATOR(pg_catalog.+) g.hour_quota_exceeded) OPERATOR(pg_catalog.>) 0"
				HOURLY_ADD, 0, NULL, NULL);
			run("DELETE FROM apikeys_internal.quota_state q WHERE NOT EXISTS"
				" (SELECT 1 FROM apikeys_internal.key_catalog k"
				"   WHERE k.key_id OPERATOR(pg_catalog.=) q.key_id)", 0, NULL, NULL);
		}
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);
}

/*
 * The accounts (shmem.c) holding three quarters of their share or more,
 * in a local hash table; NULL if none.
 */
static HTAB *
crowded_accounts(void)
{
	HASH_SEQ_STATUS seq;
	ApiKeysAccount *a;
	HTAB	   *crowded = NULL;

	LWLockAcquire(&apikeys_shmem->locks[APIKEYS_PARTITIONS].lock, LW_SHARED);
	hash_seq_init(&seq, apikeys_accounts);
	while ((a = hash_seq_search(&seq)) != NULL)
	{
		if (a->held < apikeys_share_cap(a->key.kind, true) / 4 * 3)
			continue;
		if (crowded == NULL)
		{
			HASHCTL		ctl;

			memset(&ctl, 0, sizeof(ctl));
			ctl.keysize = sizeof(ApiKeysAccountKey);
			ctl.entrysize = sizeof(ApiKeysAccountKey);
			ctl.hcxt = CurrentMemoryContext;
			crowded = hash_create("apikeys crowded accounts", 16, &ctl,
								  HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
		}
		hash_search(crowded, &a->key, HASH_ENTER, NULL);
	}
	LWLockRelease(&apikeys_shmem->locks[APIKEYS_PARTITIONS].lock);
	return crowded;
}

/* Is the entry charged to a crowded account? */
static bool
in_crowded(HTAB *crowded, const ApiKeysEntry *e)
{
	ApiKeysAccountKey k;

	memset(&k, 0, sizeof(k));
	k.kind = APIKEYS_ACCOUNT_DATABASE;
	k.oid = e->key.dboid;
	if (hash_search(crowded, &k, HASH_FIND, NULL) != NULL)
		return true;
	if (!OidIsValid(e->owner))
		return false;
	k.kind = APIKEYS_ACCOUNT_ROLE;
	k.oid = e->owner;
	return hash_search(crowded, &k, HASH_FIND, NULL) != NULL;
}

/*
 * Duty "evict": once the table is three quarters full, drop entries that
 * hold nothing unwritten; once a role's or database's share is, drop such
 * entries of that share only (the others keep theirs, and their sessions
 * the addresses they remember).  On a standby nothing is ever written, so
 * the counts of keys idle for a minute, with full buckets, are dropped
 * there.
 */
static void
duty_evict(bool standby)
{
	HASH_SEQ_STATUS seq;
	ApiKeysEntry *e;
	TimestampTz now = GetCurrentTimestamp();
	uint32		n = pg_atomic_read_u32(&apikeys_shmem->nentries);
	uint64		evicted = 0;
	bool		table_crowded;
	HTAB	   *crowded;

	/* (backends found it full: they will say so again if it still is) */
	pg_atomic_write_u32(&apikeys_shmem->full, 0);
	table_crowded = n > (uint32) apikeys_shmem->max_entries / 4 * 3;
	crowded = table_crowded ? NULL : crowded_accounts();
	if (!table_crowded && crowded == NULL)
		return;
	apikeys_lock_all(LW_EXCLUSIVE);
	hash_seq_init(&seq, apikeys_entries);
	while ((e = hash_seq_search(&seq)) != NULL)
	{
		bool		drop;

		if (!table_crowded && !in_crowded(crowded, e))
			continue;
		if (standby)
			drop = apikeys_windows_idle(e, now) && e->notify_pending == 0 &&
				now - (TimestampTz) pg_atomic_read_u64(&e->last_active) >= USECS_PER_MINUTE;
		else
			drop = apikeys_entry_clean(e, now);
		if (drop)
		{
			apikeys_entry_remove(e);
			evicted++;
		}
	}
	apikeys_unlock_all();
	if (crowded != NULL)
		hash_destroy(crowded);
	if (evicted > 0)
		pg_atomic_fetch_add_u64(&apikeys_shmem->evicted, evicted);
}

/* Forget the worker's latch when it exits. */
static void
worker_exit(int code, Datum arg)
{
	SpinLockAcquire(&apikeys_shmem->mutex);
	apikeys_shmem->worker_latch = NULL;
	SpinLockRelease(&apikeys_shmem->mutex);
}

/* Entry point of the background worker. */
void
apikeys_worker_main(Datum arg)
{
	TimestampTz prev_cut;
	TimestampTz last_flush = 0;
	TimestampTz last_maintain = 0;
	TimestampTz last_evict = 0;
	bool		woken = false;
	bool		deferred = false;

	pqsignal(SIGHUP, SignalHandlerForConfigReload);
	pqsignal(SIGTERM, die);
	BackgroundWorkerUnblockSignals();

	if (!apikeys_shmem_ready())
		proc_exit(0);			/* can't happen: registered only when preloaded */

	BackgroundWorkerInitializeConnection(apikeys_database, NULL, 0);
	pgstat_report_appname("apikeys worker");
	/* it runs as a superuser: resolve nothing through a schema others own */
	SetConfigOption("search_path", "pg_catalog, pg_temp", PGC_SUSET, PGC_S_OVERRIDE);

	SpinLockAcquire(&apikeys_shmem->mutex);
	apikeys_shmem->worker_latch = MyLatch;
	apikeys_shmem->worker_dboid = MyDatabaseId;
	SpinLockRelease(&apikeys_shmem->mutex);
	before_shmem_exit(worker_exit, (Datum) 0);

	flush_cxt = AllocSetContextCreate(TopMemoryContext, "apikeys flush",
									  ALLOCSET_DEFAULT_SIZES);
	prev_cut = GetCurrentTimestamp();
	for (;;)
	{
		TimestampTz now = GetCurrentTimestamp();
		bool		standby = RecoveryInProgress();
		long		timeout;
		int64		to_hour;

		CHECK_FOR_INTERRUPTS();
		if (ConfigReloadPending)
		{
			ConfigReloadPending = false;
			ProcessConfigFile(PGC_SIGHUP);
		}

		deferred = false;
		if (!standby)
		{
			/* woken too soon after a flush: come back for it shortly */
			deferred = woken && now - last_flush < 200 * 1000;
			/* due by the clock, at an hour boundary, or woken (at most 5/s) */
			if (now - last_flush >= (int64) apikeys_flush_interval * 1000 ||
				hour_of(now) != hour_of(prev_cut) ||
				(woken && now - last_flush >= 200 * 1000))
			{
				duty_flush(&prev_cut);
				apikeys_request_log_flush();
				last_flush = now;
			}
			if (now - last_maintain >= USECS_PER_HOUR)
			{
				duty_maintain();
				apikeys_request_log_maintain();
				last_maintain = now;
			}
		}
		else
			prev_cut = now;		/* promoted, count from here */
		/*
		 * Evict once per flush interval, or sooner when backends found the
		 * table full, but no more than five times a second: a full table of
		 * busy keys has nothing to free, and each pass locks it all.
		 */
		if (now - last_evict >= (int64) apikeys_flush_interval * 1000 ||
			(pg_atomic_read_u32(&apikeys_shmem->full) != 0 &&
			 now - last_evict >= 200 * 1000))
		{
			duty_evict(standby);
			last_evict = now;
		}
		else if (pg_atomic_read_u32(&apikeys_shmem->full) != 0)
			deferred = true;

		now = GetCurrentTimestamp();
		to_hour = hour_of(now) + USECS_PER_HOUR - now;
		timeout = Min((int64) apikeys_flush_interval, to_hour / 1000 + 1);
		if (deferred)
			timeout = Min(timeout, 200);
		woken = (WaitLatch(MyLatch, WL_LATCH_SET | WL_TIMEOUT | WL_EXIT_ON_PM_DEATH,
						   Max(timeout, 1), PG_WAIT_EXTENSION) & WL_LATCH_SET) != 0;
		ResetLatch(MyLatch);
	}
}

/* Register the worker (from _PG_init, when preloaded). */
void
apikeys_worker_register(void)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION;
	worker.bgw_start_time = BgWorkerStart_ConsistentState;
	worker.bgw_restart_time = 5;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "apikeys");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "apikeys_worker_main");
	snprintf(worker.bgw_name, BGW_MAXLEN, "apikeys worker");
	snprintf(worker.bgw_type, BGW_MAXLEN, "apikeys worker");
	RegisterBackgroundWorker(&worker);
}

/* Define the settings of usage and of the worker (server-start ones only when preloading). */
void
apikeys_worker_define_settings(bool preloading)
{
	if (preloading)
		DefineCustomStringVariable("apikeys.database",
								   "Database whose usage and quotas the apikeys background worker keeps.",
								   "Usage is counted and quotas are allowed only there. Takes effect at server start.",
								   &apikeys_database,
								   "postgres",
								   PGC_POSTMASTER, 0,
								   NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.usage_flush_interval",
							"How often the apikeys worker writes usage and quota state from shared memory to tables.",
							"A crash loses at most this much usage and quota spending.",
							&apikeys_flush_interval,
							5000, 100, 3600 * 1000,
							PGC_SIGHUP, GUC_UNIT_MS,
							NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.usage_retention",
							"How long hourly usage buckets are kept; 0 keeps them forever.",
							NULL,
							&apikeys_usage_retention,
							90 * 24 * 60, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MIN,
							NULL, NULL, NULL);
}
