/*
 * pepper.c
 *		The optional pepper: HMAC-SHA256 of the secret's SHA-256 under a
 *		server secret that is not in the database.
 *
 * With apikeys.pepper_file set, every new hash of a native secret (create,
 * rotate, a claimed key request, a custom key imported in apikeys' format)
 * is stored as HMAC-SHA256(pepper, SHA-256(secret)), hash_version 2, with
 * the pepper's id beside it; without it, SHA-256(secret), hash_version 1.
 * Verify still computes SHA-256 of the presented secret (the statement memo
 * and the apikey type keep using it) and, for a peppered key, applies the
 * HMAC under the pepper the key names.  A dump of the database then holds
 * hashes that cannot be attacked offline without the pepper.
 *
 * The file holds one pepper per line, 64 hex digits, the current one first
 * and older ones (still needed by keys hashed under them) after it; blank
 * lines and lines starting with '#' are ignored.  It must be owned by the
 * server's user and readable by no one else.  Only its path is a setting (a
 * reloaded setting's value goes to the server log); the peppers themselves
 * never reach SQL, a plan, an error or the log.  A pepper's id is the first
 * 16 hex digits of HMAC-SHA256(pepper, "apikeys pepper id"): public, and
 * recorded with each hash it made.
 *
 * When the file is read: by each backend the first time it needs a pepper,
 * again after every configuration reload (the setting's assign hook marks
 * what was read as stale), and when a key names a pepper the backend does
 * not hold, or the file could not be used, and the file has changed since
 * it was read (the new pepper of a rotation, added before the reload
 * reached this backend).  A key whose pepper is nowhere fails verification
 * with an error naming the pepper id and apikeys.pepper_file, never with a
 * silent 'invalid'; a file that is set but unusable makes creation fail
 * rather than fall back to an unpeppered hash.
 *
 * HMAC is OpenSSL's (EVP_MAC, one context per pepper, keyed once and reset
 * per use) when the server is built with OpenSSL 3, else PostgreSQL's
 * pg_hmac; comparisons are constant-time.
 */
#include "postgres.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef USE_OPENSSL
#include <openssl/opensslv.h>
#endif
#if defined(USE_OPENSSL) && OPENSSL_VERSION_NUMBER >= 0x30000000L && !defined(APIKEYS_PEPPER_PG_HMAC)
#define PEPPER_EVP_MAC 1
#include <openssl/core_names.h>
#include <openssl/evp.h>
#else
#include "common/hmac.h"
#endif

#include "fmgr.h"
#include "funcapi.h"
#include "lib/stringinfo.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"

#include "apikeys.h"
#include "compat.h"

#define PEPPER_LEN			32	/* bytes */
#define PEPPER_HEX_LEN		(2 * PEPPER_LEN)
#define PEPPER_MAX			16	/* peppers in the file */
#define PEPPER_FILE_MAX		8192	/* bytes */

typedef struct Pepper
{
	char		id[APIKEY_PEPPER_ID_LEN];
#ifdef PEPPER_EVP_MAC
	EVP_MAC_CTX *ctx;			/* keyed with the pepper */
#else
	uint8		key[PEPPER_LEN];
#endif
} Pepper;

/* apikeys.pepper_file */
static char *pepper_file = NULL;

/* What this backend read, and whether a reload has made it stale. */
static bool pepper_stale = true;
static Pepper peppers[PEPPER_MAX];
static int	npeppers = 0;
static char problem[256];		/* why the file could not be used ("" if it could) */
static bool have_stat = false;	/* the file as it was read: */
static struct stat read_stat;

#ifdef PEPPER_EVP_MAC
static EVP_MAC *hmac_alg = NULL;
#endif

/* Assign hook of apikeys.pepper_file: read the file again at next use. */
static void
pepper_file_assign(const char *newval, void *extra)
{
	pepper_stale = true;
}

/* Define apikeys.pepper_file; called from _PG_init. */
void
apikeys_pepper_init(void)
{
	DefineCustomStringVariable("apikeys.pepper_file",
							   "File holding the peppers of api key hashes (64 hex digits per line, the current one first).",
							   "Empty (the default): new keys are stored as SHA-256 of their secret. The file must be readable only by the server's user. A relative path is relative to the data directory.",
							   &pepper_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, pepper_file_assign, NULL);
}

/* Raise an error for a failure of the HMAC implementation. */
static void
hmac_failed(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_INTERNAL_ERROR),
			 errmsg("could not compute hmac-sha256 digest")));
}

/* HMAC-SHA256 of data under pepper p. */
static void
pepper_mac(const Pepper *p, const uint8 *data, size_t len, uint8 out[APIKEY_DIGEST_LEN])
{
#ifdef PEPPER_EVP_MAC
	size_t		outlen = 0;

	/* a null key re-initialises with the key already set */
	if (EVP_MAC_init(p->ctx, NULL, 0, NULL) != 1 ||
		EVP_MAC_update(p->ctx, data, len) != 1 ||
		EVP_MAC_final(p->ctx, out, &outlen, APIKEY_DIGEST_LEN) != 1 ||
		outlen != APIKEY_DIGEST_LEN)
		hmac_failed();
#else
	pg_hmac_ctx *ctx = pg_hmac_create(PG_SHA256);

	if (ctx == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	if (pg_hmac_init(ctx, p->key, PEPPER_LEN) < 0 ||
		pg_hmac_update(ctx, data, len) < 0 ||
		pg_hmac_final(ctx, out, APIKEY_DIGEST_LEN) < 0)
	{
		pg_hmac_free(ctx);
		hmac_failed();
	}
	pg_hmac_free(ctx);
#endif
}

/* Forget every pepper read (wiping them). */
static void
forget_peppers(void)
{
	for (int i = 0; i < npeppers; i++)
	{
#ifdef PEPPER_EVP_MAC
		EVP_MAC_CTX_free(peppers[i].ctx);	/* OpenSSL wipes the key */
		peppers[i].ctx = NULL;
#else
		explicit_bzero(peppers[i].key, PEPPER_LEN);
#endif
	}
	npeppers = 0;
}

/* Set up pepper p from its bytes (which the caller wipes); false on failure. */
static bool
pepper_setup(Pepper *p, const uint8 key[PEPPER_LEN])
{
	static const char id_label[] = "apikeys pepper id";
	uint8		mac[APIKEY_DIGEST_LEN];

#ifdef PEPPER_EVP_MAC
	OSSL_PARAM	params[2];

	if (hmac_alg == NULL)
		hmac_alg = EVP_MAC_fetch(NULL, "HMAC", NULL);
	if (hmac_alg == NULL)
		return false;
	p->ctx = EVP_MAC_CTX_new(hmac_alg);
	if (p->ctx == NULL)
		return false;
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, (char *) "SHA256", 0);
	params[1] = OSSL_PARAM_construct_end();
	if (EVP_MAC_init(p->ctx, key, PEPPER_LEN, params) != 1)
	{
		EVP_MAC_CTX_free(p->ctx);
		p->ctx = NULL;
		return false;
	}
#else
	memcpy(p->key, key, PEPPER_LEN);
#endif
	pepper_mac(p, (const uint8 *) id_label, sizeof(id_label) - 1, mac);
	hex_encode((const char *) mac, APIKEY_PEPPER_ID_LEN / 2, p->id);
	explicit_bzero(mac, sizeof(mac));
	return true;
}

/* Decode 64 hex digits into PEPPER_LEN bytes; false on anything else. */
static bool
decode_pepper(const char *src, int len, uint8 dst[PEPPER_LEN])
{
	return len == PEPPER_HEX_LEN && apikey_decode_hex(src, PEPPER_LEN, dst);
}

/* Note why the file cannot be used (never its path or its content). */
static void
set_problem(const char *fmt,...) pg_attribute_printf(1, 2);
static void
set_problem(const char *fmt,...)
{
	va_list		ap;

	va_start(ap, fmt);
	vsnprintf(problem, sizeof(problem), fmt, ap);
	va_end(ap);
	forget_peppers();
}

/*
 * Parse the file's content into peppers.  Lines: blank, '#' comments, or
 * 64 hex digits (spaces and tabs around them, and a CR, are ignored).
 */
static void
parse_peppers(char *buf, int len)
{
	int			pos = 0;
	int			lineno = 0;

	while (pos < len)
	{
		int			end = pos;
		int			s,
					e;
		uint8		key[PEPPER_LEN];
		Pepper	   *p;

		while (end < len && buf[end] != '\n')
			end++;
		lineno++;
		s = pos;
		e = end;
		pos = end + 1;
		while (s < e && (buf[s] == ' ' || buf[s] == '\t'))
			s++;
		while (e > s && (buf[e - 1] == ' ' || buf[e - 1] == '\t' || buf[e - 1] == '\r'))
			e--;
		if (s == e || buf[s] == '#')
			continue;
		if (!decode_pepper(buf + s, e - s, key))
		{
			set_problem("Line %d of the file named by apikeys.pepper_file is not 64 hex digits.", lineno);
			return;
		}
		if (npeppers == PEPPER_MAX)
		{
			explicit_bzero(key, sizeof(key));
			set_problem("The file named by apikeys.pepper_file holds more than %d peppers.", PEPPER_MAX);
			return;
		}
		p = &peppers[npeppers];
		if (!pepper_setup(p, key))
		{
			explicit_bzero(key, sizeof(key));
			set_problem("The pepper on line %d could not be set up for HMAC-SHA256.", lineno);
			return;
		}
		explicit_bzero(key, sizeof(key));
		npeppers++;
		for (int i = 0; i < npeppers - 1; i++)
		{
			if (memcmp(peppers[i].id, p->id, APIKEY_PEPPER_ID_LEN) == 0)
			{
				set_problem("Line %d of the file named by apikeys.pepper_file repeats pepper %.*s.",
							lineno, APIKEY_PEPPER_ID_LEN, p->id);
				return;
			}
		}
	}
	if (npeppers == 0)
		set_problem("The file named by apikeys.pepper_file holds no pepper.");
}

/* Read apikeys.pepper_file afresh into peppers (or into problem). */
static void
read_peppers(void)
{
	int			fd;
	struct stat st;
	char	   *buf;
	ssize_t		n;

	forget_peppers();
	problem[0] = '\0';
	have_stat = false;
	pepper_stale = false;
	if (pepper_file == NULL || pepper_file[0] == '\0')
		return;

	fd = open(pepper_file, O_RDONLY | PG_BINARY, 0);
	if (fd < 0)
	{
		set_problem("The file named by apikeys.pepper_file could not be opened: %s.", strerror(errno));
		return;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
	{
		close(fd);
		set_problem("The file named by apikeys.pepper_file is not a regular file.");
		return;
	}
	read_stat = st;
	have_stat = true;
	if (st.st_uid != geteuid() || (st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
	{
		close(fd);
		set_problem("The file named by apikeys.pepper_file must be owned by the server's user and readable by no one else (mode 0600 or 0400).");
		return;
	}
	if (st.st_size > PEPPER_FILE_MAX)
	{
		close(fd);
		set_problem("The file named by apikeys.pepper_file is larger than %d bytes.", PEPPER_FILE_MAX);
		return;
	}
	buf = palloc(PEPPER_FILE_MAX + 1);
	n = read(fd, buf, PEPPER_FILE_MAX + 1);
	close(fd);
	if (n < 0 || n > PEPPER_FILE_MAX)
		set_problem("The file named by apikeys.pepper_file could not be read.");
	else
		parse_peppers(buf, (int) n);
	explicit_bzero(buf, PEPPER_FILE_MAX + 1);
	pfree(buf);
}

/* Read the file if nothing current was read. */
static inline void
ensure_peppers(void)
{
	if (pepper_stale)
		read_peppers();
}

/*
 * Read the file again if it changed since it was read (or could not be
 * read): for a key naming a pepper this backend lacks, or a file that was
 * unusable.  Returns whether it read.
 */
static bool
reread_if_changed(void)
{
	struct stat st;

	if (pepper_file == NULL || pepper_file[0] == '\0')
		return false;
	if (stat(pepper_file, &st) != 0)
	{
		if (!have_stat)
			return false;		/* missing then, missing now */
	}
	else if (have_stat &&
			 st.st_ino == read_stat.st_ino && st.st_dev == read_stat.st_dev &&
			 st.st_size == read_stat.st_size &&
			 st.st_mtime == read_stat.st_mtime && st.st_ctime == read_stat.st_ctime)
		return false;
	read_peppers();
	return true;
}

/* The pepper with this id, or NULL. */
static const Pepper *
find_pepper(const char *id)
{
	for (int i = 0; i < npeppers; i++)
		if (memcmp(peppers[i].id, id, APIKEY_PEPPER_ID_LEN) == 0)
			return &peppers[i];
	return NULL;
}

/* Raise the error of a pepper file that is set but unusable. */
static void
unusable_error(void)
{
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errmsg("the pepper of api key hashes is not available"),
			 errdetail("%s", problem),
			 errhint("A superuser points apikeys.pepper_file at a file owned by the server's user, mode 0600 or 0400, holding one pepper of 64 hex digits per line (such as the output of openssl rand -hex 32), the current one first, and reloads the configuration.")));
}

/*
 * Is a pepper file configured?  If it is, it must be usable (re-read if it
 * changed since it was found unusable), or this raises.
 */
static bool
peppers_configured(void)
{
	ensure_peppers();
	if (pepper_file == NULL || pepper_file[0] == '\0')
		return false;
	if (npeppers == 0 && !(reread_if_changed() && npeppers > 0))
		unusable_error();
	return true;
}

/*
 * The hash to store for a secret whose SHA-256 is digest: HMAC-SHA256
 * under the current pepper (pepper_id receives its id) when
 * apikeys.pepper_file is set, else the digest itself.  Returns the hash
 * version.  Raises, rather than fall back to SHA-256, when the file is set
 * but unusable.
 */
int16
apikey_stored_hash(const uint8 digest[APIKEY_DIGEST_LEN],
				   uint8 stored[APIKEY_DIGEST_LEN],
				   char pepper_id[APIKEY_PEPPER_ID_LEN])
{
	if (!peppers_configured())
	{
		memcpy(stored, digest, APIKEY_DIGEST_LEN);
		return APIKEY_HASH_SHA256;
	}
	pepper_mac(&peppers[0], digest, APIKEY_DIGEST_LEN, stored);
	memcpy(pepper_id, peppers[0].id, APIKEY_PEPPER_ID_LEN);
	return APIKEY_HASH_HMAC_SHA256;
}

/*
 * Does the secret whose SHA-256 is digest match a stored (version, pepper
 * id, hash)?  For a peppered hash whose pepper this backend does not have
 * (after reading the file again if it changed), returns false and sets
 * *missing; it never raises for that, so that the caller decides.
 */
bool
apikey_peppered_match(const char *pepper_id, const uint8 *stored,
					  const uint8 *digest, bool *missing)
{
	const Pepper *p;
	uint8		mac[APIKEY_DIGEST_LEN];
	bool		ok;

	ensure_peppers();
	p = find_pepper(pepper_id);
	if (p == NULL && reread_if_changed())
		p = find_pepper(pepper_id);
	if (p == NULL)
	{
		*missing = true;
		return false;
	}
	pepper_mac(p, digest, APIKEY_DIGEST_LEN, mac);
	ok = apikey_digest_equal(mac, stored, APIKEY_DIGEST_LEN);
	explicit_bzero(mac, sizeof(mac));
	return ok;
}

/*
 * Raise the error of a key whose hash needs a pepper this server does not
 * have.  Names the key, the pepper id and the setting; never a secret, a
 * hash or the file's path.
 */
void
apikey_pepper_missing_error(const char *key_id, const char *pepper_id)
{
	StringInfoData held;

	ensure_peppers();
	initStringInfo(&held);
	if (pepper_file == NULL || pepper_file[0] == '\0')
		appendStringInfoString(&held, "apikeys.pepper_file is not set.");
	else if (npeppers == 0)
		appendStringInfoString(&held, problem);
	else
	{
		appendStringInfoString(&held, "apikeys.pepper_file holds ");
		for (int i = 0; i < npeppers; i++)
			appendStringInfo(&held, "%s%.*s%s", i == 0 ? "" : ", ",
							 APIKEY_PEPPER_ID_LEN, peppers[i].id,
							 i == 0 ? " (current)" : "");
		appendStringInfoChar(&held, '.');
	}
	/* (raised while verifying: the statement, which may hold the token, is not logged) */
	ereport(ERROR,
			(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
			 errhidestmt(true),
			 errmsg("api key \"%.*s\" needs pepper %.*s, which apikeys.pepper_file does not hold",
					APIKEY_KEY_ID_LEN, key_id, APIKEY_PEPPER_ID_LEN, pepper_id),
			 errdetail("%s", held.data),
			 errhint("Put pepper %.*s back into the file named by apikeys.pepper_file, after the current pepper, and reload the configuration; apikeys.pepper_status() lists the peppers that keys still need.",
					 APIKEY_PEPPER_ID_LEN, pepper_id)));
}

/*
 * Does digest match a stored hash of the given version?  Raises the
 * missing-pepper error for key_id when the hash needs a pepper this server
 * does not have.
 */
bool
apikey_hash_matches(const char *key_id, int16 version, const char *pepper_id,
					const uint8 *stored, const uint8 *digest)
{
	bool		missing = false;
	bool		ok;

	if (version == APIKEY_HASH_SHA256)
		return apikey_digest_equal(stored, digest, APIKEY_DIGEST_LEN);
	if (version != APIKEY_HASH_HMAC_SHA256 || pepper_id == NULL)
		return false;
	ok = apikey_peppered_match(pepper_id, stored, digest, &missing);
	if (missing)
		apikey_pepper_missing_error(key_id, pepper_id);
	return ok;
}

/* A text pepper id of a catalog row, as 16 characters; NULL if malformed. */
const char *
apikey_pepper_id_of(text *t)
{
	if (t == NULL || VARSIZE_ANY_EXHDR(t) != APIKEY_PEPPER_ID_LEN)
		return NULL;
	return VARDATA_ANY(t);
}

/*
 * SQL function: apikeys_internal._hash_matches(key_id text, digest bytea,
 * hash_version int2, pepper_id text, hash bytea) returns boolean
 *
 * Does the secret whose SHA-256 is digest match the stored hash?  False for
 * a null or malformed hash; the missing-pepper error when the hash needs a
 * pepper the server does not have.
 */
PG_FUNCTION_INFO_V1(apikeys_hash_matches);
Datum
apikeys_hash_matches(PG_FUNCTION_ARGS)
{
	text	   *key_id;
	bytea	   *digest;
	bytea	   *hash;
	const char *pepper_id = NULL;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1) || PG_ARGISNULL(2) || PG_ARGISNULL(4))
		PG_RETURN_BOOL(false);
	key_id = PG_GETARG_TEXT_PP(0);
	digest = PG_GETARG_BYTEA_PP(1);
	hash = PG_GETARG_BYTEA_PP(4);
	if (VARSIZE_ANY_EXHDR(key_id) != APIKEY_KEY_ID_LEN ||
		VARSIZE_ANY_EXHDR(digest) != APIKEY_DIGEST_LEN ||
		VARSIZE_ANY_EXHDR(hash) != APIKEY_DIGEST_LEN)
		PG_RETURN_BOOL(false);
	if (!PG_ARGISNULL(3))
		pepper_id = apikey_pepper_id_of(PG_GETARG_TEXT_PP(3));
	PG_RETURN_BOOL(apikey_hash_matches(VARDATA_ANY(key_id), PG_GETARG_INT16(2),
									   pepper_id,
									   (const uint8 *) VARDATA_ANY(hash),
									   (const uint8 *) VARDATA_ANY(digest)));
}

/*
 * SQL function: apikeys_internal._pepper_ids() returns setof
 * record(position int4, pepper_id text)
 *
 * The ids of the peppers apikeys.pepper_file holds, in file order (1: the
 * current one); no rows when it is not set; the file's problem as an error.
 */
PG_FUNCTION_INFO_V1(apikeys_pepper_ids);
Datum
apikeys_pepper_ids(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;

	InitMaterializedSRF(fcinfo, 0);
	if (!peppers_configured())
		return (Datum) 0;
	for (int i = 0; i < npeppers; i++)
	{
		Datum		values[2];
		bool		nulls[2] = {false, false};

		values[0] = Int32GetDatum(i + 1);
		values[1] = PointerGetDatum(cstring_to_text_with_len(peppers[i].id, APIKEY_PEPPER_ID_LEN));
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
