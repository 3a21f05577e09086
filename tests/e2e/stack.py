"""Helpers shared by the shipped-stack tests (and bench/runaway.py): finding the Prometheus tools, the dashboards'
queries, a receiver that records what Alertmanager sends, and the shipped alertmanager.yml pointed at it."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import importlib.util
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import wait_ready

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


# What in a panel's query says when it must be evaluated and how much history it reads (see the billing-date
# constants of grafana/build_dashboards.py and docs/dashboards.md).
_BACK = re.compile(r"\boffset ([0-9][0-9a-z]*)")  # a positive offset: a figure of the past
_FORWARD = re.compile(r"\boffset -")  # a billing-date query: at 00:00 of day D it reads day D+1
_MONTH_END = re.compile(r"\s*and on \(\) day_of_month\(\) == days_in_month\(\)")  # one point per month
LIVE_OFFSET = "5s"  # what a positive offset becomes on a Prometheus that holds minutes, not days


@dataclass(frozen=True)
class Query:
    dashboard: str
    panel: str
    ref: str
    expr: str

    @property
    def id(self) -> str:
        return f"{self.dashboard}/{self.panel}/{self.ref}"

    @property
    def per_month(self) -> bool:
        """One point per month, at 00:00 UTC of the month's last day."""
        return bool(_MONTH_END.search(self.expr))

    @property
    def by_billing_date(self) -> bool:
        """A point at 00:00 UTC of a billing day reads the day after it (``offset -``): evaluated at now, the
        query is empty, as today's bar is."""
        return bool(_FORWARD.search(self.expr))

    @property
    def history(self) -> list[str]:
        """Why the query returns nothing on a Prometheus that holds only the last minutes: the positive offsets
        it reads, and ``month`` for a query whose newest point is the last day of last month."""
        return sorted(set(_BACK.findall(self.expr))) + (["month"] if self.per_month else [])

    def at(self, now: dt.datetime) -> dt.datetime:
        """When its newest point is, as Grafana evaluates it: now, 00:00 UTC of yesterday (the newest billing
        day), or 00:00 UTC of the last day of last month (the newest billing month)."""
        midnight = dt.datetime.combine(now.astimezone(dt.UTC).date(), dt.time(), tzinfo=dt.UTC)
        if self.per_month:
            return midnight.replace(day=1) - dt.timedelta(days=1)
        if self.by_billing_date:
            return midnight - dt.timedelta(days=1)
        return now

    def on_live_data(self) -> Query:
        """The query with its history scaled down to what a Prometheus started minutes ago holds: each positive
        offset ``LIVE_OFFSET``, and the one-point-per-month filter dropped (so it is evaluated at yesterday, and
        reads today). The same selectors, joins and aggregations: only how far back it looks differs."""
        expr = _BACK.sub(f"offset {LIVE_OFFSET}", _MONTH_END.sub("", self.expr))
        return Query(self.dashboard, self.panel, self.ref, expr)


def load_builder() -> Any:
    """grafana/build_dashboards.py as a module (it is a script, not a package)."""
    spec = importlib.util.spec_from_file_location("build_dashboards", ROOT / "grafana" / "build_dashboards.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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
class Forwarded:
    """A request the receiver passed on (the guard's webhook), exactly as Alertmanager sent it, and the reply."""

    path: str
    headers: dict[str, str]
    body: bytes
    status: int
    reply: bytes
    at: float = field(default_factory=time.time)


@dataclass
class Receiver:
    """Records what Alertmanager posts: /pagerduty (Events API v2), /slack (incoming webhook), /webhook.

    Paths under ``/forward/`` are passed on to ``forward_to`` (the guard's webhook to the exporter: the test
    can then post the very same payload again) and recorded apart, in ``forwarded``.
    """

    port: int
    forward_to: str | None = None
    received: list[Notification] = field(default_factory=list)
    forwarded: list[Forwarded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> ThreadingHTTPServer:
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                if self.path.startswith("/forward/") and rec.forward_to:
                    self._forward(raw)
                    return
                body = json.loads(raw)
                with rec.lock:
                    rec.received.append(Notification(self.path.strip("/").split("/")[0], body))
                # PagerDuty answers 202 with a JSON body; Slack and webhooks 200
                self.send_response(202 if self.path.startswith("/pagerduty") else 200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(b'{"status": "success", "message": "Event processed"}')

            def _forward(self, raw: bytes) -> None:
                path = self.path.removeprefix("/forward")
                headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                status, reply = post(f"{rec.forward_to}{path}", raw, headers)
                with rec.lock:
                    rec.forwarded.append(Forwarded(path, headers, raw, status, reply))
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

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

    def passed_on(self) -> list[Forwarded]:
        with self.lock:
            return list(self.forwarded)


def post(url: str, body: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST ``body``; the status and the reply's body, an error status included."""
    req = urllib.request.Request(url, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return int(r.status), bytes(r.read())
    except urllib.error.HTTPError as e:
        return int(e.code), bytes(e.read())


# The only keys the test may change in the shipped configs.
AM_OVERRIDABLE = {"url", "pagerduty_url", "slack_api_url_file", "routing_key_file", "credentials_file"}
AM_INTERVALS = {"group_wait", "group_interval", "repeat_interval"}
SHORT_INTERVALS = {"group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h"}


def _routes(route: dict[str, Any]) -> list[dict[str, Any]]:
    return [route, *(r for child in route.get("routes", []) for r in _routes(child))]


def alertmanager_config(
    tmp: Path,
    receiver_port: int,
    intervals: dict[str, str] | None = SHORT_INTERVALS,
    guard: tuple[str, str] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The shipped alertmanager.yml with URLs and secret files pointed at this test, and the intervals of every
    route that sets them shortened (``intervals=None``: as shipped). Also returns routing key -> receiver name.

    ``guard``: (base URL, token) for the guard's webhook (the one with a bearer credentials file): its URL keeps
    its path on that base, its credentials file holds the token. Without it, it goes to the receiver's
    ``/webhook/<name>`` like the others.
    """
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
            auth = (wh.get("http_config") or {}).get("authorization")
            if auth:
                path = secrets / Path(auth["credentials_file"]).name
                path.write_text(guard[1] if guard else "no-guard-in-this-test")
                auth["credentials_file"] = str(path)
            if auth and guard:
                wh["url"] = guard[0] + urllib.parse.urlsplit(wh["url"]).path
            else:
                wh["url"] = f"{base}/webhook/{r['name']}"
    if intervals:
        for route in _routes(cfg["route"]):
            route.update({k: v for k, v in intervals.items() if k in route})
    # the templates are found relative to the config file: copy them beside it
    shutil.copytree(ROOT / "prometheus" / "alertmanager-templates", tmp / "alertmanager-templates")
    return cfg, keys


def stop_processes(procs: list[subprocess.Popen[bytes]], timeout: float = 10) -> None:
    """Terminate every process, then wait for each (killed after ``timeout`` seconds)."""
    for p in procs:
        p.terminate()
    for p in procs:
        try:
            p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def free_port() -> int:
    """A port the system says is free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def alertmanager_argv(binary: str, workdir: Path, port: int) -> list[str]:
    """Alertmanager on ``workdir``/alertmanager.yml, its data beside it, on loopback only."""
    return [
        binary,
        f"--config.file={workdir / 'alertmanager.yml'}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",  # no gossip port: a single instance on loopback only
    ]


def prometheus_argv(binary: str, workdir: Path, port: int, *flags: str) -> list[str]:
    """Prometheus on ``workdir``/prometheus.yml, its TSDB beside it, on loopback, with ``flags``."""
    return [
        binary,
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        *flags,
    ]


@contextlib.contextmanager
def prometheus_on(tsdb: Path, retention: str = "100y") -> Iterator[str]:
    """A real Prometheus serving the blocks in ``tsdb`` and scraping nothing; its URL. Retention counts back from
    the newest block, so a long one keeps every block written."""
    binary = tool("prometheus")
    cfg = tsdb.parent / f"{tsdb.name}.yml"
    cfg.write_text("global: {}\n")
    port = free_port()
    log = tsdb.parent / f"{tsdb.name}.log"
    argv = [
        binary,
        f"--config.file={cfg}",
        f"--storage.tsdb.path={tsdb}",
        f"--storage.tsdb.retention.time={retention}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        why = wait_ready(url, proc, 60, poll=0.1)
        if why is not None:
            pytest.fail(f"Prometheus did not start ({why}):\n{log.read_text(errors='replace')[-3000:]}")
        yield url
    finally:
        stop_processes([proc])


def strip_keys(node: Any, keys: set[str]) -> Any:
    """``node`` without the mapping keys ``keys``, at any depth."""
    if isinstance(node, dict):
        return {k: strip_keys(v, keys) for k, v in node.items() if k not in keys}
    if isinstance(node, list):
        return [strip_keys(v, keys) for v in node]
    return node


# --------------------------------------------------------------------------- the runaway (issue 14)

RUNAWAY_BEFORE, RUNAWAY_AFTER = 10, 475  # the seed's project: USD an hour before the loop, and in it


def hourly_history(usd_per_hour: Any, start: Any, end: Any, account_id: str, api_key_id: str) -> list[Any]:
    """Hourly gpt-4o output rows of ``account_id`` costing ``usd_per_hour(hour)`` (a ``Fraction``) each hour in
    [start, end). The emulators bill their dataset's rows: these days are what the baseline is built from."""
    import datetime as dt
    from fractions import Fraction

    from tests.emulators.ai_dataset import BILLING_PRICES, GPT4O, MILLION, AIUsageRow

    price = Fraction(BILLING_PRICES[GPT4O]["output"]) / Fraction(MILLION)
    rows = []
    h = start
    while h < end:
        tokens = round(usd_per_hour(h) / price)
        rows.append(
            AIUsageRow(h, "openai", account_id, api_key_id, GPT4O, "completions", 0, tokens, 0, 0, 0, tokens // 1000)
        )
        h += dt.timedelta(hours=1)
    return rows


def runaway_emulator(now: Any, t0: Any, clock: Any, **kwargs: Any) -> Any:
    """The OpenAI Admin API emulator serving the seed's story on ``clock``: project Labs (gpt-4o) at
    ``RUNAWAY_BEFORE`` USD an hour, billed so for the 40 days before ``now`` (its hourly baseline), whose usage
    jumps to ``RUNAWAY_AFTER`` an hour at ``t0``, in minute buckets published with the modelled delay
    (``tests.emulators.scenario``). ``kwargs`` go to the emulator (``write_key``)."""
    import datetime as dt
    from fractions import Fraction

    from tests.emulators.ai_dataset import GPT4O, LABS, AIDataset
    from tests.emulators.openai_admin import OpenAIAdminEmulator
    from tests.emulators.scenario import Scenario, runaway_schedule

    key = "key_labs_D4"
    first = dt.datetime.combine(now.date() - dt.timedelta(days=40), dt.time(), dt.UTC)
    rows = hourly_history(
        lambda h: Fraction(RUNAWAY_BEFORE), first, now.replace(minute=0, second=0, microsecond=0), LABS, key
    )
    stream = runaway_schedule(
        t0, account_id=LABS, api_key_id=key, model=GPT4O, before=str(RUNAWAY_BEFORE), after=str(RUNAWAY_AFTER)
    )
    # minute usage from two hours back: the burn window and the last complete hour (day buckets stay cheap)
    scenario = Scenario([stream], clock, start=min(t0, now) - dt.timedelta(hours=2))
    dataset = AIDataset(now=now, start=first.date(), usage=rows, extra_costs=[])
    return OpenAIAdminEmulator(dataset, scenario=scenario, **kwargs)
