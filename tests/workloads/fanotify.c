/* fanotify STATEDIR - a fanotify group comes back with its flags and marks
 * (issue 16, item 5): an inode mark on the state directory (FAN_OPEN |
 * FAN_CLOSE_WRITE on its entries: FAN_EVENT_ON_CHILD) and a mount mark
 * (FAN_OPEN) on the mount that holds it. After SIGTERM the group's fdinfo
 * must list the same marks, and opening a new file in the directory must
 * bring an event about it. Skipped where fanotify_init is not allowed
 * (a user namespace: it wants CAP_SYS_ADMIN in the initial one). */
#include "wl.h"

#include <sys/fanotify.h>
#include <sys/stat.h>

/* The "fanotify" lines of the group's fdinfo, a mount mark's mount id
 * left out (a mount namespace made again numbers its mounts anew). */
static void marks(int fd, char *out, size_t len)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
	int f = open(path, O_RDONLY);
	ssize_t n = f < 0 ? -1 : read(f, buf, sizeof(buf) - 1);
	if (n <= 0)
		wl_fail("read %s: %s", path, strerror(errno));
	close(f);
	buf[n] = 0;
	out[0] = 0;
	for (char *l = strtok(buf, "\n"); l; l = strtok(NULL, "\n"))
		if (!strncmp(l, "fanotify", 8) && strlen(out) + strlen(l) + 2 < len) {
			char *id = strstr(l, "mnt_id:");
			if (id) {
				strncat(out, l, (size_t)(id - l));
				strcat(out, "mnt_id:*");
				l = strchr(id, ' ') ? strchr(id, ' ') : "";
			}
			strcat(out, l);
			strcat(out, "\n");
		}
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	int g = fanotify_init(FAN_CLASS_NOTIF | FAN_NONBLOCK, O_RDONLY);
	if (g < 0)
		wl_skip("fanotify_init: %s", strerror(errno));
	if (fanotify_mark(g, FAN_MARK_ADD, FAN_OPEN | FAN_CLOSE_WRITE | FAN_EVENT_ON_CHILD,
			  AT_FDCWD, wl_dir) < 0)
		wl_fail("fanotify_mark(inode): %s", strerror(errno));
	if (fanotify_mark(g, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN, AT_FDCWD, wl_dir) < 0)
		wl_fail("fanotify_mark(mount): %s", strerror(errno));
	char before[2048], after[2048];
	marks(g, before, sizeof(before));

	wl_ready();
	wl_wait_term();

	marks(g, after, sizeof(after));
	if (strcmp(before, after))
		wl_fail("the group's marks were\n%s and are\n%s", before, after);
	char path[4096];
	snprintf(path, sizeof(path), "%s/fanotify-probe", wl_dir);
	int f = open(path, O_RDWR | O_CREAT, 0600);
	if (f < 0)
		wl_fail("open %s: %s", path, strerror(errno));
	struct stat want;
	fstat(f, &want);
	close(f);
	for (int tries = 0; tries < 100; tries++) {
		char buf[8192];
		ssize_t n = read(g, buf, sizeof(buf));
		for (char *p = buf; n > 0 && p < buf + n;) {
			struct fanotify_event_metadata *m = (void *)p;
			if (m->event_len < sizeof(*m))
				break;
			if (m->fd >= 0) {
				struct stat st;
				int same = fstat(m->fd, &st) == 0 && st.st_ino == want.st_ino;
				close(m->fd);
				if (same)
					wl_pass();
			}
			p += m->event_len;
		}
		usleep(10000);
	}
	wl_fail("no event came about %s", path);
}
