/* kernel_objects STATEDIR KIND - holds one kernel object:
 *   hugetlb  a private MAP_HUGETLB mapping with data, a pattern per page
 *            (needs huge pages in the pool: skipped without); carried;
 *   hugetlb_shared  the same, shared: refused, the task must run on;
 *   io_uring an io_uring's submission ring mapped, its fd closed.
 * After SIGTERM it checks that the object is still there and whole. */
#include "wl.h"

#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	const char *kind = argc > 2 ? argv[2] : "";
	char *huge = NULL;
	if (!strcmp(kind, "hugetlb") || !strcmp(kind, "hugetlb_shared")) {
		int share = strcmp(kind, "hugetlb") ? MAP_SHARED : MAP_PRIVATE;
		huge = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, share | MAP_ANONYMOUS | MAP_HUGETLB,
			    -1, 0);
		if (huge == MAP_FAILED)
			wl_skip("MAP_HUGETLB: %s (no huge pages in the pool?)", strerror(errno));
		for (size_t i = 0; i < (2 << 20); i += 4096)
			memset(huge + i, (int)(0x11 + i / 4096 % 200), 4096);
	} else if (!strcmp(kind, "io_uring")) {
		struct io_uring_params p;
		memset(&p, 0, sizeof(p));
		int fd = (int)syscall(SYS_io_uring_setup, 8, &p);
		if (fd < 0)
			wl_skip("io_uring_setup: %s", strerror(errno));
		void *sq = mmap(NULL, p.sq_off.array + p.sq_entries * 4, PROT_READ | PROT_WRITE,
				MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING);
		if (sq == MAP_FAILED)
			wl_fail("mmap the SQ ring: %s", strerror(errno));
		close(fd);
	} else {
		wl_fail("unknown kind %s", kind);
	}

	wl_ready();
	wl_wait_term();

	if (huge) {
		for (size_t i = 0; i < (2 << 20); i += 4096)
			if (huge[i] != (char)(0x11 + i / 4096 % 200) ||
			    huge[i + 4095] != (char)(0x11 + i / 4096 % 200))
				wl_fail("the hugetlb mapping changed at %zu", i);
		/* still huge pages: the kernel's page size for it */
		char line[256];
		FILE *f = fopen("/proc/self/smaps", "r");
		int in = 0, ok = 0;
		unsigned long start = (unsigned long)huge, a, b;
		while (f && fgets(line, sizeof(line), f)) {
			if (sscanf(line, "%lx-%lx ", &a, &b) == 2)
				in = a == start;
			else if (in && !strncmp(line, "KernelPageSize:", 15))
				ok = strstr(line, " 2048 kB") != NULL;
		}
		if (f)
			fclose(f);
		if (!ok)
			wl_fail("the mapping at %p is no longer of 2 MiB pages", huge);
	}
	wl_pass();
}
