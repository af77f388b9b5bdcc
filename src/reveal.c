/*
 * reveal.c
 *		Revealable keys: the key-encryption key (KEK) and the sealing and
 *		unsealing of tokens with pgcrypto.
 *
 * A key created with revealable => true keeps its token encrypted, so that
 * admins and its creator can read it again (apikey_reveal).  The KEK is not
 * in the database: the superuser setting apikeys.kek_file names a file,
 * readable only by the server's operating-system user, holding 64 hex
 * digits.  Only the path is a setting (a reloaded setting's value goes to
 * the server log); the key itself is read from the file by the backend
 * that needs it, used, and wiped.  A dump therefore holds ciphertext that
 * nothing in the database can decrypt.
 *
 * Encryption is pgcrypto's OpenPGP symmetric encryption (AES-256, with an
 * integrity check), called through fmgr, not SQL: the KEK is never in a
 * statement, a parameter or a plan.  The functions are used only if they
 * are members of extension pgcrypto.  Each sealed token records the id of
 * the KEK that sealed it (a digest of the KEK, not the KEK), so a reveal
 * under another KEK fails clearly, and unsealing checks that the token is
 * the key's own and current one (key id, checksum, SHA-256 of the secret
 * against the catalog's hash).
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "access/genam.h"
#include "access/htup_details.h"
#include "access/table.h"
#include "catalog/dependency.h"
#include "catalog/indexing.h"
#include "catalog/pg_extension.h"
#include "catalog/pg_proc.h"
#include "catalog/pg_type_d.h"
#include "commands/extension.h"
#include "common/cryptohash.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/fmgroids.h"
#include "utils/rel.h"
#include "utils/syscache.h"

#include "apikeys.h"
#include "compat.h"

#define KEK_LEN			32		/* bytes: AES-256 */
#define KEK_HEX_LEN		(2 * KEK_LEN)
#define KEK_ID_LEN		16		/* hex digits of the KEK's id */

/* pgcrypto options: AES-256, salted key derivation (the KEK is random, so
 * stretching adds nothing), SHA-256, no compression, integrity check on. */
#define SEAL_OPTIONS	"cipher-algo=aes256, s2k-mode=1, s2k-digest-algo=sha256, compress-algo=0"

static char *kek_file = NULL;

/* Define apikeys.kek_file; called from _PG_init. */
void
apikeys_reveal_init(void)
{
	DefineCustomStringVariable("apikeys.kek_file",
							   "File holding the key-encryption key of revealable api keys (64 hex digits).",
							   "Empty (the default): revealable keys cannot be created or revealed. The file must be readable only by the server's user. A relative path is relative to the data directory.",
							   &kek_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
}

/* Raise the one error every KEK problem gives users, with a detail. */
static void
kek_error(const char *detail)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the key-encryption key of revealable api keys is not available"),
			 errdetail("%s", detail),
			 errhint("A superuser sets apikeys.kek_file to a file owned by the server's user, mode 0600 or 0400, holding 64 hex digits (such as the output of openssl rand -hex 32), and reloads the configuration.")));
}

/*
 * Decode 2 * n hex digits into n bytes; false (echoing nothing) on a
 * non-digit.  (Also pepper.c's.)
 */
bool
apikey_decode_hex(const char *src, int n, uint8 *dst)
{
	for (int i = 0; i < 2 * n; i++)
	{
		char		c = src[i];
		int			v;

		if (c >= '0' && c <= '9')
			v = c - '0';
		else if (c >= 'a' && c <= 'f')
			v = c - 'a' + 10;
		else if (c >= 'A' && c <= 'F')
			v = c - 'A' + 10;
		else
			return false;
		if (i % 2 == 0)
			dst[i / 2] = (uint8) (v << 4);
		else
			dst[i / 2] |= (uint8) v;
	}
	return true;
}

/*
 * Read the KEK from apikeys.kek_file into kek, and its id (the first
 * KEK_ID_LEN hex digits of SHA-256("apikeys kek id" || kek)) into kek_id.
 * Raises when there is none; the caller wipes kek.
 */
static void
load_kek(uint8 kek[KEK_LEN], char kek_id[KEK_ID_LEN + 1])
{
	int			fd;
	struct stat st;
	char		buf[KEK_HEX_LEN + 3];
	ssize_t		n;
	int			len;
	uint8		digest[APIKEY_DIGEST_LEN];
	pg_cryptohash_ctx *ctx;
	static const char id_label[] = "apikeys kek id";

	if (kek_file == NULL || kek_file[0] == '\0')
		kek_error("apikeys.kek_file is not set.");
	fd = open(kek_file, O_RDONLY | PG_BINARY, 0);
	if (fd < 0)
	{
		int			save = errno;

		kek_error(psprintf("The file named by apikeys.kek_file could not be opened: %s.", strerror(save)));
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
	{
		close(fd);
		kek_error("The file named by apikeys.kek_file is not a regular file.");
	}
	if (st.st_uid != geteuid() || (st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
	{
		close(fd);
		kek_error("The file named by apikeys.kek_file must be owned by the server's user and readable by no one else (mode 0600 or 0400).");
	}
	n = read(fd, buf, sizeof(buf));
	close(fd);
	len = n < 0 ? 0 : (int) n;
	/* one trailing newline (or CRLF) is fine */
	if (len > 0 && buf[len - 1] == '\n')
		len--;
	if (len > 0 && buf[len - 1] == '\r')
		len--;
	if (len != KEK_HEX_LEN || !apikey_decode_hex(buf, KEK_LEN, kek))
	{
		explicit_bzero(buf, sizeof(buf));
		kek_error("The file named by apikeys.kek_file does not hold exactly 64 hex digits.");
	}
	explicit_bzero(buf, sizeof(buf));

	ctx = pg_cryptohash_create(PG_SHA256);
	if (ctx == NULL || pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) id_label, sizeof(id_label) - 1) < 0 ||
		pg_cryptohash_update(ctx, kek, KEK_LEN) < 0 ||
		pg_cryptohash_final(ctx, digest, sizeof(digest)) < 0)
		elog(ERROR, "could not compute the key-encryption key's id");
	pg_cryptohash_free(ctx);
	hex_encode((const char *) digest, KEK_ID_LEN / 2, kek_id);
	kek_id[KEK_ID_LEN] = '\0';
}

/* The schema of an extension (exported by PostgreSQL only from 16 on). */
static Oid
extension_schema(Oid ext)
{
	Relation	rel = table_open(ExtensionRelationId, AccessShareLock);
	ScanKeyData key;
	SysScanDesc scan;
	HeapTuple	tup;
	Oid			nsp = InvalidOid;

	ScanKeyInit(&key, Anum_pg_extension_oid, BTEqualStrategyNumber, F_OIDEQ,
				ObjectIdGetDatum(ext));
	scan = systable_beginscan(rel, ExtensionOidIndexId, true, NULL, 1, &key);
	tup = systable_getnext(scan);
	if (HeapTupleIsValid(tup))
		nsp = ((Form_pg_extension) GETSTRUCT(tup))->extnamespace;
	systable_endscan(scan);
	table_close(rel, AccessShareLock);
	return nsp;
}

/* The OID of pgcrypto's function name(argtypes), a member of pgcrypto. */
static Oid
pgcrypto_function(const char *name, int nargs, const Oid *argtypes)
{
	Oid			ext = get_extension_oid("pgcrypto", true);
	HeapTuple	tp;
	Oid			funcid = InvalidOid;

	if (OidIsValid(ext))
	{
		tp = SearchSysCache3(PROCNAMEARGSNSP, CStringGetDatum(name),
							 PointerGetDatum(buildoidvector(argtypes, nargs)),
							 ObjectIdGetDatum(extension_schema(ext)));
		if (HeapTupleIsValid(tp))
		{
			funcid = ((Form_pg_proc) GETSTRUCT(tp))->oid;
			ReleaseSysCache(tp);
		}
		if (OidIsValid(funcid) &&
			getExtensionOfObject(ProcedureRelationId, funcid) != ext)
			funcid = InvalidOid;
	}
	if (!OidIsValid(funcid))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_FUNCTION),
				 errmsg("pgcrypto function %s is missing", name),
				 errhint("Revealable api keys are encrypted with pgcrypto: CREATE EXTENSION pgcrypto in this database.")));
	return funcid;
}

/* The KEK as the pgcrypto password: its hex digits. */
static text *
kek_password(const uint8 kek[KEK_LEN])
{
	text	   *t = (text *) palloc(VARHDRSZ + KEK_HEX_LEN);

	SET_VARSIZE(t, VARHDRSZ + KEK_HEX_LEN);
	hex_encode((const char *) kek, KEK_LEN, VARDATA(t));
	return t;
}

/* SQL function: apikeys_internal._seal(text) returns record(kek_id text, sealed bytea) */
PG_FUNCTION_INFO_V1(apikeys_seal);
Datum
apikeys_seal(PG_FUNCTION_ARGS)
{
	text	   *token = PG_GETARG_TEXT_PP(0);
	ApiKeyToken tok;
	uint8		kek[KEK_LEN];
	char		kek_id[KEK_ID_LEN + 1];
	Oid			argtypes[3] = {BYTEAOID, TEXTOID, TEXTOID};
	Oid			encrypt;
	bytea	   *plain;
	text	   *psw;
	Datum		sealed;
	TupleDesc	tupdesc;
	Datum		values[2];
	bool		nulls[2] = {false, false};

	if (!apikey_parse(VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token), &tok))
		elog(ERROR, "apikeys_internal._seal was given something that is not a token");
	encrypt = pgcrypto_function("pgp_sym_encrypt_bytea", 3, argtypes);
	load_kek(kek, kek_id);

	plain = (bytea *) palloc(VARHDRSZ + VARSIZE_ANY_EXHDR(token));
	SET_VARSIZE(plain, VARHDRSZ + VARSIZE_ANY_EXHDR(token));
	memcpy(VARDATA(plain), VARDATA_ANY(token), VARSIZE_ANY_EXHDR(token));
	psw = kek_password(kek);
	explicit_bzero(kek, sizeof(kek));

	sealed = OidFunctionCall3(encrypt, PointerGetDatum(plain), PointerGetDatum(psw),
							  CStringGetTextDatum(SEAL_OPTIONS));
	explicit_bzero(VARDATA(psw), KEK_HEX_LEN);
	explicit_bzero(VARDATA(plain), VARSIZE(plain) - VARHDRSZ);

	if (get_call_result_type(fcinfo, NULL, &tupdesc) != TYPEFUNC_COMPOSITE)
		elog(ERROR, "apikeys_internal._seal must return a composite type");
	tupdesc = BlessTupleDesc(tupdesc);
	values[0] = CStringGetTextDatum(kek_id);
	values[1] = sealed;
	PG_RETURN_DATUM(HeapTupleGetDatum(heap_form_tuple(tupdesc, values, nulls)));
}

/*
 * SQL function: apikeys_internal._unseal(text, text, bytea, bytea, int2,
 * text) returns text
 *
 * Arguments: key id, the KEK id it was sealed under, the sealed token, and
 * the key's stored hash with its version and pepper id (null unless
 * peppered).
 */
PG_FUNCTION_INFO_V1(apikeys_unseal);
Datum
apikeys_unseal(PG_FUNCTION_ARGS)
{
	text	   *key_id;
	text	   *sealed_kek_id;
	bytea	   *sealed;
	bytea	   *hash;
	int16		hash_version;
	const char *volatile pepper_id = NULL;
	uint8		kek[KEK_LEN];
	char		kek_id[KEK_ID_LEN + 1];
	Oid			argtypes[2] = {BYTEAOID, TEXTOID};
	Oid			decrypt;
	text	   *psw;
	bytea	   *plain;
	ApiKeyToken tok;
	uint8		digest[APIKEY_DIGEST_LEN];
	volatile bool ok;
	text	   *result;

	for (int i = 0; i < 5; i++)
		if (PG_ARGISNULL(i))
			elog(ERROR, "apikeys_internal._unseal was given a null argument");
	key_id = PG_GETARG_TEXT_PP(0);
	sealed_kek_id = PG_GETARG_TEXT_PP(1);
	sealed = PG_GETARG_BYTEA_PP(2);
	hash = PG_GETARG_BYTEA_PP(3);
	hash_version = PG_GETARG_INT16(4);
	if (!PG_ARGISNULL(5))
		pepper_id = apikey_pepper_id_of(PG_GETARG_TEXT_PP(5));

	decrypt = pgcrypto_function("pgp_sym_decrypt_bytea", 2, argtypes);
	load_kek(kek, kek_id);
	if (VARSIZE_ANY_EXHDR(sealed_kek_id) != KEK_ID_LEN ||
		memcmp(VARDATA_ANY(sealed_kek_id), kek_id, KEK_ID_LEN) != 0)
	{
		explicit_bzero(kek, sizeof(kek));
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("api key \"%s\" was sealed under another key-encryption key",
						text_to_cstring(key_id)),
				 errdetail("It was sealed under key-encryption key %s; apikeys.kek_file holds %s.",
						   text_to_cstring(sealed_kek_id), kek_id),
				 errhint("Point apikeys.kek_file at the key-encryption key the key was created with, or rotate the key to get a new token.")));
	}
	psw = kek_password(kek);
	explicit_bzero(kek, sizeof(kek));
	plain = DatumGetByteaPP(OidFunctionCall2(decrypt, PointerGetDatum(sealed),
											 PointerGetDatum(psw)));
	explicit_bzero(VARDATA(psw), KEK_HEX_LEN);

	/* the key's own, current token: nothing else comes out of here */
	ok = apikey_parse(VARDATA_ANY(plain), VARSIZE_ANY_EXHDR(plain), &tok) &&
		VARSIZE_ANY_EXHDR(key_id) == APIKEY_KEY_ID_LEN &&
		memcmp(tok.key_id, VARDATA_ANY(key_id), APIKEY_KEY_ID_LEN) == 0;
	if (ok)
	{
		/* (under the key's pepper, if it has one: pepper.c) */
		apikey_digest(tok.secret, APIKEY_SECRET_LEN, digest);
		PG_TRY();
		{
			ok = VARSIZE_ANY_EXHDR(hash) == APIKEY_DIGEST_LEN &&
				apikey_hash_matches(tok.key_id, hash_version, pepper_id,
									(const uint8 *) VARDATA_ANY(hash), digest);
		}
		PG_CATCH();
		{
			explicit_bzero(digest, sizeof(digest));
			explicit_bzero(VARDATA_ANY(plain), VARSIZE_ANY_EXHDR(plain));
			PG_RE_THROW();
		}
		PG_END_TRY();
		explicit_bzero(digest, sizeof(digest));
	}
	if (!ok)
	{
		explicit_bzero(VARDATA_ANY(plain), VARSIZE_ANY_EXHDR(plain));
		ereport(ERROR,
				(errcode(ERRCODE_DATA_CORRUPTED),
				 errmsg("sealed token of api key \"%s\" does not match the key",
						text_to_cstring(key_id)),
				 errdetail("The decrypted value is not the key's current token; the stored ciphertext was altered or copied from another key."),
				 errhint("Rotate the key to get a new token.")));
	}
	result = cstring_to_text_with_len(VARDATA_ANY(plain), VARSIZE_ANY_EXHDR(plain));
	explicit_bzero(VARDATA_ANY(plain), VARSIZE_ANY_EXHDR(plain));
	PG_RETURN_TEXT_P(result);
}

/* SQL function: apikeys_internal._kek_id() returns text */
PG_FUNCTION_INFO_V1(apikeys_kek_id);
Datum
apikeys_kek_id(PG_FUNCTION_ARGS)
{
	uint8		kek[KEK_LEN];
	char		kek_id[KEK_ID_LEN + 1];

	load_kek(kek, kek_id);
	explicit_bzero(kek, sizeof(kek));
	PG_RETURN_TEXT_P(cstring_to_text(kek_id));
}
