/* misc_state STATEDIR - per-task odds and ends survive: rlimits,
 * personality, umask, comm, cwd and interval timers. */
#include "wl.h"
#include <limits.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>

#define COMM "crest-misc"
#define PERSONA (ADDR_NO_RANDOMIZE | UNAME26)

struct lim {
	int res;
	const char *name;
	struct rlimit want;
};

static int tv_le(struct timeval a, struct timeval b)
{
	return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_usec <= b.tv_usec);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	struct lim lims[] = {
		{ RLIMIT_NOFILE, "RLIMIT_NOFILE", { 777, 4096 } },
		{ RLIMIT_CORE, "RLIMIT_CORE", { 0, RLIM_INFINITY } },
		{ RLIMIT_MSGQUEUE, "RLIMIT_MSGQUEUE", { 12345, 654321 } },
	};
	int nlims = (int)(sizeof(lims) / sizeof(lims[0]));
	for (int i = 0; i < nlims; i++)
		if (setrlimit(lims[i].res, &lims[i].want) < 0)
			wl_fail("setrlimit(%s): %s", lims[i].name, strerror(errno));
	if (personality(PERSONA) < 0)
		wl_fail("personality: %s", strerror(errno));
	umask(027);
	if (prctl(PR_SET_NAME, COMM, 0, 0, 0) < 0)
		wl_fail("PR_SET_NAME: %s", strerror(errno));

	char sub[PATH_MAX], want_cwd[PATH_MAX];
	snprintf(sub, sizeof(sub), "%s/sub", wl_dir);
	if (mkdir(sub, 0755) < 0 && errno != EEXIST)
		wl_fail("mkdir %s: %s", sub, strerror(errno));
	if (chdir(sub) < 0)
		wl_fail("chdir %s: %s", sub, strerror(errno));
	if (!getcwd(want_cwd, sizeof(want_cwd)))
		wl_fail("getcwd: %s", strerror(errno));

	struct itimerval virt = { .it_interval = { 500, 250000 }, .it_value = { 1000, 125000 } };
	if (setitimer(ITIMER_VIRTUAL, &virt, NULL) < 0)
		wl_fail("setitimer(ITIMER_VIRTUAL): %s", strerror(errno));

	wl_ready();
	wl_wait_term();

	for (int i = 0; i < nlims; i++) {
		struct rlimit now;
		if (getrlimit(lims[i].res, &now) < 0)
			wl_fail("getrlimit(%s): %s", lims[i].name, strerror(errno));
		if (now.rlim_cur != lims[i].want.rlim_cur || now.rlim_max != lims[i].want.rlim_max)
			wl_fail("%s is %llu/%llu, expected %llu/%llu", lims[i].name,
				(unsigned long long)now.rlim_cur, (unsigned long long)now.rlim_max,
				(unsigned long long)lims[i].want.rlim_cur,
				(unsigned long long)lims[i].want.rlim_max);
	}
	int persona = personality(0xffffffff);
	if (persona != PERSONA)
		wl_fail("personality is %#x, expected %#x", persona, PERSONA);
	mode_t mask = umask(0);
	if (mask != 027)
		wl_fail("umask is %03o, expected 027", (unsigned)mask);

	char comm[64] = { 0 };
	int fd = open("/proc/self/comm", O_RDONLY);
	if (fd < 0 || read(fd, comm, sizeof(comm) - 1) < 0)
		wl_fail("read /proc/self/comm: %s", strerror(errno));
	close(fd);
	comm[strcspn(comm, "\n")] = 0;
	if (strcmp(comm, COMM) != 0)
		wl_fail("comm is \"%s\", expected \"%s\"", comm, COMM);

	char cwd[PATH_MAX];
	if (!getcwd(cwd, sizeof(cwd)))
		wl_fail("getcwd after restore: %s", strerror(errno));
	if (strcmp(cwd, want_cwd) != 0)
		wl_fail("cwd is %s, expected %s", cwd, want_cwd);

	struct itimerval now;
	if (getitimer(ITIMER_VIRTUAL, &now) < 0)
		wl_fail("getitimer(ITIMER_VIRTUAL): %s", strerror(errno));
	if (now.it_interval.tv_sec != virt.it_interval.tv_sec ||
	    now.it_interval.tv_usec != virt.it_interval.tv_usec)
		wl_fail("ITIMER_VIRTUAL interval is %ld.%06ld, expected %ld.%06ld",
			(long)now.it_interval.tv_sec, (long)now.it_interval.tv_usec,
			(long)virt.it_interval.tv_sec, (long)virt.it_interval.tv_usec);
	if (now.it_value.tv_sec == 0 && now.it_value.tv_usec == 0)
		wl_fail("ITIMER_VIRTUAL is disarmed, expected about %ld s left",
			(long)virt.it_value.tv_sec);
	/* the kernel rounds a CPU timer's value up by up to a tick (4 ms at
	 * HZ=250): allow 20 ms */
	struct timeval limit = virt.it_value;
	limit.tv_usec += 20000;
	if (!tv_le(now.it_value, limit))
		wl_fail("ITIMER_VIRTUAL has %ld.%06ld left, more than the %ld.%06ld set (+20 ms)",
			(long)now.it_value.tv_sec, (long)now.it_value.tv_usec,
			(long)virt.it_value.tv_sec, (long)virt.it_value.tv_usec);
	int which[] = { ITIMER_PROF, ITIMER_REAL };
	const char *names[] = { "ITIMER_PROF", "ITIMER_REAL" };
	for (int i = 0; i < 2; i++) {
		if (getitimer(which[i], &now) < 0)
			wl_fail("getitimer(%s): %s", names[i], strerror(errno));
		if (now.it_value.tv_sec || now.it_value.tv_usec || now.it_interval.tv_sec ||
		    now.it_interval.tv_usec)
			wl_fail("%s is armed (%ld.%06ld, interval %ld.%06ld) but was never set",
				names[i], (long)now.it_value.tv_sec, (long)now.it_value.tv_usec,
				(long)now.it_interval.tv_sec, (long)now.it_interval.tv_usec);
	}
	wl_pass();
}
