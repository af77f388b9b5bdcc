# Timing of verification at the C layer, by instruction counts: the server
# runs in single-user mode under valgrind's callgrind, which counts the
# instructions executed inside apikey_verify_token (and each function it
# calls) exactly, whatever the machine's load.  Four kinds of request, each
# made 50 times after a warm-up, each in a profile of its own:
#   W0   a wrong secret whose digest differs from the stored one at byte 0
#   W31  a wrong secret whose digest differs only at byte 31 (the stored
#        hash is set to make it so)
#   U    a well-formed token with an unknown key id
#   V    the right secret (the stored hash is then set to its digest)
# Claimed and checked (README, "Security model and deployment settings"):
#  - the comparison (apikey_digest_equal, called once per verification of a
#    known key id) executes the same instructions for equal digests and for
#    digests that differ first at byte 0 or only at byte 31;
#  - a wrong secret does the same work as the right one up to and including
#    the comparison: parsing, hashing, the key lookup and the comparison
#    cost the same instructions;
#  - the whole verification of a wrong secret costs the same wherever its
#    digest differs, so timing says nothing about how close a guess was;
#  - an unknown key id parses and hashes the same, and differs by the lookup
#    (a cache miss and an index scan) and by making no comparison: the key
#    id is public, and whether it exists says nothing about any secret.
# (The work after the comparison differs, and is reported: what it reveals,
# that the secret was right, the answer says anyway.)
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Compress::Zlib qw(crc32);
use IPC::Run;
use Digest::SHA qw(sha256);

my $n = 50;
my ($valgrind) = grep { -x $_ } map { "$_/valgrind" } split /:/, $ENV{PATH};
my ($annotate) = grep { -x $_ } map { "$_/callgrind_annotate" } split /:/, $ENV{PATH};
ok($valgrind && $annotate, 'valgrind and callgrind_annotate are installed')
  or BAIL_OUT('valgrind missing: test/lib.sh ensure_deps installs it');

my $node = PostgreSQL::Test::Cluster->new('timing');
$node->init;
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION apikeys CASCADE');
my ($key_id, $token) = split /\|/, $node->safe_psql('postgres',
    q{SELECT key_id, token FROM apikeys.apikey_create('timing')});

# Tokens with a chosen secret and key id: the checksum is CRC-32 of
# everything before it, as six base62 digits.
my @b62 = ('0' .. '9', 'A' .. 'Z', 'a' .. 'z');
sub base62
{
    my ($v, $len) = @_;
    my $s = '';
    for (1 .. $len) { $s = $b62[$v % 62] . $s; $v = int($v / 62); }
    return $s;
}
sub random62 { return join '', map { $b62[int rand 62] } 1 .. $_[0]; }
sub forge
{
    my ($id, $secret) = @_;
    my $head = "ak_${id}_$secret";
    return $head . base62(crc32($head), 6);
}
my $secret_b = random62(32);
my $digest_b = sha256($secret_b);
my $secret_a;
do { $secret_a = random62(32) } while (substr(sha256($secret_a), 0, 1) eq substr($digest_b, 0, 1));
my $stored = $digest_b;
substr($stored, 31, 1) = chr(ord(substr($stored, 31, 1)) ^ 1);
my %tok = (W0 => forge($key_id, $secret_a), W31 => forge($key_id, $secret_b),
           U => forge(random62(12), random62(32)), V => forge($key_id, $secret_b));
# the stored hash: the digest of secret B with its last byte changed
$node->safe_psql('postgres', sprintf(q{
    UPDATE apikeys_internal.key_catalog SET hash = '\x%s' WHERE key_id = '%s'},
    unpack('H*', $stored), $key_id));
is($node->safe_psql('postgres', "SELECT (apikeys.apikey_verify('$tok{W31}')).status"), 'invalid',
   'a digest one bit off in its last byte is refused');
$node->stop;

# One statement per line: each a request of its own.  pg_sleep marks where
# a profile ends (--dump-before).
my $verify = sub { return "SELECT (apikeys.apikey_verify('$_[0]')).status\n" x $_[1]; };
my $script = join('',
    map({ $verify->($tok{$_}, 3) } qw(W0 W31 U)),
    map({ "SELECT pg_sleep(0)\n" . $verify->($tok{$_}, $n) } qw(W0 W31 U)),
    "SELECT pg_sleep(0)\n",
    sprintf("UPDATE apikeys_internal.key_catalog SET hash = '\\x%s' WHERE key_id = '%s'\n",
            unpack('H*', $digest_b), $key_id),
    $verify->($tok{V}, 3),
    "SELECT pg_sleep(0)\n",
    $verify->($tok{V}, $n));
my $cg = $node->basedir . '/callgrind.out';
my ($out, $err) = ('', '');
IPC::Run::run([ $valgrind, '--tool=callgrind', '--collect-atstart=no',
                '--toggle-collect=apikey_verify_token', '--dump-before=pg_sleep',
                "--callgrind-out-file=$cg",
                'postgres', '--single', '-D', $node->data_dir,
                '-c', 'exit_on_error=on', 'postgres' ],
              '<', \$script, '>', \$out, '2>', \$err);
is($? >> 8, 0, 'the single-user server ran under callgrind') or diag($err);
my $invalid = () = $out =~ /status = "invalid"/g;
my $valid = () = $out =~ /status = "valid"/g;
is("$invalid $valid", (3 * $n + 9) . ' ' . ($n + 3), 'each request got its expected answer');

# Instructions per call and calls, per function, in one profile.
sub profile
{
    my ($file) = @_;
    my ($text, $aerr) = ('', '');
    IPC::Run::run([ $annotate, '--inclusive=yes', '--tree=caller', '--auto=no', '--threshold=100', $file ],
                  '>', \$text, '2>', \$aerr);
    my (%ir, %calls, $pending);
    foreach my $line (split /\n/, $text)
    {
        if ($line =~ /^\s*[\d,]+\s+\(\s*[\d.]+%\)\s+<\s+\S+\s+\(([\d,]+)x\)/)
        {
            (my $c = $1) =~ tr/,//d;
            $pending += $c;
        }
        # (a function's code inlined from a header is listed apart, as
        # header.h:function, without an object: not the function's entry)
        elsif ($line =~ /^\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+\*\s+\S*:(\w+)\s+\[/)
        {
            (my $ir = $1) =~ tr/,//d;
            $ir{$2} = $ir;
            $calls{$2} = $pending // 0;
            $pending = undef;
        }
        else { $pending = undef; }
    }
    return { map { $_ => { calls => $calls{$_}, per_call => $calls{$_} ? $ir{$_} / $calls{$_} : 0 } } keys %ir };
}
my %p = (W0 => profile("$cg.2"), W31 => profile("$cg.3"), U => profile("$cg.4"), V => profile($cg));

my @funcs = qw(apikey_verify_token apikey_parse apikey_digest apikey_cache_get apikey_digest_equal);
foreach my $s (qw(V W0 W31 U))
{
    note(sprintf('%-4s %s', $s, join(', ', map {
        sprintf('%s %s x%d', $_, $p{$s}{$_} ? $p{$s}{$_}{per_call} : '-', $p{$s}{$_} ? $p{$s}{$_}{calls} : 0)
    } @funcs)));
}
sub per_call { my ($s, $f) = @_; return $p{$s}{$f} ? $p{$s}{$f}{per_call} : 'not called'; }
sub calls { my ($s, $f) = @_; return $p{$s}{$f} ? $p{$s}{$f}{calls} : 0; }

is(calls('V', 'apikey_verify_token') . ' ' . calls('W0', 'apikey_verify_token'), "$n $n",
   "$n verifications in each profile");
is(join(' ', map { calls($_, 'apikey_digest_equal') } qw(V W0 W31 U)), "$n $n $n 0",
   'one comparison by apikey_digest_equal per verification of a known key id, none for an unknown one');
ok(per_call('V', 'apikey_digest_equal') > 0
   && per_call('W0', 'apikey_digest_equal') == per_call('V', 'apikey_digest_equal')
   && per_call('W31', 'apikey_digest_equal') == per_call('V', 'apikey_digest_equal'),
   'the comparison costs the same for equal digests and digests differing at byte 0 or only at byte 31 ('
   . join('/', map { per_call($_, 'apikey_digest_equal') } qw(V W0 W31)) . ' instructions)');
foreach my $f (qw(apikey_parse apikey_digest apikey_cache_get))
{
    is(join(' ', map { per_call($_, $f) } qw(W0 W31)), join(' ', (per_call('V', $f)) x 2),
       "a wrong secret costs what the right one does in $f (" . per_call('V', $f) . ' instructions)');
}
foreach my $f (qw(apikey_parse apikey_digest))
{
    is(per_call('U', $f), per_call('V', $f), "an unknown key id costs the same in $f");
}
is(per_call('W31', 'apikey_verify_token'), per_call('W0', 'apikey_verify_token'),
   'a whole verification of a wrong secret costs the same wherever its digest differs ('
   . per_call('W0', 'apikey_verify_token') . ' instructions)');
note(sprintf('after the comparison, the right secret costs %+d instructions (status, role, limits); '
             . 'an unknown key id costs %+d in the lookup (cache miss, index scan)',
             per_call('V', 'apikey_verify_token') - per_call('W0', 'apikey_verify_token'),
             per_call('U', 'apikey_cache_get') - per_call('W0', 'apikey_cache_get')));

done_testing();
