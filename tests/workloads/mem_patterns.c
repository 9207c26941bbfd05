/* mem_patterns STATEDIR [MiB=64] - memory of every common kind survives.
 *
 * Sets up: a patterned heap buffer with a unique 64-byte marker (written in
 * hex to <statedir>/marker so the harness can find it in pages-*.img), a
 * MiB-sized private anonymous mapping with some never-touched pages that must
 * read as zero, a 256 KiB array on the stack, a private mapping of a file
 * with one copy-on-write page, a read-only region, a PROT_NONE guard and a
 * shared anonymous region. After SIGTERM every word is compared. */
#include "wl.h"
#include <sys/mman.h>

#define PAGE 4096UL
#define HEAP_BYTES (8UL << 20)
#define STACK_WORDS (256 * 1024 / 8)
#define FILE_PAGES 8
#define COW_PAGE 3
#define RO_BYTES (1UL << 20)
#define GUARD_BYTES (16 * PAGE)
#define SHARED_BYTES (2UL << 20)
#define MARKER_LEN 64

/* Pattern of word `i` of a region at `base` with salt `salt`. */
static inline uint64_t pat(const void *base, size_t i, uint64_t salt)
{
	return wl_mix((uint64_t)(uintptr_t)base + i * 8 + salt);
}

static void fill(uint64_t *p, size_t words, uint64_t salt)
{
	for (size_t i = 0; i < words; i++)
		p[i] = pat(p, i, salt);
}

/* Returns the index of the first bad word, or (size_t)-1. */
static size_t check(const uint64_t *p, size_t words, uint64_t salt)
{
	for (size_t i = 0; i < words; i++)
		if (p[i] != pat(p, i, salt))
			return i;
	return (size_t)-1;
}

static void check_region(const char *what, const void *p, size_t bytes, uint64_t salt)
{
	size_t bad = check(p, bytes / 8, salt);
	if (bad != (size_t)-1)
		wl_fail("%s at %p (%zu bytes): word %zu (offset %#zx) is %#llx, expected %#llx", what,
			p, bytes, bad, bad * 8, (unsigned long long)((const uint64_t *)p)[bad],
			(unsigned long long)pat(p, bad, salt));
}

/* Is the anonymous page `pg` of the big mapping one we never touch? */
static int untouched(size_t pg)
{
	return pg % 7 == 3;
}

/* Find the /proc/self/maps line for [start, end) and return its perms. */
static int maps_perms(void *start, size_t len, char perms[5])
{
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		wl_fail("open /proc/self/maps: %s", strerror(errno));
	char line[4096];
	int found = 0;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		char p[5];
		if (sscanf(line, "%lx-%lx %4s", &s, &e, p) != 3)
			continue;
		if (s <= (unsigned long)start && (unsigned long)start + len <= e) {
			memcpy(perms, p, 5);
			found = 1;
			break;
		}
	}
	fclose(f);
	return found;
}

static void expect_perms(const char *what, void *start, size_t len, const char *want)
{
	char perms[5];
	if (!maps_perms(start, len, perms))
		wl_fail("%s %p-%p is gone from /proc/self/maps", what, start, (char *)start + len);
	if (strcmp(perms, want) != 0)
		wl_fail("%s %p-%p has perms %s, expected %s", what, start, (char *)start + len, perms,
			want);
}

__attribute__((noinline)) static void run(size_t mib)
{
	uint64_t stack_arr[STACK_WORDS];
	char path[4096];

	/* heap, with the marker in the middle */
	uint64_t *heap = malloc(HEAP_BYTES);
	if (!heap)
		wl_fail("malloc(%lu) failed", HEAP_BYTES);
	fill(heap, HEAP_BYTES / 8, 1);
	uint8_t marker[MARKER_LEN];
	uint64_t seed = wl_mix((uint64_t)getpid() << 20 ^ (uint64_t)(uintptr_t)heap);
	for (int i = 0; i < MARKER_LEN / 8; i++) {
		uint64_t w = wl_mix(seed + (uint64_t)i * 7919);
		memcpy(marker + i * 8, &w, 8);
	}
	uint8_t *marker_at = (uint8_t *)heap + HEAP_BYTES / 2 + 123;
	memcpy(marker_at, marker, MARKER_LEN);
	{
		char hex[MARKER_LEN * 2 + 64];
		int n = 0;
		for (int i = 0; i < MARKER_LEN; i++)
			n += snprintf(hex + n, sizeof(hex) - (size_t)n, "%02x", marker[i]);
		n += snprintf(hex + n, sizeof(hex) - (size_t)n, "\n%p\n", (void *)marker_at);
		if (wl_write_file("marker", hex, (size_t)n) < 0)
			wl_fail("write marker: %s", strerror(errno));
		memset(hex, 0, sizeof(hex));
	}

	/* big private anonymous mapping, some pages never touched */
	size_t anon_bytes = mib << 20;
	uint8_t *anon = mmap(NULL, anon_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			     -1, 0);
	if (anon == MAP_FAILED)
		wl_fail("mmap anon %zu MiB: %s", mib, strerror(errno));
	for (size_t pg = 0; pg < anon_bytes / PAGE; pg++)
		if (!untouched(pg))
			fill((uint64_t *)(anon + pg * PAGE), PAGE / 8, 2);

	/* the stack array */
	fill(stack_arr, STACK_WORDS, 3);

	/* a private file mapping with one copy-on-write page */
	snprintf(path, sizeof(path), "%s/mapped.dat", wl_dir);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0)
		wl_fail("create %s: %s", path, strerror(errno));
	uint64_t *filebuf = malloc(FILE_PAGES * PAGE);
	if (!filebuf)
		wl_fail("malloc");
	for (size_t i = 0; i < FILE_PAGES * PAGE / 8; i++)
		filebuf[i] = wl_mix(i + 0xf11e);
	if (write(fd, filebuf, FILE_PAGES * PAGE) != (ssize_t)(FILE_PAGES * PAGE))
		wl_fail("write %s: %s", path, strerror(errno));
	uint8_t *fmap = mmap(NULL, FILE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (fmap == MAP_FAILED)
		wl_fail("mmap %s: %s", path, strerror(errno));
	close(fd);
	/* touch (read) every page, then write one */
	volatile uint8_t sink = 0;
	for (int pg = 0; pg < FILE_PAGES; pg++)
		sink ^= fmap[pg * PAGE];
	(void)sink;
	fill((uint64_t *)(fmap + COW_PAGE * PAGE), PAGE / 8, 4);

	/* read-only region filled before mprotect */
	uint8_t *ro = mmap(NULL, RO_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (ro == MAP_FAILED)
		wl_fail("mmap ro: %s", strerror(errno));
	fill((uint64_t *)ro, RO_BYTES / 8, 5);
	if (mprotect(ro, RO_BYTES, PROT_READ) < 0)
		wl_fail("mprotect ro: %s", strerror(errno));

	/* PROT_NONE guard */
	uint8_t *guard = mmap(NULL, GUARD_BYTES, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (guard == MAP_FAILED)
		wl_fail("mmap guard: %s", strerror(errno));

	/* shared anonymous */
	uint8_t *shared = mmap(NULL, SHARED_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
			       -1, 0);
	if (shared == MAP_FAILED)
		wl_fail("mmap shared: %s", strerror(errno));
	fill((uint64_t *)shared, SHARED_BYTES / 8, 6);

	wl_ready();
	wl_wait_term();

	check_region("heap", heap, HEAP_BYTES / 2, 1);
	if (memcmp(marker_at, marker, MARKER_LEN) != 0)
		wl_fail("heap marker at %p changed", (void *)marker_at);
	/* the marker covers bytes [HEAP/2 + 123, HEAP/2 + 187): check from the
	 * next word on, with the pattern's base still at the start of the heap */
	for (size_t i = (HEAP_BYTES / 2 + 192) / 8; i < HEAP_BYTES / 8; i++)
		if (heap[i] != pat(heap, i, 1))
			wl_fail("heap word %zu at %p is %#llx, expected %#llx", i, (void *)&heap[i],
				(unsigned long long)heap[i], (unsigned long long)pat(heap, i, 1));
	for (size_t pg = 0; pg < anon_bytes / PAGE; pg++) {
		uint64_t *p = (uint64_t *)(anon + pg * PAGE);
		if (untouched(pg)) {
			for (size_t i = 0; i < PAGE / 8; i++)
				if (p[i] != 0)
					wl_fail("untouched anon page %zu (%p) word %zu is %#llx, "
						"expected 0",
						pg, (void *)p, i, (unsigned long long)p[i]);
		} else {
			size_t bad = check(p, PAGE / 8, 2);
			if (bad != (size_t)-1)
				wl_fail("anon page %zu (%p) word %zu is %#llx, expected %#llx", pg,
					(void *)p, bad, (unsigned long long)p[bad],
					(unsigned long long)pat(p, bad, 2));
		}
	}
	check_region("stack array", stack_arr, sizeof(stack_arr), 3);
	for (int pg = 0; pg < FILE_PAGES; pg++) {
		const uint64_t *p = (const uint64_t *)(fmap + pg * PAGE);
		if (pg == COW_PAGE) {
			check_region("written page of private file mapping", p, PAGE, 4);
			continue;
		}
		for (size_t i = 0; i < PAGE / 8; i++) {
			size_t fi = pg * PAGE / 8 + i;
			if (p[i] != wl_mix(fi + 0xf11e))
				wl_fail("file mapping page %d word %zu is %#llx, expected the file's "
					"%#llx",
					pg, i, (unsigned long long)p[i],
					(unsigned long long)wl_mix(fi + 0xf11e));
		}
	}
	check_region("read-only region", ro, RO_BYTES, 5);
	check_region("shared anonymous region", shared, SHARED_BYTES, 6);

	expect_perms("anon mapping", anon, anon_bytes, "rw-p");
	expect_perms("private file mapping", fmap, FILE_PAGES * PAGE, "rw-p");
	expect_perms("read-only region", ro, RO_BYTES, "r--p");
	expect_perms("guard region", guard, GUARD_BYTES, "---p");
	expect_perms("shared region", shared, SHARED_BYTES, "rw-s");
	unsigned char vec[GUARD_BYTES / PAGE];
	if (mincore(guard, GUARD_BYTES, vec) < 0)
		wl_fail("mincore(guard): %s", strerror(errno));
	wl_pass();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	size_t mib = argc > 2 ? strtoul(argv[2], NULL, 10) : 64;
	if (mib == 0)
		mib = 1;
	run(mib);
	return 0;
}
