#!/usr/bin/python3
"""multiproc.py STATEDIR - a Python multiprocessing job goes on computing
after a restore (issue 16, item 8).

A Pool of two workers, a Lock, a Value and a Queue (each made on a POSIX
semaphore or shared memory that multiprocessing unlinks right after
making it), and a Manager (a server process reached over a unix socket)
holding a dict. One round runs before the dump; after SIGTERM more rounds
must give the right results, through every one of them."""
import multiprocessing as mp
import os
import signal
import sys

state_dir = sys.argv[1]


def write_file(name, text):
    tmp = os.path.join(state_dir, "." + name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(state_dir, name))


def verdict(text, code):
    write_file("verdict", text + "\n")
    os._exit(code)


def square(x):
    return x * x


# made before the pool forks its workers, which inherit them
LOCK = None
VALUE = None


def bump(n):
    for _ in range(n):
        with LOCK:
            VALUE.value += 1
    return VALUE.value


def round_trip(pool, lock, value, queue, shared, k):
    got = pool.map(square, range(50))
    if got != [i * i for i in range(50)]:
        verdict("FAIL: pool.map gave %r" % got[:10], 1)
    before = value.value
    pool.map(bump, [10, 10])
    if value.value != before + 20:
        verdict("FAIL: the shared value is %d, expected %d" % (value.value, before + 20), 1)
    queue.put(("round", k))
    if queue.get(timeout=10) != ("round", k):
        verdict("FAIL: the queue lost a message", 1)
    shared[k] = k * 3
    if shared.get(k) != k * 3:
        verdict("FAIL: the manager's dict says %r" % shared.get(k), 1)


if __name__ == "__main__":
    mp.set_start_method("fork")
    # SIGTERM stays blocked in every thread (the pool's and the queue's
    # threads inherit the mask) and is taken with sigwait: a handler could
    # run in a helper thread and leave the main one asleep
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    manager = mp.Manager()
    shared = manager.dict()
    lock = LOCK = mp.Lock()
    value = VALUE = mp.Value("i", 0, lock=False)
    queue = mp.Queue()
    pool = mp.Pool(2)
    round_trip(pool, lock, value, queue, shared, 0)
    print("before", flush=True)
    write_file("ready", "%d\n" % os.getpid())
    signal.sigwait({signal.SIGTERM})
    print("after", flush=True)
    for k in range(1, 4):
        round_trip(pool, lock, value, queue, shared, k)
    if value.value != 80 or dict(shared) != {k: k * 3 for k in range(4)}:
        verdict("FAIL: value %d, dict %r" % (value.value, dict(shared)), 1)
    pool.close()
    pool.join()
    manager.shutdown()
    verdict("PASS", 0)
