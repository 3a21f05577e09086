"""Benchmark 3: peak RSS of ``spend-exporter run`` serving 100k series; start -> /-/ready on a warm cache.

Start -> ready is measured three ways on the same cache, interleaved: a restart (the snapshot saved by the
previous process is served at once), a start that must build the snapshot (the saved one removed first:
the first start after an upgrade or a config change), and a start after an unclean stop (the cache is
checked with ``PRAGMA quick_check`` before it is used).
"""

from __future__ import annotations

import argparse
import http.client
import json
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import Any

import yaml

from bench.common import PY, ROOT, free_port, save, scale_data

SDK_MODULES = ("boto3", "botocore", "azure", "oci", "google.cloud", "openai", "anthropic")


def _status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _get(port: int, path: str, gzip: bool = False) -> int:
    return _fetch(port, path, gzip)[0]


def _fetch(port: int, path: str, gzip: bool = False) -> tuple[int, bytes]:
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    c.request("GET", path, headers={"Accept-Encoding": "gzip"} if gzip else {})
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def _sql(path: str, sql: str) -> None:
    conn = sqlite3.connect(path)
    try:
        conn.execute(sql)
        conn.commit()
    finally:
        conn.close()


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.run memory")
    ap.add_argument("--series", type=int, default=100000)
    ap.add_argument("--starts", type=int, default=3, help="restarts measured for time to ready (each way)")
    ap.add_argument("--scrapes", type=int, default=50)
    args = ap.parse_args(argv)
    data = scale_data(args.series)
    cfg = yaml.safe_load((data / "config.yml").read_text())
    exe = str(Path(PY).parent / "spend-exporter")
    ready_s: list[float] = []
    ready_build_s: list[float] = []
    ready_unclean_s: list[float] = []
    restored: list[bool] = []
    peak_kb = idle_kb = served = 0
    cache = str(cfg["cache_path"])
    # warm-up: a start that saves the snapshot (the cache may hold none, or one of an earlier hour)
    plan = ["warmup"] + ["restart", "build", "unclean"] * args.starts
    for i, kind in enumerate(plan):
        if kind == "build":
            _sql(cache, "DELETE FROM snapshot")
        elif kind == "unclean":
            _sql(cache, "UPDATE meta SET value='0' WHERE key='closed_cleanly'")  # as a kill -9 leaves it
        port = free_port()
        cfg["listen_address"] = f"127.0.0.1:{port}"
        path = data / "config-run.yml"
        path.write_text(yaml.safe_dump(cfg))
        t = time.perf_counter()
        proc = subprocess.Popen([exe, "run", "--config.file", str(path)], cwd=ROOT, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while True:
                try:
                    if _get(port, "/-/ready") == 200:
                        break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("spend-exporter run did not become ready")
                time.sleep(0.01)
            took = time.perf_counter() - t
            {"restart": ready_s, "build": ready_build_s, "unclean": ready_unclean_s}.get(kind, []).append(took)
            if kind == "restart":
                restored.append(json.loads(_fetch(port, "/status")[1])["snapshot"].get("restored_from_cache", False))
            if i == 1:
                idle_kb = _status_kb(proc.pid, "VmRSS")
                for j in range(args.scrapes):
                    _, body = _fetch(port, "/metrics", gzip=j % 2 == 1)
                    if j == 0:
                        served = body.count(b"\n") - body.count(b"\n#")
                _get(port, "/status")
                peak_kb = _status_kb(proc.pid, "VmHWM")
        finally:
            proc.terminate()
            proc.wait(30)
    # which SDKs a process with this config imports (focus only: none of them)
    probe = (
        "import sys, yaml; from exporter.app import build_app; from exporter.config import parse_config; "
        f"a = build_app(parse_config(yaml.safe_load(open({str(data / 'config.yml')!r})))); a.close(); "
        f"print([m for m in {SDK_MODULES!r} if m in sys.modules])"
    )
    sdks = json.loads(
        subprocess.run([PY, "-c", probe], capture_output=True, text=True, cwd=ROOT).stdout.replace("'", '"')
    )
    meta = json.loads((data / "meta.json").read_text())
    out = {
        "series": meta["series"],
        "series_served": served,
        "peak_rss_mb": peak_kb / 1024,
        "rss_after_ready_mb": idle_kb / 1024,
        "scrapes_before_peak": args.scrapes,
        "ready_s": ready_s,
        "ready_median_s": sorted(ready_s)[len(ready_s) // 2],
        "ready_restored_snapshot": restored,
        "ready_building_snapshot_s": ready_build_s,
        "ready_after_unclean_stop_s": ready_unclean_s,
        "sdk_modules_imported": sdks,
    }
    print(
        f"  {served} series served: peak RSS {out['peak_rss_mb']:.0f} MB "
        f"(after ready {out['rss_after_ready_mb']:.0f} MB, "
        f"{args.scrapes} scrapes); start -> /-/ready {', '.join(f'{s:.2f}' for s in ready_s)} s "
        f"(saved snapshot served: {restored}; building it: {', '.join(f'{s:.2f}' for s in ready_build_s)} s; "
        f"after an unclean stop: {', '.join(f'{s:.2f}' for s in ready_unclean_s)} s); "
        f"SDKs imported: {sdks or 'none'}",
        flush=True,
    )
    save("memory", out)
    return out
