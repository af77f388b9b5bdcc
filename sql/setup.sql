-- setup: helpers shared by the suites that follow (pg_regress runs them in
-- order, in one database).
CREATE SCHEMA regress;
GRANT USAGE ON SCHEMA regress TO PUBLIC;

-- Run cmd and show its SQLSTATE and message (or 'ok'), with key_id, when
-- given, masked: key ids are random and would make the output vary.
CREATE FUNCTION regress.try(cmd text, key_id text DEFAULT NULL)
RETURNS text LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE cmd;
    RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
    RETURN SQLSTATE || ': ' || replace(SQLERRM, coalesce(key_id, '<none>'), '<key_id>');
END $$;
