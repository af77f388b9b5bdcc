-- limits: user-supplied fields are bounded (54000 names the limit, 22023 a
-- malformed value), so neither the catalog nor the append-only audit log can
-- be grown without bound by one call.
\set VERBOSITY terse
SET search_path = apikeys, public;
CREATE ROLE regress_lim NOLOGIN;
SET ROLE regress_lim;

-- name: at most 200 characters (not bytes), never blank
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L)', repeat('n', 201)));
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L)', repeat('é', 201)));
SELECT key_id AS k FROM apikey_create(repeat('é', 200)) \gset
SELECT length(name) FROM keys WHERE key_id = :'k';
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L)', E'\t\n \r\f\x0b'));
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L)', U&'\00A0\2003\3000'));
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L)', U&'\200B\FEFF'));
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, name => %L)', :'k', E'\n\n'), :'k');
-- invisible characters are blank too: fillers, format characters, tags
SELECT c, regress.try(format('SELECT * FROM apikeys.apikey_create(%L)', chr(c)))
  FROM unnest(ARRAY[x'200E', x'200F', x'3164', x'2800', x'115F', x'1160', x'FFA0', x'00AD',
                    x'034F', x'061C', x'2066', x'2061', x'180B', x'FE0F', x'E0020']::int[]) AS c;
-- control and bidirectional characters are refused anywhere in a name
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L)', E'billing\nadmin key'));
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L)', 'billing ' || chr(x'202E'::int) || 'yek'));
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L)', E'tab\there'));
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, name => %L)', :'k', repeat('x', 1000)), :'k');

-- scopes: at most 64, each at most 128 characters of OAuth's scope-token
-- grammar; a wildcard only at the end
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L, scopes => %L)', 'x',
       (SELECT array_agg('s' || g) FROM generate_series(1, 65) g)));
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L, scopes => %L)', 'x',
       ARRAY[repeat('s', 129)]));
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, scopes => %L)', :'k',
       (SELECT array_agg('s' || g) FROM generate_series(1, 65) g)), :'k');
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', scopes => '{"read orders"}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', scopes => ARRAY[E'read\norders'])$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', scopes => '{"réad"}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', scopes => '{jobs:*:read}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', scopes => '{**}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', scopes => '{*jobs}')$$);
SELECT apikey_update(:'k', scopes => (SELECT array_agg(left('s' || g || repeat('x', 200), 128)) FROM generate_series(1, 64) g));
SELECT apikey_update(:'k', scopes => '{*, jobs:*, orders:read, a/b.c-d_e~f}');
SELECT scopes FROM keys WHERE key_id = :'k';

-- metadata: a json object of at most 8192 bytes as text
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L, metadata => %L)', 'x',
       jsonb_build_object('blob', repeat('m', 10 * 1024 * 1024))));
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, metadata => %L)', :'k',
       jsonb_build_object('blob', repeat('m', 8200))), :'k');
SELECT apikey_update(:'k', metadata => jsonb_build_object('blob', repeat('m', 8000)));

-- restrictions: at most 64 networks, 64 origins of 255 characters
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L, allowed_ips => %L)', 'x',
       (SELECT array_agg(format('10.0.%s.0/24', g)::cidr) FROM generate_series(1, 65) g)));
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', allowed_ips => '{10.0.0.0/8, NULL}')$$);
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L, allowed_origins => %L)', 'x',
       (SELECT array_agg(format('https://a%s.example.com', g)) FROM generate_series(1, 65) g)));
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L, allowed_origins => %L)', 'x',
       ARRAY['https://' || repeat('a', 250) || '.com']));
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', allowed_origins => '{https://example.com/path}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', allowed_origins => '{example.com}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', allowed_origins => '{https://a.*.example.com}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', allowed_origins => '{NULL}')$$);
-- only http and https; a wildcard needs a domain of two labels or more
SELECT o, regress.try(format('SELECT * FROM apikeys.apikey_create(%L, allowed_origins => %L)', 'x', ARRAY[o]))
  FROM unnest(ARRAY['https://*.com', 'javascript://x', 'file://x', 'ftp://example.com',
                    'https://*', 'https://*.example.com/']) AS o;
-- an empty allow-list at creation is refused, not taken for "anywhere"
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', allowed_ips => '{}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', allowed_origins => '{}')$$);

-- whatever the input, an audit row stays bounded: every field at its limit,
-- changed to other values at their limits, a few times over
SET regress.k = :'k';
DO $$
DECLARE
    k text := current_setting('regress.k');
BEGIN
    FOR i IN 1 .. 4 LOOP
        PERFORM apikeys.apikey_update(k,
            name => repeat(chr(1000 + i), 200),
            scopes => (SELECT array_agg(left(i || 's' || g || repeat('x', 200), 128)) FROM generate_series(1, 64) g),
            metadata => jsonb_build_object('b', repeat(chr(48 + i), 8180)),
            allowed_ips => (SELECT array_agg(format('2001:db8:%s:%s::/64', i, g)::cidr) FROM generate_series(1, 64) g),
            allowed_origins => (SELECT array_agg(format('https://%s-%s.%s.example.com', i, g, repeat('o', 200))) FROM generate_series(1, 64) g));
    END LOOP;
END
$$;
RESET regress.k;
SELECT count(*) AS updates, max(octet_length(changes::text)) < 80 * 1024 AS bounded,
       max(octet_length(changes::text)) > 60 * 1024 AS near_the_bound
  FROM audit_log WHERE key_id = :'k' AND action = 'update';
RESET ROLE;

-- the limits in force (the README documents the same figures)
SELECT what, apikeys_internal._limit(what) FROM unnest(ARRAY['name', 'scopes', 'scope',
       'metadata', 'allowed_ips', 'allowed_origins', 'origin']) AS what;

SELECT apikey_delete(key_id) FROM keys WHERE created_by = 'regress_lim'::regrole;
DROP ROLE regress_lim;
