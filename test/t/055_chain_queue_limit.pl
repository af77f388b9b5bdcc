# The audit chain's lock and apikeys.audit_queue_limit (README, "A
# tamper-evident chain"): a role with no privileges that makes 10,001
# audited changes and then sleeps in its open transaction holds nobody
# back, and its rows are chained at commit; past the limit it gets 54000
# with a hint; rows of a rolled-back savepoint do not count; updates of one
# key count like any change; admins (a superuser, an apikeys_admin member)
# go past it; a transaction that appended cannot be prepared; the chain
# verifies after all of it.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('chainlimit');
$node->init;
# (apikeys.max_keys_per_role would stop the role's 10,001 keys first)
$node->append_conf('postgresql.conf',
	"max_prepared_transactions = 2\napikeys.max_keys_per_role = 1000000\n");
$node->start;

$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE regress_user NOLOGIN;
    CREATE ROLE regress_admin NOLOGIN IN ROLE apikeys_admin;
    CREATE TABLE victim (label text PRIMARY KEY, key_id text);
    INSERT INTO victim SELECT 'v' || g, key_id FROM generate_series(1, 3) g, apikeys.apikey_create('victim ' || g);
    INSERT INTO victim SELECT 'own', key_id FROM apikeys.apikey_create('own', role => 'regress_user');
    GRANT SELECT ON victim TO PUBLIC;
});

sub status
{
	my ($label) = @_;
	return $node->safe_psql('postgres',
		"SELECT k.status FROM apikeys.keys k JOIN victim v USING (key_id) WHERE v.label = '$label'");
}

# The reproduction: 10,001 new keys in one transaction, which then sleeps.
my $bulk = $node->background_psql('postgres');
$bulk->query_safe('SET ROLE regress_user');
$bulk->query_safe('BEGIN');
is($bulk->query_safe(q{SELECT count(*) FROM generate_series(1, 10001) g, apikeys.apikey_create('bulk ' || g)}),
	'10001', 'an unprivileged transaction made 10,001 audited changes');
my $pid = $bulk->query_safe('SELECT pg_backend_pid()');
$bulk->query_until(qr/sleeping/, "\\echo sleeping\nSELECT pg_sleep(3600);\n");
# (a revoke that waited would hit the safety timeout of safe_psql)
$node->safe_psql('postgres', q{SELECT apikeys.apikey_revoke(key_id) FROM victim WHERE label = 'v1'});
is(status('v1'), 'revoked', 'an admin revoked a key while it slept');
is($node->safe_psql('postgres', "SELECT state, wait_event, backend_xid IS NOT NULL FROM pg_stat_activity WHERE pid = $pid"),
	'active|PgSleep|t', '... and it was still sleeping in its transaction');
# (cancelled, its transaction ends, and psql stops on the error)
$node->safe_psql('postgres', "SELECT pg_cancel_backend($pid)");
eval { $bulk->quit; };

# The same, idle in its transaction, then committed: chained at commit.
$bulk = $node->background_psql('postgres');
$bulk->query_safe('SET ROLE regress_user');
$bulk->query_safe('BEGIN');
$bulk->query_safe(q{SELECT count(*) FROM generate_series(1, 10001) g, apikeys.apikey_create('bulk ' || g)});
$pid = $bulk->query_safe('SELECT pg_backend_pid()');
$node->safe_psql('postgres', q{SELECT apikeys.apikey_revoke(key_id) FROM victim WHERE label = 'v2'});
is(status('v2'), 'revoked', 'a revoke does not wait for an idle transaction with 10,001 changes');
is($node->safe_psql('postgres', "SELECT state FROM pg_stat_activity WHERE pid = $pid"),
	'idle in transaction', '... which was still open');
$bulk->query_safe('COMMIT');
$bulk->quit;
is($node->safe_psql('postgres', q{SELECT count(*) FROM apikeys.audit_log WHERE action = 'create' AND key_id IN
	(SELECT key_id FROM apikeys.keys WHERE name LIKE 'bulk %')}), '10001', 'its 10,001 audit rows were written at commit');
is($node->safe_psql('postgres', 'SELECT apikeys.audit_verify()'), 't', 'the chain verifies');

# Past the limit (8MB by default): 54000 with a hint, for a role that is no admin.
my ($ret, $out, $err) = $node->psql('postgres', q{
\set VERBOSITY verbose
SET ROLE regress_user;
SELECT count(*) FROM generate_series(1, 10001) g,
       apikeys.apikey_create('big ' || g, metadata => jsonb_build_object('pad', repeat('x', 1000)));
});
like($err, qr/ERROR:  54000: too many audited changes in one transaction/, 'past the limit: 54000');
like($err, qr/HINT:  .*apikeys\.audit_queue_limit/, '... with a hint naming the setting');
is($node->safe_psql('postgres', q{SELECT count(*) FROM apikeys.keys WHERE name LIKE 'big %'}), '0', '... and nothing kept');

# The setting is for superusers only: once the library is loaded, and as a
# placeholder set before it is.
($ret, $out, $err) = $node->psql('postgres', q{LOAD 'apikeys'; SET ROLE regress_user; SET apikeys.audit_queue_limit = '1GB';});
like($err, qr/permission denied to set parameter "apikeys\.audit_queue_limit"/, 'no user raises the limit');
($ret, $out, $err) = $node->psql('postgres', q{
SET ROLE regress_user;
SET apikeys.audit_queue_limit = '1GB';
SELECT count(*) FROM generate_series(1, 10001) g,
       apikeys.apikey_create('big ' || g, metadata => jsonb_build_object('pad', repeat('x', 1000)));
});
like($err, qr/too many audited changes in one transaction/, '... not even before the library is loaded');

# A lower limit (64kB: about 150 rows of new keys), set by a superuser.
my $low = q{SET apikeys.audit_queue_limit = '64kB';};

# Rows of a savepoint rolled back no longer count; an exception block that
# catches 54000 leaves the rest to commit.
is($node->safe_psql('postgres', $low . q{
SET ROLE regress_user;
BEGIN;
SAVEPOINT a;
SELECT count(*) FROM generate_series(1, 100) g, apikeys.apikey_create('sp ' || g);
ROLLBACK TO a;
SELECT count(*) FROM generate_series(1, 100) g, apikeys.apikey_create('sp ' || g);
DO $$
BEGIN
    PERFORM apikeys.apikey_create('over ' || g) FROM generate_series(1, 100) g;
EXCEPTION WHEN program_limit_exceeded THEN
    RAISE NOTICE 'over the limit';
END
$$;
COMMIT;
RESET ROLE;
SELECT count(*) FILTER (WHERE name LIKE 'sp %'), count(*) FILTER (WHERE name LIKE 'over %') FROM apikeys.keys;
}), "100\n100\n100|0", 'a rolled-back savepoint frees its share; a caught 54000 keeps the rest');

# Updates of one key count like any audited change.
($ret, $out, $err) = $node->psql('postgres', $low . q{
SET ROLE regress_user;
SELECT count(apikeys.apikey_update(key_id, name => 'own ' || g)) FROM victim, generate_series(1, 1000) g
 WHERE label = 'own';
});
like($err, qr/too many audited changes in one transaction/, 'many updates of one key: 54000');

# Admins go past the limit (their rows are then written at once).
is($node->safe_psql('postgres', $low . q{
BEGIN;
SELECT count(*) FROM generate_series(1, 300) g, apikeys.apikey_create('su ' || g);
SET LOCAL ROLE regress_admin;
SELECT count(*) FROM generate_series(1, 300) g, apikeys.apikey_create('adm ' || g, role => 'regress_user');
COMMIT;
}), "300\n300", 'a superuser and an apikeys_admin member go past the limit');

# Two-phase commit: refused, and nothing is left holding the lock.
($ret, $out, $err) = $node->psql('postgres', q{
SET ROLE regress_user;
BEGIN;
SELECT count(*) FROM apikeys.apikey_create('prepared');
PREPARE TRANSACTION 'chain';
});
like($err, qr/cannot prepare a transaction that wrote to the apikeys audit log/, 'PREPARE TRANSACTION refused');
is($node->safe_psql('postgres', 'SELECT count(*) FROM pg_prepared_xacts'), '0', '... nothing prepared');
$node->safe_psql('postgres', q{SELECT apikeys.apikey_revoke(key_id) FROM victim WHERE label = 'v3'});
is(status('v3'), 'revoked', '... and a revoke goes through');

is($node->safe_psql('postgres', q{SELECT apikeys.audit_verify()}), 't', 'the chain verifies after all of it');
is($node->safe_psql('postgres', q{SELECT count(*) = max(seq) - min(seq) + 1 FROM apikeys_internal.audit_log}),
	't', '... with no gap');

$node->stop;
done_testing();
