#!/usr/bin/env python3
"""ev_client.py PORT SCENARIO -- drives ev_pq_server.

  concurrent N MS   N connections, one "Q MS cI" each, all at once; prints
                    the seconds until every answer came, and the answers
  ordered           3 connections; each sends "Q 400 xI-1", then 100 ms
                    later "Q 10 xI-2" and 20 ms after that "Q 10 xI-3":
                    prints each connection's answers in arrival order
"""
import socket, sys, threading, time

port, scen = int(sys.argv[1]), sys.argv[2]


def conn():
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    return s


def read_lines(s, n):
    buf, out = b"", []
    while len(out) < n:
        d = s.recv(4096)
        if not d:
            break
        buf += d
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            out.append(line.decode())
    return out


if scen == "concurrent":
    n, ms = int(sys.argv[3]), int(sys.argv[4])
    socks = [conn() for _ in range(n)]
    t0 = time.monotonic()
    for i, s in enumerate(socks):
        s.sendall(b"Q %d c%d\n" % (ms, i))
    answers = [read_lines(s, 1) for s in socks]
    print("elapsed %.2f" % (time.monotonic() - t0))
    for i, a in enumerate(answers):
        print("conn %d: %s" % (i, " | ".join(a)))
elif scen == "ordered":
    results = {}

    def one(i):
        s = conn()
        s.sendall(b"Q 400 x%d-1\n" % i)
        time.sleep(0.1)
        s.sendall(b"Q 10 x%d-2\n" % i)
        time.sleep(0.02)
        s.sendall(b"Q 10 x%d-3\n" % i)
        results[i] = read_lines(s, 3)
        s.close()

    t0 = time.monotonic()
    th = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in th:
        t.start()
    for t in th:
        t.join()
    print("elapsed %.2f" % (time.monotonic() - t0))
    for i in range(3):
        print("conn %d: %s" % (i, " | ".join(results.get(i, []))))
