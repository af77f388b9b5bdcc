# Imported keys across the server's boundaries: a pg_dump restored into a
# fresh database keeps legacy tokens verifying (the digest index comes back
# with the data), a hot standby verifies them and sees their revocation,
# apikey_login accepts them, and with every debug print and auto_explain on
# neither a legacy token nor its digest reaches the server log.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('import');
$node->init(allows_streaming => 1);
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys, auto_explain'
auto_explain.log_min_duration = 0
auto_explain.log_nested_statements = on
auto_explain.log_verbose = on
log_statement = all
});
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE regress_imp_svc NOLOGIN;
    CREATE ROLE regress_imp_app LOGIN;
    GRANT regress_imp_svc TO regress_imp_app;
    -- the test's own copy of the legacy tokens: no statement holds one
    CREATE TABLE legacy (label text PRIMARY KEY, token text, key_id text);
    INSERT INTO legacy (label, token) VALUES
        ('a', 'sk_live_' || md5('a') || md5('aa')),
        ('b', 'pat-' || md5('b')),
        ('c', 'ghp_' || md5('c'));
    GRANT SELECT ON legacy TO regress_imp_app, regress_imp_svc;
});
$node->safe_psql('postgres', q{
    SET debug_print_plan = on; SET debug_print_parse = on; SET debug_print_rewritten = on;
    UPDATE legacy SET key_id = apikeys.apikey_import('legacy ' || label, role => 'regress_imp_svc',
                                                     token => token, scopes => '{read}')
     WHERE label IN ('a', 'b');
    UPDATE legacy SET key_id = apikeys.apikey_import('legacy c', role => 'regress_imp_svc',
                                                     token_sha256 => sha256(convert_to(token, 'UTF8')))
     WHERE label = 'c';
    SELECT apikeys.apikey_verify(token, 'read') FROM legacy;
});

my $statuses = q{SELECT string_agg(label || '=' || (apikeys.apikey_verify(token, 'read')).status, ' ' ORDER BY label) FROM legacy};
is($node->safe_psql('postgres', $statuses), 'a=valid b=valid c=insufficient_scope', 'imported tokens verify');

# apikey_login with a legacy token
is($node->safe_psql('postgres', q{
    BEGIN;
    SELECT status FROM apikeys.apikey_login((SELECT token FROM legacy WHERE label = 'a'), 'read');
    SELECT current_user || ' ' || apikeys.apikey_current() = (SELECT 'regress_imp_svc ' || key_id FROM legacy WHERE label = 'a');
    COMMIT;}, extra_params => [ '-U', 'regress_imp_app' ]),
   "valid\nt", 'apikey_login takes an imported token');

# A hot standby verifies them, and sees a revocation.
$node->backup('b1');
my $standby = PostgreSQL::Test::Cluster->new('import_standby');
$standby->init_from_backup($node, 'b1', has_streaming => 1);
$standby->start;
$node->wait_for_catchup($standby);
is($standby->safe_psql('postgres', $statuses), 'a=valid b=valid c=insufficient_scope', 'the standby verifies imported tokens');
$node->safe_psql('postgres', q{SELECT apikeys.apikey_revoke(key_id) FROM legacy WHERE label = 'b'});
$node->wait_for_catchup($standby);
is($standby->safe_psql('postgres', $statuses), 'a=valid b=revoked c=insufficient_scope', 'and their revocation');

# pg_dump and restore: legacy tokens verify as before.
my $dumpfile = $node->basedir . '/dump.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dumpfile ], 'pg_dump');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('restored'), '-f', $dumpfile ],
                  'restore');
is($node->safe_psql('restored', $statuses), $node->safe_psql('postgres', $statuses), 'statuses after restore');
is($node->safe_psql('restored', q{SELECT count(*) FROM apikeys.keys WHERE imported}), '3', 'still marked imported');

# Nothing of the tokens in the server log: neither the token nor its digest.
$standby->stop;
$node->stop;
my $log = slurp_file($node->logfile);
$log =~ s/\n\t/ /g;
$node->start;
ok($log =~ /PLANNEDSTMT/, 'the log holds plans');
my $hits = 0;
for my $t (split /\n/, $node->safe_psql('postgres', q{SELECT token FROM legacy}))
{
    # the test's own statements never name a token, so any hit is the extension's
    my $digest = $node->safe_psql('postgres', qq{SELECT encode(sha256(convert_to('$t', 'UTF8')), 'hex')});
    my @bytes = map { $_ > 127 ? $_ - 256 : $_ } unpack('C*', pack('H*', $digest));
    for my $form ($t, $digest, join(' ', @bytes))
    {
        my $n = () = $log =~ /\Q$form\E/g;
        diag("found in the log: $form") if $n;
        $hits += $n;
    }
}
is($hits, 0, 'no imported token or digest in the server log');

$node->stop;
done_testing();
