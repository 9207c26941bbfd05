/* sock_attrs.c - socket state beyond the options attrs.c covers (issue
 * 13), read back after the restore as the kernel reports it:
 *
 *   multicast memberships of UDP sockets on the loopback device: an IPv4
 *     group joined with IP_ADD_MEMBERSHIP, an IPv4 group joined for one
 *     source only (IP_ADD_SOURCE_MEMBERSHIP), an IPv4 group with a blocked
 *     source (MCAST_BLOCK_SOURCE), an IPv6 group (IPV6_ADD_MEMBERSHIP) and
 *     an IPv4 group joined by that IPv6 socket;
 *     a group never joined stays unjoined;
 *   a listening TCP socket's TCP_MAXSEG, TCP_WINDOW_CLAMP and TCP_FASTOPEN
 *     queue, a closed one's TCP_FASTOPEN_CONNECT.
 *
 * With the argument "ebpf" a UDP socket also gets an eBPF filter
 * (SO_ATTACH_BPF, the program's fd closed), which the kernel gives no way
 * to read back: the refusal case `ebpf_filter_refused` wants the dump
 * refused naming it.
 */
#include "wl.h"

#include <arpa/inet.h>
#include <linux/bpf.h>
#include <net/if.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/syscall.h>

#ifndef TCP_FASTOPEN_CONNECT
#define TCP_FASTOPEN_CONNECT 30
#endif

static int geti(int fd, int level, int opt)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(fd, level, opt, &v, &l))
		return -errno;
	return v;
}

struct filter {
	int err; /* 0, or the errno of MCAST_MSFILTER */
	unsigned mode, n;
	char first[INET6_ADDRSTRLEN];
};

/* The socket's filter of `group` on interface `ifindex`, as the kernel
 * reports it. */
static struct filter msfilter(int fd, int v6, unsigned ifindex, const char *group)
{
	union {
		struct group_filter gf;
		char room[sizeof(struct group_filter) + 4 * sizeof(struct sockaddr_storage)];
	} u;
	memset(&u, 0, sizeof(u));
	u.gf.gf_interface = ifindex;
	u.gf.gf_numsrc = 4;
	if (v6) {
		struct sockaddr_in6 *g = (struct sockaddr_in6 *)&u.gf.gf_group;
		g->sin6_family = AF_INET6;
		inet_pton(AF_INET6, group, &g->sin6_addr);
	} else {
		struct sockaddr_in *g = (struct sockaddr_in *)&u.gf.gf_group;
		g->sin_family = AF_INET;
		inet_pton(AF_INET, group, &g->sin_addr);
	}
	socklen_t l = sizeof(u);
	struct filter f;
	memset(&f, 0, sizeof(f));
	if (getsockopt(fd, v6 ? IPPROTO_IPV6 : IPPROTO_IP, MCAST_MSFILTER, &u, &l)) {
		f.err = errno;
		return f;
	}
	f.mode = u.gf.gf_fmode;
	f.n = u.gf.gf_numsrc;
	if (f.n > 0) {
		struct sockaddr_storage *s = &u.gf.gf_slist[0];
		if (s->ss_family == AF_INET)
			inet_ntop(AF_INET, &((struct sockaddr_in *)s)->sin_addr, f.first, sizeof(f.first));
		else
			inet_ntop(AF_INET6, &((struct sockaddr_in6 *)s)->sin6_addr, f.first,
				  sizeof(f.first));
	}
	return f;
}

/* A UDP socket with an eBPF filter that accepts everything. */
static int ebpf_socket(void)
{
	struct bpf_insn code[] = {
		{.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = 0, .imm = 0xffff}, /* r0 = 0xffff */
		{.code = BPF_JMP | BPF_EXIT},
	};
	union bpf_attr at;
	memset(&at, 0, sizeof(at));
	at.prog_type = BPF_PROG_TYPE_SOCKET_FILTER;
	at.insns = (uint64_t)(uintptr_t)code;
	at.insn_cnt = 2;
	at.license = (uint64_t)(uintptr_t) "GPL";
	int prog = (int)syscall(SYS_bpf, BPF_PROG_LOAD, &at, sizeof(at));
	if (prog < 0)
		wl_fail("BPF_PROG_LOAD: %s", strerror(errno));
	int s = socket(AF_INET, SOCK_DGRAM, 0);
	if (setsockopt(s, SOL_SOCKET, SO_ATTACH_BPF, &prog, sizeof(prog)))
		wl_fail("SO_ATTACH_BPF: %s", strerror(errno));
	close(prog);
	return s;
}

struct group {
	int *fd, v6;
	const char *addr;
	struct filter before;
};

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	if (argc > 2 && strcmp(argv[2], "ebpf") == 0)
		ebpf_socket();

	unsigned lo = if_nametoindex("lo");
	int mc = socket(AF_INET, SOCK_DGRAM, 0);
	int mc2 = socket(AF_INET, SOCK_DGRAM, 0);
	int mc6 = socket(AF_INET6, SOCK_DGRAM, 0);
	if (mc < 0 || mc2 < 0)
		wl_fail("socket: %s", strerror(errno));
	struct ip_mreqn mr = {.imr_ifindex = (int)lo};
	inet_pton(AF_INET, "239.1.2.3", &mr.imr_multiaddr);
	int have_mc = lo && setsockopt(mc, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mr, sizeof(mr)) == 0;
	int have_mc6 = 0;
	if (have_mc) {
		struct ip_mreq_source ms;
		memset(&ms, 0, sizeof(ms));
		inet_pton(AF_INET, "239.1.2.4", &ms.imr_multiaddr);
		inet_pton(AF_INET, "127.0.0.1", &ms.imr_interface);
		inet_pton(AF_INET, "127.0.0.2", &ms.imr_sourceaddr);
		if (setsockopt(mc, IPPROTO_IP, IP_ADD_SOURCE_MEMBERSHIP, &ms, sizeof(ms)))
			wl_fail("IP_ADD_SOURCE_MEMBERSHIP: %s", strerror(errno));
		/* a group joined on the second socket, one source blocked */
		struct group_source_req gs;
		memset(&gs, 0, sizeof(gs));
		gs.gsr_interface = lo;
		struct sockaddr_in *g = (struct sockaddr_in *)&gs.gsr_group;
		g->sin_family = AF_INET;
		inet_pton(AF_INET, "239.1.2.5", &g->sin_addr);
		struct sockaddr_in *src = (struct sockaddr_in *)&gs.gsr_source;
		src->sin_family = AF_INET;
		inet_pton(AF_INET, "127.0.0.9", &src->sin_addr);
		if (setsockopt(mc2, IPPROTO_IP, MCAST_JOIN_GROUP, &gs, sizeof(struct group_req)) ||
		    setsockopt(mc2, IPPROTO_IP, MCAST_BLOCK_SOURCE, &gs, sizeof(gs)))
			wl_fail("MCAST_JOIN_GROUP/MCAST_BLOCK_SOURCE: %s", strerror(errno));
		struct ipv6_mreq m6 = {.ipv6mr_interface = lo};
		inet_pton(AF_INET6, "ff15::1:2", &m6.ipv6mr_multiaddr);
		have_mc6 = mc6 >= 0 &&
			   setsockopt(mc6, IPPROTO_IPV6, IPV6_ADD_MEMBERSHIP, &m6, sizeof(m6)) == 0;
		inet_pton(AF_INET, "239.1.2.6", &mr.imr_multiaddr);
		if (have_mc6 && setsockopt(mc6, IPPROTO_IP, IP_ADD_MEMBERSHIP, &mr, sizeof(mr)))
			wl_fail("IPv4 group on an IPv6 socket: %s", strerror(errno));
	}
	struct group groups[] = {
		{&mc, 0, "239.1.2.3", {0}},  {&mc, 0, "239.1.2.4", {0}}, {&mc2, 0, "239.1.2.5", {0}},
		{&mc2, 0, "239.1.2.3", {0}}, {&mc6, 1, "ff15::1:2", {0}}, {&mc6, 0, "239.1.2.6", {0}},
	};
	int ngroups = have_mc ? (have_mc6 ? 6 : 4) : 0;
	for (int i = 0; i < ngroups; i++)
		groups[i].before = msfilter(*groups[i].fd, groups[i].v6, lo, groups[i].addr);

	/* TCP options a socket keeps only while it is not connected */
	int lis = socket(AF_INET, SOCK_STREAM, 0);
	int idle = socket(AF_INET, SOCK_STREAM, 0);
	int mss = 1000, clamp = 40000, qlen = 5, one = 1;
	if (setsockopt(lis, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof(mss)) ||
	    setsockopt(lis, IPPROTO_TCP, TCP_WINDOW_CLAMP, &clamp, sizeof(clamp)))
		wl_fail("TCP_MAXSEG/TCP_WINDOW_CLAMP: %s", strerror(errno));
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (bind(lis, (struct sockaddr *)&a, sizeof(a)) || listen(lis, 4))
		wl_fail("listen: %s", strerror(errno));
	int have_fo = setsockopt(lis, IPPROTO_TCP, TCP_FASTOPEN, &qlen, sizeof(qlen)) == 0;
	int have_foc = setsockopt(idle, IPPROTO_TCP, TCP_FASTOPEN_CONNECT, &one, sizeof(one)) == 0;
	int tcp_before[4] = {geti(lis, IPPROTO_TCP, TCP_MAXSEG), geti(lis, IPPROTO_TCP, TCP_WINDOW_CLAMP),
			     geti(lis, IPPROTO_TCP, TCP_FASTOPEN),
			     geti(idle, IPPROTO_TCP, TCP_FASTOPEN_CONNECT)};

	wl_ready();
	wl_wait_term();

	for (int i = 0; i < ngroups; i++) {
		struct filter b = groups[i].before;
		struct filter n = msfilter(*groups[i].fd, groups[i].v6, lo, groups[i].addr);
		if (b.err != n.err || b.mode != n.mode || b.n != n.n || strcmp(b.first, n.first))
			wl_add("group %s: membership was (errno %d, mode %u, %u sources, first %s), now "
			       "(errno %d, mode %u, %u sources, first %s); ",
			       groups[i].addr, b.err, b.mode, b.n, b.first, n.err, n.mode, n.n, n.first);
	}
	if (have_mc && (groups[0].before.err || groups[3].before.err != EADDRNOTAVAIL))
		wl_add("setup: the memberships read before the dump are not as made; ");
	int tcp_after[4] = {geti(lis, IPPROTO_TCP, TCP_MAXSEG), geti(lis, IPPROTO_TCP, TCP_WINDOW_CLAMP),
			    geti(lis, IPPROTO_TCP, TCP_FASTOPEN),
			    geti(idle, IPPROTO_TCP, TCP_FASTOPEN_CONNECT)};
	const char *tcp_names[4] = {"TCP_MAXSEG", "TCP_WINDOW_CLAMP", "TCP_FASTOPEN",
				    "TCP_FASTOPEN_CONNECT"};
	for (int i = 0; i < 4; i++) {
		if ((i == 2 && !have_fo) || (i == 3 && !have_foc))
			continue;
		if (tcp_before[i] != tcp_after[i])
			wl_add("%s was %d, now %d; ", tcp_names[i], tcp_before[i], tcp_after[i]);
	}
	if (tcp_before[0] != mss)
		wl_add("setup: TCP_MAXSEG read %d before the dump, set %d; ", tcp_before[0], mss);
	if (wl_mlen)
		wl_fail("%s", wl_msg);
	if (!have_mc)
		wl_skip("no multicast on the loopback device here; TCP options checked");
	wl_pass();
}
