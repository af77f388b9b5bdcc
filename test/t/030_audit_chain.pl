# The audit chain survives pg_dump/pg_restore (plain and custom) into a
# fresh database, before and after a purge; an exported head still checks
# there; NOTIFY apikeys is sent at commit only, for every lifecycle change,
# with no secret.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('chain');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'apikeys'\n");
$node->start;

$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE regress_chain NOLOGIN;
    CREATE TABLE tok (label text PRIMARY KEY, key_id text, token text);
    INSERT INTO tok SELECT 'a', * FROM apikeys.apikey_create('a', role => 'regress_chain');
    INSERT INTO tok SELECT 'b', * FROM apikeys.apikey_create('b', metadata => '{"z": 1, "a": [1, 2]}');
    SELECT apikeys.apikey_update(key_id, name => 'a 2', scopes => '{x,y}') FROM tok WHERE label = 'a';
    SELECT apikeys.apikey_set_role_limit('regress_chain', '5/second');
    SELECT apikeys.apikey_disable(key_id) FROM tok WHERE label = 'b';
});
is($node->safe_psql('postgres', 'SELECT apikeys.audit_verify()'), 't', 'chain intact');
my ($head_seq, $head_hash) = split /\|/, $node->safe_psql('postgres', 'SELECT seq, hash FROM apikeys.audit_head()');
ok($head_seq >= 5 && length($head_hash) == 64, 'head exported');

# NOTIFY: at commit, never for a rolled-back change, never a secret.
my $listener = $node->background_psql('postgres');
$listener->query_safe('LISTEN apikeys');
my $writer = $node->background_psql('postgres');
$writer->query_safe('BEGIN');
my $new_token = $writer->query_safe(q{SELECT apikeys.apikey_rotate(key_id) FROM tok WHERE label = 'a'});
usleep(200_000);
unlike($listener->query_safe('SELECT 1'), qr/Asynchronous notification/, 'nothing heard before commit');
$writer->query_safe('COMMIT');
my $heard = '';
foreach my $i (1 .. 50)
{
	$heard .= $listener->query_safe('SELECT 1');
	last if $heard =~ /"seq"/;
	usleep(100_000);
}
my $key_a = $node->safe_psql('postgres', q{SELECT key_id FROM tok WHERE label = 'a'});
my ($rseq) = $heard =~ /"event": "audit", "seq": (\d+)/;
is($node->safe_psql('postgres', qq{SELECT action || ' ' || key_id FROM apikeys.audit_log WHERE seq = $rseq}),
	"rotate $key_a", 'rotate announced at commit by the seq of its audit row');
my $secret = substr($new_token, -38, 32);
unlike($heard, qr/\Q$secret\E/, 'no secret in the payload');
$writer->query_safe('BEGIN');
$writer->query_safe(q{SELECT apikeys.apikey_revoke(key_id) FROM tok WHERE label = 'b'});
$writer->query_safe('ROLLBACK');
$writer->query_safe(q{SELECT apikeys.apikey_enable(key_id) FROM tok WHERE label = 'b'});
$heard = '';
foreach my $i (1 .. 50)
{
	$heard .= $listener->query_safe('SELECT 1');
	last if $heard =~ /"seq"/;
	usleep(100_000);
}
my @seqs = $heard =~ /"event": "audit", "seq": (\d+)/g;
is(scalar(@seqs), 1, 'one event: a rolled-back revoke is never announced');
is($node->safe_psql('postgres', qq{SELECT action FROM apikeys.audit_log WHERE seq = $seqs[0]}),
	'enable', 'enable announced');
$listener->quit;
$writer->quit;

# Dump and restore, plain and custom, into fresh databases.
sub dump_restore
{
	my ($label) = @_;
	my $plain = $node->basedir . "/$label.sql";
	my $custom = $node->basedir . "/$label.dump";
	$node->command_ok([ 'pg_dump', '-d', $node->connstr('postgres'), '-f', $plain ], "$label: pg_dump plain");
	$node->command_ok([ 'pg_dump', '-Fc', '-d', $node->connstr('postgres'), '-f', $custom ], "$label: pg_dump custom");
	$node->safe_psql('postgres', "CREATE DATABASE ${label}_plain");
	$node->safe_psql('postgres', "CREATE DATABASE ${label}_custom");
	$node->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr("${label}_plain"),
		'-f', $plain ], "$label: plain restore");
	$node->command_ok([ 'pg_restore', '--exit-on-error', '-d', $node->connstr("${label}_custom"), $custom ],
		"$label: pg_restore");
	my $source_rows = $node->safe_psql('postgres', 'SELECT count(*) FROM apikeys_internal.audit_log');
	for my $db ("${label}_plain", "${label}_custom")
	{
		is($node->safe_psql($db, 'SELECT ok, problem FROM apikeys.audit_verify_detail()'), 't|',
			"$db: audit_verify is true");
		is($node->safe_psql($db, "SELECT apikeys.audit_verify($head_seq, '$head_hash')"), 't',
			"$db: the head exported before the dump still checks");
		is($node->safe_psql($db, q{SELECT count(*) FROM apikeys_internal.audit_log WHERE action !~ '^direct_'}),
			$source_rows, "$db: every audit row restored");
		$node->safe_psql($db, q{SELECT apikeys.apikey_revoke(key_id) FROM tok WHERE label = 'a'});
		is($node->safe_psql($db, 'SELECT apikeys.audit_verify()'), 't', "$db: new rows chain after the restored ones");
	}
}
dump_restore('full');

# After a purge the chain starts at its anchor; a restore rebuilds it.
$node->safe_psql('postgres', q{SELECT apikeys.audit_purge('0')});
$node->safe_psql('postgres', q{SELECT apikeys.apikey_update(key_id, name => 'after purge') FROM tok WHERE label = 'b'});
is($node->safe_psql('postgres', q{SELECT string_agg(action, ',' ORDER BY seq) FROM apikeys.audit_log}),
	'purge,update', 'purge left its own row and the rows after it');
is($node->safe_psql('postgres', 'SELECT apikeys.audit_verify()'), 't', 'chain intact after the purge');
dump_restore('purged');
is($node->safe_psql('purged_custom', 'SELECT anchor_seq FROM apikeys_internal.audit_chain'),
	$node->safe_psql('postgres', 'SELECT anchor_seq FROM apikeys_internal.audit_chain'),
	'the restore found the anchor');

$node->stop;
done_testing();
