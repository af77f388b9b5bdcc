#!/usr/bin/env bash
# test/bench_http.sh: what `make bench-http` runs (and `make bench` at its
# end): requests per second through the real PostgREST, driven by wrk, on
# one table and one query (GET /items?id=eq.1), side by side in one run:
#
#   floor     PostgREST with no pre-request hook, the anonymous role reads
#   no-op     db-pre-request a function that does nothing
#             (LANGUAGE sql AS $$ SELECT $$): the cost of the hook itself
#   jwt       PostgREST's own JWT authentication (HS256, a role claim), no hook
#   apikeys   apikeys.pre_request with a key (X-API-Key), a route scope on
#             /items, usage counted (this database is apikeys.database)
#   limited   the same with a key that has a rate limit (never reached)
#
# Each configuration gets a PostgREST of its own, a warm-up of its pool,
# then one measured wrk run; every response must be a 200.  With
# BENCH_HTTP_ROUNDS above 1, the configurations run in interleaved rounds
# and each figure is the median of its rounds (a shared machine is noisy).  Nothing here is
# an assertion: the figures go to the README's Performance section.
#
#   BENCH_HTTP_SECONDS      seconds of each measured run          (default 20)
#   BENCH_HTTP_WARMUP       seconds of each warm-up               (default 3)
#   BENCH_HTTP_CONNECTIONS  wrk connections (and PostgREST's db-pool) (default 8)
#   BENCH_HTTP_THREADS      wrk threads                            (default 2)
#   BENCH_HTTP_ROUNDS       interleaved rounds, median of each     (default 1)
#   BENCH_HTTP_ONLY         configurations to run, in order   (default all five)

cd "$(dirname "$0")/.."
. test/lib.sh

DURATION=${BENCH_HTTP_SECONDS:-20}
WARMUP=${BENCH_HTTP_WARMUP:-3}
CONNS=${BENCH_HTTP_CONNECTIONS:-8}
THREADS=${BENCH_HTTP_THREADS:-2}
ROUNDS=${BENCH_HTTP_ROUNDS:-1}
# shellcheck disable=SC2206
CONFIGS=(${BENCH_HTTP_ONLY:-floor noop jwt apikeys limited})

ensure_deps
ensure_wrk
build_and_install
start_cluster
PGRST_PID=
cleanup() {
    if [ -n "$PGRST_PID" ]; then kill "$PGRST_PID" 2>/dev/null || true; wait "$PGRST_PID" 2>/dev/null || true; fi
    stop_cluster
}
trap cleanup EXIT
WORK=$PGTMP/bench_http
mkdir -p "$WORK"

q() { psql -X -q -A -t -v ON_ERROR_STOP=1 -d postgres "$@"; }

read -r KEY_TOKEN LIMITED_TOKEN LIMITED_ID < <(q <<'SQL' | paste -sd' '
SET client_min_messages = warning;
CREATE EXTENSION apikeys CASCADE;
CREATE ROLE authenticator LOGIN NOINHERIT;
CREATE ROLE anon NOLOGIN;
CREATE ROLE api_client NOLOGIN;
GRANT anon, api_client TO authenticator;
CREATE SCHEMA api;
GRANT USAGE ON SCHEMA api TO anon, api_client;
CREATE TABLE api.items (id int PRIMARY KEY, name text NOT NULL);
INSERT INTO api.items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;
GRANT SELECT ON api.items TO anon, api_client;
-- the no-op hook: what calling any pre-request function costs
CREATE FUNCTION api.noop_hook() RETURNS void LANGUAGE sql AS $$ SELECT $$;
INSERT INTO apikeys.route_scopes (method, path_pattern, scope) VALUES ('GET', '/items', 'items:read');
VACUUM ANALYZE;
SELECT token FROM apikeys.apikey_create('bench', role => 'api_client', scopes => '{items:read}');
SELECT token || ' ' || key_id FROM apikeys.apikey_create('bench limited', role => 'api_client',
    scopes => '{items:read}', rate_limit => '1000000000/second');
SQL
)
JWT_SECRET='a benchmark jwt secret, thirty-two characters or more'
JWT=$(perl -MDigest::SHA=hmac_sha256 -MMIME::Base64=encode_base64url -e '
    my $s = encode_base64url(q({"alg":"HS256","typ":"JWT"})) . "." . encode_base64url(q({"role":"api_client"}));
    print $s, ".", encode_base64url(hmac_sha256($s, $ARGV[0]));' "$JWT_SECRET")

# Start PostgREST for one configuration (extra postgrest.conf lines as
# arguments); sets PGRST_PID and API.
start_postgrest() {
    local port admin conf=$WORK/postgrest.conf
    port=$(free_port)
    admin=$(free_port)
    {
        echo "db-uri = \"postgres://authenticator@/postgres?host=$PGSOCK&port=$PGPORT\""
        echo 'db-schemas = "api"'
        echo 'db-anon-role = "anon"'
        echo "db-pool = \"$CONNS\""
        echo 'server-host = "127.0.0.1"'
        echo "server-port = \"$port\""
        echo "admin-server-port = \"$admin\""
        for line in "$@"; do echo "$line"; done
    } >"$conf"
    "$POSTGREST_BIN" "$conf" >"$WORK/postgrest.log" 2>&1 </dev/null &
    PGRST_PID=$!
    for _ in $(seq 1 100); do
        curl -sf "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && break
        kill -0 "$PGRST_PID" 2>/dev/null || { cat "$WORK/postgrest.log"; exit 1; }
        sleep 0.1
    done
    API=http://127.0.0.1:$port
}
stop_postgrest() {
    kill "$PGRST_PID"
    wait "$PGRST_PID" 2>/dev/null || true
    PGRST_PID=
}

# CPU time (clock ticks, user and system) used so far by processes, by pid;
# gone ones count 0.
cpu_ticks() {
    local total=0 pid t
    for pid in "$@"; do
        t=$(awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$pid/stat" 2>/dev/null || echo 0)
        total=$((total + t))
    done
    echo "$total"
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

# wrk's latency as milliseconds (it prints us, ms or s).
to_ms() { awk '{ v = $1 + 0; if ($1 ~ /us$/) v /= 1000; else if ($1 ~ /[0-9]s$/ && $1 !~ /ms$/) v *= 1000; printf "%.2f\n", v }'; }

declare -A RPS P50 P99 BCPU PCPU
run_config() {
    local name=$1 header=()
    case $name in
        floor)   start_postgrest ;;
        noop)    start_postgrest 'db-pre-request = "api.noop_hook"' ;;
        jwt)     start_postgrest "jwt-secret = \"$JWT_SECRET\""; header=(-H "Authorization: Bearer $JWT") ;;
        apikeys) start_postgrest 'db-pre-request = "apikeys.pre_request"'; header=(-H "X-API-Key: $KEY_TOKEN") ;;
        limited) start_postgrest 'db-pre-request = "apikeys.pre_request"'; header=(-H "X-API-Key: $LIMITED_TOKEN") ;;
        *) echo "bench_http: unknown configuration $name" >&2; exit 2 ;;
    esac
    local url="$API/items?id=eq.1" status out
    status=$(curl -s -o /dev/null -w '%{http_code}' "${header[@]}" "$url")
    [ "$status" = 200 ] || { echo "bench_http: $name: GET /items?id=eq.1 answered $status" >&2; exit 1; }
    wrk -t "$THREADS" -c "$CONNS" -d "${WARMUP}s" "${header[@]}" "$url" >/dev/null
    # the server sessions of PostgREST's pool, warm now, and PostgREST: the
    # CPU they use per request is steadier than req/s on a shared machine
    local backends b0 b1 p0 p1 n
    backends=$(q -c "SELECT pid FROM pg_stat_activity WHERE usename = 'authenticator'")
    # shellcheck disable=SC2086
    b0=$(cpu_ticks $backends)
    p0=$(cpu_ticks "$PGRST_PID")
    out=$(wrk -t "$THREADS" -c "$CONNS" -d "${DURATION}s" --latency "${header[@]}" "$url")
    # shellcheck disable=SC2086
    b1=$(cpu_ticks $backends)
    p1=$(cpu_ticks "$PGRST_PID")
    n=$(awk '/requests in/ { print $1 }' <<<"$out")
    if grep -q 'Non-2xx' <<<"$out"; then
        echo "bench_http: $name: responses other than 200:" >&2
        echo "$out" >&2
        exit 1
    fi
    RPS[$name]+=" $(awk '/^Requests\/sec:/ { printf "%.0f", $2 }' <<<"$out")"
    P50[$name]+=" $(awk '$1 == "50%" { print $2 }' <<<"$out" | to_ms)"
    P99[$name]+=" $(awk '$1 == "99%" { print $2 }' <<<"$out" | to_ms)"
    BCPU[$name]+=" $(awk -v t=$((b1 - b0)) -v u="$TICK_US" -v n="$n" 'BEGIN { printf "%.1f", t * u / n }')"
    PCPU[$name]+=" $(awk -v t=$((p1 - p0)) -v u="$TICK_US" -v n="$n" 'BEGIN { printf "%.1f", t * u / n }')"
    stop_postgrest
}
median() { printf '%s\n' $1 | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
for _ in $(seq 1 "$ROUNDS"); do
    for c in "${CONFIGS[@]}"; do run_config "$c"; done
done
declare -A ALL
for c in "${CONFIGS[@]}"; do
    ALL[$c]=${RPS[$c]# }
    RPS[$c]=$(median "${RPS[$c]}")
    P50[$c]=$(median "${P50[$c]}")
    P99[$c]=$(median "${P99[$c]}")
    BCPU[$c]=$(median "${BCPU[$c]}")
    PCPU[$c]=$(median "${PCPU[$c]}")
done
ratio() {
    if [ -n "${RPS[$1]:-}" ] && [ -n "${RPS[$2]:-}" ]; then
        awk -v a="${RPS[$1]}" -v b="${RPS[$2]}" 'BEGIN { printf "%.3f", a / b }'
    else
        echo '-'
    fi
}
# the limited key's requests were all counted, none refused
COUNTED=$(q -c "SELECT uses || ' uses, ' || rate_limited || ' rate limited' FROM apikeys.usage WHERE key_id = '$LIMITED_ID'")

cat <<EOF

PostgREST benchmark: $("$POSTGREST_BIN" --version), PostgreSQL $("$PG_CONFIG" --version | awk '{print $2}'), $(nproc) cores shared by PostgREST, the server and wrk
(make bench-http; BENCH_HTTP_SECONDS=$DURATION BENCH_HTTP_WARMUP=$WARMUP BENCH_HTTP_CONNECTIONS=$CONNS BENCH_HTTP_THREADS=$THREADS BENCH_HTTP_ROUNDS=$ROUNDS)
GET /items?id=eq.1, wrk -t $THREADS -c $CONNS, db-pool = $CONNS, ${DURATION}s runs after a ${WARMUP}s warm-up each,
$ROUNDS interleaved round(s), the median of each (load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)):

  configuration                          req/s    p50 ms   p99 ms  server us/req  PostgREST us/req  every round's req/s
EOF
for c in "${CONFIGS[@]}"; do
    case $c in
        floor)   label='floor: no hook, anon reads' ;;
        noop)    label='no-op pre-request hook' ;;
        jwt)     label='JWT (HS256), no hook' ;;
        apikeys) label='apikeys.pre_request, a key' ;;
        limited) label='apikeys, rate-limited key' ;;
    esac
    printf '  %-36s %7s %9s %8s  %13s  %16s  %s\n' "$label" "${RPS[$c]}" "${P50[$c]}" "${P99[$c]}" \
        "${BCPU[$c]}" "${PCPU[$c]}" "${ALL[$c]}"
done
cat <<EOF

(server us/req: CPU time of PostgREST's server sessions per request, user and system; PostgREST us/req:
PostgREST's own. Both medians of the rounds.)

  no-op hook / floor                     $(ratio noop floor)
  apikeys / no-op hook                   $(ratio apikeys noop)   (goal: 0.97 or more)
  apikeys / JWT                          $(ratio apikeys jwt)   (goal: 1.1 or more)
  limited / no-op hook                   $(ratio limited noop)   (goal: 0.95 or more)
  apikeys / floor                        $(ratio apikeys floor)
  the limited key                        ${COUNTED:-not used}
EOF
