# Route scopes through the real PostgREST binary, over HTTP.  The README's
# PostgREST setup runs as written (its sql and ini blocks), PostgREST 12
# serves it, and requests go byte for byte as given: the spellings of a path
# that PostgREST routes to the same table or function (percent-encoded
# letters, no leading slash), HEAD, encodings the hook refuses, and the
# plain cases.  No response carries a token.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/lib";
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PostgrestHttp;

# No skipping: without the binary (test/lib.sh ensure_postgrest), this fails.
my $bin = eval { PostgrestHttp::binary() };
ok($bin, 'the PostgREST binary is there') or die $@;
my $setup = PostgrestHttp::readme_setup("$ENV{TESTDIR}/README.md");
my $db = $setup->{dbname};

my $node = PostgreSQL::Test::Cluster->new('pgrst');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'apikeys'\n");
$node->start;
$node->safe_psql('postgres', "CREATE DATABASE $db");
my ($rc, $out, $err) = $node->psql($db, $setup->{sql}, on_error_stop => 1);
is($rc, 0, 'the README setup runs as written') or diag($err);
my ($readme_key, $readme_token) = (split /\n/, $out)[-1] =~ /^(\w{12})\|(\S+)$/;
ok($readme_token, 'the setup printed a key id and a token');

# Besides the README's key (orders:*, tenant acme): a key that may only
# write orders, one that may only read them, one that may call functions;
# rows of two tenants; a function behind a route scope on /rpc/% for every
# method.
my %token = (readme => $readme_token);
my %key_id = (readme => $readme_key);
for my $k ([ writer => '{orders:write}' ], [ reader => '{orders:read}' ], [ caller => '{rpc}' ])
{
	my ($label, $scopes) = @$k;
	($key_id{$label}, $token{$label}) = split /\|/, $node->safe_psql($db, qq{
		SELECT key_id, token FROM apikeys.apikey_create('$label', role => 'api_client',
			scopes => '$scopes', metadata => '{"tenant": "acme"}')});
}
$node->safe_psql($db, q{
	INSERT INTO api.orders (tenant, item) VALUES ('acme', 'anvil'), ('globex', 'gizmo');
	CREATE FUNCTION api.whoami() RETURNS text LANGUAGE sql
		AS $$ SELECT apikeys.apikey_current() $$;
	INSERT INTO apikeys.route_scopes (method, path_pattern, scope) VALUES ('*', '/rpc/%', 'rpc');
});

my $pgrst = PostgrestHttp->start(node => $node, conf => $setup->{conf});
like($pgrst->log_text, qr/Starting PostgREST \Q$PostgrestHttp::VERSION_WANTED\E/,
	"PostgREST $PostgrestHttp::VERSION_WANTED serves the README configuration");

# Send a request with the key of that label (or none); every response is
# kept for the leak check at the end.
my @responses;
sub req
{
	my ($method, $target, $label, @extra) = @_;
	my @headers = defined $label ? ('X-API-Key' => $token{$label}) : ();
	my $body;
	while (my ($name, $value) = splice(@extra, 0, 2))
	{
		if ($name eq 'body') { $body = $value; }
		else { push @headers, $name => $value; }
	}
	my $r = $pgrst->request($method, $target, \@headers, $body);
	push @responses, $r;
	return $r;
}

# The items of a JSON array of orders, sorted.
sub items
{
	my ($r) = @_;
	return join(',', sort $r->{body} =~ /"item"\s*:\s*"([^"]*)"/g);
}

# --- the plain cases ----------------------------------------------------
my $r = req('GET', '/orders', 'readme');
is($r->{status}, 200, 'GET /orders with the README key: 200');
is(items($r), 'anvil', '... with its tenant\'s rows only');

$r = req('GET', '/orders', undef);
is($r->{status}, 401, 'GET /orders without a key: 401 (apikeys.require_key, as the README sets it)');
like($r->{body}, qr/"code":"apikey_required"/, '... apikey_required');
is($r->{headers}{'www-authenticate'}, 'ApiKey', '... with WWW-Authenticate: ApiKey');

$r = req('GET', '/orders', 'writer');
is($r->{status}, 403, 'GET /orders with only orders:write: 403');
like($r->{body}, qr/"code":"apikey_insufficient_scope".*orders:read/, '... naming orders:read');

$r = req('POST', '/orders', 'writer', 'Content-Type' => 'application/json',
	'Prefer' => 'return=minimal', body => '{"item": "hammer"}');
is($r->{status}, 201, 'POST /orders with orders:write: 201');
$r = req('POST', '/orders', 'reader', 'Content-Type' => 'application/json',
	body => '{"item": "saw"}');
is($r->{status}, 403, 'POST /orders with only orders:read: 403');

$r = req('GET', '/orders?select=item,tenant&order=item', 'reader');
is($r->{status}, 200, 'GET /orders with a query string, orders:read: 200');
is(items($r), 'anvil,hammer', '... the writer\'s row added, the other tenant\'s not shown');

$r = req('GET', '/ord%65rs', 'reader');
is($r->{status}, 200, 'GET /ord%65rs with orders:read: 200 (a valid escape is decoded, not refused)');
is(items($r), 'anvil,hammer', '... served from orders');

$r = req('GET', '/rpc/whoami', 'caller');
is($r->{status}, 200, 'GET /rpc/whoami with scope rpc: 200');
is($r->{body}, qq{"$key_id{caller}"}, '... called as that key');

$r = req('GET', '/rpc/whoami', 'writer');
is($r->{status}, 403, 'GET /rpc/whoami without scope rpc: 403');

# --- spellings PostgREST routes to the same place -------------------------
for my $target ('/ord%65rs', '/%6frders', '/%6Frders', 'orders', 'http://localhost/orders')
{
	$r = req('GET', $target, 'writer');
	is($r->{status}, 403, "GET $target with only orders:write: 403");
	unlike($r->{body}, qr/anvil/, '... and no rows');
}

for my $target ('/%72pc/whoami', '/rp%63/whoami', 'rpc/whoami')
{
	$r = req('GET', $target, 'writer');
	is($r->{status}, 403, "GET $target without scope rpc: 403 (the route scope on /rpc/%)");
	unlike($r->{body}, qr/\Q$key_id{writer}\E/, '... the function not called');
}
$r = req('POST', '/%72pc/whoami', 'writer', 'Content-Type' => 'application/json', body => '{}');
is($r->{status}, 403, 'POST /%72pc/whoami without scope rpc: 403');

# --- HEAD is a GET ----------------------------------------------------------
$r = req('HEAD', '/orders', 'writer', 'Prefer' => 'count=exact');
is($r->{status}, 403, 'HEAD /orders with only orders:write: 403 (the GET row covers HEAD)');
is($r->{headers}{'content-range'}, undef, '... and no row count');
$r = req('HEAD', '/ord%65rs', 'writer', 'Prefer' => 'count=exact');
is($r->{status}, 403, 'HEAD /ord%65rs with only orders:write: 403');
$r = req('HEAD', '/orders', 'reader', 'Prefer' => 'count=exact');
is($r->{status}, 200, 'HEAD /orders with orders:read: 200');
is($r->{headers}{'content-range'}, '0-1/2', '... counting its tenant\'s rows');
$r = req('HEAD', '/rpc/whoami', 'writer');
is($r->{status}, 403, 'HEAD /rpc/whoami without scope rpc: 403 (method * covers HEAD)');

# --- refused: encodings that would be guessed ------------------------------
for my $case ([ '/ord%2Fers', 'encoded slash' ], [ '/rpc%2fwhoami', 'encoded slash' ],
	[ '/ord%zzers', 'two hexadecimal digits' ], [ '/orders%4', 'two hexadecimal digits' ],
	[ '/orders%', 'two hexadecimal digits' ], [ '/orders%00', 'NUL' ],
	[ '/orders%00x', 'NUL' ], [ '/orders%FF', 'UTF-8' ], [ '/%C3orders', 'UTF-8' ])
{
	my ($target, $why) = @$case;
	for my $label ('writer', 'readme')
	{
		$r = req('GET', $target, $label);
		is($r->{status}, 400, "GET $target ($label key): 400");
		like($r->{body}, qr/"code":"apikey_bad_path".*\Q$why\E/, "... apikey_bad_path, $why");
		unlike($r->{body}, qr/anvil/, '... and no rows');
	}
}
$r = req('GET', '/ord%C3%A9rs', 'reader');
is($r->{status}, 404, 'GET /ord%C3%A9rs (UTF-8): passes the hook, PostgREST finds no such table');
like($r->{body}, qr/"code":"42P01"/, '... 42P01 from the database');
$r = req('GET', '/orders%00', undef);
is($r->{status}, 400, 'GET /orders%00 without a key: 400');
$r = req('HEAD', '/orders%00', 'writer');
is($r->{status}, 400, 'HEAD /orders%00: 400');

# --- a database that is not UTF-8 ---------------------------------------------
# request.path arrives there converted to the database encoding, escapes
# decode to UTF-8: past ASCII the two cannot be compared, so it is refused.
# (The hook, as PostgREST calls it, without HTTP.)
$node->safe_psql('postgres', q{CREATE DATABASE latin1 ENCODING 'LATIN1' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0});
$node->safe_psql('latin1', 'CREATE EXTENSION apikeys CASCADE');
for my $case ([ '/orders', 'ok' ], [ '/ord%65rs', 'ok' ],
	[ '/ord%C3%A9rs', 'other than ASCII' ], [ "/ord\xc3\xa9rs", 'other than ASCII' ])
{
	my ($path, $want) = @$case;
	my ($hook_rc, $hook_out, $hook_err) = $node->psql('latin1', qq{
		SET client_encoding = 'UTF8';
		BEGIN;
		SELECT set_config('request.method', 'GET', true), set_config('request.path', '$path', true),
		       set_config('request.headers', '{}', true) \\g /dev/null
		SELECT apikeys.pre_request() \\g /dev/null
		SELECT 'ok';
		COMMIT;});
	if ($want eq 'ok') { is($hook_out, 'ok', "LATIN1 database: request.path $path passes"); }
	else { like($hook_err, qr/apikey_bad_path.*\Q$want\E.*"status":400/s, "LATIN1 database: request.path $path is refused with 400"); }
}

# --- no token in any response, nor in PostgREST's log -----------------------
my $leaks = 0;
for my $resp (@responses)
{
	for my $t (values %token)
	{
		my $secret = substr($t, length($t) - 38, 32);
		$leaks++ if index($resp->{raw}, $t) >= 0 || index($resp->{raw}, $secret) >= 0;
	}
}
is($leaks, 0, 'no response, header or body, holds a token or a secret (' . scalar(@responses) . ' responses)');
my $log = $pgrst->log_text;
is(scalar(grep { index($log, substr($_, length($_) - 38, 32)) >= 0 } values %token), 0,
	'PostgREST\'s log holds no secret');

$pgrst->stop;
$node->stop;
done_testing();
