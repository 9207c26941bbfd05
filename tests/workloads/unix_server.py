# unix_server.py SOCKET TOKENFILE - a server holding data in memory behind a
# unix socket: it makes a random token at start, writes it to TOKENFILE
# (for the harness to compare) and answers every connection that sends a
# line with "TOKEN COUNT", COUNT being the number of requests it has served.
# Standard library only.
import os
import socketserver
import sys

path, token_file = sys.argv[1], sys.argv[2]
token = os.urandom(16).hex()
served = 0


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        global served
        self.rfile.readline()
        served += 1
        self.wfile.write(f"{token} {served}\n".encode())


if os.path.exists(path):
    os.unlink(path)
server = socketserver.UnixStreamServer(path, Handler)
tmp = token_file + ".tmp"
with open(tmp, "w") as f:
    f.write(token)
os.rename(tmp, token_file)
server.serve_forever()
