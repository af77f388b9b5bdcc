-- audit: one row per lifecycle change, who did it, what changed; never a
-- secret or a hash; append-only.
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

CREATE ROLE regress_aud NOLOGIN;
CREATE ROLE regress_aud_member NOLOGIN IN ROLE regress_aud;
CREATE ROLE regress_aud_other NOLOGIN;

SET ROLE regress_aud_member;
SELECT key_id, token AS t1 FROM apikey_create('audited', role => 'regress_aud',
    scopes => '{r}', metadata => '{"owner": "ops"}') \gset
SELECT apikey_rotate(:'key_id', grace => '5 minutes') AS t2 \gset
SELECT apikey_update(:'key_id', name => 'audited 2', scopes => '{r,w}');
SELECT apikey_update(:'key_id');          -- no change, no row
SELECT apikey_disable(:'key_id');
SELECT apikey_disable(:'key_id');         -- already disabled, no row
SELECT apikey_enable(:'key_id');
SELECT apikey_revoke(:'key_id');
SELECT apikey_delete(:'key_id');
RESET ROLE;

SELECT action, actor, actor_role, key_role,
       changes - 'prev_valid_until' AS changes,
       changes ? 'prev_valid_until' AS grace_recorded
  FROM audit_log WHERE key_id = :'key_id' ORDER BY at;

-- each statement above ran in its own transaction
SELECT count(DISTINCT txid) AS transactions FROM audit_log WHERE key_id = :'key_id';

-- no secret, token or hash in any audit row
SELECT count(*) AS leaks
  FROM audit_log a
 WHERE a::text LIKE '%' || substr(:'t1', length(:'t1') - 37, 32) || '%'
    OR a::text LIKE '%' || substr(:'t2', length(:'t2') - 37, 32) || '%'
    OR a::text LIKE '%\\x%'
    OR a.changes ?| ARRAY['hash', 'prev_hash', 'hash_version', 'prev_hash_version'];

-- the audit log is append-only, even for superusers
SELECT regress.try('UPDATE apikeys.audit_log SET actor = ''someone''');
SELECT regress.try('DELETE FROM apikeys.audit_log');
SELECT regress.try('TRUNCATE apikeys_internal.audit_log');

-- who sees which audit rows
SET ROLE regress_aud_other;
SELECT count(*) AS other_sees FROM audit_log WHERE key_id = :'key_id';
RESET ROLE;
SET ROLE regress_aud_member;
SELECT count(*) AS member_sees FROM audit_log WHERE key_id = :'key_id';
RESET ROLE;

-- a change made to the catalog directly (superuser) is recorded as such
SELECT key_id AS k2 FROM apikey_create('direct') \gset
UPDATE key_catalog SET name = 'edited by hand' WHERE key_id = :'k2';
SELECT action, actor, actor_role, changes FROM audit_log WHERE key_id = :'k2' ORDER BY at;
SELECT apikey_delete(:'k2');

DROP ROLE regress_aud_member, regress_aud_other, regress_aud;
