/* futex_restart STATEDIR - a FUTEX_WAIT without timeout restarts.
 *
 * Only the SIGTERM handler may end the wait, with EINTR; EAGAIN (the word
 * changed), a zero return (a wake nobody sent) or another errno fail. */
#include "wl.h"
#include <linux/futex.h>
#include <sys/syscall.h>

static uint32_t word = 0x5eed;

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_ready();
	long r = syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0x5eed, NULL, NULL, 0);
	int err = errno;
	if (r == 0)
		wl_fail("FUTEX_WAIT returned 0 (woken) but nobody woke it");
	if (err == EAGAIN)
		wl_fail("FUTEX_WAIT returned EAGAIN: the word is %#x, expected 0x5eed", word);
	if (err != EINTR)
		wl_fail("FUTEX_WAIT failed with errno %d (%s), expected EINTR", err, strerror(err));
	if (!wl_term)
		wl_fail("FUTEX_WAIT returned EINTR but SIGTERM's handler did not run");
	wl_after();
	if (word != 0x5eed)
		wl_fail("futex word is %#x, expected 0x5eed", word);
	wl_pass();
}
