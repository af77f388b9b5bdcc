# Keys as roles on a pooled connection.  The README's PostgREST setup is run
# as written (its sql and ini blocks), then PostgREST's statement sequence
# goes through a real pgbouncer in transaction mode with a pool of one
# server connection: every client after a login shares that backend, and
# neither the key's role nor the key may outlive the transaction.  The
# library is not preloaded, so settings made before it loads are covered too.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);

# --- the README's setup -----------------------------------------------------
my $readme_path = "$ENV{TESTDIR}/README.md";
ok(-f $readme_path, 'README.md is next to the tests') or BAIL_OUT('no README.md');
my $readme = slurp_file($readme_path);
my ($after_marker) = $readme =~ /<!-- postgrest-setup:[^>]*-->(.*)/s;
ok(defined $after_marker, 'README marks its PostgREST setup') or BAIL_OUT('no marker');
my ($setup_sql) = $after_marker =~ /```sql\n(.*?)```/s;
my ($conf_text) = $after_marker =~ /```ini\n(.*?)```/s;
my %conf = $conf_text =~ /^([\w-]+)\s*=\s*"([^"]*)"/mg;
my ($dbname) = $conf{'db-uri'} =~ m{/([^/?]+)$};
ok($setup_sql && $dbname && $conf{'db-anon-role'} && $conf{'db-pre-request'} && $conf{'db-schemas'},
   "README setup parsed (database $dbname, hook $conf{'db-pre-request'})");
my $anon = $conf{'db-anon-role'};
my $hook = join('.', map { qq{"$_"} } split(/\./, $conf{'db-pre-request'}));

my $node = PostgreSQL::Test::Cluster->new('pooled');
$node->init;
$node->start;
$node->safe_psql('postgres', "CREATE DATABASE $dbname");
my ($rc, $setup_out, $setup_err) = $node->psql($dbname, $setup_sql, on_error_stop => 1);
is($rc, 0, 'the README setup runs as written') or diag($setup_err);
my ($key_id, $token) = (split /\n/, $setup_out)[-1] =~ /^(\w{12})\|(\S+)$/;
ok($token, 'the setup printed a key id and a token');

# --- pgbouncer: transaction pooling, one server connection -----------------
my ($pgbouncer) = grep { -x $_ } ((map { "$_/pgbouncer" } split /:/, $ENV{PATH}), '/usr/sbin/pgbouncer');
ok($pgbouncer, 'pgbouncer is installed') or BAIL_OUT('pgbouncer missing: test/lib.sh ensure_deps installs it');
my $dir = PostgreSQL::Test::Utils::tempdir_short();
my $port = PostgreSQL::Test::Cluster::get_free_port();
append_to_file("$dir/userlist.txt", qq{"authenticator" ""\n"postgres" ""\n});
append_to_file("$dir/pgbouncer.ini", join("\n",
    '[databases]',
    "$dbname = host=" . $node->host . ' port=' . $node->port . " dbname=$dbname",
    '[pgbouncer]',
    "listen_port = $port",
    "unix_socket_dir = $dir",
    'auth_type = trust',
    "auth_file = $dir/userlist.txt",
    'pool_mode = transaction',
    'default_pool_size = 1',
    'min_pool_size = 0',
    'reserve_pool_size = 0',
    'max_client_conn = 20',
    "logfile = $dir/pgbouncer.log",
    "pidfile = $dir/pgbouncer.pid",
    ''));
my ($pgb_out, $pgb_err) = ('', '');
my $bouncer = IPC::Run::start([ $pgbouncer, "$dir/pgbouncer.ini" ],
    '>', \$pgb_out, '2>', \$pgb_err);

# Run a script as one client of pgbouncer (a psql of its own); returns the
# exit code, stdout and stderr.
sub client
{
    my ($sql, %opts) = @_;
    my ($out, $err) = ('', '');
    my @cmd = ('psql', '-XAtq', '-h', $dir, '-p', $port,
        '-U', $opts{user} // 'authenticator', '-d', $dbname, '-f', '-');
    push @cmd, '-v', 'ON_ERROR_STOP=1' unless $opts{keep_going};
    IPC::Run::run(\@cmd, '<', \$sql, '>', \$out, '2>', \$err);
    chomp $out;
    return ($? >> 8, $out, $err);
}

my $ready = 0;
for (1 .. 100)
{
    my ($r) = client('SELECT 1');
    if ($r == 0) { $ready = 1; last; }
    usleep(100_000);
}
ok($ready, 'pgbouncer accepts connections') or diag($pgb_err . slurp_file("$dir/pgbouncer.log"));

# One request as PostgREST sends it: BEGIN (READ ONLY for GET), the
# transaction settings in one statement, the pre-request hook, the query,
# COMMIT (which ends a failed transaction as a rollback, as PostgREST's
# rollback would).
sub request
{
    my ($method, $path, $headers, $query) = @_;
    my $json = '{' . join(',', map { qq{"$_":"$headers->{$_}"} } sort keys %$headers) . '}';
    my $mode = ($method eq 'GET' || $method eq 'HEAD') ? ' READ ONLY' : '';
    return client(qq{BEGIN ISOLATION LEVEL READ COMMITTED$mode;
SELECT set_config('search_path', '"$conf{'db-schemas'}"', true),
       set_config('role', '$anon', true),
       set_config('request.jwt.claims', '{"role":"$anon"}', true),
       set_config('request.method', '$method', true),
       set_config('request.path', '$path', true),
       set_config('request.headers', '$json', true),
       set_config('request.cookies', '{}', true) \\g /dev/null
SELECT $hook() \\g /dev/null
$query
COMMIT;
}, keep_going => 1);
}

# What a client finds on the pooled connection when it arrives.
my $state_sql = q{BEGIN;
SELECT pg_backend_pid(), current_user, session_user, current_setting('role'),
       coalesce(apikeys.apikey_current(), 'no key');
COMMIT;};
my $clean = qr/^(\d+)\|authenticator\|authenticator\|none\|no key$/;

# --- requests ---------------------------------------------------------------
my ($r, $out, $err) = request('POST', '/orders', { 'x-api-key' => $token },
    q{INSERT INTO orders (item) VALUES ('anvil') RETURNING tenant, key_id;
SELECT pg_backend_pid(), current_user, apikeys.apikey_current();});
is($err, '', 'POST /orders with X-API-Key');
my ($row, $who) = split /\n/, $out;
is($row, "acme|$key_id", 'the policy and the column defaults saw the key');
my ($pid) = $who =~ /^(\d+)\|api_client\|\Q$key_id\E$/;
ok($pid, 'the transaction ran as the key\'s role with the key recorded') or diag($out);

($r, $out, $err) = client($state_sql);
like($out, $clean, 'the next client finds neither the role nor the key');
is(($out =~ $clean)[0], $pid, '... on the same server connection');

($r, $out, $err) = request('GET', '/orders', { 'authorization' => "ApiKey $token" },
    q{SELECT count(*), string_agg(item, ','), pg_backend_pid() FROM orders;});
is($err, '', 'GET /orders with Authorization: ApiKey, READ ONLY');
is($out, "1|anvil|$pid", 'the key reads its tenant\'s rows, on the same backend');

($r, $out, $err) = request('GET', '/orders', { 'accept' => '*/*' }, 'SELECT count(*) FROM orders;');
like($err, qr/\{"code":"apikey_required".*"status":401,"headers":\{"WWW-Authenticate":"ApiKey"\}/s,
    'GET /orders without a key gets 401 (apikeys.require_key set on the authenticator, as the README does)');
is($out, '', '... and no rows');
unlike($err, qr/\Q$token\E/, '... and no token in it');

($r, $out, $err) = request('GET', '/orders', { 'x-api-key' => "${token}x" }, 'SELECT 1;');
like($err, qr/"code":"apikey_invalid".*"status":401/s, 'a bad key gets 401');
unlike($err, qr/\Q$token\E/, '... without echoing it');

($r, $out, $err) = request('POST', '/orders', { 'apikey' => $token, 'x-api-key' => $token },
    q{INSERT INTO orders (item) VALUES ('rocket');
SELECT pg_backend_pid(), current_user;});
is($out, "$pid|api_client", 'the same key in two headers is one key; still the same backend');
($r, $out, $err) = client($state_sql);
like($out, $clean, 'the next client finds neither the role nor the key');

# A login outside a transaction block lasts one statement.
($r, $out, $err) = client(qq{SELECT status FROM apikeys.apikey_login('$token');
SELECT current_user, coalesce(apikeys.apikey_current(), 'no key');});
is($out, "valid\nauthenticator|no key", 'an autocommit login ends with its statement');
like($err, qr/WARNING:.*outside a transaction block/, '... and says so');
($r, $out, $err) = client($state_sql);
like($out, $clean, 'the next client finds nothing of it');

# A transaction that logs in, fails and rolls back.
($r, $out, $err) = client(qq{BEGIN;
SELECT status FROM apikeys.apikey_login('$token');
SELECT 1 / 0;
ROLLBACK;}, keep_going => 1);
like($err, qr/division by zero/, 'a failing transaction after a login');
($r, $out, $err) = client($state_sql);
like($out, $clean, 'the next client finds nothing of it');
is(($out =~ $clean)[0], $pid, '... on the same server connection');

# A client that disconnects in the middle of a logged-in transaction.
($r, $out, $err) = client(qq{BEGIN;
SELECT status FROM apikeys.apikey_login('$token');});
($r, $out, $err) = client($state_sql);
like($out, $clean, 'after a client left mid-transaction, the next finds nothing');

# Settings a connecting role makes before the library is loaded cannot undo
# the superuser's apikeys.require_key nor set apikeys.client_ip_header.
($r, $out, $err) = $node->psql($dbname, qq{SET apikeys.require_key = off;
SET apikeys.client_ip_header = 'x-forwarded-for';
BEGIN READ ONLY;
SELECT set_config('role', '$anon', true), set_config('request.method', 'GET', true),
       set_config('request.path', '/products', true), set_config('request.headers', '{}', true) \\g /dev/null
SELECT $hook();}, extra_params => [ '-U', 'authenticator' ]);
like($err, qr/permission denied to set parameter "apikeys.require_key"/,
    'a SET made before the library loaded is refused when it loads');
like($err, qr/"code":"apikey_required"/, '... and require_key stays on');
($r, $out, $err) = $node->psql($dbname, q{SET apikeys.client_ip_header = 'x-forwarded-for';
SELECT 1 FROM apikeys.apikey_verify('x');
SELECT 'header=' || current_setting('apikeys.client_ip_header');}, extra_params => [ '-U', 'authenticator' ]);
is($out, "1\nheader=", 'apikeys.client_ip_header stays off');

# --- done -------------------------------------------------------------------
$bouncer->kill_kill;
$bouncer->finish;
$node->stop;
done_testing();
