# Requests made with a key (apikeys.audit_requests), through shared memory
# and the background worker: a flood of 10,000 tokens with made-up key ids
# leaves one row whose count is 10,000, and 2,000 wrong secrets for one key
# one row of that key; a full queue is counted and its overflow written
# without detail, every request accounted for; a clean restart keeps the
# queue, a crash loses it; requests in another database than
# apikeys.database are counted as not recorded; old rows go after
# apikeys.audit_request_retention; no secret reaches the table or the log;
# without preloading nothing is recorded and request_log_stats() says so.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Compress::Zlib qw(crc32);
use Time::HiRes qw(usleep);

# Tokens with a valid checksum, as a guessing attacker makes them.
my @alphabet = ('0' .. '9', 'A' .. 'Z', 'a' .. 'z');
sub base62
{
	my ($v, $n) = @_;
	my $s = '';
	for (1 .. $n) { $s = $alphabet[ $v % 62 ] . $s; $v = int($v / 62); }
	return $s;
}
sub random62 { return join '', map { $alphabet[ int(rand(62)) ] } 1 .. $_[0]; }
sub forge
{
	my ($prefix, $key_id, $secret) = @_;
	my $head = "${prefix}_${key_id}_${secret}";
	return $head . base62(crc32($head), 6);
}

my $node = PostgreSQL::Test::Cluster->new('requests');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys'
apikeys.usage_flush_interval = '200ms'
restart_after_crash = on
});
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE svc NOLOGIN;
    CREATE TABLE tok (label text PRIMARY KEY, key_id text, token text);
    INSERT INTO tok SELECT 'k', * FROM apikeys.apikey_create('victim', role => 'svc');
});
my ($key_id, $token) = split /\|/, $node->safe_psql('postgres', q{SELECT key_id, token FROM tok});
my $secret = substr($token, length($token) - 38, 32);

sub q1 { return $node->safe_psql('postgres', $_[0]); }
# the same for statements that carry tokens: not in the server log, which
# the end checks for secrets (the test cluster logs every statement)
sub qt { return $node->safe_psql($_[1] // 'postgres', "SET log_statement = 'none';\n$_[0]"); }
sub set_interval
{
	q1(qq{ALTER SYSTEM SET apikeys.usage_flush_interval = '$_[0]'; SELECT pg_reload_conf();});
	usleep(700_000);    # the worker's current wait ends, it reads the setting
}
# wait until the worker has written every queued request
sub flushed
{
	return $node->poll_query_until('postgres',
		q{SELECT pending FROM apikeys.request_log_stats()}, '0');
}
sub array_of { return 'ARRAY[' . join(',', map { "'$_'" } @_) . ']'; }

# the flood: no flush while it runs (but at an hour boundary, which the
# bounds below allow for), so its rows are what one flush writes
set_interval('1h');
my $written0 = q1(q{SELECT written FROM apikeys.request_log_stats()});
my @guesses = map { forge('ak', random62(12), random62(32)) } 1 .. 10_000;
my @wrong = map { forge('ak', $key_id, random62(32)) } 1 .. 2_000;
is(qt('SELECT count(*) FROM unnest(' . array_of(@guesses) . ') t WHERE NOT apikeys.apikey_is_valid(t)'),
	'10000', '10,000 tokens with made-up key ids, all invalid');
is(qt('SELECT count(*) FROM unnest(' . array_of(@wrong) . ') t WHERE NOT apikeys.apikey_is_valid(t)'),
	'2000', '2,000 wrong secrets for one key');
is(q1(qq{SELECT (queued <= 2) || ' ' || (pending + written - $written0) || ' ' || overflowed
           FROM apikeys.request_log_stats()}),
	'true 12000 0', 'shared memory holds two aggregates of 12,000 requests');
set_interval('200ms');
ok(flushed(), 'the worker wrote them');
is(q1(q{SELECT (count(*) <= 2) || ' ' || sum(requests) || ' ' || bool_and(key_id IS NULL)
          FROM apikeys.request_log WHERE NOT key_exists}),
	'true 10000 true', 'made-up key ids: one row (two across an hour boundary), counting 10,000, no single id');
is(q1(qq{SELECT (count(*) <= 2) || ' ' || sum(requests) || ' ' || min(key_name) || ' ' || min(key_role)
           FROM apikeys.request_log WHERE key_id = '$key_id'}),
	'true 2000 victim svc', 'wrong secrets: one row of the key, counting 2,000');
is(q1(q{SELECT count(*) <= 4 FROM apikeys.request_log}), 't', 'at most four rows in all (two, unless an hour ended)');
my $rows0 = q1(q{SELECT count(*) FROM apikeys.request_log WHERE NOT key_exists});
# each flush writes one row per aggregate: the volume grows with time, not
# with the number of requests
my @more = map { forge('ak', random62(12), random62(32)) } 1 .. 500;
qt('SELECT count(*) FROM unnest(' . array_of(@more) . ') t WHERE apikeys.apikey_is_valid(t)');
ok(flushed(), 'a second flood');
is(q1(qq{SELECT (count(*) - $rows0 <= 2) || ' ' || sum(requests) FROM apikeys.request_log WHERE NOT key_exists}),
	'true 10500', 'is one more row (two if a flush came while it ran)');

# no secret: neither the key's nor any of the forged ones
my $rows = q1(q{SELECT string_agg(r::text, E'\n') FROM apikeys_internal.request_log r});
my @secrets = ($secret, map { substr($_, length($_) - 38, 32) } @guesses[0 .. 99], @wrong[0 .. 99]);
is(scalar(grep { index($rows, substr($_, 0, 8)) >= 0 } @secrets), 0, 'no row holds a secret, nor part of one');

# another database: nothing can be written there, so nothing is queued
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', q{CREATE EXTENSION apikeys CASCADE});
my $nr = q1(q{SELECT not_recorded FROM apikeys.request_log_stats()});
qt('SELECT apikeys.apikey_is_valid(t) FROM unnest(' . array_of(@guesses[0 .. 2]) . ') t', 'other');
is(q1(q{SELECT not_recorded FROM apikeys.request_log_stats()}), $nr + 3,
	'another database: three requests counted as not recorded');
is(q1(q{SELECT pending FROM apikeys.request_log_stats()}), '0', 'and none queued');

# a full queue: a queue of 4 aggregates, 200 requests of 200 addresses
$node->append_conf('postgresql.conf', "apikeys.audit_request_queue_size = 4\n");
$node->restart;
q1(q{TRUNCATE apikeys_internal.request_log});
is(q1(qq{SET apikeys.audit_requests = 'all';
         SELECT count(*) FROM generate_series(1, 200) i, tok,
                LATERAL apikeys.apikey_verify(tok.token, client_ip => ('10.9.0.0'::inet + i)) v
          WHERE v.valid}), '200', "audit_requests = 'all', 200 valid requests from 200 addresses");
ok(flushed(), 'written');
my ($overflowed, $written) = split /\|/,
  q1(q{SELECT overflowed, written FROM apikeys.request_log_stats()});
ok($overflowed > 0, "the full queue is counted: $overflowed requests overflowed");
is(q1(q{SELECT sum(requests) FROM apikeys.request_log}), '200', 'every request is in the log');
is(q1(q{SELECT sum(requests) FROM apikeys.request_log WHERE overflow}), $overflowed,
	'the overflow rows count what overflowed');
is(q1(q{SELECT count(*) FROM apikeys.request_log
         WHERE overflow AND (key_id IS NOT NULL OR db_user IS NOT NULL OR client_addr IS NOT NULL
                             OR kind <> 'verify' OR status <> 'valid')}), '0',
	'overflow rows keep kind and status, nothing else');
is(q1(q{SELECT count(*) FROM apikeys.request_log WHERE NOT overflow AND client_addr << '10.9.0.0/16'}),
	q1(q{SELECT count(*) FROM apikeys.request_log WHERE NOT overflow}),
	'the others keep their address');

# a clean restart keeps what is queued; a crash loses it
set_interval('1h');
q1(q{TRUNCATE apikeys_internal.request_log});
qt('SELECT apikeys.apikey_is_valid(t) FROM unnest(' . array_of(@wrong[0 .. 2]) . ') t');
is(q1(q{SELECT pending FROM apikeys.request_log_stats()}), '3', 'three requests queued');
$node->restart;
# (the worker flushes as it starts)
ok($node->poll_query_until('postgres', q{SELECT sum(requests) FROM apikeys.request_log}, '3'),
	'a clean restart kept them: written after it');
q1(q{TRUNCATE apikeys_internal.request_log});
qt('SELECT apikeys.apikey_is_valid(t) FROM unnest(' . array_of(@wrong[3 .. 4]) . ') t');
is(q1(q{SELECT pending FROM apikeys.request_log_stats()}), '2', 'two more queued, then a crash');
my $victim = $node->background_psql('postgres');
kill 'KILL', $victim->query_safe('SELECT pg_backend_pid()');
eval { $victim->quit };
$node->poll_query_until('postgres', 'SELECT true') or die 'no restart after the crash';
is(q1(q{SELECT pending FROM apikeys.request_log_stats()}), '0', 'a crash loses the queue');
set_interval('200ms');
usleep(500_000);
is(q1(q{SELECT count(*) FROM apikeys.request_log}), '0', 'and nothing of it is written');

# retention: the worker drops old rows when it starts, then hourly
q1(q{INSERT INTO apikeys_internal.request_log (first_at, last_at, kind, status, requests)
     VALUES (now() - interval '100 days', now() - interval '100 days', 'verify', 'invalid', 1),
            (now() - interval '1 day', now() - interval '1 day', 'verify', 'invalid', 1);
     SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE backend_type = 'apikeys worker'});
ok($node->poll_query_until('postgres', q{SELECT count(*) FROM apikeys.request_log}, '1'),
	'a 100-day-old row is dropped (apikeys.audit_request_retention = 90 days)');

$node->stop;
my $log = slurp_file($node->logfile);
is(scalar(grep { index($log, $_) >= 0 } @secrets), 0, 'no secret in the server log');
my @problems = grep { /ERROR|WARNING|PANIC/ && !/crash of another server process|terminating .* due to administrator command/ }
  split /\n/, $log;
is(scalar(@problems), 0, 'the worker logged no error') or diag(join("\n", @problems));

# without preloading: verification works, nothing is recorded, and the
# statistics say why instead of showing zeros
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
$node->start;
is(qt('SELECT count(*) FROM unnest(' . array_of(@guesses[0 .. 9]) . ') t WHERE NOT apikeys.apikey_is_valid(t)'),
	'10', 'without preloading: bad tokens are refused');
my ($ret, $out, $err) = $node->psql('postgres', 'SELECT * FROM apikeys.request_log_stats()');
like($err, qr/the request log is unavailable.*\n.*none are recorded.*\n.*HINT:  Add apikeys to shared_preload_libraries/s,
	'request_log_stats(): unavailable, with a hint naming shared_preload_libraries');
is(q1(q{SELECT count(*) FROM apikeys.request_log}), '1', 'and the log has nothing new');
$node->stop;
done_testing();
