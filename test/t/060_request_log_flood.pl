# The request log's bound per role (apikeys.audit_request_rows_per_role): a
# role flooding the log with failures of many keys of its own gets at most
# that many rows per flush, plus one overflow row counting the rest; a
# victim role's requests made in the same flush interval are all logged,
# each with its key, even in a queue the flood alone would have filled.
# Input that names no key counts against the session user.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('flood');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'apikeys'
apikeys.usage_flush_interval = '200ms'
apikeys.audit_request_queue_size = 64
apikeys.audit_request_rows_per_role = 20
});
$node->start;
sub q1 { return $node->safe_psql('postgres', "SET log_statement = 'none';\n$_[0]"); }
sub set_interval
{
	q1(qq{ALTER SYSTEM SET apikeys.usage_flush_interval = '$_[0]'; SELECT pg_reload_conf();});
	usleep(700_000);    # the worker's current wait ends, it reads the setting
}

q1(q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE flooder LOGIN;
    CREATE ROLE guesser LOGIN;
    CREATE ROLE victim NOLOGIN;
    CREATE TABLE tok (owner text, n int, key_id text, token text);
    INSERT INTO tok SELECT 'flooder', i, c.* FROM generate_series(1, 80) i,
        LATERAL apikeys.apikey_create('f' || i, role => 'flooder', scopes => '{a}') c;
    INSERT INTO tok SELECT 'victim', i, c.* FROM generate_series(1, 10) i,
        LATERAL apikeys.apikey_create('v' || i, role => 'victim', scopes => '{a}') c;
    GRANT SELECT ON tok TO flooder;
});

# the setting is the administrator's: a role cannot raise its own bound
my ($ret, $out, $err) = $node->psql('postgres',
	'SET apikeys.audit_request_rows_per_role = 1000000', extra_params => [ '-U', 'flooder' ]);
like($err, qr/cannot be changed now/, 'apikeys.audit_request_rows_per_role cannot be SET by a role');

# no flush while the requests are made: they are one flush's rows
set_interval('1h');
q1(q{TRUNCATE apikeys_internal.request_log});
my $wrong_scope = q{SELECT count(*) FROM tok, apikeys.apikey_verify(token, scope => 'b') v
                     WHERE owner = '%s' AND n BETWEEN %d AND %d AND v.status = 'insufficient_scope'};
# 60 keys of the flooder (enough to fill the queue of 64 alone), the
# victim's 10, 20 more of the flooder; the flooder's as itself
is($node->safe_psql('postgres', sprintf($wrong_scope, 'flooder', 1, 60), extra_params => [ '-U', 'flooder' ]),
	'60', 'the flooder: 60 of its keys with a scope they lack');
is(q1(sprintf($wrong_scope, 'victim', 1, 10)), '10', 'the victim: 10 keys with a scope they lack');
is($node->safe_psql('postgres', sprintf($wrong_scope, 'flooder', 61, 80), extra_params => [ '-U', 'flooder' ]),
	'20', 'the flooder: 20 more');
# and input that names no key, from another login's session
is($node->safe_psql('postgres', q{SELECT count(*) FROM generate_series(1, 5) i
                                   WHERE NOT apikeys.apikey_is_valid('garbage ' || i)},
		extra_params => [ '-U', 'guesser' ]), '5', 'another login: 5 strings that are no token');
is(q1(q{SELECT queued || ' ' || pending || ' ' || role_capped FROM apikeys.request_log_stats()}),
	'31 95 60', 'queued: 20 aggregates of the flooder\'s keys, 10 of the victim\'s, 1 of garbage; 60 past the bound');

set_interval('200ms');
ok($node->poll_query_until('postgres', q{SELECT pending FROM apikeys.request_log_stats()}, '0'),
	'the worker wrote them');

is(q1(q{SELECT count(*) || ' ' || count(DISTINCT key_id) || ' ' || sum(requests)
          FROM apikeys.request_log WHERE charged_role = 'flooder' AND NOT overflow AND key_exists}),
	'20 20 20', 'the flooder\'s keys: 20 rows (the bound), one key each');
is(q1(q{SELECT count(*) || ' ' || min(kind) || ' ' || sum(requests) || ' ' || bool_and(key_id IS NULL)
               || ' ' || bool_and(db_user IS NULL) || ' ' || bool_and(key_role IS NULL)
          FROM apikeys.request_log WHERE charged_role = 'flooder' AND status = 'overflow'}),
	'1 verify 60 true true true', 'and one overflow row counting the other 60 requests, with no key');
is(q1(q{SELECT count(*) FROM apikeys.request_log WHERE charged_role = 'flooder'}),
	'21', 'the flooder caused 21 rows in all: the bound and the overflow row');
is(q1(q{SELECT count(*) || ' ' || sum(requests) || ' ' || db_user || ' ' || bool_and(key_id IS NULL)
               || ' ' || bool_and(NOT key_exists)
          FROM apikeys.request_log WHERE charged_role = 'guesser' GROUP BY db_user}),
	'1 5 guesser true true', 'input that names no key counts against the session user');
is(q1(q{SELECT count(*) || ' ' || count(DISTINCT key_id) || ' ' || sum(requests) || ' ' || bool_or(overflow)
          FROM apikeys.request_log r JOIN tok t USING (key_id)
         WHERE t.owner = 'victim' AND r.key_role = 'victim' AND r.charged_role = 'victim'
           AND r.status = 'insufficient_scope'}),
	'10 10 10 false', 'the victim: every request logged, each with its key');
is(q1(q{SELECT count(*) FROM apikeys.request_log WHERE charged_role IS NULL}), '0',
	'nothing went to the counters of a full queue');
is(q1(q{SELECT sum(requests) FROM apikeys.request_log}), '95', 'every request is counted');

# the bound is per flush: the next flush gives the flooder its share again
set_interval('1h');
is($node->safe_psql('postgres', sprintf($wrong_scope, 'flooder', 1, 80), extra_params => [ '-U', 'flooder' ]),
	'80', 'the flooder again: 80 keys');
set_interval('200ms');
ok($node->poll_query_until('postgres', q{SELECT pending FROM apikeys.request_log_stats()}, '0'),
	'written');
is(q1(q{SELECT count(*) FILTER (WHERE NOT overflow) || ' ' || count(*) FILTER (WHERE status = 'overflow')
               || ' ' || sum(requests)
          FROM apikeys.request_log WHERE charged_role = 'flooder' AND key_exists IS NOT FALSE}),
	'40 2 160', 'two flushes: twice the bound and two overflow rows');

# a clean restart keeps a role's count past the bound with the queue
set_interval('1h');
q1(q{TRUNCATE apikeys_internal.request_log});
is($node->safe_psql('postgres', sprintf($wrong_scope, 'flooder', 1, 30), extra_params => [ '-U', 'flooder' ]),
	'30', 'the flooder: 30 keys, then a clean restart');
$node->restart;
ok($node->poll_query_until('postgres', q{SELECT sum(requests) FROM apikeys.request_log}, '30'),
	'written after the restart');
is(q1(q{SELECT count(*) FILTER (WHERE NOT overflow) || ' ' || sum(requests) FILTER (WHERE status = 'overflow')
          FROM apikeys.request_log WHERE charged_role = 'flooder'}),
	'20 10', 'the bound and the overflow row of 10 survived it');

$node->stop;
done_testing();
