-- cache: the backend-local key cache (what it keeps, what invalidates it,
-- its size bound) and the one-verification-per-statement rule.
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

-- counters of this backend's key cache since the previous call
CREATE TEMP TABLE last_stats AS SELECT * FROM apikey_cache_stats();
CREATE FUNCTION pg_temp.delta(OUT lookups int8, OUT hits int8, OUT misses int8,
                              OUT repeats int8, OUT invalidations int8)
LANGUAGE plpgsql AS $$
DECLARE
    now_s record;
    old_s record;
BEGIN
    SELECT * INTO now_s FROM apikeys.apikey_cache_stats();
    SELECT * INTO old_s FROM last_stats;
    hits := now_s.hits - old_s.hits;
    misses := now_s.misses - old_s.misses;
    lookups := hits + misses;
    repeats := now_s.repeats - old_s.repeats;
    invalidations := now_s.invalidations - old_s.invalidations;
    DELETE FROM last_stats;
    INSERT INTO last_stats SELECT * FROM apikeys.apikey_cache_stats();
END $$;

SHOW apikeys.cache_size;
SELECT capacity, memory_bytes >= 0 AS has_memory FROM apikey_cache_stats();

SELECT key_id AS k, token AS t FROM apikey_create('cached', scopes => '{orders:read,jobs:*}') \gset
CREATE TEMP TABLE cached_token AS SELECT :'t'::text AS token;
SELECT * FROM pg_temp.delta() \gset d_
-- the first verification loads the key, the next ones find it cached
SELECT status FROM apikey_verify(:'t');
SELECT lookups, misses FROM pg_temp.delta();
SELECT status FROM apikey_verify(:'t', 'orders:read');
SELECT status FROM apikey_verify(:'t', 'jobs:run');
SELECT lookups, hits, misses FROM pg_temp.delta();

-- apikey_is_valid: the boolean alone
SELECT apikey_is_valid(:'t') AS plain, apikey_is_valid(:'t', 'orders:read') AS held,
       apikey_is_valid(:'t', 'orders:write') AS not_held,
       apikey_is_valid(:'t'::apikey, 'jobs:x') AS typed,
       apikey_is_valid(NULL) AS null_token, apikey_is_valid('garbage') AS garbage,
       apikey_is_valid(overlay(:'t' PLACING 'x' FROM 20 FOR 1)) IS NOT NULL AS typo_answered;
SELECT * FROM pg_temp.delta() \gset d_

-- One verification per statement, whichever form: the expansion of the
-- composite calls the function once per field, and every call after the
-- first is a repeat answered by the statement memo.
SELECT (apikey_verify(:'t')).* \gset v_
SELECT :'v_valid' AS valid, :'v_status' AS status, :'v_name' AS name, :'v_scopes' AS scopes;
SELECT lookups, repeats FROM pg_temp.delta();
SELECT (apikey_verify(:'t')).valid, (apikey_verify(:'t')).status;
SELECT lookups, repeats FROM pg_temp.delta();
SELECT (apikey_verify(:'t'::apikey, 'orders:read')).* \gset v_
SELECT lookups, repeats FROM pg_temp.delta();
SELECT v.valid, v.status, v.name FROM apikey_verify(:'t') v;
SELECT lookups, repeats FROM pg_temp.delta();
-- the same token in the condition and the target list, in many rows of one
-- statement: one verification
SELECT apikey_is_valid(:'t') AS v FROM generate_series(1, 3) WHERE apikey_is_valid(:'t');
SELECT lookups, repeats FROM pg_temp.delta();
SELECT count(*) FILTER (WHERE apikey_is_valid(:'t')) FROM generate_series(1, 100);
SELECT lookups, repeats FROM pg_temp.delta();
-- a query a PL/pgSQL loop runs through a cursor is a statement of its own
DO $$
DECLARE
    r record;
BEGIN
    FOR i IN 1..3 LOOP
        FOR r IN SELECT apikeys.apikey_is_valid(t.token) AS v FROM pg_temp.cached_token t LOOP
        END LOOP;
    END LOOP;
END $$;
SELECT lookups, repeats FROM pg_temp.delta();
-- other arguments are another verification
SELECT apikey_is_valid(:'t', 'orders:read'), apikey_is_valid(:'t', 'jobs:run'),
       apikey_is_valid(:'t', 'orders:read', '10.0.0.1'), apikey_is_valid(:'t', 'orders:read');
SELECT lookups, repeats FROM pg_temp.delta();
-- with limits, a repeat is not charged again: a quota of 5 and a rate of
-- one an hour, each field expansion one request
SELECT key_id AS kq, token AS tq FROM apikey_create('quota', remaining => 5) \gset
SELECT (apikey_verify(:'tq')).* \gset q_
SELECT :'q_status' AS status, :'q_remaining' AS remaining;
SELECT (apikey_verify(:'tq')).valid, (apikey_verify(:'tq')).remaining;
SELECT v.status, v.remaining FROM apikey_verify(:'tq') v;
SELECT key_id AS kr, token AS tr FROM apikey_create('one an hour', rate_limit => '1/hour') \gset
SELECT (apikey_verify(:'tr')).status, (apikey_verify(:'tr')).valid, apikey_is_valid(:'tr');
SELECT (apikey_verify(:'tr')).status;
-- a statement that runs another portal in between (a loop's cursor in a
-- function it calls) keeps its memo: two an hour, charged once here, so
-- the next statement still gets the second
SELECT key_id AS kp, token AS tp FROM apikey_create('two an hour', rate_limit => '2/hour') \gset
CREATE FUNCTION pg_temp.inner_loop(tok text) RETURNS int LANGUAGE plpgsql AS $$
DECLARE
    r record;
    n int := 0;
BEGIN
    FOR r IN SELECT apikeys.apikey_is_valid(tok) AS v LOOP
        n := n + 1;
    END LOOP;
    RETURN n;
END $$;
SELECT (apikey_verify(:'tp')).status, pg_temp.inner_loop(:'t'), (apikey_verify(:'tp')).valid;
SELECT (apikey_verify(:'tp')).status AS second_request;
SELECT (apikey_verify(:'tp')).status AS third_request;
SELECT apikey_delete(:'kq'), apikey_delete(:'kr'), apikey_delete(:'kp');
SELECT * FROM pg_temp.delta() \gset d_
-- and a new statement is a new verification
SELECT apikey_is_valid(:'t');
SELECT lookups, repeats FROM pg_temp.delta();

-- Creating keys sends no invalidation: what is cached stays cached.
SELECT count(*) FROM generate_series(1, 5), LATERAL apikey_create('churn') c;
SELECT apikey_is_valid(:'t');
SELECT lookups, hits, invalidations FROM pg_temp.delta();

-- Every change to an existing key invalidates, and this session sees it at
-- once: a rename, a scope change, a disable, a direct update by an admin.
SELECT apikey_update(:'k', name => 'renamed');
SELECT status, name FROM apikey_verify(:'t');
SELECT misses, invalidations > 0 AS invalidated FROM pg_temp.delta();
SELECT apikey_update(:'k', scopes => '{orders:write}');
SELECT status FROM apikey_verify(:'t', 'orders:read');
SELECT apikey_disable(:'k');
SELECT status FROM apikey_verify(:'t');
SELECT apikey_enable(:'k');
UPDATE apikeys_internal.key_catalog SET scopes = '{direct}' WHERE key_id = :'k';
SELECT status, scopes FROM apikey_verify(:'t', 'direct');

-- inside a transaction, and undone by its rollback
BEGIN;
SELECT status FROM apikey_verify(:'t');
SAVEPOINT s;
SELECT apikey_revoke(:'k');
SELECT status FROM apikey_verify(:'t');
ROLLBACK TO s;
SELECT status FROM apikey_verify(:'t');
SELECT apikey_revoke(:'k');
SELECT status FROM apikey_verify(:'t');
ROLLBACK;
SELECT status FROM apikey_verify(:'t');
BEGIN;
SET LOCAL client_min_messages = warning;
TRUNCATE apikeys_internal.key_catalog CASCADE;
SELECT status FROM apikey_verify(:'t');
ROLLBACK;
SELECT status FROM apikey_verify(:'t');
-- a rotation: the old secret stops at once, the new one works
SELECT apikey_rotate(:'k') AS t_new \gset
SELECT apikey_is_valid(:'t') AS old_secret, apikey_is_valid(:'t_new') AS new_secret;
-- a delete
SELECT apikey_delete(:'k');
SELECT status FROM apikey_verify(:'t_new');

-- The size bound: at most apikeys.cache_size keys; the rest are evicted
-- and loaded again when needed.  0 turns the cache off.
CREATE TEMP TABLE few AS SELECT * FROM generate_series(1, 6) g, LATERAL apikey_create('few ' || g) c;
SET apikeys.cache_size = 2;
SELECT count(*) FILTER (WHERE apikey_is_valid(token)) AS valid FROM few;
SELECT count(*) FILTER (WHERE apikey_is_valid(token)) AS valid FROM few;
SELECT entries <= 2 AS bounded, evictions > 0 AS evicted FROM apikey_cache_stats();
SET apikeys.cache_size = 0;
SELECT count(*) FILTER (WHERE apikey_is_valid(token)) AS valid FROM few;
SELECT entries FROM apikey_cache_stats();
-- a key loaded but not kept, then an invalidation handled in between
SELECT apikey_is_valid(token) FROM few WHERE g = 1;
SELECT apikey_update(key_id, name => 'few one') FROM few WHERE g = 2;
SELECT entries FROM apikey_cache_stats();
SELECT apikey_is_valid(token) FROM few WHERE g = 1;
RESET apikeys.cache_size;
SELECT count(*) FILTER (WHERE apikey_is_valid(token)) AS valid FROM few;
SELECT entries >= 6 AS cached FROM apikey_cache_stats();
SELECT count(*) FROM few, LATERAL apikey_delete(key_id);

-- the setting is bounded
SET apikeys.cache_size = -1;
