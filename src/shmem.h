/*
 * shmem.h
 *		The shared-memory segment of apikeys, for the files that share it:
 *		shmem.c (the segment, the table of tracked keys, the dump file),
 *		limits.c (rate limits and quotas), usage.c (usage counters) and
 *		worker.c (the background worker).  Nothing here is used by the
 *		verify path directly: it calls apikey_limits_apply() (apikeys.h).
 *
 * The segment is a small header (ApiKeysShmem) followed by areas sized and
 * attached one by one (see shmem.c's area table): the table of tracked
 * keys and roles, and the queue of the request log (request_log.c),
 * drained by the same worker.
 */
#ifndef APIKEYS_SHMEM_H
#define APIKEYS_SHMEM_H

#include "port/atomics.h"
#include "storage/latch.h"
#include "storage/lwlock.h"
#include "storage/spin.h"
#include "utils/hsearch.h"

#include "apikeys.h"

#ifndef HAVE_INT128
#error "apikeys needs a compiler with a 128-bit integer type"
#endif

/* The table is split in this many partitions, each under its own LWLock. */
#define APIKEYS_PARTITIONS		16

/*
 * What an entry tracks: one key, or the limit shared by every key of one
 * role.  Entries of every database share the table, keyed by database OID.
 */
#define APIKEYS_ENTRY_KEY		'k'
#define APIKEYS_ENTRY_ROLE		'r'

typedef struct ApiKeysEntryKey
{
	Oid			dboid;
	char		kind;			/* APIKEYS_ENTRY_KEY or APIKEYS_ENTRY_ROLE */
	char		id[APIKEY_KEY_ID_LEN];	/* the key id; a role's OID as text */
	char		pad[3];			/* zeroed: the key is hashed as bytes */
} ApiKeysEntryKey;

/* One rate-limit window: its parameters and its GCRA state. */
typedef struct ApiKeysWindowState
{
	ApiKeyWindow w;				/* the parameters the state was built for */
	int128		tat;			/* theoretical arrival time, in units of
								 * 1/count microseconds */
} ApiKeysWindowState;

typedef struct ApiKeysEntry
{
	ApiKeysEntryKey key;		/* hash key: must be first */

	/*
	 * Usage not yet flushed, added to under the partition lock held shared
	 * (or exclusive); the worker subtracts what it has written.
	 */
	bool		counted;		/* usage of this entry is counted */
	bool		gone;			/* its key was deleted or revoked: freed
								 * as soon as its counts are written */
	bool		borrowed;		/* taken past its role's or database's
								 * share (may_borrow in shmem.c) */
	pg_atomic_uint64 uses;
	pg_atomic_uint64 failures;
	pg_atomic_uint64 rate_limited;
	pg_atomic_uint64 quota_exceeded;
	pg_atomic_uint64 last_used;	/* TimestampTz; 0 once flushed */
	pg_atomic_uint64 last_active;	/* TimestampTz of the last verification */

	/* Everything below: under the partition lock held exclusive. */
	bool		limited;		/* holds limit or quota state */
	int			nwindows;
	ApiKeysWindowState windows[APIKEY_MAX_WINDOWS];

	bool		has_quota;
	TimestampTz quota_set_at;	/* version of the catalog value counted from */
	int64		remaining;
	TimestampTz refilled_at;	/* start of the refill period last applied */
	int64		quota_base;		/* value last set or refilled */
	uint64		quota_changes;	/* bumped by every change of the above */
	uint64		quota_flushed;	/* quota_changes the worker last wrote */
	bool		warned_low;		/* the low-quota NOTIFY is sent or queued */
	bool		warned_empty;	/* the exhausted-quota NOTIFY likewise */
	uint8		notify_pending; /* APIKEYS_NOTIFY_* bits for the worker */
	Oid			owner;			/* the role whose share holds the entry (the
								 * key's role); 0: none (an older dump) */
} ApiKeysEntry;

/*
 * The shares of the table: each entry is charged to its database and to
 * its owner role, and none of them may hold more than its share
 * (apikeys.tracked_share_per_database, apikeys.tracked_share_per_role).
 * Kept in a hash of their own, under one lock, touched only when an entry
 * is created or removed.  An account exists while it holds entries.
 */
#define APIKEYS_ACCOUNT_ROLE	'r'
#define APIKEYS_ACCOUNT_DATABASE 'd'

typedef struct ApiKeysAccountKey
{
	Oid			oid;
	char		kind;			/* APIKEYS_ACCOUNT_ROLE or _DATABASE */
	char		pad[3];			/* zeroed: the key is hashed as bytes */
} ApiKeysAccountKey;

typedef struct ApiKeysAccount
{
	ApiKeysAccountKey key;		/* hash key: must be first */
	int32		held;			/* entries charged to it */
	int32		lent;			/* of which taken past a share, borrowed */
	int64		refused;		/* limited requests refused at its share */
	int64		untracked;		/* verifications not counted at its share */
	TimestampTz warned_at;		/* last WARNING that its share is full */
} ApiKeysAccount;

/* Why apikeys_entry_enter() returned no entry. */
typedef enum ApiKeysNoRoom
{
	APIKEYS_ROOM = 0,
	APIKEYS_NO_ROOM_TABLE,		/* apikeys.max_tracked_keys */
	APIKEYS_NO_ROOM_ROLE,		/* the owner role is at its share */
	APIKEYS_NO_ROOM_DATABASE	/* the database is at its share */
} ApiKeysNoRoom;

#define APIKEYS_NOTIFY_LOW		0x01
#define APIKEYS_NOTIFY_EMPTY	0x02

/* The header of the segment. */
typedef struct ApiKeysShmem
{
	uint32		layout;			/* APIKEYS_SHMEM_LAYOUT */
	int			max_entries;	/* apikeys.max_tracked_keys at start */
	LWLockPadded *locks;		/* APIKEYS_PARTITIONS partition locks, then
								 * the lock of the accounts */
	pg_atomic_uint32 nentries;
	pg_atomic_uint64 untracked; /* verifications not counted: table full */
	pg_atomic_uint64 refused;	/* limited requests refused: table full */
	pg_atomic_uint64 evicted;	/* entries dropped by the worker */
	pg_atomic_uint64 removals;	/* entries removed, bumped under the lock
								 * of each (apikeys_entry_find_hinted) */
	pg_atomic_uint64 flush_seq; /* odd while the worker commits a flush */
	pg_atomic_uint32 full;		/* the table was found full since the
								 * worker last tried to free entries */

	slock_t		mutex;			/* protects the fields below */
	Latch	   *worker_latch;	/* NULL while no worker runs */
	Oid			worker_dboid;	/* database the worker serves, once known */
	TimestampTz last_flush;		/* end of the last successful flush */
	uint64		flushes;
	uint64		flush_failures;
	TimestampTz last_full_warning;
} ApiKeysShmem;

#define APIKEYS_SHMEM_LAYOUT	0x414b0801	/* of the dump file: bump when
											 * ApiKeysEntry changes (a field
											 * put in padding, which older
											 * dumps hold as zero, needs no
											 * bump if zero is its default) */

extern ApiKeysShmem *apikeys_shmem;
extern HTAB *apikeys_entries;
extern HTAB *apikeys_accounts;

/* settings */
extern int	apikeys_max_tracked_keys;
extern int	apikeys_role_share;	/* percent of the table */
extern int	apikeys_database_share;	/* percent of the table */
extern int	apikeys_flush_interval;	/* milliseconds */
extern int	apikeys_usage_retention;	/* days, 0: forever */
extern char *apikeys_database;
extern int	apikeys_quota_notify_percent;

/* shmem.c */
extern bool apikeys_shmem_ready(void);
extern void apikeys_require_shmem(const char *what);
extern void apikeys_entry_key(ApiKeysEntryKey *k, Oid dboid, char kind,
							  const char *id);
extern uint32 apikeys_entry_hash(const ApiKeysEntryKey *k);
extern LWLock *apikeys_partition_lock(uint32 hash);
extern ApiKeysEntry *apikeys_entry_find(const ApiKeysEntryKey *k, uint32 hash);
extern uint32 apikeys_key_entry(ApiKeysEntryKey *k, const char *key_id,
								ApiKeySharedHint *hint);
extern ApiKeysEntry *apikeys_entry_find_hinted(const ApiKeysEntryKey *k,
											   uint32 hash,
											   ApiKeySharedHint *hint);
extern ApiKeysEntry *apikeys_entry_enter(const ApiKeysEntryKey *k, uint32 hash,
										 bool limited, Oid owner,
										 ApiKeySharedHint *hint,
										 ApiKeysNoRoom *why);
extern void apikeys_entry_remove(ApiKeysEntry *e);
extern bool apikeys_entry_unwritten(const ApiKeysEntry *e);
extern int	apikeys_share_cap(char kind, bool limited);
extern void apikeys_share_warning(ApiKeysNoRoom why, Oid owner, bool limited);
extern void apikeys_lock_all(LWLockMode mode);
extern void apikeys_unlock_all(void);
extern void apikeys_wake_worker(void);
extern bool apikeys_database_served(void);

/* limits.c */
extern void apikeys_limits_define_settings(void);
extern bool apikeys_windows_idle(const ApiKeysEntry *e, TimestampTz now);
extern int64 apikeys_quota_period_start(const ApiKeyLimits *lim, TimestampTz t);

/* usage.c */
extern void apikeys_usage_count_locked(ApiKeysEntry *e, ApiKeyStatus status,
									   TimestampTz now);
extern void apikeys_usage_count(const char *key_id, ApiKeySharedHint *hint,
								Oid owner, ApiKeyStatus status,
								TimestampTz now);
extern bool apikeys_entry_clean(ApiKeysEntry *e, TimestampTz now);

/* request_log.c: its area, its settings, the worker's duties */
extern Size apikeys_request_log_size(void);
extern void apikeys_request_log_attach(void);
extern void apikeys_request_log_define_settings(bool preloading);
extern void apikeys_request_log_flush(void);
extern void apikeys_request_log_maintain(void);

/* worker.c */
extern void apikeys_worker_define_settings(bool preloading);
extern void apikeys_worker_register(void);

#endif							/* APIKEYS_SHMEM_H */
