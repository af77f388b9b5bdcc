# The pepper (src/pepper.c) in a running server: the pepper file rotated in
# place, old and new peppers side by side, sessions that were open all along
# following each reload (and a new pepper used by another session before
# the reload reached them), the old pepper removed (keys still under it fail
# with a clear error, the others verify), revealable keys under a pepper;
# no pepper in the server log (statements, auto_explain) or in a dump; and
# pg_dump/pg_restore, plain and custom, into fresh clusters: keys verify
# where the same pepper file is configured, fail with a clear error where
# none or another one is, and verify again once the pepper is put there.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use Digest::SHA qw(hmac_sha256_hex);

my $node = PostgreSQL::Test::Cluster->new('pepper');
$node->init;
$node->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys, auto_explain'
auto_explain.log_min_duration = 0
auto_explain.log_nested_statements = on
auto_explain.log_verbose = on
log_statement = all
log_min_messages = debug1
});
$node->start;

sub random_hex { return join('', map { sprintf('%02x', int(rand(256))) } 1 .. shift); }
my %pepper = map { $_ => random_hex(32) } qw(p1 p2 p9);
my $kek = random_hex(32);

# Peppers live outside the data directory: a base backup would copy a file
# inside it.  Rewritten in place (same path, same inode), as an editor does.
my $dir = $node->basedir;
my $pfile = "$dir/peppers";
sub write_file
{
	my ($path, $content) = @_;
	open my $fh, '>', $path or die "$path: $!";
	print $fh $content;
	close $fh;
	chmod 0600, $path;
}
write_file("$dir/kek", "$kek\n");

# The public id of a pepper, as the server should derive it: HMAC-SHA256(
# pepper, 'apikeys pepper id'), first 8 bytes; computed here, since a
# statement computing it would put the pepper in the server log.
my %id = map { $_ => substr(hmac_sha256_hex('apikeys pepper id', pack('H*', $pepper{$_})), 0, 16) } keys %pepper;
$node->safe_psql('postgres', 'CREATE EXTENSION apikeys CASCADE');

sub set_config
{
	my ($n, $setting, $value) = @_;
	$n->safe_psql('postgres', "ALTER SYSTEM SET $setting = '$value'; SELECT pg_reload_conf();");
	$n->poll_query_until('postgres', "SELECT current_setting('$setting') = '$value'")
	  or die "reload of $setting did not take effect";
}

$node->safe_psql('postgres', q{
	CREATE TABLE test_tokens (label text PRIMARY KEY, key_id text, token text);
	-- a verification's status, or its error as text (so that open sessions
	-- can show it)
	CREATE FUNCTION vstatus(token text) RETURNS text LANGUAGE plpgsql AS $$
	BEGIN
		RETURN 'ok ' || (apikeys.apikey_verify(token)).status;
	EXCEPTION WHEN OTHERS THEN
		RETURN SQLSTATE || ': ' || SQLERRM;
	END $$;
	CREATE FUNCTION status(l text) RETURNS text LANGUAGE sql AS $$
		SELECT vstatus(token) FROM test_tokens WHERE label = l $$;
	INSERT INTO test_tokens SELECT 'plain', * FROM apikeys.apikey_create('plain');
});
my $scheme = q{SELECT string_agg(t.label || '=' || k.hash_scheme, ' ' ORDER BY t.label)
                 FROM test_tokens t JOIN apikeys.keys k USING (key_id) WHERE t.label = ANY (string_to_array($1, ','))};
sub schemes
{
	my ($session, $labels) = @_;
	my $sql = $scheme;
	$sql =~ s/\$1/'$labels'/;
	my $out = ref($session) =~ /Cluster/ ? $session->safe_psql('postgres', $sql) : $session->query_safe($sql);
	$out =~ s/hmac-sha256:$id{$_}/$_/g for keys %id;
	return $out;
}
sub status_of
{
	my ($session, $label) = @_;
	my $sql = "SELECT status('$label')";
	my $out = ref($session) =~ /Cluster/ ? $session->safe_psql('postgres', $sql) : $session->query_safe($sql);
	$out =~ s/$id{$_}/<$_>/g for keys %id;
	return $out;
}

# 1. P1.  Two sessions open from here on.
write_file($pfile, "$pepper{p1}\n");
set_config($node, 'apikeys.pepper_file', $pfile);
set_config($node, 'apikeys.kek_file', "$dir/kek");
my $s1 = $node->background_psql('postgres');
my $s2 = $node->background_psql('postgres');
$s1->query_safe(q{INSERT INTO test_tokens SELECT 'k1', * FROM apikeys.apikey_create('k1')});
$s2->query_safe(q{INSERT INTO test_tokens SELECT 'k1b', * FROM apikeys.apikey_create('k1b')});
is(schemes($node, 'plain,k1,k1b'), 'k1=p1 k1b=p1 plain=sha256', 'P1: new keys under P1, the old one SHA-256');

# 2. The file gets P2 first, P1 after it, in place; no reload yet.  A new
# session reads the file as it is and creates a key under P2; a session
# that read P1 alone before meets that key and reads the changed file.
write_file($pfile, "# current\n$pepper{p2}\n# until no key needs it\n$pepper{p1}\n");
$node->safe_psql('postgres', q{INSERT INTO test_tokens SELECT 'k2', * FROM apikeys.apikey_create('k2')});
is(schemes($node, 'k2'), 'k2=p2', 'a new session uses the new current pepper');
is(status_of($s1, 'k2'), 'ok valid', 'an open session verifies a key under the new pepper before the reload');

# 3. The reload: the other open session, which had no reason to read the
# file again, now creates keys under P2.
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
my $current = q{SELECT pepper_id FROM apikeys.pepper_status() WHERE state = 'current'};
my $seen = '';
for (1 .. 100)
{
	$seen = $s2->query_safe($current);
	last if $seen eq $id{p2};
	usleep(100_000);
}
is($seen, $id{p2}, 'an open session takes the rotated file in at the reload');
$s2->query_safe(q{INSERT INTO test_tokens SELECT 'k3', * FROM apikeys.apikey_create('k3', revealable => true)});
is(schemes($node, 'k3'), 'k3=p2', '... and creates keys under P2');
is($s2->query_safe(q{SELECT apikeys.apikey_reveal(key_id) = token FROM test_tokens WHERE label = 'k3'}), 't',
	'a revealable key under the pepper reveals (its token checked against the peppered hash)');
is(join(' ', map { "$_:" . status_of($s1, $_) } qw(plain k1 k1b k2 k3)),
	'plain:ok valid k1:ok valid k1b:ok valid k2:ok valid k3:ok valid', 'old and new keys verify side by side');

# Keys move to the current pepper by rotation; a grace period keeps the old
# secret under P1.
$node->safe_psql('postgres', q{
	INSERT INTO test_tokens SELECT 'k1_new', key_id, apikeys.apikey_rotate(key_id, grace => '1 hour')
	  FROM test_tokens WHERE label = 'k1';
	UPDATE test_tokens SET token = apikeys.apikey_rotate(key_id) WHERE label = 'k1b';
});
is(schemes($node, 'k1_new,k1b'), 'k1_new=p2 k1b=p2', 'rotated keys are under P2');
my $usage = q{SELECT string_agg(coalesce(pepper_id, '-') || ':' || state || ':' || keys || ':' || grace_keys, ' ')
                FROM apikeys.pepper_status()};
my $u = $node->safe_psql('postgres', $usage);
$u =~ s/$id{$_}/$_/g for keys %id;
is($u, 'p2:current:4:0 p1:old:0:1 -:none:1:0', 'pepper_status: P1 is needed by one grace period only');
is(status_of($node, 'k1'), 'ok valid', 'the grace secret under P1 verifies');

# 4. P1 removed (in place), reload.  The open sessions follow: the grace
# secret under P1 fails with the error naming P1 and the setting; keys under
# P2 and SHA-256 verify.
write_file($pfile, "$pepper{p2}\n");
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
my $missing = q{SELECT count(*) FROM apikeys.pepper_status() WHERE state = 'missing'};
for my $s ($s1, $s2)
{
	my $n = '';
	for (1 .. 100)
	{
		$n = $s->query_safe($missing);
		last if $n eq '1';
		usleep(100_000);
	}
	is($n, '1', 'an open session takes the removal in at the reload');
	like(status_of($s, 'k1'),
		qr/^55000: api key "\w{12}" needs pepper <p1>, which apikeys\.pepper_file does not hold$/,
		'the old secret under the removed pepper: a clear error, not invalid');
	is(join(' ', map { "$_:" . status_of($s, $_) } qw(plain k1_new k1b k2 k3)),
		'plain:ok valid k1_new:ok valid k1b:ok valid k2:ok valid k3:ok valid', 'the other keys verify');
}
is($s2->query_safe(q{SELECT apikeys.apikey_reveal(key_id) = token FROM test_tokens WHERE label = 'k3'}), 't',
	'reveal under P2 still works');
$s1->quit;
$s2->quit;

# 5. Dump and restore, plain and custom.  The tokens the test holds are
# left out of the dump (they are the test's, not the extension's).
my $plain = "$dir/dump.sql";
my $custom = "$dir/dump.custom";
$node->command_ok([ 'pg_dump', '--exclude-table=test_tokens', '-d', $node->connstr('postgres'), '-f', $plain ],
	'pg_dump plain');
$node->command_ok([ 'pg_dump', '-Fc', '--exclude-table=test_tokens', '-d', $node->connstr('postgres'), '-f', $custom ],
	'pg_dump custom');
my %tok = map { split /\|/ } split /\n/, $node->safe_psql('postgres', 'SELECT label, token FROM test_tokens');
# (the custom dump is compressed: scan it as pg_restore writes it out)
$node->command_ok([ 'pg_restore', '-f', "$dir/custom_as_sql.sql", $custom ], 'pg_restore of the custom dump to a script');
for my $d ([ plain => slurp_file($plain) ], [ custom => slurp_file("$dir/custom_as_sql.sql") ])
{
	my ($kind, $text) = @$d;
	like($text, qr/COPY apikeys_internal\.key_catalog .*\Q$id{p2}\E/s, "the $kind dump holds the keys and their pepper ids (public)");
	for my $p (qw(p1 p2))
	{
		my $hits = () = $text =~ /\Q$pepper{$p}\E/gi;
		is($hits, 0, "no $p in the $kind dump");
	}
}

sub restored_status
{
	my ($n, $db, $label) = @_;
	my $out = $n->safe_psql($db, "SELECT vstatus('$tok{$label}')");
	$out =~ s/$id{$_}/<$_>/g for keys %id;
	return $out;
}
sub restore_into
{
	my ($n) = @_;
	$n->safe_psql('postgres', 'CREATE DATABASE r_plain');
	$n->safe_psql('postgres', 'CREATE DATABASE r_custom');
	$n->command_ok([ 'psql', '-X', '-q', '-v', 'ON_ERROR_STOP=1', '-d', $n->connstr('r_plain'), '-f', $plain ],
		$n->name . ': plain restore');
	$n->command_ok([ 'pg_restore', '--exit-on-error', '-d', $n->connstr('r_custom'), $custom ],
		$n->name . ': pg_restore');
	# (vstatus, the test's own function, comes with the dump)
}

# A fresh cluster with the same pepper file: every key verifies as before.
my $same = PostgreSQL::Test::Cluster->new('same_pepper');
$same->init;
$same->append_conf('postgresql.conf', qq{
shared_preload_libraries = 'apikeys'
apikeys.pepper_file = '$pfile'
});
$same->start;
restore_into($same);
for my $db (qw(r_plain r_custom))
{
	is(join(' ', map { "$_:" . restored_status($same, $db, $_) } qw(plain k1_new k1b k2 k3)),
		'plain:ok valid k1_new:ok valid k1b:ok valid k2:ok valid k3:ok valid',
		"same pepper, $db: every key verifies");
	like(restored_status($same, $db, 'k1'), qr/^55000: .*needs pepper <p1>/,
		"same pepper, $db: the grace secret under the removed P1 still fails clearly");
}
$same->stop;

# A fresh cluster without the pepper: a clear error for peppered keys;
# SHA-256 keys verify.  Then another pepper: the error names both.  Then
# the right one: everything verifies.
my $none = PostgreSQL::Test::Cluster->new('no_pepper');
$none->init;
$none->append_conf('postgresql.conf', "shared_preload_libraries = 'apikeys'\n");
$none->start;
restore_into($none);
for my $db (qw(r_plain r_custom))
{
	is(restored_status($none, $db, 'k2'),
		'55000: api key "' . $node->safe_psql('postgres', q{SELECT key_id FROM test_tokens WHERE label = 'k2'})
		  . '" needs pepper <p2>, which apikeys.pepper_file does not hold',
		"no pepper, $db: a peppered key fails, naming its pepper and the setting");
	is(restored_status($none, $db, 'plain'), 'ok valid', "no pepper, $db: a SHA-256 key verifies");
}
my ($rc, $out, $err) = $none->psql('r_custom', "SELECT apikeys.apikey_verify('$tok{k3}')");
like($err, qr/DETAIL:  apikeys\.pepper_file is not set\.\nHINT:  Put pepper \Q$id{p2}\E back into the file named by apikeys\.pepper_file/,
	'with a detail and a hint');
write_file("$dir/other_peppers", "$pepper{p9}\n");
set_config($none, 'apikeys.pepper_file', "$dir/other_peppers");
($rc, $out, $err) = $none->psql('r_custom', "SELECT apikeys.apikey_verify('$tok{k3}')");
like($err, qr/needs pepper \Q$id{p2}\E.*\nDETAIL:  apikeys\.pepper_file holds \Q$id{p9}\E \(current\)\./,
	'another pepper: the error names the one needed and the one held');
set_config($none, 'apikeys.pepper_file', $pfile);
for my $db (qw(r_plain r_custom))
{
	is(join(' ', map { "$_:" . restored_status($none, $db, $_) } qw(plain k1_new k1b k2 k3)),
		'plain:ok valid k1_new:ok valid k1b:ok valid k2:ok valid k3:ok valid',
		"the same pepper file configured, $db: every key verifies");
}
$none->stop;

# The server logs (every statement, nested plans, reloads at debug1) hold
# no pepper, in any case, and none of the peppered hashes.
my @hashes = split /\n/, $node->safe_psql('postgres', q{
	SELECT encode(h, 'hex') FROM apikeys_internal.key_catalog,
	       LATERAL (VALUES (hash), (prev_hash)) v(h) WHERE h IS NOT NULL});
$node->stop;
my $log = slurp_file($node->logfile) . slurp_file($same->logfile) . slurp_file($none->logfile);
like($log, qr/parameter "apikeys\.pepper_file" changed to/, 'scan self-check: the log has the reloads');
like($log, qr/Query Text:/, 'scan self-check: the log has plans');
ok(scalar @hashes >= 6, 'hashes to look for: ' . scalar @hashes);
for my $p (sort keys %pepper)
{
	my $hits = () = $log =~ /\Q$pepper{$p}\E/gi;
	is($hits, 0, "no $p in the server logs");
}
is(scalar(grep { $log =~ /\Q$_\E/i } @hashes), 0, 'no stored hash in the server logs');
done_testing();
