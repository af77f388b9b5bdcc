# A JWT is left to PostgREST only when PostgREST really authenticated it,
# through the real PostgREST 12 binary and the README's setup:
# - two Authorization headers (PostgREST reads the first, request.headers
#   holds the last): a Bearer JWT in the last one is no credential, so
#   apikeys.require_key refuses the request and route scopes apply to it;
# - a JWT that leaves the request on the anonymous role (its role claim is
#   apikeys.anon_role, or no role claim) is no credential either;
# - a valid JWT for another role is still served as that role.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/lib";
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use MIME::Base64 qw(encode_base64url);
use PostgrestHttp;

my $setup = PostgrestHttp::readme_setup("$ENV{TESTDIR}/README.md");
my $db = $setup->{dbname};
my $node = PostgreSQL::Test::Cluster->new('pgrst_jwt');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'apikeys'\n");
$node->start;
$node->safe_psql('postgres', "CREATE DATABASE $db");
$node->safe_psql($db, $setup->{sql});
$node->safe_psql($db, q{
	CREATE FUNCTION api.whoami() RETURNS text LANGUAGE sql AS $$ SELECT current_user::text $$;
	GRANT EXECUTE ON FUNCTION api.whoami() TO PUBLIC;
	CREATE FUNCTION api.open() RETURNS text LANGUAGE sql AS $$ SELECT current_user::text $$;
	GRANT EXECUTE ON FUNCTION api.open() TO PUBLIC;
	INSERT INTO apikeys.route_scopes (method, path_pattern, scope) VALUES ('*', '/rpc/whoami', 'rpc');
});
my ($token) = split /\|/, $node->safe_psql($db,
	q{SELECT token FROM apikeys.apikey_create('rpc', role => 'api_client', scopes => '{rpc}')});

my $secret = 'a jwt secret of at least thirty-two characters';
my $jwt = PostgrestHttp::jwt_hs256($secret, { role => 'api_client' });
my $jwt_anon = PostgrestHttp::jwt_hs256($secret, { role => 'anon' });
my $jwt_norole = PostgrestHttp::jwt_hs256($secret, { sub => 'u1' });
my $unsigned_anon = encode_base64url('{"alg":"none"}') . '.' . encode_base64url('{"role":"anon"}') . '.';

# the duplicate-header forms: PostgREST checks no JWT in the last one (those
# with a Bearer first need jwt-secret: without it PostgREST refuses them)
my @dup = (
	[ 'ApiKey then Bearer' => 'Authorization' => 'ApiKey x', 'Authorization' => 'Bearer a.b' ],
	[ 'Basic then Bearer' => 'Authorization' => 'Basic dXNlcjpwYXNz', 'Authorization' => 'Bearer a.b.c' ],
	[ 'ApiKey then a valid JWT' => 'Authorization' => 'ApiKey x', 'Authorization' => "Bearer $jwt" ],
	[ 'ApiKey then unsigned {"role":"anon"}' => 'Authorization' => 'ApiKey x', 'Authorization' => "Bearer $unsigned_anon" ],
	[ 'JWT without role then a valid JWT' => 'Authorization' => "Bearer $jwt_norole", 'Authorization' => "Bearer $jwt" ],
	[ 'Bearer then ApiKey' => 'Authorization' => "Bearer $jwt", 'Authorization' => 'ApiKey x' ],
);

sub code { my $j = PostgrestHttp::json($_[0]); ref $j eq 'HASH' ? $j->{code} // '' : $_[0]->{body} }

for my $extra ({}, { 'jwt-secret' => $secret })
{
	my $with = %$extra ? 'with jwt-secret' : 'without jwt-secret';
	my $p = PostgrestHttp->start(node => $node, conf => $setup->{conf}, extra => $extra);

	# apikeys.require_key on (the README's setup)
	for my $d (@dup)
	{
		my ($name, @h) = @$d;
		next if !%$extra && $h[1] =~ /^Bearer/;
		my $r = $p->request('GET', '/rpc/open', \@h);
		is("$r->{status} " . code($r), '401 apikey_invalid', "$with, require_key: $name refused")
		  if $name eq 'Bearer then ApiKey';
		is("$r->{status} " . code($r), '401 apikey_required', "$with, require_key: $name refused")
		  unless $name eq 'Bearer then ApiKey';
		$r = $p->request('GET', '/rpc/whoami', \@h);
		is($r->{status}, 401, "$with, require_key: $name refused on a scoped route");
		unlike($r->{body}, qr/api_client|anon"/, "$with: $name ran nothing");
	}
	$p->stop;
}

# apikeys.require_key off: route scopes still apply to the duplicate headers
$node->safe_psql($db, 'ALTER ROLE authenticator RESET apikeys.require_key');
for my $extra ({}, { 'jwt-secret' => $secret })
{
	my $with = %$extra ? 'with jwt-secret' : 'without jwt-secret';
	my $p = PostgrestHttp->start(node => $node, conf => $setup->{conf}, extra => $extra);
	for my $d (@dup)
	{
		my ($name, @h) = @$d;
		next if $name eq 'Bearer then ApiKey' || (!%$extra && $h[1] =~ /^Bearer/);
		my $r = $p->request('GET', '/rpc/whoami', \@h);
		is("$r->{status} " . code($r), '401 apikey_required', "$with, no require_key: $name meets the route scope");
		$r = $p->request('GET', '/rpc/open', \@h);
		is("$r->{status} $r->{body}", '200 "anon"', "$with, no require_key: $name on an open route stays anonymous");
	}
	$p->stop;
}
$node->safe_psql($db, 'ALTER ROLE authenticator SET apikeys.require_key = on');

# valid JWTs, with jwt-secret set
my $p = PostgrestHttp->start(node => $node, conf => $setup->{conf}, extra => { 'jwt-secret' => $secret });
my $r = $p->request('GET', '/rpc/whoami', [ 'Authorization' => "Bearer $jwt" ]);
is("$r->{status} $r->{body}", '200 "api_client"', 'a valid JWT naming a role: served as its role, past require_key and route scopes');
$r = $p->request('GET', '/rpc/open', [ 'Authorization' => "Bearer $jwt_anon" ]);
is("$r->{status} " . code($r), '401 apikey_required', 'a valid JWT naming the anonymous role: no credential for require_key');
$r = $p->request('GET', '/rpc/open', [ 'Authorization' => "Bearer $jwt_norole" ]);
is("$r->{status} " . code($r), '401 apikey_required', 'a valid JWT naming no role: no credential for require_key');
$r = $p->request('GET', '/rpc/open', [ 'Authorization' => "Bearer $unsigned_anon" ]);
is($r->{status}, 401, 'an unsigned {"role":"anon"} JWT alone: refused (by PostgREST)');
$r = $p->request('GET', '/rpc/whoami', [ 'X-API-Key' => $token ]);
is("$r->{status} $r->{body}", '200 "api_client"', 'a key is served as before');
$p->stop;

# without apikeys.anon_role no JWT is left to PostgREST
$node->safe_psql($db, 'ALTER ROLE authenticator RESET apikeys.anon_role');
$p = PostgrestHttp->start(node => $node, conf => $setup->{conf}, extra => { 'jwt-secret' => $secret });
$r = $p->request('GET', '/rpc/open', [ 'Authorization' => "Bearer $jwt" ]);
is("$r->{status} " . code($r), '401 apikey_required', 'apikeys.anon_role unset: a valid JWT is no credential');
$p->stop;

$node->stop;
done_testing();
