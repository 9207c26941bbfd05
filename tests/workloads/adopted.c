/* adopted STATEDIR - a session whose leader is in the tree but is not an
 * ancestor of a member (issue 16, item 7).
 *
 * The root R is a child subreaper. Its child L calls setsid() and forks X,
 * which forks M and exits: M, in L's session and process group, is
 * reparented to R. After SIGTERM, R tells M and L to check themselves
 * (M: its session and group are L's, its parent R; L: it leads its own
 * session), collects their answers and reaps L (and M, its child).
 * With "init" R is no subreaper but the init of its pid namespace (the
 * ns flavors make the workload pid 1), which orphans go to. */
#include "wl.h"

#include <sys/prctl.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	/* "init": R is pid 1 and no subreaper */
	int to_init = argc > 2 && !strcmp(argv[2], "init");
	if (!to_init && prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		wl_fail("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
	if (to_init && getpid() != 1)
		wl_skip("the workload is not the init of a pid namespace");
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
				/* once reparented to R, M says its pid */
				for (int i = 0; i < 1000 && getppid() != r; i++)
					usleep(10000);
				pid_t me = getpid();
				if (write(mpid[1], &me, sizeof(me)) != sizeof(me))
					_exit(22);
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
			_exit(m < 0 ? 12 : 0);
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
