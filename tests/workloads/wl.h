/* wl.h - the workload side of the e2e protocol (like CRIU's zdtm).
 *
 * A workload is started as `<workload> <statedir> [args]`. It sets up its
 * state, prints "before", calls wl_ready() (which writes its pid to
 * <statedir>/ready), waits for SIGTERM, prints "after", checks its state and
 * ends with wl_pass(), wl_fail() or wl_skip(), which write <statedir>/verdict.
 * Every file is written to a temporary name and renamed, so the harness never
 * sees half a file.
 */
#ifndef CREST_WL_H
#define CREST_WL_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

__attribute__((unused)) static const char *wl_dir = ".";
__attribute__((unused)) static const char *wl_name = "workload";
__attribute__((unused)) static volatile sig_atomic_t wl_term;

/* Write `len` bytes to <statedir>/<name> atomically (tmp file + rename). */
__attribute__((unused)) static int wl_write_file(const char *name, const void *buf, size_t len)
{
	char tmp[4096], path[4096];
	snprintf(tmp, sizeof(tmp), "%s/.%s.tmp", wl_dir, name);
	snprintf(path, sizeof(path), "%s/%s", wl_dir, name);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -1;
	const char *p = buf;
	while (len > 0) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			close(fd);
			return -1;
		}
		p += n;
		len -= (size_t)n;
	}
	if (close(fd) < 0)
		return -1;
	return rename(tmp, path);
}

__attribute__((unused)) static void wl_verdict(int code, const char *text)
{
	if (wl_write_file("verdict", text, strlen(text)) < 0) {
		fprintf(stderr, "%s: cannot write verdict: %s\n", wl_name, strerror(errno));
		_exit(2);
	}
	exit(code);
}

__attribute__((unused)) static void wl_pass(void)
{
	wl_verdict(0, "PASS\n");
}

__attribute__((format(printf, 1, 2), noreturn, unused)) static void wl_fail(const char *fmt, ...)
{
	char msg[2048];
	int n = snprintf(msg, sizeof(msg), "FAIL: ");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof(msg) - (size_t)n - 2, fmt, ap);
	va_end(ap);
	strcat(msg, "\n");
	wl_verdict(1, msg);
	exit(1);
}

__attribute__((format(printf, 1, 2), noreturn, unused)) static void wl_skip(const char *fmt, ...)
{
	char msg[2048];
	int n = snprintf(msg, sizeof(msg), "SKIP: ");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg + n, sizeof(msg) - (size_t)n - 2, fmt, ap);
	va_end(ap);
	strcat(msg, "\n");
	wl_verdict(0, msg);
	exit(0);
}

__attribute__((unused)) static void wl_on_term(int sig)
{
	(void)sig;
	wl_term = 1;
}

/* Install the SIGTERM handler: sets wl_term, no SA_RESTART, so a blocked
 * syscall returns EINTR. */
__attribute__((unused)) static void wl_install_term(void)
{
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = wl_on_term;
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = 0;
	if (sigaction(SIGTERM, &sa, NULL) < 0)
		wl_fail("sigaction(SIGTERM): %s", strerror(errno));
}

__attribute__((unused)) static void wl_init(int argc, char **argv)
{
	const char *slash = strrchr(argv[0], '/');
	wl_name = slash ? slash + 1 : argv[0];
	if (argc < 2) {
		fprintf(stderr, "usage: %s STATEDIR [args]\n", wl_name);
		exit(2);
	}
	wl_dir = argv[1];
	wl_install_term();
}

/* Print "before" and write our pid to <statedir>/ready. */
__attribute__((unused)) static void wl_ready(void)
{
	printf("before\n");
	fflush(stdout);
	char buf[32];
	int n = snprintf(buf, sizeof(buf), "%d\n", (int)getpid());
	if (wl_write_file("ready", buf, (size_t)n) < 0)
		wl_fail("cannot write ready file: %s", strerror(errno));
}

/* Print "after": the workload got SIGTERM. */
__attribute__((unused)) static void wl_after(void)
{
	printf("after\n");
	fflush(stdout);
}

/* Wait for SIGTERM with sigsuspend (keeping every other blocked signal
 * blocked), then print "after". */
__attribute__((unused)) static void wl_wait_term(void)
{
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	sigdelset(&cur, SIGTERM);
	while (!wl_term)
		sigsuspend(&cur);
	wl_after();
}

/* Block SIGTERM (it stays pending until unblocked or waited for); returns
 * the set holding it. */
__attribute__((unused)) static sigset_t wl_block_term(void)
{
	sigset_t term;
	sigemptyset(&term);
	sigaddset(&term, SIGTERM);
	sigprocmask(SIG_BLOCK, &term, NULL);
	return term;
}

/* fork(), failing the workload if it cannot. */
__attribute__((unused)) static pid_t wl_fork(void)
{
	pid_t pid = fork();
	if (pid < 0)
		wl_fail("fork: %s", strerror(errno));
	return pid;
}

/* pipe(), failing the workload if it cannot. */
__attribute__((unused)) static void wl_pipe(int p[2])
{
	if (pipe(p) < 0)
		wl_fail("pipe: %s", strerror(errno));
}

/* accept() a connection on `lis`, failing the workload with
 * "<what>: <error>" if it cannot. */
__attribute__((unused)) static int wl_accept(int lis, const char *what)
{
	int fd = accept(lis, NULL, NULL);
	if (fd < 0)
		wl_fail("%s: %s", what, strerror(errno));
	return fd;
}

/* Wait for `pid` (retrying on EINTR) and return its status; fails the
 * workload with "<what>: <error>" if waitpid fails. */
__attribute__((unused)) static int wl_waitpid(pid_t pid, const char *what)
{
	int st;
	while (waitpid(pid, &st, 0) < 0)
		if (errno != EINTR)
			wl_fail("%s: %s", what, strerror(errno));
	return st;
}

/* Wait up to `ms` (-1: for ever) for `fd` to be readable, then read up to
 * `n` bytes, retrying on EINTR; -1 on timeout or error. */
__attribute__((unused)) static ssize_t wl_read_wait(int fd, void *buf, size_t n, int ms)
{
	struct pollfd pf = {.fd = fd, .events = POLLIN};
	int r;
	do
		r = poll(&pf, 1, ms);
	while (r < 0 && errno == EINTR);
	if (r <= 0)
		return -1;
	ssize_t got;
	do
		got = read(fd, buf, n);
	while (got < 0 && errno == EINTR);
	return got;
}

/* A report collected piece by piece with wl_add() (empty: all well). */
__attribute__((unused)) static char wl_msg[4096];
__attribute__((unused)) static size_t wl_mlen;

/* Append to wl_msg (what does not fit is dropped). */
__attribute__((format(printf, 1, 2), unused)) static void wl_add(const char *fmt, ...)
{
	if (wl_mlen >= sizeof(wl_msg))
		return;
	va_list ap;
	va_start(ap, fmt);
	wl_mlen += (size_t)vsnprintf(wl_msg + wl_mlen, sizeof(wl_msg) - wl_mlen, fmt, ap);
	va_end(ap);
}

/* A 64-bit mixer (splitmix64 finaliser) for position dependent patterns. */
__attribute__((unused)) static inline uint64_t wl_mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

/* A private anonymous read-write mapping of `len` bytes (the workload
 * fails if it cannot be made). */
__attribute__((unused)) static void *wl_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		wl_fail("mmap of %zu bytes: %s", len, strerror(errno));
	return p;
}

/* One xorshift64 step of *s. */
__attribute__((unused)) static inline uint64_t wl_xorshift(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* Word `w` of page `page` at generation `g` (0: the page reads as zeros):
 * the pattern the memory workloads write and check. */
__attribute__((unused)) static inline uint64_t wl_page_word(size_t page, size_t w, uint64_t g)
{
	return g ? wl_mix(page * 1000003ULL + w * 7 + g * 0x9e3779b97f4a7c15ULL) : 0;
}

#endif
