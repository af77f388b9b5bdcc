-- reveal: revealable keys without a key-encryption key (this cluster has
-- none; test/t/013_reveal.pl covers them with one), and the listing.
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

CREATE ROLE regress_rv_svc NOLOGIN;
CREATE ROLE regress_rv_user NOLOGIN IN ROLE regress_rv_svc;
SHOW apikeys.kek_file;
-- a non-superuser cannot even read the setting (it names a file)
SET ROLE regress_rv_user;
-- (the SQLSTATE: PostgreSQL's message differs between majors)
SELECT split_part(regress.try('SHOW apikeys.kek_file'), ':', 1) AS sqlstate;
SELECT regress.try($$SET apikeys.kek_file = '/tmp/mine'$$);

-- no KEK: a revealable key cannot be created; nothing is left behind
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('sealed', role => 'regress_rv_svc', revealable => true)$$);
SELECT count(*) AS keys FROM keys;
-- an ordinary key is not revealable, whatever the KEK
SELECT key_id FROM apikey_create('plain', role => 'regress_rv_svc') \gset
SELECT name, revealable FROM keys;
SELECT regress.try(format('SELECT apikeys.apikey_reveal(%L)', :'key_id'), :'key_id');
SELECT regress.try(format('SELECT apikeys.apikey_reveal(%L)', 'not a key id'));
SELECT regress.try(format('SELECT apikeys.apikey_reveal(%L)', 'AAAAAAAAAAAA'));
-- the sealing functions are not the users' to call
SELECT regress.try($$SELECT apikeys_internal._seal('x')$$);
RESET ROLE;
SELECT has_function_privilege('regress_rv_user', 'apikeys_internal._unseal(text, text, bytea, bytea, int2, text)', 'EXECUTE') AS may_unseal,
       has_function_privilege('regress_rv_user', 'apikeys_internal._seal(text)', 'EXECUTE') AS may_seal,
       has_column_privilege('regress_rv_user', 'apikeys_internal.revealable_secrets', 'sealed', 'SELECT') AS may_read_sealed,
       has_column_privilege('regress_rv_user', 'apikeys_internal.revealable_secrets', 'key_id', 'SELECT') AS may_read_key_id;
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('sealed', revealable => true)$$);

SELECT apikey_delete(:'key_id');
DROP ROLE regress_rv_user, regress_rv_svc;
