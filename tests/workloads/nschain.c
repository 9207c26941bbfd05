/* nschain PID... - the user namespace chain of each PID, read from outside.
 *
 * For each PID prints one line "PID INO:OWNER INO:OWNER ...": the inode and
 * owner uid (NS_GET_OWNER_UID, as this process sees it) of the task's user
 * namespace, then of its parent (NS_GET_PARENT), up to the namespace of
 * this process. A tool of the harness (no protocol). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/nsfs.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int bad = 0;
	for (int i = 1; i < argc; i++) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/%s/ns/user", argv[i]);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			fprintf(stderr, "nschain: open %s: %s\n", path, strerror(errno));
			bad = 1;
			continue;
		}
		printf("%s", argv[i]);
		for (int depth = 0; depth < 64; depth++) {
			struct stat st;
			uid_t owner = (uid_t)-1;
			if (fstat(fd, &st) < 0 || ioctl(fd, NS_GET_OWNER_UID, &owner) < 0) {
				fprintf(stderr, "nschain: %s: fstat/NS_GET_OWNER_UID: %s\n", path,
					strerror(errno));
				bad = 1;
				break;
			}
			printf(" %lu:%u", (unsigned long)st.st_ino, owner);
			int parent = ioctl(fd, NS_GET_PARENT);
			close(fd);
			if (parent < 0) {
				if (errno != EPERM) {
					fprintf(stderr, "nschain: %s: NS_GET_PARENT: %s\n", path,
						strerror(errno));
					bad = 1;
				}
				fd = -1;
				break;
			}
			fd = parent;
		}
		if (fd >= 0)
			close(fd);
		printf("\n");
	}
	return bad;
}
