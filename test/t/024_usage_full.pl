# Shared memory full (apikeys.max_tracked_keys): keys without limits fill
# at most 90% of it, and their further verifications are counted as
# untracked, not silently dropped; keys with limits use the rest, and when
# even that is full they are refused as rate_limited (with a WARNING, once
# a minute), never let through unlimited.  The worker frees entries that
# hold nothing unwritten, and refused keys work again.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('full');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys'
apikeys.max_tracked_keys = 20
apikeys.usage_flush_interval = '200ms'
});
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE TABLE plain (id int PRIMARY KEY, key_id text, token text);
    INSERT INTO plain SELECT g, k.* FROM generate_series(1, 30) g,
        LATERAL apikeys.apikey_create('plain ' || g) k;
    CREATE TABLE lim (id int PRIMARY KEY, key_id text, token text);
    INSERT INTO lim SELECT g, k.* FROM generate_series(1, 5) g,
        LATERAL apikeys.apikey_create('limited ' || g, rate_limit => '1000/hour') k;
});
is($node->safe_psql('postgres', q{SELECT tracked || ' ' || capacity FROM apikeys.usage_stats()}),
	'0 20', 'an empty table of 20');

# one statement, so that the worker cannot free anything in between
my ($ret, $out, $err) = $node->psql('postgres', q{
    SELECT (SELECT count(*) FILTER (WHERE v.valid)
              FROM plain p, LATERAL apikeys.apikey_verify(p.token) v),
           (SELECT string_agg(s, ',' ORDER BY s) FROM
              (SELECT v.status || coalesce(' ' || v.retry_after, '') AS s
                 FROM lim l, LATERAL apikeys.apikey_verify(l.token) v) x)});
is($out, '30|rate_limited 00:00:00.2,rate_limited 00:00:00.2,rate_limited 00:00:00.2,valid,valid',
	'30 keys without limits verify; of 5 limited keys, the 2 that fit are valid, 3 are refused');
like($err, qr/WARNING:  apikeys shared memory is full/, 'with a WARNING');
is($node->safe_psql('postgres', q{SELECT tracked || ' ' || untracked || ' ' || refused FROM apikeys.usage_stats()}),
	'20 15 3', 'full; 15 verifications untracked (12 without limits, 3 refused), 3 refusals');
$node->psql('postgres', q{SELECT v.status FROM lim l, LATERAL apikeys.apikey_verify(l.token) v});
is(scalar(() = slurp_file($node->logfile) =~ /apikeys shared memory is full/g), 1,
	'the WARNING is logged once a minute, not per request');

# the worker flushes, then frees entries idle for a flush interval
ok($node->poll_query_until('postgres', q{
    SELECT count(*) FROM lim l, LATERAL apikeys.apikey_verify(l.token) v WHERE v.valid}, '5'),
	'the worker freed room: every limited key verifies');
ok($node->safe_psql('postgres', 'SELECT evicted FROM apikeys.usage_stats()') > 0, 'entries were freed');
is($node->safe_psql('postgres', q{
    SELECT sum(u.uses) FROM apikeys.usage u JOIN plain USING (key_id)}),
	'18', 'the tracked uses were flushed before their entries were freed');

$node->stop;
done_testing();
