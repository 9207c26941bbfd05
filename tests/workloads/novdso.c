/* novdso STATEDIR - a task that unmapped its vdso (and vvar) is dumped
 * and restored without them (issue 16, item 6): no `syscall` instruction
 * of the vdso is left for crest to inject through.
 *
 * The root unmaps every mapping /proc/self/maps names [vdso], [vvar] or
 * [vvar_vclock]; from then on it calls nothing that would use the vdso.
 * After SIGTERM it checks that none of them is back and that its other
 * state is whole (a counter kept in memory). */
#include "wl.h"

#include <sys/mman.h>

static int special(const char *line)
{
	return strstr(line, "[vdso]") || strstr(line, "[vvar]") || strstr(line, "[vvar_vclock]");
}

static int count_special(void)
{
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		wl_fail("open maps: %s", strerror(errno));
	char line[512];
	int n = 0;
	while (fgets(line, sizeof(line), f))
		n += special(line) != 0;
	fclose(f);
	return n;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	static unsigned long ranges[8][2];
	int n = 0;
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		wl_fail("open maps: %s", strerror(errno));
	char line[512];
	while (fgets(line, sizeof(line), f) && n < 8)
		if (special(line) && sscanf(line, "%lx-%lx", &ranges[n][0], &ranges[n][1]) == 2)
			n++;
	fclose(f);
	if (n == 0)
		wl_skip("no vdso here to unmap");
	for (int i = 0; i < n; i++)
		if (munmap((void *)ranges[i][0], ranges[i][1] - ranges[i][0]) < 0)
			wl_fail("munmap %lx: %s", ranges[i][0], strerror(errno));
	if (count_special() != 0)
		wl_fail("the vdso is still mapped after munmap");
	volatile unsigned long counter = 0x5eed;

	wl_ready();
	wl_wait_term();

	int left = count_special();
	if (left != 0)
		wl_fail("%d vdso/vvar mappings are back after the restore", left);
	if (counter != 0x5eed)
		wl_fail("counter is %#lx", (unsigned long)counter);
	wl_pass();
}
