# Token checksums against an independent reference: a table-driven CRC-32
# and base62 written here in Perl (not the server's code, not the SQL of
# the regression suites).  Over generated tokens of every prefix length the
# server accepts exactly what the reference accepts: the right checksum,
# never the CRC plus a multiple of 2^32 (which six base62 digits hold up to
# 13 times), off by one, another token's digits, or a non-digit for a 0.  Tokens the server mints
# carry the checksum the reference computes.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;

my @crc_table = map {
	my $c = $_;
	$c = ($c & 1) ? (0xEDB88320 ^ ($c >> 1)) : ($c >> 1) for 1 .. 8;
	$c
} 0 .. 255;
sub crc32
{
	my $crc = 0xFFFFFFFF;
	$crc = $crc_table[($crc ^ ord($_)) & 0xFF] ^ ($crc >> 8) for split //, shift;
	return $crc ^ 0xFFFFFFFF;
}
my @b62 = ('0' .. '9', 'A' .. 'Z', 'a' .. 'z');
sub base62_6
{
	my $v = shift;
	my $out = '';
	for (1 .. 6) { $out = $b62[$v % 62] . $out; $v = int($v / 62); }
	return $out;
}
sub rand_str
{
	my ($n, @alphabet) = @_;
	return join('', map { $alphabet[int(rand(@alphabet))] } 1 .. $n);
}
my $max = 62**6;

# sanity of the reference itself: the well-known CRC-32 check value
is(sprintf('%08x', crc32('123456789')), 'cbf43926', 'the reference CRC-32 is CRC-32');

my $node = PostgreSQL::Test::Cluster->new('checksum');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'apikeys'\n");
$node->start;
$node->safe_psql('postgres', q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE FUNCTION parses(t text) RETURNS bool LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM t::apikeys.apikey;
        RETURN true;
    EXCEPTION WHEN invalid_text_representation THEN
        RETURN false;
    END $$;
});

# Generated tokens, each with the right checksum and with wrong ones.
my (@tokens, %want);
my @prefix_chars = ('a' .. 'z', '0' .. '9', '_');
for my $i (1 .. 200)
{
	my $plen = 1 + ($i % 20);
	my $head = rand_str(1, 'a' .. 'z') . rand_str($plen - 1, @prefix_chars) . '_'
	  . rand_str(12, @b62) . '_' . rand_str(32, @b62);
	my $crc = crc32($head);
	my %variants = (right => $crc, plus1 => ($crc + 1) % $max, minus1 => ($crc + $max - 1) % $max);
	for my $k (1, 2, 13)
	{
		my $v = $crc + $k * 2**32;
		$variants{"plus${k}x2^32"} = $v if $v < $max;
	}
	$variants{other} = int(rand($max));
	for my $what (sort keys %variants)
	{
		my $t = $head . base62_6($variants{$what});
		push @tokens, $t;
		$want{$t} = ($variants{$what} == $crc) ? 'true' : 'false';
	}
	# the right digits with a byte that is no base62 digit for each 0
	my $sum = base62_6($crc);
	if ($sum =~ /0/)
	{
		for my $c ('!', '-', ':', '@', '[', '{')
		{
			my $t = $head . ($sum =~ s/0/$c/gr);
			push @tokens, $t;
			$want{$t} = 'false';
		}
	}
}
my $values = join(",\n", map { "('$_')" } @tokens);
my $got = $node->safe_psql('postgres', qq{
    SELECT string_agg(t || ' ' || parses(t)::text || ' ' || (apikeys.apikey_verify(t)).status, E'\\n')
      FROM (VALUES $values) AS v(t)});
my ($agree, @disagree) = (0);
for my $line (split /\n/, $got)
{
	my ($t, $parsed, $status) = split / /, $line;
	my $ok = $parsed eq $want{$t} && ($want{$t} eq 'true' || $status eq 'invalid');
	if ($ok) { $agree++ } else { push @disagree, "$t: parsed $parsed, verify $status, want $want{$t}" }
}
is($agree, scalar @tokens, scalar(@tokens) . ' generated tokens: the server accepts exactly what the reference does')
  or diag(join("\n", @disagree[0 .. ($#disagree < 9 ? $#disagree : 9)]));

# Tokens the server mints: their checksum is the reference's.
my $minted = $node->safe_psql('postgres', q{
    SELECT string_agg(token, E'\n') FROM generate_series(1, 20) AS g(i),
           apikeys.apikey_create('k' || i, prefix => left('p' || repeat('x_9', 7), 1 + i % 20))});
my @bad = grep { substr($_, -6) ne base62_6(crc32(substr($_, 0, -6))) } split /\n/, $minted;
is(scalar @bad, 0, '20 minted tokens of prefix lengths 1 to 20 carry the reference checksum');

done_testing();
