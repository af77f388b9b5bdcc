#!/usr/bin/env bash
# test/bench.sh: what `make bench` runs.
#
# Measures apikey_verify against a hand-written pgcrypto baseline (the table
# and SQL function an application would otherwise write) and a no-op floor,
# in one run on one throwaway cluster, and prints ratios.  A second set of
# keys has a rate limit, with usage counted (apikeys preloaded, the worker
# flushing): it is compared with the floor and with a hand-written baseline
# that UPDATEs a usage row per request.  Nothing here is an assertion: the
# figures go to the README's Performance section.
#
#   BENCH_KEYS      keys in the catalog            (default 10000)
#   BENCH_LOOP      verifications per in-backend loop (default 20000)
#   BENCH_SECONDS   seconds per pgbench run        (default 5)
#   BENCH_ROUNDS    interleaved pgbench rounds     (default 3; medians reported)
#   BENCH_CLIENTS   pgbench clients                (default 2)

cd "$(dirname "$0")/.."
. test/lib.sh

KEYS=${BENCH_KEYS:-10000}
LOOP=${BENCH_LOOP:-20000}
SECONDS_PER_RUN=${BENCH_SECONDS:-5}
ROUNDS=${BENCH_ROUNDS:-3}
CLIENTS=${BENCH_CLIENTS:-2}

ensure_deps
build_and_install
# Room in shared memory for both sets of keys (apikeys is preloaded).
# fsync on, as in production: the write-per-request baseline flushes WAL at
# every commit, as an application's would (verification writes nothing).
start_cluster "apikeys.max_tracked_keys = $((3 * KEYS))" "fsync = on"
trap stop_cluster EXIT
WORK=$PGTMP/bench
mkdir -p "$WORK"

psql -X -q -v ON_ERROR_STOP=1 -d postgres <<SQL >/dev/null
CREATE EXTENSION apikeys CASCADE;
-- the tokens the clients present (the benchmark's own copy)
CREATE TABLE bench_tokens (id int PRIMARY KEY, key_id text, token text);
INSERT INTO bench_tokens
    SELECT g, k.key_id, k.token FROM generate_series(1, $KEYS) g,
           LATERAL apikeys.apikey_create('bench ' || g, scopes => '{read}') k;
-- the same with a rate limit (enforced, never reached here)
CREATE TABLE bench_limited (id int PRIMARY KEY, key_id text, token text);
INSERT INTO bench_limited
    SELECT g, k.key_id, k.token FROM generate_series(1, $KEYS) g,
           LATERAL apikeys.apikey_create('limited ' || g, scopes => '{read}',
                                         rate_limit => '100000/second, 1000000000/day') k;

-- the baseline: what an application writes by hand with pgcrypto
CREATE TABLE pgcrypto_keys (key_id text PRIMARY KEY, hash bytea NOT NULL,
                            role name NOT NULL, scopes text[] NOT NULL,
                            revoked bool NOT NULL DEFAULT false,
                            expires_at timestamptz);
INSERT INTO pgcrypto_keys
    SELECT key_id, digest(substr(token, length(token) - 37, 32), 'sha256'),
           current_user, '{read}', false, NULL FROM bench_tokens;
CREATE FUNCTION pgcrypto_verify(tok text, want text)
RETURNS TABLE (valid bool, role name) LANGUAGE sql STABLE AS \$\$
    SELECT k.hash = digest(substr(tok, length(tok) - 37, 32), 'sha256')
           AND NOT k.revoked
           AND (k.expires_at IS NULL OR k.expires_at > now())
           AND (want IS NULL OR want = ANY (k.scopes)),
           k.role
      FROM pgcrypto_keys k
     WHERE k.key_id = split_part(tok, '_', 2)
\$\$;
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

# 1. In-backend loops: per-call cost without client round trips.
loop_us() {
    psql -X -q -A -t -d postgres -c "
        DO \$\$
        DECLARE t0 timestamptz; n int := $LOOP; r record; toks text[];
        BEGIN
            SELECT array_agg(token ORDER BY id) INTO toks FROM ${TOKENS:-bench_tokens};
            PERFORM $1 FROM unnest(toks[1:100]) AS tok;      -- warm up
            t0 := clock_timestamp();
            FOR i IN 1..n LOOP
                PERFORM $1 FROM (SELECT toks[1 + (i * 7919) % array_length(toks, 1)] AS tok) s;
            END LOOP;
            RAISE NOTICE '%', round(extract(epoch FROM clock_timestamp() - t0) * 1e6 / n, 2);
        END \$\$;" 2>&1 | sed -n 's/^NOTICE:  //p'
}
FLOOR_US=$(loop_us "length(tok)")
OURS_US=$(loop_us "(apikeys.apikey_verify(tok, 'read')).valid")
BASE_US=$(loop_us "(SELECT valid FROM pgcrypto_verify(tok, 'read'))")
# keys with a rate limit and usage counted: the same loop over their tokens
LIMITED_US=$(TOKENS=bench_limited loop_us "(apikeys.apikey_verify(tok, 'read')).valid")
# a token with one wrong character: rejected by the checksum, no table read
TYPO_FLOOR_US=$(loop_us "length(overlay(tok PLACING 'x' FROM 20 FOR 1))")
TYPO_US=$(loop_us "(apikeys.apikey_verify(overlay(tok PLACING 'x' FROM 20 FOR 1), 'read')).valid")

# 2. pgbench: whole statements from $CLIENTS clients over the Unix socket.
cat >"$WORK/floor.sql" <<'S'
\set id random(1, :keys)
SELECT length(token) FROM bench_tokens WHERE id = :id;
S
cat >"$WORK/apikeys.sql" <<'S'
\set id random(1, :keys)
SELECT (apikeys.apikey_verify(token, 'read')).valid FROM bench_tokens WHERE id = :id;
S
cat >"$WORK/pgcrypto.sql" <<'S'
\set id random(1, :keys)
SELECT v.valid FROM bench_tokens t, pgcrypto_verify(t.token, 'read') v WHERE t.id = :id;
S
cat >"$WORK/limited.sql" <<'S'
\set id random(1, :keys)
SELECT (apikeys.apikey_verify(token, 'read')).valid FROM bench_limited WHERE id = :id;
S
cat >"$WORK/write.sql" <<'S'
\set id random(1, :keys)
SELECT v.valid FROM bench_tokens t, pgcrypto_verify_write(t.token, 'read') v WHERE t.id = :id;
S
tps() {
    "$PGBIN/pgbench" -n -M prepared -c "$CLIENTS" -j "$CLIENTS" -T "$SECONDS_PER_RUN" \
        -D keys="$KEYS" -f "$WORK/$1.sql" postgres 2>/dev/null \
        | sed -n 's/^tps = \([0-9.]*\) .*/\1/p'
}
# Interleaved rounds, median of each: two cores make single runs noisy.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
floor_runs=(); ours_runs=(); base_runs=(); limited_runs=(); write_runs=()
for _ in $(seq 1 "$ROUNDS"); do
    floor_runs+=("$(tps floor)")
    ours_runs+=("$(tps apikeys)")
    base_runs+=("$(tps pgcrypto)")
    limited_runs+=("$(tps limited)")
    write_runs+=("$(tps write)")
done
FLOOR_TPS=$(median "${floor_runs[@]}")
OURS_TPS=$(median "${ours_runs[@]}")
BASE_TPS=$(median "${base_runs[@]}")
LIMITED_TPS=$(median "${limited_runs[@]}")
WRITE_TPS=$(median "${write_runs[@]}")
# every limited verification was counted (live + flushed), none refused
COUNTED=$(psql -X -q -A -t -d postgres -c "
    SELECT sum(u.uses) || ' uses, ' || sum(u.rate_limited) || ' rate limited, '
           || sum(u.unflushed) || ' not yet flushed'
      FROM apikeys.usage u JOIN bench_limited USING (key_id)")

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

cat <<EOF

apikeys benchmark: $KEYS keys, PostgreSQL $("$PG_CONFIG" --version | awk '{print $2}'), $(nproc) cores

in-backend loop ($LOOP verifications, microseconds per call):
  no-op floor (length(token))        $FLOOR_US
  apikey_verify (C)                  $OURS_US
  pgcrypto baseline (SQL function)   $BASE_US
  pgcrypto / apikeys                 $(ratio "$BASE_US" "$OURS_US")x
  a one-character typo               $TYPO_US (its floor: $TYPO_FLOOR_US)

pgbench, $CLIENTS clients, median of $ROUNDS interleaved ${SECONDS_PER_RUN}s runs, prepared statements (transactions per second):
  no-op floor                        $FLOOR_TPS
  apikey_verify                      $OURS_TPS
  pgcrypto baseline                  $BASE_TPS
  apikeys / floor                    $(ratio "$OURS_TPS" "$FLOOR_TPS")
  apikeys / pgcrypto                 $(ratio "$OURS_TPS" "$BASE_TPS")

with a rate limit and usage counted (shared memory, flushed every $(psql -X -A -t -d postgres -c 'SHOW apikeys.usage_flush_interval'); fsync $(psql -X -A -t -d postgres -c 'SHOW fsync')):
  in-backend loop, microseconds      $LIMITED_US (without: $OURS_US)
  apikey_verify, limited (tps)       $LIMITED_TPS
  write-per-request baseline (tps)   $WRITE_TPS
  limited / floor                    $(ratio "$LIMITED_TPS" "$FLOOR_TPS")
  limited / write-per-request        $(ratio "$LIMITED_TPS" "$WRITE_TPS")
  counted                            $COUNTED
EOF
