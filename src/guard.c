/*
 * guard.c
 *		A utility hook that refuses CREATE RULE on the extension's relations
 *		before PostgreSQL locks them.
 *
 * CREATE RULE takes an AccessExclusiveLock on its relation and only then
 * checks that the caller owns it.  A queued exclusive lock makes every later
 * reader wait, so any role that may name a relation could stall its readers
 * for as long as some transaction of its own holds a weaker lock there.  The
 * extension's tables are out of reach (schema apikeys_internal), but the
 * listing views and the composite result type live in schema apikeys, which
 * everyone may use.  This hook makes the ownership check first, for the
 * extension's own relations only, and raises the same error PostgreSQL
 * would, without waiting.  It is installed when the library is loaded: in
 * every backend when apikeys is in shared_preload_libraries, otherwise only
 * in backends that have called an apikeys function (see README, Security).
 */
#include "postgres.h"

#include "catalog/namespace.h"
#include "catalog/objectaddress.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "miscadmin.h"
#include "nodes/parsenodes.h"
#include "tcop/utility.h"
#include "utils/acl.h"
#include "utils/lsyscache.h"

#include "apikeys.h"
#include "compat.h"

static ProcessUtility_hook_type prev_ProcessUtility = NULL;

/* Refuse CREATE RULE on an extension relation the caller does not own. */
static void
guard_rule(RuleStmt *stmt)
{
	/* no lock: only to find out, before PostgreSQL locks it */
	Oid			relid = RangeVarGetRelid(stmt->relation, NoLock, true);

	if (!OidIsValid(relid))
		return;
	/* a composite type's relation belongs to the extension through its type */
	if (!apikeys_owns_object(RelationRelationId, relid) &&
		!apikeys_owns_object(TypeRelationId, get_rel_type_id(relid)))
		return;
	if (!APIKEYS_CLASS_OWNERCHECK(relid, GetUserId()))
	{
		char		relkind = get_rel_relkind(relid);

		aclcheck_error(ACLCHECK_NOT_OWNER,
					   relkind == RELKIND_COMPOSITE_TYPE ? OBJECT_TYPE :
					   get_relkind_objtype(relkind),
					   stmt->relation->relname);
	}
}

/* ProcessUtility hook: the guard, then the previous hook or the standard path. */
static void
apikeys_ProcessUtility(PlannedStmt *pstmt, const char *queryString,
					   bool readOnlyTree, ProcessUtilityContext context,
					   ParamListInfo params, QueryEnvironment *queryEnv,
					   DestReceiver *dest, QueryCompletion *qc)
{
	if (IsA(pstmt->utilityStmt, RuleStmt))
		guard_rule((RuleStmt *) pstmt->utilityStmt);

	if (prev_ProcessUtility)
		prev_ProcessUtility(pstmt, queryString, readOnlyTree, context, params,
							queryEnv, dest, qc);
	else
		standard_ProcessUtility(pstmt, queryString, readOnlyTree, context,
								params, queryEnv, dest, qc);
}

/* Install the hook (library load). */
void
apikeys_guard_init(void)
{
	prev_ProcessUtility = ProcessUtility_hook;
	ProcessUtility_hook = apikeys_ProcessUtility;
}
