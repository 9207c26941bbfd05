/* sock_fork STATEDIR - unix connections whose two ends are in different
 * processes: a stream and a datagram socketpair split across fork (the
 * parent keeps one end, the child the other), each with data queued in
 * both directions, and a listener on an abstract name in the parent with
 * a client in the child, connected and accepted, plus a second client
 * connection from the child that is not accepted yet. After restore each
 * side reads what the other queued, they talk once more, and the pending
 * connection is accepted and carries data. */
#include "wl.h"
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>

static void put(int fd, const char *s)
{
	if (send(fd, s, strlen(s), MSG_NOSIGNAL) != (ssize_t)strlen(s))
		wl_fail("send %s: %s", s, strerror(errno));
}

static void expect(int fd, const char *want, const char *who)
{
	char buf[256] = "";
	ssize_t n = recv(fd, buf, strlen(want), MSG_WAITALL);
	if (n != (ssize_t)strlen(want) || memcmp(buf, want, strlen(want)) != 0)
		wl_fail("%s: got %zd bytes %.*s, expected %s", who, n, (int)(n > 0 ? n : 0), buf, want);
}

static socklen_t abstract(struct sockaddr_un *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	size_t len = strlen(name);
	memcpy(a->sun_path + 1, name, len);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int st[2], dg[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, st) < 0 || socketpair(AF_UNIX, SOCK_DGRAM, 0, dg) < 0)
		wl_fail("socketpair: %s", strerror(errno));
	char name[64];
	snprintf(name, sizeof(name), "crest-sock-fork-%d", getpid());
	struct sockaddr_un addr;
	socklen_t alen = abstract(&addr, name);
	int lst = socket(AF_UNIX, SOCK_STREAM, 0);
	if (lst < 0 || bind(lst, (struct sockaddr *)&addr, alen) < 0 || listen(lst, 4) < 0)
		wl_fail("listen: %s", strerror(errno));
	int go[2];
	wl_pipe(go);
	pid_t child = wl_fork();
	if (child == 0) {
		close(st[0]);
		close(dg[0]);
		close(lst);
		close(go[1]);
		int c1 = socket(AF_UNIX, SOCK_STREAM, 0), c2 = socket(AF_UNIX, SOCK_STREAM, 0);
		if (connect(c1, (struct sockaddr *)&addr, alen) < 0 ||
		    connect(c2, (struct sockaddr *)&addr, alen) < 0)
			_exit(10);
		put(st[1], "from child");
		put(dg[1], "child datagram");
		put(c1, "client says hi");
		char c;
		if (read(go[0], &c, 1) != 1) /* after restore */
			_exit(11);
		expect(st[1], "from parent", "child stream");
		char buf[64] = "";
		if (recv(dg[1], buf, sizeof(buf), 0) != 15 || strcmp(buf, "parent datagram") != 0)
			_exit(12);
		expect(c1, "server says hi", "child client");
		put(st[1], "again");
		put(c2, "late client");
		expect(c2, "accepted late", "pending client");
		_exit(0);
	}
	close(st[1]);
	close(dg[1]);
	close(go[0]);
	int a1 = wl_accept(lst, "accept");
	put(st[0], "from parent");
	put(dg[0], "parent datagram");
	put(a1, "server says hi");
	usleep(100000); /* the child's sends and its second connect are in */

	wl_ready();
	wl_wait_term();

	expect(st[0], "from child", "parent stream");
	char buf[64] = "";
	if (recv(dg[0], buf, sizeof(buf), MSG_DONTWAIT) != 14 || strcmp(buf, "child datagram") != 0)
		wl_fail("parent datagram: %s", buf);
	expect(a1, "client says hi", "server");
	if (write(go[1], "g", 1) != 1)
		wl_fail("wake the child: %s", strerror(errno));
	expect(st[0], "again", "parent stream after restore");
	int a2 = wl_accept(lst, "accept the pending connection");
	expect(a2, "late client", "pending connection");
	put(a2, "accepted late");
	int status;
	if (waitpid(child, &status, 0) != child || !WIFEXITED(status) || WEXITSTATUS(status) != 0)
		wl_fail("child ended with status %#x", status);
	wl_pass();
}
