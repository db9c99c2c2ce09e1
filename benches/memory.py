#!/usr/bin/env python3
"""Memory of a running ramp, as `ps` would show it.

  memory.py idle PID HOST:PORT [N]
      RSS before and after N (default 10,000) client connections that each made one request
      and then stay open, idle, with keep-alive; prints bytes per idle connection. Raise the
      open-file limit first (ulimit -n 30000) and give ramp room: `limits.max_connections`
      above N, `limits.header_read_timeout` longer than the run.
  memory.py soak PID URL [MINUTES]
      RSS every 30 s while wrk (benches/split.lua, 64 connections) loads URL; prints the
      spread after the first minute's warm-up.
"""
import socket
import subprocess
import sys
import time
from pathlib import Path


def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise SystemExit(f"no process {pid}")


def idle(pid, addr, n):
    host, port = addr.rsplit(":", 1)
    before = rss_kib(pid)
    conns = []
    for i in range(n):
        s = socket.create_connection((host, int(port)))
        s.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nCookie: uid=user{i}\r\n\r\n".encode())
        got = b""
        while b"\r\n\r\n" not in got:
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit(f"connection {i} closed by the proxy")
            got += chunk
        if not got.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"connection {i}: {got[:60]!r}")
        conns.append(s)
    time.sleep(2)
    after = rss_kib(pid)
    alive = 0
    for s in conns:
        s.setblocking(False)
        try:
            alive += s.recv(1) != b""
        except BlockingIOError:
            alive += 1
    print(f"RSS before {before / 1024:.1f} MiB, with {n} idle connections {after / 1024:.1f} MiB "
          f"({alive} still open); {(after - before) * 1024 / n:.0f} bytes per idle connection")


def soak(pid, url, minutes):
    lua = Path(__file__).with_name("split.lua")
    wrk = subprocess.Popen(["wrk", "-t1", "-c64", f"-d{minutes * 60 + 5}s", "-s", str(lua), url],
                           stdout=subprocess.DEVNULL)
    samples = []
    start = time.time()
    while wrk.poll() is None and time.time() - start < minutes * 60:
        time.sleep(30)
        samples.append(rss_kib(pid))
        print(f"{time.time() - start:5.0f} s  RSS {samples[-1] / 1024:.1f} MiB", flush=True)
    wrk.wait()
    steady = samples[2:] or samples
    lo, hi = min(steady), max(steady)
    print(f"after warm-up: min {lo / 1024:.1f} MiB, max {hi / 1024:.1f} MiB, "
          f"spread {100 * (hi - lo) / lo:.1f}% of the minimum")


if __name__ == "__main__":
    if len(sys.argv) < 4 or sys.argv[1] not in ("idle", "soak"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "idle":
        idle(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 10000)
    else:
        soak(int(sys.argv[2]), sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else 10)
