# Crash: an immediate stop in the middle of a stream of creates, rotations,
# revocations and verifications.  Each lifecycle call writes what it expects
# into a table in the same transaction, so after recovery the expectations
# are exactly the committed work: every committed key verifies with its
# committed state, and no key exists that no committed transaction made.
# A clean restart afterwards keeps everything.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;

my $node = PostgreSQL::Test::Cluster->new('crash');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys'
fsync = on
max_connections = 30
});
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE regress_crash NOLOGIN;
    CREATE TABLE crash_expected (key_id text PRIMARY KEY, token text NOT NULL, state text NOT NULL);
    INSERT INTO crash_expected SELECT key_id, token, 'valid'
      FROM generate_series(1, 20) g, apikeys.apikey_create('seed ' || g, role => 'regress_crash');
});

my $script = $node->basedir . '/stream.sql';
open my $fh, '>', $script or die;
print $fh <<'SQL';
\set r random(1, 10)
\if :r <= 3
INSERT INTO crash_expected SELECT key_id, token, 'valid' FROM apikeys.apikey_create('stream', role => 'regress_crash');
\elif :r <= 5
WITH k AS (SELECT key_id FROM crash_expected WHERE state = 'valid' ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED)
UPDATE crash_expected e SET token = apikeys.apikey_rotate(e.key_id) FROM k WHERE e.key_id = k.key_id;
\elif :r <= 6
WITH k AS (SELECT key_id FROM crash_expected WHERE state = 'valid' ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED),
     r AS (SELECT k.key_id, apikeys.apikey_revoke(k.key_id) FROM k)
UPDATE crash_expected e SET state = 'revoked' FROM r WHERE e.key_id = r.key_id;
\elif :r <= 7
WITH k AS (SELECT key_id FROM crash_expected WHERE state = 'valid' ORDER BY random() LIMIT 1 FOR UPDATE SKIP LOCKED),
     d AS (SELECT k.key_id, apikeys.apikey_disable(k.key_id) FROM k)
UPDATE crash_expected e SET state = 'disabled' FROM d WHERE e.key_id = d.key_id;
\else
SELECT count(*) FROM (SELECT token FROM crash_expected ORDER BY random() LIMIT 20) t,
       apikeys.apikey_verify(t.token) v WHERE v.valid;
\endif
SQL
close $fh;

my ($out, $err) = ('', '');
my $stream = IPC::Run::start(
    [ 'pgbench', '-n', '-c', '4', '-j', '2', '-T', '30', '-f', $script,
      '-h', $node->host, '-p', $node->port, 'postgres' ],
    '>', \$out, '2>', \$err);
# let the stream run, then crash in the middle of it
my $before = 0;
for (1 .. 100)
{
    select(undef, undef, undef, 0.1);
    $before = $node->safe_psql('postgres', 'SELECT count(*) FROM crash_expected');
    last if $before >= 60;
}
ok($before >= 40, "the stream was creating keys ($before expected rows)");
$node->stop('immediate');
$stream->finish;
$node->start;

my $q_expected = q{
    SELECT count(*) FILTER (WHERE v.status = e.state) || '/' || count(*)
      FROM crash_expected e, apikeys.apikey_verify(e.token) v};
my $after = $node->safe_psql('postgres', 'SELECT count(*) FROM crash_expected');
ok($after >= 20, "work committed before the crash survived ($after expected rows)");
my ($ok, $all) = split m{/}, $node->safe_psql('postgres', $q_expected);
is($ok, $all, 'every committed key verifies with its committed state after recovery');
is($node->safe_psql('postgres', q{
    SELECT count(*) FROM apikeys_internal.key_catalog c
     WHERE NOT EXISTS (SELECT 1 FROM crash_expected e WHERE e.key_id = c.key_id)}),
   '0', 'no key exists that no committed transaction recorded');
is($node->safe_psql('postgres', q{
    SELECT count(*) FROM crash_expected e JOIN apikeys.keys k USING (key_id)
     WHERE k.status <> CASE e.state WHEN 'valid' THEN 'active' ELSE e.state END}),
   '0', 'the listing agrees with the committed states');
is($node->safe_psql('postgres', q{
    SELECT count(*) FROM crash_expected e
     WHERE NOT EXISTS (SELECT 1 FROM apikeys.audit_log a WHERE a.key_id = e.key_id AND a.action = 'create')}),
   '0', 'every committed key has its create in the audit log');
# the extension works after recovery
is($node->safe_psql('postgres', q{
    SELECT (apikeys.apikey_verify(token)).status FROM apikeys.apikey_create('after the crash')}),
   'valid', 'keys can be created and verified after recovery');

# a clean restart keeps everything
my $snapshot = $node->safe_psql('postgres', $q_expected);
$node->restart;
is($node->safe_psql('postgres', $q_expected), $snapshot, 'a clean restart changes nothing');

$node->stop;
done_testing();
