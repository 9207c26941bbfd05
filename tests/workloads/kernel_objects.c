/* kernel_objects STATEDIR KIND - holds one kernel object crest refuses to
 * carry yet, so the refusal tests see the dump refused naming it and the
 * task run on untouched:
 *   hugetlb  a private MAP_HUGETLB mapping with data (needs huge pages in
 *            the pool: skipped without);
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
	if (!strcmp(kind, "hugetlb")) {
		huge = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE,
			    MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
		if (huge == MAP_FAILED)
			wl_skip("MAP_HUGETLB: %s (no huge pages in the pool?)", strerror(errno));
		memset(huge, 0x5a, 2 << 20);
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

	if (huge)
		for (size_t i = 0; i < (2 << 20); i += 4096)
			if (huge[i] != 0x5a)
				wl_fail("the hugetlb mapping changed at %zu", i);
	wl_pass();
}
