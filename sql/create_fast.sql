-- create_fast: apikey_create decides plainly valid calls in C (src/create.c)
-- and leaves the rest to apikeys_internal._apikey_create.  Both must store
-- the same row and write the same audit row; the C audit trigger must
-- write for a direct insert what the PL/pgSQL one wrote.
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

SELECT now() AS t0 \gset
CREATE ROLE regress_fast NOLOGIN;
CREATE ROLE regress_fast_user NOLOGIN IN ROLE regress_fast;

-- what is stored of a key, less what differs between two keys anyway (ids,
-- times, hashes, the audit chain's links)
CREATE FUNCTION pg_temp.stored(k text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT to_jsonb(c) - ARRAY['key_id', 'hash', 'created_at', 'updated_at']
      FROM apikeys_internal.key_catalog c WHERE c.key_id = k
$$;
CREATE FUNCTION pg_temp.audited(k text) RETURNS jsonb LANGUAGE sql AS $$
    SELECT jsonb_agg(to_jsonb(a) - ARRAY['key_id', 'at', 'txid', 'action', 'seq', 'prev_hash', 'row_hash']
                     ORDER BY a.at)
      FROM apikeys_internal.audit_log a WHERE a.key_id = k
$$;
-- apikey_create and the reference implementation, called with the same
-- arguments by the same role: the same row, the same audit row, the same
-- verification
CREATE FUNCTION pg_temp.same(p_name text, p_role regrole, p_scopes text[],
                             p_expires timestamptz, p_prefix text, p_metadata jsonb)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    f record;
    r record;
    vf record;
    vr record;
BEGIN
    SELECT * INTO f FROM apikeys.apikey_create(p_name, p_role, p_scopes, p_expires, p_prefix, p_metadata);
    SELECT * INTO r FROM apikeys_internal._apikey_create(apikeys_internal._current_role(), p_name, p_role,
                                                         p_scopes, p_expires, p_prefix, p_metadata,
                                                         NULL, NULL, NULL, NULL, NULL, false);
    SELECT * INTO vf FROM apikeys.apikey_verify(f.token);
    SELECT * INTO vr FROM apikeys.apikey_verify(r.new_token);
    RETURN CASE
        WHEN pg_temp.stored(f.key_id) IS DISTINCT FROM pg_temp.stored(r.new_key_id) THEN
            'rows differ: ' || pg_temp.stored(f.key_id)::text || ' vs ' || pg_temp.stored(r.new_key_id)::text
        WHEN pg_temp.audited(f.key_id) IS DISTINCT FROM pg_temp.audited(r.new_key_id) THEN
            'audit differs: ' || pg_temp.audited(f.key_id)::text || ' vs ' || pg_temp.audited(r.new_key_id)::text
        WHEN (vf.status, vf.role, vf.scopes, vf.expires_at, vf.metadata, vf.name)
             IS DISTINCT FROM (vr.status, vr.role, vr.scopes, vr.expires_at, vr.metadata, vr.name) THEN
            'verification differs'
        WHEN f.token !~ ('^' || coalesce(p_prefix, 'ak') || '_' || f.key_id || '_[0-9A-Za-z]{38}$') THEN
            'malformed token'
        ELSE 'same: ' || vf.status END;
END $$;

-- plainly valid calls (the C path), every argument exercised
SELECT pg_temp.same('defaults', NULL, NULL, NULL, NULL, NULL);
SELECT pg_temp.same('all set', 'regress_fast', '{orders:read,jobs:*,*}', '2999-01-01 00:00+00', 'ak_live',
                    '{"team": "billing", "n": [1, 2.50, null], "s": "\u00e9"}');
SELECT pg_temp.same('no expiry', NULL, '{}', 'infinity', 'dbm', '{}');
SELECT pg_temp.same(repeat('x', 200), NULL, '{a}', NULL, NULL, NULL);
SELECT pg_temp.same('  spaced  name ', NULL, ARRAY[repeat('s', 128)], NULL, 'z9_', NULL);
SELECT pg_temp.same('sixty-four scopes', NULL,
                    (SELECT array_agg('scope' || g) FROM generate_series(1, 64) g), NULL, NULL, NULL);
-- values the C path does not take, to the reference implementation: the
-- same result (or the same error) either way
SELECT pg_temp.same('caf' || chr(233), NULL, NULL, NULL, NULL, NULL);
SELECT pg_temp.same('big metadata', NULL, NULL, NULL, NULL,
                    jsonb_build_object('v', repeat('m', 8000)));
SELECT regress.try($$SELECT * FROM apikeys.apikey_create(repeat('x', 201))$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('tab' || chr(9))$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('   ')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create(NULL)$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('s', scopes => '{"a b"}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('s', scopes => '{a*b}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('s', scopes => '{{a},{b}}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('s', scopes => ARRAY['a', NULL])$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('s', expires_at => now() - interval '1 second')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('s', expires_at => '-infinity')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('s', prefix => 'Bad')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('s', metadata => '[1]')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('s', metadata => jsonb_build_object('v', repeat('m', 8200)))$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('s', role => 'regress_fast')$$);

-- privileges: a member creates for its role, not for another
SET ROLE regress_fast_user;
SELECT count(*) FROM apikey_create('member', role => 'regress_fast');
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('not mine', role => 'pg_monitor')$$);
RESET ROLE;
SELECT name, role, created_by FROM keys WHERE name = 'member';

-- the audit row of an insert: through apikey_create ...
SELECT key_id AS k FROM apikey_create('audited', scopes => '{r}', metadata => '{"a": 1}') \gset
SELECT action, actor, actor_role, key_role, changes FROM audit_log WHERE key_id = :'k';
-- ... and of a direct insert by an admin, outside the apikeys functions
INSERT INTO apikeys_internal.key_catalog (key_id, name, prefix, role, hash_version, hash, created_by)
VALUES ('DirectInsert', 'direct', 'ak', 'regress_fast', 1, '\x00', 'regress_fast');
SELECT action, actor, actor_role, key_role, changes FROM audit_log WHERE key_id = 'DirectInsert';
-- the catalog's row check still refuses what its five checks refused (the
-- failing row's timestamps left out)
SELECT split_part(regress.try($$INSERT INTO apikeys_internal.key_catalog (key_id, name, prefix, role, hash_version, hash, created_by)
                     VALUES ('short', 'n', 'ak', 'regress_fast', 1, '\x00', 'regress_fast')$$), ' DETAIL:', 1);
SELECT split_part(regress.try($$INSERT INTO apikeys_internal.key_catalog (key_id, name, prefix, role, hash_version, hash, created_by)
                     VALUES ('Bad_KeyId_12', 'n', 'ak', 'regress_fast', 1, '\x00', 'regress_fast')$$), ' DETAIL:', 1);
SELECT split_part(regress.try($$INSERT INTO apikeys_internal.key_catalog (key_id, name, prefix, role, hash_version, hash, created_by)
                     VALUES ('AAAAAAAAAAAA', 'n', '9ak', 'regress_fast', 1, '\x00', 'regress_fast')$$), ' DETAIL:', 1);
SELECT split_part(regress.try($$INSERT INTO apikeys_internal.key_catalog (key_id, name, prefix, role, hash_version, hash, created_by)
                     VALUES ('AAAAAAAAAAAA', '   ', 'ak', 'regress_fast', 1, '\x00', 'regress_fast')$$), ' DETAIL:', 1);
SELECT split_part(regress.try($$INSERT INTO apikeys_internal.key_catalog (key_id, name, prefix, role, state, hash_version, hash, created_by)
                     VALUES ('AAAAAAAAAAAA', 'n', 'ak', 'regress_fast', 'paused', 1, '\x00', 'regress_fast')$$), ' DETAIL:', 1);
SELECT split_part(regress.try($$INSERT INTO apikeys_internal.key_catalog (key_id, name, prefix, role, prev_hash, hash_version, hash, created_by)
                     VALUES ('AAAAAAAAAAAA', 'n', 'ak', 'regress_fast', '\x00', 1, '\x00', 'regress_fast')$$), ' DETAIL:', 1);
SELECT split_part(regress.try($$UPDATE apikeys_internal.key_catalog SET state = 'gone' WHERE key_id = 'DirectInsert'$$), ' DETAIL:', 1);

-- The direct insert (src/insert.c) follows the table: a changed default or
-- an added CHECK constraint applies at once (both undone by the rollback).
BEGIN;
ALTER TABLE apikeys_internal.key_catalog ALTER COLUMN state SET DEFAULT 'disabled';
SELECT v.status FROM apikey_create('default follows') c, apikey_verify(c.token) v;
ALTER TABLE apikeys_internal.key_catalog ADD CONSTRAINT regress_no_q CHECK (name !~ 'q');
SELECT split_part(regress.try($$SELECT * FROM apikeys.apikey_create('has a q')$$), ' DETAIL:', 1);
ROLLBACK;
SELECT v.status FROM apikey_create('default restored') c, apikey_verify(c.token) v;
-- a read-only transaction refuses, as an INSERT would
BEGIN READ ONLY;
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('read only')$$);
ROLLBACK;
-- a direct insert by an admin who is not a superuser: row-level security
-- applies to it, so the executor writes the audit row (the policy lets
-- admins append); without INSERT on the audit log, the insert fails
CREATE ROLE regress_fast_admin NOLOGIN IN ROLE apikeys_admin;
GRANT INSERT ON apikeys_internal.key_catalog TO regress_fast_admin;
SET ROLE regress_fast_admin;
SELECT regress.try($$INSERT INTO apikeys_internal.key_catalog (key_id, name, prefix, role, hash_version, hash, created_by)
                     VALUES ('AdminInsert0', 'by admin', 'ak', 'regress_fast', 1, '\x00', 'regress_fast')$$);
RESET ROLE;
GRANT INSERT ON apikeys_internal.audit_log TO regress_fast_admin;
SET ROLE regress_fast_admin;
INSERT INTO apikeys_internal.key_catalog (key_id, name, prefix, role, hash_version, hash, created_by)
VALUES ('AdminInsert0', 'by admin', 'ak', 'regress_fast', 1, '\x00', 'regress_fast');
RESET ROLE;
SELECT action, actor_role, key_role, changes->>'name' AS name FROM audit_log WHERE key_id = 'AdminInsert0';
REVOKE INSERT ON apikeys_internal.key_catalog FROM regress_fast_admin;
REVOKE INSERT ON apikeys_internal.audit_log FROM regress_fast_admin;

-- clean up
SELECT count(*) > 0 AS cleaned FROM apikeys_internal.key_catalog c, LATERAL apikey_delete(c.key_id)
 WHERE c.created_at >= :'t0';
DROP ROLE regress_fast_admin;
DROP ROLE regress_fast_user;
DROP ROLE regress_fast;
