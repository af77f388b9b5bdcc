#!/usr/bin/env bash
# test/valgrind.sh: what `make test-valgrind` runs.
#
# Runs the pg_regress and isolation suites against a server running under
# valgrind's memcheck (every backend is a fork of the postmaster, so all of
# them are checked).  PostgreSQL itself is not built for valgrind here and
# reports its own benign findings (uninitialised padding written to disk and
# the like), so a report counts only when its stack passes through
# apikeys.so: the extension's code made the access, or handed the memory on.
# Exits non-zero on any such report or suite failure.  Takes minutes.
cd "$(dirname "$0")/.."
. test/lib.sh

ensure_deps     # (valgrind included)
echo "== build"
build_and_install

VGTMP=$(mktemp -d "${TMPDIR:-/tmp}/apikeys-vg.XXXXXX")
chmod 755 "$VGTMP"
mkdir "$VGTMP/logs"
as_root chown postgres "$VGTMP/logs"
cat >"$VGTMP/postgres" <<WRAP
#!/bin/sh
exec valgrind --quiet --tool=memcheck --error-limit=no --num-callers=40 \\
    --track-origins=yes --read-var-info=no --trace-children=no \\
    --log-file=$VGTMP/logs/%p.log \\
    $("$PG_CONFIG" --bindir)/postgres "\$@"
WRAP
chmod 755 "$VGTMP/postgres"
export POSTGRES_WRAPPER=$VGTMP/postgres PG_START_TIMEOUT=300
start_cluster "${SUITE_SETTINGS[@]}" "max_connections = 20"
trap 'stop_cluster; rm -rf "$VGTMP"' EXIT
echo "== cluster under valgrind: $PGDATA_DIR on port $PGPORT"

rc=0
run_suites_and_stop || rc=1

# One valgrind error record is a block of lines from "==PID== <kind>" to the
# next blank "==PID== " line; keep those that mention apikeys.so.
ours=$(cat "$VGTMP"/logs/*.log | awk '
    /^==[0-9]+== [A-Z]/ && !inrec { inrec = 1; rec = "" }
    inrec { rec = rec $0 "\n" }
    /^==[0-9]+== $/ && inrec { if (rec ~ /apikeys\.so/) { print rec; n++ } inrec = 0 }
    END { if (inrec && rec ~ /apikeys\.so/) { print rec; n++ } }')
all=$(cat "$VGTMP"/logs/*.log | grep -cE '^==[0-9]+== (Invalid|Conditional|Use of uninit|Syscall param|Mismatched|Source and destination)' || true)
echo "valgrind: $(ls "$VGTMP"/logs | wc -l) processes, $all reports in all, those through apikeys.so:"
if [ -n "$ours" ]; then
    { echo "$ours" | head -200 || true; }
    echo "valgrind ... FAILED"
    exit 1
fi
echo "(none)"
[ $rc -eq 0 ] || { echo "valgrind ... FAILED (suites)"; exit 1; }
echo "valgrind ... ok"
