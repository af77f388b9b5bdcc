/*
 * verify.c
 *		The verify hot path: apikey_verify(text) and apikey_verify(apikey).
 *
 * C end to end: the token is parsed and checksummed in place, the key is
 * found in the backend-local key cache (cache.c; on a miss, a direct index
 * scan of the catalog: no SPI, no SQL, no SECURITY DEFINER), the secret's
 * SHA-256 (or its HMAC under the key's pepper, pepper.c) is compared in
 * constant time, and status, expiry, role, restrictions and scope are
 * checked.  Bad client input of any kind yields status 'invalid'; this
 * file raises only for can't-happen states and for a key whose pepper the
 * server lacks (a configuration error, named as such).
 *
 * The cache is coherent with commits (cache.c reads the invalidation queue
 * before every lookup, and loads with the latest snapshot), so a revoke is
 * effective for every session from the moment it commits, whatever the
 * caller's isolation level.  Repeats within one statement are answered by
 * the statement memo below.
 */
#include "postgres.h"

#include <sys/socket.h>

#include "access/detoast.h"
#include "access/htup_details.h"
#include "access/tupmacs.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_type_d.h"
#include "common/hashfn.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "tcop/pquery.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/portal.h"
#include "utils/syscache.h"
#include "utils/timestamp.h"
#include "utils/typcache.h"

#include "apikeys.h"
#include "compat.h"


/* Columns of apikeys.verification, in type order. */
enum
{
	Vf_valid = 0,
	Vf_status,
	Vf_key_id,
	Vf_role,
	Vf_scopes,
	Vf_expires_at,
	Vf_metadata,
	Vf_name,
	Vf_natts_0_1,				/* 0.1.0 ends here */
	Vf_retry_after = Vf_natts_0_1,
	Vf_remaining,
	Vf_natts
};

/*
 * Does a key holding scopes hold want?  A held scope ending in '*' holds
 * every scope that starts with what precedes the '*' ('jobs:*' holds
 * 'jobs:read'; '*' holds everything); any other held scope only itself.
 */
bool
apikey_scopes_hold(ArrayType *scopes, const char *want, int want_len)
{
	int			n = ArrayGetNItems(ARR_NDIM(scopes), ARR_DIMS(scopes));
	bits8	   *nullmap = ARR_NULLBITMAP(scopes);
	const char *ptr;

	/* walk the text elements in place: no deconstructed copy */
	ptr = (const char *) scopes +
		(ARR_HASNULL(scopes) ? (Size) scopes->dataoffset :
		 ARR_OVERHEAD_NONULLS(ARR_NDIM(scopes)));
	for (int i = 0; i < n; i++)
	{
		const char *p;
		int			len;

		if (nullmap != NULL && !(nullmap[i / 8] & (1 << (i % 8))))
			continue;
		ptr = (const char *) att_align_pointer(ptr, TYPALIGN_INT, -1, ptr);
		p = VARDATA_ANY(ptr);
		len = VARSIZE_ANY_EXHDR(ptr);
		ptr += VARSIZE_ANY(ptr);
		if (len == want_len && memcmp(p, want, len) == 0)
			return true;
		if (len > 0 && p[len - 1] == '*' &&
			want_len >= len - 1 && memcmp(p, want, len - 1) == 0)
			return true;
	}
	return false;
}

/*
 * An IPv4 address written as IPv4-mapped IPv6 (::ffff:a.b.c.d), as a
 * dual-stack listener reports it, is matched as the IPv4 address.
 */
static inet *
unmap_ipv4(inet *ip)
{
	static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	inet	   *v4;

	if (ip_family(ip) != PGSQL_AF_INET6 || ip_bits(ip) < 96 ||
		memcmp(ip_addr(ip), mapped, sizeof(mapped)) != 0)
		return ip;
	v4 = (inet *) palloc0(sizeof(inet));
	ip_family(v4) = PGSQL_AF_INET;
	ip_bits(v4) = ip_bits(ip) - 96;
	memcpy(ip_addr(v4), ip_addr(ip) + 12, 4);
	SET_INET_VARSIZE(v4);
	return v4;
}

/* Is client_ip inside one of the networks? */
static bool
ip_allowed(ArrayType *networks, inet *client_ip)
{
	Datum	   *elems;
	bool	   *enulls;
	int			n;
	inet	   *ip = unmap_ipv4(client_ip);

	deconstruct_array(networks, CIDROID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
	for (int i = 0; i < n; i++)
	{
		if (!enulls[i] &&
			DatumGetBool(DirectFunctionCall2(network_subeq, InetPGetDatum(ip),
											 elems[i])))
			return true;
	}
	return false;
}

/* Is c allowed in the host part of an origin? */
static inline bool
is_host_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		c == '-' || c == '.';
}

/*
 * Is origin (as sent by a browser: scheme://host[:port], compared without
 * regard to ASCII case) one of the allowed origins?  An allowed origin
 * scheme://<star>.example.com admits every subdomain of example.com, at any
 * depth, with the same scheme and port, and not example.com itself.
 */
static bool
origin_allowed(ArrayType *origins, text *origin)
{
	Datum	   *elems;
	bool	   *enulls;
	int			n;
	int			len = VARSIZE_ANY_EXHDR(origin);
	char	   *o;

	if (len == 0 || len > 255)
		return false;
	o = pnstrdup(VARDATA_ANY(origin), len);
	for (int i = 0; i < len; i++)
		o[i] = pg_ascii_tolower((unsigned char) o[i]);

	deconstruct_array(origins, TEXTOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
	for (int i = 0; i < n; i++)
	{
		text	   *e;
		const char *a;
		int			alen;
		const char *star;

		if (enulls[i])
			continue;
		e = DatumGetTextPP(elems[i]);
		a = VARDATA_ANY(e);
		alen = VARSIZE_ANY_EXHDR(e);
		star = memchr(a, '*', alen);
		if (star == NULL)
		{
			if (alen == len && memcmp(a, o, len) == 0)
				return true;
		}
		else
		{
			/* scheme:// before the star, .domain[:port] after it */
			int			head = star - a;
			int			tail = alen - head - 1;
			int			sub;

			if (len <= head + tail || memcmp(o, a, head) != 0 ||
				memcmp(o + len - tail, star + 1, tail) != 0)
				continue;
			sub = len - head - tail;	/* the subdomain labels */
			if (o[head] == '.' || o[head + sub - 1] == '.')
				continue;
			for (int j = head; j < head + sub; j++)
			{
				if (!is_host_char(o[j]))
				{
					sub = 0;
					break;
				}
			}
			if (sub > 0)
				return true;
		}
	}
	return false;
}

/* The name of a status, as apikeys.verification reports it. */
const char *
apikey_status_name(ApiKeyStatus status)
{
	switch (status)
	{
		case APIKEY_VALID:
			return "valid";
		case APIKEY_INVALID:
			return "invalid";
		case APIKEY_REVOKED:
			return "revoked";
		case APIKEY_DISABLED:
			return "disabled";
		case APIKEY_EXPIRED:
			return "expired";
		case APIKEY_IP_NOT_ALLOWED:
			return "ip_not_allowed";
		case APIKEY_ORIGIN_NOT_ALLOWED:
			return "origin_not_allowed";
		case APIKEY_INSUFFICIENT_SCOPE:
			return "insufficient_scope";
		case APIKEY_RATE_LIMITED:
			return "rate_limited";
		case APIKEY_QUOTA_EXCEEDED:
			return "quota_exceeded";
	}
	return "invalid";
}

/*
 * One verification per statement.
 *
 * PostgreSQL evaluates (apikey_verify(t)).valid, (apikey_verify(t)).status
 * as two calls, and (apikey_verify(t)).* as one per field.  The statement
 * memo makes them one verification: within one statement (the portal that
 * runs it, with every function it calls), a repeat of the same token with
 * the same arguments returns the first call's outcome, and is counted and
 * charged once (DESIGN section 3: one request, one verification).  A query
 * that runs through a cursor (a PL/pgSQL FOR loop over a query) runs in a
 * portal of its own, so it is a statement of its own.  If an invalidation
 * arrived in between (a key was changed and committed, in this session or
 * another), the repeat re-evaluates the key as it is now, so no change is
 * ever hidden, but still counts once.
 *
 * The memo lives in a small memory context under the portal, so it ends
 * with the statement; it remembers the last APIKEY_MEMO_MAX distinct
 * verifications of the statement.  A key is its token identity (prefix,
 * key id, SHA-256 of the secret) and the request's arguments (cost
 * included), compared in full.  Up to MEMO_LINEAR entries are searched
 * linearly; past that, an index of chained buckets is built.
 */
#define APIKEY_MEMO_MAX		1024
#define MEMO_LINEAR			8
#define MEMO_FIRST			2	/* entries allocated at first */
#define MEMO_BUCKETS		(2 * APIKEY_MEMO_MAX)

typedef struct MemoEntry
{
	uint32		hash;
	int32		next;			/* next index in the bucket chain, or -1 */
	int32		scope_len;		/* -1: argument was null */
	int32		ip_len;
	int32		origin_len;
	uint8		prefix_len;
	char		prefix[APIKEY_PREFIX_MAXLEN];
	char		key_id[APIKEY_KEY_ID_LEN];
	uint8		digest[APIKEY_DIGEST_LEN];
	int32		cost;
	char	   *args;			/* scope, client_ip, origin bytes, concatenated */
	uint64		generation;		/* key cache generation it was evaluated at */
	/* the outcome: status, and what limits.c reported */
	ApiKeyStatus status;
	bool		has_retry_after;
	bool		has_remaining;
	int64		retry_after;
	int64		remaining;
} MemoEntry;

typedef struct StatementMemo
{
	struct StatementMemo *next; /* the memo of another live portal */
	Portal		portal;
	LocalTransactionId lxid;
	MemoryContext cxt;
	MemoryContextCallback on_reset;
	MemoEntry  *entries;
	int			capacity;
	int			count;			/* entries in use (up to APIKEY_MEMO_MAX) */
	int			oldest;			/* next one to overwrite once full */
	int32	   *buckets;		/* NULL until count passes MEMO_LINEAR */
} StatementMemo;

/*
 * The memos of the portals that verified, newest first: a statement may
 * run another portal while it runs (a PL/pgSQL FOR loop's cursor; an
 * extended-protocol client interleaving two), and each keeps its own.
 */
static StatementMemo *memos = NULL;
static uint64 memo_repeats = 0;

/* Memory context callback: the statement's portal is gone. */
static void
memo_reset_callback(void *arg)
{
	StatementMemo **p = &memos;

	while (*p != NULL && *p != (StatementMemo *) arg)
		p = &(*p)->next;
	if (*p != NULL)
		*p = (*p)->next;
}

/* The memo of the running statement, created on first use; NULL if none. */
static StatementMemo *
statement_memo(void)
{
	Portal		portal = ActivePortal;
	LocalTransactionId lxid = APIKEYS_CURRENT_LXID();
	MemoryContext cxt;
	StatementMemo *memo;

	if (portal == NULL || portal->portalContext == NULL)
		return NULL;
	for (memo = memos; memo != NULL; memo = memo->next)
		if (memo->portal == portal)
			break;
	if (memo != NULL && memo->lxid == lxid)
		return memo;
	if (memo != NULL)
		MemoryContextDelete(memo->cxt); /* a held cursor's, from another transaction */

	cxt = AllocSetContextCreate(portal->portalContext, "apikeys statement memo",
								ALLOCSET_SMALL_SIZES);
	memo = MemoryContextAllocZero(cxt, sizeof(StatementMemo));
	memo->portal = portal;
	memo->lxid = lxid;
	memo->cxt = cxt;
	memo->capacity = MEMO_FIRST;
	memo->entries = MemoryContextAlloc(cxt, MEMO_FIRST * sizeof(MemoEntry));
	memo->on_reset.func = memo_reset_callback;
	memo->on_reset.arg = memo;
	MemoryContextRegisterResetCallback(cxt, &memo->on_reset);
	memo->next = memos;
	memos = memo;
	return memo;
}

/* Bytes of an optional varlena argument, -1 for null. */
static inline int32
arg_len(const void *v)
{
	return v == NULL ? -1 : (int32) VARSIZE_ANY_EXHDR(v);
}

/* Hash of a memo key: the digest is already uniformly random. */
static uint32
memo_hash(const char *key_id, const uint8 *digest, const ApiKeyRequest *req)
{
	uint32		h;

	memcpy(&h, digest, sizeof(h));
	h ^= hash_bytes((const unsigned char *) key_id, APIKEY_KEY_ID_LEN);
	if (req->scope != NULL)
		h = hash_combine(h, hash_bytes((const unsigned char *) VARDATA_ANY(req->scope),
									   VARSIZE_ANY_EXHDR(req->scope)));
	return h;
}

/* Does a memo entry hold exactly this token and these arguments? */
static bool
memo_matches(const MemoEntry *m, uint32 hash, const char *prefix, int prefix_len,
			 const char *key_id, const uint8 *digest, const ApiKeyRequest *req)
{
	const char *a = m->args;

	if (m->hash != hash || m->prefix_len != prefix_len ||
		memcmp(m->digest, digest, APIKEY_DIGEST_LEN) != 0 ||
		memcmp(m->key_id, key_id, APIKEY_KEY_ID_LEN) != 0 ||
		memcmp(m->prefix, prefix, prefix_len) != 0 ||
		m->cost != req->cost ||
		m->scope_len != arg_len(req->scope) ||
		m->ip_len != arg_len(req->client_ip) ||
		m->origin_len != arg_len(req->origin))
		return false;
	if (m->scope_len > 0)
	{
		if (memcmp(a, VARDATA_ANY(req->scope), m->scope_len) != 0)
			return false;
		a += m->scope_len;
	}
	if (m->ip_len > 0)
	{
		if (memcmp(a, VARDATA_ANY(req->client_ip), m->ip_len) != 0)
			return false;
		a += m->ip_len;
	}
	if (m->origin_len > 0 &&
		memcmp(a, VARDATA_ANY(req->origin), m->origin_len) != 0)
		return false;
	return true;
}

/* Find an earlier verification of this token with these arguments. */
static MemoEntry *
memo_lookup(StatementMemo *mm, uint32 hash, const char *prefix, int prefix_len,
			const char *key_id, const uint8 *digest, const ApiKeyRequest *req)
{
	if (mm->buckets == NULL)
	{
		for (int i = 0; i < mm->count; i++)
			if (memo_matches(&mm->entries[i], hash, prefix, prefix_len,
							 key_id, digest, req))
				return &mm->entries[i];
		return NULL;
	}
	for (int32 i = mm->buckets[hash % MEMO_BUCKETS]; i >= 0; i = mm->entries[i].next)
		if (memo_matches(&mm->entries[i], hash, prefix, prefix_len,
						 key_id, digest, req))
			return &mm->entries[i];
	return NULL;
}

/* Unlink entry i from its bucket chain. */
static void
memo_unlink(StatementMemo *mm, int32 i)
{
	int32	   *link = &mm->buckets[mm->entries[i].hash % MEMO_BUCKETS];

	while (*link >= 0)
	{
		if (*link == i)
		{
			*link = mm->entries[i].next;
			return;
		}
		link = &mm->entries[*link].next;
	}
}

/* Remember a verification; overwrites the oldest once the memo is full. */
static MemoEntry *
memo_remember(StatementMemo *mm, uint32 hash, const char *prefix, int prefix_len,
			  const char *key_id, const uint8 *digest, const ApiKeyRequest *req)
{
	MemoEntry  *m;
	int32		i;
	Size		args_len = 0;
	char	   *a;

	if (mm->count < APIKEY_MEMO_MAX)
	{
		if (mm->count == mm->capacity)
		{
			mm->capacity *= 2;
			mm->entries = repalloc(mm->entries, mm->capacity * sizeof(MemoEntry));
		}
		i = mm->count++;
		if (mm->count > MEMO_LINEAR && mm->buckets == NULL)
		{
			/* index every entry so far; later ones are linked as they come */
			mm->buckets = MemoryContextAlloc(mm->cxt, MEMO_BUCKETS * sizeof(int32));
			memset(mm->buckets, 0xFF, MEMO_BUCKETS * sizeof(int32));
			for (int32 j = 0; j < i; j++)
			{
				int32	   *head = &mm->buckets[mm->entries[j].hash % MEMO_BUCKETS];

				mm->entries[j].next = *head;
				*head = j;
			}
		}
	}
	else
	{
		i = mm->oldest;
		mm->oldest = (mm->oldest + 1) % APIKEY_MEMO_MAX;
		memo_unlink(mm, i);
		if (mm->entries[i].args != NULL)
			pfree(mm->entries[i].args);
	}

	m = &mm->entries[i];
	m->hash = hash;
	m->prefix_len = (uint8) prefix_len;
	memcpy(m->prefix, prefix, prefix_len);
	memcpy(m->key_id, key_id, APIKEY_KEY_ID_LEN);
	memcpy(m->digest, digest, APIKEY_DIGEST_LEN);
	m->cost = req->cost;
	m->scope_len = arg_len(req->scope);
	m->ip_len = arg_len(req->client_ip);
	m->origin_len = arg_len(req->origin);
	args_len = Max(m->scope_len, 0) + Max(m->ip_len, 0) + Max(m->origin_len, 0);
	m->args = NULL;
	if (args_len > 0)
	{
		a = m->args = MemoryContextAlloc(mm->cxt, args_len);
		if (m->scope_len > 0)
		{
			memcpy(a, VARDATA_ANY(req->scope), m->scope_len);
			a += m->scope_len;
		}
		if (m->ip_len > 0)
		{
			memcpy(a, VARDATA_ANY(req->client_ip), m->ip_len);
			a += m->ip_len;
		}
		if (m->origin_len > 0)
			memcpy(a, VARDATA_ANY(req->origin), m->origin_len);
	}
	if (mm->buckets != NULL)
	{
		int32	   *head = &mm->buckets[hash % MEMO_BUCKETS];

		m->next = *head;
		*head = i;
	}
	return m;
}

/* Keep a verification's outcome in its memo entry. */
static void
memo_keep(MemoEntry *m, const ApiKeyVerdict *v, uint64 generation)
{
	m->generation = generation;
	m->status = v->status;
	m->has_retry_after = v->has_retry_after;
	m->retry_after = v->retry_after;
	m->has_remaining = v->has_remaining;
	m->remaining = v->remaining;
}

/* Give a verification the outcome kept in its memo entry. */
static void
memo_restore(const MemoEntry *m, ApiKeyVerdict *v)
{
	v->status = m->status;
	v->has_retry_after = m->has_retry_after;
	v->retry_after = m->retry_after;
	v->has_remaining = m->has_remaining;
	v->remaining = m->remaining;
}

/* Verifications answered by the statement memo, for apikey_cache_stats(). */
uint64
apikey_verify_repeats(void)
{
	return memo_repeats;
}

/*
 * Does the presented secret (its SHA-256, digest) match a stored hash?
 * SHA-256 keys compare here; peppered ones through pepper.c.  *missing
 * receives the pepper id of a peppered hash this server cannot check.
 */
static inline bool
secret_matches(int16 version, const char *pepper_id, const uint8 *stored,
			   const uint8 *digest, const char **missing)
{
	bool		lacks = false;
	bool		ok;

	if (likely(version == APIKEY_HASH_SHA256))
		return apikey_digest_equal(stored, digest, APIKEY_DIGEST_LEN);
	if (version != APIKEY_HASH_HMAC_SHA256)
		return false;
	ok = apikey_peppered_match(pepper_id, stored, digest, &lacks);
	if (lacks && *missing == NULL)
		*missing = pepper_id;
	return ok;
}

/* The name of a role into name (NAMEDATALEN); false if it is gone. */
static bool
role_name_of(Oid role, char *name)
{
	HeapTuple	roletup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(role));

	if (!HeapTupleIsValid(roletup))
		return false;
	strlcpy(name, NameStr(((Form_pg_authid) GETSTRUCT(roletup))->rolname),
			NAMEDATALEN);
	ReleaseSysCache(roletup);
	return true;
}

/*
 * Judge a key entry against a presented secret and a request, everything
 * but limits.  role_name receives the key's role name (empty if the role is
 * gone).  *counted is set when the result is a failure that counts against
 * the key id in its usage (a wrong secret, an orphaned key), cleared for an
 * id that names no key.
 */
static ApiKeyStatus
evaluate(const ApiKeyEntry *e, const char *prefix, int prefix_len,
		 const uint8 *digest, const ApiKeyRequest *req, TimestampTz now,
		 char *role_name, bool *counted)
{
	bool		secret_ok;
	const char *missing = NULL;
	ArrayType  *arr;

	role_name[0] = '\0';
	*counted = false;
	if (e == NULL || e->prefix_len != prefix_len ||
		memcmp(e->prefix, prefix, prefix_len) != 0)
		return APIKEY_INVALID;
	*counted = true;

	secret_ok = secret_matches(e->hash_version, e->pepper_id, e->hash, digest,
							   &missing);
	/* The previous secret of a rotation with grace. */
	if (!secret_ok && e->prev_off != 0 && ApiKeyEntryPrev(e)->valid_until > now)
		secret_ok = secret_matches(ApiKeyEntryPrev(e)->hash_version,
								   ApiKeyEntryPrev(e)->pepper_id,
								   ApiKeyEntryPrev(e)->hash, digest, &missing);
	if (!secret_ok)
	{
		/*
		 * A hash made under a pepper this server lacks cannot say: that is
		 * an error naming the pepper, not 'invalid' (pepper.c).  A revoked
		 * key authenticates nothing whatever its secret, so it needs no
		 * pepper: without it, it is merely invalid.
		 */
		if (missing != NULL && e->state != 'r')
			apikey_pepper_missing_error(e->key_id, missing);
		return APIKEY_INVALID;
	}

	/* A key whose role was dropped is orphaned: it authenticates nobody. */
	if (!role_name_of(e->role, role_name))
		return APIKEY_INVALID;

	if (e->state == 'r')
		return APIKEY_REVOKED;
	if (e->state != 'a')
		return APIKEY_DISABLED;
	if (e->has_expiry && e->expires_at <= now)
		return APIKEY_EXPIRED;
	if ((arr = ApiKeyEntryAllowedIps(e)) != NULL &&
		(req->client_ip == NULL || !ip_allowed(arr, req->client_ip)))
		return APIKEY_IP_NOT_ALLOWED;
	if ((arr = ApiKeyEntryAllowedOrigins(e)) != NULL &&
		(req->origin == NULL || !origin_allowed(arr, req->origin)))
		return APIKEY_ORIGIN_NOT_ALLOWED;
	if (req->scope != NULL &&
		((arr = ApiKeyEntryScopes(e)) == NULL ||
		 !apikey_scopes_hold(arr, VARDATA_ANY(req->scope),
							 VARSIZE_ANY_EXHDR(req->scope))))
		return APIKEY_INSUFFICIENT_SCOPE;

	return APIKEY_VALID;
}

/* The key's id and role in a verdict that is not (yet) invalid. */
static inline void
verdict_key(ApiKeyVerdict *out, const ApiKeyEntry *e)
{
	if (out->status == APIKEY_INVALID)
		return;
	memcpy(out->key_id, e->key_id, APIKEY_KEY_ID_LEN);
	out->key_id[APIKEY_KEY_ID_LEN] = '\0';
	out->role = e->role;
}

/* Copy a varlena out of a cache entry into the current memory context. */
static void *
copy_varlena(const void *v)
{
	Size		len;
	void	   *copy;

	if (v == NULL)
		return NULL;
	len = VARSIZE(v);
	copy = palloc(len);
	memcpy(copy, v, len);
	return copy;
}

/*
 * Verify a parsed token (prefix, key id, digest of the secret) against the
 * key cache and the request, and fill in the verdict.  Key details are
 * copied into the caller's memory context.
 */
void
apikey_verify_digest(const char *prefix, int prefix_len, const char *key_id,
					 const uint8 *digest, const ApiKeyRequest *req,
					 ApiKeyVerdict *out)
{
	StatementMemo *mm;
	MemoEntry  *m = NULL;
	uint32		hash = 0;
	const ApiKeyEntry *e;
	uint64		generation;
	TimestampTz now;
	bool		counted;
	ApiKeyStatus status;

	memset(out, 0, sizeof(*out));
	out->status = APIKEY_INVALID;
	if (key_id == NULL)
		return;

	mm = statement_memo();
	if (mm != NULL)
	{
		hash = memo_hash(key_id, digest, req);
		m = memo_lookup(mm, hash, prefix, prefix_len, key_id, digest, req);
	}

	/* (takes in pending invalidations first) */
	e = apikey_cache_get(key_id, &generation);
	if (m != NULL && m->generation == generation)
	{
		/*
		 * A repeat within the statement, nothing changed since: the same
		 * request, counted and charged once, and its outcome, without
		 * judging the key again (only a role dropped meanwhile undoes it).
		 */
		memo_repeats++;
		memo_restore(m, out);
		if (out->status != APIKEY_INVALID &&
			(e == NULL || !role_name_of(e->role, out->role_name)))
			out->status = APIKEY_INVALID;
		verdict_key(out, e);
	}
	else
	{
		/* one clock reading serves the grace period, the expiry and the limits */
		now = GetCurrentTimestamp();
		status = evaluate(e, prefix, prefix_len, digest, req, now, out->role_name,
						  &counted);
		out->status = status;
		verdict_key(out, e);
		if (m != NULL)
		{
			/*
			 * A repeat of a key changed since (and committed): judged
			 * afresh, so no change is hidden, but charged only if it had
			 * never reached the limits.
			 */
			memo_repeats++;
			if (status == APIKEY_VALID &&
				(m->status == APIKEY_VALID || m->status == APIKEY_RATE_LIMITED ||
				 m->status == APIKEY_QUOTA_EXCEEDED))
			{
				memo_restore(m, out);
				m->generation = generation;
			}
			else
			{
				if (status == APIKEY_VALID)
					apikey_limits_apply(key_id, apikey_entry_hint(e),
										apikey_entry_limits(e), req->cost, now, out);
				memo_keep(m, out, generation);
			}
		}
		else
		{
			/*
			 * limits.c: a valid request spends its cost of the key's rate
			 * limits and quota, or becomes rate_limited or quota_exceeded;
			 * every status of an existing key id is counted in its usage.
			 */
			if (counted)
				apikey_limits_apply(key_id, apikey_entry_hint(e),
									status == APIKEY_INVALID ? NULL : apikey_entry_limits(e),
									req->cost, now, out);
			if (mm != NULL)
				memo_keep(memo_remember(mm, hash, prefix, prefix_len, key_id,
										digest, req),
						  out, generation);
			/* request_log.c: the request, recorded once (never for a repeat) */
			APIKEY_REQUEST_LOG_NOTE(key_id, counted ? e : NULL, req, out, now);
		}
	}

	if (out->status == APIKEY_INVALID)
	{
		/* an invalid result reveals nothing */
		out->key_id[0] = '\0';
		out->role = InvalidOid;
		out->role_name[0] = '\0';
		return;
	}
	out->name = copy_varlena(ApiKeyEntryName(e));
	out->scopes = copy_varlena(ApiKeyEntryScopes(e));
	out->metadata = copy_varlena(ApiKeyEntryMetadata(e));
	out->has_expiry = e->has_expiry;
	out->expires_at = e->expires_at;
}

/*
 * Input that is no token (nor an imported one): invalid, without a lookup.
 * apikeys.audit_requests records it with no key id (nothing of the input
 * is kept), once per statement like any request: the memo knows it by the
 * SHA-256 of the input under a key id of zero bytes, which no key has.
 */
static void
verify_malformed(const char *s, size_t len, const ApiKeyRequest *req,
				 ApiKeyVerdict *out)
{
	static const char no_id[APIKEY_KEY_ID_LEN] = {0};
	StatementMemo *mm;
	uint8		digest[APIKEY_DIGEST_LEN];
	uint32		hash;

	memset(out, 0, sizeof(*out));
	out->status = APIKEY_INVALID;
	if (!apikey_request_log_wanted(APIKEY_INVALID))
		return;
	mm = statement_memo();
	if (mm != NULL)
	{
		apikey_digest(s, len, digest);
		hash = memo_hash(no_id, digest, req);
		if (memo_lookup(mm, hash, "", 0, no_id, digest, req) != NULL)
		{
			memo_repeats++;
			explicit_bzero(digest, sizeof(digest));
			return;
		}
		memo_keep(memo_remember(mm, hash, "", 0, no_id, digest, req), out, 0);
		explicit_bzero(digest, sizeof(digest));
	}
	apikey_request_log_note(NULL, NULL, req, out, GetCurrentTimestamp());
}

/*
 * Verify a token given as text.  Anything that is not a well-formed token
 * with a matching checksum is invalid, without touching the catalog.
 */
void
apikey_verify_token(const char *s, size_t len, const ApiKeyRequest *req,
					ApiKeyVerdict *out)
{
	ApiKeyToken tok;
	uint8		digest[APIKEY_DIGEST_LEN];

	if (s == NULL || !apikey_parse(s, len, &tok))
	{
		/* not a native token: one imported from another system? (import.c) */
		if (s != NULL && apikey_verify_imported(s, len, req, out))
			return;
		if (s != NULL)
			verify_malformed(s, len, req, out);
		else
			apikey_verify_digest(NULL, 0, NULL, NULL, req, out);
		return;
	}
	apikey_digest(tok.secret, APIKEY_SECRET_LEN, digest);
	apikey_verify_digest(tok.prefix, tok.prefix_len, tok.key_id, digest, req, out);
	explicit_bzero(digest, sizeof(digest));
}

/* The request arguments shared by the apikey_verify and apikey_is_valid functions. */
static void
request_from_args(FunctionCallInfo fcinfo, ApiKeyRequest *req)
{
	req->scope = PG_NARGS() > 1 && !PG_ARGISNULL(1) ? PG_GETARG_TEXT_PP(1) : NULL;
	req->client_ip = PG_NARGS() > 2 && !PG_ARGISNULL(2) ? PG_GETARG_INET_PP(2) : NULL;
	req->origin = PG_NARGS() > 3 && !PG_ARGISNULL(3) ? PG_GETARG_TEXT_PP(3) : NULL;
	req->cost = PG_NARGS() > 4 && !PG_ARGISNULL(4) ? PG_GETARG_INT32(4) : 1;
	/* whether or not the key turns out to have limits */
	if (req->cost < 0 || req->cost > APIKEY_MAX_COST)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("request cost must be between 0 and %d", APIKEY_MAX_COST)));
}

/*
 * Verify argument 0, a token as text, for the request in the other
 * arguments (scope, client_ip, origin, cost: apikey_verify's and
 * apikey_login's layout), which *req receives.
 */
void
apikey_verify_text_arg(FunctionCallInfo fcinfo, ApiKeyRequest *req, ApiKeyVerdict *v)
{
	Datum		raw;
	text	   *token;

	request_from_args(fcinfo, req);
	if (PG_ARGISNULL(0))
	{
		apikey_verify_token(NULL, 0, req, v);
		return;
	}
	/* Reject oversized input before detoasting it. */
	raw = PG_GETARG_DATUM(0);
	if (toast_raw_datum_size(raw) > VARHDRSZ + APIKEY_INPUT_MAXLEN)
	{
		apikey_verify_token(NULL, 0, req, v);
		return;
	}
	token = DatumGetTextPP(raw);
	apikey_verify_token(VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token), req, v);
}

/* The same for argument 0 as an apikey value (see apikey_value_digest). */
void
apikey_verify_apikey_arg(FunctionCallInfo fcinfo, ApiKeyRequest *req, ApiKeyVerdict *v)
{
	ApiKeyData *key;
	uint8		digest[APIKEY_DIGEST_LEN];

	request_from_args(fcinfo, req);
	if (PG_ARGISNULL(0) ||
		!apikey_value_digest(key = PG_GETARG_APIKEY_P(0), digest))
	{
		apikey_verify_digest(NULL, 0, NULL, NULL, req, v);
		return;
	}
	apikey_verify_digest(key->prefix, key->prefix_len, key->key_id,
						 digest, req, v);
	explicit_bzero(digest, sizeof(digest));
}

/*
 * The result row's descriptor.  The type is resolved once per call site
 * (fn_extra), and its type cache entry is kept there: the descriptor is read
 * from it at each call, which costs a pointer load and stays right if the
 * type is ever altered.
 */
static TupleDesc
verification_desc(FunctionCallInfo fcinfo)
{
	TypeCacheEntry *tce = (TypeCacheEntry *) fcinfo->flinfo->fn_extra;

	if (tce == NULL)
	{
		Oid			rettype = get_fn_expr_rettype(fcinfo->flinfo);

		if (!OidIsValid(rettype))
			rettype = get_func_rettype(fcinfo->flinfo->fn_oid);
		tce = lookup_type_cache(rettype, TYPECACHE_TUPDESC);
		if (tce->tupDesc == NULL)
			elog(ERROR, "type %u is not composite", rettype);
		fcinfo->flinfo->fn_extra = tce;
	}
	/* (a database still at 0.1.0 has a shorter type) */
	if (tce->tupDesc->natts != Vf_natts && tce->tupDesc->natts != Vf_natts_0_1)
		elog(ERROR, "apikeys.verification has %d columns, expected %d",
			 tce->tupDesc->natts, Vf_natts);
	return tce->tupDesc;
}

/* Build the apikeys.verification row from a verdict. */
Datum
apikey_verdict_datum(FunctionCallInfo fcinfo, const ApiKeyVerdict *v)
{
	TupleDesc	tupdesc = verification_desc(fcinfo);
	Datum		values[Vf_natts];
	bool		nulls[Vf_natts];

	memset(nulls, true, sizeof(nulls));
	values[Vf_valid] = BoolGetDatum(v->status == APIKEY_VALID);
	nulls[Vf_valid] = false;
	values[Vf_status] = CStringGetTextDatum(apikey_status_name(v->status));
	nulls[Vf_status] = false;
	if (v->status != APIKEY_INVALID)
	{
		values[Vf_key_id] = PointerGetDatum(cstring_to_text_with_len(v->key_id,
																	 APIKEY_KEY_ID_LEN));
		nulls[Vf_key_id] = false;
		if (v->role_name[0] != '\0')
		{
			/* heap_form_tuple copies NAMEDATALEN bytes: give it a full Name */
			NameData   *n = (NameData *) palloc0(NAMEDATALEN);

			strlcpy(NameStr(*n), v->role_name, NAMEDATALEN);
			values[Vf_role] = NameGetDatum(n);
			nulls[Vf_role] = false;
		}
		if (v->scopes != NULL)
		{
			values[Vf_scopes] = PointerGetDatum(v->scopes);
			nulls[Vf_scopes] = false;
		}
		if (v->has_expiry)
		{
			values[Vf_expires_at] = TimestampTzGetDatum(v->expires_at);
			nulls[Vf_expires_at] = false;
		}
		if (v->metadata != NULL)
		{
			values[Vf_metadata] = JsonbPGetDatum(v->metadata);
			nulls[Vf_metadata] = false;
		}
		if (v->name != NULL)
		{
			values[Vf_name] = PointerGetDatum(v->name);
			nulls[Vf_name] = false;
		}
	}
	if (v->has_retry_after)
	{
		Interval   *iv = (Interval *) palloc0(sizeof(Interval));

		iv->time = v->retry_after;
		values[Vf_retry_after] = IntervalPGetDatum(iv);
		nulls[Vf_retry_after] = false;
	}
	if (v->has_remaining)
	{
		values[Vf_remaining] = Int64GetDatum(v->remaining);
		nulls[Vf_remaining] = false;
	}
	return HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls));
}

/* SQL function: apikey_verify(text, text, inet, text) returns apikeys.verification */
PG_FUNCTION_INFO_V1(apikey_verify_text);
Datum
apikey_verify_text(PG_FUNCTION_ARGS)
{
	ApiKeyRequest req;
	ApiKeyVerdict v;

	apikey_verify_text_arg(fcinfo, &req, &v);
	return apikey_verdict_datum(fcinfo, &v);
}

/* SQL function: apikey_verify(apikey, text, inet, text) returns apikeys.verification */
PG_FUNCTION_INFO_V1(apikey_verify_apikey);
Datum
apikey_verify_apikey(PG_FUNCTION_ARGS)
{
	ApiKeyRequest req;
	ApiKeyVerdict v;

	apikey_verify_apikey_arg(fcinfo, &req, &v);
	return apikey_verdict_datum(fcinfo, &v);
}

/* SQL function: apikey_is_valid(text, text, inet, text) returns boolean */
PG_FUNCTION_INFO_V1(apikey_is_valid_text);
Datum
apikey_is_valid_text(PG_FUNCTION_ARGS)
{
	ApiKeyRequest req;
	ApiKeyVerdict v;

	apikey_verify_text_arg(fcinfo, &req, &v);
	PG_RETURN_BOOL(v.status == APIKEY_VALID);
}

/* SQL function: apikey_is_valid(apikey, text, inet, text) returns boolean */
PG_FUNCTION_INFO_V1(apikey_is_valid_apikey);
Datum
apikey_is_valid_apikey(PG_FUNCTION_ARGS)
{
	ApiKeyRequest req;
	ApiKeyVerdict v;

	apikey_verify_apikey_arg(fcinfo, &req, &v);
	PG_RETURN_BOOL(v.status == APIKEY_VALID);
}
