/* fpu_avx STATEDIR - AVX, x87 and MXCSR state survive while the task spins.
 *
 * Loads ymm0-ymm15 with distinct values, the x87 stack st(0)-st(7) with
 * known values, a non-default x87 control word and MXCSR rounding mode, then
 * spins in asm reading a volatile flag that SIGTERM's handler sets. The
 * kernel saves and restores every register around the handler through the
 * signal frame, so the values must be intact afterwards. SIGTRAP is
 * ignored and must still be after the restore (an int3's forced SIGTRAP
 * would set it back to the default). */
#include "wl.h"

#define NYMM 16
#define MXCSR_RZ 0x7f80u /* all exceptions masked, round toward zero */
#define FPUCW_RZ 0x0e7fu /* all exceptions masked, 53-bit precision, round toward zero */

static volatile int spin_flag;

static void on_term(int sig)
{
	(void)sig;
	wl_term = 1;
	spin_flag = 1;
}

__attribute__((target("avx"), noinline)) static void run(void)
{
	static uint8_t ymm_in[NYMM * 32] __attribute__((aligned(32)));
	static uint8_t ymm_out[NYMM * 32] __attribute__((aligned(32)));
	static double st_in[8], st_out[8];
	uint32_t mxcsr_in = MXCSR_RZ, mxcsr_out = 0, mxcsr_default = 0x1f80;
	uint16_t cw_in = FPUCW_RZ, cw_out = 0;

	for (int i = 0; i < NYMM * 32 / 8; i++) {
		uint64_t w = wl_mix((uint64_t)i * 31 + 5);
		memcpy(ymm_in + i * 8, &w, 8);
	}
	memset(ymm_out, 0, sizeof(ymm_out));
	for (int i = 0; i < 8; i++)
		st_in[i] = 1.5 + i * 1000.25 + (i % 2 ? -1e6 : 1e-3);

	wl_ready();

	__asm__ volatile(
		"fninit\n\t"
		"fldcw %[cw_in]\n\t"
		"fldl 0(%[st_in])\n\t"
		"fldl 8(%[st_in])\n\t"
		"fldl 16(%[st_in])\n\t"
		"fldl 24(%[st_in])\n\t"
		"fldl 32(%[st_in])\n\t"
		"fldl 40(%[st_in])\n\t"
		"fldl 48(%[st_in])\n\t"
		"fldl 56(%[st_in])\n\t"
		"ldmxcsr %[mx_in]\n\t"
		"vmovdqa 0(%[yin]), %%ymm0\n\t"
		"vmovdqa 32(%[yin]), %%ymm1\n\t"
		"vmovdqa 64(%[yin]), %%ymm2\n\t"
		"vmovdqa 96(%[yin]), %%ymm3\n\t"
		"vmovdqa 128(%[yin]), %%ymm4\n\t"
		"vmovdqa 160(%[yin]), %%ymm5\n\t"
		"vmovdqa 192(%[yin]), %%ymm6\n\t"
		"vmovdqa 224(%[yin]), %%ymm7\n\t"
		"vmovdqa 256(%[yin]), %%ymm8\n\t"
		"vmovdqa 288(%[yin]), %%ymm9\n\t"
		"vmovdqa 320(%[yin]), %%ymm10\n\t"
		"vmovdqa 352(%[yin]), %%ymm11\n\t"
		"vmovdqa 384(%[yin]), %%ymm12\n\t"
		"vmovdqa 416(%[yin]), %%ymm13\n\t"
		"vmovdqa 448(%[yin]), %%ymm14\n\t"
		"vmovdqa 480(%[yin]), %%ymm15\n\t"
		"1:\n\t"
		"pause\n\t"
		"cmpl $0, %[flag]\n\t"
		"je 1b\n\t"
		"vmovdqa %%ymm0, 0(%[yout])\n\t"
		"vmovdqa %%ymm1, 32(%[yout])\n\t"
		"vmovdqa %%ymm2, 64(%[yout])\n\t"
		"vmovdqa %%ymm3, 96(%[yout])\n\t"
		"vmovdqa %%ymm4, 128(%[yout])\n\t"
		"vmovdqa %%ymm5, 160(%[yout])\n\t"
		"vmovdqa %%ymm6, 192(%[yout])\n\t"
		"vmovdqa %%ymm7, 224(%[yout])\n\t"
		"vmovdqa %%ymm8, 256(%[yout])\n\t"
		"vmovdqa %%ymm9, 288(%[yout])\n\t"
		"vmovdqa %%ymm10, 320(%[yout])\n\t"
		"vmovdqa %%ymm11, 352(%[yout])\n\t"
		"vmovdqa %%ymm12, 384(%[yout])\n\t"
		"vmovdqa %%ymm13, 416(%[yout])\n\t"
		"vmovdqa %%ymm14, 448(%[yout])\n\t"
		"vmovdqa %%ymm15, 480(%[yout])\n\t"
		"stmxcsr %[mx_out]\n\t"
		"ldmxcsr %[mx_def]\n\t"
		"fnstcw %[cw_out]\n\t"
		"fstpl 0(%[st_out])\n\t"
		"fstpl 8(%[st_out])\n\t"
		"fstpl 16(%[st_out])\n\t"
		"fstpl 24(%[st_out])\n\t"
		"fstpl 32(%[st_out])\n\t"
		"fstpl 40(%[st_out])\n\t"
		"fstpl 48(%[st_out])\n\t"
		"fstpl 56(%[st_out])\n\t"
		"fninit\n\t"
		"vzeroupper\n\t"
		: [mx_out] "=m"(mxcsr_out), [cw_out] "=m"(cw_out)
		: [yin] "r"(ymm_in), [yout] "r"(ymm_out), [st_in] "r"(st_in), [st_out] "r"(st_out),
		  [mx_in] "m"(mxcsr_in), [mx_def] "m"(mxcsr_default), [cw_in] "m"(cw_in),
		  [flag] "m"(spin_flag)
		: "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7",
		  "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "st",
		  "st(1)", "st(2)", "st(3)", "st(4)", "st(5)", "st(6)", "st(7)");

	wl_after();
	for (int r = 0; r < NYMM; r++)
		for (int b = 0; b < 32; b++)
			if (ymm_out[r * 32 + b] != ymm_in[r * 32 + b])
				wl_fail("ymm%d byte %d is %#x, expected %#x%s", r, b,
					ymm_out[r * 32 + b], ymm_in[r * 32 + b],
					b >= 16 ? " (upper half)" : "");
	for (int i = 0; i < 8; i++) {
		/* st(0) was pushed last, so it is stored first */
		double want = st_in[7 - i];
		if (memcmp(&st_out[i], &want, sizeof(double)) != 0)
			wl_fail("st(%d) is %.17g, expected %.17g", i, st_out[i], want);
	}
	if (mxcsr_out != MXCSR_RZ)
		wl_fail("MXCSR is %#x, expected %#x", mxcsr_out, MXCSR_RZ);
	if (cw_out != FPUCW_RZ)
		wl_fail("x87 control word is %#x, expected %#x", cw_out, FPUCW_RZ);
	struct sigaction trap;
	if (sigaction(SIGTRAP, NULL, &trap) < 0 || trap.sa_handler != SIG_IGN)
		wl_fail("SIGTRAP is no longer ignored (%p)", (void *)trap.sa_handler);
	wl_pass();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	__builtin_cpu_init();
	if (!__builtin_cpu_supports("avx"))
		wl_skip("the CPU has no AVX");
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGTERM, &sa, NULL) < 0)
		wl_fail("sigaction(SIGTERM): %s", strerror(errno));
	/* SIGTRAP ignored: still ignored after the restore (an int3's forced
	 * SIGTRAP would set it back to the default) */
	signal(SIGTRAP, SIG_IGN);
	run();
	return 0;
}
