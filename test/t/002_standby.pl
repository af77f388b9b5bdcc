# Verification is read-only: it runs on a hot standby with the primary's
# results, and a revoke applies there as soon as the standby replays it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', "shared_preload_libraries = 'apikeys'");
$primary->start;
$primary->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE TABLE test_tokens (label text PRIMARY KEY, key_id text, token text);
    INSERT INTO test_tokens SELECT 'a', * FROM apikeys.apikey_create('a', scopes => '{r}');
    INSERT INTO test_tokens SELECT 'b', * FROM apikeys.apikey_create('b');
});

$primary->backup('bk');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'bk', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);

my $q = q{SELECT string_agg(label || '=' || (apikeys.apikey_verify(token, 'r')).status, ' ' ORDER BY label)
            FROM test_tokens};
is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'standby is in recovery');
is($standby->safe_psql('postgres', $q), 'a=valid b=insufficient_scope', 'verify on the standby');

# one standby session stays open across the replay: it must not keep stale state
my $session = $standby->background_psql('postgres');
is($session->query_safe($q), 'a=valid b=insufficient_scope', 'verify in a long-lived standby session');

# lifecycle changes replay: a revoke, a rotation, a disable
$primary->safe_psql('postgres', q{
    SELECT apikeys.apikey_revoke(key_id) FROM test_tokens WHERE label = 'a';
    UPDATE test_tokens SET token = apikeys.apikey_rotate(key_id) WHERE label = 'b';
    SELECT apikeys.apikey_update(key_id, scopes => '{r}') FROM test_tokens WHERE label = 'b';
});
$primary->wait_for_catchup($standby);
is($standby->safe_psql('postgres', $q), 'a=revoked b=valid', 'revoke and rotation replayed');
is($session->query_safe($q), 'a=revoked b=valid', 'the long-lived session sees the replayed changes');
$session->quit;
is($standby->safe_psql('postgres', $q), $primary->safe_psql('postgres', $q),
   'standby and primary agree');

# the audit chain is checked on a standby too (read-only), with the same head
is($standby->safe_psql('postgres', 'SELECT ok, problem FROM apikeys.audit_verify_detail()'), 't|',
   'audit_verify on the standby');
is($standby->safe_psql('postgres', 'SELECT seq, hash FROM apikeys.audit_head()'),
   $primary->safe_psql('postgres', 'SELECT seq, hash FROM apikeys.audit_head()'),
   'standby and primary have the same chain head');

# the lifecycle functions refuse cleanly on a standby
my ($ret, $out, $err) = $standby->psql('postgres',
    q{SELECT * FROM apikeys.apikey_create('on standby')});
isnt($ret, 0, 'create fails on a standby');
like($err, qr/read-only transaction/, 'with the read-only error');

$standby->stop;
$primary->stop;
done_testing();
