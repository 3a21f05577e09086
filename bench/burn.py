"""Benchmark: one burn refresh (minute fetch from the emulator, pricing, publish) beside 100k cost series.

The burn refresh republishes the whole snapshot every ``burn_interval``: the cost views are cached per source,
so the cost is the fetch, the burn arithmetic and concatenating, rendering and gzipping the exposition.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import time
from typing import Any

import yaml

from bench.common import median, save, scale_data


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.run burn")
    ap.add_argument("--series", default="100000")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    from exporter.app import build_app
    from exporter.config import parse_config
    from tests.emulators.ai_dataset import build_ai_dataset
    from tests.emulators.openai_admin import DEFAULT_ADMIN_KEY, OpenAIAdminEmulator
    from tests.emulators.scenario import Scenario, runaway_schedule

    os.environ["BENCH_OPENAI_ADMIN_KEY"] = DEFAULT_ADMIN_KEY
    out: dict[str, Any] = {"cases": []}
    for n in [int(x) for x in args.series.split(",")]:
        data = scale_data(n)
        now = dt.datetime.now(dt.UTC)
        t0 = now - dt.timedelta(minutes=10)
        scenario = Scenario([runaway_schedule(t0)], lambda t=now: t, start=now - dt.timedelta(hours=2))
        with OpenAIAdminEmulator(build_ai_dataset(now, days=2), scenario=scenario) as emu:
            cfg = yaml.safe_load((data / "config.yml").read_text())
            cfg["sources"].append(
                {
                    "name": "openai",
                    "type": "openai",
                    "admin_key_env": "BENCH_OPENAI_ADMIN_KEY",
                    "base_url": emu.url + "/v1",
                }
            )
            app = build_app(parse_config(cfg), now=lambda t=now: t)
            app.rebuild_snapshot()  # the cost views built and cached, as after the daily refreshes
            burns, publishes = [], []
            for _ in range(args.repeat):
                t = time.perf_counter()
                res = app.refresh_burn("openai")
                burns.append(time.perf_counter() - t)
                assert res.ok, res.error
                t = time.perf_counter()
                snap = app.rebuild_snapshot(save=False)
                publishes.append(time.perf_counter() - t)
            app.close()
        case = {
            "series_target": n,
            "series": snap.series,
            "bytes": len(snap.text),
            "burn_refresh_s": burns,
            "publish_only_s": publishes,
            "median_burn_refresh_s": median(burns),
            "median_publish_only_s": median(publishes),
        }
        out["cases"].append(case)
        print(
            f"  {n:>7} target: {snap.series} series; one burn refresh (fetch + price + publish) median "
            f"{case['median_burn_refresh_s']:.3f}s, of which the publish alone {case['median_publish_only_s']:.3f}s",
            flush=True,
        )
    save("burn", out)
    return out
