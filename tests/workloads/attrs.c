/* attrs.c - attributes a restore must not lose (issue 13): each is set up,
 * read back as the kernel reports it, and compared after the restore.
 *
 *   scheduling: nice 7 for the process, SCHED_BATCH (nice 3 where
 *     permitted) for a helper
 *     thread, SCHED_RR 1 for a second one where permitted;
 *   POSIX timers: a process timer (SIGUSR1, 1000 s left, 500 s interval), a
 *     timer that signals the helper thread (SIGEV_THREAD_ID), a disarmed
 *     SIGEV_NONE timer; their ids;
 *   mlock: an area mlock()ed, one mlock2(MLOCK_ONFAULT)ed, mlockall
 *     (MCL_FUTURE): a mapping made after the restore comes locked;
 *   fcntl: a pipe with O_ASYNC, its SIGIO owner (the process) and signal
 *     (SIGRTMIN+1), an fd whose owner is the helper thread, a pipe of
 *     256 KiB capacity with data, pipe status flags exactly as they were;
 *   sockets: SO_KEEPALIVE, TCP_KEEPIDLE/INTVL/CNT, TCP_NODELAY, TCP_CORK,
 *     SO_OOBINLINE, SO_LINGER, IP_TOS, IP_TTL, a classic BPF filter,
 *     SO_BINDTODEVICE, IP_FREEBIND with an address not on the machine,
 *     IP_MULTICAST_TTL, a locked receive buffer;
 *   a shared read-only mapping of a file opened read-write: it can still
 *     be made writable;
 *   a membarrier registration (private expedited); a NUMA memory policy
 *     (interleave over node 0, where the kernel has NUMA);
 *   named anonymous mappings (PR_SET_VMA_ANON_NAME, private and shared),
 *   coredump_filter, the main thread's TSC mode (PR_TSC_SIGSEGV, around
 *   the dump only), memory-deny-write-execute (PR_SET_MDWE), the main
 *   thread's machine-check kill policy (PR_MCE_KILL_EARLY), the session's
 *   autogroup nice (3, where the kernel has autogroups);
 *   timer slack (the main and the helper thread), the helper's CPU affinity, the process's THP
 *     switch (PR_SET_THP_DISABLE), its audit login uid (where it may set
 *     it), a memfd's mode bits (fchmod 0640).
 */
#include "wl.h"

#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <time.h>

#ifndef MLOCK_ONFAULT
#define MLOCK_ONFAULT 1
#endif
#ifndef MCL_ONFAULT
#define MCL_ONFAULT 4
#endif

static pid_t helper_tid, rr_tid;
static int rr_ok;
static volatile int stop;

static void *helper(void *arg)
{
	(void)arg;
	prctl(PR_SET_TIMERSLACK, 123456UL, 0, 0, 0);
	cpu_set_t one;
	CPU_ZERO(&one);
	CPU_SET(0, &one);
	sched_setaffinity(0, sizeof(one), &one);
	helper_tid = (pid_t)syscall(SYS_gettid);
	setpriority(PRIO_PROCESS, (id_t)helper_tid, 3);
	struct sched_param p = {0};
	if (sched_setscheduler(0, SCHED_BATCH, &p))
		wl_fail("SCHED_BATCH: %s", strerror(errno));
	while (!stop)
		pause();
	return NULL;
}

static void *rr(void *arg)
{
	(void)arg;
	rr_tid = (pid_t)syscall(SYS_gettid);
	struct sched_param p = {.sched_priority = 1};
	rr_ok = sched_setscheduler(0, SCHED_RR, &p) == 0;
	while (!stop)
		pause();
	return NULL;
}

/* The smaps VmFlags of the mapping at addr. */
static void vmflags(void *addr, char *out, size_t len)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	int in = 0;
	out[0] = 0;
	if (!f)
		return;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' '))
			in = s <= (unsigned long)addr && (unsigned long)addr < e;
		else if (in && !strncmp(line, "VmFlags:", 8)) {
			snprintf(out, len, "%s", line + 8);
			break;
		}
	}
	fclose(f);
}

static int has_flag(const char *flags, const char *f)
{
	char pat[8];
	snprintf(pat, sizeof(pat), " %s", f);
	const char *p = strstr(flags, pat);
	return p && (p[3] == ' ' || p[3] == '\n' || p[3] == 0);
}

static int geti(int fd, int level, int opt)
{
	int v = -1;
	socklen_t l = sizeof(v);
	if (getsockopt(fd, level, opt, &v, &l))
		return -1000 - errno;
	return v;
}

struct opt {
	int level, name, value;
	const char *what;
};

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, SIGUSR1);
	sigaddset(&s, SIGUSR2);
	sigaddset(&s, SIGIO);
	sigaddset(&s, SIGRTMIN + 1);
	sigaddset(&s, SIGTRAP);
	sigaddset(&s, SIGSEGV);
	pthread_sigmask(SIG_BLOCK, &s, NULL);
	/* synchronous signals pending, with their siginfo */
	union sigval sv = {.sival_int = 77};
	if (sigqueue(getpid(), SIGTRAP, sv))
		wl_fail("sigqueue SIGTRAP: %s", strerror(errno));
	siginfo_t segv = {0};
	segv.si_signo = SIGSEGV;
	segv.si_code = SI_QUEUE;
	segv.si_pid = getpid();
	segv.si_uid = getuid();
	segv.si_value.sival_int = 88;
	if (syscall(SYS_rt_tgsigqueueinfo, getpid(), syscall(SYS_gettid), SIGSEGV, &segv))
		wl_fail("rt_tgsigqueueinfo SIGSEGV: %s", strerror(errno));

	/* scheduling */
	if (setpriority(PRIO_PROCESS, 0, 7))
		wl_fail("setpriority: %s", strerror(errno));
	pthread_t th, th2;
	pthread_create(&th, NULL, helper, NULL);
	pthread_create(&th2, NULL, rr, NULL);
	while (!helper_tid || !rr_tid)
		usleep(1000);
	usleep(10000);

	/* POSIX timers, made with the raw syscall to know the kernel ids */
	int tid_a = -1, tid_b = -1, tid_c = -1;
	struct sigevent ev = {0};
	ev.sigev_notify = SIGEV_SIGNAL;
	ev.sigev_signo = SIGUSR1;
	ev.sigev_value.sival_ptr = (void *)0x1234;
	if (syscall(SYS_timer_create, CLOCK_MONOTONIC, &ev, &tid_a))
		wl_fail("timer_create A: %s", strerror(errno));
	struct itimerspec its = {.it_interval = {500, 0}, .it_value = {1000, 0}};
	if (syscall(SYS_timer_settime, tid_a, 0, &its, NULL))
		wl_fail("timer_settime A: %s", strerror(errno));
	ev.sigev_notify = SIGEV_SIGNAL | 4 /* SIGEV_THREAD_ID */;
	ev.sigev_signo = SIGUSR2;
	ev._sigev_un._tid = helper_tid;
	if (syscall(SYS_timer_create, CLOCK_REALTIME, &ev, &tid_b))
		wl_fail("timer_create B: %s", strerror(errno));
	struct itimerspec its_b = {.it_interval = {0, 0}, .it_value = {2000, 0}};
	syscall(SYS_timer_settime, tid_b, 0, &its_b, NULL);
	ev.sigev_notify = SIGEV_NONE;
	if (syscall(SYS_timer_create, CLOCK_BOOTTIME, &ev, &tid_c))
		wl_fail("timer_create C: %s", strerror(errno));
	char timers_before[1024] = "";
	{
		int fd = open("/proc/self/timers", O_RDONLY);
		ssize_t n = read(fd, timers_before, sizeof(timers_before) - 1);
		timers_before[n > 0 ? n : 0] = 0;
		close(fd);
	}

	/* mlock */
	char *locked = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *onfault = mmap(NULL, 4 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	memset(locked, 0x5a, 4 * 4096);
	if (mlock(locked, 4 * 4096))
		wl_fail("mlock: %s", strerror(errno));
	if (syscall(SYS_mlock2, onfault, 4 * 4096, MLOCK_ONFAULT))
		wl_fail("mlock2: %s", strerror(errno));
	onfault[0] = 1;
	if (mlockall(MCL_FUTURE))
		wl_fail("mlockall: %s", strerror(errno));

	/* fcntl */
	int pa[2], pb[2];
	wl_pipe(pa);
	wl_pipe(pb);
	fcntl(pa[0], F_SETFL, O_ASYNC | O_NONBLOCK);
	struct f_owner_ex own = {F_OWNER_PID, getpid()};
	if (fcntl(pa[0], F_SETOWN_EX, &own))
		wl_fail("F_SETOWN_EX: %s", strerror(errno));
	if (fcntl(pa[0], F_SETSIG, SIGRTMIN + 1))
		wl_fail("F_SETSIG: %s", strerror(errno));
	struct f_owner_ex town = {F_OWNER_TID, helper_tid};
	if (fcntl(pb[1], F_SETOWN_EX, &town))
		wl_fail("F_SETOWN_EX tid: %s", strerror(errno));
	if (fcntl(pb[1], F_SETPIPE_SZ, 256 * 1024) < 0)
		wl_fail("F_SETPIPE_SZ: %s", strerror(errno));
	if (write(pb[1], "pipe data", 9) != 9)
		wl_fail("write pipe");
	int fl_before[4] = {fcntl(pa[0], F_GETFL), fcntl(pa[1], F_GETFL), fcntl(pb[0], F_GETFL),
			    fcntl(pb[1], F_GETFL)};

	/* sockets */
	int tcp = socket(AF_INET, SOCK_STREAM, 0);
	int udp = socket(AF_INET, SOCK_DGRAM, 0);
	int fb = socket(AF_INET, SOCK_DGRAM, 0);
	struct opt tcp_opts[] = {
		{SOL_SOCKET, SO_KEEPALIVE, 1, "SO_KEEPALIVE"},
		{SOL_SOCKET, SO_OOBINLINE, 1, "SO_OOBINLINE"},
		{IPPROTO_TCP, TCP_KEEPIDLE, 77, "TCP_KEEPIDLE"},
		{IPPROTO_TCP, TCP_KEEPINTVL, 11, "TCP_KEEPINTVL"},
		{IPPROTO_TCP, TCP_KEEPCNT, 4, "TCP_KEEPCNT"},
		{IPPROTO_TCP, TCP_NODELAY, 1, "TCP_NODELAY"},
		{IPPROTO_TCP, TCP_CORK, 1, "TCP_CORK"},
		{IPPROTO_IP, IP_TOS, 0x10, "IP_TOS"},
		{IPPROTO_IP, IP_TTL, 33, "IP_TTL"},
	};
	struct opt udp_opts[] = {
		{IPPROTO_IP, IP_MULTICAST_TTL, 5, "IP_MULTICAST_TTL"},
		{SOL_SOCKET, SO_RCVBUF, 65536, "SO_RCVBUF"},
		{SOL_SOCKET, SO_BROADCAST, 1, "SO_BROADCAST"},
	};
	int n_tcp = sizeof(tcp_opts) / sizeof(tcp_opts[0]);
	int n_udp = sizeof(udp_opts) / sizeof(udp_opts[0]);
	for (int i = 0; i < n_tcp; i++)
		if (setsockopt(tcp, tcp_opts[i].level, tcp_opts[i].name, &tcp_opts[i].value, sizeof(int)))
			wl_fail("setsockopt %s: %s", tcp_opts[i].what, strerror(errno));
	for (int i = 0; i < n_udp; i++)
		if (setsockopt(udp, udp_opts[i].level, udp_opts[i].name, &udp_opts[i].value, sizeof(int)))
			wl_fail("setsockopt %s: %s", udp_opts[i].what, strerror(errno));
	struct linger lg = {1, 5};
	setsockopt(tcp, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	if (bind(tcp, (struct sockaddr *)&a, sizeof(a)) || listen(tcp, 4))
		wl_fail("bind/listen: %s", strerror(errno));
	struct sock_filter code[] = {
		{0x28, 0, 0, 0x0000000c}, /* ldh [12] */
		{0x06, 0, 0, 0x0000ffff}, /* ret #65535 */
	};
	struct sock_fprog prog = {2, code};
	if (setsockopt(udp, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof(prog)))
		wl_fail("SO_ATTACH_FILTER: %s", strerror(errno));
	int bound_dev = setsockopt(udp, SOL_SOCKET, SO_BINDTODEVICE, "lo", 3) == 0;
	int one = 1;
	if (setsockopt(fb, IPPROTO_IP, IP_FREEBIND, &one, sizeof(one)))
		wl_fail("IP_FREEBIND: %s", strerror(errno));
	struct sockaddr_in far = {.sin_family = AF_INET, .sin_port = htons(40999)};
	far.sin_addr.s_addr = htonl(0x0a7b2d43); /* 10.123.45.67, not on the machine */
	if (bind(fb, (struct sockaddr *)&far, sizeof(far)))
		wl_fail("bind with IP_FREEBIND: %s", strerror(errno));
	int rcvbuf_before = geti(udp, SOL_SOCKET, SO_RCVBUF);
	int linger_before[2] = {0, 0};
	{
		socklen_t l = sizeof(lg);
		getsockopt(tcp, SOL_SOCKET, SO_LINGER, &lg, &l);
		linger_before[0] = lg.l_onoff;
		linger_before[1] = lg.l_linger;
	}

	/* a shared read-only mapping of a file opened read-write */
	char path[4096];
	snprintf(path, sizeof(path), "%s/shared.bin", wl_dir);
	int ff = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (ff < 0 || ftruncate(ff, 4096))
		wl_fail("shared file: %s", strerror(errno));
	char *shm = mmap(NULL, 4096, PROT_READ, MAP_SHARED, ff, 0);
	if (shm == MAP_FAILED)
		wl_fail("mmap shared: %s", strerror(errno));

	prctl(PR_SET_TIMERSLACK, 234567UL, 0, 0, 0);
	/* a NUMA policy for the main thread: interleave over node 0 */
	unsigned long node0 = 1;
	int have_numa = syscall(SYS_set_mempolicy, 3 /* MPOL_INTERLEAVE */, &node0, 64) == 0;
	/* membarrier: registered for private expedited barriers */
	if (syscall(SYS_membarrier, 1 << 4, 0, 0))
		wl_fail("membarrier register: %s", strerror(errno));
	if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0))
		wl_fail("PR_SET_THP_DISABLE: %s", strerror(errno));
	/* the audit login uid: only with CAP_AUDIT_CONTROL (not in uns) */
	{
		int fd = open("/proc/self/loginuid", O_WRONLY);
		if (fd >= 0) {
			if (write(fd, "4242", 4) < 0) {
				/* not permitted here: stays as it was */
			}
			close(fd);
		}
	}
	char loginuid_before[32] = "";
	{
		int fd = open("/proc/self/loginuid", O_RDONLY);
		ssize_t n = fd >= 0 ? read(fd, loginuid_before, sizeof(loginuid_before) - 1) : -1;
		loginuid_before[n > 0 ? n : 0] = 0;
		if (fd >= 0)
			close(fd);
	}
	int mfd = memfd_create("attrs", MFD_CLOEXEC);
	if (mfd < 0 || fchmod(mfd, 0640) || write(mfd, "memfd", 5) != 5)
		wl_fail("memfd: %s", strerror(errno));

	/* raising a thread's priority again needs CAP_SYS_NICE (not in uns) */
	int helper_nice = getpriority(PRIO_PROCESS, (id_t)helper_tid);

	char vm_locked[256], vm_onfault[256];
	vmflags(locked, vm_locked, sizeof(vm_locked));
	vmflags(onfault, vm_onfault, sizeof(vm_onfault));
	if (!has_flag(vm_locked, "lo") || !has_flag(vm_onfault, "lf"))
		wl_fail("mlock not shown before the dump: %s / %s", vm_locked, vm_onfault);

	/* named anonymous mappings, coredump_filter, memory-deny-write-execute */
#define X_PR_SET_VMA 0x53564d41
#define X_PR_SET_MDWE 65
#define X_PR_GET_MDWE 66
	char *named = mmap(NULL, 2 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char *named_sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	int have_names = named != MAP_FAILED && named_sh != MAP_FAILED &&
			 prctl(X_PR_SET_VMA, 0, named, 2 * 4096, "crest-named") == 0 &&
			 prctl(X_PR_SET_VMA, 0, named_sh, 4096, "crest-shm") == 0;
	if (named != MAP_FAILED)
		named[0] = 'n';
	if (named_sh != MAP_FAILED)
		named_sh[0] = 's';
	{
		int fd = open("/proc/self/coredump_filter", O_WRONLY);
		if (fd < 0 || write(fd, "0x7f", 4) != 4)
			wl_fail("coredump_filter: %s", strerror(errno));
		close(fd);
	}
	int have_mdwe = prctl(X_PR_SET_MDWE, 1, 0, 0, 0) == 0;
	if (prctl(PR_MCE_KILL, PR_MCE_KILL_SET, PR_MCE_KILL_EARLY, 0, 0))
		wl_fail("PR_MCE_KILL: %s", strerror(errno));
	int have_autogroup = 0;
	{
		int fd = open("/proc/self/autogroup", O_WRONLY);
		have_autogroup = fd >= 0 && write(fd, "3", 1) == 1;
		if (fd >= 0)
			close(fd);
	}
	/* rdtsc faults in the main thread while it waits (nothing it does
	 * until then reads the clock) */
	int have_tsc = prctl(PR_SET_TSC, PR_TSC_SIGSEGV, 0, 0, 0) == 0;

	wl_ready();
	wl_wait_term();
	int tsc_now = -1;
	prctl(PR_GET_TSC, &tsc_now, 0, 0, 0);
	prctl(PR_SET_TSC, PR_TSC_ENABLE, 0, 0, 0);
	wl_after();

	char msg[4096] = "";
	size_t m = 0;
#define BAD(...) (m += (size_t)snprintf(msg + m, sizeof(msg) - m, __VA_ARGS__))
	if (prctl(PR_MCE_KILL_GET, 0, 0, 0, 0) != PR_MCE_KILL_EARLY)
		BAD("MCE kill policy %d, expected PR_MCE_KILL_EARLY; ", prctl(PR_MCE_KILL_GET, 0, 0, 0, 0));
	if (have_autogroup) {
		char buf[128] = "";
		int fd = open("/proc/self/autogroup", O_RDONLY);
		ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
		if (fd >= 0)
			close(fd);
		if (n <= 0 || !strstr(buf, "nice 3"))
			BAD("autogroup %s, expected nice 3; ", buf);
	}
	if (have_tsc && tsc_now != PR_TSC_SIGSEGV)
		BAD("TSC mode %d, expected PR_TSC_SIGSEGV; ", tsc_now);
	if (have_mdwe && prctl(X_PR_GET_MDWE, 0, 0, 0, 0) != 1)
		BAD("memory-deny-write-execute %d, expected 1; ", prctl(X_PR_GET_MDWE, 0, 0, 0, 0));
	{
		char buf[64] = "";
		int fd = open("/proc/self/coredump_filter", O_RDONLY);
		ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
		close(fd);
		if (n <= 0 || strtoul(buf, NULL, 16) != 0x7f)
			BAD("coredump_filter %s, expected 7f; ", buf);
	}
	if (have_names) {
		FILE *f = fopen("/proc/self/maps", "r");
		char line[512];
		int seen = 0;
		while (f && fgets(line, sizeof(line), f)) {
			unsigned long s = strtoul(line, NULL, 16);
			if (s == (unsigned long)named && strstr(line, "[anon:crest-named]"))
				seen |= 1;
			if (s == (unsigned long)named_sh && strstr(line, "[anon_shmem:crest-shm]"))
				seen |= 2;
		}
		if (f)
			fclose(f);
		if (seen != 3)
			BAD("named mappings lost their names (%d); ", seen);
		if (named[0] != 'n' || named_sh[0] != 's')
			BAD("named mappings lost their data; ");
	}
	errno = 0;
	int nice_now = getpriority(PRIO_PROCESS, 0);
	if (nice_now != 7)
		BAD("nice %d, expected 7; ", nice_now);
	if (getpriority(PRIO_PROCESS, (id_t)helper_tid) != helper_nice)
		BAD("helper nice %d, was %d; ", getpriority(PRIO_PROCESS, (id_t)helper_tid), helper_nice);
	if (sched_getscheduler(helper_tid) != SCHED_BATCH)
		BAD("helper policy %d, expected SCHED_BATCH; ", sched_getscheduler(helper_tid));
	if (rr_ok && sched_getscheduler(rr_tid) != SCHED_RR)
		BAD("second thread policy %d, expected SCHED_RR; ", sched_getscheduler(rr_tid));

	struct itimerspec cur;
	if (syscall(SYS_timer_gettime, tid_a, &cur))
		BAD("timer A (%d): %s; ", tid_a, strerror(errno));
	else if (cur.it_interval.tv_sec != 500 || cur.it_value.tv_sec <= 0 || cur.it_value.tv_sec > 1000)
		BAD("timer A: interval %ld, left %ld; ", (long)cur.it_interval.tv_sec,
		    (long)cur.it_value.tv_sec);
	if (syscall(SYS_timer_gettime, tid_b, &cur))
		BAD("timer B (%d): %s; ", tid_b, strerror(errno));
	else if (cur.it_value.tv_sec <= 0 || cur.it_value.tv_sec > 2000)
		BAD("timer B: left %ld; ", (long)cur.it_value.tv_sec);
	if (syscall(SYS_timer_gettime, tid_c, &cur))
		BAD("timer C (%d): %s; ", tid_c, strerror(errno));
	else if (cur.it_value.tv_sec || cur.it_value.tv_nsec)
		BAD("timer C armed; ");
	char timers_after[1024] = "";
	{
		int fd = open("/proc/self/timers", O_RDONLY);
		ssize_t n = read(fd, timers_after, sizeof(timers_after) - 1);
		timers_after[n > 0 ? n : 0] = 0;
		close(fd);
	}
	if (strcmp(timers_before, timers_after))
		BAD("/proc/self/timers was [%s], now [%s]; ", timers_before, timers_after);

	vmflags(locked, vm_locked, sizeof(vm_locked));
	vmflags(onfault, vm_onfault, sizeof(vm_onfault));
	if (!has_flag(vm_locked, "lo"))
		BAD("mlocked area not locked: %s; ", vm_locked);
	if (!has_flag(vm_onfault, "lf"))
		BAD("MLOCK_ONFAULT area not locked on fault: %s; ", vm_onfault);
	for (int i = 0; i < 4 * 4096; i++)
		if (locked[i] != 0x5a) {
			BAD("locked area byte %d changed; ", i);
			break;
		}
	char *later = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	char vm_later[256];
	vmflags(later, vm_later, sizeof(vm_later));
	if (!has_flag(vm_later, "lo"))
		BAD("mlockall(MCL_FUTURE) lost: a new mapping is %s; ", vm_later);

	struct f_owner_ex o;
	if (fcntl(pa[0], F_GETOWN_EX, &o) || o.type != F_OWNER_PID || o.pid != getpid())
		BAD("SIGIO owner of the pipe: type %d pid %d; ", o.type, o.pid);
	if (fcntl(pa[0], F_GETSIG) != SIGRTMIN + 1)
		BAD("F_GETSIG %d; ", fcntl(pa[0], F_GETSIG));
	if (fcntl(pb[1], F_GETOWN_EX, &o) || o.type != F_OWNER_TID || o.pid != helper_tid)
		BAD("SIGIO owner thread: type %d pid %d; ", o.type, o.pid);
	if (fcntl(pb[1], F_GETPIPE_SZ) != 256 * 1024)
		BAD("pipe size %d; ", fcntl(pb[1], F_GETPIPE_SZ));
	int fl_after[4] = {fcntl(pa[0], F_GETFL), fcntl(pa[1], F_GETFL), fcntl(pb[0], F_GETFL),
			   fcntl(pb[1], F_GETFL)};
	for (int i = 0; i < 4; i++)
		if (fl_after[i] != fl_before[i])
			BAD("pipe fd %d flags %#o, were %#o; ", i, fl_after[i], fl_before[i]);
	char buf[16] = "";
	if (read(pb[0], buf, sizeof(buf)) != 9 || memcmp(buf, "pipe data", 9))
		BAD("pipe data lost; ");

	for (int i = 0; i < n_tcp; i++) {
		int v = geti(tcp, tcp_opts[i].level, tcp_opts[i].name);
		if ((tcp_opts[i].value == 1 && v == 0) || (tcp_opts[i].value != 1 && v != tcp_opts[i].value))
			BAD("%s %d, set %d; ", tcp_opts[i].what, v, tcp_opts[i].value);
	}
	for (int i = 0; i < n_udp; i++) {
		int v = geti(udp, udp_opts[i].level, udp_opts[i].name);
		int want = udp_opts[i].name == SO_RCVBUF ? rcvbuf_before : udp_opts[i].value;
		if ((want == 1 && v == 0) || (want != 1 && v != want))
			BAD("%s %d, expected %d; ", udp_opts[i].what, v, want);
	}
	{
		socklen_t l = sizeof(lg);
		getsockopt(tcp, SOL_SOCKET, SO_LINGER, &lg, &l);
		if (lg.l_onoff != linger_before[0] || lg.l_linger != linger_before[1])
			BAD("SO_LINGER %d/%d; ", lg.l_onoff, lg.l_linger);
	}
	socklen_t fl = 0;
	if (getsockopt(udp, SOL_SOCKET, SO_ATTACH_FILTER, NULL, &fl) || fl != 2)
		BAD("socket filter: %u instructions; ", (unsigned)fl);
	if (bound_dev) {
		char dev[16] = "";
		socklen_t dl = sizeof(dev);
		getsockopt(udp, SOL_SOCKET, SO_BINDTODEVICE, dev, &dl);
		if (strcmp(dev, "lo"))
			BAD("SO_BINDTODEVICE [%s]; ", dev);
	}
	if (geti(fb, IPPROTO_IP, IP_FREEBIND) != 1)
		BAD("IP_FREEBIND lost; ");
	struct sockaddr_in got;
	socklen_t gl = sizeof(got);
	if (getsockname(fb, (struct sockaddr *)&got, &gl) || got.sin_addr.s_addr != far.sin_addr.s_addr ||
	    got.sin_port != far.sin_port)
		BAD("freebind socket not bound where it was; ");

	{
		sigset_t w;
		sigemptyset(&w);
		sigaddset(&w, SIGTRAP);
		sigaddset(&w, SIGSEGV);
		struct timespec zero = {0, 0};
		for (int i = 0; i < 2; i++) {
			siginfo_t si;
			int sig = sigtimedwait(&w, &si, &zero);
			if (sig == SIGTRAP && (si.si_code != SI_QUEUE || si.si_value.sival_int != 77))
				BAD("SIGTRAP code %d value %d; ", si.si_code, si.si_value.sival_int);
			else if (sig == SIGSEGV && si.si_value.sival_int != 88)
				BAD("SIGSEGV value %d; ", si.si_value.sival_int);
			else if (sig < 0)
				BAD("pending signal %d of 2 lost; ", i + 1);
		}
	}
	if (prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0) != 234567)
		BAD("timer slack %d; ", prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0));
	cpu_set_t aff;
	CPU_ZERO(&aff);
	if (sched_getaffinity(helper_tid, sizeof(aff), &aff) || CPU_COUNT(&aff) != 1 || !CPU_ISSET(0, &aff))
		BAD("helper affinity: %d CPUs; ", CPU_COUNT(&aff));
	if (have_numa) {
		int mode = -1;
		unsigned long mask[16] = {0};
		if (syscall(SYS_get_mempolicy, &mode, mask, 1024, NULL, 0) || mode != 3 || mask[0] != 1)
			BAD("memory policy %d mask %#lx; ", mode, mask[0]);
	}
	if (!(syscall(SYS_membarrier, 1 << 9, 0, 0) & (1 << 4)))
		BAD("membarrier registration lost; ");
	if (prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) != 1)
		BAD("THP disable lost; ");
	{
		char now[32] = "";
		int fd = open("/proc/self/loginuid", O_RDONLY);
		ssize_t n = fd >= 0 ? read(fd, now, sizeof(now) - 1) : -1;
		now[n > 0 ? n : 0] = 0;
		if (fd >= 0)
			close(fd);
		if (strcmp(now, loginuid_before))
			BAD("loginuid %s, was %s; ", now, loginuid_before);
	}
	struct stat mst;
	if (fstat(mfd, &mst) || (mst.st_mode & 07777) != 0640)
		BAD("memfd mode %o; ", (unsigned)(mst.st_mode & 07777));

	if (mprotect(shm, 4096, PROT_READ | PROT_WRITE))
		BAD("the shared mapping cannot be made writable: %s; ", strerror(errno));
	else
		shm[0] = 1;

	stop = 1;
	if (m)
		wl_fail("%s", msg);
	wl_pass();
}
