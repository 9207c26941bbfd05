/* launch - start a program in a new session with only fds 0-2 open.
 *
 * usage: launch PROGRAM [ARGS...]
 * Closes every fd >= 3 (close_range, or a loop when the kernel lacks it),
 * calls setsid() and execvp's its arguments. */
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
	if (argc < 2) {
		fprintf(stderr, "usage: launch PROGRAM [ARGS...]\n");
		return 2;
	}
	if (syscall(SYS_close_range, 3U, ~0U, 0U) < 0) {
		for (int fd = 3; fd < 1024; fd++)
			close(fd);
	}
	if (setsid() < 0) {
		fprintf(stderr, "launch: setsid: %s\n", strerror(errno));
		return 127;
	}
	execvp(argv[1], argv + 1);
	fprintf(stderr, "launch: exec %s: %s\n", argv[1], strerror(errno));
	return 127;
}
