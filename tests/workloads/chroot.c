/* chroot STATEDIR - a chrooted task comes back chrooted (issue 16, item 5).
 *
 * The root makes STATEDIR/jail (with inner/ and a file "data") and forks
 * a child that chroots there, enters /inner, opens /data (fd 9, at offset
 * 2), maps it, and holds a pipe to its parent. (The harness compares the
 * child's root and cwd links from outside.) After SIGTERM the parent tells
 * the child, which checks from inside: its cwd is /inner, "/" is the jail ("/.." is "/", and /data is fd 9's file), fd 9
 * reads on from offset 2, the mapping shows the file, and a listener it
 * bound to /l.sock in the jail keeps that name, its accepted connection
 * carries the data queued and a new client connects. */
#include "wl.h"

#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>

#define DATA_FD 9

static char jail[4096];

static void child(int rd, int wr)
{
	if (chroot(jail) < 0 || chdir("/inner") < 0)
		_exit(10);
	int f = open("/data", O_RDONLY);
	if (f < 0 || dup2(f, DATA_FD) != DATA_FD)
		_exit(11);
	close(f);
	char two[2];
	if (read(DATA_FD, two, 2) != 2)
		_exit(12);
	char *map = mmap(NULL, 4096, PROT_READ, MAP_PRIVATE, DATA_FD, 0);
	if (map == MAP_FAILED)
		_exit(13);
	/* a listener bound in the jail, and a client connected to it */
	struct sockaddr_un sa = {.sun_family = AF_UNIX, .sun_path = "/l.sock"};
	int l = socket(AF_UNIX, SOCK_STREAM, 0), c = socket(AF_UNIX, SOCK_STREAM, 0);
	if (l < 0 || c < 0 || bind(l, (struct sockaddr *)&sa, sizeof(sa)) || listen(l, 4) ||
	    connect(c, (struct sockaddr *)&sa, sizeof(sa)))
		_exit(16);
	int a = accept(l, NULL, NULL);
	if (a < 0 || write(c, "ping", 4) != 4)
		_exit(17);
	if (write(wr, "r", 1) != 1)
		_exit(14);
	char go;
	if (read(rd, &go, 1) != 1)
		_exit(15);

	char cwd[256];
	if (!getcwd(cwd, sizeof(cwd)) || strcmp(cwd, "/inner"))
		_exit(20);
	struct stat r, up, d, fd3;
	if (stat("/", &r) || stat("/..", &up) || r.st_ino != up.st_ino || r.st_dev != up.st_dev)
		_exit(21);
	if (stat("/data", &d) || fstat(DATA_FD, &fd3) || d.st_ino != fd3.st_ino)
		_exit(22);
	char rest[16] = "";
	if (read(DATA_FD, rest, 5) != 5 || memcmp(rest, "ilfil", 5))
		_exit(23);
	if (memcmp(map, "jailfile", 8))
		_exit(24);
	struct sockaddr_un got;
	socklen_t gl = sizeof(got);
	char ping[4];
	if (getsockname(l, (struct sockaddr *)&got, &gl) || strcmp(got.sun_path, "/l.sock"))
		_exit(25);
	if (read(a, ping, 4) != 4 || memcmp(ping, "ping", 4))
		_exit(26);
	int c2 = socket(AF_UNIX, SOCK_STREAM, 0);
	if (c2 < 0 || connect(c2, (struct sockaddr *)&sa, sizeof(sa)) || accept(l, NULL, NULL) < 0)
		_exit(27);
	_exit(0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	snprintf(jail, sizeof(jail), "%s/jail", wl_dir);
	char path[4200];
	if (mkdir(jail, 0755) && errno != EEXIST)
		wl_fail("mkdir %s: %s", jail, strerror(errno));
	snprintf(path, sizeof(path), "%s/inner", jail);
	if (mkdir(path, 0755) && errno != EEXIST)
		wl_fail("mkdir %s: %s", path, strerror(errno));
	snprintf(path, sizeof(path), "%s/data", jail);
	int f = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (f < 0 || write(f, "jailfile", 8) != 8)
		wl_fail("write %s: %s", path, strerror(errno));
	close(f);

	int down[2], up[2];
	wl_pipe(down);
	wl_pipe(up);
	pid_t c = wl_fork();
	if (c == 0) {
		close(down[1]);
		close(up[0]);
		child(down[0], up[1]);
	}
	close(down[0]);
	close(up[1]);
	char r;
	if (wl_read_wait(up[0], &r, 1, 10000) != 1)
		wl_fail("the child did not chroot (status of it unknown)");

	wl_ready();
	wl_wait_term();

	/* the listener's file is in the jail */
	struct stat ls;
	snprintf(path, sizeof(path), "%s/l.sock", jail);
	if (stat(path, &ls) || !S_ISSOCK(ls.st_mode))
		wl_fail("%s is not the listener's socket file", path);
	if (write(down[1], "g", 1) != 1)
		wl_fail("write to the child: %s", strerror(errno));
	int st = wl_waitpid(c, "waitpid");
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		wl_fail("the child's check failed (status %#x: 20 cwd, 21 root, 22 /data, 23 fd 9's "
			"offset, 24 the mapping, 25 the listener's name, 26 the connection, 27 a new "
			"connection)",
			st);
	wl_pass();
}
