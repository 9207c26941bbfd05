/* aio STATEDIR [pending] - AIO contexts come back (issue 16, item 6).
 *
 * Two contexts (io_setup 16 and 300: rings of different sizes), each used
 * once before the dump (a read submitted and its completion reaped). After
 * SIGTERM each context, by the same id, takes a new read of the data file
 * and gives its completion with the iocb's data; the ring's header at the
 * id is the kernel's; io_destroy ends them.
 * With "pending" a completion is left in the first ring, not reaped: the
 * dump must refuse it (the ring is made again empty), and after the
 * refused dump the completion must still be there. */
#include "wl.h"

#include <linux/aio_abi.h>
#include <sys/syscall.h>

static int data_fd;

static void submit(aio_context_t ctx, char *buf, long long tag, off_t off)
{
	struct iocb cb;
	memset(&cb, 0, sizeof(cb));
	cb.aio_data = (unsigned long long)tag;
	cb.aio_lio_opcode = IOCB_CMD_PREAD;
	cb.aio_fildes = (unsigned)data_fd;
	cb.aio_buf = (unsigned long long)(unsigned long)buf;
	cb.aio_nbytes = 8;
	cb.aio_offset = off;
	struct iocb *list[1] = {&cb};
	if (syscall(SYS_io_submit, ctx, 1, list) != 1)
		wl_fail("io_submit: %s", strerror(errno));
}

static void reap(aio_context_t ctx, long long tag, const char *buf, const char *want)
{
	struct io_event ev;
	struct timespec ts = {5, 0};
	long n = syscall(SYS_io_getevents, ctx, 1, 1, &ev, &ts);
	if (n != 1)
		wl_fail("io_getevents on %#llx gave %ld: %s", (unsigned long long)ctx, n,
			strerror(errno));
	if ((long long)ev.data != tag || ev.res != 8 || memcmp(buf, want, 8))
		wl_fail("the completion on %#llx has data %lld res %lld (%.8s), not %lld 8 (%.8s)",
			(unsigned long long)ctx, (long long)ev.data, (long long)ev.res, buf, tag,
			want);
}

/* Waits until the ring of `ctx` holds a completion (head != tail). */
static int ring_has_event(aio_context_t ctx)
{
	const unsigned *ring = (const unsigned *)(unsigned long)ctx;
	return ring[2] != ring[3];
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	int pending = argc > 2 && !strcmp(argv[2], "pending");
	char path[4200];
	snprintf(path, sizeof(path), "%s/aio-data", wl_dir);
	int w = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (w < 0 || write(w, "01234567abcdefghABCDEFGH", 24) != 24)
		wl_fail("write %s: %s", path, strerror(errno));
	close(w);
	data_fd = open(path, O_RDONLY);
	if (data_fd < 0)
		wl_fail("open %s: %s", path, strerror(errno));

	aio_context_t a = 0, b = 0;
	if (syscall(SYS_io_setup, 16, &a) < 0 || syscall(SYS_io_setup, 300, &b) < 0)
		wl_skip("io_setup: %s", strerror(errno));
	static char buf_a[8], buf_b[8];
	submit(a, buf_a, 1, 0);
	reap(a, 1, buf_a, "01234567");
	submit(b, buf_b, 2, 8);
	reap(b, 2, buf_b, "abcdefgh");
	if (pending) {
		submit(a, buf_a, 3, 16);
		for (int i = 0; i < 500 && !ring_has_event(a); i++)
			usleep(10000);
		if (!ring_has_event(a))
			wl_fail("the read did not complete");
	}

	wl_ready();
	wl_wait_term();

	if (pending) {
		if (!ring_has_event(a))
			wl_fail("the completion left in the ring is gone");
		reap(a, 3, buf_a, "ABCDEFGH");
	}
	const unsigned *ra = (const unsigned *)(unsigned long)a;
	if (ra[4] != 0xa10a10a1)
		wl_fail("no AIO ring header at %#llx (magic %#x)", (unsigned long long)a, ra[4]);
	memset(buf_a, 0, 8);
	memset(buf_b, 0, 8);
	submit(a, buf_a, 11, 8);
	reap(a, 11, buf_a, "abcdefgh");
	submit(b, buf_b, 12, 16);
	reap(b, 12, buf_b, "ABCDEFGH");
	if (syscall(SYS_io_destroy, a) < 0 || syscall(SYS_io_destroy, b) < 0)
		wl_fail("io_destroy: %s", strerror(errno));
	wl_pass();
}
