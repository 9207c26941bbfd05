/* tty_job STATEDIR TTY - a job on a terminal it does not own (its fds 0-2
 * on TTY, not its controlling terminal): after a restore with --shell-job
 * its fds 0-2 are still one terminal (crest's), which it can write to. */
#include "wl.h"

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc < 3)
		wl_fail("usage: tty_job STATEDIR TTY");
	for (int fd = 0; fd < 3; fd++) {
		const char *name = ttyname(fd);
		if (!name || strcmp(name, argv[2]) != 0)
			wl_fail("fd %d is %s, expected %s", fd, name ? name : "no terminal", argv[2]);
	}
	wl_ready();
	wl_wait_term();
	const char *first = ttyname(0);
	if (!first)
		wl_fail("fd 0 is no terminal after the restore");
	for (int fd = 1; fd < 3; fd++) {
		const char *name = ttyname(fd);
		if (!name || strcmp(name, first) != 0)
			wl_fail("fd %d is %s, fd 0 is %s", fd, name ? name : "no terminal", first);
	}
	if (write(1, "tty job says hello\n", 19) != 19)
		wl_fail("write to the terminal: %s", strerror(errno));
	wl_pass();
}
