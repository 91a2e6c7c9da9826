#!/usr/bin/env python3
"""Open N keep-alive connections to 127.0.0.1:PORT one after another, make one
request on each, and keep them all open (idle) for HOLD seconds.

Used by benches/proxy-bench.sh to measure a proxy's memory per idle client
connection. Prints "answered/N" once all connections are open and idle.

    idle-conns.py PORT N HOLD
"""
import resource
import socket
import sys
import time

port, count, hold = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, count + 100)), hard))
request = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
conns, answered = [], 0
for _ in range(count):
    conn = socket.create_connection(("127.0.0.1", port))
    conn.sendall(request)
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = conn.recv(4096)
        if not chunk:
            break
        head += chunk
    answered += head.startswith(b"HTTP/1.1 200")
    conns.append(conn)
print(f"{answered}/{count}", flush=True)
time.sleep(hold)
