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
