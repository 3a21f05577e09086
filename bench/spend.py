"""``GET /api/v1/spend`` on a large cache: the worst queries, and /metrics and a store write while they run.

    .venv/bin/python -m bench.spend --data /tmp/spend-exporter-bench/series-100000-YYYYMMDD \\
        --cache /tmp/me/cache.sqlite [--days 400] [--n 5] [--seconds 20]

``--cache`` is made from the benchmark's cache (``bench.common.scale_data``) if it does not exist: a copy
whose rows are repeated further back until it holds ``--days`` days (the cost table as ``history_days: 400``
would leave it). The exporter writes to its cache (the saved snapshot): never point ``--cache`` at the
benchmark's own file. The figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import resource
import shutil
import sqlite3
import threading
import time
from pathlib import Path

from bench.common import config_dict, median, pct, repeat_cost_back
from exporter import spendapi
from exporter.app import build_app
from exporter.config import parse_config
from exporter.web import serve


def fill_history(src: Path, dst: Path, days: int) -> None:
    """A copy of ``src`` holding ``days`` days up to its newest: its days repeated further back."""
    for suffix in ("", "-wal", "-shm"):
        if Path(str(src) + suffix).exists():
            shutil.copyfile(str(src) + suffix, str(dst) + suffix)
    con = sqlite3.connect(dst, isolation_level=None)
    (newest,) = con.execute("SELECT MAX(day) FROM cost").fetchone()
    con.execute("BEGIN")
    repeat_cost_back(con, dt.date.fromisoformat(newest) - dt.timedelta(days=days - 1))
    con.execute("COMMIT")
    n, d = con.execute("SELECT COUNT(*), COUNT(DISTINCT day) FROM cost").fetchone()
    con.close()
    print(f"cache copy: {n:,} cost rows, {d} days", flush=True)


def get(port: int, path: str) -> tuple[float, int, int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t = time.perf_counter()
    conn.request("GET", path, headers={"Accept-Encoding": "gzip"} if path == "/metrics" else {})
    r = conn.getresponse()
    body = r.read()
    took = time.perf_counter() - t
    conn.close()
    return took, r.status, len(body)


def show(label: str, times: list[float]) -> None:
    print(
        f"  {label:<52} n={len(times):<4} median {median(times) * 1e3:8.1f} ms  "
        f"p99 {pct(times, 99) * 1e3:8.1f} ms  max {max(times) * 1e3:8.1f} ms",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, type=Path, help="the benchmark directory (its config and cache)")
    ap.add_argument("--cache", required=True, type=Path, help="the copy to query (made if missing)")
    ap.add_argument("--days", type=int, default=400, help="days the copy holds")
    ap.add_argument("--n", type=int, default=5, help="runs of each query")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the run under load")
    args = ap.parse_args()

    if not args.cache.exists():
        t = time.perf_counter()
        fill_history(args.data / "cache.sqlite", args.cache, args.days)
        print(f"  made in {time.perf_counter() - t:.0f}s", flush=True)
    cfg = config_dict(args.data)
    cfg["cache_path"] = str(args.cache)
    app = build_app(parse_config(cfg), stale_ok=True)
    newest = dt.date.fromisoformat(app.store.query("SELECT MAX(day) FROM cost")[0][0])
    held = newest - dt.timedelta(days=args.days - 1)
    widest = newest - dt.timedelta(days=spendapi.MAX_DAYS - 1)
    thirteen = (newest.replace(day=1) - dt.timedelta(days=366)).replace(day=1)
    every = "provider,account_id,service_name,team,model"
    queries = [
        ("every label by day, MAX_DAYS (over MAX_ROWS: 400)", f"from={widest}&to={newest}&group_by={every}"),
        (
            "every label by month, MAX_DAYS (over MAX_ROWS: 400)",
            f"from={widest}&to={newest}&group_by={every}&granularity=month",
        ),
        ("provider,team by month, 13 months", f"from={thirteen}&to={newest}&group_by=provider,team&granularity=month"),
        ("provider,team by day, every day held", f"from={held}&to={newest}&group_by=provider,team"),
        ("totals by day, every day held", f"from={held}&to={newest}"),
        (
            "every label by day, 5 days (just under MAX_ROWS)",
            f"from={newest - dt.timedelta(days=4)}&to={newest}&group_by={every}",
        ),
        ("model by day, current month", f"from={newest.replace(day=1)}&to={newest}&group_by=model"),
    ]
    server = serve(app, "127.0.0.1", 0, None, {})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.port
    try:
        print(f"{app.snapshot.series} series; cost rows held: {app.store.query('SELECT COUNT(*) FROM cost')[0][0]:,}")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        slowest = (0.0, "", "")
        for label, q in queries:
            runs = [get(port, f"/api/v1/spend?{q}") for _ in range(args.n)]
            show(f"{label} [{runs[0][1]}, {runs[0][2]:,} B]", [r[0] for r in runs])
            slowest = max(slowest, (median([r[0] for r in runs]), label, q))
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"  peak RSS {rss0 / 1024:.0f} MB before the queries, {rss1 / 1024:.0f} MB after", flush=True)

        show("GET /metrics (gzip), idle", [get(port, "/metrics")[0] for _ in range(50)])
        show("Store.put_state (takes the store's lock), idle", [_write(app) for _ in range(20)])

        stop = threading.Event()

        def load() -> None:
            while not stop.is_set():
                get(port, f"/api/v1/spend?{slowest[2]}")

        th = threading.Thread(target=load)
        th.start()
        scrapes: list[float] = []
        writes: list[float] = []
        end = time.monotonic() + args.seconds
        while time.monotonic() < end:
            scrapes.append(get(port, "/metrics")[0])
            writes.append(_write(app))
            time.sleep(0.1)
        stop.set()
        th.join()
        print(f"  under load: {slowest[1]!r} in a loop", flush=True)
        show("GET /metrics (gzip), slowest query in a loop", scrapes)
        show("Store.put_state, slowest query in a loop", writes)
    finally:
        server.shutdown()
        app.close()


def _write(app: object) -> float:
    store = app.store  # type: ignore[attr-defined]
    name = app.source_names()[0]  # type: ignore[attr-defined]
    t = time.perf_counter()
    store.put_state(store.get_state(name))
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
