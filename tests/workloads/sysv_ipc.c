/* sysv_ipc STATEDIR - SysV IPC objects survive: a shared memory segment
 * attached twice (one attach read-only) with a pattern written through the
 * mapping, a semaphore set with values, a message queue with messages of
 * several types, each with its own mode. In the host flavor the objects
 * live in the harness's ipc namespace and outlive the dump; in the ns
 * flavors crest must carry them in its images. Beside them, a POSIX
 * message queue with two messages, held through two descriptors (one
 * O_RDWR|O_NONBLOCK, one O_RDONLY): after the restore both are open again
 * with their flags, and the messages come out by priority. The workload
 * removes its objects before it exits. */
#include "wl.h"
#include <fcntl.h>
#include <mqueue.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>

#define SHM_SIZE (3 * 4096 + 100)
#define NSEMS 5

union semun {
	int val;
	struct semid_ds *buf;
	unsigned short *array;
};

struct msg {
	long mtype;
	char text[64];
};

static unsigned char pattern(size_t i)
{
	return (unsigned char)(i * 7 + 3);
}

static int shm_id = -1, sem_id = -1, msg_id = -1;
static char mq_name[64];

static void cleanup(void)
{
	if (shm_id >= 0)
		shmctl(shm_id, IPC_RMID, NULL);
	if (sem_id >= 0)
		semctl(sem_id, 0, IPC_RMID);
	if (msg_id >= 0)
		msgctl(msg_id, IPC_RMID, NULL);
	if (mq_name[0])
		mq_unlink(mq_name);
}

/* The POSIX queue after the restore: the descriptors' flags and
 * attributes, the messages by priority, the read-only one refusing to
 * send. */
static void check_mq(mqd_t rw, mqd_t ro)
{
	struct mq_attr a;
	if (mq_getattr(rw, &a) < 0)
		wl_fail("mq_getattr after restore: %s", strerror(errno));
	if (!(a.mq_flags & O_NONBLOCK) || a.mq_maxmsg != 4 || a.mq_msgsize != 32 ||
	    a.mq_curmsgs != 2)
		wl_fail("queue attributes flags %lo maxmsg %ld msgsize %ld curmsgs %ld", a.mq_flags,
			a.mq_maxmsg, a.mq_msgsize, a.mq_curmsgs);
	int fl = fcntl(ro, F_GETFL);
	if (fl < 0 || (fl & O_ACCMODE) != O_RDONLY || (fl & O_NONBLOCK))
		wl_fail("the read-only descriptor has flags %o", fl);
	if (mq_send(ro, "x", 1, 0) == 0 || errno != EBADF)
		wl_fail("mq_send through the read-only descriptor: %s", strerror(errno));
	const char *want[] = { "high", "low" };
	for (int i = 0; i < 2; i++) {
		char buf[32] = { 0 };
		unsigned prio = 0;
		ssize_t n = mq_receive(i ? rw : ro, buf, sizeof(buf), &prio);
		if (n < 0 || strcmp(buf, want[i]) != 0)
			wl_fail("mq_receive %d: %zd %s (%s)", i, n, buf, strerror(errno));
	}
	char buf[32];
	if (mq_receive(rw, buf, sizeof(buf), NULL) >= 0 || errno != EAGAIN)
		wl_fail("the non-blocking descriptor blocks or has more: %s", strerror(errno));
}

int main(int argc, char **argv)
{
	wl_init(argc, argv);
	atexit(cleanup);
	shm_id = shmget(IPC_PRIVATE, SHM_SIZE, IPC_CREAT | 0640);
	if (shm_id < 0)
		wl_fail("shmget: %s", strerror(errno));
	unsigned char *rw = shmat(shm_id, NULL, 0);
	if (rw == (void *)-1)
		wl_fail("shmat: %s", strerror(errno));
	const unsigned char *ro = shmat(shm_id, NULL, SHM_RDONLY);
	if (ro == (void *)-1)
		wl_fail("shmat read-only: %s", strerror(errno));
	for (size_t i = 0; i < SHM_SIZE; i++)
		rw[i] = pattern(i);

	sem_id = semget(IPC_PRIVATE, NSEMS, IPC_CREAT | 0600);
	if (sem_id < 0)
		wl_fail("semget: %s", strerror(errno));
	unsigned short vals[NSEMS] = { 0, 1, 42, 300, 32767 };
	union semun arg = { .array = vals };
	if (semctl(sem_id, 0, SETALL, arg) < 0)
		wl_fail("semctl SETALL: %s", strerror(errno));

	msg_id = msgget(IPC_PRIVATE, IPC_CREAT | 0620);
	if (msg_id < 0)
		wl_fail("msgget: %s", strerror(errno));
	for (int i = 0; i < 4; i++) {
		struct msg m = { .mtype = 1 + i % 2 };
		int n = snprintf(m.text, sizeof(m.text), "message %d type %ld", i, m.mtype);
		if (msgsnd(msg_id, &m, (size_t)n, IPC_NOWAIT) < 0)
			wl_fail("msgsnd: %s", strerror(errno));
	}

	snprintf(mq_name, sizeof(mq_name), "/crest-wl-%d", (int)getpid());
	struct mq_attr attr = { .mq_maxmsg = 4, .mq_msgsize = 32 };
	mqd_t mq_rw = mq_open(mq_name, O_CREAT | O_EXCL | O_RDWR | O_NONBLOCK, 0600, &attr);
	if (mq_rw == (mqd_t)-1)
		wl_fail("mq_open: %s", strerror(errno));
	mqd_t mq_ro = mq_open(mq_name, O_RDONLY);
	if (mq_ro == (mqd_t)-1)
		wl_fail("mq_open O_RDONLY: %s", strerror(errno));
	if (mq_send(mq_rw, "low", 4, 1) < 0 || mq_send(mq_rw, "high", 5, 7) < 0)
		wl_fail("mq_send: %s", strerror(errno));

	wl_ready();
	wl_wait_term();

	check_mq(mq_rw, mq_ro);

	for (size_t i = 0; i < SHM_SIZE; i++) {
		if (rw[i] != pattern(i))
			wl_fail("segment byte %zu is %u through the writable attach", i, rw[i]);
		if (ro[i] != pattern(i))
			wl_fail("segment byte %zu is %u through the read-only attach", i, ro[i]);
	}
	rw[5] = 0xAB; /* the two attaches still share the segment */
	if (ro[5] != 0xAB)
		wl_fail("the two attaches of the segment no longer share it");
	unsigned char *third = shmat(shm_id, NULL, SHM_RDONLY);
	if (third == (void *)-1)
		wl_fail("shmat after restore: %s", strerror(errno));
	if (third[5] != 0xAB || third[SHM_SIZE - 1] != pattern(SHM_SIZE - 1))
		wl_fail("a new attach does not see the segment");
	struct shmid_ds sds;
	if (shmctl(shm_id, IPC_STAT, &sds) < 0)
		wl_fail("shmctl IPC_STAT: %s", strerror(errno));
	if ((sds.shm_perm.mode & 0777) != 0640 || sds.shm_segsz != SHM_SIZE)
		wl_fail("segment mode %o size %zu", sds.shm_perm.mode & 0777, sds.shm_segsz);
	if (sds.shm_perm.uid != getuid())
		wl_fail("segment owner %u, expected %u", sds.shm_perm.uid, getuid());

	unsigned short got[NSEMS];
	arg.array = got;
	if (semctl(sem_id, 0, GETALL, arg) < 0)
		wl_fail("semctl GETALL: %s", strerror(errno));
	for (int i = 0; i < NSEMS; i++)
		if (got[i] != vals[i])
			wl_fail("semaphore %d is %u, expected %u", i, got[i], vals[i]);
	struct semid_ds ss;
	arg.buf = &ss;
	if (semctl(sem_id, 0, IPC_STAT, arg) < 0 || (ss.sem_perm.mode & 0777) != 0600)
		wl_fail("semaphore set mode %o", ss.sem_perm.mode & 0777);

	struct msqid_ds qs;
	if (msgctl(msg_id, IPC_STAT, &qs) < 0)
		wl_fail("msgctl IPC_STAT: %s", strerror(errno));
	if (qs.msg_qnum != 4 || (qs.msg_perm.mode & 0777) != 0620)
		wl_fail("queue has %lu messages, mode %o", (unsigned long)qs.msg_qnum,
			qs.msg_perm.mode & 0777);
	/* type 2 first: the order within a type must hold */
	const char *want[] = { "message 1 type 2", "message 3 type 2", "message 0 type 1",
			       "message 2 type 1" };
	long types[] = { 2, 2, 1, 1 };
	for (int i = 0; i < 4; i++) {
		struct msg m;
		memset(&m, 0, sizeof(m));
		ssize_t n = msgrcv(msg_id, &m, sizeof(m.text) - 1, types[i], IPC_NOWAIT);
		if (n < 0)
			wl_fail("msgrcv %d: %s", i, strerror(errno));
		if (strcmp(m.text, want[i]) != 0 || m.mtype != types[i])
			wl_fail("message %d is %ld %.*s, expected %s", i, m.mtype, (int)n, m.text,
				want[i]);
	}
	wl_pass();
}
