/*
 * note.c
 *		The audit note: what an entry point tells the audit trigger about
 *		the change it is making, beyond what the row itself shows.
 *
 * The audit trigger on the key catalog names an action after the columns
 * that changed (a state going to revoked is "revoke").  Some entry points
 * know more: apikey_report_leak revokes because a leak was reported, from
 * a source, and wants the row to say "revoke_leak" with that source.  Such
 * an entry point sets the note around its call of the internal function
 * (and clears it however the call ends); the trigger reads it through
 * apikeys_internal._audit_note().  The note lives in backend memory and is
 * set only from C, so no client can forge what the audit log says.
 *
 * Also the events on channel apikeys.  PostgreSQL has no privilege on
 * LISTEN: any role can listen on any channel, so a payload is public.  It
 * therefore names no key and no role, only where to look:
 *
 *     {"event": "audit", "seq": 42}    the audit row with seq 42
 *     {"event": "quota", "seq": 7}     the row with seq 7 of apikeys.quota_events
 *
 * and the detail is read there, through the row-level security that
 * decides what each role may see (apikeys.audit_log, apikeys.quota_events):
 * a listener learns nothing the listings would not show it, apart from the
 * numbering, which its own rows show too.
 */
#include "postgres.h"

#include "commands/async.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "apikeys.h"

/* {"action": ..., "changes": {...}}, in TopMemoryContext, or NULL */
static Jsonb *note = NULL;

/*
 * Set the note for the changes made until apikeys_audit_note_clear():
 * the audit action, and a JSON object (text) merged into the row's changes.
 */
void
apikeys_audit_note_set(const char *action, const char *changes_json)
{
	StringInfoData buf;
	Jsonb	   *j;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"action\": ");
	escape_json(&buf, action);
	appendStringInfo(&buf, ", \"changes\": %s}", changes_json ? changes_json : "{}");
	j = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(buf.data)));

	apikeys_audit_note_clear();
	note = MemoryContextAlloc(TopMemoryContext, VARSIZE(j));
	memcpy(note, j, VARSIZE(j));
	pfree(buf.data);
}

/* Forget the note. */
void
apikeys_audit_note_clear(void)
{
	if (note != NULL)
		pfree(note);
	note = NULL;
}

/* SQL function: apikeys_internal._audit_note() returns jsonb */
PG_FUNCTION_INFO_V1(apikeys_audit_note);
Datum
apikeys_audit_note(PG_FUNCTION_ARGS)
{
	Jsonb	   *copy;

	if (note == NULL)
		PG_RETURN_NULL();
	copy = palloc(VARSIZE(note));
	memcpy(copy, note, VARSIZE(note));
	PG_RETURN_JSONB_P(copy);
}

/*
 * Queue NOTIFY apikeys for the row seq of the table named by event ("audit":
 * the audit log), sent at commit; the payload holds nothing else.
 */
void
apikeys_notify_event(const char *event, int64 seq)
{
	char		payload[64];

	snprintf(payload, sizeof(payload), "{\"event\": \"%s\", \"seq\": " INT64_FORMAT "}",
			 event, seq);
	Async_Notify(APIKEYS_EVENT_CHANNEL, payload);
}
