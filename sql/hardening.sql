-- hardening: findings of a hostile-user review, each as a test that failed
-- before it was fixed.
\set VERBOSITY terse
SET search_path = apikeys, public;

SELECT key_id AS k, token AS t FROM apikey_create('hardening') \gset

-- The caller's collation does not reach the internal functions: an ICU or
-- a nondeterministic collation on an argument changes nothing.
CREATE COLLATION regress_ci (provider = icu, locale = 'und-u-ks-level2', deterministic = false);
SELECT apikey_disable(:'k' COLLATE "und-x-icu");
SELECT apikey_enable(:'k' COLLATE regress_ci);
SELECT apikey_update(:'k' COLLATE regress_ci, name => 'Hardening' COLLATE regress_ci,
                     scopes => ARRAY['read' COLLATE regress_ci]);
SELECT length(apikey_rotate(key_id => :'k' COLLATE "und-x-icu")) > 0 AS rotated;
SELECT regress.try(format('SELECT apikeys.apikey_disable(%L COLLATE regress_ci)', upper(:'k')), upper(:'k'));
SELECT name, scopes FROM keys WHERE key_id = :'k';
SELECT key_id AS k, token AS t FROM apikey_create('hardening 2' COLLATE regress_ci,
       scopes => '{a}' COLLATE regress_ci, prefix => 'ak_ci' COLLATE regress_ci) \gset
SELECT status FROM apikey_verify(:'t' COLLATE regress_ci, 'a' COLLATE regress_ci);

-- The digest compare looks at every byte: flip the last byte, then the
-- first, of the stored hash; the real token stops verifying each time, and
-- verifies again once the byte is restored.
SELECT prefix FROM keys WHERE key_id = :'k';
SELECT status FROM apikey_verify(:'t');
UPDATE apikeys_internal.key_catalog SET hash = set_byte(hash, 31, get_byte(hash, 31) # 1)
 WHERE key_id = :'k';
SELECT status FROM apikey_verify(:'t');
UPDATE apikeys_internal.key_catalog SET hash = set_byte(hash, 31, get_byte(hash, 31) # 1)
 WHERE key_id = :'k';
SELECT status FROM apikey_verify(:'t');
UPDATE apikeys_internal.key_catalog SET hash = set_byte(hash, 0, get_byte(hash, 0) # 128)
 WHERE key_id = :'k';
SELECT status FROM apikey_verify(:'t');
UPDATE apikeys_internal.key_catalog SET hash = set_byte(hash, 0, get_byte(hash, 0) # 128)
 WHERE key_id = :'k';
SELECT status FROM apikey_verify(:'t');
-- ... and so does the previous secret's compare during a grace period
SELECT apikey_rotate(:'k', grace => '1 hour') AS t2 \gset
UPDATE apikeys_internal.key_catalog SET prev_hash = set_byte(prev_hash, 31, get_byte(prev_hash, 31) # 1)
 WHERE key_id = :'k';
SELECT (apikey_verify(:'t')).status AS old_secret, (apikey_verify(:'t2')).status AS new_secret;

-- Row-level security is forced: even the tables' owner, when it is not a
-- superuser, sees only what the policies allow (without FORCE, an owner
-- bypasses its own table's policies).
CREATE ROLE regress_hd_owner NOLOGIN;
SELECT relowner::regrole AS owner FROM pg_class WHERE oid = 'apikeys_internal.key_catalog'::regclass \gset
GRANT USAGE ON SCHEMA apikeys_internal TO regress_hd_owner;
ALTER TABLE apikeys_internal.key_catalog OWNER TO regress_hd_owner;
ALTER TABLE apikeys_internal.audit_log OWNER TO regress_hd_owner;
SELECT count(*) > 0 AS keys_exist FROM apikeys_internal.key_catalog;
SET ROLE regress_hd_owner;
SELECT count(*) AS owner_sees_keys FROM apikeys_internal.key_catalog;
SELECT count(*) AS owner_sees_audit FROM apikeys_internal.audit_log;
SELECT regress.try($$DELETE FROM apikeys_internal.key_catalog$$);
SELECT count(*) AS owner_deleted FROM apikeys_internal.key_catalog;
RESET ROLE;
ALTER TABLE apikeys_internal.key_catalog OWNER TO :"owner";
ALTER TABLE apikeys_internal.audit_log OWNER TO :"owner";
REVOKE USAGE ON SCHEMA apikeys_internal FROM regress_hd_owner;
DROP ROLE regress_hd_owner;
SELECT count(*) > 0 AS keys_still_exist FROM apikeys_internal.key_catalog;

-- Nothing a non-admin can name holds a table: PUBLIC has no USAGE on the
-- private schema, and schema apikeys holds only views, types and functions.
SELECT has_schema_privilege('public', 'apikeys_internal', 'USAGE') AS public_usage_internal,
       has_schema_privilege('public', 'apikeys', 'USAGE') AS public_usage_apikeys;
SELECT c.relname, c.relkind FROM pg_class c
 WHERE c.relnamespace = 'apikeys'::regnamespace ORDER BY 1;

SELECT apikey_delete(key_id) FROM keys WHERE name IN ('Hardening', 'hardening 2');
DROP COLLATION regress_ci;

-- apikey_login takes a parsed token too, so that a plan holding the token
-- (auto_explain of a statement with the token bound as a parameter) prints
-- it redacted; a value parsed in an earlier transaction does not log in.
CREATE ROLE regress_hd_login NOLOGIN;
SELECT key_id AS lk, token AS lt FROM apikey_create('login by value', role => 'regress_hd_login') \gset
BEGIN;
SELECT status, role FROM apikey_login(:'lt'::apikeys.apikey);
SELECT current_user, apikey_current() = :'lk' AS logged_in;
COMMIT;
CREATE TEMP TABLE parsed AS SELECT :'lt'::apikeys.apikey AS v;
BEGIN;
SELECT regress.try('SELECT apikeys.apikey_login(v) FROM parsed');
SELECT current_user;
COMMIT;
SELECT apikey_delete(:'lk');
DROP TABLE parsed;
DROP ROLE regress_hd_login;
