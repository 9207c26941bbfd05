/* tree_sessions STATEDIR - a process tree with several sessions and groups.
 *
 * The root (a session and group leader through launch) builds the tree of
 * `nodes` below: children in new sessions (setsid) with grandchildren that
 * stay in them, children in new groups of the root's session, children and
 * grandchildren joining a sibling's (or an uncle's) group, a great-grandchild.
 * Every task checks its pid, ppid, pgid and sid right after its setup and
 * remembers them, reports "ready" through a pipe the root created, and waits
 * for SIGTERM (blocked outside sigsuspend, so it cannot die of it).
 *
 * On SIGTERM the root forwards SIGTERM to every descendant by pid. Each one
 * checks getpid/getppid/getpgid(0)/getsid(0) against what it remembered,
 * writes its result to the result pipe, reaps its own children (which must
 * exit 0) and exits 0. The root gathers every result and names each mismatch
 * in its verdict. */
#include "wl.h"

#include <poll.h>
#include <sys/wait.h>

enum kind {
	PLAIN,	/* stays in its parent's group and session */
	SETSID, /* setsid(): its own session and group */
	NEWPG,	/* setpgid(0, 0): its own group in its parent's session */
	JOINPG, /* joins the group led by node `ref` (forked before it) */
};

struct node {
	const char *name;
	int parent; /* index into nodes, -1 = the root */
	enum kind kind;
	int ref; /* for JOINPG */
};

static const struct node nodes[] = {
	/* 0 */ {"c1-setsid", -1, SETSID, 0},
	/* 1 */ {"g1a", 0, PLAIN, 0},
	/* 2 */ {"g1b-newpg", 0, NEWPG, 0},
	/* 3 */ {"c2-setsid", -1, SETSID, 0},
	/* 4 */ {"g2a", 3, PLAIN, 0},
	/* 5 */ {"gg2", 4, PLAIN, 0},
	/* 6 */ {"c3-newpg", -1, NEWPG, 0},
	/* 7 */ {"g3a", 6, PLAIN, 0},
	/* 8 */ {"c4-join-c3", -1, JOINPG, 6},
	/* 9 */ {"c5-newpg", -1, NEWPG, 0},
	/* 10 */ {"g5a-newpg", 9, NEWPG, 0},
	/* 11 */ {"g5b-join-g5a", 9, JOINPG, 10},
	/* 12 */ {"c6", -1, PLAIN, 0},
	/* 13 */ {"g6a", 12, PLAIN, 0},
	/* 14 */ {"c7-join-c3", -1, JOINPG, 6},
	/* 15 */ {"g7a", 14, PLAIN, 0},
	/* 16 */ {"c8-setsid", -1, SETSID, 0},
	/* 17 */ {"g8a-newpg", 16, NEWPG, 0},
	/* 18 */ {"g8b-join-g8a", 16, JOINPG, 17},
	/* 19 */ {"g8c", 16, PLAIN, 0},
};
#define NNODES ((int)(sizeof(nodes) / sizeof(nodes[0])))

struct rec {
	int idx;
	int pid;
	char msg[240]; /* "" = OK */
};

static int ready_pipe[2], result_pipe[2];
/* pids of the nodes this task forked (and, in the root, of all nodes) */
static pid_t pids[NNODES];
/* what this task expects of itself */
static int self_idx = -1;
static pid_t exp_pid, exp_ppid, exp_pgid, exp_sid;

static void send_rec(int fd, int idx, const char *fmt, ...)
{
	struct rec r;
	memset(&r, 0, sizeof(r));
	r.idx = idx;
	r.pid = (int)getpid();
	if (fmt) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(r.msg, sizeof(r.msg), fmt, ap);
		va_end(ap);
	}
	ssize_t n;
	do
		n = write(fd, &r, sizeof(r));
	while (n < 0 && errno == EINTR);
	if (n != (ssize_t)sizeof(r))
		_exit(3);
}

/* Reads one record, waiting up to `ms`; returns 0, or -1 on timeout/error. */
static int recv_rec(int fd, struct rec *r, int ms)
{
	return wl_read_wait(fd, r, sizeof(*r), ms) == (ssize_t)sizeof(*r) ? 0 : -1;
}

/* "" if the task is what it remembers being, else the mismatches. */
static void check_self(char *out, size_t len)
{
	pid_t pid = getpid(), ppid = getppid(), pgid = getpgid(0), sid = getsid(0);
	out[0] = 0;
	if (pid != exp_pid || ppid != exp_ppid || pgid != exp_pgid || sid != exp_sid)
		snprintf(out, len, "pid/ppid/pgid/sid %d/%d/%d/%d, expected %d/%d/%d/%d", pid, ppid,
			 pgid, sid, exp_pid, exp_ppid, exp_pgid, exp_sid);
}

static void run_node(int idx, pid_t parent_pgid, pid_t parent_sid);

/* Forks the children of node `me` (-1 = root) in table order. */
static void fork_children(int me, pid_t my_pgid, pid_t my_sid)
{
	for (int i = 0; i < NNODES; i++) {
		if (nodes[i].parent != me)
			continue;
		pid_t pid = fork();
		if (pid < 0) {
			if (me < 0)
				wl_fail("fork %s: %s", nodes[i].name, strerror(errno));
			send_rec(ready_pipe[1], i, "fork failed: %s", strerror(errno));
			_exit(1);
		}
		if (pid == 0)
			run_node(i, my_pgid, my_sid); /* never returns */
		pids[i] = pid;
		/* set the group from the parent side too (as shells do), so a
		 * later sibling can join it at once */
		if (nodes[i].kind == NEWPG)
			setpgid(pid, pid);
		else if (nodes[i].kind == JOINPG)
			setpgid(pid, pids[nodes[i].ref]);
	}
}

static void run_node(int idx, pid_t parent_pgid, pid_t parent_sid)
{
	const struct node *n = &nodes[idx];
	self_idx = idx;
	exp_pid = getpid();
	exp_ppid = getppid();
	switch (n->kind) {
	case PLAIN:
		exp_pgid = parent_pgid;
		exp_sid = parent_sid;
		break;
	case SETSID:
		if (setsid() < 0) {
			send_rec(ready_pipe[1], idx, "setsid: %s", strerror(errno));
			_exit(1);
		}
		exp_pgid = exp_sid = exp_pid;
		break;
	case NEWPG:
		if (setpgid(0, 0) < 0) {
			send_rec(ready_pipe[1], idx, "setpgid(0, 0): %s", strerror(errno));
			_exit(1);
		}
		exp_pgid = exp_pid;
		exp_sid = parent_sid;
		break;
	case JOINPG:
		/* the leader was forked (and put in its group) by our parent
		 * before us; pids[] is inherited from the parent */
		exp_pgid = pids[n->ref];
		if (setpgid(0, exp_pgid) < 0) {
			send_rec(ready_pipe[1], idx, "setpgid(0, %d): %s", exp_pgid, strerror(errno));
			_exit(1);
		}
		exp_sid = parent_sid;
		break;
	}
	memset(pids, 0, sizeof(pids));
	char msg[240];
	check_self(msg, sizeof(msg));
	if (msg[0]) {
		send_rec(ready_pipe[1], idx, "after setup: %s", msg);
		_exit(1);
	}
	fork_children(idx, exp_pgid, exp_sid);
	send_rec(ready_pipe[1], idx, NULL);

	sigset_t cur;
	sigprocmask(SIG_BLOCK, NULL, &cur);
	sigdelset(&cur, SIGTERM);
	while (!wl_term)
		sigsuspend(&cur);

	check_self(msg, sizeof(msg));
	if (msg[0])
		send_rec(result_pipe[1], idx, "%s", msg);
	else
		send_rec(result_pipe[1], idx, NULL);
	int bad = 0;
	for (int i = 0; i < NNODES; i++) {
		if (!pids[i])
			continue;
		int st;
		pid_t w;
		do
			w = waitpid(pids[i], &st, 0);
		while (w < 0 && errno == EINTR);
		if (w != pids[i] || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
			bad = 1;
	}
	_exit(bad ? 4 : 0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	wl_pipe(ready_pipe);
	wl_pipe(result_pipe);

	pid_t me = getpid();
	if (getsid(0) != me || getpgid(0) != me)
		wl_fail("root is not a session leader (sid %d, pgid %d)", getsid(0), getpgid(0));
	fork_children(-1, me, me);

	/* every node reports ready (or its setup failure) with its pid */
	pid_t all[NNODES];
	memset(all, 0, sizeof(all));
	for (int got = 0; got < NNODES; got++) {
		struct rec r;
		if (recv_rec(ready_pipe[0], &r, 10000) < 0)
			wl_fail("only %d of %d descendants reported ready", got, NNODES);
		if (r.idx < 0 || r.idx >= NNODES)
			wl_fail("bad ready record (idx %d)", r.idx);
		if (r.msg[0])
			wl_fail("%s (pid %d): %s", nodes[r.idx].name, r.pid, r.msg);
		all[r.idx] = r.pid;
	}
	/* the JOINPG nodes must be in their leader's group */
	for (int i = 0; i < NNODES; i++) {
		if (nodes[i].kind != JOINPG)
			continue;
		pid_t leader = all[nodes[i].ref];
		if (getpgid(all[i]) != leader)
			wl_fail("%s (pid %d) is in group %d, not in %s's group %d", nodes[i].name,
				all[i], getpgid(all[i]), nodes[nodes[i].ref].name, leader);
	}
	exp_pid = me;
	exp_ppid = getppid();
	exp_pgid = exp_sid = me;

	wl_ready();
	wl_wait_term();

	char msg[240], verdict[4096] = "";
	size_t vlen = 0;
#define ADD(...)                                                                               \
	do {                                                                                   \
		if (vlen < sizeof(verdict))                                                    \
			vlen += (size_t)snprintf(verdict + vlen, sizeof(verdict) - vlen,       \
						 __VA_ARGS__);                                 \
	} while (0)
	check_self(msg, sizeof(msg));
	if (msg[0])
		ADD("root (pid %d): %s; ", me, msg);
	for (int i = 0; i < NNODES; i++)
		if (kill(all[i], SIGTERM) < 0)
			ADD("kill(%s pid %d): %s; ", nodes[i].name, all[i], strerror(errno));
	int seen[NNODES];
	memset(seen, 0, sizeof(seen));
	for (int got = 0; got < NNODES; got++) {
		struct rec r;
		if (recv_rec(result_pipe[0], &r, 10000) < 0) {
			ADD("no result from:");
			for (int i = 0; i < NNODES; i++)
				if (!seen[i])
					ADD(" %s (pid %d)", nodes[i].name, all[i]);
			ADD("; ");
			break;
		}
		if (r.idx < 0 || r.idx >= NNODES) {
			ADD("bad result record; ");
			continue;
		}
		seen[r.idx] = 1;
		if (r.msg[0])
			ADD("%s (pid %d, reported by pid %d): %s; ", nodes[r.idx].name, all[r.idx],
			    r.pid, r.msg);
	}
	for (int i = 0; i < NNODES; i++) {
		if (nodes[i].parent != -1)
			continue;
		int st;
		pid_t w;
		do
			w = waitpid(all[i], &st, 0);
		while (w < 0 && errno == EINTR);
		if (w != all[i])
			ADD("waitpid(%s pid %d): %s; ", nodes[i].name, all[i], strerror(errno));
		else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
			ADD("%s (pid %d) ended with status 0x%x; ", nodes[i].name, all[i], st);
	}
	if (vlen)
		wl_fail("%s", verdict);
	wl_pass();
}
