#!/usr/bin/env bash
# test/ubsan.sh: what `make test-ubsan` runs.
#
# Builds the extension with UndefinedBehaviorSanitizer (gcc; -fno-sanitize-
# recover, so a finding aborts the backend), installs it into a private copy
# of the PostgreSQL installation (the system directories are not touched),
# and runs the pg_regress and isolation suites against it.  Fails on any
# suite failure or any sanitizer report in the server log.
#
# AddressSanitizer: test/asan.sh (make test-asan).
cd "$(dirname "$0")/.."
. test/lib.sh
ensure_deps

sanitizer_setup ubsan "-fsanitize=undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer" "-fsanitize=undefined"

cat >"$WORK/postgres" <<WRAP
#!/bin/sh
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
exec $WORK/pg/usr/lib/postgresql/$PG_MAJOR/bin/postgres "\$@"
WRAP
chmod 755 "$WORK/postgres"
export POSTGRES_WRAPPER=$WORK/postgres PG_START_TIMEOUT=120
start_cluster "${SUITE_SETTINGS[@]}"
echo "== cluster with sanitizers: $PGDATA_DIR on port $PGPORT"

rc=0
run_suites_and_stop || rc=1
reports=$(grep -cE 'runtime error:|UndefinedBehaviorSanitizer' "$PGLOG" || true)
echo "sanitizer reports in the server log: $reports"
if [ "$reports" -ne 0 ]; then
    { grep -A30 -E 'runtime error:|UndefinedBehaviorSanitizer' "$PGLOG" | head -120 || true; }
    echo "ubsan ... FAILED"
    exit 1
fi
[ $rc -eq 0 ] || { echo "ubsan ... FAILED (suites)"; exit 1; }
# the build really was instrumented
handlers=$(nm -D "$WORK/pg/usr/lib/postgresql/$PG_MAJOR/lib/apikeys.so" | grep -c __ubsan_handle || true)
[ "$handlers" -gt 0 ] || { echo "ubsan ... FAILED (not instrumented)"; exit 1; }
echo "ubsan ... ok"
