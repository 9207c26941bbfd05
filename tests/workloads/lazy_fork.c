/* lazy_fork STATEDIR [MiB=64] - memory that comes back lazily (the
 * workload asks the harness for `restore --lazy-pages` through
 * <statedir>/lazy) while the workload reads, writes, drops and forks over
 * it: every page must read what it held, wherever it is first touched
 * (a thread, a fork's child, the kernel on the task's behalf).
 *
 * A private anonymous region of MiB: page i holds a pattern of i and its
 * generation (gen[i]; 0 reads as zeros). Until SIGTERM, every 200 us the
 * main thread rewrites a page of the lower half with a new generation,
 * sometimes drops one (MADV_DONTNEED: zeros from then on). Right after a
 * restore (seen as a gap of more than 50 ms between two rounds: the task
 * was frozen) it forks 8 children at once, while its pages are still
 * coming: each checks 64 random pages, a 256 KiB stretch and hands a
 * page to the kernel to read (write(2) from it into a pipe); two
 * /bin/true are spawned with vfork semantics (posix_spawn) among them.
 * Then it writes <statedir>/burst, which the harness waits for before it
 * looks at the tree. A second thread reads
 * the upper half, which nobody writes, over and over. After SIGTERM every
 * page is checked. */
#include "wl.h"
#include <pthread.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>

#define PAGE 4096UL
#define WORDS (PAGE / 8)

extern char **environ;

static char *region;
static size_t npages;
static uint64_t *gen;
static uint64_t rng = 0x9e3779b97f4a7c15ULL;
static volatile int stop_reader;
static volatile unsigned long reader_bad, reader_rounds;

#define next wl_xorshift
#define word wl_page_word

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static uint64_t *page_at(size_t i)
{
	return (uint64_t *)(region + i * PAGE);
}

static void fill(size_t i, uint64_t g)
{
	uint64_t *p = page_at(i);
	for (size_t w = 0; w < WORDS; w++)
		p[w] = word(i, w, g);
}

/* 0 if page i holds generation gen[i] */
static int bad_page(size_t i)
{
	const uint64_t *p = page_at(i);
	for (size_t w = 0; w < WORDS; w++)
		if (p[w] != word(i, w, gen[i]))
			return 1;
	return 0;
}

static void *reader(void *arg)
{
	(void)arg;
	uint64_t s = 0x1234567ULL;
	size_t half = npages / 2;
	while (!stop_reader) {
		size_t i = half + next(&s) % (npages - half);
		if (bad_page(i))
			reader_bad++;
		reader_rounds++;
	}
	return NULL;
}

/* the child's check: 1 on a bad page */
static int child_check(void)
{
	uint64_t s = rng ^ (uint64_t)getpid();
	for (int k = 0; k < 64; k++)
		if (bad_page(next(&s) % npages))
			return 1;
	size_t from = next(&s) % npages;
	for (size_t i = from; i < npages && i < from + 64; i++)
		if (bad_page(i))
			return 1;
	/* a page the kernel reads for the task */
	size_t k = next(&s) % npages;
	int p[2];
	if (pipe(p) < 0)
		return 2;
	uint64_t got[WORDS];
	if (write(p[1], page_at(k), PAGE) != (ssize_t)PAGE)
		return 3;
	if (read(p[0], got, PAGE) != (ssize_t)PAGE)
		return 3;
	for (size_t w = 0; w < WORDS; w++)
		if (got[w] != word(k, w, gen[k]))
			return 1;
	return 0;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 64;
	npages = mib * 256;
	region = wl_anon(npages * PAGE);
	gen = wl_anon(npages * 8);
	for (size_t i = 0; i < npages; i++) {
		gen[i] = 1;
		fill(i, 1);
	}
	/* the harness restores this workload lazily */
	if (wl_write_file("lazy", "1\n", 2) < 0)
		wl_fail("write lazy: %s", strerror(errno));
	pthread_t th;
	if (pthread_create(&th, NULL, reader, NULL) != 0)
		wl_fail("pthread_create");
	wl_ready();
	unsigned long rounds = 0, children = 0, spawned = 0;
	int child_bad = 0, burst = 0;
	size_t half = npages / 2;
	uint64_t last = now_ms();
	while (!wl_term) {
		uint64_t t = now_ms();
		if (t - last > 50)
			burst = 8;
		last = t;
		size_t i = next(&rng) % half;
		if (rounds % 7 == 3) {
			if (madvise(page_at(i), PAGE, MADV_DONTNEED) < 0)
				wl_fail("madvise: %s", strerror(errno));
			gen[i] = 0;
		} else {
			gen[i] = gen[i] + 1 ? gen[i] + 1 : 1;
			fill(i, gen[i]);
		}
		int bursting = burst > 0;
		for (; burst > 0 && !child_bad; burst--) {
			pid_t c = fork();
			if (c < 0)
				wl_fail("fork: %s", strerror(errno));
			if (c == 0)
				_exit(child_check());
			int st;
			while (waitpid(c, &st, 0) < 0)
				if (errno != EINTR)
					wl_fail("waitpid: %s", strerror(errno));
			if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
				child_bad = WIFEXITED(st) ? WEXITSTATUS(st) : 100 + WTERMSIG(st);
			children++;
			if (burst % 4 == 0) {
				char *args[] = {"true", NULL};
				if (posix_spawn(&c, "/bin/true", NULL, NULL, args, environ) == 0) {
					while (waitpid(c, &st, 0) < 0 && errno == EINTR)
						;
					spawned++;
				}
			}
			/* (the burst's end is not a gap) */
			last = now_ms();
		}
		/* (the harness looks at the tree once the burst is over) */
		if (bursting) {
			char b[32];
			int n = snprintf(b, sizeof(b), "%lu\n", children);
			wl_write_file("burst", b, (size_t)n);
		}
		if (child_bad)
			break;
		rounds++;
		usleep(200);
	}
	if (!wl_term)
		wl_wait_term();
	else
		wl_after();
	stop_reader = 1;
	pthread_join(th, NULL);
	if (child_bad)
		wl_fail("a child found a page it did not expect (status %d) after %lu children",
			child_bad, children);
	if (reader_bad)
		wl_fail("the reader thread found %lu bad pages in %lu reads", reader_bad,
			reader_rounds);
	size_t bad = 0, first = 0;
	for (size_t i = 0; i < npages; i++)
		if (bad_page(i) && !bad++)
			first = i;
	if (bad)
		wl_fail("%zu of %zu pages hold what they did not, the first %zu", bad, npages, first);
	printf("%lu rounds, %lu children, %lu spawned\n", rounds, children, spawned);
	wl_pass();
}
