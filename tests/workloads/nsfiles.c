/* nsfiles STATEDIR - namespace files held open (/proc/self/ns/KIND) of
 * the namespaces the task shares with the machine come back open on the
 * same namespaces (issue 16, item 5). Run in the host flavor only: in
 * the others the namespaces are the tree's own, which crest refuses to
 * carry as files yet.
 *
 * The root opens /proc/self/ns/{net,uts,ipc,pid,user,mnt,cgroup,time} and
 * records each file's inode; after SIGTERM each fd must still be a file
 * of the same namespace (same inode as before and as /proc/self/ns now),
 * and setns through the net one must work. */
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
		else if (st.st_ino != inos[i] || now.st_ino != inos[i])
			wl_add("%s: fd on namespace %lu, was %lu, the task is in %lu; ", kinds[i],
			    (unsigned long)st.st_ino, (unsigned long)inos[i],
			    (unsigned long)now.st_ino);
	}
	if (setns(fds[0], CLONE_NEWNET) < 0)
		wl_add("setns through the net fd: %s; ", strerror(errno));
	if (wl_mlen)
		wl_fail("%s", wl_msg);
	wl_pass();
}
