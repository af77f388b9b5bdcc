#!/usr/bin/env bash
# test/bench.sh: what `make bench` runs.
#
# Measures apikeys against the hand-written pgcrypto baseline kept in
# test/bench/pgcrypto_baseline.sql and against a no-verify floor, in one run
# on one throwaway cluster, and prints figures side by side with their
# ratios.  A second set of keys has a rate limit.  The pgbench runs come in
# two phases: verification alone (the worker pointed at another database,
# so nothing is counted here), then with usage counted (the worker serving
# this database and flushing every key in every interval): keys without
# and with a limit, and a hand-written baseline that UPDATEs a usage row
# per request.  The batch runs count usage.  Nothing here is an assertion:
# the figures go to the README's Performance section.
#
#   BENCH_KEYS       keys in the catalog, all presented by the clients  (default 100000)
#   BENCH_CREATE     keys created by the create statement measured     (default 2000)
#   BENCH_BATCH      keys created per statement while setting up      (default 2000)
#   BENCH_REPEAT     runs of each batch and create measurement (median) (default 5)
#   BENCH_SECONDS    seconds per pgbench run, the second half measured (default 20:
#                    the half spans two of the worker's 5 s flushes)
#   BENCH_ROUNDS     interleaved pgbench rounds (median)               (default 3)
#   BENCH_CLIENTS    pgbench clients                                   (default 2)
#   BENCH_STREAM     seconds of each verify-while-writing stream       (default 5)
#
# The key cache is sized to hold every key (apikeys.cache_size = twice
# BENCH_KEYS, for both sets): the figures are the steady state of a service
# whose active keys fit its cache; the cost of a miss is measured on its own.

cd "$(dirname "$0")/.."
. test/lib.sh

KEYS=${BENCH_KEYS:-100000}
CREATE_N=${BENCH_CREATE:-2000}
BATCH=${BENCH_BATCH:-2000}
REPEAT=${BENCH_REPEAT:-5}
SECONDS_PER_RUN=${BENCH_SECONDS:-20}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENTS=${BENCH_CLIENTS:-2}
STREAM=${BENCH_STREAM:-5}
CACHE_SIZE=$(( 2 * KEYS > 10000 ? 2 * KEYS : 10000 ))

ensure_deps
build_and_install
# Room in shared memory for both sets of keys (apikeys is preloaded), all of
# one role in one database: the whole table is theirs to share.
# fsync on, as in production: the write-per-request baseline flushes WAL at
# every commit, as an application's would (verification writes nothing).
start_cluster "apikeys.max_tracked_keys = $((3 * KEYS))" "fsync = on" \
    "apikeys.tracked_share_per_role = 100" "apikeys.tracked_share_per_database = 100"
trap stop_cluster EXIT
WORK=$PGTMP/bench
mkdir -p "$WORK"

q() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres "$@"; }

q <<SQL >/dev/null
CREATE EXTENSION apikeys CASCADE;
ALTER DATABASE postgres SET apikeys.cache_size = $CACHE_SIZE;
\i test/bench/pgcrypto_baseline.sql
-- the tokens the clients present (the benchmark's own copy), created by
-- statements of $BATCH keys (the audit chain's head row is updated once per
-- key, and a transaction's own versions of it are scanned on every update)
CREATE TABLE bench_tokens (id int PRIMARY KEY, key_id text, token text);
SELECT format(\$f\$INSERT INTO bench_tokens
    SELECT g, k.key_id, k.token FROM generate_series(%s, %s) g,
           LATERAL apikeys.apikey_create('bench ' || g, scopes => '{read}') k\$f\$,
              b, least(b + $BATCH - 1, $KEYS))
  FROM generate_series(1, $KEYS, $BATCH) b \\gexec
-- the same with a rate limit (enforced, never reached here)
CREATE TABLE bench_limited (id int PRIMARY KEY, key_id text, token text);
SELECT format(\$f\$INSERT INTO bench_limited
    SELECT g, k.key_id, k.token FROM generate_series(%s, %s) g,
           LATERAL apikeys.apikey_create('limited ' || g, scopes => '{read}',
                                         rate_limit => '100000/second, 1000000000/day') k\$f\$,
              b, least(b + $BATCH - 1, $KEYS))
  FROM generate_series(1, $KEYS, $BATCH) b \\gexec
-- the same keys in the baseline's table
INSERT INTO pgcrypto_keys (key_id, hash, name, role, scopes)
    SELECT key_id, digest(substr(token, length(token) - 37, 32), 'sha256'),
           'bench', current_user, '{read}' FROM bench_tokens;
-- the write-per-request baseline: usage kept by an UPDATE per verification
CREATE TABLE pgcrypto_usage (key_id text PRIMARY KEY, uses int8 NOT NULL DEFAULT 0,
                             last_used_at timestamptz);
INSERT INTO pgcrypto_usage (key_id) SELECT key_id FROM pgcrypto_keys;
CREATE FUNCTION pgcrypto_verify_write(tok text, want text)
RETURNS TABLE (valid bool, role name) LANGUAGE sql VOLATILE AS \$\$
    UPDATE pgcrypto_usage u SET uses = u.uses + 1, last_used_at = now()
      FROM pgcrypto_keys k
     WHERE k.key_id = split_part(tok, '_', 2) AND u.key_id = k.key_id
    RETURNING k.hash = digest(substr(tok, length(tok) - 37, 32), 'sha256')
              AND NOT k.revoked
              AND (k.expires_at IS NULL OR k.expires_at > now())
              AND (want IS NULL OR want = ANY (k.scopes)),
              k.role
\$\$;
VACUUM ANALYZE;
SQL

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }
per() { awk -v a="$1" -v b="$2" -v n="$3" 'BEGIN { printf "%.3f", (a - b) * 1000 / n }'; }

# Median wall time (ms) of one statement, run $REPEAT times after a warm-up
# run, each a statement of its own (the one-verification-per-statement rule
# applies within a statement), in one session.  Extra arguments are SQL run
# first in the session.
time_ms() {
    local stmt=$1; shift
    local runs
    runs=$( { for s in "$@"; do echo "$s;"; done
              echo "$stmt;"
              echo '\timing on'
              for _ in $(seq 1 "$REPEAT"); do echo "$stmt;"; done; } \
            | q 2>&1 | sed -n 's/^Time: \([0-9.]*\) ms.*/\1/p')
    # shellcheck disable=SC2086
    median $runs
}

# 1. Batch: one statement verifying every token, against the same
# statement without verification.
B_FLOOR=$(time_ms "SELECT count(*) FROM bench_tokens WHERE length(token) > 0")
B_OURS=$(time_ms "SELECT count(*) FROM bench_tokens WHERE (apikeys.apikey_verify(token, 'read')).valid")
B_BOOL=$(time_ms "SELECT count(*) FROM bench_tokens WHERE apikeys.apikey_is_valid(token, 'read')")
B_BASE=$(time_ms "SELECT count(*) FROM bench_tokens t WHERE (SELECT v.valid FROM pgcrypto_verify(t.token, 'read') v)")
# keys with a rate limit, usage counted: the same statement over their tokens
B_LIMITED=$(time_ms "SELECT count(*) FROM bench_limited WHERE (apikeys.apikey_verify(token, 'read')).valid")
# every verification a cache miss: the cache turned off
B_MISS=$(time_ms "SELECT count(*) FROM bench_tokens WHERE (apikeys.apikey_verify(token, 'read')).valid" \
         "SET apikeys.cache_size = 0")
# a one-character typo: rejected by the checksum, no lookup
B_TYPO=$(time_ms "SELECT count(*) FROM bench_tokens WHERE (apikeys.apikey_verify(overlay(token PLACING 'x' FROM 20 FOR 1), 'read')).valid")
B_TYPO_FLOOR=$(time_ms "SELECT count(*) FROM bench_tokens WHERE length(overlay(token PLACING 'x' FROM 20 FOR 1)) > 0")

# the memory the cache takes per key, every key cached
CACHE_BYTES=$(q -c "SELECT count(*) FILTER (WHERE apikeys.apikey_is_valid(token)) FROM bench_tokens" \
                -c "SELECT round(memory_bytes::numeric / entries) FROM apikeys.apikey_cache_stats()" | tail -n 1)

OURS_US=$(per "$B_OURS" "$B_FLOOR" "$KEYS")
BOOL_US=$(per "$B_BOOL" "$B_FLOOR" "$KEYS")
BASE_US=$(per "$B_BASE" "$B_FLOOR" "$KEYS")
LIMITED_US=$(per "$B_LIMITED" "$B_FLOOR" "$KEYS")
MISS_US=$(per "$B_MISS" "$B_FLOOR" "$KEYS")
TYPO_US=$(per "$B_TYPO" "$B_TYPO_FLOOR" "$KEYS")

# 2. pgbench: one verification per transaction, whole statements from
# $CLIENTS clients over the Unix socket, prepared.
cat >"$WORK/floor.sql" <<'S'
\set id random(1, :keys)
SELECT length(token) > 0 FROM bench_tokens WHERE id = :id;
S
cat >"$WORK/apikeys.sql" <<'S'
\set id random(1, :keys)
SELECT (apikeys.apikey_verify(token, 'read')).valid FROM bench_tokens WHERE id = :id;
S
# the baseline as a planner-friendly caller writes it (the SQL function is
# inlined into the query), and called the way apikey_verify is
cat >"$WORK/pgcrypto.sql" <<'S'
\set id random(1, :keys)
SELECT v.valid FROM bench_tokens t, pgcrypto_verify(t.token, 'read') v WHERE t.id = :id;
S
cat >"$WORK/pgcrypto_call.sql" <<'S'
\set id random(1, :keys)
SELECT (pgcrypto_verify(token, 'read')).valid FROM bench_tokens WHERE id = :id;
S
cat >"$WORK/limited.sql" <<'S'
\set id random(1, :keys)
SELECT (apikeys.apikey_verify(token, 'read')).valid FROM bench_limited WHERE id = :id;
S
cat >"$WORK/write.sql" <<'S'
\set id random(1, :keys)
SELECT v.valid FROM bench_tokens t, pgcrypto_verify_write(t.token, 'read') v WHERE t.id = :id;
S
# Steady state: the mean of the per-second rates over the second half of
# the run.  Every pgbench run opens new connections, whose key caches start
# empty; by half time each client has drawn every key several times over
# (a cache miss costs a few microseconds, measured above), and the floor and
# the baselines are measured over the same seconds.
tps() {
    "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -T "$SECONDS_PER_RUN" -P 1 \
        -D keys="$KEYS" -f "$WORK/$1.sql" postgres 2>&1 >/dev/null \
        | awk -v half="$SECONDS_PER_RUN" '
            /^progress: / { t = $2 + 0; if (t > half / 2) { sum += $4; n++ } }
            END { if (n) printf "%.0f\n", sum / n }'
}
# Usage is counted only in the database the worker serves
# (apikeys.database, a restart): pointing it at an empty database turns
# counting off here, for the verification-alone runs.
usage_database() {
    q -c "ALTER SYSTEM SET apikeys.database = '$1'" >/dev/null
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGLOG" -w -m fast restart >/dev/null
}
q -c "CREATE DATABASE bench_elsewhere" >/dev/null
# Interleaved rounds, median of each: two cores make single runs noisy.
# First verification alone (usage not counted), then everything counted,
# each phase against its own floor.
floor_runs=(); ours_runs=(); base_runs=(); call_runs=()
floor2_runs=(); counted_runs=(); limited_runs=(); write_runs=()
usage_database bench_elsewhere
for _ in $(seq 1 "$ROUNDS"); do
    floor_runs+=("$(tps floor)")
    ours_runs+=("$(tps apikeys)")
    base_runs+=("$(tps pgcrypto)")
    call_runs+=("$(tps pgcrypto_call)")
done
usage_database postgres
for _ in $(seq 1 "$ROUNDS"); do
    floor2_runs+=("$(tps floor)")
    counted_runs+=("$(tps apikeys)")
    limited_runs+=("$(tps limited)")
    write_runs+=("$(tps write)")
done
FLOOR_TPS=$(median "${floor_runs[@]}")
OURS_TPS=$(median "${ours_runs[@]}")
BASE_TPS=$(median "${base_runs[@]}")
CALL_TPS=$(median "${call_runs[@]}")
FLOOR2_TPS=$(median "${floor2_runs[@]}")
COUNTED_TPS=$(median "${counted_runs[@]}")
LIMITED_TPS=$(median "${limited_runs[@]}")
WRITE_TPS=$(median "${write_runs[@]}")
# every limited verification was counted (live + flushed), none refused
COUNTED=$(q -c "
    SELECT sum(u.uses) || ' uses, ' || sum(u.rate_limited) || ' rate limited, '
           || sum(u.unflushed) || ' not yet flushed'
      FROM apikeys.usage u JOIN bench_limited USING (key_id)")
# microseconds a verification adds to a transaction, per client
over() { awk -v t="$1" -v f="$2" -v c="$CLIENTS" 'BEGIN { printf "%.2f", (c / t - c / f) * 1e6 }'; }

# 3. Create: keys created by one statement, one function call per key.
C_OURS=$(time_ms "SELECT count(*) FROM generate_series(1, $CREATE_N) g, LATERAL apikeys.apikey_create('bench create ' || g, scopes => '{read}') k")
C_BASE=$(time_ms "SELECT count(*) FROM generate_series(1, $CREATE_N) g, LATERAL pgcrypto_create('bench create ' || g, '{read}') k")
C_OURS_US=$(per "$C_OURS" 0 "$CREATE_N")
C_BASE_US=$(per "$C_BASE" 0 "$CREATE_N")

# 4. The cache while keys are written: one session verifies random keys
# (each verification a lookup of its own) for $STREAM seconds while another
# client creates keys, then while it updates keys (every update invalidates
# every cache, by design).
cat >"$WORK/create_stream.sql" <<'S'
SELECT count(*) FROM apikeys.apikey_create('stream', scopes => '{read}');
S
cat >"$WORK/update_stream.sql" <<'S'
\set id random(1, 100)
SELECT apikeys.apikey_update(key_id, metadata => jsonb_build_object('n', :id)) FROM bench_tokens WHERE id = :id;
S
stream() {
    "$PGBIN/pgbench" -n -c 1 -T "$STREAM" -f "$WORK/$1.sql" postgres 2>/dev/null \
        | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' >"$WORK/$1.count" &
    local writer=$!
    q <<SQL
SELECT count(*) FILTER (WHERE apikeys.apikey_is_valid(token, 'read')) FROM bench_tokens;
CREATE TEMP TABLE s0 AS SELECT * FROM apikeys.apikey_cache_stats();
DO \$\$
DECLARE
    t0 timestamptz := clock_timestamp();
    toks text[];
    i int := 0;
BEGIN
    SELECT array_agg(token ORDER BY id) INTO toks FROM bench_tokens;
    WHILE clock_timestamp() < t0 + interval '$STREAM seconds' LOOP
        i := i + 1;
        -- a distinct origin per call: a lookup, not a repeat
        PERFORM apikeys.apikey_is_valid(toks[1 + (i::bigint * 7919) % array_length(toks, 1)],
                                        'read', NULL, 'https://h' || i);
    END LOOP;
END \$\$;
SELECT (s.hits - s0.hits) || ' ' || (s.misses - s0.misses) || ' ' || (s.invalidations - s0.invalidations)
  FROM apikeys.apikey_cache_stats() s, s0;
SQL
    wait "$writer"
}
read -r CS_HITS CS_MISSES CS_INVAL < <(stream create_stream | tail -n 1)
CS_WRITES=$(cat "$WORK/create_stream.count")
read -r US_HITS US_MISSES US_INVAL < <(stream update_stream | tail -n 1)
US_WRITES=$(cat "$WORK/update_stream.count")
hitrate() { awk -v h="$1" -v m="$2" 'BEGIN { printf "%.2f%%", 100 * h / (h + m) }'; }

cat <<EOF

apikeys benchmark: $KEYS keys, PostgreSQL $("$PG_CONFIG" --version | awk '{print $2}'), $(nproc) cores, apikeys.cache_size = $CACHE_SIZE
(make bench; BENCH_KEYS=$KEYS BENCH_CREATE=$CREATE_N BENCH_BATCH=$BATCH BENCH_REPEAT=$REPEAT BENCH_SECONDS=$SECONDS_PER_RUN BENCH_ROUNDS=$ROUNDS BENCH_CLIENTS=$CLIENTS BENCH_STREAM=$STREAM)

batch, one statement over every token (median of $REPEAT), microseconds per verification above the floor:
  floor: the statement without verification   $(per "$B_FLOOR" 0 "$KEYS") per row
  apikey_verify(...).valid                    $OURS_US
  apikey_is_valid(...)                        $BOOL_US
  pgcrypto baseline                           $BASE_US
  baseline / apikey_verify                    $(ratio "$BASE_US" "$OURS_US")x
  cache miss (apikeys.cache_size = 0)         $MISS_US   (a miss costs $(awk -v a="$MISS_US" -v b="$OURS_US" 'BEGIN { printf "%.3f", a - b }') more)
  one-character typo (checksum, no lookup)    $TYPO_US
  cache memory per key                        $CACHE_BYTES bytes (table and allocator overhead included)

pgbench, one verification per transaction, $CLIENTS clients, -M prepared, median of $ROUNDS interleaved ${SECONDS_PER_RUN}s runs
(tps over each run's second half, caches warm), verification alone (usage not counted: the worker serves another database):
  floor                                       $(printf '%.0f' "$FLOOR_TPS")
  apikey_verify                               $(printf '%.0f' "$OURS_TPS")   (+$(over "$OURS_TPS" "$FLOOR_TPS") us per transaction)
  pgcrypto baseline, inlined FROM form        $(printf '%.0f' "$BASE_TPS")   (+$(over "$BASE_TPS" "$FLOOR_TPS") us)
  pgcrypto baseline, called like apikeys      $(printf '%.0f' "$CALL_TPS")   (+$(over "$CALL_TPS" "$FLOOR_TPS") us)
  apikeys / floor                             $(ratio "$OURS_TPS" "$FLOOR_TPS")
  apikeys / baseline (inlined, called)        $(ratio "$OURS_TPS" "$BASE_TPS")x, $(ratio "$OURS_TPS" "$CALL_TPS")x

with usage counted (shared memory, flushed every $(q -c 'SHOW apikeys.usage_flush_interval'), every key active in every flush; fsync $(q -c 'SHOW fsync')):
  floor                                       $(printf '%.0f' "$FLOOR2_TPS")
  apikey_verify, no limit                     $(printf '%.0f' "$COUNTED_TPS")   (+$(over "$COUNTED_TPS" "$FLOOR2_TPS") us)
  apikey_verify, rate limit                   $(printf '%.0f' "$LIMITED_TPS")   (+$(over "$LIMITED_TPS" "$FLOOR2_TPS") us)
  write-per-request baseline                  $(printf '%.0f' "$WRITE_TPS")
  no limit / floor                            $(ratio "$COUNTED_TPS" "$FLOOR2_TPS")
  limited / floor                             $(ratio "$LIMITED_TPS" "$FLOOR2_TPS")
  limited / write-per-request                 $(ratio "$LIMITED_TPS" "$WRITE_TPS")x
  batch with a limit, us per verification     $LIMITED_US (without a limit: $OURS_US; the batch runs count usage)
  counted                                     $COUNTED

create, $CREATE_N keys in one statement (median of $REPEAT), microseconds per key:
  apikey_create (with audit)                  $C_OURS_US
  pgcrypto baseline                           $C_BASE_US
  apikeys / baseline                          $(ratio "$C_OURS_US" "$C_BASE_US")x

key cache of a session verifying for ${STREAM}s while another client writes:
  during $CS_WRITES creates                    hit rate $(hitrate "$CS_HITS" "$CS_MISSES") ($CS_HITS hits, $CS_MISSES misses, $CS_INVAL invalidations)
  during $US_WRITES updates                    hit rate $(hitrate "$US_HITS" "$US_MISSES") ($US_HITS hits, $US_MISSES misses, $US_INVAL invalidations)
EOF
