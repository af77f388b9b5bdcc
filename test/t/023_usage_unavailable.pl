# Where limits cannot be kept, apikeys says so instead of letting requests
# through or showing zeros: without shared_preload_libraries, verify works
# for keys without limits, and a key with a limit or a quota, its creation,
# a role limit and the usage views fail with a hint naming
# shared_preload_libraries.  In a database other than apikeys.database,
# rate limits work, quotas are refused and usage is unavailable.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('unavailable');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'apikeys'\n");
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE svc NOLOGIN;
    CREATE TABLE tok (label text PRIMARY KEY, key_id text, token text);
    INSERT INTO tok SELECT 'l', * FROM apikeys.apikey_create('limited', rate_limit => '3/hour');
    INSERT INTO tok SELECT 'q', * FROM apikeys.apikey_create('quota', remaining => 5);
    INSERT INTO tok SELECT 'p', * FROM apikeys.apikey_create('plain', role => 'svc');
    INSERT INTO tok SELECT 'd', * FROM apikeys.apikey_create('disabled', rate_limit => '3/hour');
    SELECT apikeys.apikey_disable(key_id) FROM tok WHERE label = 'd';
    CREATE DATABASE other;
});

# Runs sql; returns "ok: <output>" or "<sqlstate>: <message> HINT: <hint>".
sub try
{
	my ($db, $sql) = @_;
	my ($ret, $out, $err) = $node->psql($db, $sql,
		extra_params => [ '-v', 'VERBOSITY=verbose', '-v', 'ON_ERROR_STOP=1' ]);
	return "ok: $out" if $ret == 0;
	my ($state, $msg) = $err =~ /ERROR:\s+(\w{5}): (.*)/;
	my ($hint) = $err =~ /HINT:\s+(.*)/;
	return ($state // '?') . ': ' . ($msg // $err) . ($hint ? " HINT: $hint" : '');
}
my $verify = q{SELECT v.status FROM tok, apikeys.apikey_verify(tok.token) v WHERE tok.label = '%s'};

# another database than apikeys.database (postgres)
$node->safe_psql('other', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE TABLE tok (label text PRIMARY KEY, key_id text, token text);
    INSERT INTO tok SELECT 'l', * FROM apikeys.apikey_create('limited', rate_limit => '2/hour');
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
is($node->safe_psql('other', q{SELECT requests('l', 3)}),
   'valid valid rate_limited', 'other database: rate limits are enforced');
like(try('other', q{SELECT * FROM apikeys.apikey_create('q', remaining => 5)}),
	qr/^55000: quotas are kept only in database "postgres" HINT: Set apikeys.database/,
	'other database: a quota is refused, naming apikeys.database');
like(try('other', q{SELECT * FROM apikeys.usage}),
	qr/^55000: api key usage is unavailable in this database HINT: Set apikeys.database/,
	'other database: usage is unavailable, not zero');
is($node->safe_psql('other', q{SELECT last_used_at IS NULL FROM apikeys.keys}), 't',
	'other database: the listing works');

# without preloading
$node->stop;
$node->append_conf('postgresql.conf', "shared_preload_libraries = ''\n");
$node->start;
my $hint = qr/HINT: Add apikeys to shared_preload_libraries in postgresql.conf and restart the server\./;

is($node->safe_psql('postgres', sprintf($verify, 'p')), 'valid', 'a key without limits verifies');
is($node->safe_psql('postgres', sprintf($verify, 'd')), 'disabled',
	'a limited key that fails another check is reported as such');
like(try('postgres', sprintf($verify, 'l')),
	qr/^55000: api key "\w{12}" has rate limits \(its own or its role's\), which need apikeys loaded at server start $hint/,
	'a key with a rate limit: error, never a free pass');
like(try('postgres', sprintf($verify, 'q')),
	qr/^55000: api key "\w{12}" has a quota, which needs apikeys loaded at server start $hint/,
	'a key with a quota: error');
like(try('postgres', q{SELECT * FROM apikeys.apikey_create('x', rate_limit => '1/second')}),
	qr/^55000: rate limits need apikeys loaded at server start $hint/, 'creating a limited key: error');
like(try('postgres', q{SELECT * FROM apikeys.apikey_create('x', remaining => 10)}),
	qr/^55000: quotas need apikeys loaded at server start $hint/, 'creating a key with a quota: error');
like(try('postgres', q{SELECT apikeys.apikey_set_role_limit('svc', '10/second')}),
	qr/^55000: rate limits need apikeys loaded at server start $hint/, 'a role limit: error');
like(try('postgres', q{SELECT * FROM apikeys.usage}),
	qr/^55000: api key usage is unavailable $hint/, 'usage: unavailable, not zero');
like(try('postgres', q{SELECT * FROM apikeys.usage_stats()}),
	qr/^55000: usage statistics need apikeys loaded at server start $hint/, 'usage_stats: unavailable');
is($node->safe_psql('postgres', q{SELECT string_agg(name || ':' || coalesce(rate_limit::text, '-') || ':' || coalesce(remaining::text, '-'), ' ' ORDER BY name) FROM apikeys.keys}),
	'disabled:{3/hour}:- limited:{3/hour}:- plain:-:- quota:-:5', 'the listing works');
# a policy the server cannot enforce can still be taken away
$node->safe_psql('postgres', q{SELECT apikeys.apikey_update(key_id, rate_limit => '') FROM tok WHERE label = 'l'});
is($node->safe_psql('postgres', sprintf($verify, 'l')), 'valid', 'a limit removed: the key verifies');

my @secrets = split /\n/, $node->safe_psql('postgres',
	'SELECT substr(token, length(token) - 37, 32) FROM tok');
$node->stop;
# errors name the key id, never more of the token
my $log = slurp_file($node->logfile);
like($log, qr/has rate limits/, 'the errors are in the server log');
is(scalar(grep { index($log, $_) >= 0 } @secrets), 0, 'and no secret is');
done_testing();
