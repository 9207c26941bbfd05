/* sysvmk - makes SysV objects in the caller's ipc namespace and exits (a
 * tool of the harness, no protocol): a 64 KiB + 1 shared memory segment
 * (key 0x5eed, mode 0640) filled with a pattern, a set of 3 semaphores
 * (key 0x5eee, values 7 8 9) and a message queue (key 0x5eef) holding
 * three messages, and a POSIX message queue /crestq (mode 0640, at most 5
 * messages of 64 bytes) holding two messages of priorities 1 and 3. The
 * container shapes run it before the workload, so the objects outlive it
 * and only the ipc namespace holds them. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <mqueue.h>
#include <stdio.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>

#define SIZE (65536 + 1)

int main(void)
{
	int shm = shmget(0x5eed, SIZE, IPC_CREAT | IPC_EXCL | 0640);
	if (shm < 0) {
		perror("sysvmk: shmget");
		return 1;
	}
	unsigned char *p = shmat(shm, NULL, 0);
	if (p == (void *)-1) {
		perror("sysvmk: shmat");
		return 1;
	}
	for (size_t i = 0; i < SIZE; i++)
		p[i] = (unsigned char)(i * 13 + 1);
	shmdt(p);
	int sem = semget(0x5eee, 3, IPC_CREAT | IPC_EXCL | 0600);
	unsigned short vals[3] = { 7, 8, 9 };
	if (sem < 0 || semctl(sem, 0, SETALL, vals) < 0) {
		perror("sysvmk: semget/SETALL");
		return 1;
	}
	int q = msgget(0x5eef, IPC_CREAT | IPC_EXCL | 0666);
	if (q < 0) {
		perror("sysvmk: msgget");
		return 1;
	}
	for (long i = 1; i <= 3; i++) {
		struct {
			long mtype;
			char text[32];
		} m = { .mtype = i };
		int n = snprintf(m.text, sizeof(m.text), "hello %ld", i);
		if (msgsnd(q, &m, (size_t)n, IPC_NOWAIT) < 0) {
			perror("sysvmk: msgsnd");
			return 1;
		}
	}
	struct mq_attr attr = { .mq_maxmsg = 5, .mq_msgsize = 64 };
	mqd_t mq = mq_open("/crestq", O_CREAT | O_EXCL | O_RDWR, 0640, &attr);
	if (mq == (mqd_t)-1) {
		perror("sysvmk: mq_open");
		return 1;
	}
	if (mq_send(mq, "low", 3, 1) < 0 || mq_send(mq, "high priority", 13, 3) < 0) {
		perror("sysvmk: mq_send");
		return 1;
	}
	mq_close(mq);
	return 0;
}
