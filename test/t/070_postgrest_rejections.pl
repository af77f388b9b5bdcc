# The README's PostgREST setup behind the real PostgREST binary, over HTTP:
# every header form a key may come in, every rejection PostgREST can be
# made to send (the README's rejections table: status, code, JSON body,
# WWW-Authenticate, Retry-After), a POST whose tenant comes from the key's
# metadata, a function behind a route scope, apikeys.require_key on and
# off.  No response and no log line holds a token.
#
# PostgREST 12.0.2 by default; test/t/073 runs this file again under
# PostgREST 11.2.2 (APIKEYS_PGRST_VERSION).
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/lib";
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use PostgrestHttp;
use JSON::PP;

my $version = $ENV{APIKEYS_PGRST_VERSION} // $PostgrestHttp::VERSION_WANTED;
my $bin = eval { PostgrestHttp::binary($version) };
ok($bin, "the PostgREST $version binary is there") or die $@;
my $setup = PostgrestHttp::readme_setup("$ENV{TESTDIR}/README.md");
my $db = $setup->{dbname};

my $node = PostgreSQL::Test::Cluster->new('rejections');
$node->init;
# quotas are kept in the database apikeys.database names
# (statements are not logged: the test's own would show tokens)
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'apikeys'\napikeys.database = '$db'\nlog_statement = none\n");
$node->start;
$node->safe_psql('postgres', "CREATE DATABASE $db");
my ($rc, $out, $err) = $node->psql($db, $setup->{sql}, on_error_stop => 1);
is($rc, 0, 'the README setup runs as written') or diag($err);
my ($readme_key, $readme_token) = (split /\n/, $out)[-1] =~ /^(\w{12})\|(\S+)$/;
ok($readme_token, 'the setup printed a key id and a token');

# Keys of tenant acme (role api_client unless said), each for one case.
my %token = (readme => $readme_token);
my %key_id = (readme => $readme_key);
$node->safe_psql($db, 'CREATE ROLE outsider NOLOGIN');   # not granted to authenticator
for my $k (
	[ writer => q{scopes => '{orders:write}'} ],
	[ reader => q{scopes => '{orders:read}'} ],
	[ other_tenant => q{scopes => '{orders:*}', metadata => '{"tenant": "globex"}'} ],
	[ revoked => q{scopes => '{orders:*}'} ],
	[ disabled => q{scopes => '{orders:*}'} ],
	[ expiring => q{scopes => '{orders:*}', expires_at => now() + interval '1 second'} ],
	[ ip_bound => q{scopes => '{orders:*}', allowed_ips => '{10.0.0.0/8}'} ],
	[ origin_bound => q{scopes => '{orders:*}', allowed_origins => '{https://app.example.com}'} ],
	[ limited => q{scopes => '{orders:*}', rate_limit => '2/hour'} ],
	[ quota => q{scopes => '{orders:*}', remaining => 1} ],
	[ refilled => q{scopes => '{orders:*}', refill => '1/day'} ],
	[ outsider => q{scopes => '{orders:*}', role => 'outsider'} ])
{
	my ($label, $args) = @$k;
	$args = "role => 'api_client', $args" unless $args =~ /role =>/;
	$args .= q{, metadata => '{"tenant": "acme"}'} unless $args =~ /metadata/;
	($key_id{$label}, $token{$label}) = split /\|/,
	  $node->safe_psql($db, "SELECT key_id, token FROM apikeys.apikey_create('$label', $args)");
}
$node->safe_psql($db, qq{
	SELECT apikeys.apikey_revoke('$key_id{revoked}');
	SELECT apikeys.apikey_disable('$key_id{disabled}');
	INSERT INTO api.orders (tenant, item) VALUES ('acme', 'anvil'), ('globex', 'gizmo');
	CREATE FUNCTION api.whoami() RETURNS text LANGUAGE sql
		AS \$\$ SELECT apikeys.apikey_current() \$\$;
	-- a function behind a route scope: it adds an order of the key's tenant
	CREATE FUNCTION api.add_order(item text) RETURNS SETOF api.orders LANGUAGE sql
		AS \$\$ INSERT INTO api.orders (item) VALUES (add_order.item) RETURNING * \$\$;
	INSERT INTO apikeys.route_scopes (method, path_pattern, scope)
		VALUES ('POST', '/rpc/add_order', 'orders:write');
});
# the expiring key has expired (the server's clock decides)
$node->poll_query_until($db,
	"SELECT (apikeys.apikey_verify('$token{expiring}')).status = 'expired'")
  or die 'the expiring key did not expire';
$token{typo} = substr($readme_token, 0, 20) . (substr($readme_token, 20, 1) eq 'a' ? 'b' : 'a')
  . substr($readme_token, 21);

my $pgrst = PostgrestHttp->start(node => $node, conf => $setup->{conf}, version => $version);
like($pgrst->log_text, qr/Starting PostgREST \Q$version\E/,
	"PostgREST $version serves the README configuration");

my @responses;
sub req
{
	my ($method, $target, $headers, $body) = @_;
	my $r = $pgrst->request($method, $target, $headers, $body);
	push @responses, $r;
	return $r;
}
sub items { join(',', sort $_[0]->{body} =~ /"item"\s*:\s*"([^"]*)"/g) }

# A rejection as the README's table documents it: the status, a JSON body
# with code, message and details (strings), and exactly the headers given
# (WWW-Authenticate and Retry-After: a value, a pattern, or undef for none).
# PostgREST 11.2.2 does not know custom errors: it answers 400 with code
# PGRST and the hook's JSON as the message, no headers; still refused.
my $custom_errors = $version ne $PostgrestHttp::OLD_VERSION;
sub rejected
{
	my ($r, $what, $status, $code, %want) = @_;
	subtest "$what: $status $code" => sub {
		my $j = PostgrestHttp::json($r) // {};
		like($r->{headers}{'content-type'} // '', qr{^application/json}, 'a JSON body');
		unlike($r->{body}, qr/"item"/, 'no rows');
		if (!$custom_errors)
		{
			is($r->{status}, 400, 'PostgREST 11: status 400');
			is($j->{code}, 'PGRST', 'PostgREST 11: code PGRST');
			my $m = eval { JSON::PP->new->decode($j->{message} // '') } // {};
			is($m->{code}, $code, 'PostgREST 11: the message holds the code');
			like($j->{details} // '', qr/^\{"status":$status,/, 'PostgREST 11: the details hold the status');
			return;
		}
		is($r->{status}, $status, 'status');
		is($j->{code}, $code, 'code');
		ok(defined $j->{message} && !ref $j->{message} && length $j->{message}, 'a message');
		ok(defined $j->{details} && !ref $j->{details} && length $j->{details}, 'details');
		is_deeply([ sort grep { !/^(code|message|details|hint)$/ } keys %$j ], [], 'no other member');
		for my $h ('www-authenticate', 'retry-after')
		{
			my $w = $want{$h};
			if (ref $w) { like($r->{headers}{$h} // '', $w, $h); }
			else { is($r->{headers}{$h}, $w, $h); }
		}
		like($j->{details}, $want{details}, 'details say why') if $want{details};
	};
}

# --- every header form --------------------------------------------------------
for my $form ([ 'X-API-Key', '' ], [ 'x-api-key', '' ], [ 'apikey', '' ], [ 'APIKEY', '' ],
	[ 'Authorization', 'ApiKey ' ], [ 'authorization', 'apikey ' ], [ 'Authorization', 'APIKEY  ' ])
{
	my ($name, $prefix) = @$form;
	my $r = req('GET', '/orders', [ $name => "$prefix$token{reader}" ]);
	is($r->{status}, 200, "GET /orders, key in $name: $prefix...: 200");
	is(items($r), 'anvil', '... its tenant\'s rows only');
}
my $r = req('GET', '/rpc/whoami', [ 'X-API-Key' => $token{reader}, 'apikey' => $token{reader} ]);
is($r->{status}, 200, 'the same key in two headers: 200');
is(PostgrestHttp::json($r), $key_id{reader}, '... logged in as it');
$r = req('GET', '/orders', [ 'X-API-Key' => $token{other_tenant} ]);
is(items($r), 'gizmo', 'a key of tenant globex sees globex\'s rows only');

# --- 401 -----------------------------------------------------------------------------
my $invalid_key = qq{ApiKey error="invalid_key"};
for my $case ([ typo => 'apikey_invalid' ], [ revoked => 'apikey_revoked' ],
	[ disabled => 'apikey_disabled' ], [ expiring => 'apikey_expired' ],
	[ ip_bound => 'apikey_ip_not_allowed' ])
{
	my ($label, $code) = @$case;
	rejected(req('GET', '/orders', [ 'X-API-Key' => $token{$label} ]),
		"GET /orders with the $label key", 401, $code,
		'www-authenticate' => $invalid_key, 'retry-after' => undef);
}
rejected(req('GET', '/orders', [ 'apikey' => $token{origin_bound}, 'Origin' => 'https://evil.test' ]),
	'GET /orders from another origin', 401, 'apikey_origin_not_allowed',
	'www-authenticate' => $invalid_key, 'retry-after' => undef);
$r = req('GET', '/orders', [ 'apikey' => $token{origin_bound}, 'Origin' => 'https://app.example.com' ]);
is($r->{status}, 200, '... and from its own origin: 200');
rejected(req('GET', '/orders', [ 'Authorization' => "ApiKey $token{revoked}" ]),
	'the revoked key as Authorization: ApiKey', 401, 'apikey_revoked',
	'www-authenticate' => $invalid_key, 'retry-after' => undef);
rejected(req('GET', '/orders', [ 'X-API-Key' => 'not a key at all' ]),
	'GET /orders with garbage', 401, 'apikey_invalid',
	'www-authenticate' => $invalid_key, 'retry-after' => undef);

rejected(req('GET', '/rpc/whoami', []), 'GET /rpc/whoami without a key (require_key)',
	401, 'apikey_required', 'www-authenticate' => 'ApiKey', 'retry-after' => undef,
	details => qr/only requests with an api key/);
rejected(req('GET', '/orders', []), 'GET /orders without a key (route scopes)',
	401, 'apikey_required', 'www-authenticate' => 'ApiKey', 'retry-after' => undef);

# --- 403 -----------------------------------------------------------------------------
rejected(req('GET', '/orders', [ 'X-API-Key' => $token{writer} ]),
	'GET /orders with only orders:write', 403, 'apikey_insufficient_scope',
	'www-authenticate' => qq{ApiKey error="insufficient_scope", scope="orders:read"},
	'retry-after' => undef, details => qr/orders:read/);
rejected(req('POST', '/rpc/add_order', [ 'X-API-Key' => $token{reader}, 'Content-Type' => 'application/json' ],
		'{"item": "nail"}'),
	'POST /rpc/add_order (route scope orders:write) with orders:read', 403, 'apikey_insufficient_scope',
	'www-authenticate' => qq{ApiKey error="insufficient_scope", scope="orders:write"},
	'retry-after' => undef);
rejected(req('GET', '/orders', [ 'X-API-Key' => $token{outsider} ]),
	'GET /orders with a key whose role the authenticator is not granted', 403, 'apikey_role_refused',
	'www-authenticate' => undef, 'retry-after' => undef);
like(slurp_file($node->logfile), qr/key \Q$key_id{outsider}\E cannot log in: the session user is not a member/,
	'... the reason is in the server log');

# --- 400 -----------------------------------------------------------------------------
rejected(req('GET', '/orders', [ 'X-API-Key' => $token{reader}, 'apikey' => $token{writer} ]),
	'two different keys', 400, 'apikey_conflict', 'www-authenticate' => undef, 'retry-after' => undef);
rejected(req('GET', '/orders', [ 'Authorization' => "ApiKey $token{reader}", 'X-API-Key' => $token{writer} ]),
	'two different keys, one in Authorization', 400, 'apikey_conflict',
	'www-authenticate' => undef, 'retry-after' => undef);

# --- 429 -----------------------------------------------------------------------------
for my $n (1, 2)
{
	$r = req('GET', '/orders', [ 'X-API-Key' => $token{limited} ]);
	is($r->{status}, 200, "the key limited to 2/hour, request $n: 200");
}
rejected(req('GET', '/orders', [ 'X-API-Key' => $token{limited} ]),
	'the key limited to 2/hour, request 3', 429, 'apikey_rate_limited',
	'www-authenticate' => undef, 'retry-after' => qr/^\d+$/);
if ($custom_errors)
{
	cmp_ok($responses[-1]{headers}{'retry-after'}, '>', 0, '... Retry-After: more than 0 seconds');
	cmp_ok($responses[-1]{headers}{'retry-after'}, '<=', 1800,
		'... and at most the half hour a second request takes to come back');
}

$r = req('GET', '/orders', [ 'X-API-Key' => $token{quota} ]);
is($r->{status}, 200, 'the key with 1 use left: 200');
rejected(req('GET', '/orders', [ 'X-API-Key' => $token{quota} ]),
	'the key with 1 use, used', 429, 'apikey_quota_exceeded',
	'www-authenticate' => undef, 'retry-after' => undef);
$r = req('GET', '/orders', [ 'X-API-Key' => $token{refilled} ]);
is($r->{status}, 200, 'the key with 1 use a day: 200');
rejected(req('GET', '/orders', [ 'X-API-Key' => $token{refilled} ]),
	'the key with 1 use a day, used', 429, 'apikey_quota_exceeded',
	'www-authenticate' => undef, 'retry-after' => qr/^\d+$/);
cmp_ok($responses[-1]{headers}{'retry-after'}, '<=', 86400, '... Retry-After: until the next day at most')
  if $custom_errors;

# --- POST: the tenant comes from the key -----------------------------------------
$r = req('POST', '/orders', [ 'X-API-Key' => $token{writer}, 'Content-Type' => 'application/json',
		'Prefer' => 'return=representation' ], '{"item": "hammer"}');
is($r->{status}, 201, 'POST /orders with orders:write: 201');
my $row = (PostgrestHttp::json($r) // [ {} ])->[0];
is_deeply([ $row->{item}, $row->{tenant}, $row->{key_id} ], [ 'hammer', 'acme', $key_id{writer} ],
	'... the row has the key\'s tenant (from its metadata) and its key id');
$r = req('POST', '/orders', [ 'X-API-Key' => $token{writer}, 'Content-Type' => 'application/json' ],
	'{"item": "forged", "tenant": "globex"}');
# PostgREST answers a permission error with 401 when the request carried no
# JWT (it takes the request for anonymous), 403 otherwise: with a key it is 401.
is($r->{status}, 401, 'POST /orders naming another tenant: 401 (PostgREST: no JWT)');
like($r->{body}, qr/"code":"42501"/, '... permission denied on the column');
is($r->{headers}{'www-authenticate'}, 'Bearer', '... with PostgREST\'s own WWW-Authenticate: Bearer');
$r = req('POST', '/rpc/add_order', [ 'X-API-Key' => $token{writer}, 'Content-Type' => 'application/json' ],
	'{"item": "nail"}');
is($r->{status}, 200, 'POST /rpc/add_order with orders:write: 200');
$row = (PostgrestHttp::json($r) // [ {} ])->[0];
is_deeply([ $row->{item}, $row->{tenant} ], [ 'nail', 'acme' ], '... the function added an order of the key\'s tenant');
is($node->safe_psql($db, q{SELECT string_agg(item || ':' || tenant, ',' ORDER BY item) FROM api.orders}),
	'anvil:acme,gizmo:globex,hammer:acme,nail:acme', 'the table holds what the API reported, nothing forged');

# --- apikeys.require_key off: anonymous requests are served, except where routes have scopes
$node->safe_psql($db, 'ALTER ROLE authenticator RESET apikeys.require_key');
my $log = $pgrst->log_text;
$pgrst->stop;
$pgrst = PostgrestHttp->start(node => $node, conf => $setup->{conf}, version => $version);
$r = req('GET', '/rpc/whoami', []);
is($r->{status}, 200, 'require_key off: GET /rpc/whoami without a key: 200, as anon');
is($r->{body}, 'null', '... with no key');
rejected(req('GET', '/orders', []), 'require_key off: GET /orders without a key (route scopes)',
	401, 'apikey_required', 'www-authenticate' => 'ApiKey', 'retry-after' => undef,
	details => qr/requires an api key with scope orders:read/);
$r = req('GET', '/orders', [ 'X-API-Key' => $token{reader} ]);
is($r->{status}, 200, '... and with a key: 200');

# --- no token anywhere ------------------------------------------------------------
is(PostgrestHttp::leaks(\@responses, values %token), 0,
	'no response holds a token or a secret (' . scalar(@responses) . ' responses)');
$log .= $pgrst->log_text;
is(scalar(grep { index($log, substr($_, length($_) - 38, 32)) >= 0 } values %token), 0,
	'PostgREST\'s log holds no secret');
is(scalar(grep { index(slurp_file($node->logfile), substr($_, length($_) - 38, 32)) >= 0 } values %token), 0,
	'the server log holds no secret');

$pgrst->stop;
$node->stop;
done_testing();
