/* stopped STATEDIR - a task stopped by job control comes back stopped
 * (issue 16, item 7).
 *
 * The root forks a child that stops itself with SIGSTOP and, once
 * continued, writes a byte to a pipe; the root sees the stop (waitpid
 * WUNTRACED) and is ready. After SIGTERM the root checks that the child
 * has not run: nothing in the pipe after a moment (a child let go running
 * would have written at once). It then sends SIGCONT and must get the
 * byte, a continued status (WCONTINUED) and the child's exit 0. */
#include "wl.h"

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	int p[2];
	wl_pipe(p);
	pid_t pid = wl_fork();
	if (pid == 0) {
		close(p[0]);
		raise(SIGSTOP);
		/* continued: it runs on only after the root's SIGCONT */
		if (write(p[1], "c", 1) != 1)
			_exit(3);
		_exit(0);
	}
	close(p[1]);
	int ws;
	if (waitpid(pid, &ws, WUNTRACED) != pid || !WIFSTOPPED(ws) || WSTOPSIG(ws) != SIGSTOP)
		wl_fail("the child did not stop (status %#x)", ws);

	wl_ready();
	wl_wait_term();

	char c;
	if (wl_read_wait(p[0], &c, 1, 300) == 1)
		wl_fail("the child ran after the restore: it was not stopped any more");
	if (kill(pid, SIGCONT) < 0)
		wl_fail("SIGCONT: %s", strerror(errno));
	if (wl_read_wait(p[0], &c, 1, 5000) != 1)
		wl_fail("the child did not run after SIGCONT");
	pid_t w;
	do
		w = waitpid(pid, &ws, WCONTINUED);
	while (w < 0 && errno == EINTR);
	if (w != pid || !(WIFCONTINUED(ws) || (WIFEXITED(ws) && WEXITSTATUS(ws) == 0)))
		wl_fail("no continued status for the child (%d, %#x)", (int)w, ws);
	if (WIFCONTINUED(ws)) {
		do
			w = waitpid(pid, &ws, 0);
		while (w < 0 && errno == EINTR);
		if (w != pid || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
			wl_fail("the child ended with %#x", ws);
	}
	wl_pass();
}
