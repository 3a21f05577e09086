"""Benchmark 6: a bounded soak. ``spend-exporter run`` (the real command) on the 100k-series warm cache, its
source refreshing every few seconds, scraped by 50 concurrent keep-alive clients (plain and gzip) for 60 s.

Counted: scrapes, errors (any non-200, exception or truncated body), latency (median, p99, max), the exporter's
RSS every half second (after warm-up, at the end, their ratio; VmHWM; its FOCUS reader process apart) and the
refreshes it published during the soak, read from its own ``spend_exporter_source_last_success_timestamp_seconds``
in the bodies the scrapers received.
The soak runs on a private copy of the warm cache, so other benchmarks reading the shared one are not disturbed.
By default each scraper scrapes once a second (50 scrapes/s offered), spread over the second as Prometheus spreads
its targets. Variants: ``--pace 0`` (back to back: a closed loop that saturates the machine), ``--server bare``
(the limit, same load), ``--interval off`` (no refresh). Method and figures: docs/reliability.md, "Load".
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from bench.common import DATA, PY, ROOT, config_dict, free_port, median, pct, save, scale_data, wait_http

LAST_SUCCESS = b"\nspend_exporter_source_last_success_timestamp_seconds{"
REFRESH_DURATION = b"\nspend_exporter_source_refresh_duration_seconds{"
LAST_LINE = b"spend_exporter_build_info{"  # the exposition's last family: a body not ending in it is truncated
SLOW_S = 1.0
SAMPLE_S = 0.5  # seconds between two samples of the exporter's memory
# start (unix), latency s, gzip, body bytes, error, and the last success and duration of the refresh served
Scrape = tuple[float, float, bool, int, str, float, float]


def _status(pid: int, keys: tuple[str, ...]) -> dict[str, int]:
    """Fields of /proc/<pid>/status, in kB for the memory ones."""
    out: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in keys:
            out[key] = int(rest.split()[0])
    return out


def _sample(pid: int) -> dict[str, int]:
    """The process's memory, threads and open files, and the RSS of its children (the FOCUS reader, while a
    refresh reads the files)."""
    out = _status(pid, ("VmRSS", "VmHWM", "Threads"))
    out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    children = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            kids = Path(f"/proc/{pid}/task/{task}/children").read_text().split()
            children += sum(_status(int(k), ("VmRSS",)).get("VmRSS", 0) for k in kids)
        except OSError:  # the thread or the child ended between two reads
            continue
    out["children_rss"] = children
    return out


def _sample_value(text: bytes, prefix: bytes) -> float:
    i = text.rfind(prefix)
    if i < 0:
        return float("nan")
    return float(text[i + 1 : text.index(b"\n", i + 1)].rsplit(b" ", 1)[1])


def check_body(status: int, headers: http.client.HTTPMessage, body: bytes, gzip: bool) -> tuple[str, float, float]:
    """An error message ('' if the scrape is good), and the last-success timestamp and refresh duration the
    body carries (which refresh published the snapshot served)."""
    if status != 200:
        return f"status {status}", 0.0, 0.0
    if gzip != (headers.get("Content-Encoding") == "gzip"):
        return f"Content-Encoding {headers.get('Content-Encoding')!r}", 0.0, 0.0
    text = body
    if gzip:
        d = zlib.decompressobj(wbits=31)
        try:
            text = d.decompress(body)
        except zlib.error as e:
            return f"gzip: {e}", 0.0, 0.0
        if not d.eof or d.unused_data:
            return "truncated gzip stream", 0.0, 0.0
    if not text.endswith(b"\n") or not text[text.rfind(b"\n", 0, len(text) - 1) + 1 :].startswith(LAST_LINE):
        return f"truncated body ({len(text)} bytes, ends {text[-60:]!r})", 0.0, 0.0
    last, took = _sample_value(text, LAST_SUCCESS), _sample_value(text, REFRESH_DURATION)
    if last != last:
        return "no last-success sample", 0.0, 0.0
    return "", last, took


def _scraper(port: int, gzip: bool, pace: float, t_start: float, t_stop: float, out: list[Scrape]) -> None:
    headers = {"Accept": "text/plain;version=0.0.4", "User-Agent": "bench-soak"}
    if gzip:
        headers["Accept-Encoding"] = "gzip"
    conn: http.client.HTTPConnection | None = None
    nxt = t_start
    while True:
        time.sleep(max(0.0, nxt - time.time()))
        if time.time() >= t_stop:
            break
        if conn is None:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        started, t = time.time(), time.perf_counter()
        body, err, last, took = b"", "", 0.0, 0.0
        try:
            conn.request("GET", "/metrics", headers=headers)
            r = conn.getresponse()
            body = r.read()
            lat = time.perf_counter() - t
            err, last, took = check_body(r.status, r.headers, body, gzip)
            if r.will_close:
                conn.close()
                conn = None
        except Exception as e:  # any failure is an error of the soak, counted and reported
            lat = time.perf_counter() - t
            err = f"{e.__class__.__name__}: {e}"[:200]
            conn.close()
            conn = None
        out.append((started, lat, gzip, len(body), err, last, took))
        nxt = started + pace
    if conn is not None:
        conn.close()


def client_process(port: int, gzips: list[bool], starts: list[float], pace: float, t_stop: float) -> list[Scrape]:
    """One client process running one thread per scraper (several processes, so that the client's GIL is not
    what limits the soak); scraper i starts at ``starts[i]``."""
    out: list[Scrape] = []
    threads = [
        threading.Thread(target=_scraper, args=(port, gz, pace, t0, t_stop, out), daemon=True)
        for gz, t0 in zip(gzips, starts, strict=True)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(t_stop - time.time() + 60)
    return out


def private_copy(data: Path, work: Path, interval: str) -> Path:
    """A copy of the warm cache (an SQLite backup: consistent even while another benchmark uses the original) and
    a config whose source is due at once and then every ``interval`` (``off``: no refresh during the soak)."""
    from exporter.app import _source_hash
    from exporter.config import parse_config

    cfg = config_dict(data)
    cfg["cache_path"] = str(work / "cache.sqlite")
    src = cfg["sources"][0]
    src["jitter"] = 0
    if interval != "off":
        src["interval"] = interval
    con = sqlite3.connect(data / "cache.sqlite")
    dst = sqlite3.connect(work / "cache.sqlite")
    con.backup(dst)
    con.close()
    # interval and jitter do not change what is fetched: the cache stays valid and every refresh is a warm one
    row = dst.execute("SELECT config_hash FROM source_state WHERE source=?", (src["name"],)).fetchone()
    if not row or row[0] != _source_hash(parse_config(cfg).sources[0]):
        raise SystemExit("soak: the warm cache does not match the source settings")
    due = time.time() + 86400 if interval == "off" else 0.0
    dst.execute("UPDATE source_state SET next_refresh=? WHERE source=?", (due, src["name"]))
    dst.commit()
    dst.close()
    path = work / "config.yml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m bench.run soak")
    ap.add_argument("--series", type=int, default=100000)
    ap.add_argument("--seconds", type=float, default=60.0, help="duration of the soak")
    ap.add_argument("--scrapers", type=int, default=50, help="concurrent keep-alive scrapers")
    ap.add_argument(
        "--pace", type=float, default=1.0, help="seconds between a scraper's scrapes (0: back to back, saturating)"
    )
    ap.add_argument("--gzip-share", type=float, default=0.5, help="fraction of the scrapers asking for gzip")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before the reference RSS sample")
    ap.add_argument("--interval", default="5s", help="the source's refresh interval during the soak, or 'off'")
    ap.add_argument("--procs", type=int, default=4, help="client processes the scrapers are spread over")
    ap.add_argument(
        "--server", choices=("exporter", "bare"), default="exporter", help="bare: the limit (bench._serve), no refresh"
    )
    ap.add_argument("--name", default="soak", help="results file bench/results/NAME.json")
    args = ap.parse_args(argv)
    if args.server == "bare":
        args.interval = "off"
    load_before = os.getloadavg()
    data = scale_data(args.series)
    work = Path(tempfile.mkdtemp(prefix="soak-", dir=DATA))
    n_gz = round(args.scrapers * args.gzip_share)
    gzips = [i < n_gz for i in range(args.scrapers)]
    procs = max(1, min(args.procs, args.scrapers))
    port = free_port()
    log_path = work / "server.log"
    proc: subprocess.Popen[bytes] | None = None
    rss: list[tuple[float, dict[str, int]]] = []
    try:
        cfg_path = private_copy(data, work, args.interval)
        if args.server == "exporter":
            exe = str(Path(PY).parent / "spend-exporter")
            cmd = [exe, "run", "--config.file", str(cfg_path), "--web.listen-address", f"127.0.0.1:{port}"]
        else:
            cmd = [PY, "-m", "bench._serve", "bare", str(work), str(port)]
        t_launch = time.time()
        with open(log_path, "wb") as logf:
            proc = subprocess.Popen(cmd, cwd=ROOT, stderr=logf, stdout=subprocess.DEVNULL)
        wait_http(port, "/-/ready", timeout=300, proc=proc)
        with ProcessPoolExecutor(procs, mp_context=multiprocessing.get_context("spawn")) as pool:
            t_start = time.time() + 3.0  # the client processes are up by then
            t_stop = t_start + args.seconds
            # paced scrapers are spread over the pace, as Prometheus spreads its targets over the scrape interval
            starts = [t_start + args.pace * i / args.scrapers for i in range(args.scrapers)]
            futures = [
                pool.submit(client_process, port, gzips[i::procs], starts[i::procs], args.pace, t_stop)
                for i in range(procs)
            ]
            time.sleep(max(0.0, t_start - time.time()))
            while time.time() < t_stop:
                t = time.time()
                rss.append((t - t_start, _sample(proc.pid)))
                time.sleep(max(0.0, min(t + SAMPLE_S, t_stop) - time.time()))
            rss.append((time.time() - t_start, _sample(proc.pid)))
            scrapes = [s for f in futures for s in f.result()]
        alive = proc.poll() is None
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)
        log_text = log_path.read_text(errors="replace") if log_path.exists() else ""
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    run_info = {
        "series": json.loads((data / "meta.json").read_text())["series"],
        "t_start": t_start,
        "t_launch": t_launch,
        "alive": alive,
        "exit_code": proc.returncode,
        "load_before": load_before,
        "load_after": load_after,
    }
    return report(args, scrapes, rss, run_info, log_text)


REFRESHED = re.compile(r"source \S+ refreshed: (\d+) records .* in ([\d.]+)s")


def refresh_phases(
    scrapes: list[Scrape], info: dict[str, Any], seconds: float, interval: float | None
) -> list[dict[str, Any]]:
    """The soak's refreshes, from what the scrapers were served: each one's start (its last-success timestamp),
    fetch duration, and when it was first served. The cache is due at launch and jitter is 0, so the refresh
    after the last one published starts at launch (none published yet) or at max(start + interval, published):
    it is listed, unpublished, if that falls within the soak. Times are seconds from the start of the soak."""
    t_start = info["t_start"]
    first_seen: dict[float, float] = {}
    took: dict[float, float] = {}
    for s in scrapes:
        if not s[4] and s[5] >= info["t_launch"] - 1:  # not the refresh that filled the cache before the soak
            first_seen[s[5]] = min(first_seen.get(s[5], float("inf")), s[0] + s[1])
            took[s[5]] = s[6]
    phases: list[dict[str, Any]] = [
        {"start_s": last - t_start, "fetch_s": took[last], "published_by_s": seen - t_start}
        for last, seen in sorted(first_seen.items())
    ]
    if interval is not None:
        if phases:
            nxt = max(phases[-1]["start_s"] + interval, phases[-1]["published_by_s"])
        else:
            nxt = info["t_launch"] - t_start
        if nxt < seconds:
            phases.append({"start_s": nxt, "fetch_s": None, "published_by_s": None})
    return phases


def report(
    args: argparse.Namespace,
    scrapes: list[Scrape],
    rss: list[tuple[float, dict[str, int]]],
    info: dict[str, Any],
    log_text: str,
) -> dict[str, Any]:
    from exporter.config_types import parse_duration

    t_start = info["t_start"]
    lat = [s[1] for s in scrapes]
    errors = [s for s in scrapes if s[4]]
    kinds: dict[str, int] = {}
    for s in errors:
        k = s[4].split(":")[0].split(" (")[0]
        kinds[k] = kinds.get(k, 0) + 1
    by_enc = {}
    for gz in (False, True):
        v = [s[1] for s in scrapes if s[2] == gz]
        by_enc["gzip" if gz else "plain"] = {
            "scrapes": len(v),
            "median_ms": median(v) * 1e3,
            "p99_ms": pct(v, 99) * 1e3,
            "max_ms": max(v, default=float("nan")) * 1e3,
            "slower_than_1s": sum(1 for x in v if x > SLOW_S),
            "bytes": next((s[3] for s in scrapes if s[2] == gz and not s[4]), 0),
        }
    interval = None if args.interval == "off" else parse_duration(args.interval)
    during = refresh_phases(scrapes, info, args.seconds, interval)

    def refreshing_at(t: float) -> bool:
        return any(p["start_s"] <= t and (p["published_by_s"] is None or t <= p["published_by_s"]) for p in during)

    warm = next((r for t, r in rss if t >= args.warmup), rss[-1][1])
    end = rss[-1][1]
    # The same phase at both ends: while a FOCUS reader process reads the files, the exporter only waits for it,
    # holding the previous snapshot and nothing of the refresh (its level); and each refresh's peak
    level = [(t, r["VmRSS"]) for t, r in rss if t >= args.warmup and r.get("children_rss", 0) > 0]
    level_ratio = level[-1][1] / level[0][1] if len(level) >= 2 else float("nan")
    after_warm = [r["VmRSS"] for t, r in rss if t >= args.warmup]
    # a refresh's fetch (DuckDB over the files) holds a few hundred MB while it runs, so a sample's phase matters:
    # per refresh, the RSS at its start (the level between refreshes) and its peak
    cycles = []
    for p in during:
        inside = [r["VmRSS"] for t, r in rss if p["start_s"] <= t <= (p["published_by_s"] or args.seconds)]
        before = [r["VmRSS"] for t, r in rss if t <= p["start_s"]]
        cycles.append(
            {
                "start_s": round(p["start_s"], 1),
                "published_by_s": None if p["published_by_s"] is None else round(p["published_by_s"], 1),
                "fetch_s": p["fetch_s"],
                "rss_at_start_mb": before[-1] / 1024 if before else None,  # None: it started before the soak
                "rss_peak_mb": max(inside, default=0) / 1024,
            }
        )
    # latency while a refresh runs (fetch, store, snapshot build) and while none does
    lat_ref = [s[1] for s in scrapes if refreshing_at(s[0] - t_start)]
    lat_idle = [s[1] for s in scrapes if not refreshing_at(s[0] - t_start)]
    refreshed = REFRESHED.findall(log_text)
    peaks = _peak_halves(rss, args.warmup, sum(1 for p in during if p["published_by_s"] is not None))
    out = {
        "server": args.server,
        "series_target": args.series,
        "series": info["series"],
        "seconds": args.seconds,
        "scrapers": args.scrapers,
        "pace_s": args.pace,
        "gzip_scrapers": round(args.scrapers * args.gzip_share),
        "client_processes": max(1, min(args.procs, args.scrapers)),
        "refresh_interval": args.interval,
        "warmup_s": args.warmup,
        "scrapes": len(scrapes),
        "scrapes_per_s": len(scrapes) / args.seconds,
        "errors": len(errors),
        "error_kinds": kinds,
        "error_examples": sorted({s[4] for s in errors})[:5],
        "median_ms": median(lat) * 1e3,
        "p99_ms": pct(lat, 99) * 1e3,
        "max_ms": max(lat, default=float("nan")) * 1e3,
        "slower_than_1s": sum(1 for x in lat if x > SLOW_S),
        "by_encoding": by_enc,
        "during_refresh": _lat(lat_ref),
        "between_refreshes": _lat(lat_idle),
        "rss_warm_mb": warm["VmRSS"] / 1024,
        "rss_end_mb": end["VmRSS"] / 1024,
        "rss_ratio": end["VmRSS"] / warm["VmRSS"],
        # back-to-back refreshes: whether each reference sample fell inside one says how to read the ratio
        "rss_warm_in_refresh": refreshing_at(next((t for t, _ in rss if t >= args.warmup), rss[-1][0])),
        "rss_end_in_refresh": refreshing_at(rss[-1][0]),
        "rss_level_warm_mb": level[0][1] / 1024 if level else None,
        "rss_level_end_mb": level[-1][1] / 1024 if level else None,
        "rss_level_at_s": [round(level[0][0], 1), round(level[-1][0], 1)] if level else None,
        "rss_level_ratio": level_ratio,
        "rss_peak_halves_mb": peaks,
        "rss_peak_ratio": peaks[1] / peaks[0],
        "rss_min_after_warmup_mb": min(after_warm, default=0) / 1024,
        "rss_max_after_warmup_mb": max(after_warm, default=0) / 1024,
        "vm_hwm_mb": end["VmHWM"] / 1024,
        # the FOCUS reader process, one per refresh while it reads the files, and the two together
        "reader_rss_peak_mb": max((r.get("children_rss", 0) for _, r in rss), default=0) / 1024,
        "rss_with_reader_peak_mb": max((r["VmRSS"] + r.get("children_rss", 0) for _, r in rss), default=0) / 1024,
        "threads_warm": warm["Threads"],
        "threads_end": end["Threads"],
        "fds_warm": warm["fds"],
        "fds_end": end["fds"],
        "refresh_cycles": cycles,
        "refreshes_started": len(during),
        "refreshes_published": sum(1 for p in during if p["published_by_s"] is not None),
        "refreshes_logged": len(refreshed),
        "refresh_failures_logged": log_text.count("refresh failed"),
        # warnings and errors the exporter logged from start to stop (the shutdown included)
        "log_problems": [ln[:300] for ln in log_text.splitlines() if re.search(r"level=(warning|error|critical)", ln)],
        "server_alive_at_end": info["alive"],
        "server_exit_code": info["exit_code"],
        "load_avg_before": info["load_before"],
        "load_avg_after": info["load_after"],
        "rss_timeline": [(round(t, 1), r["VmRSS"] // 1024, r.get("children_rss", 0) // 1024) for t, r in rss],
        "per_second": _per_second(scrapes, t_start, args.seconds),
    }
    print_summary(out)
    save(args.name, out)
    return out


def print_summary(out: dict[str, Any]) -> None:
    ok = {True: "yes", False: "NO"}
    yn = {True: "yes", False: "no"}
    rr = out["rss_ratio"]
    at = out["rss_level_at_s"] or ["–", "–"]
    ph = out["rss_peak_halves_mb"]
    print(
        f"  {out['server']}: {out['scrapes']} scrapes by {out['scrapers']} scrapers in {out['seconds']:.0f}s "
        f"({out['scrapes_per_s']:.1f}/s), {out['errors']} errors {out['error_kinds'] or ''}",
        f"  latency median {out['median_ms']:.1f} ms, p99 {out['p99_ms']:.1f} ms, max {out['max_ms']:.1f} ms; "
        f"{out['slower_than_1s']} slower than 1 s",
        *(
            f"    {k:<5} {v['scrapes']} scrapes of {v['bytes'] / 1e6:.2f} MB: median {v['median_ms']:.1f} ms, "
            f"p99 {v['p99_ms']:.1f} ms, max {v['max_ms']:.1f} ms, {v['slower_than_1s']} over 1 s"
            for k, v in out["by_encoding"].items()
        ),
        *(
            f"    {k.replace('_', ' ')}: {v['scrapes']} scrapes, median {v['median_ms']:.1f} ms, "
            f"p99 {v['p99_ms']:.1f} ms, max {v['max_ms']:.1f} ms"
            for k, v in (("during_refresh", out["during_refresh"]), ("between_refreshes", out["between_refreshes"]))
            if v["scrapes"]
        ),
        f"  RSS after {out['warmup_s']:.0f}s {out['rss_warm_mb']:.0f} MB, at the end {out['rss_end_mb']:.0f} MB "
        f"(ratio {rr:.3f}; sample inside a refresh: warm-up {yn[out['rss_warm_in_refresh']]}, "
        f"end {yn[out['rss_end_in_refresh']]}; "
        f"{out['rss_min_after_warmup_mb']:.0f}-{out['rss_max_after_warmup_mb']:.0f} MB after warm-up), "
        f"VmHWM {out['vm_hwm_mb']:.0f} MB; reader process peak {out.get('reader_rss_peak_mb', 0):.0f} MB, "
        f"exporter + reader peak {out.get('rss_with_reader_peak_mb', 0):.0f} MB; "
        f"threads {out['threads_warm']}->{out['threads_end']}, "
        f"fds {out['fds_warm']}->{out['fds_end']}",
        f"  refreshes during the soak: {out['refreshes_started']} started, {out['refreshes_published']} published "
        f"(seen in the bodies served); the exporter's log, start to stop: {out['refreshes_logged']} refreshed, "
        f"{out['refresh_failures_logged']} failed; {len(out['log_problems'])} warnings or errors logged",
        *(f"    {ln}" for ln in out["log_problems"][:5]),
        *(
            f"    refresh at {c['start_s']}s: fetch {c['fetch_s'] if c['fetch_s'] is not None else '…'}s, "
            f"published by {c['published_by_s'] if c['published_by_s'] is not None else '(after the soak)'}s, "
            f"RSS {_mb(c['rss_at_start_mb'])} at its start, peak {c['rss_peak_mb']:.0f} MB"
            for c in out["refresh_cycles"]
        ),
        f"  same phase (a reader running, the exporter waiting): {_mb(out['rss_level_warm_mb'])} at "
        f"{at[0]}s, {_mb(out['rss_level_end_mb'])} at {at[1]}s "
        f"(ratio {out['rss_level_ratio']:.3f}); highest, first → second half after warm-up: "
        f"{ph[0]:.0f} → {ph[1]:.0f} MB (ratio {out['rss_peak_ratio']:.3f})",
        f"  targets: zero errors {ok[not out['errors']]}, "
        f"RSS flat (same phase and peaks within 10%) {_flat(out)}, "
        f"(end ÷ warm-up sample, any phase: {ok[rr <= 1.10]}), "
        f"no scrape over 1 s {ok[out['slower_than_1s'] == 0]}; "
        f"load average {_load(out['load_avg_before'])} -> {_load(out['load_avg_after'])}",
        sep="\n",
        flush=True,
    )


def _peak_halves(rss: list[tuple[float, dict[str, int]]], warmup: float, refreshes: int) -> tuple[float, float]:
    """The exporter's highest RSS (MB) in the first and in the second half of the time after warm-up. A refresh's
    peak (the snapshot swap) lasts well under a second, so one refresh's sampled peak depends on where the
    samples fell; over half of the soak, several refreshes each, the highest sample finds it."""
    after = [(t, r["VmRSS"]) for t, r in rss if t >= warmup]
    if refreshes < 4 or len(after) < 4:
        return float("nan"), float("nan")
    mid = (after[0][0] + after[-1][0]) / 2
    return max(v for t, v in after if t < mid) / 1024, max(v for t, v in after if t >= mid) / 1024


def _flat(out: dict[str, Any]) -> str:
    level, peak = out["rss_level_ratio"], out["rss_peak_ratio"]
    if level != level or peak != peak:  # NaN
        return "not measured (fewer than four refreshes published)"
    return "yes" if level <= 1.10 and peak <= 1.10 else "NO"


def _mb(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f} MB"


def _load(v: tuple[float, float, float]) -> str:
    return "/".join(f"{x:.1f}" for x in v)


def _lat(v: list[float]) -> dict[str, Any]:
    return {
        "scrapes": len(v),
        "median_ms": median(v) * 1e3,
        "p99_ms": pct(v, 99) * 1e3,
        "max_ms": max(v, default=float("nan")) * 1e3,
    }


def _per_second(scrapes: list[Scrape], t_start: float, seconds: float) -> list[tuple[int, float, float]]:
    """Per second of the soak: scrapes started, their median and max latency (ms)."""
    buckets: list[list[float]] = [[] for _ in range(int(seconds) + 1)]
    for s in scrapes:
        i = int(s[0] - t_start)
        if 0 <= i < len(buckets):
            buckets[i].append(s[1])
    return [(len(b), round(median(b) * 1e3, 1) if b else 0.0, round(max(b, default=0) * 1e3, 1)) for b in buckets]
