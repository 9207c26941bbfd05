/* traced STATEDIR - a child traced by its parent (ptrace inside the
 * tree): crest refuses the dump saying who traces whom, and the tree runs
 * on untouched (issue 16, item 7).
 *
 * The root forks a child that asks to be traced (PTRACE_TRACEME) and
 * stops; the root lets it go on. After SIGTERM the root checks that it
 * still traces the child (TracerPid), and ends it. */
#include "wl.h"

#include <sys/ptrace.h>

static int tracer_of(pid_t pid)
{
	char path[64], line[256];
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	int t = -1;
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "TracerPid: %d", &t) == 1)
			break;
	if (f)
		fclose(f);
	return t;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	pid_t pid = wl_fork();
	if (pid == 0) {
		if (ptrace(PTRACE_TRACEME, 0, NULL, NULL) < 0)
			_exit(2);
		raise(SIGSTOP);
		for (;;)
			pause();
	}
	int ws;
	if (waitpid(pid, &ws, 0) != pid || !WIFSTOPPED(ws))
		wl_fail("the child did not stop for its tracer (%#x)", ws);
	if (ptrace(PTRACE_CONT, pid, NULL, NULL) < 0)
		wl_fail("PTRACE_CONT: %s", strerror(errno));

	wl_ready();
	wl_wait_term();

	int t = tracer_of(pid);
	if (t != getpid())
		wl_fail("the child's tracer is %d, not the root (%d)", t, (int)getpid());
	kill(pid, SIGKILL);
	waitpid(pid, &ws, 0);
	wl_pass();
}
