#!/usr/bin/env python3
"""Server CPU per request, user and system, for servers that are already running.

    bench/server_cpu.py NAME=PID:URL ...
    bench/server_cpu.py bare=4242:http://127.0.0.1:18080/api/health \\
                        service=4343:http://127.0.0.1:18081/api/health

Loads each URL with `wrk -t1 -c32` for 4 s, ROUNDS times (3 unless set) in turn, and reads the
server's user and system CPU from /proc/PID/stat before and after each run. Prints, per name,
the median microseconds of CPU per request (user, system, their sum) and each round's
requests/s. CPU per request is the server's own cost, whatever the load generator gets of the
two cores, so it varies less between rounds than throughput does (docs/performance.md).
Loopback only; stops by itself.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys

TICK = os.sysconf("SC_CLK_TCK")
SECONDS = 4


def cpu(pid: str) -> tuple[float, float]:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def load(url: str, seconds: int) -> int:
    out = subprocess.run(["wrk", "-t1", "-c32", f"-d{seconds}s", url],
                         capture_output=True, text=True, check=True, timeout=seconds + 30).stdout
    found = re.search(r"(\d+) requests in", out)
    if not found:
        sys.exit(f"wrk printed no request count for {url}:\n{out}")
    return int(found.group(1))


def main() -> None:
    targets = []
    for arg in sys.argv[1:]:
        name, _, rest = arg.partition("=")
        pid, _, url = rest.partition(":")
        if not (name and pid.isdigit() and url.startswith("http://127.0.0.1")):
            sys.exit(__doc__)
        targets.append((name, pid, url))
    if not targets:
        sys.exit(__doc__)
    rounds = int(os.environ.get("ROUNDS", "3"))
    for _, _, url in targets:
        load(url, 2)  # warm-up
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in targets}
    for _ in range(rounds):
        for name, pid, url in targets:
            user0, sys0 = cpu(pid)
            requests = load(url, SECONDS)
            user1, sys1 = cpu(pid)
            results[name].append((requests / SECONDS, (user1 - user0) / requests * 1e6,
                                  (sys1 - sys0) / requests * 1e6))
    print("| server | user µs/request | system µs/request | total | requests/s per round |")
    print("|---|---|---|---|---|")
    for name, rows in results.items():
        user = statistics.median(r[1] for r in rows)
        system = statistics.median(r[2] for r in rows)
        total = statistics.median(r[1] + r[2] for r in rows)
        rps = " ".join(f"{r[0]:.0f}" for r in rows)
        print(f"| {name} | {user:.1f} | {system:.1f} | {total:.1f} | {rps} |")


if __name__ == "__main__":
    main()
