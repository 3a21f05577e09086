"""Benchmark: what ``raw_retention`` costs: bytes kept per refresh, refresh time with it on and off, recompute.

The three sources that keep pages (openai, anthropic, aws with linked accounts) fetch from the emulators'
datasets (70 days of AI usage; 70 days of cloud costs), a cold refresh and then the warm ones of a day (every 6 h,
each fetching the restatement window). Timings are medians of ``--repeat`` runs of each.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sqlite3
import tempfile
import time
import zlib
from pathlib import Path
from typing import Any

from bench.common import median, save


def _kept(cache: str) -> dict[str, dict[str, int]]:
    conn = sqlite3.connect(cache)
    try:
        out: dict[str, dict[str, int]] = {}
        for source, fetches, pages, raw, stored in conn.execute(
            "SELECT f.source, COUNT(DISTINCT f.id), COUNT(*), SUM(p.size), "
            "SUM(LENGTH(p.body) + LENGTH(p.request) + LENGTH(p.meta)) "
            "FROM raw_fetches f JOIN raw_pages p ON p.fetch_id = f.id GROUP BY f.source"
        ):
            ctx = conn.execute("SELECT SUM(LENGTH(context)) FROM raw_fetches WHERE source=?", (source,)).fetchone()[0]
            rows = 0  # the pages' result rows: a report bucket's results, a Cost Explorer day's groups
            for (body,) in conn.execute(
                "SELECT p.body FROM raw_pages p JOIN raw_fetches f ON f.id = p.fetch_id WHERE f.source=?", (source,)
            ):
                page = json.loads(zlib.decompress(body))
                for b in page.get("data") or page.get("ResultsByTime") or []:
                    if isinstance(b, dict):
                        rows += len(b.get("results") or b.get("Groups") or [])
            out[source] = {
                "fetches": fetches,
                "pages": pages,
                "result_rows": rows,
                "json_bytes": raw,
                "stored_bytes": stored + ctx,
            }
        return out
    finally:
        conn.close()


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.run audit")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    from exporter.app import build_app
    from exporter.config import parse_config
    from tests.conftest import Clock
    from tests.emulators.ai_dataset import build_ai_dataset
    from tests.emulators.anthropic_admin import AnthropicAdminEmulator
    from tests.emulators.aws_ce import AwsCostExplorerEmulator
    from tests.emulators.dataset import build_dataset
    from tests.emulators.openai_admin import OpenAIAdminEmulator

    now = dt.datetime(2026, 11, 22, 9, 41, 7, tzinfo=dt.UTC)
    ai = build_ai_dataset(now)
    tmp = Path(tempfile.mkdtemp(prefix="bench-audit-"))
    os.environ.update(
        BENCH_OPENAI_KEY="sk-admin-bench-0123456789abcdef",
        BENCH_ANTHROPIC_KEY="sk-ant-admin01-bench-0123456789",
        AWS_ACCESS_KEY_ID="AKIABENCHAUDIT",
        AWS_SECRET_ACCESS_KEY="bench-secret-0123456789abcdefghij",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=str(tmp / "none"),
        AWS_SHARED_CREDENTIALS_FILE=str(tmp / "none"),
    )
    emus = [
        OpenAIAdminEmulator(ai, os.environ["BENCH_OPENAI_KEY"]),
        AnthropicAdminEmulator(ai, os.environ["BENCH_ANTHROPIC_KEY"]),
        AwsCostExplorerEmulator(build_dataset(now.date()), page_size=100, access_key_id="AKIABENCHAUDIT"),
    ]
    for e in emus:
        e.start()

    def config(cache: str, retention: str) -> Any:
        return parse_config(
            {
                "cache_path": cache,
                "attribution": {"rules": ai.attribution_rules()},
                "sources": [
                    {
                        "name": "openai",
                        "type": "openai",
                        "admin_key_env": "BENCH_OPENAI_KEY",
                        "base_url": emus[0].url + "/v1",
                        "usage_endpoints": ["completions", "embeddings"],
                        "raw_retention": retention,
                    },
                    {
                        "name": "anthropic",
                        "type": "anthropic",
                        "admin_key_env": "BENCH_ANTHROPIC_KEY",
                        "base_url": emus[1].url,
                        "raw_retention": retention,
                    },
                    {
                        "name": "aws",
                        "type": "aws",
                        "endpoint_url": emus[2].url,
                        "group_by_account": True,
                        "raw_retention": retention,
                    },
                ],
            },
            env={},
        )

    out: dict[str, Any] = {"cases": []}
    try:
        for retention in ("0", "90d"):
            cold: list[float] = []
            warm: list[float] = []
            keeping: list[float] = []
            for i in range(args.repeat):
                cache = str(tmp / f"{retention}-{i}.sqlite")
                clock = Clock(now)
                app = build_app(config(cache, retention), now=clock)
                keep = app._keep_raw

                def timed(*a: Any, _keep: Any = keep, _into: list[float] = keeping) -> None:
                    t = time.perf_counter()
                    _keep(*a)
                    _into.append(time.perf_counter() - t)

                app._keep_raw = timed  # type: ignore[method-assign]
                try:
                    t = time.perf_counter()
                    assert all(o.ok for o in app.refresh_all())
                    cold.append(time.perf_counter() - t)
                    cold_kept = _kept(cache)
                    for _ in range(4):  # a day of 6-hourly refreshes
                        clock.advance(hours=6)
                        t = time.perf_counter()
                        assert all(o.ok for o in app.refresh_all())
                        warm.append(time.perf_counter() - t)
                finally:
                    app.close()
                day_kept = _kept(cache)
                file_bytes = os.path.getsize(cache)
            case: dict[str, Any] = {
                "raw_retention": retention,
                "cold_refresh_s": median(cold),
                "warm_refresh_s": median(warm),
                "cache_file_bytes_after_a_day": file_bytes,
                "keep_and_prune_per_source_refresh_ms": {
                    "median": median(keeping) * 1000,
                    "max": max(keeping, default=0.0) * 1000,
                },
            }
            if retention != "0":
                case["cold"] = cold_kept
                case["day"] = day_kept
                from exporter import cli

                path = tmp / "recompute.yml"
                import yaml

                path.write_text(yaml.safe_dump({"cache_path": cache, **_plain(config(cache, retention))}))
                t = time.perf_counter()
                cli.main(["recompute", "--config.file", str(path)])
                case["recompute_s"] = time.perf_counter() - t
            out["cases"].append(case)
            print(f"  raw_retention={retention}: {case}", flush=True)
    finally:
        for e in emus:
            e.stop()
    save("audit", out)
    return out


def _plain(cfg: Any) -> dict[str, Any]:
    data: dict[str, Any] = cfg.model_dump(mode="json", exclude_defaults=True)
    return data
