/* zombie STATEDIR - unreaped children stay zombies with their exit status.
 *
 * The root forks child A, which exits with code 42 at once, child B, which
 * the root kills with SIGKILL, and child C, which stays alive with its own
 * zombie child (exit code 7). Nobody reaps before ready (waitid with WNOWAIT
 * only waits for the zombies to exist). After SIGTERM the root checks that
 * /proc/<pid>/stat shows A and B in state Z with the root as parent (in a pid
 * namespace of its own whose /proc is its parent's, pids are translated
 * through /proc/self/task/SELF/children and NSpid), that
 * waitid(WNOWAIT | WNOHANG) reports them as exited 42 and killed by SIGKILL,
 * then reaps them with waitpid (same statuses). It forwards SIGTERM to C,
 * which checks its zombie the same way and exits 0 only if all is well.
 * Child D unshares a user namespace of its own and exits 43: its zombie
 * keeps that namespace; child E sets its ids to 1234/2345 and exits 44: its
 * zombie keeps them (both compared through /proc after the restore). */
#include "wl.h"

#include <sched.h>
#include <sys/wait.h>

/* This process's pid as /proc numbers it: not getpid() when the process
 * lives in a pid namespace of its own but /proc is the parent
 * namespace's (the `ns` flavor of the suite). */
static pid_t proc_self(void)
{
	char buf[32];
	ssize_t n = readlink("/proc/self", buf, sizeof(buf) - 1);
	if (n <= 0)
		return getpid();
	buf[n] = 0;
	return (pid_t)atoi(buf);
}

/* The last number of the NSpid line of /proc/PID/status, or -1. */
static pid_t inner_pid(pid_t pid)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *l = strstr(buf, "\nNSpid:");
	if (!l)
		return -1;
	l += 7;
	char *end = strchr(l, '\n');
	if (end)
		*end = 0;
	char *last = strrchr(l, '\t');
	return last ? (pid_t)atoi(last + 1) : (pid_t)atoi(l);
}

/* Child `pid` (as getpid() numbers it) as /proc numbers it: the child of
 * ours (/proc/self/task/SELF/children) whose innermost pid it is; `pid`
 * itself when /proc numbers pids as we do; -1 if not found. */
static pid_t proc_pid_of_child(pid_t pid)
{
	pid_t self = proc_self();
	if (self == getpid())
		return pid;
	char path[96], buf[4096];
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", self, self);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	for (char *tok = strtok(buf, " \n"); tok; tok = strtok(NULL, " \n")) {
		pid_t c = (pid_t)atoi(tok);
		if (inner_pid(c) == pid)
			return c;
	}
	return -1;
}

/* State letter and ppid (as /proc numbers them) of our child `pid`, or
 * '?'. */
static char proc_stat(pid_t pid, pid_t *ppid)
{
	char path[64], buf[1024];
	pid = proc_pid_of_child(pid);
	if (pid < 0)
		return '?';
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return '?';
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return '?';
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	char state = '?';
	int pp = 0;
	if (!p || sscanf(p + 1, " %c %d", &state, &pp) != 2)
		return '?';
	*ppid = pp;
	return state;
}

/* The "user:[INODE]" link of our child `pid`'s user namespace, or "". */
static void userns_of(pid_t pid, char *out, size_t len)
{
	char path[64];
	out[0] = 0;
	pid = proc_pid_of_child(pid);
	if (pid < 0)
		return;
	snprintf(path, sizeof(path), "/proc/%d/ns/user", pid);
	ssize_t n = readlink(path, out, len - 1);
	out[n > 0 ? n : 0] = 0;
}

/* The Uid and Gid lines of our child `pid`'s status, or "". */
static void ids_of(pid_t pid, char *out, size_t len)
{
	char path[64], buf[4096];
	out[0] = 0;
	pid = proc_pid_of_child(pid);
	if (pid < 0)
		return;
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	buf[n > 0 ? n : 0] = 0;
	char *u = strstr(buf, "\nUid:"), *g = strstr(buf, "\nGid:");
	if (!u || !g)
		return;
	char *ue = strchr(u + 1, '\n'), *ge = strchr(g + 1, '\n');
	snprintf(out, len, "%.*s %.*s", (int)(ue ? ue - u - 1 : 40), u + 1, (int)(ge ? ge - g - 1 : 40),
		 g + 1);
}

/* Waits (without reaping) until `pid` is a zombie. */
static int wait_zombie(pid_t pid)
{
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	int r;
	do
		r = waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT);
	while (r < 0 && errno == EINTR);
	return r;
}

/* Checks zombie `pid` (code: CLD_EXITED or CLD_KILLED, with status) and
 * reaps it; failures go through wl_add() prefixed with `what`. */
static void check_zombie(const char *what, pid_t pid, int code, int status)
{
	pid_t ppid = 0;
	char st = proc_stat(pid, &ppid);
	if (st != 'Z')
		wl_add("%s (pid %d): /proc state %c, expected Z; ", what, pid, st);
	if (st == '?')
		wl_add("%s (pid %d): not found in /proc; ", what, pid);
	if (st != '?' && ppid != proc_self())
		wl_add("%s (pid %d): /proc ppid %d, expected %d; ", what, pid, ppid, proc_self());
	siginfo_t si;
	memset(&si, 0, sizeof(si));
	if (waitid(P_PID, (id_t)pid, &si, WEXITED | WNOWAIT | WNOHANG) < 0) {
		wl_add("%s (pid %d): waitid(WNOWAIT): %s; ", what, pid, strerror(errno));
		return;
	}
	if (si.si_pid != pid)
		wl_add("%s (pid %d): waitid(WNOWAIT|WNOHANG) found no zombie (si_pid %d); ", what, pid,
		    si.si_pid);
	else if (si.si_code != code || si.si_status != status)
		wl_add("%s (pid %d): waitid si_code %d si_status %d, expected %d/%d; ", what, pid,
		    si.si_code, si.si_status, code, status);
	int ws;
	pid_t w = waitpid(pid, &ws, WNOHANG);
	if (w != pid) {
		wl_add("%s (pid %d): waitpid returned %d (%s); ", what, pid, w,
		    w < 0 ? strerror(errno) : "not a zombie");
		return;
	}
	if (code == CLD_EXITED && !(WIFEXITED(ws) && WEXITSTATUS(ws) == status))
		wl_add("%s (pid %d): wait status %#x, expected exit %d; ", what, pid, ws, status);
	if (code == CLD_KILLED && !(WIFSIGNALED(ws) && WTERMSIG(ws) == status))
		wl_add("%s (pid %d): wait status %#x, expected killed by signal %d; ", what, pid, ws,
		    status);
}

static void child_c(int ready_fd)
{
	pid_t gc = fork();
	if (gc < 0)
		_exit(10);
	if (gc == 0)
		_exit(7);
	if (wait_zombie(gc) < 0)
		_exit(11);
	char b = 'r';
	if (write(ready_fd, &b, 1) != 1)
		_exit(12);
	close(ready_fd);
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	sigdelset(&cur, SIGTERM);
	while (!wl_term)
		sigsuspend(&cur);
	check_zombie("grandchild", gc, CLD_EXITED, 7);
	if (wl_mlen) {
		/* tell the root what went wrong: exit code 20 + a line on stderr */
		fprintf(stderr, "zombie child C: %s\n", wl_msg);
		_exit(20);
	}
	_exit(0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();

	pid_t a = wl_fork();
	if (a == 0)
		_exit(42);
	pid_t b = wl_fork();
	if (b == 0) {
		for (;;)
			pause();
	}
	int p[2];
	wl_pipe(p);
	pid_t c = wl_fork();
	if (c == 0) {
		close(p[0]);
		child_c(p[1]);
	}
	close(p[1]);
	pid_t d = wl_fork();
	if (d == 0)
		_exit(unshare(CLONE_NEWUSER) == 0 ? 43 : 1);
	pid_t e = wl_fork();
	if (e == 0)
		_exit(setresgid(2345, 2345, 2345) == 0 && setresuid(1234, 1234, 1234) == 0 ? 44 : 1);
	if (kill(b, SIGKILL) < 0)
		wl_fail("kill: %s", strerror(errno));
	if (wait_zombie(a) < 0 || wait_zombie(b) < 0)
		wl_fail("waitid(WNOWAIT): %s", strerror(errno));
	char r;
	if (read(p[0], &r, 1) != 1)
		wl_fail("child C did not get ready");
	close(p[0]);
	if (wait_zombie(d) < 0 || wait_zombie(e) < 0)
		wl_fail("waitid(WNOWAIT) D, E: %s", strerror(errno));
	char mine[64], d_ns[64], e_ids[256];
	{
		ssize_t n = readlink("/proc/self/ns/user", mine, sizeof(mine) - 1);
		mine[n > 0 ? n : 0] = 0;
	}
	userns_of(d, d_ns, sizeof(d_ns));
	ids_of(e, e_ids, sizeof(e_ids));
	int d_nested = d_ns[0] && strcmp(d_ns, mine) != 0;

	wl_ready();
	wl_wait_term();

	{
		char now[64], ids_now[256];
		ssize_t n = readlink("/proc/self/ns/user", mine, sizeof(mine) - 1);
		mine[n > 0 ? n : 0] = 0;
		userns_of(d, now, sizeof(now));
		if (d_nested && (!now[0] || !strcmp(now, mine)))
			wl_add("zombie D is no longer in a user namespace of its own (%s, ours %s); ",
			       now, mine);
		ids_of(e, ids_now, sizeof(ids_now));
		if (strcmp(ids_now, e_ids))
			wl_add("zombie E's ids were [%s], now [%s]; ", e_ids, ids_now);
	}
	check_zombie("child D (exit 43)", d, CLD_EXITED, d_nested ? 43 : 1);
	check_zombie("child E (exit 44)", e, CLD_EXITED, 44);

	check_zombie("child A (exit 42)", a, CLD_EXITED, 42);
	check_zombie("child B (SIGKILL)", b, CLD_KILLED, SIGKILL);
	if (kill(c, SIGTERM) < 0)
		wl_add("kill(child C pid %d): %s; ", c, strerror(errno));
	int ws;
	pid_t w;
	do
		w = waitpid(c, &ws, 0);
	while (w < 0 && errno == EINTR);
	if (w != c)
		wl_add("waitpid(child C pid %d): %s; ", c, strerror(errno));
	else if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
		wl_add("child C (pid %d, with a zombie child) ended with status %#x (exit 20: its "
		    "zombie is wrong, see its stderr); ",
		    c, ws);
	w = waitpid(-1, &ws, WNOHANG);
	if (w != -1 || errno != ECHILD)
		wl_add("an unexpected child remains (waitpid(-1) = %d); ", w);
	if (wl_mlen)
		wl_fail("%s", wl_msg);
	wl_pass();
}
