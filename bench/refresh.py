"""Benchmark 2: records in the store -> published snapshot (aggregate, render, gzip), at 10k and 100k series."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import yaml

from bench.common import median, save, scale_data


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.run refresh")
    ap.add_argument("--series", default="10000,100000")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    from exporter.app import build_app
    from exporter.config import parse_config

    out: dict[str, Any] = {"cases": []}
    for n in [int(x) for x in args.series.split(",")]:
        data = scale_data(n)
        meta = json.loads((data / "meta.json").read_text())
        app = build_app(parse_config(yaml.safe_load((data / "config.yml").read_text())))
        rows = app.store.query("SELECT COUNT(*) FROM cost")[0][0]
        times = []
        for _ in range(args.repeat):
            app.builder.invalidate("focus-bench")
            t = time.perf_counter()
            snap = app.rebuild_snapshot()
            times.append(time.perf_counter() - t)
        app.close()
        case = {
            "series_target": n,
            "series": snap.series,
            "store_cost_rows": rows,
            "bytes": len(snap.text),
            "bytes_gzip": len(snap.text_gz),
            "build_s": times,
            "median_s": median(times),
            "cold_refresh_s": meta.get("cold_refresh_s"),
        }
        out["cases"].append(case)
        print(
            f"  {n:>7} target: {snap.series} series from {rows} stored rows -> snapshot median "
            f"{case['median_s']:.3f}s (min {min(times):.3f}s, n={len(times)}); "
            f"{len(snap.text) / 1e6:.1f} MB, gzip {len(snap.text_gz) / 1e6:.2f} MB; "
            f"cold refresh from files {meta.get('cold_refresh_s', 0):.1f}s",
            flush=True,
        )
    save("refresh", out)
    return out
