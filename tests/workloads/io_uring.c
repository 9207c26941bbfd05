/* io_uring STATEDIR [single|nosqarray|sqpoll|inflight] - an io_uring comes back whole
 * (issue 16, item 6).
 *
 * One ring, its rings mapped (the SQ ring, the CQ ring apart, the SQEs),
 * two fixed buffers registered with an empty slot between them. Before
 * the dump it runs 21 rounds of a NOP and a READ_FIXED of the data file
 * (reaped) and a READ through an io-wq worker (a kernel thread in the
 * task), then leaves two NOP
 * completions in the CQ ring unread and one NOP written in the SQ ring,
 * not submitted. After SIGTERM: the counters in the rings are those of
 * before, the two completions are there, the prepared NOP is submitted
 * and completes, a READ_FIXED into the second buffer and a WRITE into a
 * pipe complete with the right bytes, and no other completion shows up.
 * "single" makes the ring IORING_SETUP_SINGLE_ISSUER|DEFER_TASKRUN with
 * a CQ ring of 64 (IORING_SETUP_CQSIZE); "nosqarray" makes it without an
 * SQ array (IORING_SETUP_NO_SQARRAY); "sqpoll" with an SQ thread bound to
 * CPU 0 (IORING_SETUP_SQPOLL|SQ_AFF), which takes the entries itself (no
 * entry is left unsubmitted then), and which must be there, bound to CPU
 * 0, after the restore.
 * "inflight" leaves a READ of an empty pipe in flight: the dump must
 * refuse it, and after the refused dump the read completes once the pipe
 * has data. */
#include "wl.h"

#include <linux/io_uring.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <dirent.h>
#include <sys/uio.h>

#ifndef IORING_SETUP_SINGLE_ISSUER
#define IORING_SETUP_SINGLE_ISSUER (1U << 12)
#endif
#ifndef IORING_SETUP_NO_SQARRAY
#define IORING_SETUP_NO_SQARRAY (1U << 16)
#endif
#ifndef IORING_SETUP_DEFER_TASKRUN
#define IORING_SETUP_DEFER_TASKRUN (1U << 13)
#endif

static int ring_fd;
static struct io_uring_params p;
static unsigned char *sq_ring, *cq_ring;
static struct io_uring_sqe *sqes;
static unsigned sq_local; /* the SQ tail as this program counts it */
static char buf0[4096] __attribute__((aligned(4096)));
static char buf1[4096] __attribute__((aligned(4096)));

#define SQ(f) ((volatile unsigned *)(sq_ring + p.sq_off.f))
#define CQ(f) ((volatile unsigned *)(cq_ring + p.cq_off.f))

/* Whether the task has an SQ thread (iou-sqp-*) bound to CPU 0 alone. */
static int sq_thread_on_cpu0(void)
{
	char path[300], line[256];
	for (int tries = 0; tries < 100; tries++) {
		DIR *d = opendir("/proc/self/task");
		struct dirent *de;
		int found = 0;
		while (d && (de = readdir(d))) {
			if (de->d_name[0] == '.')
				continue;
			snprintf(path, sizeof(path), "/proc/self/task/%s/comm", de->d_name);
			FILE *c = fopen(path, "r");
			if (!c)
				continue;
			int sqp = fgets(line, sizeof(line), c) && !strncmp(line, "iou-sqp-", 8);
			fclose(c);
			if (!sqp)
				continue;
			snprintf(path, sizeof(path), "/proc/self/task/%s/status", de->d_name);
			FILE *st = fopen(path, "r");
			while (st && fgets(line, sizeof(line), st))
				if (!strncmp(line, "Cpus_allowed_list:", 18))
					found = !strcmp(line + 18 + strspn(line + 18, " \t"), "0\n");
			if (st)
				fclose(st);
		}
		if (d)
			closedir(d);
		if (found)
			return 1;
		usleep(10000);
	}
	return 0;
}

static struct io_uring_sqe *prep(unsigned char op, unsigned long long tag)
{
	unsigned idx = sq_local & *SQ(ring_mask);
	struct io_uring_sqe *s = &sqes[idx];
	memset(s, 0, sizeof(*s));
	s->opcode = op;
	s->user_data = tag;
	if (!(p.flags & IORING_SETUP_NO_SQARRAY))
		((unsigned *)(sq_ring + p.sq_off.array))[idx] = idx;
	sq_local++;
	__atomic_store_n(SQ(tail), sq_local, __ATOMIC_RELEASE);
	return s;
}

static void enter(unsigned submit, unsigned wait)
{
	unsigned flags = wait ? IORING_ENTER_GETEVENTS : 0;
	if (p.flags & IORING_SETUP_SQPOLL)
		flags |= IORING_ENTER_SQ_WAKEUP;
	long n = syscall(SYS_io_uring_enter, ring_fd, submit, wait, flags, NULL, 0);
	if (n < 0 || (unsigned)n != submit)
		wl_fail("io_uring_enter(%u, %u) gave %ld: %s", submit, wait, n, strerror(errno));
}

/* Takes the next completion, which must be `tag` with result `res`. */
static void reap(unsigned long long tag, int res)
{
	unsigned head = *CQ(head);
	if (__atomic_load_n(CQ(tail), __ATOMIC_ACQUIRE) == head)
		enter(0, 1);
	if (__atomic_load_n(CQ(tail), __ATOMIC_ACQUIRE) == head)
		wl_fail("no completion for %llu", tag);
	struct io_uring_cqe *c = (struct io_uring_cqe *)(cq_ring + p.cq_off.cqes) +
				 (head & *CQ(ring_mask));
	if (c->user_data != tag || c->res != res)
		wl_fail("completion %u is %llu res %d, not %llu res %d", head,
			(unsigned long long)c->user_data, c->res, tag, res);
	__atomic_store_n(CQ(head), head + 1, __ATOMIC_RELEASE);
}

static void read_fixed(char *buf, int index, unsigned long long tag, off_t off)
{
	struct io_uring_sqe *s = prep(IORING_OP_READ_FIXED, tag);
	s->fd = 3; /* the data file, a plain fd */
	s->addr = (unsigned long)buf;
	s->len = 8;
	s->off = (unsigned long long)off;
	s->buf_index = (unsigned short)index;
	enter(1, 1);
	reap(tag, 8);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	const char *mode = argc > 2 ? argv[2] : "";
	char path[4200];
	snprintf(path, sizeof(path), "%s/uring-data", wl_dir);
	int w = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (w < 0 || write(w, "01234567abcdefghABCDEFGH", 24) != 24)
		wl_fail("write %s: %s", path, strerror(errno));
	close(w);
	int data = open(path, O_RDONLY);
	if (data != 3)
		wl_fail("the data file is fd %d, not 3 (%s)", data, strerror(errno));
	int pipefd[2];
	if (pipe(pipefd) < 0)
		wl_fail("pipe: %s", strerror(errno));

	unsigned entries = 8;
	if (!strcmp(mode, "single")) {
		p.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN |
			  IORING_SETUP_CQSIZE;
		p.cq_entries = 64;
		entries = 16;
	} else if (!strcmp(mode, "nosqarray")) {
		p.flags = IORING_SETUP_NO_SQARRAY;
	} else if (!strcmp(mode, "sqpoll")) {
		p.flags = IORING_SETUP_SQPOLL | IORING_SETUP_SQ_AFF;
		p.sq_thread_cpu = 0;
		p.sq_thread_idle = 50;
	}
	int sqpoll = !strcmp(mode, "sqpoll");
	ring_fd = (int)syscall(SYS_io_uring_setup, entries, &p);
	if (ring_fd < 0)
		wl_skip("io_uring_setup: %s", strerror(errno));
	/* (without an array the SQ ring is the CQ ring's region, no longer) */
	size_t sq_len = p.flags & IORING_SETUP_NO_SQARRAY ? p.sq_off.dropped + 4
							 : p.sq_off.array + p.sq_entries * 4;
	size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
	sq_ring = mmap(NULL, sq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd,
		       IORING_OFF_SQ_RING);
	cq_ring = mmap(NULL, cq_len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring_fd,
		       IORING_OFF_CQ_RING);
	sqes = mmap(NULL, p.sq_entries * sizeof(struct io_uring_sqe), PROT_READ | PROT_WRITE,
		    MAP_SHARED | MAP_POPULATE, ring_fd, IORING_OFF_SQES);
	if (sq_ring == MAP_FAILED || cq_ring == MAP_FAILED || sqes == MAP_FAILED)
		wl_fail("mmap the rings: %s", strerror(errno));
	struct iovec bufs[3] = {{buf0, sizeof(buf0)}, {NULL, 0}, {buf1, sizeof(buf1)}};
	if (syscall(SYS_io_uring_register, ring_fd, IORING_REGISTER_BUFFERS, bufs, 3) < 0)
		wl_fail("register buffers: %s", strerror(errno));

	for (unsigned i = 0; i < 21; i++) {
		prep(IORING_OP_NOP, 100 + i);
		enter(1, 1);
		reap(100 + i, 0);
		memset(buf0, 0, 8);
		read_fixed(buf0, 0, 200 + i, 8);
		if (memcmp(buf0, "abcdefgh", 8))
			wl_fail("READ_FIXED read %.8s", buf0);
	}
	/* a read the kernel hands to an io-wq worker (a thread of the task,
	 * iou-wrk-PID, that stays a while: the dump must leave it be) */
	{
		struct io_uring_sqe *s = prep(IORING_OP_READ, 250);
		s->fd = data;
		s->addr = (unsigned long)buf0;
		s->len = 8;
		s->flags = IOSQE_ASYNC;
		enter(1, 1);
		reap(250, 8);
		if (memcmp(buf0, "01234567", 8))
			wl_fail("the read through io-wq read %.8s", buf0);
	}
	static char inflight_buf[8];
	if (!strcmp(mode, "inflight")) {
		struct io_uring_sqe *s = prep(IORING_OP_READ, 77);
		s->fd = pipefd[0];
		s->addr = (unsigned long)inflight_buf;
		s->len = 5;
		enter(1, 0);
	} else {
		prep(IORING_OP_NOP, 0xAA);
		prep(IORING_OP_NOP, 0xBB);
		enter(2, 2);
		if (!sqpoll)
			prep(IORING_OP_NOP, 0xCC); /* written, not submitted */
	}
	unsigned sq_head = *SQ(head), sq_tail = *SQ(tail);
	unsigned cq_head = *CQ(head), cq_tail = *CQ(tail);

	wl_ready();
	wl_wait_term();

	if (!strcmp(mode, "inflight")) {
		if (write(pipefd[1], "hello", 5) != 5)
			wl_fail("write the pipe: %s", strerror(errno));
		reap(77, 5);
		if (memcmp(inflight_buf, "hello", 5))
			wl_fail("the read in flight read %.5s", inflight_buf);
		wl_pass();
	}
	if (*SQ(head) != sq_head || *SQ(tail) != sq_tail || *CQ(head) != cq_head ||
	    *CQ(tail) != cq_tail)
		wl_fail("the rings' counters are SQ %u/%u CQ %u/%u, not SQ %u/%u CQ %u/%u",
			*SQ(head), *SQ(tail), *CQ(head), *CQ(tail), sq_head, sq_tail, cq_head,
			cq_tail);
	if (*SQ(ring_entries) != p.sq_entries || *CQ(ring_entries) != p.cq_entries)
		wl_fail("the rings hold %u and %u entries, not %u and %u", *SQ(ring_entries),
			*CQ(ring_entries), p.sq_entries, p.cq_entries);
	reap(0xAA, 0);
	reap(0xBB, 0);
	if (!sqpoll) {
		enter(1, 1);
		reap(0xCC, 0);
	} else if (!sq_thread_on_cpu0())
		wl_fail("no SQ thread bound to CPU 0 after the restore");
	memset(buf1, 0, 8);
	read_fixed(buf1, 2, 300, 16);
	if (memcmp(buf1, "ABCDEFGH", 8))
		wl_fail("READ_FIXED into the second buffer read %.8s", buf1);
	struct io_uring_sqe *s = prep(IORING_OP_WRITE, 301);
	s->fd = pipefd[1];
	s->addr = (unsigned long)"world";
	s->len = 5;
	enter(1, 1);
	reap(301, 5);
	char back[8] = {0};
	if (read(pipefd[0], back, 5) != 5 || memcmp(back, "world", 5))
		wl_fail("the pipe holds %.5s", back);
	/* a READ_FIXED with the empty slot 1 fails as it did before */
	s = prep(IORING_OP_READ_FIXED, 302);
	s->fd = data;
	s->addr = (unsigned long)buf0;
	s->len = 8;
	s->buf_index = 1;
	enter(1, 1);
	reap(302, -EFAULT);
	if (*CQ(tail) != *CQ(head))
		wl_fail("%u completions nobody asked for", *CQ(tail) - *CQ(head));
	close(ring_fd);
	wl_pass();
}
