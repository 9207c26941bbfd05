/* adopted STATEDIR - a session whose leader is in the tree but is not an
 * ancestor of a member (issue 16, item 7).
 *
 * The root R is a child subreaper. Its child L calls setsid() and forks X,
 * which forks M and exits: M, in L's session and process group, is
 * reparented to R. After SIGTERM, R tells M and L to check themselves
 * (M: its session and group are L's, its parent R; L: it leads its own
 * session), collects their answers and reaps both. */
#include "wl.h"

#include <sys/prctl.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		wl_fail("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
	pid_t r = getpid();
	int go[2], res[2], mpid[2];
	wl_pipe(go);
	wl_pipe(res);
	wl_pipe(mpid);
	pid_t l = wl_fork();
	if (l == 0) {
		if (setsid() < 0)
			_exit(10);
		pid_t lpid = getpid();
		pid_t x = fork();
		if (x == 0) {
			pid_t m = fork();
			if (m == 0) {
				char c;
				if (wl_read_wait(go[0], &c, 1, -1) != 1)
					_exit(20);
				char ok = getsid(0) == lpid && getpgrp() == lpid && getppid() == r
					  ? 'M'
					  : 'm';
				if (write(res[1], &ok, 1) != 1)
					_exit(21);
				_exit(0);
			}
			if (write(mpid[1], &m, sizeof(m)) != sizeof(m))
				_exit(12);
			_exit(0);
		}
		int st;
		waitpid(x, &st, 0);
		char c;
		if (wl_read_wait(go[0], &c, 1, -1) != 1)
			_exit(13);
		char ok = getsid(0) == getpid() ? 'L' : 'l';
		if (write(res[1], &ok, 1) != 1)
			_exit(14);
		_exit(0);
	}
	pid_t m;
	if (wl_read_wait(mpid[0], &m, sizeof(m), 10000) != sizeof(m))
		wl_fail("no pid of M");
	/* wait until M is R's child */
	for (int i = 0; i < 1000; i++) {
		char path[64], buf[512];
		snprintf(path, sizeof(path), "/proc/%d/stat", m);
		int f = open(path, O_RDONLY);
		ssize_t n = f < 0 ? -1 : read(f, buf, sizeof(buf) - 1);
		if (f >= 0)
			close(f);
		if (n > 0) {
			buf[n] = 0;
			char *p = strrchr(buf, ')');
			int ppid = 0;
			if (p && sscanf(p + 2, "%*c %d", &ppid) == 1 && ppid == r)
				break;
		}
		usleep(10000);
	}

	wl_ready();
	wl_wait_term();

	if (write(go[1], "gg", 2) != 2)
		wl_fail("write go: %s", strerror(errno));
	char a[2];
	if (wl_read_wait(res[0], &a[0], 1, 10000) != 1 || wl_read_wait(res[0], &a[1], 1, 10000) != 1)
		wl_fail("no answers");
	if (!((a[0] == 'M' && a[1] == 'L') || (a[0] == 'L' && a[1] == 'M')))
		wl_fail("answers %c%c (lowercase: wrong session, group or parent)", a[0], a[1]);
	if (wl_waitpid(m, "wait for M") != 0)
		wl_fail("M failed");
	if (wl_waitpid(l, "wait for L") != 0)
		wl_fail("L failed");
	wl_pass();
}
