#!/usr/bin/env bash
# test/bench_import.sh: what `make bench-import` runs.
#
# Imported keys must not slow down native ones.  Measures, in one run on
# one throwaway cluster, the per-call cost of apikey_verify in an in-backend
# loop for native tokens, one-character typos of them, garbage and imported
# (non-native) tokens, in a catalog of native keys and in one of the same size
# where most were imported (IMPORT_BULK by SHA-256 in one statement, timed).
# Interleaved rounds, medians.
# Nothing here is an assertion: the figures go to the README.
#
#   BENCH_KEYS     native keys                       (default 10000)
#   IMPORT_BULK    keys imported by token_sha256     (default 100000)
#   IMPORT_TOKENS  keys imported by plaintext token  (default 10000)
#   BENCH_LOOP     verifications per loop            (default 20000)
#   BENCH_ROUNDS   rounds per figure                 (default 5)

cd "$(dirname "$0")/.."
. test/lib.sh

KEYS=${BENCH_KEYS:-10000}
BULK=${IMPORT_BULK:-100000}
ITOKENS=${IMPORT_TOKENS:-10000}
LOOP=${BENCH_LOOP:-20000}
ROUNDS=${BENCH_ROUNDS:-5}

ensure_deps
build_and_install
start_cluster
trap stop_cluster EXIT

# Two databases with catalogs of the same size, so that what is compared is
# the import path, not a bigger index: "native" holds BENCH_KEYS keys plus
# IMPORT_BULK + IMPORT_TOKENS more native keys; "imported" holds the same
# BENCH_KEYS keys plus as many imported ones.
for db in native imported; do
    psql -X -q -v ON_ERROR_STOP=1 -d postgres -c "CREATE DATABASE $db" >/dev/null
    psql -X -q -v ON_ERROR_STOP=1 -d $db <<SQL >/dev/null
CREATE EXTENSION apikeys CASCADE;
CREATE TABLE bench_tokens (id int PRIMARY KEY, token text);
INSERT INTO bench_tokens
    SELECT g, k.token FROM generate_series(1, $KEYS) g,
           LATERAL apikeys.apikey_create('bench ' || g, scopes => '{read}') k;
-- tokens of another system: 'sk-' and 48 hex digits
CREATE TABLE legacy_tokens (id int PRIMARY KEY, token text);
INSERT INTO legacy_tokens
    SELECT g, 'sk-' || left(encode(sha256(('legacy ' || g)::bytea), 'hex'), 48)
      FROM generate_series(1, $ITOKENS) g;
SQL
done
psql -X -q -v ON_ERROR_STOP=1 -d native \
    -c "SELECT count(*) FROM generate_series(1, $BULK + $ITOKENS) g, LATERAL apikeys.apikey_create('filler ' || g) k" \
    -c "VACUUM ANALYZE" >/dev/null

# Bulk import by SHA-256, one statement, then plaintext tokens.
BULK_S=$(psql -X -q -A -t -d imported -c "
    DO \$\$ DECLARE t0 timestamptz := clock_timestamp(); BEGIN
        PERFORM count(apikeys.apikey_import('bulk ' || g, token_sha256 => sha256(('bulk token ' || g)::bytea)))
           FROM generate_series(1, $BULK) g;
        RAISE NOTICE '%', round(extract(epoch FROM clock_timestamp() - t0)::numeric, 1);
    END \$\$;" 2>&1 | sed -n 's/^NOTICE:  //p')
psql -X -q -v ON_ERROR_STOP=1 -d imported \
    -c "SELECT count(apikeys.apikey_import('legacy ' || id, token => token, scopes => '{read}')) FROM legacy_tokens" \
    -c "VACUUM ANALYZE" >/dev/null
IMPORTED=$(psql -X -q -A -t -d imported -c "SELECT count(*) FROM apikeys.keys WHERE imported")
CATALOG=$(psql -X -q -A -t -d native -c "SELECT count(*) FROM apikeys.keys")

# microseconds per call of expression $2 over tokens of table $3, in database $1
loop_us() {
    psql -X -q -A -t -d "$1" -c "
        DO \$\$
        DECLARE t0 timestamptz; n int := $LOOP; toks text[];
        BEGIN
            SELECT array_agg(token ORDER BY id) INTO toks FROM $3;
            PERFORM $2 FROM unnest(toks[1:100]) AS tok;      -- warm up
            t0 := clock_timestamp();
            FOR i IN 1..n LOOP
                PERFORM $2 FROM (SELECT toks[1 + (i * 7919) % array_length(toks, 1)] AS tok) s;
            END LOOP;
            RAISE NOTICE '%', round(extract(epoch FROM clock_timestamp() - t0) * 1e6 / n, 2);
        END \$\$;" 2>&1 | sed -n 's/^NOTICE:  //p'
}
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }

NATIVE="(apikeys.apikey_verify(tok, 'read')).valid"
TYPO="(apikeys.apikey_verify(overlay(tok PLACING 'x' FROM 20 FOR 1), 'read')).valid"
GARBAGE="(apikeys.apikey_verify('sk-' || substr(tok, 5, 48))).valid"
LEGACY="(apikeys.apikey_verify(tok)).valid"
FLOOR="length(tok)"

# interleaved: each round measures both databases
declare -A runs
for _ in $(seq 1 "$ROUNDS"); do
    for db in native imported; do
        runs[$db floor]+=" $(loop_us $db "$FLOOR" bench_tokens)"
        runs[$db native]+=" $(loop_us $db "$NATIVE" bench_tokens)"
        runs[$db typo]+=" $(loop_us $db "$TYPO" bench_tokens)"
        runs[$db garbage]+=" $(loop_us $db "$GARBAGE" bench_tokens)"
    done
    runs[imported legacy]+=" $(loop_us imported "$LEGACY" legacy_tokens)"
done
m() { median ${runs[$1 $2]}; }

cat <<REPORT

apikeys import benchmark: PostgreSQL $("$PG_CONFIG" --version | awk '{print $2}'), $(nproc) cores, $CATALOG keys in each catalog

bulk import of $BULK keys by token_sha256, one statement: ${BULK_S} s ($(awk -v n="$BULK" -v s="$BULK_S" 'BEGIN { printf "%.0f", n / s }') keys/s)

in-backend loop, $LOOP verifications, microseconds per call, median of $ROUNDS interleaved rounds:
                                   all native     $IMPORTED of them imported
  no-op floor (length(token))      $(m native floor)           $(m imported floor)
  native token                     $(m native native)           $(m imported native)
  native token, one typo           $(m native typo)           $(m imported typo)
  garbage (not native-shaped)      $(m native garbage)           $(m imported garbage)
  imported token                   -              $(m imported legacy)
REPORT
