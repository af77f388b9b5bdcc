# test/t/070_postgrest_rejections.pl again, behind PostgREST 11.2.2 (the
# older release the README says is tested): the same header forms,
# rejections, POST, function and require_key cases.
use strict;
use warnings;
use FindBin;
# loaded here, at compile time, for their INIT blocks
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use lib "$FindBin::RealBin/lib";
use PostgrestHttp;

$ENV{APIKEYS_PGRST_VERSION} = $PostgrestHttp::OLD_VERSION;
my $file = "$FindBin::RealBin/070_postgrest_rejections.pl";
do $file;
die "$file: $@" if $@;
