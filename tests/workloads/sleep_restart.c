/* sleep_restart STATEDIR [iter] - a clock_nanosleep interrupted by the dump
 * restarts (with "iter", after two pre-dumps that left it in
 * restart_syscall).
 *
 * The main thread sleeps 1000 s in clock_nanosleep(CLOCK_MONOTONIC). Only
 * the SIGTERM handler may end the call, with EINTR; a zero return, any other
 * errno (a leaked ERESTART* 512..516 included) or EINTR without SIGTERM is a
 * failure, and the remaining time must not exceed the requested time. */
#include "wl.h"
#include <sys/syscall.h>
#include <time.h>

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	/* "iter": the harness pre-dumps twice first, each round restarting the
	 * sleep through restart_syscall */
	if (argc > 2 && strcmp(argv[2], "iter") == 0 && wl_write_file("pre-dumps", "2\n", 2) < 0)
		wl_fail("write pre-dumps: %s", strerror(errno));
	wl_ready();
	const struct timespec req = { .tv_sec = 1000, .tv_nsec = 0 };
	struct timespec rem = { 0, 0 };
	long r = syscall(SYS_clock_nanosleep, CLOCK_MONOTONIC, 0, &req, &rem);
	int err = errno;
	if (r == 0)
		wl_fail("clock_nanosleep returned 0 before SIGTERM (slept 1000 s?)");
	if (err != EINTR)
		wl_fail("clock_nanosleep failed with errno %d (%s), expected EINTR", err,
			strerror(err));
	if (!wl_term)
		wl_fail("clock_nanosleep returned EINTR but SIGTERM's handler did not run");
	wl_after();
	if (rem.tv_sec < 0 || rem.tv_nsec < 0 || rem.tv_nsec >= 1000000000L)
		wl_fail("remaining time %lld.%09ld is not a valid timespec", (long long)rem.tv_sec,
			rem.tv_nsec);
	if (rem.tv_sec > req.tv_sec || (rem.tv_sec == req.tv_sec && rem.tv_nsec > req.tv_nsec))
		wl_fail("remaining time %lld.%09ld exceeds the requested %lld s",
			(long long)rem.tv_sec, rem.tv_nsec, (long long)req.tv_sec);
	if (rem.tv_sec == 0 && rem.tv_nsec == 0)
		wl_fail("remaining time is zero after an interrupted 1000 s sleep");
	wl_pass();
}
