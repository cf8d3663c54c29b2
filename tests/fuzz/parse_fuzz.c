/*
 * The tar shim's archive parser, fuzzed in one process (built with -fsanitize=address,undefined by
 * fuzz_tar_shim.py): parse_fuzz SECONDS SEED ARCHIVE... mutates the (uncompressed) archives given,
 * keeps the header checksums right, and hands each result to parse() in a buffer of exactly its
 * size, so that a read past the end is caught. Prints how many cases ran; a sanitizer stops it.
 */
#define main tar_shim_main
#include "../../ext/tar_shim.c"
#undef main

static unsigned long long state;

static unsigned rnd(void)
{
	state ^= state << 13;
	state ^= state >> 7;
	state ^= state << 17;
	return (unsigned)(state >> 11);
}

/* what parsers trip on, for the byte put somewhere in a header */
static const unsigned char BYTES[] = { '0', '1', '5', '7', '8', ' ', 0, '/', '.', 0xff, 0x80, 'x', '2', '3', '4', '6' };
/* the fields of a header: offset, width */
static const int FIELDS[][2] = { { 0, 100 }, { 100, 8 }, { 108, 8 }, { 116, 8 }, { 124, 12 }, { 136, 12 },
				 { 156, 1 }, { 157, 100 }, { 257, 8 }, { 265, 32 }, { 297, 32 }, { 329, 8 },
				 { 337, 8 }, { 345, 155 } };

static void fix_checksums(unsigned char *ar, size_t len)
{
	for (size_t off = 0; off + BLOCK <= len; off += BLOCK) {
		unsigned char *h = ar + off;
		unsigned s = 0;

		if (memcmp(h + 257, "ustar", 5))
			continue; /* not a header (data, or a magic the mutation broke) */
		memset(h + 148, ' ', 8);
		for (int i = 0; i < BLOCK; i++)
			s += h[i];
		snprintf((char *)h + 148, 8, "%06o", s);
		h[155] = ' ';
	}
}

static size_t mutate(unsigned char *ar, size_t len, size_t cap)
{
	int rounds = 1 + rnd() % 4;

	while (rounds--) {
		size_t blocks = len / BLOCK;
		unsigned kind = rnd() % 10;

		if (!blocks)
			break;
		size_t hdr = (rnd() % blocks) * BLOCK;
		if (kind < 5) { /* one field: a byte, or a run of digits */
			const int *f = FIELDS[rnd() % (sizeof(FIELDS) / sizeof(FIELDS[0]))];
			int at = f[0] + rnd() % f[1], n = 1 + rnd() % 12;
			for (int i = 0; i < n && at + i < f[0] + f[1]; i++)
				ar[hdr + at + i] = kind < 3 ? BYTES[rnd() % sizeof(BYTES)] : '0' + rnd() % 8;
		} else if (kind < 7) { /* any byte */
			ar[rnd() % len] = rnd();
		} else if (kind < 8 && len + BLOCK <= cap) { /* a block repeated */
			memmove(ar + hdr + BLOCK, ar + hdr, len - hdr);
			len += BLOCK;
		} else if (kind < 9) { /* cut short */
			len = rnd() % (len + 1);
		} else { /* a block dropped */
			memmove(ar + hdr, ar + hdr + BLOCK, len - hdr - BLOCK);
			len -= BLOCK;
		}
	}
	if (rnd() % 8)
		fix_checksums(ar, len);
	return len;
}

int main(int argc, char **argv)
{
	static struct entry es[MAX_ENTRIES];
	unsigned char *seeds[64];
	size_t sizes[64], cap = 0;
	int nseeds = 0;
	unsigned long long cases = 0, parsed = 0;
	time_t end;

	if (argc < 4)
		return 2;
	end = time(NULL) + atoi(argv[1]);
	state = strtoull(argv[2], NULL, 10) | 1;
	for (int i = 3; i < argc && nseeds < 64; i++) {
		FILE *f = fopen(argv[i], "rb");
		if (!f)
			return 2;
		seeds[nseeds] = malloc(MAX_GZ_INPUT);
		sizes[nseeds] = fread(seeds[nseeds], 1, MAX_GZ_INPUT, f);
		fclose(f);
		if (sizes[nseeds] > cap)
			cap = sizes[nseeds];
		nseeds++;
	}
	cap += 8 * BLOCK;
	while (time(NULL) < end) {
		for (int k = 0; k < 1000; k++) {
			int s = rnd() % nseeds;
			unsigned char *work = malloc(cap), *exact;
			size_t len;
			int n;

			memcpy(work, seeds[s], sizes[s]);
			len = mutate(work, sizes[s], cap);
			exact = malloc(len ? len : 1); /* exactly the archive: a read past it is caught */
			memcpy(exact, work, len);
			free(work);
			if (parse(exact, len, es, &n) == 0)
				parsed++;
			free(exact);
			cases++;
		}
	}
	printf("%llu %llu\n", cases, parsed);
	return 0;
}
