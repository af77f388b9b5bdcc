# apikeys-scan, the leak scanner: installed in pg_config --bindir; finds
# tokens minted by the extension (which cross-checks its CRC-32 and base62
# checksum against the server's) inside longer text, in files, directory
# trees and standard input; rejects near misses; finds nothing in megabytes
# of noise drawn from a fixed seed; never prints a secret; exits 0, 1 or 2.
use strict;
use warnings;
use File::Path qw(make_path);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Encode ();

my $pg_config = $ENV{PG_CONFIG} // 'pg_config';
chomp(my $bindir = `$pg_config --bindir`);
my $scan = "$bindir/apikeys-scan";
ok(-x $scan, "apikeys-scan is installed in pg_config --bindir ($bindir)");

my $node = PostgreSQL::Test::Cluster->new('scan');
$node->init;
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE TABLE test_tokens (label text PRIMARY KEY, key_id text, token text);
    INSERT INTO test_tokens SELECT 'p' || i || '_' || g, k.*
      FROM (VALUES (1, 'ak'), (2, 'ak_live'), (3, 'dbm'), (4, 'x_y_z'), (5, 'abcdefghij0123456789'), (6, 'z9'))
           AS p(i, prefix),
           generate_series(1, 4) g,
           LATERAL apikeys.apikey_create('scan ' || i || ' ' || g, prefix => p.prefix) k;
    -- a rotated token too
    INSERT INTO test_tokens SELECT 'r1', key_id, apikeys.apikey_rotate(key_id) FROM test_tokens WHERE label = 'p1_1';
});
my %tok;
for my $row (split /\n/, $node->safe_psql('postgres',
    q{SELECT label || '|' || key_id || '|' || token FROM test_tokens ORDER BY label}))
{
    my ($label, $key_id, $token) = split /\|/, $row;
    $tok{$label} = { key_id => $key_id, token => $token };
}
is(scalar keys %tok, 25, '25 tokens minted by the extension');
sub prefix_of { my $t = shift; return substr($t, 0, length($t) - 52); }
my @labels = sort keys %tok;

my $dir = $node->basedir . '/corpus';
make_path("$dir/src/deep/er", "$dir/.git/objects", "$dir/noise");
sub write_file
{
    my ($path, $content) = @_;
    open my $fh, '>:raw', $path or die "$path: $!";
    print $fh $content;
    close $fh;
}

# Run the scanner; return (exit status, stdout, stderr).
sub scan
{
    my @args = @_;
    my ($out, $err) = ('', '');
    my $stdin = '';
    if (@args && ref $args[0] eq 'SCALAR')
    {
        $stdin = ${ shift @args };
    }
    IPC::Run::run([ $scan, @args ], '<', \$stdin, '>', \$out, '2>', \$err);
    return ($? >> 8, $out, $err);
}

# 1. Real tokens in the contexts they leak in; the expected report is built
# alongside.
my @expected;
my @lines = ('# config', '');
my %contexts = (
    0 => sub { qq{API_KEY="$_[0]"} },
    1 => sub { qq{{"key": "$_[0]", "n": 1}} },
    2 => sub { qq{export TOKEN=$_[0]} },
    3 => sub { qq{curl -H 'X-API-Key: $_[0]' https://example.com/?key=$_[0]&x=1} },
    4 => sub { qq{  - $_[0]\r} },
    5 => sub { qq{MY_$_[0] (after an identifier and _)} },
    6 => sub { qq{x=$_[0],y=$_[0];} },
);
my $i = 0;
for my $label (@labels)
{
    my $t = $tok{$label}{token};
    my $c = $i++ % 7;
    push @lines, $contexts{$c}->($t);
    my $n = ($c == 3 || $c == 6) ? 2 : 1;
    push @expected, sprintf('%s/real.txt:%d: key_id %s (prefix %s)',
        $dir, scalar @lines, $tok{$label}{key_id}, prefix_of($t)) for 1 .. $n;
    push @lines, 'filler line ' . $i;
}
write_file("$dir/real.txt", join("\n", @lines) . "\n");
# a nested file, a file whose last line has no newline, a token at the very
# start of a file
write_file("$dir/src/deep/er/app.py", "import os\nKEY = '$tok{r1}{token}'\n");
push @expected, sprintf('%s/src/deep/er/app.py:2: key_id %s (prefix ak)', $dir, $tok{r1}{key_id});
write_file("$dir/src/first", $tok{p3_1}{token});
push @expected, sprintf('%s/src/first:1: key_id %s (prefix dbm)', $dir, $tok{p3_1}{key_id});
# .git is skipped unless asked for
write_file("$dir/.git/objects/leak", "$tok{p2_2}{token}\n");

# 2. Near misses: no report.
my @near;
my $b62 = '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
sub other_char { my $ch = shift; my $j = index($b62, $ch); return substr($b62, ($j + 1) % 62, 1); }
for my $label (@labels)
{
    my $t = $tok{$label}{token};
    my $len = length $t;
    my $p = length(prefix_of($t));
    # one character off: in the prefix, the key id, the secret, the checksum
    for my $pos ($p - 1, $p + 1, $p + 6, $p + 14, $p + 30, $p + 45, $len - 6, $len - 1)
    {
        my $m = $t;
        my $ch = substr($m, $pos, 1);
        substr($m, $pos, 1) = $ch =~ /[a-z]/ && $pos < $p ? ($ch eq 'z' ? 'a' : chr(ord($ch) + 1)) : other_char($ch);
        push @near, $m;
    }
    push @near, uc($t);                                  # case changed
    push @near, substr($t, 0, $len - 1);                 # one short
    push @near, $t . 'x';                                # runs on into more base62
    push @near, substr($t, 0, $len - 6) . 'AAAAAA';     # wrong checksum
    (my $dash = $t) =~ s/_/-/g;
    push @near, $dash;                                   # separators changed
    push @near, substr($t, 0, $p) . '_' . substr($t, $p + 1, 11) . '_' . substr($t, $p + 13);  # key id 11 chars
}
write_file("$dir/near.txt", join("\n", map { "k=$_" } @near) . "\n");

# 3. Noise from a fixed seed: random bytes, random identifier text dense in
# underscores, and token-shaped strings with made-up checksums.
srand(20240611);
{
    my $bytes = '';
    $bytes .= pack('C*', map { int(rand(256)) } 1 .. 100_000) for 1 .. 40;
    write_file("$dir/noise/random.bin", $bytes);
    my $alpha = $b62 . '_____' . "  \n";
    my $al = length $alpha;
    my $text = '';
    $text .= join('', map { substr($alpha, int(rand($al)), 1) } 1 .. 100_000) for 1 .. 30;
    write_file("$dir/noise/text.txt", $text);
    my @prefixes = ('ak', 'ak_live', 'dbm', 'x', 'abcdefghij0123456789');
    my $shaped = '';
    for (1 .. 40_000)
    {
        my $r = join('', map { substr($b62, int(rand(62)), 1) } 1 .. 50);
        $shaped .= $prefixes[ int(rand(@prefixes)) ] . '_' . substr($r, 0, 12) . '_' . substr($r, 12) . "\n";
    }
    write_file("$dir/noise/shaped.txt", $shaped);
}
my $noise_size = 0;
$noise_size += -s $_ for glob("$dir/noise/*");
ok($noise_size > 9_000_000, "noise corpus is $noise_size bytes");

my ($rc, $out, $err) = scan("$dir/noise");
is($rc, 0, 'noise: exit status 0');
is($out, '', 'noise: no false positive in ' . int($noise_size / 1e6) . ' MB');
is($err, '', 'noise: no error');

($rc, $out, $err) = scan("$dir/near.txt");
is($rc, 0, 'near misses: exit status 0');
is($out, '', 'near misses: ' . scalar(@near) . ' strings, none reported');

($rc, $out, $err) = scan($dir);
is($rc, 1, 'corpus: exit status 1');
is(join("\n", sort split /\n/, $out), join("\n", sort @expected),
   'corpus: every real token reported with file, line, key id and prefix; .git skipped');
is($err, '', 'corpus: no error');

($rc, $out) = scan('--include-git', "$dir/.git");
like($out, qr/\Q$tok{p2_2}{key_id}\E/, '--include-git scans .git');

# Never a secret, nor the token, in any output.
my $all_tokens = join("\n", map { $tok{$_}{token} } @labels) . "\n";
($rc, $out, $err) = scan(\$all_tokens, '--include-git', $dir, '-');
is(scalar(() = $out =~ /\n/g), scalar(@expected) + 1 + scalar(@labels),
   'the leak check below reads a report of every token');
my $all_out = $out . $err;
my $leaks = 0;
for my $label (@labels)
{
    my $t = $tok{$label}{token};
    my $secret = substr($t, -38, 32);
    $leaks += () = $all_out =~ /\Q$secret\E/g;
    $leaks += () = $all_out =~ /\Q$t\E/g;
    $leaks += () = $all_out =~ /\Q@{[substr($t, -20)]}\E/g;
}
is($leaks, 0, 'no secret, token or token tail in the output');

# Standard input, the prefix filter, quiet mode.
my $input = "a $tok{p1_1}{token}\nb $tok{p2_1}{token}\n";
($rc, $out) = scan(\$input);
is($rc, 1, 'stdin: exit status 1');
is($out, "<stdin>:1: key_id $tok{p1_1}{key_id} (prefix ak)\n<stdin>:2: key_id $tok{p2_1}{key_id} (prefix ak_live)\n",
   'stdin: both tokens');
($rc, $out) = scan(\$input, '--prefix', 'ak_live');
is($out, "<stdin>:2: key_id $tok{p2_1}{key_id} (prefix ak_live)\n", '--prefix filters by prefix');
($rc, $out) = scan(\$input, '--prefix=dbm');
is($rc, 0, '--prefix with no token of that prefix: exit status 0');
($rc, $out) = scan(\$input, '-q');
is("$rc/$out", '1/', '-q: nothing printed, exit status 1');

# A token across the scanner's 1 MiB read boundary, far down a long file.
for my $shift (0, 20, 40, 60, 80)
{
    my $pad = 1024 * 1024 - $shift;
    my $text = ('y' x 99 . "\n") x int($pad / 100);
    $text .= ' ' x ($pad - length $text);
    $text .= $tok{p5_1}{token} . "\n" . ('z' x 99 . "\n") x 30000;
    ($rc, $out) = scan(\$text);
    is($out, sprintf("<stdin>:%d: key_id %s (prefix abcdefghij0123456789)\n",
        int($pad / 100) + 1, $tok{p5_1}{key_id}), "token at 1 MiB - $shift found once, line right");
}

# Errors: exit status 2, also when a token was found elsewhere.
($rc, $out, $err) = scan("$dir/real.txt", "$dir/missing");
is($rc, 2, 'an unreadable path: exit status 2');
like($err, qr/missing: No such file or directory/, 'the error names the path');
like($out, qr/real\.txt/, 'tokens in the other paths are still reported');
($rc, $out, $err) = scan('--prefix', 'Bad-Prefix', $dir);
is($rc, 2, 'an invalid --prefix: exit status 2');
($rc, $out, $err) = scan('--frobnicate');
is($rc, 2, 'an unknown option: exit status 2');
($rc, $out) = scan('--help');
is($rc, 0, '--help: exit status 0');
like($out, qr/Exit status: 0 no token found, 1 tokens found, 2 error/, '--help documents the exit status');

# File names: printed so that no name can forge a line. In the text output
# a name with a control character, a double quote, a backslash, a byte that
# is not UTF-8 or a bidirectional control is quoted as git quotes paths;
# -z and --json give programs the exact name.
my $ndir = $node->basedir . '/names';
make_path($ndir);
my $tk = $tok{p1_2};
my %names = (
    "evil\nconfig_prod.env:7: key_id AAAAAAAAAAAA (prefix ak)\nx" =>
      q{"evil\nconfig_prod.env:7: key_id AAAAAAAAAAAA (prefix ak)\nx"},
    "tab\there"        => q{"tab\there"},
    "back\\slash"      => q{"back\\\\slash"},
    "dq\"uote"         => q{"dq\"uote"},
    "bad\377byte"      => q{"bad\377byte"},
    "del\177cr\r"      => q{"del\177cr\r"},
    "bidi\xe2\x80\xaeright" => q{"bidi\342\200\256right"},
    "caf\xc3\xa9 ok"   => "caf\xc3\xa9 ok",
    "plain.env"        => 'plain.env',
);
for my $n (keys %names)
{
    write_file("$ndir/$n", "line one\nTOKEN=$tk->{token}\n");
}
($rc, $out, $err) = scan($ndir);
is($rc, 1, 'names: exit status 1');
my @out_lines = split /\n/, $out, -1;
pop @out_lines;    # after the last newline
is(scalar(@out_lines), scalar(keys %names), 'names: one line per file, whatever its name');
is(scalar(grep { !/^(.*):2: key_id \Q$tk->{key_id}\E \(prefix ak\)$/ } @out_lines), 0,
   'names: every line a finding of the real key id, none forged');
is(scalar(grep { /^config_prod/ } @out_lines), 0, 'names: the forged line is not a line');
is(join("\n", sort map { /^(.*):2: key_id/; $1 } @out_lines),
   join("\n", sort map { my $q = $names{$_}; $q =~ /^"/ ? qq{"$ndir/} . substr($q, 1) : "$ndir/$q" } keys %names),
   'names: quoted as git quotes paths (C escapes, octal), plain and UTF-8 names as they are');
($rc, $out, $err) = scan("$ndir/tab\there-missing");
like($err, qr/^apikeys-scan: "\Q$ndir\E\/tab\\there-missing": No such file/, 'names: quoted in errors too');

# -z: four NUL-terminated fields per token, the name as it is
($rc, $out) = scan('-z', $ndir);
my @f = split /\0/, $out, -1;
is(pop(@f), '', '-z: the output ends with a NUL');
is(scalar(@f), 4 * scalar(keys %names), '-z: four fields per token');
my %got;
while (my ($file, $line, $id, $prefix) = splice(@f, 0, 4)) { $got{$file} = "$line $id $prefix"; }
is_deeply(\%got, { map { ("$ndir/$_" => "2 $tk->{key_id} ak") } keys %names },
   '-z: parses back to the exact names, lines and key ids');
($rc, $out) = scan(\"x $tk->{token}\n", '-z');
is($out, "-\0" . "1\0$tk->{key_id}\0ak\0", '-z: standard input is -');

# --json: one object per line, read back by a real JSON parser
use JSON::PP;
use MIME::Base64;
($rc, $out) = scan('--json', $ndir);
my $json = JSON::PP->new->utf8;
my %jgot;
my $bad = 0;
for my $l (split /\n/, $out)
{
    my $o = eval { $json->decode($l) };
    if (!$o) { $bad++; next; }
    # the exact bytes: from file_base64 where the name is not UTF-8
    my $name = exists $o->{file_base64} ? decode_base64($o->{file_base64}) : Encode::encode('UTF-8', $o->{file});
    $jgot{$name} = "$o->{line} $o->{key_id} $o->{prefix}";
}
is($bad, 0, '--json: every line is a JSON object');
is_deeply(\%jgot, { map { ("$ndir/$_" => "2 $tk->{key_id} ak") } keys %names },
   '--json: parses back to the exact names, lines and key ids');
like($out, qr/"file": "\Q$ndir\E\/bad\\ufffdbyte", "file_base64": "/, '--json: a name not UTF-8 has U+FFFD in file, its bytes in file_base64');
($rc, $out) = scan(\"x $tk->{token}\n", '--json');
is_deeply($json->decode($out), { file => undef, line => 1, key_id => $tk->{key_id}, prefix => 'ak' },
   '--json: standard input is file null');
($rc, $out, $err) = scan('-z', '--json', $ndir);
is($rc, 2, '-z and --json together: exit status 2');
($rc, $out) = scan('--help');
like($out, qr/-z, --null.*--json/s, '--help documents -z and --json');

$node->stop;
done_testing();
