/* signals STATEDIR - signal dispositions, masks, pending signals and the
 * alternate stack survive.
 *
 * SIGUSR1: SA_SIGINFO|SA_RESTART|SA_ONSTACK with a nontrivial sa_mask;
 * SIGUSR2: plain handler; SIGRTMIN+1: SA_SIGINFO handler; SIGPIPE ignored;
 * SIGTRAP caught (crest's injected calls end on an int3); SIGHUP default; a 64 KiB sigaltstack; SIGUSR2 and SIGRTMIN+1 blocked, with
 * SIGUSR2 and two SIGRTMIN+1 (values 42, 43) pending. */
#include "wl.h"

#define ALTSTACK_SIZE (64 * 1024)
#define NSIG_CHECK 64

static volatile sig_atomic_t usr2_count, rt_count, usr1_count, usr1_on_altstack;
static volatile int rt_values[8];
static volatile int usr1_mask_ok = -1;
static stack_t altstack;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
	(void)uc;
	char local;
	uintptr_t a = (uintptr_t)&local, lo = (uintptr_t)altstack.ss_sp;
	usr1_on_altstack = a >= lo && a < lo + altstack.ss_size;
	usr1_count++;
	sigset_t m;
	sigprocmask(SIG_BLOCK, NULL, &m);
	usr1_mask_ok = sig == SIGUSR1 && si->si_signo == SIGUSR1 && sigismember(&m, SIGINT) &&
		       sigismember(&m, SIGQUIT) && sigismember(&m, SIGRTMIN + 3);
}

static void on_usr2(int sig)
{
	(void)sig;
	usr2_count++;
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
	(void)sig;
	(void)uc;
	if (rt_count < 8)
		rt_values[rt_count] = si->si_value.sival_int;
	rt_count++;
}

static const char *sset_str(const sigset_t *s)
{
	static char buf[512];
	int n = 0;
	buf[0] = 0;
	for (int i = 1; i <= NSIG_CHECK && n < 480; i++)
		if (sigismember(s, i) == 1)
			n += snprintf(buf + n, sizeof(buf) - (size_t)n, "%s%d", n ? "," : "", i);
	return buf;
}

static int sset_eq(const sigset_t *a, const sigset_t *b)
{
	for (int i = 1; i <= NSIG_CHECK; i++)
		if (sigismember(a, i) != sigismember(b, i))
			return 0;
	return 1;
}

static void set(int sig, void *handler, int flags, const int *mask_sigs)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	if (flags & SA_SIGINFO)
		sa.sa_sigaction = handler;
	else
		sa.sa_handler = handler;
	sa.sa_flags = flags;
	sigemptyset(&sa.sa_mask);
	for (; mask_sigs && *mask_sigs; mask_sigs++)
		sigaddset(&sa.sa_mask, *mask_sigs);
	if (sigaction(sig, &sa, NULL) < 0)
		wl_fail("sigaction(%d): %s", sig, strerror(errno));
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	int usr1_mask[] = { SIGINT, SIGQUIT, SIGRTMIN + 3, 0 };
	set(SIGUSR1, (void *)on_usr1, SA_SIGINFO | SA_RESTART | SA_ONSTACK, usr1_mask);
	set(SIGUSR2, (void *)on_usr2, 0, NULL);
	set(SIGRTMIN + 1, (void *)on_rt, SA_SIGINFO, NULL);
	set(SIGPIPE, (void *)SIG_IGN, 0, NULL);
	/* (caught: crest's injected calls end on an int3, whose SIGTRAP must
	 * leave the handler alone) */
	set(SIGTRAP, (void *)on_usr2, 0, NULL);
	set(SIGHUP, (void *)SIG_DFL, 0, NULL);

	altstack.ss_sp = malloc(ALTSTACK_SIZE);
	altstack.ss_size = ALTSTACK_SIZE;
	altstack.ss_flags = 0;
	if (!altstack.ss_sp || sigaltstack(&altstack, NULL) < 0)
		wl_fail("sigaltstack: %s", strerror(errno));

	sigset_t blocked;
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGUSR2);
	sigaddset(&blocked, SIGRTMIN + 1);
	if (sigprocmask(SIG_SETMASK, &blocked, NULL) < 0)
		wl_fail("sigprocmask: %s", strerror(errno));
	raise(SIGUSR2);
	union sigval v;
	v.sival_int = 42;
	if (sigqueue(getpid(), SIGRTMIN + 1, v) < 0)
		wl_fail("sigqueue 42: %s", strerror(errno));
	v.sival_int = 43;
	if (sigqueue(getpid(), SIGRTMIN + 1, v) < 0)
		wl_fail("sigqueue 43: %s", strerror(errno));

	/* remember every disposition as the kernel reports it */
	struct sigaction before[NSIG_CHECK + 1];
	for (int i = 1; i <= NSIG_CHECK; i++)
		if (i != SIGKILL && i != SIGSTOP && sigaction(i, NULL, &before[i]) < 0)
			memset(&before[i], 0, sizeof(before[i]));

	wl_ready();
	wl_wait_term();

	for (int i = 1; i <= NSIG_CHECK; i++) {
		if (i == SIGKILL || i == SIGSTOP)
			continue;
		struct sigaction now;
		if (sigaction(i, NULL, &now) < 0)
			continue;
		if (now.sa_handler != before[i].sa_handler)
			wl_fail("signal %d: handler is %p, expected %p", i, (void *)now.sa_handler,
				(void *)before[i].sa_handler);
		if (now.sa_flags != before[i].sa_flags)
			wl_fail("signal %d: sa_flags is %#x, expected %#x", i, now.sa_flags,
				before[i].sa_flags);
		if (!sset_eq(&now.sa_mask, &before[i].sa_mask)) {
			char was[512];
			snprintf(was, sizeof(was), "%s", sset_str(&before[i].sa_mask));
			wl_fail("signal %d: sa_mask is {%s}, expected {%s}", i, sset_str(&now.sa_mask),
				was);
		}
		if (before[i].sa_handler != SIG_DFL && before[i].sa_handler != SIG_IGN &&
		    now.sa_restorer != before[i].sa_restorer)
			wl_fail("signal %d: sa_restorer is %p, expected %p", i,
				(void *)now.sa_restorer, (void *)before[i].sa_restorer);
	}

	sigset_t mask;
	sigprocmask(SIG_BLOCK, NULL, &mask);
	if (!sset_eq(&mask, &blocked)) {
		char want[512];
		snprintf(want, sizeof(want), "%s", sset_str(&blocked));
		wl_fail("blocked mask is {%s}, expected {%s}", sset_str(&mask), want);
	}
	sigset_t pend;
	sigpending(&pend);
	if (!sset_eq(&pend, &blocked)) {
		char want[512];
		snprintf(want, sizeof(want), "%s", sset_str(&blocked));
		wl_fail("pending set is {%s}, expected {%s}", sset_str(&pend), want);
	}
	stack_t ss;
	if (sigaltstack(NULL, &ss) < 0)
		wl_fail("sigaltstack query: %s", strerror(errno));
	if (ss.ss_sp != altstack.ss_sp || ss.ss_size != altstack.ss_size || ss.ss_flags != 0)
		wl_fail("sigaltstack is sp=%p size=%zu flags=%#x, expected sp=%p size=%zu "
			"flags=0",
			ss.ss_sp, ss.ss_size, ss.ss_flags, altstack.ss_sp, altstack.ss_size);

	if (sigprocmask(SIG_UNBLOCK, &blocked, NULL) < 0)
		wl_fail("unblock: %s", strerror(errno));
	if (usr2_count != 1)
		wl_fail("SIGUSR2 handler ran %d times after unblocking, expected once",
			(int)usr2_count);
	if (rt_count != 2)
		wl_fail("SIGRTMIN+1 handler ran %d times after unblocking, expected twice",
			(int)rt_count);
	if (rt_values[0] != 42 || rt_values[1] != 43)
		wl_fail("SIGRTMIN+1 values were %d, %d, expected 42, 43", rt_values[0],
			rt_values[1]);
	sigpending(&pend);
	for (int i = 1; i <= NSIG_CHECK; i++)
		if (sigismember(&pend, i) == 1)
			wl_fail("signal %d still pending after unblocking", i);

	raise(SIGUSR1);
	if (usr1_count != 1)
		wl_fail("SIGUSR1 handler ran %d times, expected once", (int)usr1_count);
	if (!usr1_on_altstack)
		wl_fail("SIGUSR1 handler did not run on the alternate stack");
	if (usr1_mask_ok != 1)
		wl_fail("SIGUSR1 handler ran without its sa_mask (SIGINT, SIGQUIT, SIGRTMIN+3) "
			"blocked or with a wrong siginfo");
	wl_pass();
}
