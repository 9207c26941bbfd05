/* scm_rights STATEDIR - files in flight: passed with SCM_RIGHTS in unix
 * messages not received yet (issue 16, item 2).
 *
 * Queued before the dump, never received until after the restore:
 *   stream pair P: "X" with four files (a pipe's read end the task
 *     closed, holding "pipedata"; a memfd it closed, holding
 *     "memfd-content"; an eventfd it closed, at 5; the pipe's write end W,
 *     which it keeps), then "tail" (in a stream the files come back with
 *     the bytes queued before them since the last files: the kernel shows
 *     no boundary there, so none are queued before "X");
 *   datagram pair D: "dgram1" with a regular file it closed (at offset 3),
 *     then "dgram2" alone;
 *   stream pair S: one end passed in its own queue (the message carries
 *     the socket that holds it);
 *   datagram pair C, its receiving end with SO_PASSCRED: "cred" sent by a
 *     child K, which waits on a pipe until the end (SCM_CREDENTIALS).
 * After SIGTERM each message must come with exactly its files, each file
 * with its contents and offset, W the very description the task kept
 * (kcmp), S's file the socket itself, and "cred" must name K's pid and
 * the task's uid and gid. */
#include "wl.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/uio.h>

#define KCMP_FILE 0

static void send_fds(int s, const char *data, const int *fds, int n)
{
	char ctl[CMSG_SPACE(sizeof(int) * 8)] = {0};
	struct iovec iov = {.iov_base = (void *)data, .iov_len = strlen(data)};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
	if (n) {
		m.msg_control = ctl;
		m.msg_controllen = CMSG_SPACE(sizeof(int) * n);
		struct cmsghdr *c = CMSG_FIRSTHDR(&m);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * n);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * n);
	}
	if (sendmsg(s, &m, 0) != (ssize_t)strlen(data))
		wl_fail("sendmsg %s: %s", data, strerror(errno));
}

/* Receives up to `len` bytes and the files with them; returns how many
 * files came (their fds in `fds`). */
static int recv_fds(int s, char *buf, size_t len, int *fds)
{
	char ctl[CMSG_SPACE(sizeof(int) * 8)];
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	struct msghdr m = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl)};
	struct pollfd pf = {.fd = s, .events = POLLIN};
	if (poll(&pf, 1, 10000) != 1)
		wl_fail("nothing to receive");
	ssize_t r = recvmsg(s, &m, MSG_CMSG_CLOEXEC);
	if (r < 0)
		wl_fail("recvmsg: %s", strerror(errno));
	buf[r] = 0;
	int n = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS) {
			n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
			memcpy(fds, CMSG_DATA(c), sizeof(int) * n);
		}
	return n;
}

static void expect(int s, const char *want, int nfds, int *fds, size_t len)
{
	char buf[64];
	int n = recv_fds(s, buf, len, fds);
	if (strcmp(buf, want))
		wl_fail("received \"%s\", expected \"%s\"", buf, want);
	if (n != nfds)
		wl_fail("\"%s\" came with %d files, expected %d", want, n, nfds);
}

/* Receives "cred" on `s` with its sender's credentials. */
static struct ucred recv_creds(int s)
{
	char buf[16] = {0};
	char ctl[CMSG_SPACE(sizeof(struct ucred))];
	struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf) - 1};
	struct msghdr m = {
		.msg_iov = &iov, .msg_iovlen = 1, .msg_control = ctl, .msg_controllen = sizeof(ctl)};
	struct pollfd pf = {.fd = s, .events = POLLIN};
	if (poll(&pf, 1, 10000) != 1 || recvmsg(s, &m, 0) < 0)
		wl_fail("no \"cred\" message: %s", strerror(errno));
	if (strcmp(buf, "cred"))
		wl_fail("received \"%s\", expected \"cred\"", buf);
	struct ucred u = {0};
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
		if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS)
			memcpy(&u, CMSG_DATA(c), sizeof(u));
	return u;
}

static int same_file(int a, int b)
{
	return syscall(SYS_kcmp, getpid(), getpid(), KCMP_FILE, a, b) == 0;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();

	int p[2], d[2], s[2], pipefd[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, p) || socketpair(AF_UNIX, SOCK_DGRAM, 0, d) ||
	    socketpair(AF_UNIX, SOCK_STREAM, 0, s))
		wl_fail("socketpair: %s", strerror(errno));
	wl_pipe(pipefd);
	if (write(pipefd[1], "pipedata", 8) != 8)
		wl_fail("write the pipe");
	int mfd = memfd_create("flight", 0);
	if (mfd < 0 || write(mfd, "memfd-content", 13) != 13)
		wl_fail("memfd: %s", strerror(errno));
	int efd = eventfd(5, 0);
	if (efd < 0)
		wl_fail("eventfd: %s", strerror(errno));
	char path[4096];
	snprintf(path, sizeof(path), "%s/flight.txt", wl_dir);
	int f = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (f < 0 || write(f, "0123456789", 10) != 10 || lseek(f, 3, SEEK_SET) != 3)
		wl_fail("the regular file: %s", strerror(errno));

	int four[4] = {pipefd[0], mfd, efd, pipefd[1]};
	send_fds(p[1], "X", four, 4);
	send_fds(p[1], "tail", NULL, 0);
	send_fds(d[1], "dgram1", &f, 1);
	send_fds(d[1], "dgram2", NULL, 0);
	send_fds(s[1], "self", &s[0], 1);
	close(pipefd[0]);
	close(mfd);
	close(efd);
	close(f);

	int c[2], hold[2], one = 1;
	if (socketpair(AF_UNIX, SOCK_DGRAM, 0, c) ||
	    setsockopt(c[0], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)))
		wl_fail("the credentials pair: %s", strerror(errno));
	wl_pipe(hold);
	pid_t k = wl_fork();
	if (k == 0) {
		close(hold[1]);
		send_fds(c[1], "cred", NULL, 0);
		char x;
		while (read(hold[0], &x, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(hold[0]);
	struct pollfd pf = {.fd = c[0], .events = POLLIN};
	if (poll(&pf, 1, 10000) != 1)
		wl_fail("K's message did not arrive");

	wl_ready();
	wl_wait_term();

	int got[8];
	expect(p[0], "X", 4, got, 1);
	char buf[32] = {0};
	if (read(got[0], buf, 8) != 8 || memcmp(buf, "pipedata", 8))
		wl_fail("the pipe in flight holds \"%s\"", buf);
	memset(buf, 0, sizeof(buf));
	if (pread(got[1], buf, 13, 0) != 13 || memcmp(buf, "memfd-content", 13))
		wl_fail("the memfd in flight holds \"%s\"", buf);
	uint64_t v = 0;
	if (read(got[2], &v, 8) != 8 || v != 5)
		wl_fail("the eventfd in flight is at %llu", (unsigned long long)v);
	if (!same_file(got[3], pipefd[1]))
		wl_fail("the pipe's write end in flight is not the one the task kept");
	if (write(got[3], "more", 4) != 4 || read(got[0], buf, 4) != 4 || memcmp(buf, "more", 4))
		wl_fail("the pipe's ends in flight are not one pipe");
	expect(p[0], "tail", 0, got, 4);

	expect(d[0], "dgram1", 1, got, 32);
	if (lseek(got[0], 0, SEEK_CUR) != 3)
		wl_fail("the file in flight is at offset %ld", (long)lseek(got[0], 0, SEEK_CUR));
	memset(buf, 0, sizeof(buf));
	if (read(got[0], buf, 7) != 7 || memcmp(buf, "3456789", 7))
		wl_fail("the file in flight reads \"%s\"", buf);
	expect(d[0], "dgram2", 0, got, 32);

	expect(s[0], "self", 1, got, 4);
	if (!same_file(got[0], s[0]))
		wl_fail("the socket passed in its own queue came back as another");

	struct ucred u = recv_creds(c[0]);
	if (u.pid != k || u.uid != getuid() || u.gid != getgid())
		wl_fail("\"cred\" says pid %d uid %u gid %u, not %d %u %u", u.pid, u.uid, u.gid, k,
			getuid(), getgid());
	close(hold[1]);
	int st = wl_waitpid(k, "wait for K");
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		wl_fail("K ended with status %#x", st);
	wl_pass();
}
