/*
 * apikeys.c
 *		Module entry point of the apikeys extension.
 *
 * The token format lives in token.c, the apikey type in type.c, the verify
 * hot path in verify.c, the lifecycle entry points in lifecycle.c, and rate
 * limits, quotas and usage in shmem.c, limits.c, usage.c and worker.c.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "apikeys.h"
#include "compat.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/*
 * Library load: define the apikeys.* settings; when preloaded, reserve
 * shared memory and register the background worker (shmem.c).
 */
void
_PG_init(void)
{
	apikeys_shmem_init();

	/* Define every apikeys.* setting above this line. */
	MarkGUCPrefixReserved("apikeys");
}
