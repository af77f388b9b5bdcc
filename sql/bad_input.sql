-- bad_input: apikey_verify never raises for client input, whatever it is.
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

SELECT key_id, token FROM apikey_create('target', scopes => '{s}') \gset

CREATE TEMP TABLE inputs (label text, input text);
INSERT INTO inputs VALUES
    ('null', NULL),
    ('empty', ''),
    ('space', ' '),
    ('garbage', 'hello world'),
    ('sql', $$'; DROP TABLE apikeys_internal.key_catalog; --$$),
    ('100 kB', repeat('a', 100000)),
    ('100 kB of underscores', repeat('_', 100000)),
    ('1 MB', repeat('ak_', 350000)),
    ('multibyte', 'ak_ééééééééééé_' || repeat('€', 38)),
    ('emoji', repeat('🔑', 60)),
    ('control chars', E'ak\t' || repeat(E'\x01', 60)),
    ('newline', :'token' || E'\n'),
    ('leading space', ' ' || :'token'),
    ('trailing space', :'token' || ' '),
    ('truncated', left(:'token', length(:'token') - 1)),
    ('extended', :'token' || 'A'),
    ('upper-cased', upper(:'token')),
    ('lower-cased', lower(:'token')),
    ('no prefix', substr(:'token', 3)),
    ('prefix only', 'ak_'),
    ('underscores', repeat('_', 53)),
    ('key id only', :'key_id'),
    ('bearer', 'Bearer ' || :'token'),
    ('long prefix', repeat('a', 21) || substr(:'token', 3)),
    ('swapped halves', substr(:'token', 17) || substr(:'token', 1, 16));

SELECT label, valid, status, key_id, role, scopes, expires_at, metadata, name
  FROM inputs, LATERAL apikey_verify(input) ORDER BY label;
SELECT label, status FROM inputs, LATERAL apikey_verify(input, 's') ORDER BY label;
SELECT status FROM apikey_verify(:'token', NULL);
SELECT status FROM apikey_verify(:'token', '');
SELECT status FROM apikey_verify(NULL::apikey, 's');

-- random printable strings of token length and shape
SELECT count(*) FILTER (WHERE (apikey_verify(s)).status = 'invalid') AS invalid, count(*) AS tried
  FROM (SELECT 'ak_' || substr(md5(g::text), 1, 12) || '_' ||
               substr(md5(g::text || 'x') || md5(g::text || 'y'), 1, 38) AS s
          FROM generate_series(1, 2000) g) r;

-- the catalog is untouched
SELECT count(*) AS keys_left FROM keys WHERE key_id = :'key_id';
SELECT (apikey_verify(:'token', 's')).status;
SELECT apikey_delete(:'key_id');

-- clean up
SELECT apikeys.apikey_delete(key_id) FROM apikeys.keys \g /dev/null
SELECT count(*) AS keys_left FROM apikeys.keys;
