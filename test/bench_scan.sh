#!/usr/bin/env bash
# test/bench_scan.sh: what `make bench-scan` runs.
#
# Measures apikeys-scan's throughput on about 100 MB of input of three
# kinds, and prints MB/s for each (best of three runs, from the page cache).
# Nothing here is an assertion: the figures go to the README.
#
#   SCAN_MB   size of each input in MB (default 100)

cd "$(dirname "$0")/.."
set -euo pipefail
PG_CONFIG=${PG_CONFIG:-pg_config}
MB=${SCAN_MB:-100}
make -s PG_CONFIG="$PG_CONFIG" src/scan/apikeys-scan
SCAN=$PWD/src/scan/apikeys-scan
WORK=$(mktemp -d "${TMPDIR:-/tmp}/apikeys-scan-bench.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
bytes=$((MB * 1000 * 1000))

# source code: the server headers and this repository, repeated
src_files=$(find "$("$PG_CONFIG" --includedir-server)" src sql test -type f -name '*.[chl]*' 2>/dev/null)
while [ "$(stat -c %s "$WORK/source" 2>/dev/null || echo 0)" -lt "$bytes" ]; do
    cat $src_files >> "$WORK/source"
done
truncate -s "$bytes" "$WORK/source"
# identifier soup: base62 and underscores from a fixed seed, the worst case
# for the anchor (an underscore every few bytes, token-shaped runs)
perl -e 'srand(42); my @a = ("0".."9", "A".."Z", "a".."z", ("_") x 5, " ", "\n");
         my $n = shift; while ($n > 0) { my $k = $n < 65536 ? $n : 65536;
         print join("", map { $a[int(rand(@a))] } 1 .. $k); $n -= $k }' "$bytes" > "$WORK/soup"
# random bytes (binary files)
head -c "$bytes" /dev/urandom > "$WORK/random"

printf '%-10s %8s %10s %10s\n' input MB seconds MB/s
for f in source soup random; do
    best=
    for run in 1 2 3; do
        start=$(date +%s.%N)
        rc=0; "$SCAN" -q "$WORK/$f" || rc=$?
        end=$(date +%s.%N)
        [ $rc -le 1 ] || { echo "apikeys-scan failed on $f" >&2; exit 1; }
        best=$(awk -v s="$start" -v e="$end" -v b="$best" 'BEGIN { t = e - s; print (b == "" || t < b) ? t : b }')
    done
    awk -v f="$f" -v mb="$MB" -v t="$best" 'BEGIN { printf "%-10s %8d %10.3f %10.0f\n", f, mb, t, mb / t }'
done
