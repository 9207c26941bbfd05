/* deleted_maps STATEDIR - files deleted while mapped come back mapped,
 * and shared as they were (issue 16, item 6).
 *
 * The root maps, then unlinks: a POSIX shared memory object (MAP_SHARED,
 * pattern S), a POSIX semaphore (as Python's multiprocessing makes every
 * Lock and Value: sem_open, then sem_unlink; value 3), and a file of its
 * state directory that it also keeps open, mapped twice (MAP_PRIVATE with
 * one page written since, and MAP_SHARED). It then forks a child, which
 * inherits every mapping, blocks SIGTERM and waits on a command pipe.
 *
 * After SIGTERM the root checks its view: the pattern S, the semaphore's
 * value, the private mapping (file contents but its own page), the shared
 * mapping against the file read through the fd, a write through the fd
 * seen in the shared mapping (one file, not two), and "(deleted)" in its
 * maps. It writes V1 into the shared memory, posts the semaphore and tells
 * the child, which must see V1 and the value 4, waits on the semaphore,
 * writes V2 into the file mapping and reports; the root must see V2 and
 * the value 3. */
#include "wl.h"

#include <semaphore.h>
#include <sys/mman.h>

#define PAGE 4096
#define SHM_WORDS (3 * PAGE / 8)
#define FILE_PAGES 4
#define FILE_WORDS (FILE_PAGES * PAGE / 8)
#define V1 0x1111deadbeef1111ULL
#define V2 0x2222feedface2222ULL
#define OWN 0x0077777777777700ULL

static uint64_t *shm, *priv, *shr;
static sem_t *sem;
static int file_fd;

static uint64_t pat(int which, size_t i)
{
	return wl_mix(((uint64_t)which << 56) ^ i);
}

static int sem_value(void)
{
	int v = -1;
	if (sem_getvalue(sem, &v) < 0)
		wl_add("sem_getvalue: %s; ", strerror(errno));
	return v;
}

static void child(int cmd_fd, int res_fd)
{
	char c;
	if (wl_read_wait(cmd_fd, &c, 1, -1) != 1)
		_exit(11);
	if (__atomic_load_n(&shm[7], __ATOMIC_SEQ_CST) != V1)
		wl_add("child: shared memory word 7 is %#llx, not the root's value (not shared "
		    "any more?); ",
		    (unsigned long long)shm[7]);
	int v = sem_value();
	if (v != 4)
		wl_add("child: semaphore value %d, expected the root's post to make it 4; ", v);
	if (sem_wait(sem) < 0)
		wl_add("child: sem_wait: %s; ", strerror(errno));
	__atomic_store_n(&shr[9], V2, __ATOMIC_SEQ_CST);
	char out[2048 + 1];
	size_t n = (size_t)snprintf(out, sizeof(out), "%s", wl_mlen ? wl_msg : "OK");
	if (write(res_fd, out, n) != (ssize_t)n)
		_exit(12);
	_exit(0);
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	wl_block_term();

	char name[64];
	snprintf(name, sizeof(name), "/crest-wl-dm-%d", (int)getpid());
	int fd = shm_open(name, O_CREAT | O_EXCL | O_RDWR, 0600);
	if (fd < 0 || ftruncate(fd, SHM_WORDS * 8) < 0)
		wl_fail("shm_open %s: %s", name, strerror(errno));
	shm = mmap(NULL, SHM_WORDS * 8, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	if (shm == MAP_FAILED)
		wl_fail("mmap shm: %s", strerror(errno));
	close(fd);
	shm_unlink(name);
	for (size_t i = 0; i < SHM_WORDS; i++)
		shm[i] = pat(1, i);

	snprintf(name, sizeof(name), "/crest-wl-sem-%d", (int)getpid());
	sem = sem_open(name, O_CREAT | O_EXCL, 0600, 3);
	if (sem == SEM_FAILED)
		wl_fail("sem_open %s: %s", name, strerror(errno));
	sem_unlink(name);

	char path[4096];
	snprintf(path, sizeof(path), "%s/deleted-data", wl_dir);
	file_fd = open(path, O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0640);
	if (file_fd < 0)
		wl_fail("open %s: %s", path, strerror(errno));
	for (size_t i = 0; i < FILE_WORDS; i++) {
		uint64_t w = pat(2, i);
		if (pwrite(file_fd, &w, 8, (off_t)i * 8) != 8)
			wl_fail("write %s: %s", path, strerror(errno));
	}
	priv = mmap(NULL, FILE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, file_fd, 0);
	shr = mmap(NULL, FILE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, file_fd, 0);
	if (priv == MAP_FAILED || shr == MAP_FAILED)
		wl_fail("mmap %s: %s", path, strerror(errno));
	priv[PAGE / 8 + 3] = OWN; /* page 1 becomes the root's own copy */
	if (unlink(path) < 0)
		wl_fail("unlink %s: %s", path, strerror(errno));

	int cmd[2], res[2];
	wl_pipe(cmd);
	wl_pipe(res);
	pid_t pid = wl_fork();
	if (pid == 0) {
		close(cmd[1]);
		close(res[0]);
		child(cmd[0], res[1]);
	}
	close(cmd[0]);
	close(res[1]);

	wl_ready();
	wl_wait_term();

	for (size_t i = 0; i < SHM_WORDS; i++)
		if (shm[i] != pat(1, i)) {
			wl_add("shared memory word %zu is %#llx; ", i, (unsigned long long)shm[i]);
			break;
		}
	int v = sem_value();
	if (v != 3)
		wl_add("semaphore value %d, expected 3; ", v);
	for (size_t i = 0; i < FILE_WORDS; i++) {
		uint64_t want = i == PAGE / 8 + 3 ? OWN : pat(2, i);
		if (priv[i] != want) {
			wl_add("private file mapping word %zu is %#llx, expected %#llx; ", i,
			    (unsigned long long)priv[i], (unsigned long long)want);
			break;
		}
		if (shr[i] != pat(2, i)) {
			wl_add("shared file mapping word %zu is %#llx; ", i,
			    (unsigned long long)shr[i]);
			break;
		}
	}
	uint64_t through = 0x3333abcdabcd3333ULL;
	if (pwrite(file_fd, &through, 8, 8 * 20) != 8)
		wl_add("pwrite through the fd: %s; ", strerror(errno));
	else if (__atomic_load_n(&shr[20], __ATOMIC_SEQ_CST) != through)
		wl_add("a write through the fd is not in the shared mapping (two files?); ");
	FILE *maps = fopen("/proc/self/maps", "r");
	int deleted = 0;
	char line[4096];
	while (maps && fgets(line, sizeof(line), maps))
		if (strstr(line, " (deleted)"))
			deleted++;
	if (maps)
		fclose(maps);
	if (deleted < 4)
		wl_add("%d mappings say (deleted), expected 4; ", deleted);

	__atomic_store_n(&shm[7], V1, __ATOMIC_SEQ_CST);
	if (sem_post(sem) < 0)
		wl_add("sem_post: %s; ", strerror(errno));
	if (write(cmd[1], "g", 1) != 1)
		wl_add("write to the child's pipe: %s; ", strerror(errno));
	char out[2049];
	ssize_t n = wl_read_wait(res[0], out, sizeof(out) - 1, 10000);
	if (n <= 0) {
		wl_add("no result from the child (pid %d); ", pid);
	} else {
		out[n] = 0;
		if (strcmp(out, "OK") != 0)
			wl_add("%s", out);
	}
	if (__atomic_load_n(&shr[9], __ATOMIC_SEQ_CST) != V2)
		wl_add("file mapping word 9 is %#llx, not the child's value (not shared any more?); ",
		    (unsigned long long)shr[9]);
	v = sem_value();
	if (v != 3)
		wl_add("semaphore value %d after the child's wait, expected 3; ", v);
	int ws;
	pid_t w;
	do
		w = waitpid(pid, &ws, 0);
	while (w < 0 && errno == EINTR);
	if (w != pid || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0)
		wl_add("child (pid %d) ended badly (%#x); ", pid, ws);
	if (wl_mlen)
		wl_fail("%s", wl_msg);
	wl_pass();
}
