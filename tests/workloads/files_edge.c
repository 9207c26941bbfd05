/* files_edge.c - files in unusual states (issue 13):
 *   fd 3: a file opened read-only, then deleted and a directory made with
 *         its name;
 *   fd 4: a deleted file with holes (data at 0, 1 MiB and 3 MiB), size
 *         4 MiB;
 *   fd 5: a FIFO opened read-write and deleted, with bytes in it;
 *   fd 6: a unix datagram socket bound to a path that was deleted since
 *         (the path must stay absent);
 *   fd 7: a regular file whose modification time is in the past (the
 *         restore must not touch it);
 *   fd 8: a unix datagram socket bound to a path whose file was then
 *         replaced by a regular file (which must stay, with its data);
 *   fd 9: a listening unix stream socket whose path is a FIFO now (the
 *         socket file removed, a FIFO made there: it must stay a FIFO, the
 *         socket keep its name and listen).
 * After the restore each is checked through the fd.
 */
#include "wl.h"

#include <sys/stat.h>
#include <sys/un.h>
#include <utime.h>

static char path_a[4096], path_sparse[4096], path_fifo[4096], path_sock[4096], path_old[4096],
	path_sock2[4096], path_sock3[4096];

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();
	snprintf(path_a, sizeof(path_a), "%s/a", wl_dir);
	snprintf(path_sparse, sizeof(path_sparse), "%s/sparse", wl_dir);
	snprintf(path_fifo, sizeof(path_fifo), "%s/fifo", wl_dir);
	snprintf(path_sock, sizeof(path_sock), "%s/sock", wl_dir);
	snprintf(path_old, sizeof(path_old), "%s/old", wl_dir);
	snprintf(path_sock2, sizeof(path_sock2), "%s/sock2", wl_dir);
	snprintf(path_sock3, sizeof(path_sock3), "%s/sock3", wl_dir);

	int a = open(path_a, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (a < 0 || write(a, "first", 5) != 5)
		wl_fail("create a: %s", strerror(errno));
	close(a);
	a = open(path_a, O_RDONLY);
	if (a != 3)
		wl_fail("a is fd %d", a);
	if (unlink(path_a) || mkdir(path_a, 0700))
		wl_fail("replace a by a directory: %s", strerror(errno));

	int s = open(path_sparse, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (s != 4)
		wl_fail("sparse is fd %d", s);
	const off_t at[] = {0, 1 << 20, 3 << 20};
	for (int i = 0; i < 3; i++)
		if (pwrite(s, "chunk", 5, at[i]) != 5)
			wl_fail("pwrite: %s", strerror(errno));
	if (ftruncate(s, 4 << 20) || unlink(path_sparse))
		wl_fail("sparse: %s", strerror(errno));

	if (mkfifo(path_fifo, 0600))
		wl_fail("mkfifo: %s", strerror(errno));
	int f = open(path_fifo, O_RDWR);
	if (f != 5 || write(f, "in the fifo", 11) != 11 || unlink(path_fifo))
		wl_fail("fifo: fd %d, %s", f, strerror(errno));

	int u = socket(AF_UNIX, SOCK_DGRAM, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	if (strlen(path_sock) >= sizeof(sa.sun_path))
		wl_skip("state directory path too long for a unix socket");
	memcpy(sa.sun_path, path_sock, strlen(path_sock) + 1);
	if (u != 6 || bind(u, (struct sockaddr *)&sa, sizeof(sa)) || unlink(path_sock))
		wl_fail("unix socket: fd %d, %s", u, strerror(errno));

	int o = open(path_old, O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (o != 7 || write(o, "old", 3) != 3)
		wl_fail("old: fd %d", o);
	struct timespec ts[2] = {{1000000000, 123}, {1000000000, 456}};
	if (futimens(o, ts))
		wl_fail("futimens: %s", strerror(errno));

	int u2 = socket(AF_UNIX, SOCK_DGRAM, 0);
	struct sockaddr_un sa2 = {.sun_family = AF_UNIX};
	if (strlen(path_sock2) >= sizeof(sa2.sun_path))
		wl_skip("state directory path too long for a unix socket");
	memcpy(sa2.sun_path, path_sock2, strlen(path_sock2) + 1);
	if (u2 != 8 || bind(u2, (struct sockaddr *)&sa2, sizeof(sa2)) || unlink(path_sock2))
		wl_fail("unix socket 2: fd %d, %s", u2, strerror(errno));
	int r = open(path_sock2, O_WRONLY | O_CREAT | O_EXCL, 0600);
	if (r < 0 || write(r, "replacement", 11) != 11)
		wl_fail("replace sock2: %s", strerror(errno));
	close(r);

	int u3 = socket(AF_UNIX, SOCK_STREAM, 0);
	struct sockaddr_un sa3 = {.sun_family = AF_UNIX};
	if (strlen(path_sock3) >= sizeof(sa3.sun_path))
		wl_skip("state directory path too long for a unix socket");
	memcpy(sa3.sun_path, path_sock3, strlen(path_sock3) + 1);
	if (u3 != 9 || bind(u3, (struct sockaddr *)&sa3, sizeof(sa3)) || listen(u3, 4) ||
	    unlink(path_sock3) || mkfifo(path_sock3, 0640))
		wl_fail("unix socket 3: fd %d, %s", u3, strerror(errno));

	wl_ready();
	wl_wait_term();
	wl_after();

	char msg[2048] = "";
	size_t m = 0;
#define BAD(...) (m += (size_t)snprintf(msg + m, sizeof(msg) - m, __VA_ARGS__))
	char buf[32] = "";
	if (pread(3, buf, 5, 0) != 5 || memcmp(buf, "first", 5))
		BAD("fd 3 reads [%.5s]; ", buf);
	struct stat st;
	if (stat(path_a, &st) || !S_ISDIR(st.st_mode))
		BAD("%s is no longer a directory; ", path_a);
	if (fstat(4, &st) || st.st_size != 4 << 20)
		BAD("sparse size %lld; ", (long long)st.st_size);
	for (int i = 0; i < 3; i++) {
		memset(buf, 0, sizeof(buf));
		if (pread(4, buf, 5, at[i]) != 5 || memcmp(buf, "chunk", 5))
			BAD("sparse data at %lld: [%.5s]; ", (long long)at[i], buf);
	}
	if (pread(4, buf, 1, 2 << 20) != 1 || buf[0] != 0)
		BAD("sparse hole not zero; ");
	if (fstat(5, &st) || !S_ISFIFO(st.st_mode))
		BAD("fd 5 is not a FIFO; ");
	memset(buf, 0, sizeof(buf));
	if (read(5, buf, 11) != 11 || memcmp(buf, "in the fifo", 11))
		BAD("fifo data [%s]; ", buf);
	if (access(path_fifo, F_OK) == 0)
		BAD("the deleted FIFO is back at its path; ");
	if (access(path_sock, F_OK) == 0)
		BAD("the deleted socket file is back at its path; ");
	struct sockaddr_un got;
	socklen_t gl = sizeof(got);
	if (getsockname(6, (struct sockaddr *)&got, &gl) || strcmp(got.sun_path, path_sock))
		BAD("socket name [%s]; ", got.sun_path);
	gl = sizeof(got);
	if (getsockname(8, (struct sockaddr *)&got, &gl) || strcmp(got.sun_path, path_sock2))
		BAD("socket 2 name [%s]; ", got.sun_path);
	{
		char rb[16] = "";
		int r2 = open(path_sock2, O_RDONLY);
		if (r2 < 0 || read(r2, rb, 11) != 11 || memcmp(rb, "replacement", 11))
			BAD("the file that replaced socket 2's is gone or changed; ");
		if (r2 >= 0)
			close(r2);
	}
	if (stat(path_sock3, &st) || !S_ISFIFO(st.st_mode) || (st.st_mode & 0777) != 0640)
		BAD("the FIFO made where socket 3 was bound is gone or changed; ");
	gl = sizeof(got);
	if (getsockname(9, (struct sockaddr *)&got, &gl) || strcmp(got.sun_path, path_sock3))
		BAD("socket 3 name [%s]; ", got.sun_path);
	{
		int acc = 0;
		socklen_t al = sizeof(acc);
		if (getsockopt(9, SOL_SOCKET, SO_ACCEPTCONN, &acc, &al) || !acc)
			BAD("socket 3 does not listen; ");
	}
	if (fstat(7, &st) || st.st_mtim.tv_sec != 1000000000 || st.st_mtim.tv_nsec != 456)
		BAD("old file mtime %lld.%09ld; ", (long long)st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
	if (m)
		wl_fail("%s", msg);
	wl_pass();
}
