/*
 * session.c
 *		Keys as roles: apikey_login, the key context that row-level security
 *		policies read (apikey_current, apikey_has_scope, apikey_scopes,
 *		apikey_metadata), the PostgREST pre-request hook apikeys.pre_request()
 *		with its route scopes, and the settings apikeys.require_key and
 *		apikeys.client_ip_header.
 *
 * A login verifies a token through the verify API of apikeys.h, then does
 * the equivalent of SET LOCAL ROLE to the key's role and records the key in
 * backend memory.  Nothing here is kept in a configuration parameter, so no
 * SET or set_config() can forge it.  The record is a small stack, one entry
 * per subtransaction that logged in: transaction end empties it, and the
 * rollback of a subtransaction pops what that subtransaction pushed, exactly
 * as the role itself is restored.  The helpers answer only while the
 * transaction still acts as the key's role (GetOuterUserId()), so a role
 * change that undoes the login (RESET ROLE, a function's SET role clause)
 * also hides the key.
 *
 * Everything runs with the invoker's rights: SET ROLE is refused inside
 * SECURITY DEFINER functions, and a login can never give the session more
 * than SET ROLE already could, since the session user must be a member of
 * the key's role.
 */
#include "postgres.h"

#include <sys/socket.h>

#include "access/detoast.h"
#include "access/genam.h"
#include "access/htup_details.h"
#include "access/relation.h"
#include "access/xact.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class_d.h"
#include "catalog/pg_collation_d.h"
#include "catalog/pg_type_d.h"
#include "common/jsonapi.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "mb/pg_wchar.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "utils/acl.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/inval.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/rel.h"
#include "utils/snapmgr.h"
#include "utils/syscache.h"

#include "apikeys.h"
#include "compat.h"

/* SQLSTATE of a login refused by a rate limit or quota (53400). */
#define APIKEY_ERRCODE_LIMITED	ERRCODE_CONFIGURATION_LIMIT_EXCEEDED

/* PostgREST turns RAISE SQLSTATE 'PGRST' into an HTTP response. */
#define ERRCODE_PGRST			MAKE_SQLSTATE('P','G','R','S','T')

/* apikeys_internal.route_scopes, in table order (1-based). */
#define APIKEYS_ROUTE_SCOPES	"route_scopes"
enum
{
	Anum_route_method = 1,
	Anum_route_path_pattern,
	Anum_route_scope,
	Natts_route
};
#define Natts_route_scopes		(Natts_route - 1)

/* Settings (see apikeys_session_init). */
static bool require_key = false;
static char *client_ip_header = NULL;
static char *anon_role = NULL;

/*
 * The key context: one entry per subtransaction that logged in, newest
 * first.  Entries live in key_context_mcxt, which transaction end resets.
 */
typedef struct KeyContext
{
	struct KeyContext *prev;	/* the login this one replaced */
	SubTransactionId subid;		/* subtransaction that owns this login */
	char		key_id[APIKEY_KEY_ID_LEN + 1];
	Oid			role;
	ArrayType  *scopes;			/* never NULL */
	Jsonb	   *metadata;		/* NULL when the key has none */
} KeyContext;

static KeyContext *key_context = NULL;
static LocalTransactionId key_context_lxid = InvalidLocalTransactionId;
static MemoryContext key_context_mcxt = NULL;

/* Forget every login of the transaction. */
static void
key_context_clear(void)
{
	key_context = NULL;
	key_context_lxid = InvalidLocalTransactionId;
	if (key_context_mcxt != NULL)
		MemoryContextReset(key_context_mcxt);
}

/* Transaction end, whichever way: the key context goes with it. */
static void
session_xact_callback(XactEvent event, void *arg)
{
	switch (event)
	{
		case XACT_EVENT_COMMIT:
		case XACT_EVENT_PARALLEL_COMMIT:
		case XACT_EVENT_ABORT:
		case XACT_EVENT_PARALLEL_ABORT:
		case XACT_EVENT_PREPARE:
			key_context_clear();
			break;
		default:
			break;
	}
}

/*
 * Subtransaction end: a rolled-back subtransaction takes its logins with it
 * (the role it set is restored by the GUC machinery at the same moment); a
 * committed one hands them to its parent.  Logins of a subtransaction are
 * always on top of the stack, since those of its children have been popped
 * or handed to it before it ends.
 */
static void
session_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
						 SubTransactionId parentSubid, void *arg)
{
	if (event == SUBXACT_EVENT_ABORT_SUB)
	{
		while (key_context != NULL && key_context->subid == mySubid)
		{
			KeyContext *gone = key_context;

			key_context = gone->prev;
			pfree(gone);
		}
	}
	else if (event == SUBXACT_EVENT_COMMIT_SUB)
	{
		for (KeyContext *c = key_context; c != NULL && c->subid == mySubid; c = c->prev)
			c->subid = parentSubid;
	}
}

/* The key this transaction logged in with, while it acts as its role. */
static const KeyContext *
current_key(void)
{
	if (key_context == NULL ||
		key_context_lxid != APIKEYS_CURRENT_LXID() ||
		GetOuterUserId() != key_context->role)
		return NULL;
	return key_context;
}

/*
 * The key this transaction last logged in with, whatever role it acts as
 * now (NULL if none), and its scopes: a transaction that logged in with a
 * key manages no keys, even after RESET ROLE (lifecycle.c).
 */
const char *
apikey_session_login(ArrayType **scopes)
{
	if (key_context == NULL || key_context_lxid != APIKEYS_CURRENT_LXID())
		return NULL;
	if (scopes != NULL)
		*scopes = key_context->scopes;
	return key_context->key_id;
}

/* Record a login, replacing one made earlier in the same subtransaction. */
static void
key_context_push(const ApiKeyVerdict *v)
{
	SubTransactionId subid = GetCurrentSubTransactionId();
	MemoryContext old;
	KeyContext *c;

	if (key_context_mcxt == NULL)
		key_context_mcxt = AllocSetContextCreate(TopMemoryContext,
												 "apikeys key context",
												 ALLOCSET_SMALL_SIZES);
	if (key_context_lxid != APIKEYS_CURRENT_LXID())
		key_context_clear();	/* can't happen: transaction end clears it */

	old = MemoryContextSwitchTo(key_context_mcxt);
	c = palloc0(sizeof(KeyContext));
	memcpy(c->key_id, v->key_id, sizeof(c->key_id));
	c->role = v->role;
	c->scopes = v->scopes != NULL ? DatumGetArrayTypePCopy(PointerGetDatum(v->scopes))
		: construct_empty_array(TEXTOID);
	c->metadata = v->metadata != NULL ? DatumGetJsonbPCopy(PointerGetDatum(v->metadata))
		: NULL;
	c->subid = subid;
	MemoryContextSwitchTo(old);

	if (key_context != NULL && key_context->subid == subid)
	{
		KeyContext *replaced = key_context;

		c->prev = replaced->prev;
		pfree(replaced);
	}
	else
		c->prev = key_context;
	key_context = c;
	key_context_lxid = APIKEYS_CURRENT_LXID();
}

/*
 * Why a verified key may not log in, or LOGIN_OK.  Checked in this order:
 * the verdict, the key's role (never a superuser or BYPASSRLS role), and
 * whether the session user may SET ROLE to it.
 */
typedef enum LoginRefusal
{
	LOGIN_OK = 0,
	LOGIN_BAD_KEY,				/* 28000: invalid, revoked, ..., origin */
	LOGIN_NO_SCOPE,				/* 42501 */
	LOGIN_LIMITED,				/* 53400: rate limited, quota exceeded */
	LOGIN_SUPERUSER_ROLE,		/* 42501 */
	LOGIN_BYPASSRLS_ROLE,		/* 42501 */
	LOGIN_NOT_MEMBER			/* 42501 */
} LoginRefusal;

/* Decide whether the verdict lets the session log in; name the role. */
static LoginRefusal
login_check(const ApiKeyVerdict *v, char **rolename)
{
	HeapTuple	tup;
	Form_pg_authid auth;
	LoginRefusal r = LOGIN_OK;

	*rolename = NULL;
	switch (v->status)
	{
		case APIKEY_VALID:
			break;
		case APIKEY_INSUFFICIENT_SCOPE:
			return LOGIN_NO_SCOPE;
		case APIKEY_RATE_LIMITED:
		case APIKEY_QUOTA_EXCEEDED:
			return LOGIN_LIMITED;
		default:
			return LOGIN_BAD_KEY;
	}

	tup = SearchSysCache1(AUTHOID, ObjectIdGetDatum(v->role));
	if (!HeapTupleIsValid(tup))
		return LOGIN_BAD_KEY;	/* dropped since verification: orphaned */
	auth = (Form_pg_authid) GETSTRUCT(tup);
	*rolename = pstrdup(NameStr(auth->rolname));
	if (auth->rolsuper)
		r = LOGIN_SUPERUSER_ROLE;
	else if (auth->rolbypassrls)
		r = LOGIN_BYPASSRLS_ROLE;
	ReleaseSysCache(tup);
	if (r != LOGIN_OK)
		return r;

	/* What SET ROLE itself checks (check_role in variable.c). */
	if (!is_member_of_role(GetSessionUserId(), v->role))
		return LOGIN_NOT_MEMBER;
	return LOGIN_OK;
}

/* SET LOCAL ROLE to the key's role and record the key. */
static void
login_apply(const ApiKeyVerdict *v, const char *rolename)
{
	(void) set_config_option("role", rolename, PGC_USERSET, PGC_S_SESSION,
							 GUC_ACTION_LOCAL, true, ERROR, false);
	key_context_push(v);
}

/* Refuse to log in where SET ROLE cannot work, before verifying anything. */
static void
login_check_context(const char *what)
{
	if (InLocalUserIdChange() || InSecurityRestrictedOperation())
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("%s cannot run inside a security-definer function", what),
				 errdetail("It does SET LOCAL ROLE, which PostgreSQL refuses there."),
				 errhint("Call it directly, or from a function with invoker rights.")));
	/* the verification that follows is recorded as a login (request_log.c) */
	apikey_request_log_kind_next(APIKEY_REQUEST_LOGIN);
}

/* A sentence for the detail of an error: the verdict's status. */
static char *
status_sentence(ApiKeyStatus status)
{
	return psprintf("The key's status is %s.", apikey_status_name(status));
}

static Datum login_verified(FunctionCallInfo fcinfo, const ApiKeyRequest *req,
							ApiKeyVerdict *v);
static int	retry_after_seconds(const ApiKeyVerdict *v);

/* SQL function: apikey_login(text, text, inet, text) returns apikeys.verification */
PG_FUNCTION_INFO_V1(apikey_login);
Datum
apikey_login(PG_FUNCTION_ARGS)
{
	ApiKeyRequest req;
	ApiKeyVerdict v;

	login_check_context("apikey_login");
	apikey_verify_text_arg(fcinfo, &req, &v);
	return login_verified(fcinfo, &req, &v);
}

/*
 * SQL function: apikey_login(apikey, text, inet, text) returns apikeys.verification
 *
 * A token bound as $1::apikeys.apikey is a redacted constant wherever
 * PostgreSQL prints a plan (auto_explain), where a text one is printed whole.
 */
PG_FUNCTION_INFO_V1(apikey_login_apikey);
Datum
apikey_login_apikey(PG_FUNCTION_ARGS)
{
	ApiKeyRequest req;
	ApiKeyVerdict v;

	login_check_context("apikey_login");
	apikey_verify_apikey_arg(fcinfo, &req, &v);
	return login_verified(fcinfo, &req, &v);
}

/* The rest of a login, once the token is verified: refuse, or become the key. */
static Datum
login_verified(FunctionCallInfo fcinfo, const ApiKeyRequest *req, ApiKeyVerdict *v)
{
	LoginRefusal why;
	char	   *rolename;

	/* (errors hide the statement from the server log: it may hold the token) */
	why = login_check(v, &rolename);
	switch (why)
	{
		case LOGIN_OK:
			break;
		case LOGIN_BAD_KEY:
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION),
					 errhidestmt(true),
					 errmsg("api key authentication failed"),
					 errdetail_internal("%s", status_sentence(v->status)),
					 v->status == APIKEY_IP_NOT_ALLOWED && req->client_ip == NULL ?
					 errhint("The key may only be used from certain networks: pass the client's address as client_ip.") :
					 v->status == APIKEY_ORIGIN_NOT_ALLOWED && req->origin == NULL ?
					 errhint("The key may only be used from certain web origins: pass the request's origin.") : 0));
			break;
		case LOGIN_NO_SCOPE:
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errhidestmt(true),
					 errmsg("api key lacks the required scope"),
					 errdetail_internal("%s", status_sentence(v->status))));
			break;
		case LOGIN_LIMITED:
			ereport(ERROR,
					(errcode(APIKEY_ERRCODE_LIMITED),
					 errhidestmt(true),
					 errmsg("api key is over its limit"),
					 errdetail_internal("%s", status_sentence(v->status)),
					 v->has_retry_after ?
					 errhint("Retry in %d seconds.", retry_after_seconds(v)) : 0));
			break;
		case LOGIN_SUPERUSER_ROLE:
		case LOGIN_BYPASSRLS_ROLE:
			ereport(ERROR,
					(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
					 errhidestmt(true),
					 errmsg("api key cannot log in as role %s", quote_identifier(rolename)),
					 errdetail("Role %s %s.", quote_identifier(rolename),
							   why == LOGIN_SUPERUSER_ROLE ?
							   "is a superuser" : "has the BYPASSRLS attribute"),
					 errhint("API keys do not inherit superuser or BYPASSRLS privileges: issue the key for a role without them.")));
			break;
		case LOGIN_NOT_MEMBER:
			{
				char	   *session_name = GetUserNameFromId(GetSessionUserId(), false);

				ereport(ERROR,
						(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
						 errhidestmt(true),
						 errmsg("permission denied to log in as role %s", quote_identifier(rolename)),
						 errdetail("Session user %s may not SET ROLE %s.",
								   quote_identifier(session_name), quote_identifier(rolename)),
						 errhint("Grant the key's role to the role that connects, as for PostgREST's authenticator: GRANT %s TO %s;",
								 quote_identifier(rolename), quote_identifier(session_name))));
			}
			break;
	}

	if (!IsTransactionBlock())
		ereport(WARNING,
				(errcode(ERRCODE_NO_ACTIVE_SQL_TRANSACTION),
				 errmsg("apikey_login outside a transaction block lasts until the end of this statement"),
				 errhint("Call it after BEGIN: the login lasts until the transaction ends.")));
	login_apply(v, rolename);
	return apikey_verdict_datum(fcinfo, v);
}

/* SQL function: apikey_current() returns text */
PG_FUNCTION_INFO_V1(apikey_current);
Datum
apikey_current(PG_FUNCTION_ARGS)
{
	const KeyContext *c = current_key();

	if (c == NULL)
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(c->key_id));
}

/* SQL function: apikey_has_scope(text) returns bool */
PG_FUNCTION_INFO_V1(apikey_has_scope);
Datum
apikey_has_scope(PG_FUNCTION_ARGS)
{
	const KeyContext *c = current_key();
	text	   *want = PG_GETARG_TEXT_PP(0);

	if (c == NULL)
		PG_RETURN_BOOL(false);
	PG_RETURN_BOOL(apikey_scopes_hold(c->scopes, VARDATA_ANY(want),
									  VARSIZE_ANY_EXHDR(want)));
}

/* SQL function: apikey_scopes() returns text[] */
PG_FUNCTION_INFO_V1(apikey_scopes);
Datum
apikey_scopes(PG_FUNCTION_ARGS)
{
	const KeyContext *c = current_key();

	if (c == NULL)
		PG_RETURN_NULL();
	PG_RETURN_ARRAYTYPE_P(DatumGetArrayTypePCopy(PointerGetDatum(c->scopes)));
}

/* SQL function: apikey_metadata() returns jsonb */
PG_FUNCTION_INFO_V1(apikey_metadata);
Datum
apikey_metadata(PG_FUNCTION_ARGS)
{
	const KeyContext *c = current_key();

	if (c == NULL || c->metadata == NULL)
		PG_RETURN_NULL();
	PG_RETURN_JSONB_P(DatumGetJsonbPCopy(PointerGetDatum(c->metadata)));
}


/*
 * ---------------------------------------------------------------------------
 * PostgREST: apikeys.pre_request()
 * ---------------------------------------------------------------------------
 */

/* The request headers pre_request reads, by index. */
enum
{
	H_AUTHORIZATION = 0,
	H_X_API_KEY,
	H_APIKEY,
	H_ORIGIN,
	H_REFERER,
	H_CLIENT_IP,				/* named by apikeys.client_ip_header, if set */
	H_COUNT
};

typedef enum HeaderState
{
	HDR_ABSENT = 0,
	HDR_STRING,					/* one string value (or the same one repeated) */
	HDR_MALFORMED,				/* not a string: a number, null, array, object */
	HDR_CONFLICT				/* given more than once, differently */
} HeaderState;

typedef struct Header
{
	HeaderState state;
	char	   *value;
} Header;

/* State of the request.headers parser. */
typedef struct HeaderParse
{
	JsonLexContext *lex;
	const char *names[H_COUNT];
	Header		h[H_COUNT];
	int			current;		/* header whose value comes next, or -1 */
	bool		is_object;
} HeaderParse;

/* Record one value of a header (names compare without regard to case). */
static void
header_seen(HeaderParse *hp, HeaderState state, const char *value)
{
	Header	   *h = &hp->h[hp->current];

	hp->current = -1;
	if (h->state == HDR_ABSENT)
	{
		h->state = state;
		h->value = (char *) value;
	}
	else if (h->state != state || state != HDR_STRING || strcmp(h->value, value) != 0)
		h->state = HDR_CONFLICT;
}

static void
hp_object_start(void *state)
{
	HeaderParse *hp = state;

	if (hp->lex->lex_level == 0)
		hp->is_object = true;
	else if (hp->lex->lex_level == 1 && hp->current >= 0)
		header_seen(hp, HDR_MALFORMED, NULL);
}

static void
hp_array_start(void *state)
{
	HeaderParse *hp = state;

	if (hp->lex->lex_level == 1 && hp->current >= 0)
		header_seen(hp, HDR_MALFORMED, NULL);
}

static void
hp_field_start(void *state, char *fname, bool isnull)
{
	HeaderParse *hp = state;

	if (hp->lex->lex_level != 1)
		return;
	hp->current = -1;
	for (int i = 0; i < H_COUNT; i++)
	{
		if (hp->names[i] != NULL && pg_strcasecmp(fname, hp->names[i]) == 0)
		{
			hp->current = i;
			break;
		}
	}
}

static void
hp_scalar(void *state, char *token, JsonTokenType tokentype)
{
	HeaderParse *hp = state;

	if (hp->lex->lex_level == 1 && hp->current >= 0)
		header_seen(hp, tokentype == JSON_TOKEN_STRING ? HDR_STRING : HDR_MALFORMED,
					token);
}

/* the actions the parser calls (src/compat.h) */
APIKEYS_JSON_STRUCT_ACTION(hp_object_start_action, hp_object_start)
APIKEYS_JSON_STRUCT_ACTION(hp_array_start_action, hp_array_start)
APIKEYS_JSON_OFIELD_ACTION(hp_field_start_action, hp_field_start)
APIKEYS_JSON_SCALAR_ACTION(hp_scalar_action, hp_scalar)

/*
 * Parse request.headers (a JSON object, as PostgREST sets it) and pick out
 * the headers of interest.  Returns false when it is not a JSON object.
 * The parser reports errors by return code; nothing here can put a header
 * value into an error message.
 */
static bool
parse_headers(const char *json, HeaderParse *hp)
{
	JsonSemAction sem;
	char	   *copy = pstrdup(json);

	memset(hp, 0, sizeof(*hp));
	hp->names[H_AUTHORIZATION] = "authorization";
	hp->names[H_X_API_KEY] = "x-api-key";
	hp->names[H_APIKEY] = "apikey";
	hp->names[H_ORIGIN] = "origin";
	hp->names[H_REFERER] = "referer";
	hp->names[H_CLIENT_IP] = client_ip_header != NULL && client_ip_header[0] != '\0' ?
		client_ip_header : NULL;
	hp->current = -1;
	hp->lex = APIKEYS_JSON_LEXER(copy, strlen(copy), GetDatabaseEncoding(), true);

	memset(&sem, 0, sizeof(sem));
	sem.semstate = hp;
	sem.object_start = hp_object_start_action;
	sem.array_start = hp_array_start_action;
	sem.object_field_start = hp_field_start_action;
	sem.scalar = hp_scalar_action;
	return pg_parse_json(hp->lex, &sem) == JSON_SUCCESS && hp->is_object;
}

/* Skip HTTP white space (space and tab) at both ends, in place. */
static char *
trim_ows(char *s)
{
	char	   *end;

	while (*s == ' ' || *s == '\t')
		s++;
	end = s + strlen(s);
	while (end > s && (end[-1] == ' ' || end[-1] == '\t'))
		*--end = '\0';
	return s;
}

/* The credentials a request carries. */
typedef struct Credentials
{
	char	   *token;			/* the api key given, or NULL */
	bool		bearer;			/* it came as Authorization: Bearer */
	bool		jwt;			/* Authorization: Bearer carried a JWT */
	char	   *jwt_token;		/* that JWT */
	bool		conflict;		/* several different keys, or a key and a JWT */
} Credentials;

/* Note one api key; a second, different one is a conflict. */
static void
credential_add(Credentials *cr, char *token)
{
	if (cr->token == NULL)
		cr->token = token;
	else if (strcmp(cr->token, token) != 0)
		cr->conflict = true;
}

/* Note an api key header: its value, or "" (invalid) when malformed. */
static void
credential_header(Credentials *cr, const Header *h)
{
	if (h->state == HDR_STRING)
		credential_add(cr, trim_ows(h->value));
	else if (h->state == HDR_MALFORMED)
		credential_add(cr, "");
	else if (h->state == HDR_CONFLICT)
		cr->conflict = true;
}

/*
 * Find the credentials: Authorization: Bearer <key> or ApiKey <key>,
 * x-api-key, apikey.  A Bearer value with a dot is a JWT, PostgREST's to
 * check; other Authorization schemes are not ours either.
 */
static void
find_credentials(HeaderParse *hp, Credentials *cr)
{
	Header	   *auth = &hp->h[H_AUTHORIZATION];

	memset(cr, 0, sizeof(*cr));
	if (auth->state == HDR_STRING)
	{
		char	   *s = trim_ows(auth->value);
		char	   *sp = s + strcspn(s, " \t");
		char	   *param = trim_ows(sp);

		if (sp - s == 6 && pg_strncasecmp(s, "bearer", 6) == 0)
		{
			if (strchr(param, '.') != NULL)
			{
				cr->jwt = true;
				cr->jwt_token = param;
			}
			else
			{
				credential_add(cr, param);
				cr->bearer = true;
			}
		}
		else if (sp - s == 6 && pg_strncasecmp(s, "apikey", 6) == 0)
			credential_add(cr, param);
	}
	else
		credential_header(cr, auth);
	credential_header(cr, &hp->h[H_X_API_KEY]);
	credential_header(cr, &hp->h[H_APIKEY]);
	if (cr->jwt && cr->token != NULL)
		cr->conflict = true;
}

static const char *request_setting(const char *name);

/* Longest JWT payload segment jwt_authenticated decodes. */
#define JWT_PAYLOAD_MAXLEN 16384

/*
 * Decode base64url (RFC 4648 section 5, without padding) into a new
 * NUL-terminated string.  NULL when the input is not base64url or decodes
 * to bytes with a NUL among them.
 */
static char *
base64url_decode(const char *s, size_t len)
{
	char	   *out = palloc(len * 3 / 4 + 2);
	size_t		n = 0;
	uint32		acc = 0;
	int			bits = 0;

	for (size_t i = 0; i < len; i++)
	{
		char		c = s[i];
		int			v;

		if (c >= 'A' && c <= 'Z')
			v = c - 'A';
		else if (c >= 'a' && c <= 'z')
			v = c - 'a' + 26;
		else if (c >= '0' && c <= '9')
			v = c - '0' + 52;
		else if (c == '-')
			v = 62;
		else if (c == '_')
			v = 63;
		else
			return NULL;
		acc = (acc << 6) | (uint32) v;
		bits += 6;
		if (bits >= 8)
		{
			bits -= 8;
			out[n] = (char) ((acc >> bits) & 0xFF);
			if (out[n] == '\0')
				return NULL;
			n++;
		}
	}
	if (bits >= 6)				/* a lone last character: not base64 */
		return NULL;
	out[n] = '\0';
	return out;
}

/*
 * Compare a JWT's payload with PostgREST's request.jwt.claims, and return
 * the role the claims name (NULL when they differ, name no role, or either
 * is not a JSON object).  Client input: any error inside (a number out of
 * range, nesting too deep) is caught in a subtransaction and means NULL.
 */
static char *
jwt_claims_role(const char *payload, const char *claims)
{
	MemoryContext oldcontext = CurrentMemoryContext;
	ResourceOwner oldowner = CurrentResourceOwner;
	char	   *volatile role = NULL;

	if (pg_verifymbstr(payload, strlen(payload), true) == false)
		return NULL;

	BeginInternalSubTransaction(NULL);
	MemoryContextSwitchTo(oldcontext);
	PG_TRY();
	{
		Jsonb	   *p = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(payload)));
		Jsonb	   *c = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(claims)));

		if (JB_ROOT_IS_OBJECT(p) && !JB_ROOT_IS_SCALAR(p) &&
			DatumGetBool(DirectFunctionCall2(jsonb_eq, JsonbPGetDatum(p), JsonbPGetDatum(c))))
		{
			JsonbValue *r = getKeyJsonValueFromContainer(&c->root, "role", 4, NULL);

			if (r != NULL && r->type == jbvString && r->val.string.len > 0)
				role = pnstrdup(r->val.string.val, r->val.string.len);
		}
		ReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcontext);
		edata = CopyErrorData();
		FlushErrorState();
		RollbackAndReleaseCurrentSubTransaction();
		MemoryContextSwitchTo(oldcontext);
		CurrentResourceOwner = oldowner;
		if (edata->sqlerrcode == ERRCODE_QUERY_CANCELED ||
			edata->sqlerrcode == ERRCODE_ADMIN_SHUTDOWN ||
			edata->elevel > ERROR)
			ReThrowError(edata);
		FreeErrorData(edata);
		role = NULL;
	}
	PG_END_TRY();
	return role;
}

/*
 * Did PostgREST authenticate this JWT, to a role other than its anonymous
 * one?  PostgREST checks the FIRST Authorization header, request.headers
 * holds the LAST: a request with two can carry a JWT PostgREST never saw.
 * So the JWT counts only when PostgREST's request.jwt.claims are exactly its
 * payload (PostgREST sets them from the JWT it verified, or to {"role":
 * <anonymous role>} when it verified none), they name a role, and that role
 * is not apikeys.anon_role (a JWT that leaves the request anonymous is no
 * credential).  With apikeys.anon_role unset no JWT counts.
 */
static bool
jwt_authenticated(const char *jwt)
{
	const char *p1;
	const char *p2;
	char	   *payload;
	char	   *role;

	if (anon_role == NULL || anon_role[0] == '\0' || jwt == NULL)
		return false;
	p1 = strchr(jwt, '.');
	if (p1 == NULL)
		return false;
	p1++;
	p2 = strchr(p1, '.');
	if (p2 == NULL || p2 - p1 > JWT_PAYLOAD_MAXLEN)
		return false;
	payload = base64url_decode(p1, p2 - p1);
	if (payload == NULL)
		return false;
	role = jwt_claims_role(payload, request_setting("request.jwt.claims"));
	return role != NULL && strcmp(role, anon_role) != 0;
}

/*
 * The client address from the trusted proxy's header: the last entry of a
 * comma-separated list (the address the nearest proxy saw), a plain IPv4 or
 * IPv6 address.  NULL when absent or malformed.
 */
static inet *
client_ip_from(const Header *h)
{
	char	   *s;
	char	   *comma;
	inet	   *ip;
	int			bits;

	if (h->state != HDR_STRING)
		return NULL;
	s = h->value;
	comma = strrchr(s, ',');
	if (comma != NULL)
		s = comma + 1;
	s = trim_ows(s);
	if (s[0] == '\0' || strlen(s) > 45 || strspn(s, "0123456789abcdefABCDEF:.") != strlen(s))
		return NULL;
	ip = (inet *) palloc0(sizeof(inet));
	ip_family(ip) = strchr(s, ':') != NULL ? PGSQL_AF_INET6 : PGSQL_AF_INET;
	bits = pg_inet_net_pton(ip_family(ip), s, ip_addr(ip), -1);
	if (bits != ip_maxbits(ip))
		return NULL;
	ip_bits(ip) = bits;
	SET_INET_VARSIZE(ip);
	return ip;
}

/*
 * The request's web origin: the Origin header, else the scheme, host and
 * port of the Referer.  NULL when neither gives one.
 */
static text *
origin_from(HeaderParse *hp)
{
	Header	   *o = &hp->h[H_ORIGIN];
	Header	   *r = &hp->h[H_REFERER];
	char	   *s;
	char	   *host;
	size_t		hostlen;

	if (o->state != HDR_ABSENT)
		return o->state == HDR_STRING ? cstring_to_text(trim_ows(o->value)) : NULL;
	if (r->state != HDR_STRING)
		return NULL;
	s = trim_ows(r->value);
	host = strstr(s, "://");
	if (host == NULL || host == s || strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-") != (size_t) (host - s))
		return NULL;
	host += 3;
	hostlen = strcspn(host, "/?#");
	if (hostlen == 0 || memchr(host, '@', hostlen) != NULL)
		return NULL;
	return cstring_to_text_with_len(s, host - s + hostlen);
}

/* The request setting name, or "" when it is not set. */
static const char *
request_setting(const char *name)
{
	const char *v = GetConfigOption(name, true, false);

	return v != NULL ? v : "";
}

/* Why route_path refused a request path. */
typedef enum RoutePathError
{
	ROUTE_PATH_OK = 0,
	ROUTE_PATH_ENCODED_SLASH,	/* %2F or %2f */
	ROUTE_PATH_BAD_ESCAPE,		/* % not followed by two hex digits */
	ROUTE_PATH_NUL,				/* %00 */
	ROUTE_PATH_NOT_UTF8,		/* decoded bytes that are not UTF-8 */
	ROUTE_PATH_NOT_ASCII		/* non-ASCII, in a database that is not UTF-8 */
} RoutePathError;

/* The value of a hexadecimal digit, or -1. */
static int
hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * The path PostgREST routes on, from request.path (the raw request target
 * PostgREST puts there, without the query string).  PostgREST 11 and 12
 * route on Warp's pathInfo, http-types' decodePathSegments: one leading "/"
 * dropped (a target without one, "orders", is served too), the rest split
 * at each "/", each segment percent-decoded ("+" stays "+") and read as
 * UTF-8; then "/x" is table x and "/rpc/f" function f, and every other
 * shape is a 404 before any transaction.  The result is "/" and the decoded
 * segments joined by "/": "/ord%65rs", "/%6frders" and "orders" all give
 * "/orders".  Nothing else is normalised, as PostgREST normalises nothing
 * else ("/orders/", "//orders", "/./orders" are 404s; case is kept).
 *
 * Refused, rather than guessed, where PostgREST's reading and a pattern's
 * could differ: an encoded "/" (PostgREST serves "/rpc%2Ff" from a table
 * named "rpc/f"), an invalid escape (PostgREST keeps it as it is), an
 * encoded NUL (the name is cut there: "/orders%00" is served from orders),
 * decoded bytes that are not UTF-8 (PostgREST puts U+FFFD in their place),
 * and any non-ASCII byte in a database that is not UTF-8 (request.path
 * arrives converted, the escapes do not).
 */
static RoutePathError
route_path(const char *raw, char **path)
{
	const char *p = raw;
	StringInfoData buf;
	bool		high = false;

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '/');
	if (*p == '/')
		p++;
	for (; *p; p++)
	{
		unsigned char c = (unsigned char) *p;

		if (c == '%')
		{
			int			hi = hex_digit(p[1]);
			int			lo = hi < 0 ? -1 : hex_digit(p[2]);

			if (lo < 0)
				return ROUTE_PATH_BAD_ESCAPE;
			c = (unsigned char) (hi * 16 + lo);
			if (c == '/')
				return ROUTE_PATH_ENCODED_SLASH;
			if (c == '\0')
				return ROUTE_PATH_NUL;
			p += 2;
		}
		if (c >= 0x80)
			high = true;
		appendStringInfoChar(&buf, (char) c);
	}
	if (high)
	{
		if (GetDatabaseEncoding() != PG_UTF8)
			return ROUTE_PATH_NOT_ASCII;
		if (pg_encoding_verifymbstr(PG_UTF8, buf.data, buf.len) != buf.len)
			return ROUTE_PATH_NOT_UTF8;
	}
	*path = buf.data;
	return ROUTE_PATH_OK;
}

/*
 * Does a route row's method cover the request's?  "*" covers every method,
 * and GET covers HEAD, which PostgREST serves as a GET without the body
 * (row counts included, functions called).
 */
static bool
route_method_covers(const char *row_method, const char *method)
{
	return strcmp(row_method, "*") == 0 ||
		pg_strcasecmp(row_method, method) == 0 ||
		(pg_strcasecmp(method, "HEAD") == 0 && strcmp(row_method, "GET") == 0);
}

/*
 * The OID of apikeys_internal.route_scopes, looked up (objects.c: by name,
 * a member of the extension only) once per backend rather than per
 * request, where the two catalog scans of that check were more than half
 * of pre_request's time.  Forgotten at any relcache invalidation of it (a
 * DROP EXTENSION, say) or of everything.
 */
static Oid	route_scopes_relid = InvalidOid;
static bool route_scopes_callback_registered = false;

static void
route_scopes_relcache_callback(Datum arg, Oid relid)
{
	if (!OidIsValid(relid) || relid == route_scopes_relid)
		route_scopes_relid = InvalidOid;
}

/*
 * Open apikeys_internal.route_scopes with AccessShareLock.  Taking the lock
 * processes pending invalidations: if they
 * made the OID used stale, look it up again and retry, as cache.c does for
 * the catalog; once the lock is held and nothing was invalidated, the
 * relation is the extension's.
 */
static Relation
open_route_scopes(void)
{
	if (!route_scopes_callback_registered)
	{
		CacheRegisterRelcacheCallback(route_scopes_relcache_callback, (Datum) 0);
		route_scopes_callback_registered = true;
	}
	for (int attempt = 0; attempt < 3; attempt++)
	{
		Relation	rel;

		if (!OidIsValid(route_scopes_relid))
			route_scopes_relid = apikeys_relation_oid(APIKEYS_ROUTE_SCOPES);
		if (!OidIsValid(route_scopes_relid))
			break;
		rel = try_relation_open(route_scopes_relid, AccessShareLock);
		if (rel != NULL && OidIsValid(route_scopes_relid) &&
			RelationGetRelid(rel) == route_scopes_relid)
			return rel;
		if (rel != NULL)
			relation_close(rel, AccessShareLock);
		route_scopes_relid = InvalidOid;
	}
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("apikeys route scopes table is missing"),
			 errhint("Run ALTER EXTENSION apikeys UPDATE in this database.")));
	pg_unreachable();
}

/*
 * The scopes the route requires: every row of apikeys_internal.route_scopes
 * whose method covers the request's, and whose path_pattern the decoded
 * path (route_path) is LIKE.  Read straight from the table (no view, no
 * SQL, no privilege needed), with the latest snapshot so a change applies
 * from its commit.
 */
static List *
route_scopes_for(const char *method, const char *path)
{
	Relation	rel;
	Snapshot	snapshot;
	SysScanDesc scan;
	HeapTuple	tup;
	text	   *path_text;
	List	   *scopes = NIL;

	/* only the extension's own table: see objects.c */
	rel = open_route_scopes();
	if (rel->rd_rel->relkind != RELKIND_RELATION ||
		RelationGetDescr(rel)->natts != Natts_route_scopes)
		elog(ERROR, "apikeys route scopes table has an unexpected layout");

	path_text = cstring_to_text(path);
	snapshot = RegisterSnapshot(GetLatestSnapshot());
	scan = systable_beginscan(rel, InvalidOid, false, snapshot, 0, NULL);
	while (HeapTupleIsValid(tup = systable_getnext(scan)))
	{
		Datum		values[Natts_route_scopes];
		bool		nulls[Natts_route_scopes];

		heap_deform_tuple(tup, RelationGetDescr(rel), values, nulls);
		if (nulls[Anum_route_method - 1] || nulls[Anum_route_path_pattern - 1] ||
			nulls[Anum_route_scope - 1])
			continue;
		if (!route_method_covers(TextDatumGetCString(values[Anum_route_method - 1]),
								 method))
			continue;
		if (!DatumGetBool(DirectFunctionCall2Coll(textlike, C_COLLATION_OID,
												  PointerGetDatum(path_text),
												  values[Anum_route_path_pattern - 1])))
			continue;
		scopes = lappend(scopes, TextDatumGetCString(values[Anum_route_scope - 1]));
	}
	systable_endscan(scan);
	UnregisterSnapshot(snapshot);
	relation_close(rel, AccessShareLock);
	return scopes;
}

/* Append a JSON string, or null. */
static void
json_string(StringInfo buf, const char *s)
{
	if (s == NULL)
		appendStringInfoString(buf, "null");
	else
		escape_json(buf, s);
}

/*
 * Reject the request the way PostgREST (11.3 and later) documents for custom
 * errors: SQLSTATE PGRST, the message a JSON object (code, message, and
 * details and hint when there are some) and the detail a JSON object
 * (status, headers).  Nothing here ever holds a token.
 */
static void pg_attribute_noreturn()
reject(int http_status, const char *code, const char *message,
	   const char *details, const char *hint,
	   const char *header_name, const char *header_value)
{
	StringInfoData msg;
	StringInfoData det;

	initStringInfo(&msg);
	appendStringInfoString(&msg, "{\"code\":");
	json_string(&msg, code);
	appendStringInfoString(&msg, ",\"message\":");
	json_string(&msg, message);
	if (details != NULL)
	{
		appendStringInfoString(&msg, ",\"details\":");
		json_string(&msg, details);
	}
	if (hint != NULL)
	{
		appendStringInfoString(&msg, ",\"hint\":");
		json_string(&msg, hint);
	}
	appendStringInfoChar(&msg, '}');

	initStringInfo(&det);
	appendStringInfo(&det, "{\"status\":%d,\"headers\":{", http_status);
	if (header_name != NULL)
	{
		json_string(&det, header_name);
		appendStringInfoChar(&det, ':');
		json_string(&det, header_value);
	}
	appendStringInfoString(&det, "}}");

	ereport(ERROR,
			(errcode(ERRCODE_PGRST),
			 errmsg_internal("%s", msg.data),
			 errdetail_internal("%s", det.data)));
	pg_unreachable();
}

/* Is s a scope RFC 6750 lets a WWW-Authenticate scope parameter carry? */
static bool
scope_is_header_safe(const char *s)
{
	for (; *s; s++)
	{
		unsigned char c = (unsigned char) *s;

		if (c < 0x21 || c > 0x7e || c == '"' || c == '\\')
			return false;
	}
	return true;
}

/* The code of a rejection: apikey_<status>. */
static char *
reject_code(ApiKeyStatus status)
{
	return psprintf("apikey_%s", apikey_status_name(status));
}

/*
 * Whole seconds a limited client should wait (HTTP's Retry-After): the
 * verdict's retry_after rounded up, at least 1.  Only when the verdict has
 * one: an exhausted quota without a refill does not come back by waiting.
 */
static int
retry_after_seconds(const ApiKeyVerdict *v)
{
	int64		secs = (v->retry_after + USECS_PER_SEC - 1) / USECS_PER_SEC;

	return (int) Max(1, Min(secs, INT_MAX));
}

/* Reject a request whose key failed to log in (never returns). */
static void pg_attribute_noreturn()
reject_login(LoginRefusal why, const ApiKeyVerdict *v, const Credentials *cr,
			 const char *missing_scope)
{
	const char *scheme_error = cr->bearer ? "Bearer error=\"invalid_token\""
		: "ApiKey error=\"invalid_key\"";

	switch (why)
	{
		case LOGIN_BAD_KEY:
			reject(401, reject_code(v->status), "api key authentication failed",
				   status_sentence(v->status), NULL,
				   "WWW-Authenticate", scheme_error);
		case LOGIN_NO_SCOPE:
			reject(403, reject_code(APIKEY_INSUFFICIENT_SCOPE),
				   "api key lacks the required scope",
				   missing_scope != NULL ?
				   psprintf("This request requires scope %s.", missing_scope) :
				   status_sentence(APIKEY_INSUFFICIENT_SCOPE),
				   NULL, "WWW-Authenticate",
				   missing_scope != NULL && scope_is_header_safe(missing_scope) ?
				   psprintf("%s error=\"insufficient_scope\", scope=\"%s\"",
							cr->bearer ? "Bearer" : "ApiKey", missing_scope) :
				   psprintf("%s error=\"insufficient_scope\"",
							cr->bearer ? "Bearer" : "ApiKey"));
		case LOGIN_LIMITED:
			reject(429, reject_code(v->status), "api key is over its limit",
				   status_sentence(v->status), NULL,
				   v->has_retry_after ? "Retry-After" : NULL,
				   v->has_retry_after ? psprintf("%d", retry_after_seconds(v)) : NULL);
		case LOGIN_SUPERUSER_ROLE:
		case LOGIN_BYPASSRLS_ROLE:
		case LOGIN_NOT_MEMBER:
			/* The server's configuration, not the client's fault: log why. */
			ereport(LOG,
					(errmsg("apikeys.pre_request: key %s cannot log in: %s",
							v->key_id,
							why == LOGIN_NOT_MEMBER ?
							"the session user is not a member of the key's role" :
							"the key's role is a superuser or has BYPASSRLS"),
					 errhidestmt(true)));
			reject(403, "apikey_role_refused", "api key cannot be used here",
				   "The database role of this key cannot be assumed by this API.",
				   "The API's administrator can see why by calling apikeys.apikey_login as the connecting role.",
				   NULL, NULL);
		case LOGIN_OK:
			break;
	}
	elog(ERROR, "unexpected login outcome %d", (int) why);
}

/*
 * Reject a request whose path route_path refuses (never returns).  The path
 * itself is not repeated: it is the client's input.
 */
static void pg_attribute_noreturn()
reject_bad_path(const char *why)
{
	reject(400, "apikey_bad_path", "request path is ambiguous", why,
		   "Percent-encode each path segment once, with two hexadecimal digits after each %, and without %2F or %00.",
		   NULL, NULL);
}

/* SQL function: pre_request() returns void */
PG_FUNCTION_INFO_V1(apikeys_pre_request);
Datum
apikeys_pre_request(PG_FUNCTION_ARGS)
{
	const char *headers_json = request_setting("request.headers");
	HeaderParse hp;
	Credentials cr;
	List	   *scopes;
	ApiKeyRequest req;
	ApiKeyVerdict v;
	LoginRefusal why;
	char	   *rolename;
	char	   *path = NULL;
	const char *missing = NULL;
	ListCell   *lc;

	login_check_context("apikeys.pre_request");

	if (headers_json[0] == '\0')
		memset(&hp, 0, sizeof(hp));
	else if (!parse_headers(headers_json, &hp))
		reject(400, "apikey_bad_headers", "request headers are not a json object",
			   "The setting request.headers must hold the request's headers as a JSON object, as PostgREST sets it.",
			   NULL, NULL, NULL);

	find_credentials(&hp, &cr);
	if (cr.conflict)
		reject(400, "apikey_conflict", "more than one credential given",
			   "The request carries several different api keys, or an api key and a JWT.",
			   "Send one api key, in one header.", NULL, NULL);
	if (cr.jwt && jwt_authenticated(cr.jwt_token))
		PG_RETURN_VOID();		/* PostgREST has checked it and set its role */
	/* any other JWT is no credential: PostgREST runs the request as anonymous */

	switch (route_path(request_setting("request.path"), &path))
	{
		case ROUTE_PATH_OK:
			break;
		case ROUTE_PATH_ENCODED_SLASH:
			reject_bad_path("The path contains an encoded slash (%2F).");
		case ROUTE_PATH_BAD_ESCAPE:
			reject_bad_path("The path contains a % that is not followed by two hexadecimal digits.");
		case ROUTE_PATH_NUL:
			reject_bad_path("The path contains an encoded NUL (%00).");
		case ROUTE_PATH_NOT_UTF8:
			reject_bad_path("The decoded path is not valid UTF-8.");
		case ROUTE_PATH_NOT_ASCII:
			reject_bad_path("The path has characters other than ASCII, and the database encoding is not UTF-8.");
	}
	scopes = route_scopes_for(request_setting("request.method"), path);

	if (cr.token == NULL)
	{
		if (scopes != NIL)
			reject(401, "apikey_required", "api key required",
				   psprintf("This request requires an api key with scope %s.",
							(char *) linitial(scopes)),
				   NULL, "WWW-Authenticate", "ApiKey");
		if (require_key)
			reject(401, "apikey_required", "api key required",
				   "This API accepts only requests with an api key.",
				   NULL, "WWW-Authenticate", "ApiKey");
		PG_RETURN_VOID();		/* anonymous: stays PostgREST's anon role */
	}

	/*
	 * Verify with the route's first scope, so that verify orders the scope
	 * check among its other checks; the others are checked on the verdict.
	 */
	req.scope = scopes != NIL ? cstring_to_text(linitial(scopes)) : NULL;
	req.client_ip = client_ip_from(&hp.h[H_CLIENT_IP]);
	req.origin = origin_from(&hp);
	req.cost = 1;
	if (strlen(cr.token) > APIKEY_INPUT_MAXLEN)
		apikey_verify_token(NULL, 0, &req, &v); /* invalid, unread */
	else
		apikey_verify_token(cr.token, strlen(cr.token), &req, &v);

	why = login_check(&v, &rolename);
	if (why == LOGIN_NO_SCOPE)
		missing = linitial(scopes);
	else if (why == LOGIN_OK)
	{
		foreach(lc, scopes)
		{
			const char *s = lfirst(lc);

			if (v.scopes == NULL || !apikey_scopes_hold(v.scopes, s, strlen(s)))
			{
				why = LOGIN_NO_SCOPE;
				missing = s;
				break;
			}
		}
	}
	if (why != LOGIN_OK)
		reject_login(why, &v, &cr, missing);

	login_apply(&v, rolename);
	PG_RETURN_VOID();
}


/*
 * ---------------------------------------------------------------------------
 * Settings
 * ---------------------------------------------------------------------------
 */

/* apikeys.client_ip_header must be empty or an HTTP header name. */
static bool
check_client_ip_header(char **newval, void **extra, GucSource source)
{
	const char *s = *newval;

	if (s == NULL || s[0] == '\0')
		return true;
	if (strlen(s) > 64 ||
		strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_") != strlen(s))
	{
		GUC_check_errdetail("A header name is letters, digits, \"-\" and \"_\", at most 64 of them.");
		return false;
	}
	return true;
}

/*
 * Define the settings and register the transaction callbacks; called from
 * _PG_init.
 */
void
apikeys_session_init(void)
{
	DefineCustomBoolVariable("apikeys.require_key",
							 "Makes apikeys.pre_request reject requests without an api key (HTTP 401).",
							 "Requests with a JWT PostgREST verified, for a role other than apikeys.anon_role, are left to PostgREST. Only superusers (or roles granted SET on it) can change it, per role or database.",
							 &require_key,
							 false,
							 PGC_SUSET,
							 0,
							 NULL, NULL, NULL);
	DefineCustomStringVariable("apikeys.anon_role",
							   "PostgREST's anonymous role (its db-anon-role), for apikeys.pre_request.",
							   "A request with a JWT is left to PostgREST only when PostgREST verified that JWT and it names a role other than this one; empty (the default) leaves no JWT to PostgREST.",
							   &anon_role,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("apikeys.client_ip_header",
							   "Request header from which apikeys.pre_request takes the client's address.",
							   "Empty (the default) takes none. Set it only when a trusted proxy sets that header: clients can send any header.",
							   &client_ip_header,
							   "",
							   PGC_SUSET,
							   0,
							   check_client_ip_header, NULL, NULL);

	RegisterXactCallback(session_xact_callback, NULL);
	RegisterSubXactCallback(session_subxact_callback, NULL);
}
