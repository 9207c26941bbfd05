/* packet STATEDIR - packet sockets come back bound, joined and with their
 * options (issue 16, item 4).
 *
 *   R: SOCK_RAW, ETH_P_ALL, bound to lo, a multicast membership on lo
 *      (address 01:00:5e:63:72:73, listed in /proc/self/net/dev_mcast),
 *      TPACKET_V2, PACKET_AUXDATA on, in a fanout group of its own (hash);
 *   D: SOCK_DGRAM for protocol 0x88b5, not bound;
 *   SP: the old SOCK_PACKET interface, bound to lo by name.
 * After SIGTERM each must show what it had (getsockname, SO_TYPE and the
 * SOL_PACKET options), lo must still list the address, and R must see a UDP
 * datagram the task sends to 127.0.0.1. */
#include "wl.h"

#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sys/ioctl.h>

struct seen {
	struct sockaddr_ll local;
	int type, version, auxdata, origdev, fanout;
};

static int get(int s, int name)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(s, SOL_PACKET, name, &v, &l) < 0)
		wl_fail("getsockopt(SOL_PACKET, %d): %s", name, strerror(errno));
	return v;
}

static void look(int s, struct seen *v)
{
	memset(v, 0, sizeof(*v));
	socklen_t l = sizeof(v->local);
	if (getsockname(s, (struct sockaddr *)&v->local, &l) < 0)
		wl_fail("getsockname: %s", strerror(errno));
	l = sizeof(int);
	getsockopt(s, SOL_SOCKET, SO_TYPE, &v->type, &l);
	v->version = get(s, PACKET_VERSION);
	v->auxdata = get(s, PACKET_AUXDATA);
	v->origdev = get(s, PACKET_ORIGDEV);
	v->fanout = get(s, PACKET_FANOUT);
}

/* Whether lo lists the membership's multicast address. */
static int joined(void)
{
	FILE *f = fopen("/proc/self/net/dev_mcast", "r");
	if (!f)
		wl_fail("open /proc/self/net/dev_mcast: %s", strerror(errno));
	char line[256];
	int found = 0;
	while (fgets(line, sizeof(line), f))
		if (strstr(line, " lo ") && strstr(line, "01005e637273"))
			found = 1;
	fclose(f);
	return found;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	int lo = (int)if_nametoindex("lo");
	int r = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(ETH_P_ALL));
	if (r < 0)
		wl_skip("socket(AF_PACKET): %s", strerror(errno));
	int v2 = TPACKET_V2, one = 1;
	if (setsockopt(r, SOL_PACKET, PACKET_VERSION, &v2, sizeof(v2)) ||
	    setsockopt(r, SOL_PACKET, PACKET_AUXDATA, &one, sizeof(one)))
		wl_fail("SOL_PACKET options: %s", strerror(errno));
	struct sockaddr_ll a = {
		.sll_family = AF_PACKET, .sll_protocol = htons(ETH_P_ALL), .sll_ifindex = lo};
	if (bind(r, (struct sockaddr *)&a, sizeof(a)) < 0)
		wl_fail("bind to lo: %s", strerror(errno));
	struct packet_mreq m = {.mr_ifindex = lo, .mr_type = PACKET_MR_MULTICAST, .mr_alen = 6,
				.mr_address = {0x01, 0x00, 0x5e, 0x63, 0x72, 0x73}};
	if (setsockopt(r, SOL_PACKET, PACKET_ADD_MEMBERSHIP, &m, sizeof(m)) < 0)
		wl_fail("PACKET_ADD_MEMBERSHIP: %s", strerror(errno));
	int fan = (getpid() & 0xffff) | (PACKET_FANOUT_HASH << 16);
	if (setsockopt(r, SOL_PACKET, PACKET_FANOUT, &fan, sizeof(fan)) < 0)
		wl_fail("PACKET_FANOUT: %s", strerror(errno));
	int d = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(0x88b5));
	if (d < 0)
		wl_fail("socket(AF_PACKET, SOCK_DGRAM): %s", strerror(errno));
	/* the old interface: SOCK_PACKET, bound by device name */
	int sp = socket(AF_PACKET, SOCK_PACKET, htons(ETH_P_ALL));
	if (sp < 0)
		wl_fail("socket(AF_PACKET, SOCK_PACKET): %s", strerror(errno));
	struct sockaddr spa = {.sa_family = AF_PACKET};
	strcpy(spa.sa_data, "lo");
	if (bind(sp, &spa, sizeof(spa)) < 0)
		wl_fail("bind SOCK_PACKET to lo: %s", strerror(errno));
	struct seen sr, sd;
	look(r, &sr);
	look(d, &sd);
	if (!joined())
		wl_fail("lo does not list the membership's address");

	wl_ready();
	wl_wait_term();

	struct seen nr, nd;
	look(r, &nr);
	look(d, &nd);
	if (memcmp(&nr, &sr, sizeof(nr)))
		wl_fail("R: ifindex %d proto %#x type %d version %d aux %d fanout %#x, was %d %#x %d %d "
			"%d %#x",
			nr.local.sll_ifindex, nr.local.sll_protocol, nr.type, nr.version, nr.auxdata,
			nr.fanout, sr.local.sll_ifindex, sr.local.sll_protocol, sr.type, sr.version,
			sr.auxdata, sr.fanout);
	if (memcmp(&nd, &sd, sizeof(nd)))
		wl_fail("D: ifindex %d proto %#x type %d, was %d %#x %d", nd.local.sll_ifindex,
			nd.local.sll_protocol, nd.type, sd.local.sll_ifindex, sd.local.sll_protocol,
			sd.type);
	if (!joined())
		wl_fail("lo does not list the membership's address after the restore");
	{
		struct sockaddr got;
		socklen_t gl = sizeof(got);
		int ty = 0;
		socklen_t tl = sizeof(ty);
		memset(&got, 0, sizeof(got));
		if (getsockopt(sp, SOL_SOCKET, SO_TYPE, &ty, &tl) || ty != SOCK_PACKET)
			wl_fail("the SOCK_PACKET socket is of type %d", ty);
		if (getsockname(sp, &got, &gl) || strcmp(got.sa_data, "lo"))
			wl_fail("the SOCK_PACKET socket is bound to [%.14s]", got.sa_data);
	}
	/* R sees what crosses lo */
	int u = socket(AF_INET, SOCK_DGRAM, 0);
	struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons(9),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	static const char mark[] = "crest-packet-mark";
	for (int tries = 0; tries < 50; tries++) {
		sendto(u, mark, sizeof(mark), 0, (struct sockaddr *)&to, sizeof(to));
		char buf[2048];
		ssize_t n;
		while ((n = wl_read_wait(r, buf, sizeof(buf), 100)) > 0)
			if (memmem(buf, (size_t)n, mark, sizeof(mark)))
				wl_pass();
	}
	wl_fail("R saw none of the datagrams sent over lo");
}
