/*
 * apikeys-scan.c
 *		A leak scanner for apikeys tokens: finds them in files, directory
 *		trees or standard input by prefix, format and checksum, offline.
 *
 * A token is <prefix>_<key_id>_<secret><checksum> (DESIGN section 1): a
 * prefix [a-z][a-z0-9_]{0,19}, 12 base62 characters of key id, 32 of
 * secret and 6 of checksum, the CRC-32 of everything before it as six
 * big-endian base62 digits.  The checksum is what makes the scan exact: a
 * string of the right shape is reported only if its checksum holds, so
 * random text, a token with one character changed and a made-up example
 * are not findings (a random candidate passes with odds of 1 in 62^6).
 *
 * The scan anchors on the underscore between key id and secret, the most
 * selective point of the grammar: memchr finds underscores, and each is
 * tested for "_" + 12 base62 before it and 38 base62 after it, followed by
 * something that is not base62.  Only then are the possible prefixes tried
 * (the prefix may itself contain "_", so each start within 20 characters
 * that is not preceded by a lowercase letter or digit is a candidate) and
 * the checksum computed.  Input is read in chunks, so files of any size and
 * endless pipes are scanned in constant memory.
 *
 * Output, one line per token: "<file>:<line>: key_id <id> (prefix <p>)".
 * A file name holding a control character, a double quote, a backslash, a
 * byte that is not UTF-8 or a Unicode format control (bidirectional marks)
 * is printed as git quotes paths: in double quotes, with C escapes (\n, \t,
 * \", \\) and octal for the other bytes, so no name can forge a line.  For
 * programs: -z prints four NUL-terminated fields per token (file, line,
 * key id, prefix; the name as it is), --json one JSON object per line.
 * The secret and the checksum are never printed.  Exit status: 0 when no
 * token was found, 1 when one was, 2 on an error (an unreadable path, a bad
 * option), as grep does; so it can gate a CI job or a pre-commit hook.
 *
 * Standalone C99 + POSIX: no PostgreSQL header, no library.
 */
#define _DEFAULT_SOURCE
#define _FILE_OFFSET_BITS 64

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define SCAN_VERSION	"0.2.0"

#define PREFIX_MAXLEN	20
#define KEY_ID_LEN		12
#define SECRET_LEN		32
#define CHECKSUM_LEN	6
/* from the second underscore to the end of the token */
#define AFTER_LEN		(1 + SECRET_LEN + CHECKSUM_LEN)
/* before the second underscore: boundary, prefix, "_", key id */
#define BEFORE_LEN		(1 + PREFIX_MAXLEN + 1 + KEY_ID_LEN)
#define TOKEN_MAXLEN	(PREFIX_MAXLEN + 1 + KEY_ID_LEN + AFTER_LEN)

#define CHUNK_SIZE		(1024 * 1024)

#define MAX_PREFIXES	64

static const char base62_alphabet[] =
"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* character classes, filled once */
static bool is_base62[256];
static bool is_lower_digit[256];	/* [a-z0-9]: a prefix cannot start after one */
static bool is_prefix_char[256];	/* [a-z0-9_] */
static uint32_t crc_table[256];

/* options */
typedef enum OutputFormat
{
	OUTPUT_TEXT,				/* FILE:LINE: key_id ID (prefix P), names quoted */
	OUTPUT_NUL,					/* -z: FILE\0LINE\0ID\0PREFIX\0, names raw */
	OUTPUT_JSON					/* --json: one object per line */
} OutputFormat;

static OutputFormat opt_format = OUTPUT_TEXT;
static bool opt_quiet = false;
static bool opt_recursive = true;
static bool opt_git = false;
static const char *opt_prefixes[MAX_PREFIXES];
static int	opt_nprefixes = 0;

/* outcome */
static unsigned long found = 0;
static bool had_error = false;

/* Fill the character classes and the CRC-32 table (polynomial 0xEDB88320). */
static void
init_tables(void)
{
	for (int c = 0; c < 256; c++)
	{
		uint32_t	crc = (uint32_t) c;

		for (int k = 0; k < 8; k++)
			crc = (crc & 1) ? (crc >> 1) ^ 0xEDB88320u : crc >> 1;
		crc_table[c] = crc;

		is_base62[c] = (c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z') ||
			(c >= 'a' && c <= 'z');
		is_lower_digit[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z');
		is_prefix_char[c] = is_lower_digit[c] || c == '_';
	}
}

/* The CRC-32 (ISO-HDLC, as zlib and PostgreSQL's "traditional" CRC) of s. */
static uint32_t
crc32_of(const unsigned char *s, size_t len)
{
	uint32_t	crc = 0xFFFFFFFFu;

	for (size_t i = 0; i < len; i++)
		crc = crc_table[(crc ^ s[i]) & 0xFF] ^ (crc >> 8);
	return crc ^ 0xFFFFFFFFu;
}

/* Does s[0..len) end in the right six base62 checksum digits? */
static bool
checksum_ok(const unsigned char *s, size_t len)
{
	uint32_t	v = crc32_of(s, len - CHECKSUM_LEN);

	for (int i = CHECKSUM_LEN - 1; i >= 0; i--)
	{
		if (s[len - CHECKSUM_LEN + i] != (unsigned char) base62_alphabet[v % 62])
			return false;
		v /= 62;
	}
	return true;
}

/* Is the prefix one of those asked for with --prefix (or none was)? */
static bool
prefix_wanted(const unsigned char *p, size_t len)
{
	if (opt_nprefixes == 0)
		return true;
	for (int i = 0; i < opt_nprefixes; i++)
	{
		if (strlen(opt_prefixes[i]) == len && memcmp(opt_prefixes[i], p, len) == 0)
			return true;
	}
	return false;
}

/*
 * Length of the UTF-8 sequence at s[0..len), and its code point in *cp; 0
 * if it is not well-formed (overlong, a surrogate, past U+10FFFF, cut off).
 */
static size_t
utf8_seq(const unsigned char *s, size_t len, uint32_t *cp)
{
	size_t		n;
	uint32_t	c;

	if (s[0] < 0x80)
	{
		*cp = s[0];
		return 1;
	}
	if (s[0] >= 0xC2 && s[0] <= 0xDF)
		n = 2, c = s[0] & 0x1F;
	else if (s[0] >= 0xE0 && s[0] <= 0xEF)
		n = 3, c = s[0] & 0x0F;
	else if (s[0] >= 0xF0 && s[0] <= 0xF4)
		n = 4, c = s[0] & 0x07;
	else
		return 0;
	if (len < n)
		return 0;
	for (size_t i = 1; i < n; i++)
	{
		if ((s[i] & 0xC0) != 0x80)
			return 0;
		c = (c << 6) | (s[i] & 0x3F);
	}
	if ((n == 3 && c < 0x800) || (n == 4 && (c < 0x10000 || c > 0x10FFFF)) ||
		(c >= 0xD800 && c <= 0xDFFF))
		return 0;
	*cp = c;
	return n;
}

/*
 * Is this code point one a terminal would not show as itself: C0 and C1
 * controls, DEL, and the format controls that reorder or hide text
 * (bidirectional embeddings, overrides and isolates, zero-width marks, line
 * and paragraph separators)?
 */
static bool
unsafe_code_point(uint32_t c)
{
	return c < 0x20 || (c >= 0x7F && c <= 0x9F) ||
		(c >= 0x200B && c <= 0x200F) || (c >= 0x2028 && c <= 0x202E) ||
		(c >= 0x2060 && c <= 0x2069) || c == 0xFEFF;
}

/* Does the name need quoting in the text output? */
static bool
name_needs_quotes(const unsigned char *s, size_t len)
{
	for (size_t i = 0; i < len;)
	{
		uint32_t	c;
		size_t		n = utf8_seq(s + i, len - i, &c);

		if (n == 0 || unsafe_code_point(c) || c == '"' || c == '\\')
			return true;
		i += n;
	}
	return false;
}

/*
 * Print a name for the text output: as it is, or, if it needs it, as git
 * quotes paths (core.quotePath): in double quotes, \a \b \t \n \v \f \r
 * \" \\ for those, three octal digits for every other byte of an unsafe
 * character or of a sequence that is not UTF-8.
 */
static void
print_name_text(FILE *out, const char *name)
{
	const unsigned char *s = (const unsigned char *) name;
	size_t		len = strlen(name);

	if (!name_needs_quotes(s, len))
	{
		fputs(name, out);
		return;
	}
	fputc('"', out);
	for (size_t i = 0; i < len;)
	{
		uint32_t	c;
		size_t		n = utf8_seq(s + i, len - i, &c);

		if (n == 0)
			n = 1;				/* a byte that is not UTF-8: octal */
		else if (!unsafe_code_point(c) && c != '"' && c != '\\')
		{
			fwrite(s + i, 1, n, out);
			i += n;
			continue;
		}
		for (size_t j = i; j < i + n; j++)
		{
			static const char esc[] = "\a\b\t\n\v\f\r";
			const char *e = s[j] != 0 ? strchr(esc, s[j]) : NULL;

			if (s[j] == '"' || s[j] == '\\')
				fprintf(out, "\\%c", s[j]);
			else if (e != NULL)
				fprintf(out, "\\%c", "abtnvfr"[e - esc]);
			else
				fprintf(out, "\\%03o", s[j]);
		}
		i += n;
	}
	fputc('"', out);
}

/* Append a JSON string (RFC 8259) to out: the name, bytes not UTF-8 as U+FFFD. */
static void
print_json_string(FILE *out, const char *str, bool *lossy)
{
	const unsigned char *s = (const unsigned char *) str;
	size_t		len = strlen(str);

	fputc('"', out);
	for (size_t i = 0; i < len;)
	{
		uint32_t	c;
		size_t		n = utf8_seq(s + i, len - i, &c);

		if (n == 0)
		{
			fputs("\\ufffd", out);
			*lossy = true;
			i++;
			continue;
		}
		if (c == '"' || c == '\\')
			fprintf(out, "\\%c", (int) c);
		else if (c == '\n')
			fputs("\\n", out);
		else if (c == '\t')
			fputs("\\t", out);
		else if (c == '\r')
			fputs("\\r", out);
		else if (unsafe_code_point(c))
			fprintf(out, "\\u%04x", (unsigned) c);
		else
			fwrite(s + i, 1, n, out);
		i += n;
	}
	fputc('"', out);
}

/* Append the bytes of str in base64 (RFC 4648) to out, in double quotes. */
static void
print_base64(FILE *out, const char *str)
{
	static const char b64[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	const unsigned char *s = (const unsigned char *) str;
	size_t		len = strlen(str);

	fputc('"', out);
	for (size_t i = 0; i < len; i += 3)
	{
		uint32_t	v = (uint32_t) s[i] << 16;

		if (i + 1 < len)
			v |= (uint32_t) s[i + 1] << 8;
		if (i + 2 < len)
			v |= s[i + 2];
		fputc(b64[(v >> 18) & 63], out);
		fputc(b64[(v >> 12) & 63], out);
		fputc(i + 1 < len ? b64[(v >> 6) & 63] : '=', out);
		fputc(i + 2 < len ? b64[v & 63] : '=', out);
	}
	fputc('"', out);
}

/* A path in an error message, quoted as in the text output. */
static void
print_error(const char *path, const char *msg)
{
	fputs("apikeys-scan: ", stderr);
	print_name_text(stderr, path);
	fprintf(stderr, ": %s\n", msg);
}

/* The state of one input being scanned. */
typedef struct Input
{
	const char *name;			/* as given; NULL for standard input */
	unsigned long line;			/* line number at counted_to */
	size_t		counted_to;		/* buffer offset up to which lines are counted */
} Input;

/* Report a token: file, line and key id; never the secret. */
static void
report(Input *in, const unsigned char *buf, size_t start,
	   const unsigned char *prefix, size_t prefix_len, const unsigned char *key_id)
{
	const unsigned char *p = buf + in->counted_to;
	const unsigned char *end = buf + start;

	/* count the lines up to the token */
	while (p < end && (p = memchr(p, '\n', end - p)) != NULL)
	{
		in->line++;
		p++;
	}
	in->counted_to = start;

	found++;
	if (opt_quiet)
		return;
	switch (opt_format)
	{
		case OUTPUT_TEXT:
			print_name_text(stdout, in->name ? in->name : "<stdin>");
			printf(":%lu: key_id %.*s (prefix %.*s)\n", in->line,
				   KEY_ID_LEN, (const char *) key_id,
				   (int) prefix_len, (const char *) prefix);
			break;
		case OUTPUT_NUL:
			/* a name cannot hold a NUL: four fields, each ended by one */
			fputs(in->name ? in->name : "-", stdout);
			printf("%c%lu%c%.*s%c%.*s%c", 0, in->line, 0,
				   KEY_ID_LEN, (const char *) key_id, 0,
				   (int) prefix_len, (const char *) prefix, 0);
			break;
		case OUTPUT_JSON:
			{
				bool		lossy = false;

				fputs("{\"file\": ", stdout);
				if (in->name == NULL)
					fputs("null", stdout);
				else
					print_json_string(stdout, in->name, &lossy);
				if (lossy)
				{
					/* the exact bytes of a name that is not UTF-8 */
					fputs(", \"file_base64\": ", stdout);
					print_base64(stdout, in->name);
				}
				printf(", \"line\": %lu, \"key_id\": \"%.*s\", \"prefix\": \"%.*s\"}\n",
					   in->line, KEY_ID_LEN, (const char *) key_id,
					   (int) prefix_len, (const char *) prefix);
			}
			break;
	}
}

/*
 * Test the underscore at buf[u] as the one between key id and secret.
 * buf[u - BEFORE_LEN .. u + AFTER_LEN] may be read where it exists; buf[len]
 * is the end of the input or not yet read (the caller makes sure a token
 * ending before len is followed by its next character).  Returns the end of
 * the token found (to skip past it), or 0.
 */
static size_t
try_candidate(Input *in, const unsigned char *buf, size_t len, size_t u)
{
	size_t		end = u + AFTER_LEN;	/* one past the checksum */
	size_t		k;

	/* "_" key_id before, secret and checksum after, then a non-base62 */
	if (u < 1 + KEY_ID_LEN + 1 || end > len)
		return 0;
	if (end < len && is_base62[buf[end]])
		return 0;
	if (buf[u - KEY_ID_LEN - 1] != '_')
		return 0;
	for (k = u + 1; k < end; k++)
		if (!is_base62[buf[k]])
			return 0;
	for (k = u - KEY_ID_LEN; k < u; k++)
		if (!is_base62[buf[k]])
			return 0;

	/*
	 * The prefix ends before the first underscore.  Try every start within
	 * PREFIX_MAXLEN characters of [a-z0-9_], longest first, that begins with
	 * a lowercase letter and is not preceded by a lowercase letter or digit.
	 * The checksum decides which, if any, is the token.
	 */
	{
		size_t		first_us = u - KEY_ID_LEN - 1;
		size_t		lo = first_us;

		while (lo > 0 && first_us - lo < PREFIX_MAXLEN && is_prefix_char[buf[lo - 1]])
			lo--;
		for (size_t s = lo; s < first_us; s++)
		{
			if (!(buf[s] >= 'a' && buf[s] <= 'z'))
				continue;
			if (s > 0 && is_lower_digit[buf[s - 1]])
				continue;
			if (checksum_ok(buf + s, end - s))
			{
				if (prefix_wanted(buf + s, first_us - s))
					report(in, buf, s, buf + s, first_us - s, buf + first_us + 1);
				return end;
			}
		}
	}
	return 0;
}

/*
 * Scan one input, read from fd, in chunks that overlap by the width of a
 * token, so that a token across a chunk boundary is seen exactly once.
 * Returns false on a read error.
 */
static bool
scan_fd(int fd, const char *name)
{
	static unsigned char *buf = NULL;
	size_t		have = 0;		/* bytes in buf */
	size_t		next_u = 0;		/* first underscore position not yet tried */
	bool		eof = false;
	Input		in = {name, 1, 0};

	if (buf == NULL && (buf = malloc(CHUNK_SIZE + TOKEN_MAXLEN + 1)) == NULL)
	{
		fprintf(stderr, "apikeys-scan: out of memory\n");
		exit(2);
	}

	while (!eof)
	{
		size_t		limit;
		ssize_t		n;

		/* fill the buffer */
		while (have < CHUNK_SIZE + TOKEN_MAXLEN && !eof)
		{
			n = read(fd, buf + have, CHUNK_SIZE + TOKEN_MAXLEN - have);
			if (n < 0)
			{
				if (errno == EINTR)
					continue;
				print_error(name ? name : "<stdin>", strerror(errno));
				return false;
			}
			if (n == 0)
				eof = true;
			have += n;
		}

		/*
		 * Underscores before limit are decided with what is in the buffer: a
		 * token's remaining characters and the one after it are there (or
		 * the input ends).
		 */
		limit = eof ? have : have - AFTER_LEN - 1;
		while (next_u < limit)
		{
			const unsigned char *p = memchr(buf + next_u, '_', limit - next_u);
			size_t		u,
						end;

			if (p == NULL)
			{
				next_u = limit;
				break;
			}
			u = p - buf;
			end = try_candidate(&in, buf, have, u);
			next_u = end ? end : u + 1;
		}
		if (eof)
			break;

		/*
		 * Keep what a later underscore may need to look back at (the prefix,
		 * the key id and the character before them), counting the lines of
		 * what is dropped.
		 */
		{
			size_t		from = next_u > BEFORE_LEN ? next_u - BEFORE_LEN : 0;
			const unsigned char *p = buf + in.counted_to;
			const unsigned char *e = buf + from;

			if (in.counted_to < from)
			{
				while (p < e && (p = memchr(p, '\n', e - p)) != NULL)
				{
					in.line++;
					p++;
				}
				in.counted_to = from;
			}
			memmove(buf, buf + from, have - from);
			have -= from;
			next_u -= from;
			in.counted_to -= from;
		}
	}
	return true;
}

/* Scan a regular file (or anything open() reads) by name. */
static void
scan_file(const char *path)
{
	int			fd = open(path, O_RDONLY);

	if (fd < 0)
	{
		print_error(path, strerror(errno));
		had_error = true;
		return;
	}
	if (!scan_fd(fd, path))
		had_error = true;
	close(fd);
}

static void scan_path(const char *path, bool top);

/* Scan every entry of a directory; symbolic links inside it are not followed. */
static void
scan_dir(const char *path)
{
	DIR		   *d = opendir(path);
	struct dirent *e;
	size_t		plen = strlen(path);

	if (d == NULL)
	{
		print_error(path, strerror(errno));
		had_error = true;
		return;
	}
	while ((errno = 0, e = readdir(d)) != NULL)
	{
		char	   *child;
		size_t		nlen = strlen(e->d_name);

		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (!opt_git && strcmp(e->d_name, ".git") == 0)
			continue;
		child = malloc(plen + nlen + 2);
		if (child == NULL)
		{
			fprintf(stderr, "apikeys-scan: out of memory\n");
			exit(2);
		}
		memcpy(child, path, plen);
		if (plen > 0 && path[plen - 1] == '/')
			memcpy(child + plen, e->d_name, nlen + 1);
		else
		{
			child[plen] = '/';
			memcpy(child + plen + 1, e->d_name, nlen + 1);
		}
		scan_path(child, false);
		free(child);
	}
	if (errno != 0)
	{
		print_error(path, strerror(errno));
		had_error = true;
	}
	closedir(d);
}

/*
 * Scan a path: a file, or a directory tree.  Paths named on the command
 * line are followed if they are symbolic links; links met while walking a
 * tree are skipped, so a link cannot loop or leave the tree.  Sockets,
 * FIFOs and devices inside a tree are skipped too.
 */
static void
scan_path(const char *path, bool top)
{
	struct stat st;

	if ((top ? stat(path, &st) : lstat(path, &st)) != 0)
	{
		print_error(path, strerror(errno));
		had_error = true;
		return;
	}
	if (S_ISDIR(st.st_mode))
	{
		if (!top && !opt_recursive)
			return;
		scan_dir(path);
	}
	else if (S_ISREG(st.st_mode) || top)
		scan_file(path);
}

static void
usage(FILE *out)
{
	fprintf(out,
			"Usage: apikeys-scan [OPTION]... [PATH]...\n"
			"Find apikeys tokens in files, directory trees or standard input (no PATH,\n"
			"or -), by prefix, format and checksum, without a database.\n"
			"\n"
			"Prints \"FILE:LINE: key_id ID (prefix PREFIX)\" for each token, never the\n"
			"secret; a FILE holding control characters, \", \\ or bytes that are not\n"
			"UTF-8 is printed in double quotes with C escapes, as git quotes paths.\n"
			"Exit status: 0 no token found, 1 tokens found, 2 error.\n"
			"\n"
			"  -p, --prefix=PREFIX   report only tokens with this prefix (repeatable)\n"
			"  -q, --quiet           print nothing; the exit status tells\n"
			"  -z, --null            for programs: per token four fields, each ended by\n"
			"                        a NUL byte: FILE (as it is), LINE, ID, PREFIX\n"
			"      --json            for programs: per token one JSON object per line,\n"
			"                        {\"file\", \"line\", \"key_id\", \"prefix\"} (file null\n"
			"                        for standard input; \"file_base64\" too when the\n"
			"                        name is not UTF-8)\n"
			"      --no-recursive    do not descend into directories below those named\n"
			"      --include-git     scan .git directories too (skipped by default)\n"
			"  -h, --help            show this help and exit\n"
			"  -V, --version         show the version and exit\n");
}

/* Is s a valid token prefix, [a-z][a-z0-9_]{0,19}? */
static bool
valid_prefix(const char *s)
{
	size_t		len = strlen(s);

	if (len < 1 || len > PREFIX_MAXLEN || !(s[0] >= 'a' && s[0] <= 'z'))
		return false;
	for (size_t i = 1; i < len; i++)
		if (!is_prefix_char[(unsigned char) s[i]])
			return false;
	return true;
}

static void
add_prefix(const char *p)
{
	if (!valid_prefix(p))
	{
		fprintf(stderr, "apikeys-scan: invalid prefix \"%s\": a prefix is a lowercase letter followed by at most %d lowercase letters, digits or underscores\n",
				p, PREFIX_MAXLEN - 1);
		exit(2);
	}
	if (opt_nprefixes == MAX_PREFIXES)
	{
		fprintf(stderr, "apikeys-scan: too many --prefix options (at most %d)\n", MAX_PREFIXES);
		exit(2);
	}
	opt_prefixes[opt_nprefixes++] = p;
}

int
main(int argc, char **argv)
{
	int			i;
	int			npaths = 0;
	bool		options_done = false;

	init_tables();

	/* options first pass: anything starting with - before "--" */
	for (i = 1; i < argc; i++)
	{
		const char *a = argv[i];

		if (options_done || a[0] != '-' || strcmp(a, "-") == 0)
		{
			npaths++;
			continue;
		}
		if (strcmp(a, "--") == 0)
			options_done = true;
		else if (strcmp(a, "-q") == 0 || strcmp(a, "--quiet") == 0)
			opt_quiet = true;
		else if (strcmp(a, "-z") == 0 || strcmp(a, "--null") == 0 ||
				 strcmp(a, "--json") == 0)
		{
			OutputFormat f = strcmp(a, "--json") == 0 ? OUTPUT_JSON : OUTPUT_NUL;

			if (opt_format != OUTPUT_TEXT && opt_format != f)
			{
				fprintf(stderr, "apikeys-scan: -z and --json cannot be combined\n");
				return 2;
			}
			opt_format = f;
		}
		else if (strcmp(a, "--no-recursive") == 0)
			opt_recursive = false;
		else if (strcmp(a, "--include-git") == 0)
			opt_git = true;
		else if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)
		{
			usage(stdout);
			return 0;
		}
		else if (strcmp(a, "-V") == 0 || strcmp(a, "--version") == 0)
		{
			printf("apikeys-scan %s\n", SCAN_VERSION);
			return 0;
		}
		else if (strcmp(a, "-p") == 0 || strcmp(a, "--prefix") == 0)
		{
			if (i + 1 >= argc)
			{
				fprintf(stderr, "apikeys-scan: option %s needs a value\n", a);
				return 2;
			}
			add_prefix(argv[++i]);
		}
		else if (strncmp(a, "--prefix=", 9) == 0)
			add_prefix(a + 9);
		else if (strncmp(a, "-p", 2) == 0)
			add_prefix(a + 2);
		else
		{
			fprintf(stderr, "apikeys-scan: unknown option \"%s\"\n", a);
			usage(stderr);
			return 2;
		}
	}

	if (npaths == 0)
	{
		if (!scan_fd(STDIN_FILENO, NULL))
			had_error = true;
	}
	else
	{
		options_done = false;
		for (i = 1; i < argc; i++)
		{
			const char *a = argv[i];

			if (!options_done && a[0] == '-' && strcmp(a, "-") != 0)
			{
				if (strcmp(a, "--") == 0)
					options_done = true;
				else if (strcmp(a, "-p") == 0 || strcmp(a, "--prefix") == 0)
					i++;
				continue;
			}
			if (strcmp(a, "-") == 0)
			{
				if (!scan_fd(STDIN_FILENO, NULL))
					had_error = true;
			}
			else
				scan_path(a, true);
		}
	}

	if (fflush(stdout) != 0 || ferror(stdout))
	{
		fprintf(stderr, "apikeys-scan: error writing output: %s\n", strerror(errno));
		return 2;
	}
	if (had_error)
		return 2;
	return found > 0 ? 1 : 0;
}
