/* mem_iter STATEDIR [MiB=64] - memory that keeps changing between the
 * rounds of an iterative dump (pre-dumps, then the dump) comes back as it
 * was at the last round.
 *
 * A private anonymous region of MiB holds in each page a pattern of the
 * page's index and its generation, kept in a table (itself memory that
 * changes). Until SIGTERM, every 100 us the workload changes the region:
 * mostly it rewrites a page of a hot set (the first 1/32), sometimes any
 * page; it drops a page (MADV_DONTNEED: it reads as zeros after), reads a
 * dropped page again (the zero page gets mapped), maps fresh memory over
 * a stretch (MAP_FIXED) and fills it, and moves a small region away,
 * rewrites it and moves it back (mremap, MREMAP_DONTUNMAP). A dump that takes a page from its parent images
 * although the task wrote it since would bring back an old generation.
 * After SIGTERM every page is checked; the one being changed when the
 * task was frozen may hold old or new words. Writes <statedir>/changes:
 * how many changes were made before SIGTERM. */
#include "wl.h"
#include <sys/mman.h>

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif

#define PAGE 4096UL
#define WORDS (PAGE / 8)
#define MOVER_PAGES 16
/* the busy range is set before a change and cleared after it, in order */
#define FENCE() __asm__ volatile("" ::: "memory")

static char *region;
static size_t npages;
/* generation of each page: 0 reads as zeros (dropped) */
static uint64_t *gen;
/* the pages being changed: [busy_lo, busy_hi), with their old generation */
static volatile size_t busy_lo, busy_hi;
/* the mover's two homes and where it is; its generation */
static char *home[2];
static volatile int at;
static volatile uint64_t mover_gen;
static uint64_t rng = 0x2545f4914f6cdd1dULL;

static uint64_t next(void)
{
	return wl_xorshift(&rng);
}

#define word wl_page_word

static void fill(uint64_t *p, size_t page, uint64_t g)
{
	for (size_t w = 0; w < WORDS; w++)
		p[w] = word(page, w, g);
}

static uint64_t *page_at(size_t i)
{
	return (uint64_t *)(region + i * PAGE);
}

static void rewrite(size_t i)
{
	busy_lo = i;
	busy_hi = i + 1;
	FENCE();
	gen[i]++;
	fill(page_at(i), i, gen[i]);
	FENCE();
	busy_hi = busy_lo = 0;
}

static void drop(size_t i)
{
	busy_lo = i;
	busy_hi = i + 1;
	FENCE();
	if (madvise(page_at(i), PAGE, MADV_DONTNEED) < 0)
		wl_fail("madvise(MADV_DONTNEED): %s", strerror(errno));
	gen[i] = 0;
	FENCE();
	busy_hi = busy_lo = 0;
}

static void remap(size_t i, size_t n)
{
	busy_lo = i;
	busy_hi = i + n;
	FENCE();
	void *p = mmap(page_at(i), n * PAGE, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	if (p == MAP_FAILED)
		wl_fail("mmap(MAP_FIXED): %s", strerror(errno));
	for (size_t k = i; k < i + n; k++) {
		gen[k]++;
		fill(page_at(k), k, gen[k]);
	}
	FENCE();
	busy_hi = busy_lo = 0;
}

/* The mover goes to its other home, is rewritten there and comes back:
 * the kernel moves its pages twice. MREMAP_DONTUNMAP leaves the home it
 * leaves mapped (and empty), so the maps are the same wherever the mover
 * is when the task is frozen. */
static void move_mover(void)
{
	for (int leg = 0; leg < 2; leg++) {
		int to = !at;
		if (mremap(home[at], MOVER_PAGES * PAGE, MOVER_PAGES * PAGE,
			   MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, home[to]) == MAP_FAILED)
			wl_fail("mremap: %s", strerror(errno));
		at = to;
		if (leg == 0) {
			mover_gen++;
			for (size_t k = 0; k < MOVER_PAGES; k++)
				fill((uint64_t *)(home[to] + k * PAGE), 1000000 + k, mover_gen);
		}
	}
}

static void change(void)
{
	uint64_t r = next();
	size_t op = r % 100, i = (size_t)((r >> 8) % npages);
	size_t hot = (size_t)((r >> 8) % (npages / 32 + 1));
	volatile uint64_t sink;
	if (op < 80)
		rewrite(hot);
	else if (op < 88)
		rewrite(i);
	else if (op < 93)
		drop(i);
	else if (op < 96)
		sink = *page_at(i); /* a dropped page reads as zeros */
	else if (op < 98)
		remap(i - i % 8, i - i % 8 + 8 <= npages ? 8 : 1);
	else
		move_mover();
	(void)sink;
}

/* Whether the home at `addr` holds the mover (the home it left reads as
 * zeros). */
static int holds(const char *addr)
{
	return *(const uint64_t *)addr != 0;
}

static void check(void)
{
	for (size_t i = 0; i < npages; i++) {
		const uint64_t *p = page_at(i);
		int busy = i >= busy_lo && i < busy_hi;
		for (size_t w = 0; w < WORDS; w++) {
			if (p[w] == word(i, w, gen[i]))
				continue;
			/* frozen while it changed: its old words, or zeros */
			if (busy && (p[w] == word(i, w, gen[i] - 1) || p[w] == 0))
				continue;
			wl_fail("page %zu word %zu is %#llx, generation %llu wants %#llx", i, w,
				(unsigned long long)p[w], (unsigned long long)gen[i],
				(unsigned long long)word(i, w, gen[i]));
		}
	}
	int where = holds(home[0]) ? 0 : 1;
	if (!holds(home[where]))
		wl_fail("the mover is at neither of its homes");
	if (holds(home[!where]))
		wl_fail("the mover is at both its homes");
	for (size_t k = 0; k < MOVER_PAGES; k++) {
		const uint64_t *p = (const uint64_t *)(home[where] + k * PAGE);
		for (size_t w = 0; w < WORDS; w++)
			if (p[w] != word(1000000 + k, w, mover_gen) &&
			    p[w] != word(1000000 + k, w, mover_gen - 1))
				wl_fail("mover page %zu word %zu holds neither of generations %llu, %llu",
					k, w, (unsigned long long)mover_gen - 1,
					(unsigned long long)mover_gen);
	}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 64;
	npages = mib * 256;
	region = wl_anon(npages * PAGE);
	gen = wl_anon(npages * 8);
	char *homes = mmap(NULL, 2 * MOVER_PAGES * PAGE + PAGE, PROT_NONE,
			   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (homes == MAP_FAILED)
		wl_fail("mmap: %s", strerror(errno));
	/* two homes a page apart, both mapped */
	home[0] = homes;
	home[1] = homes + MOVER_PAGES * PAGE + PAGE;
	for (int h = 0; h < 2; h++)
		if (mmap(home[h], MOVER_PAGES * PAGE, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED)
			wl_fail("mover: %s", strerror(errno));
	mover_gen = 1;
	for (size_t k = 0; k < MOVER_PAGES; k++)
		fill((uint64_t *)(home[0] + k * PAGE), 1000000 + k, 1);
	for (size_t i = 0; i < npages; i++) {
		gen[i] = 1;
		fill(page_at(i), i, 1);
	}
	/* the harness pre-dumps this many times before the dump */
	if (wl_write_file("pre-dumps", "2\n", 2) < 0)
		wl_fail("write pre-dumps: %s", strerror(errno));
	wl_ready();
	unsigned long changes = 0;
	while (!wl_term) {
		change();
		changes++;
		usleep(100);
	}
	wl_after();
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%lu\n", changes);
	wl_write_file("changes", buf, (size_t)n);
	check();
	wl_pass();
}
