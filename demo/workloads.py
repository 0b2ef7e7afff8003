"""Workloads for test pods, each run as `python3 -c SCRIPT ARGS...` in a pod's container:
shared by the demo (demo/run.py) and the dashboard pictures (dashboards/render.py)."""

# ARGS: good calls/s, failing calls/s (getsid succeeds, rmdir of a missing path fails).
SYSCALL_LOOP = """\
import os, sys, time
ok, bad = int(sys.argv[1]) // 10, int(sys.argv[2]) // 10   # per 100 ms
t = time.monotonic()
while True:
    for _ in range(ok):
        os.getsid(0)
    for _ in range(bad):
        try:
            os.rmdir('/nonexistent/podsnoop')
        except OSError:
            pass
    t += 0.1
    time.sleep(max(0.0, t - time.monotonic()))
"""

# ARGS: host, port, bytes per second; reconnects when the connection drops.
TCP_SENDER = """\
import socket, sys, time
host, port, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])   # bytes per second
chunk = b'x' * (rate // 20)
while True:
    try:
        s = socket.create_connection((host, port), timeout=5)
        t = time.monotonic()
        while True:
            s.sendall(chunk)
            t += 0.05
            time.sleep(max(0.0, t - time.monotonic()))
    except OSError:
        time.sleep(0.5)
"""

# For host-side listeners in such scripts (needs `import socket, threading`): accept(srv)
# serves each connection of a listening socket in a thread that reads it to the end.
ACCEPT_AND_DRAIN = """\
def drain(c):
    with c:
        while c.recv(65536):
            pass
def accept(srv):
    while True:
        c, _ = srv.accept()
        threading.Thread(target=drain, args=(c,), daemon=True).start()
"""
