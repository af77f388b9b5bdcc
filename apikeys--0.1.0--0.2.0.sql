/* apikeys--0.1.0--0.2.0.sql: upgrade script of the apikeys extension to 0.2.0 */

-- complain if script is sourced in psql, rather than via ALTER EXTENSION
\echo Use "ALTER EXTENSION apikeys UPDATE TO '0.2.0'" to load this file. \quit

-- A fresh CREATE EXTENSION runs apikeys--0.1.0.sql and then this script, so
-- an upgraded installation and a new one are the same by construction.

-------------------------------------------------------------------------------
-- 1. The private schema.
--
-- Every table the extension keeps, and every internal function, lives in
-- apikeys_internal, on which PUBLIC has no USAGE: no unprivileged role can
-- name those tables, so none can queue a lock on them (CREATE RULE takes an
-- AccessExclusiveLock before it checks ownership, and a queued lock stalls
-- every later reader).  Schema apikeys keeps what users call: functions,
-- types and the listing views.  CREATE SCHEMA fails if the schema already
-- exists, so nobody can have planted objects in it.
-------------------------------------------------------------------------------
CREATE SCHEMA apikeys_internal;
COMMENT ON SCHEMA apikeys_internal IS
    'apikeys: tables and internal functions; no USAGE for PUBLIC (read keys through apikeys.keys, history through apikeys.audit_log)';
REVOKE ALL ON SCHEMA apikeys_internal FROM PUBLIC;
GRANT USAGE ON SCHEMA apikeys_internal TO apikeys_admin;

-- Objects that read the tables or call the internal functions by name are
-- dropped here and created again below.  Privileges a DBA set on the public
-- ones (revoking apikey_create from PUBLIC, say) are saved first and
-- applied to the new objects at the end of this script.
SELECT pg_catalog.set_config('apikeys_upgrade.acl', pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
    'apikey_create', (SELECT p.proacl::pg_catalog.text FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=)
        '@extschema@.apikey_create(pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb)'::pg_catalog.regprocedure),
    'apikey_update', (SELECT p.proacl::pg_catalog.text FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=)
        '@extschema@.apikey_update(pg_catalog.text, pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.regrole)'::pg_catalog.regprocedure),
    'apikey_verify_text', (SELECT p.proacl::pg_catalog.text FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=)
        '@extschema@.apikey_verify(pg_catalog.text, pg_catalog.text)'::pg_catalog.regprocedure),
    'apikey_verify_apikey', (SELECT p.proacl::pg_catalog.text FROM pg_catalog.pg_proc p WHERE p.oid OPERATOR(pg_catalog.=)
        '@extschema@.apikey_verify(@extschema@.apikey, pg_catalog.text)'::pg_catalog.regprocedure),
    'keys', (SELECT c.relacl::pg_catalog.text FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) '@extschema@.keys'::pg_catalog.regclass),
    'audit_log', (SELECT c.relacl::pg_catalog.text FROM pg_catalog.pg_class c WHERE c.oid OPERATOR(pg_catalog.=) '@extschema@.audit_log'::pg_catalog.regclass)
    ))::pg_catalog.text, true);

DROP VIEW @extschema@.keys;
DROP POLICY key_catalog_visible ON @extschema@.key_catalog;
DROP POLICY key_catalog_admin ON @extschema@.key_catalog;
DROP POLICY audit_log_visible ON @extschema@.audit_log;
DROP POLICY audit_log_append ON @extschema@.audit_log;
DROP TRIGGER key_catalog_audit ON @extschema@.key_catalog;
DROP TRIGGER audit_log_no_change ON @extschema@.audit_log;
DROP TRIGGER audit_log_no_truncate ON @extschema@.audit_log;

DROP FUNCTION @extschema@.apikey_create(pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb);
DROP FUNCTION @extschema@.apikey_update(pg_catalog.text, pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.regrole);
DROP FUNCTION @extschema@.apikey_verify(pg_catalog.text, pg_catalog.text);
DROP FUNCTION @extschema@.apikey_verify(@extschema@.apikey, pg_catalog.text);

DROP FUNCTION @extschema@._apikey_create(pg_catalog.oid, pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb);
DROP FUNCTION @extschema@._apikey_update(pg_catalog.oid, pg_catalog.text, pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.regrole);
DROP FUNCTION @extschema@._apikey_rotate(pg_catalog.oid, pg_catalog.text, pg_catalog.interval);
DROP FUNCTION @extschema@._apikey_disable(pg_catalog.oid, pg_catalog.text);
DROP FUNCTION @extschema@._apikey_enable(pg_catalog.oid, pg_catalog.text);
DROP FUNCTION @extschema@._apikey_revoke(pg_catalog.oid, pg_catalog.text);
DROP FUNCTION @extschema@._apikey_delete(pg_catalog.oid, pg_catalog.text);
DROP FUNCTION @extschema@._set_state(pg_catalog.oid, pg_catalog.text, pg_catalog.text);
DROP FUNCTION @extschema@._check_renew(pg_catalog.oid, @extschema@.key_catalog);
DROP FUNCTION @extschema@._key_for_update(pg_catalog.oid, pg_catalog.text);
DROP FUNCTION @extschema@._check_role_grant(pg_catalog.oid, pg_catalog.regrole);
DROP FUNCTION @extschema@._check_settings(pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb);
DROP FUNCTION @extschema@._audit_key_change();
DROP FUNCTION @extschema@._audit_log_append_only();
DROP FUNCTION @extschema@._can_manage(pg_catalog.oid, pg_catalog.oid, pg_catalog.oid);
DROP FUNCTION @extschema@._may_act_for(pg_catalog.oid, pg_catalog.oid);
DROP FUNCTION @extschema@._role_exists(pg_catalog.oid);
DROP FUNCTION @extschema@._is_admin(pg_catalog.oid);

-- C functions whose bodies do not change move as they are.
ALTER FUNCTION @extschema@._current_role() SET SCHEMA apikeys_internal;
ALTER FUNCTION @extschema@._actor() SET SCHEMA apikeys_internal;
-- (_mint gains a column, the pepper id: re-created in section 2)
DROP FUNCTION @extschema@._mint(pg_catalog.text, pg_catalog.text);

ALTER TABLE @extschema@.key_catalog SET SCHEMA apikeys_internal;
ALTER TABLE @extschema@.audit_log SET SCHEMA apikeys_internal;

-------------------------------------------------------------------------------
-- 2. The key catalog gains per-key restrictions (appended: the C verify path
-- reads columns by position, src/apikeys.h).
-------------------------------------------------------------------------------
ALTER TABLE apikeys_internal.key_catalog
    ADD COLUMN allowed_ips pg_catalog.cidr[],
    ADD COLUMN allowed_origins pg_catalog.text[];
COMMENT ON COLUMN apikeys_internal.key_catalog.allowed_ips IS
    'networks a client must connect from (null: any)';
COMMENT ON COLUMN apikeys_internal.key_catalog.allowed_origins IS
    'web origins a request must come from, exact or https://*.example.com (null: any)';
COMMENT ON TABLE apikeys_internal.key_catalog IS
    'api keys: one row per key, hashes of secrets only; read it through apikeys.keys';
GRANT SELECT (allowed_ips, allowed_origins) ON apikeys_internal.key_catalog TO PUBLIC;

-- Rate limits and quotas (src/limits.c), enforced in shared memory.
ALTER TABLE apikeys_internal.key_catalog
    ADD COLUMN rate_limit pg_catalog.text[],
    ADD COLUMN quota pg_catalog.int8,
    ADD COLUMN quota_refill pg_catalog.text,
    ADD COLUMN quota_set_at pg_catalog.timestamptz;
COMMENT ON COLUMN apikeys_internal.key_catalog.rate_limit IS
    'rate limits, normalized (''100/second'', ''10/second burst 20'', ...), all of which a request must fit (null: none)';
COMMENT ON COLUMN apikeys_internal.key_catalog.quota IS
    'remaining uses as last set by apikey_create or apikey_update; the live count is in shared memory and apikeys_internal.quota_state (null: no quota)';
COMMENT ON COLUMN apikeys_internal.key_catalog.quota_refill IS
    'quota refill, normalized (''1000/day'', ''50000/month on day 15''): remaining is set to that many at the start of each period, in UTC (null: none)';
COMMENT ON COLUMN apikeys_internal.key_catalog.quota_set_at IS
    'when quota was last set: the version shared memory re-bases on, exactly once';
GRANT SELECT (rate_limit, quota, quota_refill, quota_set_at) ON apikeys_internal.key_catalog TO PUBLIC;

-- The pepper (src/pepper.c, README "Pepper"): with apikeys.pepper_file set,
-- new hashes are HMAC-SHA256(pepper, SHA-256(secret)), hash_version 2, and
-- record the id of the pepper that made them (a digest of it, not the
-- pepper: public, like the scheme, so the listing can show it).
ALTER TABLE apikeys_internal.key_catalog
    ADD COLUMN pepper_id pg_catalog.text COLLATE "C",
    ADD COLUMN prev_pepper_id pg_catalog.text COLLATE "C";
COMMENT ON COLUMN apikeys_internal.key_catalog.hash_version IS
    'scheme of hash: 1 = SHA-256 of the secret; 2 = HMAC-SHA256, under the pepper named by pepper_id, of the secret''s SHA-256';
COMMENT ON COLUMN apikeys_internal.key_catalog.prev_hash_version IS
    'scheme of prev_hash, as hash_version (a rotation keeps the old secret''s scheme for the grace period)';
COMMENT ON COLUMN apikeys_internal.key_catalog.pepper_id IS
    'id of the pepper of hash when hash_version is 2 (16 hex digits of HMAC-SHA256(pepper, ''apikeys pepper id''); not the pepper), else null';
COMMENT ON COLUMN apikeys_internal.key_catalog.prev_pepper_id IS
    'id of the pepper of prev_hash when prev_hash_version is 2, else null';
GRANT SELECT (hash_version, pepper_id) ON apikeys_internal.key_catalog TO PUBLIC;

CREATE FUNCTION apikeys_internal._mint(p_prefix pg_catalog.text, p_key_id pg_catalog.text,
                                       OUT key_id pg_catalog.text,
                                       OUT token pg_catalog.text,
                                       OUT hash pg_catalog.bytea,
                                       OUT hash_version pg_catalog.int2,
                                       OUT pepper_id pg_catalog.text)
AS 'MODULE_PATHNAME', 'apikeys_mint'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION apikeys_internal._mint(pg_catalog.text, pg_catalog.text) IS
    'internal: a new token and the hash to store for it (peppered when apikeys.pepper_file is set), for a prefix and key id (a random key id when null)';
REVOKE ALL ON FUNCTION apikeys_internal._mint(pg_catalog.text, pg_catalog.text) FROM PUBLIC;

-- Role-limit changes are audited with no key id.
ALTER TABLE apikeys_internal.audit_log ALTER COLUMN key_id DROP NOT NULL;

-- The audit chain (README, "Audit"): every audit row carries its place in
-- the chain, the previous row's hash and a hash over both and its own
-- canonical content.  The BEFORE INSERT trigger (section 5) fills them in,
-- whoever writes the row: the catalog trigger, role limits, a C writer.
ALTER TABLE apikeys_internal.audit_log
    ADD COLUMN seq pg_catalog.int8,
    ADD COLUMN key_role_name pg_catalog.name,
    ADD COLUMN prev_hash pg_catalog.bytea,
    ADD COLUMN row_hash pg_catalog.bytea;
COMMENT ON COLUMN apikeys_internal.audit_log.seq IS
    'place in the audit chain: 1, 2, 3 ... with no gap after the anchor (apikeys_internal.audit_chain)';
COMMENT ON COLUMN apikeys_internal.audit_log.key_role_name IS
    'name of key_role when the row was written: the chain hashes the name, which survives pg_dump (an oid does not)';
COMMENT ON COLUMN apikeys_internal.audit_log.prev_hash IS
    'row_hash of the previous row of the chain (the anchor''s for the first row)';
COMMENT ON COLUMN apikeys_internal.audit_log.row_hash IS
    'SHA-256 of prev_hash and the row''s canonical content (apikeys_internal._audit_row_hash)';

-- One field of the canonical encoding: its length in bytes, a colon and the
-- text, or a dash for null; no separator can be forged from inside a value.
CREATE FUNCTION apikeys_internal._audit_field(v pg_catalog.text)
RETURNS pg_catalog.text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE WHEN v IS NULL THEN '-'
                ELSE pg_catalog.octet_length(v)::pg_catalog.text OPERATOR(pg_catalog.||) ':' OPERATOR(pg_catalog.||) v END
$$;
COMMENT ON FUNCTION apikeys_internal._audit_field(pg_catalog.text) IS
    'internal: one field of an audit row''s canonical encoding (byte length, colon, text; a dash for null)';

-- The hash of an audit row: SHA-256 over the previous hash and a fixed,
-- versioned encoding of the row's columns, each in a text form that no
-- setting changes (UTC time to the microsecond, jsonb's own canonical text).
CREATE FUNCTION apikeys_internal._audit_row_hash(prev pg_catalog.bytea, seq pg_catalog.int8,
                                                 at pg_catalog.timestamptz, txid pg_catalog.xid8,
                                                 action pg_catalog.text, key_id pg_catalog.text,
                                                 actor pg_catalog.name, actor_role pg_catalog.name,
                                                 key_role_name pg_catalog.name, changes pg_catalog.jsonb)
RETURNS pg_catalog.bytea
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.sha256(prev OPERATOR(pg_catalog.||) pg_catalog.convert_to(pg_catalog.concat_ws(',',
        'apikeys-audit-v1',
        apikeys_internal._audit_field(seq::pg_catalog.text),
        apikeys_internal._audit_field(pg_catalog.to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')),
        apikeys_internal._audit_field(txid::pg_catalog.text),
        apikeys_internal._audit_field(action),
        apikeys_internal._audit_field(key_id),
        apikeys_internal._audit_field(actor::pg_catalog.text),
        apikeys_internal._audit_field(actor_role::pg_catalog.text),
        apikeys_internal._audit_field(key_role_name::pg_catalog.text),
        apikeys_internal._audit_field(changes::pg_catalog.text)), 'UTF8'))
$$;
COMMENT ON FUNCTION apikeys_internal._audit_row_hash(pg_catalog.bytea, pg_catalog.int8, pg_catalog.timestamptz, pg_catalog.xid8, pg_catalog.text, pg_catalog.text, pg_catalog.name, pg_catalog.name, pg_catalog.name, pg_catalog.jsonb) IS
    'internal: SHA-256 of the previous row''s hash and the canonical encoding (apikeys-audit-v1) of an audit row';

-- The chain head: one row, locked by every append until its transaction
-- ends, so appends are serialised and no two rows share a predecessor.  The
-- anchor is where verification starts: the genesis (seq 0, zero hash), or
-- the last row removed by apikeys.audit_purge.  Not dumped: a restore
-- rebuilds it from the rows it loads.
CREATE TABLE apikeys_internal.audit_chain (
    one         pg_catalog.bool PRIMARY KEY DEFAULT true CHECK (one),
    seq         pg_catalog.int8 NOT NULL,
    hash        pg_catalog.bytea NOT NULL,
    anchor_seq  pg_catalog.int8 NOT NULL,
    anchor_hash pg_catalog.bytea NOT NULL,
    purge_xid   pg_catalog.xid8,
    purge_upto  pg_catalog.int8
);
COMMENT ON TABLE apikeys_internal.audit_chain IS
    'head of the audit chain (one row): last seq and hash, the anchor verification starts from, and the purge in progress';
COMMENT ON COLUMN apikeys_internal.audit_chain.seq IS 'seq of the last row of the chain (0: none yet)';
COMMENT ON COLUMN apikeys_internal.audit_chain.hash IS 'row_hash of the last row of the chain';
COMMENT ON COLUMN apikeys_internal.audit_chain.anchor_seq IS 'seq of the last row removed by a purge (0: none)';
COMMENT ON COLUMN apikeys_internal.audit_chain.anchor_hash IS 'row_hash of that row: prev_hash of the first row kept';
COMMENT ON COLUMN apikeys_internal.audit_chain.purge_xid IS 'transaction of apikeys.audit_purge allowed to delete rows';
COMMENT ON COLUMN apikeys_internal.audit_chain.purge_upto IS 'last seq that purge may delete';
REVOKE ALL ON apikeys_internal.audit_chain FROM PUBLIC;
GRANT SELECT ON apikeys_internal.audit_chain TO apikeys_admin;

-- Chain the rows an earlier version wrote, in the order they were written.
DO $do$
DECLARE
    r record;
    n pg_catalog.int8 := 0;
    h pg_catalog.bytea := pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex');
    hn pg_catalog.bytea;
BEGIN
    FOR r IN SELECT a.ctid AS row_ctid, a.*, pg_catalog.pg_get_userbyid(a.key_role::pg_catalog.oid) AS rname
               FROM apikeys_internal.audit_log a ORDER BY a.at, a.txid, a.ctid LOOP
        n := n OPERATOR(pg_catalog.+) 1;
        hn := apikeys_internal._audit_row_hash(h, n, r.at, r.txid, r.action, r.key_id, r.actor,
                                               r.actor_role, CASE WHEN r.key_role IS NOT NULL THEN r.rname END, r.changes);
        UPDATE apikeys_internal.audit_log a
           SET seq = n, prev_hash = h, row_hash = hn,
               key_role_name = CASE WHEN r.key_role IS NOT NULL THEN r.rname END
         WHERE a.ctid OPERATOR(pg_catalog.=) r.row_ctid;
        h := hn;
    END LOOP;
    INSERT INTO apikeys_internal.audit_chain (seq, hash, anchor_seq, anchor_hash)
    VALUES (n, h, 0, pg_catalog.decode(pg_catalog.repeat('00', 32), 'hex'));
END
$do$;
CREATE UNIQUE INDEX audit_log_seq_idx ON apikeys_internal.audit_log (seq);

-- The grammar of limits (C, src/limits.c), for create and update.
CREATE FUNCTION apikeys_internal._rate_limit_normalize(rate_limit pg_catalog.text)
RETURNS pg_catalog.text[]
AS 'MODULE_PATHNAME', 'apikeys_rate_limit_normalize'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION apikeys_internal._rate_limit_normalize(pg_catalog.text) IS
    'internal: parses ''N/second|minute|hour|day [burst B]'', several separated by commas (or as an array''s text form), into normalized limits; null for none; 22023 with the grammar, 54000 past 4 windows';

CREATE FUNCTION apikeys_internal._refill_normalize(refill pg_catalog.text)
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikeys_refill_normalize'
LANGUAGE C IMMUTABLE PARALLEL SAFE;
COMMENT ON FUNCTION apikeys_internal._refill_normalize(pg_catalog.text) IS
    'internal: parses a quota refill ''N/hour'', ''N/day'', ''N/month'' or ''N/month on day D''; null for none; 22023 with the grammar';

CREATE FUNCTION apikeys_internal._require_limits(rate_limit pg_catalog.bool, quota pg_catalog.bool)
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_require_limits'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION apikeys_internal._require_limits(pg_catalog.bool, pg_catalog.bool) IS
    'internal: raises 55000 unless the server can enforce rate limits (apikeys in shared_preload_libraries) and quotas (also: this is the database named by apikeys.database)';

-- Live values for the listings (C, read shared memory, then what the worker
-- flushed).
CREATE FUNCTION apikeys_internal._remaining(key_id pg_catalog.text, quota pg_catalog.int8,
                                            refill pg_catalog.text, set_at pg_catalog.timestamptz)
RETURNS pg_catalog.int8
AS 'MODULE_PATHNAME', 'apikeys_remaining'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION apikeys_internal._remaining(pg_catalog.text, pg_catalog.int8, pg_catalog.text, pg_catalog.timestamptz) IS
    'internal: a key''s remaining quota now (live in shared memory, else as last flushed, else as last set, with refills due applied); null without a quota';

CREATE FUNCTION apikeys_internal._last_used(key_id pg_catalog.text)
RETURNS pg_catalog.timestamptz
AS 'MODULE_PATHNAME', 'apikeys_last_used'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION apikeys_internal._last_used(pg_catalog.text) IS
    'internal: the last valid use of a key, counted in shared memory or flushed; null if never (or not counted: see apikeys.database)';

-- Revealable keys (src/reveal.c): the token, sealed with pgcrypto under a
-- key-encryption key that is not in the database.  Only the extension's
-- owner reads the ciphertext; others may see which of the keys they can
-- see are revealable.  Revoking or deleting a key deletes its row.
CREATE TABLE apikeys_internal.revealable_secrets (
    key_id    pg_catalog.text COLLATE "C" NOT NULL,
    kek_id    pg_catalog.text COLLATE "C" NOT NULL,
    sealed    pg_catalog.bytea NOT NULL,
    sealed_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    CONSTRAINT revealable_secrets_pkey PRIMARY KEY (key_id),
    CONSTRAINT revealable_secrets_key_id_fkey FOREIGN KEY (key_id)
        REFERENCES apikeys_internal.key_catalog (key_id) ON DELETE CASCADE
);
COMMENT ON TABLE apikeys_internal.revealable_secrets IS
    'tokens of revealable keys, sealed (pgcrypto, AES-256) under the key-encryption key named by apikeys.kek_file, which is not in the database; read only through apikey_reveal';
COMMENT ON COLUMN apikeys_internal.revealable_secrets.kek_id IS
    'id of the key-encryption key that sealed the token (a digest of it, not the key)';
COMMENT ON COLUMN apikeys_internal.revealable_secrets.sealed IS
    'the token, encrypted: an OpenPGP symmetric message with integrity check';
COMMENT ON COLUMN apikeys_internal.revealable_secrets.key_id IS 'the key (deleting or revoking it deletes this row)';
COMMENT ON COLUMN apikeys_internal.revealable_secrets.sealed_at IS 'when the current token was sealed (creation or last rotation)';
SELECT pg_catalog.pg_extension_config_dump('apikeys_internal.revealable_secrets', '');
ALTER TABLE apikeys_internal.revealable_secrets ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys_internal.revealable_secrets FORCE ROW LEVEL SECURITY;
-- (the listing joins it to the keys a role may see; no USAGE on the schema
-- lets anyone name it directly)
CREATE POLICY revealable_secrets_listing ON apikeys_internal.revealable_secrets
    FOR SELECT USING (true);
COMMENT ON POLICY revealable_secrets_listing ON apikeys_internal.revealable_secrets IS
    'the key_id column, the only one granted, is readable for the listing apikeys.keys, which shows only keys the role may see';
REVOKE ALL ON apikeys_internal.revealable_secrets FROM PUBLIC;
GRANT SELECT (key_id) ON apikeys_internal.revealable_secrets TO PUBLIC;

-- Imported keys (src/import.c): keys brought over from another system by
-- apikey_import.  A token in apikeys' own format keeps its key id (digest
-- null); any other token gets a fresh key id, and its SHA-256 (which the
-- catalog also holds as the key's hash) is looked up here, by the unique
-- index on digest, when such a token is verified.
CREATE TABLE apikeys_internal.imported_keys (
    key_id      pg_catalog.text COLLATE "C" NOT NULL,
    digest      pg_catalog.bytea,
    prefix      pg_catalog.text COLLATE "C" NOT NULL,
    format      pg_catalog.text NOT NULL,
    imported_at pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    replaced_at pg_catalog.timestamptz,
    CONSTRAINT imported_keys_pkey PRIMARY KEY (key_id),
    CONSTRAINT imported_keys_digest_key UNIQUE (digest),
    CONSTRAINT imported_keys_key_id_fkey FOREIGN KEY (key_id)
        REFERENCES apikeys_internal.key_catalog (key_id) ON DELETE CASCADE,
    CONSTRAINT imported_keys_format_check
        CHECK (format OPERATOR(pg_catalog.=) ANY (ARRAY['native', 'token', 'token_sha256'])),
    CONSTRAINT imported_keys_digest_check
        CHECK ((format OPERATOR(pg_catalog.=) 'native') OPERATOR(pg_catalog.=) (digest IS NULL)
               AND (digest IS NULL OR pg_catalog.length(digest) OPERATOR(pg_catalog.=) 32))
);
COMMENT ON TABLE apikeys_internal.imported_keys IS
    'keys imported by apikey_import: how, and for tokens not in apikeys'' format the SHA-256 that verify looks up';
COMMENT ON COLUMN apikeys_internal.imported_keys.digest IS
    'SHA-256 of the whole imported token (null for a token in apikeys'' format, which has a key id of its own)';
COMMENT ON COLUMN apikeys_internal.imported_keys.prefix IS
    'the key''s prefix, as in the catalog (the prefix its native tokens get on rotation)';
COMMENT ON COLUMN apikeys_internal.imported_keys.format IS
    'native (a custom token in apikeys'' format), token (another system''s token) or token_sha256 (only its SHA-256 was given)';
COMMENT ON COLUMN apikeys_internal.imported_keys.replaced_at IS
    'when apikey_rotate replaced the imported token with a native one';
COMMENT ON COLUMN apikeys_internal.imported_keys.key_id IS 'the imported key (deleting it deletes this row)';
COMMENT ON COLUMN apikeys_internal.imported_keys.imported_at IS 'when apikey_import brought it in';
SELECT pg_catalog.pg_extension_config_dump('apikeys_internal.imported_keys', '');
ALTER TABLE apikeys_internal.imported_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys_internal.imported_keys FORCE ROW LEVEL SECURITY;
CREATE POLICY imported_keys_listing ON apikeys_internal.imported_keys
    FOR SELECT USING (true);
COMMENT ON POLICY imported_keys_listing ON apikeys_internal.imported_keys IS
    'the columns granted (not digest) are readable for the listing apikeys.keys, which shows only keys the role may see';
REVOKE ALL ON apikeys_internal.imported_keys FROM PUBLIC;
GRANT SELECT (key_id, format, imported_at, replaced_at) ON apikeys_internal.imported_keys TO PUBLIC;

-- Every reveal draws a number that survives a rollback; the audit row and
-- the server log line carry it, so a gap in the audit log's numbers is a
-- reveal whose transaction did not commit.
CREATE SEQUENCE apikeys_internal.reveal_seq;
COMMENT ON SEQUENCE apikeys_internal.reveal_seq IS
    'numbers reveals (apikey_reveal): a number missing from the audit log is a reveal that rolled back; the server log has it';
REVOKE ALL ON SEQUENCE apikeys_internal.reveal_seq FROM PUBLIC;
-- dumped with its value, so that numbers do not repeat after a restore
SELECT pg_catalog.pg_extension_config_dump('apikeys_internal.reveal_seq', '');

-------------------------------------------------------------------------------
-- 3. Privilege helpers.  Invoker rights, no SET clause, every operator
-- qualified: they answer for the role passed in and may be inlined into the
-- policies that call them.
-------------------------------------------------------------------------------
CREATE FUNCTION apikeys_internal._is_admin(who pg_catalog.oid)
RETURNS pg_catalog.bool
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.pg_has_role(who, 'apikeys_admin', 'MEMBER')
$$;
COMMENT ON FUNCTION apikeys_internal._is_admin(pg_catalog.oid) IS
    'is the role a superuser or a member of apikeys_admin?';

CREATE FUNCTION apikeys_internal._role_exists(role pg_catalog.oid)
RETURNS pg_catalog.bool
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) role)
$$;
COMMENT ON FUNCTION apikeys_internal._role_exists(pg_catalog.oid) IS
    'does a role with this oid exist? (a key whose role does not is orphaned)';

CREATE FUNCTION apikeys_internal._may_act_for(who pg_catalog.oid, role pg_catalog.oid)
RETURNS pg_catalog.bool
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT pg_catalog.pg_has_role(who, 'apikeys_admin', 'MEMBER')
        OR pg_catalog.pg_has_role(who, role, 'MEMBER')
$$;
COMMENT ON FUNCTION apikeys_internal._may_act_for(pg_catalog.oid, pg_catalog.oid) IS
    'may the role issue and renew keys for the other role? (admins, and members of it)';

CREATE FUNCTION apikeys_internal._can_manage(who pg_catalog.oid,
                                             key_role pg_catalog.oid,
                                             key_creator pg_catalog.oid)
RETURNS pg_catalog.bool
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT key_creator OPERATOR(pg_catalog.=) who
        OR pg_catalog.pg_has_role(who, 'apikeys_admin', 'MEMBER')
        OR pg_catalog.pg_has_role(who, key_role, 'MEMBER')
$$;
COMMENT ON FUNCTION apikeys_internal._can_manage(pg_catalog.oid, pg_catalog.oid, pg_catalog.oid) IS
    'may the role see and manage a key with this role and creator? (admins, the creator, members of the key''s role)';

CREATE POLICY key_catalog_visible ON apikeys_internal.key_catalog
    FOR SELECT
    USING (apikeys_internal._can_manage(apikeys_internal._current_role(),
                                        role::pg_catalog.oid, created_by::pg_catalog.oid));
CREATE POLICY key_catalog_admin ON apikeys_internal.key_catalog
    FOR ALL
    USING (apikeys_internal._is_admin(apikeys_internal._current_role()))
    WITH CHECK (apikeys_internal._is_admin(apikeys_internal._current_role()));

CREATE POLICY audit_log_visible ON apikeys_internal.audit_log
    FOR SELECT
    USING (apikeys_internal._is_admin(apikeys_internal._current_role())
           OR actor_role OPERATOR(pg_catalog.=) pg_catalog.current_user()
           OR pg_catalog.pg_has_role(apikeys_internal._current_role(), key_role::pg_catalog.oid, 'MEMBER'));
CREATE POLICY audit_log_append ON apikeys_internal.audit_log
    FOR INSERT
    WITH CHECK (apikeys_internal._is_admin(apikeys_internal._current_role()));

-------------------------------------------------------------------------------
-- 4. What users read: views in schema apikeys.  They run with the caller's
-- rights (security_invoker), so the policies above decide what each role
-- sees.  A view in a schema PUBLIC can use can be stalled by a queued lock
-- like any relation; nothing on a hot path (verify, login, the lifecycle
-- functions) reads through one.
-------------------------------------------------------------------------------
CREATE VIEW @extschema@.keys WITH (security_invoker = true) AS
SELECT k.key_id,
       k.name,
       k.prefix,
       k.role,
       k.scopes,
       CASE
           WHEN k.state OPERATOR(pg_catalog.=) 'revoked' THEN 'revoked'
           WHEN NOT apikeys_internal._role_exists(k.role::pg_catalog.oid) THEN 'orphaned'
           WHEN k.state OPERATOR(pg_catalog.=) 'disabled' THEN 'disabled'
           WHEN k.expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp() THEN 'expired'
           ELSE 'active'
       END AS status,
       k.expires_at,
       k.metadata,
       k.created_at,
       k.created_by,
       k.updated_at,
       k.rotated_at,
       k.revoked_at,
       k.prev_valid_until AS grace_until,
       k.allowed_ips,
       k.allowed_origins,
       k.rate_limit,
       apikeys_internal._remaining(k.key_id, k.quota, k.quota_refill, k.quota_set_at) AS remaining,
       k.quota_refill AS refill,
       apikeys_internal._last_used(k.key_id) AS last_used_at,
       EXISTS (SELECT 1 FROM apikeys_internal.revealable_secrets s
                WHERE s.key_id OPERATOR(pg_catalog.=) k.key_id) AS revealable,
       EXISTS (SELECT 1 FROM apikeys_internal.imported_keys i
                WHERE i.key_id OPERATOR(pg_catalog.=) k.key_id AND i.replaced_at IS NULL) AS imported,
       (k.state OPERATOR(pg_catalog.=) 'active'
        AND k.expires_at OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
        AND k.expires_at OPERATOR(pg_catalog.<=) (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) '7 days'::pg_catalog.interval))
           IS TRUE AS expires_soon,
       CASE
           WHEN k.hash_version OPERATOR(pg_catalog.=) 1 THEN 'sha256'
           WHEN k.hash_version OPERATOR(pg_catalog.=) 2
               THEN 'hmac-sha256:' OPERATOR(pg_catalog.||) k.pepper_id
       END AS hash_scheme
  FROM apikeys_internal.key_catalog k;

COMMENT ON VIEW @extschema@.keys IS
    'api keys visible to the current role (admins see all; others the keys they created or whose role they belong to); no hashes';
COMMENT ON COLUMN @extschema@.keys.status IS
    'active, disabled, revoked, expired, or orphaned (the key''s role was dropped)';
COMMENT ON COLUMN @extschema@.keys.grace_until IS
    'until when the secret replaced by the last rotation still verifies';
COMMENT ON COLUMN @extschema@.keys.allowed_ips IS
    'networks a client must connect from (null: any)';
COMMENT ON COLUMN @extschema@.keys.allowed_origins IS
    'web origins a request must come from (null: any)';
COMMENT ON COLUMN @extschema@.keys.rate_limit IS
    'rate limits a request must fit, all of them (null: none); the key''s role may have more (apikeys.role_limits)';
COMMENT ON COLUMN @extschema@.keys.remaining IS
    'uses left of the key''s quota, live (null: no quota)';
COMMENT ON COLUMN @extschema@.keys.refill IS
    'quota refill: remaining is set to N at the start of each period, in UTC (null: none)';
COMMENT ON COLUMN @extschema@.keys.last_used_at IS
    'last valid verification, live (null: never, or not counted: usage is counted in the database named by apikeys.database, with apikeys preloaded)';
COMMENT ON COLUMN @extschema@.keys.imported IS
    'was the key imported by apikey_import, and is its token still the imported one (false once rotated)?';
COMMENT ON COLUMN @extschema@.keys.revealable IS
    'was the key created revealable (its token sealed for apikey_reveal)? false once revoked';
COMMENT ON COLUMN @extschema@.keys.expires_soon IS
    'the key is active and expires within 7 days (apikeys.expiring takes another window)';
COMMENT ON COLUMN @extschema@.keys.hash_scheme IS
    'how the current secret is stored: sha256, or hmac-sha256:<pepper id> (apikeys.pepper_file); rotate a key to move it to the current pepper';
GRANT SELECT ON @extschema@.keys TO PUBLIC;

CREATE VIEW @extschema@.audit_log WITH (security_invoker = true) AS
SELECT a.at, a.txid, a.action, a.key_id, a.actor, a.actor_role, a.key_role, a.changes, a.seq
  FROM apikeys_internal.audit_log a;
COMMENT ON VIEW @extschema@.audit_log IS
    'append-only history of every change to an api key, as far as the current role may see it (admins: all; others: rows they caused and rows of keys whose role they belong to); never a secret or a hash';
COMMENT ON COLUMN @extschema@.audit_log.seq IS
    'place of the row in the audit hash chain (apikeys.audit_verify); the hashes themselves are in apikeys_internal.audit_log, for admins';
GRANT SELECT ON @extschema@.audit_log TO PUBLIC;

-------------------------------------------------------------------------------
-- 5. The audit log's triggers.
-------------------------------------------------------------------------------
CREATE FUNCTION apikeys_internal._audit_log_append_only()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    -- apikeys.audit_purge, and only it, removes rows up to its anchor
    IF TG_OP = 'DELETE' AND EXISTS (
           SELECT FROM apikeys_internal.audit_chain c
            WHERE c.purge_xid = pg_current_xact_id_if_assigned()
              AND OLD.seq <= c.purge_upto) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'apikeys audit log is append-only'
        USING ERRCODE = '55000',
              DETAIL = pg_catalog.format('%s is not allowed on the audit log.', TG_OP);
END
$$;
COMMENT ON FUNCTION apikeys_internal._audit_log_append_only() IS
    'trigger: rejects UPDATE, DELETE and TRUNCATE on the audit log';
REVOKE ALL ON FUNCTION apikeys_internal._audit_log_append_only() FROM PUBLIC;

CREATE TRIGGER audit_log_no_change
    BEFORE UPDATE OR DELETE ON apikeys_internal.audit_log
    FOR EACH ROW EXECUTE FUNCTION apikeys_internal._audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON apikeys_internal.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys_internal._audit_log_append_only();

-- What an entry point says about the change under way, beyond what the row
-- shows (src/note.c): {"action": ..., "changes": {...}}, or null.  Set from
-- C only, around one internal call.
CREATE FUNCTION apikeys_internal._audit_note()
RETURNS pg_catalog.jsonb
AS 'MODULE_PATHNAME', 'apikeys_audit_note'
LANGUAGE C STABLE;
COMMENT ON FUNCTION apikeys_internal._audit_note() IS
    'internal: the audit note an apikeys entry point set for the change under way (action and extra changes, such as revoke_leak and its source), or null';
REVOKE ALL ON FUNCTION apikeys_internal._audit_note() FROM PUBLIC;
-- Every audit row joins the chain here, whoever inserts it (PL/pgSQL or C
-- triggers, role limits, purge, a superuser; src/insert.c does the same
-- for the rows it inserts directly).  A new row waits in the memory of its
-- transaction and is chained and written just before commit (src/chain.c):
-- the transaction then takes the chain head's lock (SHARE ROW EXCLUSIVE on
-- audit_chain, so appends are serialised in commit order), links each row
-- to the head, hashes it, and writes the rows and the new head once.  No
-- transaction of a role that is not an apikeys admin takes the lock any
-- earlier: past apikeys.audit_queue_limit of waiting rows its change fails
-- with 54000 (an admin's writes them at once, and then holds the lock), and
-- a transaction that appended cannot be prepared.  A row
-- that arrives with its place already set (pg_restore, a logical
-- replication subscriber) is accepted if its hash matches its content; the
-- head and the anchor follow the rows loaded, and audit_verify checks that
-- they link up.  Each new row also queues NOTIFY apikeys (sent at commit,
-- never a secret).  ENABLE ALWAYS: inserts under session_replication_role =
-- replica are chained too.
CREATE FUNCTION apikeys_internal._audit_chain_append()
RETURNS trigger
AS 'MODULE_PATHNAME', 'apikeys_audit_chain_append'
LANGUAGE C;
COMMENT ON FUNCTION apikeys_internal._audit_chain_append() IS
    'trigger: puts every new audit row in the hash chain (seq, prev_hash, row_hash) under the chain head''s lock, and queues NOTIFY apikeys; rows loaded with their place (restore) must match their hash';
REVOKE ALL ON FUNCTION apikeys_internal._audit_chain_append() FROM PUBLIC;

-- The transaction that appended keeps its rows and the head in memory
-- until commit: whatever reads the chain in that transaction writes them
-- first.
CREATE FUNCTION apikeys_internal._audit_chain_flush()
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_audit_chain_flush'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION apikeys_internal._audit_chain_flush() IS
    'internal: writes the audit rows and the chain head this transaction keeps in memory (before reading the chain in the same transaction; 40001 under REPEATABLE READ or SERIALIZABLE if another transaction appended since the snapshot)';
REVOKE ALL ON FUNCTION apikeys_internal._audit_chain_flush() FROM PUBLIC;

CREATE TRIGGER audit_log_chain
    BEFORE INSERT ON apikeys_internal.audit_log
    FOR EACH ROW EXECUTE FUNCTION apikeys_internal._audit_chain_append();
ALTER TABLE apikeys_internal.audit_log ENABLE ALWAYS TRIGGER audit_log_chain;

-- One audit row per changed key row; secrets and hashes are never copied.
-- plan_cache_mode is pinned so that no plan ever holds a row value (and its
-- hash) as a constant: a user's debug_print_plan or an admin's auto_explain
-- would log it.
CREATE FUNCTION apikeys_internal._audit_key_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    -- (src/audit.c leaves out the same columns from a new key's row: keep the lists in step)
    hidden   text[] := ARRAY['hash', 'hash_version', 'prev_hash', 'prev_hash_version',
                             'pepper_id', 'prev_pepper_id',
                             'key_id', 'updated_at', 'created_at', 'created_by',
                             'rotated_at', 'revoked_at'];
    actor    oid := apikeys_internal._actor();
    act      text;
    diff     jsonb := '{}'::jsonb;
    old_j    jsonb;
    new_j    jsonb;
    note     jsonb;
    k        text;
BEGIN
    IF TG_OP = 'INSERT' THEN
        act := 'create';
        diff := to_jsonb(NEW) - hidden - ARRAY['state', 'prev_valid_until', 'quota_set_at'];
    ELSIF TG_OP = 'DELETE' THEN
        act := 'delete';
    ELSE
        old_j := to_jsonb(OLD) - hidden;
        new_j := to_jsonb(NEW) - hidden;
        FOR k IN SELECT jsonb_object_keys(new_j) LOOP
            IF (old_j -> k) IS DISTINCT FROM (new_j -> k) THEN
                diff := diff || jsonb_build_object(
                    k, jsonb_build_object('old', old_j -> k, 'new', new_j -> k));
            END IF;
        END LOOP;
        IF OLD.hash <> NEW.hash THEN
            act := 'rotate';
            diff := diff || '{"secret": "replaced"}'::jsonb;
        ELSIF OLD.state <> NEW.state THEN
            act := CASE NEW.state WHEN 'revoked' THEN 'revoke'
                                  WHEN 'disabled' THEN 'disable'
                                  ELSE 'enable' END;
        ELSIF diff = '{}'::jsonb THEN
            RETURN NULL;            -- nothing a user could see changed
        ELSE
            act := 'update';
        END IF;
    END IF;

    -- Changes made to the catalog outside the apikeys functions are marked.
    IF actor IS NULL THEN
        act := 'direct_' || lower(TG_OP);
    ELSIF TG_OP = 'UPDATE' THEN
        -- the entry point may say why (revoke_leak: who reported it, and where)
        note := apikeys_internal._audit_note();
        IF note IS NOT NULL THEN
            act := note ->> 'action';
            diff := diff || (note -> 'changes');
        END IF;
    END IF;

    INSERT INTO apikeys_internal.audit_log (action, key_id, actor, actor_role, key_role, changes)
    VALUES (act,
            CASE WHEN TG_OP = 'DELETE' THEN OLD.key_id ELSE NEW.key_id END,
            session_user,
            CASE WHEN actor IS NULL THEN current_user ELSE pg_get_userbyid(actor) END,
            CASE WHEN TG_OP = 'DELETE' THEN OLD.role ELSE NEW.role END,
            diff);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION apikeys_internal._audit_key_change() IS
    'trigger: writes one audit row per changed key, without secrets or hashes';
REVOKE ALL ON FUNCTION apikeys_internal._audit_key_change() FROM PUBLIC;

CREATE TRIGGER key_catalog_audit
    AFTER UPDATE OR DELETE ON apikeys_internal.key_catalog
    FOR EACH ROW EXECUTE FUNCTION apikeys_internal._audit_key_change();

-- An insert's audit row, written in C (src/audit.c): the same row as the
-- INSERT branch of _audit_key_change, without a PL/pgSQL call and the hex
-- encoding of hashes only to drop them.  Creation is the one bulk operation.
CREATE FUNCTION apikeys_internal._audit_key_create()
RETURNS trigger
AS 'MODULE_PATHNAME', 'apikeys_audit_key_create'
LANGUAGE C;
COMMENT ON FUNCTION apikeys_internal._audit_key_create() IS
    'trigger: writes the audit row of a new key (action create, or direct_insert), without secrets or hashes';
REVOKE ALL ON FUNCTION apikeys_internal._audit_key_create() FROM PUBLIC;

CREATE TRIGGER key_catalog_audit_create
    AFTER INSERT ON apikeys_internal.key_catalog
    FOR EACH ROW EXECUTE FUNCTION apikeys_internal._audit_key_create();

-------------------------------------------------------------------------------
-- 6. Lifecycle, internal halves.  SECURITY DEFINER ones pin search_path and
-- are not executable by PUBLIC: the C entry points call them directly and
-- pass the calling role first.  Every function that handles a row with a
-- hash pins plan_cache_mode = force_generic_plan, so its plans hold
-- parameters, never the hash as a constant.
-------------------------------------------------------------------------------

-- Size limits of user-supplied fields (documented in the README).  They keep
-- every catalog and audit row bounded whatever the input.
CREATE FUNCTION apikeys_internal._limit(what pg_catalog.text)
RETURNS pg_catalog.int4
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT CASE what
               WHEN 'name' THEN 200             -- characters
               WHEN 'scopes' THEN 64            -- entries
               WHEN 'scope' THEN 128            -- characters per scope
               WHEN 'metadata' THEN 8192        -- bytes of its text form
               WHEN 'allowed_ips' THEN 64       -- entries
               WHEN 'allowed_origins' THEN 64   -- entries
               WHEN 'origin' THEN 255           -- characters per origin
               WHEN 'rate_limit' THEN 4         -- windows (src/apikeys.h APIKEY_MAX_WINDOWS)
               WHEN 'reason' THEN 1000          -- characters of a request's reason or a decision's note
               WHEN 'pending_requests' THEN 100 -- pending key requests per requesting role
           END
$$;
COMMENT ON FUNCTION apikeys_internal._limit(pg_catalog.text) IS
    'size limits of user-supplied key fields: name, scopes, scope, metadata, allowed_ips, allowed_origins, origin, rate_limit; of key requests: reason, pending_requests';

-- Raise 54000 naming the limit when n exceeds it.
CREATE FUNCTION apikeys_internal._check_limit(what pg_catalog.text, unit pg_catalog.text,
                                              n pg_catalog.int8)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    lim int4 := apikeys_internal._limit(what);
BEGIN
    IF n > lim THEN
        RAISE EXCEPTION 'api key field "%" exceeds its size limit', what
            USING ERRCODE = '54000',
                  DETAIL = format('The limit is %s %s; the value given has %s.', lim, unit, n);
    END IF;
END
$$;
COMMENT ON FUNCTION apikeys_internal._check_limit(pg_catalog.text, pg_catalog.text, pg_catalog.int8) IS
    'internal: raises 54000 when a user-supplied field exceeds its documented size limit';
REVOKE ALL ON FUNCTION apikeys_internal._check_limit(pg_catalog.text, pg_catalog.text, pg_catalog.int8) FROM PUBLIC;

-- The origins a key may be used from, validated and lowercased; an empty
-- array means no restriction (null).
CREATE FUNCTION apikeys_internal._normalize_origins(p_origins pg_catalog.text[])
RETURNS pg_catalog.text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    o text;
    result text[] := '{}'::text[];
BEGIN
    IF p_origins IS NULL THEN
        RETURN NULL;
    END IF;
    IF array_ndims(p_origins) > 1 THEN
        RAISE EXCEPTION 'invalid api key allowed_origins'
            USING ERRCODE = '22023',
                  DETAIL = 'allowed_origins must be a one-dimensional array.';
    END IF;
    PERFORM apikeys_internal._check_limit('allowed_origins', 'entries', cardinality(p_origins));
    FOREACH o IN ARRAY p_origins LOOP
        IF o IS NULL THEN
            RAISE EXCEPTION 'invalid api key allowed_origins'
                USING ERRCODE = '22023',
                      DETAIL = 'allowed_origins must not contain null.';
        END IF;
        PERFORM apikeys_internal._check_limit('origin', 'characters', length(o));
        o := lower(o COLLATE "C");
        -- http or https; a host name, or an IPv6 literal; a wildcard only as
        -- the first label, with at least two labels after it (no *.com)
        IF o !~ '^https?://[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[0-9]{1,5})?$'
           AND o !~ '^https?://\*(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?){2,}(:[0-9]{1,5})?$'
           AND o !~ '^https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?$' THEN
            RAISE EXCEPTION 'invalid api key allowed origin'
                USING ERRCODE = '22023',
                      DETAIL = 'An allowed origin is http:// or https:// and a host, with an optional port and no path; *. before a domain of at least two labels allows its subdomains.',
                      HINT = 'For example ''https://app.example.com'' or ''https://*.example.com''.';
        END IF;
        IF NOT o = ANY (result) THEN
            result := result || o;
        END IF;
    END LOOP;
    RETURN CASE WHEN cardinality(result) = 0 THEN NULL ELSE result END;
END
$$;
COMMENT ON FUNCTION apikeys_internal._normalize_origins(pg_catalog.text[]) IS
    'internal: validates and lowercases allowed origins (22023, 54000); an empty array means no restriction';
REVOKE ALL ON FUNCTION apikeys_internal._normalize_origins(pg_catalog.text[]) FROM PUBLIC;

-- Validate the user-settable fields shared by create and update.
CREATE FUNCTION apikeys_internal._check_settings(p_name pg_catalog.text,
                                                 p_scopes pg_catalog.text[],
                                                 p_expires_at pg_catalog.timestamptz,
                                                 p_metadata pg_catalog.jsonb,
                                                 p_allowed_ips pg_catalog.cidr[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_name IS NOT NULL THEN
        PERFORM apikeys_internal._check_limit('name', 'characters', length(p_name));
        -- blank in any script: spaces, separators, fillers, zero-width,
        -- format and variation characters, tags; nothing a listing shows
        IF p_name COLLATE "C" ~ '^[[:space:]\u0085\u00a0\u00ad\u034f\u061c\u115f\u1160\u1680\u17b4\u17b5\u180b-\u180f\u2000-\u200f\u2028-\u202f\u205f-\u206f\u2800\u3000\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001d173-\U0001d17a\U000e0000-\U000e0fff]*$' THEN
            RAISE EXCEPTION 'api key name must not be empty'
                USING ERRCODE = '22023',
                      DETAIL = 'The name given is empty, or only white space and invisible characters.',
                      HINT = 'Name the key after what uses it, such as ''billing service''.';
        END IF;
        -- control characters and bidirectional controls would let a name
        -- disguise itself, or its neighbours, in a listing
        IF p_name COLLATE "C" ~ '[\u0001-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]' THEN
            RAISE EXCEPTION 'api key name contains a control character'
                USING ERRCODE = '22023',
                      DETAIL = 'Names may not contain control characters (line breaks and tabs included) or bidirectional text controls.';
        END IF;
    END IF;
    IF p_scopes IS NOT NULL THEN
        -- (dimensions first: unnest would flatten a multidimensional array)
        IF array_ndims(p_scopes) > 1 THEN
            RAISE EXCEPTION 'invalid api key scopes'
                USING ERRCODE = '22023',
                      DETAIL = 'Scopes must be a one-dimensional array of non-empty, non-null strings.';
        END IF;
        PERFORM apikeys_internal._check_limit('scopes', 'entries', cardinality(p_scopes));
        IF EXISTS (SELECT 1 FROM unnest(p_scopes) AS s(scope)
                    WHERE s.scope IS NULL OR s.scope = '') THEN
            RAISE EXCEPTION 'invalid api key scopes'
                USING ERRCODE = '22023',
                      DETAIL = 'Scopes must be a one-dimensional array of non-empty, non-null strings.';
        END IF;
        PERFORM apikeys_internal._check_limit('scope', 'characters', max(length(s.scope)))
           FROM unnest(p_scopes) AS s(scope);
        -- RFC 6749's scope-token: printable ASCII but space, " and \
        IF EXISTS (SELECT 1 FROM unnest(p_scopes) AS s(scope)
                    WHERE s.scope COLLATE "C" !~ '^[!#-\[\]-~]+$') THEN
            RAISE EXCEPTION 'invalid api key scope'
                USING ERRCODE = '22023',
                      DETAIL = 'A scope is printable ASCII without spaces, double quotes or backslashes (an OAuth scope-token).';
        END IF;
        IF EXISTS (SELECT 1 FROM unnest(p_scopes) AS s(scope)
                    WHERE strpos(left(s.scope, -1), '*') > 0) THEN
            RAISE EXCEPTION 'invalid api key scope'
                USING ERRCODE = '22023',
                      DETAIL = 'A wildcard * may only end a scope: ''jobs:*'' holds every scope that starts with ''jobs:'', and ''*'' holds every scope.';
        END IF;
    END IF;
    IF p_expires_at IS NOT NULL AND p_expires_at <> 'infinity'
       AND p_expires_at <= clock_timestamp() THEN
        RAISE EXCEPTION 'api key expiry must be in the future'
            USING ERRCODE = '22023',
                  HINT = 'To stop a key now, use apikey_disable or apikey_revoke.';
    END IF;
    IF p_metadata IS NOT NULL THEN
        IF jsonb_typeof(p_metadata) <> 'object' THEN
            RAISE EXCEPTION 'api key metadata must be a json object'
                USING ERRCODE = '22023',
                      DETAIL = format('The value given is a json %s.', jsonb_typeof(p_metadata)),
                      HINT = 'Wrap it in an object, such as {"value": ...}.';
        END IF;
        PERFORM apikeys_internal._check_limit('metadata', 'bytes', octet_length(p_metadata::text));
    END IF;
    IF p_allowed_ips IS NOT NULL THEN
        IF array_ndims(p_allowed_ips) > 1
           OR EXISTS (SELECT 1 FROM unnest(p_allowed_ips) AS a(net) WHERE a.net IS NULL) THEN
            RAISE EXCEPTION 'invalid api key allowed_ips'
                USING ERRCODE = '22023',
                      DETAIL = 'allowed_ips must be a one-dimensional array of networks, without null.';
        END IF;
        PERFORM apikeys_internal._check_limit('allowed_ips', 'entries', cardinality(p_allowed_ips));
    END IF;
END
$$;
COMMENT ON FUNCTION apikeys_internal._check_settings(pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.cidr[]) IS
    'internal: raises 22023 for a blank name, bad scopes, a past expiry, non-object metadata or bad networks, and 54000 past a size limit';
REVOKE ALL ON FUNCTION apikeys_internal._check_settings(pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.cidr[]) FROM PUBLIC;

-- The checks every new key passes, whichever way it is made (create, the
-- approval workflow's request, import); returns the origins normalised.
CREATE FUNCTION apikeys_internal._check_new_key(p_name pg_catalog.text,
                                                p_scopes pg_catalog.text[],
                                                p_expires_at pg_catalog.timestamptz,
                                                p_metadata pg_catalog.jsonb,
                                                p_allowed_ips pg_catalog.cidr[],
                                                p_allowed_origins pg_catalog.text[])
RETURNS pg_catalog.text[]
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_name IS NULL THEN
        RAISE EXCEPTION 'api key name must not be null'
            USING ERRCODE = '22004',
                  HINT = 'Name the key after what uses it, such as ''billing service''.';
    END IF;
    PERFORM apikeys_internal._check_settings(p_name, p_scopes, p_expires_at, p_metadata, p_allowed_ips);
    -- an empty allow-list at creation is most likely a list that came out
    -- empty by mistake: refuse it rather than issue an unrestricted key
    IF cardinality(p_allowed_ips) = 0 OR cardinality(p_allowed_origins) = 0 THEN
        RAISE EXCEPTION 'empty api key allow-list'
            USING ERRCODE = '22023',
                  DETAIL = 'An empty allowed_ips or allowed_origins would restrict nothing.',
                  HINT = 'Pass NULL (the default) for a key usable from anywhere.';
    END IF;
    RETURN apikeys_internal._normalize_origins(p_allowed_origins);
END
$$;
COMMENT ON FUNCTION apikeys_internal._check_new_key(pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.cidr[], pg_catalog.text[]) IS
    'internal: the checks of a new key (a name, _check_settings, no empty allow-list), returning its allowed origins normalised';
REVOKE ALL ON FUNCTION apikeys_internal._check_new_key(pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.cidr[], pg_catalog.text[]) FROM PUBLIC;

-- Check that p_role names an existing role the caller may give keys to.
CREATE FUNCTION apikeys_internal._check_role_grant(p_caller pg_catalog.oid, p_role pg_catalog.regrole)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT apikeys_internal._role_exists(p_role::oid) THEN
        RAISE EXCEPTION 'role with oid % does not exist', p_role::oid
            USING ERRCODE = '42704';
    END IF;
    IF NOT apikeys_internal._may_act_for(p_caller, p_role::oid) THEN
        RAISE EXCEPTION 'permission denied to issue api keys for role %', p_role
            USING ERRCODE = '42501',
                  DETAIL = format('Role %s is not a member of role %s.',
                                  quote_ident(pg_get_userbyid(p_caller)), p_role),
                  HINT = 'A key never exceeds its creator: only members of a role, members of apikeys_admin and superusers can issue keys for it.';
    END IF;
    -- apikeys.max_keys_per_role (54000), for non-admins (see "Fair shares")
    PERFORM apikeys_internal._check_key_count(p_caller, p_role::oid);
END
$$;
COMMENT ON FUNCTION apikeys_internal._check_role_grant(pg_catalog.oid, pg_catalog.regrole) IS
    'internal: raises unless the role exists and the caller is a member of it or an admin, and (54000) unless a non-admin caller leaves the role within apikeys.max_keys_per_role keys';
REVOKE ALL ON FUNCTION apikeys_internal._check_role_grant(pg_catalog.oid, pg_catalog.regrole) FROM PUBLIC;

-- Lock and return the key row the caller may manage, or raise 42704.
CREATE FUNCTION apikeys_internal._key_for_update(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS apikeys_internal.key_catalog
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    k apikeys_internal.key_catalog;
BEGIN
    IF p_key_id IS NULL THEN
        RAISE EXCEPTION 'api key id must not be null'
            USING ERRCODE = '22004';
    END IF;
    -- Only a well-formed key id is ever echoed: the argument could be a
    -- whole token passed by mistake, and a secret must not reach a message.
    IF p_key_id COLLATE "C" !~ '^[0-9A-Za-z]{12}$' THEN
        RAISE EXCEPTION 'invalid api key id'
            USING ERRCODE = '22023',
                  DETAIL = 'A key id is 12 letters and digits; the value given is not shown.',
                  HINT = 'Pass the key id (apikey_key_id(token) gives it), never the token.';
    END IF;
    SELECT * INTO k FROM apikeys_internal.key_catalog c
     WHERE c.key_id = p_key_id COLLATE "C"
       FOR UPDATE;
    -- A key the caller may not manage is reported exactly like a missing one.
    IF NOT FOUND OR NOT apikeys_internal._can_manage(p_caller, k.role::oid, k.created_by::oid) THEN
        RAISE EXCEPTION 'api key "%" does not exist', p_key_id
            USING ERRCODE = '42704',
                  HINT = 'Keys you did not create, and whose role you are not a member of, are not visible to you.';
    END IF;
    RETURN k;
END
$$;
COMMENT ON FUNCTION apikeys_internal._key_for_update(pg_catalog.oid, pg_catalog.text) IS
    'internal: locks a key the caller may manage, or raises 42704';
REVOKE ALL ON FUNCTION apikeys_internal._key_for_update(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

-- Raise unless the caller may give the key's role a working credential
-- again (rotate, enable, update, and moving the key to another role): the
-- role must still exist, and the caller must be an admin or a member of it.
-- A creator who has left the role may still disable, revoke and delete the
-- key, not renew it.
CREATE FUNCTION apikeys_internal._check_renew(p_caller pg_catalog.oid,
                                              p_key_id pg_catalog.text,
                                              p_role pg_catalog.regrole)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT apikeys_internal._role_exists(p_role::oid) THEN
        RAISE EXCEPTION 'role of api key "%" no longer exists', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = 'The role the key was issued for has been dropped; the key is orphaned.',
                  HINT = 'Delete the key, or have an admin give it a role with apikey_update(key_id, role => ...).';
    END IF;
    IF NOT apikeys_internal._may_act_for(p_caller, p_role::oid) THEN
        RAISE EXCEPTION 'permission denied to renew api key "%"', p_key_id
            USING ERRCODE = '42501',
                  DETAIL = format('Role %s is not a member of the key''s role %s.',
                                  quote_ident(pg_get_userbyid(p_caller)), p_role),
                  HINT = 'The creator of a key may still disable, revoke or delete it.';
    END IF;
END
$$;
COMMENT ON FUNCTION apikeys_internal._check_renew(pg_catalog.oid, pg_catalog.text, pg_catalog.regrole) IS
    'internal: raises unless the caller may rotate, enable, update or re-assign the key (its role exists and the caller belongs to it, or is an admin)';
REVOKE ALL ON FUNCTION apikeys_internal._check_renew(pg_catalog.oid, pg_catalog.text, pg_catalog.regrole) FROM PUBLIC;

-- Rate limit, quota and refill as given to create or update, validated and
-- normalized (22023, 54000).  A refill without a quota starts the quota at
-- the refill's amount.  Raises unless this server can enforce them
-- (shared_preload_libraries; apikeys.database for quotas).
CREATE FUNCTION apikeys_internal._check_limits(p_rate_limit pg_catalog.text,
                                               p_remaining pg_catalog.int8,
                                               p_refill pg_catalog.text,
                                               OUT rate_limit pg_catalog.text[],
                                               OUT quota pg_catalog.int8,
                                               OUT refill pg_catalog.text)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    rate_limit := apikeys_internal._rate_limit_normalize(p_rate_limit);
    refill := apikeys_internal._refill_normalize(p_refill);
    IF p_remaining IS NOT NULL AND p_remaining < 0 THEN
        RAISE EXCEPTION 'remaining uses must not be negative'
            USING ERRCODE = '22023',
                  HINT = 'Give the number of uses left; apikey_update(key_id, remaining => -1) removes a quota.';
    END IF;
    quota := COALESCE(p_remaining, split_part(refill, '/', 1)::int8);
    PERFORM apikeys_internal._require_limits(rate_limit IS NOT NULL, quota IS NOT NULL);
END
$$;
COMMENT ON FUNCTION apikeys_internal._check_limits(pg_catalog.text, pg_catalog.int8, pg_catalog.text) IS
    'internal: validates and normalizes a rate limit, a quota and its refill; raises unless the server can enforce them';
REVOKE ALL ON FUNCTION apikeys_internal._check_limits(pg_catalog.text, pg_catalog.int8, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._apikey_create(p_caller pg_catalog.oid,
                                                p_name pg_catalog.text,
                                                p_role pg_catalog.regrole,
                                                p_scopes pg_catalog.text[],
                                                p_expires_at pg_catalog.timestamptz,
                                                p_prefix pg_catalog.text,
                                                p_metadata pg_catalog.jsonb,
                                                p_allowed_ips pg_catalog.cidr[],
                                                p_allowed_origins pg_catalog.text[],
                                                p_rate_limit pg_catalog.text,
                                                p_remaining pg_catalog.int8,
                                                p_refill pg_catalog.text,
                                                p_revealable pg_catalog.bool,
                                                OUT new_key_id pg_catalog.text,
                                                OUT new_token pg_catalog.text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    m record;
    lim record;
BEGIN
    p_allowed_origins := apikeys_internal._check_new_key(p_name, p_scopes, p_expires_at, p_metadata,
                                                         p_allowed_ips, p_allowed_origins);
    p_role := COALESCE(p_role, p_caller::regrole);
    PERFORM apikeys_internal._check_role_grant(p_caller, p_role);
    PERFORM apikeys_internal._check_manage_grant(p_caller, p_scopes);
    lim := apikeys_internal._check_limits(p_rate_limit, p_remaining, p_refill);

    -- 62^12 key ids: a collision is all but impossible, but never fatal.
    FOR attempt IN 1..5 LOOP
        SELECT * INTO m FROM apikeys_internal._mint(COALESCE(p_prefix, 'ak'), NULL);
        BEGIN
            INSERT INTO apikeys_internal.key_catalog
                (key_id, name, prefix, role, scopes, expires_at, metadata,
                 hash_version, hash, pepper_id, created_by, allowed_ips, allowed_origins,
                 rate_limit, quota, quota_refill, quota_set_at)
            VALUES (m.key_id, p_name, COALESCE(p_prefix, 'ak'), p_role,
                    COALESCE(p_scopes, '{}'),
                    NULLIF(p_expires_at, 'infinity'),
                    COALESCE(p_metadata, '{}'),
                    m.hash_version, m.hash, m.pepper_id, p_caller::regrole,
                    p_allowed_ips, p_allowed_origins,
                    lim.rate_limit, lim.quota, lim.refill,
                    CASE WHEN lim.quota IS NOT NULL THEN clock_timestamp() END);
            new_key_id := m.key_id;
            new_token := m.token;
        EXCEPTION WHEN unique_violation THEN
            CONTINUE;               -- draw another key id
        END;
        -- a revealable key keeps its token sealed under the KEK (src/reveal.c)
        IF p_revealable THEN
            INSERT INTO apikeys_internal.revealable_secrets (key_id, kek_id, sealed)
            SELECT new_key_id, s.kek_id, s.sealed FROM apikeys_internal._seal(new_token) s;
            PERFORM apikeys_internal._audit_append(p_caller, 'seal', new_key_id, p_role,
                jsonb_build_object('kek_id', (SELECT r.kek_id FROM apikeys_internal.revealable_secrets r
                                               WHERE r.key_id = new_key_id)));
        END IF;
        RETURN;
    END LOOP;
    RAISE EXCEPTION 'could not allocate a unique api key id'
        USING ERRCODE = '23505';
END
$$;
COMMENT ON FUNCTION apikeys_internal._apikey_create(pg_catalog.oid, pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text, pg_catalog.int8, pg_catalog.text, pg_catalog.bool) IS
    'internal half of apikey_create; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_create(pg_catalog.oid, pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text, pg_catalog.int8, pg_catalog.text, pg_catalog.bool) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._apikey_rotate(p_caller pg_catalog.oid,
                                                p_key_id pg_catalog.text,
                                                p_grace pg_catalog.interval)
RETURNS pg_catalog.text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    k apikeys_internal.key_catalog;
    m record;
BEGIN
    k := apikeys_internal._key_for_update(p_caller, p_key_id);
    IF k.state = 'revoked' THEN
        RAISE EXCEPTION 'cannot rotate revoked api key "%"', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = 'Revocation is permanent.',
                  HINT = 'Create a new key instead.';
    END IF;
    PERFORM apikeys_internal._check_renew(p_caller, k.key_id, k.role);
    -- a new token of a key that manages keys is an admin's to hand out
    PERFORM apikeys_internal._check_manage_grant(p_caller, k.scopes);
    IF p_grace IS NOT NULL AND p_grace < '0'::interval THEN
        RAISE EXCEPTION 'grace period must not be negative'
            USING ERRCODE = '22023',
                  HINT = 'Use a positive interval, or none to end the old secret at commit.';
    END IF;

    SELECT * INTO m FROM apikeys_internal._mint(k.prefix, k.key_id);
    IF p_grace IS NULL OR p_grace = '0'::interval THEN
        UPDATE apikeys_internal.key_catalog c
           SET hash_version = m.hash_version, hash = m.hash, pepper_id = m.pepper_id,
               prev_hash_version = NULL, prev_hash = NULL, prev_pepper_id = NULL,
               prev_valid_until = NULL,
               rotated_at = now(), updated_at = now()
         WHERE c.key_id = k.key_id;
    ELSE
        -- the old secret keeps its scheme (and pepper) for the grace period
        UPDATE apikeys_internal.key_catalog c
           SET hash_version = m.hash_version, hash = m.hash, pepper_id = m.pepper_id,
               prev_hash_version = c.hash_version, prev_hash = c.hash,
               prev_pepper_id = c.pepper_id,
               prev_valid_until = now() + p_grace,
               rotated_at = now(), updated_at = now()
         WHERE c.key_id = k.key_id;
    END IF;
    -- an imported key now has a native token (the imported one lasts the grace)
    UPDATE apikeys_internal.imported_keys i SET replaced_at = now()
     WHERE i.key_id = k.key_id AND i.replaced_at IS NULL;
    -- a revealable key keeps the new token sealed (only revealable keys need the KEK)
    UPDATE apikeys_internal.revealable_secrets r
       SET (kek_id, sealed, sealed_at) = (SELECT s.kek_id, s.sealed, now()
                                            FROM apikeys_internal._seal(m.token) s)
     WHERE r.key_id = k.key_id;
    RETURN m.token;
END
$$;
COMMENT ON FUNCTION apikeys_internal._apikey_rotate(pg_catalog.oid, pg_catalog.text, pg_catalog.interval) IS
    'internal half of apikey_rotate; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_rotate(pg_catalog.oid, pg_catalog.text, pg_catalog.interval) FROM PUBLIC;

-- Move a key to another state; revoked is final.
CREATE FUNCTION apikeys_internal._set_state(p_caller pg_catalog.oid,
                                            p_key_id pg_catalog.text,
                                            p_state pg_catalog.text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    k apikeys_internal.key_catalog;
BEGIN
    k := apikeys_internal._key_for_update(p_caller, p_key_id);
    IF k.state = p_state THEN
        RETURN;                     -- already there: nothing to do, nothing to audit
    END IF;
    IF k.state = 'revoked' THEN
        RAISE EXCEPTION 'api key "%" is revoked', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = 'Revocation is permanent.',
                  HINT = 'Create a new key instead.';
    END IF;
    IF p_state = 'active' THEN
        PERFORM apikeys_internal._check_renew(p_caller, k.key_id, k.role);
        PERFORM apikeys_internal._check_manage_grant(p_caller, k.scopes);
    END IF;
    UPDATE apikeys_internal.key_catalog c
       SET state = p_state,
           revoked_at = CASE WHEN p_state = 'revoked' THEN now() END,
           -- a revoked key keeps no secret that could verify
           prev_hash_version = CASE WHEN p_state = 'revoked' THEN NULL ELSE c.prev_hash_version END,
           prev_hash = CASE WHEN p_state = 'revoked' THEN NULL ELSE c.prev_hash END,
           prev_pepper_id = CASE WHEN p_state = 'revoked' THEN NULL ELSE c.prev_pepper_id END,
           prev_valid_until = CASE WHEN p_state = 'revoked' THEN NULL ELSE c.prev_valid_until END,
           updated_at = now()
     WHERE c.key_id = k.key_id;
    -- ... nor a sealed token
    IF p_state = 'revoked' THEN
        DELETE FROM apikeys_internal.revealable_secrets r WHERE r.key_id = k.key_id;
    END IF;
END
$$;
COMMENT ON FUNCTION apikeys_internal._set_state(pg_catalog.oid, pg_catalog.text, pg_catalog.text) IS
    'internal: moves a key the caller may manage to active, disabled or revoked';
REVOKE ALL ON FUNCTION apikeys_internal._set_state(pg_catalog.oid, pg_catalog.text, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._apikey_disable(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT apikeys_internal._set_state(p_caller, p_key_id, 'disabled') $$;
COMMENT ON FUNCTION apikeys_internal._apikey_disable(pg_catalog.oid, pg_catalog.text) IS
    'internal half of apikey_disable; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_disable(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._apikey_enable(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT apikeys_internal._set_state(p_caller, p_key_id, 'active') $$;
COMMENT ON FUNCTION apikeys_internal._apikey_enable(pg_catalog.oid, pg_catalog.text) IS
    'internal half of apikey_enable; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_enable(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._apikey_revoke(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT apikeys_internal._set_state(p_caller, p_key_id, 'revoked') $$;
COMMENT ON FUNCTION apikeys_internal._apikey_revoke(pg_catalog.oid, pg_catalog.text) IS
    'internal half of apikey_revoke; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_revoke(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._apikey_delete(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    k apikeys_internal.key_catalog;
BEGIN
    k := apikeys_internal._key_for_update(p_caller, p_key_id);
    DELETE FROM apikeys_internal.key_catalog c WHERE c.key_id = k.key_id;
END
$$;
COMMENT ON FUNCTION apikeys_internal._apikey_delete(pg_catalog.oid, pg_catalog.text) IS
    'internal half of apikey_delete; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_delete(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._apikey_update(p_caller pg_catalog.oid,
                                                p_key_id pg_catalog.text,
                                                p_name pg_catalog.text,
                                                p_scopes pg_catalog.text[],
                                                p_expires_at pg_catalog.timestamptz,
                                                p_metadata pg_catalog.jsonb,
                                                p_role pg_catalog.regrole,
                                                p_allowed_ips pg_catalog.cidr[],
                                                p_allowed_origins pg_catalog.text[],
                                                p_rate_limit pg_catalog.text,
                                                p_remaining pg_catalog.int8,
                                                p_refill pg_catalog.text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    k apikeys_internal.key_catalog;
    origins_given bool := p_allowed_origins IS NOT NULL;
    lim record;
    quota_removed bool := p_remaining = -1;
BEGIN
    k := apikeys_internal._key_for_update(p_caller, p_key_id);
    IF k.state = 'revoked' THEN
        RAISE EXCEPTION 'cannot update revoked api key "%"', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = 'Revocation is permanent.';
    END IF;
    PERFORM apikeys_internal._check_settings(p_name, p_scopes, p_expires_at, p_metadata, p_allowed_ips);
    p_allowed_origins := apikeys_internal._normalize_origins(p_allowed_origins);
    -- Every update renews the key for its current role, so the caller must
    -- be able to renew it there.  Moving it to another role needs, on top,
    -- the right to issue keys for that role.  An orphaned key (its role
    -- dropped) can only be given a new role by an admin.
    IF p_role IS NOT NULL AND NOT apikeys_internal._role_exists(k.role::oid)
       AND apikeys_internal._is_admin(p_caller) THEN
        NULL;
    ELSE
        PERFORM apikeys_internal._check_renew(p_caller, k.key_id, k.role);
    END IF;
    IF p_role IS NOT NULL THEN
        PERFORM apikeys_internal._check_role_grant(p_caller, p_role);
    END IF;
    -- re-scoping or moving a key that holds (or will hold) apikeys:manage
    IF p_scopes IS NOT NULL OR p_role IS NOT NULL THEN
        PERFORM apikeys_internal._check_manage_grant(p_caller, COALESCE(p_scopes, k.scopes));
    END IF;
    -- rate_limit => '' removes the limits, remaining => -1 the quota,
    -- refill => '' the refill; a new remaining re-bases the live quota
    lim := apikeys_internal._check_limits(p_rate_limit,
                                          CASE WHEN quota_removed THEN NULL ELSE p_remaining END,
                                          p_refill);
    IF p_remaining IS NULL AND lim.quota IS NOT NULL AND k.quota IS NOT NULL THEN
        lim.quota := NULL;          -- a new refill alone keeps the quota as it is
    END IF;
    UPDATE apikeys_internal.key_catalog c
       SET name = COALESCE(p_name, c.name),
           scopes = COALESCE(p_scopes, c.scopes),
           expires_at = CASE WHEN p_expires_at IS NULL THEN c.expires_at
                             WHEN p_expires_at = 'infinity' THEN NULL
                             ELSE p_expires_at END,
           metadata = COALESCE(p_metadata, c.metadata),
           role = COALESCE(p_role, c.role),
           allowed_ips = CASE WHEN p_allowed_ips IS NULL THEN c.allowed_ips
                              ELSE NULLIF(p_allowed_ips, '{}') END,
           allowed_origins = CASE WHEN origins_given THEN p_allowed_origins
                                  ELSE c.allowed_origins END,
           rate_limit = CASE WHEN p_rate_limit IS NULL THEN c.rate_limit
                             ELSE lim.rate_limit END,
           quota = CASE WHEN quota_removed THEN NULL
                        WHEN lim.quota IS NOT NULL THEN lim.quota
                        ELSE c.quota END,
           quota_refill = CASE WHEN quota_removed THEN NULL
                               WHEN p_refill IS NULL THEN c.quota_refill
                               ELSE lim.refill END,
           -- strictly later than the last setting: shared memory re-bases once
           quota_set_at = CASE WHEN quota_removed THEN NULL
                               WHEN lim.quota IS NOT NULL
                               THEN greatest(clock_timestamp(), c.quota_set_at + interval '1 microsecond')
                               ELSE c.quota_set_at END,
           updated_at = now()
     WHERE c.key_id = k.key_id;
END
$$;
COMMENT ON FUNCTION apikeys_internal._apikey_update(pg_catalog.oid, pg_catalog.text, pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.regrole, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text, pg_catalog.int8, pg_catalog.text) IS
    'internal half of apikey_update; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_update(pg_catalog.oid, pg_catalog.text, pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.regrole, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text, pg_catalog.int8, pg_catalog.text) FROM PUBLIC;

-------------------------------------------------------------------------------
-- 7. Lifecycle, public entry points (C, invoker rights; see src/lifecycle.c).
-- rotate, disable, enable, revoke and delete keep their 0.1.0 definitions.
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.apikey_create(name pg_catalog.text,
                                          role pg_catalog.regrole DEFAULT NULL,
                                          scopes pg_catalog.text[] DEFAULT '{}',
                                          expires_at pg_catalog.timestamptz DEFAULT NULL,
                                          prefix pg_catalog.text DEFAULT NULL,
                                          metadata pg_catalog.jsonb DEFAULT '{}',
                                          allowed_ips pg_catalog.cidr[] DEFAULT NULL,
                                          allowed_origins pg_catalog.text[] DEFAULT NULL,
                                          rate_limit pg_catalog.text DEFAULT NULL,
                                          remaining pg_catalog.int8 DEFAULT NULL,
                                          refill pg_catalog.text DEFAULT NULL,
                                          revealable pg_catalog.bool DEFAULT false)
RETURNS TABLE (key_id pg_catalog.text, token pg_catalog.text)
AS 'MODULE_PATHNAME', 'apikeys_create'
LANGUAGE C VOLATILE ROWS 1;
COMMENT ON FUNCTION @extschema@.apikey_create(pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text, pg_catalog.int8, pg_catalog.text, pg_catalog.bool) IS
    'creates a key for role (default: the calling role, which must be a member of it unless an admin); returns the token, shown this once; rate_limit (''100/second'', ''10/second burst 20, 5000/hour''), remaining (a quota of uses) and refill (''1000/day'', ''N/month on day D'') need shared_preload_libraries; revealable => true keeps the token sealed under the key-encryption key, for apikey_reveal';

CREATE FUNCTION @extschema@.apikey_update(key_id pg_catalog.text,
                                          name pg_catalog.text DEFAULT NULL,
                                          scopes pg_catalog.text[] DEFAULT NULL,
                                          expires_at pg_catalog.timestamptz DEFAULT NULL,
                                          metadata pg_catalog.jsonb DEFAULT NULL,
                                          role pg_catalog.regrole DEFAULT NULL,
                                          allowed_ips pg_catalog.cidr[] DEFAULT NULL,
                                          allowed_origins pg_catalog.text[] DEFAULT NULL,
                                          rate_limit pg_catalog.text DEFAULT NULL,
                                          remaining pg_catalog.int8 DEFAULT NULL,
                                          refill pg_catalog.text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_update(pg_catalog.text, pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.regrole, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text, pg_catalog.int8, pg_catalog.text) IS
    'changes a key''s settings; a null argument leaves that setting unchanged; expires_at => ''infinity'' removes the expiry, allowed_ips or allowed_origins => ''{}'' removes that restriction, rate_limit =>  the rate limits, remaining => -1 the quota, refill =>  the refill; remaining => N sets the uses left to N';

-------------------------------------------------------------------------------
-- 8. Verification (C, invoker rights, reads the catalog by direct index
-- scan).  It takes the client's address and web origin for keys restricted
-- to networks or origins, and the request's cost for rate limits and quotas.
-------------------------------------------------------------------------------
ALTER TYPE @extschema@.verification
    ADD ATTRIBUTE retry_after pg_catalog.interval,
    ADD ATTRIBUTE remaining pg_catalog.int8;
CREATE FUNCTION @extschema@.apikey_verify(token pg_catalog.text,
                                          scope pg_catalog.text DEFAULT NULL,
                                          client_ip pg_catalog.inet DEFAULT NULL,
                                          origin pg_catalog.text DEFAULT NULL,
                                          cost pg_catalog.int4 DEFAULT 1)
RETURNS @extschema@.verification
AS 'MODULE_PATHNAME', 'apikey_verify_text'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_verify(pg_catalog.text, pg_catalog.text, pg_catalog.inet, pg_catalog.text, pg_catalog.int4) IS
    'checks a token (optionally that the key has scope, and that client_ip and origin are allowed); a valid request spends cost (0: check only) of the key''s rate limits and quota; never raises for bad input: returns status invalid';

CREATE FUNCTION @extschema@.apikey_verify(token @extschema@.apikey,
                                          scope pg_catalog.text DEFAULT NULL,
                                          client_ip pg_catalog.inet DEFAULT NULL,
                                          origin pg_catalog.text DEFAULT NULL,
                                          cost pg_catalog.int4 DEFAULT 1)
RETURNS @extschema@.verification
AS 'MODULE_PATHNAME', 'apikey_verify_apikey'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_verify(@extschema@.apikey, pg_catalog.text, pg_catalog.inet, pg_catalog.text, pg_catalog.int4) IS
    'checks a parsed token (optionally that the key has scope, and that client_ip and origin are allowed); a valid request spends cost (0: check only) of the key''s rate limits and quota';

COMMENT ON TYPE @extschema@.verification IS
    'result of apikey_verify: status is valid, invalid, expired, disabled, revoked, ip_not_allowed, origin_not_allowed, insufficient_scope, rate_limited or quota_exceeded; key details are null when status is invalid; retry_after says when a rate-limited request (or an exhausted quota with a refill) can succeed; remaining is the quota left';

-------------------------------------------------------------------------------
-- 9. Keys as roles: apikey_login, the key context for policies, and the
-- PostgREST pre-request hook (C, invoker rights; see src/session.c).
--
-- apikey_login and pre_request do SET LOCAL ROLE, which PostgreSQL refuses
-- inside SECURITY DEFINER functions: they run as the caller, and the
-- session user must be a member of the key's role (as PostgREST's
-- authenticator is of the roles it switches to).  The key context lives in
-- backend memory, not in a setting: nothing a client SETs can forge it.
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.apikey_login(token pg_catalog.text,
                                         scope pg_catalog.text DEFAULT NULL,
                                         client_ip pg_catalog.inet DEFAULT NULL,
                                         origin pg_catalog.text DEFAULT NULL,
                                         cost pg_catalog.int4 DEFAULT 1)
RETURNS @extschema@.verification
AS 'MODULE_PATHNAME', 'apikey_login'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.apikey_login(pg_catalog.text, pg_catalog.text, pg_catalog.inet, pg_catalog.text, pg_catalog.int4) IS
    'verifies a token (spending cost of the key''s rate limits and quota), then SET LOCAL ROLE to the key''s role and records the key until the transaction ends; 28000 for a bad key, 42501 for a missing scope or a role the session user may not become, 53400 when over a rate limit or quota';

CREATE FUNCTION @extschema@.apikey_login(token @extschema@.apikey,
                                         scope pg_catalog.text DEFAULT NULL,
                                         client_ip pg_catalog.inet DEFAULT NULL,
                                         origin pg_catalog.text DEFAULT NULL,
                                         cost pg_catalog.int4 DEFAULT 1)
RETURNS @extschema@.verification
AS 'MODULE_PATHNAME', 'apikey_login_apikey'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.apikey_login(@extschema@.apikey, pg_catalog.text, pg_catalog.inet, pg_catalog.text, pg_catalog.int4) IS
    'apikey_login for a parsed token ($1::apikeys.apikey): a plan that holds the token prints it redacted';

-- The helpers are STABLE, so policies that use them can use indexes; a
-- login is therefore seen by the statements that follow it, not by the
-- statement that makes it.
CREATE FUNCTION @extschema@.apikey_current()
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikey_current'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.apikey_current() IS
    'key id this transaction logged in with (apikey_login, pre_request), or null; for row-level security policies';

CREATE FUNCTION @extschema@.apikey_has_scope(scope pg_catalog.text)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'apikey_has_scope'
LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.apikey_has_scope(pg_catalog.text) IS
    'does the key this transaction logged in with hold scope (''jobs:*'' holds ''jobs:read'', ''*'' holds all)? false without a login';

CREATE FUNCTION @extschema@.apikey_scopes()
RETURNS pg_catalog.text[]
AS 'MODULE_PATHNAME', 'apikey_scopes'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.apikey_scopes() IS
    'scopes of the key this transaction logged in with, or null';

CREATE FUNCTION @extschema@.apikey_metadata()
RETURNS pg_catalog.jsonb
AS 'MODULE_PATHNAME', 'apikey_metadata'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION @extschema@.apikey_metadata() IS
    'metadata of the key this transaction logged in with (a tenant id for policies, say), or null';

-- Route scopes: which scopes a key needs for a request, by HTTP method and
-- a LIKE pattern on the path PostgREST routes on (request.path decoded).  The table lives in the private schema
-- (no unprivileged role can lock it); pre_request reads it directly from C.
-- Admins manage it through the view apikeys.route_scopes.
CREATE TABLE apikeys_internal.route_scopes (
    method       pg_catalog.text COLLATE "C" NOT NULL DEFAULT '*',
    path_pattern pg_catalog.text COLLATE "C" NOT NULL,
    scope        pg_catalog.text COLLATE "C" NOT NULL,
    PRIMARY KEY (method, path_pattern, scope),
    CONSTRAINT route_scopes_method_check
        CHECK (method OPERATOR(pg_catalog.~) '^(\*|[A-Z]{1,20})$'),
    CONSTRAINT route_scopes_path_pattern_check
        CHECK (pg_catalog.left(path_pattern, 1) OPERATOR(pg_catalog.=) '/'
               AND pg_catalog.length(path_pattern) OPERATOR(pg_catalog.<=) 1000),
    CONSTRAINT route_scopes_scope_check
        CHECK (scope OPERATOR(pg_catalog.~) '^[^[:space:][:cntrl:]*]{1,128}$')
);
COMMENT ON TABLE apikeys_internal.route_scopes IS
    'scopes a key needs for a request, by method and path; read by pre_request, managed through apikeys.route_scopes';
COMMENT ON COLUMN apikeys_internal.route_scopes.method IS
    'HTTP method in upper case (GET, POST, ...; GET covers HEAD too), or * for every method';
COMMENT ON COLUMN apikeys_internal.route_scopes.path_pattern IS
    'LIKE pattern matched against the percent-decoded path PostgREST routes on (such as /orders or /rpc/%), starting with /';
COMMENT ON COLUMN apikeys_internal.route_scopes.scope IS
    'scope the key must hold (its own scopes may be wildcards); no * here';
SELECT pg_catalog.pg_extension_config_dump('apikeys_internal.route_scopes', '');
ALTER TABLE apikeys_internal.route_scopes ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys_internal.route_scopes FORCE ROW LEVEL SECURITY;
CREATE POLICY route_scopes_admin ON apikeys_internal.route_scopes
    FOR ALL
    USING (apikeys_internal._is_admin(apikeys_internal._current_role()))
    WITH CHECK (apikeys_internal._is_admin(apikeys_internal._current_role()));
COMMENT ON POLICY route_scopes_admin ON apikeys_internal.route_scopes IS
    'only admins (apikeys_admin members, superusers) read and change route scopes; pre_request reads them from C';
REVOKE ALL ON apikeys_internal.route_scopes FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON apikeys_internal.route_scopes TO apikeys_admin;

CREATE VIEW @extschema@.route_scopes WITH (security_invoker = true) AS
SELECT r.method, r.path_pattern, r.scope
  FROM apikeys_internal.route_scopes r;
COMMENT ON VIEW @extschema@.route_scopes IS
    'scopes pre_request requires by route: INSERT (method, path_pattern, scope) to make GET /orders demand orders:read; admins only';
COMMENT ON COLUMN @extschema@.route_scopes.method IS
    'HTTP method in upper case (GET, POST, ...; GET covers HEAD too), or * for every method (the default)';
COMMENT ON COLUMN @extschema@.route_scopes.path_pattern IS
    'LIKE pattern matched against the percent-decoded request path, such as /orders or /rpc/%';
COMMENT ON COLUMN @extschema@.route_scopes.scope IS
    'scope a key must hold for a matching request';
REVOKE ALL ON @extschema@.route_scopes FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON @extschema@.route_scopes TO apikeys_admin;

CREATE FUNCTION @extschema@.pre_request()
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_pre_request'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.pre_request() IS
    'PostgREST db-pre-request hook: logs in with the api key from request.headers (Authorization: Bearer or ApiKey, x-api-key, apikey) and enforces route scopes and apikeys.require_key; rejects with HTTP 401, 403 or 429 (RAISE SQLSTATE PGRST)';

-------------------------------------------------------------------------------
-- 10. Rate limits, quotas and usage (src/shmem.c, limits.c, usage.c,
-- worker.c).
--
-- Enforced and counted in shared memory (shared_preload_libraries =
-- 'apikeys'); the background worker writes usage and quota state into the
-- tables below, in transactions of its own, as the bootstrap superuser.  It
-- never updates the key catalog.  Users read through the views in schema
-- apikeys; the tables have row-level security enabled and forced.
-------------------------------------------------------------------------------
CREATE TABLE apikeys_internal.usage (
    key_id         pg_catalog.text COLLATE "C" PRIMARY KEY,
    uses           pg_catalog.int8 NOT NULL DEFAULT 0,
    failures       pg_catalog.int8 NOT NULL DEFAULT 0,
    rate_limited   pg_catalog.int8 NOT NULL DEFAULT 0,
    quota_exceeded pg_catalog.int8 NOT NULL DEFAULT 0,
    last_used_at   pg_catalog.timestamptz,
    updated_at     pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    hour                pg_catalog.timestamptz,
    hour_uses           pg_catalog.int8 NOT NULL DEFAULT 0,
    hour_failures       pg_catalog.int8 NOT NULL DEFAULT 0,
    hour_rate_limited   pg_catalog.int8 NOT NULL DEFAULT 0,
    hour_quota_exceeded pg_catalog.int8 NOT NULL DEFAULT 0
) WITH (fillfactor = 50);   -- room for HOT updates: the worker updates every active key's row
COMMENT ON TABLE apikeys_internal.usage IS
    'usage of each key as last flushed by the apikeys worker (shared memory holds what came since); read it through apikeys.usage';
COMMENT ON COLUMN apikeys_internal.usage.uses IS 'valid verifications';
COMMENT ON COLUMN apikeys_internal.usage.failures IS
    'verifications of this key id refused for a wrong secret, a dropped role, revocation, disabling, expiry, address, origin or scope';
COMMENT ON COLUMN apikeys_internal.usage.rate_limited IS 'verifications refused by a rate limit';
COMMENT ON COLUMN apikeys_internal.usage.quota_exceeded IS 'verifications refused by an exhausted quota';
COMMENT ON COLUMN apikeys_internal.usage.last_used_at IS 'last valid verification';
COMMENT ON COLUMN apikeys_internal.usage.updated_at IS 'last flush that changed the row';
COMMENT ON COLUMN apikeys_internal.usage.hour IS
    'the hour the hour_ counts belong to (the current one, or null): once it is over, the worker moves them to usage_hourly';
SELECT pg_catalog.pg_extension_config_dump('apikeys_internal.usage', '');
ALTER TABLE apikeys_internal.usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys_internal.usage FORCE ROW LEVEL SECURITY;
CREATE POLICY usage_admin ON apikeys_internal.usage
    FOR ALL
    USING (apikeys_internal._is_admin(apikeys_internal._current_role()))
    WITH CHECK (apikeys_internal._is_admin(apikeys_internal._current_role()));
-- the current hour's counts are read through apikeys.usage_hourly, as the
-- rows of usage_hourly are (same visibility)
CREATE POLICY usage_visible ON apikeys_internal.usage
    FOR SELECT
    USING (apikeys_internal._is_admin(apikeys_internal._current_role())
           OR EXISTS (SELECT 1 FROM apikeys_internal.key_catalog k
                       WHERE k.key_id OPERATOR(pg_catalog.=) usage.key_id));
REVOKE ALL ON apikeys_internal.usage FROM PUBLIC;
GRANT SELECT ON apikeys_internal.usage TO apikeys_admin;
GRANT SELECT (key_id, hour, hour_uses, hour_failures, hour_rate_limited, hour_quota_exceeded)
    ON apikeys_internal.usage TO PUBLIC;

CREATE TABLE apikeys_internal.usage_hourly (
    key_id         pg_catalog.text COLLATE "C" NOT NULL,
    hour           pg_catalog.timestamptz NOT NULL,
    uses           pg_catalog.int8 NOT NULL DEFAULT 0,
    failures       pg_catalog.int8 NOT NULL DEFAULT 0,
    rate_limited   pg_catalog.int8 NOT NULL DEFAULT 0,
    quota_exceeded pg_catalog.int8 NOT NULL DEFAULT 0,
    PRIMARY KEY (key_id, hour)
);
COMMENT ON TABLE apikeys_internal.usage_hourly IS
    'usage of each key per past hour, moved here by the apikeys worker from the hour_ counts of usage once the hour is over; kept for apikeys.usage_retention; read it through apikeys.usage_hourly';
COMMENT ON COLUMN apikeys_internal.usage_hourly.hour IS 'start of the hour (UTC-aligned)';
SELECT pg_catalog.pg_extension_config_dump('apikeys_internal.usage_hourly', '');
ALTER TABLE apikeys_internal.usage_hourly ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys_internal.usage_hourly FORCE ROW LEVEL SECURITY;
-- everyone sees the history of the keys they can see; admins all of it,
-- deleted keys included
CREATE POLICY usage_hourly_visible ON apikeys_internal.usage_hourly
    FOR SELECT
    USING (apikeys_internal._is_admin(apikeys_internal._current_role())
           OR EXISTS (SELECT 1 FROM apikeys_internal.key_catalog k
                       WHERE k.key_id OPERATOR(pg_catalog.=) usage_hourly.key_id));
CREATE POLICY usage_hourly_admin ON apikeys_internal.usage_hourly
    FOR ALL
    USING (apikeys_internal._is_admin(apikeys_internal._current_role()))
    WITH CHECK (apikeys_internal._is_admin(apikeys_internal._current_role()));
REVOKE ALL ON apikeys_internal.usage_hourly FROM PUBLIC;
GRANT SELECT ON apikeys_internal.usage_hourly TO PUBLIC;

CREATE TABLE apikeys_internal.quota_state (
    key_id       pg_catalog.text COLLATE "C" PRIMARY KEY,
    quota_set_at pg_catalog.timestamptz NOT NULL,
    remaining    pg_catalog.int8 NOT NULL,
    refilled_at  pg_catalog.timestamptz,
    updated_at   pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now()
);
COMMENT ON TABLE apikeys_internal.quota_state IS
    'remaining quota of each key as last flushed by the apikeys worker; shared memory starts from it after a restart; the listing shows the live value';
COMMENT ON COLUMN apikeys_internal.quota_state.quota_set_at IS
    'the key_catalog.quota_set_at this count descends from; an older one is ignored';
COMMENT ON COLUMN apikeys_internal.quota_state.refilled_at IS 'start of the refill period last applied';
SELECT pg_catalog.pg_extension_config_dump('apikeys_internal.quota_state', '');
ALTER TABLE apikeys_internal.quota_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys_internal.quota_state FORCE ROW LEVEL SECURITY;
CREATE POLICY quota_state_admin ON apikeys_internal.quota_state
    FOR ALL
    USING (apikeys_internal._is_admin(apikeys_internal._current_role()))
    WITH CHECK (apikeys_internal._is_admin(apikeys_internal._current_role()));
REVOKE ALL ON apikeys_internal.quota_state FROM PUBLIC;
GRANT SELECT ON apikeys_internal.quota_state TO apikeys_admin;

-- Limits shared by every key of a role, on top of each key's own.
CREATE TABLE apikeys_internal.role_limits (
    role       pg_catalog.regrole PRIMARY KEY,
    rate_limit pg_catalog.text[] NOT NULL,
    set_at     pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    set_by     pg_catalog.regrole NOT NULL
);
COMMENT ON TABLE apikeys_internal.role_limits IS
    'rate limits shared by all keys of a role, set by apikey_set_role_limit; read by verify from a per-backend copy refreshed at commit';
COMMENT ON COLUMN apikeys_internal.role_limits.rate_limit IS 'normalized rate limits, all of which a request must fit';
SELECT pg_catalog.pg_extension_config_dump('apikeys_internal.role_limits', '');
ALTER TABLE apikeys_internal.role_limits ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys_internal.role_limits FORCE ROW LEVEL SECURITY;
CREATE POLICY role_limits_visible ON apikeys_internal.role_limits
    FOR SELECT
    USING (apikeys_internal._may_act_for(apikeys_internal._current_role(), role::pg_catalog.oid));
CREATE POLICY role_limits_admin ON apikeys_internal.role_limits
    FOR ALL
    USING (apikeys_internal._is_admin(apikeys_internal._current_role()))
    WITH CHECK (apikeys_internal._is_admin(apikeys_internal._current_role()));
REVOKE ALL ON apikeys_internal.role_limits FROM PUBLIC;
GRANT SELECT ON apikeys_internal.role_limits TO PUBLIC;

-- Ordinary DML sends no relcache invalidation: this trigger registers one,
-- sent at commit and replayed on standbys, so every backend drops its copy.
CREATE FUNCTION apikeys_internal._role_limits_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'apikeys_role_limits_changed'
LANGUAGE C;
COMMENT ON FUNCTION apikeys_internal._role_limits_changed() IS
    'trigger: registers a relcache invalidation of role_limits, so that every backend reloads role limits when the change commits';
REVOKE ALL ON FUNCTION apikeys_internal._role_limits_changed() FROM PUBLIC;
-- Row triggers, enabled always: a logical replication subscriber applies
-- rows (and fires no statement trigger but TRUNCATE's), and its sessions
-- must see the change too.
CREATE TRIGGER role_limits_invalidate
    AFTER INSERT OR UPDATE OR DELETE ON apikeys_internal.role_limits
    FOR EACH ROW EXECUTE FUNCTION apikeys_internal._role_limits_changed();
CREATE TRIGGER role_limits_invalidate_truncate
    AFTER TRUNCATE ON apikeys_internal.role_limits
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys_internal._role_limits_changed();
ALTER TABLE apikeys_internal.role_limits ENABLE ALWAYS TRIGGER role_limits_invalidate;
ALTER TABLE apikeys_internal.role_limits ENABLE ALWAYS TRIGGER role_limits_invalidate_truncate;

CREATE FUNCTION apikeys_internal._apikey_set_role_limit(p_caller pg_catalog.oid,
                                                        p_role pg_catalog.regrole,
                                                        p_rate_limit pg_catalog.text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    old_limit text[];
    new_limit text[];
BEGIN
    IF p_role IS NULL THEN
        RAISE EXCEPTION 'role must not be null'
            USING ERRCODE = '22004';
    END IF;
    IF NOT apikeys_internal._is_admin(p_caller) THEN
        RAISE EXCEPTION 'permission denied to set the rate limit of role %', p_role
            USING ERRCODE = '42501',
                  HINT = 'Only members of apikeys_admin and superusers set limits shared by the keys of a role.';
    END IF;
    IF NOT apikeys_internal._role_exists(p_role::oid) THEN
        RAISE EXCEPTION 'role with oid % does not exist', p_role::oid
            USING ERRCODE = '42704';
    END IF;
    new_limit := apikeys_internal._rate_limit_normalize(p_rate_limit);
    SELECT r.rate_limit INTO old_limit FROM apikeys_internal.role_limits r
     WHERE r.role = p_role FOR UPDATE;
    IF old_limit IS NOT DISTINCT FROM new_limit THEN
        RETURN;
    END IF;
    IF new_limit IS NULL THEN
        DELETE FROM apikeys_internal.role_limits r WHERE r.role = p_role;
    ELSE
        PERFORM apikeys_internal._require_limits(true, false);
        INSERT INTO apikeys_internal.role_limits AS r (role, rate_limit, set_by)
        VALUES (p_role, new_limit, p_caller::regrole)
        ON CONFLICT (role) DO UPDATE
           SET rate_limit = excluded.rate_limit, set_at = clock_timestamp(), set_by = excluded.set_by;
    END IF;
    INSERT INTO apikeys_internal.audit_log (action, key_id, actor, actor_role, key_role, changes)
    VALUES ('set_role_limit', NULL, session_user, pg_get_userbyid(p_caller), p_role,
            jsonb_build_object('rate_limit', jsonb_build_object('old', to_jsonb(old_limit),
                                                                'new', to_jsonb(new_limit))));
END
$$;
COMMENT ON FUNCTION apikeys_internal._apikey_set_role_limit(pg_catalog.oid, pg_catalog.regrole, pg_catalog.text) IS
    'internal half of apikey_set_role_limit; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_set_role_limit(pg_catalog.oid, pg_catalog.regrole, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION @extschema@.apikey_set_role_limit(role pg_catalog.regrole,
                                                  rate_limit pg_catalog.text)
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_set_role_limit(pg_catalog.regrole, pg_catalog.text) IS
    'sets rate limits shared by all keys of role, on top of each key''s own (''1000/minute'', several separated by commas); null or '''' removes them; admins only; audited';

CREATE VIEW @extschema@.role_limits WITH (security_invoker = true) AS
SELECT r.role, r.rate_limit, r.set_at, r.set_by
  FROM apikeys_internal.role_limits r;
COMMENT ON VIEW @extschema@.role_limits IS
    'rate limits shared by all keys of a role, for the roles the current role may issue keys for (admins: all)';
GRANT SELECT ON @extschema@.role_limits TO PUBLIC;

-- Usage: flushed plus live counts.
CREATE FUNCTION apikeys_internal._usage(OUT key_id pg_catalog.text,
                                        OUT uses pg_catalog.int8,
                                        OUT failures pg_catalog.int8,
                                        OUT rate_limited pg_catalog.int8,
                                        OUT quota_exceeded pg_catalog.int8,
                                        OUT last_used_at pg_catalog.timestamptz,
                                        OUT unflushed pg_catalog.int8)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'apikeys_usage'
LANGUAGE C VOLATILE PARALLEL RESTRICTED;
COMMENT ON FUNCTION apikeys_internal._usage() IS
    'internal: usage of every key of this database, flushed plus live, each request counted once; raises 55000 when usage is unavailable';

-- security_barrier: a caller's own conditions are applied after the join
-- with the keys the caller may see, never to other keys' rows.
CREATE VIEW @extschema@.usage WITH (security_invoker = true, security_barrier = true) AS
SELECT k.key_id,
       COALESCE(u.uses, 0) AS uses,
       COALESCE(u.failures, 0) AS failures,
       COALESCE(u.rate_limited, 0) AS rate_limited,
       COALESCE(u.quota_exceeded, 0) AS quota_exceeded,
       u.last_used_at,
       apikeys_internal._remaining(k.key_id, k.quota, k.quota_refill, k.quota_set_at) AS remaining,
       COALESCE(u.unflushed, 0) AS unflushed
  FROM apikeys_internal.key_catalog k
  LEFT JOIN apikeys_internal._usage() u ON u.key_id OPERATOR(pg_catalog.=) k.key_id;
COMMENT ON VIEW @extschema@.usage IS
    'usage of the keys visible to the current role, live: what the worker flushed plus what shared memory counted since (on a hot standby: the primary''s flushed counts plus this node''s own); raises when usage is unavailable (apikeys not preloaded, or not the database named by apikeys.database)';
COMMENT ON COLUMN @extschema@.usage.uses IS 'valid verifications';
COMMENT ON COLUMN @extschema@.usage.failures IS
    'verifications refused for a wrong secret, a dropped role, revocation, disabling, expiry, address, origin or scope';
COMMENT ON COLUMN @extschema@.usage.rate_limited IS 'verifications refused by a rate limit';
COMMENT ON COLUMN @extschema@.usage.quota_exceeded IS 'verifications refused by an exhausted quota';
COMMENT ON COLUMN @extschema@.usage.last_used_at IS 'last valid verification';
COMMENT ON COLUMN @extschema@.usage.remaining IS 'uses left of the quota (null: no quota)';
COMMENT ON COLUMN @extschema@.usage.unflushed IS
    'verifications counted in shared memory and not yet written by the worker (a crash loses them)';
GRANT SELECT ON @extschema@.usage TO PUBLIC;

CREATE VIEW @extschema@.usage_hourly WITH (security_invoker = true) AS
SELECT h.key_id, h.hour, h.uses, h.failures, h.rate_limited, h.quota_exceeded
  FROM apikeys_internal.usage_hourly h
UNION ALL
-- the current hour, kept in each key's usage row until it is over
SELECT u.key_id, u.hour, u.hour_uses, u.hour_failures, u.hour_rate_limited,
       u.hour_quota_exceeded
  FROM apikeys_internal.usage u
 WHERE u.hour IS NOT NULL
   AND (u.hour_uses OPERATOR(pg_catalog.+) u.hour_failures
        OPERATOR(pg_catalog.+) u.hour_rate_limited
        OPERATOR(pg_catalog.+) u.hour_quota_exceeded) OPERATOR(pg_catalog.>) 0;
COMMENT ON VIEW @extschema@.usage_hourly IS
    'usage per key and hour as flushed by the worker, for reports and billing (admins: every key, deleted ones included; others: the keys they can see); kept for apikeys.usage_retention';
GRANT SELECT ON @extschema@.usage_hourly TO PUBLIC;

CREATE FUNCTION @extschema@.usage_stats(OUT tracked pg_catalog.int4,
                                        OUT capacity pg_catalog.int4,
                                        OUT untracked pg_catalog.int8,
                                        OUT refused pg_catalog.int8,
                                        OUT evicted pg_catalog.int8,
                                        OUT flushes pg_catalog.int8,
                                        OUT flush_failures pg_catalog.int8,
                                        OUT last_flush pg_catalog.timestamptz,
                                        OUT database pg_catalog.text,
                                        OUT worker_running pg_catalog.bool)
RETURNS record
AS 'MODULE_PATHNAME', 'apikeys_usage_stats'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.usage_stats() IS
    'shared memory of limits and usage, for the whole server: keys and roles tracked, capacity (apikeys.max_tracked_keys), verifications not counted and limited requests refused because it (or the share of the key''s role or database) was full, entries freed, flushes and failed flushes of the worker, its last flush, the database it serves and whether it runs';

-------------------------------------------------------------------------------
-- 10b. Proving the audit log (README, "Audit"): verify the chain from its
-- anchor to its head, export the head, purge old rows behind an anchor.
-- Admins only: they read every row (SECURITY DEFINER, as the owner).
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.audit_verify_detail(known_seq pg_catalog.int8 DEFAULT NULL,
                                                known_hash pg_catalog.text DEFAULT NULL,
                                                OUT ok pg_catalog.bool,
                                                OUT rows_checked pg_catalog.int8,
                                                OUT first_bad_seq pg_catalog.int8,
                                                OUT problem pg_catalog.text)
RETURNS record
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    head        apikeys_internal.audit_chain;
    r           record;
    expect_seq  int8;
    expect_prev bytea;
    known       bytea := decode(known_hash, 'hex');
    known_found bool := false;
BEGIN
    IF apikeys_internal._key_session() IS NOT NULL THEN
        RAISE EXCEPTION 'audit_verify_detail is not allowed while an api key is logged in'
            USING ERRCODE = '42501',
                  DETAIL = format('This transaction logged in with api key %s, and a key never reads the audit chain, not even after RESET ROLE.',
                                  apikeys_internal._key_session()),
                  HINT = 'Read the chain in a transaction that has not logged in with a key.';
    END IF;
    ok := false;
    rows_checked := 0;
    PERFORM apikeys_internal._audit_chain_flush();
    SELECT * INTO STRICT head FROM apikeys_internal.audit_chain c;
    IF known_seq IS NOT NULL AND known_seq > head.seq THEN
        first_bad_seq := head.seq + 1;
        problem := format('the chain ends at row %s, before the exported head %s', head.seq, known_seq);
        RETURN;
    END IF;
    IF known_seq IS NOT NULL AND known_seq <= head.anchor_seq THEN
        -- purged since: only the anchor itself can still be compared
        known_found := known_seq < head.anchor_seq OR head.anchor_hash = known;
        IF NOT known_found THEN
            first_bad_seq := known_seq;
            problem := format('the anchor (row %s) does not match the exported head', known_seq);
            RETURN;
        END IF;
    END IF;
    expect_seq := head.anchor_seq + 1;
    expect_prev := head.anchor_hash;
    FOR r IN SELECT a.seq, a.at, a.txid, a.action, a.key_id, a.actor, a.actor_role,
                    a.key_role_name, a.changes, a.prev_hash, a.row_hash
               FROM apikeys_internal.audit_log a ORDER BY a.seq NULLS FIRST LOOP
        IF r.seq IS NULL OR r.row_hash IS NULL OR r.prev_hash IS NULL THEN
            problem := format('a row outside the chain (%s %s at %s) was inserted behind the triggers',
                              r.action, coalesce(r.key_id, '-'), r.at);
            RETURN;
        ELSIF r.seq < expect_seq THEN
            first_bad_seq := r.seq;
            problem := format('row %s lies before the anchor (row %s)', r.seq, head.anchor_seq);
            RETURN;
        ELSIF r.seq > expect_seq THEN
            first_bad_seq := expect_seq;
            problem := CASE WHEN r.seq = expect_seq + 1 THEN format('row %s is missing', expect_seq)
                            ELSE format('rows %s to %s are missing', expect_seq, r.seq - 1) END;
            RETURN;
        ELSIF r.prev_hash IS DISTINCT FROM expect_prev THEN
            first_bad_seq := r.seq;
            problem := format('row %s does not link to the row before it', r.seq);
            RETURN;
        ELSIF r.row_hash IS DISTINCT FROM apikeys_internal._audit_row_hash(r.prev_hash, r.seq, r.at, r.txid,
                  r.action, r.key_id, r.actor, r.actor_role, r.key_role_name, r.changes) THEN
            first_bad_seq := r.seq;
            problem := format('row %s was changed after it was written', r.seq);
            RETURN;
        END IF;
        IF r.seq = known_seq THEN
            IF r.row_hash IS DISTINCT FROM known THEN
                first_bad_seq := r.seq;
                problem := format('row %s does not match the exported head', r.seq);
                RETURN;
            END IF;
            known_found := true;
        END IF;
        expect_prev := r.row_hash;
        expect_seq := expect_seq + 1;
        rows_checked := rows_checked + 1;
    END LOOP;
    IF expect_seq - 1 <> head.seq OR expect_prev IS DISTINCT FROM head.hash THEN
        first_bad_seq := expect_seq;
        problem := format('the chain ends at row %s but its head is row %s', expect_seq - 1, head.seq);
        RETURN;
    END IF;
    IF known_seq IS NOT NULL AND NOT known_found THEN
        first_bad_seq := known_seq;
        problem := format('row %s of the exported head is missing', known_seq);
        RETURN;
    END IF;
    ok := true;
END
$$;
COMMENT ON FUNCTION @extschema@.audit_verify_detail(pg_catalog.int8, pg_catalog.text) IS
    'checks the audit chain from its anchor to its head (and, given a head exported by audit_head, that it is still there): ok, rows checked, the first broken row and what is wrong with it; admins only';
REVOKE ALL ON FUNCTION @extschema@.audit_verify_detail(pg_catalog.int8, pg_catalog.text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.audit_verify_detail(pg_catalog.int8, pg_catalog.text) TO apikeys_admin;

CREATE FUNCTION @extschema@.audit_verify(known_seq pg_catalog.int8 DEFAULT NULL,
                                         known_hash pg_catalog.text DEFAULT NULL)
RETURNS pg_catalog.bool
LANGUAGE sql VOLATILE
AS $$
    SELECT (@extschema@.audit_verify_detail(known_seq, known_hash)).ok
$$;
COMMENT ON FUNCTION @extschema@.audit_verify(pg_catalog.int8, pg_catalog.text) IS
    'true when no audit row was changed, removed, inserted or reordered behind the triggers (and the exported head, if given, is still in the chain); admins only';
REVOKE ALL ON FUNCTION @extschema@.audit_verify(pg_catalog.int8, pg_catalog.text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.audit_verify(pg_catalog.int8, pg_catalog.text) TO apikeys_admin;

CREATE FUNCTION @extschema@.audit_head(OUT seq pg_catalog.int8, OUT hash pg_catalog.text,
                                       OUT at pg_catalog.timestamptz)
RETURNS record
LANGUAGE plpgsql VOLATILE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF apikeys_internal._key_session() IS NOT NULL THEN
        RAISE EXCEPTION 'audit_head is not allowed while an api key is logged in'
            USING ERRCODE = '42501',
                  DETAIL = format('This transaction logged in with api key %s, and a key never reads the audit chain, not even after RESET ROLE.',
                                  apikeys_internal._key_session()),
                  HINT = 'Read the chain in a transaction that has not logged in with a key.';
    END IF;
    PERFORM apikeys_internal._audit_chain_flush();
    SELECT c.seq, encode(c.hash, 'hex'), (SELECT a.at FROM apikeys_internal.audit_log a WHERE a.seq = c.seq)
      INTO seq, hash, at
      FROM apikeys_internal.audit_chain c;
END
$$;
COMMENT ON FUNCTION @extschema@.audit_head() IS
    'the audit chain''s head (last seq, its hash in hex, when it was written): keep it outside the database, and later pass it to audit_verify to prove nothing up to it changed; admins only';
REVOKE ALL ON FUNCTION @extschema@.audit_head() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.audit_head() TO apikeys_admin;

CREATE FUNCTION apikeys_internal._audit_purge(p_caller pg_catalog.oid, p_older_than pg_catalog.interval)
RETURNS pg_catalog.int8
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    head    apikeys_internal.audit_chain;
    check_r record;
    upto    int8;
    upto_h  bytea;
    removed int8;
    -- the cutoff is taken when the call starts, not after the check below
    cutoff  timestamptz := clock_timestamp() - p_older_than;
BEGIN
    IF NOT apikeys_internal._is_admin(p_caller) THEN
        RAISE EXCEPTION 'permission denied to purge the audit log'
            USING ERRCODE = '42501',
                  HINT = 'Only members of apikeys_admin and superusers purge the audit log.';
    END IF;
    IF p_older_than IS NULL OR p_older_than < interval '0' THEN
        RAISE EXCEPTION 'older_than must be a positive interval'
            USING ERRCODE = '22023';
    END IF;
    -- the lock every append takes (src/chain.c), then the head as it is
    LOCK TABLE apikeys_internal.audit_chain IN SHARE ROW EXCLUSIVE MODE;
    PERFORM apikeys_internal._audit_chain_flush();
    SELECT * INTO STRICT head FROM apikeys_internal.audit_chain c;
    -- never erase the evidence of tampering
    check_r := @extschema@.audit_verify_detail();
    IF NOT check_r.ok THEN
        RAISE EXCEPTION 'the audit chain is broken: %', check_r.problem
            USING ERRCODE = '55000',
                  HINT = 'Keep the log as evidence; apikeys.audit_verify_detail() names the first broken row.';
    END IF;
    -- the longest run of rows from the anchor all older than the cutoff
    SELECT coalesce(min(a.seq) - 1, head.seq) INTO upto
      FROM apikeys_internal.audit_log a
     WHERE a.at >= cutoff;
    IF upto <= head.anchor_seq THEN
        RETURN 0::int8;
    END IF;
    SELECT a.row_hash INTO STRICT upto_h FROM apikeys_internal.audit_log a WHERE a.seq = upto;
    UPDATE apikeys_internal.audit_chain c SET purge_xid = pg_current_xact_id(), purge_upto = upto;
    DELETE FROM apikeys_internal.audit_log a WHERE a.seq <= upto;
    GET DIAGNOSTICS removed = ROW_COUNT;
    UPDATE apikeys_internal.audit_chain c
       SET anchor_seq = upto, anchor_hash = upto_h, purge_xid = NULL, purge_upto = NULL;
    INSERT INTO apikeys_internal.audit_log (action, key_id, actor, actor_role, key_role, changes)
    VALUES ('purge', NULL, session_user, pg_get_userbyid(p_caller), NULL,
            jsonb_build_object('older_than', p_older_than::text, 'removed', removed,
                               'through_seq', upto, 'anchor_hash', encode(upto_h, 'hex')));
    RETURN removed;
END
$$;
COMMENT ON FUNCTION apikeys_internal._audit_purge(pg_catalog.oid, pg_catalog.interval) IS
    'internal half of audit_purge; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._audit_purge(pg_catalog.oid, pg_catalog.interval) FROM PUBLIC;

CREATE FUNCTION @extschema@.audit_purge(older_than pg_catalog.interval)
RETURNS pg_catalog.int8
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.audit_purge(pg_catalog.interval) IS
    'removes the audit rows older than older_than (from the oldest up to the first newer row), anchors the chain on the last row removed and audits the purge; refuses a broken chain; admins only; returns the rows removed';

-------------------------------------------------------------------------------
-- 10c. Expiry and stale keys, for dashboards and clean-up jobs.
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.expiring(within pg_catalog.interval DEFAULT '7 days')
RETURNS SETOF @extschema@.keys
LANGUAGE sql STABLE
AS $$
    SELECT k.* FROM @extschema@.keys k
     WHERE k.status OPERATOR(pg_catalog.=) 'active'
       AND k.expires_at OPERATOR(pg_catalog.<=) (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.+) within)
     ORDER BY k.expires_at
$$;
COMMENT ON FUNCTION @extschema@.expiring(pg_catalog.interval) IS
    'active keys visible to the current role that expire within the interval (default 7 days), soonest first';

CREATE FUNCTION @extschema@.stale(unused_for pg_catalog.interval)
RETURNS SETOF @extschema@.keys
LANGUAGE sql STABLE
AS $$
    SELECT k.* FROM @extschema@.keys k
     WHERE k.status OPERATOR(pg_catalog.<>) 'revoked'
       AND COALESCE(k.last_used_at, k.created_at)
           OPERATOR(pg_catalog.<) (pg_catalog.clock_timestamp() OPERATOR(pg_catalog.-) unused_for)
     ORDER BY COALESCE(k.last_used_at, k.created_at)
$$;
COMMENT ON FUNCTION @extschema@.stale(pg_catalog.interval) IS
    'keys visible to the current role, not revoked, with no valid verification for unused_for (never used: since created), least recently used first; last use as counted by usage (apikeys.database, preloading)';

-------------------------------------------------------------------------------
-- 11. The result type.  It is a composite type, so a relation in schema
-- apikeys: a role that could hold a lock on it for long (CREATE TABLE ... OF
-- it, in an open transaction) while queueing CREATE RULE on it could stall
-- every backend that loads the type.  Only the creation of objects of the
-- type needs USAGE; calling apikey_verify and reading its fields do not.
-------------------------------------------------------------------------------
REVOKE USAGE ON TYPE @extschema@.verification FROM PUBLIC;

-------------------------------------------------------------------------------
-- 12. Privileges saved at the top of this script, applied to the objects
-- that replaced the 0.1.0 ones (an object a DBA never touched keeps the new
-- defaults).
-------------------------------------------------------------------------------
DO $do$
DECLARE
    saved pg_catalog.jsonb := pg_catalog.current_setting('apikeys_upgrade.acl')::pg_catalog.jsonb;
    o record;
    a record;
BEGIN
    FOR o IN SELECT * FROM (VALUES
        ('apikey_create', 'FUNCTION @extschema@.apikey_create(pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text, pg_catalog.int8, pg_catalog.text, pg_catalog.bool)', 'EXECUTE'),
        ('apikey_update', 'FUNCTION @extschema@.apikey_update(pg_catalog.text, pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.regrole, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text, pg_catalog.int8, pg_catalog.text)', 'EXECUTE'),
        ('apikey_verify_text', 'FUNCTION @extschema@.apikey_verify(pg_catalog.text, pg_catalog.text, pg_catalog.inet, pg_catalog.text, pg_catalog.int4)', 'EXECUTE'),
        ('apikey_verify_apikey', 'FUNCTION @extschema@.apikey_verify(@extschema@.apikey, pg_catalog.text, pg_catalog.inet, pg_catalog.text, pg_catalog.int4)', 'EXECUTE'),
        ('keys', 'TABLE @extschema@.keys', 'SELECT'),
        ('audit_log', 'TABLE @extschema@.audit_log', 'SELECT')) AS t(name, object, privilege)
    LOOP
        CONTINUE WHEN NOT saved OPERATOR(pg_catalog.?) o.name;
        EXECUTE pg_catalog.format('REVOKE ALL ON %s FROM PUBLIC', o.object);
        FOR a IN SELECT e.grantee, e.is_grantable
                   FROM pg_catalog.aclexplode((saved OPERATOR(pg_catalog.->>) o.name)::pg_catalog.aclitem[]) e
                  WHERE e.privilege_type OPERATOR(pg_catalog.=) o.privilege LOOP
            EXECUTE pg_catalog.format('GRANT %s ON %s TO %s%s', o.privilege, o.object,
                CASE WHEN a.grantee OPERATOR(pg_catalog.=) 0 THEN 'PUBLIC'
                     ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(a.grantee)) END,
                CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' ELSE '' END);
        END LOOP;
    END LOOP;
END
$do$;

-------------------------------------------------------------------------------
-- 12. Leak response (src/leak.c).
--
-- apikey_check answers from the token alone (grammar and checksum), as a
-- leak scanner does offline.  apikey_report_leak is for whoever holds a
-- token, whatever their role (a secret scanner's endpoint): a live secret
-- revokes its key at once, the audit row says revoke_leak with the reporter
-- and the source, and a NOTIFY on channel apikeys goes out at commit.
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.apikey_check(token pg_catalog.text)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'apikey_check'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON COLUMN apikeys_internal.audit_log.action IS
    'create, rotate, disable, enable, revoke, update or delete; import for apikey_import; seal and reveal for revealable keys; request, approve, reject, cancel and claim for the approval workflow; revoke_leak for a revocation by apikey_report_leak (changes -> leak -> source); direct_insert, direct_update or direct_delete for changes made to the catalog outside the apikeys functions';

COMMENT ON FUNCTION @extschema@.apikey_check(pg_catalog.text) IS
    'is the text a well-formed api key token with a matching checksum? offline: reads no table, says nothing about the key';

-- Append an audit row for an event that changes no catalog row (a reveal, a
-- request, a report about a revoked key): the caller and the session user
-- as actors, as the audit trigger records them.
CREATE FUNCTION apikeys_internal._audit_append(p_caller pg_catalog.oid,
                                               p_action pg_catalog.text,
                                               p_key_id pg_catalog.text,
                                               p_key_role pg_catalog.regrole,
                                               p_changes pg_catalog.jsonb)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $$
    INSERT INTO apikeys_internal.audit_log (action, key_id, actor, actor_role, key_role, changes)
    VALUES (p_action, p_key_id, session_user, pg_get_userbyid(p_caller), p_key_role,
            COALESCE(p_changes, '{}'))
$$;
COMMENT ON FUNCTION apikeys_internal._audit_append(pg_catalog.oid, pg_catalog.text, pg_catalog.text, pg_catalog.regrole, pg_catalog.jsonb) IS
    'internal: appends an audit row for an event that changes no key row (the first argument is the calling role)';
REVOKE ALL ON FUNCTION apikeys_internal._audit_append(pg_catalog.oid, pg_catalog.text, pg_catalog.text, pg_catalog.regrole, pg_catalog.jsonb) FROM PUBLIC;

-- The caller (src/leak.c) has verified the token; the secret's digest is
-- checked again here under the row lock, so a rotation that committed in
-- between wins.  Returns revoked, already_revoked or invalid.
CREATE FUNCTION apikeys_internal._apikey_report_leak(p_caller pg_catalog.oid,
                                                     p_key_id pg_catalog.text,
                                                     p_digest pg_catalog.bytea)
RETURNS pg_catalog.text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    k apikeys_internal.key_catalog;
BEGIN
    SELECT * INTO k FROM apikeys_internal.key_catalog c
     WHERE c.key_id = p_key_id COLLATE "C"
       FOR UPDATE;
    IF NOT FOUND THEN
        RETURN 'invalid';
    END IF;
    -- (under each hash's scheme, src/pepper.c; IS NOT TRUE: a key without
    -- a previous secret compares null there)
    IF (apikeys_internal._hash_matches(k.key_id, p_digest, k.hash_version, k.pepper_id, k.hash)
        OR (k.prev_valid_until > clock_timestamp()
            AND apikeys_internal._hash_matches(k.key_id, p_digest, k.prev_hash_version,
                                               k.prev_pepper_id, k.prev_hash))) IS NOT TRUE THEN
        RETURN 'invalid';
    END IF;
    IF k.state = 'revoked' THEN
        RETURN 'already_revoked';   -- nothing to do, nothing to record
    END IF;
    UPDATE apikeys_internal.key_catalog c
       SET state = 'revoked', revoked_at = now(),
           prev_hash_version = NULL, prev_hash = NULL, prev_pepper_id = NULL,
           prev_valid_until = NULL,
           updated_at = now()
     WHERE c.key_id = k.key_id;
    DELETE FROM apikeys_internal.revealable_secrets r WHERE r.key_id = k.key_id;
    -- (NOTIFY apikeys comes from the audit row's chain trigger, at commit)
    RETURN 'revoked';
END
$$;
COMMENT ON FUNCTION apikeys_internal._apikey_report_leak(pg_catalog.oid, pg_catalog.text, pg_catalog.bytea) IS
    'internal half of apikey_report_leak: revokes the key if the digest is one of its live secrets; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_report_leak(pg_catalog.oid, pg_catalog.text, pg_catalog.bytea) FROM PUBLIC;

CREATE FUNCTION @extschema@.apikey_report_leak(token pg_catalog.text,
                                               source pg_catalog.text DEFAULT NULL)
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikey_report_leak'
LANGUAGE C VOLATILE PARALLEL UNSAFE;
COMMENT ON FUNCTION @extschema@.apikey_report_leak(pg_catalog.text, pg_catalog.text) IS
    'reports a leaked token: for anyone holding it; revokes its key at once (audit action revoke_leak with reporter and source, NOTIFY apikeys at commit) and returns revoked, already_revoked, or invalid for anything that is not a live secret';

-------------------------------------------------------------------------------
-- 13. Approval workflow: request, approve or reject, claim (src/request.c).
--
-- A role that may not create keys itself (apikey_create revoked from
-- PUBLIC) asks for one with apikey_request; an admin, or a member of the
-- role named by apikeys.approver_role, approves it (possibly narrowing its
-- scopes and expiry) or rejects it; the requester claims the token once,
-- within the claim period.  The token is minted at claim time: no secret is
-- ever stored.  A request is named by the key id its key will have, so the
-- audit log holds the key's history from its request on.
-------------------------------------------------------------------------------
CREATE TABLE apikeys_internal.key_requests (
    key_id              pg_catalog.text COLLATE "C" NOT NULL,
    name                pg_catalog.text NOT NULL,
    prefix              pg_catalog.text COLLATE "C" NOT NULL,
    role                pg_catalog.regrole NOT NULL,
    scopes              pg_catalog.text[] NOT NULL DEFAULT '{}',
    expires_at          pg_catalog.timestamptz,
    metadata            pg_catalog.jsonb NOT NULL DEFAULT '{}',
    allowed_ips         pg_catalog.cidr[],
    allowed_origins     pg_catalog.text[],
    reason              pg_catalog.text,
    state               pg_catalog.text NOT NULL DEFAULT 'pending',
    requested_by        pg_catalog.regrole NOT NULL,
    requested_at        pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    decided_by          pg_catalog.regrole,
    decided_at          pg_catalog.timestamptz,
    decision_note       pg_catalog.text,
    approved_scopes     pg_catalog.text[],
    approved_expires_at pg_catalog.timestamptz,
    claim_by            pg_catalog.timestamptz,
    claimed_at          pg_catalog.timestamptz,
    requested_session   pg_catalog.regrole NOT NULL,
    requested_key       pg_catalog.text COLLATE "C",
    CONSTRAINT key_requests_pkey PRIMARY KEY (key_id),
    CONSTRAINT key_requests_key_id_check
        CHECK (key_id OPERATOR(pg_catalog.~) '^[0-9A-Za-z]{12}$'),
    CONSTRAINT key_requests_prefix_check
        CHECK (prefix OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_]{0,19}$'),
    CONSTRAINT key_requests_state_check
        CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['pending', 'approved', 'rejected', 'cancelled', 'claimed'])),
    CONSTRAINT key_requests_approved_check
        CHECK ((state OPERATOR(pg_catalog.<>) ALL (ARRAY['approved', 'claimed']))
               OR (approved_scopes IS NOT NULL AND claim_by IS NOT NULL))
);
CREATE INDEX key_requests_pending_idx ON apikeys_internal.key_requests (requested_by)
    WHERE state OPERATOR(pg_catalog.=) 'pending';
COMMENT ON TABLE apikeys_internal.key_requests IS
    'api key requests: what was asked for, decided and claimed; never a secret (the token is minted at claim); read it through apikeys.key_requests';
COMMENT ON COLUMN apikeys_internal.key_requests.key_id IS 'the key id the requested key gets when claimed; names the request';
COMMENT ON COLUMN apikeys_internal.key_requests.state IS 'pending, approved, rejected, cancelled or claimed';
COMMENT ON COLUMN apikeys_internal.key_requests.requested_by IS 'the role that asked, the only one that may claim the token; it may not approve its own request';
COMMENT ON COLUMN apikeys_internal.key_requests.approved_scopes IS 'scopes the key gets: the requested ones, or fewer (an approver may only narrow)';
COMMENT ON COLUMN apikeys_internal.key_requests.approved_expires_at IS 'expiry the key gets: the requested one, or earlier';
COMMENT ON COLUMN apikeys_internal.key_requests.claim_by IS 'an approval not claimed by then has expired';
COMMENT ON COLUMN apikeys_internal.key_requests.name IS 'name the key gets';
COMMENT ON COLUMN apikeys_internal.key_requests.prefix IS 'prefix of the key''s tokens';
COMMENT ON COLUMN apikeys_internal.key_requests.role IS 'role the key is for; the requester must belong to it';
COMMENT ON COLUMN apikeys_internal.key_requests.metadata IS 'metadata the key gets';
COMMENT ON COLUMN apikeys_internal.key_requests.allowed_ips IS 'networks the key gets (null: any)';
COMMENT ON COLUMN apikeys_internal.key_requests.allowed_origins IS 'web origins the key gets (null: any)';
COMMENT ON COLUMN apikeys_internal.key_requests.reason IS 'why the requester asks (at most 1000 characters)';
COMMENT ON COLUMN apikeys_internal.key_requests.requested_at IS 'when the request was made';
COMMENT ON COLUMN apikeys_internal.key_requests.decided_by IS 'role that approved or rejected it';
COMMENT ON COLUMN apikeys_internal.key_requests.decided_at IS 'when it was approved or rejected';
COMMENT ON COLUMN apikeys_internal.key_requests.decision_note IS 'the approver''s note (at most 1000 characters)';
COMMENT ON COLUMN apikeys_internal.key_requests.claimed_at IS 'when the requester claimed the token';
COMMENT ON COLUMN apikeys_internal.key_requests.requested_session IS
    'the session user (the login) that asked: the same login may not approve it, unless it is named in apikeys.authenticators';
COMMENT ON COLUMN apikeys_internal.key_requests.requested_key IS
    'the api key the request was made with (apikeys:manage), or null: through an authenticator, that key may not approve it';
COMMENT ON COLUMN apikeys_internal.key_requests.scopes IS 'scopes requested';
COMMENT ON COLUMN apikeys_internal.key_requests.expires_at IS 'expiry requested (null: none)';
SELECT pg_catalog.pg_extension_config_dump('apikeys_internal.key_requests', '');

-- May the role decide requests: is it an admin, or a member of the role
-- apikeys.approver_role names?  (C: the setting is read where no client can
-- have forged it, and a policy may call it without USAGE on this schema.)
CREATE FUNCTION apikeys_internal._may_approve(who pg_catalog.oid)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'apikeys_may_approve'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION apikeys_internal._may_approve(pg_catalog.oid) IS
    'may the role approve and reject api key requests? (superusers, members of apikeys_admin, and members of the role named by apikeys.approver_role)';

CREATE FUNCTION apikeys_internal._new_key_id()
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikeys_new_key_id'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION apikeys_internal._new_key_id() IS
    'internal: 12 random base62 characters from pg_strong_random, for a request''s key id';
REVOKE ALL ON FUNCTION apikeys_internal._new_key_id() FROM PUBLIC;

ALTER TABLE apikeys_internal.key_requests ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys_internal.key_requests FORCE ROW LEVEL SECURITY;
CREATE POLICY key_requests_visible ON apikeys_internal.key_requests
    FOR SELECT
    USING (apikeys_internal._may_approve(apikeys_internal._current_role())
           OR pg_catalog.pg_has_role(apikeys_internal._current_role(), requested_by::pg_catalog.oid, 'MEMBER'));
COMMENT ON POLICY key_requests_visible ON apikeys_internal.key_requests IS
    'admins and approvers see every request; others the requests made by roles they belong to';
REVOKE ALL ON apikeys_internal.key_requests FROM PUBLIC;
GRANT SELECT ON apikeys_internal.key_requests TO PUBLIC;

CREATE VIEW @extschema@.key_requests WITH (security_invoker = true) AS
SELECT r.key_id,
       r.name,
       r.role,
       r.scopes,
       r.expires_at,
       r.prefix,
       r.metadata,
       r.allowed_ips,
       r.allowed_origins,
       r.reason,
       CASE WHEN r.state OPERATOR(pg_catalog.=) 'approved'
                 AND r.claim_by OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp()
            THEN 'expired'
            ELSE r.state
       END AS status,
       r.requested_by,
       r.requested_at,
       r.decided_by,
       r.decided_at,
       r.decision_note,
       r.approved_scopes,
       r.approved_expires_at,
       r.claim_by,
       r.claimed_at,
       r.requested_session,
       r.requested_key
  FROM apikeys_internal.key_requests r;
COMMENT ON VIEW @extschema@.key_requests IS
    'api key requests visible to the current role (admins and approvers: all; others: the requests of roles they belong to); never a secret';
COMMENT ON COLUMN @extschema@.key_requests.key_id IS
    'the key id the key gets when claimed; pass it to apikey_approve, apikey_reject, apikey_cancel and apikey_claim';
COMMENT ON COLUMN @extschema@.key_requests.status IS
    'pending, approved (claim it before claim_by), expired (approved, not claimed in time), rejected, cancelled or claimed';
COMMENT ON COLUMN @extschema@.key_requests.scopes IS 'scopes requested';
COMMENT ON COLUMN @extschema@.key_requests.expires_at IS 'expiry requested (null: none)';
COMMENT ON COLUMN @extschema@.key_requests.approved_scopes IS 'scopes the key gets, within those requested';
COMMENT ON COLUMN @extschema@.key_requests.approved_expires_at IS 'expiry the key gets, no later than the one requested';
COMMENT ON COLUMN @extschema@.key_requests.claim_by IS 'the requester must claim the token before this';
COMMENT ON COLUMN @extschema@.key_requests.name IS 'name the key gets';
COMMENT ON COLUMN @extschema@.key_requests.prefix IS 'prefix of the key''s tokens';
COMMENT ON COLUMN @extschema@.key_requests.role IS 'role the key is for; the requester must belong to it';
COMMENT ON COLUMN @extschema@.key_requests.metadata IS 'metadata the key gets';
COMMENT ON COLUMN @extschema@.key_requests.allowed_ips IS 'networks the key gets (null: any)';
COMMENT ON COLUMN @extschema@.key_requests.allowed_origins IS 'web origins the key gets (null: any)';
COMMENT ON COLUMN @extschema@.key_requests.reason IS 'why the requester asks (at most 1000 characters)';
COMMENT ON COLUMN @extschema@.key_requests.requested_at IS 'when the request was made';
COMMENT ON COLUMN @extschema@.key_requests.decided_by IS 'role that approved or rejected it';
COMMENT ON COLUMN @extschema@.key_requests.decided_at IS 'when it was approved or rejected';
COMMENT ON COLUMN @extschema@.key_requests.decision_note IS 'the approver''s note (at most 1000 characters)';
COMMENT ON COLUMN @extschema@.key_requests.claimed_at IS 'when the requester claimed the token';
COMMENT ON COLUMN @extschema@.key_requests.requested_by IS 'the role that asked, the only one that may claim the token';
COMMENT ON COLUMN @extschema@.key_requests.requested_session IS
    'the session user (the login) that asked: it may not approve the request (four eyes), unless it is an authenticator named in apikeys.authenticators';
COMMENT ON COLUMN @extschema@.key_requests.requested_key IS
    'the api key the request was made with, or null; through an authenticator the approving key must be another one';
GRANT SELECT ON @extschema@.key_requests TO PUBLIC;

-- Raise 22023 for text with control or bidirectional characters (a reason or
-- note is shown in listings, as a name is).
CREATE FUNCTION apikeys_internal._check_note(what pg_catalog.text, p_text pg_catalog.text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_text IS NULL THEN
        RETURN;
    END IF;
    PERFORM apikeys_internal._check_limit('reason', 'characters', length(p_text));
    IF p_text COLLATE "C" ~ '[\u0001-\u001f\u007f-\u009f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]' THEN
        RAISE EXCEPTION 'api key request % contains a control character', what
            USING ERRCODE = '22023',
                  DETAIL = 'It may not contain control characters (line breaks and tabs included) or bidirectional text controls.';
    END IF;
END
$$;
COMMENT ON FUNCTION apikeys_internal._check_note(pg_catalog.text, pg_catalog.text) IS
    'internal: raises 54000 past 1000 characters and 22023 for control or bidirectional characters in a request''s reason or a decision''s note';
REVOKE ALL ON FUNCTION apikeys_internal._check_note(pg_catalog.text, pg_catalog.text) FROM PUBLIC;

-- Lock and return a request, or raise: 22023 for something that is not a
-- key id (never echoed: it could be a token), 42704 for one the caller may
-- not see.
CREATE FUNCTION apikeys_internal._request_for_update(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS apikeys_internal.key_requests
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    r apikeys_internal.key_requests;
BEGIN
    IF p_key_id IS NULL THEN
        RAISE EXCEPTION 'api key id must not be null'
            USING ERRCODE = '22004';
    END IF;
    IF p_key_id COLLATE "C" !~ '^[0-9A-Za-z]{12}$' THEN
        RAISE EXCEPTION 'invalid api key id'
            USING ERRCODE = '22023',
                  DETAIL = 'A key id is 12 letters and digits; the value given is not shown.';
    END IF;
    SELECT * INTO r FROM apikeys_internal.key_requests q
     WHERE q.key_id = p_key_id COLLATE "C"
       FOR UPDATE;
    IF NOT FOUND OR NOT (apikeys_internal._may_approve(p_caller)
                         OR pg_has_role(p_caller, r.requested_by::oid, 'MEMBER')) THEN
        RAISE EXCEPTION 'api key request "%" does not exist', p_key_id
            USING ERRCODE = '42704',
                  HINT = 'Requests of roles you do not belong to are visible only to approvers.';
    END IF;
    RETURN r;
END
$$;
COMMENT ON FUNCTION apikeys_internal._request_for_update(pg_catalog.oid, pg_catalog.text) IS
    'internal: locks a request the caller may see, or raises 42704';
REVOKE ALL ON FUNCTION apikeys_internal._request_for_update(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

-- Raise 42501 unless the caller may decide requests.
CREATE FUNCTION apikeys_internal._check_approver(p_caller pg_catalog.oid)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT apikeys_internal._may_approve(p_caller) THEN
        RAISE EXCEPTION 'permission denied to decide api key requests'
            USING ERRCODE = '42501',
                  DETAIL = format('Role %s is neither a member of apikeys_admin nor of the approver role.',
                                  quote_ident(pg_get_userbyid(p_caller))),
                  HINT = 'A superuser names the approver role with ALTER DATABASE ... SET apikeys.approver_role.';
    END IF;
END
$$;
COMMENT ON FUNCTION apikeys_internal._check_approver(pg_catalog.oid) IS
    'internal: raises 42501 unless the role is an admin or a member of the approver role';
REVOKE ALL ON FUNCTION apikeys_internal._check_approver(pg_catalog.oid) FROM PUBLIC;

-- Does the set of scopes held hold every scope of want?  (A held 'jobs:*'
-- holds 'jobs:read' and 'jobs:*' itself; '*' holds all.)
CREATE FUNCTION apikeys_internal._scopes_within(want pg_catalog.text[], held pg_catalog.text[])
RETURNS pg_catalog.text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT w.s
      FROM pg_catalog.unnest(want) AS w(s)
     WHERE NOT EXISTS (
           SELECT 1 FROM pg_catalog.unnest(held) AS h(s)
            WHERE w.s OPERATOR(pg_catalog.=) h.s COLLATE "C"
               OR (pg_catalog.right(h.s, 1) OPERATOR(pg_catalog.=) '*'
                   AND pg_catalog.left(w.s, pg_catalog.length(h.s) OPERATOR(pg_catalog.-) 1)
                       OPERATOR(pg_catalog.=) pg_catalog.left(h.s, -1) COLLATE "C"))
     LIMIT 1
$$;
COMMENT ON FUNCTION apikeys_internal._scopes_within(pg_catalog.text[], pg_catalog.text[]) IS
    'internal: the first scope of want that held does not hold (wildcards as in verify), or null when held holds them all';

CREATE FUNCTION apikeys_internal._apikey_request(p_caller pg_catalog.oid,
                                                 p_name pg_catalog.text,
                                                 p_role pg_catalog.regrole,
                                                 p_scopes pg_catalog.text[],
                                                 p_expires_at pg_catalog.timestamptz,
                                                 p_prefix pg_catalog.text,
                                                 p_metadata pg_catalog.jsonb,
                                                 p_allowed_ips pg_catalog.cidr[],
                                                 p_allowed_origins pg_catalog.text[],
                                                 p_reason pg_catalog.text)
RETURNS pg_catalog.text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    new_id text;
    pending int8;
BEGIN
    p_allowed_origins := apikeys_internal._check_new_key(p_name, p_scopes, p_expires_at, p_metadata,
                                                         p_allowed_ips, p_allowed_origins);
    p_prefix := COALESCE(p_prefix, 'ak');
    IF p_prefix COLLATE "C" !~ '^[a-z][a-z0-9_]{0,19}$' THEN
        RAISE EXCEPTION 'invalid api key prefix'
            USING ERRCODE = '22023',
                  DETAIL = 'A prefix is a lowercase letter followed by at most 19 lowercase letters, digits or underscores.';
    END IF;
    PERFORM apikeys_internal._check_note('reason', p_reason);
    -- a key never exceeds its creator: the requester must belong to the role
    p_role := COALESCE(p_role, p_caller::regrole);
    PERFORM apikeys_internal._check_role_grant(p_caller, p_role);
    SELECT count(*) INTO pending FROM apikeys_internal.key_requests q
     WHERE q.requested_by = p_caller::regrole AND q.state = 'pending';
    PERFORM apikeys_internal._check_limit('pending_requests', 'pending requests', pending + 1);

    LOOP
        new_id := apikeys_internal._new_key_id();
        EXIT WHEN NOT EXISTS (SELECT 1 FROM apikeys_internal.key_catalog c WHERE c.key_id = new_id)
              AND NOT EXISTS (SELECT 1 FROM apikeys_internal.key_requests q WHERE q.key_id = new_id);
    END LOOP;
    INSERT INTO apikeys_internal.key_requests
        (key_id, name, prefix, role, scopes, expires_at, metadata, allowed_ips,
         allowed_origins, reason, requested_by, requested_session, requested_key)
    VALUES (new_id, p_name, p_prefix, p_role, COALESCE(p_scopes, '{}'),
            NULLIF(p_expires_at, 'infinity'), COALESCE(p_metadata, '{}'),
            p_allowed_ips, p_allowed_origins, p_reason, p_caller::regrole,
            apikeys_internal._session_user(), apikeys_internal._logged_in_key());
    PERFORM apikeys_internal._audit_append(p_caller, 'request', new_id, p_role,
        jsonb_build_object('name', p_name, 'role', p_role, 'prefix', p_prefix,
                           'scopes', COALESCE(p_scopes, '{}'),
                           'expires_at', NULLIF(p_expires_at, 'infinity'),
                           'metadata', COALESCE(p_metadata, '{}'),
                           'allowed_ips', p_allowed_ips, 'allowed_origins', p_allowed_origins,
                           'reason', p_reason));
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION apikeys_internal._apikey_request(pg_catalog.oid, pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text) IS
    'internal half of apikey_request; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_request(pg_catalog.oid, pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._apikey_approve(p_caller pg_catalog.oid,
                                                 p_key_id pg_catalog.text,
                                                 p_scopes pg_catalog.text[],
                                                 p_expires_at pg_catalog.timestamptz,
                                                 p_claim_within pg_catalog.interval,
                                                 p_note pg_catalog.text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    r apikeys_internal.key_requests;
    v_scopes text[];
    v_expiry timestamptz;
    outside text;
    deadline timestamptz;
    changes jsonb := '{}'::jsonb;
BEGIN
    PERFORM apikeys_internal._check_approver(p_caller);
    r := apikeys_internal._request_for_update(p_caller, p_key_id);
    IF r.state <> 'pending' THEN
        RAISE EXCEPTION 'api key request "%" is not pending', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = format('The request is %s.', r.state);
    END IF;
    -- four eyes, by login: not the session user that asked (whatever
    -- roles it SET ROLE to in between), unless that is an authenticator
    -- serving many people (apikeys.authenticators): then not the api key
    -- that asked, and only with a key (a keyless request through it, a JWT
    -- one say, cannot be told apart from the approver's).  A superuser's
    -- session is exempt: it can write the tables directly, no rule binds it.
    PERFORM apikeys_internal._check_four_eyes(r);
    -- four eyes, by role: not the requesting role, nor a role the requester
    -- can become, nor (superusers aside, who belong to every role) a role
    -- that can become the requester.
    IF r.requested_by = p_caller::regrole
       OR pg_has_role(r.requested_by::oid, p_caller, 'MEMBER')
       OR (pg_has_role(p_caller, r.requested_by::oid, 'MEMBER')
           AND NOT (SELECT a.rolsuper FROM pg_roles a WHERE a.oid = p_caller)) THEN
        RAISE EXCEPTION 'cannot approve your own api key request'
            USING ERRCODE = '42501',
                  DETAIL = 'The approver may be neither the requesting role nor a member of it, and the requester may not be a member of the approving role.',
                  HINT = 'Ask another approver.';
    END IF;

    -- an approver may narrow the request, never widen it
    v_scopes := COALESCE(p_scopes, r.scopes);
    IF p_scopes IS NOT NULL THEN
        PERFORM apikeys_internal._check_settings(NULL, p_scopes, NULL, NULL, NULL);
        outside := apikeys_internal._scopes_within(p_scopes, r.scopes);
        IF outside IS NOT NULL THEN
            RAISE EXCEPTION 'approved scopes must be within the requested scopes'
                USING ERRCODE = '22023',
                      DETAIL = format('Scope %s was not requested, and no requested scope holds it.', quote_literal(outside)),
                      HINT = 'An approver may drop or narrow scopes; to grant more, the requester asks again.';
        END IF;
        IF v_scopes IS DISTINCT FROM r.scopes THEN
            changes := changes || jsonb_build_object('scopes', jsonb_build_object('requested', r.scopes, 'approved', v_scopes));
        END IF;
    END IF;
    -- a key that manages keys is granted by an admin only
    PERFORM apikeys_internal._check_manage_grant(p_caller, v_scopes);
    v_expiry := r.expires_at;
    IF p_expires_at = 'infinity' AND r.expires_at IS NOT NULL THEN
        RAISE EXCEPTION 'approved expiry must not be later than the requested expiry'
            USING ERRCODE = '22023',
                  DETAIL = format('The request asked for expiry at %s; infinity would remove it.', r.expires_at);
    END IF;
    IF p_expires_at IS NOT NULL AND p_expires_at <> 'infinity' THEN
        PERFORM apikeys_internal._check_settings(NULL, NULL, p_expires_at, NULL, NULL);
        IF r.expires_at IS NOT NULL AND p_expires_at > r.expires_at THEN
            RAISE EXCEPTION 'approved expiry must not be later than the requested expiry'
                USING ERRCODE = '22023',
                      DETAIL = format('The request asked for expiry at %s.', r.expires_at);
        END IF;
        v_expiry := p_expires_at;
        IF v_expiry IS DISTINCT FROM r.expires_at THEN
            changes := changes || jsonb_build_object('expires_at', jsonb_build_object('requested', r.expires_at, 'approved', v_expiry));
        END IF;
    END IF;
    IF p_claim_within IS NULL OR p_claim_within <= '0'::interval OR p_claim_within > '30 days'::interval THEN
        RAISE EXCEPTION 'claim period must be positive and at most 30 days'
            USING ERRCODE = '22023',
                  HINT = 'The requester claims the token within this time of the approval, or asks again.';
    END IF;
    PERFORM apikeys_internal._check_note('note', p_note);
    -- no later than the key's own expiry
    deadline := LEAST(now() + p_claim_within, v_expiry);

    UPDATE apikeys_internal.key_requests q
       SET state = 'approved', decided_by = p_caller::regrole, decided_at = now(),
           decision_note = p_note, approved_scopes = v_scopes, approved_expires_at = v_expiry,
           claim_by = deadline
     WHERE q.key_id = r.key_id;
    PERFORM apikeys_internal._audit_append(p_caller, 'approve', r.key_id, r.role,
        changes || jsonb_strip_nulls(jsonb_build_object('claim_by', deadline, 'note', p_note)));
END
$$;
COMMENT ON FUNCTION apikeys_internal._apikey_approve(pg_catalog.oid, pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.interval, pg_catalog.text) IS
    'internal half of apikey_approve; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_approve(pg_catalog.oid, pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.interval, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._apikey_reject(p_caller pg_catalog.oid,
                                                p_key_id pg_catalog.text,
                                                p_note pg_catalog.text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    r apikeys_internal.key_requests;
BEGIN
    PERFORM apikeys_internal._check_approver(p_caller);
    r := apikeys_internal._request_for_update(p_caller, p_key_id);
    IF r.state NOT IN ('pending', 'approved') THEN
        RAISE EXCEPTION 'api key request "%" is already decided', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = format('The request is %s.', r.state);
    END IF;
    PERFORM apikeys_internal._check_note('note', p_note);
    UPDATE apikeys_internal.key_requests q
       SET state = 'rejected', decided_by = p_caller::regrole, decided_at = now(),
           decision_note = p_note, claim_by = NULL, approved_scopes = NULL,
           approved_expires_at = NULL
     WHERE q.key_id = r.key_id;
    PERFORM apikeys_internal._audit_append(p_caller, 'reject', r.key_id, r.role,
        jsonb_build_object('state', jsonb_build_object('old', r.state, 'new', 'rejected'))
        || jsonb_strip_nulls(jsonb_build_object('note', p_note)));
END
$$;
COMMENT ON FUNCTION apikeys_internal._apikey_reject(pg_catalog.oid, pg_catalog.text, pg_catalog.text) IS
    'internal half of apikey_reject; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_reject(pg_catalog.oid, pg_catalog.text, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._apikey_cancel(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    r apikeys_internal.key_requests;
BEGIN
    r := apikeys_internal._request_for_update(p_caller, p_key_id);
    IF NOT apikeys_internal._may_act_for(p_caller, r.requested_by::oid) THEN
        RAISE EXCEPTION 'permission denied to cancel api key request "%"', p_key_id
            USING ERRCODE = '42501',
                  HINT = 'The requester cancels; an approver rejects.';
    END IF;
    IF r.state NOT IN ('pending', 'approved') THEN
        RAISE EXCEPTION 'api key request "%" is already decided', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = format('The request is %s.', r.state);
    END IF;
    UPDATE apikeys_internal.key_requests q
       SET state = 'cancelled', claim_by = NULL, approved_scopes = NULL, approved_expires_at = NULL
     WHERE q.key_id = r.key_id;
    PERFORM apikeys_internal._audit_append(p_caller, 'cancel', r.key_id, r.role,
        jsonb_build_object('state', jsonb_build_object('old', r.state, 'new', 'cancelled')));
END
$$;
COMMENT ON FUNCTION apikeys_internal._apikey_cancel(pg_catalog.oid, pg_catalog.text) IS
    'internal half of apikey_cancel; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_cancel(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

-- The token is minted here, handed out once and never stored.
CREATE FUNCTION apikeys_internal._apikey_claim(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS pg_catalog.text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    r apikeys_internal.key_requests;
    m record;
BEGIN
    r := apikeys_internal._request_for_update(p_caller, p_key_id);
    IF r.requested_by <> p_caller::regrole THEN
        RAISE EXCEPTION 'permission denied to claim api key request "%"', p_key_id
            USING ERRCODE = '42501',
                  DETAIL = format('Only the requesting role, %s, claims the token.', r.requested_by);
    END IF;
    IF r.state = 'claimed' THEN
        RAISE EXCEPTION 'api key request "%" is already claimed', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = 'A token is handed out once, and never again.',
                  HINT = 'If it was lost, revoke the key and request a new one.';
    ELSIF r.state = 'pending' THEN
        RAISE EXCEPTION 'api key request "%" is not approved yet', p_key_id
            USING ERRCODE = '55000';
    ELSIF r.state <> 'approved' THEN
        RAISE EXCEPTION 'api key request "%" is %', p_key_id, r.state
            USING ERRCODE = '55000';
    ELSIF r.claim_by <= clock_timestamp() THEN
        RAISE EXCEPTION 'approval of api key request "%" has expired', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = format('It had to be claimed by %s.', r.claim_by),
                  HINT = 'Request the key again.';
    END IF;
    -- the requester may have left the role since
    PERFORM apikeys_internal._check_role_grant(p_caller, r.role);

    SELECT * INTO m FROM apikeys_internal._mint(r.prefix, r.key_id);
    INSERT INTO apikeys_internal.key_catalog
        (key_id, name, prefix, role, scopes, expires_at, metadata,
         hash_version, hash, pepper_id, created_by, allowed_ips, allowed_origins)
    VALUES (r.key_id, r.name, r.prefix, r.role, r.approved_scopes, r.approved_expires_at,
            r.metadata, m.hash_version, m.hash, m.pepper_id, r.requested_by,
            r.allowed_ips, r.allowed_origins);
    UPDATE apikeys_internal.key_requests q
       SET state = 'claimed', claimed_at = now()
     WHERE q.key_id = r.key_id;
    PERFORM apikeys_internal._audit_append(p_caller, 'claim', r.key_id, r.role,
        jsonb_build_object('approved_by', r.decided_by, 'approved_at', r.decided_at));
    RETURN m.token;
END
$$;
COMMENT ON FUNCTION apikeys_internal._apikey_claim(pg_catalog.oid, pg_catalog.text) IS
    'internal half of apikey_claim; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_claim(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION @extschema@.apikey_request(name pg_catalog.text,
                                           role pg_catalog.regrole DEFAULT NULL,
                                           scopes pg_catalog.text[] DEFAULT '{}',
                                           expires_at pg_catalog.timestamptz DEFAULT NULL,
                                           prefix pg_catalog.text DEFAULT NULL,
                                           metadata pg_catalog.jsonb DEFAULT '{}',
                                           allowed_ips pg_catalog.cidr[] DEFAULT NULL,
                                           allowed_origins pg_catalog.text[] DEFAULT NULL,
                                           reason pg_catalog.text DEFAULT NULL)
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_request(pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text) IS
    'asks for a key for role (default: the calling role, which must be a member of it), to be approved by an admin or approver; returns the key id naming the request (and the key, once claimed)';

CREATE FUNCTION @extschema@.apikey_approve(key_id pg_catalog.text,
                                           scopes pg_catalog.text[] DEFAULT NULL,
                                           expires_at pg_catalog.timestamptz DEFAULT NULL,
                                           claim_within pg_catalog.interval DEFAULT '7 days',
                                           note pg_catalog.text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_approve(pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.interval, pg_catalog.text) IS
    'approves a pending key request (admins and members of apikeys.approver_role, never the requester); scopes and expires_at may narrow it; the requester must claim it within claim_within';

CREATE FUNCTION @extschema@.apikey_reject(key_id pg_catalog.text, note pg_catalog.text DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_reject(pg_catalog.text, pg_catalog.text) IS
    'rejects a pending key request, or withdraws an approval not yet claimed (admins and approvers)';

CREATE FUNCTION @extschema@.apikey_cancel(key_id pg_catalog.text)
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_cancel(pg_catalog.text) IS
    'cancels a key request not yet claimed (the requester, or an admin)';

CREATE FUNCTION @extschema@.apikey_claim(key_id pg_catalog.text)
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_claim(pg_catalog.text) IS
    'creates the key of an approved request and returns its token, once: only the requesting role, before the claim period ends';

-------------------------------------------------------------------------------
-- 14. Revealable keys (src/reveal.c): apikey_create(..., revealable => true)
-- seals the token under the key-encryption key (apikeys.kek_file, a file
-- the server reads; never in the database); apikey_reveal gives it back to
-- admins and the key's creator, audited every time; rotation seals the new
-- token; revocation deletes it.  The sealing functions are C calling
-- pgcrypto through fmgr: the KEK never appears in a statement or a plan.
-------------------------------------------------------------------------------
CREATE FUNCTION apikeys_internal._seal(token pg_catalog.text,
                                       OUT kek_id pg_catalog.text,
                                       OUT sealed pg_catalog.bytea)
AS 'MODULE_PATHNAME', 'apikeys_seal'
LANGUAGE C VOLATILE STRICT;
COMMENT ON FUNCTION apikeys_internal._seal(pg_catalog.text) IS
    'internal: encrypts a token under the key-encryption key (pgcrypto, AES-256, integrity-checked); 55000 with a hint when apikeys.kek_file gives none';
REVOKE ALL ON FUNCTION apikeys_internal._seal(pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._unseal(key_id pg_catalog.text, kek_id pg_catalog.text,
                                         sealed pg_catalog.bytea, hash pg_catalog.bytea,
                                         hash_version pg_catalog.int2, pepper_id pg_catalog.text)
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikeys_unseal'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION apikeys_internal._unseal(pg_catalog.text, pg_catalog.text, pg_catalog.bytea, pg_catalog.bytea, pg_catalog.int2, pg_catalog.text) IS
    'internal: decrypts a sealed token and checks that it is the key''s current one (key id, checksum, hash under its scheme and pepper; pepper_id is null unless hash_version is 2)';
REVOKE ALL ON FUNCTION apikeys_internal._unseal(pg_catalog.text, pg_catalog.text, pg_catalog.bytea, pg_catalog.bytea, pg_catalog.int2, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._kek_id()
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikeys_kek_id'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION apikeys_internal._kek_id() IS
    'internal: id (a digest, not the key) of the key-encryption key apikeys.kek_file holds now';
REVOKE ALL ON FUNCTION apikeys_internal._kek_id() FROM PUBLIC;

CREATE FUNCTION apikeys_internal._apikey_reveal(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS pg_catalog.text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    k apikeys_internal.key_catalog;
    r apikeys_internal.revealable_secrets;
    token text;
    n int8;
BEGIN
    k := apikeys_internal._key_for_update(p_caller, p_key_id);
    -- admins, and the key's creator while still a member of the key's role
    IF NOT (apikeys_internal._is_admin(p_caller)
            OR (k.created_by = p_caller::regrole
                AND apikeys_internal._may_act_for(p_caller, k.role::oid))) THEN
        RAISE EXCEPTION 'permission denied to reveal api key "%"', p_key_id
            USING ERRCODE = '42501',
                  DETAIL = 'Only admins, and the key''s creator while a member of the key''s role, may reveal it.';
    END IF;
    IF k.state = 'revoked' THEN
        RAISE EXCEPTION 'api key "%" is revoked', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = 'Revoking a revealable key deletes its sealed token.';
    END IF;
    SELECT * INTO r FROM apikeys_internal.revealable_secrets s WHERE s.key_id = k.key_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'api key "%" is not revealable', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = 'Its token was shown once, at creation, and is not stored.',
                  HINT = 'Create keys with revealable => true to reveal them later; rotate this one for a new token.';
    END IF;
    token := apikeys_internal._unseal(k.key_id, r.kek_id, r.sealed, k.hash, k.hash_version, k.pepper_id);
    -- numbered outside the transaction, logged before the token leaves
    n := nextval('apikeys_internal.reveal_seq');
    RAISE LOG 'apikeys: api key "%" revealed to role % (session user %), reveal number %',
        k.key_id, pg_get_userbyid(p_caller), session_user, n;
    PERFORM apikeys_internal._audit_append(p_caller, 'reveal', k.key_id, k.role,
        jsonb_build_object('reveal', n, 'kek_id', r.kek_id));
    RETURN token;
END
$$;
COMMENT ON FUNCTION apikeys_internal._apikey_reveal(pg_catalog.oid, pg_catalog.text) IS
    'internal half of apikey_reveal; the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_reveal(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION @extschema@.apikey_reveal(key_id pg_catalog.text)
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_reveal(pg_catalog.text) IS
    'returns the token of a revealable key again: admins, and its creator while a member of its role; audited (reveal) and logged every time';

-------------------------------------------------------------------------------
-- 15. Import and custom keys (src/import.c).  apikey_import hashes the
-- token in C and passes only the hash to store, with its scheme, here: a
-- token in apikeys' format keeps its key id and prefix (a custom key; its
-- secret's hash peppered as a created key's); any other token, or a bare
-- SHA-256 of one, gets a fresh key id and is verified by its digest (plain
-- SHA-256: it is also the lookup key).  The key keeps its status (active,
-- disabled, revoked, or expired by a past expiry); apikey_rotate gives it a
-- native token.
-------------------------------------------------------------------------------
CREATE FUNCTION apikeys_internal._apikey_import(p_caller pg_catalog.oid,
                                                p_name pg_catalog.text,
                                                p_role pg_catalog.regrole,
                                                p_scopes pg_catalog.text[],
                                                p_expires_at pg_catalog.timestamptz,
                                                p_prefix pg_catalog.text,
                                                p_metadata pg_catalog.jsonb,
                                                p_allowed_ips pg_catalog.cidr[],
                                                p_allowed_origins pg_catalog.text[],
                                                p_status pg_catalog.text,
                                                p_key_id pg_catalog.text,
                                                p_digest pg_catalog.bytea,
                                                p_format pg_catalog.text,
                                                p_hash_version pg_catalog.int2,
                                                p_pepper_id pg_catalog.text)
RETURNS pg_catalog.text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    new_id text := p_key_id;
    state text;
BEGIN
    -- (an imported key may have expired already: its expiry is not checked)
    p_allowed_origins := apikeys_internal._check_new_key(p_name, p_scopes, NULL, p_metadata,
                                                         p_allowed_ips, p_allowed_origins);
    p_prefix := COALESCE(p_prefix, 'ak');
    IF p_prefix COLLATE "C" !~ '^[a-z][a-z0-9_]{0,19}$' THEN
        RAISE EXCEPTION 'invalid api key prefix'
            USING ERRCODE = '22023',
                  DETAIL = 'A prefix is a lowercase letter followed by at most 19 lowercase letters, digits or underscores; an imported key''s native tokens get it when it is rotated.';
    END IF;
    state := CASE COALESCE(p_status, 'active')
                 WHEN 'active' THEN 'active' WHEN 'disabled' THEN 'disabled'
                 WHEN 'revoked' THEN 'revoked' END;
    IF state IS NULL THEN
        RAISE EXCEPTION 'invalid api key status to import'
            USING ERRCODE = '22023',
                  DETAIL = 'An imported key is active, disabled or revoked; an expired one is imported with its expires_at.';
    END IF;
    p_role := COALESCE(p_role, p_caller::regrole);
    PERFORM apikeys_internal._check_role_grant(p_caller, p_role);
    PERFORM apikeys_internal._check_manage_grant(p_caller, p_scopes);

    IF new_id IS NOT NULL AND EXISTS (SELECT 1 FROM apikeys_internal.key_requests q WHERE q.key_id = new_id) THEN
        RAISE EXCEPTION 'api key already exists'
            USING ERRCODE = '23505',
                  DETAIL = format('Key id %s is taken by a key request.', new_id);
    END IF;
    IF new_id IS NULL THEN
        LOOP
            new_id := apikeys_internal._new_key_id();
            EXIT WHEN NOT EXISTS (SELECT 1 FROM apikeys_internal.key_catalog c WHERE c.key_id = new_id)
                  AND NOT EXISTS (SELECT 1 FROM apikeys_internal.key_requests q WHERE q.key_id = new_id);
        END LOOP;
    END IF;
    BEGIN
        INSERT INTO apikeys_internal.key_catalog
            (key_id, name, prefix, role, scopes, expires_at, metadata, state,
             hash_version, hash, pepper_id, created_by, revoked_at, allowed_ips, allowed_origins)
        VALUES (new_id, p_name, p_prefix, p_role, COALESCE(p_scopes, '{}'),
                NULLIF(p_expires_at, 'infinity'), COALESCE(p_metadata, '{}'), state,
                p_hash_version, p_digest, p_pepper_id, p_caller::regrole,
                CASE WHEN state = 'revoked' THEN now() END,
                p_allowed_ips, p_allowed_origins);
        INSERT INTO apikeys_internal.imported_keys (key_id, digest, prefix, format)
        VALUES (new_id, CASE WHEN p_format = 'native' THEN NULL ELSE p_digest END, p_prefix, p_format);
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION 'api key already exists'
            USING ERRCODE = '23505',
                  DETAIL = CASE WHEN p_format = 'native'
                                THEN format('A key with key id %s exists.', new_id)
                                ELSE 'A key with this token was imported before.' END;
    END;
    PERFORM apikeys_internal._audit_append(p_caller, 'import', new_id, p_role,
        jsonb_build_object('format', p_format, 'status', state));
    RETURN new_id;
END
$$;
COMMENT ON FUNCTION apikeys_internal._apikey_import(pg_catalog.oid, pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text, pg_catalog.text, pg_catalog.bytea, pg_catalog.text, pg_catalog.int2, pg_catalog.text) IS
    'internal half of apikey_import (which hashes the token in C and passes the hash to store with its scheme: peppered for a token in apikeys'' format when apikeys.pepper_file is set, the SHA-256 the lookup needs for any other); the first argument is the calling role';
REVOKE ALL ON FUNCTION apikeys_internal._apikey_import(pg_catalog.oid, pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text, pg_catalog.text, pg_catalog.bytea, pg_catalog.text, pg_catalog.int2, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION @extschema@.apikey_import(name pg_catalog.text,
                                          role pg_catalog.regrole DEFAULT NULL,
                                          token pg_catalog.text DEFAULT NULL,
                                          token_sha256 pg_catalog.bytea DEFAULT NULL,
                                          scopes pg_catalog.text[] DEFAULT '{}',
                                          expires_at pg_catalog.timestamptz DEFAULT NULL,
                                          prefix pg_catalog.text DEFAULT NULL,
                                          metadata pg_catalog.jsonb DEFAULT '{}',
                                          allowed_ips pg_catalog.cidr[] DEFAULT NULL,
                                          allowed_origins pg_catalog.text[] DEFAULT NULL,
                                          status pg_catalog.text DEFAULT 'active')
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikey_import'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_import(pg_catalog.text, pg_catalog.regrole, pg_catalog.text, pg_catalog.bytea, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb, pg_catalog.cidr[], pg_catalog.text[], pg_catalog.text) IS
    'imports an existing key: its token (any format; one in apikeys'' format keeps its key id) or only token_sha256, with its settings and status (active, disabled, revoked); returns the key id; the token keeps working until apikey_rotate replaces it with a native one';

-------------------------------------------------------------------------------
-- 16. The backend-local key cache (src/cache.c) and one verification per
-- statement (src/verify.c).
--
-- Ordinary DML sends no relcache invalidation, so these triggers register one
-- for every change to an existing key.  It goes out with the commit (and is
-- replayed on hot standbys), and every backend's key cache drops what it
-- holds.  Creating a key sends none: a new key id cannot be in any cache.
-- They fire ALWAYS: a logical replication subscriber applies changes as a
-- replica, and its sessions' caches must follow too (its apply worker fires
-- row triggers only, hence one per row for UPDATE and DELETE).
-------------------------------------------------------------------------------
CREATE FUNCTION apikeys_internal._catalog_changed()
RETURNS trigger
AS 'MODULE_PATHNAME', 'apikeys_catalog_changed'
LANGUAGE C;
COMMENT ON FUNCTION apikeys_internal._catalog_changed() IS
    'trigger: registers a relcache invalidation of the key catalog, so that every backend''s key cache forgets what it holds when the change commits';
REVOKE ALL ON FUNCTION apikeys_internal._catalog_changed() FROM PUBLIC;

CREATE TRIGGER key_catalog_invalidate
    AFTER UPDATE OR DELETE ON apikeys_internal.key_catalog
    FOR EACH ROW EXECUTE FUNCTION apikeys_internal._catalog_changed();
CREATE TRIGGER key_catalog_invalidate_truncate
    AFTER TRUNCATE ON apikeys_internal.key_catalog
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys_internal._catalog_changed();
ALTER TABLE apikeys_internal.key_catalog ENABLE ALWAYS TRIGGER key_catalog_invalidate;
ALTER TABLE apikeys_internal.key_catalog ENABLE ALWAYS TRIGGER key_catalog_invalidate_truncate;

CREATE FUNCTION @extschema@.apikey_is_valid(token pg_catalog.text,
                                            scope pg_catalog.text DEFAULT NULL,
                                            client_ip pg_catalog.inet DEFAULT NULL,
                                            origin pg_catalog.text DEFAULT NULL,
                                            cost pg_catalog.int4 DEFAULT 1)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'apikey_is_valid_text'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_is_valid(pg_catalog.text, pg_catalog.text, pg_catalog.inet, pg_catalog.text, pg_catalog.int4) IS
    'is the token valid (and does the key have scope, are client_ip and origin allowed, is it within its limits)? apikey_verify(...).valid without building the row, spending cost of the key''s rate limits and quota as apikey_verify does; never raises for bad input';

CREATE FUNCTION @extschema@.apikey_is_valid(token @extschema@.apikey,
                                            scope pg_catalog.text DEFAULT NULL,
                                            client_ip pg_catalog.inet DEFAULT NULL,
                                            origin pg_catalog.text DEFAULT NULL,
                                            cost pg_catalog.int4 DEFAULT 1)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'apikey_is_valid_apikey'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_is_valid(@extschema@.apikey, pg_catalog.text, pg_catalog.inet, pg_catalog.text, pg_catalog.int4) IS
    'is the parsed token valid (and does the key have scope, are client_ip and origin allowed, is it within its limits)? spends cost as apikey_verify does';

CREATE FUNCTION @extschema@.apikey_cache_stats(OUT entries pg_catalog.int4,
                                               OUT capacity pg_catalog.int4,
                                               OUT memory_bytes pg_catalog.int8,
                                               OUT hits pg_catalog.int8,
                                               OUT misses pg_catalog.int8,
                                               OUT evictions pg_catalog.int8,
                                               OUT invalidations pg_catalog.int8,
                                               OUT discarded_loads pg_catalog.int8,
                                               OUT repeats pg_catalog.int8)
RETURNS record
AS 'MODULE_PATHNAME', 'apikey_cache_stats'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_cache_stats() IS
    'this backend''s key cache: entries held, apikeys.cache_size, memory in bytes, lookups answered from it (hits) and from the catalog (misses), evictions, invalidations received, loads discarded because an invalidation raced them, and repeats answered by the one-verification-per-statement rule';

-------------------------------------------------------------------------------
-- 17. Creation at the speed of an insert (src/create.c, src/audit.c).
--
-- apikey_create decides a plainly valid call in C and writes it with one
-- saved INSERT as the catalog's owner; anything else goes to _apikey_create
-- as before.  Every statement that writes the catalog prepares its CHECK
-- constraints again: the five checks of 0.1.0 become one, with the same
-- conditions, in C.
-------------------------------------------------------------------------------
CREATE FUNCTION apikeys_internal._key_row_ok(key_id pg_catalog.text,
                                             prefix pg_catalog.text,
                                             name pg_catalog.text,
                                             state pg_catalog.text,
                                             no_prev_hash pg_catalog.bool,
                                             no_prev_valid_until pg_catalog.bool)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'apikeys_key_row_ok'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION apikeys_internal._key_row_ok(pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.text, pg_catalog.bool, pg_catalog.bool) IS
    'the key catalog''s row check: key_id is 12 letters and digits, prefix matches [a-z][a-z0-9_]{0,19}, name is not blank, state is active, disabled or revoked, and prev_hash and prev_valid_until are both set or both null';

ALTER TABLE apikeys_internal.key_catalog
    DROP CONSTRAINT key_catalog_key_id_check,
    DROP CONSTRAINT key_catalog_prefix_check,
    DROP CONSTRAINT key_catalog_name_check,
    DROP CONSTRAINT key_catalog_state_check,
    DROP CONSTRAINT key_catalog_prev_check,
    ADD CONSTRAINT key_catalog_row_check
        CHECK (apikeys_internal._key_row_ok(key_id, prefix, name, state,
                                            prev_hash IS NULL, prev_valid_until IS NULL));

-------------------------------------------------------------------------------
-- 18. The pepper (src/pepper.c, README "Pepper").  The peppers are in the
-- file apikeys.pepper_file names, read by the server: never in a table, a
-- setting's value, a statement or a dump.  Verify applies them in C; these
-- are for the leak report's re-check under the row lock, and for admins
-- who want to know which peppers keys still need.
-------------------------------------------------------------------------------
CREATE FUNCTION apikeys_internal._hash_matches(key_id pg_catalog.text, digest pg_catalog.bytea,
                                               hash_version pg_catalog.int2,
                                               pepper_id pg_catalog.text, hash pg_catalog.bytea)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'apikeys_hash_matches'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION apikeys_internal._hash_matches(pg_catalog.text, pg_catalog.bytea, pg_catalog.int2, pg_catalog.text, pg_catalog.bytea) IS
    'internal: does a secret''s SHA-256 (digest) match a stored hash of the given scheme and pepper? false for a null hash; 55000 naming the pepper when the server does not have it';
REVOKE ALL ON FUNCTION apikeys_internal._hash_matches(pg_catalog.text, pg_catalog.bytea, pg_catalog.int2, pg_catalog.text, pg_catalog.bytea) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._pepper_ids(OUT file_position pg_catalog.int4,
                                             OUT pepper_id pg_catalog.text)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'apikeys_pepper_ids'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION apikeys_internal._pepper_ids() IS
    'internal: ids of the peppers apikeys.pepper_file holds, in file order (1: the current one); none when it is not set; 55000 when it cannot be used';
REVOKE ALL ON FUNCTION apikeys_internal._pepper_ids() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apikeys_internal._pepper_ids() TO apikeys_admin;

-- Which peppers do keys need?  An old pepper may leave the file once no key
-- needs it: every key hashed under it rotated, and no grace period left.
-- Revoked keys need none (without their pepper they verify as invalid).
CREATE FUNCTION @extschema@.pepper_status(OUT pepper_id pg_catalog.text,
                                          OUT state pg_catalog.text,
                                          OUT keys pg_catalog.int8,
                                          OUT grace_keys pg_catalog.int8)
RETURNS SETOF record
LANGUAGE sql VOLATILE
AS $$
    WITH file AS (
        SELECT p.file_position, p.pepper_id FROM apikeys_internal._pepper_ids() p
    ), used AS (
        SELECT CASE WHEN c.hash_version OPERATOR(pg_catalog.=) 2 THEN c.pepper_id END AS pepper_id,
               1 AS cur, 0 AS grace
          FROM apikeys_internal.key_catalog c
         WHERE c.state OPERATOR(pg_catalog.<>) 'revoked'
        UNION ALL
        SELECT CASE WHEN c.prev_hash_version OPERATOR(pg_catalog.=) 2 THEN c.prev_pepper_id END, 0, 1
          FROM apikeys_internal.key_catalog c
         WHERE c.state OPERATOR(pg_catalog.<>) 'revoked'
           AND c.prev_valid_until OPERATOR(pg_catalog.>) pg_catalog.clock_timestamp()
    ), counted AS (
        SELECT u.pepper_id, pg_catalog.sum(u.cur)::pg_catalog.int8 AS keys,
               pg_catalog.sum(u.grace)::pg_catalog.int8 AS grace_keys
          FROM used u GROUP BY u.pepper_id
    )
    SELECT COALESCE(f.pepper_id, n.pepper_id),
           CASE WHEN f.file_position OPERATOR(pg_catalog.=) 1 THEN 'current'
                WHEN f.file_position IS NOT NULL THEN 'old'
                WHEN n.pepper_id IS NULL THEN 'none'
                ELSE 'missing' END,
           COALESCE(n.keys, 0), COALESCE(n.grace_keys, 0)
      FROM file f FULL JOIN counted n ON n.pepper_id OPERATOR(pg_catalog.=) f.pepper_id
     ORDER BY f.file_position NULLS LAST, n.pepper_id NULLS LAST
$$;
COMMENT ON FUNCTION @extschema@.pepper_status() IS
    'peppers of stored hashes: each pepper of apikeys.pepper_file (state current or old) and each one keys need that the file lacks (missing), with the keys whose current secret (keys) or whose previous secret still in its grace period (grace_keys) is hashed under it; a row with a null pepper_id (state none) counts plain SHA-256 hashes; revoked keys are not counted (they need no pepper); admins only';
REVOKE ALL ON FUNCTION @extschema@.pepper_status() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.pepper_status() TO apikeys_admin;

-------------------------------------------------------------------------------
-- 19. Requests made with a key (src/request_log.c).
--
-- Verifications and logins, recorded under apikeys.audit_requests (off,
-- failures, all; default failures), are queued in shared memory and written
-- here by the background worker at each flush, one row per aggregate of
-- requests (README, "Requests made with a key").  No row holds a secret:
-- only key ids, which are public.  Admins only.
-------------------------------------------------------------------------------
CREATE TABLE apikeys_internal.request_log (
    first_at    pg_catalog.timestamptz NOT NULL,
    last_at     pg_catalog.timestamptz NOT NULL,
    kind        pg_catalog.text
                CHECK (kind OPERATOR(pg_catalog.=) ANY (ARRAY['verify', 'login', 'leak_report'])),
    status      pg_catalog.text NOT NULL,
    key_id      pg_catalog.text COLLATE "C",
    key_exists  pg_catalog.bool,
    key_name    pg_catalog.text,
    key_role    pg_catalog.name,
    db_user     pg_catalog.name,
    client_addr pg_catalog.inet,
    requests    pg_catalog.int8 NOT NULL CHECK (requests OPERATOR(pg_catalog.>) 0),
    overflow    pg_catalog.bool NOT NULL DEFAULT false,
    charged_role pg_catalog.name,
    -- only a role's overflow row may mix kinds
    CHECK (kind IS NOT NULL OR status OPERATOR(pg_catalog.=) 'overflow')
);
CREATE INDEX request_log_last_at ON apikeys_internal.request_log (last_at);
CREATE INDEX request_log_key_id ON apikeys_internal.request_log (key_id, last_at);
COMMENT ON TABLE apikeys_internal.request_log IS
    'requests made with a key (apikeys.audit_requests), written by the apikeys worker from shared memory, one row per aggregate of requests; kept for apikeys.audit_request_retention; read it through apikeys.request_log';
COMMENT ON COLUMN apikeys_internal.request_log.first_at IS 'first request of the row';
COMMENT ON COLUMN apikeys_internal.request_log.last_at IS 'last request of the row';
COMMENT ON COLUMN apikeys_internal.request_log.kind IS
    'verify (apikey_verify, apikey_is_valid), login (apikey_login, pre_request) or leak_report (apikey_report_leak); null: a role''s overflow row counting several kinds';
COMMENT ON COLUMN apikeys_internal.request_log.status IS
    'outcome of the verification, as apikeys.verification reports it; overflow: the requests of charged_role past apikeys.audit_request_rows_per_role in one flush';
COMMENT ON COLUMN apikeys_internal.request_log.key_id IS
    'the key; for ids that name no key, the id given when every request of the row gave the same one, else null; never more of the token';
COMMENT ON COLUMN apikeys_internal.request_log.key_exists IS 'the key id named a key (null: not known, overflow rows)';
COMMENT ON COLUMN apikeys_internal.request_log.key_name IS 'the key''s name when the row was written (null if it no longer existed)';
COMMENT ON COLUMN apikeys_internal.request_log.key_role IS 'the key''s role at the request';
COMMENT ON COLUMN apikeys_internal.request_log.db_user IS
    'session user that made the requests (null: several, or not known)';
COMMENT ON COLUMN apikeys_internal.request_log.client_addr IS
    'the client_ip given, else the connection''s address (null: unknown, a Unix socket, or several)';
COMMENT ON COLUMN apikeys_internal.request_log.requests IS 'how many requests the row stands for';
COMMENT ON COLUMN apikeys_internal.request_log.overflow IS
    'only the count was kept: the queue was full (kind, status and times kept too), or charged_role was past its bound (status overflow)';
COMMENT ON COLUMN apikeys_internal.request_log.charged_role IS
    'the role the row counts against under apikeys.audit_request_rows_per_role: the key''s role, or the session user for input that names no key (null: rows of a full queue)';
SELECT pg_catalog.pg_extension_config_dump('apikeys_internal.request_log', '');
ALTER TABLE apikeys_internal.request_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys_internal.request_log FORCE ROW LEVEL SECURITY;
CREATE POLICY request_log_admin ON apikeys_internal.request_log
    FOR ALL
    USING (apikeys_internal._is_admin(apikeys_internal._current_role()))
    WITH CHECK (apikeys_internal._is_admin(apikeys_internal._current_role()));
REVOKE ALL ON apikeys_internal.request_log FROM PUBLIC;
GRANT SELECT ON apikeys_internal.request_log TO apikeys_admin;

CREATE VIEW @extschema@.request_log WITH (security_invoker = true) AS
SELECT r.first_at, r.last_at, r.kind, r.status, r.key_id, r.key_exists, r.key_name,
       r.key_role, r.db_user, r.client_addr, r.requests, r.overflow, r.charged_role
  FROM apikeys_internal.request_log r;
COMMENT ON VIEW @extschema@.request_log IS
    'requests made with a key, as the worker wrote them (apikeys.audit_requests: failures by default, or all): one row per aggregate of requests, written every apikeys.usage_flush_interval; admins only; request_log_stats() shows what is still queued';
COMMENT ON COLUMN @extschema@.request_log.first_at IS 'first request of the row';
COMMENT ON COLUMN @extschema@.request_log.last_at IS 'last request of the row';
COMMENT ON COLUMN @extschema@.request_log.kind IS
    'verify (apikey_verify, apikey_is_valid), login (apikey_login, pre_request) or leak_report (apikey_report_leak); null: a role''s overflow row counting several kinds';
COMMENT ON COLUMN @extschema@.request_log.status IS
    'outcome of the verification; overflow: the requests of charged_role past apikeys.audit_request_rows_per_role in one flush';
COMMENT ON COLUMN @extschema@.request_log.key_id IS
    'the key; for ids that name no key, the id given when every request of the row gave the same one, else null';
COMMENT ON COLUMN @extschema@.request_log.key_exists IS 'the key id named a key (null for overflow rows)';
COMMENT ON COLUMN @extschema@.request_log.key_name IS 'the key''s name when the row was written';
COMMENT ON COLUMN @extschema@.request_log.key_role IS 'the key''s role at the request';
COMMENT ON COLUMN @extschema@.request_log.db_user IS 'session user that made the requests (null: several, or not known)';
COMMENT ON COLUMN @extschema@.request_log.client_addr IS
    'the client_ip given, else the connection''s address (null: unknown, a Unix socket, or several)';
COMMENT ON COLUMN @extschema@.request_log.requests IS 'how many requests the row stands for';
COMMENT ON COLUMN @extschema@.request_log.overflow IS
    'only the count was kept: the queue was full (kind, status and times kept too), or charged_role was past its bound (status overflow)';
COMMENT ON COLUMN @extschema@.request_log.charged_role IS
    'the role the row counts against under apikeys.audit_request_rows_per_role: the key''s role, or the session user for input that names no key (null: rows of a full queue)';
REVOKE ALL ON @extschema@.request_log FROM PUBLIC;
GRANT SELECT ON @extschema@.request_log TO apikeys_admin;

CREATE FUNCTION @extschema@.request_log_stats(OUT queued pg_catalog.int4,
                                              OUT queue_size pg_catalog.int4,
                                              OUT pending pg_catalog.int8,
                                              OUT recorded pg_catalog.int8,
                                              OUT overflowed pg_catalog.int8,
                                              OUT written pg_catalog.int8,
                                              OUT not_recorded pg_catalog.int8,
                                              OUT role_capped pg_catalog.int8)
RETURNS record
AS 'MODULE_PATHNAME', 'apikeys_request_log_stats'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.request_log_stats() IS
    'the request log''s queue in shared memory, for the whole server since it started: aggregates queued and the most it holds (apikeys.audit_request_queue_size), requests waiting for the worker, requests recorded, of those kept only as a count because the queue was full, requests written, requests not recorded (on a hot standby, in a database other than apikeys.database, or where the extension is not installed), and of the overflowed those counted against a role past apikeys.audit_request_rows_per_role; raises 55000 without shared_preload_libraries; admins only';
REVOKE ALL ON FUNCTION @extschema@.request_log_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.request_log_stats() TO apikeys_admin;

-------------------------------------------------------------------------------
-- Key sessions: a key never manages keys (src/lifecycle.c, src/request.c).
--
-- While a transaction has logged in with a key (apikey_login, pre_request),
-- every lifecycle and management entry point refuses (42501) in C, whatever
-- role the transaction acts as by then, and the listings below show that
-- key's rows alone.  A key holding the scope apikeys:manage by name (no
-- wildcard holds it), which only admins give, is exempt from both.  Four
-- eyes compares logins too: the session user that requested a key may not
-- approve it, except through an authenticator named in
-- apikeys.authenticators, where the api keys must differ.
-------------------------------------------------------------------------------
CREATE FUNCTION apikeys_internal._key_session()
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikeys_key_session'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION apikeys_internal._key_session() IS
    'key id this transaction logged in with (whatever role it acts as now), unless that key holds apikeys:manage; null otherwise: the listings show this key''s rows alone';

CREATE FUNCTION apikeys_internal._logged_in_key()
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikeys_logged_in_key'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION apikeys_internal._logged_in_key() IS
    'key id this transaction logged in with, whatever role it acts as now and whatever its scopes, or null; for four eyes through an authenticator';

CREATE FUNCTION apikeys_internal._session_user()
RETURNS pg_catalog.oid
AS 'MODULE_PATHNAME', 'apikeys_session_user'
LANGUAGE C STABLE PARALLEL RESTRICTED;
COMMENT ON FUNCTION apikeys_internal._session_user() IS
    'the session user (the login) as an oid, without a round trip through its name';

CREATE FUNCTION apikeys_internal._is_authenticator(who pg_catalog.oid)
RETURNS pg_catalog.bool
AS 'MODULE_PATHNAME', 'apikeys_is_authenticator'
LANGUAGE C STABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION apikeys_internal._is_authenticator(pg_catalog.oid) IS
    'is the role named in apikeys.authenticators (a login serving many people, such as PostgREST''s authenticator)?';

-- Route scopes are configuration a key must not change either: the view
-- writes through to the table, whose statement trigger refuses.
CREATE FUNCTION apikeys_internal._refuse_key_session()
RETURNS trigger
AS 'MODULE_PATHNAME', 'apikeys_refuse_key_session_trigger'
LANGUAGE C;
COMMENT ON FUNCTION apikeys_internal._refuse_key_session() IS
    'internal: statement trigger raising 42501 while an api key without apikeys:manage is logged in';
REVOKE ALL ON FUNCTION apikeys_internal._refuse_key_session() FROM PUBLIC;
CREATE TRIGGER route_scopes_key_session
    BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE ON apikeys_internal.route_scopes
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys_internal._refuse_key_session();

-- Raise 42501 when a role that is not an admin would give a key the scope
-- apikeys:manage (create, update, rotate, enable, import, approve).
CREATE FUNCTION apikeys_internal._check_manage_grant(p_caller pg_catalog.oid, p_scopes pg_catalog.text[])
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF 'apikeys:manage' COLLATE "C" = ANY (p_scopes) AND NOT apikeys_internal._is_admin(p_caller) THEN
        RAISE EXCEPTION 'permission denied to grant the scope apikeys:manage'
            USING ERRCODE = '42501',
                  DETAIL = format('Role %s is not a member of apikeys_admin; a key holding apikeys:manage may manage keys while logged in.',
                                  quote_ident(pg_get_userbyid(p_caller))),
                  HINT = 'Only admins create, re-scope, rotate, enable or approve keys that hold apikeys:manage.';
    END IF;
END
$$;
COMMENT ON FUNCTION apikeys_internal._check_manage_grant(pg_catalog.oid, pg_catalog.text[]) IS
    'internal: raises 42501 unless the role is an admin or the scopes do not name apikeys:manage';
REVOKE ALL ON FUNCTION apikeys_internal._check_manage_grant(pg_catalog.oid, pg_catalog.text[]) FROM PUBLIC;

-- Four eyes by login (apikey_approve): raise 42501 when the approving
-- session user made the request, unless it is a superuser; through an
-- authenticator, when the request and the approval were not made with two
-- different api keys.
CREATE FUNCTION apikeys_internal._check_four_eyes(r apikeys_internal.key_requests)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    me oid := apikeys_internal._session_user();
    approving_key text := apikeys_internal._logged_in_key();
BEGIN
    IF r.requested_session::oid <> me OR (SELECT a.rolsuper FROM pg_roles a WHERE a.oid = me) THEN
        RETURN;
    END IF;
    IF NOT apikeys_internal._is_authenticator(me) THEN
        RAISE EXCEPTION 'cannot approve an api key request made by the same login'
            USING ERRCODE = '42501',
                  DETAIL = format('Session user %s made the request; whatever roles it sets, one login may not both request and approve a key.',
                                  quote_ident(pg_get_userbyid(me))),
                  HINT = 'Another person approves, connected as themselves.';
    END IF;
    IF r.requested_key IS NULL OR approving_key IS NULL THEN
        RAISE EXCEPTION 'cannot approve an api key request through authenticator % without api keys', quote_ident(pg_get_userbyid(me))
            USING ERRCODE = '42501',
                  DETAIL = 'Requests and approvals through an authenticator named in apikeys.authenticators are told apart by the api keys they are made with, and this one has none on one side.',
                  HINT = 'Request and approve with two different keys holding apikeys:manage, or approve connected as yourself.';
    END IF;
    IF r.requested_key = approving_key COLLATE "C" THEN
        RAISE EXCEPTION 'cannot approve an api key request made with the same api key'
            USING ERRCODE = '42501',
                  DETAIL = format('Api key %s made the request through authenticator %s.', approving_key,
                                  quote_ident(pg_get_userbyid(me))),
                  HINT = 'Another approver approves, with a key of their own.';
    END IF;
END
$$;
COMMENT ON FUNCTION apikeys_internal._check_four_eyes(apikeys_internal.key_requests) IS
    'internal: raises 42501 when the approving login (session user; through an authenticator, api key) is the requesting one';
REVOKE ALL ON FUNCTION apikeys_internal._check_four_eyes(apikeys_internal.key_requests) FROM PUBLIC;

-- The listings during a key session: the key's own rows.  Restrictive, so
-- they hold on top of every other policy (admins' included, for a key whose
-- role is an admin); for SELECT, which UPDATE and DELETE also obey for the
-- rows they read.
CREATE POLICY key_session_only ON apikeys_internal.key_catalog AS RESTRICTIVE FOR SELECT
    USING (apikeys_internal._key_session() IS NULL
           OR key_id OPERATOR(pg_catalog.=) apikeys_internal._key_session());
COMMENT ON POLICY key_session_only ON apikeys_internal.key_catalog IS
    'while an api key is logged in (without apikeys:manage), only that key''s row is visible';
CREATE POLICY key_session_only ON apikeys_internal.audit_log AS RESTRICTIVE FOR SELECT
    USING (apikeys_internal._key_session() IS NULL
           OR key_id OPERATOR(pg_catalog.=) apikeys_internal._key_session());
COMMENT ON POLICY key_session_only ON apikeys_internal.audit_log IS
    'while an api key is logged in (without apikeys:manage), only that key''s audit rows are visible';
CREATE POLICY key_session_only ON apikeys_internal.usage AS RESTRICTIVE FOR SELECT
    USING (apikeys_internal._key_session() IS NULL
           OR key_id OPERATOR(pg_catalog.=) apikeys_internal._key_session());
COMMENT ON POLICY key_session_only ON apikeys_internal.usage IS
    'while an api key is logged in (without apikeys:manage), only that key''s usage is visible';
CREATE POLICY key_session_only ON apikeys_internal.usage_hourly AS RESTRICTIVE FOR SELECT
    USING (apikeys_internal._key_session() IS NULL
           OR key_id OPERATOR(pg_catalog.=) apikeys_internal._key_session());
COMMENT ON POLICY key_session_only ON apikeys_internal.usage_hourly IS
    'while an api key is logged in (without apikeys:manage), only that key''s usage is visible';
CREATE POLICY key_session_only ON apikeys_internal.quota_state AS RESTRICTIVE FOR SELECT
    USING (apikeys_internal._key_session() IS NULL
           OR key_id OPERATOR(pg_catalog.=) apikeys_internal._key_session());
COMMENT ON POLICY key_session_only ON apikeys_internal.quota_state IS
    'while an api key is logged in (without apikeys:manage), only that key''s quota state is visible';
CREATE POLICY key_session_only ON apikeys_internal.key_requests AS RESTRICTIVE FOR SELECT
    USING (apikeys_internal._key_session() IS NULL
           OR key_id OPERATOR(pg_catalog.=) apikeys_internal._key_session());
COMMENT ON POLICY key_session_only ON apikeys_internal.key_requests IS
    'while an api key is logged in (without apikeys:manage), only the request of that key is visible';
CREATE POLICY key_session_only ON apikeys_internal.request_log AS RESTRICTIVE FOR SELECT
    USING (apikeys_internal._key_session() IS NULL
           OR key_id OPERATOR(pg_catalog.=) apikeys_internal._key_session());
COMMENT ON POLICY key_session_only ON apikeys_internal.request_log IS
    'while an api key is logged in (without apikeys:manage), only that key''s requests are visible';
CREATE POLICY key_session_only ON apikeys_internal.revealable_secrets AS RESTRICTIVE FOR SELECT
    USING (apikeys_internal._key_session() IS NULL
           OR key_id OPERATOR(pg_catalog.=) apikeys_internal._key_session());
COMMENT ON POLICY key_session_only ON apikeys_internal.revealable_secrets IS
    'while an api key is logged in (without apikeys:manage), only that key''s row is visible';
CREATE POLICY key_session_only ON apikeys_internal.imported_keys AS RESTRICTIVE FOR SELECT
    USING (apikeys_internal._key_session() IS NULL
           OR key_id OPERATOR(pg_catalog.=) apikeys_internal._key_session());
COMMENT ON POLICY key_session_only ON apikeys_internal.imported_keys IS
    'while an api key is logged in (without apikeys:manage), only that key''s row is visible';
-- Fair shares of shared memory (README, "Shared memory, the worker,
-- settings"): a bound on the keys of a role, checked by every path that makes
-- a key or gives it a role (through _check_role_grant; create's C fast path
-- calls the same C check), the index that check reads, and the triggers that
-- free the shared-memory entries of deleted and revoked keys when that
-- commits.  The shares themselves are in shared memory (src/shmem.c).
-------------------------------------------------------------------------------
CREATE INDEX key_catalog_role_idx ON apikeys_internal.key_catalog (role);

CREATE FUNCTION apikeys_internal._check_key_count(p_caller pg_catalog.oid, p_role pg_catalog.oid)
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_check_key_count_sql'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION apikeys_internal._check_key_count(pg_catalog.oid, pg_catalog.oid) IS
    'internal: raises 54000 when the role has apikeys.max_keys_per_role keys (revoked ones included) and the caller is no admin';
REVOKE ALL ON FUNCTION apikeys_internal._check_key_count(pg_catalog.oid, pg_catalog.oid) FROM PUBLIC;

CREATE FUNCTION apikeys_internal._key_untracked()
RETURNS trigger
AS 'MODULE_PATHNAME', 'apikeys_key_untracked'
LANGUAGE C;
COMMENT ON FUNCTION apikeys_internal._key_untracked() IS
    'trigger: lists a deleted or revoked key (or, on TRUNCATE, every key) so that its entry in shared memory is freed when the transaction commits';
REVOKE ALL ON FUNCTION apikeys_internal._key_untracked() FROM PUBLIC;

CREATE TRIGGER key_catalog_untrack_delete
    AFTER DELETE ON apikeys_internal.key_catalog
    FOR EACH ROW EXECUTE FUNCTION apikeys_internal._key_untracked();
CREATE TRIGGER key_catalog_untrack_revoke
    AFTER UPDATE OF state ON apikeys_internal.key_catalog
    FOR EACH ROW
    WHEN (NEW.state OPERATOR(pg_catalog.=) 'revoked' AND OLD.state OPERATOR(pg_catalog.<>) 'revoked')
    EXECUTE FUNCTION apikeys_internal._key_untracked();
CREATE TRIGGER key_catalog_untrack_truncate
    AFTER TRUNCATE ON apikeys_internal.key_catalog
    FOR EACH STATEMENT EXECUTE FUNCTION apikeys_internal._key_untracked();
-- (a logical replication subscriber frees them too)
ALTER TABLE apikeys_internal.key_catalog ENABLE ALWAYS TRIGGER key_catalog_untrack_delete;
ALTER TABLE apikeys_internal.key_catalog ENABLE ALWAYS TRIGGER key_catalog_untrack_revoke;
ALTER TABLE apikeys_internal.key_catalog ENABLE ALWAYS TRIGGER key_catalog_untrack_truncate;

CREATE FUNCTION @extschema@.usage_shares(OUT kind pg_catalog.text,
                                         OUT name pg_catalog.text,
                                         OUT tracked pg_catalog.int4,
                                         OUT share pg_catalog.int4,
                                         OUT refused pg_catalog.int8,
                                         OUT untracked pg_catalog.int8,
                                         OUT borrowed pg_catalog.int4)
RETURNS SETOF record
AS 'MODULE_PATHNAME', 'apikeys_usage_shares'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.usage_shares() IS
    'the shares of shared memory, for the whole server: every role (its keys) and database holding entries, how many, its share (apikeys.tracked_share_per_role or _per_database of apikeys.max_tracked_keys), the limited requests refused and verifications not counted because it was full, since it last held none, and how many of its entries it borrowed past a share (while one role''s share of the table stays free); raises 55000 without shared_preload_libraries; admins only';
REVOKE ALL ON FUNCTION @extschema@.usage_shares() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION @extschema@.usage_shares() TO apikeys_admin;

-- Events: NOTIFY apikeys names no key (src/note.c, README "Events").
--
-- PostgreSQL has no privilege on LISTEN: any role can listen on any channel,
-- so a payload is public.  Payloads therefore carry only the event and the
-- seq of a row to read ({"event": "audit", "seq": 42} for apikeys.audit_log,
-- {"event": "quota", "seq": 7} for apikeys.quota_events); what a row says is
-- read through row-level security, as the listings are.  The worker writes
-- the quota events here and keeps them 7 days.  Not dumped: they are
-- notices, not history (the audit log is).
-------------------------------------------------------------------------------
CREATE TABLE apikeys_internal.quota_events (
    seq       pg_catalog.int8 GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at        pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    event     pg_catalog.text NOT NULL
              CHECK (event OPERATOR(pg_catalog.=) ANY (ARRAY['quota_low', 'quota_exhausted'])),
    key_id    pg_catalog.text COLLATE "C" NOT NULL,
    remaining pg_catalog.int8
);
COMMENT ON TABLE apikeys_internal.quota_events IS
    'quota warnings written by the apikeys worker, each announced by NOTIFY apikeys with its seq only; kept 7 days; read it through apikeys.quota_events';
COMMENT ON COLUMN apikeys_internal.quota_events.seq IS 'the number NOTIFY apikeys carries ({"event": "quota", "seq": N})';
COMMENT ON COLUMN apikeys_internal.quota_events.event IS
    'quota_low (remaining fell below apikeys.quota_notify_percent of the value last set or refilled) or quota_exhausted (none left)';
COMMENT ON COLUMN apikeys_internal.quota_events.remaining IS 'uses left when the worker saw it';
ALTER TABLE apikeys_internal.quota_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE apikeys_internal.quota_events FORCE ROW LEVEL SECURITY;
-- as usage_hourly: the events of the keys one can see; admins all of them
CREATE POLICY quota_events_visible ON apikeys_internal.quota_events
    FOR SELECT
    USING (apikeys_internal._is_admin(apikeys_internal._current_role())
           OR EXISTS (SELECT 1 FROM apikeys_internal.key_catalog k
                       WHERE k.key_id OPERATOR(pg_catalog.=) quota_events.key_id));
COMMENT ON POLICY quota_events_visible ON apikeys_internal.quota_events IS
    'a role sees the events of the keys apikeys.keys shows it; admins all';
REVOKE ALL ON apikeys_internal.quota_events FROM PUBLIC;
GRANT SELECT ON apikeys_internal.quota_events TO PUBLIC;

CREATE VIEW @extschema@.quota_events WITH (security_invoker = true) AS
SELECT e.seq, e.at, e.event, e.key_id, e.remaining
  FROM apikeys_internal.quota_events e;
COMMENT ON VIEW @extschema@.quota_events IS
    'quota warnings of the keys visible to the current role (admins: all), the last 7 days; NOTIFY apikeys announces each with {"event": "quota", "seq": N} and nothing else';
GRANT SELECT ON @extschema@.quota_events TO PUBLIC;
