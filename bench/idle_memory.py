#!/usr/bin/env python3
"""Memory per idle keep-alive connection: RSS of a running tally before and after N clients
connect and (with --request) send one request each, then stay idle.

    bench/idle_memory.sh            # starts tally itself on both --io paths (see there)
    bench/idle_memory.py PORT PID N [--request]
"""
import resource
import socket
import sys
import time

REQUEST = b"GET /api/v1/system/health HTTP/1.1\r\nHost: x\r\n\r\n"


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main():
    port, pid, n = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    request = "--request" in sys.argv[4:]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, n + 1024), hard))
    before = rss_kib(pid)
    socks = []
    for i in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        socks.append(s)
        if request:
            s.sendall(REQUEST)
            # Read answers in batches, so the server never holds many unread ones.
            if i % 500 == 499:
                for t in socks[-500:]:
                    t.recv(4096)
    if request:
        for t in socks[len(socks) // 500 * 500:]:
            t.recv(4096)
    # Long enough for the sweeper's once-a-second pass to ask idle connections to trim.
    time.sleep(5)
    after = rss_kib(pid)
    kind = "idle after one request" if request else "never sent a byte"
    print(f"{n} connections {kind}: RSS {before} -> {after} KiB, "
          f"{(after - before) * 1024 / n:,.0f} bytes each, {(after - before) * 1024 / 1e6:.1f} MB in all")


if __name__ == "__main__":
    main()
