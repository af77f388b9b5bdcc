-- matching_edges: the edges of every matcher.  Scopes (exact, a prefix that
-- is not a wildcard, *, a:* against a, a:, a:b:c, case, empty), in C
-- (apikey_verify, apikey_has_scope) and in SQL (an approver narrowing a
-- request); route scopes (several matching rows, method *, GET covering
-- HEAD, the percent-decoded path); CIDR allowlists (/0, /32, /128,
-- IPv4-mapped IPv6); token checksums off by multiples of 2^32.
SET search_path = apikeys, public;
CREATE ROLE regress_me_api NOLOGIN;
CREATE TABLE regress.me_keys (label text PRIMARY KEY, key_id text, token text);
GRANT SELECT ON regress.me_keys TO PUBLIC;
INSERT INTO regress.me_keys SELECT 'exact', * FROM apikey_create('me exact', role => 'regress_me_api', scopes => '{orders}');
INSERT INTO regress.me_keys SELECT 'read', * FROM apikey_create('me read', role => 'regress_me_api', scopes => '{orders:read}');
INSERT INTO regress.me_keys SELECT 'star', * FROM apikey_create('me star', role => 'regress_me_api', scopes => '{*}');
INSERT INTO regress.me_keys SELECT 'a_star', * FROM apikey_create('me a:*', role => 'regress_me_api', scopes => '{a:*}');
INSERT INTO regress.me_keys SELECT 'a_colon', * FROM apikey_create('me a:', role => 'regress_me_api', scopes => '{a:}');
INSERT INTO regress.me_keys SELECT 'abc', * FROM apikey_create('me a:b:c', role => 'regress_me_api', scopes => '{a:b:c, x}');
INSERT INTO regress.me_keys SELECT 'none', * FROM apikey_create('me none', role => 'regress_me_api');

-- Scopes asked of apikey_verify, key by key.
SELECT k.label, w.scope, (apikey_verify(k.token, w.scope)).status
  FROM regress.me_keys k
 CROSS JOIN (VALUES ('orders'), ('orders:write'), ('order'), ('ordersx'), ('Orders'),
                    ('orders:read'), ('orders:rea'), ('orders:read:x'),
                    ('a'), ('a:'), ('a:b'), ('a:b:c'), ('a:b:c:d'), ('A:b'), ('ab'), ('x'), (''))
         AS w(scope)
 ORDER BY k.label, w.scope COLLATE "C";
-- no scope asked: every key is valid
SELECT label, (apikey_verify(token)).status FROM regress.me_keys ORDER BY label;
-- an empty scope is not a scope a key can hold
SELECT regress.try($$SELECT apikey_create('bad', role => 'regress_me_api', scopes => '{""}')$$);
-- apikey_has_scope, in a login: the same matcher
BEGIN;
SELECT status FROM apikey_login((SELECT token FROM regress.me_keys WHERE label = 'a_star'));
SELECT apikey_has_scope('a') AS a, apikey_has_scope('a:') AS a_colon, apikey_has_scope('a:b:c') AS abc,
       apikey_has_scope('A:x') AS upper, apikey_has_scope('b:a') AS other;
ROLLBACK;
BEGIN;
SELECT status FROM apikey_login((SELECT token FROM regress.me_keys WHERE label = 'exact'));
SELECT apikey_has_scope('orders') AS orders, apikey_has_scope('orders:write') AS orders_write,
       apikey_has_scope('order') AS order_prefix;
ROLLBACK;

-- The SQL matcher: an approver may narrow requested scopes, never widen them.
SELECT k.held, k.want, apikeys_internal._scopes_within(k.want, k.held) AS first_not_held
  FROM (VALUES ('{orders}'::text[], '{orders:write}'::text[]), ('{orders}', '{orders}'),
               ('{orders:read}', '{orders:rea}'), ('{a:*}', '{a}'), ('{a:*}', '{a:}'),
               ('{a:*}', '{a:b:c}'), ('{a:*}', '{a:*}'), ('{a:}', '{a:b}'), ('{*}', '{anything}'),
               ('{a:b:c}', '{a:b}'), ('{A:*}', '{a:b}'), ('{x, a:*}', '{a:b, x, y}')) AS k(held, want)
 ORDER BY 1, 2;

-- Route scopes.  All matching rows are required, in any order; * covers
-- every method; GET covers HEAD; patterns match the decoded path.
INSERT INTO apikeys.route_scopes (method, path_pattern, scope) VALUES
    ('GET', '/me/two', 'me:one'), ('GET', '/me/two', 'me:two'),
    ('*', '/me/any', 'me:any'),
    ('GET', '/me/get', 'me:get'),
    ('GET', '/me/p/%', 'me:p'),
    ('GET', '/me/l/%', 'me:l'), ('GET', '/me/l/x', 'me:lx');
INSERT INTO regress.me_keys SELECT 'one', * FROM apikey_create('me one', role => 'regress_me_api', scopes => '{me:one}');
INSERT INTO regress.me_keys SELECT 'two', * FROM apikey_create('me two', role => 'regress_me_api', scopes => '{me:two}');
INSERT INTO regress.me_keys SELECT 'both', * FROM apikey_create('me both', role => 'regress_me_api', scopes => '{me:one, me:two}');
INSERT INTO regress.me_keys SELECT 'me_all', * FROM apikey_create('me all', role => 'regress_me_api',
    scopes => '{me:any, me:get, me:p, me:l}');
INSERT INTO regress.me_keys SELECT 'me_star', * FROM apikey_create('me:*', role => 'regress_me_api', scopes => '{me:*}');
-- one request as PostgREST makes it; the outcome and the key logged in
CREATE FUNCTION regress.me_req(label text, method text, path text) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    outcome text;
BEGIN
    BEGIN
        PERFORM set_config('role', 'regress_me_api', true),
                set_config('request.method', method, true),
                set_config('request.path', path, true),
                set_config('request.headers', json_build_object('x-api-key',
                    (SELECT token FROM regress.me_keys k WHERE k.label = me_req.label))::text, true),
                set_config('request.cookies', '{}', true);
        outcome := split_part(regress.try('SELECT apikeys.pre_request()'), ' DETAIL: ', 1);
        IF outcome LIKE 'PGRST: %' THEN
            outcome := substring(outcome FROM '"code":"([^"]*)"') || ': '
                       || substring(outcome FROM '"details":"([^"]*)"');
        END IF;
        outcome := outcome || CASE WHEN outcome = 'ok'
                                   THEN ' key=' || coalesce((SELECT k.label FROM regress.me_keys k
                                                              WHERE k.key_id = apikeys.apikey_current()), 'none')
                                   ELSE '' END;
        RAISE EXCEPTION USING ERRCODE = 'ME000';
    EXCEPTION WHEN SQLSTATE 'ME000' THEN
        NULL;
    END;
    RETURN outcome;
END $$;
SELECT r.label, r.method, r.path, regress.me_req(r.label, r.method, r.path) AS outcome
  FROM (VALUES (1, 'one', 'GET', '/me/two'), (2, 'two', 'GET', '/me/two'), (3, 'both', 'GET', '/me/two'),
               (4, 'me_star', 'GET', '/me/two'),
               (5, 'none', 'POST', '/me/any'), (6, 'me_all', 'DELETE', '/me/any'), (7, 'me_all', 'PATCH', '/me/any'),
               (8, 'none', 'HEAD', '/me/get'), (9, 'me_all', 'HEAD', '/me/get'), (10, 'none', 'POST', '/me/get'),
               (11, 'none', 'GET', '/me/p/x'), (12, 'none', 'GET', '/me/%70/x'), (13, 'none', 'GET', 'me/p/x'),
               (14, 'none', 'GET', '/%6De/p/x'), (15, 'none', 'GET', '/me/p%2Fx'), (16, 'none', 'GET', '/me/p/%zz'),
               (17, 'none', 'GET', '/me/p/%4'), (18, 'none', 'GET', '/me/p/%00'), (19, 'none', 'GET', '/me/p/%C3%28'),
               (20, 'none', 'GET', '/ME/p/x'), (21, 'me_all', 'GET', '/me/p/%C3%A9'), (22, 'none', 'GET', '/me/p'),
               (23, 'me_all', 'GET', '/me/l/x'), (24, 'me_star', 'GET', '/me/l/x'), (25, 'me_all', 'GET', '/me/l/y'),
               (26, 'none', 'GET', '/me/two/'))
       AS r(n, label, method, path)
 ORDER BY r.n;
DELETE FROM apikeys.route_scopes WHERE path_pattern LIKE '/me/%';

-- CIDR allowlists: /0, /32, /128, and clients written as IPv4-mapped IPv6.
INSERT INTO regress.me_keys SELECT 'v4_any', * FROM apikey_create('me v4 /0', role => 'regress_me_api', allowed_ips => '{0.0.0.0/0}');
INSERT INTO regress.me_keys SELECT 'v4_one', * FROM apikey_create('me v4 /32', role => 'regress_me_api', allowed_ips => '{192.0.2.7/32}');
INSERT INTO regress.me_keys SELECT 'v6_one', * FROM apikey_create('me v6 /128', role => 'regress_me_api', allowed_ips => '{2001:db8::1/128}');
INSERT INTO regress.me_keys SELECT 'v6_any', * FROM apikey_create('me v6 /0', role => 'regress_me_api', allowed_ips => '{::/0}');
INSERT INTO regress.me_keys SELECT 'v4_net', * FROM apikey_create('me v4 /24', role => 'regress_me_api', allowed_ips => '{198.51.100.0/24}');
SELECT k.label, c.ip, (apikey_verify(k.token, NULL, c.ip::inet)).status
  FROM regress.me_keys k
 CROSS JOIN (VALUES ('192.0.2.7'), ('192.0.2.8'), ('::ffff:192.0.2.7'), ('::ffff:192.0.2.8'),
                    ('2001:db8::1'), ('2001:db8::2'), ('::1'), ('198.51.100.255'), ('198.51.101.0'),
                    ('::ffff:198.51.100.9'), ('::ffff:c633:6409'), ('::192.0.2.7')) AS c(ip)
 WHERE k.label IN ('v4_any', 'v4_one', 'v6_one', 'v6_any', 'v4_net')
 ORDER BY k.label, c.ip;
-- no client address given: a restricted key is refused, an open one is not
SELECT label, (apikey_verify(token, NULL, NULL)).status FROM regress.me_keys
 WHERE label IN ('v4_any', 'v6_any', 'none') ORDER BY label;

-- Token checksums: the six base62 digits encode the CRC-32; the same digits
-- off by a multiple of 2^32 (which six digits can hold up to 13 times) are
-- not the CRC, nor are values off by one.
SELECT token AS tok FROM regress.me_keys WHERE label = 'none' \gset
CREATE TEMP TABLE me_sums AS
SELECT d.what, left(:'tok', -6) || regress.base62(regress.crc32(left(:'tok', -6)) + d.delta) AS t
  FROM (VALUES ('the crc', 0::bigint), ('+ 2^32', 4294967296), ('+ 2 * 2^32', 8589934592),
               ('+ 12 * 2^32', 51539607552), ('+ 1', 1), ('- 1', -1)) AS d(what, delta);
SELECT what, right(t, 6) = right(:'tok', 6) AS is_the_tokens,
       split_part(regress.try(format('SELECT %L::apikeys.apikey', t)), ':', 1) AS as_apikey,
       (apikey_verify(t)).status AS verify, apikey_is_valid(t) AS is_valid
  FROM me_sums ORDER BY what;
-- A checksum digit 0 replaced by a byte that is no base62 digit (a parser
-- that reads such a byte as 0 would accept it): a token whose checksum has
-- a 0 digit, found among generated ones.
DO $$
DECLARE
    head text;
    sum text;
    bad text[];
BEGIN
    FOR i IN 1..500 LOOP
        head := 'me_' || substr(md5(i::text), 1, 12) || '_' || substr(md5('s' || i), 1, 32);
        sum := regress.base62(regress.crc32(head));
        EXIT WHEN strpos(sum, '0') > 0;
    END LOOP;
    SELECT array_agg(c.b || ' ' || split_part(regress.try(format('SELECT %L::apikeys.apikey',
                     head || overlay(sum PLACING c.b FROM strpos(sum, '0') FOR 1))), ':', 1)
                     || ' ' || (apikeys.apikey_verify(head || overlay(sum PLACING c.b FROM strpos(sum, '0') FOR 1))).status
                     ORDER BY c.b)
      INTO bad
      FROM (VALUES ('!'), ('-'), ('/'), (':'), ('@'), ('['), ('`'), ('{'), ('~'), ('_')) AS c(b);
    RAISE NOTICE 'the right checksum: %', split_part(regress.try(format('SELECT %L::apikeys.apikey', head || sum)), ':', 1);
    RAISE NOTICE 'a 0 digit replaced: %', bad;
END $$;
