-- requests: the approval workflow.  A role that may not create keys asks
-- for one; an admin or an approver approves (narrowing only) or rejects; the
-- requester claims the token once, in time.  Every step is audited.
\set VERBOSITY terse
SET search_path = apikeys, apikeys_internal, public;

CREATE ROLE regress_rq_svc NOLOGIN;
CREATE ROLE regress_rq_other NOLOGIN;
CREATE ROLE regress_rq_alice NOLOGIN IN ROLE regress_rq_svc;          -- requester
CREATE ROLE regress_rq_approvers NOLOGIN;
CREATE ROLE regress_rq_bob NOLOGIN IN ROLE regress_rq_approvers;      -- approver
CREATE ROLE regress_rq_carol NOLOGIN IN ROLE regress_rq_approvers, regress_rq_svc;  -- approver and requester
CREATE ROLE regress_rq_mallory NOLOGIN;                                -- neither
CREATE ROLE regress_rq_admin NOLOGIN IN ROLE apikeys_admin;
-- the deployment this workflow is for: only admins create keys directly
REVOKE EXECUTE ON FUNCTION apikey_create FROM PUBLIC;
GRANT EXECUTE ON FUNCTION apikey_create TO apikeys_admin;
SET apikeys.approver_role = 'regress_rq_approvers';

-- a request: for a role the requester belongs to, as for create
SET ROLE regress_rq_alice;
SELECT regress.try($$SELECT * FROM apikeys.apikey_create('direct', role => 'regress_rq_svc')$$);
SELECT apikey_request('orders sync', role => 'regress_rq_svc', scopes => '{orders:*,billing:read}',
                      expires_at => '2999-01-01 00:00:00+00', metadata => '{"team": "sync"}',
                      reason => 'nightly order export') AS rq \gset
SELECT regress.try($$SELECT apikeys.apikey_request('escalate', role => 'regress_rq_other')$$);
SELECT regress.try($$SELECT apikeys.apikey_request('bad scope', scopes => '{"a b"}')$$);
SELECT regress.try($$SELECT apikeys.apikey_request('bad prefix', prefix => 'Bad')$$);
SELECT regress.try(format('SELECT apikeys.apikey_request(%L, reason => %L)', 'long', repeat('r', 1001)));
SELECT regress.try(format('SELECT apikeys.apikey_request(%L, reason => %L)', 'ctl', E'two\nlines'));
SELECT key_id = :'rq' AS same, name, role, scopes, expires_at, prefix, reason, status,
       requested_by, decided_by, claim_by
  FROM key_requests;
-- nothing to claim yet, nothing to approve for a requester
SELECT regress.try(format('SELECT apikeys.apikey_claim(%L)', :'rq'), :'rq');
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L)', :'rq'), :'rq');
RESET ROLE;

-- who sees it: the requester, approvers, admins; nobody else
SET ROLE regress_rq_mallory;
SELECT count(*) AS mallory_sees FROM key_requests;
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L)', :'rq'), :'rq');
SELECT regress.try(format('SELECT apikeys.apikey_cancel(%L)', :'rq'), :'rq');
SELECT regress.try(format('SELECT apikeys.apikey_claim(%L)', :'rq'), :'rq');
SELECT regress.try('SELECT * FROM apikeys_internal.key_requests');
RESET ROLE;
SET ROLE regress_rq_bob;
SELECT count(*) AS bob_sees FROM key_requests;
-- an approver may narrow, never widen
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L, scopes => %L)', :'rq', '{orders:read,admin}'), :'rq');
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L, scopes => %L)', :'rq', '{*}'), :'rq');
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L, expires_at => %L)', :'rq', '3000-01-01'), :'rq');
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L, expires_at => %L)', :'rq', 'infinity'), :'rq');
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L, claim_within => %L)', :'rq', '0'), :'rq');
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L, claim_within => %L)', :'rq', '31 days'), :'rq');
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L, note => %L)', :'rq', E'a\u202eb'), :'rq');
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L)', 'ak_not_a_key_id_but_a_token'));
SELECT apikey_approve(:'rq', scopes => '{orders:read,orders:write}', expires_at => '2998-01-01 00:00:00+00',
                      note => 'read and write only');
SELECT status, approved_scopes, approved_expires_at, decided_by, decision_note,
       claim_by BETWEEN now() + '6 days 23 hours' AND now() + '7 days' AS claim_in_7_days
  FROM key_requests WHERE key_id = :'rq';
-- decided once
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L)', :'rq'), :'rq');
-- and the approver cannot claim it
SELECT regress.try(format('SELECT apikeys.apikey_claim(%L)', :'rq'), :'rq');
RESET ROLE;

-- the requester claims the token once
SET ROLE regress_rq_alice;
SELECT apikey_claim(:'rq') AS token \gset
SELECT regress.try(format('SELECT apikeys.apikey_claim(%L)', :'rq'), :'rq');
SELECT status FROM key_requests WHERE key_id = :'rq';
SELECT key_id = :'rq' AS same_key_id, name, role, scopes, expires_at, metadata, created_by, status
  FROM keys;
RESET ROLE;
SELECT valid, status, key_id = :'rq' AS same FROM apikey_verify(:'token', 'orders:write');
SELECT status FROM apikey_verify(:'token', 'billing:read');
-- its whole history is under one key id
SELECT action, actor_role, key_role,
       changes - 'claim_by' - 'approved_at' AS changes,
       changes ? 'claim_by' AS has_claim_by
  FROM audit_log WHERE key_id = :'rq' ORDER BY at;

-- four eyes: an approver who requested cannot approve, not even through the
-- approver group role; another approver can
SET ROLE regress_rq_carol;
SELECT apikey_request('carol''s', role => 'regress_rq_svc', scopes => '{x}') AS rq2 \gset
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L)', :'rq2'), :'rq2');
SET ROLE regress_rq_approvers;
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L)', :'rq2'), :'rq2');
SET ROLE regress_rq_bob;
SELECT apikey_approve(:'rq2', claim_within => '1 hour');
-- an approval not claimed in time expires (time passes: moved back here)
RESET ROLE;
UPDATE apikeys_internal.key_requests SET claim_by = now() - interval '1 minute' WHERE key_id = :'rq2';
SET ROLE regress_rq_carol;
SELECT status FROM key_requests WHERE key_id = :'rq2';
SELECT regexp_replace(regress.try(format('SELECT apikeys.apikey_claim(%L)', :'rq2'), :'rq2'),
                      'claimed by .*\. HINT', 'claimed by <time>. HINT');
RESET ROLE;
SELECT count(*) AS no_key_for_expired_request FROM keys WHERE key_id = :'rq2';

-- rejection, and withdrawing an approval before it is claimed
SET ROLE regress_rq_alice;
SELECT apikey_request('rejected', role => 'regress_rq_svc') AS rq3 \gset
SELECT apikey_request('withdrawn', role => 'regress_rq_svc') AS rq4 \gset
SELECT apikey_request('cancelled', role => 'regress_rq_svc') AS rq5 \gset
RESET ROLE;
SET ROLE regress_rq_bob;
SELECT apikey_reject(:'rq3', note => 'use the shared key');
SELECT apikey_approve(:'rq4');
SELECT apikey_reject(:'rq4', note => 'changed my mind');
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L)', :'rq3'), :'rq3');
SELECT regress.try(format('SELECT apikeys.apikey_cancel(%L)', :'rq5'), :'rq5');
RESET ROLE;
SET ROLE regress_rq_alice;
SELECT regress.try(format('SELECT apikeys.apikey_claim(%L)', :'rq3'), :'rq3');
SELECT regress.try(format('SELECT apikeys.apikey_claim(%L)', :'rq4'), :'rq4');
SELECT apikey_cancel(:'rq5');
SELECT regress.try(format('SELECT apikeys.apikey_cancel(%L)', :'rq5'), :'rq5');
SELECT name, status, decision_note, claim_by FROM key_requests
 WHERE key_id IN (:'rq3', :'rq4', :'rq5') ORDER BY name;
RESET ROLE;
SELECT action, actor_role FROM audit_log WHERE key_id IN (:'rq3', :'rq4', :'rq5') ORDER BY at;

-- the requester must still belong to the role when claiming
SET ROLE regress_rq_alice;
SELECT apikey_request('left the role', role => 'regress_rq_svc') AS rq6 \gset
RESET ROLE;
SET ROLE regress_rq_bob;
SELECT apikey_approve(:'rq6');
RESET ROLE;
REVOKE regress_rq_svc FROM regress_rq_alice;
SET ROLE regress_rq_alice;
SELECT regress.try(format('SELECT apikeys.apikey_claim(%L)', :'rq6'), :'rq6');
SELECT status FROM key_requests WHERE key_id = :'rq6';
RESET ROLE;
GRANT regress_rq_svc TO regress_rq_alice;

-- without an approver role only admins decide
RESET apikeys.approver_role;
SET ROLE regress_rq_alice;
SELECT apikey_request('admin decides', role => 'regress_rq_svc') AS rq7 \gset
SET ROLE regress_rq_bob;
SELECT count(*) AS bob_sees_now FROM key_requests;
SELECT regress.try(format('SELECT apikeys.apikey_approve(%L)', :'rq7'), :'rq7');
SET ROLE regress_rq_admin;
SELECT apikey_approve(:'rq7');
SET ROLE regress_rq_alice;
SELECT apikey_claim(:'rq7') IS NOT NULL AS claimed;
RESET ROLE;
-- a client cannot name itself approver: the setting is superuser-only
SET ROLE regress_rq_bob;
SELECT regress.try($$SET apikeys.approver_role = 'regress_rq_bob'$$);
RESET ROLE;

-- at most 100 pending requests per role
SET ROLE regress_rq_alice;
DO $$ BEGIN
    FOR i IN 1..100 - (SELECT count(*) FROM apikeys.key_requests WHERE status = 'pending') LOOP
        PERFORM apikeys.apikey_request('bulk ' || i, role => 'regress_rq_svc');
    END LOOP;
END $$;
SELECT count(*) AS pending FROM key_requests WHERE status = 'pending';
SELECT regress.try($$SELECT apikeys.apikey_request('one too many', role => 'regress_rq_svc')$$);
SELECT count(apikey_cancel(key_id)) AS cancelled FROM key_requests WHERE status = 'pending';
RESET ROLE;

-- no secret in any request row or audit row
SELECT count(*) AS rows_with_secret FROM (
    SELECT r::text AS t FROM apikeys_internal.key_requests r
    UNION ALL SELECT a::text FROM apikeys_internal.audit_log a) x
 WHERE strpos(x.t, substr(:'token', length(:'token') - 37, 32)) > 0;

GRANT EXECUTE ON FUNCTION apikey_create TO PUBLIC;
REVOKE EXECUTE ON FUNCTION apikey_create FROM apikeys_admin;
SELECT apikey_delete(key_id) FROM keys WHERE role IN ('regress_rq_svc'::regrole);
DELETE FROM apikeys_internal.key_requests;
DROP ROLE regress_rq_svc, regress_rq_other, regress_rq_alice, regress_rq_approvers, regress_rq_bob,
          regress_rq_carol, regress_rq_mallory, regress_rq_admin;
