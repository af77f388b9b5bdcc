-- The privilege rules as a table: test/t/080_privilege_rules.pl loads this
-- file into a cluster with a key-encryption key (for apikey_reveal) and a
-- second database still at 0.1.0, runs every row of pr.cases, each in a
-- subtransaction that is always rolled back (so no case sees another's
-- effects), and checks its outcome ('ok' or the SQLSTATE).  Then it checks
-- coverage: every rule x clause pair has a row that the rule allows and a
-- row it refuses, unless pr.not_applicable says why the clause has no
-- meaning for that rule.  A new rule or clause without rows fails the test.
SET client_min_messages = warning;
CREATE SCHEMA pr;
GRANT USAGE ON SCHEMA pr TO PUBLIC;

-- the rules and the clauses of the table (the coverage check reads these)
CREATE TABLE pr.rules (rule text PRIMARY KEY);
INSERT INTO pr.rules VALUES ('create'), ('rotate'), ('rotate@0.1.0'), ('update'), ('disable'),
    ('enable'), ('revoke'), ('delete'), ('reveal'), ('approve'), ('claim'), ('reject'), ('cancel'),
    ('import'), ('route scopes'), ('role limits'), ('listing'), ('audit purge'), ('audit queue'),
    ('key session'), ('apikeys:manage');
CREATE TABLE pr.clauses (clause text PRIMARY KEY);
INSERT INTO pr.clauses VALUES ('member'), ('creator'), ('admin'), ('superuser'), ('group'),
    ('definer'), ('departed'), ('key session');
GRANT SELECT ON pr.rules, pr.clauses TO PUBLIC;

-- roles
CREATE ROLE pr_svc NOLOGIN;                              -- the keys' role
CREATE ROLE pr_member LOGIN IN ROLE pr_svc;              -- a member of it
CREATE ROLE pr_noinh LOGIN NOINHERIT IN ROLE pr_svc;     -- a member that does not inherit its rights
CREATE ROLE pr_creator LOGIN IN ROLE pr_svc;             -- creates keys, stays a member
CREATE ROLE pr_left LOGIN IN ROLE pr_svc;                -- creates keys, then leaves the role
CREATE ROLE pr_team NOLOGIN IN ROLE pr_svc;              -- a group inside the role
CREATE ROLE pr_grp LOGIN IN ROLE pr_team;                -- a member through that group
CREATE ROLE pr_parent NOLOGIN;                           -- a group the role is inside
GRANT pr_parent TO pr_svc;
CREATE ROLE pr_up LOGIN IN ROLE pr_parent;               -- a member of that group only
CREATE ROLE pr_out LOGIN;                                -- nobody
CREATE ROLE pr_admin LOGIN IN ROLE apikeys_admin;
CREATE ROLE pr_approvers NOLOGIN;
CREATE ROLE pr_approver LOGIN IN ROLE pr_approvers;
CREATE ROLE pr_fe_group NOLOGIN;                         -- requests are made as this group
CREATE ROLE pr_fe_req LOGIN IN ROLE pr_fe_group;
CREATE ROLE pr_fe_both LOGIN IN ROLE pr_fe_group, pr_approvers;
SELECT format('ALTER DATABASE %I SET apikeys.approver_role = %L', current_database(), 'pr_approvers') \gexec
SET apikeys.approver_role = 'pr_approvers';

-- SECURITY DEFINER wrappers of one's own: they act for their owner
CREATE FUNCTION pr.wrap_member(cmd text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
    AS $$ BEGIN EXECUTE cmd; END $$;
ALTER FUNCTION pr.wrap_member(text) OWNER TO pr_member;
CREATE FUNCTION pr.wrap_out(cmd text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
    AS $$ BEGIN EXECUTE cmd; END $$;
ALTER FUNCTION pr.wrap_out(text) OWNER TO pr_out;

-- keys and requests
CREATE TABLE pr.keys (label text PRIMARY KEY, key_id text, token text);
GRANT SELECT, INSERT ON pr.keys TO PUBLIC;
INSERT INTO pr.keys SELECT 'svc', * FROM apikeys.apikey_create('svc', role => 'pr_svc', revealable => true);
INSERT INTO pr.keys SELECT 'plain', * FROM apikeys.apikey_create('plain', role => 'pr_svc');
INSERT INTO pr.keys SELECT 'manage', * FROM apikeys.apikey_create('manage', role => 'pr_svc', scopes => '{apikeys:manage}');
INSERT INTO pr.keys SELECT 'star', * FROM apikeys.apikey_create('star', role => 'pr_svc', scopes => '{*}');
INSERT INTO pr.keys SELECT 'apikeys_star', * FROM apikeys.apikey_create('apikeys_star', role => 'pr_svc', scopes => '{apikeys:*}');
INSERT INTO pr.keys SELECT 'adm_plain', * FROM apikeys.apikey_create('adm_plain', role => 'pr_admin');
INSERT INTO pr.keys SELECT 'adm_manage', * FROM apikeys.apikey_create('adm_manage', role => 'pr_admin', scopes => '{apikeys:manage}');
SET SESSION AUTHORIZATION pr_creator;
INSERT INTO pr.keys SELECT 'creator', * FROM apikeys.apikey_create('creator', role => 'pr_svc', revealable => true);
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION pr_grp;
INSERT INTO pr.keys SELECT 'grp', * FROM apikeys.apikey_create('grp', role => 'pr_svc', revealable => true);
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION pr_left;
INSERT INTO pr.keys SELECT 'left', * FROM apikeys.apikey_create('left', role => 'pr_svc', revealable => true);
INSERT INTO pr.keys SELECT 'left_dis', * FROM apikeys.apikey_create('left_dis', role => 'pr_svc');
SELECT apikeys.apikey_disable(key_id) FROM pr.keys WHERE label = 'left_dis';
RESET SESSION AUTHORIZATION;
INSERT INTO pr.keys SELECT 'dis', * FROM apikeys.apikey_create('dis', role => 'pr_svc');
SELECT apikeys.apikey_disable(key_id) FROM pr.keys WHERE label = 'dis';
REVOKE pr_svc FROM pr_left;
-- requests: pending by pr_member; pending by pr_fe_req acting as its group;
-- pending by pr_fe_both (an approver too) acting as that group; approved
-- for pr_member
SET SESSION AUTHORIZATION pr_member;
INSERT INTO pr.keys SELECT 'rq_member', apikeys.apikey_request('rq member', role => 'pr_svc'), NULL;
INSERT INTO pr.keys SELECT 'rq_appr', apikeys.apikey_request('rq approved', role => 'pr_svc'), NULL;
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION pr_fe_req;
SET ROLE pr_fe_group;
INSERT INTO pr.keys SELECT 'rq_group', apikeys.apikey_request('rq group'), NULL;
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION pr_fe_both;
SET ROLE pr_fe_group;
INSERT INTO pr.keys SELECT 'rq_both', apikeys.apikey_request('rq both'), NULL;
RESET SESSION AUTHORIZATION;
SET SESSION AUTHORIZATION pr_approver;
SELECT apikeys.apikey_approve(key_id) FROM pr.keys WHERE label = 'rq_appr';
RESET SESSION AUTHORIZATION;

-- Run one case: as actor (a session user; 'postgres' is the superuser),
-- after SET ROLE via, after apikey_login with the token of key login, through
-- the wrapper wrap; $K in cmd is the key id of key.  Always rolled back.
CREATE FUNCTION pr.run_case(actor text, via text, login text, wrap text, key text, cmd text)
RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    st text;
    k text := (SELECT key_id FROM pr.keys WHERE label = key);
    tok text := (SELECT token FROM pr.keys WHERE label = login);
BEGIN
    IF key IS NOT NULL AND k IS NULL THEN RETURN 'no key ' || key; END IF;
    IF login IS NOT NULL AND tok IS NULL THEN RETURN 'no token ' || login; END IF;
    cmd := replace(cmd, '$K', coalesce(quote_literal(k), 'NULL'));
    IF wrap IS NOT NULL THEN
        cmd := format('SELECT pr.%I(%L)', 'wrap_' || wrap, cmd);
    END IF;
    BEGIN
        IF actor <> 'postgres' THEN
            EXECUTE format('SET SESSION AUTHORIZATION %I', actor);
        END IF;
        IF via IS NOT NULL THEN
            EXECUTE format('SET ROLE %I', via);
        END IF;
        IF login IS NOT NULL THEN
            PERFORM apikeys.apikey_login(tok);
        END IF;
        EXECUTE cmd;
        RAISE EXCEPTION 'case done' USING ERRCODE = 'PR000';
    EXCEPTION WHEN OTHERS THEN
        st := SQLSTATE;
    END;
    RETURN CASE st WHEN 'PR000' THEN 'ok' ELSE st END;
END $$;

-- The table.  expect: 'ok', or the SQLSTATE of the refusal (42704: the key
-- is not visible to the actor; 22012: a listing showed no row, see the
-- listing commands).
CREATE TABLE pr.cases (
    n serial PRIMARY KEY,
    rule text NOT NULL REFERENCES pr.rules,
    clause text NOT NULL REFERENCES pr.clauses,
    expect text NOT NULL,
    actor text NOT NULL,
    via text, login text, wrap text, key text,
    cmd text NOT NULL,
    db text NOT NULL DEFAULT 'main');
INSERT INTO pr.cases (rule, clause, expect, actor, via, login, wrap, key, cmd) VALUES
-- create: members of the role (directly or through a group), admins, superusers
('create', 'member',      'ok',    'pr_member',  NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'member',      'ok',    'pr_noinh',   NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'member',      '42501', 'pr_out',     NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'creator',     'ok',    'pr_creator', NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'creator',     '42501', 'pr_left',    NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'group',       'ok',    'pr_grp',     NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'group',       '42501', 'pr_up',      NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'admin',       'ok',    'pr_admin',   NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'admin',       '42501', 'pr_approver',NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'superuser',   'ok',    'postgres',   NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'superuser',   '42501', 'pr_out',     NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_admin')$$),
('create', 'definer',     'ok',    'pr_out',     NULL, NULL, 'member', NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'definer',     '42501', 'pr_member',  NULL, NULL, 'out',    NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'departed',    'ok',    'pr_left',    NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('c')$$),
('create', 'departed',    '42501', 'pr_left',    NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'key session', 'ok',    'postgres',   NULL, 'manage', NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
('create', 'key session', '42501', 'postgres',   NULL, 'plain',  NULL, NULL, $$SELECT apikeys.apikey_create('c', role => 'pr_svc')$$),
-- rotate (renewal): visible, and a current member of the key's role or an admin
('rotate', 'member',      'ok',    'pr_member',  NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'member',      'ok',    'pr_noinh',   NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'member',      '42704', 'pr_out',     NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'creator',     'ok',    'pr_creator', NULL, NULL, NULL, 'creator', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'creator',     '42704', 'pr_creator', NULL, NULL, NULL, 'adm_plain', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'group',       'ok',    'pr_grp',     NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'group',       '42704', 'pr_up',      NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'admin',       'ok',    'pr_admin',   NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'admin',       '42704', 'pr_approver',NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'superuser',   'ok',    'postgres',   NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'superuser',   '42704', 'pr_member',  NULL, NULL, NULL, 'adm_plain', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'definer',     'ok',    'pr_out',     NULL, NULL, 'member', 'svc', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'definer',     '42704', 'pr_member',  NULL, NULL, 'out',    'svc', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'departed',    'ok',    'pr_member',  NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'departed',    '42501', 'pr_left',    NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'key session', 'ok',    'postgres',   NULL, 'manage', NULL, 'svc', $$SELECT apikeys.apikey_rotate($K)$$),
('rotate', 'key session', '42501', 'postgres',   NULL, 'plain',  NULL, 'svc', $$SELECT apikeys.apikey_rotate($K)$$),
-- update: as rotate; moving a key needs membership of both roles
('update', 'member',      'ok',    'pr_member',  NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, name => 'u')$$),
('update', 'member',      '42501', 'pr_member',  NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, role => 'pr_out')$$),
('update', 'creator',     'ok',    'pr_creator', NULL, NULL, NULL, 'creator', $$SELECT apikeys.apikey_update($K, name => 'u')$$),
('update', 'creator',     '42704', 'pr_creator', NULL, NULL, NULL, 'adm_plain', $$SELECT apikeys.apikey_update($K, name => 'u')$$),
('update', 'group',       'ok',    'pr_grp',     NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, name => 'u')$$),
('update', 'group',       '42704', 'pr_up',      NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, name => 'u')$$),
('update', 'admin',       'ok',    'pr_admin',   NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, role => 'pr_out')$$),
('update', 'admin',       '42704', 'pr_approver',NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, name => 'u')$$),
('update', 'superuser',   'ok',    'postgres',   NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, role => 'pr_out')$$),
('update', 'superuser',   '42704', 'pr_out',     NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, name => 'u')$$),
('update', 'definer',     'ok',    'pr_out',     NULL, NULL, 'member', 'svc', $$SELECT apikeys.apikey_update($K, name => 'u')$$),
('update', 'definer',     '42704', 'pr_member',  NULL, NULL, 'out',    'svc', $$SELECT apikeys.apikey_update($K, name => 'u')$$),
('update', 'departed',    'ok',    'pr_member',  NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_update($K, name => 'u')$$),
('update', 'departed',    '42501', 'pr_left',    NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_update($K, name => 'u')$$),
('update', 'key session', 'ok',    'postgres',   NULL, 'manage', NULL, 'svc', $$SELECT apikeys.apikey_update($K, name => 'u')$$),
('update', 'key session', '42501', 'postgres',   NULL, 'plain',  NULL, 'svc', $$SELECT apikeys.apikey_update($K, name => 'u')$$),
-- disable: visible is enough (the creator, members, admins)
('disable', 'member',     'ok',    'pr_member',  NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'member',     'ok',    'pr_noinh',   NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'member',     '42704', 'pr_out',     NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'creator',    'ok',    'pr_left',    NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'creator',    '42704', 'pr_left',    NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'group',      'ok',    'pr_grp',     NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'group',      '42704', 'pr_up',      NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'admin',      'ok',    'pr_admin',   NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'admin',      '42704', 'pr_approver',NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'superuser',  'ok',    'postgres',   NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'superuser',  '42704', 'pr_member',  NULL, NULL, NULL, 'adm_plain', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'definer',    'ok',    'pr_out',     NULL, NULL, 'member', 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'definer',    '42704', 'pr_member',  NULL, NULL, 'out',    'svc', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'departed',   'ok',    'pr_left',    NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'departed',   '42704', 'pr_left',    NULL, NULL, NULL, 'plain', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'key session','ok',    'postgres',   NULL, 'manage', NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('disable', 'key session','42501', 'postgres',   NULL, 'plain',  NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
-- enable (renewal): as rotate
('enable', 'member',      'ok',    'pr_member',  NULL, NULL, NULL, 'dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'member',      '42704', 'pr_out',     NULL, NULL, NULL, 'dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'creator',     'ok',    'pr_creator', NULL, NULL, NULL, 'creator', $$SELECT apikeys.apikey_disable($K); SELECT apikeys.apikey_enable($K)$$),
('enable', 'creator',     '42501', 'pr_left',    NULL, NULL, NULL, 'left_dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'group',       'ok',    'pr_grp',     NULL, NULL, NULL, 'dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'group',       '42704', 'pr_up',      NULL, NULL, NULL, 'dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'admin',       'ok',    'pr_admin',   NULL, NULL, NULL, 'left_dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'admin',       '42704', 'pr_approver',NULL, NULL, NULL, 'dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'superuser',   'ok',    'postgres',   NULL, NULL, NULL, 'left_dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'superuser',   '42704', 'pr_out',     NULL, NULL, NULL, 'left_dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'definer',     'ok',    'pr_out',     NULL, NULL, 'member', 'dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'definer',     '42704', 'pr_member',  NULL, NULL, 'out',    'dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'departed',    'ok',    'pr_grp',     NULL, NULL, NULL, 'left_dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'departed',    '42501', 'pr_left',    NULL, NULL, NULL, 'left_dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'key session', 'ok',    'postgres',   NULL, 'manage', NULL, 'dis', $$SELECT apikeys.apikey_enable($K)$$),
('enable', 'key session', '42501', 'postgres',   NULL, 'plain',  NULL, 'dis', $$SELECT apikeys.apikey_enable($K)$$),
-- revoke: visible is enough
('revoke', 'member',      'ok',    'pr_member',  NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'member',      '42704', 'pr_out',     NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'creator',     'ok',    'pr_creator', NULL, NULL, NULL, 'creator', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'creator',     '42704', 'pr_creator', NULL, NULL, NULL, 'adm_plain', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'group',       'ok',    'pr_grp',     NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'group',       '42704', 'pr_up',      NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'admin',       'ok',    'pr_admin',   NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'admin',       '42704', 'pr_approver',NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'superuser',   'ok',    'postgres',   NULL, NULL, NULL, 'adm_plain', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'superuser',   '42704', 'pr_member',  NULL, NULL, NULL, 'adm_plain', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'definer',     'ok',    'pr_out',     NULL, NULL, 'member', 'svc', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'definer',     '42704', 'pr_member',  NULL, NULL, 'out',    'svc', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'departed',    'ok',    'pr_left',    NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'departed',    '42704', 'pr_left',    NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'key session', 'ok',    'postgres',   NULL, 'manage', NULL, 'svc', $$SELECT apikeys.apikey_revoke($K)$$),
('revoke', 'key session', '42501', 'postgres',   NULL, 'plain',  NULL, 'svc', $$SELECT apikeys.apikey_revoke($K)$$),
-- delete: visible is enough
('delete', 'member',      'ok',    'pr_member',  NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'member',      '42704', 'pr_out',     NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'creator',     'ok',    'pr_creator', NULL, NULL, NULL, 'creator', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'creator',     '42704', 'pr_creator', NULL, NULL, NULL, 'adm_plain', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'group',       'ok',    'pr_grp',     NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'group',       '42704', 'pr_up',      NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'admin',       'ok',    'pr_admin',   NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'admin',       '42704', 'pr_approver',NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'superuser',   'ok',    'postgres',   NULL, NULL, NULL, 'adm_plain', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'superuser',   '42704', 'pr_member',  NULL, NULL, NULL, 'adm_plain', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'definer',     'ok',    'pr_out',     NULL, NULL, 'member', 'svc', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'definer',     '42704', 'pr_member',  NULL, NULL, 'out',    'svc', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'departed',    'ok',    'pr_left',    NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'departed',    '42704', 'pr_left',    NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'key session', 'ok',    'postgres',   NULL, 'manage', NULL, 'svc', $$SELECT apikeys.apikey_delete($K)$$),
('delete', 'key session', '42501', 'postgres',   NULL, 'plain',  NULL, 'svc', $$SELECT apikeys.apikey_delete($K)$$),
-- reveal: admins, and the creator while a member of the key's role
('reveal', 'member',      'ok',    'pr_creator', NULL, NULL, NULL, 'creator', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'member',      '42501', 'pr_member',  NULL, NULL, NULL, 'creator', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'creator',     'ok',    'pr_creator', NULL, NULL, NULL, 'creator', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'creator',     '42501', 'pr_creator', NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'group',       'ok',    'pr_grp',     NULL, NULL, NULL, 'grp', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'group',       '42501', 'pr_grp',     NULL, NULL, NULL, 'creator', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'admin',       'ok',    'pr_admin',   NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'admin',       '42704', 'pr_approver',NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'superuser',   'ok',    'postgres',   NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'superuser',   '42704', 'pr_out',     NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'definer',     'ok',    'pr_out',     NULL, NULL, NULL, 'creator', $$SELECT pr.wrap_creator($K)$$),
('reveal', 'definer',     '42501', 'pr_member',  NULL, NULL, 'member', 'creator', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'departed',    'ok',    'pr_admin',   NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'departed',    '42501', 'pr_left',    NULL, NULL, NULL, 'left', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'key session', 'ok',    'postgres',   NULL, 'adm_manage', NULL, 'svc', $$SELECT apikeys.apikey_reveal($K)$$),
('reveal', 'key session', '42501', 'postgres',   NULL, 'adm_plain',  NULL, 'svc', $$SELECT apikeys.apikey_reveal($K)$$),
-- approve: admins and approvers; never the requesting login, role, or a member of it
('approve', 'member',     'ok',    'pr_approver',NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'member',     '42501', 'pr_member',  NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'creator',    'ok',    'pr_admin',   NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'creator',    '42501', 'pr_member',  NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'group',      'ok',    'pr_approver',NULL, NULL, NULL, 'rq_group', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'group',      '42501', 'pr_fe_both', NULL, NULL, NULL, 'rq_group', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'group',      '42501', 'pr_fe_both', 'pr_approvers', NULL, NULL, 'rq_both', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'group',      'ok',    'pr_fe_req',  NULL, NULL, 'admin', 'rq_both', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'admin',      'ok',    'pr_admin',   NULL, NULL, NULL, 'rq_group', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'admin',      '42501', 'pr_out',     NULL, NULL, NULL, 'rq_group', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'superuser',  'ok',    'postgres',   NULL, NULL, NULL, 'rq_group', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'superuser',  '42501', 'pr_fe_req',  NULL, NULL, NULL, 'rq_group', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'definer',    'ok',    'pr_member',  NULL, NULL, NULL, 'rq_group', $$SELECT pr.wrap_approver($K)$$),
('approve', 'definer',    '42501', 'pr_approver',NULL, NULL, 'member', 'rq_group', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'key session','ok',    'postgres',   NULL, 'adm_manage', NULL, 'rq_member', $$SELECT apikeys.apikey_approve($K)$$),
('approve', 'key session','42501', 'postgres',   NULL, 'adm_plain',  NULL, 'rq_member', $$SELECT apikeys.apikey_approve($K)$$),
-- claim: the requesting role only
('claim', 'member',       'ok',    'pr_member',  NULL, NULL, NULL, 'rq_appr', $$SELECT apikeys.apikey_claim($K)$$),
('claim', 'member',       '42704', 'pr_creator', NULL, NULL, NULL, 'rq_appr', $$SELECT apikeys.apikey_claim($K)$$),
('claim', 'creator',      'ok',    'pr_member',  NULL, NULL, NULL, 'rq_appr', $$SELECT apikeys.apikey_claim($K)$$),
('claim', 'creator',      '42501', 'pr_approver',NULL, NULL, NULL, 'rq_appr', $$SELECT apikeys.apikey_claim($K)$$),
('claim', 'admin',        'ok',    'pr_member',  NULL, NULL, NULL, 'rq_appr', $$SELECT apikeys.apikey_claim($K)$$),
('claim', 'admin',        '42501', 'pr_admin',   NULL, NULL, NULL, 'rq_appr', $$SELECT apikeys.apikey_claim($K)$$),
('claim', 'superuser',    'ok',    'pr_member',  NULL, NULL, NULL, 'rq_appr', $$SELECT apikeys.apikey_claim($K)$$),
('claim', 'superuser',    '42501', 'postgres',   NULL, NULL, NULL, 'rq_appr', $$SELECT apikeys.apikey_claim($K)$$),
('claim', 'definer',      'ok',    'pr_out',     NULL, NULL, 'member', 'rq_appr', $$SELECT apikeys.apikey_claim($K)$$),
('claim', 'definer',      '42704', 'pr_member',  NULL, NULL, 'out',    'rq_appr', $$SELECT apikeys.apikey_claim($K)$$),
('claim', 'key session',  'ok',    'pr_member',  NULL, NULL, NULL, 'rq_appr', $$SELECT apikeys.apikey_claim($K)$$),
('claim', 'key session',  '42501', 'pr_member',  NULL, 'plain', NULL, 'rq_appr', $$SELECT apikeys.apikey_claim($K)$$),
-- reject: admins and approvers
('reject', 'member',      'ok',    'pr_approver',NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_reject($K)$$),
('reject', 'member',      '42501', 'pr_member',  NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_reject($K)$$),
('reject', 'group',       'ok',    'pr_fe_both', NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_reject($K)$$),
('reject', 'group',       '42501', 'pr_grp',     NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_reject($K)$$),
('reject', 'admin',       'ok',    'pr_admin',   NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_reject($K)$$),
('reject', 'admin',       '42501', 'pr_out',     NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_reject($K)$$),
('reject', 'superuser',   'ok',    'postgres',   NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_reject($K)$$),
('reject', 'superuser',   '42501', 'pr_member',  NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_reject($K)$$),
('reject', 'definer',     'ok',    'pr_member',  NULL, NULL, NULL, 'rq_member', $$SELECT pr.wrap_approver_reject($K)$$),
('reject', 'definer',     '42501', 'pr_approver',NULL, NULL, 'member', 'rq_member', $$SELECT apikeys.apikey_reject($K)$$),
('reject', 'key session', 'ok',    'postgres',   NULL, 'adm_manage', NULL, 'rq_member', $$SELECT apikeys.apikey_reject($K)$$),
('reject', 'key session', '42501', 'postgres',   NULL, 'adm_plain',  NULL, 'rq_member', $$SELECT apikeys.apikey_reject($K)$$),
-- cancel: the requester (members of the requesting role) and admins
('cancel', 'member',      'ok',    'pr_member',  NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_cancel($K)$$),
('cancel', 'member',      '42704', 'pr_creator', NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_cancel($K)$$),
('cancel', 'group',       'ok',    'pr_fe_req',  NULL, NULL, NULL, 'rq_group', $$SELECT apikeys.apikey_cancel($K)$$),
('cancel', 'group',       '42501', 'pr_approver',NULL, NULL, NULL, 'rq_group', $$SELECT apikeys.apikey_cancel($K)$$),
('cancel', 'admin',       'ok',    'pr_admin',   NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_cancel($K)$$),
('cancel', 'admin',       '42704', 'pr_out',     NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_cancel($K)$$),
('cancel', 'superuser',   'ok',    'postgres',   NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_cancel($K)$$),
('cancel', 'superuser',   '42704', 'pr_grp',     NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_cancel($K)$$),
('cancel', 'definer',     'ok',    'pr_out',     NULL, NULL, 'member', 'rq_member', $$SELECT apikeys.apikey_cancel($K)$$),
('cancel', 'definer',     '42704', 'pr_member',  NULL, NULL, 'out',    'rq_member', $$SELECT apikeys.apikey_cancel($K)$$),
('cancel', 'key session', 'ok',    'postgres',   NULL, 'adm_manage', NULL, 'rq_member', $$SELECT apikeys.apikey_cancel($K)$$),
('cancel', 'key session', '42501', 'postgres',   NULL, 'adm_plain',  NULL, 'rq_member', $$SELECT apikeys.apikey_cancel($K)$$),
-- import: as create
('import', 'member',      'ok',    'pr_member',  NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_import('i', role => 'pr_svc', token => 'sk_legacy_0123456789abcdefghij')$$),
('import', 'member',      '42501', 'pr_out',     NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_import('i', role => 'pr_svc', token => 'sk_legacy_0123456789abcdefghij')$$),
('import', 'group',       'ok',    'pr_grp',     NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_import('i', role => 'pr_svc', token => 'sk_legacy_0123456789abcdefghij')$$),
('import', 'group',       '42501', 'pr_up',      NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_import('i', role => 'pr_svc', token => 'sk_legacy_0123456789abcdefghij')$$),
('import', 'admin',       'ok',    'pr_admin',   NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_import('i', role => 'pr_svc', token => 'sk_legacy_0123456789abcdefghij', scopes => '{apikeys:manage}')$$),
('import', 'admin',       '42501', 'pr_member',  NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_import('i', role => 'pr_svc', token => 'sk_legacy_0123456789abcdefghij', scopes => '{apikeys:manage}')$$),
('import', 'superuser',   'ok',    'postgres',   NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_import('i', role => 'pr_out', token => 'sk_legacy_0123456789abcdefghij')$$),
('import', 'superuser',   '42501', 'pr_member',  NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_import('i', role => 'pr_out', token => 'sk_legacy_0123456789abcdefghij')$$),
('import', 'definer',     'ok',    'pr_out',     NULL, NULL, 'member', NULL, $$SELECT apikeys.apikey_import('i', role => 'pr_svc', token => 'sk_legacy_0123456789abcdefghij')$$),
('import', 'definer',     '42501', 'pr_member',  NULL, NULL, 'out',    NULL, $$SELECT apikeys.apikey_import('i', role => 'pr_svc', token => 'sk_legacy_0123456789abcdefghij')$$),
('import', 'key session', 'ok',    'postgres',   NULL, 'manage', NULL, NULL, $$SELECT apikeys.apikey_import('i', role => 'pr_svc', token => 'sk_legacy_0123456789abcdefghij')$$),
('import', 'key session', '42501', 'postgres',   NULL, 'plain',  NULL, NULL, $$SELECT apikeys.apikey_import('i', role => 'pr_svc', token => 'sk_legacy_0123456789abcdefghij')$$),
-- route scopes: admins only, not in a key session
('route scopes', 'admin',       'ok',    'pr_admin', NULL, NULL, NULL, NULL, $$INSERT INTO apikeys.route_scopes VALUES ('GET', '/x', 'x:read')$$),
('route scopes', 'admin',       '42501', 'pr_member',NULL, NULL, NULL, NULL, $$INSERT INTO apikeys.route_scopes VALUES ('GET', '/x', 'x:read')$$),
('route scopes', 'superuser',   'ok',    'postgres', NULL, NULL, NULL, NULL, $$INSERT INTO apikeys.route_scopes VALUES ('GET', '/x', 'x:read')$$),
('route scopes', 'superuser',   '42501', 'pr_out',   NULL, NULL, NULL, NULL, $$INSERT INTO apikeys.route_scopes VALUES ('GET', '/x', 'x:read')$$),
('route scopes', 'definer',     'ok',    'pr_member',NULL, NULL, NULL, NULL, $$SELECT pr.wrap_admin($q$INSERT INTO apikeys.route_scopes VALUES ('GET', '/x', 'x:read')$q$)$$),
('route scopes', 'definer',     '42501', 'pr_admin', NULL, NULL, 'member', NULL, $$INSERT INTO apikeys.route_scopes VALUES ('GET', '/x', 'x:read')$$),
('route scopes', 'key session', 'ok',    'postgres', NULL, 'adm_manage', NULL, NULL, $$INSERT INTO apikeys.route_scopes VALUES ('GET', '/x', 'x:read')$$),
('route scopes', 'key session', '42501', 'postgres', NULL, 'adm_plain',  NULL, NULL, $$INSERT INTO apikeys.route_scopes VALUES ('GET', '/x', 'x:read')$$),
-- role limits: admins only, not in a key session
('role limits', 'admin',       'ok',    'pr_admin', NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_set_role_limit('pr_svc', '10/second')$$),
('role limits', 'admin',       '42501', 'pr_member',NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_set_role_limit('pr_svc', '10/second')$$),
('role limits', 'member',      'ok',    'pr_admin', NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_set_role_limit('pr_svc', NULL)$$),
('role limits', 'member',      '42501', 'pr_grp',   NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_set_role_limit('pr_svc', NULL)$$),
('role limits', 'superuser',   'ok',    'postgres', NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_set_role_limit('pr_svc', '10/second')$$),
('role limits', 'superuser',   '42501', 'pr_out',   NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_set_role_limit('pr_svc', '10/second')$$),
('role limits', 'definer',     'ok',    'pr_member',NULL, NULL, NULL, NULL, $$SELECT pr.wrap_admin($q$SELECT apikeys.apikey_set_role_limit('pr_svc', '10/second')$q$)$$),
('role limits', 'definer',     '42501', 'pr_admin', NULL, NULL, 'member', NULL, $$SELECT apikeys.apikey_set_role_limit('pr_svc', '10/second')$$),
('role limits', 'key session', 'ok',    'postgres', NULL, 'adm_manage', NULL, NULL, $$SELECT apikeys.apikey_set_role_limit('pr_svc', '10/second')$$),
('role limits', 'key session', '42501', 'postgres', NULL, 'adm_plain',  NULL, NULL, $$SELECT apikeys.apikey_set_role_limit('pr_svc', '10/second')$$),
-- listing: a key is listed to whoever may manage it (22012: not listed)
('listing', 'member',      'ok',    'pr_member',  NULL, NULL, NULL, 'svc', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'member',      '22012', 'pr_out',     NULL, NULL, NULL, 'svc', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'creator',     'ok',    'pr_left',    NULL, NULL, NULL, 'left', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'creator',     '22012', 'pr_left',    NULL, NULL, NULL, 'svc', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'group',       'ok',    'pr_grp',     NULL, NULL, NULL, 'svc', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'group',       '22012', 'pr_up',      NULL, NULL, NULL, 'svc', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'admin',       'ok',    'pr_admin',   NULL, NULL, NULL, 'svc', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'admin',       '22012', 'pr_approver',NULL, NULL, NULL, 'svc', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'superuser',   'ok',    'postgres',   NULL, NULL, NULL, 'adm_plain', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'superuser',   '22012', 'pr_member',  NULL, NULL, NULL, 'adm_plain', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'definer',     'ok',    'pr_out',     NULL, NULL, 'member', 'svc', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'definer',     '22012', 'pr_member',  NULL, NULL, 'out',    'svc', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'departed',    'ok',    'pr_left',    NULL, NULL, NULL, 'left_dis', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'departed',    '22012', 'pr_left',    NULL, NULL, NULL, 'dis', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'key session', 'ok',    'pr_member',  NULL, 'plain',  NULL, 'plain', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
('listing', 'key session', '22012', 'pr_member',  NULL, 'plain',  NULL, 'svc', $$SELECT 1 / count(*) FROM apikeys.keys WHERE key_id = $K$$),
-- audit purge: admins only, not in a key session
('audit purge', 'admin',       'ok',    'pr_admin', NULL, NULL, NULL, NULL, $$SELECT apikeys.audit_purge('100 years')$$),
('audit purge', 'admin',       '42501', 'pr_member',NULL, NULL, NULL, NULL, $$SELECT apikeys.audit_purge('100 years')$$),
('audit purge', 'superuser',   'ok',    'postgres', NULL, NULL, NULL, NULL, $$SELECT apikeys.audit_purge('100 years')$$),
('audit purge', 'superuser',   '42501', 'pr_out',   NULL, NULL, NULL, NULL, $$SELECT apikeys.audit_purge('100 years')$$),
('audit purge', 'definer',     'ok',    'pr_member',NULL, NULL, NULL, NULL, $$SELECT pr.wrap_admin($q$SELECT apikeys.audit_purge('100 years')$q$)$$),
('audit purge', 'definer',     '42501', 'pr_admin', NULL, NULL, 'member', NULL, $$SELECT apikeys.audit_purge('100 years')$$),
('audit purge', 'key session', 'ok',    'postgres', NULL, 'adm_manage', NULL, NULL, $$SELECT apikeys.audit_purge('100 years')$$),
('audit purge', 'key session', '42501', 'postgres', NULL, 'adm_plain',  NULL, NULL, $$SELECT apikeys.audit_purge('100 years')$$),
-- audit queue: past apikeys.audit_queue_limit (64kB in this cluster) of
-- audited changes in one transaction, only an admin's transaction goes on
('audit queue', 'admin',       'ok',    'pr_admin', NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, name => 'n' || i) FROM generate_series(1, 400) i$$),
('audit queue', 'admin',       '54000', 'pr_member',NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, name => 'n' || i) FROM generate_series(1, 400) i$$),
('audit queue', 'superuser',   'ok',    'postgres', NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, name => 'n' || i) FROM generate_series(1, 400) i$$),
('audit queue', 'superuser',   '54000', 'pr_grp',   NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, name => 'n' || i) FROM generate_series(1, 400) i$$),
('audit queue', 'member',      'ok',    'pr_member',NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, name => 'n' || i) FROM generate_series(1, 10) i$$),
('audit queue', 'member',      '54000', 'pr_member',NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, name => 'n' || i) FROM generate_series(1, 400) i$$),
('audit queue', 'definer',     'ok',    'pr_member',NULL, NULL, NULL, 'svc', $$SELECT pr.wrap_admin('SELECT apikeys.apikey_update(' || quote_literal($K) || $q$, name => 'n' || i) FROM generate_series(1, 400) i$q$)$$),
('audit queue', 'definer',     '54000', 'pr_admin', NULL, NULL, 'member', 'svc', $$SELECT apikeys.apikey_update($K, name => 'n' || i) FROM generate_series(1, 400) i$$),
-- the key-session rule itself: it holds whatever role the transaction
-- switches to after the login; reporting a leak is not management
('key session', 'superuser',   'ok',    'postgres', NULL, 'plain', NULL, 'plain', $$SELECT apikeys.apikey_report_leak((SELECT token FROM pr.keys WHERE label = 'plain'))$$),
('key session', 'superuser',   '42501', 'postgres', NULL, 'plain', NULL, 'svc', $$RESET ROLE; SELECT apikeys.apikey_disable($K)$$),
('key session', 'admin',       'ok',    'pr_admin', NULL, NULL,    NULL, 'svc', $$SET ROLE pr_admin; SELECT apikeys.apikey_disable($K)$$),
('key session', 'admin',       '42501', 'pr_admin', NULL, 'plain', NULL, 'svc', $$SET ROLE pr_admin; SELECT apikeys.apikey_disable($K)$$),
('key session', 'definer',     'ok',    'pr_out',   NULL, NULL,    'member', 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('key session', 'definer',     '42501', 'postgres', NULL, 'plain', 'member', 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('key session', 'key session', 'ok',    'postgres', NULL, 'plain', NULL, 'plain', $$SELECT 1 / count(*) FROM apikeys.apikey_verify((SELECT token FROM pr.keys WHERE label = 'svc')) WHERE status = 'valid'$$),
('key session', 'key session', '42501', 'postgres', NULL, 'plain', NULL, NULL, $$SELECT apikeys.apikey_create('k', role => 'pr_svc')$$),
-- a rolled-back subtransaction takes its login with it
('key session', 'key session', 'ok',    'postgres', NULL, NULL, NULL, 'svc', $c$DO $d$ BEGIN BEGIN PERFORM apikeys.apikey_login((SELECT token FROM pr.keys WHERE label = 'plain')); RAISE EXCEPTION 'undo'; EXCEPTION WHEN raise_exception THEN NULL; END; PERFORM apikeys.apikey_disable($K); END $d$$c$),
('key session', 'member',      'ok',    'pr_member',NULL, NULL,    NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('key session', 'member',      '42501', 'pr_member',NULL, 'plain', NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
-- apikeys:manage: only admins give it; only the exact scope makes a key a manager
('apikeys:manage', 'admin',       'ok',    'pr_admin', NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, scopes => '{apikeys:manage}')$$),
('apikeys:manage', 'admin',       '42501', 'pr_member',NULL, NULL, NULL, 'svc', $$SELECT apikeys.apikey_update($K, scopes => '{apikeys:manage}')$$),
('apikeys:manage', 'member',      'ok',    'pr_member',NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('m', role => 'pr_svc', scopes => '{apikeys:read}')$$),
('apikeys:manage', 'member',      '42501', 'pr_member',NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('m', role => 'pr_svc', scopes => '{apikeys:manage}')$$),
('apikeys:manage', 'creator',     'ok',    'pr_admin', NULL, NULL, NULL, 'manage', $$SELECT apikeys.apikey_rotate($K)$$),
('apikeys:manage', 'creator',     '42501', 'pr_member',NULL, NULL, NULL, 'manage', $$SELECT apikeys.apikey_rotate($K)$$),
('apikeys:manage', 'superuser',   'ok',    'postgres', NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('m', role => 'pr_svc', scopes => '{apikeys:manage}')$$),
('apikeys:manage', 'superuser',   '42501', 'pr_grp',   NULL, NULL, NULL, NULL, $$SELECT apikeys.apikey_create('m', role => 'pr_svc', scopes => '{apikeys:manage}')$$),
('apikeys:manage', 'group',       'ok',    'pr_admin', NULL, NULL, NULL, 'rq_member', $$SELECT apikeys.apikey_approve($K)$$),
('apikeys:manage', 'group',       '42501', 'pr_grp',   NULL, NULL, NULL, 'dis', $$SELECT apikeys.apikey_enable($K); SELECT apikeys.apikey_update($K, scopes => '{apikeys:manage}')$$),
('apikeys:manage', 'definer',     'ok',    'pr_member',NULL, NULL, NULL, NULL, $$SELECT pr.wrap_admin($q$SELECT apikeys.apikey_create('m', role => 'pr_svc', scopes => '{apikeys:manage}')$q$)$$),
('apikeys:manage', 'definer',     '42501', 'pr_admin', NULL, NULL, 'member', NULL, $$SELECT apikeys.apikey_create('m', role => 'pr_svc', scopes => '{apikeys:manage}')$$),
('apikeys:manage', 'key session', 'ok',    'postgres', NULL, 'manage', NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('apikeys:manage', 'key session', '42501', 'postgres', NULL, 'star',   NULL, 'svc', $$SELECT apikeys.apikey_disable($K)$$),
('apikeys:manage', 'key session', '42501', 'postgres', NULL, 'apikeys_star', NULL, 'svc', $$SELECT apikeys.apikey_revoke($K)$$);

-- wrappers for rows above: a definer that is the key's creator, an approver, an admin
CREATE FUNCTION pr.wrap_creator(k text) RETURNS text LANGUAGE sql SECURITY DEFINER
    AS $$ SELECT apikeys.apikey_reveal(k) $$;
ALTER FUNCTION pr.wrap_creator(text) OWNER TO pr_creator;
CREATE FUNCTION pr.wrap_approver(k text) RETURNS void LANGUAGE sql SECURITY DEFINER
    AS $$ SELECT apikeys.apikey_approve(k) $$;
ALTER FUNCTION pr.wrap_approver(text) OWNER TO pr_approver;
CREATE FUNCTION pr.wrap_approver_reject(k text) RETURNS void LANGUAGE sql SECURITY DEFINER
    AS $$ SELECT apikeys.apikey_reject(k) $$;
ALTER FUNCTION pr.wrap_approver_reject(text) OWNER TO pr_approver;
CREATE FUNCTION pr.wrap_admin(cmd text) RETURNS void LANGUAGE plpgsql SECURITY DEFINER
    AS $$ BEGIN EXECUTE cmd; END $$;
ALTER FUNCTION pr.wrap_admin(text) OWNER TO pr_admin;

-- Clauses with no meaning for a rule, and why.
CREATE TABLE pr.not_applicable (rule text REFERENCES pr.rules, clause text REFERENCES pr.clauses,
    reason text NOT NULL, PRIMARY KEY (rule, clause));
INSERT INTO pr.not_applicable VALUES
('claim', 'group', 'only the requesting role itself claims: membership, direct or not, is not asked'),
('claim', 'departed', 'a request has a requester, not a creator'),
('reject', 'creator', 'a request has a requester, not a creator; four eyes does not bind rejecting'),
('reject', 'departed', 'a request has a requester, not a creator'),
('cancel', 'creator', 'the requester is the member clause here'),
('cancel', 'departed', 'a request has a requester, not a creator'),
('import', 'creator', 'no key exists yet: the caller is the creator'),
('import', 'departed', 'no key exists yet'),
('route scopes', 'member', 'route scopes belong to no role: admins only'),
('route scopes', 'creator', 'route scopes have no creator'),
('route scopes', 'group', 'route scopes belong to no role: admins only'),
('route scopes', 'departed', 'route scopes have no creator'),
('role limits', 'creator', 'role limits have no creator'),
('role limits', 'group', 'role limits are admins'' only: membership of the role is not asked'),
('role limits', 'departed', 'role limits have no creator'),
('audit purge', 'member', 'the audit log belongs to no role: admins only'),
('audit purge', 'creator', 'the audit log has no creator'),
('audit purge', 'group', 'the audit log belongs to no role'),
('audit purge', 'departed', 'the audit log has no creator'),
('key session', 'creator', 'the key-session rule does not look at creators (see the rows of each rule)'),
('key session', 'group', 'the key-session rule does not look at roles'),
('key session', 'departed', 'the key-session rule does not look at creators'),
('approve', 'departed', 'a request has a requester, not a creator'),
('audit queue', 'creator', 'the bound is on the transaction, whoever created the key'),
('audit queue', 'group', 'admin membership through a group is the admin clause'),
('audit queue', 'departed', 'the bound is on the transaction, whoever created the key'),
('audit queue', 'key session', 'a key session manages no keys (key session rule); one with apikeys:manage is its role'),
('apikeys:manage', 'departed', 'the scope rule does not look at creators'),
('rotate@0.1.0', 'member', 'covered at 0.2.0; 0.1.0 rows test only the departed creator'),
('rotate@0.1.0', 'creator', 'covered at 0.2.0'),
('rotate@0.1.0', 'group', 'covered at 0.2.0'),
('rotate@0.1.0', 'superuser', 'covered at 0.2.0'),
('rotate@0.1.0', 'definer', 'covered at 0.2.0'),
('rotate@0.1.0', 'key session', 'a 0.1.0 database has no key sessions');
-- rows run in the database still at 0.1.0 (test/t/080 makes the same roles there)
INSERT INTO pr.cases (rule, clause, expect, actor, key, cmd, db) VALUES
('rotate@0.1.0', 'departed', 'ok',    'pr_member', 'left', $$SELECT apikeys.apikey_rotate($K)$$, 'old'),
('rotate@0.1.0', 'departed', '42501', 'pr_left',   'left', $$SELECT apikeys.apikey_rotate($K)$$, 'old'),
('rotate@0.1.0', 'admin',    'ok',    'pr_admin',  'left', $$SELECT apikeys.apikey_update($K, name => 'u')$$, 'old'),
('rotate@0.1.0', 'admin',    '42501', 'pr_left',   'left', $$SELECT apikeys.apikey_update($K, name => 'u')$$, 'old');

-- Every rule x clause pair that applies has an allowed and a refused row.
CREATE VIEW pr.coverage AS
SELECT r.rule, c.clause,
       count(*) FILTER (WHERE k.expect = 'ok') AS allowed,
       count(*) FILTER (WHERE k.expect <> 'ok') AS refused
  FROM pr.rules r CROSS JOIN pr.clauses c
  LEFT JOIN pr.cases k ON k.rule = r.rule AND k.clause = c.clause
 WHERE NOT EXISTS (SELECT 1 FROM pr.not_applicable n WHERE n.rule = r.rule AND n.clause = c.clause)
 GROUP BY r.rule, c.clause;
