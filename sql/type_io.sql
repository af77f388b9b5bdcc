-- type_io: the apikey type's input, output, binary I/O and accessors.
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

SELECT key_id, token FROM apikey_create('type io', prefix => 'ak_test') \gset

-- token geometry: prefix, 12-char key id, 32-char secret + 6-char checksum
SELECT :'token' ~ '^ak_test_[0-9A-Za-z]{12}_[0-9A-Za-z]{38}$' AS well_formed,
       length(:'token') AS len,
       split_part(:'token', '_', 3) = :'key_id' AS key_id_in_token;

-- output redacts the secret: prefix and key id only
SELECT :'token'::apikey::text = 'ak_test_' || :'key_id' || '_********' AS redacted;
SELECT position(substr(:'token', length(:'token') - 37, 38) IN :'token'::apikey::text) AS secret_in_output;
SELECT apikey_key_id(:'token') = :'key_id' AS key_id_ok, apikey_prefix(:'token');

-- the redacted form is not a token
SELECT regress.try(format('SELECT %L::apikeys.apikey', :'token'::apikey::text));

-- one wrong character anywhere breaks the checksum
SELECT count(*) FILTER (WHERE regress.try(format('SELECT %L::apikeys.apikey',
           overlay(:'token' PLACING (CASE WHEN substr(:'token', i, 1) = 'A' THEN 'B' ELSE 'A' END) FROM i FOR 1)))
         LIKE '22P02:%') AS rejected,
       count(*) AS positions
  FROM generate_series(1, length(:'token')) AS i
 WHERE substr(:'token', i, 1) <> '_';

-- the error never contains the input
SELECT regress.try($$SELECT 'ak_sEcReTvAlUe_notatoken'::apikeys.apikey$$);
SELECT regress.try($$SELECT ''::apikeys.apikey$$);
SELECT regress.try(format('SELECT %L::apikeys.apikey', repeat('z', 200)));
SELECT regress.try(format('SELECT %L::apikeys.apikey', upper(:'token')));

-- prefixes: [a-z][a-z0-9_]{0,19}
SELECT p, regress.try(format('SELECT * FROM apikeys.apikey_create(%L, prefix => %L)', 'p', p))
  FROM unnest(ARRAY['a', 'dbm', 'ak_live', 'a2345678901234567890',
                    'a23456789012345678901', 'Ak', '1ak', '_ak', 'ak-live', '']) AS p;

-- binary I/O: send is the redacted text; recv validates like in
SELECT apikeys.apikey_send(:'token'::apikey) = convert_to(:'token'::apikey::text, 'UTF8') AS send_redacted;
-- (the files go in the data directory)
SELECT current_setting('data_directory') || '/apikeys_type_io.bin' AS binfile,
       current_setting('data_directory') || '/apikeys_type_io_tok.bin' AS tokfile \gset
CREATE TABLE binio (k apikeys.apikey);
INSERT INTO binio VALUES (:'token');
COPY binio TO :'binfile' WITH (FORMAT binary);
SELECT regress.try(format('COPY binio FROM %L WITH (FORMAT binary)', :'binfile'));
-- a binary COPY of a real token is accepted and verifies
CREATE TABLE tok (t text);
INSERT INTO tok VALUES (:'token');
COPY tok TO :'tokfile' WITH (FORMAT binary);
CREATE TABLE binio2 (k apikeys.apikey);
BEGIN;
COPY binio2 FROM :'tokfile' WITH (FORMAT binary);
SELECT k::text = 'ak_test_' || :'key_id' || '_********' AS redacted, (apikey_verify(k)).status FROM binio2;
COMMIT;

-- a stored apikey value is no credential: it verifies only in the
-- transaction that parsed the token, not in a later one of this session,
-- nor in any other session
CREATE TABLE stored (k apikeys.apikey);
BEGIN;
INSERT INTO stored VALUES (:'token');
SELECT (apikey_verify(k)).status AS same_transaction FROM stored;
COMMIT;
SELECT (apikey_verify(k)).status AS later_transaction FROM stored;
\c
SET search_path = apikeys, apikeys_internal, public;
SELECT (apikey_verify(k)).status AS other_session FROM stored;
-- a token cast in the statement itself always works
SELECT (apikey_verify(t::apikeys.apikey)).status AS parsed_here FROM tok;
DROP TABLE binio, binio2, tok, stored;

-- text overload wins for untyped literals
SELECT (apikey_verify('not a token')).status;

-- clean up
SELECT apikeys.apikey_delete(key_id) FROM apikeys.keys \g /dev/null
SELECT count(*) AS keys_left FROM apikeys.keys;
