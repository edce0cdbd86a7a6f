#!/usr/bin/env python3
"""Latency of sequential counter POSTs on one connection (a client that waits for each answer).

    bench/post_latency.py PORT [COUNT]     # COUNT POSTs, 10 ms apart; prints p50/p90/p99/max

bench/post_under_flood.sh runs it against an idle server and beside a pipelined flood.
"""
import socket
import sys
import time

REQUEST = b"POST /api/v1/counter HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"


def main():
    port = int(sys.argv[1])
    count = int(sys.argv[2]) if len(sys.argv) > 2 else 300
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    latencies = []
    for _ in range(count):
        started = time.perf_counter()
        s.sendall(REQUEST)
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = s.recv(4096)
            if not chunk:
                raise SystemExit("post_latency: the server closed the connection")
            answer += chunk
        if not answer.startswith(b"HTTP/1.1 200"):
            raise SystemExit(f"post_latency: {answer.splitlines()[0]!r}")
        latencies.append((time.perf_counter() - started) * 1000)
        time.sleep(0.01)
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(len(latencies) * p))]

    print(f"POST latency ms over {count}: p50 {pct(0.5):.2f} p90 {pct(0.9):.2f} "
          f"p99 {pct(0.99):.2f} max {latencies[-1]:.2f}")


if __name__ == "__main__":
    main()
