"""Benchmark 4: FOCUS ingestion (files -> aggregated records) by the focus source vs the same aggregation in DuckDB.

1M rows by default, CSV and Parquet; ``--rows 10000000`` for 10M (needs a few GB of disk and several minutes).
The limit is one DuckDB query doing the cost aggregation the provider does (day, provider, account, service,
tags, currency, model), fetched into Python with ``fetchall()``, on the same files. The sides alternate and
each records wall and CPU seconds (DuckDB's threads and the focus source's reader process included). A third side,
for information, runs the limit's query fetched as the focus source fetches (each series' strings once, rows as
numbers).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import resource
import time
from pathlib import Path
from typing import Any

from bench.common import DATA, _generate, median, save, today_noon

BASE_ROWS = 1_000_000


def _data(rows: int, fmt: str) -> Path:
    now = today_noon()
    base = DATA / f"ingest-{rows}-{now:%Y%m%d}"
    csv_dir, pq_dir = base / "csv", base / "parquet"
    if rows > BASE_ROWS and not (base / "READY").exists():
        _replicate(rows, base)
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


def _replicate(rows: int, base: Path) -> None:
    """More than 1M rows: the 1M-row files, each row repeated with its ServiceName suffixed ``~1``, ``~2``, ...

    The generator holds every row in memory (about 1.5 KB each), so 10M rows would need some 15 GB; this keeps
    the same exports (formats, tags, currencies, typed Parquet) with k times the series, streamed by DuckDB.
    """
    import duckdb

    k = math.ceil(rows / BASE_ROWS)
    src = _data(BASE_ROWS, "csv").parent
    print(f"  writing {k} x the {BASE_ROWS}-row files (ServiceName suffixed per copy) into {base} (once) ...")
    con = duckdb.connect()
    con.execute("SET enable_progress_bar = false")
    suffixed = "t.* REPLACE (CASE WHEN r.i = 0 THEN t.ServiceName ELSE t.ServiceName || ' ~' || r.i END AS ServiceName)"
    for fmt in ("csv", "parquet"):
        (base / fmt).mkdir(parents=True, exist_ok=True)
        for f in sorted((src / fmt).glob(f"*.{fmt}")):
            reader = f"read_csv('{f}', all_varchar = true, header = true)" if fmt == "csv" else f"read_parquet('{f}')"
            opts = "HEADER" if fmt == "csv" else "FORMAT parquet"
            con.execute(
                f"COPY (SELECT {suffixed} FROM {reader} t, range({k}) r(i)) TO '{base / fmt / f.name}' ({opts})"
            )
    con.close()
    (base / "READY").touch()


def _provider_fetch(d: Path) -> tuple[float, float, int]:
    from exporter.config import parse_config
    from exporter.model import FetchWindow
    from exporter.providers.base import ProviderContext
    from exporter.providers.focus import FocusProvider

    cfg = parse_config({"sources": [{"name": "f", "type": "focus", "paths": [str(d / "*.csv"), str(d / "*.parquet")]}]})
    now = today_noon()
    window = FetchWindow(start=now.date() - dt.timedelta(days=62), end=now.date(), now=now)
    p = FocusProvider(cfg.sources[0], ProviderContext("f"))  # type: ignore[arg-type]
    t, c = time.perf_counter(), _cpu()
    r = p.fetch(window)
    return time.perf_counter() - t, _cpu() - c, len(r.costs) + len(r.usage)


def _cpu() -> float:
    """CPU seconds of this process and of its finished children: the focus source reads the files in a reader
    process (exporter/providers/focus_reader.py), whose CPU counts as the source's."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _source(d: Path) -> str:
    files = sorted(str(f) for f in d.iterdir() if f.suffix in (".csv", ".parquet"))
    csv = [f for f in files if f.endswith(".csv")]
    pq = [f for f in files if f.endswith(".parquet")]
    parts = []
    if csv:
        parts.append(f"SELECT * FROM read_csv({csv!r}, all_varchar = true, header = true, union_by_name = true)")
    if pq:
        parts.append(f"SELECT * FROM read_parquet({pq!r}, union_by_name = true)")
    return " UNION ALL BY NAME ".join(parts)


def _duckdb_series_fetch(d: Path) -> tuple[float, float, int]:
    """The limit's aggregation, fetched the way the focus source fetches: each series' strings once, rows as numbers.

    Not the limit of the target (a user writing the query would use ``fetchall()``): it shows how much of the
    focus source's speed comes from that fetch rather than from the aggregation.
    """
    import duckdb

    src = _source(d)
    t, c = time.perf_counter(), time.process_time()
    con = duckdb.connect()
    con.execute(
        f"""CREATE TEMP TABLE a AS SELECT CAST(CAST(ChargePeriodStart AS TIMESTAMPTZ) AS DATE) AS d, ProviderName AS p,
            SubAccountId AS ac, ServiceName AS sv, Tags AS tg, BillingCurrency AS cu, x_Model AS m,
            SUM(TRY_CAST(BilledCost AS DOUBLE)) AS c
        FROM ({src}) GROUP BY ALL"""
    )
    con.execute(
        "CREATE TEMP TABLE s AS SELECT CAST(ROW_NUMBER() OVER () - 1 AS INTEGER) AS id, * "
        "FROM (SELECT DISTINCT p, ac, sv, tg, cu, m FROM a)"
    )
    series = con.execute("SELECT p, ac, sv, tg, cu, m FROM s ORDER BY id").fetchall()
    first = con.execute("SELECT MIN(d), MAX(d) FROM a").fetchone()
    days = [first[0] + dt.timedelta(days=i) for i in range((first[1] - first[0]).days + 1)] if first[0] else []
    same = " AND ".join(f"a.{k} IS NOT DISTINCT FROM s.{k}" for k in ("p", "ac", "sv", "tg", "cu", "m"))
    rows = con.execute(f"SELECT CAST(a.d - $d0 AS INTEGER), s.id, a.c FROM a JOIN s ON {same}", {"d0": first[0]})
    out = [
        (days[i], p, ac, sv, tg, cu, m, amount)
        for i, j, amount in rows.fetchall()
        for p, ac, sv, tg, cu, m in (series[j],)
    ]
    con.close()
    return time.perf_counter() - t, time.process_time() - c, len(out)


def _duckdb_direct(d: Path) -> tuple[float, float, int]:
    import duckdb

    src = _source(d)
    t, c = time.perf_counter(), time.process_time()
    con = duckdb.connect()
    rows = con.execute(
        f"""SELECT CAST(CAST(ChargePeriodStart AS TIMESTAMPTZ) AS DATE), ProviderName, SubAccountId, ServiceName,
               Tags, BillingCurrency, x_Model, SUM(TRY_CAST(BilledCost AS DOUBLE))
        FROM ({src}) GROUP BY ALL"""
    ).fetchall()
    con.close()
    return time.perf_counter() - t, time.process_time() - c, len(rows)


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.run ingest")
    ap.add_argument("--rows", default="1000000", help="comma-separated row counts, e.g. 1000000,10000000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"cases": []}
    for rows in [int(x) for x in args.rows.split(",")]:
        for fmt in ("csv", "parquet"):
            d = _data(rows, fmt)
            prov, lim, ser = [], [], []
            for _ in range(args.repeat):  # interleaved, so that load from other jobs falls on all sides alike
                prov.append(_provider_fetch(d))
                lim.append(_duckdb_direct(d))
                ser.append(_duckdb_series_fetch(d))
            case = {
                "rows_target": rows,
                "format": fmt,
                "bytes": sum(f.stat().st_size for f in d.iterdir()),
                "provider_s": [p[0] for p in prov],
                "provider_cpu_s": [p[1] for p in prov],
                "provider_records": prov[0][2],
                "duckdb_s": [x[0] for x in lim],
                "duckdb_cpu_s": [x[1] for x in lim],
                "duckdb_groups": lim[0][2],
                "duckdb_series_fetch_s": [x[0] for x in ser],
                "duckdb_series_fetch_cpu_s": [x[1] for x in ser],
            }
            case["provider_median_s"] = median(case["provider_s"])
            case["duckdb_median_s"] = median(case["duckdb_s"])
            case["ratio"] = case["provider_median_s"] / case["duckdb_median_s"]
            # CPU seconds of the process (DuckDB's threads included): less sensitive to other jobs on the machine
            case["cpu_ratio"] = median(case["provider_cpu_s"]) / median(case["duckdb_cpu_s"])
            case["series_fetch_cpu_ratio"] = median(case["provider_cpu_s"]) / median(case["duckdb_series_fetch_cpu_s"])
            out["cases"].append(case)
            print(
                f"  {rows:>9} rows {fmt:<7} focus source {case['provider_median_s']:6.2f}s "
                f"({case['provider_records']} records)  duckdb direct {case['duckdb_median_s']:6.2f}s "
                f"({case['duckdb_groups']} groups)  ratio {case['ratio']:.2f}x  cpu ratio {case['cpu_ratio']:.2f}x  "
                f"(cpu ratio to the same query fetched as the focus source does: "
                f"{case['series_fetch_cpu_ratio']:.2f}x)",
                flush=True,
            )
    save("ingest", out)
    return out
