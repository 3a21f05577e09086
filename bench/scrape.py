"""Benchmark 1: /metrics latency and throughput, spend-exporter vs the naive collector vs the bare limit."""

from __future__ import annotations

import argparse
import http.client
import subprocess
import threading
import time
from typing import Any

from bench.common import PY, ROOT, free_port, median, pct, save, scale_data, wait_http

KINDS = ("exporter", "bare", "naive")
HEADERS = {"Accept": "text/plain;version=0.0.4", "User-Agent": "bench"}


class Client:
    """One keep-alive connection (reconnects when the server closes, as prometheus_client's does)."""

    def __init__(self, port: int, gzip: bool) -> None:
        self.port = port
        self.headers = HEADERS | ({"Accept-Encoding": "gzip"} if gzip else {})
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)

    def scrape(self) -> int:
        self.conn.request("GET", "/metrics", headers=self.headers)
        r = self.conn.getresponse()
        body = r.read()
        if r.status != 200:
            raise RuntimeError(f"status {r.status}")
        return len(body)

    def close(self) -> None:
        self.conn.close()


def latency(ports: dict[str, int], gzip: bool, n: int, budgets: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Sequential scrapes, interleaved across the servers (A, B, C, A, B, C, ...) so that the noise of a
    shared machine falls on every side alike; a side stops early once it has used its time budget."""
    clients = {k: Client(p, gzip) for k, p in ports.items()}
    for c in clients.values():
        c.scrape()  # warm-up: connection, lazy state
    times: dict[str, list[float]] = {k: [] for k in clients}
    spent = dict.fromkeys(clients, 0.0)
    size = dict.fromkeys(clients, 0)
    for _ in range(n):
        for k, c in clients.items():
            if spent[k] > budgets.get(k, 600.0) and len(times[k]) >= 5:
                continue
            t = time.perf_counter()
            size[k] = c.scrape()
            dt_ = time.perf_counter() - t
            times[k].append(dt_)
            spent[k] += dt_
    for c in clients.values():
        c.close()
    return {
        k: {"n": len(v), "median_ms": median(v) * 1e3, "p99_ms": pct(v, 99) * 1e3, "bytes": size[k]}
        for k, v in times.items()
    }


def throughput(port: int, gzip: bool, concurrency: int, seconds: float) -> dict[str, Any]:
    done = [0] * concurrency
    stop = threading.Event()

    def worker(i: int) -> None:
        c = Client(port, gzip)
        try:
            while not stop.is_set():
                c.scrape()
                done[i] += 1
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    time.sleep(seconds)
    stop.set()
    for th in threads:
        th.join(300)  # a scrape in flight finishes; it is counted
    elapsed = time.perf_counter() - t
    return {"concurrency": concurrency, "seconds": elapsed, "scrapes": sum(done), "per_s": sum(done) / elapsed}


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.run scrape")
    ap.add_argument("--series", default="1000,10000,100000", help="comma-separated series counts")
    ap.add_argument("--scrapes", type=int, default=200, help="sequential scrapes for latency")
    ap.add_argument("--naive-budget", type=float, default=20.0, help="max seconds of latency scrapes per naive case")
    ap.add_argument("--seconds", type=float, default=3.0, help="duration of each throughput run")
    ap.add_argument("--kinds", default=",".join(KINDS))
    args = ap.parse_args(argv)
    out: dict[str, Any] = {"scrapes": args.scrapes, "throughput_seconds": args.seconds, "cases": []}
    kinds = args.kinds.split(",")
    for n in [int(x) for x in args.series.split(",")]:
        data = scale_data(n)
        procs: dict[str, subprocess.Popen[bytes]] = {}
        ports: dict[str, int] = {}
        try:
            for kind in kinds:
                ports[kind] = free_port()
                procs[kind] = subprocess.Popen([PY, "-m", "bench._serve", kind, str(data), str(ports[kind])], cwd=ROOT)
            for kind in kinds:
                wait_http(ports[kind], proc=procs[kind])
            for gz in (False, True):
                lats = latency(ports, gz, args.scrapes, {"naive": args.naive_budget})
                for kind in kinds:
                    lat = lats[kind]
                    tps = [throughput(ports[kind], gz, c, args.seconds) for c in (1, 16)]
                    case = {"series_target": n, "server": kind, "gzip": gz, "latency": lat, "throughput": tps}
                    out["cases"].append(case)
                    print(
                        f"  {n:>7} series {kind:<8} {'gzip ' if gz else 'plain'} "
                        f"median {lat['median_ms']:9.2f} ms  p99 {lat['p99_ms']:9.2f} ms  (n={lat['n']}, "
                        f"{lat['bytes'] / 1e6:.2f} MB)  {tps[0]['per_s']:8.1f}/s x1  {tps[1]['per_s']:8.1f}/s x16",
                        flush=True,
                    )
        finally:
            for proc in procs.values():
                proc.terminate()
                proc.wait(30)
    out["ratios"] = ratios(out["cases"])
    for r in out["ratios"]:
        print(
            f"  {r['series_target']:>7} {'gzip ' if r['gzip'] else 'plain'} exporter/bare median "
            f"{_fmt(r['exporter_over_bare'], '.2f')}x  naive/exporter {_fmt(r['naive_over_exporter'], '.1f')}x  "
            f"x16 throughput exporter/bare {_fmt(r['throughput16_exporter_over_bare'], '.2f')}"
        )
    save("scrape", out)
    return out


def _fmt(ratio: float | None, spec: str) -> str:
    return "–" if ratio is None else format(ratio, spec)  # a side left out with --kinds


def ratios(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
    idx = {(c["series_target"], c["gzip"], c["server"]): c for c in cases}
    res = []
    for n, gz in sorted({(c["series_target"], c["gzip"]) for c in cases}):
        e, b, nv = idx.get((n, gz, "exporter")), idx.get((n, gz, "bare")), idx.get((n, gz, "naive"))
        if not e:
            continue
        r: dict[str, Any] = {"series_target": n, "gzip": gz}
        r["exporter_over_bare"] = e["latency"]["median_ms"] / b["latency"]["median_ms"] if b else None
        r["naive_over_exporter"] = nv["latency"]["median_ms"] / e["latency"]["median_ms"] if nv else None
        r["throughput16_exporter_over_bare"] = e["throughput"][1]["per_s"] / b["throughput"][1]["per_s"] if b else None
        res.append(r)
    return res
