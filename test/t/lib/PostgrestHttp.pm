# PostgrestHttp: the real PostgREST binary, for the TAP tests that go over
# HTTP.  Parses the README's PostgREST setup (the sql and ini blocks after
# the <!-- postgrest-setup --> marker), starts PostgREST against a
# PostgreSQL::Test::Cluster on a free loopback port with that configuration
# (only db-uri adapted to the node's socket, plus server-port and an admin
# port for readiness), sends requests byte for byte as given (a raw socket:
# no client normalises the path on the way), and stops PostgREST when the
# test ends, however it ends.
#
#   my $setup = PostgrestHttp::readme_setup("$ENV{TESTDIR}/README.md");
#   my $pgrst = PostgrestHttp->start(node => $node, conf => $setup->{conf});
#   my $r = $pgrst->request('GET', '/orders', ['X-API-Key' => $token]);
#   # $r->{status}, $r->{headers} (lower-case name => value), $r->{raw}, $r->{body}
#
# The binary: $ENV{POSTGREST_BIN}, else the cache test/lib.sh's
# ensure_postgrest installs into; start(version => '11.2.2') runs the older
# release ($ENV{POSTGREST_OLD_BIN}, else its place in the cache).  A missing
# binary fails the test: there is no skipping.
#
# Also: jwt_hs256 (a signed JWT, for jwt-secret), start_pgbouncer (a
# transaction-mode pgbouncer in front of a node, for db_uri), json (decode
# a body) and leaks (responses holding a token or its secret).
package PostgrestHttp;

use strict;
use warnings;
use IO::Select;
use IO::Socket::INET;
use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use Digest::SHA qw(hmac_sha256);
use MIME::Base64 qw(encode_base64url);
use JSON::PP;

our $VERSION_WANTED = '12.0.2';
our $OLD_VERSION = '11.2.2';
my %BIN = (
	$VERSION_WANTED => [ 'POSTGREST_BIN', '/var/cache/apikeys-test/postgrest-12.0.2-2/postgrest' ],
	$OLD_VERSION => [ 'POSTGREST_OLD_BIN', '/var/cache/apikeys-test/postgrest-11.2.2-1/postgrest' ],
);
my @running;
my @bouncers;

# The sql text, the postgrest.conf settings (name => value) and the database
# name of the README's PostgREST setup.
sub readme_setup
{
	my ($readme_path) = @_;
	my $readme = slurp_file($readme_path);
	my ($after) = $readme =~ /<!-- postgrest-setup:[^>]*-->(.*)/s
	  or die "README.md has no postgrest-setup marker";
	my ($sql) = $after =~ /```sql\n(.*?)```/s or die "no sql block after the marker";
	my ($ini) = $after =~ /```ini\n(.*?)```/s or die "no ini block after the marker";
	my %conf = $ini =~ /^([\w-]+)\s*=\s*"([^"]*)"/mg;
	my ($dbname) = ($conf{'db-uri'} // '') =~ m{/([^/?]+)$}
	  or die "no database in the README's db-uri";
	return { sql => $sql, conf => \%conf, dbname => $dbname };
}

# The PostgREST binary of a release (default $VERSION_WANTED) to run; dies
# when there is none.
sub binary
{
	my ($version) = @_;
	my $which = $BIN{ $version // $VERSION_WANTED } or die "no PostgREST $version here";
	my ($env, $default) = @$which;
	my $bin = $ENV{$env} || $default;
	die "PostgREST binary $bin is missing: test/lib.sh ensure_postgrest installs it"
	  unless -x $bin;
	return $bin;
}

# Start PostgREST for node (a PostgreSQL::Test::Cluster): conf is the
# README's settings, db-uri replaced by one for the node's Unix socket as
# user (default: the user of the README's db-uri) on the database of the
# README's URI (or dbname), or by db_uri (through a pooler, say); extra adds
# or overrides settings (jwt-secret, ...); version picks the release
# (binary).  Returns once PostgREST reports
# ready (its admin /ready), or dies.
sub start
{
	my ($class, %args) = @_;
	my $node = $args{node};
	my %conf = %{ $args{conf} };
	my ($uri_user) = $conf{'db-uri'} =~ m{^postgres(?:ql)?://([^:@/]+)};
	my ($uri_db) = $conf{'db-uri'} =~ m{/([^/?]+)$};
	my $user = $args{user} // $uri_user;
	my $dbname = $args{dbname} // $uri_db;
	my $self = bless {
		port => PostgreSQL::Test::Cluster::get_free_port(),
		admin_port => PostgreSQL::Test::Cluster::get_free_port(),
		dir => PostgreSQL::Test::Utils::tempdir_short(),
	}, $class;

	$conf{'db-uri'} = $args{db_uri} // sprintf('postgres://%s@/%s?host=%s&port=%d',
		$user, $dbname, $node->host, $node->port);
	$conf{'server-host'} = '127.0.0.1';
	$conf{'server-port'} = $self->{port};
	$conf{'admin-server-port'} = $self->{admin_port};
	%conf = (%conf, %{ $args{extra} // {} });
	$self->{config} = "$self->{dir}/postgrest.conf";
	append_to_file($self->{config},
		join('', map { qq{$_ = "$conf{$_}"\n} } sort keys %conf));

	$self->{log} = "$self->{dir}/postgrest.log";
	$self->{handle} = IPC::Run::start([ binary($args{version}), $self->{config} ],
		'<', \undef, '>', $self->{log}, '2>&1');
	push @running, $self;

	for (1 .. 300)
	{
		my $r = eval { $self->raw_request("GET /ready HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", $self->{admin_port}) };
		return $self if $r && $r->{status} == 200;
		last unless $self->{handle}->pumpable;
		usleep(100_000);
	}
	my $log = -f $self->{log} ? slurp_file($self->{log}) : '';
	$self->stop;
	die "PostgREST did not become ready; its log:\n$log";
}

sub port { $_[0]->{port} }

# PostgREST's process id (to signal it: SIGUSR1 reloads its schema cache).
sub pid
{
	my ($self) = @_;
	return $self->{handle} ? $self->{handle}{KIDS}[0]{PID} : undef;
}

# Wait (up to 30 s) until PostgREST's log matches a pattern, counting only
# what it wrote after offset (a length of log_text taken before); true when
# it did.
sub wait_for_log
{
	my ($self, $re, $offset) = @_;
	for (1 .. 300)
	{
		return 1 if substr($self->log_text, $offset // 0) =~ $re;
		usleep(100_000);
	}
	return 0;
}

# PostgREST's output so far.
sub log_text
{
	my ($self) = @_;
	return -f $self->{log} ? slurp_file($self->{log}) : '';
}

# One request: method and request target exactly as given (no
# normalisation), headers a list of name => value pairs, body a string.
sub request
{
	my ($self, $method, $target, $headers, $body) = @_;
	my @h = @{ $headers // [] };
	my $req = "$method $target HTTP/1.1\r\nHost: 127.0.0.1:$self->{port}\r\nConnection: close\r\n";
	while (my ($name, $value) = splice(@h, 0, 2))
	{
		$req .= "$name: $value\r\n";
	}
	$req .= 'Content-Length: ' . length($body) . "\r\n" if defined $body;
	$req .= "\r\n" . ($body // '');
	return $self->raw_request($req, $self->{port});
}

# Send bytes to a port on 127.0.0.1 and read the response to the end (the
# connection closes).  Returns { status, headers => { name => value },
# raw => the whole response, body => the decoded body }.
sub raw_request
{
	my ($self, $bytes, $port) = @_;
	my $sock = IO::Socket::INET->new(PeerAddr => '127.0.0.1', PeerPort => $port,
		Proto => 'tcp', Timeout => 10)
	  or die "cannot connect to 127.0.0.1:$port: $!";
	print $sock $bytes;
	# read to the end, but never wait more than 10 s for it
	my $raw = '';
	my $sel = IO::Select->new($sock);
	my $deadline = time + 10;
	while (time < $deadline)
	{
		next unless $sel->can_read(1);
		my $n = sysread($sock, $raw, 65536, length $raw);
		last unless $n;
	}
	close $sock;
	my ($head_text, $body) = split /\r\n\r\n/, $raw, 2;
	$body //= '';
	my ($status) = ($head_text // '') =~ m{^HTTP/\d\.\d (\d{3})}
	  or die "no HTTP response from port $port";
	my %headers;
	for my $line (split /\r\n/, $head_text)
	{
		$headers{ lc $1 } = $2 if $line =~ /^([^:\s]+):\s*(.*)$/;
	}
	if (($headers{'transfer-encoding'} // '') =~ /chunked/i)
	{
		my $decoded = '';
		while ($body =~ s/^([0-9a-fA-F]+)[^\r\n]*\r\n//)
		{
			my $n = hex $1;
			last if $n == 0;
			$decoded .= substr($body, 0, $n, '');
			$body =~ s/^\r\n//;
		}
		$body = $decoded;
	}
	return { status => $status, headers => \%headers, raw => $raw, body => $body };
}

# Stop PostgREST (TERM, then KILL after a few seconds); idempotent.
sub stop
{
	my ($self) = @_;
	my $h = delete $self->{handle} or return;
	eval { $h->kill_kill(grace => 5); 1 } or eval { $h->finish };
	@running = grep { $_ != $self } @running;
}

# A JWT signed with HS256: claims a hash, secret the jwt-secret.
sub jwt_hs256
{
	my ($secret, $claims) = @_;
	my $json = JSON::PP->new->canonical;
	my $signing = encode_base64url($json->encode({ alg => 'HS256', typ => 'JWT' })) . '.'
	  . encode_base64url($json->encode($claims));
	return $signing . '.' . encode_base64url(hmac_sha256($signing, $secret));
}

# A response's body decoded as JSON (undef when it is not JSON).
sub json
{
	my ($r) = @_;
	return eval { JSON::PP->new->decode($r->{body}) };
}

# How many of the responses hold one of the tokens, or the secret part of
# one (the 32 characters before the checksum), anywhere: status line,
# headers or body.
sub leaks
{
	my ($responses, @tokens) = @_;
	my $n = 0;
	for my $r (@$responses)
	{
		for my $t (@tokens)
		{
			my $secret = substr($t, length($t) - 38, 32);
			$n++ if index($r->{raw}, $t) >= 0 || index($r->{raw}, $secret) >= 0;
		}
	}
	return $n;
}

# A pgbouncer in transaction mode in front of node's dbname, pool_size
# (default 1) server connections, every user trusted, on a Unix socket in a
# directory of its own.  Returns { dir, port, log, db_uri (PostgREST's, as
# user, default authenticator) }; it stops when the test ends.
sub start_pgbouncer
{
	my (%args) = @_;
	my $node = $args{node};
	my $dbname = $args{dbname};
	my $user = $args{user} // 'authenticator';
	my ($pgbouncer) = grep { -x $_ } ((map { "$_/pgbouncer" } split /:/, $ENV{PATH}), '/usr/sbin/pgbouncer');
	die 'pgbouncer missing: test/lib.sh ensure_deps installs it' unless $pgbouncer;
	my $dir = PostgreSQL::Test::Utils::tempdir_short();
	my $port = PostgreSQL::Test::Cluster::get_free_port();
	append_to_file("$dir/userlist.txt", qq{"$user" ""\n"postgres" ""\n});
	append_to_file("$dir/pgbouncer.ini", join("\n",
		'[databases]',
		"$dbname = host=" . $node->host . ' port=' . $node->port . " dbname=$dbname",
		'[pgbouncer]',
		'listen_addr = 127.0.0.1',
		"listen_port = $port",
		"unix_socket_dir = $dir",
		'auth_type = trust',
		"auth_file = $dir/userlist.txt",
		'pool_mode = transaction',
		'default_pool_size = ' . ($args{pool_size} // 1),
		'min_pool_size = 0',
		'reserve_pool_size = 0',
		'max_client_conn = 50',
		"logfile = $dir/pgbouncer.log",
		"pidfile = $dir/pgbouncer.pid",
		''));
	my $b = {
		dir => $dir, port => $port, log => "$dir/pgbouncer.log",
		db_uri => "postgres://$user@/$dbname?host=$dir&port=$port",
	};
	$b->{handle} = IPC::Run::start([ $pgbouncer, "$dir/pgbouncer.ini" ],
		'<', \undef, '>', "$dir/pgbouncer.out", '2>&1');
	push @bouncers, $b;
	for (1 .. 100)
	{
		return $b if -S "$dir/.s.PGSQL.$port";
		usleep(100_000);
	}
	die "pgbouncer did not start:\n" . (-f $b->{log} ? slurp_file($b->{log}) : '');
}

# However the test ends (a failed BAIL_OUT, a die), PostgREST and pgbouncer
# go with it.
END
{
	my $rc = $?;
	$_->stop for @running;
	for my $b (@bouncers)
	{
		eval { $b->{handle}->kill_kill(grace => 5); 1 } or eval { $b->{handle}->finish };
	}
	$? = $rc;
}

1;
