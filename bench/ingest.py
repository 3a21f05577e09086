"""Benchmark 4: FOCUS ingestion (files -> aggregated records) by the focus source vs the same aggregation in DuckDB.

1M rows by default, CSV and Parquet; ``--rows 10000000`` for 10M (needs a few GB of disk and several minutes).
The limit is one DuckDB query doing the cost aggregation the provider does (day, provider, account, service,
tags, currency, model), fetched into Python, on the same files.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import time
from pathlib import Path
from typing import Any

from bench.common import DATA, _generate, median, save, today_noon


def _data(rows: int, fmt: str) -> Path:
    now = today_noon()
    base = DATA / f"ingest-{rows}-{now:%Y%m%d}"
    csv_dir, pq_dir = base / "csv", base / "parquet"
    if not (base / "READY").exists():
        days = 40
        series = max(1, math.ceil(rows / days))
        print(f"  generating {series} series x {days} days (~{rows} rows) into {base} (once) ...", flush=True)
        _generate().generate(csv_dir, now=now, days=days, series=series)
        pq_dir.mkdir(parents=True, exist_ok=True)
        for f in csv_dir.glob("*.csv"):
            # typed costs and timestamps, as AWS Data Exports and Azure FocusCost write Parquet
            _generate()._to_parquet(f, pq_dir / (f.stem + ".parquet"))
        for f in csv_dir.glob("*.parquet"):
            f.rename(pq_dir / f.name)
        (base / "READY").touch()
    return csv_dir if fmt == "csv" else pq_dir


def _provider_fetch(d: Path) -> tuple[float, int]:
    from exporter.config import parse_config
    from exporter.model import FetchWindow
    from exporter.providers.base import ProviderContext
    from exporter.providers.focus import FocusProvider

    cfg = parse_config({"sources": [{"name": "f", "type": "focus", "paths": [str(d / "*.csv"), str(d / "*.parquet")]}]})
    now = today_noon()
    window = FetchWindow(start=now.date() - dt.timedelta(days=62), end=now.date(), now=now)
    p = FocusProvider(cfg.sources[0], ProviderContext("f"))  # type: ignore[arg-type]
    t = time.perf_counter()
    r = p.fetch(window)
    return time.perf_counter() - t, len(r.costs) + len(r.usage)


def _duckdb_direct(d: Path) -> tuple[float, int]:
    import duckdb

    files = sorted(str(f) for f in d.iterdir() if f.suffix in (".csv", ".parquet"))
    csv = [f for f in files if f.endswith(".csv")]
    pq = [f for f in files if f.endswith(".parquet")]
    parts = []
    if csv:
        parts.append(f"SELECT * FROM read_csv({csv!r}, all_varchar = true, header = true, union_by_name = true)")
    if pq:
        parts.append(f"SELECT * FROM read_parquet({pq!r}, union_by_name = true)")
    src = " UNION ALL BY NAME ".join(parts)
    t = time.perf_counter()
    con = duckdb.connect()
    rows = con.execute(
        f"""SELECT CAST(CAST(ChargePeriodStart AS TIMESTAMPTZ) AS DATE), ProviderName, SubAccountId, ServiceName,
               Tags, BillingCurrency, x_Model, SUM(TRY_CAST(BilledCost AS DOUBLE))
        FROM ({src}) GROUP BY ALL"""
    ).fetchall()
    con.close()
    return time.perf_counter() - t, len(rows)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.run ingest")
    ap.add_argument("--rows", default="1000000", help="comma-separated row counts, e.g. 1000000,10000000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"cases": []}
    for rows in [int(x) for x in args.rows.split(",")]:
        for fmt in ("csv", "parquet"):
            d = _data(rows, fmt)
            prov = [_provider_fetch(d) for _ in range(args.repeat)]
            lim = [_duckdb_direct(d) for _ in range(args.repeat)]
            case = {
                "rows_target": rows,
                "format": fmt,
                "bytes": sum(f.stat().st_size for f in d.iterdir()),
                "provider_s": [p[0] for p in prov],
                "provider_records": prov[0][1],
                "duckdb_s": [x[0] for x in lim],
                "duckdb_groups": lim[0][1],
            }
            case["provider_median_s"] = median(case["provider_s"])
            case["duckdb_median_s"] = median(case["duckdb_s"])
            case["ratio"] = case["provider_median_s"] / case["duckdb_median_s"]
            out["cases"].append(case)
            print(
                f"  {rows:>9} rows {fmt:<7} focus source {case['provider_median_s']:6.2f}s "
                f"({case['provider_records']} records)  duckdb direct {case['duckdb_median_s']:6.2f}s "
                f"({case['duckdb_groups']} groups)  ratio {case['ratio']:.2f}x",
                flush=True,
            )
    save("ingest", out)
    return out
