/* fork_storm STATEDIR - a tree that keeps changing while it is dumped.
 *
 * The root forks NLONG long-lived children (one in a group of its own),
 * then a storm thread that, until told to stop, spawns a short-lived pthread,
 * forks a child that exits at once with a known code, reaps that child with
 * waitpid(pid) and joins the thread. The root writes ready while the storm
 * runs (the harness dumps at once, without waiting for the tree to settle).
 *
 * On SIGTERM the root waits until the storm has made progress again (so it
 * runs after a restore), stops and joins it, checks its counters (every fork
 * reaped with its exit code, every thread joined with its value, the sum of
 * the threads' values), checks its long-lived children are alive, forwards
 * SIGTERM to them, gets their pid/ppid/pgid through the result pipe, reaps
 * them (exit 0) and checks no other child is left. */
#include "wl.h"

#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <sys/wait.h>
#include <time.h>

#define NLONG 3

struct rec {
	int idx;
	int pid, ppid, pgid;
	char msg[200];
};

static int ready_pipe[2], result_pipe[2];
static pid_t long_pids[NLONG], long_pgids[NLONG];

static atomic_int stop_storm;
static atomic_ulong iterations;
static atomic_ulong thread_sum;
static char storm_err[512];
static unsigned long forks_done, forks_reaped, threads_started, threads_joined, expected_sum;

static void send_rec(int fd, const struct rec *r)
{
	ssize_t n;
	do
		n = write(fd, r, sizeof(*r));
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(*r))
		_exit(3);
}

static int recv_rec(int fd, struct rec *r, int ms)
{
	return wl_read_wait(fd, r, sizeof(*r), ms) == (ssize_t)sizeof(*r) ? 0 : -1;
}

static void run_long(int idx, pid_t root, pid_t pgid)
{
	struct rec r;
	memset(&r, 0, sizeof(r));
	r.idx = idx;
	if (idx == 1 && setpgid(0, 0) < 0)
		snprintf(r.msg, sizeof(r.msg), "setpgid: %s", strerror(errno));
	r.pid = getpid();
	r.ppid = getppid();
	r.pgid = getpgid(0);
	if (!r.msg[0] && (r.ppid != root || r.pgid != pgid))
		snprintf(r.msg, sizeof(r.msg), "after setup: ppid %d pgid %d, expected %d %d", r.ppid,
			 r.pgid, root, pgid);
	send_rec(ready_pipe[1], &r);
	if (r.msg[0])
		_exit(1);
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	sigdelset(&cur, SIGTERM);
	while (!wl_term)
		sigsuspend(&cur);
	r.pid = getpid();
	r.ppid = getppid();
	r.pgid = getpgid(0);
	send_rec(result_pipe[1], &r);
	_exit(0);
}

static void *short_thread(void *arg)
{
	atomic_fetch_add(&thread_sum, (unsigned long)arg);
	sched_yield();
	return arg;
}

#define STORM_FAIL(...)                                                                        \
	do {                                                                                   \
		snprintf(storm_err, sizeof(storm_err), __VA_ARGS__);                           \
		return NULL;                                                                   \
	} while (0)

static void *storm(void *unused)
{
	(void)unused;
	for (unsigned long n = 1; !atomic_load(&stop_storm); n++) {
		pthread_t t;
		int e = pthread_create(&t, NULL, short_thread, (void *)n);
		if (e)
			STORM_FAIL("pthread_create #%lu: %s", n, strerror(e));
		threads_started++;
		expected_sum += n;
		int code = (int)(n % 100);
		pid_t p = fork();
		if (p < 0)
			STORM_FAIL("fork #%lu: %s", n, strerror(errno));
		if (p == 0)
			_exit(code);
		forks_done++;
		int st;
		pid_t w;
		do
			w = waitpid(p, &st, 0);
		while (w < 0 && errno == EINTR);
		if (w != p)
			STORM_FAIL("waitpid(%d) of fork #%lu returned %d: %s", p, n, w,
				   strerror(errno));
		if (!WIFEXITED(st) || WEXITSTATUS(st) != code)
			STORM_FAIL("fork #%lu (pid %d) ended with status 0x%x, expected exit %d", n, p,
				   st, code);
		forks_reaped++;
		void *ret = NULL;
		e = pthread_join(t, &ret);
		if (e)
			STORM_FAIL("pthread_join #%lu: %s", n, strerror(e));
		if (ret != (void *)n)
			STORM_FAIL("thread #%lu returned %p", n, ret);
		threads_joined++;
		atomic_fetch_add(&iterations, 1);
	}
	return NULL;
}

/* Waits (up to `ms`) until the storm did `more` iterations beyond `from`. */
static int storm_progress(unsigned long from, unsigned long more, int ms)
{
	for (int i = 0; i < ms; i++) {
		if (atomic_load(&iterations) >= from + more)
			return 0;
		if (storm_err[0])
			return -1;
		usleep(1000);
	}
	return -1;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	wl_pipe(ready_pipe);
	wl_pipe(result_pipe);
	pid_t me = getpid();
	for (int i = 0; i < NLONG; i++) {
		pid_t pid = wl_fork();
		if (pid == 0)
			run_long(i, me, i == 1 ? getpid() : getpgid(0));
		long_pids[i] = pid;
		long_pgids[i] = i == 1 ? pid : getpgid(0);
		if (i == 1)
			setpgid(pid, pid);
	}
	for (int i = 0; i < NLONG; i++) {
		struct rec r;
		if (recv_rec(ready_pipe[0], &r, 10000) < 0)
			wl_fail("only %d of %d long-lived children reported ready", i, NLONG);
		if (r.msg[0])
			wl_fail("long-lived child %d (pid %d): %s", r.idx, r.pid, r.msg);
	}
	pthread_t st;
	int e = pthread_create(&st, NULL, storm, NULL);
	if (e)
		wl_fail("pthread_create(storm): %s", strerror(e));
	if (storm_progress(0, 200, 10000) < 0)
		wl_fail("the storm did not get going: %s", storm_err[0] ? storm_err : "timeout");

	wl_ready();
	wl_wait_term();

	unsigned long at_term = atomic_load(&iterations);
	int progressed = storm_progress(at_term, 50, 5000);
	atomic_store(&stop_storm, 1);
	e = pthread_join(st, NULL);
	if (e)
		wl_fail("pthread_join(storm): %s", strerror(e));
	if (storm_err[0])
		wl_fail("storm: %s", storm_err);
	if (progressed < 0)
		wl_fail("the storm made no progress after SIGTERM (%lu iterations at SIGTERM, %lu now)",
			at_term, atomic_load(&iterations));
	unsigned long it = atomic_load(&iterations), sum = atomic_load(&thread_sum);
	if (forks_done != it || forks_reaped != it || threads_started != it ||
	    threads_joined != it || sum != expected_sum)
		wl_fail("counters inconsistent: iterations %lu forks %lu/%lu reaped, threads %lu/%lu "
			"joined, sum %lu expected %lu",
			it, forks_done, forks_reaped, threads_started, threads_joined, sum,
			expected_sum);

	char verdict[2048] = "";
	size_t vlen = 0;
#define ADD(...)                                                                               \
	do {                                                                                   \
		if (vlen < sizeof(verdict))                                                    \
			vlen += (size_t)snprintf(verdict + vlen, sizeof(verdict) - vlen,       \
						 __VA_ARGS__);                                 \
	} while (0)
	for (int i = 0; i < NLONG; i++) {
		int status;
		pid_t w = waitpid(long_pids[i], &status, WNOHANG);
		if (w != 0)
			ADD("long-lived child %d (pid %d) is not alive (waitpid %d, status 0x%x); ", i,
			    long_pids[i], w, w > 0 ? status : 0);
		else if (kill(long_pids[i], SIGTERM) < 0)
			ADD("kill(pid %d): %s; ", long_pids[i], strerror(errno));
	}
	for (int got = 0; got < NLONG && !vlen; got++) {
		struct rec r;
		if (recv_rec(result_pipe[0], &r, 10000) < 0) {
			ADD("only %d of %d long-lived children reported; ", got, NLONG);
			break;
		}
		if (r.idx < 0 || r.idx >= NLONG) {
			ADD("bad result record; ");
			continue;
		}
		if (r.pid != long_pids[r.idx] || r.ppid != me || r.pgid != long_pgids[r.idx])
			ADD("long-lived child %d: pid/ppid/pgid %d/%d/%d, expected %d/%d/%d; ", r.idx,
			    r.pid, r.ppid, r.pgid, long_pids[r.idx], me, long_pgids[r.idx]);
	}
	for (int i = 0; i < NLONG; i++) {
		int status;
		pid_t w;
		do
			w = waitpid(long_pids[i], &status, 0);
		while (w < 0 && errno == EINTR);
		if (w != long_pids[i])
			ADD("waitpid(%d): %s; ", long_pids[i], strerror(errno));
		else if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
			ADD("long-lived child %d ended with status 0x%x; ", i, status);
	}
	int status;
	pid_t w = waitpid(-1, &status, WNOHANG);
	if (w > 0)
		ADD("unexpected child pid %d (status 0x%x); ", w, status);
	if (vlen)
		wl_fail("%s", verdict);
	wl_pass();
}
