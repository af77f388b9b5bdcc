/*
 * cache.c
 *		The backend-local key cache: what verify needs of each key id,
 *		loaded from apikeys_internal.key_catalog by index scan on a miss.
 *
 * Coherence is transactional, never a TTL.  Ordinary DML sends no relcache
 * invalidation, so a trigger on the catalog registers one
 * (apikeys_internal._catalog_changed, for UPDATE, DELETE and TRUNCATE,
 * firing on logical replication subscribers too) and
 * a relcache callback marks the whole cache stale.  The message travels
 * with the commit: to every backend through the shared invalidation queue,
 * to hot standbys in the commit record, and to the changing session at its
 * next command boundary (and again at abort, so nothing rolled back stays
 * cached).  apikey_cache_get() reads the queue first, which costs a
 * memory read when it is empty, so a change is seen by the first lookup
 * that starts after its commit, however long the caller's transaction or
 * statement.  Creating a key sends nothing: a new key id cannot be cached,
 * because unknown ids are not cached negatively.
 *
 * The callback only marks: memory is released at the next lookup, so an
 * entry returned by apikey_cache_get() stays readable until the caller
 * looks up again, whatever runs in between.  A load that raced an
 * invalidation (the generation moved between taking the snapshot and
 * storing the entry) is returned once and not stored.
 *
 * Size: at most apikeys.cache_size entries, evicted by CLOCK (a reference
 * bit per entry, a hand sweeping the hash table).  Each entry is a single
 * allocation: a fixed part (160 bytes: ids, prefix, state, role, digest
 * and pepper id, expiry, where its shared-memory entry is) followed by
 * copies of the key's name, scopes, metadata and restrictions, its rate
 * limits and quota if it has any, and the secret a rotation replaced
 * while its grace period lasts.
 */
#include "postgres.h"

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/relscan.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/table.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_class_d.h"
#include "commands/trigger.h"
#include "common/hashfn.h"
#include "executor/tuptable.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/builtins.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "apikeys.h"
#include "compat.h"

/* apikeys.cache_size: entries per backend; 0 turns the cache off */
static int	apikey_cache_size = 10000;

/* A key id as a hash key. */
typedef struct CacheKey
{
	char		id[APIKEY_KEY_ID_LEN];
} CacheKey;

/* A hash table slot: the key id and the entry it maps to. */
typedef struct CacheSlot
{
	CacheKey	key;
	char		status;			/* simplehash's */
	uint32		hash;
	ApiKeyEntry *entry;
} CacheSlot;

#define SH_PREFIX			keycache
#define SH_ELEMENT_TYPE		CacheSlot
#define SH_KEY_TYPE			CacheKey
#define SH_KEY				key
#define SH_HASH_KEY(tb, k)	hash_bytes((const unsigned char *) (k).id, APIKEY_KEY_ID_LEN)
#define SH_EQUAL(tb, a, b)	(memcmp((a).id, (b).id, APIKEY_KEY_ID_LEN) == 0)
#define SH_STORE_HASH
#define SH_GET_HASH(tb, a)	((a)->hash)
#define SH_SCOPE			static inline
#define SH_DECLARE
#define SH_DEFINE
#include "lib/simplehash.h"

static MemoryContext cache_cxt = NULL;	/* the table and every entry */
static keycache_hash *cache = NULL;
static uint32 clock_hand = 0;

/*
 * Invalidation state.  The generation moves with every invalidation that
 * may concern the catalog; flush_pending asks the next lookup to empty the
 * cache (the callback itself frees nothing).
 */
static uint64 cache_generation = 1;
static bool flush_pending = false;

/* A loaded entry that was not stored: freed at the next lookup. */
static ApiKeyEntry *transient_entry = NULL;

/* Counters, reported by apikey_cache_stats(). */
static uint64 stat_hits = 0;
static uint64 stat_misses = 0;
static uint64 stat_evictions = 0;
static uint64 stat_invalidations = 0;
static uint64 stat_discarded = 0;

/*
 * The catalog's OID, resolved by name once and again whenever an
 * invalidation names it (or all relations): that covers DROP EXTENSION and
 * anything else that could make it stale.  The last OID resolved is kept
 * for the callback to compare with.
 */
static Oid	catalog_relid = InvalidOid;
static bool catalog_stale = true;
static bool callbacks_registered = false;

/* Everything cached may be stale: bump the generation, flush at next use. */
static void
cache_invalidate(void)
{
	cache_generation++;
	stat_invalidations++;
	flush_pending = true;
}

/* Relcache callback: a change to the catalog (or to every relation). */
static void
catalog_relcache_callback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == catalog_relid)
	{
		catalog_stale = true;
		cache_invalidate();
	}
}

/* Empty the cache and release its memory. */
static void
cache_flush(void)
{
	flush_pending = false;
	if (cache_cxt != NULL)
		MemoryContextReset(cache_cxt);
	cache = NULL;
	transient_entry = NULL;		/* it lived in cache_cxt too */
	clock_hand = 0;
}

/* Register the relcache callback, once per backend. */
static void
register_callbacks(void)
{
	if (callbacks_registered)
		return;
	CacheRegisterRelcacheCallback(catalog_relcache_callback, (Datum) 0);
	callbacks_registered = true;
}

/*
 * Look up apikeys_internal.key_catalog by name, if its OID may be stale (a
 * 0.1.0 database keeps it in apikeys; objects.c accepts only a member of
 * the extension).
 */
static void
resolve_catalog(void)
{
	Oid			relid;

	register_callbacks();
	if (!catalog_stale && OidIsValid(catalog_relid))
		return;
	relid = apikeys_relation_oid(APIKEYS_CATALOG);
	if (!OidIsValid(relid))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("apikeys catalog is missing"),
				 errhint("Run CREATE EXTENSION apikeys in this database.")));
	catalog_relid = relid;
	catalog_stale = false;
}

/*
 * Open the catalog and return it with its primary key index, both locked
 * until the end of the transaction (a second lookup in the same transaction
 * finds the locks held and takes no shared lock again).
 *
 * Taking the lock processes pending invalidations.  If they made the OID
 * we used stale (the extension was dropped or re-created meanwhile), try
 * again with the name looked up afresh; once the lock is held and nothing
 * was invalidated, the relation cannot change under us.
 */
static Relation
open_catalog(Relation *index)
{
	for (int attempt = 0;; attempt++)
	{
		Oid			relid;
		Relation	rel;

		resolve_catalog();
		relid = catalog_relid;
		rel = try_relation_open(relid, AccessShareLock);
		if (rel != NULL && !catalog_stale && relid == catalog_relid &&
			rel->rd_rel->relkind == RELKIND_RELATION)
		{
			Oid			indexid = APIKEYS_PRIMARY_KEY_INDEX(rel);

			if (!OidIsValid(indexid))
				ereport(ERROR,
						(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
						 errmsg("apikeys catalog has no primary key"),
						 errhint("Re-create the extension.")));
			if (RelationGetDescr(rel)->natts != Natts_key_catalog &&
				RelationGetDescr(rel)->natts != Natts_key_catalog_0_1)
				elog(ERROR, "apikeys catalog has %d columns, expected %d",
					 RelationGetDescr(rel)->natts, Natts_key_catalog);
			*index = index_open(indexid, AccessShareLock);
			return rel;
		}
		if (rel != NULL)
			relation_close(rel, AccessShareLock);
		catalog_stale = true;
		if (attempt >= 10)
			elog(ERROR, "apikeys catalog keeps changing while it is opened");
	}
}

/* Bytes a varlena column takes in an entry (0 for null). */
static Size
column_size(Datum d, bool isnull)
{
	if (isnull)
		return 0;
	return MAXALIGN(VARSIZE_ANY(DatumGetPointer(d)));
}

/* Copy a detoasted (4-byte header) varlena column into an entry; return its offset. */
static uint32
column_copy(ApiKeyEntry *e, Size *used, Datum d, bool isnull)
{
	uint32		off;
	Size		len;

	if (isnull)
		return 0;
	off = (uint32) *used;
	len = VARSIZE_ANY(DatumGetPointer(d));
	memcpy((char *) e + off, DatumGetPointer(d), len);
	*used += MAXALIGN(len);
	return off;
}

/*
 * A stored (version, hash, pepper id) as the entry keeps it: a peppered
 * hash without a well-formed pepper id is unusable (version 0).
 */
static void
hash_copy(Datum version, bool version_null, Datum hash, bool hash_null,
		  Datum pepper, bool pepper_null, int16 *v, uint8 *dst, char *pepper_id)
{
	bytea	   *h;
	const char *id;

	*v = 0;						/* matches nothing */
	memset(dst, 0, APIKEY_DIGEST_LEN);
	memset(pepper_id, 0, APIKEY_PEPPER_ID_LEN);
	if (version_null || hash_null)
		return;
	h = DatumGetByteaPP(hash);
	if (VARSIZE_ANY_EXHDR(h) != APIKEY_DIGEST_LEN)
		return;
	if (DatumGetInt16(version) == APIKEY_HASH_HMAC_SHA256)
	{
		id = pepper_null ? NULL : apikey_pepper_id_of(DatumGetTextPP(pepper));
		if (id == NULL)
			return;
		memcpy(pepper_id, id, APIKEY_PEPPER_ID_LEN);
	}
	memcpy(dst, VARDATA_ANY(h), APIKEY_DIGEST_LEN);
	*v = DatumGetInt16(version);
}

/*
 * Build an entry from a catalog row, in one allocation in cxt.  This is the
 * one place that knows which columns verify needs: a column added to the
 * catalog for verify is added here and to ApiKeyEntry.
 */
static ApiKeyEntry *
entry_from_row(HeapTuple tup, TupleDesc desc, MemoryContext cxt)
{
	Datum		values[Natts_key_catalog];
	bool		nulls[Natts_key_catalog];
	Datum		detoasted[Natts_key_catalog];
	static const int varcols[] = {
		Anum_key_name, Anum_key_scopes, Anum_key_metadata,
		Anum_key_allowed_ips, Anum_key_allowed_origins
	};
	Size		size = MAXALIGN(sizeof(ApiKeyEntry));
	Size		used;
	ApiKeyEntry *e;
	ApiKeyLimits limits;
	bool		has_limits;
	bool		has_prev;
	text	   *prefix;
	text	   *state;

#define COL(a) ((a) - 1)
	/* columns a 0.1.0 catalog lacks read as null */
	memset(nulls, true, sizeof(nulls));
	heap_deform_tuple(tup, desc, values, nulls);
	for (int i = 0; i < (int) lengthof(varcols); i++)
	{
		int			c = COL(varcols[i]);

		detoasted[c] = nulls[c] ? (Datum) 0 :
			PointerGetDatum(PG_DETOAST_DATUM(values[c]));
		size += column_size(detoasted[c], nulls[c]);
	}
	/* rate limits and quota (limits.c parses them), kept only if any */
	apikey_limits_from_row(values, nulls, desc->natts, &limits);
	has_limits = limits.nwindows > 0 || limits.has_quota;
	if (has_limits)
		size += MAXALIGN(sizeof(ApiKeyLimits));
	/* the previous secret of a rotation, while its grace period lasts */
	has_prev = !nulls[COL(Anum_key_prev_valid_until)] &&
		DatumGetTimestampTz(values[COL(Anum_key_prev_valid_until)]) > GetCurrentTimestamp();
	if (has_prev)
		size += MAXALIGN(sizeof(ApiKeyPrevSecret));

	e = (ApiKeyEntry *) MemoryContextAllocZero(cxt, size);
	used = MAXALIGN(sizeof(ApiKeyEntry));

	memcpy(e->key_id, VARDATA_ANY(DatumGetTextPP(values[COL(Anum_key_key_id)])),
		   APIKEY_KEY_ID_LEN);
	prefix = DatumGetTextPP(values[COL(Anum_key_prefix)]);
	e->prefix_len = (uint8) Min(VARSIZE_ANY_EXHDR(prefix), APIKEY_PREFIX_MAXLEN + 1);
	memcpy(e->prefix, VARDATA_ANY(prefix), Min(e->prefix_len, APIKEY_PREFIX_MAXLEN));
	state = DatumGetTextPP(values[COL(Anum_key_state)]);
	e->state = VARSIZE_ANY_EXHDR(state) > 0 ? *VARDATA_ANY(state) : '?';
	e->role = DatumGetObjectId(values[COL(Anum_key_role)]);
	e->has_expiry = !nulls[COL(Anum_key_expires_at)];
	if (e->has_expiry)
		e->expires_at = DatumGetTimestampTz(values[COL(Anum_key_expires_at)]);

	/* (a catalog before 0.2.0 has no pepper ids: they read as null) */
	hash_copy(values[COL(Anum_key_hash_version)], nulls[COL(Anum_key_hash_version)],
			  values[COL(Anum_key_hash)], nulls[COL(Anum_key_hash)],
			  values[COL(Anum_key_pepper_id)], nulls[COL(Anum_key_pepper_id)],
			  &e->hash_version, e->hash, e->pepper_id);
	e->name_off = column_copy(e, &used, detoasted[COL(Anum_key_name)],
							  nulls[COL(Anum_key_name)]);
	e->scopes_off = column_copy(e, &used, detoasted[COL(Anum_key_scopes)],
								nulls[COL(Anum_key_scopes)]);
	e->metadata_off = column_copy(e, &used, detoasted[COL(Anum_key_metadata)],
								  nulls[COL(Anum_key_metadata)]);
	e->allowed_ips_off = column_copy(e, &used, detoasted[COL(Anum_key_allowed_ips)],
									 nulls[COL(Anum_key_allowed_ips)]);
	e->allowed_origins_off = column_copy(e, &used, detoasted[COL(Anum_key_allowed_origins)],
										 nulls[COL(Anum_key_allowed_origins)]);
	if (has_limits)
	{
		e->limits_off = (uint32) used;
		memcpy((char *) e + used, &limits, sizeof(ApiKeyLimits));
		used += MAXALIGN(sizeof(ApiKeyLimits));
	}
	if (has_prev)
	{
		ApiKeyPrevSecret *prev = (ApiKeyPrevSecret *) ((char *) e + used);

		e->prev_off = (uint32) used;
		prev->valid_until = DatumGetTimestampTz(values[COL(Anum_key_prev_valid_until)]);
		hash_copy(values[COL(Anum_key_prev_hash_version)], nulls[COL(Anum_key_prev_hash_version)],
				  values[COL(Anum_key_prev_hash)], nulls[COL(Anum_key_prev_hash)],
				  values[COL(Anum_key_prev_pepper_id)], nulls[COL(Anum_key_prev_pepper_id)],
				  &prev->hash_version, prev->hash, prev->pepper_id);
		used += MAXALIGN(sizeof(ApiKeyPrevSecret));
	}
	Assert(used == size);
#undef COL
	return e;
}

/*
 * Read key_id's row with the latest snapshot (so a commit elsewhere counts
 * at once) and build its entry in cxt; NULL if there is no such key.
 * *cacheable is cleared for a row this transaction inserted: nothing is
 * sent when an insert rolls back, so such a row must not outlive the
 * lookup.  (Rows this transaction updated or deleted need no such care:
 * those changes register an invalidation, which is also processed locally
 * when they roll back.)
 */
static ApiKeyEntry *
load_entry(const char *key_id, MemoryContext cxt, bool *cacheable)
{
	Relation	rel;
	Relation	index;
	Snapshot	snapshot;
	ScanKeyData skey;
	IndexScanDesc scan;
	TupleTableSlot *slot;
	text	   *key_text;
	ApiKeyEntry *e = NULL;

	key_text = cstring_to_text_with_len(key_id, APIKEY_KEY_ID_LEN);
	rel = open_catalog(&index);

	/*
	 * The latest snapshot cannot be taken in parallel mode (verify is
	 * PARALLEL UNSAFE, but a mislabelled caller could still get there): fall
	 * back to the statement's snapshot rather than fail.
	 */
	snapshot = RegisterSnapshot(IsInParallelMode() ? GetActiveSnapshot()
								: GetLatestSnapshot());
	ScanKeyInit(&skey, 1, BTEqualStrategyNumber, F_TEXTEQ,
				PointerGetDatum(key_text));
	scan = APIKEYS_INDEX_BEGINSCAN(rel, index, snapshot, 1, 0);
	index_rescan(scan, &skey, 1, NULL, 0);
	slot = table_slot_create(rel, NULL);
	if (index_getnext_slot(scan, ForwardScanDirection, slot))
	{
		bool		should_free;
		HeapTuple	tup = ExecFetchSlotHeapTuple(slot, false, &should_free);

		e = entry_from_row(tup, RelationGetDescr(rel), cxt);
		*cacheable = !TransactionIdIsCurrentTransactionId(HeapTupleHeaderGetXmin(tup->t_data));
		/* a 0.1.0 catalog has no trigger to tell us of changes: never cache */
		if (RelationGetDescr(rel)->natts != Natts_key_catalog)
			*cacheable = false;
		if (should_free)
			heap_freetuple(tup);
	}
	index_endscan(scan);
	ExecDropSingleTupleTableSlot(slot);
	UnregisterSnapshot(snapshot);
	index_close(index, NoLock);
	relation_close(rel, NoLock);
	pfree(key_text);
	return e;
}

/* The rate limits and quota of a cached key (none: all zero). */
const ApiKeyLimits *
apikey_entry_limits(const ApiKeyEntry *e)
{
	static const ApiKeyLimits none;

	return e->limits_off == 0 ? &none :
		(const ApiKeyLimits *) ((const char *) e + e->limits_off);
}

/*
 * Where the key's shared-memory entry was last found (limits.c keeps it up
 * to date): the one part of a cached entry written after it is loaded.
 */
ApiKeySharedHint *
apikey_entry_hint(const ApiKeyEntry *e)
{
	return (ApiKeySharedHint *) &e->shared;
}

/* Evict one entry by CLOCK: the first one not referenced since last pass. */
static void
evict_one(void)
{
	/* two full sweeps always find one: the first clears every bit */
	for (uint64 step = 0; step <= 2 * (uint64) cache->size; step++)
	{
		CacheSlot  *slot;

		if (clock_hand >= cache->size)
			clock_hand = 0;
		slot = &cache->data[clock_hand];
		if (slot->status == keycache_SH_IN_USE)
		{
			ApiKeyEntry *e = slot->entry;

			if (e->referenced)
				e->referenced = false;
			else
			{
				/* (deletion may pull the next slot into this one) */
				keycache_delete_item(cache, slot);
				pfree(e);
				stat_evictions++;
				return;
			}
		}
		clock_hand++;
	}
	elog(ERROR, "apikeys key cache: no entry to evict");
}

/* Store a freshly loaded entry (allocated in cache_cxt). */
static void
cache_store(ApiKeyEntry *e)
{
	CacheKey	k;
	CacheSlot  *slot;
	bool		found;

	while (cache->members >= (uint32) apikey_cache_size)
		evict_one();
	memcpy(k.id, e->key_id, APIKEY_KEY_ID_LEN);
	slot = keycache_insert(cache, k, &found);
	if (found)
		pfree(slot->entry);		/* cannot happen: we looked it up first */
	slot->entry = e;
	e->referenced = true;
}

/*
 * Take in pending invalidations and apply a pending flush.  Cheap when
 * nothing is pending: one unlocked read of the invalidation queue.
 */
static void
apikey_cache_poll(void)
{
	AcceptInvalidationMessages();
	if (flush_pending || (apikey_cache_size == 0 && cache != NULL))
		cache_flush();
}

/*
 * What verify needs of key_id, or NULL if there is no such key.  The entry
 * stays valid until the next call of this function (see the file banner).
 * *generation receives the invalidation generation the answer is known to
 * be current at: a later call that returns the same generation has seen no
 * change to any key since.
 */
const ApiKeyEntry *
apikey_cache_get(const char *key_id, uint64 *generation_out)
{
	uint64		generation;
	ApiKeyEntry *e;
	bool		cacheable = true;

	if (transient_entry != NULL)
	{
		pfree(transient_entry);
		transient_entry = NULL;
	}
	apikey_cache_poll();

	if (cache != NULL)
	{
		CacheKey	k;
		CacheSlot  *slot;

		memcpy(k.id, key_id, APIKEY_KEY_ID_LEN);
		slot = keycache_lookup(cache, k);
		if (slot != NULL)
		{
			stat_hits++;
			*generation_out = cache_generation;
			slot->entry->referenced = true;
			return slot->entry;
		}
	}
	stat_misses++;

	if (cache_cxt == NULL)
		cache_cxt = AllocSetContextCreate(TopMemoryContext, "apikeys key cache",
										  0, 8 * 1024, 256 * 1024);	/* little slack */
	/* a generation that moves while we load means the row may be stale */
	*generation_out = generation = cache_generation;
	e = load_entry(key_id, cache_cxt, &cacheable);
	if (e == NULL)
		return NULL;			/* unknown ids are never cached */

	if (generation != cache_generation || flush_pending ||
		apikey_cache_size == 0 || !cacheable)
	{
		if (apikey_cache_size > 0 && cacheable)
			stat_discarded++;
		transient_entry = e;
		return e;
	}
	if (cache == NULL)
		cache = keycache_create(cache_cxt, Min(apikey_cache_size, 1024), NULL);
	cache_store(e);
	return e;
}

/* Define apikeys.cache_size (from _PG_init). */
void
apikey_cache_init(void)
{
	DefineCustomIntVariable("apikeys.cache_size",
							"Number of api keys each backend keeps in its key cache.",
							"0 turns the cache off. Each entry takes about 320 bytes "
							"with typical keys, table and allocator overhead included.",
							&apikey_cache_size,
							10000, 0, 10000000,
							PGC_USERSET, 0,
							NULL, NULL, NULL);
}

/*
 * SQL trigger: apikeys_internal._catalog_changed(), AFTER UPDATE OR DELETE
 * FOR EACH ROW and AFTER TRUNCATE on the catalog, enabled ALWAYS.  Registers
 * a relcache invalidation of the catalog (once per command: duplicates are
 * merged), sent with the commit: every backend's key cache (and every
 * standby's, replaying it) drops what it holds.
 */
PG_FUNCTION_INFO_V1(apikeys_catalog_changed);
Datum
apikeys_catalog_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "apikeys_internal._catalog_changed must be called as a trigger");
	CacheInvalidateRelcacheByRelid(RelationGetRelid(trigdata->tg_relation));
	return PointerGetDatum(NULL);
}

/* SQL function: apikey_cache_stats() returns record */
PG_FUNCTION_INFO_V1(apikey_cache_stats);
Datum
apikey_cache_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[9];
	bool		nulls[9] = {0};
	uint64		repeats = apikey_verify_repeats();

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	if (tupdesc->natts != lengthof(values))
		elog(ERROR, "apikey_cache_stats must return %d columns", (int) lengthof(values));
	apikey_cache_poll();
	values[0] = Int32GetDatum(cache != NULL ? (int32) cache->members : 0);
	values[1] = Int32GetDatum(apikey_cache_size);
	values[2] = Int64GetDatum(cache_cxt != NULL ?
							  (int64) MemoryContextMemAllocated(cache_cxt, true) : 0);
	values[3] = Int64GetDatum((int64) stat_hits);
	values[4] = Int64GetDatum((int64) stat_misses);
	values[5] = Int64GetDatum((int64) stat_evictions);
	values[6] = Int64GetDatum((int64) stat_invalidations);
	values[7] = Int64GetDatum((int64) stat_discarded);
	values[8] = Int64GetDatum((int64) repeats);
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(BlessTupleDesc(tupdesc),
													  values, nulls)));
}
