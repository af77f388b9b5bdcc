-- limits_usage: rate limits, costs, role limits, quotas and usage counts, as
-- shared memory keeps them (test/run.sh preloads apikeys and makes this
-- database the one apikeys.database names).  Windows are an hour or longer,
-- so nothing refills while this runs; refill timing, concurrency and the
-- worker are tested by TAP (test/t/02*_*.pl).
\set VERBOSITY terse
SET search_path = apikeys, public;

-- One request: a verification run as a statement of its own (the loop runs
-- its query through a cursor, a portal of its own, so the rule "one
-- verification per statement" sees separate requests, as separate client
-- statements would be), shown as its status, whether it says when to retry,
-- and the quota left.
CREATE FUNCTION regress.v(tok text, c int DEFAULT 1, want text DEFAULT NULL,
                          ip inet DEFAULT NULL)
RETURNS text LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM apikeys.apikey_verify(tok, scope => want, client_ip => ip, cost => c) LOOP
    END LOOP;
    RETURN r.status
        || CASE WHEN r.retry_after IS NOT NULL THEN ' retry' ELSE '' END
        || coalesce(' remaining=' || r.remaining, '');
END $$;


-- the grammar: N/second|minute|hour|day [burst B], several separated by
-- commas (or an array's text form); stored normalized, shortest window first
SELECT x AS given, apikeys_internal._rate_limit_normalize(x) AS stored
  FROM unnest(ARRAY['100/second', ' 100 / Seconds  burst 200 ', '5000/hour, 10/second',
                    '{1/day,"2/minute"}', ARRAY['7/minute', '1/day']::text, '', '{}',
                    '10/second burst 10']) x;
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L, rate_limit => %L)', 'x', x))
  FROM unnest(ARRAY['10/fortnight', '10 per second', '0/second', '10/second burst 0',
                    '10/second burst', '1/second, 2/second', '10/second,',
                    '1000000001/second', '1/second, 1/minute, 1/hour, 1/day, 2/day']) x;
-- quota refills: N/hour, N/day, N/month [on day D], in UTC
SELECT x AS given, apikeys_internal._refill_normalize(x) AS stored
  FROM unnest(ARRAY['1000/day', '5/month on day 31', '5/Month on Day 1', '7/hour', '']) x;
SELECT regress.try(format('SELECT * FROM apikeys.apikey_create(%L, refill => %L)', 'x', x))
  FROM unnest(ARRAY['10/week', '10/day on day 3', '10/month on day 32', '0/day']) x;
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('x', remaining => -5)$$);

-- a key with two windows: listed and audited as normalized
CREATE TABLE regress.lim (label text PRIMARY KEY, key_id text, token text);
INSERT INTO regress.lim SELECT 'a', * FROM apikey_create('lim a', rate_limit => '100/day burst 50, 3/hour');
SELECT name, rate_limit, remaining, refill, last_used_at FROM keys WHERE name = 'lim a';
SELECT changes -> 'rate_limit' AS audited FROM audit_log
 WHERE key_id = (SELECT key_id FROM regress.lim WHERE label = 'a') AND action = 'create';

-- N/window admits N at once: three, then rate_limited with a retry_after
SELECT regress.v(token) FROM regress.lim, generate_series(1, 4) WHERE label = 'a';
SELECT retry_after BETWEEN '19 minutes' AND '20 minutes' AS about_20_minutes
  FROM regress.lim, apikey_verify(token) WHERE label = 'a';

-- cost: a request may weigh more than one; 0 checks without spending; a
-- cost above the burst can never pass (no retry_after)
INSERT INTO regress.lim SELECT 'b', * FROM apikey_create('lim b', rate_limit => '5/hour');
SELECT regress.v(token, 0) FROM regress.lim, generate_series(1, 3) WHERE label = 'b';
SELECT regress.v(token, c) FROM regress.lim, unnest(ARRAY[2, 2, 2, 1, 0, 6]) WITH ORDINALITY AS u(c, n)
 WHERE label = 'b' ORDER BY n;
SELECT regress.try(format('SELECT * FROM apikeys.apikey_verify(%L, cost => %s)', token, c))
  FROM regress.lim, unnest(ARRAY[-1, 1000001]) c WHERE label = 'b';
-- the same for a key without limits, a token that is no key, and no token
SELECT regress.try(format('SELECT apikeys.apikey_is_valid(%L, cost => %s)', t, c))
  FROM unnest(ARRAY[-5, 2000000]) c,
       unnest(ARRAY[(SELECT token FROM apikey_create('lim none')), 'not a token', NULL]) t;
SELECT apikey_delete(key_id) FROM keys WHERE name = 'lim none';

-- only a request that passes every other check spends: a wrong secret, a
-- refused address, a missing scope, a disabled key spend nothing
INSERT INTO regress.lim SELECT 'c', * FROM apikey_create('lim c', rate_limit => '1/hour',
    scopes => '{read}', allowed_ips => '{10.0.0.0/8}');
SELECT regress.v(regress.forge(token, repeat('A', 32)), 1, 'read', '10.1.1.1')
  FROM regress.lim WHERE label = 'c';
SELECT regress.v(token, 1, 'read', '192.168.1.1') FROM regress.lim WHERE label = 'c';
SELECT regress.v(token, 1, 'write', '10.1.1.1') FROM regress.lim WHERE label = 'c';
SELECT apikey_disable(key_id) FROM regress.lim WHERE label = 'c';
SELECT regress.v(token, 1, 'read', '10.1.1.1') FROM regress.lim WHERE label = 'c';
SELECT apikey_enable(key_id) FROM regress.lim WHERE label = 'c';
SELECT regress.v(token, 1, 'read', '10.1.1.1') FROM regress.lim, generate_series(1, 2) WHERE label = 'c';

-- a change takes effect at commit: a new limit starts with a full bucket;
-- rate_limit => '' removes it; the listing and the audit log follow
BEGIN;
SELECT apikey_update(key_id, rate_limit => '2/hour') FROM regress.lim WHERE label = 'c';
SELECT regress.v(token, 1, 'read', '10.1.1.1') FROM regress.lim, generate_series(1, 3) WHERE label = 'c';
COMMIT;
SELECT apikey_update(key_id, rate_limit => '') FROM regress.lim WHERE label = 'c';
SELECT regress.v(token, 1, 'read', '10.1.1.1') FROM regress.lim, generate_series(1, 3) WHERE label = 'c';
SELECT rate_limit FROM keys WHERE name = 'lim c';
SELECT action, changes -> 'rate_limit' AS rate_limit FROM audit_log
 WHERE key_id = (SELECT key_id FROM regress.lim WHERE label = 'c') AND changes ? 'rate_limit' ORDER BY at;

-- read-only transactions (PostgREST's GET) enforce limits too; spending is
-- not undone by a rollback (a rate limiter counts attempts)
INSERT INTO regress.lim SELECT 'd', * FROM apikey_create('lim d', rate_limit => '2/hour');
BEGIN READ ONLY;
SELECT regress.v(token) FROM regress.lim WHERE label = 'd';
ROLLBACK;
SELECT regress.v(token) FROM regress.lim, generate_series(1, 2) WHERE label = 'd';

-- limits shared by all keys of a role, on top of each key's own
CREATE ROLE regress_lim_svc NOLOGIN;
CREATE ROLE regress_lim_user NOLOGIN;
GRANT regress_lim_svc TO regress_lim_user;
INSERT INTO regress.lim SELECT 'r1', * FROM apikey_create('lim r1', role => 'regress_lim_svc', rate_limit => '100/hour');
INSERT INTO regress.lim SELECT 'r2', * FROM apikey_create('lim r2', role => 'regress_lim_svc');
SELECT apikey_set_role_limit('regress_lim_svc', '3/hour');
SELECT role, rate_limit, set_by FROM role_limits;
SELECT label, regress.v(token) FROM regress.lim, generate_series(1, 2) WHERE label IN ('r1', 'r2') ORDER BY label;
-- members of the role see its limit; only admins set one
SET ROLE regress_lim_user;
SELECT role, rate_limit FROM role_limits;
SELECT regress.try($$SELECT apikeys.apikey_set_role_limit('regress_lim_svc', '1000/hour')$$);
RESET ROLE;
SELECT apikey_set_role_limit('regress_lim_svc', NULL);
SELECT label, regress.v(token) FROM regress.lim WHERE label IN ('r1', 'r2') ORDER BY label;
SELECT action, key_id, key_role, changes FROM audit_log WHERE action = 'set_role_limit' ORDER BY at;
SELECT regress.try($$SELECT apikeys.apikey_set_role_limit('regress_lim_svc', '3/fortnight')$$);

-- quotas: remaining uses; quota_exceeded at zero; a top-up sets a new
-- value, counted from exactly once; remaining => -1 removes the quota
INSERT INTO regress.lim SELECT 'q', * FROM apikey_create('lim q', remaining => 3);
SELECT name, remaining, refill FROM keys WHERE name = 'lim q';
SELECT regress.v(token, c) FROM regress.lim, unnest(ARRAY[1, 0, 2, 1, 0]) WITH ORDINALITY AS u(c, n)
 WHERE label = 'q' ORDER BY n;
SELECT remaining FROM keys WHERE name = 'lim q';
SELECT apikey_update(key_id, remaining => 2) FROM regress.lim WHERE label = 'q';
SELECT remaining FROM keys WHERE name = 'lim q';
SELECT regress.v(token) FROM regress.lim, generate_series(1, 3) WHERE label = 'q';
SELECT apikey_update(key_id, remaining => -1) FROM regress.lim WHERE label = 'q';
SELECT regress.v(token) FROM regress.lim WHERE label = 'q';
SELECT action, changes - 'updated_at' - 'quota_set_at' AS changes FROM audit_log
 WHERE key_id = (SELECT key_id FROM regress.lim WHERE label = 'q') ORDER BY at;
-- a refill alone starts the quota at its amount; an exhausted quota with a
-- refill says when to retry (the next period)
INSERT INTO regress.lim SELECT 'f', * FROM apikey_create('lim f', refill => '2/day');
SELECT name, remaining, refill FROM keys WHERE name = 'lim f';
SELECT regress.v(token) FROM regress.lim, generate_series(1, 3) WHERE label = 'f';
SELECT retry_after <= '24 hours' AS before_tomorrow FROM regress.lim, apikey_verify(token) WHERE label = 'f';
-- a rate-limited request spends no quota, and an exhausted quota no rate
INSERT INTO regress.lim SELECT 'g', * FROM apikey_create('lim g', rate_limit => '2/hour', remaining => 3);
SELECT regress.v(token) FROM regress.lim, generate_series(1, 3) WHERE label = 'g';
SELECT remaining FROM keys WHERE name = 'lim g';

-- logins spend too (cost included); over a limit apikey_login raises 53400
-- with when to retry, and pre_request answers 429 with Retry-After
CREATE ROLE regress_lim_login NOLOGIN;
INSERT INTO regress.lim SELECT 'l', * FROM apikey_create('lim l', role => 'regress_lim_login', rate_limit => '2/hour');
BEGIN;
SELECT status, retry_after, current_user FROM regress.lim, apikey_login(token, cost => 2) WHERE label = 'l';
ROLLBACK;
SELECT regexp_replace(regress.try(format('SELECT apikeys.apikey_login(%L)', token)), '[0-9]+ seconds', 'N seconds')
  FROM regress.lim WHERE label = 'l';
BEGIN;
SELECT set_config('request.headers', json_build_object('x-api-key', token)::text, true) IS NOT NULL AS set
  FROM regress.lim WHERE label = 'l';
SELECT regexp_replace(regress.try('SELECT apikeys.pre_request()'), '"Retry-After": ?"[0-9]+"', '"Retry-After": "N"');
ROLLBACK;

-- usage, live: valid uses, failures (wrong secret, disabled, refused),
-- rate_limited, quota_exceeded, last use
SELECT k.name, u.uses, u.failures, u.rate_limited, u.quota_exceeded,
       u.last_used_at IS NOT NULL AS used, u.remaining
  FROM usage u JOIN keys k USING (key_id) WHERE k.name LIKE 'lim %' ORDER BY k.name;
SELECT count(*) FILTER (WHERE last_used_at IS NOT NULL) AS with_last_use FROM keys WHERE name LIKE 'lim %';
-- a made-up key id is counted nowhere (nothing to grow shared memory with)
SELECT tracked AS before FROM usage_stats() \gset
SELECT regress.v(regress.forge(overlay(token PLACING 'QQQQQQQQQQQQ' FROM 4 FOR 12), repeat('A', 32)))
  FROM regress.lim WHERE label = 'a';
SELECT tracked = :before AS nothing_tracked FROM usage_stats();
SELECT capacity, database FROM usage_stats();

-- others' keys: a role sees the usage of its own keys only
INSERT INTO regress.lim SELECT 'u', * FROM apikey_create('lim u', role => 'regress_lim_svc');
SELECT regress.v(token) FROM regress.lim WHERE label = 'u';
SELECT key_id AS key_a FROM regress.lim WHERE label = 'a' \gset
SET ROLE regress_lim_user;
SELECT k.name, u.uses FROM apikeys.usage u JOIN apikeys.keys k USING (key_id) ORDER BY k.name;
SELECT count(*) AS foreign_rows FROM apikeys.usage WHERE key_id = :'key_a';
RESET ROLE;

-- clean up
SELECT count(apikey_delete(key_id)) FROM regress.lim;
DROP TABLE regress.lim;
DROP FUNCTION regress.v(text, int, text, inet);
DROP ROLE regress_lim_user;
DROP ROLE regress_lim_login;
DROP ROLE regress_lim_svc;
