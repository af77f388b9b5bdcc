# The key cache on a hot standby: the invalidation travels in the commit
# record, so a standby session that verified keys thousands of times from
# its cache sees a replayed revoke, rotation and scope change on its next
# call, inside a long REPEATABLE READ transaction and inside one long
# statement that runs while the change is replayed.
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
    INSERT INTO test_tokens SELECT l, c.* FROM unnest(ARRAY['revoke', 'grace', 'rotate', 'scope', 'long'])
        AS l, LATERAL apikeys.apikey_create(l, scopes => '{r}') c;
    CREATE TABLE markers (id int PRIMARY KEY);
    INSERT INTO markers VALUES (0);

    -- n verifications with distinct origins (the keys restrict none), so
    -- every one is a cache lookup, not a repeat of the statement
    CREATE FUNCTION hammer(tok text, n int) RETURNS bigint LANGUAGE sql AS $$
        SELECT count(*) FILTER (WHERE apikeys.apikey_is_valid(tok, 'r', NULL, 'https://h' || g))
          FROM generate_series(1, n) g
    $$;

    -- One statement: n verifications; then, after a notice, wait until
    -- marker is replayed; then verify again, afresh and as a repeat.  Every
    -- statement after the notice ran once before it, so nothing but verify
    -- itself reads the invalidation queue.
    CREATE FUNCTION long_statement(tok text, n int, marker int) RETURNS text
    LANGUAGE plpgsql AS $$
    DECLARE
        result text := hammer(tok, n) || ' valid';
        status text;
        repeat bool;
    BEGIN
        FOR round IN 1..2 LOOP
            IF round = 2 THEN
                RAISE NOTICE 'hammered';
            END IF;
            WHILE NOT EXISTS (SELECT 1 FROM markers m
                               WHERE m.id = CASE round WHEN 1 THEN 0 ELSE marker END) LOOP
                PERFORM pg_sleep(0.01);
            END LOOP;
            status := (apikeys.apikey_verify(tok, 'r')).status;
            repeat := apikeys.apikey_is_valid(tok, 'r', NULL, 'https://h' || n);
            result := result || CASE round WHEN 1 THEN '; before: ' ELSE '; after: ' END
                      || status || ', repeat valid: ' || repeat;
        END LOOP;
        RETURN result;
    END
    $$;
});

$primary->backup('bk');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($primary, 'bk', has_streaming => 1);
$standby->start;
$primary->wait_for_catchup($standby);

my $statuses = q{SELECT string_agg(label || '=' || (apikeys.apikey_verify(token, 'r')).status, ' ' ORDER BY label)
                   FROM test_tokens WHERE label <> 'long'};

# A long transaction on the standby, its cache warm.
my $rr = $standby->background_psql('postgres');
$rr->query_safe('BEGIN ISOLATION LEVEL REPEATABLE READ');
is($rr->query_safe(q{SELECT sum(hammer(token, 1000)) FROM test_tokens WHERE label <> 'long'}),
   '4000', 'thousands of verifications on the standby');
is($rr->query_safe(q{SELECT hits >= 3990 AND entries >= 4 FROM apikeys.apikey_cache_stats()}),
   't', 'answered from the cache');
is($rr->query_safe($statuses), 'grace=valid revoke=valid rotate=valid scope=valid', 'all valid');

$primary->safe_psql('postgres', q{
    SELECT apikeys.apikey_revoke(key_id) FROM test_tokens WHERE label = 'revoke';
    SELECT apikeys.apikey_rotate(key_id, grace => '1 hour') FROM test_tokens WHERE label = 'grace';
    SELECT apikeys.apikey_rotate(key_id) FROM test_tokens WHERE label = 'rotate';
    SELECT apikeys.apikey_update(key_id, scopes => '{w}') FROM test_tokens WHERE label = 'scope';
});
$primary->wait_for_catchup($standby);
is($rr->query_safe($statuses),
   'grace=valid revoke=revoked rotate=invalid scope=insufficient_scope',
   'the same standby transaction sees the replayed revoke, rotations (grace honoured) and scope change');
is($rr->query_safe(q{SELECT invalidations > 0 FROM apikeys.apikey_cache_stats()}),
   't', 'through the replayed invalidation');
$rr->query_safe('COMMIT');
$rr->quit;

# One long statement on the standby, running while the change is replayed.
my $long = $standby->background_psql('postgres');
$long->{stdin} .= q{SELECT long_statement(token, 2000, 1) FROM test_tokens WHERE label = 'long';} . "\n";
ok(pump_until($long->{run}, $long->{timeout}, \$long->{stderr}, qr/hammered/),
   'the long statement has verified 2000 times and waits');
$primary->safe_psql('postgres', q{
    SELECT apikeys.apikey_revoke(key_id) FROM test_tokens WHERE label = 'long';
});
# replayed after the revoke: once it is visible, the revoke's invalidation
# has been sent
$primary->safe_psql('postgres', 'INSERT INTO markers VALUES (1)');
$primary->wait_for_catchup($standby);
ok(pump_until($long->{run}, $long->{timeout}, \$long->{stdout}, qr/after: .*\n/),
   'the long statement ends');
like($long->{stdout},
     qr/2000 valid; before: valid, repeat valid: true; after: revoked, repeat valid: false/,
     'and sees the revoke replayed while it ran, afresh and as a repeat');
$long->quit;

is($standby->safe_psql('postgres', $statuses), $primary->safe_psql('postgres', $statuses),
   'standby and primary agree');

$standby->stop;
$primary->stop;
done_testing();
