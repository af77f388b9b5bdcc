/*
 * request_log.c
 *		Requests made with a key: verifications and logins, recorded in
 *		shared memory by the verify path and written by the background
 *		worker into apikeys_internal.request_log (read through the view
 *		apikeys.request_log), under apikeys.audit_requests = off | failures
 *		| all (default failures).
 *
 * The verify path calls apikey_request_log_note() once per request, after
 * every check, limits included; a repeat that the statement memo answers
 * is the same request and is not noted again.  With the default, a valid
 * request never gets that far (APIKEY_REQUEST_LOG_NOTE tests the setting
 * inline): no lock, no shared memory.  apikey_login and pre_request
 * (session.c) and apikey_report_leak (leak.c) name the kind of the
 * verification that follows them.
 *
 * The queue is an area of the extension's segment (shmem.c): a hash table
 * of at most apikeys.audit_request_queue_size aggregates, under one LWLock
 * held for one lookup and a few additions.  A request is added to the
 * aggregate it belongs to, so the queue, and the table after it, grows with
 * the variety of requests, never with their number:
 *
 *   - valid requests: one aggregate per key, kind, database user and client
 *     address;
 *   - failed requests naming an existing key: one per key, kind and status
 *     (the user and the address are kept while every request shares them);
 *   - failed requests whose key id names no key (guessing): one per kind
 *     and status (the id tried, kept while every request gave the same).
 *
 * Every aggregate is charged to a role: the key's role, or the session user
 * for an id that names no key and for input that is no token.  A role may
 * hold at most apikeys.audit_request_rows_per_role aggregates per flush
 * (its share, counted in a second hash table of the area); past that, its
 * requests that have no aggregate yet are counted in the share itself and
 * written as ONE row per role (status 'overflow', no key, user or
 * address).  So no role can write more than that many rows plus one per
 * flush, nor fill the queue and push another role's requests out of it:
 * filling it takes audit_request_queue_size / (rows_per_role + 1) roles.
 *
 * When the queue is full all the same, a request that has no aggregate yet
 * is added to a fixed cell per kind and status, written as a row without
 * key, user or address: counted, never dropped.  Once the queue is three
 * quarters full the worker is woken.  Each flush (worker.c, every
 * apikeys.usage_flush_interval) takes the whole queue, writes one row per
 * aggregate and cell, and puts everything back if the write fails.
 *
 * Nothing is recorded where nothing can be written: on a hot standby and in
 * a database other than apikeys.database; such requests are counted in
 * request_log_stats().not_recorded.  A clean shutdown writes the queue to
 * pg_stat/apikeys_requests.stat and the next start reads it back; a crash
 * loses what was queued since the last flush.  Without preloading, nothing
 * is recorded.
 */
#include "postgres.h"

#include <unistd.h>

#include "access/xact.h"
#include "access/xlog.h"
#include "catalog/namespace.h"
#include "catalog/pg_type_d.h"
#include "executor/spi.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "pgstat.h"
#include "storage/fd.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inet.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "apikeys.h"
#include "compat.h"
#include "shmem.h"

#define REQUEST_LOG_TABLE		"request_log"
#define REQUEST_LOG_FILE		"pg_stat/apikeys_requests.stat"
#define REQUEST_LOG_LAYOUT		0x414b5202	/* bump when a struct changes */

#define NKINDS					(APIKEY_REQUEST_LEAK_REPORT + 1)
#define NSTATUSES				(APIKEY_QUOTA_EXCEEDED + 1)

/* settings */
int			apikeys_audit_requests = APIKEYS_AUDIT_REQUESTS_FAILURES;
static int	request_queue_size = 4096;
static int	request_rows_per_role = 200;
static int	request_retention = 90 * 24 * 60;	/* minutes, 0: forever */

static const struct config_enum_entry audit_requests_options[] = {
	{"off", APIKEYS_AUDIT_REQUESTS_OFF, false},
	{"failures", APIKEYS_AUDIT_REQUESTS_FAILURES, false},
	{"all", APIKEYS_AUDIT_REQUESTS_ALL, false},
	{NULL, 0, false}
};

/* A client address as inet keeps it; family 0: unknown. */
typedef struct RequestAddr
{
	uint8		family;			/* PGSQL_AF_INET, PGSQL_AF_INET6 or 0 */
	uint8		bits;
	uint8		ip[16];
} RequestAddr;

/* What requests must share to be one aggregate (hashed as bytes: zeroed). */
typedef struct RequestKey
{
	Oid			dboid;
	Oid			charged;		/* the role it counts against (see above) */
	Oid			db_user;		/* valid requests only, else 0 */
	uint8		kind;			/* ApiKeyRequestKind */
	uint8		status;			/* ApiKeyStatus */
	bool		known;			/* key_id names a key */
	char		key_id[APIKEY_KEY_ID_LEN];	/* known keys only, else zeros */
	RequestAddr addr;			/* valid requests only, else zeros */
} RequestKey;

/* What an aggregate holds: one request, or many merged. */
typedef struct RequestAggregate
{
	int64		count;
	TimestampTz first_at;
	TimestampTz last_at;
	Oid			role;			/* the key's role, last seen; 0 if none */
	Oid			db_user;		/* session user */
	RequestAddr addr;			/* the client's address */
	char		tried_id[APIKEY_KEY_ID_LEN];	/* the id given, for ids
												 * naming no key */
	bool		user_mixed;		/* requests came from several users */
	bool		addr_mixed;		/* ... several addresses */
	bool		id_mixed;		/* ... several ids naming no key */
} RequestAggregate;

typedef struct RequestSlot
{
	RequestKey	key;			/* hash key: must be first */
	RequestAggregate agg;
} RequestSlot;

/* Requests a full queue could not keep apart: a count per kind and status. */
typedef struct RequestCell
{
	int64		count;
	TimestampTz first_at;
	TimestampTz last_at;
} RequestCell;

/* A role's share of the queue: its aggregates, and what went past them. */
typedef struct RoleShareKey
{
	Oid			dboid;
	Oid			role;
} RoleShareKey;

typedef struct RoleShare
{
	RoleShareKey key;			/* hash key: must be first */
	int32		nrows;			/* aggregates of the role in the queue */
	uint8		kind;			/* of the requests counted here ... */
	bool		kind_mixed;		/* ... unless they were of several kinds */
	int64		count;			/* requests past the role's bound */
	TimestampTz first_at;
	TimestampTz last_at;
} RoleShare;

/* The area's header, in the extension's segment. */
typedef struct RequestLogShared
{
	int			tranche;
	LWLock		lock;			/* protects the counts, both tables and the cells */
	int			capacity;		/* apikeys.audit_request_queue_size at start */
	int			nslots;
	int			nshares;		/* entries of the role share table */
	RequestCell overflow[NKINDS][NSTATUSES];
	pg_atomic_uint32 wake_sent; /* the worker was woken since its last flush */
	pg_atomic_uint64 recorded;	/* requests queued since the server started */
	pg_atomic_uint64 overflowed;	/* of which only counted: a cell or a share */
	pg_atomic_uint64 role_capped;	/* of which in a share: past the role's bound */
	pg_atomic_uint64 written;	/* requests the worker wrote */
	pg_atomic_uint64 not_recorded;	/* requests where nothing can be written */
	pg_atomic_uint64 in_flight; /* taken by the worker, not yet committed */
} RequestLogShared;

static RequestLogShared *rl = NULL;
static HTAB *rl_slots = NULL;
static HTAB *rl_shares = NULL;

/* The kind of the next verification, named by a login or a leak report. */
bool		apikey_request_log_kind_pending = false;
static ApiKeyRequestKind next_kind;
static LocalTransactionId next_lxid;
static TimestampTz next_statement;

static const char *const kind_names[NKINDS] = {"verify", "login", "leak_report"};


/*
 * ---------------------------------------------------------------------------
 * Backends: noting a request
 * ---------------------------------------------------------------------------
 */

/* The next verification of this statement is a login or a leak report. */
void
apikey_request_log_kind_next(ApiKeyRequestKind kind)
{
	next_kind = kind;
	next_lxid = APIKEYS_CURRENT_LXID();
	next_statement = GetCurrentStatementStartTimestamp();
	apikey_request_log_kind_pending = true;
}

/* The kind of this verification (a kind named for another statement is stale). */
static ApiKeyRequestKind
take_kind(void)
{
	ApiKeyRequestKind kind = APIKEY_REQUEST_VERIFY;

	if (apikey_request_log_kind_pending &&
		next_lxid == APIKEYS_CURRENT_LXID() &&
		next_statement == GetCurrentStatementStartTimestamp())
		kind = next_kind;
	apikey_request_log_kind_pending = false;
	return kind;
}

/* Copy an inet value into a RequestAddr. */
static void
addr_from_inet(const inet *ip, RequestAddr *a)
{
	memset(a, 0, sizeof(*a));
	a->family = ip_family(ip);
	a->bits = ip_bits(ip);
	memcpy(a->ip, ip_addr(ip), ip_addrsize(ip));
}

/*
 * The client's address: the request's client_ip, else the connection's
 * (inet_client_addr(), read once per backend; unknown on a Unix socket).
 */
static void
request_addr(const ApiKeyRequest *req, RequestAddr *a)
{
	static bool known = false;
	static RequestAddr conn;

	if (req->client_ip != NULL)
	{
		addr_from_inet(req->client_ip, a);
		return;
	}
	if (!known)
	{
		LOCAL_FCINFO(fcinfo, 0);
		Datum		d;

		memset(&conn, 0, sizeof(conn));
		InitFunctionCallInfoData(*fcinfo, NULL, 0, InvalidOid, NULL, NULL);
		d = inet_client_addr(fcinfo);
		if (!fcinfo->isnull)
			addr_from_inet(DatumGetInetPP(d), &conn);
		known = true;
	}
	*a = conn;
}

/* Add requests to an aggregate. */
static void
merge(RequestAggregate *into, const RequestAggregate *a)
{
	into->count += a->count;
	into->first_at = Min(into->first_at, a->first_at);
	into->last_at = Max(into->last_at, a->last_at);
	if (OidIsValid(a->role))
		into->role = a->role;
	if (a->user_mixed || into->db_user != a->db_user)
		into->user_mixed = true;
	if (a->addr_mixed || memcmp(&into->addr, &a->addr, sizeof(RequestAddr)) != 0)
		into->addr_mixed = true;
	if (a->id_mixed || memcmp(into->tried_id, a->tried_id, APIKEY_KEY_ID_LEN) != 0)
		into->id_mixed = true;
}

/* Add requests to a cell. */
static void
cell_add(RequestCell *c, int64 count, TimestampTz first_at, TimestampTz last_at)
{
	if (c->count == 0)
	{
		c->first_at = first_at;
		c->last_at = last_at;
	}
	c->count += count;
	c->first_at = Min(c->first_at, first_at);
	c->last_at = Max(c->last_at, last_at);
}

/* Add requests of a kind to what a role's share counts past its bound. */
static void
share_add(RoleShare *sh, uint8 kind, int64 count, TimestampTz first_at,
		  TimestampTz last_at)
{
	if (sh->count == 0)
	{
		sh->kind = kind;
		sh->first_at = first_at;
		sh->last_at = last_at;
	}
	else if (sh->kind != kind)
		sh->kind_mixed = true;
	sh->count += count;
	sh->first_at = Min(sh->first_at, first_at);
	sh->last_at = Max(sh->last_at, last_at);
}

/* A role's share, entered if asked (NULL: not there, or no room). */
static RoleShare *
share_get(Oid dboid, Oid role, bool enter)
{
	RoleShareKey sk;
	RoleShare  *sh;
	bool		found;

	memset(&sk, 0, sizeof(sk));
	sk.dboid = dboid;
	sk.role = role;
	sh = hash_search(rl_shares, &sk, HASH_FIND, NULL);
	if (sh != NULL || !enter || rl->nshares >= rl->capacity)
		return sh;
	sh = hash_search(rl_shares, &sk, HASH_ENTER_NULL, &found);
	if (sh != NULL)
	{
		Assert(!found);
		memset((char *) sh + sizeof(RoleShareKey), 0, sizeof(RoleShare) - sizeof(RoleShareKey));
		rl->nshares++;
	}
	return sh;
}

/*
 * Add requests to the queue: to their aggregate, a new one (within the
 * role's share), the role's share (past its bound), or (the queue full)
 * their cell.  The caller holds the lock exclusive.  Returns whether the
 * worker should come for them.
 */
static bool
queue_add(const RequestKey *k, uint32 hash, const RequestAggregate *a)
{
	RequestSlot *s;
	RoleShare  *sh;
	bool		found;

	s = hash_search_with_hash_value(rl_slots, k, hash, HASH_FIND, NULL);
	if (s != NULL)
	{
		merge(&s->agg, a);
		return false;
	}
	sh = share_get(k->dboid, k->charged, rl->nslots < rl->capacity);
	if (sh != NULL && sh->nrows >= request_rows_per_role)
	{
		/* the role's bound: counted against it, in one row per flush */
		share_add(sh, k->kind, a->count, a->first_at, a->last_at);
		pg_atomic_fetch_add_u64(&rl->overflowed, (uint64) a->count);
		pg_atomic_fetch_add_u64(&rl->role_capped, (uint64) a->count);
		return false;
	}
	if (sh != NULL && rl->nslots < rl->capacity)
	{
		s = hash_search_with_hash_value(rl_slots, k, hash, HASH_ENTER_NULL, &found);
		if (s != NULL)
		{
			Assert(!found);
			s->agg = *a;
			rl->nslots++;
			sh->nrows++;
			return rl->nslots >= Max(rl->capacity / 4 * 3, 1);
		}
	}
	cell_add(&rl->overflow[k->kind][k->status], a->count, a->first_at, a->last_at);
	pg_atomic_fetch_add_u64(&rl->overflowed, (uint64) a->count);
	return true;
}

/*
 * Put back what a role's share counted past its bound (a failed write, the
 * file of a clean shutdown); with no room for the share, into a cell.
 */
static void
share_return(const RoleShare *from)
{
	RoleShare  *sh;

	if (from->count <= 0)
		return;
	sh = share_get(from->key.dboid, from->key.role, true);
	if (sh != NULL)
	{
		share_add(sh, from->kind, from->count, from->first_at, from->last_at);
		if (from->kind_mixed)
			sh->kind_mixed = true;
	}
	else
		cell_add(&rl->overflow[from->kind_mixed ? APIKEY_REQUEST_VERIFY : from->kind][APIKEY_INVALID],
				 from->count, from->first_at, from->last_at);
}

/*
 * Record one request (see APIKEY_REQUEST_LOG_NOTE, which calls this only
 * when the setting asks for it): key_id is the id the token gave; e the key
 * it names, NULL if none; the verdict is final.
 */
void
apikey_request_log_note(const char *key_id, const ApiKeyEntry *e,
						const ApiKeyRequest *req, const ApiKeyVerdict *v,
						TimestampTz now)
{
	ApiKeyRequestKind kind = take_kind();
	RequestKey	k;
	RequestAggregate a;
	uint32		hash;
	bool		wake;

	if (apikeys_audit_requests == APIKEYS_AUDIT_REQUESTS_OFF ||
		(v->status == APIKEY_VALID && apikeys_audit_requests != APIKEYS_AUDIT_REQUESTS_ALL))
		return;
	if (rl == NULL)
		return;					/* not preloaded: nothing is recorded */
	if (RecoveryInProgress() || !apikeys_database_served())
	{
		pg_atomic_fetch_add_u64(&rl->not_recorded, 1);
		return;
	}

	memset(&k, 0, sizeof(k));
	memset(&a, 0, sizeof(a));
	k.dboid = MyDatabaseId;
	k.charged = e != NULL ? e->role : GetSessionUserId();
	k.kind = (uint8) kind;
	k.status = (uint8) v->status;
	k.known = e != NULL;
	a.count = 1;
	a.first_at = a.last_at = now;
	a.db_user = GetSessionUserId();
	request_addr(req, &a.addr);
	if (e != NULL)
	{
		memcpy(k.key_id, key_id, APIKEY_KEY_ID_LEN);
		a.role = e->role;
		if (v->status == APIKEY_VALID)
		{
			k.db_user = a.db_user;
			k.addr = a.addr;
		}
	}
	else if (key_id != NULL)
		memcpy(a.tried_id, key_id, APIKEY_KEY_ID_LEN);
	/* (no key id: input that is no token; tried_id stays zero bytes) */
	hash = get_hash_value(rl_slots, &k);

	LWLockAcquire(&rl->lock, LW_EXCLUSIVE);
	wake = queue_add(&k, hash, &a);
	LWLockRelease(&rl->lock);
	pg_atomic_fetch_add_u64(&rl->recorded, 1);

	if (wake && pg_atomic_read_u32(&rl->wake_sent) == 0 &&
		pg_atomic_exchange_u32(&rl->wake_sent, 1) == 0)
		apikeys_wake_worker();
}


/*
 * ---------------------------------------------------------------------------
 * The area: size, attach, the file of a clean shutdown
 * ---------------------------------------------------------------------------
 */

/* Bytes of the area. */
Size
apikeys_request_log_size(void)
{
	return add_size(add_size(MAXALIGN(sizeof(RequestLogShared)),
							 hash_estimate_size(request_queue_size, sizeof(RequestSlot))),
					hash_estimate_size(request_queue_size, sizeof(RoleShare)));
}

static void request_log_dump(int code, Datum arg);
static void request_log_load(void);

/* Create or attach the area (the caller holds AddinShmemInitLock). */
void
apikeys_request_log_attach(void)
{
	bool		found;
	HASHCTL		info;

	rl = ShmemInitStruct("apikeys request log", sizeof(RequestLogShared), &found);
	if (!found)
	{
		memset(rl, 0, sizeof(RequestLogShared));
		rl->tranche = LWLockNewTrancheId();
		LWLockInitialize(&rl->lock, rl->tranche);
		rl->capacity = request_queue_size;
		pg_atomic_init_u32(&rl->wake_sent, 0);
		pg_atomic_init_u64(&rl->recorded, 0);
		pg_atomic_init_u64(&rl->overflowed, 0);
		pg_atomic_init_u64(&rl->role_capped, 0);
		pg_atomic_init_u64(&rl->written, 0);
		pg_atomic_init_u64(&rl->not_recorded, 0);
		pg_atomic_init_u64(&rl->in_flight, 0);
	}
	LWLockRegisterTranche(rl->tranche, "apikeys request log");

	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(RequestKey);
	info.entrysize = sizeof(RequestSlot);
	rl_slots = ShmemInitHash("apikeys request log queue",
							 request_queue_size, request_queue_size,
							 &info, HASH_ELEM | HASH_BLOBS);
	memset(&info, 0, sizeof(info));
	info.keysize = sizeof(RoleShareKey);
	info.entrysize = sizeof(RoleShare);
	rl_shares = ShmemInitHash("apikeys request log role shares",
							  request_queue_size, request_queue_size,
							  &info, HASH_ELEM | HASH_BLOBS);

	/* The postmaster reads the last shutdown's queue, and writes it at exit. */
	if (!IsUnderPostmaster)
	{
		on_shmem_exit(request_log_dump, (Datum) 0);
		if (!found)
			request_log_load();
	}
}

/*
 * on_shmem_exit in the postmaster: write the queue for the next start.
 * Not after a crash (code != 0): what was queued since the last flush is
 * the documented loss of a crash.
 */
static void
request_log_dump(int code, Datum arg)
{
	FILE	   *f;
	HASH_SEQ_STATUS seq;
	RequestSlot *s;
	RoleShare  *sh;
	uint32		header[5];

	if (code != 0 || rl == NULL || rl_slots == NULL)
		return;
	f = AllocateFile(REQUEST_LOG_FILE ".tmp", PG_BINARY_W);
	if (f == NULL)
		goto error;
	header[0] = REQUEST_LOG_LAYOUT;
	header[1] = sizeof(RequestSlot);
	header[2] = sizeof(rl->overflow);
	header[3] = sizeof(RoleShare);
	header[4] = (uint32) rl->nslots;
	if (fwrite(header, sizeof(header), 1, f) != 1 ||
		fwrite(rl->overflow, sizeof(rl->overflow), 1, f) != 1)
		goto error;
	hash_seq_init(&seq, rl_slots);
	while ((s = hash_seq_search(&seq)) != NULL)
	{
		if (fwrite(s, sizeof(RequestSlot), 1, f) != 1)
		{
			hash_seq_term(&seq);
			goto error;
		}
	}
	/* then the shares' counts past the bound (their nrows follow the slots) */
	hash_seq_init(&seq, rl_shares);
	while ((sh = hash_seq_search(&seq)) != NULL)
	{
		if (sh->count > 0 && fwrite(sh, sizeof(RoleShare), 1, f) != 1)
		{
			hash_seq_term(&seq);
			goto error;
		}
	}
	if (FreeFile(f))
	{
		f = NULL;
		goto error;
	}
	(void) durable_rename(REQUEST_LOG_FILE ".tmp", REQUEST_LOG_FILE, LOG);
	return;

error:
	ereport(LOG,
			(errcode_for_file_access(),
			 errmsg("could not write file \"%s\": %m", REQUEST_LOG_FILE ".tmp")));
	if (f != NULL)
		FreeFile(f);
	unlink(REQUEST_LOG_FILE ".tmp");
}

/* At postmaster start: read back the queue written at the last shutdown. */
static void
request_log_load(void)
{
	FILE	   *f;
	uint32		header[5];
	RequestCell cells[NKINDS][NSTATUSES];
	RequestSlot buf;
	RoleShare	shbuf;

	f = AllocateFile(REQUEST_LOG_FILE, PG_BINARY_R);
	if (f == NULL)
	{
		if (errno != ENOENT)
			ereport(LOG,
					(errcode_for_file_access(),
					 errmsg("could not read file \"%s\": %m", REQUEST_LOG_FILE)));
		return;
	}
	if (fread(header, sizeof(header), 1, f) == 1 &&
		header[0] == REQUEST_LOG_LAYOUT && header[1] == sizeof(RequestSlot) &&
		header[2] == sizeof(cells) && header[3] == sizeof(RoleShare) &&
		fread(cells, sizeof(cells), 1, f) == 1)
	{
		for (int i = 0; i < NKINDS; i++)
			for (int j = 0; j < NSTATUSES; j++)
				if (cells[i][j].count > 0)
					cell_add(&rl->overflow[i][j], cells[i][j].count,
							 cells[i][j].first_at, cells[i][j].last_at);
		/* (a lower apikeys.audit_request_queue_size folds the rest into cells) */
		for (uint32 i = 0; i < header[4] && fread(&buf, sizeof(buf), 1, f) == 1; i++)
		{
			if (buf.key.kind >= NKINDS || buf.key.status >= NSTATUSES ||
				buf.agg.count <= 0)
				continue;
			(void) queue_add(&buf.key, get_hash_value(rl_slots, &buf.key), &buf.agg);
		}
		while (fread(&shbuf, sizeof(shbuf), 1, f) == 1)
		{
			if (shbuf.kind >= NKINDS)
				continue;
			share_return(&shbuf);
		}
	}
	FreeFile(f);
	/* Read once: after a crash, the next start must not see it again. */
	unlink(REQUEST_LOG_FILE);
}


/*
 * ---------------------------------------------------------------------------
 * The worker: flush and retention
 * ---------------------------------------------------------------------------
 */

/* What a flush takes out of the queue. */
typedef struct FlushBatch
{
	RequestSlot *slots;
	int			nslots;
	RoleShare  *shares;			/* those with requests past the bound */
	int			nshares;
	RequestCell cells[NKINDS][NSTATUSES];
	int64		requests;		/* in all of it */
} FlushBatch;

/* Is there anything in the queue? */
static bool
queue_empty(void)
{
	bool		empty;

	LWLockAcquire(&rl->lock, LW_SHARED);
	empty = rl->nslots == 0 && rl->nshares == 0;
	for (int i = 0; empty && i < NKINDS; i++)
		for (int j = 0; empty && j < NSTATUSES; j++)
			empty = rl->overflow[i][j].count == 0;
	LWLockRelease(&rl->lock);
	return empty;
}

/* Take the whole queue into b (allocated in cxt). */
static void
queue_take(FlushBatch *b, MemoryContext cxt)
{
	HASH_SEQ_STATUS seq;
	RequestSlot *s;
	RoleShare  *sh;
	int			n = 0;
	int			nsh = 0;

	memset(b, 0, sizeof(*b));
	/* allocated before the lock is taken: no error while it is held */
	b->slots = MemoryContextAlloc(cxt, Max(rl->capacity, 1) * sizeof(RequestSlot));
	b->shares = MemoryContextAlloc(cxt, Max(rl->capacity, 1) * sizeof(RoleShare));
	LWLockAcquire(&rl->lock, LW_EXCLUSIVE);
	hash_seq_init(&seq, rl_slots);
	while ((s = hash_seq_search(&seq)) != NULL)
	{
		if (n < rl->capacity)
		{
			b->slots[n++] = *s;
			b->requests += s->agg.count;
		}
		hash_search(rl_slots, &s->key, HASH_REMOVE, NULL);
	}
	rl->nslots = 0;
	hash_seq_init(&seq, rl_shares);
	while ((sh = hash_seq_search(&seq)) != NULL)
	{
		if (sh->count > 0 && nsh < rl->capacity)
		{
			b->shares[nsh++] = *sh;
			b->requests += sh->count;
		}
		hash_search(rl_shares, &sh->key, HASH_REMOVE, NULL);
	}
	rl->nshares = 0;
	memcpy(b->cells, rl->overflow, sizeof(b->cells));
	memset(rl->overflow, 0, sizeof(rl->overflow));
	for (int i = 0; i < NKINDS; i++)
		for (int j = 0; j < NSTATUSES; j++)
			b->requests += b->cells[i][j].count;
	/* still pending for readers until the rows are committed */
	pg_atomic_write_u64(&rl->in_flight, (uint64) b->requests);
	pg_atomic_write_u32(&rl->wake_sent, 0);
	LWLockRelease(&rl->lock);
	b->nslots = n;
	b->nshares = nsh;
}

/* Put a batch back into the queue (its write failed). */
static void
queue_return(const FlushBatch *b)
{
	LWLockAcquire(&rl->lock, LW_EXCLUSIVE);
	for (int i = 0; i < b->nslots; i++)
		(void) queue_add(&b->slots[i].key, get_hash_value(rl_slots, &b->slots[i].key),
						 &b->slots[i].agg);
	for (int i = 0; i < b->nshares; i++)
		share_return(&b->shares[i]);
	for (int i = 0; i < NKINDS; i++)
		for (int j = 0; j < NSTATUSES; j++)
			if (b->cells[i][j].count > 0)
				cell_add(&rl->overflow[i][j], b->cells[i][j].count,
						 b->cells[i][j].first_at, b->cells[i][j].last_at);
	LWLockRelease(&rl->lock);
}

/* Is the request log's table here (a member of the extension)? */
static bool
table_ready(void)
{
	Oid			nsp = get_namespace_oid(APIKEYS_INTERNAL_SCHEMA, true);
	Oid			relid = apikeys_relation_oid(REQUEST_LOG_TABLE);
	Oid			catalog = apikeys_relation_oid(APIKEYS_CATALOG);

	return OidIsValid(nsp) && OidIsValid(relid) && OidIsValid(catalog) &&
		get_rel_namespace(relid) == nsp && get_rel_namespace(catalog) == nsp;
}

/* An array of n datums of a type (nulls may be NULL). */
static Datum
make_array(Datum *d, bool *nulls, int n, Oid elemtype)
{
	int16		typlen;
	bool		typbyval;
	char		typalign;
	int			dims[1] = {n};
	int			lbs[1] = {1};

	get_typlenbyvalalign(elemtype, &typlen, &typbyval, &typalign);
	return PointerGetDatum(construct_md_array(d, nulls, 1, dims, lbs, elemtype,
											  typlen, typbyval, typalign));
}

/* An inet datum, or null for an unknown or mixed address. */
static Datum
addr_datum(const RequestAddr *a)
{
	inet	   *res = (inet *) palloc0(sizeof(inet));

	ip_family(res) = a->family;
	ip_bits(res) = a->bits;
	memcpy(ip_addr(res), a->ip, ip_addrsize(res));
	SET_INET_VARSIZE(res);
	return InetPGetDatum(res);
}

/* Write a batch into the request log (inside the caller's transaction). */
static void
write_batch(const FlushBatch *b)
{
	enum
	{
		C_FIRST, C_LAST, C_KIND, C_STATUS, C_KEY_ID, C_KNOWN, C_ROLE, C_USER,
		C_ADDR, C_COUNT, C_OVERFLOW, C_CHARGED, NCOLS
	};
	static const Oid elemtypes[NCOLS] = {
		TIMESTAMPTZOID, TIMESTAMPTZOID, TEXTOID, TEXTOID, TEXTOID, BOOLOID,
		OIDOID, OIDOID, INETOID, INT8OID, BOOLOID, OIDOID
	};
	int			max = b->nslots + b->nshares + NKINDS * NSTATUSES;
	Datum	   *d[NCOLS];
	bool	   *nulls[NCOLS];
	Oid			types[NCOLS];
	Datum		values[NCOLS];
	int			n = 0;
	int			ret;

	for (int c = 0; c < NCOLS; c++)
	{
		d[c] = palloc(max * sizeof(Datum));
		nulls[c] = palloc0(max * sizeof(bool));
	}
	for (int i = 0; i < b->nslots; i++, n++)
	{
		const RequestKey *k = &b->slots[i].key;
		const RequestAggregate *a = &b->slots[i].agg;

		d[C_FIRST][n] = TimestampTzGetDatum(a->first_at);
		d[C_LAST][n] = TimestampTzGetDatum(a->last_at);
		d[C_KIND][n] = CStringGetTextDatum(kind_names[k->kind]);
		d[C_STATUS][n] = CStringGetTextDatum(apikey_status_name((ApiKeyStatus) k->status));
		if (k->known)
			d[C_KEY_ID][n] = PointerGetDatum(cstring_to_text_with_len(k->key_id, APIKEY_KEY_ID_LEN));
		else if (!a->id_mixed && a->tried_id[0] != '\0')
			d[C_KEY_ID][n] = PointerGetDatum(cstring_to_text_with_len(a->tried_id, APIKEY_KEY_ID_LEN));
		else
			nulls[C_KEY_ID][n] = true;
		d[C_KNOWN][n] = BoolGetDatum(k->known);
		d[C_ROLE][n] = ObjectIdGetDatum(a->role);
		d[C_USER][n] = ObjectIdGetDatum(a->user_mixed ? InvalidOid : a->db_user);
		if (a->addr_mixed || a->addr.family == 0)
			nulls[C_ADDR][n] = true;
		else
			d[C_ADDR][n] = addr_datum(&a->addr);
		d[C_COUNT][n] = Int64GetDatum(a->count);
		d[C_OVERFLOW][n] = BoolGetDatum(false);
		d[C_CHARGED][n] = ObjectIdGetDatum(k->charged);
	}
	/* one row per role past its bound: only the role, the count and the times */
	for (int i = 0; i < b->nshares; i++, n++)
	{
		const RoleShare *sh = &b->shares[i];

		d[C_FIRST][n] = TimestampTzGetDatum(sh->first_at);
		d[C_LAST][n] = TimestampTzGetDatum(sh->last_at);
		if (sh->kind_mixed)
			nulls[C_KIND][n] = true;
		else
			d[C_KIND][n] = CStringGetTextDatum(kind_names[sh->kind]);
		d[C_STATUS][n] = CStringGetTextDatum("overflow");
		nulls[C_KEY_ID][n] = true;
		nulls[C_KNOWN][n] = true;
		d[C_ROLE][n] = ObjectIdGetDatum(InvalidOid);
		d[C_USER][n] = ObjectIdGetDatum(InvalidOid);
		nulls[C_ADDR][n] = true;
		d[C_COUNT][n] = Int64GetDatum(sh->count);
		d[C_OVERFLOW][n] = BoolGetDatum(true);
		d[C_CHARGED][n] = ObjectIdGetDatum(sh->key.role);
	}
	for (int i = 0; i < NKINDS; i++)
	{
		for (int j = 0; j < NSTATUSES; j++)
		{
			const RequestCell *c = &b->cells[i][j];

			if (c->count == 0)
				continue;
			d[C_FIRST][n] = TimestampTzGetDatum(c->first_at);
			d[C_LAST][n] = TimestampTzGetDatum(c->last_at);
			d[C_KIND][n] = CStringGetTextDatum(kind_names[i]);
			d[C_STATUS][n] = CStringGetTextDatum(apikey_status_name((ApiKeyStatus) j));
			nulls[C_KEY_ID][n] = true;
			nulls[C_KNOWN][n] = true;
			d[C_ROLE][n] = ObjectIdGetDatum(InvalidOid);
			d[C_USER][n] = ObjectIdGetDatum(InvalidOid);
			nulls[C_ADDR][n] = true;
			d[C_COUNT][n] = Int64GetDatum(c->count);
			d[C_OVERFLOW][n] = BoolGetDatum(true);
			d[C_CHARGED][n] = ObjectIdGetDatum(InvalidOid);
			n++;
		}
	}
	if (n == 0)
		return;
	for (int c = 0; c < NCOLS; c++)
	{
		types[c] = get_array_type(elemtypes[c]);
		values[c] = make_array(d[c], nulls[c], n, elemtypes[c]);
	}

	/* names as they are now: a key's name, role names (oids do not survive a dump) */
	ret = SPI_execute_with_args(
		"INSERT INTO apikeys_internal.request_log"
		"       (first_at, last_at, kind, status, key_id, key_exists, key_name, key_role,"
		"        db_user, client_addr, requests, overflow, charged_role)"
		" SELECT t.f, t.l, t.kind, t.status, t.kid, t.known, k.name,"
		"        CASE WHEN t.role OPERATOR(pg_catalog.<>) 0::pg_catalog.oid"
		"             THEN pg_catalog.pg_get_userbyid(t.role) END,"
		"        CASE WHEN t.usr OPERATOR(pg_catalog.<>) 0::pg_catalog.oid"
		"             THEN pg_catalog.pg_get_userbyid(t.usr) END,"
		"        t.addr, t.n, t.ovf,"
		"        CASE WHEN t.chg OPERATOR(pg_catalog.<>) 0::pg_catalog.oid"
		"             THEN pg_catalog.pg_get_userbyid(t.chg) END"
		"   FROM ROWS FROM (pg_catalog.unnest($1), pg_catalog.unnest($2), pg_catalog.unnest($3),"
		"                   pg_catalog.unnest($4), pg_catalog.unnest($5), pg_catalog.unnest($6),"
		"                   pg_catalog.unnest($7), pg_catalog.unnest($8), pg_catalog.unnest($9),"
		"                   pg_catalog.unnest($10), pg_catalog.unnest($11), pg_catalog.unnest($12))"
		"        AS t(f, l, kind, status, kid, known, role, usr, addr, n, ovf, chg)"
		"   LEFT JOIN apikeys_internal.key_catalog k"
		"          ON t.known AND k.key_id OPERATOR(pg_catalog.=) t.kid",
		NCOLS, types, values, NULL, false, 0);
	if (ret != SPI_OK_INSERT)
		elog(ERROR, "apikeys worker: writing the request log failed: %s",
			 SPI_result_code_string(ret));
}

/*
 * Duty "flush" for requests (worker.c calls it with its own flush): take
 * the queue, write it in a transaction of its own, and put it back if that
 * fails.  Where the extension is not installed (or not yet updated) the
 * queue can never be written: it is let go, counted as not recorded.
 */
void
apikeys_request_log_flush(void)
{
	static MemoryContext batch_cxt = NULL;
	MemoryContext cxt = CurrentMemoryContext;
	FlushBatch *batch;
	volatile bool taken = false;

	if (rl == NULL || queue_empty())
	{
		if (rl != NULL)
			pg_atomic_write_u32(&rl->wake_sent, 0);
		return;
	}
	/* the batch outlives an aborted transaction, to be put back */
	if (batch_cxt == NULL)
		batch_cxt = AllocSetContextCreate(TopMemoryContext, "apikeys request log flush",
										  ALLOCSET_DEFAULT_SIZES);
	batch = MemoryContextAllocZero(batch_cxt, sizeof(FlushBatch));

	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		bool		ready;

		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "apikeys: writing the request log");
		ready = table_ready();
		queue_take(batch, batch_cxt);
		taken = true;
		if (ready)
			write_batch(batch);
		SPI_finish();
		PopActiveSnapshot();
		CommitTransactionCommand();
		taken = false;
		pg_atomic_fetch_add_u64(ready ? &rl->written : &rl->not_recorded,
								(uint64) batch->requests);
		pg_atomic_write_u64(&rl->in_flight, 0);
	}
	PG_CATCH();
	{
		MemoryContextSwitchTo(cxt);
		EmitErrorReport();
		FlushErrorState();
		AbortCurrentTransaction();
		/* nothing was written: it goes back, for the next flush */
		if (taken)
			queue_return(batch);
		pg_atomic_write_u64(&rl->in_flight, 0);
	}
	PG_END_TRY();
	pgstat_report_activity(STATE_IDLE, NULL);
	MemoryContextReset(batch_cxt);
}

/* Duty "maintain" for requests (hourly): drop rows past the retention. */
void
apikeys_request_log_maintain(void)
{
	MemoryContext cxt = CurrentMemoryContext;

	if (request_retention <= 0)
		return;
	SetCurrentStatementStartTimestamp();
	StartTransactionCommand();
	PG_TRY();
	{
		SPI_connect();
		PushActiveSnapshot(GetTransactionSnapshot());
		pgstat_report_activity(STATE_RUNNING, "apikeys: request log retention");
		if (table_ready())
		{
			Oid			types[1] = {INT4OID};
			Datum		values[1] = {Int32GetDatum(request_retention)};
			int			ret;

			ret = SPI_execute_with_args("DELETE FROM apikeys_internal.request_log r"
										" WHERE r.last_at OPERATOR(pg_catalog.<)"
										"       (pg_catalog.now() OPERATOR(pg_catalog.-)"
										"        pg_catalog.make_interval(mins => $1))",
										1, types, values, NULL, false, 0);
			if (ret != SPI_OK_DELETE)
				elog(ERROR, "apikeys worker: request log retention failed: %s",
					 SPI_result_code_string(ret));
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
 * ---------------------------------------------------------------------------
 * Monitoring and settings
 * ---------------------------------------------------------------------------
 */

/*
 * SQL function: apikeys.request_log_stats() returns record
 *
 * The queue and its counters, for the whole server since it started.
 */
PG_FUNCTION_INFO_V1(apikeys_request_log_stats);
Datum
apikeys_request_log_stats(PG_FUNCTION_ARGS)
{
	TupleDesc	tupdesc;
	Datum		values[8];
	bool		nulls[8];
	int			nslots;
	int64		pending = 0;
	HASH_SEQ_STATUS seq;
	RequestSlot *s;
	RoleShare  *sh;

	if (rl == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("the request log is unavailable"),
				 errdetail("Requests made with a key are queued in shared memory, which apikeys has only when it is loaded at server start; without it none are recorded."),
				 errhint("Add apikeys to shared_preload_libraries in postgresql.conf and restart the server.")));
	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "return type must be a row type");
	tupdesc = BlessTupleDesc(tupdesc);

	LWLockAcquire(&rl->lock, LW_SHARED);
	nslots = rl->nslots;
	hash_seq_init(&seq, rl_slots);
	while ((s = hash_seq_search(&seq)) != NULL)
		pending += s->agg.count;
	hash_seq_init(&seq, rl_shares);
	while ((sh = hash_seq_search(&seq)) != NULL)
		pending += sh->count;
	for (int i = 0; i < NKINDS; i++)
		for (int j = 0; j < NSTATUSES; j++)
			pending += rl->overflow[i][j].count;
	LWLockRelease(&rl->lock);
	pending += (int64) pg_atomic_read_u64(&rl->in_flight);

	memset(nulls, false, sizeof(nulls));
	values[0] = Int32GetDatum(nslots);
	values[1] = Int32GetDatum(rl->capacity);
	values[2] = Int64GetDatum(pending);
	values[3] = Int64GetDatum((int64) pg_atomic_read_u64(&rl->recorded));
	values[4] = Int64GetDatum((int64) pg_atomic_read_u64(&rl->overflowed));
	values[5] = Int64GetDatum((int64) pg_atomic_read_u64(&rl->written));
	values[6] = Int64GetDatum((int64) pg_atomic_read_u64(&rl->not_recorded));
	values[7] = Int64GetDatum((int64) pg_atomic_read_u64(&rl->role_capped));
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/* Define the settings (the server-start one only when preloading). */
void
apikeys_request_log_define_settings(bool preloading)
{
	DefineCustomEnumVariable("apikeys.audit_requests",
							 "Which requests made with a key are recorded in apikeys.request_log: off, failures or all.",
							 "Only superusers (or roles granted SET on it) can change it, also per role or database, so a role cannot stop the recording of its own failures.",
							 &apikeys_audit_requests,
							 APIKEYS_AUDIT_REQUESTS_FAILURES,
							 audit_requests_options,
							 PGC_SUSET, 0,
							 NULL, NULL, NULL);
	if (preloading)
		DefineCustomIntVariable("apikeys.audit_request_queue_size",
								"Aggregates of requests the request log can queue in shared memory between two flushes.",
								"Past it, requests are counted per kind and status only. Takes effect at server start.",
								&request_queue_size,
								4096, 1, 1000000,
								PGC_POSTMASTER, 0,
								NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.audit_request_rows_per_role",
							"Rows of the request log one role can cause per flush, past which its requests are counted in one overflow row.",
							"A role is the key's role, or the session user for input that names no key. Only superusers change it (postgresql.conf, reload).",
							&request_rows_per_role,
							200, 1, 1000000,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
	DefineCustomIntVariable("apikeys.audit_request_retention",
							"How long rows of the request log are kept; 0 keeps them forever.",
							NULL,
							&request_retention,
							90 * 24 * 60, 0, INT_MAX,
							PGC_SIGHUP, GUC_UNIT_MIN,
							NULL, NULL, NULL);
}
