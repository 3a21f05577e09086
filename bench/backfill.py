"""Benchmark: ``spend-exporter backfill`` of 400 days, then promtool's blocks: time, sizes, TSDB MB per 1,000 series
per year (docs/performance.md, "Backfill").

Two parts, because 400 days x 10k series is ~1.15 billion samples (~190 GB of OpenMetrics text):

- *builds*: the cache holds 400 days of ``--series`` exposed series; the snapshot of ``--build-days`` days spread
  over the range is built as ``backfill`` builds it, and the time is scaled to 400 days;
- *pipeline*: the whole path (backfill -> file -> ``promtool tsdb create-blocks-from openmetrics`` -> blocks) on
  400 days of ``--pipeline-series`` series, at the default 5-minute step and at 1 hour, and on one 5-minute slice
  of promtool's block size; output, promtool time and TSDB size scale linearly with the series.

``python -m bench.run backfill [--days 400] [--series 10000] [--pipeline-series 120] [--build-days 20]``
"""

from __future__ import annotations

import argparse
import datetime as dt
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import save

FAMILIES_PER_COST_SERIES = 6  # month to date, daily, baseline, stddev, previous month, forecast
TODAY = dt.date(2026, 11, 20)  # any date: Prometheus is not started here, and promtool takes any time
MAX_BLOCK = "1458h"  # as docs/backfill.md runs promtool


def _store(path: Path, days: int, cost_series: int) -> tuple[Any, Any]:
    """A cache holding ``days`` days up to yesterday of ``cost_series`` series, and its config."""
    from exporter.config import parse_config
    from exporter.store import Replacement, SourceState, Store

    cfg = parse_config(
        {
            "cache_path": str(path),
            "max_series_per_source": 1_000_000,
            "sources": [{"name": "focus-bench", "type": "focus", "paths": ["x"]}],
            "budgets": [{"name": "total", "amount_usd": 1e9}],
        }
    )
    store = Store(path)
    first = TODAY - dt.timedelta(days=days)
    chunk = 20  # days per write
    for i in range(0, days, chunk):
        start = first + dt.timedelta(days=i)
        end = min(start + dt.timedelta(days=chunk - 1), TODAY - dt.timedelta(days=1))
        costs = []
        d = start
        while d <= end:
            for s in range(cost_series):
                usd = round(1 + (d.toordinal() * 7919 + s * 104729) % 5000 / 100, 2)
                costs.append((d.isoformat(), "aws", f"{s % 40:012d}", f"svc-{s:06d}", f"team-{s % 25}", "", usd))
            d += dt.timedelta(days=1)
        store.replace(
            "focus-bench",
            Replacement(start, end, costs, [], None, [], None),
            SourceState("focus-bench", last_success=1.0),
        )
    return cfg, store


def _pipeline(bf: Any, rng: Any, tmp: Path) -> dict[str, Any]:
    """backfill -> file -> promtool -> blocks, timed and sized."""
    tmp.mkdir()
    om = tmp / "backfill.om"
    t = time.perf_counter()
    with open(om, "w", encoding="utf-8", buffering=1 << 20) as f:
        res = bf.write(rng, f, tmpdir=tmp)
    case: dict[str, Any] = {
        "step_s": rng.step,
        "series": res.series,
        "samples": res.samples,
        "days": res.days,
        "backfill_s": time.perf_counter() - t,
        "om_bytes": om.stat().st_size,
    }
    print(
        f"  {tmp.name}: {res.series} series x {res.days} days: {res.samples} samples, "
        f"{case['om_bytes'] / 1e6:.0f} MB OpenMetrics in {case['backfill_s']:.1f}s",
        flush=True,
    )
    promtool = shutil.which("promtool")
    if not promtool:
        print("  promtool not on PATH: no TSDB figures", flush=True)
        return case
    t = time.perf_counter()
    argv = [promtool, "tsdb", "create-blocks-from", "openmetrics", f"--max-block-duration={MAX_BLOCK}"]
    subprocess.run([*argv, str(om), str(tmp / "tsdb")], check=True, stdout=subprocess.DEVNULL)
    case["promtool_s"] = time.perf_counter() - t
    om.unlink()
    case["tsdb_bytes"] = _dir_bytes(tmp / "tsdb")
    years = res.days / 365
    case["tsdb_mb_per_1000_series_year"] = case["tsdb_bytes"] / 1e6 / (res.series / 1000) / years
    case["om_gb_per_1000_series_year"] = case["om_bytes"] / 1e9 / (res.series / 1000) / years
    print(
        f"    promtool {case['promtool_s']:.1f}s -> TSDB {case['tsdb_bytes'] / 1e6:.1f} MB: "
        f"{case['tsdb_mb_per_1000_series_year']:.1f} MB per 1,000 series per year "
        f"(OpenMetrics {case['om_gb_per_1000_series_year']:.1f} GB per 1,000 series per year)",
        flush=True,
    )
    return case


def _dir_bytes(p: Path) -> int:
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.run backfill")
    ap.add_argument("--days", type=int, default=400)
    ap.add_argument("--series", type=int, default=10_000, help="exposed series of the builds part")
    ap.add_argument("--pipeline-series", type=int, default=120, help="exposed series of the pipeline part")
    ap.add_argument("--build-days", type=int, default=20, help="days built in the builds part (scaled to --days)")
    args = ap.parse_args(argv)
    from exporter.backfill import Backfill, Range, _midnight

    out: dict[str, Any] = {"days": args.days}
    tmp = Path(tempfile.mkdtemp(prefix="spend-bench-backfill-"))
    try:
        # ---- builds at --series
        cost_series = args.series // FAMILIES_PER_COST_SERIES
        t = time.perf_counter()
        cfg, store = _store(tmp / "big.sqlite", args.days, cost_series)
        print(f"  cache: {args.days} days x {cost_series} cost series in {time.perf_counter() - t:.0f}s", flush=True)
        bf = Backfill(cfg, store)
        span = args.days - 1
        gap = max(args.build_days - 1, 1)
        days = [TODAY - dt.timedelta(days=span - i * span // gap) for i in range(args.build_days)]
        times, series = [], 0
        for d in days:
            t = time.perf_counter()
            fams = bf.families_at(d)
            times.append(time.perf_counter() - t)
            series = max(series, sum(sum(f.count(b"\n") for f in fam.fragments) for fam in fams))
        store.close()
        per_day = sum(times) / len(times)
        out["builds"] = {
            "series": series,
            "cost_series": cost_series,
            "days_built": len(days),
            "build_s_per_day": per_day,
            "build_s_max": max(times),
            "build_s_for_all_days": per_day * args.days,
        }
        print(
            f"  builds: {series} series, {per_day:.3f}s a day (max {max(times):.3f}s) -> "
            f"{per_day * args.days:.0f}s for {args.days} days",
            flush=True,
        )

        # ---- the whole pipeline at --pipeline-series: 5-minute samples over the range, 1-hour samples, and one
        # 5-minute slice the size of promtool's block (docs/backfill.md: writing a large backfill a slice at a time)
        cost_series = max(1, args.pipeline_series // FAMILIES_PER_COST_SERIES)
        cfg, store = _store(tmp / "small.sqlite", args.days, cost_series)
        whole = Range(_midnight(TODAY - dt.timedelta(days=args.days - 1)), _midnight(TODAY + dt.timedelta(days=1)))
        block = 1458 * 3600
        slice_end = whole.until // block * block
        cases = {
            "step_300s": whole,
            "step_3600s": Range(whole.since, whole.until, 3600),
            "step_300s_one_block_slice": Range(slice_end - block, slice_end),
        }
        for name, rng in cases.items():
            case = _pipeline(Backfill(cfg, store), rng, tmp / name)
            case["range_days"] = (rng.until - rng.since) / 86400
            out[name] = case
            if "tsdb_mb_per_1000_series_year" in case:
                k = args.series / case["series"]
                case["scaled_to_series"] = {
                    "series": args.series,
                    "om_gb": case["om_bytes"] * k / 1e9,
                    "backfill_write_s": case["backfill_s"] * k,
                    "promtool_s": case["promtool_s"] * k,
                    "tsdb_mb": case["tsdb_bytes"] * k / 1e6,
                }
                print(f"    scaled to {args.series} series: {case['scaled_to_series']}", flush=True)
        store.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save("backfill", out)
    return out


if __name__ == "__main__":
    run()
