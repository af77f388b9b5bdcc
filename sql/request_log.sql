-- request_log: requests made with a key (apikeys.audit_requests), queued in
-- shared memory and written by the worker (test/run.sh preloads apikeys and
-- makes this database the one apikeys.database names, flushing every
-- 500ms).  The flood of 10,000 tokens, a full queue, restarts, a standby
-- and running without preloading are TAP tests (test/t/03*_request*.pl).
\set VERBOSITY terse
SET search_path = apikeys, public;

-- Wait until the worker has written everything queued (at most 30 s);
-- true when it has.
CREATE FUNCTION regress.rl_flushed() RETURNS bool LANGUAGE plpgsql AS $$
BEGIN
    FOR i IN 1..600 LOOP
        IF (SELECT pending FROM apikeys.request_log_stats()) = 0 THEN
            RETURN true;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
    RETURN false;
END $$;
-- One request: a verification in a statement of its own (see limits_usage).
CREATE FUNCTION regress.rl_v(tok text, ip inet DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN SELECT * FROM apikeys.apikey_verify(tok, client_ip => ip) LOOP
    END LOOP;
    RETURN r.status;
END $$;
-- The rows written since the table was last emptied.
CREATE VIEW regress.rl AS
SELECT kind, status, key_id IS NOT NULL AS has_id, key_exists, key_name, key_role,
       db_user, client_addr, requests, overflow, first_at <= last_at AS ordered
  FROM apikeys.request_log;

-- Every row seen, for the check for secrets at the end; the table starts
-- over after each part.
CREATE TABLE regress.rl_seen (r text);
CREATE FUNCTION regress.rl_clear() RETURNS void LANGUAGE sql AS $$
    INSERT INTO regress.rl_seen SELECT r::text FROM apikeys_internal.request_log r;
    TRUNCATE apikeys_internal.request_log;
$$;

-- the earlier suites' failures are written; start from an empty table
SELECT regress.rl_flushed();
TRUNCATE apikeys_internal.request_log;
-- Parts run with no flush in between (the interval is an hour), each ends
-- by setting it back, which makes the worker flush at once: a part's
-- requests are written together, so its rows are the same every run.
ALTER SYSTEM SET apikeys.usage_flush_interval = '1h';
SELECT pg_reload_conf(), pg_sleep(0.5);

CREATE ROLE regress_rl_svc NOLOGIN;
CREATE ROLE regress_rl_user LOGIN;
CREATE TABLE regress.rl_tok (label text PRIMARY KEY, key_id text, token text);
INSERT INTO regress.rl_tok SELECT 'a', * FROM apikey_create('rl a', role => 'regress_rl_svc');
INSERT INTO regress.rl_tok SELECT 'd', * FROM apikey_create('rl disabled', role => 'regress_rl_svc');
SELECT apikey_disable(key_id) FROM regress.rl_tok WHERE label = 'd';
-- a wrong secret for key a, and a token whose key id names no key
INSERT INTO regress.rl_tok SELECT 'a-wrong', key_id, regress.forge(token, repeat('w', 32))
  FROM regress.rl_tok WHERE label = 'a';
INSERT INTO regress.rl_tok SELECT 'nokey', 'ZZZZZZZZZZZZ',
       regress.forge(replace(token, key_id, 'ZZZZZZZZZZZZ'), repeat('n', 32))
  FROM regress.rl_tok WHERE label = 'a';
GRANT SELECT ON regress.rl_tok TO regress_rl_user;

-- the setting: failures by default; only superusers change it, so a role
-- cannot stop the recording of its own failures
SHOW apikeys.audit_requests;
\c - regress_rl_user
SELECT regress.try($$SET apikeys.audit_requests = off$$);
SELECT regress.try($$SELECT set_config('apikeys.audit_requests', 'off', false)$$);
SELECT regress.try($$ALTER ROLE regress_rl_user SET apikeys.audit_requests = off$$);
SHOW apikeys.audit_requests;
-- what it does is recorded, under its name (the session user)
SELECT regress.rl_v(token) FROM regress.rl_tok WHERE label = 'a-wrong';
\c - postgres
SET search_path = apikeys, public;
ALTER SYSTEM RESET apikeys.usage_flush_interval;
SELECT pg_reload_conf();
SELECT regress.rl_flushed();
SELECT * FROM regress.rl;
SELECT regress.rl_clear();
ALTER SYSTEM SET apikeys.usage_flush_interval = '1h';
SELECT pg_reload_conf(), pg_sleep(0.5);
SELECT regress.try($$SET apikeys.audit_requests = sometimes$$);

-- failures (the default): every refused request, none of the valid ones
SELECT label, regress.rl_v(token) FROM regress.rl_tok, generate_series(1, 2)
 WHERE label IN ('a', 'a-wrong', 'd', 'nokey') ORDER BY label;
-- one statement reading several fields of one verification is one request
SELECT (apikey_verify(token)).valid, (apikey_verify(token)).status
  FROM regress.rl_tok WHERE label = 'a-wrong';
-- READ ONLY transactions record too (nothing is written by the request)
BEGIN READ ONLY;
SELECT regress.rl_v(token) FROM regress.rl_tok WHERE label = 'nokey';
COMMIT;
-- a login
BEGIN;
SELECT regress.try(format('SELECT apikey_login(%L)', token)) FROM regress.rl_tok WHERE label = 'd';
ROLLBACK;
ALTER SYSTEM RESET apikeys.usage_flush_interval;
SELECT pg_reload_conf();
SELECT regress.rl_flushed();
SELECT * FROM regress.rl ORDER BY kind, status, key_name, db_user;
SELECT written >= 8 AS written, overflowed, queued, pending
  FROM request_log_stats();
SELECT regress.rl_clear();
ALTER SYSTEM SET apikeys.usage_flush_interval = '1h';
SELECT pg_reload_conf(), pg_sleep(0.5);

-- all: valid requests too, one row per key, kind, user and address
SET apikeys.audit_requests = 'all';
SELECT regress.rl_v(token), regress.rl_v(token, '192.0.2.7'), regress.rl_v(token, '192.0.2.7')
  FROM regress.rl_tok WHERE label = 'a';
SELECT apikey_is_valid(token) FROM regress.rl_tok WHERE label = 'a';
SELECT (apikey_verify(token)).valid, (apikey_verify(token)).status
  FROM regress.rl_tok WHERE label = 'a';
BEGIN;
SELECT status FROM regress.rl_tok, apikey_login(token) WHERE label = 'a';
ROLLBACK;
-- failures of an existing key: one row per status, keeping the user and
-- the address while every request agrees
SELECT regress.rl_v(token, '192.0.2.8'), regress.rl_v(token, '192.0.2.8')
  FROM regress.rl_tok WHERE label = 'd';
SELECT regress.rl_v(token, '192.0.2.8'), regress.rl_v(token, '192.0.2.9')
  FROM regress.rl_tok WHERE label = 'a-wrong';
ALTER SYSTEM RESET apikeys.usage_flush_interval;
SELECT pg_reload_conf();
SELECT regress.rl_flushed();
SELECT * FROM regress.rl ORDER BY kind, status, client_addr;
SELECT regress.rl_clear();
ALTER SYSTEM SET apikeys.usage_flush_interval = '1h';
SELECT pg_reload_conf(), pg_sleep(0.5);

-- off: nothing
SET apikeys.audit_requests = off;
SELECT recorded AS before FROM request_log_stats() \gset
SELECT regress.rl_v(token) FROM regress.rl_tok WHERE label IN ('a', 'a-wrong', 'nokey') ORDER BY label;
SELECT recorded - :before AS recorded_while_off FROM request_log_stats();
ALTER SYSTEM RESET apikeys.usage_flush_interval;
SELECT pg_reload_conf();
SELECT regress.rl_flushed();
SELECT count(*) AS rows_while_off FROM apikeys.request_log;
RESET apikeys.audit_requests;
ALTER SYSTEM SET apikeys.usage_flush_interval = '1h';
SELECT pg_reload_conf(), pg_sleep(0.5);

-- guessing: 200 tokens with made-up key ids are one row, counted to the last
SELECT count(*) AS guesses
  FROM regress.rl_tok t, generate_series(1, 200) i,
       LATERAL apikey_is_valid(regress.forge(replace(t.token, t.key_id, lpad(i::text, 12, 'G')),
                                             repeat('g', 32))) v
 WHERE t.label = 'a' AND NOT v;
ALTER SYSTEM RESET apikeys.usage_flush_interval;
SELECT pg_reload_conf();
SELECT regress.rl_flushed();
SELECT kind, status, key_id, key_exists, requests FROM apikeys.request_log;
SELECT regress.rl_clear();
ALTER SYSTEM SET apikeys.usage_flush_interval = '1h';
SELECT pg_reload_conf(), pg_sleep(0.5);

-- input that is no token (a bad checksum, garbage, a secret pasted alone)
-- is recorded too, with no key id (nothing of it is kept), and once per
-- statement like any request: 4 here
SELECT regress.rl_v(overlay(token PLACING 'x' FROM 20 FOR 1)) FROM regress.rl_tok WHERE label = 'a';
SELECT regress.rl_v(right(token, 38)) FROM regress.rl_tok WHERE label = 'a';
SELECT (apikey_verify('not a token')).valid, (apikey_verify('not a token')).status,
       apikey_is_valid('not a token');
SELECT apikey_is_valid('not a token');
ALTER SYSTEM RESET apikeys.usage_flush_interval;
SELECT pg_reload_conf();
SELECT regress.rl_flushed();
SELECT * FROM regress.rl;

-- admins only
SET ROLE regress_rl_user;
SELECT regress.try('SELECT * FROM apikeys.request_log');
SELECT regress.try('SELECT * FROM apikeys.request_log_stats()');
SELECT regress.try('SELECT * FROM apikeys_internal.request_log');
RESET ROLE;
CREATE ROLE regress_rl_admin NOLOGIN IN ROLE apikeys_admin;
SET ROLE regress_rl_admin;
SELECT count(*) AS admin_reads FROM apikeys.request_log;
SELECT queue_size FROM apikeys.request_log_stats();
RESET ROLE;

-- no row holds a secret, nor any part of one: only key ids, which are public
SELECT regress.rl_clear();
SELECT count(*) AS rows_seen, count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM regress.rl_tok t
            WHERE strpos(s.r, substr(t.token, length(t.token) - 37, 8)) > 0)) AS rows_with_a_secret
  FROM regress.rl_seen s;

-- clean up
SELECT apikey_delete(key_id) FROM regress.rl_tok WHERE label IN ('a', 'd');
DROP TABLE regress.rl_tok, regress.rl_seen;
DROP FUNCTION regress.rl_clear();
DROP VIEW regress.rl;
DROP ROLE regress_rl_svc, regress_rl_user, regress_rl_admin;
