#!/usr/bin/env bash
# test/demo.sh: what `make demo` runs.
#
# Installs what is missing, builds and installs the extension, starts a
# throwaway cluster with apikeys preloaded, and walks a key through its
# lifecycle in psql; then runs the README's PostgREST setup in a database
# of its own, starts PostgREST in front of it and shows, with curl, a 200,
# a 401, a 403 and a 429.  The cluster and PostgREST are left running for
# you to explore; the end says how to stop them.

cd "$(dirname "$0")/.."
. test/lib.sh

ensure_deps
build_and_install
KEEP_CLUSTER=1
start_cluster

psql -X -q -v ON_ERROR_STOP=1 -d postgres <<'SQL'
\pset footer off
\echo
\echo '-- apikeys demo ------------------------------------------------------'
CREATE EXTENSION apikeys CASCADE;
CREATE ROLE demo_api NOLOGIN;

\echo
\echo '1. create a key for role demo_api (the token is shown this once)'
SELECT key_id, token FROM apikeys.apikey_create('demo key', role => 'demo_api',
       scopes => '{orders:read}', metadata => '{"owner": "demo"}') \gset
\echo key_id = :key_id
\echo token  = :token

\echo
\echo '2. verify it, with and without the scope it was given'
SELECT valid, status, key_id, role, scopes FROM apikeys.apikey_verify(:'token', 'orders:read');
SELECT valid, status FROM apikeys.apikey_verify(:'token', 'orders:write');
\echo 'a typo is caught by the checksum, before any table is read:'
SELECT valid, status FROM apikeys.apikey_verify(:'token' || 'x');
\echo 'the apikey type prints without its secret:'
SELECT :'token'::apikeys.apikey AS parsed;

\echo
\echo '3. keys as roles: log in with the key, and row-level security sees it'
CREATE TABLE orders (id int, tenant text, item text);
INSERT INTO orders VALUES (1, 'demo', 'tea'), (2, 'other', 'coffee');
ALTER TABLE orders ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_orders ON orders
    USING (tenant = apikeys.apikey_metadata() ->> 'owner' AND apikeys.apikey_has_scope('orders:read'));
GRANT SELECT ON orders TO demo_api;
BEGIN;
SELECT status, role FROM apikeys.apikey_login(:'token', 'orders:read');
SELECT current_user, apikeys.apikey_current() AS key_id, * FROM orders;
COMMIT;
\echo 'a missing scope is refused with SQLSTATE 42501, a bad key with 28000:'
\set ON_ERROR_STOP 0
\set VERBOSITY sqlstate
BEGIN;
SELECT apikeys.apikey_login(:'token', 'orders:write');
ROLLBACK;
BEGIN;
SELECT apikeys.apikey_login(:'token' || 'x');
ROLLBACK;
\set VERBOSITY default
\set ON_ERROR_STOP 1

\echo
\echo '4. the PostgREST pre-request hook reads the key from the request headers'
BEGIN READ ONLY;
SELECT set_config('request.headers', json_build_object('x-api-key', :'token')::text, true) IS NOT NULL AS headers_set;
SELECT apikeys.pre_request();
SELECT current_user, count(*) AS visible_orders FROM orders;
COMMIT;

\echo
\echo '5. restrict a key to a network and a web origin'
SELECT key_id AS web_key, token AS web_token FROM apikeys.apikey_create('web key', role => 'demo_api',
       allowed_ips => '{10.0.0.0/8}', allowed_origins => '{https://*.example.com}') \gset
SELECT (apikeys.apikey_verify(:'web_token', client_ip => '10.1.2.3', origin => 'https://app.example.com')).status AS from_inside,
       (apikeys.apikey_verify(:'web_token', client_ip => '192.0.2.1', origin => 'https://app.example.com')).status AS other_network,
       (apikeys.apikey_verify(:'web_token', client_ip => '10.1.2.3', origin => 'https://evil.test')).status AS other_origin;

\echo
\echo '6. a rate limit in shared memory: 3 requests at once, then rate_limited with retry_after'
SELECT token AS rl_token FROM apikeys.apikey_create('limited key', role => 'demo_api', rate_limit => '3/minute') \gset
SELECT (apikeys.apikey_verify(:'rl_token')).status AS first;
SELECT (apikeys.apikey_verify(:'rl_token')).status AS second;
SELECT (apikeys.apikey_verify(:'rl_token')).status AS third;
SELECT status, retry_after FROM apikeys.apikey_verify(:'rl_token');
\echo 'live usage per key (a background worker flushes it to apikeys.usage_hourly):'
SELECT k.name, u.uses, u.rate_limited FROM apikeys.usage u JOIN apikeys.keys k USING (key_id) ORDER BY k.name;
\echo 'format and checksum, offline (what a leak scanner checks):'
SELECT apikeys.apikey_check(:'token') AS real_token, apikeys.apikey_check(:'token' || 'x') AS typo;

\echo
\echo '7. rotate it: same key id, new secret; the old one stops at commit'
SELECT apikeys.apikey_rotate(:'key_id') AS new_token \gset
SELECT (apikeys.apikey_verify(:'token')).status AS old_token,
       (apikeys.apikey_verify(:'new_token')).status AS new_token;

\echo
\echo '8. revoke it: permanent, effective for every session at commit'
SELECT apikeys.apikey_revoke(:'key_id') \g /dev/null
SELECT (apikeys.apikey_verify(:'new_token')).status;
SELECT key_id, name, role, status, created_by, rotated_at IS NOT NULL AS rotated
  FROM apikeys.keys;

\echo
\echo '9. the audit log (no secret, no hash), hash-chained: any edit behind the triggers shows'
SELECT seq, at::time(0) AS at, action, key_id, actor, actor_role, left(changes::text, 60) AS changes
  FROM apikeys.audit_log ORDER BY seq;
SELECT apikeys.audit_verify() AS chain_intact;

\echo
\echo '10. requests made with a key: the failures above, aggregated, as the worker writes them'
DO $$ BEGIN
    FOR i IN 1..100 LOOP   -- (it writes every apikeys.usage_flush_interval, 5 s)
        EXIT WHEN (SELECT pending FROM apikeys.request_log_stats()) = 0;
        PERFORM pg_sleep(0.1);
    END LOOP;
END $$;
SELECT first_at::time(0) AS at, kind, status, key_id, key_name, db_user, requests
  FROM apikeys.request_log ORDER BY first_at;
SQL

# 11. PostgREST in front of the cluster: the README's PostgREST setup, as
# written, in database shop, and curl against it.
README_SETUP=$(sed -n '/<!-- postgrest-setup/,$p' README.md)
SETUP_SQL=$(printf '%s\n' "$README_SETUP" | awk '/^```sql$/ && !done { on = 1; next } on && /^```$/ { on = 0; done = 1 } on')
SETUP_INI=$(printf '%s\n' "$README_SETUP" | awk '/^```ini$/ && !done { on = 1; next } on && /^```$/ { on = 0; done = 1 } on')
psql -X -q -v ON_ERROR_STOP=1 -d postgres -c 'CREATE DATABASE shop'
SHOP_TOKEN=$(printf '%s\n' "$SETUP_SQL" | psql -X -q -A -t -v ON_ERROR_STOP=1 -d shop | tail -n 1 | cut -d'|' -f2)
read -r WRITE_TOKEN LIMITED_TOKEN < <(psql -X -q -A -t -v ON_ERROR_STOP=1 -d shop <<'SQL' | paste -sd' '
INSERT INTO api.orders (tenant, item) VALUES ('acme', 'anvil'), ('acme', 'rocket skates'), ('globex', 'gizmo');
SELECT token FROM apikeys.apikey_create('acme writer', role => 'api_client',
    scopes => '{orders:write}', metadata => '{"tenant": "acme"}');
SELECT token FROM apikeys.apikey_create('acme limited', role => 'api_client',
    scopes => '{orders:*}', metadata => '{"tenant": "acme"}', rate_limit => '2/minute');
SQL
)

PGRST_PORT=$(free_port)
PGRST_ADMIN_PORT=$(free_port)
PGRST_CONF=$PGTMP/postgrest.conf
PGRST_PID=$PGTMP/postgrest.pid
PGRST_LOG=$PGTMP/postgrest.log
# the README's postgrest.conf, db-uri pointed at the demo cluster's socket
{
    printf '%s\n' "$SETUP_INI" | grep -v '^db-uri'
    echo "db-uri = \"postgres://authenticator@/shop?host=$PGSOCK&port=$PGPORT\""
    echo 'server-host = "127.0.0.1"'
    echo "server-port = $PGRST_PORT"
    echo "admin-server-port = $PGRST_ADMIN_PORT"
} >"$PGRST_CONF"
nohup "$POSTGREST_BIN" "$PGRST_CONF" >"$PGRST_LOG" 2>&1 </dev/null &
echo $! >"$PGRST_PID"
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PGRST_ADMIN_PORT/ready" >/dev/null 2>&1 && break
    kill -0 "$(cat "$PGRST_PID")" 2>/dev/null || { cat "$PGRST_LOG"; exit 1; }
    sleep 0.1
done
API=http://127.0.0.1:$PGRST_PORT

# One request: the command (tokens abbreviated), then the response's status
# line, the headers a client acts on, and the body.
show() {
    local label=$1; shift
    local shown=("$@") i
    for i in "${!shown[@]}"; do
        shown[i]=$(printf '%s' "${shown[i]}" | sed -E 's/(_[0-9A-Za-z]{4})[0-9A-Za-z]{20,}/\1.../')
        [[ "${shown[i]}" =~ ^[-A-Za-z0-9/:._]*$ ]] || shown[i]="'${shown[i]}'"
    done
    echo
    echo "$label"
    echo "  \$ curl -i ${shown[*]}"
    curl -s -i "$@" | tr -d '\r' | awk '
        NR == 1 || tolower($0) ~ /^(www-authenticate|retry-after):/ { print "  " $0; next }
        /^$/ { body = 1; next }
        body { print "  " $0 }'
}

echo
echo "11. $("$POSTGREST_BIN" --version) serves the README's setup (database shop) on $API"
show "200: the key of tenant acme sees acme's orders only (globex's row stays hidden)" \
    "$API/orders?select=item,tenant" -H "X-API-Key: $SHOP_TOKEN"
show '401: no key (the README sets apikeys.require_key)' "$API/orders"
show '401: a key with a typo (its checksum fails)' "$API/orders" -H "X-API-Key: ${SHOP_TOKEN}x"
show '403: a key with only orders:write, on GET /orders (route scope orders:read)' \
    "$API/orders" -H "X-API-Key: $WRITE_TOKEN"
show '201: that key adds an order; the tenant comes from its metadata' \
    "$API/orders" -H "X-API-Key: $WRITE_TOKEN" -H 'Content-Type: application/json' \
    -H 'Prefer: return=representation' -d '{"item": "bird seed"}'
for n in 1 2; do
    show "200: a key limited to 2/minute, request $n" "$API/orders?select=item" -H "apikey: $LIMITED_TOKEN"
done
show '429: request 3, with Retry-After' "$API/orders?select=item" -H "apikey: $LIMITED_TOKEN"

SUDO=$(if [ "$(id -u)" -ne 0 ]; then echo "sudo "; fi)
cat <<EOF

The demo cluster is still running, with apikeys installed in database postgres
(and the README's PostgREST setup in database shop):

    psql -h $PGSOCK -p $PGPORT -U postgres postgres

(It trusts connections on that Unix socket only; its loopback port refuses all.)

PostgREST is still running too, on $API (its log: $PGRST_LOG):

    curl $API/orders -H "X-API-Key: $SHOP_TOKEN"

Stop PostgREST (by its pid file) and the cluster (by its data directory), and
remove their files, with:

    kill \$(cat $PGRST_PID) && ${SUDO}runuser -u postgres -- $PGBIN/pg_ctl -D $PGDATA_DIR stop && ${SUDO}rm -rf $PGTMP
EOF
