-- cache_time: every deadline a cached key entry carries, reached by time
-- alone.  The keys are verified once (their entries are cached in this
-- backend), then the session waits, with no change to any key and so no
-- invalidation in between (the cache counters show it), and verifies again:
-- the end of a rotation's grace period, the expiry, a rate-limit window
-- (refilled, yet never holding more than its burst).
-- The last_used_at of a verification reaches the catalog through the
-- worker's flush, with no statement of this session in between.  (A quota
-- refill is at least hourly: no short wait reaches it.)
SET search_path = apikeys, public;
CREATE ROLE regress_ct_svc NOLOGIN;
CREATE TABLE regress.ct_keys (label text PRIMARY KEY, key_id text, token text);
INSERT INTO regress.ct_keys SELECT 'graced', * FROM apikey_create('ct graced', role => 'regress_ct_svc');
INSERT INTO regress.ct_keys SELECT 'graced_new', key_id, apikey_rotate(key_id, grace => '2 seconds')
  FROM regress.ct_keys WHERE label = 'graced';
INSERT INTO regress.ct_keys SELECT 'expiring', * FROM apikey_create('ct expiring', role => 'regress_ct_svc',
    expires_at => clock_timestamp() + interval '2 seconds');
INSERT INTO regress.ct_keys SELECT 'limited', * FROM apikey_create('ct limited', role => 'regress_ct_svc',
    rate_limit => '1/second');
INSERT INTO regress.ct_keys SELECT 'used', * FROM apikey_create('ct used', role => 'regress_ct_svc');
INSERT INTO regress.ct_keys SELECT 'burst', * FROM apikey_create('ct burst', role => 'regress_ct_svc',
    rate_limit => '2/second');

-- before: all valid, the limited key's second use refused; entries cached
SELECT label, (apikey_verify(token)).status FROM regress.ct_keys ORDER BY label;
SELECT (apikey_verify(token, cost => 1)).status AS limited_again
  FROM regress.ct_keys WHERE label = 'limited';
SELECT invalidations AS inval_before, hits AS hits_before FROM apikey_cache_stats() \gset
-- the flushed usage row of 'used' comes from the worker (about every 500ms)
DO $$
DECLARE
    seen bool := false;
BEGIN
    FOR i IN 1..100 LOOP
        SELECT u.last_used_at IS NOT NULL INTO seen
          FROM apikeys_internal.usage u
         WHERE u.key_id = (SELECT key_id FROM regress.ct_keys WHERE label = 'used');
        EXIT WHEN seen;
        PERFORM pg_sleep(0.1);
    END LOOP;
    RAISE NOTICE 'last_used_at of the used key flushed to the catalog: %', coalesce(seen, false);
END $$;
SELECT pg_sleep(2.2);

-- after: the grace is over, the key expired, the window has room again
SELECT label, (apikey_verify(token)).status FROM regress.ct_keys ORDER BY label;
-- a cost above the burst never fits, not even in a window idle since
SELECT status, retry_after FROM regress.ct_keys, apikey_verify(token, cost => 3) WHERE label = 'burst';
SELECT invalidations - :inval_before AS invalidations_between, hits > :hits_before AS answered_from_cache
  FROM apikey_cache_stats();
-- the listing agrees
SELECT name, status, grace_until IS NOT NULL AS has_grace, last_used_at IS NOT NULL AS used
  FROM keys WHERE name LIKE 'ct %' ORDER BY name;
