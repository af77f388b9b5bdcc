-- renewal: a creator who has left a key's role cannot renew the key in any
-- way, whatever the entry point or combination of arguments; they may still
-- disable, revoke and delete it.  Orphaned keys are re-assigned by admins.
\set VERBOSITY terse
SET search_path = apikeys, public;

CREATE ROLE regress_rn_team NOLOGIN;
CREATE ROLE regress_rn_mallory NOLOGIN IN ROLE regress_rn_team;
CREATE ROLE regress_rn_admin NOLOGIN IN ROLE apikeys_admin;
CREATE ROLE regress_rn_gone NOLOGIN;
GRANT regress_rn_gone TO regress_rn_mallory;

SET ROLE regress_rn_mallory;
SELECT key_id AS k FROM apikey_create('svc', role => 'regress_rn_team') \gset
SELECT key_id AS k_dis FROM apikey_create('to disable', role => 'regress_rn_team') \gset
SELECT key_id AS k_rev FROM apikey_create('to revoke', role => 'regress_rn_team') \gset
SELECT key_id AS k_del FROM apikey_create('to delete', role => 'regress_rn_team') \gset
SELECT key_id AS k_orphan FROM apikey_create('orphan', role => 'regress_rn_gone') \gset
RESET ROLE;

-- mallory leaves the team; an admin disables the key she created
REVOKE regress_rn_team FROM regress_rn_mallory;
SET ROLE regress_rn_admin;
SELECT apikey_disable(:'k');
RESET ROLE;

-- every combination of apikey_update's arguments, re-assignment included
CREATE TEMP TABLE renewal_attempts (call text, sqlstate text);
GRANT INSERT ON renewal_attempts TO regress_rn_mallory;
SET ROLE regress_rn_mallory;
SET regress.k = :'k';
DO $$
DECLARE
    args text[] := ARRAY[
        'name => ''taken back''',
        'scopes => ''{*}''',
        'expires_at => now() + interval ''10 years''',
        'metadata => ''{"owner": "mallory"}''',
        'role => ''regress_rn_mallory''',
        'allowed_ips => ''{0.0.0.0/0}''',
        'allowed_origins => ''{https://evil.example}'''];
    calls text[] := ARRAY[
        'apikey_rotate(%L)',
        'apikey_rotate(%L, grace => ''1 hour'')',
        'apikey_rotate(key_id => %L, grace => ''0'')',
        'apikey_enable(%L)'];
    call text;
    state text;
BEGIN
    FOR mask IN 0 .. (1 << cardinality(args)) - 1 LOOP
        call := 'apikey_update(%L';
        FOR i IN 1 .. cardinality(args) LOOP
            IF mask & (1 << (i - 1)) <> 0 THEN
                call := call || ', ' || args[i];
            END IF;
        END LOOP;
        calls := calls || (call || ')');
    END LOOP;
    FOREACH call IN ARRAY calls LOOP
        BEGIN
            EXECUTE format('SELECT apikeys.' || call, current_setting('regress.k'));
            state := 'ok';
        EXCEPTION WHEN OTHERS THEN
            state := SQLSTATE;
        END;
        INSERT INTO renewal_attempts VALUES (call, state);
    END LOOP;
END
$$;
RESET regress.k;
RESET ROLE;
-- 4 rotate and enable forms and 128 update forms, all refused with 42501
SELECT sqlstate, count(*) FROM renewal_attempts GROUP BY sqlstate;
SELECT call FROM renewal_attempts WHERE sqlstate <> '42501';
-- and the key is exactly as the admin left it
SELECT name, role, scopes, status, expires_at, metadata, allowed_ips, allowed_origins
  FROM keys WHERE key_id = :'k';
SELECT action, actor_role FROM audit_log WHERE key_id = :'k' ORDER BY at;

-- what she may still do with keys she created: switch them off
SET ROLE regress_rn_mallory;
SELECT regress.try(format('SELECT apikeys.apikey_disable(%L)', :'k_dis'));
SELECT regress.try(format('SELECT apikeys.apikey_revoke(%L)', :'k_rev'));
SELECT regress.try(format('SELECT apikeys.apikey_delete(%L)', :'k_del'));
-- ... and she cannot issue a new key for the team either
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('new', role => 'regress_rn_team')$$);
RESET ROLE;

-- an admin may re-assign the key to a role it can issue keys for
SET ROLE regress_rn_admin;
SELECT apikey_update(:'k', role => 'regress_rn_mallory');
RESET ROLE;
SELECT role, status FROM keys WHERE key_id = :'k';

-- orphaned keys: the creator gets 55000 on every renewal, re-assignment
-- included; an admin can give the key a live role
DROP ROLE regress_rn_gone;
SET ROLE regress_rn_mallory;
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, role => %L)', :'k_orphan', 'regress_rn_mallory'), :'k_orphan');
SELECT regress.try(format('SELECT apikeys.apikey_rotate(%L)', :'k_orphan'), :'k_orphan');
RESET ROLE;
SELECT status FROM keys WHERE key_id = :'k_orphan';
SET ROLE regress_rn_admin;
SELECT regress.try(format('SELECT apikeys.apikey_rotate(%L)', :'k_orphan'), :'k_orphan');
SELECT apikey_update(:'k_orphan', role => 'regress_rn_team');
RESET ROLE;
SELECT role, status FROM keys WHERE key_id = :'k_orphan';

-- clean up
SELECT apikey_delete(key_id) FROM keys WHERE key_id IN (:'k', :'k_dis', :'k_rev', :'k_orphan');
DROP TABLE renewal_attempts;
DROP ROLE regress_rn_admin, regress_rn_mallory, regress_rn_team;
