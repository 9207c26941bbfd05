/* shared_anon STATEDIR [MiB=8] - MAP_SHARED|MAP_ANONYMOUS memory stays
 * shared between a parent and its child; private memory stays private.
 *
 * The root maps a shared anonymous region (pattern S) and a private
 * anonymous region (pattern P), then forks a child. Before ready, the child
 * writes a marker into the shared region (the root checks it sees it) and
 * overwrites the second half of the private region with pattern C (copy on
 * write); the root overwrites the first quarter of its private region with
 * pattern R. The child blocks SIGTERM and waits on a command pipe.
 *
 * After SIGTERM the root checks its view (S except the markers; R then P
 * in private memory), writes value V1 at offset O1 of the shared region and
 * tells the child through the pipe; the child checks it sees V1, the
 * pattern S and its private view (P then C), writes V2 at offset O2 and
 * reports; the root checks it sees V2 and reaps the child. */
#include "wl.h"

#include <poll.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define PAT_S 1
#define PAT_P 2
#define PAT_C 3
#define PAT_R 4
#define V0 0x0c0ffee0c0ffee00ULL /* child's marker before the dump */
#define V1 0x1111deadbeef1111ULL /* root's value after restore */
#define V2 0x2222feedface2222ULL /* child's value after restore */

static size_t len;
static uint64_t *shared, *priv;
static size_t o0, o1, o2; /* word offsets of the markers */

static uint64_t pat(int which, size_t i)
{
	return wl_mix(((uint64_t)which << 56) ^ i);
}

static void fill(uint64_t *p, size_t from, size_t to, int which)
{
	for (size_t i = from; i < to; i++)
		p[i] = pat(which, i);
}

/* First word in [from, to) that differs from the pattern (skipping the
 * marker words), or (size_t)-1. */
static size_t first_bad(const uint64_t *p, size_t from, size_t to, int which)
{
	for (size_t i = from; i < to; i++) {
		if (p == shared && (i == o0 || i == o1 || i == o2))
			continue;
		if (p[i] != pat(which, i))
			return i;
	}
	return (size_t)-1;
}

static void check_range(const char *who, const char *what, const uint64_t *p, size_t from,
			size_t to, int which)
{
	size_t bad = first_bad(p, from, to, which);
	if (bad != (size_t)-1)
		wl_add("%s: %s word %zu (byte %#zx) is %#llx, expected %#llx; ", who, what, bad,
		    bad * 8, (unsigned long long)p[bad], (unsigned long long)pat(which, bad));
}

static void child(int cmd_fd, int res_fd)
{
	size_t words = len / 8;
	shared[o0] = V0;
	fill(priv, words / 2, words, PAT_C);
	char b = 'r';
	if (write(res_fd, &b, 1) != 1)
		_exit(10);
	/* wait for the root's command (SIGTERM stays blocked) */
	char c;
	if (wl_read_wait(cmd_fd, &c, 1, -1) != 1)
		_exit(11);
	if (__atomic_load_n(&shared[o1], __ATOMIC_SEQ_CST) != V1)
		wl_add("child: shared word %zu is %#llx, expected the root's %#llx (not shared any "
		    "more?); ",
		    o1, (unsigned long long)shared[o1], (unsigned long long)V1);
	if (shared[o0] != V0)
		wl_add("child: its own marker (word %zu) is %#llx; ", o0,
		    (unsigned long long)shared[o0]);
	check_range("child", "shared", shared, 0, words, PAT_S);
	check_range("child", "private (first half, from before fork)", priv, 0, words / 2,
		    PAT_P);
	check_range("child", "private (second half, written after fork)", priv, words / 2,
		    words, PAT_C);
	__atomic_store_n(&shared[o2], V2, __ATOMIC_SEQ_CST);
	char out[2048 + 1];
	size_t n = (size_t)snprintf(out, sizeof(out), "%s", wl_mlen ? wl_msg : "OK");
	if (write(res_fd, out, n) != (ssize_t)n)
		_exit(12);
	_exit(0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	size_t mib = argc > 2 ? (size_t)atoi(argv[2]) : 8;
	if (mib < 1)
		mib = 1;
	len = mib << 20;
	size_t words = len / 8;
	o0 = words / 3 + 5;
	o1 = words / 2 + 17;
	o2 = words - 3;

	wl_block_term();

	shared = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	priv = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (shared == MAP_FAILED || priv == MAP_FAILED)
		wl_fail("mmap: %s", strerror(errno));
	fill(shared, 0, words, PAT_S);
	fill(priv, 0, words, PAT_P);

	int cmd[2], res[2];
	wl_pipe(cmd);
	wl_pipe(res);
	pid_t pid = wl_fork();
	if (pid == 0) {
		close(cmd[1]);
		close(res[0]);
		child(cmd[0], res[1]);
	}
	close(cmd[0]);
	close(res[1]);
	char b;
	if (wl_read_wait(res[0], &b, 1, 10000) != 1)
		wl_fail("child not ready");
	if (shared[o0] != V0)
		wl_fail("before the dump: the child's marker is not visible in shared memory");
	fill(priv, 0, words / 4, PAT_R);

	wl_ready();
	wl_wait_term();

	check_range("root", "shared", shared, 0, words, PAT_S);
	if (shared[o0] != V0)
		wl_add("root: the child's marker (word %zu) is %#llx, expected %#llx; ", o0,
		    (unsigned long long)shared[o0], (unsigned long long)V0);
	check_range("root", "private (first quarter, written after fork)", priv, 0, words / 4,
		    PAT_R);
	check_range("root", "private (rest, from before fork)", priv, words / 4, words, PAT_P);
	__atomic_store_n(&shared[o1], V1, __ATOMIC_SEQ_CST);
	if (write(cmd[1], "g", 1) != 1)
		wl_add("root: write to the child's pipe: %s; ", strerror(errno));
	char out[2049];
	ssize_t n = wl_read_wait(res[0], out, sizeof(out) - 1, 10000);
	if (n <= 0) {
		wl_add("root: no result from the child (pid %d): %s; ", pid,
		    n < 0 ? "timeout or error" : "EOF");
	} else {
		out[n] = 0;
		if (strcmp(out, "OK") != 0)
			wl_add("%s", out);
	}
	if (__atomic_load_n(&shared[o2], __ATOMIC_SEQ_CST) != V2)
		wl_add("root: shared word %zu is %#llx, expected the child's %#llx (not shared any "
		    "more?); ",
		    o2, (unsigned long long)shared[o2], (unsigned long long)V2);
	int ws;
	pid_t w;
	do
		w = waitpid(pid, &ws, 0);
	while (w < 0 && errno == EINTR);
	if (w != pid)
		wl_add("waitpid(child %d): %s; ", pid, strerror(errno));
	else if (!WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
		wl_add("child (pid %d) ended with status %#x; ", pid, ws);
	if (wl_mlen)
		wl_fail("%s", wl_msg);
	wl_pass();
}
