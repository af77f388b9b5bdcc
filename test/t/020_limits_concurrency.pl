# Rate limits and quotas are exact under concurrency: N sessions hammering
# one key never get more grants than the limit allows, and get all of them;
# a role's limit is shared by its keys; several windows are decided all at
# once.  Windows are an hour long here, so nothing refills during a run.
# Refill timing is measured (never asserted against the wall clock beyond
# what the algorithm guarantees).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('concurrency');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys'
apikeys.usage_flush_interval = '200ms'
max_connections = 30
});
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE svc NOLOGIN;
    CREATE TABLE tok (label text PRIMARY KEY, key_id text, token text);
    INSERT INTO tok SELECT 'rate', * FROM apikeys.apikey_create('rate', rate_limit => '50/hour');
    INSERT INTO tok SELECT 'quota', * FROM apikeys.apikey_create('quota', remaining => 40);
    INSERT INTO tok SELECT 'windows', * FROM apikeys.apikey_create('windows', rate_limit => '1000/second, 25/hour');
    INSERT INTO tok SELECT 'cost', * FROM apikeys.apikey_create('cost', rate_limit => '50/hour');
    INSERT INTO tok SELECT 'role1', * FROM apikeys.apikey_create('role1', role => 'svc', rate_limit => '1000/hour');
    INSERT INTO tok SELECT 'role2', * FROM apikeys.apikey_create('role2', role => 'svc');
    SELECT apikeys.apikey_set_role_limit('svc', '30/hour');
    INSERT INTO tok SELECT 'refill', * FROM apikeys.apikey_create('refill', rate_limit => '5/second');
});

# 8 clients x 40 attempts each, on one key
sub hammer
{
	my ($name, $sql) = @_;
	$node->pgbench('-n -c 8 -j 8 -t 40', 0, [qr/processed: 320\/320/], [qr/^$/],
		"pgbench: $name", { "001_$name" => $sql });
}

sub usage
{
	my ($label) = @_;
	return $node->safe_psql('postgres', qq{
		SELECT u.uses || ' ' || u.rate_limited || ' ' || u.quota_exceeded
		  FROM apikeys.usage u JOIN tok USING (key_id) WHERE tok.label = '$label'});
}

hammer('rate', q{SELECT v.status FROM tok, apikeys.apikey_verify(tok.token) v WHERE tok.label = 'rate';});
is(usage('rate'), '50 270 0', '320 attempts on a 50/hour key: exactly 50 granted');

hammer('quota', q{SELECT v.status FROM tok, apikeys.apikey_verify(tok.token) v WHERE tok.label = 'quota';});
is(usage('quota'), '40 0 280', '320 attempts on a quota of 40: exactly 40 granted');
is($node->safe_psql('postgres', q{SELECT remaining FROM apikeys.keys WHERE name = 'quota'}),
	'0', 'and the quota is at zero, not below');

hammer('windows', q{SELECT v.status FROM tok, apikeys.apikey_verify(tok.token) v WHERE tok.label = 'windows';});
is(usage('windows'), '25 295 0', 'two windows: the tighter one decides, nothing more granted');

hammer('cost', q{SELECT v.status FROM tok, apikeys.apikey_verify(tok.token, cost => 3) v WHERE tok.label = 'cost';});
is(usage('cost'), '16 304 0', 'cost 3 on 50/hour: 16 requests (48 units) granted');

hammer('role',
	q{\set k random(1, 2)
SELECT v.status FROM tok, apikeys.apikey_verify(tok.token) v WHERE tok.label = 'role' || :k;});
is($node->safe_psql('postgres', q{
	SELECT sum(u.uses) || ' ' || sum(u.rate_limited)
	  FROM apikeys.usage u JOIN tok USING (key_id) WHERE tok.label IN ('role1', 'role2')}),
	'30 290', "a role's 30/hour is shared by its two keys: 30 granted in all");

# Refill: 5/second admits 5 at once, then one every 200 ms.  Attempts every
# 20 ms for about 1.5 s; grants can never exceed 5 + 5 x elapsed seconds
# (the algorithm's bound), and continuous attempts take nearly all of it.
my $refill = $node->safe_psql('postgres', q{
	DO $$
	DECLARE
	    t0 timestamptz;
	    elapsed float8;
	    granted int := 0;
	    r record;
	    tk text := (SELECT token FROM tok WHERE label = 'refill');
	BEGIN
	    t0 := clock_timestamp();
	    WHILE clock_timestamp() < t0 + interval '1.5 s' LOOP
	        -- each attempt a request: a query run through a cursor is a
	        -- statement of its own (one verification per statement)
	        FOR r IN SELECT v.valid FROM apikeys.apikey_verify(tk) v LOOP
	            IF r.valid THEN
	                granted := granted + 1;
	            END IF;
	        END LOOP;
	        PERFORM pg_sleep(0.02);
	    END LOOP;
	    elapsed := extract(epoch FROM clock_timestamp() - t0);
	    RAISE NOTICE 'granted % elapsed %', granted, elapsed;
	    IF granted > 5 + floor(5 * elapsed) THEN
	        RAISE EXCEPTION 'too many grants: % in % s', granted, elapsed;
	    END IF;
	    IF granted < 5 + floor(5 * elapsed) - 3 THEN
	        RAISE EXCEPTION 'too few grants: % in % s', granted, elapsed;
	    END IF;
	END $$;
	SELECT 'ok'});
is($refill, 'ok', 'refill: grants follow 5 + 5/second');

# retry_after is honest: waiting that long is enough
my $retry = $node->safe_psql('postgres', q{
	DO $$
	DECLARE
	    tk text := (SELECT token FROM tok WHERE label = 'refill');
	    r apikeys.verification;
	BEGIN
	    LOOP
	        FOR r IN SELECT * FROM apikeys.apikey_verify(tk) LOOP
	        END LOOP;
	        EXIT WHEN r.status = 'rate_limited';
	    END LOOP;
	    IF r.retry_after IS NULL OR r.retry_after > interval '200 ms' THEN
	        RAISE EXCEPTION 'retry_after % for 5/second', r.retry_after;
	    END IF;
	    PERFORM pg_sleep(extract(epoch FROM r.retry_after));
	    FOR r IN SELECT * FROM apikeys.apikey_verify(tk) LOOP
	    END LOOP;
	    IF r.status <> 'valid' THEN
	        RAISE EXCEPTION 'still % after waiting retry_after', r.status;
	    END IF;
	END $$;
	SELECT 'ok'});
is($retry, 'ok', 'a request made retry_after later is granted');

$node->stop;
done_testing();
