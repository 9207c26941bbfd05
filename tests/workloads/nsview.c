/* nsview PID - what a task's uts, ipc, net and time namespaces look like
 * from inside (a tool of the harness, no protocol).
 *
 * Enters the namespaces of PID with setns(2) and prints, one item a line:
 * the hostname and domainname (uname), every network interface with its
 * flags (up, loopback, running), MTU and hardware address, its IPv4/IPv6
 * addresses (also with their prefix length), the routes of the namespace
 * (/proc/net/route and /proc/net/ipv6_route, sorted), a few net sysctls
 * (forwarding, somaxconn, the local port range), the number of
 * SysV shared memory segments, semaphore sets and message queues
 * (/proc/sysvipc/{shm,sem,msg}, which show the reader's ipc namespace), and the
 * offsets of CLOCK_MONOTONIC and CLOCK_BOOTTIME in whole seconds, measured
 * as the difference of clock_gettime before and after entering the time
 * namespace. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <mqueue.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif

static void enter(const char *pid, const char *ns, int type)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%s/ns/%s", pid, ns);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "nsview: open %s: %s\n", path, strerror(errno));
		exit(1);
	}
	if (setns(fd, type) < 0) {
		fprintf(stderr, "nsview: setns %s: %s\n", path, strerror(errno));
		exit(1);
	}
	close(fd);
}

static int count_lines(const char *path)
{
	FILE *f = fopen(path, "re");
	if (!f)
		return -1;
	int n = 0, c, last = '\n';
	while ((c = fgetc(f)) != EOF) {
		if (c == '\n')
			n++;
		last = c;
	}
	if (last != '\n')
		n++;
	fclose(f);
	return n > 0 ? n - 1 : 0; /* without the header */
}

/* FNV-1a over a buffer, to compare contents before and after. */
static unsigned long fnv(const unsigned char *p, size_t n, unsigned long h)
{
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 1099511628211UL;
	return h;
}

/* One line per SysV object with what a program can observe of it. */
static void sysv_details(void)
{
	struct shm_info si;
	int max = shmctl(0, SHM_INFO, (struct shmid_ds *)&si);
	for (int i = 0; i <= max; i++) {
		struct shmid_ds ds;
		int id = shmctl(i, SHM_STAT, &ds);
		if (id < 0)
			continue;
		unsigned long sum = 1469598103934665603UL;
		void *p = shmat(id, NULL, SHM_RDONLY);
		if (p != (void *)-1) {
			sum = fnv(p, ds.shm_segsz, sum);
			shmdt(p);
		}
		printf("shm id %d key %d size %zu mode %o uid %u gid %u sum %lx\n", id,
		       ds.shm_perm.__key, ds.shm_segsz, ds.shm_perm.mode & 0777, ds.shm_perm.uid,
		       ds.shm_perm.gid, sum);
	}
	struct seminfo smi;
	max = semctl(0, 0, SEM_INFO, &smi);
	for (int i = 0; i <= max; i++) {
		struct semid_ds ds;
		int id = semctl(i, 0, SEM_STAT, &ds);
		if (id < 0)
			continue;
		printf("sem id %d key %d nsems %lu mode %o values", id, ds.sem_perm.__key,
		       (unsigned long)ds.sem_nsems, ds.sem_perm.mode & 0777);
		for (unsigned long k = 0; k < ds.sem_nsems; k++)
			printf(" %d", semctl(id, (int)k, GETVAL));
		printf("\n");
	}
	struct msginfo mi;
	max = msgctl(0, MSG_INFO, (struct msqid_ds *)&mi);
	for (int i = 0; i <= max; i++) {
		struct msqid_ds ds;
		int id = msgctl(i, MSG_STAT, &ds);
		if (id < 0)
			continue;
		unsigned long sum = 1469598103934665603UL;
		static struct {
			long mtype;
			unsigned char text[65536];
		} m;
		for (unsigned long k = 0; k < ds.msg_qnum; k++) {
			ssize_t n = msgrcv(id, &m, sizeof(m.text), (long)k,
					   IPC_NOWAIT | MSG_COPY | MSG_NOERROR);
			if (n < 0)
				break;
			sum = fnv((unsigned char *)&m.mtype, sizeof(m.mtype), sum);
			sum = fnv(m.text, (size_t)n, sum);
		}
		printf("msg id %d key %d mode %o qnum %lu qbytes %lu sum %lx\n", id,
		       ds.msg_perm.__key, ds.msg_perm.mode & 0777, (unsigned long)ds.msg_qnum,
		       (unsigned long)ds.msg_qbytes, sum);
	}
}

/* One line per POSIX message queue of the ipc namespace: mounts its mqueue
 * filesystem in a private mount namespace to list them; the messages are
 * received and sent back in the same order to sum them. */
static void pmq_details(void)
{
	if (unshare(CLONE_NEWNS) < 0 || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) < 0 ||
	    mount("mqueue", "/tmp", "mqueue", 0, NULL) < 0) {
		printf("pmq unreadable: %s\n", strerror(errno));
		return;
	}
	DIR *d = opendir("/tmp");
	if (!d)
		return;
	struct dirent *e;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		char name[300];
		snprintf(name, sizeof(name), "/%s", e->d_name);
		mqd_t q = mq_open(name, O_RDWR | O_NONBLOCK);
		struct mq_attr a;
		if (q == (mqd_t)-1 || mq_getattr(q, &a) < 0) {
			printf("pmq %s unreadable\n", name);
			continue;
		}
		/* the copy changes the queue's times: they are put back after
		 * (the harness compares them before the dump and after the
		 * restore) */
		struct stat was;
		char path[300];
		snprintf(path, sizeof(path), "/tmp/%s", e->d_name);
		stat(path, &was);
		unsigned long sum = 1469598103934665603UL;
		static char buf[1 << 16];
		char msgs[64][1024];
		unsigned prios[64], lens[64];
		long n = a.mq_curmsgs < 64 ? a.mq_curmsgs : 64;
		for (long i = 0; i < n; i++) {
			ssize_t got = mq_receive(q, buf, sizeof(buf), &prios[i]);
			if (got < 0)
				break;
			lens[i] = (unsigned)(got < 1024 ? got : 1024);
			memcpy(msgs[i], buf, lens[i]);
			sum = fnv((unsigned char *)buf, (size_t)got, sum);
			sum = fnv((unsigned char *)&prios[i], sizeof(prios[i]), sum);
		}
		for (long i = 0; i < n; i++)
			mq_send(q, msgs[i], lens[i], prios[i]);
		struct timespec times[2] = { was.st_atim, was.st_mtim };
		utimensat(AT_FDCWD, path, times, 0);
		struct stat st;
		stat(path, &st);
		printf("pmq %s mode %o uid %u maxmsg %ld msgsize %ld curmsgs %ld sum %lx\n", name,
		       st.st_mode & 0777, st.st_uid, a.mq_maxmsg, a.mq_msgsize, a.mq_curmsgs, sum);
		mq_close(q);
	}
	closedir(d);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Prints the collected lines sorted (the kernel's order of equal routes is
 * not part of the state). */
static void print_sorted(char **lines, int n)
{
	qsort(lines, (size_t)n, sizeof(*lines), cmp_str);
	for (int i = 0; i < n; i++) {
		printf("%s\n", lines[i]);
		free(lines[i]);
	}
}

static int prefix_of(const unsigned char *m, int len)
{
	int n = 0;
	for (int i = 0; i < len; i++)
		n += __builtin_popcount(m[i]);
	return n;
}

/* The routes of the namespace, in the words of `ip route`. */
static void routes(void)
{
	char *lines[512];
	int n = 0;
	char l[512];
	FILE *f = fopen("/proc/net/route", "re");
	if (f) {
		if (!fgets(l, sizeof(l), f))
			l[0] = 0;
		while (n < 512 && fgets(l, sizeof(l), f)) {
			char dev[64];
			unsigned int dst, gw, flags, refcnt, use, metric, mask;
			if (sscanf(l, "%63s %x %x %x %u %u %u %x", dev, &dst, &gw, &flags, &refcnt, &use,
				   &metric, &mask) != 8)
				continue;
			char d[INET_ADDRSTRLEN], g[INET_ADDRSTRLEN];
			inet_ntop(AF_INET, &dst, d, sizeof(d));
			inet_ntop(AF_INET, &gw, g, sizeof(g));
			if (asprintf(&lines[n], "route4 %s/%d via %s dev %s metric %u flags %x", d,
				     prefix_of((unsigned char *)&mask, 4), g, dev, metric, flags) > 0)
				n++;
		}
		fclose(f);
	}
	f = fopen("/proc/net/ipv6_route", "re");
	if (f) {
		while (n < 512 && fgets(l, sizeof(l), f)) {
			char dst[33], src[33], gw[33], dev[64];
			unsigned int dlen, slen, metric, refcnt, use, flags;
			if (sscanf(l, "%32s %x %32s %x %32s %x %x %x %x %63s", dst, &dlen, src, &slen, gw,
				   &metric, &refcnt, &use, &flags, dev) != 10)
				continue;
			unsigned char a[16], b[16];
			for (int i = 0; i < 16; i++) {
				sscanf(dst + 2 * i, "%2hhx", &a[i]);
				sscanf(gw + 2 * i, "%2hhx", &b[i]);
			}
			char d[INET6_ADDRSTRLEN], g[INET6_ADDRSTRLEN];
			inet_ntop(AF_INET6, a, d, sizeof(d));
			inet_ntop(AF_INET6, b, g, sizeof(g));
			if (asprintf(&lines[n], "route6 %s/%u via %s dev %s metric %u flags %x", d, dlen,
				     g, dev, metric, flags) > 0)
				n++;
		}
		fclose(f);
	}
	print_sorted(lines, n);
}

static void sysctl_line(const char *name)
{
	char path[128], v[128] = "";
	snprintf(path, sizeof(path), "/proc/sys/%s", name);
	for (char *p = path + strlen("/proc/sys/"); *p; p++)
		if (*p == '.')
			*p = '/';
	FILE *f = fopen(path, "re");
	if (f) {
		if (!fgets(v, sizeof(v), f))
			v[0] = 0;
		fclose(f);
	}
	v[strcspn(v, "\n")] = 0;
	for (char *p = v; *p; p++)
		if (*p == '\t')
			*p = ' ';
	printf("sysctl %s %s\n", name, f ? v : "(absent)");
}

static double now(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: nsview PID\n");
		return 2;
	}
	const char *pid = argv[1];
	enter(pid, "uts", CLONE_NEWUTS);
	enter(pid, "ipc", CLONE_NEWIPC);
	enter(pid, "net", CLONE_NEWNET);

	struct utsname u;
	if (uname(&u) < 0) {
		perror("nsview: uname");
		return 1;
	}
	printf("hostname %s\n", u.nodename);
	printf("domainname %s\n", u.domainname);

	struct if_nameindex *ifs = if_nameindex();
	if (!ifs) {
		perror("nsview: if_nameindex");
		return 1;
	}
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	for (struct if_nameindex *i = ifs; i->if_index; i++) {
		struct ifreq ifr;
		memset(&ifr, 0, sizeof(ifr));
		snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", i->if_name);
		int fl = s >= 0 && ioctl(s, SIOCGIFFLAGS, &ifr) == 0 ? ifr.ifr_flags : -1;
		int mtu = s >= 0 && ioctl(s, SIOCGIFMTU, &ifr) == 0 ? ifr.ifr_mtu : -1;
		printf("if %s index %u %s%s%s mtu %d\n", i->if_name, i->if_index,
		       fl >= 0 && (fl & IFF_UP) ? "up" : "down",
		       fl >= 0 && (fl & IFF_LOOPBACK) ? " loopback" : "",
		       fl >= 0 && (fl & IFF_RUNNING) ? " running" : "", mtu);
		if (s >= 0 && ioctl(s, SIOCGIFHWADDR, &ifr) == 0) {
			unsigned char *m = (unsigned char *)ifr.ifr_hwaddr.sa_data;
			printf("hwaddr %s %02x:%02x:%02x:%02x:%02x:%02x\n", i->if_name, m[0], m[1],
			       m[2], m[3], m[4], m[5]);
		}
	}
	if (s >= 0)
		close(s);
	if_freenameindex(ifs);
	struct ifaddrs *ifa;
	if (getifaddrs(&ifa) == 0) {
		for (struct ifaddrs *a = ifa; a; a = a->ifa_next) {
			if (!a->ifa_addr)
				continue;
			char buf[INET6_ADDRSTRLEN] = "";
			int fam = a->ifa_addr->sa_family, plen = -1;
			if (fam == AF_INET) {
				inet_ntop(fam, &((struct sockaddr_in *)a->ifa_addr)->sin_addr, buf,
					  sizeof(buf));
				if (a->ifa_netmask)
					plen = prefix_of((unsigned char *)&((struct sockaddr_in *)
										a->ifa_netmask)
								 ->sin_addr,
							 4);
			} else if (fam == AF_INET6) {
				inet_ntop(fam, &((struct sockaddr_in6 *)a->ifa_addr)->sin6_addr, buf,
					  sizeof(buf));
				if (a->ifa_netmask)
					plen = prefix_of((unsigned char *)&((struct sockaddr_in6 *)
										a->ifa_netmask)
								 ->sin6_addr,
							 16);
			} else
				continue;
			printf("addr %s %s\n", a->ifa_name, buf);
			printf("inet %s %s/%d\n", a->ifa_name, buf, plen);
		}
		freeifaddrs(ifa);
	}

	routes();
	sysctl_line("net.ipv4.ip_forward");
	sysctl_line("net.ipv6.conf.all.forwarding");
	sysctl_line("net.core.somaxconn");
	sysctl_line("net.ipv4.ip_local_port_range");

	printf("sysvipc shm %d sem %d msg %d\n", count_lines("/proc/sysvipc/shm"),
	       count_lines("/proc/sysvipc/sem"), count_lines("/proc/sysvipc/msg"));
	sysv_details();
	pmq_details();

	double mono = now(CLOCK_MONOTONIC), boot = now(CLOCK_BOOTTIME);
	enter(pid, "time", CLONE_NEWTIME);
	double mono2 = now(CLOCK_MONOTONIC), boot2 = now(CLOCK_BOOTTIME);
	printf("offset monotonic %.0f boottime %.0f\n", mono2 - mono, boot2 - boot);
	return 0;
}
