"""Shared helpers: benchmark data at scale (from examples/generate_demo.py), timing, results."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
import math
import os
import platform
import socket
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
DATA = Path(os.environ.get("BENCH_DATA", "/tmp/spend-exporter-bench"))
PY = sys.executable


def _generate() -> Any:
    spec = importlib.util.spec_from_file_location("generate_demo", ROOT / "examples" / "generate_demo.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules["generate_demo"] = mod
    spec.loader.exec_module(mod)
    return mod


def today_noon() -> dt.datetime:
    """Data is dated relative to today so that ``spend-exporter run`` (real clock) sees it as current."""
    now = dt.datetime.now(dt.UTC)
    return now.replace(minute=0, second=0, microsecond=0)


def days_needed(now: dt.datetime) -> int:
    """Days back to the first of the previous month, so every cost family has data."""
    prev_start = (now.date().replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    return (now.date() - prev_start).days


SAMPLES_PER_COMBO = 6  # cost families a cloud series appears in: mtd, daily, baseline, stddev, prev month, forecast


def config_dict(data_dir: Path, listen: str = "127.0.0.1:0") -> dict[str, Any]:
    return {
        "listen_address": listen,
        "cache_path": str(data_dir / "cache.sqlite"),
        "currency_rates": {"EUR": 1.08},
        "attribution": {"team_tag_keys": ["team", "Team"]},
        "max_series_per_source": 1_000_000,
        "sources": [
            {
                "name": "focus-bench",
                "type": "focus",
                "interval": "24h",
                "timeout": "30m",
                "paths": [str(data_dir / "*.csv"), str(data_dir / "*.parquet")],
            }
        ],
        "budgets": [{"name": "total", "amount_usd": 1e9}, {"name": "data", "amount_usd": 1e6, "team": "data"}],
    }


def scale_data(samples: int, log: Any = print) -> Path:
    """A warm cache holding about ``samples`` series, built once per day and size and then reused."""
    now = today_noon()
    d = DATA / f"series-{samples}-{now:%Y%m%d}"
    marker = d / "READY"
    if marker.exists() and _cache_current(d):
        return d
    if not (d / "GENERATED").exists():
        combos = max(1, math.ceil(samples / SAMPLES_PER_COMBO))
        log(f"  generating {combos} cloud series x {days_needed(now)} days into {d} (once) ...")
        t = time.perf_counter()
        _generate().generate(d, now=now, days=days_needed(now), series=combos)
        (d / "GENERATED").touch()
        log(f"  generated in {time.perf_counter() - t:.1f}s")
    log("  first refresh into the cache ...")
    import yaml

    (d / "config.yml").write_text(yaml.safe_dump(config_dict(d)))
    from exporter.app import build_app
    from exporter.config import parse_config

    for suffix in ("", "-wal", "-shm"):
        Path(str(d / "cache.sqlite") + suffix).unlink(missing_ok=True)
    app = build_app(parse_config(config_dict(d)))
    t = time.perf_counter()
    out = app.refresh_all()
    refresh_s = time.perf_counter() - t
    series = app.snapshot.series
    app.close()
    if not all(o.ok for o in out):
        raise SystemExit(f"bench data refresh failed: {out}")
    (d / "meta.json").write_text(json.dumps({"series": series, "cold_refresh_s": refresh_s}))
    log(f"  cold refresh (files -> store -> snapshot) {refresh_s:.1f}s, {series} series")
    marker.touch()
    return d


def _cache_current(d: Path) -> bool:
    """The cache was filled under the current source settings (else the exporter would drop and refetch it)."""
    import sqlite3

    from exporter.app import _source_hash
    from exporter.config import parse_config

    src = parse_config(config_dict(d)).sources[0]
    try:
        con = sqlite3.connect(d / "cache.sqlite")
        row = con.execute("SELECT config_hash FROM source_state WHERE source=?", (src.name,)).fetchone()
        n = con.execute("SELECT COUNT(*) FROM cost").fetchone()[0]
        con.close()
    except sqlite3.Error:
        return False
    return bool(row and row[0] == _source_hash(src) and n)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    port: int, path: str = "/metrics", timeout: float = 120.0, proc: subprocess.Popen[Any] | None = None
) -> None:
    import http.client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", path)
            r = c.getresponse()
            r.read()
            c.close()
            if r.status == 200:
                return
        except OSError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"127.0.0.1:{port}{path} not up after {timeout}s")


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    if not v:
        return float("nan")
    k = min(len(v) - 1, max(0, math.ceil(p / 100 * len(v)) - 1))
    return v[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def machine() -> dict[str, Any]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = int(line.split()[1]) // 1024
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "mem_mb": mem,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg_at_start": os.getloadavg(),
    }


def save(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": name,
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
    } | result
    p = RESULTS / f"{name}.json"
    p.write_text(json.dumps(result, indent=2) + "\n")
    print(f"  -> {p.relative_to(ROOT)}")
    return p


COST_COLUMNS = "source, day, provider, account_id, service_name, team, model, cost_usd, labels"  # the cache's cost


def repeat_cost_back(con: sqlite3.Connection, target: dt.date, include_newest: bool = True) -> None:
    """Fill ``cost`` back to ``target``: the days it holds (the newest only with ``include_newest``: a newest day
    may be partial) copied further back again and again, shifted by whole spans of them, none before ``target``.
    The caller commits (and refreshes ``cost_recent`` if it reads it)."""
    lo, hi = con.execute("SELECT MIN(day), MAX(day) FROM cost").fetchone()
    first, newest = dt.date.fromisoformat(lo), dt.date.fromisoformat(hi)
    last = newest if include_newest else newest - dt.timedelta(days=1)
    span = (last - first).days + 1
    con.execute("CREATE TEMP TABLE tpl AS SELECT * FROM cost WHERE day <= ?", (last.isoformat(),))
    copied = COST_COLUMNS.replace(" day,", " date(day, ?),")
    shift = span
    while first - dt.timedelta(days=shift - span) > target:
        con.execute(
            f"INSERT INTO cost ({COST_COLUMNS}) SELECT {copied} FROM tpl WHERE date(day, ?) >= ?",
            (f"-{shift} days", f"-{shift} days", target.isoformat()),
        )
        shift += span
    con.execute("DROP TABLE tpl")
