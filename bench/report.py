"""Prints bench/results/*.json as the Markdown tables of docs/performance.md: ``python -m bench.report``."""

from __future__ import annotations

import json
from typing import Any

from bench.common import RESULTS


def _load(name: str) -> dict[str, Any] | None:
    p = RESULTS / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def scrape(r: dict[str, Any]) -> None:
    print("| series | server | encoding | bytes | median ms | p99 ms | n | scrapes/s ×1 | scrapes/s ×16 |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    for c in r["cases"]:
        lat, tp = c["latency"], c["throughput"]
        print(
            f"| {c['series_target']:,} | {c['server']} | {'gzip' if c['gzip'] else 'plain'} | {lat['bytes']:,} "
            f"| {lat['median_ms']:.2f} | {lat['p99_ms']:.2f} | {lat['n']} "
            f"| {tp[0]['per_s']:.1f} | {tp[1]['per_s']:.1f} |"
        )
    print()
    print("| series | encoding | exporter ÷ bare (median) | naive ÷ exporter (median) | exporter ÷ bare (×16 rate) |")
    print("|---:|---|---:|---:|---:|")
    for x in r["ratios"]:

        def f(v: float | None, d: int) -> str:
            return "–" if v is None else f"{v:.{d}f}"

        print(
            f"| {x['series_target']:,} | {'gzip' if x['gzip'] else 'plain'} | {f(x['exporter_over_bare'], 2)}× "
            f"| {f(x['naive_over_exporter'], 0)}× | {f(x['throughput16_exporter_over_bare'], 2)} |"
        )


def refresh(r: dict[str, Any]) -> None:
    print("| series | stored cost rows | exposition | gzip | snapshot build median (min) | cold refresh from files |")
    print("|---:|---:|---:|---:|---:|---:|")
    for c in r["cases"]:
        print(
            f"| {c['series']:,} | {c['store_cost_rows']:,} | {c['bytes'] / 1e6:.1f} MB "
            f"| {c['bytes_gzip'] / 1e6:.2f} MB "
            f"| {c['median_s']:.2f} s ({min(c['build_s']):.2f} s) | {c['cold_refresh_s']:.1f} s |"
        )


def memory(r: dict[str, Any]) -> None:
    print("| series | peak RSS | RSS when ready | start → /-/ready (each start) | SDK modules imported |")
    print("|---:|---:|---:|---|---|")
    print(
        f"| {r.get('series_served', r['series']):,} | {r['peak_rss_mb']:.0f} MB | {r['rss_after_ready_mb']:.0f} MB "
        f"| {', '.join(f'{s:.2f} s' for s in r['ready_s'])} | {', '.join(r['sdk_modules_imported']) or 'none'} |"
    )


def ingest(r: dict[str, Any]) -> None:
    print("| rows | format | size | focus source (median) | DuckDB direct (median) | ratio |")
    print("|---:|---|---:|---:|---:|---:|")
    for c in r["cases"]:
        print(
            f"| {c['rows_target']:,} | {c['format']} | {c['bytes'] / 1e6:.0f} MB | {c['provider_median_s']:.2f} s "
            f"| {c['duckdb_median_s']:.2f} s | {c['ratio']:.2f}× |"
        )


def economy(r: dict[str, Any]) -> None:
    e, n = r["exporter"], r["naive"]
    print("| | scrapes | restarts | refreshes | billing API requests | paid cost |")
    print("|---|---:|---:|---:|---:|---:|")
    print(
        f"| spend-exporter | {e['scrapes']:,} | {e['restarts']} | {e['refreshes']} | {e['emulator_requests']:,} "
        f"(per refresh: {', '.join(map(str, e['calls_per_refresh']))}) | ${e['api_cost_usd_total']:.2f} |"
    )
    print(
        f"| naive (query per scrape) | {e['scrapes']:,} | – | {e['scrapes']:,} | {n['projected_requests']:,.0f} "
        f"({n['requests_per_scrape']:.1f} per scrape, measured over {n['scrapes_run']}) | ${n['projected_usd']:,.2f} |"
    )


def main() -> None:
    for name, fn in (
        ("scrape", scrape),
        ("refresh", refresh),
        ("memory", memory),
        ("ingest", ingest),
        ("economy", economy),
    ):
        r = _load(name)
        if r is None:
            continue
        load = ", ".join(f"{x:.1f}" for x in r["machine"]["load_avg_at_start"])
        print(f"### {name} ({r['when']}, load average at start {load})\n")
        fn(r)
        print()


if __name__ == "__main__":
    main()
