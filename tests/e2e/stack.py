"""Helpers shared by the shipped-stack tests (and bench/runaway.py): finding the Prometheus tools, the dashboards'
queries, a receiver that records what Alertmanager sends, and the shipped alertmanager.yml pointed at it."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARDS = ROOT / "grafana" / "dashboards"

# What Grafana puts in place of its built-in variables, for running a panel's query by hand.
BUILTINS = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}


def tool(*names: str) -> str:
    """Path of the first of ``names`` on PATH. Missing: skip, or fail when CI=true."""
    for name in names:
        path = shutil.which(name)
        if path:
            return path
    msg = f"{' / '.join(names)} not found (Debian packages prometheus and prometheus-alertmanager; make promtool-deps)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(msg)
    pytest.skip(msg)


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str

    @property
    def id(self) -> str:
        return f"{self.dashboard}/{self.panel}/{self.ref}"


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text()) for p in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those inside collapsed rows."""
    out: list[dict[str, Any]] = []
    for p in dashboard.get("panels", []):
        out.append(p)
        out.extend(p.get("panels", []))
    return out


def substitute(expr: str, value: str = ".*", intervals: dict[str, str] | None = None) -> str:
    """Replace ``$var`` / ``${var}`` / ``[[var]]``: Grafana's built-ins by a duration, the rest by ``value``."""
    builtins = {**BUILTINS, **(intervals or {})}

    def sub(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return builtins.get(name, value)

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", sub, expr)


def dashboard_queries(intervals: dict[str, str] | None = None) -> list[Query]:
    """Every target's ``expr`` of every dashboard, with the variables set to ``.*`` (All)."""
    out = []
    for dash in load_dashboards().values():
        for p in panels(dash):
            for t in p.get("targets", []):
                if t.get("expr"):
                    out.append(Query(dash["uid"], p["title"], t["refId"], substitute(t["expr"], intervals=intervals)))
    return out


@dataclass
class Notification:
    kind: str  # pagerduty | slack | webhook
    body: dict[str, Any]
    at: float = field(default_factory=time.time)  # when it arrived (unix seconds)

    @property
    def text(self) -> str:
        return json.dumps(self.body)


@dataclass
class Receiver:
    """Records what Alertmanager posts: /pagerduty (Events API v2), /slack (incoming webhook), /webhook."""

    port: int
    received: list[Notification] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ThreadingHTTPServer:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with rec.lock:
                    rec.received.append(Notification(self.path.strip("/").split("/")[0], body))
                # PagerDuty answers 202 with a JSON body; Slack and webhooks 200
                self.send_response(202 if self.path.startswith("/pagerduty") else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "success", "message": "Event processed"}')

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def find(self, kind: str, pred: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        with self.lock:
            return [n.body for n in self.received if n.kind == kind and pred(n.body)]

    def all(self) -> list[Notification]:
        with self.lock:
            return list(self.received)


# The only keys the test may change in the shipped configs.
AM_OVERRIDABLE = {"url", "pagerduty_url", "slack_api_url_file", "routing_key_file"}
AM_INTERVALS = {"group_wait", "group_interval", "repeat_interval"}
SHORT_INTERVALS = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}


def alertmanager_config(
    tmp: Path, receiver_port: int, intervals: dict[str, str] | None = SHORT_INTERVALS
) -> tuple[dict[str, Any], dict[str, str]]:
    """The shipped alertmanager.yml with URLs and secret files pointed at this test, and the route's intervals
    shortened (``intervals=None``: as shipped). Also returns routing key -> receiver name."""
    shipped = yaml.safe_load((ROOT / "prometheus" / "alertmanager.yml").read_text())
    cfg = copy.deepcopy(shipped)
    base = f"http://127.0.0.1:{receiver_port}"
    secrets = tmp / "secrets"
    secrets.mkdir()
    (secrets / "slack-webhook-url").write_text(f"{base}/slack")
    cfg["global"]["slack_api_url_file"] = str(secrets / "slack-webhook-url")
    cfg["global"]["pagerduty_url"] = f"{base}/pagerduty"
    keys: dict[str, str] = {}  # routing key -> receiver name
    for r in cfg["receivers"]:
        for pd in r.get("pagerduty_configs", []):
            name = Path(pd["routing_key_file"]).name
            key = f"test-key-{r['name']}"
            (secrets / name).write_text(key)
            pd["routing_key_file"] = str(secrets / name)
            keys[key] = r["name"]
        for wh in r.get("webhook_configs", []):
            wh["url"] = f"{base}/webhook/{r['name']}"
    if intervals:
        cfg["route"].update(intervals)
    # the templates are found relative to the config file: copy them beside it
    shutil.copytree(ROOT / "prometheus" / "alertmanager-templates", tmp / "alertmanager-templates")
    return cfg, keys


def strip_keys(node: Any, keys: set[str]) -> Any:
    """``node`` without the mapping keys ``keys``, at any depth."""
    if isinstance(node, dict):
        return {k: strip_keys(v, keys) for k, v in node.items() if k not in keys}
    if isinstance(node, list):
        return [strip_keys(v, keys) for v in node]
    return node
