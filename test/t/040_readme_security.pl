# The README's security examples, run exactly as written.  Every sql block
# the README marks (<!-- rls-example: -->, <!-- rls-authenticator: -->,
# <!-- rls-issuers: -->, <!-- approval-setup: -->, <!-- postgrest-setup: -->,
# <!-- privileges-departed: -->)
# is extracted from README.md and run; then the checks the examples promise:
# a key with only a read scope cannot write, a key with the write scope can,
# tenants see and write only their own rows, a logged-in key creates no key,
# issuing is taken away from a member of the shared role, and a requester
# cannot approve its own request through the approver role.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my $readme_path = "$ENV{TESTDIR}/README.md";
ok(-f $readme_path, 'README.md is next to the tests') or BAIL_OUT('no README.md');
my $readme = slurp_file($readme_path);

# The first block of the given language after the marker named $name.
sub block_after
{
	my ($name, $lang) = @_;
	my ($after) = $readme =~ /<!-- \Q$name\E:[^>]*-->(.*)/s;
	return undef unless defined $after;
	my ($block) = $after =~ /```\Q$lang\E\n(.*?)```/s;
	return $block;
}

my %sql;
for my $name (qw(privileges-departed rls-example rls-authenticator rls-issuers approval-setup
	postgrest-setup))
{
	$sql{$name} = block_after($name, 'sql');
	ok(defined $sql{$name}, "README marks the $name block") or BAIL_OUT("no $name block");
}

my $node = PostgreSQL::Test::Cluster->new('readme');
$node->init;
$node->start;

# Run sql in db as user; returns (exit code, stdout, stderr).
sub run_as
{
	my ($user, $db, $sql, %opts) = @_;
	my ($out, $err);
	my $rc = $node->psql($db, $sql, stdout => \$out, stderr => \$err,
		on_error_stop => $opts{on_error_stop} // 1,
		extra_params => [ '-U', $user ]);
	return ($rc, $out, $err);
}

# Run sql as the authenticator in a transaction logged in with token.
sub as_key
{
	my ($db, $token, $sql) = @_;
	return run_as('authenticator', $db, qq{BEGIN;
SELECT status FROM apikeys.apikey_login('$token') \\g /dev/null
$sql
COMMIT;});
}

# --- Roles and RLS: the invoices example ------------------------------------
$node->safe_psql('postgres', 'CREATE DATABASE rls');
$node->safe_psql('rls', 'CREATE EXTENSION apikeys CASCADE');
my ($rc, $out, $err) = run_as('postgres', 'rls', $sql{'rls-example'});
is($rc, 0, 'the RLS example runs as written') or diag($err);
($rc, $out, $err) = run_as('postgres', 'rls', $sql{'rls-authenticator'});
is($rc, 0, 'the authenticator setup runs as written') or diag($err);

my %tok;
for my $k ([ 'reader7', '{invoices:read}', 7 ], [ 'writer7', '{invoices:read,invoices:write}', 7 ],
	[ 'writer8', '{invoices:read,invoices:write}', 8 ])
{
	my ($label, $scopes, $tenant) = @$k;
	$tok{$label} = $node->safe_psql('rls', qq{SELECT token FROM apikeys.apikey_create('$label',
		role => 'billing_api', scopes => '$scopes', metadata => '{"tenant_id": $tenant}')});
}

($rc, $out, $err) = as_key('rls', $tok{writer7},
	'INSERT INTO invoices (tenant_id, amount) VALUES (7, 100);');
is($rc, 0, 'a key with invoices:write adds a row for its tenant') or diag($err);
($rc, $out, $err) = as_key('rls', $tok{reader7},
	'INSERT INTO invoices (tenant_id, amount) VALUES (7, 1);');
isnt($rc, 0, 'a key with invoices:read only cannot add a row, not even for its tenant');
like($err, qr/violates row-level security policy/, '... refused by the policy');
($rc, $out, $err) = as_key('rls', $tok{writer8},
	'INSERT INTO invoices (tenant_id, amount) VALUES (7, 5);');
isnt($rc, 0, 'a write key cannot add a row for another tenant');
($rc, $out, $err) = as_key('rls', $tok{writer8},
	'INSERT INTO invoices (tenant_id, amount) VALUES (8, 5);');
is($rc, 0, '... but can for its own') or diag($err);
($rc, $out, $err) = as_key('rls', $tok{reader7}, 'SELECT count(*), min(tenant_id), max(tenant_id) FROM invoices;');
is($out, '1|7|7', 'the read key sees its tenant\'s rows only') or diag($err);
($rc, $out, $err) = as_key('rls', $tok{writer8}, 'UPDATE invoices SET amount = 0;');
like($out, qr/^$/, 'UPDATE has no permissive policy: it touches no row');
is($node->safe_psql('rls', 'SELECT count(*) FROM invoices WHERE amount = 0'), '0', '... none changed');
($rc, $out, $err) = run_as('authenticator', 'rls', 'SET ROLE billing_api; SELECT count(*) FROM invoices;');
is($out, '0', 'the role without a key sees nothing') or diag($err);

# --- Roles and RLS: metadata is not a privilege -----------------------------
$node->safe_psql('rls', q{CREATE ROLE clerk LOGIN IN ROLE billing_api;
CREATE ROLE keyadmin LOGIN IN ROLE apikeys_admin;});
($rc, $out, $err) = run_as('clerk', 'rls',
	q{SELECT count(*) FROM apikeys.apikey_create('any tenant', role => 'billing_api', metadata => '{"tenant_id": 8}');});
is($out, '1', 'before the README\'s REVOKE, any member of the shared role mints any tenant\'s key');
# Roles and privileges: the keys whose creator has left their role
$node->safe_psql('rls', 'REVOKE billing_api FROM clerk');
($rc, $out, $err) = run_as('postgres', 'rls', $sql{'privileges-departed'});
like($out, qr/^\w{12}\|any tenant\|billing_api\|clerk$/m, 'the README query lists the key of a creator who left');
unlike($out, qr/\|writer7\|/, '... and not the keys of admins');
$node->safe_psql('rls', 'GRANT billing_api TO clerk');
($rc, $out, $err) = as_key('rls', $tok{writer7},
	q{SELECT count(*) FROM apikeys.apikey_create('minted by a key', role => 'billing_api');});
like($err, qr/apikey_create is not allowed while an api key is logged in/,
	'a logged-in key mints no key');
($rc, $out, $err) = as_key('rls', $tok{writer7},
	q{SELECT count(*) FROM apikeys.keys;});
is($out, '1', 'a logged-in key lists itself alone');
($rc, $out, $err) = run_as('postgres', 'rls', $sql{'rls-issuers'});
is($rc, 0, 'the README\'s REVOKE runs as written') or diag($err);
for my $call ("apikey_create('any tenant', role => 'billing_api')",
	"apikey_rotate((SELECT key_id FROM apikeys.keys WHERE name = 'writer8'))",
	"apikey_update((SELECT key_id FROM apikeys.keys WHERE name = 'writer8'), metadata => '{\"tenant_id\": 7}')")
{
	($rc, $out, $err) = run_as('clerk', 'rls', "SELECT apikeys.$call;");
	like($err, qr/permission denied for function/, "after it, a member of the shared role is refused: $call");
}
($rc, $out, $err) = run_as('keyadmin', 'rls',
	q{SELECT count(*) FROM apikeys.apikey_create('issued by an admin', role => 'billing_api', metadata => '{"tenant_id": 8}');});
is($out, '1', '... and an admin issues keys') or diag($err);

# --- Approval workflow ------------------------------------------------------
$node->safe_psql('postgres', 'CREATE DATABASE app');
$node->safe_psql('app', 'CREATE EXTENSION apikeys CASCADE');
($rc, $out, $err) = run_as('postgres', 'app', $sql{'approval-setup'});
is($rc, 0, 'the approval setup runs as written') or diag($err);
$node->safe_psql('app', q{CREATE ROLE security_team NOLOGIN;
CREATE ROLE alice LOGIN IN ROLE billing_api, security_team;
CREATE ROLE bob LOGIN IN ROLE security_team;
CREATE ROLE approver_svc NOLOGIN IN ROLE security_team;
GRANT approver_svc TO authenticator;});
($rc, $out, $err) = run_as('alice', 'app', q{SET ROLE billing_api;
SELECT apikeys.apikey_request('invoice export', role => 'billing_api', scopes => '{invoices:*}');});
my $req = $out;
like($req, qr/^\w{12}$/, 'alice requests a key as billing_api') or diag($err);
($rc, $out, $err) = run_as('alice', 'app', qq{SET ROLE security_team;
SELECT apikeys.apikey_approve('$req');});
like($err, qr/cannot approve an api key request made by the same login/,
	'alice cannot approve it through the approver role');
($rc, $out, $err) = run_as('alice', 'app',
	q{SELECT count(*) FROM apikeys.apikey_create('direct', role => 'billing_api');});
like($err, qr/permission denied for function apikey_create/, 'nor create a key herself');
($rc, $out, $err) = run_as('bob', 'app', qq{SELECT apikeys.apikey_approve('$req');});
is($rc, 0, 'bob approves it') or diag($err);
($rc, $out, $err) = run_as('alice', 'app', qq{SET ROLE billing_api;
SELECT left(apikeys.apikey_claim('$req'), 3);});
is($out, 'ak_', 'alice claims the token');

# through the authenticator (apikeys.authenticators as the setup sets it):
# two keys holding apikeys:manage, the approving one an approver's
my $req_tok = $node->safe_psql('app', q{SELECT token FROM apikeys.apikey_create('requester',
	role => 'billing_api', scopes => '{apikeys:manage}')});
my $appr_tok = $node->safe_psql('app', q{SELECT token FROM apikeys.apikey_create('approver',
	role => 'approver_svc', scopes => '{apikeys:manage}')});
($rc, $out, $err) = as_key('app', $req_tok, q{SELECT apikeys.apikey_request('via the api');});
my $api_req = $out;
like($api_req, qr/^\w{12}$/, 'a request through the authenticator, with a key') or diag($err);
($rc, $out, $err) = as_key('app', $appr_tok, qq{SELECT apikeys.apikey_approve('$api_req');});
is($rc, 0, 'another key approves it through the same authenticator') or diag($err);

# --- PostgREST: the setup block ---------------------------------------------
my $conf_text = block_after('postgrest-setup', 'ini');
my %conf = $conf_text =~ /^([\w-]+)\s*=\s*"([^"]*)"/mg;
my ($dbname) = $conf{'db-uri'} =~ m{/([^/?]+)$};
ok($dbname, "the PostgREST configuration names database $dbname");
# (a second cluster: the setup creates its own authenticator)
my $rest = PostgreSQL::Test::Cluster->new('postgrest');
$rest->init;
$rest->start;
$rest->safe_psql('postgres', "CREATE DATABASE $dbname");
$node = $rest;
($rc, $out, $err) = run_as('postgres', $dbname, $sql{'postgrest-setup'});
is($rc, 0, 'the PostgREST setup runs as written') or diag($err);
my ($acme_tok) = (split /\n/, $out)[-1] =~ /^\w{12}\|(\S+)$/;
ok($acme_tok, 'the setup printed a token');
my $reader_tok = $rest->safe_psql($dbname, q{SELECT token FROM apikeys.apikey_create('acme reader',
	role => 'api_client', scopes => '{orders:read}', metadata => '{"tenant": "acme"}')});
my $globex_tok = $rest->safe_psql($dbname, q{SELECT token FROM apikeys.apikey_create('globex',
	role => 'api_client', scopes => '{orders:*}', metadata => '{"tenant": "globex"}')});

# One request as PostgREST sends it: settings, the hook, the query.
my $anon = $conf{'db-anon-role'};
my $hook = join('.', map { qq{"$_"} } split(/\./, $conf{'db-pre-request'}));
sub request
{
	my ($method, $path, $token, $query) = @_;
	return run_as('authenticator', $dbname, qq{BEGIN;
SELECT set_config('search_path', '"$conf{'db-schemas'}"', true),
       set_config('role', '$anon', true),
       set_config('request.method', '$method', true),
       set_config('request.path', '$path', true),
       set_config('request.headers', '{"x-api-key": "$token"}', true) \\g /dev/null
SELECT $hook() \\g /dev/null
$query
COMMIT;});
}

($rc, $out, $err) = request('POST', '/orders', $acme_tok, q{INSERT INTO orders (item) VALUES ('anvil');});
is($rc, 0, 'POST /orders with the orders:* key adds an order') or diag($err);
($rc, $out, $err) = request('POST', '/orders', $reader_tok, q{INSERT INTO orders (item) VALUES ('forged');});
like($err, qr/"status":403/, 'POST /orders with an orders:read key: 403 from the route scope');
# past the route scopes (a route without a row), the policy still refuses
($rc, $out, $err) = request('POST', '/rpc/add_order', $reader_tok, q{INSERT INTO orders (item) VALUES ('forged');});
like($err, qr/violates row-level security policy/, '... and the policy refuses the insert on any route');
($rc, $out, $err) = request('GET', '/orders', $globex_tok, q{SELECT count(*) FROM orders;});
is($out, '0', 'another tenant sees none of acme\'s orders') or diag($err);
($rc, $out, $err) = request('GET', '/orders', $reader_tok, q{SELECT string_agg(item, ',') FROM orders;});
is($out, 'anvil', 'the acme reader sees acme\'s orders') or diag($err);
($rc, $out, $err) = request('POST', '/rpc/apikey_create', $acme_tok,
	q{SELECT token FROM apikeys.apikey_create('for globex', role => 'api_client', metadata => '{"tenant": "globex"}');});
like($err, qr/apikey_create is not allowed while an api key is logged in/,
	'a request\'s key mints no key, for any tenant');
($rc, $out, $err) = request('GET', '/keys', $acme_tok, q{SELECT count(*) FROM apikeys.keys;});
is($out, '1', 'and lists only itself');

done_testing();
