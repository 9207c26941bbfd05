/* fork_loop - forks and reaps children as fast as it can until killed: the
 * load under which a restore must still get its pids (no state directory,
 * no verdict: the harness kills it). */
#include <sys/wait.h>
#include <unistd.h>

int main(void)
{
	for (;;) {
		pid_t p = fork();
		if (p == 0)
			_exit(0);
		if (p > 0)
			waitpid(p, 0, 0);
	}
}
