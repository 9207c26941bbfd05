/* unix_relative STATEDIR - unix sockets bound to relative paths come back
 * bound to the same relative names, in the same directory (issue 16,
 * item 4; CRIU's name_dir).
 *
 * The root enters STATEDIR and binds a datagram socket to "rel.sock" and
 * a stream listener to "rel-l.sock". After SIGTERM each must still have
 * its relative name (getsockname), a datagram sent to "rel.sock" must
 * arrive, a connection to "rel-l.sock" must be accepted, and the cwd must
 * be STATEDIR still. */
#include "wl.h"

#include <stddef.h>
#include <sys/un.h>

static socklen_t addr_of(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	strncpy(a->sun_path, name, sizeof(a->sun_path) - 1);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(name) + 1);
}

static void check_name(int fd, const char *want)
{
	struct sockaddr_un a;
	socklen_t len = sizeof(a);
	if (getsockname(fd, (struct sockaddr *)&a, &len) < 0)
		wl_add("getsockname: %s; ", strerror(errno));
	else if (strcmp(a.sun_path, want) != 0)
		wl_add("bound to \"%s\", expected \"%s\"; ", a.sun_path, want);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	char dir[4096];
	if (!realpath(wl_dir, dir) || chdir(dir) < 0)
		wl_fail("enter %s: %s", wl_dir, strerror(errno));
	struct sockaddr_un a;
	int d = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	int l = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (d < 0 || l < 0)
		wl_fail("socket: %s", strerror(errno));
	socklen_t n = addr_of(&a, "rel.sock");
	if (bind(d, (struct sockaddr *)&a, n) < 0)
		wl_fail("bind rel.sock: %s", strerror(errno));
	n = addr_of(&a, "rel-l.sock");
	if (bind(l, (struct sockaddr *)&a, n) < 0 || listen(l, 4) < 0)
		wl_fail("bind rel-l.sock: %s", strerror(errno));

	wl_ready();
	wl_wait_term();

	check_name(d, "rel.sock");
	check_name(l, "rel-l.sock");
	char cwd[4096];
	if (!getcwd(cwd, sizeof(cwd)) || strcmp(cwd, dir) != 0)
		wl_add("cwd is %s, expected %s; ", cwd, dir);
	int s = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	n = addr_of(&a, "rel.sock");
	if (sendto(s, "ping", 4, 0, (struct sockaddr *)&a, n) != 4)
		wl_add("send to rel.sock: %s; ", strerror(errno));
	char buf[8];
	if (wl_read_wait(d, buf, sizeof(buf), 2000) != 4 || memcmp(buf, "ping", 4) != 0)
		wl_add("the datagram did not arrive; ");
	int c = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	n = addr_of(&a, "rel-l.sock");
	if (connect(c, (struct sockaddr *)&a, n) < 0)
		wl_add("connect to rel-l.sock: %s; ", strerror(errno));
	else if (accept(l, NULL, NULL) < 0)
		wl_add("accept: %s; ", strerror(errno));
	if (wl_mlen)
		wl_fail("%s", wl_msg);
	wl_pass();
}
