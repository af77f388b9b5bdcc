-- login: apikey_login and the key context policies read (apikey_current,
-- apikey_has_scope, apikey_scopes, apikey_metadata): scope wildcards, the
-- role switch, errors, transaction and subtransaction boundaries, forging
-- attempts, row-level security.
SET search_path = apikeys, public;

CREATE ROLE regress_login_svc NOLOGIN;
CREATE ROLE regress_login_other NOLOGIN;
CREATE ROLE regress_login_bypass NOLOGIN BYPASSRLS;
CREATE ROLE regress_login_promoted NOLOGIN;
CREATE ROLE "regress login ""odd"" Role" NOLOGIN;
-- the role that connects, like PostgREST's authenticator: NOINHERIT, and
-- granted the roles its keys map to
CREATE ROLE regress_login_auth LOGIN NOINHERIT;
GRANT regress_login_svc, regress_login_bypass, regress_login_promoted,
    "regress login ""odd"" Role" TO regress_login_auth;

-- keys, by label, readable by the test's roles
CREATE TABLE regress.login_keys (label text PRIMARY KEY, key_id text, token text);
GRANT SELECT ON regress.login_keys TO PUBLIC;
INSERT INTO regress.login_keys SELECT 'acme', * FROM apikey_create('acme',
    role => 'regress_login_svc', scopes => '{jobs:*,orders:read}', metadata => '{"tenant": "acme"}');
INSERT INTO regress.login_keys SELECT 'globex', * FROM apikey_create('globex',
    role => 'regress_login_svc', scopes => '{*}', metadata => '{"tenant": "globex"}');
INSERT INTO regress.login_keys SELECT 'other', * FROM apikey_create('other', role => 'regress_login_other');
INSERT INTO regress.login_keys SELECT 'super', * FROM apikey_create('super', role => 'postgres');
INSERT INTO regress.login_keys SELECT 'bypass', * FROM apikey_create('bypass', role => 'regress_login_bypass');
INSERT INTO regress.login_keys SELECT 'promoted', * FROM apikey_create('promoted', role => 'regress_login_promoted');
INSERT INTO regress.login_keys SELECT 'odd', * FROM apikey_create('odd',
    role => (SELECT oid FROM pg_roles WHERE rolname = 'regress login "odd" Role')::regrole);
INSERT INTO regress.login_keys SELECT 'revoked', * FROM apikey_create('revoked', role => 'regress_login_svc');
INSERT INTO regress.login_keys SELECT 'disabled', * FROM apikey_create('disabled', role => 'regress_login_svc');
INSERT INTO regress.login_keys SELECT 'expired', * FROM apikey_create('expired', role => 'regress_login_svc');
SELECT apikey_revoke(key_id) FROM regress.login_keys WHERE label = 'revoked';
SELECT apikey_disable(key_id) FROM regress.login_keys WHERE label = 'disabled';
UPDATE apikeys_internal.key_catalog SET expires_at = now() - interval '1 second'
 WHERE key_id = (SELECT key_id FROM regress.login_keys WHERE label = 'expired');
-- a role that becomes a superuser after its key was issued
ALTER ROLE regress_login_promoted SUPERUSER;
SELECT token AS acme, key_id AS acme_id FROM regress.login_keys WHERE label = 'acme' \gset
SELECT token AS globex FROM regress.login_keys WHERE label = 'globex' \gset

-- The label of the key this transaction is logged in with, or none.
CREATE FUNCTION regress.login_state() RETURNS text LANGUAGE sql AS $$
    SELECT format('current_user=%s key=%s', current_user,
                  coalesce((SELECT label FROM regress.login_keys WHERE key_id = apikeys.apikey_current()), 'none'))
$$;

-- a table whose policies read the key context
CREATE TABLE regress_login_orders (id int, tenant text, item text);
INSERT INTO regress_login_orders VALUES (1, 'acme', 'anvil'), (2, 'globex', 'gizmo'), (3, 'acme', 'rocket');
ALTER TABLE regress_login_orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY by_tenant ON regress_login_orders FOR SELECT
    USING (tenant OPERATOR(pg_catalog.=) (apikeys.apikey_metadata() ->> 'tenant'));
CREATE POLICY write_scope ON regress_login_orders FOR INSERT
    WITH CHECK (apikeys.apikey_has_scope('orders:write')
                AND tenant OPERATOR(pg_catalog.=) (apikeys.apikey_metadata() ->> 'tenant'));
GRANT SELECT, INSERT ON regress_login_orders TO regress_login_svc;

-- scope grammar: a wildcard only at the end, refused elsewhere at create
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('w', scopes => '{jo*bs:read}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('w', scopes => '{*:read}')$$);
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, scopes => %L)', :'acme_id', '{a**}'));
-- ... and honoured by verify
SELECT s, (apikey_verify(:'acme', s)).status
  FROM unnest(ARRAY['jobs:read', 'jobs:execute', 'jobs:', 'jobs', 'job', 'orders:read',
                    'orders:write', 'orders:*']) s;
SELECT (apikey_verify(:'globex', 'anything:at:all')).status;

SET SESSION AUTHORIZATION regress_login_auth;

-- nothing before a login
SELECT apikey_current(), apikey_has_scope('jobs:read'), apikey_scopes(), apikey_metadata();

-- a login switches role and records the key until the transaction ends
BEGIN;
SELECT valid, status, key_id = :'acme_id' AS same_id, role, scopes, metadata, name
  FROM apikey_login(:'acme');
SELECT regress.login_state(), session_user;
SELECT apikey_current() = :'acme_id' AS current, apikey_scopes(), apikey_metadata();
SELECT s, apikey_has_scope(s)
  FROM unnest(ARRAY['jobs:read', 'jobs:execute', 'jobs', 'orders:read', 'orders:write', 'orders:*']) s;
SELECT apikey_has_scope(NULL);
SELECT id, tenant, item FROM regress_login_orders ORDER BY id;
SELECT regress.try($$INSERT INTO regress_login_orders VALUES (4, 'acme', 'tnt')$$);
COMMIT;
SELECT regress.login_state();
SELECT apikey_current(), apikey_has_scope('jobs:read'), apikey_scopes(), apikey_metadata();

-- the scope asked of the login, wildcards included
BEGIN;
SELECT status FROM apikey_login(:'acme', scope => 'jobs:execute');
SELECT regress.login_state();
ROLLBACK;
SELECT regress.login_state();

-- a second login in the same transaction replaces the first
BEGIN;
SELECT status FROM apikey_login(:'acme');
SELECT status FROM apikey_login(:'globex');
SELECT regress.login_state(), apikey_scopes(), apikey_metadata();
SELECT id, tenant, item FROM regress_login_orders ORDER BY id;
INSERT INTO regress_login_orders VALUES (4, 'globex', 'widget');
SELECT regress.try($$INSERT INTO regress_login_orders VALUES (5, 'acme', 'stolen')$$);
COMMIT;

-- a role whose name needs quoting
BEGIN;
SELECT status, role FROM regress.login_keys k, apikey_login(k.token) WHERE k.label = 'odd';
SELECT regress.login_state();
COMMIT;

-- a READ ONLY transaction, as PostgREST runs a GET
BEGIN READ ONLY;
SELECT status FROM apikey_login(:'acme');
SELECT id, tenant, item FROM regress_login_orders ORDER BY id;
COMMIT;

-- failures: SQLSTATE 28000 for a bad key, 42501 for a missing scope, with
-- the status in the detail; never the token.  Each leaves the session as it
-- was.
CREATE TEMP TABLE login_errors (label text, err text);
INSERT INTO login_errors
SELECT label, regress.try(format('SELECT apikeys.apikey_login(%L)', token))
  FROM regress.login_keys WHERE label IN ('revoked', 'disabled', 'expired');
INSERT INTO login_errors VALUES
    ('garbage', regress.try($$SELECT apikeys.apikey_login('not a key')$$)),
    ('null', regress.try($$SELECT apikeys.apikey_login(NULL)$$)),
    ('typo', regress.try(format('SELECT apikeys.apikey_login(%L)',
        left(:'acme', -1) || CASE WHEN right(:'acme', 1) = 'x' THEN 'y' ELSE 'x' END))),
    ('huge', regress.try(format('SELECT apikeys.apikey_login(%L)', repeat(:'acme', 1000)))),
    ('scope', regress.try(format('SELECT apikeys.apikey_login(%L, scope => %L)', :'acme', 'orders:write')));
-- a superuser, a BYPASSRLS role, a role promoted to superuser after issue
INSERT INTO login_errors
SELECT label, regress.try(format('SELECT apikeys.apikey_login(%L)', token))
  FROM regress.login_keys WHERE label IN ('super', 'bypass', 'promoted');
-- a role the session user may not become
INSERT INTO login_errors
SELECT label, regress.try(format('SELECT apikeys.apikey_login(%L)', token))
  FROM regress.login_keys WHERE label = 'other';
SELECT label, err FROM login_errors ORDER BY label;
SELECT count(*) AS leaks FROM login_errors e, regress.login_keys k
 WHERE strpos(e.err, substr(k.token, length(k.token) - 37, 32)) > 0;
SELECT regress.login_state();

-- inside SECURITY DEFINER, where SET ROLE cannot work
RESET SESSION AUTHORIZATION;
CREATE FUNCTION regress.login_definer(t text) RETURNS text LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT status FROM apikeys.apikey_login(t) $$;
SET SESSION AUTHORIZATION regress_login_auth;
SELECT regress.try(format('SELECT regress.login_definer(%L)', :'acme'));

-- a subtransaction that rolls back takes its login with it
BEGIN;
SAVEPOINT s1;
SELECT status FROM apikey_login(:'acme');
SELECT regress.login_state();
ROLLBACK TO SAVEPOINT s1;
SELECT regress.login_state();
-- ... a released one hands it on
SAVEPOINT s2;
SELECT status FROM apikey_login(:'acme');
RELEASE SAVEPOINT s2;
SELECT regress.login_state();
-- ... and a login replaced inside a rolled-back one comes back
SAVEPOINT s3;
SELECT status FROM apikey_login(:'globex');
SAVEPOINT s4;
SELECT regress.login_state();
RELEASE SAVEPOINT s4;
ROLLBACK TO SAVEPOINT s3;
SELECT regress.login_state(), apikey_metadata();
-- the parent's rollback undoes a login its released child made
SAVEPOINT s5;
SAVEPOINT s6;
SELECT status FROM apikey_login(:'globex');
RELEASE SAVEPOINT s6;
ROLLBACK TO SAVEPOINT s5;
SELECT regress.login_state();
COMMIT;

-- a login in a function that then fails
RESET SESSION AUTHORIZATION;
CREATE FUNCTION regress.login_then_fail(t text) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM apikeys.apikey_login(t);
    RAISE EXCEPTION 'failing after the login';
END $$;
SET SESSION AUTHORIZATION regress_login_auth;
BEGIN;
SELECT regress.try(format('SELECT regress.login_then_fail(%L)', :'acme'));
SELECT regress.login_state();
COMMIT;
-- ... or whose error ends the transaction
BEGIN;
SELECT status FROM apikey_login(:'acme');
SELECT 1 / 0;
ROLLBACK;
SELECT regress.login_state();

-- a function whose SET role clause undoes the login on return hides the key
RESET SESSION AUTHORIZATION;
CREATE FUNCTION regress.login_in_set_role(t text) RETURNS text LANGUAGE sql
    SET role = regress_login_auth
    AS $$ SELECT status || ' inside: ' || regress.login_state() FROM apikeys.apikey_login(t) $$;
SET SESSION AUTHORIZATION regress_login_auth;
BEGIN;
SELECT regress.login_in_set_role(:'acme');
SELECT regress.login_state(), apikey_has_scope('jobs:read'), apikey_metadata();
COMMIT;
-- ... as does RESET ROLE
BEGIN;
SELECT status FROM apikey_login(:'acme');
RESET ROLE;
SELECT regress.login_state(), apikey_has_scope('jobs:read'), apikey_scopes();
COMMIT;

-- PREPARE TRANSACTION ends the transaction, and the login with it
BEGIN;
SELECT status FROM apikey_login(:'acme');
PREPARE TRANSACTION 'regress_login_2pc';
SELECT regress.login_state();
-- (it was prepared by the key's role: only that role or a superuser may finish it)
RESET SESSION AUTHORIZATION;
SELECT owner FROM pg_prepared_xacts WHERE gid = 'regress_login_2pc';
COMMIT PREPARED 'regress_login_2pc';
SET SESSION AUTHORIZATION regress_login_auth;

-- outside a transaction block a login lasts one statement, and says so
SELECT status FROM apikey_login(:'acme');
SELECT regress.login_state();

-- nothing a client can SET forges the key context
SELECT regress.try($$SET apikeys.current_key = 'forged'$$);
SELECT regress.try($$SELECT set_config('apikeys.key_id', 'forged', false)$$);
SELECT regress.try($$SET apikeys.require_key = off$$);
SET apikey.current = 'forged';
SELECT set_config('request.apikey', 'forged', false) \g /dev/null
SELECT regress.login_state(), apikey_has_scope('jobs:read'), apikey_scopes(), apikey_metadata();
RESET apikey.current;

-- clean up
DROP TABLE login_errors;
RESET SESSION AUTHORIZATION;
DROP TABLE regress_login_orders;
DROP FUNCTION regress.login_state(), regress.login_definer(text),
    regress.login_then_fail(text), regress.login_in_set_role(text);
SELECT apikey_delete(key_id) FROM regress.login_keys \g /dev/null
DROP TABLE regress.login_keys;
DROP ROLE regress_login_auth, regress_login_svc, regress_login_other,
    regress_login_bypass, regress_login_promoted, "regress login ""odd"" Role";
SELECT count(*) AS keys_left FROM apikeys.keys;
