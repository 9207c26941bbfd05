/* shared_anon_exited STATEDIR - pages of shared anonymous memory that only
 * an exited process touched survive a dump and restore (the way a server's
 * short-lived workers fill its shared cache: postgres's shared buffers).
 *
 * The root maps 4 MiB MAP_SHARED|MAP_ANONYMOUS and touches only its first
 * page. A child writes a pattern into pages 64-191 and exits; the root
 * reaps it without reading those pages, so they are in the shared memory
 * object but in no page table of the dumped tree. After SIGTERM the root
 * reads them: the pattern must be there, the rest of the region zero. */
#include "wl.h"

#include <sys/mman.h>
#include <sys/wait.h>

#define LEN (4UL << 20)
#define PG 4096UL
#define FIRST 64
#define LAST 191

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	uint64_t *m = mmap(NULL, LEN, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (m == MAP_FAILED)
		wl_fail("mmap: %s", strerror(errno));
	m[0] = 42;
	pid_t c = wl_fork();
	if (c == 0) {
		for (size_t i = FIRST * PG / 8; i < (LAST + 1) * PG / 8; i++)
			m[i] = wl_mix(i);
		_exit(0);
	}
	int st = wl_waitpid(c, "waitpid");
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		wl_fail("the writer ended with status %#x", st);
	/* Not in the root's page table (pagemap's present bit). */
	int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	uint64_t word = 0;
	off_t at = (off_t)(((uintptr_t)m / PG + FIRST) * 8);
	if (pm < 0 || pread(pm, &word, 8, at) != 8)
		wl_fail("read /proc/self/pagemap: %s", strerror(errno));
	close(pm);
	if (word >> 63)
		wl_skip("the child's pages are mapped in the root already");
	wl_ready();
	wl_wait_term();
	if (m[0] != 42)
		wl_fail("the root's own word is %llu, expected 42", (unsigned long long)m[0]);
	size_t bad = 0, first_bad = 0;
	for (size_t i = 1; i < LEN / 8; i++) {
		size_t page = i * 8 / PG;
		uint64_t want = (page >= FIRST && page <= LAST) ? wl_mix(i) : 0;
		if (m[i] != want && bad++ == 0)
			first_bad = i;
	}
	if (bad)
		wl_fail("%zu words differ, the first in page %zu (%#llx)", bad, first_bad * 8 / PG,
			(unsigned long long)m[first_bad]);
	wl_pass();
}
