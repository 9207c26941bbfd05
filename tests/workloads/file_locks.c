/* file_locks STATEDIR - file locks held by a tree survive a dump and
 * restore with --file-locks (asked for through STATEDIR/dump-args).
 *
 * The root holds:
 *   posix.dat  POSIX (fcntl F_SETLK) write lock on bytes 0-9 and read lock
 *              on bytes 20-29; its child holds a write lock on bytes 40-49
 *              through the fd it inherited;
 *   ofd.dat    OFD (F_OFD_SETLK) write lock on bytes 0-99 and read lock
 *              from byte 100 to the end of the file;
 *   flock_ex   flock LOCK_EX;  flock_sh  flock LOCK_SH;
 *   shared     flock LOCK_EX taken before the fork, so the root and its
 *              child share the locked open file description;
 *   lease.dat  a read lease (F_SETLEASE), which F_GETLEASE must report
 *              after the restore;
 *   breaking.dat  a write lease being broken: a second child opens the
 *              file for reading and waits; after the restore the lease is
 *              still being broken (F_GETLEASE says F_RDLCK), and once the
 *              root lets it go the child's open goes through.
 * The child blocks on a pipe until the root is done.
 *
 * Before the ready signal and after the restore, a checker forked from the
 * root opens every file anew and tests each lock from outside: F_GETLK and
 * F_OFD_GETLK report the holder's lock (and its pid for POSIX locks), ranges
 * around them are free, and flock LOCK_NB fails where a lock conflicts and
 * succeeds where it does not. */
#include "wl.h"

#include <sys/file.h>
#include <sys/wait.h>

static volatile sig_atomic_t sigios;

static void on_sigio(int sig)
{
	(void)sig;
	sigios++;
}

static int open_file(const char *name, int flags)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", wl_dir, name);
	int fd = open(path, flags | O_CLOEXEC, 0644);
	if (fd < 0)
		wl_fail("open %s: %s", path, strerror(errno));
	return fd;
}

static void lock(int fd, int cmd, short type, off_t start, off_t len, const char *what)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	if (fcntl(fd, cmd, &fl) < 0)
		wl_fail("take %s: %s", what, strerror(errno));
}

static const char *tname(short t)
{
	return t == F_WRLCK ? "WRLCK" : t == F_RDLCK ? "RDLCK" : t == F_UNLCK ? "UNLCK" : "?";
}

/* Asks with `cmd` (F_GETLK or F_OFD_GETLK) whether a lock of `type` on
 * start+len would conflict; expects `want` held by `pid` (0: any). */
static void probe(int fd, int cmd, short type, off_t start, off_t len, short want, pid_t pid,
		  const char *what)
{
	struct flock fl = { .l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len };
	if (fcntl(fd, cmd, &fl) < 0) {
		wl_add("%s: fcntl: %s; ", what, strerror(errno));
		return;
	}
	if (fl.l_type != want)
		wl_add("%s: %s, expected %s; ", what, tname(fl.l_type), tname(want));
	else if (want != F_UNLCK && pid != 0 && fl.l_pid != pid)
		wl_add("%s: held by pid %d, expected %d; ", what, (int)fl.l_pid, (int)pid);
}

/* flock(op | LOCK_NB) on a new description: expects success (then
 * unlocks) or EWOULDBLOCK. */
static void try_flock(const char *name, int op, int should_work, const char *what)
{
	int fd = open_file(name, O_RDWR);
	int r = flock(fd, op | LOCK_NB);
	if (should_work && r < 0)
		wl_add("%s: %s; ", what, strerror(errno));
	if (!should_work && r == 0)
		wl_add("%s: got the lock, which should be held; ", what);
	if (!should_work && r < 0 && errno != EWOULDBLOCK)
		wl_add("%s: %s, expected EWOULDBLOCK; ", what, strerror(errno));
	close(fd);
}

/* The checks, in a process of their own; returns their report (empty:
 * every lock as expected). */
static void check_from_outside(pid_t root, pid_t kid, const char *when)
{
	int p[2];
	wl_pipe(p);
	pid_t c = wl_fork();
	if (c == 0) {
		close(p[0]);
		wl_mlen = 0;
		int fd = open_file("posix.dat", O_RDWR);
		probe(fd, F_GETLK, F_RDLCK, 0, 10, F_WRLCK, root, "POSIX write lock 0-9");
		probe(fd, F_GETLK, F_WRLCK, 5, 1, F_WRLCK, root, "POSIX write lock at 5");
		probe(fd, F_GETLK, F_WRLCK, 10, 10, F_UNLCK, 0, "POSIX bytes 10-19");
		probe(fd, F_GETLK, F_WRLCK, 20, 10, F_RDLCK, root, "POSIX read lock 20-29");
		probe(fd, F_GETLK, F_RDLCK, 20, 10, F_UNLCK, 0, "POSIX read lock 20-29 shared");
		probe(fd, F_GETLK, F_WRLCK, 30, 10, F_UNLCK, 0, "POSIX bytes 30-39");
		probe(fd, F_GETLK, F_RDLCK, 40, 10, F_WRLCK, kid, "child's POSIX write lock 40-49");
		probe(fd, F_GETLK, F_WRLCK, 50, 0, F_UNLCK, 0, "POSIX bytes 50-EOF");
		close(fd);
		fd = open_file("ofd.dat", O_RDWR);
		probe(fd, F_OFD_GETLK, F_RDLCK, 0, 100, F_WRLCK, -1, "OFD write lock 0-99");
		probe(fd, F_OFD_GETLK, F_WRLCK, 100, 0, F_RDLCK, -1, "OFD read lock 100-EOF");
		probe(fd, F_OFD_GETLK, F_RDLCK, 100, 0, F_UNLCK, 0, "OFD read lock shared");
		probe(fd, F_GETLK, F_RDLCK, 50, 1, F_WRLCK, -1, "OFD write lock seen by F_GETLK");
		close(fd);
		try_flock("flock_ex", LOCK_SH, 0, "flock LOCK_EX (tried LOCK_SH)");
		try_flock("flock_sh", LOCK_SH, 1, "flock LOCK_SH (tried LOCK_SH)");
		try_flock("flock_sh", LOCK_EX, 0, "flock LOCK_SH (tried LOCK_EX)");
		try_flock("shared", LOCK_SH, 0, "flock LOCK_EX shared across fork");
		if (wl_mlen && write(p[1], wl_msg, wl_mlen) < 0)
			_exit(3);
		_exit(0);
	}
	close(p[1]);
	char buf[4096];
	ssize_t n, got = 0;
	while ((n = read(p[0], buf + got, sizeof(buf) - 1 - (size_t)got)) > 0 ||
	       (n < 0 && errno == EINTR))
		if (n > 0)
			got += n;
	close(p[0]);
	buf[got] = 0;
	int st = wl_waitpid(c, "waitpid checker");
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		wl_add("%s: the checker ended with status %#x; ", when, st);
	if (got > 0)
		wl_add("%s: %s", when, buf);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int posix = open_file("posix.dat", O_RDWR | O_CREAT | O_TRUNC);
	int ofd = open_file("ofd.dat", O_RDWR | O_CREAT | O_TRUNC);
	int fex = open_file("flock_ex", O_RDWR | O_CREAT | O_TRUNC);
	int fsh = open_file("flock_sh", O_RDONLY | O_CREAT | O_TRUNC);
	int shared = open_file("shared", O_RDWR | O_CREAT | O_TRUNC);
	char zeros[256] = { 0 };
	if (write(posix, zeros, 64) != 64 || write(ofd, zeros, sizeof(zeros)) != sizeof(zeros))
		wl_fail("write: %s", strerror(errno));
	if (flock(shared, LOCK_EX | LOCK_NB) < 0)
		wl_fail("flock shared: %s", strerror(errno));

	int go[2], rdy[2];
	wl_pipe(go);
	wl_pipe(rdy);
	pid_t kid = wl_fork();
	if (kid == 0) {
		sigset_t all;
		sigfillset(&all);
		sigprocmask(SIG_BLOCK, &all, NULL);
		close(go[1]);
		close(rdy[0]);
		lock(posix, F_SETLK, F_WRLCK, 40, 10, "the child's POSIX write lock");
		if (write(rdy[1], "k", 1) != 1)
			_exit(10);
		char c;
		while (read(go[0], &c, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(go[0]);
	close(rdy[1]);
	char c;
	if (read(rdy[0], &c, 1) != 1)
		wl_fail("the child did not take its lock");
	close(rdy[0]);

	lock(posix, F_SETLK, F_WRLCK, 0, 10, "POSIX write lock 0-9");
	lock(posix, F_SETLK, F_RDLCK, 20, 10, "POSIX read lock 20-29");
	lock(ofd, F_OFD_SETLK, F_WRLCK, 0, 0, "OFD write lock 0-EOF");
	lock(ofd, F_OFD_SETLK, F_RDLCK, 100, 0, "OFD read lock 100-EOF");
	if (flock(fex, LOCK_EX | LOCK_NB) < 0 || flock(fsh, LOCK_SH | LOCK_NB) < 0)
		wl_fail("flock: %s", strerror(errno));

	int lease = open_file("lease.dat", O_RDONLY | O_CREAT);
	if (fcntl(lease, F_SETLEASE, F_RDLCK) < 0)
		wl_fail("F_SETLEASE: %s", strerror(errno));

	signal(SIGIO, on_sigio);
	int blease = open_file("breaking.dat", O_RDWR | O_CREAT);
	if (fcntl(blease, F_SETLEASE, F_WRLCK) < 0)
		wl_fail("F_SETLEASE F_WRLCK: %s", strerror(errno));
	pid_t breaker = wl_fork();
	if (breaker == 0) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/breaking.dat", wl_dir);
		int f = open(path, O_RDONLY);
		_exit(f >= 0 ? 0 : 11);
	}
	for (int i = 0; i < 500 && fcntl(blease, F_GETLEASE) != F_RDLCK; i++)
		usleep(10000);
	if (fcntl(blease, F_GETLEASE) != F_RDLCK)
		wl_fail("the write lease on breaking.dat is not being broken (%d)",
			fcntl(blease, F_GETLEASE));

	pid_t root = getpid();
	check_from_outside(root, kid, "before");
	if (wl_mlen)
		wl_fail("%s", wl_msg);
	const char *args = "--file-locks\n";
	if (wl_write_file("dump-args", args, strlen(args)) < 0)
		wl_fail("write dump-args: %s", strerror(errno));
	wl_ready();
	wl_wait_term();

	check_from_outside(root, kid, "after");
	int held = fcntl(lease, F_GETLEASE);
	if (held != F_RDLCK)
		wl_add("the read lease on lease.dat is %d after the restore; ", held);
	held = fcntl(blease, F_GETLEASE);
	if (held != F_RDLCK)
		wl_add("the lease on breaking.dat is %d after the restore, not being broken to "
		       "F_RDLCK; ",
		       held);
	if (fcntl(blease, F_SETLEASE, F_UNLCK) < 0)
		wl_add("letting the lease on breaking.dat go: %s; ", strerror(errno));
	int bst = wl_waitpid(breaker, "waitpid the lease breaker");
	if (!WIFEXITED(bst) || WEXITSTATUS(bst) != 0)
		wl_add("the lease breaker ended with status %#x; ", bst);
	close(go[1]);
	int st = wl_waitpid(kid, "waitpid child");
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		wl_add("the child ended with status %#x; ", st);
	if (wl_mlen)
		wl_fail("%s", wl_msg);
	wl_pass();
}
