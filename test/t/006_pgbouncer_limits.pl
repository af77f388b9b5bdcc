# Limits and usage through a pooler: a real pgbouncer in transaction mode in
# front of a server that preloads apikeys, clients on the extended protocol
# (pgbench -M extended: the token is a bind parameter), few server
# connections shared by many clients.
#  - rate limits and quotas are exact: N clients through the pooler never get
#    more grants than the limit allows, and get all of them; the worker's
#    flush writes exactly what they were told;
#  - apikey_login refuses a rate-limited or over-quota key with SQLSTATE
#    53400 (the status in the detail, when to retry in the hint), and
#    pre_request answers 429 with Retry-After; a refused login leaves
#    nothing on the shared connection;
#  - one request per statement (src/verify.c, the statement memo): repeats
#    within one statement spend once, and nothing of it carries over to the
#    next statement, transaction or client on the same server connection.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('pooled_limits');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys'
apikeys.database = 'postgres'
apikeys.usage_flush_interval = '200ms'
max_connections = 30
});
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE authenticator LOGIN NOINHERIT;
    CREATE ROLE api_client NOLOGIN;
    GRANT api_client TO authenticator;
    CREATE TABLE tok (label text PRIMARY KEY, key_id text, token text);
    INSERT INTO tok SELECT 'rate', * FROM apikeys.apikey_create('rate', role => 'api_client', rate_limit => '50/hour');
    INSERT INTO tok SELECT 'quota', * FROM apikeys.apikey_create('quota', role => 'api_client', remaining => 40);
    INSERT INTO tok SELECT 'login', * FROM apikeys.apikey_create('login', role => 'api_client', rate_limit => '5/hour');
    INSERT INTO tok SELECT 'loginq', * FROM apikeys.apikey_create('loginq', role => 'api_client', remaining => 3);
    INSERT INTO tok SELECT 'memo', * FROM apikeys.apikey_create('memo', role => 'api_client', remaining => 100000);
    -- what each client was told, and on which server connection
    CREATE TABLE seen (label text, status text, pid int);
    GRANT INSERT ON seen TO authenticator;
});
my %token = split /[|\n]/, $node->safe_psql('postgres', 'SELECT label, token FROM tok');

# --- pgbouncer: transaction pooling --------------------------------------------
# "postgres": two server connections; "one": a single one, which every
# client's transactions share in turn.
my ($pgbouncer) = grep { -x $_ } ((map { "$_/pgbouncer" } split /:/, $ENV{PATH}), '/usr/sbin/pgbouncer');
ok($pgbouncer, 'pgbouncer is installed') or BAIL_OUT('pgbouncer missing: test/lib.sh ensure_deps installs it');
my $dir = PostgreSQL::Test::Utils::tempdir_short();
my $port = PostgreSQL::Test::Cluster::get_free_port();
my $server = 'host=' . $node->host . ' port=' . $node->port . ' dbname=postgres';
append_to_file("$dir/userlist.txt", qq{"authenticator" ""\n"postgres" ""\n});
append_to_file("$dir/pgbouncer.ini", join("\n",
    '[databases]',
    "postgres = $server pool_size=2",
    "one = $server pool_size=1",
    '[pgbouncer]',
    "listen_port = $port",
    "unix_socket_dir = $dir",
    'auth_type = trust',
    "auth_file = $dir/userlist.txt",
    'pool_mode = transaction',
    'default_pool_size = 2',
    'min_pool_size = 0',
    'reserve_pool_size = 0',
    'max_client_conn = 50',
    "logfile = $dir/pgbouncer.log",
    "pidfile = $dir/pgbouncer.pid",
    ''));
my ($pgb_out, $pgb_err) = ('', '');
my $bouncer = IPC::Run::start([ $pgbouncer, "$dir/pgbouncer.ini" ], '>', \$pgb_out, '2>', \$pgb_err);

# One psql client of pgbouncer; returns exit code, stdout, stderr.
sub client
{
    my ($sql, $db) = @_;
    my ($out, $err) = ('', '');
    IPC::Run::run([ 'psql', '-XAtq', '-h', $dir, '-p', $port, '-U', 'authenticator',
                    '-d', $db // 'postgres', '-f', '-' ], '<', \$sql, '>', \$out, '2>', \$err);
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

# pgbench through pgbouncer on the extended protocol, the token bound as :tk
sub pooled_pgbench
{
    my ($name, $db, $opts, $label, $script) = @_;
    my $file = "$dir/$name.sql";
    open my $fh, '>', $file or die;
    print $fh $script;
    close $fh;
    my ($out, $err) = ('', '');
    IPC::Run::run([ 'pgbench', '-n', '-M', 'extended', split(/ /, $opts), '-f', $file,
                    '-D', "tk=$token{$label}", '-h', $dir, '-p', $port, '-U', 'authenticator', $db ],
                  '>', \$out, '2>', \$err);
    is($? >> 8, 0, "pgbench through pgbouncer: $name") or diag($err);
    return $out;
}

sub q1 { return $node->safe_psql('postgres', $_[0]); }

# What the clients were told, and on how many server connections.
sub told
{
    my ($label) = @_;
    return q1(qq{
        SELECT count(*) FILTER (WHERE status = 'valid') || ' of ' || count(*)
               || ' on ' || count(DISTINCT pid) || ' server connections'
          FROM seen WHERE label = '$label'});
}

# Wait for the worker to flush the key's counts; return them as flushed.
sub flushed
{
    my ($label, $expected) = @_;
    my $q = qq{
        SELECT u.uses || ' ' || u.rate_limited || ' ' || u.quota_exceeded
          FROM apikeys_internal.usage u JOIN tok USING (key_id) WHERE tok.label = '$label'};
    $node->poll_query_until('postgres', $q, $expected);
    return q1($q);
}

# --- exact limits: 8 clients x 40 requests over 2 server connections ---------------
pooled_pgbench('rate', 'postgres', '-c 8 -j 2 -t 40', 'rate', q{
INSERT INTO seen SELECT 'rate', v.status, pg_backend_pid() FROM apikeys.apikey_verify(:tk) v;
});
is(told('rate'), '50 of 320 on 2 server connections',
   '50/hour through the pooler: exactly 50 of 320 requests granted');
is(flushed('rate', '50 270 0'), '50 270 0', 'flushed usage: 50 uses, 270 rate limited');

pooled_pgbench('quota', 'postgres', '-c 8 -j 2 -t 40', 'quota', q{
INSERT INTO seen SELECT 'quota', v.status, pg_backend_pid() FROM apikeys.apikey_verify(:tk) v;
});
is(told('quota'), '40 of 320 on 2 server connections',
   'a quota of 40 through the pooler: exactly 40 of 320 requests granted');
is(flushed('quota', '40 0 280'), '40 0 280', 'flushed usage: 40 uses, 280 over quota');
is(q1(q{SELECT remaining FROM apikeys_internal.quota_state JOIN tok USING (key_id) WHERE label = 'quota'}),
   '0', 'flushed quota: 0 left');

# --- one request per statement, and no further, on a shared connection ----------
# Each run of the script: a statement reading three fields of one
# verification (one request), a second statement in the same transaction (a
# second request), an autocommit statement (a third); 4 clients take turns
# on the single server connection of "one", 25 runs each.
pooled_pgbench('memo', 'one', '-c 4 -j 2 -t 25', 'memo', q{
BEGIN;
SELECT (apikeys.apikey_verify(:tk)).valid, (apikeys.apikey_verify(:tk)).status, (apikeys.apikey_verify(:tk)).remaining;
INSERT INTO seen SELECT 'memo', v.status, pg_backend_pid() FROM apikeys.apikey_verify(:tk) v;
COMMIT;
SELECT (apikeys.apikey_verify(:tk)).valid, (apikeys.apikey_verify(:tk)).remaining;
});
is(told('memo'), '100 of 100 on 1 server connections', 'the 4 clients shared one server connection');
is(q1(q{SELECT remaining FROM apikeys.keys WHERE name = 'memo'}), 100000 - 300,
   'each statement spent once, whatever it read: 300 requests in 100 runs of 3 statements');
is(flushed('memo', '300 0 0'), '300 0 0', 'and counted once each');

# --- login and limits ------------------------------------------------------------------
# 8 clients at once, 2 logins each, with a 5/hour key
my $login_sql = qq{\\set VERBOSITY verbose
BEGIN;
SELECT status, current_user FROM apikeys.apikey_login('$token{login}');
COMMIT;
BEGIN;
SELECT status, current_user FROM apikeys.apikey_login('$token{login}');
COMMIT;
};
my @runs;
foreach my $i (1 .. 8)
{
    # (IPC::Run consumes its input: each client its own copy)
    my %r = (in => $login_sql, out => '', err => '');
    $r{h} = IPC::Run::start([ 'psql', '-XAtq', '-h', $dir, '-p', $port, '-U', 'authenticator',
                              '-d', 'postgres', '-f', '-' ],
                            '<', \$r{in}, '>', \$r{out}, '2>', \$r{err});
    push @runs, \%r;
}
$_->{h}->finish foreach @runs;
my $out = join('', map { $_->{out} } @runs);
my $err = join('', map { $_->{err} } @runs);
my $logged_in = () = $out =~ /^valid\|api_client$/mg;
my $refused = () = $err =~ /ERROR:  53400: api key is over its limit$/mg;
is($logged_in, 5, '5/hour: 5 of 16 logins through the pooler succeed, as the key\'s role') or diag("$out\n$err");
is($refused, 11, '... the other 11 fail with SQLSTATE 53400');
like($err, qr/DETAIL:  The key's status is rate_limited\.\nHINT:  Retry in \d+ seconds\./,
     '... with the status in the detail and when to retry in the hint');
unlike($err, qr/\Q$token{login}\E/, '... and without the token');

# four logins, a transaction each
my ($r, $o, $e) = client("\\set VERBOSITY verbose\n" . (qq{BEGIN;
SELECT status FROM apikeys.apikey_login('$token{loginq}');
COMMIT;
} x 4));
is($o, "valid\nvalid\nvalid", 'a quota of 3: 3 logins');
like($e, qr/ERROR:  53400: api key is over its limit\nDETAIL:  The key's status is quota_exceeded\.$/m,
     'the fourth fails with 53400, quota_exceeded');

# pre_request, as PostgREST calls it, answers 429 with Retry-After
($r, $o, $e) = client(qq{BEGIN READ ONLY;
SELECT set_config('request.method', 'GET', true), set_config('request.path', '/orders', true),
       set_config('request.headers', '{"x-api-key":"$token{login}"}', true) \\g /dev/null
SELECT apikeys.pre_request();
COMMIT;});
like($e, qr/"status":429,"headers":\{"Retry-After":"\d+"\}/, 'pre_request: HTTP 429 with Retry-After');

# whoever comes next on the shared connections finds no role and no key
foreach my $db ('postgres', 'one')
{
    ($r, $o, $e) = client(q{SELECT current_user, session_user, current_setting('role'),
                                   coalesce(apikeys.apikey_current(), 'no key');}, $db);
    is($o, 'authenticator|authenticator|none|no key', "the next client on \"$db\" finds nothing of them");
}

$bouncer->kill_kill;
$bouncer->finish;
$node->stop;
done_testing();
