#!/usr/bin/env bash
# test/asan.sh: what `make test-asan` runs.
#
# Builds the extension with AddressSanitizer (gcc), installs it into a
# private copy of the PostgreSQL installation (the system directories are
# not touched), starts Debian's uninstrumented postgres with the ASan
# runtime preloaded, and runs the pg_regress and isolation suites against
# it.  Fails on any suite failure, any AddressSanitizer report in the server
# log, or any backend that died of a signal.
#
# What ASan sees here: stack, globals and malloc'd memory (OpenSSL, libc,
# the extension's own malloc) touched by the extension's code.  palloc'd
# memory is carved by PostgreSQL's allocator out of large malloc'd blocks
# that it does not poison, so an overrun that stays inside such a block is
# not seen (valgrind, make test-valgrind, has the same blind spot without
# PostgreSQL's valgrind build).  LeakSanitizer is off: a backend frees its
# memory by exiting.
#
# Why the preloaded stub below: with libasan in LD_PRELOAD, the runtime's
# own constructor runs after those of postgres's libraries, so ASan starts
# lazily inside the first malloc, which is libgpg-error's constructor
# calling bindtextdomain() with glibc's _nl_state_lock held for writing.
# AsanInitInternal -> Symbolizer::LateInitialize -> InitializeSwiftDemangler
# calls dlsym(RTLD_DEFAULT, "swift_demangle") and then dlerror(), which
# translates the error message: dcgettext read-locks the same lock
# (EDEADLK, ignored by glibc's internal lock macro) and its unlock releases
# the writer; bindtextdomain's own unlock then drives the reader count
# below zero, and postgres's first bindtextdomain() in main() (set_pglocale_
# pgservice) waits on that lock forever.  A library that defines
# swift_demangle makes the dlsym succeed, so dlerror() has nothing to
# translate.  (The stub returns NULL: "not a Swift name", so ASan demangles
# as before and reports stay symbolized.)
#
# Without the stub (gdb on `postgres --version`, libasan preloaded, glibc
# 2.36, gcc 12): _nl_state_lock.__readers is 0xfffffff8 when main() starts,
# after libgpg-error's constructor: bindtextdomain wrlock (1) -> malloc ->
# AsanInitInternal -> dlerror -> __dcigettext rdlock fails, unlock (3 -> 1)
# -> bindtextdomain.c:312 unlock (1 -> 0xfffffff9); then main() hangs in
#   futex wait <- pthread_rwlock_wrlock(&_nl_state_lock)
#   <- set_binding_values (bindtextdom.c:91) <- bindtextdomain("postgres-15")
#   <- set_pglocale_pgservice <- main
cd "$(dirname "$0")/.."
. test/lib.sh
ensure_deps

sanitizer_setup asan "-fsanitize=address -fno-omit-frame-pointer -g" "-fsanitize=address"

LIBASAN=$(gcc -print-file-name=libasan.so)
[ -f "$LIBASAN" ] || { echo "asan ... FAILED (no libasan.so from gcc)"; exit 1; }
cat >"$WORK/swift_demangle.c" <<'STUB'
#include <stddef.h>
char *swift_demangle(const char *mangled, size_t len, char *out, size_t *outlen,
                     unsigned flags);
char *swift_demangle(const char *mangled, size_t len, char *out, size_t *outlen,
                     unsigned flags) { return NULL; }
STUB
gcc -shared -fPIC -Wall -Werror -o "$WORK/swift_demangle.so" "$WORK/swift_demangle.c"
chmod 755 "$WORK/swift_demangle.so"

# detect_leaks=0: see above; abort_on_error=1: a finding kills the backend
# with SIGABRT, so the postmaster logs it and restarts (a plain exit(1)
# would pass for a FATAL); the report itself goes to stderr, the server log.
cat >"$WORK/postgres" <<WRAP
#!/bin/sh
export LD_PRELOAD="$LIBASAN $WORK/swift_demangle.so"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1:print_summary=1:detect_stack_use_after_return=0"
exec $WORK/pg/usr/lib/postgresql/$PG_MAJOR/bin/postgres "\$@"
WRAP
chmod 755 "$WORK/postgres"
export POSTGRES_WRAPPER=$WORK/postgres PG_START_TIMEOUT=120
start_cluster "${SUITE_SETTINGS[@]}"
echo "== cluster with AddressSanitizer: $PGDATA_DIR on port $PGPORT"
# the running server really has the runtime and the instrumented extension
pm=$(head -1 "$PGDATA_DIR/postmaster.pid")
psql -XqAt -d postgres -c 'SELECT 1' >/dev/null
as_root grep -q libasan "/proc/$pm/maps" \
    || { echo "asan ... FAILED (runtime not loaded in the postmaster)"; exit 1; }

rc=0
run_suites_and_stop || rc=1
# anything else the runtime printed (warnings), for the record
{ grep -E '^==[0-9]+==' "$PGLOG" | grep -v 'ERROR: AddressSanitizer' | sed 's/^==[0-9]*==/==PID==/' | sort | uniq -c | head -20 || true; }
reports=$(grep -cE 'ERROR: AddressSanitizer|was terminated by signal' "$PGLOG" || true)
echo "sanitizer reports or crashes in the server log: $reports"
if [ "$reports" -ne 0 ]; then
    { grep -B2 -A40 -E 'ERROR: AddressSanitizer|was terminated by signal' "$PGLOG" | head -150 || true; }
    echo "asan ... FAILED"
    exit 1
fi
[ $rc -eq 0 ] || { echo "asan ... FAILED (suites)"; exit 1; }
# the build really was instrumented
checks=$(nm -D "$WORK/pg/usr/lib/postgresql/$PG_MAJOR/lib/apikeys.so" | grep -c ' U __asan_report_' || true)
[ "$checks" -gt 0 ] || { echo "asan ... FAILED (not instrumented)"; exit 1; }
echo "asan ... ok"
