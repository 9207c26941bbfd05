/* fds_fork STATEDIR - open file descriptions shared between a parent and
 * its child (inherited across fork) stay shared: a file offset, a pipe's
 * status flags and an eventfd; the parent's pidfd of the child still
 * names the child.
 *
 * The root opens a file, two pipes and an eventfd, forks a child and opens
 * a pidfd of it. The child blocks SIGTERM and waits on the command pipe.
 * After the restore the root reads two bytes of the file and tells the
 * child, which checks the offset moved for it too, reads three more, sets
 * O_NONBLOCK on the result pipe's write end, adds 7 to the eventfd, reports
 * and exits. The root checks the offset, the flag and the count, and reaps
 * the child through the pidfd.
 *
 * It also keeps a pidfd (PIDFD_NONBLOCK) of a second child that exited and
 * was reaped before the dump: after the restore it must still poll
 * readable, say pid -1 in its fdinfo, keep O_NONBLOCK and give ECHILD to
 * waitid(P_PIDFD). */
#include "wl.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static void child(int file, int cmd, int res, int efd)
{
	char c;
	if (write(res, "r", 1) != 1)
		_exit(10);
	if (wl_read_wait(cmd, &c, 1, -1) != 1)
		_exit(11);
	off_t at = lseek(file, 0, SEEK_CUR);
	if (at != 2)
		wl_add("child: file offset %lld, expected 2 (the root's read; not shared?); ",
		    (long long)at);
	char b[4] = { 0 };
	if (read(file, b, 3) != 3 || memcmp(b, "234", 3) != 0)
		wl_add("child: read \"%.3s\", expected \"234\"; ", b);
	fcntl(res, F_SETFL, fcntl(res, F_GETFL) | O_NONBLOCK);
	uint64_t seven = 7;
	if (write(efd, &seven, 8) != 8)
		wl_add("child: write eventfd: %s; ", strerror(errno));
	const char *out = wl_mlen ? wl_msg : "OK";
	if (write(res, out, strlen(out)) != (ssize_t)strlen(out))
		_exit(12);
	_exit(0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();

	char path[4096];
	snprintf(path, sizeof(path), "%s/shared-file", wl_dir);
	int file = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (file < 0 || write(file, "0123456789", 10) != 10 || lseek(file, 0, SEEK_SET) != 0)
		wl_fail("file %s: %s", path, strerror(errno));
	int cmd[2], res[2];
	wl_pipe(cmd);
	wl_pipe(res);
	int efd = eventfd(0, EFD_NONBLOCK);
	if (efd < 0)
		wl_fail("eventfd: %s", strerror(errno));
	pid_t pid = wl_fork();
	if (pid == 0) {
		close(cmd[1]);
		close(res[0]);
		child(file, cmd[0], res[1], efd);
	}
	close(cmd[0]);
	int pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd < 0)
		wl_fail("pidfd_open: %s", strerror(errno));
	pid_t gone = wl_fork();
	if (gone == 0)
		_exit(0);
	int dead = (int)syscall(SYS_pidfd_open, gone, O_NONBLOCK);
	if (dead < 0)
		wl_fail("pidfd_open of the second child: %s", strerror(errno));
	wl_waitpid(gone, "reap the second child");
	char b;
	if (wl_read_wait(res[0], &b, 1, 10000) != 1)
		wl_fail("child not ready");

	wl_ready();
	wl_wait_term();

	char two[3] = { 0 };
	if (read(file, two, 2) != 2 || memcmp(two, "01", 2) != 0)
		wl_add("root: read \"%.2s\", expected \"01\"; ", two);
	if (write(cmd[1], "g", 1) != 1)
		wl_add("root: write to the child: %s; ", strerror(errno));
	char out[2049];
	ssize_t n = wl_read_wait(res[0], out, sizeof(out) - 1, 10000);
	if (n <= 0) {
		wl_add("root: no result from the child (pid %d); ", pid);
	} else {
		out[n] = 0;
		if (strcmp(out, "OK") != 0)
			wl_add("%s", out);
	}
	off_t at = lseek(file, 0, SEEK_CUR);
	if (at != 5)
		wl_add("root: file offset %lld, expected 5 (the child's read; not shared?); ",
		    (long long)at);
	if (!(fcntl(res[1], F_GETFL) & O_NONBLOCK))
		wl_add("root: the child's O_NONBLOCK on the result pipe is not seen (pipe end not "
		    "shared); ");
	uint64_t v = 0;
	struct pollfd pe = { .fd = efd, .events = POLLIN };
	poll(&pe, 1, 5000);
	if (read(efd, &v, 8) != 8 || v != 7)
		wl_add("root: eventfd holds %llu, expected the child's 7 (not shared?); ",
		    (unsigned long long)v);
	struct pollfd pd = { .fd = dead, .events = POLLIN };
	if (poll(&pd, 1, 0) != 1)
		wl_add("root: the pidfd of the reaped child is not readable; ");
	if (!(fcntl(dead, F_GETFL) & O_NONBLOCK))
		wl_add("root: the pidfd of the reaped child lost O_NONBLOCK; ");
	char fdpath[64], info[512] = { 0 };
	snprintf(fdpath, sizeof(fdpath), "/proc/self/fdinfo/%d", dead);
	int fi = open(fdpath, O_RDONLY);
	if (fi < 0 || read(fi, info, sizeof(info) - 1) <= 0 || !strstr(info, "Pid:\t-1"))
		wl_add("root: the pidfd of the reaped child does not say pid -1 (%s); ", info);
	if (fi >= 0)
		close(fi);
	siginfo_t sd;
	if (waitid(P_PIDFD, (id_t)dead, &sd, WEXITED | WNOHANG) == 0 || errno != ECHILD)
		wl_add("root: waitid on the pidfd of the reaped child did not say ECHILD; ");
	struct pollfd pp = { .fd = pidfd, .events = POLLIN };
	if (poll(&pp, 1, 10000) != 1)
		wl_add("root: the pidfd did not report the child's exit; ");
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid(P_PIDFD, (id_t)pidfd, &si, WEXITED) < 0)
		wl_add("root: waitid(P_PIDFD): %s; ", strerror(errno));
	else if (si.si_pid != pid || si.si_code != CLD_EXITED || si.si_status != 0)
		wl_add("root: waitid(P_PIDFD) gave pid %d code %d status %d, expected %d exited 0; ",
		    si.si_pid, si.si_code, si.si_status, pid);
	if (wl_mlen)
		wl_fail("%s", wl_msg);
	wl_pass();
}
