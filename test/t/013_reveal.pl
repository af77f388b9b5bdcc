# Revealable keys with a key-encryption key (KEK) in a file the server
# reads: sealing at create, reveal by admins and the creator only (audited,
# numbered, logged), rotation re-seals, revocation and deletion delete,
# a KEK that is missing, exposed or malformed refuses clearly, another KEK
# cannot unseal, a tampered row yields nothing, and a dump holds ciphertext
# only: restored, it reveals with the same KEK and not without it.  No
# token, secret or KEK reaches the server log, even with every debug print
# and auto_explain on.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('reveal');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys, auto_explain'
auto_explain.log_min_duration = 0
auto_explain.log_nested_statements = on
auto_explain.log_verbose = on
auto_explain.log_analyze = on
log_statement = all
log_min_messages = debug1
});
$node->start;
my $data = $node->data_dir;

sub write_kek
{
    my ($name, $content, $mode) = @_;
    my $path = "$data/$name";
    open my $fh, '>', $path or die "$path: $!";
    print $fh $content;
    close $fh;
    chmod $mode, $path;
    return $path;
}
sub set_kek
{
    my $path = shift;
    $node->safe_psql('postgres', "ALTER SYSTEM SET apikeys.kek_file = '$path'; SELECT pg_reload_conf();");
    # wait until this setting is what a new backend sees
    $node->poll_query_until('postgres', "SELECT current_setting('apikeys.kek_file') = '$path'")
      or die "reload did not take effect";
}
sub try_sql
{
    my ($sql, %opts) = @_;
    my $db = delete $opts{dbname} // 'postgres';
    my ($ret, $out, $err) = $node->psql($db, $sql, %opts);
    return $ret == 0 ? "ok: $out" : $err;
}

my $kek1 = join('', map { sprintf('%02x', int(rand(256))) } 1 .. 32);
my $kek2 = join('', map { sprintf('%02x', int(rand(256))) } 1 .. 32);

$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE regress_rv_svc NOLOGIN;
    CREATE ROLE regress_rv_alice LOGIN IN ROLE regress_rv_svc;
    CREATE ROLE regress_rv_bob LOGIN IN ROLE regress_rv_svc;
    CREATE ROLE regress_rv_admin LOGIN IN ROLE apikeys_admin;
    CREATE ROLE regress_rv_eve LOGIN;
    -- the test's own copy of the tokens: no statement text ever holds one
    CREATE TABLE test_tokens (label text PRIMARY KEY, key_id text, token text, revealed text);
    GRANT ALL ON test_tokens TO PUBLIC;
});
sub as { return (extra_params => [ '-U', shift ]); }

# 1. KEK files the server refuses: each error says why, never what is in it.
my @bad = (
    [ 'missing', "$data/no_such_file", 'could not be opened: No such file or directory' ],
    [ 'readable by others', write_kek('kek_open', "$kek1\n", 0644), 'readable by no one else' ],
    [ 'too short', write_kek('kek_short', substr($kek1, 0, 62) . "\n", 0600), 'exactly 64 hex digits' ],
    [ 'not hex', write_kek('kek_nothex', 'z' . substr($kek1, 1) . "\n", 0600), 'exactly 64 hex digits' ],
);
for my $b (@bad)
{
    set_kek($b->[1]);
    my $err = try_sql(q{INSERT INTO test_tokens SELECT 'x', * FROM apikeys.apikey_create('x', revealable => true)}, as('regress_rv_alice'));
    like($err, qr/key-encryption key of revealable api keys is not available.*\Q$b->[2]\E/s, "KEK $b->[0]: refused, saying why");
    unlike($err, qr/\Q$data\E|kek_open|kek_short|kek_nothex|no_such_file/, "KEK $b->[0]: the error does not name the file");
}
is($node->safe_psql('postgres', 'SELECT count(*) FROM apikeys_internal.key_catalog'), '0', 'no key left behind');

# 2. A good KEK: create, reveal by the creator and by an admin.
my $kek1_path = write_kek('kek1', "$kek1\n", 0600);
set_kek($kek1_path);
$node->safe_psql('postgres', q{
    INSERT INTO test_tokens (label, key_id, token)
        SELECT 'a', * FROM apikeys.apikey_create('ingest a', role => 'regress_rv_svc', scopes => '{ingest:write}', revealable => true);
    INSERT INTO test_tokens (label, key_id, token)
        SELECT 'b', * FROM apikeys.apikey_create('ingest b', role => 'regress_rv_svc', revealable => true);
    INSERT INTO test_tokens (label, key_id, token)
        SELECT 'c', * FROM apikeys.apikey_create('plain c', role => 'regress_rv_svc');
}, as('regress_rv_alice'));
is($node->safe_psql('postgres', q{
    SELECT string_agg(name || '=' || revealable, ' ' ORDER BY name) FROM apikeys.keys}, as('regress_rv_alice')),
   'ingest a=true ingest b=true plain c=false', 'the listing marks revealable keys');
is($node->safe_psql('postgres', q{
    UPDATE test_tokens SET revealed = apikeys.apikey_reveal(key_id) WHERE label = 'a';
    SELECT revealed = token FROM test_tokens WHERE label = 'a'}, as('regress_rv_alice')),
   't', 'the creator reveals the token');
is($node->safe_psql('postgres', q{
    SELECT apikeys.apikey_reveal(key_id) = token FROM test_tokens WHERE label = 'a'}, as('regress_rv_admin')),
   't', 'an admin reveals the token');
like(try_sql(q{SELECT apikeys.apikey_reveal(key_id) FROM test_tokens WHERE label = 'a'}, as('regress_rv_bob')),
     qr/permission denied to reveal api key/, 'a member of the key\'s role who did not create it may not');
like(try_sql(q{SELECT apikeys.apikey_reveal(key_id) FROM test_tokens WHERE label = 'a'}, as('regress_rv_eve')),
     qr/does not exist/, 'a stranger does not even see the key');
is($node->safe_psql('postgres', q{
    SELECT (apikeys.apikey_verify(revealed, 'ingest:write')).status FROM test_tokens WHERE label = 'a'}),
   'valid', 'the revealed token verifies');

# 3. Every reveal is audited with a number that survives a rollback, and
# logged before the token leaves.
$node->safe_psql('postgres', q{
    BEGIN;
    SELECT apikeys.apikey_reveal(key_id) IS NOT NULL FROM test_tokens WHERE label = 'b';
    ROLLBACK;
    SELECT apikeys.apikey_reveal(key_id) IS NOT NULL FROM test_tokens WHERE label = 'b';
}, as('regress_rv_alice'));
is($node->safe_psql('postgres', q{
    SELECT string_agg(a.action || ':' || a.actor_role || ':' || coalesce(a.changes ->> 'reveal', '-'), ' ' ORDER BY a.at)
      FROM apikeys.audit_log a JOIN test_tokens t USING (key_id)
     WHERE a.action IN ('seal', 'reveal')}),
   'seal:regress_rv_alice:- seal:regress_rv_alice:- reveal:regress_rv_alice:1 reveal:regress_rv_admin:2 reveal:regress_rv_alice:4',
   'audit: seal at create, one row per committed reveal; reveal 3 rolled back and left a gap');
my $log = slurp_file($node->logfile);
like($log, qr/apikeys: api key "\w{12}" revealed to role regress_rv_alice \(session user regress_rv_alice\), reveal number 3/,
     'the rolled-back reveal is in the server log');

# 4. Rotation re-seals; the old token is not what reveal returns.
is($node->safe_psql('postgres', q{
    UPDATE test_tokens SET token = apikeys.apikey_rotate(key_id, grace => '1 hour') WHERE label = 'a';
    SELECT apikeys.apikey_reveal(key_id) = token FROM test_tokens WHERE label = 'a'}, as('regress_rv_alice')),
   't', 'after a rotation reveal returns the new token');

# 5. Tampering: key b's row given key a's ciphertext reveals nothing.
$node->safe_psql('postgres', q{
    CREATE TABLE saved AS SELECT * FROM apikeys_internal.revealable_secrets;
    UPDATE apikeys_internal.revealable_secrets s SET sealed = a.sealed
      FROM apikeys_internal.revealable_secrets a JOIN test_tokens t ON t.key_id = a.key_id AND t.label = 'a'
     WHERE s.key_id = (SELECT key_id FROM test_tokens WHERE label = 'b');
});
my $err = try_sql(q{SELECT apikeys.apikey_reveal(key_id) FROM test_tokens WHERE label = 'b'}, as('regress_rv_alice'));
like($err, qr/sealed token of api key "\w+" does not match the key/, 'a ciphertext moved to another key is refused');
$node->safe_psql('postgres', q{
    UPDATE apikeys_internal.revealable_secrets s SET sealed = v.sealed FROM saved v WHERE v.key_id = s.key_id;
    DROP TABLE saved;
});

# 6. Another KEK cannot unseal; rotating under it re-seals.
my $kek2_path = write_kek('kek2', $kek2, 0400);
set_kek($kek2_path);
like(try_sql(q{SELECT apikeys.apikey_reveal(key_id) FROM test_tokens WHERE label = 'b'}, as('regress_rv_alice')),
     qr/was sealed under another key-encryption key/, 'another KEK: refused clearly');
is($node->safe_psql('postgres', q{
    UPDATE test_tokens SET token = apikeys.apikey_rotate(key_id) WHERE label = 'b';
    SELECT apikeys.apikey_reveal(key_id) = token FROM test_tokens WHERE label = 'b'}, as('regress_rv_alice')),
   't', 'a rotation re-seals under the KEK in use');
set_kek($kek1_path);

# 7. Revocation (and a leak report) delete the sealed token; deletion too.
$node->safe_psql('postgres', q{
    INSERT INTO test_tokens (label, key_id, token)
        SELECT 'd', * FROM apikeys.apikey_create('ingest d', role => 'regress_rv_svc', revealable => true);
    INSERT INTO test_tokens (label, key_id, token)
        SELECT 'e', * FROM apikeys.apikey_create('ingest e', role => 'regress_rv_svc', revealable => true);
    INSERT INTO test_tokens (label, key_id, token)
        SELECT 'f', * FROM apikeys.apikey_create('ingest f', role => 'regress_rv_svc', revealable => true);
    SELECT apikeys.apikey_revoke(key_id) FROM test_tokens WHERE label = 'd';
    SELECT apikeys.apikey_report_leak(token, 'test') FROM test_tokens WHERE label = 'e';
    SELECT apikeys.apikey_delete(key_id) FROM test_tokens WHERE label = 'f';
}, as('regress_rv_alice'));
is($node->safe_psql('postgres', q{
    SELECT count(*) FROM apikeys_internal.revealable_secrets s JOIN test_tokens t USING (key_id)
     WHERE t.label IN ('d', 'e', 'f')}), '0', 'revoked, leaked and deleted keys keep no sealed token');
like(try_sql(q{SELECT apikeys.apikey_reveal(key_id) FROM test_tokens WHERE label = 'd'}, as('regress_rv_alice')),
     qr/is revoked/, 'a revoked key cannot be revealed');

# 8. The whole lifecycle again with every debug print on, then scan the log.
$node->safe_psql('postgres', q{
    SET debug_print_parse = on; SET debug_print_rewritten = on; SET debug_print_plan = on;
    INSERT INTO test_tokens (label, key_id, token)
        SELECT 'g', * FROM apikeys.apikey_create('ingest g', role => 'regress_rv_svc', revealable => true);
    UPDATE test_tokens SET revealed = apikeys.apikey_reveal(key_id) WHERE label = 'g';
    UPDATE test_tokens SET token = apikeys.apikey_rotate(key_id) WHERE label = 'g';
    UPDATE test_tokens SET revealed = apikeys.apikey_reveal(key_id) WHERE label = 'g';
    SELECT apikeys.apikey_revoke(key_id) FROM test_tokens WHERE label = 'g';
}, as('regress_rv_alice'));

# 9. A dump holds ciphertext only; restored, it reveals with the KEK.
my $dumpfile = $node->basedir . '/dump.sql';
my $seq_at_dump = $node->safe_psql('postgres', q{SELECT last_value FROM apikeys_internal.reveal_seq});
$node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '--exclude-table=test_tokens', '-f', $dumpfile ], 'pg_dump');
my $dump = slurp_file($dumpfile);
like($dump, qr/COPY apikeys_internal\.revealable_secrets/, 'the dump carries the sealed tokens');
$node->safe_psql('postgres', 'CREATE DATABASE restored');
$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('restored'), '-f', $dumpfile ],
                  'restore into a fresh database');
my @live = split /\n/, $node->safe_psql('postgres', q{
    SELECT key_id || ' ' || token FROM test_tokens WHERE label IN ('a', 'b') ORDER BY label});
my ($key_a, $token_a) = split / /, $live[0];
my ($key_b) = split / /, $live[1];
is($node->safe_psql('restored', "SELECT apikeys.apikey_reveal('$key_a')"), $token_a,
   'a restored key reveals its token with the same KEK');
like(try_sql("SELECT apikeys.apikey_reveal('$key_b')", dbname => 'restored'), qr/sealed under another key-encryption key/,
     'a restored key sealed under the other KEK does not');
$node->safe_psql('postgres', q{ALTER SYSTEM RESET apikeys.kek_file; SELECT pg_reload_conf();});
$node->poll_query_until('postgres', "SELECT current_setting('apikeys.kek_file') = ''") or die;
like(try_sql("SELECT apikeys.apikey_reveal('$key_a')"), qr/not available/, 'without the KEK nothing is revealed');
is($node->safe_psql('restored', q{SELECT count(*) FROM apikeys.keys WHERE revealable}), '2',
   'the restored keys are still marked revealable');
is($node->safe_psql('restored', q{SELECT last_value FROM apikeys_internal.reveal_seq}), $seq_at_dump + 1,
   'reveal numbers carry on after a restore (the sequence is dumped; one reveal since)');

# Nothing secret anywhere: server log (debug prints, auto_explain, statements),
# dump, audit rows.
$node->stop;
$log = slurp_file($node->logfile);
$log =~ s/\n\t/ /g;
ok($log =~ /PLANNEDSTMT/ && $log =~ /Query Text:/, 'the log holds plans');
like($log, qr/\Q$key_a\E/, 'scan self-check: the log names the keys (their public ids)');
$node->start;
my @tokens = grep { length } split /\n/, $node->safe_psql('postgres',
    q{SELECT token FROM test_tokens UNION SELECT revealed FROM test_tokens WHERE revealed IS NOT NULL});
my $audit = $node->safe_psql('postgres', q{SELECT a::text FROM apikeys_internal.audit_log a});
ok(scalar @tokens >= 8, 'tokens to look for: ' . scalar @tokens);
my %hits;
for my $t (@tokens)
{
    my $secret = substr($t, -38, 32);
    for my $place ([ 'server log', $log ], [ 'dump', $dump ], [ 'audit log', $audit ])
    {
        $hits{ $place->[0] } += () = $place->[1] =~ /\Q$secret\E/g;
    }
}
is($hits{'server log'}, 0, 'no secret in the server log');
is($hits{'dump'}, 0, 'no secret in the dump');
is($hits{'audit log'}, 0, 'no secret in the audit log');
for my $k ($kek1, $kek2)
{
    my $hits = () = ($log . $dump . $audit) =~ /\Q$k\E/gi;
    is($hits, 0, 'no KEK in the log, the dump or the audit log');
}

$node->stop;
done_testing();
