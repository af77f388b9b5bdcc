# Upgrade: install the oldest release, make keys in every state, walk every
# ALTER EXTENSION apikeys UPDATE step to the newest version; keys keep their
# statuses, and the upgraded extension equals a fresh install object by object.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Compress::Zlib ();

my $node = PostgreSQL::Test::Cluster->new('upgrade');
$node->init;
$node->append_conf('postgresql.conf', "shared_preload_libraries = 'apikeys'\n");
$node->start;

my $default = $node->safe_psql('postgres',
    q{SELECT default_version FROM pg_available_extensions WHERE name = 'apikeys'});
my @path = split /\n/, $node->safe_psql('postgres', q{
    SELECT unnest(string_to_array(path, '--')) FROM pg_extension_update_paths('apikeys')
     WHERE source = '0.1.0' AND target = (SELECT default_version FROM pg_available_extensions
                                          WHERE name = 'apikeys')});
ok(scalar @path >= 2, "an update path from 0.1.0 to $default: @path");

$node->safe_psql('postgres', 'CREATE DATABASE upgraded');
$node->safe_psql('postgres', 'CREATE DATABASE fresh');
$node->safe_psql('upgraded', q{
    CREATE EXTENSION apikeys VERSION '0.1.0' CASCADE;
    CREATE ROLE regress_up NOLOGIN;
    CREATE TABLE test_tokens (label text PRIMARY KEY, key_id text, token text);
    INSERT INTO test_tokens SELECT 'plain', * FROM apikeys.apikey_create('plain');
    INSERT INTO test_tokens SELECT 'scoped', * FROM apikeys.apikey_create('scoped', role => 'regress_up',
        scopes => '{orders:read}', metadata => '{"tenant": 7}', prefix => 'ak_live',
        expires_at => now() + interval '1 year');
    INSERT INTO test_tokens SELECT 'grace_old', * FROM apikeys.apikey_create('rotated');
    INSERT INTO test_tokens SELECT 'grace_new', key_id, apikeys.apikey_rotate(key_id, grace => '1 day')
      FROM test_tokens WHERE label = 'grace_old';
    INSERT INTO test_tokens SELECT 'disabled', * FROM apikeys.apikey_create('disabled');
    SELECT apikeys.apikey_disable(key_id) FROM test_tokens WHERE label = 'disabled';
    INSERT INTO test_tokens SELECT 'revoked', * FROM apikeys.apikey_create('revoked');
    SELECT apikeys.apikey_revoke(key_id) FROM test_tokens WHERE label = 'revoked';
});

my $statuses = q{
    SELECT string_agg(label || '=' || v.status || coalesce(':' || nullif(array_to_string(v.scopes, ','), ''), ''),
                      ' ' ORDER BY label)
      FROM test_tokens t, apikeys.apikey_verify(t.token, CASE WHEN label = 'scoped' THEN 'orders:read' END) v};
my $before = $node->safe_psql('upgraded', $statuses);
is($before, 'disabled=disabled grace_new=valid grace_old=valid plain=valid revoked=revoked scoped=valid:orders:read',
   'statuses under 0.1.0');
my $audit_before = $node->safe_psql('upgraded', 'SELECT count(*) FROM apikeys.audit_log');

# Before the update, the newer library serves the 0.1.0 database.  A role
# that may create schemas there plants apikeys_internal with a forged key and
# a trap function; the library must use only the extension's own objects.
$node->safe_psql('upgraded', q{
    CREATE ROLE regress_planter LOGIN;
    GRANT CREATE ON DATABASE upgraded TO regress_planter;
});
$node->safe_psql('upgraded', q{
    CREATE SCHEMA apikeys_internal;
    CREATE TABLE apikeys_internal.key_catalog (key_id text COLLATE "C" PRIMARY KEY, name text,
      prefix text COLLATE "C", role regrole, scopes text[], expires_at timestamptz, metadata jsonb,
      state text, hash_version int2, hash bytea, prev_hash_version int2, prev_hash bytea,
      prev_valid_until timestamptz, created_at timestamptz, created_by regrole, updated_at timestamptz,
      rotated_at timestamptz, revoked_at timestamptz);
    INSERT INTO apikeys_internal.key_catalog (key_id, name, prefix, role, scopes, metadata, state, hash_version, hash)
    VALUES ('EVILEVILEVIL', 'forged', 'ak', 'postgres', '{*}', '{}', 'active', 1,
            sha256(convert_to(repeat('S', 32), 'UTF8')));
    CREATE FUNCTION apikeys_internal._apikey_create(oid, text, regrole, text[], timestamptz, text, jsonb,
        OUT new_key_id text, OUT new_token text) LANGUAGE plpgsql AS
    $$BEGIN EXECUTE 'ALTER ROLE regress_planter SUPERUSER'; new_key_id := 'pwned'; new_token := 'x'; END$$;
    CREATE TABLE apikeys_internal.role_limits (role regrole PRIMARY KEY, rate_limit text[] NOT NULL);
    INSERT INTO apikeys_internal.role_limits VALUES ('postgres', '{1/day}'), ('regress_up', '{1/day}');
}, extra_params => [ '-U', 'regress_planter' ]);
# the forged token, checksum and all (CRC-32 is no secret)
my $body = 'ak_EVILEVILEVIL_' . ('S' x 32);
my $crc = Compress::Zlib::crc32($body);
my @b62 = ('0' .. '9', 'A' .. 'Z', 'a' .. 'z');
my $sum = '';
for (1 .. 6) { $sum = $b62[$crc % 62] . $sum; $crc = int($crc / 62); }
my $forged = $body . $sum;
is($node->safe_psql('upgraded', "SELECT apikeys.apikey_key_id('$forged'::apikeys.apikey)"),
   'EVILEVILEVIL', 'the forged token is well-formed');
is($node->safe_psql('upgraded', $statuses), $before, 'a planted schema changes no status');
is($node->safe_psql('upgraded', $statuses), $before, 'a planted role limit limits nothing');
is($node->safe_psql('upgraded', q{SELECT key_id IS NOT NULL AND key_id <> 'pwned' FROM apikeys.apikey_create('after planting')}),
   't', 'create uses the extension\'s own function, not the planted one');
is($node->safe_psql('upgraded', q{SELECT rolsuper FROM pg_roles WHERE rolname = 'regress_planter'}),
   'f', 'the planted function never ran');
is($node->safe_psql('upgraded', "SELECT status FROM apikeys.apikey_verify('$forged', 'anything')"),
   'invalid', 'the planted key does not verify');
my ($rc, $out, $err) = $node->psql('upgraded', "ALTER EXTENSION apikeys UPDATE");
isnt($rc, 0, 'the update refuses to adopt a planted schema');
like($err, qr/schema "apikeys_internal" already exists/, '... and says why');
$node->safe_psql('upgraded', q{
    DROP SCHEMA apikeys_internal CASCADE;
    DROP OWNED BY regress_planter; DROP ROLE regress_planter;
});
$node->safe_psql('upgraded', q{
    SELECT apikeys.apikey_delete(key_id) FROM apikeys.keys WHERE name = 'after planting'});
$audit_before = $node->safe_psql('upgraded', 'SELECT count(*) FROM apikeys.audit_log');

for my $step (@path[1 .. $#path])
{
    $node->safe_psql('upgraded', "ALTER EXTENSION apikeys UPDATE TO '$step'");
    is($node->safe_psql('upgraded', q{SELECT extversion FROM pg_extension WHERE extname = 'apikeys'}),
       $step, "updated to $step");
}
is($node->safe_psql('upgraded', $statuses), $before, 'every key verifies as before the update');
is($node->safe_psql('upgraded', 'SELECT count(*) FROM apikeys.audit_log'), $audit_before,
   'the audit history came along');
is($node->safe_psql('upgraded', 'SELECT ok, problem FROM apikeys.audit_verify_detail()'), 't|',
   'the rows of the old audit log were chained by the update');
is($node->safe_psql('upgraded', 'SELECT count(*) FROM apikeys_internal.audit_log WHERE seq IS NULL'), '0',
   'every old row has its place in the chain');
is($node->safe_psql('upgraded', q{
    SELECT string_agg(name || ':' || status, ' ' ORDER BY name) FROM apikeys.keys}),
   'disabled:disabled plain:active revoked:revoked rotated:active scoped:active',
   'the listing shows every key');
# keys made before the update can be managed after it
is($node->safe_psql('upgraded', q{
    SELECT length(apikeys.apikey_rotate(key_id)) > 0 FROM test_tokens WHERE label = 'plain'}),
   't', 'an old key rotates');
$node->safe_psql('upgraded', q{
    SELECT apikeys.apikey_update(key_id, allowed_ips => '{10.0.0.0/8}') FROM test_tokens WHERE label = 'scoped'});
is($node->safe_psql('upgraded', q{
    SELECT (apikeys.apikey_verify(token, client_ip => '10.1.1.1')).status,
           (apikeys.apikey_verify(token, client_ip => '192.168.1.1')).status
      FROM test_tokens WHERE label = 'scoped'}),
   'valid|ip_not_allowed', 'an old key takes a new setting');

$node->safe_psql('fresh', 'CREATE EXTENSION apikeys CASCADE');

# Privileges a DBA set on 0.1.0 objects that the update re-creates survive it.
$node->safe_psql('postgres', 'CREATE DATABASE acls');
$node->safe_psql('acls', q{
    CREATE EXTENSION apikeys VERSION '0.1.0' CASCADE;
    CREATE ROLE regress_minter NOLOGIN;
    CREATE ROLE regress_reader NOLOGIN;
    REVOKE EXECUTE ON FUNCTION apikeys.apikey_create(text, regrole, text[], timestamptz, text, jsonb) FROM PUBLIC;
    GRANT EXECUTE ON FUNCTION apikeys.apikey_create(text, regrole, text[], timestamptz, text, jsonb) TO regress_minter;
    REVOKE SELECT ON apikeys.keys, apikeys.audit_log FROM PUBLIC;
    GRANT SELECT ON apikeys.keys TO regress_reader;
    ALTER EXTENSION apikeys UPDATE;
});
is($node->safe_psql('acls', q{
    SELECT has_function_privilege('public', (SELECT p.oid FROM pg_proc p WHERE p.proname = 'apikey_create' AND p.pronamespace = 'apikeys'::regnamespace), 'EXECUTE'),
           has_function_privilege('regress_minter', (SELECT p.oid FROM pg_proc p WHERE p.proname = 'apikey_create' AND p.pronamespace = 'apikeys'::regnamespace), 'EXECUTE'),
           has_function_privilege('public', 'apikeys.apikey_verify(text, text, inet, text, int4)', 'EXECUTE'),
           has_table_privilege('public', 'apikeys.keys', 'SELECT'),
           has_table_privilege('regress_reader', 'apikeys.keys', 'SELECT'),
           has_table_privilege('public', 'apikeys.audit_log', 'SELECT')}),
   'f|t|t|f|t|f', 'revoked and granted privileges carried over to the re-created objects');
$node->safe_psql('acls', 'DROP EXTENSION apikeys');
$node->safe_psql('postgres', 'DROP DATABASE acls');
$node->safe_psql('postgres', 'DROP ROLE regress_minter, regress_reader');

# Every object of the extension, described without OIDs.
my $describe = q{
WITH members AS (
    SELECT d.classid, d.objid, d.objsubid
      FROM pg_depend d JOIN pg_extension e ON d.refobjid = e.oid
     WHERE d.refclassid = 'pg_extension'::regclass AND d.deptype = 'e' AND e.extname = 'apikeys')
SELECT string_agg(line, E'\n' ORDER BY line) FROM (
    SELECT 'member ' || pg_describe_object(classid, objid, objsubid)
           || coalesce(' comment ' || obj_description(objid, classid::regclass::name), '') AS line
      FROM members
    UNION ALL
    SELECT 'function ' || p.oid::regprocedure || ' ' || pg_get_functiondef(p.oid)
           || ' acl ' || coalesce(p.proacl::text, 'default')
      FROM pg_proc p JOIN members m ON m.classid = 'pg_proc'::regclass AND m.objid = p.oid
     WHERE p.prokind <> 'a'
    UNION ALL
    SELECT 'column ' || c.oid::regclass || '.' || a.attnum || ' ' || a.attname || ' '
           || format_type(a.atttypid, a.atttypmod) || ' notnull=' || a.attnotnull
           || ' default=' || coalesce(pg_get_expr(ad.adbin, ad.adrelid), '')
           || ' collation=' || coalesce(a.attcollation::regcollation::text, '')
           || ' acl=' || coalesce(a.attacl::text, '')
           || coalesce(' comment ' || col_description(c.oid, a.attnum), '')
      FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
      JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
      LEFT JOIN pg_attrdef ad ON ad.adrelid = c.oid AND ad.adnum = a.attnum
    UNION ALL
    SELECT 'relation ' || c.oid::regclass || ' kind=' || c.relkind::text || ' rls=' || c.relrowsecurity
           || ' force=' || c.relforcerowsecurity || ' acl=' || coalesce(c.relacl::text, '')
           || ' options=' || coalesce(c.reloptions::text, '')
           || coalesce(' view ' || pg_get_viewdef(c.oid), '')
      FROM pg_class c JOIN members m ON m.classid = 'pg_class'::regclass AND m.objid = c.oid
    UNION ALL
    SELECT 'constraint ' || conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid)
      FROM pg_constraint WHERE conrelid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
    UNION ALL
    SELECT 'index ' || pg_get_indexdef(indexrelid)
      FROM pg_index WHERE indrelid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
    UNION ALL
    SELECT 'trigger ' || pg_get_triggerdef(oid)
      FROM pg_trigger WHERE tgrelid IN (SELECT objid FROM members WHERE classid = 'pg_class'::regclass)
                        AND NOT tgisinternal
    UNION ALL
    SELECT 'policy ' || schemaname || '.' || tablename || ' ' || policyname || ' ' || cmd || ' '
           || array_to_string(roles, ',') || ' using ' || coalesce(qual, '') || ' check ' || coalesce(with_check, '')
      FROM pg_policies WHERE schemaname IN ('apikeys', 'apikeys_internal')
    UNION ALL
    SELECT 'schema ' || nspname || ' acl=' || coalesce(nspacl::text, '')
      FROM pg_namespace WHERE nspname IN ('apikeys', 'apikeys_internal')
    UNION ALL
    SELECT 'config ' || c.oid::regclass || ' ' || coalesce(x.cond, '')
      FROM pg_extension e, unnest(e.extconfig, e.extcondition) AS x(cfg, cond)
      JOIN pg_class c ON c.oid = x.cfg WHERE e.extname = 'apikeys'
    UNION ALL
    SELECT 'version ' || extversion || ' schema ' || extnamespace::regnamespace
      FROM pg_extension WHERE extname = 'apikeys'
) s};
my $upgraded = $node->safe_psql('upgraded', $describe);
my $fresh = $node->safe_psql('fresh', $describe);
ok(length($fresh) > 10000, 'the description covers the extension (' . length($fresh) . ' bytes)');
like($fresh, qr/^policy apikeys_internal\.key_catalog key_catalog_visible/m, 'description includes policies');
like($fresh, qr/^function apikeys\.apikey_verify\(text,text,inet,text,integer\)/m, 'description includes functions');
if ($upgraded ne $fresh)
{
    my %f = map { $_ => 1 } split /\n/, $fresh;
    my %u = map { $_ => 1 } split /\n/, $upgraded;
    diag("only in upgraded: $_") for grep { !$f{$_} } sort keys %u;
    diag("only in fresh: $_") for grep { !$u{$_} } sort keys %f;
}
ok($upgraded eq $fresh, 'the upgraded extension equals a fresh install');

$node->stop;
done_testing();
