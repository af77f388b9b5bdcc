-- restrictions: per-key allowed_ips and allowed_origins on create and
-- update, in the listing and the audit log, and as apikey_verify,
-- apikey_login and pre_request enforce them (IPv4, IPv6, IPv4-mapped IPv6,
-- wildcard origins, missing and malformed values, the client address header
-- a client cannot spoof while apikeys.client_ip_header is off).
SET search_path = apikeys, public;

CREATE ROLE regress_rst_svc NOLOGIN;
CREATE ROLE regress_rst_auth LOGIN NOINHERIT;
CREATE ROLE regress_rst_anon NOLOGIN;
GRANT regress_rst_svc, regress_rst_anon TO regress_rst_auth;

CREATE TABLE regress.rst_keys (label text PRIMARY KEY, key_id text, token text);
GRANT SELECT ON regress.rst_keys TO PUBLIC;
INSERT INTO regress.rst_keys SELECT 'ip', * FROM apikey_create('by network', role => 'regress_rst_svc',
    allowed_ips => '{10.0.0.0/8, 192.0.2.7/32, 2001:db8::/32}');
INSERT INTO regress.rst_keys SELECT 'origin', * FROM apikey_create('by origin', role => 'regress_rst_svc',
    allowed_origins => '{https://App.Example.com, https://*.example.org, http://localhost:3000}');
INSERT INTO regress.rst_keys SELECT 'both', * FROM apikey_create('by both', role => 'regress_rst_svc',
    allowed_ips => '{10.0.0.0/8}', allowed_origins => '{https://app.example.com}');
INSERT INTO regress.rst_keys SELECT 'free', * FROM apikey_create('unrestricted', role => 'regress_rst_svc');
SELECT token AS ip, key_id AS ip_id FROM regress.rst_keys WHERE label = 'ip' \gset
SELECT token AS origin, key_id AS origin_id FROM regress.rst_keys WHERE label = 'origin' \gset
SELECT token AS both FROM regress.rst_keys WHERE label = 'both' \gset

-- the listing shows them (origins lowercased); the audit log recorded them
SELECT k.name, k.allowed_ips, k.allowed_origins
  FROM keys k JOIN regress.rst_keys r USING (key_id) ORDER BY r.label;
SELECT a.changes -> 'allowed_ips' AS ips, a.changes -> 'allowed_origins' AS origins
  FROM audit_log a JOIN regress.rst_keys r USING (key_id)
 WHERE a.action = 'create' AND r.label = 'both';

-- validation at create and update
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', allowed_origins => '{https://app.example.com/path}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', allowed_origins => '{app.example.com}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', allowed_origins => '{https://app.*.com}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', allowed_origins => '{NULL}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', allowed_ips => '{NULL}')$$);
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', allowed_ips => '{10.0.0.1/8}')$$);
SELECT regress.try(format('SELECT apikeys.apikey_update(%L, allowed_ips => %L)', :'ip_id', '{{10.0.0.0/8},{10.0.0.0/8}}'));

-- apikey_verify: networks, IPv4 and IPv6; a restricted key and no address
-- is refused, not waved through
SELECT ip, (apikey_verify(:'ip', client_ip => ip::inet)).status
  FROM unnest(ARRAY['10.1.2.3', '10.255.255.255', '11.0.0.1', '192.0.2.7', '192.0.2.8',
                    '::ffff:10.1.2.3', '::ffff:11.0.0.1', '2001:db8::1', '2001:db8:ffff::1',
                    '2001:db9::1', '::1', '127.0.0.1']) ip;
SELECT (apikey_verify(:'ip')).status AS no_address;
-- origins: exact (any case), subdomain wildcards at any depth but not the
-- domain itself, scheme and port must match
SELECT o, (apikey_verify(:'origin', origin => o)).status
  FROM unnest(ARRAY['https://app.example.com', 'HTTPS://APP.EXAMPLE.COM', 'https://app.example.com:443',
                    'http://app.example.com', 'https://app.example.com.evil.net', 'https://evil.net/https://app.example.com',
                    'https://a.example.org', 'https://a.b.example.org', 'https://example.org',
                    'https://.example.org', 'https://a..example.org', 'http://a.example.org',
                    'https://a.example.org:8443', 'https://a_b.example.org', 'http://localhost:3000',
                    'http://localhost', 'null', '']) o;
SELECT (apikey_verify(:'origin')).status AS no_origin;
-- both must hold; the address is checked first
SELECT (apikey_verify(:'both', client_ip => '10.0.0.1', origin => 'https://app.example.com')).status,
       (apikey_verify(:'both', client_ip => '10.0.0.1', origin => 'https://evil.net')).status,
       (apikey_verify(:'both', client_ip => '11.0.0.1', origin => 'https://app.example.com')).status,
       (apikey_verify(:'both', origin => 'https://app.example.com')).status;

-- apikey_login: refused with 28000 and the status; a hint when the address
-- or origin was not passed at all
SET SESSION AUTHORIZATION regress_rst_auth;
SELECT regress.try(format('SELECT apikeys.apikey_login(%L)', :'ip'));
SELECT regress.try(format('SELECT apikeys.apikey_login(%L, client_ip => %L)', :'ip', '11.0.0.1'));
SELECT regress.try(format('SELECT apikeys.apikey_login(%L)', :'origin'));
SELECT regress.try(format('SELECT apikeys.apikey_login(%L, origin => %L)', :'origin', 'https://evil.net'));
BEGIN;
SELECT status FROM apikey_login(:'ip', client_ip => '2001:db8::42');
SELECT current_user, apikey_current() = :'ip_id' AS logged_in;
SELECT status FROM apikey_login(:'origin', origin => 'https://x.example.org');
SELECT current_user, apikey_current() = :'origin_id' AS logged_in;
COMMIT;
RESET SESSION AUTHORIZATION;

-- removing a restriction: '{}' means none
SELECT apikey_update(:'ip_id', allowed_ips => '{}');
SELECT allowed_ips FROM keys WHERE key_id = :'ip_id';
SELECT (apikey_verify(:'ip')).status;
SELECT a.changes -> 'allowed_ips' AS change FROM audit_log a
 WHERE a.key_id = :'ip_id' AND a.action = 'update';
SELECT apikey_update(:'ip_id', allowed_ips => '{10.0.0.0/8, 2001:db8::/32}');

-- pre_request, the way PostgREST runs it; %label% stands for a token
CREATE FUNCTION regress.rst(headers text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    k record;
    outcome text;
BEGIN
    FOR k IN SELECT label, token FROM regress.rst_keys LOOP
        headers := replace(headers, '%' || k.label || '%', k.token);
    END LOOP;
    PERFORM set_config('role', 'regress_rst_anon', true),
            set_config('request.method', 'GET', true),
            set_config('request.path', '/things', true),
            set_config('request.headers', headers, true);
    outcome := regress.try('SELECT apikeys.pre_request()');
    -- the status and the code are all a test needs here
    RETURN coalesce(substring(outcome from '"code":"([a-z_]+)"'), outcome) || ' => ' || current_user;
END $$;

-- the client's address comes only from the header apikeys.client_ip_header
-- names; while it is off (the default) an address header a client sends is
-- ignored: a key restricted by network cannot be used
SHOW apikeys.client_ip_header;
SET SESSION AUTHORIZATION regress_rst_auth;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": "10.1.2.3"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-real-ip": "10.1.2.3", "forwarded": "for=10.1.2.3"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%free%", "x-forwarded-for": "10.1.2.3"}'); ROLLBACK;
-- only the server's administrator sets it
SELECT regress.try($$SET apikeys.client_ip_header = 'x-forwarded-for'$$);
SELECT regress.try($$SELECT set_config('apikeys.client_ip_header', 'x-forwarded-for', true)$$);
RESET SESSION AUTHORIZATION;
SELECT regress.try($$SET apikeys.client_ip_header = 'x forwarded'$$);
SET apikeys.client_ip_header = 'X-Forwarded-For';
SET SESSION AUTHORIZATION regress_rst_auth;
-- the last address of the list is the one the trusted proxy saw
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": "10.1.2.3"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "X-Forwarded-For": "203.0.113.9, 10.1.2.3"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": "10.1.2.3, 203.0.113.9"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": "2001:db8::7"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": "::ffff:10.9.9.9"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": "2001:db9::7"}'); ROLLBACK;
-- malformed or missing: unknown, so refused
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": "10.1.2"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": "10.0.0.0/8"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": "10.1.2.3:8080"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": "[2001:db8::7]"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": "fe80::1%eth0"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": "not an address"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": ""}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": 167837955}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": ["10.1.2.3"]}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%", "x-forwarded-for": "10.1.2.3", "X-FORWARDED-FOR": "11.1.1.1"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%ip%"}'); ROLLBACK;
-- a key without restrictions does not care
BEGIN; SELECT regress.rst('{"x-api-key": "%free%", "x-forwarded-for": "not an address"}'); ROLLBACK;
RESET SESSION AUTHORIZATION;
RESET apikeys.client_ip_header;
SET SESSION AUTHORIZATION regress_rst_auth;

-- the origin comes from the Origin header, else from the Referer's origin
BEGIN; SELECT regress.rst('{"x-api-key": "%origin%", "origin": "https://app.example.com"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%origin%", "Origin": "https://shop.example.org"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%origin%", "origin": "https://evil.net"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%origin%", "referer": "https://app.example.com/page?q=1#top"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%origin%", "referer": "http://localhost:3000/"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%origin%", "referer": "https://app.example.com"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%origin%", "referer": "https://evil.net/https://app.example.com/"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%origin%", "referer": "https://app.example.com@evil.net/"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%origin%", "referer": "app.example.com/page"}'); ROLLBACK;
-- the Origin header decides when present, even against a good Referer
BEGIN; SELECT regress.rst('{"x-api-key": "%origin%", "origin": "https://evil.net", "referer": "https://app.example.com/"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%origin%", "origin": "null", "referer": "https://app.example.com/"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%origin%", "origin": 1, "referer": "https://app.example.com/"}'); ROLLBACK;
BEGIN; SELECT regress.rst('{"x-api-key": "%origin%"}'); ROLLBACK;
RESET SESSION AUTHORIZATION;

-- clean up
DROP FUNCTION regress.rst(text);
SELECT apikey_delete(key_id) FROM regress.rst_keys \g /dev/null
DROP TABLE regress.rst_keys;
DROP ROLE regress_rst_auth, regress_rst_svc, regress_rst_anon;
SELECT count(*) AS keys_left FROM apikeys.keys;
