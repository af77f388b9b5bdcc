-- pepper: stored hashes under a server pepper (src/pepper.c).  With
-- apikeys.pepper_file set, every path that stores the hash of a native
-- secret stores HMAC-SHA256(pepper, SHA-256(secret)) and the pepper's id;
-- old keys keep their scheme and verify; a rotation's grace secret keeps
-- the scheme it had; a key whose pepper the server lacks fails with an
-- error naming the pepper, never a silent 'invalid'; the pepper itself is in
-- no setting's value.  (test/t/033_pepper.pl: rotation of the file in
-- place across reloads, the server log, dump and restore.)
\set VERBOSITY terse
SET search_path = apikeys, public;
\set p1 '42362b0883266726079ad6692b1eb346627fd43a416e7cd6436f08b8361f7c81'
\set p2 '58d15b5d8487dec2a9d5b1daf023e0fceb513103eb108677f86d6350cdf0a4cd'
SELECT current_setting('data_directory') || '/regress_pepper_open' AS file_open \gset
-- a pepper's public id: the first 8 bytes of HMAC-SHA256(pepper, 'apikeys pepper id')
SELECT encode(substr(hmac('apikeys pepper id', decode(:'p1', 'hex'), 'sha256'), 1, 8), 'hex') AS id1,
       encode(substr(hmac('apikeys pepper id', decode(:'p2', 'hex'), 'sha256'), 1, 8), 'hex') AS id2 \gset
SELECT :'id1' AS id1, :'id2' AS id2;
-- the secret of a token, and what a pepper makes of it
CREATE FUNCTION regress.secret(token text) RETURNS text LANGUAGE sql
    AS $$ SELECT substr(token, length(token) - 37, 32) $$;
CREATE FUNCTION regress.peppered(token text, pepper text) RETURNS bytea LANGUAGE sql
    AS $$ SELECT hmac(sha256(convert_to(regress.secret(token), 'UTF8')), decode(pepper, 'hex'), 'sha256') $$;

-- pepper_status() counts every key of the database, other suites' SHA-256
-- keys too: pepper_usage shows the peppers by name (P1, P2), and the SHA-256
-- keys (pepper none) less those there were at the start (their grace
-- periods, which could end during the test, are left out).
SELECT coalesce(sum(keys), 0) AS others FROM pepper_status() \gset
CREATE FUNCTION regress.pepper_usage(others int8, id1 text, id2 text)
RETURNS TABLE (pepper text, state text, keys int8, grace_keys int8) LANGUAGE sql AS $$
    SELECT CASE s.pepper_id WHEN id1 THEN 'P1' WHEN id2 THEN 'P2' ELSE s.pepper_id END, s.state,
           CASE WHEN s.pepper_id IS NULL THEN s.keys - others ELSE s.keys END,
           CASE WHEN s.pepper_id IS NOT NULL THEN s.grace_keys END
      FROM apikeys.pepper_status() s $$;

CREATE ROLE regress_pp_svc NOLOGIN;
CREATE ROLE regress_pp_user NOLOGIN IN ROLE regress_pp_svc;
CREATE TABLE pp_tokens (label text PRIMARY KEY, key_id text, token text);
GRANT ALL ON pp_tokens TO regress_pp_user;

-- No pepper: SHA-256, as before.  The setting names a file; non-superusers
-- cannot even read it, nor the pepper ids.
SHOW apikeys.pepper_file;
SET ROLE regress_pp_user;
-- (the SQLSTATE: PostgreSQL's message differs between majors)
SELECT split_part(regress.try('SHOW apikeys.pepper_file'), ':', 1) AS sqlstate;
SELECT regress.try($$SET apikeys.pepper_file = '/tmp/mine'$$);
SELECT regress.try('SELECT * FROM apikeys.pepper_status()');
RESET ROLE;
-- and there is no setting that could hold a pepper itself
SELECT regress.try($$SET apikeys.pepper = 'x'$$);
INSERT INTO pp_tokens SELECT 'plain', * FROM apikey_create('plain', role => 'regress_pp_svc');
INSERT INTO pp_tokens SELECT 'plain2', * FROM apikey_create('plain2', role => 'regress_pp_svc');
SELECT name, hash_scheme FROM keys WHERE role = 'regress_pp_svc'::regrole ORDER BY name;
SELECT * FROM regress.pepper_usage(:others, :'id1', :'id2');

-- The pepper files, written by the server into its data directory with
-- mode 0600: P1; P2 then P1 (a rotation, with a comment); P2 alone; one
-- that is not a pepper file.  (COPY TO a file writes mode 0644: one more.)
COPY (SELECT :'p1') TO PROGRAM 'umask 077 && rm -f regress_pepper_a && cat > regress_pepper_a';
COPY (VALUES ('# P2 is current since the rotation; P1 stays until no key needs it'), (:'p2'), (''), (:'p1'))
  TO PROGRAM 'umask 077 && rm -f regress_pepper_b && cat > regress_pepper_b';
COPY (SELECT :'p2') TO PROGRAM 'umask 077 && rm -f regress_pepper_c && cat > regress_pepper_c';
COPY (SELECT 'this is not a pepper') TO PROGRAM 'umask 077 && rm -f regress_pepper_bad && cat > regress_pepper_bad';
COPY (SELECT :'p2') TO :'file_open';

ALTER SYSTEM SET apikeys.pepper_file = 'regress_pepper_a';
SELECT pg_reload_conf();
-- (a session takes in a reload between statements: wait for it)
\set ECHO none
\o /dev/null
SELECT $$SELECT pg_sleep(0.05) WHERE current_setting('apikeys.pepper_file') <> 'regress_pepper_a'$$ FROM generate_series(1, 400) \gexec
\o
\set ECHO all

-- The setting shows a path; no setting, nor the configuration files as the
-- server reads them, holds a pepper.
SHOW apikeys.pepper_file;
SELECT name, setting, context FROM pg_settings WHERE name LIKE 'apikeys.pepper%';
SELECT count(*) AS settings_with_pepper FROM pg_settings
 WHERE concat(setting, reset_val, boot_val) ILIKE '%' || :'p1' || '%';
SELECT count(*) AS file_settings_with_pepper FROM pg_file_settings
 WHERE setting ILIKE '%' || :'p1' || '%';
SELECT * FROM regress.pepper_usage(:others, :'id1', :'id2');

-- Every path that stores the hash of a native secret peppers it: the fast
-- create, the full one (restrictions), rotation, a claimed request, a
-- custom key imported in apikeys' format.
INSERT INTO pp_tokens SELECT 'fast', * FROM apikey_create('fast', role => 'regress_pp_svc');
INSERT INTO pp_tokens SELECT 'full', * FROM apikey_create('full', role => 'regress_pp_svc',
                                                          allowed_ips => '{10.0.0.0/8}');
UPDATE pp_tokens SET label = 'rotated', token = apikey_rotate(key_id) WHERE label = 'plain2';
SET ROLE regress_pp_user;
SELECT apikey_request('requested', role => 'regress_pp_svc') AS rq \gset
RESET ROLE;
SELECT apikey_approve(:'rq');
SET ROLE regress_pp_user;
INSERT INTO pp_tokens VALUES ('claimed', :'rq', apikey_claim(:'rq'));
RESET ROLE;
SELECT key_id AS custom_id, token AS custom_token FROM apikey_create('throwaway', role => 'regress_pp_svc') \gset
SELECT apikey_delete(:'custom_id');
SELECT apikey_import('custom', role => 'regress_pp_svc', token => :'custom_token') = :'custom_id' AS kept_key_id;
INSERT INTO pp_tokens VALUES ('custom', :'custom_id', :'custom_token');
-- each hash is HMAC-SHA256(P1, SHA-256(secret)), recorded as such; the
-- plain key keeps SHA-256
SELECT t.label, c.hash_version, c.pepper_id = :'id1' AS pepper_is_p1,
       c.hash = regress.peppered(t.token, :'p1') AS hash_is_hmac,
       c.hash = sha256(convert_to(regress.secret(t.token), 'UTF8')) AS hash_is_sha256,
       k.hash_scheme = 'hmac-sha256:' || :'id1' AS listed_p1, k.hash_scheme
  FROM pp_tokens t JOIN apikeys_internal.key_catalog c USING (key_id) JOIN keys k USING (key_id)
 ORDER BY t.label;
-- the key's users see the scheme too (not the hash)
SET ROLE regress_pp_user;
SELECT name, hash_scheme = 'hmac-sha256:' || :'id1' AS listed_p1 FROM keys WHERE name IN ('plain', 'fast') ORDER BY name;
SELECT regress.try('SELECT hash FROM apikeys_internal.key_catalog');
RESET ROLE;
-- old and new keys verify side by side; a wrong secret does not
SELECT label, (apikey_verify(token, client_ip => '10.1.2.3')).status,
       (apikey_verify(token::apikey, client_ip => '10.1.2.3')).status AS as_apikey,
       (apikey_verify(regress.forge(token, repeat('x', 32)), client_ip => '10.1.2.3')).status AS forged
  FROM pp_tokens ORDER BY label;
-- the audit rows show neither the scheme nor the pepper id (hidden like the hashes)
SELECT count(*) AS audit_rows_with_pepper FROM apikeys_internal.audit_log
 WHERE changes ?| ARRAY['pepper_id', 'prev_pepper_id', 'hash_version']
    OR changes::text LIKE '%' || :'id1' || '%';

-- A rotation with grace keeps the old secret under the scheme it had.
INSERT INTO pp_tokens SELECT 'plain_new', key_id, apikey_rotate(key_id, grace => '1 hour')
  FROM pp_tokens WHERE label = 'plain';
SELECT c.hash_version, c.pepper_id = :'id1' AS pepper_is_p1, c.prev_hash_version, c.prev_pepper_id,
       c.prev_hash = sha256(convert_to(regress.secret(t.token), 'UTF8')) AS prev_is_old_sha256
  FROM pp_tokens t JOIN apikeys_internal.key_catalog c USING (key_id) WHERE t.label = 'plain';
SELECT label, (apikey_verify(token)).status FROM pp_tokens WHERE label IN ('plain', 'plain_new') ORDER BY label;

-- Rotation of the pepper: P2 first, P1 after it.  New hashes use P2, keys
-- under P1 verify; a key rotated with grace keeps its P1 secret for it.
ALTER SYSTEM SET apikeys.pepper_file = 'regress_pepper_b';
SELECT pg_reload_conf();
\set ECHO none
\o /dev/null
SELECT $$SELECT pg_sleep(0.05) WHERE current_setting('apikeys.pepper_file') <> 'regress_pepper_b'$$ FROM generate_series(1, 400) \gexec
\o
\set ECHO all
INSERT INTO pp_tokens SELECT 'p2', * FROM apikey_create('p2', role => 'regress_pp_svc');
INSERT INTO pp_tokens SELECT 'fast_new', key_id, apikey_rotate(key_id, grace => '1 hour') FROM pp_tokens WHERE label = 'fast';
SELECT t.label, c.hash_version, c.pepper_id = :'id2' AS pepper_is_p2, c.hash = regress.peppered(t.token, :'p2') AS hash_is_hmac_p2,
       c.prev_hash_version, c.prev_pepper_id = :'id1' AS prev_pepper_is_p1
  FROM pp_tokens t JOIN apikeys_internal.key_catalog c USING (key_id) WHERE t.label IN ('p2', 'fast_new') ORDER BY t.label;
SELECT label, (apikey_verify(token, client_ip => '10.1.2.3')).status FROM pp_tokens ORDER BY label;
SELECT * FROM regress.pepper_usage(:others, :'id1', :'id2');
-- a leak report checks the secret under the key's pepper too
SELECT apikey_report_leak(token, 'regress') FROM pp_tokens WHERE label = 'claimed';

-- P1 removed: keys that still need it fail with an error that names the
-- pepper and the setting (and how to fix it), never with 'invalid': a key
-- under P1, the old secret of a grace period under P1, the new secret of a
-- key rotated under P1.  Keys under P2 verify, and so does a grace period's
-- old SHA-256 secret; a revoked key needs no pepper (it is merely invalid).
ALTER SYSTEM SET apikeys.pepper_file = 'regress_pepper_c';
SELECT pg_reload_conf();
\set ECHO none
\o /dev/null
SELECT $$SELECT pg_sleep(0.05) WHERE current_setting('apikeys.pepper_file') <> 'regress_pepper_c'$$ FROM generate_series(1, 400) \gexec
\o
\set ECHO all
SELECT key_id AS full_id, token AS full_token FROM pp_tokens WHERE label = 'full' \gset
SELECT regress.try(format('SELECT apikeys.apikey_verify(%L)', :'full_token'), :'full_id');
SELECT regress.try(format('SELECT apikeys.apikey_is_valid(%L::apikeys.apikey)', :'full_token'), :'full_id');
SELECT regress.try(format('SELECT apikeys.apikey_login(%L)', :'full_token'), :'full_id');
SELECT key_id AS fast_id, token AS fast_token FROM pp_tokens WHERE label = 'fast' \gset
SELECT regress.try(format('SELECT apikeys.apikey_verify(%L)', :'fast_token'), :'fast_id');
SELECT key_id AS plain_id, token AS plain_new_token FROM pp_tokens WHERE label = 'plain_new' \gset
SELECT regress.try(format('SELECT apikeys.apikey_verify(%L)', :'plain_new_token'), :'plain_id');
SELECT label, (apikey_verify(token)).status FROM pp_tokens
 WHERE label IN ('plain', 'p2', 'fast_new', 'claimed') ORDER BY label;
SELECT * FROM regress.pepper_usage(:others, :'id1', :'id2');
-- a leak report of such a key cannot tell either, and says so
SELECT regress.try(format('SELECT apikeys.apikey_report_leak(%L)', :'full_token'), :'full_id');
-- rotating the key moves it to the current pepper
INSERT INTO pp_tokens SELECT 'full_new', key_id, apikey_rotate(key_id) FROM pp_tokens WHERE label = 'full';
SELECT (apikey_verify(token, client_ip => '10.1.2.3')).status, k.hash_scheme = 'hmac-sha256:' || :'id2' AS listed_p2
  FROM pp_tokens t JOIN keys k USING (key_id) WHERE t.label = 'full_new';

-- No pepper at all: new keys are SHA-256 again; peppered keys fail clearly.
ALTER SYSTEM RESET apikeys.pepper_file;
SELECT pg_reload_conf();
\set ECHO none
\o /dev/null
SELECT $$SELECT pg_sleep(0.05) WHERE current_setting('apikeys.pepper_file') <> ''$$ FROM generate_series(1, 400) \gexec
\o
\set ECHO all
SELECT key_id AS p2_id, token AS p2_token FROM pp_tokens WHERE label = 'p2' \gset
SELECT regress.try(format('SELECT apikeys.apikey_verify(%L)', :'p2_token'), :'p2_id');
INSERT INTO pp_tokens SELECT 'unpeppered', * FROM apikey_create('unpeppered', role => 'regress_pp_svc');
SELECT label, (apikey_verify(token)).status, k.hash_scheme FROM pp_tokens t JOIN keys k USING (key_id)
 WHERE label IN ('plain', 'unpeppered') ORDER BY label;

-- A file that is set but unusable: creation fails rather than fall back to
-- SHA-256, peppered keys fail with the file's problem, SHA-256 keys verify.
ALTER SYSTEM SET apikeys.pepper_file = 'regress_pepper_bad';
SELECT pg_reload_conf();
\set ECHO none
\o /dev/null
SELECT $$SELECT pg_sleep(0.05) WHERE current_setting('apikeys.pepper_file') <> 'regress_pepper_bad'$$ FROM generate_series(1, 400) \gexec
\o
\set ECHO all
SELECT count(*) AS keys_before FROM keys \gset
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('refused', role => 'regress_pp_svc')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('refused', role => 'regress_pp_svc', allowed_ips => '{10.0.0.0/8}')$$);
SELECT regress.try(format('SELECT apikeys.apikey_rotate(%L)', :'p2_id'), :'p2_id');
SELECT count(*) = :keys_before AS nothing_created FROM keys;
SELECT regress.try(format('SELECT apikeys.apikey_verify(%L)', :'p2_token'), :'p2_id');
SELECT regress.try('SELECT * FROM apikeys.pepper_status()');
SELECT label, (apikey_verify(token)).status FROM pp_tokens WHERE label = 'unpeppered';
ALTER SYSTEM SET apikeys.pepper_file = 'regress_no_such_pepper_file';
SELECT pg_reload_conf();
\set ECHO none
\o /dev/null
SELECT $$SELECT pg_sleep(0.05) WHERE current_setting('apikeys.pepper_file') <> 'regress_no_such_pepper_file'$$ FROM generate_series(1, 400) \gexec
\o
\set ECHO all
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('refused', role => 'regress_pp_svc')$$);
ALTER SYSTEM SET apikeys.pepper_file = 'regress_pepper_open';
SELECT pg_reload_conf();
\set ECHO none
\o /dev/null
SELECT $$SELECT pg_sleep(0.05) WHERE current_setting('apikeys.pepper_file') <> 'regress_pepper_open'$$ FROM generate_series(1, 400) \gexec
\o
\set ECHO all
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('refused', role => 'regress_pp_svc')$$);

ALTER SYSTEM RESET apikeys.pepper_file;
SELECT pg_reload_conf();
\set ECHO none
\o /dev/null
SELECT $$SELECT pg_sleep(0.05) WHERE current_setting('apikeys.pepper_file') <> ''$$ FROM generate_series(1, 400) \gexec
\o
\set ECHO all
SHOW apikeys.pepper_file;
SELECT count(apikey_delete(key_id)) FROM (SELECT DISTINCT key_id FROM pp_tokens) t;
DROP TABLE pp_tokens;
COPY (SELECT) TO PROGRAM 'cat > /dev/null && rm -f regress_pepper_a regress_pepper_b regress_pepper_c regress_pepper_bad regress_pepper_open';
DROP FUNCTION regress.peppered(text, text), regress.secret(text), regress.pepper_usage(int8, text, text);
DROP ROLE regress_pp_user, regress_pp_svc;
