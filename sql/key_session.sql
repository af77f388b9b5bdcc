-- key_session: a key never manages keys.  While a transaction has logged in
-- with a key, every lifecycle and management entry point refuses with 42501
-- (also after RESET ROLE, and through a SECURITY DEFINER wrapper), and the
-- listings show that key alone; a key holding apikeys:manage, which only
-- admins grant, is the exception.  After COMMIT the same calls work again.
SET search_path = apikeys, public;

CREATE ROLE regress_ks_client NOLOGIN;                       -- every tenant's keys
CREATE ROLE regress_ks_other NOLOGIN;
CREATE ROLE regress_ks_adminsvc NOLOGIN IN ROLE apikeys_admin;  -- keys with admin rights
CREATE ROLE regress_ks_minter NOLOGIN IN ROLE regress_ks_client; -- issues tenants' keys
CREATE ROLE regress_ks_approvers NOLOGIN;
CREATE ROLE regress_ks_bob NOLOGIN IN ROLE regress_ks_approvers;

CREATE TABLE regress.ks_keys (label text PRIMARY KEY, key_id text, token text);
GRANT SELECT ON regress.ks_keys TO PUBLIC;
INSERT INTO regress.ks_keys SELECT 'a', * FROM apikey_create('tenant a', role => 'regress_ks_client',
    scopes => '{docs:read}', metadata => '{"tenant": "a"}');
INSERT INTO regress.ks_keys SELECT 'b', * FROM apikey_create('tenant b', role => 'regress_ks_client',
    scopes => '{docs:read}', metadata => '{"tenant": "b"}');
INSERT INTO regress.ks_keys SELECT 'star', * FROM apikey_create('star', role => 'regress_ks_client',
    scopes => '{*}');
INSERT INTO regress.ks_keys SELECT 'apikeys_star', * FROM apikey_create('apikeys star',
    role => 'regress_ks_client', scopes => '{apikeys:*}');
INSERT INTO regress.ks_keys SELECT 'admin', * FROM apikey_create('admin svc', role => 'regress_ks_adminsvc');
INSERT INTO regress.ks_keys SELECT 'leaked', * FROM apikey_create('leaked', role => 'regress_ks_other');
-- the exception: an admin grants apikeys:manage
INSERT INTO regress.ks_keys SELECT 'manager', * FROM apikey_create('manager', role => 'regress_ks_client',
    scopes => '{apikeys:manage}');
SELECT key_id AS a_id, token AS a_tok FROM regress.ks_keys WHERE label = 'a' \gset
SELECT key_id AS b_id FROM regress.ks_keys WHERE label = 'b' \gset
SELECT key_id AS adm_id, token AS adm_tok FROM regress.ks_keys WHERE label = 'admin' \gset
SELECT key_id AS mgr_id, token AS mgr_tok FROM regress.ks_keys WHERE label = 'manager' \gset
SELECT token AS star_tok FROM regress.ks_keys WHERE label = 'star' \gset
SELECT token AS apikeys_star_tok FROM regress.ks_keys WHERE label = 'apikeys_star' \gset
SELECT token AS leaked_tok FROM regress.ks_keys WHERE label = 'leaked' \gset
-- a pending request of the tenants' role, and rows of tenant b in the
-- listings (usage_hourly and request_log as the worker would write them)
SET ROLE regress_ks_client;
SELECT apikey_request('pending', scopes => '{docs:read}') AS req_id \gset
RESET ROLE;
INSERT INTO apikeys_internal.usage_hourly (key_id, hour, uses)
VALUES (:'b_id', date_trunc('hour', now()) - interval '1 hour', 5);
INSERT INTO apikeys_internal.request_log (first_at, last_at, kind, status, key_id, requests)
VALUES (now(), now(), 'verify', 'valid', :'b_id', 1);
-- a SECURITY DEFINER wrapper of the user's own, as the README suggests
CREATE FUNCTION regress.ks_mint(name text) RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$ SELECT key_id FROM apikeys.apikey_create(name, role => 'regress_ks_client') $$;
ALTER FUNCTION regress.ks_mint(text) OWNER TO regress_ks_minter;
-- a refusal's SQLSTATE and message (the first case shows detail and hint)
CREATE FUNCTION regress.ks_try(cmd text, key_id text DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$ SELECT split_part(regress.try(cmd, key_id), ' DETAIL: ', 1) $$;

-- Logged in as tenant a: one refusal per entry point.
BEGIN;
SELECT status FROM apikey_login(:'a_tok');
SELECT regress.try($$SELECT apikey_create('fast', role => 'regress_ks_client')$$, :'a_id') AS create_fast_path;
SELECT regress.ks_try($$SELECT apikey_create('sql', role => 'regress_ks_client', allowed_ips => '{10.0.0.0/8}')$$, :'a_id') AS create_sql_path;
SELECT regress.ks_try(format($$SELECT apikey_update(%L, rate_limit => '', remaining => -1, allowed_ips => '{}', expires_at => 'infinity', scopes => '{*}')$$, :'a_id'), :'a_id') AS update_own;
SELECT regress.ks_try(format('SELECT apikey_rotate(%L)', :'a_id'), :'a_id') AS rotate;
SELECT regress.ks_try(format('SELECT apikey_disable(%L)', :'b_id'), :'a_id') AS disable_other_tenant;
SELECT regress.ks_try(format('SELECT apikey_enable(%L)', :'b_id'), :'a_id') AS enable;
SELECT regress.ks_try(format('SELECT apikey_revoke(%L)', :'b_id'), :'a_id') AS revoke;
SELECT regress.ks_try(format('SELECT apikey_delete(%L)', :'b_id'), :'a_id') AS delete;
SELECT regress.ks_try($$SELECT apikey_import('imported', role => 'regress_ks_client', token => 'sk_live_0123456789abcdefghijklmnop')$$, :'a_id') AS import;
SELECT regress.ks_try($$SELECT apikey_request('more', scopes => '{docs:read}')$$, :'a_id') AS request;
SELECT regress.ks_try(format('SELECT apikey_cancel(%L)', :'req_id'), :'a_id') AS cancel;
SELECT regress.ks_try(format('SELECT apikey_claim(%L)', :'req_id'), :'a_id') AS claim;
SELECT regress.ks_try(format('SELECT apikey_reveal(%L)', :'b_id'), :'a_id') AS reveal;
SELECT regress.ks_try($$SELECT regress.ks_mint('through a wrapper')$$, :'a_id') AS security_definer_wrapper;
-- the listings: tenant a's own rows only
SELECT count(*) AS keys, bool_and(key_id = :'a_id') AS own FROM keys;
SELECT count(*) AS usage, bool_and(key_id = :'a_id') AS own FROM usage;
SELECT count(*) AS usage_hourly FROM usage_hourly;
SELECT count(*) AS key_requests FROM key_requests;
SELECT count(*) AS audit_rows, bool_and(key_id = :'a_id') AS own FROM audit_log;
SELECT count(*) AS expiring FROM expiring('100 years') WHERE key_id <> :'a_id';
-- RESET ROLE does not end the rule: the transaction logged in with a key
RESET ROLE;
SELECT apikey_current() IS NULL AS helpers_forget_the_key;
SELECT regress.ks_try(format('SELECT apikey_disable(%L)', :'b_id'), :'a_id') AS disable_after_reset_role;
-- a leak report is not management: whoever holds a token may report it
SELECT apikey_report_leak(:'leaked_tok', source => 'key_session test') AS report_leak;
ROLLBACK;

-- Logged in with a key whose role is an admin: admin-only entry points and
-- listings refuse too.
BEGIN;
SELECT status FROM apikey_login(:'adm_tok');
SELECT regress.ks_try($$SELECT apikey_set_role_limit('regress_ks_client', '10/second')$$, :'adm_id') AS set_role_limit;
SELECT regress.ks_try($$SELECT audit_purge('100 years')$$, :'adm_id') AS audit_purge;
-- reading the chain takes its lock and sees every key's rows: refused too
SELECT regress.ks_try($$SELECT audit_head()$$, :'adm_id') AS audit_head;
SELECT regress.ks_try($$SELECT audit_verify_detail()$$, :'adm_id') AS audit_verify_detail;
SELECT regress.ks_try($$SELECT audit_verify()$$, :'adm_id') AS audit_verify;
-- (an admin decides requests: refused as a key all the same)
SELECT regress.ks_try(format('SELECT apikey_approve(%L)', :'req_id'), :'adm_id') AS approve;
SELECT regress.ks_try(format('SELECT apikey_reject(%L)', :'req_id'), :'adm_id') AS reject;
SELECT regress.ks_try($$INSERT INTO route_scopes (method, path_pattern, scope) VALUES ('GET', '/ks', 'ks:read')$$, :'adm_id') AS route_scopes_insert;
SELECT regress.ks_try($$UPDATE route_scopes SET scope = 'ks:write' WHERE path_pattern = '/ks'$$, :'adm_id') AS route_scopes_update;
SELECT regress.ks_try($$DELETE FROM route_scopes$$, :'adm_id') AS route_scopes_delete;
SELECT regress.ks_try($$DELETE FROM apikeys_internal.route_scopes$$, :'adm_id') AS route_scopes_table_delete;
SELECT regress.ks_try(format('SELECT apikey_revoke(%L)', :'b_id'), :'adm_id') AS revoke;
SELECT count(*) AS keys, bool_and(key_id = :'adm_id') AS own FROM keys;
SELECT count(*) AS key_requests FROM key_requests;
SELECT count(*) AS request_log FROM request_log WHERE key_id IS DISTINCT FROM :'adm_id';
SELECT count(*) AS catalog_rows FROM apikeys_internal.key_catalog WHERE key_id <> :'adm_id';
ROLLBACK;

-- Wildcards do not hold apikeys:manage for this rule.
BEGIN;
SELECT status FROM apikey_login(:'star_tok');
SELECT apikey_has_scope('apikeys:manage') AS star_has_scope;
SELECT regress.ks_try(format('SELECT apikey_disable(%L)', :'b_id')) ~ '^42501' AS star_refused;
ROLLBACK;
BEGIN;
SELECT status FROM apikey_login(:'apikeys_star_tok');
SELECT regress.ks_try(format('SELECT apikey_disable(%L)', :'b_id')) ~ '^42501' AS apikeys_star_refused;
ROLLBACK;

-- The exception: a key holding apikeys:manage manages the keys of its role,
-- still within its role, and sees them all.
BEGIN;
SELECT status FROM apikey_login(:'mgr_tok');
SELECT count(*) AS minted FROM apikey_create('minted by manager', role => 'regress_ks_client');
SELECT count(*) AS minted_sql_path FROM apikey_create('minted by manager', role => 'regress_ks_client',
    allowed_ips => '{10.0.0.0/8}');
SELECT apikey_disable(:'b_id') AS disabled_b;
SELECT apikey_enable(:'b_id') AS enabled_b;
SELECT regress.ks_try($$SELECT apikey_create('elsewhere', role => 'regress_ks_other')$$) AS beyond_its_role;
SELECT regress.ks_try($$SELECT apikey_create('another manager', role => 'regress_ks_client', scopes => '{apikeys:manage}')$$) AS grant_manage;
SELECT count(*) >= 6 AS sees_its_role FROM keys;
ROLLBACK;

-- Only an admin gives a key apikeys:manage: create (both paths), update,
-- rotate, enable, import, approve.
SET ROLE regress_ks_minter;
SELECT regress.ks_try($$SELECT apikey_create('m', role => 'regress_ks_client', scopes => '{apikeys:manage}')$$) AS create_manage;
SELECT regress.ks_try($$SELECT apikey_create('m', role => 'regress_ks_client', scopes => '{apikeys:manage}', allowed_ips => '{10.0.0.0/8}')$$) AS create_manage_sql_path;
SELECT regress.ks_try(format($$SELECT apikey_update(%L, scopes => '{docs:read,apikeys:manage}')$$, :'a_id')) AS update_manage;
SELECT regress.ks_try(format('SELECT apikey_rotate(%L)', :'mgr_id')) AS rotate_manager;
SELECT regress.ks_try($$SELECT apikey_import('m', role => 'regress_ks_client', scopes => '{apikeys:manage}', token => 'sk_live_0123456789abcdefghijklmnop')$$) AS import_manage;
SELECT count(*) AS wildcards_are_fine FROM apikey_create('w', role => 'regress_ks_client', scopes => '{*}');
SELECT apikey_request('manager please', scopes => '{apikeys:manage}') AS mreq_id \gset
RESET ROLE;
SET apikeys.approver_role = 'regress_ks_approvers';
SET ROLE regress_ks_bob;
SELECT regress.ks_try(format('SELECT apikey_approve(%L)', :'mreq_id')) AS approver_grants_manage;
RESET ROLE;
RESET apikeys.approver_role;
SET ROLE regress_ks_adminsvc;
SELECT apikey_approve(:'mreq_id') AS admin_grants_manage;
RESET ROLE;

-- After COMMIT the transaction has no key: the same calls work again.
BEGIN;
SELECT status FROM apikey_login(:'a_tok');
COMMIT;
SELECT apikey_update(:'a_id', scopes => '{docs:read,docs:write}') AS update_works;
SELECT count(*) AS create_works FROM apikey_create('after commit', role => 'regress_ks_client');
SELECT apikey_disable(:'b_id') AS disable_works;
INSERT INTO route_scopes (method, path_pattern, scope) VALUES ('GET', '/ks', 'ks:read');
DELETE FROM route_scopes WHERE path_pattern = '/ks';
SELECT count(*) > 2 AS listing_works FROM keys WHERE role = 'regress_ks_client'::regrole;

-- clean up
DELETE FROM apikeys_internal.request_log WHERE key_id = :'b_id';
DELETE FROM apikeys_internal.usage_hourly WHERE key_id = :'b_id';
SELECT count(apikey_delete(key_id)) > 0 AS deleted FROM keys
 WHERE role IN ('regress_ks_client'::regrole, 'regress_ks_other'::regrole, 'regress_ks_adminsvc'::regrole);
DELETE FROM apikeys_internal.key_requests WHERE requested_by = 'regress_ks_client'::regrole;
DROP FUNCTION regress.ks_mint(text), regress.ks_try(text, text);
DROP TABLE regress.ks_keys;
DROP ROLE regress_ks_bob, regress_ks_approvers, regress_ks_minter, regress_ks_adminsvc,
    regress_ks_other, regress_ks_client;
