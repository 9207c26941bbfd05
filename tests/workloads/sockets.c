/* sockets STATEDIR [tcp] - sockets survive with their queued data:
 * unix stream, datagram and seqpacket pairs with data queued both ways;
 * a listener bound to a path with an accepted connection (data queued both
 * ways) and a connection not accepted yet; an abstract listener with a
 * connected client; TCP listeners on 127.0.0.1 and ::1 (V6ONLY); a bound
 * UDP socket with a datagram queued from another port; socket options and
 * O_NONBLOCK. With "tcp": an established TCP connection over loopback with
 * data in flight both ways (the workload asks the harness for
 * --tcp-established through STATEDIR/dump-args). */
#include "wl.h"
#include <arpa/inet.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

static void pair_or_die(int type, int sv[2], const char *what)
{
	if (socketpair(AF_UNIX, type, 0, sv) < 0)
		wl_fail("socketpair(%s): %s", what, strerror(errno));
}

static void send_or_die(int fd, const char *msg, const char *what)
{
	ssize_t n = send(fd, msg, strlen(msg), MSG_DONTWAIT);
	if (n != (ssize_t)strlen(msg))
		wl_fail("send on %s: %zd (%s)", what, n, strerror(errno));
}

/* The next message (a datagram, or what a stream holds) must be `want`. */
static void expect(int fd, const char *want, const char *what)
{
	char buf[4096];
	struct pollfd p = { .fd = fd, .events = POLLIN };
	if (poll(&p, 1, 2000) != 1)
		wl_fail("%s: nothing to read (wanted \"%s\")", what, want);
	ssize_t n = recv(fd, buf, sizeof(buf) - 1, MSG_DONTWAIT);
	if (n < 0)
		wl_fail("%s: recv: %s (wanted \"%s\")", what, strerror(errno), want);
	buf[n] = 0;
	if (strcmp(buf, want) != 0)
		wl_fail("%s: got \"%s\", wanted \"%s\"", what, buf, want);
}

/* Nothing more is queued on `fd`. */
static void expect_empty(int fd, const char *what)
{
	char c;
	ssize_t n = recv(fd, &c, 1, MSG_DONTWAIT);
	if (n >= 0 || errno != EAGAIN)
		wl_fail("%s: more data than was sent (%zd)", what, n);
}

/* Both ways still carry data. */
static void round_trip(int a, int b, const char *what)
{
	send_or_die(a, "ping", what);
	expect(b, "ping", what);
	send_or_die(b, "pong", what);
	expect(a, "pong", what);
}

static socklen_t un_addr(struct sockaddr_un *a, const char *path, int abstract)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	size_t len = strlen(path);
	if (abstract) {
		memcpy(a->sun_path + 1, path, len);
		return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + len);
	}
	memcpy(a->sun_path, path, len + 1);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
}

static int un_listener(const char *path, int abstract)
{
	struct sockaddr_un a;
	socklen_t len = un_addr(&a, path, abstract);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, len) < 0 || listen(fd, 8) < 0)
		wl_fail("unix listener %s: %s", path, strerror(errno));
	return fd;
}

static int un_connect(const char *path, int abstract)
{
	struct sockaddr_un a;
	socklen_t len = un_addr(&a, path, abstract);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&a, len) < 0)
		wl_fail("connect to %s: %s", path, strerror(errno));
	return fd;
}

/* The loopback address of `family` with `port`, in `ss`; returns its length. */
static socklen_t loopback(int family, int port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)ss;
		s->sin_family = AF_INET;
		s->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		s->sin_port = htons((uint16_t)port);
		return sizeof(*s);
	}
	struct sockaddr_in6 *s = (struct sockaddr_in6 *)ss;
	s->sin6_family = AF_INET6;
	s->sin6_addr = in6addr_loopback;
	s->sin6_port = htons((uint16_t)port);
	return sizeof(*s);
}

static int port_of(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -1;
	if (ss.ss_family == AF_INET)
		return ntohs(((struct sockaddr_in *)&ss)->sin_port);
	return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
}

static int tcp_listener(int family, int *port)
{
	int fd = socket(family, SOCK_STREAM, 0);
	if (fd < 0)
		return -1;
	int one = 1;
	struct sockaddr_storage ss;
	socklen_t len = loopback(family, 0, &ss);
	if (family == AF_INET)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	else
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 5) < 0) {
		close(fd);
		return -1;
	}
	*port = port_of(fd);
	return fd;
}

static int tcp_connect(int family, int port)
{
	int fd = socket(family, SOCK_STREAM, 0);
	struct sockaddr_storage ss;
	socklen_t len = loopback(family, port, &ss);
	if (fd < 0 || connect(fd, (struct sockaddr *)&ss, len) < 0)
		wl_fail("tcp connect to port %d: %s", port, strerror(errno));
	return fd;
}

static int udp_bound(int *port)
{
	int fd = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in s = { .sin_family = AF_INET };
	s.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (fd < 0 || bind(fd, (struct sockaddr *)&s, sizeof(s)) < 0)
		wl_fail("udp bind: %s", strerror(errno));
	*port = port_of(fd);
	return fd;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int tcp = argc > 2 && strcmp(argv[2], "tcp") == 0;
	char dir[PATH_MAX], path[PATH_MAX + 16], abs_name[64];
	if (!realpath(wl_dir, dir))
		wl_fail("realpath %s: %s", wl_dir, strerror(errno));
	snprintf(path, sizeof(path), "%s/srv.sock", dir);
	snprintf(abs_name, sizeof(abs_name), "crest-sockets-%d", (int)getpid());

	/* Pairs with data queued both ways. */
	int st[2], dg[2], sp[2];
	pair_or_die(SOCK_STREAM, st, "stream");
	pair_or_die(SOCK_DGRAM, dg, "dgram");
	pair_or_die(SOCK_SEQPACKET, sp, "seqpacket");
	send_or_die(st[0], "stream a to b", "stream");
	send_or_die(st[0], ", more", "stream");
	send_or_die(st[1], "stream b to a", "stream");
	send_or_die(dg[0], "dgram one", "dgram");
	send_or_die(dg[0], "dgram two", "dgram");
	send_or_die(dg[1], "dgram back", "dgram");
	send_or_die(sp[0], "seq one", "seqpacket");
	send_or_die(sp[0], "seq two", "seqpacket");
	send_or_die(sp[1], "seq back", "seqpacket");
	int dup_st = dup(st[0]);
	fcntl(st[1], F_SETFL, O_NONBLOCK);
	int one = 1, rcvbuf = 123456;
	setsockopt(dg[1], SOL_SOCKET, SO_PASSCRED, &one, sizeof(one));
	setsockopt(sp[1], SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
	int want_rcvbuf = 0;
	socklen_t ol = sizeof(want_rcvbuf);
	getsockopt(sp[1], SOL_SOCKET, SO_RCVBUF, &want_rcvbuf, &ol);

	/* A named listener: one accepted connection, one waiting. */
	unlink(path);
	int lis = un_listener(path, 0);
	int cli = un_connect(path, 0);
	int srv = wl_accept(lis, "accept");
	send_or_die(cli, "to server", "named");
	send_or_die(srv, "to client", "named");
	int waiting = un_connect(path, 0);

	/* An abstract listener with a connected client. */
	int alis = un_listener(abs_name, 1);
	int acli = un_connect(abs_name, 1);
	int asrv = wl_accept(alis, "accept (abstract)");
	send_or_die(acli, "abstract hello", "abstract");

	/* TCP listeners; IPv6 only if this namespace has ::1. */
	int p4 = 0, p6 = 0;
	int t4 = tcp_listener(AF_INET, &p4);
	if (t4 < 0)
		wl_fail("tcp listener on 127.0.0.1: %s", strerror(errno));
	int t6 = tcp_listener(AF_INET6, &p6);

	/* UDP: a datagram queued from a port whose socket is gone. */
	int up = 0, sp_port = 0;
	int udp = udp_bound(&up);
	int sender = udp_bound(&sp_port);
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons((uint16_t)up) };
	to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (sendto(sender, "udp datagram", 12, 0, (struct sockaddr *)&to, sizeof(to)) != 12)
		wl_fail("udp sendto: %s", strerror(errno));
	close(sender);

	/* An established TCP connection with data in flight both ways. */
	int tl = -1, tc = -1, ts = -1, tport = 0;
	if (tcp) {
		tl = tcp_listener(AF_INET, &tport);
		tc = tcp_connect(AF_INET, tport);
		ts = wl_accept(tl, "tcp accept");
		close(tl);
		send_or_die(tc, "tcp to server", "tcp");
		send_or_die(ts, "tcp to client", "tcp");
		usleep(100000);
		const char *args = "--tcp-established\n";
		if (wl_write_file("dump-args", args, strlen(args)) < 0)
			wl_fail("write dump-args: %s", strerror(errno));
	}

	wl_ready();
	wl_wait_term();

	expect(st[1], "stream a to b, more", "stream b");
	expect(st[0], "stream b to a", "stream a");
	round_trip(dup_st, st[1], "stream (dup)");
	if (!(fcntl(st[1], F_GETFL) & O_NONBLOCK) || (fcntl(st[0], F_GETFL) & O_NONBLOCK))
		wl_fail("O_NONBLOCK not as set");
	expect(dg[1], "dgram one", "dgram 1");
	expect(dg[1], "dgram two", "dgram 2");
	expect(dg[0], "dgram back", "dgram back");
	expect_empty(dg[1], "dgram b");
	round_trip(dg[0], dg[1], "dgram");
	expect(sp[1], "seq one", "seqpacket 1");
	expect(sp[1], "seq two", "seqpacket 2");
	expect(sp[0], "seq back", "seqpacket back");
	round_trip(sp[0], sp[1], "seqpacket");
	int v = 0;
	ol = sizeof(v);
	getsockopt(dg[1], SOL_SOCKET, SO_PASSCRED, &v, &ol);
	if (!v)
		wl_fail("SO_PASSCRED lost");
	getsockopt(sp[1], SOL_SOCKET, SO_RCVBUF, &v, &ol);
	if (v != want_rcvbuf)
		wl_fail("SO_RCVBUF %d, wanted %d", v, want_rcvbuf);
	getsockopt(sp[1], SOL_SOCKET, SO_TYPE, &v, &ol);
	if (v != SOCK_SEQPACKET)
		wl_fail("seqpacket socket has type %d", v);

	expect(srv, "to server", "named server");
	expect(cli, "to client", "named client");
	round_trip(cli, srv, "named");
	int w = wl_accept(lis, "accept of the waiting connection");
	round_trip(waiting, w, "named (accepted after restore)");
	int again = un_connect(path, 0);
	int again_s = wl_accept(lis, "accept of a new connection");
	round_trip(again, again_s, "named (new)");
	struct sockaddr_un got;
	socklen_t gl = sizeof(got);
	if (getsockname(lis, (struct sockaddr *)&got, &gl) < 0 || strcmp(got.sun_path, path) != 0)
		wl_fail("listener name lost");

	expect(asrv, "abstract hello", "abstract");
	round_trip(acli, asrv, "abstract");
	int a2 = un_connect(abs_name, 1);
	int a2s = wl_accept(alis, "abstract accept after restore");
	round_trip(a2, a2s, "abstract (new)");

	if (port_of(t4) != p4)
		wl_fail("tcp v4 listener port %d, was %d", port_of(t4), p4);
	int c4 = tcp_connect(AF_INET, p4);
	int s4 = wl_accept(t4, "tcp v4 accept after restore");
	round_trip(c4, s4, "tcp v4 (new)");
	getsockopt(t4, SOL_SOCKET, SO_REUSEADDR, &v, &ol);
	if (!v)
		wl_fail("SO_REUSEADDR lost");
	if (t6 >= 0) {
		if (port_of(t6) != p6)
			wl_fail("tcp v6 listener port %d, was %d", port_of(t6), p6);
		getsockopt(t6, IPPROTO_IPV6, IPV6_V6ONLY, &v, &ol);
		if (!v)
			wl_fail("IPV6_V6ONLY lost");
		int c6 = tcp_connect(AF_INET6, p6);
		int s6 = wl_accept(t6, "tcp v6 accept after restore");
		round_trip(c6, s6, "tcp v6 (new)");
	}

	struct sockaddr_in from;
	socklen_t fl = sizeof(from);
	char buf[64];
	struct pollfd pu = { .fd = udp, .events = POLLIN };
	if (poll(&pu, 1, 2000) != 1)
		wl_fail("udp: no datagram after restore");
	ssize_t n = recvfrom(udp, buf, sizeof(buf) - 1, MSG_DONTWAIT, (struct sockaddr *)&from, &fl);
	if (n != 12 || memcmp(buf, "udp datagram", 12) != 0)
		wl_fail("udp: got %zd bytes", n);
	if (ntohs(from.sin_port) != sp_port)
		wl_fail("udp: sender port %d, was %d", ntohs(from.sin_port), sp_port);
	if (port_of(udp) != up)
		wl_fail("udp port %d, was %d", port_of(udp), up);

	if (tcp) {
		expect(ts, "tcp to server", "tcp server");
		expect(tc, "tcp to client", "tcp client");
		round_trip(tc, ts, "tcp established");
	}
	wl_pass();
}
