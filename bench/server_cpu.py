#!/usr/bin/env python3
"""Server CPU per request, user and system, for servers that are already running.

    bench/server_cpu.py NAME=PID:URL ...
    bench/server_cpu.py bare=4242:http://127.0.0.1:18080/api/health \\
                        service=4343:http://127.0.0.1:18081/api/health

Loads each URL with `wrk -t1 -c32` for 4 s (bench.py's `wrk`; a failed request stops it),
ROUNDS times (3 unless set) in turn, and reads the server's user and system CPU from
/proc/PID/stat before and after each run (bench.py's `proc_cpu`). Prints, per name,
the median microseconds of CPU per request (user, system, their sum) and each round's
requests/s. CPU per request is the server's own cost, whatever share of the two cores the
load generator gets (docs/performance.md).
Loopback only; stops by itself.
"""

from __future__ import annotations

import os
import statistics
import sys

from bench import proc_cpu, wrk

SECONDS = 4


def main() -> None:
    targets = []
    for arg in sys.argv[1:]:
        name, _, rest = arg.partition("=")
        pid, _, url = rest.partition(":")
        if not (name and pid.isdigit() and url.startswith("http://127.0.0.1")):
            sys.exit(__doc__)
        targets.append((name, int(pid), url))
    if not targets:
        sys.exit(__doc__)
    rounds = int(os.environ.get("ROUNDS", "3"))
    for _, _, url in targets:
        wrk(url, 32, 2, threads=1)  # warm-up
    results: dict[str, list[tuple[float, float, float]]] = {name: [] for name, _, _ in targets}
    for _ in range(rounds):
        for name, pid, url in targets:
            user0, sys0 = proc_cpu(pid)
            report = wrk(url, 32, SECONDS, threads=1)
            user1, sys1 = proc_cpu(pid)
            if report["errors"]:
                sys.exit(f"{name}: {report['errors']} failed requests to {url}")
            requests = report["requests"]
            results[name].append((report["rps"], (user1 - user0) / requests * 1e6,
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
