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
    def starts(key: str) -> str:
        return ", ".join(f"{s:.2f} s" for s in r.get(key, [])) or "–"

    print(
        "| series | peak RSS | RSS when ready | start → /-/ready: restart (saved snapshot) "
        "| start that builds the snapshot | after an unclean stop | SDK modules imported |"
    )
    print("|---:|---:|---:|---|---|---|---|")
    print(
        f"| {r.get('series_served', r['series']):,} | {r['peak_rss_mb']:.0f} MB | {r['rss_after_ready_mb']:.0f} MB "
        f"| {starts('ready_s')} | {starts('ready_building_snapshot_s')} | {starts('ready_after_unclean_stop_s')} "
        f"| {', '.join(r['sdk_modules_imported']) or 'none'} |"
    )


def ingest(r: dict[str, Any]) -> None:
    print(
        "| rows | format | size | focus source (median) | DuckDB direct (median) | ratio | CPU ratio "
        "| CPU ratio, limit fetched like the source |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for c in r["cases"]:
        cpu = f"{c['cpu_ratio']:.2f}×" if "cpu_ratio" in c else "–"
        series = f"{c['series_fetch_cpu_ratio']:.2f}×" if "series_fetch_cpu_ratio" in c else "–"
        print(
            f"| {c['rows_target']:,} | {c['format']} | {c['bytes'] / 1e6:.0f} MB | {c['provider_median_s']:.2f} s "
            f"| {c['duckdb_median_s']:.2f} s | {c['ratio']:.2f}× | {cpu} | {series} |"
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


def _level(x: dict[str, Any]) -> str:
    """The exporter's RSS while a reader process reads the files (the exporter waits): after warm-up → end."""
    if x.get("rss_level_warm_mb") is None or x["rss_level_warm_mb"] == x["rss_level_end_mb"]:
        return "–"
    return f"{x['rss_level_warm_mb']:.0f} → {x['rss_level_end_mb']:.0f} MB ({x['rss_level_ratio']:.2f})"


def _peaks(x: dict[str, Any]) -> str:
    """The exporter's highest RSS in the first and the second half after warm-up."""
    first, second = x.get("rss_peak_halves_mb", (float("nan"), float("nan")))
    if first != first:  # NaN: too few refreshes
        return "–"
    return f"{first:.0f} → {second:.0f} MB ({x['rss_peak_ratio']:.2f})"


def soak(r: dict[str, Any]) -> None:
    """The soak (bench/results/soak.json) and its variants (soak-*.json: the bare limit, no refresh, paced)."""
    runs = [r] + [json.loads(p.read_text()) for p in sorted(RESULTS.glob("soak-*.json"))]
    print(
        "| run | server | scrapers | refreshes (started / published) | scrapes | errors | median ms | p99 ms "
        "| max ms | > 1 s | RSS, same phase: after warm-up → end | RSS, any phase: after warm-up → end "
        "| exporter's highest, first → second half | VmHWM | reader's peak | load average (before → after) |"
    )
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|---|---|---:|---:|---|")
    for x in runs:
        pace = "back to back" if not x["pace_s"] else f"one per {x['pace_s']:g} s each"
        mix = f"{x['scrapers'] - x['gzip_scrapers']} plain + {x['gzip_scrapers']} gzip, {pace}"
        ref = "off" if x["refresh_interval"] == "off" else f"every {x['refresh_interval']}: "
        if x["refresh_interval"] != "off":
            ref += f"{x['refreshes_started']} / {x['refreshes_published']}"
        load = " → ".join("/".join(f"{v:.1f}" for v in x[k]) for k in ("load_avg_before", "load_avg_after"))
        print(
            f"| {x['benchmark']} ({x['when'][11:16]}) | {x['server']} | {mix} | {ref} | {x['scrapes']:,} "
            f"| {x['errors']} | {x['median_ms']:.0f} | {x['p99_ms']:.0f} | {x['max_ms']:.0f} | {x['slower_than_1s']} "
            f"| {_level(x)} | {x['rss_warm_mb']:.0f} → {x['rss_end_mb']:.0f} MB ({x['rss_ratio']:.2f}) | {_peaks(x)} "
            f"| {x['vm_hwm_mb']:.0f} MB | {x.get('reader_rss_peak_mb', 0):.0f} MB | {load} |"
        )
    print()
    print("| run | encoding | scrapes | body | median ms | p99 ms | max ms | > 1 s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for x in runs:
        for enc, v in x["by_encoding"].items():
            if not v["scrapes"]:
                continue
            print(
                f"| {x['benchmark']} | {enc} | {v['scrapes']:,} | {v['bytes'] / 1e6:.2f} MB | {v['median_ms']:.0f} "
                f"| {v['p99_ms']:.0f} | {v['max_ms']:.0f} | {v['slower_than_1s']} |"
            )
    cycles = [(x["benchmark"], c) for x in runs for c in x["refresh_cycles"]]
    if cycles:
        print()
        print("| run | refresh started at | fetch | published by | RSS at its start | RSS peak |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, c in cycles:
            fetch = "–" if c["fetch_s"] is None else f"{c['fetch_s']:.1f} s"
            pub = "after the soak" if c["published_by_s"] is None else f"{c['published_by_s']:.1f} s"
            at_start = "– (before the soak)" if c["rss_at_start_mb"] is None else f"{c['rss_at_start_mb']:.0f} MB"
            print(f"| {name} | {c['start_s']:.1f} s | {fetch} | {pub} | {at_start} | {c['rss_peak_mb']:.0f} MB |")


def history(r: dict[str, Any]) -> None:
    """bench/results/history.json: build and starts with 400 days held against 70 (and the code before)."""

    def row(label: str, c: dict[str, Any]) -> str:
        starts = [", ".join(f"{x:.2f}" for x in c[k]) + " s" for k in ("restart_s", "start_building_s")]
        starts.append(", ".join(f"{x:.2f}" for x in c["start_after_unclean_stop_s"]) + " s")
        rows = f"{c['cost_rows']:,}" if "cost_rows" in c else ""
        size = f"{c['file_mb']:,.0f} MB" if "file_mb" in c else ""
        return f"| {label} | {rows} | {size} | {c['build_median_s']:.2f} s | " + " | ".join(starts) + " |"

    print(
        "| | cost rows | cache file | snapshot build, median | start → `/-/ready`: restart (saved snapshot) "
        "| start that builds the snapshot | start after an unclean stop |"
    )
    print("|---|---:|---:|---:|---|---|---|")
    if "before" in r:
        print(row(f"before, {r['before']['days_held']} days held", r["before"]))
    for c in r["cases"]:
        print(row(f"{c['days_held']} days held", c))
        if c.get("build_reading_cost_s"):
            median = c["build_reading_cost_median_s"]
            print(f"| {c['days_held']} days, reading the whole `cost` table | | | {median:.2f} s | | | |")


def main() -> None:
    for name, fn in (
        ("scrape", scrape),
        ("refresh", refresh),
        ("memory", memory),
        ("ingest", ingest),
        ("economy", economy),
        ("soak", soak),
        ("history", history),
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
