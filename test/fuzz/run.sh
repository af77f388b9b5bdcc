#!/usr/bin/env bash
# test/fuzz/run.sh: build the libFuzzer target and run it.
#
#   test/fuzz/run.sh SECONDS     fuzz for that long (make test: a short run;
#                                make fuzz: FUZZ_SECONDS, default 600)
#
# The target is built with AddressSanitizer, UndefinedBehaviorSanitizer and
# LeakSanitizer from src/token.c and src/type.c; it starts from the seed
# corpus in test/fuzz/corpus, and new inputs it finds go to a scratch
# directory (never into the repository).  Exits non-zero on any crash, leak,
# sanitizer report or disagreement with the reference parser; the input that
# caused it is left in the scratch directory and printed.
set -euo pipefail
cd "$(dirname "$0")/../.."
. test/lib.sh

SECONDS_TO_RUN=${1:-${FUZZ_SECONDS:-600}}
command -v clang >/dev/null || {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang >/dev/null; }
# libFuzzer and the sanitizer runtimes
ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 || {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libclang-rt-dev >/dev/null; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/apikeys-fuzz.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
clang -g -O1 -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -Wall -Werror -Wno-unused-command-line-argument -Wno-ignored-attributes -Wno-unused-parameter \
    -Isrc -I"$("$PG_CONFIG" --includedir-server)" \
    test/fuzz/fuzz_apikey.c src/token.c src/type.c \
    "$("$PG_CONFIG" --pkglibdir)/libpgcommon.a" "$("$PG_CONFIG" --pkglibdir)/libpgport.a" \
    -lssl -lcrypto -o "$WORK/fuzz_apikey"

mkdir -p "$WORK/corpus" "$WORK/artifacts"
cd "$WORK"
rc=0
ASAN_OPTIONS=detect_leaks=1 ./fuzz_apikey -max_total_time="$SECONDS_TO_RUN" \
    -max_len=200 -timeout=5 -print_final_stats=1 -artifact_prefix="$WORK/artifacts/" \
    "$WORK/corpus" "$OLDPWD/test/fuzz/corpus" >"$WORK/fuzz.log" 2>&1 || rc=$?
grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss)' "$WORK/fuzz.log" || true
if [ $rc -ne 0 ]; then
    tail -n 60 "$WORK/fuzz.log"
    for f in "$WORK"/artifacts/*; do
        [ -f "$f" ] && { echo "---- crashing input $f (hex):"; od -An -tx1 "$f" | head -20; }
    done
    trap - EXIT
    echo "fuzz_apikey ... FAILED (scratch kept in $WORK)"
    exit 1
fi
echo "fuzz_apikey ... ok"
