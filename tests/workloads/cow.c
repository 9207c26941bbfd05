/* cow.c - private anonymous pages shared copy-on-write between a parent,
 * its child and its grandchild stay shared after the restore (issue 13):
 * the kernel counts them once, and each task still sees its own data.
 *
 * The root fills a 32-page anonymous mapping and a 16-page heap block,
 * then forks a child; the child changes pages 0-3 of the mapping and forks
 * a grandchild, which changes pages 8-9. Before the dump every task reads
 * from /proc/self/smaps how many of its pages of the mapping and of the
 * heap are shared (Shared_Dirty) and private (Private_Dirty). After the
 * restore each checks its data and that the same numbers come back: a
 * restore that gives every task its own copy turns shared pages private
 * (and doubles the memory).
 */
#include "wl.h"

#include <sys/mman.h>

#define PG 4096
#define NPAGES 32
#define HEAP_PAGES 16

static char *area, *heap;

static void fill(char *p, size_t len, int seed)
{
	for (size_t i = 0; i < len; i++)
		p[i] = (char)(seed + i * 13);
}

static int same(const char *p, size_t len, int seed)
{
	for (size_t i = 0; i < len; i++)
		if (p[i] != (char)(seed + i * 13))
			return 0;
	return 1;
}

/* Shared_Dirty and Private_Dirty (kB) of the mapping that holds `at`. */
static void dirty_of(const void *at, long *shared, long *priv)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f)
		wl_fail("open smaps: %s", strerror(errno));
	char line[512];
	int in = 0;
	*shared = *priv = -1;
	unsigned long a = (unsigned long)at;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
			in = a >= s && a < e;
			continue;
		}
		if (!in)
			continue;
		long v;
		if (sscanf(line, "Shared_Dirty: %ld kB", &v) == 1)
			*shared = v;
		else if (sscanf(line, "Private_Dirty: %ld kB", &v) == 1)
			*priv = v;
	}
	fclose(f);
}

struct counts {
	long area_shared, area_priv, heap_shared, heap_priv;
};

static struct counts measure(void)
{
	struct counts c;
	dirty_of(area, &c.area_shared, &c.area_priv);
	dirty_of(heap, &c.heap_shared, &c.heap_priv);
	return c;
}

static void compare(const char *who, struct counts b, struct counts a)
{
	if (a.area_shared != b.area_shared || a.area_priv != b.area_priv)
		wl_add("%s: the mapping had %ld kB shared, %ld kB private; now %ld and %ld; ", who,
		    b.area_shared, b.area_priv, a.area_shared, a.area_priv);
	/* (the heap also holds what stdio allocated after the fork) */
	if (a.heap_shared < b.heap_shared)
		wl_add("%s: the heap had %ld kB shared; now %ld; ", who, b.heap_shared, a.heap_shared);
}

/* What task `depth` (0 root, 1 child, 2 grandchild) should see. */
static void check_data(const char *who, int depth)
{
	for (int pg = 0; pg < NPAGES; pg++) {
		int seed = 1;
		if (depth >= 1 && pg < 4)
			seed = 2;
		if (depth == 2 && (pg == 8 || pg == 9))
			seed = 3;
		if (!same(area + (size_t)pg * PG, PG, seed + pg)) {
			wl_add("%s: page %d of the mapping differs; ", who, pg);
			break;
		}
	}
	if (!same(heap, (size_t)HEAP_PAGES * PG - 64, 9))
		wl_add("%s: the heap block differs; ", who);
}

/* A descendant: measure when told and report readiness on `res`; when told
 * again check its data and counts and report "OK" or the differences; exit
 * when told a third time (not before: the others' counts include it). */
static void descendant(const char *who, int depth, int cmd, int res)
{
	if (wl_read_wait(cmd, &(char){ 0 }, 1, -1) != 1)
		_exit(11);
	struct counts before = measure();
	if (write(res, "r", 1) != 1)
		_exit(10);
	if (wl_read_wait(cmd, &(char){ 0 }, 1, -1) != 1)
		_exit(11);
	check_data(who, depth);
	compare(who, before, measure());
	const char *out = wl_mlen ? wl_msg : "OK";
	if (write(res, out, strlen(out)) != (ssize_t)strlen(out))
		_exit(12);
	wl_read_wait(cmd, &(char){ 0 }, 1, -1);
	_exit(0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();

	/* a page of nothing on each side: the area is a mapping of its own,
	 * not merged with a neighbour whose pages change on their own */
	char *room = mmap(NULL, (size_t)(NPAGES + 2) * PG, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (room == MAP_FAILED)
		wl_fail("mmap: %s", strerror(errno));
	area = room + PG;
	munmap(room, PG);
	munmap(area + (size_t)NPAGES * PG, PG);
	for (int pg = 0; pg < NPAGES; pg++)
		fill(area + (size_t)pg * PG, PG, 1 + pg);
	/* below the mmap threshold: from the heap */
	heap = malloc((size_t)HEAP_PAGES * PG - 64);
	if (!heap)
		wl_fail("malloc");
	fill(heap, (size_t)HEAP_PAGES * PG - 64, 9);
	if ((void *)heap > (void *)sbrk(0))
		wl_fail("the block is not on the heap");

	/* cmd: the root to its descendants; res: their answers */
	int cmd[2][2], res[2][2];
	for (int i = 0; i < 2; i++) {
		wl_pipe(cmd[i]);
		wl_pipe(res[i]);
	}
	pid_t child = wl_fork();
	if (child == 0) {
		for (int pg = 0; pg < 4; pg++)
			fill(area + (size_t)pg * PG, PG, 2 + pg);
		pid_t gc = wl_fork();
		if (gc == 0) {
			fill(area + 8 * (size_t)PG, PG, 3 + 8);
			fill(area + 9 * (size_t)PG, PG, 3 + 9);
			descendant("grandchild", 2, cmd[1][0], res[1][1]);
		}
		descendant("child", 1, cmd[0][0], res[0][1]);
	}
	/* every change made (the grandchild's last: it answers only after
	 * its own), each task measures */
	char r;
	for (int i = 1; i >= 0; i--)
		if (write(cmd[i][1], "m", 1) != 1 || wl_read_wait(res[i][0], &r, 1, 10000) != 1)
			wl_fail("descendant %d not ready", i);
	struct counts before = measure();
	if (before.area_shared <= 0)
		wl_skip("the kernel shows no shared pages after fork (smaps Shared_Dirty %ld kB)",
			before.area_shared);

	wl_ready();
	wl_wait_term();

	check_data("root", 0);
	compare("root", before, measure());
	for (int i = 0; i < 2; i++) {
		if (write(cmd[i][1], "c", 1) != 1) {
			wl_add("write to descendant %d: %s; ", i, strerror(errno));
			continue;
		}
		char out[1025];
		ssize_t n = wl_read_wait(res[i][0], out, sizeof(out) - 1, 10000);
		if (n <= 0) {
			wl_add("no answer from descendant %d; ", i);
			continue;
		}
		out[n] = 0;
		if (strcmp(out, "OK") != 0)
			wl_add("%s", out);
	}
	for (int i = 0; i < 2; i++)
		if (write(cmd[i][1], "x", 1) != 1)
			wl_add("write to descendant %d: %s; ", i, strerror(errno));
	if (wl_mlen)
		wl_fail("%s", wl_msg);
	wl_pass();
}
