/* nsfiles STATEDIR - namespace files held open (/proc/self/ns/KIND) come
 * back open on the task's namespaces (issue 16, item 5): in the host
 * flavor those it shares with the machine (the very same ones), in the
 * others the tree's own, made again.
 *
 * The root opens /proc/self/ns/{net,uts,ipc,pid,user,mnt,cgroup,time};
 * after SIGTERM each fd must be a file of the namespace the task is in
 * now (the same inode as /proc/self/ns/KIND; the harness compares which
 * namespaces the task is in with what it was in), and setns through the
 * net one must work. */
#include "wl.h"

#include <sched.h>
#include <sys/stat.h>

static const char *kinds[] = { "net", "uts", "ipc", "pid", "user", "mnt", "cgroup", "time" };
#define N (sizeof(kinds) / sizeof(kinds[0]))

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int fds[N];
	ino_t inos[N];
	for (size_t i = 0; i < N; i++) {
		char path[64];
		snprintf(path, sizeof(path), "/proc/self/ns/%s", kinds[i]);
		fds[i] = open(path, O_RDONLY | O_CLOEXEC);
		struct stat st;
		if (fds[i] < 0 || fstat(fds[i], &st) < 0)
			wl_fail("open %s: %s", path, strerror(errno));
		inos[i] = st.st_ino;
	}

	wl_ready();
	wl_wait_term();

	for (size_t i = 0; i < N; i++) {
		struct stat st, now;
		char path[64];
		snprintf(path, sizeof(path), "/proc/self/ns/%s", kinds[i]);
		if (fstat(fds[i], &st) < 0 || stat(path, &now) < 0)
			wl_add("%s: %s; ", kinds[i], strerror(errno));
		else if (st.st_ino != now.st_ino)
			wl_add("%s: fd on namespace %lu (was %lu), the task is in %lu; ", kinds[i],
			    (unsigned long)st.st_ino, (unsigned long)inos[i],
			    (unsigned long)now.st_ino);
	}
	if (setns(fds[0], CLONE_NEWNET) < 0)
		wl_add("setns through the net fd: %s; ", strerror(errno));
	if (wl_mlen)
		wl_fail("%s", wl_msg);
	wl_pass();
}
