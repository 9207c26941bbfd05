/* deleted_dirs STATEDIR - a cwd, an open directory and an open device node
 * removed since they were entered or opened come back as they were:
 * removed, but still there for the task (issue 16, item 5).
 *
 * The root makes STATEDIR/gone-cwd (mode 0750), enters it and removes it;
 * opens STATEDIR/gone-dir (mode 0705) and removes it; and, where it may
 * (not in a user namespace), makes STATEDIR/gone-null (/dev/null's
 * numbers), opens it and removes it. After SIGTERM each must still be
 * what it was: its kind, mode and device numbers, no link left (nlink 0),
 * "(deleted)" in its /proc link, and a file cannot be made in the removed
 * cwd; writing to the node still works. */
#include "wl.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>

static void check_gone(const char *what, const struct stat *st, mode_t kind, mode_t perm)
{
	if ((st->st_mode & S_IFMT) != kind || (st->st_mode & 07777) != perm)
		wl_add("%s: mode %o, expected %o; ", what, st->st_mode, kind | perm);
	if (st->st_nlink != 0)
		wl_add("%s: %lu links, expected none (removed); ", what,
		    (unsigned long)st->st_nlink);
}

static void check_link(const char *link)
{
	char buf[4096];
	ssize_t n = readlink(link, buf, sizeof(buf) - 1);
	if (n < 0) {
		wl_add("readlink %s: %s; ", link, strerror(errno));
		return;
	}
	buf[n] = 0;
	if (!strstr(buf, " (deleted)"))
		wl_add("%s is %s, not a removed file; ", link, buf);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	umask(0);
	char cwd[4096], dir[4096], node[4096];
	snprintf(cwd, sizeof(cwd), "%s/gone-cwd", wl_dir);
	snprintf(dir, sizeof(dir), "%s/gone-dir", wl_dir);
	snprintf(node, sizeof(node), "%s/gone-null", wl_dir);
	if (mkdir(cwd, 0750) < 0 || mkdir(dir, 0705) < 0)
		wl_fail("mkdir: %s", strerror(errno));
	int dfd = open(dir, O_RDONLY | O_DIRECTORY);
	if (dfd < 0)
		wl_fail("open %s: %s", dir, strerror(errno));
	int nfd = -1;
	if (mknod(node, S_IFCHR | 0620, makedev(1, 3)) == 0) {
		nfd = open(node, O_RDWR);
		if (nfd < 0)
			wl_fail("open %s: %s", node, strerror(errno));
		unlink(node);
	}
	if (chdir(cwd) < 0 || rmdir(cwd) < 0 || rmdir(dir) < 0)
		wl_fail("chdir/rmdir: %s", strerror(errno));

	wl_ready();
	wl_wait_term();

	struct stat st;
	if (stat(".", &st) < 0)
		wl_add("stat of the cwd: %s; ", strerror(errno));
	else
		check_gone("cwd", &st, S_IFDIR, 0750);
	check_link("/proc/self/cwd");
	if (open("made-here", O_CREAT | O_WRONLY, 0600) >= 0 || errno != ENOENT)
		wl_add("a file could be made in the removed cwd (errno %d); ", errno);
	if (fstat(dfd, &st) < 0)
		wl_add("fstat of the directory: %s; ", strerror(errno));
	else
		check_gone("directory", &st, S_IFDIR, 0705);
	char link[64];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", dfd);
	check_link(link);
	if (nfd >= 0) {
		if (fstat(nfd, &st) < 0) {
			wl_add("fstat of the node: %s; ", strerror(errno));
		} else {
			check_gone("node", &st, S_IFCHR, 0620);
			if (major(st.st_rdev) != 1 || minor(st.st_rdev) != 3)
				wl_add("node: device %u:%u, expected 1:3; ", major(st.st_rdev),
				    minor(st.st_rdev));
		}
		snprintf(link, sizeof(link), "/proc/self/fd/%d", nfd);
		check_link(link);
		if (write(nfd, "x", 1) != 1)
			wl_add("write to the node: %s; ", strerror(errno));
	}
	if (wl_mlen)
		wl_fail("%s", wl_msg);
	wl_pass();
}
