/*
 * request.c
 *		The approval workflow's C parts: the setting apikeys.approver_role,
 *		the approver test the policies and internal functions use, and key
 *		ids drawn for requests.
 *
 * A request (apikey_request) is named by the key id its key will have, so
 * that the whole history of a key, from request to revocation, is under one
 * id in the audit log.  The workflow itself (request, approve, reject,
 * cancel, claim) is SQL in apikeys_internal, reached through the generic
 * lifecycle entry point (lifecycle.c); the token is minted at claim time,
 * so no secret is ever stored.
 *
 * Who approves: admins, and members of the role named by
 * apikeys.approver_role.  It is a superuser setting (PGC_SUSET), read here
 * from C: a value a client set as a placeholder before the library was
 * loaded is refused when the library defines the setting, and SQL never
 * reads the setting itself, so no client can name itself approver.
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/varlena.h"

#include "apikeys.h"

static char *approver_role = NULL;
static char *authenticators = NULL;

/* Define apikeys.approver_role; called from _PG_init. */
void
apikeys_request_init(void)
{
	DefineCustomStringVariable("apikeys.approver_role",
							   "Role whose members approve api key requests, besides apikeys_admin.",
							   "Empty (the default): only members of apikeys_admin and superusers approve. Only superusers (or roles granted SET on it) can change it, per database or role.",
							   &approver_role,
							   "",
							   PGC_SUSET,
							   0,
							   NULL, NULL, NULL);
	DefineCustomStringVariable("apikeys.authenticators",
							   "Login roles serving many people (PostgREST's authenticator), for four eyes in the approval workflow.",
							   "A comma-separated list of role names. A request made by one of them may be approved in another session of the same login, but not with the api key it was made with. Empty (the default): one login never both requests and approves a key.",
							   &authenticators,
							   "",
							   PGC_SUSET,
							   GUC_LIST_INPUT,
							   NULL, NULL, NULL);
}

/* SQL function: apikeys_internal._session_user() returns oid */
PG_FUNCTION_INFO_V1(apikeys_session_user);
Datum
apikeys_session_user(PG_FUNCTION_ARGS)
{
	PG_RETURN_OID(GetSessionUserId());
}

/* SQL function: apikeys_internal._is_authenticator(oid) returns boolean */
PG_FUNCTION_INFO_V1(apikeys_is_authenticator);
Datum
apikeys_is_authenticator(PG_FUNCTION_ARGS)
{
	Oid			who = PG_GETARG_OID(0);
	char	   *copy;
	List	   *names;
	ListCell   *lc;
	bool		found = false;

	if (authenticators == NULL || authenticators[0] == '\0')
		PG_RETURN_BOOL(false);
	copy = pstrdup(authenticators);
	if (!SplitIdentifierString(copy, ',', &names))
		PG_RETURN_BOOL(false);	/* unparsable: names no one */
	foreach(lc, names)
	{
		/* the role itself, not its members: a login is named, not a group */
		if (get_role_oid((const char *) lfirst(lc), true) == who)
		{
			found = true;
			break;
		}
	}
	list_free(names);
	pfree(copy);
	PG_RETURN_BOOL(found);
}

/* SQL function: apikeys_internal._may_approve(oid) returns boolean */
PG_FUNCTION_INFO_V1(apikeys_may_approve);
Datum
apikeys_may_approve(PG_FUNCTION_ARGS)
{
	Oid			who = PG_GETARG_OID(0);
	Oid			admin = get_role_oid("apikeys_admin", true);
	Oid			role;

	/* superusers are members of every role */
	if (OidIsValid(admin) && is_member_of_role(who, admin))
		PG_RETURN_BOOL(true);
	if (approver_role == NULL || approver_role[0] == '\0')
		PG_RETURN_BOOL(false);
	role = get_role_oid(approver_role, true);
	if (!OidIsValid(role))
		PG_RETURN_BOOL(false);	/* a role that does not exist has no members */
	PG_RETURN_BOOL(is_member_of_role(who, role));
}

/* SQL function: apikeys_internal._new_key_id() returns text */
PG_FUNCTION_INFO_V1(apikeys_new_key_id);
Datum
apikeys_new_key_id(PG_FUNCTION_ARGS)
{
	char		key_id[APIKEY_KEY_ID_LEN];

	apikey_random_base62(key_id, APIKEY_KEY_ID_LEN);
	PG_RETURN_TEXT_P(cstring_to_text_with_len(key_id, APIKEY_KEY_ID_LEN));
}
