# The README's PostgREST setup behind PostgREST, over HTTP, on PostgREST's
# pooled connections (db-pool = 1: every request is served by one server
# session, whose key cache stays warm from request to request):
# - a revoke, a disable and a rotation take effect at commit: the next
#   request on that same pooled connection gets 401;
# - nothing of a key outlives its request on the connection (the next
#   request, with another key, a JWT or none, sees none of it);
# - JWT coexistence with jwt-secret set: a valid HS256 JWT is served as
#   its role, route scopes and require_key not applied; a forged one and a
#   key as a Bearer credential are refused by PostgREST; a JWT and a key at
#   once are refused with 400 apikey_conflict;
# - a schema-cache reload does not disturb the key context;
# - a GET runs pre_request inside PostgREST's READ ONLY transaction, its
#   use counted and its rate limit spent.
# With APIKEYS_PGRST_POOLER=pgbouncer (test/t/072), the same through a
# pgbouncer in transaction mode between PostgREST and the server, as the
# README recommends (db-prepared-statements = false); there PostgREST
# cannot LISTEN, and its schema cache is reloaded by SIGUSR1.
use strict;
use warnings;
use FindBin;
use lib "$FindBin::RealBin/lib";
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use PostgrestHttp;

my $pooler = $ENV{APIKEYS_PGRST_POOLER} // '';
my $via = $pooler ? ' (through pgbouncer)' : '';
ok(eval { PostgrestHttp::binary() }, 'the PostgREST binary is there') or die $@;
my $setup = PostgrestHttp::readme_setup("$ENV{TESTDIR}/README.md");
my $db = $setup->{dbname};

my $node = PostgreSQL::Test::Cluster->new('pool');
$node->init;
$node->append_conf('postgresql.conf',
	"shared_preload_libraries = 'apikeys'\napikeys.database = '$db'\nlog_statement = none\n");
$node->start;
$node->safe_psql('postgres', "CREATE DATABASE $db");
my ($rc, $out, $err) = $node->psql($db, $setup->{sql}, on_error_stop => 1);
is($rc, 0, 'the README setup runs as written') or diag($err);
my ($readme_key, $readme_token) = (split /\n/, $out)[-1] =~ /^(\w{12})\|(\S+)$/;
ok($readme_token, 'the setup printed a key id and a token');

my %token = (readme => $readme_token);
my %key_id = (readme => $readme_key);
for my $k ([ revoked => '' ], [ disabled => '' ], [ rotated => '' ], [ globex => 'globex' ],
	[ limited => q{, rate_limit => '3/hour'} ])
{
	my ($label, $extra) = @$k;
	my $tenant = $extra eq 'globex' ? 'globex' : 'acme';
	$extra = '' if $extra eq 'globex';
	($key_id{$label}, $token{$label}) = split /\|/, $node->safe_psql($db, qq{
		SELECT key_id, token FROM apikeys.apikey_create('$label', role => 'api_client',
			scopes => '{orders:*}', metadata => '{"tenant": "$tenant"}'$extra)});
}
# who serves a request: the role, the key, the server session, and whether
# the transaction is read-only (a view: GET /me is a read of a relation)
$node->safe_psql($db, q{
	INSERT INTO api.orders (tenant, item) VALUES ('acme', 'anvil'), ('globex', 'gizmo');
	CREATE VIEW api.me WITH (security_invoker) AS
		SELECT current_user::text AS role, apikeys.apikey_current() AS key_id,
		       pg_backend_pid() AS pid, current_setting('transaction_read_only') AS read_only;
	GRANT SELECT ON api.me TO anon, api_client;
});

my $secret = 'a jwt secret of at least thirty-two characters';
my %extra = ('db-pool' => '1', 'jwt-secret' => $secret);
my $bouncer;
if ($pooler)
{
	$bouncer = PostgrestHttp::start_pgbouncer(node => $node, dbname => $db);
	%extra = (%extra, 'db-prepared-statements' => 'false', 'db-channel-enabled' => 'false');
}
my $pgrst = PostgrestHttp->start(node => $node, conf => $setup->{conf}, extra => \%extra,
	$bouncer ? (db_uri => $bouncer->{db_uri}) : ());

my @responses;
sub req
{
	my ($method, $target, @headers) = @_;
	my $r = $pgrst->request($method, $target, \@headers);
	push @responses, $r;
	return $r;
}
# GET /me with these headers: { status, role, key_id, pid, read_only, code }
sub me
{
	my $r = req('GET', '/me', @_);
	my $j = PostgrestHttp::json($r);
	my %m = ref $j eq 'ARRAY' && @$j ? %{ $j->[0] } : ();
	$m{code} = $j->{code} if ref $j eq 'HASH';
	$m{status} = $r->{status};
	return \%m;
}
sub key { ('X-API-Key' => $token{ $_[0] }) }

# --- the connection, warm ----------------------------------------------------------
my $m = me(key('readme'));
is_deeply([ @$m{qw(status role key_id read_only)} ], [ 200, 'api_client', $key_id{readme}, 'on' ],
	"GET /me with the README key$via: 200, its role and key, a READ ONLY transaction");
my $pid = $m->{pid};
me(key($_)) for qw(revoked disabled rotated revoked disabled rotated);
is(me(key('readme'))->{pid}, $pid, 'one server session serves every request (db-pool = 1)');

# --- revoke, disable, rotate: the next request after the commit -----------------
$m = me(key('revoked'));
is($m->{status}, 200, 'the key to revoke: 200 before the revoke');
my $admin = $node->background_psql($db);
$admin->query_safe("BEGIN; SELECT apikeys.apikey_revoke('$key_id{revoked}')");
is(me(key('revoked'))->{status}, 200, '... still 200 while the revoke has not committed');
$admin->query_safe('COMMIT');
$m = me(key('revoked'));
is_deeply([ @$m{qw(status code)} ], [ 401, 'apikey_revoked' ], '... 401 apikey_revoked at once after its commit');

$admin->query_safe("BEGIN; SELECT apikeys.apikey_disable('$key_id{disabled}')");
is(me(key('disabled'))->{status}, 200, 'the key to disable: still 200 before the commit');
$admin->query_safe('COMMIT');
$m = me(key('disabled'));
is_deeply([ @$m{qw(status code)} ], [ 401, 'apikey_disabled' ], '... 401 apikey_disabled after it');
$node->safe_psql($db, "SELECT apikeys.apikey_enable('$key_id{disabled}')");
is(me(key('disabled'))->{status}, 200, '... and 200 again after apikey_enable commits');

$admin->query_safe("BEGIN; SELECT apikeys.apikey_rotate('$key_id{rotated}') AS new_token \\gset");
is(me(key('rotated'))->{status}, 200, 'the key to rotate: still 200 before the commit');
my $new_token = $admin->query_safe("SELECT :'new_token'");
$admin->query_safe('COMMIT');
$m = me(key('rotated'));
is_deeply([ @$m{qw(status code)} ], [ 401, 'apikey_invalid' ], '... the old token 401 after it');
$m = me('X-API-Key' => $new_token);
is_deeply([ @$m{qw(status key_id)} ], [ 200, $key_id{rotated} ], '... the new token 200, the same key');
is($m->{pid}, $pid, '... all on the same server session') unless $pooler;
$token{rotated_new} = $new_token;
$admin->quit;

# --- nothing outlives a request on the connection ----------------------------------
$m = me(key('globex'));
is($m->{key_id}, $key_id{globex}, 'a request with the globex key');
my $r = req('GET', '/orders', 'X-API-Key' => $token{readme});
is(join(',', $r->{body} =~ /"item":"(\w+)"/g), 'anvil', '... then one with the acme key sees acme\'s rows only');
$m = me();
is_deeply([ @$m{qw(status code)} ], [ 401, 'apikey_required' ], '... then one without a key: 401 (require_key)');

# --- JWT coexistence -----------------------------------------------------------------
my $jwt = PostgrestHttp::jwt_hs256($secret, { role => 'api_client' });
$m = me('Authorization' => "Bearer $jwt");
is_deeply([ @$m{qw(status role key_id)} ], [ 200, 'api_client', undef ],
	'a valid HS256 JWT: served as its role, with no key');
$r = req('GET', '/orders', 'Authorization' => "Bearer $jwt");
is($r->{status}, 200, '... GET /orders: the route scopes do not apply to it');
is($r->{body}, '[]', '... and the policies, which need a key, show it nothing');
my $forged = PostgrestHttp::jwt_hs256('not the secret, but as long as the secret is', { role => 'api_client' });
$r = req('GET', '/me', 'Authorization' => "Bearer $forged");
is($r->{status}, 401, 'a forged JWT: 401 from PostgREST');
like($r->{body}, qr/"code":"PGRST301"/, '... PGRST301, PostgREST\'s');
unlike($r->{body}, qr/api_client/, '... and nothing served');
$r = req('GET', '/me', 'Authorization' => "Bearer $jwt", key('readme'));
is($r->{status}, 400, 'a JWT and a key at once: 400');
like($r->{body}, qr/"code":"apikey_conflict"/, '... apikey_conflict');
$r = req('GET', '/me', 'Authorization' => "Bearer $token{readme}");
is($r->{status}, 401, 'an api key as Authorization: Bearer: 401 from PostgREST, which takes it for a JWT');
like($r->{body}, qr/"code":"PGRST30\d"/, '... PostgREST\'s code');
$m = me(key('readme'));
is_deeply([ @$m{qw(status key_id)} ], [ 200, $key_id{readme} ], 'after the JWT requests, a key is served as before');

# --- a schema-cache reload ----------------------------------------------------------
my $offset = length $pgrst->log_text;
if ($pooler) { kill 'USR1', $pgrst->pid; }
else { $node->safe_psql($db, "NOTIFY pgrst, 'reload schema'"); }
ok($pgrst->wait_for_log(qr/Schema cache loaded/, $offset),
	$pooler ? 'SIGUSR1: PostgREST reloads its schema cache' : "NOTIFY pgrst: PostgREST reloads its schema cache");
$m = me(key('readme'));
is_deeply([ @$m{qw(status role key_id)} ], [ 200, 'api_client', $key_id{readme} ],
	'after the reload, the key is served as its role and key');
$m = me(key('revoked'));
is_deeply([ @$m{qw(status code)} ], [ 401, 'apikey_revoked' ], '... a revoked key is still refused');
$m = me();
is($m->{status}, 401, '... a request without a key too');
$m = me('Authorization' => "Bearer $jwt");
is_deeply([ @$m{qw(status key_id)} ], [ 200, undef ], '... a JWT has no key');

# --- READ ONLY: usage counted, rate limit spent ------------------------------------
for my $n (1 .. 3)
{
	$m = me(key('limited'));
	is_deeply([ @$m{qw(status key_id read_only)} ], [ 200, $key_id{limited}, 'on' ],
		"GET with the key limited to 3/hour, request $n: 200, in a READ ONLY transaction");
}
$r = req('GET', '/me', key('limited'));
is($r->{status}, 429, '... request 4: 429');
like($r->{headers}{'retry-after'} // '', qr/^[1-9]\d*$/, '... with Retry-After');
is($node->safe_psql($db, "SELECT uses || ' ' || rate_limited FROM apikeys.usage WHERE key_id = '$key_id{limited}'"),
	'3 1', 'apikeys.usage: 3 uses and 1 rate-limited request counted, from READ ONLY transactions');

if ($bouncer)
{
	like(slurp_file($bouncer->{log}), qr/login attempt: db=\Q$db\E user=authenticator/,
		'PostgREST connected through pgbouncer');
}

# --- no token anywhere ------------------------------------------------------------
is(PostgrestHttp::leaks(\@responses, values %token), 0,
	'no response holds a token or a secret (' . scalar(@responses) . ' responses)');
my $logs = $pgrst->log_text . slurp_file($node->logfile) . ($bouncer ? slurp_file($bouncer->{log}) : '');
is(scalar(grep { index($logs, substr($_, length($_) - 38, 32)) >= 0 } values %token), 0,
	'no log (PostgREST\'s, the server\'s' . ($bouncer ? ', pgbouncer\'s' : '') . ') holds a secret');

$pgrst->stop;
$node->stop;
done_testing();
