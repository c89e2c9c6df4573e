#!/usr/bin/env python3
"""Reliability drills against a Hakikisha release binary (docs/reliability.md).

    python3 drills/run.py [--only NAME] BINARY

Each drill starts its own private PostgreSQL cluster / redis-server / app on free loopback ports
and stops them in all cases. It never touches the shared PostgreSQL (5432) or Redis (6379).
Every load loop is bounded in count and in time. Each drill prints ONE figures line; the script
exits non-zero if any drill misses its criteria. Standard library only.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

PGBIN = Path("/usr/lib/postgresql/15/bin")
PASSWORD = "drill password 42"
ADMIN = {"ADMIN_EMAIL": "drill-admin@example.com", "ADMIN_USERNAME": "drilladmin", "ADMIN_PASSWORD": PASSWORD}
HIGH = {
    "RATE_LIMIT_GENERAL": "100000000/15m",
    "RATE_LIMIT_AUTH": "100000000/15m",
    "RATE_LIMIT_AI": "100000000/15m",
    "RATE_LIMIT_KEY_CREATION": "100000000/1h",
    "RATE_LIMIT_HEAVY": "100000000/1h",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Resp:
    def __init__(self, status: int, headers: dict, body: bytes, secs: float):
        self.status, self.headers, self.body, self.secs = status, headers, body, secs

    def json(self):
        try:
            return json.loads(self.body)
        except ValueError:
            return None


def req(port: int, method: str, path: str, body=None, token=None, headers=None, timeout=10.0) -> Resp:
    """One request on a fresh connection. Raises OSError/HTTPException on transport failure."""
    t = time.monotonic()
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        h = {"Connection": "close"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            h["Content-Type"] = "application/json"
        if token:
            h["Authorization"] = f"Bearer {token}"
        h.update(headers or {})
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        raw = r.read()
        return Resp(r.status, {k.lower(): v for k, v in r.getheaders()}, raw, time.monotonic() - t)
    finally:
        c.close()


def wait_until(fn, seconds: float, step=0.1):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            v = fn()
            if v:
                return v
        except Exception:
            pass
        time.sleep(step)
    return None


class Postgres:
    """A private cluster owned by the postgres user, on a free port, sockets in its own dir."""

    def __init__(self, work: Path, name="pg"):
        self.dir = work / name
        self.port = free_port()
        subprocess.run(["install", "-d", "-o", "postgres", "-m", "700", str(self.dir)], check=True)
        subprocess.run(["runuser", "-u", "postgres", "--", str(PGBIN / "initdb"), "-D", str(self.dir / "data"),
                        "-A", "trust", "-U", "postgres"], check=True, capture_output=True, timeout=120)
        self.started = False

    @property
    def url(self) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/postgres"

    def ctl(self, *args, timeout=60):
        return subprocess.run(["runuser", "-u", "postgres", "--", str(PGBIN / "pg_ctl"), "-D",
                               str(self.dir / "data"), *args], capture_output=True, text=True, timeout=timeout)

    def start(self, extra=""):
        r = self.ctl("-w", "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 {extra}",
                     "-l", str(self.dir / "log"), "start")
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {r.stderr}")
        self.started = True

    def stop(self, mode="fast"):
        if self.started:
            self.ctl("-w", "-m", mode, "stop")
            self.started = False

    def psql(self, sql: str, timeout=30) -> str:
        r = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", "postgres",
                            "-At", "-v", "ON_ERROR_STOP=1", "-c", sql], capture_output=True, text=True,
                           timeout=timeout)
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr}")
        return r.stdout


class Redis:
    def __init__(self, work: Path):
        self.port = free_port()
        self.work = work
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "no"], cwd=self.work,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def ping():
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        if not wait_until(ping, 10):
            raise RuntimeError("private redis did not start")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()


class App:
    def __init__(self, binary: Path, work: Path, name: str, env: dict):
        self.port, self.mport = free_port(), free_port()
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "REDIS", "HAKIKISHA_", "RATE_"))}
        base.update(ADMIN)
        base.update({"BIND_ADDR": f"127.0.0.1:{self.port}", "METRICS_ADDR": f"127.0.0.1:{self.mport}",
                     "JOBS_ENABLED": "false", "RUST_LOG": "info", "LOG_FORMAT": "text"})
        base.update(env)
        self.logpath = work / f"{name}.log"
        self.log = open(self.logpath, "w")
        self.proc = subprocess.Popen([str(binary), "serve"], env=base, cwd=work, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        ok = wait_until(lambda: self.proc.poll() is None and req(self.port, "GET", "/readyz", timeout=2).status == 200,
                        90, 0.2)
        if not ok:
            raise RuntimeError(f"app did not become ready; see {self.logpath}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()

    def metric(self, name: str) -> float:
        text = req(self.mport, "GET", "/metrics").body.decode()
        return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))

    def login(self, login: str) -> str:
        r = req(self.port, "POST", "/api/v1/auth/login", {"login": login, "password": PASSWORD}, timeout=30)
        if r.status != 200:
            raise RuntimeError(f"login {login}: {r.status} {r.body[:200]!r}")
        return r.json()["access_token"]

    def user(self, name: str) -> str:
        r = req(self.port, "POST", "/api/v1/auth/register",
                {"email": f"{name}@example.com", "username": name, "password": PASSWORD}, timeout=30)
        if r.status not in (200, 201):
            raise RuntimeError(f"register {name}: {r.status} {r.body[:200]!r}")
        return self.login(name)


def claim_body(n) -> dict:
    return {"text": f"Drill claim {n}: the new bridge on the river cost twice its budget", "category": "economy"}


class Load:
    """Bounded client threads. Each worker calls `step(i)`, which returns (kind, ok, detail)."""

    def __init__(self, workers: int, step, max_requests=4000, pause=0.02):
        self.stop_ev = threading.Event()
        self.lock = threading.Lock()
        self.sent = 0
        self.failed: list[str] = []
        self.latencies: list[float] = []
        self.max_requests = max_requests
        self.threads = [threading.Thread(target=self.run, args=(step, w, pause), daemon=True) for w in range(workers)]

    def run(self, step, w, pause):
        i = 0
        while not self.stop_ev.is_set():
            with self.lock:
                if self.sent >= self.max_requests:
                    return
                self.sent += 1
            t = time.monotonic()
            try:
                ok, detail = step(w, i)
            except Exception as e:  # transport failure counts as a failed request
                ok, detail = False, f"{type(e).__name__}: {e}"
            with self.lock:
                self.latencies.append(time.monotonic() - t)
                if not ok:
                    self.failed.append(detail)
            i += 1
            time.sleep(pause)

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop_ev.set()
        for t in self.threads:
            t.join(timeout=60)


def p(vals, q):
    if not vals:
        return 0.0
    s = sorted(vals)
    return s[min(len(s) - 1, int(q * len(s)))]


# ---------------------------------------------------------------------------------------------
# Drills. Each returns (passed, figures line).


def drill_redis(binary: Path, work: Path):
    pg, rd, app = Postgres(work), Redis(work), None
    try:
        pg.start()
        rd.start()
        env = dict(HIGH, DATABASE_URL=pg.url, REDIS_URL=f"redis://127.0.0.1:{rd.port}", RATE_LIMIT_AUTH="5/15m",
                   TRUSTED_PROXIES="127.0.0.1")
        app = App(binary, work, "redis-app", env)
        # Logins below come from distinct X-Forwarded-For addresses so the 5/15m auth tier is not hit.
        admin = login_from(app, ADMIN["ADMIN_USERNAME"], "10.9.0.1")
        user = register_from(app, "redisdrill", "10.9.0.2")
        ids: list[str] = []

        def step(w, i):
            if i % 3 == 0:
                r = req(app.port, "POST", "/api/v1/claims", claim_body(f"r{w}-{i}"), token=user)
                if 200 <= r.status < 300:
                    ids.append(r.json()["id"])
            else:
                r = req(app.port, "GET", "/api/v1/claims/trending")
            return r.status < 500, f"{r.status}"

        def redis_status():
            return req(app.port, "GET", "/health", token=admin).json()["checks"]["redis"]["status"]

        with Load(4, step, max_requests=3000) as load:
            time.sleep(2)
            before_429 = auth_probe(app, "10.9.1.1")
            rd.kill()
            t_kill = time.monotonic()
            down_seen = wait_until(lambda: redis_status() != "up", 5)
            during_429 = auth_probe(app, "10.9.1.2")
            time.sleep(max(0.0, 5 - (time.monotonic() - t_kill)))
            health_during = redis_status()
            rd.start()
            t_up = time.monotonic()
            up = wait_until(lambda: redis_status() == "up", 15, 0.2)
            recovery = time.monotonic() - t_up
            after_429 = auth_probe(app, "10.9.1.3")
            time.sleep(2)
        ok = (not load.failed and before_429 and during_429 and after_429 and down_seen
              and up and recovery <= 10)
        line = (f"redis: sent={load.sent} failed={len(load.failed)} writes_ok={len(ids)} "
                f"6th-login-429 before/during/after={before_429}/{during_429}/{after_429} "
                f"health.redis during outage={health_during} recovery={recovery:.1f}s (<=10s) "
                f"p99={p(load.latencies, 0.99) * 1000:.0f}ms"
                + (f" first failures={load.failed[:3]}" if load.failed else ""))
        return ok, line
    finally:
        if app:
            app.stop()
        rd.kill()
        pg.stop()


def login_from(app: App, login: str, ip: str) -> str:
    r = req(app.port, "POST", "/api/v1/auth/login", {"login": login, "password": PASSWORD},
            headers={"X-Forwarded-For": ip}, timeout=30)
    if r.status != 200:
        raise RuntimeError(f"login {login}: {r.status} {r.body[:200]!r}")
    return r.json()["access_token"]


def register_from(app: App, name: str, ip: str) -> str:
    r = req(app.port, "POST", "/api/v1/auth/register",
            {"email": f"{name}@example.com", "username": name, "password": PASSWORD},
            headers={"X-Forwarded-For": ip}, timeout=30)
    if r.status not in (200, 201):
        raise RuntimeError(f"register {name}: {r.status} {r.body[:200]!r}")
    return login_from(app, name, ip)


def auth_probe(app: App, ip: str) -> bool:
    """Six wrong-password logins from one fresh client address: the 6th must be 429."""
    codes = [req(app.port, "POST", "/api/v1/auth/login", {"login": "nobody-" + ip, "password": "wrong password 1"},
                 headers={"X-Forwarded-For": ip}, timeout=30).status for _ in range(6)]
    return codes[5] == 429 and all(c in (401, 400, 422) for c in codes[:5])


def drill_sigterm(binary: Path, work: Path):
    pg, app = Postgres(work), None
    try:
        pg.start()
        env = dict(HIGH, DATABASE_URL=pg.url, SHUTDOWN_DRAIN_DELAY="2s", SHUTDOWN_GRACE="10s")
        app = App(binary, work, "sigterm-app", env)
        user = app.user("sigtermdrill")
        draining = threading.Event()
        results = {"started": 0, "ok": 0, "failed": [], "refused_after_drain": 0, "slow": 0}
        lock = threading.Lock()

        def worker(w):
            i = 0
            while not draining.is_set() and i < 500:
                i += 1
                with lock:
                    results["started"] += 1
                try:
                    if w == 0:
                        # Slow-ish: an argon2id login on the blocking pool (hundreds of ms here).
                        r = req(app.port, "POST", "/api/v1/auth/login",
                                {"login": "sigtermdrill", "password": PASSWORD}, timeout=30)
                        with lock:
                            results["slow"] += 1
                    elif i % 2:
                        r = req(app.port, "POST", "/api/v1/claims", claim_body(f"s{w}-{i}"), token=user, timeout=30)
                    else:
                        r = req(app.port, "GET", "/api/v1/claims/trending", timeout=30)
                    with lock:
                        if 200 <= r.status < 300:
                            results["ok"] += 1
                        else:
                            results["failed"].append(str(r.status))
                except ConnectionRefusedError:
                    # Only acceptable once readiness already said 503 (a balancer would have left).
                    with lock:
                        if draining.is_set():
                            results["refused_after_drain"] += 1
                        else:
                            results["failed"].append("refused before drain")
                except Exception as e:
                    with lock:
                        results["failed"].append(f"{type(e).__name__}: {e}")
                time.sleep(0.01)

        threads = [threading.Thread(target=worker, args=(w,), daemon=True) for w in range(4)]
        for t in threads:
            t.start()
        time.sleep(2)
        t0 = time.monotonic()
        app.proc.send_signal(signal.SIGTERM)
        ready_503_at = None
        deadline = t0 + 5
        while time.monotonic() < deadline:
            try:
                if req(app.port, "GET", "/readyz", timeout=2).status == 503:
                    ready_503_at = time.monotonic() - t0
                    break
            except OSError:
                break  # listener closed before we saw 503
            time.sleep(0.05)
        # A balancer needs a moment to notice readiness: keep sending for 1 s of the 2 s drain
        # (those requests must still succeed), then stop sending new ones.
        time.sleep(1.0)
        draining.set()
        closed_at = None
        while time.monotonic() < t0 + 15:
            try:
                req(app.port, "GET", "/livez", timeout=1)
            except OSError:
                closed_at = time.monotonic() - t0
                break
            time.sleep(0.05)
        try:
            app.proc.wait(timeout=15)
            exit_at = time.monotonic() - t0
        except subprocess.TimeoutExpired:
            exit_at = None
        for t in threads:
            t.join(timeout=30)
        ok = (not results["failed"] and ready_503_at is not None and closed_at is not None
              and ready_503_at < closed_at and exit_at is not None and exit_at <= 2 + 10 and app.proc.returncode == 0)
        line = (f"sigterm: started={results['started']} ok={results['ok']} failed={len(results['failed'])} "
                f"slow_logins={results['slow']} readyz_503_after={fmt(ready_503_at)} "
                f"listener_closed_after={fmt(closed_at)} exit_after={fmt(exit_at)} (drain 2s, grace 10s) "
                f"exit_code={app.proc.returncode}"
                + (f" first failures={results['failed'][:3]}" if results["failed"] else ""))
        return ok, line
    finally:
        if app:
            app.stop()
        pg.stop()


def fmt(v):
    return "never" if v is None else f"{v:.2f}s"


def drill_postgres(binary: Path, work: Path):
    pg, app = Postgres(work), None
    try:
        pg.start()
        env = dict(HIGH, DATABASE_URL=pg.url, DB_ACQUIRE_TIMEOUT="2s", DB_CONNECT_TIMEOUT="2s")
        app = App(binary, work, "postgres-app", env)
        admin = app.login(ADMIN["ADMIN_USERNAME"])
        user = app.user("pgdrill")
        r = req(app.port, "POST", "/api/v1/claims", claim_body("resolved"), token=user)
        resolved = r.json()["id"]
        ra = req(app.port, "POST", f"/api/v1/claims/{resolved}/assign", token=admin)
        rv = req(app.port, "POST", f"/api/v1/claims/{resolved}/verdict",
                 {"label": "false", "explanation": "The budget report shows the cost was on target."}, token=admin)
        if rv.status >= 300:
            raise RuntimeError(f"could not resolve a claim: assign {ra.status}, verdict {rv.status} {rv.body[:200]!r}")
        for path in ("/api/v1/claims/trending", f"/api/v1/claims/{resolved}"):
            req(app.port, "GET", path)  # warm the caches
        ids: list[str] = []
        outage = threading.Event()
        stats = {"503": 0, "503_bad": [], "cached_ok": 0, "cached_fail": [], "slowest_outage": 0.0, "other": []}
        lock = threading.Lock()

        def step(w, i):
            kind = i % 3
            if kind == 0:
                r = req(app.port, "POST", "/api/v1/claims", claim_body(f"p{w}-{i}"), token=user, timeout=15)
            elif kind == 1:
                r = req(app.port, "GET", "/api/v1/claims/trending", timeout=15)
            else:
                r = req(app.port, "GET", f"/api/v1/claims/{resolved}", timeout=15)
            with lock:
                if outage.is_set():
                    stats["slowest_outage"] = max(stats["slowest_outage"], r.secs)
                if 200 <= r.status < 300:
                    if kind == 0:
                        ids.append(r.json()["id"])
                    elif outage.is_set():
                        stats["cached_ok"] += 1
                elif r.status == 503:
                    stats["503"] += 1
                    good = ("retry-after" in r.headers and r.headers.get("content-type", "").startswith(
                        "application/problem+json") and r.secs <= 3.0)
                    if not good:
                        stats["503_bad"].append(f"{r.headers.get('content-type')} ra={r.headers.get('retry-after')} "
                                                f"{r.secs:.1f}s")
                    if kind and outage.is_set():
                        stats["cached_fail"].append(f"{kind}:503")
                else:
                    stats["other"].append(f"{kind}:{r.status}")
            return True, ""

        with Load(4, step, max_requests=3000) as load:
            time.sleep(2)
            outage.set()
            pg.stop("fast")
            time.sleep(5)
            pg.start()
            t_up = time.monotonic()
            outage.clear()
            recovered = wait_until(lambda: req(app.port, "POST", "/api/v1/claims", claim_body("probe"),
                                                  token=user, timeout=5).status == 201, 15, 0.1)
            recovery = time.monotonic() - t_up
            time.sleep(2)
        if recovered:
            pass
        found = set(pg.psql("SELECT id FROM claims").split())
        lost = [i for i in ids if i not in found]
        ok = (recovered is not None and recovery <= 5 and not lost and stats["503"] > 0 and not stats["503_bad"]
              and not stats["cached_fail"] and stats["cached_ok"] > 0 and not stats["other"] and not load.failed)
        line = (f"postgres: sent={load.sent} transport_failed={len(load.failed)} writes_acked={len(ids)} "
                f"found={len(ids) - len(lost)} lost={len(lost)} 503s={stats['503']} (bad={len(stats['503_bad'])}) "
                f"slowest_during_outage={stats['slowest_outage']:.2f}s cached_reads_ok_during_outage={stats['cached_ok']} "
                f"cached_fail={len(stats['cached_fail'])} other={len(stats['other'])} recovery={recovery:.1f}s (<=5s)"
                + (f" samples={stats['503_bad'][:2] + stats['other'][:2] + load.failed[:2]}"
                   if stats["503_bad"] or stats["other"] or load.failed else ""))
        return ok, line
    finally:
        if app:
            app.stop()
        pg.stop()


def drill_slowloris(binary: Path, work: Path):
    app, socks = None, []
    try:
        # SQLite keeps this drill about the HTTP layer.
        app = App(binary, work, "slowloris-app", dict(HIGH, HEADER_READ_TIMEOUT="3s",
                                                       DATABASE_URL=f"sqlite://{work}/slow.db?mode=rwc"))
        t0 = time.monotonic()
        opened_at: dict[int, float] = {}
        open_lock = threading.Lock()

        def opener():
            for _ in range(125):
                s = socket.create_connection(("127.0.0.1", app.port), timeout=5)
                s.sendall(b"GET /api/health HTTP/1.1\r\nHost: drill\r\nX-Slow: ")
                with open_lock:
                    socks.append(s)
                    opened_at[s.fileno()] = time.monotonic()
        openers = [threading.Thread(target=opener, daemon=True) for _ in range(8)]
        for t in openers:
            t.start()
        for t in openers:
            t.join(timeout=60)
        if len(socks) != 1000:
            raise RuntimeError(f"opened only {len(socks)} of 1000 stalled connections")
        opened = time.monotonic() - t0
        by_fd = {s.fileno(): s for s in socks}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN | select.POLLHUP | select.POLLERR)
        closed_times: dict[int, float] = {}

        def reap(timeout_ms: int):
            """Collects connections the server closed (EOF or reset, maybe after a 408)."""
            for fd, _ in poller.poll(timeout_ms):
                s = by_fd[fd]
                try:
                    s.settimeout(0.5)
                    while s.recv(4096):
                        pass
                except OSError:
                    pass
                poller.unregister(fd)
                closed_times[fd] = time.monotonic() - opened_at[fd]

        reap(0)
        open_at_measure = 1000 - len(closed_times)
        lat, errs = [], 0
        c = http.client.HTTPConnection("127.0.0.1", app.port, timeout=5)
        for _ in range(200):
            t = time.monotonic()
            try:
                c.request("GET", "/api/health")
                r = c.getresponse()
                r.read()
                if r.status != 200:
                    errs += 1
            except Exception:
                errs += 1
                c.close()
                c = http.client.HTTPConnection("127.0.0.1", app.port, timeout=5)
            lat.append(time.monotonic() - t)
        c.close()
        measured_in = time.monotonic() - t0
        reap(0)
        open_after_measure = 1000 - len(closed_times)
        # Every stalled connection must be closed by the server within header timeout + 3 s slack
        # of its own opening.
        deadline = max(opened_at.values()) + 3 + 3
        while len(closed_times) < 1000 and time.monotonic() < deadline:
            reap(200)
        pending = 1000 - len(closed_times)
        closed = len(closed_times)
        late = sum(1 for v in closed_times.values() if v > 6)
        p99 = p(lat, 0.99) * 1000
        ok = p99 < 50 and errs == 0 and not pending and not late and open_after_measure >= 500
        line = (f"slowloris: stalled_conns=1000 opened_in={opened:.2f}s health_requests=200 errors={errs} "
                f"p50={p(lat, 0.5) * 1000:.1f}ms p99={p99:.1f}ms (<50ms) still_stalled_during={open_at_measure}->"
                f"{open_after_measure} closed_by_server={closed}/1000 close_after min/max="
                f"{min(closed_times.values(), default=0):.1f}/{max(closed_times.values(), default=0):.1f}s "
                f"(timeout 3s, limit 6s) measured_within={measured_in:.2f}s")
        return ok, line
    finally:
        for s in socks:
            s.close()
        if app:
            app.stop()


def drill_pool(binary: Path, work: Path):
    pg, app, holder = Postgres(work), None, None
    try:
        pg.start()
        env = dict(HIGH, DATABASE_URL=pg.url, DB_POOL_MAX="3", DB_POOL_MIN="1", DB_ACQUIRE_TIMEOUT="1s",
                   DB_STATEMENT_TIMEOUT="10s")
        app = App(binary, work, "pool-app", env)
        user = app.user("pooldrill")
        warm = req(app.port, "POST", "/api/v1/claims", claim_body("warm"), token=user)
        if warm.status != 201:
            raise RuntimeError(f"warm-up write failed: {warm.status}")
        before = app.metric("hakikisha_db_pool_acquire_timeouts_total")
        # Honest slow queries: a psql session holds an ACCESS EXCLUSIVE lock on claims for 4 s, so
        # every INSERT INTO claims waits on the lock while holding its pool connection.
        holder = subprocess.Popen(["psql", "-h", "127.0.0.1", "-p", str(pg.port), "-U", "postgres", "-d", "postgres",
                                   "-c", "BEGIN; LOCK TABLE claims IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(4); COMMIT;"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: pg.psql("SELECT count(*) FROM pg_locks WHERE mode='AccessExclusiveLock' "
                                   "AND relation='claims'::regclass").strip() == "1", 5, 0.05)
        results, lock = [], threading.Lock()

        def one(n):
            try:
                r = req(app.port, "POST", "/api/v1/claims", claim_body(f"pool{n}"), token=user, timeout=20)
                with lock:
                    results.append((r.status, r.secs, r.headers.get("retry-after")))
            except Exception as e:
                with lock:
                    results.append((f"{type(e).__name__}", 0.0, None))
        threads = [threading.Thread(target=one, args=(n,), daemon=True) for n in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        holder.wait(timeout=30)
        after = app.metric("hakikisha_db_pool_acquire_timeouts_total")
        ok2 = [r for r in results if r[0] == 201]
        fast503 = [r for r in results if r[0] == 503 and r[1] <= 2.0 and r[2]]
        other = [r for r in results if r not in ok2 and r not in fast503]
        healthy = wait_until(lambda: req(app.port, "POST", "/api/v1/claims", claim_body("after"), token=user,
                                         timeout=5).status == 201, 10)
        ok = len(fast503) >= 1 and not other and after > before and healthy is not None
        line = (f"pool: concurrent=12 pool_max=3 completed_201={len(ok2)} fast_503={len(fast503)} "
                f"other={len(other)} max_503_latency={max([r[1] for r in fast503], default=0):.2f}s "
                f"acquire_timeouts_total {before:.0f}->{after:.0f} healthy_after={healthy is not None}"
                + (f" other={other[:3]}" if other else ""))
        return ok, line
    finally:
        if holder and holder.poll() is None:
            holder.kill()
        if app:
            app.stop()
        pg.stop()


def drill_replica(binary: Path, work: Path):
    primary, replica, app = Postgres(work, "primary"), None, None
    try:
        primary.start()
        # A real streaming replica: base backup of the running primary with standby.signal (-R).
        replica = Postgres.__new__(Postgres)
        replica.dir, replica.port, replica.started = work / "replica", free_port(), False
        subprocess.run(["install", "-d", "-o", "postgres", "-m", "700", str(replica.dir)], check=True)
        r = subprocess.run(["runuser", "-u", "postgres", "--", str(PGBIN / "pg_basebackup"), "-h", "127.0.0.1",
                            "-p", str(primary.port), "-U", "postgres", "-D", str(replica.dir / "data"), "-R",
                            "-X", "stream"], capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"pg_basebackup failed: {r.stderr}")
        replica.start()
        if replica.psql("SELECT pg_is_in_recovery()").strip() != "t":
            raise RuntimeError("the replica is not in recovery")
        env = dict(HIGH, DATABASE_URL=primary.url, DATABASE_READ_URL=replica.url, DB_ACQUIRE_TIMEOUT="2s",
                   DB_CONNECT_TIMEOUT="2s")
        app = App(binary, work, "replica-app", env)
        user = app.user("replicadrill")

        def now() -> str:
            return replica.psql("SELECT now()").strip()

        def served_since(t: str) -> int:
            # Cumulative xact counters are flushed lazily in PostgreSQL 15, so read the sessions'
            # last statements instead: app connections on the replica that ran the blog search
            # after `t`.
            return int(replica.psql("SELECT count(*) FROM pg_stat_activity WHERE query ILIKE '%blogs%' "
                                    f"AND query_start > '{t}'").strip())

        def reads(n: int, tag: str) -> list[str]:
            # blogs.search is a replica-eligible read (db_read!) that is not cached.
            bad = []
            for i in range(n):
                try:
                    r = req(app.port, "GET", f"/api/v1/blogs/search?q=bridge{tag}{i}", timeout=10)
                    if r.status != 200:
                        bad.append(f"{r.status}")
                except Exception as e:
                    bad.append(f"{type(e).__name__}")
                time.sleep(0.02)
            return bad

        t0 = now()
        bad_before = reads(40, "a")
        on_replica_before = served_since(t0)
        fb0 = app.metric("hakikisha_db_replica_fallbacks_total")
        replica.stop("fast")
        bad_during = reads(40, "b")
        fb1 = app.metric("hakikisha_db_replica_fallbacks_total")
        replica.start()
        time.sleep(6)  # the app retries a replica marked down after 5 s
        t1 = now()
        bad_after = reads(40, "c")
        on_replica_after = served_since(t1)
        fb2 = app.metric("hakikisha_db_replica_fallbacks_total")
        # Writes still go to the primary and reach the replica by streaming.
        w = req(app.port, "POST", "/api/v1/claims", claim_body("replicated"), token=user)
        cid = w.json()["id"] if w.status == 201 else ""
        replicated = wait_until(lambda: replica.psql(f"SELECT count(*) FROM claims WHERE id='{cid}'").strip() == "1",
                                10) if cid else None
        ok = (not bad_before and not bad_during and not bad_after and on_replica_before >= 1 and fb1 > fb0
              and on_replica_after >= 1 and fb2 - fb1 < 40 and replicated is not None)
        line = (f"replica: reads before/during-outage/after=40/40/40 errors={len(bad_before)}/{len(bad_during)}/"
                f"{len(bad_after)} replica_sessions_serving_search before={on_replica_before} "
                f"after_restart={on_replica_after} (>=1) "
                f"replica_fallbacks_total {fb0:.0f}->{fb1:.0f}->{fb2:.0f} (before->outage->after) write_streamed_to_replica={replicated is not None}"
                + (f" samples={(bad_before + bad_during + bad_after)[:3]}" if bad_before + bad_during + bad_after else ""))
        return ok, line
    finally:
        if app:
            app.stop()
        if replica:
            replica.stop()
        primary.stop()


DRILLS = {"redis": drill_redis, "sigterm": drill_sigterm, "postgres": drill_postgres,
          "slowloris": drill_slowloris, "pool": drill_pool, "replica": drill_replica}


def main() -> int:
    args = sys.argv[1:]
    only = None
    if "--only" in args:
        i = args.index("--only")
        only = args[i + 1]
        del args[i:i + 2]
    if len(args) != 1 or (only and only not in DRILLS):
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        print(f"drills: {', '.join(DRILLS)}", file=sys.stderr)
        return 2
    binary = Path(args[0]).resolve()
    failed = []
    t_all = time.monotonic()
    for name, fn in DRILLS.items():
        if only and name != only:
            continue
        work = Path(tempfile.mkdtemp(prefix=f"hakikisha-drill-{name}-"))
        os.chmod(work, 0o755)
        t = time.monotonic()
        try:
            ok, line = fn(binary, work)
        except Exception as e:
            ok, line = False, f"{name}: ERROR {type(e).__name__}: {e}"
        print(f"[{'PASS' if ok else 'FAIL'}] {line} ({time.monotonic() - t:.0f}s)", flush=True)
        if ok:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"       logs kept in {work}", flush=True)
            failed.append(name)
    print(f"drills finished in {time.monotonic() - t_all:.0f}s; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
