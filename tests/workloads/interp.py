#!/usr/bin/python3
"""interp.py STATEDIR - a Python interpreter's heap survives.

Builds a dict of 200k entries with computed values and a checksum, says
ready, waits for SIGTERM, then recomputes everything and compares."""
import hashlib
import os
import signal
import sys

N = 200_000
state_dir = sys.argv[1]
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


def build():
    return {"k%d" % i: (i * 2654435761) % 4294967296 for i in range(N)}


def digest(d):
    h = hashlib.sha256()
    for k in sorted(d):
        h.update(("%s=%d;" % (k, d[k])).encode())
    return h.hexdigest()


signal.signal(signal.SIGTERM, on_term)
data = build()
strings = ["s%08x" % (i * 40503) for i in range(50_000)]
checksum = digest(data)
print("before", flush=True)
write_file("ready", "%d\n" % os.getpid())
while not term:
    signal.pause()
print("after", flush=True)

if len(data) != N:
    verdict("FAIL: the dict has %d entries, expected %d" % (len(data), N), 1)
fresh = build()
for k, v in fresh.items():
    if data.get(k) != v:
        verdict("FAIL: data[%r] is %r, expected %r" % (k, data.get(k), v), 1)
if digest(data) != checksum:
    verdict("FAIL: the dict's checksum changed", 1)
for i, s in enumerate(strings):
    if s != "s%08x" % (i * 40503):
        verdict("FAIL: strings[%d] is %r" % (i, s), 1)
verdict("PASS", 0)
