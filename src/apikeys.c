/*
 * apikeys.c
 *		Module entry point of the apikeys extension.
 *
 * The token format lives in token.c, the apikey type in type.c, the verify
 * hot path in verify.c and the lifecycle entry points in lifecycle.c.
 */
#include "postgres.h"

#include "fmgr.h"

#include "apikeys.h"
#include "compat.h"

PG_MODULE_MAGIC;
