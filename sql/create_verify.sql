-- create_verify: apikey_create and apikey_verify, statuses, scopes, expiry,
-- roles by OID, transactions.
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

CREATE ROLE regress_svc NOLOGIN;

SELECT key_id, token FROM apikey_create(name => 'billing', role => 'regress_svc',
    scopes => '{invoices:read,invoices:write}', metadata => '{"team": "billing"}') \gset

SELECT valid, status, key_id = :'key_id' AS same_id, role, scopes, expires_at, metadata, name
  FROM apikey_verify(:'token');
SELECT valid, status FROM apikey_verify(:'token', scope => 'invoices:read');
SELECT valid, status, role FROM apikey_verify(:'token', 'invoices:delete');
SELECT valid, status FROM apikey_verify(:'token'::apikey, 'invoices:write');

-- the listing
SELECT name, prefix, role, scopes, status, created_by, expires_at IS NULL AS no_expiry
  FROM keys WHERE key_id = :'key_id';

-- defaults: the calling role, no scopes, prefix ak; '*' grants every scope
SELECT key_id AS k2, token AS t2 FROM apikey_create('defaults') \gset
SELECT role, scopes, prefix FROM keys WHERE key_id = :'k2';
SELECT status FROM apikey_verify(:'t2', 'anything');
SELECT apikey_update(:'k2', scopes => '{*}');
SELECT status FROM apikey_verify(:'t2', 'anything');

-- a wrong secret with a valid checksum is invalid and reveals nothing
-- (the forger is right: re-forging the real secret gives the token back)
SELECT regress.forge(:'token', substr(:'token', length(:'token') - 37, 32)) = :'token' AS forger_ok;
SELECT regress.forge(:'token', repeat('A', 32)) AS forged \gset
SELECT regress.try(format('SELECT %L::apikeys.apikey', :'forged')) AS forged_parses;
SELECT * FROM apikey_verify(:'forged');
-- a forged token naming an unknown key id
SELECT regress.forge(regexp_replace(:'token', '_[0-9A-Za-z]{12}_', '_000000000000_'), repeat('B', 32)) AS unknown \gset
SELECT * FROM apikey_verify(:'unknown');
-- a real secret under another prefix
SELECT regress.forge('zz' || substr(:'token', 3), substr(:'token', length(:'token') - 37, 32)) AS other_prefix \gset
SELECT status FROM apikey_verify(:'other_prefix');

-- settings at their size limits are stored out of line (TOAST) and come back whole
SELECT apikey_update(:'k2', name => repeat('n', 200),
    metadata => jsonb_build_object('blob', (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 250) g)));
-- (the toast table's name varies: run the count without echoing it)
\set ECHO none
SELECT format('SELECT count(*) > 0 AS toasted FROM %s', reltoastrelid::regclass)
  FROM pg_class WHERE oid = 'apikeys_internal.key_catalog'::regclass \gexec
\set ECHO all
SELECT status, length(name) AS name_len, length(metadata->>'blob') AS blob_len,
       md5(metadata->>'blob') = md5((SELECT string_agg(md5(g::text), '') FROM generate_series(1, 250) g)) AS intact
  FROM apikey_verify(:'t2');

-- expiry
SELECT key_id AS k3, token AS t3 FROM apikey_create('short-lived', expires_at => now() + interval '1 hour') \gset
SELECT status, expires_at > now() AS future FROM apikey_verify(:'t3');
-- (let the hour pass: move the expiry into the past behind the API's back)
UPDATE key_catalog SET expires_at = clock_timestamp() - interval '1 second' WHERE key_id = :'k3';
SELECT valid, status, key_id = :'k3' AS same_id FROM apikey_verify(:'t3');
SELECT status FROM keys WHERE key_id = :'k3';

-- roles are kept by OID: a rename keeps keys working
ALTER ROLE regress_svc RENAME TO regress_svc_renamed;
SELECT status, role FROM apikey_verify(:'token');
SELECT role FROM keys WHERE key_id = :'key_id';
-- a dropped role orphans its keys: invalid, listed as orphaned
DROP ROLE regress_svc_renamed;
SELECT * FROM apikey_verify(:'token');
SELECT status, role::oid <> 0 AS has_oid FROM keys WHERE key_id = :'key_id';
-- an orphaned key cannot be renewed for its dead role OID ...
SELECT regress.try(format('SELECT apikeys.apikey_rotate(%L)', :'key_id'), :'key_id');
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, name => %L)', :'key_id', 'x'), :'key_id');
-- ... but can be given a live role, after which it works again
CREATE ROLE regress_svc2 NOLOGIN;
SELECT apikey_update(:'key_id', role => 'regress_svc2');
SELECT status, role FROM apikey_verify(:'token');
SELECT regress.try(format('SELECT apikeys.apikey_delete(%L)', :'key_id'), :'key_id');
DROP ROLE regress_svc2;

-- transactions: a key created in a rolled-back transaction never verifies
BEGIN;
SELECT key_id AS k4, token AS t4 FROM apikey_create('rolled back') \gset
SELECT status FROM apikey_verify(:'t4');
ROLLBACK;
SELECT status FROM apikey_verify(:'t4');
SELECT count(*) FROM keys WHERE key_id = :'k4';

-- revocation inside a transaction is undone by rollback
BEGIN;
SELECT apikey_revoke(:'k2');
SELECT status FROM apikey_verify(:'t2');
ROLLBACK;
SELECT status FROM apikey_verify(:'t2');

-- argument errors
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('   ')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create(NULL)$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', prefix => 'Bad')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', scopes => '{a,NULL}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', scopes => '{a,""}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', scopes => '{{a,b},{c,d}}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', expires_at => now() - interval '1 day')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', metadata => '[1,2]')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', role => 'regress_nobody')$$);

-- many keys: ids are unique and every token verifies
CREATE TEMP TABLE many AS SELECT k.* FROM generate_series(1, 200) g, apikey_create('bulk ' || g) k;
SELECT count(DISTINCT key_id) AS ids, count(*) FILTER (WHERE (apikey_verify(token)).valid) AS valid FROM many;
SELECT count(DISTINCT substr(token, length(token) - 37, 32)) AS distinct_secrets FROM many;

-- clean up
SELECT apikeys.apikey_delete(key_id) FROM apikeys.keys \g /dev/null
SELECT count(*) AS keys_left FROM apikeys.keys;
