#!/usr/bin/env python3
"""Consistency checks for the operations files (stdlib + PyYAML only).

    python3 scripts/check_observability.py                      # static checks
    python3 scripts/check_observability.py --scrape metrics.txt # ... and a live scrape

Static checks (exit 1 on any failure):
  * docker-compose.yml, prometheus.yml, prometheus/alerts.yml, the Grafana provisioning YAML
    and the dashboard JSON parse, and agree with each other where they overlap (scrape
    targets = app services, nginx upstreams = app services, datasource uid, panel ids);
  * every metric name used by a Prometheus alert, a Grafana alert rule, a dashboard panel or
    a dashboard variable is documented in docs/metrics.md;
  * each Prometheus alert and the Grafana rule of the same name use the same value
    expression (byte-identical), comparison, threshold, `for` and severity, and the alert
    table in docs/metrics.md says the same.

With --scrape FILE (a saved /metrics exposition, `-` for stdin) every metric name used is
also looked up in the scrape (histogram series `_bucket`/`_sum`/`_count` count as their
family); the missing ones are printed and the exit status is 1.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the machine
    sys.exit("check_observability: PyYAML is required (pip install pyyaml, or apt-get install python3-yaml)")

ROOT = Path(__file__).resolve().parent.parent

PROMETHEUS_CONFIG = ROOT / "prometheus.yml"
PROMETHEUS_ALERTS = ROOT / "prometheus" / "alerts.yml"
ALERTMANAGER_CONFIG = ROOT / "prometheus" / "alertmanager.yml"
COMPOSE = ROOT / "docker-compose.yml"
NGINX = ROOT / "deploy" / "nginx.conf"
GRAFANA_DATASOURCE = ROOT / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
GRAFANA_DASHBOARD_PROVIDER = ROOT / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
GRAFANA_RULES = ROOT / "grafana" / "provisioning" / "alerting" / "rules.yml"
GRAFANA_CONTACT_POINTS = ROOT / "grafana" / "provisioning" / "alerting" / "contact-points.yml"
DASHBOARD = ROOT / "grafana" / "dashboards" / "hakikisha.json"
METRICS_DOC = ROOT / "docs" / "metrics.md"

DATASOURCE_UID = "prometheus"
METRICS_PORT = 9464
API_PORT = 8080

# A metric name of this service: hakikisha_* or process_* (PromQL functions and label names
# never start with these).
METRIC_RE = re.compile(r"(?<![A-Za-z0-9_:$])((?:hakikisha|process)_[A-Za-z0-9_]+)")
STRING_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
LABEL_LIST_RE = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# `<value expression> <op> <number>` with the comparison last.
COMPARISON_RE = re.compile(r"^(?P<value>.*?)\s+(?P<op>==|!=|>=|<=|>|<)\s+(?P<threshold>[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*$", re.S)
GRAFANA_MATH_RE = re.compile(r"^\s*\$(?P<ref>[A-Z])\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<threshold>[-+]?[0-9.]+(?:[eE][-+]?[0-9]+)?)\s*$")
GRAFANA_EVALUATORS = {"gt": ">", "lt": "<"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


class Report:
    def __init__(self) -> None:
        self.errors: list[str] = []
        self.notes: list[str] = []

    def error(self, message: str) -> None:
        self.errors.append(message)

    def check(self, ok: bool, message: str) -> bool:
        if not ok:
            self.error(message)
        return ok


def rel(path: Path) -> str:
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


def load_yaml(path: Path, report: Report):
    try:
        with path.open(encoding="utf-8") as f:
            return yaml.safe_load(f)
    except FileNotFoundError:
        report.error(f"{rel(path)}: missing")
    except yaml.YAMLError as e:
        report.error(f"{rel(path)}: invalid YAML: {e}")
    return None


def load_json(path: Path, report: Report):
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        report.error(f"{rel(path)}: missing")
    except json.JSONDecodeError as e:
        report.error(f"{rel(path)}: invalid JSON: {e}")
    return None


# ---------------------------------------------------------------------------- metric names

def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression, ignoring strings, label lists and label names."""
    text = STRING_RE.sub('""', expr)
    text = LABEL_LIST_RE.sub(" ", text)
    names = set()
    for m in METRIC_RE.finditer(text):
        rest = text[m.end():]
        # A label matcher (`name=`, `name!=`, `name=~`, `name!~`), not `name == 0`.
        if re.match(r"\s*(?:=~|!~|!=|=(?!=))", rest):
            continue
        names.add(m.group(1))
    return names


def family(name: str, histograms: set[str]) -> str:
    """The metric family a series name belongs to (histogram series -> the histogram)."""
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if suffix == "_bucket" or base in histograms:
                return base
    return name


# ---------------------------------------------------------------------------- docs/metrics.md

def markdown_sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = ""
    for line in text.splitlines():
        m = re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            current = m.group(1).strip().lower()
            sections.setdefault(current, [])
        else:
            sections.setdefault(current, []).append(line)
    return sections


def table_rows(lines: list[str]) -> list[list[str]]:
    rows = []
    for line in lines:
        if not line.startswith("|") or re.match(r"^\|[\s:|-]+\|?\s*$", line):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        rows.append(cells)
    return rows[1:] if rows else []  # drop the header


def unquote(cell: str) -> str:
    m = re.search(r"`([^`]*)`", cell)
    return m.group(1) if m else cell.strip()


def parse_metrics_doc(report: Report):
    """Documented metrics {name: type} and alerts {name: {threshold, for, severity}}."""
    try:
        text = METRICS_DOC.read_text(encoding="utf-8")
    except FileNotFoundError:
        report.error(f"{rel(METRICS_DOC)}: missing")
        return {}, {}
    metrics: dict[str, str] = {}
    alerts: dict[str, dict[str, str]] = {}
    for title, lines in markdown_sections(text).items():
        rows = table_rows(lines)
        if title.startswith("metrics") or title.startswith("metric reference"):
            for cells in rows:
                if len(cells) >= 2 and cells[0].startswith("`"):
                    for name in re.findall(r"`([a-z_:][a-z0-9_:]*)`", cells[0]):
                        metrics[name] = cells[1].strip().lower()
        elif title.startswith("alerts"):
            for cells in rows:
                if len(cells) >= 5 and cells[0].startswith("`"):
                    alerts[unquote(cells[0])] = {
                        "threshold": unquote(cells[2]),
                        "for": unquote(cells[3]),
                        "severity": unquote(cells[4]),
                    }
    report.check(bool(metrics), f"{rel(METRICS_DOC)}: no metric table found under a 'Metrics' heading")
    report.check(bool(alerts), f"{rel(METRICS_DOC)}: no alert table found under an 'Alerts' heading")
    return metrics, alerts


# ---------------------------------------------------------------------------- Prometheus

def check_prometheus(report: Report, compose_apps: set[str]):
    """Returns {alert name: rule dict with value/op/threshold parsed}."""
    config = load_yaml(PROMETHEUS_CONFIG, report)
    if isinstance(config, dict):
        rule_files = config.get("rule_files") or []
        report.check("prometheus/alerts.yml" in rule_files,
                     f"{rel(PROMETHEUS_CONFIG)}: rule_files must include prometheus/alerts.yml")
        for rf in rule_files:
            report.check((PROMETHEUS_CONFIG.parent / rf).exists(), f"{rel(PROMETHEUS_CONFIG)}: rule file {rf} not found")
        jobs = {j.get("job_name"): j for j in config.get("scrape_configs") or []}
        report.check("prometheus" in jobs, f"{rel(PROMETHEUS_CONFIG)}: Prometheus does not scrape itself")
        app_job = jobs.get("hakikisha")
        if report.check(app_job is not None, f"{rel(PROMETHEUS_CONFIG)}: no scrape job 'hakikisha'"):
            targets = {t for sc in app_job.get("static_configs") or [] for t in sc.get("targets") or []}
            expected = {f"{svc}:{METRICS_PORT}" for svc in compose_apps}
            report.check(targets == expected,
                         f"{rel(PROMETHEUS_CONFIG)}: hakikisha targets {sorted(targets)} != compose app services {sorted(expected)}")
        ams = [t for am in (config.get("alerting") or {}).get("alertmanagers") or []
               for sc in am.get("static_configs") or [] for t in sc.get("targets") or []]
        report.check("alertmanager:9093" in ams, f"{rel(PROMETHEUS_CONFIG)}: alertmanager:9093 is not configured")

    load_yaml(ALERTMANAGER_CONFIG, report)

    rules = load_yaml(PROMETHEUS_ALERTS, report)
    alerts: dict[str, dict] = {}
    if not isinstance(rules, dict):
        return alerts
    for group in rules.get("groups") or []:
        for rule in group.get("rules") or []:
            name = rule.get("alert")
            if not name:
                continue
            where = f"{rel(PROMETHEUS_ALERTS)}: {name}"
            report.check(name not in alerts, f"{where}: defined twice")
            expr = str(rule.get("expr", "")).strip()
            m = COMPARISON_RE.match(expr)
            if not report.check(m is not None, f"{where}: expr must end with '<op> <threshold>': {expr}"):
                continue
            report.check(bool(rule.get("for")), f"{where}: no 'for'")
            report.check(bool((rule.get("labels") or {}).get("severity")), f"{where}: no severity label")
            annotations = rule.get("annotations") or {}
            report.check(bool(annotations.get("summary")) and bool(annotations.get("description")),
                         f"{where}: needs summary and description annotations")
            alerts[name] = {
                "expr": expr,
                "value": m.group("value").strip(),
                "op": m.group("op"),
                "threshold": float(m.group("threshold")),
                "threshold_text": m.group("threshold"),
                "for": str(rule.get("for", "")),
                "severity": (rule.get("labels") or {}).get("severity"),
            }
    return alerts


# ---------------------------------------------------------------------------- Grafana

def walk_panels(panels):
    for p in panels or []:
        yield p
        yield from walk_panels(p.get("panels"))


def check_dashboard(report: Report):
    """Returns (panel ids, {panel title: [exprs]}, [variable queries])."""
    dashboard = load_json(DASHBOARD, report)
    if not isinstance(dashboard, dict):
        return set(), {}, [], None
    where = rel(DASHBOARD)
    report.check(bool(dashboard.get("uid")), f"{where}: no uid")
    report.check(isinstance(dashboard.get("schemaVersion"), int), f"{where}: no schemaVersion")
    ids: set[int] = set()
    exprs: dict[str, list[str]] = {}
    cells: dict[tuple[int, int], str] = {}
    for p in walk_panels(dashboard.get("panels")):
        pid, title = p.get("id"), p.get("title", "?")
        report.check(isinstance(pid, int) and pid not in ids, f"{where}: panel '{title}' has a missing or duplicate id {pid}")
        ids.add(pid)
        g = p.get("gridPos") or {}
        for x in range(g.get("x", 0), g.get("x", 0) + g.get("w", 0)):
            for y in range(g.get("y", 0), g.get("y", 0) + g.get("h", 0)):
                other = cells.get((x, y))
                if other is not None and other != f"{pid}":
                    report.error(f"{where}: panel '{title}' overlaps panel id {other}")
                    break
                cells[(x, y)] = f"{pid}"
            else:
                continue
            break
        if p.get("type") == "row":
            continue
        ds = p.get("datasource") or {}
        report.check(ds.get("uid") == DATASOURCE_UID, f"{where}: panel '{title}' does not use datasource uid '{DATASOURCE_UID}'")
        targets = p.get("targets") or []
        report.check(bool(targets), f"{where}: panel '{title}' has no query")
        for t in targets:
            tds = t.get("datasource") or ds
            report.check(tds.get("uid") == DATASOURCE_UID, f"{where}: a query of '{title}' does not use datasource uid '{DATASOURCE_UID}'")
            if t.get("expr"):
                exprs.setdefault(title, []).append(t["expr"])
    variables = []
    for v in (dashboard.get("templating") or {}).get("list") or []:
        query = v.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if isinstance(query, str) and v.get("type") == "query":
            variables.append(query)
    return ids, exprs, variables, dashboard.get("uid")


def grafana_rule_condition(rule: dict, report: Report, where: str):
    """(value expr, op, threshold) from a Grafana rule shaped A (query) -> B (reduce) -> C."""
    data = {d.get("refId"): d for d in rule.get("data") or []}
    a, b = data.get("A"), data.get("B")
    cond = data.get(rule.get("condition"))
    if not report.check(a is not None and b is not None and cond is not None,
                        f"{where}: needs refIds A (query), B (reduce) and the condition"):
        return None
    report.check(a.get("datasourceUid") == DATASOURCE_UID, f"{where}: refId A must query datasource uid '{DATASOURCE_UID}'")
    bm = b.get("model") or {}
    report.check(bm.get("type") == "reduce" and bm.get("expression") == "A", f"{where}: refId B must reduce A")
    cm = cond.get("model") or {}
    op = threshold = None
    if cm.get("type") == "threshold":
        report.check(cm.get("expression") == "B", f"{where}: the threshold must apply to B")
        conditions = cm.get("conditions") or [{}]
        evaluator = conditions[0].get("evaluator") or {}
        op = GRAFANA_EVALUATORS.get(evaluator.get("type"))
        params = evaluator.get("params") or []
        threshold = float(params[0]) if params else None
    elif cm.get("type") == "math":
        m = GRAFANA_MATH_RE.match(str(cm.get("expression", "")))
        if m and m.group("ref") == "B":
            op, threshold = m.group("op"), float(m.group("threshold"))
    if not report.check(op is not None and threshold is not None,
                        f"{where}: condition must be a threshold (gt/lt) on B or a math '$B <op> <number>'"):
        return None
    expr = str((a.get("model") or {}).get("expr", ""))
    return expr, op, threshold


def check_grafana(report: Report, panel_ids: set[int], dashboard_uid):
    """Returns {rule title: {...}}."""
    ds = load_yaml(GRAFANA_DATASOURCE, report)
    if isinstance(ds, dict):
        sources = ds.get("datasources") or []
        prom = [s for s in sources if s.get("uid") == DATASOURCE_UID]
        if report.check(len(prom) == 1, f"{rel(GRAFANA_DATASOURCE)}: needs one datasource with uid '{DATASOURCE_UID}'"):
            report.check(prom[0].get("type") == "prometheus" and prom[0].get("url") == "http://prometheus:9090",
                         f"{rel(GRAFANA_DATASOURCE)}: the '{DATASOURCE_UID}' datasource must be prometheus at http://prometheus:9090")
    providers = load_yaml(GRAFANA_DASHBOARD_PROVIDER, report)
    if isinstance(providers, dict):
        paths = [(p.get("options") or {}).get("path") for p in providers.get("providers") or []]
        report.check("/var/lib/grafana/dashboards" in paths,
                     f"{rel(GRAFANA_DASHBOARD_PROVIDER)}: no file provider for /var/lib/grafana/dashboards")
    contact = load_yaml(GRAFANA_CONTACT_POINTS, report)
    receivers = set()
    if isinstance(contact, dict):
        for cp in contact.get("contactPoints") or []:
            receivers.add(cp.get("name"))
            for r in cp.get("receivers") or []:
                if r.get("type") == "webhook":
                    report.check("$GRAFANA_ALERT_WEBHOOK_URL" in str((r.get("settings") or {}).get("url")),
                                 f"{rel(GRAFANA_CONTACT_POINTS)}: the webhook URL must come from $GRAFANA_ALERT_WEBHOOK_URL")
        for policy in contact.get("policies") or []:
            report.check(policy.get("receiver") in receivers,
                         f"{rel(GRAFANA_CONTACT_POINTS)}: policy receiver {policy.get('receiver')} is not a contact point")

    doc = load_yaml(GRAFANA_RULES, report)
    rules: dict[str, dict] = {}
    if not isinstance(doc, dict):
        return rules
    report.check(doc.get("apiVersion") == 1, f"{rel(GRAFANA_RULES)}: apiVersion must be 1")
    for group in doc.get("groups") or []:
        for rule in group.get("rules") or []:
            title = rule.get("title")
            where = f"{rel(GRAFANA_RULES)}: {title}"
            report.check(title not in rules, f"{where}: defined twice")
            report.check(bool(rule.get("uid")), f"{where}: no uid")
            parsed = grafana_rule_condition(rule, report, where)
            if parsed is None:
                continue
            annotations = rule.get("annotations") or {}
            if "__panelId__" in annotations:
                report.check(int(annotations["__panelId__"]) in panel_ids, f"{where}: __panelId__ {annotations['__panelId__']} is not a dashboard panel")
                report.check(annotations.get("__dashboardUid__") == dashboard_uid, f"{where}: __dashboardUid__ is not the dashboard's uid")
            for key in (rule.get("labels") or {}).values():
                report.check("$" not in str(key), f"{where}: Grafana interpolates environment variables in labels; escape '$' as '$$'")
            rules[title] = {
                "value": parsed[0], "op": parsed[1], "threshold": parsed[2],
                "for": str(rule.get("for", "")),
                "severity": (rule.get("labels") or {}).get("severity"),
            }
    return rules


# ---------------------------------------------------------------------------- compose

def check_compose(report: Report) -> set[str]:
    """Returns the app services (built from the Dockerfile)."""
    compose = load_yaml(COMPOSE, report)
    if not isinstance(compose, dict):
        return set()
    where = rel(COMPOSE)
    services = compose.get("services") or {}
    for required in ("lb", "postgres", "redis", "prometheus", "alertmanager", "grafana"):
        report.check(required in services, f"{where}: no '{required}' service")
    apps = {name for name, s in services.items() if isinstance(s, dict) and s.get("build")}
    report.check(len(apps) >= 2, f"{where}: expected at least two app replicas built from the Dockerfile, got {sorted(apps)}")
    for name in sorted(apps):
        s = services[name]
        env = s.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for var in ("DATABASE_URL", "REDIS_URL", "HAKIKISHA_ENV", "JWT_SECRET", "BIND_ADDR", "METRICS_ADDR", "LOG_FORMAT"):
            report.check(var in env, f"{where}: {name} does not set {var}")
        report.check(str(env.get("JWT_SECRET", "")).startswith("${JWT_SECRET:?"),
                     f"{where}: {name} must require JWT_SECRET with ${{JWT_SECRET:?...}}")
        report.check(str(env.get("METRICS_ADDR", "")).endswith(f":{METRICS_PORT}"), f"{where}: {name} METRICS_ADDR must use port {METRICS_PORT}")
        report.check("/readyz" in " ".join(map(str, (s.get("healthcheck") or {}).get("test") or [])),
                     f"{where}: {name} healthcheck must probe /readyz")
        deps = s.get("depends_on") or {}
        for dep in ("postgres", "redis"):
            report.check(isinstance(deps, dict) and (deps.get(dep) or {}).get("condition") == "service_healthy",
                         f"{where}: {name} must wait for {dep} to be healthy")
    for name, s in services.items():
        hc = (s or {}).get("healthcheck")
        report.check(bool(hc and hc.get("test")), f"{where}: {name} has no healthcheck")
        for volume in (s or {}).get("volumes") or []:
            source = str(volume).split(":", 1)[0]
            if source.startswith("./"):
                report.check((ROOT / source).exists(), f"{where}: {name} mounts {source}, which does not exist")
    try:
        nginx = NGINX.read_text(encoding="utf-8")
        upstreams = set(re.findall(r"^\s*server\s+([A-Za-z0-9_.-]+:\d+)", nginx, re.M))
        expected = {f"{a}:{API_PORT}" for a in apps}
        report.check(upstreams == expected, f"{rel(NGINX)}: upstream servers {sorted(upstreams)} != app services {sorted(expected)}")
        report.check("X-Forwarded-For" in nginx, f"{rel(NGINX)}: does not set X-Forwarded-For")
    except FileNotFoundError:
        report.error(f"{rel(NGINX)}: missing")
    return apps


# ---------------------------------------------------------------------------- PromQL syntax

GRAFANA_VARIABLES = {
    "$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h",
    "${instance}": ".*", "$instance": ".*", "${route}": ".*", "$route": ".*",
}


def check_promql_syntax(report: Report, queries: list[tuple[str, str]]) -> bool | None:
    """Parses every query with `promtool check rules` (as recording rules). None: no promtool."""
    promtool = shutil.which("promtool")
    if not promtool:
        return None
    rules = []
    for i, (source, expr) in enumerate(queries):
        for var, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(var, value)
        rules.append({"record": f"check:query_{i}", "expr": expr, "labels": {"source": source}})
    with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as f:
        yaml.safe_dump({"groups": [{"name": "syntax", "rules": rules}]}, f)
        path = f.name
    try:
        result = subprocess.run([promtool, "check", "rules", path], capture_output=True, text=True)
    finally:
        Path(path).unlink()
    if result.returncode != 0:
        detail = (result.stdout + result.stderr).strip()
        for m in re.finditer(r"group \"syntax\", rule (\d+)", detail):
            report.error(f"PromQL does not parse: {queries[int(m.group(1)) - 1][0]}")
        report.error(f"promtool check rules on the dashboard/Grafana queries failed:\n{detail}")
        return False
    return True


# ---------------------------------------------------------------------------- scrape

def parse_scrape(text: str) -> tuple[set[str], dict[str, str]]:
    samples: set[str] = set()
    types: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if line.startswith("#"):
            parts = line.split()
            if len(parts) >= 4 and parts[1] == "TYPE":
                types[parts[2]] = parts[3]
            continue
        m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
        if m:
            samples.add(m.group(0))
    return samples, types


def present_in_scrape(name: str, samples: set[str], types: dict[str, str]) -> bool:
    if name in samples:
        return True
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            base = name[: -len(suffix)]
            if types.get(base) in ("histogram", "summary") or f"{base}_bucket" in samples or f"{base}_count" in samples:
                return True
    # A histogram family referred to by its own name.
    return types.get(name) is not None or f"{name}_bucket" in samples


# ---------------------------------------------------------------------------- main

def fmt_threshold(value: float) -> str:
    return f"{value:g}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scrape", metavar="FILE", help="a saved /metrics exposition ('-' for stdin)")
    parser.add_argument("--no-promtool", action="store_true",
                        help="skip parsing the panel and Grafana rule queries with promtool")
    args = parser.parse_args(argv)

    report = Report()
    apps = check_compose(report)
    prom_alerts = check_prometheus(report, apps)
    panel_ids, panel_exprs, variable_queries, dashboard_uid = check_dashboard(report)
    grafana_rules = check_grafana(report, panel_ids, dashboard_uid)
    documented, doc_alerts = parse_metrics_doc(report)
    histograms = {n for n, t in documented.items() if t.startswith("histogram")}

    # (b) metric names by source.
    used: dict[str, set[str]] = {}

    def use(names: set[str], source: str) -> None:
        for n in names:
            used.setdefault(n, set()).add(source)

    for name, a in prom_alerts.items():
        use(metric_names(a["expr"]), f"prometheus alert {name}")
    for name, r in grafana_rules.items():
        use(metric_names(r["value"]), f"grafana rule {name}")
    for title, exprs in panel_exprs.items():
        for e in exprs:
            use(metric_names(e), f"panel {title}")
    for q in variable_queries:
        use(metric_names(q), "dashboard variable")

    if not args.no_promtool:
        queries = [(f"panel '{t}'", e) for t, exprs in panel_exprs.items() for e in exprs]
        queries += [(f"grafana rule {n}", r["value"]) for n, r in grafana_rules.items()]
        parsed = check_promql_syntax(report, queries)
        if parsed is None:
            report.notes.append("promtool not found: panel and Grafana rule queries were not parsed")
        elif parsed:
            print(f"promtool parsed all {len(queries)} dashboard and Grafana rule queries.\n")

    families = {}
    for n, sources in used.items():
        families.setdefault(family(n, histograms), set()).update(sources)

    print(f"Metric names used by alerts, Grafana rules and dashboard panels ({len(used)} series names, {len(families)} families):")
    for n in sorted(used):
        f = family(n, histograms)
        suffix = f"  (family {f})" if f != n else ""
        print(f"  {n}{suffix}")

    # Every used metric is documented.
    for f in sorted(families):
        report.check(f in documented, f"{rel(METRICS_DOC)}: {f} is used ({', '.join(sorted(families[f])[:3])}) but not documented")
    unused = sorted(set(documented) - set(families))
    if unused:
        report.notes.append("documented metrics shown by no panel or alert: " + ", ".join(unused))

    # (c) Prometheus alerts vs Grafana rules vs docs.
    print("\nAlerts (Prometheus rule = Grafana rule = docs/metrics.md):")
    for name in sorted(set(prom_alerts) | set(grafana_rules) | set(doc_alerts)):
        p, g, d = prom_alerts.get(name), grafana_rules.get(name), doc_alerts.get(name)
        ok = True
        if not p:
            ok = report.check(False, f"{name}: Grafana rule or docs entry without a Prometheus rule")
        if not g:
            ok = report.check(False, f"{name}: no Grafana rule of this name in {rel(GRAFANA_RULES)}") and ok
        if not d:
            ok = report.check(False, f"{name}: not in the alert table of {rel(METRICS_DOC)}") and ok
        if p and g:
            ok = report.check(p["value"] == g["value"],
                              f"{name}: Grafana refId A differs from the Prometheus expression\n"
                              f"    prometheus: {p['value']}\n    grafana:    {g['value']}") and ok
            ok = report.check((p["op"], p["threshold"]) == (g["op"], g["threshold"]),
                              f"{name}: threshold differs: prometheus {p['op']} {fmt_threshold(p['threshold'])}, "
                              f"grafana {g['op']} {fmt_threshold(g['threshold'])}") and ok
            ok = report.check(p["for"] == g["for"], f"{name}: 'for' differs: prometheus {p['for']}, grafana {g['for']}") and ok
            ok = report.check(p["severity"] == g["severity"],
                              f"{name}: severity differs: prometheus {p['severity']}, grafana {g['severity']}") and ok
        if p and d:
            doc_cmp = COMPARISON_RE.match("x " + d["threshold"])
            same = doc_cmp is not None and (doc_cmp.group("op"), float(doc_cmp.group("threshold"))) == (p["op"], p["threshold"])
            ok = report.check(same, f"{name}: docs threshold '{d['threshold']}' != prometheus '{p['op']} {p['threshold_text']}'") and ok
            ok = report.check(d["for"] == p["for"], f"{name}: docs 'for' {d['for']} != prometheus {p['for']}") and ok
            ok = report.check(d["severity"] == p["severity"], f"{name}: docs severity {d['severity']} != prometheus {p['severity']}") and ok
        if p:
            status = "ok" if ok else "MISMATCH"
            condition = f"{p['op']} {p['threshold_text']}"
            print(f"  {name:<18} {condition:<7} for {p['for']:<4} {p['severity']:<9} {status}")

    # (d) live scrape.
    missing: list[str] = []
    if args.scrape:
        text = sys.stdin.read() if args.scrape == "-" else Path(args.scrape).read_text(encoding="utf-8")
        samples, types = parse_scrape(text)
        for n in sorted(used):
            if not present_in_scrape(n, samples, types):
                missing.append(n)
        print(f"\nScrape {args.scrape}: {len(samples)} series names, {len(types)} typed families")
        if missing:
            print(f"Missing from the scrape ({len(missing)}):")
            for n in missing:
                print(f"  {n}  (used by {', '.join(sorted(used[n]))})")
        else:
            print("Every metric name used is present in the scrape.")

    for note in report.notes:
        print(f"\nnote: {note}")
    if report.errors:
        print(f"\nFAILED: {len(report.errors)} problem(s):", file=sys.stderr)
        for e in report.errors:
            print(f"  - {e}", file=sys.stderr)
    ok = not report.errors and not missing
    print("\ncheck_observability: " + ("OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
