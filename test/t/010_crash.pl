# Crash: a stream of creates, rotations, revocations and verifications, with
# rate limits, quotas and usage on, stopped twice in its middle: first by an
# immediate shutdown (pg_ctl stop -m immediate), then by a crash (a server
# process killed: the postmaster reinitializes shared memory).
#
# Each lifecycle call writes what it expects into a table in the same
# transaction, and each verification writes what its client was told (key,
# status, the server clock just after the verification) in the same
# statement; so after recovery the tables hold exactly the committed work
# and what the clients saw.  Then:
#  - every committed key verifies with its committed state, no key exists
#    that no committed transaction made, the audit chain verifies;
#  - usage and quotas are within the documented loss bound (README, "Limits
#    and usage"; src/worker.c): a crash loses what was counted after the
#    last flush began, nothing before it, and never counts what did not
#    happen.  For each key and counter: flushed >= what the clients saw
#    before the key's last flush (usage.updated_at, the start of the flush
#    transaction), flushed <= what they saw plus the verifications in
#    flight when it stopped (one per client); for a quota, remaining + uses
#    = the quota (the worker writes both from one cut of shared memory);
#    each run of the stream is checked from what the previous one left;
#  - an immediate shutdown loses nothing (shared memory is written at
#    shutdown; not if it interrupted a flush, src/shmem.c, so that nothing
#    is counted twice), a crash starts rate-limit buckets full;
#  - a clean restart afterwards keeps keys, their settings and usage.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(usleep);

my $clients = 4;
my $quota = 5;
my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys'
apikeys.database = 'postgres'
apikeys.usage_flush_interval = '300ms'
restart_after_crash = on
fsync = on
max_connections = 30
});
$node->start;
# kind: plain, rate (5/day: nothing refills during the test) or quota;
# every key's role shares a limit too
$node->safe_psql('postgres', qq{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE regress_crash NOLOGIN;
    SELECT apikeys.apikey_set_role_limit('regress_crash', '100000/hour');
    CREATE TABLE crash_expected (key_id text PRIMARY KEY, token text NOT NULL, state text NOT NULL,
                                 kind text NOT NULL);
    CREATE TABLE crash_seen (key_id text NOT NULL, at timestamptz NOT NULL, status text NOT NULL);
    CREATE FUNCTION new_key(kind text) RETURNS TABLE (key_id text, token text) LANGUAGE sql AS \$\$
        SELECT * FROM apikeys.apikey_create('stream ' || kind, role => 'regress_crash',
                   rate_limit => CASE kind WHEN 'rate' THEN '5/day' END,
                   remaining => CASE kind WHEN 'quota' THEN $quota END) \$\$;
    INSERT INTO crash_expected SELECT n.key_id, n.token, 'valid', x.k
      FROM (SELECT k FROM generate_series(1, 8) g, unnest('{plain,rate,quota}'::text[]) k OFFSET 0) x,
           new_key(x.k) n;
});

my $script = $node->basedir . '/stream.sql';
open my $fh, '>', $script or die;
print $fh <<'SQL';
\set r random(1, 80)
\set k random(1, 3)
\if :r <= 4
INSERT INTO crash_expected SELECT n.key_id, n.token, 'valid', k.kind
  FROM (SELECT ('{plain,rate,quota}'::text[])[:k] AS kind) k, new_key(k.kind) n;
\elif :r <= 8
WITH k AS (SELECT key_id FROM crash_expected WHERE state = 'valid' ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED)
UPDATE crash_expected e SET token = apikeys.apikey_rotate(e.key_id) FROM k WHERE e.key_id = k.key_id;
\elif :r <= 9
WITH k AS (SELECT key_id FROM crash_expected WHERE state = 'valid' ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED),
     r AS (SELECT k.key_id, apikeys.apikey_revoke(k.key_id) FROM k)
UPDATE crash_expected e SET state = 'revoked' FROM r WHERE e.key_id = r.key_id;
\elif :r <= 10
WITH k AS (SELECT key_id FROM crash_expected WHERE state = 'valid' ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED),
     d AS (SELECT k.key_id, apikeys.apikey_disable(k.key_id) FROM k)
UPDATE crash_expected e SET state = 'disabled' FROM d WHERE e.key_id = d.key_id;
\else
INSERT INTO crash_seen
SELECT t.key_id, clock_timestamp(), v.status
  FROM (SELECT key_id, token FROM crash_expected ORDER BY random() LIMIT 1) t,
       apikeys.apikey_verify(t.token) v;
\endif
SQL
close $fh;

sub q1 { return $node->safe_psql('postgres', $_[0]); }

# Start the stream and let it run until it has done some work (and the
# worker flushed a few times); leaves it running.  First, once everything is
# flushed, the usage and quotas it starts from are kept in crash_base, and
# its start time in $phase_start: check_usage checks what this run added.
my $phase_start;
sub start_stream
{
    ok($node->poll_query_until('postgres', 'SELECT coalesce(sum(unflushed), 0) = 0 FROM apikeys.usage'),
       'everything counted so far is flushed');
    q1(q{
        DROP TABLE IF EXISTS crash_base;
        CREATE TABLE crash_base AS
        SELECT k.key_id, u.uses, u.failures, u.rate_limited, u.quota_exceeded, k.remaining
          FROM apikeys.keys k JOIN apikeys.usage u USING (key_id)});
    $phase_start = q1('SELECT clock_timestamp()');
    my $seen0 = q1('SELECT count(*) FROM crash_seen');
    my $flushes0 = q1('SELECT flushes FROM apikeys.usage_stats()');
    my ($out, $err) = ('', '');
    my $h = IPC::Run::start(
        [ 'pgbench', '-n', '-c', $clients, '-j', '2', '-T', '60', '-f', $script,
          '-h', $node->host, '-p', $node->port, 'postgres' ],
        '>', \$out, '2>', \$err);
    my ($seen, $flushes) = (0, 0);
    for (1 .. 300)
    {
        usleep(100_000);
        ($seen, $flushes) = split /\|/, q1(q{
            SELECT (SELECT count(*) FROM crash_seen), (SELECT flushes FROM apikeys.usage_stats())});
        last if $seen - $seen0 >= 1500 && $flushes - $flushes0 >= 5;
    }
    ok($seen - $seen0 >= 500 && $flushes - $flushes0 >= 3 && $h->pumpable,
        'the stream is running (' . ($seen - $seen0) . ' verifications, '
        . ($flushes - $flushes0) . ' flushes)') or diag($err);
    return ($h, \$err);
}

my %counter = (uses => q{s.status = 'valid'}, rate_limited => q{s.status = 'rate_limited'},
               quota_exceeded => q{s.status = 'quota_exceeded'},
               failures => q{s.status NOT IN ('valid', 'rate_limited', 'quota_exceeded')});

# The loss bound on what the last run of the stream added, for every
# counter of every key: at most $clients verifications were in flight when
# it stopped (counted, their clients never answered).  With $nothing_lost,
# every verification seen must be counted.
sub check_usage
{
    my ($what, $nothing_lost) = @_;
    foreach my $c (sort keys %counter)
    {
        my ($flushed, $before_flush, $seen_c, $below, $above) = split /\|/, q1(qq{
            SELECT sum(f), sum(b), sum(s), count(*) FILTER (WHERE f < b), count(*) FILTER (WHERE f > s + $clients)
              FROM (SELECT e.key_id, coalesce(u.$c, 0) - coalesce(base.$c, 0) AS f,
                           (SELECT count(*) FROM crash_seen s WHERE s.key_id = e.key_id AND $counter{$c}
                               AND s.at > '$phase_start' AND s.at < u.updated_at) AS b,
                           (SELECT count(*) FROM crash_seen s WHERE s.key_id = e.key_id AND $counter{$c}
                               AND s.at > '$phase_start') AS s
                      FROM crash_expected e LEFT JOIN apikeys_internal.usage u USING (key_id)
                      LEFT JOIN crash_base base USING (key_id)) x});
        note("$what, $c: seen $seen_c, flushed $flushed, seen before each key's last flush $before_flush");
        is($below, '0', "$what, $c: nothing counted before a key's last flush was lost");
        ok($flushed <= $seen_c + $clients && $above eq '0',
            "$what, $c: counted at most what clients saw plus $clients in flight");
        ok($flushed >= $seen_c, "$what, $c: nothing lost") if $nothing_lost;
    }
    is(q1(qq{
        SELECT count(*) FROM crash_expected e JOIN apikeys.keys k USING (key_id)
          LEFT JOIN apikeys_internal.usage u USING (key_id)
         WHERE e.kind = 'quota' AND k.remaining + coalesce(u.uses, 0) <> $quota}),
       '0', "$what, quotas: remaining + flushed uses = $quota for every quota key");
    is(q1(qq{
        SELECT count(*) FROM crash_expected e JOIN apikeys.keys k USING (key_id)
          LEFT JOIN crash_base base USING (key_id)
         WHERE e.kind = 'quota'
           AND NOT (k.remaining BETWEEN coalesce(base.remaining, $quota) - $clients
                                        - (SELECT count(*) FROM crash_seen s
                                            WHERE s.key_id = e.key_id AND s.status = 'valid'
                                              AND s.at > '$phase_start')
                                    AND coalesce(base.remaining, $quota)
                                        - (SELECT count(*) FROM crash_seen s
                                             JOIN apikeys_internal.quota_state q USING (key_id)
                                            WHERE s.key_id = e.key_id AND s.status = 'valid'
                                              AND s.at > '$phase_start' AND s.at < q.updated_at))}),
       '0', "$what, quotas: only what was spent after the last flush given back, nothing more");
    # (its buckets were full at the start of the run, unless kept over an
    # immediate shutdown)
    is(q1(qq{
        SELECT count(*) FROM crash_expected e
         WHERE e.kind = 'rate'
           AND (SELECT count(*) FROM crash_seen s
                 WHERE s.key_id = e.key_id AND s.status = 'valid' AND s.at > '$phase_start') > 5}),
       '0', "$what, rate limits: no 5/day key was granted more than 5");
}

# An active 5/day key the stream emptied (all 5 granted), or undef.
sub emptied_key
{
    return q1(q{
        SELECT e.token FROM crash_expected e
         WHERE e.kind = 'rate' AND e.state = 'valid'
           AND (SELECT count(*) FROM crash_seen s WHERE s.key_id = e.key_id AND s.status = 'valid') = 5
         LIMIT 1}) || undef;
}

# Verifications of a token, each a request, and how many were granted.
sub grants
{
    my ($token, $n) = @_;
    return q1(qq{
        CREATE FUNCTION pg_temp.grants(tk text, n int) RETURNS int LANGUAGE plpgsql AS \$\$
        DECLARE r record; g int := 0;
        BEGIN
            FOR i IN 1..n LOOP
                FOR r IN SELECT v.valid FROM apikeys.apikey_verify(tk) v LOOP
                    IF r.valid THEN g := g + 1; END IF;
                END LOOP;
            END LOOP;
            RETURN g;
        END \$\$;
        SELECT pg_temp.grants('$token', $n)});
}

# --- an immediate shutdown in the middle of the stream ----------------------
my ($stream, $err) = start_stream();
$node->stop('immediate');
$stream->finish;
$node->start;
# What shared memory held was written at the shutdown, and the worker
# flushes it now; unless the shutdown interrupted a flush between its commit
# and its subtraction (a window of microseconds): then nothing was written,
# so that nothing is counted twice, and the stop was a crash.
my $interrupted = slurp_file($node->logfile) =~ /shared memory not saved: the shutdown interrupted a flush/;
note('the immediate shutdown interrupted a flush: shared memory was not saved') if $interrupted;
ok($node->poll_query_until('postgres', 'SELECT sum(unflushed) = 0 FROM apikeys.usage'),
   'the counts kept over the immediate shutdown are flushed');
check_usage('immediate shutdown', !$interrupted);
my $emptied = emptied_key();
ok(defined $emptied, 'the stream emptied a 5/day bucket');
is(q1(qq{SELECT (apikeys.apikey_verify('$emptied', cost => 0)).status}),
   $interrupted ? 'valid' : 'rate_limited',
   'after an immediate shutdown, an emptied bucket is still empty');

# --- a crash in the middle of the stream -------------------------------------
($stream, $err) = start_stream();
my $crash_at = q1('SELECT clock_timestamp()');
# one of the stream's backends (every other client backend is the stream's)
my $victim = q1(q{
    SELECT pid FROM pg_stat_activity
     WHERE backend_type = 'client backend' AND pid <> pg_backend_pid() LIMIT 1});
kill 'KILL', $victim;
$stream->finish;
like($$err, qr/terminat|server closed the connection/, 'the crash ended the stream');
ok($node->poll_query_until('postgres', 'SELECT true'), 'the server restarted after the crash');
like(slurp_file($node->logfile), qr/all server processes terminated; reinitializing/,
     '... reinitializing shared memory');

my ($seen_uses, $flushed_uses, $lost_ms) = split /\|/, q1(qq{
    SELECT (SELECT count(*) FROM crash_seen WHERE status = 'valid'),
           (SELECT sum(uses) FROM apikeys_internal.usage),
           round(extract(epoch FROM '$crash_at'::timestamptz - (SELECT max(updated_at) FROM apikeys_internal.usage)) * 1000)});
note("after the crash: $flushed_uses of $seen_uses valid uses seen are counted; "
     . "the last flush began $lost_ms ms before the crash (flush interval 300 ms)");
check_usage('crash', 0);
ok($lost_ms < 300 + 5000, 'the worker was flushing up to the crash, about once an interval');
ok(q1(q{SELECT count(*) FROM crash_seen WHERE status = 'quota_exceeded'}) > 0,
   'the stream exhausted quotas');
# buckets start full after a crash (README)
$emptied = emptied_key() // 'none';
is(grants($emptied, 8), '5', 'after the crash, an emptied 5/day bucket starts full: 5 of 8 granted');

# --- keys ----------------------------------------------------------------------
my $q_expected = q{
    SELECT count(*) FILTER (WHERE v.status = e.state
                               OR (e.state = 'valid' AND v.status IN ('rate_limited', 'quota_exceeded')))
           || '/' || count(*)
      FROM crash_expected e, apikeys.apikey_verify(e.token, cost => 0) v};
my $after = q1('SELECT count(*) FROM crash_expected');
ok($after >= 24, "work committed before the stops survived ($after expected rows)");
my ($ok, $all) = split m{/}, q1($q_expected);
is($ok, $all, 'every committed key verifies with its committed state after recovery');
is(q1(q{
    SELECT count(*) FROM apikeys_internal.key_catalog c
     WHERE NOT EXISTS (SELECT 1 FROM crash_expected e WHERE e.key_id = c.key_id)}),
   '0', 'no key exists that no committed transaction recorded');
is(q1(q{
    SELECT count(*) FROM crash_expected e JOIN apikeys.keys k USING (key_id)
     WHERE k.status <> CASE e.state WHEN 'valid' THEN 'active' ELSE e.state END
        OR k.rate_limit IS DISTINCT FROM CASE e.kind WHEN 'rate' THEN '{5/day}'::text[] END
        OR (e.kind = 'quota') <> (k.remaining IS NOT NULL)}),
   '0', 'the listing agrees with the committed states and limits');
is(q1(q{
    SELECT count(*) FROM crash_expected e
     WHERE NOT EXISTS (SELECT 1 FROM apikeys.audit_log a WHERE a.key_id = e.key_id AND a.action = 'create')}),
   '0', 'every committed key has its create in the audit log');
is(q1('SELECT apikeys.audit_verify()'), 't', 'the audit chain verifies after recovery');
# the extension works after recovery
is(q1(q{SELECT (apikeys.apikey_verify(token)).status FROM apikeys.apikey_create('after the crash')}),
   'valid', 'keys can be created and verified after recovery');

# --- a clean restart keeps keys, settings and usage ---------------------------
my $q_state = q{
    SELECT string_agg(concat_ws(' ', k.key_id, k.status, k.rate_limit, k.remaining, k.scopes, k.last_used_at,
                                u.uses, u.failures, u.rate_limited, u.quota_exceeded), E'\n' ORDER BY k.key_id)
           || E'\n' || (SELECT string_agg(r.role || ' ' || r.rate_limit::text, ',') FROM apikeys.role_limits r)
      FROM apikeys.keys k JOIN apikeys.usage u USING (key_id)};
my $verified = q1($q_expected);
my $snapshot = q1($q_state);
$node->restart;
is(q1($q_state), $snapshot, 'a clean restart keeps keys, their limits, quotas and usage');
is(q1($q_expected), $verified, '... and every key verifies as before');
is(grants($emptied, 1), '0', '... and rate-limit buckets as they were');

$node->stop;
done_testing();
