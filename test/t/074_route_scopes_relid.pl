# pre_request keeps the OID of the route scopes table for the life of the
# session (looking it up per request was most of the hook's cost), and
# forgets it when the table goes: a session that has served requests sees
# rows added later, and after DROP EXTENSION and CREATE EXTENSION (in
# another session, or in its own) reads the new table, not the old OID.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $node = PostgreSQL::Test::Cluster->new('relid');
$node->init;
$node->start;
my $setup = q{
	CREATE EXTENSION apikeys CASCADE;
	-- what pre_request answers a request without a key to path
	CREATE FUNCTION public.hook(path text) RETURNS text LANGUAGE plpgsql AS $$
	BEGIN
		PERFORM set_config('request.method', 'GET', true),
		        set_config('request.path', path, true),
		        set_config('request.headers', '{}', true);
		PERFORM apikeys.pre_request();
		RETURN 'served';
	EXCEPTION WHEN SQLSTATE 'PGRST' THEN
		RETURN (SQLERRM::json) ->> 'code';
	END $$;
};
$node->safe_psql('postgres', $setup);

my $s = $node->background_psql('postgres');
is($s->query_safe(q{SELECT hook('/x') || ' ' || hook('/y')}), 'served served',
	'no route scopes: both paths served');
$node->safe_psql('postgres',
	q{INSERT INTO apikeys.route_scopes (method, path_pattern, scope) VALUES ('GET', '/x', 'x')});
is($s->query_safe(q{SELECT hook('/x') || ' ' || hook('/y')}), 'apikey_required served',
	'a route scope added by another session applies in this one at once');

$node->safe_psql('postgres', "DROP EXTENSION apikeys CASCADE; DROP FUNCTION public.hook(text); $setup");
$node->safe_psql('postgres',
	q{INSERT INTO apikeys.route_scopes (method, path_pattern, scope) VALUES ('GET', '/y', 'y')});
is($s->query_safe(q{SELECT hook('/x') || ' ' || hook('/y')}), 'served apikey_required',
	'the extension re-created by another session: its new table is read');

$s->query_safe("DROP EXTENSION apikeys CASCADE; DROP FUNCTION public.hook(text); $setup");
$s->query_safe(q{INSERT INTO apikeys.route_scopes (method, path_pattern, scope) VALUES ('GET', '/z', 'z')});
is($s->query_safe(q{SELECT hook('/y') || ' ' || hook('/z')}), 'served apikey_required',
	'the extension re-created by this session: its new table is read');
$s->quit;

$node->stop;
done_testing();
