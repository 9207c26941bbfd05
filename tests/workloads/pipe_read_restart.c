/* pipe_read_restart STATEDIR - a read() blocked on an empty pipe restarts,
 * and 100 bytes in flight in a second pipe survive.
 *
 * Only the SIGTERM handler may end the read, with EINTR. */
#include "wl.h"
#include <sys/ioctl.h>

#define INFLIGHT 100

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int blk[2], data[2];
	wl_pipe(blk);
	wl_pipe(data);
	unsigned char sent[INFLIGHT];
	for (int i = 0; i < INFLIGHT; i++)
		sent[i] = (unsigned char)(wl_mix((uint64_t)i + 77) & 0xff);
	if (write(data[1], sent, INFLIGHT) != INFLIGHT)
		wl_fail("write %d bytes to the data pipe: %s", INFLIGHT, strerror(errno));
	wl_ready();

	char c;
	ssize_t r = read(blk[0], &c, 1);
	int err = errno;
	if (r >= 0)
		wl_fail("read on the empty pipe returned %zd before SIGTERM", r);
	if (err != EINTR)
		wl_fail("read on the empty pipe failed with errno %d (%s), expected EINTR", err,
			strerror(err));
	if (!wl_term)
		wl_fail("read returned EINTR but SIGTERM's handler did not run");
	wl_after();

	int avail = -1;
	if (ioctl(data[0], FIONREAD, &avail) < 0)
		wl_fail("FIONREAD on the data pipe: %s", strerror(errno));
	if (avail != INFLIGHT)
		wl_fail("data pipe holds %d bytes, expected %d", avail, INFLIGHT);
	unsigned char got[INFLIGHT + 1];
	r = read(data[0], got, sizeof(got));
	if (r != INFLIGHT)
		wl_fail("read %zd bytes from the data pipe, expected %d (%s)", r, INFLIGHT,
			r < 0 ? strerror(errno) : "short");
	for (int i = 0; i < INFLIGHT; i++)
		if (got[i] != sent[i])
			wl_fail("data pipe byte %d is %#x, expected %#x", i, got[i], sent[i]);

	/* both pipes still connect their two ends */
	int pipes[2][2] = { { blk[0], blk[1] }, { data[0], data[1] } };
	for (int p = 0; p < 2; p++) {
		char w = 'x', rd = 0;
		if (write(pipes[p][1], &w, 1) != 1)
			wl_fail("write to pipe %d after restore: %s", p, strerror(errno));
		if (read(pipes[p][0], &rd, 1) != 1 || rd != w)
			wl_fail("pipe %d does not connect its ends after restore", p);
	}
	wl_pass();
}
