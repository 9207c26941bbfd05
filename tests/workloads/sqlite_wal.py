#!/usr/bin/python3
"""sqlite_wal.py STATEDIR - SQLite in WAL mode survives (issue 16, item 8).

One process, three connections to a database in WAL mode (the -wal file,
the -shm file mapped shared, POSIX locks on both): 1000 rows committed,
a reader inside a read transaction (its snapshot holds a read mark), a
writer inside a write transaction with 10 rows not committed (it holds
the write lock). Dumped with --file-locks. After SIGTERM the writer
commits, the reader still sees its snapshot until it ends, then sees
1010 rows; a checkpoint folds the WAL into the database, and the
integrity check passes. A second process must not get the write lock
while the writer holds it, before and after."""
import os
import signal
import sqlite3
import subprocess
import sys

state_dir = sys.argv[1]
db = os.path.join(state_dir, "wal.db")
term = False


def write_file(name, text):
    tmp = os.path.join(state_dir, "." + name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.rename(tmp, os.path.join(state_dir, name))


def verdict(text, code):
    write_file("verdict", text + "\n")
    sys.exit(code)


def on_term(signum, frame):
    global term
    term = True


def count(conn):
    return conn.execute("SELECT count(*), sum(v) FROM t").fetchone()


def other_can_write():
    """Whether another process gets the write lock (it must not)."""
    probe = (
        "import sqlite3,sys\n"
        "c = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
        "try:\n"
        "    c.execute('BEGIN IMMEDIATE')\n"
        "    print('got')\n"
        "except sqlite3.OperationalError as e:\n"
        "    print('busy' if 'locked' in str(e) or 'busy' in str(e) else e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, db], capture_output=True, text=True, timeout=30
    )
    return out.stdout.strip()


signal.signal(signal.SIGTERM, on_term)
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

setup = sqlite3.connect(db, isolation_level=None)
if setup.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
    verdict("FAIL WAL mode refused", 1)
setup.execute("PRAGMA wal_autocheckpoint=0")
setup.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v INTEGER)")
setup.execute("BEGIN")
for i in range(1000):
    setup.execute("INSERT INTO t VALUES (?, ?)", (i, i * 7))
setup.execute("COMMIT")

reader = sqlite3.connect(db, isolation_level=None)
reader.execute("BEGIN")
snap = count(reader)
writer = sqlite3.connect(db, isolation_level=None)
writer.execute("PRAGMA wal_autocheckpoint=0")
writer.execute("BEGIN IMMEDIATE")
for i in range(1000, 1010):
    writer.execute("INSERT INTO t VALUES (?, ?)", (i, i * 7))
if other_can_write() != "busy":
    verdict("FAIL another process got the write lock before the dump", 1)

write_file("dump-args", "--file-locks\n")
print("before", flush=True)
write_file("ready", "%d\n" % os.getpid())
while not term:
    signal.sigwait({signal.SIGTERM})
    term = True
print("after", flush=True)

if other_can_write() != "busy":
    verdict("FAIL another process got the write lock after restore", 1)
writer.execute("COMMIT")
if count(reader) != snap:
    verdict("FAIL the reader's snapshot moved: %r, was %r" % (count(reader), snap), 1)
reader.execute("COMMIT")
want = (1010, sum(i * 7 for i in range(1010)))
if count(reader) != want:
    verdict("FAIL the table holds %r, not %r" % (count(reader), want), 1)
busy, log, done = setup.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
if busy:
    verdict("FAIL the checkpoint was blocked (%d, %d, %d)" % (busy, log, done), 1)
ok = setup.execute("PRAGMA integrity_check").fetchone()[0]
if ok != "ok":
    verdict("FAIL integrity_check: %s" % ok, 1)
if other_can_write() != "got":
    verdict("FAIL another process cannot write once the writer is done", 1)
for c in (reader, writer, setup):
    c.close()
verdict("PASS", 0)
