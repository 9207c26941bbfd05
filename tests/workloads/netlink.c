/* netlink STATEDIR - netlink sockets come back bound, joined, connected
 * and with their options (issue 16, item 4).
 *
 *   R: NETLINK_ROUTE, SOCK_RAW, bound (port id chosen by the kernel) with
 *      groups 8 and 19 (IPv4 and IPv6 rules: quiet) in the bind mask and
 *      group 33 joined with NETLINK_ADD_MEMBERSHIP; NETLINK_PKTINFO,
 *      NETLINK_NO_ENOBUFS, NETLINK_EXT_ACK, NETLINK_GET_STRICT_CHK on, and
 *      a receive buffer of its own.
 *   D: NETLINK_ROUTE, SOCK_DGRAM, never bound.
 *   A, B: NETLINK_USERSOCK, bound to port ids of their own; B connected
 *      to A.
 * After SIGTERM each must show what it had (getsockname, getpeername,
 * SO_TYPE, SO_PROTOCOL, the membership list, the options), R must answer
 * an RTM_GETLINK dump (ending in NLMSG_DONE), and a message B sends
 * (without an address: to its connected peer) must reach A, from B. */
#include "wl.h"

#include <linux/netlink.h>
#include <linux/rtnetlink.h>

#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

struct seen {
	struct sockaddr_nl local, peer;
	int type, proto, rcvbuf;
	unsigned groups[8];
	int opts[5];
};

static const int opt_names[5] = {NETLINK_PKTINFO, NETLINK_NO_ENOBUFS, NETLINK_EXT_ACK,
				 NETLINK_GET_STRICT_CHK, NETLINK_CAP_ACK};

static void look(int s, struct seen *v)
{
	memset(v, 0, sizeof(*v));
	socklen_t l = sizeof(v->local);
	if (getsockname(s, (struct sockaddr *)&v->local, &l) < 0)
		wl_fail("getsockname: %s", strerror(errno));
	l = sizeof(v->peer);
	if (getpeername(s, (struct sockaddr *)&v->peer, &l) < 0 && errno != ENOTCONN)
		wl_fail("getpeername: %s", strerror(errno));
	l = sizeof(int);
	getsockopt(s, SOL_SOCKET, SO_TYPE, &v->type, &l);
	l = sizeof(int);
	getsockopt(s, SOL_SOCKET, SO_PROTOCOL, &v->proto, &l);
	l = sizeof(int);
	getsockopt(s, SOL_SOCKET, SO_RCVBUF, &v->rcvbuf, &l);
	l = sizeof(v->groups);
	if (getsockopt(s, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, v->groups, &l) < 0)
		wl_fail("NETLINK_LIST_MEMBERSHIPS: %s", strerror(errno));
	for (int i = 0; i < 5; i++) {
		l = sizeof(int);
		if (getsockopt(s, SOL_NETLINK, opt_names[i], &v->opts[i], &l) < 0)
			wl_fail("getsockopt(SOL_NETLINK, %d): %s", opt_names[i], strerror(errno));
	}
}

static int open_nl(int type, int proto)
{
	int s = socket(AF_NETLINK, type | SOCK_CLOEXEC, proto);
	if (s < 0)
		wl_fail("socket(AF_NETLINK, %d, %d): %s", type, proto, strerror(errno));
	return s;
}

static void bind_nl(int s, unsigned pid, unsigned groups)
{
	struct sockaddr_nl a = {.nl_family = AF_NETLINK, .nl_pid = pid, .nl_groups = groups};
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0)
		wl_fail("bind netlink to port id %u: %s", pid, strerror(errno));
}

static void on(int s, int name, int v)
{
	if (setsockopt(s, SOL_NETLINK, name, &v, sizeof(v)) < 0)
		wl_fail("setsockopt(SOL_NETLINK, %d): %s", name, strerror(errno));
}

/* R answers an RTM_GETLINK dump. */
static void ask_links(int r)
{
	struct {
		struct nlmsghdr h;
		struct ifinfomsg i;
	} req = {0};
	req.h.nlmsg_len = sizeof(req);
	req.h.nlmsg_type = RTM_GETLINK;
	req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.h.nlmsg_seq = 4242;
	req.i.ifi_family = AF_UNSPEC;
	struct sockaddr_nl k = {.nl_family = AF_NETLINK};
	if (sendto(r, &req, sizeof(req), 0, (struct sockaddr *)&k, sizeof(k)) < 0)
		wl_fail("send RTM_GETLINK: %s", strerror(errno));
	static char buf[65536];
	for (int rounds = 0; rounds < 1000; rounds++) {
		ssize_t n = wl_read_wait(r, buf, sizeof(buf), 10000);
		if (n < 0)
			wl_fail("no answer to RTM_GETLINK");
		for (struct nlmsghdr *h = (struct nlmsghdr *)buf; NLMSG_OK(h, (unsigned)n);
		     h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_seq != 4242)
				wl_fail("an answer with sequence %u", h->nlmsg_seq);
			if (h->nlmsg_type == NLMSG_DONE)
				return;
			if (h->nlmsg_type == NLMSG_ERROR)
				wl_fail("RTM_GETLINK answered with an error");
		}
	}
	wl_fail("RTM_GETLINK never ended");
}

static void same(const char *who, int s, const struct seen *before)
{
	struct seen now;
	look(s, &now);
	if (memcmp(&now.local, &before->local, sizeof(now.local)))
		wl_fail("%s: bound to port id %u groups %#x, was %u %#x", who, now.local.nl_pid,
			now.local.nl_groups, before->local.nl_pid, before->local.nl_groups);
	if (memcmp(&now.peer, &before->peer, sizeof(now.peer)))
		wl_fail("%s: connected to %u/%#x, was %u/%#x", who, now.peer.nl_pid,
			now.peer.nl_groups, before->peer.nl_pid, before->peer.nl_groups);
	if (now.type != before->type || now.proto != before->proto)
		wl_fail("%s: type %d protocol %d, was %d %d", who, now.type, now.proto,
			before->type, before->proto);
	if (now.rcvbuf != before->rcvbuf)
		wl_fail("%s: SO_RCVBUF %d, was %d", who, now.rcvbuf, before->rcvbuf);
	if (memcmp(now.groups, before->groups, sizeof(now.groups)))
		wl_fail("%s: groups %#x %#x, were %#x %#x", who, now.groups[0], now.groups[1],
			before->groups[0], before->groups[1]);
	for (int i = 0; i < 5; i++)
		if (now.opts[i] != before->opts[i])
			wl_fail("%s: SOL_NETLINK option %d is %d, was %d", who, opt_names[i],
				now.opts[i], before->opts[i]);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();

	int r = open_nl(SOCK_RAW, NETLINK_ROUTE);
	int buf = 96 * 1024;
	if (setsockopt(r, SOL_SOCKET, SO_RCVBUF, &buf, sizeof(buf)) < 0)
		wl_fail("SO_RCVBUF: %s", strerror(errno));
	bind_nl(r, 0, (1u << 7) | (1u << 18));
	on(r, NETLINK_ADD_MEMBERSHIP, 33);
	on(r, NETLINK_PKTINFO, 1);
	on(r, NETLINK_NO_ENOBUFS, 1);
	on(r, NETLINK_EXT_ACK, 1);
	on(r, NETLINK_GET_STRICT_CHK, 1);
	ask_links(r);

	int d = open_nl(SOCK_DGRAM, NETLINK_ROUTE);

	unsigned base = 0x40000000u | ((unsigned)getpid() << 4);
	int a = open_nl(SOCK_RAW, NETLINK_USERSOCK);
	bind_nl(a, base + 1, 0);
	int b = open_nl(SOCK_RAW, NETLINK_USERSOCK);
	bind_nl(b, base + 2, 0);
	struct sockaddr_nl to_a = {.nl_family = AF_NETLINK, .nl_pid = base + 1};
	if (connect(b, (struct sockaddr *)&to_a, sizeof(to_a)) < 0)
		wl_fail("connect B to A: %s", strerror(errno));

	struct seen sr, sd, sa, sb;
	look(r, &sr);
	look(d, &sd);
	look(a, &sa);
	look(b, &sb);
	if (sr.local.nl_pid == 0 || !(sr.groups[1] & 1))
		wl_fail("R: port id %u, groups %#x %#x", sr.local.nl_pid, sr.groups[0], sr.groups[1]);

	wl_ready();
	wl_wait_term();

	same("R", r, &sr);
	same("D", d, &sd);
	same("A", a, &sa);
	same("B", b, &sb);
	ask_links(r);

	struct {
		struct nlmsghdr h;
		char text[8];
	} m = {0};
	m.h.nlmsg_len = sizeof(m);
	m.h.nlmsg_type = NLMSG_MIN_TYPE;
	strcpy(m.text, "hello");
	if (send(b, &m, sizeof(m), 0) < 0)
		wl_fail("B sends to A: %s", strerror(errno));
	char got[64];
	struct sockaddr_nl from;
	socklen_t fl = sizeof(from);
	struct pollfd pf = {.fd = a, .events = POLLIN};
	if (poll(&pf, 1, 10000) != 1)
		wl_fail("A got nothing from B");
	ssize_t n = recvfrom(a, got, sizeof(got), 0, (struct sockaddr *)&from, &fl);
	if (n != (ssize_t)sizeof(m) || strcmp(got + sizeof(struct nlmsghdr), "hello"))
		wl_fail("A got %zd bytes", n);
	if (from.nl_pid != base + 2)
		wl_fail("A's message came from port id %u, not B's %u", from.nl_pid, base + 2);
	wl_pass();
}
