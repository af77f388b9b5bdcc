-- privileges: who may create, see and manage keys; what non-admins can read.
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

-- the admin role exists and cannot log in
SELECT rolname, rolcanlogin FROM pg_roles WHERE rolname = 'apikeys_admin';

CREATE ROLE regress_app NOLOGIN;
CREATE ROLE regress_alice NOLOGIN IN ROLE regress_app;
CREATE ROLE regress_bob NOLOGIN;
CREATE ROLE regress_carol NOLOGIN IN ROLE regress_app;
CREATE ROLE regress_admin NOLOGIN IN ROLE apikeys_admin;

-- a non-admin creates keys only for roles it belongs to
SET ROLE regress_alice;
SELECT key_id AS alice_key, token AS alice_token
  FROM apikeys.apikey_create('alice app key', role => 'regress_app') \gset
SELECT key_id AS alice_own, token AS alice_own_token
  FROM apikeys.apikey_create('alice own key') \gset
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('escalate', role => 'regress_bob')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('escalate', role => 'postgres')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('escalate', role => 'apikeys_admin')$$);
-- ... and cannot move a key to a role it does not belong to
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, role => %L)', :'alice_own', 'regress_bob'), :'alice_own');
SELECT name, role, created_by FROM apikeys.keys ORDER BY name;
RESET ROLE;

-- another non-admin sees nothing of alice's, and cannot manage it
SET ROLE regress_bob;
SELECT key_id AS bob_key, token AS bob_token FROM apikeys.apikey_create('bob key') \gset
SELECT name FROM apikeys.keys ORDER BY name;
SELECT regress.try(format('SELECT apikeys.apikey_revoke(%L)', :'alice_key'), :'alice_key');
SELECT regress.try(format('SELECT apikeys.apikey_rotate(%L)', :'alice_key'), :'alice_key');
SELECT regress.try(format('SELECT apikeys.apikey_disable(%L)', :'alice_key'), :'alice_key');
SELECT regress.try(format('SELECT apikeys.apikey_delete(%L)', :'alice_key'), :'alice_key');
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, name => %L)', :'alice_key', 'x'), :'alice_key');
-- but anyone can verify any key
SELECT status, role FROM apikeys.apikey_verify(:'alice_token');
-- and nobody but admins can read hashes or write the catalog directly
SELECT regress.try('SELECT hash FROM apikeys_internal.key_catalog');
SELECT regress.try('SELECT prev_hash FROM apikeys_internal.key_catalog');
SELECT regress.try('SELECT * FROM apikeys_internal.key_catalog');
SELECT regress.try($$UPDATE apikeys_internal.key_catalog SET state = 'active'$$);
SELECT regress.try($$DELETE FROM apikeys_internal.key_catalog$$);
SELECT regress.try($$INSERT INTO apikeys.audit_log (action, key_id, actor, actor_role) VALUES ('x', 'y', 'z', 'w')$$);
-- the internal halves cannot be called to forge a caller
SELECT regress.try(format($$SELECT * FROM apikeys_internal._apikey_create(%s, 'forged', 'postgres', '{}', NULL, NULL, '{}')$$,
                          'postgres'::regrole::oid));
SELECT regress.try(format($$SELECT apikeys_internal._apikey_revoke(%s, %L)$$, 'postgres'::regrole::oid, :'alice_key'));
SELECT regress.try($$SELECT * FROM apikeys_internal._mint('ak', NULL)$$);
RESET ROLE;

-- a member of the key's role manages it, even without having created it
SET ROLE regress_carol;
SELECT name FROM apikeys.keys ORDER BY name;
SELECT apikeys.apikey_disable(:'alice_key');
SELECT apikeys.apikey_enable(:'alice_key');
SELECT regress.try(format('SELECT apikeys.apikey_disable(%L)', :'alice_own'), :'alice_own');
RESET ROLE;

-- a creator who leaves the key's role still sees it and can switch it off,
-- but can no longer renew it (rotate, enable, update)
REVOKE regress_app FROM regress_alice;
SET ROLE regress_alice;
SELECT name FROM apikeys.keys ORDER BY name;
-- the key authenticates as its role, not as its creator: the token alice
-- already holds still works ...
SELECT status, role FROM apikeys.apikey_verify(:'alice_token');
SELECT apikeys.apikey_enable(:'alice_key');     -- already active: a no-op
SELECT apikeys.apikey_disable(:'alice_key');
SELECT regress.try(format('SELECT apikeys.apikey_enable(%L)', :'alice_key'), :'alice_key');
SELECT regress.try(format('SELECT apikeys.apikey_rotate(%L)', :'alice_key'), :'alice_key');
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, scopes => %L)', :'alice_key', '{admin}'), :'alice_key');
SELECT status FROM apikeys.keys WHERE key_id = :'alice_key';
RESET ROLE;
-- ... until a member of the role (or an admin) rotates it, which she cannot undo
SET ROLE regress_carol;
SELECT apikeys.apikey_enable(:'alice_key');
SELECT apikeys.apikey_rotate(:'alice_key') AS carol_token \gset
RESET ROLE;
SELECT (apikeys.apikey_verify(:'alice_token')).status AS alice_token,
       (apikeys.apikey_verify(:'carol_token')).status AS carol_token;
GRANT regress_app TO regress_alice;

-- role names are compared as names, never parsed: a role called "10" is not
-- OID 10 (the bootstrap superuser), and "Regress_Mixed" is not regress_mixed
CREATE ROLE "10" NOLOGIN;
CREATE ROLE "Regress_Mixed" NOLOGIN;
CREATE ROLE regress_mixed NOLOGIN;
SET ROLE regress_mixed;
SELECT key_id AS lower_key FROM apikeys.apikey_create('lowercase key') \gset
RESET ROLE;
SET ROLE "10";
SELECT count(*) AS keys_seen_by_10 FROM apikeys.keys;
SELECT count(*) AS audit_rows_seen_by_10 FROM apikeys.audit_log;
SELECT regress.try('SELECT count(hash) FROM apikeys_internal.key_catalog');
RESET ROLE;
SET ROLE "Regress_Mixed";
SELECT key_id AS mixed_key FROM apikeys.apikey_create('mixed-case key') \gset
SELECT name, role, created_by FROM apikeys.keys ORDER BY name;
SELECT count(*) AS audit_rows_seen FROM apikeys.audit_log;
RESET ROLE;
SELECT apikeys.apikey_delete(:'lower_key'), apikeys.apikey_delete(:'mixed_key');
DROP ROLE "10", "Regress_Mixed", regress_mixed;

-- admins see and manage everything, including hashes
SET ROLE regress_admin;
SELECT name, role FROM apikeys.keys ORDER BY name;
SELECT count(*) AS hashes FROM apikeys_internal.key_catalog WHERE length(hash) = 32;
SELECT apikeys.apikey_revoke(:'bob_key');
SELECT key_id AS admin_made FROM apikeys.apikey_create('for bob', role => 'regress_bob') \gset
SELECT created_by, role FROM apikeys.keys WHERE key_id = :'admin_made';
RESET ROLE;

-- a SECURITY DEFINER wrapper acts with its owner's rights, not its caller's
CREATE ROLE regress_issuer NOLOGIN IN ROLE regress_app;
GRANT CREATE ON SCHEMA public TO regress_issuer;
SET ROLE regress_issuer;
CREATE FUNCTION public.issue_app_key(n text) RETURNS text
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
    AS $$ SELECT key_id FROM apikeys.apikey_create(n, role => 'regress_app') $$;
RESET ROLE;
SET ROLE regress_bob;
SELECT public.issue_app_key('via wrapper') AS wrapped \gset
RESET ROLE;
SELECT role, created_by FROM apikeys.keys WHERE key_id = :'wrapped';
SELECT actor, actor_role FROM apikeys.audit_log WHERE key_id = :'wrapped';

-- the key catalog and the audit log are behind forced row-level security
SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class
 WHERE oid IN ('apikeys_internal.key_catalog'::regclass, 'apikeys_internal.audit_log'::regclass) ORDER BY relname;

-- every SECURITY DEFINER function pins search_path and is not executable by PUBLIC
SELECT p.pronamespace::regnamespace AS schema, p.proname,
       coalesce(array_to_string(p.proconfig, ',') LIKE '%search_path=pg_catalog, pg_temp%', false) AS pinned,
       has_function_privilege('public', p.oid, 'EXECUTE') AS public_exec
  FROM pg_proc p WHERE p.pronamespace IN ('apikeys'::regnamespace, 'apikeys_internal'::regnamespace) AND p.prosecdef
 ORDER BY 1, 2;

-- clean up
DROP FUNCTION public.issue_app_key(text);
REVOKE CREATE ON SCHEMA public FROM regress_issuer;
SELECT apikeys.apikey_delete(key_id) FROM apikeys.keys WHERE name IN
    ('alice app key', 'alice own key', 'bob key', 'for bob', 'via wrapper');
DROP ROLE regress_issuer, regress_admin, regress_carol, regress_bob, regress_alice, regress_app;

-- the extension will not move into a schema a non-superuser already owns
SELECT current_database() AS orig_db \gset
CREATE ROLE regress_squatter NOLOGIN;
CREATE DATABASE regress_apikeys_squat;
\c regress_apikeys_squat
\set VERBOSITY terse
CREATE SCHEMA apikeys AUTHORIZATION regress_squatter;
CREATE EXTENSION apikeys CASCADE;
SELECT count(*) AS installed FROM pg_extension WHERE extname = 'apikeys';
\c :orig_db
DROP DATABASE regress_apikeys_squat;
DROP ROLE regress_squatter;
