/*
 * shmem.c
 *		The shared-memory segment of apikeys: its header, the table of
 *		tracked keys and roles (partitioned, sized by apikeys.max_tracked_keys),
 *		and the file that carries it across a clean restart.
 *
 * Only with shared_preload_libraries = 'apikeys'.  The segment is a header
 * followed by areas, each sized and attached by one entry of the area table
 * below: the table of tracked keys, and the request log's queue
 * (request_log.c, which also keeps its own file across a clean restart).  The table
 * is a dynahash in 16 partitions, each under its own LWLock; an entry is
 * keyed by (database OID, kind, key id or role OID), so every database of
 * the cluster shares it and none sees another's entries.
 *
 * Capacity is enforced by a counter, never by running out of memory: keys
 * tracked only for their usage may fill 90% of the table, and the last 10%
 * is kept for keys that have limits or quotas.  The worker frees entries
 * that hold nothing unwritten (usage.c, apikeys_entry_clean).
 *
 * The table is shared fairly: each entry is charged to its database and to
 * its owner, the key's role (a role limit's entry to that role), and no
 * database or role may hold more than its share (apikeys.tracked_share_per_
 * database and _per_role, percentages of the table, within which the same
 * 90% rule holds).  A role past its share gets its own keys refused or not
 * counted, never another role's.  The shares are counted in a small hash
 * of accounts under a lock of its own, touched only when an entry is
 * created or removed: a verification that finds its entry never sees them.
 * Entries of keys deleted or revoked are freed when that commits (a
 * trigger on the key catalog lists them, a transaction callback frees
 * them), or right after the worker has written what they counted.
 *
 * At a clean shutdown the postmaster writes the table to
 * pg_stat/apikeys.stat and reads it back at the next start (as
 * pg_stat_statements does), so pending usage, rate-limit windows and quota
 * state survive a restart exactly.  After a crash the file is absent (it is
 * removed once read), and what was not flushed is lost.
 */
#include "postgres.h"

#include <unistd.h>

#include "commands/dbcommands.h"
#include "miscadmin.h"
#include "access/htup_details.h"
#include "access/xact.h"
#include "commands/trigger.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "apikeys.h"
#include "compat.h"
#include "shmem.h"

#define APIKEYS_DUMP_FILE		"pg_stat/apikeys.stat"
#define APIKEYS_TRANCHE			"apikeys"

ApiKeysShmem *apikeys_shmem = NULL;
HTAB	   *apikeys_entries = NULL;
HTAB	   *apikeys_accounts = NULL;

int			apikeys_max_tracked_keys = 10000;
int			apikeys_role_share = 10;
int			apikeys_database_share = 50;

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

/*
 * The areas of the segment, after the header.  Each sizes itself at
 * startup and attaches (creating it the first time) in every process.
 */
typedef struct ApiKeysShmemArea
{
	Size		(*size) (void);
	void		(*attach) (void);
} ApiKeysShmemArea;

static Size entries_size(void);
static void entries_attach(void);
static Size accounts_size(void);
static void accounts_attach(void);

static const ApiKeysShmemArea areas[] = {
	{entries_size, entries_attach},
	{accounts_size, accounts_attach},
	{apikeys_request_log_size, apikeys_request_log_attach},
};

/* Bytes of the table of tracked keys. */
static Size
entries_size(void)
{
	return hash_estimate_size(apikeys_max_tracked_keys, sizeof(ApiKeysEntry));
}

/* Create or attach the table of tracked keys. */
static void
entries_attach(void)
{
	HASHCTL		info;

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(ApiKeysEntryKey);
	info.entrysize = sizeof(ApiKeysEntry);
	info.num_partitions = APIKEYS_PARTITIONS;
	apikeys_entries = ShmemInitHash("apikeys tracked keys",
									apikeys_max_tracked_keys,
									apikeys_max_tracked_keys,
									&info,
									HASH_ELEM | HASH_BLOBS | HASH_PARTITION);
}

/*
 * Most accounts there can be: each holds an entry at least, and an entry
 * is charged to two (its role's and its database's).
 */
static long
max_accounts(void)
{
	return 2L * apikeys_max_tracked_keys;
}

/* Bytes of the accounts of the shares. */
static Size
accounts_size(void)
{
	return hash_estimate_size(max_accounts(), sizeof(ApiKeysAccount));
}

/* Create or attach the accounts of the shares. */
static void
accounts_attach(void)
{
	HASHCTL		info;

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(ApiKeysAccountKey);
	info.entrysize = sizeof(ApiKeysAccount);
	apikeys_accounts = ShmemInitHash("apikeys accounts",
									 max_accounts(), max_accounts(),
									 &info, HASH_ELEM | HASH_BLOBS);
}

/* shmem_request_hook: reserve the segment and the partition locks. */
static void
apikeys_shmem_request(void)
{
	Size		size = MAXALIGN(sizeof(ApiKeysShmem));

	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	for (size_t i = 0; i < lengthof(areas); i++)
		size = add_size(size, areas[i].size());
	RequestAddinShmemSpace(size);
	/* the partitions' locks, then the accounts' */
	RequestNamedLWLockTranche(APIKEYS_TRANCHE, APIKEYS_PARTITIONS + 1);
}

static void dump_entries(int code, Datum arg);
static void load_entries(void);

/* shmem_startup_hook: create or attach the header and every area. */
static void
apikeys_shmem_startup(void)
{
	bool		found;

	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();

	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	apikeys_shmem = ShmemInitStruct("apikeys", sizeof(ApiKeysShmem), &found);
	if (!found)
	{
		memset(apikeys_shmem, 0, sizeof(ApiKeysShmem));
		apikeys_shmem->layout = APIKEYS_SHMEM_LAYOUT;
		apikeys_shmem->max_entries = apikeys_max_tracked_keys;
		apikeys_shmem->locks = GetNamedLWLockTranche(APIKEYS_TRANCHE);
		pg_atomic_init_u32(&apikeys_shmem->nentries, 0);
		pg_atomic_init_u64(&apikeys_shmem->untracked, 0);
		pg_atomic_init_u64(&apikeys_shmem->refused, 0);
		pg_atomic_init_u64(&apikeys_shmem->evicted, 0);
		pg_atomic_init_u64(&apikeys_shmem->removals, 0);
		pg_atomic_init_u64(&apikeys_shmem->flush_seq, 0);
		pg_atomic_init_u32(&apikeys_shmem->full, 0);
		SpinLockInit(&apikeys_shmem->mutex);
	}
	for (size_t i = 0; i < lengthof(areas); i++)
		areas[i].attach();
	LWLockRelease(AddinShmemInitLock);

	/* The postmaster reads the last shutdown's table, and writes it at exit. */
	if (!IsUnderPostmaster)
	{
		on_shmem_exit(dump_entries, (Datum) 0);
		if (!found)
			load_entries();
	}
}

/* Is the segment there (the library was preloaded)? */
bool
apikeys_shmem_ready(void)
{
	return apikeys_shmem != NULL && apikeys_entries != NULL &&
		apikeys_accounts != NULL;
}

/* Raise 55000 unless the library was preloaded; what names the feature. */
void
apikeys_require_shmem(const char *what)
{
	if (!apikeys_shmem_ready())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("%s need apikeys loaded at server start", what),
				 errdetail("Rate limits, quotas and usage are kept in shared memory."),
				 errhint("Add apikeys to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/* Fill in an entry key; id is a key id, or a role OID for a role entry. */
void
apikeys_entry_key(ApiKeysEntryKey *k, Oid dboid, char kind, const char *id)
{
	memset(k, 0, sizeof(*k));
	k->dboid = dboid;
	k->kind = kind;
	memcpy(k->id, id, APIKEY_KEY_ID_LEN);
}

/* Hash of an entry key, which also picks its partition. */
uint32
apikeys_entry_hash(const ApiKeysEntryKey *k)
{
	return get_hash_value(apikeys_entries, k);
}

/* The lock of the partition an entry key falls in. */
LWLock *
apikeys_partition_lock(uint32 hash)
{
	return &apikeys_shmem->locks[hash % APIKEYS_PARTITIONS].lock;
}

/* Find an entry; the caller holds its partition lock. */
ApiKeysEntry *
apikeys_entry_find(const ApiKeysEntryKey *k, uint32 hash)
{
	return (ApiKeysEntry *) hash_search_with_hash_value(apikeys_entries, k, hash,
														HASH_FIND, NULL);
}

/*
 * The entry key and its hash for key_id of this database; the hash is kept
 * in the hint (the key never changes for a cached key).
 */
uint32
apikeys_key_entry(ApiKeysEntryKey *k, const char *key_id, ApiKeySharedHint *hint)
{
	apikeys_entry_key(k, MyDatabaseId, APIKEYS_ENTRY_KEY, key_id);
	if (hint == NULL)
		return apikeys_entry_hash(k);
	if (!hint->has_hash)
	{
		hint->hash = apikeys_entry_hash(k);
		hint->has_hash = true;
	}
	return hint->hash;
}

/*
 * Find an entry through a hint (may be NULL), and update the hint; the
 * caller holds its partition lock.  The address the hint holds is still
 * the key's entry if no entry has been removed since it was found: an
 * entry is removed only under its partition lock held exclusive, which
 * the caller's lock excludes for this key's partition, and every removal
 * bumps the count before that lock is released.  So an unchanged count
 * read under the lock proves the address, and skips the hash lookup.
 */
ApiKeysEntry *
apikeys_entry_find_hinted(const ApiKeysEntryKey *k, uint32 hash,
						  ApiKeySharedHint *hint)
{
	uint64		removals;
	ApiKeysEntry *e;

	if (hint == NULL)
		return apikeys_entry_find(k, hash);
	removals = pg_atomic_read_u64(&apikeys_shmem->removals);
	if (hint->entry != NULL && hint->removals == removals)
	{
		Assert(memcmp(&((ApiKeysEntry *) hint->entry)->key, k, sizeof(*k)) == 0);
		return (ApiKeysEntry *) hint->entry;
	}
	e = apikeys_entry_find(k, hash);
	hint->entry = e;
	hint->removals = removals;
	return e;
}

/* The lock of the accounts (taken after any partition lock, never before). */
static LWLock *
accounts_lock(void)
{
	return &apikeys_shmem->locks[APIKEYS_PARTITIONS].lock;
}

/*
 * The share of one role or database, in entries: the setting's percentage
 * of the table, of which entries without limits may take 90%.
 */
int
apikeys_share_cap(char kind, bool limited)
{
	int			pct = kind == APIKEYS_ACCOUNT_ROLE ? apikeys_role_share :
		apikeys_database_share;
	int64		cap = (int64) apikeys_shmem->max_entries * pct / 100;

	if (!limited)
		cap -= cap / 10;
	return (int) Max(cap, 1);
}

/*
 * May a role or database past its share borrow a free entry?  Only while,
 * with it, at least one role's share of the table stays free, below the
 * 90% that keys without limits may fill: a role alone
 * in the table (every key of a PostgREST service on one role) may use it
 * nearly whole, and still a role that holds less than its share finds room
 * next to a role that borrowed all it could.  A borrowed entry is never
 * taken back (its rate-limit state would be lost); the worker frees it
 * when it is idle, as any other.
 */
static bool
may_borrow(void)
{
	int64		cap = apikeys_shmem->max_entries;
	int64		free_entries;

	/* below the line keys without limits stop at (see entry_enter) */
	cap -= cap / 10;
	free_entries = cap - (int64) pg_atomic_read_u32(&apikeys_shmem->nentries);

	return free_entries >= apikeys_share_cap(APIKEYS_ACCOUNT_ROLE, true);
}

/* Find, or create with nothing held, an account; under the accounts lock. */
static ApiKeysAccount *
account_get(char kind, Oid oid, bool create)
{
	ApiKeysAccountKey k;
	ApiKeysAccount *a;
	bool		found;

	memset(&k, 0, sizeof(k));
	k.oid = oid;
	k.kind = kind;
	a = (ApiKeysAccount *) hash_search(apikeys_accounts, &k,
									   create ? HASH_ENTER_NULL : HASH_FIND,
									   &found);
	if (a != NULL && create && !found)
	{
		a->held = 0;
		a->lent = 0;
		a->refused = 0;
		a->untracked = 0;
		a->warned_at = 0;
	}
	return a;
}

/* Give back an entry's charge to an account; under the accounts lock. */
static void
account_release(char kind, Oid oid, bool borrowed)
{
	ApiKeysAccount *a = account_get(kind, oid, false);

	if (a == NULL)
		return;
	if (borrowed && a->lent > 0)
		a->lent--;
	if (--a->held <= 0)
		hash_search(apikeys_accounts, &a->key, HASH_REMOVE, NULL);
}

/*
 * Charge a new entry to its database and its owner role (none for owner
 * 0), if both are within their shares or it may borrow (enforce; then
 * *borrowed says which), or whatever they hold (an entry read back from
 * the dump file, never borrowed).  A database's share counts the entries
 * its roles hold within their own shares: a role that borrowed does not
 * fill its database's share for the other roles there.  Returns why not,
 * or APIKEYS_ROOM.
 */
static ApiKeysNoRoom
account_charge(Oid dboid, Oid owner, bool limited, bool enforce, bool *borrowed)
{
	ApiKeysAccount *d,
			   *r = NULL;
	ApiKeysNoRoom why = APIKEYS_ROOM;

	*borrowed = false;
	LWLockAcquire(accounts_lock(), LW_EXCLUSIVE);
	d = account_get(APIKEYS_ACCOUNT_DATABASE, dboid, true);
	if (OidIsValid(owner))
		r = account_get(APIKEYS_ACCOUNT_ROLE, owner, true);
	if (d == NULL || (OidIsValid(owner) && r == NULL))
		why = APIKEYS_NO_ROOM_TABLE;	/* can't happen: sized for the table */
	else if (enforce)
	{
		bool		role_over = r != NULL &&
			r->held >= apikeys_share_cap(APIKEYS_ACCOUNT_ROLE, limited);
		bool		db_over = d->held - d->lent >=
			apikeys_share_cap(APIKEYS_ACCOUNT_DATABASE, limited);

		if (role_over || db_over)
		{
			if (may_borrow())
				*borrowed = true;
			else
				why = role_over ? APIKEYS_NO_ROOM_ROLE : APIKEYS_NO_ROOM_DATABASE;
		}
	}
	if (why == APIKEYS_ROOM)
	{
		d->held++;
		if (r != NULL)
			r->held++;
		if (*borrowed)
		{
			d->lent++;
			if (r != NULL)
				r->lent++;
		}
	}
	else
	{
		/* counted where the share is full; empty accounts go again */
		ApiKeysAccount *full = why == APIKEYS_NO_ROOM_ROLE ? r : d;

		if (full != NULL)
		{
			if (limited)
				full->refused++;
			else
				full->untracked++;
		}
		if (d != NULL && d->held == 0)
			hash_search(apikeys_accounts, &d->key, HASH_REMOVE, NULL);
		if (r != NULL && r->held == 0)
			hash_search(apikeys_accounts, &r->key, HASH_REMOVE, NULL);
	}
	LWLockRelease(accounts_lock());
	return why;
}

/* The table or a share was found full: the worker may free some. */
static void
found_full(void)
{
	/* tell it once per attempt */
	if (pg_atomic_read_u32(&apikeys_shmem->full) == 0 &&
		pg_atomic_exchange_u32(&apikeys_shmem->full, 1) == 0)
		apikeys_wake_worker();
}

/*
 * Find or create an entry for a key or role of owner (the key's role);
 * the caller holds its partition lock exclusive.  Returns NULL, and says
 * why in *why, when there is no room: entries without limits may take 90%
 * of the table and of each share, entries with limits all of it.  Only the
 * creation of an entry pays for the shares.
 */
static ApiKeysEntry *
entry_enter(const ApiKeysEntryKey *k, uint32 hash, bool limited, Oid owner,
			bool enforce, ApiKeySharedHint *hint, ApiKeysNoRoom *why)
{
	ApiKeysEntry *e;
	bool		found;
	bool		borrowed;
	uint32		cap = (uint32) apikeys_shmem->max_entries;

	*why = APIKEYS_ROOM;
	e = apikeys_entry_find_hinted(k, hash, hint);
	if (e != NULL)
		return e;
	if (!limited)
		cap = cap - cap / 10;
	if (pg_atomic_fetch_add_u32(&apikeys_shmem->nentries, 1) >= cap)
	{
		pg_atomic_fetch_sub_u32(&apikeys_shmem->nentries, 1);
		*why = APIKEYS_NO_ROOM_TABLE;
		found_full();
		return NULL;
	}
	*why = account_charge(k->dboid, owner, limited, enforce, &borrowed);
	if (*why != APIKEYS_ROOM)
	{
		pg_atomic_fetch_sub_u32(&apikeys_shmem->nentries, 1);
		found_full();
		return NULL;
	}
	e = (ApiKeysEntry *) hash_search_with_hash_value(apikeys_entries, k, hash,
													 HASH_ENTER_NULL, &found);
	if (e == NULL)
	{
		LWLockAcquire(accounts_lock(), LW_EXCLUSIVE);
		account_release(APIKEYS_ACCOUNT_DATABASE, k->dboid, borrowed);
		if (OidIsValid(owner))
			account_release(APIKEYS_ACCOUNT_ROLE, owner, borrowed);
		LWLockRelease(accounts_lock());
		pg_atomic_fetch_sub_u32(&apikeys_shmem->nentries, 1);
		*why = APIKEYS_NO_ROOM_TABLE;
		return NULL;
	}
	Assert(!found);
	memset((char *) e + sizeof(ApiKeysEntryKey), 0,
		   sizeof(ApiKeysEntry) - sizeof(ApiKeysEntryKey));
	pg_atomic_init_u64(&e->uses, 0);
	pg_atomic_init_u64(&e->failures, 0);
	pg_atomic_init_u64(&e->rate_limited, 0);
	pg_atomic_init_u64(&e->quota_exceeded, 0);
	pg_atomic_init_u64(&e->last_used, 0);
	pg_atomic_init_u64(&e->last_active, 0);
	e->owner = owner;
	e->borrowed = borrowed;
	if (hint != NULL)
		hint->entry = e;		/* (the count was read under this lock) */
	return e;
}

/* Find or create an entry within the shares (see entry_enter). */
ApiKeysEntry *
apikeys_entry_enter(const ApiKeysEntryKey *k, uint32 hash, bool limited,
					Oid owner, ApiKeySharedHint *hint, ApiKeysNoRoom *why)
{
	return entry_enter(k, hash, limited, owner, true, hint, why);
}

/*
 * Remove an entry; the caller holds its partition lock exclusive, and
 * keeps it until the removal count is bumped (apikeys_entry_find_hinted).
 * Its database and owner get their share of it back.
 */
void
apikeys_entry_remove(ApiKeysEntry *e)
{
	ApiKeysEntryKey k = e->key;
	Oid			owner = e->owner;
	bool		borrowed = e->borrowed;

	hash_search(apikeys_entries, &k, HASH_REMOVE, NULL);
	LWLockAcquire(accounts_lock(), LW_EXCLUSIVE);
	account_release(APIKEYS_ACCOUNT_DATABASE, k.dboid, borrowed);
	if (OidIsValid(owner))
		account_release(APIKEYS_ACCOUNT_ROLE, owner, borrowed);
	LWLockRelease(accounts_lock());
	pg_atomic_fetch_sub_u32(&apikeys_shmem->nentries, 1);
	pg_atomic_fetch_add_u64(&apikeys_shmem->removals, 1);
}

/*
 * Does an entry hold counts the worker has not written?  (Quota state and
 * queued NOTIFYs do not count: this serves entries of deleted or revoked
 * keys, for which neither matters any more.)
 */
bool
apikeys_entry_unwritten(const ApiKeysEntry *e)
{
	return pg_atomic_read_u64((pg_atomic_uint64 *) &e->uses) != 0 ||
		pg_atomic_read_u64((pg_atomic_uint64 *) &e->failures) != 0 ||
		pg_atomic_read_u64((pg_atomic_uint64 *) &e->rate_limited) != 0 ||
		pg_atomic_read_u64((pg_atomic_uint64 *) &e->quota_exceeded) != 0 ||
		pg_atomic_read_u64((pg_atomic_uint64 *) &e->last_used) != 0;
}

/*
 * After an entry was refused for a full share: a WARNING at most once a
 * minute per role or database, naming it (the caller holds no lock).
 */
void
apikeys_share_warning(ApiKeysNoRoom why, Oid owner, bool limited)
{
	TimestampTz now = GetCurrentTimestamp();
	ApiKeysAccount *a;
	bool		warn = true;
	char	   *name;

	if (why != APIKEYS_NO_ROOM_ROLE && why != APIKEYS_NO_ROOM_DATABASE)
		return;
	LWLockAcquire(accounts_lock(), LW_EXCLUSIVE);
	a = why == APIKEYS_NO_ROOM_ROLE ?
		account_get(APIKEYS_ACCOUNT_ROLE, owner, false) :
		account_get(APIKEYS_ACCOUNT_DATABASE, MyDatabaseId, false);
	if (a != NULL)
	{
		warn = now - a->warned_at >= USECS_PER_MINUTE;
		if (warn)
			a->warned_at = now;
	}
	LWLockRelease(accounts_lock());
	if (!warn)
		return;
	if (why == APIKEYS_NO_ROOM_ROLE)
	{
		name = GetUserNameFromId(owner, true);
		ereport(WARNING,
				(errmsg("apikeys shared memory: the share of role \"%s\" is full",
						name != NULL ? name : "?"),
				 errdetail("Its keys hold %d entries, apikeys.tracked_share_per_role (%d%%) of apikeys.max_tracked_keys (%d); until some are freed, its keys with rate limits or quotas are refused and its other keys' verifications are not counted. Other roles are not affected.",
						   apikeys_share_cap(APIKEYS_ACCOUNT_ROLE, limited),
						   apikeys_role_share, apikeys_shmem->max_entries),
				 errhint("Delete the role's keys it no longer uses, or raise apikeys.tracked_share_per_role.")));
	}
	else
	{
		name = get_database_name(MyDatabaseId);
		ereport(WARNING,
				(errmsg("apikeys shared memory: the share of database \"%s\" is full",
						name != NULL ? name : "?"),
				 errdetail("Its keys hold %d entries, apikeys.tracked_share_per_database (%d%%) of apikeys.max_tracked_keys (%d); until some are freed, its keys with rate limits or quotas are refused and its other keys' verifications are not counted. Other databases are not affected.",
						   apikeys_share_cap(APIKEYS_ACCOUNT_DATABASE, limited),
						   apikeys_database_share, apikeys_shmem->max_entries),
				 errhint("Raise apikeys.tracked_share_per_database, or apikeys.max_tracked_keys.")));
	}
}

/* Take every partition lock, in order (for a scan of the whole table). */
void
apikeys_lock_all(LWLockMode mode)
{
	for (int i = 0; i < APIKEYS_PARTITIONS; i++)
		LWLockAcquire(&apikeys_shmem->locks[i].lock, mode);
}

/* Release every partition lock. */
void
apikeys_unlock_all(void)
{
	for (int i = APIKEYS_PARTITIONS - 1; i >= 0; i--)
		LWLockRelease(&apikeys_shmem->locks[i].lock);
}

/* Wake the background worker, if one runs. */
void
apikeys_wake_worker(void)
{
	Latch	   *latch;

	if (apikeys_shmem == NULL)
		return;
	SpinLockAcquire(&apikeys_shmem->mutex);
	latch = apikeys_shmem->worker_latch;
	SpinLockRelease(&apikeys_shmem->mutex);
	if (latch != NULL)
		SetLatch(latch);
}

/*
 * Does the worker serve this backend's database (apikeys.database)?  Usage
 * is counted, and quotas kept, only there.  Decided once per backend.
 */
bool
apikeys_database_served(void)
{
	static int	served = -1;

	if (served < 0)
	{
		char	   *name = get_database_name(MyDatabaseId);

		served = name != NULL && apikeys_database != NULL &&
			strcmp(name, apikeys_database) == 0;
	}
	return served == 1;
}

/*
 * on_shmem_exit in the postmaster: write the table for the next start.
 * Not after a crash (code != 0): the state may be torn, and the loss of
 * what was not flushed is the documented price of a crash.
 */
static void
dump_entries(int code, Datum arg)
{
	FILE	   *f;
	HASH_SEQ_STATUS scan;
	ApiKeysEntry *e;
	uint32		header[3];
	int32		n = 0;

	if (code != 0 || apikeys_shmem == NULL || apikeys_entries == NULL)
		return;

	/*
	 * An immediate shutdown that stopped the worker between a flush's commit
	 * and its subtraction (flush_seq odd) leaves counts that may be in the
	 * tables already: read back, they would be counted twice.  Such a stop
	 * loses what was not flushed, as a crash does.
	 */
	if (pg_atomic_read_u64(&apikeys_shmem->flush_seq) % 2 == 1)
	{
		ereport(LOG,
				(errmsg("apikeys shared memory not saved: the shutdown interrupted a flush"),
				 errdetail("What was counted since the last flush is lost, as after a crash.")));
		return;
	}
	f = AllocateFile(APIKEYS_DUMP_FILE ".tmp", PG_BINARY_W);
	if (f == NULL)
		goto error;
	header[0] = APIKEYS_SHMEM_LAYOUT;
	header[1] = sizeof(ApiKeysEntry);
	header[2] = 0;
	if (fwrite(header, sizeof(header), 1, f) != 1)
		goto error;
	hash_seq_init(&scan, apikeys_entries);
	while ((e = hash_seq_search(&scan)) != NULL)
	{
		if (fwrite(e, sizeof(ApiKeysEntry), 1, f) != 1)
		{
			hash_seq_term(&scan);
			goto error;
		}
		n++;
	}
	if (FreeFile(f))
	{
		f = NULL;
		goto error;
	}
	(void) durable_rename(APIKEYS_DUMP_FILE ".tmp", APIKEYS_DUMP_FILE, LOG);
	return;

error:
	ereport(LOG,
			(errcode_for_file_access(),
			 errmsg("could not write file \"%s\": %m", APIKEYS_DUMP_FILE ".tmp")));
	if (f != NULL)
		FreeFile(f);
	unlink(APIKEYS_DUMP_FILE ".tmp");
}

/*
 * An entry read back from the file: an immediate shutdown writes the table
 * while backends may have been stopped mid-update, so keep its values in
 * their possible ranges (a bucket is at most empty, a quota not below 0).
 */
static void
sanitize_entry(ApiKeysEntry *e, TimestampTz now)
{
	if (e->nwindows < 0 || e->nwindows > APIKEY_MAX_WINDOWS)
		e->nwindows = 0;
	for (int i = 0; i < e->nwindows; i++)
	{
		ApiKeysWindowState *ws = &e->windows[i];
		int128		limit;

		if (ws->w.count < 1 || ws->w.burst < 1 || ws->w.period < 1)
		{
			e->nwindows = 0;	/* re-synced from the catalog at next use */
			break;
		}
		limit = (int128) now * ws->w.count + (int128) ws->w.burst * ws->w.period;
		if (ws->tat > limit)
			ws->tat = limit;
	}
	if (e->remaining < 0)
		e->remaining = 0;
}

/* At postmaster start: read back the table written at the last shutdown. */
static void
load_entries(void)
{
	FILE	   *f;
	uint32		header[3];
	ApiKeysEntry buf;
	int			loaded = 0;
	TimestampTz now = GetCurrentTimestamp();

	f = AllocateFile(APIKEYS_DUMP_FILE, PG_BINARY_R);
	if (f == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", APIKEYS_DUMP_FILE)));
		return;
	}
	if (fread(header, sizeof(header), 1, f) == 1 &&
		header[0] == APIKEYS_SHMEM_LAYOUT && header[1] == sizeof(ApiKeysEntry))
	{
		while (fread(&buf, sizeof(buf), 1, f) == 1)
		{
			ApiKeysEntry *e;
			uint32		hash = apikeys_entry_hash(&buf.key);

			ApiKeysNoRoom why;

			/* charged to its shares whatever they hold (they may be lower) */
			e = entry_enter(&buf.key, hash, true, buf.owner, false, NULL, &why);
			if (e == NULL)
				break;			/* apikeys.max_tracked_keys was lowered */
			memcpy((char *) e + sizeof(ApiKeysEntryKey),
				   (char *) &buf + sizeof(ApiKeysEntryKey),
				   sizeof(ApiKeysEntry) - sizeof(ApiKeysEntryKey));
			e->owner = buf.owner;	/* (as charged) */
			e->borrowed = false;	/* (likewise) */
			sanitize_entry(e, now);
			loaded++;
		}
	}
	FreeFile(f);
	/* Read once: after a crash, the next start must not see it again. */
	unlink(APIKEYS_DUMP_FILE);
	(void) loaded;
}

/* ----------------------------------------------------------------
 * Entries of deleted and revoked keys, freed at commit
 * ---------------------------------------------------------------- */

typedef struct GoneKey
{
	char		id[APIKEY_KEY_ID_LEN];
	int			level;			/* subtransaction nesting level */
} GoneKey;

static GoneKey *gone_keys = NULL;	/* in TopTransactionContext */
static int	ngone = 0;
static int	gone_cap = 0;
static int	truncated_level = 0;	/* a TRUNCATE at this level; 0: none */
static bool gone_callbacks = false;

/*
 * Free the entries of this database's keys deleted or revoked by the
 * transaction that has just committed: at once if the worker has written
 * all they counted, else right after it has (marked gone, the worker woken).
 * A TRUNCATE of the catalog does the same for every key entry here.
 */
static void
free_gone(void)
{
	bool		wake = false;

	if (!apikeys_shmem_ready())
		return;
	if (truncated_level > 0)
	{
		HASH_SEQ_STATUS seq;
		ApiKeysEntry *e;

		apikeys_lock_all(LW_EXCLUSIVE);
		hash_seq_init(&seq, apikeys_entries);
		while ((e = hash_seq_search(&seq)) != NULL)
		{
			if (e->key.dboid != MyDatabaseId || e->key.kind != APIKEYS_ENTRY_KEY)
				continue;
			if (apikeys_entry_unwritten(e))
			{
				e->gone = true;
				wake = true;
			}
			else
				apikeys_entry_remove(e);
		}
		apikeys_unlock_all();
	}
	for (int i = 0; i < ngone && truncated_level == 0; i++)
	{
		ApiKeysEntryKey k;
		uint32		h;
		LWLock	   *lock;
		ApiKeysEntry *e;

		apikeys_entry_key(&k, MyDatabaseId, APIKEYS_ENTRY_KEY, gone_keys[i].id);
		h = apikeys_entry_hash(&k);
		lock = apikeys_partition_lock(h);
		LWLockAcquire(lock, LW_EXCLUSIVE);
		e = apikeys_entry_find(&k, h);
		if (e != NULL)
		{
			if (apikeys_entry_unwritten(e))
			{
				e->gone = true;
				wake = true;
			}
			else
				apikeys_entry_remove(e);
		}
		LWLockRelease(lock);
	}
	if (wake)
		apikeys_wake_worker();
}

/* Transaction callback: at commit, free what was listed; forget it at the end. */
static void
gone_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
			if (ngone > 0 || truncated_level > 0)
				free_gone();
			break;
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PREPARE:
			/* (a prepared one leaves them to the worker's eviction) */
			break;
		default:
			return;
	}
	gone_keys = NULL;			/* (TopTransactionContext goes) */
	ngone = gone_cap = 0;
	truncated_level = 0;
}

/* Subtransaction callback: a rollback forgets what it listed. */
static void
gone_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	int			level = GetCurrentTransactionNestLevel();

	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		int			n = 0;

		for (int i = 0; i < ngone; i++)
			if (gone_keys[i].level < level)
				gone_keys[n++] = gone_keys[i];
		ngone = n;
		if (truncated_level >= level)
			truncated_level = 0;
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (int i = 0; i < ngone; i++)
			if (gone_keys[i].level >= level)
				gone_keys[i].level = level - 1;
		if (truncated_level >= level)
			truncated_level = level - 1;
	}
}

/*
 * SQL function: apikeys_internal._key_untracked() returns trigger
 *
 * AFTER DELETE and AFTER UPDATE (to revoked) of a key, per row, and AFTER
 * TRUNCATE: list the key, so that its shared-memory entry is freed when
 * the transaction commits (a rollback frees nothing).  Nothing without
 * preloading.
 */
PG_FUNCTION_INFO_V1(apikeys_key_untracked);
Datum
apikeys_key_untracked(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;
	HeapTuple	tup;
	bool		isnull;
	Datum		d;
	text	   *id;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "apikeys_internal._key_untracked must be called as a trigger");
	if (!apikeys_shmem_ready())
		return PointerGetDatum(NULL);
	if (!gone_callbacks)
	{
		RegisterXactCallback(gone_xact_callback, NULL);
		RegisterSubXactCallback(gone_subxact_callback, NULL);
		gone_callbacks = true;
	}
	if (TRIGGER_FIRED_BY_TRUNCATE(trigdata->tg_event))
	{
		if (truncated_level == 0)
			truncated_level = GetCurrentTransactionNestLevel();
		return PointerGetDatum(NULL);
	}
	tup = trigdata->tg_trigtuple;	/* (the old row of an update) */
	d = heap_getattr(tup, Anum_key_key_id, RelationGetDescr(trigdata->tg_relation),
					 &isnull);
	if (isnull)
		return PointerGetDatum(NULL);
	id = DatumGetTextPP(d);
	if (VARSIZE_ANY_EXHDR(id) != APIKEY_KEY_ID_LEN)
		return PointerGetDatum(NULL);
	if (ngone == gone_cap)
	{
		int			cap = Max(64, gone_cap * 2);

		gone_keys = gone_keys == NULL ?
			MemoryContextAlloc(TopTransactionContext, cap * sizeof(GoneKey)) :
			repalloc(gone_keys, cap * sizeof(GoneKey));
		gone_cap = cap;
	}
	memcpy(gone_keys[ngone].id, VARDATA_ANY(id), APIKEY_KEY_ID_LEN);
	gone_keys[ngone].level = GetCurrentTransactionNestLevel();
	ngone++;
	return PointerGetDatum(NULL);
}

/*
 * Called from _PG_init: define the settings of limits, usage, the worker
 * and the request log; when preloaded, reserve the segment and register
 * the worker.
 */
void
apikeys_shmem_init(void)
{
	bool		preloading = process_shared_preload_libraries_in_progress;

	/* server-start settings can only be defined while preloading */
	if (preloading)
		DefineCustomIntVariable("apikeys.max_tracked_keys",
								"Keys and roles whose limits and usage shared memory can track at once.",
								"Keys without limits use at most 90% of it. Takes effect at server start.",
								&apikeys_max_tracked_keys,
								10000, 16, 10000000,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.tracked_share_per_role",
							"Percentage of apikeys.max_tracked_keys the keys of one role may hold at once.",
							"Past it, that role's keys with limits are refused and its other keys are not counted; other roles are not affected.",
							&apikeys_role_share,
							10, 1, 100,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.tracked_share_per_database",
							"Percentage of apikeys.max_tracked_keys the keys of one database may hold at once.",
							"Past it, that database's keys with limits are refused and its other keys are not counted; other databases are not affected.",
							&apikeys_database_share,
							50, 1, 100,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	apikeys_create_define_settings();
	apikeys_limits_define_settings();
	apikeys_worker_define_settings(preloading);
	apikeys_request_log_define_settings(preloading);

	if (!preloading)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = apikeys_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = apikeys_shmem_startup;
	apikeys_worker_register();
}
