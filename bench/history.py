"""Benchmark: snapshot build and start-up with 400 days held against 70, in the same run, on the same series.

The 100k-series warm cache of the refresh benchmark (about 37 days of FOCUS data) is copied twice and its cost
rows extended back to 70 and to 400 days before today with copies of its complete days, shifted (the same series,
the same number of rows a day), as the history would leave them; the snapshot's recent copy (``cost_recent``) is
what the store would hold. Then, for each copy, interleaved: the snapshot build (``App.rebuild_snapshot()``, median
of ``--repeat``), the same build reading the whole ``cost`` table as before ``cost_recent`` (400 days only), and
``spend-exporter run`` from process start to the first ``200`` from ``/-/ready``: a restart (saved snapshot), a
start that builds the snapshot, and a start after an unclean stop (``PRAGMA quick_check`` first).

``--before TREE`` (a checkout of the code before the history, e.g. ``git archive i14 | tar -x -C /tmp/before``)
measures that code too, on its own copy of the 70-day cache, in the same run: today's figures.
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import json
import os
import shutil
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import DATA, PY, ROOT, free_port, median, repeat_cost_back, save, scale_data

RECENT_DAYS = 70  # exporter.history.RECENT_DAYS, not imported: the bench measures the code, not its constants


def _extend(path: Path, days: int, today: dt.date) -> int:
    """Extend the cache's cost rows back to ``days`` days before ``today``; returns the rows held."""
    from exporter.store import Store

    Store(path).close()  # a cache from before cost_recent gets it here
    c = sqlite3.connect(path)
    try:
        repeat_cost_back(c, today - dt.timedelta(days=days), include_newest=False)  # complete days only
        recent = (today - dt.timedelta(days=RECENT_DAYS)).isoformat()
        c.execute("DELETE FROM cost_recent")
        c.execute("INSERT INTO cost_recent SELECT * FROM cost WHERE day >= ?", (recent,))
        c.execute("INSERT OR REPLACE INTO meta VALUES ('recent_from', ?)", (recent,))
        c.execute("DELETE FROM snapshot")
        c.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key='generation'")
        c.commit()
        return int(c.execute("SELECT COUNT(*) FROM cost").fetchone()[0])
    finally:
        c.close()


def _sql(path: Path, sql: str, args: tuple[Any, ...] = ()) -> None:
    c = sqlite3.connect(path)
    try:
        c.execute(sql, args)
        c.commit()
    finally:
        c.close()


def _ready(port: int) -> bool:
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", "/-/ready")
        ok = c.getresponse().status == 200
        c.close()
        return ok
    except OSError:
        return False


_BUILD = """
import json, sys, time, yaml
from exporter.app import build_app
from exporter.config import parse_config
app = build_app(parse_config(yaml.safe_load(open(sys.argv[1]))))
out = []
for _ in range(int(sys.argv[2])):
    for name in app.source_names():
        app.builder.invalidate(name)
    t = time.perf_counter()
    app.rebuild_snapshot(save=False)
    out.append(time.perf_counter() - t)
app.close()
print(json.dumps(out))
"""


def _build_in(tree: Path, cfg: dict[str, Any], where: Path, repeat: int) -> list[float]:
    """Snapshot builds by the code in ``tree`` (another process: another version of the package)."""
    path = where / "config-build.yml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([PY, "-c", _BUILD, str(path), str(repeat)], cwd=tree, env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr)
    return [float(x) for x in json.loads(done.stdout.strip().splitlines()[-1])]


def _start(cfg: dict[str, Any], where: Path, tree: Path = ROOT) -> float:
    """Seconds from starting ``spend-exporter run`` (the code in ``tree``) to its first 200 from /-/ready."""
    port = free_port()
    path = where / "config-run.yml"
    path.write_text(yaml.safe_dump({**cfg, "listen_address": f"127.0.0.1:{port}"}))
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t = time.perf_counter()
    proc = subprocess.Popen(
        [PY, "-m", "exporter.cli", "run", "--config.file", str(path)], cwd=tree, env=env, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 300
        while not _ready(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("spend-exporter run did not become ready")
            time.sleep(0.01)
        return time.perf_counter() - t
    finally:
        proc.terminate()
        proc.wait(30)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.run history")
    ap.add_argument("--series", type=int, default=100000)
    ap.add_argument("--days", default="70,400", help="days held, compared in the same run")
    ap.add_argument("--repeat", type=int, default=5, help="snapshot builds per case")
    ap.add_argument("--starts", type=int, default=3, help="starts of each kind per case")
    ap.add_argument("--before", type=Path, help="a source tree of the code before the history, measured at 70 days")
    args = ap.parse_args(argv)
    from exporter.app import build_app
    from exporter.config import parse_config

    data = scale_data(args.series)
    today = dt.datetime.now(dt.UTC).date()
    work = DATA / f"history-{args.series}-{today:%Y%m%d}"
    work.mkdir(parents=True, exist_ok=True)
    cases: dict[int, dict[str, Any]] = {}
    for days in [int(x) for x in args.days.split(",")]:
        path = work / f"cache-{days}.sqlite"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        shutil.copy(data / "cache.sqlite", path)
        t = time.perf_counter()
        rows = _extend(path, days, today)
        cfg = yaml.safe_load((data / "config.yml").read_text())
        cfg.update(cache_path=str(path), history_days=max(days, 70))
        cases[days] = {
            "days_held": days,
            "cost_rows": rows,
            "file_mb": round(path.stat().st_size / 1e6, 1),
            "cfg": cfg,
            "build_s": [],
            "build_reading_cost_s": [],
            "restart_s": [],
            "start_building_s": [],
            "start_after_unclean_stop_s": [],
        }
        print(f"  {days} days held: {rows} cost rows, {cases[days]['file_mb']} MB ({time.perf_counter() - t:.0f}s)")

    before: dict[str, Any] | None = None
    if args.before is not None and RECENT_DAYS in cases:
        path = work / "cache-before.sqlite"
        shutil.copy(cases[RECENT_DAYS]["cfg"]["cache_path"], path)
        cfg = {**cases[RECENT_DAYS]["cfg"], "cache_path": str(path)}
        cfg.pop("history_days")  # not a key before
        before = {"code": str(args.before), "days_held": RECENT_DAYS, "cfg": cfg, "build_s": [], "restart_s": []}
        before.update(start_building_s=[], start_after_unclean_stop_s=[])

    # the builds, interleaved between the cases
    if before is not None:
        before["build_s"] = _build_in(args.before, before["cfg"], work, args.repeat)
    apps = {d: build_app(parse_config(c["cfg"])) for d, c in cases.items()}
    try:
        series = {d: a.snapshot.series for d, a in apps.items()}
        for _ in range(args.repeat):
            for d, app in apps.items():
                for name in app.source_names():
                    app.builder.invalidate(name)
                t = time.perf_counter()
                app.rebuild_snapshot(save=False)
                cases[d]["build_s"].append(time.perf_counter() - t)
        # the build as before cost_recent: every read from the whole cost table (days before "recent_from")
        for d, app in apps.items():
            if d <= RECENT_DAYS:
                continue
            recent = app.store.query("SELECT value FROM meta WHERE key='recent_from'")[0][0]
            _sql(Path(cases[d]["cfg"]["cache_path"]), "UPDATE meta SET value='9999-12-31' WHERE key='recent_from'")
            for _ in range(args.repeat):
                for name in app.source_names():
                    app.builder.invalidate(name)
                t = time.perf_counter()
                app.rebuild_snapshot(save=False)
                cases[d]["build_reading_cost_s"].append(time.perf_counter() - t)
            _sql(Path(cases[d]["cfg"]["cache_path"]), "UPDATE meta SET value=? WHERE key='recent_from'", (recent,))
    finally:
        for app in apps.values():
            app.close()

    # start -> ready, interleaved: warm-up (saves the snapshot), then restart / build / unclean per case
    runs = [(c, ROOT) for c in cases.values()] + ([(before, args.before)] if before is not None else [])
    for c, tree in runs:
        _start(c["cfg"], work, tree)
    for _ in range(args.starts):
        for kind in ("restart", "build", "unclean"):
            for c, tree in runs:
                path = Path(c["cfg"]["cache_path"])
                if kind == "build":
                    _sql(path, "DELETE FROM snapshot")
                elif kind == "unclean":
                    _sql(path, "UPDATE meta SET value='0' WHERE key='closed_cleanly'")  # as a kill -9 leaves it
                took = _start(c["cfg"], work, tree)
                key = {"restart": "restart_s", "build": "start_building_s", "unclean": "start_after_unclean_stop_s"}
                c[key[kind]].append(took)

    out: dict[str, Any] = {"series": series, "cases": []}
    for d, c in cases.items():
        c.pop("cfg")
        c["build_median_s"] = median(c["build_s"])
        if c["build_reading_cost_s"]:
            c["build_reading_cost_median_s"] = median(c["build_reading_cost_s"])
        out["cases"].append(c)
        print(
            f"  {d} days held ({c['cost_rows']} rows, {c['file_mb']} MB): build median {c['build_median_s']:.2f}s"
            + (
                f" (reading the whole cost table: {c['build_reading_cost_median_s']:.2f}s)"
                if c["build_reading_cost_s"]
                else ""
            )
            + f"; start -> ready: restart {', '.join(f'{s:.2f}' for s in c['restart_s'])} s, building "
            f"{', '.join(f'{s:.2f}' for s in c['start_building_s'])} s, after an unclean stop "
            f"{', '.join(f'{s:.2f}' for s in c['start_after_unclean_stop_s'])} s",
            flush=True,
        )
    if before is not None:
        before.pop("cfg")
        before["build_median_s"] = median(before["build_s"])
        out["before"] = before
        print(
            f"  before ({args.before}), {RECENT_DAYS} days held: build median {before['build_median_s']:.2f}s; "
            f"start -> ready: restart {', '.join(f'{s:.2f}' for s in before['restart_s'])} s, building "
            f"{', '.join(f'{s:.2f}' for s in before['start_building_s'])} s, after an unclean stop "
            f"{', '.join(f'{s:.2f}' for s in before['start_after_unclean_stop_s'])} s",
            flush=True,
        )
    save("history", out)
    return out
