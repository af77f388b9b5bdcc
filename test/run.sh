#!/usr/bin/env bash
# test/run.sh: what `make test` runs.
#
# Installs what is missing, builds with warnings as errors, installs the
# extension, starts a throwaway cluster, runs every suite (pg_regress,
# isolation, TAP), stops the cluster and exits non-zero on any failure,
# printing the diff or the failing test's log.

cd "$(dirname "$0")/.."
. test/lib.sh

ensure_deps
echo "== build (warnings are errors)"
build_and_install

# The regression database is the one the apikeys worker serves, so the
# suites see usage counted and quotas allowed.
start_cluster "${SUITE_SETTINGS[@]}"
trap stop_cluster EXIT
echo "== cluster: $PGDATA_DIR on port $PGPORT"

PGXS_DIR=$("$PG_CONFIG" --pkglibdir)/pgxs
RESULTS=$PGTMP/results
mkdir -p "$RESULTS"
passed=0
failed=0

suite_result() {
    if [ "$1" -eq 0 ]; then passed=$((passed + 1)); else failed=$((failed + 1)); fi
}

echo "== pg_regress"
rc=0
run_suite regress 2>&1 | tee "$RESULTS/regress.out" || rc=$?
[ $rc -eq 0 ] || cat "$RESULTS/regress/regression.diffs" 2>/dev/null || true
suite_result $rc

echo "== isolation"
rc=0
run_suite isolation 2>&1 | tee "$RESULTS/isolation.out" || rc=$?
[ $rc -eq 0 ] || cat "$RESULTS/isolation/regression.diffs" 2>/dev/null || true
suite_result $rc

echo "== TAP"
# TAP tests start clusters of their own, so they run as the postgres user
# in a directory it owns.
TAPDIR=$PGTMP/tap
mkdir -p "$TAPDIR"
cp -r test/t "$TAPDIR/t"
# 005_pgbouncer.pl and 045_postgrest_http.pl run the README's PostgREST
# setup as written; 045 and later run the PostgREST binary that ensure_deps
# installed (POSTGREST_BIN, see ensure_postgrest in test/lib.sh).
cp README.md "$TAPDIR/"
as_root chown -R postgres "$TAPDIR"
rc=0
(cd "$TAPDIR" && as_postgres env \
    PATH="$PGBIN:$PATH" \
    PERL5LIB="$PGXS_DIR/src/test/perl" \
    PG_REGRESS="$PGXS_DIR/src/test/regress/pg_regress" \
    TESTDIR="$TAPDIR" PG_CONFIG="$PG_CONFIG" \
    TESTDATADIR="$TAPDIR/tmp_check" TESTLOGDIR="$TAPDIR/tmp_check/log" \
    POSTGREST_BIN="$POSTGREST_BIN" POSTGREST_OLD_BIN="$POSTGREST_OLD_BIN" \
    prove --timer t/*.pl) 2>&1 | tee "$RESULTS/tap.out" || rc=$?
# prove exits 0 when it finds no test at all: that is a failure here.
grep -q '^Result: PASS' "$RESULTS/tap.out" || rc=1
if [ $rc -ne 0 ]; then
    for f in "$TAPDIR"/tmp_check/log/regress_log_*; do
        [ -f "$f" ] && { echo "---- $f"; tail -n 80 "$f"; }
    done
fi
suite_result $rc

echo "== fuzz (the token parser and the apikey type, ASan, UBSan, LSan; make fuzz runs longer)"
rc=0
bash test/fuzz/run.sh "${FUZZ_SECONDS:-20}" 2>&1 | tee "$RESULTS/fuzz.out" || rc=$?
grep -q '^fuzz_apikey \.\.\. ok$' "$RESULTS/fuzz.out" || rc=1
suite_result $rc

# One line for the whole run: test files passed and failed, all suites
# (pg_regress prints `test NAME ... ok` up to 15, TAP `ok N - NAME` from 16).
files_ok=$(cat "$RESULTS/regress.out" "$RESULTS/isolation.out" "$RESULTS/tap.out" "$RESULTS/fuzz.out" 2>/dev/null \
    | grep -cE '^(test | +)?[A-Za-z0-9_/.]+ +\.\.\.* +ok( |$)|^ok +[0-9]+ +- +[A-Za-z0-9_]+ |^\[[0-9:]+\] t/[^ ]+ \.+ ok' || true)
# A test that never reported ok (a crash, a missing expected file, an
# aborted suite) counts as failed.
files_total=$(( $(make -s --no-print-directory print-regress | wc -w) \
              + $(make -s --no-print-directory print-isolation | wc -w) \
              + $(ls test/t/*.pl | wc -l) + 1 ))
files_failed=$((files_total - files_ok))
echo "suites: $passed passed, $failed failed"
echo "tests: $files_ok passed, $files_failed failed"
[ "$failed" -eq 0 ] && [ "$files_failed" -eq 0 ]
