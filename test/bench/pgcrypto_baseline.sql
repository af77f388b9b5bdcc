-- test/bench/pgcrypto_baseline.sql: the hand-written baseline `make bench`
-- measures apikeys against.  It is what an application would write by hand
-- with pgcrypto: a table of SHA-256 digests, a SQL function that looks a key
-- up and compares, and a SQL function that creates a key.  No audit, no
-- checks beyond the table's own.

CREATE TABLE pgcrypto_keys (
    key_id     text PRIMARY KEY,
    hash       bytea NOT NULL,
    name       text NOT NULL,
    role       name NOT NULL,
    scopes     text[] NOT NULL,
    revoked    bool NOT NULL DEFAULT false,
    expires_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- verify a token of the form <prefix>_<key_id>_<secret><checksum>
CREATE FUNCTION pgcrypto_verify(tok text, want text)
RETURNS TABLE (valid bool, role name) LANGUAGE sql STABLE AS $$
    SELECT k.hash = digest(substr(tok, length(tok) - 37, 32), 'sha256')
           AND NOT k.revoked
           AND (k.expires_at IS NULL OR k.expires_at > now())
           AND (want IS NULL OR want = ANY (k.scopes)),
           k.role
      FROM pgcrypto_keys k
     WHERE k.key_id = split_part(tok, '_', 2)
$$;

-- create a key; the token is returned once
CREATE FUNCTION pgcrypto_create(p_name text, p_scopes text[])
RETURNS TABLE (key_id text, token text) LANGUAGE sql AS $$
    WITH s AS (SELECT encode(gen_random_bytes(9), 'hex') AS kid,
                      encode(gen_random_bytes(24), 'hex') AS sec),
         i AS (INSERT INTO pgcrypto_keys (key_id, hash, name, role, scopes)
               SELECT kid, digest(sec, 'sha256'), p_name, current_user, p_scopes FROM s
               RETURNING 1)
    SELECT s.kid, 'pk_' || s.kid || '_' || s.sec FROM s, i
$$;
