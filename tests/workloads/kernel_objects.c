/* kernel_objects STATEDIR KIND - holds one kernel object:
 *   hugetlb  a private MAP_HUGETLB mapping with data, a pattern per page
 *            (needs huge pages in the pool: skipped without); carried;
 *   hugetlb_shared  the same, shared with a child, which after the
 *            restore must see a flag the parent writes and answer it;
 *   hugetlbfs  a file on a hugetlbfs mount at STATEDIR/hp mapped shared
 *            and private (a page of its own in the private one);
 *   shm_hugetlb  a SHM_HUGETLB SysV segment attached (removed at the end);
 *   hugetlb_memfd  a MFD_HUGETLB memfd mapped shared;
 *   hugetlbfs_deleted  a file on the hugetlbfs mount at STATEDIR/hp,
 *            mapped shared and deleted: carried as a ghost file (made
 *            again on the mount, filled, mapped, deleted again; it asks
 *            for --ghost-limit 4M in STATEDIR/dump-args);
 *   io_uring an io_uring's submission ring mapped, its fd closed.
 * After SIGTERM it checks that the object is still there and whole. */
#include "wl.h"

#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/shm.h>
#include <sys/syscall.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	const char *kind = argc > 2 ? argv[2] : "";
	char *huge = NULL, *priv = NULL;
	pid_t child = 0;
	int shm_id = -1;
	if (!strcmp(kind, "hugetlb") || !strcmp(kind, "hugetlb_shared")) {
		int share = strcmp(kind, "hugetlb") ? MAP_SHARED : MAP_PRIVATE;
		huge = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, share | MAP_ANONYMOUS | MAP_HUGETLB,
			    -1, 0);
		if (huge == MAP_FAILED)
			wl_skip("MAP_HUGETLB: %s (no huge pages in the pool?)", strerror(errno));
		for (size_t i = 0; i < (2 << 20); i += 4096)
			memset(huge + i, (int)(0x11 + i / 4096 % 200), 4096);
		if (share == MAP_SHARED) {
			/* the child waits for the flag in the last page's first
			 * byte and answers in its second */
			volatile char *flag = huge + (2 << 20) - 4096;
			flag[0] = flag[1] = 0;
			child = wl_fork();
			if (child == 0) {
				for (int i = 0; i < 60000 && flag[0] != 1; i++)
					usleep(1000);
				flag[1] = flag[0] == 1 ? 2 : 3;
				_exit(0);
			}
		}
	} else if (!strcmp(kind, "hugetlbfs_deleted")) {
		char path[4200];
		snprintf(path, sizeof(path), "%s/hp/gone", wl_dir);
		int f = open(path, O_RDWR | O_CREAT, 0600);
		if (f < 0)
			wl_skip("open %s: %s (no hugetlbfs mount there?)", path, strerror(errno));
		huge = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
		if (huge == MAP_FAILED)
			wl_skip("mmap %s: %s (no huge pages in the pool?)", path, strerror(errno));
		close(f);
		unlink(path);
		for (size_t i = 0; i < (2 << 20); i += 4096)
			memset(huge + i, (int)(0x11 + i / 4096 % 200), 4096);
		/* its 2 MiB of data are saved as a ghost file */
		const char *args = "--ghost-limit 4M\n";
		if (wl_write_file("dump-args", args, strlen(args)) < 0)
			wl_fail("write dump-args: %s", strerror(errno));
	} else if (!strcmp(kind, "hugetlbfs")) {
		/* STATEDIR/hp is a hugetlbfs mount (the case makes it): a file
		 * there mapped shared (its pages are the file's) and private (a
		 * written page is the task's own copy) */
		char path[4200];
		snprintf(path, sizeof(path), "%s/hp/file", wl_dir);
		int f = open(path, O_RDWR | O_CREAT, 0600);
		if (f < 0)
			wl_skip("open %s: %s (no hugetlbfs mount there?)", path, strerror(errno));
		huge = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
		if (huge == MAP_FAILED)
			wl_skip("mmap %s: %s (no huge pages in the pool?)", path, strerror(errno));
		for (size_t i = 0; i < (2 << 20); i += 4096)
			memset(huge + i, (int)(0x11 + i / 4096 % 200), 4096);
		priv = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE, f, 0);
		if (priv == MAP_FAILED)
			wl_skip("mmap %s private: %s", path, strerror(errno));
		close(f);
		memcpy(priv + 4096, "private copy", 12);
	} else if (!strcmp(kind, "shm_hugetlb")) {
		shm_id = shmget(IPC_PRIVATE, 2 << 20, IPC_CREAT | SHM_HUGETLB | 0600);
		if (shm_id < 0)
			wl_skip("shmget(SHM_HUGETLB): %s (no huge pages in the pool?)", strerror(errno));
		huge = shmat(shm_id, NULL, 0);
		if (huge == (void *)-1)
			wl_fail("shmat: %s", strerror(errno));
		for (size_t i = 0; i < (2 << 20); i += 4096)
			memset(huge + i, (int)(0x11 + i / 4096 % 200), 4096);
	} else if (!strcmp(kind, "hugetlb_memfd")) {
		int f = memfd_create("huge", MFD_HUGETLB);
		if (f < 0 || ftruncate(f, 2 << 20))
			wl_skip("memfd_create(MFD_HUGETLB): %s (no huge pages in the pool?)",
				strerror(errno));
		huge = mmap(NULL, 2 << 20, PROT_READ | PROT_WRITE, MAP_SHARED, f, 0);
		if (huge == MAP_FAILED)
			wl_skip("mmap a hugetlb memfd: %s", strerror(errno));
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

	if (child) {
		volatile char *flag = huge + (2 << 20) - 4096;
		flag[0] = 1;
		for (int i = 0; i < 5000 && flag[1] == 0; i++)
			usleep(1000);
		if (flag[1] != 2)
			wl_fail("the child did not see the flag in the shared huge page (%d)", flag[1]);
		if (wl_waitpid(child, "waitpid") != 0)
			wl_fail("the child failed");
		/* (the flag page's first bytes are the flag's now) */
		flag[0] = flag[1] = (char)(0x11 + 511 % 200);
	}
	if (priv) {
		if (memcmp(priv + 4096, "private copy", 12))
			wl_fail("the private mapping's own page is gone");
		if (memcmp(huge + 4096, "private copy", 12) == 0)
			wl_fail("the private page reached the file");
		if (priv[0] != 0x11 || priv[8192] != (char)(0x11 + 2))
			wl_fail("the private mapping does not show the file");
	}
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
	if (shm_id >= 0)
		shmctl(shm_id, IPC_RMID, NULL);
	wl_pass();
}
