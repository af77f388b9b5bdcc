/*
 * token.c
 *		The token format: base62 alphabet, random generation, CRC-32
 *		checksum, in-place parsing, SHA-256 digest and constant-time compare.
 *
 * A token is <prefix>_<key_id>_<secret><checksum>.  The checksum is the
 * CRC-32 of everything before it, written as six base62 digits, so a typo
 * or a random string is rejected before any table is touched.
 */
#include "postgres.h"

#include "common/cryptohash.h"
#include "port.h"
#include "utils/pg_crc.h"

#include "apikeys.h"
#include "compat.h"

static const char base62_alphabet[] =
"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* Is c one of the 62 base62 characters? */
static inline bool
is_base62(char c)
{
	return (c >= '0' && c <= '9') ||
		(c >= 'A' && c <= 'Z') ||
		(c >= 'a' && c <= 'z');
}

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

/* Write the CRC-32 of s[0..len) as six big-endian base62 digits. */
void
apikey_checksum(const char *s, size_t len, char out[APIKEY_CHECKSUM_LEN])
{
	pg_crc32	crc;
	uint64		v;

	INIT_TRADITIONAL_CRC32(crc);
	COMP_TRADITIONAL_CRC32(crc, s, len);
	FIN_TRADITIONAL_CRC32(crc);

	v = crc;
	for (int i = APIKEY_CHECKSUM_LEN - 1; i >= 0; i--)
	{
		out[i] = base62_alphabet[v % 62];
		v /= 62;
	}
}

/*
 * Split s[0..len) into its parts in place and check grammar and checksum.
 * Returns false for anything that is not a well-formed token; never raises
 * and never allocates.
 */
bool
apikey_parse(const char *s, size_t len, ApiKeyToken *tok)
{
	int			prefix_len;
	const char *tail;
	char		sum[APIKEY_CHECKSUM_LEN];

	if (len < APIKEY_TOKEN_MINLEN || len > APIKEY_TOKEN_MAXLEN)
		return false;

	/* Parse from the right: the tail has a fixed length. */
	prefix_len = (int) (len - APIKEY_TAIL_LEN);
	tail = s + prefix_len;
	if (tail[0] != '_' || tail[1 + APIKEY_KEY_ID_LEN] != '_')
		return false;
	if (!apikey_prefix_is_valid(s, prefix_len))
		return false;
	for (int i = 1; i < APIKEY_TAIL_LEN; i++)
	{
		if (i == 1 + APIKEY_KEY_ID_LEN)
			continue;
		if (!is_base62(tail[i]))
			return false;
	}

	apikey_checksum(s, len - APIKEY_CHECKSUM_LEN, sum);
	if (memcmp(sum, s + len - APIKEY_CHECKSUM_LEN, APIKEY_CHECKSUM_LEN) != 0)
		return false;

	tok->prefix = s;
	tok->prefix_len = prefix_len;
	tok->key_id = tail + 1;
	tok->secret = tail + 2 + APIKEY_KEY_ID_LEN;
	return true;
}

/* SHA-256 of the secret, through PostgreSQL's cryptohash layer. */
void
apikey_digest(const char *secret, size_t len, uint8 out[APIKEY_DIGEST_LEN])
{
	pg_cryptohash_ctx *ctx = pg_cryptohash_create(PG_SHA256);

	if (ctx == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OUT_OF_MEMORY),
				 errmsg("out of memory")));
	if (pg_cryptohash_init(ctx) < 0 ||
		pg_cryptohash_update(ctx, (const uint8 *) secret, len) < 0 ||
		pg_cryptohash_final(ctx, out, APIKEY_DIGEST_LEN) < 0)
	{
		const char *why = APIKEYS_CRYPTOHASH_ERROR(ctx);

		pg_cryptohash_free(ctx);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not compute sha-256 digest: %s", why)));
	}
	pg_cryptohash_free(ctx);
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

/* Compare two digests in time independent of where they differ. */
bool
apikey_digest_equal(const uint8 *a, const uint8 *b, size_t len)
{
	volatile uint8 diff = 0;

	for (size_t i = 0; i < len; i++)
		diff |= a[i] ^ b[i];
	return diff == 0;
}
