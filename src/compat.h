/*
 * compat.h
 *		Every PostgreSQL version test of apikeys lives here, and nowhere else.
 *
 * apikeys is built and tested on PostgreSQL 15.  The shims below name the
 * places where other major versions differ, so that 13 to 17 can be added
 * by extending this file alone.
 */
#ifndef APIKEYS_COMPAT_H
#define APIKEYS_COMPAT_H

#if PG_VERSION_NUM < 130000
#error "apikeys requires PostgreSQL 13 or later"
#endif

/* InitMaterializedSRF() appeared in 15; 13 and 14 need the manual setup. */
#if PG_VERSION_NUM < 150000
#error "apikeys has only been ported to PostgreSQL 15 so far: add an InitMaterializedSRF shim here"
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

/* MarkGUCPrefixReserved() was EmitWarningsOnPlaceholders() before 15. */
#if PG_VERSION_NUM < 150000
#define MarkGUCPrefixReserved(className) EmitWarningsOnPlaceholders(className)
#endif

/*
 * Porting note (session.c): from 16 on, JSON semantic actions return
 * JsonParseErrorType instead of void, and makeJsonLexContextCstringLen()
 * takes the context to fill as its first argument.
 */

/* pg_class_ownercheck() became object_ownercheck() in 16. */
#if PG_VERSION_NUM >= 160000
#define APIKEYS_CLASS_OWNERCHECK(relid, role) \
	object_ownercheck(RelationRelationId, (relid), (role))
#else
#define APIKEYS_CLASS_OWNERCHECK(relid, role) pg_class_ownercheck((relid), (role))
#endif

#endif							/* APIKEYS_COMPAT_H */
