/*
 * apikeys.h
 *		Shared declarations of the apikeys extension: token geometry, the
 *		parsed-token struct, the in-memory apikey type and the catalog layout
 *		that the C verify path reads directly.
 */
#ifndef APIKEYS_H
#define APIKEYS_H

#include "fmgr.h"
#include "datatype/timestamp.h"
#include "utils/array.h"
#include "utils/inet.h"
#include "utils/jsonb.h"

#include "compat.h"

/* The schema of the extension's tables and internal functions. */
#define APIKEYS_INTERNAL_SCHEMA	"apikeys_internal"
#define APIKEYS_CATALOG			"key_catalog"
/*
 * Where 0.1.0 kept them.  The library of a newer release must serve a
 * database whose extension has not been updated yet (between installing the
 * files and ALTER EXTENSION apikeys UPDATE).
 */
#define APIKEYS_SCHEMA_0_1		"apikeys"

/*
 * Token geometry: <prefix>_<key_id>_<secret><checksum>
 */
#define APIKEY_PREFIX_MAXLEN	20
#define APIKEY_KEY_ID_LEN		12
#define APIKEY_SECRET_LEN		32
#define APIKEY_CHECKSUM_LEN		6
/* "_" key_id "_" secret checksum: everything after the prefix */
#define APIKEY_TAIL_LEN \
	(1 + APIKEY_KEY_ID_LEN + 1 + APIKEY_SECRET_LEN + APIKEY_CHECKSUM_LEN)
#define APIKEY_TOKEN_MINLEN		(1 + APIKEY_TAIL_LEN)
#define APIKEY_TOKEN_MAXLEN		(APIKEY_PREFIX_MAXLEN + APIKEY_TAIL_LEN)
#define APIKEY_DEFAULT_PREFIX	"ak"

/*
 * Tokens imported from other systems (import.c): 16 to 512 printable ASCII
 * characters.  APIKEY_INPUT_MAXLEN is the longest input a verify entry
 * point reads at all; anything longer is invalid unread.
 */
#define APIKEY_IMPORTED_MINLEN	16
#define APIKEY_INPUT_MAXLEN		512

/* Stored hash schemes; the catalog records one per key. */
#define APIKEY_DIGEST_LEN		32
#define APIKEY_HASH_SHA256		1	/* SHA-256(secret) */
#define APIKEY_HASH_HMAC_SHA256	2	/* HMAC-SHA256(pepper, SHA-256(secret)),
									 * the pepper named by its id (pepper.c) */
#define APIKEY_PEPPER_ID_LEN	16	/* hex digits of a pepper's public id */

/* A token split in place: pointers into the caller's buffer, no copies. */
typedef struct ApiKeyToken
{
	const char *prefix;
	int			prefix_len;
	const char *key_id;			/* APIKEY_KEY_ID_LEN chars */
	const char *secret;			/* APIKEY_SECRET_LEN chars */
} ApiKeyToken;

/*
 * The apikey type's in-memory and on-disk form.  It never holds the secret:
 * only its SHA-256 digest, XORed with a mask drawn at random once per
 * backend (apikey_session_mask), and the local id of the transaction that
 * parsed it.  A value that ends up stored somewhere can neither be turned
 * back into a token nor verified by another transaction, in this backend or
 * any other (a pooled connection's next client included).
 */
typedef struct ApiKeyData
{
	int32		vl_len_;		/* varlena header */
	uint32		lxid;			/* LocalTransactionId of the parsing transaction */
	uint8		prefix_len;
	char		key_id[APIKEY_KEY_ID_LEN];
	uint8		digest[APIKEY_DIGEST_LEN];	/* masked SHA-256 of the secret */
	char		prefix[FLEXIBLE_ARRAY_MEMBER];
} ApiKeyData;

#define DatumGetApiKeyP(X)		((ApiKeyData *) PG_DETOAST_DATUM(X))
#define PG_GETARG_APIKEY_P(n)	DatumGetApiKeyP(PG_GETARG_DATUM(n))

/*
 * Columns of apikeys.key_catalog, in table order (1-based attribute
 * numbers).  The install script creates the table with exactly this order;
 * verify.c checks the column count before trusting it.
 */
enum
{
	Anum_key_key_id = 1,
	Anum_key_name,
	Anum_key_prefix,
	Anum_key_role,
	Anum_key_scopes,
	Anum_key_expires_at,
	Anum_key_metadata,
	Anum_key_state,
	Anum_key_hash_version,
	Anum_key_hash,
	Anum_key_prev_hash_version,
	Anum_key_prev_hash,
	Anum_key_prev_valid_until,
	Anum_key_created_at,
	Anum_key_created_by,
	Anum_key_updated_at,
	Anum_key_rotated_at,
	Anum_key_revoked_at,
	Anum_key_allowed_ips,		/* added in 0.2.0 */
	Anum_key_allowed_origins,	/* added in 0.2.0 */
	Anum_key_rate_limit,		/* added in 0.2.0: limits and quotas */
	Anum_key_quota,
	Anum_key_quota_refill,
	Anum_key_quota_set_at,
	Anum_key_pepper_id,			/* added in 0.2.0: the pepper of hash */
	Anum_key_prev_pepper_id,	/* ... and of prev_hash */
	Natts_key
};
#define Natts_key_catalog		(Natts_key - 1)
#define Natts_key_catalog_0_1	Anum_key_revoked_at

/* guard.c */
extern void apikeys_guard_init(void);

/* objects.c */
extern bool apikeys_owns_object(Oid classid, Oid objid);
extern Oid	apikeys_relation_oid(const char *relname);
extern Oid	apikeys_function_oid(const char *proname, int nargs,
								 const Oid *argtypes);

/*
 * insert.c: one row into one of the extension's tables, without an
 * executor per row.  A DirectInsert names the columns a caller sets; keep
 * it in static storage (it caches what it prepared).
 */
typedef struct DirectInsertPrepared DirectInsertPrepared;
typedef struct DirectInsert
{
	int			ncolumns;
	const char *const *columns;
	DirectInsertPrepared *prepared;
} DirectInsert;
extern bool apikey_insert_direct(DirectInsert *di, Oid relid, Datum *values,
								 const char *nulls);
extern uint64 apikey_relcache_generation(void);
typedef struct RowInserter RowInserter;
extern RowInserter *apikey_row_inserter_begin(Oid relid);
extern void apikey_row_inserter_put(RowInserter *ins, Datum *values, bool *isnull);
extern void apikey_row_inserter_end(RowInserter *ins);

/* A relation of the extension, looked up once and again after invalidation. */
typedef struct CachedRelation
{
	const char *relname;
	Oid			relid;
	bool		valid;
	bool		registered;
	struct CachedRelation *next;	/* all of them, for one relcache callback */
} CachedRelation;
extern Oid	apikey_cached_relation_oid(CachedRelation *c);

/* chain.c: put one audit row, all its columns, in the audit hash chain */
struct RelationData;
extern bool apikeys_audit_chain_row(struct RelationData *rel, Datum *values,
									bool *isnull);
extern bool apikeys_is_chain_trigger(Oid funcid);
extern void apikeys_chain_init(void);	/* apikeys.audit_queue_limit */

/* lifecycle.c, create.c, audit.c */
extern Oid	apikeys_current_actor(void);
extern bool apikey_create_fast(FunctionCallInfo fcinfo, Oid caller,
							   Datum *key_id, Datum *token);
extern void apikeys_check_key_count(Oid caller, Oid role);
extern void apikeys_create_define_settings(void);

/* reveal.c */
extern bool apikey_decode_hex(const char *src, int n, uint8 *dst);

/* type.c */
extern bool apikey_value_digest(const ApiKeyData *key,
								uint8 digest[APIKEY_DIGEST_LEN]);

/* token.c */
extern bool apikey_prefix_is_valid(const char *s, int len);
extern bool apikey_parse(const char *s, size_t len, ApiKeyToken *tok);
extern void apikey_random_base62(char *dst, int n);
extern void apikey_checksum(const char *s, size_t len,
							char out[APIKEY_CHECKSUM_LEN]);
extern void apikey_digest(const char *secret, size_t len,
						  uint8 out[APIKEY_DIGEST_LEN]);
extern void apikey_mint_token(const char *prefix, int prefix_len,
							  const char *key_id,
							  char key_id_out[APIKEY_KEY_ID_LEN],
							  char token[APIKEY_TOKEN_MAXLEN], int *token_len,
							  uint8 digest[APIKEY_DIGEST_LEN]);
extern void apikey_session_mask(uint8 digest[APIKEY_DIGEST_LEN]);
extern bool apikey_digest_equal(const uint8 *a, const uint8 *b, size_t len);

/*
 * Where the key's entry in the shared table of tracked keys (shmem.c) was
 * last found by this backend, and the table's removal count then: the
 * address stays the key's own until an entry is removed, so a verification
 * that finds the count unchanged skips the shared hash lookup.  Zeroed:
 * not known yet.
 */
typedef struct ApiKeySharedHint
{
	void	   *entry;			/* an ApiKeysEntry *; NULL: not known */
	uint64		removals;		/* apikeys_shmem->removals when found */
	uint32		hash;			/* of the entry's key, when has_hash */
	bool		has_hash;
} ApiKeySharedHint;

/*
 * The secret a rotation with a grace period replaced, kept after an
 * entry's fixed part only for such a key.
 */
typedef struct ApiKeyPrevSecret
{
	TimestampTz valid_until;
	int16		hash_version;	/* 0 when the stored hash is unusable */
	char		pepper_id[APIKEY_PEPPER_ID_LEN];
	uint8		hash[APIKEY_DIGEST_LEN];
} ApiKeyPrevSecret;

/*
 * cache.c: what verify needs of one key, as the backend-local key cache
 * keeps it.  One allocation: this fixed part, then copies of the variable
 * columns and the optional parts, found by offset from the entry (0: the
 * column is null, the part absent).  Keep the fixed part small: with a
 * name, scopes and metadata it must fit a 256-byte allocation chunk.
 */
typedef struct ApiKeyEntry
{
	char		key_id[APIKEY_KEY_ID_LEN];
	char		prefix[APIKEY_PREFIX_MAXLEN];
	uint8		prefix_len;
	char		state;			/* 'a'ctive, 'd'isabled, 'r'evoked */
	bool		has_expiry;
	bool		referenced;		/* cache.c's CLOCK bit */
	int16		hash_version;	/* 0 when the stored hash is unusable */
	char		pepper_id[APIKEY_PEPPER_ID_LEN];	/* of a peppered hash */
	Oid			role;
	TimestampTz expires_at;
	uint8		hash[APIKEY_DIGEST_LEN];
	uint32		name_off;
	uint32		scopes_off;
	uint32		metadata_off;
	uint32		allowed_ips_off;
	uint32		allowed_origins_off;
	uint32		limits_off;		/* an ApiKeyLimits, if the key has any */
	uint32		prev_off;		/* an ApiKeyPrevSecret, if in a grace period */
	ApiKeySharedHint shared;	/* the one field that changes once cached */
} ApiKeyEntry;

#define APIKEY_ENTRY_FIELD(e, off, type) \
	((off) == 0 ? (type) NULL : (type) ((const char *) (e) + (off)))
#define ApiKeyEntryName(e)		APIKEY_ENTRY_FIELD(e, (e)->name_off, text *)
#define ApiKeyEntryScopes(e)	APIKEY_ENTRY_FIELD(e, (e)->scopes_off, ArrayType *)
#define ApiKeyEntryMetadata(e)	APIKEY_ENTRY_FIELD(e, (e)->metadata_off, Jsonb *)
#define ApiKeyEntryAllowedIps(e) APIKEY_ENTRY_FIELD(e, (e)->allowed_ips_off, ArrayType *)
#define ApiKeyEntryAllowedOrigins(e) APIKEY_ENTRY_FIELD(e, (e)->allowed_origins_off, ArrayType *)
#define ApiKeyEntryPrev(e)		APIKEY_ENTRY_FIELD(e, (e)->prev_off, const ApiKeyPrevSecret *)

extern void apikey_cache_init(void);
extern const ApiKeyEntry *apikey_cache_get(const char *key_id,
										   uint64 *generation);
struct ApiKeyLimits;
extern const struct ApiKeyLimits *apikey_entry_limits(const ApiKeyEntry *e);
extern ApiKeySharedHint *apikey_entry_hint(const ApiKeyEntry *e);

/*
 * verify.c: the outcome of one verification, for the SQL functions and for
 * apikey_login.  Statuses are in the order verify checks them.
 */
typedef enum ApiKeyStatus
{
	APIKEY_VALID = 0,
	APIKEY_INVALID,
	APIKEY_REVOKED,
	APIKEY_DISABLED,
	APIKEY_EXPIRED,
	APIKEY_IP_NOT_ALLOWED,
	APIKEY_ORIGIN_NOT_ALLOWED,
	APIKEY_INSUFFICIENT_SCOPE,
	APIKEY_RATE_LIMITED,
	APIKEY_QUOTA_EXCEEDED
} ApiKeyStatus;

/* What the caller asks of the key, besides holding a live token. */
typedef struct ApiKeyRequest
{
	text	   *scope;			/* NULL: no scope required */
	inet	   *client_ip;		/* NULL: unknown */
	text	   *origin;			/* NULL: unknown */
	int32		cost;			/* what the request spends of limits and
								 * quota (0: check only); callers set 1 by
								 * default */
} ApiKeyRequest;

/*
 * The verdict.  Key details are filled in (palloc'd in the caller's memory
 * context) for every status but APIKEY_INVALID, which reveals nothing.
 */
typedef struct ApiKeyVerdict
{
	ApiKeyStatus status;
	char		key_id[APIKEY_KEY_ID_LEN + 1];
	Oid			role;
	text	   *name;
	ArrayType  *scopes;
	Jsonb	   *metadata;
	bool		has_expiry;
	TimestampTz expires_at;
	char		role_name[NAMEDATALEN];	/* the role's name at verification */
	/* set by apikey_limits_apply (limits.c) */
	bool		has_retry_after;	/* rate_limited, and retrying can help */
	int64		retry_after;	/* microseconds until a retry can succeed */
	bool		has_remaining;	/* the key has a quota */
	int64		remaining;		/* quota left after this request */
} ApiKeyVerdict;

extern const char *apikey_status_name(ApiKeyStatus status);
extern void apikey_verify_token(const char *s, size_t len,
								const ApiKeyRequest *req, ApiKeyVerdict *out);
extern void apikey_verify_digest(const char *prefix, int prefix_len,
								 const char *key_id, const uint8 *digest,
								 const ApiKeyRequest *req, ApiKeyVerdict *out);
extern void apikey_verify_text_arg(FunctionCallInfo fcinfo, ApiKeyRequest *req,
								   ApiKeyVerdict *v);
extern void apikey_verify_apikey_arg(FunctionCallInfo fcinfo, ApiKeyRequest *req,
									 ApiKeyVerdict *v);
extern Datum apikey_verdict_datum(FunctionCallInfo fcinfo, const ApiKeyVerdict *v);
extern bool apikey_scopes_hold(ArrayType *scopes, const char *want,
							   int want_len);
extern uint64 apikey_verify_repeats(void);

/*
 * request_log.c: requests made with a key, queued in shared memory for the
 * worker (apikeys.audit_requests).  The verify path notes each request once
 * through APIKEY_REQUEST_LOG_NOTE, which decides inline whether there is
 * anything to do: with the default (failures), a valid request costs one
 * test of the setting.
 */
typedef enum ApiKeyRequestKind
{
	APIKEY_REQUEST_VERIFY = 0,	/* apikey_verify, apikey_is_valid */
	APIKEY_REQUEST_LOGIN,		/* apikey_login, pre_request */
	APIKEY_REQUEST_LEAK_REPORT	/* apikey_report_leak */
} ApiKeyRequestKind;

#define APIKEYS_AUDIT_REQUESTS_OFF		0
#define APIKEYS_AUDIT_REQUESTS_FAILURES	1
#define APIKEYS_AUDIT_REQUESTS_ALL		2

extern int apikeys_audit_requests;
extern bool apikey_request_log_kind_pending;
extern void apikey_request_log_kind_next(ApiKeyRequestKind kind);
extern void apikey_request_log_note(const char *key_id, const ApiKeyEntry *e,
									const ApiKeyRequest *req,
									const ApiKeyVerdict *v, TimestampTz now);

/* Does this verdict need apikey_request_log_note()? */
static inline bool
apikey_request_log_wanted(ApiKeyStatus status)
{
	return apikey_request_log_kind_pending ||
		apikeys_audit_requests == APIKEYS_AUDIT_REQUESTS_ALL ||
		(status != APIKEY_VALID &&
		 apikeys_audit_requests == APIKEYS_AUDIT_REQUESTS_FAILURES);
}

#define APIKEY_REQUEST_LOG_NOTE(key_id, e, req, v, now) \
	do { \
		if (apikey_request_log_wanted((v)->status)) \
			apikey_request_log_note((key_id), (e), (req), (v), (now)); \
	} while (0)

/* lifecycle.c: a key never manages keys (refused while one is logged in) */
#define APIKEY_MANAGE_SCOPE		"apikeys:manage"
extern void apikeys_refuse_key_session(const char *what);

/* lifecycle.c: calling an internal function from another file's entry point */
extern Datum apikeys_call_internal(const char *name, int nargs,
								   const Oid *argtypes,
								   const NullableDatum *args, bool *isnull);

/* note.c: what the audit trigger records for the change under way */
extern void apikeys_audit_note_set(const char *action, const char *changes_json);
extern void apikeys_audit_note_clear(void);
/* NOTIFY apikeys: an event names only a row to read, never a key or role */
#define APIKEYS_EVENT_CHANNEL	"apikeys"
extern void apikeys_notify_event(const char *event, int64 seq);

/* import.c: imported keys, verified where the native format ends */
extern bool apikey_verify_imported(const char *s, size_t len,
								   const ApiKeyRequest *req, ApiKeyVerdict *out);

/* request.c: the approval workflow's setting */
extern void apikeys_request_init(void);

/* reveal.c: the key-encryption key's setting */
extern void apikeys_reveal_init(void);

/* pepper.c: the pepper of stored hashes, and its setting */
extern void apikeys_pepper_init(void);
extern int16 apikey_stored_hash(const uint8 digest[APIKEY_DIGEST_LEN],
								uint8 stored[APIKEY_DIGEST_LEN],
								char pepper_id[APIKEY_PEPPER_ID_LEN]);
extern bool apikey_peppered_match(const char *pepper_id, const uint8 *stored,
								  const uint8 *digest, bool *missing);
extern bool apikey_hash_matches(const char *key_id, int16 version,
								const char *pepper_id, const uint8 *stored,
								const uint8 *digest);
extern void apikey_pepper_missing_error(const char *key_id,
										const char *pepper_id) pg_attribute_noreturn();
extern const char *apikey_pepper_id_of(text *t);

/* session.c: apikey_login, the key context, pre_request, their settings */
extern void apikeys_session_init(void);
extern const char *apikey_session_login(ArrayType **scopes);

/*
 * limits.c: rate limits and quotas of a key, parsed from its catalog row.
 * A plain fixed-size struct, so that a key cache can keep it as it is.
 */
#define APIKEY_MAX_WINDOWS		4	/* rate-limit windows per key or role */
#define APIKEY_MAX_COST			1000000

typedef struct ApiKeyWindow
{
	int64		period;			/* window length, microseconds */
	int64		count;			/* requests per window (the refill rate) */
	int64		burst;			/* requests admitted at once */
} ApiKeyWindow;

typedef struct ApiKeyLimits
{
	int			nwindows;
	ApiKeyWindow windows[APIKEY_MAX_WINDOWS];
	bool		has_quota;
	int64		quota;			/* remaining uses, as last set */
	TimestampTz quota_set_at;	/* when it was set: its version */
	char		refill_unit;	/* 0 (none), 'h'our, 'd'ay, 'm'onth */
	int			refill_day;		/* of the month, 1-31 */
	int64		refill_amount;
} ApiKeyLimits;

extern void apikey_limits_from_row(const Datum *values, const bool *nulls,
								   int natts, ApiKeyLimits *out);
extern void apikey_limits_apply(const char *key_id, ApiKeySharedHint *hint,
								const ApiKeyLimits *lim, int32 cost,
								TimestampTz now, ApiKeyVerdict *v);

/* shmem.c, limits.c, usage.c, worker.c: settings, hooks, the worker */
extern void apikeys_shmem_init(void);

#endif							/* APIKEYS_H */
