# Shared memory is shared fairly (issue 16, item 3): a role with no
# privileges fills the table with its own keys of '1/day', verified once
# each; an admin's new limited keys for another role stay valid, and their
# usage is counted; the attacker's own keys past its share are refused
# (rate_limited, a WARNING naming the role); deleting its keys frees their
# entries when that commits (a '1/day' bucket is never idle, so nothing
# else would free them for a day); and a second database filling its share
# leaves room for the first's keys.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('shares');
$node->init;
# 200 entries: a role's share is 10% (20), a database's 50% (100)
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys'
apikeys.max_tracked_keys = 200
apikeys.usage_flush_interval = '200ms'
});
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE mallory LOGIN;
    CREATE SCHEMA AUTHORIZATION mallory;
    CREATE ROLE tenant NOLOGIN;
    CREATE TABLE victims (id int PRIMARY KEY, key_id text, token text);
    GRANT ALL ON victims TO PUBLIC;
});

sub tracked
{
	return $node->safe_psql('postgres', 'SELECT tracked FROM apikeys.usage_stats()');
}

# mallory, unprivileged, makes 250 keys of its own (more than the table
# holds) and verifies each once, in one statement
my ($ret, $out, $err) = $node->psql('postgres', q{
    CREATE TABLE mine AS SELECT k.* FROM generate_series(1, 250) g,
        LATERAL apikeys.apikey_create('mine ' || g, rate_limit => '1/day') k;
    SELECT string_agg(s || ' ' || n, ', ' ORDER BY s) FROM
      (SELECT v.status AS s, count(*) AS n
         FROM mine m, LATERAL apikeys.apikey_verify(m.token) v GROUP BY 1) x;
}, extra_params => ['-U', 'mallory']);
is($out, 'rate_limited 90, valid 160',
	'the attacker gets its share (20 entries) and borrows free ones while a share (20) stays free below the 90% line (180); its other keys are refused');
like($err, qr/WARNING:  apikeys shared memory: the share of role "mallory" is full/,
	'with a WARNING naming the role');
is(tracked(), '160', 'it holds 160 entries of 200');
my $shares = q{
    SELECT string_agg(format('%s %s: %s of %s, %s refused, %s borrowed', kind, name, tracked, share, refused, borrowed),
                      '; ' ORDER BY kind, name)
      FROM apikeys.usage_shares()};
is($node->safe_psql('postgres', $shares),
	'database postgres: 160 of 100, 0 refused, 140 borrowed; role mallory: 160 of 20, 90 refused, 140 borrowed',
	'usage_shares() shows its share full, and what it refused');

# the admin's new keys for another role, with a limit: all valid
$node->safe_psql('postgres', q{
    INSERT INTO victims SELECT g, k.* FROM generate_series(1, 5) g,
        LATERAL apikeys.apikey_create('tenant ' || g, role => 'tenant',
                                      rate_limit => '1000/second') k;
    INSERT INTO victims SELECT 5 + g, k.* FROM generate_series(1, 5) g,
        LATERAL apikeys.apikey_create('tenant plain ' || g, role => 'tenant') k;
});
my $victims_valid = q{
    SELECT string_agg(v.status, ',' ORDER BY t.id)
      FROM victims t, LATERAL apikeys.apikey_verify(t.token) v};
is($node->safe_psql('postgres', $victims_valid), join(',', ('valid') x 10),
	'every key of the other role is valid, limited or not');
for (1 .. 2)
{
	$node->safe_psql('postgres', $victims_valid);
}
is($node->safe_psql('postgres', q{
    SELECT string_agg(u.uses::text, ',' ORDER BY t.id)
      FROM victims t JOIN apikeys.usage u USING (key_id)}),
	join(',', ('3') x 10), 'and each of their 3 verifications is counted');

# mallory deletes its keys: their entries go when that commits, though no
# '1/day' bucket is idle (first the worker writes what they counted)
$node->poll_query_until('postgres', q{
    SELECT coalesce(sum(u.unflushed), 0) = 0 FROM apikeys.usage u})
	or die 'the worker did not flush';
$node->safe_psql('postgres', q{
    SELECT count(apikeys.apikey_delete(m.key_id)) FROM mine m;
    DROP TABLE mine;
}, extra_params => ['-U', 'mallory']);
# (the worker may meanwhile have freed the victims' idle entries: the
# table was crowded, and theirs are written and their buckets full)
ok(tracked() <= 10, 'the entries of the deleted keys are freed at once');
is($node->safe_psql('postgres', q{
    SELECT count(*) FROM apikeys.usage_shares() WHERE name = 'mallory' OR borrowed > 0}),
	'0', 'and given back to the role\'s and the database\'s shares, borrowed ones included');

# and mallory's new keys get entries again
is($node->safe_psql('postgres', q{
    SELECT v.status FROM apikeys.apikey_create('again', rate_limit => '1/day') k,
                         LATERAL apikeys.apikey_verify(k.token) v},
	extra_params => ['-U', 'mallory']), 'valid', 'its share is free again');

# a revoked key's entry goes at commit too
my $rk = $node->safe_psql('postgres', q{SELECT key_id FROM apikeys.keys WHERE name = 'again'});
$node->poll_query_until('postgres', qq{
    SELECT coalesce(sum(u.unflushed), 0) = 0 FROM apikeys.usage u WHERE key_id = '$rk'})
	or die 'the worker did not flush';
is($node->safe_psql('postgres', q{SELECT tracked FROM apikeys.usage_shares() WHERE name = 'mallory'}),
	'1', 'its entry is there');
$node->safe_psql('postgres', qq{SELECT apikeys.apikey_revoke('$rk')}, extra_params => ['-U', 'mallory']);
is($node->safe_psql('postgres', q{SELECT count(*) FROM apikeys.usage_shares() WHERE name = 'mallory'}),
	'0', 'a revoked key\'s entry is freed at once');

# a key deleted before the worker wrote what it counted: its entry goes
# right after the worker has, and nothing it counted is lost
my $before = tracked();
my $gk = $node->safe_psql('postgres', q{
    SELECT k.key_id FROM apikeys.apikey_create('gone', role => 'tenant', rate_limit => '1/day') k,
                         LATERAL apikeys.apikey_verify(k.token) v WHERE v.valid});
$node->safe_psql('postgres', qq{SELECT apikeys.apikey_delete('$gk')});
ok($node->poll_query_until('postgres', "SELECT tracked = $before FROM apikeys.usage_stats()"),
	'a deleted key\'s entry holding unwritten counts is freed after the next flush');
is($node->safe_psql('postgres', qq{SELECT uses FROM apikeys_internal.usage WHERE key_id = '$gk'}),
	'1', 'which wrote its use first');

# A second database: one role there may take the whole of that database's
# share (tracked_share_per_role raised to 100%), never more.
$node->safe_psql('postgres', q{
    ALTER SYSTEM SET apikeys.tracked_share_per_role = 100;
    SELECT pg_reload_conf();
    CREATE DATABASE other;
});
$node->safe_psql('other', 'CREATE EXTENSION apikeys CASCADE');
$node->poll_query_until('other', q{SELECT current_setting('apikeys.tracked_share_per_role') = '100'})
	or die 'the setting was not reloaded';
($ret, $out, $err) = $node->psql('other', q{
    SELECT string_agg(s || ' ' || n, ', ' ORDER BY s) FROM
      (SELECT v.status AS s, count(*) AS n FROM generate_series(1, 150) g,
              LATERAL apikeys.apikey_create('other ' || g, rate_limit => '1/day') k,
              LATERAL apikeys.apikey_verify(k.token) v GROUP BY 1) x;
}, extra_params => ['-U', 'mallory']);
is($out, 'rate_limited 50, valid 100',
	'the other database gets its share (100 entries), its other keys are refused');
like($err, qr/WARNING:  apikeys shared memory: the share of database "other" is full/,
	'with a WARNING naming the database');
$node->safe_psql('postgres', q{
    INSERT INTO victims SELECT 10 + g, k.* FROM generate_series(1, 5) g,
        LATERAL apikeys.apikey_create('tenant later ' || g, role => 'tenant',
                                      rate_limit => '1000/second') k;
});
is($node->safe_psql('postgres', $victims_valid), join(',', ('valid') x 15),
	'the first database\'s keys, old and new, are all valid');

$node->stop;
done_testing();
