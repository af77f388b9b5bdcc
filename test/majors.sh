#!/usr/bin/env bash
# test/majors.sh: apikeys on every supported PostgreSQL major (15, 17, 18).
#
#   test/majors.sh pg_config 18     build PostgreSQL 18 once (cached) and print
#                                   its pg_config
#   test/majors.sh chroot 17        set up the Debian trixie chroot with
#                                   PostgreSQL 17 once (cached) and print its path
#   test/majors.sh run MAJOR CMD..  run CMD (e.g. `make test`, `make bench`) in a
#                                   fresh copy of the sources against MAJOR
#   test/majors.sh all              `make test` on 15, 18 and 17, one after the
#                                   other (what `make test-all` and CI run; 15
#                                   is PG_CONFIG when that is a 15, else
#                                   Debian's); MAJORS="18 17" picks
#
# Only PostgreSQL 15 is packaged for Debian 12.  The others come from Debian's
# own archive (the one /etc/apt/sources.list.d/debian.sources names; no host
# name is written here):
#   18: the pristine upstream tree of the sid source package postgresql-18
#       (version resolved at run time), built into
#       $MAJORS_CACHE/postgresql-18-<version> with pgcrypto, pg_stat_statements,
#       auto_explain, the TAP test modules and plpgsql_check (sid's binary
#       package postgresql-18-plpgsql-check).
#   17: trixie's binaries need a newer glibc, so a minimal Debian trixie system
#       is bootstrapped into $MAJORS_CACHE/trixie-pg17 with postgresql-17 and
#       the test dependencies, and the suites run inside it (chroot, in a
#       private mount namespace, so that its mounts end with the run).
# Each is built or bootstrapped once and reused: a second run costs no
# rebuild.  Every run works on a copy of the sources (objects of one major
# never meet another's) and a copy of the installation (the cached one stays
# as built, so runs do not see each other's installs).
set -euo pipefail
cd "$(dirname "$0")/.."
SRC=$PWD
. test/lib.sh

MAJORS_CACHE=${MAJORS_CACHE:-/var/cache/apikeys-test}
NICE=(nice -n 10)
JOBS=${MAJORS_JOBS:-2}

log() { echo "== [majors] $*" >&2; }

# The Debian archive URI this system's apt already uses (deb822 or one-line
# sources), never a security or updates archive.
debian_mirror() {
    local uri
    uri=$(awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }' \
          /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    [ -n "$uri" ] || uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /:\/\//) { print $i; exit } }' \
          /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true)
    [ -n "$uri" ] || { echo "majors: no Debian archive found in the apt sources" >&2; return 1; }
    echo "$uri"
}

# apt-get/apt-cache against sid's index (sources and amd64 binaries), with state of their own
# under $MAJORS_CACHE/apt-sid: the system's sources, lists and caches are
# left untouched.
SID_APT=$MAJORS_CACHE/apt-sid
sid_apt_opts() {
    APT_OPTS=(-o "Dir::Etc::SourceList=$SID_APT/sources.list"
              -o Dir::Etc::SourceParts=/dev/null
              -o "Dir::State::Lists=$SID_APT/lists"
              -o "Dir::Cache=$SID_APT/cache"
              -o Dir::State::status=/dev/null
              -o APT::Sandbox::User=root)
}
sid_apt_update() {
    local mirror
    mirror=$(debian_mirror)
    as_root mkdir -p "$SID_APT/lists/partial" "$SID_APT/cache/archives/partial"
    printf 'deb%s [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s sid main\n' "" "$mirror" -src "$mirror" \
        | as_root tee "$SID_APT/sources.list.tmp" >/dev/null
    as_root mv -f "$SID_APT/sources.list.tmp" "$SID_APT/sources.list"
    sid_apt_opts
    as_root apt-get "${APT_OPTS[@]}" update -qq >&2
}
# The newest version of a source package in sid.
sid_version() {
    sid_apt_opts
    apt-cache "${APT_OPTS[@]}" showsrc --only-source "$1" \
        | sed -n 's/^Version: //p' | sort -V | tail -n 1
}
# Download a sid source package into the current directory and unpack its
# upstream tarball (the .orig tarball: pristine upstream, no Debian patches).
sid_source() {
    local pkg=$1 ver=$2
    sid_apt_opts
    as_root apt-get "${APT_OPTS[@]}" source --download-only -qq "$pkg=$ver" >/dev/null
    tar -xf "$(ls "${pkg}"_*.orig.tar.* | head -n 1)"
}

# Install host packages that are missing (the build tools for PostgreSQL 18
# and debootstrap).
host_packages() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        log "installing: ${missing[*]}"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
}

# PostgreSQL 18 from source: prints the pg_config of the cached build,
# building it first when it is not there.  MAJORS_PG18_VERSION skips the
# index look-up when the build of that version is cached.
pg18_config() {
    local ver up prefix build
    as_root mkdir -p "$MAJORS_CACHE"
    exec 9>"$MAJORS_CACHE/.pg18.lock"
    flock 9
    # A cached build is reused without asking the archive (the version
    # it was built from is in its directory name).
    prefix=$(ls -d "$MAJORS_CACHE"/postgresql-18-*/ 2>/dev/null | sort -V | tail -n 1 || true)
    prefix=${prefix%/}
    if [ -n "$prefix" ] && [ -f "$prefix/.complete" ] && [ -z "${MAJORS_REFRESH:-}" ] \
            && [ "$(cut -d' ' -f2- "$prefix/.complete")" = "$(pg18_recipe any | cut -d' ' -f2-)" ]; then
        flock -u 9
        echo "$prefix/bin/pg_config"
        return 0
    fi
    host_packages bison flex gcc make libssl-dev libreadline-dev zlib1g-dev libicu-dev pkg-config \
        libipc-run-perl perl
    sid_apt_update
    ver=$(sid_version postgresql-18)
    [ -n "$ver" ] || { echo "majors: postgresql-18 not found in sid" >&2; return 1; }
    up=${ver#*:}; up=${up%-*}
    prefix=$MAJORS_CACHE/postgresql-18-$up
    if [ -f "$prefix/.complete" ] && [ "$(cat "$prefix/.complete")" = "$(pg18_recipe "$ver")" ]; then
        flock -u 9
        echo "$prefix/bin/pg_config"
        return 0
    fi
    log "building PostgreSQL $up (sid source package postgresql-18 $ver) into $prefix"
    build=$(mktemp -d "${TMPDIR:-/tmp}/apikeys-pg18.XXXXXX")
    local t0=$SECONDS
    (pg18_build "$build" "$ver" "$up" "$prefix") \
        || { echo "majors: the PostgreSQL 18 build failed (logs in $build)" >&2; return 1; }
    rm -rf "$build"
    log "PostgreSQL $up built in $((SECONDS - t0)) s"
    flock -u 9
    echo "$prefix/bin/pg_config"
}

# How 18 is configured (ICU: sql/hardening.sql uses ICU collations; no
# LLVM: no JIT, so PGXS builds no bitcode), and what a cached build records
# in its .complete: a build of another recipe is redone.
PG18_CONFIGURE=(--enable-tap-tests --enable-debug --with-openssl --with-icu --without-llvm)
# The contrib modules the suites load (CREATE EXTENSION, shared_preload_libraries).
PG18_MODULES=(contrib/pgcrypto contrib/pg_stat_statements contrib/auto_explain)
pg18_recipe() { echo "$1 ${PG18_CONFIGURE[*]} ${PG18_MODULES[*]} plpgsql_check"; }

# The steps of the PostgreSQL 18 build (in $1, logs there): the server with
# TAP support, the contrib modules and test tools the suites use, then
# plpgsql_check.  Each step's failure ends it.
pg18_build() {
    local build=$1 ver=$2 up=$3 prefix=$4 d deb
    local mlog=$build/make.log
    cd "$build" || return 1
    sid_source postgresql-18 "$ver" || return 1
    cd "postgresql-$up" || return 1
    "${NICE[@]}" ./configure --prefix="$prefix" \
        "${PG18_CONFIGURE[@]}" >"$build/configure.log" 2>&1 \
        || { tail -n 40 "$build/configure.log" >&2; return 1; }
    "${NICE[@]}" make -s -j"$JOBS" >"$mlog" 2>&1 || { tail -n 60 "$mlog" >&2; return 1; }
    as_root rm -rf "$prefix" || return 1
    as_root make -s install >>"$mlog" 2>&1 || { tail -n 60 "$mlog" >&2; return 1; }
    for d in "${PG18_MODULES[@]}" src/test/isolation src/test/perl; do
        "${NICE[@]}" make -s -j"$JOBS" -C "$d" >>"$mlog" 2>&1 || { tail -n 60 "$mlog" >&2; return 1; }
        as_root make -s -C "$d" install >>"$mlog" 2>&1 || { tail -n 60 "$mlog" >&2; return 1; }
    done
    # plpgsql_check (sql/plpgsql_check.sql): sid's binary package
    # postgresql-18-plpgsql-check (it needs glibc 2.17; the archive's source
    # pool has answered 404 for plpgsql-check), its module and extension
    # files copied into the installation.
    cd "$build" || return 1
    sid_apt_opts
    as_root apt-get "${APT_OPTS[@]}" download -qq postgresql-18-plpgsql-check >/dev/null || return 1
    deb=$(ls postgresql-18-plpgsql-check_*.deb | head -n 1)
    dpkg-deb -x "$deb" plpgsql_check || return 1
    as_root install -m 755 plpgsql_check/usr/lib/postgresql/18/lib/plpgsql_check.so \
        "$("$prefix/bin/pg_config" --pkglibdir)/" || return 1
    as_root install -m 644 plpgsql_check/usr/share/postgresql/18/extension/plpgsql_check* \
        "$("$prefix/bin/pg_config" --sharedir)/extension/" || return 1
    pg18_recipe "$ver" | as_root tee "$prefix/.complete" >/dev/null
}

# The Debian trixie chroot with PostgreSQL 17: prints its path, bootstrapping
# it first when it is not there.
TRIXIE=$MAJORS_CACHE/trixie-pg17
TRIXIE_PACKAGES=(postgresql-17 postgresql-server-dev-17 postgresql-17-plpgsql-check
                 make gcc libc6-dev libssl-dev libipc-run-perl perl pgbouncer valgrind
                 clang libclang-rt-dev procps ca-certificates)
pg17_chroot() {
    local root=$TRIXIE mirror tmp
    as_root mkdir -p "$MAJORS_CACHE"
    exec 8>"$MAJORS_CACHE/.trixie.lock"
    flock 8
    if [ -f "$root/.complete" ]; then flock -u 8; echo "$root"; return 0; fi
    host_packages debootstrap
    mirror=$(debian_mirror)
    tmp=$root.tmp
    as_root rm -rf "$tmp"
    log "bootstrapping Debian trixie into $root"
    local t0=$SECONDS
    as_root "${NICE[@]}" debootstrap --variant=minbase trixie "$tmp" "$mirror" >"$MAJORS_CACHE/trixie-debootstrap.log" 2>&1 \
        || { tail -n 40 "$MAJORS_CACHE/trixie-debootstrap.log"; return 1; }
    # No service starts inside, and installing postgresql-17 creates no cluster.
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$tmp/usr/sbin/policy-rc.d" >/dev/null
    as_root chmod 755 "$tmp/usr/sbin/policy-rc.d"
    as_root mkdir -p "$tmp/etc/postgresql-common"
    echo "create_main_cluster = false" | as_root tee "$tmp/etc/postgresql-common/createcluster.conf" >/dev/null
    log "installing PostgreSQL 17 and the test dependencies in the chroot"
    in_chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get update -qq \
        >>"$MAJORS_CACHE/trixie-debootstrap.log" 2>&1
    in_chroot "$tmp" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        --no-install-recommends -o Dpkg::Options::=--force-confold "${TRIXIE_PACKAGES[@]}" \
        >>"$MAJORS_CACHE/trixie-debootstrap.log" 2>&1 \
        || { tail -n 40 "$MAJORS_CACHE/trixie-debootstrap.log"; return 1; }
    in_chroot "$tmp" apt-get clean
    as_root touch "$tmp/.complete"
    as_root mv "$tmp" "$root"
    log "trixie with PostgreSQL 17 ready in $((SECONDS - t0)) s"
    flock -u 8
    echo "$root"
}

# Run a command inside a chroot, in a mount namespace of its own: /proc,
# /dev (with /dev/pts and /dev/shm) and the host's resolver configuration
# are mounted for it, and every mount ends with the namespace.
in_chroot() {
    local root=$1
    shift
    as_root unshare --mount --propagation private -- /bin/sh -c '
        set -e
        root=$1; shift
        mount -t proc proc "$root/proc"
        mount --bind /dev "$root/dev"
        mount --bind /dev/pts "$root/dev/pts"
        mount -t tmpfs -o mode=1777 shm "$root/dev/shm"
        cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
        exec chroot "$root" "$@"
    ' sh "$root" "$@"
}

# A copy of the sources (no objects, no .git) in a new directory under $1.
copy_sources() {
    local dest=$1
    mkdir -p "$dest"
    (cd "$SRC" && tar --exclude='*.o' --exclude='*.so' --exclude='*.bc' --exclude=.git \
        --exclude=src/scan/apikeys-scan -cf - .) | tar -xf - -C "$dest"
}

# run MAJOR CMD...: CMD in a fresh copy of the sources against that major.
run_on() {
    local major=$1 cfg work rc=0 root
    shift
    case $major in
        15)
            # PG_CONFIG when it is a 15 (a developer's private copy), else
            # Debian's
            cfg=/usr/lib/postgresql/15/bin/pg_config
            [ "$PG_MAJOR" != 15 ] || cfg=$PG_CONFIG
            cfg=${PG_CONFIG_15:-$cfg}
            # lib.sh installs a missing Debian 15 on first use
            work=$(mktemp -d "${TMPDIR:-/tmp}/apikeys-pg15.XXXXXX")
            copy_sources "$work/src"
            (cd "$work/src" && env PG_CONFIG="$cfg" PG_MAJOR=15 "$@") || rc=$?
            rm -rf "$work"
            ;;
        18)
            cfg=$(pg18_config)
            work=$(mktemp -d "${TMPDIR:-/tmp}/apikeys-pg18.XXXXXX")
            chmod 755 "$work"
            # the run installs apikeys into a copy of the cached installation
            # (a source build is relocatable)
            cp -a "$(dirname "$(dirname "$cfg")")" "$work/pg"
            copy_sources "$work/src"
            (cd "$work/src" && env PG_CONFIG="$work/pg/bin/pg_config" PG_MAJOR=18 "$@") || rc=$?
            rm -rf "$work"
            ;;
        17)
            root=$(pg17_chroot)
            ensure_postgrest
            exec 8>"$MAJORS_CACHE/.trixie.lock"
            flock 8
            as_root rm -rf "$root/build"
            as_root mkdir -p "$root/build" "$root$POSTGREST_CACHE"
            copy_sources "$root/build/apikeys"
            # the PostgREST binaries the host's lib.sh installed (npm), copied in
            as_root cp -a "$(dirname "$POSTGREST_BIN")" "$root$POSTGREST_CACHE/"
            [ -z "${POSTGREST_OLD_BIN:-}" ] \
                || as_root cp -a "$(dirname "$POSTGREST_OLD_BIN")" "$root$POSTGREST_CACHE/"
            in_chroot "$root" env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin HOME=/root \
                LANG=C.UTF-8 CI="${CI:-}" FUZZ_SECONDS="${FUZZ_SECONDS:-}" \
                PG_CONFIG=/usr/lib/postgresql/17/bin/pg_config PG_MAJOR=17 \
                sh -c 'cd /build/apikeys && exec "$@"' sh "$@" || rc=$?
            as_root rm -rf "$root/build"
            flock -u 8
            ;;
        16)
            echo "majors: PostgreSQL 16 has no Debian route here and is not tested" >&2
            return 2
            ;;
        *)
            echo "majors: unsupported major $major (15, 17 and 18 are)" >&2
            return 2
            ;;
    esac
    return $rc
}

# (a function, called on the script's last line, so that a run is not
# disturbed when the script is edited under it)
main() {
    case ${1:-all} in
        pg_config)
            [ "${2:-}" = 18 ] || { echo "usage: $0 pg_config 18" >&2; exit 2; }
            pg18_config
            ;;
        chroot)
            [ "${2:-}" = 17 ] || { echo "usage: $0 chroot 17" >&2; exit 2; }
            pg17_chroot
            ;;
        run)
            [ $# -ge 3 ] || { echo "usage: $0 run MAJOR CMD..." >&2; exit 2; }
            shift
            run_on "$@"
            ;;
        all)
            start=$SECONDS
            results=()
            rc=0
            for major in ${MAJORS:-15 18 17}; do
                t0=$SECONDS
                log "PostgreSQL $major: make test"
                r=0
                run_on "$major" make test || r=$?
                results+=("PostgreSQL $major: $([ $r -eq 0 ] && echo passed || echo FAILED) in $((SECONDS - t0)) s")
                [ $r -eq 0 ] || rc=1
            done
            printf '%s\n' "${results[@]}"
            echo "majors: $((SECONDS - start)) s in all"
            exit $rc
            ;;
        *)
            sed -n '2,12p' "$0" >&2
            exit 2
            ;;
    esac
}

main "$@"; exit $?
