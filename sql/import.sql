-- import: keys brought over from another system keep working with their
-- statuses; tokens in apikeys' format keep their key id (custom keys);
-- apikey_rotate turns an imported key into a native one.
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

CREATE ROLE regress_im_svc NOLOGIN;
CREATE ROLE regress_im_user NOLOGIN IN ROLE regress_im_svc;
CREATE ROLE regress_im_other NOLOGIN;
SET ROLE regress_im_user;

-- another system's token, and only the SHA-256 of others
SELECT apikey_import('legacy orders', role => 'regress_im_svc', token => 'sk_live_4eC39HqLyjWDarjtT1zdp7dc',
                     scopes => '{orders:read}', metadata => '{"from": "stripe-like"}') AS k1 \gset
SELECT apikey_import('legacy disabled', role => 'regress_im_svc',
                     token_sha256 => sha256('ghp_16C7e42F292c6912E7710c838347Ae178B4a'::bytea), status => 'disabled') AS k2 \gset
SELECT apikey_import('legacy revoked', role => 'regress_im_svc',
                     token_sha256 => sha256('xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy'::bytea), status => 'revoked') AS k3 \gset
SELECT apikey_import('legacy expired', role => 'regress_im_svc', token => 'AKIAIOSFODNN7EXAMPLE/wJalrXUtnFEMI',
                     expires_at => '2001-01-01 00:00:00+00') AS k4 \gset
-- they verify with their statuses, and details once the token matched
SELECT valid, status, key_id = :'k1' AS same, role, scopes, metadata
  FROM apikey_verify('sk_live_4eC39HqLyjWDarjtT1zdp7dc', 'orders:read');
SELECT status FROM apikey_verify('sk_live_4eC39HqLyjWDarjtT1zdp7dc', 'orders:write');
SELECT status, key_id = :'k2' AS same FROM apikey_verify('ghp_16C7e42F292c6912E7710c838347Ae178B4a');
SELECT status, key_id = :'k3' AS same FROM apikey_verify('xoxb-17653672481-19874698323-pdFZKVeTuE8sk7oOcBrzbqgy');
SELECT status, key_id = :'k4' AS same FROM apikey_verify('AKIAIOSFODNN7EXAMPLE/wJalrXUtnFEMI');
-- one character off, or nothing imported: invalid, and nothing revealed
SELECT valid, status, key_id, role FROM apikey_verify('sk_live_4eC39HqLyjWDarjtT1zdp7dC');
SELECT status FROM apikey_verify('sk_live_not_imported_at_all_0000');
SELECT status FROM apikey_verify(repeat('a', 513));
-- the listing marks them; the catalog keeps the imported status
SELECT name, status, imported, revealable FROM keys ORDER BY name;

-- a token in apikeys' format keeps its key id and prefix: a custom key
RESET ROLE;
SELECT key_id AS custom_id, token AS custom_token
  FROM apikey_create('throwaway', role => 'regress_im_svc', prefix => 'ak_live') \gset
SELECT apikey_delete(:'custom_id');
SET ROLE regress_im_user;
SELECT apikey_import('custom', role => 'regress_im_svc', token => :'custom_token') = :'custom_id' AS kept_key_id;
SELECT status, key_id = :'custom_id' AS same FROM apikey_verify(:'custom_token');
SELECT prefix, imported FROM keys WHERE key_id = :'custom_id';
SELECT regress.try(format('SELECT apikeys.apikey_import(%L, token => %L)', 'again', :'custom_token'), :'custom_id');

-- what import refuses; the token is never echoed
SELECT regress.try($$SELECT apikeys.apikey_import('none')$$);
SELECT regress.try($$SELECT apikeys.apikey_import('both', token => 'abcdefghijklmnopq', token_sha256 => '\x00')$$);
SELECT regress.try($$SELECT apikeys.apikey_import('short', token => 'sk_123456789abc')$$);
SELECT regress.try($$SELECT apikeys.apikey_import('space', token => 'sk live 4eC39HqLyjWDarjtT1zd')$$);
SELECT regress.try(format('SELECT apikeys.apikey_import(%L, token => %L)', 'long', repeat('x', 513)));
SELECT regress.try($$SELECT apikeys.apikey_import('digest', token_sha256 => '\x0102')$$);
SELECT regress.try(format('SELECT apikeys.apikey_import(%L, token => %L)', 'typo', left(:'custom_token', -1) || 'x'));
SELECT regress.try(format('SELECT apikeys.apikey_import(%L, token => %L, prefix => %L)', 'prefix', :'custom_token', 'ak'));
SELECT regress.try($$SELECT apikeys.apikey_import('dup', token => 'sk_live_4eC39HqLyjWDarjtT1zdp7dc')$$);
SELECT regress.try($$SELECT apikeys.apikey_import('status', token => 'sk_live_another_token_123', status => 'expired')$$);
SELECT regress.try($$SELECT apikeys.apikey_import('other role', role => 'regress_im_other', token => 'sk_live_another_token_123')$$);
SELECT regress.try($$SELECT apikeys.apikey_import('bad prefix', token => 'sk_live_another_token_123', prefix => 'Sk')$$);
-- an imported token is not an apikey value (the type holds native tokens)
SELECT regress.try($$SELECT 'sk_live_4eC39HqLyjWDarjtT1zdp7dc'::apikeys.apikey$$);

-- history: create and import, never the token or its digest
RESET ROLE;
SELECT action, actor_role, changes - 'expires_at' - 'metadata' - 'scopes' AS changes
  FROM audit_log WHERE key_id IN (:'k1', :'k2') ORDER BY at;
SELECT count(*) AS rows_with_token_or_digest FROM apikeys_internal.audit_log a
 WHERE strpos(a::text, '4eC39HqLyjWDarjtT1zdp7dc') > 0
    OR strpos(a::text, encode(sha256('sk_live_4eC39HqLyjWDarjtT1zdp7dc'::bytea), 'hex')) > 0;
-- the digest column is not readable by users
SELECT has_column_privilege('regress_im_user', 'apikeys_internal.imported_keys', 'digest', 'SELECT') AS may_read_digest;

-- rotation turns an imported key native; with grace the old token lasts it
SET ROLE regress_im_user;
SELECT apikey_rotate(:'k1', grace => '1 hour') AS k1_native \gset
SELECT status FROM apikey_verify('sk_live_4eC39HqLyjWDarjtT1zdp7dc', 'orders:read');
SELECT status, key_id = :'k1' AS same FROM apikey_verify(:'k1_native', 'orders:read');
SELECT imported FROM keys WHERE key_id = :'k1';
SELECT apikey_rotate(:'k1') IS NOT NULL AS rotated_again;
SELECT status FROM apikey_verify('sk_live_4eC39HqLyjWDarjtT1zdp7dc');
SELECT status FROM apikey_verify(:'k1_native');
-- without grace the imported token stops at once
SELECT apikey_rotate(:'k4') IS NOT NULL AS rotated;
SELECT status FROM apikey_verify('AKIAIOSFODNN7EXAMPLE/wJalrXUtnFEMI');
RESET ROLE;

-- a leak report takes an imported token too
SELECT apikey_import('leaky legacy', role => 'regress_im_svc', token => 'legacy-token-that-leaked-0001') AS k5 \gset
SET ROLE regress_im_other;
SELECT apikey_report_leak('legacy-token-that-leaked-0001', 'pastebin') AS report;
SELECT regress.try($$SELECT apikeys.apikey_report_leak('legacy-token-that-leaked-0001', 'see legacy-token-that-leaked-0001')$$);
RESET ROLE;
SELECT status FROM apikey_verify('legacy-token-that-leaked-0001');

-- the longest importable token
SELECT apikey_import('long', role => 'regress_im_svc', token => repeat('L', 512)) AS k6 \gset
SELECT status FROM apikey_verify(repeat('L', 512));
-- deleting a key removes its import record
SELECT apikey_delete(:'k6');
SELECT status FROM apikey_verify(repeat('L', 512));
SELECT count(*) AS import_records FROM apikeys_internal.imported_keys WHERE key_id = :'k6';

SELECT count(apikey_delete(key_id)) AS deleted FROM keys WHERE role = 'regress_im_svc'::regrole;
DROP ROLE regress_im_user, regress_im_svc, regress_im_other;
