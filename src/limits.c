/*
 * limits.c
 *		Rate limits and quotas: their grammar, the GCRA that enforces rate
 *		limits in shared memory, quotas with refills, limits shared by all
 *		keys of a role, and apikey_limits_apply(), the one call the verify
 *		path makes once every other check has passed.
 *
 * A rate limit 'N/window [burst B]' is a generic cell rate algorithm (a
 * token bucket kept as one timestamp): requests are admitted while the
 * bucket of B (default N) holds enough, and it refills at N per window.
 * Times are kept in units of 1/N microseconds (128-bit), so a limit is exact
 * whatever N: no rounding ever admits one request too many.  All windows of
 * a key, and those of its role, are decided together under the partition
 * locks of their entries (taken in partition order): a request is admitted
 * by all or spends nothing.
 *
 * A quota counts remaining uses in the key's entry; it is written to
 * apikeys_internal.quota_state by the worker with usage, and read back from
 * there when an entry is created.  The catalog's quota_set_at is the
 * quota's version: when apikey_update sets a new value, the entry re-bases
 * on it at the next verification, exactly once.
 *
 * Limits are read from the catalog row the verify path has already read
 * (apikey_limits_from_row), and role limits from a backend-local copy of
 * apikeys_internal.role_limits, dropped by a relcache invalidation that a
 * trigger on that table sends at commit.  So a change takes effect at
 * commit for every backend, and on standbys when they replay it.
 */
#include "postgres.h"

#include <limits.h>

#include "access/genam.h"
#include "access/heapam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/skey.h"
#include "access/stratnum.h"
#include "access/tableam.h"
#include "catalog/namespace.h"
#include "catalog/pg_type_d.h"
#include "commands/trigger.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/datetime.h"
#include "utils/fmgroids.h"
#include "utils/guc.h"
#include "utils/hsearch.h"
#include "utils/inval.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/timestamp.h"

#include "apikeys.h"
#include "compat.h"
#include "shmem.h"

#define APIKEYS_ROLE_LIMITS		"role_limits"
#define APIKEYS_QUOTA_STATE		"quota_state"

/* apikeys_internal.role_limits and quota_state, in table order (1-based) */
enum
{
	Anum_role_limit_role = 1,
	Anum_role_limit_rate_limit
};
enum
{
	Anum_quota_key_id = 1,
	Anum_quota_set_at,
	Anum_quota_remaining,
	Anum_quota_refilled_at,
	Anum_quota_updated_at,
	Natts_quota_state = Anum_quota_updated_at
};

#define MAX_LIMIT_COUNT			INT64CONST(1000000000)

int			apikeys_quota_notify_percent = 10;

/* ----------------------------------------------------------------
 * Grammar
 * ---------------------------------------------------------------- */

static const struct
{
	const char *name;
	int64		usecs;
}			units[] = {
	{"second", USECS_PER_SEC},
	{"minute", USECS_PER_MINUTE},
	{"hour", USECS_PER_HOUR},
	{"day", USECS_PER_DAY},
};

/* Skip white space. */
static const char *
skip_space(const char *p)
{
	while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
		p++;
	return p;
}

/* Read an integer in [1, max]; false if there is none or it is too big. */
static bool
read_count(const char **pp, int64 max, int64 *out)
{
	const char *p = *pp;
	int64		v = 0;

	if (*p < '0' || *p > '9')
		return false;
	while (*p >= '0' && *p <= '9')
	{
		v = v * 10 + (*p - '0');
		if (v > max)
			return false;
		p++;
	}
	if (v < 1)
		return false;
	*out = v;
	*pp = p;
	return true;
}

/* Read a word made of letters; returns its length (0: none). */
static int
read_word(const char **pp, char *buf, int bufsize)
{
	const char *p = *pp;
	int			n = 0;

	while ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z'))
	{
		if (n < bufsize - 1)
			buf[n] = pg_ascii_tolower((unsigned char) *p);
		n++;
		p++;
	}
	buf[Min(n, bufsize - 1)] = '\0';
	*pp = p;
	return n;
}

/* A window unit by name, singular or plural; its length, or 0. */
static int64
unit_usecs(const char *word, const char **canonical)
{
	for (size_t i = 0; i < lengthof(units); i++)
	{
		size_t		len = strlen(units[i].name);

		if (strncmp(word, units[i].name, len) == 0 &&
			(word[len] == '\0' || (word[len] == 's' && word[len + 1] == '\0')))
		{
			*canonical = units[i].name;
			return units[i].usecs;
		}
	}
	return 0;
}

/* Parse one 'N/unit [burst B]'; false if it is not in the grammar. */
static bool
parse_window(const char *s, ApiKeyWindow *w)
{
	const char *p = skip_space(s);
	const char *canonical;
	char		word[16];

	if (!read_count(&p, MAX_LIMIT_COUNT, &w->count))
		return false;
	p = skip_space(p);
	if (*p++ != '/')
		return false;
	p = skip_space(p);
	if (read_word(&p, word, sizeof(word)) == 0 ||
		(w->period = unit_usecs(word, &canonical)) == 0)
		return false;
	w->burst = w->count;
	p = skip_space(p);
	if (*p != '\0')
	{
		if (read_word(&p, word, sizeof(word)) == 0 || strcmp(word, "burst") != 0)
			return false;
		p = skip_space(p);
		if (!read_count(&p, MAX_LIMIT_COUNT, &w->burst))
			return false;
		p = skip_space(p);
	}
	return *p == '\0';
}

/* The canonical text of a window. */
static char *
window_text(const ApiKeyWindow *w)
{
	const char *unit = "second";

	for (size_t i = 0; i < lengthof(units); i++)
		if (units[i].usecs == w->period)
			unit = units[i].name;
	if (w->burst == w->count)
		return psprintf(INT64_FORMAT "/%s", w->count, unit);
	return psprintf(INT64_FORMAT "/%s burst " INT64_FORMAT, w->count, unit, w->burst);
}

static void
bad_rate_limit(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("invalid rate limit"),
			 errdetail("A rate limit is N/second, N/minute, N/hour or N/day, optionally followed by burst B (N and B from 1 to 1000000000); several are separated by commas."),
			 errhint("For example '100/second', '100/second burst 200' or '10/second, 5000/hour'.")));
}

/*
 * Split a rate-limit setting into windows: one limit, several separated by
 * commas, or the text form of an array of them ('{10/second,5000/hour}').
 * Returns the number of windows; raises 22023 or 54000.
 */
static int
parse_rate_limit_text(const char *s, ApiKeyWindow *w)
{
	char	   *buf = pstrdup(s);
	char	   *p = (char *) skip_space(buf);
	int			n = 0;
	size_t		len;

	len = strlen(p);
	while (len > 0 && (p[len - 1] == ' ' || p[len - 1] == '\t' ||
					   p[len - 1] == '\n' || p[len - 1] == '\r'))
		p[--len] = '\0';
	if (len >= 2 && p[0] == '{' && p[len - 1] == '}')
	{
		p[len - 1] = '\0';
		p++;
	}
	if (*skip_space(p) == '\0')
		return 0;
	for (;;)
	{
		char	   *comma = strchr(p, ',');
		char	   *item;

		if (comma != NULL)
			*comma = '\0';
		item = p;
		/* array elements may be double-quoted */
		item = (char *) skip_space(item);
		len = strlen(item);
		while (len > 0 && (item[len - 1] == ' ' || item[len - 1] == '\t'))
			item[--len] = '\0';
		if (len >= 2 && item[0] == '"' && item[len - 1] == '"')
		{
			item[len - 1] = '\0';
			item++;
		}
		if (n == APIKEY_MAX_WINDOWS)
			ereport(ERROR,
					(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
					 errmsg("api key field \"rate_limit\" exceeds its size limit"),
					 errdetail("The limit is %d rate limits.", APIKEY_MAX_WINDOWS)));
		if (!parse_window(item, &w[n]))
			bad_rate_limit();
		for (int i = 0; i < n; i++)
			if (w[i].period == w[n].period)
				ereport(ERROR,
						(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
						 errmsg("invalid rate limit"),
						 errdetail("Two rate limits have the same window."),
						 errhint("Give each window (second, minute, hour, day) at most one limit.")));
		n++;
		if (comma == NULL)
			break;
		p = comma + 1;
	}
	return n;
}

/* Parse a stored (normalized) text[] of limits; malformed ones are skipped. */
static int
windows_from_array(ArrayType *arr, ApiKeyWindow *w)
{
	Datum	   *elems;
	bool	   *enulls;
	int			n;
	int			nw = 0;

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, &enulls, &n);
	for (int i = 0; i < n && nw < APIKEY_MAX_WINDOWS; i++)
	{
		char	   *s;

		if (enulls[i])
			continue;
		s = TextDatumGetCString(elems[i]);
		if (parse_window(s, &w[nw]))
			nw++;
		pfree(s);
	}
	return nw;
}

/*
 * Parse a quota refill 'N/hour', 'N/day', 'N/month' or 'N/month on day D'
 * (D from 1 to 31, the last day of shorter months).
 */
static bool
parse_refill(const char *s, ApiKeyLimits *lim)
{
	const char *p = skip_space(s);
	char		word[16];
	int64		day = 1;

	if (!read_count(&p, INT64CONST(1000000000000), &lim->refill_amount))
		return false;
	p = skip_space(p);
	if (*p++ != '/')
		return false;
	p = skip_space(p);
	read_word(&p, word, sizeof(word));
	if (strcmp(word, "hour") == 0)
		lim->refill_unit = 'h';
	else if (strcmp(word, "day") == 0)
		lim->refill_unit = 'd';
	else if (strcmp(word, "month") == 0)
		lim->refill_unit = 'm';
	else
		return false;
	lim->refill_day = 1;
	p = skip_space(p);
	if (*p != '\0' && lim->refill_unit == 'm')
	{
		if (read_word(&p, word, sizeof(word)) == 0 || strcmp(word, "on") != 0)
			return false;
		p = skip_space(p);
		if (read_word(&p, word, sizeof(word)) == 0 || strcmp(word, "day") != 0)
			return false;
		p = skip_space(p);
		if (!read_count(&p, 31, &day))
			return false;
		lim->refill_day = (int) day;
		p = skip_space(p);
	}
	return *p == '\0';
}

/* The canonical text of a refill. */
static char *
refill_text(const ApiKeyLimits *lim)
{
	switch (lim->refill_unit)
	{
		case 'h':
			return psprintf(INT64_FORMAT "/hour", lim->refill_amount);
		case 'd':
			return psprintf(INT64_FORMAT "/day", lim->refill_amount);
		default:
			if (lim->refill_day == 1)
				return psprintf(INT64_FORMAT "/month", lim->refill_amount);
			return psprintf(INT64_FORMAT "/month on day %d", lim->refill_amount,
							lim->refill_day);
	}
}

/*
 * Start of the refill period that contains t (UTC): the hour, the day, or
 * the month's refill day at midnight (clamped to the month's last day).
 */
int64
apikeys_quota_period_start(const ApiKeyLimits *lim, TimestampTz t)
{
	int64		days;
	int			y,
				m,
				d,
				rd;

	switch (lim->refill_unit)
	{
		case 'h':
			return t - ((t % USECS_PER_HOUR) + USECS_PER_HOUR) % USECS_PER_HOUR;
		case 'd':
			return t - ((t % USECS_PER_DAY) + USECS_PER_DAY) % USECS_PER_DAY;
		case 'm':
			days = t / USECS_PER_DAY - (t % USECS_PER_DAY < 0 ? 1 : 0);
			j2date((int) (days + POSTGRES_EPOCH_JDATE), &y, &m, &d);
			rd = Min(lim->refill_day, day_tab[isleap(y)][m - 1]);
			if (d < rd)
			{
				if (--m < 1)
				{
					m = 12;
					y--;
				}
				rd = Min(lim->refill_day, day_tab[isleap(y)][m - 1]);
			}
			return (int64) (date2j(y, m, rd) - POSTGRES_EPOCH_JDATE) * USECS_PER_DAY;
	}
	return PG_INT64_MIN;
}

/* Start of the refill period after the one that contains t. */
static int64
next_period_start(const ApiKeyLimits *lim, TimestampTz t)
{
	int64		start = apikeys_quota_period_start(lim, t);
	int64		probe;

	switch (lim->refill_unit)
	{
		case 'h':
			return start + USECS_PER_HOUR;
		case 'd':
			return start + USECS_PER_DAY;
	}
	/* a month: the next start is at most 31 days ahead, at least 28 */
	probe = start + 32 * USECS_PER_DAY;
	return apikeys_quota_period_start(lim, probe);
}

/* ----------------------------------------------------------------
 * SQL helpers of the install script
 * ---------------------------------------------------------------- */

/* SQL function: apikeys_internal._rate_limit_normalize(text) returns text[] */
PG_FUNCTION_INFO_V1(apikeys_rate_limit_normalize);
Datum
apikeys_rate_limit_normalize(PG_FUNCTION_ARGS)
{
	ApiKeyWindow w[APIKEY_MAX_WINDOWS];
	Datum		elems[APIKEY_MAX_WINDOWS];
	text	   *t;
	int			n;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	t = PG_GETARG_TEXT_PP(0);
	if (VARSIZE_ANY_EXHDR(t) > 1000)
		ereport(ERROR,
				(errcode(ERRCODE_PROGRAM_LIMIT_EXCEEDED),
				 errmsg("api key field \"rate_limit\" exceeds its size limit"),
				 errdetail("The limit is 1000 characters.")));
	n = parse_rate_limit_text(text_to_cstring(t), w);
	if (n == 0)
		PG_RETURN_NULL();
	/* shortest window first, so that listings read naturally */
	for (int i = 1; i < n; i++)
		for (int j = i; j > 0 && w[j].period < w[j - 1].period; j--)
		{
			ApiKeyWindow tmp = w[j];

			w[j] = w[j - 1];
			w[j - 1] = tmp;
		}
	for (int i = 0; i < n; i++)
		elems[i] = CStringGetTextDatum(window_text(&w[i]));
	PG_RETURN_ARRAYTYPE_P(construct_array(elems, n, TEXTOID, -1, false, TYPALIGN_INT));
}

/* SQL function: apikeys_internal._refill_normalize(text) returns text */
PG_FUNCTION_INFO_V1(apikeys_refill_normalize);
Datum
apikeys_refill_normalize(PG_FUNCTION_ARGS)
{
	ApiKeyLimits lim;
	char	   *s;

	if (PG_ARGISNULL(0))
		PG_RETURN_NULL();
	s = text_to_cstring(PG_GETARG_TEXT_PP(0));
	if (*skip_space(s) == '\0')
		PG_RETURN_NULL();
	memset(&lim, 0, sizeof(lim));
	if (strlen(s) > 100 || !parse_refill(s, &lim))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("invalid quota refill"),
				 errdetail("A refill is N/hour, N/day, N/month or N/month on day D (D from 1 to 31; the last day of shorter months); remaining is set to N at the start of each period, in UTC."),
				 errhint("For example '1000/day' or '50000/month on day 15'.")));
	PG_RETURN_TEXT_P(cstring_to_text(refill_text(&lim)));
}

/*
 * SQL function: apikeys_internal._require_limits(rate_limit boolean, quota boolean) returns void
 *
 * Raises unless this server can enforce what a key or role is being given:
 * rate limits need the library preloaded; quotas also need the worker of
 * apikeys.database, which keeps them.
 */
PG_FUNCTION_INFO_V1(apikeys_require_limits);
Datum
apikeys_require_limits(PG_FUNCTION_ARGS)
{
	bool		rate = !PG_ARGISNULL(0) && PG_GETARG_BOOL(0);
	bool		quota = !PG_ARGISNULL(1) && PG_GETARG_BOOL(1);

	if (rate || quota)
		apikeys_require_shmem(quota ? "quotas" : "rate limits");
	if (quota && !apikeys_database_served())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("quotas are kept only in database \"%s\"", apikeys_database),
				 errdetail("The apikeys background worker, which makes quotas durable, serves the database named by apikeys.database."),
				 errhint("Set apikeys.database to this database's name in postgresql.conf and restart the server.")));
	PG_RETURN_VOID();
}

/* ----------------------------------------------------------------
 * Reading limits
 * ---------------------------------------------------------------- */

/*
 * The limits of a key, from its catalog row (0-based values and nulls, as
 * heap_deform_tuple gives them; natts of the row).  A 0.1.0 catalog has
 * none of these columns: no limits.
 */
void
apikey_limits_from_row(const Datum *values, const bool *nulls, int natts,
					   ApiKeyLimits *out)
{
#define COL(a) ((a) - 1)
	memset(out, 0, sizeof(*out));
	if (natts < Anum_key_quota_set_at)
		return;
	if (!nulls[COL(Anum_key_rate_limit)])
		out->nwindows = windows_from_array(DatumGetArrayTypeP(values[COL(Anum_key_rate_limit)]),
										   out->windows);
	if (!nulls[COL(Anum_key_quota)] && !nulls[COL(Anum_key_quota_set_at)])
	{
		out->has_quota = true;
		out->quota = DatumGetInt64(values[COL(Anum_key_quota)]);
		out->quota_set_at = DatumGetTimestampTz(values[COL(Anum_key_quota_set_at)]);
		if (!nulls[COL(Anum_key_quota_refill)])
		{
			char	   *s = TextDatumGetCString(values[COL(Anum_key_quota_refill)]);

			if (!parse_refill(s, out))
				out->refill_unit = 0;
			pfree(s);
		}
	}
#undef COL
}

/*
 * OIDs of the tables read here, resolved once per backend and forgotten on
 * relcache invalidation; the role limits read from one of them.
 */
static Oid	role_limits_relid = InvalidOid;
static Oid	quota_state_relid = InvalidOid;
static bool callback_registered = false;
static HTAB *role_limits = NULL;	/* role OID -> RoleLimit; NULL: not loaded */
static bool any_role_limits = false;
static uint64 role_limits_invalidations = 0;

typedef struct RoleLimit
{
	Oid			role;
	int			nwindows;
	ApiKeyWindow windows[APIKEY_MAX_WINDOWS];
} RoleLimit;

/* Relcache callback: forget what may be stale. */
static void
limits_relcache_callback(Datum arg, Oid relid)
{
	/* (with the table unknown, any change may be its creation) */
	if (!OidIsValid(relid) || relid == role_limits_relid ||
		!OidIsValid(role_limits_relid))
	{
		role_limits_invalidations++;
		if (role_limits != NULL)
		{
			hash_destroy(role_limits);
			role_limits = NULL;
		}
		if (!OidIsValid(relid))
			role_limits_relid = InvalidOid;
	}
	if (!OidIsValid(relid) || relid == quota_state_relid)
		quota_state_relid = InvalidOid;
}

/*
 * Look up a table of the extension; InvalidOid if absent, or if what has
 * the name is not a member of the extension (objects.c).
 */
static Oid
internal_relid(const char *name, Oid *cache)
{
	if (!callback_registered)
	{
		CacheRegisterRelcacheCallback(limits_relcache_callback, (Datum) 0);
		callback_registered = true;
	}
	if (OidIsValid(*cache))
		return *cache;
	*cache = apikeys_relation_oid(name);
	return *cache;
}

/* Read apikeys_internal.role_limits into a new hash table. */
static HTAB *
read_role_limits(bool *any)
{
	HASHCTL		ctl;
	HTAB	   *h;
	Oid			relid;
	Relation	rel;
	Snapshot	snapshot;
	TableScanDesc scan;
	HeapTuple	tup;

	memset(&ctl, 0, sizeof(ctl));
	ctl.keysize = sizeof(Oid);
	ctl.entrysize = sizeof(RoleLimit);
	ctl.hcxt = TopMemoryContext;
	h = hash_create("apikeys role limits", 16, &ctl,
					HASH_ELEM | HASH_BLOBS | HASH_CONTEXT);
	*any = false;

	relid = internal_relid(APIKEYS_ROLE_LIMITS, &role_limits_relid);
	rel = OidIsValid(relid) ? try_relation_open(relid, AccessShareLock) : NULL;
	if (rel == NULL)
		return h;
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = table_beginscan(rel, snapshot, 0, NULL);
	while ((tup = heap_getnext(scan, ForwardScanDirection)) != NULL)
	{
		TupleDesc	desc = RelationGetDescr(rel);
		bool		isnull;
		Datum		role = heap_getattr(tup, Anum_role_limit_role, desc, &isnull);
		Datum		arr;
		RoleLimit  *rl;
		Oid			roleid;

		if (isnull)
			continue;
		arr = heap_getattr(tup, Anum_role_limit_rate_limit, desc, &isnull);
		if (isnull)
			continue;
		roleid = DatumGetObjectId(role);
		rl = hash_search(h, &roleid, HASH_ENTER, NULL);
		rl->nwindows = windows_from_array(DatumGetArrayTypeP(arr), rl->windows);
		*any |= rl->nwindows > 0;
	}
	table_endscan(scan);
	UnregisterSnapshot(snapshot);
	relation_close(rel, AccessShareLock);
	return h;
}

/*
 * Load the role limits.  The table is opened (which takes in pending
 * invalidations) before the snapshot is taken, so what is read is at least
 * as new as every invalidation seen; should one still arrive during the
 * read, read again.
 */
static void
load_role_limits(void)
{
	for (int attempt = 0;; attempt++)
	{
		uint64		before = role_limits_invalidations;
		bool		any;
		HTAB	   *h = read_role_limits(&any);

		if (before == role_limits_invalidations || attempt >= 3)
		{
			if (role_limits != NULL)
				hash_destroy(role_limits);
			role_limits = h;
			any_role_limits = any;
			return;
		}
		hash_destroy(h);
	}
}

/* Copy the rate limits shared by the keys of a role; false if none. */
static bool
role_limit_for(Oid role, RoleLimit *out)
{
	RoleLimit  *rl;

	AcceptInvalidationMessages();
	if (role_limits == NULL)
		load_role_limits();
	if (!any_role_limits)
		return false;
	rl = hash_search(role_limits, &role, HASH_FIND, NULL);
	if (rl == NULL || rl->nwindows == 0)
		return false;
	*out = *rl;
	return true;
}

/* The flushed quota state of a key, if the worker has written one. */
static bool
load_quota_state(const char *key_id, TimestampTz *set_at, int64 *remaining,
				 TimestampTz *refilled_at)
{
	Oid			relid = internal_relid(APIKEYS_QUOTA_STATE, &quota_state_relid);
	Relation	rel;
	Oid			indexid;
	Snapshot	snapshot;
	ScanKeyData skey;
	SysScanDesc scan;
	HeapTuple	tup;
	bool		found = false;
	text	   *key_text;

	if (!OidIsValid(relid))
		return false;
	rel = try_relation_open(relid, AccessShareLock);
	if (rel == NULL)
		return false;
	indexid = APIKEYS_PRIMARY_KEY_INDEX(rel);
	if (OidIsValid(indexid) && RelationGetDescr(rel)->natts == Natts_quota_state)
	{
		key_text = cstring_to_text_with_len(key_id, APIKEY_KEY_ID_LEN);
		snapshot = RegisterSnapshot(GetLatestSnapshot());
		ScanKeyInit(&skey, Anum_quota_key_id, BTEqualStrategyNumber, F_TEXTEQ,
					PointerGetDatum(key_text));
		scan = systable_beginscan(rel, indexid, true, snapshot, 1, &skey);
		tup = systable_getnext(scan);
		if (HeapTupleIsValid(tup))
		{
			Datum		values[Natts_quota_state];
			bool		nulls[Natts_quota_state];

			heap_deform_tuple(tup, RelationGetDescr(rel), values, nulls);
			if (!nulls[Anum_quota_set_at - 1] && !nulls[Anum_quota_remaining - 1])
			{
				found = true;
				*set_at = DatumGetTimestampTz(values[Anum_quota_set_at - 1]);
				*remaining = DatumGetInt64(values[Anum_quota_remaining - 1]);
				*refilled_at = nulls[Anum_quota_refilled_at - 1] ? DT_NOBEGIN :
					DatumGetTimestampTz(values[Anum_quota_refilled_at - 1]);
			}
		}
		systable_endscan(scan);
		UnregisterSnapshot(snapshot);
		pfree(key_text);
	}
	relation_close(rel, AccessShareLock);
	return found;
}

/* SQL function: apikeys_internal._role_limits_changed() returns trigger */
PG_FUNCTION_INFO_V1(apikeys_role_limits_changed);
Datum
apikeys_role_limits_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		elog(ERROR, "apikeys_role_limits_changed: not called as a trigger");
	/* sent at commit, replayed by standbys: every backend reloads */
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}

/* ----------------------------------------------------------------
 * Enforcement
 * ---------------------------------------------------------------- */

/* Make an entry's windows those of the limits; a changed window starts full. */
static void
sync_windows(ApiKeysEntry *e, const ApiKeyWindow *w, int n)
{
	for (int i = 0; i < n; i++)
	{
		if (i >= e->nwindows ||
			e->windows[i].w.period != w[i].period ||
			e->windows[i].w.count != w[i].count ||
			e->windows[i].w.burst != w[i].burst)
		{
			e->windows[i].w = w[i];
			e->windows[i].tat = 0;
		}
	}
	e->nwindows = n;
}

/*
 * GCRA: would a request of cost (1 if cost is 0) fit in every window of
 * the entry at now?  If not, raise *retry to the wait (microseconds) until
 * it would, or set *never if it never can (cost above a burst).
 */
static bool
windows_admit(const ApiKeysEntry *e, int32 cost, TimestampTz now,
			  int64 *retry, bool *never)
{
	bool		ok = true;

	for (int i = 0; i < e->nwindows; i++)
	{
		const ApiKeysWindowState *ws = &e->windows[i];
		int128		now_s = (int128) now * ws->w.count;
		int128		cap = (int128) ws->w.burst * ws->w.period;
		int128		tat = ws->tat > now_s ? ws->tat : now_s;
		int128		c = cost > 0 ? cost : 1;
		int128		new_tat = tat + c * ws->w.period;

		if (new_tat - now_s > cap)
		{
			ok = false;
			if (c > ws->w.burst)
				*never = true;
			else
			{
				/* ceil((new_tat - now_s - cap) / count) microseconds */
				int128		wait_s = new_tat - now_s - cap;
				int64		wait = (int64) ((wait_s + ws->w.count - 1) / ws->w.count);

				*retry = Max(*retry, wait);
			}
		}
	}
	return ok;
}

/* Spend cost in every window of the entry (they all admitted it). */
static void
windows_spend(ApiKeysEntry *e, int32 cost, TimestampTz now)
{
	for (int i = 0; i < e->nwindows; i++)
	{
		ApiKeysWindowState *ws = &e->windows[i];
		int128		now_s = (int128) now * ws->w.count;
		int128		tat = ws->tat > now_s ? ws->tat : now_s;

		ws->tat = tat + (int128) cost * ws->w.period;
	}
}

/* Are all of an entry's buckets full again (its state equals a fresh one)? */
bool
apikeys_windows_idle(const ApiKeysEntry *e, TimestampTz now)
{
	for (int i = 0; i < e->nwindows; i++)
		if (e->windows[i].tat > (int128) now * e->windows[i].w.count)
			return false;
	return true;
}

/* Re-base an entry's quota on the catalog's, or on its flushed state. */
static void
quota_rebase(ApiKeysEntry *e, const ApiKeyLimits *lim, bool have_state,
			 TimestampTz st_set_at, int64 st_remaining, TimestampTz st_refilled_at)
{
	e->has_quota = true;
	e->quota_set_at = lim->quota_set_at;
	if (have_state && st_set_at == lim->quota_set_at)
	{
		e->remaining = st_remaining;
		e->refilled_at = st_refilled_at;
	}
	else
	{
		e->remaining = lim->quota;
		e->refilled_at = lim->refill_unit ?
			apikeys_quota_period_start(lim, lim->quota_set_at) : DT_NOBEGIN;
	}
	e->quota_base = lim->quota;
	e->warned_low = e->warned_empty = false;
	e->quota_changes++;
}

/* Apply a refill whose period has begun since the last one. */
static void
quota_refill(ApiKeysEntry *e, const ApiKeyLimits *lim, TimestampTz now)
{
	int64		start;

	if (!lim->refill_unit)
		return;
	start = apikeys_quota_period_start(lim, now);
	if (e->refilled_at < start)
	{
		e->remaining = lim->refill_amount;
		e->quota_base = lim->refill_amount;
		e->refilled_at = start;
		e->warned_low = e->warned_empty = false;
		e->quota_changes++;
	}
}

/* After spending: queue the low and exhausted NOTIFYs for the worker. */
static void
quota_warnings(ApiKeysEntry *e)
{
	uint8		before = e->notify_pending;

	if (apikeys_quota_notify_percent > 0 && !e->warned_low &&
		(int128) e->remaining * 100 < (int128) e->quota_base * apikeys_quota_notify_percent)
	{
		e->warned_low = true;
		e->notify_pending |= APIKEYS_NOTIFY_LOW;
	}
	if (e->remaining <= 0 && !e->warned_empty)
	{
		e->warned_empty = true;
		e->notify_pending |= APIKEYS_NOTIFY_EMPTY;
	}
	if (e->notify_pending != before)
		apikeys_wake_worker();
}

/*
 * Shared memory full, or the share of the key's role or database: refuse a
 * limited request (never let it through).
 * Returns whether to warn (at most once a minute), which the caller does
 * once it holds no lock.
 */
static bool
refuse_untracked(ApiKeyVerdict *v, ApiKeysNoRoom why, TimestampTz now)
{
	bool		warn = false;

	pg_atomic_fetch_add_u64(&apikeys_shmem->refused, 1);
	SpinLockAcquire(&apikeys_shmem->mutex);
	/* (a full share warns of itself: apikeys_share_warning) */
	if (why == APIKEYS_NO_ROOM_TABLE &&
		now - apikeys_shmem->last_full_warning >= USECS_PER_MINUTE)
	{
		apikeys_shmem->last_full_warning = now;
		warn = true;
	}
	SpinLockRelease(&apikeys_shmem->mutex);
	v->status = APIKEY_RATE_LIMITED;
	v->has_retry_after = true;
	v->retry_after = (int64) apikeys_flush_interval * 1000;
	return warn;
}

/*
 * load_quota_state(), noting first how many shared entries had been
 * removed: while that count stays the same, no entry flushed and freed
 * since can have made what was read stale.
 */
static bool
load_quota_state_counted(const char *key_id, uint64 *removals,
						 TimestampTz *set_at, int64 *remaining,
						 TimestampTz *refilled_at)
{
	*removals = pg_atomic_read_u64(&apikeys_shmem->removals);
	pg_memory_barrier();
	return load_quota_state(key_id, set_at, remaining, refilled_at);
}

/*
 * The verify path's one call, for a key that exists, after every other
 * check: v->status is the verdict so far (APIKEY_INVALID for a wrong
 * secret, with lim NULL).  For a valid key with limits (its own, its
 * quota, or its role's), decide them all at once and spend cost if they
 * all admit it, or set the status to rate_limited or quota_exceeded; then
 * count the final status in the key's usage.  hint is where the key's
 * shared entry was last found (the cached key's, see shmem.c), or NULL.
 */
void
apikey_limits_apply(const char *key_id, ApiKeySharedHint *hint,
					const ApiKeyLimits *lim, int32 cost, TimestampTz now,
					ApiKeyVerdict *v)
{
	RoleLimit	role_limit;
	const RoleLimit *rl = NULL;
	ApiKeysEntryKey kk,
				rk;
	uint32		kh,
				rh = 0;
	LWLock	   *klock,
			   *rlock = NULL;
	ApiKeysEntry *ke,
			   *re = NULL;
	bool		have_state = false;	/* a flushed quota state was found */
	bool		state_read = false; /* quota_state was read */
	uint64		read_at = 0;	/* removals counted when it was read */
	TimestampTz st_set_at = 0,
				st_refilled_at = 0;
	int64		st_remaining = 0;
	int64		retry = 0;
	bool		never = false;
	bool		ok;
	bool		warn_full = false;
	ApiKeysNoRoom why = APIKEYS_ROOM;

	if (v->status != APIKEY_VALID || lim == NULL)
	{
		apikeys_usage_count(key_id, hint, v->role, v->status, now);
		return;
	}
	/* (cost is within 0 .. APIKEY_MAX_COST: verify.c checks every request's) */
	Assert(cost >= 0 && cost <= APIKEY_MAX_COST);
	if (role_limit_for(v->role, &role_limit))
		rl = &role_limit;
	if (lim->nwindows == 0 && !lim->has_quota && rl == NULL)
	{
		apikeys_usage_count(key_id, hint, v->role, v->status, now);
		return;
	}

	/* limits that cannot be enforced here are an error, never a free pass */
	/*
	 * (key_id points into the token: print its 12 characters, no more; and
	 * hide the statement from the server log, which may hold the token)
	 */
	if (!apikeys_shmem_ready())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errhidestmt(true),
				 lim->has_quota ?
				 errmsg("api key \"%.*s\" has a quota, which needs apikeys loaded at server start",
						APIKEY_KEY_ID_LEN, key_id) :
				 errmsg("api key \"%.*s\" has rate limits (its own or its role's), which need apikeys loaded at server start",
						APIKEY_KEY_ID_LEN, key_id),
				 errdetail("Rate limits and quotas are enforced in shared memory."),
				 errhint("Add apikeys to shared_preload_libraries in postgresql.conf and restart the server.")));
	if (lim->has_quota && !apikeys_database_served())
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errhidestmt(true),
				 errmsg("api key \"%.*s\" has a quota, and quotas are kept only in database \"%s\"",
						APIKEY_KEY_ID_LEN, key_id, apikeys_database),
				 errhint("Set apikeys.database to this database's name in postgresql.conf and restart the server.")));

	kh = apikeys_key_entry(&kk, key_id, hint);
	klock = apikeys_partition_lock(kh);

	if (rl != NULL)
	{
		char		id[APIKEY_KEY_ID_LEN + 1];

		snprintf(id, sizeof(id), "%012u", rl->role);
		apikeys_entry_key(&rk, MyDatabaseId, APIKEYS_ENTRY_ROLE, id);
		rh = apikeys_entry_hash(&rk);
		rlock = apikeys_partition_lock(rh);
	}

	/* A quota not yet in shared memory starts from its flushed state. */
	if (lim->has_quota)
	{
		bool		need;

		LWLockAcquire(klock, LW_SHARED);
		ke = apikeys_entry_find_hinted(&kk, kh, hint);
		need = ke == NULL || !ke->has_quota || ke->quota_set_at < lim->quota_set_at;
		LWLockRelease(klock);
		if (need)
		{
			have_state = load_quota_state_counted(key_id, &read_at, &st_set_at,
												  &st_remaining, &st_refilled_at);
			state_read = true;
		}
	}

relock:
	/* both partitions, in partition order */
	if (rlock == NULL || rlock == klock)
		LWLockAcquire(klock, LW_EXCLUSIVE);
	else if (rh % APIKEYS_PARTITIONS < kh % APIKEYS_PARTITIONS)
	{
		LWLockAcquire(rlock, LW_EXCLUSIVE);
		LWLockAcquire(klock, LW_EXCLUSIVE);
	}
	else
	{
		LWLockAcquire(klock, LW_EXCLUSIVE);
		LWLockAcquire(rlock, LW_EXCLUSIVE);
	}

	/*
	 * The worker may have freed the key's entry (its quota flushed) since
	 * it was found above, or since the flushed state was read (another
	 * backend may have spent from it meanwhile, and that was flushed): if
	 * the entry is to be built and any entry was removed since, read the
	 * flushed state again, and lock again, rather than start the quota
	 * from a value that is no longer its latest.
	 */
	if (lim->has_quota)
	{
		ke = apikeys_entry_find_hinted(&kk, kh, hint);
		if ((ke == NULL || !ke->has_quota || ke->quota_set_at < lim->quota_set_at) &&
			(!state_read || pg_atomic_read_u64(&apikeys_shmem->removals) != read_at))
		{
			if (rlock != NULL && rlock != klock)
				LWLockRelease(rlock);
			LWLockRelease(klock);
			have_state = load_quota_state_counted(key_id, &read_at, &st_set_at,
												  &st_remaining, &st_refilled_at);
			state_read = true;
			goto relock;
		}
	}

	/* a new entry takes room from the shares of the key's role and database */
	ke = apikeys_entry_enter(&kk, kh, true, v->role, hint, &why);
	if (ke != NULL)
		ke->counted = apikeys_database_served();
	if (ke != NULL && rl != NULL)
		re = apikeys_entry_enter(&rk, rh, true, rl->role, NULL, &why);
	if (ke == NULL || (rl != NULL && re == NULL))
	{
		warn_full = refuse_untracked(v, why, now);
		if (ke != NULL)
			apikeys_usage_count_locked(ke, v->status, now);
		else
			pg_atomic_fetch_add_u64(&apikeys_shmem->untracked, 1);
	}
	else
	{
		ke->limited = true;
		sync_windows(ke, lim->windows, lim->nwindows);
		if (re != NULL)
		{
			re->limited = true;
			sync_windows(re, rl->windows, rl->nwindows);
		}
		if (lim->has_quota)
		{
			if (!ke->has_quota || ke->quota_set_at < lim->quota_set_at)
				quota_rebase(ke, lim, have_state, st_set_at, st_remaining,
							 st_refilled_at);
			quota_refill(ke, lim, now);
		}
		else
			ke->has_quota = false;

		/* every window of the key and of its role, all or nothing */
		ok = windows_admit(ke, cost, now, &retry, &never);
		if (re != NULL)
			ok = windows_admit(re, cost, now, &retry, &never) && ok;
		if (!ok)
		{
			v->status = APIKEY_RATE_LIMITED;
			v->has_retry_after = !never;
			v->retry_after = retry;
		}
		else if (lim->has_quota && ke->remaining < Max(cost, 1))
		{
			v->status = APIKEY_QUOTA_EXCEEDED;
			if (lim->refill_unit)
			{
				v->has_retry_after = true;
				v->retry_after = next_period_start(lim, now) - now;
			}
		}
		else if (cost > 0)
		{
			windows_spend(ke, cost, now);
			if (re != NULL)
				windows_spend(re, cost, now);
			if (lim->has_quota)
			{
				ke->remaining -= cost;
				ke->quota_changes++;
				quota_warnings(ke);
			}
		}
		if (lim->has_quota)
		{
			v->has_remaining = true;
			v->remaining = ke->remaining;
		}
		apikeys_usage_count_locked(ke, v->status, now);
		if (re != NULL)
			pg_atomic_write_u64(&re->last_active, (uint64) now);
	}

	if (rlock != NULL && rlock != klock)
		LWLockRelease(rlock);
	LWLockRelease(klock);

	if (why != APIKEYS_ROOM && why != APIKEYS_NO_ROOM_TABLE)
		apikeys_share_warning(why, v->role, true);
	if (warn_full)
		ereport(WARNING,
				(errmsg("apikeys shared memory is full: requests of keys with rate limits or quotas are refused"),
				 errdetail("apikeys.max_tracked_keys (%d) keys and roles are being tracked.",
						   apikeys_shmem->max_entries),
				 errhint("Raise apikeys.max_tracked_keys and restart the server.")));
}

/*
 * SQL function: apikeys_internal._remaining(key_id text, quota int8, refill text, set_at timestamptz) returns int8
 *
 * A key's remaining quota now: its live value in shared memory when there
 * is one, else its flushed state, else the value last set; with any refill
 * due applied.  Null when the key has no quota.
 */
PG_FUNCTION_INFO_V1(apikeys_remaining);
Datum
apikeys_remaining(PG_FUNCTION_ARGS)
{
	ApiKeyLimits lim;
	TimestampTz now = GetCurrentTimestamp();
	text	   *k;
	int64		remaining;
	TimestampTz refilled_at;
	bool		live = false;
	TimestampTz st_set_at;
	int64		st_remaining;
	TimestampTz st_refilled_at;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(3))
		PG_RETURN_NULL();
	k = PG_GETARG_TEXT_PP(0);
	if (VARSIZE_ANY_EXHDR(k) != APIKEY_KEY_ID_LEN)
		PG_RETURN_NULL();
	memset(&lim, 0, sizeof(lim));
	lim.has_quota = true;
	lim.quota = PG_GETARG_INT64(1);
	lim.quota_set_at = PG_GETARG_TIMESTAMPTZ(3);
	if (!PG_ARGISNULL(2))
	{
		char	   *s = text_to_cstring(PG_GETARG_TEXT_PP(2));

		if (!parse_refill(s, &lim))
			lim.refill_unit = 0;
	}
	remaining = lim.quota;
	refilled_at = lim.refill_unit ? apikeys_quota_period_start(&lim, lim.quota_set_at) : 0;

	if (apikeys_shmem_ready())
	{
		ApiKeysEntryKey kk;
		ApiKeysEntry *e;
		uint32		h;
		LWLock	   *lock;

		apikeys_entry_key(&kk, MyDatabaseId, APIKEYS_ENTRY_KEY, VARDATA_ANY(k));
		h = apikeys_entry_hash(&kk);
		lock = apikeys_partition_lock(h);
		LWLockAcquire(lock, LW_SHARED);
		e = apikeys_entry_find(&kk, h);
		if (e != NULL && e->has_quota && e->quota_set_at >= lim.quota_set_at)
		{
			remaining = e->remaining;
			refilled_at = e->refilled_at;
			live = true;
		}
		LWLockRelease(lock);
	}
	if (!live &&
		load_quota_state(VARDATA_ANY(k), &st_set_at, &st_remaining, &st_refilled_at) &&
		st_set_at == lim.quota_set_at)
	{
		remaining = st_remaining;
		refilled_at = st_refilled_at;
	}
	if (lim.refill_unit && refilled_at < apikeys_quota_period_start(&lim, now))
		remaining = lim.refill_amount;
	PG_RETURN_INT64(remaining);
}

/* Define the settings of limits and quotas. */
void
apikeys_limits_define_settings(void)
{
	DefineCustomIntVariable("apikeys.quota_notify_percent",
							"NOTIFY apikeys when a key's remaining quota falls below this percentage of its last value set or refilled.",
							"0 turns the warning off; a NOTIFY is also sent when a quota runs out.",
							&apikeys_quota_notify_percent,
							10, 0, 100,
							PGC_SIGHUP, 0,
							NULL, NULL, NULL);
}
