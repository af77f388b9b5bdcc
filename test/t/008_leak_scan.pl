# Leak scan: with every logging facility an operator might turn on, the whole
# flow (lifecycle, verify, login, PostgREST's pre-request hook) run over the
# extended protocol leaves no secret and no stored hash in the server log,
# pg_stat_statements or pg_stat_activity.
#
# Tokens travel as bound parameters (pgbench -M extended), the way the README
# tells applications to pass them; log_parameter_max_length = 0 keeps
# PostgreSQL from logging parameter values, as the README recommends.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('leaks');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys, auto_explain, pg_stat_statements'
log_statement = all
log_min_duration_statement = 0
log_parameter_max_length = 0
log_min_messages = debug1
log_min_error_statement = debug1
log_connections = on
auto_explain.log_min_duration = 0
auto_explain.log_nested_statements = on
auto_explain.log_verbose = on
pg_stat_statements.track = all
pg_stat_statements.track_utility = on
});
# From PostgreSQL 16 on, auto_explain also logs the bound parameters of the
# statements it explains, whole by default (README: Security model)
$node->append_conf('postgresql.conf', 'auto_explain.log_parameter_max_length = 0')
  if $node->pg_version >= 16;
$node->start;

$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE EXTENSION pg_stat_statements;
    CREATE ROLE web_anon NOLOGIN;
    CREATE ROLE web_user NOLOGIN;
    CREATE ROLE authenticator LOGIN NOINHERIT;
    GRANT web_anon, web_user TO authenticator;
    -- PostgREST binds request.headers as text: a verbose plan of its
    -- statement would print them (README: PostgREST)
    ALTER ROLE authenticator SET auto_explain.log_verbose = off;
    CREATE ROLE app_backend LOGIN;
    GRANT web_user TO app_backend;
    GRANT USAGE ON SCHEMA apikeys TO web_anon, web_user;
    CREATE TABLE data (tenant int, v text);
    INSERT INTO data VALUES (1, 'one'), (2, 'two');
    ALTER TABLE data ENABLE ROW LEVEL SECURITY;
    CREATE POLICY by_tenant ON data USING (tenant = (apikeys.apikey_metadata() ->> 'tenant')::int);
    GRANT SELECT ON data TO web_anon, web_user;
});
# the lifecycle; tokens come back as results and stay in perl variables
my %tok;
for my $row (split /\n/, $node->safe_psql('postgres', q{
    SELECT 'a', token FROM apikeys.apikey_create('a', role => 'web_user', scopes => '{data.read}', metadata => '{"tenant": 1}')
    UNION ALL SELECT 'b', token FROM apikeys.apikey_create('b', role => 'web_user', allowed_ips => '{10.0.0.0/8}')
    UNION ALL SELECT 'c', token FROM apikeys.apikey_create('c')}))
{
    my ($l, $t) = split /\|/, $row;
    $tok{$l} = $t;
}
$tok{a2} = $node->safe_psql('postgres', q{
    SELECT apikeys.apikey_rotate(key_id, grace => '1 hour') FROM apikeys.keys WHERE name = 'a'});
$node->safe_psql('postgres', q{
    SELECT apikeys.apikey_update(key_id, metadata => '{"tenant": 1, "plan": "pro"}') FROM apikeys.keys WHERE name = 'a';
    SELECT apikeys.apikey_disable(key_id) FROM apikeys.keys WHERE name = 'c';
});
is(scalar(keys %tok), 4, 'tokens handed out');

# The flow over the extended protocol, every token a bound parameter: an
# application backend binds tokens as apikeys.apikey (the README's advice),
# PostgREST's authenticator runs its pre-request sequence.
sub write_script
{
    my ($name, $body) = @_;
    my $path = $node->basedir . "/$name.sql";
    open my $fh, '>', $path or die;
    print $fh $body;
    close $fh;
    return $path;
}
my $app = write_script('app', <<'SQL');
SELECT (apikeys.apikey_verify(:token::apikeys.apikey, 'data.read')).status;
SELECT (apikeys.apikey_verify(:old_token::apikeys.apikey, 'data.read')).valid;
SELECT apikeys.apikey_verify(:ip_token::apikeys.apikey, client_ip => '10.1.2.3');
SELECT (apikeys.apikey_verify(:disabled_token::apikeys.apikey)).status;
BEGIN;
SELECT apikeys.apikey_login(:token::apikeys.apikey, 'data.read');
\sleep 1500 ms
SELECT apikeys.apikey_current(), count(*) FROM data;
COMMIT;
SQL
my $postgrest = write_script('postgrest', <<'SQL');
BEGIN READ ONLY;
SET LOCAL ROLE web_anon;
SELECT set_config('request.headers', :headers, true), set_config('request.method', 'GET', true),
       set_config('request.path', '/data', true);
SELECT apikeys.pre_request();
\sleep 1500 ms
SELECT current_user, count(*) FROM data;
COMMIT;
SQL
my $headers = qq({"x-api-key": "$tok{a2}", "accept": "*/*"});
my %runs = (
    app => [ $app, 'app_backend', '-D', "token=$tok{a2}", '-D', "old_token=$tok{a}",
             '-D', "ip_token=$tok{b}", '-D', "disabled_token=$tok{c}" ],
    postgrest => [ $postgrest, 'authenticator', '-D', "headers=$headers" ]);
my (%h, %out, %err);
for my $r (sort keys %runs)
{
    my ($file, $user, @vars) = @{ $runs{$r} };
    ($out{$r}, $err{$r}) = ('', '');
    $h{$r} = IPC::Run::start([ 'pgbench', '-n', '-M', 'extended', '-t', '2', '-f', $file, @vars,
                               '-h', $node->host, '-p', $node->port, '-U', $user, 'postgres' ],
                             '>', \$out{$r}, '2>', \$err{$r});
}
sleep 1;
# what other sessions see while the flows run
my $activity = $node->safe_psql('postgres', q{
    SELECT string_agg(coalesce(query, ''), E'\n') FROM pg_stat_activity});
for my $r (sort keys %runs)
{
    $h{$r}->finish;
    is($h{$r}->full_result(0), 0, "the $r flow ran over the extended protocol") or diag($err{$r});
}
like($activity, qr/apikey_login.*\n(.*\n)*.*pre_request|pre_request.*\n(.*\n)*.*apikey_login/, 'pg_stat_activity was sampled during the flows') or diag($activity);

my $statements = $node->safe_psql('postgres', q{
    SELECT string_agg(query, E'\n') FROM pg_stat_statements});
like($statements, qr/apikey_login/, 'pg_stat_statements saw the flow');
my @hashes = split /\n/, $node->safe_psql('postgres', q{
    SELECT encode(h, 'hex') FROM apikeys_internal.key_catalog,
           LATERAL (VALUES (hash), (prev_hash)) v(h) WHERE h IS NOT NULL});
is(scalar @hashes, 4, 'four stored hashes (one key in a grace period)');

$node->stop;
my $log = slurp_file($node->logfile);
$log =~ s/\n\t/ /g;
like($log, qr/execute <unnamed>: .*apikey_login/, 'the log recorded the extended-protocol statements');
like($log, qr/Query Text: .*apikey_login/, 'auto_explain logged the plans');

sub byte_list
{
    return join(' ', map { $_ > 127 ? $_ - 256 : $_ } unpack('C*', shift));
}
my %places = (log => $log, 'pg_stat_statements' => $statements, 'pg_stat_activity' => $activity);
for my $place (sort keys %places)
{
    my $text = $places{$place};
    my $hits = 0;
    for my $t (values %tok)
    {
        my $secret = substr($t, -38, 32);
        my $n = () = $text =~ /\Q$secret\E/g;
        $hits += $n;
        if ($n)
        {
            my ($ctx) = $text =~ /(.{0,300}\Q$secret\E.{0,100})/s;
            diag("secret found in $place: ...$ctx...");
        }
    }
    is($hits, 0, "no secret in $place");
    $hits = 0;
    for my $hx (@hashes)
    {
        $hits += () = $text =~ /\Q$hx\E/gi;
        my $bl = byte_list(pack('H*', $hx));
        $hits += () = $text =~ /\Q$bl\E/g;
    }
    is($hits, 0, "no stored hash in $place");
}

# Self-check: a token in the statement text (what the README warns against)
# is found by the same scan.
$node->start;
$node->safe_psql('postgres', "SELECT apikeys.apikey_verify('$tok{c}')");
$node->stop;
$log = slurp_file($node->logfile);
my $secret_c = substr($tok{c}, -38, 32);
ok(index($log, $secret_c) >= 0, 'scanner self-check: a token written into a statement is found');

done_testing();
