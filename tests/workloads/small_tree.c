/* small_tree STATEDIR [socket] - root, child, grandchild.
 *
 * Every task remembers its ppid and waits for SIGTERM. The root writes
 * `<statedir>/pids` ("ROOT CHILD GRANDCHILD\n") before ready. With `socket`
 * the grandchild holds an AF_NETLINK socket on fd SOCK_FD with the answer
 * to an RTM_GETLINK dump waiting to be read (an fd crest refuses: the
 * kernel's messages cannot be queued again) and the root appends a byte to
 * `<statedir>/progress` every 10 ms until SIGTERM, so the harness sees it
 * make progress.
 *
 * On SIGTERM the root forwards SIGTERM to the child, the child to the
 * grandchild; each checks its ppid, reaps its child (which must exit 0) and
 * exits 0 if all is well; the root writes the verdict. */
#include "wl.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>

#define SOCK_FD 7

static int ready_pipe[2];

static void wait_term(void)
{
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	sigdelset(&cur, SIGTERM);
	while (!wl_term)
		sigsuspend(&cur);
}

static int reap(pid_t pid)
{
	int st;
	pid_t w;
	do
		w = waitpid(pid, &st, 0);
	while (w < 0 && errno == EINTR);
	return w == pid && WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}

static void grandchild(int with_socket)
{
	pid_t ppid = getppid();
	if (with_socket) {
		int s = socket(AF_NETLINK, SOCK_RAW, 0);
		if (s < 0 || dup2(s, SOCK_FD) != SOCK_FD)
			_exit(5);
		close(s);
		/* struct nlmsghdr + struct rtgenmsg: RTM_GETLINK, dump */
		struct {
			unsigned len;
			unsigned short type, flags;
			unsigned seq, pid;
			unsigned char family, pad[3];
		} req = {sizeof(req), 18, 0x301, 1, 0, AF_UNSPEC, {0}};
		struct sockaddr kernel = {.sa_family = AF_NETLINK};
		if (sendto(SOCK_FD, &req, sizeof(req), 0, &kernel, sizeof(kernel)) < 0)
			_exit(6);
	}
	int rec[2] = {2, (int)getpid()};
	if (write(ready_pipe[1], rec, sizeof(rec)) != sizeof(rec))
		_exit(3);
	wait_term();
	_exit(getppid() == ppid ? 0 : 4);
}

static void child(int with_socket)
{
	pid_t ppid = getppid();
	pid_t g = fork();
	if (g < 0)
		_exit(5);
	if (g == 0)
		grandchild(with_socket);
	int rec[2] = {1, (int)getpid()};
	if (write(ready_pipe[1], rec, sizeof(rec)) != sizeof(rec))
		_exit(3);
	wait_term();
	kill(g, SIGTERM);
	int bad = reap(g) < 0;
	_exit(bad ? 6 : getppid() == ppid ? 0 : 4);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int with_socket = argc > 2 && !strcmp(argv[2], "socket");
	sigset_t term = wl_block_term();
	wl_pipe(ready_pipe);
	pid_t c = wl_fork();
	if (c == 0)
		child(with_socket);
	pid_t got[3] = {0, 0, 0};
	for (int i = 0; i < 2; i++) {
		int rec[2];
		if (read(ready_pipe[0], rec, sizeof(rec)) != sizeof(rec))
			wl_fail("a descendant died before it was ready");
		if (rec[0] != 1 && rec[0] != 2)
			wl_fail("bad ready record");
		got[rec[0]] = rec[1];
	}
	if (got[1] != c || !got[2])
		wl_fail("ready records: child %d grandchild %d, forked child %d", got[1], got[2], c);
	char buf[64];
	int n = snprintf(buf, sizeof(buf), "%d %d %d\n", getpid(), c, got[2]);
	if (wl_write_file("pids", buf, (size_t)n) < 0)
		wl_fail("write pids: %s", strerror(errno));
	pid_t ppid = getppid();
	if (with_socket) {
		char path[4096];
		snprintf(path, sizeof(path), "%s/progress", wl_dir);
		int fd = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd < 0)
			wl_fail("open %s: %s", path, strerror(errno));
		sigprocmask(SIG_UNBLOCK, &term, NULL);
		wl_ready();
		while (!wl_term) {
			if (write(fd, ".", 1) != 1 && errno != EINTR)
				wl_fail("write progress: %s", strerror(errno));
			usleep(10000);
		}
		wl_after();
	} else {
		wl_ready();
		wl_wait_term();
	}
	kill(c, SIGTERM);
	if (reap(c) < 0)
		wl_fail("child %d (or its child) did not end well", c);
	if (getppid() != ppid)
		wl_fail("ppid %d, expected %d", getppid(), ppid);
	wl_pass();
}
