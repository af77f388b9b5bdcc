/*
 * apikeys.c
 *		Module entry point of the apikeys extension.
 *
 * The token format lives in token.c, the apikey type in type.c, the verify
 * hot path in verify.c, the backend-local key cache in cache.c, the
 * lifecycle entry points in lifecycle.c (the fast path of apikey_create in
 * create.c, the audit row of a new key in audit.c, direct row insertion in
 * insert.c), logins, the key context and the PostgREST hook in session.c,
 * the lock guard for CREATE RULE in guard.c, the lookup of the extension's
 * own objects in objects.c, the pepper of stored hashes in pepper.c,
 * rate limits, quotas and usage in shmem.c, limits.c, usage.c and
 * worker.c, and the requests made with a key in request_log.c.
 */
#include "postgres.h"

#include "fmgr.h"
#include "utils/guc.h"

#include "apikeys.h"
#include "compat.h"

PG_MODULE_MAGIC;

void		_PG_init(void);

/*
 * Library load: define the apikeys.* settings and register callbacks.  Runs
 * at server start when preloaded, else at the first call in a backend; when
 * preloaded, it also reserves shared memory and registers the background
 * worker (shmem.c).
 */
void
_PG_init(void)
{
	apikey_cache_init();
	apikeys_session_init();
	apikeys_guard_init();
	apikeys_shmem_init();
	apikeys_request_init();		/* apikeys.approver_role */
	apikeys_reveal_init();		/* apikeys.kek_file */
	apikeys_pepper_init();		/* apikeys.pepper_file */
	apikeys_chain_init();		/* apikeys.audit_queue_limit */

	/* Define every apikeys.* setting above this line. */
	MarkGUCPrefixReserved("apikeys");
}
