/* nested STATEDIR SPEC - a process tree spread over nested user namespaces.
 *
 * SPEC lists tasks separated by ';', each "NAME PARENT KIND [OPT...]":
 *   NAME    a short name (letters, digits, '_');
 *   PARENT  the task that forks it, "-" for the first task (the one launch
 *           started, called the launcher below);
 *   KIND    "same" (stays in its parent's user namespace), "new"
 *           (unshare(CLONE_NEWUSER); the parent writes its maps), or
 *           "join:TASK" (setns(2) into the user namespace of TASK, an
 *           earlier child of the same parent, through /proc/TASK/ns/user);
 *   OPT     um=FIRST:LOWER:COUNT[,...]  uid_map (with "new"), relative to
 *                                       the parent namespace
 *           gm=...                      gid_map (default: as um)
 *           deny                        write "deny" to setgroups first
 *           groups=G[,G...]             setgroups(2) (ids inside)
 *           g=N, u=N                    setresgid/setresuid(N, N, N) inside
 *                                       (without them the task keeps its
 *                                       ids, possibly unmapped)
 *           nocaps                      drop every capability: bounding
 *                                       and ambient sets (before the ids
 *                                       change), capset all zero (after)
 *           thread                      one extra thread that checks its
 *                                       own view as well
 *           maxdepth                    unshare(CLONE_NEWUSER) must fail
 *                                       with ENOSPC/EUSERS (depth limit)
 *           ovf                         the ids it does not set (u=, g=)
 *                                       must show as the overflow id 65534
 *           root                        the dumped root (which calls setsid()
 *                                       when it is not the launcher): it
 *                                       collects every
 *                                       verdict of its subtree and writes
 *                                       <statedir>/verdict (default: the
 *                                       launcher)
 *
 * Each task sets itself up, records ITS OWN view (getresuid, getresgid,
 * fsuid, fsgid, getgroups, capget, bounding and ambient sets,
 * /proc/self/uid_map, gid_map, setgroups) and, for each of its children,
 * whether the child's /proc/PID/ns/user equals its own. The launcher then
 * writes <statedir>/pids ("ROOT PID" and "NAME PID BELOW" lines, BELOW 1
 * for the root and its descendants) and ready.
 *
 * On SIGTERM every task forwards SIGTERM to its children, checks that its
 * view and the relations are as before (and its ppid, unless it is a
 * dumped root below the launcher), writes <statedir>/res.NAME ("PASS" or
 * "FAIL: ...") and reaps its children; the root then reads the res files of
 * its subtree and writes the verdict. Tasks above the root (a dumped
 * subtree) ignore SIGCHLD, so a dumped root does not linger as a zombie.
 * The state directory must be writable by every uid (the harness makes it
 * 0777). */
#include "wl.h"

#include <grp.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <sys/fsuid.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>

/* messages are cut to their buffers on purpose */
#pragma GCC diagnostic ignored "-Wformat-truncation"

#define MAXT 64
#define VIEW 8192

struct task {
	char name[32];
	int parent; /* index, -1 for the launcher */
	char kind;  /* 's', 'n', 'j' */
	int join;   /* index of the join target */
	char um[256], gm[256];
	int deny, nocaps, thread, maxdepth, root, ovf;
	long u, g;
	gid_t groups[32];
	int ngroups;
};

static struct task T[MAXT];
static int NT;
static int me;		/* my index */
static pid_t pids[MAXT]; /* pids of my children (by index) */
static int report_w = -1;
static int rootidx;
static char view_before[VIEW];
static char rel_before[4096];
static char thread_before[VIEW];
static char thread_result[VIEW];
static pthread_t thr;

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	char msg[1024];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (me == 0)
		wl_fail("%s: %s", T[me].name, msg);
	char rec[1200];
	int n = snprintf(rec, sizeof(rec), "ERR %s %s\n", T[me].name, msg);
	if (report_w >= 0 && write(report_w, rec, (size_t)n) < 0)
		_exit(3);
	_exit(3);
}

static int find(const char *name)
{
	for (int i = 0; i < NT; i++)
		if (!strcmp(T[i].name, name))
			return i;
	return -1;
}

static void parse(char *spec)
{
	char *save1;
	for (char *t = strtok_r(spec, ";", &save1); t; t = strtok_r(NULL, ";", &save1)) {
		while (*t == ' ')
			t++;
		if (!*t)
			continue;
		if (NT == MAXT)
			wl_fail("spec: too many tasks");
		struct task *k = &T[NT];
		k->u = k->g = -1;
		char *save2;
		char *name = strtok_r(t, " ", &save2);
		char *parent = strtok_r(NULL, " ", &save2);
		char *kind = strtok_r(NULL, " ", &save2);
		if (!name || !parent || !kind)
			wl_fail("spec: bad task %s", t);
		snprintf(k->name, sizeof(k->name), "%s", name);
		if (!strcmp(parent, "-")) {
			if (NT != 0)
				wl_fail("spec: only the first task has no parent");
			k->parent = -1;
		} else if ((k->parent = find(parent)) < 0) {
			wl_fail("spec: %s: unknown parent %s", name, parent);
		}
		if (!strcmp(kind, "same")) {
			k->kind = 's';
		} else if (!strcmp(kind, "new")) {
			k->kind = 'n';
		} else if (!strncmp(kind, "join:", 5)) {
			k->kind = 'j';
			k->join = find(kind + 5);
			if (k->join < 0 || T[k->join].parent != k->parent)
				wl_fail("spec: %s joins %s, which is no earlier sibling", name, kind + 5);
		} else {
			wl_fail("spec: %s: bad kind %s", name, kind);
		}
		for (char *o = strtok_r(NULL, " ", &save2); o; o = strtok_r(NULL, " ", &save2)) {
			if (!strncmp(o, "um=", 3))
				snprintf(k->um, sizeof(k->um), "%s", o + 3);
			else if (!strncmp(o, "gm=", 3))
				snprintf(k->gm, sizeof(k->gm), "%s", o + 3);
			else if (!strcmp(o, "deny"))
				k->deny = 1;
			else if (!strcmp(o, "nocaps"))
				k->nocaps = 1;
			else if (!strcmp(o, "thread"))
				k->thread = 1;
			else if (!strcmp(o, "maxdepth"))
				k->maxdepth = 1;
			else if (!strcmp(o, "ovf"))
				k->ovf = 1;
			else if (!strcmp(o, "root"))
				k->root = 1;
			else if (!strncmp(o, "u=", 2))
				k->u = atol(o + 2);
			else if (!strncmp(o, "g=", 2))
				k->g = atol(o + 2);
			else if (!strncmp(o, "groups=", 7)) {
				char *save3;
				for (char *g = strtok_r(o + 7, ",", &save3); g && k->ngroups < 32;
				     g = strtok_r(NULL, ",", &save3))
					k->groups[k->ngroups++] = (gid_t)atol(g);
			} else
				wl_fail("spec: %s: bad option %s", name, o);
		}
		if (k->kind == 'n' && !k->um[0])
			wl_fail("spec: %s: a new namespace needs um=", name);
		if (!k->gm[0])
			memcpy(k->gm, k->um, sizeof(k->gm));
		NT++;
	}
	if (NT == 0)
		wl_fail("spec: no task");
	rootidx = 0;
	for (int i = 0; i < NT; i++)
		if (T[i].root)
			rootidx = i;
}

/* Whether task i is task a or a descendant of it. */
static int below(int i, int a)
{
	for (; i >= 0; i = T[i].parent)
		if (i == a)
			return 1;
	return 0;
}

static void cat_file(char *out, size_t cap, const char *label, const char *path)
{
	char buf[2048];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n = -1;
	if (fd >= 0) {
		n = read(fd, buf, sizeof(buf) - 1);
		close(fd);
	}
	size_t len = strlen(out);
	if (n < 0)
		snprintf(out + len, cap - len, "%s: error %s\n", label, strerror(errno));
	else {
		buf[n] = 0;
		/* squeeze the kernel's column padding */
		char sq[2048];
		size_t j = 0;
		for (ssize_t i = 0; i < n && j < sizeof(sq) - 1; i++) {
			if (buf[i] == ' ' && (j == 0 || sq[j - 1] == ' ' || sq[j - 1] == '\n'))
				continue;
			sq[j++] = buf[i] == '\n' ? '|' : buf[i];
		}
		sq[j] = 0;
		snprintf(out + len, cap - len, "%s: %s\n", label, sq);
	}
}

/* This thread's own view of its credentials and namespace maps. */
static void view(char *out, size_t cap)
{
	uid_t r, e, s;
	gid_t gr, ge, gs;
	out[0] = 0;
	size_t len;
	if (getresuid(&r, &e, &s) < 0 || getresgid(&gr, &ge, &gs) < 0) {
		snprintf(out, cap, "getresuid/getresgid: %s\n", strerror(errno));
		return;
	}
	int fsu = setfsuid((uid_t)-1), fsg = setfsgid((gid_t)-1);
	snprintf(out, cap, "uid %u %u %u fs %d\ngid %u %u %u fs %d\ngroups", r, e, s, fsu, gr, ge, gs,
		 fsg);
	gid_t gl[256];
	int ng = getgroups(256, gl);
	for (int i = 0; i < ng; i++) {
		len = strlen(out);
		snprintf(out + len, cap - len, " %u", gl[i]);
	}
	if (ng < 0) {
		len = strlen(out);
		snprintf(out + len, cap - len, " error %s", strerror(errno));
	}
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof(d));
	len = strlen(out);
	if (syscall(SYS_capget, &h, d) < 0)
		snprintf(out + len, cap - len, "\ncapget: %s\n", strerror(errno));
	else
		snprintf(out + len, cap - len, "\ncap inh %08x%08x prm %08x%08x eff %08x%08x\n",
			 d[1].inheritable, d[0].inheritable, d[1].permitted, d[0].permitted,
			 d[1].effective, d[0].effective);
	uint64_t bnd = 0, amb = 0;
	for (int c = 0; c < 64; c++) {
		int b = prctl(PR_CAPBSET_READ, c, 0, 0, 0);
		if (b < 0)
			break;
		if (b)
			bnd |= 1ULL << c;
		if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, c, 0, 0) == 1)
			amb |= 1ULL << c;
	}
	len = strlen(out);
	snprintf(out + len, cap - len, "cap bnd %016llx amb %016llx\n", (unsigned long long)bnd,
		 (unsigned long long)amb);
	cat_file(out, cap, "uid_map", "/proc/thread-self/uid_map");
	cat_file(out, cap, "gid_map", "/proc/thread-self/gid_map");
	cat_file(out, cap, "setgroups", "/proc/thread-self/setgroups");
}

static void ns_link(pid_t pid, char *out, size_t cap)
{
	char path[64];
	if (pid)
		snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pid);
	else
		snprintf(path, sizeof(path), "/proc/self/ns/user");
	ssize_t n = readlink(path, out, cap - 1);
	if (n < 0)
		snprintf(out, cap, "error %s", strerror(errno));
	else
		out[n] = 0;
}

/* For each child: whether its user namespace is mine. */
static void relations(char *out, size_t cap)
{
	char mine[128], theirs[128];
	ns_link(0, mine, sizeof(mine));
	out[0] = 0;
	for (int i = 0; i < NT; i++) {
		if (T[i].parent != me || !pids[i])
			continue;
		ns_link(pids[i], theirs, sizeof(theirs));
		size_t len = strlen(out);
		snprintf(out + len, cap - len, "%s %s; ", T[i].name,
			 !strncmp(theirs, "error", 5) ? theirs
			 : strcmp(mine, theirs)	      ? "other"
						      : "same");
	}
}

/* With "ovf": NULL if the ids not set by u=/g= are the overflow id. */
static const char *ovf_check(void)
{
	static char msg[160];
	uid_t r, e, s;
	gid_t gr, ge, gs;
	if (getresuid(&r, &e, &s) < 0 || getresgid(&gr, &ge, &gs) < 0)
		return "getresuid/getresgid failed";
	if (T[me].u < 0 && (r != 65534 || e != 65534 || s != 65534)) {
		snprintf(msg, sizeof(msg), "uids %u %u %u, expected the overflow id 65534", r, e, s);
		return msg;
	}
	if (T[me].g < 0 && (gr != 65534 || ge != 65534 || gs != 65534)) {
		snprintf(msg, sizeof(msg), "gids %u %u %u, expected the overflow id 65534", gr, ge,
			 gs);
		return msg;
	}
	return NULL;
}

/* unshare(CLONE_NEWUSER) in a child must hit the depth limit. */
static const char *depth_check(void)
{
	static char msg[128];
	pid_t c = fork();
	if (c < 0) {
		snprintf(msg, sizeof(msg), "fork: %s", strerror(errno));
		return msg;
	}
	if (c == 0) {
		if (unshare(CLONE_NEWUSER) == 0)
			_exit(10);
		_exit(errno == ENOSPC || errno == EUSERS ? 0 : 11);
	}
	int st;
	while (waitpid(c, &st, 0) < 0 && errno == EINTR)
		;
	if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
		return NULL;
	snprintf(msg, sizeof(msg), "unshare(CLONE_NEWUSER) at the deepest level: %s",
		 WIFEXITED(st) && WEXITSTATUS(st) == 10 ? "succeeded, the depth limit is not reached"
							: "failed with neither ENOSPC nor EUSERS");
	return msg;
}

static void *thread_main(void *arg)
{
	(void)arg;
	view(thread_before, sizeof(thread_before));
	struct timespec ts = {0, 20 * 1000 * 1000};
	while (!wl_term)
		nanosleep(&ts, NULL);
	char now[VIEW];
	view(now, sizeof(now));
	if (strcmp(now, thread_before))
		snprintf(thread_result, sizeof(thread_result),
			 "thread view changed: before {%s} after {%s}", thread_before, now);
	return NULL;
}

static void write_map(pid_t pid, const char *file, const char *spec)
{
	char text[512], path[64];
	size_t len = 0;
	char copy[256];
	snprintf(copy, sizeof(copy), "%s", spec);
	char *save;
	for (char *e = strtok_r(copy, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
		unsigned long a, b, c;
		if (sscanf(e, "%lu:%lu:%lu", &a, &b, &c) != 3)
			die("bad map extent %s", e);
		len += (size_t)snprintf(text + len, sizeof(text) - len, "%lu %lu %lu\n", a, b, c);
	}
	snprintf(path, sizeof(path), "/proc/%d/%s", (int)pid, file);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		die("open %s: %s", path, strerror(errno));
	if (write(fd, text, len) != (ssize_t)len)
		die("write %s (%s): %s", path, spec, strerror(errno));
	close(fd);
}

static void xread(int fd, const char *what)
{
	char c;
	ssize_t n;
	do
		n = read(fd, &c, 1);
	while (n < 0 && errno == EINTR);
	if (n != 1)
		die("%s: the other side is gone", what);
}

static void xwrite(int fd)
{
	if (write(fd, "x", 1) != 1)
		die("sync write: %s", strerror(errno));
}

static void drop_bounding(void)
{
	for (int c = 0; c < 64; c++)
		if (prctl(PR_CAPBSET_READ, c, 0, 0, 0) == 1 &&
		    prctl(PR_CAPBSET_DROP, c, 0, 0, 0) < 0)
			die("PR_CAPBSET_DROP %d: %s", c, strerror(errno));
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
		die("PR_CAP_AMBIENT_CLEAR_ALL: %s", strerror(errno));
}

static void drop_caps(void)
{
	struct __user_cap_header_struct h = {.version = _LINUX_CAPABILITY_VERSION_3, .pid = 0};
	struct __user_cap_data_struct d[2];
	memset(d, 0, sizeof(d));
	if (syscall(SYS_capset, &h, d) < 0)
		die("capset: %s", strerror(errno));
}

/* The task's own setup, in the forked child; `to` and `from` are the sync
 * pipe ends towards and from the parent. */
static void setup_self(int to, int from)
{
	struct task *k = &T[me];
	if (k->kind == 'n') {
		if (unshare(CLONE_NEWUSER) < 0)
			die("unshare(CLONE_NEWUSER): %s", strerror(errno));
		xwrite(to);
		xread(from, "waiting for the maps");
	} else if (k->kind == 'j') {
		char path[64];
		snprintf(path, sizeof(path), "/proc/%d/ns/user", (int)pids[k->join]);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			die("open %s: %s", path, strerror(errno));
		if (setns(fd, CLONE_NEWUSER) < 0)
			die("setns %s: %s", path, strerror(errno));
		close(fd);
	}
	if (k->nocaps)
		drop_bounding();
	if (k->ngroups && setgroups((size_t)k->ngroups, k->groups) < 0)
		die("setgroups: %s", strerror(errno));
	if (k->g >= 0 && setresgid((gid_t)k->g, (gid_t)k->g, (gid_t)k->g) < 0)
		die("setresgid %ld: %s", k->g, strerror(errno));
	if (k->u >= 0 && setresuid((uid_t)k->u, (uid_t)k->u, (uid_t)k->u) < 0)
		die("setresuid %ld: %s", k->u, strerror(errno));
	if (k->nocaps)
		drop_caps();
	if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
		die("PR_SET_DUMPABLE: %s", strerror(errno));
}

static void fork_children(void);

static void child_main(int idx, int to, int from)
{
	me = idx;
	setup_self(to, from);
	if (T[me].root && setsid() < 0) /* a dumped root leads its session */
		die("setsid: %s", strerror(errno));
	xwrite(to); /* set up: the parent may go on */
	close(to);
	close(from);
	fork_children();
}

static void fork_children(void)
{
	pid_t keep[MAXT];
	memcpy(keep, pids, sizeof(keep));
	for (int i = 0; i < NT; i++) {
		if (T[i].parent != me)
			continue;
		int up[2], down[2];
		if (pipe2(up, O_CLOEXEC) < 0 || pipe2(down, O_CLOEXEC) < 0)
			die("pipe: %s", strerror(errno));
		pid_t c = fork();
		if (c < 0)
			die("fork: %s", strerror(errno));
		if (c == 0) {
			close(up[0]);
			close(down[1]);
			/* join targets are earlier siblings: their pids are known */
			memcpy(pids, keep, sizeof(pids));
			int join = T[i].kind == 'j' ? T[i].join : -1;
			pid_t target = join >= 0 ? pids[join] : 0;
			memset(pids, 0, sizeof(pids));
			if (join >= 0)
				pids[join] = target;
			child_main(i, up[1], down[0]);
			return;
		}
		close(up[1]);
		close(down[0]);
		pids[i] = keep[i] = c;
		if (T[i].kind == 'n') {
			xread(up[0], "waiting for a child's unshare");
			if (T[i].deny) {
				char path[64];
				snprintf(path, sizeof(path), "/proc/%d/setgroups", (int)c);
				int fd = open(path, O_WRONLY | O_CLOEXEC);
				if (fd < 0 || write(fd, "deny", 4) != 4)
					die("write %s: %s", path, strerror(errno));
				close(fd);
			}
			write_map(c, "uid_map", T[i].um);
			write_map(c, "gid_map", T[i].gm);
			xwrite(down[1]);
		}
		xread(up[0], "waiting for a child's setup");
		close(up[0]);
		close(down[1]);
	}
}

static void reap_all(void)
{
	for (;;) {
		pid_t w = waitpid(-1, NULL, 0);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			break;
	}
}

/* Writes <statedir>/res.NAME. */
static void result(const char *text)
{
	char name[64];
	snprintf(name, sizeof(name), "res.%s", T[me].name);
	if (wl_write_file(name, text, strlen(text)) < 0)
		_exit(4);
}

/* The root: the verdicts of its subtree. */
static void collect(void)
{
	char fails[8192] = "";
	for (int i = 0; i < NT; i++) {
		if (!below(i, me))
			continue;
		char path[4096], buf[4096];
		snprintf(path, sizeof(path), "%s/res.%s", wl_dir, T[i].name);
		int fd = open(path, O_RDONLY | O_CLOEXEC);
		ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
		if (fd >= 0)
			close(fd);
		size_t len = strlen(fails);
		if (n < 0) {
			snprintf(fails + len, sizeof(fails) - len, "[%s: no result] ", T[i].name);
			continue;
		}
		buf[n] = 0;
		if (strcmp(buf, "PASS\n"))
			snprintf(fails + len, sizeof(fails) - len, "[%s: %s] ", T[i].name, buf);
	}
	if (fails[0])
		wl_fail("%s", fails);
	wl_pass();
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	if (argc < 3)
		wl_fail("usage: nested STATEDIR SPEC");
	parse(argv[2]);
	wl_block_term();
	int rep[2];
	if (pipe2(rep, O_CLOEXEC) < 0)
		wl_fail("pipe: %s", strerror(errno));
	report_w = rep[1];
	me = 0;
	T[0].kind = 's';
	if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
		wl_fail("PR_SET_DUMPABLE: %s", strerror(errno));
	fork_children();
	/* from here on: one task, `me` */
	pid_t ppid = getppid();
	if (me != 0)
		close(rep[0]);
	if (!below(me, rootidx))
		signal(SIGCHLD, SIG_IGN); /* above a dumped subtree */
	if (T[me].thread && pthread_create(&thr, NULL, thread_main, NULL) != 0)
		die("pthread_create failed");
	if (T[me].maxdepth) {
		const char *m = depth_check();
		if (m)
			die("%s", m);
	}
	if (T[me].ovf) {
		const char *m = ovf_check();
		if (m)
			die("%s", m);
	}
	view(view_before, sizeof(view_before));
	relations(rel_before, sizeof(rel_before));
	if (me != 0) {
		char rec[128];
		int n = snprintf(rec, sizeof(rec), "OK %s %d\n", T[me].name, (int)getpid());
		if (write(report_w, rec, (size_t)n) != n)
			_exit(3);
		close(report_w);
	} else {
		char pidsfile[8192];
		size_t len = 0;
		int got = 0;
		char pend[4096];
		size_t plen = 0;
		while (got < NT - 1) {
			ssize_t n = read(rep[0], pend + plen, sizeof(pend) - plen - 1);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				wl_fail("a task died during setup");
			plen += (size_t)n;
			pend[plen] = 0;
			char *nl;
			while ((nl = strchr(pend, '\n'))) {
				*nl = 0;
				char name[64];
				int pid;
				if (!strncmp(pend, "ERR ", 4))
					wl_fail("setup: %s", pend + 4);
				if (sscanf(pend, "OK %63s %d", name, &pid) != 2 || find(name) < 0)
					wl_fail("bad report %s", pend);
				len += (size_t)snprintf(pidsfile + len, sizeof(pidsfile) - len,
							"%s %d %d\n", name, pid,
							below(find(name), rootidx));
				if (find(name) == rootidx)
					len += (size_t)snprintf(pidsfile + len, sizeof(pidsfile) - len,
								"ROOT %d\n", pid);
				got++;
				size_t rest = plen - (size_t)(nl + 1 - pend);
				memmove(pend, nl + 1, rest + 1);
				plen = rest;
			}
		}
		close(rep[0]);
		close(rep[1]);
		len += (size_t)snprintf(pidsfile + len, sizeof(pidsfile) - len, "%s %d %d\n",
					T[0].name, (int)getpid(), rootidx == 0);
		if (rootidx == 0)
			len += (size_t)snprintf(pidsfile + len, sizeof(pidsfile) - len, "ROOT %d\n",
						(int)getpid());
		if (wl_write_file("pids", pidsfile, len) < 0)
			wl_fail("write pids: %s", strerror(errno));
		wl_ready();
	}
	/* wait for SIGTERM */
	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	sigdelset(&cur, SIGTERM);
	while (!wl_term)
		sigsuspend(&cur);
	if (me == 0)
		wl_after();
	for (int i = 0; i < NT; i++)
		if (T[i].parent == me && pids[i])
			kill(pids[i], SIGTERM);
	char fail[3 * VIEW] = "";
	char now[VIEW];
	view(now, sizeof(now));
	if (strcmp(now, view_before))
		snprintf(fail, sizeof(fail), "view changed: before {%s} after {%s}; ", view_before,
			 now);
	char rel[4096];
	relations(rel, sizeof(rel));
	if (strcmp(rel, rel_before)) {
		size_t len = strlen(fail);
		snprintf(fail + len, sizeof(fail) - len,
			 "children's user namespaces: before {%s} after {%s}; ", rel_before, rel);
	}
	if (getppid() != ppid && !(me == rootidx && me != 0)) {
		size_t len = strlen(fail);
		snprintf(fail + len, sizeof(fail) - len, "ppid %d, expected %d; ", (int)getppid(),
			 (int)ppid);
	}
	if (T[me].maxdepth) {
		const char *m = depth_check();
		if (m) {
			size_t len = strlen(fail);
			snprintf(fail + len, sizeof(fail) - len, "%s; ", m);
		}
	}
	if (T[me].ovf) {
		const char *m = ovf_check();
		if (m) {
			size_t len = strlen(fail);
			snprintf(fail + len, sizeof(fail) - len, "%s; ", m);
		}
	}
	if (T[me].thread) {
		pthread_join(thr, NULL);
		if (thread_result[0]) {
			size_t len = strlen(fail);
			snprintf(fail + len, sizeof(fail) - len, "%s; ", thread_result);
		}
	}
	if (fail[0]) {
		char text[3 * VIEW + 16];
		snprintf(text, sizeof(text), "FAIL: %s\n", fail);
		result(text);
	} else {
		result("PASS\n");
	}
	reap_all();
	if (me == rootidx)
		collect();
	return 0; /* the launcher above a dumped subtree writes no verdict */
}
