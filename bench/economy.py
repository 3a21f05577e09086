"""Benchmark 5: API economy. 24 simulated hours on a fake clock, a scrape every 15 s, three restarts, against the
AWS Cost Explorer emulator (tests/emulators/aws_ce.py) with the real boto3 client; vs a naive exporter that
queries Cost Explorer on every scrape.

The naive side runs ``--naive-scrapes`` real scrapes (each one a full fetch through the same provider) and
its day is projected from the measured calls per scrape; the exporter side runs the whole day.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import save

DAY_S = 86400
SCRAPE_S = 15
CE_PRICE = 0.01


def _counters(text: str) -> tuple[int, float]:
    from prometheus_client.parser import text_string_to_metric_families

    calls, cost = 0, 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "spend_exporter_api_requests_total":
                calls += int(s.value)
            elif s.name == "spend_exporter_api_cost_usd_total":
                cost += s.value
    return calls, cost


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.run economy")
    ap.add_argument("--hours", type=float, default=24.0)
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--interval", default="6h", help="the aws source's refresh interval")
    ap.add_argument("--naive-scrapes", type=int, default=10)
    args = ap.parse_args(argv)

    os.environ.update(
        {
            "AWS_ACCESS_KEY_ID": "AKIABENCHSPENDEXPORTER",
            "AWS_SECRET_ACCESS_KEY": "bench-only-secret-key-0123456789",
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
        }
    )
    for k in ("AWS_PROFILE", "AWS_SESSION_TOKEN"):
        os.environ.pop(k, None)
    import random

    from exporter.cli import assemble
    from exporter.config import parse_config
    from exporter.providers.aws import AwsProvider
    from exporter.providers.base import ProviderContext
    from exporter.store import SourceState
    from exporter.timing import fetch_window
    from tests.emulators.aws_ce import AwsCostExplorerEmulator
    from tests.emulators.dataset import build_dataset

    start = dt.datetime.now(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    clock = {"t": start}

    def now() -> dt.datetime:
        return clock["t"]

    total_s = int(args.hours * 3600)
    scrapes = total_s // SCRAPE_S
    restart_at = {int(total_s * (i + 1) / (args.restarts + 1)) // SCRAPE_S * SCRAPE_S for i in range(args.restarts)}
    with tempfile.TemporaryDirectory() as tmp, AwsCostExplorerEmulator(build_dataset(start.date())) as emu:
        raw = {
            "cache_path": str(Path(tmp) / "cache.sqlite"),
            "sources": [
                {
                    "name": "aws",
                    "type": "aws",
                    "interval": args.interval,
                    "endpoint_url": emu.url,
                    "group_by_account": True,
                    "max_api_cost_usd_per_day": 5.0,
                }
            ],
        }
        cfg = parse_config(raw)
        app, scheduler = assemble(cfg, now=now, rng=random.Random(1))
        refreshes = 0
        t0 = time.perf_counter()
        calls_per_refresh: list[int] = []
        for i in range(scrapes):
            clock["t"] = start + dt.timedelta(seconds=i * SCRAPE_S)
            if i * SCRAPE_S in restart_at:
                app.close()
                app, scheduler = assemble(cfg, now=now, rng=random.Random(i))
            before = len(emu.requests)
            ran = scheduler.run_pending()
            if ran:
                refreshes += len(ran)
                calls_per_refresh.append(len(emu.requests) - before)
            body = app.exposition()  # the scrape
            assert body
        calls, cost = _counters(app.exposition())
        app.close()
        wall = time.perf_counter() - t0
        ours = {
            "scrapes": scrapes,
            "restarts": len(restart_at),
            "refreshes": refreshes,
            "calls_per_refresh": calls_per_refresh,
            "emulator_requests": len(emu.requests),
            "api_requests_total": calls,
            "api_cost_usd_total": round(cost, 4),
            "wall_s": wall,
        }
        print(
            f"  exporter: {scrapes} scrapes, {len(restart_at)} restarts, {refreshes} refreshes "
            f"(calls each: {calls_per_refresh}) -> {len(emu.requests)} requests to the emulator, "
            f"spend_exporter_api_requests_total {calls}, ${cost:.2f}  ({wall:.0f}s wall)",
            flush=True,
        )

        # the naive exporter: every scrape queries Cost Explorer for what the families need (no cache)
        before = len(emu.requests)
        paid = 0.0

        def on_call(op: str, status: str, c: float) -> None:
            nonlocal paid
            paid += c

        src = cfg.sources[0]
        provider = AwsProvider(src, ProviderContext("aws", on_call=on_call))  # type: ignore[arg-type]
        t0 = time.perf_counter()
        for i in range(args.naive_scrapes):
            clock["t"] = start + dt.timedelta(seconds=i * SCRAPE_S)
            provider.fetch(fetch_window(src, SourceState("aws"), now(), cold=True))
        provider.close()
        per_scrape = (len(emu.requests) - before) / args.naive_scrapes
        naive = {
            "scrapes_run": args.naive_scrapes,
            "requests_per_scrape": per_scrape,
            "usd_per_scrape": paid / args.naive_scrapes,
            "projected_requests": per_scrape * scrapes,
            "projected_usd": paid / args.naive_scrapes * scrapes,
            "wall_s_per_scrape": (time.perf_counter() - t0) / args.naive_scrapes,
        }
    print(
        f"  naive: {per_scrape:.1f} requests and ${naive['usd_per_scrape']:.2f} per scrape "
        f"(measured over {args.naive_scrapes}) -> {naive['projected_requests']:.0f} requests, "
        f"${naive['projected_usd']:.2f} for {scrapes} scrapes; ratio "
        f"{naive['projected_requests'] / max(ours['emulator_requests'], 1):.0f}x",
        flush=True,
    )
    out = {
        "hours": args.hours,
        "scrape_interval_s": SCRAPE_S,
        "interval": args.interval,
        "exporter": ours,
        "naive": naive,
    }
    save("economy", out)
    return out
