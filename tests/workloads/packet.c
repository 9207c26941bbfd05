/* packet STATEDIR [ring_moved|tx_used] - packet sockets come back bound,
 * joined and with their options and rings (issue 16, item 4).
 *
 *   R: SOCK_RAW, ETH_P_ALL, bound to lo, a multicast membership on lo
 *      (address 01:00:5e:63:72:73, listed in /proc/self/net/dev_mcast),
 *      TPACKET_V2, PACKET_AUXDATA on, in a fanout group of its own (hash);
 *   D: SOCK_DGRAM for protocol 0x88b5, not bound;
 *   SP: the old SOCK_PACKET interface, bound to lo by name;
 *   V2: SOCK_RAW for protocol 0x88b6 on lo, TPACKET_V2, an RX ring of 16
 *      frames and a TX ring of 8, both mapped;
 *   V3: SOCK_RAW for protocol 0x88b7 on lo, TPACKET_V3, an RX ring of 4
 *      blocks (10 ms to close a block), mapped;
 *   V1: SOCK_DGRAM for protocol 0x88b8 on lo, TPACKET_V1 (the default),
 *      an RX ring of 8 frames, mapped.
 * After the restore a frame sent on lo lands in V2's next RX frame, a
 * frame put in V2's TX frame 0 is sent (and lands in the RX frame after),
 * a frame sent to V3 lands in its next block and one sent to V1 in its
 * next frame.
 * With "ring_moved" the kernel has moved on in both RX rings before the
 * dump: V2 got 3 frames (0 and 1 given back, 2 still held), V3 got a frame
 * in each of blocks 0 and 1 (closed by the timer; 0 given back, 1 held)
 * and waits in block 2, V1 got 10 frames in two bursts (each given back;
 * the kernel went round its 8 frames). The held frame and block must come
 * back with their frames, and the next frames land in V2's frame 3, V3's
 * block 2 and V1's frame 2. Also with "ring_moved", W (V3 again, protocol
 * 0x88b9) got a frame in each of its 4 blocks, the task holding block 0:
 * the kernel went round and waits for block 0. After the restore block 0
 * holds its frame; given back, the next frame lands in it.
 * With "tx_used" a frame went out through V2's TX ring before the dump:
 * the dump must refuse it (the kernel's next TX frame cannot be seen);
 * after the refused dump the next frame lands in RX frame 1.
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
#include <sys/mman.h>

#define P_V2 0x88b6
#define P_V3 0x88b7
#define P_V1 0x88b8
#define P_W 0x88b9
#define BLOCK (16 << 10)

/* Sends an Ethernet frame of protocol `proto` carrying `mark` on lo. */
static void send_on_lo(int lo, unsigned short proto, const char *mark)
{
	int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, 0);
	unsigned char f[64] = {0};
	f[12] = (unsigned char)(proto >> 8);
	f[13] = (unsigned char)proto;
	memcpy(f + 14, mark, strlen(mark));
	struct sockaddr_ll to = {.sll_family = AF_PACKET, .sll_ifindex = lo, .sll_halen = 6};
	if (s < 0 || sendto(s, f, sizeof(f), 0, (struct sockaddr *)&to, sizeof(to)) != sizeof(f))
		wl_fail("send a frame on lo: %s", strerror(errno));
	close(s);
}

/* Waits until V2 RX frame `i` of `ring` is the user's and holds `mark`. */
static void v2_held(char *ring, int i, const char *mark)
{
	struct tpacket2_hdr *h = (struct tpacket2_hdr *)(ring + i * 2048);
	for (int k = 0; k < 500 && !(__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER); k++)
		usleep(2000);
	if (!(h->tp_status & TP_STATUS_USER))
		wl_fail("V2's RX frame %d got no frame (status %#x)", i, h->tp_status);
	if (!memmem((char *)h + h->tp_mac, h->tp_snaplen, mark, strlen(mark)))
		wl_fail("V2's RX frame %d holds another frame (%u bytes)", i, h->tp_snaplen);
}

/* Waits until V2 RX frame `i` of `ring` is the user's and holds `mark`,
 * then gives it back to the kernel. */
static void v2_frame(char *ring, int i, const char *mark)
{
	v2_held(ring, i, mark);
	((struct tpacket2_hdr *)(ring + i * 2048))->tp_status = TP_STATUS_KERNEL;
}

/* Waits until V1 RX frame `i` of `ring` (frames of 1 KiB) is the user's
 * and holds `mark`, then gives it back. */
static void v1_frame(char *ring, int i, const char *mark)
{
	struct tpacket_hdr *h = (struct tpacket_hdr *)(ring + i * 1024);
	for (int k = 0; k < 500 && !(__atomic_load_n(&h->tp_status, __ATOMIC_ACQUIRE) & TP_STATUS_USER); k++)
		usleep(2000);
	if (!(h->tp_status & TP_STATUS_USER))
		wl_fail("V1's RX frame %d got no frame (status %#lx)", i, h->tp_status);
	if (!memmem((char *)h + h->tp_mac, h->tp_snaplen, mark, strlen(mark)))
		wl_fail("V1's RX frame %d holds another frame (%u bytes)", i, h->tp_snaplen);
	__atomic_store_n(&h->tp_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
}

/* Waits until V3 block `b` of `ring` is the user's and holds `mark` in its
 * first packet. */
static struct tpacket_block_desc *v3_block(char *ring, int b, const char *mark)
{
	struct tpacket_block_desc *d = (struct tpacket_block_desc *)(ring + b * BLOCK);
	for (int k = 0; k < 500 && !(__atomic_load_n(&d->hdr.bh1.block_status, __ATOMIC_ACQUIRE) &
				     TP_STATUS_USER);
	     k++)
		usleep(2000);
	if (!(d->hdr.bh1.block_status & TP_STATUS_USER) || d->hdr.bh1.num_pkts < 1)
		wl_fail("V3's block %d got no frame (status %#x, %u packets)", b,
			d->hdr.bh1.block_status, d->hdr.bh1.num_pkts);
	struct tpacket3_hdr *h = (struct tpacket3_hdr *)((char *)d + d->hdr.bh1.offset_to_first_pkt);
	if (!memmem((char *)h + h->tp_mac, h->tp_snaplen, mark, strlen(mark)))
		wl_fail("V3's block %d holds another frame", b);
	return d;
}

static int ring_socket(int lo, unsigned short proto, int version, void *req, size_t req_len,
		       int tx, size_t len, char **map)
{
	int s = socket(AF_PACKET, SOCK_RAW | SOCK_CLOEXEC, htons(proto));
	if (s < 0 || setsockopt(s, SOL_PACKET, PACKET_VERSION, &version, sizeof(version)) ||
	    setsockopt(s, SOL_PACKET, PACKET_RX_RING, req, (socklen_t)req_len) ||
	    (tx && setsockopt(s, SOL_PACKET, PACKET_TX_RING, req, (socklen_t)req_len)))
		wl_fail("a packet ring: %s", strerror(errno));
	*map = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, s, 0);
	if (*map == MAP_FAILED)
		wl_fail("map a packet ring: %s", strerror(errno));
	struct sockaddr_ll a = {.sll_family = AF_PACKET, .sll_protocol = htons(proto),
				.sll_ifindex = lo};
	if (bind(s, (struct sockaddr *)&a, sizeof(a)) < 0)
		wl_fail("bind a ring socket to lo: %s", strerror(errno));
	return s;
}

/* Sends a frame through V2's TX ring (its frame 0, after the RX ring's
 * two blocks). */
static void send_tx(int s2, char *m2)
{
	struct tpacket2_hdr *t = (struct tpacket2_hdr *)(m2 + 2 * BLOCK);
	unsigned char *f = (unsigned char *)t + TPACKET2_HDRLEN - sizeof(struct sockaddr_ll);
	memset(f, 0, 64);
	f[12] = P_V2 >> 8;
	f[13] = P_V2 & 0xff;
	memcpy(f + 14, "crest-ring-tx", 13);
	t->tp_len = 64;
	t->tp_status = TP_STATUS_SEND_REQUEST;
	if (send(s2, NULL, 0, 0) < 0)
		wl_fail("send V2's TX ring: %s", strerror(errno));
}

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
	/* V2: RX ring of 2 blocks (16 frames), TX ring of the same */
	struct tpacket_req q2 = {.tp_block_size = BLOCK, .tp_block_nr = 2, .tp_frame_size = 2048,
				 .tp_frame_nr = 16};
	char *m2;
	int s2 = ring_socket(lo, P_V2, TPACKET_V2, &q2, sizeof(q2), 1, 4 * BLOCK, &m2);
	struct tpacket_req3 q3 = {.tp_block_size = BLOCK, .tp_block_nr = 4, .tp_frame_size = 2048,
				  .tp_frame_nr = 32, .tp_retire_blk_tov = 10};
	char *m3;
	int s3 = ring_socket(lo, P_V3, TPACKET_V3, &q3, sizeof(q3), 0, 4 * BLOCK, &m3);
	/* V1: the default version, SOCK_DGRAM, 8 frames of 1 KiB */
	struct tpacket_req q1 = {.tp_block_size = 8192, .tp_block_nr = 1, .tp_frame_size = 1024,
				 .tp_frame_nr = 8};
	char *m1;
	int s1 = socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(P_V1));
	if (s1 < 0 || setsockopt(s1, SOL_PACKET, PACKET_RX_RING, &q1, sizeof(q1)))
		wl_fail("V1's ring: %s", strerror(errno));
	m1 = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, s1, 0);
	if (m1 == MAP_FAILED)
		wl_fail("map V1's ring: %s", strerror(errno));
	struct sockaddr_ll a1 = {.sll_family = AF_PACKET, .sll_protocol = htons(P_V1),
				 .sll_ifindex = lo};
	if (bind(s1, (struct sockaddr *)&a1, sizeof(a1)) < 0)
		wl_fail("bind V1 to lo: %s", strerror(errno));
	const char *mode = argc > 2 ? argv[2] : "";
	int moved = !strcmp(mode, "ring_moved"), tx_used = !strcmp(mode, "tx_used");
	int next2 = 0, next3 = 0, next1 = 0, mw_sock = -1;
	char *mw = NULL;
	if (moved) {
		send_on_lo(lo, P_V2, "crest-ring-early-0");
		v2_frame(m2, 0, "crest-ring-early-0");
		send_on_lo(lo, P_V2, "crest-ring-early-1");
		v2_frame(m2, 1, "crest-ring-early-1");
		send_on_lo(lo, P_V2, "crest-ring-early-2");
		v2_held(m2, 2, "crest-ring-early-2");
		next2 = 3;
		send_on_lo(lo, P_V3, "crest-ring-v3-early-0");
		v3_block(m3, 0, "crest-ring-v3-early-0")->hdr.bh1.block_status = TP_STATUS_KERNEL;
		send_on_lo(lo, P_V3, "crest-ring-v3-early-1");
		v3_block(m3, 1, "crest-ring-v3-early-1");
		next3 = 2;
		for (int i = 0; i < 10; i += 5) {
			for (int k = 0; k < 5; k++)
				send_on_lo(lo, P_V1, "crest-ring-v1-early");
			for (int k = 0; k < 5; k++)
				v1_frame(m1, (i + k) % 8, "crest-ring-v1-early");
		}
		next1 = 2;
		mw_sock = ring_socket(lo, P_W, TPACKET_V3, &q3, sizeof(q3), 0, 4 * BLOCK, &mw);
		for (int b = 0; b < 4; b++) {
			send_on_lo(lo, P_W, b ? "crest-ring-w-early" : "crest-ring-w-held");
			struct tpacket_block_desc *d =
				v3_block(mw, b, b ? "crest-ring-w-early" : "crest-ring-w-held");
			if (b)
				d->hdr.bh1.block_status = TP_STATUS_KERNEL;
		}
	}
	/* (read away: after the restore they count nothing crest did) */
	struct tpacket_stats_v3 st;
	socklen_t stl = sizeof(st);
	if (getsockopt(s2, SOL_PACKET, PACKET_STATISTICS, &st, &stl) ||
	    getsockopt(s3, SOL_PACKET, PACKET_STATISTICS, &st, &stl))
		wl_fail("PACKET_STATISTICS: %s", strerror(errno));
	if (tx_used) {
		send_tx(s2, m2);
		v2_frame(m2, 0, "crest-ring-tx");
	}
	struct seen sr, sd;
	look(r, &sr);
	look(d, &sd);
	if (!joined())
		wl_fail("lo does not list the membership's address");

	wl_ready();
	wl_wait_term();

	if (tx_used) {
		send_on_lo(lo, P_V2, "crest-ring-next");
		v2_frame(m2, 1, "crest-ring-next");
		wl_pass();
	}
	for (int i = 0; i < 2; i++) {
		memset(&st, 0xff, sizeof(st));
		stl = sizeof(st);
		if (getsockopt(i ? s3 : s2, SOL_PACKET, PACKET_STATISTICS, &st, &stl))
			wl_fail("PACKET_STATISTICS: %s", strerror(errno));
		if (st.tp_packets || st.tp_drops || (i && st.tp_freeze_q_cnt))
			wl_fail("V%d counted %u packets, %u drops, %u freezes after the restore",
				i ? 3 : 2, st.tp_packets, st.tp_drops, i ? st.tp_freeze_q_cnt : 0);
	}
	if (moved) {
		/* what the task held came back with its frames */
		v2_held(m2, 2, "crest-ring-early-2");
		v3_block(m3, 1, "crest-ring-v3-early-1");
		struct tpacket_block_desc *d = v3_block(mw, 0, "crest-ring-w-held");
		__atomic_store_n(&d->hdr.bh1.block_status, TP_STATUS_KERNEL, __ATOMIC_RELEASE);
		send_on_lo(lo, P_W, "crest-ring-w-next");
		v3_block(mw, 0, "crest-ring-w-next");
		(void)mw_sock;
	}
	/* V2: a frame in the next RX frame; one put in TX frame 0 goes out and
	 * comes back in the RX frame after */
	send_on_lo(lo, P_V2, "crest-ring-v2");
	v2_frame(m2, next2, "crest-ring-v2");
	send_tx(s2, m2);
	v2_frame(m2, next2 + 1, "crest-ring-tx");
	/* V3: a frame in the next block */
	send_on_lo(lo, P_V3, "crest-ring-v3");
	v3_block(m3, next3, "crest-ring-v3");
	/* V1: a frame in the next frame */
	send_on_lo(lo, P_V1, "crest-ring-v1");
	v1_frame(m1, next1, "crest-ring-v1");

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
