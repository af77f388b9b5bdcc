-- lifecycle: disable, enable, revoke, delete, update and their wrong states.
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

CREATE ROLE regress_lc_a NOLOGIN;
CREATE ROLE regress_lc_b NOLOGIN;
SELECT key_id, token FROM apikey_create('lifecycle', role => 'regress_lc_a', scopes => '{x}') \gset

-- disable / enable are reversible and idempotent
SELECT apikey_disable(:'key_id');
SELECT valid, status FROM apikey_verify(:'token');
SELECT status FROM keys WHERE key_id = :'key_id';
SELECT apikey_disable(:'key_id');
SELECT apikey_enable(:'key_id');
SELECT valid, status FROM apikey_verify(:'token', 'x');
SELECT apikey_enable(:'key_id');

-- update: NULL leaves a setting unchanged
SELECT apikey_update(:'key_id', name => 'renamed');
SELECT name, scopes, metadata, expires_at FROM keys WHERE key_id = :'key_id';
SELECT apikey_update(:'key_id', scopes => '{y,z}', metadata => '{"k": "v"}',
                     expires_at => '2999-01-01 00:00:00+00', role => 'regress_lc_b');
SELECT name, role, scopes, metadata, expires_at FROM keys WHERE key_id = :'key_id';
SELECT status, role, scopes FROM apikey_verify(:'token', 'y');
SELECT status FROM apikey_verify(:'token', 'x');
-- 'infinity' removes the expiry
SELECT apikey_update(:'key_id', expires_at => 'infinity');
SELECT expires_at FROM keys WHERE key_id = :'key_id';
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, name => %L)', :'key_id', ''), :'key_id');
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, expires_at => %L)', :'key_id', '2000-01-01'), :'key_id');
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, metadata => %L)', :'key_id', '"str"'), :'key_id');
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, role => %L)', :'key_id', '-'), :'key_id');

-- revoke is permanent: the row stays, verifies as revoked
SELECT apikey_revoke(:'key_id');
SELECT valid, status, key_id = :'key_id' AS same_id FROM apikey_verify(:'token');
SELECT status, revoked_at IS NOT NULL AS revoked_at_set FROM keys WHERE key_id = :'key_id';
SELECT apikey_revoke(:'key_id');
SELECT regress.try(format('SELECT apikeys.apikey_enable(%L)', :'key_id'), :'key_id');
SELECT regress.try(format('SELECT apikeys.apikey_disable(%L)', :'key_id'), :'key_id');
SELECT regress.try(format('SELECT apikeys.apikey_rotate(%L)', :'key_id'), :'key_id');
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, name => %L)', :'key_id', 'again'), :'key_id');

-- delete removes the key (revoked or not); a deleted key is invalid
SELECT apikey_delete(:'key_id');
SELECT valid, status, key_id FROM apikey_verify(:'token');
SELECT count(*) FROM keys WHERE key_id = :'key_id';

-- unknown key ids: a clear error naming the key id
SELECT regress.try($$SELECT apikeys.apikey_disable('nosuchkey123')$$);
SELECT regress.try($$SELECT apikeys.apikey_enable('nosuchkey123')$$);
SELECT regress.try($$SELECT apikeys.apikey_revoke('nosuchkey123')$$);
SELECT regress.try($$SELECT apikeys.apikey_delete('nosuchkey123')$$);
SELECT regress.try($$SELECT apikeys.apikey_update('nosuchkey123', name => 'x')$$);
SELECT regress.try($$SELECT apikeys.apikey_delete(NULL)$$);
-- a token passed where a key id belongs is refused without being echoed
SELECT key_id AS k_tok, token AS t_tok FROM apikey_create('token as id') \gset
SELECT regress.try(format('SELECT apikeys.apikey_revoke(%L)', :'t_tok'));
SELECT regress.try(format('SELECT apikeys.apikey_revoke(%L)', :'t_tok')) LIKE '%' || substr(:'t_tok', 20) || '%' AS echoed;
SELECT apikey_delete(:'k_tok');

-- the listing's statuses
SELECT key_id AS k_active FROM apikey_create('s active') \gset
SELECT key_id AS k_disabled FROM apikey_create('s disabled') \gset
SELECT key_id AS k_revoked FROM apikey_create('s revoked') \gset
SELECT apikey_disable(:'k_disabled'), apikey_revoke(:'k_revoked');
SELECT name, status FROM keys WHERE name LIKE 's %' ORDER BY name;

DROP ROLE regress_lc_a;
DROP ROLE regress_lc_b;

-- clean up
SELECT apikeys.apikey_delete(key_id) FROM apikeys.keys \g /dev/null
SELECT count(*) AS keys_left FROM apikeys.keys;
