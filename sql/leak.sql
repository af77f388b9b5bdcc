-- leak: apikey_check (offline format and checksum) and apikey_report_leak
-- (anyone holding a live token revokes its key, audited as revoke_leak).
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

CREATE ROLE regress_leak_svc NOLOGIN;
CREATE ROLE regress_leak_owner NOLOGIN IN ROLE regress_leak_svc;
CREATE ROLE regress_leak_finder NOLOGIN;          -- no relation to the key at all
SET ROLE regress_leak_owner;
SELECT key_id, token FROM apikey_create('leaky', role => 'regress_leak_svc') \gset
SELECT key_id AS key2, token AS token2 FROM apikey_create('leaky 2', role => 'regress_leak_svc', prefix => 'ak_live') \gset
RESET ROLE;

-- apikey_check: grammar and checksum only
SELECT apikey_check(:'token') AS real_token,
       apikey_check(:'token2') AS live_prefix,
       apikey_check(:'token' || 'x') AS one_longer,
       apikey_check(left(:'token', -1)) AS one_shorter,
       apikey_check(left(:'token', -1) || CASE right(:'token', 1) WHEN 'A' THEN 'B' ELSE 'A' END) AS checksum_off,
       apikey_check(upper(:'token')) AS upper_case,
       apikey_check(' ' || :'token') AS leading_space,
       apikey_check('') AS empty,
       apikey_check(repeat('a', 100000)) AS huge,
       apikey_check(NULL) IS NULL AS strict_null;
-- IMMUTABLE, STRICT, PARALLEL SAFE: it reads no table
SELECT provolatile, proisstrict, proparallel FROM pg_proc WHERE oid = 'apikeys.apikey_check(text)'::regprocedure;

-- report_leak: garbage, null, truncated tokens: invalid, no audit row
SET ROLE regress_leak_finder;
SELECT apikey_report_leak('not a token') AS garbage,
       apikey_report_leak(NULL) AS null_token,
       apikey_report_leak(left(:'token', -1), 'somewhere') AS truncated,
       apikey_report_leak(repeat('x', 1000000)) AS huge;
RESET ROLE;

-- a wrong secret with a valid checksum (the old secret after a rotation):
-- invalid, exactly like an unknown key
SET ROLE regress_leak_owner;
SELECT apikey_rotate(:'key2') AS token2_new \gset
RESET ROLE;
SET ROLE regress_leak_finder;
SELECT apikey_check(:'token2') AS old_token_well_formed,
       apikey_report_leak(:'token2', 'old') AS old_secret;
RESET ROLE;
SELECT count(*) AS audit_rows_so_far FROM audit_log WHERE action ~ 'leak';

-- the source: bounded, no control characters, never a token
SET ROLE regress_leak_finder;
SELECT regress.try(format('SELECT apikeys.apikey_report_leak(%L, %L)', :'token', repeat('s', 1001)));
SELECT regress.try(format('SELECT apikeys.apikey_report_leak(%L, %L)', :'token', E'line\nbreak'));
SELECT regress.try(format('SELECT apikeys.apikey_report_leak(%L, %L)', :'token', E'bidi \u202e txt'));
SELECT regress.try(format('SELECT apikeys.apikey_report_leak(%L, %L)', :'token', 'found: ' || :'token'));
SELECT regress.try(format('SELECT apikeys.apikey_report_leak(%L, %L)', :'token', 'other key ' || :'token2_new' || ' here'));
SELECT regress.try(format('SELECT apikeys.apikey_report_leak(%L, %L)', :'token', 'secret ' || substr(:'token', length(:'token') - 37, 32)));
-- a bad source is refused whatever the token
SELECT regress.try(format('SELECT apikeys.apikey_report_leak(%L, %L)', 'garbage', repeat('s', 1001)));
-- nothing was revoked by the refused calls
SELECT status FROM apikey_verify(:'token');

-- a read-only transaction cannot revoke; the key stays valid
BEGIN READ ONLY;
SELECT regress.try(format('SELECT apikeys.apikey_report_leak(%L)', :'token'));
SELECT apikey_report_leak('garbage') AS garbage_read_only;
ROLLBACK;

-- a live token: the key is revoked at once, by a role with no rights on it
SELECT apikey_report_leak(:'token', 'https://github.com/acme/app/blob/main/.env#L3') AS report;
RESET ROLE;
SELECT status FROM apikey_verify(:'token');
SELECT status, revoked_at IS NOT NULL AS revoked_at_set FROM keys WHERE key_id = :'key_id';
SELECT action, key_id = :'key_id' AS same_key, actor_role, key_role, changes
  FROM audit_log WHERE key_id = :'key_id' ORDER BY at;
-- reporting again changes nothing and records nothing
SET ROLE regress_leak_finder;
SELECT apikey_report_leak(:'token', 'again') AS again;
RESET ROLE;
SELECT count(*) AS leak_rows FROM audit_log WHERE key_id = :'key_id' AND action ~ 'leak';
-- the finder sees the row it caused, and nothing else of the key
SET ROLE regress_leak_finder;
SELECT action, actor_role FROM audit_log ORDER BY at;
SELECT count(*) AS keys_visible FROM keys;
RESET ROLE;

-- a disabled key is revoked too (it could be enabled again)
SET ROLE regress_leak_owner;
SELECT apikey_disable(:'key2');
RESET ROLE;
SET ROLE regress_leak_finder;
SELECT apikey_report_leak(:'token2_new') AS disabled_key;
RESET ROLE;
SELECT status FROM keys WHERE key_id = :'key2';
SELECT changes FROM audit_log WHERE key_id = :'key2' AND action = 'revoke_leak';

-- the old secret during a rotation's grace period is live: it revokes the key
SELECT key_id AS key3, token AS token3 FROM apikey_create('graceful', role => 'regress_leak_svc') \gset
SELECT apikey_rotate(:'key3', grace => '1 hour') AS token3_new \gset
SELECT apikey_report_leak(:'token3') AS old_secret_in_grace;
SELECT status FROM apikey_verify(:'token3_new');

-- an ordinary revoke is still audited as revoke
SELECT key_id AS key4 FROM apikey_create('plain', role => 'regress_leak_svc') \gset
SELECT apikey_revoke(:'key4');
SELECT action FROM audit_log WHERE key_id = :'key4' ORDER BY at;

-- no token and no secret in any audit row
SELECT count(*) AS audit_rows_with_secret FROM apikeys_internal.audit_log a
 WHERE strpos(a::text, substr(:'token', length(:'token') - 37, 32)) > 0
    OR strpos(a::text, substr(:'token2_new', length(:'token2_new') - 37, 32)) > 0
    OR strpos(a::text, substr(:'token3', length(:'token3') - 37, 32)) > 0;

-- privileges: the internal half is not callable by users
SET ROLE regress_leak_finder;
SELECT regress.try(format('SELECT apikeys_internal._apikey_report_leak(0, %L, %L)', :'key2', '\x00'));
SELECT regress.try('SELECT apikeys_internal._audit_note()');
RESET ROLE;
SELECT has_function_privilege('regress_leak_finder', 'apikeys.apikey_report_leak(text, text)', 'EXECUTE') AS finder_may_report;

SELECT apikey_delete(k) FROM (VALUES (:'key_id'), (:'key2'), (:'key3'), (:'key4')) v(k);
DROP ROLE regress_leak_finder, regress_leak_owner, regress_leak_svc;
