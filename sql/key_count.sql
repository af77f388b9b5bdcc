-- key_count: apikeys.max_keys_per_role bounds the keys a non-admin may give
-- a role, on every path that makes a key or gives it a role (create's C fast
-- path and its PL/pgSQL half, import, a change of role); revoked keys count
-- until deleted; admins may go past it.
\set VERBOSITY terse
SET search_path = apikeys, public;

CREATE ROLE regress_kc_tenant NOLOGIN;
CREATE ROLE regress_kc_other NOLOGIN;
CREATE ROLE regress_kc_alice NOLOGIN IN ROLE regress_kc_tenant, regress_kc_other;
GRANT USAGE ON SCHEMA regress TO regress_kc_alice;
-- (a superuser sets it for this session; the setting is superuser-only)
SET apikeys.max_keys_per_role = 3;

SET ROLE regress_kc_alice;
SELECT count(*) FROM generate_series(1, 3) g,
       LATERAL apikey_create('kc ' || g, role => 'regress_kc_tenant') k;
-- the fourth: refused by the fast path (plain arguments) ...
SELECT regress.try($$SELECT apikeys.apikey_create('kc 4', role => 'regress_kc_tenant')$$);
-- ... and by the PL/pgSQL half (a rate limit takes it)
SELECT regress.try($$SELECT apikeys.apikey_create('kc 4', role => 'regress_kc_tenant', rate_limit => '10/second')$$);
-- ... and by import
SELECT regress.try($$SELECT apikeys.apikey_import('kc 4', role => 'regress_kc_tenant', token => 'sk_live_kc4xxxxxxxxxxxxxxxxxxxxxxx')$$);
-- ... and moving a key of another role there
SELECT key_id AS other_key FROM apikey_create('kc other', role => 'regress_kc_other') \gset
SELECT regress.try(format($$SELECT apikeys.apikey_update(%L, role => 'regress_kc_tenant')$$, :'other_key'));
-- one statement making many keys stops at the bound too (its own rows count)
SELECT regress.try($$SELECT count(*) FROM generate_series(1, 5) g,
                          LATERAL apikeys.apikey_create('kc many ' || g, role => 'regress_kc_other') k$$);
SELECT count(*) AS other_keys FROM keys WHERE role::text = 'regress_kc_other';
-- a revoked key still counts; a deleted one no longer does
SELECT apikey_revoke((SELECT key_id FROM keys WHERE name = 'kc 1'));
SELECT regress.try($$SELECT apikeys.apikey_create('kc 4', role => 'regress_kc_tenant')$$);
SELECT apikey_delete((SELECT key_id FROM keys WHERE name = 'kc 1'));
SELECT count(*) FROM apikey_create('kc 4', role => 'regress_kc_tenant');
RESET ROLE;

-- admins may go past it, on both paths
SELECT count(*) FROM apikey_create('kc admin', role => 'regress_kc_tenant');
SELECT count(*) FROM apikey_create('kc admin limited', role => 'regress_kc_tenant', rate_limit => '10/second');
SELECT count(*) AS tenant_keys FROM keys WHERE role::text = 'regress_kc_tenant';
-- and a non-admin cannot raise it for itself
SET ROLE regress_kc_alice;
SELECT regress.try($$SET apikeys.max_keys_per_role = 100$$);
RESET ROLE;
SHOW apikeys.max_keys_per_role;
RESET apikeys.max_keys_per_role;
SHOW apikeys.max_keys_per_role;

-- the count reads an index on the catalog's role
SELECT indexdef FROM pg_indexes
 WHERE schemaname = 'apikeys_internal' AND indexname = 'key_catalog_role_idx';

SELECT count(*) FROM (SELECT apikey_delete(key_id) FROM keys
                       WHERE role::text IN ('regress_kc_tenant', 'regress_kc_other')) d;
REVOKE USAGE ON SCHEMA regress FROM regress_kc_alice;
DROP ROLE regress_kc_alice, regress_kc_tenant, regress_kc_other;
