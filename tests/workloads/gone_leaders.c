/* gone_leaders STATEDIR - a session and a process group whose leaders are
 * gone: A calls setsid() and forks B, which stays in A's session; C calls
 * setpgid(0, 0) in the root's session and forks D, which stays in C's
 * group; A and C exit. The root is a child subreaper, so B and D become
 * its children. Restore must make both again with a short-lived helper
 * that takes the leader's pid (as CRIU does). After SIGTERM each of B and
 * D checks that its session, group and parent are what they were and
 * exits 0; the root reaps them and checks their statuses. */
#include "wl.h"
#include <sys/prctl.h>

static pid_t sid_b, pgid_d, root;

/* A member: remembers its ids, waits for SIGTERM, checks them again. */
static void member(int ready_fd)
{
	pid_t sid = getsid(0), pgid = getpgid(0), ppid, me = getpid();
	/* the leader exits after this write: then the parent is the root */
	if (write(ready_fd, &me, sizeof(me)) != sizeof(me))
		_exit(20);
	close(ready_fd);
	while (getppid() != root)
		usleep(1000);
	ppid = getppid();
	sigset_t m;
	sigemptyset(&m);
	sigaddset(&m, SIGTERM);
	sigprocmask(SIG_BLOCK, &m, NULL);
	int sig;
	sigwait(&m, &sig);
	if (getsid(0) != sid)
		_exit(21);
	if (getpgid(0) != pgid)
		_exit(22);
	if (getppid() != ppid)
		_exit(23);
	_exit(0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		wl_fail("PR_SET_CHILD_SUBREAPER: %s", strerror(errno));
	root = getpid();
	int p[2];
	if (pipe(p) < 0)
		wl_fail("pipe: %s", strerror(errno));
	pid_t a = fork();
	if (a == 0) {
		close(p[0]);
		if (setsid() < 0)
			_exit(10);
		if (fork() == 0)
			member(p[1]);
		_exit(0);
	}
	pid_t c = fork();
	if (c == 0) {
		close(p[0]);
		if (setpgid(0, 0) < 0)
			_exit(11);
		if (fork() == 0)
			member(p[1]);
		_exit(0);
	}
	close(p[1]);
	/* the members' pids (their own view: /proc may be of another pid
	 * namespace) */
	pid_t kids[2];
	for (int i = 0; i < 2; i++)
		if (read(p[0], &kids[i], sizeof(kids[i])) != sizeof(kids[i]))
			wl_fail("the members did not report");
	int st;
	if (waitpid(a, &st, 0) != a || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		wl_fail("session leader A ended with %#x", st);
	if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
		wl_fail("group leader C ended with %#x", st);
	sid_b = a;
	pgid_d = c;
	/* both members are the root's children now (reparented at the
	 * leaders' exit) */
	for (int i = 0; i < 2; i++) {
		pid_t s = getsid(kids[i]), g = getpgid(kids[i]);
		if (!((s == sid_b && g == sid_b) || (s == getsid(0) && g == pgid_d)))
			wl_fail("member %d has sid %d pgid %d", kids[i], s, g);
	}
	printf("before\n");
	fflush(stdout);
	wl_ready();
	wl_wait_term();
	printf("after\n");
	fflush(stdout);
	for (int i = 0; i < 2; i++) {
		pid_t s = getsid(kids[i]), g = getpgid(kids[i]);
		if (!((s == sid_b && g == sid_b) || (s == getsid(0) && g == pgid_d)))
			wl_fail("after restore, member %d has sid %d pgid %d", kids[i], s, g);
		kill(kids[i], SIGTERM);
	}
	for (int i = 0; i < 2; i++) {
		if (waitpid(kids[i], &st, 0) != kids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			wl_fail("member %d ended with %#x (see gone_leaders.c)", kids[i], st);
	}
	wl_pass();
}
