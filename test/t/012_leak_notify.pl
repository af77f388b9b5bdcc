# apikey_report_leak sends a NOTIFY on channel apikeys when its transaction
# commits, never before and never after a rollback, with a JSON payload that
# names the audit row (its seq) and nothing else, never the secret.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('leak_notify');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'apikeys'");
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE regress_scanner LOGIN;
    CREATE ROLE regress_notify_svc NOLOGIN;
    CREATE TABLE test_tokens (label text PRIMARY KEY, key_id text, token text);
    GRANT SELECT ON test_tokens TO regress_scanner;
    INSERT INTO test_tokens SELECT 'a', * FROM apikeys.apikey_create('a', role => 'regress_notify_svc');
    INSERT INTO test_tokens SELECT 'b', * FROM apikeys.apikey_create('b', role => 'regress_notify_svc');
});
my ($key_a, $token_a) = split /\|/, $node->safe_psql('postgres',
    q{SELECT key_id || '|' || token FROM test_tokens WHERE label = 'a'});
my $secret_a = substr($token_a, -38, 32);

# A rolled-back report sends nothing (and revokes nothing).
my $out = $node->safe_psql('postgres', q{
    LISTEN apikeys;
    BEGIN;
    SELECT apikeys.apikey_report_leak(token, 'ci') FROM test_tokens WHERE label = 'b';
    ROLLBACK;
    SELECT 'after rollback';
}, extra_params => [ '-U', 'regress_scanner' ]);
unlike($out, qr/Asynchronous notification/, 'no notification after a rollback');
is($node->safe_psql('postgres', q{SELECT (apikeys.apikey_verify(token)).status FROM test_tokens WHERE label = 'b'}),
   'valid', 'the rolled-back report revoked nothing');

# A committed report: the notification arrives with the commit, not before.
$out = $node->safe_psql('postgres', q{
    LISTEN apikeys;
    BEGIN;
    SELECT apikeys.apikey_report_leak(token, 'https://example.com/paste/1') FROM test_tokens WHERE label = 'a';
    SELECT 'before commit';
    COMMIT;
    SELECT 'after commit';
}, extra_params => [ '-U', 'regress_scanner' ]);
like($out, qr/^revoked\nbefore commit\nAsynchronous notification "apikeys" with payload "(.*)" received from server process with PID \d+\.\nafter commit$/m,
     'one notification, sent at commit');
my ($payload) = $out =~ /with payload "(.*)" received/;
like($payload, qr/^\{"event": "audit", "seq": \d+\}$/, 'payload: the audit row\'s seq, nothing else');
my ($seq) = $payload =~ /"seq": (\d+)/;
is($node->safe_psql('postgres', qq{SELECT action || ' ' || key_id || ' ' || key_role::regrole FROM apikeys.audit_log WHERE seq = $seq}),
   "revoke_leak $key_a regress_notify_svc", 'the seq names the revoke_leak row of the key');
unlike($payload, qr/\Q$secret_a\E/, 'payload: no secret');
unlike($out, qr/\Q$secret_a\E/, 'no secret anywhere in the session output');

# A report of a key already revoked sends nothing.
$out = $node->safe_psql('postgres', q{
    LISTEN apikeys;
    SELECT apikeys.apikey_report_leak(token) FROM test_tokens WHERE label = 'a';
    SELECT 'done';
}, extra_params => [ '-U', 'regress_scanner' ]);
is($out, "already_revoked\ndone", 'already revoked: no notification');

# The audit row names the reporter and the source.
is($node->safe_psql('postgres', qq{
    SELECT action || ' ' || actor || ' ' || actor_role || ' ' || (changes -> 'leak' ->> 'source')
      FROM apikeys.audit_log WHERE key_id = '$key_a' AND action ~ 'leak'}),
   'revoke_leak regress_scanner regress_scanner https://example.com/paste/1',
   'audit: revoke_leak with reporter and source');

$node->stop;
done_testing();
