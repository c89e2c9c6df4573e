#!/usr/bin/env python3
"""Proves the dashboards and alerts point at metrics the service really exports.

    python3 scripts/live_metrics_check.py target/release/hakikisha [OUT_DIR]

1. Starts the binary on a fresh SQLite database (with Redis when HAKIKISHA_TEST_REDIS_URL is
   set, and an in-process fake OpenAI-compatible provider so the AI metrics exist), exercises
   every capability over HTTP (accounts, claims, cache, a rate-limit refusal, a job run, an AI
   call), and saves a scrape of /metrics.
2. Runs scripts/check_observability.py --scrape on it: every metric name used by a Grafana panel,
   a Grafana alert rule or a Prometheus alert must be in the scrape.
3. When the `prometheus` binary is installed, runs a real Prometheus (from prometheus.yml, the
   targets pointed at the app, 1 s scrapes) and evaluates every dashboard panel query and alert
   expression through its HTTP API: each must be a valid query that Prometheus accepts.

Loopback only; everything it starts is stopped at the end.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fake_ai  # noqa: E402 (the fake provider beside this script)

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "metrics check pass 1"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(method, url, body=None, token=None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=30) as res:
            raw = res.read()
            return res.status, (json.loads(raw) if raw[:1] in (b"{", b"[") else raw)
    except urllib.error.HTTPError as e:
        raw = e.read()
        return e.code, (json.loads(raw) if raw[:1] in (b"{", b"[") else raw)


def exercise(base: str):
    """Touches every capability so each metric family has at least one series."""
    admin = call("POST", f"{base}/api/v1/auth/login", {"login": "ops", "password": PASSWORD})[1]["access_token"]
    call("POST", f"{base}/api/v1/auth/register",
         {"email": "m@example.com", "username": "metricsuser", "password": "correct horse 42"})
    user = call("POST", f"{base}/api/v1/auth/login",
                {"login": "metricsuser", "password": "correct horse 42"})[1]["access_token"]
    status, claim = call("POST", f"{base}/api/v1/claims",
                         {"text": "The river bridge cost twice its budget", "category": "economy"}, user)
    assert status == 201, claim
    cid = claim["id"]
    # Give the AI worker a moment, then review.
    time.sleep(2)
    call("POST", f"{base}/api/v1/claims/{cid}/assign", {}, admin)
    call("POST", f"{base}/api/v1/claims/{cid}/verdict",
         {"label": "false", "explanation": "Budget records.", "sources": [{"title": "B", "url": "https://example.org/b"}]},
         admin)
    for _ in range(3):
        for path in ["/api/v1/claims/trending", f"/api/v1/claims/{cid}", "/api/v1/blogs", "/api/v1/users/metricsuser",
                     "/api/v1/claims?limit=5", "/api/v1/claims/search?q=bridge", "/api/health", "/no/such/route"]:
            call("GET", f"{base}{path}")
    call("POST", f"{base}/api/v1/ai/fact-check", {"text": "The moon is made of cheese"}, user)
    call("POST", f"{base}/api/v1/ai/fact-check", {"text": "The moon is made of cheese"}, user)
    call("GET", f"{base}/api/v1/ai/health", None, user)
    status, key = call("POST", f"{base}/api/v1/keys", {"name": "k", "service": "OpenAI", "secret": "sk-metrics-0123456789",
                                                      "passphrase": "a long passphrase"}, user)
    assert status == 201, key
    call("POST", f"{base}/api/v1/keys/{key['id']}/reveal", {"passphrase": "a long passphrase"}, user)
    call("POST", f"{base}/api/v1/keys/{key['id']}/reveal", {"passphrase": "not the passphrase"}, user)
    call("POST", f"{base}/api/v1/usage", {"key_id": key["id"], "endpoint": "/v1/chat", "method": "POST",
                                         "status_code": 200, "latency_ms": 20}, user)
    status, jobs = call("GET", f"{base}/api/v1/admin/jobs", None, admin)
    assert status == 200, jobs
    items = jobs.get("items", jobs) if isinstance(jobs, dict) else jobs
    for job in items:
        call("POST", f"{base}/api/v1/admin/jobs/{job['name']}/run", {}, admin)
    # Past the auth tier (RATE_LIMIT_AUTH=8/15m here): refusals and a block.
    for _ in range(12):
        call("POST", f"{base}/api/v1/auth/login", {"login": "metricsuser", "password": "wrong password 1"})
    call("GET", f"{base}/api/v1/admin/rate-limits", None, admin)


def panel_queries() -> list[tuple[str, str]]:
    d = json.loads((ROOT / "grafana/dashboards/hakikisha.json").read_text())
    out = []

    def walk(panels):
        for p in panels:
            walk(p.get("panels", []))
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append((f"panel '{p.get('title')}'", t["expr"]))

    walk(d.get("panels", []))
    alerts = yaml.safe_load((ROOT / "prometheus/alerts.yml").read_text())
    for g in alerts.get("groups", []):
        for r in g.get("rules", []):
            if "alert" in r:
                out.append((f"alert {r['alert']}", r["expr"]))
    return out


def substitute(expr: str) -> str:
    return (expr.replace("$__rate_interval", "30s").replace("${__range}", "5m").replace("$__range", "5m")
            .replace("$instance", ".*").replace("${instance}", ".*").replace("$route", ".*").replace("${route}", ".*"))


def run_prometheus(metrics_addr: str, work: Path) -> bool:
    prom = shutil.which("prometheus")
    if not prom:
        print("prometheus is not installed: panel queries were checked by name only (install Debian's prometheus)")
        return True
    config = yaml.safe_load((ROOT / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = "1s"
    config["global"]["scrape_timeout"] = "1s"
    config["global"]["evaluation_interval"] = "1s"
    config.pop("alerting", None)
    config["rule_files"] = [str(ROOT / "prometheus/alerts.yml")]
    config["scrape_configs"] = [c for c in config["scrape_configs"] if c["job_name"] == "hakikisha"]
    config["scrape_configs"][0]["static_configs"] = [{"targets": [metrics_addr]}]
    (work / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = open(work / "prometheus.log", "w")
    p = subprocess.Popen([prom, f"--config.file={work / 'prometheus.yml'}", f"--storage.tsdb.path={work / 'tsdb'}",
                          f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            if p.poll() is not None:
                log.flush()
                print("prometheus exited:\n" + (work / "prometheus.log").read_text()[-2000:])
                return False
            try:
                st, body = call("GET", f"{api}/query?query=" + urllib.parse.quote("count(hakikisha_http_requests_total)"))
                if st == 200 and body["data"]["result"]:
                    break
            except Exception:
                pass
            time.sleep(0.5)
        time.sleep(5)  # a few more scrapes, so rate() has points
        failed, empty = [], []
        queries = panel_queries()
        for source, expr in queries:
            st, body = call("GET", f"{api}/query?query=" + urllib.parse.quote(substitute(expr)))
            if st != 200 or body.get("status") != "success":
                failed.append(f"{source}: {body.get('error') if isinstance(body, dict) else body}")
            elif not body["data"]["result"]:
                empty.append(source)
        print(f"Prometheus evaluated {len(queries)} panel and alert queries: {len(failed)} failed, "
              f"{len(queries) - len(failed) - len(empty)} with data, {len(empty)} empty (no such event in this run)")
        for e in empty:
            print(f"  empty: {e}")
        for f in failed:
            print(f"  FAILED: {f}")
        return not failed
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=30)
        log.close()


def main() -> int:
    binary = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT / "target/release/hakikisha").resolve()
    out = Path(sys.argv[2] if len(sys.argv) > 2 else ROOT / "target/ci-logs")
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="hakikisha-metrics-"))
    fake = fake_ai.serve(0)
    threading.Thread(target=fake.serve_forever, daemon=True).start()
    port, mport = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE", "REDIS", "AI_", "RATE_LIMIT"))}
    env.update({
        "BIND_ADDR": f"127.0.0.1:{port}", "METRICS_ADDR": f"127.0.0.1:{mport}",
        "ADMIN_EMAIL": "ops@example.com", "ADMIN_USERNAME": "ops", "ADMIN_PASSWORD": PASSWORD,
        "AI_BASE_URL": f"http://127.0.0.1:{fake.server_address[1]}", "AI_API_KEY": "fake-key-for-metrics-check",
        "RATE_LIMIT_AUTH": "8/15m",
    })
    if os.environ.get("HAKIKISHA_TEST_REDIS_URL"):
        env.update({"REDIS_URL": os.environ["HAKIKISHA_TEST_REDIS_URL"], "REDIS_KEY_PREFIX": f"metrics-check-{os.getpid()}:"})
    log = open(out / "metrics-check-server.log", "w")
    app = subprocess.Popen([str(binary), "serve"], env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    ok = False
    try:
        for _ in range(200):
            try:
                urllib.request.urlopen(f"{base}/readyz", timeout=1)
                break
            except Exception:
                time.sleep(0.05)
        exercise(base)
        time.sleep(6)  # one sampler tick: pool, process and Redis gauges
        started = time.time()
        scrape = urllib.request.urlopen(f"http://127.0.0.1:{mport}/metrics", timeout=10).read()
        took = (time.time() - started) * 1000
        (out / "metrics.txt").write_bytes(scrape)
        lines = scrape.count(b"\n")
        print(f"scrape: {len(scrape):,} bytes, {lines:,} lines in {took:.1f} ms")
        names = subprocess.run([sys.executable, str(ROOT / "scripts/check_observability.py"), "--no-promtool",
                                "--scrape", str(out / "metrics.txt")], cwd=ROOT)
        ok = names.returncode == 0
        ok = run_prometheus(f"127.0.0.1:{mport}", work) and ok
    finally:
        app.send_signal(signal.SIGTERM)
        app.wait(timeout=40)
        log.close()
        fake.shutdown()
    print("live metrics check: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
