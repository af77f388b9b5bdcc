-- setup: helpers shared by the suites that follow (pg_regress runs them in
-- order, in one database).
CREATE SCHEMA regress;
GRANT USAGE ON SCHEMA regress TO PUBLIC;

-- Run cmd and show its SQLSTATE, message, detail and hint (or 'ok'), with
-- key_id, when given, masked: key ids are random and would make the output
-- vary.
CREATE FUNCTION regress.try(cmd text, key_id text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    detail text;
    hint text;
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS detail = PG_EXCEPTION_DETAIL, hint = PG_EXCEPTION_HINT;
    RETURN replace(SQLSTATE || ': ' || SQLERRM
                   || CASE WHEN detail <> '' THEN ' DETAIL: ' || detail ELSE '' END
                   || CASE WHEN hint <> '' THEN ' HINT: ' || hint ELSE '' END,
                   coalesce(key_id, '<none>'), '<key_id>');
END $$;

-- A token with the right checksum and a chosen secret: forge(token, secret)
-- keeps the prefix and key id, puts in the secret and recomputes the CRC-32
-- checksum (as six base62 digits), so only the secret is wrong.
CREATE FUNCTION regress.forge(tok text, secret text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    head text := left(tok, length(tok) - 38) || secret;
BEGIN
    -- recompute the CRC-32 checksum so only the secret is wrong
    RETURN head || regress.base62(regress.crc32(head));
END $$;
CREATE FUNCTION regress.crc32(s text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    crc bigint := 4294967295;
    b int;
BEGIN
    FOR i IN 1..length(s) LOOP
        b := ascii(substr(s, i, 1));
        crc := crc # b;
        FOR j IN 1..8 LOOP
            IF crc & 1 = 1 THEN crc := (crc >> 1) # 3988292384;
            ELSE crc := crc >> 1; END IF;
        END LOOP;
    END LOOP;
    RETURN crc # 4294967295;
END $$;
CREATE FUNCTION regress.base62(v bigint) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    alphabet text := '0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz';
    out text := '';
BEGIN
    FOR i IN 1..6 LOOP
        out := substr(alphabet, (v % 62)::int + 1, 1) || out;
        v := v / 62;
    END LOOP;
    RETURN out;
END $$;
