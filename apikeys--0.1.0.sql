/* apikeys--0.1.0.sql: install script of the apikeys extension */

-- complain if script is sourced in psql, rather than via CREATE EXTENSION
\echo Use "CREATE EXTENSION apikeys" to load this file. \quit

-------------------------------------------------------------------------------
-- The admin role.  Roles are cluster-wide and the extension may be created in
-- several databases, so it is created only when absent.
-------------------------------------------------------------------------------
DO $do$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles
                   WHERE rolname OPERATOR(pg_catalog.=) 'apikeys_admin') THEN
        CREATE ROLE apikeys_admin NOLOGIN;
        COMMENT ON ROLE apikeys_admin IS
            'apikeys: members manage every api key and read every hash and audit row';
    END IF;
END
$do$;

-- The schema may have existed before CREATE EXTENSION: refuse one that a
-- non-superuser owns, since its owner could plant objects in it.
DO $do$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_namespace n
              JOIN pg_catalog.pg_roles r ON r.oid OPERATOR(pg_catalog.=) n.nspowner
             WHERE n.nspname OPERATOR(pg_catalog.=) '@extschema@') THEN
        RAISE EXCEPTION 'schema "@extschema@" is owned by a role that is not a superuser'
            USING ERRCODE = '42501',
                  HINT = 'Drop or rename that schema, then run CREATE EXTENSION apikeys again.';
    END IF;
END
$do$;

-- Everyone may look into the schema; what they may do there is granted below.
GRANT USAGE ON SCHEMA @extschema@ TO PUBLIC;

-------------------------------------------------------------------------------
-- The apikey type
-------------------------------------------------------------------------------
CREATE TYPE @extschema@.apikey;

CREATE FUNCTION @extschema@.apikey_in(pg_catalog.cstring)
RETURNS @extschema@.apikey
AS 'MODULE_PATHNAME', 'apikey_in'
-- stable, restricted: the value is masked for this backend and transaction
LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;

CREATE FUNCTION @extschema@.apikey_out(@extschema@.apikey)
RETURNS pg_catalog.cstring
AS 'MODULE_PATHNAME', 'apikey_out'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE FUNCTION @extschema@.apikey_recv(pg_catalog.internal)
RETURNS @extschema@.apikey
AS 'MODULE_PATHNAME', 'apikey_recv'
-- stable, restricted: the value is masked for this backend and transaction
LANGUAGE C STABLE STRICT PARALLEL RESTRICTED;

CREATE FUNCTION @extschema@.apikey_send(@extschema@.apikey)
RETURNS pg_catalog.bytea
AS 'MODULE_PATHNAME', 'apikey_send'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;

CREATE TYPE @extschema@.apikey (
    INPUT = @extschema@.apikey_in,
    OUTPUT = @extschema@.apikey_out,
    RECEIVE = @extschema@.apikey_recv,
    SEND = @extschema@.apikey_send,
    INTERNALLENGTH = VARIABLE,
    STORAGE = plain
);

COMMENT ON TYPE @extschema@.apikey IS
    'a parsed api key token: grammar and checksum validated on input; holds the prefix, the key id and the SHA-256 of the secret masked for this backend, never the secret; prints redacted; verifies only in the transaction that parsed it';
COMMENT ON FUNCTION @extschema@.apikey_in(pg_catalog.cstring) IS
    'apikey input: validates grammar and checksum; the error never contains the input';
COMMENT ON FUNCTION @extschema@.apikey_out(@extschema@.apikey) IS
    'apikey output: prefix and key id, secret redacted';
COMMENT ON FUNCTION @extschema@.apikey_recv(pg_catalog.internal) IS
    'apikey binary input: the token text, validated as strictly as apikey_in';
COMMENT ON FUNCTION @extschema@.apikey_send(@extschema@.apikey) IS
    'apikey binary output: the redacted text form';

CREATE FUNCTION @extschema@.apikey_key_id(token @extschema@.apikey)
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikey_key_id'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.apikey_key_id(@extschema@.apikey) IS
    'the public key id of a token';

CREATE FUNCTION @extschema@.apikey_prefix(token @extschema@.apikey)
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikey_prefix'
LANGUAGE C IMMUTABLE STRICT PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@.apikey_prefix(@extschema@.apikey) IS
    'the prefix of a token (issuer and environment, such as ak_live)';

-------------------------------------------------------------------------------
-- The key catalog.  Column order is read by the C verify path (src/apikeys.h).
-------------------------------------------------------------------------------
CREATE TABLE @extschema@.key_catalog (
    key_id            pg_catalog.text COLLATE "C" NOT NULL,
    name              pg_catalog.text NOT NULL,
    prefix            pg_catalog.text COLLATE "C" NOT NULL,
    role              pg_catalog.regrole NOT NULL,
    scopes            pg_catalog.text[] NOT NULL DEFAULT '{}',
    expires_at        pg_catalog.timestamptz,
    metadata          pg_catalog.jsonb NOT NULL DEFAULT '{}',
    state             pg_catalog.text NOT NULL DEFAULT 'active',
    hash_version      pg_catalog.int2 NOT NULL,
    hash              pg_catalog.bytea NOT NULL,
    prev_hash_version pg_catalog.int2,
    prev_hash         pg_catalog.bytea,
    prev_valid_until  pg_catalog.timestamptz,
    created_at        pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    created_by        pg_catalog.regrole NOT NULL,
    updated_at        pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.now(),
    rotated_at        pg_catalog.timestamptz,
    revoked_at        pg_catalog.timestamptz,
    CONSTRAINT key_catalog_pkey PRIMARY KEY (key_id),
    CONSTRAINT key_catalog_key_id_check
        CHECK (key_id OPERATOR(pg_catalog.~) '^[0-9A-Za-z]{12}$'),
    CONSTRAINT key_catalog_prefix_check
        CHECK (prefix OPERATOR(pg_catalog.~) '^[a-z][a-z0-9_]{0,19}$'),
    CONSTRAINT key_catalog_name_check
        CHECK (pg_catalog.btrim(name) OPERATOR(pg_catalog.<>) ''),
    CONSTRAINT key_catalog_state_check
        CHECK (state OPERATOR(pg_catalog.=) ANY (ARRAY['active', 'disabled', 'revoked'])),
    CONSTRAINT key_catalog_prev_check
        CHECK ((prev_hash IS NULL) OPERATOR(pg_catalog.=) (prev_valid_until IS NULL))
);

COMMENT ON TABLE @extschema@.key_catalog IS
    'api keys: one row per key, hashes of secrets only; read it through apikeys.keys';
COMMENT ON COLUMN @extschema@.key_catalog.key_id IS 'public, random lookup handle (12 base62 characters)';
COMMENT ON COLUMN @extschema@.key_catalog.role IS 'role the key authenticates as; a dropped role leaves the key orphaned';
COMMENT ON COLUMN @extschema@.key_catalog.state IS 'active, disabled or revoked';
COMMENT ON COLUMN @extschema@.key_catalog.hash_version IS 'scheme of hash: 1 = SHA-256 of the secret';
COMMENT ON COLUMN @extschema@.key_catalog.hash IS 'digest of the current secret (admins only)';
COMMENT ON COLUMN @extschema@.key_catalog.prev_hash IS 'digest of the secret replaced by a rotation with grace (admins only)';
COMMENT ON COLUMN @extschema@.key_catalog.prev_valid_until IS 'end of the grace period of the previous secret';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.key_catalog', '');

-------------------------------------------------------------------------------
-- Privilege helpers (invoker rights: they answer for current_user or the
-- role passed in)
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@._current_role()
RETURNS pg_catalog.oid
AS 'MODULE_PATHNAME', 'apikeys_current_role'
LANGUAGE C STABLE PARALLEL SAFE;
COMMENT ON FUNCTION @extschema@._current_role() IS
    'current_user as an OID (not through its name, which regrole input would parse)';

CREATE FUNCTION @extschema@._is_admin(who pg_catalog.oid)
RETURNS pg_catalog.bool
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.pg_has_role(who, 'apikeys_admin', 'MEMBER')
$$;
COMMENT ON FUNCTION @extschema@._is_admin(pg_catalog.oid) IS
    'is the role a superuser or a member of apikeys_admin?';

CREATE FUNCTION @extschema@._role_exists(role pg_catalog.oid)
RETURNS pg_catalog.bool
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles r WHERE r.oid OPERATOR(pg_catalog.=) role)
$$;
COMMENT ON FUNCTION @extschema@._role_exists(pg_catalog.oid) IS
    'does a role with this oid exist? (a key whose role does not is orphaned)';

CREATE FUNCTION @extschema@._may_act_for(who pg_catalog.oid, role pg_catalog.oid)
RETURNS pg_catalog.bool
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT @extschema@._is_admin(who) OR pg_catalog.pg_has_role(who, role, 'MEMBER')
$$;
COMMENT ON FUNCTION @extschema@._may_act_for(pg_catalog.oid, pg_catalog.oid) IS
    'may the role issue and renew keys for the other role? (admins, and members of it)';

CREATE FUNCTION @extschema@._can_manage(who pg_catalog.oid,
                                        key_role pg_catalog.oid,
                                        key_creator pg_catalog.oid)
RETURNS pg_catalog.bool
LANGUAGE sql STABLE PARALLEL SAFE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT key_creator OPERATOR(pg_catalog.=) who
        OR @extschema@._may_act_for(who, key_role)
$$;
COMMENT ON FUNCTION @extschema@._can_manage(pg_catalog.oid, pg_catalog.oid, pg_catalog.oid) IS
    'may the role see and manage a key with this role and creator? (admins, the creator, members of the key''s role)';

ALTER TABLE @extschema@.key_catalog ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.key_catalog FORCE ROW LEVEL SECURITY;

CREATE POLICY key_catalog_visible ON @extschema@.key_catalog
    FOR SELECT
    USING (@extschema@._can_manage(@extschema@._current_role(),
                                   role::pg_catalog.oid, created_by::pg_catalog.oid));
CREATE POLICY key_catalog_admin ON @extschema@.key_catalog
    FOR ALL
    USING (@extschema@._is_admin(@extschema@._current_role()))
    WITH CHECK (@extschema@._is_admin(@extschema@._current_role()));

REVOKE ALL ON @extschema@.key_catalog FROM PUBLIC;
GRANT SELECT (key_id, name, prefix, role, scopes, expires_at, metadata, state,
              prev_valid_until, created_at, created_by, updated_at, rotated_at,
              revoked_at)
    ON @extschema@.key_catalog TO PUBLIC;
GRANT SELECT ON @extschema@.key_catalog TO apikeys_admin;

-------------------------------------------------------------------------------
-- The listing
-------------------------------------------------------------------------------
CREATE VIEW @extschema@.keys WITH (security_invoker = true) AS
SELECT k.key_id,
       k.name,
       k.prefix,
       k.role,
       k.scopes,
       CASE
           WHEN k.state OPERATOR(pg_catalog.=) 'revoked' THEN 'revoked'
           WHEN NOT @extschema@._role_exists(k.role::pg_catalog.oid) THEN 'orphaned'
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
       k.prev_valid_until AS grace_until
  FROM @extschema@.key_catalog k;

COMMENT ON VIEW @extschema@.keys IS
    'api keys visible to the current role (admins see all; others the keys they created or whose role they belong to); no hashes';
COMMENT ON COLUMN @extschema@.keys.status IS
    'active, disabled, revoked, expired, or orphaned (the key''s role was dropped)';
COMMENT ON COLUMN @extschema@.keys.grace_until IS
    'until when the secret replaced by the last rotation still verifies';
GRANT SELECT ON @extschema@.keys TO PUBLIC;

-------------------------------------------------------------------------------
-- The audit log
-------------------------------------------------------------------------------
CREATE TABLE @extschema@.audit_log (
    at         pg_catalog.timestamptz NOT NULL DEFAULT pg_catalog.clock_timestamp(),
    txid       pg_catalog.xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
    action     pg_catalog.text NOT NULL,
    key_id     pg_catalog.text COLLATE "C" NOT NULL,
    actor      pg_catalog.name NOT NULL,
    actor_role pg_catalog.name NOT NULL,
    key_role   pg_catalog.regrole,
    changes    pg_catalog.jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_key_id_at_idx ON @extschema@.audit_log (key_id, at);

COMMENT ON TABLE @extschema@.audit_log IS
    'append-only history of every change to an api key; never holds a secret or a hash';
COMMENT ON COLUMN @extschema@.audit_log.at IS 'when the change was made (clock time)';
COMMENT ON COLUMN @extschema@.audit_log.txid IS 'transaction that made the change';
COMMENT ON COLUMN @extschema@.audit_log.action IS
    'create, rotate, disable, enable, revoke, update or delete; direct_insert, direct_update or direct_delete for changes made to the catalog outside the apikeys functions';
COMMENT ON COLUMN @extschema@.audit_log.actor IS 'session user';
COMMENT ON COLUMN @extschema@.audit_log.actor_role IS 'role that called the apikeys function (the current role)';
COMMENT ON COLUMN @extschema@.audit_log.key_role IS 'role of the key after the change (before it, for a delete)';
COMMENT ON COLUMN @extschema@.audit_log.changes IS
    'what changed: the new key''s settings for a create, {"column": {"old": ..., "new": ...}} for changes';

SELECT pg_catalog.pg_extension_config_dump('@extschema@.audit_log', '');

ALTER TABLE @extschema@.audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE @extschema@.audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY audit_log_visible ON @extschema@.audit_log
    FOR SELECT
    USING (@extschema@._is_admin(@extschema@._current_role())
           OR actor_role OPERATOR(pg_catalog.=) pg_catalog.current_user()
           OR pg_catalog.pg_has_role(@extschema@._current_role(), key_role::pg_catalog.oid, 'MEMBER'));
CREATE POLICY audit_log_append ON @extschema@.audit_log
    FOR INSERT
    WITH CHECK (@extschema@._is_admin(@extschema@._current_role()));
REVOKE ALL ON @extschema@.audit_log FROM PUBLIC;
GRANT SELECT ON @extschema@.audit_log TO PUBLIC;

-- Append-only: no update, no delete, no truncate, whoever asks.
CREATE FUNCTION @extschema@._audit_log_append_only()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    RAISE EXCEPTION 'apikeys.audit_log is append-only'
        USING ERRCODE = '55000',
              DETAIL = pg_catalog.format('%s is not allowed on the audit log.', TG_OP);
END
$$;
COMMENT ON FUNCTION @extschema@._audit_log_append_only() IS
    'trigger: rejects UPDATE, DELETE and TRUNCATE on apikeys.audit_log';
REVOKE ALL ON FUNCTION @extschema@._audit_log_append_only() FROM PUBLIC;

CREATE TRIGGER audit_log_no_change
    BEFORE UPDATE OR DELETE ON @extschema@.audit_log
    FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate
    BEFORE TRUNCATE ON @extschema@.audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION @extschema@._audit_log_append_only();

-- Who is acting: the role that called the apikeys entry point, recorded in C.
CREATE FUNCTION @extschema@._actor()
RETURNS pg_catalog.oid
AS 'MODULE_PATHNAME', 'apikeys_actor'
LANGUAGE C STABLE;
COMMENT ON FUNCTION @extschema@._actor() IS
    'role that called the running apikeys lifecycle function; null outside one';
REVOKE ALL ON FUNCTION @extschema@._actor() FROM PUBLIC;

-- One audit row per changed key row; secrets and hashes are never copied.
CREATE FUNCTION @extschema@._audit_key_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    hidden   text[] := ARRAY['hash', 'hash_version', 'prev_hash', 'prev_hash_version',
                             'key_id', 'updated_at', 'created_at', 'created_by',
                             'rotated_at', 'revoked_at'];
    actor    oid := @extschema@._actor();
    act      text;
    diff     jsonb := '{}';
    old_j    jsonb;
    new_j    jsonb;
    k        text;
BEGIN
    IF TG_OP OPERATOR(pg_catalog.=) 'INSERT' THEN
        act := 'create';
        diff := pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.-) hidden
                OPERATOR(pg_catalog.-) ARRAY['state', 'prev_valid_until'];
    ELSIF TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN
        act := 'delete';
    ELSE
        old_j := pg_catalog.to_jsonb(OLD) OPERATOR(pg_catalog.-) hidden;
        new_j := pg_catalog.to_jsonb(NEW) OPERATOR(pg_catalog.-) hidden;
        FOR k IN SELECT pg_catalog.jsonb_object_keys(new_j) LOOP
            IF (old_j OPERATOR(pg_catalog.->) k) IS DISTINCT FROM (new_j OPERATOR(pg_catalog.->) k) THEN
                diff := diff OPERATOR(pg_catalog.||) pg_catalog.jsonb_build_object(
                    k, pg_catalog.jsonb_build_object('old', old_j OPERATOR(pg_catalog.->) k,
                                                     'new', new_j OPERATOR(pg_catalog.->) k));
            END IF;
        END LOOP;
        IF OLD.hash OPERATOR(pg_catalog.<>) NEW.hash THEN
            act := 'rotate';
            diff := diff OPERATOR(pg_catalog.||) '{"secret": "replaced"}'::pg_catalog.jsonb;
        ELSIF OLD.state OPERATOR(pg_catalog.<>) NEW.state THEN
            act := CASE NEW.state WHEN 'revoked' THEN 'revoke'
                                  WHEN 'disabled' THEN 'disable'
                                  ELSE 'enable' END;
        ELSIF diff OPERATOR(pg_catalog.=) '{}'::pg_catalog.jsonb THEN
            RETURN NULL;            -- nothing a user could see changed
        ELSE
            act := 'update';
        END IF;
    END IF;

    -- Changes made to the catalog outside the apikeys functions are marked.
    IF actor IS NULL THEN
        act := 'direct_' OPERATOR(pg_catalog.||) pg_catalog.lower(TG_OP);
    END IF;

    INSERT INTO @extschema@.audit_log (action, key_id, actor, actor_role, key_role, changes)
    VALUES (act,
            CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN OLD.key_id ELSE NEW.key_id END,
            pg_catalog.session_user(),
            CASE WHEN actor IS NULL THEN pg_catalog.current_user()
                 ELSE pg_catalog.pg_get_userbyid(actor) END,
            CASE WHEN TG_OP OPERATOR(pg_catalog.=) 'DELETE' THEN OLD.role ELSE NEW.role END,
            diff);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION @extschema@._audit_key_change() IS
    'trigger: writes one apikeys.audit_log row per changed key, without secrets or hashes';
REVOKE ALL ON FUNCTION @extschema@._audit_key_change() FROM PUBLIC;

CREATE TRIGGER key_catalog_audit
    AFTER INSERT OR UPDATE OR DELETE ON @extschema@.key_catalog
    FOR EACH ROW EXECUTE FUNCTION @extschema@._audit_key_change();

-------------------------------------------------------------------------------
-- Verification (C, invoker rights, reads the catalog by direct index scan)
-------------------------------------------------------------------------------
CREATE TYPE @extschema@.verification AS (
    valid      pg_catalog.bool,
    status     pg_catalog.text,
    key_id     pg_catalog.text,
    role       pg_catalog.name,
    scopes     pg_catalog.text[],
    expires_at pg_catalog.timestamptz,
    metadata   pg_catalog.jsonb,
    name       pg_catalog.text
);
COMMENT ON TYPE @extschema@.verification IS
    'result of apikey_verify: status is valid, invalid, expired, disabled, revoked or insufficient_scope; key details are null when status is invalid';

CREATE FUNCTION @extschema@.apikey_verify(token pg_catalog.text,
                                          scope pg_catalog.text DEFAULT NULL)
RETURNS @extschema@.verification
AS 'MODULE_PATHNAME', 'apikey_verify_text'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_verify(pg_catalog.text, pg_catalog.text) IS
    'checks a token (and optionally that the key has scope); never raises for bad input: returns status invalid';

CREATE FUNCTION @extschema@.apikey_verify(token @extschema@.apikey,
                                          scope pg_catalog.text DEFAULT NULL)
RETURNS @extschema@.verification
AS 'MODULE_PATHNAME', 'apikey_verify_apikey'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_verify(@extschema@.apikey, pg_catalog.text) IS
    'checks a parsed token (and optionally that the key has scope)';

-------------------------------------------------------------------------------
-- Minting: a new secret for a key id (C: pg_strong_random, SHA-256, CRC-32)
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@._mint(p_prefix pg_catalog.text, p_key_id pg_catalog.text,
                                  OUT key_id pg_catalog.text,
                                  OUT token pg_catalog.text,
                                  OUT hash pg_catalog.bytea,
                                  OUT hash_version pg_catalog.int2)
AS 'MODULE_PATHNAME', 'apikeys_mint'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@._mint(pg_catalog.text, pg_catalog.text) IS
    'internal: a new token and its hash for a prefix and key id (a random key id when null)';
REVOKE ALL ON FUNCTION @extschema@._mint(pg_catalog.text, pg_catalog.text) FROM PUBLIC;

-------------------------------------------------------------------------------
-- Lifecycle, internal halves.  SECURITY DEFINER, not executable by PUBLIC:
-- they are reached only through the C entry points below, which pass the
-- calling role as the first argument.
-------------------------------------------------------------------------------

-- Validate the user-settable fields shared by create and update.
CREATE FUNCTION @extschema@._check_settings(p_name pg_catalog.text,
                                            p_scopes pg_catalog.text[],
                                            p_expires_at pg_catalog.timestamptz,
                                            p_metadata pg_catalog.jsonb)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF p_name IS NOT NULL AND pg_catalog.btrim(p_name) OPERATOR(pg_catalog.=) '' THEN
        RAISE EXCEPTION 'api key name must not be empty'
            USING ERRCODE = '22023',
                  HINT = 'Name the key after what uses it, such as ''billing service''.';
    END IF;
    -- (dimensions first: array_position refuses multidimensional arrays)
    IF p_scopes IS NOT NULL AND
       (pg_catalog.array_ndims(p_scopes) OPERATOR(pg_catalog.>) 1
        OR EXISTS (SELECT 1 FROM pg_catalog.unnest(p_scopes) AS s(scope)
                   WHERE s.scope IS NULL OR s.scope OPERATOR(pg_catalog.=) '')) THEN
        RAISE EXCEPTION 'invalid api key scopes'
            USING ERRCODE = '22023',
                  DETAIL = 'Scopes must be a one-dimensional array of non-empty, non-null strings.';
    END IF;
    IF p_expires_at IS NOT NULL AND p_expires_at OPERATOR(pg_catalog.<>) 'infinity'
       AND p_expires_at OPERATOR(pg_catalog.<=) pg_catalog.clock_timestamp() THEN
        RAISE EXCEPTION 'api key expiry must be in the future'
            USING ERRCODE = '22023',
                  HINT = 'To stop a key now, use apikey_disable or apikey_revoke.';
    END IF;
    IF p_metadata IS NOT NULL AND pg_catalog.jsonb_typeof(p_metadata) OPERATOR(pg_catalog.<>) 'object' THEN
        RAISE EXCEPTION 'api key metadata must be a json object'
            USING ERRCODE = '22023',
                  DETAIL = pg_catalog.format('The value given is a json %s.', pg_catalog.jsonb_typeof(p_metadata)),
                  HINT = 'Wrap it in an object, such as {"value": ...}.';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._check_settings(pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb) IS
    'internal: raises 22023 for an empty name, bad scopes, a past expiry or non-object metadata';
REVOKE ALL ON FUNCTION @extschema@._check_settings(pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb) FROM PUBLIC;

-- Check that p_role names an existing role the caller may give keys to.
CREATE FUNCTION @extschema@._check_role_grant(p_caller pg_catalog.oid, p_role pg_catalog.regrole)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT @extschema@._role_exists(p_role::pg_catalog.oid) THEN
        RAISE EXCEPTION 'role with oid % does not exist', p_role::pg_catalog.oid
            USING ERRCODE = '42704';
    END IF;
    IF NOT @extschema@._may_act_for(p_caller, p_role::pg_catalog.oid) THEN
        RAISE EXCEPTION 'permission denied to issue api keys for role %', p_role
            USING ERRCODE = '42501',
                  DETAIL = pg_catalog.format('Role %s is not a member of role %s.',
                                             pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(p_caller)), p_role),
                  HINT = 'A key never exceeds its creator: only members of a role, members of apikeys_admin and superusers can issue keys for it.';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._check_role_grant(pg_catalog.oid, pg_catalog.regrole) IS
    'internal: raises unless the role exists and the caller is a member of it or an admin';
REVOKE ALL ON FUNCTION @extschema@._check_role_grant(pg_catalog.oid, pg_catalog.regrole) FROM PUBLIC;

-- Lock and return the key row the caller may manage, or raise 42704.
CREATE FUNCTION @extschema@._key_for_update(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS @extschema@.key_catalog
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k @extschema@.key_catalog;
BEGIN
    IF p_key_id IS NULL THEN
        RAISE EXCEPTION 'api key id must not be null'
            USING ERRCODE = '22004';
    END IF;
    -- Only a well-formed key id is ever echoed: the argument could be a
    -- whole token passed by mistake, and a secret must not reach a message.
    IF p_key_id OPERATOR(pg_catalog.!~) '^[0-9A-Za-z]{12}$' THEN
        RAISE EXCEPTION 'invalid api key id'
            USING ERRCODE = '22023',
                  DETAIL = 'A key id is 12 letters and digits; the value given is not shown.',
                  HINT = 'Pass the key id (apikey_key_id(token) gives it), never the token.';
    END IF;
    SELECT * INTO k FROM @extschema@.key_catalog c
     WHERE c.key_id OPERATOR(pg_catalog.=) p_key_id
       FOR UPDATE;
    -- A key the caller may not manage is reported exactly like a missing one.
    IF NOT FOUND OR NOT @extschema@._can_manage(p_caller, k.role::pg_catalog.oid,
                                                 k.created_by::pg_catalog.oid) THEN
        RAISE EXCEPTION 'api key "%" does not exist', p_key_id
            USING ERRCODE = '42704',
                  HINT = 'Keys you did not create, and whose role you are not a member of, are not visible to you.';
    END IF;
    RETURN k;
END
$$;
COMMENT ON FUNCTION @extschema@._key_for_update(pg_catalog.oid, pg_catalog.text) IS
    'internal: locks a key the caller may manage, or raises 42704';
REVOKE ALL ON FUNCTION @extschema@._key_for_update(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

-- Raise unless the caller may give the key's role a working credential
-- again (rotate, enable, update): the role must still exist, and the caller
-- must be an admin or a member of it; a creator who has left the role may
-- still disable, revoke and delete the key, not renew it.
CREATE FUNCTION @extschema@._check_renew(p_caller pg_catalog.oid, k @extschema@.key_catalog)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT @extschema@._role_exists(k.role::pg_catalog.oid) THEN
        RAISE EXCEPTION 'role of api key "%" no longer exists', k.key_id
            USING ERRCODE = '55000',
                  DETAIL = 'The role the key was issued for has been dropped; the key is orphaned.',
                  HINT = 'Give the key a role with apikey_update(key_id, role => ...), or delete it.';
    END IF;
    IF NOT @extschema@._may_act_for(p_caller, k.role::pg_catalog.oid) THEN
        RAISE EXCEPTION 'permission denied to renew api key "%"', k.key_id
            USING ERRCODE = '42501',
                  DETAIL = pg_catalog.format('Role %s is not a member of the key''s role %s.',
                                             pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(p_caller)), k.role),
                  HINT = 'The creator of a key may still disable, revoke or delete it.';
    END IF;
END
$$;
COMMENT ON FUNCTION @extschema@._check_renew(pg_catalog.oid, @extschema@.key_catalog) IS
    'internal: raises unless the caller may rotate, enable or update the key (its role exists and the caller belongs to it, or is an admin)';
REVOKE ALL ON FUNCTION @extschema@._check_renew(pg_catalog.oid, @extschema@.key_catalog) FROM PUBLIC;

CREATE FUNCTION @extschema@._apikey_create(p_caller pg_catalog.oid,
                                           p_name pg_catalog.text,
                                           p_role pg_catalog.regrole,
                                           p_scopes pg_catalog.text[],
                                           p_expires_at pg_catalog.timestamptz,
                                           p_prefix pg_catalog.text,
                                           p_metadata pg_catalog.jsonb,
                                           OUT new_key_id pg_catalog.text,
                                           OUT new_token pg_catalog.text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    m record;
BEGIN
    IF p_name IS NULL THEN
        RAISE EXCEPTION 'api key name must not be null'
            USING ERRCODE = '22004',
                  HINT = 'Name the key after what uses it, such as ''billing service''.';
    END IF;
    PERFORM @extschema@._check_settings(p_name, p_scopes, p_expires_at, p_metadata);
    p_role := COALESCE(p_role, p_caller::pg_catalog.regrole);
    PERFORM @extschema@._check_role_grant(p_caller, p_role);

    -- 62^12 key ids: a collision is all but impossible, but never fatal.
    FOR attempt IN 1..5 LOOP
        SELECT * INTO m FROM @extschema@._mint(COALESCE(p_prefix, 'ak'), NULL);
        BEGIN
            INSERT INTO @extschema@.key_catalog
                (key_id, name, prefix, role, scopes, expires_at, metadata,
                 hash_version, hash, created_by)
            VALUES (m.key_id, p_name, COALESCE(p_prefix, 'ak'), p_role,
                    COALESCE(p_scopes, '{}'),
                    NULLIF(p_expires_at, 'infinity'),
                    COALESCE(p_metadata, '{}'),
                    m.hash_version, m.hash, p_caller::pg_catalog.regrole);
            new_key_id := m.key_id;
            new_token := m.token;
            RETURN;
        EXCEPTION WHEN unique_violation THEN
            NULL;                   -- draw another key id
        END;
    END LOOP;
    RAISE EXCEPTION 'could not allocate a unique api key id'
        USING ERRCODE = '23505';
END
$$;
COMMENT ON FUNCTION @extschema@._apikey_create(pg_catalog.oid, pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb) IS
    'internal half of apikey_create; the first argument is the calling role';
REVOKE ALL ON FUNCTION @extschema@._apikey_create(pg_catalog.oid, pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb) FROM PUBLIC;

CREATE FUNCTION @extschema@._apikey_rotate(p_caller pg_catalog.oid,
                                           p_key_id pg_catalog.text,
                                           p_grace pg_catalog.interval)
RETURNS pg_catalog.text
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k @extschema@.key_catalog;
    m record;
BEGIN
    k := @extschema@._key_for_update(p_caller, p_key_id);
    IF k.state OPERATOR(pg_catalog.=) 'revoked' THEN
        RAISE EXCEPTION 'cannot rotate revoked api key "%"', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = 'Revocation is permanent.',
                  HINT = 'Create a new key instead.';
    END IF;
    PERFORM @extschema@._check_renew(p_caller, k);
    IF p_grace IS NOT NULL AND p_grace OPERATOR(pg_catalog.<) '0'::pg_catalog.interval THEN
        RAISE EXCEPTION 'grace period must not be negative'
            USING ERRCODE = '22023',
                  HINT = 'Use a positive interval, or none to end the old secret at commit.';
    END IF;

    SELECT * INTO m FROM @extschema@._mint(k.prefix, k.key_id);
    IF p_grace IS NULL OR p_grace OPERATOR(pg_catalog.=) '0'::pg_catalog.interval THEN
        UPDATE @extschema@.key_catalog c
           SET hash_version = m.hash_version, hash = m.hash,
               prev_hash_version = NULL, prev_hash = NULL, prev_valid_until = NULL,
               rotated_at = pg_catalog.now(), updated_at = pg_catalog.now()
         WHERE c.key_id OPERATOR(pg_catalog.=) k.key_id;
    ELSE
        UPDATE @extschema@.key_catalog c
           SET hash_version = m.hash_version, hash = m.hash,
               prev_hash_version = k.hash_version, prev_hash = k.hash,
               prev_valid_until = pg_catalog.now() OPERATOR(pg_catalog.+) p_grace,
               rotated_at = pg_catalog.now(), updated_at = pg_catalog.now()
         WHERE c.key_id OPERATOR(pg_catalog.=) k.key_id;
    END IF;
    RETURN m.token;
END
$$;
COMMENT ON FUNCTION @extschema@._apikey_rotate(pg_catalog.oid, pg_catalog.text, pg_catalog.interval) IS
    'internal half of apikey_rotate; the first argument is the calling role';
REVOKE ALL ON FUNCTION @extschema@._apikey_rotate(pg_catalog.oid, pg_catalog.text, pg_catalog.interval) FROM PUBLIC;

-- Move a key to another state; revoked is final.
CREATE FUNCTION @extschema@._set_state(p_caller pg_catalog.oid,
                                       p_key_id pg_catalog.text,
                                       p_state pg_catalog.text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k @extschema@.key_catalog;
BEGIN
    k := @extschema@._key_for_update(p_caller, p_key_id);
    IF k.state OPERATOR(pg_catalog.=) p_state THEN
        RETURN;                     -- already there: nothing to do, nothing to audit
    END IF;
    IF k.state OPERATOR(pg_catalog.=) 'revoked' THEN
        RAISE EXCEPTION 'api key "%" is revoked', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = 'Revocation is permanent.',
                  HINT = 'Create a new key instead.';
    END IF;
    IF p_state OPERATOR(pg_catalog.=) 'active' THEN
        PERFORM @extschema@._check_renew(p_caller, k);
    END IF;
    UPDATE @extschema@.key_catalog c
       SET state = p_state,
           revoked_at = CASE WHEN p_state OPERATOR(pg_catalog.=) 'revoked'
                             THEN pg_catalog.now() END,
           -- a revoked key keeps no secret that could verify
           prev_hash_version = CASE WHEN p_state OPERATOR(pg_catalog.=) 'revoked'
                                    THEN NULL ELSE c.prev_hash_version END,
           prev_hash = CASE WHEN p_state OPERATOR(pg_catalog.=) 'revoked'
                            THEN NULL ELSE c.prev_hash END,
           prev_valid_until = CASE WHEN p_state OPERATOR(pg_catalog.=) 'revoked'
                                   THEN NULL ELSE c.prev_valid_until END,
           updated_at = pg_catalog.now()
     WHERE c.key_id OPERATOR(pg_catalog.=) k.key_id;
END
$$;
COMMENT ON FUNCTION @extschema@._set_state(pg_catalog.oid, pg_catalog.text, pg_catalog.text) IS
    'internal: moves a key the caller may manage to active, disabled or revoked';
REVOKE ALL ON FUNCTION @extschema@._set_state(pg_catalog.oid, pg_catalog.text, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION @extschema@._apikey_disable(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@._set_state(p_caller, p_key_id, 'disabled') $$;
COMMENT ON FUNCTION @extschema@._apikey_disable(pg_catalog.oid, pg_catalog.text) IS
    'internal half of apikey_disable; the first argument is the calling role';
REVOKE ALL ON FUNCTION @extschema@._apikey_disable(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION @extschema@._apikey_enable(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@._set_state(p_caller, p_key_id, 'active') $$;
COMMENT ON FUNCTION @extschema@._apikey_enable(pg_catalog.oid, pg_catalog.text) IS
    'internal half of apikey_enable; the first argument is the calling role';
REVOKE ALL ON FUNCTION @extschema@._apikey_enable(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION @extschema@._apikey_revoke(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS void
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$ SELECT @extschema@._set_state(p_caller, p_key_id, 'revoked') $$;
COMMENT ON FUNCTION @extschema@._apikey_revoke(pg_catalog.oid, pg_catalog.text) IS
    'internal half of apikey_revoke; the first argument is the calling role';
REVOKE ALL ON FUNCTION @extschema@._apikey_revoke(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION @extschema@._apikey_delete(p_caller pg_catalog.oid, p_key_id pg_catalog.text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k @extschema@.key_catalog;
BEGIN
    k := @extschema@._key_for_update(p_caller, p_key_id);
    DELETE FROM @extschema@.key_catalog c WHERE c.key_id OPERATOR(pg_catalog.=) k.key_id;
END
$$;
COMMENT ON FUNCTION @extschema@._apikey_delete(pg_catalog.oid, pg_catalog.text) IS
    'internal half of apikey_delete; the first argument is the calling role';
REVOKE ALL ON FUNCTION @extschema@._apikey_delete(pg_catalog.oid, pg_catalog.text) FROM PUBLIC;

CREATE FUNCTION @extschema@._apikey_update(p_caller pg_catalog.oid,
                                           p_key_id pg_catalog.text,
                                           p_name pg_catalog.text,
                                           p_scopes pg_catalog.text[],
                                           p_expires_at pg_catalog.timestamptz,
                                           p_metadata pg_catalog.jsonb,
                                           p_role pg_catalog.regrole)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    k @extschema@.key_catalog;
BEGIN
    k := @extschema@._key_for_update(p_caller, p_key_id);
    IF k.state OPERATOR(pg_catalog.=) 'revoked' THEN
        RAISE EXCEPTION 'cannot update revoked api key "%"', p_key_id
            USING ERRCODE = '55000',
                  DETAIL = 'Revocation is permanent.';
    END IF;
    PERFORM @extschema@._check_settings(p_name, p_scopes, p_expires_at, p_metadata);
    -- moving the key to another role needs the right to issue keys for that
    -- role; any other change needs the right to renew it for its own
    IF p_role IS NOT NULL THEN
        PERFORM @extschema@._check_role_grant(p_caller, p_role);
    ELSE
        PERFORM @extschema@._check_renew(p_caller, k);
    END IF;
    UPDATE @extschema@.key_catalog c
       SET name = COALESCE(p_name, c.name),
           scopes = COALESCE(p_scopes, c.scopes),
           expires_at = CASE WHEN p_expires_at IS NULL THEN c.expires_at
                             WHEN p_expires_at OPERATOR(pg_catalog.=) 'infinity' THEN NULL
                             ELSE p_expires_at END,
           metadata = COALESCE(p_metadata, c.metadata),
           role = COALESCE(p_role, c.role),
           updated_at = pg_catalog.now()
     WHERE c.key_id OPERATOR(pg_catalog.=) k.key_id;
END
$$;
COMMENT ON FUNCTION @extschema@._apikey_update(pg_catalog.oid, pg_catalog.text, pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.regrole) IS
    'internal half of apikey_update; the first argument is the calling role';
REVOKE ALL ON FUNCTION @extschema@._apikey_update(pg_catalog.oid, pg_catalog.text, pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.regrole) FROM PUBLIC;

-------------------------------------------------------------------------------
-- Lifecycle, public entry points (C, invoker rights; see src/lifecycle.c)
-------------------------------------------------------------------------------
CREATE FUNCTION @extschema@.apikey_create(name pg_catalog.text,
                                          role pg_catalog.regrole DEFAULT NULL,
                                          scopes pg_catalog.text[] DEFAULT '{}',
                                          expires_at pg_catalog.timestamptz DEFAULT NULL,
                                          prefix pg_catalog.text DEFAULT NULL,
                                          metadata pg_catalog.jsonb DEFAULT '{}')
RETURNS TABLE (key_id pg_catalog.text, token pg_catalog.text)
AS 'MODULE_PATHNAME', 'apikeys_create'
LANGUAGE C VOLATILE ROWS 1;
COMMENT ON FUNCTION @extschema@.apikey_create(pg_catalog.text, pg_catalog.regrole, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.text, pg_catalog.jsonb) IS
    'creates a key for role (default: the calling role, which must be a member of it unless an admin); returns the token, shown this once';

CREATE FUNCTION @extschema@.apikey_rotate(key_id pg_catalog.text,
                                          grace pg_catalog.interval DEFAULT NULL)
RETURNS pg_catalog.text
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_rotate(pg_catalog.text, pg_catalog.interval) IS
    'replaces the secret of a key and returns the new token; the old secret stops at commit, or at now() + grace';

CREATE FUNCTION @extschema@.apikey_disable(key_id pg_catalog.text)
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_disable(pg_catalog.text) IS
    'disables a key (reversible with apikey_enable); it verifies as disabled';

CREATE FUNCTION @extschema@.apikey_enable(key_id pg_catalog.text)
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_enable(pg_catalog.text) IS
    're-enables a disabled key; a revoked key cannot be enabled';

CREATE FUNCTION @extschema@.apikey_revoke(key_id pg_catalog.text)
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_revoke(pg_catalog.text) IS
    'revokes a key for good; the row stays for audit and verifies as revoked';

CREATE FUNCTION @extschema@.apikey_delete(key_id pg_catalog.text)
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_delete(pg_catalog.text) IS
    'removes a key; its audit history stays';

CREATE FUNCTION @extschema@.apikey_update(key_id pg_catalog.text,
                                          name pg_catalog.text DEFAULT NULL,
                                          scopes pg_catalog.text[] DEFAULT NULL,
                                          expires_at pg_catalog.timestamptz DEFAULT NULL,
                                          metadata pg_catalog.jsonb DEFAULT NULL,
                                          role pg_catalog.regrole DEFAULT NULL)
RETURNS void
AS 'MODULE_PATHNAME', 'apikeys_lifecycle_call'
LANGUAGE C VOLATILE;
COMMENT ON FUNCTION @extschema@.apikey_update(pg_catalog.text, pg_catalog.text, pg_catalog.text[], pg_catalog.timestamptz, pg_catalog.jsonb, pg_catalog.regrole) IS
    'changes a key''s settings; a null argument leaves that setting unchanged; expires_at => ''infinity'' removes the expiry';
