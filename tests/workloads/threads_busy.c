/* threads_busy STATEDIR [N=8] - N busy threads keep their tid, TLS, FPU
 * registers and signal masks.
 *
 * Each thread records gettid() and fills __thread variables with values
 * derived from its index, sets its own MXCSR rounding mode, then spins in
 * an asm loop that keeps thread-specific constants in xmm8-xmm15 and counts
 * in xmm0 (packed doubles {base + n, -base - n}) and in a general register
 * until the main thread sets a global stop flag. Every thread blocks
 * SIGTERM; thread 1 also blocks SIGUSR1 and thread 2 SIGUSR2 (with
 * pthread_sigmask), so their masks differ from the main thread's.
 *
 * The main thread handles SIGTERM, sets the flag and joins the threads;
 * each thread checks its tid (syscall(SYS_gettid)), its TLS values, its
 * xmm registers, the counter, MXCSR and its signal mask, and returns its
 * findings. */
#include "wl.h"

#include <pthread.h>
#include <sys/syscall.h>

#define MAXT 64

static volatile int stop;
static int nthreads = 8;
static volatile int started;
static pid_t tids[MAXT];

static __thread int tls_idx = -1;
static __thread pid_t tls_tid;
static __thread uint64_t tls_u[16];
static __thread double tls_d = 1.0;

struct result {
	char msg[512];
};
static struct result results[MAXT];

static void addf(char *msg, const char *fmt, ...)
{
	size_t len = strlen(msg);
	if (len + 2 >= 512)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg + len, 512 - len, fmt, ap);
	va_end(ap);
}

static double expect_d(int idx)
{
	double d = 1.0;
	for (int i = 0; i < 100 + idx; i++)
		d = d * 1.0009765625 + (double)idx / 3.0;
	return d;
}

static void *thread_main(void *arg)
{
	int idx = (int)(intptr_t)arg;
	struct result *res = &results[idx];
	res->msg[0] = 0;
	tls_idx = idx;
	tls_tid = (pid_t)syscall(SYS_gettid);
	/* through an opaque pointer: gcc 12 folds a 64-bit constant into the
	 * TLS offset otherwise (relocation truncated to fit) */
	uint64_t *u = tls_u;
	__asm__("" : "+r"(u));
	for (int i = 0; i < 16; i++)
		u[i] = wl_mix((uint64_t)idx * 1000 + (uint64_t)i);
	tls_d = expect_d(idx);
	tids[idx] = tls_tid;

	if (idx == 1 || idx == 2) {
		sigset_t s;
		sigemptyset(&s);
		sigaddset(&s, idx == 1 ? SIGUSR1 : SIGUSR2);
		pthread_sigmask(SIG_BLOCK, &s, NULL);
	}

	/* constants for xmm8-xmm15 and the start of xmm0 */
	double cin[16] __attribute__((aligned(16)));
	double cout[16] __attribute__((aligned(16)));
	double base = 1000.0 * (idx + 1);
	double x0in[2] __attribute__((aligned(16))) = {base, -base};
	double step[2] __attribute__((aligned(16))) = {1.0, -1.0};
	double x0out[2] __attribute__((aligned(16)));
	for (int i = 0; i < 16; i++)
		cin[i] = (double)(wl_mix((uint64_t)idx * 77 + (uint64_t)i) >> 11) / 7.0;
	/* rounding mode per thread (bits 13-14), all exceptions masked */
	uint32_t mx_in = 0x1f80u | ((uint32_t)(idx % 4) << 13), mx_out = 0;
	uint64_t count = 0;

	__atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);

	__asm__ volatile(
		"ldmxcsr %[mx_in]\n\t"
		"movapd 0(%[cin]), %%xmm8\n\t"
		"movapd 16(%[cin]), %%xmm9\n\t"
		"movapd 32(%[cin]), %%xmm10\n\t"
		"movapd 48(%[cin]), %%xmm11\n\t"
		"movapd 64(%[cin]), %%xmm12\n\t"
		"movapd 80(%[cin]), %%xmm13\n\t"
		"movapd 96(%[cin]), %%xmm14\n\t"
		"movapd 112(%[cin]), %%xmm15\n\t"
		"movapd (%[x0in]), %%xmm0\n\t"
		"movapd (%[step]), %%xmm1\n\t"
		"xorq %%rcx, %%rcx\n\t"
		"1:\n\t"
		"addpd %%xmm1, %%xmm0\n\t"
		"incq %%rcx\n\t"
		"movl (%[stop]), %%eax\n\t"
		"testl %%eax, %%eax\n\t"
		"jz 1b\n\t"
		"movq %%rcx, %[count]\n\t"
		"movapd %%xmm0, (%[x0out])\n\t"
		"movapd %%xmm8, 0(%[cout])\n\t"
		"movapd %%xmm9, 16(%[cout])\n\t"
		"movapd %%xmm10, 32(%[cout])\n\t"
		"movapd %%xmm11, 48(%[cout])\n\t"
		"movapd %%xmm12, 64(%[cout])\n\t"
		"movapd %%xmm13, 80(%[cout])\n\t"
		"movapd %%xmm14, 96(%[cout])\n\t"
		"movapd %%xmm15, 112(%[cout])\n\t"
		"stmxcsr %[mx_out]\n\t"
		: [count] "=m"(count), [mx_out] "=m"(mx_out)
		: [mx_in] "m"(mx_in), [cin] "r"(cin), [cout] "r"(cout), [x0in] "r"(x0in),
		  [x0out] "r"(x0out), [step] "r"(step), [stop] "r"(&stop)
		: "rax", "rcx", "xmm0", "xmm1", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
		  "xmm13", "xmm14", "xmm15", "memory", "cc");
	/* back to the default rounding before any C floating point */
	uint32_t mx_default = 0x1f80u;
	__asm__ volatile("ldmxcsr %0" : : "m"(mx_default));

	pid_t tid = (pid_t)syscall(SYS_gettid);
	if (tid != tls_tid || tid != tids[idx])
		addf(res->msg, "gettid %d, recorded %d (TLS %d); ", tid, tids[idx], tls_tid);
	if (tls_idx != idx)
		addf(res->msg, "TLS index %d; ", tls_idx);
	for (int i = 0; i < 16; i++)
		if (tls_u[i] != wl_mix((uint64_t)idx * 1000 + (uint64_t)i)) {
			addf(res->msg, "TLS word %d is %#llx; ", i, (unsigned long long)tls_u[i]);
			break;
		}
	if (tls_d != expect_d(idx))
		addf(res->msg, "TLS double %.17g, expected %.17g; ", tls_d, expect_d(idx));
	if (memcmp(cin, cout, sizeof(cin)) != 0)
		for (int i = 0; i < 16; i++)
			if (cin[i] != cout[i]) {
				addf(res->msg, "xmm%d lane %d is %.17g, expected %.17g; ", 8 + i / 2,
				     i % 2, cout[i], cin[i]);
				break;
			}
	if (count == 0)
		addf(res->msg, "loop counter is 0; ");
	else if (count < (1ULL << 52) &&
		 (x0out[0] != base + (double)count || x0out[1] != -base - (double)count))
		addf(res->msg, "xmm0 {%.17g, %.17g} after %llu iterations, expected {%.17g, %.17g}; ",
		     x0out[0], x0out[1], (unsigned long long)count, base + (double)count,
		     -base - (double)count);
	if (mx_out != mx_in)
		addf(res->msg, "MXCSR %#x, expected %#x; ", mx_out, mx_in);

	sigset_t cur;
	pthread_sigmask(SIG_BLOCK, NULL, &cur);
	int term = sigismember(&cur, SIGTERM), usr1 = sigismember(&cur, SIGUSR1),
	    usr2 = sigismember(&cur, SIGUSR2);
	if (term != 1 || usr1 != (idx == 1) || usr2 != (idx == 2))
		addf(res->msg, "signal mask: SIGTERM %d SIGUSR1 %d SIGUSR2 %d blocked; ", term, usr1,
		     usr2);
	return res;
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc > 2)
		nthreads = atoi(argv[2]);
	if (nthreads < 3 || nthreads > MAXT)
		wl_fail("thread count %d out of range 3..%d", nthreads, MAXT);

	/* threads inherit SIGTERM blocked; only the main thread takes it */
	wl_block_term();

	pthread_t th[MAXT];
	for (int i = 0; i < nthreads; i++) {
		int e = pthread_create(&th[i], NULL, thread_main, (void *)(intptr_t)i);
		if (e)
			wl_fail("pthread_create: %s", strerror(e));
	}
	while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) < nthreads)
		usleep(1000);
	pid_t main_tid = (pid_t)syscall(SYS_gettid);

	wl_ready();
	wl_wait_term();
	stop = 1;

	char verdict[4096] = "";
	size_t vlen = 0;
	if ((pid_t)syscall(SYS_gettid) != main_tid || main_tid != getpid())
		vlen += (size_t)snprintf(verdict, sizeof(verdict), "main thread: tid %d, was %d; ",
					 (int)syscall(SYS_gettid), main_tid);
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	if (sigismember(&cur, SIGUSR1) || sigismember(&cur, SIGUSR2) || !sigismember(&cur, SIGTERM))
		vlen += (size_t)snprintf(verdict + vlen, sizeof(verdict) - vlen,
					 "main thread: wrong signal mask; ");
	for (int i = 0; i < nthreads; i++) {
		void *ret;
		int e = pthread_join(th[i], &ret);
		if (e) {
			if (vlen < sizeof(verdict))
				vlen += (size_t)snprintf(verdict + vlen, sizeof(verdict) - vlen,
							 "join thread %d: %s; ", i, strerror(e));
			continue;
		}
		struct result *r = ret;
		if (r->msg[0] && vlen < sizeof(verdict))
			vlen += (size_t)snprintf(verdict + vlen, sizeof(verdict) - vlen,
						 "thread %d (tid %d): %s", i, tids[i], r->msg);
	}
	if (vlen)
		wl_fail("%s", verdict);
	wl_pass();
}
