/* launch - start a program in a new session with only fds 0-2 open.
 *
 * usage: launch [--no-setsid] PROGRAM [ARGS...]
 * Closes every fd >= 3 (close_range, or a loop when the kernel lacks it),
 * calls setsid() (unless --no-setsid: then the program stays in the
 * caller's session, as a job of a shell does) and execvp's its arguments. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef SYS_close_range
#define SYS_close_range 436
#endif

int main(int argc, char **argv)
{
	int new_session = 1;
	if (argc > 1 && strcmp(argv[1], "--no-setsid") == 0) {
		new_session = 0;
		argv++;
		argc--;
	}
	if (argc < 2) {
		fprintf(stderr, "usage: launch [--no-setsid] PROGRAM [ARGS...]\n");
		return 2;
	}
	if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0) {
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
	}
	if (new_session && setsid() < 0) {
		fprintf(stderr, "launch: setsid: %s\n", strerror(errno));
		return 127;
	}
	execvp(argv[1], argv + 1);
	fprintf(stderr, "launch: exec %s: %s\n", argv[1], strerror(errno));
	return 127;
}
