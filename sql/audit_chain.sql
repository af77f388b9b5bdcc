-- audit_chain: every audit row is chained to the one before it, whoever
-- writes it; audit_verify detects every kind of tampering behind the
-- triggers; purge leaves an anchored, verifiable chain; expiry listings.
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

CREATE ROLE regress_ch NOLOGIN;
CREATE ROLE regress_ch_admin NOLOGIN IN ROLE apikeys_admin;

SELECT audit_verify() AS intact_before;
SELECT key_id AS k1 FROM apikey_create('chain 1', role => 'regress_ch') \gset
SELECT key_id AS k2 FROM apikey_create('chain 2', role => 'regress_ch') \gset
SELECT apikey_rotate(:'k1') IS NOT NULL AS rotated;
SELECT apikey_disable(:'k2');
SELECT apikey_set_role_limit('regress_ch', '100/minute');
SELECT apikey_set_role_limit('regress_ch', NULL);
SELECT apikey_revoke(:'k2');

-- seq has no gap, each row links to the one before, the head is the last row
SELECT count(*) = max(seq) - min(seq) + 1 AS no_gap,
       count(*) FILTER (WHERE row_hash IS NULL OR prev_hash IS NULL) AS unchained
  FROM apikeys_internal.audit_log;
SELECT bool_and(a.prev_hash = p.row_hash) AS linked
  FROM apikeys_internal.audit_log a JOIN apikeys_internal.audit_log p ON p.seq = a.seq - 1;
SELECT h.seq = (SELECT max(seq) FROM apikeys_internal.audit_log) AS head_is_last,
       h.hash = encode((SELECT row_hash FROM apikeys_internal.audit_log WHERE seq = h.seq), 'hex') AS head_hash,
       length(h.hash) AS hex_chars
  FROM audit_head() h;
-- the role of the key is hashed by name
SELECT DISTINCT key_role_name FROM apikeys_internal.audit_log WHERE key_id = :'k1';
SELECT ok, first_bad_seq, problem FROM audit_verify_detail();
SELECT seq AS s0, hash AS h0 FROM audit_head() \gset
SELECT audit_verify(:s0, :'h0') AS exported_head_matches,
       audit_verify(:s0, repeat('ab', 32)) AS other_head_matches,
       audit_verify(:s0 + 1, :'h0') AS future_head_matches;
-- the view shows the place in the chain, never a hash
SELECT count(*) AS rows_with_seq FROM audit_log WHERE seq IS NOT NULL AND key_id = :'k1';

-- Tampering behind the triggers, as a superuser, each undone afterwards.
CREATE TEMP TABLE saved AS SELECT * FROM apikeys_internal.audit_log;
CREATE FUNCTION pg_temp.broken() RETURNS TABLE (ok bool, bad int8, problem text)
LANGUAGE sql AS $$
    SELECT d.ok, d.first_bad_seq - (SELECT max(seq) FROM saved), d.problem
      FROM apikeys.audit_verify_detail() d
$$;
CREATE FUNCTION pg_temp.restore() RETURNS bool
LANGUAGE plpgsql AS $$
BEGIN
    SET LOCAL session_replication_role = replica;
    DELETE FROM apikeys_internal.audit_log a WHERE a.seq >= (SELECT min(seq) FROM saved) OR a.seq IS NULL;
    INSERT INTO apikeys_internal.audit_log SELECT * FROM saved;
    UPDATE apikeys_internal.audit_chain
       SET seq = (SELECT max(seq) FROM saved),
           hash = (SELECT row_hash FROM saved WHERE seq = (SELECT max(seq) FROM saved));
    RETURN apikeys.audit_verify();
END
$$;

-- 1. a row's content changed
SET session_replication_role = replica;
UPDATE apikeys_internal.audit_log SET actor = 'mallory' WHERE seq = :s0 - 2;
RESET session_replication_role;
SELECT ok, bad, regexp_replace(problem, '\d+', 'N', 'g') FROM pg_temp.broken();
SELECT audit_verify() AS intact, pg_temp.restore() AS restored;
-- 2. a row removed from the middle
SET session_replication_role = replica;
DELETE FROM apikeys_internal.audit_log WHERE seq = :s0 - 2;
RESET session_replication_role;
SELECT ok, bad, regexp_replace(problem, '\d+', 'N', 'g') FROM pg_temp.broken();
SELECT pg_temp.restore() AS restored;
-- 3. the last rows removed
SET session_replication_role = replica;
DELETE FROM apikeys_internal.audit_log WHERE seq >= :s0 - 1;
RESET session_replication_role;
SELECT ok, bad, regexp_replace(problem, '\d+', 'N', 'g') FROM pg_temp.broken();
SELECT pg_temp.restore() AS restored;
-- 4. a row inserted with every trigger disabled
ALTER TABLE apikeys_internal.audit_log DISABLE TRIGGER audit_log_chain;
INSERT INTO apikeys_internal.audit_log (action, key_id, actor, actor_role) VALUES ('create', 'forged', 'x', 'x');
ALTER TABLE apikeys_internal.audit_log ENABLE ALWAYS TRIGGER audit_log_chain;
SELECT ok, bad, regexp_replace(problem, ' at [^)]*', '') FROM pg_temp.broken();
SELECT pg_temp.restore() AS restored;
-- 5. a row inserted in the middle, the rows after it renumbered
SET session_replication_role = replica;
UPDATE apikeys_internal.audit_log SET seq = seq + 1000000 WHERE seq >= :s0 - 1;
UPDATE apikeys_internal.audit_log SET seq = seq - 1000000 + 1 WHERE seq >= 1000000;
RESET session_replication_role;
ALTER TABLE apikeys_internal.audit_log DISABLE TRIGGER audit_log_chain;
INSERT INTO apikeys_internal.audit_log (seq, action, key_id, actor, actor_role, prev_hash, row_hash)
SELECT :s0 - 1, 'create', 'forged', 'x', 'x', row_hash, row_hash FROM saved WHERE seq = :s0 - 2;
ALTER TABLE apikeys_internal.audit_log ENABLE ALWAYS TRIGGER audit_log_chain;
UPDATE apikeys_internal.audit_chain SET seq = seq + 1;
SELECT ok, bad, regexp_replace(problem, '\d+', 'N', 'g') FROM pg_temp.broken();
UPDATE apikeys_internal.audit_chain SET seq = seq - 1;
SELECT pg_temp.restore() AS restored;
-- 6. two rows swapped
SET session_replication_role = replica;
UPDATE apikeys_internal.audit_log SET seq = -1 WHERE seq = :s0 - 2;
UPDATE apikeys_internal.audit_log SET seq = :s0 - 2 WHERE seq = :s0 - 1;
UPDATE apikeys_internal.audit_log SET seq = :s0 - 1 WHERE seq = -1;
RESET session_replication_role;
SELECT ok, bad, regexp_replace(problem, '\d+', 'N', 'g') FROM pg_temp.broken();
SELECT pg_temp.restore() AS restored;
-- 7. a row loaded with its place must match its hash (the trigger checks it)
SELECT regress.try($$INSERT INTO apikeys_internal.audit_log (seq, action, actor, actor_role, prev_hash, row_hash)
                     VALUES (999999, 'create', 'x', 'x', '\x00', '\x00')$$);
-- 8. the whole chain rewritten consistently: only the exported head tells
SET session_replication_role = replica;
UPDATE apikeys_internal.audit_log SET actor = 'mallory' WHERE seq = :s0 - 2;
RESET session_replication_role;
DO $$
DECLARE r record; h bytea; hn bytea;
BEGIN
    SET LOCAL session_replication_role = replica;
    SELECT anchor_hash INTO h FROM apikeys_internal.audit_chain;
    FOR r IN SELECT * FROM apikeys_internal.audit_log ORDER BY seq LOOP
        hn := apikeys_internal._audit_row_hash(h, r.seq, r.at, r.txid, r.action, r.key_id,
                  r.actor, r.actor_role, r.key_role_name, r.changes);
        UPDATE apikeys_internal.audit_log a SET prev_hash = h, row_hash = hn WHERE a.seq = r.seq;
        h := hn;
    END LOOP;
    UPDATE apikeys_internal.audit_chain SET hash = h;
END
$$;
SELECT audit_verify() AS rewritten_chain_verifies, audit_verify(:s0, :'h0') AS exported_head_matches;
SELECT pg_temp.restore() AS restored;
SELECT audit_verify(:s0, :'h0') AS exported_head_matches;

-- append-only still holds
SELECT regress.try('DELETE FROM apikeys_internal.audit_log');

-- verify, head and purge are for admins
SET ROLE regress_ch;
SELECT regress.try('SELECT apikeys.audit_verify()');
SELECT regress.try('SELECT apikeys.audit_head()');
SELECT regress.try($$SELECT apikeys.audit_purge('1 day')$$);
RESET ROLE;

-- Purge: nothing old enough, a bad argument, a broken chain refused.
SELECT audit_purge('1 day') AS removed;
SELECT regress.try($$SELECT apikeys.audit_purge('-1 day')$$);
SET session_replication_role = replica;
UPDATE apikeys_internal.audit_log SET actor = 'mallory' WHERE seq = :s0 - 2;
RESET session_replication_role;
SELECT regexp_replace(regress.try($$SELECT apikeys.audit_purge('0')$$), 'row \d+', 'row N');
SELECT pg_temp.restore() AS restored;
DROP TABLE saved;

-- Rows older than the cutoff go, newer ones stay, the chain verifies from
-- its new anchor and the purge is its own audit row.
SELECT pg_sleep(0.2);
SELECT clock_timestamp() AS mid \gset
SELECT pg_sleep(0.2);
SELECT key_id AS k3, token AS t3 FROM apikey_create('chain 3', role => 'regress_ch', expires_at => now() + interval '2 days') \gset
SELECT key_id AS k4 FROM apikey_create('chain 4', role => 'regress_ch', expires_at => now() + interval '30 days') \gset
SET ROLE regress_ch_admin;
SELECT audit_purge(clock_timestamp() - :'mid'::timestamptz) > 0 AS purged;
RESET ROLE;
SELECT count(*) AS rows_left, min(at) > :'mid'::timestamptz AS only_newer
  FROM apikeys_internal.audit_log;
SELECT action, actor_role, changes ?& ARRAY['removed', 'through_seq', 'anchor_hash', 'older_than'] AS described
  FROM audit_log WHERE seq = (SELECT max(seq) FROM audit_log);
SELECT anchor_seq = (SELECT min(seq) - 1 FROM apikeys_internal.audit_log) AS anchored
  FROM apikeys_internal.audit_chain;
SELECT ok, problem FROM audit_verify_detail();
-- an exported head from before the purge can no longer be checked row by
-- row, but is not contradicted
SELECT audit_verify(:s0, :'h0') AS old_head_ok;
SELECT ok, regexp_replace(problem, '\d+', 'N', 'g') FROM audit_verify_detail(:s0 + 100000, :'h0');

-- One transaction appends many rows: the head is kept in memory and
-- written once before commit.  Rows of a rolled-back savepoint (and of an
-- exception block) leave no gap; the head, read inside the transaction, is
-- the last row.
BEGIN;
SELECT count(*) AS created FROM generate_series(1, 50) g,
       LATERAL apikey_create('chain bulk ' || g, role => 'regress_ch') k;
SAVEPOINT a;
SELECT count(*) AS created FROM generate_series(1, 5) g,
       LATERAL apikey_create('chain gone ' || g, role => 'regress_ch') k;
ROLLBACK TO a;
DO $$
BEGIN
    PERFORM apikeys.apikey_create('chain gone too', role => 'regress_ch');
    RAISE EXCEPTION 'undo';
EXCEPTION WHEN raise_exception THEN NULL;
END $$;
SAVEPOINT b;
SELECT apikey_disable(key_id) FROM keys WHERE name = 'chain bulk 1';
RELEASE b;
-- (audit_head writes the transaction's rows first: they are there after it)
SELECT seq AS inside_head FROM audit_head() \gset
SELECT :inside_head = (SELECT max(seq) FROM apikeys_internal.audit_log) AS head_is_last_inside;
SELECT ok, problem FROM audit_verify_detail();
SELECT key_id AS k5 FROM apikey_create('chain bulk last', role => 'regress_ch') \gset
COMMIT;
SELECT count(*) FILTER (WHERE key_id IN (SELECT key_id FROM keys WHERE name LIKE 'chain gone%')) AS rolled_back_rows,
       count(*) = max(seq) - min(seq) + 1 AS no_gap
  FROM apikeys_internal.audit_log;
SELECT c.seq = (SELECT max(seq) FROM apikeys_internal.audit_log) AS head_written,
       c.seq = (SELECT seq FROM apikeys_internal.audit_log WHERE key_id = :'k5') AS last_create_is_head
  FROM apikeys_internal.audit_chain c;
SELECT ok, problem FROM audit_verify_detail();
-- a savepoint that took the head's lock and rolled back leaves it free
BEGIN;
SAVEPOINT c;
SELECT count(*) AS created FROM apikey_create('chain gone 3', role => 'regress_ch');
ROLLBACK TO c;
SELECT count(*) AS locks_held FROM pg_locks
 WHERE relation = 'apikeys_internal.audit_chain'::regclass AND pid = pg_backend_pid()
   AND mode = 'ShareRowExclusiveLock';
SELECT count(*) AS created FROM apikey_create('chain bulk after', role => 'regress_ch');
COMMIT;
SELECT ok, problem FROM audit_verify_detail();
-- rows written early inside a savepoint (audit_head reads the chain) and
-- rolled back with it are written again at commit
BEGIN;
SELECT key_id AS k6 FROM apikey_create('chain bulk early', role => 'regress_ch') \gset
SAVEPOINT d;
SELECT seq > 0 AS read_inside FROM audit_head();
ROLLBACK TO d;
COMMIT;
SELECT count(*) AS audit_rows_of_k6 FROM apikeys_internal.audit_log WHERE key_id = :'k6';
SELECT ok, problem FROM audit_verify_detail();
SELECT count(*) AS deleted FROM (SELECT apikey_delete(key_id) FROM keys WHERE name LIKE 'chain bulk%') d;

-- Expiry: expires_soon in the listing, expiring(within), stale(unused_for).
SELECT name, expires_soon FROM keys WHERE name LIKE 'chain%' ORDER BY name;
SELECT name FROM expiring() WHERE name LIKE 'chain%';
SELECT name FROM expiring(within => '60 days') WHERE name LIKE 'chain%';
-- a key verified just now is not stale; one never used is, from its creation
SELECT pg_sleep(0.3);
SELECT (apikey_verify(:'t3')).status;
SELECT name FROM stale(unused_for => '0.2 seconds') WHERE name LIKE 'chain%' ORDER BY name;
SELECT name FROM stale(unused_for => '1 hour') WHERE name LIKE 'chain%';
SELECT name FROM stale(unused_for => '0') WHERE name LIKE 'chain%' ORDER BY name;

SELECT apikey_delete(key_id) FROM keys WHERE name LIKE 'chain%';
DROP ROLE regress_ch, regress_ch_admin;
