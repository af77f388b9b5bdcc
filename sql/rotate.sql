-- rotate: new secret, same key; the old secret stops at commit or after grace.
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

SELECT key_id, token AS t1 FROM apikey_create('rotating', scopes => '{a,b}',
    prefix => 'ak_live', metadata => '{"env": "prod"}',
    expires_at => '2999-01-01 00:00:00+00') \gset

-- same key id, prefix, name, role, scopes and settings; new secret
SELECT apikey_rotate(:'key_id') AS t2 \gset
SELECT :'t2' <> :'t1' AS new_token,
       apikey_key_id(:'t2') = :'key_id' AS same_id,
       apikey_prefix(:'t2') AS prefix;
SELECT (apikey_verify(:'t1')).status AS old, (apikey_verify(:'t2')).status AS new;
SELECT name, prefix, scopes, metadata, expires_at, status, rotated_at IS NOT NULL AS rotated, grace_until
  FROM keys WHERE key_id = :'key_id';

-- a rotation is invisible until commit: rolled back, the old secret stays
BEGIN;
SELECT apikey_rotate(:'key_id') AS t_rb \gset
SELECT (apikey_verify(:'t2')).status AS old_in_tx, (apikey_verify(:'t_rb')).status AS new_in_tx;
ROLLBACK;
SELECT (apikey_verify(:'t2')).status AS old_after, (apikey_verify(:'t_rb')).status AS new_after;

-- grace: both secrets verify until now() + grace
SELECT apikey_rotate(:'key_id', grace => interval '1 hour') AS t3 \gset
SELECT (apikey_verify(:'t2')).status AS previous, (apikey_verify(:'t3')).status AS current,
       (apikey_verify(:'t1')).status AS older;
SELECT grace_until > now() + interval '59 minutes' AS grace_set FROM keys WHERE key_id = :'key_id';
-- a second rotation drops the oldest secret
SELECT apikey_rotate(:'key_id', grace => interval '1 hour') AS t4 \gset
SELECT (apikey_verify(:'t2')).status AS t2, (apikey_verify(:'t3')).status AS t3, (apikey_verify(:'t4')).status AS t4;
-- a short grace ends
SELECT apikey_rotate(:'key_id', grace => interval '1 minute') AS t5 \gset
SELECT (apikey_verify(:'t4')).status AS t4_in_grace;
-- (let the minute pass: move the end of grace into the past behind the API's back)
UPDATE key_catalog SET prev_valid_until = clock_timestamp() - interval '1 second' WHERE key_id = :'key_id';
SELECT (apikey_verify(:'t4')).status AS t4_after_grace, (apikey_verify(:'t5')).status AS t5;
-- zero grace is an immediate rotation
SELECT apikey_rotate(:'key_id', grace => interval '0') AS t6 \gset
SELECT (apikey_verify(:'t5')).status AS t5, (apikey_verify(:'t6')).status AS t6;

-- the previous secret also carries the key's state
SELECT apikey_rotate(:'key_id', grace => interval '1 hour') AS t7 \gset
SELECT apikey_disable(:'key_id');
SELECT (apikey_verify(:'t6')).status AS previous, (apikey_verify(:'t7')).status AS current;
-- rotating a disabled key is allowed and keeps it disabled
SELECT apikey_rotate(:'key_id') AS t8 \gset
SELECT (apikey_verify(:'t8')).status;
SELECT apikey_enable(:'key_id');
SELECT (apikey_verify(:'t8')).status;

-- revocation also ends any grace period
SELECT apikey_rotate(:'key_id', grace => interval '1 hour') AS t9 \gset
SELECT apikey_revoke(:'key_id');
SELECT (apikey_verify(:'t8')).status AS previous, (apikey_verify(:'t9')).status AS current;
SELECT grace_until FROM keys WHERE key_id = :'key_id';

-- errors
SELECT regress.try(format('SELECT apikeys.apikey_rotate(%L)', :'key_id'), :'key_id');
SELECT key_id AS k2 FROM apikey_create('other') \gset
SELECT regress.try(format('SELECT apikeys.apikey_rotate(%L, grace => %L)', :'k2', '-1 minute'), :'k2');
SELECT regress.try($$SELECT apikeys.apikey_rotate('doesnotexist')$$);
SELECT regress.try($$SELECT apikeys.apikey_rotate(NULL)$$);

-- clean up
SELECT apikeys.apikey_delete(key_id) FROM apikeys.keys \g /dev/null
SELECT count(*) AS keys_left FROM apikeys.keys;
