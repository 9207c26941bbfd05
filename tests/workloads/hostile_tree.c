/* hostile_tree STATEDIR - the small tree `hostile_images` dumps and then
 * restores from mutated images: a root, a child with two extra threads and
 * a grandchild, a pipe with bytes in flight and some patterned memory.
 *
 * The root fills 256 KiB of private memory with a pattern, writes INFLIGHT
 * patterned bytes into a pipe whose read end the child keeps, and forks the
 * child. The child starts two threads (each records its tid and blocks in
 * read() on a second pipe) and forks the grandchild, which waits for
 * SIGTERM. Every task blocks SIGTERM outside sigsuspend.
 *
 * On SIGTERM the root forwards it to the child, the child to the
 * grandchild. The child reads the bytes in flight and checks them, wakes
 * its threads (each checks its tid and returns), joins them, reaps the
 * grandchild (ppid unchanged, exit 0) and exits with a code naming the
 * first problem; the root checks its memory and its child's exit code and
 * writes the verdict. */
#include "wl.h"

#include <pthread.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define INFLIGHT 64
#define MEMSZ (256 * 1024)
#define NTHREADS 2

static int ready_pipe[2], data_pipe[2], go_pipe[2];
static pid_t tids[NTHREADS];

static void wait_term(void)
{
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	sigdelset(&cur, SIGTERM);
	while (!wl_term)
		sigsuspend(&cur);
}

static int reap(pid_t pid)
{
	int st;
	pid_t w;
	do
		w = waitpid(pid, &st, 0);
	while (w < 0 && errno == EINTR);
	if (w != pid)
		return -1;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static void *thread_main(void *arg)
{
	int i = (int)(intptr_t)arg;
	tids[i] = (pid_t)syscall(SYS_gettid);
	char c;
	ssize_t r;
	do
		r = read(go_pipe[0], &c, 1);
	while (r < 0 && errno == EINTR);
	if (r != 1)
		return (void *)1;
	return (pid_t)syscall(SYS_gettid) == tids[i] ? NULL : (void *)2;
}

static void grandchild(void)
{
	pid_t ppid = getppid();
	char c = 'g';
	if (write(ready_pipe[1], &c, 1) != 1)
		_exit(3);
	wait_term();
	_exit(getppid() == ppid ? 0 : 4);
}

static void child(void)
{
	pid_t ppid = getppid();
	if (pipe(go_pipe) < 0)
		_exit(10);
	pthread_t th[NTHREADS];
	for (int i = 0; i < NTHREADS; i++)
		if (pthread_create(&th[i], NULL, thread_main, (void *)(intptr_t)i))
			_exit(11);
	pid_t g = fork();
	if (g < 0)
		_exit(12);
	if (g == 0)
		grandchild();
	char c = 'c';
	if (write(ready_pipe[1], &c, 1) != 1)
		_exit(13);
	wait_term();
	kill(g, SIGTERM);
	unsigned char got[INFLIGHT];
	int bad = 0;
	if (read(data_pipe[0], got, INFLIGHT) != INFLIGHT)
		bad = 14;
	for (int i = 0; !bad && i < INFLIGHT; i++)
		if (got[i] != (unsigned char)(wl_mix((uint64_t)i + 99) & 0xff))
			bad = 15;
	char go[NTHREADS] = {1, 1};
	if (write(go_pipe[1], go, NTHREADS) != NTHREADS && !bad)
		bad = 16;
	for (int i = 0; i < NTHREADS; i++) {
		void *ret;
		if ((pthread_join(th[i], &ret) || ret) && !bad)
			bad = 17 + i;
	}
	if (reap(g) != 0 && !bad)
		bad = 20;
	if (getppid() != ppid && !bad)
		bad = 21;
	_exit(bad);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	uint64_t *mem = malloc(MEMSZ);
	if (!mem)
		wl_fail("malloc");
	for (size_t i = 0; i < MEMSZ / 8; i++)
		mem[i] = wl_mix(i + 5);
	wl_pipe(ready_pipe);
	wl_pipe(data_pipe);
	unsigned char sent[INFLIGHT];
	for (int i = 0; i < INFLIGHT; i++)
		sent[i] = (unsigned char)(wl_mix((uint64_t)i + 99) & 0xff);
	if (write(data_pipe[1], sent, INFLIGHT) != INFLIGHT)
		wl_fail("write the data pipe: %s", strerror(errno));
	pid_t c = wl_fork();
	if (c == 0)
		child();
	for (int i = 0; i < 2; i++) {
		char r;
		if (read(ready_pipe[0], &r, 1) != 1)
			wl_fail("a descendant died before it was ready");
	}
	pid_t ppid = getppid();
	wl_ready();
	wl_wait_term();
	kill(c, SIGTERM);
	int code = reap(c);
	if (code != 0)
		wl_fail("child %d ended with code %d (see hostile_tree.c)", c, code);
	for (size_t i = 0; i < MEMSZ / 8; i++)
		if (mem[i] != wl_mix(i + 5))
			wl_fail("memory differs at offset %zu", i * 8);
	if (getppid() != ppid)
		wl_fail("ppid %d, expected %d", getppid(), ppid);
	wl_pass();
}
