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
# ensure_postgrest installs into.  A missing binary fails the test: there is
# no skipping.
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

our $VERSION_WANTED = '12.0.2';
my $DEFAULT_BIN = '/var/cache/apikeys-test/postgrest-12.0.2-2/postgrest';
my @running;

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

# The PostgREST binary to run; dies when there is none.
sub binary
{
	my $bin = $ENV{POSTGREST_BIN} || $DEFAULT_BIN;
	die "PostgREST binary $bin is missing: test/lib.sh ensure_postgrest installs it"
	  unless -x $bin;
	return $bin;
}

# Start PostgREST for node (a PostgreSQL::Test::Cluster): conf is the
# README's settings, db-uri replaced by one for the node's Unix socket as
# user (default: the user of the README's db-uri) on the database of the
# README's URI (or dbname), or by db_uri (through a pooler, say); extra adds
# or overrides settings (jwt-secret, ...).  Returns once PostgREST reports
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
	$self->{handle} = IPC::Run::start([ binary(), $self->{config} ],
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

# However the test ends (a failed BAIL_OUT, a die), PostgREST goes with it.
END
{
	my $rc = $?;
	$_->stop for @running;
	$? = $rc;
}

1;
