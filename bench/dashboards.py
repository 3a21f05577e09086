"""Benchmark: the dashboards' billing-date queries on a year of history, as Grafana sends them.

``--series`` cost series (labels as the exporter's, spread over 10 teams and 3 providers) hold ``--days`` of
``spend_cost_daily_usd``, ``spend_cost_previous_month_usd`` and ``spend_cost_month_to_date_usd`` at one sample
every ``--spacing`` seconds (what a backfill at that spacing, or a scrape at that interval, stores), turned
into blocks by the real ``promtool tsdb create-blocks-from openmetrics``. A real Prometheus on those blocks
then runs each panel's query (the variables at All) over the range Grafana would send, at its step, aligned
as Grafana aligns it; each is run ``--repeat`` times and the median kept. Reported: milliseconds per query and
per 1,000 series, and the samples each query reads; beside them the daily chart as it was before (the gauge
read by scrape time). Results: bench/results/dashboards-<spacing>s.json. Figures: docs/dashboards.md, "Cost".
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from tests.e2e.stack import Query, dashboard_queries, tool

RESULTS = Path(__file__).resolve().parent / "results"
DAY = 86400

# (panel, ref, time range in days, step in seconds): the steps Grafana sends at 1000 data points
PANELS = [
    ("spend-teams", "Daily spend by team", "A", 7, DAY),
    ("spend-teams", "Daily spend by team", "A", 396, DAY),
    ("spend-teams", "Monthly spend by team, 13 months", "A", 396, DAY),
    ("spend-overview", "Month to date against last month", "A", 7, 600),
    ("spend-overview", "Month to date against last month", "B", 7, 600),
    ("spend-overview", "Last month, same day", "A", 0, 0),
    ("spend-teams", "Top movers by team, week over week", "A", 0, 0),
    ("spend-overview", "Top movers by service, week over week", "A", 0, 0),
]
# for comparison: the daily chart before issue 15, the gauge read at each step (by scrape time)
BEFORE = ("before: sum by (team) (spend_cost_daily_usd)", 'sum by (team) (spend_cost_daily_usd{team=~".*"})', 396, DAY)


def write_history(path: Path, series: int, days: int, spacing: int, end: dt.datetime) -> int:
    """Write the OpenMetrics input; return the number of samples."""
    start = end - dt.timedelta(days=days)
    n = int((end - start).total_seconds()) // spacing + 1
    times = [start + dt.timedelta(seconds=i * spacing) for i in range(n)]
    labels = [
        f'provider="{("aws", "gcp", "azure")[k % 3]}",account_id="a{k % 7}",service_name="svc{k}",'
        f'team="team{k % 10}",model=""'
        for k in range(series)
    ]
    samples = 0
    with open(path, "w") as f:
        for family in ("spend_cost_daily_usd", "spend_cost_previous_month_usd", "spend_cost_month_to_date_usd"):
            f.write(f"# TYPE {family} gauge\n")
            for k, lab in enumerate(labels):
                lines = []
                for t in times:
                    day = t.toordinal()
                    v = {
                        "spend_cost_daily_usd": (day - 1) % 89 + k,
                        "spend_cost_previous_month_usd": (t.month * 31 + k) * 30,
                        "spend_cost_month_to_date_usd": (t.day - 1) * (k + 1),
                    }[family]
                    lines.append(f"{family}{{{lab}}} {v} {int(t.timestamp())}\n")
                f.writelines(lines)
                samples += len(lines)
        f.write("# EOF\n")
    return samples


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=600) as r:
        res = json.load(r)
    assert res["status"] == "success", res
    return res


def run(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="bench.run dashboards")
    ap.add_argument("--series", type=int, default=20)
    ap.add_argument("--days", type=int, default=430)
    ap.add_argument("--spacing", type=int, default=300, help="seconds between samples")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    promtool, prometheus = tool("promtool"), tool("prometheus")
    end = dt.datetime(2026, 12, 7, 12, tzinfo=dt.UTC)
    queries = {(q.dashboard, q.panel, q.ref): q for q in dashboard_queries()}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        t = time.perf_counter()
        samples = write_history(tmp / "h.om", args.series, args.days, args.spacing, end)
        gen_s = time.perf_counter() - t
        t = time.perf_counter()
        subprocess.run(
            [promtool, "tsdb", "create-blocks-from", "openmetrics", "--max-block-duration=720h", "-q"]
            + [str(tmp / "h.om"), str(tmp / "data")],
            check=True,
            capture_output=True,
        )
        blocks_s = time.perf_counter() - t
        (tmp / "h.om").unlink()
        (tmp / "p.yml").write_text("global: {}\n")
        port = _free_port()
        url = f"http://127.0.0.1:{port}"
        with open(tmp / "p.log", "wb") as log:
            proc = subprocess.Popen(
                [
                    prometheus,
                    f"--config.file={tmp / 'p.yml'}",
                    f"--storage.tsdb.path={tmp / 'data'}",
                    "--storage.tsdb.retention.time=100y",
                    f"--web.listen-address=127.0.0.1:{port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    _get(f"{url}/api/v1/query?query=1")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            rows = []
            cases = [(queries[(u, p, r)], d, s) for u, p, r, d, s in PANELS]
            cases.append((Query("", "", "", BEFORE[1]), BEFORE[2], BEFORE[3]))
            for q, days, step in cases:
                at = q.at(end)
                if days:
                    params = {
                        "query": q.expr,
                        "start": (at.timestamp() - days * DAY) // step * step,
                        "end": at.timestamp() // step * step,
                        "step": step,
                        "stats": "all",
                    }
                    path = "/api/v1/query_range"
                else:
                    params = {"query": q.expr, "time": at.timestamp(), "stats": "all"}
                    path = "/api/v1/query"
                times, res = [], None
                for _ in range(args.repeat):
                    t = time.perf_counter()
                    res = _get(f"{url}{path}?{urllib.parse.urlencode(params)}")
                    times.append(time.perf_counter() - t)
                assert res and res["data"]["result"], f"no data: {q.id}"
                ms = statistics.median(times) * 1000
                read = res["data"]["stats"]["samples"]["totalQueryableSamples"]
                rows.append(
                    {
                        "query": q.id if q.dashboard else BEFORE[0],
                        "range_days": days,
                        "step_s": step,
                        "ms": round(ms, 1),
                        "ms_per_1k_series": round(ms * 1000 / args.series, 1),
                        "samples_read": read,
                    }
                )
                print(f"{rows[-1]['query']:70} {days:4}d step {step:6}s {ms:9.1f} ms  {read:>12,} samples", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    out = {
        "series": args.series,
        "days": args.days,
        "spacing_s": args.spacing,
        "samples": samples,
        "generate_s": round(gen_s, 1),
        "create_blocks_s": round(blocks_s, 1),
        "queries": rows,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"dashboards-{args.spacing}s.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: v for k, v in out.items() if k != "queries"}))
