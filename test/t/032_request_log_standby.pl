# Requests made with a key on a hot standby: it cannot write, so nothing is
# queued or written there; each request that would be recorded is counted in
# that standby's request_log_stats().not_recorded, and none of them reaches
# the primary's log.  Promoted, it records like a primary.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $conf = qq{
shared_preload_libraries = 'apikeys'
apikeys.usage_flush_interval = '200ms'
};
my $primary = PostgreSQL::Test::Cluster->new('primary');
$primary->init(allows_streaming => 1);
$primary->append_conf('postgresql.conf', $conf);
$primary->start;
$primary->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE TABLE tok (label text PRIMARY KEY, key_id text, token text);
    INSERT INTO tok SELECT 'd', * FROM apikeys.apikey_create('disabled');
    SELECT apikeys.apikey_disable(key_id) FROM tok;
    -- n requests with the key, each a statement of its own
    CREATE FUNCTION requests(n int) RETURNS text LANGUAGE plpgsql AS $$
    DECLARE
        statuses text[] := '{}';
        r record;
    BEGIN
        FOR i IN 1..n LOOP
            FOR r IN SELECT v.status FROM tok, apikeys.apikey_verify(tok.token) v LOOP
                statuses := statuses || r.status;
            END LOOP;
        END LOOP;
        RETURN array_to_string(statuses, ' ');
    END $$;
});
$primary->backup('bk');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'bk', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);

sub stats
{
	return $_[0]->safe_psql('postgres',
		q{SELECT recorded || ' ' || pending || ' ' || not_recorded FROM apikeys.request_log_stats()});
}

is($standby->safe_psql('postgres', 'SELECT requests(5)'),
	'disabled disabled disabled disabled disabled', 'five refused requests on the standby');
is(stats($standby), '0 0 5', 'the standby queues none and counts five not recorded');
is($standby->safe_psql('postgres', q{SET apikeys.audit_requests = 'all'; SELECT requests(1)}),
	'disabled', 'one more under all');
is(stats($standby), '0 0 6', 'counted the same way');
usleep(600_000);
$primary->wait_for_catchup($standby);
is($primary->safe_psql('postgres', 'SELECT count(*) FROM apikeys.request_log'), '0',
	"the primary's log has none of the standby's requests");
is($standby->safe_psql('postgres', 'SELECT count(*) FROM apikeys.request_log'), '0',
	'nor does the standby (it reads the primary)');

# the same requests on the primary are recorded (so the above is no accident)
is($primary->safe_psql('postgres', 'SELECT requests(5)'),
	'disabled disabled disabled disabled disabled', 'five refused requests on the primary');
ok($primary->poll_query_until('postgres', q{SELECT sum(requests) FROM apikeys.request_log}, '5'),
	'the primary records them');

# promoted, the former standby records
$standby->promote;
$standby->poll_query_until('postgres', 'SELECT NOT pg_is_in_recovery()') or die 'not promoted';
is($standby->safe_psql('postgres', 'SELECT requests(2)'), 'disabled disabled', 'two requests after promotion');
ok($standby->poll_query_until('postgres', q{SELECT sum(requests) FROM apikeys.request_log}, '7'),
	'the promoted node writes them');

$standby->stop;
$primary->stop;
done_testing();
