/* fds_many STATEDIR [big] - many kinds of fds at once survive: a regular file
 * at an offset, an O_APPEND file, a file deleted while open, a pipe and a
 * FIFO with data in flight, eventfds (a counter and a semaphore), an armed
 * timerfd with an interval, timerfds set to an absolute time (CLOCK_MONOTONIC,
 * and CLOCK_REALTIME with TFD_TIMER_CANCEL_ON_SET), a signalfd, an epoll instance watching several
 * of them with distinct data (and an eventfd whose watched fd was closed
 * since, the file living on in a dup and the number taken by the inotify
 * fd), inotify watching a directory, a memfd with
 * contents, seals, a position and a MAP_SHARED mapping, and two fds (dup)
 * sharing one offset. After the restore each is checked. With "big", it
 * also holds a deleted file of 2 MiB, more than crest's default ghost
 * limit: the dump must be refused. */
#include "wl.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>

#define D_EFD 0x1111000000000001ULL
#define D_PIPE 0x2222000000000002ULL
#define D_TIMER 0x3333000000000003ULL
#define D_SEM 0x5555000000000005ULL
#define D_GONE 0x6666000000000006ULL
#define D_FIFO 0x6666000000000006ULL
#define MEMFD_SIZE 8192

static void path_in(char *buf, size_t n, const char *name)
{
	snprintf(buf, n, "%s/%s", wl_dir, name);
}

static int xopen(const char *name, int flags)
{
	char p[4096];
	path_in(p, sizeof(p), name);
	int fd = open(p, flags, 0640);
	if (fd < 0)
		wl_fail("open %s: %s", p, strerror(errno));
	return fd;
}

static void xwrite(int fd, const char *s, const char *what)
{
	if (write(fd, s, strlen(s)) != (ssize_t)strlen(s))
		wl_fail("write %s: %s", what, strerror(errno));
}

static off_t pos(int fd)
{
	return lseek(fd, 0, SEEK_CUR);
}

/* Reads exactly strlen(want) bytes at the fd's offset and compares. */
static void expect_read(int fd, const char *want, const char *what)
{
	char buf[256] = { 0 };
	size_t n = strlen(want);
	ssize_t got = read(fd, buf, n);
	if (got != (ssize_t)n || memcmp(buf, want, n) != 0)
		wl_add("%s: read %zd bytes \"%.*s\", expected \"%s\" (%s); ", what, got,
		    got > 0 ? (int)got : 0, buf, want, got < 0 ? strerror(errno) : "");
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);

	/* a regular file at offset 6 */
	int reg = xopen("reg", O_RDWR | O_CREAT | O_TRUNC);
	xwrite(reg, "hello world", "reg");
	lseek(reg, 6, SEEK_SET);
	/* an O_APPEND file */
	int app = xopen("append", O_WRONLY | O_CREAT | O_TRUNC | O_APPEND);
	xwrite(app, "A", "append");
	/* a file deleted while open, at offset 3 */
	int ghost = xopen("ghost", O_RDWR | O_CREAT | O_TRUNC);
	xwrite(ghost, "ghost contents", "ghost");
	lseek(ghost, 3, SEEK_SET);
	char gp[4096];
	path_in(gp, sizeof(gp), "ghost");
	if (unlink(gp) < 0)
		wl_fail("unlink %s: %s", gp, strerror(errno));
	if (argc > 2 && strcmp(argv[2], "big") == 0) {
		/* 2 MiB of data (not holes: a sparse file's data is what
		 * counts against the limit) */
		int big = xopen("big-ghost", O_RDWR | O_CREAT | O_TRUNC);
		static char chunk[64 << 10];
		memset(chunk, 'g', sizeof(chunk));
		for (int i = 0; i < 32; i++)
			if (write(big, chunk, sizeof(chunk)) != (ssize_t)sizeof(chunk))
				wl_fail("write big-ghost: %s", strerror(errno));
		char bp[4096];
		path_in(bp, sizeof(bp), "big-ghost");
		unlink(bp);
	}
	/* a pipe with data in flight */
	int pp[2];
	wl_pipe(pp);
	xwrite(pp[1], "pipe-data", "pipe");
	/* a FIFO with data in flight */
	char fp[4096];
	path_in(fp, sizeof(fp), "fifo");
	if (mkfifo(fp, 0600) < 0)
		wl_fail("mkfifo %s: %s", fp, strerror(errno));
	int fifo_r = open(fp, O_RDONLY | O_NONBLOCK);
	int fifo_w = open(fp, O_WRONLY);
	if (fifo_r < 0 || fifo_w < 0)
		wl_fail("open fifo: %s", strerror(errno));
	xwrite(fifo_w, "fifo-data", "fifo");
	/* eventfds */
	int efd = eventfd(5, EFD_CLOEXEC);
	int sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
	/* an armed timerfd with an interval */
	int tfd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	struct itimerspec its = { .it_interval = { 7, 0 }, .it_value = { 100, 0 } };
	if (efd < 0 || sem < 0 || tfd < 0 || timerfd_settime(tfd, 0, &its, NULL) < 0)
		wl_fail("eventfd/timerfd: %s", strerror(errno));
	/* timerfds set to an absolute time, 200 s from now */
	int abs_fd[2] = { timerfd_create(CLOCK_MONOTONIC, 0), timerfd_create(CLOCK_REALTIME, 0) };
	int abs_flags[2] = { TFD_TIMER_ABSTIME, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET };
	for (int i = 0; i < 2; i++) {
		struct timespec t0;
		clock_gettime(i ? CLOCK_REALTIME : CLOCK_MONOTONIC, &t0);
		struct itimerspec at = { .it_value = { t0.tv_sec + 200, 0 } };
		if (abs_fd[i] < 0 || timerfd_settime(abs_fd[i], abs_flags[i], &at, NULL) < 0)
			wl_fail("absolute timerfd %d: %s", i, strerror(errno));
	}
	/* a signalfd for SIGUSR1 and SIGUSR2 (blocked) */
	sigset_t usr;
	sigemptyset(&usr);
	sigaddset(&usr, SIGUSR1);
	sigaddset(&usr, SIGUSR2);
	sigprocmask(SIG_BLOCK, &usr, NULL);
	int sfd = signalfd(-1, &usr, SFD_NONBLOCK);
	if (sfd < 0)
		wl_fail("signalfd: %s", strerror(errno));
	/* epoll */
	int ep = epoll_create1(0);
	struct {
		int fd;
		uint64_t data;
	} watch[] = { { efd, D_EFD }, { pp[0], D_PIPE }, { tfd, D_TIMER },
		      { sem, D_SEM }, { fifo_r, D_FIFO } };
	for (size_t i = 0; i < sizeof(watch) / sizeof(watch[0]); i++) {
		struct epoll_event ev = { .events = EPOLLIN, .data.u64 = watch[i].data };
		if (epoll_ctl(ep, EPOLL_CTL_ADD, watch[i].fd, &ev) < 0)
			wl_fail("epoll_ctl(%d): %s", watch[i].fd, strerror(errno));
	}
	/* a watch whose fd is closed: the file lives on in a dup, the number
	 * goes to inotify below */
	int gone = eventfd(3, 0);
	struct epoll_event gev = { .events = EPOLLIN, .data.u64 = D_GONE };
	if (gone < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, gone, &gev) < 0)
		wl_fail("the watch of a closed fd: %s", strerror(errno));
	int gone_dup = dup(gone);
	close(gone);
	/* inotify on the state directory */
	int ino = inotify_init1(IN_NONBLOCK);
	int wd = inotify_add_watch(ino, wl_dir, IN_CREATE);
	if (ino < 0 || wd < 0)
		wl_fail("inotify: %s", strerror(errno));
	/* a memfd: contents, seals, a position and a shared mapping */
	int mfd = memfd_create("crest-memfd", MFD_ALLOW_SEALING);
	if (mfd < 0 || ftruncate(mfd, MEMFD_SIZE) < 0)
		wl_fail("memfd: %s", strerror(errno));
	xwrite(mfd, "memfd-contents", "memfd");
	char *map = mmap(NULL, MEMFD_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, mfd, 0);
	if (map == MAP_FAILED)
		wl_fail("mmap memfd: %s", strerror(errno));
	memcpy(map + 4096, "via-map", 7);
	int seals = F_SEAL_SHRINK | F_SEAL_GROW;
	if (fcntl(mfd, F_ADD_SEALS, seals) < 0)
		wl_fail("F_ADD_SEALS: %s", strerror(errno));
	lseek(mfd, 5, SEEK_SET);
	/* two fds sharing one offset, the second close-on-exec */
	int sh1 = xopen("shared", O_RDWR | O_CREAT | O_TRUNC);
	xwrite(sh1, "0123456789", "shared");
	lseek(sh1, 3, SEEK_SET);
	int sh2 = fcntl(sh1, F_DUPFD_CLOEXEC, 0);
	if (sh2 < 0)
		wl_fail("dup: %s", strerror(errno));

	wl_ready();
	wl_wait_term();

	/* regular file and O_APPEND */
	if (pos(reg) != 6)
		wl_add("reg: offset %lld, expected 6; ", (long long)pos(reg));
	expect_read(reg, "world", "reg");
	xwrite(app, "B", "append after restore");
	char ap[4096];
	path_in(ap, sizeof(ap), "append");
	int apr = open(ap, O_RDONLY);
	expect_read(apr, "AB", "append file (O_APPEND kept?)");
	close(apr);
	if (!(fcntl(app, F_GETFL) & O_APPEND))
		wl_add("append: O_APPEND lost; ");
	/* deleted file */
	struct stat st;
	if (fstat(ghost, &st) < 0 || st.st_nlink != 0)
		wl_add("ghost: nlink %ld, expected 0 (deleted); ", (long)st.st_nlink);
	if ((st.st_mode & 0777) != 0640)
		wl_add("ghost: mode %o, expected 640; ", (unsigned)(st.st_mode & 0777));
	if (pos(ghost) != 3)
		wl_add("ghost: offset %lld, expected 3; ", (long long)pos(ghost));
	expect_read(ghost, "st contents", "ghost");
	if (access(gp, F_OK) == 0)
		wl_add("ghost: %s exists again; ", gp);

	/* epoll before anything is read: efd, pipe, sem and fifo are ready,
	 * the timer is not */
	struct epoll_event evs[8];
	int n = epoll_wait(ep, evs, 8, 0);
	uint64_t seen[8];
	for (int i = 0; i < n; i++)
		seen[i] = evs[i].data.u64;
	uint64_t want[] = { D_EFD, D_PIPE, D_SEM, D_FIFO, D_GONE };
	for (size_t i = 0; i < 5; i++) {
		int found = 0;
		for (int j = 0; j < n; j++)
			found |= seen[j] == want[i];
		if (!found)
			wl_add("epoll: data %#llx not reported ready; ", (unsigned long long)want[i]);
	}
	for (int j = 0; j < n; j++)
		if (seen[j] == D_TIMER)
			wl_add("epoll: the timer is reported ready; ");
	if (n != 5)
		wl_add("epoll: %d ready, expected 5; ", n);
	uint64_t gv = 0;
	if (read(gone_dup, &gv, 8) != 8 || gv != 3)
		wl_add("the eventfd of the closed watch holds %llu, expected 3; ",
		    (unsigned long long)gv);

	/* pipe and FIFO data */
	expect_read(pp[0], "pipe-data", "pipe");
	expect_read(fifo_r, "fifo-data", "fifo");
	xwrite(fifo_w, "more", "fifo after restore");
	expect_read(fifo_r, "more", "fifo after restore");
	/* eventfds */
	uint64_t v = 0;
	if (read(efd, &v, 8) != 8 || v != 5)
		wl_add("eventfd: read %llu, expected 5; ", (unsigned long long)v);
	for (int i = 0; i < 3; i++) {
		v = 0;
		if (read(sem, &v, 8) != 8 || v != 1)
			wl_add("semaphore eventfd: read %d gave %llu, expected 1; ", i,
			    (unsigned long long)v);
	}
	if (read(sem, &v, 8) != -1 || errno != EAGAIN)
		wl_add("semaphore eventfd: a fourth read did not fail with EAGAIN (nonblock lost?); ");
	/* timerfd */
	struct itimerspec now;
	if (timerfd_gettime(tfd, &now) < 0)
		wl_add("timerfd_gettime: %s; ", strerror(errno));
	else if (now.it_interval.tv_sec != 7 || now.it_interval.tv_nsec != 0 ||
		 now.it_value.tv_sec > 100 || (now.it_value.tv_sec == 0 && now.it_value.tv_nsec == 0) ||
		 now.it_value.tv_sec < 50)
		wl_add("timerfd: value %ld.%09ld interval %ld.%09ld, expected about 100 s and 7 s; ",
		    (long)now.it_value.tv_sec, now.it_value.tv_nsec, (long)now.it_interval.tv_sec,
		    now.it_interval.tv_nsec);
	/* absolute timerfds: their flags (fdinfo) and the time left */
	for (int i = 0; i < 2; i++) {
		char ip[64], line[256];
		snprintf(ip, sizeof(ip), "/proc/self/fdinfo/%d", abs_fd[i]);
		FILE *f = fopen(ip, "r");
		unsigned flags = 99;
		while (f && fgets(line, sizeof(line), f))
			sscanf(line, "settime flags: %o", &flags);
		if (f)
			fclose(f);
		if ((int)flags != abs_flags[i])
			wl_add("absolute timerfd %d: settime flags %o, expected %o; ", i, flags,
			       abs_flags[i]);
		struct itimerspec left;
		if (timerfd_gettime(abs_fd[i], &left) < 0 || left.it_value.tv_sec > 200 ||
		    left.it_value.tv_sec < 100)
			wl_add("absolute timerfd %d: %ld s left, expected about 200; ", i,
			       (long)left.it_value.tv_sec);
	}
	/* signalfd */
	raise(SIGUSR2);
	struct signalfd_siginfo si;
	if (read(sfd, &si, sizeof(si)) != sizeof(si) || si.ssi_signo != SIGUSR2)
		wl_add("signalfd: no SIGUSR2 read (%s); ", strerror(errno));
	/* inotify */
	char np[4096];
	path_in(np, sizeof(np), "created-after");
	int c = open(np, O_WRONLY | O_CREAT, 0600);
	close(c);
	char ib[4096] __attribute__((aligned(8)));
	ssize_t got = read(ino, ib, sizeof(ib));
	int found = 0;
	/* earlier events (the ready file) may come first */
	for (ssize_t off = 0; off + (ssize_t)sizeof(struct inotify_event) <= got;) {
		struct inotify_event *ie = (struct inotify_event *)(ib + off);
		if (ie->wd == wd && (ie->mask & IN_CREATE) && ie->len &&
		    strcmp(ie->name, "created-after") == 0)
			found = 1;
		off += (ssize_t)sizeof(*ie) + ie->len;
	}
	if (!found)
		wl_add("inotify: no IN_CREATE of created-after on wd %d (got %zd bytes%s); ", wd, got,
		    got < 0 ? ", error" : "");
	/* memfd */
	if (fcntl(mfd, F_GET_SEALS) != seals)
		wl_add("memfd: seals %#x, expected %#x; ", fcntl(mfd, F_GET_SEALS), seals);
	if (pos(mfd) != 5)
		wl_add("memfd: offset %lld, expected 5; ", (long long)pos(mfd));
	char mb[32] = { 0 };
	if (pread(mfd, mb, 14, 0) != 14 || memcmp(mb, "memfd-contents", 14) != 0)
		wl_add("memfd: contents \"%.14s\"; ", mb);
	if (pread(mfd, mb, 7, 4096) != 7 || memcmp(mb, "via-map", 7) != 0)
		wl_add("memfd: the write through the mapping reads \"%.7s\" through the fd; ", mb);
	if (memcmp(map, "memfd-contents", 14) != 0)
		wl_add("memfd mapping: holds \"%.14s\"; ", map);
	memcpy(map + 100, "after", 5);
	if (pread(mfd, mb, 5, 100) != 5 || memcmp(mb, "after", 5) != 0)
		wl_add("memfd: a write through the mapping after restore is not seen through the fd; ");
	if (pwrite(mfd, "fdwrite", 7, 200) != 7 || memcmp(map + 200, "fdwrite", 7) != 0)
		wl_add("memfd: a write through the fd after restore is not seen in the mapping; ");
	struct stat ms;
	if (fstat(mfd, &ms) < 0 || ms.st_size != MEMFD_SIZE)
		wl_add("memfd: size %lld, expected %d; ", (long long)ms.st_size, MEMFD_SIZE);
	if (ftruncate(mfd, 100) == 0)
		wl_add("memfd: shrinking worked despite F_SEAL_SHRINK; ");
	/* shared offset */
	if (pos(sh1) != 3 || pos(sh2) != 3)
		wl_add("dup: offsets %lld and %lld, expected 3; ", (long long)pos(sh1),
		    (long long)pos(sh2));
	expect_read(sh2, "34", "dup (second fd)");
	if (pos(sh1) != 5)
		wl_add("dup: reading the second fd moved the first to %lld, expected 5 (offset not "
		    "shared); ",
		    (long long)pos(sh1));
	if (fcntl(sh1, F_GETFD) != 0 || fcntl(sh2, F_GETFD) != FD_CLOEXEC)
		wl_add("dup: close-on-exec %d/%d, expected 0/1; ", fcntl(sh1, F_GETFD),
		    fcntl(sh2, F_GETFD));
	if (wl_mlen)
		wl_fail("%s", wl_msg);
	wl_pass();
}
