/*
 * apikeys.c
 *		Module entry point of the apikeys extension.
 *
 * The token format lives in token.c, the apikey type in type.c, the verify
 * hot path in verify.c, the backend-local key cache in cache.c and the
 * lifecycle entry points in lifecycle.c.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "apikeys.h"
#include "compat.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/* Module load: define the settings. */
void
_PG_init(void)
{
	apikey_cache_init();
	MarkGUCPrefixReserved("apikeys");
}
