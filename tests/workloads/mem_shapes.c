/* mem_shapes.c - mappings of unusual shapes (issue 13), each with data the
 * restore must bring back exactly:
 *   an anonymous area with PROT_NONE holes between written pages;
 *   guard pages (MADV_GUARD_INSTALL, where the kernel has them) inside a
 *     written area;
 *   a MAP_GROWSDOWN area with data;
 *   a private mapping of a file that goes past the file's end (the first
 *     page written, the rest beyond EOF);
 *   a MAP_PRIVATE mapping of /dev/zero with data;
 *   a MAP_PRIVATE mapping of a shared memory file (memfd) with one page
 *     changed privately and one left to the file;
 *   NUMA policies of ranges (mbind): MPOL_BIND to node 0 on half of an
 *     area, MPOL_INTERLEAVE|MPOL_F_STATIC_NODES on another, where the
 *     kernel has NUMA;
 *   4 MiB (2 MiB aligned) with MADV_HUGEPAGE, written: where it got
 *     transparent huge pages before the dump it must have them after
 *     (smaps AnonHugePages), not only small pages a later collapse may
 *     merge.
 */
#include "wl.h"

#include <sys/mman.h>
#include <sys/syscall.h>

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

#define PG 4096

static void fill(char *p, size_t len, int seed)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (char)(seed + i * 7);
}

/* AnonHugePages (kB) of the mapping that starts at `at`, from smaps. */
static long anon_huge_kb(const char *at)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int in = 0;
	long kb = -1;
	unsigned long a, b;
	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &a, &b) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = a == (unsigned long)at;
		else if (in && sscanf(line, "AnonHugePages: %ld kB", &kb) == 1)
			break;
	}
	if (f)
		fclose(f);
	return kb;
}

static int same(const char *p, size_t len, int seed)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != (char)(seed + i * 7))
			return 0;
	return 1;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();

	/* 8 pages: data, hole, data, hole, hole, data, data, hole */
	char *holes = mmap(NULL, 8 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(holes, 8 * PG, 1);
	const int none[] = {1, 3, 4, 7};
	for (int i = 0; i < 4; i++)
		if (mprotect(holes + none[i] * PG, PG, PROT_NONE))
			wl_fail("mprotect: %s", strerror(errno));

	char *guarded = mmap(NULL, 6 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(guarded, 6 * PG, 2);
	int have_guard = madvise(guarded + 2 * PG, 2 * PG, MADV_GUARD_INSTALL) == 0;

	char *down = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_GROWSDOWN, -1, 0);
	if (down == MAP_FAILED)
		wl_fail("MAP_GROWSDOWN: %s", strerror(errno));
	fill(down + 2 * PG, 2 * PG, 3);

	char path[4096];
	snprintf(path, sizeof(path), "%s/short", wl_dir);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (fd < 0 || ftruncate(fd, 100))
		wl_fail("short file: %s", strerror(errno));
	char *past = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
	if (past == MAP_FAILED)
		wl_fail("mmap past EOF: %s", strerror(errno));
	fill(past, PG, 4);
	close(fd);

	int z = open("/dev/zero", O_RDWR);
	char *zero = mmap(NULL, 4 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, z, 0);
	if (zero == MAP_FAILED)
		wl_fail("mmap /dev/zero: %s", strerror(errno));
	close(z);
	fill(zero + PG, PG, 5);

	int mfd = memfd_create("shapes", 0);
	if (mfd < 0 || ftruncate(mfd, 2 * PG))
		wl_fail("memfd: %s", strerror(errno));
	char *shared = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	fill(shared, 2 * PG, 6);
	char *priv = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, mfd, 0);
	if (shared == MAP_FAILED || priv == MAP_FAILED)
		wl_fail("mmap memfd: %s", strerror(errno));
	fill(priv + PG, PG, 7); /* page 1 is private now; page 0 is the file's */

	/* NUMA policies of ranges: read back with get_mempolicy(MPOL_F_ADDR) */
	char *numa = mmap(NULL, 6 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	unsigned long node0 = 1;
	int have_numa = syscall(SYS_mbind, numa, 2 * PG, 2 /* MPOL_BIND */, &node0, 64, 0) == 0;
	if (have_numa &&
	    syscall(SYS_mbind, numa + 4 * PG, 2 * PG, 3 | (1 << 15) /* interleave, static */, &node0,
		    64, 0))
		wl_fail("mbind interleave: %s", strerror(errno));
	fill(numa, 6 * PG, 8);
	int numa_before[3] = {-1, -1, -1};
	for (int i = 0; have_numa && i < 3; i++) {
		unsigned long mask = 0;
		if (syscall(SYS_get_mempolicy, &numa_before[i], &mask, 64, numa + 2 * i * PG,
			    2 /* MPOL_F_ADDR */))
			wl_fail("get_mempolicy: %s", strerror(errno));
	}

	/* transparent huge pages where asked for */
	char *thp_raw = mmap(NULL, 6 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS,
			     -1, 0);
	if (thp_raw == MAP_FAILED)
		wl_fail("mmap: %s", strerror(errno));
	char *thp = (char *)(((unsigned long)thp_raw + (2 << 20) - 1) & ~((2UL << 20) - 1));
	munmap(thp_raw, (size_t)(thp - thp_raw));
	munmap(thp + (4 << 20), (size_t)(thp_raw + (6 << 20) - (thp + (4 << 20))));
	if (madvise(thp, 4 << 20, MADV_HUGEPAGE))
		wl_fail("MADV_HUGEPAGE: %s", strerror(errno));
	fill(thp, 4 << 20, 9);
	long thp_before = anon_huge_kb(thp);

	wl_ready();
	wl_wait_term();
	wl_after();

	char msg[2048] = "";
	size_t m = 0;
#define BAD(...) (m += (size_t)snprintf(msg + m, sizeof(msg) - m, __VA_ARGS__))
	const int data[] = {0, 2, 5, 6};
	for (int i = 0; i < 4; i++) {
		char *p = holes + data[i] * PG;
		for (size_t j = 0; j < PG; j++)
			if (p[j] != (char)(1 + (data[i] * PG + j) * 7)) {
				BAD("holes page %d differs; ", data[i]);
				break;
			}
	}
	for (int i = 0; i < 4; i++)
		if (mprotect(holes + none[i] * PG, PG, PROT_READ))
			BAD("hole %d: %s; ", none[i], strerror(errno));
	for (int pg = 0; pg < 6; pg++) {
		if (have_guard && (pg == 2 || pg == 3))
			continue;
		char *p = guarded + pg * PG;
		for (size_t j = 0; j < PG; j++)
			if (p[j] != (char)(2 + (pg * PG + j) * 7)) {
				BAD("guarded area page %d differs; ", pg);
				break;
			}
	}
	if (!same(down + 2 * PG, 2 * PG, 3))
		BAD("MAP_GROWSDOWN data differs; ");
	if (!same(past, PG, 4))
		BAD("the mapping past EOF lost its first page; ");
	for (size_t j = 0; j < PG; j++)
		if (zero[j] || zero[2 * PG + j]) {
			BAD("/dev/zero mapping not zero; ");
			break;
		}
	if (!same(zero + PG, PG, 5))
		BAD("/dev/zero mapping data differs; ");
	if (!same(priv, PG, 6))
		BAD("private memfd page 0 differs from the file; ");
	if (!same(priv + PG, PG, 7))
		BAD("private memfd page 1 lost its private data; ");
	if (!same(shared, 2 * PG, 6))
		BAD("shared memfd differs; ");
	/* page 0 of the private mapping is still the file's: a change to the
	 * file shows through it */
	shared[0] = 'X';
	if (priv[0] != 'X')
		BAD("private memfd page 0 no longer follows the file; ");
	for (int i = 0; have_numa && i < 3; i++) {
		int mode = -1;
		unsigned long mask = 0;
		if (syscall(SYS_get_mempolicy, &mode, &mask, 64, numa + 2 * i * PG, 2))
			BAD("get_mempolicy: %s; ", strerror(errno));
		else if (mode != numa_before[i])
			BAD("range %d of the NUMA area had policy %#x, now %#x; ", i, numa_before[i],
			    mode);
	}
	if (have_numa && (numa_before[0] != 2 || numa_before[1] != 0))
		BAD("setup: the NUMA policies read %#x %#x before the dump; ", numa_before[0],
		    numa_before[1]);
	if (!same(numa, 6 * PG, 8))
		BAD("NUMA area data differs; ");
	if (!same(thp, 4 << 20, 9))
		BAD("the MADV_HUGEPAGE area's data differs; ");
	long thp_after = anon_huge_kb(thp);
	if (thp_before > 0 && thp_after < thp_before)
		BAD("the MADV_HUGEPAGE area had %ld kB of huge pages, now %ld kB; ", thp_before,
		    thp_after);
	if (m)
		wl_fail("%s", msg);
	wl_pass();
}
