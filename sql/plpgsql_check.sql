-- plpgsql_check: every PL/pgSQL function of the extension passes the static
-- checker with extra, performance and security warnings on.  Expected: no
-- rows.  A warning that must stay is explained here, next to a filter.
CREATE EXTENSION plpgsql_check;
SELECT p.oid::regprocedure AS func, c.lineno, c.level, c.message, c.detail
  FROM pg_proc p
  JOIN pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'
  CROSS JOIN LATERAL plpgsql_check_function_tb(p.oid,
       -- trigger functions are checked against the table they are attached to
       relid => coalesce((SELECT t.tgrelid FROM pg_trigger t WHERE t.tgfoid = p.oid LIMIT 1), 0),
       extra_warnings => true, performance_warnings => true, security_warnings => true) c
 WHERE p.pronamespace IN ('apikeys'::regnamespace, 'apikeys_internal'::regnamespace)
   -- every internal half takes the calling role first (the C entry points
   -- pass it to all of them); one that does not need it leaves it unused
   AND c.message IS DISTINCT FROM 'unused parameter "p_caller"'
 ORDER BY 1, 2;
-- the check ran over every PL/pgSQL function
SELECT count(*) > 10 AS checked
  FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang AND l.lanname = 'plpgsql'
 WHERE p.pronamespace IN ('apikeys'::regnamespace, 'apikeys_internal'::regnamespace);
DROP EXTENSION plpgsql_check;
