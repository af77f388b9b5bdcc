# No stored hash and no secret reaches the server log through a plan.
#
# Any user may turn on debug_print_plan, debug_print_parse and
# debug_print_rewritten for their own session, and an admin may run
# auto_explain with nested statements: every statement the extension runs
# inside its functions is then logged with its constants.  The functions that
# handle a key row pin plan_cache_mode = force_generic_plan, so their plans
# hold parameters ($n), never a hash or a token as a constant.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('plans');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys, auto_explain'
auto_explain.log_min_duration = 0
auto_explain.log_nested_statements = on
auto_explain.log_verbose = on
auto_explain.log_analyze = on
auto_explain.log_triggers = on
log_statement = all
log_min_error_statement = debug5
});
$node->start;

$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE regress_plans LOGIN;
    CREATE ROLE regress_plans_svc NOLOGIN;
    GRANT regress_plans_svc TO regress_plans;
    -- the test's own copy of the tokens it is handed: no statement text or
    -- plan of the test carries one
    CREATE TABLE test_tokens (label text PRIMARY KEY, key_id text, token text);
    GRANT ALL ON test_tokens TO regress_plans;
});

# The whole lifecycle, as an unprivileged user with every debug print on, run
# twice over so that cached plans are used as well as fresh ones.
my $debug = q{
    SET debug_print_parse = on;
    SET debug_print_rewritten = on;
    SET debug_print_plan = on;
    SET debug_pretty_print = off;
};
for my $round (1 .. 2)
{
    $node->safe_psql('postgres', $debug . qq{
        INSERT INTO test_tokens SELECT 'a$round', * FROM apikeys.apikey_create('a', role => 'regress_plans_svc', scopes => '{x}');
        INSERT INTO test_tokens SELECT 'b$round', * FROM apikeys.apikey_create('b', metadata => '{"m": 1}', allowed_ips => '{10.0.0.0/8}');
        INSERT INTO test_tokens SELECT 'c$round', * FROM apikeys.apikey_create('c');
        INSERT INTO test_tokens SELECT 'a${round}r', key_id, apikeys.apikey_rotate(key_id, grace => '1 hour') FROM test_tokens WHERE label = 'a$round';
        INSERT INTO test_tokens SELECT 'b${round}r', key_id, apikeys.apikey_rotate(key_id) FROM test_tokens WHERE label = 'b$round';
        INSERT INTO test_tokens SELECT 'a${round}rr', key_id, apikeys.apikey_rotate(key_id, grace => '1 hour') FROM test_tokens WHERE label = 'a$round';
        SELECT apikeys.apikey_update(key_id, name => 'renamed', scopes => '{x,y}') FROM test_tokens WHERE label = 'a$round';
        SELECT apikeys.apikey_disable(key_id) FROM test_tokens WHERE label = 'c$round';
        SELECT apikeys.apikey_enable(key_id) FROM test_tokens WHERE label = 'c$round';
        SELECT apikeys.apikey_verify(token, 'x') FROM test_tokens;
        SELECT apikeys.apikey_verify(token::apikeys.apikey, client_ip => '10.1.2.3') FROM test_tokens;
        SELECT apikeys.apikey_revoke(key_id) FROM test_tokens WHERE label = 'c$round';
        -- a leak report hands the secret's digest to SQL (issue 11)
        SELECT apikeys.apikey_report_leak(token, 'plans') FROM test_tokens WHERE label = 'b${round}r';
    }, extra_params => [ '-U', 'regress_plans' ]);
}
# ... and an admin's deletes
$node->safe_psql('postgres', $debug . q{
    SELECT apikeys.apikey_delete(key_id) FROM test_tokens WHERE label = 'b1';
});

my @tokens = split /\n/, $node->safe_psql('postgres',
    q{SELECT token FROM test_tokens ORDER BY label});
my @secrets = map { substr($_, -38, 32) } @tokens;
# every hash the lifecycle wrote, current and previous
my @hashes = split /\n/, $node->safe_psql('postgres', q{
    SELECT encode(h, 'hex') FROM apikeys_internal.key_catalog,
           LATERAL (VALUES (hash), (prev_hash)) v(h) WHERE h IS NOT NULL});
is(scalar @tokens, 12, 'tokens handed out');
is(scalar @hashes, 7, 'hashes stored: five keys, two of them in a grace period');

$node->stop;    # flush the log
# Node dumps are wrapped at spaces, continuation lines indented by a tab:
# join them back before scanning.
sub read_log
{
    my $text = slurp_file(shift);
    $text =~ s/\n\t/ /g;
    return $text;
}
my $log = read_log($node->logfile);
ok($log =~ /:constvalue/ && $log =~ /Query Text:/ && $log =~ /PLANNEDSTMT/,
   'the log holds debug prints and auto_explain plans');
like($log, qr/key_catalog/, 'the extension\'s own statements were logged');

# A value in a node dump is a list of signed bytes; in EXPLAIN it is text or
# hex.  Look for every form.
sub byte_list
{
    my @b = map { $_ > 127 ? $_ - 256 : $_ } unpack('C*', shift);
    return join(' ', @b);
}
my $hits = 0;
for my $h (@hashes)
{
    my $bin = pack('H*', $h);
    for my $form ($h, uc($h), byte_list($bin))
    {
        my $n = () = $log =~ /\Q$form\E/g;
        $hits += $n;
        diag("hash found in the log as: $form") if $n;
    }
}
is($hits, 0, 'no stored hash in the server log, in any form');
$hits = 0;
for my $s (@secrets)
{
    for my $form ($s, byte_list($s))
    {
        my $n = () = $log =~ /\Q$form\E/g;
        $hits += $n;
    }
}
is($hits, 0, 'no secret in the server log, in any form');

# Self-check: the scanner finds a hash when one is planned as a constant.
$node->start;
my $probe = $node->safe_psql('postgres',
    q{SELECT encode(hash, 'hex') FROM apikeys_internal.key_catalog ORDER BY key_id LIMIT 1});
$node->safe_psql('postgres', $debug . qq{
    PREPARE p(bytea) AS SELECT count(*) FROM apikeys_internal.key_catalog WHERE hash = \$1;
    SET plan_cache_mode = force_custom_plan;
    EXECUTE p(decode('$probe', 'hex'));
});
$node->stop;
$log = read_log($node->logfile);
my $bin = pack('H*', $probe);
ok(index($log, byte_list($bin)) >= 0,
   'scanner self-check: a hash planned as a constant is found');

done_testing();
