/* nsinit - run a program as pid 1 of its own pid, mnt, uts, ipc, net and
 * time namespaces (the `ns` flavor of the suite).
 *
 * usage: nsinit [-U|-S|-Z] HOSTNAME MONOTONIC_S BOOTTIME_S PROGRAM [ARGS...]
 *
 * With -U (the `uns` flavor) it also unshares a user namespace, which then
 * owns the other six, with every id mapped to itself (written by a short
 * lived child that stayed in the parent user namespace, as the kernel
 * wants the writer to have rights there). With -S the same, with the maps
 * CRIU's own suite uses for its uns flavor: uid 0 inside is 20000 outside
 * (0 20000 20000, 100000 200000 50000; gids 0 400000 50000, 50000 500000
 * 100000), so root inside is not root outside. With -Z as CRIU's suite's
 * uns flavor makes its tests: uid 0 inside is 100000 outside (0 100000
 * 100000, 100000 200000 50000; gids as -S), and no time namespace (the
 * clock offsets are left alone). With -R as `unshare -r` does for a user
 * without privileges: it unshares the user namespace alone first and maps
 * its own uid and gid to 0 (setgroups denied), then the others but the
 * net namespace (the unprivileged cases); with -N the same and a net
 * namespace too.
 *
 * Like `unshare -p -m -u -i -n -T -f --propagation private` followed by
 * `hostname HOSTNAME; ip link set lo up`: unshares the six namespaces, makes
 * every mount private, sets the hostname, brings lo up (SIOCSIFFLAGS on a
 * socket it closes again), writes the time offsets of the new time
 * namespace (CLOCK_MONOTONIC and CLOCK_BOOTTIME, seconds), forks and
 * execs PROGRAM in the child, the init of the new pid namespace, in a
 * session of its own (setsid, as the protocol wants). It keeps no
 * fd besides 0-2, waits for the child and ends the way it did (the same exit
 * code, or killed by the same signal), as `unshare -f` does. Started through
 * `launch`, so it is a session leader; it is the root the harness dumps. */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <fcntl.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

static void die(const char *what)
{
	fprintf(stderr, "nsinit: %s: %s\n", what, strerror(errno));
	exit(127);
}

static void lo_up(void)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		die("socket");
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0)
		die("SIOCGIFFLAGS lo");
	ifr.ifr_flags |= IFF_UP;
	if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0)
		die("SIOCSIFFLAGS lo");
	close(s);
}

static void time_offsets(const char *mono, const char *boot)
{
	char buf[128];
	int n = snprintf(buf, sizeof(buf), "monotonic %s 0\nboottime %s 0\n", mono, boot);
	int fd = open("/proc/self/timens_offsets", O_WRONLY | O_CLOEXEC);
	if (fd < 0)
		die("open /proc/self/timens_offsets");
	if (write(fd, buf, (size_t)n) != n)
		die("write /proc/self/timens_offsets");
	close(fd);
}

/* Forks a child that waits on a pipe until the caller has unshared its
 * user namespace, writes the caller's id maps and exits; returns the
 * write end of the pipe and the child's pid through `child`. */
static int map_writer(pid_t *child, int shifted, int zdtm)
{
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		die("pipe");
	pid_t parent = getpid();
	*child = fork();
	if (*child < 0)
		die("fork");
	if (*child == 0) {
		char c;
		close(p[1]);
		if (read(p[0], &c, 1) != 1)
			_exit(1);
		const char *same = "0 0 4294967295\n";
		/* CRIU's suite's uns maps: root inside is not root outside */
		const char *uid_shifted = zdtm ? "0 100000 100000\n100000 200000 50000\n"
					       : "0 20000 20000\n100000 200000 50000\n";
		const char *maps[] = { shifted ? uid_shifted : same,
				       shifted ? "0 400000 50000\n50000 500000 100000\n" : same };
		const char *files[] = { "uid_map", "gid_map" };
		for (int i = 0; i < 2; i++) {
			char path[64];
			snprintf(path, sizeof(path), "/proc/%d/%s", (int)parent, files[i]);
			int fd = open(path, O_WRONLY | O_CLOEXEC);
			ssize_t len = (ssize_t)strlen(maps[i]);
			if (fd < 0 || write(fd, maps[i], (size_t)len) != len) {
				fprintf(stderr, "nsinit: write %s: %s\n", path, strerror(errno));
				_exit(1);
			}
			close(fd);
		}
		_exit(0);
	}
	close(p[0]);
	return p[1];
}

static void write_self(const char *file, const char *text)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/self/%s", file);
	int fd = open(path, O_WRONLY | O_CLOEXEC);
	ssize_t len = (ssize_t)strlen(text);
	if (fd < 0 || write(fd, text, (size_t)len) != len)
		die(path);
	close(fd);
}

/* unshare -r: a user namespace of its own, its uid and gid root there */
static void own_userns(void)
{
	char uid[64], gid[64];
	snprintf(uid, sizeof(uid), "0 %u 1\n", (unsigned)geteuid());
	snprintf(gid, sizeof(gid), "0 %u 1\n", (unsigned)getegid());
	if (unshare(CLONE_NEWUSER) < 0)
		die("unshare(CLONE_NEWUSER)");
	write_self("setgroups", "deny");
	write_self("uid_map", uid);
	write_self("gid_map", gid);
}

int main(int argc, char **argv)
{
	int zdtm = argc > 1 && strcmp(argv[1], "-Z") == 0;
	int shifted = zdtm || (argc > 1 && strcmp(argv[1], "-S") == 0);
	int user = shifted || (argc > 1 && strcmp(argv[1], "-U") == 0);
	int with_net = argc > 1 && strcmp(argv[1], "-N") == 0;
	int rootless = with_net || (argc > 1 && strcmp(argv[1], "-R") == 0);
	if (user || rootless) {
		argv++;
		argc--;
	}
	if (argc < 5) {
		fprintf(stderr, "usage: nsinit HOSTNAME MONOTONIC_S BOOTTIME_S PROGRAM [ARGS...]\n");
		return 2;
	}
	int flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS;
	if (!zdtm)
		flags |= CLONE_NEWTIME;
	pid_t writer = -1;
	int go = -1;
	if (user) {
		flags |= CLONE_NEWUSER;
		go = map_writer(&writer, shifted, zdtm);
	}
	if (rootless) {
		own_userns();
		if (!with_net)
			flags &= ~CLONE_NEWNET;
	}
	if (unshare(flags) < 0)
		die("unshare");
	if (user) {
		int st;
		if (write(go, "x", 1) != 1)
			die("wake the map writer");
		close(go);
		if (waitpid(writer, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
			fprintf(stderr, "nsinit: the id maps were not written\n");
			exit(127);
		}
		/* become root of the namespace: with shifted maps crest's root
		 * is unmapped here */
		if (shifted && (setgroups(0, NULL) < 0 || setresgid(0, 0, 0) < 0 || setresuid(0, 0, 0) < 0))
			die("become the namespace's root");
		/* (an id change made it non-dumpable: /proc/self would be root's) */
		if (shifted && prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
			die("PR_SET_DUMPABLE");
	}
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0)
		die("make / private");
	if (sethostname(argv[1], strlen(argv[1])) < 0)
		die("sethostname");
	if (flags & CLONE_NEWNET)
		lo_up();
	if (!zdtm)
		time_offsets(argv[2], argv[3]);
	pid_t child = fork();
	if (child < 0)
		die("fork");
	if (child == 0) {
		/* a new session, as `launch` gives a workload on the host */
		if (setsid() < 0) {
			fprintf(stderr, "nsinit: setsid: %s\n", strerror(errno));
			_exit(127);
		}
		execvp(argv[4], argv + 4);
		fprintf(stderr, "nsinit: exec %s: %s\n", argv[4], strerror(errno));
		_exit(127);
	}
	int st;
	pid_t r;
	do
		r = waitpid(child, &st, 0);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		die("waitpid");
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	int sig = WTERMSIG(st);
	signal(sig, SIG_DFL);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, sig);
	sigprocmask(SIG_UNBLOCK, &set, NULL);
	kill(getpid(), sig);
	return 128 + sig;
}
