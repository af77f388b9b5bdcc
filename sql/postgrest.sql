-- postgrest: apikeys.pre_request() under PostgREST's statement sequence: a
-- NOINHERIT authenticator, BEGIN [READ ONLY], the role set to anon, the
-- request settings, the hook, then the query.  Every header form, JWT
-- passthrough (claims: what PostgREST verified, by default none), each
-- rejection with its HTTP status and headers, route scopes,
-- apikeys.require_key, malformed and hostile headers.
SET search_path = apikeys, public;

CREATE ROLE regress_pgrst_auth LOGIN NOINHERIT;
CREATE ROLE regress_pgrst_anon NOLOGIN;
CREATE ROLE regress_pgrst_api NOLOGIN;
CREATE ROLE regress_pgrst_admin NOLOGIN IN ROLE apikeys_admin;
GRANT regress_pgrst_anon, regress_pgrst_api TO regress_pgrst_auth;

CREATE SCHEMA regress_api;
GRANT USAGE ON SCHEMA regress_api TO regress_pgrst_anon, regress_pgrst_api;
CREATE TABLE regress_api.orders (id int, tenant text, item text);
INSERT INTO regress_api.orders VALUES (1, 'acme', 'anvil'), (2, 'globex', 'gizmo');
ALTER TABLE regress_api.orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY orders_read ON regress_api.orders FOR SELECT
    USING (tenant OPERATOR(pg_catalog.=) (apikeys.apikey_metadata() ->> 'tenant'));
CREATE POLICY orders_write ON regress_api.orders FOR INSERT
    WITH CHECK (apikeys.apikey_has_scope('orders:write')
                AND tenant OPERATOR(pg_catalog.=) (apikeys.apikey_metadata() ->> 'tenant'));
GRANT SELECT ON regress_api.orders TO regress_pgrst_anon;
GRANT SELECT, INSERT ON regress_api.orders TO regress_pgrst_api;

-- keys, by label; header templates below name them as %label%
CREATE TABLE regress.pgrst_keys (label text PRIMARY KEY, key_id text, token text);
GRANT SELECT ON regress.pgrst_keys TO PUBLIC;
INSERT INTO regress.pgrst_keys SELECT 'read', * FROM apikey_create('acme reader',
    role => 'regress_pgrst_api', scopes => '{orders:read}', metadata => '{"tenant": "acme"}');
INSERT INTO regress.pgrst_keys SELECT 'all', * FROM apikey_create('globex all',
    role => 'regress_pgrst_api', scopes => '{*}', metadata => '{"tenant": "globex"}');
INSERT INTO regress.pgrst_keys SELECT 'orders', * FROM apikey_create('acme orders',
    role => 'regress_pgrst_api', scopes => '{orders:*}', metadata => '{"tenant": "acme"}');
INSERT INTO regress.pgrst_keys SELECT 'revoked', * FROM apikey_create('revoked', role => 'regress_pgrst_api');
INSERT INTO regress.pgrst_keys SELECT 'disabled', * FROM apikey_create('disabled', role => 'regress_pgrst_api');
INSERT INTO regress.pgrst_keys SELECT 'expired', * FROM apikey_create('expired', role => 'regress_pgrst_api');
INSERT INTO regress.pgrst_keys SELECT 'super', * FROM apikey_create('super', role => 'postgres');
CREATE ROLE regress_pgrst_stranger NOLOGIN;
INSERT INTO regress.pgrst_keys SELECT 'stranger', * FROM apikey_create('not granted to the authenticator',
    role => 'regress_pgrst_stranger');
SELECT apikey_revoke(key_id) FROM regress.pgrst_keys WHERE label = 'revoked';
SELECT apikey_disable(key_id) FROM regress.pgrst_keys WHERE label = 'disabled';
UPDATE apikeys_internal.key_catalog SET expires_at = now() - interval '1 second'
 WHERE key_id = (SELECT key_id FROM regress.pgrst_keys WHERE label = 'expired');

-- One request, the way PostgREST sends it, in the caller's transaction:
-- the role and request settings, then the hook.  Returns the hook's outcome
-- (ok, or the PGRST rejection: message and detail) and the role and key the
-- request ends up with.  %label% in the headers stands for that key's
-- token, so no token appears in this file or its output; the function
-- fails if any secret shows up in what it returns.
CREATE FUNCTION regress.pgrst(headers text, method text DEFAULT 'GET',
                              path text DEFAULT '/orders',
                              claims text DEFAULT '{"role":"regress_pgrst_anon"}')
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    k record;
    outcome text;
BEGIN
    FOR k IN SELECT label, token FROM regress.pgrst_keys LOOP
        headers := replace(headers, '%' || k.label || '%', k.token);
    END LOOP;
    PERFORM set_config('role', coalesce(claims::json ->> 'role', 'regress_pgrst_anon'), true),
            set_config('request.jwt.claims', claims, true),
            set_config('request.method', method, true),
            set_config('request.path', path, true),
            set_config('request.headers', headers, true),
            set_config('request.cookies', '{}', true);
    outcome := regress.try('SELECT apikeys.pre_request()') || ' => ' || current_user || ' key='
               || coalesce((SELECT label FROM regress.pgrst_keys WHERE key_id = apikeys.apikey_current()), 'none');
    IF EXISTS (SELECT 1 FROM regress.pgrst_keys
                WHERE strpos(outcome, substr(token, length(token) - 37, 32)) > 0) THEN
        RAISE EXCEPTION 'a secret leaked into the outcome';
    END IF;
    RETURN outcome;
END $$;

-- route scopes: managed by admins through the view, stored in the private
-- schema
SET ROLE regress_pgrst_admin;
INSERT INTO apikeys.route_scopes (method, path_pattern, scope) VALUES
    ('GET', '/orders', 'orders:read'),
    ('POST', '/orders', 'orders:write'),
    ('GET', '/rpc/%', 'rpc');
INSERT INTO apikeys.route_scopes (path_pattern, scope) VALUES ('/admin/%', 'admin');
SELECT method, path_pattern, scope FROM apikeys.route_scopes ORDER BY 1, 2, 3;
-- their grammar: upper-case method or *, a path from /, a scope without *
SELECT regress.try($$INSERT INTO apikeys.route_scopes VALUES ('get', '/x', 's')$$);
SELECT regress.try($$INSERT INTO apikeys.route_scopes VALUES ('GET', 'x', 's')$$);
SELECT regress.try($$INSERT INTO apikeys.route_scopes VALUES ('GET', '/x', 'jobs:*')$$);
SELECT regress.try($$INSERT INTO apikeys.route_scopes VALUES ('GET', '/x', 'a b')$$);
RESET ROLE;
-- others may neither read nor change them
SET ROLE regress_pgrst_auth;
SELECT regress.try($$SELECT * FROM apikeys.route_scopes$$);
SELECT regress.try($$INSERT INTO apikeys.route_scopes VALUES ('GET', '/orders', 'x')$$);
SELECT regress.try($$DELETE FROM apikeys.route_scopes$$);
SELECT regress.try($$SELECT * FROM apikeys_internal.route_scopes$$);
RESET ROLE;

-- PostgREST's anonymous role, as the README's setup names it
SET apikeys.anon_role = regress_pgrst_anon;
SET SESSION AUTHORIZATION regress_pgrst_auth;

-- A GET exactly as PostgREST runs it: READ ONLY, role anon, settings, hook,
-- query.  (The settings' output would show the token: not printed.)
BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
SELECT set_config('search_path', 'regress_api', true),
       set_config('role', 'regress_pgrst_anon', true),
       set_config('request.jwt.claims', '{"role":"regress_pgrst_anon"}', true),
       set_config('request.method', 'GET', true),
       set_config('request.path', '/orders', true),
       set_config('request.headers', (SELECT json_build_object('x-api-key', token, 'accept', '*/*')::text
                                        FROM regress.pgrst_keys WHERE label = 'read'), true),
       set_config('request.cookies', '{}', true) \g /dev/null
SELECT apikeys.pre_request();
SELECT current_user, session_user,
       (SELECT label FROM regress.pgrst_keys WHERE key_id = apikeys.apikey_current()) AS key;
SELECT id, tenant, item FROM orders ORDER BY id;
COMMIT;
SELECT current_user, apikeys.apikey_current();

-- A POST: READ WRITE, the key's scope passes the route and the policy
BEGIN ISOLATION LEVEL READ COMMITTED;
SELECT set_config('search_path', 'regress_api', true),
       set_config('role', 'regress_pgrst_anon', true),
       set_config('request.method', 'POST', true),
       set_config('request.path', '/orders', true),
       set_config('request.headers', (SELECT json_build_object('authorization', 'ApiKey ' || token)::text
                                        FROM regress.pgrst_keys WHERE label = 'all'), true) \g /dev/null
SELECT apikeys.pre_request();
INSERT INTO orders VALUES (3, 'globex', 'gadget') RETURNING *;
SELECT id, tenant, item FROM orders ORDER BY id;
COMMIT;

-- An anonymous GET of a route without scopes: stays anon, sees nothing
BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
SELECT set_config('role', 'regress_pgrst_anon', true),
       set_config('request.method', 'GET', true),
       set_config('request.path', '/products', true),
       set_config('request.headers', '{"accept": "*/*"}', true);
SELECT apikeys.pre_request();
SELECT current_user, apikeys.apikey_current();
SELECT count(*) FROM regress_api.orders;
COMMIT;

-- A rejected request: PostgREST turns the PGRST error into the response
BEGIN ISOLATION LEVEL READ COMMITTED READ ONLY;
SELECT set_config('role', 'regress_pgrst_anon', true),
       set_config('request.method', 'GET', true),
       set_config('request.path', '/orders', true),
       set_config('request.headers', '{"x-api-key": "ak_000000000000_notakey"}', true);
SELECT apikeys.pre_request();
ROLLBACK;

-- every header form (names in any case; schemes in any case)
BEGIN; SELECT regress.pgrst('{"x-api-key": "%read%"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"X-Api-Key": "%read%"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"apikey": "%read%"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"APIKEY": "%read%"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer %read%"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"Authorization": "bearer %read%"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": "ApiKey %read%"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": "APIKEY   %read%  "}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": " %read%\t"}'); ROLLBACK;
-- the same key twice is one key
BEGIN; SELECT regress.pgrst('{"x-api-key": "%read%", "authorization": "ApiKey %read%"}'); ROLLBACK;

-- a JWT PostgREST verified (request.jwt.claims are its payload) for a role
-- other than apikeys.anon_role is PostgREST's: left alone, whatever the
-- route or apikeys.require_key
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoicmVncmVzc19wZ3JzdF9hcGkifQ.c2ln"}', claims => '{"role": "regress_pgrst_api"}'); ROLLBACK;
-- a JWT PostgREST did not verify (it read another Authorization header,
-- and the claims are its anonymous ones) is no credential: the route's
-- scope applies
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoicmVncmVzc19wZ3JzdF9hcGkifQ.c2ln"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoicmVncmVzc19wZ3JzdF9hcGkifQ.c2ln"}', claims => '{"role": "regress_pgrst_api", "sub": "u1"}'); ROLLBACK;
-- ... nor is a JWT that leaves the request anonymous: its payload is the
-- anonymous claims, or PostgREST added the anonymous role to it
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer eyJhbGciOiJub25lIn0.eyJyb2xlIjoicmVncmVzc19wZ3JzdF9hbm9uIn0."}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1MSJ9.c2ln"}', claims => '{"role": "regress_pgrst_anon", "sub": "u1"}'); ROLLBACK;
-- ... nor a malformed one: no server error, no credential
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer a.%%%.b"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer a.eyJyb2xlIjoicmVncmVzc19wZ3JzdF9hcGkiLCJuIjoxZTEwMDAwMDB9.b"}', claims => '{"role": "regress_pgrst_api"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst(json_build_object('authorization', 'Bearer a.' || translate(encode(convert_to(repeat('[', 12000), 'UTF8'), 'base64'), E'+/=\n', '-_') || '.b')::text); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer a.AA.b"}'); ROLLBACK;
-- without apikeys.anon_role, no JWT is PostgREST's
RESET SESSION AUTHORIZATION;
RESET apikeys.anon_role;
SET SESSION AUTHORIZATION regress_pgrst_auth;
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoicmVncmVzc19wZ3JzdF9hcGkifQ.c2ln"}', claims => '{"role": "regress_pgrst_api"}'); ROLLBACK;
RESET SESSION AUTHORIZATION;
SET apikeys.anon_role = regress_pgrst_anon;
SET SESSION AUTHORIZATION regress_pgrst_auth;
-- other schemes are not ours either
BEGIN; SELECT regress.pgrst('{"authorization": "Basic dXNlcjpwYXNz"}', path => '/products'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": "Basic dXNlcjpwYXNz"}'); ROLLBACK;

-- rejections: 401 with WWW-Authenticate for a bad key (in the scheme it
-- came in), 403 for a missing scope, 400 for several credentials
BEGIN; SELECT regress.pgrst('{"x-api-key": "not a key"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer not-a-key"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "%revoked%"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "%disabled%"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"apikey": "%expired%"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "%read%"}', method => 'POST'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer %read%"}', method => 'POST'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "%read%", "apikey": "%all%"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "%read%", "X-API-KEY": "%all%"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer a.b.c", "x-api-key": "%read%"}'); ROLLBACK;
-- a key whose role is a superuser never logs in; the reason goes to the
-- server log, not to the client
BEGIN; SELECT regress.pgrst('{"x-api-key": "%super%"}', path => '/products'); ROLLBACK;
-- ... nor as a role the authenticator was not granted
BEGIN; SELECT regress.pgrst('{"x-api-key": "%stranger%"}', path => '/products'); ROLLBACK;

-- route scopes: each matching row's scope is required; wildcards in the
-- key's scopes count
BEGIN; SELECT regress.pgrst('{"x-api-key": "%orders%"}', method => 'GET'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "%orders%"}', method => 'POST'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "%orders%"}', method => 'DELETE', path => '/admin/users'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "%all%"}', method => 'DELETE', path => '/admin/users'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "%read%"}', path => '/rpc/report'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "%read%"}', path => '/orders/extra'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "%read%"}', method => 'PATCH'); ROLLBACK;
-- a route with scopes needs a key
BEGIN; SELECT regress.pgrst('{}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{}', path => '/products'); ROLLBACK;
-- a route scope change applies from its commit
RESET SESSION AUTHORIZATION;
DELETE FROM apikeys.route_scopes WHERE path_pattern = '/orders' AND method = 'GET';
SET SESSION AUTHORIZATION regress_pgrst_auth;
BEGIN; SELECT regress.pgrst('{}'); ROLLBACK;

-- malformed headers: what is not a string is not a key
BEGIN; SELECT regress.pgrst('{"x-api-key": ""}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": 12345}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": null}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": ["%read%"]}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"apikey": {"value": "%read%"}}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": 7}'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer"}'); ROLLBACK;
-- request.headers that are not a JSON object
BEGIN; SELECT regress.pgrst('not json %read%'); ROLLBACK;
BEGIN; SELECT regress.pgrst('["x-api-key", "%read%"]'); ROLLBACK;
BEGIN; SELECT regress.pgrst('"%read%"'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "%read%"'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "\u0000%read%"}'); ROLLBACK;
BEGIN; SELECT regress.pgrst(''); ROLLBACK;
-- a token in a header that is not for keys is not used, and not echoed
BEGIN; SELECT regress.pgrst('{"cookie": "session=%read%", "x-token": "%read%", "referer": "https://x/?k=%read%"}', path => '/products'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"headers": {"x-api-key": "%read%"}}', path => '/products'); ROLLBACK;
-- a megabyte of headers
BEGIN; SELECT regress.pgrst(json_build_object('x-filler', repeat('f', 1024 * 1024), 'x-api-key', '%read%')::text); ROLLBACK;
BEGIN; SELECT regress.pgrst(json_build_object('x-api-key', repeat('%read%', 20000))::text); ROLLBACK;
BEGIN; SELECT regress.pgrst(repeat('[', 100000)); ROLLBACK;

-- apikeys.require_key: keyless requests are refused; it is the server's
-- policy, which the connecting role cannot turn off
RESET SESSION AUTHORIZATION;
SET apikeys.require_key = on;
SET SESSION AUTHORIZATION regress_pgrst_auth;
BEGIN; SELECT regress.pgrst('{}', path => '/products'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"x-api-key": "%read%"}', path => '/products'); ROLLBACK;
-- ... a JWT PostgREST did not verify too; one it verified is PostgREST's
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer a.b.c"}', path => '/products'); ROLLBACK;
BEGIN; SELECT regress.pgrst('{"authorization": "Bearer eyJhbGciOiJIUzI1NiJ9.eyJyb2xlIjoicmVncmVzc19wZ3JzdF9hcGkifQ.c2ln"}', path => '/products', claims => '{"role": "regress_pgrst_api"}'); ROLLBACK;
SELECT regress.try($$SET apikeys.require_key = off$$);
SELECT regress.try($$SELECT set_config('apikeys.require_key', 'off', true)$$);
SHOW apikeys.require_key;
RESET SESSION AUTHORIZATION;
RESET apikeys.require_key;
-- per role, as an administrator would set it on the authenticator
ALTER ROLE regress_pgrst_auth SET apikeys.require_key = on;
\c - regress_pgrst_auth
SHOW apikeys.require_key;
BEGIN; SELECT regress.pgrst('{}', path => '/products'); ROLLBACK;
\c - postgres
SET search_path = apikeys, public;
ALTER ROLE regress_pgrst_auth RESET apikeys.require_key;

-- pre_request inside SECURITY DEFINER cannot switch roles: refused first
CREATE FUNCTION regress.pre_request_definer() RETURNS void LANGUAGE sql SECURITY DEFINER
    SET search_path = pg_catalog, pg_temp
    AS $$ SELECT apikeys.pre_request() $$;
SELECT regress.try('SELECT regress.pre_request_definer()');

-- clean up
DROP FUNCTION regress.pgrst(text, text, text, text), regress.pre_request_definer();
DELETE FROM apikeys.route_scopes;
SELECT apikey_delete(key_id) FROM regress.pgrst_keys \g /dev/null
DROP TABLE regress.pgrst_keys;
DROP SCHEMA regress_api CASCADE;
DROP ROLE regress_pgrst_auth, regress_pgrst_anon, regress_pgrst_api, regress_pgrst_admin,
    regress_pgrst_stranger;
SELECT count(*) AS keys_left FROM apikeys.keys;
