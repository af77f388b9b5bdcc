# Shared memory full (apikeys.max_tracked_keys): keys without limits fill
# at most 90% of it, and their further verifications are counted as
# untracked, not silently dropped; keys with limits use the rest, and when
# even that is full they are refused as rate_limited (with a WARNING, once
# a minute), never let through unlimited.  The worker frees entries that
# hold nothing unwritten, and refused keys work again; a session that
# remembered where a freed entry was counts in a new one.
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
# one role, one database: the whole table is theirs (050 tests the shares)
apikeys.tracked_share_per_role = 100
apikeys.tracked_share_per_database = 100
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

# A session remembers where each key's entry is and goes there directly;
# once the worker has removed that entry (and its memory may serve another
# key), the session must look the key up again, or its counts would land
# in a freed or foreign entry.
$node->poll_query_until('postgres', 'SELECT tracked < 18 FROM apikeys.usage_stats()')
	or die 'no room in shared memory';
my $h = $node->safe_psql('postgres', q{SELECT token FROM apikeys.apikey_create('hinted')});
my $q = $node->safe_psql('postgres', q{SELECT token FROM apikeys.apikey_create('quota', remaining => 10)});
my $s = $node->background_psql('postgres');
is($s->query_safe(qq{SELECT apikeys.apikey_is_valid('$h')}), 't', 'a key counted by a session');
for (1 .. 3)
{
	$s->query_safe(qq{SELECT apikeys.apikey_is_valid('$q')});
}
is($s->query_safe(qq{SELECT remaining FROM apikeys.apikey_verify('$q', cost => 0)}), '7',
	'a key with a quota spent 3 of 10');
my $evicted = $node->safe_psql('postgres', 'SELECT evicted FROM apikeys.usage_stats()');
# other keys fill the table again and again, idle for longer than a flush
# interval in between: the worker flushes and frees every entry, the
# session's key's among them, and the others take the room
$node->poll_query_until('postgres', qq{
    SELECT (SELECT count(*) FROM plain p, LATERAL apikeys.apikey_verify(p.token) v) > 0
           AND (SELECT evicted >= $evicted + 40 FROM apikeys.usage_stats())
      FROM pg_catalog.pg_sleep(0.5)})
	or die 'the worker freed nothing';
$node->poll_query_until('postgres', 'SELECT tracked < 18 FROM apikeys.usage_stats()')
	or die 'no room in shared memory';
for (1 .. 5)
{
	$s->query_safe(qq{SELECT apikeys.apikey_is_valid('$h')});
}
is($s->query_safe(q{SELECT hits >= 5 FROM apikeys.apikey_cache_stats()}), 't',
	'its later verifications are cache hits');
is($s->query_safe(qq{SELECT remaining FROM apikeys.apikey_verify('$q')}), '6',
	'the quota goes on from its flushed state once its entry was freed');
$s->quit;
is($node->safe_psql('postgres', qq{
    SELECT uses FROM apikeys.usage WHERE key_id = (SELECT key_id FROM apikeys.keys WHERE name = 'hinted')}),
	'6', 'and every one of them is counted, in a new entry');

$node->stop;
done_testing();
