/* vfork_hold STATEDIR - a vfork parent, which cannot be seized while its
 * child runs: the dump must give up after --timeout, naming it, and leave
 * the tree as it was.
 *
 * The root forks a middle process that vforks; the vfork child writes
 * "ready" (with the root's pid) and sleeps until SIGTERM, then _exits. The
 * middle process, in uninterruptible sleep until then, is reaped by the
 * root, which passes when SIGTERM arrives and everything ended as
 * expected (it forwards SIGTERM to the vfork child). */
#include "wl.h"

#include <sys/wait.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	pid_t root = getpid();
	pid_t mid = wl_fork();
	if (mid == 0) {
		pid_t c = vfork();
		if (c == 0) {
			char buf[32];
			if (write(1, "before\n", 7) != 7)
				_exit(5);
			int n = snprintf(buf, sizeof(buf), "%d\n", root);
			if (wl_write_file("ready", buf, (size_t)n) < 0)
				_exit(3);
			while (!wl_term)
				pause();
			_exit(0);
		}
		_exit(c < 0 ? 4 : 0);
	}
	while (!wl_term)
		pause();
	wl_after();
	/* the vfork child is the middle process's only child */
	char path[64], buf[64];
	snprintf(path, sizeof(path), "/proc/%d/task/%d/children", mid, mid);
	FILE *f = fopen(path, "r");
	if (!f || !fgets(buf, sizeof(buf), f))
		wl_fail("read %s: %s", path, strerror(errno));
	fclose(f);
	if (kill((pid_t)atoi(buf), SIGTERM) < 0)
		wl_fail("kill the vfork child: %s", strerror(errno));
	int st;
	if (waitpid(mid, &st, 0) != mid)
		wl_fail("waitpid: %s", strerror(errno));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		wl_fail("the vfork parent ended with status %#x", st);
	wl_pass();
}
