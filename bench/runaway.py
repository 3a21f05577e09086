"""Benchmark 7: runaway AI spend, time to page and to stop, with the shipped defaults; and false pages on an
ordinary day.

**The runaway, in real time.** The OpenAI Admin API emulator (tests/emulators/openai_admin.py) serves the seed's
story from ``tests.emulators.scenario.runaway_schedule``: a project at $10/h of gpt-4o that jumps to $475/h at
T0, in minute buckets published with the modelled delay, and 40 days of billed costs at $10/h (the hourly
baseline). ``spend-exporter run`` (the real command) reads it with the source's default ``burn_window`` and
``burn_interval`` and a guard in ``mode: enforce`` with an ``openai_project_rate_limit`` rule. A real Prometheus
loads the shipped rules with the shipped prometheus.yml (scrape and evaluation every 60 s), and a real
Alertmanager the shipped alertmanager.yml, only its URLs and secret files pointed here: the team's PagerDuty
page reaches a recording receiver, the guard's webhook reaches the exporter, whose rate-limit write reaches the
emulator. Prometheus and Alertmanager are Go programs on the real clock, so this part runs in real time (about
15 minutes). Reported: minutes from T0 to the page and to the write, the dollars the loop burned until each
(from the schedule), and where the time went (the exporter's burn refreshes, Prometheus's samples and rule
evaluations, Alertmanager).

**The ordinary day, on a simulated clock.** A project with a $10/h hourly baseline and a working-day peak of
3x held for two hours, its minutes drawn as Poisson requests of lognormal sizes, 35 days of history of the same
shape before it. The exporter's engine (``cli.assemble``: the App and its scheduler, in process) runs on a
stepped clock against the emulator serving that day, minute by minute for 24 hours; what it serves each minute
is the input of ``promtool test rules`` with the shipped alert rules at the shipped 1m evaluation interval,
which reports every minute in which SpendAIBurnRateHigh (or SpendAIHourlyCostHigh) fires: the false pages.

Method and figures: docs/performance.md, "Runaway AI spend: time to page and to stop".
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import random
import re
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from bench.common import PY, ROOT, free_port, median, save, wait_http
from tests.e2e.stack import RUNAWAY_AFTER, RUNAWAY_BEFORE, alertmanager_argv, prometheus_argv, stop_processes

UTC = dt.UTC
MINUTE = dt.timedelta(minutes=1)
PAGE_TARGET_MIN, STOP_TARGET_MIN = 10, 12
ADMIN_ENV, WRITE_ENV, TOKEN_ENV = "BENCH_OPENAI_ADMIN_KEY", "BENCH_OPENAI_WRITE_KEY", "BENCH_SPEND_GUARD_TOKEN"
GUARD_TOKEN = "bench-guard-token-0123456789abcdef"
FAMILIES = (
    "spend_ai_burn_rate_usd_per_hour",
    "spend_ai_burn_window_end_timestamp_seconds",
    "spend_cost_daily_baseline_usd",
    "spend_ai_cost_last_hour_usd",
)
AI_ALERTS = ("SpendAIBurnRateHigh", "SpendAIHourlyCostHigh")
EXPORTER_MAIN = "import sys; from exporter.cli import main; sys.exit(main())"  # this tree's exporter (cwd ROOT)


# --------------------------------------------------------------------------- data both parts share


def ai_dataset(now: dt.datetime, rows: list[Any]) -> Any:
    from tests.emulators.ai_dataset import AIDataset

    start = min(r.hour for r in rows).date()
    return AIDataset(now=now, start=start, usage=rows, extra_costs=[])


def exporter_config(cache: Path, emulator_url: str, account_id: str, team: str, **extra: Any) -> dict[str, Any]:
    """One ``openai`` source with the shipped defaults (interval, burn_window, burn_interval, burn_delay)."""
    return {
        "cache_path": str(cache),
        "attribution": {"rules": [{"match": {"provider": "openai", "account_id": account_id}, "team": team}]},
        "sources": [{"name": "openai", "type": "openai", "admin_key_env": ADMIN_ENV, "base_url": emulator_url + "/v1"}],
        **extra,
    }


def parse_exposition(
    text: str, families: tuple[str, ...] = FAMILIES
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """(name, sorted labels) -> value of every sample of ``families``."""
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for fam in text_string_to_metric_families(text):
        if fam.name in families:
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# --------------------------------------------------------------------------- part 1: the runaway in real time


@dataclass
class Timeline:
    """When each step of the chain first happened (unix seconds), as observed."""

    t0: float
    served: float | None = None  # the exporter first serves a burn rate over the alert's threshold
    served_value: float | None = None
    served_window_end: float | None = None
    scraped: float | None = None  # Prometheus's first sample of it (the scrape's timestamp)
    pending: float | None = None  # the first rule evaluation that found the condition true
    firing: float | None = None  # the evaluation that fired
    am_received: float | None = None  # Alertmanager's startsAt is Prometheus's; this is when we first saw it there
    paged: float | None = None  # the team's PagerDuty event arrived at the receiver
    guard_called: float | None = None
    write: float | None = None  # the emulator received the rate-limit write
    writes: list[dict[str, Any]] = field(default_factory=list)
    burn_refreshes: list[tuple[float, float, float | None]] = field(default_factory=list)  # (seen at, end, rate)


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


def _get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())


@contextmanager
def _processes(tmp: Path) -> Iterator[Callable[[str, list[str], Path, dict[str, str] | None], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []

    def start(name: str, argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        with open(tmp / f"{name}.log", "wb") as out:
            p = subprocess.Popen(argv, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        procs.append(p)
        return p

    try:
        yield start
    finally:
        stop_processes(procs, timeout=15)


def prometheus_config(exporter: str, alertmanager: str, prometheus: str) -> dict[str, Any]:
    """The shipped prometheus.yml: its intervals, its jobs and the shipped rules; only the targets pointed here."""
    cfg = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())
    cfg["rule_files"] = [str(ROOT / "prometheus" / f) for f in cfg["rule_files"]]
    targets = {"spend-exporter": exporter, "prometheus": prometheus}
    for job in cfg["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    (am,) = cfg["alerting"]["alertmanagers"]
    am["static_configs"] = [{"targets": [alertmanager]}]
    return cfg


def realtime(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    """``args.stacks`` stacks side by side, one T0 for all, their exporters started ``args.stagger`` seconds
    apart (so that their burn refreshes fall at different moments of the loop's first minutes)."""
    from concurrent.futures import ThreadPoolExecutor

    n = args.stacks
    start = dt.datetime.now(UTC)
    t0 = (start + dt.timedelta(seconds=args.lead + (n - 1) * args.stagger)).replace(second=0, microsecond=0) + MINUTE
    with ThreadPoolExecutor(n) as pool:
        futures = [
            pool.submit(realtime_one, args, tmp / f"stack-{i}", i, t0, start + dt.timedelta(seconds=i * args.stagger))
            for i in range(n)
        ]
        runs = [f.result() for f in futures]
    summary: dict[str, Any] = {"t0": t0.isoformat(), "stacks": n, "stagger_s": args.stagger}
    for key in ("page_minutes", "stop_minutes", "page_usd", "stop_usd"):
        got = [r[key] for r in runs if r[key] is not None]
        summary[key] = {
            "min": min(got, default=None),
            "median": median(got) if got else None,
            "max": max(got, default=None),
            "missing": n - len(got),
        }
    return {"summary": summary, "bound": bound(), "runs": runs}


def _seconds(d: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(int(n) * units[u] for n, u in re.findall(r"(\d+)(ms|[smhd])", str(d)))


def bound() -> dict[str, Any]:
    """Best and worst case, from T0, of each step of the chain with the shipped settings: the sources' burn
    defaults, prometheus.yml's intervals, the alert's threshold and ``for:``, and Alertmanager's group_wait for
    the team's page and for the guard. The loop starts on a minute boundary, as in the scenario."""
    from exporter.app import BURN_PHASE
    from exporter.sources.admin_api import AdminApiSource

    fields = AdminApiSource.model_fields
    delay, window, interval = (float(fields[k].default) for k in ("burn_delay", "burn_window", "burn_interval"))
    prom = yaml.safe_load((ROOT / "prometheus" / "prometheus.yml").read_text())["global"]
    scrape, evaluation = _seconds(prom["scrape_interval"]), _seconds(prom["evaluation_interval"])
    rules = yaml.safe_load((ROOT / "prometheus" / "rules" / "spend-alerts.yml").read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == "SpendAIBurnRateHigh"]
    expr = " ".join(rule["expr"].split())
    (multiple,) = re.findall(r"> (\d+) \* spend_cost_daily_baseline_usd / 24", expr)
    (floor,) = re.findall(r"and spend_ai_burn_rate_usd_per_hour > (\d+)", expr)
    for_ = _seconds(rule.get("for", "0s"))
    # spend-exporter's route: the subtree (prometheus/alertmanager/spend-routes.yml) pasted first under the root
    am = yaml.safe_load((ROOT / "prometheus" / "alertmanager.yml").read_text())["route"]["routes"][0]
    team_wait = _seconds(am["group_wait"])
    guard_wait = max(
        (_seconds(r.get("group_wait", am["group_wait"])) for r in am["routes"] if r.get("receiver") == "spend-guard"),
        default=team_wait,
    )
    # minutes of the loop the window must hold before the burn rate passes the threshold
    threshold = max(int(multiple) * RUNAWAY_BEFORE, int(floor))
    minutes = 1
    while RUNAWAY_BEFORE + (RUNAWAY_AFTER - RUNAWAY_BEFORE) * minutes * 60 / window <= threshold:
        minutes += 1
    steps = {
        "loop minutes the window needs": (minutes * 60.0, minutes * 60.0),
        "burn_delay": (delay, delay),
        # refreshes run BURN_PHASE after a minute boundary (exporter.app.burn_next_at), every burn_interval
        "burn_interval (waiting for the next burn refresh)": (BURN_PHASE, max(interval - 60, 0) + BURN_PHASE),
        "scrape_interval": (0.0, scrape),
        "evaluation_interval": (0.0, evaluation),
        "for": (for_, for_),
    }
    best = sum(b for b, _ in steps.values())
    worst = sum(w for _, w in steps.values())
    return {
        "settings": {
            "burn_window_s": window,
            "burn_interval_s": interval,
            "burn_delay_s": delay,
            "scrape_interval_s": scrape,
            "evaluation_interval_s": evaluation,
            "for_s": for_,
            "threshold_usd_per_hour": threshold,
            "group_wait_team_s": team_wait,
            "group_wait_guard_s": guard_wait,
        },
        "steps_s": {k: {"best": b, "worst": w} for k, (b, w) in steps.items()},
        "page_minutes": {"best": round((best + team_wait) / 60, 2), "worst": round((worst + team_wait) / 60, 2)},
        "stop_minutes": {"best": round((best + guard_wait) / 60, 2), "worst": round((worst + guard_wait) / 60, 2)},
    }


def realtime_one(args: argparse.Namespace, tmp: Path, idx: int, t0: dt.datetime, at: dt.datetime) -> dict[str, Any]:
    from tests.e2e.stack import Receiver, alertmanager_config, runaway_emulator, tool
    from tests.emulators.ai_dataset import GPT4O, LABS
    from tests.emulators.openai_admin import DEFAULT_ADMIN_KEY, DEFAULT_WRITE_KEY

    prometheus_bin = tool("prometheus")
    alertmanager_bin = tool("prometheus-alertmanager", "alertmanager")
    team, model = "ml-platform", GPT4O
    tmp.mkdir()

    def now() -> dt.datetime:
        return dt.datetime.now(UTC)

    def say(msg: str) -> None:
        print(f"  [{idx}] {msg}", flush=True)

    time.sleep(max(0.0, (at - now()).total_seconds()))
    started = now()
    emu = runaway_emulator(started, t0, now, write_key=DEFAULT_WRITE_KEY)
    emu.start()
    timeline = Timeline(t0=t0.timestamp())
    receiver = Receiver(free_port())
    receiver_server = receiver.start()
    try:
        with _processes(tmp) as start:
            # the exporter: one openai source, shipped defaults, and the guard enforcing
            exp_port = free_port()
            cfg = exporter_config(
                tmp / "cache.sqlite",
                emu.url,
                LABS,
                team,
                listen_address=f"127.0.0.1:{exp_port}",
                guard={
                    "mode": "enforce",
                    "token_env": TOKEN_ENV,
                    "rules": [
                        {
                            "name": "stop-openai-runaway",
                            "match": {"alertname": "SpendAIBurnRateHigh", "provider": "openai"},
                            "action": "openai_project_rate_limit",
                            "params": {"max_requests_per_1_minute": 1},
                        }
                    ],
                },
            )
            cfg["sources"][0]["write_key_env"] = WRITE_ENV
            (tmp / "exporter.yml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            env = {
                **os.environ,
                ADMIN_ENV: DEFAULT_ADMIN_KEY,
                WRITE_ENV: DEFAULT_WRITE_KEY,
                TOKEN_ENV: GUARD_TOKEN,
            }
            exporter = start(
                "exporter",
                [PY, "-c", EXPORTER_MAIN, "run", "--config.file", str(tmp / "exporter.yml")],
                ROOT,
                env,
            )
            wait_http(exp_port, "/-/ready", timeout=120, proc=exporter)

            # alertmanager: the shipped config, its URLs and secret files pointed here, the guard at the exporter
            am_dir = tmp / "alertmanager"
            am_dir.mkdir()
            am_cfg, keys = alertmanager_config(
                am_dir, receiver.port, intervals=None, guard=(f"http://127.0.0.1:{exp_port}", GUARD_TOKEN)
            )
            (am_dir / "alertmanager.yml").write_text(yaml.safe_dump(am_cfg, sort_keys=False))
            am_port = free_port()
            start("alertmanager", alertmanager_argv(alertmanager_bin, am_dir, am_port), am_dir)
            # prometheus: the shipped prometheus.yml and rules
            prom_dir = tmp / "prometheus"
            prom_dir.mkdir()
            prom_port = free_port()
            (prom_dir / "prometheus.yml").write_text(
                yaml.safe_dump(
                    prometheus_config(f"127.0.0.1:{exp_port}", f"127.0.0.1:{am_port}", f"127.0.0.1:{prom_port}")
                )
            )
            start("prometheus", prometheus_argv(prometheus_bin, prom_dir, prom_port), prom_dir)
            wait_http(am_port, "/-/ready", timeout=60)
            wait_http(prom_port, "/-/ready", timeout=60)
            prom, am = f"http://127.0.0.1:{prom_port}", f"http://127.0.0.1:{am_port}"
            say(
                f"stack up at {now():%H:%M:%S}; T0 {t0:%H:%M:%S}: {LABS} {model} ${RUNAWAY_BEFORE}/h -> "
                f"${RUNAWAY_AFTER}/h; waiting for the page and the write (at most {args.give_up:.0f} min) ..."
            )
            observe(timeline, exp_port, prom, am, receiver, emu, keys, team, LABS, model, t0, args.give_up, say)
            series = prometheus_samples(prom, LABS, model, t0)
            logs = {p.name: p.read_text(errors="replace")[-4000:] for p in tmp.glob("*.log")}
    finally:
        receiver_server.shutdown()
        emu.stop()
    return report_realtime(timeline, emu.scenario, emu.scenario.streams[0], series, logs)


def observe(
    tl: Timeline,
    exp_port: int,
    prom: str,
    am: str,
    receiver: Any,
    emu: Any,
    keys: dict[str, str],
    team: str,
    account_id: str,
    model: str,
    t0: dt.datetime,
    give_up_min: float,
    say: Callable[[str], None],
) -> None:
    """Poll every part of the chain twice a second until the page and the write have both arrived."""
    deadline = t0.timestamp() + give_up_min * 60
    last_end: float | None = None
    while time.time() < deadline and not (tl.paged and tl.write):
        t = time.time()
        try:
            samples = parse_exposition(_get_text(f"http://127.0.0.1:{exp_port}/metrics"))
        except OSError:
            samples = {}
        rate = next(
            (
                v
                for (name, labels), v in samples.items()
                if name == "spend_ai_burn_rate_usd_per_hour"
                and dict(labels).get("account_id") == account_id
                and dict(labels).get("model") == model
            ),
            None,
        )
        base = next(
            (
                v
                for (name, labels), v in samples.items()
                if name == "spend_cost_daily_baseline_usd"
                and dict(labels).get("account_id") == account_id
                and dict(labels).get("model") == model
            ),
            None,
        )
        end = next(
            (v for (name, _), v in samples.items() if name == "spend_ai_burn_window_end_timestamp_seconds"), None
        )
        if end is not None and end != last_end:
            last_end = end
            tl.burn_refreshes.append((t, end, rate))
            say(
                f"{dt.datetime.fromtimestamp(t, UTC):%H:%M:%S} burn window to "
                f"{dt.datetime.fromtimestamp(end, UTC):%H:%M}: ${rate if rate is not None else float('nan'):.2f}/h "
                f"(baseline ${(base or 0) / 24:.2f}/h)"
            )
        threshold = max(4 * (base or 0) / 24, 20) if base else 20
        if tl.served is None and rate is not None and rate > threshold and t >= t0.timestamp():
            tl.served, tl.served_value, tl.served_window_end = t, rate, end
        if tl.pending is None or tl.firing is None:
            for a in _get_json(f"{prom}/api/v1/alerts")["data"]["alerts"]:
                if (
                    a["labels"].get("alertname") == "SpendAIBurnRateHigh"
                    and a["labels"].get("account_id") == account_id
                ):
                    active = _rfc3339(a["activeAt"])
                    if tl.pending is None:
                        tl.pending = active
                    if a["state"] == "firing" and tl.firing is None:
                        tl.firing = t  # refined below from the ALERTS series
        if tl.firing is not None and tl.am_received is None:
            for a in _get_json(f"{am}/api/v2/alerts?filter=alertname%3D%22SpendAIBurnRateHigh%22"):
                if a["labels"].get("account_id") == account_id:
                    tl.am_received = t
        if tl.paged is None:
            for n in receiver.all():
                if (
                    n.kind == "pagerduty"
                    and keys.get(n.body.get("routing_key")) == f"spend-{team}-pager"
                    and n.body.get("event_action") == "trigger"
                    and "SpendAIBurnRateHigh" in n.text
                ):
                    tl.paged = n.at
                    say(f"{dt.datetime.fromtimestamp(n.at, UTC):%H:%M:%S} paged (spend-{team}-pager)")
        if tl.write is None and emu.writes:
            tl.writes = [
                {"at": w.time, "method": w.method, "path": w.path, "body": w.body, "key": w.key} for w in emu.writes
            ]
            tl.write = tl.writes[0]["at"]
            say(f"{dt.datetime.fromtimestamp(tl.write, UTC):%H:%M:%S} rate-limit write at the emulator")
        time.sleep(max(0.0, 0.5 - (time.time() - t)))


def _rfc3339(s: str) -> float:
    s = re.sub(r"(\.\d{6})\d+", r"\1", s.replace("Z", "+00:00"))
    return dt.datetime.fromisoformat(s).timestamp()


def prometheus_samples(prom: str, account_id: str, model: str, t0: dt.datetime) -> dict[str, list[tuple[float, str]]]:
    """The raw samples Prometheus holds since T0: the scraped burn rate, and ALERTS (one per rule evaluation)."""
    span = f"{int(time.time() - t0.timestamp()) + 120}s"
    out = {}
    for name, sel in (
        ("burn_rate", f'spend_ai_burn_rate_usd_per_hour{{account_id="{account_id}",model="{model}"}}'),
        ("alerts", f'ALERTS{{alertname="SpendAIBurnRateHigh",account_id="{account_id}"}}'),
    ):
        res = _get_json(f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": f"{sel}[{span}]"}))
        out[name] = [
            (float(ts), f"{r['metric'].get('alertstate', '')}{v}")
            for r in res["data"]["result"]
            for ts, v in r["values"]
        ]
    return out


def report_realtime(
    tl: Timeline,
    scenario: Any,
    stream: Any,
    series: dict[str, list[tuple[float, str]]],
    logs: dict[str, str],
) -> dict[str, Any]:
    from tests.emulators.ai_dataset import BILLING_PRICES, MILLION

    t0 = tl.t0
    # the first scraped sample over the threshold, and the evaluations that found the alert pending and firing
    for ts, v in sorted(series["burn_rate"]):
        if ts >= t0 and tl.served_value is not None and float(v) >= tl.served_value:
            tl.scraped = ts
            break
    pend = sorted(ts for ts, v in series["alerts"] if v.startswith("pending"))
    fire = sorted(ts for ts, v in series["alerts"] if v.startswith("firing"))
    if pend:
        tl.pending = pend[0]
    if fire:
        tl.firing = fire[0]

    def spent(until: float | None) -> float | None:
        """Dollars the project spent from T0 to ``until`` by the schedule: whole minutes, then the part minute."""
        if until is None:
            return None
        start = dt.datetime.fromtimestamp(t0, UTC)
        end = dt.datetime.fromtimestamp(until, UTC)
        whole = end.replace(second=0, microsecond=0)
        usd = scenario.cost(start, whole)
        part = Decimal(str((end - whole).total_seconds() / 60))
        for f, n in scenario.minute_tokens(stream, whole).items():
            if f != "requests" and n:
                usd += Decimal(n) * BILLING_PRICES[stream.model][f] / MILLION * part
        return float(round(usd, 2))

    def minutes(t: float | None) -> float | None:
        return None if t is None else round((t - t0) / 60, 2)

    steps = {
        "exporter serves the burn rate over the threshold": tl.served,
        "Prometheus scrapes it": tl.scraped,
        "rule evaluation: pending": tl.pending,
        "rule evaluation: firing": tl.firing,
        "PagerDuty page at the receiver (group_wait)": tl.paged,
        "rate-limit write at the emulator (guard)": tl.write,
    }
    out = {
        "t0": dt.datetime.fromtimestamp(t0, UTC).isoformat(),
        "schedule": {"before_usd_per_hour": RUNAWAY_BEFORE, "loop_usd_per_hour": RUNAWAY_AFTER},
        "page_minutes": minutes(tl.paged),
        "stop_minutes": minutes(tl.write),
        "page_usd": spent(tl.paged),
        "stop_usd": spent(tl.write),
        "targets": {"page_minutes": PAGE_TARGET_MIN, "stop_minutes": STOP_TARGET_MIN},
        "steps_minutes_from_t0": {k: minutes(v) for k, v in steps.items()},
        "served": {
            "value_usd_per_hour": tl.served_value,
            "window_end": None
            if tl.served_window_end is None
            else dt.datetime.fromtimestamp(tl.served_window_end, UTC).isoformat(),
        },
        "burn_refreshes": [
            {
                "seen_min": minutes(at),
                "window_end_min": minutes(end),
                "usd_per_hour": rate,
            }
            for at, end, rate in tl.burn_refreshes
        ],
        "writes": [{**w, "at_min": minutes(w["at"])} for w in tl.writes],
    }
    if tl.paged is None or tl.write is None:
        out["logs"] = logs
    return out


# --------------------------------------------------------------------------- part 2: the ordinary day


# gpt-4o list prices (USD per token) and the request sizes of the day: lognormal, medians and spread
IN_MEDIAN, OUT_MEDIAN, SIGMA = 1500, 250, 0.8


def day_profile(baseline: float = RUNAWAY_BEFORE, peak: float = 3.0) -> list[float]:
    """USD an hour for each minute of an ordinary working day whose mean is ``baseline``: nights at half the
    working hours' level, a working day from 08:00 to 18:00, and ``peak`` x the baseline held for two hours
    (14:00 to 16:00) with half-hour ramps. Off-peak levels are scaled so that the day's mean is the baseline,
    so the peak is exactly ``peak`` times the hourly baseline the alert compares with."""
    knots = [(0, 0.5), (7 * 60, 0.5), (9 * 60, 1.0), (13 * 60 + 30, 1.0), (18 * 60, 1.0), (20 * 60, 0.5), (1440, 0.5)]

    def shape(m: float) -> float:
        for (a, va), (b, vb) in itertools.pairwise(knots):
            if a <= m <= b:
                return va + (vb - va) * (m - a) / (b - a)
        return knots[-1][1]

    p0, p1 = 14 * 60, 16 * 60
    ramp = 30

    def peak_weight(m: float) -> float:
        """1 in the peak, 0 away from it, linear in the ramps."""
        if p0 <= m < p1:
            return 1.0
        if p0 - ramp <= m < p0:
            return (m - (p0 - ramp)) / ramp
        if p1 <= m < p1 + ramp:
            return 1 - (m - p1) / ramp
        return 0.0

    # USD/h = w * peak * baseline + (1 - w) * s * shape * baseline; solve for s so that the mean is baseline
    w = [peak_weight(m + 0.5) for m in range(1440)]
    sh = [shape(m + 0.5) for m in range(1440)]
    s = (1440 - peak * sum(w)) / sum((1 - wi) * si for wi, si in zip(w, sh, strict=True))
    return [baseline * (wi * peak + (1 - wi) * s * si) for wi, si in zip(w, sh, strict=True)]


def minute_usage(usd_per_hour: float, rnd: random.Random) -> dict[str, int]:
    """One minute of requests: Poisson arrivals at the rate that costs ``usd_per_hour`` on average, each with
    lognormal input and output token counts."""
    from tests.emulators.ai_dataset import BILLING_PRICES, GPT4O, MILLION

    p_in = float(BILLING_PRICES[GPT4O]["input"] / MILLION)
    p_out = float(BILLING_PRICES[GPT4O]["output"] / MILLION)
    mean = math.exp(SIGMA**2 / 2)
    per_request = IN_MEDIAN * mean * p_in + OUT_MEDIAN * mean * p_out
    lam = usd_per_hour / 60 / per_request
    n, t = 0, rnd.expovariate(lam)
    tin = tout = 0
    while t < 1.0:
        n += 1
        tin += round(rnd.lognormvariate(math.log(IN_MEDIAN), SIGMA))
        tout += round(rnd.lognormvariate(math.log(OUT_MEDIAN), SIGMA))
        t += rnd.expovariate(lam)
    return {"input": tin, "output": tout, "cache_read": 0, "cache_write_5m": 0, "cache_write_1h": 0, "requests": n}


def ordinary_day(args: argparse.Namespace, tmp: Path) -> dict[str, Any]:
    from exporter.cli import assemble
    from exporter.config import parse_config
    from tests.e2e.stack import tool
    from tests.emulators.ai_dataset import BILLING_PRICES, GPT4O, MILLION, SEARCH, AIUsageRow
    from tests.emulators.openai_admin import DEFAULT_ADMIN_KEY, OpenAIAdminEmulator
    from tests.emulators.scenario import Scenario, Stream

    promtool = tool("promtool")
    rnd = random.Random(args.seed)
    day = dt.datetime.combine(dt.date.fromisoformat(args.day), dt.time(), UTC)
    profile = day_profile(RUNAWAY_BEFORE, args.peak)
    key_id = "key_srch_A1"

    # every minute of the history days and of the day, drawn once
    first = day - dt.timedelta(days=args.history_days)
    table: dict[dt.datetime, dict[str, int]] = {}
    factor = 1.0
    m = first
    while m < day + dt.timedelta(days=1):
        if m.hour == 0 and m.minute == 0:
            factor = 1.0 if m >= day else rnd.uniform(1 - args.day_to_day, 1 + args.day_to_day)
        table[m] = minute_usage(factor * profile[m.hour * 60 + m.minute], rnd)
        m += MINUTE

    def usd(u: dict[str, int]) -> float:
        return float(
            (
                Decimal(u["input"]) * BILLING_PRICES[GPT4O]["input"]
                + Decimal(u["output"]) * BILLING_PRICES[GPT4O]["output"]
            )
            / MILLION
        )

    hours: dict[dt.datetime, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for m, u in table.items():
        for k, n in u.items():
            hours[m.replace(minute=0)][k] += n
    clock = {"t": day - dt.timedelta(hours=1)}

    def now() -> dt.datetime:
        return clock["t"]

    class DayScenario(Scenario):
        """The drawn minutes (the schedule's rates are not used)."""

        def minute_tokens(self, stream: Stream, minute: dt.datetime) -> dict[str, int]:
            return dict(table.get(minute, {}))

    stream = Stream("openai", SEARCH, key_id, GPT4O, "completions", ())
    scenario = DayScenario([stream], now, start=day - dt.timedelta(days=1))

    rows = [
        AIUsageRow(
            hour=h,
            provider="openai",
            account_id=SEARCH,
            api_key_id=key_id,
            model=GPT4O,
            endpoint="completions",
            input=u["input"],
            output=u["output"],
            cache_read=0,
            cache_write_5m=0,
            cache_write_1h=0,
            requests=u["requests"],
        )
        for h, u in sorted(hours.items())
        if h < day  # the billed days before the replayed one: the baseline
    ]
    emu = OpenAIAdminEmulator(ai_dataset(day, rows), scenario=scenario)
    os.environ[ADMIN_ENV] = DEFAULT_ADMIN_KEY
    minutes_served: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]] = []
    t_start = time.perf_counter()
    with emu:
        cfg = parse_config(exporter_config(tmp / "day-cache.sqlite", emu.url, SEARCH, "search"))
        app, scheduler = assemble(cfg, now=now, rng=random.Random(args.seed))
        try:
            for i in range(-60, 1440):
                clock["t"] = day + i * MINUTE + dt.timedelta(seconds=args.scrape_offset)
                scheduler.run_pending()
                scheduler.run_pending_burn()
                if i >= 0:
                    minutes_served.append(parse_exposition(app.exposition()))
        finally:
            app.close()
    replay_s = time.perf_counter() - t_start

    # the series the exporter served, one value a minute ("_": not served that minute)
    keys = sorted({k for m in minutes_served for k in m})
    rate_key = [k for k in keys if k[0] == "spend_ai_burn_rate_usd_per_hour"]
    base_key = [k for k in keys if k[0] == "spend_cost_daily_baseline_usd" and dict(k[1]).get("account_id") == SEARCH]
    rates = [m.get(rate_key[0]) if rate_key else None for m in minutes_served]
    baseline_h = (minutes_served[-1].get(base_key[0]) or 0) / 24 if base_key else None
    fired, promtool_s = promtool_replay(promtool, keys, minutes_served, tmp)
    true_rate = [profile[i] for i in range(1440)]
    window_usd = [usd(table[day + i * MINUTE]) * 60 for i in range(1440)]
    worst = max(
        ((r / max(4 * baseline_h, 20) if baseline_h else float("nan")), i) for i, r in enumerate(rates) if r is not None
    )
    return {
        "day": args.day,
        "profile": {
            "baseline_usd_per_hour": RUNAWAY_BEFORE,
            "peak": args.peak,
            "peak_hours": "14:00-16:00",
            "max_profile_usd_per_hour": round(max(true_rate), 2),
            "history_days": args.history_days,
            "day_to_day": args.day_to_day,
            "requests": {"in_median": IN_MEDIAN, "out_median": OUT_MEDIAN, "sigma": SIGMA},
            "seed": args.seed,
        },
        "minute_usd_per_hour": {
            "max": round(max(window_usd), 2),
            "p99": round(sorted(window_usd)[int(0.99 * len(window_usd))], 2),
        },
        "served_baseline_usd_per_hour": None if baseline_h is None else round(baseline_h, 4),
        "served_burn_rate": {
            "max": round(max(r for r in rates if r is not None), 2),
            "minutes_served": sum(r is not None for r in rates),
            "worst_over_threshold": round(worst[0], 3),
            "worst_at": (day + worst[1] * MINUTE).strftime("%H:%M"),
        },
        "firing_minutes": fired,
        "false_pages": count_episodes(fired.get("SpendAIBurnRateHigh", [])),
        "replay_wall_s": round(replay_s, 1),
        "promtool_wall_s": round(promtool_s, 1),
    }


def count_episodes(minutes: list[int]) -> int:
    """Pages: runs of consecutive firing minutes."""
    return sum(1 for i, m in enumerate(minutes) if i == 0 or minutes[i - 1] != m - 1)


def promtool_replay(
    promtool: str,
    keys: list[tuple[str, tuple[tuple[str, str], ...]]],
    minutes: list[dict[tuple[str, tuple[tuple[str, str], ...]], float]],
    tmp: Path,
) -> tuple[dict[str, list[int]], float]:
    """Evaluate the shipped alert rules over the served series with ``promtool test rules`` (1m evaluations),
    expecting no alert at every minute; the failures promtool reports are the minutes an alert fired."""

    def series(name: str, labels: tuple[tuple[str, str], ...]) -> str:
        lab = ",".join(f'{k}="{v}"' for k, v in (*labels, ("job", "spend-exporter"), ("instance", "exporter:9877")))
        return f"{name}{{{lab}}}"

    def fmt(v: float | None) -> str:
        return "_" if v is None else repr(v)

    doc = {
        "rule_files": [str(ROOT / "prometheus" / "rules" / "spend-alerts.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": series(*k), "values": " ".join(fmt(m.get(k)) for m in minutes)} for k in keys
                ],
                "alert_rule_test": [
                    {"eval_time": f"{i}m", "alertname": a, "exp_alerts": []}
                    for i in range(len(minutes))
                    for a in AI_ALERTS
                ],
            }
        ],
    }
    path = tmp / "ordinary-day.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False, width=1 << 20))
    t = time.perf_counter()
    res = subprocess.run([promtool, "test", "rules", str(path)], capture_output=True, text=True, timeout=1800)
    took = time.perf_counter() - t
    out = res.stdout + res.stderr
    fired: dict[str, list[int]] = {a: [] for a in AI_ALERTS}
    for a, when in re.findall(r"alertname: (\w+), time: (\S+),", out):
        fired[a].append(_go_minutes(when))
    if res.returncode != 0 and not any(fired.values()):
        raise SystemExit(f"promtool failed:\n{out[-3000:]}")
    if res.returncode == 0 and any(fired.values()):
        raise SystemExit(f"promtool passed yet reported alerts:\n{out[-3000:]}")
    return {a: sorted(v) for a, v in fired.items()}, took


def _go_minutes(d: str) -> int:
    """Minutes of a Prometheus duration as promtool prints it (``1d2h3m``, ``45m``, ``0s``)."""
    units = {"w": 7 * 1440, "d": 1440, "h": 60, "m": 1}
    total = 0.0
    for n, u in re.findall(r"(\d+)(ms|[wdhms])", d):
        total += int(n) * units.get(u, 0)
    return int(total)


# --------------------------------------------------------------------------- the benchmark


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.run runaway")
    ap.add_argument("--part", choices=("both", "realtime", "day"), default="both")
    ap.add_argument("--lead", type=float, default=150.0, help="seconds from the start to T0 (at least)")
    ap.add_argument("--give-up", type=float, default=30.0, help="minutes after T0 to stop waiting")
    ap.add_argument("--stacks", type=int, default=3, help="stacks side by side (one T0), exporters staggered")
    ap.add_argument("--stagger", type=float, default=40.0, help="seconds between the stacks' starts")
    ap.add_argument("--day", default="2026-11-17", help="the ordinary day replayed (a Tuesday)")
    ap.add_argument("--peak", type=float, default=3.0, help="the working-day peak, times the hourly baseline")
    ap.add_argument("--history-days", type=int, default=35)
    ap.add_argument("--day-to-day", type=float, default=0.1, help="history days scaled by 1 +- this, at random")
    ap.add_argument("--scrape-offset", type=float, default=30.0, help="seconds into each minute of the scrape")
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--name", default="runaway", help="results file bench/results/NAME.json")
    args = ap.parse_args(argv)
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-runaway-") as d:
        tmp = Path(d)
        if args.part in ("both", "day"):
            day = out["ordinary_day"] = ordinary_day(args, tmp)
            print(
                f"  ordinary day {args.day}: served baseline ${day['served_baseline_usd_per_hour']}/h, burn rate max "
                f"${day['served_burn_rate']['max']}/h ({day['served_burn_rate']['worst_over_threshold']:.2f} of "
                f"the threshold at {day['served_burn_rate']['worst_at']}); SpendAIBurnRateHigh fired in "
                f"{len(day['firing_minutes']['SpendAIBurnRateHigh'])} minutes, {day['false_pages']} false pages; "
                f"SpendAIHourlyCostHigh in {len(day['firing_minutes']['SpendAIHourlyCostHigh'])} "
                f"(replay {day['replay_wall_s']}s, promtool {day['promtool_wall_s']}s)",
                flush=True,
            )
        if args.part in ("both", "realtime"):
            rt = out["runaway"] = realtime(args, tmp)
            for i, r in enumerate(rt["runs"]):
                print(
                    f"  [{i}] paged at T0+{r['page_minutes']} min (${r['page_usd']}), rate-limit write at "
                    f"T0+{r['stop_minutes']} min (${r['stop_usd']})",
                    flush=True,
                )
                for step, m in r["steps_minutes_from_t0"].items():
                    print(f"        T0+{m} min  {step}", flush=True)
            b = rt["bound"]
            print(
                f"  shipped settings: page between T0+{b['page_minutes']['best']} and +{b['page_minutes']['worst']} "
                f"min, write between T0+{b['stop_minutes']['best']} and +{b['stop_minutes']['worst']} min",
                flush=True,
            )
    save(args.name, out)
    return out


if __name__ == "__main__":
    run()
