/* pty STATEDIR - pty pairs held inside the tree come back with their state
 * (issue 16, item 1).
 *
 * Pair A: the root holds the master; child C is a session leader whose
 * controlling terminal is A's slave, with its own settings (echo off, a
 * changed VINTR) and window size; C's child G leads the foreground group
 * and holds the slave. Queued when the dump comes: output C wrote that
 * the root has not read ("out-data\n", which the slave's ONLCR made
 * "out-data\r\n"), and input the root wrote that G has not read: a whole
 * line and a partial one ("line1\npart").
 * Pair B: packet mode, its slave held by the root in raw mode, exclusive,
 * with input queued ("rawin") and the master's status byte not read yet
 * (raw mode turned flow control off: TIOCPKT_NOSTOP).
 * Pair E: packet mode, its slave held by the root with the default
 * settings, both queues flushed (TIOCPKT_FLUSHREAD|FLUSHWRITE), EXTPROC
 * switched on and off (TIOCPKT_IOCTL) and ^S typed (TIOCPKT_STOP, the
 * output stopped): none of it read. After the restore the master reads
 * those statuses, the slave's output is still stopped, and ^Q typed
 * starts it (TIOCPKT_START), then it flows.
 * Pair C: a master whose slave was never unlocked (locked).
 * Pair D: a master whose slave was opened and closed (the master polls a
 * hangup).
 *
 * After SIGTERM the root reads A's output, checks B, C and D, then asks C
 * to check its session, terminal and settings and G to read its input: the
 * whole line at once, nothing more until the root completes the partial
 * line ("X\n"), then "partX\n". */
#include "wl.h"

#include <sys/ioctl.h>
#include <termios.h>

static int ptmx(void);
static void unlock(int m);

/* A pair in packet mode; its slave opened non-blocking into *slave. */
static int packet_pair(int *slave)
{
	int m = ptmx();
	unlock(m);
	int on = 1;
	if (ioctl(m, TIOCPKT, &on) < 0)
		wl_fail("TIOCPKT: %s", strerror(errno));
	char name[64];
	ptsname_r(m, name, sizeof(name));
	*slave = open(name, O_RDWR | O_NOCTTY | O_NONBLOCK);
	if (*slave < 0)
		wl_fail("open %s: %s", name, strerror(errno));
	return m;
}

static int report[2]; /* C and G say what is wrong */
static int more[2];   /* G asks the root for the rest of its line */

static int ptmx(void)
{
	int m = posix_openpt(O_RDWR | O_NOCTTY);
	if (m < 0)
		wl_fail("posix_openpt: %s", strerror(errno));
	return m;
}

static void unlock(int m)
{
	if (grantpt(m) < 0 || unlockpt(m) < 0)
		wl_fail("grantpt/unlockpt: %s", strerror(errno));
}

__attribute__((format(printf, 1, 2), noreturn)) static void child_fail(const char *fmt, ...)
{
	char msg[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(msg, sizeof(msg) - 1, fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(msg) - 2)
		n = sizeof(msg) - 2;
	msg[n++] = '\n';
	if (write(report[1], msg, (size_t)n) < 0)
		_exit(3);
	_exit(1);
}

static void wait_sig(int sig)
{
	sigset_t s;
	sigemptyset(&s);
	sigaddset(&s, sig);
	int got;
	while (sigwait(&s, &got) != 0)
		;
}

static struct termios set_a;
static struct winsize ws_a = {.ws_row = 33, .ws_col = 101, .ws_xpixel = 7, .ws_ypixel = 9};
static char slave_a[64];

/* G: the foreground group's leader; reads its input after SIGTERM. */
static void g_main(int s)
{
	wait_sig(SIGTERM);
	int fl = fcntl(s, F_GETFL);
	fcntl(s, F_SETFL, fl | O_NONBLOCK);
	char buf[256];
	ssize_t n = read(s, buf, sizeof(buf));
	if (n != 6 || memcmp(buf, "line1\n", 6))
		child_fail("G's first read gave %zd bytes (%.*s), not \"line1\\n\"", n,
			   (int)(n > 0 ? n : 0), buf);
	n = read(s, buf, sizeof(buf));
	if (n >= 0 || errno != EAGAIN)
		child_fail("G's second read gave %zd (%.*s) before the line was complete", n,
			   (int)(n > 0 ? n : 0), buf);
	fcntl(s, F_SETFL, fl);
	if (write(more[1], "m", 1) != 1)
		child_fail("write to the root: %s", strerror(errno));
	n = wl_read_wait(s, buf, sizeof(buf), 5000);
	if (n != 6 || memcmp(buf, "partX\n", 6))
		child_fail("G's last read gave %zd bytes (%.*s), not \"partX\\n\"", n,
			   (int)(n > 0 ? n : 0), buf);
	_exit(0);
}

/* C: the session leader. */
static void c_main(int done)
{
	if (setsid() < 0)
		child_fail("setsid: %s", strerror(errno));
	memset(&set_a, 0, sizeof(set_a));
	int s = open(slave_a, O_RDWR); /* the controlling terminal */
	if (s < 0)
		child_fail("open %s: %s", slave_a, strerror(errno));
	if (tcgetattr(s, &set_a) < 0)
		child_fail("tcgetattr: %s", strerror(errno));
	set_a.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK);
	set_a.c_cc[VINTR] = 7;
	set_a.c_cc[VEOL] = '@';
	if (tcsetattr(s, TCSANOW, &set_a) < 0 || tcgetattr(s, &set_a) < 0)
		child_fail("tcsetattr: %s", strerror(errno));
	if (ioctl(s, TIOCSWINSZ, &ws_a) < 0)
		child_fail("TIOCSWINSZ: %s", strerror(errno));
	if (write(s, "out-data\n", 9) != 9)
		child_fail("write to the slave: %s", strerror(errno));
	pid_t g = fork();
	if (g < 0)
		child_fail("fork: %s", strerror(errno));
	if (g == 0) {
		setpgid(0, 0);
		g_main(s);
	}
	setpgid(g, g);
	if (tcsetpgrp(s, g) < 0)
		child_fail("tcsetpgrp: %s", strerror(errno));
	if (write(done, "c", 1) != 1)
		child_fail("write: %s", strerror(errno));

	wait_sig(SIGTERM);

	char problem[512] = "";
	struct termios t;
	memset(&t, 0, sizeof(t));
	struct winsize w;
	char name[64] = "";
	if (getsid(0) != getpid())
		snprintf(problem, sizeof(problem), "C leads session %d, not its own", getsid(0));
	else if (tcgetsid(s) != getpid())
		snprintf(problem, sizeof(problem), "the slave's session is %d, not C's %d", tcgetsid(s),
			 getpid());
	else if (tcgetpgrp(s) != g)
		snprintf(problem, sizeof(problem), "the foreground group is %d, not G's %d",
			 tcgetpgrp(s), g);
	else if (tcgetattr(s, &t) < 0 || memcmp(&t, &set_a, sizeof(t)))
		snprintf(problem, sizeof(problem),
			 "the settings are lflag %#x VINTR %d VEOL %d, not lflag %#x VINTR 7 VEOL '@'",
			 t.c_lflag, t.c_cc[VINTR], t.c_cc[VEOL], set_a.c_lflag);
	else if (ioctl(s, TIOCGWINSZ, &w) < 0 || memcmp(&w, &ws_a, sizeof(w)))
		snprintf(problem, sizeof(problem), "the window is %dx%d, not 33x101", w.ws_row,
			 w.ws_col);
	else if (ttyname_r(s, name, sizeof(name)) || strcmp(name, slave_a))
		snprintf(problem, sizeof(problem), "the slave is %s, not %s", name, slave_a);
	else {
		int tty = open("/dev/tty", O_RDWR);
		if (tty < 0)
			snprintf(problem, sizeof(problem), "open /dev/tty: %s", strerror(errno));
		else
			close(tty);
	}
	if (problem[0]) {
		kill(g, SIGKILL);
		child_fail("%s", problem);
	}
	kill(g, SIGTERM);
	int st = wl_waitpid(g, "waitpid G");
	_exit(WIFEXITED(st) ? WEXITSTATUS(st) : 2);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	if (pipe(report) < 0 || pipe(more) < 0)
		wl_fail("pipe: %s", strerror(errno));
	int done[2];
	wl_pipe(done);

	int a = ptmx();
	unlock(a);
	if (ptsname_r(a, slave_a, sizeof(slave_a)))
		wl_fail("ptsname: %s", strerror(errno));
	pid_t c = wl_fork();
	if (c == 0)
		c_main(done[1]);
	char b1;
	if (wl_read_wait(done[0], &b1, 1, 10000) != 1)
		wl_fail("C did not set its terminal up");
	if (write(a, "line1\npart", 10) != 10)
		wl_fail("write to A's master: %s", strerror(errno));

	int bs, b = packet_pair(&bs);
	struct termios raw;
	memset(&raw, 0, sizeof(raw)); /* (memcmp sees the padding) */
	tcgetattr(bs, &raw);
	cfmakeraw(&raw);
	tcsetattr(bs, TCSANOW, &raw);
	tcgetattr(bs, &raw);
	if (ioctl(bs, TIOCEXCL) < 0)
		wl_fail("TIOCEXCL: %s", strerror(errno));
	if (write(b, "rawin", 5) != 5)
		wl_fail("write to B's master: %s", strerror(errno));

	int es, e = packet_pair(&es);
	struct termios te;
	tcgetattr(es, &te);
	if (tcflush(es, TCIOFLUSH) < 0)
		wl_fail("tcflush: %s", strerror(errno));
	te.c_lflag |= EXTPROC;
	tcsetattr(es, TCSANOW, &te);
	te.c_lflag &= ~(tcflag_t)EXTPROC;
	tcsetattr(es, TCSANOW, &te);
	if (write(e, "\023", 1) != 1) /* ^S typed */
		wl_fail("write ^S to E's master: %s", strerror(errno));

	int pc = ptmx(); /* locked */

	int d = ptmx();
	unlock(d);
	char name_d[64];
	ptsname_r(d, name_d, sizeof(name_d));
	int ds = open(name_d, O_RDWR | O_NOCTTY);
	if (ds < 0)
		wl_fail("open %s: %s", name_d, strerror(errno));
	close(ds);

	usleep(20000); /* (the line disciplines take the bytes) */
	wl_ready();
	wl_wait_term();

	/* A: the output C wrote, once */
	char buf[256];
	ssize_t n = wl_read_wait(a, buf, sizeof(buf), 5000);
	if (n != 10 || memcmp(buf, "out-data\r\n", 10))
		wl_fail("A's master read %zd bytes (%.*s), not \"out-data\\r\\n\"", n,
			(int)(n > 0 ? n : 0), buf);
	struct pollfd pf = {.fd = a, .events = POLLIN};
	if (poll(&pf, 1, 100) != 0)
		wl_fail("A's master has more to read than C wrote (revents %#x)", pf.revents);

	/* B: packet mode, raw slave settings, exclusive, its input */
	int pkt = 0, excl = 0;
	if (ioctl(b, TIOCGPKT, &pkt) < 0 || !pkt)
		wl_fail("B's master is not in packet mode (%d)", pkt);
	if (ioctl(bs, TIOCGEXCL, &excl) < 0 || !excl)
		wl_fail("B's slave is not exclusive (%d)", excl);
	struct termios t;
	memset(&t, 0, sizeof(t));
	if (tcgetattr(bs, &t) < 0 || memcmp(&t, &raw, sizeof(t))) {
		const unsigned char *x = (const void *)&t, *y = (const void *)&raw;
		size_t k = 0;
		while (k < sizeof(t) && x[k] == y[k])
			k++;
		wl_fail("B's slave settings changed at byte %zu of struct termios (%#x, was %#x)", k,
			k < sizeof(t) ? x[k] : 0, k < sizeof(t) ? y[k] : 0);
	}
	n = wl_read_wait(bs, buf, sizeof(buf), 5000);
	if (n != 5 || memcmp(buf, "rawin", 5))
		wl_fail("B's slave read %zd bytes (%.*s), not \"rawin\"", n, (int)(n > 0 ? n : 0),
			buf);

	/* B's master: the status raw mode gave (flow control off) */
	n = wl_read_wait(b, buf, sizeof(buf), 5000);
	if (n != 1 || buf[0] != TIOCPKT_NOSTOP)
		wl_fail("B's master read %zd bytes (first %#x), not the status TIOCPKT_NOSTOP", n,
			n > 0 ? buf[0] : 0);

	/* E: the statuses not read, the output stopped until ^Q */
	n = wl_read_wait(e, buf, sizeof(buf), 5000);
	if (n != 1 || buf[0] != (TIOCPKT_FLUSHREAD | TIOCPKT_FLUSHWRITE | TIOCPKT_IOCTL | TIOCPKT_STOP))
		wl_fail("E's master read %zd bytes (first %#x), not the statuses %#x", n,
			n > 0 ? buf[0] : 0,
			TIOCPKT_FLUSHREAD | TIOCPKT_FLUSHWRITE | TIOCPKT_IOCTL | TIOCPKT_STOP);
	if (write(es, "z", 1) >= 0 || errno != EAGAIN)
		wl_fail("E's slave took output while stopped (%s)", strerror(errno));
	if (write(e, "\021", 1) != 1) /* ^Q typed */
		wl_fail("write ^Q to E's master: %s", strerror(errno));
	n = wl_read_wait(e, buf, sizeof(buf), 5000);
	if (n != 1 || buf[0] != TIOCPKT_START)
		wl_fail("E's master read %zd bytes (first %#x) after ^Q, not TIOCPKT_START", n,
			n > 0 ? buf[0] : 0);
	if (write(es, "z", 1) != 1)
		wl_fail("E's slave takes no output after ^Q: %s", strerror(errno));
	n = wl_read_wait(e, buf, sizeof(buf), 5000);
	if (n != 2 || buf[0] != TIOCPKT_DATA || buf[1] != 'z')
		wl_fail("E's master read %zd bytes (%#x %#x), not the data \"z\"", n,
			n > 0 ? buf[0] : 0, n > 1 ? buf[1] : 0);

	/* C: still locked */
	int lck = 0;
	if (ioctl(pc, TIOCGPTLCK, &lck) < 0 || !lck)
		wl_fail("the locked pair is not locked (%d): %s", lck, strerror(errno));

	/* D: its slave closed */
	pf.fd = d;
	pf.events = POLLIN;
	if (poll(&pf, 1, 0) != 1 || !(pf.revents & POLLHUP))
		wl_fail("D's master does not poll a hangup (revents %#x)", pf.revents);

	/* the session and G's input */
	kill(c, SIGTERM);
	char m;
	if (wl_read_wait(more[0], &m, 1, 5000) == 1) {
		if (write(a, "X\n", 2) != 2)
			wl_fail("write to A's master: %s", strerror(errno));
	}
	int st = wl_waitpid(c, "waitpid C");
	if (!WIFEXITED(st) || WEXITSTATUS(st)) {
		char why[1024] = "";
		fcntl(report[0], F_SETFL, O_NONBLOCK);
		ssize_t k = read(report[0], why, sizeof(why) - 1);
		why[k > 0 ? k : 0] = 0;
		wl_fail("C or G failed (status %#x): %s", st, why);
	}
	wl_pass();
}
