# test/t/071_postgrest_pool.pl again, with a pgbouncer in transaction mode
# (one server connection) between PostgREST and the server, PostgREST set
# as the README recommends for it (db-prepared-statements = false).
use strict;
use warnings;
use FindBin;
# loaded here, at compile time, for their INIT blocks
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;

$ENV{APIKEYS_PGRST_POOLER} = 'pgbouncer';
my $file = "$FindBin::RealBin/071_postgrest_pool.pl";
do $file;
die "$file: $@" if $@;
