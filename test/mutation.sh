#!/usr/bin/env bash
# test/mutation.sh: `make mutation`.  Applies each mutant of test/mutants/
# (one small, plausible mistake each) to a clean copy of the tree, builds it
# into a private copy of the server installation (never the system one),
# runs the suites the mutant names, and reports whether some test failed
# (the mutant is killed) or every one passed (it survived: a test is
# missing).  Prints `killed K of N`, the survivors, and the mutants marked
# equivalent with the reason; exits non-zero when one survived or did not
# apply.
#
#   test/mutation.sh [NAME...]   only the mutants named (file names without .mut)
#
# Environment: MUTANT_TIMEOUT (seconds per mutant, default 600; a mutant
# still running then counts as killed, as a hang), FUZZ_SECONDS (fuzz runs,
# default 20), MUTATION_KEEP=1 keeps the work directory.
#
# A mutant file, test/mutants/NAME.mut:
#   # mistake: what error it models (one line)
#   # file: the source file it changes
#   # tests: the suites that must catch it: regress names (sql/NAME.sql),
#   #        isolation specs (test/specs/NAME.spec), TAP files (t/NNN_x.pl),
#   #        and `fuzz` (test/fuzz/run.sh)
#   # equivalent: why no test can tell it apart (optional; then not run)
#   and then the sed script that makes the change (it must change the file).
set -uo pipefail
# internal: `mutation.sh --suites TESTS...` runs the suites in the current
# directory (a mutated copy), with PG_CONFIG, WORK and the rest exported.
if [ "${1:-}" != "--suites" ]; then
    cd "$(dirname "$0")/.."
fi
. test/lib.sh
set +e

TIMEOUT=${MUTANT_TIMEOUT:-600}
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
REPO=$PWD

# Run the suites named ($@) against the build in the current directory; 0
# if all pass, else prints the first failing one.  Each command has the
# mutant's timeout (124: a hang, which kills the mutant too).
run_suites() {
    local regress=() isolation=() tap=() fuzz=0 t rc=0
    for t in "$@"; do
        case $t in
            t/*.pl) tap+=("$t") ;;
            fuzz) fuzz=1 ;;
            *) if [ -f "sql/$t.sql" ]; then regress+=("$t")
               elif [ -f "test/specs/$t.spec" ]; then isolation+=("$t")
               else echo "unknown suite $t"; return 3; fi ;;
        esac
    done
    if [ ${#regress[@]} -gt 0 ] || [ ${#isolation[@]} -gt 0 ]; then
        start_cluster "${SUITE_SETTINGS[@]}" >/dev/null 2>&1 || { echo "cluster did not start"; return 1; }
        if [ ${#regress[@]} -gt 0 ]; then
            timeout "$TIMEOUT" "$PGXS_DIR/src/test/regress/pg_regress" --inputdir=. --outputdir="$PGTMP/regress" \
                --bindir="$PGBIN" --host="$PGSOCK" --port="$PGPORT" --user=postgres \
                --dbname=contrib_regression --load-extension=pgcrypto --load-extension=apikeys \
                setup "${regress[@]}" >"$PGTMP/regress.out" 2>&1 || {
                rc=1; echo "regress: $(grep -E 'FAILED|failed \(' "$PGTMP/regress.out" | sed 's/ \.\.\..*//; s/^test //' | tr -s ' ' | tr '\n' ' ' | sed 's/ *$//')"; }
        fi
        if [ $rc -eq 0 ] && [ ${#isolation[@]} -gt 0 ]; then
            timeout "$TIMEOUT" "$PGXS_DIR/src/test/isolation/pg_isolation_regress" --inputdir=test --outputdir="$PGTMP/isolation" \
                --bindir="$PGBIN" --host="$PGSOCK" --port="$PGPORT" --user=postgres \
                --dbname=isolation_regression --load-extension=pgcrypto --load-extension=apikeys \
                "${isolation[@]}" >"$PGTMP/isolation.out" 2>&1 || {
                rc=1; echo "isolation: $(grep -E 'FAILED|failed \(' "$PGTMP/isolation.out" | sed 's/ \.\.\..*//; s/^test //' | tr -s ' ' | tr '\n' ' ' | sed 's/ *$//')"; }
        fi
        stop_cluster
    fi
    if [ $rc -eq 0 ] && [ ${#tap[@]} -gt 0 ]; then
        local tapdir
        tapdir=$(mktemp -d "$WORK/tap.XXXXXX"); chmod 755 "$tapdir"
        cp -r test/t "$tapdir/t"; cp README.md "$tapdir/"
        as_root chown -R postgres "$tapdir"
        (cd "$tapdir" && timeout "$TIMEOUT" runuser -u postgres -- env PATH="$PGBIN:$PATH" PERL5LIB="$PGXS_DIR/src/test/perl" \
            PG_REGRESS="$PGXS_DIR/src/test/regress/pg_regress" TESTDIR="$tapdir" PG_CONFIG="$PG_CONFIG" \
            POSTGREST_BIN="${POSTGREST_BIN:-}" prove "${tap[@]}") >"$tapdir.out" 2>&1 || {
            rc=1; echo "tap: $(grep -E '^t/.*(Failed|Dubious|Wstat)' "$tapdir.out" | cut -d' ' -f1 | sort -u | tr '\n' ' ')"; }
        as_root rm -rf "$tapdir"
    fi
    if [ $rc -eq 0 ] && [ $fuzz -eq 1 ]; then
        timeout "$TIMEOUT" bash test/fuzz/run.sh "$FUZZ_SECONDS" >"$WORK/fuzz.out" 2>&1 || { rc=1; echo "fuzz: fuzz_apikey"; }
    fi
    return $rc
}

if [ "${1:-}" = "--suites" ]; then
    shift
    run_suites "$@"
    exit $?
fi

mutants=()
if [ $# -gt 0 ]; then
    for n in "$@"; do mutants+=("test/mutants/${n%.mut}.mut"); done
else
    mutants=(test/mutants/*.mut)
fi

field() { sed -n "s/^# $1: *//p" "$2" | head -1; }

ensure_deps >/dev/null
WORK=$(mktemp -d "${TMPDIR:-/tmp}/apikeys-mutation.XXXXXX")
chmod 755 "$WORK"
[ -n "${MUTATION_KEEP:-}" ] || trap 'rm -rf "$WORK"' EXIT
echo "== private server tree and clean build in $WORK"
private_build "$WORK" "" "" >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 2; }
mkdir -p "$WORK/clean"
(cd "$WORK/src" && tar -cf - --exclude='*.o' --exclude='*.so' --exclude='*.bc' \
    --exclude='apikeys-scan' .) | tar -xf - -C "$WORK/clean"
PGXS_DIR=$("$PG_CONFIG" --pkglibdir)/pgxs
PGBIN=$("$PG_CONFIG" --bindir)

killed=0 total=0 survivors=() equivalents=() broken=()
for m in "${mutants[@]}"; do
    name=$(basename "$m" .mut)
    [ -f "$m" ] || { broken+=("$name: no such mutant"); continue; }
    mistake=$(field mistake "$m"); file=$(field file "$m"); tests=$(field tests "$m")
    equivalent=$(field equivalent "$m")
    if [ -n "$equivalent" ]; then
        equivalents+=("$name ($mistake): $equivalent")
        echo "equivalent $name: $equivalent"
        continue
    fi
    total=$((total + 1))
    # a clean copy of every source file, then the one change
    (cd "$WORK/clean" && tar -cf - .) | (cd "$WORK/src" && tar -xmf -)
    sed -e '/^#/d' "$m" >"$WORK/mutant.sed"
    sed -i -f "$WORK/mutant.sed" "$WORK/src/$file"
    if cmp -s "$WORK/src/$file" "$WORK/clean/$file"; then
        broken+=("$name: the sed script does not change $file")
        echo "BROKEN $name: the sed script does not change $file"
        continue
    fi
    touch "$WORK/src/$file"
    start=$(date +%s)
    if ! { make -s -C "$WORK/src" PG_CONFIG="$PG_CONFIG" with_llvm=no >"$WORK/make.log" 2>&1 &&
           make -s -C "$WORK/src" PG_CONFIG="$PG_CONFIG" with_llvm=no install >>"$WORK/make.log" 2>&1; }; then
        broken+=("$name: does not build ($(grep -m1 'error' "$WORK/make.log"))")
        echo "BROKEN $name: does not build"
        continue
    fi
    out=$(cd "$WORK/src" && WORK=$WORK PG_CONFIG=$PG_CONFIG PGXS_DIR=$PGXS_DIR PGBIN=$PGBIN \
          MUTANT_TIMEOUT=$TIMEOUT FUZZ_SECONDS=$FUZZ_SECONDS bash "$REPO/test/mutation.sh" --suites $tests 2>&1)
    rc=$?
    secs=$(( $(date +%s) - start ))
    if [ $rc -eq 124 ]; then
        killed=$((killed + 1)); echo "killed $name by a timeout after ${TIMEOUT}s (${secs}s)"
    elif [ $rc -ne 0 ]; then
        killed=$((killed + 1)); echo "killed $name by $(echo "$out" | tail -1) (${secs}s)"
    else
        survivors+=("$name: $mistake (ran: $tests)")
        echo "SURVIVED $name: $mistake (${secs}s)"
    fi
done
# leave the private tree as clean as it came
(cd "$WORK/clean" && tar -cf - .) | (cd "$WORK/src" && tar -xmf -)

echo
echo "killed $killed of $total"
[ ${#survivors[@]} -eq 0 ] || { echo "survivors:"; printf '  %s\n' "${survivors[@]}"; }
[ ${#equivalents[@]} -eq 0 ] || { echo "equivalent (not run):"; printf '  %s\n' "${equivalents[@]}"; }
[ ${#broken[@]} -eq 0 ] || { echo "broken mutants:"; printf '  %s\n' "${broken[@]}"; }
[ ${#survivors[@]} -eq 0 ] && [ ${#broken[@]} -eq 0 ]
