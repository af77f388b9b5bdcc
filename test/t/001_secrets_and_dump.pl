# Secrets never reach the server log, a catalog row, an audit row or an
# error message; pg_dump into a fresh database keeps every key working.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('secrets');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys'
log_min_messages = debug1
log_min_error_statement = debug1
log_error_verbosity = verbose
log_connections = on
log_disconnections = on
});
$node->start;

$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE regress_svc NOLOGIN;
    -- the test's own copy of the tokens it is handed, so that no statement
    -- text ever carries one
    CREATE TABLE test_tokens (label text PRIMARY KEY, key_id text, token text);
});

# The lifecycle, with every token kept in test_tokens.
$node->safe_psql('postgres', q{
    INSERT INTO test_tokens SELECT 'a', * FROM apikeys.apikey_create('a', role => 'regress_svc', scopes => '{x}');
    INSERT INTO test_tokens SELECT 'b', * FROM apikeys.apikey_create('b', prefix => 'ak_live');
    INSERT INTO test_tokens SELECT 'c', * FROM apikeys.apikey_create('c');
    INSERT INTO test_tokens SELECT 'a2', key_id, apikeys.apikey_rotate(key_id, grace => '1 hour') FROM test_tokens WHERE label = 'a';
    INSERT INTO test_tokens SELECT 'b2', key_id, apikeys.apikey_rotate(key_id) FROM test_tokens WHERE label = 'b';
    SELECT apikeys.apikey_disable(key_id) FROM test_tokens WHERE label = 'c';
    SELECT apikeys.apikey_update(key_id, name => 'a renamed', metadata => '{"k": 1}') FROM test_tokens WHERE label = 'a';
    SELECT apikeys.apikey_verify(token, 'x') FROM test_tokens;
    SELECT apikeys.apikey_verify(token::apikeys.apikey) FROM test_tokens;
});
$node->safe_psql('postgres', q{
    SELECT apikeys.apikey_revoke(key_id) FROM test_tokens WHERE label = 'c';
});

my @tokens = split /\n/, $node->safe_psql('postgres',
    'SELECT token FROM test_tokens ORDER BY label');
is(scalar @tokens, 5, 'five tokens handed out');
my @secrets = map { substr($_, -38, 32) } @tokens;
# the stored digests: only admins may read them, in key_catalog.hash alone
my @hashes = split /\n/, $node->safe_psql('postgres', q{
    SELECT encode(c.hash, 'hex') FROM test_tokens t JOIN apikeys_internal.key_catalog c USING (key_id)
     WHERE t.label IN ('a2', 'b2', 'c')});
is(scalar @hashes, 3, 'three current hashes');

# Errors that involve tokens: a mangled checksum, each lifecycle error.
my @errors;
for my $sql (
    q{SELECT (token || 'x')::apikeys.apikey FROM test_tokens},
    q{SELECT (substr(token, 1, length(token) - 1) || 'Z')::apikeys.apikey FROM test_tokens},
    q{SELECT upper(token)::apikeys.apikey FROM test_tokens},
    q{SELECT apikeys.apikey_rotate(key_id) FROM test_tokens WHERE label = 'c'},
    q{SELECT apikeys.apikey_enable(key_id) FROM test_tokens WHERE label = 'c'},
    q{SELECT apikeys.apikey_rotate(token) FROM test_tokens},
    q{SELECT apikeys.apikey_update(token, name => '') FROM test_tokens})
{
    my ($ret, $out, $err) = $node->psql('postgres', $sql);
    isnt($ret, 0, "error raised: $sql");
    push @errors, $err;
}
is($node->safe_psql('postgres', q{
    SELECT string_agg(DISTINCT (apikeys.apikey_verify(token || 'x')).status, ',') FROM test_tokens}),
   'invalid', 'mangled tokens verify as invalid');

# Every place a secret could land.
my $catalog = $node->safe_psql('postgres', q{
    SELECT k::text FROM apikeys_internal.key_catalog k
    UNION ALL SELECT a::text FROM apikeys.audit_log a
    UNION ALL SELECT k::text FROM apikeys.keys k
    UNION ALL SELECT pg_catalog.pg_get_functiondef(oid) FROM pg_proc
              WHERE pronamespace IN ('apikeys'::regnamespace, 'apikeys_internal'::regnamespace) AND prokind = 'f'});
my $dump = '';
{
    my $file = $node->basedir . '/scan.sql';
    $node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'),
                        '--exclude-table=test_tokens', '-f', $file ],
                      'pg_dump for the scan');
    $dump = slurp_file($file);
}
$node->stop;    # flush the log
my $log = slurp_file($node->logfile);
$node->start;

ok(length($log) > 1000, 'the server log was written at debug1');

# Hashes may be in key_catalog and its COPY block in a dump, nowhere else.
my $audit_and_listing = $node->safe_psql('postgres', q{
    SELECT a::text FROM apikeys.audit_log a UNION ALL SELECT k::text FROM apikeys.keys k});
(my $dump_without_catalog = $dump) =~ s/^COPY apikeys_internal\.key_catalog .*?^\\\.$//ms;
ok(length($dump_without_catalog) < length($dump), 'key_catalog data cut from the dump scan');
for my $i (0 .. $#hashes)
{
    my $h = $hashes[$i];
    for my $place ([ 'server log', $log ], [ 'audit rows and listing', $audit_and_listing ],
                   [ 'pg_dump output outside key_catalog', $dump_without_catalog ],
                   [ 'error messages', join("\n", @errors) ])
    {
        my $hits = () = $place->[1] =~ /\Q$h\E/gi;
        is($hits, 0, "hash $i in $place->[0]: zero hits");
    }
}
like($dump, qr/\Q$hashes[0]\E/, 'hash scan self-check: the catalog block holds it');
like($dump, qr/COPY apikeys_internal\.key_catalog/, 'the dump carries the key catalog');
for my $i (0 .. $#tokens)
{
    my ($tok, $sec) = ($tokens[$i], $secrets[$i]);
    for my $place ([ 'server log', $log ], [ 'catalog rows', $catalog ],
                   [ 'pg_dump output', $dump ],
                   [ 'error messages', join("\n", @errors) ])
    {
        my $hits = () = $place->[1] =~ /\Q$sec\E/g;
        is($hits, 0, "secret $i in $place->[0]: zero hits");
    }
}
# pg_dump into a fresh database keeps every key working.
my $dumpfile = $node->basedir . '/full.sql';
$node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $dumpfile ], 'pg_dump');
# the scan can see a secret when there is one: this dump includes test_tokens
like(slurp_file($dumpfile), qr/\Q$secrets[0]\E/, 'scanner self-check');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('restored'),
                    '-f', $dumpfile ], 'restore into a fresh database');

my $before = $node->safe_psql('postgres', q{
    SELECT string_agg(label || '=' || (apikeys.apikey_verify(token)).status, ' ' ORDER BY label) FROM test_tokens});
my $after = $node->safe_psql('restored', q{
    SELECT string_agg(label || '=' || (apikeys.apikey_verify(token)).status, ' ' ORDER BY label) FROM test_tokens});
is($before, 'a=valid a2=valid b=invalid b2=valid c=revoked', 'statuses before dump');
is($after, $before, 'statuses after restore');
is($node->safe_psql('restored', q{SELECT count(*) FROM apikeys.audit_log WHERE action !~ '^direct_'}),
   $node->safe_psql('postgres', q{SELECT count(*) FROM apikeys.audit_log}),
   'audit history restored');
is($node->safe_psql('restored', q{
    SELECT apikeys.apikey_rotate(key_id) IS NOT NULL FROM test_tokens WHERE label = 'b'}),
   't', 'restored keys can be managed');

$node->stop;
done_testing();
