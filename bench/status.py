"""/status latency on a large warm cache: alone, and while the snapshot is being rebuilt.

    .venv/bin/python -m bench.status --data /tmp/spend-exporter-bench/series-100000-YYYYMMDD \\
        --cache /tmp/me/cache.sqlite [--n 30] [--seconds 20]

Point ``--cache`` at a *copy* of a benchmark cache (``bench.common.scale_data``): the exporter
writes to its cache (the saved snapshot). The figures are printed, not asserted.
"""

from __future__ import annotations

import argparse
import http.client
import threading
import time
from pathlib import Path

from bench.common import config_dict, median, pct
from exporter.app import build_app
from exporter.config import parse_config
from exporter.status import status_report
from exporter.web import serve


def get(port: int, path: str) -> float:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t = time.perf_counter()
    conn.request("GET", path)
    r = conn.getresponse()
    r.read()
    took = time.perf_counter() - t
    conn.close()
    if r.status != 200:
        raise RuntimeError(f"{path}: status {r.status}")
    return took


def show(label: str, times: list[float]) -> None:
    print(
        f"  {label:<44} n={len(times):<4} median {median(times) * 1e3:8.1f} ms  "
        f"p99 {pct(times, 99) * 1e3:8.1f} ms  max {max(times) * 1e3:8.1f} ms",
        flush=True,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", required=True, type=Path, help="the benchmark directory (only its config is used)")
    ap.add_argument("--cache", required=True, type=Path, help="a copy of its cache.sqlite")
    ap.add_argument("--n", type=int, default=30, help="sequential requests")
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the run under load")
    ap.add_argument("--clients", type=int, default=4, help="concurrent /status clients under load")
    args = ap.parse_args()

    # the benchmark's own source settings (another source hash would drop the cached data); no refresh runs
    cfg = config_dict(args.data)
    cfg["cache_path"] = str(args.cache)
    t = time.perf_counter()
    app = build_app(parse_config(cfg), stale_ok=True)
    print(
        f"start {time.perf_counter() - t:.2f}s (snapshot restored: {app.snapshot_restored}), "
        f"{app.snapshot.series} series",
        flush=True,
    )
    server = serve(app, "127.0.0.1", 0, None, {})
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.port
    try:
        status_report(app)  # warm-up
        calls = []
        for _ in range(args.n):
            t = time.perf_counter()
            status_report(app)
            calls.append(time.perf_counter() - t)
        show("status_report(app), sequential", calls)
        show("GET /status, sequential", [get(port, "/status") for _ in range(args.n)])

        # under load: several clients at once, while the snapshot is rebuilt in a loop (as after each refresh)
        stop = threading.Event()
        times: list[float] = []
        lock = threading.Lock()
        rebuilds: list[float] = []

        def client() -> None:
            while not stop.is_set():
                took = get(port, "/status")
                with lock:
                    times.append(took)

        def rebuild() -> None:
            while not stop.is_set():
                t = time.perf_counter()
                app.builder.invalidate()
                app.rebuild_snapshot()
                rebuilds.append(time.perf_counter() - t)

        threads = [threading.Thread(target=client) for _ in range(args.clients)]
        threads.append(threading.Thread(target=rebuild))
        for th in threads:
            th.start()
        time.sleep(args.seconds)
        stop.set()
        for th in threads:
            th.join()
        show(f"GET /status, {args.clients} clients + rebuild loop", times)
        show("  snapshot rebuild (in that loop)", rebuilds)
    finally:
        server.shutdown()
        app.close()


if __name__ == "__main__":
    main()
