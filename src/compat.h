/*
 * compat.h
 *		Every PostgreSQL version test of apikeys lives here, and nowhere else.
 *
 * apikeys is built and tested on PostgreSQL 15, 17 and 18 (test/majors.sh);
 * 16 compiles in principle with the same shims but has no test route.  The
 * shims below name every place where the major versions differ, so that a
 * new major is ported by extending this file alone (the call sites use the
 * APIKEYS_ names, never PG_VERSION_NUM).
 */
#ifndef APIKEYS_COMPAT_H
#define APIKEYS_COMPAT_H

#if PG_VERSION_NUM < 130000
#error "apikeys requires PostgreSQL 13 or later"
#endif

/* InitMaterializedSRF() appeared in 15; 13 and 14 need the manual setup. */
#if PG_VERSION_NUM < 150000
#error "apikeys supports PostgreSQL 15 and later: add an InitMaterializedSRF shim here for 13 and 14"
#endif

/* pg_cryptohash_error() (error strings from the hash layer) appeared in 15. */
#if PG_VERSION_NUM >= 150000
#define APIKEYS_CRYPTOHASH_ERROR(ctx) pg_cryptohash_error(ctx)
#else
#define APIKEYS_CRYPTOHASH_ERROR(ctx) "unknown error"
#endif

/* The backend's current local transaction id moved into MyProc->vxid in 17. */
#if PG_VERSION_NUM >= 170000
#define APIKEYS_CURRENT_LXID() (MyProc->vxid.lxid)
#else
#define APIKEYS_CURRENT_LXID() (MyProc->lxid)
#endif

/*
 * appendBinaryStringInfo() and pq_sendbytes() take their bytes as const
 * void * from 16 on (test/fuzz/fuzz_apikey.c defines both).
 */
#if PG_VERSION_NUM >= 160000
#define APIKEYS_BYTES_ARG const void *
#else
#define APIKEYS_BYTES_ARG const char *
#endif

/*
 * 18 replaced the suffix pg_attribute_noreturn() with the prefix pg_noreturn;
 * the old name, as 15 to 17 define it, keeps the declarations as they are
 * (GCC and clang accept the attribute in both places).
 */
#ifndef pg_attribute_noreturn
#if defined(__GNUC__) || defined(__SUNPRO_C)
#define pg_attribute_noreturn() __attribute__((noreturn))
#else
#define pg_attribute_noreturn()
#endif
#endif

/* MarkGUCPrefixReserved() was EmitWarningsOnPlaceholders() before 15. */
#if PG_VERSION_NUM < 150000
#define MarkGUCPrefixReserved(className) EmitWarningsOnPlaceholders(className)
#endif

/*
 * JSON semantic actions (session.c) return JsonParseErrorType from 16 on,
 * void before.  The handlers stay void functions; these macros define the
 * action to register: a wrapper of the type the parser wants that calls the
 * handler and lets parsing go on.
 */
#if PG_VERSION_NUM >= 160000
#define APIKEYS_JSON_RESULT JsonParseErrorType
#define APIKEYS_JSON_GO_ON JSON_SUCCESS
#else
#define APIKEYS_JSON_RESULT void
#define APIKEYS_JSON_GO_ON
#endif
#define APIKEYS_JSON_STRUCT_ACTION(action, handler) \
	static APIKEYS_JSON_RESULT \
	action(void *state) \
	{ \
		handler(state); \
		return APIKEYS_JSON_GO_ON; \
	}
#define APIKEYS_JSON_OFIELD_ACTION(action, handler) \
	static APIKEYS_JSON_RESULT \
	action(void *state, char *fname, bool isnull) \
	{ \
		handler(state, fname, isnull); \
		return APIKEYS_JSON_GO_ON; \
	}
#define APIKEYS_JSON_SCALAR_ACTION(action, handler) \
	static APIKEYS_JSON_RESULT \
	action(void *state, char *token, JsonTokenType tokentype) \
	{ \
		handler(state, token, tokentype); \
		return APIKEYS_JSON_GO_ON; \
	}

/*
 * makeJsonLexContextCstringLen() takes the context to fill as its first
 * argument from 17 on (NULL: allocate one).
 */
#if PG_VERSION_NUM >= 170000
#define APIKEYS_JSON_LEXER(json, len, encoding, need_escapes) \
	makeJsonLexContextCstringLen(NULL, (json), (len), (encoding), (need_escapes))
#else
#define APIKEYS_JSON_LEXER(json, len, encoding, need_escapes) \
	makeJsonLexContextCstringLen((json), (len), (encoding), (need_escapes))
#endif

/* pg_class_ownercheck() became object_ownercheck() in 16. */
#if PG_VERSION_NUM >= 160000
#define APIKEYS_CLASS_OWNERCHECK(relid, role) \
	object_ownercheck(RelationRelationId, (relid), (role))
#else
#define APIKEYS_CLASS_OWNERCHECK(relid, role) pg_class_ownercheck((relid), (role))
#endif

/*
 * The executor calls of the direct inserts (insert.c), for an INSERT into
 * one relation, range table index 1.  16 gave ExecInitRangeTable() the
 * permission infos (an RTE without one fails where the executor looks its
 * permissions up, as ExecConstraints() does for an error's detail) and
 * ExecInsertIndexTuples() the onlySummarizing flag; 17 gave
 * CheckValidResultRel() the MERGE actions and 18 the ON CONFLICT action;
 * 18 gave ExecInitRangeTable() the unpruned relations.  The call sites
 * include parser/parse_relation.h (addRTEPermissionInfo).
 */
#if PG_VERSION_NUM >= 180000
#define APIKEYS_INSERT_RANGE_TABLE(estate, rte) \
	do { \
		List	   *perminfos_ = NIL; \
		addRTEPermissionInfo(&perminfos_, (rte))->requiredPerms = ACL_INSERT; \
		ExecInitRangeTable((estate), list_make1(rte), perminfos_, bms_make_singleton(1)); \
	} while (0)
#elif PG_VERSION_NUM >= 160000
#define APIKEYS_INSERT_RANGE_TABLE(estate, rte) \
	do { \
		List	   *perminfos_ = NIL; \
		addRTEPermissionInfo(&perminfos_, (rte))->requiredPerms = ACL_INSERT; \
		ExecInitRangeTable((estate), list_make1(rte), perminfos_); \
	} while (0)
#else
#define APIKEYS_INSERT_RANGE_TABLE(estate, rte) \
	ExecInitRangeTable((estate), list_make1(rte))
#endif

#if PG_VERSION_NUM >= 180000
#define APIKEYS_CHECK_VALID_INSERT(rri) \
	CheckValidResultRel((rri), CMD_INSERT, ONCONFLICT_NONE, NIL)
#elif PG_VERSION_NUM >= 170000
#define APIKEYS_CHECK_VALID_INSERT(rri) CheckValidResultRel((rri), CMD_INSERT, NIL)
#else
#define APIKEYS_CHECK_VALID_INSERT(rri) CheckValidResultRel((rri), CMD_INSERT)
#endif

#if PG_VERSION_NUM >= 160000
#define APIKEYS_INSERT_INDEX_TUPLES(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL, false)
#else
#define APIKEYS_INSERT_INDEX_TUPLES(rri, slot, estate) \
	ExecInsertIndexTuples((rri), (slot), (estate), false, false, NULL, NIL)
#endif

/*
 * 18 renamed ri_ConstraintExprs (the CHECK constraints' expression states
 * of a result relation) to ri_CheckConstraintExprs.
 */
#if PG_VERSION_NUM >= 180000
#define APIKEYS_RRI_CHECK_EXPRS(rri) ((rri)->ri_CheckConstraintExprs)
#else
#define APIKEYS_RRI_CHECK_EXPRS(rri) ((rri)->ri_ConstraintExprs)
#endif

/* CHECK constraints can be NOT ENFORCED from 18 on (ConstrCheck.ccenforced). */
#if PG_VERSION_NUM >= 180000
#define APIKEYS_CHECK_ENFORCED(check) ((check)->ccenforced)
#else
#define APIKEYS_CHECK_ENFORCED(check) true
#endif

/*
 * 18 gave RelationGetPrimaryKeyIndex() deferrable_ok (false: a deferrable
 * primary key does not count, as before) and index_beginscan() the
 * instrumentation to fill (NULL: none).
 */
#if PG_VERSION_NUM >= 180000
#define APIKEYS_PRIMARY_KEY_INDEX(rel) RelationGetPrimaryKeyIndex((rel), false)
#define APIKEYS_INDEX_BEGINSCAN(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan((heap), (index), (snapshot), NULL, (nkeys), (norderbys))
#else
#define APIKEYS_PRIMARY_KEY_INDEX(rel) RelationGetPrimaryKeyIndex(rel)
#define APIKEYS_INDEX_BEGINSCAN(heap, index, snapshot, nkeys, norderbys) \
	index_beginscan((heap), (index), (snapshot), (nkeys), (norderbys))
#endif

#endif							/* APIKEYS_COMPAT_H */
