/*
 * objects.c
 *		Finding the extension's own tables and internal functions by name,
 *		safely.
 *
 * The C entry points look up apikeys_internal.key_catalog and the internal
 * halves apikeys_internal._<name> by name (once per backend or call site),
 * and a 0.1.0 database, not yet updated, keeps them in schema apikeys.  A
 * name alone proves nothing: in a 0.1.0 database any role that may create
 * schemas could create apikeys_internal first and plant a table or a
 * function there.  So an object is used only if pg_depend records it as a
 * member of extension apikeys; anything else is ignored as if absent.
 */
#include "postgres.h"

#include "access/htup_details.h"
#include "catalog/dependency.h"
#include "catalog/namespace.h"
#include "catalog/pg_class.h"
#include "catalog/pg_proc.h"
#include "commands/extension.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "apikeys.h"

/* Is the object a member of extension apikeys? */
bool
apikeys_owns_object(Oid classid, Oid objid)
{
	Oid			ext = get_extension_oid("apikeys", true);

	return OidIsValid(ext) && OidIsValid(objid) &&
		getExtensionOfObject(classid, objid) == ext;
}

/*
 * The OID of the extension's relation relname, in apikeys_internal, or for
 * a 0.1.0 database in apikeys; InvalidOid when there is none.
 */
Oid
apikeys_relation_oid(const char *relname)
{
	const char *schemas[] = {APIKEYS_INTERNAL_SCHEMA, APIKEYS_SCHEMA_0_1};

	for (int i = 0; i < (int) lengthof(schemas); i++)
	{
		Oid			nsp = get_namespace_oid(schemas[i], true);
		Oid			relid;

		if (!OidIsValid(nsp))
			continue;
		relid = get_relname_relid(relname, nsp);
		if (apikeys_owns_object(RelationRelationId, relid))
			return relid;
	}
	return InvalidOid;
}

/*
 * The OID of the extension's function proname(argtypes), in
 * apikeys_internal, or for a 0.1.0 database in apikeys; InvalidOid when
 * there is none.
 */
Oid
apikeys_function_oid(const char *proname, int nargs, const Oid *argtypes)
{
	const char *schemas[] = {APIKEYS_INTERNAL_SCHEMA, APIKEYS_SCHEMA_0_1};
	oidvector  *args = buildoidvector(argtypes, nargs);

	for (int i = 0; i < (int) lengthof(schemas); i++)
	{
		Oid			nsp = get_namespace_oid(schemas[i], true);
		HeapTuple	tp;
		Oid			funcid;

		if (!OidIsValid(nsp))
			continue;
		tp = SearchSysCache3(PROCNAMEARGSNSP, CStringGetDatum(proname),
							 PointerGetDatum(args), ObjectIdGetDatum(nsp));
		if (!HeapTupleIsValid(tp))
			continue;
		funcid = ((Form_pg_proc) GETSTRUCT(tp))->oid;
		ReleaseSysCache(tp);
		if (apikeys_owns_object(ProcedureRelationId, funcid))
			return funcid;
	}
	return InvalidOid;
}
