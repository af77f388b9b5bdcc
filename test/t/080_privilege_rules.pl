# The privilege rules as data: test/t/080_privilege_rules.sql holds a table
# of rules x clauses (member of the key's role, creator, admin, superuser,
# group membership, SECURITY DEFINER wrapper, departed creator, key
# session), each row a case with its expected outcome; every row is run
# (rolled back after) and compared, and every rule x clause pair must have
# an allowed and a refused row unless the table says why it has no meaning.
# The cluster has a key-encryption key (apikey_reveal) and a second
# database still at 0.1.0 (renewal there).
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('privrules');
$node->init;
my $kek = "$node->{_basedir}/pgdata/pr_kek";
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys'
apikeys.database = 'postgres'
apikeys.kek_file = 'pr_kek'
apikeys.audit_queue_limit = 64
});
open my $fh, '>', $node->data_dir . '/pr_kek' or die $!;
print $fh join('', map { sprintf('%02x', int(rand(256))) } 1 .. 32), "\n";
close $fh;
chmod 0600, $node->data_dir . '/pr_kek';
$node->start;

my $sql_file = "$ENV{TESTDIR}/t/080_privilege_rules.sql";
$sql_file = 't/080_privilege_rules.sql' unless -f $sql_file;
$node->safe_psql('postgres', 'CREATE EXTENSION apikeys CASCADE');
my ($rc, $out, $err) = $node->psql('postgres', slurp_file($sql_file),
    extra_params => ['-v', 'ON_ERROR_STOP=1']);
is($rc, 0, 'the table and its fixtures load') or diag($err);

# The database at 0.1.0: the same roles (cluster-wide); a key created by
# pr_left while a member of pr_svc, who then leaves it.
$node->safe_psql('postgres', 'CREATE DATABASE old');
$node->safe_psql('old', q{
    CREATE EXTENSION apikeys VERSION '0.1.0' CASCADE;
    CREATE SCHEMA pr;
    GRANT USAGE ON SCHEMA pr TO PUBLIC;
    CREATE TABLE pr.keys (label text PRIMARY KEY, key_id text, token text);
    GRANT SELECT, INSERT ON pr.keys TO PUBLIC;
    GRANT pr_svc TO pr_left;
    SET SESSION AUTHORIZATION pr_left;
    INSERT INTO pr.keys SELECT 'left', * FROM apikeys.apikey_create('left', role => 'pr_svc');
    RESET SESSION AUTHORIZATION;
    REVOKE pr_svc FROM pr_left;
});
# the old database reads its cases from a copy of the table
my $old_cases = $node->safe_psql('postgres', q{
    SELECT string_agg(format('(%s, %L, %L, %L, %L, %L, %L, %L, %L, %L, %L)', n, rule, clause, expect,
                             actor, via, login, wrap, key, cmd, db), ', ')
      FROM pr.cases WHERE db = 'old'});
$node->safe_psql('old', qq{
    CREATE TABLE pr.cases (n int, rule text, clause text, expect text, actor text, via text,
                           login text, wrap text, key text, cmd text, db text);
    INSERT INTO pr.cases VALUES $old_cases;
});
my $cases_source = 'pr.cases';
my $run_case = $node->safe_psql('postgres',
    q{SELECT pg_get_functiondef('pr.run_case(text, text, text, text, text, text)'::regprocedure)});
$node->safe_psql('old', $run_case);

# All the cases of a database in one statement: each runs in its own
# subtransaction, always rolled back (its login, roles and changes with it).
for my $db (qw(main old))
{
	my $rows = $node->safe_psql($db eq 'main' ? 'postgres' : 'old', qq{
        SELECT string_agg(concat_ws(E'\\x1f', n, rule, clause, expect, actor,
                          coalesce(via, ''), coalesce(login, ''), coalesce(wrap, ''),
                          coalesce(key, ''), pr.run_case(actor, via, login, wrap, key, cmd)),
                          E'\\x1e' ORDER BY n)
          FROM $cases_source WHERE db = '$db'});
	for my $row (split /\x1e/, $rows)
	{
		my ($n, $rule, $clause, $expect, $actor, $via, $login, $wrap, $key, $got) =
		  split /\x1f/, $row, 10;
		my $how = join(' ', grep { $_ ne '' } ($actor, $via ? "as $via" : '',
			$login ? "logged in with $login" : '', $wrap ? "through wrap_$wrap" : '',
			$key ? "on $key" : ''));
		is($got, $expect, "$rule / $clause: $how => $expect");
	}
}

# Coverage: a rule x clause pair without an allowed and a refused row is a
# hole in the table (or a pair to explain in pr.not_applicable).
my $holes = $node->safe_psql('postgres', q{
    SELECT string_agg(rule || ' / ' || clause || ' (' || allowed || ' allowed, ' || refused || ' refused)', E'\n'
                      ORDER BY rule, clause)
      FROM pr.coverage WHERE allowed = 0 OR refused = 0});
is($holes, '', 'every rule x clause pair has an allowed and a refused case');
my $pairs = $node->safe_psql('postgres', q{SELECT count(*) FROM pr.coverage});
cmp_ok($pairs, '>=', 100, "the table covers $pairs rule x clause pairs");

done_testing();
