-- four_eyes: one login (session user) never both requests and approves a
-- key, whatever roles it SET ROLE to in between; through an authenticator
-- named in apikeys.authenticators (PostgREST's, where every request has the
-- same session user) the api keys must differ instead.
SET search_path = apikeys, public;

CREATE ROLE regress_fe_client NOLOGIN;
CREATE ROLE regress_fe_approvers NOLOGIN;
-- alice belongs to both; bob is an approver only
CREATE ROLE regress_fe_alice LOGIN IN ROLE regress_fe_client, regress_fe_approvers;
CREATE ROLE regress_fe_bob LOGIN IN ROLE regress_fe_approvers;
-- behind PostgREST: the authenticator, and the roles of the keys it serves
CREATE ROLE regress_fe_req_svc NOLOGIN;
CREATE ROLE regress_fe_appr_svc NOLOGIN IN ROLE regress_fe_approvers;
CREATE ROLE regress_fe_auth LOGIN NOINHERIT;
GRANT regress_fe_req_svc, regress_fe_appr_svc, regress_fe_approvers TO regress_fe_auth;
-- keys that may manage keys (only an admin grants apikeys:manage)
CREATE TABLE regress.fe_keys (label text PRIMARY KEY, key_id text, token text);
GRANT SELECT ON regress.fe_keys TO PUBLIC;
INSERT INTO regress.fe_keys SELECT 'req', * FROM apikey_create('requester', role => 'regress_fe_req_svc',
    scopes => '{apikeys:manage}');
INSERT INTO regress.fe_keys SELECT 'appr', * FROM apikey_create('approver', role => 'regress_fe_appr_svc',
    scopes => '{apikeys:manage}');
SELECT key_id AS req_key, token AS req_tok FROM regress.fe_keys WHERE label = 'req' \gset
SELECT token AS appr_tok FROM regress.fe_keys WHERE label = 'appr' \gset
CREATE TABLE regress.fe_requests (label text PRIMARY KEY, key_id text);
GRANT SELECT, INSERT ON regress.fe_requests TO PUBLIC;
SET apikeys.approver_role = 'regress_fe_approvers';
-- a refusal's SQLSTATE and message
CREATE FUNCTION regress.fe_try(cmd text, key_id text DEFAULT NULL) RETURNS text
LANGUAGE sql AS $$ SELECT split_part(regress.try(cmd, key_id), ' DETAIL: ', 1) $$;

-- Alice requests as the client role and approves as the approver role: refused.
SET SESSION AUTHORIZATION regress_fe_alice;
SET ROLE regress_fe_client;
INSERT INTO regress.fe_requests SELECT 'alice', apikey_request('alice''s key', scopes => '{docs:read}');
SELECT key_id AS alice_req FROM regress.fe_requests WHERE label = 'alice' \gset
SELECT requested_by, requested_session, requested_key FROM key_requests WHERE key_id = :'alice_req';
SET ROLE regress_fe_approvers;
SELECT regress.try(format('SELECT apikey_approve(%L)', :'alice_req'), :'alice_req') AS alice_approves_herself;
RESET ROLE;
SELECT regress.try(format('SELECT apikey_approve(%L)', :'alice_req'), :'alice_req') AS alice_without_set_role;
RESET SESSION AUTHORIZATION;
-- Bob, another login, approves; Alice claims.
SET SESSION AUTHORIZATION regress_fe_bob;
SELECT apikey_approve(:'alice_req') AS bob_approves;
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION regress_fe_alice;
SET ROLE regress_fe_client;
SELECT left(apikey_claim(:'alice_req'), 3) AS alice_claims;
RESET SESSION AUTHORIZATION;

-- Through the authenticator, not named: one login, refused as for Alice.
SET SESSION AUTHORIZATION regress_fe_auth;
BEGIN;
SELECT status FROM apikey_login(:'req_tok');
INSERT INTO regress.fe_requests SELECT 'via_auth', apikey_request('via the authenticator');
COMMIT;
SELECT key_id AS auth_req FROM regress.fe_requests WHERE label = 'via_auth' \gset
BEGIN;
SELECT status FROM apikey_login(:'appr_tok');
SELECT regress.fe_try(format('SELECT apikey_approve(%L)', :'auth_req'), :'auth_req') AS unnamed_authenticator;
ROLLBACK;
RESET SESSION AUTHORIZATION;

-- Named in apikeys.authenticators: the keys are compared instead.
SET apikeys.authenticators = 'regress_fe_auth';
SET SESSION AUTHORIZATION regress_fe_auth;
SELECT requested_session, requested_key = :'req_key' AS made_with_the_key
  FROM key_requests WHERE key_id = :'auth_req';
-- the same key: refused (an approver's key asking for a key of its own
-- role; the role rule would refuse it too)
BEGIN;
SELECT status FROM apikey_login(:'appr_tok');
INSERT INTO regress.fe_requests SELECT 'same_key', apikey_request('same key');
COMMIT;
SELECT key_id AS same_req FROM regress.fe_requests WHERE label = 'same_key' \gset
BEGIN;
SELECT status FROM apikey_login(:'appr_tok');
SELECT regress.fe_try(format('SELECT apikey_approve(%L)', :'same_req'), :'same_req') AS same_key;
ROLLBACK;
-- no key on the approving side (a JWT request, say): cannot be told apart
BEGIN;
SET LOCAL ROLE regress_fe_approvers;
SELECT regress.fe_try(format('SELECT apikey_approve(%L)', :'auth_req'), :'auth_req') AS keyless_approval;
ROLLBACK;
-- another key: allowed; the requesting key claims
BEGIN;
SELECT status FROM apikey_login(:'appr_tok');
SELECT apikey_approve(:'auth_req') AS other_key_approves;
COMMIT;
BEGIN;
SELECT status FROM apikey_login(:'req_tok');
SELECT left(apikey_claim(:'auth_req'), 3) AS requesting_key_claims;
COMMIT;
-- a keyless request through it cannot be approved through it either
BEGIN;
SET LOCAL ROLE regress_fe_req_svc;
INSERT INTO regress.fe_requests SELECT 'keyless', apikey_request('keyless');
COMMIT;
SELECT key_id AS keyless_req FROM regress.fe_requests WHERE label = 'keyless' \gset
BEGIN;
SELECT status FROM apikey_login(:'appr_tok');
SELECT regress.fe_try(format('SELECT apikey_approve(%L)', :'keyless_req'), :'keyless_req') AS keyless_request;
ROLLBACK;
RESET SESSION AUTHORIZATION;
-- a superuser setting: the authenticator cannot name itself
SET SESSION AUTHORIZATION regress_fe_alice;
SELECT regress.fe_try($$SET apikeys.authenticators = 'regress_fe_alice'$$) AS alice_names_herself;
RESET SESSION AUTHORIZATION;
RESET apikeys.authenticators;
RESET apikeys.approver_role;

-- clean up
SELECT count(apikey_delete(key_id)) AS deleted FROM keys
 WHERE role IN ('regress_fe_client'::regrole, 'regress_fe_req_svc'::regrole, 'regress_fe_appr_svc'::regrole);
DELETE FROM apikeys_internal.key_requests r USING regress.fe_requests f WHERE r.key_id = f.key_id;
DROP TABLE regress.fe_keys, regress.fe_requests;
DROP FUNCTION regress.fe_try(text, text);
DROP ROLE regress_fe_auth, regress_fe_appr_svc, regress_fe_req_svc, regress_fe_bob, regress_fe_alice,
    regress_fe_approvers, regress_fe_client;
