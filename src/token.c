/*
 * token.c
 *		The token format: base62 alphabet, random generation, CRC-32
 *		checksum, one-pass in-place parsing, SHA-256 digest and constant-time
 *		compare.
 *
 * A token is <prefix>_<key_id>_<secret><checksum>.  The checksum is the
 * CRC-32 of everything before it, written as six base62 digits, so a typo
 * or a random string is rejected before any table is touched.
 */
#include "postgres.h"

#ifdef USE_OPENSSL
/* the low-level SHA-256 routine is deprecated, not gone, in OpenSSL 3 */
#define OPENSSL_SUPPRESS_DEPRECATED 1
#include <openssl/evp.h>
#include <openssl/sha.h>
#endif

#include "common/cryptohash.h"
#include "port.h"
#include "utils/memutils.h"

#include "apikeys.h"
#include "compat.h"

static const char base62_alphabet[] =
"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* Is s[0..len) a valid prefix: [a-z][a-z0-9_]{0,19}? */
bool
apikey_prefix_is_valid(const char *s, int len)
{
	if (len < 1 || len > APIKEY_PREFIX_MAXLEN)
		return false;
	if (s[0] < 'a' || s[0] > 'z')
		return false;
	for (int i = 1; i < len; i++)
	{
		char		c = s[i];

		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_'))
			return false;
	}
	return true;
}

/* Fill dst with n uniformly random base62 characters from pg_strong_random. */
void
apikey_random_base62(char *dst, int n)
{
	uint8		buf[64];
	int			filled = 0;

	while (filled < n)
	{
		if (!pg_strong_random(buf, sizeof(buf)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random bytes for an api key")));
		for (int i = 0; i < (int) sizeof(buf) && filled < n; i++)
		{
			/* 248 = 4 * 62: reject the top 8 values to stay uniform */
			if (buf[i] < 248)
				dst[filled++] = base62_alphabet[buf[i] % 62];
		}
	}
	explicit_bzero(buf, sizeof(buf));
}

/*
 * CRC-32 (the "traditional" polynomial of zlib and PostgreSQL's
 * COMP_TRADITIONAL_CRC32), eight bytes at a time ("slicing-by-8"): the
 * byte-at-a-time loop is a chain of dependent table lookups, about four
 * times slower on a token.  The tables are built once per backend.
 */
static uint32 crc_tables[8][256];
static bool crc_tables_ready = false;

/* Build the slicing-by-8 tables from the reflected polynomial. */
static void
crc_tables_init(void)
{
	for (int i = 0; i < 256; i++)
	{
		uint32		c = (uint32) i;

		for (int k = 0; k < 8; k++)
			c = (c & 1) ? (c >> 1) ^ 0xEDB88320 : c >> 1;
		crc_tables[0][i] = c;
	}
	for (int i = 0; i < 256; i++)
		for (int t = 1; t < 8; t++)
			crc_tables[t][i] = (crc_tables[t - 1][i] >> 8) ^
				crc_tables[0][crc_tables[t - 1][i] & 0xFF];
	crc_tables_ready = true;
}

/* Continue a (pre-inverted) CRC-32 over one byte. */
static inline uint32
crc_byte(uint32 crc, uint8 b)
{
	return crc_tables[0][(crc ^ b) & 0xFF] ^ (crc >> 8);
}

/* Continue a (pre-inverted) CRC-32 over eight bytes. */
static inline uint32
crc_8bytes(uint32 crc, const uint8 *p)
{
	uint32		lo = crc ^ ((uint32) p[0] | (uint32) p[1] << 8 |
							(uint32) p[2] << 16 | (uint32) p[3] << 24);
	uint32		hi = (uint32) p[4] | (uint32) p[5] << 8 |
		(uint32) p[6] << 16 | (uint32) p[7] << 24;

	return crc_tables[7][lo & 0xFF] ^ crc_tables[6][(lo >> 8) & 0xFF] ^
		crc_tables[5][(lo >> 16) & 0xFF] ^ crc_tables[4][lo >> 24] ^
		crc_tables[3][hi & 0xFF] ^ crc_tables[2][(hi >> 8) & 0xFF] ^
		crc_tables[1][(hi >> 16) & 0xFF] ^ crc_tables[0][hi >> 24];
}

/* CRC-32 of s[0..len). */
static uint32
crc32_of(const char *s, size_t len)
{
	const uint8 *p = (const uint8 *) s;
	uint32		crc = 0xFFFFFFFF;

	if (unlikely(!crc_tables_ready))
		crc_tables_init();
	for (; len >= 8; p += 8, len -= 8)
		crc = crc_8bytes(crc, p);
	for (; len > 0; p++, len--)
		crc = crc_byte(crc, *p);
	return crc ^ 0xFFFFFFFF;
}

/* Write the CRC-32 of s[0..len) as six big-endian base62 digits. */
void
apikey_checksum(const char *s, size_t len, char out[APIKEY_CHECKSUM_LEN])
{
	uint64		v = crc32_of(s, len);

	for (int i = APIKEY_CHECKSUM_LEN - 1; i >= 0; i--)
	{
		out[i] = base62_alphabet[v % 62];
		v /= 62;
	}
}

/*
 * Character classes for the one-pass parser: what each byte may be, and
 * its value as a base62 digit.
 */
#define CC_BASE62	0x01		/* [0-9A-Za-z] */
#define CC_PREFIX	0x02		/* [a-z0-9_]: inside a prefix */
#define CC_LOWER	0x04		/* [a-z]: may start a prefix */

static uint8 char_class[256];
static uint8 base62_value[256];
static bool char_class_ready = false;

/* Fill the class and digit tables. */
static void
char_class_init(void)
{
	for (int i = 0; i < 62; i++)
	{
		uint8		c = (uint8) base62_alphabet[i];

		char_class[c] |= CC_BASE62;
		base62_value[c] = (uint8) i;
		if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9'))
			char_class[c] |= CC_PREFIX;
		if (c >= 'a' && c <= 'z')
			char_class[c] |= CC_LOWER;
	}
	char_class['_'] |= CC_PREFIX;
	char_class_ready = true;
}

/*
 * Split s[0..len) into its parts in place and check grammar and checksum,
 * in one pass over the token: each byte is checked against the class its
 * position requires (a mask per position, built from the prefix length)
 * and fed to the CRC, eight bytes at a time.  Returns false for anything
 * that is not a well-formed token; never raises and never allocates.
 */
bool
apikey_parse(const char *s, size_t len, ApiKeyToken *tok)
{
	const uint8 *p = (const uint8 *) s;
	uint8		need[APIKEY_TOKEN_MAXLEN];
	int			prefix_len;
	int			body_len;
	int			sep1,
				sep2;
	uint32		crc = 0xFFFFFFFF;
	uint8		bad = 0;
	uint64		sum = 0;
	int			i;

	if (len < APIKEY_TOKEN_MINLEN || len > APIKEY_TOKEN_MAXLEN)
		return false;
	if (unlikely(!char_class_ready))
		char_class_init();
	if (unlikely(!crc_tables_ready))
		crc_tables_init();

	/* Parse from the right: the tail has a fixed length. */
	prefix_len = (int) (len - APIKEY_TAIL_LEN);
	sep1 = prefix_len;
	sep2 = prefix_len + 1 + APIKEY_KEY_ID_LEN;
	body_len = (int) len - APIKEY_CHECKSUM_LEN;
	if (p[sep1] != '_' || p[sep2] != '_')
		return false;

	/*
	 * What each position needs: a lowercase letter first, prefix characters
	 * up to the first separator, base62 digits after it; the separators
	 * were checked above.
	 */
	memset(need, CC_BASE62, len);
	memset(need, CC_PREFIX, sep1);
	need[0] = CC_LOWER;
	need[sep1] = 0;
	need[sep2] = 0;

	for (i = 0; i + 8 <= body_len; i += 8)
	{
		for (int j = i; j < i + 8; j++)
			bad |= (char_class[p[j]] & need[j]) ^ need[j];
		crc = crc_8bytes(crc, p + i);
	}
	for (; i < body_len; i++)
	{
		bad |= (char_class[p[i]] & need[i]) ^ need[i];
		crc = crc_byte(crc, p[i]);
	}
	crc ^= 0xFFFFFFFF;

	/* The checksum: six big-endian base62 digits of the CRC. */
	for (; i < (int) len; i++)
	{
		bad |= (char_class[p[i]] & need[i]) ^ need[i];
		sum = sum * 62 + base62_value[p[i]];
	}
	if (bad != 0 || sum != crc)
		return false;

	tok->prefix = s;
	tok->prefix_len = prefix_len;
	tok->key_id = s + sep1 + 1;
	tok->secret = s + sep2 + 1;
	return true;
}

/*
 * SHA-256 of the secret.  With OpenSSL (every supported build), the
 * low-level routine: no implementation to fetch and no context to allocate
 * per call, which is most of what the EVP layer behind pg_cryptohash costs
 * on a 32-byte input.  Where OpenSSL no longer offers it, the EVP digest is
 * fetched once per backend and its context reused; without OpenSSL,
 * PostgreSQL's own implementation, with one context per backend.
 */
#if defined(USE_OPENSSL) && !defined(OPENSSL_NO_DEPRECATED_3_0)

void
apikey_digest(const char *secret, size_t len, uint8 out[APIKEY_DIGEST_LEN])
{
	SHA256_CTX	ctx;

	if (SHA256_Init(&ctx) != 1 ||
		SHA256_Update(&ctx, secret, len) != 1 ||
		SHA256_Final(out, &ctx) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute sha-256 digest")));
	explicit_bzero(&ctx, sizeof(ctx));
}

#elif defined(USE_OPENSSL)

void
apikey_digest(const char *secret, size_t len, uint8 out[APIKEY_DIGEST_LEN])
{
	static EVP_MD *md = NULL;
	static EVP_MD_CTX *ctx = NULL;
	unsigned int outlen;

	if (md == NULL)
		md = EVP_MD_fetch(NULL, "SHA256", NULL);
	if (ctx == NULL)
		ctx = EVP_MD_CTX_new();
	if (md == NULL || ctx == NULL ||
		EVP_DigestInit_ex2(ctx, md, NULL) != 1 ||
		EVP_DigestUpdate(ctx, secret, len) != 1 ||
		EVP_DigestFinal_ex(ctx, out, &outlen) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute sha-256 digest")));
}

#else

void
apikey_digest(const char *secret, size_t len, uint8 out[APIKEY_DIGEST_LEN])
{
	static pg_cryptohash_ctx *ctx = NULL;

	/* without OpenSSL the context is plain memory: keep it for good */
	if (ctx == NULL)
	{
		MemoryContext old = MemoryContextSwitchTo(TopMemoryContext);

		ctx = pg_cryptohash_create(PG_SHA256);
		MemoryContextSwitchTo(old);
		if (ctx == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_OUT_OF_MEMORY),
					 errmsg("out of memory")));
	}
	if (pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) secret, len) < 0 ||
		pg_cryptohash_final(ctx, out, APIKEY_DIGEST_LEN) < 0)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute sha-256 digest: %s",
						APIKEYS_CRYPTOHASH_ERROR(ctx))));
}

#endif

/*
 * Mint a token for prefix and key_id (a random key id when key_id is NULL):
 * <prefix>_<key_id>_<secret><checksum>, with a fresh secret from
 * pg_strong_random().  Fills key_id_out, token (*token_len bytes, not
 * terminated) and the secret's digest.  The caller wipes token and digest.
 */
void
apikey_mint_token(const char *prefix, int prefix_len, const char *key_id,
				  char key_id_out[APIKEY_KEY_ID_LEN],
				  char token[APIKEY_TOKEN_MAXLEN], int *token_len,
				  uint8 digest[APIKEY_DIGEST_LEN])
{
	int			len = 0;

	Assert(prefix_len >= 1 && prefix_len <= APIKEY_PREFIX_MAXLEN);
	if (key_id == NULL)
		apikey_random_base62(key_id_out, APIKEY_KEY_ID_LEN);
	else
		memcpy(key_id_out, key_id, APIKEY_KEY_ID_LEN);

	memcpy(token, prefix, prefix_len);
	len += prefix_len;
	token[len++] = '_';
	memcpy(token + len, key_id_out, APIKEY_KEY_ID_LEN);
	len += APIKEY_KEY_ID_LEN;
	token[len++] = '_';
	apikey_random_base62(token + len, APIKEY_SECRET_LEN);
	apikey_digest(token + len, APIKEY_SECRET_LEN, digest);
	len += APIKEY_SECRET_LEN;
	apikey_checksum(token, len, token + len);
	len += APIKEY_CHECKSUM_LEN;
	*token_len = len;
}

/*
 * XOR the digest with a random mask drawn once per backend.  The apikey type
 * keeps its digest masked, so a value stored in a table or a catalog is
 * useless to any other session: only the backend that parsed the token can
 * unmask it (applying the mask again does).
 */
void
apikey_session_mask(uint8 digest[APIKEY_DIGEST_LEN])
{
	static uint8 mask[APIKEY_DIGEST_LEN];
	static bool mask_ready = false;

	if (!mask_ready)
	{
		if (!pg_strong_random(mask, sizeof(mask)))
			ereport(ERROR,
					(errcode(ERRCODE_INTERNAL_ERROR),
					 errmsg("could not generate random bytes for an api key")));
		mask_ready = true;
	}
	for (int i = 0; i < APIKEY_DIGEST_LEN; i++)
		digest[i] ^= mask[i];
}

/*
 * Compare two digests in time independent of where they differ: eight bytes
 * at a time, every word always compared, one branch on the result.
 */
bool
apikey_digest_equal(const uint8 *a, const uint8 *b, size_t len)
{
	uint64		diff = 0;
	size_t		i = 0;

	for (; i + 8 <= len; i += 8)
	{
		uint64		wa,
					wb;

		memcpy(&wa, a + i, 8);
		memcpy(&wb, b + i, 8);
		diff |= wa ^ wb;
	}
	for (; i < len; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}
