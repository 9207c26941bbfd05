/* seccomp STATEDIR - seccomp filters and strict mode come back, per thread
 * and per process (issue 16, item 3).
 *
 * Each filter answers one rarely used syscall with its own errno and lets
 * everything else through:
 *   A: sysinfo -> EPROTO (71), installed with SECCOMP_FILTER_FLAG_TSYNC by
 *      the root on itself and its thread T (they share it);
 *   C: syslog -> EMULTIHOP (72), T's own on top of A;
 *   B: times -> EDOTDOT (73), with SECCOMP_FILTER_FLAG_LOG, the child K's
 *      own on top of A (inherited from the root at fork).
 * A child S, forked before any filter, is in strict mode: it echoes bytes
 * from one pipe to another with read/write only and leaves with exit(2)
 * when the pipe ends.
 *
 * Before the dump and again after SIGTERM, the root asks T and K (over
 * pipes) to run their checks and checks itself: each filtered call fails
 * with its errno, the others do not, and /proc/thread-self/status shows
 * the mode and filter count; S must echo a byte (the harness compares its
 * mode from outside). */
#include "wl.h"

#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/prctl.h>
#include <sys/syscall.h>

#define E_A 71
#define E_C 72
#define E_B 73

static void install(long nr, int err, unsigned flags)
{
	struct sock_filter f[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)nr, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | (unsigned)err),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog p = {.len = 4, .filter = f};
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, flags, &p) < 0)
		wl_fail("seccomp(SET_MODE_FILTER, %#x) for syscall %ld: %s", flags, nr,
			strerror(errno));
}

/* Whether `nr` fails with `err` (the filter answers it). */
static int answered(long nr, int err)
{
	long r;
	errno = 0;
	if (nr == SYS_syslog)
		r = syscall(nr, 10, NULL, 0); /* SYSLOG_ACTION_SIZE_BUFFER */
	else if (nr == SYS_times)
		r = syscall(nr, NULL);
	else {
		char buf[512];
		r = syscall(nr, buf);
	}
	return r == -1 && errno == err;
}

/* "" when the calling thread's filters answer as `a`, `b`, `c` say, and
 * its status shows `mode` and `count`; else what differs. */
static const char *check(int a, int b, int c, int mode, int count)
{
	static __thread char why[256];
	if (answered(SYS_sysinfo, E_A) != a)
		return a ? "sysinfo is not filtered" : "sysinfo is filtered";
	if (answered(SYS_times, E_B) != b)
		return b ? "times is not filtered" : "times is filtered";
	if (answered(SYS_syslog, E_C) != c)
		return c ? "syslog is not filtered" : "syslog is filtered";
	FILE *f = fopen("/proc/thread-self/status", "r");
	if (!f)
		return "cannot open its status";
	char line[256];
	int m = -1, n = -1;
	while (fgets(line, sizeof(line), f)) {
		sscanf(line, "Seccomp: %d", &m);
		sscanf(line, "Seccomp_filters: %d", &n);
	}
	fclose(f);
	if (m != mode || n != count) {
		snprintf(why, sizeof(why), "status shows mode %d with %d filters, not %d with %d", m,
			 n, mode, count);
		return why;
	}
	return "";
}

/* A checker (thread T or child K): on each byte from `in`, runs its
 * check and answers "" or the reason, NUL-terminated, on `out`. */
static void serve(int in, int out, int a, int b, int c, int count)
{
	char x;
	while (read(in, &x, 1) == 1) {
		const char *why = check(a, b, c, SECCOMP_MODE_FILTER, count);
		if (write(out, why, strlen(why) + 1) < 0)
			break;
	}
}

static int t_in[2], t_out[2];

static void *thread_t(void *arg)
{
	(void)arg;
	/* wait until A is in place for both of us */
	char x;
	if (read(t_in[0], &x, 1) != 1)
		return NULL;
	install(SYS_syslog, E_C, 0);
	if (write(t_out[1], "", 1) != 1)
		return NULL;
	serve(t_in[0], t_out[1], 1, 0, 1, 2);
	return NULL;
}

static void ask(int in, int out, const char *who)
{
	if (write(in, "?", 1) != 1)
		wl_fail("ask %s: %s", who, strerror(errno));
	char why[256];
	size_t n = 0;
	while (n < sizeof(why)) {
		if (wl_read_wait(out, why + n, 1, 10000) != 1)
			wl_fail("%s does not answer", who);
		if (why[n++] == 0)
			break;
	}
	why[sizeof(why) - 1] = 0;
	if (why[0])
		wl_fail("%s: %s", who, why);
}

static void check_strict(pid_t s, int in, int out)
{
	char x = 'k', y = 0;
	if (write(in, &x, 1) != 1 || wl_read_wait(out, &y, 1, 10000) != 1 || y != 'k')
		wl_fail("the strict-mode child does not echo");
	/* (its mode is compared from outside: its pid here may not be /proc's) */
	(void)s;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();

	/* S: strict mode, echoing */
	int s_in[2], s_out[2];
	wl_pipe(s_in);
	wl_pipe(s_out);
	pid_t s = wl_fork();
	if (s == 0) {
		close(s_in[1]);
		close(s_out[0]);
		sigset_t all;
		sigfillset(&all);
		sigprocmask(SIG_BLOCK, &all, NULL);
		if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) < 0)
			_exit(3);
		char x;
		while (syscall(SYS_read, s_in[0], &x, 1) == 1)
			syscall(SYS_write, s_out[1], &x, 1);
		syscall(SYS_exit, 0);
	}
	close(s_in[0]);
	close(s_out[1]);

	wl_pipe(t_in);
	wl_pipe(t_out);
	pthread_t t;
	if (pthread_create(&t, NULL, thread_t, NULL) != 0)
		wl_fail("pthread_create");
	install(SYS_sysinfo, E_A, SECCOMP_FILTER_FLAG_TSYNC);
	char x;
	if (write(t_in[1], "go", 1) != 1 || wl_read_wait(t_out[0], &x, 1, 10000) != 1)
		wl_fail("thread T did not install its filter");

	/* K: A inherited, B its own */
	int k_in[2], k_out[2];
	wl_pipe(k_in);
	wl_pipe(k_out);
	pid_t k = wl_fork();
	if (k == 0) {
		close(k_in[1]);
		close(k_out[0]);
		install(SYS_times, E_B, SECCOMP_FILTER_FLAG_LOG);
		serve(k_in[0], k_out[1], 1, 1, 0, 2);
		_exit(0);
	}
	close(k_in[0]);
	close(k_out[1]);

	for (int round = 0; round < 2; round++) {
		if (round == 1) {
			wl_ready();
			wl_wait_term();
		}
		const char *why = check(1, 0, 0, SECCOMP_MODE_FILTER, 1);
		if (why[0])
			wl_fail("root: %s", why);
		ask(t_in[1], t_out[0], "thread T");
		ask(k_in[1], k_out[0], "child K");
		check_strict(s, s_in[1], s_out[0]);
	}
	close(k_in[1]);
	close(s_in[1]);
	int kst = wl_waitpid(k, "wait for K");
	if (kst != 0)
		wl_fail("child K ended with status %#x", kst);
	int st = wl_waitpid(s, "wait for S");
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		wl_fail("the strict-mode child ended with status %#x", st);
	wl_pass();
}
