# NOTIFY apikeys tells a listener nothing the listings would not show it:
# any role can LISTEN on any channel, so every event (each audited change:
# create, rotate, update, disable, enable, revoke, a leak report, delete,
# role limits, request, approve, claim; and the worker's quota_low and
# quota_exhausted) carries only {"event": ..., "seq": N}.  A role unrelated
# to the keys hears the numbers and can read nothing behind them; a member
# of the keys' role reads each event in apikeys.audit_log or
# apikeys.quota_events by its seq; an admin reads them all.
use strict;
use warnings;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);

my $node = PostgreSQL::Test::Cluster->new('events');
$node->init;
$node->append_conf('postgresql.conf', q{
shared_preload_libraries = 'apikeys'
apikeys.usage_flush_interval = '200ms'
});
$node->start;
sub q1 { return $node->safe_psql('postgres', "SET log_statement = 'none';\n$_[0]"); }
sub as { return $node->safe_psql('postgres', $_[1], extra_params => [ '-U', $_[0] ]); }
q1(q{
    CREATE EXTENSION apikeys CASCADE;
    CREATE ROLE svc_a NOLOGIN;
    CREATE ROLE alice LOGIN IN ROLE svc_a;
    CREATE ROLE mallory LOGIN;
    CREATE TABLE tok (label text PRIMARY KEY, key_id text, token text);
    GRANT SELECT, INSERT ON tok TO alice;
    -- n requests, each verification a statement of its own (a cursor)
    CREATE FUNCTION spend(l text, n int) RETURNS int LANGUAGE plpgsql AS $$
    DECLARE
        granted int := 0;
        r record;
        tk text := (SELECT token FROM tok WHERE label = l);
    BEGIN
        FOR i IN 1..n LOOP
            FOR r IN SELECT v.valid FROM apikeys.apikey_verify(tk) v LOOP
                IF r.valid THEN
                    granted := granted + 1;
                END IF;
            END LOOP;
        END LOOP;
        RETURN granted;
    END $$;
});

my %listener;
for my $who ('mallory', 'alice', 'postgres')
{
	$listener{$who} = $node->background_psql('postgres', extra_params => [ '-U', $who ]);
	$listener{$who}->query_safe('LISTEN apikeys');
}
my $before = q1('SELECT coalesce(max(seq), 0) FROM apikeys.audit_log');

# every kind of event, on keys of svc_a
q1(q{
    INSERT INTO tok SELECT 'q', * FROM apikeys.apikey_create('quota', role => 'svc_a', remaining => 20);
    INSERT INTO tok SELECT 'b', * FROM apikeys.apikey_create('b', role => 'svc_a');
    INSERT INTO tok SELECT 'c', * FROM apikeys.apikey_create('c', role => 'svc_a');
    SELECT apikeys.apikey_rotate(key_id) FROM tok WHERE label = 'b';
    SELECT apikeys.apikey_update(key_id, name => 'b2') FROM tok WHERE label = 'b';
    SELECT apikeys.apikey_disable(key_id) FROM tok WHERE label = 'b';
    SELECT apikeys.apikey_enable(key_id) FROM tok WHERE label = 'b';
    SELECT apikeys.apikey_revoke(key_id) FROM tok WHERE label = 'b';
    SELECT apikeys.apikey_report_leak(token, 'https://example.com/paste') FROM tok WHERE label = 'c';
    SELECT apikeys.apikey_delete(key_id) FROM tok WHERE label = 'c';
    SELECT apikeys.apikey_set_role_limit('svc_a', '100/second');
});
my $req = as('alice', q{SELECT apikeys.apikey_request('asked', role => 'svc_a', reason => 'a test')});
q1(qq{SELECT apikeys.apikey_approve('$req')});
as('alice', qq{INSERT INTO tok SELECT 'r', '$req', apikeys.apikey_claim('$req')});
# the quota: 19 of 20 spent is below 10% (quota_low), the last one empties it
is(q1(q{SELECT spend('q', 19)}), '19', 'quota: 19 of 20 spent');
ok($node->poll_query_until('postgres', q{SELECT count(*) FROM apikeys.quota_events}, '1'), 'quota_low recorded');
is(q1(q{SELECT spend('q', 1)}), '1', 'the last use');
ok($node->poll_query_until('postgres', q{SELECT count(*) FROM apikeys.quota_events}, '2'), 'quota_exhausted recorded');

my $naudit = q1(qq{SELECT count(*) FROM apikeys.audit_log WHERE seq > $before});
my $nall = $naudit + 2;

# what each listener heard
my %heard;
for my $who (keys %listener)
{
	my $out = '';
	for (1 .. 300)
	{
		$out .= $listener{$who}->query_safe('SELECT 1');
		last if (() = $out =~ /Asynchronous notification/g) >= $nall;
		usleep(100_000);
	}
	$heard{$who} = [ $out =~ /Asynchronous notification "apikeys" with payload "(.*)" received/g ];
	$listener{$who}->quit;
}
is(scalar @{ $heard{mallory} }, $nall, "the unrelated role heard all $nall events (LISTEN has no privilege)");
is(join("\n", @{ $heard{alice} }), join("\n", @{ $heard{mallory} }), 'and the same as a member of the keys\' role');

my @ids = split /\n/, q1('SELECT key_id FROM tok');
my @leaks = grep {
	my $p = $_;
	!($p =~ /^\{"event": "(audit|quota)", "seq": \d+\}$/) || grep { index($p, $_) >= 0 } (@ids, 'svc_a', 'alice')
} @{ $heard{mallory} };
is(scalar(@leaks), 0, 'every payload is {"event": ..., "seq": N}: no key id, no role') or diag(join("\n", @leaks));

my @audit = map { /"event": "audit", "seq": (\d+)/ ? $1 : () } @{ $heard{mallory} };
my @quota = map { /"event": "quota", "seq": (\d+)/ ? $1 : () } @{ $heard{mallory} };
is(scalar(@quota), 2, 'two quota events');
my $audit_seqs = 'ARRAY[' . join(',', @audit) . ']::int8[]';
my $quota_seqs = 'ARRAY[' . join(',', @quota) . ']::int8[]';

# an admin: every event in full, and every kind was announced
is(q1(qq{SELECT count(*) FROM apikeys.audit_log WHERE seq = ANY($audit_seqs)}), $naudit,
	'an admin reads every audit event by its seq');
is(q1(qq{SELECT string_agg(DISTINCT action, ' ' ORDER BY action) FROM apikeys.audit_log WHERE seq = ANY($audit_seqs)}),
	'approve claim create delete disable enable request revoke revoke_leak rotate set_role_limit update',
	'the events cover every kind of change');
is(q1(qq{SELECT string_agg(event || ' ' || remaining, ', ' ORDER BY seq) FROM apikeys.quota_events WHERE seq = ANY($quota_seqs)}),
	'quota_low 1, quota_exhausted 0', 'an admin reads the quota events');

# the unrelated role: nothing behind any number
is(as('mallory', qq{SELECT count(*) FROM apikeys.audit_log WHERE seq = ANY($audit_seqs)}), '0', 'the unrelated role reads no audit event');
is(as('mallory', qq{SELECT count(*) FROM apikeys.quota_events}), '0', 'nor any quota event');
is(as('mallory', qq{SELECT count(*) FROM apikeys.keys}),
	'0', 'as it sees no key in the listing');

# a member of the keys' role: which of its keys, and what happened
my $q = q1(q{SELECT key_id FROM tok WHERE label = 'q'});
is(as('alice', qq{SELECT string_agg(event || ' ' || key_id || ' ' || remaining, ', ' ORDER BY seq)
                    FROM apikeys.quota_events WHERE seq = ANY($quota_seqs)}), "quota_low $q 1, quota_exhausted $q 0",
	'the key\'s role reads which of its keys is low, then exhausted');
is(as('alice', qq{SELECT count(*) FROM apikeys.audit_log WHERE seq = ANY($audit_seqs) AND key_role = 'svc_a'::regrole}),
	q1(qq{SELECT count(*) FROM apikeys.audit_log WHERE seq = ANY($audit_seqs) AND key_role = 'svc_a'::regrole}),
	'and every audit event of its keys');

# the README's Events block, as written, with this run's numbers
my $readme = slurp_file("$ENV{TESTDIR}/README.md");
my ($block) = $readme =~ /^### Events\n.*?^```sql\n(.*?)^```/ms;
ok(defined $block, 'README: the Events block');
my $last_audit = $audit[-1];
(my $sql = $block) =~ s/seq = 1042/seq = $last_audit/;
$sql =~ s/seq = 7;/seq = $quota[0];/;
$sql =~ s/seq > 6 /seq > $quota[0] - 1 /;
is($sql =~ tr/\n//, $block =~ tr/\n//, 'README block: only its numbers changed');
my $r = as('alice', $sql);
like($r, qr/^\w+\|\w{12}\|svc_a\|\d{4}-.*\n\Q$q\E\|quota_low\|1\n\d+\|.*\|quota_low\|\Q$q\E\|1\n\d+\|.*\|quota_exhausted\|\Q$q\E\|0$/s,
	'README block as the key\'s role: the audit row, the low key, the events since');
$r = as('mallory', $sql);
is($r, '', 'README block as the unrelated role: nothing');

$node->stop;
done_testing();
