# Keys in several regions: the key catalog and the audit log replicated by
# PostgreSQL's own logical replication.  Keys created, rotated, updated and
# revoked on the publisher verify with the same answers on a subscriber, and
# a revoke applied there is effective at once in sessions that had verified
# (and cached) the key.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $pub = PostgreSQL::Test::Cluster->new('publisher');
$pub->init(allows_streaming => 'logical');
$pub->append_conf('postgresql.conf', "shared_preload_libraries = 'apikeys'\n");
$pub->start;
my $sub = PostgreSQL::Test::Cluster->new('subscriber');
$sub->init;
$sub->append_conf('postgresql.conf', "shared_preload_libraries = 'apikeys'\n");
$sub->start;

# Roles are cluster-wide and keys name them (regrole travels by name): the
# same roles exist on both sides.  Each side has the extension.
for my $node ($pub, $sub)
{
    $node->safe_psql('postgres', q{
        CREATE ROLE regress_region NOLOGIN;
        CREATE EXTENSION apikeys CASCADE;
        CREATE TABLE test_tokens (label text PRIMARY KEY, key_id text, token text);
    });
}
$pub->safe_psql('postgres', q{
    INSERT INTO test_tokens SELECT 'a', * FROM apikeys.apikey_create('a', role => 'regress_region', scopes => '{orders:*}');
    INSERT INTO test_tokens SELECT 'b', * FROM apikeys.apikey_create('b', metadata => '{"tenant": 1}');
    INSERT INTO test_tokens SELECT 'c', * FROM apikeys.apikey_create('c');
    CREATE PUBLICATION apikeys_keys FOR TABLE apikeys_internal.key_catalog;
    CREATE PUBLICATION apikeys_history FOR TABLE apikeys_internal.audit_log WITH (publish = 'insert');
});
# the subscriber's copy of the tokens its clients would present
my $tokens = $pub->safe_psql('postgres', q{SELECT string_agg(format('(%L,%L,%L)', label, key_id, token), ',') FROM test_tokens});
$sub->safe_psql('postgres', "INSERT INTO test_tokens VALUES $tokens");

my $connstr = $pub->connstr . ' dbname=postgres';
$sub->safe_psql('postgres', qq{
    CREATE SUBSCRIPTION apikeys_region CONNECTION '$connstr' PUBLICATION apikeys_keys, apikeys_history;
});
$sub->wait_for_subscription_sync($pub, 'apikeys_region');

my $q = q{SELECT string_agg(label || '=' || v.status || coalesce('/' || v.role, ''), ' ' ORDER BY label)
            FROM test_tokens t, apikeys.apikey_verify(t.token, CASE WHEN label = 'a' THEN 'orders:read' END) v};
is($sub->safe_psql('postgres', $q), 'a=valid/regress_region b=valid/postgres c=valid/postgres',
   'keys copied to the subscriber verify there');
is($sub->safe_psql('postgres', $q), $pub->safe_psql('postgres', $q), 'same answers on both sides');
is($sub->safe_psql('postgres', 'SELECT count(*) FROM apikeys.audit_log'),
   $pub->safe_psql('postgres', 'SELECT count(*) FROM apikeys.audit_log'),
   'the audit history is copied, not written twice');

# a subscriber session that verifies (and caches) every key, kept open
my $session = $sub->background_psql('postgres');
for (1 .. 3)
{
    is($session->query_safe($q), 'a=valid/regress_region b=valid/postgres c=valid/postgres',
       'long-lived subscriber session verifies');
}

# lifecycle changes on the publisher
$pub->safe_psql('postgres', q{
    SELECT apikeys.apikey_revoke(key_id) FROM test_tokens WHERE label = 'a';
    UPDATE test_tokens SET token = apikeys.apikey_rotate(key_id, grace => '1 hour') WHERE label = 'b';
    SELECT apikeys.apikey_disable(key_id) FROM test_tokens WHERE label = 'c';
});
my $b_new = $pub->safe_psql('postgres', q{SELECT token FROM test_tokens WHERE label = 'b'});
$sub->safe_psql('postgres', qq{INSERT INTO test_tokens SELECT 'b_new', key_id, '$b_new' FROM test_tokens WHERE label = 'b'});
$pub->safe_psql('postgres', qq{INSERT INTO test_tokens SELECT 'b_new', key_id, '$b_new' FROM test_tokens WHERE label = 'b'});
$pub->wait_for_catchup('apikeys_region');

my $after = 'a=revoked/regress_region b=valid/postgres b_new=valid/postgres c=disabled/postgres';
is($sub->safe_psql('postgres', $q), $after, 'revoke, rotation with grace and disable applied on the subscriber');
is($session->query_safe($q), $after, 'effective at once in the session that had verified the keys');
is($sub->safe_psql('postgres', $q), $pub->safe_psql('postgres', $q), 'same answers on both sides after the changes');

# a scope change and a delete
$pub->safe_psql('postgres', q{
    SELECT apikeys.apikey_update(key_id, scopes => '{billing:read}') FROM test_tokens WHERE label = 'b';
    SELECT apikeys.apikey_delete(key_id) FROM test_tokens WHERE label = 'c';
});
$pub->wait_for_catchup('apikeys_region');
is($session->query_safe(q{
    SELECT string_agg(label || '=' || (apikeys.apikey_verify(token, 'billing:read')).status, ' ' ORDER BY label)
      FROM test_tokens WHERE label IN ('b_new', 'c')}),
   'b_new=valid c=invalid', 'scope change and delete applied in the long-lived session');
is($sub->safe_psql('postgres', 'SELECT count(*) FROM apikeys.audit_log'),
   $pub->safe_psql('postgres', 'SELECT count(*) FROM apikeys.audit_log'),
   'the audit history follows');
$session->quit;

$sub->stop;
$pub->stop;
done_testing();
