# On a hot standby, verification enforces rate limits and quotas in that
# node's shared memory and counts that node's usage, live; the worker
# writes nothing there.  Limit changes made on the primary apply on the
# standby when it replays them, role limits included, in open sessions too.
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
    CREATE ROLE svc NOLOGIN;
    CREATE TABLE tok (label text PRIMARY KEY, key_id text, token text);
    INSERT INTO tok SELECT 'l', * FROM apikeys.apikey_create('limited', rate_limit => '3/hour');
    INSERT INTO tok SELECT 'p', * FROM apikeys.apikey_create('plain', role => 'svc');
    INSERT INTO tok SELECT 'q', * FROM apikeys.apikey_create('quota', remaining => 2);
    -- n requests with a key: each verification a statement of its own (a
    -- query run through a cursor), as separate client statements would be;
    -- one statement verifying a token several times is one request
    CREATE FUNCTION requests(l text, n int) RETURNS text LANGUAGE plpgsql AS $$
    DECLARE
        statuses text[] := '{}';
        r record;
    BEGIN
        FOR i IN 1..n LOOP
            FOR r IN SELECT v.status FROM tok, apikeys.apikey_verify(tok.token) v
                      WHERE tok.label = l LOOP
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

my $statuses = q{SELECT requests('%s', 4)};
sub on_standby { return $standby->safe_psql('postgres', sprintf($statuses, $_[0])); }

is($standby->safe_psql('postgres', 'SELECT pg_is_in_recovery()'), 't', 'standby is in recovery');
is(on_standby('l'), 'valid valid valid rate_limited', 'the standby enforces a rate limit');
is(on_standby('q'), 'valid valid quota_exceeded quota_exceeded', 'and a quota');
is(on_standby('p'), 'valid valid valid valid', 'a plain key verifies');
is($standby->safe_psql('postgres', q{
    SELECT string_agg(tok.label || ':' || u.uses || '/' || u.rate_limited || '/' || u.quota_exceeded, ' ' ORDER BY tok.label)
      FROM apikeys.usage u JOIN tok USING (key_id)}),
   'l:3/1/0 p:4/0/0 q:2/0/2', "apikeys.usage shows the standby's own counts, live");
usleep(600_000);
is($standby->safe_psql('postgres', 'SELECT flushes FROM apikeys.usage_stats()'), '0',
   'the worker flushes nothing on a standby');
is($primary->safe_psql('postgres', 'SELECT count(*) FROM apikeys_internal.usage'), '0',
   "and the primary's tables have none of the standby's counts");
is($primary->safe_psql('postgres', sprintf($statuses, 'l')), 'valid valid valid rate_limited',
   'the primary has buckets of its own');

# changes replay: a new rate limit, a role limit (seen by an open session)
my $session = $standby->background_psql('postgres');
is($session->query_safe(sprintf($statuses, 'p')), 'valid valid valid valid', 'an open standby session');
$primary->safe_psql('postgres', q{
    SELECT apikeys.apikey_update(key_id, rate_limit => '5/hour') FROM tok WHERE label = 'l';
    SELECT apikeys.apikey_set_role_limit('svc', '2/hour');
});
$primary->wait_for_catchup($standby);
is(on_standby('l'), 'valid valid valid valid', 'a replayed new limit starts a new bucket');
is($session->query_safe(sprintf($statuses, 'p')), 'valid valid rate_limited rate_limited',
   'a replayed role limit applies in the open session');
$session->quit;

$standby->stop;
$primary->stop;
done_testing();
